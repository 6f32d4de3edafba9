"""Shared fixtures of the test suite.

Kept generic on purpose: test modules with their own needs (servers, brokers) define their
fixtures in their own files.

- ``registry_path`` / ``registry``: the small test registry ``tests/registries/store_test.yaml``
  (one view per shape the store handles: every type, a composite key, an int32 key, a TTL,
  and the 200-feature ``user_profile`` view of WORKLOADS.md).
- ``registry_dict``: the same registry as a plain dict, for tests that derive evolved variants
  with :meth:`Registry.from_dict`.
- ``tmp_store``: a factory opening :class:`serving.store.Store` objects in temporary data
  directories; every store it opened is closed at teardown.
- ``sample``: the sample offline data (:func:`serving.sample.generate`) at a small N, generated
  once per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from serving.registry import Registry
from serving.sample import SampleInfo, generate
from serving.store import Store

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
REGISTRIES = TESTS / "registries"
STORE_TEST_REGISTRY = REGISTRIES / "store_test.yaml"
#: entities of the session-wide sample data
SAMPLE_N = 1000


class StoreFactory(Protocol):
    def __call__(
        self,
        registry: Registry | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Store: ...


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return STORE_TEST_REGISTRY


@pytest.fixture(scope="session")
def registry(registry_path: Path) -> Registry:
    return Registry.from_yaml(registry_path)


@pytest.fixture
def registry_dict(registry_path: Path) -> dict[str, Any]:
    """A fresh, mutable copy of the test registry's YAML document."""
    with open(registry_path, encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


@pytest.fixture
def tmp_store(tmp_path: Path, registry: Registry) -> Iterator[StoreFactory]:
    """``tmp_store(registry=None, data_dir=None, **options)`` opens a Store.

    Without ``data_dir`` each call gets a new directory under ``tmp_path``; pass the
    ``data_dir`` of an earlier store (after closing it) to reopen it. ``options`` go to
    :class:`Store` (``hot_tier_bytes``, ``force``, ...). Stores still open at teardown are closed.
    """
    opened: list[Store] = []
    counter = iter(range(1_000_000))

    def make(
        reg: Registry | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Store:
        path = Path(data_dir) if data_dir is not None else tmp_path / f"store{next(counter)}"
        store = Store(path, reg if reg is not None else registry, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        if not store.closed:
            store.close()


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    """Sample offline data of ``features.yaml`` with :data:`SAMPLE_N` users (seed 0)."""
    return generate(tmp_path_factory.mktemp("sample"), n_entities=SAMPLE_N, seed=0)
