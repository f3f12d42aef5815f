#!/usr/bin/env bash
# The floor of a tokio proxy that owns its HTTP/1 codec (issue 12 item 7): builds
# load-tests/floor/ (not part of switchyard; its own package), checks it end to end
# (smoke.py), then measures it beside switchyard and nginx:
#   - callgrind instructions per request on load-tests/callgrind.sh's harness (Python keep-alive
#     backend and client, the proxy alone under valgrind, FEW vs MANY requests): floor with a
#     tokio timeout per blocking wait (its default), with coarse timeouts (FLOOR_TIMEOUTS=coarse:
#     a per-second sweeper thread, no tokio time driver), without any (FLOOR_TIMEOUTS=off),
#     switchyard, and nginx with upstream
#     keep-alive on the same backend and client (read from callgrind.sh, so they cannot drift);
#     then where floor's and switchyard's instructions go, by crate (by_crate.py);
#   - ../shared/bench/ab.sh (CPU us per request, user and kernel, against nginx), RUNS times
#     (floor's timer mode as FLOOR_TIMEOUTS says, tokio if unset).
# Loopback only; bounded by the request counts and ab.sh's windows.
#
#   load-tests/floor.sh                    # everything
#   load-tests/floor.sh callgrind          # or: ab, smoke
#   FEW=300 MANY=1300 RUNS=2 ROUNDS=5 SECS=4 SWITCHYARD=/work/main/target/release/switchyard \
#     FLOOR_TARGET=/tmp/floor-target KEEP=/tmp/floorcg load-tests/floor.sh
#
# Needs cargo, python3, valgrind, nginx and wrk (ab.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHAT=${1:-all}
FEW=${FEW:-300}
MANY=${MANY:-1300}
RUNS=${RUNS:-2}
TARGET=${FLOOR_TARGET:-/tmp/floor-target}
SWITCHYARD=${SWITCHYARD:-target/release/switchyard}
KEEP=${KEEP:-$(mktemp -d -t floorcg.XXXX)}
FLOOR=$TARGET/release/floor

cargo build --release --quiet --manifest-path load-tests/floor/Cargo.toml --target-dir "$TARGET"
python3 load-tests/floor/smoke.py "$FLOOR"
[ "$WHAT" = smoke ] && exit 0

# nginx on callgrind.sh's harness: its backend and client, taken from that script verbatim.
nginx_callgrind() {
  local w backend client bp pp pid
  w=$(mktemp -d -t ngcg.XXXX)
  backend=$(sed -n "/^python3 - \"\$BACKEND_PORT\" <<'EOF' &\$/,/^EOF\$/p" load-tests/callgrind.sh | sed '1d;$d')
  client=$(sed -n "/^  python3 - \"\$1\" \"\$2\" <<'EOF'\$/,/^EOF\$/p" load-tests/callgrind.sh | sed '1d;$d')
  [ -n "$backend" ] && [ -n "$client" ] || { echo "floor.sh: callgrind.sh's harness moved" >&2; return 1; }
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  bp=$(free_port)
  python3 -c "$backend" "$bp" & pid=$!
  local counts=()
  for n in "$FEW" "$MANY"; do
    pp=$(free_port)
    cat >"$w/n.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $w/n.pid; error_log $w/n.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  upstream b { server 127.0.0.1:$bp; keepalive 16; }
  server { listen 127.0.0.1:$pp; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
    valgrind --tool=callgrind --callgrind-out-file="$w/cg.$n" nginx -c "$w/n.conf" >"$w/vg.$n" 2>&1 &
    local vg=$!
    python3 -c "$client" "$pp" "$n"
    kill -QUIT "$vg"; wait "$vg" || true
    counts+=("$(grep -m1 '^summary:' "$w/cg.$n" | awk '{print $2}')")
  done
  kill "$pid"
  mkdir -p "$KEEP/nginx" && cp "$w"/cg.* "$KEEP/nginx/" && rm -rf "$w"
  echo "instructions: $FEW requests: ${counts[0]}; $MANY requests: ${counts[1]}"
  echo "per request: $(( (counts[1] - counts[0]) / (MANY - FEW) ))"
}

if [ "$WHAT" = all ] || [ "$WHAT" = callgrind ]; then
  echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== callgrind: floor (a tokio timeout per blocking wait)"
  KEEP=$KEEP/floor BIN=$FLOOR FEW=$FEW MANY=$MANY load-tests/callgrind.sh
  for mode in coarse off; do
    echo "== callgrind: floor, FLOOR_TIMEOUTS=$mode"
    FLOOR_TIMEOUTS=$mode KEEP=$KEEP/floor-$mode BIN=$FLOOR FEW=$FEW MANY=$MANY load-tests/callgrind.sh
  done
  if [ -x "$SWITCHYARD" ]; then
    echo "== callgrind: switchyard ($SWITCHYARD)"
    KEEP=$KEEP/switchyard BIN=$SWITCHYARD FEW=$FEW MANY=$MANY load-tests/callgrind.sh
  else
    echo "== callgrind: no $SWITCHYARD (cargo build --release), skipped"
  fi
  echo "== callgrind: nginx"
  nginx_callgrind
  for who in floor floor-coarse floor-off switchyard; do
    [ -f "$KEEP/$who/cg.$MANY" ] || continue
    echo "== $who, by crate"
    python3 load-tests/floor/by_crate.py "$KEEP/$who" "$FEW" "$MANY" 15
  done
  echo "(profiles kept in $KEEP)"
fi

if [ "$WHAT" = all ] || [ "$WHAT" = ab ]; then
  for i in $(seq "$RUNS"); do
    echo "== ab.sh run $i, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    OURS="$FLOOR 127.0.0.1:18085 127.0.0.1:18081" ROUNDS=${ROUNDS:-5} SECS=${SECS:-4} ../shared/bench/ab.sh
  done
fi
