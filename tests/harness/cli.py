"""One-shot runs of the `feature-serving` CLI (``python -m serving ...``) in the clone's root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness.paths import ROOT


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m serving ARGS`` to its end; the exit code is the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def ingest_until_idle(
    config: Path, data_dir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``ingest`` of every stream source of ``config`` into ``data_dir``, stopping after 1 s
    without records (the counters it logs at the end: :func:`stopped_stats`)."""
    return run_cli(
        "ingest", "--config", str(config), "--data-dir", str(data_dir),
        "--stats-interval", "0", "--stop-when-idle", "1", *extra,
    )  # fmt: skip


def stopped_stats(stderr: str) -> dict[str, dict[str, int]]:
    """The counters `ingest` logs when it stops."""
    line = next(ln for ln in reversed(stderr.splitlines()) if "kafka loader: stopped:" in ln)
    return dict(json.loads(line.split("kafka loader: stopped: ", 1)[1]))
