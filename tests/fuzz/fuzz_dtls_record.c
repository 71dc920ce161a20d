/*
 * fuzz_dtls_record.c - the DTLS record classifier that runs on every
 * datagram of the DTLS port before OpenSSL sees it (protocol/dtls_record.h).
 *
 * Nothing may crash or read out of bounds on any input, and:
 *   - a parsed record never claims more bytes than it was given;
 *   - a datagram classified as DTLS is exactly a sequence of records;
 *   - a ClientHello is a handshake record in epoch 0.
 */
#include <stdint.h>
#include <stdlib.h>

#include "dtls_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct dtls_record r;
  size_t used = dtls_record_parse(data, size, &r), off = 0;
  enum dtls_kind k = dtls_classify(data, size);

  if (used > size || (used && used != DTLS_RECORD_HEADER + (size_t)r.length))
    abort();
  if (k != DTLS_NOT_DTLS) {
    while (off < size) {
      size_t n = dtls_record_parse(data + off, size - off, &r);
      if (n == 0)
        abort();
      off += n;
    }
    if (off != size)
      abort();
  }
  if (k == DTLS_CLIENT_HELLO) {
    dtls_record_parse(data, size, &r);
    if (r.type != DTLS_CT_HANDSHAKE || r.epoch != 0)
      abort();
  }
  return 0;
}
