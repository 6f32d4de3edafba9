"""The Prometheus alerting rules in docs/ops pass `promtool check rules`, and their unit tests
(`promtool test rules`: each alert fires on a series that should fire it and stays quiet on
near misses) pass. promtool comes with the Debian package `prometheus` (`make sysdeps`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

OPS = Path(__file__).resolve().parents[1] / "docs" / "ops"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` (make sysdeps)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], check=False, capture_output=True, text=True, timeout=60, cwd=OPS
    )


def test_rules_are_valid() -> None:
    r = run("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_rule_unit_tests_pass() -> None:
    r = run("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    assert "FAILED" not in r.stdout + r.stderr


def test_every_alert_is_unit_tested() -> None:
    import yaml

    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((OPS / "alerts_test.yml").read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts <= fired, f"alerts never shown firing: {sorted(alerts - fired)}"
    # besides the near-miss series next to the firing ones, each alert has a case expecting none
    assert alerts <= quiet, f"alerts never shown quiet: {sorted(alerts - quiet)}"
    for a in rules["groups"]:
        for r in a["rules"]:
            if "alert" in r:
                assert r["annotations"]["summary"], r["alert"]
                assert r["annotations"]["description"], r["alert"]
