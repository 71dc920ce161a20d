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


# --------------------------------------------------------------------------------------------
# Certificate rotation over the device's own connection (§5.11)
# --------------------------------------------------------------------------------------------
def device(sim, conns, claim, serial):
    """Provision a thing through the claim connection and connect as it; returns (dev, name, crt, key, created)."""
    name, crt, key, created, _ = provision(sim, claim, serial)
    dev = conns(sim, None, name, cert=crt, key=key)
    assert dev.ok()
    return dev, name, crt, key, created


def rotate(sim, dev, serial, tag, gateway_id="gw-1"):
    """CreateCertificateFromCsr then RegisterThing on the rotation template, both over `dev`.
    Returns (CSR reply, cert path, key path, (kind, RegisterThing reply))."""
    name = "rot-%s-%s" % (serial, tag)
    kind, created = request(dev, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim.pki, name)})
    assert kind == "accepted", created
    with open(sim.pki.p(name + ".crt"), "w") as f:
        f.write(created["certificatePem"])
    reg = request(dev, ROT_TOPIC, {"certificateOwnershipToken": created["certificateOwnershipToken"],
                                   "parameters": {"SerialNumber": serial, "GatewayId": gateway_id}})
    return created, sim.pki.p(name + ".crt"), sim.pki.p(name + ".key"), reg


class Rotated:
    """A thing provisioned by claim, connected as itself, and rotated once over that connection."""
    def __init__(self, sim, conns, serial, gateway_id="gw-1"):
        claim = conns(sim, "claim", "claim-" + serial)
        assert claim.ok()
        self.dev, self.name, self.old_crt, self.old_key, self.old = device(sim, conns, claim, serial)
        self.new, self.new_crt, self.new_key, (kind, self.reg) = rotate(sim, self.dev, serial, "a", gateway_id)
        assert kind == "accepted", self.reg


def test_device_rotates_over_its_own_connection(sim, conns):
    r = Rotated(sim, conns, "ROT1", gateway_id="gw-9")
    dev, name, old, new, new_crt, new_key, reg = r.dev, r.name, r.old, r.new, r.new_crt, r.new_key, r.reg
    # §5.2 shape; the existing thing, not a new one.
    assert reg == {"deviceConfiguration": {"GatewayId": "gw-9", "TopicRoot": "things/" + name}, "thingName": name}
    st = sim.state()
    c = st["certificates"][new["certificateId"]]
    assert (c["state"], c["thing"], c["policies"], c["template"]) == ("ACTIVE", name, ["fleetgw-device"], ROT)
    assert c["requested_by"] == {"kind": "device", "client_id": name, "certificate_id": old["certificateId"]}
    assert c["registered_by"] == c["requested_by"]
    assert st["certificates"][old["certificateId"]]["requested_by"]["kind"] == "claim"
    # §5.11: both certificates ACTIVE and attached; the attributes kept, cert_rotated_by merged.
    assert st["things"][name]["certificates"] == {old["certificateId"]: "ACTIVE", new["certificateId"]: "ACTIVE"}
    assert st["things"][name]["attributes"] == {"gateway_id": "gw-1", "serial_number": "ROT1",
                                                "provisioned_by": "fleetgw", "cert_rotated_by": "fleetgw"}
    assert st["counters"]["certs_per_thing"] == {name: 2}
    assert (st["counters"]["rotations"], st["counters"]["rotations_per_thing"]) == (1, {name: 1})
    assert st["counters"]["register_calls"] == 2 and st["counters"]["hook_denials"] == 0
    view = sim.api("GET", "/thing?name=" + name)
    assert (view["certificate_count"], view["states"]) == (2, {"ACTIVE": 2})
    assert [x["id"] for x in view["certificates"]] == [old["certificateId"], new["certificateId"]]
    # The new certificate connects with the same client id; the old connection is closed (§4.1).
    dev2 = conns(sim, None, name, cert=new_crt, key=new_key)
    assert dev2.ok()
    assert dev.closed.wait(5)
    assert sim.state()["counters"]["duplicate_client_id_kicks"] == 1
    assert sim.state()["clients"][name]["certificate_id"] == new["certificateId"]


def test_deactivated_old_certificate_is_refused_and_the_new_one_connects(sim, conns):
    r = Rotated(sim, conns, "ROT2")
    name, old, old_crt, old_key, new_crt, new_key = r.name, r.old, r.old_crt, r.old_key, r.new_crt, r.new_key
    dev2 = conns(sim, None, name, cert=new_crt, key=new_key)
    assert dev2.ok()
    # The operator retires the old certificate (update-certificate --new-status INACTIVE).
    sim.api("POST", "/certificate", {"certificate_id": old["certificateId"], "state": "INACTIVE"})
    assert sim.api("GET", "/thing?name=" + name)["states"] == {"ACTIVE": 1, "INACTIVE": 1}
    again = conns(sim, None, name, cert=old_crt, key=old_key)
    assert not again.ok(1.5)
    assert again.closed.wait(5) and again.connack is None  # §4.7: closed before any CONNACK
    assert not dev2.closed.is_set()  # the refused CONNECT did not kick the new connection
    # ... and detaches it (detach-thing-principal): even ACTIVE again, it is no longer the thing's.
    sim.api("POST", "/detach", {"certificate_id": old["certificateId"]})
    sim.api("POST", "/certificate", {"certificate_id": old["certificateId"], "state": "ACTIVE"})
    assert sim.api("GET", "/thing?name=" + name)["certificate_count"] == 1
    again = conns(sim, None, name, cert=old_crt, key=old_key)
    assert not again.ok(1.5)
    dev3 = conns(sim, None, name, cert=new_crt, key=new_key)
    assert dev3.ok()


def test_rotation_on_the_builtin_device_policy(sim_builtin, conns):
    # Without --device-policy the built-in one allows the same rotation topics.
    r = Rotated(sim_builtin, conns, "ROT3")
    assert r.reg["thingName"] == r.name
    assert sim_builtin.api("GET", "/thing?name=" + r.name)["states"] == {"ACTIVE": 2}


def test_rotation_token_is_single_use(sim, conns):
    r = Rotated(sim, conns, "ROT4")
    kind, body = request(r.dev, ROT_TOPIC, {"certificateOwnershipToken": r.new["certificateOwnershipToken"],
                                            "parameters": {"SerialNumber": "ROT4", "GatewayId": "gw-1"}})
    assert (kind, body["statusCode"], body["errorCode"]) == ("rejected", 400, "InvalidCertificateOwnershipToken")
    st = sim.state()
    assert st["counters"]["rotations"] == 1 and st["counters"]["certs_per_thing"] == {r.name: 2}


HOOK_DENIAL = {"statusCode": 403, "errorCode": "ACCESS_DENIED",
               "errorMessage": "Pre-provisioning hook did not allow provisioning"}


def test_hook_refuses_a_device_naming_another_thing(sim, conns):
    claim = conns(sim, "claim", "claim-rot-other")
    assert claim.ok()
    dev, name, _, _, _ = device(sim, conns, claim, "ROT5")
    victim, _, _, _, _ = provision(sim, claim, "ROT6")
    for serial in ("ROT6", "NOSUCH"):  # somebody else's thing, and a thing that does not exist
        new, _, _, (kind, body) = rotate(sim, dev, serial, "x")
        assert (kind, body) == ("rejected", HOOK_DENIAL)
        assert sim.state()["certificates"][new["certificateId"]]["state"] == "PENDING_ACTIVATION"
    st = sim.state()
    assert set(st["things"]) == {name, victim}
    assert st["counters"]["certs_per_thing"] == {name: 1, victim: 1}
    assert (st["counters"]["hook_denials"], st["counters"]["rotations"]) == (2, 0)
    assert st["counters"]["rejections"] == {"ACCESS_DENIED": 2}
    assert not dev.closed.is_set()  # a rejection, not a policy violation


def test_hook_refuses_a_claim_connection(sim_builtin, conns):
    # The built-in claim policy allows any template, so the request reaches the hook.
    claim = conns(sim_builtin, "claim", "claim-rot-claim")
    assert claim.ok()
    name, _, _, _, _ = provision(sim_builtin, claim, "ROT7")
    kind, created = request(claim, CSR_TOPIC, {"certificateSigningRequest": make_csr(sim_builtin.pki, "rot-claim")})
    assert kind == "accepted"
    kind, body = request(claim, ROT_TOPIC, {"certificateOwnershipToken": created["certificateOwnershipToken"],
                                            "parameters": {"SerialNumber": "ROT7", "GatewayId": "gw-1"}})
    assert (kind, body) == ("rejected", HOOK_DENIAL)
    assert sim_builtin.state()["counters"]["certs_per_thing"] == {name: 1}


def test_shipped_claim_policy_does_not_reach_the_rotation_template(sim, conns):
    claim = conns(sim, "claim", "claim-rot-policy")
    assert claim.ok()
    claim.pub(ROT_TOPIC, {"certificateOwnershipToken": "x"})
    assert claim.closed.wait(5)


@pytest.mark.parametrize("action,topic", [
    ("pub", PROV_TOPIC),  # the claim's template: no hook guards it
    ("pub", CREATE_TOPIC),  # the shipped policy allows create-from-csr only
    ("pub", "$aws/certificates/create-from-csr/cbor"),  # JSON only
    ("sub", "$aws/certificates/create-from-csr/json/+"),  # exactly accepted and rejected, nothing wider
    ("sub", "$aws/provisioning-templates/%s/provision/json/accepted" % TPL),
])
def test_shipped_device_policy_allows_only_the_rotation_topics(sim, conns, action, topic):
    claim = conns(sim, "claim", "claim-rot-deny")
    assert claim.ok()
    dev, _, _, _, _ = device(sim, conns, claim, "ROT8")
    if action == "pub":
        dev.pub(topic, "{}")
    else:
        dev.c.subscribe(topic, 1)
    assert dev.closed.wait(5)
    assert sim.state()["counters"]["policy_violations"] == 1


def test_shipped_device_policy_names_exactly_the_rotation_topics():
    with open(DEVICE_POLICY) as f:
        stmts = json.load(f)["Statement"]
    res = {}
    for s in stmts:
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]):
            res.setdefault(a, set()).update(r for r in s["Resource"] if "$aws" in r)
    arn = "arn:aws:iot:*:*:%s/" + "$aws/%s"
    reqs = ["certificates/create-from-csr/json", "provisioning-templates/%s/provision/json" % ROT]
    assert res["iot:Publish"] == {arn % ("topic", r) for r in reqs}
    assert res["iot:Receive"] == {arn % ("topic", r + "/" + x) for r in reqs for x in ("accepted", "rejected")}
    assert res["iot:Subscribe"] == {arn % ("topicfilter", r + "/" + x) for r in reqs for x in ("accepted", "rejected")}


def test_rotation_template_is_the_shipped_file():
    with open(ROT_TEMPLATE) as f:
        t = json.load(f)
    with open(TEMPLATE) as f:
        p = json.load(f)
    thing = t["Resources"]["thing"]
    # The same thing name and parameters as provisioning, the existing thing kept.
    assert thing["Properties"]["ThingName"] == p["Resources"]["thing"]["Properties"]["ThingName"]
    assert set(t["Parameters"]) == set(p["Parameters"])
    assert "FAIL" not in thing["OverrideSettings"].values() and thing["OverrideSettings"]["AttributePayload"] == "MERGE"
    assert t["Resources"]["certificate"]["Properties"]["Status"] == "ACTIVE"
    assert t["Resources"]["policy"] == p["Resources"]["policy"]


def test_extra_hook_and_device_policy_options(pki, tmp_path, conns):
    # --hook T=deny refuses everything; a --device-policy that allows create/* lets a device
    # call CreateKeysAndCertificate over its own connection.
    with open(DEVICE_POLICY) as f:
        pol = json.load(f)
    pol["Statement"].append({"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive", "iot:Subscribe"],
                             "Resource": ["arn:aws:iot:*:*:topic/$aws/certificates/create/*",
                                          "arn:aws:iot:*:*:topicfilter/$aws/certificates/create/*"]})
    (tmp_path / "pol.json").write_text(json.dumps(pol))
    s = Sim(pki, ["--device-policy", str(tmp_path / "pol.json"), "--template", "%s=%s" % (ROT, ROT_TEMPLATE),
                  "--hook", "%s=deny" % ROT])
    try:
        claim = conns(s, "claim", "claim-extra")
        assert claim.ok()
        dev, name, _, _, _ = device(s, conns, claim, "ROT9")
        kind, body = request(dev, CREATE_TOPIC, "{}")
        assert kind == "accepted" and "privateKey" in body
        assert s.state()["certificates"][body["certificateId"]]["via"] == "CreateKeysAndCertificate"
        kind, rej = request(dev, ROT_TOPIC, {"certificateOwnershipToken": body["certificateOwnershipToken"],
                                             "parameters": {"SerialNumber": "ROT9", "GatewayId": "gw-1"}})
        assert (kind, rej) == ("rejected", HOOK_DENIAL)
    finally:
        s.stop()


def test_bad_hook_option_stops_the_simulator(pki):
    with pytest.raises(AssertionError):
        Sim(pki, ["--hook", "nosuch=attached-thing"])


# --------------------------------------------------------------------------------------------
# deploy/aws/rotation-hook.py, the Lambda the --hook attached-thing check imitates
# --------------------------------------------------------------------------------------------
def load_hook():
    import importlib.util
    spec = importlib.util.spec_from_file_location("rotation_hook", ROT_HOOK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("change,allowed", [
    ({}, True),
    ({"claimCertificateId": "c0ffee"}, False),  # another certificate (or a claim certificate)
    ({"parameters": {"SerialNumber": "B2", "GatewayId": "g"}}, False),  # another thing
    ({"parameters": {"GatewayId": "g"}}, False),
    ({"clientId": "fleetgw-B2"}, False),
    ({"certificateId": "aa" * 32}, False),  # the new certificate is the requesting one
])
def test_rotation_hook_decides(change, allowed):
    hook = load_hook()
    attached = {"fleetgw-A1": ["arn:aws:iot:eu-west-1:123456789012:cert/" + "aa" * 32]}

    def principals(thing):
        if thing not in attached:
            raise LookupError("ResourceNotFoundException")
        return attached[thing]
    event = {"claimCertificateId": "aa" * 32, "certificateId": "bb" * 32, "certificatePem": "-----BEGIN...",
             "templateArn": "arn:aws:iot:eu-west-1:123456789012:provisioningtemplate/" + ROT,
             "clientId": "fleetgw-A1", "parameters": {"SerialNumber": "A1", "GatewayId": "g"}}
    event.update(change)
    ok, why = hook.decide(event, principals)
    assert ok is allowed, why
