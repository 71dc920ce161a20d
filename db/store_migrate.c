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
 * it.  Change the schema by appending a step.  (Step 4 added the `outbox`
 * of store and forward, db/store_outbox.c; step 5 the leaves' sessions,
 * db/store_session.c.)
 *
 * A step may also seal data with the key file's key (store_keys.c).  Such a
 * step waits until the key is loaded and verified: store_open runs the
 * migrations before it loads the key (it must first know whether the
 * database holds a key check), and runs them again once the key is verified.
 *
 * Enum values are stored as integers; the CHECK constraints pin them to the
 * ranges in store.h, and the partial UNIQUE indexes hold the invariants even
 * against a raw-SQL writer:
 *   one_active_cert: at most one CERT_ACTIVE (1) certificate per device;
 *   one_open_run:    at most one unfinished run per device.
 */
#include "store_int.h"

#include <stdio.h>
#include <stdlib.h>

static int seal_plain_tokens(struct store *st, int64_t *sealed);

struct migration {
  const char *sql;
  /* NULL, or run after sql in the same transaction, with the key loaded;
   * *sealed counts the rows it sealed. */
  int (*seal)(struct store *st, int64_t *sealed);
};

static const struct migration migrations[] = {
    /* 1: devices, certificates, the provisioning journal, audit, allowlist. */
    {
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
    NULL},
    /* 2: the ownership token sealed at rest.  A run's token is a bearer
     * secret (docs/protocol-notes.md §5.5): it moves to runs.token_blob,
     * sealed like the private keys, and the plaintext column stays NULL,
     * which the triggers hold against any writer. */
    {"ALTER TABLE runs ADD COLUMN token_blob BLOB;\n"
     "CREATE TRIGGER runs_token_sealed_insert BEFORE INSERT ON runs\n"
     "WHEN NEW.token IS NOT NULL BEGIN\n"
     "  SELECT RAISE(ABORT, 'runs.token must stay NULL: tokens are sealed in token_blob');\n"
     "END;\n"
     "CREATE TRIGGER runs_token_sealed_update BEFORE UPDATE OF token ON runs\n"
     "WHEN NEW.token IS NOT NULL BEGIN\n"
     "  SELECT RAISE(ABORT, 'runs.token must stay NULL: tokens are sealed in token_blob');\n"
     "END;\n",
     seal_plain_tokens},
    /* 3: DTLS credentials and how each device authenticated on the LAN
     * (docs/dtls.md §4).  One PSK per device, sealed like a private key
     * with the ClientId as associated data; it goes with its device. */
    {"CREATE TABLE psks(\n"
     "  device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,\n"
     "  key_blob BLOB NOT NULL,\n"
     "  created_at INTEGER NOT NULL\n"
     ");\n"
     "ALTER TABLE devices ADD COLUMN lan_security TEXT CHECK (lan_security IS NULL OR "
     "lan_security IN ('plain', 'dtls-psk', 'dtls-cert'));\n",
     NULL},
    /* 4: the outbox of store and forward (issue 11, db/store_outbox.c): a
     * leaf's QoS 1 and 2 messages from before the leaf is acknowledged until
     * the broker is.  seq is AUTOINCREMENT, never reused, so the drain's
     * in-memory cursors stay valid after the table empties.  The topic is
     * TEXT bound with its length, so its size is counted as
     * length(CAST(topic AS BLOB)); an empty payload is a zero-length blob,
     * never NULL.  A message goes with its device (ON DELETE CASCADE). */
    {"CREATE TABLE outbox(\n"
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,\n"
     "  topic TEXT NOT NULL CHECK (length(CAST(topic AS BLOB)) BETWEEN 1 AND 65535),\n"
     "  payload BLOB NOT NULL,\n"
     "  qos INTEGER NOT NULL CHECK (qos IN (1, 2)),\n"
     "  retain INTEGER NOT NULL CHECK (retain IN (0, 1)),\n"
     "  created_ms INTEGER NOT NULL\n"
     ");\n"
     "CREATE INDEX outbox_device ON outbox(device_id, seq);\n",
     NULL},
    /* 5: the leaves' session state (issue 11, db/store_session.c), so a
     * gateway restart is invisible to them: the record (state 0
     * disconnected with CleanSession=0 kept, 1 active, 2 asleep; the will;
     * the id counters), subscriptions, topic registrations in both
     * directions (known: the leaf knows the id) and a sleeping leaf's
     * buffered downlink in seq order.  The children reference devices, not
     * leaf_sessions, so all four go with their device (ON DELETE CASCADE);
     * text carried with a length is measured as length(CAST(x AS BLOB)). */
    {"CREATE TABLE leaf_sessions(\n"
     "  device_id INTEGER PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,\n"
     "  state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 2),\n"
     "  clean INTEGER NOT NULL CHECK (clean IN (0, 1)),\n"
     "  keepalive INTEGER NOT NULL CHECK (keepalive BETWEEN 1 AND 65535),\n"
     "  sleep_s INTEGER NOT NULL DEFAULT 0 CHECK (sleep_s BETWEEN 0 AND 65535),\n"
     /* "ip:port", IPv6 as [ip]:port */
     "  addr TEXT CHECK (addr IS NULL OR length(addr) BETWEEN 1 AND 79),\n"
     /* 0 plain UDP, 1 DTLS */
     "  via INTEGER NOT NULL DEFAULT 0 CHECK (via IN (0, 1)),\n"
     "  sec INTEGER NOT NULL DEFAULT 0 CHECK (sec BETWEEN 0 AND 3),\n"
     "  will_topic TEXT CHECK (will_topic IS NULL OR "
     "length(CAST(will_topic AS BLOB)) BETWEEN 1 AND 65535),\n"
     "  will_msg BLOB,\n"
     "  will_qos INTEGER NOT NULL DEFAULT 0 CHECK (will_qos BETWEEN 0 AND 2),\n"
     "  will_retain INTEGER NOT NULL DEFAULT 0 CHECK (will_retain IN (0, 1)),\n"
     "  next_msg_id INTEGER NOT NULL DEFAULT 1 CHECK (next_msg_id BETWEEN 0 AND 65535),\n"
     "  next_topic_id INTEGER NOT NULL DEFAULT 1 CHECK (next_topic_id BETWEEN 0 AND 65535),\n"
     "  updated_at INTEGER NOT NULL\n"
     ");\n"
     "CREATE TABLE leaf_subs(\n"
     "  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,\n"
     "  filter TEXT NOT NULL CHECK (length(CAST(filter AS BLOB)) BETWEEN 1 AND 65535),\n"
     "  qos INTEGER NOT NULL CHECK (qos IN (0, 1)),\n"
     "  PRIMARY KEY (device_id, filter)\n"
     ");\n"
     "CREATE TABLE leaf_topics(\n"
     "  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,\n"
     "  topic_id INTEGER NOT NULL CHECK (topic_id BETWEEN 1 AND 65535),\n"
     "  name TEXT NOT NULL CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 65535),\n"
     "  known INTEGER NOT NULL CHECK (known IN (0, 1)),\n"
     "  PRIMARY KEY (device_id, topic_id)\n"
     ");\n"
     "CREATE TABLE leaf_downlink(\n"
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "  device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,\n"
     "  topic TEXT NOT NULL CHECK (length(CAST(topic AS BLOB)) BETWEEN 1 AND 65535),\n"
     "  payload BLOB NOT NULL,\n"
     "  qos INTEGER NOT NULL CHECK (qos IN (0, 1)),\n"
     "  retain INTEGER NOT NULL CHECK (retain IN (0, 1))\n"
     ");\n"
     "CREATE INDEX leaf_downlink_device ON leaf_downlink(device_id, seq);\n",
     NULL},
    /* 6: certificate rotation (issue 12, docs/rotation.md).  A run is a
     * first provisioning (kind 0) or a rotation (kind 1) of a device that
     * keeps its thing; a rotation names the certificate it replaces.  At
     * most one next (pending) certificate per device, beside the one active
     * (one_active_cert): a crash at any step of either kind can never leave
     * a device with a third.  Older registries could hold two pending
     * certificates of one device only from abandoned runs; all but the
     * newest are orphaned, so they are listed for clean-up as before. */
    {"ALTER TABLE runs ADD COLUMN kind INTEGER NOT NULL DEFAULT 0 CHECK (kind IN (0, 1));\n"
     "ALTER TABLE runs ADD COLUMN old_cert_id TEXT;\n"
     "UPDATE certificates SET status = 2,\n"
     "  reason = 'a second pending certificate of its device (schema 6 keeps one)'\n"
     "  WHERE status = 0 AND id NOT IN\n"
     "  (SELECT max(id) FROM certificates WHERE status = 0 GROUP BY device_id);\n"
     "CREATE UNIQUE INDEX one_next_cert ON certificates(device_id) WHERE status = 0;\n",
     NULL},
};

#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

int store_migrations_latest(void) { return NMIGRATIONS; }

/* The integer a PRAGMA query answers. */
static int pragma_int(struct store *st, const char *sql, int *value)
{
  sqlite3_stmt *s;
  int rc, err = store_stmt_fresh(st, sql, &s);
  if (err != STORE_OK)
    return err;
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    *value = sqlite3_column_int(s, 0);
  else
    err = store_sqlite_fail(st, rc);
  sqlite3_finalize(s);
  return err;
}

static int read_version(struct store *st, int *version)
{
  return pragma_int(st, "PRAGMA user_version", version);
}

/* Seals the first plaintext token left in runs, if any (*done when none
 * is left). */
static int seal_one_token(struct store *st, bool *done)
{
  static const char get_sql[] = "SELECT r.id, d.client_id, r.token FROM runs r "
                                "JOIN devices d ON d.id = r.device_id "
                                "WHERE r.token IS NOT NULL LIMIT 1";
  static const char put_sql[] = "UPDATE runs SET token_blob = ?, token = NULL WHERE id = ?";
  unsigned char *blob = NULL;
  size_t blob_len = 0;
  sqlite3_stmt *s;
  int64_t run_id = 0;
  int rc, err = store_stmt_fresh(st, get_sql, &s);

  *done = false;
  if (err != STORE_OK)
    return err;
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    run_id = sqlite3_column_int64(s, 0);
    err = store_token_seal(st, (const char *)sqlite3_column_text(s, 1),
                           (const char *)sqlite3_column_text(s, 2), &blob, &blob_len);
  } else if (rc == SQLITE_DONE) {
    *done = true;
  } else {
    err = store_sqlite_fail(st, rc);
  }
  sqlite3_finalize(s);
  if (err != STORE_OK || *done)
    return err;
  if ((err = store_stmt(st, put_sql, &s)) == STORE_OK) {
    sqlite3_bind_blob(s, 1, blob, (int)blob_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, run_id);
    err = store_stmt_run(st, s);
  }
  free(blob); /* ciphertext */
  return err;
}

/* Migration 2: every plaintext runs.token moves, sealed, to token_blob.  The
 * rows are rewritten with secure_delete on, so the space they leave holds
 * zeros, not the token. */
static int seal_plain_tokens(struct store *st, int64_t *sealed)
{
  char restore[48];
  bool done = false;
  int was = 0, err = pragma_int(st, "PRAGMA secure_delete", &was);

  if (err != STORE_OK || (err = store_exec(st, "PRAGMA secure_delete = ON")) != STORE_OK)
    return err;
  while (err == STORE_OK && !done) {
    err = seal_one_token(st, &done);
    if (err == STORE_OK && !done)
      (*sealed)++;
  }
  snprintf(restore, sizeof restore, "PRAGMA secure_delete = %d", was);
  if (store_exec(st, restore) != STORE_OK && err == STORE_OK)
    err = STORE_IO;
  return err;
}

/* After a step sealed plaintext: rebuilds the file (VACUUM), so no free
 * page or slack space keeps an old copy, and empties the WAL.  Best effort:
 * the step is committed, and a registry too full to rebuild still opens. */
static void scrub_file(struct store *st)
{
  char keep[sizeof st->errmsg];
  snprintf(keep, sizeof keep, "%s", st->errmsg);
  (void)store_exec(st, "VACUUM");
  (void)store_exec(st, "PRAGMA wal_checkpoint(TRUNCATE)");
  snprintf(st->errmsg, sizeof st->errmsg, "%s", keep);
}

/* Applies step v (from version v to v + 1) under the write lock; a no-op if
 * another process got there first. */
static int apply_step(struct store *st, int v, int64_t *sealed)
{
  const struct migration *m = &migrations[v];
  struct store_tx tx;
  char bump[64];
  int cur = 0;
  int err = store_tx_begin(st, &tx);
  if (err != STORE_OK)
    return err;
  err = read_version(st, &cur);
  if (err == STORE_OK && cur == v) {
    err = store_exec(st, m->sql);
    if (err == STORE_OK && m->seal)
      err = m->seal(st, sealed);
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
    int64_t sealed = 0;
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
    if (migrations[version].seal && !st->have_key)
      return STORE_OK; /* store_open comes back once the key is verified */
    if ((err = apply_step(st, version, &sealed)) != STORE_OK)
      return err;
    if (sealed > 0)
      scrub_file(st);
  }
}
