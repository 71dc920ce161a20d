/*
 * dtls_record.c - record headers, the ClientHello sniff, the AEAD
 * additional data and the anti-replay window (dtls_record.h).
 */
#include "dtls_record.h"

/* DTLS 1.0 (0xFEFF) and 1.2 (0xFEFD); 1.2 servers answer both in the
 * first flight (a ClientHello may carry 1.0 in its record layer). */
static int known_version(uint16_t v)
{
  return v == 0xFEFD || v == 0xFEFF;
}

size_t dtls_record_parse(const uint8_t *p, size_t n, struct dtls_record *r)
{
  size_t total;
  if (n < DTLS_RECORD_HEADER)
    return 0;
  r->type = p[0];
  r->version = (uint16_t)(p[1] << 8 | p[2]);
  r->epoch = (uint16_t)(p[3] << 8 | p[4]);
  r->seq = 0;
  for (int i = 5; i < 11; i++)
    r->seq = r->seq << 8 | p[i];
  r->length = (uint16_t)(p[11] << 8 | p[12]);
  if (r->type < DTLS_CT_CHANGE_CIPHER_SPEC || r->type > DTLS_CT_APPLICATION_DATA ||
      !known_version(r->version))
    return 0;
  /* DTLSCiphertext may be 2^14 + 2048 long (RFC 6347 §4.1 / RFC 5246). */
  if (r->length > 16384 + 2048)
    return 0;
  total = DTLS_RECORD_HEADER + (size_t)r->length;
  return total <= n ? total : 0;
}

/* A handshake fragment carrying a whole ClientHello: type 1, fragment
 * offset 0 and fragment length equal to the message length (12-byte
 * handshake header, RFC 6347 §4.2.2), and room for at least its version
 * and random. */
static int is_whole_client_hello(const uint8_t *f, size_t len)
{
  uint32_t mlen, foff, flen;
  if (len < 12 + 2 + 32)
    return 0;
  mlen = (uint32_t)f[1] << 16 | (uint32_t)f[2] << 8 | f[3];
  foff = (uint32_t)f[6] << 16 | (uint32_t)f[7] << 8 | f[8];
  flen = (uint32_t)f[9] << 16 | (uint32_t)f[10] << 8 | f[11];
  return f[0] == DTLS_HS_CLIENT_HELLO && foff == 0 && flen == mlen && 12u + flen == len;
}

enum dtls_kind dtls_classify(const uint8_t *p, size_t n)
{
  struct dtls_record first, r;
  size_t off, used = dtls_record_parse(p, n, &first);
  if (used == 0)
    return DTLS_NOT_DTLS;
  for (off = used; off < n; off += used) {
    used = dtls_record_parse(p + off, n - off, &r);
    if (used == 0)
      return DTLS_NOT_DTLS;
  }
  if (first.type == DTLS_CT_HANDSHAKE && first.epoch == 0 &&
      is_whole_client_hello(p + DTLS_RECORD_HEADER, first.length))
    return DTLS_CLIENT_HELLO;
  return DTLS_RECORDS;
}

static void put48(uint8_t *p, uint64_t v)
{
  for (int i = 5; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

void dtls_record_header(uint8_t out[DTLS_RECORD_HEADER], uint8_t type, uint16_t version,
                        uint16_t epoch, uint64_t seq, uint16_t length)
{
  out[0] = type;
  out[1] = (uint8_t)(version >> 8);
  out[2] = (uint8_t)version;
  out[3] = (uint8_t)(epoch >> 8);
  out[4] = (uint8_t)epoch;
  put48(out + 5, seq);
  out[11] = (uint8_t)(length >> 8);
  out[12] = (uint8_t)length;
}

/* The header's fields in another order: epoch and sequence number first. */
void dtls_aead_aad(uint8_t out[DTLS_AEAD_AAD_LEN], const struct dtls_record *r)
{
  out[0] = (uint8_t)(r->epoch >> 8);
  out[1] = (uint8_t)r->epoch;
  put48(out + 2, r->seq);
  out[8] = r->type;
  out[9] = (uint8_t)(r->version >> 8);
  out[10] = (uint8_t)r->version;
  out[11] = (uint8_t)(r->length >> 8);
  out[12] = (uint8_t)r->length;
}

/* Empty, top = 0 and seen = 0: record 0 is fresh, as it must be. */
bool dtls_replay_fresh(const struct dtls_replay *w, uint64_t seq)
{
  uint64_t back;
  if (seq > w->top)
    return true;
  back = w->top - seq;
  return back < 64 && !(w->seen >> back & 1);
}

void dtls_replay_mark(struct dtls_replay *w, uint64_t seq)
{
  if (seq > w->top) {
    uint64_t ahead = seq - w->top;
    w->seen = ahead < 64 ? w->seen << ahead : 0;
    w->top = seq;
    w->seen |= 1;
  } else if (w->top - seq < 64) {
    w->seen |= 1ull << (w->top - seq);
  }
}
