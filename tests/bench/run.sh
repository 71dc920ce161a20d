#!/usr/bin/env bash
# tests/bench/run.sh - fleetgw benchmarks.  Prints figures; never passes or
# fails on timing (the exit status only says whether the benchmark could run).
#
# Builds Release into build-bench/ at the repository root, then runs
# tests/bench/bench.py, which starts its own mosquitto (plain TCP, and TLS with
# client certificates for the memory run) and its own fleetgw on free loopback
# ports.  See tests/bench/README.md for what each figure means.
#
# Environment (all optional):
#   BENCH_LEAVES       leaves for the TLS memory run (default 1000)
#   BENCH_MEMORY_TLS12=0  skip the memory run with upstream.tls_max_version "1.2"
#   BENCH_QOS0_RATES   offered QoS 0 rates, msgs/s (default 10k..150k; stops early once
#                      both paths lose messages)
#   BENCH_QOS0_SECS    seconds per QoS 0 step (default 3)
#   BENCH_QOS0_LEAVES  leaves / connections in the QoS 0 runs (default 100)
#   BENCH_QOS1_LEAVES  leaves in the connect and QoS 1 runs (default 1000)
#   BENCH_QOS1_SECS    seconds per QoS 1 run (default 5)
#   BENCH_QOS1_ROUNDS  interleaved direct/relayed closed-loop rounds, the median ratio kept (default 3)
#   BENCH_ONLY         comma list of sections: qos0,connect,qos1,memory,flood,dtls,outbox
#                      (default all)
#   BENCH_DTLS_LEAVES  leaves in the DTLS handshake and memory runs (default 2000)
#   BENCH_DTLS_QOS0_LEAVES, BENCH_DTLS_QOS0_RATE  the DTLS QoS 0 run (default 100 leaves,
#                      40000 msg/s in total)
#   BENCH_FLOOD_IDS    made-up ClientIds in the flood run (default 10000)
#   BENCH_OUTBOX_LEAVES  leaves in the outbox's outage runs (default 1000; 10000 works)
#   BENCH_OUTBOX_QOS1_LEAVES, BENCH_OUTBOX_ROUNDS, BENCH_OUTBOX_OPEN_RATE,
#   BENCH_OUTBOX_OPEN_SECS, BENCH_OUTBOX_OUTAGE_S, BENCH_OUTBOX_PUB_RATE,
#   BENCH_OUTBOX_CONNECT_RATE, BENCH_OUTBOX_BACKOFF_CAP_MS, BENCH_OUTBOX_RUNS
#                      the outbox section (tests/bench/README.md §7)
#   BENCH_NO_BUILD=1   use the binaries already in build-bench/
#   MOSQUITTO_BIN      default /usr/sbin/mosquitto
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build="$repo/build-bench"
py=/usr/bin/python3

# Every leaf is one UDP socket in the simulator and one TCP (TLS) connection
# in fleetgw and in mosquitto: raise the open files limit for all of them.
want=65536
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
  want=$hard
fi
ulimit -n "$want" 2>/dev/null || true
echo "open files limit: $(ulimit -n)"

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "== building Release into $build"
  mkdir -p "$build"
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build/cmake.log" 2>&1 ||
    { cat "$build/cmake.log"; exit 1; }
  make -C "$build" -j2 fleetgw fleetgw-leafsim >"$build/make.log" 2>&1 ||
    { tail -40 "$build/make.log"; exit 1; }
  # mqttload is a stand-alone libc program (see its header comment): built
  # here with the project's warning flags, not part of the CMake build.
  cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Wshadow \
    -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
    -o "$build/mqttload" "$repo/tests/bench/mqttload.c" -lm
  # snfloor: the trivial MQTT-SN responder the latency figures are measured
  # against as their floor (see its header comment).
  cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Wshadow \
    -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
    -o "$build/snfloor" "$repo/tests/bench/snfloor.c"
fi
for b in "$build/fleetgw" "$build/tests/leaf/fleetgw-leafsim" "$build/mqttload" "$build/snfloor"; do
  [ -x "$b" ] || { echo "missing $b (run without BENCH_NO_BUILD)"; exit 1; }
done

exec "$py" "$repo/tests/bench/bench.py" --build "$build" "$@"
