#!/usr/bin/env bash
# Access log peers: switchyard and nginx in front of the same nginx backend, each plain (no
# access log) and with a JSON access log to a file, in one run. Loopback only; every load step
# is bounded by DURATION; everything started here is stopped on exit.
#
# Method (as in shared/bench/peers.sh): the backend and wrk share CPU 0; each proxy runs alone
# on CPU 1 with one worker, so CPU figures are per core. CPU time is read from /proc
# (utime+stime of the proxy's processes, switchyard's log writer thread and nginx's master
# included) before and after each wrk -c64 step. nginx logs with `escape=json` in roughly the
# fields switchyard writes, twice: `nginx-log` buffered (buffer=64k flush=1s, its usual
# production setting, and what switchyard's writer does: a write per batch, a line waits at
# most 1 s) and `nginx-log-unbuf` with nginx's default (no buffer=: one write(2) per request,
# from the worker itself).
#
#   load-tests/peers-access-log.sh                    # DURATION=8 seconds per step, release binary
#   RUNS=3 load-tests/peers-access-log.sh             # repeat the table
#   DURATION=2 SWITCHYARD=target/debug/switchyard load-tests/peers-access-log.sh   # smoke run
#
# Needs: nginx, wrk, taskset, curl. Build first: cargo build --release. Ports 18581-18591.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."

D=${DURATION:-8}
RUNS=${RUNS:-1}
SY=${SWITCHYARD:-target/release/switchyard}
[ -x "$SY" ] || { echo "peers-access-log.sh: $SY not found; run cargo build --release (or set SWITCHYARD)" >&2; exit 1; }
for t in nginx wrk taskset curl; do
  command -v $t >/dev/null || { echo "peers-access-log.sh: $t is missing" >&2; exit 1; }
done
W=$(mktemp -d /tmp/peers-access-log.XXXX)
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3; rm -f $W/*.log; }
trap cleanup EXIT

cat > $W/backend.conf <<EOF
daemon off; worker_processes 1; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18581 backlog=4096; location / { return 200 "$BODY"; } } }
EOF
nginx_conf() { # port log-directive
  cat <<EOF
daemon off; worker_processes 1; pid $W/nginx-$1.pid; error_log $W/nginx-$1.err;
events { worker_connections 4096; }
http { keepalive_requests 1000000;
  log_format j escape=json '{"time":"\$time_iso8601","client":"\$remote_addr:\$remote_port","method":"\$request_method","authority":"\$host","path":"\$request_uri","protocol":"\$server_protocol","status":\$status,"upstream":"\$upstream_addr","duration_ms":\$request_time,"upstream_ms":"\$upstream_response_time","bytes_received":"\$request_length","bytes_sent":\$bytes_sent,"request_id":"\$request_id"}';
  $2
  upstream b { server 127.0.0.1:18581; keepalive 128; }
  server { listen 127.0.0.1:$1 backlog=4096; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
}
nginx_conf 18582 "access_log off;" > $W/nginx-plain.conf
nginx_conf 18583 "access_log $W/nginx.log j buffer=64k flush=1s;" > $W/nginx-log.conf
nginx_conf 18584 "access_log $W/nginx-unbuf.log j;" > $W/nginx-log-unbuf.conf
sy_conf() { # port admin-port listener-extra
  cat <<EOF
listeners: [{ name: public, bind: "127.0.0.1:$1" $3 }]
admin: { bind: "127.0.0.1:$2" }
upstreams: { b: { backends: ["127.0.0.1:18581"] } }
routes: [{ name: all, split: [{ upstream: b, weight: 1 }] }]
EOF
}
sy_conf 18585 18590 "" > $W/sy-plain.yaml
sy_conf 18586 18591 ", access_log: { path: $W/switchyard.log, format: json }" > $W/sy-log.yaml

source load-tests/pinned.sh

start backend 0 nginx -c $W/backend.conf
start nginx-plain 1 nginx -c $W/nginx-plain.conf
start nginx-log 1 nginx -c $W/nginx-log.conf
start nginx-log-unbuf 1 nginx -c $W/nginx-log-unbuf.conf
start sy-plain 1 env TOKIO_WORKER_THREADS=1 RUST_LOG=warn $SY run -c $W/sy-plain.yaml --no-watch --workers 1
start sy-log 1 env TOKIO_WORKER_THREADS=1 RUST_LOG=warn $SY run -c $W/sy-log.yaml --no-watch --workers 1
for port in 18582 18583 18584 18585 18586; do
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$port/ && break; sleep 0.1; done
done

printf "%-15s %12s %11s %8s\n" target req/s us/req errors
echo "(wrk -t1 -c64 for ${D}s; proxy alone on CPU 1; load average $(cut -d' ' -f1-3 /proc/loadavg))"
run() { # name port
  local name=$1 port=$2 pid
  pid=$(cat $W/$name.pidnum)
  curl -sf -o /dev/null http://127.0.0.1:$port/ || { echo "$name: not answering on $port (see $W/$name.out)"; return; }
  timeout 10 taskset -c 0 wrk -t1 -c32 -d1s http://127.0.0.1:$port/ > /dev/null 2>&1   # warm-up
  local t0 t1 out rps total errs
  t0=$(tree_ticks $pid)
  out=$(timeout $((D + 10)) taskset -c 0 wrk -t1 -c64 -d${D}s http://127.0.0.1:$port/ 2>&1)
  t1=$(tree_ticks $pid)
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  total=$(awk '/requests in/{print $1}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/{s=s $0 " "} END{print (s==""?"0":"some")}' <<<"$out")
  printf "%-15s %12s %11s %8s\n" $name "${rps:-0}" \
    "$(awk -v d=$((t1 - t0)) -v hz=$HZ -v n=${total:-0} 'BEGIN{if (n>0) printf "%.1f", d/hz*1e6/n; else print "-"}')" "$errs"
}
for r in $(seq $RUNS); do
  [ "$RUNS" -gt 1 ] && echo "run $r"
  run nginx-plain 18582
  run nginx-log 18583
  run nginx-log-unbuf 18584
  run sy-plain 18585
  run sy-log 18586
done
# Lines written, as a check that both really logged.
sleep 1.5
echo "lines: nginx $(wc -l < $W/nginx.log 2>/dev/null || echo 0), nginx-unbuf $(wc -l < $W/nginx-unbuf.log 2>/dev/null || echo 0), switchyard $(wc -l < $W/switchyard.log 2>/dev/null || echo 0)"
echo "logs: $W"
