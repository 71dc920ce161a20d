"""Reconnecting to a broker that closes at once (issue 9, point 8): the
back-off grows (never a fixed one-second loop), it resets only after a
stable connection, and a leaf that asks gets its upstream tried again
without waiting out a long back-off once the broker is good again.

The broker here is a small MQTT 3.1.1 responder on 127.0.0.1 whose
behaviour the test switches: "close" answers CONNACK accepted and closes
the connection at once (what AWS IoT does to a client it refuses after
CONNECT), "good" keeps the connection and answers PINGREQ and QoS 1."""
import re
import socket
import threading
import time

import mqttsn_leaf as sn
from conftest import wait_until

RETRY_RE = re.compile(r"upstream: \S+: .*, retry in (\d+) ms")


class FlakyBroker:
    def __init__(self, mode="close"):
        self.mode = mode
        self.accepts = []          # monotonic time of each accepted connection
        self.conns = []
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.accepts.append(time.monotonic())
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        try:
            if not c.recv(4096):          # CONNECT
                return
            c.sendall(b"\x20\x02\x00\x00")  # CONNACK accepted
            if self.mode == "close":
                return
            self.conns.append(c)
            while not self.stopping and self.mode == "good":
                data = c.recv(4096)
                if not data:
                    return
                if data[0] == 0xC0:          # PINGREQ
                    c.sendall(b"\xd0\x00")
                elif data[0] & 0xF0 == 0x30 and data[0] & 0x06 == 0x02:  # PUBLISH QoS 1
                    tlen = (data[2] << 8) | data[3]
                    pid = data[4 + tlen:6 + tlen]
                    c.sendall(b"\x40\x02" + pid)
        except OSError:
            pass
        finally:
            if self.mode == "close" or self.stopping:
                c.close()

    def drop_all(self):
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns = []

    def close(self):
        self.stopping = True
        self.srv.close()
        self.drop_all()


def upstream_cfg(fb, base, cap):
    return {"host": "127.0.0.1", "port": fb.port, "tls": False, "backoff_base_ms": base,
            "backoff_cap_ms": cap, "give_up_after_s": 600}


def test_backoff_grows_against_a_broker_that_closes_at_once(gateway):
    fb = FlakyBroker("close")
    try:
        gw = gateway(None, upstream=upstream_cfg(fb, 500, 8000), lan={"connack_timeout_ms": 600000})
        lf = gw.leaf("flaky-1")
        lf.send_raw(sn.encode_connect("flaky-1", 60))
        # Each connection came up (CONNACK) and was closed at once: a
        # stable-connection reset must not happen, so the delays follow
        # min(cap, base * 2^n), with at least one second between attempts.
        assert wait_until(lambda: len(RETRY_RE.findall(gw.log_text())) >= 7, 40)
        delays = [int(d) for d in RETRY_RE.findall(gw.log_text())][:7]
        for n, d in enumerate(delays):
            assert d <= max(1000, min(8000, 500 * 2 ** (n + 1))), delays
        # Full jitter: the later delays are drawn from a range up to 8 s; all
        # seven at or below 1.5 s would be a fixed loop (odds < 1 in 10^4).
        assert max(delays[3:]) > 1500, delays
        gaps = [b - a for a, b in zip(fb.accepts, fb.accepts[1:])]
        assert min(gaps) >= 0.9, gaps
    finally:
        fb.close()


def test_a_leaf_asking_cuts_a_long_backoff_short(gateway):
    fb = FlakyBroker("good")
    try:
        gw = gateway(None, upstream=upstream_cfg(fb, 2000, 60000),
                     lan={"connack_timeout_ms": 5000})
        lf = gw.connected_leaf("flaky-2", keepalive=300)
        # The broker goes bad (a wrong certificate, an outage): the upstream
        # backs off further with every attempt.
        fb.mode = "close"
        fb.drop_all()
        assert wait_until(lambda: any(int(d) >= 4000 for d in RETRY_RE.findall(gw.log_text())),
                          60), gw.log_text()[-3000:]
        seen = len(fb.accepts)
        # Genuine again; the leaf asks (a new CONNECT): one attempt now, not
        # after the rest of a back-off of several seconds.
        fb.mode = "good"
        t0 = time.monotonic()
        assert lf.connect("flaky-2", keepalive=300, timeout=5) == sn.RC_ACCEPTED
        # (With the outbox the CONNACK does not wait for the upstream: the
        # attempt it caused is what must come at once, and only one.)
        assert wait_until(lambda: len(fb.accepts) >= seen + 1, 5)
        assert time.monotonic() - t0 < 2.5
        time.sleep(0.3)
        assert len(fb.accepts) == seen + 1
        lf.send_raw(sn.encode_pingreq())
        lf.expect(sn.PINGRESP)
    finally:
        fb.close()
