"""Locust load test of feature-serving: workloads W1 and W2 of WORKLOADS.md over HTTP and gRPC.

Two users, pick one or both on the command line (default: both):

- ``HttpFeatureUser``: Feast's ``POST /get-online-features`` through Locust's FastHttpUser, on
  ``--host`` (``http://HOST:PORT``, the HTTP port).
- ``GrpcFeatureUser``: ``feature_serving.v1.FeatureService/GetFeatureVector`` with the dense
  layout over a grpc channel to ``--grpc-host`` (``HOST:PORT``; default: the host of ``--host``
  with port 6565). Every call is reported to Locust's ``events.request``, so gRPC rows show in
  Locust's statistics, CSV and HTML report like HTTP rows.

Tasks (Locust tags ``w1`` / ``w2``; ``--tags w1`` or ``LOCUST_TAGS=w1`` runs only W1):

- W1: 1 random entity, features ``user_profile:f000`` .. ``f099``.
- W2: 100 random distinct entities, features ``f000`` .. ``f199``.

Entities are drawn uniformly at random per request from the id pool ``--ids-file`` (env
``FS_IDS_FILE``, default ``.data/sample/ids.txt``, one id per line, written by ``make sample``).
``FS_API_KEY`` in the environment is sent as ``authorization: Bearer <key>`` on both APIs.
``FS_WAIT_SECONDS`` (default 0) is each user's pause between requests.

Example against any deployment::

    FS_API_KEY=secret .venv/bin/locust -f loadtest/locustfile.py --headless \\
        --host http://feature-server:6566 --grpc-host feature-server:6565 \\
        --ids-file ids.txt -u 20 -r 5 -t 60s

Locust's Python clients saturate long before the server does (see docs/load-testing.md): use
Locust to check behaviour under load and error rates, and ``make bench-serving`` (wrk, h2load)
for throughput and latency figures of record.
"""

from __future__ import annotations

# grpc must cooperate with gevent (Locust's concurrency) before any channel exists.
import grpc  # isort: skip
import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

import sys  # noqa: E402

# grpc under gevent finishes each call on a native thread that needs the GIL to wake the
# greenlet; while other greenlets keep the process busy it gets the GIL only at the switch
# interval (5 ms by default). 0.5 ms halved the gRPC users' p50 next to HTTP users in one
# process (57 -> 28 ms, 10 users, docs/load-testing.md).
sys.setswitchinterval(0.0005)

import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from locust import FastHttpUser, User, constant, events, tag, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from serving._proto.feature_serving.v1 import feature_service_pb2 as pb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IDS = REPO / ".data" / "sample" / "ids.txt"
GRPC_METHOD = "/feature_serving.v1.FeatureService/GetFeatureVector"
HTTP_PATH = "/get-online-features"
VIEW = "user_profile"
#: workload -> (entities per request, features)
WORKLOADS = {"w1": (1, 100), "w2": (100, 200)}


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument(
        "--ids-file",
        type=str,
        env_var="FS_IDS_FILE",
        default=str(DEFAULT_IDS),
        help="entity id pool, one id per line (default .data/sample/ids.txt)",
    )
    parser.add_argument(
        "--grpc-host",
        type=str,
        env_var="FS_GRPC_HOST",
        default="",
        help="gRPC target HOST:PORT (default: the host of --host, port 6565)",
    )


def _option(env: Environment, name: str, env_var: str, default: str) -> str:
    opts = env.parsed_options
    value = getattr(opts, name, None) if opts is not None else None
    return str(value or os.environ.get(env_var) or default)


_POOLS: dict[str, list[int]] = {}


def load_ids(path: str) -> list[int]:
    """The id pool of ``path`` (read once per process)."""
    if path not in _POOLS:
        ids = [int(line) for line in Path(path).read_text().split() if line]
        if len(ids) < WORKLOADS["w2"][0]:
            raise ValueError(f"{path}: {len(ids)} ids; W2 needs at least {WORKLOADS['w2'][0]}")
        _POOLS[path] = ids
    return _POOLS[path]


def feature_refs(n: int) -> list[str]:
    return [f"{VIEW}:f{i:03d}" for i in range(n)]


def auth_header() -> dict[str, str]:
    key = os.environ.get("FS_API_KEY", "")
    return {"authorization": f"Bearer {key}"} if key else {}


class _Draw:
    """Uniform random ids from the pool: one, or ``n`` distinct ones."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.rng = random.Random()

    def one(self) -> list[int]:
        return [self.ids[self.rng.randrange(len(self.ids))]]

    def distinct(self, n: int) -> list[int]:
        return self.rng.sample(self.ids, n)

    def batch(self, n: int) -> list[int]:
        return self.one() if n == 1 else self.distinct(n)


def _wait() -> Any:
    return constant(float(os.environ.get("FS_WAIT_SECONDS", "0") or 0))


class HttpFeatureUser(FastHttpUser):
    """Feast-compatible HTTP endpoint, JSON bodies as in WORKLOADS.md."""

    wait_time = _wait()

    def on_start(self) -> None:
        path = _option(self.environment, "ids_file", "FS_IDS_FILE", str(DEFAULT_IDS))
        self.draw = _Draw(load_ids(path))
        self.headers = {"content-type": "application/json", **auth_header()}
        self.prefix = {
            w: '{"features":[' + ",".join(f'"{r}"' for r in feature_refs(nf)) + "],"
            '"entities":{"user_id":['
            for w, (_, nf) in WORKLOADS.items()
        }

    def _get(self, workload: str) -> None:
        n, _ = WORKLOADS[workload]
        ids = self.draw.batch(n)
        body = self.prefix[workload] + ",".join(map(str, ids)) + "]}}"
        with self.client.post(
            HTTP_PATH,
            data=body,
            headers=self.headers,
            name=f"HTTP {workload.upper()}",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            elif not resp.content or b'"results"' not in resp.content[:200_000]:
                resp.failure("answer without results")
            else:
                resp.success()

    @tag("w1")
    @task
    def w1(self) -> None:
        self._get("w1")

    @tag("w2")
    @task
    def w2(self) -> None:
        self._get("w2")


def grpc_target(env: Environment, host: str | None) -> str:
    """``--grpc-host``, else the host name of ``--host`` with port 6565."""
    target = _option(env, "grpc_host", "FS_GRPC_HOST", "")
    if target:
        return target
    parts = urlsplit(host if host and "://" in (host or "") else f"http://{host or '127.0.0.1'}")
    return f"{parts.hostname or '127.0.0.1'}:6565"


class GrpcFeatureUser(User):
    """``GetFeatureVector`` with the dense layout; each call is reported to Locust's stats."""

    wait_time = _wait()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.target = grpc_target(environment, self.host)
        self.channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        # bytes in, bytes out: the request is a prebuilt prefix (features, layout) followed by the
        # serialized entities (concatenated protobuf messages merge), the answer is parsed here.
        self.call = self.channel.unary_unary(GRPC_METHOD)
        self.metadata = tuple(auth_header().items())
        self.prefix = {
            w: pb.GetFeatureVectorRequest(
                features=pb.FeatureRefs(refs=feature_refs(nf)), layout=pb.LAYOUT_DENSE
            ).SerializeToString()
            for w, (_, nf) in WORKLOADS.items()
        }

    def on_start(self) -> None:
        path = _option(self.environment, "ids_file", "FS_IDS_FILE", str(DEFAULT_IDS))
        self.draw = _Draw(load_ids(path))

    def on_stop(self) -> None:
        self.channel.close()

    def _get(self, workload: str) -> None:
        n, nf = WORKLOADS[workload]
        req = pb.GetFeatureVectorRequest()
        req.entities["user_id"].int64_values.values.extend(self.draw.batch(n))
        body = self.prefix[workload] + req.SerializeToString()
        exc: Exception | None = None
        length = 0
        start = time.perf_counter()
        try:
            answer = self.call(body, timeout=30, metadata=self.metadata)
            length = len(answer)
            dense = pb.GetFeatureVectorResponse.FromString(answer).dense
            if (dense.rows, dense.cols) != (n, nf) or len(dense.values) != 4 * n * nf:
                exc = AssertionError(f"dense {dense.rows}x{dense.cols}, expected {n}x{nf}")
        except grpc.RpcError as e:
            exc = e
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"gRPC {workload.upper()} dense",
            response_time=elapsed_ms,
            response_length=length,
            exception=exc,
            context={},
        )

    @tag("w1")
    @task
    def w1(self) -> None:
        self._get("w1")

    @tag("w2")
    @task
    def w2(self) -> None:
        self._get("w2")
