"""Every MQTT-SN message type over DTLS 1.2 (issue 10: "everything else works
the same over DTLS"), end to end: the project's Python leaf
(tests/leaf/mqttsn_leaf.py) speaks plain MQTT-SN to fleetgw-dtls-bridge
(tests/leaf), which carries each datagram as one DTLS record to the real
gateway's DTLS port; the broker side is a real mosquitto and an independent
paho client.  Keys come from the API's CSV batch (POST /api/v1/psks), whose
answer is the bridge's --psk-file as it is.

The bridge runs in one of two ways: --identity-from-clientid (the identity is
the ClientId of the leaf's first datagram, a CONNECT), or with one fixed
identity, for what a leaf sends before any CONNECT (SEARCHGW, QoS -1) and
for a leaf that comes back through a new association."""
import time

import mqttsn_leaf as sn
import pytest
from conftest import LOOPBACK, find_metric, wait_until
from test_dtls_psk import counter, psk_gateway  # noqa: F401 (a fixture)
from test_leaf_dtls import Bridge


class DtlsSide:
    """Leaves of one gateway over DTLS, each through a bridge."""

    def __init__(self, gw, tmp_path):
        self.gw, self.tmp = gw, tmp_path
        self.keys, self.bridges, self.made = {}, [], []

    def make_keys(self, *cids):
        """Keys for cids from one CSV batch; returns the answer as a file."""
        r = self.gw.api.request("POST", "/api/v1/psks", body="\n".join(cids),
                                content_type="text/csv")
        assert r.status == 201, r
        f = self.tmp / ("keys-%d.csv" % len(self.bridges))
        f.write_bytes(r.body)
        self.keys.update(line.split(",") for line in r.text.splitlines()[1:])
        return f

    def bridge(self, *args):
        b = Bridge("%s:%d" % (LOOPBACK, self.gw.dtls_port), *args)
        self.bridges.append(b)
        return b

    def leaf(self, b, cid, **kw):
        lf = sn.Leaf((LOOPBACK, b.port), cid, predefined=self.gw.predefined, **kw)
        self.made.append(lf)
        return lf

    def leaves(self, *cids, **kw):
        """One --identity-from-clientid bridge for cids; a Leaf for each."""
        b = self.bridge("--identity-from-clientid", "--psk-file", str(self.make_keys(*cids)))
        return [self.leaf(b, cid, **kw) for cid in cids]

    def fixed(self, cid, **kw):
        """A bridge whose one identity is cid, and a Leaf through it."""
        if cid not in self.keys:
            self.make_keys(cid)
        b = self.bridge("--psk-identity", cid, "--psk-hex", self.keys[cid])
        return b, self.leaf(b, cid, **kw)

    def close(self):
        for lf in self.made:
            lf.close()
        for b in self.bridges:
            b.stop()


@pytest.fixture
def dtls_side(psk_gateway, broker, tmp_path):  # noqa: F811
    """Factory: dtls_side(**gateway overrides) -> DtlsSide of a new gateway
    (with DTLS and its API) on the `broker`."""
    made = []

    def make(**overrides):
        side = DtlsSide(psk_gateway(broker, **overrides), tmp_path)
        made.append(side)
        return side
    yield make
    for side in made:
        side.close()


def test_connect_with_will_register_publish_every_qos_ping_disconnect(
        broker, dtls_side, broker_client):
    bc = broker_client(broker)
    bc.subscribe("dtls/q/#", qos=2)
    bc.subscribe("dq", qos=1)
    bc.subscribe("dtls/will/a", qos=1)
    side = dtls_side()
    lf, = side.leaves("dtls-a")
    assert lf.connect(keepalive=60, will=("dtls/will/a", b"never", 1, False)) == sn.RC_ACCEPTED
    # WILLTOPICREQ -> WILLTOPIC, WILLMSGREQ -> WILLMSG, then CONNACK.
    assert [e.msg.type for e in lf.inbox][:3] == [sn.WILLTOPICREQ, sn.WILLMSGREQ, sn.CONNACK]
    tid = lf.register("dtls/q/a")
    assert tid not in (0, 0xFFFF) and lf.register("dtls/q/a") == tid
    assert lf.publish(tid, b"zero", qos=0) is None
    assert lf.publish(tid, b"one", qos=1) == sn.RC_ACCEPTED
    assert lf.publish(tid, b"two", qos=2) == sn.RC_ACCEPTED
    assert lf.received(sn.PUBREC) and lf.received(sn.PUBCOMP)
    assert lf.publish("dq", b"short", qos=1) == sn.RC_ACCEPTED
    got = bc.wait_messages(3, topic="dtls/q/a")
    # QoS 2 is completed with the leaf and relayed as QoS 1.
    assert sorted((m.payload, m.qos) for m in got) == [(b"one", 1), (b"two", 1), (b"zero", 0)]
    assert [m.payload for m in bc.wait_messages(1, topic="dq")] == [b"short"]
    assert lf.ping() is True
    assert counter(side.gw, "leaves_active") == 1
    # DISCONNECT is answered with DISCONNECT; the session is over, no will.
    ack = lf.disconnect()
    assert ack is not None and ack.duration is None
    assert wait_until(lambda: counter(side.gw, "leaves_active") == 0, 3)
    t0 = time.monotonic()
    lf.send_raw(sn.encode_pingreq())
    lf.wait_for(sn.DISCONNECT, since=t0)          # §6.12: no session any more
    bc.expect_none(0.5, topic="dtls/will/a")
    assert side.gw.api.ok("GET", "/api/v1/devices/dtls-a")["lan_security"] == "dtls-psk"


def test_subscribe_downlink_register_puback_unsubscribe(broker, dtls_side, broker_client):
    side = dtls_side(lan={"t_retry_ms": 500})
    lf, = side.leaves("dtls-sub")
    assert lf.connect() == sn.RC_ACCEPTED
    assert lf.subscribe("dtls/down/+", qos=1) == (1, 0, sn.RC_ACCEPTED)   # wildcard: id 0
    granted, exact_tid, rc = lf.subscribe("dtls/exact", qos=2)
    assert (granted, rc) == (1, sn.RC_ACCEPTED) and exact_tid not in (0, 0xFFFF)
    bc = broker_client(broker)
    bc.publish("dtls/down/a", b"A", qos=1)
    bc.publish("dtls/down/b", b"B", qos=1)
    bc.publish("dtls/exact", b"X", qos=2)
    got = lf.recv_publishes(3)
    assert sorted(got) == [("dtls/down/a", b"A", 1), ("dtls/down/b", b"B", 1),
                           ("dtls/exact", b"X", 1)]
    # The gateway REGISTERed each new topic of the wildcard before its PUBLISH
    # (the leaf REGACKed), and used the SUBACK's id for the exact one.
    regs = {e.msg.topic_name.decode(): (e.msg.topic_id, e.t) for e in lf.received(sn.REGISTER)}
    assert set(regs) == {"dtls/down/a", "dtls/down/b"}, regs
    for r in lf.publishes:
        if r.topic == "dtls/exact":
            assert r.topic_id == exact_tid
        else:
            assert regs[r.topic][0] == r.topic_id and regs[r.topic][1] <= r.t
    # The leaf's PUBACKs reached the gateway: one message in flight at a
    # time delivered all three, and nothing was sent again (t_retry 0.5 s).
    time.sleep(0.8)
    assert counter(side.gw, "retransmissions") == 0
    assert not [r for r in lf.publishes if r.dup]
    # UNSUBSCRIBE / UNSUBACK: the wildcard stops, the exact topic goes on.
    assert lf.unsubscribe("dtls/down/+") is True
    time.sleep(0.3)
    bc.publish("dtls/down/a", b"after", qos=1)
    bc.publish("dtls/exact", b"Y", qos=1)
    assert lf.recv_publishes(1, since_index=3) == [("dtls/exact", b"Y", 1)]
    time.sleep(0.3)
    assert sorted(r.payload for r in lf.publishes) == [b"A", b"B", b"X", b"Y"]


def test_will_update_then_keepalive_loss_publishes_the_will(broker, dtls_side, broker_client):
    bc = broker_client(broker)
    bc.subscribe("dtls/will/#", qos=1)
    side = dtls_side()
    lf, = side.leaves("dtls-will")
    assert lf.connect(keepalive=2, will=("dtls/will/old", b"old", 1, False)) == sn.RC_ACCEPTED
    assert lf.willtopicupd("dtls/will/new", qos=1) == sn.RC_ACCEPTED    # WILLTOPICRESP
    assert lf.willmsgupd(b"vanished") == sn.RC_ACCEPTED                # WILLMSGRESP
    silent_at = time.monotonic()
    lf.close()          # not a word more; the bridge's association stays open
    got = bc.wait_messages(1, timeout=10)
    assert [(m.topic, m.payload) for m in got] == [("dtls/will/new", b"vanished")]
    assert 2.0 <= got[0].t - silent_at <= 8.0     # keep-alive 2 s, +50%
    assert counter(side.gw, "leaves_lost") == 1
    assert counter(side.gw, "wills_published") == 1


def test_sleep_buffers_and_wakes_in_place_then_through_a_new_association(
        broker, dtls_side, broker_client):
    side = dtls_side()
    lf, = side.leaves("dtls-sleepy")
    assert lf.connect() == sn.RC_ACCEPTED
    assert lf.subscribe("dtls/sleep", qos=1)[2] == sn.RC_ACCEPTED
    bc = broker_client(broker)

    def sleep_and_send(*payloads):
        ack = lf.sleep(30)
        assert ack is not None and ack.duration is None
        assert wait_until(lambda: counter(side.gw, "leaves_asleep") == 1, 3)
        asleep_at = time.monotonic()
        for p in payloads:
            bc.publish("dtls/sleep", p, qos=1)
        time.sleep(0.5)
        assert not lf.received(sn.PUBLISH, since=asleep_at), "pushed to a sleeping leaf"

    # Wake over the same association: PINGREQ(ClientId), the buffered
    # messages, then PINGRESP.
    sleep_and_send(b"m0", b"m1")
    got = lf.wake_and_drain()
    assert [(r.topic, r.payload) for r in got] == [("dtls/sleep", b"m0"), ("dtls/sleep", b"m1")]
    assert all(r.t <= lf.received(sn.PINGRESP)[-1].t for r in got)
    # Asleep again; this time the leaf comes back through a new association
    # (a new handshake from a new port, as after powering its radio down).
    sleep_and_send(b"m2")
    old_bridge = side.bridges[0]
    b2, back = side.fixed("dtls-sleepy")
    back.topics.update(lf.topics)         # the leaf kept its topic table
    got = back.wake_and_drain()
    assert [(r.topic, r.payload) for r in got] == [("dtls/sleep", b"m2")]
    b2.wait_line(lambda ln: ln.startswith("handshake ok "))
    # One key, one association: the old one was closed.
    old_bridge.wait_line(lambda ln: ln.startswith(("closed ", "alert ")))
    assert counter(side.gw, "dtls_identity_replaced") == 1
    # Active again over the new association, then the final DISCONNECT.
    assert back.connect() == sn.RC_ACCEPTED
    bc.publish("dtls/sleep", b"live", qos=1)
    assert back.recv_publishes(1, since_index=1) == [("dtls/sleep", b"live", 1)]
    assert back.disconnect() is not None
    assert wait_until(lambda: counter(side.gw, "leaves_active") == 0, 3)


def test_searchgw_is_answered_over_dtls(dtls_side):
    side = dtls_side(gateway_id=42)
    b, lf = side.fixed("dtls-search")
    # Before any CONNECT, on the association alone (§6.1)...
    assert lf.searchgw().gw_id == 42
    b.wait_line(lambda ln: ln.startswith("handshake ok "))
    # ... and from a connected leaf.
    assert lf.connect() == sn.RC_ACCEPTED
    assert lf.searchgw().gw_id == 42
    assert counter(side.gw, "dtls_sessions") == 1


def test_qos_minus1_taken_from_dtls_not_from_plain_udp(broker, dtls_side, broker_client):
    """QoS -1 names no sender.  A DTLS-only identity (it holds a key and
    never CONNECTs) publishes QoS -1 from its association: relayed.  The same
    over plain UDP while admission.plain_udp is "listed" is dropped, even
    from a listed legacy leaf that is connected."""
    bc = broker_client(broker)
    bc.subscribe("dtls/m1/#", qos=1)
    bc.subscribe("m1", qos=1)
    side = dtls_side(lan={"predefined_topics": {"5": "dtls/m1/pre"}},
                     upstream={"qos_minus1_client_id": "fleetgw-qosm1"},
                     admission={"plain_udp": "listed", "plain_udp_clients": ["legacy-*"]})
    _, lf = side.fixed("dtls-m1")
    assert lf.publish(5, b"pre", qos=-1, topic_type="predefined") is None
    assert lf.publish("m1", b"short", qos=-1) is None
    assert bc.wait_messages(1, timeout=8, topic="dtls/m1/pre")[0].payload == b"pre"
    assert bc.wait_messages(1, timeout=8, topic="m1")[0].payload == b"short"
    legacy = side.gw.connected_leaf("legacy-1")
    legacy.publish(5, b"spoofed", qos=-1, topic_type="predefined")
    side.gw.leaf().publish("m1", b"anon", qos=-1)
    assert wait_until(lambda: counter(side.gw, "qos_m1_dropped") == 2, 3)
    bc.expect_none(0.5)
    m = side.gw.metrics()
    assert (find_metric(m, "publish_in_qos_m1"), find_metric(m, "qos_m1_dropped")) == (4, 2)
    assert sorted(r.payload for r in bc.messages) == [b"pre", b"short"]
