/*
 * fuzz_provisioning.c - the three fleet-provisioning reply parsers on
 * arbitrary bytes.
 *
 * Every input goes to prov_parse_cert_reply (with and without a private
 * key expected), prov_parse_register_reply and prov_parse_error.  Nothing
 * may crash or leak, and for accepted inputs:
 *   - a certificate reply has its three (or four) strings, none empty, and
 *     no private key unless one was expected;
 *   - a register reply's thing name passes prov_thing_name_ok, and its
 *     device configuration, when present, is a JSON object that parses
 *     again;
 *   - an error reply has non-NULL strings and a status code in 0..999;
 *   - a CSR reply accepted with a key expected is also accepted without.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "provisioning.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_cert(const char *json, size_t len, int expect_key)
{
  struct prov_cert_reply r;
  int rc = prov_parse_cert_reply(json, len, expect_key, &r);

  if (rc == PROTO_OK) {
    if (!r.certificate_id || !r.certificate_id[0] || !r.certificate_pem ||
        !r.certificate_pem[0] || !r.ownership_token || !r.ownership_token[0])
      abort();
    if (expect_key != (r.private_key != NULL))
      abort();
    if (expect_key && !r.private_key[0])
      abort();
  } else {
    if (rc != PROTO_MALFORMED && rc != PROTO_TOO_BIG)
      abort();
    if (r.certificate_id || r.certificate_pem || r.ownership_token || r.private_key)
      abort();
  }
  prov_cert_reply_clear(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const char *json = (const char *)data;
  struct prov_register_reply reg;
  struct prov_error err;
  struct prov_cert_reply c1, c0;
  int rc1, rc0;

  check_cert(json, size, 0);
  check_cert(json, size, 1);

  /* A reply good enough with a private key is good enough without one. */
  rc1 = prov_parse_cert_reply(json, size, 1, &c1);
  rc0 = prov_parse_cert_reply(json, size, 0, &c0);
  if (rc1 == PROTO_OK && rc0 != PROTO_OK)
    abort();
  prov_cert_reply_clear(&c1);
  prov_cert_reply_clear(&c0);

  if (prov_parse_register_reply(json, size, &reg) == PROTO_OK) {
    if (!prov_thing_name_ok(reg.thing_name))
      abort();
    if (reg.device_configuration) {
      cJSON *cfg = cJSON_Parse(reg.device_configuration);
      if (!cJSON_IsObject(cfg))
        abort();
      cJSON_Delete(cfg);
    }
  } else if (reg.thing_name || reg.device_configuration) {
    abort();
  }
  prov_register_reply_clear(&reg);

  if (prov_parse_error(json, size, &err) == PROTO_OK) {
    if (!err.error_code || !err.error_message || err.status_code < 0 || err.status_code > 999)
      abort();
    (void)prov_error_is_retryable(&err);
  } else if (err.error_code || err.error_message || err.status_code) {
    abort();
  }
  prov_error_clear(&err);
  return 0;
}
