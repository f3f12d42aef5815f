#!/usr/bin/env bash
# What tracing costs a request: off (propagate: false), trace context only, export at 1 %, at 100 %.
#
#   load-tests/trace.sh             # callgrind: instructions per request of the release binary,
#                                   # each case run with N1 and N2 requests; the difference over
#                                   # N2 - N1 leaves start-up and shutdown out
#   load-tests/trace.sh peers       # ../shared/bench/peers.sh once per case (the peers table)
#
# The cases are load-tests/trace/{off,propagate,1pct,100pct}.yaml (peers.sh's ports: switchyard on 18085,
# backend on 18081). The collector is nginx answering 200 to every POST on 18088 (a sink: it
# costs switchyard what a real collector costs it, the export, and decodes nothing).
# Knobs: N1 (default 1000), N2 (default 3000) requests for callgrind; CASES (default all four);
# BIN (a binary to measure instead of building this tree); PEERS (path to peers.sh),
# PEERS_SECONDS (default 8). Needs nginx, valgrind (callgrind) and curl. Loopback only, bounded
# in count and time; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=${1:-callgrind}
N1=${N1:-1000}
N2=${N2:-3000}
CASES=${CASES:-off propagate 1pct 100pct}
W=$(mktemp -d /tmp/switchyard-trace.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for m in "$W"/*.nginxpid; do [ -f "$m" ] && kill "$(cat "$m")" 2>/dev/null || true; done
}
trap cleanup EXIT

command -v nginx >/dev/null || { echo "trace.sh needs nginx (apt-get install nginx)"; exit 1; }
# BIN= measures another build (e.g. one from before tracing existed, with CASES=off).
if [ -z "${BIN:-}" ]; then cargo build --release -q; BIN=target/release/switchyard; fi

wait_http() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "nothing answers at $1"; exit 1; }

# The collector sink on 18088, pinned with the load generator (CPU 0) as peers.sh pins its
# backend, so that it does not compete with the proxy.
cat > "$W/sink.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $W/sink.pid; error_log $W/sink.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_max_body_size 64m;
  server { listen 127.0.0.1:18088 backlog=4096; location / { return 200; } } }
CONF
taskset -c 0 nginx -c "$W/sink.conf" & echo $! > "$W/sink.nginxpid"

if [ "$MODE" = peers ]; then
  PEERS=${PEERS:-../shared/bench/peers.sh}
  [ -f "$PEERS" ] || { echo "peers.sh not found at $PEERS (set PEERS=)"; exit 1; }
  for c in $CASES; do
    echo "== switchyard, trace export $c (load-tests/trace/$c.yaml)"
    OURS="$BIN run -c load-tests/trace/$c.yaml" bash "$PEERS" "${PEERS_SECONDS:-8}" | tee "$W/peers-$c.txt"
  done
  echo "== export off vs on (row 'ours'):"
  for c in $CASES; do printf '%-7s ' "$c"; grep -h '^ours' "$W/peers-$c.txt" || echo; done
  exit 0
fi

command -v valgrind >/dev/null || { echo "trace.sh needs valgrind (apt-get install valgrind)"; exit 1; }
# The backend: nginx answering 1 KiB, as peers.sh's.
body=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat > "$W/backend.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18081 backlog=4096; location / { return 200 "$body"; } } }
CONF
nginx -c "$W/backend.conf" & echo $! > "$W/backend.nginxpid"
wait_http http://127.0.0.1:18081/

# run CASE N: total instructions of switchyard serving N requests (one keep-alive connection,
# curl's URL globbing), start-up and shutdown included; the export counters on the side.
run() {
  local c=$1 n=$2 out="$W/$1-$2.callgrind"
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" run -c "load-tests/trace/$c.yaml" 2> "$W/$c-$n.log" &
  local pid=$!
  PIDS+=("$pid")
  wait_http http://127.0.0.1:18085/warmup
  curl -sf "http://127.0.0.1:18085/r[1-$n]" > /dev/null
  curl -sf http://127.0.0.1:19085/metrics | grep '^switchyard_trace_' > "$W/$c-$n.metrics" || true
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/{print $2; exit}' "$out"
}

printf '%-7s %14s %14s %12s   %s\n' case "Ir ($N1 req)" "Ir ($N2 req)" "Ir/request" "export (at $N2)"
for c in $CASES; do
  a=$(run "$c" "$N1")
  b=$(run "$c" "$N2")
  per=$(( (b - a) / (N2 - N1) ))
  exported=$(awk '/^switchyard_trace_spans_exported_total/{print $2}' "$W/$c-$N2.metrics")
  dropped=$(awk '/^switchyard_trace_spans_dropped_total/{s+=$2} END{print s+0}' "$W/$c-$N2.metrics")
  printf '%-7s %14s %14s %12s   exported %s, dropped %s (before the shutdown flush)\n' "$c" "$a" "$b" "$per" "${exported:-0}" "$dropped"
done
echo "callgrind files and logs: $W (callgrind_annotate FILE | head -40)"
trap - EXIT; cleanup
