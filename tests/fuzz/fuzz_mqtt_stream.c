/*
 * fuzz_mqtt_stream.c - the streaming framer on arbitrary input cut into
 * arbitrary chunks, with fixed storage and with lazy storage side by side.
 *
 * Input layout: byte 0 = k (number of chunk sizes, 1..8, low 3 bits),
 * byte 1 = the largest packet (max = byte * 4 + 2: the fixed storage's
 * size, and the lazy stream's limit), then k bytes of chunk sizes (each
 * byte + 1, used in turn), then the stream itself.
 *
 * Checks, for each of the two streams: progress on every call (or the lazy
 * stream wanting storage), packets no larger than max and lying in the
 * chunk fed, in the storage or in the stream itself, packets back to back
 * equal to the stream consumed so far, a lazy stream wanting no more than
 * max and holding nothing once the chunk is consumed between packets, and
 * mqtt_decode run on each packet (it must not crash).  The two streams must
 * return the same packets and the same error.  All storage is exact-size
 * heap blocks so AddressSanitizer sees any overrun.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"
#include "mqtt_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
  struct mqtt_stream s;
  uint8_t *fixed;   /* fixed mode's storage, or NULL for the lazy stream */
  size_t framed;    /* bytes of the stream returned as whole packets */
  size_t npkts;
  uint32_t sum;     /* a checksum of the packets, to compare the two runs */
  int err;
};

static bool within(const uint8_t *p, size_t n, const uint8_t *base, size_t len)
{
  return base != NULL && p >= base && p + n <= base + len;
}

/* Feeds one chunk; false once the stream has failed. */
static bool feed(struct run *r, const uint8_t *stream, const uint8_t *p, size_t n, size_t max)
{
  const uint8_t *chunk = p;
  size_t chunk_len = n;
  while (n > 0) {
    const uint8_t *pkt;
    size_t pkt_len, want;
    struct mqtt_packet dec;
    int used = mqtt_stream_feed(&r->s, p, n, &pkt, &pkt_len);
    if (used < 0) {
      if (used != PROTO_MALFORMED && used != PROTO_TOO_BIG)
        abort();
      r->err = used;
      return false;
    }
    want = mqtt_stream_wants(&r->s);
    if ((size_t)used > n || (used == 0 && pkt == NULL && want == 0))
      abort();
    p += used;
    n -= (size_t)used;
    if (pkt != NULL) {
      if (pkt_len < 2 || pkt_len > max)
        abort();
      if (!within(pkt, pkt_len, chunk, chunk_len) && !within(pkt, pkt_len, r->s.buf, r->s.cap) &&
          !within(pkt, pkt_len, r->s.small, sizeof r->s.small))
        abort();
      if (r->framed + pkt_len > (size_t)(p - stream) ||
          memcmp(pkt, stream + r->framed, pkt_len) != 0)
        abort();
      r->framed += pkt_len;
      r->npkts++;
      for (size_t i = 0; i < pkt_len; i++)
        r->sum = r->sum * 31u + pkt[i];
      (void)mqtt_decode(pkt, pkt_len, &dec);
    }
    if (r->fixed == NULL && want != 0) {
      uint8_t *b;
      if (want > max)
        abort();
      free(mqtt_stream_take_back(&r->s));
      b = malloc(want);
      if (b == NULL)
        abort();
      mqtt_stream_give(&r->s, b);
      if (mqtt_stream_wants(&r->s) != 0)
        abort();
    }
  }
  if (r->fixed == NULL) {
    free(mqtt_stream_take_back(&r->s));
    /* Between packets (everything fed was framed) it holds nothing. */
    if (r->framed == (size_t)(p - stream) && r->s.buf != NULL)
      abort();
  }
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct run runs[2];
  size_t k, max, pos, ci = 0;
  const uint8_t *chunks, *stream;
  bool alive[2] = {true, true};

  if (size < 2)
    return 0;
  k = (size_t)(data[0] & 7) + 1;
  max = (size_t)data[1] * 4 + 2;
  if (size < 2 + k)
    return 0;
  chunks = data + 2;
  stream = data + 2 + k;
  size -= 2 + k;

  memset(runs, 0, sizeof runs);
  runs[0].fixed = malloc(max);
  if (runs[0].fixed == NULL)
    return 0;
  mqtt_stream_init(&runs[0].s, runs[0].fixed, max);
  mqtt_stream_init_lazy(&runs[1].s, max);

  pos = 0;
  while (pos < size && (alive[0] || alive[1])) {
    size_t n = (size_t)chunks[ci++ % k] + 1;
    if (n > size - pos)
      n = size - pos;
    for (int i = 0; i < 2; i++)
      if (alive[i])
        alive[i] = feed(&runs[i], stream, stream + pos, n, max);
    pos += n;
  }
  if (alive[0] != alive[1] || runs[0].err != runs[1].err || runs[0].npkts != runs[1].npkts ||
      runs[0].framed != runs[1].framed || runs[0].sum != runs[1].sum)
    abort();
  /* Closing mid-packet: reset, then the storage comes back. */
  mqtt_stream_reset(&runs[1].s);
  free(mqtt_stream_take_back(&runs[1].s));
  if (runs[1].s.buf != NULL)
    abort();
  free(runs[0].fixed);
  return 0;
}
