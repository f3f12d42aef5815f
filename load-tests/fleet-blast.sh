#!/usr/bin/env bash
# A fleet through etcd, measured (issue 10). Phases (PHASES, default all three):
#   blast     etcd and three replicas, RATE req/s spread over the three, the canary at 5 % starts
#             failing FAIL_PERCENT % of its requests after WARMUP s: time from its first failure
#             until every replica has it at weight 0, failed client requests fleet-wide, and
#             etcd writes per second per replica over the run.
#   failover  the same fleet, a rollout stepping under load: SIGKILL of the leader at step 1,
#             time until another replica leads and until the next step decision.
#   scale     one replica leading 3, then 30, light publishers of the keys replicas write
#             (a lease each, a report every 250 ms, 150 canary requests/s in all, every one
#             failing after SCALE_HEALTHY s): the leader's decision delay, etcd's puts/s, CPU
#             and memory, and the leader's CPU over the run.
#   load-tests/fleet-blast.sh                       # release build
#   BUILD=debug PHASES=blast RATE=500 load-tests/fleet-blast.sh
# Needs python3 and etcd (Debian's etcd-server). Loopback only, bounded in time; everything it
# starts is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source load-tests/wait.sh

PHASES=${PHASES:-"blast failover scale"}
RATE=${RATE:-1000}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-5}
FAIL_PERCENT=${FAIL_PERCENT:-10}
CONNS=${CONNS:-12}
BUILD=${BUILD:-release}
LEASE=${LEASE:-5s}
SCALE_HEALTHY=${SCALE_HEALTHY:-15}   # scale: seconds of healthy reports before the canary fails
GATES=${GATES:-"{ min_requests: 100, max_error_rate: 0.01 }"}   # abort: shown past 1 % at 99.9 %, fastest at 5 %
W=$(mktemp -d /tmp/switchyard-fleet.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

command -v python3 >/dev/null || { echo "fleet-blast.sh needs python3"; exit 1; }
command -v etcd >/dev/null || { echo "fleet-blast.sh needs etcd (apt-get install etcd-server)"; exit 1; }
for port in 18401 18402 18403 18411 18412 18479 18480 19401 19402 19403; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use; stop what listens there"; exit 1; fi
done
if [ "$BUILD" = release ]; then cargo build --release -q; BIN=target/release/switchyard
else cargo build -q; BIN=target/debug/switchyard; fi
PY=load-tests/fleet_blast.py
ETCD=127.0.0.1:18479

start_etcd() { # a fresh etcd with its data in $W/$1
  etcd --name fleet --data-dir "$W/$1" --listen-client-urls "http://$ETCD" --advertise-client-urls "http://$ETCD" \
    --listen-peer-urls http://127.0.0.1:18480 --initial-advertise-peer-urls http://127.0.0.1:18480 \
    --initial-cluster fleet=http://127.0.0.1:18480 > "$W/$1.log" 2>&1 & ETCD_PID=$!; PIDS+=($ETCD_PID)
  wait_url "http://$ETCD/health" || { echo "etcd did not start: $W/$1.log"; exit 1; }
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

replica() { # replica I STEPS STEP_INTERVAL: starts switchyard n$I; sets R_PID
  cat > "$W/n$1.yaml" <<CONF
listeners: [{ name: public, bind: "127.0.0.1:1840$1" }]
admin: { bind: "127.0.0.1:1940$1" }
state_dir: "$W/state-$PHASE-n$1"
cluster: { name: blast, node: n$1, etcd: { endpoints: ["http://$ETCD"] }, lease_ttl: $LEASE }
upstreams:
  stable: { backends: ["127.0.0.1:18411"] }
  canary: { backends: ["127.0.0.1:18412"] }
routes:
  - name: app
    split: [{ upstream: stable, weight: 100 }, { upstream: canary, weight: 0 }]
    rollout:
      strategy: canary
      stable: stable
      canary: canary
      steps: $2
      step_interval: $3
      gates: $GATES
CONF
  RUST_LOG=info "$BIN" run -c "$W/n$1.yaml" --workers 1 2> "$W/n$1-$PHASE.log" & R_PID=$!; PIDS+=($R_PID)
  wait_url "http://127.0.0.1:1940$1/readyz" || { echo "replica n$1 did not start: $W/n$1-$PHASE.log"; exit 1; }
}
wait_rollout() { # wait_rollout ADMIN PYTHON-CONDITION-ON-v
  for _ in $(seq 300); do
    curl -s "http://$1/rollouts/app" | python3 -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if ($2) else 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "rollout never satisfied: $2"; exit 1
}
writes() { # etcd writes (puts + txns) and all calls by replica I so far
  curl -s "http://127.0.0.1:1940$1/metrics" | awk '/^switchyard_fleet_etcd_requests_total/ { all += $2 } /call="(put|txn)",result="ok"/ { w += $2 } END { print w + 0, all + 0 }'
}

for PHASE in $PHASES; do
case $PHASE in
blast)
  start_etcd blast
  FAIL_AT=$(python3 -c "import time; print(time.time() + 3 + $WARMUP)")
  python3 load-tests/rollout_blast.py backend stable 18411 2> /dev/null & PIDS+=($!); B1=$!
  python3 load-tests/rollout_blast.py backend canary 18412 --fail-at "$FAIL_AT" \
    --fail-percent "$FAIL_PERCENT" --first-failure "$W/first-failure" 2> /dev/null & PIDS+=($!); B2=$!
  R=()
  for i in 1 2 3; do replica "$i" "[5, 20, 50, 100]" 5m; R+=("$R_PID"); done
  wait_rollout 127.0.0.1:19401 'v["state"] == "progressing" and [w["weight"] for w in v["weights"]] == [95, 5]'
  echo "== blast: $RATE req/s over three replicas for ${DURATION}s; the canary fails $FAIL_PERCENT % from ~${WARMUP}s in"
  T0=$(date +%s.%N); read -r W1 A1 < <(writes 1); read -r W2 A2 < <(writes 2); read -r W3 A3 < <(writes 3)
  python3 $PY watch "$W/zero.json" $((DURATION + 10)) 127.0.0.1:19401 127.0.0.1:19402 127.0.0.1:19403 & WATCH=$!
  each=$(python3 -c "print($RATE / 3)")
  for i in 1 2 3; do
    python3 load-tests/rollout_blast.py load "http://127.0.0.1:1840$i/" "$each" "$DURATION" "$CONNS" "$W/load$i.txt" & LP[$i]=$!
  done
  # While the step is counted (before the canary fails): what each replica writes to etcd.
  sleep "$WARMUP"
  T1=$(date +%s.%N)
  for i in 1 2 3; do
    read -r w a < <(writes $i); eval "w0=\$W$i; a0=\$A$i"
    python3 -c "d = $T1 - $T0; print(f'  replica n$i while counting a step: {($w - $w0) / d:.1f} etcd writes/s, {($a - $a0) / d:.1f} etcd calls/s')"
  done
  wait "${LP[1]}" "${LP[2]}" "${LP[3]}"; wait "$WATCH" || true
  python3 $PY blast-report "$W/first-failure" "$W/zero.json" "$W/load1.txt" "$W/load2.txt" "$W/load3.txt" || true
  curl -s http://127.0.0.1:19402/rollouts/app | python3 -c 'import json,sys; v=json.load(sys.stdin); e=v["history"][-1]; print("  decision:", e["reason"], "by", v["fleet"]["by"], "weights", e["weights"])'
  for p in "${R[@]}" "$B1" "$B2" "$ETCD_PID"; do stop "$p"; done
  ;;
failover)
  start_etcd failover
  python3 load-tests/rollout_blast.py backend stable 18411 2> /dev/null & PIDS+=($!); B1=$!
  python3 load-tests/rollout_blast.py backend canary 18412 2> /dev/null & PIDS+=($!); B2=$!
  R=()
  for i in 1 2 3; do replica "$i" "[5, 20, 50, 100]" 4s; R+=("$R_PID"); done
  echo "== failover: lease_ttl $LEASE, step_interval 4s, $RATE req/s over three replicas"
  each=$(python3 -c "print($RATE / 3)")
  for i in 1 2 3; do
    python3 load-tests/rollout_blast.py load "http://127.0.0.1:1840$i/" "$each" 25 "$CONNS" "$W/fload$i.txt" & LP[$i]=$!
  done
  python3 $PY failover 1 3000 127.0.0.1:19402 127.0.0.1:19401 127.0.0.1:19403 || true
  wait "${LP[1]}" "${LP[2]}" "${LP[3]}" || true
  # The killed replica's clients lose what was in flight to it, and find no listener after.
  for i in 1 2 3; do
    echo "  replica n$i's clients: $(awk '$2 != 200' "$W/fload$i.txt" | wc -l) of $(wc -l < "$W/fload$i.txt") requests not 200"
  done
  for p in "${R[@]}" "$B1" "$B2" "$ETCD_PID"; do stop "$p"; done
  ;;
scale)
  for n in 3 30; do
    PHASE=scale$n   # a state_dir of its own: a fresh etcd would continue from the last one's
    start_etcd "scale$n"
    python3 load-tests/rollout_blast.py backend stable 18411 2> /dev/null & PIDS+=($!); B1=$!
    python3 load-tests/rollout_blast.py backend canary 18412 2> /dev/null & PIDS+=($!); B2=$!
    replica 1 "[5, 20, 50, 100]" 5m; LEADER=$R_PID
    wait_rollout 127.0.0.1:19401 'v["state"] == "progressing" and v["fleet"]["leading"]'
    U0=$(python3 $PY etcd-usage "$ETCD_PID" "$ETCD")
    L0=$(awk '{print $14 + $15}' "/proc/$LEADER/stat")
    rate=$(python3 -c "print(150 / $n)")
    echo "== scale: the leader and $n light publishers (150 canary req/s in all, failing after ${SCALE_HEALTHY}s)"
    python3 $PY publishers "$ETCD" blast "$n" $((SCALE_HEALTHY + 20)) "$rate" "$SCALE_HEALTHY" "$W/pub$n.json" || true
    U1=$(python3 $PY etcd-usage "$ETCD_PID" "$ETCD")
    L1=$(awk '{print $14 + $15}' "/proc/$LEADER/stat")
    python3 - "$U0" "$U1" "$L0" "$L1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
d = b["time"] - a["time"]
puts = b.get("etcd_mvcc_put_total", 0) - a.get("etcd_mvcc_put_total", 0)
txns = b.get("etcd_mvcc_txn_total", 0) - a.get("etcd_mvcc_txn_total", 0)
props = b.get("etcd_server_proposals_committed_total", 0) - a.get("etcd_server_proposals_committed_total", 0)
db = b.get("etcd_mvcc_db_total_size_in_bytes", b.get("etcd_debugging_mvcc_db_total_size_in_bytes", 0))
leader = (float(sys.argv[4]) - float(sys.argv[3])) / float(sys.argv[5])
print(f"  etcd over {d:.1f}s: {puts / d:.0f} puts/s, {txns / d:.1f} txns/s, {props / d:.0f} proposals/s, "
      f"CPU {100 * (b['cpu_s'] - a['cpu_s']) / d:.0f} %, RSS {b['rss_kb'] / 1024:.0f} MB, db {db / 1e6:.1f} MB; "
      f"the leader's CPU {100 * leader / d:.0f} %")
PY
    for p in "$LEADER" "$B1" "$B2" "$ETCD_PID"; do stop "$p"; done
  done
  ;;
esac
done
echo "(files in $W)"
