#!/usr/bin/env bash
# Rollouts of a canary equal to stable: both backends fail FAIL_PERCENT of their requests at
# random (the same version), RATE req/s through the route, steps [5, 20, 50, 100] every STEP,
# default gates. Runs ROLLOUTS rollouts one after another (a fresh switchyard and state_dir
# each) and prints how each ended: a healthy canary should be promoted, never rolled back.
#   load-tests/rollout-equal.sh                       # release build, 20 rollouts, 1000 req/s, 5s
#   ROLLOUTS=3 RATE=500 load-tests/rollout-equal.sh
# Needs python3 (load-tests/rollout_blast.py: backends and the fixed-rate client, standard
# library only). Loopback only; each rollout is bounded by MAX_SECONDS; everything it starts
# is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source load-tests/wait.sh

ROLLOUTS=${ROLLOUTS:-20}
RATE=${RATE:-1000}
FAIL_PERCENT=${FAIL_PERCENT:-0.5}
STEP=${STEP:-5s}
MAX_SECONDS=${MAX_SECONDS:-900}
CONNS=${CONNS:-32}
BUILD=${BUILD:-release}
GATES=${GATES:-"{}"}
W=$(mktemp -d /tmp/switchyard-equal.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

command -v python3 >/dev/null || { echo "rollout-equal.sh needs python3"; exit 1; }
for port in 18390 18391 18392 19390; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use; stop what listens there"; exit 1; fi
done
if [ "$BUILD" = release ]; then cargo build --release -q; BIN=target/release/switchyard
else cargo build -q; BIN=target/debug/switchyard; fi

LIFETIME=$(( ROLLOUTS * (MAX_SECONDS + 30) ))
python3 load-tests/rollout_blast.py backend stable 18391 --fail-random "$FAIL_PERCENT" --seed 1 --lifetime "$LIFETIME" & PIDS+=($!)
python3 load-tests/rollout_blast.py backend canary 18392 --fail-random "$FAIL_PERCENT" --seed 2 --lifetime "$LIFETIME" & PIDS+=($!)

# Both backends listening before switchyard starts: a canary failing only because it is not up
# yet is not the canary this run is about.
wait_port 18391 18392

echo "rollouts of a canary equal to stable: both fail $FAIL_PERCENT % at random; $RATE req/s; steps every $STEP; gates $GATES"
printf '%-3s %-12s %8s  %s\n' "#" "ended" "seconds" "reason"
declare -A ENDED=()
for i in $(seq "$ROLLOUTS"); do
  mkdir -p "$W/$i"
  cat > "$W/$i/switchyard.yaml" <<CONF
listeners: [{ name: public, bind: "127.0.0.1:18390" }]
admin: { bind: "127.0.0.1:19390" }
state_dir: "$W/$i/state"
upstreams:
  stable: { backends: ["127.0.0.1:18391"] }
  canary: { backends: ["127.0.0.1:18392"] }
routes:
  - name: app
    split: [{ upstream: stable, weight: 100 }, { upstream: canary, weight: 0 }]
    rollout:
      strategy: canary
      stable: stable
      canary: canary
      steps: [5, 20, 50, 100]
      step_interval: $STEP
      gates: $GATES
CONF
  RUST_LOG=info "$BIN" run -c "$W/$i/switchyard.yaml" 2> "$W/$i/switchyard.log" & SY=$!
  PIDS+=($SY)
  wait_url http://127.0.0.1:18390/
  python3 load-tests/rollout_blast.py load http://127.0.0.1:18390/ "$RATE" "$MAX_SECONDS" "$CONNS" \
    "$W/$i/load.txt" --until http://127.0.0.1:19390/rollouts/app
  kill "$SY"; wait "$SY" 2>/dev/null || true
  python3 - "$W/$i/load.txt.json" "$i" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])) or {}
hist = v.get("history") or []
secs = (hist[-1]["time_ms"] - hist[0]["time_ms"]) / 1000 if len(hist) > 1 else 0
state = {"progressing": "unfinished"}.get(v.get("state"), v.get("state", "unknown"))
reason = ((v.get("last_decision") or {}).get("reason") or "")[:160]
print(f"{sys.argv[2]:<3} {state:<12} {secs:8.1f}  {reason}", flush=True)
PY
  STATE=$(python3 -c "import json,sys; v=json.load(open('$W/$i/load.txt.json')) or {}; print(v.get('state','unknown'))")
  ENDED[$STATE]=$(( ${ENDED[$STATE]:-0} + 1 ))
done
echo
for k in "${!ENDED[@]}"; do echo "$k: ${ENDED[$k]} of $ROLLOUTS"; done
echo "(files in $W)"
