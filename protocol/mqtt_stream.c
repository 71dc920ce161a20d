/*
 * mqtt_stream.c - split a byte stream into whole MQTT packets.
 *
 * The current packet is always assembled in the caller's storage, header
 * included, so a returned packet is one contiguous view into s->buf.  The
 * state is just (have, need):
 *
 *   need == 0          reading the fixed header; s->buf[0..have) holds the
 *                      type byte and the Remaining Length bytes seen so far
 *   0 < need <= cap    header complete, packet is need bytes, have of them
 *                      buffered; have == need means it was just returned
 *   need > cap         the stream is dead (one marker value per error)
 *
 * The declared size is checked against cap the moment the Remaining Length
 * is complete, so an oversize packet is refused before any of its body is
 * buffered.
 */
#include <limits.h>
#include <string.h>

#include "mqtt.h"
#include "mqtt_stream.h"

/* Dead-stream markers: both larger than any packet MQTT can describe
 * (1 + 4 + 268435455 bytes), so they never collide with a real size. */
#define DEAD_MALFORMED ((size_t)-1)
#define DEAD_TOO_BIG ((size_t)-2)

void mqtt_stream_init(struct mqtt_stream *s, uint8_t *storage, size_t cap)
{
  s->buf = storage;
  s->cap = storage != NULL ? cap : 0;
  s->have = 0;
  s->need = 0;
}

void mqtt_stream_reset(struct mqtt_stream *s)
{
  s->have = 0;
  s->need = 0;
}

static int die(struct mqtt_stream *s, int err)
{
  s->have = 0;
  s->need = err == PROTO_TOO_BIG ? DEAD_TOO_BIG : DEAD_MALFORMED;
  return err;
}

int mqtt_stream_feed(struct mqtt_stream *s, const uint8_t *data, size_t len,
                     const uint8_t **pkt, size_t *pkt_len)
{
  size_t used = 0;

  *pkt = NULL;
  *pkt_len = 0;
  if (s->need == DEAD_MALFORMED)
    return PROTO_MALFORMED;
  if (s->need == DEAD_TOO_BIG)
    return PROTO_TOO_BIG;
  /* The packet returned by the previous call is released now. */
  if (s->need != 0 && s->have == s->need)
    mqtt_stream_reset(s);
  if (data == NULL)
    len = 0;
  /* The return value is an int, so consume at most INT_MAX per call; the
   * caller's loop comes back for the rest. */
  if (len > (size_t)INT_MAX)
    len = (size_t)INT_MAX;

  while (used < len) {
    if (s->need == 0) {
      uint32_t remaining;
      int n;

      /* A header that is still incomplete means the packet is longer than
       * what is buffered, so a full buffer already proves it is too big. */
      if (s->have == s->cap)
        return die(s, PROTO_TOO_BIG);
      s->buf[s->have++] = data[used++];
      if (s->have < 2)
        continue;
      n = mqtt_varint_decode(s->buf + 1, s->have - 1, &remaining);
      if (n == PROTO_INCOMPLETE)
        continue;
      if (n < 0)
        return die(s, PROTO_MALFORMED);
      if ((size_t)remaining > s->cap - s->have)
        return die(s, PROTO_TOO_BIG);
      s->need = s->have + remaining;
    } else {
      size_t n = s->need - s->have;
      if (n > len - used)
        n = len - used;
      memcpy(s->buf + s->have, data + used, n);
      s->have += n;
      used += n;
    }
    if (s->need != 0 && s->have == s->need) {
      *pkt = s->buf;
      *pkt_len = s->need;
      break;
    }
  }
  return (int)used;
}
