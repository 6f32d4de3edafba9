"""Removing a feature from the registry through the real CLI (`stats` opens the store and
applies the registry, as `serve` does): refused only when the feature has stored values
(issue 25)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa

from serving import Registry, Store
from tests.harness import run_cli

V1 = """
project: changes
entities: [{name: user, join_keys: [{name: user_id, dtype: int64}]}]
feature_views:
  - name: profile
    entities: [user]
    features: [{name: a, dtype: float32}]
"""
V2 = V1.replace(
    "[{name: a, dtype: float32}]", "[{name: a, dtype: float32}, {name: b, dtype: int64}]"
)


def _apply(tmp_path: Path, registry: str) -> tuple[int, str]:
    config = tmp_path / "features.yaml"
    config.write_text(registry)
    r = run_cli("stats", "--config", str(config), "--data-dir", str(tmp_path / "store"))
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stderr


def _write(tmp_path: Path, registry: str, columns: dict[str, pa.Array]) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(registry)
    now = pa.array([int(time.time() * 1e6)] * 2, type=pa.timestamp("us", tz="UTC"))
    with Store(tmp_path / "store", Registry.from_yaml(config)) as store:
        store.write("profile", pa.table({"user_id": [1, 2], "event_timestamp": now, **columns}))


def test_a_feature_removed_before_any_value_needs_no_force(tmp_path: Path) -> None:
    _write(tmp_path, V1, {"a": pa.array([0.5, 1.5], type=pa.float32())})
    assert _apply(tmp_path, V2) == (0, "")
    code, stderr = _apply(tmp_path, V1)
    assert code == 0, stderr
    # rows written after 'b' was added, but with no value of it, hold nothing to lose either
    _write(tmp_path, V2, {"a": pa.array([2.5, 3.5], type=pa.float32()),
                          "b": pa.array([None, None], type=pa.int64())})  # fmt: skip
    code, stderr = _apply(tmp_path, V1)
    assert code == 0, stderr


def test_a_feature_with_stored_values_still_needs_force(tmp_path: Path) -> None:
    _write(tmp_path, V2, {"a": pa.array([0.5, 1.5], type=pa.float32()),
                          "b": pa.array([None, 7], type=pa.int64())})  # fmt: skip
    code, stderr = _apply(tmp_path, V1)
    assert code != 0
    assert "feature 'b' was removed from the registry but has stored values" in stderr
    retyped = V2.replace("{name: b, dtype: int64}", "{name: b, dtype: string}")
    code, stderr = _apply(tmp_path, retyped)
    assert code != 0
    assert "'b' changed type from int64 to string" in stderr
