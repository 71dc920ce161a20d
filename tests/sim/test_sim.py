"""Tests of the AWS IoT Core / Fleet Provisioning simulator (tests/sim/aws_iot_sim.js).

They prove that the simulator behaves as docs/protocol-notes.md (§4 to §6) says AWS
does, so that gateway tests run against it mean something. Run with:
    /usr/bin/python3 -m pytest -q tests/sim
"""
import json
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TEMPLATE = os.path.join(ROOT, "deploy", "aws", "provisioning-template.json")
CLAIM_POLICY = os.path.join(ROOT, "deploy", "aws", "claim-policy.json")
DEVICE_POLICY = os.path.join(ROOT, "deploy", "aws", "device-policy.json")
ROT_TEMPLATE = os.path.join(ROOT, "deploy", "aws", "rotation-template.json")
ROT_HOOK = os.path.join(ROOT, "deploy", "aws", "rotation-hook.py")
TPL = "fleetgw"
ROT = "fleetgw-rotation"
# The rotation template, with the pre-provisioning hook that deploy/aws/rotation-hook.py imitates.
ROTATION_ARGS = ["--template", "%s=%s" % (ROT, ROT_TEMPLATE), "--hook", "%s=attached-thing" % ROT]
CSR_TOPIC = "$aws/certificates/create-from-csr/json"
CREATE_TOPIC = "$aws/certificates/create/json"
PROV_TOPIC = "$aws/provisioning-templates/%s/provision/json" % TPL
ROT_TOPIC = "$aws/provisioning-templates/%s/provision/json" % ROT


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


# --------------------------------------------------------------------------------------------
# PKI: a root for server, claim and observer certificates, and the simulator's device CA.
# --------------------------------------------------------------------------------------------
class Pki:
    def __init__(self, d):
        self.d = d

    def p(self, name):
        return os.path.join(self.d, name)

    def eckey(self, name):
        run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", self.p(name + ".key"))
        return self.p(name + ".key")

    def ca(self, name, cn):
        self.eckey(name)
        run("openssl", "req", "-x509", "-new", "-key", self.p(name + ".key"), "-subj", "/CN=" + cn,
            "-days", "3650", "-out", self.p(name + ".pem"),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(self, name, cn, ca, ext):
        self.eckey(name)
        run("openssl", "req", "-new", "-key", self.p(name + ".key"), "-subj", "/CN=" + cn,
            "-out", self.p(name + ".csr"))
        with open(self.p(name + ".ext"), "w") as f:
            f.write(ext + "\n")
        run("openssl", "x509", "-req", "-in", self.p(name + ".csr"), "-CA", self.p(ca + ".pem"),
            "-CAkey", self.p(ca + ".key"), "-CAcreateserial", "-days", "365",
            "-out", self.p(name + ".pem"), "-extfile", self.p(name + ".ext"))


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    k = Pki(str(tmp_path_factory.mktemp("pki")))
    k.ca("root", "sim-test-root")
    k.ca("devca", "sim-device-ca")
    k.leaf("server", "localhost", "root",
           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    k.leaf("claim", "fleetgw-claim", "root", "extendedKeyUsage=clientAuth")
    k.leaf("observer", "sim-observer", "root", "extendedKeyUsage=clientAuth")
    # Signed by the device CA but never issued by the simulator: must be refused.
    k.leaf("forged", "AWS IoT Certificate", "devca", "extendedKeyUsage=clientAuth")
    return k


# --------------------------------------------------------------------------------------------
# The simulator process
# --------------------------------------------------------------------------------------------
class Sim:
    def __init__(self, pki, extra):
        if not os.path.isdir(os.path.join(HERE, "node_modules")):
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
        cmd = ["node", os.path.join(HERE, "aws_iot_sim.js"),
               "--server-cert", pki.p("server.pem"), "--server-key", pki.p("server.key"),
               "--ca", pki.p("root.pem"),
               "--device-ca-cert", pki.p("devca.pem"), "--device-ca-key", pki.p("devca.key"),
               "--template", "%s=%s" % (TPL, TEMPLATE)] + extra
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"SIM READY mqtt=(\d+) control=(\d+)$", line.strip())
        assert m, "simulator did not start: %r" % line
        self.port, self.cport = int(m.group(1)), int(m.group(2))
        self.pki = pki

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
        self.proc.wait(5)


@pytest.fixture(scope="session")
def sim(pki):
    s = Sim(pki, ["--claim-policy", CLAIM_POLICY, "--device-policy", DEVICE_POLICY, "--require-sni"] + ROTATION_ARGS)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sim_builtin(pki):
    """A second simulator on its built-in policies (any template name, custom device prefix)."""
    s = Sim(pki, ["--device-topic-prefix", "things/${thing}/", "--device-topic-prefix", "plant/${thing}/"] + ROTATION_ARGS)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def reset(request):
    for name in ("sim", "sim_builtin"):
        if name in request.fixturenames:
            request.getfixturevalue(name).api("POST", "/reset", {})
    yield


# --------------------------------------------------------------------------------------------
# An MQTT connection (paho 1.6) that always dials 127.0.0.1 but sends the SNI it is given, and
# never reconnects by itself.
# --------------------------------------------------------------------------------------------
class LoopbackClient(mqtt.Client):
    def _create_socket_connection(self):
        return socket.create_connection(("127.0.0.1", self._port), timeout=self._connect_timeout)


class Conn:
    def __init__(self, sim, ident, client_id, sni="localhost", alpn=None, cert=None, key=None):
        self.msgs = queue.Queue()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.suback = queue.Queue()
        self.pubacks = set()
        self.c = LoopbackClient(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
        ctx = ssl.create_default_context(cafile=sim.pki.p("root.pem"))
        ctx.load_cert_chain(cert or sim.pki.p(ident + ".pem"), key or sim.pki.p(ident + ".key"))
        if alpn:
            ctx.set_alpn_protocols([alpn])
        self.c.tls_set_context(ctx)
        self.connack = None

        def on_connect(c, u, f, rc):
            self.connack = rc
            if rc == 0:
                self.connected.set()
        self.c.on_connect = on_connect
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, q: self.suback.put(q)
        self.c.on_publish = lambda c, u, mid: self.pubacks.add(mid)
        # With no SNI wanted, dial by address: Python sends no SNI for an IP address.
        self.c.connect(sni or "127.0.0.1", sim.port, keepalive=60)
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        # paho 1.6 writes from the caller's thread unless it believes a network thread runs;
        # an SSL socket must not be read and written from two threads at once.
        self.c._thread = self.t
        self.t.start()

    def _run(self):
        try:
            while not self.stop:
                if self.c.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                    break
        except (OSError, ssl.SSLError):
            pass
        self.closed.set()

    def ok(self, timeout=5):
        return self.connected.wait(timeout)

    def sub(self, *topics, qos=1):
        for t in topics:
            self.c.subscribe(t, qos)
            assert self.suback.get(timeout=5) is not None

    def pub(self, topic, payload, qos=1):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        return self.c.publish(topic, payload, qos)

    def get(self, timeout=5):
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        time.sleep(0.05)
        self.stop = True
        self.t.join(2)


@pytest.fixture
def conns():
    made = []

    def make(*a, **kw):
        c = Conn(*a, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def request(conn, topic, payload, timeout=10):
    """Subscribe to accepted and rejected (§5.1: before publishing), publish, return (suffix, body)."""
    if topic not in getattr(conn, "subscribed", set()):
        conn.sub(topic + "/accepted", topic + "/rejected")
        conn.subscribed = getattr(conn, "subscribed", set()) | {topic}
    conn.pub(topic, payload)
    m = conn.get(timeout)
    assert m is not None, "no response to %s" % topic
    return m.topic.rsplit("/", 1)[1], json.loads(m.payload)


def make_csr(pki, name, kind="ec"):
    key = pki.p(name + ".key")
    if kind == "ec":
        pki.eckey(name)
    else:
        run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:%d" % kind, "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", "/CN=" + name, "-out", pki.p(name + ".csr"))
    with open(pki.p(name + ".csr")) as f:
        return f.read()


def provision(sim, claim, serial, gateway_id="gw-1"):
    """CSR flow end to end; returns (thingName, cert path, key path, accepted bodies)."""
    name = "dev-" + serial
    csr = make_csr(sim.pki, name)
    kind, created = request(claim, CSR_TOPIC, {"certificateSigningRequest": csr})
    assert kind == "accepted", created
    with open(sim.pki.p(name + ".crt"), "w") as f:
        f.write(created["certificatePem"])
    kind, reg = request(claim, PROV_TOPIC, {"certificateOwnershipToken": created["certificateOwnershipToken"],
                                            "parameters": {"SerialNumber": serial, "GatewayId": gateway_id}})
    assert kind == "accepted", reg
    return reg["thingName"], sim.pki.p(name + ".crt"), sim.pki.p(name + ".key"), created, reg


# --------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------
def test_claim_connects_with_sni_and_alpn(sim, conns):
    claim = conns(sim, "claim", "claim-1", alpn="x-amzn-mqtt-ca")
    assert claim.ok()
    c = sim.state()["clients"]["claim-1"]
    assert c["kind"] == "claim"
    assert c["sni"] == "localhost"
    assert c["alpn"] == "x-amzn-mqtt-ca"


def test_connection_without_sni_is_refused(sim, conns):
    # §6.1: "Connection attempts that don't include the SNI are refused" (--require-sni).
    c = conns(sim, "claim", "claim-nosni", sni=None)
    assert not c.ok(2)
    assert c.closed.wait(5)
    assert sim.state()["counters"]["sni_missing"] == 1


def test_duplicate_client_id_kicks_the_first(sim, conns):
    # §4.1: the new connection is accepted and the previous one disconnected.
    a = conns(sim, "claim", "same-id")
    assert a.ok()
    b = conns(sim, "claim", "same-id")
    assert b.ok()
    assert a.closed.wait(5)
    assert not b.closed.wait(0.5)
    assert sim.state()["counters"]["duplicate_client_id_kicks"] == 1


# --------------------------------------------------------------------------------------------
# CreateCertificateFromCsr + RegisterThing
# --------------------------------------------------------------------------------------------
def test_csr_flow_end_to_end(sim, conns):
    claim = conns(sim, "claim", "claim-csr")
    assert claim.ok()
    csr = make_csr(sim.pki, "csr1")
    kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": csr})
    assert kind == "accepted"
    # §5.2: exactly these fields, no privateKey.
    assert set(body) == {"certificateOwnershipToken", "certificateId", "certificatePem"}
    assert re.fullmatch(r"[0-9a-f]{64}", body["certificateId"])  # §5.4
    assert 200 <= len(body["certificateOwnershipToken"]) <= 1000  # §5.5: opaque, a few hundred bytes
    crt = sim.pki.p("csr1.crt")
    with open(crt, "w") as f:
        f.write(body["certificatePem"])
    run("openssl", "verify", "-CAfile", sim.pki.p("devca.pem"), crt)
    # §5.4: notAfter 2049-12-31T23:59:59Z.
    assert run("openssl", "x509", "-in", crt, "-noout", "-enddate").strip() == "notAfter=Dec 31 23:59:59 2049 GMT"
    # The certificate carries the CSR's public key.
    assert run("openssl", "x509", "-in", crt, "-noout", "-pubkey") == \
        run("openssl", "req", "-in", sim.pki.p("csr1.csr"), "-noout", "-pubkey")
    st = sim.state()
    assert st["certificates"][body["certificateId"]]["state"] == "PENDING_ACTIVATION"

    kind, reg = request(claim, PROV_TOPIC, {"certificateOwnershipToken": body["certificateOwnershipToken"],
                                            "parameters": {"SerialNumber": "A100", "GatewayId": "gw-7"}})
    assert kind == "accepted", reg
    # §5.2: { deviceConfiguration, thingName }; the name per deploy/aws/provisioning-template.json.
    assert reg == {"deviceConfiguration": {"GatewayId": "gw-7", "TopicRoot": "things/fleetgw-A100"},
                   "thingName": "fleetgw-A100"}
    st = sim.state()
    cert = st["certificates"][body["certificateId"]]
    assert cert["state"] == "ACTIVE"
    assert cert["thing"] == "fleetgw-A100"
    assert cert["policies"] == ["fleetgw-device"]
    thing = st["things"]["fleetgw-A100"]
    assert thing["certificates"] == {body["certificateId"]: "ACTIVE"}
    assert thing["attributes"] == {"gateway_id": "gw-7", "serial_number": "A100", "provisioned_by": "fleetgw"}
    assert st["counters"]["certs_issued"] == 1
    assert st["counters"]["register_calls"] == 1
    assert st["counters"]["certs_per_thing"] == {"fleetgw-A100": 1}
    assert st["counters"]["duplicate_attachments"] == 0


def test_reused_csr_gives_a_distinct_certificate(sim, conns):
    claim = conns(sim, "claim", "claim-reuse")
    assert claim.ok()
    csr = make_csr(sim.pki, "csr-reuse")
    ids = set()
    for _ in range(2):
        kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": csr})
        assert kind == "accepted"
        ids.add(body["certificateId"])
    assert len(ids) == 2  # §5.4


@pytest.mark.parametrize("payload,why", [
    ({"certificateSigningRequest": "not a csr"}, "not PEM"),
    ({}, "missing"),
    ("{not json", "bad JSON"),
])
def test_bad_csr_is_rejected(sim, conns, payload, why):
    claim = conns(sim, "claim", "claim-badcsr")
    assert claim.ok()
    kind, body = request(claim, CSR_TOPIC, payload)
    assert kind == "rejected", why
    assert body["statusCode"] == 400
    assert set(body) == {"statusCode", "errorCode", "errorMessage"}


def test_weak_rsa_csr_is_rejected_and_rsa2048_accepted(sim, conns):
    # §5.4: RSA keys of at least 2048 bits.
    claim = conns(sim, "claim", "claim-rsa")
    assert claim.ok()
    kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "rsa1024", 1024)})
    assert (kind, body["statusCode"], body["errorCode"]) == ("rejected", 400, "InvalidCertificateSigningRequest")
    kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "rsa2048", 2048)})
    assert kind == "accepted"


# --------------------------------------------------------------------------------------------
# CreateKeysAndCertificate
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", ["", "{}"])
def test_create_keys_and_certificate(sim, conns, payload):
    claim = conns(sim, "claim", "claim-keys")
    assert claim.ok()
    kind, body = request(claim, CREATE_TOPIC, payload)
    assert kind == "accepted"
    # §5.2 (observed): this key order, a PKCS#1 RSA key.
    assert list(body) == ["certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"]
    assert body["privateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    key, crt = sim.pki.p("keys.key"), sim.pki.p("keys.crt")
    with open(key, "w") as f:
        f.write(body["privateKey"])
    with open(crt, "w") as f:
        f.write(body["certificatePem"])
    assert "Private-Key: (2048 bit" in run("openssl", "rsa", "-in", key, "-noout", "-text")  # §5.4
    assert run("openssl", "pkey", "-in", key, "-pubout") == run("openssl", "x509", "-in", crt, "-noout", "-pubkey")
    assert "CN = AWS IoT Certificate" in run("openssl", "x509", "-in", crt, "-noout", "-subject")
    run("openssl", "verify", "-CAfile", sim.pki.p("devca.pem"), crt)
    assert sim.state()["certificates"][body["certificateId"]]["state"] == "PENDING_ACTIVATION"


def test_cbor_topics_are_recognised(sim, conns):
    # §5.1: the cbor variants exist; the simulator answers them (rejected) in CBOR.
    claim = conns(sim, "claim", "claim-cbor")
    assert claim.ok()
    claim.sub("$aws/certificates/create/cbor/accepted", "$aws/certificates/create/cbor/rejected")
    claim.pub("$aws/certificates/create/cbor", b"\xa0")
    m = claim.get()
    assert m.topic == "$aws/certificates/create/cbor/rejected"
    assert m.qos == 1  # §5.2 (observed): responses at QoS 1
    assert m.payload[0] == 0xa3  # a CBOR map of three pairs
    assert b"statusCode" in m.payload and b"errorCode" in m.payload
    assert not claim.closed.is_set()


# --------------------------------------------------------------------------------------------
# Response routing, tokens
# --------------------------------------------------------------------------------------------
def test_response_goes_only_to_the_requesting_connection(sim, conns):
    # §5.6: results come back over the connection that published the request, nowhere else.
    a = conns(sim, "claim", "claim-a")
    b = conns(sim, "claim", "claim-b")
    obs = conns(sim, "observer", "observer-1")
    assert a.ok() and b.ok() and obs.ok()
    b.sub(CSR_TOPIC + "/accepted", CSR_TOPIC + "/rejected")
    obs.sub("$aws/certificates/#", "#")
    kind, body = request(a, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "route")})
    assert kind == "accepted"
    assert b.get(1.0) is None
    assert obs.get(0.2) is None


def test_unsubscribed_requester_gets_nothing(sim, conns):
    # §5.1: subscribe before publishing, or the response is missed.
    a = conns(sim, "claim", "claim-nosub")
    assert a.ok()
    a.pub(CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "nosub")})
    assert a.get(1.0) is None
    assert sim.state()["counters"]["responses_not_delivered"] == 1


def test_token_is_single_use(sim, conns):
    claim = conns(sim, "claim", "claim-once")
    assert claim.ok()
    name, _, _, created, _ = provision(sim, claim, "S1")
    kind, body = request(claim, PROV_TOPIC, {"certificateOwnershipToken": created["certificateOwnershipToken"],
                                             "parameters": {"SerialNumber": "S1", "GatewayId": "gw-1"}})
    assert (kind, body["statusCode"], body["errorCode"]) == ("rejected", 400, "InvalidCertificateOwnershipToken")
    kind, body = request(claim, PROV_TOPIC, {"parameters": {"SerialNumber": "S1", "GatewayId": "gw-1"}})
    assert body == {"statusCode": 400, "errorCode": "InvalidCertificateOwnershipToken",
                    "errorMessage": "Certificate ownership token cannot be empty."}  # §5.2 observed


def test_token_expiry_deletes_the_unregistered_certificate(sim, conns):
    # §5.5: the token expires (1 h on AWS; shortened here) and the unactivated cert is deleted.
    sim.faults(token_ttl_ms=300)
    claim = conns(sim, "claim", "claim-exp")
    assert claim.ok()
    kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "exp")})
    assert kind == "accepted"
    time.sleep(0.8)
    st = sim.state()
    assert body["certificateId"] not in st["certificates"]
    assert st["counters"]["tokens_expired"] == 1
    assert st["counters"]["deleted_unregistered"] == 1
    kind, rej = request(claim, PROV_TOPIC, {"certificateOwnershipToken": body["certificateOwnershipToken"],
                                            "parameters": {"SerialNumber": "E1", "GatewayId": "gw-1"}})
    assert (kind, rej["statusCode"], rej["errorCode"]) == ("rejected", 400, "InvalidCertificateOwnershipToken")


def test_registered_certificate_survives_token_expiry(sim, conns):
    sim.faults(token_ttl_ms=300)
    claim = conns(sim, "claim", "claim-exp2")
    assert claim.ok()
    name, _, _, created, _ = provision(sim, claim, "E2")
    time.sleep(0.8)
    st = sim.state()
    assert st["certificates"][created["certificateId"]]["state"] == "ACTIVE"
    assert st["counters"]["deleted_unregistered"] == 0


# --------------------------------------------------------------------------------------------
# Template handling
# --------------------------------------------------------------------------------------------
def test_template_is_the_shipped_file(sim):
    assert sim.state()["templates"] == {TPL: os.path.realpath(TEMPLATE), ROT: os.path.realpath(ROT_TEMPLATE)}
    assert sim.state()["hooks"] == {ROT: "attached-thing"}
    with open(TEMPLATE) as f:
        t = json.load(f)
    thing = [r for r in t["Resources"].values() if r["Type"] == "AWS::IoT::Thing"][0]
    assert thing["Properties"]["ThingName"] == {"Fn::Join": ["", ["fleetgw-", {"Ref": "SerialNumber"}]]}
    assert set(t["Parameters"]) >= {"SerialNumber", "GatewayId", "AWS::IoT::Certificate::Id"}


def test_missing_parameter_and_bad_thing_name_are_rejected(sim, conns):
    claim = conns(sim, "claim", "claim-params")
    assert claim.ok()
    for params, code in [({"SerialNumber": "X1"}, "InvalidParameters"),  # GatewayId has no Default
                         ({"SerialNumber": "bad name!", "GatewayId": "g"}, "InvalidParameters"),
                         ({"SerialNumber": 5, "GatewayId": "g"}, "InvalidParameters")]:
        kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "par")})
        assert kind == "accepted"
        kind, rej = request(claim, PROV_TOPIC, {"certificateOwnershipToken": body["certificateOwnershipToken"],
                                                "parameters": params})
        assert (kind, rej["statusCode"], rej["errorCode"]) == ("rejected", 400, code), params
    assert sim.state()["things"] == {}


def test_register_on_existing_thing_is_counted(sim, conns):
    # §5.9: the existing thing is reused and the new certificate attached as well.
    claim = conns(sim, "claim", "claim-dup")
    assert claim.ok()
    _, _, _, first, _ = provision(sim, claim, "D1", "gw-1")
    _, _, _, second, _ = provision(sim, claim, "D1", "gw-2")
    st = sim.state()
    assert st["counters"]["duplicate_attachments"] == 1
    assert st["counters"]["certs_per_thing"] == {"fleetgw-D1": 2}
    assert st["things"]["fleetgw-D1"]["certificates"] == {first["certificateId"]: "ACTIVE",
                                                          second["certificateId"]: "ACTIVE"}
    assert st["things"]["fleetgw-D1"]["attributes"]["gateway_id"] == "gw-2"  # AttributePayload: MERGE


def test_unknown_template_is_404_with_a_permissive_claim_policy(sim_builtin, conns):
    claim = conns(sim_builtin, "claim", "claim-404")
    assert claim.ok()
    kind, body = request(claim, "$aws/provisioning-templates/nosuch/provision/json",
                         {"certificateOwnershipToken": "x", "parameters": {}})
    assert (kind, body["statusCode"]) == ("rejected", 404)


def test_other_template_outside_shipped_claim_policy_closes(sim, conns):
    # §5.7: the shipped claim policy names only the fleetgw template.
    claim = conns(sim, "claim", "claim-othertpl")
    assert claim.ok()
    claim.pub("$aws/provisioning-templates/other/provision/json", {"certificateOwnershipToken": "x"})
    assert claim.closed.wait(5)


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------
def test_claim_publish_outside_policy_closes_with_nothing_sent(sim, conns):
    claim = conns(sim, "claim", "claim-bad")
    assert claim.ok()
    info = claim.pub("things/somebody/data", "x", qos=1)
    assert claim.closed.wait(5)
    assert info.mid not in claim.pubacks  # no PUBACK: nothing is sent (§5.7)
    assert claim.get(0.2) is None
    assert sim.state()["counters"]["policy_violations"] == 1


def test_claim_subscribe_outside_policy_closes(sim, conns):
    claim = conns(sim, "claim", "claim-badsub")
    assert claim.ok()
    claim.c.subscribe("#", 1)
    assert claim.closed.wait(5)
    assert claim.suback.empty()


def test_create_from_csr_is_covered_by_the_shipped_claim_policy(sim):
    # §5.7 gotcha: the AWS example policy lacks create-from-csr; ours must list it.
    with open(CLAIM_POLICY) as f:
        text = f.read()
    assert "topic/$aws/certificates/create-from-csr/*" in text
    assert "topicfilter/$aws/certificates/create-from-csr/*" in text
    assert "topic/$aws/provisioning-templates/%s/provision/*" % TPL in text


def test_device_connects_only_as_its_thing(sim, conns):
    claim = conns(sim, "claim", "claim-dev")
    assert claim.ok()
    name, crt, key, _, _ = provision(sim, claim, "P1")
    wrong = conns(sim, None, "not-" + name, cert=crt, key=key)
    assert not wrong.ok(1.5)
    assert wrong.closed.wait(5)
    assert wrong.connack is None  # §4.7: closed before any CONNACK
    dev = conns(sim, None, name, cert=crt, key=key)
    assert dev.ok()
    c = sim.state()["clients"][name]
    assert c["kind"] == "device"
    assert sim.state()["counters"]["connect_refused"] >= 1


def test_device_publish_reaches_observer_and_commands_reach_device(sim, conns):
    claim = conns(sim, "claim", "claim-relay")
    assert claim.ok()
    name, crt, key, _, _ = provision(sim, claim, "P2")
    obs = conns(sim, "observer", "observer-2")
    dev = conns(sim, None, name, cert=crt, key=key)
    assert obs.ok() and dev.ok()
    obs.sub("things/#", "fleet/#")
    dev.sub("things/%s/cmd" % name)
    dev.pub("things/%s/telemetry" % name, "t=21")
    m = obs.get()
    assert (m.topic, m.payload) == ("things/%s/telemetry" % name, b"t=21")
    obs.pub("things/%s/cmd" % name, "reboot")
    m = dev.get()
    assert (m.topic, m.payload) == ("things/%s/cmd" % name, b"reboot")
    assert sim.api("GET", "/messages?topic=things/%s/%%23" % name)[0]["payload"] == "t=21"


def test_device_outside_its_prefix_is_closed(sim, conns):
    claim = conns(sim, "claim", "claim-devbad")
    assert claim.ok()
    name, crt, key, _, _ = provision(sim, claim, "P3")
    dev = conns(sim, None, name, cert=crt, key=key)
    assert dev.ok()
    dev.pub("things/fleetgw-OTHER/telemetry", "x")
    assert dev.closed.wait(5)
    dev2 = conns(sim, None, name, cert=crt, key=key)
    assert dev2.ok()
    dev2.pub(PROV_TOPIC, "{}")  # a device may not use the claim's provisioning template
    assert dev2.closed.wait(5)


def test_configurable_device_prefixes(sim_builtin, conns):
    claim = conns(sim_builtin, "claim", "claim-pfx")
    assert claim.ok()
    name, crt, key, _, _ = provision(sim_builtin, claim, "P4")
    obs = conns(sim_builtin, "observer", "observer-pfx")
    dev = conns(sim_builtin, None, name, cert=crt, key=key)
    assert obs.ok() and dev.ok()
    obs.sub("plant/#")
    dev.pub("plant/%s/x" % name, "1")
    assert obs.get().topic == "plant/%s/x" % name
    dev.pub("fleet/%s/x" % name, "1")  # not in this simulator's prefix list
    assert dev.closed.wait(5)


def test_unissued_and_inactive_certificates_are_refused(sim, conns):
    forged = conns(sim, "forged", "fleetgw-X")
    assert not forged.ok(1.5)
    claim = conns(sim, "claim", "claim-inact")
    assert claim.ok()
    name, crt, key, created, _ = provision(sim, claim, "P5")
    sim.api("POST", "/certificate", {"certificate_id": created["certificateId"], "state": "INACTIVE"})
    dev = conns(sim, None, name, cert=crt, key=key)
    assert not dev.ok(1.5)
    assert dev.closed.wait(5)
    assert dev.connack is None


def test_pending_certificate_cannot_connect(sim, conns):
    claim = conns(sim, "claim", "claim-pend")
    assert claim.ok()
    kind, body = request(claim, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, "pend")})
    with open(sim.pki.p("pend.crt"), "w") as f:
        f.write(body["certificatePem"])
    dev = conns(sim, None, "fleetgw-PEND", cert=sim.pki.p("pend.crt"), key=sim.pki.p("pend.key"))
    assert not dev.ok(1.5)


# --------------------------------------------------------------------------------------------
# Rate limit and faults
# --------------------------------------------------------------------------------------------
def test_rate_limit_gives_429_throttling(sim, conns):
    sim.faults(rate_limit=2)
    claim = conns(sim, "claim", "claim-rate")
    assert claim.ok()
    claim.sub(CREATE_TOPIC + "/accepted", CREATE_TOPIC + "/rejected")
    for _ in range(6):
        claim.pub(CREATE_TOPIC, "{}")
    got = [claim.get(10) for _ in range(6)]
    rejected = [json.loads(m.payload) for m in got if m.topic.endswith("/rejected")]
    assert len(rejected) >= 3
    assert rejected[0] == {"statusCode": 429, "errorCode": "ThrottlingException", "errorMessage": "Rate exceeded"}
    assert sim.state()["counters"]["throttled"] == len(rejected)


def test_fault_reject_next_k(sim, conns):
    sim.faults(reject={"op": "CreateCertificateFromCsr", "count": 2, "statusCode": 500, "errorCode": "InternalFailure"})
    claim = conns(sim, "claim", "claim-rej")
    assert claim.ok()
    csr = {"certificateSigningRequest": make_csr(sim.pki, "rej")}
    for _ in range(2):
        kind, body = request(claim, CSR_TOPIC, csr)
        assert (kind, body["statusCode"], body["errorCode"]) == ("rejected", 500, "InternalFailure")
    kind, body = request(claim, CSR_TOPIC, csr)
    assert kind == "accepted"
    assert sim.state()["counters"]["rejections"] == {"InternalFailure": 2}


def test_fault_delay_and_silence(sim, conns):
    claim = conns(sim, "claim", "claim-slow")
    assert claim.ok()
    csr = {"certificateSigningRequest": make_csr(sim.pki, "slow")}
    sim.faults(delay_ms=700)
    t0 = time.monotonic()
    assert request(claim, CSR_TOPIC, csr)[0] == "accepted"
    assert time.monotonic() - t0 >= 0.7
    sim.faults(delay_ms=0, silence={"op": "create-from-csr", "count": 1})
    claim.pub(CSR_TOPIC, csr)
    assert claim.get(1.0) is None  # never answered
    assert request(claim, CSR_TOPIC, csr)[0] == "accepted"


def test_fault_drop_after_n_messages(sim, conns):
    claim = conns(sim, "claim", "claim-drop")
    assert claim.ok()
    name, crt, key, _, _ = provision(sim, claim, "P6")
    sim.faults(drop={"client_id": name, "messages": 2})
    obs = conns(sim, "observer", "observer-drop")
    dev = conns(sim, None, name, cert=crt, key=key)
    assert obs.ok() and dev.ok()
    obs.sub("things/#")
    infos = [dev.pub("things/%s/n" % name, str(i)) for i in range(3)]
    assert dev.closed.wait(5)
    assert [obs.get(2).payload for _ in range(2)] == [b"0", b"1"]
    assert obs.get(0.5) is None
    assert infos[2].mid not in dev.pubacks  # the third was lost, unacknowledged
    # One-shot: the device can reconnect and publish again.
    dev2 = conns(sim, None, name, cert=crt, key=key)
    assert dev2.ok()
    dev2.pub("things/%s/n" % name, "3")
    assert obs.get().payload == b"3"


def test_reset_clears_state(sim, conns):
    claim = conns(sim, "claim", "claim-reset")
    assert claim.ok()
    provision(sim, claim, "R1")
    sim.api("POST", "/reset", {})
    st = sim.state()
    assert st["things"] == {} and st["certificates"] == {}
    assert st["counters"]["certs_issued"] == 0


def test_faults_from_the_command_line(pki):
    s = Sim(pki, ["--fault-reject", "create-from-csr:1:503:ServiceUnavailable", "--fault-silence", "register:2",
                  "--fault-delay-ms", "10", "--fault-drop", "dev:7", "--rate-limit", "5", "--token-ttl-ms", "1000"])
    try:
        f = s.state()["faults"]
        assert f["reject"] == [{"op": "CreateCertificateFromCsr", "count": 1, "statusCode": 503,
                                "errorCode": "ServiceUnavailable", "errorMessage": "Injected fault"}]
        assert f["silence"] == [{"op": "RegisterThing", "count": 2}]
        assert f["delay"] == [{"op": None, "ms": 10}]
        assert f["drop"] == [{"client_id": "dev", "messages": 7}]
        assert (f["rate_limit"], f["token_ttl_ms"]) == (5, 1000)
    finally:
        s.stop()
