#!/usr/bin/env bash
# How many `check` runs config/invalid/six-mistakes-mixed.yaml takes when each reported mistake
# is fixed before the next run (one sed per path).
#   load-tests/fail-safe/check_runs.sh target/debug/switchyard
set -u
BIN=$1; f=$(mktemp --suffix .yaml)
trap 'rm -f "$f"' EXIT
cp "$(dirname "$0")/../../config/invalid/six-mistakes-mixed.yaml" "$f"
fix() { case "$1" in
  'routes[0].timout') sed -i 's/timout:/timeout:/' "$f";;
  'routes[0].split[1].upstream') sed -i 's/checkout-gren/checkout-green/' "$f";;
  'routes[1].match.path_prefix') sed -i 's/path_prefix: catalog/path_prefix: \/catalog/' "$f";;
  'routes[1].split[0].weight') sed -i 's/weight: ten/weight: 10/' "$f";;
  'routes[1].split[0]'|'routes[1].split[0].upstream') sed -i 's/- { weight: /- { upstream: catalog, weight: /' "$f";;
  'upstreams.checkout-blue.connect_timeout') sed -i 's/connect_timeout: 0s/connect_timeout: 1s/' "$f";;
  *) echo "no fix for $1";; esac; }
runs=0
while :; do
  runs=$((runs + 1))
  out=$("$BIN" check --skip-bind -c "$f" 2>&1) && break
  echo "run $runs: $(echo "$out" | head -1 | sed 's/.*: //')"
  for p in $(echo "$out" | tail -n +2 | sed 's/^  \([^:]*\):.*/\1/'); do fix "$p"; done
  [ $runs -gt 8 ] && break
done
echo "run $runs: OK"; echo "check runs needed: $runs (the last one says OK)"
