/*
 * mqtt_encode.c - MQTT 3.1.1 encoders for the packets a client sends
 * (OASIS mqtt-v3.1.1-os, chapter 3), plus the Remaining Length varint.
 *
 * Every encoder works in three steps: validate the arguments, compute the
 * exact packet size, then write.  Because the size is known before any byte
 * is written, a too-small buffer is refused without touching it, and
 * (buf == NULL, cap == 0) returns the size alone.
 *
 * The byte writers below are deliberately local: they write into a region
 * whose size has already been checked, so they need no bounds checks.
 */
#include <limits.h>
#include <string.h>

#include "mqtt.h"

#define MQTT_U16_MAX 65535u

/* Bytes needed to encode v as a Remaining Length (v <= the maximum). */
static size_t varint_size(size_t v)
{
  if (v < 128u)
    return 1;
  if (v < 16384u)
    return 2;
  if (v < 2097152u)
    return 3;
  return 4;
}

static uint8_t *put_u8(uint8_t *w, uint8_t v)
{
  *w = v;
  return w + 1;
}

static uint8_t *put_u16(uint8_t *w, uint16_t v)
{
  w[0] = (uint8_t)(v >> 8);
  w[1] = (uint8_t)(v & 0xFF);
  return w + 2;
}

static uint8_t *put_raw(uint8_t *w, const uint8_t *p, size_t len)
{
  if (len > 0)
    memcpy(w, p, len);
  return w + len;
}

/* A UTF-8 string or binary field: 2-byte big-endian length, then bytes. */
static uint8_t *put_field(uint8_t *w, const struct mqtt_bytes *b)
{
  w = put_u16(w, (uint16_t)b->len);
  return put_raw(w, b->p, b->len);
}

static uint8_t *put_varint(uint8_t *w, size_t v)
{
  do {
    uint8_t byte = (uint8_t)(v & 0x7F);
    v >>= 7;
    if (v > 0)
      byte |= 0x80;
    *w++ = byte;
  } while (v > 0);
  return w;
}

/* A byte view is usable when its pointer is set or it is empty. */
static bool bytes_ok(const struct mqtt_bytes *b)
{
  return b->p != NULL || b->len == 0;
}

/* A length-prefixed field: at most 65535 bytes. */
static bool field_ok(const struct mqtt_bytes *b)
{
  return bytes_ok(b) && b->len <= MQTT_U16_MAX;
}

/*
 * Turns a Remaining Length into the whole packet size, and decides what the
 * caller should do with its output buffer.  Returns the packet size (> 0)
 * when the caller should write, 0 when the caller should return the size
 * without writing (size query, written to *total), or an error.
 */
static int frame_size(size_t remaining, const uint8_t *buf, size_t cap,
                      size_t *total)
{
  if (remaining > MQTT_MAX_REMAINING_LENGTH)
    return PROTO_INVALID_ARG;
  *total = 1 + varint_size(remaining) + remaining;
  if (*total > (size_t)INT_MAX)
    return PROTO_INVALID_ARG;
  if (buf == NULL && cap == 0)
    return 0;
  if (buf == NULL)
    return PROTO_INVALID_ARG;
  if (cap < *total)
    return PROTO_BUF_TOO_SMALL;
  return (int)*total;
}

int mqtt_varint_encode(uint32_t value, uint8_t *buf, size_t cap)
{
  size_t n;

  if (value > MQTT_MAX_REMAINING_LENGTH)
    return PROTO_INVALID_ARG;
  n = varint_size(value);
  if (buf == NULL && cap == 0)
    return (int)n;
  if (buf == NULL)
    return PROTO_INVALID_ARG;
  if (cap < n)
    return PROTO_BUF_TOO_SMALL;
  put_varint(buf, value);
  return (int)n;
}

/*
 * CONNECT (§3.1).  The variable header is fixed at 10 bytes: protocol name
 * "MQTT" with its length, level 4, connect flags and keep-alive.  The
 * payload fields appear in the order ClientId, Will Topic, Will Message,
 * User Name, Password, each present only when its flag is set.
 */
int mqtt_encode_connect(const struct mqtt_connect *c, uint8_t *buf, size_t cap)
{
  static const uint8_t proto_name[] = {0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04};
  size_t remaining, total;
  uint8_t flags = 0;
  uint8_t *w;
  int rc;

  if (c == NULL || !field_ok(&c->client_id))
    return PROTO_INVALID_ARG;
  /* A zero-byte ClientId is only allowed with CleanSession=1
   * [MQTT-3.1.3-7]. */
  if (c->client_id.len == 0 && !c->clean_session)
    return PROTO_INVALID_ARG;
  /* A password without a user name is not allowed [MQTT-3.1.2-22]. */
  if (c->has_password && !c->has_username)
    return PROTO_INVALID_ARG;

  remaining = 10 + 2 + c->client_id.len;
  if (c->clean_session)
    flags |= 0x02;
  if (c->will) {
    /* The Will Topic is a topic name, so it cannot be empty (§4.7.3); its
     * content (wildcards, UTF-8) is the caller's business, see topic.h. */
    if (!field_ok(&c->will_topic) || c->will_topic.len == 0 ||
        !field_ok(&c->will_payload) || c->will_qos < 0 || c->will_qos > 2)
      return PROTO_INVALID_ARG;
    flags |= 0x04 | (uint8_t)(c->will_qos << 3);
    if (c->will_retain)
      flags |= 0x20;
    remaining += 2 + c->will_topic.len + 2 + c->will_payload.len;
  }
  if (c->has_username) {
    if (!field_ok(&c->username))
      return PROTO_INVALID_ARG;
    flags |= 0x80;
    remaining += 2 + c->username.len;
  }
  if (c->has_password) {
    if (!field_ok(&c->password))
      return PROTO_INVALID_ARG;
    flags |= 0x40;
    remaining += 2 + c->password.len;
  }

  rc = frame_size(remaining, buf, cap, &total);
  if (rc <= 0)
    return rc < 0 ? rc : (int)total;

  w = put_u8(buf, MQTT_CONNECT << 4);
  w = put_varint(w, remaining);
  w = put_raw(w, proto_name, sizeof proto_name);
  w = put_u8(w, flags);
  w = put_u16(w, c->keepalive);
  w = put_field(w, &c->client_id);
  if (c->will) {
    w = put_field(w, &c->will_topic);
    w = put_field(w, &c->will_payload);
  }
  if (c->has_username)
    w = put_field(w, &c->username);
  if (c->has_password)
    w = put_field(w, &c->password);
  return (int)(w - buf);
}

/*
 * PUBLISH (§3.3).  Fixed-header flags carry DUP, QoS and RETAIN.  A QoS 0
 * PUBLISH has no packet identifier [MQTT-2.3.1-5] and DUP must be 0
 * [MQTT-3.3.1-2]; QoS 1 and 2 need a non-zero identifier [MQTT-2.3.1-1].
 */
int mqtt_encode_publish(const struct mqtt_publish *p, uint8_t *buf, size_t cap)
{
  size_t remaining, total;
  uint8_t first;
  uint8_t *w;
  int rc;

  if (p == NULL || p->qos < 0 || p->qos > 2)
    return PROTO_INVALID_ARG;
  if (p->qos == 0 && p->dup)
    return PROTO_INVALID_ARG;
  if (p->qos > 0 && p->packet_id == 0)
    return PROTO_INVALID_ARG;
  if (!field_ok(&p->topic) || p->topic.len == 0 || !bytes_ok(&p->payload))
    return PROTO_INVALID_ARG;
  /* Checked before adding so that a huge payload length cannot wrap. */
  if (p->payload.len > MQTT_MAX_REMAINING_LENGTH)
    return PROTO_INVALID_ARG;

  remaining = 2 + p->topic.len + (p->qos > 0 ? 2u : 0u) + p->payload.len;
  rc = frame_size(remaining, buf, cap, &total);
  if (rc <= 0)
    return rc < 0 ? rc : (int)total;

  first = (uint8_t)(MQTT_PUBLISH << 4 | (p->dup ? 0x08 : 0) | p->qos << 1 |
                    (p->retain ? 0x01 : 0));
  w = put_u8(buf, first);
  w = put_varint(w, remaining);
  w = put_field(w, &p->topic);
  if (p->qos > 0)
    w = put_u16(w, p->packet_id);
  w = put_raw(w, p->payload.p, p->payload.len);
  return (int)(w - buf);
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: fixed header + packet id.  Only
 * PUBREL has flags 0010 [MQTT-3.6.1-1]. */
int mqtt_encode_ack(enum mqtt_type type, uint16_t packet_id, uint8_t *buf, size_t cap)
{
  size_t total;
  uint8_t *w;
  int rc;

  if (type != MQTT_PUBACK && type != MQTT_PUBREC && type != MQTT_PUBREL &&
      type != MQTT_PUBCOMP && type != MQTT_UNSUBACK)
    return PROTO_INVALID_ARG;
  if (packet_id == 0)
    return PROTO_INVALID_ARG;
  rc = frame_size(2, buf, cap, &total);
  if (rc <= 0)
    return rc < 0 ? rc : (int)total;

  w = put_u8(buf, (uint8_t)(type << 4 | (type == MQTT_PUBREL ? 0x02 : 0x00)));
  w = put_varint(w, 2);
  w = put_u16(w, packet_id);
  return (int)(w - buf);
}

/*
 * SUBSCRIBE (§3.8) and UNSUBSCRIBE (§3.10) share everything but the QoS byte
 * after each filter.  qos == NULL means UNSUBSCRIBE.  Both need at least one
 * filter [MQTT-3.8.3-3, MQTT-3.10.3-2], a non-zero packet id, and fixed-header
 * flags 0010 [MQTT-3.8.1-1, MQTT-3.10.1-1].
 */
static int encode_sub_unsub(enum mqtt_type type, uint16_t packet_id,
                            const struct mqtt_bytes *filters, const uint8_t *qos,
                            size_t n, uint8_t *buf, size_t cap)
{
  size_t remaining = 2, total;
  uint8_t *w;
  int rc;

  if (packet_id == 0 || n == 0 || filters == NULL)
    return PROTO_INVALID_ARG;
  for (size_t i = 0; i < n; i++) {
    if (!field_ok(&filters[i]) || filters[i].len == 0)
      return PROTO_INVALID_ARG;
    if (qos != NULL && qos[i] > 2)
      return PROTO_INVALID_ARG;
    remaining += 2 + filters[i].len + (qos != NULL ? 1u : 0u);
    /* Stop early so that a huge n cannot overflow the sum. */
    if (remaining > MQTT_MAX_REMAINING_LENGTH)
      return PROTO_INVALID_ARG;
  }
  rc = frame_size(remaining, buf, cap, &total);
  if (rc <= 0)
    return rc < 0 ? rc : (int)total;

  w = put_u8(buf, (uint8_t)(type << 4 | 0x02));
  w = put_varint(w, remaining);
  w = put_u16(w, packet_id);
  for (size_t i = 0; i < n; i++) {
    w = put_field(w, &filters[i]);
    if (qos != NULL)
      w = put_u8(w, qos[i]);
  }
  return (int)(w - buf);
}

int mqtt_encode_subscribe(uint16_t packet_id, const struct mqtt_bytes *filters,
                          const uint8_t *qos, size_t n, uint8_t *buf, size_t cap)
{
  if (qos == NULL)
    return PROTO_INVALID_ARG;
  return encode_sub_unsub(MQTT_SUBSCRIBE, packet_id, filters, qos, n, buf, cap);
}

int mqtt_encode_unsubscribe(uint16_t packet_id, const struct mqtt_bytes *filters,
                            size_t n, uint8_t *buf, size_t cap)
{
  return encode_sub_unsub(MQTT_UNSUBSCRIBE, packet_id, filters, NULL, n, buf, cap);
}

/* PINGREQ, PINGRESP, DISCONNECT: type byte and a zero Remaining Length. */
int mqtt_encode_simple(enum mqtt_type type, uint8_t *buf, size_t cap)
{
  size_t total;
  int rc;

  if (type != MQTT_PINGREQ && type != MQTT_PINGRESP && type != MQTT_DISCONNECT)
    return PROTO_INVALID_ARG;
  rc = frame_size(0, buf, cap, &total);
  if (rc <= 0)
    return rc < 0 ? rc : (int)total;
  buf[0] = (uint8_t)(type << 4);
  buf[1] = 0x00;
  return 2;
}
