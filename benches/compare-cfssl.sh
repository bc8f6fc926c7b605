#!/usr/bin/env bash
# meshroot beside Debian's cfssl (`cfssl serve`, a real CA server), on this machine, in one run:
# the same P-256 intermediate, the same RSA-2048 CSR (istio-agent's shape), both over TLS with
# HTTP/2, both driven by the same load tool (h2load from nghttp2-client) with the same
# connections and duration. meshroot authenticates a token, applies its policy, re-checks the
# leaf and records every issuance durably; cfssl runs without its database.
#
#   bash benches/compare-cfssl.sh            # CLIENTS=64 SECONDS_RUN=10 WARMUP=2
#
# Needs root for apt-get if golang-cfssl or nghttp2-client are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-64}
SECONDS_RUN=${SECONDS_RUN:-10}
WARMUP=${WARMUP:-2}

if ! command -v cfssl >/dev/null || ! command -v h2load >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq golang-cfssl nghttp2-client openssl
fi
cargo build --release --quiet
meshroot="$PWD/target/release/meshroot"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One CA (P-256 intermediate) for both, one CSR shaped like istio-agent's.
"$meshroot" init --dir ca --dev-issuer >/dev/null
# One identity from one address sends everything: meshroot's per-caller and per-namespace rate
# limits and per-peer connection caps (which would answer most requests RESOURCE_EXHAUSTED,
# with HTTP status 200) are off, as in `meshroot bench`.
printf '\n[rate_limit]\nper_caller = 0.0\nper_namespace = 0.0\n[connections]\nmax_per_peer = 1000000\nmax_handshakes_per_peer = 1000000\n' >> ca/meshroot.toml
openssl req -new -newkey rsa:2048 -nodes -keyout workload.key -subj "/O=" \
  -addext "subjectAltName=critical,URI:spiffe://cluster.local/ns/bench/sa/h2load" \
  -out workload.csr 2>/dev/null
openssl req -new -x509 -days 2 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout tls.key -out tls.crt -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null
token=$("$meshroot" token --config ca/meshroot.toml --namespace bench --service-account h2load --ttl 12h)
# gRPC: HTTP/2 POST, a 5-byte frame header, then IstioCertificateRequest{csr=1, validity_duration=3}.
python3 - <<'EOF'
import json
csr = open("workload.csr", "rb").read()
def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80]); n >>= 7
    return out + bytes([n])
message = b"\x0a" + varint(len(csr)) + csr + b"\x18" + varint(86400)
open("grpc.bin", "wb").write(b"\x00" + len(message).to_bytes(4, "big") + message)
open("cfssl.json", "w").write(json.dumps({"certificate_request": csr.decode()}))
open("cfssl-config.json", "w").write(json.dumps({"signing": {"default": {
    "expiry": "24h",
    "usages": ["digital signature", "key encipherment", "server auth", "client auth"]}}}))
EOF

load() { # URL BODY HEADERS... → prints "rate succeeded"
  local url=$1 body=$2; shift 2
  local headers=()
  for h in "$@"; do headers+=(-H "$h"); done
  h2load -c "$CLIENTS" -m 1 -D "$SECONDS_RUN" --warm-up-time "$WARMUP" "${headers[@]}" -d "$body" "$url" >h2load.out 2>&1
  awk '/^finished in/ { gsub(",", "", $4); rate = $4 } /^requests:/ { ok = $8 } END { print rate, ok }' h2load.out
}

# meshroot (its records tell how many requests really got a certificate).
port=$(free_port); admin=$(free_port)
MESHROOT_LISTEN=127.0.0.1:$port MESHROOT_ADMIN_LISTEN=127.0.0.1:$admin MESHROOT_LOG=warn \
  "$meshroot" serve --config ca/meshroot.toml 2>meshroot.log &
pids+=($!)
for _ in $(seq 100); do grep -q "serving the Istio CSR API" meshroot.log && break; sleep 0.1; done
before=$("$meshroot" audit list --addr "127.0.0.1:$admin" --config ca/meshroot.toml --outcome issued --count)
read -r meshroot_rate meshroot_ok < <(load "https://127.0.0.1:$port/istio.v1.auth.IstioCertificateService/CreateCertificate" grpc.bin \
  "content-type: application/grpc" "te: trailers" "authorization: Bearer $token" "clusterid: Kubernetes")
after=$("$meshroot" audit list --addr "127.0.0.1:$admin" --config ca/meshroot.toml --outcome issued --count)
issued=$((after - before))
denied=$("$meshroot" audit list --addr "127.0.0.1:$admin" --config ca/meshroot.toml --outcome denied --count)
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

# cfssl serve, TLS (Go serves HTTP/2 on it), no database.
cport=$(free_port)
cfssl serve -address 127.0.0.1 -port "$cport" -ca ca/default/ca-cert.pem -ca-key ca/default/ca-key.pem \
  -config cfssl-config.json -tls-cert tls.crt -tls-key tls.key -loglevel 5 2>cfssl.log &
pids+=($!)
for _ in $(seq 100); do curl -sk "https://127.0.0.1:$cport/api/v1/cfssl/health" >/dev/null 2>&1 && break; sleep 0.1; done
check=$(curl -sk --http2 -X POST -H "content-type: application/json" -d @cfssl.json "https://127.0.0.1:$cport/api/v1/cfssl/sign")
case "$check" in *'"success":true'*) ;; *) echo "cfssl did not sign: $check" >&2; exit 1 ;; esac
read -r cfssl_rate cfssl_ok < <(load "https://127.0.0.1:$cport/api/v1/cfssl/sign" cfssl.json "content-type: application/json")

echo "h2load: $CLIENTS connections, 1 stream each, ${SECONDS_RUN} s after ${WARMUP} s of warm-up; RSA-2048 CSR, P-256 intermediate, TLS + HTTP/2"
printf "meshroot: %8.0f requests/s (%s answered; %s certificates recorded during the run, %s denials)\n" "$meshroot_rate" "$meshroot_ok" "$issued" "$denied"
printf "cfssl:    %8.0f requests/s (%s answered)\n" "$cfssl_rate" "$cfssl_ok"
python3 -c "print('meshroot / cfssl = %.2f' % ($meshroot_rate / $cfssl_rate))"
