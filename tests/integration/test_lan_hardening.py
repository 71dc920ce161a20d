"""LAN admission that cannot be abused (issue 9): what a stranger on the LAN
sends must not end a genuine leaf's session or make the gateway hold
resources.  Real UDP on loopback; 127.0.0.2 and friends stand for other
boxes."""
import mqttsn_leaf as sn
from conftest import find_metric, wait_until

ALLOW_GOOD = {"policy": "allowlist", "allowlist": ["good-*"]}


def counter(gw, name):
    v = find_metric(gw.metrics(), name)
    return 0 if v is None else v


def test_refused_connect_from_a_live_leafs_address_changes_nothing(broker, gateway,
                                                                    broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/good/#", qos=1)
    gw = gateway(broker, admission=ALLOW_GOOD)
    lf = gw.connected_leaf("good-1")
    # The same socket (address and port) names an identity admission refuses.
    lf.send_raw(sn.encode_connect("evil-1", 60))
    assert lf.expect(sn.CONNACK).rc == sn.RC_NOT_SUPPORTED
    # The genuine session is untouched: it pings and publishes.
    lf.send_raw(sn.encode_pingreq())
    lf.expect(sn.PINGRESP)
    tid = lf.register("fleet/good/1")
    assert lf.publish(tid, b"still here", qos=1) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1)] == [b"still here"]
    assert counter(gw, "sessions_replaced") == 0


def test_accepted_connect_with_a_new_id_ends_the_old_session(broker, gateway):
    gw = gateway(broker, admission=ALLOW_GOOD)
    lf = gw.connected_leaf("good-2")
    assert lf.connect("good-3") == sn.RC_ACCEPTED
    assert counter(gw, "sessions_replaced") == 1
    # The new identity owns the address now.
    lf.send_raw(sn.encode_pingreq())
    lf.expect(sn.PINGRESP)


def test_connect_bound_elsewhere_does_not_end_the_senders_session(broker, gateway):
    gw = gateway(broker, admission=ALLOW_GOOD)
    owner = gw.connected_leaf("good-owner")
    other = gw.leaf("good-other", local_ip="127.0.0.2")
    assert other.connect(keepalive=60) == sn.RC_ACCEPTED
    # From its own live address, good-other claims good-owner's ClientId,
    # which a live leaf at another address holds: refused, and nothing ends.
    other.send_raw(sn.encode_connect("good-owner", 60))
    assert other.expect(sn.CONNACK).rc == sn.RC_NOT_SUPPORTED
    for lf in (owner, other):
        lf.send_raw(sn.encode_pingreq())
        lf.expect(sn.PINGRESP)
    assert counter(gw, "sessions_replaced") == 0


def test_half_open_connect_releases_its_upstream(broker, gateway):
    gw = gateway(broker, lan={"connack_timeout_ms": 1000})
    lf = gw.leaf("half-open")
    assert lf.connect(clean=False) == sn.RC_ACCEPTED
    broker.wait_connected("half-open")
    assert counter(gw, "upstreams_up") == 1
    # CleanSession=0 resumes the session (upstream kept) and asks for the
    # will prompts, which never get an answer.
    lf.send_raw(sn.encode_connect("half-open", 60, clean=False, will=True))
    lf.expect(sn.WILLTOPICREQ)
    assert wait_until(lambda: counter(gw, "connects_half_open") == 1, 5)
    assert wait_until(lambda: counter(gw, "upstreams_up") == 0, 5)
    assert wait_until(lambda: "Client half-open disconnected" in broker.log_text(), 5), \
        broker.log_text()[-2000:]
    assert counter(gw, "leaves_active") == 0


def test_will_topic_must_be_a_topic_name(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("#", qos=1)
    gw = gateway(broker)
    lf = gw.leaf("will-evil")
    # A NUL inside the will topic would have published the will on "a".
    lf.send_raw(sn.encode_connect("will-evil", 60, will=True))
    lf.expect(sn.WILLTOPICREQ)
    lf.send_raw(sn.encode_willtopic("a\0#/evil", qos=1))
    assert lf.expect(sn.CONNACK).rc == sn.RC_NOT_SUPPORTED
    # A wildcard in WILLTOPICUPD is refused with a return code.
    assert lf.connect(will=("fleet/will", b"bye", 1)) == sn.RC_ACCEPTED
    lf.send_raw(sn.encode_willtopicupd("fleet/+/will", qos=1))
    assert lf.expect(sn.WILLTOPICRESP).rc == sn.RC_NOT_SUPPORTED
    assert counter(gw, "will_topics_refused") == 2
    # Nothing was ever published on the truncated topic.
    bc.expect_none(0.5, topic="a")


def test_disconnect_before_connack_lets_go_at_once(gateway):
    from conftest import free_port
    # No broker at this port: the CONNECT waits for an upstream that does
    # not come.
    # Without the outbox: with it, a known leaf is accepted at once.
    gw = gateway(None, lan={"connack_timeout_ms": 1500}, outbox={"enabled": False},
                 upstream={"host": "127.0.0.1", "port": free_port(), "tls": False})
    lf = gw.leaf("gives-up")
    lf.send_raw(sn.encode_connect("gives-up", 60))
    assert wait_until(lambda: counter(gw, "leaves_connecting") == 1, 5)
    lf.send_raw(sn.encode_disconnect())
    lf.expect(sn.DISCONNECT)
    assert counter(gw, "leaves_connecting") == 0
    # Nothing is answered later: no CONNACK congestion to a leaf that left.
    try:
        m = lf.expect(sn.CONNACK, timeout=2.5)
        raise AssertionError("unexpected CONNACK rc=0x%02X" % m.rc)
    except sn.Timeout:
        pass
    assert counter(gw, "connack_congestion") == 0
