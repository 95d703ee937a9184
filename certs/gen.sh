#!/usr/bin/env bash
# Regenerates the TEST-ONLY certificate authority and server certificate in this folder.
# The private keys are committed on purpose: they protect nothing and exist so that tests
# (the netns rig's upstream servers, curl --cacert) can run without a generation step.
# Never trust ca.pem anywhere but in a test.
set -euo pipefail
cd "$(dirname "$0")"

days=3650
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# P-256 keys: every TLS client the tests drive (curl/OpenSSL, Node) accepts them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca-key.pem -out ca.pem -days "$days" -sha256 \
  -subj "/O=egressd tests/CN=egressd test CA (TEST ONLY, key is public)" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash"

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server-key.pem -out "$tmp/server.csr" \
  -subj "/O=egressd tests/CN=allowed.test"

# The names and addresses the e2e tests dial (certs/README.md lists them).
sans="DNS:allowed.test,DNS:*.allowed.test,DNS:other.test,DNS:denied.test,DNS:spoof.test"
sans="$sans,DNS:metadata.test,DNS:v6.test,DNS:fixture.test"
for i in 2 3 4 5 6 7 8 9; do sans="$sans,IP:198.18.1.$i,IP:2001:db8:0:2::$i"; done

cat > "$tmp/server.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$sans
EXT

openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey ca-key.pem -set_serial "0x$(openssl rand -hex 16)" \
  -days "$days" -sha256 -extfile "$tmp/server.ext" -out server.pem

chmod 644 ca.pem server.pem ca-key.pem server-key.pem
openssl verify -CAfile ca.pem server.pem
openssl x509 -in ca.pem -noout -enddate | sed 's/^/ca.pem     /'
openssl x509 -in server.pem -noout -enddate | sed 's/^/server.pem /'
