"""The DTLS section of tests/bench/bench.py (BENCH_ONLY=dtls).

Two gateways on one plain mosquitto, the same configuration except that one
serves its leaves over DTLS with a PSK each (made through the API, as an
operator would):
  handshakes  BENCH_DTLS_LEAVES leaves connect at once, over plain UDP and
              then over DTLS; the gateway CPU the DTLS run costs beyond the
              plain one, per handshake, gives PSK handshakes per CPU-second
  memory      RSS growth with those leaves connected and idle, DTLS against
              plain: the cost of one idle DTLS association.  All of them
              handshake at once, so this includes the heap the handshakes
              left fragmented (docs/dtls.md §10 has the live heap apart)
  qos0        BENCH_DTLS_QOS0_LEAVES leaves publishing QoS 0 at
              BENCH_DTLS_QOS0_RATE in total: received rate and gateway CPU per
              message, DTLS against plain, in BENCH_DTLS_QOS0_ROUNDS rounds
              (default 2) that alternate plain and DTLS; the capacity ratio is
              plain CPU per message over DTLS CPU per message, both summed
              over the rounds (CPU is counted in clock ticks, and the box is
              shared: one round alone moves by some 10 %)
Figures only, never a verdict; compare the two columns of the same run.
"""
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import bench as B


def api_post_csv(port, token, ids):
    """POST /api/v1/psks with ids; returns the CSV text (client_id,key lines)."""
    body = ("client_id\n" + "\n".join(ids) + "\n").encode()
    req = urllib.request.Request("http://%s:%d/api/v1/psks" % (B.LOOPBACK, port), data=body,
                                 method="POST", headers={"Content-Type": "text/csv",
                                                         "Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def make_psks(gw, ids, path):
    """Keys for ids through the gateway's bulk API (1,000 per request), written
    to path in the form fleetgw-leafsim --psk-file reads."""
    token = Path(gw.token_file).read_text().strip()
    lines = ["client_id,key"]
    for i in range(0, len(ids), 1000):
        text = api_post_csv(gw.web_port, token, ids[i:i + 1000])
        lines += [ln for ln in text.splitlines()[1:] if ln]
    Path(path).write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return len(lines) - 1


def start_gateway(b, work, broker, name, dtls, n):
    lan = {"max_leaves": max(n * 2, 10000)}
    extra = {}
    if dtls:
        # Every simulated leaf comes from 127.0.0.1: the per-IP handshake
        # bound would be the benchmark's limit, not the gateway.
        lan["dtls"] = {"enabled": True, "bind": B.LOOPBACK, "port": B.free_port(socket.SOCK_DGRAM),
                       "max_handshakes": 1024, "max_handshakes_per_ip": 1024}
        token = Path(work) / (name + "-admin.token")
        extra["web"] = {"enabled": True, "bind": B.LOOPBACK, "port": B.free_port(),
                        "admin_token_file": str(token)}
    gw = B.Gateway(b.fleetgw, work, broker, name=name, extra=extra, lan_extra=lan)
    if dtls:
        gw.dtls_addr = "%s:%d" % (B.LOOPBACK, lan["dtls"]["port"])
        gw.web_port = extra["web"]["port"]
        gw.token_file = extra["web"]["admin_token_file"]
        if not B.wait_until(lambda: Path(gw.token_file).exists(), 5):
            raise RuntimeError("no admin token file")
    return gw


def leafsim(b, gw, n, prefix, dtls, psk_file, *extra):
    cmd = b.leafsim_cmd(gw, n, prefix, *extra)
    if dtls:
        cmd[cmd.index("--gw") + 1] = gw.dtls_addr
        cmd += ["--dtls", "--psk-file", str(psk_file)]
    return cmd


def connect_idle(b, gw, n, prefix, dtls, psk_file, work):
    """Connects n idle leaves and keeps them; returns (proc, seconds to all up,
    gateway CPU ticks spent, RSS growth KiB)."""
    rss0, c0 = B.rss_kib(gw.pid), B.cpu_ticks(gw.pid)
    cmd = leafsim(b, gw, n, prefix, dtls, psk_file, "--connect-rate", 0, "--keepalive", 600,
                  "--retry-ms", 5000)
    B.show(cmd)
    p = B.Proc(cmd, Path(work) / ("leafsim-%s.log" % prefix.strip("-")))
    t0 = time.monotonic()

    def up():
        if not p.alive():
            raise RuntimeError("leafsim exited:\n" + p.text()[-2000:])
        return gw.metrics()["leaves_active"] >= n
    ok = B.wait_until(up, 120, interval=0.2)
    t_up = time.monotonic() - t0
    c1 = B.cpu_ticks(gw.pid)
    time.sleep(1.0)  # allocations settle
    rss1 = B.rss_kib(gw.pid)
    if not ok:
        print("   WARNING: only %d of %d leaves connected" % (gw.metrics()["leaves_active"], n))
    return p, t_up, c1 - c0, rss1 - rss0


def qos0_run(b, gw, broker, n, rate, secs, prefix, dtls, psk_file):
    topic = "bd%s" % prefix.strip("-")
    sub = b.start_sub(broker, topic + "/#")
    m0, c0 = gw.metrics(), B.cpu_ticks(gw.pid)
    st = b.run(leafsim(b, gw, n, prefix, dtls, psk_file, "--qos", 0, "--rate", "%g" % (rate / n),
                       "--duration", secs, "--topic", topic + "/%s"), timeout=secs + 120)
    c1, m1 = B.cpu_ticks(gw.pid), gw.metrics()
    got = b.stop_sub(sub)["received"]
    handled = m1["publish_in_qos0"] - m0["publish_in_qos0"]
    span = st["publish_span_s"] or secs
    return {"sent": st["publishes_sent"], "received": got, "received_per_s": got / span,
            "handled": handled, "gw_cpu_us": (c1 - c0) * B.TICK_US,
            "gw_cpu_us_per_msg": (c1 - c0) * B.TICK_US / handled if handled else 0}


def section_dtls(b, work):
    n = B.env_int("BENCH_DTLS_LEAVES", 2000)
    qn = B.env_int("BENCH_DTLS_QOS0_LEAVES", 100)
    qrate = B.env_int("BENCH_DTLS_QOS0_RATE", 40000)
    rounds = max(1, B.env_int("BENCH_DTLS_QOS0_ROUNDS", 2))
    secs = B.env_int("BENCH_QOS0_SECS", 3)
    print("\n== DTLS: %d idle leaves over plain UDP vs over DTLS (PSK-AES128-CCM8, a key each, "
          "made through POST /api/v1/psks); QoS 0 with %d leaves at %d msg/s" % (n, qn, qrate))
    broker = B.Broker(work)
    gws = []
    res = {}
    try:
        plain = start_gateway(b, work, broker, "fleetgw-plain", False, n)
        gws.append(plain)
        dtls = start_gateway(b, work, broker, "fleetgw-dtls", True, n)
        gws.append(dtls)
        psk_file = Path(work) / "psks.csv"
        ids = ["dl-%d" % i for i in range(n)] + ["dq-%d" % i for i in range(qn)]
        t0 = time.monotonic()
        made = make_psks(dtls, ids, psk_file)
        print("   %d PSKs made through the API in %.2f s" % (made, time.monotonic() - t0))
        for label, gw, is_dtls, prefix in (("plain", plain, False, "pl-"),
                                           ("dtls", dtls, True, "dl-")):
            p, t_up, ticks, rss = connect_idle(b, gw, n, prefix, is_dtls, psk_file, work)
            m = gw.metrics()
            p.stop(30)
            st = B.last_json(p.text()) or {}
            res[label] = {"seconds_to_all_up": t_up, "gw_cpu_s": ticks * B.TICK_US / 1e6,
                          "rss_growth_kib": rss, "leafsim": st,
                          "dtls_handshakes_done": m.get("dtls_handshakes_done", 0)}
            hs = st.get("dtls", {}).get("handshake_ms", {})
            print("   %-5s: %d leaves up in %.2f s, gateway CPU %.2f s, RSS +%d KiB (%.2f KiB a "
                  "leaf)%s" % (label, n, t_up, res[label]["gw_cpu_s"], rss, rss / n,
                               ", handshake p50 %.1f ms p99 %.1f ms" % (hs["p50"], hs["p99"])
                               if hs else ""), flush=True)
        extra_cpu = res["dtls"]["gw_cpu_s"] - res["plain"]["gw_cpu_s"]
        hs_per_cpu_s = n / extra_cpu if extra_cpu > 0 else float("inf")
        wall_hs = n / res["dtls"]["seconds_to_all_up"]
        extra_kib = (res["dtls"]["rss_growth_kib"] - res["plain"]["rss_growth_kib"]) / n
        print("   PSK handshakes: %.0f per gateway CPU-second (%.2f ms of CPU each beyond a "
              "plain CONNECT); %.0f leaves/s handshaked and connected end to end"
              % (hs_per_cpu_s, 1e3 * extra_cpu / n, wall_hs))
        print("   an idle DTLS association costs %.2f KiB beyond a plain session" % extra_kib)
        q = {"plain": [], "dtls": []}
        for rnd in range(rounds):
            for label, gw, is_dtls, prefix in (("plain", plain, False, "pq-"),
                                               ("dtls", dtls, True, "dq-")):
                r = qos0_run(b, gw, broker, qn, qrate, secs, prefix, is_dtls, psk_file)
                q[label].append(r)
                print("   QoS 0 %-5s (round %d): sent %d, received %.0f msg/s, gateway CPU %.2f "
                      "us/msg" % (label, rnd + 1, r["sent"], r["received_per_s"],
                                  r["gw_cpu_us_per_msg"]), flush=True)

        def total(label, key):
            return sum(r[key] for r in q[label])

        def us_per_msg(label):
            return total(label, "gw_cpu_us") / total(label, "handled") \
                if total(label, "handled") else 0
        ratio = total("dtls", "received_per_s") / total("plain", "received_per_s") \
            if total("plain", "received_per_s") else 0
        cpu_ratio = us_per_msg("plain") / us_per_msg("dtls") if us_per_msg("dtls") else 0
        print("   QoS 0 over %d rounds: gateway CPU %.2f us/msg plain, %.2f us/msg DTLS: capacity "
              "by CPU %.2f of plain; received rate %.2f of plain"
              % (rounds, us_per_msg("plain"), us_per_msg("dtls"), cpu_ratio, ratio))
    finally:
        for gw in gws:
            gw.stop()
        broker.stop()
    b.results["dtls"] = {"leaves": n, "connect": res, "handshakes_per_cpu_s": hs_per_cpu_s,
                         "kib_per_idle_association": extra_kib, "qos0": q,
                         "qos0_rate_ratio": ratio, "qos0_cpu_ratio": cpu_ratio}
    b.rows += [
        ("DTLS PSK handshakes per gateway CPU-second", "%.0f (%d leaves at once)"
         % (hs_per_cpu_s, n), ">= 500", "BENCH_ONLY=dtls"),
        ("DTLS idle association beyond a plain session", "%.2f KiB" % extra_kib, "<= 8 KiB",
         "VmRSS growth, %d leaves each way" % n),
        ("QoS 0 over DTLS / plain UDP (received rate)", "%.0f %%" % (100 * ratio), ">= 70 %",
         "%d leaves at %d msg/s each way, %d rounds" % (qn, qrate, rounds)),
        ("QoS 0 capacity over DTLS / plain by gateway CPU", "%.0f %% (%.2f vs %.2f us/msg)"
         % (100 * cpu_ratio, us_per_msg("dtls"), us_per_msg("plain")), ">= 70 %",
         "the same runs"),
    ]
    print(json.dumps({"dtls": {"handshakes_per_cpu_s": round(hs_per_cpu_s),
                               "kib_per_idle_association": round(extra_kib, 2),
                               "qos0_ratio": round(ratio, 3),
                               "qos0_cpu_ratio": round(cpu_ratio, 3)}}))
