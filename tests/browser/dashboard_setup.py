"""What the dashboard tests in every browser share: a real fleetgw with its
web server, a real mosquitto (TLS, trusting the gateway's local CA) and
MQTT-SN leaves.

The gateway admits by operator approval (admission.policy "approve") and
provisions with its own CA (backend local-ca, milliseconds), so a leaf that
an operator approves connects, is provisioned and becomes active at once.
The leaves in ALLOWED are connected (and active) before the browser opens
and keep up some traffic both ways; PENDING keeps sending CONNECT every
0.5 s and stays pending until somebody approves it.

    with dashboard_fleet(gateway, mosquitto, broker_client, local_ca, tmp_path) as fleet:
        ... drive a browser at fleet.url, sign in with TOKEN ...
    check_outcome(fleet, screenshot_path)

With link=True the gateway reaches the broker through the cuttable TCP proxy
of tests/integration/test_outbox.py (fleet.link.cut(): the uplink is down).
"""
import contextlib
import importlib.util
import json
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import mqttsn_leaf as sn
from conftest import LOOPBACK, REPO, free_port, wait_tcp_port, wait_until

TOKEN = "dash-" + uuid.uuid4().hex
ALLOWED = ["line1-press-01", "line1-press-02"]
PENDING = "robot-arm-17"


def build_dir():
    """$BUILD_DIR (default <repo>/build-test), created: where screenshots go."""
    d = Path(os.environ.get("BUILD_DIR", REPO / "build-test"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def remove_files(*paths):
    for p in paths:
        if p.exists():
            p.unlink()


class Rest:
    """Just enough of the REST API for the setup (admin token)."""

    def __init__(self, port):
        self.base = "http://%s:%d/api/v1/" % (LOOPBACK, port)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": "Bearer " + TOKEN,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as res:
                return res.status, json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def device(self, cid):
        st, d = self.call("GET", "devices/" + urllib.parse.quote(cid, safe=""))
        return d if st == 200 else None


def link_class():
    """Link of tests/integration/test_outbox.py, loaded by path (whatever is
    on sys.path; its tests are not collected from here)."""
    name = "fleetgw_test_outbox"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO / "tests" / "integration" / "test_outbox.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name].Link


def connect_until(lf, rest, timeout=20.0):
    """CONNECT until accepted.  A leaf held pending (the approve policy may
    not consult the allowlist) is approved through the API once."""
    deadline = time.monotonic() + timeout
    approved = False
    while True:
        rc = lf.connect(keepalive=120)
        if rc == sn.RC_ACCEPTED or time.monotonic() > deadline:
            return rc
        assert rc == sn.RC_CONGESTION, "CONNACK rc=0x%02X for %s" % (rc, lf.client_id)
        d = rest.device(lf.client_id)
        if not approved and d and d["state"] == "pending":
            st, body = rest.call("POST", "devices/%s/approve" % lf.client_id, {})
            assert st == 200, (st, body)
            approved = True
        time.sleep(0.2)


def traffic(leaves, bc, stop):
    """Steady, gently varying traffic both ways (QoS 0) so the dashboard's
    rate chart and counters have something to show."""
    i = 0
    while not stop.is_set():
        for cid, (lf, tid) in leaves.items():
            lf.publish(tid, b"%d" % i, qos=0)
            if i % 4 == 0:
                bc.c.publish("fleet/%s/cmd" % cid, b"ping", qos=0)
        i += 1
        stop.wait(0.04 + 0.03 * (1 + math.sin(i / 15.0)))


class Fleet:
    """The running setup: url of the dashboard, rest (admin API client),
    result["accepted_at"] once the pending leaf got CONNACK accepted, gw (the
    conftest Gateway) and link (the Link, or None)."""

    def __init__(self, url, rest, result, gw, link):
        self.url, self.rest, self.result, self.gw, self.link = url, rest, result, gw, link


@contextlib.contextmanager
def dashboard_fleet(gateway, mosquitto, broker_client, local_ca, tmp_path, link=False):
    """Starts broker, gateway (web server on) and leaves; yields a Fleet once
    PENDING is listed as pending; stops the traffic on the way out."""
    crt, key, bundle = local_ca
    broker = mosquitto(tls=True, cafile=bundle)
    upstream = {"cert_file": None, "key_file": None}
    lk = link_class()(broker.port) if link else None
    if lk:
        upstream.update(port=lk.port, backoff_base_ms=100, backoff_cap_ms=300)
    web_port = free_port()
    gw = gateway(
        broker, env={"FLEETGW_ADMIN_TOKEN": TOKEN},
        registry={"path": str(tmp_path / "reg.db")},
        upstream=upstream,
        provisioning={"backend": "local-ca", "thing_name_template": "thing-{client_id}",
                      "local_ca": {"cert_file": str(crt), "key_file": str(key), "create": False}},
        admission={"policy": "approve", "allowlist": ["line1-*"]},
        web={"enabled": True, "bind": LOOPBACK, "port": web_port,
             "admin_token_env": "FLEETGW_ADMIN_TOKEN", "read_token_env": None,
             "open_health": True, "open_metrics": False,
             "static_dir": str(REPO / "web" / "static"),
             "openapi_file": str(REPO / "web" / "openapi.json")})
    assert wait_tcp_port(web_port, 10, gw.proc), "the web server is not listening on %d" % web_port
    rest = Rest(web_port)

    leaves = {}
    for cid in ALLOWED:
        lf = gw.leaf(cid)
        assert connect_until(lf, rest) == sn.RC_ACCEPTED, cid
        assert wait_until(lambda: (rest.device(cid) or {}).get("state") == "active", 10), \
            rest.device(cid)
        tid = lf.register("fleet/%s/telemetry" % cid)
        assert lf.publish(tid, b"hello", qos=1) == sn.RC_ACCEPTED
        lf.subscribe("fleet/%s/cmd" % cid, qos=0)
        leaves[cid] = (lf, tid)
    bc = broker_client(broker)

    stop = threading.Event()
    threads = [threading.Thread(target=traffic, args=(leaves, bc, stop), name="traffic",
                                daemon=True)]
    # The unknown leaf: held pending, it retries every 0.5 s until accepted.
    result = {}
    pending_leaf = gw.leaf(PENDING)

    def retry():
        while not stop.is_set():
            try:
                rc = pending_leaf.connect(keepalive=120, timeout=2.0)
            except sn.Timeout:
                rc = None
            if rc == sn.RC_ACCEPTED:
                result["accepted_at"] = time.monotonic()
                return
            stop.wait(0.5)
    threads.append(threading.Thread(target=retry, name="pending-leaf", daemon=True))
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: (rest.device(PENDING) or {}).get("state") == "pending", 10), \
            rest.device(PENDING)
        yield Fleet("http://%s:%d/" % (LOOPBACK, web_port), rest, result, gw, lk)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        if lk:
            lk.close()


def check_outcome(fleet, shot):
    """What the browser saw is what happened: the approved leaf connected,
    is active with an active certificate, the approval is audited, and the
    screenshot is a real PNG."""
    assert "accepted_at" in fleet.result, "the approved leaf never got CONNACK accepted"
    d = fleet.rest.device(PENDING)
    assert d["state"] == "active" and d["certificate"] and d["certificate"]["status"] == "active", d
    st, audit = fleet.rest.call("GET", "audit?client_id=" + PENDING)
    assert st == 200 and any("approve" in a["action"] for a in audit["items"]), audit
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG: %s" % shot
    assert len(data) > 10000, "suspiciously small screenshot (%d bytes)" % len(data)
