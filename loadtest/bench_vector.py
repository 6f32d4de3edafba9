"""Vector search (issue 21): our HNSW index (usearch, in the store) against faiss-cpu HNSW on the
same data, machine and run, plus the store's build rate, RSS and a gRPC end-to-end figure.

Data (``--n`` vectors of ``--dim`` 128 float32, seed 42): ``random``: i.i.d. standard normal
components; ``clustered``: 1,000 Gaussian centres, each vector a centre plus N(0, 0.3) noise.
Metric cosine (both indexes see normalized vectors: faiss inner product). Graph parameters
equal on both sides: M=16, ef_construction=128. Queries: ``--queries`` vectors of the same
distribution (seed 7); truth: exact top-10 by numpy (brute force).

Rows, per data set:

- ``ours search``: ``Store.serve("v1_search_http", ...)``: JSON in, search, JSON out, one call,
  in-process, k=10, at the registry's ef_search (``--ef``);
- ``ours search+20f``: the same request also returning 20 float32 features of the 10 hits
  (a feature service over another view), columns layout;
- ``faiss HNSW``: ``index.search`` of one query at a time, at the smallest efSearch whose
  recall@10 reaches ours (swept 16..512);
- ``grpc e2e c=1``: SearchNearest with the 20 features over gRPC to a real server process on
  loopback, one caller (``--grpc-calls``), the server started on the same data (its start
  rebuilds the index: ``restart build``).

Also printed: the build rate of loading the rows through ``Store.write`` (index included) and
without an index (same rows, a view without ``vector_index``), index memory from ``stats``,
and RSS of this process and of the server.

Run: ``.venv/bin/python loadtest/bench_vector.py --n 200000`` (``make bench-vector``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REGISTRY = """
project: vbench
entities:
  - {{name: item, join_keys: [{{name: item_id, dtype: int64}}]}}
feature_views:
  - name: items
    entities: [item]
    features:
      - {{name: emb, dtype: float32_array, dim: {dim},
          vector_index: {{metric: cosine, kind: hnsw, m: 16, ef_construction: 128,
                          ef_search: {ef}}}}}
  - name: items_plain
    entities: [item]
    features: [{{name: emb, dtype: float32_array, dim: {dim}}}]
  - name: item_stats
    entities: [item]
    features: [{{name: "s{{00..19}}", dtype: float32}}]
feature_services:
  - name: rank20
    features: ["item_stats:*"]
"""


def data(n: int, dim: int, clustered: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((1000, dim), dtype=np.float32)
        v = centres[rng.integers(0, 1000, n)] + 0.3 * rng.standard_normal((n, dim), np.float32)
    else:
        v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def truth(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for i in range(0, len(queries), 100):
        d = queries[i : i + 100] @ base.T
        top = np.argpartition(-d, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(d, top, 1), axis=1)
        out[i : i + 100] = np.take_along_axis(top, order, 1)
    return out


def recall(found: list[list[int]], t: np.ndarray) -> float:
    hits = sum(len(set(f) & set(row.tolist())) for f, row in zip(found, t, strict=True))
    return hits / t.size


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def rss_mib(pid: int | None = None) -> float:
    path = f"/proc/{pid or os.getpid()}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def table(ids: np.ndarray, vecs: np.ndarray | None, stats: bool) -> pa.Table:
    ts = dt.datetime.now(dt.UTC)
    cols: dict[str, Any] = {
        "item_id": pa.array(ids, pa.int64()),
        "event_timestamp": pa.array([ts] * len(ids), pa.timestamp("us", tz="UTC")),
    }
    if vecs is not None:
        cols["emb"] = pa.FixedSizeListArray.from_arrays(
            pa.array(vecs.reshape(-1), pa.float32()), vecs.shape[1]
        )
    if stats:
        for j in range(20):
            cols[f"s{j:02d}"] = pa.array((ids * 0.001 + j).astype(np.float32))
    return pa.table(cols)


def bench_set(args: argparse.Namespace, clustered: bool, work: Path) -> dict[str, Any]:
    import faiss

    from serving import Registry
    from serving.store import Store

    kind = "clustered" if clustered else "random"
    print(f"\n== {kind}: n={args.n} dim={args.dim} queries={args.queries}", flush=True)
    base = data(args.n, args.dim, clustered, 42)
    queries = data(args.queries, args.dim, clustered, 7)
    t0 = time.perf_counter()
    gt = truth(base, queries, 10)
    print(f"truth (numpy brute force): {time.perf_counter() - t0:.1f} s", flush=True)

    cfg = work / f"{kind}.yaml"
    cfg.write_text(REGISTRY.format(dim=args.dim, ef=args.ef))
    reg = Registry.from_yaml(cfg)
    db = work / f"{kind}-db"
    rss0 = rss_mib()
    store = Store(db, reg, hot_tier_bytes=256 << 20)
    ids = np.arange(args.n)
    step = 50_000
    t0 = time.perf_counter()
    for i in range(0, args.n, step):
        store.write("items", table(ids[i : i + step], base[i : i + step], False))
    t_indexed = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, args.n, step):
        store.write("items_plain", table(ids[i : i + step], base[i : i + step], False))
    t_plain = time.perf_counter() - t0
    for i in range(0, args.n, step):
        store.write("item_stats", table(ids[i : i + step], None, True))
    vstats = store.core.stats()["vector_indexes"]["items:emb"]
    rss_ours = rss_mib() - rss0
    print(
        f"load through Store.write: {args.n / t_indexed:,.0f} rows/s with the index, "
        f"{args.n / t_plain:,.0f} rows/s without; index {vstats['memory_bytes'] / 2**20:.0f} MiB "
        f"({vstats['memory_bytes'] / args.n:.0f} B/vector); RSS growth {rss_ours:.0f} MiB",
        flush=True,
    )

    def ours(q: np.ndarray, service: str | None) -> tuple[list[int], float]:
        body: dict[str, Any] = {"view": "items", "feature": "emb", "query": q.tolist(), "k": 10}
        if service:
            body["feature_service"] = service
        raw = json.dumps(body).encode()
        t = time.perf_counter()
        out = store.core.serve("v1_search_http", raw)
        dt_us = (time.perf_counter() - t) * 1e6
        assert isinstance(out, bytes)
        return json.loads(out)["keys"]["item_id"], dt_us

    rows: dict[str, Any] = {}
    for label, service in (("ours search", None), ("ours search+20f", "rank20")):
        lat: list[float] = []
        found: list[list[int]] = []
        for _ in range(2):  # warm-up round, then the measured one
            lat, found = [], []
            for q in queries:
                f, us = ours(q, service)
                found.append(f)
                lat.append(us)
        rows[label] = (recall(found, gt), pct(lat, 0.5), pct(lat, 0.99))
    our_recall = rows["ours search"][0]

    rss1 = rss_mib()
    t0 = time.perf_counter()
    fx = faiss.IndexHNSWFlat(args.dim, 16, faiss.METRIC_INNER_PRODUCT)
    fx.hnsw.efConstruction = 128
    fx.add(base)
    t_faiss = time.perf_counter() - t0
    rss_faiss = rss_mib() - rss1
    chosen = None
    for ef in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512):
        fx.hnsw.efSearch = ef
        found, lat = [], []
        for q in queries:
            t = time.perf_counter()
            _, i = fx.search(q.reshape(1, -1), 10)
            lat.append((time.perf_counter() - t) * 1e6)
            found.append(i[0].tolist())
        r = recall(found, gt)
        chosen = (ef, r, pct(lat, 0.5), pct(lat, 0.99))
        if r >= our_recall:
            break
    assert chosen is not None
    print(
        f"faiss build: {args.n / t_faiss:,.0f} vectors/s ({faiss.omp_get_max_threads()} threads); "
        f"RSS growth {rss_faiss:.0f} MiB",
        flush=True,
    )
    rows[f"faiss HNSW (efSearch {chosen[0]})"] = chosen[1:]
    store.close()

    # gRPC end to end: a server on the same data dir (its start rebuilds the index)
    grpc_row, restart = grpc_e2e(args, cfg, db, queries, work / f"{kind}-server.log")
    rows["grpc e2e c=1 search+20f"] = grpc_row

    print(f"| {kind} | recall@10 | p50 us | p99 us |")
    print("|---|---|---|---|")
    for k, (r, p50, p99) in rows.items():
        print(f"| {k} | {r:.3f} | {p50:.0f} | {p99:.0f} |")
    print(restart, flush=True)
    return rows


def grpc_e2e(
    args: argparse.Namespace, cfg: Path, db: Path, queries: np.ndarray, log: Path
) -> tuple[tuple[float, float, float], str]:
    import grpc

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from serving._proto.feature_serving.v1 import feature_service_pb2 as v1
    from tests.harness import start_server, stop_server

    t0 = time.perf_counter()
    server = start_server(cfg, db, log, "--no-auth")
    started = time.perf_counter() - t0
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as ch:
            call = ch.unary_unary(
                "/feature_serving.v1.FeatureService/SearchNearest",
                request_serializer=v1.SearchNearestRequest.SerializeToString,
                response_deserializer=v1.SearchNearestResponse.FromString,
            )
            lat: list[float] = []
            for i in range(args.grpc_calls + 100):
                q = queries[i % len(queries)]
                req = v1.SearchNearestRequest(
                    view="items", feature="emb", query=q.tolist(), k=10, feature_service="rank20"
                )
                t = time.perf_counter()
                r = call(req, timeout=5)
                if i >= 100:
                    lat.append((time.perf_counter() - t) * 1e6)
                assert r.num_hits == 10
                assert len(r.features.columns) == 20
        rss = rss_mib(server.proc.pid)
    finally:
        stop_server(server)
    built = ""
    for line in log.read_text().splitlines():
        if "vector index 'items:emb'" in line:
            built = line.strip()
    return (float("nan"), pct(lat, 0.5), pct(lat, 0.99)), (
        f"restart: server ready in {started:.1f} s (index rebuild: {built or 'see log'}); "
        f"server RSS {rss:.0f} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", type=int, default=64, help="our index's ef_search")
    p.add_argument("--grpc-calls", type=int, default=1000)
    p.add_argument("--sets", default="random,clustered")
    args = p.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-vector-") as tmp:
        for s in args.sets.split(","):
            bench_set(args, s == "clustered", Path(tmp))
    print(f"load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
