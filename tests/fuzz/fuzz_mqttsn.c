/*
 * fuzz_mqttsn.c - libFuzzer target for the MQTT-SN v1.2 codec.
 *
 * Any input: mqttsn_decode must not crash, over-read or trip UBSan.  When it
 * accepts the input, the codec must round-trip canonically:
 *   - encode(decode(input)) succeeds, with exactly mqttsn_encoded_size octets,
 *     and refuses a buffer one octet short;
 *   - decoding those octets succeeds and re-encodes to the very same octets;
 *   - when the input already used the canonical Length form (1 octet up to a
 *     total of 255, 3 octets from 258), the re-encoding equals the input
 *     byte for byte, since every field, every flag bit included, is kept.
 * An ENCAPSULATED message's inner message goes through the same checks.
 * A violated property aborts, which libFuzzer reports as a crash.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mqttsn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(bool cond)
{
  if (!cond)
    abort();
}

/* The 1-octet form is always canonical; the 3-octet form only for a Length
 * the 1-octet form cannot hold once its two octets are saved (>= 258). */
static bool canonical_length(const uint8_t *data, size_t size)
{
  unsigned declared;

  if (size < 1 || data[0] != 0x01)
    return true;
  declared = ((unsigned)data[1] << 8) | data[2]; /* decode succeeded: present */
  return declared >= 258;
}

static void check(const uint8_t *data, size_t size, int depth)
{
  struct mqttsn_msg msg, again;
  uint8_t *first, *second, *inner;
  int n, rc;

  if (mqttsn_decode(data, size, &msg) != PROTO_OK)
    return;
  require(strcmp(mqttsn_type_name(msg.type), "UNKNOWN") != 0);

  n = mqttsn_encoded_size(&msg);
  require(n >= 2);
  /* Exact-size buffers, so ASan catches a write past the reported size. */
  first = malloc((size_t)n);
  second = malloc((size_t)n);
  if (!first || !second)
    goto free_buffers;
  require(mqttsn_encode(&msg, first, (size_t)n - 1) == PROTO_BUF_TOO_SMALL);
  require(mqttsn_encode(&msg, first, (size_t)n) == n);
  require(mqttsn_decode(first, (size_t)n, &again) == PROTO_OK);
  require(again.type == msg.type);
  require(mqttsn_encode(&again, second, (size_t)n) == n);
  require(memcmp(first, second, (size_t)n) == 0);
  if (canonical_length(data, size))
    require((size_t)n == size && memcmp(first, data, size) == 0);

  if (msg.type == MQTTSN_ENCAPSULATED && depth == 0) {
    inner = malloc(msg.u.encap.inner.len);
    if (inner) {
      memcpy(inner, msg.u.encap.inner.p, msg.u.encap.inner.len);
      check(inner, msg.u.encap.inner.len, depth + 1);
      /* Nesting is refused by the decoder (mqttsn_decode.c). */
      rc = mqttsn_decode(inner, msg.u.encap.inner.len, &again);
      require(rc != PROTO_OK || again.type != MQTTSN_ENCAPSULATED);
      free(inner);
    }
  }

free_buffers:
  free(first);
  free(second);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  check(data, size, 0);
  return 0;
}
