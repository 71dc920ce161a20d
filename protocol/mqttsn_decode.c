/*
 * mqttsn_decode.c - MQTT-SN v1.2 datagram decoder (spec §5).
 *
 * One datagram is one message.  The header is parsed first (Length in its
 * 1- or 3-octet form, then MsgType), the declared Length is checked against
 * the datagram size, and then one small function per message type reads the
 * variable part through the bounds-checked cursor of wire.h and insists that
 * nothing is left over.  Strings are views into the caller's buffer; nothing
 * is allocated.
 *
 * Strictness, and why:
 * - Fixed-size messages must have exactly their size; a trailing octet is as
 *   malformed as a missing one, because a datagram carries one message and
 *   extra octets mean the sender and we disagree about the layout.
 * - TopicIdType 0b11 is reserved (§5.3.4 Table 4) and rejected in every
 *   flags byte, even in messages that do not use those bits, since a sender
 *   that sets reserved bits is not speaking v1.2 as we understand it.
 * - QoS -1 (0b11) exists only "within PUBLISH messages sent by a client"
 *   (§5.3.4), so it is rejected in every other flags byte.
 * - ReturnCode values 0x04-0xFF are reserved (§5.3.10 Table 5) and rejected.
 * - The 3-octet Length form is accepted for any total, including totals
 *   below 256 that would fit one octet: receivers must accept both forms.
 */
#include <string.h>

#include "mqttsn.h"
#include "wire.h"

/* The octet that announces the 3-octet Length form (§5.2.1). */
#define LONG_LENGTH_MARK 0x01

static const char *const type_names[256] = {
  [MQTTSN_ADVERTISE] = "ADVERTISE",
  [MQTTSN_SEARCHGW] = "SEARCHGW",
  [MQTTSN_GWINFO] = "GWINFO",
  [MQTTSN_CONNECT] = "CONNECT",
  [MQTTSN_CONNACK] = "CONNACK",
  [MQTTSN_WILLTOPICREQ] = "WILLTOPICREQ",
  [MQTTSN_WILLTOPIC] = "WILLTOPIC",
  [MQTTSN_WILLMSGREQ] = "WILLMSGREQ",
  [MQTTSN_WILLMSG] = "WILLMSG",
  [MQTTSN_REGISTER] = "REGISTER",
  [MQTTSN_REGACK] = "REGACK",
  [MQTTSN_PUBLISH] = "PUBLISH",
  [MQTTSN_PUBACK] = "PUBACK",
  [MQTTSN_PUBCOMP] = "PUBCOMP",
  [MQTTSN_PUBREC] = "PUBREC",
  [MQTTSN_PUBREL] = "PUBREL",
  [MQTTSN_SUBSCRIBE] = "SUBSCRIBE",
  [MQTTSN_SUBACK] = "SUBACK",
  [MQTTSN_UNSUBSCRIBE] = "UNSUBSCRIBE",
  [MQTTSN_UNSUBACK] = "UNSUBACK",
  [MQTTSN_PINGREQ] = "PINGREQ",
  [MQTTSN_PINGRESP] = "PINGRESP",
  [MQTTSN_DISCONNECT] = "DISCONNECT",
  [MQTTSN_WILLTOPICUPD] = "WILLTOPICUPD",
  [MQTTSN_WILLTOPICRESP] = "WILLTOPICRESP",
  [MQTTSN_WILLMSGUPD] = "WILLMSGUPD",
  [MQTTSN_WILLMSGRESP] = "WILLMSGRESP",
  [MQTTSN_ENCAPSULATED] = "ENCAPSULATED",
};

const char *mqttsn_type_name(int type)
{
  if (type < 0 || type > 255 || !type_names[type])
    return "UNKNOWN";
  return type_names[type];
}

int mqttsn_flags_decode(uint8_t b, struct mqttsn_flags *f)
{
  unsigned qos = (b >> 5) & 0x03;

  f->dup = (b & 0x80) != 0;
  f->qos = qos == 0x03 ? MQTTSN_QOS_M1 : (int)qos;
  f->retain = (b & 0x10) != 0;
  f->will = (b & 0x08) != 0;
  f->clean_session = (b & 0x04) != 0;
  switch (b & 0x03) {
  case 0x00:
    f->topic_type = MQTTSN_TOPIC_NORMAL;
    break;
  case 0x01:
    f->topic_type = MQTTSN_TOPIC_PREDEFINED;
    break;
  case 0x02:
    f->topic_type = MQTTSN_TOPIC_SHORT;
    break;
  default:
    /* 0b11 is reserved; leave a harmless value behind for careless callers. */
    f->topic_type = MQTTSN_TOPIC_NORMAL;
    return PROTO_MALFORMED;
  }
  return PROTO_OK;
}

/* The flags byte of any message except PUBLISH: QoS -1 is not allowed. */
static int read_flags(struct wire_reader *r, struct mqttsn_flags *f)
{
  uint8_t b;
  int rc;

  if ((rc = wire_read_u8(r, &b)) < 0)
    return rc;
  if ((rc = mqttsn_flags_decode(b, f)) < 0)
    return rc;
  if (f->qos == MQTTSN_QOS_M1)
    return PROTO_MALFORMED;
  return PROTO_OK;
}

static int read_rc(struct wire_reader *r, uint8_t *out)
{
  int rc;

  if ((rc = wire_read_u8(r, out)) < 0)
    return rc;
  return *out <= MQTTSN_RC_NOT_SUPPORTED ? PROTO_OK : PROTO_MALFORMED;
}

/* A view of everything left; min is the fewest octets the field may have. */
static int read_rest(struct wire_reader *r, struct mqttsn_str *s, size_t min)
{
  wire_read_rest(r, &s->p, &s->len);
  return s->len >= min ? PROTO_OK : PROTO_MALFORMED;
}

/* Fixed-size messages end exactly where their last field ends. */
static int expect_end(const struct wire_reader *r)
{
  return wire_remaining(r) == 0 ? PROTO_OK : PROTO_MALFORMED;
}

/* §5.4.1 */
static int decode_advertise(struct wire_reader *r, struct mqttsn_advertise *m)
{
  int rc;

  if ((rc = wire_read_u8(r, &m->gw_id)) < 0 || (rc = wire_read_u16(r, &m->duration)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.2 */
static int decode_searchgw(struct wire_reader *r, struct mqttsn_searchgw *m)
{
  int rc;

  if ((rc = wire_read_u8(r, &m->radius)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.3: GwAdd is present only when a client answers for a gateway. */
static int decode_gwinfo(struct wire_reader *r, struct mqttsn_gwinfo *m)
{
  int rc;

  if ((rc = wire_read_u8(r, &m->gw_id)) < 0)
    return rc;
  return read_rest(r, &m->gw_add, 0);
}

/* §5.4.4 */
static int decode_connect(struct wire_reader *r, struct mqttsn_connect *m)
{
  int rc;

  if ((rc = read_flags(r, &m->flags)) < 0 || (rc = wire_read_u8(r, &m->protocol_id)) < 0 ||
      (rc = wire_read_u16(r, &m->duration)) < 0)
    return rc;
  if (m->protocol_id != MQTTSN_PROTOCOL_ID)
    return PROTO_MALFORMED;
  /* The 1..23 limit of §5.3.1 is policy, left to the caller (see mqttsn.h);
   * an empty ClientId is a malformed message. */
  return read_rest(r, &m->client_id, 1);
}

/* §5.4.5 CONNACK, §5.4.24/§5.4.25 WILLTOPICRESP/WILLMSGRESP */
static int decode_rc_only(struct wire_reader *r, uint8_t *out)
{
  int rc;

  if ((rc = read_rc(r, out)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.7 WILLTOPIC, §5.4.22 WILLTOPICUPD: either nothing at all (delete the
 * Will) or flags followed by a non-empty topic; flags alone are malformed. */
static int decode_willtopic(struct wire_reader *r, struct mqttsn_willtopic *m)
{
  int rc;

  if (wire_remaining(r) == 0) {
    m->empty = true;
    return PROTO_OK;
  }
  if ((rc = read_flags(r, &m->flags)) < 0)
    return rc;
  return read_rest(r, &m->topic, 1);
}

/* §5.4.9 WILLMSG, §5.4.23 WILLMSGUPD: an empty Will message is allowed, as
 * it is in MQTT 3.1.1. */
static int decode_willmsg(struct wire_reader *r, struct mqttsn_willmsg *m)
{
  return read_rest(r, &m->msg, 0);
}

/* §5.4.10 */
static int decode_register(struct wire_reader *r, struct mqttsn_register *m)
{
  int rc;

  if ((rc = wire_read_u16(r, &m->topic_id)) < 0 || (rc = wire_read_u16(r, &m->msg_id)) < 0)
    return rc;
  return read_rest(r, &m->topic_name, 1);
}

/* §5.4.11 REGACK, §5.4.13 PUBACK: same layout. */
static int decode_id_id_rc(struct wire_reader *r, uint16_t *topic_id, uint16_t *msg_id,
                           uint8_t *ret)
{
  int rc;

  if ((rc = wire_read_u16(r, topic_id)) < 0 || (rc = wire_read_u16(r, msg_id)) < 0 ||
      (rc = read_rc(r, ret)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.12 */
static int decode_publish(struct wire_reader *r, struct mqttsn_publish *m)
{
  uint8_t b;
  int rc;

  if ((rc = wire_read_u8(r, &b)) < 0 || (rc = mqttsn_flags_decode(b, &m->flags)) < 0 ||
      (rc = wire_read_u16(r, &m->topic_id)) < 0 || (rc = wire_read_u16(r, &m->msg_id)) < 0)
    return rc;
  read_rest(r, &m->data, 0);
  /* §6.8: a QoS -1 PUBLISH names its topic by a pre-defined id or a short
   * name, since the sender never connected and so cannot have registered a
   * normal id.  Paho also accepts a non-standard extension (TopicIdType
   * normal, TopicId = length of a long topic name that precedes the data);
   * we deliberately do not: it is decoded here so the caller can log it, but
   * reported as malformed. */
  if (m->flags.qos == MQTTSN_QOS_M1 && m->flags.topic_type == MQTTSN_TOPIC_NORMAL)
    return PROTO_MALFORMED;
  return PROTO_OK;
}

/* §5.4.14 PUBREC/PUBREL/PUBCOMP, §5.4.18 UNSUBACK */
static int decode_msgid_only(struct wire_reader *r, struct mqttsn_msgid_only *m)
{
  int rc;

  if ((rc = wire_read_u16(r, &m->msg_id)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.15 SUBSCRIBE, §5.4.17 UNSUBSCRIBE: TopicIdType normal means a topic
 * name (or filter) follows; pre-defined and short mean exactly two octets of
 * TopicId follow. */
static int decode_subscribe(struct wire_reader *r, struct mqttsn_subscribe *m)
{
  int rc;

  if ((rc = read_flags(r, &m->flags)) < 0 || (rc = wire_read_u16(r, &m->msg_id)) < 0)
    return rc;
  if (m->flags.topic_type == MQTTSN_TOPIC_NORMAL)
    return read_rest(r, &m->topic_name, 1);
  if ((rc = wire_read_u16(r, &m->topic_id)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.16 */
static int decode_suback(struct wire_reader *r, struct mqttsn_suback *m)
{
  int rc;

  if ((rc = read_flags(r, &m->flags)) < 0 || (rc = wire_read_u16(r, &m->topic_id)) < 0 ||
      (rc = wire_read_u16(r, &m->msg_id)) < 0 || (rc = read_rc(r, &m->rc)) < 0)
    return rc;
  return expect_end(r);
}

/* §5.4.21: Duration present only when the client goes to sleep. */
static int decode_disconnect(struct wire_reader *r, struct mqttsn_disconnect *m)
{
  int rc;

  if (wire_remaining(r) == 0)
    return PROTO_OK;
  if ((rc = wire_read_u16(r, &m->duration)) < 0)
    return rc;
  m->has_duration = true;
  return expect_end(r);
}

/*
 * The header of §5.2: the Length field in either form, then MsgType.  Sets
 * *declared to the Length value.  The Length counts itself and MsgType, so
 * it can never be smaller than the header: a 1-octet 0x00, or a 3-octet
 * form declaring less than 4, is malformed.
 */
static int read_header(struct wire_reader *r, size_t *declared, uint8_t *type)
{
  uint8_t first;
  uint16_t long_len;
  int rc;

  if ((rc = wire_read_u8(r, &first)) < 0)
    return rc;
  if (first == LONG_LENGTH_MARK) {
    if ((rc = wire_read_u16(r, &long_len)) < 0)
      return rc;
    *declared = long_len;
  } else {
    *declared = first;
  }
  if (*declared < wire_pos(r) + 1)
    return PROTO_MALFORMED;
  return wire_read_u8(r, type);
}

/*
 * §5.5: Length covers Length, MsgType, Ctrl and the Wireless Node Id only;
 * the encapsulated message follows and runs to the end of the datagram.  r
 * is positioned after MsgType; counted is the declared Length.
 *
 * The inner message is left undecoded (mqttsn.h), but its framing is
 * checked: its own Length must match what follows, so a truncated or padded
 * datagram is caught here as it is for any other message.  Nesting is
 * refused: §5.5 describes one forwarder between a client and the gateway,
 * and allowing it would let a caller that decodes recursively be driven
 * thousands of levels deep by one datagram.
 */
static int decode_encapsulated(struct wire_reader *r, size_t counted,
                               struct mqttsn_encapsulated *m)
{
  struct wire_reader inner;
  size_t node_len, inner_declared;
  uint8_t inner_type;
  int rc;

  /* The declared prefix must hold Ctrl and at least one octet of node id
   * (an empty id could not identify a node), and cannot run past the
   * datagram. */
  if (counted < wire_pos(r) + 2 || counted - wire_pos(r) > wire_remaining(r))
    return PROTO_MALFORMED;
  node_len = counted - wire_pos(r) - 1;
  if ((rc = wire_read_u8(r, &m->ctrl)) < 0 ||
      (rc = wire_read_bytes(r, node_len, &m->node_id.p)) < 0)
    return rc;
  m->node_id.len = node_len;
  wire_read_rest(r, &m->inner.p, &m->inner.len);

  wire_reader_init(&inner, m->inner.p, m->inner.len);
  if ((rc = read_header(&inner, &inner_declared, &inner_type)) < 0)
    return rc;
  if (inner_declared != m->inner.len || inner_type == MQTTSN_ENCAPSULATED)
    return PROTO_MALFORMED;
  return PROTO_OK;
}

int mqttsn_decode(const uint8_t *buf, size_t len, struct mqttsn_msg *msg)
{
  struct wire_reader r;
  size_t declared;
  uint8_t type;
  int rc;

  if (!msg || (!buf && len > 0))
    return PROTO_INVALID_ARG;
  memset(msg, 0, sizeof *msg);
  wire_reader_init(&r, buf, len);

  if ((rc = read_header(&r, &declared, &type)) < 0)
    return rc;
  msg->type = (enum mqttsn_type)type;
  if (type == MQTTSN_ENCAPSULATED)
    return decode_encapsulated(&r, declared, &msg->u.encap);
  if (declared != len)
    return PROTO_MALFORMED;

  switch (type) {
  case MQTTSN_ADVERTISE:
    return decode_advertise(&r, &msg->u.advertise);
  case MQTTSN_SEARCHGW:
    return decode_searchgw(&r, &msg->u.searchgw);
  case MQTTSN_GWINFO:
    return decode_gwinfo(&r, &msg->u.gwinfo);
  case MQTTSN_CONNECT:
    return decode_connect(&r, &msg->u.connect);
  case MQTTSN_CONNACK:
    return decode_rc_only(&r, &msg->u.connack.rc);
  case MQTTSN_WILLTOPICREQ:
  case MQTTSN_WILLMSGREQ:
  case MQTTSN_PINGRESP:
    return expect_end(&r);
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLTOPICUPD:
    return decode_willtopic(&r, &msg->u.willtopic);
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLMSGUPD:
    return decode_willmsg(&r, &msg->u.willmsg);
  case MQTTSN_REGISTER:
    return decode_register(&r, &msg->u.reg);
  case MQTTSN_REGACK:
    return decode_id_id_rc(&r, &msg->u.regack.topic_id, &msg->u.regack.msg_id,
                           &msg->u.regack.rc);
  case MQTTSN_PUBLISH:
    return decode_publish(&r, &msg->u.publish);
  case MQTTSN_PUBACK:
    return decode_id_id_rc(&r, &msg->u.puback.topic_id, &msg->u.puback.msg_id,
                           &msg->u.puback.rc);
  case MQTTSN_PUBCOMP:
  case MQTTSN_PUBREC:
  case MQTTSN_PUBREL:
  case MQTTSN_UNSUBACK:
    return decode_msgid_only(&r, &msg->u.msgid);
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    return decode_subscribe(&r, &msg->u.subscribe);
  case MQTTSN_SUBACK:
    return decode_suback(&r, &msg->u.suback);
  case MQTTSN_PINGREQ:
    return read_rest(&r, &msg->u.pingreq.client_id, 0);
  case MQTTSN_DISCONNECT:
    return decode_disconnect(&r, &msg->u.disconnect);
  case MQTTSN_WILLTOPICRESP:
  case MQTTSN_WILLMSGRESP:
    return decode_rc_only(&r, &msg->u.resp.rc);
  default:
    /* 0x03, 0x11, 0x19, 0x1E-0xFD and 0xFF are reserved (§5.2.2 Table 3). */
    return PROTO_UNSUPPORTED;
  }
}
