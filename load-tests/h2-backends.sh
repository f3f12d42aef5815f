#!/usr/bin/env bash
# Issue 14: HTTP/2 (h2c, prior knowledge) vs HTTP/1.1 from switchyard to the same backend
# (nginx, one worker, a fixed 1 KiB answer, one server block per protocol). For each protocol:
# wrk -c64 (64 concurrent keep-alive clients) for D seconds through the release binary pinned
# alone on CPU 1 with one worker; prints switchyard's CPU microseconds per request (from
# /proc/PID/stat ticks), req/s, non-2xx, and how many connections switchyard held to the
# backend halfway through the run (ss). Loopback only, bounded by D.
#
#   load-tests/h2-backends.sh [D=8]                   # target/release/switchyard
#   BIN=/tmp/old-switchyard load-tests/h2-backends.sh
#
# Needs nginx, wrk, ss, taskset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

D=${1:-8}
BIN=${BIN:-target/release/switchyard}
[ -x "$BIN" ] || { echo "h2-backends.sh: no $BIN (cargo build --release)" >&2; exit 1; }
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
H1=$(free_port); H2=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')

cat >"$W/backend.conf" <<EOF
daemon off; worker_processes 1; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  server { listen 127.0.0.1:$H1 backlog=4096; location / { return 200 "$BODY"; } }
  server { listen 127.0.0.1:$H2 http2 backlog=4096; http2_max_concurrent_streams 128;
           location / { return 200 "$BODY"; } } }
EOF
taskset -c 0 nginx -c "$W/backend.conf" >"$W/backend.out" 2>&1 &
PIDS+=($!)

cat >"$W/c.yaml" <<EOF
listeners: [{bind: '127.0.0.1:$PROXY'}]
admin: {bind: '127.0.0.1:$ADMIN'}
upstreams:
  h1: { backends: ['127.0.0.1:$H1'] }
  h2: { protocol: http2, backends: ['127.0.0.1:$H2'] }
routes:
  - { name: h1, match: { path_prefix: /h1 }, split: [{upstream: h1, weight: 1}] }
  - { name: h2, match: { path_prefix: /h2 }, split: [{upstream: h2, weight: 1}] }
EOF
taskset -c 1 "$BIN" run -c "$W/c.yaml" --no-watch --workers 1 >"$W/log" 2>&1 &
PROXY_PID=$!
PIDS+=($PROXY_PID)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PROXY/h1" && break; sleep 0.1; done

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; wrk -t1 -c64 -d${D}s on CPU 0, switchyard on CPU 1 (1 worker)"
printf "%-6s %10s %12s %8s %22s\n" path req/s cpu_us/req non2xx backend_conns_at_D/2
for path in h1 h2; do
  port=$([ $path = h1 ] && echo $H1 || echo $H2)
  taskset -c 0 wrk -t1 -c32 -d2s "http://127.0.0.1:$PROXY/$path" >/dev/null 2>&1   # warm-up
  t0=$(ticks $PROXY_PID)
  taskset -c 0 wrk -t1 -c64 -d${D}s "http://127.0.0.1:$PROXY/$path" >"$W/$path.wrk" 2>&1 &
  WRK=$!
  sleep "$(awk -v d=$D 'BEGIN{print d/2}')"
  conns=$(ss -Htn state established "( dport = :$port )" | wc -l)
  wait $WRK
  t1=$(ticks $PROXY_PID)
  total=$(awk '/requests in/{print $1}' "$W/$path.wrk")
  rps=$(awk '/Requests\/sec/{print $2}' "$W/$path.wrk")
  non2xx=$(awk '/Non-2xx/{print $NF}' "$W/$path.wrk"); non2xx=${non2xx:-0}
  cpu=$(awk -v d=$((t1-t0)) -v hz=$HZ -v n=$total 'BEGIN{printf "%.1f", d/hz*1e6/n}')
  printf "%-6s %10s %12s %8s %22s\n" $path "$rps" "$cpu" "$non2xx" "$conns"
done
