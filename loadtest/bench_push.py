"""`make bench-push`: push throughput over HTTP, ours against Feast 0.67's own ``/push``.

Issue 17 (docs/benchmarks.md, "Pushes"). On one machine, loopback only, in a temporary
directory removed at the end (also on errors / Ctrl-C):

- the W1 view (WORKLOADS.md ``user_profile``: 200 float32 features per user, 20,000 users)
  twice in one registry: ``user_profile`` without a stream source (an online push is written
  into the node's store, acknowledged once in its WAL) and ``user_profile_k`` with one (a
  4-partition topic on a tansu broker started here: the push is published, acknowledged by the
  broker, and applied by the node's Kafka loader);
- ``feature-serving serve --no-auth`` on it;
- Feast 0.67 (``.venv-feast``): a feature repo with the same view and a ``PushSource``,
  ``feast apply``, then ``feast serve`` (one worker, access log off) with the SQLite online
  store, and again with the Redis online store (``redis-server`` started here on a free port,
  no persistence; ``make bench-push-deps`` installs it and Feast's redis extra).

Every target gets the same bodies (Feast's ``PushFeaturesRequest``: ``df`` as columns, ``to:
online``): 1,000 rows (random distinct users) or 1 row, each push with a newer event
timestamp than the last, so every row is written, never skipped as older. Per target and size:
``--concurrency`` clients posting back to back for ``--seconds`` (at most ``--max-pushes``
pushes), after a discarded warm-up; rows/s = rows acknowledged / elapsed; the median of
``--rounds`` rounds. For the Kafka view also the push-to-visible latency: one 1-row push, then
``/get-online-features`` polled every 2 ms until the new value is served (``--latency-samples``
pushes, sequential; median and p90).

Results: ``.benchmarks/push/<UTC time>.json`` and a Markdown table on stdout, with the load
average before and after. ``--quick``: 2 s runs, one round, few samples (a smoke run).
``--skip-feast`` / ``--skip-redis`` leave the Feast targets out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FEAST_VENV = ROOT / ".venv-feast"
USERS = 20_000
FEATURES = 200
TS = b"2099-01-01T00:00:00.000000"  # replaced by each push's own time (same length)

REGISTRY = """
project: benchpush
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: user_profile
    entities: [user]
    push_source: profile_push
    features: [{{name: "f{{000..199}}", dtype: float32}}]
  - name: user_profile_k
    entities: [user]
    push_source: profile_k_push
    features: [{{name: "f{{000..199}}", dtype: float32}}]
    stream_source: {{type: kafka, topic: w1, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
"""

FEAST_DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Float32, Int64

user = Entity(name="user", join_keys=["user_id"])
batch = FileSource(path="{parquet}", timestamp_field="event_timestamp")
push = PushSource(name="profile_push", batch_source=batch)
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f"f{{i:03d}}", dtype=Float32) for i in range({features})],
    source=push,
    online=True,
)
"""

FEATURE_STORE = """
project: benchpush
registry: data/registry.db
provider: local
offline_store:
  type: file
entity_key_serialization_version: 3
online_store:
{online}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


class Processes:
    """Started processes, stopped (SIGTERM, then SIGKILL after 20 s) by PID, last first."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def close(self) -> None:
        while self.procs:
            self.stop(self.procs[-1])


def push_body(source: str, rows: int, rng: random.Random) -> bytes:
    """A PushFeaturesRequest of ``rows`` random distinct users, every value float32-exact;
    its event timestamp is :data:`TS`, replaced per push."""
    users = rng.sample(range(USERS), rows)
    df: dict[str, Any] = {"user_id": users, "event_timestamp": [TS.decode()] * rows}
    for f in range(FEATURES):
        df[f"f{f:03d}"] = [rng.randrange(1 << 16) / 64 for _ in users]
    return json.dumps({"push_source_name": source, "df": df, "to": "online"}).encode()


class Clock:
    """Strictly increasing event times (microseconds), shared by every client of a run."""

    def __init__(self) -> None:
        self.last = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def next(self) -> bytes:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        self.last = max(now, self.last + dt.timedelta(microseconds=1))
        return self.last.strftime("%Y-%m-%dT%H:%M:%S.%f").encode()


async def _post(session: Any, url: str, body: bytes) -> str | None:
    """None, or the error of a push not answered 200 (or not answered at all)."""
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            text = await r.read()
            return None if r.status == 200 else f"{r.status} {text[:200].decode(errors='replace')}"
    except (aiohttp.ClientError, OSError) as e:
        return f"no answer: {e}"


async def throughput(
    url: str, bodies: list[bytes], rows: int, *, seconds: float, concurrency: int, max_pushes: int
) -> dict[str, Any]:
    import aiohttp

    clock = Clock()
    done = 0
    lat: list[float] = []
    errors: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def client(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop_at and done < max_pushes:
                done += 1
                body = bodies[i % len(bodies)].replace(TS, clock.next())
                i += concurrency
                s = time.perf_counter()
                err = await _post(session, url, body)
                if err is None:
                    lat.append(time.perf_counter() - s)
                else:
                    errors.append(err)

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "pushes": len(lat),
        "rows_per_s": len(lat) * rows / elapsed,
        "pushes_per_s": len(lat) / elapsed,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def read_value(base: str, view: str, user: int) -> float | None:
    body = json.dumps({"features": [f"{view}:f000"], "entities": {"user_id": [user]}}).encode()
    req = urllib.request.Request(
        base + "/get-online-features", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        v = json.loads(r.read())["results"][1]["values"][0]
    return None if v is None else float(v)


def visible_latency(base: str, samples: int, rng: random.Random) -> dict[str, Any]:
    """Push one row with a new value to the stream-backed view, then poll until it is served."""
    clock = Clock()
    acks, visible = [], []
    for n in range(samples):
        user = rng.randrange(USERS)
        value = 1000.0 + n
        df: dict[str, Any] = {"user_id": [user], "event_timestamp": [clock.next().decode()]}
        df |= {f"f{f:03d}": [value] for f in range(FEATURES)}
        body = json.dumps({"push_source_name": "profile_k_push", "df": df}).encode()
        t0 = time.perf_counter()
        req = urllib.request.Request(
            base + "/push", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        acks.append(time.perf_counter() - t0)
        deadline = t0 + 30
        while read_value(base, "user_profile_k", user) != value:
            if time.perf_counter() > deadline:
                raise SystemExit(f"a pushed row was not visible after 30 s (user {user})")
            time.sleep(0.002)
        visible.append(time.perf_counter() - t0)

    def q(xs: list[float], p: float) -> float:
        return 1000 * sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]

    return {"samples": samples, "ack_p50_ms": q(acks, 0.5), "visible_p50_ms": q(visible, 0.5),
            "visible_p90_ms": q(visible, 0.9), "visible_max_ms": 1000 * max(visible)}  # fmt: skip


@contextlib.contextmanager
def feast_server(
    tmp: Path, procs: Processes, online: str, name: str, parquet: Path
) -> Iterator[str]:
    """``feast apply`` then ``feast serve`` of a repo with ``online`` as its online store."""
    repo = tmp / f"feast_{name}"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(FEATURE_STORE.format(online=online))
    (repo / "definitions.py").write_text(
        FEAST_DEFINITIONS.format(parquet=parquet, features=FEATURES)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"VIRTUAL_ENV": str(FEAST_VENV), "FEAST_USAGE": "False"}
    feast = str(FEAST_VENV / "bin" / "feast")
    done = subprocess.run(
        [feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"feast apply ({name}) failed:\n{done.stdout}\n{done.stderr}")
    port = free_port()
    p = procs.start(
        [feast, "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"],
        tmp / f"feast_{name}.log", cwd=repo, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", p, tmp / f"feast_{name}.log")
        yield base
    finally:
        procs.stop(p)


def measure(
    name: str, url: str, bodies: dict[int, list[bytes]], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in args.concurrency:
        for rows, bs in bodies.items():
            kw = {"concurrency": c, "max_pushes": args.max_pushes}
            asyncio.run(throughput(url, bs, rows, seconds=args.warmup, **kw))
            runs = [
                asyncio.run(throughput(url, bs, rows, seconds=args.seconds, **kw))
                for _ in range(args.rounds)
            ]
            med = statistics.median(r["rows_per_s"] for r in runs)
            errors = sum(r["errors"] for r in runs)
            first = next((r["first_error"] for r in runs if r["first_error"]), None)
            out[f"{rows}@c{c}"] = {"median_rows_per_s": med, "errors": errors,
                                   "first_error": first, "runs": runs}  # fmt: skip
            shown = ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs)
            print(
                f"  {name:<24} c={c:<3} {rows:>5}-row pushes: {med:>10,.0f} rows/s "
                f"(rounds: {shown}; {errors} errors{': ' + first if first else ''})",
                file=sys.stderr,
            )
    return out


def _cell(m: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    text = f"{m['median_rows_per_s']:,.0f}"
    return text + (f" ({m['errors']} failed)" if m["errors"] else "")


def table(result: dict[str, Any]) -> str:
    cs = result["concurrency"]
    head = " | ".join(f"{n:,}-row, c={c}" for c in cs for n in (1000, 1))
    lines = [f"| target (rows/s) | {head} |", "|---|" + "---:|" * (2 * len(cs))]
    for name, r in result["targets"].items():
        cells = " | ".join(_cell(r.get(f"{n}@c{c}")) for c in cs for n in (1000, 1))
        lines.append(f"| {name} | {cells} |")
    lat = result.get("kafka_visible")
    if lat:
        lines.append("")
        lines.append(
            f"Push to visible (Kafka view, 1 row, {lat['samples']} sequential pushes): ack p50 "
            f"{lat['ack_p50_ms']:.1f} ms, visible p50 {lat['visible_p50_ms']:.1f} ms, p90 "
            f"{lat['visible_p90_ms']:.1f} ms, max {lat['visible_max_ms']:.1f} ms"
        )
    lines.append(
        f"\nClients {result['concurrency']}, {result['seconds']} s per run, median of "
        f"{result['rounds']} rounds; load average before {result['load_before']}, after "
        f"{result['load_after']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4],
        help="client counts, comma-separated (default 1,4)",
    )
    ap.add_argument("--max-pushes", type=int, default=20_000, help="per run, a bound")
    ap.add_argument("--latency-samples", type=int, default=50)
    ap.add_argument("--skip-feast", action="store_true")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / ".benchmarks" / "push")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.latency_samples = 2.0, 0.5, 1, 5

    sys.path.insert(0, str(ROOT))
    from serving.dev.broker import LocalBroker

    rng = random.Random(17)
    bodies = {
        n: {src: [push_body(src, n, rng) for _ in range(4 if n > 1 else 64)]
            for src in ("profile_push", "profile_k_push")}
        for n in (1000, 1)
    }  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench_push_"))
    procs = Processes()
    broker = LocalBroker(free_port(), log=tmp / "tansu.log")
    result: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds,
        "targets": {},
    }  # fmt: skip
    try:
        broker.start()
        broker.create_topics({"w1": 4})
        config = tmp / "features.yaml"
        config.write_text(REGISTRY.format(bootstrap=broker.bootstrap))
        http = free_port()
        node = procs.start(
            [sys.executable, "-m", "serving", "serve", "--config", str(config), "--data-dir",
             str(tmp / "db"), "--no-auth", "--http-port", str(http), "--grpc-port",
             str(free_port()), "--max-ready-lag", "0"],
            tmp / "serve.log", cwd=ROOT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{http}"
        wait_http(base + "/readyz", node, tmp / "serve.log")
        print("feature-serving:", file=sys.stderr)
        t = result["targets"]
        t["feature-serving, online (store)"] = measure(
            "online (store)", base + "/push",
            {n: b["profile_push"] for n, b in bodies.items()}, args,
        )  # fmt: skip
        t["feature-serving, via Kafka"] = measure(
            "via Kafka (published)", base + "/push",
            {n: b["profile_k_push"] for n, b in bodies.items()}, args,
        )  # fmt: skip
        result["kafka_visible"] = visible_latency(base, args.latency_samples, rng)
        procs.stop(node)
        if not args.skip_feast:
            import pyarrow as pa
            import pyarrow.parquet as pq

            parquet = tmp / "user_profile.parquet"
            cols: dict[str, Any] = {
                "user_id": pa.array([0], pa.int64()),
                "event_timestamp": pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("us")),
            }
            cols |= {f"f{f:03d}": pa.array([0.0], pa.float32()) for f in range(FEATURES)}
            pq.write_table(pa.table(cols), parquet)
            feast_bodies = {n: b["profile_push"] for n, b in bodies.items()}
            sqlite = f"  type: sqlite\n  path: {tmp / 'feast_online.db'}"
            with feast_server(tmp, procs, sqlite, "sqlite", parquet) as url:
                print("Feast 0.67, SQLite:", file=sys.stderr)
                t["Feast 0.67 feast serve, SQLite"] = measure(
                    "SQLite", url + "/push", feast_bodies, args
                )
            if not args.skip_redis:
                redis = shutil.which("redis-server")
                if redis is None:
                    raise SystemExit("redis-server is missing: run `make bench-push-deps`")
                rport = free_port()
                rp = procs.start(
                    [redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"],
                    tmp / "redis.log",
                )  # fmt: skip
                time.sleep(0.5)
                conf = f"  type: redis\n  connection_string: 127.0.0.1:{rport}"
                with feast_server(tmp, procs, conf, "redis", parquet) as url:
                    print("Feast 0.67, Redis:", file=sys.stderr)
                    t["Feast 0.67 feast serve, Redis"] = measure(
                        "Redis", url + "/push", feast_bodies, args
                    )
                procs.stop(rp)
    finally:
        procs.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\n(saved {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
