"""Deadlines: a gRPC call whose deadline is shorter than its wait is answered DEADLINE_EXCEEDED
and its work is not done after the caller left (the served-value counter of a view only that
call reads stays at zero)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
from tests.harness import metric, scrape, start_server, stop_server
from tests.harness.profile import preload, write_config

pytestmark = pytest.mark.integration

N_USERS = 50_000
METHOD = "/feature_serving.v1.FeatureService/GetFeatureVector"


def request(refs: list[str], users: list[int]) -> bytes:
    req = v1.GetFeatureVectorRequest()
    req.features.refs.extend(refs)
    req.entities["user_id"].int64_values.values.extend(users)
    return bytes(req.SerializeToString())


@pytest.mark.parametrize(
    "mode",
    [("--batch-window-us", "100", "--max-batch", "1"), ("--max-loop-lag-ms", "0")],
    ids=["batched", "inline"],
)
def test_expired_requests_are_not_served(tmp_path: Path, mode: tuple[str, ...]) -> None:
    config = write_config(tmp_path, n_features=50, marker=True)
    preload(config, tmp_path / "db", N_USERS, 1, 50)
    server = start_server(
        config, tmp_path / "db", tmp_path / "log", "--no-auth", "--hot-tier-bytes", "0", *mode
    )
    heavy = request([f"profile:f{i}" for i in range(50)], list(range(0, N_USERS, 50)))
    marker = request(["marker:m"], [1])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as ch:
            call = ch.unary_unary(METHOD)
            call(heavy, timeout=10)  # warm up
            t0 = time.perf_counter()
            call(heavy, timeout=10)
            work = time.perf_counter() - t0
            with ThreadPoolExecutor(64) as pool:
                backlog = [pool.submit(call, heavy, timeout=30) for _ in range(300)]
                time.sleep(0.1)  # the backlog reached the server
                with pytest.raises(grpc.RpcError) as info:
                    call(marker, timeout=max(work / 4, 0.002))
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                for f in backlog:
                    f.result()
            time.sleep(0.2)
            text = scrape(server.url)
            assert metric(text, "feature_serving_feature_values_total", view="marker") == 0, (
                "the expired request was served after its caller left"
            )
            # the counter does count: a call with time to spare is served
            call(marker, timeout=10)
            text = scrape(server.url)
            assert metric(text, "feature_serving_feature_values_total", view="marker") == 1
            print(f"\none heavy call {work * 1000:.1f} ms; expired marker call not served")
    finally:
        assert stop_server(server) == 0
