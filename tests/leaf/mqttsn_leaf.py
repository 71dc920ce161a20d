#!/usr/bin/python3
"""mqttsn_leaf - an MQTT-SN v1.2 client ("leaf") for testing fleetgw.

Written from the MQTT-SN v1.2 specification (IBM, 14 Nov 2013) and
docs/protocol-notes.md §2, deliberately NOT from the gateway's C code, so
that the two implementations check each other.

Two layers:

* A pure codec: ``encode(msg)`` / ``decode(datagram)`` for every message type,
  with both the 1-octet and the 3-octet length forms, plus one ``encode_*``
  helper per message type.  ``decode`` is strict: the declared length must
  equal the datagram size and every fixed-size message must have its exact
  size; anything else raises ``DecodeError``.
* ``Leaf``: a client over a UDP socket bound to 127.0.0.1.  A receiver thread
  timestamps every datagram the gateway sends into ``leaf.inbox`` (never
  consumed, for assertions), answers gateway-initiated traffic by itself
  (REGISTER -> REGACK, PUBLISH -> PUBACK/PUBREC, PUBREL -> PUBCOMP,
  PINGREQ -> PINGRESP) and hands replies to the blocking request methods.

Run ``python3 tests/leaf/mqttsn_leaf.py --help`` for the command line.
"""

import argparse
import collections
import socket
import struct
import sys
import threading
import time

# ---------------------------------------------------------------------------
# Message types (spec 5.2.2, Table 3).  Note PUBCOMP 0x0E comes before PUBREC
# 0x0F, unlike MQTT.
# ---------------------------------------------------------------------------
ADVERTISE = 0x00
SEARCHGW = 0x01
GWINFO = 0x02
CONNECT = 0x04
CONNACK = 0x05
WILLTOPICREQ = 0x06
WILLTOPIC = 0x07
WILLMSGREQ = 0x08
WILLMSG = 0x09
REGISTER = 0x0A
REGACK = 0x0B
PUBLISH = 0x0C
PUBACK = 0x0D
PUBCOMP = 0x0E
PUBREC = 0x0F
PUBREL = 0x10
SUBSCRIBE = 0x12
SUBACK = 0x13
UNSUBSCRIBE = 0x14
UNSUBACK = 0x15
PINGREQ = 0x16
PINGRESP = 0x17
DISCONNECT = 0x18
WILLTOPICUPD = 0x1A
WILLTOPICRESP = 0x1B
WILLMSGUPD = 0x1C
WILLMSGRESP = 0x1D
ENCAPSULATED = 0xFE

TYPE_NAMES = {
    ADVERTISE: "ADVERTISE", SEARCHGW: "SEARCHGW", GWINFO: "GWINFO",
    CONNECT: "CONNECT", CONNACK: "CONNACK", WILLTOPICREQ: "WILLTOPICREQ",
    WILLTOPIC: "WILLTOPIC", WILLMSGREQ: "WILLMSGREQ", WILLMSG: "WILLMSG",
    REGISTER: "REGISTER", REGACK: "REGACK", PUBLISH: "PUBLISH",
    PUBACK: "PUBACK", PUBCOMP: "PUBCOMP", PUBREC: "PUBREC", PUBREL: "PUBREL",
    SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT", WILLTOPICUPD: "WILLTOPICUPD",
    WILLTOPICRESP: "WILLTOPICRESP", WILLMSGUPD: "WILLMSGUPD",
    WILLMSGRESP: "WILLMSGRESP", ENCAPSULATED: "ENCAPSULATED",
}

# Return codes (spec 5.3.10, Table 5).
RC_ACCEPTED = 0x00
RC_CONGESTION = 0x01
RC_INVALID_TOPIC_ID = 0x02
RC_NOT_SUPPORTED = 0x03

# TopicIdType (flags bits 1..0, spec 5.3.4 Table 4).
TID_NORMAL = 0       # PUBLISH: registered id; (UN)SUBSCRIBE: topic name follows
TID_PREDEFINED = 1
TID_SHORT = 2
TID_RESERVED = 3
_TID_BY_NAME = {"normal": TID_NORMAL, "name": TID_NORMAL, "predefined": TID_PREDEFINED,
                "short": TID_SHORT}

PROTOCOL_ID = 0x01   # the only valid ProtocolId (spec 5.3.8)


class DecodeError(ValueError):
    """The datagram is not a well-formed MQTT-SN v1.2 message."""


class Timeout(TimeoutError):
    """The gateway did not answer in time."""


# ---------------------------------------------------------------------------
# Flags (spec 5.3.4): DUP(7) QoS(6-5, 0b11 = -1) Retain(4) Will(3) Clean(2)
# TopicIdType(1-0).
# ---------------------------------------------------------------------------
def qos_bits(qos):
    if qos == -1:
        return 3
    if qos in (0, 1, 2):
        return qos
    raise ValueError("qos must be -1, 0, 1 or 2, got %r" % (qos,))


def encode_flags(dup=False, qos=0, retain=False, will=False, clean=False,
                 topic_id_type=TID_NORMAL):
    if not 0 <= topic_id_type <= 3:
        raise ValueError("topic_id_type out of range")
    return ((0x80 if dup else 0) | (qos_bits(qos) << 5) | (0x10 if retain else 0)
            | (0x08 if will else 0) | (0x04 if clean else 0) | topic_id_type)


class Flags(collections.namedtuple("Flags", "dup qos retain will clean topic_id_type")):
    __slots__ = ()

    @classmethod
    def parse(cls, b):
        q = (b >> 5) & 3
        return cls(bool(b & 0x80), -1 if q == 3 else q, bool(b & 0x10), bool(b & 0x08),
                   bool(b & 0x04), b & 3)

    def byte(self):
        return encode_flags(self.dup, self.qos, self.retain, self.will, self.clean,
                            self.topic_id_type)


def short_topic_id(name):
    """A 2-character short topic name as the 16-bit value of the TopicId field."""
    b = name.encode() if isinstance(name, str) else bytes(name)
    if len(b) != 2:
        raise ValueError("a short topic name is exactly 2 octets, got %r" % (name,))
    return (b[0] << 8) | b[1]


def short_topic_name(topic_id):
    return bytes([(topic_id >> 8) & 0xFF, topic_id & 0xFF]).decode("latin-1")


def _b(s):
    if s is None:
        return b""
    return s.encode() if isinstance(s, str) else bytes(s)


# ---------------------------------------------------------------------------
# Framing (spec 5.2.1): Length counts the whole message including itself; one
# octet when the total fits in 255, else 0x01 followed by a 16-bit total.
# ---------------------------------------------------------------------------
def frame(msg_type, body=b"", long_form=None):
    """Prefix body with the Length and MsgType fields.

    long_form=None picks the short form whenever the total fits (<= 255);
    True/False force a form (False raises if it cannot fit)."""
    body = bytes(body)
    short_total = len(body) + 2
    if long_form is None:
        long_form = short_total > 255
    if not long_form:
        if short_total > 255:
            raise ValueError("message of %d octets does not fit the 1-octet length" % short_total)
        return bytes([short_total, msg_type]) + body
    total = len(body) + 4
    if total > 0xFFFF:
        raise ValueError("message of %d octets exceeds 65535" % total)
    return bytes([0x01]) + struct.pack(">H", total) + bytes([msg_type]) + body


def unframe(data):
    """Split a datagram into (msg_type, body, long_form); raises DecodeError."""
    data = bytes(data)
    if len(data) < 2:
        raise DecodeError("datagram of %d octets is shorter than a header" % len(data))
    if data[0] == 0x01:
        if len(data) < 4:
            raise DecodeError("3-octet length form truncated")
        total = struct.unpack(">H", data[1:3])[0]
        hdr = 4
        long_form = True
    else:
        total = data[0]
        hdr = 2
        long_form = False
    if total == 0:
        raise DecodeError("length 0")
    if total < hdr:
        raise DecodeError("declared length %d shorter than the header" % total)
    if total != len(data):
        raise DecodeError("declared length %d but datagram has %d octets" % (total, len(data)))
    return data[hdr - 1], data[hdr:], long_form


# ---------------------------------------------------------------------------
# Messages: a decoded message is a Message with .type, .name, .long_form and
# one attribute per field.  encode(Message) reverses decode().
# ---------------------------------------------------------------------------
class Message:
    def __init__(self, msg_type, long_form=False, **fields):
        self.type = msg_type
        self.long_form = long_form
        self.fields = fields
        for k, v in fields.items():
            setattr(self, k, v)

    @property
    def name(self):
        return TYPE_NAMES.get(self.type, "0x%02X" % self.type)

    @property
    def flags_parsed(self):
        f = self.fields.get("flags")
        return None if f is None else Flags.parse(f)

    def __eq__(self, other):
        return (isinstance(other, Message) and self.type == other.type
                and self.fields == other.fields)

    def __repr__(self):
        parts = ["%s=%r" % kv for kv in sorted(self.fields.items())]
        return "<%s %s>" % (self.name, " ".join(parts))


def _u16(body, off, what):
    if len(body) < off + 2:
        raise DecodeError("%s truncated" % what)
    return struct.unpack(">H", body[off:off + 2])[0]


def _exact(body, n, name):
    if len(body) != n:
        raise DecodeError("%s body must be %d octets, got %d" % (name, n, len(body)))


def _at_least(body, n, name):
    if len(body) < n:
        raise DecodeError("%s body must be at least %d octets, got %d" % (name, n, len(body)))


def decode(data):
    """Decode one datagram into a Message; raises DecodeError if malformed."""
    data = bytes(data)
    enc = _decode_encapsulated(data)
    if enc is not None:
        return enc
    t, body, long_form = unframe(data)
    name = TYPE_NAMES.get(t)
    f = {}
    if t == ADVERTISE:
        _exact(body, 3, name)
        f = dict(gw_id=body[0], duration=_u16(body, 1, name))
    elif t == SEARCHGW:
        _exact(body, 1, name)
        f = dict(radius=body[0])
    elif t == GWINFO:
        _at_least(body, 1, name)
        f = dict(gw_id=body[0], gw_add=body[1:])
    elif t == CONNECT:
        _at_least(body, 5, name)  # a ClientId is 1..n characters
        f = dict(flags=body[0], protocol_id=body[1], duration=_u16(body, 2, name),
                 client_id=body[4:])
    elif t in (CONNACK, WILLTOPICRESP, WILLMSGRESP):
        _exact(body, 1, name)
        f = dict(rc=body[0])
    elif t in (WILLTOPICREQ, WILLMSGREQ, PINGRESP):
        _exact(body, 0, name)
    elif t in (WILLTOPIC, WILLTOPICUPD):
        # An empty WILLTOPIC(UPD) is exactly the 2-octet header: no flags.
        if len(body) == 0:
            f = dict(flags=None, topic=b"")
        else:
            f = dict(flags=body[0], topic=body[1:])
    elif t in (WILLMSG, WILLMSGUPD):
        f = dict(msg=body)
    elif t == REGISTER:
        _at_least(body, 4, name)
        f = dict(topic_id=_u16(body, 0, name), msg_id=_u16(body, 2, name), topic_name=body[4:])
    elif t in (REGACK, PUBACK):
        _exact(body, 5, name)
        f = dict(topic_id=_u16(body, 0, name), msg_id=_u16(body, 2, name), rc=body[4])
    elif t == PUBLISH:
        _at_least(body, 5, name)
        f = dict(flags=body[0], topic_id=_u16(body, 1, name), msg_id=_u16(body, 3, name),
                 data=body[5:])
    elif t in (PUBCOMP, PUBREC, PUBREL, UNSUBACK):
        _exact(body, 2, name)
        f = dict(msg_id=_u16(body, 0, name))
    elif t in (SUBSCRIBE, UNSUBSCRIBE):
        _at_least(body, 3, name)
        flags = body[0]
        tid = flags & 3
        f = dict(flags=flags, msg_id=_u16(body, 1, name))
        if tid == TID_NORMAL:
            f["topic_name"] = body[3:]
        elif tid in (TID_PREDEFINED, TID_SHORT):
            _exact(body, 5, name)
            f["topic_id"] = _u16(body, 3, name)
        else:
            raise DecodeError("%s with reserved TopicIdType 3" % name)
    elif t == SUBACK:
        _exact(body, 6, name)
        f = dict(flags=body[0], topic_id=_u16(body, 1, name), msg_id=_u16(body, 3, name),
                 rc=body[5])
    elif t == PINGREQ:
        f = dict(client_id=body)
    elif t == DISCONNECT:
        if len(body) == 0:
            f = dict(duration=None)
        else:
            _exact(body, 2, name)
            f = dict(duration=_u16(body, 0, name))
    else:
        raise DecodeError("reserved message type 0x%02X" % t)
    return Message(t, long_form, **f)


def _decode_encapsulated(data):
    """Forwarder encapsulation (0xFE): Length counts only up to the end of
    the Wireless Node Id and the complete inner message follows, so the
    usual "Length equals datagram size" rule does not apply.  Returns None
    when data is not an encapsulated frame."""
    if len(data) >= 2 and data[0] != 0x01 and data[1] == ENCAPSULATED:
        total, hdr = data[0], 2
    elif len(data) >= 4 and data[0] == 0x01 and data[3] == ENCAPSULATED:
        total, hdr = struct.unpack(">H", data[1:3])[0], 4
    else:
        return None
    if total < hdr + 1 or total > len(data):
        raise DecodeError("ENCAPSULATED length %d out of range" % total)
    return Message(ENCAPSULATED, hdr == 4, ctrl=data[hdr], node_id=data[hdr + 1:total],
                   inner=data[total:])


decode_any = decode


# --- encoders, one per message type ----------------------------------------
def encode_advertise(gw_id, duration, long_form=None):
    return frame(ADVERTISE, struct.pack(">BH", gw_id, duration), long_form)


def encode_searchgw(radius=0, long_form=None):
    return frame(SEARCHGW, bytes([radius]), long_form)


def encode_gwinfo(gw_id, gw_add=b"", long_form=None):
    return frame(GWINFO, bytes([gw_id]) + _b(gw_add), long_form)


def encode_connect(client_id, duration=60, clean=True, will=False, flags=None,
                   protocol_id=PROTOCOL_ID, long_form=None):
    if flags is None:
        flags = encode_flags(will=will, clean=clean)
    return frame(CONNECT, struct.pack(">BBH", flags, protocol_id, duration) + _b(client_id),
                 long_form)


def encode_connack(rc, long_form=None):
    return frame(CONNACK, bytes([rc]), long_form)


def encode_willtopicreq(long_form=None):
    return frame(WILLTOPICREQ, b"", long_form)


def encode_willmsgreq(long_form=None):
    return frame(WILLMSGREQ, b"", long_form)


def _will_topic(msg_type, topic, qos, retain, long_form):
    if topic is None or topic == "" or topic == b"":
        return frame(msg_type, b"", long_form)  # empty: delete the Will
    return frame(msg_type, bytes([encode_flags(qos=qos, retain=retain)]) + _b(topic), long_form)


def encode_willtopic(topic, qos=0, retain=False, long_form=None):
    return _will_topic(WILLTOPIC, topic, qos, retain, long_form)


def encode_willmsg(msg, long_form=None):
    return frame(WILLMSG, _b(msg), long_form)


def encode_register(topic_id, msg_id, topic_name, long_form=None):
    return frame(REGISTER, struct.pack(">HH", topic_id, msg_id) + _b(topic_name), long_form)


def encode_regack(topic_id, msg_id, rc=RC_ACCEPTED, long_form=None):
    return frame(REGACK, struct.pack(">HHB", topic_id, msg_id, rc), long_form)


def encode_publish(topic_id, data, qos=0, msg_id=0, topic_id_type=TID_NORMAL, retain=False,
                   dup=False, flags=None, long_form=None):
    if flags is None:
        flags = encode_flags(dup=dup, qos=qos, retain=retain, topic_id_type=topic_id_type)
    return frame(PUBLISH, struct.pack(">BHH", flags, topic_id, msg_id) + _b(data), long_form)


def encode_puback(topic_id, msg_id, rc=RC_ACCEPTED, long_form=None):
    return frame(PUBACK, struct.pack(">HHB", topic_id, msg_id, rc), long_form)


def encode_pubrec(msg_id, long_form=None):
    return frame(PUBREC, struct.pack(">H", msg_id), long_form)


def encode_pubrel(msg_id, long_form=None):
    return frame(PUBREL, struct.pack(">H", msg_id), long_form)


def encode_pubcomp(msg_id, long_form=None):
    return frame(PUBCOMP, struct.pack(">H", msg_id), long_form)


def _sub(msg_type, msg_id, topic, topic_id_type, qos, dup, long_form):
    flags = encode_flags(dup=dup, qos=qos, topic_id_type=topic_id_type)
    head = struct.pack(">BH", flags, msg_id)
    if topic_id_type == TID_NORMAL:
        return frame(msg_type, head + _b(topic), long_form)
    if topic_id_type == TID_SHORT and not isinstance(topic, int):
        topic = short_topic_id(topic)
    return frame(msg_type, head + struct.pack(">H", topic), long_form)


def encode_subscribe(msg_id, topic, qos=0, topic_id_type=TID_NORMAL, dup=False, long_form=None):
    """topic: a name (TID_NORMAL), a predefined id (int) or a short name."""
    return _sub(SUBSCRIBE, msg_id, topic, topic_id_type, qos, dup, long_form)


def encode_unsubscribe(msg_id, topic, topic_id_type=TID_NORMAL, long_form=None):
    return _sub(UNSUBSCRIBE, msg_id, topic, topic_id_type, 0, False, long_form)


def encode_suback(topic_id, msg_id, rc=RC_ACCEPTED, qos=0, long_form=None):
    return frame(SUBACK, struct.pack(">BHHB", encode_flags(qos=qos), topic_id, msg_id, rc),
                 long_form)


def encode_unsuback(msg_id, long_form=None):
    return frame(UNSUBACK, struct.pack(">H", msg_id), long_form)


def encode_pingreq(client_id=None, long_form=None):
    return frame(PINGREQ, _b(client_id), long_form)


def encode_pingresp(long_form=None):
    return frame(PINGRESP, b"", long_form)


def encode_disconnect(duration=None, long_form=None):
    return frame(DISCONNECT, b"" if duration is None else struct.pack(">H", duration), long_form)


def encode_willtopicupd(topic, qos=0, retain=False, long_form=None):
    return _will_topic(WILLTOPICUPD, topic, qos, retain, long_form)


def encode_willmsgupd(msg, long_form=None):
    return frame(WILLMSGUPD, _b(msg), long_form)


def encode_willtopicresp(rc, long_form=None):
    return frame(WILLTOPICRESP, bytes([rc]), long_form)


def encode_willmsgresp(rc, long_form=None):
    return frame(WILLMSGRESP, bytes([rc]), long_form)


def encode_encapsulated(ctrl, node_id, inner, long_form=None):
    """Forwarder encapsulation: Length covers the header up to the end of the
    Wireless Node Id only; the complete inner message follows."""
    head = frame(ENCAPSULATED, bytes([ctrl]) + _b(node_id), long_form)
    return head + bytes(inner)


def encode(msg):
    """Encode a Message (as produced by decode) back to bytes."""
    t, f, lf = msg.type, msg.fields, (True if msg.long_form else None)
    if t == ADVERTISE:
        return encode_advertise(f["gw_id"], f["duration"], lf)
    if t == SEARCHGW:
        return encode_searchgw(f["radius"], lf)
    if t == GWINFO:
        return encode_gwinfo(f["gw_id"], f.get("gw_add", b""), lf)
    if t == CONNECT:
        return encode_connect(f["client_id"], f["duration"], flags=f["flags"],
                              protocol_id=f.get("protocol_id", PROTOCOL_ID), long_form=lf)
    if t in (CONNACK, WILLTOPICRESP, WILLMSGRESP):
        return frame(t, bytes([f["rc"]]), lf)
    if t in (WILLTOPICREQ, WILLMSGREQ, PINGRESP):
        return frame(t, b"", lf)
    if t in (WILLTOPIC, WILLTOPICUPD):
        if f.get("flags") is None:
            return frame(t, b"", lf)
        return frame(t, bytes([f["flags"]]) + _b(f["topic"]), lf)
    if t in (WILLMSG, WILLMSGUPD):
        return frame(t, _b(f["msg"]), lf)
    if t == REGISTER:
        return encode_register(f["topic_id"], f["msg_id"], f["topic_name"], lf)
    if t in (REGACK, PUBACK):
        return frame(t, struct.pack(">HHB", f["topic_id"], f["msg_id"], f["rc"]), lf)
    if t == PUBLISH:
        return encode_publish(f["topic_id"], f["data"], msg_id=f["msg_id"], flags=f["flags"],
                              long_form=lf)
    if t in (PUBCOMP, PUBREC, PUBREL, UNSUBACK):
        return frame(t, struct.pack(">H", f["msg_id"]), lf)
    if t in (SUBSCRIBE, UNSUBSCRIBE):
        head = struct.pack(">BH", f["flags"], f["msg_id"])
        if "topic_name" in f:
            return frame(t, head + _b(f["topic_name"]), lf)
        return frame(t, head + struct.pack(">H", f["topic_id"]), lf)
    if t == SUBACK:
        return frame(t, struct.pack(">BHHB", f["flags"], f["topic_id"], f["msg_id"], f["rc"]), lf)
    if t == PINGREQ:
        return encode_pingreq(f.get("client_id"), lf)
    if t == DISCONNECT:
        return encode_disconnect(f.get("duration"), lf)
    if t == ENCAPSULATED:
        return encode_encapsulated(f["ctrl"], f["node_id"], f["inner"], lf)
    raise ValueError("cannot encode message type 0x%02X" % t)


# ---------------------------------------------------------------------------
# The client.
# ---------------------------------------------------------------------------
InboxEntry = collections.namedtuple("InboxEntry", "t msg raw")
"""t: time.monotonic() at reception; msg: Message (None if undecodable); raw: bytes."""

Received = collections.namedtuple(
    "Received", "t topic payload qos retain dup msg_id topic_id topic_id_type")
"""One application message the gateway delivered to this leaf."""


class Leaf:
    """An MQTT-SN client on a UDP socket bound to 127.0.0.1 (or local_ip, another
    loopback address).

    gateway: (host, port) of the gateway.  predefined: {id: topic name} known
    in advance, used to name received PUBLISHes with pre-defined ids.
    auto_ack: acknowledge gateway PUBLISHes (PUBACK / PUBREC+PUBCOMP); set it
    False to test the gateway's retransmission.
    """

    def __init__(self, gateway, client_id=None, predefined=None, auto_ack=True,
                 default_timeout=5.0, local_ip="127.0.0.1"):
        self.gateway = (gateway[0], int(gateway[1]))
        self.client_id = client_id
        self.predefined = dict(predefined or {})
        self.auto_ack = auto_ack
        self.default_timeout = default_timeout
        self.topics = {}          # topic id -> topic name (normal ids only)
        self.inbox = []           # every InboxEntry, in order of arrival
        self.malformed = []       # raw datagrams that did not decode
        self.publishes = []       # Received, in order of delivery
        self._pending = []        # messages for the blocking request methods
        self._qos2_in = {}        # msg_id -> Received awaiting PUBREL
        self._next_msg_id = 1
        self._cv = threading.Condition()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Loopback only: 127.0.0.0/8 (e.g. 127.0.0.2 to look like another box).
        if not local_ip.startswith("127."):
            raise ValueError("leaves bind to loopback addresses only")
        self.sock.bind((local_ip, 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self._running = True
        self._thread = threading.Thread(target=self._rx_loop, daemon=True,
                                        name="leaf-rx-%s" % (client_id,))
        self._thread.start()

    # --- plumbing ----------------------------------------------------------
    def request_stop(self):
        """Ask the receiver thread to stop without waiting (close() waits);
        lets a caller shut many leaves down in parallel."""
        self._running = False

    def close(self):
        self._running = False
        if self._thread.is_alive():
            self._thread.join(2)
        if self.sock.fileno() != -1:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendto(bytes(data), self.gateway)

    def next_msg_id(self):
        with self._cv:
            mid = self._next_msg_id
            self._next_msg_id = mid % 0xFFFF + 1
            return mid

    def _rx_loop(self):
        while self._running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            try:
                msg = decode_any(data)
            except DecodeError:
                msg = None
            with self._cv:
                self.inbox.append(InboxEntry(now, msg, data))
                if msg is None:
                    self.malformed.append(data)
                else:
                    self._dispatch(now, msg)
                self._cv.notify_all()

    def _dispatch(self, now, msg):
        """Called with the lock held: answer gateway-initiated traffic."""
        t = msg.type
        if t == REGISTER:
            name = msg.topic_name.decode("utf-8", "replace")
            self.topics[msg.topic_id] = name
            self._send_nolock(encode_regack(msg.topic_id, msg.msg_id, RC_ACCEPTED))
        elif t == PUBLISH:
            self._on_publish(now, msg)
        elif t == PUBREL:
            self._qos2_in.pop(msg.msg_id, None)
            self._send_nolock(encode_pubcomp(msg.msg_id))
        elif t == PINGREQ:
            self._send_nolock(encode_pingresp())
        else:
            self._pending.append(msg)

    def _on_publish(self, now, msg):
        fl = Flags.parse(msg.flags)
        if fl.topic_id_type == TID_NORMAL:
            topic = self.topics.get(msg.topic_id)
        elif fl.topic_id_type == TID_PREDEFINED:
            topic = self.predefined.get(msg.topic_id)
        elif fl.topic_id_type == TID_SHORT:
            topic = short_topic_name(msg.topic_id)
        else:
            topic = None
        if topic is None:
            # Spec 6.10: an unknown topic id is answered PUBACK "invalid topic
            # ID" whatever the QoS; keep the message for inspection anyway.
            self._send_nolock(encode_puback(msg.topic_id, msg.msg_id, RC_INVALID_TOPIC_ID))
        rec = Received(now, topic, msg.data, fl.qos, fl.retain, fl.dup, msg.msg_id, msg.topic_id,
                       fl.topic_id_type)
        if fl.qos == 2:
            if msg.msg_id in self._qos2_in:
                # A duplicate of a QoS 2 message not yet released: deliver
                # once, just repeat the PUBREC.
                if self.auto_ack:
                    self._send_nolock(encode_pubrec(msg.msg_id))
                return
            if self.auto_ack and topic is not None:
                self._qos2_in[msg.msg_id] = rec
                self._send_nolock(encode_pubrec(msg.msg_id))
        elif fl.qos == 1 and self.auto_ack and topic is not None:
            self._send_nolock(encode_puback(msg.topic_id, msg.msg_id, RC_ACCEPTED))
        self.publishes.append(rec)

    def _send_nolock(self, data):
        try:
            self.sock.sendto(data, self.gateway)
        except OSError:
            pass

    def _take(self, pred, timeout):
        """Remove and return the first pending message matching pred."""
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        with self._cv:
            while True:
                for i, m in enumerate(self._pending):
                    if pred(m):
                        return self._pending.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("no matching reply from the gateway")
                self._cv.wait(left)

    def _take_types(self, types, timeout, msg_id=None):
        return self._take(lambda m: m.type in types
                          and (msg_id is None or m.fields.get("msg_id") == msg_id), timeout)

    def expect(self, types, timeout=None, msg_id=None):
        """Take the next reply of the given type(s) (and msg id) that no
        request method consumed; raises Timeout."""
        if isinstance(types, int):
            types = (types,)
        return self._take_types(tuple(types), timeout, msg_id)

    def wait_for(self, msg_type, timeout=None, since=0.0, pred=None):
        """Wait for an inbox entry of msg_type received at or after `since`
        (a time.monotonic() value) and matching pred(msg); returns it without
        consuming it."""
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        with self._cv:
            while True:
                for e in self.inbox:
                    if (e.msg is not None and e.msg.type == msg_type and e.t >= since
                            and (pred is None or pred(e.msg))):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("no %s from the gateway" % TYPE_NAMES.get(msg_type, msg_type))
                self._cv.wait(left)

    def received(self, msg_type=None, since=0.0):
        """Inbox entries (optionally of one type) received at or after since."""
        with self._cv:
            return [e for e in self.inbox if e.t >= since and e.msg is not None
                    and (msg_type is None or e.msg.type == msg_type)]

    def clear_pending(self):
        with self._cv:
            self._pending.clear()

    # --- connection --------------------------------------------------------
    def connect(self, client_id=None, keepalive=60, clean=True, will=None, timeout=None):
        """CONNECT and return the CONNACK return code.

        will: None or (topic, msg, qos, retain); answers WILLTOPICREQ and
        WILLMSGREQ as they come.  Raises Timeout without a CONNACK."""
        if client_id is not None:
            self.client_id = client_id
        if self.client_id is None:
            raise ValueError("connect needs a client id")
        self.send_raw(encode_connect(self.client_id, keepalive, clean=clean, will=will is not None))
        while True:
            m = self._take_types((CONNACK, WILLTOPICREQ, WILLMSGREQ), timeout)
            if m.type == CONNACK:
                return m.rc
            if m.type == WILLTOPICREQ:
                if will is None:
                    self.send_raw(encode_willtopic(None))
                else:
                    self.send_raw(encode_willtopic(will[0], qos=will[2] if len(will) > 2 else 0,
                                                   retain=will[3] if len(will) > 3 else False))
            else:
                self.send_raw(encode_willmsg(b"" if will is None else _b(will[1])))

    def register(self, topic, timeout=None):
        """REGISTER a topic name; returns the topic id, or raises
        RuntimeError with the REGACK return code when rejected."""
        mid = self.next_msg_id()
        self.send_raw(encode_register(0, mid, topic))
        m = self._take_types((REGACK,), timeout, msg_id=mid)
        if m.rc != RC_ACCEPTED:
            raise RegisterRejected(m.rc)
        with self._cv:
            self.topics[m.topic_id] = topic if isinstance(topic, str) else _b(topic).decode()
        return m.topic_id

    def register_rc(self, topic, timeout=None):
        """REGISTER and return (rc, topic id) without raising."""
        try:
            return RC_ACCEPTED, self.register(topic, timeout)
        except RegisterRejected as e:
            return e.rc, 0

    @staticmethod
    def _topic_args(topic, topic_type):
        if isinstance(topic_type, str):
            topic_type = _TID_BY_NAME[topic_type]
        if topic_type is None:
            if isinstance(topic, int):
                topic_type = TID_NORMAL
            elif len(_b(topic)) == 2:
                topic_type = TID_SHORT
            else:
                raise ValueError("publish needs a topic id, a short name or a predefined id")
        if topic_type == TID_SHORT and not isinstance(topic, int):
            topic = short_topic_id(topic)
        return topic, topic_type

    def publish(self, topic, payload, qos=0, topic_type=None, retain=False, timeout=None,
                wait=True, msg_id=None, dup=False):
        """PUBLISH.  topic: a registered topic id (int), a 2-character short
        name (str), or a predefined id with topic_type="predefined".

        QoS 1: waits for PUBACK and returns its return code.  QoS 2: runs
        PUBREC/PUBREL/PUBCOMP and returns 0 (or the PUBACK return code if the
        gateway rejects with a PUBACK).  QoS 0/-1: returns None.  With
        wait=False returns the msg id at once (see wait_ack)."""
        tid, ttype = self._topic_args(topic, topic_type)
        if msg_id is None:
            msg_id = self.next_msg_id() if qos in (1, 2) else 0
        self.send_raw(encode_publish(tid, payload, qos=qos, msg_id=msg_id, topic_id_type=ttype,
                                     retain=retain, dup=dup))
        if not wait:
            return msg_id
        if qos in (1, 2):
            return self.wait_ack(msg_id, qos, timeout)
        return None

    def wait_ack(self, msg_id, qos=1, timeout=None):
        """Finish the publish flow for msg_id (see publish)."""
        if qos == 1:
            return self._take_types((PUBACK,), timeout, msg_id=msg_id).rc
        m = self._take_types((PUBREC, PUBACK), timeout, msg_id=msg_id)
        if m.type == PUBACK:
            return m.rc
        self.send_raw(encode_pubrel(msg_id))
        self._take_types((PUBCOMP,), timeout, msg_id=msg_id)
        return RC_ACCEPTED

    def subscribe(self, topic, qos=0, topic_type=None, timeout=None):
        """SUBSCRIBE to a topic name or filter (str), a predefined id (int),
        or a short name (topic_type="short").  Returns (granted qos, topic id,
        return code)."""
        if isinstance(topic_type, str):
            topic_type = _TID_BY_NAME[topic_type]
        if topic_type is None:
            topic_type = TID_PREDEFINED if isinstance(topic, int) else TID_NORMAL
        mid = self.next_msg_id()
        self.send_raw(encode_subscribe(mid, topic, qos=qos, topic_id_type=topic_type))
        m = self._take_types((SUBACK,), timeout, msg_id=mid)
        granted = Flags.parse(m.flags).qos
        if (m.rc == RC_ACCEPTED and topic_type == TID_NORMAL and m.topic_id not in (0, 0xFFFF)):
            with self._cv:
                self.topics[m.topic_id] = topic if isinstance(topic, str) else _b(topic).decode()
        return granted, m.topic_id, m.rc

    def unsubscribe(self, topic, topic_type=None, timeout=None):
        """UNSUBSCRIBE; returns True once UNSUBACK arrived."""
        if isinstance(topic_type, str):
            topic_type = _TID_BY_NAME[topic_type]
        if topic_type is None:
            topic_type = TID_PREDEFINED if isinstance(topic, int) else TID_NORMAL
        mid = self.next_msg_id()
        self.send_raw(encode_unsubscribe(mid, topic, topic_id_type=topic_type))
        self._take_types((UNSUBACK,), timeout, msg_id=mid)
        return True

    def ping(self, timeout=None):
        """PINGREQ without ClientId; returns True on PINGRESP."""
        self.send_raw(encode_pingreq())
        self._take_types((PINGRESP,), timeout)
        return True

    def disconnect(self, duration=None, timeout=None):
        """DISCONNECT (with a sleep duration when given); returns the
        gateway's DISCONNECT Message, or None if none came in time."""
        self.send_raw(encode_disconnect(duration))
        try:
            return self._take_types((DISCONNECT,), timeout)
        except Timeout:
            return None

    def sleep(self, duration, timeout=None):
        """Go to sleep for duration seconds (DISCONNECT with Duration)."""
        return self.disconnect(duration, timeout)

    def wake_and_drain(self, timeout=None):
        """Awake: PINGREQ with ClientId, collect the buffered PUBLISHes until
        PINGRESP, and return them (list of Received).  Raises Timeout when no
        PINGRESP comes."""
        with self._cv:
            start = len(self.publishes)
        self.send_raw(encode_pingreq(self.client_id))
        self._take_types((PINGRESP,), timeout)
        with self._cv:
            return self.publishes[start:]

    def recv_publishes(self, n, timeout=None, since_index=None):
        """Wait until n messages were delivered (counting from since_index,
        default: all so far) and return them as (topic, payload, qos).
        Raises Timeout with what arrived otherwise."""
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        start = since_index or 0
        with self._cv:
            while len(self.publishes) - start < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [(r.topic, r.payload, r.qos) for r in self.publishes[start:]]
                    raise Timeout("expected %d publishes, got %d: %r" % (n, len(got), got))
                self._cv.wait(left)
            return [(r.topic, r.payload, r.qos) for r in self.publishes[start:start + n]]

    def willtopicupd(self, topic, qos=0, retain=False, timeout=None):
        """WILLTOPICUPD (topic None = delete the Will); returns the
        WILLTOPICRESP return code."""
        self.send_raw(encode_willtopicupd(topic, qos=qos, retain=retain))
        return self._take_types((WILLTOPICRESP,), timeout).rc

    def willmsgupd(self, msg, timeout=None):
        """WILLMSGUPD; returns the WILLMSGRESP return code."""
        self.send_raw(encode_willmsgupd(msg))
        return self._take_types((WILLMSGRESP,), timeout).rc

    def searchgw(self, radius=0, timeout=None):
        """SEARCHGW (sent unicast to the gateway address; tests never
        broadcast); returns the GWINFO Message."""
        self.send_raw(encode_searchgw(radius))
        return self._take_types((GWINFO,), timeout)


class RegisterRejected(RuntimeError):
    def __init__(self, rc):
        super().__init__("REGISTER rejected with return code 0x%02X" % rc)
        self.rc = rc


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------
def _parse_gw(s):
    host, _, port = s.rpartition(":")
    return (host or "127.0.0.1", int(port))


def main(argv=None):
    p = argparse.ArgumentParser(
        description="MQTT-SN v1.2 test client (leaf) for fleetgw. The socket is bound to "
                    "127.0.0.1, so the gateway must be on loopback.")
    p.add_argument("--gw", default="127.0.0.1:1884", type=_parse_gw,
                   help="gateway address host:port (default 127.0.0.1:1884)")
    p.add_argument("--client-id", default="leaf-cli")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--timeout", type=float, default=5.0)
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("searchgw", help="send SEARCHGW and print the GWINFO")
    sub.add_parser("ping", help="connect, PINGREQ, print PINGRESP")

    pp = sub.add_parser("pub", help="connect, (register,) publish, disconnect")
    pp.add_argument("--topic", required=True,
                    help="topic name (registered), 2-char short name with --short, "
                         "or a predefined id with --predefined")
    pp.add_argument("--qos", type=int, default=0, choices=(-1, 0, 1, 2))
    pp.add_argument("--retain", action="store_true")
    pp.add_argument("--short", action="store_true")
    pp.add_argument("--predefined", action="store_true")
    pp.add_argument("-m", "--message", default="hello")

    sp = sub.add_parser("sub", help="connect, subscribe, print publishes")
    sp.add_argument("--topic", required=True)
    sp.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--wait", type=float, default=30.0)

    slp = sub.add_parser("sleep", help="connect, sleep, then wake after --after s and drain")
    slp.add_argument("--duration", type=int, default=60)
    slp.add_argument("--after", type=float, default=5.0)

    rp = sub.add_parser("raw", help="send hex bytes and print what comes back")
    rp.add_argument("hex")
    rp.add_argument("--wait", type=float, default=1.0)

    a = p.parse_args(argv)
    with Leaf(a.gw, a.client_id, default_timeout=a.timeout) as leaf:
        if a.cmd == "searchgw":
            print(leaf.searchgw())
            return 0
        if a.cmd == "raw":
            leaf.send_raw(bytes.fromhex(a.hex))
            time.sleep(a.wait)
            for e in leaf.inbox:
                print("%.3f %s %s" % (e.t, e.raw.hex(), e.msg))
            return 0
        if a.cmd == "pub" and a.qos == -1:
            tt = "short" if a.short else "predefined"
            topic = a.topic if a.short else int(a.topic)
            leaf.publish(topic, a.message.encode(), qos=-1, topic_type=tt)
            return 0
        rc = leaf.connect(keepalive=a.keepalive)
        print("CONNACK rc=0x%02X" % rc)
        if rc != RC_ACCEPTED:
            return 1
        if a.cmd == "ping":
            print("PINGRESP" if leaf.ping() else "")
        elif a.cmd == "pub":
            if a.short:
                topic, tt = a.topic, "short"
            elif a.predefined:
                topic, tt = int(a.topic), "predefined"
            else:
                topic, tt = leaf.register(a.topic), "normal"
            rc = leaf.publish(topic, a.message.encode(), qos=a.qos, topic_type=tt,
                              retain=a.retain)
            print("published%s" % ("" if rc is None else " rc=0x%02X" % rc))
        elif a.cmd == "sub":
            print("SUBACK qos=%d topic_id=%d rc=0x%02X" % leaf.subscribe(a.topic, a.qos))
            for topic, payload, qos in leaf.recv_publishes(a.count, timeout=a.wait):
                print("%s qos=%d %r" % (topic, qos, payload))
        elif a.cmd == "sleep":
            print("sleep ack: %s" % leaf.sleep(a.duration))
            time.sleep(a.after)
            for r in leaf.wake_and_drain():
                print("%s qos=%d %r" % (r.topic, r.qos, r.payload))
            return 0
        leaf.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
