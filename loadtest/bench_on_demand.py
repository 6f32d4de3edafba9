"""What a request-time on-demand view adds to the serving call, in-process (issue 16).

Workload: W2's shape, 100 entities (user ids in random order, all stored) x 200 float32
features of user_profile, plus an on-demand view computing 10 float32 outputs from 20 of the
stored features and 2 request fields (``a`` float64, ``b`` int64), in pyarrow mode and in
pandas mode, Feast JSON out. Rows measured, each the median of ``--rounds`` x ``--iters`` calls
taken alternately in one run (so that the machine's drift hits every row alike):

- ``w2``: ``Store.serve`` of the 200 stored features alone (the baseline);
- ``w2+odfv pyarrow``: the same request plus the view's 10 outputs: the Rust read, the inputs
  handed over as Arrow, the transform, the outputs checked and encoded;
- ``w2+odfv pyarrow, numpy body``: pyarrow mode, the same arithmetic written with numpy on the
  columns' ``to_numpy()`` (pyarrow.compute costs ~8 us a call at 100 rows, numpy ~1 us);
- ``w2+odfv pandas``: the same in pandas mode;
- ``transform only``: each pyarrow-mode function called on a prepared batch (what the user's
  code costs by itself).

Run: ``.venv/bin/python loadtest/bench_on_demand.py`` (``--rounds 5 --iters 300``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

TRANSFORMS = """
import numpy as np, pyarrow as pa, pyarrow.compute as pc

def ten(b):
    a = b["a"]
    k = pc.cast(b["b"], pa.float64())
    out = {}
    for j in range(10):
        x = pc.add(pc.multiply(pc.cast(b[f"f{2*j:03d}"], pa.float64()), a),
                   pc.multiply(pc.cast(b[f"f{2*j+1:03d}"], pa.float64()), k))
        out[f"o{j}"] = pc.cast(x, pa.float32())
    return out

def ten_numpy(b):
    # the same arithmetic on numpy views of the columns (nulls become NaN, which propagates)
    a = b["a"].to_numpy(zero_copy_only=False)
    k = b["b"].to_numpy(zero_copy_only=False).astype(np.float64)
    return {f"o{j}": (b[f"f{2*j:03d}"].to_numpy(zero_copy_only=False) * a
                      + b[f"f{2*j+1:03d}"].to_numpy(zero_copy_only=False) * k).astype(np.float32)
            for j in range(10)}

def ten_pandas(df):
    import pandas as pd
    out = pd.DataFrame(index=df.index)
    for j in range(10):
        x = df[f"f{2*j:03d}"] * df["a"] + df[f"f{2*j+1:03d}"] * df["b"]
        out[f"o{j}"] = x.astype("float32")
    return out
"""

REGISTRY = """
project: bench_odfv
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
feature_views:
  - name: user_profile
    entities: [user]
    features: [{name: "f{000..199}", dtype: float32}]
on_demand_feature_views:
  - name: scored
    sources: ["user_profile:f{000..019}"]
    request_source: {schema: [{name: a, dtype: float64}, {name: b, dtype: int64}]}
    features: [{name: "o{0..9}", dtype: float32}]
    transform: bench_tx:ten
  - name: scored_numpy
    sources: ["user_profile:f{000..019}"]
    request_source: {schema: [{name: a, dtype: float64}, {name: b, dtype: int64}]}
    features: [{name: "o{0..9}", dtype: float32}]
    transform: bench_tx:ten_numpy
  - name: scored_pandas
    sources: ["user_profile:f{000..019}"]
    request_source: {schema: [{name: a, dtype: float64}, {name: b, dtype: int64}]}
    features: [{name: "o{0..9}", dtype: float32}]
    transform: bench_tx:ten_pandas
    mode: pandas
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()

    from serving import Store

    tmp = Path(tempfile.mkdtemp(prefix="bench_odfv_"))
    (tmp / "bench_tx.py").write_text(TRANSFORMS)
    (tmp / "features.yaml").write_text(REGISTRY)
    store = Store(tmp / "db", tmp / "features.yaml")
    rng = np.random.default_rng(0)
    n = args.users
    cols: dict[str, pa.Array] = {
        "user_id": pa.array(np.arange(n, dtype=np.int64)),
        "event_timestamp": pa.array(
            [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")
        ),
    }
    for i in range(200):
        cols[f"f{i:03d}"] = pa.array(rng.random(n, dtype=np.float32))
    store.write("user_profile", pa.table(cols))
    users = rng.choice(n, 100, replace=False).tolist()
    a = rng.random(100).round(3).tolist()
    b = rng.integers(0, 10, 100).tolist()
    stored = [f"user_profile:f{i:03d}" for i in range(200)]

    def body(view: str | None) -> bytes:
        feats = stored + ([f"{view}:o{j}" for j in range(10)] if view else [])
        ents: dict[str, list[object]] = {"user_id": users}
        if view:
            ents |= {"a": a, "b": b}
        return json.dumps({"features": feats, "entities": ents}).encode()

    core, runner = store.core, store.on_demand
    bodies = {"w2": body(None), "w2+odfv pyarrow": body("scored"),
              "w2+odfv pyarrow, numpy body": body("scored_numpy"),
              "w2+odfv pandas": body("scored_pandas")}  # fmt: skip

    def call(name: str) -> None:
        out = core.serve("feast_http", bodies[name])
        if not isinstance(out, bytes):
            out = runner.complete(out)
        assert out[:1] == b"{"

    pending = core.serve("feast_http", bodies["w2+odfv pyarrow"])
    assert not isinstance(pending, bytes)
    inputs = pending.inputs(0)
    fn = store.registry.on_demand_views["scored"].function
    fn_np = store.registry.on_demand_views["scored_numpy"].function
    rows = {
        **{k: (lambda k=k: call(k)) for k in bodies},
        "transform only (pyarrow.compute)": lambda: fn(inputs),
        "transform only (numpy)": lambda: fn_np(inputs),
    }
    samples: dict[str, list[float]] = {k: [] for k in rows}
    for f in rows.values():  # warm up
        for _ in range(50):
            f()
    for _ in range(args.rounds):
        for name, f in rows.items():
            t = []
            for _ in range(args.iters):
                t0 = time.perf_counter_ns()
                f()
                t.append(time.perf_counter_ns() - t0)
            samples[name].append(statistics.median(t) / 1000)
    base = statistics.median(samples["w2"])
    print(
        f"in-process, 100 entities x 200 float32 + on-demand view (10 outputs from 20 stored "
        f"features and 2 request fields), Feast JSON; {args.rounds} rounds x {args.iters} "
        f"calls, medians (us); load average {Path('/proc/loadavg').read_text().split()[0]}"
    )
    print("| row | p50 us | added to w2 |\n|---|---:|---:|")
    for name in rows:
        med = statistics.median(samples[name])
        added = "" if name == "w2" or name.startswith("transform") else f"{med - base:+.0f}"
        print(f"| {name} | {med:.0f} | {added} |")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
