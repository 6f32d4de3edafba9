"""The serving path in-process: one `Store.serve(api, body)` call per request, the exact work a
server does per request minus the transport (decode, plan, lookup, TTL, encode, counters).

Workloads W1 (1 entity x 100 features) and W2 (100 entities x 200 features) of WORKLOADS.md, on
every API and layout; and the Kafka key encoder. Figures in docs/benchmarks.md; rerun with

    .venv/bin/python -m pytest -q -m benchmark --benchmark-enable \
        tests/benchmarks/test_serve_bench.py

Each benchmark has a ``smoke`` variant (300 entities) that runs once in `make test`.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving import _rust_core
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feast.types import Value_pb2
from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from serving.registry import Registry
from serving.sample import generate, user_profile_value
from serving.store import Store

REPO = Path(__file__).resolve().parents[2]
SCALES = [
    pytest.param(300, id="smoke"),
    pytest.param(20_000, id="20k", marks=pytest.mark.benchmark),
]
WORKLOADS = {"w1": (1, 100), "w2": (100, 200)}
N_REQUESTS = 500


@pytest.fixture(scope="module", params=SCALES)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    n: int = request.param
    info = generate(tmp_path_factory.mktemp(f"serve{n}"), n_entities=n, seed=0)
    s = Store(tmp_path_factory.mktemp("db"), Registry.from_yaml(REPO / "features.yaml"))
    s.write("user_profile", pq.read_table(info.user_profile_path))
    s.core.configure_serving(max_entities=1000, max_features=1000)
    s.n = n  # type: ignore[attr-defined]
    yield s
    s.close()


def _entities(n: int, k: int, rng: random.Random) -> list[int]:
    return rng.sample(range(n), k)


def _feast_json(ids: list[int], nf: int) -> bytes:
    return json.dumps(
        {"features": [f"user_profile:f{i:03d}" for i in range(nf)], "entities": {"user_id": ids}}
    ).encode()


def _feast_grpc(ids: list[int], nf: int) -> bytes:
    req = feast_pb2.GetOnlineFeaturesRequest()
    req.features.val.extend(f"user_profile:f{i:03d}" for i in range(nf))
    req.entities["user_id"].val.extend(Value_pb2.Value(int64_val=u) for u in ids)
    return req.SerializeToString()


def _v1(ids: list[int], nf: int, dense: bool) -> bytes:
    req = v1.GetFeatureVectorRequest(
        include_statuses=True, layout=v1.LAYOUT_DENSE if dense else v1.LAYOUT_COLUMNS
    )
    req.features.refs.extend(f"user_profile:f{i:03d}" for i in range(nf))
    req.entities["user_id"].int64_values.values.extend(ids)
    return req.SerializeToString()


BUILD: dict[str, Callable[[list[int], int], bytes]] = {
    "feast_http": _feast_json,
    "feast_grpc": _feast_grpc,
    "v1_grpc_dense": lambda ids, nf: _v1(ids, nf, True),
    "v1_grpc_columns": lambda ids, nf: _v1(ids, nf, False),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("api", list(BUILD))
def test_serve(benchmark: Any, store: Store, api: str, workload: str) -> None:
    k, nf = WORKLOADS[workload]
    rng = random.Random(0)
    n: int = store.n  # type: ignore[attr-defined]
    reqs = [(ids, BUILD[api](ids, nf)) for ids in (_entities(n, k, rng) for _ in range(N_REQUESTS))]
    wire_api = "v1_grpc" if api.startswith("v1_grpc") else api
    for _, body in reqs:  # warm the hot tier
        store.core.serve(wire_api, body)
    nxt = itertools.cycle(reqs).__next__
    benchmark.extra_info.update({"api": api, "workload": workload, "entities": k, "features": nf})

    def call() -> tuple[list[int], bytes]:
        ids, body = nxt()
        return ids, store.core.serve(wire_api, body)

    ids, out = benchmark(call)
    _check(api, ids, nf, out)


def _check(api: str, ids: list[int], nf: int, out: bytes) -> None:
    """The last answer holds the WORKLOADS formula's values."""
    want = np.array([[user_profile_value(u, f) for f in range(nf)] for u in ids], np.float32)
    if api == "feast_http":
        got = np.array([c["values"] for c in json.loads(out)["results"][1:]], np.float32).T
    elif api == "feast_grpc":
        resp = feast_pb2.GetOnlineFeaturesResponse.FromString(out)
        got = np.array([[v.float_val for v in r.values] for r in resp.results[1:]], np.float32).T
    else:
        resp = v1.GetFeatureVectorResponse.FromString(out)
        if api.endswith("dense"):
            got = np.frombuffer(resp.dense.values, "<f4").reshape(len(ids), nf)
        else:
            got = np.array([list(c.float_values.values) for c in resp.columns], np.float32).T
    np.testing.assert_array_equal(got, want)


def test_encode_entity_keys(benchmark: Any, store: Store) -> None:
    """Kafka message keys of 10,000 int64 entities (what a producer helper pays)."""
    ids = list(range(10_000))
    keys = benchmark(_rust_core.encode_entity_keys, ["int64"], [ids])
    assert len(keys) == 10_000
    assert len(set(keys)) == 10_000
