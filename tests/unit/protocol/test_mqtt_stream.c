/*
 * test_mqtt_stream.c - the streaming framer: a sequence of packets fed in
 * every possible split, byte by byte and all at once, with fixed storage and
 * with lazy storage (none held between packets, a packet whole in a chunk
 * returned in place, a split one assembled in storage of exactly its size,
 * a split acknowledgement inside the stream); oversize packets refused
 * before their body; malformed Remaining Length; dead-stream behaviour.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"
#include "mqtt_stream.h"
#include "test.h"

/* CONNACK, PINGRESP, PUBLISH QoS 1 with a 2-byte Remaining Length (130
 * bytes), PUBACK, SUBACK.  Built once by build_sequence(). */
static uint8_t seq[256];
static size_t seq_len;
static size_t seq_ends[8]; /* end offset of each packet */
static size_t seq_count;

static void add(const uint8_t *p, size_t n)
{
  memcpy(seq + seq_len, p, n);
  seq_len += n;
  seq_ends[seq_count++] = seq_len;
}

static void build_sequence(void)
{
  static const uint8_t connack[] = {0x20, 0x02, 0x00, 0x00};
  static const uint8_t pingresp[] = {0xD0, 0x00};
  static const uint8_t puback[] = {0x40, 0x02, 0x00, 0x07};
  static const uint8_t suback[] = {0x90, 0x04, 0x00, 0x08, 0x01, 0x80};
  static uint8_t payload[123];
  struct mqtt_publish p = {0};
  uint8_t pub[160];
  int n;

  seq_len = 0;
  seq_count = 0;
  memset(payload, 'x', sizeof payload);
  p.qos = 1;
  p.packet_id = 7;
  p.topic = (struct mqtt_bytes){(const uint8_t *)"a/b", 3};
  p.payload = (struct mqtt_bytes){payload, sizeof payload};
  n = mqtt_encode_publish(&p, pub, sizeof pub);
  ASSERT_EQ(n, 1 + 2 + 130);
  add(connack, sizeof connack);
  add(pingresp, sizeof pingresp);
  add(pub, (size_t)n);
  add(puback, sizeof puback);
  add(suback, sizeof suback);
}

/*
 * Feeds data[0..len) as chunks of the given boundaries and checks that each
 * packet comes out whole, in order, equal to the original bytes, and
 * decodable.  Returns the number of packets produced.
 */
static size_t g_gives;       /* lazy storage given, in the last feed_chunks */
static size_t g_given_bytes;

/* Lazy mode, as a caller does it: storage of exactly the size wanted. */
static int lazy_storage(struct mqtt_stream *s)
{
  size_t want = mqtt_stream_wants(s);
  uint8_t *b;
  if (want == 0)
    return 0;
  free(mqtt_stream_take_back(s));
  b = malloc(want);
  if (b == NULL)
    return -1;
  mqtt_stream_give(s, b);
  g_gives++;
  g_given_bytes += want;
  return 0;
}

static size_t feed_chunks(struct mqtt_stream *s, const uint8_t *data, size_t len,
                          const size_t *cuts, size_t ncuts, int *err)
{
  size_t start = 0, got = 0, pkt_start = 0;
  *err = 0;
  g_gives = g_given_bytes = 0;
  for (size_t c = 0; c <= ncuts; c++) {
    size_t end = c < ncuts ? cuts[c] : len;
    const uint8_t *p = data + start;
    size_t n = end - start;
    while (n > 0) {
      const uint8_t *pkt;
      size_t pkt_len;
      struct mqtt_packet dec;
      int used = mqtt_stream_feed(s, p, n, &pkt, &pkt_len);
      if (used < 0) {
        *err = used;
        return got;
      }
      if (used == 0 && pkt == NULL && mqtt_stream_wants(s) == 0) {
        *err = 1; /* no progress: a framer bug */
        return got;
      }
      p += used;
      n -= (size_t)used;
      if (pkt != NULL) {
        if (got >= seq_count || pkt_len != seq_ends[got] - pkt_start ||
            memcmp(pkt, data + pkt_start, pkt_len) != 0 ||
            mqtt_decode(pkt, pkt_len, &dec) != PROTO_OK) {
          *err = 2;
          return got;
        }
        pkt_start += pkt_len;
        got++;
      }
      if (s->lazy && lazy_storage(s) != 0) {
        *err = 3;
        return got;
      }
    }
    /* Between reads a lazy stream gives back what it no longer needs. */
    free(mqtt_stream_take_back(s));
    start = end;
  }
  return got;
}

static void test_all_at_once(void)
{
  uint8_t store[512];
  struct mqtt_stream s;
  int err;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(feed_chunks(&s, seq, seq_len, NULL, 0, &err), seq_count);
  ASSERT_EQ(err, 0);
  ASSERT_EQ(seq_count, 5);
}

static void test_byte_by_byte(void)
{
  uint8_t store[512];
  struct mqtt_stream s;
  size_t cuts[256];
  int err;
  for (size_t i = 0; i + 1 < seq_len; i++)
    cuts[i] = i + 1;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(feed_chunks(&s, seq, seq_len, cuts, seq_len - 1, &err), seq_count);
  ASSERT_EQ(err, 0);
}

static void test_every_single_split(void)
{
  uint8_t store[512];
  struct mqtt_stream s;
  size_t bad = 0;
  for (size_t cut = 0; cut <= seq_len; cut++) {
    int err;
    mqtt_stream_init(&s, store, sizeof store);
    if (feed_chunks(&s, seq, seq_len, &cut, 1, &err) != seq_count || err != 0)
      bad++;
  }
  ASSERT_EQ(bad, 0);
}

static void test_every_double_split(void)
{
  uint8_t store[512];
  struct mqtt_stream s;
  size_t bad = 0, runs = 0;
  for (size_t a = 0; a <= seq_len; a++) {
    for (size_t b = a; b <= seq_len; b++) {
      size_t cuts[2] = {a, b};
      int err;
      mqtt_stream_init(&s, store, sizeof store);
      if (feed_chunks(&s, seq, seq_len, cuts, 2, &err) != seq_count || err != 0)
        bad++;
      runs++;
    }
  }
  ASSERT_EQ(bad, 0);
  ASSERT_TRUE(runs > 10000);
}

static void test_exact_capacity(void)
{
  /* A buffer exactly the size of the biggest packet is enough. */
  uint8_t store[133];
  struct mqtt_stream s;
  int err;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(feed_chunks(&s, seq, seq_len, NULL, 0, &err), seq_count);
  ASSERT_EQ(err, 0);
}

static void test_oversize_refused_before_body(void)
{
  uint8_t store[132]; /* one byte short of the 133-byte PUBLISH */
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;
  size_t pub_at = seq_ends[1];
  int used;

  mqtt_stream_init(&s, store, sizeof store);
  /* The packets before it pass. */
  used = mqtt_stream_feed(&s, seq, seq_len, &pkt, &pkt_len);
  ASSERT_EQ(used, 4);
  ASSERT_TRUE(pkt != NULL);
  used = mqtt_stream_feed(&s, seq + 4, seq_len - 4, &pkt, &pkt_len);
  ASSERT_EQ(used, 2);
  /* Only the 3 header bytes of the PUBLISH: refused at once. */
  used = mqtt_stream_feed(&s, seq + pub_at, 3, &pkt, &pkt_len);
  ASSERT_EQ(used, PROTO_TOO_BIG);
  ASSERT_TRUE(pkt == NULL);
  /* The stream stays dead until reset. */
  ASSERT_EQ(mqtt_stream_feed(&s, seq, 4, &pkt, &pkt_len), PROTO_TOO_BIG);
  mqtt_stream_reset(&s);
  ASSERT_EQ(mqtt_stream_feed(&s, seq, 4, &pkt, &pkt_len), 4);
  ASSERT_TRUE(pkt != NULL);
}

static void test_oversize_huge_declared_length(void)
{
  /* A peer declaring 256 MB is refused, with a 1 KB buffer, as soon as the
   * header shows the packet must be larger: 0x30 0xFF could still be 255
   * bytes, 0x30 0xFF 0xFF is at least 16,384. */
  static const uint8_t huge[] = {0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01};
  uint8_t store[1024];
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(mqtt_stream_feed(&s, huge, 2, &pkt, &pkt_len), 2);
  ASSERT_TRUE(pkt == NULL);
  ASSERT_EQ(mqtt_stream_feed(&s, huge + 2, 5, &pkt, &pkt_len), PROTO_TOO_BIG);
  ASSERT_EQ(s.have, 0);
  /* All of it at once: refused from the whole header. */
  mqtt_stream_reset(&s);
  ASSERT_EQ(mqtt_stream_feed(&s, huge, sizeof huge, &pkt, &pkt_len), PROTO_TOO_BIG);
  /* Lazy: refused before any storage is wanted. */
  mqtt_stream_init_lazy(&s, 1024);
  ASSERT_EQ(mqtt_stream_feed(&s, huge, 2, &pkt, &pkt_len), 2);
  ASSERT_EQ(mqtt_stream_wants(&s), 0);
  ASSERT_EQ(mqtt_stream_feed(&s, huge + 2, 1, &pkt, &pkt_len), PROTO_TOO_BIG);
  ASSERT_EQ(mqtt_stream_wants(&s), 0);
  ASSERT_TRUE(mqtt_stream_take_back(&s) == NULL);
}

static void test_tiny_buffer(void)
{
  /* With room for 3 bytes, a PINGRESP fits and a 4-byte PUBACK does not. */
  static const uint8_t in[] = {0xD0, 0x00, 0x40, 0x02, 0x00, 0x01};
  uint8_t store[3];
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(mqtt_stream_feed(&s, in, sizeof in, &pkt, &pkt_len), 2);
  ASSERT_EQ(pkt_len, 2);
  ASSERT_EQ(mqtt_stream_feed(&s, in + 2, 4, &pkt, &pkt_len), PROTO_TOO_BIG);
  /* A header longer than the buffer: 0x30 0x80 0x80 ... cannot fit in 3. */
  mqtt_stream_reset(&s);
  ASSERT_EQ(mqtt_stream_feed(&s, (const uint8_t[]){0x30, 0x80, 0x80, 0x80}, 4, &pkt,
                             &pkt_len),
            PROTO_TOO_BIG);
  /* No storage at all refuses everything. */
  mqtt_stream_init(&s, NULL, 0);
  ASSERT_EQ(mqtt_stream_feed(&s, in, 2, &pkt, &pkt_len), PROTO_TOO_BIG);
}

static void test_malformed_varint(void)
{
  static const uint8_t five[] = {0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F};
  static const uint8_t overlong[] = {0x30, 0x80, 0x00};
  uint8_t store[1u << 16];
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;

  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(mqtt_stream_feed(&s, five, sizeof five, &pkt, &pkt_len), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_stream_feed(&s, five, 1, &pkt, &pkt_len), PROTO_MALFORMED);

  /* Byte by byte: incomplete until the 4th continuation byte.  (Lazy, with
   * the protocol's largest packet as the limit: fixed storage of 64 KiB would
   * refuse the header as too big at its 3rd byte.) */
  mqtt_stream_init_lazy(&s, 1 + 4 + 268435455u);
  for (size_t i = 0; i < 4; i++)
    ASSERT_EQ(mqtt_stream_feed(&s, five + i, 1, &pkt, &pkt_len), 1);
  ASSERT_EQ(mqtt_stream_feed(&s, five + 4, 1, &pkt, &pkt_len), PROTO_MALFORMED);

  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(mqtt_stream_feed(&s, overlong, sizeof overlong, &pkt, &pkt_len),
            PROTO_MALFORMED);
}

/* ---- lazy storage ---- */

static bool inside(const uint8_t *p, size_t n, const uint8_t *base, size_t len)
{
  return p >= base && p + n <= base + len;
}

static void test_lazy_whole_in_place(void)
{
  /* All at once: every packet returned where it lies, no storage. */
  struct mqtt_stream s;
  const uint8_t *p = seq, *pkt;
  size_t n = seq_len, pkt_len, got = 0;
  mqtt_stream_init_lazy(&s, 512);
  while (n > 0) {
    int used = mqtt_stream_feed(&s, p, n, &pkt, &pkt_len);
    ASSERT_TRUE(used > 0);
    ASSERT_TRUE(pkt != NULL);
    ASSERT_TRUE(pkt == p);
    ASSERT_EQ(mqtt_stream_wants(&s), 0);
    p += used;
    n -= (size_t)used;
    got++;
  }
  ASSERT_EQ(got, seq_count);
  ASSERT_TRUE(s.buf == NULL);
  ASSERT_TRUE(mqtt_stream_take_back(&s) == NULL);
}

static void test_lazy_every_split(void)
{
  /* Every single and double cut, lazy: the same packets as with fixed
   * storage.  Only the 133-byte PUBLISH ever wants storage, 133 bytes, and
   * only when a cut falls inside it; a cut inside one of the small
   * acknowledgements is assembled in the stream itself.  Nothing is held
   * after the last chunk. */
  struct mqtt_stream s;
  size_t pub_start = seq_ends[1], pub_end = seq_ends[2], bad = 0;
  for (size_t a = 0; a <= seq_len; a++) {
    for (size_t b = a; b <= seq_len; b++) {
      size_t cuts[2] = {a, b};
      size_t inside_pub = (a > pub_start && a < pub_end) || (b > pub_start && b < pub_end);
      int err;
      mqtt_stream_init_lazy(&s, 512);
      if (feed_chunks(&s, seq, seq_len, cuts, 2, &err) != seq_count || err != 0)
        bad++;
      else if (g_gives != (inside_pub ? 1u : 0u) || g_given_bytes != (inside_pub ? 133u : 0u))
        bad++;
      else if (s.buf != NULL)
        bad++;
    }
  }
  ASSERT_EQ(bad, 0);
}

static void test_lazy_byte_by_byte(void)
{
  struct mqtt_stream s;
  size_t cuts[256];
  int err;
  for (size_t i = 0; i + 1 < seq_len; i++)
    cuts[i] = i + 1;
  mqtt_stream_init_lazy(&s, 512);
  ASSERT_EQ(feed_chunks(&s, seq, seq_len, cuts, seq_len - 1, &err), seq_count);
  ASSERT_EQ(err, 0);
  ASSERT_EQ(g_gives, 1);
  ASSERT_TRUE(s.buf == NULL);
}

static void test_lazy_split_ack_inside(void)
{
  /* A PUBACK cut 1 | 3 and a SUBACK cut 3 | 3: assembled in the stream. */
  static const uint8_t in[] = {0x40, 0x02, 0x00, 0x07, 0x90, 0x04, 0x00, 0x08, 0x01, 0x80};
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;
  mqtt_stream_init_lazy(&s, 512);
  ASSERT_EQ(mqtt_stream_feed(&s, in, 1, &pkt, &pkt_len), 1);
  ASSERT_TRUE(pkt == NULL);
  ASSERT_EQ(mqtt_stream_feed(&s, in + 1, 6, &pkt, &pkt_len), 3);
  ASSERT_EQ(pkt_len, 4);
  ASSERT_MEM_EQ(pkt, in, 4);
  ASSERT_TRUE(inside(pkt, 4, s.small, sizeof s.small));
  ASSERT_EQ(mqtt_stream_feed(&s, in + 4, 3, &pkt, &pkt_len), 3);
  ASSERT_TRUE(pkt == NULL);
  ASSERT_EQ(mqtt_stream_wants(&s), 0);
  ASSERT_EQ(mqtt_stream_feed(&s, in + 7, 3, &pkt, &pkt_len), 3);
  ASSERT_EQ(pkt_len, 6);
  ASSERT_MEM_EQ(pkt, in + 4, 6);
  ASSERT_TRUE(s.buf == NULL);
}

static void test_lazy_wants_and_take_back(void)
{
  /* A 133-byte PUBLISH cut after 10 bytes: the stream wants 133 bytes, takes
   * nothing until it has them, keeps them while the packet is assembled and
   * gives them back once it has been returned. */
  struct mqtt_stream s;
  const uint8_t *pub = seq + seq_ends[1], *pkt;
  size_t pkt_len;
  uint8_t *b;
  mqtt_stream_init_lazy(&s, 512);
  ASSERT_EQ(mqtt_stream_feed(&s, pub, 10, &pkt, &pkt_len), 3); /* the header */
  ASSERT_EQ(mqtt_stream_wants(&s), 133);
  ASSERT_EQ(mqtt_stream_feed(&s, pub + 3, 7, &pkt, &pkt_len), 0);
  ASSERT_TRUE(mqtt_stream_take_back(&s) == NULL); /* it holds none */
  b = malloc(133);
  ASSERT_TRUE(b != NULL);
  mqtt_stream_give(&s, b);
  ASSERT_EQ(mqtt_stream_wants(&s), 0);
  ASSERT_EQ(mqtt_stream_feed(&s, pub + 3, 7, &pkt, &pkt_len), 7);
  ASSERT_TRUE(mqtt_stream_take_back(&s) == NULL); /* in use */
  ASSERT_EQ(mqtt_stream_feed(&s, pub + 10, 200, &pkt, &pkt_len), 123);
  ASSERT_TRUE(pkt == b);
  ASSERT_EQ(pkt_len, 133);
  ASSERT_MEM_EQ(pkt, pub, 133);
  ASSERT_TRUE(mqtt_stream_take_back(&s) == b);
  free(b);
  ASSERT_TRUE(mqtt_stream_take_back(&s) == NULL);
  /* Oversize is refused before storage is wanted. */
  mqtt_stream_init_lazy(&s, 132);
  ASSERT_EQ(mqtt_stream_feed(&s, pub, 10, &pkt, &pkt_len), PROTO_TOO_BIG);
  ASSERT_EQ(mqtt_stream_wants(&s), 0);
}

static void test_packet_valid_until_next_feed(void)
{
  static const uint8_t in[] = {0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x02};
  uint8_t store[16];
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(mqtt_stream_feed(&s, in, sizeof in, &pkt, &pkt_len), 4);
  ASSERT_EQ(pkt_len, 4);
  ASSERT_MEM_EQ(pkt, in, 4);
  /* An empty feed releases the packet and produces nothing. */
  ASSERT_EQ(mqtt_stream_feed(&s, in + 4, 0, &pkt, &pkt_len), 0);
  ASSERT_TRUE(pkt == NULL);
  ASSERT_EQ(pkt_len, 0);
  ASSERT_EQ(s.have, 0);
  ASSERT_EQ(mqtt_stream_feed(&s, in + 4, 4, &pkt, &pkt_len), 4);
  ASSERT_MEM_EQ(pkt, in + 4, 4);
}

static void test_stream_does_not_judge_content(void)
{
  /* The framer only frames; a reserved type or a server-only packet is
   * passed up whole for mqtt_decode to refuse. */
  static const uint8_t in[] = {0xF0, 0x01, 0xAA, 0x10, 0x00};
  uint8_t store[16];
  struct mqtt_stream s;
  const uint8_t *pkt;
  size_t pkt_len;
  struct mqtt_packet dec;
  mqtt_stream_init(&s, store, sizeof store);
  ASSERT_EQ(mqtt_stream_feed(&s, in, sizeof in, &pkt, &pkt_len), 3);
  ASSERT_EQ(pkt_len, 3);
  ASSERT_EQ(mqtt_decode(pkt, pkt_len, &dec), PROTO_MALFORMED);
  ASSERT_EQ(mqtt_stream_feed(&s, in + 3, 2, &pkt, &pkt_len), 2);
  ASSERT_EQ(mqtt_decode(pkt, pkt_len, &dec), PROTO_UNSUPPORTED);
}

int main(void)
{
  build_sequence();
  RUN(test_all_at_once);
  RUN(test_byte_by_byte);
  RUN(test_every_single_split);
  RUN(test_every_double_split);
  RUN(test_exact_capacity);
  RUN(test_oversize_refused_before_body);
  RUN(test_oversize_huge_declared_length);
  RUN(test_tiny_buffer);
  RUN(test_malformed_varint);
  RUN(test_packet_valid_until_next_feed);
  RUN(test_stream_does_not_judge_content);
  RUN(test_lazy_whole_in_place);
  RUN(test_lazy_every_split);
  RUN(test_lazy_byte_by_byte);
  RUN(test_lazy_split_ack_inside);
  RUN(test_lazy_wants_and_take_back);
  return TEST_END();
}
