"""``import serving`` and ``serving.client`` stay light (no Rust extension, no pyarrow): the
client wheel ships without them, and a model server that only reads features should not pay
for them. The heavy names stay reachable where they were."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import ROOT

HEAVY = ["serving._rust_core", "serving.store", "serving.registry", "pyarrow", "aiohttp"]


def _loaded_after(code: str) -> dict[str, bool]:
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded: dict[str, bool] = json.loads(done.stdout)
    return loaded


def test_importing_the_client_loads_nothing_heavy() -> None:
    for code in (
        "import serving",
        "from serving.client import FeatureClient, AsyncFeatureClient, ShardedFeatureClient",
        "from serving.client import ColumnsResult, DenseResult, FieldStatus",
    ):
        loaded = _loaded_after(code)
        assert not any(loaded.values()), (code, loaded)


def test_the_old_names_still_work() -> None:
    import serving
    import serving.store
    from serving.client import DenseResult, FieldStatus

    assert serving.DenseResult is serving.store.DenseResult is DenseResult
    assert serving.FieldStatus is serving.store.FieldStatus is FieldStatus
    assert serving.Store is serving.store.Store
    assert {"Store", "Registry", "DenseResult"} <= set(dir(serving))
    with pytest.raises(AttributeError, match="NoSuchThing"):
        serving.NoSuchThing  # noqa: B018
