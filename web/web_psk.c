/*
 * web_psk.c - the REST API's handlers for DTLS pre-shared keys (web_h_psk_*,
 * web_h_psks_bulk): one leaf's key made, rotated or revoked, and the CSV
 * batch for a production line.  A key leaves the gateway only in the answer
 * to the request that made it (README "DTLS keys for leaves"); these routes
 * are marked secret, so their bodies and answers are wiped.
 */
#include "web_int.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "secret.h"

#define MOD "web"
#define ACTOR WEB_ACTOR
#define LOG_COMMAND WEB_LOG_COMMAND
#define CLIENT_ID_CAP WEB_CLIENT_ID_CAP
/* ---- DTLS pre-shared keys ------------------------------------------------ */

_Static_assert(WEB_PSK_BULK_MAX == API_PSK_BULK_MAX, "the documented batch size is the API's");

/* The optional body of a create or rotate, {"key": "<hex>"}: into key[cap],
 * *len 0 when there is no body or it is {} (the gateway generates one).  -1 with a 400
 * queued (*replied), else 0.  The body is wiped with the request (the
 * route is secret). */
static int psk_body_key(struct lws *wsi, struct web *w, struct web_http_conn *c, uint8_t *key,
                        size_t cap, size_t *len, bool *replied)
{
  static const char want[] = "expected no body, or {\"key\": \"<hex>\"} with "
                             WEB_STR(API_PSK_MIN) ".." WEB_STR(API_PSK_MAX) " bytes (" WEB_STR(
                                 API_PSK_MIN) "*2.." WEB_STR(API_PSK_MAX) "*2 hex digits)";
  const cJSON *k = c->json ? cJSON_GetObjectItemCaseSensitive(c->json, "key") : NULL;
  int n;

  *len = 0;
  *replied = false;
  if (!c->json || !c->json->child)
    return 0; /* no body, or {}: the gateway generates the key */
  /* Only "key": a misspelt member must not quietly mean "generate one". */
  if (!cJSON_IsString(k) || cJSON_GetArraySize(c->json) != 1 ||
      (n = web_hex_decode(k->valuestring, key, cap)) < API_PSK_MIN || n > API_PSK_MAX) {
    secret_wipe(key, cap);
    *replied = true;
    return web_reply_error(wsi, w, c, 400, "bad_request", want);
  }
  *len = (size_t)n;
  return 0;
}

/* {"client_id", "psk_identity", "key", "created_at"}: the one time the key
 * is shown.  Every copy of the text is wiped. */
static int reply_psk(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                     const struct api_psk *k)
{
  char hex[2 * API_PSK_MAX + 1];
  bool ok = true;
  cJSON *o = cJSON_CreateObject();
  char *text = NULL;
  int rc;

  if (web_hex_encode(k->key, k->key_len, hex, sizeof hex) < 0)
    ok = false;
  if (o && ok) {
    web_json_str(o, "client_id", k->client_id, &ok);
    web_json_str(o, "psk_identity", k->client_id, &ok);
    web_json_str(o, "key", hex, &ok);
    web_json_num(o, "created_at", (double)k->created_at, &ok);
  }
  secret_wipe(hex, sizeof hex);
  if (o && ok)
    text = cJSON_PrintUnformatted(o);
  web_json_wipe(o);
  cJSON_Delete(o);
  if (!text)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  rc = web_reply_copy(wsi, w, c, status, web_ct_json, text, strlen(text));
  secret_wipe(text, strlen(text));
  cJSON_free(text);
  return rc;
}

typedef int (*psk_put_fn)(struct gw *, const char *, const uint8_t *, size_t, const char *,
                          struct api_psk *, char *, size_t);

static int psk_put(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id,
                   psk_put_fn fn, int status, const char *what)
{
  uint8_t key[API_PSK_MAX];
  char reason[512] = "";
  struct api_psk *k;
  size_t len;
  bool replied;
  int rc = psk_body_key(wsi, w, c, key, sizeof key, &len, &replied);

  if (replied)
    return rc;
  k = calloc(1, sizeof *k);
  if (!k) {
    secret_wipe(key, sizeof key);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  rc = fn(w->gw, id, len ? key : NULL, len, ACTOR, k, reason, sizeof reason);
  secret_wipe(key, sizeof key);
  reason[sizeof reason - 1] = '\0';
  if (rc == API_OK) {
    char safe[4 * CLIENT_ID_CAP];
    LOG_COMMAND("%s %s by %s", what, web_log_text(id, strlen(id), safe, sizeof safe), ACTOR);
    rc = reply_psk(wsi, w, c, status, k);
  } else {
    rc = web_reply_api_err(wsi, w, c, rc, reason, NULL);
  }
  secret_free_n(k, sizeof *k);
  return rc;
}

int web_h_psk_create(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return psk_put(wsi, w, c, id, api_psk_create, 201, "psk create");
}

int web_h_psk_rotate(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return psk_put(wsi, w, c, id, api_psk_rotate, 200, "psk rotate");
}

int web_h_psk_revoke(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  char reason[256] = "";
  int rc = api_psk_revoke(w->gw, id, ACTOR, reason, sizeof reason);

  reason[sizeof reason - 1] = '\0';
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, reason, NULL);
  {
    char safe[4 * CLIENT_ID_CAP];
    LOG_COMMAND("psk revoke %s by %s", web_log_text(id, strlen(id), safe, sizeof safe), ACTOR);
  }
  return web_reply_copy(wsi, w, c, 204, web_ct_json, "", 0);
}

/* "client_id,key" and one "<ClientId>,<hex key>" line per id, in the order
 * of ids; NULL when out of memory.  *len is the body's length. */
static unsigned char *psk_csv(const char *const *ids, size_t n, const uint8_t *keys,
                              size_t *len)
{
  static const char head[] = "client_id,key\n";
  size_t cap = sizeof head - 1, at = LWS_PRE;
  unsigned char *out;

  for (size_t i = 0; i < n; i++)
    cap += strlen(ids[i]) + 2 * API_PSK_LEN + 2;
  out = web_out_alloc(cap);
  if (!out)
    return NULL;
  memcpy(out + at, head, sizeof head - 1);
  at += sizeof head - 1;
  for (size_t i = 0; i < n; i++) {
    size_t idlen = strlen(ids[i]);
    memcpy(out + at, ids[i], idlen);
    at += idlen;
    out[at++] = ',';
    /* Room for the NUL: web_out_alloc leaves one spare byte. */
    web_hex_encode(keys + i * API_PSK_LEN, API_PSK_LEN, (char *)out + at, 2 * API_PSK_LEN + 1);
    at += 2 * API_PSK_LEN;
    out[at++] = '\n';
  }
  *len = cap;
  return out;
}

int web_h_psks_bulk(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  char reason[512] = "", msg[160];
  const char **ids = NULL;
  uint8_t *keys = NULL;
  unsigned char *out = NULL;
  size_t n = 0, line = 0, len = 0;
  const char *why = NULL;
  int64_t at = 0;
  enum web_ids_err e;
  int rc;

  if (!web_request_is_csv(wsi) || !c->body)
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "expected a text/csv body: one ClientId a line, at most "
                           WEB_STR(WEB_PSK_BULK_MAX));
  ids = calloc(WEB_PSK_BULK_MAX, sizeof *ids);
  if (!ids)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  e = web_csv_ids(c->body, c->body_len, ids, WEB_PSK_BULK_MAX, &n, &line, &why);
  if (e != WEB_IDS_OK) {
    free(ids);
    if (e == WEB_IDS_TOO_MANY)
      return web_reply_error(wsi, w, c, 413, "payload_too_large",
                             "at most " WEB_STR(WEB_PSK_BULK_MAX) " ClientIds a request");
    if (e == WEB_IDS_EMPTY)
      return web_reply_error(wsi, w, c, 400, "bad_request", "no ClientId in the body");
    snprintf(msg, sizeof msg, "line %zu is no ClientId: %s", line, why);
    return web_reply_error(wsi, w, c, 400, "bad_request", msg);
  }
  keys = malloc(n * API_PSK_LEN);
  if (!keys) {
    free(ids);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  rc = api_psk_bulk(w->gw, ids, n, ACTOR, keys, &at, reason, sizeof reason);
  reason[sizeof reason - 1] = '\0';
  if (rc == API_OK) {
    LOG_COMMAND("psk bulk of %zu by %s", n, ACTOR);
    out = psk_csv(ids, n, keys, &len);
  }
  secret_free_n(keys, n * API_PSK_LEN);
  free(ids);
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, reason, "device");
  if (!out)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  /* The connection wipes out with the request (a secret route). */
  return web_reply_raw(wsi, w, c, 201, "text/csv; charset=utf-8", out, len);
}
