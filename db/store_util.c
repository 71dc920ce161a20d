/*
 * store_util.c - what every file of db/ shares, below all of them: errors
 * and the mapping of SQLite result codes to store_err, the prepared-statement
 * cache, binding and column helpers, transactions, and the paged listing
 * that the device, certificate and audit lists share.  It calls no other
 * file of db/, so the module's files depend on each other one way:
 * store.c -> store_migrate.c -> store_keys.c -> store_util.c.
 *
 * Every public write is atomic on its own: single-statement writes are atomic
 * by nature, and the multi-step ones run inside store_tx_begin/end, which
 * starts BEGIN IMMEDIATE (so the write lock is taken up front and a busy
 * database waits out busy_timeout instead of failing on lock upgrade) or, when
 * the caller holds a store_begin() transaction, a SAVEPOINT within it.
 */
#include "store_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
  case STORE_BUSY: return "registry busy (locked by another connection)";
  default: return "unknown error";
  }
}

/* The detail of the last failed store_open() on this thread, which has no
 * handle to carry it: store_errmsg(NULL) returns it. */
_Thread_local char store_open_errmsg[512];

const char *store_errmsg(const struct store *st)
{
  return st ? st->errmsg : store_open_errmsg;
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
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return STORE_BUSY;
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
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
      return STORE_BUSY;
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

int store_delete_rows(struct store *st, const char *sql, int64_t p1, int64_t p2, int64_t p3,
                      int64_t *changes)
{
  sqlite3_stmt *s;
  int err;
  *changes = 0;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, p1);
  sqlite3_bind_int64(s, 2, p2);
  sqlite3_bind_int64(s, 3, p3);
  if ((err = store_stmt_run(st, s)) == STORE_OK)
    *changes = sqlite3_changes(st->db);
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
/* BEGIN and COMMIT of the outer transaction run as cached statements: the
 * outbox's group commit begins and commits hundreds of times a second, and
 * sqlite3_exec would parse them every time. */
static int exec_cached(struct store *st, const char *sql)
{
  sqlite3_stmt *s;
  int err = store_stmt(st, sql, &s);
  return err != STORE_OK ? err : store_stmt_run(st, s);
}

int store_begin(struct store *st)
{
  static const char begin_sql[] = "BEGIN IMMEDIATE";
  int err;
  if (st->depth > 0 && sqlite3_get_autocommit(st->db))
    st->depth = 0; /* SQLite rolled the transaction back on its own (e.g. disk full). */
  err = st->depth == 0 ? exec_cached(st, begin_sql) : store_exec(st, "SAVEPOINT store_user");
  if (err == STORE_OK) {
    if (st->depth == 0)
      st->tx_serial++;
    st->depth++;
  }
  return err;
}

void store_devices_changed(struct store *st)
{
  st->dev_gen++;
}

int store_devices_sync(struct store *st)
{
  static const char sql[] = "PRAGMA data_version";
  sqlite3_stmt *s;
  int rc, err;
  int64_t v;

  /* Read once per transaction; outside one, every time. */
  if (st->depth > 0 && st->dv_tx == st->tx_serial)
    return STORE_OK;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) {
    err = store_sqlite_fail(st, rc);
    store_stmt_done(s);
    return err;
  }
  v = sqlite3_column_int64(s, 0);
  store_stmt_done(s);
  if (v != st->data_version) {
    st->data_version = v;
    st->dev_gen++;
  }
  st->dv_tx = st->tx_serial;
  return STORE_OK;
}

int store_commit(struct store *st)
{
  static const char commit_sql[] = "COMMIT";
  int err;
  if (st->depth == 0)
    return store_fail(st, STORE_INVAL, "commit without begin");
  if (sqlite3_get_autocommit(st->db)) {
    st->depth = 0;
    return store_fail(st, STORE_IO, "transaction was rolled back by SQLite");
  }
  err = st->depth == 1 ? exec_cached(st, commit_sql) : store_exec(st, "RELEASE store_user");
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

int store_count_done(struct store *st, sqlite3_stmt *s, int64_t *total)
{
  int rc = sqlite3_step(s), err;
  *total = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
  err = rc == SQLITE_ROW ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_page_list(struct store *st, const struct store_page *p, int64_t offset, int64_t limit,
                    int64_t *total)
{
  sqlite3_stmt *s;
  int err;

  if (offset < 0)
    return store_fail(st, STORE_INVAL, "negative offset");
  if (total) {
    if ((err = store_stmt(st, p->count_sql, &s)) != STORE_OK)
      return err;
    p->bind(s, p->filter);
    if ((err = store_count_done(st, s, total)) != STORE_OK)
      return err;
  }
  if (!p->row || limit == 0)
    return STORE_OK;
  /* A fresh statement, not a cached one: the row callback may call back
   * into the store, which could otherwise reset this statement under us. */
  if ((err = store_stmt_fresh(st, p->page_sql, &s)) != STORE_OK)
    return err;
  p->bind(s, p->filter);
  /* SQLite reads a negative LIMIT as "no limit". */
  sqlite3_bind_int64(s, sqlite3_bind_parameter_index(s, ":limit"), limit < 0 ? -1 : limit);
  sqlite3_bind_int64(s, sqlite3_bind_parameter_index(s, ":offset"), offset);
  return store_each_row(st, s, p->row, p->ctx);
}

int store_each_row(struct store *st, sqlite3_stmt *s, store_row_fn row, void *ctx)
{
  int rc, err;

  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int r = row(st, s, ctx);
    if (r != 0) {
      /* A negative callback result is passed on; a positive one just stops. */
      sqlite3_finalize(s);
      return r < 0 ? r : STORE_OK;
    }
  }
  err = rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  sqlite3_finalize(s);
  return err;
}
