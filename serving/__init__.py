"""feature-serving: the online half of a feature store.

``Store`` is the embedded store (a Rust core over RocksDB); ``Registry`` reads ``features.yaml``;
the ``serve`` command (``python -m serving serve``) answers model servers over gRPC and HTTP;
``serving.client`` holds the clients model servers use.

Importing ``serving`` stays light: ``Store``, ``Registry`` and the result classes are loaded on
first use (module ``__getattr__``), so ``from serving.client import FeatureClient`` never loads
the Rust extension (``serving._rust_core``, linked to librocksdb) nor pyarrow. The client wheel,
``feature-serving-client``, ships this file without the store's modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from serving.errors import FeatureServingError

if TYPE_CHECKING:
    from serving.client.results import DenseResult, FieldStatus
    from serving.registry import Registry
    from serving.store import FeatureResult, Store, WriteStats

__version__ = "0.1.0"

#: name -> the module that defines it, imported on first access
_LAZY = {
    "DenseResult": "serving.client.results",
    "FieldStatus": "serving.client.results",
    "FeatureResult": "serving.store",
    "Registry": "serving.registry",
    "Store": "serving.store",
    "WriteStats": "serving.store",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith("serving."):
            raise
        raise ImportError(
            f"serving.{name} is part of the full package, feature-serving ({e.name} is not "
            "installed: this looks like feature-serving-client, which has the clients only)"
        ) from e
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
