/*
 * upkeep.c - the registry's upkeep (upkeep.h): expiry of pending
 * identities, the audit retention, the size guard.
 */
#include "upkeep.h"

#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define MOD "registry"
#define DAY_S 86400

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

void upkeep_run(struct upkeep *u, int64_t now)
{
  int64_t counts[7];
  prune_pending(u, now);
  prune_audit(u, now);
  if (store_device_counts(u->store, counts) == STORE_OK)
    u->room.pending = (uint64_t)counts[DEV_PENDING];
  check_room(u);
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
