/*
 * store_ckpt.c - WAL checkpoints off the caller's thread (docs/outbox.md
 * §9, "Where the SQLite work runs").
 *
 * SQLite's own auto-checkpoint runs inside the COMMIT that takes the WAL
 * past 1000 pages, on the connection that committed: for the gateway, on the
 * libuv loop, where one checkpoint (copy the pages, two fsyncs) held every
 * leaf for several milliseconds.  Here the writer's connection has
 * auto-checkpointing off, and a WAL hook (called after each commit with the
 * WAL's size) wakes a thread of our own, which checkpoints PASSIVE on a
 * connection of its own: it copies what no reader still needs, takes no
 * write lock, and never waits for the writer, which commits meanwhile.
 *
 * The WAL only starts again from its beginning when a writer finds every
 * frame copied back.  A pass that ends while commits kept coming leaves
 * some frames behind, so the hook keeps waking the thread after each commit
 * for as long as the WAL is past the threshold: a pass then starts right
 * after a commit, with the most time before the next.  Should that never
 * catch up (a disk slower than the writes), the WAL would grow: past
 * cap_pages the writer checkpoints itself, as SQLite would have, and the
 * stats count it (fallbacks), so the WAL stays bounded.
 *
 * store_close stops the thread (joins it, closes its connection) and then
 * checkpoints TRUNCATE on the writer's connection, so a clean stop leaves an
 * empty WAL.
 */
#include "store_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct store_ckpt {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  sqlite3 *db;                /* the thread's own connection */
  int pages, cap_pages;
  /* Under mu. */
  bool want, busy, stop;
  struct store_ckpt_stats stats;
};

static int64_t mono_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *ckpt_main(void *arg)
{
  struct store_ckpt *c = arg;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    int rc, n_log = -1, n_done = -1;
    int64_t t0, us;
    while (!c->want && !c->stop)
      pthread_cond_wait(&c->cv, &c->mu);
    if (c->stop)
      break;
    c->want = false;
    c->busy = true;
    pthread_mutex_unlock(&c->mu);
    t0 = mono_us();
    rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &n_log, &n_done);
    us = mono_us() - t0;
    pthread_mutex_lock(&c->mu);
    c->busy = false;
    c->stats.runs++;
    if (rc == SQLITE_OK && n_log >= 0 && n_done == n_log)
      c->stats.caught_up++;
    else if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
      c->stats.failures++;
    c->stats.last_us = us;
    if (us > c->stats.max_us)
      c->stats.max_us = us;
    c->stats.total_us += us;
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* After every commit on the writer's connection, with the WAL's size in
 * frames (pages). */
static int wal_hook(void *ud, sqlite3 *db, const char *name, int n)
{
  struct store_ckpt *c = ud;
  bool busy;
  if (n < c->pages)
    return SQLITE_OK;
  pthread_mutex_lock(&c->mu);
  if ((int64_t)n > c->stats.wal_pages_max)
    c->stats.wal_pages_max = n;
  busy = c->busy;
  if (!busy && !c->want && n < c->cap_pages) {
    c->want = true;
    pthread_cond_signal(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
  if (n >= c->cap_pages && !busy) {
    /* The thread has not caught up for cap_pages: once here, as SQLite's own
     * auto-checkpoint would, so the WAL restarts at the next commit. */
    int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    pthread_mutex_lock(&c->mu);
    c->stats.fallbacks++;
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
      c->stats.failures++;
    pthread_mutex_unlock(&c->mu);
  }
  return SQLITE_OK;
}

static void ckpt_free(struct store_ckpt *c)
{
  sqlite3_close(c->db);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

/* The database's page size (4096 when it cannot be read). */
static long long page_size(struct store *st)
{
  sqlite3_stmt *s;
  long long n = 4096;
  if (store_stmt(st, "PRAGMA page_size", &s) != STORE_OK)
    return n;
  if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_int64(s, 0) > 0)
    n = sqlite3_column_int64(s, 0);
  store_stmt_done(s);
  return n;
}

int store_ckpt_start(struct store *st, int pages, int cap_pages)
{
  struct store_ckpt *c;
  sqlite3_stmt *s = NULL;
  const char *path = sqlite3_db_filename(st->db, "main");
  int rc, err;

  if (st->ckpt)
    return store_fail(st, STORE_INVAL, "the checkpoint thread runs already");
  if (pages < 1 || cap_pages < pages)
    return store_fail(st, STORE_INVAL, "checkpoint pages %d, cap %d: need 1 <= pages <= cap",
                      pages, cap_pages);
  if (!path || !*path)
    return STORE_OK; /* an in-memory database has no WAL */
  if (!(c = calloc(1, sizeof *c)))
    return store_fail(st, STORE_NOMEM, "out of memory");
  c->pages = pages;
  c->cap_pages = cap_pages;
  if (pthread_mutex_init(&c->mu, NULL) != 0) {
    free(c);
    return store_fail(st, STORE_NOMEM, "cannot create a mutex");
  }
  if (pthread_cond_init(&c->cv, NULL) != 0) {
    pthread_mutex_destroy(&c->mu);
    free(c);
    return store_fail(st, STORE_NOMEM, "cannot create a condition variable");
  }
  rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  /* One read opens the connection's WAL (a checkpoint on a connection that
   * never read does nothing); the statement is finalized at once, so it
   * holds no snapshot. */
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(c->db, "SELECT count(*) FROM sqlite_schema", -1, &s, NULL);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(s);
    rc = rc == SQLITE_ROW ? SQLITE_OK : rc;
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_OK) {
    err = store_fail(st, STORE_IO, "cannot open the checkpoint connection: %s",
                     c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
    ckpt_free(c);
    return err;
  }
  if ((err = store_exec(st, "PRAGMA wal_autocheckpoint = 0")) != STORE_OK) {
    ckpt_free(c);
    return err;
  }
  /* The WAL is bounded by cap_pages now, so it keeps the size it reached up
   * to that bound: the writer that starts it over then neither truncates
   * the file (an ftruncate of megabytes, milliseconds on the loop) nor makes
   * the next frames extend it again.  Only what is past the bound is cut. */
  {
    char sql[80];
    long long keep = ((long long)cap_pages + pages) * (page_size(st) + 24);
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld", keep);
    if ((err = store_exec(st, sql)) != STORE_OK) {
      ckpt_free(c);
      (void)store_exec(st, "PRAGMA wal_autocheckpoint = 1000");
      return err;
    }
  }
  if (pthread_create(&c->thread, NULL, ckpt_main, c) != 0) {
    ckpt_free(c);
    (void)store_exec(st, "PRAGMA wal_autocheckpoint = 1000");
    return store_fail(st, STORE_NOMEM, "cannot start the checkpoint thread");
  }
  /* Replaces the auto-checkpoint's own hook (they share the slot). */
  sqlite3_wal_hook(st->db, wal_hook, c);
  st->ckpt = c;
  return STORE_OK;
}

void store_ckpt_stats(struct store *st, struct store_ckpt_stats *out)
{
  struct store_ckpt *c = st->ckpt;
  memset(out, 0, sizeof *out);
  if (!c)
    return;
  pthread_mutex_lock(&c->mu);
  *out = c->stats;
  pthread_mutex_unlock(&c->mu);
}

void store_ckpt_stop(struct store *st)
{
  struct store_ckpt *c = st->ckpt;
  if (!c)
    return;
  sqlite3_wal_hook(st->db, NULL, NULL);
  pthread_mutex_lock(&c->mu);
  c->stop = true;
  pthread_cond_signal(&c->cv);
  pthread_mutex_unlock(&c->mu);
  pthread_join(c->thread, NULL);
  ckpt_free(c);
  st->ckpt = NULL;
  /* Everything back into the database file and the WAL emptied. */
  (void)sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
}
