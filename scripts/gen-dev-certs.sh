#!/usr/bin/env bash
# Development certificates for rstmdb TLS and mTLS, made with openssl:
#   ca.pem / ca-key.pem          a private CA (X.509 v3, CA:TRUE)
#   server.pem / server-key.pem  server certificate for localhost, 127.0.0.1 and ::1 (serverAuth)
#   client.pem / client-key.pem  client certificate with CN=$CLIENT_CN (clientAuth), for mTLS
# Keys are ECDSA P-256 in PKCS#8, mode 0600. For development and tests only: a production CA
# keeps its key offline.
#
# Usage: scripts/gen-dev-certs.sh [OUT_DIR] [CLIENT_CN]   (defaults: ./certs, rstmdb-client)
# Extra server names: SERVER_SANS="DNS:db.internal,IP:10.0.0.5" scripts/gen-dev-certs.sh
set -euo pipefail

out="${1:-./certs}"
client_cn="${2:-rstmdb-client}"
days="${DAYS:-825}"
sans="DNS:localhost,IP:127.0.0.1,IP:::1${SERVER_SANS:+,$SERVER_SANS}"

command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
umask 077
mkdir -p "$out"
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days "$days" -subj "/CN=rstmdb dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out ca.pem

leaf() { # name cn extensions
    key "$1-key.pem"
    openssl req -new -key "$1-key.pem" -subj "/CN=$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days "$days" -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

leaf server rstmdb-server "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"

leaf client "$client_cn" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"

rm -f ca.srl
chmod 600 ./*-key.pem
chmod 644 ca.pem server.pem client.pem
echo "wrote $(pwd): ca.pem server.pem server-key.pem client.pem client-key.pem (client CN=$client_cn)"
