/*
 * store_journal.c - the provisioning journal: one `runs` row per attempt,
 * its step written BEFORE the action it announces (see store.h), so that on
 * start-up every unfinished run can be resumed or abandoned.  The schema
 * keeps at most one unfinished run per device (one_open_run) and appends
 * every step to run_steps by trigger.
 *
 * The ownership token is a bearer secret (docs/protocol-notes.md §5.5): it
 * is kept for a resume after a crash (docs/architecture.md §4.2), sealed like
 * the private keys (store_token_seal, store_keys.c) in runs.token_blob, and
 * the plaintext never reaches the database; reading a run opens it again.
 *
 * When a run finishes, its copy of the private key and its ownership token
 * are erased: the key lives on with the certificate (or dies with an orphaned
 * one), and a token is a short-lived secret nobody needs afterwards.
 */
#include "store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret.h"

#define RUN_COLS                                                                          \
  "r.id, d.client_id, r.backend, r.step, r.finished, r.cert_id, r.token_blob, "           \
  "coalesce(r.token_at, 0), r.thing_name, r.started_at, r.updated_at, r.outcome, r.kind, " \
  "r.old_cert_id"
#define RUN_FROM " FROM runs r JOIN devices d ON d.id = r.device_id"

static const char *const step_names[] = {"started",       "key-ready",     "csr-sent",
                                         "cert-received", "register-sent", "registered",
                                         "done",          "failed"};
#define NSTEPS ((int)(sizeof step_names / sizeof step_names[0]))

const char *store_run_step_name(int step)
{
  return step >= 0 && step < NSTEPS ? step_names[step] : "unknown";
}

/* Reads a run row, opening its sealed token; on an error r holds nothing. */
static int read_run(struct store *st, sqlite3_stmt *s, struct store_run *r)
{
  int err = STORE_OK;
  memset(r, 0, sizeof *r);
  r->id = sqlite3_column_int64(s, 0);
  store_col_copy(r->client_id, sizeof r->client_id, s, 1);
  store_col_copy(r->backend, sizeof r->backend, s, 2);
  r->step = sqlite3_column_int(s, 3);
  r->finished = sqlite3_column_int(s, 4) != 0;
  store_col_copy(r->cert_id, sizeof r->cert_id, s, 5);
  if (sqlite3_column_type(s, 6) != SQLITE_NULL)
    err = store_token_unseal(st, r->client_id, sqlite3_column_blob(s, 6),
                             (size_t)sqlite3_column_bytes(s, 6), r->token, sizeof r->token);
  r->token_at = sqlite3_column_int64(s, 7);
  store_col_copy(r->thing_name, sizeof r->thing_name, s, 8);
  r->started_at = sqlite3_column_int64(s, 9);
  r->updated_at = sqlite3_column_int64(s, 10);
  store_col_copy(r->outcome, sizeof r->outcome, s, 11);
  r->kind = sqlite3_column_int(s, 12);
  store_col_copy(r->old_cert_id, sizeof r->old_cert_id, s, 13);
  if (err != STORE_OK)
    secret_wipe(r, sizeof *r);
  return err;
}

/* What the atomic operations need to know about a run before writing. */
struct run_state {
  int64_t device_id;
  char client_id[STORE_MAX_CLIENT_ID + 1];
  char cert_id[STORE_MAX_CERT_ID + 1];
  bool finished;
  int kind;
  unsigned char *key_blob; /* malloc'd copy, or NULL */
  size_t key_blob_len;
};

static void run_state_clear(struct run_state *rs)
{
  free(rs->key_blob); /* ciphertext: no need to wipe */
  rs->key_blob = NULL;
}

/* Loads a run; NOTFOUND if none, INVAL if it is finished and open_only. */
static int load_run(struct store *st, int64_t run_id, bool open_only, bool want_key,
                    struct run_state *rs)
{
  static const char sql[] = "SELECT r.device_id, d.client_id, r.cert_id, r.finished, r.key_blob, "
                            "r.kind" RUN_FROM " WHERE r.id = ?";
  sqlite3_stmt *s;
  int rc, err = store_stmt(st, sql, &s);

  memset(rs, 0, sizeof *rs);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, run_id);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    rs->device_id = sqlite3_column_int64(s, 0);
    store_col_copy(rs->client_id, sizeof rs->client_id, s, 1);
    store_col_copy(rs->cert_id, sizeof rs->cert_id, s, 2);
    rs->finished = sqlite3_column_int(s, 3) != 0;
    rs->kind = sqlite3_column_int(s, 5);
    if (want_key && sqlite3_column_type(s, 4) != SQLITE_NULL) {
      const void *b = sqlite3_column_blob(s, 4);
      rs->key_blob_len = (size_t)sqlite3_column_bytes(s, 4);
      rs->key_blob = malloc(rs->key_blob_len ? rs->key_blob_len : 1);
      if (!rs->key_blob)
        err = store_fail(st, STORE_NOMEM, "out of memory reading run %lld", (long long)run_id);
      else if (b)
        memcpy(rs->key_blob, b, rs->key_blob_len);
    }
    if (err == STORE_OK && open_only && rs->finished)
      err = store_fail(st, STORE_INVAL, "run %lld is already finished", (long long)run_id);
  } else if (rc == SQLITE_DONE) {
    err = store_fail(st, STORE_NOTFOUND, "no run %lld", (long long)run_id);
  } else {
    err = store_sqlite_fail(st, rc);
  }
  store_stmt_done(s);
  if (err != STORE_OK)
    run_state_clear(rs);
  return err;
}

int store_run_begin(struct store *st, const char *client_id, const char *backend, int64_t now,
                    int64_t *run_id)
{
  static const char sql[] = "INSERT INTO runs(device_id, backend, step, finished, started_at, "
                            "updated_at) VALUES (?, ?, 0, 0, ?, ?)";
  sqlite3_stmt *s;
  int64_t device_id;
  int err;

  if ((err = store_check_str(st, backend, STORE_MAX_BACKEND, true, "backend")) != STORE_OK ||
      (err = store_device_rowid(st, client_id, &device_id)) != STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, device_id);
  sqlite3_bind_text(s, 2, backend, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, now);
  sqlite3_bind_int64(s, 4, now);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    return err;
  if (run_id)
    *run_id = sqlite3_last_insert_rowid(st->db);
  return STORE_OK;
}

int store_run_begin_rotation(struct store *st, const char *client_id, const char *backend,
                             int64_t now, int64_t *run_id)
{
  /* The device and its active certificate in one read: a rotation replaces
   * a certificate that is in use, of a device that is ACTIVE. */
  static const char dev_sql[] =
      "SELECT d.id, d.state, c.cert_id FROM devices d "
      "LEFT JOIN certificates c ON c.device_id = d.id AND c.status = 1 WHERE d.client_id = ?";
  static const char sql[] =
      "INSERT INTO runs(device_id, backend, step, finished, started_at, updated_at, kind, "
      "old_cert_id) VALUES (?, ?, 0, 0, ?, ?, 1, ?)";
  char old_cert[STORE_MAX_CERT_ID + 1] = "";
  struct store_tx tx;
  sqlite3_stmt *s;
  int64_t device_id = 0;
  int rc, state = -1, err;

  if ((err = store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id")) !=
          STORE_OK ||
      (err = store_check_str(st, backend, STORE_MAX_BACKEND, true, "backend")) != STORE_OK ||
      (err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  if ((err = store_stmt(st, dev_sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    device_id = sqlite3_column_int64(s, 0);
    state = sqlite3_column_int(s, 1);
    store_col_copy(old_cert, sizeof old_cert, s, 2);
  } else if (rc != SQLITE_DONE) {
    err = store_sqlite_fail(st, rc);
  }
  store_stmt_done(s);
  if (err != STORE_OK)
    goto out_tx;
  if (!device_id) {
    err = store_fail(st, STORE_NOTFOUND, "no device '%s'", client_id);
    goto out_tx;
  }
  if (state != DEV_ACTIVE) {
    err = store_fail(st, STORE_CONFLICT, "device '%s' is %s, not active", client_id,
                     store_dev_state_name(state));
    goto out_tx;
  }
  if (!old_cert[0]) {
    err = store_fail(st, STORE_NOTFOUND, "device '%s' has no active certificate", client_id);
    goto out_tx;
  }
  /* one_open_run makes this CONFLICT while the device has a run open. */
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_int64(s, 1, device_id);
  sqlite3_bind_text(s, 2, backend, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, now);
  sqlite3_bind_int64(s, 4, now);
  sqlite3_bind_text(s, 5, old_cert, -1, SQLITE_STATIC);
  if ((err = store_stmt_run(st, s)) == STORE_OK && run_id)
    *run_id = sqlite3_last_insert_rowid(st->db);
out_tx:
  return store_tx_end(st, &tx, err);
}

int store_run_get(struct store *st, int64_t run_id, struct store_run *out)
{
  static const char sql[] = "SELECT " RUN_COLS RUN_FROM " WHERE r.id = ?";
  sqlite3_stmt *s;
  int rc, err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, run_id);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    err = read_run(st, s, out);
  else if (rc == SQLITE_DONE)
    err = store_fail(st, STORE_NOTFOUND, "no run %lld", (long long)run_id);
  else
    err = store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

/* The one run a per-device query finds (?1: the ClientId); NOTFOUND with
 * `none` when there is none. */
static int device_run(struct store *st, const char *sql, const char *client_id,
                      struct store_run *out, const char *none)
{
  sqlite3_stmt *s;
  int rc, err;
  if ((err = store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id")) !=
          STORE_OK ||
      (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    err = read_run(st, s, out);
  else if (rc == SQLITE_DONE)
    err = store_fail(st, STORE_NOTFOUND, "no %s run for '%s'", none, client_id);
  else
    err = store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_run_get_open(struct store *st, const char *client_id, struct store_run *out)
{
  static const char sql[] =
      "SELECT " RUN_COLS RUN_FROM " WHERE d.client_id = ? AND r.finished = 0";
  return device_run(st, sql, client_id, out, "unfinished");
}

int store_run_last_rotation(struct store *st, const char *client_id, struct store_run *out)
{
  static const char sql[] = "SELECT " RUN_COLS RUN_FROM
                            " WHERE d.client_id = ? AND r.kind = 1 ORDER BY r.id DESC LIMIT 1";
  return device_run(st, sql, client_id, out, "rotation");
}

/* Moves an unfinished run to a step.  NOTFOUND for no such run, INVAL for a
 * finished one (finishing goes through complete/fail). */
static int set_step(struct store *st, int64_t run_id, int step, int64_t now)
{
  static const char sql[] =
      "UPDATE runs SET step = ?, updated_at = ? WHERE id = ? AND finished = 0";
  sqlite3_stmt *s;
  struct run_state rs;
  int err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_int(s, 1, step);
  sqlite3_bind_int64(s, 2, now);
  sqlite3_bind_int64(s, 3, run_id);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    return err;
  if (sqlite3_changes(st->db) == 1)
    return STORE_OK;
  /* No row changed: say whether the run is missing or finished. */
  err = load_run(st, run_id, true, false, &rs);
  run_state_clear(&rs);
  return err != STORE_OK ? err : store_fail(st, STORE_IO, "run %lld did not change", (long long)run_id);
}

int store_run_set_step(struct store *st, int64_t run_id, int step, int64_t now)
{
  if (step < RUN_STARTED || step >= RUN_DONE)
    return store_fail(st, STORE_INVAL,
                      "step %d: use store_run_complete/store_run_fail to finish a run", step);
  return set_step(st, run_id, step, now);
}

int store_run_set_key(struct store *st, int64_t run_id, const char *key_pem, int64_t now)
{
  static const char sql[] = "UPDATE runs SET key_blob = ? WHERE id = ?";
  struct store_tx tx;
  struct run_state rs;
  unsigned char *blob = NULL;
  size_t blob_len = 0;
  sqlite3_stmt *s;
  int err;

  memset(&rs, 0, sizeof rs);
  if ((err = store_check_str(st, key_pem, STORE_MAX_PEM, true, "private key PEM")) != STORE_OK ||
      (err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  if ((err = load_run(st, run_id, true, false, &rs)) != STORE_OK)
    goto out_tx;
  if ((err = store_key_seal(st, rs.client_id, key_pem, strlen(key_pem), &blob, &blob_len)) !=
      STORE_OK)
    goto out_tx;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_blob(s, 1, blob, (int)blob_len, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, run_id);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    goto out_tx;
  err = set_step(st, run_id, RUN_KEY_READY, now);
out_tx:
  free(blob);
  run_state_clear(&rs);
  return store_tx_end(st, &tx, err);
}

int store_run_key(struct store *st, int64_t run_id, char **key_pem)
{
  struct run_state rs;
  int err;
  *key_pem = NULL;
  if ((err = load_run(st, run_id, false, true, &rs)) != STORE_OK)
    return err;
  if (!rs.key_blob)
    err = store_fail(st, STORE_NOTFOUND, "run %lld holds no key", (long long)run_id);
  else
    err = store_key_unseal(st, rs.client_id, rs.key_blob, rs.key_blob_len, key_pem);
  run_state_clear(&rs);
  return err;
}

int store_run_cert_received(struct store *st, int64_t run_id, const char *cert_id,
                            const char *pem, const char *key_pem, int64_t not_after,
                            const char *fingerprint, const char *token, int64_t now)
{
  static const char sql[] =
      "UPDATE runs SET cert_id = ?, token_blob = ?, token_at = ? WHERE id = ?";
  struct store_tx tx;
  struct run_state rs;
  unsigned char *blob = NULL, *token_blob = NULL;
  size_t blob_len = 0, token_blob_len = 0;
  sqlite3_stmt *s;
  int err;

  memset(&rs, 0, sizeof rs);
  if ((err = store_cert_check_fields(st, cert_id, pem, key_pem, fingerprint)) != STORE_OK ||
      (err = store_check_str(st, token, STORE_MAX_TOKEN, false, "ownership token")) != STORE_OK ||
      (err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  if ((err = load_run(st, run_id, true, true, &rs)) != STORE_OK)
    goto out_tx;
  if (key_pem && *key_pem) {
    /* CreateKeysAndCertificate: the key came with the certificate. */
    err = store_key_seal(st, rs.client_id, key_pem, strlen(key_pem), &blob, &blob_len);
    if (err != STORE_OK)
      goto out_tx;
  } else if (rs.key_blob) {
    /* The run's key was sealed with the same key and the same ClientId as
     * AAD, so the blob moves to the certificate as it is. */
    blob = rs.key_blob;
    blob_len = rs.key_blob_len;
    rs.key_blob = NULL;
  }
  err = store_cert_insert_row(st, rs.device_id, cert_id, pem, blob, blob_len, not_after,
                              fingerprint, CERT_PENDING, now);
  if (err == STORE_OK && token && *token)
    err = store_token_seal(st, rs.client_id, token, &token_blob, &token_blob_len);
  if (err != STORE_OK || (err = store_stmt(st, sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_text(s, 1, cert_id, -1, SQLITE_STATIC);
  if (token_blob)
    sqlite3_bind_blob(s, 2, token_blob, (int)token_blob_len, SQLITE_STATIC);
  else
    sqlite3_bind_null(s, 2);
  sqlite3_bind_int64(s, 3, now);
  sqlite3_bind_int64(s, 4, run_id);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    goto out_tx;
  err = set_step(st, run_id, RUN_CERT_RECEIVED, now);
out_tx:
  free(blob);
  free(token_blob); /* ciphertext */
  run_state_clear(&rs);
  return store_tx_end(st, &tx, err);
}

int store_run_registered(struct store *st, int64_t run_id, const char *thing_name, int64_t now)
{
  static const char dev_sql[] = "UPDATE devices SET thing_name = ? WHERE id = ?";
  static const char run_sql[] = "UPDATE runs SET thing_name = ? WHERE id = ?";
  static const char same_sql[] = "SELECT 1 FROM devices WHERE id = ? AND thing_name = ?";
  struct store_tx tx;
  struct run_state rs;
  sqlite3_stmt *s;
  int err;

  memset(&rs, 0, sizeof rs);
  if ((err = store_check_str(st, thing_name, STORE_MAX_THING, true, "thing name")) != STORE_OK ||
      (err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  if ((err = load_run(st, run_id, true, false, &rs)) != STORE_OK)
    goto out_tx;
  if (rs.kind == RUN_ROTATE) {
    /* The cloud must have attached the new certificate to the device's own
     * thing; any other name means the rotation template is wrong. */
    if ((err = store_stmt(st, same_sql, &s)) != STORE_OK)
      goto out_tx;
    sqlite3_bind_int64(s, 1, rs.device_id);
    sqlite3_bind_text(s, 2, thing_name, -1, SQLITE_STATIC);
    err = sqlite3_step(s) == SQLITE_ROW
              ? STORE_OK
              : store_fail(st, STORE_CONFLICT, "rotation registered thing '%s', not the device's",
                           thing_name);
    store_stmt_done(s);
    if (err != STORE_OK)
      goto out_tx;
  } else {
    if ((err = store_stmt(st, dev_sql, &s)) != STORE_OK)
      goto out_tx;
    sqlite3_bind_text(s, 1, thing_name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, rs.device_id);
    if ((err = store_stmt_run(st, s)) != STORE_OK)
      goto out_tx;
  }
  if ((err = store_stmt(st, run_sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_text(s, 1, thing_name, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, run_id);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    goto out_tx;
  err = set_step(st, run_id, RUN_REGISTERED, now);
out_tx:
  run_state_clear(&rs);
  return store_tx_end(st, &tx, err);
}

/* Marks a run finished at a final step; erases its key copy and token. */
static int finish_run(struct store *st, int64_t run_id, int step, const char *outcome,
                      int64_t now)
{
  static const char sql[] =
      "UPDATE runs SET step = ?, finished = 1, outcome = ?, key_blob = NULL, token_blob = NULL, "
      "updated_at = ? WHERE id = ? AND finished = 0";
  sqlite3_stmt *s;
  int err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_int(s, 1, step);
  store_bind_trunc_text(s, 2, outcome, STORE_MAX_REASON);
  sqlite3_bind_int64(s, 3, now);
  sqlite3_bind_int64(s, 4, run_id);
  err = store_stmt_run(st, s);
  if (err == STORE_OK && sqlite3_changes(st->db) != 1)
    err = store_fail(st, STORE_IO, "run %lld did not finish", (long long)run_id);
  return err;
}

int store_run_complete(struct store *st, int64_t run_id, int64_t now)
{
  static const char cert_sql[] =
      "UPDATE certificates SET status = 1, reason = NULL, updated_at = ? "
      "WHERE cert_id = ? AND device_id = ?";
  static const char dev_sql[] = "UPDATE devices SET state = 3, last_error = NULL, retry_at = 0, "
                                "attempts = 0 WHERE id = ?";
  static const char rot_dev_sql[] =
      "UPDATE devices SET last_error = NULL WHERE id = ? AND state = 3";
  static const char supersede_sql[] =
      "UPDATE certificates SET status = 3, reason = ?, updated_at = ? "
      "WHERE device_id = ? AND status = 1";
  struct store_tx tx;
  struct run_state rs;
  sqlite3_stmt *s;
  int err;

  memset(&rs, 0, sizeof rs);
  if ((err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  if ((err = load_run(st, run_id, true, false, &rs)) != STORE_OK)
    goto out_tx;
  if (!rs.cert_id[0]) {
    err = store_fail(st, STORE_INVAL, "run %lld has no certificate to activate",
                     (long long)run_id);
    goto out_tx;
  }
  if (rs.kind == RUN_ROTATE) {
    /* The certificate in use steps aside first, in this transaction: the
     * device never has two active, and never none after a crash. */
    char reason[STORE_MAX_CERT_ID + 32];
    snprintf(reason, sizeof reason, "rotated: replaced by %s", rs.cert_id);
    if ((err = store_stmt(st, supersede_sql, &s)) != STORE_OK)
      goto out_tx;
    sqlite3_bind_text(s, 1, reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_int64(s, 3, rs.device_id);
    if ((err = store_stmt_run(st, s)) != STORE_OK)
      goto out_tx;
  }
  /* The one_active_cert index refuses this UPDATE (CONFLICT) when the device
   * already has another active certificate; the rollback below then leaves
   * the run, the device and the certificate as they were. */
  if ((err = store_stmt(st, cert_sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_int64(s, 1, now);
  sqlite3_bind_text(s, 2, rs.cert_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, rs.device_id);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    goto out_tx;
  if (sqlite3_changes(st->db) != 1) {
    err = store_fail(st, STORE_NOTFOUND, "certificate '%s' of run %lld is gone", rs.cert_id,
                     (long long)run_id);
    goto out_tx;
  }
  /* A rotation leaves the device as it is, and only an ACTIVE one: one
   * blocked or revoked meanwhile does not come back by its rotation. */
  if ((err = store_stmt(st, rs.kind == RUN_ROTATE ? rot_dev_sql : dev_sql, &s)) != STORE_OK)
    goto out_tx;
  sqlite3_bind_int64(s, 1, rs.device_id);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    goto out_tx;
  if (rs.kind == RUN_ROTATE && sqlite3_changes(st->db) != 1) {
    err = store_fail(st, STORE_CONFLICT, "device of run %lld is no longer active",
                     (long long)run_id);
    goto out_tx;
  }
  err = finish_run(st, run_id, RUN_DONE, "ok", now);
out_tx:
  run_state_clear(&rs);
  return store_tx_end(st, &tx, err);
}

int store_run_fail(struct store *st, int64_t run_id, const char *outcome, int64_t now)
{
  static const char cert_sql[] =
      "UPDATE certificates SET status = 2, reason = ?, updated_at = ? "
      "WHERE cert_id = ? AND status <> 1";
  struct store_tx tx;
  struct run_state rs;
  sqlite3_stmt *s;
  int err;

  memset(&rs, 0, sizeof rs);
  if ((err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  if ((err = load_run(st, run_id, true, false, &rs)) != STORE_OK)
    goto out_tx;
  if (rs.cert_id[0]) {
    /* Issued but never made active: the cloud holds a certificate nobody
     * will use, so list it for clean-up. */
    if ((err = store_stmt(st, cert_sql, &s)) != STORE_OK)
      goto out_tx;
    store_bind_trunc_text(s, 1, outcome && *outcome ? outcome : "provisioning failed",
                          STORE_MAX_REASON);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_text(s, 3, rs.cert_id, -1, SQLITE_STATIC);
    if ((err = store_stmt_run(st, s)) != STORE_OK)
      goto out_tx;
  }
  err = finish_run(st, run_id, RUN_FAILED, outcome, now);
out_tx:
  run_state_clear(&rs);
  return store_tx_end(st, &tx, err);
}

/* The caller's callback, for store_each_row's row adapter. */
struct run_sink {
  store_run_cb cb;
  void *ud;
};

static int run_row(struct store *st, sqlite3_stmt *s, void *ctx)
{
  const struct run_sink *sink = ctx;
  struct store_run r;
  int rc = read_run(st, s, &r);
  if (rc != STORE_OK)
    return rc;
  rc = sink->cb(sink->ud, &r);
  secret_wipe(r.token, sizeof r.token);
  return rc;
}

int store_run_list_open(struct store *st, store_run_cb cb, void *ud)
{
  static const char sql[] = "SELECT " RUN_COLS RUN_FROM " WHERE r.finished = 0 ORDER BY r.id";
  struct run_sink sink = {.cb = cb, .ud = ud};
  sqlite3_stmt *s;
  int err;

  if (!cb)
    return store_fail(st, STORE_INVAL, "no callback");
  /* A fresh statement: the callback will usually call back into the store
   * (resume or fail the run it was handed). */
  if ((err = store_stmt_fresh(st, sql, &s)) != STORE_OK)
    return err;
  return store_each_row(st, s, run_row, &sink);
}
