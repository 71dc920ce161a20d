/*
 * admission.h - who may use the gateway, decided before any provisioning.
 *
 * Policies (admission.policy): "open" admits any ClientId matching
 * admission.pattern (a glob); "allowlist" admits ClientIds matching an entry
 * of the registry's allowlist (seeded from admission.allowlist); "approve"
 * records unknown leaves as pending until an operator approves them.
 *
 * Identity binding: a ClientId is bound to the IP address it was first
 * admitted from (admission.bind_address).  A CONNECT with a bound ClientId
 * from another address is refused and audited; an operator can release the
 * binding.  The port is not part of the binding: a leaf's UDP source port
 * changes when it reboots.  A pending identity is bound to nothing: the
 * binding is made by the first CONNECT after an operator approved it, so a
 * box that claims a ClientId first, from the wrong address, cannot lock the
 * genuine leaf out (docs/architecture.md §10).
 */
#ifndef FLEETGW_ADMISSION_H
#define FLEETGW_ADMISSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct gw_config;
struct store_device;

enum admit_result {
  ADMIT_OK = 0,       /* go on (device row exists, state approved or later) */
  ADMIT_PENDING = 1,  /* waiting for an operator's approval */
  ADMIT_REFUSED = 2,  /* refused: reason says why */
  ADMIT_ERROR = 3,    /* the registry failed: reason says why */
  ADMIT_THROTTLED = 4, /* a never-seen ClientId over a new-identity rate limit:
                          nothing is recorded, the leaf may try again later */
  ADMIT_BUSY = 5,     /* the registry is locked by another process past
                         registry.busy_timeout_ms: try again later */
};

/* What the registry can still take for never-seen identities, kept up to
 * date by the gateway's upkeep (gateway/upkeep.c) and read by the LAN side
 * before it lets a new identity be recorded. */
struct admit_room {
  bool registry_full;  /* the size guard: the file or its disk is full */
  uint64_t pending;    /* pending identities held (recounted by the upkeep) */
};

/* Asked before anything is recorded for a ClientId the registry has never
 * seen: take returns 0 to let it go on, or non-zero (with a reason) to
 * refuse it as ADMIT_THROTTLED (newid.h). */
struct admit_gate {
  int (*take)(void *ud, char *reason, size_t cap);
  void *ud;
};

/* Decides for client_id connecting from ip (no port), creating its device
 * row on first admission, binding it, and recording last_seen.  Every
 * admission, pending leaf and refusal is an audit row, except identities
 * the gate (may be NULL) throttles, which cost nothing.  dev (may be NULL)
 * receives the device.  Returns an enum admit_result. */
int admit_check(struct store *st, const struct gw_config *cfg, const char *client_id,
                const char *ip, int64_t now, const struct admit_gate *gate,
                struct store_device *dev, char *reason, size_t cap);

/* The live-session half of identity binding: bound_addr is the address
 * ("ip:port") of a connected leaf that already uses client_id, or NULL when
 * none does.  A CONNECT for a ClientId in use at another address is refused
 * and audited, so that a second box cannot take over a live identity.
 * Returns ADMIT_OK, or ADMIT_REFUSED with the reason. */
int admit_check_live(struct store *st, const char *client_id, const char *bound_addr,
                     const char *from_addr, int64_t now, char *reason, size_t cap);

/* Adds admission.allowlist entries to the registry's allowlist (idempotent). */
int admit_seed_allowlist(struct store *st, const struct gw_config *cfg, int64_t now);

#endif
