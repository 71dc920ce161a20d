/*
 * web_http.c - the HTTP side: per-connection request state, body reading,
 * the route table and dispatch, and the replies.
 *
 * One request at a time per connection: LWS_CALLBACK_HTTP looks at the
 * method, path and Content-Length; a body is accumulated (never more than
 * max_body bytes); then the request is dispatched through one table of
 * routes (web_routes: method, path pattern, token, handler) and the whole
 * reply is built in memory (bounded: the largest list is 1,000 rows) and
 * written from LWS_CALLBACK_HTTP_WRITEABLE in chunks, one lws_write per
 * callback.  The handlers the table names are in web_api.c.
 * Every reply, error or not, is counted with api_count_http().
 */
#include "web_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "secret.h"

#define MOD "web"

enum {
  WRITE_CHUNK = 32 * 1024,       /* bytes per lws_write */
  PATH_MAX_LEN = 2048,           /* longest request path we route */
  ARG_CAP = 256,                 /* a path parameter: struct api_device's client_id, an entry */
};

const char web_ct_json[] = "application/json";

void web_json_wipe(cJSON *o)
{
  for (; o; o = o->next) {
    if (cJSON_IsString(o) && o->valuestring)
      secret_wipe(o->valuestring, strlen(o->valuestring));
    web_json_wipe(o->child);
  }
}

static void conn_reset(struct web_http_conn *c)
{
  /* A request body may carry a key or a token: always wiped (it is at most
   * max_body bytes); a reply only when the route is secret. */
  secret_free_n(c->body, c->body_cap);
  if (c->secret) {
    if (c->out)
      secret_wipe(c->out + LWS_PRE, c->out_len);
    web_json_wipe(c->json);
  }
  free(c->out);
  cJSON_Delete(c->json);
  memset(c, 0, sizeof *c);
}

/* ---- replies -------------------------------------------------------------- */

/* Takes ownership of out (LWS_PRE bytes of headroom, then len body bytes). */
int web_reply_raw(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                     const char *ctype, unsigned char *out, size_t len)
{
  free(c->out);
  c->out = out;
  c->out_len = len;
  c->out_off = 0;
  c->status = status;
  c->ctype = ctype;
  c->replying = true;
  /* Answered: the request is no longer waited for (a body still coming is
   * discarded under lws's own timeout). */
  web_conn_deadline(wsi, WEB_DEADLINE_NONE);
  api_count_http(w->gw, status);
  lws_callback_on_writable(wsi);
  return 0;
}

unsigned char *web_out_alloc(size_t len)
{
  return malloc(LWS_PRE + len + 1);
}

int web_reply_copy(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                      const char *ctype, const char *body, size_t len)
{
  unsigned char *out = web_out_alloc(len);
  if (!out) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_ERROR, MOD, "out of memory for a %zu-byte reply", len);
    return -1; /* closes the connection: nothing better is possible */
  }
  if (len)
    memcpy(out + LWS_PRE, body, len);
  return web_reply_raw(wsi, w, c, status, ctype, out, len);
}

int web_reply_error(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                       const char *code, const char *message)
{
  cJSON *o = cJSON_CreateObject();
  char *text = NULL;
  int rc;

  if (o && cJSON_AddStringToObject(o, "error", code) &&
      cJSON_AddStringToObject(o, "message", message))
    text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!text) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_ERROR, MOD, "out of memory for an error reply");
    return -1;
  }
  rc = web_reply_copy(wsi, w, c, status, web_ct_json, text, strlen(text));
  cJSON_free(text);
  if (status == 401)
    c->www_auth = true;
  return rc;
}

/* Writes the headers, then the body in chunks; finishes the transaction. */
static int write_reply(struct lws *wsi, struct web_http_conn *c)
{
  if (!c->replying)
    return 0;

  if (!c->headers_sent) {
    unsigned char buf[LWS_PRE + 1024];
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;

    /* A key is shown once: nothing on the way may keep a copy (RFC 9111
     * §5.2.2.5). */
    const char *cache = c->secret ? "no-store" : "no-cache";

    if (lws_add_http_common_headers(wsi, (unsigned)c->status, c->ctype, c->out_len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)cache, (int)strlen(cache), &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"x-content-type-options:",
                                    (const unsigned char *)"nosniff", 7, &p, end))
      return -1;
    if (c->allow[0] &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"allow:",
                                    (const unsigned char *)c->allow, (int)strlen(c->allow), &p,
                                    end))
      return -1;
    if (c->www_auth &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"www-authenticate:",
                                    (const unsigned char *)"Bearer", 6, &p, end))
      return -1;
    if (c->close_after &&
        lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
                                     (const unsigned char *)"close", 5, &p, end))
      return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
      return -1;
    c->headers_sent = true;
    if (c->out_len && !c->head_only) {
      lws_callback_on_writable(wsi);
      return 0;
    }
  } else {
    size_t left = c->out_len - c->out_off;
    size_t n = left > WRITE_CHUNK ? WRITE_CHUNK : left;
    enum lws_write_protocol flag = n == left ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP;

    if (lws_write(wsi, c->out + LWS_PRE + c->out_off, n, flag) < (int)n)
      return -1;
    c->out_off += n;
    if (c->out_off < c->out_len) {
      lws_callback_on_writable(wsi);
      return 0;
    }
  }

  /* All sent. */
  bool close = c->close_after;
  conn_reset(c);
  if (close)
    return -1;
  if (lws_http_transaction_completed(wsi))
    return -1;
  return 0;
}

/* ---- routes --------------------------------------------------------------- */

#define API "/api/v1"

enum { GET_HEAD = WEB_GET | WEB_HEAD }; /* every GET route answers HEAD too */

static const char NO_DEVICE[] = "no such device";

/* Every route.  The search takes the first pattern that matches, so each
 * device action comes before the bare device (whose {clientId} would take
 * "x/approve" too), and "*" (the dashboard's files) comes last.  The
 * entries of one pattern agree on whether a token is needed at all, so that
 * a request without one learns nothing about the resource, not even which
 * methods it takes; every entry that changes something needs the admin
 * token (tests/unit/web/test_web_routes.c checks both). */
const struct web_route web_routes[] = {
  {GET_HEAD, "/metrics", WEB_AUTH_METRICS, web_h_metrics, NULL, false, false},
  {GET_HEAD, API "/health", WEB_AUTH_HEALTH, web_h_health, NULL, false, false},
  {GET_HEAD, API "/status", WEB_AUTH_READ, web_h_status, NULL, false, false},
  {GET_HEAD, API "/status/history", WEB_AUTH_READ, web_h_status_history, NULL, false, false},
  {GET_HEAD, API "/devices", WEB_AUTH_READ, web_h_devices, NULL, false, false},
  {GET_HEAD, API "/devices/{clientId}/certificate", WEB_AUTH_READ, web_h_device_cert, NO_DEVICE,
   false, false},
  {WEB_POST, API "/devices/{clientId}/approve", WEB_AUTH_ADMIN, web_h_approve, NO_DEVICE, false,
   false},
  {WEB_POST, API "/devices/{clientId}/block", WEB_AUTH_ADMIN, web_h_block, NO_DEVICE, false,
   false},
  {WEB_POST, API "/devices/{clientId}/unblock", WEB_AUTH_ADMIN, web_h_unblock, NO_DEVICE,
   false, false},
  {WEB_POST, API "/devices/{clientId}/reprovision", WEB_AUTH_ADMIN, web_h_reprovision,
   NO_DEVICE, false, false},
  {WEB_POST, API "/devices/{clientId}/release", WEB_AUTH_ADMIN, web_h_release, NO_DEVICE,
   false, false},
  /* A device's DTLS key: shown once, in the answer to its making. */
  {WEB_POST, API "/devices/{clientId}/psk/rotate", WEB_AUTH_ADMIN, web_h_psk_rotate, NO_DEVICE,
   false, true},
  {WEB_POST, API "/devices/{clientId}/psk", WEB_AUTH_ADMIN, web_h_psk_create, NO_DEVICE, false,
   true},
  {WEB_DELETE, API "/devices/{clientId}/psk", WEB_AUTH_ADMIN, web_h_psk_revoke, NO_DEVICE,
   false, false},
  /* After psk/rotate, which it would match too (a ClientId may hold '/'):
   * the certificate's rotation (docs/rotation.md). */
  {WEB_POST, API "/devices/{clientId}/rotate", WEB_AUTH_ADMIN, web_h_rotate, NO_DEVICE, false,
   false},
  /* Store and forward: the leaf's messages not yet in flight, discarded. */
  {WEB_DELETE, API "/devices/{clientId}/outbox", WEB_AUTH_ADMIN, web_h_outbox_discard,
   NO_DEVICE, false, false},
  {GET_HEAD, API "/devices/{clientId}", WEB_AUTH_READ, web_h_device, NO_DEVICE, false, false},
  {WEB_DELETE, API "/devices/{clientId}", WEB_AUTH_ADMIN, web_h_decommission, NO_DEVICE,
   false, false},
  {GET_HEAD, API "/allowlist", WEB_AUTH_READ, web_h_allowlist_get, NULL, false, false},
  {WEB_POST, API "/allowlist", WEB_AUTH_ADMIN, web_h_allowlist_post, NULL, true, false},
  {WEB_DELETE, API "/allowlist/{entry}", WEB_AUTH_ADMIN, web_h_allowlist_delete,
   "no such allowlist entry", false, false},
  {WEB_POST, API "/psks", WEB_AUTH_ADMIN, web_h_psks_bulk, NULL, true, true},
  {GET_HEAD, API "/certificates", WEB_AUTH_READ, web_h_certs, NULL, false, false},
  {GET_HEAD, API "/audit", WEB_AUTH_READ, web_h_audit, NULL, false, false},
  {GET_HEAD, API "/openapi.json", WEB_AUTH_NONE, web_h_openapi, NULL, false, false},
  /* GET only: the WebSocket handshake is a GET (RFC 6455), and a HEAD has
   * nothing to show. */
  {WEB_GET, API "/events", WEB_AUTH_READ, web_h_events, NULL, false, false},
  {GET_HEAD, "*", WEB_AUTH_NONE, web_h_static, NULL, false, false},
};
const size_t web_routes_count = sizeof web_routes / sizeof web_routes[0];

void web_route_find(const char *path, unsigned method, struct web_route_hit *hit)
{
  memset(hit, 0, sizeof *hit);
  for (size_t i = 0; i < web_routes_count; i++) {
    const struct web_route *rt = &web_routes[i];

    if (!hit->resource) {
      if (!web_path_match(rt->pattern, path, &hit->arg, &hit->arg_len))
        continue;
      hit->resource = rt;
    } else if (strcmp(rt->pattern, hit->resource->pattern) != 0) {
      continue; /* another resource, even if its pattern matches too */
    }
    hit->allowed |= rt->methods;
    if (!hit->route && (rt->methods & method))
      hit->route = rt;
  }
}

enum web_auth web_route_auth(const struct web *w, const struct web_route *rt)
{
  switch (rt->auth) {
  case WEB_AUTH_HEALTH:
    return w->open_health ? WEB_AUTH_NONE : WEB_AUTH_READ;
  case WEB_AUTH_METRICS:
    return w->open_metrics ? WEB_AUTH_NONE : WEB_AUTH_READ;
  default:
    return rt->auth;
  }
}

/* ---- dispatch ------------------------------------------------------------- */

static unsigned method_bit(int m)
{
  switch (m) {
  case LWSHUMETH_GET: return WEB_GET;
  case LWSHUMETH_HEAD: return WEB_HEAD;
  case LWSHUMETH_POST: return WEB_POST;
  case LWSHUMETH_PUT: return WEB_PUT;
  case LWSHUMETH_PATCH: return WEB_PATCH;
  case LWSHUMETH_DELETE: return WEB_DELETE;
  case LWSHUMETH_OPTIONS: return WEB_OPTIONS;
  default: return WEB_OTHER;
  }
}

/* Copies the request path (lws has decoded it, without the query) into
 * path.  NULL, or why it cannot be routed (the message of a 400). */
static const char *request_path(struct lws *wsi, char path[PATH_MAX_LEN + 1])
{
  char *uri = NULL;
  int ulen = 0;

  if (lws_http_get_uri_and_method(wsi, &uri, &ulen) < 0 || !uri || ulen <= 0)
    return "malformed request line";
  if (ulen > PATH_MAX_LEN)
    return "path too long";
  memcpy(path, uri, (size_t)ulen);
  path[ulen] = '\0';
  if (strlen(path) != (size_t)ulen || path[0] != '/')
    return "malformed path";
  return NULL;
}

/* The route, then in this order: a token if the resource needs one (401;
 * an unknown path under /api needs one too), the resource (404), the method
 * (405), the admin token for a command (403), a parameter that can name
 * something (404); then the handler. */
static int dispatch(struct lws *wsi, struct web *w, struct web_http_conn *c)
{
  char path[PATH_MAX_LEN + 1];
  char arg[ARG_CAP];
  struct web_route_hit hit;
  enum web_role role = WEB_ROLE_NONE;
  const char *bad = request_path(wsi, path);

  if (bad)
    return web_reply_error(wsi, w, c, 400, "bad_request", bad);
  web_route_find(path, c->method, &hit);
  if (c->method == WEB_HEAD) {
    c->head_only = true;
    c->close_after = true; /* keep lws's body accounting out of it */
  }

  if (!hit.resource || web_route_auth(w, hit.resource) != WEB_AUTH_NONE) {
    role = web_auth_request(w, wsi);
    if (role == WEB_ROLE_NONE)
      return web_reply_error(wsi, w, c, 401, "unauthorized", "a valid bearer token is required");
  }
  if (!hit.resource)
    return web_reply_error(wsi, w, c, 404, "not_found", "no such resource");
  if (!hit.route) {
    if (web_allow_header(hit.allowed, c->allow, sizeof c->allow) < 0)
      c->allow[0] = '\0';
    return web_reply_error(wsi, w, c, 405, "method_not_allowed",
                           "method not allowed on this resource");
  }
  if (web_route_auth(w, hit.route) == WEB_AUTH_ADMIN && role != WEB_ROLE_ADMIN)
    return web_reply_error(wsi, w, c, 403, "forbidden", "the read-only token cannot run commands");
  c->secret = hit.route->secret;

  if (hit.arg) {
    /* The registry holds no ClientId or entry this long. */
    if (hit.arg_len >= sizeof arg)
      return web_reply_error(wsi, w, c, 404, "not_found", hit.route->missing);
    memcpy(arg, hit.arg, hit.arg_len);
    arg[hit.arg_len] = '\0';
  }
  /* Every body passes the one strict parser, even where the handler ignores
   * it (the device commands): what the API accepts is exactly what it
   * reads.  Only a route that takes CSV sees a text/csv body raw. */
  if (c->body_len > 0 && !(hit.route->csv_ok && web_request_is_csv(wsi))) {
    enum web_json_err e = WEB_JSON_OK;
    size_t at = 0;

    c->json = web_json_parse_object(c->body, c->body_len, &e, &at);
    if (!c->json && e == WEB_JSON_OK)
      return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
    if (!c->json) {
      char msg[160];
      snprintf(msg, sizeof msg, "invalid JSON body: %s (at byte %zu)", web_json_strerror(e), at);
      return web_reply_error(wsi, w, c, 400, "bad_request", msg);
    }
  }
  return hit.route->handler(wsi, w, c, hit.arg ? arg : path);
}

bool web_request_is_csv(struct lws *wsi)
{
  static const char csv[] = "text/csv";
  char v[128];
  int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE);

  if (n <= 0 || n >= (int)sizeof v || lws_hdr_copy(wsi, v, (int)sizeof v,
                                                   WSI_TOKEN_HTTP_CONTENT_TYPE) < 0)
    return false;
  /* "text/csv", optionally with parameters ("; charset=utf-8"). */
  return strncasecmp(v, csv, sizeof csv - 1) == 0 &&
         (v[sizeof csv - 1] == '\0' || v[sizeof csv - 1] == ';' || v[sizeof csv - 1] == ' ');
}

cJSON *web_json_parse_object(const char *buf, size_t len, enum web_json_err *err, size_t *at)
{
  size_t where = 0;
  enum web_json_err e = web_json_check_object(buf, len, &where);
  cJSON *root = NULL;

  if (e == WEB_JSON_OK) {
    /* len + 1: cJSON's require_null_terminated looks at the byte after the
     * value, which must be inside the length it is given. */
    root = cJSON_ParseWithLengthOpts(buf, len + 1, NULL, 1);
    /* The check passed, so only memory can make cJSON fail; a document it
     * read as something other than an object would be a checker bug. */
    if (root && !cJSON_IsObject(root)) {
      cJSON_Delete(root);
      root = NULL;
      e = WEB_JSON_NOT_OBJECT;
    }
  }
  if (err)
    *err = e;
  if (at)
    *at = e == WEB_JSON_OK ? 0 : where;
  return root;
}

/* LWS_CALLBACK_HTTP: decide how the body (if any) is framed. */
static int on_request(struct lws *wsi, struct web *w, struct web_http_conn *c)
{
  char *uri = NULL;
  int ulen = 0;
  int m = lws_http_get_uri_and_method(wsi, &uri, &ulen);

  conn_reset(c);
  c->active = true;
  c->method = method_bit(m);
  web_conn_deadline(wsi, WEB_DEADLINE_NONE); /* the headers are in */

  if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
    /* lws 4.1 does not de-chunk request bodies; refuse rather than
     * misread the framing. */
    c->close_after = true;
    c->discard_body = true;
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "chunked request bodies are not supported; send Content-Length");
  }

  int cl_len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
  if (cl_len > 0) {
    char v[32];
    int64_t cl;
    if (cl_len >= (int)sizeof v ||
        lws_hdr_copy(wsi, v, (int)sizeof v, WSI_TOKEN_HTTP_CONTENT_LENGTH) < 0 ||
        web_parse_int64(v, 0, INT64_MAX, &cl) < 0) {
      c->close_after = true;
      c->discard_body = true;
      return web_reply_error(wsi, w, c, 400, "bad_request", "malformed Content-Length");
    }
    if ((uint64_t)cl > w->max_body) {
      c->close_after = true;
      c->discard_body = true;
      return web_reply_error(wsi, w, c, 413, "payload_too_large",
                             "the request body is larger than the limit");
    }
    if (cl > 0) {
      c->body = malloc((size_t)cl + 1);
      if (!c->body) {
        c->close_after = true;
        c->discard_body = true;
        return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
      }
      c->body_cap = (size_t)cl;
      c->body_expected = true;
      /* All of it in time, however slowly it trickles (lws's own timeout
       * restarts with every piece). */
      web_conn_deadline(wsi, WEB_DEADLINE_BODY);
      return 0; /* dispatched at LWS_CALLBACK_HTTP_BODY_COMPLETION */
    }
  } else if (c->method & (WEB_POST | WEB_PUT | WEB_PATCH)) {
    /* No Content-Length: HTTP/1.1 says no body, but lws expects one until
     * the connection ends, so answer and close. */
    c->close_after = true;
  }
  return dispatch(wsi, w, c);
}

int web_http_callback(struct web *w, struct lws *wsi, enum lws_callback_reasons reason,
                      struct web_pss *pss, void *in, size_t len)
{
  struct web_http_conn *c = pss ? &pss->http : NULL;

  switch (reason) {
  case LWS_CALLBACK_HTTP:
    if (!c)
      return -1;
    if (w->stopping)
      return -1;
    return on_request(wsi, w, c) < 0 ? -1 : 0;

  case LWS_CALLBACK_HTTP_BODY:
    if (!c || !c->active || c->discard_body || !c->body_expected || c->replying)
      return 0;
    if (len > c->body_cap - c->body_len) {
      c->close_after = true;
      c->discard_body = true;
      return web_reply_error(wsi, w, c, 413, "payload_too_large",
                             "the request body is larger than the limit") < 0 ? -1 : 0;
    }
    memcpy(c->body + c->body_len, in, len);
    c->body_len += len;
    return 0;

  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    if (!c || !c->active || c->discard_body || c->replying)
      return 0;
    if (c->body)
      c->body[c->body_len] = '\0';
    return dispatch(wsi, w, c) < 0 ? -1 : 0;

  case LWS_CALLBACK_HTTP_WRITEABLE:
    if (!c)
      return 0;
    return write_reply(wsi, c);

  case LWS_CALLBACK_CLOSED_HTTP:
  case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    if (c)
      conn_reset(c);
    return 0;

  default:
    return 0;
  }
}
