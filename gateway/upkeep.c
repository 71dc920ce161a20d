/*
 * upkeep.c - the registry's upkeep (upkeep.h): expiry of pending
 * identities, the audit retention, the size guard, certificate expiry.
 */
#include "upkeep.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define MOD "registry"
#define DAY_S 86400
#define WARN_LINES 10 /* certificates named per pass; the rest in one line */

void upkeep_init(struct upkeep *u, uv_loop_t *loop, const struct gw_config *cfg,
                 struct store *store, struct metrics *m)
{
  memset(u, 0, sizeof *u);
  u->loop = loop;
  u->cfg = cfg;
  u->store = store;
  u->m = m;
}

static void prune_pending(struct upkeep *u, int64_t now)
{
  int64_t n = 0, ttl = (int64_t)u->cfg->admission.pending_ttl_s;
  if (ttl == 0)
    return;
  if (store_device_prune(u->store, DEV_PENDING, now - ttl, UPKEEP_BATCH, &n) != STORE_OK) {
    LOGD(MOD, "pending identities not pruned: %s", store_errmsg(u->store));
    return;
  }
  if (n > 0) {
    u->m->pending_pruned += (uint64_t)n;
    LOGI(MOD, "%lld pending identities not seen for %llds deleted", (long long)n,
         (long long)ttl);
  }
}

static void prune_audit(struct upkeep *u, int64_t now)
{
  const struct gw_config *cfg = u->cfg;
  int64_t n = 0, days = (int64_t)cfg->registry.audit_max_days;
  int64_t before = days ? now - days * DAY_S : 0;
  /* The repeats whose interval ended get their one row (store.h). */
  if (store_audit_flush(u->store, now, false) != STORE_OK)
    LOGD(MOD, "audit repeats not written: %s", store_errmsg(u->store));
  if (store_audit_prune(u->store, (int64_t)cfg->registry.audit_max_rows, before, UPKEEP_BATCH,
                        &n) != STORE_OK) {
    LOGD(MOD, "audit not pruned: %s", store_errmsg(u->store));
    return;
  }
  u->m->audit_pruned += (uint64_t)n;
}

/* The size guard, with a log line when it changes. */
static void check_room(struct upkeep *u)
{
  const struct gw_config *cfg = u->cfg;
  int64_t size = store_size_bytes(u->store), free_b = store_free_bytes(u->store);
  bool full = false;
  char why[160] = "";

  if (cfg->registry.max_bytes && size >= (int64_t)cfg->registry.max_bytes) {
    full = true;
    snprintf(why, sizeof why, "the registry holds %lld bytes (registry.max_bytes %llu)",
             (long long)size, (unsigned long long)cfg->registry.max_bytes);
  } else if (cfg->registry.min_free_bytes && free_b >= 0 &&
             free_b < (int64_t)cfg->registry.min_free_bytes) {
    full = true;
    snprintf(why, sizeof why, "%lld bytes free on its disk (registry.min_free_bytes %llu)",
             (long long)free_b, (unsigned long long)cfg->registry.min_free_bytes);
  }
  if (full && !u->room.registry_full)
    LOGW(MOD, "new identities refused: %s; known leaves go on", why);
  else if (!full && u->room.registry_full)
    LOGI(MOD, "new identities admitted again: the registry has room");
  u->room.registry_full = full;
}

/* "2026-05-01T12:00:00Z" */
static void utc(int64_t t, char *buf, size_t cap)
{
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, cap, "%lld", (long long)t);
}

/* Days from now to t, rounded down (negative once t has passed). */
static long long days_until(int64_t t, int64_t now)
{
  int64_t d = t - now;
  return (long long)(d >= 0 ? d / DAY_S : -((-d + DAY_S - 1) / DAY_S));
}

struct warn_pass {
  int64_t now;
  bool expired;          /* the expiry warning, not the window's */
  int64_t n, last_not_after;
};

static int warn_cert(void *ud, const struct store_cert *c)
{
  struct warn_pass *w = ud;
  char at[32];
  if (c->not_after > w->last_not_after)
    w->last_not_after = c->not_after;
  if (!w->expired && c->not_after <= w->now)
    return 0; /* already expired: the expiry warning names it */
  if (++w->n <= WARN_LINES) {
    utc(c->not_after, at, sizeof at);
    if (w->expired)
      LOGW(MOD, "certificate %s of %s expired at %s", c->cert_id, c->client_id, at);
    else
      LOGW(MOD, "certificate %s of %s expires at %s (in %lld days)", c->cert_id, c->client_id,
           at, days_until(c->not_after, w->now));
  }
  return 0;
}

/* Warns about the active certificates with a not-after before `before`
 * past the marks, and moves the not-after mark over them. */
static void warn_certs(struct upkeep *u, int64_t now, int64_t before, bool expired,
                       int64_t *mark)
{
  struct warn_pass w = {.now = now, .expired = expired, .last_not_after = *mark};
  unsigned days = u->cfg->provisioning.expiry_warn_days;
  if (store_cert_expiring(u->store, before, *mark, u->certs.seen_id, warn_cert, &w) !=
      STORE_OK) {
    LOGD(MOD, "certificate expiry not checked: %s", store_errmsg(u->store));
    return;
  }
  if (w.n > WARN_LINES) {
    if (expired)
      LOGW(MOD, "and %lld more certificates expired (GET /api/v1/devices?expires_within_days=0)",
           (long long)(w.n - WARN_LINES));
    else
      LOGW(MOD, "and %lld more certificates expire within %u days "
                "(GET /api/v1/devices?expires_within_days=%u)",
           (long long)(w.n - WARN_LINES), days, days);
  }
  *mark = w.last_not_after;
}

static void check_ca(struct upkeep *u, int64_t now)
{
  struct upkeep_certs *c = &u->certs;
  int64_t window = 2 * (int64_t)u->cfg->provisioning.expiry_warn_days * DAY_S;
  int level;
  char at[32];

  if (!c->ca_not_after)
    return;
  level = c->ca_not_after <= now ? 2 : c->ca_not_after < now + window ? 1 : 0;
  if (level > c->ca_level) {
    utc(c->ca_not_after, at, sizeof at);
    if (level == 2)
      LOGW(MOD, "the local CA's certificate %s expired at %s: the certificates it signed no "
                "longer verify: roll the CA",
           u->cfg->provisioning.local_ca.cert_file, at);
    else
      LOGW(MOD, "the local CA's certificate %s expires at %s (in %lld days): roll the CA "
                "before then",
           u->cfg->provisioning.local_ca.cert_file, at, days_until(c->ca_not_after, now));
  }
  c->ca_level = level;
}

void upkeep_check_certs(struct upkeep *u, int64_t now)
{
  struct upkeep_certs *c = &u->certs;
  int64_t before = now + (int64_t)u->cfg->provisioning.expiry_warn_days * DAY_S;
  struct store_cert_expiry e;

  check_ca(u, now);
  if (store_cert_expiry(u->store, now, before, &e) != STORE_OK) {
    LOGD(MOD, "certificate expiry not read: %s", store_errmsg(u->store));
    return;
  }
  c->soonest = e.soonest;
  c->expiring = (uint64_t)e.expiring;
  c->expired = (uint64_t)e.expired;
  if (e.expiring > 0)
    warn_certs(u, now, before, false, &c->warned_not_after);
  if (e.expired > 0)
    warn_certs(u, now, now, true, &c->expired_not_after);
  c->seen_id = e.max_id;
}

void upkeep_count(const struct upkeep *u, struct metrics *m)
{
  struct store_ckpt_stats ck;
  store_ckpt_stats(u->store, &ck);
  m->registry_checkpoints = ck.runs;
  m->registry_checkpoint_fallbacks = ck.fallbacks;
  m->registry_checkpoint_max_us = (uint64_t)ck.max_us;
  m->registry_wal_pages_max = (uint64_t)ck.wal_pages_max;
  m->certs_soonest_not_after_s = u->certs.soonest > 0 ? (uint64_t)u->certs.soonest : 0;
  m->certs_expiring = u->certs.expiring;
  m->certs_expired = u->certs.expired;
  m->ca_not_after_s = u->certs.ca_not_after > 0 ? (uint64_t)u->certs.ca_not_after : 0;
}

void upkeep_run(struct upkeep *u, int64_t now)
{
  int64_t counts[7];
  prune_pending(u, now);
  prune_audit(u, now);
  if (store_device_counts(u->store, counts) == STORE_OK)
    u->room.pending = (uint64_t)counts[DEV_PENDING];
  check_room(u);
  upkeep_check_certs(u, now);
}

static void on_tick(uv_timer_t *t)
{
  upkeep_run(t->data, (int64_t)time(NULL));
}

int upkeep_start(struct upkeep *u)
{
  int rc = uv_timer_init(u->loop, &u->timer);
  if (rc != 0)
    return rc;
  u->timer.data = u;
  u->started = 1;
  upkeep_run(u, (int64_t)time(NULL));
  return uv_timer_start(&u->timer, on_tick, UPKEEP_INTERVAL_MS, UPKEEP_INTERVAL_MS);
}

static void on_closed(uv_handle_t *h)
{
  struct upkeep *u = h->data;
  if (u->done)
    u->done(u->done_ud);
}

void upkeep_stop(struct upkeep *u, void (*done)(void *), void *ud)
{
  if (!u->started) {
    if (done)
      done(ud);
    return;
  }
  u->started = 0;
  u->done = done;
  u->done_ud = ud;
  uv_timer_stop(&u->timer);
  uv_close((uv_handle_t *)&u->timer, on_closed);
}
