"""Whole-gateway behaviour: many leaves, hostile input, ClientId limits,
discovery (SEARCHGW/GWINFO, ADVERTISE) and graceful shutdown."""
import json
import os
import random
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mqttsn_leaf as sn
import pytest
from conftest import LOOPBACK


def test_200_leaves_each_own_upstream_identity(broker, gateway, broker_client):
    n = 200
    bc = broker_client(broker)
    bc.subscribe("fleet/many/#", qos=1)
    gw = gateway(broker, upstream={"client_id_template": "{client_id}"})
    ids = ["leaf-%03d" % i for i in range(n)]
    leaves = {cid: gw.leaf(cid) for cid in ids}

    def run(cid):
        lf = leaves[cid]
        rc = lf.connect(keepalive=60, timeout=30)
        if rc != sn.RC_ACCEPTED:
            return "CONNACK 0x%02X" % rc
        tid = lf.register("fleet/many/" + cid, timeout=15)
        return lf.publish(tid, cid.encode(), qos=1, timeout=15)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as ex:
        results = dict(zip(ids, ex.map(run, ids)))
    bad = {k: v for k, v in results.items() if v != sn.RC_ACCEPTED}
    assert not bad, bad
    got = bc.wait_messages(n, timeout=30)
    assert sorted((m.topic, m.payload) for m in got) == sorted(
        ("fleet/many/" + cid, cid.encode()) for cid in ids)
    seen = set(broker.client_ids())
    assert set(ids) <= seen, sorted(set(ids) - seen)[:10]
    assert gw.metric("leaves_connected") == n
    print("200 leaves connected and published in %.2f s" % (time.monotonic() - t0))


def _malformed_datagrams(rng, count):
    """`count` datagrams that no v1.2 parser may accept: the declared length
    disagrees with the datagram, the datagram is shorter than a header, or a
    fixed-size message has the wrong size."""
    valid = [
        sn.encode_connect("leaf-x", 60), sn.encode_connect("leaf-x", 60, will=True),
        sn.encode_register(0, 1, "a/b/c"), sn.encode_publish(1, b"payload", qos=1, msg_id=2),
        sn.encode_publish(5, b"x" * 300, qos=0), sn.encode_subscribe(3, "a/#", qos=1),
        sn.encode_subscribe(3, 7, topic_id_type=sn.TID_PREDEFINED),
        sn.encode_unsubscribe(4, "a/#"), sn.encode_puback(1, 2), sn.encode_regack(1, 2),
        sn.encode_pubrel(9), sn.encode_disconnect(60), sn.encode_pingreq("leaf-x"),
        sn.encode_willtopic("w", qos=1), sn.encode_willmsgupd(b"m"), sn.encode_searchgw(1),
    ]
    wrong_size = [
        bytes.fromhex("03 0f 00"),            # PUBREC with a 1-octet body
        bytes.fromhex("05 0d 00 01 00"),      # PUBACK missing fields
        bytes.fromhex("03 18 01"),            # DISCONNECT with a 1-octet duration
        bytes.fromhex("06 04 04 01 00 3c"),   # CONNECT without ClientId
        bytes.fromhex("05 12 03 00 01"),      # SUBSCRIBE, reserved TopicIdType, no topic
        bytes.fromhex("06 0c 20 00 01 00"),   # PUBLISH cut inside MsgId
        bytes.fromhex("03 16"),               # declared 3, 2 octets
        bytes.fromhex("01 00"),               # long form truncated
        bytes.fromhex("01 00 03 16"),         # long form declaring less than its header
        bytes.fromhex("00 16"),               # length 0
        bytes.fromhex("02"),                  # one octet
    ]
    out = []
    while len(out) < count:
        kind = len(out) % 4
        if kind == 0:                          # random bytes, length field made wrong
            d = bytearray(rng.randbytes(rng.randint(2, 300)))
            if d[0] == 1:
                d[1:3] = struct.pack(">H", (len(d) + rng.randint(1, 100)) & 0xFFFF)
            elif d[0] == len(d) or (len(d) <= 255 and d[0] == 0):
                d[0] = (len(d) + 1) & 0xFF or 2
            if d[0] == len(d):
                d[0] = 0
            out.append(bytes(d))
        elif kind == 1:                        # a valid message cut short
            v = rng.choice(valid)
            out.append(v[:rng.randint(1, len(v) - 1)])
        elif kind == 2:                        # a valid message with bytes appended
            v = rng.choice(valid)
            out.append(v + rng.randbytes(rng.randint(1, 8)))
        else:
            out.append(rng.choice(wrong_size))
    return out


def test_malformed_burst_gateway_survives(broker, gateway, broker_client):
    gw = gateway(broker)
    bc = broker_client(broker)
    bc.subscribe("fleet/good", qos=1)
    before = gw.metric("malformed")
    long_before = gw.metric("too_long")
    rng = random.Random(20261129)
    burst = _malformed_datagrams(rng, 1000)
    for d in burst:                            # self-check: none of them decodes
        try:
            sn.decode(d)
            raise AssertionError("generator produced a valid datagram: %s" % d.hex())
        except sn.DecodeError:
            pass
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOOPBACK, 0))
    try:
        for i, d in enumerate(burst):
            s.sendto(d, gw.addr)
            if i % 100 == 99:
                time.sleep(0.01)               # keep within the socket buffer
        # Also: empty datagrams and well-framed nonsense (reserved types,
        # wrong ProtocolId) - rejected, but not part of the count below.
        for extra in (b"", bytes.fromhex("02 03"), bytes.fromhex("02 ff"),
                      sn.encode_connect("leaf-bad-proto", 60, protocol_id=0x02)):
            s.sendto(extra, gw.addr)
        # Longer than any LAN datagram the gateway takes (2048 bytes): three
        # well-framed PUBLISHes of 2,049 to 9,000 bytes are dropped unread
        # and counted apart from the decoder's rejects.
        for size in (2049, 4000, 9000):
            s.sendto(b"\x01" + size.to_bytes(2, "big") + b"\x0c" + b"\x00" * (size - 4), gw.addr)
    finally:
        s.close()
    time.sleep(0.5)
    assert gw.alive()
    lf = gw.connected_leaf("leaf-good")
    tid = lf.register("fleet/good")
    assert lf.publish(tid, b"still fine", qos=1) == sn.RC_ACCEPTED
    assert bc.wait_messages(1, topic="fleet/good")[0].payload == b"still fine"
    delta = gw.metric("malformed") - before
    # Loopback UDP does not drop at this pace; allow a little slack anyway.
    assert delta >= 950, delta
    assert gw.metric("too_long") - long_before == 3


def test_client_id_longer_than_23_rejected_by_default(broker, gateway):
    gw = gateway(broker)
    ok_id = "leaf-" + "a" * 18                 # 23 characters
    assert len(ok_id) == 23
    assert gw.leaf(ok_id).connect() == sn.RC_ACCEPTED
    long_id = "leaf-" + "b" * 19               # 24 characters
    lf = gw.leaf(long_id)
    try:
        rc = lf.connect(timeout=3)
    except sn.Timeout:
        rc = None
    assert rc != sn.RC_ACCEPTED
    assert long_id not in broker.client_ids()
    broker.wait_connected(ok_id)


def test_client_id_64_accepted_when_configured(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("fleet/long", qos=1)
    gw = gateway(broker, lan={"max_client_id_len": 64})
    cid = "leaf-" + "c" * 59
    assert len(cid) == 64
    lf = gw.connected_leaf(cid)
    broker.wait_connected(cid)
    tid = lf.register("fleet/long")
    assert lf.publish(tid, b"64", qos=1) == sn.RC_ACCEPTED
    assert bc.wait_messages(1, topic="fleet/long")[0].payload == b"64"
    too_long = gw.leaf("leaf-" + "d" * 60)     # 65
    try:
        rc = too_long.connect(timeout=3)
    except sn.Timeout:
        rc = None
    assert rc != sn.RC_ACCEPTED


def test_searchgw_gwinfo(broker, gateway):
    gw = gateway(broker, gateway_id=42)
    lf = gw.leaf()                             # no CONNECT needed for discovery
    info = lf.searchgw(radius=1)
    # From a gateway, GWINFO carries only the GwId (no GwAdd).
    assert (info.gw_id, info.gw_add) == (42, b"")


def test_advertise_sent_to_configured_address(broker, gateway):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((LOOPBACK, 0))
    listener.settimeout(6)
    try:
        gateway(broker, gateway_id=7, lan={"advertise": {
            "address": LOOPBACK, "port": listener.getsockname()[1], "interval_s": 1}})
        data, _ = listener.recvfrom(2048)
        m = sn.decode(data)
        assert (m.type, m.gw_id, m.duration) == (sn.ADVERTISE, 7, 1)
        data, _ = listener.recvfrom(2048)      # and again, periodically
        assert sn.decode(data).type == sn.ADVERTISE
    finally:
        listener.close()


def test_sigterm_disconnects_leaves_and_exits_0(broker, gateway):
    gw = gateway(broker)
    leaves = [gw.connected_leaf("leaf-term-%d" % i) for i in range(3)]
    asleep = gw.connected_leaf("leaf-term-sleeper")
    assert asleep.sleep(60) is not None
    t0 = time.monotonic()
    assert gw.terminate(timeout=10) == 0
    assert time.monotonic() - t0 < 10
    for lf in leaves:
        lf.wait_for(sn.DISCONNECT, timeout=1, since=t0)


LEAFSIM = Path(os.environ.get("BUILD_DIR", Path(__file__).resolve().parents[2] / "build")) \
    / "tests" / "leaf" / "fleetgw-leafsim"


@pytest.mark.skipif(not LEAFSIM.exists(), reason="needs BUILD_DIR's fleetgw-leafsim")
def test_leafsim_start_together_holds_publishing_until_every_leaf_is_connected(broker,
                                                                                gateway):
    # The bench's QoS 1 figures start their clock as mqttload's does, once
    # every leaf has its CONNACK (tests/bench/README.md §4): leafsim
    # --start-together MS.  Three leaves connect 0.4 s apart.
    gw = gateway(broker)

    def run(*extra):
        args = [LEAFSIM, "--gw", "%s:%d" % gw.addr, "-n", 3, "--prefix", "st-",
                "--connect-rate", 2.5, "--qos", 1, "--rate", 20, "--duration", 1,
                "--topic", "st/%s", "--stats"] + list(extra)
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    own = run()
    together = run("--start-together", 300)
    for st in (own, together):
        assert st["connected"] == 3 and st["publishes_acked"] > 0, st
        assert st["publishes_acked"] == st["publishes_sent"], st
    # Without it the first leaf publishes right after its own CONNACK, long
    # before the last one connects; with it, 300 ms after the last CONNACK.
    assert own["first_publish_ms"] < own["connect_last_ms"] - 200, own
    assert together["first_publish_ms"] >= together["connect_last_ms"] + 300, together
    # --duration counts from the start of publishing: a whole second of it.
    assert together["publish_span_s"] >= 0.9, together

