/*
 * mqtt_stream.h - streaming MQTT framer: feed it TCP plaintext in chunks of
 * any size, take whole packets out.  Pure: no I/O.  The caller owns the
 * storage (a fixed buffer of max_packet bytes given at init), so the framer
 * never allocates and a peer can never make it grow: a packet whose declared
 * size exceeds the buffer is refused with PROTO_TOO_BIG as soon as its fixed
 * header has been read, before its body is buffered.
 *
 * Usage:
 *   mqtt_stream_init(&s, storage, sizeof storage);
 *   on read: p = data; n = len;
 *     while (n > 0) {
 *       used = mqtt_stream_feed(&s, p, n, &pkt, &pkt_len);
 *       if (used < 0) -> protocol error, close the connection
 *       p += used; n -= used;
 *       if (pkt) handle(pkt, pkt_len);   // whole packet, header included;
 *                                        // valid until the next feed call
 *     }
 */
#ifndef FLEETGW_MQTT_STREAM_H
#define FLEETGW_MQTT_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "proto_err.h"

struct mqtt_stream {
  uint8_t *buf;      /* caller's storage */
  size_t cap;        /* its size == the largest accepted packet */
  size_t have;       /* bytes of the current packet buffered so far */
  size_t need;       /* total size of the current packet once known, else 0 */
};

void mqtt_stream_init(struct mqtt_stream *s, uint8_t *storage, size_t cap);

/* Consume up to len bytes of data.  Returns the number of bytes consumed
 * (>= 0), and sets *pkt and *pkt_len to a whole packet when one is complete
 * (*pkt == NULL otherwise).  Returns PROTO_MALFORMED for a bad Remaining
 * Length or PROTO_TOO_BIG for a packet larger than cap; the stream is then
 * dead (reset it to reuse).  A packet is returned as soon as it is complete,
 * so bytes after it are left for the next call: several packets in one read
 * need several calls. */
int mqtt_stream_feed(struct mqtt_stream *s, const uint8_t *data, size_t len,
                     const uint8_t **pkt, size_t *pkt_len);

void mqtt_stream_reset(struct mqtt_stream *s);

#endif
