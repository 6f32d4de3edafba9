"""The Kafka loader: applies fresh feature values from Kafka topics to the store.

One consumer per feature view with a ``stream_source`` (``features.yaml``), each on its own
thread, inside the server process (:meth:`KafkaLoader.start` / :meth:`KafkaLoader.stop`) or
standalone (``feature-serving ingest``). See ``docs/kafka-loader.md`` for formats, keys,
operations; the short version of how it works:

- **Explicit assignment, offsets in RocksDB.** The consumer ``assign()``s every partition of the
  topic itself (no group join, which costs seconds to tens of seconds and buys nothing when one
  process consumes every partition). It resumes from the offsets stored in the store's meta
  under ``kafka/<view>/<topic>/<partition>`` (the offset of the next record to apply), written
  in the *same* RocksDB write batch as the rows they cover. A crash therefore never loses or
  double-applies a batch; with the merge rule (newer event time wins) a replay would be
  harmless anyway. Without a stored offset a partition is read from its beginning. Offsets are
  also committed to Kafka (asynchronously, about once a second, under the source's
  ``group_id``) so standard lag tools see progress; those commits are informational only.
- **Batches in, Rust decodes and writes.** ``consume(num_messages=...)`` batches are handed to
  :func:`serving._rust_core.decode_batch` (GIL released, split over the cores); bad records come
  back as ``(index, reason)``. They are produced to the dead-letter topic (``<topic>.dlq`` by
  default) and flushed *before* the batch's rows and offsets are written, so a crash cannot
  lose a dead letter; then one atomic write applies the rows, tombstones and offsets.
- **Partitions are checked.** ``decode_batch`` also hashes each row's entity key (murmur2, as
  shard ownership does) over the topic's partition count and reports the records that arrived
  on another partition (a producer without ``partitioner=murmur2_random``): counted as
  ``misrouted``, warned about (rate-limited), and applied, skipped or dead-lettered as
  ``loader.misrouted`` says (default: applied).
- **Failures rewind.** If a batch cannot be applied (store error, dead-letter topic
  unreachable), the consumer is re-assigned at the last applied offsets and the batch is
  retried with a growing back-off: a partition never skips records it did not apply.
- **Broker restarts.** librdkafka reconnects by itself. A broker that lost its log (a
  memory-storage broker restarted, a topic recreated) leaves the stored offset *past* the log
  end; the loader notices (the high watermark of the fetch responses stays below its position
  for two checks in a row, or the topic's id changed after a lost connection), logs it, and
  re-reads the partitions from their beginning (replays are harmless under the merge rule).
  Broker connection state comes from librdkafka's statistics (``seconds_since_broker_contact``
  in the stats; the server's readiness uses it). On Apache Kafka an offset outside the log
  (retention, truncation) is reported by the broker and ``auto.offset.reset=earliest`` does
  the same.

Modules: ``options`` (settings, offsets' meta keys), ``source`` (one view's consumer),
``loader`` (:class:`KafkaLoader`, the threads), ``produce`` (producer helpers), ``cli``
(``feature-serving ingest``).
"""

from __future__ import annotations

from serving.loaders.kafka.cli import add_commands
from serving.loaders.kafka.loader import KafkaLoader
from serving.loaders.kafka.options import (
    CONSUMER_DEFAULTS,
    DLQ_HEADERS,
    MISROUTED_HINT,
    PRODUCER_DEFAULTS,
    LoaderOptions,
    offset_key,
)
from serving.loaders.kafka.produce import encode_key, produce_deletes, produce_rows

__all__ = [
    "CONSUMER_DEFAULTS",
    "DLQ_HEADERS",
    "MISROUTED_HINT",
    "PRODUCER_DEFAULTS",
    "KafkaLoader",
    "LoaderOptions",
    "add_commands",
    "encode_key",
    "offset_key",
    "produce_deletes",
    "produce_rows",
]
