"""`serve` on a port another process holds, and a gRPC client given the HTTP port: one line
that says what to change, not a traceback (issue 25)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import REGISTRIES, Servers, run_cli, wait_until

STORE_TEST_REGISTRY = REGISTRIES / "store_test.yaml"

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("taken", ["http", "grpc"])
def test_a_taken_port_is_one_error_line_naming_the_flag(servers: Servers, taken: str) -> None:
    holder = servers.serve(STORE_TEST_REGISTRY, "holder")
    # the other port is 0 (any free one), so only the taken one can fail
    http_port = holder.http if taken == "http" else 0
    grpc_port = holder.grpc if taken == "grpc" else 0
    r = run_cli(
        "serve", "--config", str(STORE_TEST_REGISTRY), "--data-dir", str(servers.tmp / "second"),
        "--no-auth", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
    )  # fmt: skip
    taken_port = holder.http if taken == "http" else holder.grpc
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert f":{taken_port} " in errors[0], errors[0]
    assert "in use" in errors[0], errors[0]
    assert f"--{taken}-port" in errors[0], errors[0]


def test_route_on_a_taken_port_is_one_error_line(servers: Servers) -> None:
    holder = servers.serve(STORE_TEST_REGISTRY, "holder")
    cmap = servers.tmp / "cluster.yaml"
    cmap.write_text(f"topic_partitions: 1\nshards:\n  0: ['127.0.0.1:{holder.grpc}']\n")
    r = run_cli(
        "route", "--config", str(STORE_TEST_REGISTRY), "--cluster-map", str(cmap), "--no-auth",
        "--http-port", str(holder.http), "--grpc-port", "0",
    )  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert f":{holder.http} for HTTP: the port is in use" in errors[0], errors[0]
    assert "--http-port" in errors[0], errors[0]


def test_a_grpc_client_on_the_http_port_is_one_warning(servers: Servers) -> None:
    s = servers.serve(STORE_TEST_REGISTRY, "node")
    with grpc.insecure_channel(f"127.0.0.1:{s.http}") as channel, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    wait_until(lambda: "HTTP/2" in s.log.read_text(), 10, "the server's warning")
    log = s.log.read_text()
    lines = [ln for ln in log.splitlines() if "HTTP/2 connection" in ln]
    assert lines, log
    assert all('"level":"WARNING"' in ln for ln in lines), log
    assert f"gRPC is port {s.grpc}" in lines[0]
    assert "Traceback" not in log, log
    assert '"level":"ERROR"' not in log, log
