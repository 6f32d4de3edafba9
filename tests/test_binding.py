"""The extension raises the classes of `serving.errors`, bound once when it is imported
(rust_core/src/py/errors.rs): a `serving.errors` that lacks one of them fails the import, naming
the class, instead of failing later at the first error of that kind.

Each case loads the built extension in a fresh interpreter against a stand-in `serving.errors`
module, so the real package is not involved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from serving import _rust_core, errors
from serving.registry import Registry
from serving.store import Store

# Loads the extension file under its own name after putting a stand-in `serving` package and
# `serving.errors` module in place; then raises one core error and prints what came out.
LOADER = r"""
import importlib.util, json, sys, types

so, classes, foreign = json.loads(sys.argv[1])
pkg = types.ModuleType("serving")
pkg.__path__ = []
errs = types.ModuleType("serving.errors")
class FeatureServingError(Exception):
    pass
errs.FeatureServingError = FeatureServingError
for name in classes:
    base = Exception if name == foreign else FeatureServingError
    setattr(errs, name, type(name, (base,), {"__module__": "serving.errors"}))
sys.modules.update({"serving": pkg, "serving.errors": errs})
spec = importlib.util.spec_from_file_location("serving._rust_core", so)
try:
    core = importlib.util.module_from_spec(spec)
except ImportError as e:
    print(json.dumps({"import_error": str(e)}))
    raise SystemExit
try:
    core.partition_for_key(b"k", 0)
except Exception as e:
    name = type(e).__name__
    stand_in = type(e) is getattr(errs, name)
    print(json.dumps({"raised": name, "stand_in": stand_in, "message": str(e)}))
"""

CLASSES = [n for n in errors.__all__ if n != "FeatureServingError"]


def _load(classes: list[str], foreign: str | None = None) -> dict[str, str]:
    arg = json.dumps([_rust_core.__file__, classes, foreign])
    out = subprocess.run(
        [sys.executable, "-c", LOADER, arg], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, str] = json.loads(out.stdout)
    return result


def test_core_errors_are_raised_as_the_bound_classes() -> None:
    got = _load(CLASSES)
    assert got == {
        "raised": "InvalidArgumentError",
        "stand_in": True,
        "message": "num_partitions must be between 1 and 2147483647, got 0",
    }


@pytest.mark.parametrize(
    ("missing", "kind"),
    [("WrongShardError", "WrongShard"), ("ShardAnswerError", "BadShardAnswer")],
)
def test_import_fails_naming_a_class_serving_errors_lacks(missing: str, kind: str) -> None:
    got = _load([n for n in CLASSES if n != missing])
    assert got == {
        "import_error": f"serving.errors.{missing} must be a subclass of FeatureServingError: "
        f"the Rust core raises it for CoreError::{kind}"
    }


def test_import_fails_for_a_class_outside_the_hierarchy() -> None:
    got = _load(CLASSES, foreign="NotFoundError")
    want = "serving.errors.NotFoundError must be a subclass of FeatureServingError"
    assert want in got["import_error"]


REGISTRY = """
project: b
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: seq, dtype: int64}]
"""


def _body(feature: str) -> bytes:
    return json.dumps({"features": [feature], "entities": {"user_id": [1, 2]}}).encode()


def test_serve_many_answers_each_request_or_its_error_in_order(tmp_path: Path) -> None:
    """One batch of `serve_many`: every request gets its own answer, an error of one (unknown
    API, an API key without a scope, an unknown feature) does not touch the others."""
    (tmp_path / "features.yaml").write_text(REGISTRY)
    store = Store(tmp_path / "db", Registry.from_yaml(tmp_path / "features.yaml"))
    store.write(
        "users",
        pa.table(
            {
                "user_id": pa.array([1], pa.int64()),
                "event_timestamp": pa.array([10**15], pa.timestamp("us", tz="UTC")),
                "seq": pa.array([7], pa.int64()),
            }
        ),
    )
    core = store.core
    core.set_scope(5, ["users"], [])
    ok = _body("users:seq")
    answers = core.serve_many(
        [
            ("feast_http", ok, None),
            ("nope", ok, None),
            ("feast_http", ok, 6),
            ("feast_http", _body("users:nope"), None),
            ("feast_http", ok, 5),
        ]
    )
    want = core.serve("feast_http", ok)
    assert json.loads(want)["results"][1]["values"] == [7, None]
    assert [type(a) for a in answers] == [
        bytes,
        errors.InvalidArgumentError,
        errors.PermissionDeniedError,
        errors.NotFoundError,
        bytes,
    ]
    assert answers[0] == want
    assert answers[4] == want
    assert str(answers[1]) == "unknown api 'nope'"
    assert str(answers[2]) == "this API key has no read scope"
    store.close()
