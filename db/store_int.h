/*
 * store_int.h - db-internal: the struct store definition and the helpers the
 * files in db/ share (statement cache, error mapping, atomic sections, field
 * validation, key sealing, row loops and paged listings).  Included only by
 * the files in db/ and db's own unit tests.
 */
#ifndef FLEETGW_STORE_INT_H
#define FLEETGW_STORE_INT_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define STORE_KEY_LEN 32
/* Enough for every distinct SQL text in db/ (about 40 today); the cache
 * refuses, with an error, rather than grow without bound. */
#define STORE_STMT_CACHE 96

/* Field limits; the struct arrays in store.h hold these plus a NUL. */
#define STORE_MAX_CLIENT_ID 255
#define STORE_MAX_THING 128
#define STORE_MAX_ADDR 63
#define STORE_MAX_ERROR 511
#define STORE_MAX_CERT_ID 128
#define STORE_MAX_FINGERPRINT 64
#define STORE_MAX_REASON 255
#define STORE_MAX_BACKEND 15
#define STORE_MAX_TOKEN 2047
#define STORE_MAX_ACTOR 63
#define STORE_MAX_ACTION 63
#define STORE_MAX_DETAIL 1023
/* PEMs (certificate or private key) beyond this are not certificates. */
#define STORE_MAX_PEM (64 * 1024)

struct store_stmt_slot {
  const char *sql; /* identity of the cached statement: the static SQL text */
  sqlite3_stmt *stmt;
};

struct store {
  sqlite3 *db;
  int depth;                          /* store_begin() nesting */
  unsigned char key[STORE_KEY_LEN];   /* the key-file key; wiped on close */
  bool have_key;
  struct store_stmt_slot cache[STORE_STMT_CACHE];
  size_t ncache;
  struct store_ckpt *ckpt;            /* the checkpoint thread, or NULL */
  struct store_audit_repeat *repeats; /* store_audit_repeat's slots, or NULL */
  /* The generation of device row ids that callers cache (struct
   * store_devref): bumped whenever a devices row may have gone, by this
   * connection (every DELETE FROM devices must call store_devices_changed)
   * or by another one (PRAGMA data_version moved, checked at most once a
   * transaction: inside BEGIN IMMEDIATE no other connection commits). */
  uint64_t dev_gen;
  uint64_t tx_serial;                 /* outer transactions begun */
  uint64_t dv_tx;                     /* tx_serial when data_version was last read */
  int64_t data_version;
  char errmsg[512];
};

/* Invalidates every cached struct store_devref (a devices row was deleted). */
void store_devices_changed(struct store *st);
/* Brings dev_gen up to date with other connections' commits (see above). */
int store_devices_sync(struct store *st);

/* ---- errors (store.c) ---- */

/* Records a detail message and returns err, so callers can `return store_fail(...)`. */
__attribute__((format(printf, 3, 4))) int store_fail(struct store *st, int err,
                                                     const char *fmt, ...);
/* Maps a SQLite result code to a store_err and records SQLite's message. */
int store_sqlite_fail(struct store *st, int rc);

/* ---- statements (store.c) ---- */

/* A cached prepared statement for a static SQL text (the pointer is the key).
 * Release it with store_stmt_done() before returning, so it holds no read
 * snapshot.  Listing functions whose callbacks may re-enter the store use
 * store_stmt_fresh() + sqlite3_finalize() instead. */
int store_stmt(struct store *st, const char *sql, sqlite3_stmt **out);
int store_stmt_fresh(struct store *st, const char *sql, sqlite3_stmt **out);
void store_stmt_done(sqlite3_stmt *s);
/* Steps a statement that returns no row, maps the result, releases it. */
int store_stmt_run(struct store *st, sqlite3_stmt *s);
/* A DELETE of at most three int64 parameters (?1..?3), run; *changes says
 * how many rows it deleted. */
int store_delete_rows(struct store *st, const char *sql, int64_t p1, int64_t p2, int64_t p3,
                      int64_t *changes);
/* Runs SQL text without parameters (pragmas, migrations, transaction control). */
int store_exec(struct store *st, const char *sql);

/* Binds text, or NULL for a NULL or empty string. */
int store_bind_opt_text(sqlite3_stmt *s, int idx, const char *text);
/* Binds text cut to at most max bytes on a UTF-8 boundary (NULL stays NULL). */
int store_bind_trunc_text(sqlite3_stmt *s, int idx, const char *text, size_t max);
/* Copies a text column into a fixed array, truncating; NULL becomes "". */
void store_col_copy(char *dst, size_t cap, sqlite3_stmt *s, int col);

/* ---- atomic sections (store.c) ---- */

/* An atomic section is BEGIN IMMEDIATE .. COMMIT when no transaction is open,
 * or a SAVEPOINT inside the caller's store_begin() transaction. */
struct store_tx {
  bool outer;
};
int store_tx_begin(struct store *st, struct store_tx *tx);
/* Commits when rc == STORE_OK, rolls back otherwise; returns rc, or the
 * commit's error. */
int store_tx_end(struct store *st, struct store_tx *tx, int rc);

/* ---- validation (store.c) ---- */

/* STORE_INVAL (with a message naming `what`) when s is NULL/empty and
 * required, or longer than max bytes. */
int store_check_str(struct store *st, const char *s, size_t max, bool required, const char *what);

/* ---- migrations (store_migrate.c) ---- */

/* Brings the schema up to date.  A step that seals data needs the key, so
 * store_migrate stops before it while none is loaded: store_open runs it
 * before loading the key, and again once the key checks out. */
int store_migrate(struct store *st);
int store_migrations_latest(void);

/* ---- checkpoints (store_ckpt.c) ---- */

/* Stops the checkpoint thread, if any, and checkpoints TRUNCATE on st's own
 * connection (store_close). */
void store_ckpt_stop(struct store *st);

/* ---- devices (store_devices.c) ---- */

/* The row id of a device; STORE_NOTFOUND if the ClientId is unknown. */
int store_device_rowid(struct store *st, const char *client_id, int64_t *id);

/* ---- certificates (store_certs.c) ---- */

/* Inserts a certificate row with an already sealed key blob (or none). */
int store_cert_insert_row(struct store *st, int64_t device_id, const char *cert_id,
                          const char *pem, const unsigned char *key_blob, size_t key_blob_len,
                          int64_t not_after, const char *fingerprint, int status, int64_t now);
int store_cert_check_fields(struct store *st, const char *cert_id, const char *pem,
                            const char *key_pem, const char *fingerprint);

/* ---- keys (store_keys.c: the only file that uses OpenSSL) ---- */

/* Loads the key file; creates it (32 random bytes, 0600) when absent and
 * may_create.  STORE_CRYPTO for any unusable key file. */
int store_keys_load(struct store *st, const char *path, bool may_create);
/* Checks the key against the database's key-check value, or stores one. */
int store_keys_verify(struct store *st, const char *path);
void store_keys_wipe(struct store *st);
/* Encrypts plain (len bytes) with AAD; *blob = version || nonce || ct || tag,
 * malloc'd (ciphertext, not secret: free()). */
int store_key_seal(struct store *st, const char *aad, const void *plain, size_t len,
                   unsigned char **blob, size_t *blob_len);
/* Decrypts a blob into a NUL-terminated malloc'd secret; free it with
 * secret_free() (common/secret.h). */
int store_key_unseal(struct store *st, const char *aad, const void *blob, size_t blob_len,
                     char **plain);

/* A text secret of one kind (prefix, e.g. "fleetgw:psk:") sealed like a key
 * for the device client_id, the prefix and the ClientId as associated data;
 * unsealed into out[cap] (STORE_CRYPTO when it fails to authenticate or
 * does not fit; the caller wipes out). */
int store_bound_seal(struct store *st, const char *prefix, const char *client_id,
                     const char *text, unsigned char **blob, size_t *blob_len);
int store_bound_unseal(struct store *st, const char *prefix, const char *client_id,
                       const void *blob, size_t blob_len, char *out, size_t cap);
extern const char store_psk_aad_prefix[];

/* An ownership token sealed like a key (store_key_seal) for the device
 * client_id, under associated data of its own; the blob is ciphertext
 * (free()). */
int store_token_seal(struct store *st, const char *client_id, const char *token,
                     unsigned char **blob, size_t *blob_len);
/* Opens a sealed token into out[cap]; STORE_CRYPTO when it fails to
 * authenticate or does not fit.  The caller wipes out (secret_wipe). */
int store_token_unseal(struct store *st, const char *client_id, const void *blob,
                       size_t blob_len, char *out, size_t cap);

/* Steps a bound "SELECT count(*)" statement into *total and releases it. */
int store_count_done(struct store *st, sqlite3_stmt *s, int64_t *total);

/* ---- listings (store_util.c) ---- */

/* Reads the current row of a listing and hands it to the caller's callback,
 * returning that callback's result: 0 goes on, a positive value stops
 * without an error, a negative one stops and is returned. */
typedef int (*store_row_fn)(struct store *st, sqlite3_stmt *s, void *ctx);

/* Steps s, a bound fresh statement (store_stmt_fresh, so that row may
 * re-enter the store), handing each row to row(st, s, ctx) as above, and
 * finalizes it.  Returns STORE_OK, the negative answer of row, or the
 * stepping error. */
int store_each_row(struct store *st, sqlite3_stmt *s, store_row_fn row, void *ctx);

/*
 * One paged listing (devices, certificates, audit): a count query and a page
 * query over the same filter.  The filter's parameters are bound by `bind`
 * in both; the page query ends in "LIMIT :limit OFFSET :offset", which
 * store_page_list binds by name, so the filter may use any numbered
 * parameters before them.
 */
struct store_page {
  const char *count_sql; /* "SELECT count(*) ... <filter>" */
  const char *page_sql;  /* "SELECT <cols> ... <filter> ORDER BY ... LIMIT :limit OFFSET :offset" */
  void (*bind)(sqlite3_stmt *s, const void *filter);
  const void *filter;
  store_row_fn row; /* NULL when the caller wants only the total */
  void *ctx;
};

/* Refuses a negative offset (STORE_INVAL); stores the filter's row count in
 * *total when total is not NULL; then, unless row is NULL or limit is 0,
 * hands row each of at most limit rows (negative: no limit) after skipping
 * offset.  The page runs on a fresh statement, so row may re-enter the
 * store. */
int store_page_list(struct store *st, const struct store_page *p, int64_t offset, int64_t limit,
                    int64_t *total);

/* Why the last store_open() on this thread failed (store_errmsg(NULL)). */
extern _Thread_local char store_open_errmsg[512];

#endif
