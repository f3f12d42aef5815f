#!/usr/bin/env bash
# One of three backends dies under steady load and comes back: how many requests fail, and how
# long its circuit breaker takes to open and to close again.
#   load-tests/failover.sh            # 30 s at 2000 req/s; kill at 10 s, restart at 20 s
#   RATE=1000 DURATION=20 load-tests/failover.sh
# Needs nginx (the three backends, one process each) and oha (fixed-rate load). Loopback only,
# bounded in time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE=${RATE:-2000}
DURATION=${DURATION:-30}
KILL_AT=$((DURATION / 3))
BACK_AT=$((2 * DURATION / 3))
RETRIES=${RETRIES:-}   # set to e.g. "{ attempts: 2 }" to turn retries on
W=$(mktemp -d /tmp/switchyard-failover.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for m in "$W"/b*.master; do
    [ -f "$m" ] && kill -9 "$(cat "$m")" 2>/dev/null || true
  done
}
trap cleanup EXIT

for cmd in nginx oha; do command -v $cmd >/dev/null || { echo "failover.sh needs $cmd"; exit 1; }; done
for port in 18190 18191 18192 18193 19190; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use; stop what listens there"; exit 1; fi
done
cargo build --release -q

backend() { # n port
  cat > "$W/b$1.conf" <<CONF
daemon off; master_process off; pid $W/b$1.pid; error_log $W/b$1.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2 backlog=4096; location / { return 200 "backend $1\n"; } } }
CONF
  nginx -c "$W/b$1.conf" & echo $! > "$W/b$1.master"
}
backend 1 18191; backend 2 18192; backend 3 18193

cat > "$W/switchyard.yaml" <<CONF
listeners: [{ name: public, bind: "127.0.0.1:18190" }]
admin: { bind: "127.0.0.1:19190" }
upstreams:
  app:
    backends: ["127.0.0.1:18191", "127.0.0.1:18192", "127.0.0.1:18193"]
    circuit_breaker: { consecutive_failures: 5, open_for: 2s }
routes:
  - name: app
    split: [{ upstream: app, weight: 1 }]
${RETRIES:+    retries: $RETRIES}
CONF
RUST_LOG=info target/release/switchyard run -c "$W/switchyard.yaml" 2> "$W/switchyard.log" & PIDS+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18190/ && break; sleep 0.1; done

oha -z "${DURATION}s" -q "$RATE" -c 32 --no-tui --output-format json http://127.0.0.1:18190/ > "$W/oha.json" 2>/dev/null &
LOAD=$!
sleep "$KILL_AT"
KILLED=$(date +%s.%N)
kill -9 "$(cat "$W/b2.master")"   # one process (master_process off): the backend is gone
sleep $((BACK_AT - KILL_AT))
RESTARTED=$(date +%s.%N)
backend 2 18192
wait $LOAD

python3 - "$W/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
errors = d.get("errorDistribution", {})
total = sum(codes.values()) + sum(errors.values())
non2xx = sum(v for k, v in codes.items() if not k.startswith("2"))
print(f"requests: {total}, non-2xx: {non2xx}, socket errors: {sum(errors.values())}, status codes: {codes}")
# oha cancels what is still in flight when -z runs out ("aborted due to deadline"): not failures.
if errors: print(f"errors by kind: {errors}")
PY
ts() { date -d "$(echo "$1" | awk '{print $1}')" +%s.%N; }
OPENED=$(grep -m1 "circuit breaker opened" "$W/switchyard.log" | awk '{print $1}')
CLOSED=$(grep "circuit breaker closed" "$W/switchyard.log" | tail -1 | awk '{print $1}')
[ -n "$OPENED" ] && echo "breaker opened $(python3 -c "print(round(($(ts "$OPENED") - $KILLED) * 1000))") ms after the kill" || echo "breaker never opened"
[ -n "$CLOSED" ] && echo "breaker closed $(python3 -c "print(round(($(ts "$CLOSED") - $RESTARTED) * 1000))") ms after the restart" || echo "breaker never closed"
grep -E "circuit breaker" "$W/switchyard.log" | head -5
