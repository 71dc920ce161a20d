/*
 * upkeep.h - the registry's upkeep, on the loop every UPKEEP_INTERVAL_MS:
 *
 *   - pending identities not seen for admission.pending_ttl_s are deleted
 *     (a made-up ClientId that nobody approves costs a row for a day, not
 *     for ever);
 *   - the audit log keeps registry.audit_max_rows rows and
 *     registry.audit_max_days days, the oldest rows deleted first;
 *   - the size guard: when the file exceeds registry.max_bytes or its
 *     filesystem has less than registry.min_free_bytes free, never-seen
 *     identities are refused (known ones never are) until there is room;
 *   - the count of pending identities, for admission.max_pending;
 *   - certificate expiry: the soonest not-after of the active certificates
 *     and how many expire within provisioning.expiry_warn_days (gauges,
 *     upkeep_count), a warning once per certificate when it comes within
 *     that window and once when it expires (a mark of what was warned
 *     about: the highest not-after, the highest row id), and a warning
 *     when the local CA's certificate comes within twice the window and
 *     when it expires.
 *
 * Each pass deletes at most UPKEEP_BATCH rows per table, so a pass stays a
 * few milliseconds long on the loop; a backlog is worked off over passes.
 * A registry locked by another process skips the pass.
 */
#ifndef FLEETGW_UPKEEP_H
#define FLEETGW_UPKEEP_H

#include <stdint.h>
#include <uv.h>

#include "admission.h"

#define UPKEEP_INTERVAL_MS 10000
#define UPKEEP_BATCH 1000

struct gw_config;
struct metrics;
struct store;

/* Certificate expiry, as of the last pass (upkeep.c check_certs). */
struct upkeep_certs {
  int64_t soonest;            /* the soonest active not-after, 0 none */
  uint64_t expiring;          /* active, not-after within expiry_warn_days */
  uint64_t expired;           /* active, not-after passed */
  int64_t ca_not_after;       /* the local CA's; set by the owner before upkeep_start */
  int ca_level;               /* warned about the CA: 0 no, 1 expiring, 2 expired */
  /* Marks: certificates with a not-after up to *_not_after, or a row id up
   * to seen_id, were warned about already. */
  int64_t warned_not_after, expired_not_after, seen_id;
};

struct upkeep {
  uv_loop_t *loop;
  const struct gw_config *cfg;
  struct store *store;
  struct metrics *m;
  struct admit_room room;   /* read by the LAN side (leaves_env.room) */
  struct upkeep_certs certs;
  uv_timer_t timer;
  int started;
  void (*done)(void *);
  void *done_ud;
};

void upkeep_init(struct upkeep *u, uv_loop_t *loop, const struct gw_config *cfg,
                 struct store *store, struct metrics *m);
/* One pass now (also the first), then one every UPKEEP_INTERVAL_MS. */
int upkeep_start(struct upkeep *u);
/* One pass; now is Unix seconds (tests pass their own clock). */
void upkeep_run(struct upkeep *u, int64_t now);
/* The certificate part of a pass alone, e.g. when a certificate was
 * issued, so the gauges need not wait for the next pass. */
void upkeep_check_certs(struct upkeep *u, int64_t now);
/* Fills the certificate gauges of m from the last pass. */
void upkeep_count(const struct upkeep *u, struct metrics *m);
/* Stops the timer; done(ud) runs once its handle is closed (at once when
 * it was never started). */
void upkeep_stop(struct upkeep *u, void (*done)(void *), void *ud);

#endif
