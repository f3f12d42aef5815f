#!/usr/bin/env bash
# The config's directory replaced (rm -rf dir; mkdir dir; cp), then edits, twice: prints the
# config generation after each step (each step changes the config, so each should bump it).
# Loopback only; stops what it started.
#   load-tests/fail-safe/dir_replace.sh target/debug/switchyard
set -u
BIN=$1
root=$(mktemp -d); d=$root/conf; mkdir "$d"
P=$((20000 + RANDOM % 20000)); A=$((P + 1))
conf() { cat <<Y
listeners: [{ name: public, bind: "127.0.0.1:$P" }]
admin: { bind: "127.0.0.1:$A" }
upstreams: { a: { backends: ["127.0.0.1:1"] } }
routes: [{ name: r, timeout: $1, split: [{ upstream: a, weight: 1 }] }]
Y
}
conf 1s > "$d/c.yaml"
"$BIN" run -c "$d/c.yaml" --workers 1 2>"$root/log" & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$root"' EXIT
sleep 1.5
gen() { curl -s "http://127.0.0.1:$A/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])'; }
echo "start: generation $(gen)"
conf 2s > "$root/new.yaml"; rm -rf "$d"; mkdir "$d"; cp "$root/new.yaml" "$d/c.yaml"; sleep 1.5
echo "after rm -rf dir; mkdir dir; cp: generation $(gen)"
conf 3s > "$d/c.yaml"; sleep 1.5; echo "after an edit in place: generation $(gen)"
conf 4s > "$d/c.yaml.tmp"; mv "$d/c.yaml.tmp" "$d/c.yaml"; sleep 1.5; echo "after an edit by rename: generation $(gen)"
rm -rf "$d"; mkdir "$d"; conf 5s > "$d/c.yaml"; sleep 1.5; echo "after a second replacement: generation $(gen)"
conf 6s > "$d/c.yaml"; sleep 1.5; echo "after another edit: generation $(gen)"
