#!/usr/bin/env bash
# Issue 14: gRPC unary calls per second through switchyard vs straight to the server. The
# server is the tests' grpcio peer (tests/support/grpc_peer.py, Python: it is the bottleneck,
# so the figure is what switchyard costs on top of it, not switchyard's ceiling). The client is
# h2load (nghttp2-client) over h2c: N calls on C connections with M streams each. switchyard
# runs pinned alone on CPU 1 with one worker; its CPU microseconds per call are printed too.
# Loopback only, bounded by N.
#
#   load-tests/grpc-unary.sh                 # N=20000 C=4 M=16, target/release/switchyard
#   N=50000 load-tests/grpc-unary.sh
#
# Needs h2load, python3 with grpcio (scripts/test.sh installs it), taskset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BIN:-target/release/switchyard}
N=${N:-20000}; C=${C:-4}; M=${M:-16}
[ -x "$BIN" ] || { echo "grpc-unary.sh: no $BIN (cargo build --release)" >&2; exit 1; }
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PROXY=$(free_port); ADMIN=$(free_port)

taskset -c 0 python3 tests/support/grpc_peer.py peer >"$W/peer.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do grep -q '^PORT ' "$W/peer.out" 2>/dev/null && break; sleep 0.1; done
PEER=$(awk '/^PORT /{print $2}' "$W/peer.out")

cat >"$W/c.yaml" <<EOF
listeners: [{bind: '127.0.0.1:$PROXY'}]
admin: {bind: '127.0.0.1:$ADMIN'}
upstreams: { grpc: { protocol: http2, backends: ['127.0.0.1:$PEER'] } }
routes: [{ name: r, split: [{upstream: grpc, weight: 1}] }]
EOF
taskset -c 1 "$BIN" run -c "$W/c.yaml" --no-watch --workers 1 >"$W/log" 2>&1 &
PROXY_PID=$!
PIDS+=($PROXY_PID)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/livez" && break; sleep 0.1; done

# One request message, b"hello", in its gRPC frame.
printf '\x00\x00\x00\x00\x05hello' >"$W/msg"
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; h2load -n$N -c$C -m$M on CPU 0 with the server"
for target in direct switchyard; do
  port=$([ $target = direct ] && echo "$PEER" || echo "$PROXY")
  t0=$(ticks $PROXY_PID)
  taskset -c 0 h2load -n "$N" -c "$C" -m "$M" -d "$W/msg" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$port/test.Echo/Unary" >"$W/$target.h2load" 2>&1
  t1=$(ticks $PROXY_PID)
  rps=$(awk '/^finished in/{print $4}' "$W/$target.h2load")
  status=$(awk '/^status codes:/{print $3, $4}' "$W/$target.h2load")
  reqs=$(awk '/^requests:/{print $0}' "$W/$target.h2load")
  cpu=$([ $target = switchyard ] && awk -v d=$((t1-t0)) -v hz=$HZ -v n=$N 'BEGIN{printf "%.1f", d/hz*1e6/n}' || echo -)
  printf "%-11s %10s calls/s   switchyard cpu_us/call %6s   %s | %s\n" "$target" "$rps" "$cpu" "$status" "$reqs"
done
