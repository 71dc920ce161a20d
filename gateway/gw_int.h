/*
 * gw_int.h - the gateway process's own state, shared by gw.c (composition,
 * start, stop) and gw_api.c (the API for web/).  Nothing outside gateway/'s
 * top level includes it; the rooms below (lan/, relay/, upstream/,
 * provision/) get what they need through their own env structs.
 */
#ifndef FLEETGW_GW_INT_H
#define FLEETGW_GW_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "api/gw_api.h"
#include "config.h"
#include "drain.h"
#include "metrics.h"
#include "upkeep.h"

struct leaves;
struct pacer;
struct provisioner;
struct relay;
struct store;
struct tls_ctx;

/* An event subscriber (gw_api.h).  Removed lazily: a subscriber may
 * unsubscribe from inside its own callback. */
struct api_sub {
  struct api_sub *next;
  api_event_cb cb;
  void *ud;
  bool dead;
};

struct gw {
  uv_loop_t *loop;
  uint64_t started_ms;          /* uv_now at gw_new, for the uptime */
  struct api_sub *subs;         /* event subscribers */
  unsigned emitting;            /* nesting depth of gw_emit() */
  uint64_t http_counts[6];      /* HTTP responses by class: 1xx..5xx (index 1..5) */
  const struct gw_config *cfg;
  struct tls_ctx *tls;
  struct store *store;
  struct provisioner *prov;
  struct pacer *pacer;
  struct relay *relay;
  struct leaves *lan;
  struct metrics m;
  struct upkeep upkeep;         /* registry retention and size guard */
  struct drain drain;           /* asynchronous closes in flight */
  bool stopping;
};

/* Publishes an event {"type", "at", "client_id" (when not NULL), key: value
 * and key2: value2 (when not NULL)} to every subscriber (gw_api.h). */
void gw_emit(void *gw, const char *type, const char *client_id, const char *key,
             const char *value, const char *key2, const char *value2);
/* Copies the counters that live in lower modules (the TLS context's
 * handshakes) into gw->m, before it is read. */
void gw_sync_counters(struct gw *gw);

#endif
