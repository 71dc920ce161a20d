"""MQTT-SN over DTLS 1.2 (issue 10), end to end: the real gateway, a real
mosquitto, and independent DTLS peers (`openssl s_client`, hand-built
ClientHellos).  Certificates come from the session's throw-away PKI, whose CA
stands for the factory CA; PSK cases are in test_dtls_psk.py."""
import socket
import time

import mqttsn_leaf as sn
import pytest
from conftest import Certs, LOOPBACK, find_metric, free_port, registry_db, wait_until
from dtls_peer import SClientLeaf, client_hello, hello_verify_cookie, readable


def counter(gw, name):
    v = find_metric(gw.metrics(), name)
    return 0 if v is None else v


def dtls_conf(certs, port, **more):
    d = {"enabled": True, "bind": LOOPBACK, "port": port, "cert_file": str(certs.server_crt),
         "key_file": str(certs.server_key), "ca_file": str(certs.ca_crt)}
    d.update(more)
    return d


@pytest.fixture
def dtls_gateway(gateway, certs):
    """gateway(broker, **overrides) with DTLS on a free port; .dtls_port set."""
    def make(broker, dtls=None, **overrides):
        port = free_port(socket.SOCK_DGRAM)
        lan = dict(overrides.pop("lan", {}))
        lan["dtls"] = dtls_conf(certs, port, **(dtls or {}))
        gw = gateway(broker, lan=lan, **overrides)
        gw.dtls_port = port
        return gw
    return make


@pytest.fixture
def leaves(certs):
    """leaves(gw, client_id) -> an SClientLeaf with a certificate CN=client_id."""
    made = []

    def make(gw, cid, cert_from=None, **kw):
        crt, key = (cert_from or certs).client(cid)
        lf = SClientLeaf(gw.dtls_port, cert=crt, key=key, ca=certs.ca_crt, **kw)
        made.append(lf)
        return lf
    yield make
    for lf in made:
        lf.close()


def lan_security(gw, cid):
    with registry_db(gw.config["registry"]["path"]) as con:
        row = con.execute("SELECT lan_security FROM devices WHERE client_id = ?",
                          (cid,)).fetchone()
    return row[0] if row else None


def test_certificate_leaf_connects_and_publishes(broker, dtls_gateway, leaves, broker_client):
    bc = broker_client(broker)
    bc.subscribe("dtls/#", qos=1)
    gw = dtls_gateway(broker)
    lf = leaves(gw, "leaf-cert-1")
    assert lf.connect("leaf-cert-1") == sn.RC_ACCEPTED
    tid = lf.register("dtls/one")
    assert lf.publish(tid, b"over dtls") == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1)] == [b"over dtls"]
    assert lan_security(gw, "leaf-cert-1") == "dtls-cert"
    assert counter(gw, "dtls_handshakes_done") == 1
    assert counter(gw, "dtls_sessions") == 1
    # The broker's message comes back down over DTLS too.
    lf.send(sn.encode_subscribe(2, "dtls/down", qos=0))
    assert lf.expect(sn.SUBACK).rc == sn.RC_ACCEPTED
    bc.publish("dtls/down", b"to the leaf", qos=0)
    m = lf.expect(sn.PUBLISH)
    assert m.data == b"to the leaf"


def test_association_may_connect_only_as_its_identity(broker, dtls_gateway, leaves):
    gw = dtls_gateway(broker)
    lf = leaves(gw, "leaf-cert-2")
    assert lf.connect("leaf-cert-2") == sn.RC_ACCEPTED
    # The same association names another ClientId: refused and audited...
    assert lf.connect("leaf-other") == sn.RC_NOT_SUPPORTED
    with registry_db(gw.config["registry"]["path"]) as con:
        rows = con.execute("SELECT detail FROM audit WHERE action = 'admission.refused' "
                           "AND client_id = 'leaf-other'").fetchall()
        assert con.execute("SELECT count(*) FROM devices WHERE client_id = 'leaf-other'"
                           ).fetchone()[0] == 0
    assert len(rows) == 1 and "DTLS identity \"leaf-cert-2\"" in rows[0][0]
    assert counter(gw, "dtls_identity_mismatch") == 1
    # ... and its session is as it was.
    lf.ping()
    tid = lf.register("dtls/two")
    assert lf.publish(tid, b"still me") == sn.RC_ACCEPTED


def test_first_connect_with_another_identity_gets_no_session(broker, dtls_gateway, leaves):
    gw = dtls_gateway(broker)
    lf = leaves(gw, "leaf-cert-3")
    assert lf.connect("leaf-cert-4") == sn.RC_NOT_SUPPORTED
    lf.send(sn.encode_pingreq())
    # §6.12: no session at that address: the gateway says DISCONNECT.
    lf.expect(sn.DISCONNECT)


def test_dtls_identity_is_refused_over_plain_udp(broker, dtls_gateway, leaves):
    gw = dtls_gateway(broker)
    lf = leaves(gw, "leaf-cert-5")
    assert lf.connect("leaf-cert-5") == sn.RC_ACCEPTED
    # A plain CONNECT for the same ClientId, from another box: refused, and
    # it cannot touch the DTLS session (another transport, another key).
    spoof = gw.leaf("leaf-cert-5", local_ip="127.0.0.2")
    assert spoof.connect(keepalive=60) == sn.RC_NOT_SUPPORTED
    lf.ping()
    lf.close()
    # Once the leaf is gone, its ClientId is still DTLS-only.
    assert spoof.connect(keepalive=60) == sn.RC_NOT_SUPPORTED
    assert counter(gw, "plain_udp_refused") == 2
    with registry_db(gw.config["registry"]["path"]) as con:
        # Not audited: anyone may send that datagram as often as they like.
        assert con.execute("SELECT count(*) FROM audit WHERE client_id = 'leaf-cert-5' AND "
                           "action = 'admission.refused'").fetchone()[0] == 0


def test_certificate_from_another_ca_fails_the_handshake(broker, dtls_gateway, leaves,
                                                         tmp_path):
    gw = dtls_gateway(broker)
    other = Certs(tmp_path / "other-pki")
    lf = leaves(gw, "leaf-rogue", cert_from=other)
    with pytest.raises((sn.Timeout, Exception)):
        lf.connect("leaf-rogue", timeout=3)
    assert wait_until(lambda: counter(gw, "dtls_handshakes_failed") >= 1, 5)
    assert counter(gw, "dtls_sessions") == 0
    with registry_db(gw.config["registry"]["path"]) as con:
        assert con.execute("SELECT count(*) FROM devices").fetchone()[0] == 0


def test_plain_udp_off(broker, dtls_gateway, leaves):
    gw = dtls_gateway(broker, admission={"plain_udp": "off"},
                      lan={"predefined_topics": {"5": "dtls/m1"}})
    plain = gw.leaf("anyone")
    assert plain.connect(keepalive=60) == sn.RC_NOT_SUPPORTED
    # QoS -1 names no sender: not taken over plain UDP either.
    plain.send_raw(sn.encode_publish(5, b"anon", qos=-1, topic_id_type=sn.TID_PREDEFINED))
    assert wait_until(lambda: counter(gw, "qos_m1_dropped") == 1, 3)
    lf = leaves(gw, "leaf-cert-6")
    assert lf.connect("leaf-cert-6") == sn.RC_ACCEPTED
    assert counter(gw, "plain_udp_refused") == 1
    with registry_db(gw.config["registry"]["path"]) as con:
        assert [r[0] for r in con.execute("SELECT client_id FROM devices")] == ["leaf-cert-6"]


def test_plain_udp_listed(broker, dtls_gateway):
    gw = dtls_gateway(broker, admission={"plain_udp": "listed",
                                         "plain_udp_clients": ["legacy-*", "old-1"]})
    assert gw.leaf("legacy-7").connect(keepalive=60) == sn.RC_ACCEPTED
    assert gw.leaf("old-1").connect(keepalive=60) == sn.RC_ACCEPTED
    assert gw.leaf("new-1").connect(keepalive=60) == sn.RC_NOT_SUPPORTED
    with registry_db(gw.config["registry"]["path"]) as con:
        rows = dict(con.execute("SELECT client_id, lan_security FROM devices").fetchall())
    assert rows == {"legacy-7": "plain", "old-1": "plain"}


def test_plain_mqttsn_on_the_dtls_port_is_dropped(broker, dtls_gateway):
    gw = dtls_gateway(broker)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOOPBACK, 0))
    try:
        s.sendto(sn.encode_connect("sneaky", 60), (LOOPBACK, gw.dtls_port))
        s.sendto(sn.encode_searchgw(0), (LOOPBACK, gw.dtls_port))
        assert not readable(s, 0.5)
    finally:
        s.close()
    assert counter(gw, "dtls_plain_dropped") == 2
    assert counter(gw, "connects") == 0


def test_spoofed_client_hello_flood_holds_nothing(broker, dtls_gateway, leaves):
    """ClientHellos from 300 sources across 127.0.0.0/8: each gets a
    HelloVerifyRequest no larger than itself and nothing else; no handshake
    state is held, and a genuine leaf handshakes in the middle of it."""
    gw = dtls_gateway(broker)
    socks = []
    try:
        for i in range(300):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.%d.%d.%d" % (1 + i % 7, i // 250, 2 + i % 250), 0))
            socks.append(s)
        hello = client_hello()
        for s in socks:
            s.sendto(hello, (LOOPBACK, gw.dtls_port))
        lf = leaves(gw, "leaf-cert-7")
        assert lf.connect("leaf-cert-7") == sn.RC_ACCEPTED
        answered = 0
        for s in socks:
            if readable(s, 0.5 if answered == 0 else 0.05):
                data = s.recv(2048)
                assert len(data) <= len(hello)
                assert hello_verify_cookie(data)
                answered += 1
        assert answered >= 290   # UDP on loopback: a few may be lost
        # A cookie is bound to its address: another source cannot use it.
        cookie = None
        socks[0].sendto(hello, (LOOPBACK, gw.dtls_port))
        if readable(socks[0], 1.0):
            cookie = hello_verify_cookie(socks[0].recv(2048))
        assert cookie
        bad_before = counter(gw, "dtls_cookies_bad")
        socks[1].sendto(client_hello(cookie=cookie), (LOOPBACK, gw.dtls_port))
        assert wait_until(lambda: counter(gw, "dtls_cookies_bad") == bad_before + 1, 3)
    finally:
        for s in socks:
            s.close()
    m = gw.metrics()
    assert find_metric(m, "dtls_handshaking") == 0
    assert find_metric(m, "dtls_sessions") == 1
    assert find_metric(m, "dtls_handshakes_started") == 1
    assert find_metric(m, "dtls_hello_verify_sent") >= 290


def test_leaf_back_from_a_new_port_takes_its_session(broker, dtls_gateway, leaves,
                                                     broker_client):
    """A rebooted DTLS leaf (a new association from a new port) proves its
    identity again: it gets its session back at once, and the old
    association is closed."""
    bc = broker_client(broker)
    bc.subscribe("dtls/back/#", qos=1)
    gw = dtls_gateway(broker)
    old = leaves(gw, "leaf-cert-8")
    assert old.connect("leaf-cert-8") == sn.RC_ACCEPTED
    new = leaves(gw, "leaf-cert-8")
    assert new.connect("leaf-cert-8") == sn.RC_ACCEPTED
    assert old.wait_closed(5), "the old association was not closed"
    tid = new.register("dtls/back/1")
    assert new.publish(tid, b"back") == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1)] == [b"back"]
    assert counter(gw, "dtls_sessions") == 1


def test_sleeping_leaf_wakes_over_its_association(broker, dtls_gateway, leaves,
                                                  broker_client):
    bc = broker_client(broker)
    gw = dtls_gateway(broker)
    lf = leaves(gw, "leaf-cert-9")
    assert lf.connect("leaf-cert-9") == sn.RC_ACCEPTED
    lf.send(sn.encode_subscribe(3, "dtls/sleep", qos=1))
    assert lf.expect(sn.SUBACK).rc == sn.RC_ACCEPTED
    lf.send(sn.encode_disconnect(duration=60))
    lf.expect(sn.DISCONNECT)
    bc.publish("dtls/sleep", b"while asleep", qos=1)
    assert wait_until(lambda: counter(gw, "leaves_asleep") == 1, 3)
    time.sleep(0.3)
    lf.send(sn.encode_pingreq("leaf-cert-9"))
    m = lf.expect(sn.PUBLISH)
    assert m.data == b"while asleep"
    lf.send(sn.encode_puback(m.topic_id, m.msg_id))
    lf.expect(sn.PINGRESP)


def test_closed_association_ends_a_connected_leaf(broker, dtls_gateway, leaves,
                                                  broker_client):
    bc = broker_client(broker)
    bc.subscribe("dtls/will", qos=1)
    gw = dtls_gateway(broker)
    lf = leaves(gw, "leaf-cert-10")
    lf.send(sn.encode_connect("leaf-cert-10", 60, will=True))
    lf.expect(sn.WILLTOPICREQ)
    lf.send(sn.encode_willtopic("dtls/will", qos=1))
    lf.expect(sn.WILLMSGREQ)
    lf.send(sn.encode_willmsg(b"gone"))
    assert lf.expect(sn.CONNACK).rc == sn.RC_ACCEPTED
    lf.shutdown()   # close_notify
    assert [m.payload for m in bc.wait_messages(1, timeout=5)] == [b"gone"]
    assert wait_until(lambda: counter(gw, "dtls_sessions") == 0, 3)
    assert counter(gw, "leaves_lost") == 1
