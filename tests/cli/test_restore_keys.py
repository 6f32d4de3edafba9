"""A node started from a snapshot accepts the keys of the node it was taken from, and a node
with no usable key says so at start (issue 25), through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.frontend.auth import KeyFile
from tests.harness import REGISTRIES, Servers, http, run_cli

pytestmark = pytest.mark.integration

REGISTRY = REGISTRIES / "store_test.yaml"


def test_a_restored_node_accepts_the_snapshotted_nodes_keys(
    servers: Servers, tmp_path: Path
) -> None:
    admin, _ = KeyFile(tmp_path / "a.keys.json").create("ops", read=["*"], admin=True)
    reader, _ = KeyFile(tmp_path / "a.keys.json").create("model", read=["all_types"])
    a = servers.serve(REGISTRY, "a", "--log-level", "info")
    # through the server's admin API, and from the store on disk once it stopped
    via_api = run_cli("snapshot", "create", str(tmp_path / "snap-api"), "--server", a.url,
                      "--api-key", admin)  # fmt: skip
    assert via_api.returncode == 0, via_api.stderr
    servers.stop(a)
    local = run_cli("snapshot", "create", str(tmp_path / "snap-local"),
                    "--config", str(REGISTRY), "--data-dir", str(tmp_path / "a"))  # fmt: skip
    assert local.returncode == 0, local.stderr
    for snap in ("snap-api", "snap-local"):
        b = servers.serve(REGISTRY, f"b-{snap}", "--restore-from", str(tmp_path / snap))
        status, body = http(f"{b.url}/v1/feature-views", key=reader)
        assert status == 200, body
        status, _ = http(f"{b.url}/v1/feature-views")
        assert status == 401
        assert "no usable API key" not in b.log.read_text()
        assert (tmp_path / f"b-{snap}.keys.json").read_text() == (
            tmp_path / "a.keys.json"
        ).read_text()
        servers.stop(b)


def test_a_node_without_a_usable_key_warns_at_start(servers: Servers, tmp_path: Path) -> None:
    s = servers.serve(REGISTRY, "lonely", "--log-level", "info")
    warning = [ln for ln in s.log.read_text().splitlines() if "no usable API key" in ln]
    assert len(warning) == 1, s.log.read_text()
    assert '"level":"WARNING"' in warning[0]
    assert "every request is refused" in warning[0]
    assert "feature-serving keys create" in warning[0]
