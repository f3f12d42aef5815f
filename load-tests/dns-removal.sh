#!/usr/bin/env bash
# The time from a pod's removal from DNS to the last request it gets, under steady load: four
# pods behind a discovered name, one removed and put back per cycle (see dns_removal.py).
#   load-tests/dns-removal.sh                       # refresh 5s, records' TTL 30s: refresh rules
#   REFRESH=1s load-tests/dns-removal.sh
#   TTL=0 REFRESH=30s load-tests/dns-removal.sh     # a TTL of 0: the 1s floor rules
#   PROFILE=debug load-tests/dns-removal.sh         # skip the (slow) release build
# Needs dnsmasq (Debian dnsmasq-base) and python3. Loopback only, bounded in time
# (about 2 + CYCLES x (3 x min(REFRESH, TTL) + 4) seconds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"
command -v dnsmasq >/dev/null || { echo "dns-removal.sh needs dnsmasq (apt-get install dnsmasq-base)"; exit 1; }
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release -q; else cargo build -q; fi
exec python3 load-tests/dns_removal.py "target/$PROFILE/switchyard"
