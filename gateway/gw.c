/*
 * gw.c - the gateway process: it composes the rooms (the registry, TLS, the
 * provisioner, the connect pacer, the relay and the LAN side), starts them
 * in order, stops them gracefully and counts the asynchronous closes until
 * everything is gone (common/drain.h).  The API for web/ is gw_api.c.
 */
#include "gw.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admission.h"
#include "gw_int.h"
#include "leaves.h"
#include "log.h"
#include "pacer.h"
#include "provision.h"
#include "relay.h"
#include "store.h"
#include "tls.h"

#define MOD "gw"
/* The registry's WAL: a checkpoint from 1000 pages (SQLite's own default),
 * and on the loop itself from 10,000 (40 MB at 4 KiB pages), should the
 * checkpoint thread fall that far behind (docs/outbox.md §9). */
#define GW_WAL_CKPT_PAGES 1000
#define GW_WAL_CAP_PAGES 10000

/* ---- events ------------------------------------------------------------- */

void gw_emit(void *ud, const char *type, const char *client_id, const char *key,
             const char *value, const char *key2, const char *value2)
{
  struct gw *gw = ud;
  struct timespec ts;
  cJSON *o;
  char *json;

  if (!gw->subs)
    return;
  o = cJSON_CreateObject();
  if (!o)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  cJSON_AddStringToObject(o, "type", type);
  cJSON_AddNumberToObject(o, "at", (double)ts.tv_sec * 1000.0 + (double)(ts.tv_nsec / 1000000));
  if (client_id)
    cJSON_AddStringToObject(o, "client_id", client_id);
  if (key)
    cJSON_AddStringToObject(o, key, value ? value : "");
  if (key2)
    cJSON_AddStringToObject(o, key2, value2 ? value2 : "");
  json = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!json)
    return;
  gw->emitting++;
  for (struct api_sub *sub = gw->subs; sub; sub = sub->next)
    if (!sub->dead)
      sub->cb(sub->ud, json, strlen(json));
  gw->emitting--;
  free(json);
  /* Subscribers that left during the calls are freed now. */
  if (gw->emitting == 0) {
    for (struct api_sub **pp = &gw->subs; *pp;) {
      if ((*pp)->dead) {
        struct api_sub *d = *pp;
        *pp = d->next;
        free(d);
      } else {
        pp = &(*pp)->next;
      }
    }
  }
}

/* ---- provisioning reports ----------------------------------------------- */

static void on_provision_step(void *ud, const char *client_id, const char *step)
{
  gw_emit(ud, "provision.step", client_id, "step", step, NULL, NULL);
}

/* A device's provisioning run ended: its waiting session (if any) goes on. */
static void on_provisioned(void *ud, const char *client_id, bool ok)
{
  struct gw *gw = ud;
  gw_emit(gw, "device.state", client_id, "state", ok ? "active" : "failed", NULL, NULL);
  leaves_on_provisioned(gw->lan, client_id, ok);
  if (ok) /* a new certificate: its expiry in the gauges now, not at the next pass */
    upkeep_check_certs(&gw->upkeep, (int64_t)time(NULL));
}

/* ---- lifecycle ---------------------------------------------------------- */

static int open_registry(struct gw *gw)
{
  const struct gw_config *cfg = gw->cfg;
  struct store_opts so = {.path = cfg->registry.path,
                          .key_file = cfg->registry.key_file,
                          .synchronous = cfg->registry.synchronous};
  int rc = store_open(&so, &gw->store);
  if (rc != STORE_OK) {
    LOGE(MOD, "cannot open the registry %s: %s (%s)", cfg->registry.path, store_strerror(rc),
         store_errmsg(gw->store));
    return -1;
  }
  /* From now on the registry is used on the loop: a lock held by another
   * process is waited for only briefly, then answered with congestion. */
  store_set_busy_timeout(gw->store, (int)cfg->registry.busy_timeout_ms);
  /* WAL checkpoints off the loop (docs/outbox.md §9); without the thread
   * SQLite checkpoints inside the loop's commits, as before. */
  if (store_ckpt_start(gw->store, GW_WAL_CKPT_PAGES, GW_WAL_CAP_PAGES) != STORE_OK)
    LOGW(MOD, "WAL checkpoints stay on the loop: %s", store_errmsg(gw->store));
  upkeep_init(&gw->upkeep, gw->loop, cfg, gw->store, &gw->m);
  if (admit_seed_allowlist(gw->store, cfg, (int64_t)time(NULL)) != STORE_OK)
    LOGW(MOD, "cannot add admission.allowlist entries: %s", store_errmsg(gw->store));
  return 0;
}

/* The rate limits of new identities, from admission.*. */
static struct newid_opts newid_opts(const struct gw_config *cfg)
{
  struct newid_opts o = {
      .per_port = {cfg->admission.new_ids_per_port, cfg->admission.new_ids_per_port_window_s},
      .per_ip = {cfg->admission.new_ids_per_ip, cfg->admission.new_ids_per_ip_window_s},
      .per_converter = {cfg->admission.new_ids_per_converter,
                        cfg->admission.new_ids_per_converter_window_s},
      .global = {cfg->admission.new_ids, cfg->admission.new_ids_window_s},
      .slots = cfg->admission.sources_tracked,
  };
  return o;
}

/* The relay and the LAN side, wired to each other. */
static int make_rooms(struct gw *gw)
{
  const struct gw_config *cfg = gw->cfg;
  struct relay_env re = {.loop = gw->loop, .cfg = cfg, .m = &gw->m, .tls = gw->tls,
                         .pacer = gw->pacer, .prov = gw->prov, .drain = &gw->drain,
                         .store = gw->store};
  struct leaves_env le = {.loop = gw->loop, .cfg = cfg, .m = &gw->m, .store = gw->store,
                          .drain = &gw->drain, .up = relay_ops(), .event = gw_emit,
                          .event_ud = gw, .newid = newid_opts(cfg),
                          .converters = (const char *const *)cfg->admission.converters,
                          .n_converters = cfg->admission.n_converters,
                          .room = &gw->upkeep.room};

  if (relay_new(&re, &gw->relay) != 0)
    return -1;
  le.up_ctx = gw->relay;
  return leaves_new(&le, &gw->lan) == 0 ? 0 : -1;
}

int gw_new(uv_loop_t *loop, const struct gw_config *cfg, struct gw **out)
{
  struct gw *gw = calloc(1, sizeof *gw);
  char err[512];

  if (!gw)
    return UV_ENOMEM;
  gw->loop = loop;
  gw->cfg = cfg;
  gw->started_ms = uv_now(loop);
  if (cfg->upstream.tls) {
    gw->tls = tls_ctx_new(cfg->upstream.ca_file, cfg->upstream.cert_file,
                          cfg->upstream.key_file, err, sizeof err);
    if (!gw->tls) {
      LOGE(MOD, "TLS setup failed: %s", err);
      goto fail_free;
    }
    if (tls_ctx_set_max_version(gw->tls, cfg->upstream.tls_max_version == 0 ? 12 : 13) !=
        TLS_OK) {
      LOGE(MOD, "TLS setup failed: cannot set the newest TLS version");
      goto fail_tls;
    }
  }
  if (open_registry(gw) != 0)
    goto fail_tls;
  if (provision_new(loop, cfg, gw->store, gw->tls, &gw->m, on_provisioned, gw, &gw->prov) != 0)
    goto fail_store;
  provision_observe(gw->prov, on_provision_step, gw);
  if (pacer_new(loop, cfg->upstream.max_connecting, cfg->upstream.connect_rate_per_s,
                &gw->pacer) != 0)
    goto fail_prov;
  if (make_rooms(gw) != 0)
    goto fail_rooms;
  *out = gw;
  return 0;

fail_rooms:
  relay_free(gw->relay);
  pacer_close(gw->pacer, NULL, NULL); /* frees it once the loop runs */
fail_prov:
  provision_free(gw->prov);
fail_store:
  store_close(gw->store);
fail_tls:
  if (gw->tls)
    tls_ctx_free(gw->tls);
fail_free:
  free(gw);
  return UV_EINVAL;
}

int gw_start(struct gw *gw)
{
  const struct gw_config *cfg = gw->cfg;
  int rc = leaves_start(gw->lan);
  if (rc != 0)
    return rc;
  if (provision_start(gw->prov) != 0) {
    LOGE(MOD, "provisioning could not start");
    return UV_EINVAL;
  }
  rc = relay_start(gw->relay);
  if (rc != 0)
    return rc;
  gw->upkeep.certs.ca_not_after = provision_ca_not_after(gw->prov);
  rc = upkeep_start(&gw->upkeep);
  if (rc != 0)
    return rc;
  {
    char dtls[96] = "";
    if (leaves_dtls_port(gw->lan) > 0)
      snprintf(dtls, sizeof dtls, ", dtls %s:%d", cfg->lan.dtls.bind, leaves_dtls_port(gw->lan));
    LOGI(MOD, "ready: MQTT-SN on udp %s:%d%s, upstream %s:%u (%s), gateway id %u", cfg->lan.bind,
         leaves_port(gw->lan), dtls, cfg->upstream.host, cfg->upstream.port,
         cfg->upstream.tls ? "TLS" : "plain TCP", cfg->gateway_id);
  }
  return 0;
}

static void drained_one(void *ud)
{
  drain_release(ud);
}

void gw_stop(struct gw *gw, void (*done)(void *), void *ud)
{
  size_t live = 0;
  uint64_t queued = 0;

  if (gw->stopping)
    return;
  gw->stopping = true;
  drain_hold(&gw->drain); /* held until the end of this function */
  leaves_stop(gw->lan, &live, &queued);
  relay_stop(gw->relay);
  drain_hold(&gw->drain);
  upkeep_stop(&gw->upkeep, drained_one, &gw->drain);
  drain_hold(&gw->drain);
  provision_stop(gw->prov, drained_one, &gw->drain);
  if (gw->pacer) {
    drain_hold(&gw->drain);
    pacer_close(gw->pacer, drained_one, &gw->drain);
    gw->pacer = NULL;
  }
  LOGI(MOD, "stopping: %zu leaves told DISCONNECT, %llu queued downlink messages discarded",
       live, (unsigned long long)queued);
  drain_wait(&gw->drain, done, ud);
  drain_release(&gw->drain);
}

void gw_free(struct gw *gw)
{
  if (!gw)
    return;
  leaves_free(gw->lan);
  relay_free(gw->relay);
  provision_free(gw->prov);
  store_close(gw->store);
  if (gw->tls)
    tls_ctx_free(gw->tls);
  free(gw);
}

int gw_reload(struct gw *gw)
{
  if (!gw || gw->stopping)
    return -1;
  {
    struct newid_opts o = newid_opts(gw->cfg);
    leaves_set_newid(gw->lan, &o);
  }
  if (admit_seed_allowlist(gw->store, gw->cfg, (int64_t)time(NULL)) != STORE_OK) {
    LOGW(MOD, "reload: cannot add admission.allowlist entries: %s", store_errmsg(gw->store));
    return -1;
  }
  return 0;
}

void gw_sync_counters(struct gw *gw)
{
  struct tls_stats ts = {0, 0};
  if (gw->tls)
    tls_ctx_stats(gw->tls, &ts);
  gw->m.upstream_tls_full = ts.full;
  gw->m.upstream_tls_resumed = ts.resumed;
}

void gw_log_metrics(struct gw *gw)
{
  char buf[16384]; /* the whole table, ~3 KB today: room to grow */
  struct metrics m;

  gw_sync_counters(gw);
  m = gw->m;
  leaves_count(gw->lan, &m, NULL, NULL);
  relay_count(gw->relay, &m);
  upkeep_count(&gw->upkeep, &m);
  if (metrics_to_json(&m, buf, sizeof buf) > 0)
    LOGI("metrics", "metrics %s", buf);
}
