/*
 * mqtt.h - MQTT 3.1.1 codec, client side (OASIS mqtt-v3.1.1-os).  Pure: no
 * I/O, no allocation, no globals.
 *
 * Encoders: mqtt_encode_*(..., buf, cap) return the number of bytes written,
 * or PROTO_BUF_TOO_SMALL / PROTO_INVALID_ARG.  Passing buf == NULL and cap == 0
 * returns the exact size needed without writing ("size first, then write").
 *
 * Decoding: mqtt_decode(buf, len, &pkt) decodes ONE whole packet (fixed
 * header included) that a client receives from a server: CONNACK, PUBLISH,
 * PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, PINGRESP.  Packets only
 * a server receives (CONNECT, SUBSCRIBE, ...) are PROTO_UNSUPPORTED here.
 * Strings and payloads are views into buf.  The streaming framer that splits
 * a TCP byte stream into whole packets is in mqtt_stream.h.
 */
#ifndef FLEETGW_MQTT_H
#define FLEETGW_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_err.h"

enum mqtt_type {
  MQTT_CONNECT = 1,
  MQTT_CONNACK = 2,
  MQTT_PUBLISH = 3,
  MQTT_PUBACK = 4,
  MQTT_PUBREC = 5,
  MQTT_PUBREL = 6,
  MQTT_PUBCOMP = 7,
  MQTT_SUBSCRIBE = 8,
  MQTT_SUBACK = 9,
  MQTT_UNSUBSCRIBE = 10,
  MQTT_UNSUBACK = 11,
  MQTT_PINGREQ = 12,
  MQTT_PINGRESP = 13,
  MQTT_DISCONNECT = 14,
};

/* CONNACK return codes, §3.2.2.3. */
enum mqtt_connack_rc {
  MQTT_CONNACK_ACCEPTED = 0,
  MQTT_CONNACK_BAD_PROTOCOL = 1,
  MQTT_CONNACK_ID_REJECTED = 2,
  MQTT_CONNACK_UNAVAILABLE = 3,
  MQTT_CONNACK_BAD_AUTH = 4,
  MQTT_CONNACK_NOT_AUTHORIZED = 5,
};

#define MQTT_SUBACK_FAILURE 0x80
#define MQTT_MAX_REMAINING_LENGTH 268435455u /* §2.2.3 */

struct mqtt_bytes {
  const uint8_t *p;
  size_t len;
};

struct mqtt_connect {
  struct mqtt_bytes client_id;
  bool clean_session;
  uint16_t keepalive;
  bool will;              /* will_* used only when true */
  struct mqtt_bytes will_topic;
  struct mqtt_bytes will_payload;
  int will_qos;
  bool will_retain;
  bool has_username;
  struct mqtt_bytes username;
  bool has_password;      /* only with has_username (MQTT-3.1.2-22) */
  struct mqtt_bytes password;
};

struct mqtt_publish {
  bool dup;
  int qos;                /* 0, 1, 2 */
  bool retain;
  struct mqtt_bytes topic;
  uint16_t packet_id;     /* 0 for QoS 0 */
  struct mqtt_bytes payload;
};

/* One decoded packet that a client receives. */
struct mqtt_packet {
  enum mqtt_type type;
  union {
    struct { bool session_present; uint8_t rc; } connack;
    struct mqtt_publish publish;
    uint16_t packet_id;   /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK */
    struct {
      uint16_t packet_id;
      const uint8_t *codes; /* view into buf: one return code per filter */
      size_t count;
    } suback;
    /* PINGRESP has no fields. */
  } u;
};

/* Encoders.  Each validates its input (topic lengths <= 65535, QoS range,
 * packet id != 0 where required, no wildcards in PUBLISH topics is NOT
 * checked here - see topic.h). */
int mqtt_encode_connect(const struct mqtt_connect *c, uint8_t *buf, size_t cap);
int mqtt_encode_publish(const struct mqtt_publish *p, uint8_t *buf, size_t cap);
/* PUBACK, PUBREC, PUBREL (flags 0010), PUBCOMP, UNSUBACK: type + packet id. */
int mqtt_encode_ack(enum mqtt_type type, uint16_t packet_id, uint8_t *buf, size_t cap);
/* SUBSCRIBE with n filters (flags 0010), qos[i] per filter. */
int mqtt_encode_subscribe(uint16_t packet_id, const struct mqtt_bytes *filters,
                          const uint8_t *qos, size_t n, uint8_t *buf, size_t cap);
int mqtt_encode_unsubscribe(uint16_t packet_id, const struct mqtt_bytes *filters,
                            size_t n, uint8_t *buf, size_t cap);
/* PINGREQ, PINGRESP, DISCONNECT: two bytes. */
int mqtt_encode_simple(enum mqtt_type type, uint8_t *buf, size_t cap);

/* Remaining Length varint (§2.2.3): 1-4 bytes.  Encode returns bytes written
 * or an error; decode returns bytes consumed, PROTO_INCOMPLETE if buf ends
 * inside the varint, PROTO_MALFORMED on a 5th continuation byte. */
int mqtt_varint_encode(uint32_t value, uint8_t *buf, size_t cap);
int mqtt_varint_decode(const uint8_t *buf, size_t len, uint32_t *value);

/* Decode one whole packet buf[0..len) (len must be exactly the packet).
 * Validates fixed-header flags (PUBREL must be 0010, others 0000 except
 * PUBLISH), lengths, QoS 3, packet id 0 where forbidden, SUBACK codes (0, 1,
 * 2 or 0x80).  Returns PROTO_OK, PROTO_MALFORMED, PROTO_UNSUPPORTED. */
int mqtt_decode(const uint8_t *buf, size_t len, struct mqtt_packet *pkt);

const char *mqtt_type_name(int type);
const char *mqtt_connack_str(int rc);

#endif
