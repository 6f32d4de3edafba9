"""A sharded cluster on one machine: ``python -m serving.dev.cluster_demo`` (``make cluster-demo``).

The steps, each printed as it is done (docs/scale-out.md, "One machine walkthrough", lists them
with the commands an operator would type):

1. a local broker (tansu, memory storage, ``serving.dev.broker``) on a free port;
2. the demo registry (one view ``user_profile`` fed by the topic ``user_profile``) and the
   topic, 4 partitions; 1,000 users' rows produced with murmur2 partitioning;
3. two shard nodes, ``serve --shard-index K --shard-count 2 --topic-partitions 4``: each
   consumes only the partitions it owns (``p % 2 == K``) and refuses the other shard's users;
4. waiting until both are ready with ``--max-ready-lag 0`` (caught up);
5. the cluster map of the two nodes, and a router (``route --cluster-map``) in front of them;
6. answers: through the router (a curl that works as printed), directly from each shard for
   users it owns, and a shard refusing a user of the other shard.

Then it serves until Ctrl-C (``--once``: stops after the answers), stopping every process it
started by PID, the router first. Auth is off (``--no-auth``): a local demo on loopback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.dev.broker import BrokerError, LocalBroker, port_is_free

SHARDS = 2
PARTITIONS = 4
USERS = 1000
#: event time of every produced row (2023-11-14T22:13:20Z)
EVENT_TIME_US = 1_700_000_000 * 10**6
COUNTRIES = ("DE", "FR", "US")
FEATURES = ["user_profile:clicks_7d", "user_profile:ctr", "user_profile:country"]
#: users the answers ask for: the first users of each shard are picked from these
ASKED = [1, 2, 3, 42, 500]

REGISTRY = """\
# The cluster demo's registry (serving/dev/cluster_demo.py): one view, sharded by user_id
# because it has a stream source.
project: cluster_demo
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: user_profile
    entities: [user]
    features:
      - {{name: clicks_7d, dtype: int64}}
      - {{name: ctr, dtype: float32}}
      - {{name: country, dtype: string}}
    stream_source:
      type: kafka
      topic: user_profile
      bootstrap_servers: "{bootstrap}"
      format: json
      options: {{loader.dlq_topic: ""}}
feature_services:
  - name: ranking
    features: [user_profile:clicks_7d, user_profile:ctr]
"""


def user_row(u: int) -> dict[str, Any]:
    """The row the demo produces for user ``u`` (ctr is exact in float32)."""
    return {
        "user_id": u,
        "event_timestamp": EVENT_TIME_US,
        "clicks_7d": u * 3,
        "ctr": (u % 100) / 128,
        "country": COUNTRIES[u % len(COUNTRIES)],
    }


class DemoError(Exception):
    pass


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Demo:
    def __init__(self, work: Path, router_http: int, router_grpc: int) -> None:
        self.work = work
        self.router_ports = (router_http, router_grpc)
        self.broker = LocalBroker(free_port(), log=work / "tansu.log")
        self.procs: list[Process] = []
        self.config = work / "features.yaml"
        self.owner: dict[int, int] = {}

    # -- processes ---------------------------------------------------------------------------

    def start(self, name: str, args: list[str], http: int = 0, grpc: int = 0) -> Process:
        http, grpc = http or free_port(), grpc or free_port()
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serving", *args,
                 "--http-port", str(http), "--grpc-port", str(grpc)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        p = Process(name, proc, http, grpc, log)
        self.procs.append(p)
        return p

    def wait_ready(self, p: Process, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                tail = p.log.read_text(errors="replace")[-2000:]
                raise DemoError(f"{p.name} exited with {p.proc.returncode}; its log ends:\n{tail}")
            try:
                with urllib.request.urlopen(p.url + "/readyz", timeout=1) as r:
                    return dict(json.loads(r.read()))
            except urllib.error.HTTPError as e:
                last = e.read().decode(errors="replace")
            except OSError:
                pass
            time.sleep(0.1)
        raise DemoError(f"{p.name} not ready after {timeout:.0f} s: {last}; log {p.log}")

    def stop(self) -> None:
        """The router first, then the nodes (SIGTERM, then SIGKILL), then the broker."""
        for p in reversed(self.procs):
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.proc.wait(15)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(5)
        self.procs.clear()
        self.broker.stop()

    # -- steps -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every step; the answers it printed, for a caller that checks them."""
        from confluent_kafka import Producer

        from serving.loaders.kafka import PRODUCER_DEFAULTS, encode_key, produce_rows
        from serving.registry import Registry
        from serving.sharding import shard_for_key

        self.broker.start()
        assert self.broker.proc is not None
        say(f"1. broker: tansu on {self.broker.bootstrap} (pid {self.broker.proc.pid})")

        self.config.write_text(REGISTRY.format(bootstrap=self.broker.bootstrap))
        view = Registry.from_yaml(self.config).view("user_profile")
        self.broker.create_topics({"user_profile": PARTITIONS})
        producer = Producer({"bootstrap.servers": self.broker.bootstrap, **PRODUCER_DEFAULTS})
        n = produce_rows(producer, view, [user_row(u) for u in range(USERS)])
        self.owner = {
            u: shard_for_key(encode_key(view, [u]), PARTITIONS, SHARDS) for u in range(USERS)
        }
        say(
            f"2. registry {self.config}; topic user_profile with {PARTITIONS} partitions; "
            f"produced {n:,} rows (users 0..{USERS - 1}, murmur2 partitioning)"
        )

        nodes = []
        for k in range(SHARDS):
            args = [
                "serve", "--config", str(self.config), "--data-dir", str(self.work / f"shard{k}"),
                "--no-auth", "--shard-index", str(k), "--shard-count", str(SHARDS),
                "--topic-partitions", str(PARTITIONS), "--max-ready-lag", "0",
            ]  # fmt: skip
            p = self.start(f"shard{k}", args)
            nodes.append(p)
            owned = [q for q in range(PARTITIONS) if q % SHARDS == k]
            say(
                f"3. shard {k}: feature-serving {' '.join(args)} --http-port {p.http} "
                f"--grpc-port {p.grpc}\n   (pid {p.proc.pid}; consumes partitions "
                f"{', '.join(map(str, owned))}; log {p.log})"
            )
        for k, p in enumerate(nodes):
            ready = self.wait_ready(p)
            say(f"4. shard {k} ready (caught up): kafka_lag {json.dumps(ready.get('kafka_lag'))}")

        cmap = self.work / "cluster.yaml"
        cmap.write_text(
            f"topic_partitions: {PARTITIONS}\nshards:\n"
            + "".join(
                f"  {k}: [{{grpc: '127.0.0.1:{p.grpc}', http: '127.0.0.1:{p.http}'}}]\n"
                for k, p in enumerate(nodes)
            )
        )
        http, grpc = self.router_ports
        args = ["route", "--config", str(self.config), "--cluster-map", str(cmap), "--no-auth"]
        router = self.start("router", args, http, grpc)
        say(f"5. cluster map {cmap}:\n" + indent(cmap.read_text().rstrip()))
        say(
            f"   router: feature-serving {' '.join(args)} --http-port {router.http} "
            f"--grpc-port {router.grpc}\n   (pid {router.proc.pid}; log {router.log})"
        )
        self.wait_ready(router)
        return self.answers(router, nodes)

    def answers(self, router: Process, nodes: list[Process]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        body = {"features": FEATURES, "entities": {"user_id": ASKED}}
        say("6. answers")
        say(
            "   through the router, every user whoever owns it "
            f"(shards {', '.join(str(self.owner[u]) for u in ASKED)}):\n"
            f"     curl -s {router.url}/get-online-features -H 'Content-Type: application/json'"
            f" -d '{json.dumps(body)}'"
        )
        out["router"] = self.show(router.url, body)
        for k, p in enumerate(nodes):
            mine = [u for u in range(USERS) if self.owner[u] == k][:3]
            say(f"   directly from shard {k}, users it owns {mine}:")
            out[f"shard{k}"] = self.show(
                p.url, {"features": FEATURES, "entities": {"user_id": mine}}
            )
        other = next(u for u in range(USERS) if self.owner[u] == 1)
        say(f"   shard 0 asked for user {other}, which shard 1 owns:")
        out["refused"] = self.show(
            nodes[0].url, {"features": FEATURES, "entities": {"user_id": [other]}}
        )
        return out

    @staticmethod
    def show(url: str, body: dict[str, Any]) -> dict[str, Any]:
        status, got = post(url + "/get-online-features", body)
        if status == 200:
            names = got["metadata"]["feature_names"]
            for i, u in enumerate(body["entities"]["user_id"]):
                cells = ", ".join(
                    f"{n}={r['values'][i]}"
                    for n, r in zip(names[1:], got["results"][1:], strict=True)
                )
                say(f"     user_id={u}: {cells}")
        else:
            say(f"     HTTP {status} {got['error']['code']}: {got['error']['message']}")
        return {"status": status, "answer": got}


def say(text: str) -> None:
    print(text, flush=True)


def indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serving.dev.cluster_demo",
        description="Broker, two shards and a router on this machine, with data and answers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--http-port", type=int, default=6576, help="the router's HTTP port")
    p.add_argument("--grpc-port", type=int, default=6575, help="the router's gRPC port")
    p.add_argument(
        "--work-dir", help="data, logs, registry, cluster map (default: a temporary directory)"
    )
    p.add_argument("--once", action="store_true", help="stop after printing the answers")
    p.add_argument("--json", help="also write the answers to this file (for tests)")
    args = p.parse_args(argv)
    for flag, port in (("--http-port", args.http_port), ("--grpc-port", args.grpc_port)):
        if not port_is_free("127.0.0.1", port):
            print(f"error: port {port} is taken; choose another with {flag}", file=sys.stderr)
            return 2
    temp = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fs-cluster-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"cluster demo in {work} (data, logs, registry, cluster map)")
    demo = Demo(work, args.http_port, args.grpc_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        answers = demo.run()
        if args.json:
            Path(args.json).write_text(json.dumps(answers))
        if not args.once:
            say(
                f"\nServing: router HTTP 127.0.0.1:{args.http_port}, gRPC 127.0.0.1:"
                f"{args.grpc_port}. Ctrl-C stops everything."
            )
            while not stop.is_set():
                if any(p.proc.poll() is not None for p in demo.procs):
                    dead = [p.name for p in demo.procs if p.proc.poll() is not None]
                    print(f"error: {', '.join(dead)} exited; see {work}", file=sys.stderr)
                    return 1
                stop.wait(0.5)
    except (DemoError, BrokerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    say("stopped: router, shards, broker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
