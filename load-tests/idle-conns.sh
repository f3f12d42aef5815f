#!/usr/bin/env bash
# Memory per idle keep-alive client connection, and whether it comes back when they close:
# 10,000 connections held silent, then (CYCLES times) 10,000 that each sent one request, each
# phase followed by closing them all (see idle_conns.py for the phases and knobs).
#   load-tests/idle-conns.sh
#   CONNECTIONS=2000 CYCLES=7 load-tests/idle-conns.sh
#   PROFILE=debug load-tests/idle-conns.sh      # skip the (slow) release build
# Needs python3. Loopback only, bounded (TIMEOUT, 300 s by default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONNECTIONS=${CONNECTIONS:-10000}
# Both this client and switchyard (which inherits it) hold one fd per connection.
want=$((CONNECTIONS + 1024))
[ "$(ulimit -n)" -ge "$want" ] || ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge "$want" ] || { echo "idle-conns.sh: needs an fd limit of $want (hard limit $(ulimit -Hn))"; exit 1; }
PROFILE=${PROFILE:-release}
if [ -z "${BIN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -q; else cargo build -q; fi
  BIN=target/$PROFILE/switchyard
fi
export CONNECTIONS
exec python3 load-tests/idle_conns.py "$BIN"
