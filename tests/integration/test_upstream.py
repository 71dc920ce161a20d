"""The upstream side: broker restart, broker gone for good, broker absent
at CONNECT, and TLS with client certificates."""
import time

import mqttsn_leaf as sn
from conftest import wait_until


def test_broker_restart_gateway_reconnects(broker, gateway, broker_client):
    gw = gateway(broker, upstream={"backoff_base_ms": 200, "backoff_cap_ms": 1000,
                                   "give_up_after_s": 60})
    lf = gw.connected_leaf("leaf-rs")
    assert lf.subscribe("fleet/rs/cmd", qos=1)[2] == sn.RC_ACCEPTED
    tid = lf.register("fleet/rs/up")
    bc = broker_client(broker)
    bc.subscribe("fleet/rs/up", qos=1)

    broker.stop()
    # A QoS 1 publish while the uplink is down: held, acknowledged only once
    # the broker has it.  Retained, so the paho client gets it whether it
    # re-subscribes before or after the gateway delivers it.
    mid = lf.publish(tid, b"during-outage", qos=1, retain=True, wait=False)
    time.sleep(0.5)
    broker.start()
    assert lf.wait_ack(mid, qos=1, timeout=15) == sn.RC_ACCEPTED
    assert bc.wait_connected(15)
    got = bc.wait_messages(1, timeout=10, topic="fleet/rs/up")
    assert got[0].payload == b"during-outage"

    # The leaf's subscription was restored upstream.
    def delivered():
        bc.publish("fleet/rs/cmd", b"after-restart", qos=1)
        try:
            lf.recv_publishes(1, timeout=0.5)
            return True
        except sn.Timeout:
            return False
    assert wait_until(delivered, 15, interval=0.1)
    assert lf.publishes[0].topic == "fleet/rs/cmd"
    assert lf.publishes[0].payload == b"after-restart"
    assert not lf.received(sn.DISCONNECT)
    assert broker.client_ids().count("leaf-rs") >= 2


def test_upstream_gone_for_good_leaf_told_disconnect(broker, gateway):
    # Without the outbox: with it the leaf stays and its publishes are
    # stored (test_outbox.py).
    gw = gateway(broker, upstream={"backoff_base_ms": 200, "backoff_cap_ms": 500,
                                   "give_up_after_s": 2}, outbox={"enabled": False})
    lf = gw.connected_leaf("leaf-gone")
    broker.stop()
    stopped = time.monotonic()
    e = lf.wait_for(sn.DISCONNECT, timeout=12)
    assert e.t - stopped >= 1.5, "DISCONNECT before give_up_after_s"
    assert gw.alive()


def test_upstream_unreachable_at_connect_congestion(gateway):
    # No broker at all: upstream.port points at a closed port.
    # Without the outbox: with it a known leaf is accepted (test_outbox.py).
    gw = gateway(None, lan={"connack_timeout_ms": 1000}, outbox={"enabled": False},
                 upstream={"backoff_base_ms": 200, "backoff_cap_ms": 500})
    lf = gw.leaf("leaf-nobroker")
    t0 = time.monotonic()
    assert lf.connect(timeout=6) == sn.RC_CONGESTION
    assert time.monotonic() - t0 < 5.0
    assert gw.alive()


def test_tls_shared_client_cert(mosquitto, gateway, broker_client):
    b = mosquitto(tls=True)
    bc = broker_client(b)
    bc.subscribe("fleet/tls/#", qos=1)
    gw = gateway(b)                       # cert_file/key_file = the "gateway" cert
    for cid in ("leaf-t1", "leaf-t2"):
        lf = gw.connected_leaf(cid)
        # Each leaf is its own TLS session, presenting the shared certificate.
        assert b.wait_connected(cid) == "gateway"
        tid = lf.register("fleet/tls/" + cid)
        assert lf.publish(tid, cid.encode(), qos=1) == sn.RC_ACCEPTED
    got = bc.wait_messages(2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("fleet/tls/leaf-t1", b"leaf-t1"), ("fleet/tls/leaf-t2", b"leaf-t2")]


def test_tls_cert_dir_per_client_id(mosquitto, gateway, broker_client, certs):
    b = mosquitto(tls=True)
    d = certs.cert_dir(["leaf-ca", "leaf-cb"])
    bc = broker_client(b)
    bc.subscribe("fleet/tlsdir/#", qos=1)
    gw = gateway(b, upstream={"cert_file": None, "key_file": None, "cert_dir": str(d)})
    for cid in ("leaf-ca", "leaf-cb"):
        lf = gw.connected_leaf(cid)
        assert b.wait_connected(cid) == cid      # the leaf's own certificate
        tid = lf.register("fleet/tlsdir/" + cid)
        assert lf.publish(tid, b"x", qos=1) == sn.RC_ACCEPTED
    assert len(bc.wait_messages(2)) == 2
    # A ClientId without a certificate in cert_dir cannot get an upstream session.
    stranger = gw.leaf("leaf-nocert")
    try:
        rc = stranger.connect(timeout=12)
    except sn.Timeout:
        rc = None
    assert rc != sn.RC_ACCEPTED
    assert "leaf-nocert" not in b.client_ids()


def test_tls_max_version_and_handshake_counts(mosquitto, gateway, broker_client):
    """upstream.tls_max_version: "1.2" still relays through a broker that
    takes 1.2 and resumes the shared identity's session; a broker that wants
    TLS 1.3 refuses it while the default ("1.3") gets through.  The metrics
    count full and resumed handshakes."""
    b = mosquitto(tls=True)
    bc = broker_client(b)
    bc.subscribe("fleet/v12/#", qos=1)
    gw = gateway(b, upstream={"tls_max_version": "1.2"})
    for cid in ("leaf-v1", "leaf-v2", "leaf-v3"):
        lf = gw.connected_leaf(cid)
        assert b.wait_connected(cid) == "gateway"
        tid = lf.register("fleet/v12/" + cid)
        assert lf.publish(tid, b"v12", qos=1) == sn.RC_ACCEPTED
    assert len(bc.wait_messages(3)) == 3
    m = gw.metrics()
    # The first connection verifies the broker in full; the ones after it
    # (each one started once the one before was up) resume its session.
    assert m["upstream_tls_full"] == 1, m
    assert m["upstream_tls_resumed"] == 2, m

    b13 = mosquitto(tls=True, extra_conf="tls_version tlsv1.3\n")
    old = gateway(b13, upstream={"tls_max_version": "1.2"}, outbox={"enabled": False},
                  lan={"connack_timeout_ms": 1500})
    lf = old.leaf("leaf-v12-refused")
    assert lf.connect(timeout=6) == sn.RC_CONGESTION
    m = old.metrics()
    assert m["upstreams_up"] == 0 and m["upstream_failures"] >= 1, m
    assert m["upstream_tls_full"] == 0 and m["upstream_tls_resumed"] == 0, m
    assert "leaf-v12-refused" not in b13.client_ids()
    new = gateway(b13)
    new.connected_leaf("leaf-v13")
    assert b13.wait_connected("leaf-v13") == "gateway"
    m = new.metrics()
    assert m["upstream_tls_full"] + m["upstream_tls_resumed"] == 1, m
