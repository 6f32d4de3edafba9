"""Per-caller limits against a real server: a bounded burst from a real client meets the token
bucket (429 with Retry-After, RESOURCE_EXHAUSTED over gRPC, other callers unaffected), and the
concurrency cap holds while requests wait in a transform that finishes only when told."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pyarrow as pa
import pytest

from serving import Registry, Store
from serving._proto.feast.serving import ServingService_pb2 as feast_pb2
from serving._proto.feast.types import Value_pb2
from serving.frontend.auth import KeyFile
from tests import harness
from tests.harness import metric, scrape, start_server, stop_server, wait_until

pytestmark = pytest.mark.integration

TRANSFORMS = """
import pathlib, time

def held(b):
    release = pathlib.Path(__file__).with_name("release")
    for _ in range(200):
        if release.exists():
            break
        time.sleep(0.05)
    return {"x": b["u0"]}
"""

REGISTRY = """
project: limits
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: users
    entities: [user]
    features: [{name: u0, dtype: float32}]
on_demand_feature_views:
  - {name: held, sources: ["users:u0"], features: [{name: x, dtype: float32}],
     transform: "limits_tx:held"}
"""

READ = {"features": ["users:u0"], "entities": {"user_id": [1]}}
HELD = {"features": ["held:x"], "entities": {"user_id": [1]}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "limits_tx.py").write_text(TRANSFORMS)
    config = tmp / "features.yaml"
    config.write_text(REGISTRY)
    with Store(tmp / "db", Registry.from_yaml(config)) as store:
        store.write(
            "users",
            pa.table({
                "user_id": pa.array([1], pa.int64()),
                "event_timestamp": pa.array([int(time.time() * 1e6)], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")),
                "u0": pa.array([1.5], pa.float32()),
            }),
        )  # fmt: skip
    (tmp / "auth.yaml").write_text(
        """
limits:
  default: {rate: 1000, burst: 1000}
  identities:
    bursty: {rate: 2, burst: 10}
    capped: {concurrency: 2}
"""
    )
    keys = KeyFile(tmp / "keys.json")
    tokens = {n: keys.create(n, role="reader")[0] for n in ("bursty", "capped", "calm")}
    server = start_server(
        config, tmp / "db", tmp / "log",
        "--keys-file", str(tmp / "keys.json"), "--auth-config", str(tmp / "auth.yaml"),
    )  # fmt: skip
    try:
        yield {"server": server, "keys": tokens, "tmp": tmp}
    finally:
        (tmp / "release").touch()
        stop_server(server)


def _post(url: str, body: Any, key: str) -> tuple[int, str | None]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status, None
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers.get("Retry-After")


def test_a_bounded_burst_gets_its_bucket_and_no_more(env: dict[str, Any]) -> None:
    url = env["server"].url + "/get-online-features"
    k = env["keys"]
    # 30 requests back to back: the bucket holds 10, refills 2/s
    results = [_post(url, READ, k["bursty"]) for _ in range(30)]
    ok = sum(1 for s, _ in results if s == 200)
    refused = [(s, ra) for s, ra in results if s != 200]
    assert 10 <= ok <= 14, results
    assert all(s == 429 and ra is not None and int(ra) >= 1 for s, ra in refused), refused
    status, body = harness.http(url, READ, key=k["bursty"])
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert "retry after" in body["error"]["message"]
    # another caller is not held back
    assert all(_post(url, READ, k["calm"])[0] == 200 for _ in range(20))
    # gRPC shares the bucket
    req = feast_pb2.GetOnlineFeaturesRequest()
    req.features.val.append("users:u0")
    req.entities["user_id"].val.append(Value_pb2.Value(int64_val=1))
    with env["server"].channel() as ch, pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/feast.serving.ServingService/GetOnlineFeatures")(
            req.SerializeToString(),
            metadata=(("authorization", f"Bearer {k['bursty']}"),),
            timeout=5,
        )
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(e.value.trailing_metadata() or ())["retry-after"]) >= 1
    # the bucket refills: after a second, requests pass again
    time.sleep(1.1)
    assert _post(url, READ, k["bursty"])[0] == 200
    samples = scrape(env["server"].url)
    assert metric(samples, "feature_serving_limited_requests_total",
                  project="limits", limit="rate") >= 16  # fmt: skip


def test_concurrency_cap_holds_while_requests_are_in_flight(env: dict[str, Any]) -> None:
    url = env["server"].url + "/get-online-features"
    k = env["keys"]["capped"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(_post, url, HELD, k) for _ in range(2)]
        samples_ok = lambda: metric(  # noqa: E731
            scrape(env["server"].url),
            "feature_serving_requests_in_flight", api="feast-http",
        ) >= 2  # fmt: skip
        wait_until(samples_ok, 10, "two requests in flight")
        extra = [_post(url, READ, k) for _ in range(3)]
        assert [s for s, _ in extra] == [429, 429, 429]
        assert all(ra == "1" for _, ra in extra)
        (env["tmp"] / "release").touch()
        assert [f.result()[0] for f in held] == [200, 200]
    assert _post(url, READ, k)[0] == 200  # slots are given back
