"""Served-feature logging: what each request of a logged feature service was answered, one row
per entity, in Feast's logged-feature schema, written to Delta / Parquet / Kafka by a background
thread (docs/feature-logging.md).

- :mod:`serving.feature_log.writer`: :class:`FeatureLogger`, the background writer over the Rust
  core's bounded buffer (``rust_core/src/serve/feature_log.rs``);
- :mod:`serving.feature_log.destinations`: Delta, Parquet, Kafka;
- :mod:`serving.feature_log.metrics`: the Prometheus families;
- :mod:`serving.feature_log.export`: ``feature-serving logs export`` (a training set from logs).
"""

from __future__ import annotations

from serving.feature_log.writer import FeatureLogger, new_request_id

__all__ = ["FeatureLogger", "new_request_id"]
