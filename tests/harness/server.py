"""`feature-serving serve` / `route` processes on free loopback ports, started the way an
operator starts them (``python -m serving ...``), ready when their /readyz answers 200, stopped
with SIGTERM (by PID) and waited for."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.harness.paths import ROOT
from tests.harness.ports import free_port

#: seconds a process gets to become ready; a cold start on a loaded 2-core machine takes ~5
READY_TIMEOUT = 30.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def post(self, path: str, body: Any, ctype: str = "application/json") -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.grpc}")


def start_server(
    config: Path,
    data_dir: Path,
    log: Path,
    *extra: str,
    http_port: int | None = None,
    grpc_port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Server:
    """``serve --config CONFIG --data-dir DATA_DIR EXTRA`` (no EXTRA: ``--no-auth``)."""
    return start_cli(
        ["serve", "--config", str(config), "--data-dir", str(data_dir),
         *(extra or ("--no-auth",))],
        log, http_port, grpc_port, ssl_context=ssl_context,
    )  # fmt: skip


def start_cli(
    args: list[str],
    log: Path,
    http: int | None = None,
    grpc_port: int | None = None,
    *,
    ready: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> Server:
    """Starts ``python -m serving ARGS --http-port .. --grpc-port ..`` (a node or a router)
    and waits until its /readyz answers 200 (``ready=False``: answers at all); over HTTPS
    with ``ssl_context`` (a process serving TLS)."""
    http, grpc_port = http or free_port(), grpc_port or free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", args[0], "--http-port", str(http),
             "--grpc-port", str(grpc_port), "--grace-seconds", "5", *args[1:]],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    readyz = f"{'https' if ssl_context else 'http'}://127.0.0.1:{http}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(readyz, timeout=1, context=ssl_context) as r:
                if r.status == 200:
                    return Server(proc, http, grpc_port, log)
        except urllib.error.HTTPError:
            if not ready:
                return Server(proc, http, grpc_port, log)
            time.sleep(0.1)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"server not ready in {READY_TIMEOUT:.0f} s: {log.read_text()}")


def stop_server(server: Server) -> int:
    """SIGTERM, then its exit code (killed, and the timeout raised, after 20 s)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            raise
    return int(server.proc.returncode)


@dataclass
class Servers:
    """The processes a test started, every one stopped by :meth:`close` (the ``servers``
    fixture closes it at teardown), so a failing test leaves none behind."""

    tmp: Path
    started: list[Server] = field(default_factory=list)

    def serve(self, config: Path, name: str, *flags: str, **ports: int | None) -> Server:
        """A node over the data directory ``TMP/NAME``, its log in ``TMP/NAME.log``."""
        return self.add(
            start_server(config, self.tmp / name, self.tmp / f"{name}.log", *flags, **ports)
        )

    def cli(self, args: list[str], name: str, **kw: Any) -> Server:
        """Any long-running command (``route``, ``serve`` with flags of its own)."""
        return self.add(start_cli(args, self.tmp / f"{name}.log", **kw))

    def add(self, server: Server) -> Server:
        self.started.append(server)
        return server

    def stop(self, server: Server) -> int:
        """Stops one now (its exit code); :meth:`close` will not stop it again."""
        self.started.remove(server)
        return stop_server(server)

    def close(self) -> None:
        """Stops every one, the last started first (a router before its nodes); one that
        does not stop in time is killed, and its timeout raised once all are stopped."""
        failed: BaseException | None = None
        while self.started:
            try:
                stop_server(self.started.pop())
            except subprocess.TimeoutExpired as e:
                failed = failed or e
        if failed is not None:
            raise failed
