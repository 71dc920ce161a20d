"""Golden-byte tests for the leaf's MQTT-SN v1.2 codec (pure, no sockets).

Every expected byte string below was written by hand from the v1.2 spec
(section 5) and docs/protocol-notes.md §2, not produced by the encoder.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqttsn_leaf as sn  # noqa: E402

H = bytes.fromhex

GOLDEN = [
    # (name, encoded by helper, golden bytes, expected decoded type, fields)
    ("advertise", sn.encode_advertise(5, 900), H("05 00 05 0384"), sn.ADVERTISE,
     dict(gw_id=5, duration=900)),
    ("searchgw", sn.encode_searchgw(1), H("03 01 01"), sn.SEARCHGW, dict(radius=1)),
    ("gwinfo from gw", sn.encode_gwinfo(7), H("03 02 07"), sn.GWINFO,
     dict(gw_id=7, gw_add=b"")),
    ("gwinfo from client", sn.encode_gwinfo(7, H("7f000001")), H("07 02 07 7f000001"),
     sn.GWINFO, dict(gw_id=7, gw_add=H("7f000001"))),
    ("connect clean", sn.encode_connect("leaf-1", 60, clean=True),
     H("0c 04 04 01 003c") + b"leaf-1", sn.CONNECT,
     dict(flags=0x04, protocol_id=1, duration=60, client_id=b"leaf-1")),
    ("connect will", sn.encode_connect("x", 0x1234, clean=True, will=True),
     H("07 04 0c 01 1234 78"), sn.CONNECT,
     dict(flags=0x0C, protocol_id=1, duration=0x1234, client_id=b"x")),
    ("connect persistent", sn.encode_connect("ab", 10, clean=False),
     H("08 04 00 01 000a 6162"), sn.CONNECT,
     dict(flags=0x00, protocol_id=1, duration=10, client_id=b"ab")),
    ("connack", sn.encode_connack(0), H("03 05 00"), sn.CONNACK, dict(rc=0)),
    ("connack congestion", sn.encode_connack(1), H("03 05 01"), sn.CONNACK, dict(rc=1)),
    ("willtopicreq", sn.encode_willtopicreq(), H("02 06"), sn.WILLTOPICREQ, {}),
    ("willtopic", sn.encode_willtopic("w/t", qos=1, retain=True), H("06 07 30 772f74"),
     sn.WILLTOPIC, dict(flags=0x30, topic=b"w/t")),
    ("willtopic empty", sn.encode_willtopic(None), H("02 07"), sn.WILLTOPIC,
     dict(flags=None, topic=b"")),
    ("willmsgreq", sn.encode_willmsgreq(), H("02 08"), sn.WILLMSGREQ, {}),
    ("willmsg", sn.encode_willmsg(b"bye"), H("05 09 627965"), sn.WILLMSG, dict(msg=b"bye")),
    ("willmsg empty", sn.encode_willmsg(b""), H("02 09"), sn.WILLMSG, dict(msg=b"")),
    ("register from client", sn.encode_register(0, 1, "a/b"), H("09 0a 0000 0001 612f62"),
     sn.REGISTER, dict(topic_id=0, msg_id=1, topic_name=b"a/b")),
    ("register from gw", sn.encode_register(0x0102, 0xfffe, "t"), H("07 0a 0102 fffe 74"),
     sn.REGISTER, dict(topic_id=0x0102, msg_id=0xfffe, topic_name=b"t")),
    ("regack", sn.encode_regack(0x0102, 1, 0), H("07 0b 0102 0001 00"), sn.REGACK,
     dict(topic_id=0x0102, msg_id=1, rc=0)),
    ("regack invalid", sn.encode_regack(0, 9, 2), H("07 0b 0000 0009 02"), sn.REGACK,
     dict(topic_id=0, msg_id=9, rc=2)),
    ("publish qos1 normal", sn.encode_publish(1, b"hi", qos=1, msg_id=2),
     H("09 0c 20 0001 0002 6869"), sn.PUBLISH,
     dict(flags=0x20, topic_id=1, msg_id=2, data=b"hi")),
    ("publish qos0", sn.encode_publish(0x00ff, b"", qos=0), H("07 0c 00 00ff 0000"),
     sn.PUBLISH, dict(flags=0x00, topic_id=0xff, msg_id=0, data=b"")),
    ("publish qos-1 predefined",
     sn.encode_publish(5, b"x", qos=-1, topic_id_type=sn.TID_PREDEFINED),
     H("08 0c 61 0005 0000 78"), sn.PUBLISH, dict(flags=0x61, topic_id=5, msg_id=0, data=b"x")),
    ("publish qos2 short dup retain",
     sn.encode_publish(sn.short_topic_id("ab"), b"z", qos=2, msg_id=0x0a0b,
                       topic_id_type=sn.TID_SHORT, retain=True, dup=True),
     H("08 0c d2 6162 0a0b 7a"), sn.PUBLISH,
     dict(flags=0xd2, topic_id=0x6162, msg_id=0x0a0b, data=b"z")),
    ("puback", sn.encode_puback(1, 2, 0), H("07 0d 0001 0002 00"), sn.PUBACK,
     dict(topic_id=1, msg_id=2, rc=0)),
    ("puback invalid topic", sn.encode_puback(7, 0, 2), H("07 0d 0007 0000 02"), sn.PUBACK,
     dict(topic_id=7, msg_id=0, rc=2)),
    ("pubcomp", sn.encode_pubcomp(7), H("04 0e 0007"), sn.PUBCOMP, dict(msg_id=7)),
    ("pubrec", sn.encode_pubrec(7), H("04 0f 0007"), sn.PUBREC, dict(msg_id=7)),
    ("pubrel", sn.encode_pubrel(0xffff), H("04 10 ffff"), sn.PUBREL, dict(msg_id=0xffff)),
    ("subscribe name", sn.encode_subscribe(3, "s/#", qos=1), H("08 12 20 0003 732f23"),
     sn.SUBSCRIBE, dict(flags=0x20, msg_id=3, topic_name=b"s/#")),
    ("subscribe predefined", sn.encode_subscribe(4, 0x10, qos=0,
                                                 topic_id_type=sn.TID_PREDEFINED),
     H("07 12 01 0004 0010"), sn.SUBSCRIBE, dict(flags=0x01, msg_id=4, topic_id=0x10)),
    ("subscribe short", sn.encode_subscribe(5, "ab", qos=2, topic_id_type=sn.TID_SHORT),
     H("07 12 42 0005 6162"), sn.SUBSCRIBE, dict(flags=0x42, msg_id=5, topic_id=0x6162)),
    ("suback", sn.encode_suback(5, 3, 0, qos=1), H("08 13 20 0005 0003 00"), sn.SUBACK,
     dict(flags=0x20, topic_id=5, msg_id=3, rc=0)),
    ("suback wildcard", sn.encode_suback(0, 3, 0, qos=0), H("08 13 00 0000 0003 00"),
     sn.SUBACK, dict(flags=0x00, topic_id=0, msg_id=3, rc=0)),
    ("unsubscribe name", sn.encode_unsubscribe(4, "s/#"), H("08 14 00 0004 732f23"),
     sn.UNSUBSCRIBE, dict(flags=0x00, msg_id=4, topic_name=b"s/#")),
    ("unsubscribe predefined", sn.encode_unsubscribe(4, 9, topic_id_type=sn.TID_PREDEFINED),
     H("07 14 01 0004 0009"), sn.UNSUBSCRIBE, dict(flags=0x01, msg_id=4, topic_id=9)),
    ("unsuback", sn.encode_unsuback(4), H("04 15 0004"), sn.UNSUBACK, dict(msg_id=4)),
    ("pingreq", sn.encode_pingreq(), H("02 16"), sn.PINGREQ, dict(client_id=b"")),
    ("pingreq clientid", sn.encode_pingreq("leaf-1"), H("08 16") + b"leaf-1", sn.PINGREQ,
     dict(client_id=b"leaf-1")),
    ("pingresp", sn.encode_pingresp(), H("02 17"), sn.PINGRESP, {}),
    ("disconnect", sn.encode_disconnect(), H("02 18"), sn.DISCONNECT, dict(duration=None)),
    ("disconnect sleep", sn.encode_disconnect(300), H("04 18 012c"), sn.DISCONNECT,
     dict(duration=300)),
    ("willtopicupd", sn.encode_willtopicupd("w", qos=2), H("04 1a 40 77"), sn.WILLTOPICUPD,
     dict(flags=0x40, topic=b"w")),
    ("willtopicupd empty", sn.encode_willtopicupd(None), H("02 1a"), sn.WILLTOPICUPD,
     dict(flags=None, topic=b"")),
    ("willtopicresp", sn.encode_willtopicresp(0), H("03 1b 00"), sn.WILLTOPICRESP, dict(rc=0)),
    ("willmsgupd", sn.encode_willmsgupd("m"), H("03 1c 6d"), sn.WILLMSGUPD, dict(msg=b"m")),
    ("willmsgresp", sn.encode_willmsgresp(3), H("03 1d 03"), sn.WILLMSGRESP, dict(rc=3)),
    ("encapsulated", sn.encode_encapsulated(1, H("aabb"), H("0216")), H("05 fe 01 aabb 0216"),
     sn.ENCAPSULATED, dict(ctrl=1, node_id=H("aabb"), inner=H("0216"))),
]


@pytest.mark.parametrize("name,encoded,golden,mtype,fields", GOLDEN,
                         ids=[g[0] for g in GOLDEN])
def test_golden_short_form(name, encoded, golden, mtype, fields):
    assert encoded == golden
    m = sn.decode(golden)
    assert m.type == mtype
    assert m.fields == fields
    assert m.long_form is False
    assert sn.encode(m) == golden


@pytest.mark.parametrize("name,encoded,golden,mtype,fields", GOLDEN,
                         ids=[g[0] for g in GOLDEN])
def test_golden_long_form(name, encoded, golden, mtype, fields):
    # The same message in the 3-octet form: 0x01, a 16-bit total that counts
    # the 4-octet header, then the type and body.
    if mtype == sn.ENCAPSULATED:
        hdr_len = golden[0]
        long = bytes([1, 0, hdr_len + 2]) + golden[1:hdr_len] + golden[hdr_len:]
    else:
        long = bytes([1, 0, len(golden) + 2]) + golden[1:]
    m = sn.decode(long)
    assert m.type == mtype
    assert m.fields == fields
    assert m.long_form is True
    assert sn.encode(m) == long


def test_type_codes_pubcomp_before_pubrec():
    assert (sn.PUBACK, sn.PUBCOMP, sn.PUBREC, sn.PUBREL) == (0x0D, 0x0E, 0x0F, 0x10)
    assert (sn.WILLTOPICUPD, sn.WILLTOPICRESP, sn.WILLMSGUPD, sn.WILLMSGRESP) == (
        0x1A, 0x1B, 0x1C, 0x1D)


@pytest.mark.parametrize("flags,parsed", [
    (0x00, (False, 0, False, False, False, 0)),
    (0x20, (False, 1, False, False, False, 0)),
    (0x40, (False, 2, False, False, False, 0)),
    (0x60, (False, -1, False, False, False, 0)),
    (0x80, (True, 0, False, False, False, 0)),
    (0x10, (False, 0, True, False, False, 0)),
    (0x08, (False, 0, False, True, False, 0)),
    (0x04, (False, 0, False, False, True, 0)),
    (0x01, (False, 0, False, False, False, 1)),
    (0x02, (False, 0, False, False, False, 2)),
    (0xff, (True, -1, True, True, True, 3)),
])
def test_flags(flags, parsed):
    assert tuple(sn.Flags.parse(flags)) == parsed
    assert sn.Flags.parse(flags).byte() == flags


# --- the 254/255/256/257 length boundary (docs/protocol-notes.md §2.1) ----------------

@pytest.mark.parametrize("body_len,total,long_form", [
    (252, 254, False),   # total 254: 1-octet length 0xFE
    (253, 255, False),   # total 255: 1-octet length 0xFF, the largest short form
    (254, 258, True),    # would be 256 in short form: must switch to 3 octets
    (255, 259, True),
])
def test_length_boundary_auto(body_len, total, long_form):
    data = bytes(range(5)) * 60
    payload = data[:body_len - 5]            # PUBLISH body = 5 + len(data)
    enc = sn.encode_publish(0x0102, payload, qos=1, msg_id=3)
    assert len(enc) == total
    if long_form:
        assert enc[0] == 0x01
        assert enc[1:3] == total.to_bytes(2, "big")
        assert enc[3] == sn.PUBLISH
    else:
        assert enc[0] == total
        assert enc[1] == sn.PUBLISH
    m = sn.decode(enc)
    assert m.data == payload and m.long_form is long_form and m.topic_id == 0x0102


@pytest.mark.parametrize("body_len,total", [(252, 256), (253, 257), (1, 5), (0, 4)])
def test_length_forced_long_form(body_len, total):
    # Totals 256 and 257 exist only in the long form; small messages may use
    # it too and receivers must accept it.
    enc = sn.frame(sn.WILLMSG, b"m" * body_len, long_form=True)
    assert enc == bytes([0x01]) + total.to_bytes(2, "big") + bytes([sn.WILLMSG]) + b"m" * body_len
    m = sn.decode(enc)
    assert m.type == sn.WILLMSG and m.msg == b"m" * body_len and m.long_form


def test_short_form_cannot_hold_256():
    with pytest.raises(ValueError):
        sn.frame(sn.WILLMSG, b"m" * 254, long_form=False)


def test_long_form_max_and_over():
    enc = sn.frame(sn.WILLMSG, b"a" * (65535 - 4))
    assert enc[:4] == H("01 ffff 09") and len(enc) == 65535
    assert sn.decode(enc).msg == b"a" * 65531
    with pytest.raises(ValueError):
        sn.frame(sn.WILLMSG, b"a" * (65536 - 4))


def test_paho_254_edge_bug_is_rejected():
    # Paho sizes a 254-octet body for a 1-octet length (total 256) but then
    # writes the 3-octet form, so the datagram is 2 octets longer than its
    # declared length.  A strict decoder must reject that.
    body = bytes([0x20, 0, 1, 0, 1]) + b"q" * 249            # 254-octet PUBLISH body
    bad = bytes([0x01]) + (256).to_bytes(2, "big") + bytes([sn.PUBLISH]) + body  # 258 octets
    with pytest.raises(sn.DecodeError):
        sn.decode(bad)


@pytest.mark.parametrize("raw,why", [
    (b"", "empty"),
    (H("02"), "one octet"),
    (H("00 16"), "length 0"),
    (H("03 16"), "declared longer than datagram"),
    (H("02 16 00"), "declared shorter than datagram"),
    (H("01 00"), "long form truncated"),
    (H("01 0003 16"), "long form declared below header size"),
    (H("01 0005 16"), "long form declared longer"),
    (H("02 03"), "reserved type 0x03"),
    (H("02 11"), "reserved type 0x11"),
    (H("02 ff"), "reserved type 0xff"),
    (H("03 05"), "connack declared 3, has 2"),
    (H("02 05"), "connack missing rc"),
    (H("04 05 00 00"), "connack too long"),
    (H("06 0b 0001 00 01"), "regack short"),
    (H("08 0d 0001 0002 00 00"), "puback long"),
    (H("06 0c 00 0001 00"), "publish truncated before data"),
    (H("03 0f 00"), "pubrec short"),
    (H("05 18 0001 00"), "disconnect with 3-octet body"),
    (H("03 18 01"), "disconnect with 1-octet duration"),
    (H("07 13 00 0001 0002"), "suback short"),
    (H("05 12 03 0001"), "subscribe reserved topic id type"),
    (H("06 12 01 0001 00"), "subscribe predefined id truncated"),
    (H("05 04 04 01 00"), "connect truncated duration"),
    (H("06 04 04 01 003c"), "connect without client id"),
    (H("04 00 01 00"), "advertise truncated"),
    (H("02 01"), "searchgw without radius"),
    (H("02 02"), "gwinfo without gwid"),
    (H("04 fe 00"), "encapsulated length beyond datagram"),
    (H("02 fe"), "encapsulated without ctrl"),
])
def test_decode_rejects(raw, why):
    with pytest.raises(sn.DecodeError):
        sn.decode(raw)


def test_short_topic_helpers():
    assert sn.short_topic_id("ab") == 0x6162
    assert sn.short_topic_name(0x6162) == "ab"
    with pytest.raises(ValueError):
        sn.short_topic_id("abc")


def test_qos_out_of_range():
    with pytest.raises(ValueError):
        sn.encode_flags(qos=3)
