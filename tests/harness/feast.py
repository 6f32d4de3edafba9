"""The pinned Feast SDK's venv (``.venv-feast``, ``make feast-venv``): its Python, the
environment to run it in, and a clear failure when it is missing."""

from __future__ import annotations

import os

import pytest

from tests.harness.paths import ROOT

FEAST_VENV = ROOT / ".venv-feast"
FEAST_PY = FEAST_VENV / "bin" / "python"


def feast_env() -> dict[str, str]:
    """This process's environment for the Feast venv's Python (no telemetry)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["VIRTUAL_ENV"] = str(FEAST_VENV)
    env["FEAST_USAGE"] = "False"
    return env


def require_feast_venv() -> None:
    if not FEAST_PY.exists():
        pytest.fail(
            f"the Feast SDK venv is missing: {FEAST_PY} not found. Create it with "
            "`make feast-venv` (installs the pinned feast into .venv-feast/).",
            pytrace=False,
        )
