"""`make bench-serving`: the end-to-end measurements of the serving issue's Performance table.

Starts a server on the sample data (or uses a running one, ``--url``/``--grpc``), then measures,
each run after a discarded warm-up (3 s) and bounded in time:

===================  ======================================  ===============================
row                  generator                               target (ceiling)
===================  ======================================  ===============================
HTTP W1, c=1         wrk -t1 -c1 -d15s                       p99 <= 1 ms (p99 0.30 ms)
HTTP W1, c=32        wrk -t2 -c32 -d15s                      >= 10,000 req/s (22,300)
HTTP W2, c=1         wrk -t1 -c1 -d15s                       p99 <= 5 ms (p99 1.07 ms)
HTTP W2, c=32        wrk -t2 -c32 -d30s                      >= 300 req/s (3,200)
gRPC dense W1, c=32  h2load -c32 -m1 -D15                    >= 5,000 req/s (6,800)
gRPC dense W2, c=1   h2load -c1 -m1 -D15                     p99 <= 2 ms (mean 0.41 ms)
===================  ======================================  ===============================

HTTP is Feast's ``POST /get-online-features`` driven by ``loadtest/get_online_features.lua``
(random entities per request). gRPC is ``feature_serving.v1.FeatureService/GetFeatureVector``
with the dense layout: h2load posts one prepared length-prefixed gRPC frame, so every request of
a gRPC run asks for the same random batch of entities (drawn from the id pool with a fixed
seed). With the 20,000 rows all in the hot tier the lookup cost does not depend on which ids are
asked; the only difference to random ids is CPU-cache locality of 100 rows (~84 KB). Before
measuring, the frame is sent once with a Python gRPC client and the answer checked (status OK,
dense shape); after, the bytes h2load received per request are checked against that answer's
size, since h2load itself only sees HTTP status 200 and not the gRPC status in the trailers.
Latency percentiles of h2load runs come from its per-request ``--log-file``.

Server CPU is read from ``/proc/<pid>/stat`` (user + system time) before and after each
measurement (warm-up excluded) and given in cores (1.0 = one core busy all the time); RSS is
``VmRSS`` after the measurement. Results go to ``.benchmarks/serving/<timestamp>.json`` and are
compared with the previous file there.

Options: ``--quick`` (1 s runs, 1 s warm-up: a smoke test, figures meaningless), ``--url`` /
``--grpc`` / ``--pid`` to measure a server that is already running, ``--api-key`` (default env
``FS_API_KEY``; a started server gets a fresh read key of its own, so the figures include
the key check), ``--sample-dir``, ``--only`` (row ids), ``--out`` (JSON path).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LUA = REPO / "loadtest" / "get_online_features.lua"
GRPC_PATH = "/feature_serving.v1.FeatureService/GetFeatureVector"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
WORKLOADS = {"w1": (1, 100), "w2": (100, 200)}


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    api: str  # http | grpc
    workload: str  # w1 | w2
    conns: int
    threads: int
    seconds: int
    target_kind: str  # p99_ms (at most) | rps (at least)
    target: float
    ceiling: str


ROWS = [
    Row("http_w1_c1", "HTTP Feast endpoint, W1, concurrency 1", "http", "w1", 1, 1, 15,
        "p99_ms", 1.0, "p99 0.30 ms"),
    Row("http_w1_c32", "HTTP Feast endpoint, W1, concurrency 32", "http", "w1", 32, 2, 15,
        "rps", 10_000, "22,300 req/s"),
    Row("http_w2_c1", "HTTP Feast endpoint, W2, concurrency 1", "http", "w2", 1, 1, 15,
        "p99_ms", 5.0, "p99 1.07 ms (1 MB body)"),
    Row("http_w2_c32", "HTTP Feast endpoint, W2, concurrency 32", "http", "w2", 32, 2, 30,
        "rps", 300, "3,200 req/s"),
    Row("grpc_w1_c32", "gRPC dense layout, W1, concurrency 32", "grpc", "w1", 32, 1, 15,
        "rps", 5_000, "6,800 req/s"),
    Row("grpc_w2_c1", "gRPC dense layout, W2, concurrency 1", "grpc", "w2", 1, 1, 15,
        "p99_ms", 2.0, "mean 0.41 ms (80 KB body)"),
]  # fmt: skip
ROW_IDS = [r.id for r in ROWS]


# -- server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout:.0f} s")


@dataclass
class Target:
    url: str
    grpc: str
    pid: int | None
    log: Path | None = None
    #: key to send; None: none (or --api-key)
    api_key: str | None = None


@contextmanager
def local_server(sample_dir: Path, config: Path, python: str, extra: list[str]) -> Iterator[Target]:
    """Loads the sample into a temporary store and serves it on free loopback ports."""
    work = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        # batch sources are relative to the registry file: give the copy a .data/sample next to it
        (work / ".data").mkdir()
        (work / ".data" / "sample").symlink_to(sample_dir.resolve())
        shutil.copy(config, work / "features.yaml")
        cfg = str(work / "features.yaml")
        db = str(work / "db")
        t0 = time.monotonic()
        subprocess.run(
            [python, "-m", "serving", "materialize", "--config", cfg, "--data-dir", db,
             "--progress", "never"],
            cwd=REPO, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        print(f"loaded {sample_dir} in {time.monotonic() - t0:.1f} s", flush=True)
        # the server requires an API key: a read key for this temporary store
        keys = str(work / "keys.json")
        made = subprocess.run(
            [python, "-m", "serving", "keys", "create", "--config", cfg, "--data-dir", db,
             "--keys-file", keys, "--name", "bench-serving", "--read", "*"],
            cwd=REPO, check=True, capture_output=True, text=True,
        )  # fmt: skip
        api_key = next(w for w in made.stdout.split() if w.startswith("fsk_"))
        http, grpc_port = free_port(), free_port()
        log = work / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [python, "-m", "serving", "serve", "--config", cfg, "--data-dir", db,
                 "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc_port),
                 "--keys-file", keys, "--no-ingest", *extra],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{http}"
        try:
            wait_ready(url, proc)
        except RuntimeError:
            sys.stderr.write(log.read_text())
            raise
        print(f"server pid {proc.pid}: HTTP {url}, gRPC 127.0.0.1:{grpc_port}", flush=True)
        yield Target(url, f"127.0.0.1:{grpc_port}", proc.pid, log, api_key)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def answer_sizes(t: Target, ids: list[int], api_key: str | None) -> dict[str, int]:
    """Body sizes of the real server's answers to one W1 and one W2 request, HTTP and gRPC."""
    sizes: dict[str, int] = {}
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    for w, (n, nf) in WORKLOADS.items():
        body = json.dumps(
            {
                "features": [f"user_profile:f{i:03d}" for i in range(nf)],
                "entities": {"user_id": ids[:n]},
            }
        ).encode()
        req = urllib.request.Request(f"{t.url}/get-online-features", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            sizes[f"{w}_http"] = len(r.read())
        frame, _ = grpc_frame(w, ids, seed=1)
        sizes[f"{w}_grpc"] = check_grpc(t.grpc, frame, w, api_key)
    return sizes


@contextmanager
def ceiling_server(sizes: dict[str, int], python: str) -> Iterator[Target]:
    """loadtest/frontend_ceiling.py answering prebuilt bytes of the real answers' sizes."""
    http, grpc_port = free_port(), free_port()
    args = [sizes[k] for k in ("w1_http", "w2_http", "w1_grpc", "w2_grpc")]
    proc = subprocess.Popen(
        [python, str(REPO / "loadtest" / "frontend_ceiling.py"), str(http), str(grpc_port),
         *map(str, args)],
        cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{http}"
        wait_ready(url, proc)
        print(f"ceiling server pid {proc.pid}: HTTP {url}, gRPC 127.0.0.1:{grpc_port}", flush=True)
        yield Target(url, f"127.0.0.1:{grpc_port}", proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- process figures ------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mb(pid: int | None) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) in MiB."""
    if pid is None:
        return None, None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    got = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return (
        int(got["VmRSS"]) / 1024 if "VmRSS" in got else None,
        int(got["VmHWM"]) / 1024 if "VmHWM" in got else None,
    )


# -- generators -----------------------------------------------------------------------------


def run_wrk(url: str, row: Row, seconds: int, ids: Path, api_key: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if api_key:
        env["FS_API_KEY"] = api_key
    else:
        env.pop("FS_API_KEY", None)
    cmd = ["wrk", f"-t{row.threads}", f"-c{row.conns}", f"-d{seconds}s", "--latency",
           "--timeout", "30s", "-s", str(LUA), url, "--", row.workload, str(ids)]  # fmt: skip
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    m = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr}")
    w = json.loads(m.group(1))
    errors = sum(
        w[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
    )
    return {
        "requests": w["requests"],
        "seconds": w["duration_s"],
        "rps": w["rps"],
        "mean_ms": w["mean_ms"],
        "p50_ms": w["p50_ms"],
        "p90_ms": w["p90_ms"],
        "p99_ms": w["p99_ms"],
        "max_ms": w["max_ms"],
        "bytes_per_request": w["bytes"] / max(1, w["requests"]),
        "errors": errors,
        "command": shlex.join([*cmd[:-1], "ids.txt"]).replace(str(LUA), LUA.name),
    }


def grpc_frame(workload: str, ids: list[int], seed: int) -> tuple[bytes, int]:
    """(length-prefixed gRPC frame of a dense W1/W2 request, its entity count)."""
    from serving._proto.feature_serving.v1 import feature_service_pb2 as pb

    n, nf = WORKLOADS[workload]
    batch = random.Random(seed).sample(ids, n)
    req = pb.GetFeatureVectorRequest(
        features=pb.FeatureRefs(refs=[f"user_profile:f{i:03d}" for i in range(nf)]),
        layout=pb.LAYOUT_DENSE,
    )
    req.entities["user_id"].int64_values.values.extend(batch)
    msg = req.SerializeToString()
    return b"\x00" + struct.pack(">I", len(msg)) + msg, n


def check_grpc(target: str, frame: bytes, workload: str, api_key: str | None) -> int:
    """Sends the frame once; checks status and the dense shape; returns the answer's size."""
    import grpc

    from serving._proto.feature_serving.v1 import feature_service_pb2 as pb

    n, nf = WORKLOADS[workload]
    meta = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    with grpc.insecure_channel(target) as ch:
        answer = ch.unary_unary(GRPC_PATH)(frame[5:], timeout=10, metadata=meta)
    dense = pb.GetFeatureVectorResponse.FromString(answer).dense
    if (dense.rows, dense.cols) != (n, nf) or len(dense.values) != 4 * n * nf:
        raise RuntimeError(f"gRPC {workload}: dense {dense.rows}x{dense.cols}, expected {n}x{nf}")
    return len(answer)


def run_h2load(
    target: str, row: Row, seconds: int, frame_path: Path, *, api_key: str | None, tmp: Path
) -> dict[str, Any]:
    log = tmp / f"h2load-{row.id}.log"
    log.unlink(missing_ok=True)
    cmd = ["h2load", f"-t{row.threads}", f"-c{row.conns}", "-m1", f"-D{seconds}",
           "--data", str(frame_path), "-H", "content-type: application/grpc",
           "-H", "te: trailers"]  # fmt: skip
    if api_key:
        cmd += ["-H", f"authorization: Bearer {api_key}"]
    cmd += ["--log-file", str(log), f"http://{target}{GRPC_PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr}")
    text = out.stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)  # fmt: skip
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    t = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data", text)
    if not (m and s and t):
        raise RuntimeError(f"cannot parse h2load output:\n{text}")
    lat: list[float] = []
    starts: list[int] = []
    ends: list[float] = []
    bad = 0
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        start_us, status, elapsed_us = int(parts[0]), int(parts[1]), int(parts[2])
        if status != 200:
            bad += 1
            continue
        lat.append(elapsed_us / 1000.0)
        starts.append(start_us)
        ends.append(start_us + elapsed_us)
    if not lat:
        raise RuntimeError(f"h2load recorded no successful request:\n{text}")
    lat.sort()
    span = (max(ends) - min(starts)) / 1e6
    done = int(m.group(3))
    failed = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    return {
        "requests": len(lat),
        "seconds": span,
        "rps": len(lat) / span if span > 0 else 0.0,
        "mean_ms": sum(lat) / len(lat),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1],
        "data_bytes_per_request": int(t.group(3)) / max(1, done),
        "errors": failed + bad + int(s.group(3)) + int(s.group(4)),
        "command": shlex.join([*cmd[:-3], cmd[-1]]).replace(
            str(frame_path), f"{row.workload}.grpc"
        ),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile, as wrk and most load generators report."""
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


# -- the run --------------------------------------------------------------------------------


def verdict(row: Row, r: dict[str, Any]) -> bool:
    if r.get("errors"):
        return False
    if row.target_kind == "rps":
        return bool(r["rps"] >= row.target)
    return bool(r["p99_ms"] <= row.target)


def target_text(row: Row) -> str:
    return (
        f">= {row.target:,.0f} req/s" if row.target_kind == "rps" else f"p99 <= {row.target:g} ms"
    )


def measure_one(
    t: Target, row: Row, seconds: int, warmup: int, frames: dict[str, Path], *, ctx: dict[str, Any]
) -> dict[str, Any]:
    """One measurement (after a discarded warm-up) with the server's CPU and RSS."""
    ids_path, api_key, tmp = ctx["ids_path"], ctx["api_key"], ctx["tmp"]

    def go(secs: int) -> dict[str, Any]:
        if row.api == "http":
            return run_wrk(t.url, row, secs, ids_path, api_key)
        return run_h2load(t.grpc, row, secs, frames[row.workload], api_key=api_key, tmp=tmp)

    if warmup > 0:
        go(warmup)
    cpu0, t0 = cpu_seconds(t.pid), time.monotonic()
    r = go(seconds)
    cpu1, t1 = cpu_seconds(t.pid), time.monotonic()
    rss, hwm = rss_mb(t.pid)
    r["server_cpu_cores"] = (
        (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
    )
    r["server_rss_mb"] = rss
    r["server_peak_rss_mb"] = hwm
    return r


def measure(
    t: Target,
    rows: list[Row],
    ids_path: Path,
    *,
    quick: bool,
    warmup: int,
    api_key: str | None,
    ceiling: Target | None = None,
) -> list[dict[str, Any]]:
    """Every row against the server, each followed by the same run against ``ceiling``."""
    ids = [int(x) for x in ids_path.read_text().split()]
    results = []
    with tempfile.TemporaryDirectory(prefix="fs-bench-frames-") as tmpdir:
        tmp = Path(tmpdir)
        ctx = {"ids_path": ids_path, "api_key": api_key, "tmp": tmp}
        frames: dict[str, Path] = {}
        answer_size: dict[str, int] = {}
        for w in sorted({r.workload for r in rows if r.api == "grpc"}):
            frame, _ = grpc_frame(w, ids, seed=20240101 + int(w[1]))
            frames[w] = tmp / f"{w}.grpc"
            frames[w].write_bytes(frame)
            answer_size[w] = check_grpc(t.grpc, frame, w, api_key)
        for row in rows:
            seconds = 1 if quick else row.seconds
            print(f"{row.label}: warm-up {warmup} s, then {seconds} s ...", end="", flush=True)
            r = measure_one(t, row, seconds, warmup, frames, ctx=ctx)
            if row.api == "grpc":
                # h2load sees HTTP 200 even for a gRPC error (status in the trailers): an answer
                # much smaller than the checked one means errors.
                expected = answer_size[row.workload] + 5
                r["expected_data_bytes_per_request"] = expected
                if r["data_bytes_per_request"] < 0.95 * expected:
                    r["errors"] = max(1, r["errors"])
                    r["note"] = (
                        f"received {r['data_bytes_per_request']:.0f} bytes per request, expected "
                        f"{expected}: gRPC errors"
                    )
            r.update(
                id=row.id,
                label=row.label,
                api=row.api,
                workload=row.workload,
                concurrency=row.conns,
                target=target_text(row),
                ceiling=row.ceiling,
                met=verdict(row, r),
            )
            print(
                f" {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms"
                + (f", {r['errors']} errors" if r["errors"] else ""),
                flush=True,
            )
            if ceiling is not None:
                print("  same against the ceiling server ...", end="", flush=True)
                c = measure_one(ceiling, row, seconds, warmup, frames, ctx=ctx)
                keep = ("rps", "mean_ms", "p50_ms", "p99_ms", "errors", "server_cpu_cores")
                r["ceiling_this_run"] = {k: c.get(k) for k in keep}
                print(
                    f" {c['rps']:,.0f} req/s, p50 {c['p50_ms']:.3f} ms, p99 {c['p99_ms']:.3f} ms",
                    flush=True,
                )
            results.append(r)
    return results


def fmt_cpu(r: dict[str, Any]) -> str:
    c = r.get("server_cpu_cores")
    return "-" if c is None else f"{c * 100:.0f} %"


def fmt_rss(r: dict[str, Any]) -> str:
    v = r.get("server_rss_mb")
    return "-" if v is None else f"{v:.0f} MB"


def table(results: list[dict[str, Any]]) -> str:
    with_ceiling = any("ceiling_this_run" in r for r in results)
    head = (
        "| measure | req/s | p50 | p99 | server CPU | server RSS | target | met? "
        "| ceiling: prebuilt bytes, no work (issue 3) |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---|---|---|"
    if with_ceiling:
        head += " ceiling, this run |"
        rule += "---|"
    lines = [head, rule]
    for r in results:
        met = "yes" if r["met"] else "**no**"
        if r.get("errors"):
            met += f" ({r['errors']} errors)"
        line = (
            f"| {r['label']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms "
            f"| {fmt_cpu(r)} | {fmt_rss(r)} | {r['target']} | {met} | {r['ceiling']} |"
        )
        if with_ceiling:
            c = r.get("ceiling_this_run")
            line += (
                f" {c['rps']:,.0f} req/s, p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms |"
                if c
                else " - |"
            )
        lines.append(line)
    return "\n".join(lines)


def compare(prev: dict[str, Any], results: list[dict[str, Any]]) -> str:
    old = {r["id"]: r for r in prev.get("results", [])}
    lines = [
        f"changes against {prev.get('file', '?')} ({prev.get('time', '?')}"
        + (", quick" if prev.get("quick") else "")
        + "):",
        f"  {'row':<14}{'req/s':>24}{'p50 ms':>24}{'p99 ms':>24}",
    ]

    def delta(a: float, b: float, fmt: str) -> str:
        pct = (b - a) / a * 100 if a else 0.0
        return f"{format(a, fmt)} -> {format(b, fmt)} ({pct:+.0f}%)"

    for r in results:
        o = old.get(r["id"])
        if o is None:
            lines.append(f"  {r['id']:<14}(new)")
            continue
        lines.append(
            f"  {r['id']:<14}{delta(o['rps'], r['rps'], ',.0f'):>24}"
            f"{delta(o['p50_ms'], r['p50_ms'], '.3f'):>24}"
            f"{delta(o['p99_ms'], r['p99_ms'], '.3f'):>24}"
        )
    return "\n".join(lines)


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s runs after 1 s warm-ups (smoke test)")
    p.add_argument("--url", help="HTTP base URL of a running server (default: start one)")
    p.add_argument("--grpc", help="gRPC HOST:PORT of the running server (with --url)")
    p.add_argument("--pid", type=int, help="PID of the running server, for its CPU and RSS")
    p.add_argument("--api-key", default=os.environ.get("FS_API_KEY") or None,
                   help="sent as 'authorization: Bearer KEY' (default env FS_API_KEY)")  # fmt: skip
    p.add_argument("--sample-dir", type=Path, default=REPO / ".data" / "sample",
                   help="sample written by `make sample` (default .data/sample)")  # fmt: skip
    p.add_argument("--config", type=Path, default=REPO / "features.yaml")
    p.add_argument("--ids", type=Path, help="entity id pool (default SAMPLE_DIR/ids.txt)")
    p.add_argument("--only", nargs="+", choices=ROW_IDS, help="measure only these rows")
    p.add_argument("--warmup", type=int, help="warm-up seconds (default 3, --quick 1)")
    p.add_argument(
        "--out", type=Path, help="JSON result file (default .benchmarks/serving/TS.json)"
    )
    p.add_argument("--ceiling", action="store_true",
                   help="after each row, the same run against loadtest/frontend_ceiling.py "
                        "(prebuilt answers of the same size, no work)")  # fmt: skip
    p.add_argument("--results-dir", type=Path, default=REPO / ".benchmarks" / "serving")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flag for the started server (repeat), e.g. "
                        "--server-arg=--json-float32-shortest")  # fmt: skip
    args = p.parse_args(argv)

    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (Debian packages wrk, nghttp2-client; `make sysdeps`)")
    ids_path = args.ids or args.sample_dir / "ids.txt"
    if not ids_path.exists():
        p.error(f"{ids_path} missing: run `make sample` (or pass --ids)")
    if args.url and not args.grpc:
        p.error("--url needs --grpc HOST:PORT as well")
    rows = [r for r in ROWS if not args.only or r.id in args.only]
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)

    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    if args.url:
        t = Target(args.url.rstrip("/"), args.grpc, args.pid)
        wait_ready(t.url, None, timeout=10)
        results = measure(t, rows, ids_path, quick=args.quick, warmup=warmup, api_key=args.api_key)
    else:
        with (
            local_server(args.sample_dir, args.config, sys.executable, args.server_arg) as t,
            contextlib.ExitStack() as stack,
        ):
            api_key = t.api_key or args.api_key
            ceiling = None
            if args.ceiling:
                ids = [int(x) for x in ids_path.read_text().split()]
                sizes = answer_sizes(t, ids, api_key)
                ceiling = stack.enter_context(ceiling_server(sizes, sys.executable))
            results = measure(
                t,
                rows,
                ids_path,
                quick=args.quick,
                warmup=warmup,
                api_key=api_key,
                ceiling=ceiling,
            )
    load_after = os.getloadavg()

    print()
    print(table(results))
    print(
        f"\nload average before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"({os.cpu_count()} CPUs; the load generator runs on the same machine)"
    )
    n_ids = len(ids_path.read_text().split())
    doc = {
        "time": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "ceiling_measured": args.ceiling,
        "warmup_s": warmup,
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "target": "external " + args.url if args.url else "local server on the sample",
        "entities": n_ids,
        "host": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "git": git_info(),
        "results": results,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out or args.results_dir / f"{stamp}.json"
    prev_dir = args.results_dir
    previous = sorted(
        (f for f in prev_dir.glob("*.json") if f.resolve() != out.resolve()),
        key=lambda f: f.name,
    ) if prev_dir.exists() else []  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"saved {out}")
    if args.out is None and previous:
        # the latest earlier run of the same kind (full or --quick), else the latest
        docs = [(f, json.loads(f.read_text())) for f in previous]
        same = [(f, d) for f, d in docs if bool(d.get("quick")) == args.quick]
        f, prev = (same or docs)[-1]
        prev["file"] = f.name
        print(compare(prev, results))
    elif args.out is None:
        print("no earlier run in", prev_dir, "to compare with")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
