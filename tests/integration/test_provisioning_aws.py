"""Provisioning exactly once with AWS IoT Fleet Provisioning by claim, against
the AWS IoT Core simulator (tests/sim/aws_iot_sim.js, written from the AWS
documentation, sharing no code with the gateway).  The simulator is configured
from the template and policies the project ships in deploy/aws/."""
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest

import mqttsn_leaf as sn
from conftest import (REPO, connect_until_accepted, registry_certs, registry_db,
                      registry_device, wait_until)

SIM_DIR = REPO / "tests" / "sim"
TEMPLATE = REPO / "deploy" / "aws" / "provisioning-template.json"
CLAIM_POLICY = REPO / "deploy" / "aws" / "claim-policy.json"
DEVICE_POLICY = REPO / "deploy" / "aws" / "device-policy.json"
DEV_ACTIVE, DEV_FAILED = 3, 4
CERT_ACTIVE, CERT_ORPHANED = 1, 2


def openssl(*args):
    subprocess.run(["openssl"] + [str(a) for a in args], check=True, capture_output=True)


class Pki:
    """A root (server, claim and observer certificates) and the simulator's
    device CA (it signs the certificates the 'cloud' issues)."""

    def __init__(self, d):
        self.d = Path(d)
        self.ca("root", "sim-test-root")
        self.ca("devca", "sim-device-ca")
        self.leaf("server", "localhost", "root",
                  "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        self.leaf("claim", "fleetgw-claim", "root", "extendedKeyUsage=clientAuth")
        self.leaf("observer", "sim-observer", "root", "extendedKeyUsage=clientAuth")

    def p(self, name):
        return self.d / name

    def key(self, name):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                self.p(name + ".key"))

    def ca(self, name, cn):
        self.key(name)
        openssl("req", "-x509", "-new", "-key", self.p(name + ".key"), "-subj", "/CN=" + cn,
                "-days", "30", "-out", self.p(name + ".pem"),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(self, name, cn, ca, ext):
        self.key(name)
        openssl("req", "-new", "-key", self.p(name + ".key"), "-subj", "/CN=" + cn, "-out",
                self.p(name + ".csr"))
        self.p(name + ".ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", self.p(name + ".csr"), "-CA", self.p(ca + ".pem"),
                "-CAkey", self.p(ca + ".key"), "-CAcreateserial", "-days", "30",
                "-out", self.p(name + ".pem"), "-extfile", self.p(name + ".ext"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("awspki"))


class Sim:
    def __init__(self, pki, workdir, extra=()):
        if not (SIM_DIR / "node_modules").is_dir():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SIM_DIR, check=True)
        self.log = Path(workdir) / "sim.stderr"
        cmd = ["node", str(SIM_DIR / "aws_iot_sim.js"),
               "--server-cert", pki.p("server.pem"), "--server-key", pki.p("server.key"),
               "--ca", pki.p("root.pem"),
               "--device-ca-cert", pki.p("devca.pem"), "--device-ca-key", pki.p("devca.key"),
               "--template", "fleetgw=%s" % TEMPLATE,
               "--claim-policy", CLAIM_POLICY, "--device-policy", DEVICE_POLICY,
               "--require-sni"] + list(extra)
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                                     stderr=open(self.log, "wb"), text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"SIM READY mqtt=(\d+) control=(\d+)$", line.strip())
        assert m, "simulator did not start: %r\n%s" % (line, self.log.read_text())
        self.port, self.cport = int(m.group(1)), int(m.group(2))

    def api(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.cport, path), data=data,
                                     method=method, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def state(self):
        return self.api("GET", "/state")

    def faults(self, **kw):
        return self.api("POST", "/faults", kw)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def sim(pki, tmp_path):
    s = Sim(pki, tmp_path)
    yield s
    s.stop()


def aws_gateway(gateway, sim, pki, tmp_path, env=None, **kw):
    over = {
        "registry": {"path": str(tmp_path / "reg.db")},
        "upstream": {"host": "localhost", "port": sim.port, "tls": True,
                     "ca_file": str(pki.p("root.pem")), "cert_file": None, "key_file": None,
                     "client_id_template": None, "backoff_base_ms": 200},
        "provisioning": {
            "backend": "aws", "rate_per_s": 50, "retry_base_ms": 200, "retry_cap_ms": 2000,
            "request_timeout_ms": 4000,
            "aws": {"claim_cert_file": str(pki.p("claim.pem")),
                    "claim_key_file": str(pki.p("claim.key")),
                    "template_name": "fleetgw", "parameters": {"GatewayId": "gw-1"}},
        },
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(over.get(k), dict):
            for k2, v2 in v.items():
                if isinstance(v2, dict) and isinstance(over[k].get(k2), dict):
                    over[k][k2].update(v2)
                else:
                    over[k][k2] = v2
        else:
            over[k] = v
    return gateway(None, env=env, **over)


class Observer:
    """The simulator's test observer (CN sim-observer): sees what devices
    publish.  Writes go through the network thread (one TLS stream, one
    thread)."""

    def __init__(self, sim, pki, topic):
        self.msgs = []
        self.cv = threading.Condition()
        self.c = paho.Client(client_id="observer-%d" % os.getpid(), protocol=paho.MQTTv311)
        ctx = ssl.create_default_context(cafile=str(pki.p("root.pem")))
        ctx.load_cert_chain(str(pki.p("observer.pem")), str(pki.p("observer.key")))
        self.c.tls_set_context(ctx)
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc: c.subscribe(topic, 1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("localhost", sim.port, 60)
        self.c.loop_start()
        assert self.subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, c, u, m):
        with self.cv:
            self.msgs.append((m.topic, m.payload))
            self.cv.notify_all()

    def wait(self, n, timeout=10):
        with self.cv:
            self.cv.wait_for(lambda: len(self.msgs) >= n, timeout)
            return list(self.msgs)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()










def thing_certs(state, thing):
    return state["things"].get(thing, {}).get("certificates", {})


def test_end_to_end_leaf_to_cloud(gateway, sim, pki, tmp_path):
    gw = aws_gateway(gateway, sim, pki, tmp_path)
    obs = Observer(sim, pki, "fleet/#")
    try:
        lf = gw.leaf("leaf-1")
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
        # Thing name from the shipped template: fleetgw-<SerialNumber>.
        tid = lf.register("fleet/fleetgw-leaf-1/telemetry")
        assert lf.publish(tid, b"hello cloud", qos=1) == sn.RC_ACCEPTED
        msgs = obs.wait(1)
        assert ("fleet/fleetgw-leaf-1/telemetry", b"hello cloud") in msgs
    finally:
        obs.close()
    st = sim.state()
    # Its own connection, client id = thing name, with the certificate issued for it.
    assert st["clients"]["fleetgw-leaf-1"]["kind"] == "device"
    certs = thing_certs(st, "fleetgw-leaf-1")
    assert list(certs.values()) == ["ACTIVE"]
    rows = registry_certs(tmp_path / "reg.db", "leaf-1")
    assert [(r["cert_id"], r["status"]) for r in rows] == [(list(certs)[0], CERT_ACTIVE)]
    d = registry_device(tmp_path / "reg.db", "leaf-1")
    assert d["state"] == DEV_ACTIVE and d["thing_name"] == "fleetgw-leaf-1"
    # The claim connections' SNI was the endpoint's name (docs/protocol-notes.md §6.1).
    assert any(c["sni"] == "localhost" for c in st["clients"].values())


def test_reconnects_and_two_restarts_issue_no_second_certificate(gateway, sim, pki, tmp_path):
    gw = aws_gateway(gateway, sim, pki, tmp_path)
    lf = gw.leaf("leaf-2")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    for _ in range(20):
        lf.disconnect()
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    for _ in range(2):
        assert gw.terminate() == 0
        gw.start()
        lf = gw.leaf("leaf-2")
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    c = sim.state()["counters"]
    assert c["certs_issued"] == 1
    assert c["duplicate_attachments"] == 0
    assert len(registry_certs(tmp_path / "reg.db", "leaf-2")) == 1


def test_hundred_leaves_at_once_within_the_rate_limit(gateway, pki, tmp_path):
    sim = Sim(pki, tmp_path, ["--rate-limit", "15"])
    try:
        gw = aws_gateway(gateway, sim, pki, tmp_path,
                         provisioning={"rate_per_s": 10, "aws": {"pool_size": 4}},
                         lan={"connack_timeout_ms": 3000})
        ids = ["leaf-%03d" % i for i in range(100)]
        results = {}

        def run(cid):
            results[cid] = connect_until_accepted(gw.leaf(cid), timeout=120)
        threads = [threading.Thread(target=run, args=(cid,)) for cid in ids]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        took = time.monotonic() - t0
        assert sorted(results) == ids and set(results.values()) == {sn.RC_ACCEPTED}
        st = sim.state()
        c = st["counters"]
        assert c["certs_issued"] == 100
        assert c["duplicate_attachments"] == 0
        assert c["throttled"] == 0          # the gateway kept under the cloud's limit
        assert sorted(st["things"]) == sorted("fleetgw-" + i for i in ids)
        assert all(list(thing_certs(st, "fleetgw-" + i).values()) == ["ACTIVE"] for i in ids)
        rows = registry_certs(tmp_path / "reg.db")
        assert len(rows) == 100 and len({r["cert_id"] for r in rows}) == 100
        # 200 requests (CSR + RegisterThing each) at 10/s take at least ~19 s.
        assert took >= 15
    finally:
        sim.stop()


@pytest.mark.parametrize("point", ["csr_sent", "cert_received", "register_sent", "registered"])
def test_crash_at_each_step_leaves_one_active_certificate(gateway, pki, tmp_path, point):
    sim = Sim(pki, tmp_path, ["--token-ttl-ms", "8000"])
    try:
        gw = aws_gateway(gateway, sim, pki, tmp_path,
                         env={"FLEETGW_TEST_CRASH_AFTER": point},
                         provisioning={"aws": {"token_ttl_s": 8}})
        gw.leaf("leaf-x").send_raw(sn.encode_connect("leaf-x", 60))
        assert wait_until(lambda: not gw.alive(), 15), "the test hook did not fire"
        assert gw.proc.returncode == -signal.SIGKILL
        gw.env = None
        gw.start()
        assert connect_until_accepted(gw.leaf("leaf-x")) == sn.RC_ACCEPTED
        reg = tmp_path / "reg.db"
        rows = registry_certs(reg, "leaf-x")
        active = [r["cert_id"] for r in rows if r["status"] == CERT_ACTIVE]
        orphaned = [r["cert_id"] for r in rows if r["status"] == CERT_ORPHANED]
        assert len(active) == 1, [dict(r) for r in rows]
        st = sim.state()
        cloud = thing_certs(st, "fleetgw-leaf-x")
        assert cloud.get(active[0]) == "ACTIVE"
        # Every other certificate the cloud attached to the thing is listed as
        # orphaned in the registry, for cleanup.
        leftovers = sorted(c for c in cloud if c != active[0])
        assert leftovers == sorted(orphaned), (cloud, [dict(r) for r in rows])
        if point == "register_sent":
            assert len(orphaned) == 1
        if point in ("cert_received", "registered"):
            assert orphaned == [] and st["counters"]["certs_issued"] == 1
        if point == "csr_sent":
            # The certificate issued for the reply that was never read is
            # deleted by the cloud when its ownership token expires (docs/protocol-notes.md §5.5).
            assert wait_until(lambda: sim.state()["counters"]["deleted_unregistered"] == 1, 15)
            assert orphaned == []
    finally:
        sim.stop()


def test_expired_token_orphans_the_certificate_and_starts_over(gateway, pki, tmp_path):
    sim = Sim(pki, tmp_path, ["--token-ttl-ms", "2000"])
    try:
        gw = aws_gateway(gateway, sim, pki, tmp_path, env={"FLEETGW_TEST_CRASH_AFTER": "cert_received"},
                         provisioning={"aws": {"token_ttl_s": 2}})
        gw.leaf("leaf-t").send_raw(sn.encode_connect("leaf-t", 60))
        assert wait_until(lambda: not gw.alive(), 15)
        time.sleep(3)  # the token expires while the gateway is down
        gw.env = None
        gw.start()
        assert connect_until_accepted(gw.leaf("leaf-t")) == sn.RC_ACCEPTED
        rows = registry_certs(tmp_path / "reg.db", "leaf-t")
        assert [r["status"] for r in rows] == [CERT_ORPHANED, CERT_ACTIVE]
        assert "expired" in rows[0]["reason"]
        with registry_db(tmp_path / "reg.db") as con:
            acts = [r[0] for r in con.execute("SELECT action FROM audit WHERE client_id='leaf-t'")]
        assert "cert.orphaned" in acts
    finally:
        sim.stop()


def test_throttling_and_server_errors_are_retried_without_duplicates(gateway, pki, tmp_path):
    sim = Sim(pki, tmp_path, ["--rate-limit", "3"])
    try:
        gw = aws_gateway(gateway, sim, pki, tmp_path, provisioning={"rate_per_s": 30},
                         lan={"connack_timeout_ms": 2000})
        sim.faults(reject={"op": "RegisterThing", "count": 3, "statusCode": 500,
                           "errorCode": "InternalFailure"})
        ids = ["leaf-r%02d" % i for i in range(12)]
        results = {}

        def run(cid):
            results[cid] = connect_until_accepted(gw.leaf(cid), timeout=120)
        threads = [threading.Thread(target=run, args=(cid,)) for cid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert set(results.values()) == {sn.RC_ACCEPTED}
        c = sim.state()["counters"]
        assert c["throttled"] > 0
        assert c["certs_issued"] == 12 and c["duplicate_attachments"] == 0
        assert gw.metrics()["provision_rejected"] >= c["throttled"]
    finally:
        sim.stop()


def test_permanent_rejection_is_recorded_and_the_leaf_refused(gateway, sim, pki, tmp_path):
    gw = aws_gateway(gateway, sim, pki, tmp_path)
    sim.faults(reject={"op": "RegisterThing", "count": 1, "statusCode": 400,
                       "errorCode": "InvalidParameters", "errorMessage": "bad SerialNumber"})
    lf = gw.leaf("leaf-bad")
    deadline = time.monotonic() + 20
    rc = None
    while time.monotonic() < deadline:
        rc = lf.connect(keepalive=60)
        if rc != sn.RC_CONGESTION:
            break
        time.sleep(0.3)
    assert rc == sn.RC_NOT_SUPPORTED
    d = registry_device(tmp_path / "reg.db", "leaf-bad")
    assert d["state"] == DEV_FAILED
    assert "InvalidParameters" in d["last_error"] and "bad SerialNumber" in d["last_error"]
    rows = registry_certs(tmp_path / "reg.db", "leaf-bad")
    assert [r["status"] for r in rows] == [CERT_ORPHANED]
    # It stays refused (no new run, no new certificate) until an operator acts.
    assert lf.connect(keepalive=60) == sn.RC_NOT_SUPPORTED
    assert sim.state()["counters"]["certs_issued"] == 1


def test_create_keys_method_uses_the_cloud_made_rsa_key(gateway, sim, pki, tmp_path):
    gw = aws_gateway(gateway, sim, pki, tmp_path, provisioning={"aws": {"method": "create-keys"}})
    obs = Observer(sim, pki, "fleet/#")
    try:
        lf = gw.leaf("leaf-k")
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
        tid = lf.register("fleet/fleetgw-leaf-k/telemetry")
        assert lf.publish(tid, b"rsa", qos=1) == sn.RC_ACCEPTED
        assert ("fleet/fleetgw-leaf-k/telemetry", b"rsa") in obs.wait(1)
    finally:
        obs.close()
    st = sim.state()
    assert st["counters"]["requests"].get("CreateKeysAndCertificate") == 1
    assert not st["counters"]["requests"].get("CreateCertificateFromCsr")
    assert list(thing_certs(st, "fleetgw-leaf-k").values()) == ["ACTIVE"]
    rows = registry_certs(tmp_path / "reg.db", "leaf-k")
    assert [r["status"] for r in rows] == [CERT_ACTIVE]
    # The cloud's private key is stored encrypted, never in clear.
    assert b"RSA PRIVATE KEY" not in (tmp_path / "reg.db").read_bytes()
