#!/usr/bin/env bash
# Issue 11, item 5: a backend that closes every connection after one response without saying
# `Connection: close` (the proxy keeps the connection for reuse and learns it is closed only
# when it tries). 16 concurrent keep-alive clients send 4,000 GETs through the release binary;
# prints how many did not get a 200, and switchyard's resend counter. Loopback only, bounded by
# the request count.
#
#   load-tests/stale-keepalive.sh                  # target/release/switchyard
#   BIN=/tmp/old-switchyard load-tests/stale-keepalive.sh
#   CLIENTS=16 REQUESTS=4000 load-tests/stale-keepalive.sh
#
# Needs python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BIN:-target/release/switchyard}
CLIENTS=${CLIENTS:-16}
REQUESTS=${REQUESTS:-4000}
[ -x "$BIN" ] || { echo "stale-keepalive.sh: no $BIN (cargo build --release)" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND=$(free_port); PROXY=$(free_port); ADMIN=$(free_port)

# Answers one request per connection, HTTP/1.1 with a Content-Length and no `Connection: close`,
# then closes the connection.
python3 - "$BACKEND" <<'EOF' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
PIDS+=($!)

cat >"$WORK/c.yaml" <<EOF
listeners: [{bind: '127.0.0.1:$PROXY'}]
admin: {bind: '127.0.0.1:$ADMIN'}
upstreams: { app: { backends: ['127.0.0.1:$BACKEND'] } }
routes: [{ name: r, split: [{upstream: app, weight: 1}] }]
EOF
"$BIN" run -c "$WORK/c.yaml" --no-watch >"$WORK/log" 2>&1 &
PIDS+=($!)

python3 - "$PROXY" "$ADMIN" "$CLIENTS" "$REQUESTS" "$BACKEND" <<'EOF'
import http.client, sys, threading, time, collections
proxy, admin, clients, total, backend = (int(a) for a in sys.argv[1:6])
import socket
for port in (backend, admin):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError:
            time.sleep(0.1)
statuses = collections.Counter()
lock = threading.Lock()
def run(n):
    c = http.client.HTTPConnection("127.0.0.1", proxy, timeout=30)
    for i in range(n):
        try:
            c.request("GET", "/item/%d" % i)
            r = c.getresponse(); r.read(); s = r.status
        except Exception:
            s = "error"; c = http.client.HTTPConnection("127.0.0.1", proxy, timeout=30)
        with lock:
            statuses[s] += 1
threads = [threading.Thread(target=run, args=(total // clients,)) for _ in range(clients)]
start = time.time()
for t in threads: t.start()
for t in threads: t.join()
failed = sum(n for s, n in statuses.items() if s != 200)
print("requests: %d, not 200: %d (%.1f %%), by status: %s, %.1f s" % (
    sum(statuses.values()), failed, 100.0 * failed / max(1, sum(statuses.values())),
    dict(statuses), time.time() - start))
c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
c.request("GET", "/metrics"); text = c.getresponse().read().decode()
for line in text.splitlines():
    if line.startswith(("switchyard_upstream_resends_total", "switchyard_breaker_state{",
                        "switchyard_upstream_outcomes_total{upstream=\"app\"")) and not line.endswith(" 0"):
        print(line)
EOF
