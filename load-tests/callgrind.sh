#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind (repeatable on a busy
# machine, unlike wall time). The proxy runs alone under callgrind with one worker; a Python
# backend and a Python keep-alive client run outside it. The proxy is measured twice, with
# FEW and MANY requests, and the difference divided by MANY - FEW is the cost of one request
# (start-up and shutdown cancel out). Loopback only; bounded by the request counts.
#
#   load-tests/callgrind.sh                      # target/release/switchyard
#   BIN=/tmp/old-switchyard load-tests/callgrind.sh
#   FEW=500 MANY=2500 load-tests/callgrind.sh    # counts (defaults 500, 2500)
#   CONFIG_EXTRA='retries: {attempts: 1}' load-tests/callgrind.sh   # added to the route
#   KEEP=/tmp/cg load-tests/callgrind.sh         # keep the callgrind files (callgrind_annotate)
#
# Needs valgrind and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BIN:-target/release/switchyard}
FEW=${FEW:-500}
MANY=${MANY:-2500}
CONFIG_EXTRA=${CONFIG_EXTRA:-}
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind" >&2; exit 1; }
[ -x "$BIN" ] || { echo "callgrind.sh: no $BIN (cargo build --release)" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A small keep-alive backend: 200 with a short body for every GET.
BACKEND_PORT=$(free_port)
python3 - "$BACKEND_PORT" <<'EOF' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello from the backend\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
PIDS+=($!)

# Sends N GETs one after another on one kept-alive connection; fails on anything but 200.
client() {
  python3 - "$1" "$2" <<'EOF'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/warm", headers={"host": "bench"}); r = c.getresponse(); r.read()
        if r.status == 200: break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("proxy never answered")
for i in range(n):
    c.request("GET", "/item/%d" % i, headers={"host": "bench"})
    r = c.getresponse(); r.read()
    if r.status != 200: sys.exit("status %d" % r.status)
EOF
}

measure() {
  local n=$1 port admin out
  port=$(free_port); admin=$(free_port); out="$WORK/cg.$n"
  cat >"$WORK/c.yaml" <<EOF
listeners: [{bind: '127.0.0.1:$port'}]
admin: {bind: '127.0.0.1:$admin'}
upstreams: { u: { backends: ['127.0.0.1:$BACKEND_PORT'] } }
routes: [{ name: r, split: [{upstream: u, weight: 1}] $( [ -n "$CONFIG_EXTRA" ] && echo ", $CONFIG_EXTRA") }]
EOF
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" run -c "$WORK/c.yaml" --no-watch --workers 1 \
    >"$WORK/log.$n" 2>&1 &
  local vg=$!
  PIDS+=($vg)
  client "$port" "$n"
  kill -TERM "$vg"
  wait "$vg" || true
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}

few=$(measure "$FEW")
many=$(measure "$MANY")
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK"/cg.* "$KEEP"/; fi
echo "instructions: $FEW requests: $few; $MANY requests: $many"
echo "per request: $(( (many - few) / (MANY - FEW) ))"
