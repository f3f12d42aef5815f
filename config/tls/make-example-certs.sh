#!/usr/bin/env bash
# Regenerates the EXAMPLE certificates in this directory (used by config/tls.yaml and the
# config/invalid/tls-*.yaml fixtures). Their private keys are published in this repository:
# never use them for anything but examples and tests. Tests make their own at run time (rcgen).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ec "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -days 3650 -subj "/CN=switchyard example CA (do not trust)" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out example-ca.crt
leaf() { # name subject san extendedKeyUsage
  ec "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$3" "$4" > "$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA example-ca.crt -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tmp/$1.ext" -out "$1.crt"
}
leaf example shop.example.com "DNS:shop.example.com,DNS:*.example.com,DNS:localhost,IP:127.0.0.1" serverAuth
leaf example-client switchyard-example-client "DNS:switchyard-example-client" clientAuth
rm -f example-ca.srl
