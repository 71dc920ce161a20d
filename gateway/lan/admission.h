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
 *
 * Over DTLS the key is the binding (docs/dtls.md §9): a CONNECT must name
 * the identity its association authenticated (the LAN side checks that),
 * the IP binding is neither checked nor made, and the device is marked as
 * authenticating over DTLS.  From then on, and as soon as it holds a PSK,
 * its ClientId is refused over plain UDP, whatever admission.plain_udp says.
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
  ADMIT_NEEDS_DTLS = 6, /* plain UDP for a ClientId that authenticates over
                           DTLS: refused, nothing recorded */
};

/* How the CONNECT's sender proved who it is. */
enum admit_sec {
  ADMIT_SEC_PLAIN = 0, /* nothing: plain UDP */
  ADMIT_SEC_PSK = 1,   /* a DTLS association with the device's pre-shared key */
  ADMIT_SEC_CERT = 2,  /* a DTLS association with a certificate from the factory CA */
};
/* The registry's name of sec: "plain", "dtls-psk", "dtls-cert". */
const char *admit_sec_name(int sec);

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

/* Decides for client_id connecting from ip (no port) with sec (enum
 * admit_sec), creating its device row on first admission, binding it,
 * recording last_seen and how it authenticated.  Every admission, pending
 * leaf and refusal is an audit row, except identities the gate (may be
 * NULL) throttles, which cost nothing.  dev (may be NULL) receives the
 * device.  Returns an enum admit_result. */
int admit_check(struct store *st, const struct gw_config *cfg, const char *client_id,
                const char *ip, int sec, int64_t now, const struct admit_gate *gate,
                struct store_device *dev, char *reason, size_t cap);

/* A DTLS association that authenticated identity tried to CONNECT as
 * client_id: refused and audited (the session, if any, is left as it was).
 * Returns ADMIT_REFUSED with the reason. */
int admit_refuse_identity(struct store *st, const char *client_id, const char *identity,
                          int64_t now, char *reason, size_t cap);

/* admission.plain_udp: may client_id CONNECT over plain UDP?  Nothing is
 * recorded for a refusal (a flood of them costs nothing). */
bool admit_plain_allowed(const struct gw_config *cfg, const char *client_id);

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
