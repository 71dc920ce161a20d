/*
 * mqtt_stream.c - split a byte stream into whole MQTT packets.
 *
 * The state of the current packet:
 *
 *   need == 0, hlen == 0   at the start of a packet
 *   need == 0, hlen > 0    its fixed header is split: small[0..hlen) holds
 *                          the type byte and the Remaining Length bytes seen
 *   need > 0               the header is whole and the packet is need bytes;
 *                          have of them are assembled, in small when need
 *                          fits there, else in buf (in_buf); in lazy mode
 *                          without storage yet, have == 0 and the stream
 *                          wants need bytes
 *   returned               the last call returned a packet; the next call
 *                          starts a new one
 *   need > max             the stream is dead (one marker value per error)
 *
 * A packet whole in the data fed is returned in place (the common case: a
 * read holds whole packets).  The declared size is checked against max the
 * moment the Remaining Length is complete, and while it is still incomplete
 * against the smallest size it can still describe, so an oversize packet is
 * refused before any of its body is stored.
 */
#include <limits.h>
#include <string.h>

#include "mqtt.h"
#include "mqtt_stream.h"

/* Dead-stream markers: both larger than any packet MQTT can describe
 * (1 + 4 + 268435455 bytes), so they never collide with a real size. */
#define DEAD_MALFORMED ((size_t)-1)
#define DEAD_TOO_BIG ((size_t)-2)

static bool dead(const struct mqtt_stream *s)
{
  return s->need == DEAD_MALFORMED || s->need == DEAD_TOO_BIG;
}

void mqtt_stream_init(struct mqtt_stream *s, uint8_t *storage, size_t cap)
{
  memset(s, 0, sizeof *s);
  s->buf = storage;
  s->cap = storage != NULL ? cap : 0;
  s->max = s->cap;
}

void mqtt_stream_init_lazy(struct mqtt_stream *s, size_t max_packet)
{
  memset(s, 0, sizeof *s);
  s->max = max_packet;
  s->lazy = true;
}

void mqtt_stream_reset(struct mqtt_stream *s)
{
  s->have = 0;
  s->need = 0;
  s->hlen = 0;
  s->in_buf = false;
  s->returned = false;
}

static int die(struct mqtt_stream *s, int err)
{
  mqtt_stream_reset(s);
  s->need = err == PROTO_TOO_BIG ? DEAD_TOO_BIG : DEAD_MALFORMED;
  return err;
}

size_t mqtt_stream_wants(const struct mqtt_stream *s)
{
  if (!s->lazy || dead(s) || s->returned || s->need <= sizeof s->small || s->in_buf)
    return 0;
  return s->need;
}

void mqtt_stream_give(struct mqtt_stream *s, uint8_t *storage)
{
  size_t want = mqtt_stream_wants(s);
  if (want == 0 || storage == NULL)
    return;
  s->buf = storage;
  s->cap = want;
  memcpy(s->buf, s->small, s->hlen);
  s->have = s->hlen;
  s->in_buf = true;
}

uint8_t *mqtt_stream_take_back(struct mqtt_stream *s)
{
  uint8_t *b = s->buf;
  if (!s->lazy || b == NULL)
    return NULL;
  if (s->in_buf && !s->returned)
    return NULL; /* the packet being assembled is in it */
  s->buf = NULL;
  s->cap = 0;
  s->in_buf = false;
  return b;
}

/* The header is whole (small[0..hlen)) and the packet is total bytes: where
 * it is assembled.  False when that needs storage first (lazy: the stream
 * now wants total bytes). */
static bool start_body(struct mqtt_stream *s, size_t total)
{
  s->need = total;
  s->have = s->hlen;
  if (total <= sizeof s->small)
    return true;
  if (s->buf != NULL && s->cap >= total) {
    memcpy(s->buf, s->small, s->hlen);
    s->in_buf = true;
    return true;
  }
  s->have = 0; /* lazy: mqtt_stream_wants() */
  return false;
}

/* The smallest packet a fixed header of hlen bytes whose Remaining Length
 * is still incomplete can describe: at least one more length byte, and a
 * value of at least 128^(hlen - 1). */
static uint64_t min_total(size_t hlen)
{
  return (uint64_t)hlen + 1 + ((uint64_t)1 << (7 * (hlen - 1)));
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
  if (s->returned)
    mqtt_stream_reset(s);
  if (data == NULL)
    len = 0;
  /* The return value is an int, so consume at most INT_MAX per call; the
   * caller's loop comes back for the rest. */
  if (len > (size_t)INT_MAX)
    len = (size_t)INT_MAX;
  if (mqtt_stream_wants(s) != 0)
    return 0;

  while (used < len) {
    if (s->need == 0) {
      uint32_t remaining;
      int n;

      if (s->hlen == 0 && len - used >= 2) {
        /* At a packet boundary: is the header, and the packet, all here? */
        size_t vl = len - used - 1;
        n = mqtt_varint_decode(data + used + 1, vl < 4 ? vl : 4, &remaining);
        if (n > 0) {
          size_t total = 1 + (size_t)n + remaining;
          if (total > s->max)
            return die(s, PROTO_TOO_BIG);
          if (total <= len - used) {
            *pkt = data + used;
            *pkt_len = total;
            s->returned = true;
            return (int)(used + total);
          }
          memcpy(s->small, data + used, 1 + (size_t)n);
          s->hlen = (uint8_t)(1 + n);
          used += 1 + (size_t)n;
          if (!start_body(s, total))
            return (int)used;
          continue;
        }
        if (n != PROTO_INCOMPLETE)
          return die(s, PROTO_MALFORMED);
      }
      /* The header is split: byte by byte. */
      s->small[s->hlen++] = data[used++];
      if (s->hlen < 2)
        continue;
      n = mqtt_varint_decode(s->small + 1, s->hlen - 1, &remaining);
      if (n == PROTO_INCOMPLETE) {
        if (min_total(s->hlen) > s->max)
          return die(s, PROTO_TOO_BIG);
        continue;
      }
      if (n < 0)
        return die(s, PROTO_MALFORMED);
      if ((uint64_t)s->hlen + remaining > s->max)
        return die(s, PROTO_TOO_BIG);
      if (!start_body(s, s->hlen + (size_t)remaining))
        return (int)used;
    } else {
      uint8_t *dst = s->in_buf ? s->buf : s->small;
      size_t n = s->need - s->have;
      if (n > len - used)
        n = len - used;
      memcpy(dst + s->have, data + used, n);
      s->have += n;
      used += n;
    }
    if (s->need != 0 && s->have == s->need) {
      *pkt = s->in_buf ? s->buf : s->small;
      *pkt_len = s->need;
      s->returned = true;
      break;
    }
  }
  return (int)used;
}
