# Sourced by the load scripts: waits for what they start, 0.1 s between tries. Each says on
# stderr what it waited for in vain and returns 1 (under `set -e` the script then ends there,
# instead of loading a backend that never came up).

# wait_port PORT...: until something listens on 127.0.0.1:PORT, each (10 s at most).
wait_port() {
  local port
  for port in "$@"; do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue 2
      sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$port after 10 s" >&2
    return 1
  done
}

# wait_url URL [SECONDS]: until URL answers 2xx (10 s at most unless SECONDS says otherwise).
wait_url() {
  for _ in $(seq $(( ${2:-10} * 10 ))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no 2xx answer from $1 after ${2:-10} s" >&2
  return 1
}
