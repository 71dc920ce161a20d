/*
 * store.c - open/close, pragmas, transactions, the prepared-statement cache
 * and the mapping of SQLite result codes to store_err (see store.h).
 *
 * Every public write is atomic on its own: single-statement writes are atomic
 * by nature, and the multi-step ones run inside store_tx_begin/end, which
 * starts BEGIN IMMEDIATE (so the write lock is taken up front and a busy
 * database waits out busy_timeout instead of failing on lock upgrade) or, when
 * the caller holds a store_begin() transaction, a SAVEPOINT within it.
 */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUSY_TIMEOUT_MS 5000

const char *store_strerror(int err)
{
  switch (err) {
  case STORE_OK: return "ok";
  case STORE_NOTFOUND: return "not found";
  case STORE_CONFLICT: return "conflict (uniqueness constraint)";
  case STORE_IO: return "database or file error";
  case STORE_NOMEM: return "out of memory";
  case STORE_CRYPTO: return "key file unusable or stored key fails to decrypt";
  case STORE_CORRUPT: return "database corrupt or newer than this build";
  case STORE_INVAL: return "invalid argument";
  default: return "unknown error";
  }
}

/* The detail of the last failed store_open() on this thread, which has no
 * handle to carry it: store_errmsg(NULL) returns it. */
static _Thread_local char open_errmsg[512];

const char *store_errmsg(const struct store *st)
{
  return st ? st->errmsg : open_errmsg;
}

int store_fail(struct store *st, int err, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->errmsg, sizeof st->errmsg, fmt, ap);
  va_end(ap);
  return err;
}

static int map_rc(int rc)
{
  switch (rc) {
  case SQLITE_OK:
  case SQLITE_DONE:
  case SQLITE_ROW:
    return STORE_OK;
  case SQLITE_CONSTRAINT_UNIQUE:
  case SQLITE_CONSTRAINT_PRIMARYKEY:
    return STORE_CONFLICT;
  case SQLITE_NOMEM:
    return STORE_NOMEM;
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB:
    return STORE_CORRUPT;
  case SQLITE_TOOBIG:
  case SQLITE_RANGE:
  case SQLITE_MISMATCH:
    return STORE_INVAL;
  default:
    /* CHECK, NOT NULL and FOREIGN KEY failures mean a bad argument got past
     * our own validation; the schema refusing it is the backstop. */
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
      return STORE_INVAL;
    if ((rc & 0xff) == SQLITE_CORRUPT)
      return STORE_CORRUPT;
    if ((rc & 0xff) == SQLITE_NOMEM)
      return STORE_NOMEM;
    return STORE_IO;
  }
}

int store_sqlite_fail(struct store *st, int rc)
{
  int err = map_rc(rc);
  if (err == STORE_OK)
    return STORE_OK;
  /* SQLite's messages name tables, columns and constraints, never the bound
   * values, so key material cannot leak into them. */
  snprintf(st->errmsg, sizeof st->errmsg, "sqlite: %s (%d)",
           st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc), rc);
  return err;
}

/* ---- statements ---- */

int store_stmt(struct store *st, const char *sql, sqlite3_stmt **out)
{
  int rc;
  for (size_t i = 0; i < st->ncache; i++) {
    if (st->cache[i].sql == sql) {
      *out = st->cache[i].stmt;
      return STORE_OK;
    }
  }
  if (st->ncache == STORE_STMT_CACHE)
    return store_fail(st, STORE_IO, "statement cache full (%d)", STORE_STMT_CACHE);
  rc = sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
  if (rc != SQLITE_OK)
    return store_sqlite_fail(st, rc);
  st->cache[st->ncache].sql = sql;
  st->cache[st->ncache].stmt = *out;
  st->ncache++;
  return STORE_OK;
}

int store_stmt_fresh(struct store *st, const char *sql, sqlite3_stmt **out)
{
  int rc = sqlite3_prepare_v2(st->db, sql, -1, out, NULL);
  if (rc != SQLITE_OK) {
    *out = NULL;
    return store_sqlite_fail(st, rc);
  }
  return STORE_OK;
}

void store_stmt_done(sqlite3_stmt *s)
{
  /* reset() repeats the last step's error, which the caller has handled. */
  (void)sqlite3_reset(s);
  (void)sqlite3_clear_bindings(s);
}

int store_stmt_run(struct store *st, sqlite3_stmt *s)
{
  int rc = sqlite3_step(s);
  int err = rc == SQLITE_DONE || rc == SQLITE_ROW ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_exec(struct store *st, const char *sql)
{
  char *msg = NULL;
  int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    int err = map_rc(rc);
    snprintf(st->errmsg, sizeof st->errmsg, "sqlite: %s (%d)", msg ? msg : sqlite3_errstr(rc),
             rc);
    sqlite3_free(msg);
    return err == STORE_OK ? STORE_IO : err;
  }
  return STORE_OK;
}

int store_bind_opt_text(sqlite3_stmt *s, int idx, const char *text)
{
  if (!text || !*text)
    return sqlite3_bind_null(s, idx);
  return sqlite3_bind_text(s, idx, text, -1, SQLITE_STATIC);
}

/* The longest prefix of at most max bytes that does not end inside a UTF-8
 * sequence (continuation bytes are 10xxxxxx). */
static size_t utf8_cut(const char *s, size_t max)
{
  size_t n = strlen(s);
  if (n <= max)
    return n;
  n = max;
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
    n--;
  return n;
}

int store_bind_trunc_text(sqlite3_stmt *s, int idx, const char *text, size_t max)
{
  if (!text)
    return sqlite3_bind_null(s, idx);
  return sqlite3_bind_text(s, idx, text, (int)utf8_cut(text, max), SQLITE_STATIC);
}

void store_col_copy(char *dst, size_t cap, sqlite3_stmt *s, int col)
{
  const unsigned char *t = sqlite3_column_text(s, col);
  size_t n;
  if (!t) {
    dst[0] = '\0';
    return;
  }
  n = utf8_cut((const char *)t, cap - 1);
  memcpy(dst, t, n);
  dst[n] = '\0';
}

int store_check_str(struct store *st, const char *s, size_t max, bool required, const char *what)
{
  if (!s || !*s) {
    if (required)
      return store_fail(st, STORE_INVAL, "%s is empty", what);
    return STORE_OK;
  }
  if (strlen(s) > max)
    return store_fail(st, STORE_INVAL, "%s is longer than %zu bytes", what, max);
  return STORE_OK;
}

/* ---- transactions ---- */

int store_tx_begin(struct store *st, struct store_tx *tx)
{
  tx->outer = sqlite3_get_autocommit(st->db) != 0;
  return store_exec(st, tx->outer ? "BEGIN IMMEDIATE" : "SAVEPOINT store_atomic");
}

int store_tx_end(struct store *st, struct store_tx *tx, int rc)
{
  int err;
  if (rc == STORE_OK) {
    err = store_exec(st, tx->outer ? "COMMIT" : "RELEASE store_atomic");
    if (err == STORE_OK)
      return STORE_OK;
    rc = err;
  }
  /* Keep the first error's message: the rollback's own result is secondary. */
  {
    char saved[sizeof st->errmsg];
    memcpy(saved, st->errmsg, sizeof saved);
    if (tx->outer) {
      if (!sqlite3_get_autocommit(st->db))
        (void)store_exec(st, "ROLLBACK");
    } else {
      (void)store_exec(st, "ROLLBACK TO store_atomic");
      (void)store_exec(st, "RELEASE store_atomic");
    }
    memcpy(st->errmsg, saved, sizeof saved);
  }
  return rc;
}

/* The caller's transactions nest: the outermost is BEGIN IMMEDIATE, inner
 * ones are savepoints, so an inner rollback undoes only its own part. */
int store_begin(struct store *st)
{
  int err;
  if (st->depth > 0 && sqlite3_get_autocommit(st->db))
    st->depth = 0; /* SQLite rolled the transaction back on its own (e.g. disk full). */
  err = store_exec(st, st->depth == 0 ? "BEGIN IMMEDIATE" : "SAVEPOINT store_user");
  if (err == STORE_OK)
    st->depth++;
  return err;
}

int store_commit(struct store *st)
{
  int err;
  if (st->depth == 0)
    return store_fail(st, STORE_INVAL, "commit without begin");
  if (sqlite3_get_autocommit(st->db)) {
    st->depth = 0;
    return store_fail(st, STORE_IO, "transaction was rolled back by SQLite");
  }
  err = store_exec(st, st->depth == 1 ? "COMMIT" : "RELEASE store_user");
  if (err == STORE_OK)
    st->depth--;
  return err;
}

int store_rollback(struct store *st)
{
  int err;
  if (st->depth == 0)
    return store_fail(st, STORE_INVAL, "rollback without begin");
  if (sqlite3_get_autocommit(st->db)) {
    st->depth = 0;
    return STORE_OK;
  }
  if (st->depth == 1) {
    err = store_exec(st, "ROLLBACK");
  } else {
    err = store_exec(st, "ROLLBACK TO store_user");
    if (err == STORE_OK)
      err = store_exec(st, "RELEASE store_user");
  }
  st->depth--;
  return err;
}

/* ---- open / close ---- */

/* Creates the database file 0600 before SQLite sees it: it holds encrypted
 * keys and tokens, and SQLite gives its -wal and -shm files the main file's
 * permissions. */
static int precreate(struct store *st, const char *path)
{
  int fd;
  if (strcmp(path, ":memory:") == 0)
    return STORE_OK;
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    close(fd);
    return STORE_OK;
  }
  if (errno == EEXIST)
    return STORE_OK;
  return store_fail(st, STORE_IO, "cannot create %s: %s", path, strerror(errno));
}

static int set_pragmas(struct store *st, const struct store_opts *opts)
{
  static const char *const sync_sql[] = {"PRAGMA synchronous = OFF",
                                         "PRAGMA synchronous = NORMAL",
                                         "PRAGMA synchronous = FULL"};
  sqlite3_stmt *s;
  int err, sync = opts->synchronous;
  char mode[16] = "";

  if (sync < 0 || sync > 2)
    return store_fail(st, STORE_INVAL, "synchronous must be 0, 1 or 2 (got %d)", sync);
  sqlite3_busy_timeout(st->db, BUSY_TIMEOUT_MS);
  if ((err = store_exec(st, "PRAGMA foreign_keys = ON")) != STORE_OK)
    return err;
  /* journal_mode answers with the mode in force; a filesystem without shared
   * memory support would silently stay in rollback mode. */
  if ((err = store_stmt_fresh(st, "PRAGMA journal_mode = WAL", &s)) != STORE_OK)
    return err;
  if (sqlite3_step(s) == SQLITE_ROW)
    store_col_copy(mode, sizeof mode, s, 0);
  sqlite3_finalize(s);
  if (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0)
    return store_fail(st, STORE_IO, "cannot enable WAL mode (journal_mode is '%s')", mode);
  return store_exec(st, sync_sql[sync]);
}

/* Reads a meta value's presence: the key check written on first open. */
static int has_key_check(struct store *st, bool *present)
{
  sqlite3_stmt *s;
  int rc, err;
  if ((err = store_stmt_fresh(st, "SELECT 1 FROM meta WHERE name = 'key_check'", &s)) != STORE_OK)
    return err;
  rc = sqlite3_step(s);
  *present = rc == SQLITE_ROW;
  err = rc == SQLITE_ROW || rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  sqlite3_finalize(s);
  return err;
}

int store_open(const struct store_opts *opts, struct store **out)
{
  struct store *st;
  bool key_check = false;
  int rc, err;

  *out = NULL;
  if (!opts || !opts->path || !*opts->path || !opts->key_file || !*opts->key_file) {
    snprintf(open_errmsg, sizeof open_errmsg, "store_open: path and key_file are required");
    return STORE_INVAL;
  }
  st = calloc(1, sizeof *st);
  if (!st) {
    snprintf(open_errmsg, sizeof open_errmsg, "store_open: out of memory");
    return STORE_NOMEM;
  }
  if ((err = precreate(st, opts->path)) != STORE_OK)
    goto fail_free;
  rc = sqlite3_open_v2(opts->path, &st->db,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    err = store_sqlite_fail(st, rc);
    goto fail_close;
  }
  sqlite3_extended_result_codes(st->db, 1);
  if ((err = set_pragmas(st, opts)) != STORE_OK)
    goto fail_close;
  if ((err = store_migrate(st)) != STORE_OK)
    goto fail_close;
  /* A missing key file is created only for a database that holds no key
   * check yet: recreating it for an existing database would silently make
   * every stored private key undecryptable. */
  if ((err = has_key_check(st, &key_check)) != STORE_OK)
    goto fail_close;
  if ((err = store_keys_load(st, opts->key_file, !key_check)) != STORE_OK)
    goto fail_close;
  if ((err = store_keys_verify(st, opts->key_file)) != STORE_OK)
    goto fail_close;
  *out = st;
  return STORE_OK;

fail_close:
  for (size_t i = 0; i < st->ncache; i++)
    sqlite3_finalize(st->cache[i].stmt);
  sqlite3_close(st->db);
  store_keys_wipe(st);
fail_free:
  /* The caller gets no handle to read errmsg from, so the detail is kept for
   * store_errmsg(NULL). */
  memcpy(open_errmsg, st->errmsg, sizeof open_errmsg);
  free(st);
  return err;
}

void store_close(struct store *st)
{
  if (!st)
    return;
  for (size_t i = 0; i < st->ncache; i++)
    sqlite3_finalize(st->cache[i].stmt);
  /* An open store_begin() transaction is rolled back by close. */
  sqlite3_close(st->db);
  store_keys_wipe(st);
  free(st);
}

int store_schema_version(struct store *st)
{
  sqlite3_stmt *s;
  int v = -1;
  if (store_stmt(st, "PRAGMA user_version", &s) != STORE_OK)
    return STORE_IO;
  if (sqlite3_step(s) == SQLITE_ROW)
    v = sqlite3_column_int(s, 0);
  store_stmt_done(s);
  return v;
}

int64_t store_size_bytes(struct store *st)
{
  sqlite3_stmt *s;
  int64_t n = -1;
  static const char sql[] =
      "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()";
  if (store_stmt(st, sql, &s) != STORE_OK)
    return STORE_IO;
  if (sqlite3_step(s) == SQLITE_ROW)
    n = sqlite3_column_int64(s, 0);
  store_stmt_done(s);
  return n;
}
