/*
 * test_mqtt.c - MQTT 3.1.1 codec: golden bytes for every encoder, Remaining
 * Length boundaries, and the decoder's acceptance and refusal of each packet
 * type a client receives.  Cases named after a conformance clause test that
 * clause.
 */
#include <stdint.h>
#include <string.h>

#include "mqtt.h"
#include "test.h"

#define BYTES(s) ((struct mqtt_bytes){(const uint8_t *)(s), sizeof(s) - 1})

/* Decodes a byte literal and returns the result code. */
#define DECODE(pkt, ...)                                                      \
  decode_bytes((const uint8_t[]){__VA_ARGS__},                                \
               sizeof((const uint8_t[]){__VA_ARGS__}), (pkt))

/* Copies the literal to the very end of a static buffer before decoding:
 * the views in *pkt then outlive the literal (valid until the next DECODE),
 * and a one-byte over-read lands in AddressSanitizer's redzone. */
static int decode_bytes(const uint8_t *b, size_t n, struct mqtt_packet *pkt)
{
  static uint8_t store[256];
  uint8_t *p = store + sizeof store - n;
  memcpy(p, b, n);
  return mqtt_decode(p, n, pkt);
}

/* Encodes with the size-first protocol and checks both calls agree with the
 * expected bytes; every encoder test goes through here. */
static void check_golden(int size, int written, const uint8_t *got,
                         const uint8_t *want, size_t want_len)
{
  ASSERT_EQ(size, (int)want_len);
  ASSERT_EQ(written, (int)want_len);
  if (written == (int)want_len)
    ASSERT_MEM_EQ(got, want, want_len);
}

/* ---- Remaining Length ------------------------------------------------- */

static void check_varint(uint32_t v, const uint8_t *want, size_t n)
{
  uint8_t buf[8];
  uint32_t back = 0xFFFFFFFFu;

  ASSERT_EQ(mqtt_varint_encode(v, NULL, 0), (int)n);
  ASSERT_EQ(mqtt_varint_encode(v, buf, sizeof buf), (int)n);
  ASSERT_MEM_EQ(buf, want, n);
  ASSERT_EQ(mqtt_varint_decode(want, n, &back), (int)n);
  ASSERT_EQ(back, v);
  /* Every strict prefix is incomplete, never an error or a value. */
  for (size_t k = 0; k < n; k++)
    ASSERT_EQ(mqtt_varint_decode(want, k, &back), PROTO_INCOMPLETE);
  /* One byte short of room is refused without writing past it. */
  ASSERT_EQ(mqtt_varint_encode(v, buf, n - 1), PROTO_BUF_TOO_SMALL);
}

static void test_varint_boundaries_2_2_3(void)
{
  check_varint(0, (const uint8_t[]){0x00}, 1);
  check_varint(127, (const uint8_t[]){0x7F}, 1);
  check_varint(128, (const uint8_t[]){0x80, 0x01}, 2);
  check_varint(16383, (const uint8_t[]){0xFF, 0x7F}, 2);
  check_varint(16384, (const uint8_t[]){0x80, 0x80, 0x01}, 3);
  check_varint(2097151, (const uint8_t[]){0xFF, 0xFF, 0x7F}, 3);
  check_varint(2097152, (const uint8_t[]){0x80, 0x80, 0x80, 0x01}, 4);
  check_varint(268435455, (const uint8_t[]){0xFF, 0xFF, 0xFF, 0x7F}, 4);
}

static void test_varint_too_large_encode(void)
{
  uint8_t buf[8];
  ASSERT_EQ(mqtt_varint_encode(268435456u, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_varint_encode(268435456u, NULL, 0), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_varint_encode(0xFFFFFFFFu, buf, sizeof buf), PROTO_INVALID_ARG);
}

static void test_varint_five_bytes_malformed(void)
{
  uint32_t v = 0;
  static const uint8_t five[] = {0xFF, 0xFF, 0xFF, 0xFF, 0x7F};
  static const uint8_t four_cont[] = {0x80, 0x80, 0x80, 0x80};
  ASSERT_EQ(mqtt_varint_decode(five, sizeof five, &v), PROTO_MALFORMED);
  /* The 4th byte's continuation bit alone is enough to know. */
  ASSERT_EQ(mqtt_varint_decode(four_cont, sizeof four_cont, &v), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_varint_decode(four_cont, 3, &v), PROTO_INCOMPLETE);
}

static void test_varint_overlong_malformed(void)
{
  uint32_t v = 0;
  ASSERT_EQ(mqtt_varint_decode((const uint8_t[]){0x80, 0x00}, 2, &v), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_varint_decode((const uint8_t[]){0xFF, 0x80, 0x00}, 3, &v),
            PROTO_MALFORMED);
  ASSERT_EQ(mqtt_varint_decode((const uint8_t[]){0x80, 0x80, 0x80, 0x00}, 4, &v),
            PROTO_MALFORMED);
  /* Trailing bytes after a complete varint are not consumed. */
  ASSERT_EQ(mqtt_varint_decode((const uint8_t[]){0x05, 0x00}, 2, &v), 1);
  ASSERT_EQ(v, 5);
}

/* ---- CONNECT ----------------------------------------------------------- */

static void test_connect_minimal(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {
    0x10, 0x10,                                     /* CONNECT, RL 16 */
    0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04,           /* name, level 4 */
    0x02,                                           /* clean session */
    0x00, 0x3C,                                     /* keepalive 60 */
    0x00, 0x04, 'd', 'e', 'v', '1',                 /* client id */
  };
  c.client_id = BYTES("dev1");
  c.clean_session = true;
  c.keepalive = 60;
  check_golden(mqtt_encode_connect(&c, NULL, 0), mqtt_encode_connect(&c, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_connect_full(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[128];
  static const uint8_t want[] = {
    0x10, 0x29,
    0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04,
    0xF4,             /* user, password, will retain, will QoS 2, will; no clean */
    0x01, 0x2C,       /* keepalive 300 */
    0x00, 0x02, 'i', 'd',
    0x00, 0x05, 'w', '/', 't', 'o', 'p',
    0x00, 0x04, 'g', 'o', 'n', 'e',
    0x00, 0x04, 'u', 's', 'e', 'r',
    0x00, 0x06, 's', 'e', 'c', 'r', 'e', 't',
  };
  c.client_id = BYTES("id");
  c.keepalive = 300;
  c.will = true;
  c.will_topic = BYTES("w/top");
  c.will_payload = BYTES("gone");
  c.will_qos = 2;
  c.will_retain = true;
  c.has_username = true;
  c.username = BYTES("user");
  c.has_password = true;
  c.password = BYTES("secret");
  check_golden(mqtt_encode_connect(&c, NULL, 0), mqtt_encode_connect(&c, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_connect_will_only(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {
    0x10, 0x12,
    0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04,
    0x0E,             /* will QoS 1, will, clean session */
    0x00, 0x00,
    0x00, 0x01, 'c',
    0x00, 0x01, 't',
    0x00, 0x00,       /* empty will message is allowed */
  };
  c.client_id = BYTES("c");
  c.clean_session = true;
  c.will = true;
  c.will_topic = BYTES("t");
  c.will_qos = 1;
  check_golden(mqtt_encode_connect(&c, NULL, 0), mqtt_encode_connect(&c, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_connect_username_only(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {
    0x10, 0x11,
    0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04,
    0x82,
    0x00, 0x0A,
    0x00, 0x01, 'c',
    0x00, 0x02, 'u', 'n',
  };
  c.client_id = BYTES("c");
  c.clean_session = true;
  c.keepalive = 10;
  c.has_username = true;
  c.username = BYTES("un");
  /* Will fields are ignored when will is false [MQTT-3.1.2-11, -13, -15]. */
  c.will_qos = 2;
  c.will_retain = true;
  c.will_topic = BYTES("ignored");
  check_golden(mqtt_encode_connect(&c, NULL, 0), mqtt_encode_connect(&c, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_connect_password_needs_username_3_1_2_22(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  c.client_id = BYTES("c");
  c.clean_session = true;
  c.has_password = true;
  c.password = BYTES("pw");
  ASSERT_EQ(mqtt_encode_connect(&c, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_connect(&c, NULL, 0), PROTO_INVALID_ARG);
}

static void test_connect_empty_client_id_3_1_3_7(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {
    0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
  };
  c.clean_session = false;
  ASSERT_EQ(mqtt_encode_connect(&c, buf, sizeof buf), PROTO_INVALID_ARG);
  c.clean_session = true;
  check_golden(mqtt_encode_connect(&c, NULL, 0), mqtt_encode_connect(&c, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_connect_invalid_args(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  static uint8_t big[65536];

  ASSERT_EQ(mqtt_encode_connect(NULL, buf, sizeof buf), PROTO_INVALID_ARG);
  c.client_id = BYTES("c");
  c.clean_session = true;
  c.will = true;
  c.will_topic = BYTES("t");
  c.will_qos = 3;
  ASSERT_EQ(mqtt_encode_connect(&c, buf, sizeof buf), PROTO_INVALID_ARG);
  c.will_qos = -1;
  ASSERT_EQ(mqtt_encode_connect(&c, buf, sizeof buf), PROTO_INVALID_ARG);
  c.will_qos = 0;
  c.will_topic.len = 0;
  ASSERT_EQ(mqtt_encode_connect(&c, buf, sizeof buf), PROTO_INVALID_ARG);
  c.will_topic = BYTES("t");
  c.will_payload = (struct mqtt_bytes){big, sizeof big};
  ASSERT_EQ(mqtt_encode_connect(&c, NULL, 0), PROTO_INVALID_ARG);
  c.will = false;
  c.client_id = (struct mqtt_bytes){big, sizeof big};
  ASSERT_EQ(mqtt_encode_connect(&c, NULL, 0), PROTO_INVALID_ARG);
  c.client_id = (struct mqtt_bytes){NULL, 3};
  ASSERT_EQ(mqtt_encode_connect(&c, NULL, 0), PROTO_INVALID_ARG);
  /* The largest field lengths still encode. */
  c.client_id = (struct mqtt_bytes){big, 65535};
  ASSERT_EQ(mqtt_encode_connect(&c, NULL, 0), 1 + 3 + 10 + 2 + 65535);
}

static void test_connect_buffer_too_small(void)
{
  struct mqtt_connect c = {0};
  uint8_t buf[64];
  int need;
  c.client_id = BYTES("dev1");
  c.clean_session = true;
  need = mqtt_encode_connect(&c, NULL, 0);
  ASSERT_EQ(need, 18);
  memset(buf, 0xAA, sizeof buf);
  ASSERT_EQ(mqtt_encode_connect(&c, buf, (size_t)need - 1), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(buf[0], 0xAA); /* nothing written */
  ASSERT_EQ(mqtt_encode_connect(&c, NULL, 5), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_connect(&c, buf, (size_t)need), need);
}

/* ---- PUBLISH ----------------------------------------------------------- */

static void test_publish_qos0(void)
{
  struct mqtt_publish p = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'};
  p.topic = BYTES("a/b");
  p.payload = BYTES("hi");
  check_golden(mqtt_encode_publish(&p, NULL, 0), mqtt_encode_publish(&p, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_publish_qos1_retain(void)
{
  struct mqtt_publish p = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {0x33, 0x08, 0x00, 0x01, 't', 0x12, 0x34, 'x', 'y', 'z'};
  p.qos = 1;
  p.retain = true;
  p.packet_id = 0x1234;
  p.topic = BYTES("t");
  p.payload = BYTES("xyz");
  check_golden(mqtt_encode_publish(&p, NULL, 0), mqtt_encode_publish(&p, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_publish_qos2_dup_empty_payload(void)
{
  struct mqtt_publish p = {0};
  uint8_t buf[64];
  static const uint8_t want[] = {0x3C, 0x05, 0x00, 0x01, 't', 0x00, 0x01};
  p.qos = 2;
  p.dup = true;
  p.packet_id = 1;
  p.topic = BYTES("t");
  check_golden(mqtt_encode_publish(&p, NULL, 0), mqtt_encode_publish(&p, buf, sizeof buf),
               buf, want, sizeof want);
}

static void test_publish_rules(void)
{
  struct mqtt_publish p = {0};
  uint8_t buf[64];
  p.topic = BYTES("t");
  /* DUP must be 0 for QoS 0 [MQTT-3.3.1-2]. */
  p.dup = true;
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
  p.dup = false;
  /* QoS 1 and 2 need a non-zero packet id [MQTT-2.3.1-1]. */
  p.qos = 1;
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
  p.qos = 2;
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
  p.qos = 3;
  p.packet_id = 1;
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
  p.qos = -1;
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
  p.qos = 0;
  p.topic.len = 0;
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_publish(NULL, buf, sizeof buf), PROTO_INVALID_ARG);
  p.topic = BYTES("t");
  p.payload = (struct mqtt_bytes){NULL, 1};
  ASSERT_EQ(mqtt_encode_publish(&p, buf, sizeof buf), PROTO_INVALID_ARG);
}

static void test_publish_remaining_length_limit(void)
{
  struct mqtt_publish p = {0};
  /* The payload is never read during a size query, so a fake non-NULL
   * pointer with a huge length is safe here. */
  static const uint8_t dummy;
  p.topic = BYTES("t");
  p.payload = (struct mqtt_bytes){&dummy, MQTT_MAX_REMAINING_LENGTH - 3};
  ASSERT_EQ(mqtt_encode_publish(&p, NULL, 0), 1 + 4 + (int)MQTT_MAX_REMAINING_LENGTH);
  p.payload.len++;
  ASSERT_EQ(mqtt_encode_publish(&p, NULL, 0), PROTO_INVALID_ARG);
  p.payload.len = SIZE_MAX;
  ASSERT_EQ(mqtt_encode_publish(&p, NULL, 0), PROTO_INVALID_ARG);
  /* Remaining Length 127 vs 128 switches to a two-byte varint. */
  p.payload.len = 127 - 3;
  ASSERT_EQ(mqtt_encode_publish(&p, NULL, 0), 1 + 1 + 127);
  p.payload.len = 128 - 3;
  ASSERT_EQ(mqtt_encode_publish(&p, NULL, 0), 1 + 2 + 128);
}

static void test_publish_128_byte_header(void)
{
  static uint8_t payload[125];
  static uint8_t buf[256];
  struct mqtt_publish p = {0};
  struct mqtt_packet pkt;
  int n;
  memset(payload, 'p', sizeof payload);
  p.topic = BYTES("t");
  p.payload = (struct mqtt_bytes){payload, sizeof payload};
  n = mqtt_encode_publish(&p, buf, sizeof buf);
  ASSERT_EQ(n, 131);
  ASSERT_EQ(buf[0], 0x30);
  ASSERT_EQ(buf[1], 0x80);
  ASSERT_EQ(buf[2], 0x01);
  ASSERT_EQ(mqtt_decode(buf, (size_t)n, &pkt), PROTO_OK);
  ASSERT_EQ(pkt.u.publish.payload.len, 125);
}

/* ---- acks, SUBSCRIBE, UNSUBSCRIBE, simple ------------------------------ */

static void test_encode_acks(void)
{
  uint8_t buf[8];
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBACK, 0x0102, NULL, 0), 4);
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBACK, 0x0102, buf, sizeof buf), 4);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0x40, 0x02, 0x01, 0x02}), 4);
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBREC, 7, buf, sizeof buf), 4);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0x50, 0x02, 0x00, 0x07}), 4);
  /* PUBREL has fixed-header flags 0010 [MQTT-3.6.1-1]. */
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBREL, 7, buf, sizeof buf), 4);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0x62, 0x02, 0x00, 0x07}), 4);
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBCOMP, 0xFFFF, buf, sizeof buf), 4);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0x70, 0x02, 0xFF, 0xFF}), 4);
  ASSERT_EQ(mqtt_encode_ack(MQTT_UNSUBACK, 9, buf, sizeof buf), 4);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0xB0, 0x02, 0x00, 0x09}), 4);
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBACK, 0, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_ack(MQTT_SUBACK, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_ack(MQTT_CONNECT, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_ack(MQTT_PUBACK, 1, buf, 3), PROTO_BUF_TOO_SMALL);
}

static void test_encode_subscribe_3_8_1_1(void)
{
  struct mqtt_bytes f[2] = {BYTES("a/+"), BYTES("$aws/#")};
  uint8_t qos[2] = {1, 0};
  uint8_t buf[64];
  static const uint8_t want[] = {
    0x82, 0x11, 0x00, 0x0A,
    0x00, 0x03, 'a', '/', '+', 0x01,
    0x00, 0x06, '$', 'a', 'w', 's', '/', '#', 0x00,
  };
  check_golden(mqtt_encode_subscribe(10, f, qos, 2, NULL, 0),
               mqtt_encode_subscribe(10, f, qos, 2, buf, sizeof buf), buf, want, sizeof want);
}

static void test_encode_subscribe_invalid(void)
{
  struct mqtt_bytes f[1] = {BYTES("a")};
  uint8_t qos[1] = {0};
  uint8_t buf[64];
  /* At least one filter [MQTT-3.8.3-3]. */
  ASSERT_EQ(mqtt_encode_subscribe(1, f, qos, 0, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_subscribe(0, f, qos, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_subscribe(1, NULL, qos, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_subscribe(1, f, NULL, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  qos[0] = 3;
  ASSERT_EQ(mqtt_encode_subscribe(1, f, qos, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  qos[0] = 0;
  f[0].len = 0;
  ASSERT_EQ(mqtt_encode_subscribe(1, f, qos, 1, buf, sizeof buf), PROTO_INVALID_ARG);
  f[0] = BYTES("a");
  ASSERT_EQ(mqtt_encode_subscribe(1, f, qos, 1, buf, 7), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(mqtt_encode_subscribe(1, f, qos, 1, buf, 8), 8);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00}), 8);
}

static void test_encode_unsubscribe_3_10_1_1(void)
{
  struct mqtt_bytes f[2] = {BYTES("a"), BYTES("b/c")};
  uint8_t buf[64];
  static const uint8_t want[] = {
    0xA2, 0x0A, 0x00, 0x05, 0x00, 0x01, 'a', 0x00, 0x03, 'b', '/', 'c',
  };
  check_golden(mqtt_encode_unsubscribe(5, f, 2, NULL, 0),
               mqtt_encode_unsubscribe(5, f, 2, buf, sizeof buf), buf, want, sizeof want);
  /* At least one filter [MQTT-3.10.3-2]. */
  ASSERT_EQ(mqtt_encode_unsubscribe(5, f, 0, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_unsubscribe(0, f, 2, buf, sizeof buf), PROTO_INVALID_ARG);
}

static void test_encode_simple(void)
{
  uint8_t buf[4];
  ASSERT_EQ(mqtt_encode_simple(MQTT_PINGREQ, NULL, 0), 2);
  ASSERT_EQ(mqtt_encode_simple(MQTT_PINGREQ, buf, sizeof buf), 2);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0xC0, 0x00}), 2);
  ASSERT_EQ(mqtt_encode_simple(MQTT_DISCONNECT, buf, sizeof buf), 2);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0xE0, 0x00}), 2);
  ASSERT_EQ(mqtt_encode_simple(MQTT_PINGRESP, buf, sizeof buf), 2);
  ASSERT_MEM_EQ(buf, ((const uint8_t[]){0xD0, 0x00}), 2);
  ASSERT_EQ(mqtt_encode_simple(MQTT_CONNECT, buf, sizeof buf), PROTO_INVALID_ARG);
  ASSERT_EQ(mqtt_encode_simple(MQTT_PINGREQ, buf, 1), PROTO_BUF_TOO_SMALL);
}

/* ---- decoder: CONNACK -------------------------------------------------- */

static void test_decode_connack(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x00, 0x00), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_CONNACK);
  ASSERT_EQ(pkt.u.connack.session_present, 0);
  ASSERT_EQ(pkt.u.connack.rc, MQTT_CONNACK_ACCEPTED);
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x01, 0x00), PROTO_OK);
  ASSERT_EQ(pkt.u.connack.session_present, 1);
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x00, 0x05), PROTO_OK);
  ASSERT_EQ(pkt.u.connack.rc, MQTT_CONNACK_NOT_AUTHORIZED);
  /* Reserved codes are passed up for the caller to treat as a refusal. */
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x00, 0x07), PROTO_OK);
  ASSERT_EQ(pkt.u.connack.rc, 7);
}

static void test_decode_connack_malformed(void)
{
  struct mqtt_packet pkt;
  /* Fixed-header flags are reserved, 0000 (§2.2.2). */
  ASSERT_EQ(DECODE(&pkt, 0x21, 0x02, 0x00, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x28, 0x02, 0x00, 0x00), PROTO_MALFORMED);
  /* Remaining Length is exactly 2. */
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x01, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x03, 0x00, 0x00, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x00), PROTO_MALFORMED);
  /* Bits 7-1 of the acknowledge flags are reserved (§3.2.2.1). */
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x02, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x80, 0x00), PROTO_MALFORMED);
}

static void test_decode_connack_3_2_2_4(void)
{
  struct mqtt_packet pkt;
  /* Session Present must be 0 with a non-zero return code. */
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x01, 0x04), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x20, 0x02, 0x00, 0x04), PROTO_OK);
}

/* ---- decoder: PUBLISH -------------------------------------------------- */

static void test_decode_publish(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PUBLISH);
  ASSERT_EQ(pkt.u.publish.qos, 0);
  ASSERT_EQ(pkt.u.publish.dup, 0);
  ASSERT_EQ(pkt.u.publish.retain, 0);
  ASSERT_EQ(pkt.u.publish.packet_id, 0);
  ASSERT_EQ(pkt.u.publish.topic.len, 3);
  ASSERT_MEM_EQ(pkt.u.publish.topic.p, "a/b", 3);
  ASSERT_EQ(pkt.u.publish.payload.len, 2);
  ASSERT_MEM_EQ(pkt.u.publish.payload.p, "hi", 2);

  ASSERT_EQ(DECODE(&pkt, 0x3B, 0x05, 0x00, 0x01, 't', 0xAB, 0xCD), PROTO_OK);
  ASSERT_EQ(pkt.u.publish.qos, 1);
  ASSERT_EQ(pkt.u.publish.dup, 1);
  ASSERT_EQ(pkt.u.publish.retain, 1);
  ASSERT_EQ(pkt.u.publish.packet_id, 0xABCD);
  ASSERT_EQ(pkt.u.publish.payload.len, 0);

  ASSERT_EQ(DECODE(&pkt, 0x34, 0x06, 0x00, 0x01, '$', 0x00, 0x02, 'Z'), PROTO_OK);
  ASSERT_EQ(pkt.u.publish.qos, 2);
  ASSERT_EQ(pkt.u.publish.packet_id, 2);
  ASSERT_EQ(pkt.u.publish.payload.len, 1);
}

static void test_decode_publish_qos3_3_3_1_4(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x36, 0x05, 0x00, 0x01, 't', 0x00, 0x01), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x3F, 0x05, 0x00, 0x01, 't', 0x00, 0x01), PROTO_MALFORMED);
}

static void test_decode_publish_dup_qos0_3_3_1_2(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x38, 0x03, 0x00, 0x01, 't'), PROTO_MALFORMED);
}

static void test_decode_publish_packet_id_2_3_1_1(void)
{
  struct mqtt_packet pkt;
  /* Packet id 0 with QoS > 0. */
  ASSERT_EQ(DECODE(&pkt, 0x32, 0x05, 0x00, 0x01, 't', 0x00, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x34, 0x05, 0x00, 0x01, 't', 0x00, 0x00), PROTO_MALFORMED);
  /* Packet id missing or truncated. */
  ASSERT_EQ(DECODE(&pkt, 0x32, 0x03, 0x00, 0x01, 't'), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x32, 0x04, 0x00, 0x01, 't', 0x01), PROTO_MALFORMED);
  /* QoS 0 has no packet id: those two bytes are payload [MQTT-2.3.1-5]. */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x05, 0x00, 0x01, 't', 0x00, 0x00), PROTO_OK);
  ASSERT_EQ(pkt.u.publish.payload.len, 2);
}

static void test_decode_publish_topic_3_3_2_1(void)
{
  struct mqtt_packet pkt;
  /* Topic length beyond the packet. */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x03, 0x00, 0x02, 't'), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x03, 0xFF, 0xFF, 't'), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x01, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x00), PROTO_MALFORMED);
  /* A zero-length topic is not a topic name (§4.7.3). */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x02, 0x00, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x04, 0x00, 0x00, 'h', 'i'), PROTO_MALFORMED);
}

static void test_decode_publish_wildcards_3_3_2_2(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x05, 0x00, 0x03, 'a', '/', '+'), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x03, 0x00, 0x01, '#'), PROTO_MALFORMED);
}

static void test_decode_publish_utf8_1_5_3(void)
{
  struct mqtt_packet pkt;
  /* U+0000 [MQTT-1.5.3-2]. */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x04, 0x00, 0x02, 'a', 0x00), PROTO_MALFORMED);
  /* Ill-formed UTF-8 [MQTT-1.5.3-1]: overlong '/', surrogate, lone byte. */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x04, 0x00, 0x02, 0xC0, 0xAF), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x03, 0x00, 0x01, 0xFF), PROTO_MALFORMED);
  /* Well-formed multi-byte UTF-8 is fine. */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x05, 0x00, 0x03, 0xE2, 0x82, 0xAC), PROTO_OK);
}

/* ---- decoder: acks ----------------------------------------------------- */

static void test_decode_acks(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x40, 0x02, 0x12, 0x34), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PUBACK);
  ASSERT_EQ(pkt.u.packet_id, 0x1234);
  ASSERT_EQ(DECODE(&pkt, 0x50, 0x02, 0x00, 0x01), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PUBREC);
  ASSERT_EQ(DECODE(&pkt, 0x62, 0x02, 0x00, 0x02), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PUBREL);
  ASSERT_EQ(pkt.u.packet_id, 2);
  ASSERT_EQ(DECODE(&pkt, 0x70, 0x02, 0xFF, 0xFF), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PUBCOMP);
  ASSERT_EQ(pkt.u.packet_id, 0xFFFF);
  ASSERT_EQ(DECODE(&pkt, 0xB0, 0x02, 0x00, 0x09), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_UNSUBACK);
  ASSERT_EQ(pkt.u.packet_id, 9);
}

static void test_decode_acks_malformed(void)
{
  static const uint8_t types[] = {0x40, 0x50, 0x62, 0x70, 0xB0};
  struct mqtt_packet pkt;
  for (size_t i = 0; i < sizeof types; i++) {
    uint8_t t = types[i];
    /* Packet id 0 [MQTT-2.3.1-1]. */
    ASSERT_EQ(DECODE(&pkt, t, 0x02, 0x00, 0x00), PROTO_MALFORMED);
    /* Exactly 2 bytes of packet id. */
    ASSERT_EQ(DECODE(&pkt, t, 0x01, 0x01), PROTO_MALFORMED);
    ASSERT_EQ(DECODE(&pkt, t, 0x03, 0x00, 0x01, 0x00), PROTO_MALFORMED);
    ASSERT_EQ(DECODE(&pkt, t, 0x00), PROTO_MALFORMED);
    /* Wrong fixed-header flags. */
    ASSERT_EQ(DECODE(&pkt, (uint8_t)(t ^ 0x02), 0x02, 0x00, 0x01), PROTO_MALFORMED);
    ASSERT_EQ(DECODE(&pkt, (uint8_t)(t | 0x01), 0x02, 0x00, 0x01), PROTO_MALFORMED);
  }
}

static void test_decode_pubrel_flags_3_6_1_1(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x60, 0x02, 0x00, 0x01), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x66, 0x02, 0x00, 0x01), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x62, 0x02, 0x00, 0x01), PROTO_OK);
}

/* ---- decoder: SUBACK --------------------------------------------------- */

static void test_decode_suback(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_SUBACK);
  ASSERT_EQ(pkt.u.suback.packet_id, 10);
  ASSERT_EQ(pkt.u.suback.count, 4);
  ASSERT_EQ(pkt.u.suback.codes[0], 0x00);
  ASSERT_EQ(pkt.u.suback.codes[2], 0x02);
  ASSERT_EQ(pkt.u.suback.codes[3], MQTT_SUBACK_FAILURE);
}

static void test_decode_suback_3_9_3_2(void)
{
  struct mqtt_packet pkt;
  /* Return codes other than 0x00, 0x01, 0x02, 0x80 are reserved. */
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x03, 0x00, 0x01, 0x03), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x04, 0x00, 0x01, 0x00, 0x81), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x03, 0x00, 0x01, 0xFF), PROTO_MALFORMED);
}

static void test_decode_suback_malformed(void)
{
  struct mqtt_packet pkt;
  /* No return code at all. */
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x02, 0x00, 0x01), PROTO_MALFORMED);
  /* Packet id 0. */
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x03, 0x00, 0x00, 0x00), PROTO_MALFORMED);
  /* Flags. */
  ASSERT_EQ(DECODE(&pkt, 0x92, 0x03, 0x00, 0x01, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x91, 0x03, 0x00, 0x01, 0x00), PROTO_MALFORMED);
  /* Too short for a packet id. */
  ASSERT_EQ(DECODE(&pkt, 0x90, 0x01, 0x00), PROTO_MALFORMED);
}

/* ---- decoder: PINGRESP, types, framing --------------------------------- */

static void test_decode_pingresp(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0xD0, 0x00), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PINGRESP);
  ASSERT_EQ(DECODE(&pkt, 0xD0, 0x01, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0xD1, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0xD8, 0x00), PROTO_MALFORMED);
}

static void test_decode_reserved_types_2_2_1(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x00, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0xF0, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x0F, 0x02, 0x00, 0x01), PROTO_MALFORMED);
}

static void test_decode_server_only_types(void)
{
  struct mqtt_packet pkt;
  ASSERT_EQ(DECODE(&pkt, 0x10, 0x00), PROTO_UNSUPPORTED);        /* CONNECT */
  ASSERT_EQ(DECODE(&pkt, 0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00),
            PROTO_UNSUPPORTED);                                 /* SUBSCRIBE */
  ASSERT_EQ(DECODE(&pkt, 0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'),
            PROTO_UNSUPPORTED);                                 /* UNSUBSCRIBE */
  ASSERT_EQ(DECODE(&pkt, 0xC0, 0x00), PROTO_UNSUPPORTED);        /* PINGREQ */
  ASSERT_EQ(DECODE(&pkt, 0xE0, 0x00), PROTO_UNSUPPORTED);        /* DISCONNECT */
}

static void test_decode_length_must_match(void)
{
  struct mqtt_packet pkt;
  static const uint8_t ping_extra[] = {0xD0, 0x00, 0x00};
  static const uint8_t puback[] = {0x40, 0x02, 0x00, 0x01};
  /* The buffer must be exactly one packet: no trailing bytes, no short. */
  ASSERT_EQ(mqtt_decode(ping_extra, sizeof ping_extra, &pkt), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_decode(puback, 3, &pkt), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_decode(puback, 1, &pkt), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_decode(puback, 0, &pkt), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_decode(NULL, 4, &pkt), PROTO_MALFORMED);
  /* Remaining Length varint that ends the buffer, is overlong, or has 5 bytes. */
  ASSERT_EQ(DECODE(&pkt, 0x30, 0x80), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0xD0, 0x80, 0x00), PROTO_MALFORMED);
  ASSERT_EQ(DECODE(&pkt, 0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F), PROTO_MALFORMED);
}

static void test_round_trip_all_encoders_decodable(void)
{
  uint8_t buf[64];
  struct mqtt_packet pkt;
  struct mqtt_publish p = {0};
  int n;

  p.qos = 2;
  p.packet_id = 77;
  p.retain = true;
  p.topic = BYTES("sensors/\xC3\xA9t\xC3\xA9");
  p.payload = BYTES("{\"t\":21}");
  n = mqtt_encode_publish(&p, buf, sizeof buf);
  ASSERT_TRUE(n > 0);
  ASSERT_EQ(mqtt_decode(buf, (size_t)n, &pkt), PROTO_OK);
  ASSERT_EQ(pkt.u.publish.qos, 2);
  ASSERT_EQ(pkt.u.publish.packet_id, 77);
  ASSERT_EQ(pkt.u.publish.retain, 1);
  ASSERT_EQ(pkt.u.publish.topic.len, p.topic.len);
  ASSERT_MEM_EQ(pkt.u.publish.topic.p, p.topic.p, p.topic.len);
  ASSERT_EQ(pkt.u.publish.payload.len, p.payload.len);
  ASSERT_MEM_EQ(pkt.u.publish.payload.p, p.payload.p, p.payload.len);

  for (int t = MQTT_PUBACK; t <= MQTT_PUBCOMP; t++) {
    n = mqtt_encode_ack((enum mqtt_type)t, 513, buf, sizeof buf);
    ASSERT_EQ(n, 4);
    ASSERT_EQ(mqtt_decode(buf, 4, &pkt), PROTO_OK);
    ASSERT_EQ(pkt.type, t);
    ASSERT_EQ(pkt.u.packet_id, 513);
  }
  n = mqtt_encode_simple(MQTT_PINGRESP, buf, sizeof buf);
  ASSERT_EQ(mqtt_decode(buf, (size_t)n, &pkt), PROTO_OK);
  ASSERT_EQ(pkt.type, MQTT_PINGRESP);
}

static void test_names(void)
{
  ASSERT_STR_EQ(mqtt_type_name(MQTT_CONNECT), "CONNECT");
  ASSERT_STR_EQ(mqtt_type_name(MQTT_SUBACK), "SUBACK");
  ASSERT_STR_EQ(mqtt_type_name(MQTT_DISCONNECT), "DISCONNECT");
  ASSERT_STR_EQ(mqtt_type_name(0), "RESERVED");
  ASSERT_STR_EQ(mqtt_type_name(15), "RESERVED");
  ASSERT_STR_EQ(mqtt_type_name(16), "UNKNOWN");
  ASSERT_STR_EQ(mqtt_type_name(-1), "UNKNOWN");
  ASSERT_STR_EQ(mqtt_connack_str(0), "connection accepted");
  ASSERT_STR_EQ(mqtt_connack_str(5), "not authorized");
  ASSERT_STR_EQ(mqtt_connack_str(6), "reserved return code");
  ASSERT_STR_EQ(mqtt_connack_str(-1), "reserved return code");
}

int main(void)
{
  RUN(test_varint_boundaries_2_2_3);
  RUN(test_varint_too_large_encode);
  RUN(test_varint_five_bytes_malformed);
  RUN(test_varint_overlong_malformed);
  RUN(test_connect_minimal);
  RUN(test_connect_full);
  RUN(test_connect_will_only);
  RUN(test_connect_username_only);
  RUN(test_connect_password_needs_username_3_1_2_22);
  RUN(test_connect_empty_client_id_3_1_3_7);
  RUN(test_connect_invalid_args);
  RUN(test_connect_buffer_too_small);
  RUN(test_publish_qos0);
  RUN(test_publish_qos1_retain);
  RUN(test_publish_qos2_dup_empty_payload);
  RUN(test_publish_rules);
  RUN(test_publish_remaining_length_limit);
  RUN(test_publish_128_byte_header);
  RUN(test_encode_acks);
  RUN(test_encode_subscribe_3_8_1_1);
  RUN(test_encode_subscribe_invalid);
  RUN(test_encode_unsubscribe_3_10_1_1);
  RUN(test_encode_simple);
  RUN(test_decode_connack);
  RUN(test_decode_connack_malformed);
  RUN(test_decode_connack_3_2_2_4);
  RUN(test_decode_publish);
  RUN(test_decode_publish_qos3_3_3_1_4);
  RUN(test_decode_publish_dup_qos0_3_3_1_2);
  RUN(test_decode_publish_packet_id_2_3_1_1);
  RUN(test_decode_publish_topic_3_3_2_1);
  RUN(test_decode_publish_wildcards_3_3_2_2);
  RUN(test_decode_publish_utf8_1_5_3);
  RUN(test_decode_acks);
  RUN(test_decode_acks_malformed);
  RUN(test_decode_pubrel_flags_3_6_1_1);
  RUN(test_decode_suback);
  RUN(test_decode_suback_3_9_3_2);
  RUN(test_decode_suback_malformed);
  RUN(test_decode_pingresp);
  RUN(test_decode_reserved_types_2_2_1);
  RUN(test_decode_server_only_types);
  RUN(test_decode_length_must_match);
  RUN(test_round_trip_all_encoders_decodable);
  RUN(test_names);
  return TEST_END();
}
