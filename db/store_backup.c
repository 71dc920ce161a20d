/*
 * store_backup.c - a copy of the registry that is safe to take while the
 * gateway runs (`fleetgw backup DEST`), with the key file beside it.
 *
 * SQLite's online backup API copies the database page by page through its
 * own connection, so the running gateway's writes go on: a step that finds
 * the source changed by another connection starts over from the changed
 * pages, and a step that finds it locked waits (BACKUP_WAIT_MS) and tries
 * again.  What it copies is one consistent snapshot, WAL included; the copy
 * is a single file in rollback mode, checked with quick_check before it is
 * reported done.
 *
 * The registry's private keys are sealed with the key file (store_keys.c):
 * a copy without it is useless, a copy with it is as secret as the original,
 * so both are created 0600 and never overwrite anything.
 */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BACKUP_PAGES 256          /* pages per step */
#define BACKUP_WAIT_MS 20         /* after a step that met a lock */
#define BACKUP_TRIES 3000         /* steps that met a lock, in a row (about a minute) */
#define KEY_MAX 4096

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t cap, int rc,
                                                      const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return rc;
}

/* Creates path 0600, exclusively (an existing file is never overwritten). */
static int create_new(const char *path, char *err, size_t cap)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return fail(err, cap, STORE_IO, "cannot create %s: %s", path, strerror(errno));
  close(fd);
  return STORE_OK;
}

/* Copies the key file to dest (created 0600, exclusively), fsynced. */
static int copy_key(const char *key_file, const char *dest, char *err, size_t cap)
{
  unsigned char buf[KEY_MAX];
  ssize_t n, w;
  int in, out, rc = STORE_OK;

  in = open(key_file, O_RDONLY | O_CLOEXEC);
  if (in < 0)
    return fail(err, cap, STORE_IO, "cannot read the key file %s: %s", key_file,
                strerror(errno));
  n = read(in, buf, sizeof buf);
  close(in);
  if (n <= 0 || n == (ssize_t)sizeof buf) {
    memset(buf, 0, sizeof buf);
    return fail(err, cap, STORE_IO, "the key file %s is %s", key_file,
                n <= 0 ? "empty or unreadable" : "too large");
  }
  out = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    memset(buf, 0, sizeof buf);
    return fail(err, cap, STORE_IO, "cannot create %s: %s", dest, strerror(errno));
  }
  w = write(out, buf, (size_t)n);
  if (w != n || fsync(out) != 0)
    rc = fail(err, cap, STORE_IO, "cannot write %s: %s", dest, strerror(errno));
  if (close(out) != 0 && rc == STORE_OK)
    rc = fail(err, cap, STORE_IO, "cannot write %s: %s", dest, strerror(errno));
  memset(buf, 0, sizeof buf);
  if (rc != STORE_OK)
    unlink(dest);
  return rc;
}

/* Runs the backup from src to dst to the end. */
static int copy_pages(sqlite3 *src, sqlite3 *dst, struct store_backup_info *info, char *err,
                      size_t cap)
{
  sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
  int rc, tries = 0;

  if (!b)
    return fail(err, cap, STORE_IO, "cannot start the backup: %s", sqlite3_errmsg(dst));
  do {
    rc = sqlite3_backup_step(b, BACKUP_PAGES);
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
      if (++tries > BACKUP_TRIES)
        break;
      info->waits++;
      sqlite3_sleep(BACKUP_WAIT_MS);
    } else {
      tries = 0;
    }
    info->steps++;
  } while (rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED);
  info->pages = sqlite3_backup_pagecount(b);
  sqlite3_backup_finish(b);
  if (rc != SQLITE_DONE)
    return fail(err, cap, STORE_IO, "the backup did not finish: %s", sqlite3_errstr(rc));
  return STORE_OK;
}

static int quick_check(sqlite3 *db, char *err, size_t cap)
{
  sqlite3_stmt *s = NULL;
  int ok = 0;
  if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &s, NULL) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW)
    ok = strcmp((const char *)sqlite3_column_text(s, 0), "ok") == 0;
  sqlite3_finalize(s);
  return ok ? STORE_OK
            : fail(err, cap, STORE_CORRUPT, "the copy fails quick_check: %s", sqlite3_errmsg(db));
}

int store_backup(const char *src_path, const char *key_file, const char *dest,
                 struct store_backup_info *info, char *err, size_t cap)
{
  char key_dest[4096 + 8];
  sqlite3 *src = NULL, *dst = NULL;
  struct stat sb;
  int rc;

  memset(info, 0, sizeof *info);
  if (!src_path || !key_file || !dest || !*dest)
    return fail(err, cap, STORE_INVAL, "backup: source, key file and destination are required");
  if (snprintf(key_dest, sizeof key_dest, "%s.key", dest) >= (int)sizeof key_dest)
    return fail(err, cap, STORE_INVAL, "backup: destination path too long");
  if (stat(src_path, &sb) != 0)
    return fail(err, cap, STORE_IO, "cannot read the registry %s: %s", src_path, strerror(errno));
  if (stat(key_dest, &sb) == 0)
    return fail(err, cap, STORE_IO, "%s exists: not overwritten", key_dest);
  if ((rc = create_new(dest, err, cap)) != STORE_OK)
    return rc;
  /* Read-only: a backup never writes the registry (nor checkpoints it). */
  if (sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
      SQLITE_OK) {
    rc = fail(err, cap, STORE_IO, "cannot open the registry %s: %s", src_path,
              src ? sqlite3_errmsg(src) : "out of memory");
    goto out;
  }
  sqlite3_busy_timeout(src, 5000);
  if (sqlite3_open_v2(dest, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
      SQLITE_OK) {
    rc = fail(err, cap, STORE_IO, "cannot open %s: %s", dest,
              dst ? sqlite3_errmsg(dst) : "out of memory");
    goto out;
  }
  if ((rc = copy_pages(src, dst, info, err, cap)) != STORE_OK)
    goto out;
  /* The copy is one file: no -wal beside it to lose in transit. */
  if (sqlite3_exec(dst, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL) != SQLITE_OK) {
    rc = fail(err, cap, STORE_IO, "cannot finish %s: %s", dest, sqlite3_errmsg(dst));
    goto out;
  }
  if ((rc = quick_check(dst, err, cap)) != STORE_OK)
    goto out;
  rc = copy_key(key_file, key_dest, err, cap);
out:
  sqlite3_close(dst);
  sqlite3_close(src);
  if (rc != STORE_OK)
    unlink(dest);
  return rc;
}
