#!/usr/bin/env bash
# TLS peers table: switchyard, nginx and haproxy terminating TLS with the SAME certificate
# (ECDSA P-256, made here with openssl) in front of the same plain nginx backend, in one run.
# Loopback only; every load step is bounded by DURATION; everything started here is stopped on
# exit.
#
# Method (as in shared/bench/peers.sh): the backend and the load generator share CPU 0; each
# proxy runs alone on CPU 1 with one worker, so CPU figures are per core. CPU time is read from
# /proc (utime+stime of the proxy's processes) before and after each step.
#   keep-alive: wrk -c64 over kept-alive HTTPS connections  -> req/s and CPU us per request
#   handshake:  wrk -c32 with `Connection: close`, so every request is a new TCP connection and
#               a full TLS handshake (wrk does not resume sessions) -> handshakes/s and CPU us
#               per handshake+request
# The client's half of each handshake costs about as much as the server's, so with one load
# core the handshakes/s column may be wrk's limit rather than the proxy's; CPU us per handshake
# is the figure to compare. Both columns move with other load on the machine: run it idle.
#
#   load-tests/peers-tls.sh                       # DURATION=8 seconds per step, release binary
#   DURATION=2 SWITCHYARD=target/debug/switchyard load-tests/peers-tls.sh   # smoke run
#
# Needs: nginx (with ssl), haproxy (with OpenSSL), wrk (with OpenSSL), openssl, taskset, curl.
# Build first: cargo build --release. Ports 18481-18491 on 127.0.0.1.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."

D=${DURATION:-8}
SY=${SWITCHYARD:-target/release/switchyard}
[ -x "$SY" ] || { echo "peers-tls.sh: $SY not found; run cargo build --release (or set SWITCHYARD)" >&2; exit 1; }
for t in nginx haproxy wrk openssl taskset curl; do
  command -v $t >/dev/null || { echo "peers-tls.sh: $t is missing" >&2; exit 1; }
done
W=$(mktemp -d /tmp/peers-tls.XXXX)
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3; }
trap cleanup EXIT

# One certificate for all three: ECDSA P-256, self-signed for localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout $W/tls.key -out $W/tls.crt 2>/dev/null
cat $W/tls.crt $W/tls.key > $W/haproxy.pem

cat > $W/backend.conf <<EOF
daemon off; worker_processes 1; pid $W/backend.pid; error_log $W/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18481 backlog=4096; location / { return 200 "$BODY"; } } }
EOF
cat > $W/nginx.conf <<EOF
daemon off; worker_processes 1; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream b { server 127.0.0.1:18481; keepalive 128; }
  server { listen 127.0.0.1:18482 ssl backlog=4096;
    ssl_certificate $W/tls.crt; ssl_certificate_key $W/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat > $W/haproxy.cfg <<EOF
global
  nbthread 1
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:18483 ssl crt $W/haproxy.pem alpn http/1.1
  default_backend b
backend b
  server s1 127.0.0.1:18481
EOF
cat > $W/switchyard.yaml <<EOF
listeners:
  - name: tls
    bind: 127.0.0.1:18485
    tls: { cert: $W/tls.crt, key: $W/tls.key }
admin: { bind: 127.0.0.1:18491 }
upstreams:
  b: { backends: ["127.0.0.1:18481"] }
routes:
  - { name: all, split: [{ upstream: b, weight: 1 }] }
EOF

source load-tests/pinned.sh

start backend 0 nginx -c $W/backend.conf
start nginx 1 nginx -c $W/nginx.conf
start haproxy 1 haproxy -f $W/haproxy.cfg
start switchyard 1 env TOKIO_WORKER_THREADS=1 RUST_LOG=warn $SY run -c $W/switchyard.yaml
# Wait (bounded) until each answers over TLS.
for port in 18482 18483 18485; do
  for _ in $(seq 50); do curl -sfk -o /dev/null https://127.0.0.1:$port/ && break; sleep 0.1; done
done

# One wrk step: prints "req/s cpu_us/req errors".
step() { # port pid extra-wrk-args...
  local port=$1 pid=$2; shift 2
  local t0 t1 out
  t0=$(tree_ticks $pid)
  out=$(timeout $((D + 10)) taskset -c 0 wrk -t1 -d${D}s "$@" https://127.0.0.1:$port/ 2>&1)
  t1=$(tree_ticks $pid)
  local rps total errs
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  total=$(awk '/requests in/{print $1}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/{s=s $0 " "} END{print (s==""?"0":"some")}' <<<"$out")
  echo "$out" >> $W/wrk.log
  if [ "${total:-0}" -gt 0 ]; then
    echo "${rps:-0} $(awk -v d=$((t1 - t0)) -v hz=$HZ -v n=$total 'BEGIN{printf "%.1f", d/hz*1e6/n}') $errs"
  else
    echo "0 - failed"
  fi
}

printf "%-11s | %12s %11s | %12s %11s | %s\n" target keepalive/s us/req handshakes/s us/hs errors
echo "(keep-alive: wrk -c64; handshake: wrk -c32 with Connection: close; ${D}s each; proxy alone on CPU 1)"
run() { # name port
  local name=$1 port=$2 pid
  pid=$(cat $W/$name.pidnum)
  curl -sfk -o /dev/null https://127.0.0.1:$port/ || { echo "$name: not answering on $port (see $W/$name.out)"; return; }
  timeout 10 taskset -c 0 wrk -t1 -c32 -d1s https://127.0.0.1:$port/ > /dev/null 2>&1   # warm-up
  read ka_rps ka_cpu ka_err < <(step $port $pid -c64)
  read hs_rps hs_cpu hs_err < <(step $port $pid -c32 -H "Connection: close")
  printf "%-11s | %12s %11s | %12s %11s | %s\n" $name "$ka_rps" "$ka_cpu" "$hs_rps" "$hs_cpu" "$ka_err/$hs_err"
}
run nginx 18482
run haproxy 18483
run switchyard 18485
echo "logs: $W"
