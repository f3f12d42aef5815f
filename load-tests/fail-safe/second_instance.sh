#!/usr/bin/env bash
# A second `switchyard run` on the listener address a running one holds, both with --workers W:
# prints its exit code (124: still running after 5 s, i.e. it shares the port) and its message.
# Loopback only; stops what it started.
#   load-tests/fail-safe/second_instance.sh target/debug/switchyard 2
set -u
BIN=$1; W=${2:-2}
d=$(mktemp -d); P=$((20000 + RANDOM % 20000)); A=$((P + 1))
cat > "$d/c.yaml" <<Y
listeners: [{ name: public, bind: "127.0.0.1:$P" }]
admin: { bind: "127.0.0.1:$A" }
upstreams: { a: { backends: ["127.0.0.1:1"] } }
routes: [{ name: r, split: [{ upstream: a, weight: 1 }] }]
Y
sed "s/$A/$((A + 1))/" "$d/c.yaml" > "$d/c2.yaml"   # the same listener, its own admin port
"$BIN" run -c "$d/c.yaml" --workers "$W" 2>"$d/log1" & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"' EXIT
sleep 1.5
timeout 5 "$BIN" run -c "$d/c2.yaml" --workers "$W" 2>"$d/log2"; code=$?
echo "workers=$W second instance exit code: $code"
grep -h "already in use\|switchyard started" "$d/log2" | cut -c1-200
