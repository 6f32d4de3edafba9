"""On-demand views end to end over HTTP: ours against Feast 0.67's own ``feast serve``.

Issue 16 (docs/benchmarks.md, "On-demand views"). One machine, loopback only, a temporary
directory removed at the end:

- data: ``--users`` users (default 2,000: Feast's SQLite materialize of 20,000 x 200 values
  takes minutes) of WORKLOADS.md's ``user_profile`` (200 float32 features, the WORKLOADS
  formula), one Parquet file;
- an on-demand view computing 10 float32 outputs ``o0..o9`` from 20 stored features and 2
  request fields (``a`` float64, ``b`` int64): ``o_j = f(2j) * a + f(2j+1) * b``, written
  once per mode: ours in pyarrow mode (pyarrow.compute, and numpy on the columns) and pandas
  mode; Feast's in ``pandas`` and ``python`` mode (its two modes);
- ``feature-serving serve --no-auth`` after ``materialize``; Feast: ``feast apply``,
  ``feast materialize``, ``feast serve`` (SQLite online store, one worker, no access log).

Requests (W2's shape, Feast's JSON body): 100 random distinct users, the 200 stored features,
plus the view's 10 outputs with the request data in ``entities``; and W2 alone on the same
server. One client, requests back to back (c=1), ``--requests`` per row (fewer for Feast,
whose answers take ~100 ms), after a warm-up; p50 and p90 latency, and req/s. Every answer is
checked for 200, and every fifth for the first output of the first entity equal to the
arithmetic done here.

Run: ``.venv/bin/python loadtest/bench_on_demand_feast.py`` (needs ``make feast-venv``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_on_demand import TRANSFORMS  # the same three functions as in-process
from bench_push import FEAST_VENV, ROOT, Processes, free_port, wait_http

FEATURES = 200

REGISTRY = """
project: bench_odfv_feast
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
feature_views:
  - name: user_profile
    entities: [user]
    features: [{{name: "f{{000..199}}", dtype: float32}}]
    batch_source: {{type: parquet, path: "{parquet}"}}
on_demand_feature_views:
""" + "".join(
    f"""  - name: {name}
    sources: ["user_profile:f{{{{000..019}}}}"]
    request_source: {{{{schema: [{{{{name: a, dtype: float64}}}}, {{{{name: b, dtype: int64}}}}]}}}}
    features: [{{{{name: "o{{{{0..9}}}}", dtype: float32}}}}]
    transform: bench_odfv_tx:{fn}
    mode: {mode}
"""
    for name, fn, mode in (
        ("scored", "ten", "pyarrow"),
        ("scored_numpy", "ten_numpy", "pyarrow"),
        ("scored_pandas", "ten_pandas", "pandas"),
    )
)

FEAST_DEFINITIONS = """
from datetime import timedelta

import pandas as pd
from feast import Entity, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, Int64

user = Entity(name="user", join_keys=["user_id"])
batch = FileSource(path="{parquet}", timestamp_field="event_timestamp")
user_profile = FeatureView(
    name="user_profile", entities=[user], ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=f"f{{i:03d}}", dtype=Float32) for i in range({features})],
    source=batch, online=True,
)
ctx = RequestSource(
    name="ctx", schema=[Field(name="a", dtype=Float64), Field(name="b", dtype=Int64)]
)
OUT = [Field(name=f"o{{j}}", dtype=Float32) for j in range(10)]
# python mode infers the outputs' types from Python values: floats are Float64
OUT64 = [Field(name=f"o{{j}}", dtype=Float64) for j in range(10)]

@on_demand_feature_view(sources=[user_profile[[f"f{{i:03d}}" for i in range(20)]], ctx],
                        schema=OUT, mode="pandas")
def scored_pandas(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for j in range(10):
        x = df[f"f{{2*j:03d}}"] * df["a"] + df[f"f{{2*j+1:03d}}"] * df["b"]
        out[f"o{{j}}"] = x.astype("float32")
    return out

@on_demand_feature_view(sources=[user_profile[[f"f{{i:03d}}" for i in range(20)]], ctx],
                        schema=OUT64, mode="python")
def scored_python(inputs: dict) -> dict:
    a, b = inputs["a"], inputs["b"]
    return {{f"o{{j}}": [x * p + y * q for x, y, p, q in
                         zip(inputs[f"f{{2*j:03d}}"], inputs[f"f{{2*j+1:03d}}"], a, b)]
            for j in range(10)}}
"""

FEATURE_STORE = """
project: bench_odfv_feast
registry: data/registry.db
provider: local
offline_store:
  type: file
entity_key_serialization_version: 3
online_store:
  type: sqlite
  path: data/online.db
"""


def value(u: int, i: int) -> float:
    return float(np.float32(((u * 31 + i * 17) % 1000) / 10.0))


def write_parquet(path: Path, users: int) -> None:
    cols: dict[str, Any] = {
        "user_id": pa.array(np.arange(users, dtype=np.int64)),
        "event_timestamp": pa.array(
            [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * users, pa.timestamp("us", tz="UTC")
        ),
    }
    u = np.arange(users, dtype=np.int64)
    for i in range(FEATURES):
        cols[f"f{i:03d}"] = pa.array((((u * 31 + i * 17) % 1000) / 10.0).astype(np.float32))
    pq.write_table(pa.table(cols), path)


def bodies(users: int, view: str | None, n: int, rng: random.Random) -> list[tuple[bytes, float]]:
    """``n`` request bodies and, per body, the first entity's expected ``o0`` (NaN: no view)."""
    out = []
    for _ in range(n):
        ids = rng.sample(range(users), 100)
        a = [rng.randrange(1000) / 8 for _ in ids]
        b = [rng.randrange(10) for _ in ids]
        feats = [f"user_profile:f{i:03d}" for i in range(FEATURES)]
        ents: dict[str, list[Any]] = {"user_id": ids}
        want = float("nan")
        if view:
            feats += [f"{view}:o{j}" for j in range(10)]
            ents |= {"a": a, "b": b}
            want = float(np.float32(value(ids[0], 0) * a[0] + value(ids[0], 1) * b[0]))
        out.append((json.dumps({"features": feats, "entities": ents}).encode(), want))
    return out


def post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return bytes(r.read())


def measure(url: str, reqs: list[tuple[bytes, float]], warmup: int) -> dict[str, Any]:
    for body, _ in reqs[:warmup]:
        post(url, body)
    lat = []
    t_all = time.perf_counter()
    for i, (body, want) in enumerate(reqs[warmup:]):
        t0 = time.perf_counter()
        raw = post(url, body)
        lat.append(time.perf_counter() - t0)
        # every 5th answer checked (parsing 1 MB of JSON costs the client ~10 ms): the view's
        # first output of the first entity
        if i % 5 == 0 and not np.isnan(want):
            got = json.loads(raw)
            names = got["metadata"]["feature_names"]
            o0 = got["results"][names.index("o0")]["values"][0]
            if abs(o0 - want) > 1e-3 * max(1.0, abs(want)):
                raise SystemExit(f"{url}: o0 = {o0}, expected {want}")
    elapsed = time.perf_counter() - t_all
    lat.sort()
    return {
        "requests": len(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p90_ms": 1000 * lat[int(0.9 * (len(lat) - 1))],
        "req_s": len(lat) / elapsed,
    }


def feast_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"VIRTUAL_ENV": str(FEAST_VENV), "FEAST_USAGE": "False"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=300, help="per row of ours")
    ap.add_argument("--feast-requests", type=int, default=30, help="per row of Feast")
    ap.add_argument("--skip-feast", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_feast and not (FEAST_VENV / "bin" / "feast").exists():
        raise SystemExit("the Feast venv is missing: run `make feast-venv` (or --skip-feast)")
    rng = random.Random(16)
    tmp = Path(tempfile.mkdtemp(prefix="bench_odfv_feast_"))
    procs = Processes()
    load_before = os.getloadavg()[0]
    rows: dict[str, dict[str, Any]] = {}
    try:
        parquet = tmp / "users.parquet"
        write_parquet(parquet, args.users)
        (tmp / "bench_odfv_tx.py").write_text(TRANSFORMS)
        config = tmp / "features.yaml"
        config.write_text(REGISTRY.format(parquet=parquet))
        py = sys.executable
        subprocess.run(
            [py, "-m", "serving", "materialize", "--config", str(config), "--data-dir",
             str(tmp / "db")], cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        http = free_port()
        node = procs.start(
            [py, "-m", "serving", "serve", "--config", str(config), "--data-dir",
             str(tmp / "db"), "--no-auth", "--http-port", str(http), "--grpc-port",
             str(free_port())],
            tmp / "serve.log", cwd=ROOT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{http}"
        wait_http(base + "/readyz", node, tmp / "serve.log")
        n, w = args.requests, 30
        url = base + "/get-online-features"
        for label, view in (("w2", None), ("w2 + view, pyarrow", "scored"),
                            ("w2 + view, pyarrow (numpy body)", "scored_numpy"),
                            ("w2 + view, pandas", "scored_pandas")):  # fmt: skip
            rows[f"feature-serving: {label}"] = measure(
                url, bodies(args.users, view, n + w, rng), w
            )
            print(label, rows[f"feature-serving: {label}"], file=sys.stderr)
        procs.stop(node)

        if not args.skip_feast:
            repo = tmp / "feast_repo"
            (repo / "data").mkdir(parents=True)
            (repo / "feature_store.yaml").write_text(FEATURE_STORE)
            (repo / "definitions.py").write_text(
                FEAST_DEFINITIONS.format(parquet=parquet, features=FEATURES)
            )
            feast = str(FEAST_VENV / "bin" / "feast")
            for cmd in (["apply"], ["materialize", "2023-12-31T00:00:00", "2024-01-02T00:00:00"]):
                done = subprocess.run(
                    [feast, *cmd], cwd=repo, env=feast_env(), capture_output=True, text=True,
                    timeout=1800, check=False,
                )  # fmt: skip
                if done.returncode:
                    raise SystemExit(f"feast {cmd[0]} failed:\n{done.stdout}\n{done.stderr}")
            port = free_port()
            p = procs.start(
                [feast, "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"],
                tmp / "feast.log", cwd=repo, env=feast_env(),
            )  # fmt: skip
            fbase = f"http://127.0.0.1:{port}"
            wait_http(fbase + "/health", p, tmp / "feast.log")
            n, w = args.feast_requests, 3
            for label, view in (("w2", None), ("w2 + view, pandas", "scored_pandas"),
                                ("w2 + view, python", "scored_python")):  # fmt: skip
                rows[f"Feast 0.67: {label}"] = measure(
                    fbase + "/get-online-features", bodies(args.users, view, n + w, rng), w
                )
                print(label, rows[f"Feast 0.67: {label}"], file=sys.stderr)
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"W2 shape ({args.users} users stored, 100 per request x 200 float32) + on-demand view "
        f"(10 float32 outputs from 20 stored features and 2 request fields), HTTP Feast JSON, "
        f"c=1; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print("| server: request | requests | p50 ms | p90 ms | req/s |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['requests']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['req_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
