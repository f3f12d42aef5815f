#!/usr/bin/env bash
# Shadow traffic's cost to the client.
#
#   load-tests/shadow.sh            # client p99 at a fixed rate: no shadow vs 100% shadow to a
#                                   # backend that sleeps 2 s per request
#   load-tests/shadow.sh peers      # ../shared/bench/peers.sh twice: switchyard shadowing 100%
#                                   # to a second (fast) backend, and the same without shadow
#
# Knobs (latency mode): RATE (default 1000 req/s), DURATION (s, default 20), CONNECTIONS (16),
# SLEEP (the shadow's delay, default 2 s), MAX_IN_FLIGHT (100), ROUNDS (3: off/on pairs, order
# alternating; the medians are compared), PROFILE (release | debug).
# Knobs (peers mode): PEERS_SECONDS (peers.sh duration, default 8), PEERS (path to peers.sh),
# RATE (peers.sh fixed-rate latency run; its default is 5000).
# Load: oha at a fixed rate with --latency-correction if installed, else load-tests/fixed_rate.py
# (same method, Python, a few thousand req/s at most). The primary backend is nginx (1 KiB body);
# the sleeping shadow is a small asyncio server. Loopback only, bounded in time; everything it
# starts is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=${1:-latency}
PROFILE=${PROFILE:-release}
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-16}
SLEEP=${SLEEP:-2}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-100}
ROUNDS=${ROUNDS:-3}
W=$(mktemp -d /tmp/switchyard-shadow.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for m in "$W"/*.nginxpid; do [ -f "$m" ] && kill "$(cat "$m")" 2>/dev/null || true; done
}
trap cleanup EXIT

command -v nginx >/dev/null || { echo "shadow.sh needs nginx (apt-get install nginx)"; exit 1; }
if [ "$PROFILE" = release ]; then cargo build --release -q; else cargo build -q; fi
BIN=target/$PROFILE/switchyard

# nginx NAME PORT: a backend answering 1 KiB, one worker, no master.
nginx_backend() {
  local body
  body=$(head -c 1024 /dev/zero | tr '\0' 'x')
  cat > "$W/$1.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $W/$1.pid; error_log $W/$1.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2 backlog=4096; location / { return 200 "$body"; } } }
CONF
  nginx -c "$W/$1.conf" & echo $! > "$W/$1.nginxpid"
}

wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "nothing answers at $1"; exit 1; }

if [ "$MODE" = peers ]; then
  PEERS=${PEERS:-../shared/bench/peers.sh}
  [ -x "$PEERS" ] || [ -f "$PEERS" ] || { echo "peers.sh not found at $PEERS (set PEERS=)"; exit 1; }
  # peers.sh starts its own backend on 18081 and expects us on 18085; the shadow backend is a
  # second nginx on 18087, pinned with the load generator like peers.sh's backend.
  for port in 18081 18085 18087; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use"; exit 1; fi
  done
  body=$(head -c 1024 /dev/zero | tr '\0' 'x')
  cat > "$W/shadowb.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $W/shadowb.pid; error_log $W/shadowb.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18087 backlog=4096; location / { return 200 "$body"; } } }
CONF
  taskset -c 0 nginx -c "$W/shadowb.conf" & echo $! > "$W/shadowb.nginxpid"
  for shadow in off on; do
    {
      echo 'listeners: [{ name: public, bind: "127.0.0.1:18085" }]'
      echo 'admin: { bind: "127.0.0.1:19085" }'
      echo 'upstreams:'
      echo '  app: { backends: ["127.0.0.1:18081"] }'
      echo '  next: { backends: ["127.0.0.1:18087"] }'
      echo 'routes:'
      echo '  - name: r'
      echo '    split: [{ upstream: app, weight: 1 }]'
      [ $shadow = on ] && echo "    shadow: { upstream: next, percent: 100, max_in_flight: $MAX_IN_FLIGHT }"
    } > "$W/peers-$shadow.yaml"
    echo "== switchyard, shadow $shadow ($W/peers-$shadow.yaml)"
    OURS="$BIN run -c $W/peers-$shadow.yaml" bash "$PEERS" "${PEERS_SECONDS:-8}" | tee "$W/peers-$shadow.txt"
  done
  echo "== shadow off vs on (row 'ours'):"
  grep -h '^ours' "$W/peers-off.txt" "$W/peers-on.txt" || true
  exit 0
fi

for port in 18280 18281 18282 19280; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use"; exit 1; fi
done
nginx_backend primary 18281
# The shadow: answers every request after SLEEP seconds (asyncio: one thread, nearly no CPU,
# so it does not compete with the proxy or the load generator).
python3 - "$SLEEP" > "$W/sleeper.log" 2>&1 <<'PY' &
import asyncio, sys
delay = float(sys.argv[1])
async def conn(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n")
            await writer.drain()
    except Exception:
        writer.close()
async def main():
    server = await asyncio.start_server(conn, "127.0.0.1", 18282, backlog=1024)
    await server.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)
wait_http http://127.0.0.1:18281/
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18282) 2>/dev/null && break; sleep 0.1; done

load() { # URL SECONDS -> JSON line with p50_us p99_us p999_us requests errors non2xx
  if command -v oha >/dev/null; then
    # Requests still out when the time is up are "aborted due to deadline": not errors.
    oha -z "${2}s" -q "$RATE" -c "$CONNECTIONS" --no-tui --latency-correction --output-format json "$1" 2>/dev/null |
      tee "$W/oha-last.json" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["statusCodeDistribution"]; e=d.get("errorDistribution",{})
print(json.dumps({"requests": sum(s.values()), "errors": sum(v for k,v in e.items() if "deadline" not in k), "non2xx": sum(v for k,v in s.items() if not k.startswith("2")), "p50_us": round(p["p50"]*1e6), "p99_us": round(p["p99"]*1e6), "p999_us": round(p["p99.9"]*1e6)}))'
  else
    python3 load-tests/fixed_rate.py "$1" "$RATE" "$2" "$CONNECTIONS"
  fi
}
GEN=$(command -v oha >/dev/null && echo "oha -q $RATE --latency-correction" || echo "load-tests/fixed_rate.py (oha not installed)")

for shadow in off on; do
  {
    echo 'listeners: [{ name: public, bind: "127.0.0.1:18280" }]'
    echo 'admin: { bind: "127.0.0.1:19280" }'
    echo 'upstreams:'
    echo '  app: { backends: ["127.0.0.1:18281"] }'
    echo '  slow: { backends: ["127.0.0.1:18282"], circuit_breaker: { enabled: false } }'
    echo 'routes:'
    echo '  - name: r'
    echo '    split: [{ upstream: app, weight: 1 }]'
    [ $shadow = on ] && echo "    shadow: { upstream: slow, percent: 100, max_in_flight: $MAX_IN_FLIGHT, timeout: $((SLEEP * 2 + 1))s }"
  } > "$W/$shadow.yaml"
done

# Rounds alternate the order (off on, on off, ...) so that a machine getting busier or quieter
# during the run does not favour one side; each run has a fresh switchyard and a warm-up.
for round in $(seq "$ROUNDS"); do
  order="off on"; [ $((round % 2)) -eq 0 ] && order="on off"
  for shadow in $order; do
    RUST_LOG=warn $BIN run -c "$W/$shadow.yaml" 2>> "$W/switchyard-$shadow.log" &
    SY=$!; PIDS+=($SY)
    wait_http http://127.0.0.1:18280/
    load http://127.0.0.1:18280/ 2 > /dev/null   # warm-up
    load http://127.0.0.1:18280/ "$DURATION" > "$W/$shadow-$round.json"
    [ $shadow = on ] && curl -sf http://127.0.0.1:19280/shadow/r > "$W/shadow-stats.json"
    kill $SY; wait $SY 2>/dev/null || true
  done
done

python3 - "$W" "$GEN" "$RATE" "$DURATION" "$SLEEP" "$ROUNDS" <<'PY'
import json, statistics, sys
w, gen, rate, dur, sleep, rounds = sys.argv[1:]
st = json.load(open(f"{w}/shadow-stats.json"))
print(f"load: {gen}, {rate} req/s for {dur} s per run, {rounds} round(s); shadow sleeps {sleep} s per request")
print(f"{'round':5} {'shadow':8} {'requests':>9} {'errors':>7} {'non2xx':>7} {'p50_us':>8} {'p99_us':>8} {'p99.9_us':>9}")
p99 = {"off": [], "on": []}
for r in range(1, int(rounds) + 1):
    for s, name in (("off", "off"), ("on", "on 100%")):
        d = json.load(open(f"{w}/{s}-{r}.json"))
        p99[s].append(d["p99_us"])
        print(f"{r:<5} {name:8} {d['requests']:>9} {d['errors']:>7} {d['non2xx']:>7} {d['p50_us']:>8} {d['p99_us']:>8} {d['p999_us']:>9}")
off, on = statistics.median(p99["off"]), statistics.median(p99["on"])
ratio = on / max(off, 1)
print(f"median p99: off {off:.0f} us, on {on:.0f} us; with shadow / without: {ratio:.3f} ({'within' if ratio <= 1.10 else 'NOT within'} 10%)")
r = st["requests"]
print("shadow copies (last run): " + ", ".join(f"{k} {v}" for k, v in r.items() if v) + f"; in flight at the end: {st['in_flight']}")
PY
echo "raw results: $W"
trap - EXIT; cleanup
