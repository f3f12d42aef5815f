#!/usr/bin/env bash
# How rollout state in state_dir behaves when it cannot be trusted (issue 11, items 3 and 4):
#   1. after `abort`, the state file is truncated (then: garbage) and switchyard restarts:
#      how many of 200 requests reach the aborted canary, and what the journal says;
#   2. state_dir is read-only (as `nobody` when run as root): what /rollouts says, and what a
#      restart after an abort resumes;
#   3. a second switchyard on the same state_dir: does it start; with both driving
#      transitions, failed state-file writes and invalid reads of the file (3,000 reads).
#   load-tests/fail-safe/state_dir.sh target/debug/switchyard
# Loopback only, bounded; everything it starts is stopped on exit.
set -uo pipefail
BIN=$(realpath "$1")
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source load-tests/wait.sh

W=$(mktemp -d /tmp/switchyard-statedir.XXXX)
chmod 755 "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

python3 load-tests/rollout_blast.py backend stable 18391 & PIDS+=($!)
python3 load-tests/rollout_blast.py backend canary 18392 & PIDS+=($!)

conf() { # conf FILE PORT ADMIN STATE_DIR
  cat > "$1" <<CONF
listeners: [{ name: public, bind: "127.0.0.1:$2" }]
admin: { bind: "127.0.0.1:$3" }
state_dir: "$4"
upstreams:
  stable: { backends: ["127.0.0.1:18391"] }
  canary: { backends: ["127.0.0.1:18392"] }
routes:
  - name: app
    split: [{ upstream: stable, weight: 100 }, { upstream: canary, weight: 0 }]
    rollout: { strategy: canary, stable: stable, canary: canary, steps: [5, 20, 50, 100], step_interval: 1h }
CONF
}
wait_up() { wait_url "http://127.0.0.1:$1/livez" 30; }
start() { # start CONF LOG [nobody]: sets P
  if [ "${3:-}" = nobody ] && [ "$(id -u)" = 0 ]; then
    setpriv --reuid=65534 --regid=65534 --clear-groups "$BIN" run -c "$1" 2> "$2" > /dev/null &
  else
    "$BIN" run -c "$1" 2> "$2" > /dev/null &
  fi
  P=$!; PIDS+=("$P")
}
canary_share() { # canary_share PORT N
  local n=0
  for _ in $(seq "$2"); do
    curl -s "http://127.0.0.1:$1/" | grep -q canary && n=$((n + 1))
  done
  echo "$n"
}
state_of() { curl -s "http://127.0.0.1:$1/rollouts/app" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["state"], "step", v["step"], "weights", [w["weight"] for w in v["weights"]], "persistent", v["persistent"])'; }

for how in truncated garbage; do
  D="$W/$how"; mkdir -p "$D"; conf "$D/c.yaml" 18390 19390 "$D/state"
  start "$D/c.yaml" "$D/1.log"; wait_up 19390
  curl -s -X POST http://127.0.0.1:19390/rollouts/app/promote >/dev/null
  curl -s -X POST http://127.0.0.1:19390/rollouts/app/abort >/dev/null
  kill "$P"; wait "$P" 2>/dev/null
  if [ "$how" = truncated ]; then head -c 40 "$D/state/rollouts.state.json" > "$D/t" && mv "$D/t" "$D/state/rollouts.state.json"
  else printf '\x00\x01garbage{{' > "$D/state/rollouts.state.json"; fi
  start "$D/c.yaml" "$D/2.log"; wait_up 19390
  echo "1. $how state file after abort, restart: $(state_of 19390); canary answered $(canary_share 18390 200) of 200"
  echo "   files: $(ls "$D/state" | tr '\n' ' ')"
  echo "   journal's last line: $(tail -1 "$D/state/rollouts.jsonl" | cut -c1-300)"
  echo "   log: $(grep -iE 'state file|rollout' "$D/2.log" | head -2 | cut -c1-250 | tr '\n' '|')"
  kill "$P"; wait "$P" 2>/dev/null
done

D="$W/readonly"; mkdir -p "$D/state"; conf "$D/c.yaml" 18390 19390 "$D/state"
start "$D/c.yaml" "$D/1.log"; wait_up 19390
curl -s -X POST http://127.0.0.1:19390/rollouts/app/promote >/dev/null
curl -s -X POST http://127.0.0.1:19390/rollouts/app/promote >/dev/null
kill "$P"; wait "$P" 2>/dev/null
chmod -R a+r "$D/state"; chmod 555 "$D/state"
start "$D/c.yaml" "$D/2.log" nobody; wait_up 19390
echo "2. read-only state_dir holding a rollout at step 2, restart: $(state_of 19390)"
curl -s -X POST http://127.0.0.1:19390/rollouts/app/abort >/dev/null
echo "   after abort: $(state_of 19390); metric: $(curl -s http://127.0.0.1:19390/metrics | grep -E '^switchyard_state_dir_persistent' | tr '\n' ' ')"
echo "   /status: $(curl -s http://127.0.0.1:19390/status | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state_dir"))')"
kill "$P"; wait "$P" 2>/dev/null
start "$D/c.yaml" "$D/3.log" nobody; wait_up 19390
echo "   restarted after that abort: $(state_of 19390)"
kill "$P"; wait "$P" 2>/dev/null
chmod 755 "$D/state"

D="$W/shared"; mkdir -p "$D"; conf "$D/a.yaml" 18390 19390 "$D/state"; conf "$D/b.yaml" 18393 19393 "$D/state"
start "$D/a.yaml" "$D/a.log"; A=$P; wait_up 19390
start "$D/b.yaml" "$D/b.log"; B=$P
if wait_up 19393 2>/dev/null; then
  echo "3. a second switchyard on the same state_dir started"
  drive() { for _ in $(seq 300); do for op in pause resume; do curl -s -X POST "http://127.0.0.1:$1/rollouts/app/$op" >/dev/null; done; done; }
  drive 19390 & D1=$!; drive 19393 & D2=$!
  bad=$(python3 - "$D/state/rollouts.state.json" <<'PY'
import json, sys
bad = 0
for _ in range(3000):
    try:
        json.load(open(sys.argv[1]))
    except Exception:
        bad += 1
print(bad)
PY
)
  wait "$D1" "$D2"
  echo "   invalid reads of the state file: $bad of 3000; failed writes logged: A $(grep -c 'cannot write the rollout state file' "$D/a.log"), B $(grep -c 'cannot write the rollout state file' "$D/b.log")"
  echo "   journal lines: $(wc -l < "$D/state/rollouts.jsonl"), with a writer: $(grep -c '"writer"' "$D/state/rollouts.jsonl")"
else
  wait "$B"; echo "3. a second switchyard on the same state_dir: exit $?: $(tail -2 "$D/b.log" | tr '\n' ' ' | cut -c1-300)"
fi
echo "(files in $W)"
