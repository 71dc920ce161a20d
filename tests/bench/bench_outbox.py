"""The outbox section of tests/bench/bench.py (BENCH_ONLY=outbox): store and
forward (issue 11, docs/outbox.md) against the targets

  "Through the outbox: QoS 1 acknowledged to the leaf in <= 5 ms p99 at
   20,000 msg/s across 1,000 leaves (group commit), and >= 0.9 of the
   in-memory path's rate"
  "After an uplink outage, 10,000 leaves back within 30 s, paced within the
   cloud's connect limits, with zero acknowledged QoS 1 lost"

Four runs, all on one plain mosquitto:
  closed   BENCH_OUTBOX_QOS1_LEAVES leaves (1,000), QoS 1, one publish in
           flight each, publishing again as soon as the PUBACK comes:
           acknowledged rate, PUBACK p50/p99 and gateway CPU per message with
           the outbox and with outbox.enabled false (two gateways side by
           side, same configuration otherwise), BENCH_OUTBOX_ROUNDS rounds
           (3) that alternate the order; medians; the ratio of the medians
  open     the same leaves at BENCH_OUTBOX_OPEN_RATE msg/s in total (20,000),
           open loop (each leaf on its own schedule, still one in flight):
           PUBACK p50/p99, the rate reached, gateway CPU per message, group
           commits per second and messages per commit; the in-memory path at
           the same rate next to it
  outage   BENCH_OUTBOX_LEAVES leaves (1,000; 10,000 is feasible here) through
           a cut-able TCP proxy (mqttload proxy) in front of mosquitto, the
           default connect pacing (upstream.connect_rate_per_s 500, as AWS
           IoT's account quota), publishing QoS 1 at BENCH_OUTBOX_PUB_RATE a
           leaf (2/s); the link is cut for BENCH_OUTBOX_OUTAGE_S (10 s); then
           the leaves are frozen (SIGSTOP: no new messages, so the drain is
           the backlog alone; they stay connected), the link is restored,
           and the run times: the leaves' upstream sessions all back, the
           outbox empty, the last message at the subscriber; the proxy's log
           of accepted connections gives the reconnect pacing.  A checking
           subscriber (mqttload sub --check) at the broker verifies every
           leaf's order, counts duplicates and holes
  kill     the same, but the gateway is SIGKILLed at the end of the outage
           while the leaves still publish, and restarted on the same
           registry with the link still down; its drain links deliver what
           was on disk: every acknowledged message must arrive
BENCH_OUTBOX_RUNS picks some of closed,open,outage,kill (default all);
BENCH_OUTBOX_COMMIT_MS sets outbox.commit_ms for every run (default the
gateway's, 0: a commit every loop turn that staged something).
BENCH_OUTBOX_BACKOFF_CAP_MS sets upstream.backoff_cap_ms for every run (default
the gateway's, 60 s: after an outage the upstreams come back when their
back-off says, which the outage run shows).  Parts 1-2 run without a
subscriber at the broker (a cloud broker is not on this box; the qos1
section has one, so its figures are not these).  Figures only, never a
verdict; the box is shared, so ratios within the run are what to compare,
and the section ends with the CPU that other processes used meanwhile.
"""
import json
import os
import signal
import socket
import statistics
import time
from pathlib import Path

import bench as B


class Via:
    """Where a gateway's upstream goes: the broker, or a proxy in front of it."""

    def __init__(self, port):
        self.port = port
        self.tls = False


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_by_process():
    """utime + stime (ticks) and name of every process on the box."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        rest = raw.rsplit(")", 1)[1].split()
        out[int(d)] = (name, int(rest[11]) + int(rest[12]), int(rest[1]))  # name, ticks, ppid
    return out


def descendants(snap, root):
    kids = {}
    for pid, (_, _, ppid) in snap.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += kids.get(p, [])
    return seen


class BoxWatch:
    """CPU that other work on the box used while the section ran (processes
    that are not this benchmark's), so that a noisy run says so."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.snap0 = cpu_by_process()
        self.ours = set()
        self.load0 = loadavg()

    def note(self):
        """Call while the bench's children run: remembers them as ours."""
        self.ours |= descendants(cpu_by_process(), os.getpid())

    def report(self):
        snap1 = cpu_by_process()
        self.ours |= descendants(snap1, os.getpid())
        secs = time.monotonic() - self.t0
        foreign = []
        for pid, (name, ticks, _) in snap1.items():
            if pid in self.ours:
                continue
            used = ticks - (self.snap0[pid][1] if pid in self.snap0 else 0)
            if used > 0:
                foreign.append((used * B.TICK_US / 1e6, name))
        foreign.sort(reverse=True)
        total = sum(s for s, _ in foreign)
        return {"seconds": secs, "foreign_cpu_s": total,
                "foreign_cores": total / secs if secs else 0,
                "top": ["%s %.1f s" % (n, s) for s, n in foreign[:4]],
                "load_before": self.load0, "load_after": loadavg()}


def upstream_cfg(port, connect_rate):
    # As bench.Gateway's, with the connect pacing set (the outage keeps the
    # gateway's default, 500/s).
    up = {"host": B.LOOPBACK, "port": port, "tls": False, "keepalive_s": 60,
          "connect_timeout_ms": 20000, "give_up_after_s": 60,
          "connect_rate_per_s": connect_rate}
    if os.environ.get("BENCH_OUTBOX_BACKOFF_CAP_MS"):  # default: the gateway's (60 s)
        cap = B.env_int("BENCH_OUTBOX_BACKOFF_CAP_MS", 60000)
        up.update(backoff_cap_ms=cap, backoff_base_ms=min(1000, cap))
    return up


def start_gw(b, work, name, port, outbox, leaves, connect_rate):
    extra = {"upstream": upstream_cfg(port, connect_rate),
             "outbox": {"enabled": outbox}}
    if os.environ.get("BENCH_OUTBOX_COMMIT_MS"):  # default: the gateway's (0)
        extra["outbox"]["commit_ms"] = B.env_int("BENCH_OUTBOX_COMMIT_MS", 0)
    return B.Gateway(b.fleetgw, work, Via(port), name=name, extra=extra,
                     lan_extra={"max_leaves": max(2 * leaves, 10000)})


def restart_gw(gw):
    """The same gateway again (its config, registry, UDP port, log)."""
    before = gw.text().count("ready:")
    gw._f.close()
    B.Proc.__init__(gw, gw.cmd, gw.log)
    if not B.wait_until(lambda: gw.text().count("ready:") > before or not gw.alive(), 30) \
            or not gw.alive():
        raise RuntimeError("fleetgw did not restart:\n" + gw.text()[-2000:])


def wait_metric(gw, pred, timeout, interval=0.1):
    """Polls the metrics until pred(m); returns (m, monotonic time) or (m, None)."""
    deadline = time.monotonic() + timeout
    while True:
        m = gw.metrics()
        t = time.monotonic()
        if pred(m):
            return m, t
        if t >= deadline:
            return m, None
        time.sleep(interval)


def lat_ms(st, k):
    return st["latency_us"][k] / 1e3


def med(xs):
    return statistics.median(xs) if xs else 0.0


# ---------------------------------------------------------------------------
# closed and open loop
# ---------------------------------------------------------------------------
def qos1_run(b, gw, n, prefix, topic, *args):
    """One leafsim QoS 1 run against gw; returns its figures, gateway CPU
    included up to the outbox being empty again (the delivery's cost too)."""
    m0, c0 = gw.metrics(), B.cpu_ticks(gw.pid)
    # The clock starts in the steady state, every leaf connected (bench.py
    # section_qos1, START_TOGETHER_MS).
    st = b.run(b.leafsim_cmd(gw, n, prefix, "--qos", 1, "--connect-rate", 10000,
                             "--retry-ms", 5000, "--topic", topic,
                             "--start-together", B.START_TOGETHER_MS) + [str(a) for a in args],
               timeout=300)
    m1 = gw.metrics()
    t1 = time.monotonic()
    m2, t2 = wait_metric(gw, lambda m: m["outbox_messages"] == 0, 120)
    c2 = B.cpu_ticks(gw.pid)
    handled = m1["publish_in_qos1"] - m0["publish_in_qos1"]
    span = st["publish_span_s"] or 1
    delivered = m2["outbox_delivered"] - m0["outbox_delivered"]
    # With the outbox the PUBACK comes before the broker has the message:
    # what the broker got per second, until the outbox was empty again, is
    # the rate the path sustains (delivery is paced: outbox.rate_per_leaf).
    sustained = delivered / (span + (t2 - t1)) if delivered and t2 else st["publish_rate"]
    return {"sustained": sustained,
        "leafsim": st, "rate": st["publish_rate"], "p50_ms": lat_ms(st, "p50"),
        "p99_ms": lat_ms(st, "p99"), "max_ms": lat_ms(st, "max"),
        "unacked": st["publishes_sent"] - st["publishes_acked"],
        "retransmissions": st["retransmissions"], "handled": handled,
        "gw_cpu_us_per_msg": (c2 - c0) * B.TICK_US / handled if handled else 0,
        "backlog_at_end": m1["outbox_messages"],
        "drain_after_s": (t2 - t1) if t2 else None,
        "stored": m2["outbox_stored"] - m0["outbox_stored"],
        "delivered": delivered,
        "commits": m1["outbox_commits"] - m0["outbox_commits"],
        "commits_per_s": (m1["outbox_commits"] - m0["outbox_commits"]) / span,
        "uplink_congestion": m1["uplink_congestion"] - m0["uplink_congestion"],
        "refused_full": m1["outbox_refused_full"] - m0["outbox_refused_full"],
    }


def line(label, r):
    extra = ""
    if r["stored"]:
        extra = ", %d commits (%.0f/s, %.1f msg each), stored %d delivered %d, backlog at the " \
                "end %d (empty %.1f s later)" % (
                    r["commits"], r["commits_per_s"], r["stored"] / r["commits"]
                    if r["commits"] else 0, r["stored"], r["delivered"], r["backlog_at_end"],
                    r["drain_after_s"] if r["drain_after_s"] is not None else float("nan"))
        extra += "; at the broker %.0f msg/s until then" % r["sustained"]
    print("   %-22s %7.0f msg/s acked, PUBACK p50 %6.2f ms p99 %7.2f ms, unacked %d, "
          "retransmissions %d, gateway CPU %.1f us/msg%s"
          % (label, r["rate"], r["p50_ms"], r["p99_ms"], r["unacked"], r["retransmissions"],
             r["gw_cpu_us_per_msg"], extra), flush=True)


def closed_and_open(b, work, broker, box, parts):
    n = B.env_int("BENCH_OUTBOX_QOS1_LEAVES", 1000)
    secs = B.env_int("BENCH_QOS1_SECS", 5)
    rounds = max(1, B.env_int("BENCH_OUTBOX_ROUNDS", 3))
    orate = B.env_int("BENCH_OUTBOX_OPEN_RATE", 20000)
    osecs = B.env_int("BENCH_OUTBOX_OPEN_SECS", 10)
    res = {"leaves": n, "secs": secs, "rounds": rounds}
    gws = {}
    try:
        # Two gateways side by side on the broker, the same but for the outbox;
        # only the one under load uses CPU.
        gws["outbox"] = start_gw(b, work, "fleetgw-outbox", broker.port, True, n, 0)
        gws["memory"] = start_gw(b, work, "fleetgw-memory", broker.port, False, n, 0)
        for label, gw in gws.items():  # the leaves' identities first: known leaves
            b.run(b.leafsim_cmd(gw, n, "obq-", "--connect-rate", 10000, "--duration", 1),
                  timeout=120)
        if "closed" in parts:
            res["closed"] = closed(b, gws, n, secs, rounds, box)
        if "open" in parts:
            res["open"] = open_loop(b, gws, n, orate, osecs, box)
    finally:
        for gw in gws.values():
            gw.stop()
    return res


def closed(b, gws, n, secs, rounds, box):
    print("\n   closed loop, %d leaves, one QoS 1 publish in flight each, %d s a run, %d rounds "
          "(order alternating):" % (n, secs, rounds), flush=True)
    runs = {"outbox": [], "memory": []}
    for rnd in range(rounds):
        order = ("outbox", "memory") if rnd % 2 == 0 else ("memory", "outbox")
        for label in order:
            r = qos1_run(b, gws[label], n, "obq-", "obc/%s", "--rate", 100000,
                         "--duration", secs)
            runs[label].append(r)
            box.note()
            line("%s (round %d)" % (label, rnd + 1), r)

    def m(label, key):
        return med([r[key] for r in runs[label]])
    ref = m("memory", "rate")
    ratio = m("outbox", "rate") / ref if ref else 0
    ratio_sus = m("outbox", "sustained") / ref if ref else 0
    paired = [o["rate"] / mm["rate"] for o, mm in zip(runs["outbox"], runs["memory"])
              if mm["rate"]]
    print("   medians: outbox %.0f msg/s p50 %.2f ms p99 %.2f ms %.1f us/msg; in-memory %.0f msg/s "
          "p50 %.2f ms p99 %.2f ms %.1f us/msg; outbox / in-memory rate %.2f (per round %s); "
          "delivered to the broker: %.2f"
          % (m("outbox", "rate"), m("outbox", "p50_ms"), m("outbox", "p99_ms"),
             m("outbox", "gw_cpu_us_per_msg"), ref, m("memory", "p50_ms"),
             m("memory", "p99_ms"), m("memory", "gw_cpu_us_per_msg"), ratio,
             ", ".join("%.2f" % p for p in paired), ratio_sus), flush=True)
    keys = ("rate", "sustained", "p50_ms", "p99_ms", "gw_cpu_us_per_msg")
    return {"runs": runs, "ratio": ratio, "paired_ratios": paired, "ratio_delivered": ratio_sus,
            "median": {lb: {k: m(lb, k) for k in keys} for lb in runs}}


def open_loop(b, gws, n, orate, osecs, box):
    print("\n   open loop, %d msg/s in total over %d leaves (%.3g/s a leaf), %d s:"
          % (orate, n, orate / n, osecs), flush=True)
    op = {}
    for label in ("outbox", "memory"):
        op[label] = qos1_run(b, gws[label], n, "obq-", "obo/%s", "--rate", "%g" % (orate / n),
                             "--duration", osecs)
        box.note()
        line(label, op[label])
    return {"rate": orate, "secs": osecs, "runs": op}


# ---------------------------------------------------------------------------
# outage
# ---------------------------------------------------------------------------
class Proxy:
    """mqttload proxy: the uplink, cut with SIGUSR1, restored with SIGUSR2.
    It takes two descriptors a connection, so enough processes share the port
    (SO_REUSEPORT) for n connections under this box's open files limit."""

    def __init__(self, b, work, broker, name, n):
        import resource
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if limit == resource.RLIM_INFINITY:
            limit = 1 << 20
        # Twice what n needs: the kernel spreads connections by hash, not evenly.
        k = max(1, -(-4 * n // max(limit - 64, 1)))
        self.port = B.free_port()
        self.procs = []
        for i in range(k):
            p = B.Proc([b.mqttload, "proxy", "--port", broker.port, "--listen-port", self.port],
                       Path(work) / ("%s-%d.log" % (name, i)))
            self.procs.append(p)
            if not B.wait_until(lambda: "proxy listening" in p.text() or not p.alive(), 10) \
                    or not p.alive():
                raise RuntimeError("proxy did not start:\n" + p.text())

    def _signal(self, sig):
        for p in self.procs:
            os.kill(p.pid, sig)

    def cut(self):
        self._signal(signal.SIGUSR1)

    def restore(self):
        self._signal(signal.SIGUSR2)

    def alive(self):
        return any(p.alive() for p in self.procs)

    def stop(self):
        for p in self.procs:
            p.stop()

    def finish(self):
        """Stops them; their reports summed, the accept times merged."""
        self.stop()
        out = {"processes": len(self.procs)}
        for p in self.procs:
            j = B.last_json(p.text())
            for key, v in j.items():
                if isinstance(v, list):
                    out[key] = out.get(key, []) + v
                elif isinstance(v, int):
                    out[key] = out.get(key, 0) + v
        return out


class Probe:
    """A few more leaves, in Python, that publish QoS 1 in turn, one every
    interval_s over all of them (one in flight), and keep each PUBACK's delay
    with its send time: leafsim's figures cover a whole run, this gives the
    delays of a phase (the outage alone) and when the worst one came.  They
    are k leaves, not one, so that no lane holds more than its share of the
    backlog (a lane drains at outbox.rate_per_leaf, 100/s).  Their payloads
    are leafsim's form, "<client id> <seq> ", so the checking subscriber
    checks them too."""

    def __init__(self, gw, prefix, topic_prefix, k=20, interval_s=0.005):
        import threading
        self.interval = interval_s
        self.samples = []  # (monotonic send time, ms to PUBACK or None)
        self.sent = self.acked = 0
        self.stopping = False
        host, port = gw.addr.split(":")
        self.leaves = []
        for i in range(k):
            cid = "%s%d" % (prefix, i)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((B.LOOPBACK, 0))
            sock.connect((host, int(port)))
            c, t = cid.encode(), ("%s%d" % (topic_prefix, i)).encode()
            self._request(sock, bytes([6 + len(c), 0x04, 0x04, 0x01, 1, 44]) + c, 0x05)  # 300 s
            tid = self._request(sock, bytes([6 + len(t), 0x0A, 0, 0, 0, 1]) + t, 0x0B)[2:4]
            self.leaves.append([cid, sock, tid, 0])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _request(sock, msg, want, timeout=10):
        sock.settimeout(timeout)
        sock.send(msg)
        while True:
            d = sock.recv(512)
            if len(d) >= 2 and d[1] == want:
                if d[-1] != 0:
                    raise RuntimeError("probe: answered rc %d" % d[-1])
                return d

    def _run(self):
        mid, i = 0, 0
        while not self.stopping:
            leaf = self.leaves[i]
            i = (i + 1) % len(self.leaves)
            cid, sock, tid, _ = leaf
            leaf[3] += 1
            mid = mid % 65535 + 1
            data = ("%s %d " % (cid, leaf[3])).encode()
            msg = bytes([7 + len(data), 0x0C, 0x20]) + tid + bytes([mid >> 8, mid & 255]) + data
            t0 = time.monotonic()
            sock.settimeout(5.0)
            sock.send(msg)
            self.sent += 1
            lat = None
            try:
                while True:
                    d = sock.recv(512)
                    if len(d) == 7 and d[1] == 0x0D and d[4:6] == msg[5:7]:
                        if d[6] == 0:
                            lat = (time.monotonic() - t0) * 1e3
                            self.acked += 1
                        break
            except OSError:  # no PUBACK within 5 s (the gateway gone): the next one
                pass
            self.samples.append((t0, lat))
            time.sleep(max(0.0, t0 + self.interval - time.monotonic()))

    def stop(self):
        self.stopping = True
        self.thread.join(10)
        for _, sock, _, _ in self.leaves:
            try:
                sock.send(bytes([2, 0x18]))
            except OSError:
                pass
            sock.close()

    def phase(self, t_from, t_to):
        """PUBACK delays of the publishes sent in [t_from, t_to)."""
        mine = [(t, x) for t, x in self.samples if t_from <= t < t_to]
        lat = sorted(x for _, x in mine if x is not None)
        out = {"count": len(lat), "unacked": sum(1 for _, x in mine if x is None)}
        if lat:
            worst = max((x, t) for t, x in mine if x is not None)
            out.update(p50_ms=lat[len(lat) // 2], p99_ms=lat[min(len(lat) - 1,
                                                                   int(0.99 * len(lat)))],
                       max_ms=worst[0], max_at_s=worst[1] - t_from)
        return out


def check_sub(b, broker, topic_filter, name):
    """A QoS 1 subscriber that checks every leaf's order (mqttload sub
    --check); it runs until SIGTERM (an outage is a long silence)."""
    cmd = [b.mqttload, "sub", "--port", broker.port, "--topic", topic_filter, "--qos", 1,
           "--check", "--duration", 0, "--prefix", "bench-check-"]
    B.show(cmd)
    p = B.Proc(cmd, Path(b.work) / ("%s-sub.log" % name))
    if not B.wait_until(lambda: "subscribed" in p.text() or not p.alive(), 10) or not p.alive():
        raise RuntimeError("subscriber failed:\n" + p.text())
    return p


def pacing(times, t_from):
    """Connections the proxy forwarded after t_from: count, first and last
    (s after t_from), the most in any 1 s window, the mean rate."""
    ts = sorted(t for t in times if t >= t_from)
    if not ts:
        return {"count": 0}
    most, j = 0, 0
    for i in range(len(ts)):
        while ts[i] - ts[j] >= 1.0:
            j += 1
        most = max(most, i - j + 1)
    span = ts[-1] - ts[0]
    return {"count": len(ts), "first_s": ts[0] - t_from, "last_s": ts[-1] - t_from,
            "max_per_1s": most, "mean_per_s": (len(ts) - 1) / span if span > 0 else 0}


def outage_run(b, work, broker, n, kill, box):
    name = "obkill" if kill else "obcut"
    outage = B.env_int("BENCH_OUTBOX_OUTAGE_S", 10)
    prate = float(os.environ.get("BENCH_OUTBOX_PUB_RATE", "2"))
    crate = B.env_int("BENCH_OUTBOX_CONNECT_RATE", 500)
    print("\n   %s: %d leaves through the proxy, QoS 1 at %g/s a leaf, link cut for %d s%s; "
          "upstream.connect_rate_per_s %d:"
          % ("outage + SIGKILL" if kill else "outage", n, prate, outage,
             ", the gateway SIGKILLed at its end and restarted on the same registry" if kill
             else "", crate), flush=True)
    proxy = Proxy(b, work, broker, name + "-proxy", n)
    gw = sub = leaves = probe = None
    r = {"leaves": n, "outage_s": outage, "pub_rate_per_leaf": prate, "connect_rate": crate}
    try:
        gw = start_gw(b, work, "fleetgw-" + name, proxy.port, True, n, crate)
        sub = check_sub(b, broker, name + "/#", name)
        # Frozen leaves (SIGSTOP) must not retransmit a publish in flight at
        # the freeze when they wake, before they read its PUBACK: a duplicate
        # the freeze made, not the gateway.  Hence the long T_retry there.
        cmd = b.leafsim_cmd(gw, n, name + "-", "--qos", 1, "--rate", "%g" % prate,
                            "--connect-rate", 5000, "--keepalive", 300,
                            "--retry-ms", 5000 if kill else 120000, "--topic", name + "/%s")
        B.show(cmd)
        leaves = B.Proc(cmd, Path(work) / (name + "-leafsim.log"))
        t0 = time.monotonic()
        m, t_up = wait_metric(gw, lambda m: m["upstreams_up"] >= n, 60 + 3 * n / max(crate, 1),
                              interval=0.2)
        if t_up is None:
            raise RuntimeError("only %d of %d upstreams up" % (m["upstreams_up"], n))
        r["first_up_s"] = t_up - t0
        probe = Probe(gw, name + "-probe-", name + "/probe-")
        time.sleep(2.0)
        box.note()
        m_cut0 = gw.metrics()
        proxy.cut()
        t_cut = time.monotonic()
        m, t_down = wait_metric(gw, lambda m: m["upstreams_up"] == 0, 30)
        r["down_after_s"] = (t_down - t_cut) if t_down else None
        time.sleep(max(0.0, t_cut + outage - time.monotonic()))
        probe.stop()
        t_end = time.monotonic()
        r["probe"] = {"before": probe.phase(t_cut - 2.0, t_cut),
                      "cut_1s": probe.phase(t_cut, t_cut + 1),
                      "outage": probe.phase(t_cut, t_end), "acked": probe.acked,
                      "sent": probe.sent}
        m_end = gw.metrics()
        r["stored_during_outage"] = m_end["outbox_stored"] - m_cut0["outbox_stored"]
        r["refused_during_outage"] = m_end["outbox_refused_full"] - m_cut0["outbox_refused_full"]
        if kill:
            os.kill(gw.pid, signal.SIGKILL)
            gw.p.wait(10)
            t_kill = time.monotonic()
            leaves.stop(30)  # SIGTERM: what is in flight now gets no PUBACK
            st = B.last_json(leaves.text())
            r["leafsim_stop_s"] = time.monotonic() - t_kill
            t_start = time.monotonic()
            restart_gw(gw)
            m_r = gw.metrics()
            r["restart_s"] = time.monotonic() - t_start
            r["on_disk_after_restart"] = m_r["outbox_messages"]
            time.sleep(2.0)  # the link still down: the drain links fail and back off
            m_r = gw.metrics()
        else:
            os.kill(leaves.pid, signal.SIGSTOP)  # no new messages: the drain is the backlog
            time.sleep(0.3)
            m_r = gw.metrics()
        backlog = m_r["outbox_messages"]
        r["backlog"] = backlog
        print("   link cut: upstreams down %.2f s after; %d messages stored during the %d s "
              "(refused %d); backlog %d in %d leaves' outboxes"
              % (r["down_after_s"] or float("nan"), r["stored_during_outage"], outage,
                 r["refused_during_outage"], backlog, m_r["outbox_leaves"]), flush=True)
        c0 = B.cpu_ticks(gw.pid)
        proxy.restore()
        t_res = time.monotonic()
        t_all_up = t_empty = None
        series = []
        deadline = t_res + 120 + 3 * n / max(crate, 1)
        while time.monotonic() < deadline:
            m = gw.metrics()
            t = time.monotonic()
            series.append((round(t - t_res, 2), m["upstreams_up"], m["outbox_messages"]))
            if t_all_up is None and not kill and m["upstreams_up"] >= n:
                t_all_up = t
            if t_empty is None and m["outbox_messages"] == 0:
                t_empty = t
            if t_empty is not None and (kill or t_all_up is not None):
                break
            time.sleep(0.1)
        c1 = B.cpu_ticks(gw.pid)
        m_done = gw.metrics()
        delivered = m_done["outbox_delivered"] - m_r["outbox_delivered"]
        box.note()
        # The backlog at the subscriber (before any new message): its report so far.
        time.sleep(1.0)
        nrep = sub.text().count('"mode":"sub"')
        os.kill(sub.pid, signal.SIGUSR1)
        B.wait_until(lambda: sub.text().count('"mode":"sub"') > nrep, 10)
        at_drain = B.last_json(sub.text())
        if not kill:
            # Stopped before it wakes: a frozen leafsim would otherwise catch
            # up on its schedule in a burst, which is not what is measured.
            os.kill(leaves.pid, signal.SIGTERM)
            os.kill(leaves.pid, signal.SIGCONT)
            leaves.p.wait(30)
            leaves.stop()
            st = B.last_json(leaves.text())
            wait_metric(gw, lambda m: m["outbox_messages"] == 0, 60)
        time.sleep(1.5)  # the last deliveries reach the subscriber
        sub.stop()
        got = B.last_json(sub.text())
        px = proxy.finish()
        m_fin = gw.metrics()
    finally:
        if probe is not None and not probe.stopping:
            probe.stop()
        for p in (leaves, sub, gw):
            if p is not None and p.alive():
                if p is leaves:
                    os.kill(p.pid, signal.SIGCONT)
                p.stop()
        if proxy.alive():
            proxy.stop()
    chk = got["check"]
    pace = pacing(px["accept_times"], t_res)
    drain_s = (t_empty - t_res) if t_empty else None
    dchk = at_drain["check"]
    last_new_s = dchk["t_last_new"] - t_res if dchk["t_last_new"] else None
    r.update({
        "leafsim": st, "sub": got, "sub_at_drain": at_drain,
        "proxy": {k: v for k, v in px.items() if k != "accept_times"},
        "reconnects": pace, "all_up_s": (t_all_up - t_res) if t_all_up else None,
        "outbox_empty_s": drain_s, "delivered_in_drain": delivered,
        "drain_rate": delivered / drain_s if drain_s else 0,
        "gw_cpu_us_per_drained_msg": (c1 - c0) * B.TICK_US / delivered if delivered else 0,
        "last_new_at_subscriber_s": last_new_s, "series": series,
        "acked": st["publishes_acked"] + probe.acked, "sent": st["publishes_sent"] + probe.sent,
        "unacked": st["publishes_sent"] - st["publishes_acked"] + probe.sent - probe.acked,
        "lost_acked": max(0, st["publishes_acked"] + probe.acked - chk["distinct"]) + chk["holes"],
        "duplicates": chk["duplicates"], "out_of_order": chk["out_of_order"],
        "upstream_connects": m_fin["upstream_connects"],
    })
    print("   leaves: %d acked of %d sent (retransmissions %d, congestion %d), PUBACK p50 %.2f ms "
          "p99 %.2f ms over the run%s" % (st["publishes_acked"], st["publishes_sent"],
                                        st["retransmissions"], st["errors"]["congestion"],
                                        lat_ms(st, "p50"), lat_ms(st, "p99"),
                                        "" if kill else " (its wake-up's burst included)"))
    pb = r["probe"]

    def ph(x):
        if not x["count"]:
            return "no PUBACK (%d unacked)" % x["unacked"]
        return "p50 %.2f ms, p99 %.2f ms, max %.1f ms (%.1f s in)%s" % (
            x["p50_ms"], x["p99_ms"], x["max_ms"], x["max_at_s"],
            ", %d unacked" % x["unacked"] if x["unacked"] else "")
    print("   probe leaves (QoS 1 every 5 ms in turn over 20 more leaves): 2 s before the cut %s; "
          "the cut's first second %s; the whole outage %s"
          % (ph(pb["before"]), ph(pb["cut_1s"]), ph(pb["outage"])))
    print("   restored: %s%s; upstream reconnects through the proxy %d, first %.2f s, last %.2f s "
          "after, at most %d in 1 s (mean %.0f/s); outbox empty %.2f s after (%d delivered, "
          "%.0f msg/s, "
          "gateway CPU %.1f us a message, reconnects included); the last of them at the subscriber "
          "%.2f s after (%d distinct then)"
          % ("" if kill else "all %d leaves' upstreams up %.2f s after" %
             (n, r["all_up_s"] if r["all_up_s"] is not None else float("nan")),
             "drain links (no leaf connected)" if kill else "",
             pace.get("count", 0), pace.get("first_s", float("nan")),
             pace.get("last_s", float("nan")), pace.get("max_per_1s", 0),
             pace.get("mean_per_s", 0), drain_s if drain_s is not None else float("nan"),
             delivered, r["drain_rate"], r["gw_cpu_us_per_drained_msg"],
             last_new_s if last_new_s is not None else float("nan"), dchk["distinct"]))
    print("   subscriber: %d distinct messages from %d leaves (%d received), duplicates %d, out "
          "of order %d, holes %d%s; acknowledged and missing: %d"
          % (chk["distinct"], chk["publishers"], got["received"], chk["duplicates"],
             chk["out_of_order"], chk["holes"],
             " (first: %s)" % chk["first_with_holes"] if chk["holes"] else "",
             r["lost_acked"]), flush=True)
    if chk["duplicates"]:
        print("   duplicates (at least once; the first of them): %s"
              % ", ".join(got.get("duplicates_sample", [])))
    if px.get("failed"):
        print("   WARNING: the proxy could not forward %d connections (descriptors?)"
              % px["failed"])
    if kill:
        print("   (%d publishes were in flight at the SIGKILL: unacknowledged, they may or may not "
              "arrive; on disk after the restart: %d; the restart to \"ready\" took %.2f s)"
              % (r["unacked"], r["on_disk_after_restart"], r["restart_s"]), flush=True)
    return r


# ---------------------------------------------------------------------------
def fmt(v, spec="%.2f"):
    return "n/a" if v is None else spec % v


def section_outbox(b, work):
    n = B.env_int("BENCH_OUTBOX_LEAVES", 1000)
    parts = set(filter(None, os.environ.get("BENCH_OUTBOX_RUNS",
                                            "closed,open,outage,kill").split(",")))
    box = BoxWatch()
    print("\n== outbox (store and forward): QoS 1 through the outbox vs outbox.enabled false; "
          "an uplink outage with %d leaves, and one with a SIGKILL (runs: %s)"
          % (n, ",".join(sorted(parts))))
    print("   %d CPUs, load average %s at the start; other work on the box is reported at the end"
          % (os.cpu_count(), box.load0), flush=True)
    broker = B.Broker(work)
    res = {}
    try:
        if parts & {"closed", "open"}:
            res.update(closed_and_open(b, work, broker, box, parts))
        if "outage" in parts:
            res["outage"] = outage_run(b, work, broker, n, False, box)
        if "kill" in parts:
            res["kill"] = outage_run(b, work, broker, n, True, box)
    finally:
        broker.stop()
    bw = box.report()
    res["box"] = bw
    print("\n   other work on the box during the section: %.1f CPU-s in %.0f s (%.2f cores; "
          "load average %s -> %s)%s" % (bw["foreign_cpu_s"], bw["seconds"], bw["foreign_cores"],
                                      bw["load_before"], bw["load_after"],
                                      ": " + ", ".join(bw["top"]) if bw["top"] else ""))
    b.results["outbox"] = res
    summary = {"foreign_cores": round(bw["foreign_cores"], 2)}
    if "closed" in res:
        c = res["closed"]
        cm, nq = c["median"], res["leaves"]
        b.rows += [
            ("QoS 1 closed loop, %d leaves, outbox (median of %d)" % (nq, res["rounds"]),
             "%.0f msg/s, p50 %.1f ms, p99 %.1f ms, %.1f us/msg"
             % (cm["outbox"]["rate"], cm["outbox"]["p50_ms"], cm["outbox"]["p99_ms"],
                cm["outbox"]["gw_cpu_us_per_msg"]), "", "BENCH_ONLY=outbox"),
            ("QoS 1 closed loop, %d leaves, in-memory (median)" % nq,
             "%.0f msg/s, p50 %.1f ms, p99 %.1f ms, %.1f us/msg"
             % (cm["memory"]["rate"], cm["memory"]["p50_ms"], cm["memory"]["p99_ms"],
                cm["memory"]["gw_cpu_us_per_msg"]), "(reference)", "outbox.enabled false"),
            ("QoS 1 rate, outbox / in-memory", "%.2f acked (rounds: %s), %.2f delivered"
             % (c["ratio"], ", ".join("%.2f" % p for p in c["paired_ratios"]),
                c["ratio_delivered"]), ">= 0.9", ""),
        ]
        summary.update(closed_rate_outbox=round(cm["outbox"]["rate"]),
                       closed_rate_memory=round(cm["memory"]["rate"]),
                       closed_ratio=round(c["ratio"], 3),
                       closed_ratio_delivered=round(c["ratio_delivered"], 3),
                       closed_p99_ms_outbox=round(cm["outbox"]["p99_ms"], 2),
                       closed_p99_ms_memory=round(cm["memory"]["p99_ms"], 2),
                       closed_us_per_msg_outbox=round(cm["outbox"]["gw_cpu_us_per_msg"], 2),
                       closed_us_per_msg_memory=round(cm["memory"]["gw_cpu_us_per_msg"], 2))
    if "open" in res:
        op, nq = res["open"], res["leaves"]
        oo, om = op["runs"]["outbox"], op["runs"]["memory"]
        b.rows += [
            ("QoS 1 open loop %d msg/s, outbox: PUBACK" % op["rate"],
             "p50 %.2f ms, p99 %.2f ms at %.0f msg/s" % (oo["p50_ms"], oo["p99_ms"], oo["rate"]),
             "p99 <= 5 ms", "leafsim --rate %g" % (op["rate"] / nq)),
            ("  ... gateway CPU, group commits", "%.1f us/msg, %.0f commits/s (%.1f msg each)"
             % (oo["gw_cpu_us_per_msg"], oo["commits_per_s"],
                oo["stored"] / oo["commits"] if oo["commits"] else 0), "", "outbox_commits"),
            ("QoS 1 open loop %d msg/s, in-memory: PUBACK" % op["rate"],
             "p50 %.2f ms, p99 %.2f ms at %.0f msg/s, %.1f us/msg"
             % (om["p50_ms"], om["p99_ms"], om["rate"], om["gw_cpu_us_per_msg"]),
             "(reference)", ""),
        ]
        summary.update(open_rate=op["rate"], open_reached=round(oo["rate"]),
                       open_p50_ms=round(oo["p50_ms"], 2), open_p99_ms=round(oo["p99_ms"], 2),
                       open_p99_ms_memory=round(om["p99_ms"], 2),
                       open_gw_cpu_us_per_msg=round(oo["gw_cpu_us_per_msg"], 2),
                       open_gw_cpu_us_per_msg_memory=round(om["gw_cpu_us_per_msg"], 2),
                       open_commits_per_s=round(oo["commits_per_s"]))
    if "outage" in res:
        o = res["outage"]
        b.rows += [
            ("outage %d s, %d leaves: all upstreams back" % (o["outage_s"], o["leaves"]),
             "%s s after the restore, reconnects at most %d/s (pacer %d/s)"
             % (fmt(o["all_up_s"]), o["reconnects"].get("max_per_1s", 0), o["connect_rate"]),
             "<= 30 s (10,000 leaves)", "mqttload proxy cut/restore"),
            ("outage: backlog drained", "%d msgs in %s s (%.0f msg/s); last at the broker %s s"
             % (o["backlog"], fmt(o["outbox_empty_s"]), o["drain_rate"],
                fmt(o["last_new_at_subscriber_s"])), "", ""),
            ("outage: PUBACK while the link is down (probe leaf)",
             "p50 %.2f ms, p99 %.2f ms, max %.1f ms; before the cut p99 %.2f ms"
             % (o["probe"]["outage"].get("p50_ms", 0), o["probe"]["outage"].get("p99_ms", 0),
                o["probe"]["outage"].get("max_ms", 0), o["probe"]["before"].get("p99_ms", 0)),
             "", "20 more leaves, QoS 1 every 5 ms in turn"),
            ("outage: acknowledged lost / dup / out of order", "%d / %d / %d (of %d acked)"
             % (o["lost_acked"], o["duplicates"], o["out_of_order"], o["acked"]), "0 lost",
             "mqttload sub --check"),
        ]
        summary.update(outage_leaves=o["leaves"], outage_s=o["outage_s"],
                       outage_all_up_s=o["all_up_s"] and round(o["all_up_s"], 2),
                       outage_reconnects_max_per_1s=o["reconnects"].get("max_per_1s", 0),
                       outage_backlog=o["backlog"],
                       outage_drain_s=o["outbox_empty_s"] and round(o["outbox_empty_s"], 2),
                       outage_drain_rate=round(o["drain_rate"]),
                       outage_probe_p99_ms=round(o["probe"]["outage"].get("p99_ms", 0), 2),
                       outage_probe_max_ms=round(o["probe"]["outage"].get("max_ms", 0), 1),
                       outage_lost_acked=o["lost_acked"], outage_duplicates=o["duplicates"],
                       outage_out_of_order=o["out_of_order"])
    if "kill" in res:
        k = res["kill"]
        b.rows += [
            ("outage + SIGKILL: reconnect and drain from disk",
             "%d drain links at most %d/s, empty %s s after the restore (%.0f msg/s)"
             % (k["reconnects"].get("count", 0), k["reconnects"].get("max_per_1s", 0),
                fmt(k["outbox_empty_s"]), k["drain_rate"]), "", ""),
            ("outage + SIGKILL: acknowledged lost / dup / order", "%d / %d / %d (of %d acked)"
             % (k["lost_acked"], k["duplicates"], k["out_of_order"], k["acked"]), "0 lost", ""),
        ]
        summary.update(kill_probe_p99_ms=round(k["probe"]["outage"].get("p99_ms", 0), 2),
                       kill_backlog=k["backlog"], kill_lost_acked=k["lost_acked"],
                       kill_duplicates=k["duplicates"], kill_out_of_order=k["out_of_order"],
                       kill_drain_s=k["outbox_empty_s"] and round(k["outbox_empty_s"], 2),
                       kill_drain_rate=round(k["drain_rate"]),
                       kill_reconnects_max_per_1s=k["reconnects"].get("max_per_1s", 0))
    print(json.dumps({"outbox": summary}))
