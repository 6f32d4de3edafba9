"""Smoke tests of the load-test and benchmark tooling in loadtest/ (not benchmarks: no figure is
checked, only that every measurement runs and reports), so the tools cannot rot.

- ``bench_serving.py --quick`` (1 s per measurement, no warm-up) against a server on the small
  session sample: the JSON it writes has every row of the Performance table, each with requests
  and without errors.
- ``run_locust.sh`` (what ``make loadtest`` runs) for 2 s with both users, one Locust process
  each: Locust's final statistics have all four tasks (HTTP and gRPC, W1 and W2), each with
  requests and no failures; and the gRPC user alone on one workload.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.sample import SampleInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LOADTEST = REPO / "loadtest"
ROWS = {"http_w1_c1", "http_w1_c32", "http_w2_c1", "http_w2_c32", "grpc_w1_c32", "grpc_w2_c1"}
TASKS = {"HTTP W1", "HTTP W2", "gRPC W1 dense", "gRPC W2 dense"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FS_API_KEY", None)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.skipif(
    not (shutil.which("wrk") and shutil.which("h2load")),
    reason="wrk / h2load missing (Debian wrk, nghttp2-client; make sysdeps)",
)
def test_bench_serving_quick_reports_every_row(sample: SampleInfo, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(LOADTEST / "bench_serving.py"), "--quick", "--warmup", "0",
         "--sample-dir", sample.out_dir, "--out", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    results = {r["id"]: r for r in doc["results"]}
    assert set(results) == ROWS
    for r in results.values():
        assert r["requests"] > 0, r
        assert r["errors"] == 0, r
        assert r["p50_ms"] <= r["p99_ms"], r
        assert r["server_cpu_cores"] is not None, r
        assert r["server_rss_mb"] > 0, r
    # the printed table has one line per row, each with its target
    for r in results.values():
        assert f"| {r['label']} |" in proc.stdout
        assert r["target"] in proc.stdout


def _run_locust(sample: SampleInfo, tmp: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = _env() | {
        "PYTHON": sys.executable,
        "SAMPLE_DIR": sample.out_dir,
        "REPORTS": str(tmp / "reports"),
        "USERS": "2",
        "SPAWN_RATE": "2",
        "DURATION": "2s",
        **extra,
    }
    return subprocess.run(
        ["bash", str(LOADTEST / "run_locust.sh")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_run_locust_both_users_all_tasks(sample: SampleInfo, tmp_path: Path) -> None:
    proc = _run_locust(sample, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = (tmp_path / "reports").iterdir()
    # one Locust process per user class, each with its reports
    for cls in ("HttpFeatureUser", "GrpcFeatureUser"):
        assert (report / f"report-{cls}.html").stat().st_size > 0
        assert (report / f"locust-{cls}_stats.csv").exists()
    stats = {e["name"]: e for e in json.loads((report / "stats.json").read_text())}
    assert set(stats) == TASKS
    for name, e in stats.items():
        assert e["num_requests"] > 0, name
        assert e["num_failures"] == 0, name
    lines = {
        ln.split()[0] + " " + ln.split()[1]: ln
        for ln in proc.stdout.splitlines()
        if ln[:4] in ("HTTP", "gRPC")
    }
    for name in TASKS:
        # the row ends with its load generator's CPU share
        assert lines[" ".join(name.split()[:2])].endswith("%"), proc.stdout


def test_run_locust_grpc_user_alone_one_workload(sample: SampleInfo, tmp_path: Path) -> None:
    """The gRPC user on its own (LOCUST_USERS with TAGS: the class is not read as a tag) against
    a real server: its W2 task only, requests answered, no failures."""
    proc = _run_locust(sample, tmp_path, LOCUST_USERS="GrpcFeatureUser", TAGS="w2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = (tmp_path / "reports").iterdir()
    stats = {e["name"]: e for e in json.loads((report / "stats.json").read_text())}
    assert set(stats) == {"gRPC W2 dense"}, stats
    assert stats["gRPC W2 dense"]["num_requests"] > 0
    assert stats["gRPC W2 dense"]["num_failures"] == 0
    assert not (report / "report-HttpFeatureUser.html").exists()
