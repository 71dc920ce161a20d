"""Broker -> leaf: SUBSCRIBE (exact, wildcard, predefined, short),
UNSUBSCRIBE, and the gateway's retransmission of unacknowledged QoS 1."""
import time

import mqttsn_leaf as sn


def _register_before_publish(leaf, rec):
    """The gateway REGISTERed rec.topic to the leaf, with rec's topic id,
    before the PUBLISH that used it."""
    regs = [e for e in leaf.received(sn.REGISTER)
            if e.msg.topic_name.decode() == rec.topic and e.msg.topic_id == rec.topic_id]
    return bool(regs) and regs[0].t <= rec.t


def test_subscribe_exact_topic(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-sub")
    granted, tid, rc = lf.subscribe("fleet/cmd/leaf-sub", qos=1)
    assert (rc, granted) == (sn.RC_ACCEPTED, 1)
    assert tid not in (0, 0xFFFF)
    bc = broker_client(broker)
    bc.publish("fleet/cmd/leaf-sub", b"go", qos=1)
    assert lf.recv_publishes(1) == [("fleet/cmd/leaf-sub", b"go", 1)]
    r = lf.publishes[0]
    assert (r.topic_id, r.topic_id_type) == (tid, sn.TID_NORMAL)
    # Delivered QoS is the lower of the publish QoS and the granted QoS.
    bc.publish("fleet/cmd/leaf-sub", b"zero", qos=0)
    assert lf.recv_publishes(1, since_index=1) == [("fleet/cmd/leaf-sub", b"zero", 0)]


def test_subscribe_wildcard_plus(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-plus")
    granted, tid, rc = lf.subscribe("fleet/+/temp", qos=1)
    assert (rc, tid) == (sn.RC_ACCEPTED, 0)      # spec: wildcard SUBACK topic id is 0
    bc = broker_client(broker)
    bc.publish("fleet/a/temp", b"21", qos=1)
    bc.publish("fleet/a/hum", b"no", qos=1)       # does not match
    bc.publish("fleet/b/temp", b"22", qos=1)
    got = lf.recv_publishes(2)
    assert sorted(got) == [("fleet/a/temp", b"21", 1), ("fleet/b/temp", b"22", 1)]
    for rec in lf.publishes:
        assert rec.topic_id not in (0, 0xFFFF)
        assert _register_before_publish(lf, rec), lf.inbox
    time.sleep(0.5)
    assert len(lf.publishes) == 2
    # A second message on a known topic reuses the registered id.
    bc.publish("fleet/a/temp", b"23", qos=1)
    assert lf.recv_publishes(1, since_index=2) == [("fleet/a/temp", b"23", 1)]
    assert len([e for e in lf.received(sn.REGISTER)
                if e.msg.topic_name == b"fleet/a/temp"]) == 1


def test_subscribe_wildcard_hash(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-hash")
    granted, tid, rc = lf.subscribe("fleet/#", qos=1)
    assert (rc, tid) == (sn.RC_ACCEPTED, 0)
    bc = broker_client(broker)
    bc.publish("fleet/x", b"1", qos=1)
    bc.publish("other/x", b"no", qos=1)
    bc.publish("fleet/y/z/w", b"2", qos=1)
    assert sorted(lf.recv_publishes(2)) == [("fleet/x", b"1", 1), ("fleet/y/z/w", b"2", 1)]
    for rec in lf.publishes:
        assert _register_before_publish(lf, rec)


def test_subscribe_predefined(broker, gateway, broker_client):
    gw = gateway(broker, lan={"predefined_topics": {"11": "fleet/pre/down"}})
    lf = gw.connected_leaf("leaf-pre-sub")
    granted, tid, rc = lf.subscribe(11, qos=1)
    assert (rc, tid) == (sn.RC_ACCEPTED, 11)
    bc = broker_client(broker)
    bc.publish("fleet/pre/down", b"cmd", qos=1)
    assert lf.recv_publishes(1) == [("fleet/pre/down", b"cmd", 1)]
    r = lf.publishes[0]
    assert (r.topic_id, r.topic_id_type) == (11, sn.TID_PREDEFINED)
    assert not lf.received(sn.REGISTER)            # predefined ids need no REGISTER


def test_subscribe_short_name(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-short-sub")
    granted, tid, rc = lf.subscribe("xy", qos=1, topic_type="short")
    assert rc == sn.RC_ACCEPTED
    bc = broker_client(broker)
    bc.publish("xy", b"s", qos=1)
    assert lf.recv_publishes(1) == [("xy", b"s", 1)]


def test_unsubscribe_stops_delivery(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-unsub")
    assert lf.subscribe("fleet/u/t", qos=1)[2] == sn.RC_ACCEPTED
    bc = broker_client(broker)
    bc.publish("fleet/u/t", b"before", qos=1)
    assert lf.recv_publishes(1) == [("fleet/u/t", b"before", 1)]
    assert lf.unsubscribe("fleet/u/t") is True
    # A gateway may answer UNSUBACK before the broker confirmed the upstream
    # UNSUBSCRIBE; give that a moment so the test checks the outcome, not a race.
    time.sleep(0.3)
    bc.publish("fleet/u/t", b"after", qos=1)
    time.sleep(1.0)
    assert [r.payload for r in lf.publishes] == [b"before"]


def test_gateway_retransmits_unacked_qos1_with_dup(broker, gateway, broker_client):
    gw = gateway(broker, lan={"t_retry_ms": 500, "n_retry": 3})
    lf = gw.connected_leaf("leaf-rt", auto_ack=False)
    assert lf.subscribe("fleet/rt", qos=1)[2] == sn.RC_ACCEPTED
    bc = broker_client(broker)
    bc.publish("fleet/rt", b"again", qos=1)
    first = lf.wait_for(sn.PUBLISH, timeout=5)
    f1 = sn.Flags.parse(first.msg.flags)
    assert (f1.dup, f1.qos, first.msg.data) == (False, 1, b"again")
    mid = first.msg.msg_id
    second = lf.wait_for(sn.PUBLISH, timeout=3, since=first.t + 0.01)
    f2 = sn.Flags.parse(second.msg.flags)
    assert (f2.dup, second.msg.msg_id, second.msg.topic_id, second.msg.data) == (
        True, mid, first.msg.topic_id, b"again")
    assert second.t - first.t >= 0.3                 # t_retry_ms, not immediately
    # Once acknowledged, retransmission stops.
    lf.send_raw(sn.encode_puback(first.msg.topic_id, mid, sn.RC_ACCEPTED))
    acked = time.monotonic()
    time.sleep(1.5)
    late = [e for e in lf.received(sn.PUBLISH, since=acked + 0.2) if e.msg.msg_id == mid]
    assert not late, late


def test_subscribe_flood_gets_congestion_not_unbounded_state(broker, gateway):
    """§6.9 allows one SUBSCRIBE in flight per client.  With the broker frozen
    (no SUBACK comes back), a leaf firing many gets "congestion" for those
    beyond the gateway's small allowance; once the broker answers, the
    accepted ones are acknowledged."""
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-flood")
    broker.pause()
    try:
        t0 = time.monotonic()
        for i in range(20):
            lf.send_raw(sn.encode_subscribe(100 + i, "flood/%d" % i, qos=1))
        lf.wait_for(sn.SUBACK, timeout=5, since=t0, pred=lambda m: m.rc == sn.RC_CONGESTION)
        time.sleep(0.5)
        congested = {e.msg.msg_id for e in lf.received(sn.SUBACK, since=t0)
                     if e.msg.rc == sn.RC_CONGESTION}
        # 8 may wait for the broker (MAX_PENDING_SUBS); the other 12 are refused.
        assert congested == set(range(108, 120)), sorted(congested)
    finally:
        broker.resume()
    ok = lambda: {e.msg.msg_id for e in lf.received(sn.SUBACK, since=t0)
                  if e.msg.rc == sn.RC_ACCEPTED}
    deadline = time.monotonic() + 10
    while ok() != set(range(100, 108)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ok() == set(range(100, 108))
