/*
 * web_api.c - the REST API's handlers (web_h_*: devices, allowlist,
 * certificates, audit, status, /metrics, the OpenAPI document and the
 * dashboard's static files) and the JSON of the gateway's rows
 * (web_device_json, web_*_row).
 *
 * web_http.c routes a request here once its token, method and path
 * parameter have been checked; a handler queues its whole reply with the
 * web_reply_* functions of web_http.c.
 */
#define _XOPEN_SOURCE 700 /* realpath() */
#include "web_int.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "secret.h"

#define MOD "web"

enum {
  ARG_MAX_LEN = 512,             /* longest query parameter value */
  FILE_MAX = 16 * 1024 * 1024,   /* largest static file or OpenAPI document */
  CLIENT_ID_CAP = WEB_CLIENT_ID_CAP,
  ENTRY_CAP = 256,
  PAGE_LIMIT_DEFAULT = 50,
  PAGE_LIMIT_MAX = 1000,
};

static const char *const ACTOR = WEB_ACTOR;
#define LOG_COMMAND WEB_LOG_COMMAND

static const char *const device_states[] = {"pending", "approved", "provisioning", "active",
                                            "failed",  "blocked",  "revoked"};
static const char *const device_sorts[] = {"client_id", "thing_name", "state", "last_seen",
                                           "first_seen", "cert_not_after"};
static const char *const cert_states[] = {"pending", "active", "orphaned", "superseded",
                                          "inactive"};
static const char *const lan_securities[] = {"plain", "dtls-psk", "dtls-cert", "none"};
/* ---- replies ------------------------------------------------------------- */

int web_reply_json(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                      cJSON *o)
{
  char *text = o ? cJSON_PrintUnformatted(o) : NULL;
  int rc;

  cJSON_Delete(o);
  if (!text)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  rc = web_reply_copy(wsi, w, c, status, web_ct_json, text, strlen(text));
  cJSON_free(text);
  return rc;
}

int web_reply_api_err(struct lws *wsi, struct web *w, struct web_http_conn *c, int err,
                         const char *reason, const char *what)
{
  char msg[384];

  switch (err) {
  case API_NOTFOUND:
    if (!what && reason && *reason)
      return web_reply_error(wsi, w, c, 404, "not_found", reason);
    snprintf(msg, sizeof msg, "no such %s", what ? what : "resource");
    return web_reply_error(wsi, w, c, 404, "not_found", msg);
  case API_CONFLICT:
    return web_reply_error(wsi, w, c, 409, "conflict",
                           reason && *reason ? reason : "not possible in the current state");
  case API_INVAL:
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           reason && *reason ? reason : "invalid argument");
  default:
    return web_reply_error(wsi, w, c, 500, "internal",
                           reason && *reason ? reason : "internal error");
  }
}

/* ---- request helpers ------------------------------------------------------ */

/* Looks up a query parameter (already URL-decoded by lws).  1 found, 0
 * absent, -1 too long. */
static int get_arg(struct lws *wsi, const char *name, char *out, size_t cap)
{
  char frag[ARG_MAX_LEN + 64];

  for (int i = 0; i < 64; i++) {
    int flen = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
    if (flen <= 0) {
      if (lws_hdr_copy_fragment(wsi, frag, (int)sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i) < 0)
        return 0; /* no more fragments */
      continue;   /* an empty one, "a=1&&b=2" */
    }
    size_t nlen = strlen(name);
    if (flen >= (int)sizeof frag)
      return -1; /* no parameter of ours is that long */
    if (lws_hdr_copy_fragment(wsi, frag, (int)sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i) < 0)
      return 0;
    if (strncmp(frag, name, nlen) != 0 || (frag[nlen] != '=' && frag[nlen] != '\0'))
      continue;
    char *k, *v;
    web_query_split(frag, &k, &v);
    if (strlen(v) >= cap)
      return -1;
    memcpy(out, v, strlen(v) + 1);
    return 1;
  }
  return 0;
}

struct page {
  int64_t offset;
  int64_t limit;
};

/* offset and limit; on failure the 400 reply is already queued. */
static int get_page(struct lws *wsi, struct web *w, struct web_http_conn *c, struct page *pg,
                    bool *replied)
{
  char v[32];
  int r;

  pg->offset = 0;
  pg->limit = PAGE_LIMIT_DEFAULT;
  *replied = false;
  r = get_arg(wsi, "offset", v, sizeof v);
  if (r < 0 || (r > 0 && web_parse_int64(v, 0, INT64_MAX / 2, &pg->offset) < 0)) {
    *replied = true;
    return web_reply_error(wsi, w, c, 400, "bad_request", "offset must be an integer >= 0");
  }
  r = get_arg(wsi, "limit", v, sizeof v);
  if (r < 0 || (r > 0 && web_parse_int64(v, 1, PAGE_LIMIT_MAX, &pg->limit) < 0)) {
    *replied = true;
    return web_reply_error(wsi, w, c, 400, "bad_request", "limit must be an integer in 1..1000");
  }
  return 0;
}

static bool in_list(const char *s, const char *const *list, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp(s, list[i]) == 0)
      return true;
  return false;
}

/* Reads a whole regular file into an LWS_PRE-headroomed buffer.  0, -1 (no
 * such file, or not a regular file), -2 (too big or read error). */
static int read_file(const char *path, unsigned char **out, size_t *len)
{
  struct stat st;
  unsigned char *buf;
  size_t got = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

  if (fd < 0)
    return -1;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return -1;
  }
  if (st.st_size > FILE_MAX) {
    close(fd);
    return -2;
  }
  buf = web_out_alloc((size_t)st.st_size);
  if (!buf) {
    close(fd);
    return -2;
  }
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + LWS_PRE + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break; /* the file shrank: serve what is there */
    got += (size_t)n;
  }
  close(fd);
  *out = buf;
  *len = got;
  return 0;
}

/* ---- JSON builders -------------------------------------------------------- */

/* cJSON_Add* return NULL on allocation failure; these fold that into *ok so
 * a builder can check once at the end. */
void web_json_str(cJSON *o, const char *k, const char *v, bool *ok)
{
  if (!cJSON_AddStringToObject(o, k, v ? v : ""))
    *ok = false;
}

void web_json_num(cJSON *o, const char *k, double v, bool *ok)
{
  if (!cJSON_AddNumberToObject(o, k, v))
    *ok = false;
}

cJSON *web_device_json(const struct api_device *d)
{
  bool ok = true;
  cJSON *o = cJSON_CreateObject();

  if (!o)
    return NULL;
  web_json_str(o, "client_id", d->client_id, &ok);
  web_json_str(o, "thing_name", d->thing_name, &ok);
  web_json_str(o, "state", d->state, &ok);
  web_json_str(o, "session", d->session, &ok);
  web_json_str(o, "bound_addr", d->bound_addr, &ok);
  web_json_str(o, "address", d->address, &ok);
  web_json_num(o, "first_seen", (double)d->first_seen, &ok);
  web_json_num(o, "last_seen", (double)d->last_seen, &ok);
  web_json_str(o, "last_error", d->last_error, &ok);
  web_json_num(o, "attempts", d->attempts, &ok);
  if (d->cert_id[0]) {
    cJSON *cert = cJSON_AddObjectToObject(o, "certificate");
    if (!cert) {
      ok = false;
    } else {
      web_json_str(cert, "cert_id", d->cert_id, &ok);
      web_json_str(cert, "fingerprint", d->cert_fingerprint, &ok);
      web_json_num(cert, "not_after", (double)d->cert_not_after, &ok);
      web_json_str(cert, "status", d->cert_status, &ok);
    }
  } else if (!cJSON_AddNullToObject(o, "certificate")) {
    ok = false;
  }
  /* Whole days to the active certificate's not-after, rounded down:
   * negative once expired, null without a certificate. */
  if (!(d->cert_expiry_known
            ? cJSON_AddNumberToObject(o, "expires_in_days", (double)d->cert_expires_in_days)
            : cJSON_AddNullToObject(o, "expires_in_days")))
    ok = false;
  /* null until the device has connected at all; "psk" says whether a key
   * exists, never what it is. */
  if (!(d->lan_security[0] ? cJSON_AddStringToObject(o, "lan_security", d->lan_security)
                           : cJSON_AddNullToObject(o, "lan_security")) ||
      !cJSON_AddBoolToObject(o, "psk", d->psk))
    ok = false;
  web_json_num(o, "msgs_in", (double)d->msgs_in, &ok);
  web_json_num(o, "msgs_out", (double)d->msgs_out, &ok);
  web_json_num(o, "msgs_refused", (double)d->msgs_refused, &ok);
  web_json_num(o, "queued", d->queued, &ok);
  web_json_num(o, "subscriptions", d->subscriptions, &ok);
  /* Rates to 1/100 message per second; null where there is no session. */
  web_json_num(o, "rate_in", (double)(int64_t)(d->rate_in * 100 + 0.5) / 100, &ok);
  web_json_num(o, "rate_out", (double)(int64_t)(d->rate_out * 100 + 0.5) / 100, &ok);
  if (!(d->last_message_at > 0
            ? cJSON_AddNumberToObject(o, "last_message_at", (double)d->last_message_at)
            : cJSON_AddNullToObject(o, "last_message_at")) ||
      !(d->has_keepalive ? cJSON_AddNumberToObject(o, "keepalive_s", d->keepalive_s)
                         : cJSON_AddNullToObject(o, "keepalive_s")))
    ok = false;
  web_json_num(o, "reconnects", d->reconnects, &ok);
  web_outbox_json(o, &d->outbox, false, &ok);
  if (!ok) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

static int add_item(struct web_rows *lc, cJSON *item)
{
  if (!item || !cJSON_AddItemToArray(lc->items, item)) {
    cJSON_Delete(item);
    lc->ok = false;
    return -1;
  }
  return 0;
}

/* Adds a row object built with add_str/add_num; ok false (a field could not
 * be added) drops it and fails the list, as a NULL object does. */
static int add_row(void *ud, cJSON *o, bool ok)
{
  if (!ok) {
    cJSON_Delete(o);
    o = NULL;
  }
  return add_item(ud, o);
}

int web_device_row(void *ud, const struct api_device *d)
{
  return add_item(ud, web_device_json(d));
}

int web_cert_row(void *ud, const struct api_cert *cr)
{
  bool ok = true;
  cJSON *o = cJSON_CreateObject();
  if (o) {
    web_json_str(o, "cert_id", cr->cert_id, &ok);
    web_json_str(o, "client_id", cr->client_id, &ok);
    web_json_str(o, "status", cr->status, &ok);
    web_json_num(o, "not_after", (double)cr->not_after, &ok);
    web_json_str(o, "fingerprint", cr->fingerprint, &ok);
    web_json_str(o, "reason", cr->reason, &ok);
    web_json_num(o, "created_at", (double)cr->created_at, &ok);
  }
  return add_row(ud, o, ok);
}

int web_audit_row(void *ud, const struct api_audit *a)
{
  bool ok = true;
  cJSON *o = cJSON_CreateObject();
  if (o) {
    web_json_num(o, "id", (double)a->id, &ok);
    web_json_num(o, "at", (double)a->at, &ok);
    web_json_str(o, "actor", a->actor, &ok);
    web_json_str(o, "action", a->action, &ok);
    web_json_str(o, "client_id", a->client_id, &ok);
    web_json_str(o, "detail", a->detail, &ok);
  }
  return add_row(ud, o, ok);
}

/* An allowlist entry, as listed and as answered to its POST. */
static cJSON *allow_json(const char *entry, int64_t added_at)
{
  bool ok = true;
  cJSON *o = cJSON_CreateObject();

  if (!o)
    return NULL;
  web_json_str(o, "entry", entry, &ok);
  web_json_num(o, "added_at", (double)added_at, &ok);
  if (!ok) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

int web_allow_row(void *ud, const char *entry, int64_t added_at)
{
  return add_item(ud, allow_json(entry, added_at));
}

int web_sub_row(void *ud, const char *filter, int qos)
{
  bool ok = true;
  cJSON *o = cJSON_CreateObject();
  if (o) {
    web_json_str(o, "filter", filter, &ok);
    web_json_num(o, "qos", qos, &ok);
  }
  return add_row(ud, o, ok);
}

/* {"items": [...], "total": N, "offset": O, "limit": L}; takes items. */
static int reply_list(struct lws *wsi, struct web *w, struct web_http_conn *c, int rc,
                      struct web_rows *lc, int64_t total, const struct page *pg)
{
  bool ok = lc->ok;
  cJSON *o;

  if (rc != API_OK && lc->ok) {
    cJSON_Delete(lc->items);
    return web_reply_api_err(wsi, w, c, rc, NULL, "resource");
  }
  o = cJSON_CreateObject();
  if (!o || !cJSON_AddItemToObject(o, "items", lc->items)) {
    cJSON_Delete(lc->items);
    cJSON_Delete(o);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  web_json_num(o, "total", (double)total, &ok);
  if (pg) {
    web_json_num(o, "offset", (double)pg->offset, &ok);
    web_json_num(o, "limit", (double)pg->limit, &ok);
  }
  if (!ok) {
    cJSON_Delete(o);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  return web_reply_json(wsi, w, c, 200, o);
}

/* ---- handlers ------------------------------------------------------------- */

int web_h_health(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  static const char ok[] = "{\"status\":\"ok\"}";
  return web_reply_copy(wsi, w, c, 200, web_ct_json, ok, sizeof ok - 1);
}

int web_h_status(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  struct api_status st;
  bool ok = true;
  cJSON *o, *dev, *leaves;
  int rc;

  memset(&st, 0, sizeof st);
  rc = api_status(w->gw, &st);
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, NULL, "status");
  o = cJSON_CreateObject();
  if (!o)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  web_json_str(o, "version", st.version, &ok);
  web_json_num(o, "uptime_s", (double)st.uptime_s, &ok);
  web_json_num(o, "gateway_id", st.gateway_id, &ok);
  web_json_str(o, "uplink", st.uplink, &ok);
  web_json_str(o, "backend", st.backend, &ok);
  dev = cJSON_AddObjectToObject(o, "devices");
  if (dev) {
    for (size_t i = 0; i < sizeof device_states / sizeof device_states[0]; i++)
      web_json_num(dev, device_states[i], (double)st.devices_by_state[i], &ok);
  } else {
    ok = false;
  }
  leaves = cJSON_AddObjectToObject(o, "leaves");
  if (leaves) {
    web_json_num(leaves, "active", (double)st.leaves_active, &ok);
    web_json_num(leaves, "asleep", (double)st.leaves_asleep, &ok);
    web_json_num(leaves, "connecting", (double)st.leaves_connecting, &ok);
  } else {
    ok = false;
  }
  web_json_num(o, "upstreams_up", (double)st.upstreams_up, &ok);
  web_json_num(o, "provisioning_in_flight", (double)st.provisioning_in_flight, &ok);
  web_json_num(o, "db_bytes", (double)st.db_bytes, &ok);
  web_json_num(o, "msgs_in", (double)st.msgs_in, &ok);
  web_json_num(o, "msgs_out", (double)st.msgs_out, &ok);
  web_outbox_json(o, &st.outbox, true, &ok);
  {
    cJSON *ce = cJSON_AddObjectToObject(o, "cert_expiry");
    if (!ce) {
      ok = false;
    } else {
      web_json_num(ce, "warn_days", st.expiry_warn_days, &ok);
      web_json_num(ce, "expiring", (double)st.certs_expiring, &ok);
      web_json_num(ce, "expired", (double)st.certs_expired, &ok);
      if (!(st.certs_soonest_not_after > 0
                ? cJSON_AddNumberToObject(ce, "soonest_not_after",
                                          (double)st.certs_soonest_not_after)
                : cJSON_AddNullToObject(ce, "soonest_not_after")) ||
          !(st.ca_not_after > 0
                ? cJSON_AddNumberToObject(ce, "ca_not_after", (double)st.ca_not_after)
                : cJSON_AddNullToObject(ce, "ca_not_after")))
        ok = false;
    }
  }
  if (!ok) {
    cJSON_Delete(o);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  return web_reply_json(wsi, w, c, 200, o);
}

/* The last hour's message counts, oldest first: {"step_s": 10, "items":
 * [{"at", "in", "out"}, ...]}, at most WEB_HIST_LEN items. */
int web_h_status_history(struct lws *wsi, struct web *w, struct web_http_conn *c,
                         const char *arg)
{
  bool ok = true;
  cJSON *o = cJSON_CreateObject(), *items = o ? cJSON_AddArrayToObject(o, "items") : NULL;

  if (!items)
    ok = false;
  else
    web_json_num(o, "step_s", WEB_HIST_STEP_S, &ok);
  for (uint32_t i = 0; ok && i < w->hist.n; i++) {
    const struct web_hist_sample *s = web_hist_get(&w->hist, i);
    cJSON *it = cJSON_CreateObject();
    if (!it || !cJSON_AddItemToArray(items, it)) {
      cJSON_Delete(it);
      ok = false;
      break;
    }
    web_json_num(it, "at", (double)s->at, &ok);
    web_json_num(it, "in", s->in, &ok);
    web_json_num(it, "out", s->out, &ok);
  }
  if (!ok) {
    cJSON_Delete(o);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  return web_reply_json(wsi, w, c, 200, o);
}

int web_h_devices(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  char state[32], q[ARG_MAX_LEN];
  struct page pg;
  struct web_rows lc = {NULL, true};
  int64_t total = 0;
  bool replied;
  int r, rc;

  rc = get_page(wsi, w, c, &pg, &replied);
  if (replied)
    return rc;
  r = get_arg(wsi, "state", state, sizeof state);
  if (r < 0 || (r > 0 && *state &&
                !in_list(state, device_states, sizeof device_states / sizeof device_states[0])))
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "state must be one of pending, approved, provisioning, active, failed, "
                           "blocked, revoked");
  bool has_state = r > 0 && *state;
  r = get_arg(wsi, "q", q, sizeof q);
  if (r < 0)
    return web_reply_error(wsi, w, c, 400, "bad_request", "q is too long");
  bool has_q = r > 0 && *q;
  char sort[32];
  r = get_arg(wsi, "sort", sort, sizeof sort);
  if (r < 0 || (r > 0 && *sort &&
                !in_list(*sort == '-' ? sort + 1 : sort, device_sorts,
                         sizeof device_sorts / sizeof device_sorts[0])))
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "sort must be one of client_id, thing_name, state, last_seen, "
                           "first_seen, cert_not_after, optionally prefixed with '-'");
  bool has_sort = r > 0 && *sort;
  char days[32];
  int64_t within = -1;
  r = get_arg(wsi, "expires_within_days", days, sizeof days);
  if (r < 0 || (r > 0 && web_parse_int64(days, 0, 36500, &within) < 0))
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "expires_within_days must be an integer in 0..36500");
  char lan[16];
  r = get_arg(wsi, "lan_security", lan, sizeof lan);
  if (r < 0 || (r > 0 && *lan &&
                !in_list(lan, lan_securities, sizeof lan_securities / sizeof lan_securities[0])))
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "lan_security must be one of plain, dtls-psk, dtls-cert, none");
  bool has_lan = r > 0 && *lan;

  lc.items = cJSON_CreateArray();
  if (!lc.items)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  rc = api_devices_list(w->gw, has_state ? state : NULL, has_q ? q : NULL,
                        has_lan ? lan : NULL, has_sort ? sort : NULL, within, pg.offset,
                        pg.limit,
                        web_device_row, &lc, &total);
  return reply_list(wsi, w, c, rc, &lc, total, &pg);
}

int web_h_device(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  struct web_rows lc = {NULL, true};
  cJSON *o;
  int rc;
  struct api_device *d = web_device_now(wsi, w, c, id, &rc);

  if (!d)
    return rc;
  o = web_device_json(d);
  free(d);
  lc.items = cJSON_CreateArray();
  if (!o || !lc.items) {
    cJSON_Delete(o);
    cJSON_Delete(lc.items);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  rc = api_device_subscriptions(w->gw, id, web_sub_row, &lc);
  if (!lc.ok || rc != API_OK) {
    cJSON_Delete(o);
    cJSON_Delete(lc.items);
    if (!lc.ok)
      return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
    return web_reply_api_err(wsi, w, c, rc, NULL, "device");
  }
  /* In the single-device answer "subscriptions" is the list, not a count. */
  if (!cJSON_ReplaceItemInObject(o, "subscriptions", lc.items)) {
    cJSON_Delete(o);
    cJSON_Delete(lc.items);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  return web_reply_json(wsi, w, c, 200, o);
}

int web_h_device_cert(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  char *pem = NULL;
  int rc = api_device_certificate(w->gw, id, &pem);

  if (rc != API_OK || !pem) {
    free(pem);
    if (rc == API_OK || rc == API_NOTFOUND)
      return web_reply_error(wsi, w, c, 404, "not_found",
                             "no such device or no active certificate");
    return web_reply_api_err(wsi, w, c, rc, NULL, "device");
  }
  rc = web_reply_copy(wsi, w, c, 200, "application/x-pem-file", pem, strlen(pem));
  free(pem);
  return rc;
}

struct api_device *web_device_now(struct lws *wsi, struct web *w, struct web_http_conn *c,
                                  const char *id, int *rc)
{
  struct api_device *d = calloc(1, sizeof *d);
  int err;

  if (!d) {
    *rc = web_reply_error(wsi, w, c, 500, "internal", "out of memory");
    return NULL;
  }
  err = api_device_get(w->gw, id, d);
  if (err != API_OK) {
    free(d);
    *rc = web_reply_api_err(wsi, w, c, err, NULL, "device");
    return NULL;
  }
  return d;
}

typedef int (*device_cmd_fn)(struct gw *, const char *, const char *, char *, size_t);

static int device_cmd(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id,
                      device_cmd_fn fn, const char *what)
{
  char reason[256] = "";
  struct api_device *d;
  int rc = fn(w->gw, id, ACTOR, reason, sizeof reason);

  reason[sizeof reason - 1] = '\0';
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, reason, "device");
  {
    /* The ClientId comes from the request path: any bytes at all. */
    char safe[4 * CLIENT_ID_CAP];
    LOG_COMMAND("%s %s by %s", what, web_log_text(id, strlen(id), safe, sizeof safe), ACTOR);
  }
  d = web_device_now(wsi, w, c, id, &rc);
  if (!d)
    return rc;
  cJSON *o = web_device_json(d);
  free(d);
  if (!o)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  return web_reply_json(wsi, w, c, 200, o);
}

/* The device commands, one handler per route (the table names them). */
int web_h_approve(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_approve, "approve");
}

int web_h_block(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_block, "block");
}

int web_h_unblock(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_unblock, "unblock");
}

int web_h_reprovision(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_reprovision, "reprovision");
}

int web_h_rotate(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_rotate, "rotate");
}

int web_h_release(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_release, "release");
}

int web_h_decommission(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  return device_cmd(wsi, w, c, id, api_device_decommission, "decommission");
}


int web_h_allowlist_get(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  struct web_rows lc = {cJSON_CreateArray(), true};
  int rc;

  if (!lc.items)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  rc = api_allow_list(w->gw, web_allow_row, &lc);
  return reply_list(wsi, w, c, rc, &lc, cJSON_GetArraySize(lc.items), NULL);
}

struct find_entry {
  const char *entry;
  int64_t added_at;
  bool found;
};

static int find_entry_row(void *ud, const char *entry, int64_t added_at)
{
  struct find_entry *fe = ud;
  if (strcmp(entry, fe->entry) == 0) {
    fe->added_at = added_at;
    fe->found = true;
    return 1; /* stop */
  }
  return 0;
}

/* A text/csv body: one entry a line, an optional "entry" header line. */
static int allowlist_import_csv(struct lws *wsi, struct web *w, struct web_http_conn *c,
                                const char *body, size_t len)
{
  char buf[ENTRY_CAP];
  size_t pos = 0;
  int64_t added = 0, skipped = 0;
  bool first = true;
  const char *e;

  while ((e = web_csv_next(body, len, &pos, buf, sizeof buf)) != NULL) {
    if (first && strcasecmp(e, "entry") == 0) {
      first = false;
      continue;
    }
    first = false;
    if (!*e) {
      skipped++;
      continue;
    }
    int rc = api_allow_add(w->gw, e, ACTOR);
    if (rc == API_OK)
      added++;
    else if (rc == API_CONFLICT || rc == API_INVAL)
      skipped++;
    else
      return web_reply_api_err(wsi, w, c, rc, NULL, "entry");
  }
  LOG_COMMAND("allowlist import by %s: %" PRId64 " added, %" PRId64 " skipped", ACTOR, added,
              skipped);
  cJSON *o = cJSON_CreateObject();
  bool ok = o != NULL;
  if (o) {
    web_json_num(o, "added", (double)added, &ok);
    web_json_num(o, "skipped", (double)skipped, &ok);
  }
  if (!ok) {
    cJSON_Delete(o);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  return web_reply_json(wsi, w, c, 200, o);
}

/* A JSON body: {"entry": "..."}, parsed by dispatch (web_json_parse_object). */
static int allowlist_add_json(struct lws *wsi, struct web *w, struct web_http_conn *c)
{
  const cJSON *je = c->json ? cJSON_GetObjectItemCaseSensitive(c->json, "entry") : NULL;
  if (!cJSON_IsString(je) || !je->valuestring[0] || strlen(je->valuestring) >= ENTRY_CAP)
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "expected a JSON object {\"entry\": \"<ClientId or pattern>\"} "
                           "or a text/csv body");
  char entry[ENTRY_CAP];
  memcpy(entry, je->valuestring, strlen(je->valuestring) + 1);

  int rc = api_allow_add(w->gw, entry, ACTOR);
  if (rc == API_CONFLICT)
    return web_reply_error(wsi, w, c, 409, "conflict", "the entry is already on the allowlist");
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, NULL, "entry");
  LOG_COMMAND("allowlist add by %s", ACTOR);

  struct find_entry fe = {entry, (int64_t)time(NULL), false};
  (void)api_allow_list(w->gw, find_entry_row, &fe);
  /* The new entry as GET lists it (NULL: reply_json answers 500). */
  return web_reply_json(wsi, w, c, 201, allow_json(entry, fe.added_at));
}

int web_h_allowlist_post(struct lws *wsi, struct web *w, struct web_http_conn *c,
                         const char *arg)
{
  if (web_request_is_csv(wsi))
    return allowlist_import_csv(wsi, w, c, c->body ? c->body : "", c->body_len);
  return allowlist_add_json(wsi, w, c);
}

int web_h_allowlist_delete(struct lws *wsi, struct web *w, struct web_http_conn *c,
                           const char *entry)
{
  int rc = api_allow_remove(w->gw, entry, ACTOR);
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, NULL, "allowlist entry");
  LOG_COMMAND("allowlist remove by %s", ACTOR);
  return web_reply_copy(wsi, w, c, 204, web_ct_json, "", 0);
}

int web_h_certs(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  char status[32];
  struct page pg;
  struct web_rows lc = {NULL, true};
  int64_t total = 0;
  bool replied;
  int r, rc;

  rc = get_page(wsi, w, c, &pg, &replied);
  if (replied)
    return rc;
  r = get_arg(wsi, "status", status, sizeof status);
  if (r < 0 || (r > 0 && *status &&
                !in_list(status, cert_states, sizeof cert_states / sizeof cert_states[0])))
    return web_reply_error(wsi, w, c, 400, "bad_request",
                           "status must be one of pending, active, orphaned, superseded, inactive");
  lc.items = cJSON_CreateArray();
  if (!lc.items)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  rc = api_certs_list(w->gw, r > 0 && *status ? status : NULL, pg.offset, pg.limit,
                      web_cert_row, &lc, &total);
  return reply_list(wsi, w, c, rc, &lc, total, &pg);
}

int web_h_audit(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  char id[CLIENT_ID_CAP];
  struct page pg;
  struct web_rows lc = {NULL, true};
  int64_t total = 0;
  bool replied;
  int r, rc;

  rc = get_page(wsi, w, c, &pg, &replied);
  if (replied)
    return rc;
  r = get_arg(wsi, "client_id", id, sizeof id);
  if (r < 0)
    return web_reply_error(wsi, w, c, 400, "bad_request", "client_id is too long");
  lc.items = cJSON_CreateArray();
  if (!lc.items)
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  rc = api_audit_list(w->gw, r > 0 && *id ? id : NULL, pg.offset, pg.limit, web_audit_row,
                      &lc, &total);
  return reply_list(wsi, w, c, rc, &lc, total, &pg);
}

/* The web server's own counters (web.c), after the gateway's. */
static int web_metrics_text(const struct web *w, char *buf, size_t cap)
{
  const struct web_stats *st = &w->stats;

  return snprintf(
      buf, cap,
      "# HELP fleetgw_web_connections Open HTTP and WebSocket connections.\n"
      "# TYPE fleetgw_web_connections gauge\n"
      "fleetgw_web_connections %u\n"
      "# HELP fleetgw_web_connections_refused_total Connections closed at accept, by the bound "
      "they met (" WEB_STR(WEB_CONN_MAX) " in all, " WEB_STR(WEB_CONN_PER_IP) " per client).\n"
      "# TYPE fleetgw_web_connections_refused_total counter\n"
      "fleetgw_web_connections_refused_total{reason=\"total\"} %llu\n"
      "fleetgw_web_connections_refused_total{reason=\"per_ip\"} %llu\n"
      "# HELP fleetgw_web_request_timeouts_total Connections closed because a request's headers "
      "or body did not arrive in time.\n"
      "# TYPE fleetgw_web_request_timeouts_total counter\n"
      "fleetgw_web_request_timeouts_total{phase=\"headers\"} %llu\n"
      "fleetgw_web_request_timeouts_total{phase=\"body\"} %llu\n",
      w->conn_table.total, (unsigned long long)st->refused_full,
      (unsigned long long)st->refused_per_ip, (unsigned long long)st->timeout_headers,
      (unsigned long long)st->timeout_body);
}

int web_h_metrics(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  char own[1024];
  char *text = NULL;
  int rc = api_metrics_prometheus(w->gw, &text);
  int n = web_metrics_text(w, own, sizeof own);
  unsigned char *out;
  size_t len;

  if (rc != API_OK || !text || n < 0 || (size_t)n >= sizeof own) {
    free(text);
    return web_reply_error(wsi, w, c, 500, "internal", "metrics unavailable");
  }
  len = strlen(text);
  out = web_out_alloc(len + (size_t)n);
  if (!out) {
    free(text);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  memcpy(out + LWS_PRE, text, len);
  memcpy(out + LWS_PRE + len, own, (size_t)n);
  free(text);
  return web_reply_raw(wsi, w, c, 200, "text/plain; version=0.0.4; charset=utf-8", out,
                       len + (size_t)n);
}

/* The upgrade itself never reaches the HTTP side: web_ws.c takes it. */
int web_h_events(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  return web_reply_error(wsi, w, c, 400, "bad_request",
                         "the event stream needs a WebSocket upgrade");
}

static int serve_file(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *file,
                      const char *ctype)
{
  unsigned char *buf = NULL;
  size_t len = 0;
  int rc = read_file(file, &buf, &len);

  if (rc == -1)
    return web_reply_error(wsi, w, c, 404, "not_found", "no such file");
  if (rc < 0)
    return web_reply_error(wsi, w, c, 500, "internal", "cannot read the file");
  return web_reply_raw(wsi, w, c, 200, ctype, buf, len);
}

int web_h_openapi(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg)
{
  if (!w->openapi_file)
    return web_reply_error(wsi, w, c, 404, "not_found", "no OpenAPI document configured");
  return serve_file(wsi, w, c, w->openapi_file, web_ct_json);
}

int web_h_static(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *path)
{
  char file[PATH_MAX], root[PATH_MAX], real[PATH_MAX];
  size_t plen = strlen(path);
  int n;

  if (!w->static_dir || !web_static_path_ok(path))
    return web_reply_error(wsi, w, c, 404, "not_found", "no such file");
  n = snprintf(file, sizeof file, "%s%s%s", w->static_dir, path,
               path[plen - 1] == '/' ? "index.html" : "");
  if (n < 0 || (size_t)n >= sizeof file)
    return web_reply_error(wsi, w, c, 404, "not_found", "no such file");
  /* Symbolic links must not lead out of the static directory either. */
  if (!realpath(w->static_dir, root) || !realpath(file, real))
    return web_reply_error(wsi, w, c, 404, "not_found", "no such file");
  size_t rlen = strlen(root);
  if (strncmp(real, root, rlen) != 0 || (real[rlen] != '/' && rlen != 1))
    return web_reply_error(wsi, w, c, 404, "not_found", "no such file");
  return serve_file(wsi, w, c, real, web_content_type(real));
}
