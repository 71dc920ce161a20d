/*
 * fuzz_mqtt_decode.c - mqtt_decode() on arbitrary bytes taken as one whole
 * packet.  Whatever it accepts must re-encode to the very same bytes: PUBLISH
 * through mqtt_encode_publish, the packet-id acks through mqtt_encode_ack and
 * PINGRESP through mqtt_encode_simple.  This holds because the decoder refuses
 * everything the encoders cannot produce (non-minimal Remaining Length, DUP
 * with QoS 0, reserved flags).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"

static uint8_t out[1 << 17];

static void expect_same(int n, const uint8_t *data, size_t size)
{
  if (n < 0 || (size_t)n != size || memcmp(out, data, size) != 0)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct mqtt_packet pkt;
  int rc = mqtt_decode(data, size, &pkt);

  if (rc != PROTO_OK && rc != PROTO_MALFORMED && rc != PROTO_UNSUPPORTED)
    abort();
  if (rc != PROTO_OK || size > sizeof out)
    return 0;
  if (mqtt_type_name(pkt.type) == NULL)
    abort();

  switch (pkt.type) {
  case MQTT_PUBLISH: {
    const struct mqtt_publish *p = &pkt.u.publish;
    /* The views must lie inside the input. */
    if (p->topic.p < data || p->topic.p + p->topic.len > data + size ||
        p->payload.p < data || p->payload.p + p->payload.len != data + size)
      abort();
    if (mqtt_encode_publish(p, NULL, 0) != (int)size)
      abort();
    expect_same(mqtt_encode_publish(p, out, sizeof out), data, size);
    break;
  }
  case MQTT_PUBACK:
  case MQTT_PUBREC:
  case MQTT_PUBREL:
  case MQTT_PUBCOMP:
  case MQTT_UNSUBACK:
    expect_same(mqtt_encode_ack(pkt.type, pkt.u.packet_id, out, sizeof out), data, size);
    break;
  case MQTT_PINGRESP:
    expect_same(mqtt_encode_simple(MQTT_PINGRESP, out, sizeof out), data, size);
    break;
  case MQTT_CONNACK:
    if (size != 4 || pkt.u.connack.rc != data[3] || mqtt_connack_str(pkt.u.connack.rc) == NULL)
      abort();
    break;
  case MQTT_SUBACK:
    if (pkt.u.suback.count == 0 || pkt.u.suback.codes + pkt.u.suback.count != data + size)
      abort();
    break;
  default:
    abort(); /* a server-only type must never decode */
  }
  return 0;
}
