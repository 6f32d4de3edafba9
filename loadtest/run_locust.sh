#!/usr/bin/env bash
# `make loadtest`: Locust, headless and bounded in time, against a fresh server on the sample data.
#
# Loads the sample (`make sample` wrote it to SAMPLE_DIR) into a temporary store with the batch
# loader, starts `python -m serving serve` on free loopback ports, waits for /readyz, runs
# loadtest/locustfile.py headless (one Locust process per user class, loadtest/locust_apart.py),
# writes Locust's CSV and HTML reports to loadtest/reports/<timestamp>/, prints one line per
# task (req/s, p50, p95, p99, failures, the load generator's CPU) and stops everything it
# started (by PID, on any exit).
#
# Variables (environment or `make loadtest VAR=...`):
#   USERS=20  SPAWN_RATE=10  DURATION=30s   Locust's -u, -r, -t
#   LOCUST_USERS="HttpFeatureUser GrpcFeatureUser"   user classes, run one after the other, each
#                    with USERS users for DURATION (loadtest/locust_apart.py says why)
#   TOGETHER=        1: run the classes at the same time instead (USERS split between them)
#   TAGS=            w1 or w2 to run one workload only (Locust --tags); empty runs both
#   SAMPLE_DIR=.data/sample   CONFIG=features.yaml   PYTHON=.venv/bin/python
#   REPORTS=loadtest/reports
# The server is started with a fresh read key of its own (`serving keys create`), which the users
# send as "authorization: Bearer ...".
#
# To point Locust at a deployment that is already running, call Locust directly; see
# docs/load-testing.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-.venv/bin/python}
USERS=${USERS:-20}
SPAWN_RATE=${SPAWN_RATE:-10}
DURATION=${DURATION:-30s}
LOCUST_USERS=${LOCUST_USERS:-HttpFeatureUser GrpcFeatureUser}
TAGS=${TAGS:-}
TOGETHER=${TOGETHER:-}
SAMPLE_DIR=${SAMPLE_DIR:-.data/sample}
CONFIG=${CONFIG:-features.yaml}
REPORTS=${REPORTS:-loadtest/reports}

if [[ ! -f "$SAMPLE_DIR/ids.txt" ]]; then
  echo "no sample in $SAMPLE_DIR (ids.txt missing); run \`make sample\` first" >&2
  exit 2
fi
SAMPLE_ABS=$(cd "$SAMPLE_DIR" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fs-loadtest.XXXXXX")
SERVER_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The registry's batch sources are relative to the registry file: give the temporary copy a
# .data/sample next to it that points at SAMPLE_DIR.
mkdir -p "$WORK/.data"
cp "$CONFIG" "$WORK/features.yaml"
ln -s "$SAMPLE_ABS" "$WORK/.data/sample"

read -r HTTP_PORT GRPC_PORT < <("$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

echo "loading $SAMPLE_DIR into a temporary store ..."
"$PYTHON" -m serving materialize --config "$WORK/features.yaml" --data-dir "$WORK/db" \
  --progress never >"$WORK/materialize.log" 2>&1 || { cat "$WORK/materialize.log" >&2; exit 1; }

# The server requires API keys: a read key for this temporary store, sent by the Locust users.
FS_API_KEY=$("$PYTHON" -m serving keys create --config "$WORK/features.yaml" --data-dir "$WORK/db" \
  --keys-file "$WORK/keys.json" --name loadtest --read '*' 2>/dev/null | grep -o 'fsk_[^ ]*')
export FS_API_KEY

"$PYTHON" -m serving serve --config "$WORK/features.yaml" --data-dir "$WORK/db" \
  --keys-file "$WORK/keys.json" --no-ingest \
  --host 127.0.0.1 --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

"$PYTHON" - "$HTTP_PORT" "$SERVER_PID" <<'EOF' || { cat "$WORK/server.log" >&2; exit 1; }
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("server exited before it was ready")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("server not ready after 60 s")
EOF
echo "server pid $SERVER_PID ready: HTTP 127.0.0.1:$HTTP_PORT, gRPC 127.0.0.1:$GRPC_PORT"

OUT="$REPORTS/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
# One Locust process per user class, one API after the other (loadtest/locust_apart.py says
# why), then one table of
# Locust's final statistics (--json-file; the CSV files are rewritten every few seconds and may
# miss the last ones) with the CPU each load generator used.
set +e
# shellcheck disable=SC2086
"$PYTHON" loadtest/locust_apart.py \
  --host "http://127.0.0.1:$HTTP_PORT" --grpc-host "127.0.0.1:$GRPC_PORT" \
  --ids-file "$SAMPLE_ABS/ids.txt" --users "$USERS" --spawn-rate "$SPAWN_RATE" \
  --duration "$DURATION" --tags "$TAGS" --out "$OUT" ${TOGETHER:+--together} $LOCUST_USERS
LOCUST_RC=$?
set -e
cp "$WORK/server.log" "$OUT/server.log"
echo
echo "reports: $OUT/ (report-<user class>.html, stats.json, locust-<user class>_*.csv and .log, server.log)"
echo "Locust's Python users saturate before the server: throughput and latency figures of record"
echo "come from \`make bench-serving\` (wrk, h2load)."
if [[ $LOCUST_RC -ne 0 ]]; then
  echo "locust exited $LOCUST_RC (failed requests or an error; see $OUT/locust-*.log)" >&2
fi
exit "$LOCUST_RC"
