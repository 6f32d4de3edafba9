"""Shared fixtures of the test suite (the processes behind them live in tests/harness/).

- ``registry_path`` / ``registry``: the small test registry ``tests/registries/store_test.yaml``
  (one view per shape the store handles: every type, a composite key, an int32 key, a TTL,
  and the 200-feature ``user_profile`` view of WORKLOADS.md).
- ``registry_dict``: the same registry as a plain dict, for tests that derive evolved variants
  with :meth:`Registry.from_dict`.
- ``tmp_store``: a factory opening :class:`serving.store.Store` objects in temporary data
  directories; every store it opened is closed at teardown.
- ``sample``: the sample offline data (:func:`serving.sample.generate`) at a small N, generated
  once per session.
- ``broker`` / ``module_broker``: a real Kafka-protocol broker (tansu) for one test / one module.
- ``servers``: starts `serve` / `route` processes (:class:`tests.harness.Servers`), every one
  stopped at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.registry import Registry
from serving.sample import SampleInfo, generate
from serving.store import Store
from tests.harness import REGISTRIES, Broker, Servers, running_broker
from tests.harness.stores import StoreFactory

STORE_TEST_REGISTRY = REGISTRIES / "store_test.yaml"
#: entities of the session-wide sample data
SAMPLE_N = 1000


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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own (memory storage: no topic of another test)."""
    with running_broker(tmp_path) as b:
        yield b


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for every test of a module (for module-scoped set-ups on it)."""
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """``servers.serve(config, name, *flags)`` / ``servers.cli(args, name)``: processes under
    ``tmp_path``, stopped at teardown whatever the test's outcome."""
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()
