"""The README's commands, run as printed against a real server.

A copy of the clone's layout in a temporary directory (``features.yaml``, ``.data/sample`` from
the session sample, ``.venv`` linked to this one) stands in for the clone; ``feature-serving
demo`` in it is what ``make run`` starts. Then:

- the curl ``make run`` prints, run as printed;
- every command of "Getting started" (``.venv/bin/feature-serving ...``, ``KEY=$(...)``,
  ``curl``), in order, in one shell, then, with the demo stopped, its ``serve --no-ingest`` and
  the curl again against that;
- the curl of "Asking for features", with ``$KEY`` set the way "Getting started" does.

The only edit to a command is the ports (6566 / 6565 -> free ones), which the README says
``HTTP_PORT=`` / ``GRPC_PORT=`` move; the key comes from ``$KEY`` as printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving.sample import SampleInfo
from tests.harness.paths import ROOT
from tests.harness.ports import free_port

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the README's ``## title`` section."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def shell_lines(text: str) -> list[str]:
    """The commands of the fenced blocks of ``text`` (``\\`` continuations joined; comments and
    Python blocks left out)."""
    out: list[str] = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang not in ("", "sh", "bash"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            cmd = line.strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


def ports(cmd: str, http: int, grpc: int) -> str:
    return cmd.replace("127.0.0.1:6566", f"127.0.0.1:{http}").replace(
        "127.0.0.1:6565", f"127.0.0.1:{grpc}"
    )


def bash(
    script: str, cwd: Path, key: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``script`` in bash, ``$KEY`` set to ``key`` when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("FS_API_KEY", "KEY")}
    if key is not None:
        env["KEY"] = key
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def answered(text: str, users: list[int]) -> dict[str, object]:
    """A Feast answer (not an error) for ``users``."""
    got = json.loads(text)
    assert "results" in got, got
    assert got["results"][0]["values"] == users, got
    return dict(got)


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout} s")


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.communicate()[0]
    return proc.communicate()[0]


@pytest.fixture
def clone(sample: SampleInfo, tmp_path: Path) -> Path:
    """A directory laid out like the clone after `make run`'s `make sample`."""
    shutil.copy(ROOT / "features.yaml", tmp_path / "features.yaml")
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "sample").symlink_to(Path(sample.out_dir).resolve())
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def test_readme_commands_run_as_printed(clone: Path) -> None:
    getting_started = shell_lines(section("Getting started"))
    assert getting_started, "no commands in Getting started"
    serve = [c for c in getting_started if " serve " in c]
    assert serve == [
        ".venv/bin/feature-serving serve --config features.yaml --data-dir .data/store --no-ingest"
    ], serve
    assert all(
        c.startswith((".venv/bin/feature-serving ", "KEY=", "curl ")) for c in getting_started
    )
    http, grpc = free_port(), free_port()

    # make run: `python -m serving demo` on the sample
    demo = subprocess.Popen(
        [sys.executable, "-m", "serving", "demo", "--sample-dir", ".data/sample",
         "--data-dir", ".data/store", "--http-port", str(http), "--grpc-port", str(grpc)],
        cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert demo.stdout is not None
    printed: list[str] = []
    try:
        for line in demo.stdout:
            printed.append(line)
            if line.startswith("Serving on"):
                break
        text = "".join(printed)
        assert "Serving on" in text, text + stop(demo)

        # the curl make run printed, as printed
        m = re.search(r"^  (curl .*?)\n(?!    )", text, re.S | re.M)
        assert m, text
        done = bash(m.group(1), clone)
        assert done.returncode == 0, done.stderr
        answered(done.stdout, [1, 2, 10**9 + 7])

        # Getting started, every command but serve, in order, in one shell
        steps = [ports(c, http, grpc) for c in getting_started if c not in serve]
        # (the key the shell made, for the later steps that use $KEY)
        done = bash("set -e\n" + "\n".join(steps) + '\nprintf "\\nKEY=%s\\n" "$KEY"', clone)
        assert done.returncode == 0, done.stdout + done.stderr
        out, _, key = done.stdout.rpartition("\nKEY=")
        key = key.strip()
        assert key.startswith("fsk_"), done.stdout
        # --help, then keys list (the new key "me" among them), then the curl's answer
        assert "usage: feature-serving" in out, out
        assert re.search(r"^\S+\s+me\s+active", out, re.M), out
        answered(out[out.index('{"metadata"') :], [1, 2])

        # "Asking for features": its curl, $KEY as Getting started set it
        (asking,) = [c for c in shell_lines(section("Asking for features")) if c.startswith("curl")]
        done = bash(ports(asking, http, grpc), clone, key)
        assert done.returncode == 0, done.stderr
        answered(done.stdout, [1, 2])
    finally:
        stop(demo)

    # the same store served by the printed serve command, no broker running
    node = subprocess.Popen(
        ["bash", "-c", f"exec {serve[0]} --http-port {http} --grpc-port {grpc}"],
        cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{http}", node)
        (curl,) = [ports(c, http, grpc) for c in getting_started if c.startswith("curl")]
        done = bash(curl, clone, key)
        assert done.returncode == 0, done.stderr
        answered(done.stdout, [1, 2])
    finally:
        stop(node)
