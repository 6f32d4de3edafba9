"""`make cluster-demo` (``python -m serving.dev.cluster_demo``): broker, two shards and a router on
this machine; the answers it prints are the produced values, through the router and from each
shard; a shard refuses the other's user; the curl it prints works as printed while it serves;
Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serving.dev.cluster_demo import ASKED, FEATURES, user_row
from tests.harness.paths import ROOT
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration


def _values(answer: dict[str, object], users: list[int]) -> None:
    """``answer`` (Feast JSON) holds the demo's rows of ``users``, every value PRESENT."""
    names = answer["metadata"]["feature_names"]  # type: ignore[index]
    assert names == ["user_id", *(f.split(":")[1] for f in FEATURES)], names
    results = answer["results"]  # type: ignore[index]
    assert results[0]["values"] == users
    for name, col in zip(names[1:], results[1:], strict=True):
        assert col["values"] == [user_row(u)[name] for u in users], name
        assert set(col["statuses"]) == {"PRESENT"}, name


def test_cluster_demo_answers_and_stops(tmp_path: Path) -> None:
    http, grpc = free_port(), free_port()
    out = tmp_path / "answers.json"
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.dev.cluster_demo", "--http-port", str(http),
         "--grpc-port", str(grpc), "--work-dir", str(work), "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Serving: router"):
                break
        printed = "".join(lines)
        assert "Serving: router" in printed, printed + proc.communicate(timeout=30)[1]

        got = json.loads(out.read_text())
        assert got["router"]["status"] == 200
        _values(got["router"]["answer"], ASKED)
        for k in (0, 1):
            asked = got[f"shard{k}"]["answer"]["results"][0]["values"]
            assert got[f"shard{k}"]["status"] == 200
            _values(got[f"shard{k}"]["answer"], asked)
        assert got["refused"]["status"] == 409
        assert got["refused"]["answer"]["error"]["code"] == "wrong_shard"
        # every answer was printed, in words
        for u in ASKED:
            row = user_row(u)
            assert f"user_id={u}: clicks_7d={row['clicks_7d']}, ctr={row['ctr']}" in printed

        # the printed curl, run as printed, while the demo serves
        (curl,) = [ln.strip() for ln in lines if ln.strip().startswith("curl ")]
        done = subprocess.run(
            ["bash", "-c", curl], check=False, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        _values(json.loads(done.stdout), ASKED)

        pids = [int(re.match(r"\d+", w)[0]) for ln in lines for w in ln.split("pid ")[1:2]]  # type: ignore[index]
        assert len(pids) == 4, printed  # broker, two shards, router
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped: router, shards, broker" in rest
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid
    finally:
        if proc.poll() is None:
            # Ctrl-C first: a killed demo would leave its broker, shards and router running
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
