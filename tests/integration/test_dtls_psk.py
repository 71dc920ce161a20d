"""DTLS leaves with pre-shared keys (issue 10), end to end: the real gateway
with its web server (keys are made through POST /api/v1/devices/{id}/psk with
the admin token, as an operator does), a real mosquitto, and `openssl
s_client -dtls1_2 -psk` as the leaf.  Certificate leaves, cookies, floods and
plain UDP policies are in test_dtls.py; the API itself in test_web_psk.py.

A wrong key or an unknown identity: the gateway drops the client's Finished
(its MAC fails; RFC 6347 §4.1.2.7 says to drop such records silently), so
the handshake ends by `lan.dtls.handshake_timeout_ms` (1 s here), with no
alert at all (docs/dtls.md §4).  s_client would go on retransmitting for a
minute: the tests end it once the gateway has let go."""
import re
import socket
import subprocess
import uuid

import mqttsn_leaf as sn
import pytest
from conftest import LOOPBACK, REPO, find_metric, free_port, registry_db, wait_until
from dtls_peer import SClientLeaf
from webclient import Api, quote

TOKEN = "admin-" + uuid.uuid4().hex


def counter(gw, name):
    v = find_metric(gw.metrics(), name)
    return 0 if v is None else v


@pytest.fixture
def psk_gateway(gateway):
    """Factory: psk_gateway(broker, dtls={...}, **overrides) -> a started
    Gateway with DTLS (PSK only) on a free port and its web API, plus
    .dtls_port and .api (the admin token).  Shared with test_dtls_mqttsn.py."""
    def make(broker, dtls=None, **overrides):
        port, web_port = free_port(socket.SOCK_DGRAM), free_port()
        lan = dict(overrides.pop("lan", {}))
        lan["dtls"] = dict({"enabled": True, "bind": LOOPBACK, "port": port,
                            "handshake_timeout_ms": 1000}, **(dtls or {}))
        web = {"enabled": True, "bind": LOOPBACK, "port": web_port,
               "admin_token_env": "FLEETGW_ADMIN_TOKEN", "open_health": True,
               "static_dir": str(REPO / "web" / "static"),
               "openapi_file": str(REPO / "web" / "openapi.json")}
        gw = gateway(broker, env={"FLEETGW_ADMIN_TOKEN": TOKEN}, lan=lan, web=web, **overrides)
        gw.dtls_port = port
        gw.api = Api(web_port, TOKEN)
        gw.api.wait_up(10, gw.proc)
        return gw
    return make


def new_key(gw, cid, key=None):
    """A key for cid through the API (generated, or imported when given)."""
    kw = {} if key is None else {"json_body": {"key": key}}
    return gw.api.ok("POST", "/api/v1/devices/%s/psk" % quote(cid), 201, **kw)["key"]


def device(gw, cid):
    return gw.api.ok("GET", "/api/v1/devices/" + quote(cid))


@pytest.fixture
def sclients():
    """sclients(gw, identity, key_hex, **kw) -> an SClientLeaf with that PSK."""
    made = []

    def make(gw, identity, key, **kw):
        lf = SClientLeaf(gw.dtls_port, psk_identity=identity, psk_hex=key, **kw)
        made.append(lf)
        return lf
    yield make
    for lf in made:
        lf.close()


# s_client -msg writes each record it receives as a line "<<< ... content_type=N)
# [length LLLL]" and the bytes below it (OpenSSL 3.0 labels DTLS records "Not TLS
# data"; its pseudo content type 256 is the record header).
RECEIVED_RE = re.compile(r"^<<< .*content_type=(\d+)\) \[length ([0-9a-fA-F]+)\]")
ALERT, HANDSHAKE = 21, 22


def received_records(msgfile):
    """[(content type, first byte, length)] of what s_client received."""
    try:
        lines = msgfile.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for i, line in enumerate(lines):
        m = RECEIVED_RE.match(line)
        if m and m.group(1) != "256" and i + 1 < len(lines) and lines[i + 1].split():
            out.append((int(m.group(1)), int(lines[i + 1].split()[0], 16), int(m.group(2), 16)))
    return out


def traced_s_client(gw, identity, key, msgfile):
    """s_client with a PSK that records the handshake (-msg); stdin stays
    open so that it waits for the handshake and nothing else."""
    return subprocess.Popen(
        ["openssl", "s_client", "-dtls1_2", "-connect", "%s:%d" % (LOOPBACK, gw.dtls_port),
         "-quiet", "-no_ign_eof", "-psk", key, "-psk_identity", identity,
         "-cipher", "PSK-AES128-CCM8", "-msg", "-msgfile", str(msgfile)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(p):
    if p.poll() is None:
        p.kill()
    return p.communicate(timeout=5)[1].decode("utf-8", "replace")


def test_api_key_connects_and_publishes(broker, psk_gateway, sclients, broker_client):
    bc = broker_client(broker)
    bc.subscribe("psk/#", qos=1)
    gw = psk_gateway(broker)
    generated = new_key(gw, "psk-leaf-1")
    lf = sclients(gw, "psk-leaf-1", generated)
    assert lf.connect("psk-leaf-1") == sn.RC_ACCEPTED
    tid = lf.register("psk/one")
    assert lf.publish(tid, b"pre-shared", qos=1) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1, topic="psk/one")] == [b"pre-shared"]
    d = device(gw, "psk-leaf-1")
    assert (d["lan_security"], d["psk"]) == ("dtls-psk", True), d
    # An imported 16-byte key, over the other PSK suite offered by default (AES-GCM).
    imported = new_key(gw, "psk-leaf-2", key="000102030405060708090a0b0c0d0e0f")
    lf2 = sclients(gw, "psk-leaf-2", imported, ciphers="PSK-AES128-GCM-SHA256")
    assert lf2.connect("psk-leaf-2") == sn.RC_ACCEPTED
    tid2 = lf2.register("psk/two")
    assert lf2.publish(tid2, b"imported", qos=1) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1, topic="psk/two")] == [b"imported"]
    m = gw.metrics()
    assert (find_metric(m, "dtls_handshakes_done"), find_metric(m, "dtls_sessions"),
            find_metric(m, "leaves_active")) == (2, 2, 2)


def test_wrong_key_fails_the_handshake(broker, psk_gateway, sclients, tmp_path):
    gw = psk_gateway(broker)
    key = new_key(gw, "psk-wrong")
    wrong = key[:-2] + ("00" if key[-2:] != "00" else "01")
    p = traced_s_client(gw, "psk-wrong", wrong, tmp_path / "wrong.msg")
    try:
        assert wait_until(lambda: counter(gw, "dtls_handshakes_timed_out") == 1, 5)
        m = gw.metrics()
        assert (find_metric(m, "dtls_handshakes_done"), find_metric(m, "dtls_sessions"),
                find_metric(m, "dtls_handshaking")) == (0, 0, 0)
    finally:
        err = stop(p)
    recs = received_records(tmp_path / "wrong.msg")
    assert recs and all(ct == HANDSHAKE for ct, _, _ in recs), recs
    assert "alert" not in err.lower(), err
    # Nothing was recorded for the device.
    assert device(gw, "psk-wrong")["lan_security"] is None
    # The right key, from the same host, right after.
    lf = sclients(gw, "psk-wrong", key)
    assert lf.connect("psk-wrong") == sn.RC_ACCEPTED


def test_unknown_identity_fails_exactly_like_a_wrong_key(broker, psk_gateway, tmp_path):
    """RFC 7925 §6, RFC 4279 §2: an unknown identity must not be told apart
    from a wrong key.  Both handshakes run side by side; the gateway sends
    the same records, of the same lengths, to both, and no alert to either
    (no unknown_psk_identity, which would confirm that an identity does not
    exist)."""
    gw = psk_gateway(broker)
    wrong = "5a" * 32
    assert new_key(gw, "psk-known") != wrong
    procs = {"wrong": traced_s_client(gw, "psk-known", wrong, tmp_path / "wrong.msg"),
             "unknown": traced_s_client(gw, "psk-nobody", wrong, tmp_path / "unknown.msg")}
    try:
        assert wait_until(lambda: counter(gw, "dtls_handshakes_timed_out") == 2, 5)
    finally:
        errs = {k: stop(p) for k, p in procs.items()}
    seen = {k: set(received_records(tmp_path / (k + ".msg"))) for k in procs}
    # HelloVerifyRequest (3), ServerHello (2), ServerHelloDone (14), nothing else.
    assert {(ct, first) for ct, first, _ in seen["wrong"]} == {
        (HANDSHAKE, 3), (HANDSHAKE, 2), (HANDSHAKE, 14)}, seen
    assert seen["unknown"] == seen["wrong"]
    for k, err in errs.items():
        assert "alert" not in err.lower(), (k, err)
    m = gw.metrics()
    assert (find_metric(m, "dtls_handshakes_failed"), find_metric(m, "dtls_handshakes_done"),
            find_metric(m, "dtls_sessions")) == (0, 0, 0)
    # The unknown identity left nothing behind: no device, no audit row.
    with registry_db(gw.config["registry"]["path"]) as con:
        assert [r[0] for r in con.execute("SELECT client_id FROM devices")] == ["psk-known"]
        assert con.execute("SELECT count(*) FROM audit WHERE client_id = 'psk-nobody'"
                           ).fetchone()[0] == 0
    assert gw.api.get("/api/v1/devices/psk-nobody").status == 404


def test_psk_identity_cannot_connect_as_another_device(broker, psk_gateway, sclients,
                                                       broker_client):
    """Key holder X names device Y (which has a key and a live session of
    its own): CONNACK 0x03, an admission.refused row for Y naming X, Y's
    session untouched, and X still free to connect as itself."""
    bc = broker_client(broker)
    bc.subscribe("psk/y", qos=1)
    gw = psk_gateway(broker)
    kx, ky = new_key(gw, "psk-x"), new_key(gw, "psk-y")
    y = sclients(gw, "psk-y", ky)
    assert y.connect("psk-y") == sn.RC_ACCEPTED
    x = sclients(gw, "psk-x", kx)
    assert x.connect("psk-y") == sn.RC_NOT_SUPPORTED
    with registry_db(gw.config["registry"]["path"]) as con:
        rows = con.execute("SELECT client_id, detail FROM audit WHERE action = "
                           "'admission.refused'").fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("psk-y", 'DTLS identity "psk-x" may CONNECT only as itself')], rows
    assert counter(gw, "dtls_identity_mismatch") == 1
    # X got no session: §6.12, a DISCONNECT for a PINGREQ.
    x.send(sn.encode_pingreq())
    x.expect(sn.DISCONNECT)
    # Y is as it was, at its own association.
    y.ping()
    tid = y.register("psk/y")
    assert y.publish(tid, b"still y", qos=1) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1, topic="psk/y")] == [b"still y"]
    assert device(gw, "psk-y")["state"] != "blocked"
    # The refusal changed nothing for X either.
    assert x.connect("psk-x") == sn.RC_ACCEPTED
    assert counter(gw, "leaves_active") == 2


def test_device_holding_a_key_is_refused_over_plain_udp(broker, psk_gateway, sclients):
    """A key is enough (the device has never connected at all), and
    admission.plain_udp "allow" does not change that; the refusal is counted,
    not audited."""
    gw = psk_gateway(broker, admission={"plain_udp": "allow"})
    key = new_key(gw, "psk-plain")
    assert device(gw, "psk-plain")["lan_security"] is None
    spoof = gw.leaf("psk-plain")
    assert spoof.connect() == sn.RC_NOT_SUPPORTED
    assert gw.leaf("plain-legacy").connect() == sn.RC_ACCEPTED   # no key: plain is fine
    assert counter(gw, "plain_udp_refused") == 1
    with registry_db(gw.config["registry"]["path"]) as con:
        assert con.execute("SELECT count(*) FROM audit WHERE client_id = 'psk-plain' AND "
                           "action = 'admission.refused'").fetchone()[0] == 0
    d = device(gw, "psk-plain")
    assert (d["lan_security"], d["state"]) == (None, "approved"), d
    # The key holder itself gets in over DTLS, and plain stays shut.
    lf = sclients(gw, "psk-plain", key)
    assert lf.connect("psk-plain") == sn.RC_ACCEPTED
    assert spoof.connect() == sn.RC_NOT_SUPPORTED
    lf.ping()
    assert counter(gw, "plain_udp_refused") == 2
