/*
 * gw_api.c - the query/command API that web/ uses (api/gw_api.h): reads the
 * registry and the live session tables, copies plain structs out, carries
 * out operator commands (each audited), renders the Prometheus exposition
 * and manages event subscriptions.
 */
#include "api/gw_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_int.h"
#include "leaves.h"
#include "log.h"
#include "outbox.h"
#include "provision.h"
#include "relay.h"
#include "store.h"

#define MOD "api"
#define DAY_S 86400

static int64_t now_s(void)
{
  return (int64_t)time(NULL);
}

static void copy(char *dst, size_t cap, const char *src)
{
  snprintf(dst, cap, "%s", src ? src : "");
}

/* ---- status -------------------------------------------------------------- */

static void fill_outbox(struct gw *gw, const char *client_id, struct api_outbox *out);

static void live_counts(struct gw *gw, struct metrics *m, uint64_t *links)
{
  memset(m, 0, sizeof *m);
  leaves_count(gw->lan, m, links, NULL);
  relay_count(gw->relay, m);
  upkeep_count(&gw->upkeep, m);
}

void api_msg_totals(struct gw *gw, uint64_t *msgs_in, uint64_t *msgs_out)
{
  *msgs_in = gw->m.publish_in_qos_m1 + gw->m.publish_in_qos0 + gw->m.publish_in_qos1 +
             gw->m.publish_in_qos2;
  *msgs_out = gw->m.publish_out_qos0 + gw->m.publish_out_qos1;
}

int api_status(struct gw *gw, struct api_status *out)
{
  struct metrics live;
  uint64_t links;
  static const char *const backends[] = {"none", "local-ca", "aws"};

  memset(out, 0, sizeof *out);
  copy(out->version, sizeof out->version, FLEETGW_VERSION);
  out->uptime_s = (uv_now(gw->loop) - gw->started_ms) / 1000u;
  out->gateway_id = gw->cfg->gateway_id;
  copy(out->backend, sizeof out->backend, backends[gw->cfg->provisioning.backend % 3]);
  if (store_device_counts(gw->store, out->devices_by_state) != STORE_OK)
    return API_ERROR;
  live_counts(gw, &live, &links);
  out->leaves_active = live.leaves_active;
  out->leaves_asleep = live.leaves_asleep;
  out->leaves_connecting = live.leaves_connecting;
  out->upstreams_up = live.upstreams_up;
  copy(out->uplink, sizeof out->uplink,
       links == 0 ? "idle"
                  : (live.upstreams_up == links ? "up"
                                                : (live.upstreams_up == 0 ? "down" : "degraded")));
  out->provisioning_in_flight = provision_in_flight(gw->prov);
  out->db_bytes = store_size_bytes(gw->store);
  api_msg_totals(gw, &out->msgs_in, &out->msgs_out);
  fill_outbox(gw, NULL, &out->outbox);
  out->expiry_warn_days = gw->cfg->provisioning.expiry_warn_days;
  out->certs_expiring = gw->upkeep.certs.expiring;
  out->certs_expired = gw->upkeep.certs.expired;
  out->certs_soonest_not_after = gw->upkeep.certs.soonest;
  out->ca_not_after = gw->upkeep.certs.ca_not_after;
  return API_OK;
}

/* ---- devices ------------------------------------------------------------- */

static int count_sub(void *ud, const char *filter, int qos)
{
  (void)filter;
  (void)qos;
  ++*(uint32_t *)ud;
  return 0;
}

static void fill_outbox(struct gw *gw, const char *client_id, struct api_outbox *out)
{
  struct outbox *ob = relay_outbox(gw->relay);
  struct outbox_info i;
  memset(out, 0, sizeof *out);
  out->oldest_age_s = -1;
  if (!ob)
    return;
  out->enabled = true;
  outbox_info(ob, client_id, &i);
  out->messages = i.messages;
  out->bytes = i.bytes;
  out->in_flight = i.in_flight;
  out->oldest_age_s = i.oldest_age_s;
  out->stored = i.stored;
  out->delivered = i.delivered;
  out->refused_full = i.refused_full;
  out->dropped = i.dropped;
  out->expired = i.expired;
  out->cloud_refused = i.cloud_refused;
  out->discarded = i.discarded;
  out->leaves = i.lanes;
}

static void fill_device(struct gw *gw, const struct store_device *d, struct api_device *out)
{
  struct session *s = leaves_find(gw->lan, d->client_id);
  struct store_cert c;

  memset(out, 0, sizeof *out);
  copy(out->client_id, sizeof out->client_id, d->client_id);
  copy(out->thing_name, sizeof out->thing_name, d->thing_name);
  copy(out->state, sizeof out->state, store_dev_state_name(d->state));
  copy(out->bound_addr, sizeof out->bound_addr, d->bound_addr);
  out->first_seen = d->first_seen;
  out->last_seen = d->last_seen;
  copy(out->last_error, sizeof out->last_error, d->last_error);
  out->attempts = d->attempts;
  copy(out->lan_security, sizeof out->lan_security, d->lan_security);
  out->psk = d->has_psk;
  copy(out->session, sizeof out->session, "none");
  if (s) {
    struct sess_info si;
    uint32_t n = 0;
    sess_get_info(s, &si);
    copy(out->session, sizeof out->session, si.state);
    if (si.has_address)
      copy(out->address, sizeof out->address, si.address);
    out->msgs_in = si.msgs_in;
    out->msgs_out = si.msgs_out;
    out->msgs_refused = si.msgs_refused;
    out->queued = si.queued;
    sess_each_sub(s, count_sub, &n);
    out->subscriptions = n;
    out->rate_in = si.rate_in;
    out->rate_out = si.rate_out;
    if (si.has_last_pub)
      out->last_message_at = now_s() - (int64_t)(si.last_pub_age_ms / 1000u);
    out->has_keepalive = true;
    out->keepalive_s = si.keepalive_s;
    out->reconnects = si.reconnects;
  }
  fill_outbox(gw, d->client_id, &out->outbox);
  memset(&c, 0, sizeof c);
  if (store_cert_get_active(gw->store, d->client_id, false, &c) == STORE_OK) {
    copy(out->cert_id, sizeof out->cert_id, c.cert_id);
    copy(out->cert_fingerprint, sizeof out->cert_fingerprint, c.fingerprint);
    out->cert_not_after = c.not_after;
    copy(out->cert_status, sizeof out->cert_status, store_cert_status_name(c.status));
    if (c.not_after > 0) {
      int64_t left = c.not_after - now_s();
      out->cert_expiry_known = true;
      out->cert_expires_in_days = left >= 0 ? left / DAY_S : -((-left + DAY_S - 1) / DAY_S);
    }
  }
  store_cert_clear(&c);
}

struct list_ctx {
  struct gw *gw;
  api_device_cb cb;
  void *ud;
};

static int list_row(void *ud, const struct store_device *d)
{
  struct list_ctx *l = ud;
  struct api_device a;
  fill_device(l->gw, d, &a);
  return l->cb(l->ud, &a) != 0 ? 1 : 0;
}

int api_devices_list(struct gw *gw, const char *state, const char *q, const char *lan_security,
                     const char *sort, int64_t expires_within_days, int64_t offset,
                     int64_t limit, api_device_cb cb, void *ud, int64_t *total)
{
  /* In the order of enum store_device_sort. */
  static const char *const keys[] = {"client_id", "thing_name", "state", "last_seen",
                                     "first_seen", "cert_not_after"};
  struct list_ctx l = {gw, cb, ud};
  struct store_device_filter where = {
      .state = -1, .text = q && *q ? q : NULL, .lan_security = lan_security};
  int by = STORE_SORT_CLIENT_ID, rc;
  bool desc = false;

  if (state && *state && (where.state = store_dev_state_parse(state)) < 0)
    return API_INVAL;
  if (offset < 0 || limit < 1 || expires_within_days > 36500)
    return API_INVAL;
  if (expires_within_days >= 0)
    where.cert_expires_before = now_s() + expires_within_days * DAY_S;
  if (sort && *sort) {
    if (*sort == '-') {
      desc = true;
      sort++;
    }
    by = -1;
    for (int i = 0; i < (int)(sizeof keys / sizeof keys[0]); i++)
      if (strcmp(sort, keys[i]) == 0)
        by = i;
    if (by < 0)
      return API_INVAL;
  }
  rc = store_device_list_where(gw->store, &where, by, desc, offset, limit, list_row, &l, total);
  return rc == STORE_OK ? API_OK : rc == STORE_INVAL ? API_INVAL : API_ERROR;
}

static int get_device(struct gw *gw, const char *client_id, struct store_device *d)
{
  int rc = store_device_get(gw->store, client_id, d);
  if (rc == STORE_NOTFOUND)
    return API_NOTFOUND;
  return rc == STORE_OK ? API_OK : API_ERROR;
}

int api_device_get(struct gw *gw, const char *client_id, struct api_device *out)
{
  struct store_device d;
  int rc = get_device(gw, client_id, &d);
  if (rc == API_OK)
    fill_device(gw, &d, out);
  return rc;
}

int api_device_subscriptions(struct gw *gw, const char *client_id, api_sub_cb cb, void *ud)
{
  struct session *s = leaves_find(gw->lan, client_id);
  struct store_device d;
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return rc;
  if (s)
    sess_each_sub(s, cb, ud);
  return API_OK;
}

int api_device_certificate(struct gw *gw, const char *client_id, char **pem)
{
  struct store_cert c;
  int rc;
  memset(&c, 0, sizeof c);
  *pem = NULL;
  rc = store_cert_get_active(gw->store, client_id, true, &c);
  if (rc == STORE_NOTFOUND)
    return API_NOTFOUND;
  if (rc != STORE_OK)
    return API_ERROR;
  *pem = c.pem;
  c.pem = NULL;
  store_cert_clear(&c);
  return API_OK;
}

/* ---- commands ------------------------------------------------------------ */

__attribute__((format(printf, 4, 5))) static int refuse(int code, char *reason, size_t cap,
                                                       const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  if (reason && cap)
    vsnprintf(reason, cap, fmt, ap);
  va_end(ap);
  return code;
}

/* Records an operator action, tells subscribers, and logs it. */
static void acted(struct gw *gw, const char *client_id, const char *actor, const char *action,
                  const char *detail, const char *new_state)
{
  store_audit(gw->store, now_s(), actor ? actor : "operator", action, client_id, detail);
  LOGI(MOD, "%s: %s by %s%s%s", client_id, action, actor ? actor : "operator",
       detail ? ": " : "", detail ? detail : "");
  if (new_state)
    gw_emit(gw, "device.state", client_id, "state", new_state, NULL, NULL);
}

static void kick(struct gw *gw, const char *client_id)
{
  struct session *s = leaves_find(gw->lan, client_id);
  if (s)
    sess_kick(s);
}

int api_device_approve(struct gw *gw, const char *client_id, const char *actor, char *reason,
                       size_t cap)
{
  struct store_device d;
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  if (d.state != DEV_PENDING)
    return refuse(API_CONFLICT, reason, cap, "device is %s, not pending",
                  store_dev_state_name(d.state));
  if (store_device_set_state(gw->store, client_id, DEV_APPROVED) != STORE_OK)
    return refuse(API_ERROR, reason, cap, "registry error");
  acted(gw, client_id, actor, "operator.approve", NULL, "approved");
  return API_OK;
}

int api_device_block(struct gw *gw, const char *client_id, const char *actor, char *reason,
                     size_t cap)
{
  struct store_device d;
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  if (d.state == DEV_REVOKED)
    return refuse(API_CONFLICT, reason, cap, "device is decommissioned");
  if (d.state != DEV_BLOCKED &&
      store_device_set_state(gw->store, client_id, DEV_BLOCKED) != STORE_OK)
    return refuse(API_ERROR, reason, cap, "registry error");
  acted(gw, client_id, actor, "operator.block", NULL, "blocked");
  kick(gw, client_id);
  return API_OK;
}

int api_device_unblock(struct gw *gw, const char *client_id, const char *actor, char *reason,
                       size_t cap)
{
  struct store_device d;
  struct store_cert c;
  int rc = get_device(gw, client_id, &d), st;
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  if (d.state != DEV_BLOCKED)
    return refuse(API_CONFLICT, reason, cap, "device is %s, not blocked",
                  store_dev_state_name(d.state));
  memset(&c, 0, sizeof c);
  st = store_cert_get_active(gw->store, client_id, false, &c) == STORE_OK ? DEV_ACTIVE
                                                                          : DEV_APPROVED;
  store_cert_clear(&c);
  if (store_device_set_state(gw->store, client_id, st) != STORE_OK)
    return refuse(API_ERROR, reason, cap, "registry error");
  acted(gw, client_id, actor, "operator.unblock", NULL, store_dev_state_name(st));
  return API_OK;
}

int api_device_reprovision(struct gw *gw, const char *client_id, const char *actor,
                           char *reason, size_t cap)
{
  struct store_device d;
  struct store_cert c;
  char detail[256] = "";
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  if (d.state != DEV_ACTIVE && d.state != DEV_FAILED && d.state != DEV_APPROVED)
    return refuse(API_CONFLICT, reason, cap, "device is %s", store_dev_state_name(d.state));
  memset(&c, 0, sizeof c);
  if (store_begin(gw->store) != STORE_OK)
    return refuse(API_ERROR, reason, cap, "registry error");
  if (store_cert_get_active(gw->store, client_id, false, &c) == STORE_OK) {
    if (store_cert_set_status(gw->store, c.cert_id, CERT_SUPERSEDED, "reprovisioned by an operator",
                              now_s()) != STORE_OK)
      goto fail;
    snprintf(detail, sizeof detail, "certificate %s superseded", c.cert_id);
  }
  if (store_device_set_state(gw->store, client_id, DEV_APPROVED) != STORE_OK ||
      store_device_clear_error(gw->store, client_id) != STORE_OK)
    goto fail;
  if (store_commit(gw->store) != STORE_OK)
    goto fail;
  store_cert_clear(&c);
  acted(gw, client_id, actor, "operator.reprovision", detail[0] ? detail : NULL, "approved");
  kick(gw, client_id);
  return API_OK;

fail:
  store_rollback(gw->store);
  store_cert_clear(&c);
  return refuse(API_ERROR, reason, cap, "registry error");
}

int api_device_rotate(struct gw *gw, const char *client_id, const char *actor, char *reason,
                      size_t cap)
{
  struct store_device d;
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  /* provision_rotate audits rotate.started with the actor. */
  switch (provision_rotate(gw->prov, client_id, actor ? actor : "operator", reason, cap)) {
  case PROVISION_ROTATE_OK:
    return API_OK; /* logged and audited by the provisioner */
  case PROVISION_ROTATE_NOTFOUND:
    return API_CONFLICT; /* the device exists: it is its certificate that does not */
  case PROVISION_ROTATE_CONFLICT:
    return API_CONFLICT;
  default:
    return API_ERROR;
  }
}

int api_device_outbox_discard(struct gw *gw, const char *client_id, const char *actor,
                              uint64_t *n, char *reason, size_t cap)
{
  struct store_device d;
  struct outbox *ob = relay_outbox(gw->relay);
  char detail[64];
  int rc = get_device(gw, client_id, &d);
  *n = 0;
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  if (!ob)
    return refuse(API_CONFLICT, reason, cap, "the outbox is off (outbox.enabled)");
  rc = outbox_discard(ob, client_id, n) == 0 ? API_OK : API_ERROR;
  /* Audited with what went, even when a registry error stopped it halfway. */
  snprintf(detail, sizeof detail, "%llu messages%s", (unsigned long long)*n,
           rc == API_OK ? "" : " (then a registry error)");
  if (rc == API_OK || *n > 0)
    acted(gw, client_id, actor, "operator.outbox_discard", detail, NULL);
  return rc == API_OK ? API_OK : refuse(API_ERROR, reason, cap, "registry error");
}

int api_device_release(struct gw *gw, const char *client_id, const char *actor, char *reason,
                       size_t cap)
{
  struct store_device d;
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  /* Release forgets what ties a ClientId to its old box: the address it
   * was bound to and the "has authenticated over DTLS" mark, so a leaf that
   * was replaced by a plain-UDP one can come back (within admission.plain_udp).
   * A PSK it holds still requires DTLS: revoking the key is the other half. */
  if (store_begin(gw->store) != STORE_OK)
    return refuse(API_ERROR, reason, cap, "registry error");
  if (store_device_bind(gw->store, client_id, NULL) != STORE_OK ||
      store_device_set_lan_security(gw->store, client_id, NULL) != STORE_OK ||
      store_commit(gw->store) != STORE_OK) {
    store_rollback(gw->store);
    return refuse(API_ERROR, reason, cap, "registry error");
  }
  acted(gw, client_id, actor, "operator.release", d.bound_addr[0] ? d.bound_addr : NULL, NULL);
  return API_OK;
}

int api_device_decommission(struct gw *gw, const char *client_id, const char *actor,
                            char *reason, size_t cap)
{
  struct store_device d;
  struct store_cert c;
  int rc = get_device(gw, client_id, &d);
  if (rc != API_OK)
    return refuse(rc, reason, cap, "no such device");
  memset(&c, 0, sizeof c);
  if (store_begin(gw->store) != STORE_OK)
    return refuse(API_ERROR, reason, cap, "registry error");
  if (store_cert_get_active(gw->store, client_id, false, &c) == STORE_OK &&
      store_cert_set_status(gw->store, c.cert_id, CERT_INACTIVE, "decommissioned", now_s()) !=
          STORE_OK)
    goto fail;
  if (store_device_set_state(gw->store, client_id, DEV_REVOKED) != STORE_OK)
    goto fail;
  if (store_commit(gw->store) != STORE_OK)
    goto fail;
  acted(gw, client_id, actor, "operator.decommission", c.cert_id[0] ? c.cert_id : NULL, "revoked");
  store_cert_clear(&c);
  kick(gw, client_id);
  return API_OK;

fail:
  store_rollback(gw->store);
  store_cert_clear(&c);
  return refuse(API_ERROR, reason, cap, "registry error");
}

/* ---- allowlist, certificates, audit ------------------------------------- */

int api_allow_list(struct gw *gw, api_allow_cb cb, void *ud)
{
  return store_allow_list(gw->store, cb, ud) == STORE_OK ? API_OK : API_ERROR;
}

int api_allow_add(struct gw *gw, const char *entry, const char *actor)
{
  int rc;
  if (!entry || !*entry || strlen(entry) > 255)
    return API_INVAL;
  rc = store_allow_add(gw->store, entry, now_s());
  if (rc == STORE_CONFLICT)
    return API_CONFLICT;
  if (rc != STORE_OK)
    return rc == STORE_INVAL ? API_INVAL : API_ERROR;
  store_audit(gw->store, now_s(), actor ? actor : "operator", "operator.allow", NULL, entry);
  return API_OK;
}

int api_allow_remove(struct gw *gw, const char *entry, const char *actor)
{
  int rc = store_allow_remove(gw->store, entry);
  if (rc == STORE_NOTFOUND)
    return API_NOTFOUND;
  if (rc != STORE_OK)
    return API_ERROR;
  store_audit(gw->store, now_s(), actor ? actor : "operator", "operator.disallow", NULL, entry);
  return API_OK;
}

struct cert_ctx {
  api_cert_cb cb;
  void *ud;
};

static int cert_row(void *ud, const struct store_cert *c)
{
  struct cert_ctx *x = ud;
  struct api_cert a;
  memset(&a, 0, sizeof a);
  copy(a.cert_id, sizeof a.cert_id, c->cert_id);
  copy(a.client_id, sizeof a.client_id, c->client_id);
  copy(a.status, sizeof a.status, store_cert_status_name(c->status));
  a.not_after = c->not_after;
  copy(a.fingerprint, sizeof a.fingerprint, c->fingerprint);
  copy(a.reason, sizeof a.reason, c->reason);
  a.created_at = c->created_at;
  return x->cb(x->ud, &a) != 0 ? 1 : 0;
}

int api_certs_list(struct gw *gw, const char *status, int64_t offset, int64_t limit,
                   api_cert_cb cb, void *ud, int64_t *total)
{
  struct cert_ctx x = {cb, ud};
  int st = -1;
  if (status && *status) {
    for (int i = CERT_PENDING; i <= CERT_INACTIVE; i++)
      if (strcmp(status, store_cert_status_name(i)) == 0)
        st = i;
    if (st < 0)
      return API_INVAL;
  }
  if (offset < 0 || limit < 1)
    return API_INVAL;
  return store_cert_list(gw->store, st, offset, limit, cert_row, &x, total) == STORE_OK
             ? API_OK
             : API_ERROR;
}

struct audit_ctx {
  api_audit_cb cb;
  void *ud;
};

static int audit_row(void *ud, const struct store_audit *r)
{
  struct audit_ctx *x = ud;
  struct api_audit a;
  memset(&a, 0, sizeof a);
  a.id = r->id;
  a.at = r->at;
  copy(a.actor, sizeof a.actor, r->actor);
  copy(a.action, sizeof a.action, r->action);
  copy(a.client_id, sizeof a.client_id, r->client_id);
  copy(a.detail, sizeof a.detail, r->detail);
  return x->cb(x->ud, &a) != 0 ? 1 : 0;
}

int api_audit_list(struct gw *gw, const char *client_id, int64_t offset, int64_t limit,
                   api_audit_cb cb, void *ud, int64_t *total)
{
  struct audit_ctx x = {cb, ud};
  if (offset < 0 || limit < 1)
    return API_INVAL;
  return store_audit_list(gw->store, client_id && *client_id ? client_id : NULL, offset, limit,
                          audit_row, &x, total) == STORE_OK
             ? API_OK
             : API_ERROR;
}

/* ---- metrics ------------------------------------------------------------- */

struct buf {
  char *p;
  size_t n, cap;
  bool oom;
};

__attribute__((format(printf, 2, 3))) static void put(struct buf *b, const char *fmt, ...)
{
  va_list ap;
  int k;
  if (b->oom)
    return;
  for (;;) {
    va_start(ap, fmt);
    k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    if (k < 0) {
      b->oom = true;
      return;
    }
    if ((size_t)k < b->cap - b->n) {
      b->n += (size_t)k;
      return;
    }
    {
      size_t ncap = b->cap * 2 + (size_t)k;
      char *np = realloc(b->p, ncap);
      if (!np) {
        b->oom = true;
        return;
      }
      b->p = np;
      b->cap = ncap;
    }
  }
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
  put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int api_metrics_prometheus(struct gw *gw, char **text)
{
  struct buf b = {malloc(8192), 0, 8192, false};
  struct metrics live;
  const struct metrics *m = &gw->m;
  uint64_t links;
  int64_t dev[7];
  static const char *const codes[] = {"", "1xx", "2xx", "3xx", "4xx", "5xx"};

  *text = NULL;
  if (!b.p)
    return API_ERROR;
  gw_sync_counters(gw);
  live_counts(gw, &live, &links);

  family(&b, "fleetgw_leaf_sessions", "gauge", "Live leaf sessions by state.");
  put(&b, "fleetgw_leaf_sessions{state=\"active\"} %llu\n", (unsigned long long)live.leaves_active);
  put(&b, "fleetgw_leaf_sessions{state=\"asleep\"} %llu\n", (unsigned long long)live.leaves_asleep);
  put(&b, "fleetgw_leaf_sessions{state=\"connecting\"} %llu\n",
      (unsigned long long)live.leaves_connecting);
  family(&b, "fleetgw_devices", "gauge", "Devices in the registry by state.");
  if (store_device_counts(gw->store, dev) == STORE_OK)
    for (int i = 0; i < 7; i++)
      put(&b, "fleetgw_devices{state=\"%s\"} %lld\n", store_dev_state_name(i), (long long)dev[i]);
  family(&b, "fleetgw_messages_in_total", "counter", "PUBLISH messages from leaves, by QoS.");
  put(&b, "fleetgw_messages_in_total{qos=\"-1\"} %llu\n", (unsigned long long)m->publish_in_qos_m1);
  put(&b, "fleetgw_messages_in_total{qos=\"0\"} %llu\n", (unsigned long long)m->publish_in_qos0);
  put(&b, "fleetgw_messages_in_total{qos=\"1\"} %llu\n", (unsigned long long)m->publish_in_qos1);
  put(&b, "fleetgw_messages_in_total{qos=\"2\"} %llu\n", (unsigned long long)m->publish_in_qos2);
  family(&b, "fleetgw_messages_out_total", "counter", "PUBLISH messages to leaves, by QoS.");
  put(&b, "fleetgw_messages_out_total{qos=\"0\"} %llu\n", (unsigned long long)m->publish_out_qos0);
  put(&b, "fleetgw_messages_out_total{qos=\"1\"} %llu\n", (unsigned long long)m->publish_out_qos1);
  family(&b, "fleetgw_drops_total", "counter", "Messages dropped, by cause.");
  put(&b, "fleetgw_drops_total{cause=\"malformed\"} %llu\n",
      (unsigned long long)m->datagrams_malformed);
  put(&b, "fleetgw_drops_total{cause=\"queue_full\"} %llu\n", (unsigned long long)m->queue_dropped);
  put(&b, "fleetgw_drops_total{cause=\"session_ended\"} %llu\n",
      (unsigned long long)m->queue_discarded);
  put(&b, "fleetgw_drops_total{cause=\"qos_m1\"} %llu\n", (unsigned long long)m->qos_m1_dropped);
  put(&b, "fleetgw_drops_total{cause=\"uplink_congestion\"} %llu\n",
      (unsigned long long)m->uplink_congestion);
  family(&b, "fleetgw_provisioning_runs_total", "counter", "Provisioning runs by outcome.");
  put(&b, "fleetgw_provisioning_runs_total{outcome=\"started\"} %llu\n",
      (unsigned long long)m->provision_started);
  put(&b, "fleetgw_provisioning_runs_total{outcome=\"done\"} %llu\n",
      (unsigned long long)m->provision_done);
  put(&b, "fleetgw_provisioning_runs_total{outcome=\"failed\"} %llu\n",
      (unsigned long long)m->provision_failed);
  family(&b, "fleetgw_uplink_reconnects_total", "counter",
         "Upstream sessions that came up again after a loss (a first connect is not one).");
  put(&b, "fleetgw_uplink_reconnects_total %llu\n", (unsigned long long)m->upstream_reconnects);
  family(&b, "fleetgw_downlink_queued", "gauge",
         "Messages from the broker buffered in the gateway for leaves (asleep or busy); "
         "store and forward towards the cloud is fleetgw_outbox_messages.");
  {
    uint64_t q = 0;
    struct metrics scratch;
    leaves_count(gw->lan, &scratch, NULL, &q);
    put(&b, "fleetgw_downlink_queued %llu\n", (unsigned long long)q);
  }
  family(&b, "fleetgw_http_requests_total", "counter", "HTTP requests by status class.");
  for (int i = 1; i <= 5; i++)
    put(&b, "fleetgw_http_requests_total{code=\"%s\"} %llu\n", codes[i],
        (unsigned long long)gw->http_counts[i]);
  /* Every internal counter and gauge as well, under its own name. */
#define PROM_COUNTER(name, help)                                                   \
  family(&b, "fleetgw_" #name "_total", "counter", help ".");                      \
  put(&b, "fleetgw_" #name "_total %llu\n", (unsigned long long)m->name);
#define PROM_GAUGE(name, help)                                                     \
  family(&b, "fleetgw_" #name, "gauge", help ".");                                 \
  put(&b, "fleetgw_" #name " %llu\n", (unsigned long long)live.name);
  METRICS_MAP(PROM_COUNTER, PROM_GAUGE)
#undef PROM_COUNTER
#undef PROM_GAUGE
  if (b.oom) {
    free(b.p);
    return API_ERROR;
  }
  *text = b.p;
  return API_OK;
}

void api_count_http(struct gw *gw, int status)
{
  int c = status / 100;
  if (c >= 1 && c <= 5)
    gw->http_counts[c]++;
}

/* ---- events -------------------------------------------------------------- */

struct api_sub *api_subscribe(struct gw *gw, api_event_cb cb, void *ud)
{
  struct api_sub *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->cb = cb;
  s->ud = ud;
  s->next = gw->subs;
  gw->subs = s;
  return s;
}

void api_unsubscribe(struct gw *gw, struct api_sub *sub)
{
  if (!sub)
    return;
  if (gw->emitting) {
    sub->dead = true; /* freed by gw_emit() once it is done */
    return;
  }
  for (struct api_sub **pp = &gw->subs; *pp; pp = &(*pp)->next) {
    if (*pp == sub) {
      *pp = sub->next;
      free(sub);
      return;
    }
  }
}
