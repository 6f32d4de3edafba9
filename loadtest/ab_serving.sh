#!/usr/bin/env bash
# A/B comparison of server settings, the way docs/benchmarks.md's "Choices measured A/B" were
# taken: one server per variant, each on its own copy of one store, wrk runs alternating
# between them (A B A B) so machine noise hits both alike.
#
#   loadtest/ab_serving.sh "--batch-window-us 0" "--batch-window-us 200"
#   ROUNDS=3 SECONDS_PER_RUN=15 WORKLOADS="w1:1 w1:32" loadtest/ab_serving.sh "" "--no-request-metrics"
#
# Two commits instead of two flag sets: CHECKOUTS names one built checkout per variant (a
# `git worktree` with its extension built, or with `serving/_rust_core*.so` and `serving/_proto`
# copied in); variant i's server runs that checkout's `serving` package (PYTHONPATH) with this
# checkout's Python environment:
#
#   git worktree add /tmp/before HEAD~5 && (cd /tmp/before && make build)
#   CHECKOUTS="/tmp/before $PWD" loadtest/ab_serving.sh "" ""
#
# Needs the sample (`make sample`). Every variant runs with an API key (add --no-auth to a
# variant to measure without). Stops what it started on exit.
#
# CREDENTIALS names the bearer credential of each variant: `key` (the API key made here, the
# default) or a literal token, e.g. a JWT of loadtest/jwt_fixture.py for a variant started with
# its --auth-config:
#
#   tok=$(.venv/bin/python loadtest/jwt_fixture.py /tmp/jwt demo)
#   CREDENTIALS="key $tok" loadtest/ab_serving.sh "" "--auth-config /tmp/jwt/auth.yaml"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")
read -r -a checkouts <<<"${CHECKOUTS:-}"
read -r -a creds <<<"${CREDENTIALS:-}"
SAMPLE=${SAMPLE_DIR:-.data/sample}
ROUNDS=${ROUNDS:-2}
SECS=${SECONDS_PER_RUN:-10}
WORKLOADS=${WORKLOADS:-"w1:1 w1:32 w2:1 w2:32"}
[ $# -ge 2 ] || { echo "usage: $0 FLAGS_A FLAGS_B [FLAGS_C...]" >&2; exit 2; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
$PY -m serving materialize --config features.yaml --data-dir "$tmp/base" --progress never >/dev/null
key=$($PY -m serving keys create --name ab --read '*' --data-dir "$tmp/base" --keys-file "$tmp/keys.json" 2>/dev/null)
cred_of() { local c=${creds[$1]:-key}; if [ "$c" = key ]; then echo "$key"; else echo "$c"; fi; }
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ports=()
i=0
for flags in "$@"; do
  cp -r "$tmp/base" "$tmp/db$i"; rm -f "$tmp/db$i/LOCK"
  port=$(free_port)
  src=$(realpath "${checkouts[$i]:-.}")
  # shellcheck disable=SC2086
  (cd "$src" && PYTHONPATH="$src" exec $PY -m serving serve --config "$src/features.yaml" \
    --data-dir "$tmp/db$i" --http-port "$port" --grpc-port "$(free_port)" \
    --keys-file "$tmp/keys.json" --no-ingest --log-level warning \
    $flags) >"$tmp/server$i.log" 2>&1 &
  pids+=($!); ports+=("$port"); i=$((i + 1))
done
i=0
for port in "${ports[@]}"; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  FS_API_KEY=$(cred_of $i) wrk -t1 -c1 -d3s -s loadtest/get_online_features.lua "http://127.0.0.1:$port" \
    -- w1 "$SAMPLE/ids.txt" >/dev/null
  i=$((i + 1))
done
for w in $WORKLOADS; do
  workload=${w%%:*}; conc=${w##*:}
  threads=$([ "$conc" -gt 1 ] && echo 2 || echo 1)
  for round in $(seq "$ROUNDS"); do
    i=0
    for flags in "$@"; do
      line=$(FS_API_KEY=$(cred_of $i) wrk -t"$threads" -c"$conc" -d"${SECS}s" --latency --timeout 30s \
        -s loadtest/get_online_features.lua "http://127.0.0.1:${ports[$i]}" -- "$workload" \
        "$SAMPLE/ids.txt" | grep WRKJSON)
      label="${checkouts[$i]:+$(basename "${checkouts[$i]}") }$flags"
      $PY - "$line" "$workload" "$conc" "$round" "$label" <<'PYEOF'
import json, sys
line, workload, conc, rnd, flags = sys.argv[1:6]
d = json.loads(line[len("WRKJSON "):])
print(f"{workload:4} c={conc:<3} round {rnd}  [{flags or '(defaults)'}]  {d['rps']:9,.0f} req/s"
      f"  p50 {d['p50_ms']:.3f} ms  p99 {d['p99_ms']:.2f} ms  non-2xx {d['err_status']}")
PYEOF
      i=$((i + 1))
    done
  done
done
# SHOW_READYZ=1: each server's /readyz at the end (loadtest/bench_feature_log.sh reads its
# feature_logging section)
if [ -n "${SHOW_READYZ:-}" ]; then
  for port in "${ports[@]}"; do
    echo "READYZ $(curl -s -H "Authorization: Bearer $key" "http://127.0.0.1:$port/readyz")"
  done
fi
