#!/usr/bin/python3
"""REST API under load: how fast fleetgw answers its operators while it relays.

Starts its own mosquitto and fleetgw (web server enabled) on free 127.0.0.1
ports, connects fleetgw-leafsim leaves (default 1,000, each publishing QoS 1
once a second, one upstream session each), then hammers
GET /api/v1/status and GET /api/v1/devices?limit=50 from a few threads, each
on its own kept-alive HTTP connection, for a while (default 15 s).  The same
hammering runs first for a few seconds with no leaves, as the reference.

Prints p50/p90/p99/max latency and the request rate per endpoint, the
gateway's CPU, and the leaves' QoS 1 round trip measured while the API was
busy.  Like bench.py it prints figures and never passes or fails on timing;
the exit status only says whether it could run.

    tests/bench/run.sh builds build-bench/ (or BENCH_NO_BUILD=1 to reuse it), then:
    /usr/bin/python3 tests/bench/api_load.py [--build build-bench] [--leaves 1000]
        [--threads 4] [--seconds 15] [--keep]
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (Broker, Proc, free_port, wait_until, cpu_ticks, ...)

REPO = Path(__file__).resolve().parents[2]
ENDPOINTS = ("/api/v1/status", "/api/v1/devices?limit=50")


class WebGateway(bench.Proc):
    """fleetgw with its web server on a free port; plain upstream, open
    admission, no provisioning backend (every leaf gets its own upstream
    session at once)."""

    def __init__(self, binary, workdir, broker, token):
        self.udp_port = bench.free_port(socket.SOCK_DGRAM)
        self.web_port = bench.free_port()
        self.token = token
        cfg = {
            "log_level": "info",
            "lan": {"bind": bench.LOOPBACK, "port": self.udp_port, "connack_timeout_ms": 30000},
            "upstream": {"host": bench.LOOPBACK, "port": broker.port, "tls": False,
                         "keepalive_s": 60, "connect_timeout_ms": 20000, "give_up_after_s": 60},
            "registry": {"path": str(Path(workdir) / "registry.db")},
            "admission": {"policy": "open", "new_ids_per_port": 0, "new_ids_per_ip": 0,
                          "new_ids": 0},
            "web": {"enabled": True, "bind": bench.LOOPBACK, "port": self.web_port,
                    "admin_token_env": "FLEETGW_ADMIN_TOKEN", "open_health": True,
                    "open_metrics": False, "static_dir": str(REPO / "web" / "static"),
                    "openapi_file": str(REPO / "web" / "openapi.json")},
        }
        self.config = Path(workdir) / "fleetgw-web.json"
        self.config.write_text(json.dumps(cfg, indent=2))
        # The token reaches fleetgw through its environment (inherited).
        os.environ["FLEETGW_ADMIN_TOKEN"] = token
        super().__init__([binary, "--config", self.config], Path(workdir) / "fleetgw-web.log")
        if not bench.wait_until(lambda: "ready" in self.text() or not self.alive(), 10) \
                or not self.alive():
            raise RuntimeError("fleetgw did not start:\n" + self.text()[-2000:])
        if not bench.wait_until(self._answers, 10):
            raise RuntimeError("fleetgw's web server does not answer on %d:\n%s"
                               % (self.web_port, self.text()[-2000:]))
        self.addr = "%s:%d" % (bench.LOOPBACK, self.udp_port)

    def _answers(self):
        try:
            return self.get("/api/v1/health")[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def get(self, path):
        c = http.client.HTTPConnection(bench.LOOPBACK, self.web_port, timeout=10)
        try:
            c.request("GET", path, headers={"Authorization": "Bearer " + self.token})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def status(self):
        st, body = self.get("/api/v1/status")
        return json.loads(body) if st == 200 else {}


def pct(sorted_vals, p):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def hammer(gw, threads, seconds):
    """GETs the endpoints in turn from `threads` threads for `seconds`;
    returns ({endpoint: [latency s]}, {endpoint: non-200 count}, errors,
    elapsed)."""
    lat = {e: [] for e in ENDPOINTS}
    bad = {e: 0 for e in ENDPOINTS}
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    hdrs = {"Authorization": "Bearer " + gw.token}

    def worker(i):
        mine = {e: [] for e in ENDPOINTS}
        mybad = {e: 0 for e in ENDPOINTS}
        myerr = 0
        conn = None
        n = i
        while time.monotonic() < stop_at:
            ep = ENDPOINTS[n % len(ENDPOINTS)]
            n += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(bench.LOOPBACK, gw.web_port, timeout=10)
                t0 = time.perf_counter()
                conn.request("GET", ep, headers=hdrs)
                r = conn.getresponse()
                r.read()
                dt = time.perf_counter() - t0
                mine[ep].append(dt)
                if r.status != 200:
                    mybad[ep] += 1
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                myerr += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()
        with lock:
            for e in ENDPOINTS:
                lat[e] += mine[e]
                bad[e] += mybad[e]
            errors[0] += myerr

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return lat, bad, errors[0], time.monotonic() - t0


def report(label, lat, bad, errors, elapsed):
    print("   %s: %.1f s, %d request errors" % (label, elapsed, errors))
    rows = {}
    every = sorted(v for e in ENDPOINTS for v in lat[e])
    for name, vals in [(e, sorted(lat[e])) for e in ENDPOINTS] + [("all", every)]:
        row = {"requests": len(vals), "per_s": len(vals) / elapsed if elapsed else 0,
               "p50_ms": pct(vals, 50) * 1e3, "p90_ms": pct(vals, 90) * 1e3,
               "p99_ms": pct(vals, 99) * 1e3, "max_ms": (vals[-1] if vals else float("nan")) * 1e3,
               "non_200": bad.get(name, sum(bad.values()))}
        rows[name] = row
        print("     %-26s %7d req %8.0f req/s | p50 %7.2f ms p90 %7.2f ms p99 %7.2f ms "
              "max %8.2f ms | non-200: %d"
              % (name, row["requests"], row["per_s"], row["p50_ms"], row["p90_ms"],
                 row["p99_ms"], row["max_ms"], row["non_200"]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(REPO / "build-bench"), help="build directory")
    ap.add_argument("--leaves", type=int, default=int(os.environ.get("BENCH_API_LEAVES", 1000)))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_API_THREADS", 4)))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_API_SECS", 15)))
    ap.add_argument("--idle-seconds", type=float, default=5.0,
                    help="length of the reference run with no leaves")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()

    build = Path(args.build)
    fleetgw = build / "fleetgw"
    leafsim = build / "tests" / "leaf" / "fleetgw-leafsim"
    for b in (fleetgw, leafsim):
        if not os.access(b, os.X_OK):
            print("missing %s (build it: tests/bench/run.sh, or cmake --build %s)" % (b, build))
            return 1
    work = Path(tempfile.mkdtemp(prefix="fleetgw-apiload-"))
    print("work directory: %s   (%d CPUs)" % (work, os.cpu_count()))
    broker = gw = sim = None
    rc = 0
    results = {}
    try:
        broker = bench.Broker(work)
        gw = WebGateway(fleetgw, work, broker, "bench-" + uuid.uuid4().hex)
        print("mosquitto on %d, fleetgw on udp %s, web on http://127.0.0.1:%d"
              % (broker.port, gw.addr, gw.web_port))

        print("\n== reference: no leaves, %d threads, %.0f s" % (args.threads, args.idle_seconds))
        c0 = bench.cpu_ticks(gw.pid)
        lat, bad, errs, el = hammer(gw, args.threads, args.idle_seconds)
        results["idle"] = report("idle", lat, bad, errs, el)
        results["idle"]["gw_cpu_pct"] = (bench.cpu_ticks(gw.pid) - c0) * bench.TICK_US / 1e4 / el
        print("     fleetgw CPU %.0f %%" % results["idle"]["gw_cpu_pct"])

        print("\n== %d leaves publishing QoS 1 at 1 msg/s each" % args.leaves)
        duration = 60 + args.seconds + 10
        cmd = [leafsim, "--gw", gw.addr, "-n", args.leaves, "--prefix", "api-", "--rate", 1,
               "--qos", 1, "--stats", "--duration", int(duration)]
        bench.show(cmd)
        sim = bench.Proc(cmd, work / "leafsim.log")
        t_conn = time.monotonic()
        ok = bench.wait_until(lambda: gw.status().get("leaves", {}).get("active", 0)
                              >= args.leaves or not sim.alive(), 60, interval=0.5)
        st = gw.status()
        print("   %d of %d leaves active after %.1f s; %d devices in the registry"
              % (st.get("leaves", {}).get("active", 0), args.leaves, time.monotonic() - t_conn,
                 sum(st.get("devices", {}).values())), flush=True)
        if not ok:
            print("   (not every leaf connected; measuring anyway)")
        time.sleep(2)   # let the publishing settle

        print("\n== loaded: %d threads, %.0f s" % (args.threads, args.seconds))
        c0 = bench.cpu_ticks(gw.pid)
        m0 = gw.status()
        lat, bad, errs, el = hammer(gw, args.threads, args.seconds)
        m1 = gw.status()
        results["loaded"] = report("loaded", lat, bad, errs, el)
        cpu = (bench.cpu_ticks(gw.pid) - c0) * bench.TICK_US / 1e4 / el
        relayed = (m1.get("msgs_in", 0) - m0.get("msgs_in", 0)) / el
        results["loaded"].update(gw_cpu_pct=cpu, relayed_per_s=relayed)
        print("     fleetgw CPU %.0f %%, relaying %.0f msg/s meanwhile" % (cpu, relayed))

        sim.p.send_signal(signal.SIGTERM)
        try:
            sim.p.wait(30)
        except subprocess.TimeoutExpired:
            pass
        sim.stop()
        try:
            s = bench.last_json(sim.text())
            lat_us = s["latency_us"]
            results["leaves"] = s
            print("   leaves: %d connected, %d QoS 1 publishes acked, round trip p50 %.2f ms "
                  "p99 %.2f ms max %.2f ms (over the whole run)"
                  % (s["connected"], s["publishes_acked"], lat_us["p50"] / 1e3,
                     lat_us["p99"] / 1e3, lat_us["max"] / 1e3))
        except (RuntimeError, KeyError, ValueError) as e:
            print("   (no leafsim summary: %s)" % e)
        sim = None
    except Exception as e:  # print what we have, then the error
        print("\nAPI LOAD ERROR: %s" % e)
        rc = 1
        args.keep = True
    finally:
        if sim is not None:
            sim.stop()
        if gw is not None:
            gw_rc = gw.stop()
            if gw_rc != 0:
                print("WARNING: fleetgw exited %s on SIGTERM" % gw_rc)
        if broker is not None:
            broker.stop()

    if "loaded" in results:
        print("\n== summary (this machine, this run)")
        for k in ("idle", "loaded"):
            a = results[k]["all"]
            print("  API %-7s %6.0f req/s  p50 %6.2f ms  p90 %6.2f ms  p99 %6.2f ms  max %7.2f ms"
                  % (k, a["per_s"], a["p50_ms"], a["p90_ms"], a["p99_ms"], a["max_ms"]))
    out = build / "api-load-results.json"
    try:
        out.write_text(json.dumps(results, indent=2))
        print("raw figures: %s" % out)
    except OSError:
        pass
    if args.keep:
        print("logs kept in %s" % work)
    else:
        subprocess.run(["rm", "-rf", str(work)])
    return rc


if __name__ == "__main__":
    sys.exit(main())
