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
 * Each message type is described once, by a function that validates and
 * writes its fields through a wire_writer (the table `layouts` below).
 * Sizing runs that same function on a measuring writer, so the size and the
 * octets cannot disagree.  Sizing happens before writing: mqttsn_encode
 * computes the exact size, checks it against cap and only then writes, so a
 * too-small buffer is never left half-written.
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
 * One function per message type describes what follows MsgType, in order:
 * it first validates the fields the way mqttsn_decode would, then writes
 * them through w.  mqttsn_encode runs it twice, first on a measuring writer
 * (wire_writer_init_measure) to learn the size, then on the caller's buffer,
 * so the Length field and the octets written come from the same lines and
 * cannot disagree.  The checks run again in the second pass; they are cheap,
 * and keeping them beside the fields they guard is what makes a type's rules
 * readable in one place.
 */
typedef int (*layout_fn)(struct wire_writer *w, const struct mqttsn_msg *msg);

static int write_str(struct wire_writer *w, const struct mqttsn_str *s)
{
  return wire_write_bytes(w, s->p, s->len);
}

/* A message that is one free-form string after MsgType (may be empty). */
static int put_only_str(struct wire_writer *w, const struct mqttsn_str *s)
{
  int rc;

  if ((rc = check_str(s, 0)) < 0)
    return rc;
  return write_str(w, s);
}

static int put_flags(struct wire_writer *w, const struct mqttsn_flags *f)
{
  return wire_write_u8(w, mqttsn_flags_encode(f));
}

/* WILLTOPICREQ, WILLMSGREQ, PINGRESP: nothing follows MsgType. */
static int put_nothing(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return PROTO_OK;
}

static int put_advertise(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  int rc;

  if ((rc = wire_write_u8(w, msg->u.advertise.gw_id)) < 0)
    return rc;
  return wire_write_u16(w, msg->u.advertise.duration);
}

static int put_searchgw(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return wire_write_u8(w, msg->u.searchgw.radius);
}

static int put_gwinfo(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  int rc;

  if ((rc = check_str(&msg->u.gwinfo.gw_add, 0)) < 0 ||
      (rc = wire_write_u8(w, msg->u.gwinfo.gw_id)) < 0)
    return rc;
  return write_str(w, &msg->u.gwinfo.gw_add);
}

static int put_connect(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_connect *c = &msg->u.connect;
  int rc;

  if ((rc = check_flags(&c->flags, false)) < 0 || (rc = check_str(&c->client_id, 1)) < 0)
    return rc;
  if (c->protocol_id != MQTTSN_PROTOCOL_ID)
    return PROTO_INVALID_ARG;
  if ((rc = put_flags(w, &c->flags)) < 0 || (rc = wire_write_u8(w, c->protocol_id)) < 0 ||
      (rc = wire_write_u16(w, c->duration)) < 0)
    return rc;
  return write_str(w, &c->client_id);
}

/* CONNACK, WILLTOPICRESP and WILLMSGRESP: a ReturnCode alone. */
static int put_rc(struct wire_writer *w, uint8_t code)
{
  int rc;

  if ((rc = check_rc(code)) < 0)
    return rc;
  return wire_write_u8(w, code);
}

static int put_connack(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return put_rc(w, msg->u.connack.rc);
}

/* WILLTOPIC and WILLTOPICUPD; the empty form is MsgType alone. */
static int put_willtopic(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_willtopic *wt = &msg->u.willtopic;
  int rc;

  if (wt->empty)
    return PROTO_OK;
  if ((rc = check_flags(&wt->flags, false)) < 0 || (rc = check_str(&wt->topic, 1)) < 0 ||
      (rc = put_flags(w, &wt->flags)) < 0)
    return rc;
  return write_str(w, &wt->topic);
}

/* WILLMSG and WILLMSGUPD. */
static int put_willmsg(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return put_only_str(w, &msg->u.willmsg.msg);
}

static int put_register(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_register *r = &msg->u.reg;
  int rc;

  if ((rc = check_str(&r->topic_name, 1)) < 0 || (rc = wire_write_u16(w, r->topic_id)) < 0 ||
      (rc = wire_write_u16(w, r->msg_id)) < 0)
    return rc;
  return write_str(w, &r->topic_name);
}

/* REGACK and PUBACK share one layout: TopicId, MsgId, ReturnCode. */
static int put_id_id_rc(struct wire_writer *w, uint16_t topic_id, uint16_t msg_id, uint8_t code)
{
  int rc;

  if ((rc = check_rc(code)) < 0 || (rc = wire_write_u16(w, topic_id)) < 0 ||
      (rc = wire_write_u16(w, msg_id)) < 0)
    return rc;
  return wire_write_u8(w, code);
}

static int put_regack(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_regack *a = &msg->u.regack;

  return put_id_id_rc(w, a->topic_id, a->msg_id, a->rc);
}

static int put_publish(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_publish *p = &msg->u.publish;
  int rc;

  if ((rc = check_flags(&p->flags, true)) < 0 || (rc = check_str(&p->data, 0)) < 0)
    return rc;
  /* §6.8: QoS -1 needs a pre-defined id or a short name. */
  if (p->flags.qos == MQTTSN_QOS_M1 && p->flags.topic_type == MQTTSN_TOPIC_NORMAL)
    return PROTO_INVALID_ARG;
  if ((rc = put_flags(w, &p->flags)) < 0 || (rc = wire_write_u16(w, p->topic_id)) < 0 ||
      (rc = wire_write_u16(w, p->msg_id)) < 0)
    return rc;
  return write_str(w, &p->data);
}

static int put_puback(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_puback *a = &msg->u.puback;

  return put_id_id_rc(w, a->topic_id, a->msg_id, a->rc);
}

/* PUBCOMP, PUBREC, PUBREL, UNSUBACK. */
static int put_msgid(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return wire_write_u16(w, msg->u.msgid.msg_id);
}

/* SUBSCRIBE and UNSUBSCRIBE: a topic name for NORMAL, else a TopicId. */
static int put_subscribe(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_subscribe *sub = &msg->u.subscribe;
  bool by_name = sub->flags.topic_type == MQTTSN_TOPIC_NORMAL;
  int rc;

  if ((rc = check_flags(&sub->flags, false)) < 0 ||
      (by_name && (rc = check_str(&sub->topic_name, 1)) < 0))
    return rc;
  if ((rc = put_flags(w, &sub->flags)) < 0 || (rc = wire_write_u16(w, sub->msg_id)) < 0)
    return rc;
  return by_name ? write_str(w, &sub->topic_name) : wire_write_u16(w, sub->topic_id);
}

static int put_suback(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_suback *a = &msg->u.suback;
  int rc;

  if ((rc = check_flags(&a->flags, false)) < 0 || (rc = check_rc(a->rc)) < 0 ||
      (rc = put_flags(w, &a->flags)) < 0 || (rc = wire_write_u16(w, a->topic_id)) < 0 ||
      (rc = wire_write_u16(w, a->msg_id)) < 0)
    return rc;
  return wire_write_u8(w, a->rc);
}

static int put_pingreq(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return put_only_str(w, &msg->u.pingreq.client_id);
}

static int put_disconnect(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  if (!msg->u.disconnect.has_duration)
    return PROTO_OK;
  return wire_write_u16(w, msg->u.disconnect.duration);
}

/* WILLTOPICRESP and WILLMSGRESP. */
static int put_resp(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return put_rc(w, msg->u.resp.rc);
}

/* ENCAPSULATED up to the inner message: the part its Length covers.  Same
 * rules as the decoder: a node id that identifies something, and a
 * well-framed inner message. */
static int put_encap(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  const struct mqttsn_encapsulated *e = &msg->u.encap;
  int rc;

  if ((rc = check_str(&e->node_id, 1)) < 0 || (rc = check_inner(&e->inner)) < 0 ||
      (rc = wire_write_u8(w, e->ctrl)) < 0)
    return rc;
  return write_str(w, &e->node_id);
}

/* The inner message of ENCAPSULATED, after the part the Length covers
 * (§5.5); put_encap has checked it. */
static int put_encap_inner(struct wire_writer *w, const struct mqttsn_msg *msg)
{
  return write_str(w, &msg->u.encap.inner);
}

/* The layout of each message type: `counted` writes what the Length field
 * covers after MsgType, `trailer` (ENCAPSULATED only, else NULL) what
 * follows outside it. */
struct layout {
  enum mqttsn_type type;
  layout_fn counted;
  layout_fn trailer;
};

/* One row per type, in the order of §5.2.2 Table 3. */
/* clang-format off */
static const struct layout layouts[] = {
  {MQTTSN_ADVERTISE, put_advertise, NULL},
  {MQTTSN_SEARCHGW, put_searchgw, NULL},
  {MQTTSN_GWINFO, put_gwinfo, NULL},
  {MQTTSN_CONNECT, put_connect, NULL},
  {MQTTSN_CONNACK, put_connack, NULL},
  {MQTTSN_WILLTOPICREQ, put_nothing, NULL},
  {MQTTSN_WILLTOPIC, put_willtopic, NULL},
  {MQTTSN_WILLMSGREQ, put_nothing, NULL},
  {MQTTSN_WILLMSG, put_willmsg, NULL},
  {MQTTSN_REGISTER, put_register, NULL},
  {MQTTSN_REGACK, put_regack, NULL},
  {MQTTSN_PUBLISH, put_publish, NULL},
  {MQTTSN_PUBACK, put_puback, NULL},
  {MQTTSN_PUBCOMP, put_msgid, NULL},
  {MQTTSN_PUBREC, put_msgid, NULL},
  {MQTTSN_PUBREL, put_msgid, NULL},
  {MQTTSN_SUBSCRIBE, put_subscribe, NULL},
  {MQTTSN_SUBACK, put_suback, NULL},
  {MQTTSN_UNSUBSCRIBE, put_subscribe, NULL},
  {MQTTSN_UNSUBACK, put_msgid, NULL},
  {MQTTSN_PINGREQ, put_pingreq, NULL},
  {MQTTSN_PINGRESP, put_nothing, NULL},
  {MQTTSN_DISCONNECT, put_disconnect, NULL},
  {MQTTSN_WILLTOPICUPD, put_willtopic, NULL},
  {MQTTSN_WILLTOPICRESP, put_resp, NULL},
  {MQTTSN_WILLMSGUPD, put_willmsg, NULL},
  {MQTTSN_WILLMSGRESP, put_resp, NULL},
  {MQTTSN_ENCAPSULATED, put_encap, put_encap_inner},
};
/* clang-format on */

/* The layout of a message type; NULL for a reserved one. */
static const struct layout *layout_of(enum mqttsn_type type)
{
  for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++)
    if (layouts[i].type == type)
      return &layouts[i];
  return NULL;
}

/* Runs a layout on w: the counted part, then the trailer.  *counted (when
 * counted is not NULL) receives the size of the counted part, which is what
 * the Length field declares. */
static int put_layout(struct wire_writer *w, const struct layout *l, const struct mqttsn_msg *msg,
                      size_t *counted)
{
  size_t before = wire_written(w);
  int rc;

  if ((rc = l->counted(w, msg)) < 0)
    return rc;
  if (counted)
    *counted = wire_written(w) - before;
  return l->trailer ? l->trailer(w, msg) : PROTO_OK;
}

/*
 * The Length field value for a message with `counted` octets after MsgType:
 * 1 + 1 + counted when that is at most 255, else 3 + 1 + counted.  So a
 * counted part of 253 gives 255 in one octet, and 254 gives 258 in three
 * (totals 256 and 257 are never produced: they would need the 3-octet form,
 * which makes them 258 and 259).  This is the edge Paho gets wrong (docs/protocol-notes.md §2.1).
 */
static size_t length_value(size_t counted, bool *long_form)
{
  *long_form = counted + 2 > MAX_SHORT_TOTAL;
  return counted + (*long_form ? 4 : 2);
}

/*
 * Validates msg and measures it: the Length field value in *declared, its
 * form in *long_form, and the whole datagram as the return value.
 */
static int size_of(const struct mqttsn_msg *msg, const struct layout **l, size_t *declared,
                   bool *long_form)
{
  struct wire_writer w;
  size_t counted, total;
  int rc;

  if (!msg || !(*l = layout_of(msg->type)))
    return PROTO_INVALID_ARG;
  wire_writer_init_measure(&w);
  if ((rc = put_layout(&w, *l, msg, &counted)) < 0)
    return rc;
  *declared = length_value(counted, long_form);
  total = *declared + (wire_written(&w) - counted);
  /* Also bounds the encapsulated total: it must fit one UDP datagram and
   * the int return value. */
  if (*declared > MAX_TOTAL || total > MAX_TOTAL)
    return PROTO_TOO_BIG;
  return (int)total;
}

int mqttsn_encoded_size(const struct mqttsn_msg *msg)
{
  const struct layout *l;
  size_t declared;
  bool long_form;

  return size_of(msg, &l, &declared, &long_form);
}

int mqttsn_encode(const struct mqttsn_msg *msg, uint8_t *buf, size_t cap)
{
  const struct layout *l;
  struct wire_writer w;
  size_t declared;
  bool long_form;
  int total, rc;

  if ((total = size_of(msg, &l, &declared, &long_form)) < 0)
    return total;
  /* Refused before the first octet, so a too-small buffer is left as it
   * was rather than half-written. */
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
  /* The layout that was measured writes the rest, so exactly total octets
   * are written and the Length field is true by construction. */
  if ((rc = wire_write_u8(&w, (uint8_t)msg->type)) < 0 || (rc = put_layout(&w, l, msg, NULL)) < 0)
    return rc;
  return total;
}
