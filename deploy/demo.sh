#!/usr/bin/env bash
# deploy/demo.sh - the whole system on this machine, no cloud account needed:
#   - a real mosquitto broker on 127.0.0.1 with TLS and client certificates,
#   - fleetgw with its own CA (provisioning backend local-ca): each leaf gets
#     one certificate, recorded in the SQLite registry, exactly once (run the
#     demo again: nobody is provisioned twice), and its own upstream TLS
#     session with it,
#   - a fleet of simulated MQTT-SN leaves that publish telemetry and receive
#     commands, over DTLS 1.2 with a pre-shared key each, made through the
#     REST API on the first run (DEMO_PLAIN=1: plain UDP instead),
#   - a watcher at the broker printing what arrives, and a command sent to a
#     leaf every 10 s,
#   - the dashboard and REST API on http://127.0.0.1:8080/ (the token is
#     printed).
# Ctrl-C stops everything it started.  State (certificates, logs, config) is in
# ./demo-state and is reused by the next run.
#
# Usage: deploy/demo.sh            LEAVES=N to change the fleet size (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LEAVES=${LEAVES:-20}
BROKER_PORT=${BROKER_PORT:-18883}
GW_PORT=${GW_PORT:-1884}
DTLS_PORT=${DTLS_PORT:-8884}
DEMO_PLAIN=${DEMO_PLAIN:-0}
WEB_PORT=${WEB_PORT:-8080}
STATE="$ROOT/demo-state"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

PACKAGES="build-essential cmake pkg-config libuv1-dev libwebsockets-dev libssl-dev \
  libsqlite3-dev libcjson-dev mosquitto mosquitto-clients openssl sqlite3 curl"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "== building fleetgw"
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-demo -j"$(nproc)" --target fleetgw fleetgw-leafsim >/dev/null
FLEETGW="$ROOT/build-demo/fleetgw"
LEAFSIM="$ROOT/build-demo/tests/leaf/fleetgw-leafsim"

mkdir -p "$STATE"
cd "$STATE"
if [ ! -f ca.crt ]; then
  echo "== creating a demo CA, the broker's certificate and the gateway's client certificate"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=fleetgw demo CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout broker.key -out broker.csr 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > broker.ext
  openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile broker.ext -out broker.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=fleetgw" \
    -keyout gateway.key -out gateway.csr 2>/dev/null
  openssl x509 -req -in gateway.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -out gateway.crt 2>/dev/null
  chmod 600 ./*.key
fi
if [ ! -f localca.crt ]; then
  echo "== creating the gateway's local CA (it signs one certificate per leaf)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=fleetgw demo local CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout localca.key -out localca.crt 2>/dev/null
  chmod 600 localca.key
fi
# The broker trusts client certificates from both CAs: the demo CA (the
# watcher's) and the gateway's local CA (the leaves').
cat ca.crt localca.crt > client-cas.pem

cat > mosquitto.conf <<EOF
# Run as the demo's user (mosquitto started by root would switch to the
# "mosquitto" user and could not read the demo's key files).
user $(id -un)
listener $BROKER_PORT 127.0.0.1
cafile $STATE/client-cas.pem
certfile $STATE/broker.crt
keyfile $STATE/broker.key
require_certificate true
use_identity_as_username true
allow_anonymous true
max_queued_messages 10000
log_dest file $STATE/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
EOF

# The simulated leaves all come from 127.0.0.1, like leaves behind a
# protocol converter: it is listed as one, with room for the whole fleet.
# "open" admits them without an operator; a real box keeps the default
# "approve" (README: "Choosing an admission policy").
NEW_IDS=$(( LEAVES > 100 ? LEAVES : 100 ))
# DTLS by default: the leaves prove who they are with a key each, and plain
# UDP is off (README: "Leaves over DTLS").
if [ "$DEMO_PLAIN" = 1 ]; then PLAIN_UDP=allow; DTLS_ON=false; else PLAIN_UDP=off; DTLS_ON=true; fi
cat > fleetgw.json <<EOF
{
  "log_level": "info",
  "gateway_id": 1,
  "lan": {
    "bind": "127.0.0.1", "port": $GW_PORT,
    "dtls": { "enabled": $DTLS_ON, "bind": "127.0.0.1", "port": $DTLS_PORT,
              "max_handshakes_per_ip": 64 }
  },
  "upstream": {
    "host": "localhost",
    "port": $BROKER_PORT,
    "tls": true,
    "ca_file": "$STATE/ca.crt",
    "keepalive_s": 60
  },
  "web": {
    "port": $WEB_PORT,
    "admin_token_file": "$STATE/admin.token",
    "static_dir": "$ROOT/web/static",
    "openapi_file": "$ROOT/web/openapi.json"
  },
  "registry": { "path": "$STATE/registry.db" },
  "admission": {
    "policy": "open", "pattern": "leaf-*",
    "converters": ["127.0.0.1"], "new_ids_per_converter": $NEW_IDS, "new_ids": $NEW_IDS,
    "plain_udp": "$PLAIN_UDP"
  },
  "provisioning": {
    "backend": "local-ca",
    "local_ca": { "cert_file": "$STATE/localca.crt", "key_file": "$STATE/localca.key", "create": false }
  }
}
EOF
"$FLEETGW" --config fleetgw.json --check-config

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "== stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "== stopped; logs in $STATE"
}
trap cleanup INT TERM EXIT

ulimit -n 65536 2>/dev/null || true
/usr/sbin/mosquitto -c mosquitto.conf &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$BROKER_PORT) 2>/dev/null && break
  sleep 0.1
done

log_from=$(( $(wc -l < fleetgw.log 2>/dev/null || echo 0) + 1 ))
"$FLEETGW" --config fleetgw.json 2> >(tee -a fleetgw.log >&2) &
pids+=($!)
# This run's "ready:" line, not an earlier run's (the log is appended to).
for _ in $(seq 100); do tail -n +"$log_from" fleetgw.log 2>/dev/null | grep -q "ready:" && break; sleep 0.1; done

# A key for each leaf that has none yet, made through the API (shown once,
# kept in leaf-psks.csv for the simulated leaves: a real leaf keeps it in its
# firmware or secure element).
LEAF_ARGS=(--gw "127.0.0.1:$GW_PORT")
if [ "$DEMO_PLAIN" != 1 ]; then
  touch leaf-psks.csv && chmod 600 leaf-psks.csv
  want=$(for i in $(seq 0 $((LEAVES - 1))); do echo "leaf-$i"; done)
  have=$(cut -d, -f1 leaf-psks.csv)
  new=$(comm -23 <(echo "$want" | sort) <(echo "$have" | sort) || true)
  if [ -n "$new" ]; then
    echo "== making DTLS keys for $(echo "$new" | wc -l) leaves (POST /api/v1/psks)"
    echo "$new" | curl -sS --fail-with-body -X POST -H "Authorization: Bearer $(cat admin.token)" \
      -H "Content-Type: text/csv" --data-binary @- "http://127.0.0.1:$WEB_PORT/api/v1/psks" \
      | tail -n +2 >> leaf-psks.csv
  fi
  LEAF_ARGS=(--gw "127.0.0.1:$DTLS_PORT" --dtls --psk-file "$STATE/leaf-psks.csv")
fi

TLS=(--cafile "$STATE/ca.crt" --cert "$STATE/gateway.crt" --key "$STATE/gateway.key")
echo "== the broker sees (mosquitto_sub on fleet/+/telemetry):"
mosquitto_sub -h localhost -p "$BROKER_PORT" "${TLS[@]}" -i demo-watcher -t 'fleet/+/telemetry' -v \
  | sed -u 's/^/[broker] /' &
pids+=($!)

"$LEAFSIM" "${LEAF_ARGS[@]}" -n "$LEAVES" --prefix leaf- --rate 0.2 --qos 1 \
  --topic 'fleet/%s/telemetry' --subscribe 'fleet/%s/cmd' | sed -u 's/^/[leaf]   /' &
pids+=($!)

echo "== $LEAVES leaves; a command goes to one of them every 10 s. Ctrl-C stops the demo."
echo "== registry: $STATE/registry.db (sqlite3 $STATE/registry.db 'select client_id, thing_name, state from devices')"
echo "== dashboard: http://127.0.0.1:$WEB_PORT/   token: $(cat "$STATE/admin.token")"
i=0
while true; do
  sleep 10
  leaf="leaf-$((i % LEAVES))"
  mosquitto_pub -h localhost -p "$BROKER_PORT" "${TLS[@]}" -i demo-commander -q 1 \
    -t "fleet/$leaf/cmd" -m "blink $i" || true
  echo "[demo]   sent 'blink $i' to fleet/$leaf/cmd"
  kill -USR1 "${pids[1]}" 2>/dev/null || true
  i=$((i + 1))
done
