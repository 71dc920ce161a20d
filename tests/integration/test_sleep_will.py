"""Sleeping clients, the Will, and keep-alive supervision."""
import time

import pytest

import mqttsn_leaf as sn


def test_sleep_buffers_then_wake_delivers_then_pingresp(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-sleepy")
    assert lf.subscribe("fleet/sleep/leaf-sleepy", qos=1)[2] == sn.RC_ACCEPTED
    ack = lf.sleep(30)
    # The gateway acknowledges a sleep request with DISCONNECT without Duration.
    assert ack is not None and ack.duration is None
    asleep_at = time.monotonic()
    bc = broker_client(broker)
    for i in range(3):
        bc.publish("fleet/sleep/leaf-sleepy", b"m%d" % i, qos=1)
    time.sleep(0.7)
    assert not lf.received(sn.PUBLISH, since=asleep_at), "gateway pushed to a sleeping leaf"
    got = lf.wake_and_drain(timeout=5)
    assert [(r.topic, r.payload, r.qos) for r in got] == [
        ("fleet/sleep/leaf-sleepy", b"m%d" % i, 1) for i in range(3)]
    # PINGRESP closed the transfer after the last PUBLISH.
    pingresp = lf.received(sn.PINGRESP)[-1]
    assert all(r.t <= pingresp.t for r in got)
    # Nothing left: the next wake-up gets PINGRESP at once.
    assert lf.wake_and_drain(timeout=5) == []
    # Back to active with CONNECT: live delivery again.  docs/protocol-notes.md §2.9 item 1:
    # a CONNECT from asleep/awake resumes the same session even with
    # CleanSession=1 (what most leaves send), so the subscription survives.
    assert lf.connect(keepalive=60, clean=True) == sn.RC_ACCEPTED
    bc.publish("fleet/sleep/leaf-sleepy", b"awake", qos=1)
    assert lf.recv_publishes(1, since_index=3) == [("fleet/sleep/leaf-sleepy", b"awake", 1)]


def test_connect_while_asleep_resumes_with_buffered_messages(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("leaf-resume")
    assert lf.subscribe("fleet/resume/cmd", qos=1)[2] == sn.RC_ACCEPTED
    assert lf.sleep(30) is not None
    bc = broker_client(broker)
    bc.publish("fleet/resume/cmd", b"while-asleep", qos=1)
    time.sleep(0.5)
    # CONNECT (CleanSession=1) instead of a PINGREQ wake-up: the session is
    # resumed, and what was buffered during the sleep is delivered.
    assert lf.connect(keepalive=60, clean=True) == sn.RC_ACCEPTED
    assert lf.recv_publishes(1, timeout=5) == [("fleet/resume/cmd", b"while-asleep", 1)]


def test_sleep_buffer_overflow_counted(broker, gateway, broker_client):
    gw = gateway(broker, lan={"queue_max": 3})
    lf = gw.connected_leaf("leaf-overflow")
    assert lf.subscribe("fleet/sleep/of", qos=1)[2] == sn.RC_ACCEPTED
    assert lf.sleep(30) is not None
    before = gw.metric("sleep_dropped")
    bc = broker_client(broker)
    for i in range(6):
        bc.publish("fleet/sleep/of", b"n%d" % i, qos=1)
    time.sleep(0.7)
    got = lf.wake_and_drain(timeout=5)
    assert len(got) == 3, got
    assert gw.metric("sleep_dropped") - before >= 3


def test_will_flow_and_will_published_when_leaf_goes_silent(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/will/leaf-lost", qos=1)
    gw = gateway(broker)
    lf = gw.leaf("leaf-lost")
    rc = lf.connect(keepalive=2, will=("fleet/will/leaf-lost", b"gone", 1, True))
    assert rc == sn.RC_ACCEPTED
    # The Will dialogue: WILLTOPICREQ, then WILLMSGREQ, then CONNACK.
    order = [e.msg.type for e in lf.inbox if e.msg is not None]
    assert order[:3] == [sn.WILLTOPICREQ, sn.WILLMSGREQ, sn.CONNACK]
    silent_at = time.monotonic()
    lf.close()                                   # not a word more from this leaf
    got = bc.wait_messages(1, timeout=10, topic="fleet/will/leaf-lost")
    elapsed = got[0].t - silent_at
    assert got[0].payload == b"gone"
    # Lost only after the keep-alive period (2 s; 1.5x tolerance => ~3 s).
    assert 2.0 <= elapsed <= 8.0, elapsed
    # Will retain was set: a later subscriber gets it retained.
    late = broker_client(broker)
    late.subscribe("fleet/will/leaf-lost", qos=1)
    r = late.wait_messages(1, topic="fleet/will/leaf-lost")
    assert (r[0].payload, r[0].retain) == (b"gone", True)


def test_no_will_after_clean_disconnect(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/will/leaf-clean", qos=1)
    gw = gateway(broker)
    lf = gw.leaf("leaf-clean")
    assert lf.connect(keepalive=2, will=("fleet/will/leaf-clean", b"gone", 1, False)) == 0
    assert lf.disconnect() is not None
    lf.close()
    bc.expect_none(4.0, topic="fleet/will/leaf-clean")


def test_pingreq_keeps_leaf_alive(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/will/leaf-ping", qos=1)
    bc.subscribe("fleet/ka/leaf-ping", qos=1)
    gw = gateway(broker)
    lf = gw.leaf("leaf-ping")
    assert lf.connect(keepalive=2, will=("fleet/will/leaf-ping", b"gone", 1, False)) == 0
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        assert lf.ping(timeout=2) is True
        time.sleep(0.8)
    assert bc.on_topic("fleet/will/leaf-ping") == []
    assert not lf.received(sn.DISCONNECT)
    tid = lf.register("fleet/ka/leaf-ping")
    assert lf.publish(tid, b"still here", qos=1) == sn.RC_ACCEPTED
    assert bc.wait_messages(1, topic="fleet/ka/leaf-ping")[0].payload == b"still here"


def test_will_update(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/will/#", qos=1)
    gw = gateway(broker)
    lf = gw.leaf("leaf-wupd")
    assert lf.connect(keepalive=2, will=("fleet/will/old", b"old", 1, False)) == 0
    rc = lf.willtopicupd("fleet/will/new", qos=1)
    assert rc in (sn.RC_ACCEPTED, sn.RC_NOT_SUPPORTED)
    if rc == sn.RC_NOT_SUPPORTED:
        pytest.skip("gateway answers WILLTOPICUPD with 'not supported' (allowed by v1.2)")
    assert lf.willmsgupd(b"new") == sn.RC_ACCEPTED
    lf.close()
    got = bc.wait_messages(1, timeout=10)
    assert [(m.topic, m.payload) for m in got] == [("fleet/will/new", b"new")]


def test_will_topic_update_keeps_the_will_message(broker, gateway, broker_client):
    # §6.4: WILLTOPICUPD changes the topic only; an empty message published
    # retained would delete the retained message on that topic.
    bc = broker_client(broker)
    bc.subscribe("fleet/will/#", qos=1)
    gw = gateway(broker)
    lf = gw.leaf("leaf-wtopic")
    assert lf.connect(keepalive=2, will=("fleet/will/a", b"gone", 1, False)) == 0
    assert lf.willtopicupd("fleet/will/b", qos=1) == sn.RC_ACCEPTED
    lf.close()
    got = bc.wait_messages(1, timeout=10)
    assert [(m.topic, m.payload) for m in got] == [("fleet/will/b", b"gone")]
