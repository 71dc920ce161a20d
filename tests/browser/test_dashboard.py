"""The dashboard in a real browser: Debian's Chromium driven by playwright-core
(tests/browser/dashboard_test.mjs) against a real fleetgw with its web
server, a real mosquitto and MQTT-SN leaves.

The gateway admits by operator approval (admission.policy "approve") and
provisions with its own CA (backend local-ca, milliseconds), so a leaf that
an operator approves connects, is provisioned and becomes active at once.
Two leaves are connected (and active) before the browser opens; a third keeps
sending CONNECT every 0.5 s and stays pending until the browser clicks its
Approve button; the script then waits, without reloading, for its row to
read "active".

Needs: node (>= 18), /usr/bin/chromium, and tests/browser/node_modules
(`npm ci` here; this test runs it when the folder is missing).
Screenshots: $BUILD_DIR/dashboard.png and dashboard-device.png (BUILD_DIR
defaults to <repo>/build-test)."""
import json
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

import mqttsn_leaf as sn
from conftest import LOOPBACK, REPO, free_port, wait_tcp_port, wait_until

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dashboard_test.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TOKEN = "dash-" + uuid.uuid4().hex
ALLOWED = ["line1-press-01", "line1-press-02"]
PENDING = "robot-arm-17"


def node_ready():
    """node_modules/playwright-core, installed from the lock file if missing."""
    if (HERE / "node_modules" / "playwright-core" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found: install nodejs and npm (apt-get install -y nodejs npm)")
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "npm ci in tests/browser failed:\n" + r.stdout + r.stderr


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


@pytest.fixture
def local_ca(certs, tmp_path):
    """The gateway's CA, and the broker's client-CA bundle (test CA + it)."""
    d = tmp_path / "localca"
    d.mkdir()
    key, crt = d / "ca.key", d / "ca.crt"
    certs._genkey(key)
    certs._run("req", "-x509", "-new", "-key", key, "-days", "30", "-subj",
               "/CN=fleetgw local CA (browser test)", "-config", certs.cnf, "-extensions",
               "v3_ca", "-out", crt)
    bundle = d / "bundle.pem"
    bundle.write_text(certs.ca_crt.read_text() + crt.read_text())
    return crt, key, bundle


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


def test_dashboard_approve_makes_the_row_active_live(gateway, mosquitto, broker_client, local_ca,
                                                     tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("no Chromium at %s: apt-get install -y chromium" % CHROMIUM)
    node = shutil.which("node")
    assert node, "node not found: apt-get install -y nodejs"
    node_ready()
    build_dir = Path(os.environ.get("BUILD_DIR", REPO / "build-test"))
    build_dir.mkdir(parents=True, exist_ok=True)
    shot = build_dir / "dashboard.png"
    for p in (shot, build_dir / "dashboard-device.png", build_dir / "dashboard-failure.png"):
        if p.exists():
            p.unlink()

    crt, key, bundle = local_ca
    broker = mosquitto(tls=True, cafile=bundle)
    web_port = free_port()
    gw = gateway(
        broker, env={"FLEETGW_ADMIN_TOKEN": TOKEN},
        registry={"path": str(tmp_path / "reg.db")},
        upstream={"cert_file": None, "key_file": None},
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
        url = "http://%s:%d/" % (LOOPBACK, web_port)
        env = dict(os.environ, BUILD_DIR=str(build_dir), DASH_SCREENSHOT=str(shot),
                   CHROMIUM=CHROMIUM)
        r = subprocess.run([node, str(SCRIPT), "--url", url, "--token", TOKEN,
                            "--active", ",".join(ALLOWED), "--pending", PENDING],
                           cwd=HERE, env=env, capture_output=True, text=True, timeout=180)
        print(r.stdout)
        print(r.stderr)
        assert r.returncode == 0, "dashboard_test.mjs failed (exit %d):\n%s%s" % (
            r.returncode, r.stdout, r.stderr)
    finally:
        stop.set()
        for t in threads:
            t.join(5)

    # What the browser saw is what happened.
    assert "accepted_at" in result, "the approved leaf never got CONNACK accepted"
    d = rest.device(PENDING)
    assert d["state"] == "active" and d["certificate"] and d["certificate"]["status"] == "active", d
    st, audit = rest.call("GET", "audit?client_id=" + PENDING)
    assert st == 200 and any("approve" in a["action"] for a in audit["items"]), audit
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG: %s" % shot
    assert len(data) > 10000, "suspiciously small screenshot (%d bytes)" % len(data)
