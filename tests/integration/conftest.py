"""Integration-test harness for fleetgw: real mosquitto, real fleetgw, an
independent paho-mqtt client at the broker and the project's own MQTT-SN leaf
(tests/leaf/mqttsn_leaf.py).  Everything listens and connects on 127.0.0.1.

Run with:  /usr/bin/python3 -m pytest tests/integration
Environment:
  FLEETGW_BIN        the gateway binary (default <repo>/build/fleetgw)
  FLEETGW_LOG_LEVEL  the gateway's log_level in tests (default "debug")
  MOSQUITTO_BIN      default /usr/sbin/mosquitto

What the harness assumes about the gateway (keep these in one place):
  * `fleetgw --config FILE` runs in the foreground and logs to stderr.
  * Once its UDP socket is bound it logs a line containing the word "ready"
    (READY_RE).  As a fallback, readiness is also probed with SEARCHGW ->
    GWINFO sent unicast to lan.bind:lan.port.
  * SIGUSR1 makes it log one line "... metrics {json}" (METRICS_RE) with a
    JSON object of counters; metric names are in METRIC below.
  * SIGTERM is a graceful stop and the process exits 0.
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "leaf"))
import mqttsn_leaf as sn  # noqa: E402

import paho.mqtt.client as paho  # noqa: E402

FLEETGW_BIN = os.environ.get("FLEETGW_BIN", str(REPO / "build" / "fleetgw"))
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
GW_LOG_LEVEL = os.environ.get("FLEETGW_LOG_LEVEL", "debug")
LOOPBACK = "127.0.0.1"

# --- assumptions about the gateway's observable output (provisional) ------
READY_RE = re.compile(r"\bready\b")
METRICS_RE = re.compile(r"\bmetrics (\{.*\})\s*$")
# harness key -> the gateway's metric name (gateway/metrics.h METRICS_MAP).
METRIC = {
    "malformed": "datagrams_malformed",      # datagrams rejected by the MQTT-SN decoder
    "too_long": "datagrams_too_long",        # datagrams over 2048 bytes, dropped unread
    "qos_m1_dropped": "qos_m1_dropped",      # QoS -1 publishes dropped (no proxy client)
    "sleep_dropped": "queue_dropped",        # messages for a leaf dropped: its queue was full
    "leaves_connected": "leaves_active",     # gauge: leaves connected and active
}
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)"
                          r"|runtime error:")

# mosquitto 2.0: "New client connected from 127.0.0.1:41234 as leaf-1 (p2, c1, k60, u'gw')."
MOSQ_CONNECTED_RE = re.compile(
    r"New client connected from (\S+) as (\S+) \(p\d+, c\d+, k\d+(?:, u'([^']*)')?\)")


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_tcp_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_until(pred, timeout, interval=0.05):
    """Poll pred() until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def deep_merge(base, over):
    """Merge dict `over` into a copy of `base`; a None value deletes the key."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def find_metric(obj, name):
    """Find counter `name` in a (possibly nested) metrics object."""
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        for v in obj.values():
            r = find_metric(v, name)
            if r is not None:
                return r
    return None


def tail(path, n=80):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _test_failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


# ---------------------------------------------------------------------------
# certificates
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
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class Certs:
    """A throw-away PKI made with the openssl CLI: a CA, a server cert for
    localhost/127.0.0.1, a client cert "gateway" (shared by all leaves), a
    client cert "tester" for the paho client, and per-ClientId client certs
    on demand."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cnf = self.root / "openssl.cnf"
        self.cnf.write_text(OPENSSL_CNF)
        self.ca_key = self.root / "ca.key"
        self.ca_crt = self.root / "ca.crt"
        self._lock = threading.Lock()
        self._genkey(self.ca_key)
        self._run("req", "-x509", "-new", "-key", self.ca_key, "-days", "30", "-subj",
                  "/CN=fleetgw-test-ca", "-config", self.cnf, "-extensions", "v3_ca",
                  "-out", self.ca_crt)
        self.server_crt, self.server_key = self._issue("localhost", "server", self.root)
        self.gateway_crt, self.gateway_key = self.client("gateway")
        self.tester_crt, self.tester_key = self.client("tester")

    def _run(self, *args):
        cmd = ["openssl"] + [str(a) for a in args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr))

    def _genkey(self, path):
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", path)

    def _issue(self, cn, ext, outdir):
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        key, csr, crt = outdir / (cn + ".key"), outdir / (cn + ".csr"), outdir / (cn + ".crt")
        self._genkey(key)
        self._run("req", "-new", "-key", key, "-subj", "/CN=" + cn, "-config", self.cnf,
                  "-out", csr)
        self._run("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                  "-set_serial", str(random.getrandbits(63)), "-days", "30",
                  "-extfile", self.cnf, "-extensions", ext, "-out", crt)
        csr.unlink()
        return crt, key

    def client(self, cn):
        """(crt, key) paths of a client certificate with CN=cn (cached)."""
        with self._lock:
            d = self.root / "clients"
            crt, key = d / (cn + ".crt"), d / (cn + ".key")
            if crt.exists() and key.exists():
                return crt, key
            return self._issue(cn, "client", d)

    def cert_dir(self, client_ids, name=None):
        """A directory holding <ClientId>.crt and <ClientId>.key for each id
        (upstream.cert_dir layout)."""
        d = self.root / (name or ("certdir-" + uuid.uuid4().hex[:8]))
        d.mkdir(parents=True, exist_ok=True)
        for cid in client_ids:
            if not (d / (cid + ".crt")).exists():
                with self._lock:
                    self._issue(cid, "client", d)
        return d


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------------------
# mosquitto
# ---------------------------------------------------------------------------
class Broker:
    """One mosquitto on 127.0.0.1, plain or TLS (require_certificate, the
    client certificate's CN used as the user name so the log shows which
    certificate each connection presented)."""

    def __init__(self, workdir, tls=False, certs=None, extra_conf="", cafile=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.certs = certs
        self.port = free_port()
        self.host = LOOPBACK
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.proc = None
        self.starts = 0
        lines = [
            "listener %d %s" % (self.port, LOOPBACK),
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # mosquitto started as root would otherwise switch to the
            # "mosquitto" user and could not read the test's key files.
            "user root",
            "max_inflight_messages 20",
        ]
        if tls:
            if certs is None:
                raise ValueError("a TLS broker needs certs")
            lines += [
                "cafile %s" % (cafile or certs.ca_crt),
                "certfile %s" % certs.server_crt,
                "keyfile %s" % certs.server_key,
                "require_certificate true",
                "use_identity_as_username true",
            ]
        self.conf.write_text("\n".join(lines) + "\n" + extra_conf)

    def start(self, timeout=10.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log, "ab") as logf:
            logf.write(("---- start #%d ----\n" % self.starts).encode())
            logf.flush()
            self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.conf)],
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if not wait_tcp_port(self.port, timeout, self.proc):
            raise RuntimeError("mosquitto did not start on %d:\n%s" % (self.port, tail(self.log)))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, down_for=0.0):
        """Stop and start again on the same port."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        return self.start()

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def connections(self):
        """[(client id, user name or None)] in the order mosquitto logged them."""
        return [(m.group(2), m.group(3)) for m in MOSQ_CONNECTED_RE.finditer(self.log_text())]

    def client_ids(self):
        return [c for c, _ in self.connections()]

    def wait_connected(self, client_id, timeout=5.0):
        """Wait until mosquitto logs a connection for client_id; returns the
        user name it logged (the certificate CN on a TLS broker) or ''."""
        def find():
            for cid, user in self.connections():
                if cid == client_id:
                    return (user or "",)
            return None
        r = wait_until(find, timeout)
        if not r:
            raise AssertionError("broker never saw client id %r; it saw %r" %
                                 (client_id, self.client_ids()[-20:]))
        return r[0]


@pytest.fixture
def mosquitto(tmp_path, request, certs):
    """Factory: mosquitto(tls=False, extra_conf="", cafile=None) -> a started
    Broker.  cafile: the CAs trusted for client certificates (default: the
    test CA)."""
    brokers = []

    def make(tls=False, extra_conf="", cafile=None):
        b = Broker(tmp_path / ("mosquitto-%d" % len(brokers)), tls=tls,
                   certs=certs if tls else None, extra_conf=extra_conf, cafile=cafile)
        brokers.append(b)
        return b.start()
    yield make
    for b in brokers:
        if _test_failed(request):
            print("\n==== mosquitto log (%s) ====\n%s" % (b.log, tail(b.log, 60)))
        b.stop()
        b.kill()


@pytest.fixture
def broker(mosquitto):
    """A plain (no TLS) mosquitto."""
    return mosquitto()


# ---------------------------------------------------------------------------
# the independent MQTT client at the broker
# ---------------------------------------------------------------------------
class Received:
    __slots__ = ("t", "topic", "payload", "qos", "retain")

    def __init__(self, t, topic, payload, qos, retain):
        self.t, self.topic, self.payload, self.qos, self.retain = t, topic, payload, qos, retain

    def __repr__(self):
        return "<%s %r q%d%s>" % (self.topic, self.payload, self.qos, " r" if self.retain else "")


class BrokerClient:
    """paho-mqtt 1.6 client connected straight to the broker (its own TLS
    client certificate "tester" on a TLS broker).  Collects every message
    with a time.monotonic() stamp; re-subscribes after a reconnect."""

    def __init__(self, broker, client_id=None, certs=None):
        self.broker = broker
        self.client_id = client_id or ("tester-" + uuid.uuid4().hex[:8])
        self.messages = []
        self.subs = {}
        self._cv = threading.Condition()
        self._connected = threading.Event()
        self._suback = {}
        c = paho.Client(client_id=self.client_id, clean_session=True, protocol=paho.MQTTv311)
        if broker.tls:
            c.tls_set(ca_certs=str(certs.ca_crt), certfile=str(certs.tester_crt),
                      keyfile=str(certs.tester_key))
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self._connected.clear()
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(1, 2)
        self.c = c
        c.connect(LOOPBACK, broker.port, keepalive=30)
        c.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("paho client could not connect to the broker")

    def _on_connect(self, client, userdata, flags, rc):
        if rc == 0:
            for f, q in list(self.subs.items()):
                client.subscribe(f, q)
            self._connected.set()

    def _on_subscribe(self, client, userdata, mid, granted):
        with self._cv:
            self._suback[mid] = granted
            self._cv.notify_all()

    def _on_message(self, client, userdata, m):
        with self._cv:
            self.messages.append(Received(time.monotonic(), m.topic, m.payload, m.qos, m.retain))
            self._cv.notify_all()

    def wait_connected(self, timeout=15.0):
        return self._connected.wait(timeout)

    def subscribe(self, topic_filter, qos=1, timeout=5.0):
        self.subs[topic_filter] = qos
        rc, mid = self.c.subscribe(topic_filter, qos)
        assert rc == paho.MQTT_ERR_SUCCESS
        with self._cv:
            ok = self._cv.wait_for(lambda: mid in self._suback, timeout)
        assert ok, "no SUBACK from the broker for %r" % topic_filter
        return self._suback[mid]

    def publish(self, topic, payload, qos=1, retain=False, timeout=5.0):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        assert info.is_published(), "broker did not take the publish on %r" % topic
        return info

    def on_topic(self, topic):
        with self._cv:
            return [m for m in self.messages if m.topic == topic]

    def wait_messages(self, n, timeout=5.0, topic=None):
        """Wait for n messages (on `topic` if given); returns them."""
        def sel():
            return [m for m in self.messages if topic is None or m.topic == topic]
        with self._cv:
            self._cv.wait_for(lambda: len(sel()) >= n, timeout)
            got = sel()
        assert len(got) >= n, "expected %d message(s)%s at the broker, got %r" % (
            n, "" if topic is None else " on %r" % topic, got)
        return got

    def expect_none(self, duration, topic=None):
        """Assert nothing (on topic) arrives for `duration` seconds."""
        start = len(self.messages)
        time.sleep(duration)
        with self._cv:
            got = [m for m in self.messages[start:] if topic is None or m.topic == topic]
        assert not got, "unexpected messages at the broker: %r" % got

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


@pytest.fixture
def broker_client(certs, mosquitto):
    """Factory: broker_client(broker, client_id=None) -> connected BrokerClient."""
    clients = []

    def make(broker, client_id=None):
        bc = BrokerClient(broker, client_id, certs)
        clients.append(bc)
        return bc
    yield make
    for bc in clients:
        bc.close()


# ---------------------------------------------------------------------------
# the gateway
# ---------------------------------------------------------------------------
class Gateway:
    def __init__(self, workdir, config):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.port = config["lan"]["port"]
        self.addr = (LOOPBACK, self.port)
        self.config_path = self.workdir / "fleetgw.json"
        self.log = self.workdir / "fleetgw.stderr"
        self.proc = None
        self.env = None           # extra environment for the next start()
        self.leaves = []
        self.exit_code = None
        self.predefined = {int(k): v for k, v in
                           config.get("lan", {}).get("predefined_topics", {}).items()}

    def start(self, timeout=10.0):
        if not os.path.exists(FLEETGW_BIN):
            pytest.fail("gateway binary not found: %s (build it, or set FLEETGW_BIN)"
                        % FLEETGW_BIN)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        # A restarted gateway appends to the same log: readiness is judged on
        # what this process writes, not on an earlier "ready" line.
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as logf:
            env = dict(os.environ, **self.env) if self.env else None
            self.proc = subprocess.Popen([FLEETGW_BIN, "--config", str(self.config_path)],
                                         stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                         cwd=str(self.workdir), env=env)
        if not self._wait_ready(timeout):
            rc = self.proc.poll()
            self.kill()
            pytest.fail("fleetgw not ready (exit %s); config %s\n%s"
                        % (rc, json.dumps(self.config), tail(self.log)))
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((LOOPBACK, 0))
        probe.settimeout(0.1)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                if READY_RE.search(self.log_text()[self._log_start:]):
                    return True
                try:
                    probe.sendto(sn.encode_searchgw(0), self.addr)
                    data, _ = probe.recvfrom(2048)
                    if sn.decode(data).type == sn.GWINFO:
                        return True
                except (OSError, sn.DecodeError):
                    pass
                time.sleep(0.05)
            return False
        finally:
            probe.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def leaf(self, client_id=None, **kw):
        """A new Leaf aimed at this gateway (closed at teardown)."""
        kw.setdefault("predefined", self.predefined)
        lf = sn.Leaf(self.addr, client_id, **kw)
        self.leaves.append(lf)
        return lf

    def connected_leaf(self, client_id, keepalive=60, **kw):
        lf = self.leaf(client_id, **kw)
        rc = lf.connect(keepalive=keepalive)
        assert rc == sn.RC_ACCEPTED, "CONNACK rc=0x%02X for %s" % (rc, client_id)
        return lf

    def metrics(self, timeout=3.0):
        """SIGUSR1, then parse the newest "metrics {json}" line."""
        assert self.alive(), "gateway not running"
        before = len(self._metrics_lines())
        os.kill(self.proc.pid, signal.SIGUSR1)
        ok = wait_until(lambda: len(self._metrics_lines()) > before, timeout)
        assert ok, "no metrics line after SIGUSR1:\n" + tail(self.log, 20)
        return json.loads(self._metrics_lines()[-1])

    def metric(self, key, timeout=3.0):
        """One counter by its harness key (see METRIC); 0 when absent."""
        v = find_metric(self.metrics(timeout), METRIC[key])
        return 0 if v is None else v

    def _metrics_lines(self):
        out = []
        for line in self.log_text().splitlines():
            m = METRICS_RE.search(line)
            if m:
                out.append(m.group(1))
        return out

    def terminate(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.exit_code = "killed after SIGTERM timeout"
                return self.exit_code
        self.exit_code = self.proc.returncode
        return self.exit_code

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)

    def close_leaves(self):
        for lf in self.leaves:
            lf.request_stop()
        for lf in self.leaves:
            lf.close()


def gateway_config(lan_port, broker=None, certs=None):
    """The base config the tests start from: short timers, debug logs."""
    cfg = {
        "log_level": GW_LOG_LEVEL,
        "gateway_id": 1,
        "lan": {
            "bind": LOOPBACK,
            "port": lan_port,
            "t_retry_ms": 2000,
            "n_retry": 3,
            "connack_timeout_ms": 5000,
        },
        "upstream": {
            "host": LOOPBACK,
            "port": broker.port if broker else free_port(),
            "tls": bool(broker and broker.tls),
            "keepalive_s": 30,
            "connect_timeout_ms": 3000,
            "backoff_base_ms": 200,
            "backoff_cap_ms": 1000,
            "give_up_after_s": 60,
            "client_id_template": "{client_id}",
        },
        # The web server is off unless a test turns it on (with a free port).
        "web": {"enabled": False},
        # Tests connect many made-up ClientIds from one socket: "open", and
        # the new-identity rate limits off (test_lan_bounds.py puts them
        # back to the gateway's defaults).
        "admission": {"policy": "open", "new_ids_per_port": 0, "new_ids_per_ip": 0,
                      "new_ids": 0},
    }
    if broker is not None and broker.tls:
        cfg["upstream"].update(ca_file=str(certs.ca_crt), cert_file=str(certs.gateway_crt),
                               key_file=str(certs.gateway_key))
    return cfg


@pytest.fixture
def gateway(tmp_path, request, certs, mosquitto):
    """Factory: gateway(broker=None, **overrides) -> a started Gateway.

    overrides are deep-merged into gateway_config(), e.g.
    gateway(broker, lan={"queue_max": 3}, upstream={"give_up_after_s": 2}).
    A None value removes a key.  At teardown the gateway is stopped with
    SIGTERM and must exit 0 (unless the test already stopped it)."""
    gws = []

    def make(broker=None, env=None, **overrides):
        cfg = deep_merge(gateway_config(free_port(socket.SOCK_DGRAM), broker, certs), overrides)
        # Each gateway gets its own registry unless the test shares one
        # (restart tests pass registry={"path": ...}).
        cfg.setdefault("registry", {}).setdefault(
            "path", str(tmp_path / ("registry-%d.db" % len(gws))))
        gw = Gateway(tmp_path / ("fleetgw-%d" % len(gws)), cfg)
        gw.env = env
        gws.append(gw)
        return gw.start()
    yield make
    problems = []
    for gw in gws:
        was_running = gw.alive()
        rc = gw.terminate()
        gw.close_leaves()
        if was_running and rc != 0:
            problems.append("fleetgw exited %r on SIGTERM" % (rc,))
        if SANITIZER_RE.search(gw.log_text()):
            problems.append("sanitizer report in %s" % gw.log)
        if problems or _test_failed(request):
            print("\n==== fleetgw stderr (%s) ====\n%s" % (gw.log, tail(gw.log, 120)))
    if problems:
        pytest.fail("; ".join(problems))



# ---------------------------------------------------------------------------
# the gateway's own CA (provisioning backend local-ca) and a broker trusting it
# ---------------------------------------------------------------------------
@pytest.fixture
def local_ca(certs, tmp_path):
    """A CA for the gateway (made here so the broker can trust it), and the
    broker's client-CA bundle: the test CA plus the local CA.
    Returns (ca.crt, ca.key, bundle.pem)."""
    d = tmp_path / "localca"
    d.mkdir()
    key, crt = d / "ca.key", d / "ca.crt"
    certs._genkey(key)
    certs._run("req", "-x509", "-new", "-key", key, "-days", "30", "-subj",
               "/CN=fleetgw local CA (test)", "-config", certs.cnf, "-extensions", "v3_ca",
               "-out", crt)
    bundle = d / "bundle.pem"
    bundle.write_text(certs.ca_crt.read_text() + crt.read_text())
    return crt, key, bundle


@pytest.fixture
def ca_broker(mosquitto, local_ca):
    """A TLS mosquitto requiring client certificates from the test CA or the
    gateway's local CA."""
    return mosquitto(tls=True, cafile=local_ca[2])


# ---------------------------------------------------------------------------
# the registry (read-only views for assertions) and a leaf's CONNECT retries
# ---------------------------------------------------------------------------
def registry_db(path):
    """A read-only connection to a gateway's registry (rows by column name)."""
    import sqlite3
    con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    return con


def registry_certs(path, client_id=None):
    """Certificates (with their device's ClientId and thing name), oldest
    first; one device's when client_id is given."""
    q = ("SELECT d.client_id, d.thing_name, c.cert_id, c.status, c.fingerprint, c.reason,"
         " c.not_after FROM certificates c JOIN devices d ON d.id = c.device_id")
    with registry_db(path) as con:
        if client_id:
            return con.execute(q + " WHERE d.client_id = ? ORDER BY c.id", (client_id,)).fetchall()
        return con.execute(q + " ORDER BY c.id").fetchall()


def registry_device(path, client_id):
    with registry_db(path) as con:
        return con.execute("SELECT * FROM devices WHERE client_id = ?", (client_id,)).fetchone()


def registry_audit(path, client_id):
    """The audit actions about one device, oldest first."""
    with registry_db(path) as con:
        return [r[0] for r in con.execute(
            "SELECT action FROM audit WHERE client_id = ? ORDER BY id", (client_id,))]


def connect_until_accepted(lf, timeout=30.0, keepalive=60):
    """CONNECT, retrying on 'congestion' as a leaf does after T_WAIT (and on
    no answer, while a gateway restarts); returns the last CONNACK code, or
    None when the gateway never answered."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rc = lf.connect(keepalive=keepalive)
        except sn.Timeout:
            rc = None
        if rc == sn.RC_ACCEPTED or time.monotonic() > deadline:
            return rc
        assert rc in (sn.RC_CONGESTION, None), "CONNACK rc=0x%02X" % rc
        time.sleep(0.3)

def pytest_configure(config):
    # paho 1.6 builds its TLS context with the deprecated PROTOCOL_TLS.
    config.addinivalue_line("filterwarnings",
                            "ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")
