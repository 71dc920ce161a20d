"""Tests of the Leaf client's flows against a tiny scripted peer on 127.0.0.1.

The peer is not a gateway: it answers each request with the reply the spec
prescribes, so the Leaf's blocking methods, its automatic answers to
gateway-initiated traffic and its inbox can be checked without fleetgw.
"""
import os
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqttsn_leaf as sn  # noqa: E402


class Peer:
    """A UDP peer that calls handler(msg, addr) -> list of datagrams to send back."""

    def __init__(self, handler):
        self.handler = handler
        self.seen = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.addr = self.sock.getsockname()
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            msg = sn.decode(data)
            self.seen.append(msg)
            for out in self.handler(msg, addr) or []:
                self.sock.sendto(out, addr)

    def send(self, data, addr):
        self.sock.sendto(data, addr)

    def close(self):
        self.running = False
        self.thread.join(1)
        self.sock.close()


@pytest.fixture
def peer_factory():
    peers = []

    def make(handler):
        p = Peer(handler)
        peers.append(p)
        return p
    yield make
    for p in peers:
        p.close()


def test_connect_with_will_flow(peer_factory):
    def h(m, addr):
        if m.type == sn.CONNECT:
            assert m.flags_parsed.will and m.flags_parsed.clean
            return [sn.encode_willtopicreq()]
        if m.type == sn.WILLTOPIC:
            return [sn.encode_willmsgreq()]
        if m.type == sn.WILLMSG:
            return [sn.encode_connack(0)]
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf-w") as leaf:
        assert leaf.connect(keepalive=7, will=("w/t", b"gone", 1, True)) == 0
    types = [m.type for m in p.seen]
    assert types == [sn.CONNECT, sn.WILLTOPIC, sn.WILLMSG]
    assert p.seen[0].duration == 7 and p.seen[0].client_id == b"leaf-w"
    assert p.seen[1].topic == b"w/t" and sn.Flags.parse(p.seen[1].flags).qos == 1
    assert sn.Flags.parse(p.seen[1].flags).retain
    assert p.seen[2].msg == b"gone"


def test_connect_timeout_raises(peer_factory):
    p = peer_factory(lambda m, a: [])
    with sn.Leaf(p.addr, "x") as leaf:
        with pytest.raises(sn.Timeout):
            leaf.connect(timeout=0.3)


def test_register_publish_qos1_qos2(peer_factory):
    def h(m, addr):
        if m.type == sn.REGISTER:
            return [sn.encode_regack(0x0042, m.msg_id, 0)]
        if m.type == sn.PUBLISH:
            q = sn.Flags.parse(m.flags).qos
            if q == 1:
                return [sn.encode_puback(m.topic_id, m.msg_id, 0)]
            if q == 2:
                return [sn.encode_pubrec(m.msg_id)]
        if m.type == sn.PUBREL:
            return [sn.encode_pubcomp(m.msg_id)]
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf") as leaf:
        tid = leaf.register("a/b")
        assert tid == 0x42 and leaf.topics[0x42] == "a/b"
        assert leaf.publish(tid, b"one", qos=1) == 0
        assert leaf.publish(tid, b"two", qos=2) == 0
        assert leaf.publish("ab", b"three", qos=0) is None
        assert leaf.publish(9, b"four", qos=-1, topic_type="predefined") is None
    time.sleep(0.1)
    pubs = [m for m in p.seen if m.type == sn.PUBLISH]
    assert [m.data for m in pubs] == [b"one", b"two", b"three", b"four"]
    assert sn.Flags.parse(pubs[2].flags).topic_id_type == sn.TID_SHORT
    assert pubs[2].topic_id == 0x6162
    f4 = sn.Flags.parse(pubs[3].flags)
    assert (f4.qos, f4.topic_id_type, pubs[3].msg_id) == (-1, sn.TID_PREDEFINED, 0)
    assert any(m.type == sn.PUBREL for m in p.seen)


def test_publish_qos2_rejected_by_puback(peer_factory):
    p = peer_factory(lambda m, a: [sn.encode_puback(m.topic_id, m.msg_id, 2)]
                     if m.type == sn.PUBLISH else [])
    with sn.Leaf(p.addr, "leaf") as leaf:
        assert leaf.publish(77, b"x", qos=2) == sn.RC_INVALID_TOPIC_ID


def test_subscribe_and_receive_with_gateway_register(peer_factory):
    state = {}

    def h(m, addr):
        if m.type == sn.SUBSCRIBE:
            state["addr"] = addr
            return [sn.encode_suback(0, m.msg_id, 0, qos=1)]
        if m.type in (sn.REGACK, sn.PUBACK, sn.PUBREC, sn.PUBCOMP):
            return []
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf") as leaf:
        assert leaf.subscribe("fleet/#", qos=1) == (1, 0, 0)
        a = state["addr"]
        p.send(sn.encode_register(0x0007, 1, "fleet/a/temp"), a)
        p.send(sn.encode_publish(0x0007, b"21.5", qos=1, msg_id=2), a)
        p.send(sn.encode_publish(0x0007, b"22.0", qos=2, msg_id=3), a)
        p.send(sn.encode_publish(0x0007, b"22.0", qos=2, msg_id=3, dup=True), a)  # dup before PUBREL
        p.send(sn.encode_pubrel(3), a)
        p.send(sn.encode_publish(sn.short_topic_id("xy"), b"s", qos=0,
                                 topic_id_type=sn.TID_SHORT), a)
        got = leaf.recv_publishes(3, timeout=2)
        assert got == [("fleet/a/temp", b"21.5", 1), ("fleet/a/temp", b"22.0", 2),
                       ("xy", b"s", 0)]
        time.sleep(0.1)
        assert len(leaf.publishes) == 3
    acks = [(m.type, m.fields) for m in p.seen if m.type != sn.SUBSCRIBE]
    assert (sn.REGACK, dict(topic_id=7, msg_id=1, rc=0)) in acks
    assert (sn.PUBACK, dict(topic_id=7, msg_id=2, rc=0)) in acks
    assert [t for t, f in acks if t == sn.PUBREC] == [sn.PUBREC, sn.PUBREC]
    assert (sn.PUBCOMP, dict(msg_id=3)) in acks


def test_unknown_topic_id_answered_invalid(peer_factory):
    state = {}

    def h(m, addr):
        state["addr"] = addr
        return [sn.encode_pingresp()] if m.type == sn.PINGREQ else []
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf") as leaf:
        leaf.ping()
        p.send(sn.encode_publish(0x0099, b"?", qos=1, msg_id=5), state["addr"])
        leaf.wait_for(sn.PUBLISH, timeout=1)
        time.sleep(0.1)
    assert any(m.type == sn.PUBACK and m.rc == sn.RC_INVALID_TOPIC_ID and m.msg_id == 5
               for m in p.seen)


def test_no_auto_ack(peer_factory):
    state = {}

    def h(m, addr):
        state["addr"] = addr
        return [sn.encode_pingresp()] if m.type == sn.PINGREQ else []
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf", auto_ack=False) as leaf:
        leaf.ping()
        leaf.topics[3] = "t"
        p.send(sn.encode_publish(3, b"x", qos=1, msg_id=9), state["addr"])
        p.send(sn.encode_publish(3, b"x", qos=1, msg_id=9, dup=True), state["addr"])
        assert leaf.recv_publishes(2, timeout=1) == [("t", b"x", 1), ("t", b"x", 1)]
        assert [r.dup for r in leaf.publishes] == [False, True]
    time.sleep(0.1)
    assert not any(m.type == sn.PUBACK for m in p.seen)


def test_sleep_wake_and_drain(peer_factory):
    def h(m, addr):
        if m.type == sn.DISCONNECT:
            return [sn.encode_disconnect()]
        if m.type == sn.PINGREQ and m.client_id == b"sleepy":
            return [sn.encode_register(4, 1, "s/t"),
                    sn.encode_publish(4, b"m1", qos=1, msg_id=2),
                    sn.encode_publish(4, b"m2", qos=0),
                    sn.encode_pingresp()]
    p = peer_factory(h)
    with sn.Leaf(p.addr, "sleepy") as leaf:
        ack = leaf.sleep(30)
        assert ack is not None and ack.duration is None
        assert p.seen[-1].duration == 30
        got = leaf.wake_and_drain(timeout=2)
        assert [(r.topic, r.payload, r.qos) for r in got] == [("s/t", b"m1", 1), ("s/t", b"m2", 0)]
        # The inbox keeps everything, timestamped and in order.
        names = [e.msg.name for e in leaf.inbox]
        assert names == ["DISCONNECT", "REGISTER", "PUBLISH", "PUBLISH", "PINGRESP"]
        assert all(a.t <= b.t for a, b in zip(leaf.inbox, leaf.inbox[1:]))


def test_searchgw_and_will_updates(peer_factory):
    def h(m, addr):
        if m.type == sn.SEARCHGW:
            return [sn.encode_gwinfo(42)]
        if m.type == sn.WILLTOPICUPD:
            return [sn.encode_willtopicresp(0)]
        if m.type == sn.WILLMSGUPD:
            return [sn.encode_willmsgresp(3)]
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf") as leaf:
        assert leaf.searchgw(radius=1).gw_id == 42
        assert leaf.willtopicupd("new/will", qos=1) == 0
        assert leaf.willtopicupd(None) == 0
        assert leaf.willmsgupd(b"bye") == 3
    assert p.seen[0].radius == 1
    assert p.seen[1].topic == b"new/will"
    assert p.seen[2].flags is None and p.seen[2].topic == b""


def test_malformed_from_gateway_is_kept(peer_factory):
    state = {}

    def h(m, addr):
        state["addr"] = addr
        return [b"\x05\x05\x00"]   # declared 5, 3 octets
    p = peer_factory(h)
    with sn.Leaf(p.addr, "leaf") as leaf:
        leaf.send_raw(sn.encode_pingreq())
        deadline = time.monotonic() + 1
        while not leaf.malformed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leaf.malformed == [b"\x05\x05\x00"]
        assert leaf.inbox[0].msg is None


def test_cli_help():
    import subprocess
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "mqttsn_leaf.py"),
                          "--help"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "searchgw" in out.stdout and "pub" in out.stdout


def test_cli_searchgw(peer_factory):
    import subprocess
    p = peer_factory(lambda m, a: [sn.encode_gwinfo(9)] if m.type == sn.SEARCHGW else [])
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "mqttsn_leaf.py"),
                          "--gw", "127.0.0.1:%d" % p.addr[1], "searchgw"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "gw_id=9" in out.stdout
