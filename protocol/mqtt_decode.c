/*
 * mqtt_decode.c - MQTT 3.1.1 decoder for the packets a client receives
 * (OASIS mqtt-v3.1.1-os, chapters 2 and 3).
 *
 * mqtt_decode() takes exactly one whole packet.  It checks the fixed header
 * first (type, flags, Remaining Length == the rest of the buffer), then the
 * packet's own fields.  Every read is preceded by a length check against the
 * packet, so no input can make it read out of bounds; it never allocates and
 * strings and payloads are views into the caller's buffer.
 */
#include <string.h>

#include "mqtt.h"
#include "topic.h"

static uint16_t get_u16(const uint8_t *p)
{
  return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

/*
 * The Remaining Length (§2.2.3): 7 bits per byte, least significant group
 * first, at most 4 bytes.  A continuation bit on the 4th byte means a 5th
 * byte would follow, which is malformed; it is reported at once rather than
 * after waiting for that 5th byte.  A multi-byte encoding whose last byte is
 * 0x00 is not minimal ("0x80 0x00" for 0).  MQTT 3.1.1 does not spell that
 * out (MQTT 5 does, [MQTT-1.5.5-1]), but no server produces it and accepting
 * it would give one packet two encodings, so it is refused as malformed.
 */
int mqtt_varint_decode(const uint8_t *buf, size_t len, uint32_t *value)
{
  uint32_t v = 0;

  for (size_t i = 0; i < 4; i++) {
    if (i >= len)
      return PROTO_INCOMPLETE;
    v |= (uint32_t)(buf[i] & 0x7F) << (7 * i);
    if ((buf[i] & 0x80) == 0) {
      if (i > 0 && buf[i] == 0x00)
        return PROTO_MALFORMED;
      if (value != NULL)
        *value = v;
      return (int)(i + 1);
    }
  }
  return PROTO_MALFORMED;
}

/* Fixed-header flags every packet type must carry (§2.2.2); PUBLISH uses its
 * flags for DUP/QoS/RETAIN and is checked separately. */
static unsigned required_flags(unsigned type)
{
  return type == MQTT_PUBREL ? 0x2u : 0x0u;
}

static int decode_connack(const uint8_t *body, size_t n, struct mqtt_packet *pkt)
{
  if (n != 2)
    return PROTO_MALFORMED;
  /* Bits 7-1 of the Connect Acknowledge Flags are reserved, 0 (§3.2.2.1). */
  if ((body[0] & 0xFE) != 0)
    return PROTO_MALFORMED;
  /* A refusing server must send Session Present = 0 [MQTT-3.2.2-4]. */
  if (body[1] != 0 && (body[0] & 0x01) != 0)
    return PROTO_MALFORMED;
  pkt->u.connack.session_present = (body[0] & 0x01) != 0;
  /* Return codes 6-255 are reserved; they are passed up as they are so the
   * caller can log them and treat them as a refusal. */
  pkt->u.connack.rc = body[1];
  return PROTO_OK;
}

static int decode_publish(unsigned flags, const uint8_t *body, size_t n,
                          struct mqtt_packet *pkt)
{
  struct mqtt_publish *p = &pkt->u.publish;
  size_t tlen, pos;

  p->dup = (flags & 0x08) != 0;
  p->qos = (int)((flags >> 1) & 0x03);
  p->retain = (flags & 0x01) != 0;
  /* QoS 3 is reserved [MQTT-3.3.1-4]; DUP must be 0 with QoS 0
   * [MQTT-3.3.1-2]. */
  if (p->qos == 3)
    return PROTO_MALFORMED;
  if (p->qos == 0 && p->dup)
    return PROTO_MALFORMED;

  if (n < 2)
    return PROTO_MALFORMED;
  tlen = get_u16(body);
  if (tlen > n - 2)
    return PROTO_MALFORMED;
  /* The Topic Name must be a non-empty UTF-8 string without wildcards or
   * U+0000 [MQTT-3.3.2-1, MQTT-3.3.2-2, MQTT-4.7.3-1]. */
  if (!topic_name_is_valid((const char *)body + 2, tlen))
    return PROTO_MALFORMED;
  p->topic.p = body + 2;
  p->topic.len = tlen;
  pos = 2 + tlen;

  if (p->qos > 0) {
    if (n - pos < 2)
      return PROTO_MALFORMED;
    p->packet_id = get_u16(body + pos);
    if (p->packet_id == 0)
      return PROTO_MALFORMED;
    pos += 2;
  }
  p->payload.p = body + pos;
  p->payload.len = n - pos;
  return PROTO_OK;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: exactly a non-zero packet id. */
static int decode_ack(const uint8_t *body, size_t n, struct mqtt_packet *pkt)
{
  if (n != 2)
    return PROTO_MALFORMED;
  pkt->u.packet_id = get_u16(body);
  return pkt->u.packet_id == 0 ? PROTO_MALFORMED : PROTO_OK;
}

static int decode_suback(const uint8_t *body, size_t n, struct mqtt_packet *pkt)
{
  /* Packet id plus at least one return code (one per filter subscribed,
   * and SUBSCRIBE needs at least one filter). */
  if (n < 3)
    return PROTO_MALFORMED;
  pkt->u.suback.packet_id = get_u16(body);
  if (pkt->u.suback.packet_id == 0)
    return PROTO_MALFORMED;
  for (size_t i = 2; i < n; i++) {
    /* Only 0x00, 0x01, 0x02 and 0x80 are allowed [MQTT-3.9.3-2]. */
    if (body[i] > 0x02 && body[i] != MQTT_SUBACK_FAILURE)
      return PROTO_MALFORMED;
  }
  pkt->u.suback.codes = body + 2;
  pkt->u.suback.count = n - 2;
  return PROTO_OK;
}

int mqtt_decode(const uint8_t *buf, size_t len, struct mqtt_packet *pkt)
{
  unsigned type, flags;
  uint32_t remaining;
  const uint8_t *body;
  int hdr;

  if (pkt == NULL)
    return PROTO_MALFORMED;
  memset(pkt, 0, sizeof *pkt);
  if (buf == NULL || len < 2)
    return PROTO_MALFORMED;

  type = buf[0] >> 4;
  flags = buf[0] & 0x0F;
  /* Types 0 and 15 are reserved (§2.2.1). */
  if (type == 0 || type == 15)
    return PROTO_MALFORMED;

  hdr = mqtt_varint_decode(buf + 1, len - 1, &remaining);
  if (hdr < 0)
    return PROTO_MALFORMED; /* incomplete counts too: len must be exact */
  if ((size_t)remaining != len - 1 - (size_t)hdr)
    return PROTO_MALFORMED;
  body = buf + 1 + hdr;

  /* Set before the server-only check so a caller can log what arrived. */
  pkt->type = (enum mqtt_type)type;
  switch (type) {
  case MQTT_CONNECT:
  case MQTT_SUBSCRIBE:
  case MQTT_UNSUBSCRIBE:
  case MQTT_PINGREQ:
  case MQTT_DISCONNECT:
    /* Only a server receives these. */
    return PROTO_UNSUPPORTED;
  default:
    break;
  }

  if (type == MQTT_PUBLISH)
    return decode_publish(flags, body, remaining, pkt);
  if (flags != required_flags(type))
    return PROTO_MALFORMED;

  switch (type) {
  case MQTT_CONNACK:
    return decode_connack(body, remaining, pkt);
  case MQTT_PUBACK:
  case MQTT_PUBREC:
  case MQTT_PUBREL:
  case MQTT_PUBCOMP:
  case MQTT_UNSUBACK:
    return decode_ack(body, remaining, pkt);
  case MQTT_SUBACK:
    return decode_suback(body, remaining, pkt);
  case MQTT_PINGRESP:
    return remaining == 0 ? PROTO_OK : PROTO_MALFORMED;
  default:
    return PROTO_MALFORMED; /* not reached: all 16 values handled above */
  }
}

const char *mqtt_type_name(int type)
{
  static const char *const names[] = {
    "RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC",
    "PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK",
    "PINGREQ", "PINGRESP", "DISCONNECT", "RESERVED",
  };

  if (type < 0 || type > 15)
    return "UNKNOWN";
  return names[type];
}

const char *mqtt_connack_str(int rc)
{
  switch (rc) {
  case MQTT_CONNACK_ACCEPTED:
    return "connection accepted";
  case MQTT_CONNACK_BAD_PROTOCOL:
    return "unacceptable protocol version";
  case MQTT_CONNACK_ID_REJECTED:
    return "identifier rejected";
  case MQTT_CONNACK_UNAVAILABLE:
    return "server unavailable";
  case MQTT_CONNACK_BAD_AUTH:
    return "bad user name or password";
  case MQTT_CONNACK_NOT_AUTHORIZED:
    return "not authorized";
  default:
    return "reserved return code";
  }
}
