#!/usr/bin/env bash
# Issue 14: h2c peers table. switchyard (`protocol: http2`), nginx (`grpc_pass`: nginx speaks
# HTTP/2 to a backend only through its gRPC module) and haproxy (`server ... proto h2`), each
# with an h2c (prior knowledge) listener, in front of the SAME h2c backend, with the same
# gRPC-shaped calls: POST application/grpc with a framed 5-byte message, answered 200
# application/grpc with a framed 1 KiB message and `grpc-status: 0` in the trailers.
#
# The backend is nginx (one worker, `listen ... http2`, the answer a static file, the status
# added with `add_trailer`): tens of thousands of calls per second on one core, so it is not
# what limits the proxies (the `direct` row is the same load straight to it). A grpcio server
# would be (see grpc-unary.sh: about 7,000 calls/s).
#
# Method (as ../shared/bench/peers.sh): the backend and the load generator (h2load, from
# nghttp2-client) share CPU 0; each proxy runs alone on CPU 1 with one worker, so CPU figures
# are per core. CPU time is utime+stime of the proxy's processes from /proc, before and after
# each step. Two steps per target:
#   fixed: h2load --rps, C connections x RPS calls/s each (RATE in total), M streams per
#          connection, D seconds -> CPU us per call at the same rate for everyone, p50/p99
#   sat:   h2load -c SAT_C -m SAT_M for D seconds, as fast as it goes -> calls/s, CPU us per call
# p50/p99 are computed from h2load's per-request log (--log-file); h2load itself prints only
# min/max/mean. errors = failed + errored + timed out + non-2xx (h2load does not read trailers;
# a wrong grpc-status would not show here, the tests check those).
# Loopback only; every step is bounded by D; everything started here is stopped on exit.
#
#   load-tests/peers-h2c.sh                       # D=8, RATE=5000, target/release/switchyard
#   RUNS=3 BIN=/work/main/target/release/switchyard load-tests/peers-h2c.sh
#   D=2 load-tests/peers-h2c.sh                   # smoke run
#
# Needs nginx (http_v2 and grpc modules: Debian's nginx-light has both), haproxy >= 2.0, h2load,
# taskset, curl, python3.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."

D=${D:-8}
RATE=${RATE:-5000}
C=${C:-10}; M=${M:-10}
SAT_C=${SAT_C:-16}; SAT_M=${SAT_M:-16}
RUNS=${RUNS:-1}
BIN=${BIN:-target/release/switchyard}
[ -x "$BIN" ] || { echo "peers-h2c.sh: no $BIN (cargo build --release, or set BIN)" >&2; exit 1; }
for t in nginx haproxy h2load taskset curl python3; do
  command -v $t >/dev/null || { echo "peers-h2c.sh: $t is missing" >&2; exit 1; }
done
W=$(mktemp -d /tmp/peers-h2c.XXXX)
chmod 755 "$W"   # nginx workers (not root) read the answer from here
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=$(free_port); NG=$(free_port); HA=$(free_port); SY=$(free_port); ADMIN=$(free_port)

# The request and the answer, each one gRPC message in its 5-byte frame.
mkdir -p "$W/www"
python3 - "$W" <<'EOF'
import sys
w = sys.argv[1]
reply = b"x" * 1019
open(w + "/www/reply", "wb").write(b"\0" + len(reply).to_bytes(4, "big") + reply)
open(w + "/msg", "wb").write(b"\0\0\0\0\5hello")
EOF

# POST to a static file is a 405 in nginx; error_page turns it into the file, with status 200.
cat >"$W/backend.conf" <<EOF
daemon off; worker_processes 1; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  server { listen 127.0.0.1:$B http2 backlog=4096; http2_max_concurrent_streams 128;
    location / { root $W/www; default_type application/grpc; error_page 405 =200 /reply;
                 try_files /reply =404; add_trailer grpc-status 0; } } }
EOF
# nginx opens one backend connection per call in flight (its upstream HTTP/2 carries one
# stream), kept alive for the next one.
cat >"$W/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  upstream b { server 127.0.0.1:$B; keepalive 256; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NG http2 backlog=4096; http2_max_concurrent_streams 128;
    location / { grpc_pass grpc://b; } } }
EOF
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$HA proto h2
  default_backend b
backend b
  server s1 127.0.0.1:$B proto h2
EOF
cat >"$W/switchyard.yaml" <<EOF
listeners: [{bind: '127.0.0.1:$SY'}]
admin: {bind: '127.0.0.1:$ADMIN'}
upstreams: { b: { protocol: http2, backends: ['127.0.0.1:$B'] } }
routes: [{ name: r, split: [{upstream: b, weight: 1}] }]
EOF

source load-tests/pinned.sh
start backend 0 nginx -c "$W/backend.conf"
start nginx 1 nginx -c "$W/nginx.conf"
start haproxy 1 haproxy -f "$W/haproxy.cfg"
start switchyard 1 env TOKIO_WORKER_THREADS=1 "$BIN" run -c "$W/switchyard.yaml" --no-watch --workers 1

h2() { # port file args...: one h2load run with a per-request log
  local port=$1 out=$2; shift 2
  taskset -c 0 h2load "$@" -d "$W/msg" -H 'content-type: application/grpc' -H 'te: trailers' \
    --log-file="$out.log" "http://127.0.0.1:$port/test.Echo/Unary" >"$out" 2>&1
}
for port in $B $NG $HA $SY; do
  for _ in $(seq 100); do
    h2load -n1 -c1 -d "$W/msg" -H 'content-type: application/grpc' "http://127.0.0.1:$port/x" 2>/dev/null \
      | grep -q '1 succeeded' && break
    sleep 0.1
  done
done

# rps cpu_us p50_us p99_us errors, from one step's h2load output and log.
measure() { # name port pid step args...
  local name=$1 port=$2 pid=$3 step=$4; shift 4
  local out="$W/$name.$step"
  local t0=0 t1=0
  [ -n "$pid" ] && t0=$(tree_ticks "$pid")
  h2 "$port" "$out" "$@"
  [ -n "$pid" ] && t1=$(tree_ticks "$pid")
  python3 - "$out" "$((t1 - t0))" "$HZ" "$pid" <<'EOF'
import re, sys
out, ticks, hz, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = open(out).read()
m = re.search(r"finished in [^,]+, ([\d.]+) req/s", text)
rps = float(m.group(1)) if m else 0.0
r = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
done = int(r.group(2)) if r else 0
errors = (int(r.group(4)) + int(r.group(5)) + int(r.group(6)) if r else -1) + (
    int(s.group(2)) + int(s.group(3)) + int(s.group(4)) if s else 0)
lat = sorted(int(l.split("\t")[2]) for l in open(out + ".log") if l.count("\t") >= 2)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
cpu = "%.1f" % (ticks / hz * 1e6 / done) if pid and done else "-"
print("%.0f %s %d %d %d" % (rps, cpu, pct(0.50), pct(0.99), errors))
EOF
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; backend ($(nginx -v 2>&1 | cut -d/ -f2)) and h2load on CPU 0, each proxy alone on CPU 1 (1 worker)"
echo "fixed: h2load -c$C -m$M --rps $((RATE / C)) (${RATE} calls/s) -D$D;  sat: h2load -c$SAT_C -m$SAT_M -D$D"
for run in $(seq "$RUNS"); do
  [ "$RUNS" -gt 1 ] && echo "run $run (load $(cut -d' ' -f1 /proc/loadavg))"
  printf "%-11s | %9s %10s %8s %8s %6s | %9s %10s %8s %8s %6s\n" target fixed/s cpu_us/call p50_us p99_us errors sat/s cpu_us/call p50_us p99_us errors
  for t in direct nginx haproxy switchyard; do
    case $t in
      direct) port=$B; pid="" ;;
      nginx) port=$NG; pid=$(cat "$W/nginx.pidnum") ;;
      haproxy) port=$HA; pid=$(cat "$W/haproxy.pidnum") ;;
      switchyard) port=$SY; pid=$(cat "$W/switchyard.pidnum") ;;
    esac
    h2 "$port" "$W/$t.warm" -c "$C" -m "$M" -D 2   # warm-up: connections, caches, pools
    read -r f_rps f_cpu f_50 f_99 f_err < <(measure $t "$port" "$pid" fixed -c "$C" -m "$M" --rps $((RATE / C)) -D "$D")
    read -r s_rps s_cpu s_50 s_99 s_err < <(measure $t "$port" "$pid" sat -c "$SAT_C" -m "$SAT_M" -D "$D")
    printf "%-11s | %9s %10s %8s %8s %6s | %9s %10s %8s %8s %6s\n" $t "$f_rps" "$f_cpu" "$f_50" "$f_99" "$f_err" "$s_rps" "$s_cpu" "$s_50" "$s_99" "$s_err"
  done
done
echo "logs: $W"
