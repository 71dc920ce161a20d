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
# Ctrl-C (or SIGINT/SIGTERM to this script's PID: kill, timeout, a supervisor)
# stops everything it started, in order: the leaves and the watcher, then the
# gateway (its graceful stop), then the broker; a second signal during the stop
# kills what is left at once.  State (certificates, logs, config) is in
# ./demo-state and is reused by the next run.
#
# Usage: deploy/demo.sh
#   LEAVES=N          the fleet size (default 20)
#   DEMO_SECONDS=N    stop by itself after N seconds (default 0: until a signal)
#   DEMO_STATE=DIR    the state directory (default ./demo-state)
#   DEMO_BUILD_DIR=D  use the fleetgw and fleetgw-leafsim already built in D
#                     (no build; default: build them in ./build-demo)
#   DEMO_PLAIN=1      plain UDP instead of DTLS
#   BROKER_PORT, GW_PORT, DTLS_PORT, WEB_PORT   the ports (18883, 1884, 8884, 8080)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LEAVES=${LEAVES:-20}
BROKER_PORT=${BROKER_PORT:-18883}
GW_PORT=${GW_PORT:-1884}
DTLS_PORT=${DTLS_PORT:-8884}
DEMO_PLAIN=${DEMO_PLAIN:-0}
WEB_PORT=${WEB_PORT:-8080}
DEMO_SECONDS=${DEMO_SECONDS:-0}
DEMO_BUILD_DIR=${DEMO_BUILD_DIR:-}
STATE=${DEMO_STATE:-$ROOT/demo-state}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# Until the first process is started a signal simply ends the script.
trap 'exit 130' INT
trap 'exit 143' TERM

PACKAGES="build-essential cmake pkg-config libuv1-dev libwebsockets-dev libssl-dev \
  libsqlite3-dev libcjson-dev mosquitto mosquitto-clients openssl sqlite3 curl"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ -n "$DEMO_BUILD_DIR" ]; then
  BUILD=$(cd "$DEMO_BUILD_DIR" && pwd)
else
  echo "== building fleetgw"
  BUILD="$ROOT/build-demo"
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" --target fleetgw fleetgw-leafsim >/dev/null
fi
FLEETGW="$BUILD/fleetgw"
LEAFSIM="$BUILD/tests/leaf/fleetgw-leafsim"
for b in "$FLEETGW" "$LEAFSIM"; do
  [ -x "$b" ] || { echo "demo: $b is missing" >&2; exit 1; }
done

# listening PORT: a TCP socket listens on PORT (read from /proc, so that the
# check makes no connection for the broker to log as a failed handshake).  A
# port someone else listens on would make this run talk to another run's
# processes: refuse to start instead.
listening() {
  local f files=()
  for f in /proc/net/tcp /proc/net/tcp6; do [ ! -r "$f" ] || files+=("$f"); done
  awk -v p="$(printf '%04X' "$1")" '$4 == "0A" && substr($2, index($2, ":") + 1) == p { f = 1 }
    END { exit !f }' "${files[@]}"
}
for p in "$BROKER_PORT" "$WEB_PORT"; do
  if listening "$p"; then
    echo "demo: 127.0.0.1:$p is in use (another demo?); set BROKER_PORT/WEB_PORT" >&2
    exit 1
  fi
done

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

# mosquitto started by root switches to the user named here ("should not be
# run as root" otherwise).  As root it runs as the mosquitto user, with its
# certificate, key and CA bundle copied to a directory of its own (the state
# directory may be one it cannot enter); as anyone else, as that user.
BROKER_DIR="$STATE"
BROKER_USER=$(id -un)
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  BROKER_DIR=$(mktemp -d /tmp/fleetgw-demo-broker.XXXXXX)
  install -o mosquitto -g root -m 0400 broker.crt broker.key client-cas.pem "$BROKER_DIR/"
  chown mosquitto "$BROKER_DIR"
  BROKER_USER=mosquitto
fi
cat > mosquitto.conf <<EOF
user $BROKER_USER
listener $BROKER_PORT 127.0.0.1
cafile $BROKER_DIR/client-cas.pem
certfile $BROKER_DIR/broker.crt
keyfile $BROKER_DIR/broker.key
require_certificate true
use_identity_as_username true
allow_anonymous true
max_queued_messages 10000
# stderr, appended to $STATE/mosquitto.log by the demo
log_dest stderr
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

# ---- the processes ------------------------------------------------------------
# Each program runs in a session of its own (setsid, which execs in place, so
# $! is the program's PID): Ctrl-C at the terminal reaches only this script,
# which stops them in order.  Their output goes through filters (prefixes, the
# gateway's log file) that ignore INT and TERM, so that nothing loses its
# output while it stops; a filter ends when its program closes the pipe.
BROKER_PID="" GW_PID="" SUB_PID="" LEAF_PID="" TICK_PID=""
STOP=""     # the signal's exit status once one asked the demo to stop
HURRY=""    # a second signal during the stop: SIGKILL what is left
trap 'STOP=130' INT
trap 'STOP=143' TERM

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# stop_proc NAME PID SECONDS: SIGTERM, then SIGKILL after SECONDS (or at once
# after a second signal), then reap it.
stop_proc() {
  local name=$1 pid=$2 secs=$3 i
  alive "$pid" || { [ -z "$pid" ] || wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for (( i = 0; i < secs * 10; i++ )); do
    alive "$pid" || break
    [ -z "$HURRY" ] || break
    sleep 0.1
  done
  if alive "$pid"; then
    echo "== $name (pid $pid) still running: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

STATES="case state when 0 then 'pending' when 1 then 'approved' when 2 then 'provisioning'\
 when 3 then 'active' when 4 then 'failed' when 5 then 'blocked' when 6 then 'revoked'\
 else state end"
DEVICES_SQL="select client_id, thing_name, $STATES as state from devices order by id"

cleanup() {
  local rc=${1:-0}
  trap 'HURRY=1' INT TERM
  trap - EXIT
  echo
  echo "== stopping: leaves, then the gateway, then the broker"
  alive "$TICK_PID" && kill "$TICK_PID" 2>/dev/null
  [ -z "$TICK_PID" ] || wait "$TICK_PID" 2>/dev/null || true
  stop_proc fleetgw-leafsim "$LEAF_PID" 10
  stop_proc mosquitto_sub "$SUB_PID" 5
  stop_proc fleetgw "$GW_PID" 15
  stop_proc mosquitto "$BROKER_PID" 5
  if [ "$BROKER_DIR" != "$STATE" ]; then rm -rf "$BROKER_DIR"; fi
  if [ -f registry.db ] && command -v sqlite3 >/dev/null; then
    echo "== the registry ($STATE/registry.db):"
    sqlite3 -readonly registry.db "$DEVICES_SQL" 2>/dev/null | sed 's/^/[registry] /' | head -n 20 || true
  fi
  echo "== stopped; logs in $STATE"
  exit "$rc"
}
trap 'cleanup $?' EXIT

# tick SECONDS: sleeps, but returns as soon as a signal arrives.
tick() {
  sleep "$1" &
  TICK_PID=$!
  wait "$TICK_PID" 2>/dev/null || true
  kill "$TICK_PID" 2>/dev/null || true   # still sleeping when a signal cut the wait
  wait "$TICK_PID" 2>/dev/null || true
  TICK_PID=""
}
check_stop() { if [ -n "$STOP" ]; then cleanup "$STOP"; fi; }

ulimit -n 65536 2>/dev/null || true
setsid /usr/sbin/mosquitto -c mosquitto.conf 2>>mosquitto.log &
BROKER_PID=$!
for _ in $(seq 50); do
  listening "$BROKER_PORT" && break
  alive "$BROKER_PID" || { echo "demo: mosquitto exited; see $STATE/mosquitto.log" >&2; exit 1; }
  tick 0.1; check_stop
done
listening "$BROKER_PORT" || { echo "demo: mosquitto does not listen on $BROKER_PORT" >&2; exit 1; }

# The gateway's whole log goes to fleetgw.log; the terminal shows it without
# the metrics lines (about 1,000 characters each, one every 10 s).
echo "== fleetgw: log in $STATE/fleetgw.log (the metrics lines only there)"
setsid "$FLEETGW" --config fleetgw.json \
  2> >(trap '' INT TERM; tee -a fleetgw.log | grep --line-buffered -v ' metrics: metrics ' >&2) &
GW_PID=$!
# Ready means this run's gateway answers GET /api/v1/health (the port was free
# before it started, and it is still running).
ready=""
for _ in $(seq 300); do
  alive "$GW_PID" || { echo "demo: fleetgw exited; see $STATE/fleetgw.log" >&2; exit 1; }
  if curl -fsS --max-time 1 "http://127.0.0.1:$WEB_PORT/api/v1/health" >/dev/null 2>&1; then
    ready=1; break
  fi
  tick 0.1; check_stop
done
[ -n "$ready" ] || { echo "demo: fleetgw not ready after 30 s; see $STATE/fleetgw.log" >&2; exit 1; }

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
check_stop

TLS=(--cafile "$STATE/ca.crt" --cert "$STATE/gateway.crt" --key "$STATE/gateway.key")
echo "== the broker sees (mosquitto_sub on fleet/+/telemetry):"
setsid mosquitto_sub -h localhost -p "$BROKER_PORT" "${TLS[@]}" -i demo-watcher \
  -t 'fleet/+/telemetry' -v > >(trap '' INT TERM; exec sed -u 's/^/[broker] /') &
SUB_PID=$!

setsid "$LEAFSIM" "${LEAF_ARGS[@]}" -n "$LEAVES" --prefix leaf- --rate 0.2 --qos 1 \
  --topic 'fleet/%s/telemetry' --subscribe 'fleet/%s/cmd' \
  > >(trap '' INT TERM; exec sed -u 's/^/[leaf]   /') &
LEAF_PID=$!

echo "== $LEAVES leaves; a command goes to one of them every 10 s. Ctrl-C stops the demo."
echo "== registry: sqlite3 $STATE/registry.db \"$DEVICES_SQL\""
echo "== dashboard: http://127.0.0.1:$WEB_PORT/   token: $(cat "$STATE/admin.token")"
[ "$DEMO_SECONDS" = 0 ] || echo "== stopping by itself after $DEMO_SECONDS s"
i=0
started=$SECONDS
next=$(( SECONDS + 10 ))
while :; do
  tick 1
  check_stop
  if [ "$DEMO_SECONDS" != 0 ] && (( SECONDS - started >= DEMO_SECONDS )); then
    cleanup 0
  fi
  for p in "$BROKER_PID:mosquitto" "$GW_PID:fleetgw" "$LEAF_PID:fleetgw-leafsim"; do
    if ! alive "${p%%:*}"; then
      echo "demo: ${p#*:} exited; see the logs in $STATE" >&2
      cleanup 1
    fi
  done
  (( SECONDS >= next )) || continue
  next=$(( SECONDS + 10 ))
  leaf="leaf-$((i % LEAVES))"
  if mosquitto_pub -h localhost -p "$BROKER_PORT" "${TLS[@]}" -i demo-commander -q 1 \
       -t "fleet/$leaf/cmd" -m "blink $i"; then
    echo "[demo]   sent 'blink $i' to fleet/$leaf/cmd"
  fi
  kill -USR1 "$GW_PID" 2>/dev/null || true
  i=$((i + 1))
done
