/*
 * test_mqttsn.c - MQTT-SN v1.2 codec (protocol/mqttsn_*.c) and the wire
 * cursor it is built on (protocol/wire.c).
 *
 * The golden vectors below were written by hand from the field layouts of
 * the spec (§5.4, §5.5; docs/protocol-notes.md §2.3) and are named after the section
 * they come from.  Each one is checked both ways (encode(msg) == bytes and
 * decode(bytes) == msg) and then abused: every prefix, one octet too many,
 * a wrong Length, the 3-octet Length form, and for fixed-size messages a
 * consistently re-framed body one octet short and one octet long.  Inputs
 * handed to the decoder live in exact-size heap buffers so that
 * AddressSanitizer reports a one-octet over-read.
 */
#include <stdlib.h>

#include "mqttsn.h"
#include "test.h"
#include "wire.h"

#define MAXBUF 70000

/* A string literal as a struct mqttsn_str (without its NUL). */
#define S(lit) {(const uint8_t *)(lit), sizeof(lit) - 1}

/* ---- helpers ---------------------------------------------------------- */

static int hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Parses "0c 04 ..." into out; returns the number of octets. */
static size_t unhex(const char *hex, uint8_t *out)
{
  size_t n = 0;
  while (*hex) {
    if (*hex == ' ') {
      hex++;
      continue;
    }
    out[n++] = (uint8_t)(hexval(hex[0]) << 4 | hexval(hex[1]));
    hex += 2;
  }
  return n;
}

/* Decodes a copy of buf[0..n) held in an exact-size heap buffer, so ASan
 * catches any read past the end.  Only the return code is meaningful: the
 * views in msg die with the copy. */
static int decode_exact(const uint8_t *buf, size_t n)
{
  struct mqttsn_msg msg;
  uint8_t *copy = malloc(n > 0 ? n : 1);
  int rc;

  if (!copy)
    return -1000;
  if (n > 0)
    memcpy(copy, buf, n);
  rc = mqttsn_decode(n > 0 ? copy : NULL, n, &msg);
  free(copy);
  return rc;
}

static int decode_hex_rc(const char *hex)
{
  uint8_t buf[512];
  size_t n = unhex(hex, buf);
  return decode_exact(buf, n);
}

static int str_eq(struct mqttsn_str a, struct mqttsn_str b)
{
  return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static int str_is(struct mqttsn_str a, const char *s)
{
  return a.len == strlen(s) && memcmp(a.p, s, a.len) == 0;
}

static int flags_eq(const struct mqttsn_flags *a, const struct mqttsn_flags *b)
{
  return a->dup == b->dup && a->qos == b->qos && a->retain == b->retain && a->will == b->will &&
         a->clean_session == b->clean_session && a->topic_type == b->topic_type;
}

/* Field-by-field equality of two messages, for the fields their type uses. */
static int msg_eq(const struct mqttsn_msg *a, const struct mqttsn_msg *b)
{
  if (a->type != b->type)
    return 0;
  switch (a->type) {
  case MQTTSN_ADVERTISE:
    return a->u.advertise.gw_id == b->u.advertise.gw_id &&
           a->u.advertise.duration == b->u.advertise.duration;
  case MQTTSN_SEARCHGW:
    return a->u.searchgw.radius == b->u.searchgw.radius;
  case MQTTSN_GWINFO:
    return a->u.gwinfo.gw_id == b->u.gwinfo.gw_id && str_eq(a->u.gwinfo.gw_add, b->u.gwinfo.gw_add);
  case MQTTSN_CONNECT:
    return flags_eq(&a->u.connect.flags, &b->u.connect.flags) &&
           a->u.connect.protocol_id == b->u.connect.protocol_id &&
           a->u.connect.duration == b->u.connect.duration &&
           str_eq(a->u.connect.client_id, b->u.connect.client_id);
  case MQTTSN_CONNACK:
    return a->u.connack.rc == b->u.connack.rc;
  case MQTTSN_WILLTOPICREQ:
  case MQTTSN_WILLMSGREQ:
  case MQTTSN_PINGRESP:
    return 1;
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLTOPICUPD:
    if (a->u.willtopic.empty || b->u.willtopic.empty)
      return a->u.willtopic.empty == b->u.willtopic.empty;
    return flags_eq(&a->u.willtopic.flags, &b->u.willtopic.flags) &&
           str_eq(a->u.willtopic.topic, b->u.willtopic.topic);
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLMSGUPD:
    return str_eq(a->u.willmsg.msg, b->u.willmsg.msg);
  case MQTTSN_REGISTER:
    return a->u.reg.topic_id == b->u.reg.topic_id && a->u.reg.msg_id == b->u.reg.msg_id &&
           str_eq(a->u.reg.topic_name, b->u.reg.topic_name);
  case MQTTSN_REGACK:
    return a->u.regack.topic_id == b->u.regack.topic_id &&
           a->u.regack.msg_id == b->u.regack.msg_id && a->u.regack.rc == b->u.regack.rc;
  case MQTTSN_PUBLISH:
    return flags_eq(&a->u.publish.flags, &b->u.publish.flags) &&
           a->u.publish.topic_id == b->u.publish.topic_id &&
           a->u.publish.msg_id == b->u.publish.msg_id && str_eq(a->u.publish.data, b->u.publish.data);
  case MQTTSN_PUBACK:
    return a->u.puback.topic_id == b->u.puback.topic_id &&
           a->u.puback.msg_id == b->u.puback.msg_id && a->u.puback.rc == b->u.puback.rc;
  case MQTTSN_PUBCOMP:
  case MQTTSN_PUBREC:
  case MQTTSN_PUBREL:
  case MQTTSN_UNSUBACK:
    return a->u.msgid.msg_id == b->u.msgid.msg_id;
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    if (!flags_eq(&a->u.subscribe.flags, &b->u.subscribe.flags) ||
        a->u.subscribe.msg_id != b->u.subscribe.msg_id)
      return 0;
    if (a->u.subscribe.flags.topic_type == MQTTSN_TOPIC_NORMAL)
      return str_eq(a->u.subscribe.topic_name, b->u.subscribe.topic_name);
    return a->u.subscribe.topic_id == b->u.subscribe.topic_id;
  case MQTTSN_SUBACK:
    return flags_eq(&a->u.suback.flags, &b->u.suback.flags) &&
           a->u.suback.topic_id == b->u.suback.topic_id &&
           a->u.suback.msg_id == b->u.suback.msg_id && a->u.suback.rc == b->u.suback.rc;
  case MQTTSN_PINGREQ:
    return str_eq(a->u.pingreq.client_id, b->u.pingreq.client_id);
  case MQTTSN_DISCONNECT:
    return a->u.disconnect.has_duration == b->u.disconnect.has_duration &&
           (!a->u.disconnect.has_duration ||
            a->u.disconnect.duration == b->u.disconnect.duration);
  case MQTTSN_WILLTOPICRESP:
  case MQTTSN_WILLMSGRESP:
    return a->u.resp.rc == b->u.resp.rc;
  case MQTTSN_ENCAPSULATED:
    return a->u.encap.ctrl == b->u.encap.ctrl && str_eq(a->u.encap.node_id, b->u.encap.node_id) &&
           str_eq(a->u.encap.inner, b->u.encap.inner);
  }
  return 0;
}

/* Every non-empty string of a decoded message must view into buf[0..n). */
static int view_inside(struct mqttsn_str s, const uint8_t *buf, size_t n)
{
  return s.len == 0 || (s.p >= buf && s.p + s.len <= buf + n);
}

static int views_inside(const struct mqttsn_msg *m, const uint8_t *buf, size_t n)
{
  switch (m->type) {
  case MQTTSN_GWINFO:
    return view_inside(m->u.gwinfo.gw_add, buf, n);
  case MQTTSN_CONNECT:
    return view_inside(m->u.connect.client_id, buf, n);
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLTOPICUPD:
    return view_inside(m->u.willtopic.topic, buf, n);
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLMSGUPD:
    return view_inside(m->u.willmsg.msg, buf, n);
  case MQTTSN_REGISTER:
    return view_inside(m->u.reg.topic_name, buf, n);
  case MQTTSN_PUBLISH:
    return view_inside(m->u.publish.data, buf, n);
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    return view_inside(m->u.subscribe.topic_name, buf, n);
  case MQTTSN_PINGREQ:
    return view_inside(m->u.pingreq.client_id, buf, n);
  case MQTTSN_ENCAPSULATED:
    return view_inside(m->u.encap.node_id, buf, n) && view_inside(m->u.encap.inner, buf, n);
  default:
    return 1;
  }
}

/* ---- golden vectors --------------------------------------------------- */

struct golden {
  const char *name; /* the spec section */
  const char *hex;  /* the datagram, short Length form */
  bool fixed;       /* the message type has one fixed size */
  struct mqttsn_msg msg;
};

#define FL(...) ((struct mqttsn_flags){__VA_ARGS__})

static const struct golden goldens[] = {
  {"5.4.1 ADVERTISE", "05 00 05 03 84", true,
   {.type = MQTTSN_ADVERTISE, .u.advertise = {.gw_id = 5, .duration = 900}}},
  {"5.4.2 SEARCHGW", "03 01 01", true, {.type = MQTTSN_SEARCHGW, .u.searchgw = {.radius = 1}}},
  {"5.4.3 GWINFO from a gateway", "03 02 07", false,
   {.type = MQTTSN_GWINFO, .u.gwinfo = {.gw_id = 7}}},
  {"5.4.3 GWINFO from a client, with GwAdd", "07 02 07 c0 a8 01 0a", false,
   {.type = MQTTSN_GWINFO, .u.gwinfo = {.gw_id = 7, .gw_add = S("\xc0\xa8\x01\x0a")}}},
  {"5.4.4 CONNECT", "0c 04 0c 01 00 3c 6c 65 61 66 30 31", false,
   {.type = MQTTSN_CONNECT,
    .u.connect = {.flags = {.will = true, .clean_session = true},
                  .protocol_id = 1,
                  .duration = 60,
                  .client_id = S("leaf01")}}},
  {"5.4.4 CONNECT, one-octet ClientId, no flags", "07 04 00 01 ff ff 63", false,
   {.type = MQTTSN_CONNECT,
    .u.connect = {.protocol_id = 1, .duration = 65535, .client_id = S("c")}}},
  {"5.4.5 CONNACK accepted", "03 05 00", true, {.type = MQTTSN_CONNACK, .u.connack = {.rc = 0}}},
  {"5.4.5 CONNACK congestion", "03 05 01", true, {.type = MQTTSN_CONNACK, .u.connack = {.rc = 1}}},
  {"5.4.6 WILLTOPICREQ", "02 06", true, {.type = MQTTSN_WILLTOPICREQ}},
  {"5.4.7 WILLTOPIC", "06 07 30 77 2f 74", false,
   {.type = MQTTSN_WILLTOPIC,
    .u.willtopic = {.flags = {.qos = 1, .retain = true}, .topic = S("w/t")}}},
  {"5.4.7 WILLTOPIC, empty", "02 07", false,
   {.type = MQTTSN_WILLTOPIC, .u.willtopic = {.empty = true}}},
  {"5.4.8 WILLMSGREQ", "02 08", true, {.type = MQTTSN_WILLMSGREQ}},
  {"5.4.9 WILLMSG", "05 09 62 79 65", false,
   {.type = MQTTSN_WILLMSG, .u.willmsg = {.msg = S("bye")}}},
  {"5.4.9 WILLMSG, empty", "02 09", false, {.type = MQTTSN_WILLMSG}},
  {"5.4.10 REGISTER", "09 0a 00 00 00 01 61 2f 62", false,
   {.type = MQTTSN_REGISTER, .u.reg = {.topic_id = 0, .msg_id = 1, .topic_name = S("a/b")}}},
  {"5.4.11 REGACK", "07 0b 00 01 00 01 00", true,
   {.type = MQTTSN_REGACK, .u.regack = {.topic_id = 1, .msg_id = 1, .rc = 0}}},
  {"5.4.12 PUBLISH QoS 1, normal topic id", "09 0c 20 00 01 00 02 68 69", false,
   {.type = MQTTSN_PUBLISH,
    .u.publish = {.flags = {.qos = 1}, .topic_id = 1, .msg_id = 2, .data = S("hi")}}},
  {"5.4.12 PUBLISH QoS 2, DUP, Retain, pre-defined id, no data", "07 0c d1 00 10 12 34", false,
   {.type = MQTTSN_PUBLISH,
    .u.publish = {.flags = {.dup = true, .qos = 2, .retain = true,
                            .topic_type = MQTTSN_TOPIC_PREDEFINED},
                  .topic_id = 0x10,
                  .msg_id = 0x1234}}},
  {"5.4.12/6.8 PUBLISH QoS -1, short topic name", "08 0c 62 61 62 00 00 78", false,
   {.type = MQTTSN_PUBLISH,
    .u.publish = {.flags = {.qos = MQTTSN_QOS_M1, .topic_type = MQTTSN_TOPIC_SHORT},
                  .topic_id = 0x6162,
                  .data = S("x")}}},
  {"5.4.12/6.8 PUBLISH QoS -1, pre-defined id", "09 0c 61 00 2a 00 00 6f 6b", false,
   {.type = MQTTSN_PUBLISH,
    .u.publish = {.flags = {.qos = MQTTSN_QOS_M1, .topic_type = MQTTSN_TOPIC_PREDEFINED},
                  .topic_id = 42,
                  .data = S("ok")}}},
  {"5.4.13 PUBACK invalid topic id", "07 0d 00 01 00 02 02", true,
   {.type = MQTTSN_PUBACK, .u.puback = {.topic_id = 1, .msg_id = 2, .rc = 2}}},
  {"5.4.14 PUBREC", "04 0f 00 02", true, {.type = MQTTSN_PUBREC, .u.msgid = {.msg_id = 2}}},
  {"5.4.14 PUBREL", "04 10 00 02", true, {.type = MQTTSN_PUBREL, .u.msgid = {.msg_id = 2}}},
  {"5.4.14 PUBCOMP", "04 0e ab cd", true, {.type = MQTTSN_PUBCOMP, .u.msgid = {.msg_id = 0xabcd}}},
  {"5.4.15 SUBSCRIBE topic name", "08 12 20 00 03 73 2f 23", false,
   {.type = MQTTSN_SUBSCRIBE,
    .u.subscribe = {.flags = {.qos = 1}, .msg_id = 3, .topic_name = S("s/#")}}},
  {"5.4.15 SUBSCRIBE pre-defined id", "07 12 01 00 04 00 05", true,
   {.type = MQTTSN_SUBSCRIBE,
    .u.subscribe = {.flags = {.topic_type = MQTTSN_TOPIC_PREDEFINED}, .msg_id = 4, .topic_id = 5}}},
  {"5.4.15 SUBSCRIBE short name, QoS 2, DUP", "07 12 c2 00 05 61 62", true,
   {.type = MQTTSN_SUBSCRIBE,
    .u.subscribe = {.flags = {.dup = true, .qos = 2, .topic_type = MQTTSN_TOPIC_SHORT},
                    .msg_id = 5,
                    .topic_id = 0x6162}}},
  {"5.4.16 SUBACK", "08 13 20 00 07 00 03 00", true,
   {.type = MQTTSN_SUBACK, .u.suback = {.flags = {.qos = 1}, .topic_id = 7, .msg_id = 3, .rc = 0}}},
  {"5.4.17 UNSUBSCRIBE topic name", "08 14 00 00 04 73 2f 23", false,
   {.type = MQTTSN_UNSUBSCRIBE, .u.subscribe = {.msg_id = 4, .topic_name = S("s/#")}}},
  {"5.4.17 UNSUBSCRIBE short name", "07 14 02 00 04 61 62", true,
   {.type = MQTTSN_UNSUBSCRIBE,
    .u.subscribe = {.flags = {.topic_type = MQTTSN_TOPIC_SHORT}, .msg_id = 4, .topic_id = 0x6162}}},
  {"5.4.18 UNSUBACK", "04 15 00 04", true, {.type = MQTTSN_UNSUBACK, .u.msgid = {.msg_id = 4}}},
  {"5.4.19 PINGREQ", "02 16", false, {.type = MQTTSN_PINGREQ}},
  {"5.4.19 PINGREQ with ClientId (wake-up)", "08 16 6c 65 61 66 30 31", false,
   {.type = MQTTSN_PINGREQ, .u.pingreq = {.client_id = S("leaf01")}}},
  {"5.4.20 PINGRESP", "02 17", true, {.type = MQTTSN_PINGRESP}},
  {"5.4.21 DISCONNECT", "02 18", false, {.type = MQTTSN_DISCONNECT}},
  {"5.4.21 DISCONNECT with Duration (sleep)", "04 18 0e 10", false,
   {.type = MQTTSN_DISCONNECT, .u.disconnect = {.has_duration = true, .duration = 3600}}},
  {"5.4.22 WILLTOPICUPD", "04 1a 40 77", false,
   {.type = MQTTSN_WILLTOPICUPD, .u.willtopic = {.flags = {.qos = 2}, .topic = S("w")}}},
  {"5.4.22 WILLTOPICUPD, empty", "02 1a", false,
   {.type = MQTTSN_WILLTOPICUPD, .u.willtopic = {.empty = true}}},
  {"5.4.23 WILLMSGUPD", "03 1c 78", false,
   {.type = MQTTSN_WILLMSGUPD, .u.willmsg = {.msg = S("x")}}},
  {"5.4.24 WILLTOPICRESP not supported", "03 1b 03", true,
   {.type = MQTTSN_WILLTOPICRESP, .u.resp = {.rc = 3}}},
  {"5.4.25 WILLMSGRESP", "03 1d 00", true, {.type = MQTTSN_WILLMSGRESP, .u.resp = {.rc = 0}}},
  {"5.5 ENCAPSULATED PINGREQ", "05 fe 01 ab cd 02 16", false,
   {.type = MQTTSN_ENCAPSULATED,
    .u.encap = {.ctrl = 1, .node_id = S("\xab\xcd"), .inner = S("\x02\x16")}}},
  {"5.5 ENCAPSULATED PUBLISH QoS -1", "04 fe 00 09 08 0c 62 61 62 00 00 78", false,
   {.type = MQTTSN_ENCAPSULATED,
    .u.encap = {.ctrl = 0, .node_id = S("\x09"), .inner = S("\x08\x0c\x62\x61\x62\x00\x00\x78")}}},
};

#define NGOLDEN (sizeof goldens / sizeof goldens[0])

/* One golden vector, both directions, then every way of breaking it. */
static void check_golden(const struct golden *g)
{
  uint8_t want[512], out[520], alt[520];
  struct mqttsn_msg got, again;
  size_t n = unhex(g->hex, want), declared = want[0];
  int rc, ok = test_failures;

  /* encode(msg) == bytes */
  ASSERT_EQ(mqttsn_encoded_size(&g->msg), n);
  memset(out, 0xEE, sizeof out);
  ASSERT_EQ(mqttsn_encode(&g->msg, out, sizeof out), n);
  ASSERT_MEM_EQ(out, want, n);
  ASSERT_EQ(out[n], 0xEE); /* nothing written past the end */
  ASSERT_EQ(mqttsn_encode(&g->msg, out, n), n);
  ASSERT_EQ(mqttsn_encode(&g->msg, out, n - 1), PROTO_BUF_TOO_SMALL);

  /* decode(bytes) == msg, with views into the input */
  ASSERT_EQ(mqttsn_decode(want, n, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, &g->msg));
  ASSERT_TRUE(views_inside(&got, want, n));
  ASSERT_STR_EQ(mqttsn_type_name(got.type), mqttsn_type_name(g->msg.type));
  ASSERT_TRUE(strcmp(mqttsn_type_name(got.type), "UNKNOWN") != 0);

  /* Every proper prefix is an error, never a crash or an over-read. */
  for (size_t k = 0; k < n; k++)
    ASSERT_TRUE(decode_exact(want, k) < 0);

  /* One octet too many (Length unchanged). */
  memcpy(alt, want, n);
  alt[n] = 0x00;
  ASSERT_EQ(decode_exact(alt, n + 1), PROTO_MALFORMED);

  /* A wrong declared Length, one less and one more. */
  memcpy(alt, want, n);
  alt[0] = (uint8_t)(declared - 1);
  ASSERT_TRUE(decode_exact(alt, n) < 0);
  alt[0] = (uint8_t)(declared + 1);
  ASSERT_TRUE(decode_exact(alt, n) < 0);

  /* The 3-octet Length form of the same message must decode to the same
   * fields (§5.2.1: receivers accept both), and re-encodes canonically. */
  alt[0] = 0x01;
  alt[1] = 0x00;
  alt[2] = (uint8_t)(declared + 2);
  memcpy(alt + 3, want + 1, n - 1);
  rc = mqttsn_decode(alt, n + 2, &again);
  ASSERT_EQ(rc, PROTO_OK);
  ASSERT_TRUE(msg_eq(&again, &g->msg));
  ASSERT_EQ(mqttsn_encode(&again, out, sizeof out), n);
  ASSERT_MEM_EQ(out, want, n);
  /* ... and every prefix of the long form fails too. */
  for (size_t k = 0; k < n + 2; k++)
    ASSERT_TRUE(decode_exact(alt, k) < 0);

  if (g->fixed) {
    /* Consistently re-framed with the body one octet short or long: the
     * Length agrees with the datagram, but the type's size does not. */
    memcpy(alt, want, n);
    alt[0] = (uint8_t)(n - 1);
    ASSERT_EQ(decode_exact(alt, n - 1), PROTO_MALFORMED);
    alt[0] = (uint8_t)(n + 1);
    alt[n] = 0x00;
    ASSERT_EQ(decode_exact(alt, n + 1), PROTO_MALFORMED);
  }
  if (test_failures != ok)
    fprintf(stderr, "  in golden vector \"%s\"\n", g->name);
}

static void test_golden_vectors(void)
{
  bool seen[256] = {false};
  int types = 0;

  for (size_t i = 0; i < NGOLDEN; i++) {
    check_golden(&goldens[i]);
    if (!seen[goldens[i].msg.type])
      types++;
    seen[goldens[i].msg.type] = true;
  }
  /* Every one of the 28 message types has at least one golden vector. */
  ASSERT_EQ(types, 28);
}

/* ---- header and length forms (§5.2.1) --------------------------------- */

static void test_header_malformed(void)
{
  struct mqttsn_msg m;
  uint8_t b[4] = {0x02, 0x17};

  ASSERT_EQ(mqttsn_decode(NULL, 0, &m), PROTO_MALFORMED);
  ASSERT_EQ(mqttsn_decode(NULL, 4, &m), PROTO_INVALID_ARG);
  ASSERT_EQ(mqttsn_decode(b, 2, NULL), PROTO_INVALID_ARG);
  ASSERT_EQ(decode_hex_rc("02"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("00 17"), PROTO_MALFORMED);    /* Length 0 */
  ASSERT_EQ(decode_hex_rc("01"), PROTO_MALFORMED);       /* long form, nothing after */
  ASSERT_EQ(decode_hex_rc("01 17"), PROTO_MALFORMED);    /* long form cut short */
  ASSERT_EQ(decode_hex_rc("01 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("01 00 04"), PROTO_MALFORMED); /* no MsgType */
  /* A 3-octet Length declaring less than the 4-octet header. */
  ASSERT_EQ(decode_hex_rc("01 00 00 17"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("01 00 02 17"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("01 00 03 17"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("01 00 04 17"), PROTO_OK);
  ASSERT_EQ(decode_hex_rc("01 00 05 17"), PROTO_MALFORMED);
  /* Two messages in one datagram are not one message. */
  ASSERT_EQ(decode_hex_rc("02 17 02 17"), PROTO_MALFORMED);
  /* Length larger than the datagram. */
  ASSERT_EQ(decode_hex_rc("ff 17"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("01 ff ff 17"), PROTO_MALFORMED);
}

static void test_reserved_types(void)
{
  int reserved = 0;

  for (int t = 0; t < 256; t++) {
    bool is_reserved = t == 0x03 || t == 0x11 || t == 0x19 || (t >= 0x1E && t <= 0xFD) || t == 0xFF;
    uint8_t b2[2] = {0x02, (uint8_t)t};
    uint8_t b3[3] = {0x03, (uint8_t)t, 0x00};
    uint8_t b4[4] = {0x01, 0x00, 0x04, (uint8_t)t};

    ASSERT_EQ(strcmp(mqttsn_type_name(t), "UNKNOWN") == 0, is_reserved);
    if (!is_reserved)
      continue;
    reserved++;
    ASSERT_EQ(decode_exact(b2, 2), PROTO_UNSUPPORTED);
    ASSERT_EQ(decode_exact(b3, 3), PROTO_UNSUPPORTED);
    ASSERT_EQ(decode_exact(b4, 4), PROTO_UNSUPPORTED);
  }
  ASSERT_EQ(reserved, 228);
  ASSERT_STR_EQ(mqttsn_type_name(-1), "UNKNOWN");
  ASSERT_STR_EQ(mqttsn_type_name(256), "UNKNOWN");
  ASSERT_STR_EQ(mqttsn_type_name(MQTTSN_PUBCOMP), "PUBCOMP");
  ASSERT_STR_EQ(mqttsn_type_name(MQTTSN_PUBREC), "PUBREC");
  ASSERT_STR_EQ(mqttsn_type_name(MQTTSN_ENCAPSULATED), "ENCAPSULATED");

  /* The encoder refuses reserved types too. */
  struct mqttsn_msg m = {.type = (enum mqttsn_type)0x03};
  uint8_t out[16];
  ASSERT_EQ(mqttsn_encoded_size(&m), PROTO_INVALID_ARG);
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), PROTO_INVALID_ARG);
  m.type = (enum mqttsn_type)0xFF;
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), PROTO_INVALID_ARG);
}

/* A PUBLISH whose data is d octets, QoS 0, topic id 1. */
static struct mqttsn_msg publish_of(const uint8_t *data, size_t d)
{
  struct mqttsn_msg m = {.type = MQTTSN_PUBLISH};
  m.u.publish.topic_id = 1;
  m.u.publish.data.p = data;
  m.u.publish.data.len = d;
  return m;
}

/*
 * docs/protocol-notes.md §2.1: the 1-octet form holds totals up to 255.  The encoder's totals go
 * 254, 255 (1 octet), then 258, 259 (3 octets), since adding the two extra
 * Length octets to a 254-octet message skips 256 and 257.  A peer may still
 * send 256 and 257 (and anything smaller) in the 3-octet form; we accept it.
 */
static void test_length_boundary(void)
{
  static uint8_t data[300], out[320], in[320];
  struct mqttsn_msg m, got;
  size_t n;

  for (size_t i = 0; i < sizeof data; i++)
    data[i] = (uint8_t)i;

  /* body 252 -> total 254, 1-octet form */
  m = publish_of(data, 247);
  ASSERT_EQ(mqttsn_encoded_size(&m), 254);
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 254);
  ASSERT_EQ(out[0], 254);
  ASSERT_EQ(out[1], MQTTSN_PUBLISH);
  ASSERT_EQ(mqttsn_decode(out, 254, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, &m));

  /* body 253 -> total 255 still fits one octet */
  m = publish_of(data, 248);
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 255);
  ASSERT_EQ(out[0], 255);
  ASSERT_EQ(out[1], MQTTSN_PUBLISH);
  ASSERT_EQ(mqttsn_decode(out, 255, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, &m));

  /* body 254 -> needs the 3-octet form: 258, not Paho's lying 255/256 */
  m = publish_of(data, 249);
  ASSERT_EQ(mqttsn_encoded_size(&m), 258);
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 258);
  ASSERT_EQ(out[0], 0x01);
  ASSERT_EQ(out[1], 0x01);
  ASSERT_EQ(out[2], 0x02);
  ASSERT_EQ(out[3], MQTTSN_PUBLISH);
  ASSERT_MEM_EQ(out + 9, data, 249);
  ASSERT_EQ(mqttsn_decode(out, 258, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, &m));
  ASSERT_EQ(mqttsn_encode(&m, out, 257), PROTO_BUF_TOO_SMALL);

  /* body 255 -> 259 */
  m = publish_of(data, 250);
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 259);
  ASSERT_EQ(out[2], 0x03);
  ASSERT_EQ(mqttsn_decode(out, 259, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, &m));

  /* Totals 256 and 257 arrive only in the 3-octet form; accept them, and
   * re-encode them canonically as 254 and 255 in the 1-octet form. */
  for (size_t total = 256; total <= 257; total++) {
    size_t d = total - 9;
    in[0] = 0x01;
    in[1] = (uint8_t)(total >> 8);
    in[2] = (uint8_t)(total & 0xFF);
    in[3] = MQTTSN_PUBLISH;
    in[4] = 0x00;
    in[5] = 0x00;
    in[6] = 0x01;
    in[7] = 0x00;
    in[8] = 0x00;
    memcpy(in + 9, data, d);
    ASSERT_EQ(mqttsn_decode(in, total, &got), PROTO_OK);
    ASSERT_EQ(got.u.publish.data.len, d);
    ASSERT_MEM_EQ(got.u.publish.data.p, data, d);
    ASSERT_EQ(mqttsn_encode(&got, out, sizeof out), (int)total - 2);
    ASSERT_EQ(out[0], total - 2);
    ASSERT_EQ(decode_exact(in, total - 1), PROTO_MALFORMED);
    ASSERT_EQ(decode_exact(in, total + 1), PROTO_MALFORMED);
  }

  /* The 1-octet form can never claim 256+; 0xFF with 256 octets is wrong. */
  m = publish_of(data, 248);
  n = (size_t)mqttsn_encode(&m, in, sizeof in);
  in[n] = 0;
  ASSERT_EQ(decode_exact(in, n + 1), PROTO_MALFORMED);

  /* Every length from the smallest PUBLISH to past the boundary round-trips,
   * with the form switching exactly at 255/258. */
  for (size_t d = 0; d <= 260; d++) {
    int size;
    m = publish_of(data, d);
    size = mqttsn_encode(&m, out, sizeof out);
    ASSERT_EQ(size, d + 7 <= 255 ? d + 7 : d + 9);
    ASSERT_EQ(out[0] == 0x01, d + 7 > 255);
    ASSERT_EQ(mqttsn_decode(out, (size_t)size, &got), PROTO_OK);
    ASSERT_TRUE(msg_eq(&got, &m));
  }
}

/* The largest total the Length field can express is 65535. */
static void test_max_size(void)
{
  uint8_t *data = calloc(1, MAXBUF), *out = malloc(MAXBUF);
  struct mqttsn_msg m, got;

  if (!data || !out) {
    ASSERT_TRUE(!"out of memory");
    goto free_buffers;
  }
  m = publish_of(data, 65535 - 9);
  ASSERT_EQ(mqttsn_encoded_size(&m), 65535);
  ASSERT_EQ(mqttsn_encode(&m, out, MAXBUF), 65535);
  ASSERT_EQ(out[1], 0xFF);
  ASSERT_EQ(out[2], 0xFF);
  ASSERT_EQ(mqttsn_decode(out, 65535, &got), PROTO_OK);
  ASSERT_EQ(got.u.publish.data.len, 65535 - 9);
  ASSERT_EQ(decode_exact(out, 65535), PROTO_OK);
  ASSERT_EQ(decode_exact(out, 65534), PROTO_MALFORMED);
  ASSERT_EQ(decode_exact(out, 65536), PROTO_MALFORMED);

  m = publish_of(data, 65535 - 8);
  ASSERT_EQ(mqttsn_encoded_size(&m), PROTO_TOO_BIG);
  ASSERT_EQ(mqttsn_encode(&m, out, MAXBUF), PROTO_TOO_BIG);
  m = publish_of(data, (size_t)1 << 20);
  ASSERT_EQ(mqttsn_encoded_size(&m), PROTO_TOO_BIG);

  /* ENCAPSULATED: its Length covers only the prefix, but the datagram as a
   * whole must still fit 65535 octets. */
  m = publish_of(data, 65535 - 9);
  ASSERT_EQ(mqttsn_encode(&m, out, MAXBUF), 65535);
  got = (struct mqttsn_msg){.type = MQTTSN_ENCAPSULATED};
  got.u.encap.node_id = (struct mqttsn_str)S("n");
  got.u.encap.inner.p = out;
  got.u.encap.inner.len = 65535;
  ASSERT_EQ(mqttsn_encoded_size(&got), PROTO_TOO_BIG);

free_buffers:
  free(data);
  free(out);
}

/* ---- per-type malformed input ----------------------------------------- */

static void test_connect_malformed(void)
{
  struct mqttsn_msg m;
  uint8_t b[64];
  size_t n;

  /* §5.3.8: ProtocolId 0x01 is the only valid value. */
  ASSERT_EQ(decode_hex_rc("0c 04 0c 02 00 3c 6c 65 61 66 30 31"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("0c 04 0c 00 00 3c 6c 65 61 66 30 31"), PROTO_MALFORMED);
  /* MQTT-SN 2.0's CONNECT is type 0x01 = SEARCHGW in v1.2; a v2.0 CONNECT
   * with ProtocolId 0x02 in the v1.2 position is refused, not misread. */
  ASSERT_EQ(decode_hex_rc("07 04 00 02 00 3c 63"), PROTO_MALFORMED);
  /* §5.3.1: ClientId is 1..23 characters; empty is malformed ... */
  ASSERT_EQ(decode_hex_rc("06 04 0c 01 00 3c"), PROTO_MALFORMED);
  /* ... but the upper bound is the caller's policy (mqttsn.h). */
  n = unhex("1e 04 04 01 00 0a", b);
  memset(b + n, 'a', 24);
  ASSERT_EQ(mqttsn_decode(b, n + 24, &m), PROTO_OK);
  ASSERT_EQ(m.u.connect.client_id.len, 24);
  /* Flags: QoS -1 and TopicIdType 0b11 are reserved here. */
  ASSERT_EQ(decode_hex_rc("07 04 6c 01 00 3c 63"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("07 04 0f 01 00 3c 63"), PROTO_MALFORMED);
  /* Truncated before Duration is complete. */
  ASSERT_EQ(decode_hex_rc("05 04 0c 01 00"), PROTO_MALFORMED);
}

static void test_willtopic_malformed(void)
{
  struct mqttsn_msg m;
  uint8_t b[8];

  for (int t = 0; t < 2; t++) {
    const char *type = t == 0 ? "07" : "1a";
    char hex[64];

    /* Flags with no topic: neither the empty form nor a topic. */
    snprintf(hex, sizeof hex, "03 %s 30", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
    /* QoS -1 is PUBLISH-only. */
    snprintf(hex, sizeof hex, "06 %s 70 77 2f 74", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
    /* TopicIdType 0b11. */
    snprintf(hex, sizeof hex, "06 %s 33 77 2f 74", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
    /* QoS 2 with Retain is fine. */
    snprintf(hex, sizeof hex, "04 %s 50 77", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_OK);
  }
  ASSERT_EQ(mqttsn_decode(b, unhex("04 07 50 77", b), &m), PROTO_OK);
  ASSERT_EQ(m.u.willtopic.flags.qos, 2);
  ASSERT_TRUE(m.u.willtopic.flags.retain);
  ASSERT_TRUE(!m.u.willtopic.empty);
  ASSERT_TRUE(str_is(m.u.willtopic.topic, "w"));
}

static void test_register_malformed(void)
{
  ASSERT_EQ(decode_hex_rc("06 0a 00 00 00 01"), PROTO_MALFORMED); /* empty name */
  ASSERT_EQ(decode_hex_rc("05 0a 00 00 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("07 0a 00 00 00 01 61"), PROTO_OK);
}

static void test_publish_flags(void)
{
  struct mqttsn_msg m;
  uint8_t b[16];
  size_t n;

  /* TopicIdType 0b11 is reserved. */
  ASSERT_EQ(decode_hex_rc("09 0c 23 00 01 00 02 68 69"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("09 0c 63 00 01 00 02 68 69"), PROTO_MALFORMED);
  /* §6.8: QoS -1 with a normal topic id (Paho's long-topic extension looks
   * like this) is decoded for logging but reported malformed. */
  n = unhex("08 0c 60 00 01 00 00 78", b);
  ASSERT_EQ(mqttsn_decode(b, n, &m), PROTO_MALFORMED);
  ASSERT_EQ(m.type, MQTTSN_PUBLISH);
  ASSERT_EQ(m.u.publish.flags.qos, MQTTSN_QOS_M1);
  ASSERT_EQ(m.u.publish.flags.topic_type, MQTTSN_TOPIC_NORMAL);
  ASSERT_EQ(m.u.publish.topic_id, 1);
  ASSERT_TRUE(str_is(m.u.publish.data, "x"));
  /* Truncated inside MsgId. */
  ASSERT_EQ(decode_hex_rc("06 0c 20 00 01 00"), PROTO_MALFORMED);
}

static void test_subscribe_malformed(void)
{
  for (int t = 0; t < 2; t++) {
    const char *type = t == 0 ? "12" : "14";
    char hex[64];

    /* QoS -1 is PUBLISH-only, in UNSUBSCRIBE as well. */
    snprintf(hex, sizeof hex, "08 %s 60 00 03 73 2f 23", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
    /* TopicIdType 0b11. */
    snprintf(hex, sizeof hex, "07 %s 03 00 03 00 05", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
    /* Normal: a name of at least one octet. */
    snprintf(hex, sizeof hex, "05 %s 00 00 03", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
    snprintf(hex, sizeof hex, "06 %s 00 00 03 23", type);
    ASSERT_EQ(decode_hex_rc(hex), PROTO_OK);
    /* Pre-defined and short: exactly two octets of TopicId. */
    for (int tt = 1; tt <= 2; tt++) {
      snprintf(hex, sizeof hex, "05 %s 0%d 00 03", type, tt);
      ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
      snprintf(hex, sizeof hex, "06 %s 0%d 00 03 00", type, tt);
      ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
      snprintf(hex, sizeof hex, "08 %s 0%d 00 03 00 05 00", type, tt);
      ASSERT_EQ(decode_hex_rc(hex), PROTO_MALFORMED);
      snprintf(hex, sizeof hex, "07 %s 0%d 00 03 00 05", type, tt);
      ASSERT_EQ(decode_hex_rc(hex), PROTO_OK);
    }
  }
}

static void test_suback_and_return_codes(void)
{
  /* SUBACK: QoS -1 and TopicIdType 0b11 are reserved here. */
  ASSERT_EQ(decode_hex_rc("08 13 60 00 07 00 03 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("08 13 23 00 07 00 03 00"), PROTO_MALFORMED);
  /* §5.3.10: ReturnCode 0x04-0xFF is reserved, wherever it appears. */
  ASSERT_EQ(decode_hex_rc("08 13 20 00 07 00 03 04"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 05 04"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 05 ff"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 05 03"), PROTO_OK);
  ASSERT_EQ(decode_hex_rc("07 0b 00 01 00 01 04"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("07 0d 00 01 00 02 80"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 1b 04"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 1d 10"), PROTO_MALFORMED);
}

static void test_optional_fields(void)
{
  /* DISCONNECT is 2 or 4 octets, nothing in between or beyond. */
  ASSERT_EQ(decode_hex_rc("03 18 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("05 18 00 00 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("04 18 00 00"), PROTO_OK);
  /* GWINFO needs its GwId; GwAdd is free-form. */
  ASSERT_EQ(decode_hex_rc("02 02"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("04 02 01 00"), PROTO_OK);
  /* Messages with no fields have no room for any. */
  ASSERT_EQ(decode_hex_rc("03 06 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 08 00"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("03 17 00"), PROTO_MALFORMED);
  /* SEARCHGW / ADVERTISE sizes. */
  ASSERT_EQ(decode_hex_rc("02 01"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("04 00 05 03"), PROTO_MALFORMED);
}

static void test_encapsulated(void)
{
  struct mqttsn_msg outer, inner;
  uint8_t b[64];
  size_t n;

  /* An empty Wireless Node Id cannot identify a node. */
  ASSERT_EQ(decode_hex_rc("03 fe 01 02 16"), PROTO_MALFORMED);
  /* Length shorter than the header plus Ctrl. */
  ASSERT_EQ(decode_hex_rc("02 fe"), PROTO_MALFORMED);
  /* Length running past the datagram. */
  ASSERT_EQ(decode_hex_rc("09 fe 01 ab cd 02 16"), PROTO_MALFORMED);
  /* No inner message, or a fragment of one. */
  ASSERT_EQ(decode_hex_rc("05 fe 01 ab cd"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("05 fe 01 ab cd 02"), PROTO_MALFORMED);
  /* Inner framing disagrees with what follows. */
  ASSERT_EQ(decode_hex_rc("05 fe 01 ab cd 03 16"), PROTO_MALFORMED);
  ASSERT_EQ(decode_hex_rc("05 fe 01 ab cd 02 16 00"), PROTO_MALFORMED);
  /* Nested encapsulation is refused. */
  ASSERT_EQ(decode_hex_rc("05 fe 01 ab cd 05 fe 01 ab cd 02 16"), PROTO_MALFORMED);
  /* Long forms, outside and inside. */
  n = unhex("01 00 07 fe 01 ab cd 01 00 04 16", b);
  ASSERT_EQ(mqttsn_decode(b, n, &outer), PROTO_OK);
  ASSERT_EQ(outer.u.encap.ctrl, 1);
  ASSERT_EQ(outer.u.encap.node_id.len, 2);
  ASSERT_EQ(outer.u.encap.inner.len, 4);
  ASSERT_EQ(mqttsn_decode(outer.u.encap.inner.p, outer.u.encap.inner.len, &inner), PROTO_OK);
  ASSERT_EQ(inner.type, MQTTSN_PINGREQ);
  /* The inner message is framed but not decoded: a reserved inner type
   * passes the outer decode and is the caller's to reject. */
  n = unhex("05 fe 01 ab cd 02 03", b);
  ASSERT_EQ(mqttsn_decode(b, n, &outer), PROTO_OK);
  ASSERT_EQ(mqttsn_decode(outer.u.encap.inner.p, outer.u.encap.inner.len, &inner),
            PROTO_UNSUPPORTED);
  /* The golden inner PUBLISH decodes. */
  n = unhex("04 fe 00 09 08 0c 62 61 62 00 00 78", b);
  ASSERT_EQ(mqttsn_decode(b, n, &outer), PROTO_OK);
  ASSERT_EQ(mqttsn_decode(outer.u.encap.inner.p, outer.u.encap.inner.len, &inner), PROTO_OK);
  ASSERT_EQ(inner.u.publish.topic_id, 0x6162);
  ASSERT_TRUE(str_is(inner.u.publish.data, "x"));
}

/* ---- encoder argument checks ------------------------------------------ */

static void expect_invalid(const struct mqttsn_msg *m)
{
  uint8_t out[64];

  ASSERT_EQ(mqttsn_encoded_size(m), PROTO_INVALID_ARG);
  ASSERT_EQ(mqttsn_encode(m, out, sizeof out), PROTO_INVALID_ARG);
}

static void test_encode_invalid(void)
{
  struct mqttsn_msg m;
  uint8_t out[64], sentinel[64];

  ASSERT_EQ(mqttsn_encoded_size(NULL), PROTO_INVALID_ARG);
  ASSERT_EQ(mqttsn_encode(NULL, out, sizeof out), PROTO_INVALID_ARG);

  m = goldens[0].msg;
  ASSERT_EQ(mqttsn_encode(&m, NULL, 0), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(mqttsn_encode(&m, NULL, 100), PROTO_BUF_TOO_SMALL);
  /* A too-small buffer is left untouched. */
  memset(out, 0x5A, sizeof out);
  memcpy(sentinel, out, sizeof out);
  ASSERT_EQ(mqttsn_encode(&m, out, 4), PROTO_BUF_TOO_SMALL);
  ASSERT_MEM_EQ(out, sentinel, sizeof out);

  /* QoS outside 0, 1, 2, -1 and TopicIdType 0b11. */
  m = publish_of((const uint8_t *)"x", 1);
  m.u.publish.flags.qos = 3;
  expect_invalid(&m);
  m.u.publish.flags.qos = -2;
  expect_invalid(&m);
  m.u.publish.flags.qos = 0;
  m.u.publish.flags.topic_type = (enum mqttsn_topic_type)3;
  expect_invalid(&m);
  /* §6.8: QoS -1 needs a pre-defined or short topic. */
  m.u.publish.flags.qos = MQTTSN_QOS_M1;
  m.u.publish.flags.topic_type = MQTTSN_TOPIC_NORMAL;
  expect_invalid(&m);
  m.u.publish.flags.topic_type = MQTTSN_TOPIC_SHORT;
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 8);
  /* A NULL pointer with a non-zero length. */
  m.u.publish.data.p = NULL;
  expect_invalid(&m);
  m.u.publish.data.len = 0;
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 7);

  /* QoS -1 anywhere but PUBLISH. */
  m = (struct mqttsn_msg){.type = MQTTSN_SUBSCRIBE,
                          .u.subscribe = {.flags = {.qos = MQTTSN_QOS_M1}, .topic_name = S("t")}};
  expect_invalid(&m);
  m.type = MQTTSN_UNSUBSCRIBE;
  expect_invalid(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_SUBACK, .u.suback = {.flags = {.qos = MQTTSN_QOS_M1}}};
  expect_invalid(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_WILLTOPIC,
                          .u.willtopic = {.flags = {.qos = MQTTSN_QOS_M1}, .topic = S("t")}};
  expect_invalid(&m);
  m.type = MQTTSN_WILLTOPICUPD;
  expect_invalid(&m);
  /* Non-empty WILLTOPIC with an empty topic. */
  m.u.willtopic.flags.qos = 0;
  m.u.willtopic.topic.len = 0;
  expect_invalid(&m);
  m.u.willtopic.empty = true; /* the empty form ignores the rest */
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 2);

  /* SUBSCRIBE by name with no name. */
  m = (struct mqttsn_msg){.type = MQTTSN_SUBSCRIBE};
  expect_invalid(&m);

  /* CONNECT: ProtocolId and ClientId. */
  m = goldens[4].msg;
  ASSERT_EQ(m.type, MQTTSN_CONNECT);
  m.u.connect.protocol_id = 0;
  expect_invalid(&m);
  m.u.connect.protocol_id = 2;
  expect_invalid(&m);
  m.u.connect.protocol_id = 1;
  m.u.connect.client_id.len = 0;
  expect_invalid(&m);
  m = goldens[4].msg;
  m.u.connect.flags.qos = MQTTSN_QOS_M1;
  expect_invalid(&m);

  /* REGISTER with no name. */
  m = (struct mqttsn_msg){.type = MQTTSN_REGISTER};
  expect_invalid(&m);

  /* Reserved return codes. */
  m = (struct mqttsn_msg){.type = MQTTSN_CONNACK, .u.connack = {.rc = 4}};
  expect_invalid(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_REGACK, .u.regack = {.rc = 0xFF}};
  expect_invalid(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_PUBACK, .u.puback = {.rc = 4}};
  expect_invalid(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_SUBACK, .u.suback = {.rc = 4}};
  expect_invalid(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_WILLMSGRESP, .u.resp = {.rc = 4}};
  expect_invalid(&m);

  /* ENCAPSULATED: node id, inner framing, nesting. */
  m = (struct mqttsn_msg){.type = MQTTSN_ENCAPSULATED, .u.encap = {.inner = S("\x02\x16")}};
  expect_invalid(&m);
  m.u.encap.node_id = (struct mqttsn_str)S("n");
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 6);
  m.u.encap.inner = (struct mqttsn_str)S("\x03\x16");
  expect_invalid(&m);
  m.u.encap.inner = (struct mqttsn_str)S("\x02");
  expect_invalid(&m);
  m.u.encap.inner = (struct mqttsn_str)S("\x01\x00\x05\x16");
  expect_invalid(&m);
  m.u.encap.inner = (struct mqttsn_str)S("\x01\x00\x04\x16");
  ASSERT_EQ(mqttsn_encode(&m, out, sizeof out), 8);
  m.u.encap.inner = (struct mqttsn_str)S("\x05\xfe\x01\xab\xcd\x02\x16");
  expect_invalid(&m);
}

/* ---- encoded size against cap, every type ------------------------------ */

/*
 * Points the variable-length field of m (if its type has one) at len octets
 * of text.  Returns false for the types whose size is fixed, and for the
 * forms that carry no variable field (empty WILLTOPIC, SUBSCRIBE by id).
 */
static bool set_variable_field(struct mqttsn_msg *m, const uint8_t *text, size_t len)
{
  struct mqttsn_str *s;

  switch (m->type) {
  case MQTTSN_GWINFO:
    s = &m->u.gwinfo.gw_add;
    break;
  case MQTTSN_CONNECT:
    s = &m->u.connect.client_id;
    break;
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLTOPICUPD:
    if (m->u.willtopic.empty)
      return false;
    s = &m->u.willtopic.topic;
    break;
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLMSGUPD:
    s = &m->u.willmsg.msg;
    break;
  case MQTTSN_REGISTER:
    s = &m->u.reg.topic_name;
    break;
  case MQTTSN_PUBLISH:
    s = &m->u.publish.data;
    break;
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    if (m->u.subscribe.flags.topic_type != MQTTSN_TOPIC_NORMAL)
      return false;
    s = &m->u.subscribe.topic_name;
    break;
  case MQTTSN_PINGREQ:
    s = &m->u.pingreq.client_id;
    break;
  case MQTTSN_ENCAPSULATED:
    s = &m->u.encap.node_id;
    break;
  default:
    return false;
  }
  s->p = text;
  s->len = len;
  return true;
}

/*
 * The size mqttsn_encoded_size predicts is the size mqttsn_encode writes,
 * and its Length field tells the truth in the canonical form; then every
 * cap below that size is refused, in an exact-size heap buffer (so ASan
 * reports a write one octet past cap) that is left untouched.
 */
static void check_size_and_caps(const struct mqttsn_msg *m)
{
  static uint8_t full[1024], untouched[1024];
  struct mqttsn_msg got;
  size_t n, declared, outside;
  uint8_t *buf;
  int size = mqttsn_encoded_size(m);

  ASSERT_TRUE(size > 0 && (size_t)size <= sizeof full);
  if (size <= 0 || (size_t)size > sizeof full)
    return;
  n = (size_t)size;
  memset(untouched, 0x5A, sizeof untouched);
  memset(full, 0xEE, sizeof full);
  ASSERT_EQ(mqttsn_encode(m, full, sizeof full), n);
  ASSERT_EQ(full[n], 0xEE);
  ASSERT_EQ(mqttsn_decode(full, n, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, m));

  /* The Length field: one octet up to 255, else 0x01 and a uint16; it covers
   * everything but ENCAPSULATED's inner message (§5.5). */
  outside = m->type == MQTTSN_ENCAPSULATED ? m->u.encap.inner.len : 0;
  declared = full[0] == 0x01 ? (size_t)full[1] << 8 | full[2] : full[0];
  ASSERT_EQ(declared + outside, n);
  ASSERT_EQ(full[0] == 0x01, declared > 255);

  for (size_t cap = 0; cap <= n; cap++) {
    /* malloc(0) may return NULL; the encoder must then refuse NULL too. */
    buf = malloc(cap);
    if (cap > 0 && !buf) {
      ASSERT_TRUE(!"out of memory");
      return;
    }
    if (cap > 0)
      memset(buf, 0x5A, cap);
    if (cap < n) {
      ASSERT_EQ(mqttsn_encode(m, buf, cap), PROTO_BUF_TOO_SMALL);
      if (cap > 0)
        ASSERT_MEM_EQ(buf, untouched, cap);
    } else {
      ASSERT_EQ(mqttsn_encode(m, buf, cap), n);
      ASSERT_MEM_EQ(buf, full, n);
    }
    free(buf);
  }
}

static void test_size_and_caps(void)
{
  static uint8_t text[400];
  /* Around the switch from the 1-octet to the 3-octet form for every fixed
   * prefix (0 to 5 octets before the variable field), and well past it. */
  const size_t lens[] = {1, 2, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256, 300, 400};
  bool seen[256] = {false};
  int types = 0;

  for (size_t i = 0; i < sizeof text; i++)
    text[i] = (uint8_t)('A' + i % 26);
  for (size_t g = 0; g < NGOLDEN; g++) {
    struct mqttsn_msg m = goldens[g].msg;
    int ok = test_failures;

    if (!seen[m.type])
      types++;
    seen[m.type] = true;
    check_size_and_caps(&m);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
      if (set_variable_field(&m, text, lens[i]))
        check_size_and_caps(&m);
    if (test_failures != ok)
      fprintf(stderr, "  in sizes of \"%s\"\n", goldens[g].name);
  }
  ASSERT_EQ(types, 28);
}

/* ---- round trips ------------------------------------------------------ */

/* encode -> decode -> same fields -> encode -> same bytes. */
static void round_trip(const struct mqttsn_msg *m)
{
  static uint8_t a[MAXBUF], b[MAXBUF];
  struct mqttsn_msg got;
  int na, nb;

  na = mqttsn_encode(m, a, sizeof a);
  ASSERT_TRUE(na > 0);
  if (na <= 0)
    return;
  ASSERT_EQ(mqttsn_encoded_size(m), na);
  ASSERT_EQ(mqttsn_decode(a, (size_t)na, &got), PROTO_OK);
  ASSERT_TRUE(msg_eq(&got, m));
  nb = mqttsn_encode(&got, b, sizeof b);
  ASSERT_EQ(nb, na);
  ASSERT_MEM_EQ(a, b, (size_t)na);
}

static void test_round_trips(void)
{
  static uint8_t text[600];
  struct mqttsn_msg m;
  const size_t lens[] = {1, 2, 22, 23, 24, 248, 249, 250, 251, 252, 253, 254, 255, 256, 300, 599};

  for (size_t i = 0; i < sizeof text; i++)
    text[i] = (uint8_t)('a' + i % 26);

  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    struct mqttsn_str s = {text, lens[i]};

    m = (struct mqttsn_msg){.type = MQTTSN_CONNECT,
                            .u.connect = {.flags = {.clean_session = true}, .protocol_id = 1,
                                          .duration = 30, .client_id = s}};
    round_trip(&m);
    m = (struct mqttsn_msg){.type = MQTTSN_GWINFO, .u.gwinfo = {.gw_id = 9, .gw_add = s}};
    round_trip(&m);
    m = (struct mqttsn_msg){.type = MQTTSN_REGISTER,
                            .u.reg = {.topic_id = 0xFFFE, .msg_id = 0x8001, .topic_name = s}};
    round_trip(&m);
    for (int t = 0; t < 2; t++) {
      m = (struct mqttsn_msg){.type = t ? MQTTSN_WILLTOPICUPD : MQTTSN_WILLTOPIC,
                              .u.willtopic = {.flags = {.qos = 2, .retain = true}, .topic = s}};
      round_trip(&m);
      m = (struct mqttsn_msg){.type = t ? MQTTSN_WILLMSGUPD : MQTTSN_WILLMSG,
                              .u.willmsg = {.msg = s}};
      round_trip(&m);
      m = (struct mqttsn_msg){.type = t ? MQTTSN_UNSUBSCRIBE : MQTTSN_SUBSCRIBE,
                              .u.subscribe = {.flags = {.qos = t ? 0 : 1}, .msg_id = 77,
                                              .topic_name = s}};
      round_trip(&m);
    }
    m = (struct mqttsn_msg){.type = MQTTSN_PINGREQ, .u.pingreq = {.client_id = s}};
    round_trip(&m);
    m = (struct mqttsn_msg){.type = MQTTSN_ENCAPSULATED,
                            .u.encap = {.ctrl = 3, .node_id = s, .inner = S("\x03\x05\x00")}};
    round_trip(&m);
  }

  /* PUBLISH over every legal flag combination. */
  for (int qos = -1; qos <= 2; qos++)
    for (int tt = 0; tt <= 2; tt++)
      for (int bits = 0; bits < 16; bits++) {
        if (qos == MQTTSN_QOS_M1 && tt == MQTTSN_TOPIC_NORMAL)
          continue;
        m = publish_of(text, (size_t)bits * 17);
        m.u.publish.flags = FL(.dup = bits & 1, .qos = qos, .retain = bits & 2, .will = bits & 4,
                               .clean_session = bits & 8,
                               .topic_type = (enum mqttsn_topic_type)tt);
        m.u.publish.topic_id = (uint16_t)(0x0101 * bits);
        m.u.publish.msg_id = (uint16_t)(0xF00F ^ bits);
        round_trip(&m);
      }

  /* The fixed-size types over extreme field values. */
  m = (struct mqttsn_msg){.type = MQTTSN_ADVERTISE, .u.advertise = {0xFF, 0xFFFF}};
  round_trip(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_PUBACK, .u.puback = {0xFFFF, 0xFFFF, 3}};
  round_trip(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_REGACK, .u.regack = {0x8000, 0x0001, 1}};
  round_trip(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_SUBACK,
                          .u.suback = {.flags = {.qos = 2, .dup = true}, 0xFFFF, 0, 2}};
  round_trip(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_DISCONNECT, .u.disconnect = {true, 0}};
  round_trip(&m);
  m = (struct mqttsn_msg){.type = MQTTSN_SEARCHGW, .u.searchgw = {0xFF}};
  round_trip(&m);
}

/* ---- flags byte (§5.3.4) ---------------------------------------------- */

static void test_flags(void)
{
  struct mqttsn_flags f;
  int malformed = 0;

  ASSERT_EQ(mqttsn_flags_decode(0x80, &f), PROTO_OK);
  ASSERT_TRUE(f.dup && f.qos == 0 && !f.retain && !f.will && !f.clean_session);
  ASSERT_EQ(mqttsn_flags_decode(0x20, &f), PROTO_OK);
  ASSERT_EQ(f.qos, 1);
  ASSERT_EQ(mqttsn_flags_decode(0x40, &f), PROTO_OK);
  ASSERT_EQ(f.qos, 2);
  ASSERT_EQ(mqttsn_flags_decode(0x60, &f), PROTO_OK);
  ASSERT_EQ(f.qos, MQTTSN_QOS_M1);
  ASSERT_EQ(mqttsn_flags_decode(0x10, &f), PROTO_OK);
  ASSERT_TRUE(f.retain && !f.will);
  ASSERT_EQ(mqttsn_flags_decode(0x08, &f), PROTO_OK);
  ASSERT_TRUE(f.will && !f.clean_session);
  ASSERT_EQ(mqttsn_flags_decode(0x04, &f), PROTO_OK);
  ASSERT_TRUE(f.clean_session && f.topic_type == MQTTSN_TOPIC_NORMAL);
  ASSERT_EQ(mqttsn_flags_decode(0x01, &f), PROTO_OK);
  ASSERT_EQ(f.topic_type, MQTTSN_TOPIC_PREDEFINED);
  ASSERT_EQ(mqttsn_flags_decode(0x02, &f), PROTO_OK);
  ASSERT_EQ(f.topic_type, MQTTSN_TOPIC_SHORT);
  ASSERT_EQ(mqttsn_flags_decode(0x03, &f), PROTO_MALFORMED);

  ASSERT_EQ(mqttsn_flags_encode(&FL(.qos = MQTTSN_QOS_M1, .topic_type = MQTTSN_TOPIC_SHORT)), 0x62);
  ASSERT_EQ(mqttsn_flags_encode(&FL(.will = true, .clean_session = true)), 0x0C);
  ASSERT_EQ(mqttsn_flags_encode(&FL(.dup = true, .qos = 2, .retain = true)), 0xD0);

  /* Every byte except TopicIdType 0b11 survives decode -> encode. */
  for (int b = 0; b < 256; b++) {
    if (mqttsn_flags_decode((uint8_t)b, &f) < 0) {
      malformed++;
      continue;
    }
    ASSERT_EQ(mqttsn_flags_encode(&f), b);
  }
  ASSERT_EQ(malformed, 64);
}

/* ---- the wire cursor -------------------------------------------------- */

static void test_wire(void)
{
  const uint8_t in[] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde};
  struct wire_reader r;
  struct wire_writer w;
  const uint8_t *p;
  uint8_t u8, out[8];
  uint16_t u16;
  uint32_t u32;
  size_t n;

  wire_reader_init(&r, in, sizeof in);
  ASSERT_EQ(wire_read_u8(&r, &u8), PROTO_OK);
  ASSERT_EQ(u8, 0x12);
  ASSERT_EQ(wire_read_u16(&r, &u16), PROTO_OK);
  ASSERT_EQ(u16, 0x3456);
  ASSERT_EQ(wire_read_u32(&r, &u32), PROTO_OK);
  ASSERT_EQ(u32, 0x789abcdeu);
  ASSERT_EQ(wire_remaining(&r), 0);
  ASSERT_EQ(wire_read_u8(&r, &u8), PROTO_MALFORMED);
  ASSERT_EQ(wire_read_bytes(&r, 0, &p), PROTO_OK);

  /* A failed read leaves the cursor where it was. */
  wire_reader_init(&r, in, 3);
  ASSERT_EQ(wire_read_u32(&r, &u32), PROTO_MALFORMED);
  ASSERT_EQ(wire_pos(&r), 0);
  ASSERT_EQ(wire_read_u8(&r, &u8), PROTO_OK);
  ASSERT_EQ(wire_read_u16(&r, &u16), PROTO_OK);
  ASSERT_EQ(wire_read_u16(&r, &u16), PROTO_MALFORMED);
  ASSERT_EQ(wire_pos(&r), 3);

  /* Huge lengths cannot wrap the bounds check. */
  wire_reader_init(&r, in, sizeof in);
  ASSERT_EQ(wire_read_u8(&r, &u8), PROTO_OK);
  ASSERT_EQ(wire_read_bytes(&r, SIZE_MAX, &p), PROTO_MALFORMED);
  ASSERT_EQ(wire_read_bytes(&r, 7, &p), PROTO_MALFORMED);
  ASSERT_EQ(wire_read_bytes(&r, 6, &p), PROTO_OK);
  ASSERT_TRUE(p == in + 1);
  wire_reader_init(&r, in, sizeof in);
  ASSERT_EQ(wire_read_u16(&r, &u16), PROTO_OK);
  wire_read_rest(&r, &p, &n);
  ASSERT_EQ(n, 5);
  ASSERT_TRUE(p == in + 2);
  ASSERT_EQ(wire_remaining(&r), 0);

  /* An empty reader. */
  wire_reader_init(&r, NULL, 5);
  ASSERT_EQ(wire_remaining(&r), 0);
  ASSERT_EQ(wire_read_u8(&r, &u8), PROTO_MALFORMED);

  wire_writer_init(&w, out, 7);
  ASSERT_EQ(wire_write_u8(&w, 0x12), PROTO_OK);
  ASSERT_EQ(wire_write_u16(&w, 0x3456), PROTO_OK);
  ASSERT_EQ(wire_write_u32(&w, 0x789abcde), PROTO_OK);
  ASSERT_EQ(wire_written(&w), 7);
  ASSERT_MEM_EQ(out, in, 7);
  ASSERT_EQ(wire_write_u8(&w, 0), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(wire_write_bytes(&w, NULL, 0), PROTO_OK);
  ASSERT_EQ(wire_write_bytes(&w, in, 1), PROTO_BUF_TOO_SMALL);
  wire_writer_init(&w, out, 3);
  ASSERT_EQ(wire_write_u32(&w, 1), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(wire_written(&w), 0);
  ASSERT_EQ(wire_write_bytes(&w, in, SIZE_MAX), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(wire_write_bytes(&w, NULL, 2), PROTO_INVALID_ARG);
  ASSERT_EQ(wire_write_bytes(&w, in, 3), PROTO_OK);
  ASSERT_EQ(wire_written(&w), 3);
  wire_writer_init(&w, NULL, 10);
  ASSERT_EQ(wire_write_u8(&w, 0), PROTO_BUF_TOO_SMALL);

  /* A measuring writer counts what a real one would write, stores nothing,
   * and refuses what a real one refuses. */
  wire_writer_init_measure(&w);
  ASSERT_EQ(wire_write_u8(&w, 1), PROTO_OK);
  ASSERT_EQ(wire_write_u16(&w, 2), PROTO_OK);
  ASSERT_EQ(wire_write_u32(&w, 3), PROTO_OK);
  ASSERT_EQ(wire_write_bytes(&w, in, sizeof in), PROTO_OK);
  ASSERT_EQ(wire_write_bytes(&w, NULL, 0), PROTO_OK);
  ASSERT_EQ(wire_written(&w), 7 + sizeof in);
  ASSERT_EQ(wire_write_bytes(&w, NULL, 2), PROTO_INVALID_ARG);
  ASSERT_EQ(wire_write_bytes(&w, in, SIZE_MAX), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(wire_written(&w), 7 + sizeof in);
}

int main(void)
{
  RUN(test_golden_vectors);
  RUN(test_header_malformed);
  RUN(test_reserved_types);
  RUN(test_length_boundary);
  RUN(test_max_size);
  RUN(test_connect_malformed);
  RUN(test_willtopic_malformed);
  RUN(test_register_malformed);
  RUN(test_publish_flags);
  RUN(test_subscribe_malformed);
  RUN(test_suback_and_return_codes);
  RUN(test_optional_fields);
  RUN(test_encapsulated);
  RUN(test_encode_invalid);
  RUN(test_size_and_caps);
  RUN(test_round_trips);
  RUN(test_flags);
  RUN(test_wire);
  return TEST_END();
}
