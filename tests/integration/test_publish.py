"""Leaf -> broker: CONNECT, identity at the broker, PUBLISH at every QoS,
REGISTER, short topic names and predefined topic ids."""
import time

import pytest

import mqttsn_leaf as sn

PREDEFINED = {"10": "fleet/pre/up", "11": "fleet/pre/down"}


def test_connect_each_leaf_is_its_own_broker_client(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/id/#", qos=1)
    gw = gateway(broker)
    leaves = [gw.connected_leaf("leaf-1"), gw.connected_leaf("leaf-2")]
    # A transparent gateway: one upstream session per leaf, client id = ClientId.
    for lf in leaves:
        broker.wait_connected(lf.client_id, timeout=5)
    for lf in leaves:
        tid = lf.register("fleet/id/" + lf.client_id)
        assert lf.publish(tid, lf.client_id.encode(), qos=1) == sn.RC_ACCEPTED
    got = bc.wait_messages(2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("fleet/id/leaf-1", b"leaf-1"), ("fleet/id/leaf-2", b"leaf-2")]
    assert gw.metric("leaves_connected") == 2
    ack = leaves[0].disconnect()
    assert ack is not None and ack.type == sn.DISCONNECT
    assert gw.metric("leaves_connected") == 1


def test_qos_minus1_with_proxy_client(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/m1/pre", qos=1)
    bc.subscribe("m1", qos=1)
    gw = gateway(broker, lan={"predefined_topics": {"1": "fleet/m1/pre"}},
                 upstream={"qos_minus1_client_id": "fleetgw-qosm1"})
    lf = gw.leaf()          # QoS -1 needs no CONNECT, REGISTER or SUBSCRIBE
    assert lf.publish(1, b"pre", qos=-1, topic_type="predefined") is None
    assert lf.publish("m1", b"short", qos=-1) is None
    assert bc.wait_messages(1, timeout=8, topic="fleet/m1/pre")[0].payload == b"pre"
    assert bc.wait_messages(1, timeout=8, topic="m1")[0].payload == b"short"
    broker.wait_connected("fleetgw-qosm1")


def test_qos_minus1_dropped_and_counted_without_proxy(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/m1/pre", qos=1)
    bc.subscribe("m1", qos=1)
    gw = gateway(broker, lan={"predefined_topics": {"1": "fleet/m1/pre"}})
    lf = gw.leaf()
    lf.publish(1, b"pre", qos=-1, topic_type="predefined")
    lf.publish("m1", b"short", qos=-1)
    bc.expect_none(1.0)
    assert gw.metric("qos_m1_dropped") == 2


def test_register_then_publish_qos0(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/q0/#", qos=1)
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-q0")
    tid_a = lf.register("fleet/q0/a")
    tid_b = lf.register("fleet/q0/b")
    assert tid_a not in (0, 0xFFFF) and tid_b not in (0, 0xFFFF) and tid_a != tid_b
    assert lf.register("fleet/q0/a") == tid_a     # same name, same id
    assert lf.publish(tid_a, b"A", qos=0) is None
    assert lf.publish(tid_b, b"B", qos=0) is None
    got = bc.wait_messages(2)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        ("fleet/q0/a", b"A", 0), ("fleet/q0/b", b"B", 0)]


def test_publish_unknown_topic_id_rejected(broker, gateway):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-badtid")
    assert lf.publish(0x7777, b"x", qos=1) == sn.RC_INVALID_TOPIC_ID


def test_qos1_puback_only_after_broker_has_it(broker, gateway, broker_client):
    # Without the outbox (outbox.enabled false) the PUBACK waits for the
    # broker's; with it, for the disk (test_outbox.py).
    bc = broker_client(broker)
    bc.subscribe("fleet/q1", qos=1)
    gw = gateway(broker, outbox={"enabled": False})
    lf = gw.connected_leaf("leaf-q1")
    tid = lf.register("fleet/q1")
    broker.pause()                     # the broker cannot PUBACK while stopped
    try:
        mid = lf.publish(tid, b"one", qos=1, wait=False)
        with pytest.raises(sn.Timeout):
            lf.wait_ack(mid, qos=1, timeout=1.0)
    finally:
        broker.resume()
    assert lf.wait_ack(mid, qos=1, timeout=5) == sn.RC_ACCEPTED
    got = bc.wait_messages(1, topic="fleet/q1")
    assert (got[0].payload, got[0].qos) == (b"one", 1)


def test_qos2_arrives_once_as_qos1(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/q2", qos=2)
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-q2")
    tid = lf.register("fleet/q2")
    assert lf.publish(tid, b"exactly-once", qos=2) == sn.RC_ACCEPTED
    assert lf.received(sn.PUBREC) and lf.received(sn.PUBCOMP)
    got = bc.wait_messages(1, topic="fleet/q2")
    bc.expect_none(0.7, topic="fleet/q2")
    assert len(bc.on_topic("fleet/q2")) == 1
    # QoS 2 is terminated at the gateway and relayed upstream at QoS 1.
    assert (got[0].payload, got[0].qos) == (b"exactly-once", 1)


def test_qos2_duplicate_publish_forwarded_once(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/q2dup", qos=2)
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-q2dup")
    tid = lf.register("fleet/q2dup")
    mid = lf.publish(tid, b"once", qos=2, wait=False)
    lf.expect(sn.PUBREC, timeout=5, msg_id=mid)
    # As if our first PUBREC had been lost: the same PUBLISH again, DUP set.
    lf.publish(tid, b"once", qos=2, msg_id=mid, dup=True, wait=False)
    lf.expect(sn.PUBREC, timeout=5, msg_id=mid)
    lf.send_raw(sn.encode_pubrel(mid))
    lf.expect(sn.PUBCOMP, timeout=5, msg_id=mid)
    bc.wait_messages(1, topic="fleet/q2dup")
    bc.expect_none(1.0, topic="fleet/q2dup")
    assert [m.payload for m in bc.on_topic("fleet/q2dup")] == [b"once"]


def test_short_topic_name_publish(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("ab", qos=1)
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-short")
    assert lf.publish("ab", b"short-1", qos=1) == sn.RC_ACCEPTED
    assert lf.publish("ab", b"short-0", qos=0) is None
    got = bc.wait_messages(2, topic="ab")
    # Both arrive; their order across QoS levels is not promised (the QoS 1
    # one goes through the outbox, docs/outbox.md §3).
    assert sorted(m.payload for m in got) == [b"short-0", b"short-1"]


def test_predefined_topic_publish(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/pre/#", qos=1)
    gw = gateway(broker, lan={"predefined_topics": PREDEFINED})
    lf = gw.connected_leaf("leaf-pre")
    assert lf.publish(10, b"up", qos=1, topic_type="predefined") == sn.RC_ACCEPTED
    got = bc.wait_messages(1, topic="fleet/pre/up")
    assert got[0].payload == b"up"
    # An unknown predefined id cannot be fixed by registering: 0x02.
    assert lf.publish(99, b"?", qos=1, topic_type="predefined") == sn.RC_INVALID_TOPIC_ID


def test_retained_publish_relayed(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-ret")
    tid = lf.register("fleet/ret/state")
    assert lf.publish(tid, b"on", qos=1, retain=True) == sn.RC_ACCEPTED
    time.sleep(0.2)
    late = broker_client(broker)      # subscribes after the fact
    late.subscribe("fleet/ret/state", qos=1)
    got = late.wait_messages(1, topic="fleet/ret/state")
    assert (got[0].payload, got[0].retain) == (b"on", True)
