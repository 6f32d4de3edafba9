#!/usr/bin/env bash
# Where a node's time goes under load: one server on a copy of the sample store, wrk driving
# one workload, py-spy sampling the server process (Python and native frames, GIL or not)
# meanwhile; prints the hottest frames (self time and total) and leaves the collapsed stacks
# (flamegraph input) in OUT.
#
#   loadtest/profile_serving.sh w1 32            # W1 at c=32 for 15 s
#   SECONDS_PER_RUN=20 OUT=/tmp/w2.txt loadtest/profile_serving.sh w2 1 --json-float32-shortest
#
# py-spy comes from PyPI (`.venv/bin/pip install py-spy`); with perf (Debian `linux-perf`)
# PERF=1 also records the native side (`perf report` on OUT.perf).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")
SAMPLE=${SAMPLE_DIR:-.data/sample}
SECS=${SECONDS_PER_RUN:-15}
workload=${1:-w1}; conc=${2:-32}; shift 2 || true
OUT=${OUT:-/tmp/profile-$workload-c$conc.txt}
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
$PY -m serving materialize --config features.yaml --data-dir "$tmp/db" --progress never >/dev/null
key=$($PY -m serving keys create --name prof --read '*' --data-dir "$tmp/db" --keys-file "$tmp/keys.json" 2>/dev/null)
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
gport=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2068
$PY -m serving serve --config features.yaml --data-dir "$tmp/db" --http-port "$port" \
  --grpc-port "$gport" --keys-file "$tmp/keys.json" --no-ingest --log-level warning $@ \
  >"$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
threads=$([ "$conc" -gt 1 ] && echo 2 || echo 1)
FS_API_KEY=$key wrk -t1 -c1 -d3s -s loadtest/get_online_features.lua "http://127.0.0.1:$port" \
  -- "$workload" "$SAMPLE/ids.txt" >/dev/null
FS_API_KEY=$key wrk -t"$threads" -c"$conc" -d"$((SECS + 2))s" --latency --timeout 30s \
  -s loadtest/get_online_features.lua "http://127.0.0.1:$port" -- "$workload" "$SAMPLE/ids.txt" \
  | grep WRKJSON &
wrk_pid=$!
sleep 1
"$(dirname "$PY")/py-spy" record --pid "$pid" --duration "$SECS" --rate 500 ${NATIVE:+--native} \
  --format raw --output "$OUT" >/dev/null 2>&1 &
spy=$!
if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  perf record -F 999 -g -p "$pid" -o "$OUT.perf" -- sleep "$SECS" >/dev/null 2>&1 || true
fi
wait "$spy" || true
wait "$wrk_pid" || true
$PY - "$OUT" <<'PYEOF'
import collections, sys
self_t, total = collections.Counter(), collections.Counter()
n = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    # idle waits (epoll, worker threads waiting for work) are not where the time goes
    if any(w in stack for w in ("epoll_", "_worker (concurrent", "SimpleQueue_get")):
        continue
    c = int(count); n += c
    self_t[frames[-1]] += c
    for f in set(frames):
        total[f] += c
print(f"{n} busy samples (idle waits dropped)")
print("-- self time --")
for f, c in self_t.most_common(25):
    print(f"{100 * c / n:5.1f} %  {f[:150]}")
print("-- total (inclusive) --")
for f, c in total.most_common(45):
    print(f"{100 * c / n:5.1f} %  {f[:150]}")
PYEOF
