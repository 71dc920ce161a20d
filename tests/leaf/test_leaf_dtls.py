"""The leaf side of MQTT-SN over DTLS 1.2 (leaf_dtls.c, fleetgw-dtls-bridge and
fleetgw-leafsim --dtls) against independent peers only: `openssl s_server`
in DTLS 1.2 mode, with a PSK or with throwaway EC P-256 certificates.

Binaries come from $BUILD_DIR (default /work/main/build); everything runs on
127.0.0.1.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqttsn_leaf as sn  # noqa: E402

BUILD = Path(os.environ.get("BUILD_DIR", "/work/main/build"))
BRIDGE = BUILD / "tests" / "leaf" / "fleetgw-dtls-bridge"
LEAFSIM = BUILD / "tests" / "leaf" / "fleetgw-leafsim"
KEY = "00112233445566778899aabbccddeeff"
OTHER_KEY = "ffeeddccbbaa99887766554433221100"


def binary(path):
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail("%s not built (build it, or set BUILD_DIR)" % path)
    return str(path)


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def udp_bound(port):
    """True once something has bound 127.0.0.1:port (UDP)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == want for line in f.readlines()[1:])


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    pytest.fail("timed out waiting for " + what)


class Reader:
    """Collects a pipe's bytes on a thread."""

    def __init__(self, pipe):
        self.data = b""
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.t.start()

    def _run(self, pipe):
        while True:
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def get(self):
        with self.lock:
            return self.data


class SServer:
    """openssl s_server -dtls1_2 -listen on 127.0.0.1: what it decrypts
    appears on its stdout, what is written to its stdin goes to the client."""

    def __init__(self, tmp_path, *creds, start=True, extra=()):
        self.port = free_udp_port()
        self.msgfile = tmp_path / ("s_server-%d.msg" % self.port)
        self.cmd = ["openssl", "s_server", "-dtls1_2", "-listen",
                    "-accept", "127.0.0.1:%d" % self.port, "-quiet",
                    "-msg", "-msgfile", str(self.msgfile)] + list(creds) + list(extra)
        self.p = None
        if start:
            self.start()

    def start(self):
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.out = Reader(self.p.stdout)
        self.err = Reader(self.p.stderr)
        wait_until(lambda: udp_bound(self.port) or self.p.poll() is not None, 5,
                   "s_server to bind")
        assert self.p.poll() is None, self.err.get().decode(errors="replace")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def wait_output(self, data, timeout=5):
        wait_until(lambda: data in self.out.get(), timeout, "%r at s_server" % data)

    def send(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def messages(self):
        return self.msgfile.read_text() if self.msgfile.exists() else ""

    def received_close_notify(self):
        """A warning close_notify alert (level 1, description 0) came in."""
        lines = self.messages().splitlines()
        return any(a.startswith("<<<") and "content_type=21" in a and b.split() == ["01", "00"]
                   for a, b in zip(lines, lines[1:]))

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


class Bridge:
    def __init__(self, target, *args):
        self.p = subprocess.Popen([binary(BRIDGE), "--listen", "0", "--connect", target]
                                  + list(args),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.lock = threading.Lock()
        self.err = Reader(self.p.stderr)
        threading.Thread(target=self._run, daemon=True).start()
        first = self.wait_line(lambda l: l.startswith("listening "), 5)
        self.port = int(first.split()[1])

    def _run(self):
        for line in self.p.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def wait_line(self, pred, timeout=5):
        def find():
            with self.lock:
                for line in self.lines:
                    if pred(line):
                        return line
            return None
        return wait_until(find, timeout, "a bridge line (have %r, stderr %r)"
                          % (self.lines, self.err.get()[-500:]))

    def events(self, word, peer=None):
        with self.lock:
            return [l for l in self.lines
                    if l.startswith(word + " ") and (peer is None or peer in l.split())]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(10)
        return rc


class PlainLeaf:
    """A plaintext UDP source talking to the bridge."""

    def __init__(self, bridge):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(5)
        self.bridge = ("127.0.0.1", bridge.port)
        self.name = "127.0.0.1:%d" % self.s.getsockname()[1]

    def send(self, data):
        self.s.sendto(data, self.bridge)

    def recv(self):
        data, addr = self.s.recvfrom(65535)
        assert addr == self.bridge
        return data

    def close(self):
        self.s.close()


@pytest.fixture
def procs():
    made = []
    yield made
    for p in made:
        try:
            p.stop()
        except Exception:
            pass


def psk_server(tmp_path, procs, key=KEY, identity="dev-a", **kw):
    s = SServer(tmp_path, "-nocert", "-psk", key, "-psk_identity", identity, **kw)
    procs.append(s)
    return s


def bridge(procs, target, *args):
    b = Bridge(target, *args)
    procs.append(b)
    return b


# --- certificates -------------------------------------------------------------
def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ec_key(path):
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(path))


def make_ca(d, name):
    key, crt = d / (name + ".key"), d / (name + ".crt")
    ec_key(key)
    run("openssl", "req", "-x509", "-new", "-key", str(key), "-subj", "/CN=" + name,
        "-days", "2", "-out", str(crt))
    return crt, key


def issue(d, ca, name, cn=None):
    key, csr, crt = d / (name + ".key"), d / (name + ".csr"), d / (name + ".crt")
    ec_key(key)
    run("openssl", "req", "-new", "-key", str(key), "-subj", "/CN=" + (cn or name),
        "-out", str(csr))
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(int(time.time() * 1000) % 1000000007), "-days", "2",
        "-out", str(crt))
    return crt, key


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "factory-ca")
    other = make_ca(d, "other-ca")
    return {
        "dir": d,
        "ca": ca,
        "other_ca": other,
        "server": issue(d, ca, "gw"),
        "client": issue(d, ca, "dev-a"),
        "stranger": issue(d, other, "stranger"),
    }


def cert_server(tmp_path, procs, pki, extra=()):
    s = SServer(tmp_path, "-cert", str(pki["server"][0]), "-key", str(pki["server"][1]),
                "-Verify", "1", "-verify_return_error", "-CAfile", str(pki["ca"][0]),
                extra=extra)
    procs.append(s)
    return s


def cert_handshake(tmp_path, procs, pki, first, client="client", ca="ca", extra=()):
    """s_server with certificates, a bridge with `client`'s certificate that
    trusts `ca`, and a leaf that sends `first`: (server, bridge, leaf, the
    bridge's handshake line)."""
    srv = cert_server(tmp_path, procs, pki, extra=extra)
    b = bridge(procs, srv.addr, "--cert", str(pki[client][0]), "--key", str(pki[client][1]),
               "--ca", str(pki[ca][0]))
    leaf = PlainLeaf(b)
    leaf.send(first)
    return srv, b, leaf, b.wait_line(lambda l: l.startswith("handshake "))


# --- the bridge, PSK --------------------------------------------------------------
def test_bridge_psk_ccm8_bytes_both_ways(tmp_path, procs):
    srv = psk_server(tmp_path, procs, extra=("-cipher", "PSK-AES128-CCM8"))
    b = bridge(procs, srv.addr, "--psk-identity", "dev-a", "--psk-hex", KEY)
    leaf = PlainLeaf(b)
    every_byte = bytes(range(256))
    leaf.send(every_byte)
    line = b.wait_line(lambda l: l.startswith("handshake "))
    assert line == "handshake ok %s cipher=PSK-AES128-CCM8" % leaf.name
    srv.wait_output(every_byte)
    leaf.send(b"\x00second\n")
    srv.wait_output(every_byte + b"\x00second\n")
    assert srv.out.get() == every_byte + b"\x00second\n"

    # Server to leaf: one write on s_server's stdin is one record, hence
    # one plaintext datagram, byte for byte.
    srv.send(b"\x05\x05\x00\xff\x0a")
    assert leaf.recv() == b"\x05\x05\x00\xff\x0a"
    big = bytes((i * 7) & 0xFF for i in range(1100))
    srv.send(big)
    assert leaf.recv() == big


def test_bridge_default_suite_and_queue_bound(tmp_path, procs):
    # s_server comes up late: the first ClientHello gets no answer, so
    # everything the leaf sends meanwhile waits in the 32-datagram queue.
    srv = psk_server(tmp_path, procs, start=False)
    b = bridge(procs, srv.addr, "--psk-identity", "dev-a", "--psk-hex", KEY)
    leaf = PlainLeaf(b)
    msgs = [b"m%02d;" % i for i in range(40)]
    for m in msgs:
        leaf.send(m)
    b.wait_line(lambda l: l.startswith("dropped ") and "queue full" in l)
    srv.start()  # the retransmitted ClientHello (RFC 6347 §4.2.4) finds it
    line = b.wait_line(lambda l: l.startswith("handshake "), 10)
    assert line.startswith("handshake ok %s cipher=PSK-" % leaf.name)
    expect = b"".join(msgs[:32])
    srv.wait_output(expect)
    time.sleep(0.2)
    assert srv.out.get() == expect
    assert len([l for l in b.events("dropped") if "queue full" in l]) == 8


def test_bridge_wrong_psk_fails_and_keeps_running(tmp_path, procs):
    srv = psk_server(tmp_path, procs)
    b = bridge(procs, srv.addr, "--psk-identity", "dev-a", "--psk-hex", OTHER_KEY,
               "--handshake-timeout-ms", "1500")
    leaf = PlainLeaf(b)
    t0 = time.monotonic()
    leaf.send(b"never")
    line = b.wait_line(lambda l: l.startswith("handshake "), 6)
    assert line.startswith("handshake failed %s " % leaf.name), line
    assert time.monotonic() - t0 < 5
    assert b"never" not in srv.out.get()
    assert b.p.poll() is None
    # The next datagram tries again, and fails again: no crash, no hang.
    leaf.send(b"again")
    wait_until(lambda: len(b.events("handshake failed")) >= 2, 6, "a second failure")
    assert b.p.poll() is None
    assert not b.events("handshake ok")
    assert b.stop() == 0


def test_bridge_sigterm_sends_close_notify(tmp_path, procs):
    srv = psk_server(tmp_path, procs)
    b = bridge(procs, srv.addr, "--psk-identity", "dev-a", "--psk-hex", KEY)
    leaf = PlainLeaf(b)
    leaf.send(b"hi")
    b.wait_line(lambda l: l.startswith("handshake ok "))
    srv.wait_output(b"hi")
    assert not srv.received_close_notify()
    assert b.stop() == 0
    assert b.events("closed") == ["closed " + leaf.name]
    wait_until(srv.received_close_notify, 5, "close_notify at s_server")


def test_bridge_reports_server_close_and_reconnects(tmp_path, procs):
    # -no_ign_eof: s_server ends the connection (close_notify) at EOF on stdin.
    srv = psk_server(tmp_path, procs, extra=("-no_ign_eof",))
    b = bridge(procs, srv.addr, "--psk-identity", "dev-a", "--psk-hex", KEY)
    leaf = PlainLeaf(b)
    leaf.send(b"one")
    b.wait_line(lambda l: l.startswith("handshake ok "))
    srv.wait_output(b"one")
    srv.p.stdin.close()
    b.wait_line(lambda l: l == "closed " + leaf.name)
    assert b.events("alert") == ["alert %s close_notify" % leaf.name]
    assert b.p.poll() is None


def test_bridge_oversize_datagram_refused(tmp_path, procs):
    srv = psk_server(tmp_path, procs, extra=("-cipher", "PSK-AES128-CCM8"))
    b = bridge(procs, srv.addr, "--psk-identity", "dev-a", "--psk-hex", KEY, "--mtu", "256")
    leaf = PlainLeaf(b)
    leaf.send(b"small")
    b.wait_line(lambda l: l.startswith("handshake ok "))
    srv.wait_output(b"small")
    leaf.send(b"x" * 300)
    line = b.wait_line(lambda l: l.startswith("dropped "))
    # CCM_8 costs 13 + 8 + 8 bytes per record (RFC 7925 App. B): 256 - 29.
    assert line == "dropped %s 300 bytes exceed the record payload of 227" % leaf.name
    leaf.send(b"y" * 227)
    srv.wait_output(b"small" + b"y" * 227)
    assert b"x" not in srv.out.get()


# --- the bridge, identity from the ClientId -------------------------------------
def psk_file(tmp_path, rows):
    f = tmp_path / "psks.csv"
    f.write_text("client_id,psk\n" + "".join("%s,%s\n" % r for r in rows))
    return f


def test_bridge_identity_from_clientid(tmp_path, procs):
    srv = psk_server(tmp_path, procs, identity="dev-a")
    f = psk_file(tmp_path, [("dev-b", OTHER_KEY), ("dev-a", KEY)])
    b = bridge(procs, srv.addr, "--identity-from-clientid", "--psk-file", str(f))

    stray = PlainLeaf(b)
    stray.send(sn.encode_searchgw())
    b.wait_line(lambda l: l.startswith("dropped %s " % stray.name))
    unknown = PlainLeaf(b)
    unknown.send(sn.encode_connect("dev-zz"))
    line = b.wait_line(lambda l: l.startswith("dropped %s " % unknown.name))
    assert line.endswith("no PSK for ClientId dev-zz")

    leaf = PlainLeaf(b)
    connect = sn.encode_connect("dev-a", duration=30)
    leaf.send(connect)
    b.wait_line(lambda l: l.startswith("handshake ok %s " % leaf.name))
    srv.wait_output(connect)  # the CONNECT itself goes through, first
    srv.send(sn.encode_connack(0))
    assert sn.decode(leaf.recv()).type == sn.CONNACK
    assert len(b.events("handshake")) == 1


def test_bridge_identity_from_clientid_wrong_key(tmp_path, procs):
    srv = psk_server(tmp_path, procs, identity="dev-b", key=KEY)
    f = psk_file(tmp_path, [("dev-b", OTHER_KEY)])
    b = bridge(procs, srv.addr, "--identity-from-clientid", "--psk-file", str(f),
               "--handshake-timeout-ms", "1500")
    leaf = PlainLeaf(b)
    leaf.send(sn.encode_connect("dev-b"))
    line = b.wait_line(lambda l: l.startswith("handshake "), 6)
    assert line.startswith("handshake failed %s " % leaf.name)
    assert srv.out.get() == b""


# --- the bridge, certificates ---------------------------------------------------
def test_bridge_certificates_verified_both_ways(tmp_path, procs, pki):
    srv, b, leaf, line = cert_handshake(tmp_path, procs, pki, b"\x01\x02cert",
                                        extra=("-cipher", "ECDHE-ECDSA-AES128-CCM8"))
    assert line == "handshake ok %s cipher=ECDHE-ECDSA-AES128-CCM8" % leaf.name
    srv.wait_output(b"\x01\x02cert")
    srv.send(b"back")
    assert leaf.recv() == b"back"


def test_bridge_default_cert_suite(tmp_path, procs, pki):
    _, _, leaf, line = cert_handshake(tmp_path, procs, pki, b"x")
    assert line.startswith("handshake ok %s cipher=ECDHE-ECDSA-AES128-" % leaf.name), line


def test_bridge_wrong_ca_refuses_server(tmp_path, procs, pki):
    srv, b, leaf, line = cert_handshake(tmp_path, procs, pki, b"secret", ca="other_ca")
    assert line.startswith("handshake failed %s certificate verify failed" % leaf.name), line
    time.sleep(0.2)
    assert b"secret" not in srv.out.get()
    assert b.p.poll() is None


def test_bridge_server_refuses_foreign_client_cert(tmp_path, procs, pki):
    srv, b, leaf, line = cert_handshake(tmp_path, procs, pki, b"secret", client="stranger")
    assert line.startswith("handshake failed %s received fatal alert " % leaf.name), line
    assert b.events("alert", leaf.name)
    assert b"secret" not in srv.out.get()


def test_bridge_bad_arguments():
    r = subprocess.run([binary(BRIDGE), "--listen", "0", "--connect", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=5)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([binary(BRIDGE), "--listen", "0", "--connect", "127.0.0.1:1",
                        "--psk-identity", "a", "--psk-hex", "abc"],
                       capture_output=True, text=True, timeout=5)
    assert r.returncode == 1 and "--psk-hex" in r.stderr


# --- leafsim --dtls ---------------------------------------------------------------
def leafsim(*args, timeout=20):
    r = subprocess.run([binary(LEAFSIM), "--stats"] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=timeout)
    stats = None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            stats = json.loads(line)
            break
    return r, stats


def test_leafsim_psk_handshake_then_mqttsn(tmp_path, procs):
    srv = psk_server(tmp_path, procs, identity="leaf-0")
    t0 = time.monotonic()
    r, st = leafsim("--gw", srv.addr, "-n", 1, "--dtls", "--psk-hex", KEY, "--duration", 2.5,
                    "--retry-ms", 300, "--retries", 1, "--congestion-ms", 200)
    assert time.monotonic() - t0 < 8
    assert r.returncode == 0, r.stderr
    d = st["dtls"]
    # s_server speaks no MQTT-SN: the handshake works, the CONNECT arrives
    # inside it byte-exact, no CONNACK ever comes, the request times out;
    # then the leaf ends the association and handshakes again.
    assert d["handshakes_ok"] >= 2 and d["handshakes_failed"] == 0
    assert d["handshake_ms"]["count"] == d["handshakes_ok"]
    assert 0 < d["handshake_ms"]["p50"] <= d["handshake_ms"]["p99"] <= d["handshake_ms"]["max"]
    assert st["connected"] == 0 and st["timeouts"] >= 1 and st["errors"]["send"] == 0
    connect = sn.encode_connect("leaf-0", duration=60)
    assert srv.out.get().startswith(connect + connect)  # sent, then retransmitted
    assert srv.received_close_notify()


def test_leafsim_psk_file(tmp_path, procs):
    srv = psk_server(tmp_path, procs, identity="leaf-0", key=OTHER_KEY)
    f = psk_file(tmp_path, [("leaf-1", KEY), ("leaf-0", OTHER_KEY)])
    r, st = leafsim("--gw", srv.addr, "-n", 1, "--dtls", "--psk-file", f, "--duration", 1)
    assert r.returncode == 0, r.stderr
    assert st["dtls"]["handshakes_ok"] == 1
    srv.wait_output(sn.encode_connect("leaf-0"))
    # A leaf without a key in the file is refused before anything starts.
    r, st = leafsim("--gw", srv.addr, "-n", 3, "--dtls", "--psk-file", f, "--duration", 1)
    assert r.returncode == 1 and st is None
    assert "no PSK for leaf-2" in r.stderr


def test_leafsim_wrong_psk_counts_failures_and_retries(tmp_path, procs):
    srv = psk_server(tmp_path, procs, identity="leaf-0")
    t0 = time.monotonic()
    r, st = leafsim("--gw", srv.addr, "-n", 1, "--dtls", "--psk-hex", OTHER_KEY,
                    "--handshake-timeout-ms", 600, "--retry-ms", 200, "--duration", 3)
    assert time.monotonic() - t0 < 8
    assert r.returncode == 1
    assert "leaf-0: DTLS handshake failed: " in r.stderr
    assert "no DTLS handshake completed" in r.stderr
    d = st["dtls"]
    assert d["handshakes_ok"] == 0 and d["handshakes_failed"] >= 3
    assert st["connects_sent"] == 0 and srv.out.get() == b""


def test_leafsim_cert_dir(tmp_path, procs, pki):
    srv = cert_server(tmp_path, procs, pki)
    d = tmp_path / "leafcerts"
    d.mkdir()
    issue(d, pki["ca"], "leaf-0")
    r, st = leafsim("--gw", srv.addr, "-n", 1, "--dtls", "--cert-dir", d, "--ca", pki["ca"][0],
                    "--duration", 1.5)
    assert r.returncode == 0, r.stderr
    assert st["dtls"]["handshakes_ok"] >= 1
    srv.wait_output(sn.encode_connect("leaf-0"))


def test_leafsim_cert_wrong_ca(tmp_path, procs, pki):
    srv = cert_server(tmp_path, procs, pki)
    r, st = leafsim("--gw", srv.addr, "-n", 1, "--dtls", "--cert", pki["client"][0],
                    "--key", pki["client"][1], "--ca", pki["other_ca"][0], "--duration", 1.5,
                    "--retry-ms", 300)
    assert r.returncode == 1
    assert "DTLS handshake failed: certificate verify failed" in r.stderr
    assert st["dtls"]["handshakes_ok"] == 0 and st["dtls"]["handshakes_failed"] >= 2


def test_leafsim_option_checks():
    for args, why in [
        (["--psk-hex", KEY], "need --dtls"),
        (["--dtls"], "--dtls needs one of"),
        (["--dtls", "--psk-hex", KEY, "--cert-dir", "/tmp"], "--dtls needs one of"),
        (["--dtls", "--cert-dir", "/tmp"], "--ca FILE"),
        (["--dtls", "--psk-hex", "xyz"], "--psk-hex"),
        (["--dtls", "--psk-hex", KEY, "--mtu", "100"], "--mtu"),
        (["--dtls", "--psk-hex", KEY, "--ciphers", "NO-SUCH-CIPHER"], "cipher list"),
    ]:
        r = subprocess.run([binary(LEAFSIM), "--gw", "127.0.0.1:9"] + args,
                           capture_output=True, text=True, timeout=5)
        assert r.returncode == 1, args
        assert why in r.stderr, (args, r.stderr)


PLAIN_KEYS = ["leaves", "connected", "connect_all_ms", "connect_last_ms", "connects_sent",
              "connack_congestion", "connack_refused", "qos", "elapsed_s", "publishes_sent",
              "publishes_acked", "publishes_rejected", "publish_span_s", "publish_rate",
              "first_publish_ms", "latency_us", "received", "retransmissions", "timeouts", "gw_disconnects",
              "sleeps", "wakes", "errors"]


def test_leafsim_plain_mode_unchanged():
    # Without --dtls: plain MQTT-SN datagrams on the wire and the summary
    # the benchmarks parse, key for key, with no "dtls" object.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    try:
        gw = "127.0.0.1:%d" % sink.getsockname()[1]
        p = subprocess.Popen([binary(LEAFSIM), "--gw", gw, "-n", "1", "--stats",
                              "--duration", "0.5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        data, _ = sink.recvfrom(65535)
        assert data == sn.encode_connect("leaf-0", duration=60)
        out, err = p.communicate(timeout=10)
    finally:
        sink.close()
    assert p.returncode == 0, err
    st = json.loads(out.strip().splitlines()[-1])
    assert list(st.keys()) == PLAIN_KEYS
