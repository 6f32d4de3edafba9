"""Running a store's Kafka loader until it has consumed what its topics hold."""

from __future__ import annotations

from typing import Any

from serving import Store
from serving.loaders.kafka import KafkaLoader


def load_until_caught_up(store: Store, timeout: float = 20.0, **options: Any) -> KafkaLoader:
    """Starts a :class:`KafkaLoader` on ``store`` (``options``: ``shard=...``, ...), waits until
    it has caught up with every partition it consumes, and stops it (rows and offsets stored).
    The stopped loader is returned for its :meth:`~KafkaLoader.stats`."""
    loader = KafkaLoader(store, **options)
    loader.start()
    try:
        assert loader.wait_caught_up(timeout), loader.stats()
    finally:
        assert loader.stop(10)
    return loader
