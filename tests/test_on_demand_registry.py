"""Registry errors of on-demand views (issue 16): each names its file and line, like the
registry's other errors; the transform module is imported at load, and imported again only
when a reload asks for it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from serving import Registry
from serving.errors import RegistryError, TransformError
from serving.ondemand import OnDemandRunner

BASE = """\
project: t
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
  - {name: item, join_keys: [{name: item_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: u0, dtype: float32}]
  - name: items
    entities: [item]
    features: [{name: i0, dtype: float32}]
on_demand_feature_views:
  - name: odfv
"""


def load(tmp_path: Path, entry: str, module: str = "def f(b):\n    return b\n") -> Registry:
    name = f"tx_{abs(hash((str(tmp_path), entry))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(module)
    path = tmp_path / "features.yaml"
    path.write_text(BASE + entry.replace("MOD", name))
    return Registry.from_yaml(path)


def error(tmp_path: Path, entry: str, module: str = "def f(b):\n    return b\n") -> str:
    with pytest.raises(RegistryError) as info:
        load(tmp_path, entry, module)
    return str(info.value)


def test_a_good_entry_loads(tmp_path: Path) -> None:
    r = load(
        tmp_path,
        "    sources: [users:u0, items:i0]\n"
        "    request_source: {schema: [{name: lat, dtype: float64}]}\n"
        "    features: [{name: out, dtype: float32}]\n"
        "    transform: MOD:f\n",
    )
    o = r.on_demand_views["odfv"]
    assert [str(s) for s in o.sources] == ["users:u0", "items:i0"]
    assert [(f.name, f.dtype) for f in o.request_fields] == [("lat", "float64")]
    assert o.mode == "pyarrow"
    assert not o.write_to_online_store
    assert "odfv" not in r.feature_views  # request-time views are not stored
    assert r.resolve_refs(["odfv:*"])[0].view == "odfv"


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    transform: no_such_module_xyz:f\n",
            ["features.yaml:16", "cannot import module 'no_such_module_xyz'"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    transform: MOD:g\n",
            ["features.yaml:16", "has no 'g'"],
        ),
        (
            "    sources: [users:u9]\n    features: [{name: o, dtype: float32}]\n"
            "    transform: MOD:f\n",
            ["features.yaml:14", "feature 'u9' not found in view 'users'"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float16}]\n"
            "    transform: MOD:f\n",
            ["features.yaml:15", "unknown type 'float16'"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    transform: MOD:f\n    mode: polars\n",
            ["features.yaml:17", "unknown mode 'polars'"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    transform: MOD\n",
            ["features.yaml:16", "not of the form 'module:function'"],
        ),
        (
            "    sources: [users:u0, items:i0]\n    features: [{name: o, dtype: float32}]\n"
            "    transform: MOD:f\n    write_to_online_store: true\n",
            ["features.yaml:14", "derives from one feature view", "items, users"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    request_source: {schema: [{name: x, dtype: float64}]}\n"
            "    transform: MOD:f\n    write_to_online_store: true\n",
            ["features.yaml:16", "request_source is only for request-time views"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    request_source: {schema: [{name: x, dtype: bytes}]}\n    transform: MOD:f\n",
            ["features.yaml:16", "unknown type 'bytes'"],
        ),
        (
            "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
            "    request_source: {schema: [{name: user_id, dtype: int64}]}\n    transform: MOD:f\n",
            ["features.yaml:16", "'user_id' is a join key of source view 'users'"],
        ),
    ],
)
def test_bad_entries_name_file_line_and_field(tmp_path: Path, entry: str, words: list[str]) -> None:
    msg = error(tmp_path, entry)
    for w in words:
        assert w in msg, (w, msg)


def test_a_name_of_a_feature_view_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    (tmp_path / "clash_tx.py").write_text("def f(b):\n    return b\n")
    path.write_text(
        BASE.replace("  - name: odfv\n", "  - name: users\n")
        + "    sources: [items:i0]\n    features: [{name: o, dtype: float32}]\n"
        "    transform: clash_tx:f\n"
    )
    with pytest.raises(RegistryError) as info:
        Registry.from_yaml(path)
    assert "clash.yaml:13:" in str(info.value), info.value
    assert "duplicate view name 'users' (first defined at feature_views" in str(info.value)


def test_a_module_that_raises_on_import_is_a_registry_error(tmp_path: Path) -> None:
    msg = error(
        tmp_path,
        "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
        "    transform: MOD:f\n",
        module="raise RuntimeError('no model file')\n",
    )
    assert "raised RuntimeError: no model file" in msg


def test_reload_picks_up_a_changed_module_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / "reload_tx.py").write_text("def f(b):\n    return {'o': b['u0']}\n")
    path = tmp_path / "features.yaml"
    path.write_text(
        BASE + "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
        "    transform: reload_tx:f\n"
    )
    first = Registry.from_yaml(path)
    # another size, so that the cached bytecode is not taken for the new source
    (tmp_path / "reload_tx.py").write_text("def f(b):\n    return {'o': b['u0'], 'v': 2}\n")
    # without reload_transforms the module already imported is used as it is
    again = Registry.from_yaml(path)
    assert again.on_demand_views["odfv"].function is first.on_demand_views["odfv"].function
    fresh = Registry.from_yaml(path, reload_transforms=True).on_demand_views["odfv"].function
    assert fresh is not first.on_demand_views["odfv"].function
    assert fresh({"u0": 1}) == {"o": 1, "v": 2}


def test_static_artifacts_failure_names_the_view(tmp_path: Path) -> None:
    r = load(
        tmp_path,
        "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
        "    transform: MOD:f\n    static_artifacts: MOD:art\n",
        module="def f(b, a):\n    return b\n\n"
        "def art():\n    raise OSError('stats.json missing')\n",
    )
    with pytest.raises(TransformError) as info:
        OnDemandRunner(r)
    assert "odfv" in str(info.value)
    assert "stats.json missing" in str(info.value)


def test_runner_checks_outputs_in_both_modes(tmp_path: Path) -> None:
    r = load(
        tmp_path,
        "    sources: [users:u0]\n    features: [{name: o, dtype: float32}]\n"
        "    transform: MOD:f\n",
        module="def f(b):\n    return 'not a batch'\n",
    )
    runner = OnDemandRunner(r)
    batch = pa.record_batch({"u0": pa.array([1.0], pa.float32())})
    with pytest.raises(TransformError) as info:
        runner.compute("odfv", batch)
    assert "is str" in str(info.value)
    assert runner.stats["odfv"].errors == 1
    assert runner.stats["odfv"].runs == 1
