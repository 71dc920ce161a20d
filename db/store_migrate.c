/*
 * store_migrate.c - numbered schema migrations.
 *
 * migrations[i] takes the schema from version i to version i + 1; the version
 * lives in PRAGMA user_version.  Each step runs in its own BEGIN IMMEDIATE
 * transaction together with the user_version bump, so a crash leaves the
 * database at a whole version, and two processes opening a fresh file at once
 * cannot both apply a step (the second re-reads the version under the lock).
 *
 * NEVER edit a step that has shipped: databases in the field have already run
 * it.  Change the schema by appending a step.  (Planned: an `outbox` table for
 * store-and-forward, as migration 2.)
 *
 * Enum values are stored as integers; the CHECK constraints pin them to the
 * ranges in store.h, and the partial UNIQUE indexes hold the invariants even
 * against a raw-SQL writer:
 *   one_active_cert: at most one CERT_ACTIVE (1) certificate per device;
 *   one_open_run:    at most one unfinished run per device.
 */
#include "store_int.h"

#include <stdio.h>

static const char *const migrations[] = {
    /* 1: devices, certificates, the provisioning journal, audit, allowlist. */
    "CREATE TABLE meta(\n"
    "  name TEXT PRIMARY KEY,\n"
    "  value BLOB\n"
    ");\n"
    "CREATE TABLE devices(\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  client_id TEXT NOT NULL UNIQUE CHECK (length(client_id) BETWEEN 1 AND 255),\n"
    "  thing_name TEXT UNIQUE CHECK (thing_name IS NULL OR length(thing_name) BETWEEN 1 AND 128),\n"
    "  state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 6),\n"
    "  bound_addr TEXT,\n"
    "  first_seen INTEGER NOT NULL DEFAULT 0,\n"
    "  last_seen INTEGER NOT NULL DEFAULT 0,\n"
    "  last_error TEXT,\n"
    "  retry_at INTEGER NOT NULL DEFAULT 0,\n"
    "  attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0)\n"
    ");\n"
    "CREATE INDEX devices_state ON devices(state, client_id);\n"
    "CREATE TABLE certificates(\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  cert_id TEXT NOT NULL UNIQUE CHECK (length(cert_id) BETWEEN 1 AND 128),\n"
    "  device_id INTEGER NOT NULL REFERENCES devices(id),\n"
    "  status INTEGER NOT NULL CHECK (status BETWEEN 0 AND 4),\n"
    "  pem TEXT NOT NULL,\n"
    "  key_blob BLOB,\n"
    "  not_after INTEGER,\n"
    "  fingerprint TEXT,\n"
    "  reason TEXT,\n"
    "  created_at INTEGER NOT NULL,\n"
    "  updated_at INTEGER NOT NULL\n"
    ");\n"
    "CREATE UNIQUE INDEX one_active_cert ON certificates(device_id) WHERE status = 1;\n"
    "CREATE INDEX certificates_device ON certificates(device_id, status);\n"
    "CREATE INDEX certificates_status ON certificates(status, id);\n"
    "CREATE TABLE runs(\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  device_id INTEGER NOT NULL REFERENCES devices(id),\n"
    "  backend TEXT,\n"
    "  step INTEGER NOT NULL DEFAULT 0 CHECK (step BETWEEN 0 AND 7),\n"
    "  finished INTEGER NOT NULL DEFAULT 0 CHECK (finished IN (0, 1)),\n"
    "  key_blob BLOB,\n"
    "  cert_id TEXT,\n"
    "  token TEXT,\n"
    "  token_at INTEGER,\n"
    "  thing_name TEXT,\n"
    "  outcome TEXT,\n"
    "  started_at INTEGER NOT NULL DEFAULT 0,\n"
    "  updated_at INTEGER NOT NULL DEFAULT 0,\n"
    /* A run is finished exactly when it reached DONE or FAILED. */
    "  CHECK ((step >= 6) = (finished = 1))\n"
    ");\n"
    "CREATE UNIQUE INDEX one_open_run ON runs(device_id) WHERE finished = 0;\n"
    "CREATE INDEX runs_device ON runs(device_id);\n"
    /* Every step a run passes through, appended by triggers so that even a
     * raw-SQL writer leaves a history. */
    "CREATE TABLE run_steps(\n"
    "  run_id INTEGER NOT NULL REFERENCES runs(id),\n"
    "  step INTEGER NOT NULL,\n"
    "  at INTEGER NOT NULL\n"
    ");\n"
    "CREATE INDEX run_steps_run ON run_steps(run_id);\n"
    "CREATE TRIGGER runs_step_insert AFTER INSERT ON runs BEGIN\n"
    "  INSERT INTO run_steps(run_id, step, at) VALUES (NEW.id, NEW.step, NEW.updated_at);\n"
    "END;\n"
    "CREATE TRIGGER runs_step_update AFTER UPDATE OF step ON runs BEGIN\n"
    "  INSERT INTO run_steps(run_id, step, at) VALUES (NEW.id, NEW.step, NEW.updated_at);\n"
    "END;\n"
    "CREATE TABLE audit(\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  at INTEGER NOT NULL,\n"
    "  actor TEXT NOT NULL,\n"
    "  action TEXT NOT NULL,\n"
    "  client_id TEXT,\n"
    "  detail TEXT\n"
    ");\n"
    "CREATE INDEX audit_client ON audit(client_id, id);\n"
    "CREATE TABLE allowlist(\n"
    "  entry TEXT PRIMARY KEY CHECK (length(entry) BETWEEN 1 AND 255),\n"
    "  added_at INTEGER NOT NULL\n"
    ");\n",
};

#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

int store_migrations_latest(void) { return NMIGRATIONS; }

static int read_version(struct store *st, int *version)
{
  sqlite3_stmt *s;
  int rc, err = store_stmt_fresh(st, "PRAGMA user_version", &s);
  if (err != STORE_OK)
    return err;
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    *version = sqlite3_column_int(s, 0);
  else
    err = store_sqlite_fail(st, rc);
  sqlite3_finalize(s);
  return err;
}

/* Applies step v (from version v to v + 1) under the write lock; a no-op if
 * another process got there first. */
static int apply_step(struct store *st, int v)
{
  struct store_tx tx;
  char bump[64];
  int cur = 0;
  int err = store_tx_begin(st, &tx);
  if (err != STORE_OK)
    return err;
  err = read_version(st, &cur);
  if (err == STORE_OK && cur == v) {
    err = store_exec(st, migrations[v]);
    if (err == STORE_OK) {
      snprintf(bump, sizeof bump, "PRAGMA user_version = %d", v + 1);
      err = store_exec(st, bump);
    }
    if (err != STORE_OK) {
      char detail[sizeof st->errmsg];
      snprintf(detail, sizeof detail, "%s", st->errmsg);
      store_fail(st, err, "migration %d: %s", v + 1, detail);
    }
  }
  return store_tx_end(st, &tx, err);
}

int store_migrate(struct store *st)
{
  int version = 0, err;
  for (;;) {
    if ((err = read_version(st, &version)) != STORE_OK)
      return err;
    if (version > NMIGRATIONS)
      return store_fail(st, STORE_CORRUPT,
                        "database schema version %d is newer than this build's %d", version,
                        NMIGRATIONS);
    if (version < 0)
      return store_fail(st, STORE_CORRUPT, "database schema version %d is invalid", version);
    if (version == NMIGRATIONS)
      return STORE_OK;
    if ((err = apply_step(st, version)) != STORE_OK)
      return err;
  }
}
