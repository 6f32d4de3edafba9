"""Smoke test of ``loadtest/bench_push.py`` (``make bench-push``): ``--quick --skip-feast``
against our own targets only (the Feast targets need ``make bench-push-deps``), so the script
cannot rot. No figure is checked, only that every measurement ran, answered 200 and reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_bench_push_quick_reports_every_measurement(tmp_path: Path) -> None:
    env = dict(os.environ) | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "bench_push.py"), "--quick", "--skip-feast",
         "--concurrency", "2", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (saved,) = tmp_path.glob("*.json")
    doc = json.loads(saved.read_text())
    assert set(doc["targets"]) == {"feature-serving, online (store)", "feature-serving, via Kafka"}
    for target in doc["targets"].values():
        assert set(target) == {"1000@c2", "1@c2"}
        for m in target.values():
            assert m["errors"] == 0, m
            assert all(r["pushes"] > 0 for r in m["runs"]), m
    lat = doc["kafka_visible"]
    assert lat["samples"] == 5
    assert lat["ack_p50_ms"] <= lat["visible_p50_ms"]
    assert "| feature-serving, via Kafka |" in proc.stdout
