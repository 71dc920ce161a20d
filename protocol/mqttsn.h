/*
 * mqttsn.h - MQTT-SN v1.2 codec (IBM spec, 14 Nov 2013; section numbers below
 * refer to it).  Pure: no I/O, no allocation, no globals.
 *
 * Decoding: mqttsn_decode(buf, len, &msg) parses exactly one datagram.  The
 * Length field (1 octet, or 0x01 followed by a big-endian uint16, §5.2.1)
 * must equal len: a datagram carries one message.  Every field is validated.
 * Strings and payloads in the decoded struct are VIEWS INTO buf (pointer +
 * length, not NUL-terminated): they stay valid only as long as buf does.
 *
 * Encoding: mqttsn_encoded_size(&msg) gives the exact size; mqttsn_encode(&msg,
 * buf, cap) writes it and returns the size, or PROTO_BUF_TOO_SMALL.  The
 * encoder uses the 1-octet Length form for totals <= 255 and the 3-octet form
 * above (a total of exactly 255 fits one octet; see docs/protocol-notes.md §2.1).
 */
#ifndef FLEETGW_MQTTSN_H
#define FLEETGW_MQTTSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_err.h"

/* §5.2.2 Table 3. Note PUBCOMP (0x0E) comes before PUBREC (0x0F). */
enum mqttsn_type {
  MQTTSN_ADVERTISE = 0x00,
  MQTTSN_SEARCHGW = 0x01,
  MQTTSN_GWINFO = 0x02,
  MQTTSN_CONNECT = 0x04,
  MQTTSN_CONNACK = 0x05,
  MQTTSN_WILLTOPICREQ = 0x06,
  MQTTSN_WILLTOPIC = 0x07,
  MQTTSN_WILLMSGREQ = 0x08,
  MQTTSN_WILLMSG = 0x09,
  MQTTSN_REGISTER = 0x0A,
  MQTTSN_REGACK = 0x0B,
  MQTTSN_PUBLISH = 0x0C,
  MQTTSN_PUBACK = 0x0D,
  MQTTSN_PUBCOMP = 0x0E,
  MQTTSN_PUBREC = 0x0F,
  MQTTSN_PUBREL = 0x10,
  MQTTSN_SUBSCRIBE = 0x12,
  MQTTSN_SUBACK = 0x13,
  MQTTSN_UNSUBSCRIBE = 0x14,
  MQTTSN_UNSUBACK = 0x15,
  MQTTSN_PINGREQ = 0x16,
  MQTTSN_PINGRESP = 0x17,
  MQTTSN_DISCONNECT = 0x18,
  MQTTSN_WILLTOPICUPD = 0x1A,
  MQTTSN_WILLTOPICRESP = 0x1B,
  MQTTSN_WILLMSGUPD = 0x1C,
  MQTTSN_WILLMSGRESP = 0x1D,
  MQTTSN_ENCAPSULATED = 0xFE,
};

/* §5.3.10 Table 5. */
enum mqttsn_rc {
  MQTTSN_RC_ACCEPTED = 0x00,
  MQTTSN_RC_CONGESTION = 0x01,
  MQTTSN_RC_INVALID_TOPIC_ID = 0x02,
  MQTTSN_RC_NOT_SUPPORTED = 0x03,
};

/* §5.3.4 Table 4, bits 1-0. */
enum mqttsn_topic_type {
  MQTTSN_TOPIC_NORMAL = 0,     /* PUBLISH: registered id; (UN)SUBSCRIBE: name follows */
  MQTTSN_TOPIC_PREDEFINED = 1,
  MQTTSN_TOPIC_SHORT = 2,
};

/* QoS as carried in the flags: 0, 1, 2, or -1 (bits 0b11). */
#define MQTTSN_QOS_M1 (-1)

#define MQTTSN_PROTOCOL_ID 0x01
#define MQTTSN_MAX_CLIENT_ID 23 /* §5.3.1 */

/* The flags byte, decoded.  Each message uses only some fields (§5.3.4). */
struct mqttsn_flags {
  bool dup;
  int qos; /* 0, 1, 2 or MQTTSN_QOS_M1 */
  bool retain;
  bool will;
  bool clean_session;
  enum mqttsn_topic_type topic_type;
};

/* A byte string viewing into the decoded buffer (or into the caller's memory
 * when encoding).  Not NUL-terminated. */
struct mqttsn_str {
  const uint8_t *p;
  size_t len;
};

struct mqttsn_advertise { uint8_t gw_id; uint16_t duration; };
struct mqttsn_searchgw { uint8_t radius; };
struct mqttsn_gwinfo { uint8_t gw_id; struct mqttsn_str gw_add; /* empty from a GW */ };
struct mqttsn_connect {
  struct mqttsn_flags flags; /* will, clean_session */
  uint8_t protocol_id;       /* decoder rejects anything but 0x01 */
  uint16_t duration;         /* keep-alive, seconds */
  struct mqttsn_str client_id; /* decoder accepts 1..65535 octets; length policy is the caller's */
};
struct mqttsn_connack { uint8_t rc; };
/* WILLTOPIC and WILLTOPICUPD: empty == true means the 2-octet form (delete
 * the will), and then flags/topic are unused. */
struct mqttsn_willtopic { bool empty; struct mqttsn_flags flags; struct mqttsn_str topic; };
struct mqttsn_willmsg { struct mqttsn_str msg; }; /* WILLMSG and WILLMSGUPD */
struct mqttsn_register { uint16_t topic_id; uint16_t msg_id; struct mqttsn_str topic_name; };
struct mqttsn_regack { uint16_t topic_id; uint16_t msg_id; uint8_t rc; };
struct mqttsn_publish {
  struct mqttsn_flags flags; /* dup, qos, retain, topic_type */
  uint16_t topic_id;         /* for SHORT: the two name octets, big-endian */
  uint16_t msg_id;
  struct mqttsn_str data;
};
struct mqttsn_puback { uint16_t topic_id; uint16_t msg_id; uint8_t rc; };
struct mqttsn_msgid_only { uint16_t msg_id; }; /* PUBREC, PUBREL, PUBCOMP, UNSUBACK */
/* SUBSCRIBE and UNSUBSCRIBE: topic_name when flags.topic_type is NORMAL,
 * topic_id otherwise (PREDEFINED, or SHORT with the two name octets). */
struct mqttsn_subscribe {
  struct mqttsn_flags flags; /* dup, qos (SUBSCRIBE only), topic_type */
  uint16_t msg_id;
  struct mqttsn_str topic_name;
  uint16_t topic_id;
};
struct mqttsn_suback { struct mqttsn_flags flags; /* qos */ uint16_t topic_id; uint16_t msg_id; uint8_t rc; };
struct mqttsn_pingreq { struct mqttsn_str client_id; /* empty unless waking a sleeper */ };
struct mqttsn_disconnect { bool has_duration; uint16_t duration; };
struct mqttsn_resp { uint8_t rc; }; /* WILLTOPICRESP, WILLMSGRESP */
/* Encapsulated message (§5.5): ctrl radius, wireless node id, and the inner
 * message left undecoded (call mqttsn_decode on it). */
struct mqttsn_encapsulated { uint8_t ctrl; struct mqttsn_str node_id; struct mqttsn_str inner; };

struct mqttsn_msg {
  enum mqttsn_type type;
  union {
    struct mqttsn_advertise advertise;
    struct mqttsn_searchgw searchgw;
    struct mqttsn_gwinfo gwinfo;
    struct mqttsn_connect connect;
    struct mqttsn_connack connack;
    struct mqttsn_willtopic willtopic;   /* WILLTOPIC, WILLTOPICUPD */
    struct mqttsn_willmsg willmsg;       /* WILLMSG, WILLMSGUPD */
    struct mqttsn_register reg;
    struct mqttsn_regack regack;
    struct mqttsn_publish publish;
    struct mqttsn_puback puback;
    struct mqttsn_msgid_only msgid;      /* PUBREC, PUBREL, PUBCOMP, UNSUBACK */
    struct mqttsn_subscribe subscribe;   /* SUBSCRIBE, UNSUBSCRIBE */
    struct mqttsn_suback suback;
    struct mqttsn_pingreq pingreq;
    struct mqttsn_disconnect disconnect;
    struct mqttsn_resp resp;             /* WILLTOPICRESP, WILLMSGRESP */
    struct mqttsn_encapsulated encap;
    /* WILLTOPICREQ, WILLMSGREQ, PINGRESP have no fields. */
  } u;
};

/*
 * Decode one datagram.
 *   buf, len: the datagram.  OUT msg: filled on success, views into buf.
 * Returns PROTO_OK, or
 *   PROTO_MALFORMED   length field disagrees with len, a field is missing or
 *                     too long, a reserved flag value (QoS -1 outside
 *                     PUBLISH, TopicIdType 0b11), a bad ProtocolId, ...
 *   PROTO_UNSUPPORTED a reserved MsgType.
 * Never reads outside buf[0..len).
 */
int mqttsn_decode(const uint8_t *buf, size_t len, struct mqttsn_msg *msg);

/* Exact encoded size of msg in octets, or a negative proto_err for an invalid
 * message (unknown type, oversize field: total > 65535). */
int mqttsn_encoded_size(const struct mqttsn_msg *msg);

/* Encode msg into buf[0..cap).  Returns the number of octets written, or
 * PROTO_BUF_TOO_SMALL, PROTO_INVALID_ARG, or PROTO_TOO_BIG when the message
 * would exceed 65535 octets (§6.10: such a message is dropped). */
int mqttsn_encode(const struct mqttsn_msg *msg, uint8_t *buf, size_t cap);

/* Name of a message type for logs ("PUBLISH"), "UNKNOWN" otherwise. */
const char *mqttsn_type_name(int type);

/* The flags byte <-> struct (exposed for tests and the leaf tooling). */
uint8_t mqttsn_flags_encode(const struct mqttsn_flags *f);
int mqttsn_flags_decode(uint8_t b, struct mqttsn_flags *f); /* PROTO_MALFORMED on topic type 0b11 */

#endif
