"""`keys create` / `keys list` through the real CLI, and the demo's key across restarts
(issue 25)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from serving.sample import SampleInfo
from tests.harness import ROOT, Servers, http, run_cli, wait_until

REGISTRY = ROOT / "features.yaml"


def _create(tmp_path: Path, *flags: str) -> tuple[int, str]:
    r = run_cli(
        "keys", "create", "--config", str(REGISTRY), "--data-dir", str(tmp_path / "store"),
        "--name", "model-server", *flags,
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stderr


def _listed(tmp_path: Path) -> str:
    r = run_cli("keys", "list", "--data-dir", str(tmp_path / "store"))
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--read", "user_profil"], "--read user_profil: no feature view or feature service "
         "'user_profil' in "),
        (["--read", "user_profile", "user_profile_al"], "did you mean 'user_profile_all'?"),
        (["--read", "*", "--write", "user_acount"], "--write user_acount: no feature view"),
        (["--read", "*", "--write", "user_profile_all"], "is a feature service; --write takes"),
        (["--read", "*", "--expires", "90"], "--expires 90: give a unit: s, m, h, d or w"),
        (["--read", "*", "--expires", "90x"], "--expires 90x: invalid duration"),
    ],
)  # fmt: skip
def test_a_key_that_could_never_work_is_refused(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    code, stderr = _create(tmp_path, *flags)
    assert code != 0
    assert stderr.startswith("error: "), stderr
    assert says in stderr, stderr
    assert "model-server" not in _listed(tmp_path)


def test_the_registry_named_by_config_is_the_one_checked(tmp_path: Path) -> None:
    r = run_cli(
        "keys", "create", "--config", str(tmp_path / "missing.yaml"),
        "--data-dir", str(tmp_path / "store"), "--name", "k", "--read", "user_profile",
    )  # fmt: skip
    assert r.returncode != 0
    assert "missing.yaml' not found" in r.stderr
    assert "--config" in r.stderr


def test_list_shows_each_keys_expiry(tmp_path: Path) -> None:
    assert (
        _create(tmp_path, "--read", "user_profile", "user_profile_all", "--expires", "2d")[0] == 0
    )
    forever = run_cli(
        "keys", "create", "--config", str(REGISTRY), "--data-dir", str(tmp_path / "store"),
        "--name", "forever", "--read", "*",
    )  # fmt: skip
    assert forever.returncode == 0, forever.stderr
    out = _listed(tmp_path).splitlines()
    assert "expires (UTC)" in out[0]
    row = next(ln for ln in out if "model-server" in ln)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row), row
    assert "never" in next(ln for ln in out if "forever" in ln)
    listed = json.loads(
        run_cli("keys", "list", "--json", "--data-dir", str(tmp_path / "store")).stdout
    )
    by_name = {k["name"]: k for k in listed}
    lifetime = by_name["model-server"]["expires_at"] - by_name["model-server"]["created_at"]
    assert lifetime == pytest.approx(2 * 86400, abs=1)
    assert by_name["forever"]["expires_at"] is None


def _demo_key(servers: Servers, config: Path, data_dir: Path, name: str) -> str:
    s = servers.cli(["demo", "--config", str(config), "--data-dir", str(data_dir)], name)
    wait_until(lambda: "Serving on" in s.log.read_text(), 60, "the demo's answers")
    key = re.search(r"^API key: (\S+)$", s.log.read_text(), re.MULTILINE)
    assert key, s.log.read_text()
    status, _ = http(f"{s.url}/v1/feature-views", key=key.group(1))
    assert status == 200
    servers.stop(s)
    return key.group(1)


@pytest.mark.integration
def test_the_demo_key_survives_a_restart_of_the_demo(
    servers: Servers, sample: SampleInfo, tmp_path: Path
) -> None:
    config = tmp_path / "features.yaml"
    config.write_text(REGISTRY.read_text().replace(".data/sample/", f"{sample.out_dir}/"))
    data_dir = tmp_path / "store"
    first = _demo_key(servers, config, data_dir, "demo-1")
    assert _demo_key(servers, config, data_dir, "demo-2") == first
    keys_file = tmp_path / "store.keys.json"
    assert first not in keys_file.read_text()  # the keys file keeps hashes only
    # a revoked demo key is replaced, not reused
    assert run_cli("keys", "revoke", "demo", "--data-dir", str(data_dir)).returncode == 0
    assert _demo_key(servers, config, data_dir, "demo-3") != first


def test_role_and_project_are_stored_and_listed(tmp_path: Path) -> None:
    code, stderr = _create(tmp_path, "--role", "writer", "--write", "user_profile",
                           "--project", "demo", "other")  # fmt: skip
    assert code == 0, stderr
    r = run_cli("keys", "list", "--json", "--data-dir", str(tmp_path / "store"))
    (rec,) = json.loads(r.stdout)
    assert (rec["role"], rec["projects"], rec["read"], rec["write"], rec["admin"]) == (
        "writer", ["demo", "other"], ["*"], ["user_profile"], False)  # fmt: skip
    assert re.search(r"model-server\s+active\s+writer\s+demo,other", _listed(tmp_path))
    code, stderr = _create(tmp_path, "--role", "boss")
    assert code != 0
    assert "invalid choice: 'boss'" in stderr
