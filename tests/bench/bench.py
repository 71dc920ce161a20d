#!/usr/bin/python3
"""fleetgw benchmark driver (run it through tests/bench/run.sh, which builds).

Starts its own mosquitto and fleetgw on free 127.0.0.1 ports, drives them with
fleetgw-leafsim (MQTT-SN leaves) and mqttload (plain MQTT, straight to the
broker), and prints figures.  Nothing here passes or fails on timing: the box
is shared and noisy, so each figure is printed next to the one it should be
compared with, measured in the same run.

Sections (BENCH_ONLY=qos0,connect,qos1,memory,flood,dtls,outbox selects some):
  qos0     direct vs relayed QoS 0 rate at a ladder of offered rates, loss,
           gateway CPU per message
  connect  time for BENCH_QOS1_LEAVES leaves to connect (first CONNECT to
           last CONNACK)
  qos1     QoS 1 with one publish in flight per leaf: throughput and round
           trip, direct vs relayed; latency at BENCH_QOS1_LAT_RATES (5,000
           and 40,000 msg/s), relayed p99 against direct
           (BENCH_OUTBOX=0: the gateway of qos0/connect/qos1 runs with
           outbox.enabled false, PUBACK after the broker's)
  memory   fleetgw RSS with 0 leaves vs BENCH_LEAVES leaves, each with its
           own upstream TLS session (client certificate); the same with plain
           TCP upstreams gives the breakdown (TLS state / the rest)
  flood    BENCH_FLOOD_IDS made-up ClientIds from many sources (admission
           "open", the default new-identity limits, the local CA issuing
           certificates) while a known leaf reconnects: certificates minted,
           RSS before/after, the known leaf's CONNACK delay
  dtls     PSK handshakes per gateway CPU-second, the memory of an idle DTLS
           association, QoS 0 over DTLS against plain UDP (bench_dtls.py)
  outbox   QoS 1 through the outbox against outbox.enabled false (closed and
           open loop: rate, PUBACK latency, CPU, group commits); an uplink
           outage through a cut-able proxy, and one with a SIGKILL of the
           gateway: reconnect pacing, drain time, order and loss at a
           checking subscriber (bench_outbox.py)
"""
import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
METRICS_RE = re.compile(r"\bmetrics (\{.*\})\s*$")
CLEAN_LOSS_PCT = 0.1  # docs/architecture.md §11: "clean" means loss < 0.1 %
MAX_LAG_S = 0.5  # ... and the subscriber got the last message at most this late
# The ladder stops early once neither path is clean (both saturated).
DEFAULT_QOS0_RATES = "10000 20000 30000 40000 50000 60000 80000 100000 120000 150000"


def env_int(name, default):
    return int(os.environ.get(name, default))


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_until(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def show(cmd):
    print("  $ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON summary in output:\n" + text[-2000:])


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (/proc/<pid>/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15


def rss_kib(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def udp_rcvbuf_errors():
    """The kernel's count of UDP datagrams dropped for a full receive buffer."""
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    head, vals = lines[0], lines[1]
    return int(vals[head.index("RcvbufErrors")])


def tcp_ext(*names):
    """Kernel TCP counters from /proc/net/netstat (TcpExt), e.g. ListenOverflows."""
    with open("/proc/net/netstat") as f:
        lines = [l.split() for l in f if l.startswith("TcpExt:")]
    head, vals = lines[0], lines[1]
    return {n: int(vals[head.index(n)]) if n in head else 0 for n in names}


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# certificates (openssl CLI), mosquitto, fleetgw
# ---------------------------------------------------------------------------
OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
"""


def make_certs(d):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(OPENSSL_CNF)

    def run(*args):
        subprocess.run(["openssl"] + [str(a) for a in args], check=True,
                       capture_output=True, timeout=60)

    def key(p):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p)

    key(d / "ca.key")
    run("req", "-x509", "-new", "-key", d / "ca.key", "-days", "2", "-subj", "/CN=bench-ca",
        "-config", d / "openssl.cnf", "-extensions", "v3_ca", "-out", d / "ca.crt")
    for cn, ext in (("localhost", "server"), ("gateway", "client")):
        key(d / (cn + ".key"))
        run("req", "-new", "-key", d / (cn + ".key"), "-subj", "/CN=" + cn,
            "-config", d / "openssl.cnf", "-out", d / (cn + ".csr"))
        run("x509", "-req", "-in", d / (cn + ".csr"), "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
            "-set_serial", str(int(time.time() * 1000) % (1 << 62)), "-days", "2",
            "-extfile", d / "openssl.cnf", "-extensions", ext, "-out", d / (cn + ".crt"))
    return d


class Proc:
    """A child process with its output in a file; stopped with TERM then KILL."""

    def __init__(self, cmd, log, cwd=None):
        self.cmd = [str(c) for c in cmd]
        self.log = Path(log)
        self._f = open(self.log, "ab")
        # Every child runs in the log's (temporary) directory, so that files it
        # makes relative to its working directory (fleetgw's registry database
        # by default) never land in the checkout.
        self.p = subprocess.Popen(self.cmd, stdout=self._f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=cwd or str(self.log.parent))
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=10):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._f.close()
        return self.p.returncode


class Broker(Proc):
    def __init__(self, workdir, tls=False, certs=None):
        self.port = free_port()
        self.tls = tls
        conf = Path(workdir) / ("mosquitto-%s.conf" % ("tls" if tls else "plain"))
        lines = [
            "listener %d %s" % (self.port, LOOPBACK),
            "allow_anonymous true",
            "persistence false",
            # Generous queues, so that what the benchmark measures is the
            # throughput, not a queue limit: QoS 0 messages to a busy
            # subscriber are dropped beyond max_queued_messages.
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            "max_connections -1",
            # Small request/response packets (QoS 1): no Nagle delay.
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "connection_messages false",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the "mosquitto" user and could
            # no longer read the key files in our temporary directory.
            lines.append("user root")
        if tls:
            lines += ["cafile %s" % (certs / "ca.crt"), "certfile %s" % (certs / "localhost.crt"),
                      "keyfile %s" % (certs / "localhost.key"), "require_certificate true"]
        conf.write_text("\n".join(lines) + "\n")
        super().__init__([MOSQUITTO_BIN, "-c", conf], Path(workdir) / (conf.stem + ".log"))
        if not wait_until(self._listening, 10):
            raise RuntimeError("mosquitto did not start:\n" + self.text()[-2000:])

    def _listening(self):
        if not self.alive():
            raise RuntimeError("mosquitto exited:\n" + self.text()[-2000:])
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                return True
        except OSError:
            return False


class Gateway(Proc):
    def __init__(self, binary, workdir, broker, certs=None, name="fleetgw", extra=None,
                 lan_extra=None, up_extra=None):
        self.udp_port = free_port(socket.SOCK_DGRAM)
        up = {"host": LOOPBACK, "port": broker.port, "tls": broker.tls,
              "keepalive_s": 60, "connect_timeout_ms": 20000, "give_up_after_s": 60,
              # The default (500/s) respects AWS IoT's per-account CONNECT quota;
              # against a local broker the bench measures the gateway itself.
              # max_connecting (default 64) still keeps the burst within
              # mosquitto's listen backlog.
              "connect_rate_per_s": int(os.environ.get("BENCH_CONNECT_RATE", "0"))}
        if broker.tls:
            up.update(ca_file=str(certs / "ca.crt"), cert_file=str(certs / "gateway.crt"),
                      key_file=str(certs / "gateway.key"))
        up.update(up_extra or {})
        cfg = {
            # "info" because the SIGUSR1 metrics line is logged at info; the
            # gateway logs no line per packet at this level.
            "log_level": "info",
            "lan": {"bind": LOOPBACK, "port": self.udp_port, "connack_timeout_ms": 30000},
            "upstream": up,
            "web": {"enabled": False},
            "registry": {"path": str(Path(workdir) / (name + "-registry.db"))},
            # Thousands of new ClientIds from one IP: admitted without an
            # operator, the new-identity rate limits off.
            "admission": {"policy": "open", "new_ids_per_port": 0, "new_ids_per_ip": 0,
                          "new_ids": 0},
        }
        cfg.update(extra or {})
        cfg["lan"].update(lan_extra or {})
        self.registry = cfg["registry"]["path"]
        self.config = Path(workdir) / (name + ".json")
        self.config.write_text(json.dumps(cfg, indent=2))
        super().__init__([binary, "--config", self.config], Path(workdir) / (name + ".log"))
        if not wait_until(lambda: "ready:" in self.text() or not self.alive(), 10) \
                or not self.alive():
            raise RuntimeError("fleetgw did not start:\n" + self.text()[-2000:])
        self.addr = "%s:%d" % (LOOPBACK, self.udp_port)

    def metrics(self, timeout=5):
        before = self._nmetrics()
        os.kill(self.pid, signal.SIGUSR1)
        if not wait_until(lambda: self._nmetrics() > before, timeout):
            raise RuntimeError("no metrics line after SIGUSR1")
        return json.loads(self._metrics_lines()[-1])

    def _metrics_lines(self):
        return [m.group(1) for m in map(METRICS_RE.search, self.text().splitlines()) if m]

    def _nmetrics(self):
        return len(self._metrics_lines())


# ---------------------------------------------------------------------------
# load generators
# ---------------------------------------------------------------------------
class Bench:
    def __init__(self, build, workdir):
        self.build = Path(build)
        self.work = Path(workdir)
        self.fleetgw = self.build / "fleetgw"
        self.leafsim = self.build / "tests" / "leaf" / "fleetgw-leafsim"
        self.mqttload = self.build / "mqttload"
        self.snfloor = self.build / "snfloor"
        self.results = {}
        self.rows = []  # (figure, value, target, command)

    def run(self, cmd, timeout):
        show(cmd)
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           cwd=str(self.work))
        if r.returncode != 0:
            raise RuntimeError("%s exited %d:\n%s" % (cmd[0], r.returncode, r.stderr[-2000:]))
        return last_json(r.stdout)

    def run_timed(self, cmd, timeout):
        """run(), and the CPU seconds (user + system) the command used."""
        show(cmd)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL, cwd=str(self.work))
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    p.wait()
                    raise RuntimeError("%s timed out" % cmd[0])
                time.sleep(0.02)
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if p.returncode != 0:
                raise RuntimeError("%s exited %d:\n%s" % (cmd[0], p.returncode,
                                                          err.read().decode(errors="replace")[-2000:]))
            return last_json(out.read().decode(errors="replace")), ru.ru_utime + ru.ru_stime

    def start_sub(self, broker, topic_filter):
        """A counting subscriber; returns once it is subscribed."""
        # It ends by itself 1.5 s after the last message (or on SIGTERM).
        cmd = [self.mqttload, "sub", "--port", broker.port, "--topic", topic_filter,
               "--duration", 0, "--idle", 1.5, "--prefix", "bench-sub-"]
        log = self.work / ("sub-%d.log" % time.monotonic_ns())
        p = Proc(cmd, log)
        if not wait_until(lambda: "subscribed" in p.text() or not p.alive(), 10) or not p.alive():
            raise RuntimeError("subscriber failed:\n" + p.text())
        return p

    def stop_sub(self, p, settle=15.0):
        """Lets the subscriber drain what the broker still holds (it exits
        once nothing arrived for 1.5 s), then returns its count."""
        try:
            p.p.wait(settle)
        except subprocess.TimeoutExpired:
            pass
        p.stop()
        return last_json(p.text())

    def leafsim_cmd(self, gw, leaves, prefix, *extra):
        """gw: a Gateway, or a "host:port" string."""
        addr = gw if isinstance(gw, str) else gw.addr
        return [self.leafsim, "--gw", addr, "-n", leaves, "--prefix", prefix, "--stats"] + \
            [str(e) for e in extra]


def fmt_rate(v):
    return "%8.0f" % v


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------
def section_qos0(b, broker, gw):
    rates = [int(r) for r in os.environ.get("BENCH_QOS0_RATES", DEFAULT_QOS0_RATES).split()]
    secs = env_int("BENCH_QOS0_SECS", 3)
    n = env_int("BENCH_QOS0_LEAVES", 100)
    print("\n== QoS 0: direct (mqttload, %d TCP connections) vs relayed (leafsim, %d leaves "
          "-> fleetgw -> %d upstream sessions); %d s per step, 32-byte payloads" % (n, n, n, secs))
    table = []

    def clean(loss_pct, lag_s):
        # Clean: no loss to speak of, and delivery kept pace with the sender.
        return loss_pct < CLEAN_LOSS_PCT and lag_s < MAX_LAG_S

    for rate in rates:
        # Direct: N publishers straight to the broker, one subscriber counting.
        topic = "d%d" % rate
        sub = b.start_sub(broker, topic + "/#")
        pub, pub_cpu = b.run_timed([b.mqttload, "pub", "--port", broker.port, "-n", n,
                                    "--rate", rate, "--duration", secs, "--topic", topic + "/%s",
                                    "--prefix", "direct-"], timeout=secs + 30)
        d_sub = b.stop_sub(sub)
        got = d_sub["received"]
        d_sent, d_secs = pub["sent"], pub["elapsed_s"]

        # Relayed: the same load as MQTT-SN leaves through the gateway.
        topic = "r%d" % rate
        sub = b.start_sub(broker, topic + "/#")
        m0, c0, u0 = gw.metrics(), cpu_ticks(gw.pid), udp_rcvbuf_errors()
        st = b.run(b.leafsim_cmd(gw, n, "q0-", "--qos", 0, "--rate", "%g" % (rate / n),
                                 "--duration", secs, "--topic", topic + "/%s"),
                   timeout=secs + 60)
        c1, u1 = cpu_ticks(gw.pid), udp_rcvbuf_errors()
        m1 = gw.metrics()
        r_sub = b.stop_sub(sub)
        r_got = r_sub["received"]
        r_secs = st["publish_span_s"] or secs
        handled = m1["publish_in_qos0"] - m0["publish_in_qos0"]
        row = {
            "offered_rate": rate,
            "direct_sent": d_sent, "direct_received": got,
            # Received rate over the longer of the sending and the receiving
            # window: TCP buffers let a broker that cannot keep up deliver
            # after the publisher stopped, which is lag, not throughput.
            "direct_offered_per_s": d_sent / d_secs,
            "direct_received_per_s": got / max(d_secs, d_sub["span_s"]),
            "direct_lag_s": max(d_sub["span_s"] - d_secs, 0),
            "direct_loss_pct": 100.0 * (d_sent - got) / d_sent if d_sent else 0,
            "relayed_sent": st["publishes_sent"], "relayed_received": r_got,
            "relayed_offered_per_s": st["publishes_sent"] / r_secs,
            "relayed_received_per_s": r_got / max(r_secs, r_sub["span_s"]),
            "relayed_lag_s": max(r_sub["span_s"] - r_secs, 0),
            "relayed_loss_pct": 100.0 * (st["publishes_sent"] - r_got) / st["publishes_sent"]
            if st["publishes_sent"] else 0,
            "gw_publishes_in": handled,
            "udp_rcvbuf_drops": u1 - u0,
            "uplink_congestion": m1["uplink_congestion"] - m0["uplink_congestion"],
            "gw_cpu_us_per_msg": (c1 - c0) * TICK_US / handled if handled else 0,
            # The reference for the gateway's CPU: what the direct publisher,
            # a bare epoll client with one write(2) a message, spent on each.
            "direct_client_cpu_us_per_msg": pub_cpu * 1e6 / d_sent if d_sent else 0,
        }
        table.append(row)
        row["direct_clean"] = clean(row["direct_loss_pct"], row["direct_lag_s"])
        row["relayed_clean"] = clean(row["relayed_loss_pct"], row["relayed_lag_s"])
        print("   offered %6d/s | direct recv %s/s loss %5.2f%% lag %4.1fs | relayed recv %s/s "
              "loss %5.2f%% lag %4.1fs (UDP drops %d) | gw CPU %.1f us/msg (direct client %.1f)"
              % (rate, fmt_rate(row["direct_received_per_s"]), row["direct_loss_pct"],
                 row["direct_lag_s"], fmt_rate(row["relayed_received_per_s"]),
                 row["relayed_loss_pct"], row["relayed_lag_s"], row["udp_rcvbuf_drops"],
                 row["gw_cpu_us_per_msg"], row["direct_client_cpu_us_per_msg"]), flush=True)
        if not row["direct_clean"] and not row["relayed_clean"]:
            print("   (both paths lose messages or fall behind: stopping the ladder)")
            break

    def best(key_clean, key_rate):
        return max((r[key_rate] for r in table if r[key_clean]), default=0.0)

    d_best = best("direct_clean", "direct_received_per_s")
    r_best = best("relayed_clean", "relayed_received_per_s")
    clean_relayed = [r for r in table if r["relayed_clean"]]
    cpu_row = max(clean_relayed, key=lambda r: r["offered_rate"]) if clean_relayed else table[0]
    cpu, client_cpu = cpu_row["gw_cpu_us_per_msg"], cpu_row["direct_client_cpu_us_per_msg"]
    saturated = any(not r["direct_clean"] for r in table)
    if not saturated:
        print("   note: the direct path never lost messages on this ladder, so its highest clean "
              "rate (and the ratio) are lower bounds; add higher BENCH_QOS0_RATES")
    b.results["qos0"] = {"direct_saturated": saturated, "steps": table, "direct_clean_rate": d_best,
                         "relayed_clean_rate": r_best,
                         "ratio": r_best / d_best if d_best else 0, "gw_cpu_us_per_msg": cpu,
                         "direct_client_cpu_us_per_msg": client_cpu}
    b.rows += [
        ("QoS 0 direct, highest clean rate (loss < 0.1 %, lag < 0.5 s)", "%.0f msg/s" % d_best,
         "(reference)", "mqttload pub"),
        ("QoS 0 relayed, highest clean rate", "%.0f msg/s" % r_best, "", "fleetgw-leafsim --qos 0"),
        ("QoS 0 relayed / direct", "%.0f %%%s" % (100 * r_best / d_best if d_best else 0,
                                                  "" if saturated else " (direct not saturated)"),
         ">= 80 %", ""),
        ("gateway CPU per relayed message", "%.1f us (direct client %.1f us, same rate)"
         % (cpu, client_cpu), "<= 5 us", "/proc/<fleetgw>/stat utime+stime / publish_in_qos0"),
    ]


def section_connect(b, gw):
    n = env_int("BENCH_QOS1_LEAVES", 1000)
    print("\n== connect: %d leaves (plain TCP upstream); each CONNECT makes fleetgw open an "
          "upstream connection" % n)
    runs = {}
    counters = ("ListenOverflows", "TCPSynRetrans")
    # All at once, then paced at 10,000 CONNECTs/s (1,000 leaves in 0.1 s).
    # mosquitto listens with a fixed backlog of 100: a burst of upstream
    # connects overflows it and the kernel retransmits the dropped SYNs after
    # 1 s, which the kernel counters below show.
    for label, crate in (("all at once", 0), ("10,000/s", 10000)):
        k0 = tcp_ext(*counters)
        st = b.run(b.leafsim_cmd(gw, n, "leaf-", "--connect-rate", crate, "--duration", 5),
                   timeout=120)
        k1 = tcp_ext(*counters)
        st["kernel"] = {c: k1[c] - k0[c] for c in counters}
        runs[label] = st
        print("   %-11s: connected %d/%d, first CONNECT -> last CONNACK %.1f ms, CONNACK "
              "congestion %d, listen overflows %d, SYN retransmits %d"
              % (label, st["connected"], n, st["connect_last_ms"], st["connack_congestion"],
                 st["kernel"]["ListenOverflows"], st["kernel"]["TCPSynRetrans"]), flush=True)
    b.results["connect"] = runs

    def val(st):
        if st["connected"] != n:
            return "%d of %d connected" % (st["connected"], n)
        return "%.0f ms" % st["connect_last_ms"]
    b.rows += [
        ("connect %d leaves, all at once" % n, val(runs["all at once"]) +
         " (listen overflows %d)" % runs["all at once"]["kernel"]["ListenOverflows"],
         "<= 500 ms", "fleetgw-leafsim -n %d --connect-rate 0" % n),
        ("connect %d leaves, 10,000 CONNECT/s" % n, val(runs["10,000/s"]), "<= 500 ms",
         "fleetgw-leafsim -n %d --connect-rate 10000" % n),
    ]


# leafsim --start-together: publishing starts this long after the last
# leaf's CONNACK, so that the QoS 1 figures are the steady state's, like
# mqttload's (which start once every connection has its CONNACK).
START_TOGETHER_MS = 1000


def section_qos1(b, broker, gw):
    n = env_int("BENCH_QOS1_LEAVES", 1000)
    secs = env_int("BENCH_QOS1_SECS", 5)
    print("\n== QoS 1, one publish in flight per leaf/connection, %d of them, %d s" % (n, secs))
    # BENCH_QOS1_ROUNDS interleaved rounds of direct then relayed (default 3):
    # on a shared box one round's ratio swings; the median of the rounds'
    # ratios is the figure.
    rounds = max(1, env_int("BENCH_QOS1_ROUNDS", 3))
    per_round = []
    for k in range(rounds):
        sub = b.start_sub(broker, "q1d/#")
        d = b.run([b.mqttload, "pub", "--port", broker.port, "-n", n, "--qos", 1, "--rate", 0,
                   "--duration", secs, "--topic", "q1d/%s", "--prefix", "direct-"],
                  timeout=secs + 60)
        d_got = b.stop_sub(sub)["received"]
        print("   round %d direct : %.0f msg/s acked, p50 %.2f ms, p99 %.2f ms (subscriber got %d "
              "of %d)" % (k + 1, d["acked"] / d["elapsed_s"], d["latency_us"]["p50"] / 1e3,
                          d["latency_us"]["p99"] / 1e3, d_got, d["acked"]), flush=True)

        sub = b.start_sub(broker, "q1r/#")
        m0 = gw.metrics()
        # Connects paced at 10,000/s (see the connect section); --rate far
        # above what one-in-flight allows, so each leaf publishes again as
        # soon as its PUBACK arrives.
        # --start-together: the clock starts once every leaf has its CONNACK
        # and the upstreams had a second to come up, as mqttload starts its
        # clock once every connection has its CONNACK (the connect phase is
        # the connect section's figure, not this one's).
        r = b.run(b.leafsim_cmd(gw, n, "leaf-", "--qos", 1, "--rate", 100000, "--duration", secs,
                                "--connect-rate", 10000, "--topic", "q1r/%s", "--retry-ms", 5000,
                                "--start-together", START_TOGETHER_MS),
                  timeout=secs + 120)
        m1 = gw.metrics()
        r_got = b.stop_sub(sub)["received"]
        # Acked per second over the publishing window (first publish to last ack).
        r_rate = r["publish_rate"]
        lost = r["publishes_sent"] - r["publishes_acked"]
        d_rate = d["acked"] / d["elapsed_s"]
        print("   round %d relayed: %.0f msg/s acked (%.2f of direct), p50 %.2f ms, p99 %.2f ms, "
              "unacked %d, retransmissions %d, subscriber got %d of %d acked (uplink congestion "
              "%d)" % (k + 1, r_rate, r_rate / d_rate if d_rate else 0,
                       r["latency_us"]["p50"] / 1e3, r["latency_us"]["p99"] / 1e3, lost,
                       r["retransmissions"], r_got, r["publishes_acked"],
                       m1["uplink_congestion"] - m0["uplink_congestion"]), flush=True)
        per_round.append({"d": d, "d_got": d_got, "r": r, "r_got": r_got, "lost": lost,
                          "d_rate": d_rate, "r_rate": r_rate,
                          "ratio": r_rate / d_rate if d_rate else 0})
    # The round with the median ratio speaks for the section; lost is the
    # worst of all rounds.
    per_round.sort(key=lambda x: x["ratio"])
    med = per_round[len(per_round) // 2]
    d, d_got, r, r_got = med["d"], med["d_got"], med["r"], med["r_got"]
    d_rate, r_rate = med["d_rate"], med["r_rate"]
    lost = max(x["lost"] for x in per_round)
    ratios = ", ".join("%.2f" % x["ratio"] for x in per_round)
    print("   median of %d rounds: relayed / direct %.2f (rounds %s)" % (rounds, med["ratio"], ratios),
          flush=True)

    # Latency at set loads (BENCH_QOS1_LAT_RATES, default 5,000 and 40,000
    # msg/s), spread over the leaves, each against direct at the same rate.
    lat_rows, lat = [], {}
    rates = [int(x) for x in os.environ.get("BENCH_QOS1_LAT_RATES", "5000 40000").split()]
    for rate in rates:
        print("   latency at %d msg/s (%d leaves / connections):" % (rate, n))
        d5 = b.run([b.mqttload, "pub", "--port", broker.port, "-n", n, "--qos", 1, "--rate",
                    rate, "--duration", secs, "--topic", "q5d/%s", "--prefix", "direct-"],
                   timeout=secs + 60)
        paced = ["--qos", 1, "--rate", "%g" % (rate / n), "--connect-rate", 10000,
                 "--duration", secs, "--start-together", START_TOGETHER_MS]
        r5 = b.run(b.leafsim_cmd(gw, n, "leaf-", "--topic", "q5r/%s", *paced), timeout=secs + 120)
        # The floor: the same leafsim against snfloor, a responder that
        # answers at once with no broker behind it (two UDP hops, two
        # wake-ups, leafsim's own loop).
        port = free_port(socket.SOCK_DGRAM)
        fl = Proc([b.snfloor, "--port", port], b.work / ("snfloor-%d.log" % rate))
        try:
            f5 = b.run(b.leafsim_cmd("%s:%d" % (LOOPBACK, port), n, "leaf-", "--topic", "q5f/%s",
                                     *paced), timeout=secs + 120)
        finally:
            fl.stop()
        fp50, fp99 = f5["latency_us"]["p50"] / 1e3, f5["latency_us"]["p99"] / 1e3
        dp50, dp99 = d5["latency_us"]["p50"] / 1e3, d5["latency_us"]["p99"] / 1e3
        rp50, rp99 = r5["latency_us"]["p50"] / 1e3, r5["latency_us"]["p99"] / 1e3
        d_r = d5["acked"] / d5["elapsed_s"] if d5.get("elapsed_s") else 0
        r_r = r5.get("publish_rate", 0)
        ratio = rp99 / dp99 if dp99 > 0 else 0
        print("   direct %.0f msg/s p50 %.2f ms p99 %.2f ms; relayed %.0f msg/s p50 %.2f ms "
              "p99 %.2f ms; p99 relayed / direct %.2f (added %+.2f ms); leafsim's floor "
              "(snfloor) p50 %.2f ms p99 %.2f ms"
              % (d_r, dp50, dp99, r_r, rp50, rp99, ratio, rp99 - dp99, fp50, fp99), flush=True)
        lat["at%d" % rate] = {"direct": d5, "relayed": r5, "floor": f5,
                              "added_p50_ms": rp50 - dp50,
                              "added_p99_ms": rp99 - dp99, "p99_ratio": ratio}
        lat_rows.append(("QoS 1 latency at %s msg/s, %d leaves" % (format(rate, ","), n),
                         "p99 %.2f vs %.2f ms direct (%.2f x); floor %.2f" % (rp99, dp99, ratio,
                                                                              fp99),
                         "p99 <= 1.2 x direct", "leafsim vs mqttload --rate %d" % rate))
    b.results["qos1"] = dict({"direct": d, "direct_sub_received": d_got, "relayed": r,
                              "relayed_sub_received": r_got, "relayed_rate": r_rate,
                              "direct_rate": d_rate,
                              "round_ratios": [x["ratio"] for x in per_round]}, **lat)
    b.rows += [
        ("QoS 1 direct, %d connections" % n, "%.0f msg/s, p99 %.1f ms"
         % (d_rate, d["latency_us"]["p99"] / 1e3), "(reference)", "mqttload pub --qos 1"),
        ("QoS 1 relayed, %d leaves" % n, "%.0f msg/s (%.0f %%, median of rounds %s), p50 %.1f "
         "ms, p99 %.1f ms, unacked %d" % (r_rate, 100 * r_rate / d_rate if d_rate else 0, ratios,
                                          r["latency_us"]["p50"] / 1e3,
                                          r["latency_us"]["p99"] / 1e3, lost),
         ">= 95 %, 0 loss, p99 <= 100 ms", "fleetgw-leafsim --qos 1"),
    ] + lat_rows


def memory_run(b, workdir, certs, n, tls, tls_max="1.3"):
    """fleetgw's VmRSS with 0 and with n connected leaves, each with its own
    upstream session to a TLS mosquitto (client certificates) or a plain one.
    tls_max: upstream.tls_max_version."""
    broker = Broker(workdir, tls=tls, certs=certs if tls else None)
    name = ("fleetgw-tls" + tls_max.replace(".", "")) if tls else "fleetgw-plain-mem"
    gw = Gateway(b.fleetgw, workdir, broker, certs if tls else None, name=name,
                 up_extra={"tls_max_version": tls_max} if tls else None)
    leafsim = None
    try:
        time.sleep(1.0)
        rss0 = rss_kib(gw.pid)
        cmd = b.leafsim_cmd(gw, n, "mem-", "--connect-rate", 0, "--keepalive", 300)
        show(cmd)
        leafsim = Proc(cmd, workdir / ("leafsim-mem-%s.log" % ("tls" if tls else "plain")))
        t0 = time.monotonic()
        # The CPU the broker and the gateway spend while the leaves come up:
        # which of the two limits the connect time.
        bc0, gc0 = cpu_ticks(broker.pid), cpu_ticks(gw.pid)

        def all_up():
            if not leafsim.alive():
                raise RuntimeError("leafsim exited:\n" + leafsim.text()[-2000:])
            m = gw.metrics()
            return m["leaves_active"] >= n and m["upstreams_up"] >= n

        up = wait_until(all_up, 120, interval=0.5)
        t_up = time.monotonic() - t0
        broker_cpu_s = (cpu_ticks(broker.pid) - bc0) * TICK_US / 1e6
        gw_cpu_s = (cpu_ticks(gw.pid) - gc0) * TICK_US / 1e6
        time.sleep(1.0)  # let allocations settle
        m = gw.metrics()
        rss1, hwm = rss_kib(gw.pid), rss_kib(gw.pid, "VmHWM")
        leafsim.stop(30)
        st = last_json(leafsim.text())
    finally:
        if leafsim is not None and leafsim.alive():
            leafsim.stop()
        gw.stop()
        broker.stop()
    if not up:
        print("   WARNING: not every leaf came up: %r" % m)
    return {"rss_idle_kib": rss0, "rss_kib": rss1, "hwm_kib": hwm,
            "kib_per_leaf": (rss1 - rss0) / n, "t_up_s": t_up,
            "tls_full": m.get("upstream_tls_full", 0),
            "tls_resumed": m.get("upstream_tls_resumed", 0),
            "broker_cpu_s": broker_cpu_s, "gw_cpu_s": gw_cpu_s,
            "leaves_active": m["leaves_active"], "upstreams_up": m["upstreams_up"],
            "leafsim": st}


def section_memory(b, workdir, certs):
    n = env_int("BENCH_LEAVES", 1000)
    print("\n== memory: fleetgw RSS with 0 vs %d leaves, each with its own upstream TLS session"
          % n)
    r = memory_run(b, workdir, certs, n, tls=True)
    print("   RSS %d KiB idle -> %d KiB with %d leaves active and %d upstream TLS sessions up "
          "(peak %d KiB): %.1f KiB per leaf; all up after %.1f s (TLS connect of all: %.0f ms)"
          % (r["rss_idle_kib"], r["rss_kib"], r["leaves_active"], r["upstreams_up"],
             r["hwm_kib"], r["kib_per_leaf"], r["t_up_s"], r["leafsim"]["connect_last_ms"]),
          flush=True)
    print("   while they came up: broker CPU %.1f s (%.0f %% of a core), gateway CPU %.1f s "
          "(%.0f %% of a core); TLS handshakes %d full, %d resumed"
          % (r["broker_cpu_s"], 100 * r["broker_cpu_s"] / r["t_up_s"],
             r["gw_cpu_s"], 100 * r["gw_cpu_s"] / r["t_up_s"], r["tls_full"], r["tls_resumed"]),
          flush=True)
    # The breakdown: the same leaves with plain TCP upstreams measure what a
    # leaf costs without TLS (its LAN session, relay link, upstream session
    # and queues, outbox lane, topic tables, libuv handles, socket); the
    # difference is the TLS state (OpenSSL's SSL, record-layer ciphers, the
    # session and ticket, the server certificate when not resumed).
    p = memory_run(b, workdir, certs, n, tls=False)
    tls_part = r["kib_per_leaf"] - p["kib_per_leaf"]
    print("   breakdown per leaf: %.1f KiB without TLS (session, relay link, upstream, "
          "queues, topic tables, libuv) + %.1f KiB TLS state = %.1f KiB"
          % (p["kib_per_leaf"], tls_part, r["kib_per_leaf"]), flush=True)
    print("   plain TCP upstreams: all up after %.1f s, broker CPU %.1f s, gateway CPU %.1f s"
          % (p["t_up_s"], p["broker_cpu_s"], p["gw_cpu_s"]), flush=True)
    # The same with upstream.tls_max_version "1.2": TLS 1.2 resumption has no
    # key shares, no session copy per connection and frees its transcript.
    r12 = None
    if os.environ.get("BENCH_MEMORY_TLS12", "1") != "0":
        r12 = memory_run(b, workdir, certs, n, tls=True, tls_max="1.2")
        print("   with upstream.tls_max_version \"1.2\": %.1f KiB per leaf (TLS state %.1f KiB); "
              "all up after %.1f s, broker CPU %.1f s (%.0f %% of a core), gateway CPU %.1f s; "
              "TLS handshakes %d full, %d resumed"
              % (r12["kib_per_leaf"], r12["kib_per_leaf"] - p["kib_per_leaf"], r12["t_up_s"],
                 r12["broker_cpu_s"], 100 * r12["broker_cpu_s"] / r12["t_up_s"],
                 r12["gw_cpu_s"], r12["tls_full"], r12["tls_resumed"]), flush=True)
    b.results["memory"] = dict(r, leaves=n, plain=p, tls_kib_per_leaf=tls_part, tls12=r12)
    b.rows += [
        ("memory per connected leaf (TLS upstream), %d leaves" % n,
         "%.1f KiB" % r["kib_per_leaf"], "<= 16 KiB", "VmRSS(%d leaves) - VmRSS(0) over %d"
         % (n, n)),
        ("... of which TLS state / the rest", "%.1f / %.1f KiB" % (tls_part, p["kib_per_leaf"]),
         "", "the same run with plain TCP upstreams"),
        ("connect %d leaves over TLS upstream" % n, "%.0f ms" % r["leafsim"]["connect_last_ms"],
         "", "fleetgw-leafsim -n %d (TLS broker)" % n),
        ("... all %d up; broker / gateway CPU meanwhile" % n,
         "%.1f s; %.0f / %.0f %% of a core" % (r["t_up_s"], 100 * r["broker_cpu_s"] / r["t_up_s"],
                                              100 * r["gw_cpu_s"] / r["t_up_s"]),
         "<= 5 s (10,000) where the broker keeps up", "upstreams_up = N"),
        ("... broker CPU a TLS connection (one-threaded: the floor of the above)",
         "%.2f ms (%.1f s for %d)" % (1e3 * r["broker_cpu_s"] / n, r["broker_cpu_s"], n), "",
         "/proc/<mosquitto>/stat"),
    ]
    if r12:
        b.rows += [
            ("memory per leaf, upstream.tls_max_version 1.2", "%.1f KiB" % r12["kib_per_leaf"],
             "<= 16 KiB", "the same, TLS 1.2 only"),
            ("... all %d up; broker CPU a connection" % n,
             "%.1f s; %.2f ms" % (r12["t_up_s"], 1e3 * r12["broker_cpu_s"] / n), "",
             "upstreams_up = N"),
        ]


def sn_connect(client_id, duration=60):
    """An MQTT-SN CONNECT (CleanSession) for client_id."""
    cid = client_id.encode()
    return bytes([6 + len(cid), 0x04, 0x04, 0x01, duration >> 8, duration & 0xFF]) + cid


def connack_delay_ms(sock, client_id, timeout=2.0):
    """CONNECT from sock; ms until its CONNACK (None on time-out) and its rc."""
    sock.settimeout(timeout)
    t0 = time.monotonic()
    sock.send(sn_connect(client_id))
    while True:
        try:
            data = sock.recv(64)
        except socket.timeout:
            return None, None
        if len(data) >= 3 and data[1] == 0x05:
            return (time.monotonic() - t0) * 1000.0, data[2]


def section_flood(b, workdir):
    n = env_int("BENCH_FLOOD_IDS", 10000)
    ips, ports = 100, 10
    print("\n== flood: %d made-up ClientIds from %d IPs x %d sockets (admission \"open\", "
          "default new-identity limits, local CA issuing) while a known leaf reconnects"
          % (n, ips, ports))
    broker = Broker(workdir)
    extra = {"admission": {"policy": "open"},
             "provisioning": {"backend": "local-ca",
                              "local_ca": {"cert_file": str(workdir / "flood-ca.crt"),
                                           "key_file": str(workdir / "flood-ca.key")}}}
    gw = Gateway(b.fleetgw, workdir, broker, name="fleetgw-flood", extra=extra)
    socks = []
    try:
        host, port = gw.addr.split(":")
        known = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        known.connect((host, int(port)))
        # The known leaf gets its identity (and certificate) before the flood.
        first, rc = connack_delay_ms(known, "genuine-1", timeout=10)
        while rc != 0:
            time.sleep(0.3)
            first, rc = connack_delay_ms(known, "genuine-1", timeout=10)
        time.sleep(1.0)
        rss0 = rss_kib(gw.pid)
        for i in range(ips):
            for _ in range(ports):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.9.%d.%d" % (i // 250, i % 250 + 1), 0))
                s.setblocking(False)
                s.connect((host, int(port)))
                socks.append(s)
        stop = [False]
        delays = []

        def reconnects():
            while not stop[0]:
                d, rc = connack_delay_ms(known, "genuine-1")
                delays.append(d if rc == 0 else None)
                time.sleep(0.02)
        t = threading.Thread(target=reconnects)
        t.start()
        t0 = time.monotonic()
        sent = 0
        for k in range(n):
            try:
                socks[k % len(socks)].send(sn_connect("flood-%05d" % k))
                sent += 1
            except BlockingIOError:
                pass
            if k % 200 == 199:
                time.sleep(0.005)  # ~40k CONNECT/s: no kernel drops on loopback
        t_flood = time.monotonic() - t0
        time.sleep(2.0)
        stop[0] = True
        t.join()
        time.sleep(2.0)  # provisioning of what was admitted
        m = gw.metrics()
        rss1 = rss_kib(gw.pid)
        import sqlite3
        con = sqlite3.connect("file:%s?mode=ro" % gw.registry, uri=True, timeout=5)
        devices = con.execute("SELECT count(*) FROM devices").fetchone()[0]
        certs = con.execute("SELECT count(*) FROM certificates").fetchone()[0]
        con.close()
    finally:
        for s in socks:
            s.close()
        gw.stop()
        broker.stop()
    ok = sorted(d for d in delays if d is not None)
    lost = len(delays) - len(ok)
    p50 = ok[len(ok) // 2] if ok else float("nan")
    worst = ok[-1] if ok else float("nan")
    print("   %d CONNECTs sent in %.2f s; throttled %d; devices %d, certificates %d (1 of them the "
          "known leaf's); RSS %d -> %d KiB; known leaf: %d reconnects, CONNACK p50 %.2f ms, "
          "max %.2f ms, %d without an accepted CONNACK"
          % (sent, t_flood, m.get("new_ids_throttled", 0), devices, certs, rss0, rss1,
             len(delays), p50, worst, lost), flush=True)
    b.results["flood"] = {"sent": sent, "seconds": t_flood, "metrics": m, "devices": devices,
                          "certificates": certs, "rss_before_kib": rss0, "rss_after_kib": rss1,
                          "known_connack_ms": ok, "known_not_accepted": lost}
    b.rows += [
        ("flood of %d made-up ClientIds: certificates minted" % n, "%d" % (certs - 1),
         "<= admission.new_ids (30/min)", "BENCH_ONLY=flood"),
        ("flood: RSS before -> after", "%d -> %d KiB" % (rss0, rss1), "bounded", ""),
        ("flood: known leaf's CONNACK delay", "p50 %.2f ms, max %.2f ms, %d refused"
         % (p50, worst, lost), "< 100 ms", ""),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="the build-bench directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    only = set(filter(None, os.environ.get("BENCH_ONLY", "qos0,connect,qos1,memory,flood,dtls,outbox").split(",")))

    work = Path(tempfile.mkdtemp(prefix="fleetgw-bench-"))
    b = Bench(args.build, work)
    t_start = time.monotonic()
    print("work directory: %s   (%d CPUs, %s)" % (work, os.cpu_count(), os.uname().release))
    broker = gw = None
    rc = 0
    try:
        if only & {"qos0", "connect", "qos1"}:
            broker = Broker(work)
            # BENCH_OUTBOX=0: the relay with outbox.enabled false (QoS 1
            # PUBACK after the broker's), to compare with the default.
            ob = os.environ.get("BENCH_OUTBOX", "1") != "0"
            gw = Gateway(b.fleetgw, work, broker,
                         extra=None if ob else {"outbox": {"enabled": False}})
            print("mosquitto (plain) on %d, fleetgw on udp %s%s"
                  % (broker.port, gw.addr, "" if ob else " (outbox.enabled false)"))
            if "qos0" in only:
                section_qos0(b, broker, gw)
            if "connect" in only:
                section_connect(b, gw)
            if "qos1" in only:
                section_qos1(b, broker, gw)
            gw_rc = gw.stop()
            gw = None
            if gw_rc != 0:
                print("WARNING: fleetgw exited %s on SIGTERM" % gw_rc)
            broker.stop()
            broker = None
        if "memory" in only:
            certs = make_certs(work / "pki")
            section_memory(b, work, certs)
        if "flood" in only:
            section_flood(b, work)
        if "dtls" in only:
            import bench_dtls
            bench_dtls.section_dtls(b, work)
        if "outbox" in only:
            import bench_outbox
            bench_outbox.section_outbox(b, work)
    except Exception as e:  # print what we have, then the error
        print("\nBENCHMARK ERROR: %s" % e)
        rc = 1
        args.keep = True
    finally:
        if gw is not None:
            gw.stop()
        if broker is not None:
            broker.stop()

    print("\n== summary (this machine, this run; %.0f s)" % (time.monotonic() - t_start))
    w = max((len(r[0]) for r in b.rows), default=10)
    for fig, val, target, _ in b.rows:
        print("  %-*s  %-45s %s" % (w, fig, val, ("target " + target) if target else ""))
    out = Path(args.build) / "bench-results.json"
    out.write_text(json.dumps(b.results, indent=2))
    print("\nraw figures: %s" % out)
    if args.keep:
        print("logs kept in %s" % work)
    else:
        subprocess.run(["rm", "-rf", str(work)])
    return rc


if __name__ == "__main__":
    sys.exit(main())
