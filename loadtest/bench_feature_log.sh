#!/usr/bin/env bash
# Served-feature logging's cost (docs/benchmarks.md, "Served-feature logging"): W1 and W2 through
# feature services of W1's / W2's features, logging off vs sample_rate 1.0 to a Delta table, A/B
# in one run with loadtest/ab_serving.sh; then the writer's CPU per 1,000 logged rows from the
# logged server's /readyz (flush_cpu_seconds / flushed_rows).
#
#   loadtest/bench_feature_log.sh                     # ROUNDS=2 SECONDS_PER_RUN=10 as ab_serving
#   ROUNDS=3 SECONDS_PER_RUN=15 loadtest/bench_feature_log.sh
#
# Needs the sample (`make sample`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# two registries: features.yaml plus services bench_w1 / bench_w2, without and with logging
$PY - "$tmp" <<'PYEOF'
import sys, yaml
tmp = sys.argv[1]
reg = yaml.safe_load(open("features.yaml"))
base = __import__("os").path.abspath(".")
for view in reg["feature_views"]:  # absolute source paths: the copies live elsewhere
    src = view.get("batch_source")
    if src and "path" in src and not src["path"].startswith("/"):
        src["path"] = f"{base}/{src['path']}"
for variant in ("off", "on"):
    services = [s for s in reg.get("feature_services", []) if not s["name"].startswith("bench_")]
    for w, n in (("w1", 100), ("w2", 200)):
        svc = {"name": f"bench_{w}", "features": [f"user_profile:f{{000..{n - 1:03d}}}"]}
        if variant == "on":
            svc["logging"] = {
                "sample_rate": 1.0,
                "destination": {"type": "delta", "path": f"{tmp}/logs/{w}"},
            }
        services.append(svc)
    out = dict(reg, feature_services=services)
    yaml.safe_dump(out, open(f"{tmp}/features-{variant}.yaml", "w"), sort_keys=False)
PYEOF
cp demo_transforms.py "$tmp/" 2>/dev/null || true
FS_FEATURE_SERVICE='bench_{workload}' SHOW_READYZ=1 \
  loadtest/ab_serving.sh "--config $tmp/features-off.yaml" "--config $tmp/features-on.yaml" \
  | tee "$tmp/ab.txt" | grep -v '^READYZ'
echo "logged rows and the writer's CPU (delta tables under $tmp/logs):"
$PY - "$tmp" <<'PYEOF'
import json, sys
from deltalake import DeltaTable
for line in open(f"{sys.argv[1]}/ab.txt"):
    if not line.startswith("READYZ "):
        continue
    for name, st in json.loads(line[7:]).get("feature_logging", {}).items():
        rows, cpu = st["flushed_rows"], st["flush_cpu_seconds"]
        if rows:
            print(f"{name}: {rows} rows flushed in {st['flushes']} flushes, writer CPU "
                  f"{cpu:.3f} s = {cpu / rows * 1000 * 1000:.2f} ms per 1,000 rows; "
                  f"dropped (buffer full) {st['dropped_rows_buffer_full']}")
for w in ("w1", "w2"):
    try:
        t = DeltaTable(f"{sys.argv[1]}/logs/{w}")
    except Exception as e:  # noqa: BLE001
        print(w, "no table:", e)
        continue
    import pyarrow as pa
    n = sum(pa.table(t.get_add_actions(flatten=True)).column("num_records").to_pylist())
    print(f"{w}: {n} rows logged in {len(t.file_uris())} files, {t.version() + 1} commits")
PYEOF
