#!/usr/bin/env bash
# Blast radius of a bad canary: 1,000 req/s through a canary rollout (canary at its first step,
# 5 %); after WARMUP seconds the canary starts failing 10 % of its requests. Reports the time
# from its first failure to its weight 0 (from the rollout journal) and how many client
# requests failed.
#   load-tests/rollout-blast.sh                    # release build, 1000 req/s, 15 s
#   BUILD=debug RATE=500 load-tests/rollout-blast.sh
# Needs python3 (backends and the fixed-rate client are load-tests/rollout_blast.py, standard
# library only). Loopback only, bounded in time; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source load-tests/wait.sh

RATE=${RATE:-1000}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-5}
FAIL_PERCENT=${FAIL_PERCENT:-10}
CONNS=${CONNS:-32}
BUILD=${BUILD:-release}
GATES=${GATES:-"{ min_requests: 100, max_error_rate: 0.01 }"}   # abort: shown past 1 % at 99.9 %, fastest at 5 %
W=$(mktemp -d /tmp/switchyard-blast.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

command -v python3 >/dev/null || { echo "rollout-blast.sh needs python3"; exit 1; }
for port in 18290 18291 18292 19290; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use; stop what listens there"; exit 1; fi
done
if [ "$BUILD" = release ]; then cargo build --release -q; BIN=target/release/switchyard
else cargo build -q; BIN=target/debug/switchyard; fi

FAIL_AT=$(python3 -c "import time; print(time.time() + 2 + $WARMUP)")
python3 load-tests/rollout_blast.py backend stable 18291 & PIDS+=($!)
python3 load-tests/rollout_blast.py backend canary 18292 --fail-at "$FAIL_AT" \
  --fail-percent "$FAIL_PERCENT" --first-failure "$W/first-failure" & PIDS+=($!)

# Both backends listening before switchyard starts: a canary failing only because it is not up
# yet is not the canary this run is about.
wait_port 18291 18292

cat > "$W/switchyard.yaml" <<CONF
listeners: [{ name: public, bind: "127.0.0.1:18290" }]
admin: { bind: "127.0.0.1:19290" }
state_dir: "$W/state"
upstreams:
  stable: { backends: ["127.0.0.1:18291"] }
  canary: { backends: ["127.0.0.1:18292"] }
routes:
  - name: app
    split: [{ upstream: stable, weight: 100 }, { upstream: canary, weight: 0 }]
    rollout:
      strategy: canary
      stable: stable
      canary: canary
      steps: [5, 20, 50, 100]
      step_interval: 5m
      gates: $GATES
CONF
RUST_LOG=info "$BIN" run -c "$W/switchyard.yaml" 2> "$W/switchyard.log" & PIDS+=($!)
wait_url http://127.0.0.1:18290/

echo "load: $RATE req/s for ${DURATION}s; the canary fails $FAIL_PERCENT % from ~${WARMUP}s in"
python3 load-tests/rollout_blast.py load http://127.0.0.1:18290/ "$RATE" "$DURATION" "$CONNS" "$W/load.txt"
python3 load-tests/rollout_blast.py report "$W/first-failure" "$W/state/rollouts.jsonl" "$W/load.txt"
grep -E "rollout" "$W/switchyard.log" | tail -3 | cut -c1-300
echo "(files in $W)"
