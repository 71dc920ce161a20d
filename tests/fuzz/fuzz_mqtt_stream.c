/*
 * fuzz_mqtt_stream.c - the streaming framer on arbitrary input cut into
 * arbitrary chunks.
 *
 * Input layout: byte 0 = k (number of chunk sizes, 1..8, low 3 bits),
 * byte 1 = buffer capacity selector (cap = byte * 4 + 2), then k bytes of
 * chunk sizes (each byte + 1, used in turn), then the stream itself.
 *
 * Checks: progress on every call, packets within the caller's storage and
 * no larger than it, packets back to back equal to the stream consumed so
 * far, and mqtt_decode run on each (it must not crash).  The storage is an
 * exact-size heap block so AddressSanitizer sees any overrun.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"
#include "mqtt_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct mqtt_stream s;
  size_t k, cap, pos, framed, ci = 0;
  const uint8_t *chunks, *stream;
  uint8_t *storage;

  if (size < 2)
    return 0;
  k = (size_t)(data[0] & 7) + 1;
  cap = (size_t)data[1] * 4 + 2;
  if (size < 2 + k)
    return 0;
  chunks = data + 2;
  stream = data + 2 + k;
  size -= 2 + k;

  storage = malloc(cap);
  if (storage == NULL)
    return 0;
  mqtt_stream_init(&s, storage, cap);

  pos = 0;     /* bytes of the stream handed to the framer */
  framed = 0;  /* bytes of the stream returned as whole packets */
  while (pos < size) {
    size_t n = (size_t)chunks[ci++ % k] + 1;
    const uint8_t *p = stream + pos;
    if (n > size - pos)
      n = size - pos;
    pos += n;
    while (n > 0) {
      const uint8_t *pkt;
      size_t pkt_len;
      struct mqtt_packet dec;
      int used = mqtt_stream_feed(&s, p, n, &pkt, &pkt_len);
      if (used < 0) {
        if (used != PROTO_MALFORMED && used != PROTO_TOO_BIG)
          abort();
        goto done;
      }
      if ((size_t)used > n || (used == 0 && pkt == NULL))
        abort();
      p += used;
      n -= (size_t)used;
      if (pkt != NULL) {
        if (pkt != storage || pkt_len < 2 || pkt_len > cap)
          abort();
        if (framed + pkt_len > (size_t)(p - stream) ||
            memcmp(pkt, stream + framed, pkt_len) != 0)
          abort();
        framed += pkt_len;
        (void)mqtt_decode(pkt, pkt_len, &dec);
      }
    }
  }
done:
  free(storage);
  return 0;
}
