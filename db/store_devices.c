/*
 * store_devices.c - device rows: creation, state, thing name, address
 * binding, provisioning errors and back-off, listing and counts.
 *
 * Uniqueness of ClientId and thing name is the schema's (UNIQUE columns), so
 * a conflicting write comes back as STORE_CONFLICT from the constraint rather
 * than from a check-then-write race.
 */
#include "store_int.h"

#include <string.h>

/* ---- natural order (the NATSORT collation) -------------------------------- */

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

int store_natural_cmp(const void *a, int alen, const void *b, int blen)
{
  const unsigned char *x = a, *y = b;
  int i = 0, j = 0, zeros = 0;

  while (i < alen && j < blen) {
    if (is_digit(x[i]) && is_digit(y[j])) {
      int si, sj, ni, nj;
      /* A run of digits is a number: its value counts, not its first digit.
       * Leading zeros are skipped (and only break a tie at the end), so a
       * number of any length compares without overflow: more significant
       * digits is larger, the same count compares digit by digit. */
      for (si = i; si < alen && x[si] == '0'; si++)
        ;
      for (sj = j; sj < blen && y[sj] == '0'; sj++)
        ;
      for (ni = si; ni < alen && is_digit(x[ni]); ni++)
        ;
      for (nj = sj; nj < blen && is_digit(y[nj]); nj++)
        ;
      if (ni - si != nj - sj)
        return ni - si < nj - sj ? -1 : 1;
      for (int k = 0; k < ni - si; k++)
        if (x[si + k] != y[sj + k])
          return x[si + k] < y[sj + k] ? -1 : 1;
      if (!zeros && si - i != sj - j)
        zeros = si - i < sj - j ? -1 : 1;
      i = ni;
      j = nj;
      continue;
    }
    if (x[i] != y[j])
      return x[i] < y[j] ? -1 : 1;
    i++;
    j++;
  }
  if (alen - i != blen - j)
    return alen - i < blen - j ? -1 : 1;
  /* Equal as numbers ("a01", "a1"): fewer leading zeros first, so that only
   * equal strings compare equal and a paged listing has one order. */
  return zeros;
}

static int collate_natural(void *ud, int alen, const void *a, int blen, const void *b)
{
  (void)ud;
  return store_natural_cmp(a, alen, b, blen);
}

int store_natural_register(struct store *st)
{
  int rc = sqlite3_create_collation_v2(st->db, "NATSORT", SQLITE_UTF8, NULL, collate_natural,
                                       NULL);
  return rc == SQLITE_OK ? STORE_OK : store_sqlite_fail(st, rc);
}

#define DEV_COLS                                                                     \
  "id, client_id, thing_name, state, bound_addr, first_seen, last_seen, last_error, " \
  "retry_at, attempts, lan_security, "                                               \
  "EXISTS (SELECT 1 FROM psks WHERE psks.device_id = devices.id)"

static const char *const dev_state_names[] = {"pending", "approved", "provisioning", "active",
                                              "failed",  "blocked",  "revoked"};
#define NSTATES ((int)(sizeof dev_state_names / sizeof dev_state_names[0]))

const char *store_dev_state_name(int state)
{
  return state >= 0 && state < NSTATES ? dev_state_names[state] : "unknown";
}

int store_dev_state_parse(const char *name)
{
  if (!name)
    return -1;
  for (int i = 0; i < NSTATES; i++)
    if (strcmp(name, dev_state_names[i]) == 0)
      return i;
  return -1;
}

static void read_device(sqlite3_stmt *s, struct store_device *d)
{
  int64_t attempts;
  memset(d, 0, sizeof *d);
  d->id = sqlite3_column_int64(s, 0);
  store_col_copy(d->client_id, sizeof d->client_id, s, 1);
  store_col_copy(d->thing_name, sizeof d->thing_name, s, 2);
  d->state = sqlite3_column_int(s, 3);
  store_col_copy(d->bound_addr, sizeof d->bound_addr, s, 4);
  d->first_seen = sqlite3_column_int64(s, 5);
  d->last_seen = sqlite3_column_int64(s, 6);
  store_col_copy(d->last_error, sizeof d->last_error, s, 7);
  d->retry_at = sqlite3_column_int64(s, 8);
  attempts = sqlite3_column_int64(s, 9);
  d->attempts = attempts < 0 ? 0 : attempts > UINT32_MAX ? UINT32_MAX : (uint32_t)attempts;
  store_col_copy(d->lan_security, sizeof d->lan_security, s, 10);
  d->has_psk = sqlite3_column_int(s, 11) != 0;
}

static int check_client_id(struct store *st, const char *client_id)
{
  return store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id");
}

static int check_state(struct store *st, int state)
{
  if (state < 0 || state >= NSTATES)
    return store_fail(st, STORE_INVAL, "device state %d out of range", state);
  return STORE_OK;
}

/* Runs a one-row SELECT of DEV_COLS keyed by one text parameter. */
static int get_one(struct store *st, const char *sql, const char *key, struct store_device *out)
{
  sqlite3_stmt *s;
  int rc, err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    if (out)
      read_device(s, out);
    err = STORE_OK;
  } else if (rc == SQLITE_DONE) {
    err = store_fail(st, STORE_NOTFOUND, "no device '%s'", key);
  } else {
    err = store_sqlite_fail(st, rc);
  }
  store_stmt_done(s);
  return err;
}

int store_device_get(struct store *st, const char *client_id, struct store_device *out)
{
  static const char sql[] = "SELECT " DEV_COLS " FROM devices WHERE client_id = ?";
  int err = check_client_id(st, client_id);
  return err != STORE_OK ? err : get_one(st, sql, client_id, out);
}

int store_device_get_by_thing(struct store *st, const char *thing_name, struct store_device *out)
{
  static const char sql[] = "SELECT " DEV_COLS " FROM devices WHERE thing_name = ?";
  int err = store_check_str(st, thing_name, STORE_MAX_THING, true, "thing name");
  return err != STORE_OK ? err : get_one(st, sql, thing_name, out);
}

int store_device_rowid(struct store *st, const char *client_id, int64_t *id)
{
  static const char sql[] = "SELECT id FROM devices WHERE client_id = ?";
  sqlite3_stmt *s;
  int rc, err = check_client_id(st, client_id);
  if (err != STORE_OK || (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    *id = sqlite3_column_int64(s, 0);
  } else if (rc == SQLITE_DONE) {
    err = store_fail(st, STORE_NOTFOUND, "no device '%s'", client_id);
  } else {
    err = store_sqlite_fail(st, rc);
  }
  store_stmt_done(s);
  return err;
}

int store_device_create(struct store *st, const char *client_id, int state, const char *bound_addr,
                        int64_t now, struct store_device *out)
{
  static const char sql[] = "INSERT INTO devices(client_id, state, bound_addr, first_seen, "
                            "last_seen) VALUES (?, ?, ?, ?, ?)";
  sqlite3_stmt *s;
  int err;

  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = check_state(st, state)) != STORE_OK ||
      (err = store_check_str(st, bound_addr, STORE_MAX_ADDR, false, "bound address")) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 2, state);
  store_bind_opt_text(s, 3, bound_addr);
  sqlite3_bind_int64(s, 4, now);
  sqlite3_bind_int64(s, 5, now);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    return err;
  if (out) {
    memset(out, 0, sizeof *out);
    out->id = sqlite3_last_insert_rowid(st->db);
    strcpy(out->client_id, client_id); /* length checked above */
    out->state = state;
    if (bound_addr)
      strcpy(out->bound_addr, bound_addr);
    out->first_seen = now;
    out->last_seen = now;
  }
  return STORE_OK;
}

/* Finishes an UPDATE keyed by ClientId: NOTFOUND when it matched no row. */
static int update_done(struct store *st, sqlite3_stmt *s, const char *client_id)
{
  int err = store_stmt_run(st, s);
  if (err == STORE_OK && sqlite3_changes(st->db) == 0)
    err = store_fail(st, STORE_NOTFOUND, "no device '%s'", client_id);
  return err;
}

int store_device_set_state(struct store *st, const char *client_id, int state)
{
  static const char sql[] = "UPDATE devices SET state = ? WHERE client_id = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = check_state(st, state)) != STORE_OK || (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int(s, 1, state);
  sqlite3_bind_text(s, 2, client_id, -1, SQLITE_STATIC);
  return update_done(st, s, client_id);
}

int store_device_set_error(struct store *st, const char *client_id, const char *error,
                           int64_t retry_at)
{
  static const char sql[] = "UPDATE devices SET last_error = ?, retry_at = ?, "
                            "attempts = attempts + 1 WHERE client_id = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  /* A cloud error message can be long; the first 511 bytes tell the story. */
  store_bind_trunc_text(s, 1, error && *error ? error : NULL, STORE_MAX_ERROR);
  sqlite3_bind_int64(s, 2, retry_at);
  sqlite3_bind_text(s, 3, client_id, -1, SQLITE_STATIC);
  return update_done(st, s, client_id);
}

int store_device_clear_error(struct store *st, const char *client_id)
{
  static const char sql[] = "UPDATE devices SET last_error = NULL, retry_at = 0, attempts = 0 "
                            "WHERE client_id = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  return update_done(st, s, client_id);
}

int store_device_set_thing(struct store *st, const char *client_id, const char *thing_name)
{
  static const char sql[] = "UPDATE devices SET thing_name = ? WHERE client_id = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = store_check_str(st, thing_name, STORE_MAX_THING, false, "thing name")) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  store_bind_opt_text(s, 1, thing_name); /* NULL or "" forgets the name */
  sqlite3_bind_text(s, 2, client_id, -1, SQLITE_STATIC);
  return update_done(st, s, client_id);
}

int store_device_bind(struct store *st, const char *client_id, const char *addr)
{
  static const char sql[] = "UPDATE devices SET bound_addr = ? WHERE client_id = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = store_check_str(st, addr, STORE_MAX_ADDR, false, "address")) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  store_bind_opt_text(s, 1, addr);
  sqlite3_bind_text(s, 2, client_id, -1, SQLITE_STATIC);
  return update_done(st, s, client_id);
}

int store_device_touch(struct store *st, const char *client_id, int64_t now)
{
  static const char sql[] = "UPDATE devices SET last_seen = ? WHERE client_id = ?";
  sqlite3_stmt *s;
  int err;
  if ((err = check_client_id(st, client_id)) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, now);
  sqlite3_bind_text(s, 2, client_id, -1, SQLITE_STATIC);
  return update_done(st, s, client_id);
}

int store_device_counts(struct store *st, int64_t counts[7])
{
  static const char sql[] = "SELECT state, count(*) FROM devices GROUP BY state";
  sqlite3_stmt *s;
  int rc, err;
  for (int i = 0; i < NSTATES; i++)
    counts[i] = 0;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int state = sqlite3_column_int(s, 0);
    if (state >= 0 && state < NSTATES)
      counts[state] = sqlite3_column_int64(s, 1);
  }
  err = rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_device_prune(struct store *st, int state, int64_t seen_before, int64_t limit,
                       int64_t *deleted)
{
  /* Only pending devices: a row in any other state may have certificates,
   * runs or an operator's decision hanging on it.  Nor one holding a DTLS
   * key: an operator made it for a leaf that may not have connected yet,
   * and deleting the device would delete the key with it
   * (docs/architecture.md §3). */
  static const char sql[] =
      "DELETE FROM devices WHERE id IN (SELECT id FROM devices WHERE state = ?1 AND "
      "last_seen < ?2 AND NOT EXISTS (SELECT 1 FROM psks WHERE psks.device_id = devices.id) "
      "ORDER BY last_seen LIMIT ?3)";
  int err;

  *deleted = 0;
  if (state != DEV_PENDING || limit <= 0)
    return store_fail(st, STORE_INVAL, "only pending devices are pruned");
  err = store_delete_rows(st, sql, state, seen_before, limit, deleted);
  if (*deleted > 0)
    store_devices_changed(st);
  return err;
}

/* The not-after of the device's active certificate, NULL without one: a
 * lookup in one_active_cert (the partial index on device_id WHERE status = 1). */
#define DEV_CERT_NOT_AFTER                                                            \
  "(SELECT c.not_after FROM certificates c WHERE c.device_id = devices.id AND "      \
  "c.status = 1)"

/* The filter shared by the page query and its count: ?1 state (-1 any), ?2
 * substring (NULL any), ?3 how the device last authenticated on the LAN
 * (NULL any, 'none' never connected).  instr() rather than LIKE: no wildcard
 * escaping, and matching is byte-exact like ClientIds themselves. */
#define DEV_FILTER                                                                    \
  " WHERE (?1 < 0 OR state = ?1) AND (?2 IS NULL OR instr(client_id, ?2) > 0 OR "      \
  "instr(coalesce(thing_name, ''), ?2) > 0) AND "                                     \
  "(?3 IS NULL OR coalesce(lan_security, 'none') = ?3) AND "                          \
  "(?4 <= 0 OR " DEV_CERT_NOT_AFTER " < ?4)"

static void bind_dev_filter(sqlite3_stmt *s, const void *filter)
{
  const struct store_device_filter *f = filter;
  sqlite3_bind_int(s, 1, f->state);
  store_bind_opt_text(s, 2, f->text);
  store_bind_opt_text(s, 3, f->lan_security);
  sqlite3_bind_int64(s, 4, f->cert_expires_before);
}

static bool lan_security_ok(const char *v)
{
  static const char *const known[] = {"none", "plain", "dtls-psk", "dtls-cert"};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(v, known[i]) == 0)
      return true;
  return false;
}

/* The caller's callback, for store_page_list's row adapter. */
struct dev_sink {
  store_device_cb cb;
  void *ud;
};

static int dev_page_row(struct store *st, sqlite3_stmt *s, void *ctx)
{
  const struct dev_sink *sink = ctx;
  struct store_device d;
  read_device(s, &d);
  return sink->cb(sink->ud, &d);
}

int store_device_list_where(struct store *st, const struct store_device_filter *where, int sort,
                            bool desc, int64_t offset, int64_t limit, store_device_cb cb,
                            void *ud, int64_t *total)
{
  static const char count_sql[] = "SELECT count(*) FROM devices" DEV_FILTER;
#define PAGE_SQL(order)                                                                            \
  "SELECT " DEV_COLS " FROM devices" DEV_FILTER " ORDER BY " order " LIMIT :limit OFFSET :offset"
  /* One fixed statement per order: nothing from the caller goes into SQL.
   * ClientIds and thing names in natural order ("leaf-2" before "leaf-10"),
   * a total order (only equal strings tie; ClientIds are unique), so the
   * pages follow one another. */
#define BY_ID "client_id COLLATE NATSORT"
  static const char *const page_sqls[][2] = {
      {PAGE_SQL(BY_ID), PAGE_SQL(BY_ID " DESC")},
      {PAGE_SQL("thing_name COLLATE NATSORT, " BY_ID),
       PAGE_SQL("thing_name COLLATE NATSORT DESC, " BY_ID " DESC")},
      {PAGE_SQL("state, " BY_ID), PAGE_SQL("state DESC, " BY_ID " DESC")},
      {PAGE_SQL("last_seen, " BY_ID), PAGE_SQL("last_seen DESC, " BY_ID " DESC")},
      {PAGE_SQL("first_seen, " BY_ID), PAGE_SQL("first_seen DESC, " BY_ID " DESC")},
      {PAGE_SQL(DEV_CERT_NOT_AFTER " IS NULL, " DEV_CERT_NOT_AFTER ", " BY_ID),
       PAGE_SQL(DEV_CERT_NOT_AFTER " IS NULL, " DEV_CERT_NOT_AFTER " DESC, " BY_ID " DESC")},
  };
#undef PAGE_SQL
#undef BY_ID
  struct store_device_filter filter = {
      .state = where->state,
      .text = where->text && *where->text ? where->text : NULL,
      .lan_security = where->lan_security && *where->lan_security ? where->lan_security : NULL,
      .cert_expires_before = where->cert_expires_before};
  struct dev_sink sink = {.cb = cb, .ud = ud};
  struct store_page page = {.count_sql = count_sql,
                            .bind = bind_dev_filter,
                            .filter = &filter,
                            .row = cb ? dev_page_row : NULL,
                            .ctx = &sink};

  if (sort < 0 || sort >= (int)(sizeof page_sqls / sizeof page_sqls[0]))
    return store_fail(st, STORE_INVAL, "sort order %d out of range", sort);
  page.page_sql = page_sqls[sort][desc ? 1 : 0];
  if (filter.state >= NSTATES || filter.state < -1)
    return store_fail(st, STORE_INVAL, "device state %d out of range", filter.state);
  if (filter.lan_security && !lan_security_ok(filter.lan_security))
    return store_fail(st, STORE_INVAL, "unknown LAN security filter");
  return store_page_list(st, &page, offset, limit, total);
}

int store_device_list_sorted(struct store *st, int state, const char *text, int sort, bool desc,
                             int64_t offset, int64_t limit, store_device_cb cb, void *ud,
                             int64_t *total)
{
  struct store_device_filter where = {.state = state, .text = text, .lan_security = NULL};
  return store_device_list_where(st, &where, sort, desc, offset, limit, cb, ud, total);
}

int store_device_list(struct store *st, int state, const char *text, int64_t offset,
                      int64_t limit, store_device_cb cb, void *ud, int64_t *total)
{
  return store_device_list_sorted(st, state, text, STORE_SORT_CLIENT_ID, false, offset, limit,
                                  cb, ud, total);
}
