/*
 * wire.c - the bounds-checked cursors of wire.h: the only code in protocol/
 * that computes raw byte offsets.
 *
 * Each check is written as "n > len - pos" rather than "pos + n > len" so
 * that a huge n cannot wrap the sum around and slip past the check; the
 * invariant pos <= len keeps the subtraction itself from wrapping.
 *
 * A measuring writer goes through the same checks as a real one and skips
 * only the stores, so a size measured here is the size a write produces.
 */
#include "wire.h"

#include <stdint.h>
#include <string.h>

void wire_reader_init(struct wire_reader *r, const uint8_t *buf, size_t len)
{
  r->buf = buf;
  r->len = buf ? len : 0;
  r->pos = 0;
}

size_t wire_remaining(const struct wire_reader *r)
{
  return r->len - r->pos;
}

size_t wire_pos(const struct wire_reader *r)
{
  return r->pos;
}

int wire_read_u8(struct wire_reader *r, uint8_t *out)
{
  if (wire_remaining(r) < 1)
    return PROTO_MALFORMED;
  *out = r->buf[r->pos];
  r->pos += 1;
  return PROTO_OK;
}

int wire_read_u16(struct wire_reader *r, uint16_t *out)
{
  const uint8_t *p;

  if (wire_remaining(r) < 2)
    return PROTO_MALFORMED;
  p = r->buf + r->pos;
  *out = (uint16_t)(((unsigned)p[0] << 8) | p[1]);
  r->pos += 2;
  return PROTO_OK;
}

int wire_read_u32(struct wire_reader *r, uint32_t *out)
{
  const uint8_t *p;

  if (wire_remaining(r) < 4)
    return PROTO_MALFORMED;
  p = r->buf + r->pos;
  /* Widen before shifting: p[0] << 24 on a promoted int would overflow. */
  *out = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
         (uint32_t)p[3];
  r->pos += 4;
  return PROTO_OK;
}

int wire_read_bytes(struct wire_reader *r, size_t n, const uint8_t **out)
{
  if (n > wire_remaining(r))
    return PROTO_MALFORMED;
  /* A zero-length view of an empty (NULL) buffer stays NULL rather than
   * becoming NULL + 0 arithmetic. */
  *out = r->buf ? r->buf + r->pos : NULL;
  r->pos += n;
  return PROTO_OK;
}

void wire_read_rest(struct wire_reader *r, const uint8_t **out, size_t *n)
{
  *n = wire_remaining(r);
  *out = r->buf ? r->buf + r->pos : NULL;
  r->pos = r->len;
}

void wire_writer_init(struct wire_writer *w, uint8_t *buf, size_t cap)
{
  w->buf = buf;
  w->cap = buf ? cap : 0;
  w->pos = 0;
  w->measure = false;
}

void wire_writer_init_measure(struct wire_writer *w)
{
  w->buf = NULL;
  w->cap = SIZE_MAX;
  w->pos = 0;
  w->measure = true;
}

size_t wire_written(const struct wire_writer *w)
{
  return w->pos;
}

static int writer_room(const struct wire_writer *w, size_t n)
{
  return n <= w->cap - w->pos;
}

int wire_write_u8(struct wire_writer *w, uint8_t v)
{
  if (!writer_room(w, 1))
    return PROTO_BUF_TOO_SMALL;
  if (!w->measure)
    w->buf[w->pos] = v;
  w->pos += 1;
  return PROTO_OK;
}

int wire_write_u16(struct wire_writer *w, uint16_t v)
{
  if (!writer_room(w, 2))
    return PROTO_BUF_TOO_SMALL;
  if (!w->measure) {
    w->buf[w->pos] = (uint8_t)(v >> 8);
    w->buf[w->pos + 1] = (uint8_t)(v & 0xFF);
  }
  w->pos += 2;
  return PROTO_OK;
}

int wire_write_u32(struct wire_writer *w, uint32_t v)
{
  if (!writer_room(w, 4))
    return PROTO_BUF_TOO_SMALL;
  if (!w->measure) {
    w->buf[w->pos] = (uint8_t)(v >> 24);
    w->buf[w->pos + 1] = (uint8_t)((v >> 16) & 0xFF);
    w->buf[w->pos + 2] = (uint8_t)((v >> 8) & 0xFF);
    w->buf[w->pos + 3] = (uint8_t)(v & 0xFF);
  }
  w->pos += 4;
  return PROTO_OK;
}

int wire_write_bytes(struct wire_writer *w, const uint8_t *p, size_t n)
{
  if (!writer_room(w, n))
    return PROTO_BUF_TOO_SMALL;
  /* memcpy with a NULL source is undefined even for n == 0. */
  if (n > 0) {
    if (!p)
      return PROTO_INVALID_ARG;
    if (!w->measure)
      memcpy(w->buf + w->pos, p, n);
  }
  w->pos += n;
  return PROTO_OK;
}
