/*
 * store_certs.c - certificate rows and their encrypted private keys.
 *
 * "At most one active certificate per device" is the partial UNIQUE index
 * one_active_cert (store_migrate.c); this file never checks it by reading
 * first, it lets the index refuse the write, which SQLite reports as
 * SQLITE_CONSTRAINT_UNIQUE and store_sqlite_fail() maps to STORE_CONFLICT.
 */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

#define CERT_COLS                                                                      \
  "c.id, c.cert_id, d.client_id, c.status, coalesce(c.not_after, 0), c.fingerprint, " \
  "c.reason, c.created_at, c.updated_at"
#define CERT_FROM " FROM certificates c JOIN devices d ON d.id = c.device_id"

static const char *const cert_status_names[] = {"pending", "active", "orphaned", "superseded",
                                                "inactive"};
#define NSTATUS ((int)(sizeof cert_status_names / sizeof cert_status_names[0]))

const char *store_cert_status_name(int status)
{
  return status >= 0 && status < NSTATUS ? cert_status_names[status] : "unknown";
}

void store_cert_clear(struct store_cert *c)
{
  if (!c)
    return;
  free(c->pem);
  c->pem = NULL;
}

/* Fills c from a CERT_COLS row; the PEM (column 9, when selected) is copied
 * into a malloc'd string. */
static int read_cert(struct store *st, sqlite3_stmt *s, bool with_pem, struct store_cert *c)
{
  memset(c, 0, sizeof *c);
  c->id = sqlite3_column_int64(s, 0);
  store_col_copy(c->cert_id, sizeof c->cert_id, s, 1);
  store_col_copy(c->client_id, sizeof c->client_id, s, 2);
  c->status = sqlite3_column_int(s, 3);
  c->not_after = sqlite3_column_int64(s, 4);
  store_col_copy(c->fingerprint, sizeof c->fingerprint, s, 5);
  store_col_copy(c->reason, sizeof c->reason, s, 6);
  c->created_at = sqlite3_column_int64(s, 7);
  c->updated_at = sqlite3_column_int64(s, 8);
  if (with_pem) {
    const unsigned char *t = sqlite3_column_text(s, 9);
    size_t n = (size_t)sqlite3_column_bytes(s, 9);
    if (!t && sqlite3_errcode(st->db) == SQLITE_NOMEM)
      return store_fail(st, STORE_NOMEM, "out of memory reading a certificate");
    c->pem = malloc(n + 1);
    if (!c->pem)
      return store_fail(st, STORE_NOMEM, "out of memory copying a certificate");
    if (n)
      memcpy(c->pem, t, n);
    c->pem[n] = '\0';
  }
  return STORE_OK;
}

int store_cert_check_fields(struct store *st, const char *cert_id, const char *pem,
                            const char *key_pem, const char *fingerprint)
{
  int err;
  if ((err = store_check_str(st, cert_id, STORE_MAX_CERT_ID, true, "certificate id")) != STORE_OK ||
      (err = store_check_str(st, pem, STORE_MAX_PEM, true, "certificate PEM")) != STORE_OK ||
      (err = store_check_str(st, key_pem, STORE_MAX_PEM, false, "private key PEM")) != STORE_OK ||
      (err = store_check_str(st, fingerprint, STORE_MAX_FINGERPRINT, false, "fingerprint")) !=
          STORE_OK)
    return err;
  return STORE_OK;
}

int store_cert_insert_row(struct store *st, int64_t device_id, const char *cert_id,
                          const char *pem, const unsigned char *key_blob, size_t key_blob_len,
                          int64_t not_after, const char *fingerprint, int status, int64_t now)
{
  static const char sql[] =
      "INSERT INTO certificates(cert_id, device_id, status, pem, key_blob, not_after, "
      "fingerprint, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
  sqlite3_stmt *s;
  int err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, cert_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, device_id);
  sqlite3_bind_int(s, 3, status);
  sqlite3_bind_text(s, 4, pem, -1, SQLITE_STATIC);
  if (key_blob)
    sqlite3_bind_blob(s, 5, key_blob, (int)key_blob_len, SQLITE_STATIC);
  else
    sqlite3_bind_null(s, 5);
  sqlite3_bind_int64(s, 6, not_after);
  store_bind_opt_text(s, 7, fingerprint);
  sqlite3_bind_int64(s, 8, now);
  sqlite3_bind_int64(s, 9, now);
  return store_stmt_run(st, s);
}

int store_cert_insert(struct store *st, const char *client_id, const char *cert_id,
                      const char *pem, const char *key_pem, int64_t not_after,
                      const char *fingerprint, int status, int64_t now)
{
  unsigned char *blob = NULL;
  size_t blob_len = 0;
  int64_t device_id;
  int err;

  if (status != CERT_PENDING && status != CERT_ACTIVE)
    return store_fail(st, STORE_INVAL, "a new certificate is pending or active, not %d", status);
  if ((err = store_cert_check_fields(st, cert_id, pem, key_pem, fingerprint)) != STORE_OK ||
      (err = store_device_rowid(st, client_id, &device_id)) != STORE_OK)
    return err;
  if (key_pem && *key_pem &&
      (err = store_key_seal(st, client_id, key_pem, strlen(key_pem), &blob, &blob_len)) !=
          STORE_OK)
    return err;
  err = store_cert_insert_row(st, device_id, cert_id, pem, blob, blob_len, not_after,
                              fingerprint, status, now);
  free(blob);
  return err;
}

int store_cert_set_status(struct store *st, const char *cert_id, int status, const char *reason,
                          int64_t now)
{
  static const char sql[] =
      "UPDATE certificates SET status = ?, reason = ?, updated_at = ? WHERE cert_id = ?";
  sqlite3_stmt *s;
  int err;

  if (status < 0 || status >= NSTATUS)
    return store_fail(st, STORE_INVAL, "certificate status %d out of range", status);
  if ((err = store_check_str(st, cert_id, STORE_MAX_CERT_ID, true, "certificate id")) !=
          STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int(s, 1, status);
  store_bind_trunc_text(s, 2, reason && *reason ? reason : NULL, STORE_MAX_REASON);
  sqlite3_bind_int64(s, 3, now);
  sqlite3_bind_text(s, 4, cert_id, -1, SQLITE_STATIC);
  err = store_stmt_run(st, s);
  if (err == STORE_OK && sqlite3_changes(st->db) == 0)
    err = store_fail(st, STORE_NOTFOUND, "no certificate '%s'", cert_id);
  return err;
}

/* One certificate selected by a text key; the PEM column is selected only
 * when wanted, so listing pages never copy PEMs. */
static int get_one(struct store *st, const char *sql, const char *key, bool with_pem,
                   struct store_cert *out)
{
  sqlite3_stmt *s;
  int rc, err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    err = read_cert(st, s, with_pem, out);
  else if (rc == SQLITE_DONE)
    err = store_fail(st, STORE_NOTFOUND, "no such certificate for '%s'", key);
  else
    err = store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_cert_get_active(struct store *st, const char *client_id, bool with_pem,
                          struct store_cert *out)
{
  static const char sql[] =
      "SELECT " CERT_COLS ", c.pem" CERT_FROM " WHERE d.client_id = ? AND c.status = 1";
  static const char sql_nopem[] =
      "SELECT " CERT_COLS CERT_FROM " WHERE d.client_id = ? AND c.status = 1";
  int err = store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id");
  return err != STORE_OK ? err : get_one(st, with_pem ? sql : sql_nopem, client_id, with_pem, out);
}

int store_cert_get(struct store *st, const char *cert_id, bool with_pem, struct store_cert *out)
{
  static const char sql[] = "SELECT " CERT_COLS ", c.pem" CERT_FROM " WHERE c.cert_id = ?";
  static const char sql_nopem[] = "SELECT " CERT_COLS CERT_FROM " WHERE c.cert_id = ?";
  int err = store_check_str(st, cert_id, STORE_MAX_CERT_ID, true, "certificate id");
  return err != STORE_OK ? err : get_one(st, with_pem ? sql : sql_nopem, cert_id, with_pem, out);
}

int store_cert_key(struct store *st, const char *cert_id, char **key_pem)
{
  static const char sql[] = "SELECT c.key_blob, d.client_id" CERT_FROM " WHERE c.cert_id = ?";
  sqlite3_stmt *s;
  int rc, err;

  *key_pem = NULL;
  if ((err = store_check_str(st, cert_id, STORE_MAX_CERT_ID, true, "certificate id")) !=
          STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, cert_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
    char client_id[STORE_MAX_CLIENT_ID + 1];
    store_col_copy(client_id, sizeof client_id, s, 1);
    err = store_key_unseal(st, client_id, sqlite3_column_blob(s, 0),
                           (size_t)sqlite3_column_bytes(s, 0), key_pem);
  } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
    err = store_fail(st, STORE_NOTFOUND, "no stored key for certificate '%s'", cert_id);
  } else {
    err = store_sqlite_fail(st, rc);
  }
  store_stmt_done(s);
  return err;
}

int store_cert_count(struct store *st, const char *client_id, int status, int64_t *count)
{
  static const char sql[] = "SELECT count(*)" CERT_FROM
                            " WHERE (?1 IS NULL OR d.client_id = ?1) AND (?2 < 0 OR c.status = ?2)";
  sqlite3_stmt *s;
  int rc, err;

  *count = 0;
  if ((err = store_check_str(st, client_id, STORE_MAX_CLIENT_ID, false, "client id")) !=
          STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  store_bind_opt_text(s, 1, client_id); /* NULL: every device */
  sqlite3_bind_int(s, 2, status);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    *count = sqlite3_column_int64(s, 0);
  err = rc == SQLITE_ROW ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

/* The status filter of a certificate page: ?1, -1 for any. */
static void bind_cert_filter(sqlite3_stmt *s, const void *filter)
{
  sqlite3_bind_int(s, 1, *(const int *)filter);
}

/* The caller's callback, for store_page_list's row adapter. */
struct cert_sink {
  store_cert_cb cb;
  void *ud;
};

static int cert_page_row(struct store *st, sqlite3_stmt *s, void *ctx)
{
  const struct cert_sink *sink = ctx;
  struct store_cert c;
  (void)read_cert(st, s, false, &c); /* cannot fail without the PEM */
  return sink->cb(sink->ud, &c);
}

int store_cert_list(struct store *st, int status, int64_t offset, int64_t limit, store_cert_cb cb,
                    void *ud, int64_t *total)
{
  static const char count_sql[] = "SELECT count(*) FROM certificates WHERE ?1 < 0 OR status = ?1";
  static const char page_sql[] =
      "SELECT " CERT_COLS CERT_FROM " WHERE ?1 < 0 OR c.status = ?1 ORDER BY c.id DESC "
      "LIMIT :limit OFFSET :offset";
  struct cert_sink sink = {.cb = cb, .ud = ud};
  const struct store_page page = {.count_sql = count_sql,
                                  .page_sql = page_sql,
                                  .bind = bind_cert_filter,
                                  .filter = &status,
                                  .row = cb ? cert_page_row : NULL,
                                  .ctx = &sink};

  return store_page_list(st, &page, offset, limit, total);
}

int store_cert_expiry(struct store *st, int64_t now, int64_t before,
                      struct store_cert_expiry *out)
{
  /* status = 1 is a range of certificates_status (status, id): only the
   * active rows are visited. */
  static const char sql[] =
      "SELECT coalesce(min(not_after), 0), count(CASE WHEN not_after < ?1 THEN 1 END), "
      "count(CASE WHEN not_after < ?2 THEN 1 END), "
      "(SELECT coalesce(max(id), 0) FROM certificates) "
      "FROM certificates WHERE status = 1 AND not_after IS NOT NULL";
  sqlite3_stmt *s;
  int rc, err;

  memset(out, 0, sizeof *out);
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, before);
  sqlite3_bind_int64(s, 2, now);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    out->soonest = sqlite3_column_int64(s, 0);
    out->expiring = sqlite3_column_int64(s, 1);
    out->expired = sqlite3_column_int64(s, 2);
    out->max_id = sqlite3_column_int64(s, 3);
  }
  err = rc == SQLITE_ROW ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

struct expiring_filter {
  int64_t before, after_not_after, after_id;
};

static void bind_expiring(sqlite3_stmt *s, const void *filter)
{
  const struct expiring_filter *f = filter;
  sqlite3_bind_int64(s, 1, f->before);
  sqlite3_bind_int64(s, 2, f->after_not_after);
  sqlite3_bind_int64(s, 3, f->after_id);
}

int store_cert_expiring(struct store *st, int64_t before, int64_t after_not_after,
                        int64_t after_id, store_cert_cb cb, void *ud)
{
  static const char page_sql[] =
      "SELECT " CERT_COLS CERT_FROM " WHERE c.status = 1 AND c.not_after IS NOT NULL AND "
      "c.not_after < ?1 AND (c.not_after > ?2 OR c.id > ?3) ORDER BY c.not_after, c.id "
      "LIMIT :limit OFFSET :offset";
  struct expiring_filter f = {before, after_not_after, after_id};
  struct cert_sink sink = {.cb = cb, .ud = ud};
  const struct store_page page = {.count_sql = NULL,
                                  .page_sql = page_sql,
                                  .bind = bind_expiring,
                                  .filter = &f,
                                  .row = cb ? cert_page_row : NULL,
                                  .ctx = &sink};

  return store_page_list(st, &page, 0, -1, NULL);
}
