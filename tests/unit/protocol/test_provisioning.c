/*
 * test_provisioning.c - fleet-provisioning payloads and topics (docs/protocol-notes.md
 * §5; the bare § numbers below refer to it).
 *
 * provisioning.c is included with malloc() redirected to a counting wrapper
 * so the last test can fail the 1st, 2nd, ... allocation of every builder
 * and parser (cJSON gets the same allocator through its hooks) and prove
 * each failure returns cleanly; ASan's leak check at exit catches anything a
 * failure path forgot to free.
 */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long g_alloc_count;
static long g_fail_at = -1;

static void *t_malloc(size_t n)
{
  return g_alloc_count++ == g_fail_at ? NULL : malloc(n);
}

/* The system headers above are already in, so this only affects the .c. */
#define malloc(n) t_malloc(n)
#include "../../../protocol/provisioning.c"
#undef malloc

#include "test.h"

/* ---- Samples ------------------------------------------------------------ */

#define CERT_ID "4e2f6c0a9d1b8e3f7a5c2d4b6e8f0a1c3e5d7b9f2a4c6e8d0b1f3a5c7e9d2b4f"
#define CERT_PEM_JSON                                                          \
  "-----BEGIN CERTIFICATE-----\\nMIIDWTCCAkGgAwIBAgIUQ7ZlXz0z9Vv3b1ZkZ2N3c3RhbmRhcmQwDQYJKoZIhvcN\\n" \
  "AQELBQAwTTFLMEkGA1UECwxCQW1hem9uIFdlYiBTZXJ2aWNlcyBPPUFtYXpvbi5j\\n" \
  "-----END CERTIFICATE-----\\n"
#define CERT_PEM_C                                                             \
  "-----BEGIN CERTIFICATE-----\nMIIDWTCCAkGgAwIBAgIUQ7ZlXz0z9Vv3b1ZkZ2N3c3RhbmRhcmQwDQYJKoZIhvcN\n" \
  "AQELBQAwTTFLMEkGA1UECwxCQW1hem9uIFdlYiBTZXJ2aWNlcyBPPUFtYXpvbi5j\n"  \
  "-----END CERTIFICATE-----\n"
#define KEY_PEM_JSON                                                           \
  "-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEAv3Zq1x2w3e4r5t6y7u8i9o0p\\n" \
  "-----END RSA PRIVATE KEY-----\\n"
#define KEY_PEM_C                                                              \
  "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAv3Zq1x2w3e4r5t6y7u8i9o0p\n" \
  "-----END RSA PRIVATE KEY-----\n"
#define TOKEN "eyJ2ZXJzaW9uIjoiMjAxOS0xMC0wMSIsImVuYyI6ImNpcGhlcnRleHQifQ.AQIDBAUG"

/* The observed CreateKeysAndCertificate accepted reply (§5.2): key order
 * certificateId, certificatePem, privateKey, certificateOwnershipToken; a
 * 64-hex certificateId; a PKCS#1 RSA key; PEM newlines escaped as \n. */
static const char keys_accepted[] =
  "{\"certificateId\":\"" CERT_ID "\",\"certificatePem\":\"" CERT_PEM_JSON
  "\",\"privateKey\":\"" KEY_PEM_JSON "\",\"certificateOwnershipToken\":\"" TOKEN "\"}";

/* A CreateCertificateFromCsr accepted reply (§5.2 order: token first), with
 * the whitespace a pretty-printing simulator might add. */
static const char csr_accepted[] =
  "{\n  \"certificateOwnershipToken\": \"" TOKEN "\",\n  \"certificateId\": \"" CERT_ID
  "\",\n  \"certificatePem\": \"" CERT_PEM_JSON "\"\n}\n";

static int parse_cert(const char *json, int expect_key, struct prov_cert_reply *r)
{
  return prov_parse_cert_reply(json, strlen(json), expect_key, r);
}

static int parse_reg(const char *json, struct prov_register_reply *r)
{
  return prov_parse_register_reply(json, strlen(json), r);
}

static int parse_err(const char *json, struct prov_error *e)
{
  return prov_parse_error(json, strlen(json), e);
}

/* Asserts that json is an object whose member names are exactly names[0..n)
 * (each once, any order) and returns the parsed tree for further checks. */
static cJSON *check_exact_keys(const char *json, const char *const *names, size_t n)
{
  cJSON *root = cJSON_Parse(json), *it;
  size_t count = 0, i;

  ASSERT_TRUE(cJSON_IsObject(root));
  if (!root)
    return NULL;
  cJSON_ArrayForEach(it, root) {
    bool known = false;
    for (i = 0; i < n; i++)
      known = known || strcmp(it->string, names[i]) == 0;
    ASSERT_TRUE(known);
    count++;
  }
  ASSERT_EQ(count, n);
  return root;
}

/* ---- Topics ------------------------------------------------------------- */

static void test_topics(void)
{
  char buf[160];

  ASSERT_EQ(prov_topic_create_from_csr(NULL, buf, sizeof(buf)), 38);
  ASSERT_STR_EQ(buf, "$aws/certificates/create-from-csr/json");
  ASSERT_EQ(prov_topic_create_from_csr("accepted", buf, sizeof(buf)), 47);
  ASSERT_STR_EQ(buf, "$aws/certificates/create-from-csr/json/accepted");
  ASSERT_EQ(prov_topic_create_from_csr("rejected", buf, sizeof(buf)), 47);
  ASSERT_STR_EQ(buf, "$aws/certificates/create-from-csr/json/rejected");

  ASSERT_EQ(prov_topic_create_keys(NULL, buf, sizeof(buf)), 29);
  ASSERT_STR_EQ(buf, "$aws/certificates/create/json");
  ASSERT_TRUE(prov_topic_create_keys("accepted", buf, sizeof(buf)) > 0);
  ASSERT_STR_EQ(buf, "$aws/certificates/create/json/accepted");
  ASSERT_TRUE(prov_topic_create_keys("rejected", buf, sizeof(buf)) > 0);
  ASSERT_STR_EQ(buf, "$aws/certificates/create/json/rejected");

  ASSERT_EQ(prov_topic_register("FleetTemplate_1-a", NULL, buf, sizeof(buf)),
            (int)strlen("$aws/provisioning-templates/FleetTemplate_1-a/provision/json"));
  ASSERT_STR_EQ(buf, "$aws/provisioning-templates/FleetTemplate_1-a/provision/json");
  ASSERT_TRUE(prov_topic_register("T", "accepted", buf, sizeof(buf)) > 0);
  ASSERT_STR_EQ(buf, "$aws/provisioning-templates/T/provision/json/accepted");
  ASSERT_TRUE(prov_topic_register("T", "rejected", buf, sizeof(buf)) > 0);
  ASSERT_STR_EQ(buf, "$aws/provisioning-templates/T/provision/json/rejected");
}

static void test_topic_errors(void)
{
  char buf[160];
  char name37[38];

  /* Exactly fitting (length + NUL) works; one byte less does not. */
  ASSERT_EQ(prov_topic_create_keys(NULL, buf, 30), 29);
  ASSERT_EQ(prov_topic_create_keys(NULL, buf, 29), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(prov_topic_create_keys(NULL, buf, 0), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(prov_topic_create_keys(NULL, NULL, 10), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_create_from_csr("accepted", buf, 48), 47);
  ASSERT_EQ(prov_topic_create_from_csr("accepted", buf, 47), PROTO_BUF_TOO_SMALL);
  ASSERT_EQ(prov_topic_register("T", "accepted", buf, 20), PROTO_BUF_TOO_SMALL);

  /* Only the two reply suffixes exist (§5.1). */
  ASSERT_EQ(prov_topic_create_keys("", buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_create_keys("Accepted", buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_create_from_csr("+", buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register("T", "accepted/x", buf, sizeof(buf)), PROTO_INVALID_ARG);

  /* Template names: 1..36 of [0-9A-Za-z_-] (§5.1). */
  memset(name37, 'a', 37);
  name37[37] = '\0';
  ASSERT_EQ(prov_topic_register(name37, NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  name37[36] = '\0';
  ASSERT_TRUE(prov_topic_register(name37, NULL, buf, sizeof(buf)) > 0);
  ASSERT_EQ(prov_topic_register("", NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register(NULL, NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register("a/b", NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register("+", NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register("#", NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register("a.b", NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_topic_register("a:b", NULL, buf, sizeof(buf)), PROTO_INVALID_ARG);
}

static void test_name_validators(void)
{
  char name[130];

  ASSERT_TRUE(prov_template_name_ok("abcXYZ019_-"));
  ASSERT_TRUE(!prov_template_name_ok("with space"));
  ASSERT_TRUE(!prov_template_name_ok("caf\xc3\xa9"));
  ASSERT_TRUE(!prov_template_name_ok(NULL));

  ASSERT_TRUE(prov_thing_name_ok("gw-01:leaf_0042"));
  ASSERT_TRUE(prov_thing_name_ok("a"));
  ASSERT_TRUE(!prov_thing_name_ok(""));
  ASSERT_TRUE(!prov_thing_name_ok(NULL));
  ASSERT_TRUE(!prov_thing_name_ok("a/b"));
  ASSERT_TRUE(!prov_thing_name_ok("a b"));
  ASSERT_TRUE(!prov_thing_name_ok("a.b"));
  ASSERT_TRUE(!prov_thing_name_ok("a+"));
  ASSERT_TRUE(!prov_thing_name_ok("$aws"));
  memset(name, 'x', 129);
  name[129] = '\0';
  ASSERT_TRUE(!prov_thing_name_ok(name));
  name[128] = '\0';
  ASSERT_TRUE(prov_thing_name_ok(name));
}

/* ---- Requests ----------------------------------------------------------- */

static void test_build_csr_request(void)
{
  static const char *const names[] = {"certificateSigningRequest"};
  const char *csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBDDCBsgIBADAQ\n"
                    "-----END CERTIFICATE REQUEST-----\n";
  char *s = prov_build_csr_request(csr);
  cJSON *root;

  ASSERT_STR_EQ(s, "{\"certificateSigningRequest\":\"-----BEGIN CERTIFICATE REQUEST-----"
                   "\\nMIIBDDCBsgIBADAQ\\n-----END CERTIFICATE REQUEST-----\\n\"}");
  root = check_exact_keys(s, names, 1);
  ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(root, "certificateSigningRequest")),
                csr);
  cJSON_Delete(root);
  free(s);

  ASSERT_TRUE(prov_build_csr_request(NULL) == NULL);
  ASSERT_TRUE(prov_build_csr_request("") == NULL);
}

static void test_build_create_keys_request(void)
{
  char *s = prov_build_create_keys_request();
  cJSON *root;

  ASSERT_STR_EQ(s, "{}");
  root = check_exact_keys(s, NULL, 0);
  cJSON_Delete(root);
  free(s);
}

static void test_build_register_request(void)
{
  static const char *const top2[] = {"certificateOwnershipToken", "parameters"};
  static const char *const top1[] = {"certificateOwnershipToken"};
  static const char *const pnames[] = {"SerialNumber", "DeviceLocation"};
  const struct prov_param params[] = {{"SerialNumber", "gw01-leaf42"},
                                      {"DeviceLocation", "hall \"B\""}};
  const struct prov_param dup[] = {{"k", "1"}, {"k", "2"}};
  const struct prov_param nullv[] = {{"k", NULL}};
  char *s;
  cJSON *root, *p;

  s = prov_build_register_request(TOKEN, params, 2);
  ASSERT_STR_EQ(s, "{\"certificateOwnershipToken\":\"" TOKEN "\",\"parameters\":{"
                   "\"SerialNumber\":\"gw01-leaf42\",\"DeviceLocation\":\"hall \\\"B\\\"\"}}");
  root = check_exact_keys(s, top2, 2);
  p = cJSON_GetObjectItemCaseSensitive(root, "parameters");
  ASSERT_TRUE(cJSON_IsObject(p));
  {
    char *ps = cJSON_PrintUnformatted(p);
    cJSON *pr = check_exact_keys(ps, pnames, 2);
    ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItem(pr, "DeviceLocation")), "hall \"B\"");
    cJSON_Delete(pr);
    cJSON_free(ps);
  }
  cJSON_Delete(root);
  free(s);

  /* "parameters" is optional (§5.2): with none it is left out. */
  s = prov_build_register_request(TOKEN, NULL, 0);
  ASSERT_STR_EQ(s, "{\"certificateOwnershipToken\":\"" TOKEN "\"}");
  cJSON_Delete(check_exact_keys(s, top1, 1));
  free(s);

  ASSERT_TRUE(prov_build_register_request(NULL, NULL, 0) == NULL);
  ASSERT_TRUE(prov_build_register_request("", NULL, 0) == NULL);
  ASSERT_TRUE(prov_build_register_request(TOKEN, NULL, 1) == NULL);
  ASSERT_TRUE(prov_build_register_request(TOKEN, dup, 2) == NULL);
  ASSERT_TRUE(prov_build_register_request(TOKEN, nullv, 1) == NULL);
}

/* ---- Certificate replies ------------------------------------------------ */

static void test_parse_keys_accepted(void)
{
  struct prov_cert_reply r;

  ASSERT_EQ(parse_cert(keys_accepted, 1, &r), PROTO_OK);
  ASSERT_STR_EQ(r.certificate_id, CERT_ID);
  ASSERT_EQ(strlen(r.certificate_id), 64);
  ASSERT_STR_EQ(r.certificate_pem, CERT_PEM_C);
  ASSERT_STR_EQ(r.private_key, KEY_PEM_C);
  ASSERT_STR_EQ(r.ownership_token, TOKEN);
  /* The \n escapes became real newlines: PEM tools need them. */
  ASSERT_TRUE(strchr(r.certificate_pem, '\n') != NULL);
  ASSERT_TRUE(strstr(r.certificate_pem, "\\n") == NULL);
  prov_cert_reply_clear(&r);
  ASSERT_TRUE(r.certificate_id == NULL && r.private_key == NULL);
  prov_cert_reply_clear(&r); /* twice is harmless */

  /* The same reply read as a CSR reply: privateKey is not taken. */
  ASSERT_EQ(parse_cert(keys_accepted, 0, &r), PROTO_OK);
  ASSERT_TRUE(r.private_key == NULL);
  ASSERT_STR_EQ(r.certificate_id, CERT_ID);
  prov_cert_reply_clear(&r);
}

static void test_parse_csr_accepted(void)
{
  struct prov_cert_reply r;

  ASSERT_EQ(parse_cert(csr_accepted, 0, &r), PROTO_OK);
  ASSERT_STR_EQ(r.certificate_id, CERT_ID);
  ASSERT_STR_EQ(r.certificate_pem, CERT_PEM_C);
  ASSERT_STR_EQ(r.ownership_token, TOKEN);
  ASSERT_TRUE(r.private_key == NULL);
  prov_cert_reply_clear(&r);

  /* A CSR reply has no privateKey (§5.2), so expecting one fails. */
  ASSERT_EQ(parse_cert(csr_accepted, 1, &r), PROTO_MALFORMED);
  ASSERT_TRUE(r.certificate_id == NULL && r.certificate_pem == NULL &&
              r.ownership_token == NULL && r.private_key == NULL);

  /* Unknown extra members are ignored. */
  ASSERT_EQ(parse_cert("{\"certificateId\":\"ab\",\"certificatePem\":\"p\","
                       "\"certificateOwnershipToken\":\"t\",\"extra\":[1,{\"x\":null}]}",
                       0, &r),
            PROTO_OK);
  ASSERT_STR_EQ(r.certificate_pem, "p");
  prov_cert_reply_clear(&r);
}

static void test_parse_cert_malformed(void)
{
  static const char *const bad[] = {
    "",
    "   ",
    "not json",
    "null",
    "[]",
    "\"{}\"",
    "42",
    "{}",
    "{\"certificateId\":\"ab\"",                     /* truncated */
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}x",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}{}",
    /* each required field missing */
    "{\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\"}",
    /* wrong types */
    "{\"certificateId\":12,\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":null,\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":[\"p\"],\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":{},\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":true}",
    /* empty strings */
    "{\"certificateId\":\"\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"\"}",
    /* names are exact (§5.2) */
    "{\"CertificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateid\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    /* bad escapes and unterminated strings */
    "{\"certificateId\":\"a\\",
    "{\"certificateId\":\"a\\x\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t",
  };
  static const char *const bad_key[] = {
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\","
    "\"privateKey\":1}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\","
    "\"privateKey\":\"\"}",
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\","
    "\"privateKey\":null}",
  };
  static const char with_nul[] =
    "{\"certificateId\":\"ab\",\"certificatePem\":\"p\",\"certificateOwnershipToken\":\"t\"}\0";
  struct prov_cert_reply r;
  size_t i;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc0 = parse_cert(bad[i], 0, &r);
    int rc1 = parse_cert(bad[i], 1, &r);
    ASSERT_EQ(rc0, PROTO_MALFORMED);
    ASSERT_EQ(rc1, PROTO_MALFORMED);
    if (rc0 != PROTO_MALFORMED || rc1 != PROTO_MALFORMED)
      fprintf(stderr, "  case %zu: %s\n", i, bad[i]);
    ASSERT_TRUE(r.certificate_id == NULL && r.certificate_pem == NULL &&
                r.ownership_token == NULL && r.private_key == NULL);
  }
  for (i = 0; i < sizeof(bad_key) / sizeof(bad_key[0]); i++) {
    ASSERT_EQ(parse_cert(bad_key[i], 1, &r), PROTO_MALFORMED);
    /* Without expect_private_key the same replies are fine: a privateKey
     * member of any type is ignored then. */
    ASSERT_EQ(parse_cert(bad_key[i], 0, &r), PROTO_OK);
    ASSERT_TRUE(r.private_key == NULL);
    prov_cert_reply_clear(&r);
  }

  /* A NUL byte inside len, and a len that cuts the object short. */
  ASSERT_EQ(prov_parse_cert_reply(with_nul, sizeof(with_nul), 0, &r), PROTO_MALFORMED);
  ASSERT_EQ(prov_parse_cert_reply(keys_accepted, sizeof(keys_accepted) - 2, 1, &r),
            PROTO_MALFORMED);
  ASSERT_EQ(prov_parse_cert_reply(keys_accepted, 0, 1, &r), PROTO_MALFORMED);
  /* The parser reads only len bytes: the same prefix followed by more text
   * in the buffer must not change the answer. */
  ASSERT_EQ(prov_parse_cert_reply(with_nul, sizeof(with_nul) - 2, 0, &r), PROTO_OK);
  prov_cert_reply_clear(&r);

  ASSERT_EQ(prov_parse_cert_reply(NULL, 0, 0, &r), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_parse_cert_reply("{}", 2, 0, NULL), PROTO_INVALID_ARG);
}

/* ---- RegisterThing replies ---------------------------------------------- */

static void test_parse_register(void)
{
  struct prov_register_reply r;
  cJSON *cfg;

  ASSERT_EQ(parse_reg("{\"deviceConfiguration\":{\"FallbackUrl\":\"https://www.example.com/"
                      "test-site\",\"LocationUrl\":\"https://example.aws/\"},"
                      "\"thingName\":\"gw01_leaf-42:a\"}",
                      &r),
            PROTO_OK);
  ASSERT_STR_EQ(r.thing_name, "gw01_leaf-42:a");
  ASSERT_STR_EQ(r.device_configuration, "{\"FallbackUrl\":\"https://www.example.com/test-site\","
                                        "\"LocationUrl\":\"https://example.aws/\"}");
  cfg = cJSON_Parse(r.device_configuration);
  ASSERT_TRUE(cJSON_IsObject(cfg));
  cJSON_Delete(cfg);
  prov_register_reply_clear(&r);
  ASSERT_TRUE(r.thing_name == NULL && r.device_configuration == NULL);

  /* Pretty-printed input comes back compact. */
  ASSERT_EQ(parse_reg("{ \"thingName\" : \"t1\" , \"deviceConfiguration\" : { \"a\" : \"1\" ,"
                      " \"b\" : \"2\" } }\n",
                      &r),
            PROTO_OK);
  ASSERT_STR_EQ(r.device_configuration, "{\"a\":\"1\",\"b\":\"2\"}");
  prov_register_reply_clear(&r);

  ASSERT_EQ(parse_reg("{\"thingName\":\"t1\"}", &r), PROTO_OK);
  ASSERT_STR_EQ(r.thing_name, "t1");
  ASSERT_TRUE(r.device_configuration == NULL);
  prov_register_reply_clear(&r);

  ASSERT_EQ(parse_reg("{\"thingName\":\"t1\",\"deviceConfiguration\":null}", &r), PROTO_OK);
  ASSERT_TRUE(r.device_configuration == NULL);
  prov_register_reply_clear(&r);

  ASSERT_EQ(parse_reg("{\"thingName\":\"t1\",\"deviceConfiguration\":{}}", &r), PROTO_OK);
  ASSERT_STR_EQ(r.device_configuration, "{}");
  prov_register_reply_clear(&r);
}

static void test_parse_register_malformed(void)
{
  static const char *const bad[] = {
    "",
    "[]",
    "{}",
    "{\"thingname\":\"t\"}",
    "{\"thingName\":1}",
    "{\"thingName\":null}",
    "{\"thingName\":[\"t\"]}",
    "{\"thingName\":\"\"}",
    "{\"thingName\":\"a/b\"}",
    "{\"thingName\":\"a b\"}",
    "{\"thingName\":\"a#\"}",
    "{\"thingName\":\"caf\xc3\xa9\"}",
    "{\"thingName\":\"t\",\"deviceConfiguration\":\"x\"}",
    "{\"thingName\":\"t\",\"deviceConfiguration\":[]}",
    "{\"thingName\":\"t\",\"deviceConfiguration\":5}",
    "{\"thingName\":\"t\",\"deviceConfiguration\":true}",
    "{\"thingName\":\"t\",\"deviceConfiguration\":{\"a\":}}",
    "{\"thingName\":\"t\"",
  };
  struct prov_register_reply r;
  char long_name[200];
  size_t i;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = parse_reg(bad[i], &r);
    ASSERT_EQ(rc, PROTO_MALFORMED);
    if (rc != PROTO_MALFORMED)
      fprintf(stderr, "  case %zu: %s\n", i, bad[i]);
    ASSERT_TRUE(r.thing_name == NULL && r.device_configuration == NULL);
  }

  /* 128 characters is the longest thing name (§5.4). */
  strcpy(long_name, "{\"thingName\":\"");
  memset(long_name + 14, 'n', 128);
  strcpy(long_name + 14 + 128, "\"}");
  ASSERT_EQ(parse_reg(long_name, &r), PROTO_OK);
  ASSERT_EQ(strlen(r.thing_name), 128);
  prov_register_reply_clear(&r);
  memset(long_name + 14, 'n', 129);
  strcpy(long_name + 14 + 129, "\"}");
  ASSERT_EQ(parse_reg(long_name, &r), PROTO_MALFORMED);

  /* cJSON decodes \u0000 to a NUL byte, so a C string ends there: the
   * name read is the valid prefix "a".  Pinned here so a cJSON change that
   * alters it is noticed. */
  ASSERT_EQ(parse_reg("{\"thingName\":\"a\\u0000b\"}", &r), PROTO_OK);
  ASSERT_STR_EQ(r.thing_name, "a");
  prov_register_reply_clear(&r);

  ASSERT_EQ(prov_parse_register_reply(NULL, 0, &r), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_parse_register_reply("{}", 2, NULL), PROTO_INVALID_ARG);
}

/* ---- Rejected replies --------------------------------------------------- */

static void test_parse_error(void)
{
  struct prov_error e;

  /* The real example of §5.2 (aws-iot-device-sdk-js-v2 #69). */
  ASSERT_EQ(parse_err("{\"statusCode\":400,\"errorCode\":\"InvalidCertificateOwnershipToken\","
                      "\"errorMessage\":\"Certificate ownership token cannot be empty.\"}",
                      &e),
            PROTO_OK);
  ASSERT_EQ(e.status_code, 400);
  ASSERT_STR_EQ(e.error_code, "InvalidCertificateOwnershipToken");
  ASSERT_STR_EQ(e.error_message, "Certificate ownership token cannot be empty.");
  ASSERT_TRUE(!prov_error_is_retryable(&e));
  prov_error_clear(&e);
  ASSERT_TRUE(e.error_code == NULL);

  /* Missing fields are left empty. */
  ASSERT_EQ(parse_err("{}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 0);
  ASSERT_STR_EQ(e.error_code, "");
  ASSERT_STR_EQ(e.error_message, "");
  prov_error_clear(&e);

  ASSERT_EQ(parse_err("{\"statusCode\":429,\"errorCode\":\"ThrottlingException\"}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 429);
  ASSERT_STR_EQ(e.error_code, "ThrottlingException");
  ASSERT_STR_EQ(e.error_message, "");
  prov_error_clear(&e);

  /* Wrong types and odd numbers are ignored, not fatal. */
  ASSERT_EQ(parse_err("{\"statusCode\":\"400\",\"errorCode\":7,\"errorMessage\":null}", &e),
            PROTO_OK);
  ASSERT_EQ(e.status_code, 0);
  ASSERT_STR_EQ(e.error_code, "");
  ASSERT_STR_EQ(e.error_message, "");
  prov_error_clear(&e);
  ASSERT_EQ(parse_err("{\"statusCode\":400.5}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 0);
  prov_error_clear(&e);
  ASSERT_EQ(parse_err("{\"statusCode\":-1}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 0);
  prov_error_clear(&e);
  ASSERT_EQ(parse_err("{\"statusCode\":1e400}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 0);
  prov_error_clear(&e);
  ASSERT_EQ(parse_err("{\"statusCode\":5e9}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 0);
  prov_error_clear(&e);
  ASSERT_EQ(parse_err("{\"statusCode\":5.0e2}", &e), PROTO_OK);
  ASSERT_EQ(e.status_code, 500);
  prov_error_clear(&e);

  /* Not an object at all is still malformed, and leaves nothing to free. */
  ASSERT_EQ(parse_err("", &e), PROTO_MALFORMED);
  ASSERT_EQ(parse_err("Internal Server Error", &e), PROTO_MALFORMED);
  ASSERT_EQ(parse_err("[{\"statusCode\":400}]", &e), PROTO_MALFORMED);
  ASSERT_EQ(parse_err("{\"statusCode\":400", &e), PROTO_MALFORMED);
  ASSERT_TRUE(e.error_code == NULL && e.error_message == NULL && e.status_code == 0);
  ASSERT_EQ(prov_parse_error(NULL, 0, &e), PROTO_INVALID_ARG);
  ASSERT_EQ(prov_parse_error("{}", 2, NULL), PROTO_INVALID_ARG);
}

static void test_retryable_table(void)
{
  static const struct {
    int status;
    const char *code;
    int retry;
  } table[] = {
    {429, "", 1},
    {429, "TooManyRequests", 1},
    {500, "InternalError", 1},
    {502, "", 1},
    {503, "ServiceUnavailableException", 1},
    {400, "ThrottlingException", 1},     /* the code wins over the status */
    {0, "Throttled", 1},
    {0, "ServiceUnavailable", 1},
    {0, "InternalFailureException", 1},
    {0, "", 1},                           /* nothing known: retry with back-off */
    {0, "SomethingNew", 1},
    {202, "", 1},
    {400, "InvalidCertificateOwnershipToken", 0},
    {400, "InvalidCSR", 0},
    {401, "", 0},
    {403, "Forbidden", 0},
    {404, "ResourceNotFoundException", 0},
    {409, "ResourceConflictsException", 0},
    {0, "InvalidCertificateOwnershipToken", 0},
    {0, "ResourceConflictsException", 0},
    {0, "ACCESS_DENIED", 0},
  };
  struct prov_error e;
  size_t i;

  for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
    int got;
    e.status_code = table[i].status;
    e.error_code = (char *)table[i].code;
    e.error_message = (char *)"";
    got = prov_error_is_retryable(&e);
    ASSERT_EQ(got, table[i].retry);
    if (got != table[i].retry)
      fprintf(stderr, "  row %zu: %d %s\n", i, table[i].status, table[i].code);
  }
  e.status_code = 0;
  e.error_code = NULL;
  ASSERT_EQ(prov_error_is_retryable(&e), 1);
  ASSERT_EQ(prov_error_is_retryable(NULL), 1);
}

/* ---- Allocation failure ------------------------------------------------- */

static void *hook_malloc(size_t n) { return t_malloc(n); }

/* Runs op with the 1st, 2nd, ... allocation failing until it succeeds; each
 * failing run must report failure (op returns 0) and leak nothing. */
static void fail_each_allocation(int (*op)(void), const char *name)
{
  cJSON_Hooks hooks = {hook_malloc, free};
  long fail_at;
  int failures = 0, ok = 0;

  cJSON_InitHooks(&hooks);
  for (fail_at = 0; fail_at < 1000 && !ok; fail_at++) {
    g_alloc_count = 0;
    g_fail_at = fail_at;
    ok = op();
    if (!ok)
      failures++;
  }
  g_fail_at = -1;
  cJSON_InitHooks(NULL);
  ASSERT_TRUE(ok);
  ASSERT_TRUE(failures > 0);
  fprintf(stderr, "  %s: %d failing allocations survived\n", name, failures);
}

static int op_build_csr(void)
{
  char *s = prov_build_csr_request("-----BEGIN CERTIFICATE REQUEST-----\nX\n");
  int ok = s != NULL;
  free(s);
  return ok;
}

static int op_build_register(void)
{
  const struct prov_param p[] = {{"a", "1"}, {"b", "2"}};
  char *s = prov_build_register_request("tok", p, 2);
  int ok = s != NULL;
  free(s);
  return ok;
}

static int op_build_keys(void)
{
  char *s = prov_build_create_keys_request();
  int ok = s != NULL;
  free(s);
  return ok;
}

static int op_parse_cert(void)
{
  struct prov_cert_reply r;
  int rc = parse_cert(keys_accepted, 1, &r);

  /* The only answers allowed under allocation failure. */
  if (rc != PROTO_OK && rc != PROTO_MALFORMED && rc != PROTO_TOO_BIG)
    ASSERT_TRUE(0);
  if (rc != PROTO_OK)
    ASSERT_TRUE(r.certificate_id == NULL && r.private_key == NULL);
  prov_cert_reply_clear(&r);
  return rc == PROTO_OK;
}

static int op_parse_register(void)
{
  struct prov_register_reply r;
  int rc = parse_reg("{\"thingName\":\"t\",\"deviceConfiguration\":{\"a\":\"1\"}}", &r);

  if (rc != PROTO_OK)
    ASSERT_TRUE(r.thing_name == NULL && r.device_configuration == NULL);
  prov_register_reply_clear(&r);
  return rc == PROTO_OK;
}

static int op_parse_error(void)
{
  struct prov_error e;
  int rc = parse_err("{\"statusCode\":500,\"errorCode\":\"x\",\"errorMessage\":\"y\"}", &e);

  if (rc != PROTO_OK)
    ASSERT_TRUE(e.error_code == NULL && e.error_message == NULL);
  prov_error_clear(&e);
  return rc == PROTO_OK;
}

static void test_allocation_failure(void)
{
  fail_each_allocation(op_build_csr, "build_csr_request");
  fail_each_allocation(op_build_register, "build_register_request");
  fail_each_allocation(op_build_keys, "build_create_keys_request");
  fail_each_allocation(op_parse_cert, "parse_cert_reply");
  fail_each_allocation(op_parse_register, "parse_register_reply");
  fail_each_allocation(op_parse_error, "parse_error");
}

int main(void)
{
  RUN(test_topics);
  RUN(test_topic_errors);
  RUN(test_name_validators);
  RUN(test_build_csr_request);
  RUN(test_build_create_keys_request);
  RUN(test_build_register_request);
  RUN(test_parse_keys_accepted);
  RUN(test_parse_csr_accepted);
  RUN(test_parse_cert_malformed);
  RUN(test_parse_register);
  RUN(test_parse_register_malformed);
  RUN(test_parse_error);
  RUN(test_retryable_table);
  RUN(test_allocation_failure);
  return TEST_END();
}
