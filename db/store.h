/*
 * store.h - the registry: devices, certificates, the provisioning journal and
 * the audit log, in one SQLite file (WAL mode, numbered migrations recorded in
 * PRAGMA user_version).
 *
 * The central invariant is held by the schema itself, not only by this code:
 *   - at most ONE certificate with status 'active' per device (a partial
 *     UNIQUE index on certificates(device_id) WHERE status = 'active');
 *   - ClientId UNIQUE, thing name UNIQUE (NULL allowed until known);
 *   - at most ONE unfinished provisioning run per device (a partial UNIQUE
 *     index on runs(device_id) WHERE finished = 0), so a leaf that reconnects
 *     while its run is in flight can never start a second one.
 * A write that would break one of these fails with STORE_CONFLICT.
 *
 * Private keys are stored encrypted (AES-256-GCM, random 96-bit nonce per
 * key, the device's ClientId as associated data) with a 256-bit key kept in
 * a separate key file, created 0600 on first open.  Keys are returned only
 * by store_cert_key() and must be wiped with store_secret_free().  This module
 * never logs (it has no logger): it returns codes and store_errmsg() text,
 * and the text never contains key material.
 *
 * Times are Unix seconds (int64_t) given by the caller, so tests control them.
 * Strings returned inside structs are fixed-size arrays; PEMs are malloc'd and
 * owned by the caller (free()).
 *
 * Not thread-safe: one struct store per thread (the gateway uses one, on its
 * loop; the queries are short).
 */
#ifndef FLEETGW_STORE_H
#define FLEETGW_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

enum store_err {
  STORE_OK = 0,
  STORE_NOTFOUND = -1,  /* no such row */
  STORE_CONFLICT = -2,  /* a UNIQUE constraint (the invariant) refused the write */
  STORE_IO = -3,        /* SQLite or file error; see store_errmsg() */
  STORE_NOMEM = -4,
  STORE_CRYPTO = -5,    /* key file unusable, or a stored key fails to decrypt */
  STORE_CORRUPT = -6,   /* schema newer than this build, or integrity failure */
  STORE_INVAL = -7,     /* bad argument (empty id, over-long field, ...) */
  STORE_BUSY = -8,      /* another connection holds the lock past the busy time-out */
};
const char *store_strerror(int err);
/* The last error's detail (SQLite's message, file name); never secrets. */
const char *store_errmsg(const struct store *st);

struct store_opts {
  const char *path;       /* SQLite file; created if absent */
  const char *key_file;   /* 32-byte key file; created 0600 if absent */
  int synchronous;        /* 0 OFF, 1 NORMAL (default), 2 FULL */
};

/* Opens (creating and migrating as needed).  Returns STORE_OK and *out. */
int store_open(const struct store_opts *opts, struct store **out);
void store_close(struct store *st);
/* How long a statement waits for another connection's lock before it fails
 * with STORE_BUSY.  store_open uses a generous one (migrations); the gateway
 * then sets registry.busy_timeout_ms, short, because it runs on the loop. */
void store_set_busy_timeout(struct store *st, int ms);
/* Bytes free on the filesystem holding the database, or -1. */
int64_t store_free_bytes(struct store *st);
/* The schema version after migrations (PRAGMA user_version). */
int store_schema_version(struct store *st);
/* Size of the database file in bytes (for status pages). */
int64_t store_size_bytes(struct store *st);

/* WAL checkpoints on a thread of the store's own (docs/outbox.md §9):
 * auto-checkpointing is turned off on st's connection, and once a commit
 * leaves the WAL at pages or more, a PASSIVE checkpoint runs on another
 * connection, one at a time.  From cap_pages on, a commit checkpoints on
 * st's connection itself (counted in fallbacks), so the WAL stays bounded.
 * store_close stops the thread and empties the WAL.  Nothing to do for an
 * in-memory database. */
int store_ckpt_start(struct store *st, int pages, int cap_pages);
struct store_ckpt_stats {
  uint64_t runs;          /* background checkpoints */
  uint64_t caught_up;     /* of them, those that copied the whole WAL back */
  uint64_t fallbacks;     /* checkpoints a commit ran itself: the WAL at cap_pages */
  uint64_t failures;      /* checkpoints that failed other than busy */
  int64_t wal_pages_max;  /* the largest WAL a commit left, from pages on */
  int64_t last_us, max_us, total_us; /* background checkpoint durations */
};
void store_ckpt_stats(struct store *st, struct store_ckpt_stats *out);

/* Explicit transactions (BEGIN IMMEDIATE).  Every function below is atomic on
 * its own; use these only to group several. */
int store_begin(struct store *st);
int store_commit(struct store *st);
int store_rollback(struct store *st);

/* ---- devices ------------------------------------------------------------ */

enum store_dev_state {
  DEV_PENDING = 0,      /* waiting for an operator's approval */
  DEV_APPROVED = 1,     /* admitted, not yet provisioned */
  DEV_PROVISIONING = 2, /* a run is in flight */
  DEV_ACTIVE = 3,       /* has its active certificate */
  DEV_FAILED = 4,       /* permanently rejected; waits for an operator */
  DEV_BLOCKED = 5,      /* refused by an operator */
  DEV_REVOKED = 6,      /* decommissioned */
};
const char *store_dev_state_name(int state);   /* "pending", ... */
int store_dev_state_parse(const char *name);    /* -1 if unknown */

struct store_device {
  int64_t id;
  char client_id[256];
  char thing_name[129];   /* "" until known */
  int state;              /* enum store_dev_state */
  char bound_addr[64];    /* "ip:port" the ClientId is bound to, "" if none */
  int64_t first_seen;
  int64_t last_seen;
  char last_error[512];   /* last rejection: "statusCode errorCode: errorMessage" */
  int64_t retry_at;       /* earliest next provisioning attempt (back-off), 0 = now */
  uint32_t attempts;      /* provisioning attempts since the last success */
  char lan_security[16];  /* "plain", "dtls-psk", "dtls-cert", "" never connected */
  bool has_psk;           /* a DTLS pre-shared key is held for it */
};

int store_device_get(struct store *st, const char *client_id, struct store_device *out);
int store_device_get_by_thing(struct store *st, const char *thing_name, struct store_device *out);
/* Creates a device row (CONFLICT if the ClientId exists).  out may be NULL. */
int store_device_create(struct store *st, const char *client_id, int state, const char *bound_addr,
                        int64_t now, struct store_device *out);
int store_device_set_state(struct store *st, const char *client_id, int state);
/* Records a provisioning error text and the back-off deadline; attempts++. */
int store_device_set_error(struct store *st, const char *client_id, const char *error,
                           int64_t retry_at);
/* Clears error, attempts and retry_at (after success or an operator reset). */
int store_device_clear_error(struct store *st, const char *client_id);
/* Sets the thing name; CONFLICT when another device has it. */
int store_device_set_thing(struct store *st, const char *client_id, const char *thing_name);
/* Binds the ClientId to an address ("" or NULL releases the binding). */
int store_device_bind(struct store *st, const char *client_id, const char *addr);
int store_device_touch(struct store *st, const char *client_id, int64_t now);
/* Counts devices by state: counts[DEV_PENDING..DEV_REVOKED]. */
int store_device_counts(struct store *st, int64_t counts[7]);
/* Deletes the devices in state (DEV_PENDING only: they hold nothing else)
 * last seen before seen_before, at most limit of them, never one that holds
 * a DTLS pre-shared key; *deleted says how many. */
int store_device_prune(struct store *st, int state, int64_t seen_before, int64_t limit,
                       int64_t *deleted);

/* Paged listing: state filter (-1 = any), text filter (substring of ClientId
 * or thing name, NULL = any), ordered by ClientId.  cb returns 0 to go on. */
typedef int (*store_device_cb)(void *ud, const struct store_device *d);
int store_device_list(struct store *st, int state, const char *text, int64_t offset,
                      int64_t limit, store_device_cb cb, void *ud, int64_t *total);
/* The same, ordered by one of these (ties broken by ClientId), ascending or
 * descending.  ClientIds and thing names sort in natural order. */
enum store_device_sort {
  STORE_SORT_CLIENT_ID = 0,
  STORE_SORT_THING_NAME = 1,
  STORE_SORT_STATE = 2,
  STORE_SORT_LAST_SEEN = 3,
  STORE_SORT_FIRST_SEEN = 4,
  STORE_SORT_CERT_NOT_AFTER = 5, /* the active certificate's not-after; devices without
                                    one (or with an unknown not-after) last either way */
};
/* Natural order of two byte strings: runs of digits compare as numbers
 * ("leaf-2" < "leaf-10"), everything else byte by byte; equal numbers with
 * more leading zeros after fewer ("a1" < "a01"), so only equal strings
 * compare equal.  <0, 0, >0.  The registry's connection has it as the
 * collation NATSORT (store_natural_register). */
int store_natural_cmp(const void *a, int alen, const void *b, int blen);
/* Registers it on the registry's connection (store_open does). */
int store_natural_register(struct store *st);
int store_device_list_sorted(struct store *st, int state, const char *text, int sort, bool desc,
                             int64_t offset, int64_t limit, store_device_cb cb, void *ud,
                             int64_t *total);
/* The same with every filter at once. */
struct store_device_filter {
  int state;                /* -1 any */
  const char *text;         /* substring of ClientId or thing name; NULL any */
  const char *lan_security; /* "plain", "dtls-psk", "dtls-cert", "none" (never connected),
                               NULL any; anything else is STORE_INVAL */
  int64_t cert_expires_before; /* > 0: only devices whose active certificate's not-after
                                  is before this (Unix s), expired ones included; 0 any */
};
int store_device_list_where(struct store *st, const struct store_device_filter *where, int sort,
                            bool desc, int64_t offset, int64_t limit, store_device_cb cb,
                            void *ud, int64_t *total);

/* ---- certificates ------------------------------------------------------- */

enum store_cert_status {
  CERT_PENDING = 0,     /* issued by the CA/cloud, not yet registered (RegisterThing) */
  CERT_ACTIVE = 1,      /* the device's one active certificate */
  CERT_ORPHANED = 2,    /* issued but abandoned (crash, token expired): clean it up in the cloud */
  CERT_SUPERSEDED = 3,  /* replaced by an operator's reprovision or by a rotation */
  CERT_INACTIVE = 4,    /* decommissioned */
};
const char *store_cert_status_name(int status);

struct store_cert {
  int64_t id;
  char cert_id[129];      /* the cloud's certificateId (64 hex) or the local CA's */
  char client_id[256];
  int status;
  int64_t not_after;      /* Unix seconds, parsed from the certificate */
  char fingerprint[65];   /* SHA-256 of the DER, hex */
  char reason[256];       /* why orphaned/superseded/inactive */
  int64_t created_at;
  int64_t updated_at;
  char *pem;              /* malloc'd, NULL when not requested */
};

/* Inserts a certificate with its private key (PEM, encrypted here) in status
 * CERT_PENDING or CERT_ACTIVE.  key_pem may be NULL (key held elsewhere).
 * CONFLICT if cert_id exists or, for CERT_ACTIVE, the device already has an
 * active certificate. */
int store_cert_insert(struct store *st, const char *client_id, const char *cert_id,
                      const char *pem, const char *key_pem, int64_t not_after,
                      const char *fingerprint, int status, int64_t now);
/* Changes status (and reason).  Making a certificate ACTIVE while the device
 * has another active one fails with CONFLICT. */
int store_cert_set_status(struct store *st, const char *cert_id, int status, const char *reason,
                          int64_t now);
/* The device's active certificate (with_pem: also its PEM). */
int store_cert_get_active(struct store *st, const char *client_id, bool with_pem,
                          struct store_cert *out);
int store_cert_get(struct store *st, const char *cert_id, bool with_pem, struct store_cert *out);
/* Decrypts the certificate's private key into *key_pem (free with
 * store_secret_free). */
int store_cert_key(struct store *st, const char *cert_id, char **key_pem);
/* Wipes and frees a secret this module returned; NULL does nothing.  The
 * same as secret_free() of common/secret.h, which new code should call; kept
 * while callers outside db/ still use this name. */
void store_secret_free(char *secret);
/* Number of certificates of a device in a status (-1 = any). */
int store_cert_count(struct store *st, const char *client_id, int status, int64_t *count);
typedef int (*store_cert_cb)(void *ud, const struct store_cert *c);
/* Paged listing, status filter (-1 = any), newest first. */
int store_cert_list(struct store *st, int status, int64_t offset, int64_t limit, store_cert_cb cb,
                    void *ud, int64_t *total);
void store_cert_clear(struct store_cert *c); /* frees c->pem */
/* Expiry of the active certificates, in one aggregate query over the
 * certificates_status index (cheap enough for every upkeep pass):
 * soonest: the soonest not-after, 0 when none is known; expiring: how many
 * have a not-after before `before` and expired how many before `now`
 * (expiring includes them when before >= now); max_id: the highest
 * certificate row id of any status, 0 when there is none. */
struct store_cert_expiry {
  int64_t soonest;
  int64_t expiring;
  int64_t expired;
  int64_t max_id;
};
int store_cert_expiry(struct store *st, int64_t now, int64_t before,
                      struct store_cert_expiry *out);
/* The active certificates with a not-after before `before` that are past a
 * mark: not-after after after_not_after, or row id above after_id; soonest
 * first (ties by id).  The upkeep warns about each once this way.  cb
 * returns 0 to go on. */
int store_cert_expiring(struct store *st, int64_t before, int64_t after_not_after,
                        int64_t after_id, store_cert_cb cb, void *ud);

/* ---- provisioning journal ----------------------------------------------- */

/* Steps of a run, written BEFORE the action they announce is taken, so that a
 * crash between any two steps is recoverable. */
enum store_run_step {
  RUN_STARTED = 0,        /* the run exists; nothing sent yet */
  RUN_KEY_READY = 1,      /* key pair generated and stored (encrypted) in the run */
  RUN_CSR_SENT = 2,       /* CreateCertificateFromCsr (or CreateKeysAndCertificate) about to be published */
  RUN_CERT_RECEIVED = 3,  /* certificate id, PEM, token stored (cert row CERT_PENDING) */
  RUN_REGISTER_SENT = 4,  /* RegisterThing about to be published */
  RUN_REGISTERED = 5,     /* RegisterThing accepted: thing name stored */
  RUN_DONE = 6,           /* certificate ACTIVE, device ACTIVE (finished) */
  RUN_FAILED = 7,         /* finished without a certificate */
};
const char *store_run_step_name(int step);

/* What a run is for (runs.kind). */
enum store_run_kind {
  RUN_PROVISION = 0,      /* the device's first certificate and its thing */
  RUN_ROTATE = 1,         /* a new certificate for the device's existing thing */
};

struct store_run {
  int64_t id;
  int kind;               /* enum store_run_kind */
  char old_cert_id[129];  /* RUN_ROTATE: the active certificate it replaces */
  char client_id[256];
  char backend[16];       /* "aws" or "local-ca" */
  int step;
  bool finished;
  char cert_id[129];      /* once RUN_CERT_RECEIVED */
  char token[2048];       /* certificateOwnershipToken, once RUN_CERT_RECEIVED: a
                             secret, sealed at rest and opened here; the caller
                             wipes it (secret_wipe) after use */
  int64_t token_at;       /* when the token was received */
  char thing_name[129];   /* once RUN_REGISTERED */
  int64_t started_at;
  int64_t updated_at;
  char outcome[256];      /* for RUN_FAILED */
};

/* Starts a run for a device.  CONFLICT when the device already has an
 * unfinished run (the schema forbids two). */
int store_run_begin(struct store *st, const char *client_id, const char *backend, int64_t now,
                    int64_t *run_id);
/* Starts a rotation run (RUN_ROTATE) for an ACTIVE device with an active
 * certificate, naming that certificate as the one it replaces.  CONFLICT
 * when the device is not ACTIVE or has an unfinished run, NOTFOUND when
 * the device or its active certificate does not exist. */
int store_run_begin_rotation(struct store *st, const char *client_id, const char *backend,
                             int64_t now, int64_t *run_id);
int store_run_get(struct store *st, int64_t run_id, struct store_run *out);
/* The device's newest rotation run, finished or not; NOTFOUND if none. */
int store_run_last_rotation(struct store *st, const char *client_id, struct store_run *out);
/* The device's unfinished run, NOTFOUND if none. */
int store_run_get_open(struct store *st, const char *client_id, struct store_run *out);
int store_run_set_step(struct store *st, int64_t run_id, int step, int64_t now);
/* Stores the generated private key with the run (encrypted), RUN_KEY_READY. */
int store_run_set_key(struct store *st, int64_t run_id, const char *key_pem, int64_t now);
/* Decrypts the run's key (free with store_secret_free); NOTFOUND if none. */
int store_run_key(struct store *st, int64_t run_id, char **key_pem);
/* Atomically: inserts the certificate (CERT_PENDING, with the run's key or
 * key_pem when given, e.g. from CreateKeysAndCertificate), stores cert id and
 * token (sealed like the keys) on the run, RUN_CERT_RECEIVED. */
int store_run_cert_received(struct store *st, int64_t run_id, const char *cert_id,
                            const char *pem, const char *key_pem, int64_t not_after,
                            const char *fingerprint, const char *token, int64_t now);
/* Atomically: thing name on the device (CONFLICT if taken), RUN_REGISTERED.
 * A rotation keeps the device's thing: CONFLICT if thing_name is another. */
int store_run_registered(struct store *st, int64_t run_id, const char *thing_name, int64_t now);
/* Atomically: certificate ACTIVE (CONFLICT if the device has another active
 * one), device ACTIVE, error cleared, run RUN_DONE and finished.  A
 * rotation first makes the device's active certificate CERT_SUPERSEDED
 * (reason "rotated: replaced by <new id>"), in the same transaction. */
int store_run_complete(struct store *st, int64_t run_id, int64_t now);
/* Atomically: run RUN_FAILED and finished with outcome; if the run holds a
 * certificate that is not active, it becomes CERT_ORPHANED with reason. */
int store_run_fail(struct store *st, int64_t run_id, const char *outcome, int64_t now);
typedef int (*store_run_cb)(void *ud, const struct store_run *r);
/* Every unfinished run (on start-up, to resume or abandon each). */
int store_run_list_open(struct store *st, store_run_cb cb, void *ud);

/* ---- backup ------------------------------------------------------------- */

/* A consistent copy of the registry at src_path, taken while the gateway may
 * be writing it (SQLite's online backup, through a read-only connection of
 * its own), to dest, with the key file copied to "<dest>.key"; both created
 * 0600 and never over an existing file; the copy passes quick_check.  err
 * holds the reason otherwise (nothing is left behind). */
struct store_backup_info {
  int64_t pages;       /* pages copied */
  int64_t steps;       /* backup steps */
  int64_t waits;       /* steps that waited for a writer */
};
int store_backup(const char *src_path, const char *key_file, const char *dest,
                 struct store_backup_info *info, char *err, size_t cap);

/* ---- audit -------------------------------------------------------------- */

struct store_audit {
  int64_t id;
  int64_t at;
  char actor[64];         /* "gateway", "operator", "api:<token name>" */
  char action[64];        /* "admitted", "refused", "provision.started", "cert.issued", ... */
  char client_id[256];    /* "" when not about one device */
  char detail[1024];      /* free text / small JSON, never secrets */
};
int store_audit(struct store *st, int64_t now, const char *actor, const char *action,
                const char *client_id, const char *detail);
/* An audit row a peer can make the gateway write again and again (a
 * refused leaf retrying): the first of each (actor, action, ClientId,
 * detail) is written at once; repeats within STORE_AUDIT_REPEAT_S of it are
 * only counted, and written as one row, "repeated N more times in S s:
 * <detail>", when that interval is over (store_audit_flush, or the next
 * repeat after it).  STORE_AUDIT_REPEAT_SLOTS identities are followed at
 * once; one more evicts the oldest (its count written first).  The rows
 * stay append-only. */
#define STORE_AUDIT_REPEAT_S 600
#define STORE_AUDIT_REPEAT_SLOTS 512
int store_audit_repeat(struct store *st, int64_t now, const char *actor, const char *action,
                       const char *client_id, const char *detail);
/* Writes the counts of the intervals that are over (all of them with
 * all = true, e.g. at shutdown).  Called from the upkeep. */
int store_audit_flush(struct store *st, int64_t now, bool all);
typedef int (*store_audit_cb)(void *ud, const struct store_audit *a);
/* Paged, newest first; client_id filter (NULL = all). */
int store_audit_list(struct store *st, const char *client_id, int64_t offset, int64_t limit,
                     store_audit_cb cb, void *ud, int64_t *total);
/* The retention: deletes the oldest rows beyond the newest max_rows (0 = no
 * row limit) and rows older than before (0 = no age limit), at most limit
 * rows; *deleted says how many. */
int store_audit_prune(struct store *st, int64_t max_rows, int64_t before, int64_t limit,
                      int64_t *deleted);

/* ---- DTLS pre-shared keys --------------------------------------------- */

#define STORE_PSK_MIN 16
#define STORE_PSK_MAX 64
/* Sets (or replaces) the device's PSK, sealed at rest.  NOTFOUND when the
 * device does not exist. */
int store_psk_set(struct store *st, const char *client_id, const uint8_t *key, size_t len,
                  int64_t now);
/* The device's PSK into key[cap] (wipe it after use); NOTFOUND when none. */
int store_psk_get(struct store *st, const char *client_id, uint8_t *key, size_t cap,
                  size_t *len);
int store_psk_delete(struct store *st, const char *client_id);
/* How the device last authenticated on the LAN: "plain", "dtls-psk" or
 * "dtls-cert" (written only when it changes). */
int store_device_set_lan_security(struct store *st, const char *client_id, const char *security);

/* ---- allowlist ---------------------------------------------------------- */

/* Entries are exact ClientIds or glob patterns (fnmatch: '*', '?', '[...]'). */
int store_allow_add(struct store *st, const char *entry, int64_t now);
int store_allow_remove(struct store *st, const char *entry);
/* True (1) when client_id matches an entry, 0 when not, negative on error. */
int store_allow_match(struct store *st, const char *client_id);
typedef int (*store_allow_cb)(void *ud, const char *entry, int64_t added_at);
int store_allow_list(struct store *st, store_allow_cb cb, void *ud);

/* ---- the outbox: store and forward (docs/outbox.md) ----------------------- */

/* A leaf's QoS 1 and 2 messages, held from before the leaf is acknowledged
 * until the broker acknowledges them.  Times here are Unix milliseconds. */
struct store_outbox_msg {
  int64_t seq;            /* increasing across the whole outbox, never reused */
  const char *topic;      /* not NUL-terminated necessarily: topic_len bytes */
  size_t topic_len;       /* 1..65535 */
  const uint8_t *payload; /* may be NULL when len is 0 */
  size_t len;
  uint8_t qos;            /* as the leaf sent it: 1 or 2 */
  bool retain;
  int64_t created_ms;     /* Unix ms when the gateway took the message */
};
struct store_outbox_stats {
  int64_t count;
  int64_t bytes;          /* topic + payload bytes */
  int64_t oldest_ms;      /* created_ms of the oldest message; 0 when empty */
  int64_t first_seq;      /* lowest seq; 0 when empty */
  int64_t last_seq;       /* highest seq; 0 when empty */
};
/* Appends m to client_id's outbox and sets m->seq.  Call it inside the
 * caller's transaction (store_begin/commit) to batch many.  STORE_NOTFOUND:
 * no such device; STORE_INVAL: qos not 1 or 2, topic empty or too long. */
int store_outbox_add(struct store *st, const char *client_id, struct store_outbox_msg *m);
/* Deletes message seq; STORE_OK when it was already gone. */
int store_outbox_delete(struct store *st, int64_t seq);
/* A device's row id as a caller caches it: valid while no devices row has
 * been deleted since (by this gateway or, seen through PRAGMA data_version,
 * by any other connection), so a deleted id given to another device is
 * never used for the old one.  Zero it to start. */
struct store_devref {
  int64_t id;    /* 0: not known */
  uint64_t gen;  /* the store's device generation when id was looked up */
};
/* store_outbox_add with the device's row id cached by the caller in *ref.
 * The id is looked up by ClientId when *ref is not current; the INSERT is
 * then a plain one-row insert (no device lookup per message).  A device
 * deleted and created again is found, a deleted one is refused
 * (STORE_NOTFOUND, ref->id 0). */
int store_outbox_add_dev(struct store *st, struct store_devref *ref, const char *client_id,
                         struct store_outbox_msg *m);
/* Deletes the messages first..last (seqs, both included) in one statement;
 * the caller names only runs of seqs it means to delete, every one. */
int store_outbox_delete_range(struct store *st, int64_t first, int64_t last);
typedef int (*store_outbox_cb)(void *ud, const struct store_outbox_msg *m);
/* client_id's messages with seq > after, oldest first, at most limit
 * (negative: no limit); the views are valid during the call; a non-zero cb
 * return stops (and is returned).  An unknown device has no messages.  cb
 * may call back into the store. */
int store_outbox_load(struct store *st, const char *client_id, int64_t after, int64_t limit,
                      store_outbox_cb cb, void *ud);
/* Stats of client_id's outbox, or of the whole outbox when client_id is NULL.
 * STORE_NOTFOUND when client_id names no device. */
int store_outbox_stats(struct store *st, const char *client_id, struct store_outbox_stats *out);
typedef int (*store_outbox_client_cb)(void *ud, const char *client_id,
                                      const struct store_outbox_stats *s);
/* Every device that has messages, with its stats (one grouped query), in
 * ClientId order; a non-zero cb return stops (and is returned). */
int store_outbox_each_client(struct store *st, store_outbox_client_cb cb, void *ud);
/* Deletes client_id's messages with seq > after and created_ms < before_ms
 * (INT64_MAX: all of them), adding to *n and *bytes what it deleted. */
int store_outbox_discard(struct store *st, const char *client_id, int64_t after,
                         int64_t before_ms, int64_t *n, int64_t *bytes);
/* Deletes client_id's first message with seq > after (the drop-oldest
 * policy); *seq and *bytes say which and how big; STORE_NOTFOUND when none. */
int store_outbox_drop_first(struct store *st, const char *client_id, int64_t after,
                            int64_t *seq, int64_t *bytes);

/* ---- leaf sessions: what a restart must not lose (docs/outbox.md §8) ---- */
enum store_leaf_state { LEAF_DISCONNECTED = 0, LEAF_ACTIVE = 1, LEAF_ASLEEP = 2 };
struct store_leaf_session {
  const char *client_id;
  int state;                 /* enum store_leaf_state */
  bool clean;
  uint16_t keepalive;
  uint16_t sleep_s;
  const char *addr;          /* NULL: none */
  int via, sec;
  const char *will_topic;    /* NULL: no will; will_topic_len bytes */
  size_t will_topic_len;
  const uint8_t *will_msg;   /* may be NULL when will_msg_len is 0 */
  size_t will_msg_len;
  int will_qos;
  bool will_retain;
  uint16_t next_msg_id, next_topic_id;
};
/* Writes a leaf's session record (insert or replace the row) AND clears
 * its subscriptions, topics and downlink rows, so the caller then adds the
 * current ones with the three functions below: one snapshot per call, to
 * be run inside the caller's transaction.  STORE_NOTFOUND: no such device;
 * STORE_INVAL: out-of-range fields. */
int store_leaf_put(struct store *st, const struct store_leaf_session *s, int64_t now);
int store_leaf_sub_add(struct store *st, const char *client_id, const char *filter, size_t len, int qos);
int store_leaf_topic_add(struct store *st, const char *client_id, uint16_t topic_id, const char *name, size_t len, bool known);
int store_leaf_downlink_add(struct store *st, const char *client_id, const char *topic, size_t topic_len, const uint8_t *payload, size_t len, int qos, bool retain);
/* Deletes a leaf's record with its subscriptions, topics and downlink (STORE_OK when there was none). */
int store_leaf_delete(struct store *st, const char *client_id);
/* Every stored leaf session, in ClientId order: for each, sess() with the
 * record, then sub() for each subscription, topic() for each topic,
 * down() for each downlink message in seq order (any callback may be
 * NULL).  Views are valid during the call only.  A non-zero return of a
 * callback stops and is returned. */
struct store_leaf_cbs {
  int (*sess)(void *ud, const struct store_leaf_session *s);
  int (*sub)(void *ud, const char *client_id, const char *filter, size_t len, int qos);
  int (*topic)(void *ud, const char *client_id, uint16_t id, const char *name, size_t len, bool known);
  int (*down)(void *ud, const char *client_id, const char *topic, size_t topic_len, const uint8_t *payload, size_t len, int qos, bool retain);
};
int store_leaf_load(struct store *st, const struct store_leaf_cbs *cbs, void *ud);
/* How many leaf sessions are stored. */
int store_leaf_count(struct store *st, int64_t *n);

#endif
