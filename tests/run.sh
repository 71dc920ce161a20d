#!/usr/bin/env bash
# tests/run.sh - set up this machine (Debian 12) and run every test of fleetgw:
#   1. unit tests and fuzz-corpus replays, built with AddressSanitizer and
#      UndefinedBehaviorSanitizer (ctest);
#   2. each libFuzzer target for a short time (clang);
#   3. the integration suite against a real mosquitto and the AWS IoT simulator,
#      and the dashboard in headless Chromium (pytest).
# Usage: tests/run.sh            (FUZZ_SECONDS=N to change the fuzzing time)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

PACKAGES="build-essential cmake pkg-config clang libclang-rt-14-dev \
  libuv1-dev libwebsockets-dev libssl-dev libsqlite3-dev libcjson-dev \
  mosquitto mosquitto-clients openssl python3 python3-pytest python3-paho-mqtt sqlite3 curl \
  chromium firefox-esr"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
# The AWS IoT simulator (tests/sim) runs on Node.js >= 18: Debian's nodejs
# and npm unless a Node.js is installed already.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing: nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
(cd tests/sim && npm ci --no-audit --no-fund --loglevel=error)
# The dashboard's browser test drives Debian's Chromium with playwright-core.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# The Debian mosquitto package starts a broker on port 1883; tests use their own.
PY=/usr/bin/python3

echo "== build (ASan + UBSan)"
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DFLEETGW_SANITIZE=ON >/dev/null
cmake --build build-test -j"$(nproc)"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

echo "== unit tests and fuzz corpus replay"
(cd build-test && ctest --output-on-failure -j"$(nproc)")

echo "== fuzzing (${FUZZ_SECONDS}s per target, clang + libFuzzer)"
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DFLEETGW_FUZZ=ON >/dev/null
targets=$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//')
cmake --build build-fuzz -j"$(nproc)" --target $targets
for t in $targets; do
  dict=""
  [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
  work=$(mktemp -d)
  cp -r "tests/fuzz/corpus/$t/." "$work/"
  echo "-- $t"
  ./build-fuzz/tests/$t -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 $dict "$work" 2>&1 | tail -n 2
  rm -rf "$work"
done

echo "== integration and browser tests (real mosquitto, the AWS IoT simulator, Chromium; all on 127.0.0.1)"
FLEETGW_BIN="$ROOT/build-test/fleetgw" BUILD_DIR="$ROOT/build-test" $PY -m pytest -q -p no:cacheprovider \
  tests/leaf tests/sim tests/integration tests/browser
