/*
 * gw_api.h - THE ONLY gateway header that web/ may include.
 *
 * A small query/command API over the running gateway.  Queries copy plain
 * structs (or stream rows to a callback); nothing returned points into the
 * gateway's own structures.  Commands return an enum api_err and, for
 * refusals, a one-line reason.  Events (device state changes, provisioning
 * steps, admissions, uplink changes) are delivered as small JSON objects to
 * subscribers: the gateway never calls web/, web/ subscribes.
 *
 * Everything here runs on the gateway's loop thread (libwebsockets runs on
 * the same libuv loop), so no locking is needed and none is done.
 */
#ifndef FLEETGW_GW_API_H
#define FLEETGW_GW_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gw;

enum api_err {
  API_OK = 0,
  API_NOTFOUND = -1,   /* no such device / entry */
  API_CONFLICT = -2,   /* not possible in the current state (reason says why) */
  API_INVAL = -3,      /* bad argument */
  API_ERROR = -4,      /* registry or internal error */
};

/* ---- status -------------------------------------------------------------- */

/* A leaf's outbox, or the whole outbox (docs/outbox.md). */
struct api_outbox {
  bool enabled;               /* outbox.enabled */
  uint64_t messages;          /* waiting: staged, stored, in flight */
  uint64_t bytes;             /* their topic and payload bytes */
  uint64_t in_flight;         /* sent, the broker's PUBACK not yet in */
  int64_t oldest_age_s;       /* age of the oldest waiting message; -1 when none */
  uint64_t stored;            /* taken and acknowledged to the leaf, since start */
  uint64_t delivered;         /* acknowledged by the broker */
  uint64_t refused_full;      /* refused at a bound (the leaf told "congestion") */
  uint64_t dropped;           /* dropped to make room (when_full "drop-oldest") */
  uint64_t expired;           /* older than outbox.ttl_s */
  uint64_t cloud_refused;     /* the broker refused them */
  uint64_t discarded;         /* discarded by an operator */
  uint32_t leaves;            /* leaves with messages waiting (status only) */
};

struct api_status {
  char version[32];
  uint64_t uptime_s;
  unsigned gateway_id;
  char uplink[16];            /* "up" (every live upstream up), "degraded", "down", "idle" */
  char backend[16];           /* "none", "local-ca", "aws" */
  int64_t devices_by_state[7];/* registry: pending, approved, provisioning, active, failed,
                                 blocked, revoked */
  uint64_t leaves_active;     /* live sessions */
  uint64_t leaves_asleep;
  uint64_t leaves_connecting;
  uint64_t upstreams_up;
  uint64_t provisioning_in_flight;
  int64_t db_bytes;
  uint64_t msgs_in;           /* publishes from leaves, all QoS */
  uint64_t msgs_out;          /* publishes to leaves */
  struct api_outbox outbox;   /* totals */
  /* Certificate expiry as of the last upkeep pass (at most 10 s old). */
  uint32_t expiry_warn_days;  /* provisioning.expiry_warn_days */
  uint64_t certs_expiring;    /* active, not-after within it (expired included) */
  uint64_t certs_expired;     /* active, not-after passed */
  int64_t certs_soonest_not_after; /* 0 when no active certificate */
  int64_t ca_not_after;       /* the local CA's, 0 without one */
};
int api_status(struct gw *gw, struct api_status *out);
/* Only the message counters of the status (msgs_in, msgs_out), cheaply:
 * no registry query.  For the dashboard's history, sampled every 10 s. */
void api_msg_totals(struct gw *gw, uint64_t *msgs_in, uint64_t *msgs_out);

/* ---- devices ------------------------------------------------------------- */

struct api_device {
  char client_id[256];
  char thing_name[129];
  char state[16];             /* registry state: "pending", "approved", ... */
  char session[16];           /* live session: "active", "asleep", "awake", "connecting",
                                 "disconnected", "lost", or "none" */
  char bound_addr[64];        /* registry binding (IP), "" if none */
  char address[80];           /* current UDP peer "ip:port", "" if none */
  int64_t first_seen;
  int64_t last_seen;
  char last_error[512];
  uint32_t attempts;
  char cert_id[129];          /* the active certificate, "" if none */
  char cert_fingerprint[65];
  int64_t cert_not_after;
  char cert_status[16];       /* "active", or "" */
  bool cert_expiry_known;     /* an active certificate with a not-after */
  int64_t cert_expires_in_days; /* days to its not-after, rounded down; negative once
                                   expired (-1 within the first day after) */
  char lan_security[16];      /* how it last authenticated on the LAN: "plain", "dtls-psk",
                                 "dtls-cert", or "" (never connected) */
  bool psk;                   /* a DTLS pre-shared key is held for it (never the key) */
  uint64_t msgs_in;           /* publishes from this leaf since the gateway started */
  uint64_t msgs_out;          /* publishes to it */
  uint64_t msgs_refused;      /* its publishes the broker refused (dropped) */
  uint32_t queued;            /* messages buffered for it */
  uint32_t subscriptions;     /* number of subscriptions */
  struct api_outbox outbox;   /* its QoS 1/2 messages waiting for the cloud */
  /* Of its live session record (all 0 without one): */
  double rate_in, rate_out;   /* publishes from it / to it per second, the last minute */
  int64_t last_message_at;    /* unix s of its last publish; 0 none since the start */
  bool has_keepalive;         /* a session record (keepalive_s is meaningful) */
  uint16_t keepalive_s;       /* its keep-alive, or its sleep duration while asleep */
  uint32_t reconnects;        /* CONNECTs after its first since the start (not wake-ups) */
};
typedef int (*api_device_cb)(void *ud, const struct api_device *d);

/* state: NULL for any, else a registry state name.  q: substring of ClientId
 * or thing name, NULL for any.  lan_security: NULL for any, else "plain",
 * "dtls-psk", "dtls-cert" or "none" (never connected).  sort: NULL or
 * "client_id" (the default), "thing_name", "state", "last_seen",
 * "first_seen", "cert_not_after" (devices without a certificate last either
 * way), each optionally prefixed with '-' for descending (API_INVAL
 * otherwise).  expires_within_days: negative for any, else only devices
 * whose active certificate's not-after is before now + that many days
 * (expired ones included).  *total gets the number of matching devices.  cb
 * returns 0 to go on. */
int api_devices_list(struct gw *gw, const char *state, const char *q, const char *lan_security,
                     const char *sort, int64_t expires_within_days, int64_t offset,
                     int64_t limit, api_device_cb cb, void *ud, int64_t *total);
int api_device_get(struct gw *gw, const char *client_id, struct api_device *out);
/* The device's subscriptions (topic filters with QoS). */
typedef int (*api_sub_cb)(void *ud, const char *filter, int qos);
int api_device_subscriptions(struct gw *gw, const char *client_id, api_sub_cb cb, void *ud);
/* The active certificate's PEM (malloc'd; free()).  Never a private key. */
int api_device_certificate(struct gw *gw, const char *client_id, char **pem);

/* Commands.  actor names who acts (e.g. "api:admin"), for the audit. */
int api_device_approve(struct gw *gw, const char *client_id, const char *actor, char *reason,
                       size_t cap);
int api_device_block(struct gw *gw, const char *client_id, const char *actor, char *reason,
                     size_t cap);
int api_device_unblock(struct gw *gw, const char *client_id, const char *actor, char *reason,
                       size_t cap);
/* A new identity: the active certificate becomes superseded, and the
 * device is provisioned again at its next CONNECT (rotation, below, keeps
 * the thing). */
int api_device_reprovision(struct gw *gw, const char *client_id, const char *actor,
                           char *reason, size_t cap);
/* A new certificate for the same thing (docs/rotation.md): started now,
 * finished by the provisioner; the old one becomes superseded then.
 * API_CONFLICT when the device is not ACTIVE with an active certificate,
 * a run is open, or the backend cannot rotate (none; aws without
 * provisioning.aws.rotation_template). */
int api_device_rotate(struct gw *gw, const char *client_id, const char *actor, char *reason,
                      size_t cap);
/* Discard the leaf's stored outbox messages that are not in flight, gone
 * from disk when it returns (audited as operator.outbox_discard with the
 * count); *n how many.  API_NOTFOUND for
 * an unknown device; API_CONFLICT when the outbox is off. */
int api_device_outbox_discard(struct gw *gw, const char *client_id, const char *actor,
                              uint64_t *n, char *reason, size_t cap);
/* Release the ClientId's address binding. */
int api_device_release(struct gw *gw, const char *client_id, const char *actor, char *reason,
                       size_t cap);
/* Decommission: sessions closed, certificate inactive, device revoked; the
 * audit trail stays. */
int api_device_decommission(struct gw *gw, const char *client_id, const char *actor,
                            char *reason, size_t cap);

/* ---- DTLS pre-shared keys ------------------------------------------------ */

/* A leaf's DTLS PSK identity is its ClientId (docs/dtls.md §4, §9).  A key is
 * shown once, when it is made: the caller hands it out and wipes it
 * (OPENSSL_cleanse or common/secret.h); afterwards only its existence is
 * visible (struct api_device's psk).  Each command is audited without the
 * key, and a key that changes or goes closes at once every DTLS association
 * that authenticated with the old one. */
#define API_PSK_MIN 16        /* bytes of an imported key (the registry's bounds) */
#define API_PSK_MAX 64
#define API_PSK_LEN 32        /* bytes of a generated key */
#define API_PSK_BULK_MAX 1000 /* ClientIds in one api_psk_bulk */

struct api_psk {
  char client_id[256];        /* = the PSK identity */
  uint8_t key[API_PSK_MAX];   /* key_len bytes: a secret */
  size_t key_len;
  int64_t created_at;
};

/* Whether client_id is one a leaf may CONNECT with (docs/architecture.md
 * §7): 1..lan.max_client_id_len octets of printable ASCII without spaces or
 * '/'.  API_OK, or API_INVAL and why. */
int api_psk_client_id_check(struct gw *gw, const char *client_id, char *reason, size_t cap);
/* Gives the device a key: key NULL generates API_PSK_LEN random bytes
 * (RAND_priv_bytes), else key_len (API_PSK_MIN..MAX) bytes are imported.  A
 * ClientId the registry does not know yet is created "approved" (keys are
 * made before the leaf's first CONNECT); a known device keeps its state.
 * API_CONFLICT when it already has a key (rotate or revoke it), or is
 * blocked or decommissioned; API_INVAL for a ClientId no leaf could use or a
 * key of the wrong length.  *out is the key on API_OK, wiped otherwise. */
int api_psk_create(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   const char *actor, struct api_psk *out, char *reason, size_t cap);
/* Replaces the device's key the same way; the old one stops working at
 * once.  API_NOTFOUND when there is no such device or it has no key,
 * API_CONFLICT when it is decommissioned (a blocked one may be re-keyed
 * before it is unblocked). */
int api_psk_rotate(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   const char *actor, struct api_psk *out, char *reason, size_t cap);
/* Deletes the device's key.  API_NOTFOUND when there is none. */
int api_psk_revoke(struct gw *gw, const char *client_id, const char *actor, char *reason,
                   size_t cap);
/* A production batch: ids[0..n) (1..API_PSK_BULK_MAX, each as in
 * api_psk_client_id_check, none twice) each get a generated key, in one
 * registry transaction, all or nothing; unknown ClientIds are created
 * "approved".  keys[n * API_PSK_LEN] gets the keys in the order of ids,
 * *created_at their time.  API_CONFLICT (nothing written) when any of them
 * has a key already or is blocked or decommissioned, the reason naming the
 * first few.  One audit row for the batch (the count, never the keys). */
int api_psk_bulk(struct gw *gw, const char *const *ids, size_t n, const char *actor,
                 uint8_t *keys, int64_t *created_at, char *reason, size_t cap);

/* ---- allowlist, certificates, audit ------------------------------------- */

typedef int (*api_allow_cb)(void *ud, const char *entry, int64_t added_at);
int api_allow_list(struct gw *gw, api_allow_cb cb, void *ud);
/* API_CONFLICT when it exists (add) or API_NOTFOUND (remove). */
int api_allow_add(struct gw *gw, const char *entry, const char *actor);
int api_allow_remove(struct gw *gw, const char *entry, const char *actor);

struct api_cert {
  char cert_id[129];
  char client_id[256];
  char status[16];            /* "pending", "active", "orphaned", "superseded", "inactive" */
  int64_t not_after;
  char fingerprint[65];
  char reason[256];
  int64_t created_at;
};
typedef int (*api_cert_cb)(void *ud, const struct api_cert *c);
/* status: NULL for any. */
int api_certs_list(struct gw *gw, const char *status, int64_t offset, int64_t limit,
                   api_cert_cb cb, void *ud, int64_t *total);

struct api_audit {
  int64_t id;
  int64_t at;
  char actor[64];
  char action[64];
  char client_id[256];
  char detail[1024];
};
typedef int (*api_audit_cb)(void *ud, const struct api_audit *a);
int api_audit_list(struct gw *gw, const char *client_id, int64_t offset, int64_t limit,
                   api_audit_cb cb, void *ud, int64_t *total);

/* ---- metrics ------------------------------------------------------------- */

/* The Prometheus text exposition (version 0.0.4) of every metric, malloc'd
 * into *text (free()).  HTTP request counts recorded with api_count_http are
 * included. */
int api_metrics_prometheus(struct gw *gw, char **text);
/* Counts one HTTP request by status code (for the metrics). */
void api_count_http(struct gw *gw, int status);

/* ---- events -------------------------------------------------------------- */

/* An event is one JSON object: {"type": "...", "at": <unix ms>, ...}, types
 * "device.state", "device.session", "provision.step", "admission", "uplink".
 * The string is valid during the call only. */
typedef void (*api_event_cb)(void *ud, const char *json, size_t len);
struct api_sub;
/* Subscribes; returns NULL when out of memory. */
struct api_sub *api_subscribe(struct gw *gw, api_event_cb cb, void *ud);
void api_unsubscribe(struct gw *gw, struct api_sub *sub);

#endif
