"""feature-serving: the online half of a feature store.

``Store`` is the embedded store (a Rust core over RocksDB); ``Registry`` reads ``features.yaml``;
the ``serve`` command (``python -m serving serve``) answers model servers over gRPC and HTTP.
"""

from __future__ import annotations

from serving.errors import FeatureServingError
from serving.registry import Registry
from serving.store import DenseResult, FeatureResult, FieldStatus, Store, WriteStats

__version__ = "0.1.0"

__all__ = [
    "DenseResult",
    "FeatureResult",
    "FeatureServingError",
    "FieldStatus",
    "Registry",
    "Store",
    "WriteStats",
    "__version__",
]
