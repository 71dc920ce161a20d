/*
 * provisioning.c - AWS IoT Fleet Provisioning MQTT API payloads (JSON).
 *
 * Facts used here come from docs/protocol-notes.md §5 (the bare § numbers below refer to it); each is cited where it
 * shapes the code.  The module allocates (it is the one file of protocol/
 * that does), but it has no globals and does no I/O.
 *
 * Two allocation rules hold throughout:
 *   - Every string handed to the caller is allocated here with malloc(), so
 *     the caller's free() is right even when someone has installed cJSON
 *     hooks with another allocator (cJSON_InitHooks is process-wide).  What
 *     cJSON prints is therefore copied and released with cJSON_free().
 *   - cJSON never sees the caller's buffer: the input is copied into a
 *     NUL-terminated buffer first, so cJSON cannot read past the caller's
 *     len, whatever it does at the end of a truncated string or escape.
 *
 * Allocation failure while parsing is reported as PROTO_TOO_BIG (the input
 * could not be held in memory): proto_err.h has no out-of-memory code, and
 * the caller must not mistake it for a malformed reply.  When cJSON itself
 * runs out of memory during parsing it cannot tell us, so that case shows
 * up as PROTO_MALFORMED.
 */
#include "provisioning.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* §5.1: template names are 1-36 characters of [0-9A-Za-z_-] (API reference
 * for CreateProvisioningTemplateVersion; FP_TEMPLATENAME_MAX_LENGTH 36U). */
#define TEMPLATE_NAME_MAX 36u
/* §5.4: thing names are 1-128 characters of [a-zA-Z0-9:_-] (API_CreateThing). */
#define THING_NAME_MAX 128u

static int is_alnum_ascii(char c)
{
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

int prov_template_name_ok(const char *name)
{
  size_t i;

  if (!name)
    return 0;
  for (i = 0; name[i] != '\0'; i++) {
    if (i >= TEMPLATE_NAME_MAX)
      return 0;
    if (!is_alnum_ascii(name[i]) && name[i] != '_' && name[i] != '-')
      return 0;
  }
  return i > 0;
}

int prov_thing_name_ok(const char *name)
{
  size_t i;

  if (!name)
    return 0;
  for (i = 0; name[i] != '\0'; i++) {
    if (i >= THING_NAME_MAX)
      return 0;
    if (!is_alnum_ascii(name[i]) && name[i] != ':' && name[i] != '_' && name[i] != '-')
      return 0;
  }
  return i > 0;
}

/* ---- Topics (§5.1) ------------------------------------------------------ */

/* Only the JSON format is built here: the response format follows the
 * request topic's format (§5.1), and this module speaks JSON only. */
static int topic_join(const char *prefix, const char *middle, const char *tail,
                      const char *suffix, char *out, size_t cap)
{
  int n;

  if (!out)
    return PROTO_INVALID_ARG;
  if (suffix && strcmp(suffix, "accepted") != 0 && strcmp(suffix, "rejected") != 0)
    return PROTO_INVALID_ARG;
  n = snprintf(out, cap, "%s%s%s%s%s", prefix, middle, tail, suffix ? "/" : "",
               suffix ? suffix : "");
  if (n < 0)
    return PROTO_INVALID_ARG;
  if ((size_t)n >= cap) {
    if (cap > 0)
      out[0] = '\0';
    return PROTO_BUF_TOO_SMALL;
  }
  return n;
}

int prov_topic_create_from_csr(const char *suffix, char *out, size_t cap)
{
  return topic_join("$aws/certificates/create-from-csr/json", "", "", suffix, out, cap);
}

int prov_topic_create_keys(const char *suffix, char *out, size_t cap)
{
  return topic_join("$aws/certificates/create/json", "", "", suffix, out, cap);
}

int prov_topic_register(const char *template_name, const char *suffix, char *out, size_t cap)
{
  /* The name becomes a topic level, so it is validated before use: a '/',
   * '+' or '#' in it would change which topic we publish or subscribe to. */
  if (!prov_template_name_ok(template_name))
    return PROTO_INVALID_ARG;
  return topic_join("$aws/provisioning-templates/", template_name, "/provision/json", suffix,
                    out, cap);
}

/* ---- Requests (§5.2) ---------------------------------------------------- */

static char *dup_mem(const char *s, size_t n)
{
  char *d = malloc(n + 1);

  if (!d)
    return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

static char *dup_str(const char *s)
{
  return dup_mem(s, strlen(s));
}

/* Frees a string that may hold a secret after overwriting it.  A volatile
 * pointer keeps the compiler from dropping stores to memory about to be
 * freed; protocol/ may not use OpenSSL_cleanse. */
static void wipe_free(char *s)
{
  volatile char *p = s;

  if (!s)
    return;
  while (*p)
    *p++ = '\0';
  free(s);
}

static void wipe_mem(void *m, size_t n)
{
  volatile unsigned char *v = m;
  while (n--)
    *v++ = 0;
}

/* Overwrites every string of the tree at n. */
static void wipe_tree(cJSON *n)
{
  if (n->valuestring)
    wipe_mem(n->valuestring, strlen(n->valuestring));
  for (cJSON *c = n->child; c; c = c->next)
    wipe_tree(c);
}

/* Deletes a tree whose strings may hold a secret (an ownership token, a
 * private key) after overwriting them. */
static void delete_secret(cJSON *root)
{
  if (root)
    wipe_tree(root);
  cJSON_Delete(root);
}

/* Prints root compactly into a malloc'd string (see the allocation rule at
 * the top) and deletes root in every case; secret: the tree and the
 * intermediate copy are wiped first. */
static char *print_and_delete(cJSON *root, bool secret)
{
  char *printed, *copy;

  printed = cJSON_PrintUnformatted(root);
  if (secret)
    delete_secret(root);
  else
    cJSON_Delete(root);
  if (!printed)
    return NULL;
  copy = dup_str(printed);
  if (secret)
    wipe_mem(printed, strlen(printed));
  cJSON_free(printed);
  return copy;
}

char *prov_build_csr_request(const char *csr_pem)
{
  cJSON *root;

  /* §5.2: the request is exactly { "certificateSigningRequest": "<PEM CSR>" }.
   * An empty CSR can only be rejected by the cloud, so it is refused here. */
  if (!csr_pem || csr_pem[0] == '\0')
    return NULL;
  root = cJSON_CreateObject();
  if (!root)
    return NULL;
  if (!cJSON_AddStringToObject(root, "certificateSigningRequest", csr_pem)) {
    cJSON_Delete(root);
    return NULL;
  }
  return print_and_delete(root, false);
}

char *prov_build_create_keys_request(void)
{
  /* §5.2: the documented request is "an empty message payload", but real
   * clients send "{}" and the service accepts both; "{}" is the form that
   * also survives brokers and tools that drop empty payloads. */
  return dup_str("{}");
}

char *prov_build_register_request(const char *ownership_token, const struct prov_param *params,
                                  size_t n)
{
  cJSON *root, *map;
  size_t i, j;

  /* §5.2 (real example): an empty token is rejected with
   * InvalidCertificateOwnershipToken, so do not even send it. */
  if (!ownership_token || ownership_token[0] == '\0' || (n > 0 && !params))
    return NULL;
  for (i = 0; i < n; i++) {
    if (!params[i].key || !params[i].value)
      return NULL;
    /* A JSON object with a repeated key means different things to different
     * parsers; the parameters are a map (§5.2), so a repeat is a caller bug. */
    for (j = 0; j < i; j++)
      if (strcmp(params[i].key, params[j].key) == 0)
        return NULL;
  }

  root = cJSON_CreateObject();
  if (!root)
    return NULL;
  if (!cJSON_AddStringToObject(root, "certificateOwnershipToken", ownership_token))
    goto fail_root;
  /* §5.2: "parameters" is optional and a flat string->string map, so it is
   * left out rather than sent empty when there are none. */
  if (n > 0) {
    map = cJSON_AddObjectToObject(root, "parameters");
    if (!map)
      goto fail_root;
    for (i = 0; i < n; i++)
      if (!cJSON_AddStringToObject(map, params[i].key, params[i].value))
        goto fail_root;
  }
  return print_and_delete(root, true);

fail_root:
  delete_secret(root);
  return NULL;
}

/* ---- Replies (§5.2) ----------------------------------------------------- */

/* Parses exactly json[0..len) as one JSON value.  The copy gives cJSON a
 * NUL-terminated buffer it cannot overrun; trailing non-whitespace after the
 * value and NUL bytes inside the input are refused, since neither can come
 * from a well-formed reply.  *root is NULL unless PROTO_OK. */
static int parse_object(const char *json, size_t len, cJSON **root)
{
  const char *end = NULL;
  char *copy;
  cJSON *r;

  *root = NULL;
  if (!json)
    return PROTO_INVALID_ARG;
  if (memchr(json, '\0', len))
    return PROTO_MALFORMED;
  copy = dup_mem(json, len);
  if (!copy)
    return PROTO_TOO_BIG;
  r = cJSON_ParseWithLengthOpts(copy, len + 1, &end, 0);
  if (r) {
    while (end && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
      end++;
    if (!end || *end != '\0' || !cJSON_IsObject(r)) {
      delete_secret(r);
      r = NULL;
    }
  }
  /* The reply may carry a private key or an ownership token. */
  wipe_mem(copy, len);
  free(copy);
  if (!r)
    return PROTO_MALFORMED;
  *root = r;
  return PROTO_OK;
}

/* Copies the non-empty string member `name` of obj into *dst.  Field names
 * are exact (§5.2), so the lookup is case-sensitive.  An empty value is as
 * useless as a missing one (a certificate without PEM, a token of zero
 * bytes, §5.5), so both are malformed. */
static int take_string(const cJSON *obj, const char *name, char **dst)
{
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);

  if (!cJSON_IsString(item) || !item->valuestring || item->valuestring[0] == '\0')
    return PROTO_MALFORMED;
  *dst = dup_str(item->valuestring);
  return *dst ? PROTO_OK : PROTO_TOO_BIG;
}

int prov_parse_cert_reply(const char *json, size_t len, int expect_private_key,
                          struct prov_cert_reply *out)
{
  cJSON *root;
  int rc;

  if (!out)
    return PROTO_INVALID_ARG;
  memset(out, 0, sizeof(*out));
  rc = parse_object(json, len, &root);
  if (rc != PROTO_OK)
    return rc;
  /* §5.2: both create operations return certificateId, certificatePem and
   * certificateOwnershipToken; only CreateKeysAndCertificate adds
   * privateKey.  A privateKey in a CSR reply is ignored: our key never left
   * the gateway (§5.4), so whatever came back is not ours to store. */
  rc = take_string(root, "certificateId", &out->certificate_id);
  if (rc == PROTO_OK)
    rc = take_string(root, "certificatePem", &out->certificate_pem);
  if (rc == PROTO_OK)
    rc = take_string(root, "certificateOwnershipToken", &out->ownership_token);
  if (rc == PROTO_OK && expect_private_key)
    rc = take_string(root, "privateKey", &out->private_key);
  delete_secret(root);
  if (rc != PROTO_OK)
    prov_cert_reply_clear(out);
  return rc;
}

void prov_cert_reply_clear(struct prov_cert_reply *r)
{
  if (!r)
    return;
  free(r->certificate_id);
  free(r->certificate_pem);
  /* The private key and the ownership token are credentials (§5.5: the
   * token claims the certificate for an hour), so they are wiped. */
  wipe_free(r->private_key);
  wipe_free(r->ownership_token);
  memset(r, 0, sizeof(*r));
}

int prov_parse_register_reply(const char *json, size_t len, struct prov_register_reply *out)
{
  const cJSON *cfg;
  cJSON *root;
  char *printed;
  int rc;

  if (!out)
    return PROTO_INVALID_ARG;
  memset(out, 0, sizeof(*out));
  rc = parse_object(json, len, &root);
  if (rc != PROTO_OK)
    return rc;
  /* §5.2: { "deviceConfiguration": {...}, "thingName": str }.  The thing name
   * becomes our MQTT client ID and topic material, so it must match the
   * CreateThing pattern (§5.4), not merely be a string. */
  rc = take_string(root, "thingName", &out->thing_name);
  if (rc == PROTO_OK && !prov_thing_name_ok(out->thing_name))
    rc = PROTO_MALFORMED;
  if (rc != PROTO_OK)
    goto out_root;

  /* §5.2/§5.8: DeviceConfiguration is optional in the template and a flat
   * map, so absent (or null) means "none"; any non-object is malformed.
   * The object is kept as compact JSON, since its keys are whatever the
   * template author chose. */
  cfg = cJSON_GetObjectItemCaseSensitive(root, "deviceConfiguration");
  if (cfg && !cJSON_IsNull(cfg)) {
    if (!cJSON_IsObject(cfg)) {
      rc = PROTO_MALFORMED;
      goto out_root;
    }
    printed = cJSON_PrintUnformatted(cfg);
    if (!printed) {
      rc = PROTO_TOO_BIG;
      goto out_root;
    }
    out->device_configuration = dup_str(printed);
    cJSON_free(printed);
    if (!out->device_configuration)
      rc = PROTO_TOO_BIG;
  }

out_root:
  cJSON_Delete(root);
  if (rc != PROTO_OK)
    prov_register_reply_clear(out);
  return rc;
}

void prov_register_reply_clear(struct prov_register_reply *r)
{
  if (!r)
    return;
  free(r->thing_name);
  free(r->device_configuration);
  memset(r, 0, sizeof(*r));
}

/* Copies a string member or, when it is missing or not a string, "".  The
 * error parser is lenient (provisioning.h): its job is to record whatever
 * the cloud said. */
static char *string_or_empty(const cJSON *obj, const char *name)
{
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);

  if (cJSON_IsString(item) && item->valuestring)
    return dup_str(item->valuestring);
  return dup_str("");
}

int prov_parse_error(const char *json, size_t len, struct prov_error *out)
{
  const cJSON *status;
  cJSON *root;
  int rc;

  if (!out)
    return PROTO_INVALID_ARG;
  memset(out, 0, sizeof(*out));
  rc = parse_object(json, len, &root);
  if (rc != PROTO_OK)
    return rc;
  /* §5.2: { "statusCode": int, "errorCode": str, "errorMessage": str }.  A
   * statusCode that is not an integral number in a sane range is treated as
   * absent (0) rather than converted, since converting an out-of-range
   * double to int is undefined. */
  status = cJSON_GetObjectItemCaseSensitive(root, "statusCode");
  if (cJSON_IsNumber(status) && status->valuedouble >= 0 && status->valuedouble <= 999 &&
      status->valuedouble == (double)(int)status->valuedouble)
    out->status_code = (int)status->valuedouble;
  out->error_code = string_or_empty(root, "errorCode");
  out->error_message = string_or_empty(root, "errorMessage");
  cJSON_Delete(root);
  if (!out->error_code || !out->error_message) {
    prov_error_clear(out);
    return PROTO_TOO_BIG;
  }
  return PROTO_OK;
}

void prov_error_clear(struct prov_error *e)
{
  if (!e)
    return;
  free(e->error_code);
  free(e->error_message);
  memset(e, 0, sizeof(*e));
}

/* Error codes that say the request itself was wrong, whatever statusCode
 * says (or when it is missing):
 *   - InvalidCertificateOwnershipToken: the real example of §5.2 (an empty
 *     token); sending the same token again cannot fix it.
 *   - ResourceConflictsException: RegisterThing when the template's
 *     OverrideSettings say FAIL for an existing resource (§5.9).
 *   - ACCESS_DENIED: the pre-provisioning hook refused (§5.8).  A hook that
 *     errored or timed out gives the same code, so a transient hook failure
 *     is treated as permanent too; the operator has to look either way. */
static const char *const permanent_codes[] = {
  "InvalidCertificateOwnershipToken",
  "ResourceConflictsException",
  "ACCESS_DENIED",
};

int prov_error_is_retryable(const struct prov_error *e)
{
  const char *code;
  size_t i;

  /* No information at all: retry with back-off (the conservative choice). */
  if (!e)
    return 1;
  code = e->error_code ? e->error_code : "";

  /* Throttling and service-side failures are retryable by name, checked
   * before the status so that such a code paired with an unexpected status
   * still backs off.  §5.10: RegisterThing is limited to 10 TPS and
   * CreateCertificateFromCsr to 15 TPS per account, and RegisterThing calls
   * other control-plane APIs that have their own throttling limits, so
   * throttling is the expected transient error of a fleet roll-out. */
  if (strstr(code, "Throttl") || strstr(code, "ServiceUnavailable") ||
      strstr(code, "InternalFailure"))
    return 1;

  /* §5.3 (FreeRTOS provisioning status codes): 429 too many requests and
   * 500 internal error are the server's transient answers; anything 5xx is
   * treated the same way. */
  if (e->status_code == 429 || e->status_code >= 500)
    return 1;

  /* §5.3: 400 invalid CSR/parameters, 403 forbidden, 404 template not
   * found; 401 is an authentication failure.  Repeating the same request
   * gets the same answer, so these are permanent, as is any other 4xx. */
  if (e->status_code >= 400 && e->status_code < 500)
    return 0;

  for (i = 0; i < sizeof(permanent_codes) / sizeof(permanent_codes[0]); i++)
    if (strcmp(code, permanent_codes[i]) == 0)
      return 0;

  /* statusCode missing (0) or outside 4xx/5xx with an unknown code: retry
   * with back-off.  §5.3 also advises treating a failed attempt as "reconnect
   * and restart from create", which the caller's back-off covers. */
  return 1;
}
