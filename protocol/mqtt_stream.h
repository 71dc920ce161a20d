/*
 * mqtt_stream.h - streaming MQTT framer: feed it TCP plaintext in chunks of
 * any size, take whole packets out.  Pure: no I/O, and it never allocates.
 *
 * A packet that lies whole in the chunk being fed is returned where it lies,
 * without a copy.  Only a packet split across chunks is assembled, in storage
 * the caller owns, in one of two modes:
 *
 *   fixed (mqtt_stream_init): one buffer of max_packet bytes given at init
 *     and kept;
 *   lazy (mqtt_stream_init_lazy): no storage until a split packet needs it.
 *     Then mqtt_stream_wants() says how many bytes (exactly that packet's
 *     size), the caller gives them (mqtt_stream_give) and takes them back
 *     once the packet has been handled (mqtt_stream_take_back), so a stream
 *     between packets holds nothing.  Thousands of idle connections then
 *     hold no input buffer at all.
 *
 * In both modes a packet whose declared size exceeds max_packet is refused
 * with PROTO_TOO_BIG as soon as its fixed header shows it (or shows it must
 * be larger), before any of its body is stored, so a peer can never make the
 * stream take more than max_packet bytes.  The fixed header of a packet split
 * inside it, and the whole of a split packet of up to 8 bytes (the broker's
 * acknowledgements), are kept in the stream itself.
 *
 * Usage (lazy; fixed is the same without the storage lines):
 *   mqtt_stream_init_lazy(&s, max_packet);
 *   on read: p = data; n = len;
 *     while (n > 0) {
 *       used = mqtt_stream_feed(&s, p, n, &pkt, &pkt_len);
 *       if (used < 0) -> protocol error, close the connection
 *       p += used; n -= used;
 *       if (pkt) handle(pkt, pkt_len);   // whole packet, header included;
 *                                        // valid until the next feed call
 *       if ((want = mqtt_stream_wants(&s)) != 0) {
 *         free(mqtt_stream_take_back(&s));
 *         buf = malloc(want) or fail; mqtt_stream_give(&s, buf);
 *       }
 *     }
 *     free(mqtt_stream_take_back(&s));   // NULL unless between packets
 */
#ifndef FLEETGW_MQTT_STREAM_H
#define FLEETGW_MQTT_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_err.h"

struct mqtt_stream {
  uint8_t *buf;      /* storage of a split packet (the caller's), or NULL */
  size_t cap;        /* its size */
  size_t max;        /* the largest accepted packet */
  size_t have;       /* bytes of the current packet in buf */
  size_t need;       /* the current packet's size once its header is whole, else 0 */
  uint8_t small[8];  /* a split packet's fixed header, or all of a split
                        packet of up to 8 bytes (PUBACK, CONNACK, PINGRESP) */
  uint8_t hlen;      /* bytes of the fixed header in small */
  bool lazy;         /* storage given per split packet (mqtt_stream_give) */
  bool in_buf;       /* the current packet is assembled in buf */
  bool returned;     /* the last feed returned a packet, not yet released */
};

/* Fixed storage: storage[0..cap) for every split packet; max_packet = cap
 * (storage NULL: cap 0, so every packet is refused). */
void mqtt_stream_init(struct mqtt_stream *s, uint8_t *storage, size_t cap);
/* Lazy storage: none until a split packet needs it. */
void mqtt_stream_init_lazy(struct mqtt_stream *s, size_t max_packet);

/* Consume up to len bytes of data.  Returns the number of bytes consumed
 * (>= 0), and sets *pkt and *pkt_len to a whole packet when one is complete
 * (*pkt == NULL otherwise): it points into data when the packet was whole
 * there, into the storage otherwise.  Returns PROTO_MALFORMED for a bad
 * Remaining Length or PROTO_TOO_BIG for a packet larger than max_packet; the
 * stream is then dead (reset it to reuse).  A packet is returned as soon as
 * it is complete, so bytes after it are left for the next call: several
 * packets in one read need several calls.  While mqtt_stream_wants() is not
 * 0, it consumes nothing. */
int mqtt_stream_feed(struct mqtt_stream *s, const uint8_t *data, size_t len,
                     const uint8_t **pkt, size_t *pkt_len);

/* Lazy mode: the bytes of storage the stream needs before it can go on (the
 * size of the packet being assembled, <= max_packet), or 0. */
size_t mqtt_stream_wants(const struct mqtt_stream *s);
/* Lazy mode: gives storage of mqtt_stream_wants() bytes, which the stream
 * uses until the caller takes it back.  Ignored while the stream wants none
 * (the storage then stays the caller's). */
void mqtt_stream_give(struct mqtt_stream *s, uint8_t *storage);
/* Lazy mode: hands the storage back (for the caller to free) when the stream
 * no longer needs what is in it: between packets (a packet returned from it
 * is then no longer valid), or while it wants storage again.  NULL when the
 * stream holds none or is in the middle of a packet in it (to drop that
 * packet, when the connection closes: mqtt_stream_reset first). */
uint8_t *mqtt_stream_take_back(struct mqtt_stream *s);

/* Back to the start of a packet (a dead stream lives again).  The storage
 * stays where it is. */
void mqtt_stream_reset(struct mqtt_stream *s);

#endif
