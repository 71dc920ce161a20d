/*
 * web_outbox.c - store and forward in the REST API (docs/outbox.md): the
 * "outbox" object of a device and of GET /api/v1/status (web_outbox_json),
 * and the admin's DELETE /api/v1/devices/{clientId}/outbox, which discards
 * the leaf's messages that are not in flight (web_h_outbox_discard).
 */
#include "web_int.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define MOD "web"
#define ACTOR WEB_ACTOR
#define LOG_COMMAND WEB_LOG_COMMAND
#define CLIENT_ID_CAP WEB_CLIENT_ID_CAP

/* The counters, in the order of the JSON; "oldest_age_s" goes after the
 * first AGE_AFTER of them. */
enum { AGE_AFTER = 3 };
static const struct {
  const char *name;
  size_t off;
} ob_nums[] = {
    {"messages", offsetof(struct api_outbox, messages)},
    {"bytes", offsetof(struct api_outbox, bytes)},
    {"in_flight", offsetof(struct api_outbox, in_flight)},
    {"stored", offsetof(struct api_outbox, stored)},
    {"delivered", offsetof(struct api_outbox, delivered)},
    {"refused_full", offsetof(struct api_outbox, refused_full)},
    {"dropped", offsetof(struct api_outbox, dropped)},
    {"expired", offsetof(struct api_outbox, expired)},
    {"cloud_refused", offsetof(struct api_outbox, cloud_refused)},
    {"discarded", offsetof(struct api_outbox, discarded)},
};

void web_outbox_json(cJSON *o, const struct api_outbox *ob, bool totals, bool *ok)
{
  cJSON *x = cJSON_AddObjectToObject(o, "outbox");

  if (!x) {
    *ok = false;
    return;
  }
  if (!cJSON_AddBoolToObject(x, "enabled", ob->enabled))
    *ok = false;
  for (size_t i = 0; i < sizeof ob_nums / sizeof ob_nums[0]; i++) {
    uint64_t v;
    if (i == AGE_AFTER &&
        !(ob->oldest_age_s >= 0 /* -1: nothing waits */
              ? cJSON_AddNumberToObject(x, "oldest_age_s", (double)ob->oldest_age_s)
              : cJSON_AddNullToObject(x, "oldest_age_s")))
      *ok = false;
    memcpy(&v, (const char *)ob + ob_nums[i].off, sizeof v);
    web_json_num(x, ob_nums[i].name, (double)v, ok);
  }
  if (totals)
    web_json_num(x, "leaves", ob->leaves, ok);
}

/* 200 {"client_id", "discarded": n, "outbox": {...} as it is now (what was
 * in flight stays, and is delivered)}; 404 unknown device, 409 outbox off. */
int web_h_outbox_discard(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *id)
{
  char reason[256] = "";
  struct api_device *d;
  uint64_t n = 0;
  bool ok = true;
  cJSON *o;
  int rc = api_device_outbox_discard(w->gw, id, ACTOR, &n, reason, sizeof reason);

  reason[sizeof reason - 1] = '\0';
  if (rc != API_OK)
    return web_reply_api_err(wsi, w, c, rc, reason, "device");
  {
    /* The ClientId comes from the request path: any bytes at all. */
    char safe[4 * CLIENT_ID_CAP];
    LOG_COMMAND("outbox discard %s: %llu messages by %s",
                web_log_text(id, strlen(id), safe, sizeof safe), (unsigned long long)n, ACTOR);
  }
  d = web_device_now(wsi, w, c, id, &rc);
  if (!d)
    return rc;
  o = cJSON_CreateObject();
  if (o) {
    web_json_str(o, "client_id", d->client_id, &ok);
    web_json_num(o, "discarded", (double)n, &ok);
    web_outbox_json(o, &d->outbox, false, &ok);
  }
  free(d);
  if (!o || !ok) {
    cJSON_Delete(o);
    return web_reply_error(wsi, w, c, 500, "internal", "out of memory");
  }
  return web_reply_json(wsi, w, c, 200, o);
}
