/*
 * store.c - opening (file mode, pragmas, migrations, the key check) and
 * closing the registry.  The shared helpers (errors, statements,
 * transactions) are in store_util.c.
 */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define BUSY_TIMEOUT_MS 5000
#define STORE_WAL_KEEP_BYTES "1048576"

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
  if ((err = store_exec(st, sync_sql[sync])) != STORE_OK)
    return err;
  /* A burst (an outage's outbox, a fleet provisioning) can grow the -wal
   * file far past what the checkpoints keep it at; when a checkpoint lets
   * it start over, it is cut back to this (docs/outbox.md §9).  The
   * checkpoint thread raises it to its own bound (store_ckpt_start). */
  return store_exec(st, "PRAGMA journal_size_limit = " STORE_WAL_KEEP_BYTES);
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

/* Before SQLite's first use in the process: no allocation statistics, so an
 * allocation takes no global mutex (the registry never reads them). */
static void sqlite_setup(void)
{
  (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  (void)sqlite3_initialize();
}

int store_open(const struct store_opts *opts, struct store **out)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  struct store *st;
  bool key_check = false;
  int rc, err;

  *out = NULL;
  pthread_once(&once, sqlite_setup);
  if (!opts || !opts->path || !*opts->path || !opts->key_file || !*opts->key_file) {
    snprintf(store_open_errmsg, sizeof store_open_errmsg, "store_open: path and key_file are required");
    return STORE_INVAL;
  }
  st = calloc(1, sizeof *st);
  if (!st) {
    snprintf(store_open_errmsg, sizeof store_open_errmsg, "store_open: out of memory");
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
  if ((err = store_natural_register(st)) != STORE_OK)
    goto fail_close;
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
  /* The migrations that seal data waited for a key known to be the right
   * one (store_migrate.c). */
  if ((err = store_migrate(st)) != STORE_OK)
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
  memcpy(store_open_errmsg, st->errmsg, sizeof store_open_errmsg);
  free(st);
  return err;
}

void store_close(struct store *st)
{
  if (!st)
    return;
  /* Counted repeats are written before the end (store_audit_repeat). */
  if (st->repeats) {
    store_audit_flush(st, (int64_t)time(NULL), true);
    free(st->repeats);
    st->repeats = NULL;
  }
  store_ckpt_stop(st);
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

void store_set_busy_timeout(struct store *st, int ms)
{
  sqlite3_busy_timeout(st->db, ms < 0 ? 0 : ms);
}

int64_t store_free_bytes(struct store *st)
{
  struct statvfs v;
  const char *path = sqlite3_db_filename(st->db, "main");
  if (!path || !*path || statvfs(path, &v) != 0)
    return -1;
  return (int64_t)v.f_bavail * (int64_t)v.f_frsize;
}
