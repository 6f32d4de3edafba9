"""The loaders: what keeps the online store in sync with the sources of truth.

- ``batch``: the batch loader (``materialize``, ``materialize_incremental``) from Parquet files
  and Delta Lake tables, in this process, through a server, or via Kafka;
- ``kafka``: the Kafka loader (``KafkaLoader``), fresh values from the views' stream topics,
  inside the server or standalone (``feature-serving ingest``), and the producer helpers;
- ``publish_state``: what ``--via-kafka`` runs have published (a compacted topic);
- ``progress``: the progress line of long runs.
"""
