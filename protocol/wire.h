/*
 * wire.h - protocol-internal, bounds-checked byte cursors.
 *
 * Every codec in protocol/ reads and writes fields through these two cursors
 * and never indexes a buffer by hand, so a bounds check cannot be forgotten
 * in one message type and remembered in another.  This header is internal to
 * protocol/: nothing outside protocol/ may include it (docs/architecture.md §1, dependency
 * rule).
 *
 * Reader: every wire_read_* checks that the whole field lies inside the
 * buffer before touching it and returns PROTO_MALFORMED otherwise, leaving
 * the cursor where it was.  Byte strings are returned as views into the
 * buffer, never copied.
 *
 * Writer: every wire_write_* checks the remaining capacity first and returns
 * PROTO_BUF_TOO_SMALL otherwise, writing nothing.  Integers are big-endian
 * (network order), as both MQTT and MQTT-SN require.
 *
 * A measuring writer (wire_writer_init_measure) stores nothing and only
 * counts: the same code that writes a message then also sizes it, so the
 * size an encoder announces and the octets it writes cannot disagree.
 */
#ifndef FLEETGW_WIRE_H
#define FLEETGW_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_err.h"

struct wire_reader {
  const uint8_t *buf; /* the input, not owned */
  size_t len;         /* its size */
  size_t pos;         /* next octet to read, 0 <= pos <= len */
};

struct wire_writer {
  uint8_t *buf; /* the output, not owned; NULL when cap is 0 or when measuring */
  size_t cap;   /* its size; SIZE_MAX when measuring */
  size_t pos;   /* octets written (or counted) so far, 0 <= pos <= cap */
  bool measure; /* count only, store nothing */
};

void wire_reader_init(struct wire_reader *r, const uint8_t *buf, size_t len);

/* Octets not yet read. */
size_t wire_remaining(const struct wire_reader *r);

/* Offset of the next octet to read (octets consumed so far). */
size_t wire_pos(const struct wire_reader *r);

int wire_read_u8(struct wire_reader *r, uint8_t *out);
int wire_read_u16(struct wire_reader *r, uint16_t *out);
int wire_read_u32(struct wire_reader *r, uint32_t *out);

/* A view of the next n octets; *out points into the reader's buffer. */
int wire_read_bytes(struct wire_reader *r, size_t n, const uint8_t **out);

/* A view of everything not yet read (possibly zero octets). */
void wire_read_rest(struct wire_reader *r, const uint8_t **out, size_t *n);

void wire_writer_init(struct wire_writer *w, uint8_t *buf, size_t cap);

/* A writer with no buffer that accepts every write up to SIZE_MAX octets and
 * only advances its count.  Argument checks still apply (wire_write_bytes
 * refuses a NULL source with n > 0), so measuring fails where writing would. */
void wire_writer_init_measure(struct wire_writer *w);

/* Octets written (or, when measuring, counted) so far. */
size_t wire_written(const struct wire_writer *w);

int wire_write_u8(struct wire_writer *w, uint8_t v);
int wire_write_u16(struct wire_writer *w, uint16_t v);
int wire_write_u32(struct wire_writer *w, uint32_t v);

/* Copies n octets from p; p may be NULL when n is 0. */
int wire_write_bytes(struct wire_writer *w, const uint8_t *p, size_t n);

#endif
