/*
 * mqttsn_encode.c - MQTT-SN v1.2 encoder (spec §5).
 *
 * The encoder refuses (PROTO_INVALID_ARG) every message that mqttsn_decode
 * would call malformed, so whatever we send, our own decoder and any strict
 * peer accept; and it produces the one canonical form of each message:
 * 1-octet Length for totals up to 255, the 3-octet form above.  Together
 * these make decode(encode(m)) == m and encode(decode(b)) == b for every
 * canonical datagram b, which the fuzz target checks.
 *
 * Sizing happens before writing: mqttsn_encode computes the exact size,
 * checks it against cap and only then writes, so a too-small buffer is never
 * left half-written.
 */
#include "mqttsn.h"
#include "wire.h"

/* The octet that announces the 3-octet Length form (§5.2.1). */
#define LONG_LENGTH_MARK 0x01
#define MAX_SHORT_TOTAL 255
#define MAX_TOTAL 65535

uint8_t mqttsn_flags_encode(const struct mqttsn_flags *f)
{
  unsigned qos = f->qos == MQTTSN_QOS_M1 ? 0x03u : (unsigned)f->qos & 0x03u;
  unsigned b = 0;

  if (f->dup)
    b |= 0x80;
  b |= qos << 5;
  if (f->retain)
    b |= 0x10;
  if (f->will)
    b |= 0x08;
  if (f->clean_session)
    b |= 0x04;
  b |= (unsigned)f->topic_type & 0x03u;
  return (uint8_t)b;
}

/* Flags the encoder will write.  QoS -1 only in PUBLISH (allow_m1), and
 * never the reserved TopicIdType 0b11; see mqttsn_decode.c for why. */
static int check_flags(const struct mqttsn_flags *f, bool allow_m1)
{
  if (f->qos != 0 && f->qos != 1 && f->qos != 2 && !(allow_m1 && f->qos == MQTTSN_QOS_M1))
    return PROTO_INVALID_ARG;
  if (f->topic_type != MQTTSN_TOPIC_NORMAL && f->topic_type != MQTTSN_TOPIC_PREDEFINED &&
      f->topic_type != MQTTSN_TOPIC_SHORT)
    return PROTO_INVALID_ARG;
  return PROTO_OK;
}

/* A string field: min is the fewest octets it may have.  Lengths are capped
 * at MAX_TOTAL one by one so that summing a handful of them cannot wrap. */
static int check_str(const struct mqttsn_str *s, size_t min)
{
  if (s->len > MAX_TOTAL)
    return PROTO_TOO_BIG;
  if (s->len < min || (s->len > 0 && !s->p))
    return PROTO_INVALID_ARG;
  return PROTO_OK;
}

static int check_rc(uint8_t rc)
{
  return rc <= MQTTSN_RC_NOT_SUPPORTED ? PROTO_OK : PROTO_INVALID_ARG;
}

/*
 * The inner message of ENCAPSULATED is copied verbatim, so it is checked the
 * way the decoder checks it: a well-framed MQTT-SN message whose Length
 * matches its size, and not itself encapsulated.
 */
static int check_inner(const struct mqttsn_str *inner)
{
  struct wire_reader r;
  uint8_t first, type;
  uint16_t long_len;
  size_t declared;
  int rc;

  if ((rc = check_str(inner, 2)) < 0)
    return rc;
  wire_reader_init(&r, inner->p, inner->len);
  if (wire_read_u8(&r, &first) < 0)
    return PROTO_INVALID_ARG;
  if (first == LONG_LENGTH_MARK) {
    if (wire_read_u16(&r, &long_len) < 0)
      return PROTO_INVALID_ARG;
    declared = long_len;
  } else {
    declared = first;
  }
  if (wire_read_u8(&r, &type) < 0 || declared != inner->len || type == MQTTSN_ENCAPSULATED)
    return PROTO_INVALID_ARG;
  return PROTO_OK;
}

/*
 * Validate msg and compute the size of what follows MsgType: *counted is the
 * part the Length field covers, *trailer the part it does not (only the
 * inner message of ENCAPSULATED, §5.5).
 */
static int body_size(const struct mqttsn_msg *msg, size_t *counted, size_t *trailer)
{
  const struct mqttsn_willtopic *wt;
  const struct mqttsn_subscribe *sub;
  int rc;

  *trailer = 0;
  switch (msg->type) {
  case MQTTSN_ADVERTISE:
    *counted = 3;
    return PROTO_OK;
  case MQTTSN_SEARCHGW:
    *counted = 1;
    return PROTO_OK;
  case MQTTSN_GWINFO:
    if ((rc = check_str(&msg->u.gwinfo.gw_add, 0)) < 0)
      return rc;
    *counted = 1 + msg->u.gwinfo.gw_add.len;
    return PROTO_OK;
  case MQTTSN_CONNECT:
    if ((rc = check_flags(&msg->u.connect.flags, false)) < 0 ||
        (rc = check_str(&msg->u.connect.client_id, 1)) < 0)
      return rc;
    if (msg->u.connect.protocol_id != MQTTSN_PROTOCOL_ID)
      return PROTO_INVALID_ARG;
    *counted = 4 + msg->u.connect.client_id.len;
    return PROTO_OK;
  case MQTTSN_CONNACK:
    *counted = 1;
    return check_rc(msg->u.connack.rc);
  case MQTTSN_WILLTOPICREQ:
  case MQTTSN_WILLMSGREQ:
  case MQTTSN_PINGRESP:
    *counted = 0;
    return PROTO_OK;
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLTOPICUPD:
    wt = &msg->u.willtopic;
    if (wt->empty) {
      *counted = 0;
      return PROTO_OK;
    }
    if ((rc = check_flags(&wt->flags, false)) < 0 || (rc = check_str(&wt->topic, 1)) < 0)
      return rc;
    *counted = 1 + wt->topic.len;
    return PROTO_OK;
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLMSGUPD:
    if ((rc = check_str(&msg->u.willmsg.msg, 0)) < 0)
      return rc;
    *counted = msg->u.willmsg.msg.len;
    return PROTO_OK;
  case MQTTSN_REGISTER:
    if ((rc = check_str(&msg->u.reg.topic_name, 1)) < 0)
      return rc;
    *counted = 4 + msg->u.reg.topic_name.len;
    return PROTO_OK;
  case MQTTSN_REGACK:
    *counted = 5;
    return check_rc(msg->u.regack.rc);
  case MQTTSN_PUBLISH:
    if ((rc = check_flags(&msg->u.publish.flags, true)) < 0 ||
        (rc = check_str(&msg->u.publish.data, 0)) < 0)
      return rc;
    /* §6.8: QoS -1 needs a pre-defined id or a short name. */
    if (msg->u.publish.flags.qos == MQTTSN_QOS_M1 &&
        msg->u.publish.flags.topic_type == MQTTSN_TOPIC_NORMAL)
      return PROTO_INVALID_ARG;
    *counted = 5 + msg->u.publish.data.len;
    return PROTO_OK;
  case MQTTSN_PUBACK:
    *counted = 5;
    return check_rc(msg->u.puback.rc);
  case MQTTSN_PUBCOMP:
  case MQTTSN_PUBREC:
  case MQTTSN_PUBREL:
  case MQTTSN_UNSUBACK:
    *counted = 2;
    return PROTO_OK;
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    sub = &msg->u.subscribe;
    if ((rc = check_flags(&sub->flags, false)) < 0)
      return rc;
    if (sub->flags.topic_type == MQTTSN_TOPIC_NORMAL) {
      if ((rc = check_str(&sub->topic_name, 1)) < 0)
        return rc;
      *counted = 3 + sub->topic_name.len;
    } else {
      *counted = 5;
    }
    return PROTO_OK;
  case MQTTSN_SUBACK:
    *counted = 6;
    if ((rc = check_flags(&msg->u.suback.flags, false)) < 0)
      return rc;
    return check_rc(msg->u.suback.rc);
  case MQTTSN_PINGREQ:
    if ((rc = check_str(&msg->u.pingreq.client_id, 0)) < 0)
      return rc;
    *counted = msg->u.pingreq.client_id.len;
    return PROTO_OK;
  case MQTTSN_DISCONNECT:
    *counted = msg->u.disconnect.has_duration ? 2 : 0;
    return PROTO_OK;
  case MQTTSN_WILLTOPICRESP:
  case MQTTSN_WILLMSGRESP:
    *counted = 1;
    return check_rc(msg->u.resp.rc);
  case MQTTSN_ENCAPSULATED:
    /* Same rules as the decoder: a node id that identifies something, and
     * a well-framed inner message. */
    if ((rc = check_str(&msg->u.encap.node_id, 1)) < 0 ||
        (rc = check_inner(&msg->u.encap.inner)) < 0)
      return rc;
    *counted = 1 + msg->u.encap.node_id.len;
    *trailer = msg->u.encap.inner.len;
    return PROTO_OK;
  }
  return PROTO_INVALID_ARG;
}

/*
 * The Length field value for a message with `counted` octets after MsgType:
 * 1 + 1 + counted when that is at most 255, else 3 + 1 + counted.  So a
 * counted part of 253 gives 255 in one octet, and 254 gives 258 in three
 * (totals 256 and 257 are never produced: they would need the 3-octet form,
 * which makes them 258 and 259).  This is the edge Paho gets wrong (C.1).
 */
static size_t length_value(size_t counted, bool *long_form)
{
  *long_form = counted + 2 > MAX_SHORT_TOTAL;
  return counted + (*long_form ? 4 : 2);
}

static int size_of(const struct mqttsn_msg *msg, size_t *declared, bool *long_form)
{
  size_t counted, trailer, total;
  int rc;

  if (!msg)
    return PROTO_INVALID_ARG;
  if ((rc = body_size(msg, &counted, &trailer)) < 0)
    return rc;
  *declared = length_value(counted, long_form);
  total = *declared + trailer;
  /* Also bounds the encapsulated total: it must fit one UDP datagram and
   * the int return value. */
  if (*declared > MAX_TOTAL || total > MAX_TOTAL)
    return PROTO_TOO_BIG;
  return (int)total;
}

int mqttsn_encoded_size(const struct mqttsn_msg *msg)
{
  size_t declared;
  bool long_form;

  return size_of(msg, &declared, &long_form);
}

static int write_str(struct wire_writer *w, const struct mqttsn_str *s)
{
  return wire_write_bytes(w, s->p, s->len);
}

/* Writes what follows MsgType; body_size has validated msg already. */
static int write_body(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_subscribe *sub;
  int rc = PROTO_OK;

  switch (msg->type) {
  case MQTTSN_ADVERTISE:
    if ((rc = wire_write_u8(w, msg->u.advertise.gw_id)) < 0)
      return rc;
    return wire_write_u16(w, msg->u.advertise.duration);
  case MQTTSN_SEARCHGW:
    return wire_write_u8(w, msg->u.searchgw.radius);
  case MQTTSN_GWINFO:
    if ((rc = wire_write_u8(w, msg->u.gwinfo.gw_id)) < 0)
      return rc;
    return write_str(w, &msg->u.gwinfo.gw_add);
  case MQTTSN_CONNECT:
    if ((rc = wire_write_u8(w, mqttsn_flags_encode(&msg->u.connect.flags))) < 0 ||
        (rc = wire_write_u8(w, msg->u.connect.protocol_id)) < 0 ||
        (rc = wire_write_u16(w, msg->u.connect.duration)) < 0)
      return rc;
    return write_str(w, &msg->u.connect.client_id);
  case MQTTSN_CONNACK:
    return wire_write_u8(w, msg->u.connack.rc);
  case MQTTSN_WILLTOPICREQ:
  case MQTTSN_WILLMSGREQ:
  case MQTTSN_PINGRESP:
    return PROTO_OK;
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLTOPICUPD:
    if (msg->u.willtopic.empty)
      return PROTO_OK;
    if ((rc = wire_write_u8(w, mqttsn_flags_encode(&msg->u.willtopic.flags))) < 0)
      return rc;
    return write_str(w, &msg->u.willtopic.topic);
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLMSGUPD:
    return write_str(w, &msg->u.willmsg.msg);
  case MQTTSN_REGISTER:
    if ((rc = wire_write_u16(w, msg->u.reg.topic_id)) < 0 ||
        (rc = wire_write_u16(w, msg->u.reg.msg_id)) < 0)
      return rc;
    return write_str(w, &msg->u.reg.topic_name);
  case MQTTSN_REGACK:
    if ((rc = wire_write_u16(w, msg->u.regack.topic_id)) < 0 ||
        (rc = wire_write_u16(w, msg->u.regack.msg_id)) < 0)
      return rc;
    return wire_write_u8(w, msg->u.regack.rc);
  case MQTTSN_PUBLISH:
    if ((rc = wire_write_u8(w, mqttsn_flags_encode(&msg->u.publish.flags))) < 0 ||
        (rc = wire_write_u16(w, msg->u.publish.topic_id)) < 0 ||
        (rc = wire_write_u16(w, msg->u.publish.msg_id)) < 0)
      return rc;
    return write_str(w, &msg->u.publish.data);
  case MQTTSN_PUBACK:
    if ((rc = wire_write_u16(w, msg->u.puback.topic_id)) < 0 ||
        (rc = wire_write_u16(w, msg->u.puback.msg_id)) < 0)
      return rc;
    return wire_write_u8(w, msg->u.puback.rc);
  case MQTTSN_PUBCOMP:
  case MQTTSN_PUBREC:
  case MQTTSN_PUBREL:
  case MQTTSN_UNSUBACK:
    return wire_write_u16(w, msg->u.msgid.msg_id);
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    sub = &msg->u.subscribe;
    if ((rc = wire_write_u8(w, mqttsn_flags_encode(&sub->flags))) < 0 ||
        (rc = wire_write_u16(w, sub->msg_id)) < 0)
      return rc;
    if (sub->flags.topic_type == MQTTSN_TOPIC_NORMAL)
      return write_str(w, &sub->topic_name);
    return wire_write_u16(w, sub->topic_id);
  case MQTTSN_SUBACK:
    if ((rc = wire_write_u8(w, mqttsn_flags_encode(&msg->u.suback.flags))) < 0 ||
        (rc = wire_write_u16(w, msg->u.suback.topic_id)) < 0 ||
        (rc = wire_write_u16(w, msg->u.suback.msg_id)) < 0)
      return rc;
    return wire_write_u8(w, msg->u.suback.rc);
  case MQTTSN_PINGREQ:
    return write_str(w, &msg->u.pingreq.client_id);
  case MQTTSN_DISCONNECT:
    if (!msg->u.disconnect.has_duration)
      return PROTO_OK;
    return wire_write_u16(w, msg->u.disconnect.duration);
  case MQTTSN_WILLTOPICRESP:
  case MQTTSN_WILLMSGRESP:
    return wire_write_u8(w, msg->u.resp.rc);
  case MQTTSN_ENCAPSULATED:
    if ((rc = wire_write_u8(w, msg->u.encap.ctrl)) < 0 ||
        (rc = write_str(w, &msg->u.encap.node_id)) < 0)
      return rc;
    return write_str(w, &msg->u.encap.inner);
  }
  return PROTO_INVALID_ARG;
}

int mqttsn_encode(const struct mqttsn_msg *msg, uint8_t *buf, size_t cap)
{
  struct wire_writer w;
  size_t declared;
  bool long_form;
  int total, rc;

  if ((total = size_of(msg, &declared, &long_form)) < 0)
    return total;
  if (!buf || cap < (size_t)total)
    return PROTO_BUF_TOO_SMALL;

  wire_writer_init(&w, buf, cap);
  if (long_form) {
    if ((rc = wire_write_u8(&w, LONG_LENGTH_MARK)) < 0 ||
        (rc = wire_write_u16(&w, (uint16_t)declared)) < 0)
      return rc;
  } else if ((rc = wire_write_u8(&w, (uint8_t)declared)) < 0) {
    return rc;
  }
  if ((rc = wire_write_u8(&w, (uint8_t)msg->type)) < 0 || (rc = write_body(&w, msg)) < 0)
    return rc;
  /* body_size and write_body describe the same layout; if they ever drift
   * apart, fail loudly rather than send a lying Length field. */
  if (wire_written(&w) != (size_t)total)
    return PROTO_INVALID_ARG;
  return total;
}
