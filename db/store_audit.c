/*
 * store_audit.c - the append-only audit log and the admission allowlist.
 *
 * Audit rows are never updated; they are deleted only by the retention
 * (store_audit_prune), oldest first.  Rows a peer can repeat at will go
 * through store_audit_repeat, which counts repeats in memory and writes one
 * row per interval.  Free-text detail
 * is cut to fit struct store_audit rather than refused: an audit write must
 * not fail because a message was long.
 */
#include "store_int.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int store_audit(struct store *st, int64_t now, const char *actor, const char *action,
                const char *client_id, const char *detail)
{
  static const char sql[] =
      "INSERT INTO audit(at, actor, action, client_id, detail) VALUES (?, ?, ?, ?, ?)";
  sqlite3_stmt *s;
  int err;

  if ((err = store_check_str(st, actor, STORE_MAX_ACTOR, true, "audit actor")) != STORE_OK ||
      (err = store_check_str(st, action, STORE_MAX_ACTION, true, "audit action")) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, now);
  sqlite3_bind_text(s, 2, actor, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, action, -1, SQLITE_STATIC);
  store_bind_trunc_text(s, 4, client_id && *client_id ? client_id : NULL, STORE_MAX_CLIENT_ID);
  store_bind_trunc_text(s, 5, detail && *detail ? detail : NULL, STORE_MAX_DETAIL);
  return store_stmt_run(st, s);
}

/* ---- repeats ---- */

struct store_audit_repeat {
  uint64_t hash;             /* 0: the slot is free */
  int64_t first;             /* the written row's time: the interval starts */
  uint32_t count;            /* repeats since, not written yet */
  char actor[STORE_MAX_ACTOR + 1];
  char action[STORE_MAX_ACTION + 1];
  char client_id[STORE_MAX_CLIENT_ID + 1];
  char detail[384];          /* enough to tell reasons apart; the hash covers it all */
};

static uint64_t fnv(uint64_t h, const char *s)
{
  for (; s && *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return (h ^ 0xff) * 1099511628211ull; /* a separator, so "ab"+"c" != "a"+"bc" */
}

/* Writes slot r's count (if any) and frees it. */
static int repeat_write(struct store *st, struct store_audit_repeat *r, int64_t now)
{
  char text[STORE_MAX_DETAIL + 1];
  int err = STORE_OK;
  if (r->count > 0) {
    snprintf(text, sizeof text, "repeated %lu more times in %llds: %s", (unsigned long)r->count,
             (long long)(now - r->first), r->detail);
    err = store_audit(st, now, r->actor, r->action, r->client_id, text);
  }
  r->hash = 0;
  r->count = 0;
  return err;
}

int store_audit_repeat(struct store *st, int64_t now, const char *actor, const char *action,
                       const char *client_id, const char *detail)
{
  uint64_t h = fnv(fnv(fnv(fnv(1469598103934665603ull, actor), action), client_id), detail);
  struct store_audit_repeat *r, *free_slot = NULL, *oldest = NULL;

  if (h == 0)
    h = 1;
  if (!st->repeats) {
    st->repeats = calloc(STORE_AUDIT_REPEAT_SLOTS, sizeof *st->repeats);
    if (!st->repeats) /* no memory to count: every row is written */
      return store_audit(st, now, actor, action, client_id, detail);
  }
  for (size_t i = 0; i < STORE_AUDIT_REPEAT_SLOTS; i++) {
    r = &st->repeats[i];
    /* The hash finds the slot; ClientId and action must match too (only
     * the detail, kept cut short, is trusted to the hash). */
    if (r->hash == h && strcmp(r->client_id, client_id ? client_id : "") == 0 &&
        strcmp(r->action, action ? action : "") == 0) {
      if (now - r->first < STORE_AUDIT_REPEAT_S) {
        r->count++;
        return STORE_OK;
      }
      repeat_write(st, r, now); /* the interval is over: its count, then this one anew */
      free_slot = r;
      break;
    }
    if (!r->hash && !free_slot)
      free_slot = r;
    if (r->hash && (!oldest || r->first < oldest->first))
      oldest = r;
  }
  if (!free_slot) {
    repeat_write(st, oldest, now);
    free_slot = oldest;
  }
  r = free_slot;
  r->hash = h;
  r->first = now;
  r->count = 0;
  snprintf(r->actor, sizeof r->actor, "%s", actor ? actor : "");
  snprintf(r->action, sizeof r->action, "%s", action ? action : "");
  snprintf(r->client_id, sizeof r->client_id, "%s", client_id ? client_id : "");
  snprintf(r->detail, sizeof r->detail, "%s", detail ? detail : "");
  return store_audit(st, now, actor, action, client_id, detail);
}

int store_audit_flush(struct store *st, int64_t now, bool all)
{
  int err = STORE_OK;
  if (!st->repeats)
    return STORE_OK;
  for (size_t i = 0; i < STORE_AUDIT_REPEAT_SLOTS; i++) {
    struct store_audit_repeat *r = &st->repeats[i];
    if (r->hash && (all || now - r->first >= STORE_AUDIT_REPEAT_S)) {
      int e = repeat_write(st, r, now);
      if (e != STORE_OK)
        err = e;
    }
  }
  return err;
}

int store_audit_prune(struct store *st, int64_t max_rows, int64_t before, int64_t limit,
                      int64_t *deleted)
{
  /* Oldest first, by id (ids only grow); at most limit rows per call so one
   * call stays short on the loop. */
  static const char sql[] =
      "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE (?1 > 0 AND id <= "
      "(SELECT max(id) FROM audit) - ?1) OR (?2 > 0 AND at < ?2) ORDER BY id LIMIT ?3)";
  *deleted = 0;
  if (limit <= 0)
    return store_fail(st, STORE_INVAL, "prune limit must be positive");
  if (max_rows <= 0 && before <= 0)
    return STORE_OK;
  return store_delete_rows(st, sql, max_rows, before, limit, deleted);
}

/* The ClientId filter of an audit page: ?1, NULL for every row. */
static void bind_audit_filter(sqlite3_stmt *s, const void *filter)
{
  store_bind_opt_text(s, 1, filter);
}

/* The caller's callback, for store_page_list's row adapter. */
struct audit_sink {
  store_audit_cb cb;
  void *ud;
};

static int audit_page_row(struct store *st, sqlite3_stmt *s, void *ctx)
{
  const struct audit_sink *sink = ctx;
  struct store_audit a;
  memset(&a, 0, sizeof a);
  a.id = sqlite3_column_int64(s, 0);
  a.at = sqlite3_column_int64(s, 1);
  store_col_copy(a.actor, sizeof a.actor, s, 2);
  store_col_copy(a.action, sizeof a.action, s, 3);
  store_col_copy(a.client_id, sizeof a.client_id, s, 4);
  store_col_copy(a.detail, sizeof a.detail, s, 5);
  return sink->cb(sink->ud, &a);
}

int store_audit_list(struct store *st, const char *client_id, int64_t offset, int64_t limit,
                     store_audit_cb cb, void *ud, int64_t *total)
{
  static const char count_sql[] = "SELECT count(*) FROM audit WHERE ?1 IS NULL OR client_id = ?1";
  static const char page_sql[] = "SELECT id, at, actor, action, client_id, detail FROM audit "
                                 "WHERE ?1 IS NULL OR client_id = ?1 ORDER BY id DESC "
                                 "LIMIT :limit OFFSET :offset";
  struct audit_sink sink = {.cb = cb, .ud = ud};
  const struct store_page page = {.count_sql = count_sql,
                                  .page_sql = page_sql,
                                  .bind = bind_audit_filter,
                                  .filter = client_id,
                                  .row = cb ? audit_page_row : NULL,
                                  .ctx = &sink};
  int err;

  if ((err = store_check_str(st, client_id, STORE_MAX_CLIENT_ID, false, "client id")) != STORE_OK)
    return err;
  return store_page_list(st, &page, offset, limit, total);
}

/* ---- allowlist ---- */

int store_allow_add(struct store *st, const char *entry, int64_t now)
{
  static const char sql[] = "INSERT INTO allowlist(entry, added_at) VALUES (?, ?)";
  sqlite3_stmt *s;
  int err;
  if ((err = store_check_str(st, entry, STORE_MAX_CLIENT_ID, true, "allowlist entry")) !=
          STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, entry, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, now);
  return store_stmt_run(st, s); /* CONFLICT when already listed */
}

int store_allow_remove(struct store *st, const char *entry)
{
  static const char sql[] = "DELETE FROM allowlist WHERE entry = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = store_check_str(st, entry, STORE_MAX_CLIENT_ID, true, "allowlist entry")) !=
          STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, entry, -1, SQLITE_STATIC);
  err = store_stmt_run(st, s);
  if (err == STORE_OK && sqlite3_changes(st->db) == 0)
    err = store_fail(st, STORE_NOTFOUND, "'%s' is not in the allowlist", entry);
  return err;
}

/* An exact entry is one indexed lookup; only the entries that contain glob
 * metacharacters are scanned and matched with fnmatch(). */
int store_allow_match(struct store *st, const char *client_id)
{
  static const char exact_sql[] = "SELECT 1 FROM allowlist WHERE entry = ?";
  static const char glob_sql[] = "SELECT entry FROM allowlist WHERE instr(entry, '*') > 0 OR "
                                 "instr(entry, '?') > 0 OR instr(entry, '[') > 0";
  sqlite3_stmt *s;
  int rc, err, found = 0;

  if ((err = store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id")) != STORE_OK ||
      (err = store_stmt(st, exact_sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  err = rc == SQLITE_ROW || rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  if (err != STORE_OK || rc == SQLITE_ROW)
    return err != STORE_OK ? err : 1;

  if ((err = store_stmt(st, glob_sql, &s)) != STORE_OK)
    return err;
  while (!found && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    const char *pattern = (const char *)sqlite3_column_text(s, 0);
    if (pattern && fnmatch(pattern, client_id, 0) == 0)
      found = 1;
  }
  err = found || rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err != STORE_OK ? err : found;
}

/* The caller's callback, for store_each_row's row adapter. */
struct allow_sink {
  store_allow_cb cb;
  void *ud;
};

static int allow_row(struct store *st, sqlite3_stmt *s, void *ctx)
{
  const struct allow_sink *sink = ctx;
  const char *entry = (const char *)sqlite3_column_text(s, 0);
  return sink->cb(sink->ud, entry ? entry : "", sqlite3_column_int64(s, 1));
}

int store_allow_list(struct store *st, store_allow_cb cb, void *ud)
{
  static const char sql[] = "SELECT entry, added_at FROM allowlist ORDER BY entry";
  struct allow_sink sink = {.cb = cb, .ud = ud};
  sqlite3_stmt *s;
  int err;
  if (!cb)
    return store_fail(st, STORE_INVAL, "no callback");
  if ((err = store_stmt_fresh(st, sql, &s)) != STORE_OK)
    return err;
  return store_each_row(st, s, allow_row, &sink);
}
