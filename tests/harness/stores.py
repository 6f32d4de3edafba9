"""The type of the ``tmp_store`` fixture (tests/conftest.py), for test signatures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from serving.registry import Registry
from serving.store import Store


class StoreFactory(Protocol):
    def __call__(
        self,
        registry: Registry | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Store: ...


def copy_store(src: Path, dest: Path) -> Path:
    """A copy of the data directory ``src`` that a running server holds open, without its
    LOCK file (a second server can open the copy); ``dest``, returned."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("LOCK"))
    return dest
