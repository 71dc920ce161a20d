/*
 * store_outbox.c - the durable outbox of store and forward (issue 11,
 * docs/outbox.md): the QoS 1 and 2 messages a leaf published, held in
 * the registry from before the leaf's acknowledgement until the broker's.
 *
 * A message's place is its seq, an AUTOINCREMENT key: increasing across the
 * whole outbox and never reused, even after the table empties or the
 * gateway restarts, so the drain's in-memory cursors ("everything after
 * seq") stay valid.  Order per device is seq order (the outbox_device index
 * on (device_id, seq) answers every per-device query in that order).
 *
 * store_outbox_add_dev and store_outbox_delete_range are on the gateway's
 * hot path (every message, batched by the caller in store_begin/commit):
 * one cached statement each, the device's row id kept by the caller (a
 * struct store_devref, trusted while no device has been deleted since), a
 * run of consecutive seqs deleted by one statement, no allocation.
 * The deletes that must say what they removed use DELETE ... RETURNING, so
 * the count and the removal are one statement, not a read then a write.
 *
 * The listings (load, each_client) run on fresh statements, so their
 * callbacks may re-enter the store (a drain may delete as it reads).  Unlike
 * store_each_row, any non-zero callback answer stops and is returned as is:
 * the caller's own codes come back to it.
 */
#include "store_int.h"

#include <string.h>

/* A message's size as the stats count it: topic bytes (the topic is TEXT,
 * and length() of TEXT counts characters) plus payload bytes. */
#define MSG_BYTES "(length(CAST(topic AS BLOB)) + length(payload))"
/* The device's row id, for the per-device filters (?1: its ClientId). */
#define DEVICE_OF "(SELECT id FROM devices WHERE client_id = ?1)"

static int check_client_id(struct store *st, const char *client_id)
{
  return store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id");
}

int store_outbox_add_dev(struct store *st, struct store_devref *ref, const char *client_id,
                         struct store_outbox_msg *m)
{
  /* A plain one-row INSERT: SQLite checks the foreign key before it writes
   * and needs no statement journal, which an INSERT ... SELECT (a device
   * lookup per message) did, at twice the cost of the insert itself.  The
   * cached id is trusted only while the store's device generation is the
   * one it was looked up in (store_int.h): a deleted device's id may be
   * given to another one (devices.id is not AUTOINCREMENT). */
  static const char sql[] = "INSERT INTO outbox(device_id, topic, payload, qos, retain, created_ms) "
                            "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
  sqlite3_stmt *s;
  int err = check_client_id(st, client_id);

  if (err != STORE_OK)
    return err;
  if (m->qos != 1 && m->qos != 2)
    return store_fail(st, STORE_INVAL, "outbox qos must be 1 or 2 (got %u)", (unsigned)m->qos);
  if (!m->topic || m->topic_len < 1 || m->topic_len > 65535)
    return store_fail(st, STORE_INVAL, "outbox topic must be 1..65535 bytes");
  if (!m->payload && m->len > 0)
    return store_fail(st, STORE_INVAL, "outbox payload is NULL with length %zu", m->len);
  if ((err = store_devices_sync(st)) != STORE_OK)
    return err;
  /* At most twice: with the cached id, then, when the row turns out gone
   * all the same, with the device that has the ClientId now. */
  for (int fresh = 0;; fresh = 1) {
    if (ref->id <= 0 || ref->gen != st->dev_gen) {
      ref->id = 0;
      if ((err = store_device_rowid(st, client_id, &ref->id)) != STORE_OK) {
        ref->id = 0;
        return err;
      }
      ref->gen = st->dev_gen;
    }
    if ((err = store_stmt(st, sql, &s)) != STORE_OK)
      return err;
    sqlite3_bind_int64(s, 1, ref->id);
    /* The topic with its explicit length: what the leaf sent, byte for byte. */
    sqlite3_bind_text64(s, 2, m->topic, m->topic_len, SQLITE_STATIC, SQLITE_UTF8);
    /* An empty payload is a zero-length blob, not NULL (payload is NOT NULL,
     * and sqlite3_bind_blob binds NULL for a NULL pointer). */
    if (m->len == 0)
      sqlite3_bind_zeroblob(s, 3, 0);
    else
      sqlite3_bind_blob64(s, 3, m->payload, m->len, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, m->qos);
    sqlite3_bind_int(s, 5, m->retain ? 1 : 0);
    sqlite3_bind_int64(s, 6, m->created_ms);
    if ((err = store_stmt_run(st, s)) == STORE_OK)
      break;
    /* The one-row INSERT fails on the foreign key before it writes, so the
     * transaction goes on: the device went some way the generation did not
     * see; look it up again. */
    if (sqlite3_extended_errcode(st->db) != SQLITE_CONSTRAINT_FOREIGNKEY)
      return err;
    ref->id = 0;
    if (fresh)
      return store_fail(st, STORE_NOTFOUND, "no device '%s'", client_id);
  }
  m->seq = sqlite3_last_insert_rowid(st->db);
  return STORE_OK;
}

int store_outbox_add(struct store *st, const char *client_id, struct store_outbox_msg *m)
{
  struct store_devref ref = {0, 0};
  return store_outbox_add_dev(st, &ref, client_id, m);
}

int store_outbox_delete_range(struct store *st, int64_t first, int64_t last)
{
  static const char sql[] = "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2";
  sqlite3_stmt *s;
  int err = store_stmt(st, sql, &s);
  if (err != STORE_OK)
    return err;
  sqlite3_bind_int64(s, 1, first);
  sqlite3_bind_int64(s, 2, last);
  return store_stmt_run(st, s); /* already gone is fine: a duplicate PUBACK */
}

int store_outbox_delete(struct store *st, int64_t seq)
{
  return store_outbox_delete_range(st, seq, seq);
}

/* The current row of a SELECT of OUTBOX_COLS as a message view. */
#define OUTBOX_COLS "seq, topic, payload, qos, retain, created_ms"

static void read_msg(sqlite3_stmt *s, struct store_outbox_msg *m)
{
  memset(m, 0, sizeof *m);
  m->seq = sqlite3_column_int64(s, 0);
  /* The topic's bytes as stored (column_blob: no conversion, no NUL). */
  m->topic = sqlite3_column_blob(s, 1);
  m->topic_len = (size_t)sqlite3_column_bytes(s, 1);
  m->payload = sqlite3_column_blob(s, 2); /* NULL for a zero-length blob */
  m->len = (size_t)sqlite3_column_bytes(s, 2);
  m->qos = (uint8_t)sqlite3_column_int(s, 3);
  m->retain = sqlite3_column_int(s, 4) != 0;
  m->created_ms = sqlite3_column_int64(s, 5);
}

int store_outbox_load(struct store *st, const char *client_id, int64_t after, int64_t limit,
                      store_outbox_cb cb, void *ud)
{
  static const char sql[] = "SELECT " OUTBOX_COLS " FROM outbox WHERE device_id = " DEVICE_OF
                            " AND seq > ?2 ORDER BY seq LIMIT ?3";
  struct store_outbox_msg m;
  sqlite3_stmt *s;
  int rc, err = check_client_id(st, client_id);

  if (err != STORE_OK)
    return err;
  if (limit == 0)
    return STORE_OK;
  if ((err = store_stmt_fresh(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, after);
  sqlite3_bind_int64(s, 3, limit < 0 ? -1 : limit); /* SQLite: a negative LIMIT is none */
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int r;
    read_msg(s, &m);
    if ((r = cb(ud, &m)) != 0) {
      sqlite3_finalize(s);
      return r;
    }
  }
  err = rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  sqlite3_finalize(s);
  return err;
}

/* The aggregate columns of one outbox, in the order read_stats reads them. */
#define STATS_COLS                                                                   \
  "count(o.seq), coalesce(sum(length(CAST(o.topic AS BLOB)) + length(o.payload)), 0), " \
  "coalesce(min(o.created_ms), 0), coalesce(min(o.seq), 0), coalesce(max(o.seq), 0)"

static void read_stats(sqlite3_stmt *s, int col, struct store_outbox_stats *out)
{
  out->count = sqlite3_column_int64(s, col);
  out->bytes = sqlite3_column_int64(s, col + 1);
  out->oldest_ms = sqlite3_column_int64(s, col + 2);
  out->first_seq = sqlite3_column_int64(s, col + 3);
  out->last_seq = sqlite3_column_int64(s, col + 4);
}

int store_outbox_stats(struct store *st, const char *client_id, struct store_outbox_stats *out)
{
  /* One device: a LEFT JOIN from its row, so that an unknown ClientId
   * (no device row: count(d.id) = 0) is told from an empty outbox. */
  static const char one_sql[] = "SELECT count(d.id), " STATS_COLS " FROM devices d "
                                "LEFT JOIN outbox o ON o.device_id = d.id WHERE d.client_id = ?1";
  static const char all_sql[] = "SELECT 1, " STATS_COLS " FROM outbox o";
  sqlite3_stmt *s;
  int rc, err;

  memset(out, 0, sizeof *out);
  if (client_id && (err = check_client_id(st, client_id)) != STORE_OK)
    return err;
  if ((err = store_stmt(st, client_id ? one_sql : all_sql, &s)) != STORE_OK)
    return err;
  if (client_id)
    sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW && sqlite3_column_int64(s, 0) == 0)
    err = store_fail(st, STORE_NOTFOUND, "no device '%s'", client_id);
  else if (rc == SQLITE_ROW)
    read_stats(s, 1, out);
  else
    err = store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_outbox_each_client(struct store *st, store_outbox_client_cb cb, void *ud)
{
  /* One grouped pass over the outbox_device index, joined to the names. */
  static const char sql[] = "SELECT d.client_id, " STATS_COLS " FROM outbox o "
                            "JOIN devices d ON d.id = o.device_id "
                            "GROUP BY o.device_id ORDER BY d.client_id";
  struct store_outbox_stats stats;
  sqlite3_stmt *s;
  int rc, err = store_stmt_fresh(st, sql, &s);

  if (err != STORE_OK)
    return err;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int r;
    read_stats(s, 1, &stats);
    if ((r = cb(ud, (const char *)sqlite3_column_text(s, 0), &stats)) != 0) {
      sqlite3_finalize(s);
      return r;
    }
  }
  err = rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  sqlite3_finalize(s);
  return err;
}

/* Steps a bound DELETE ... RETURNING seq, <size> to its end, adding each
 * deleted row to *n and *bytes (and its seq to *seq when not NULL), and
 * releases it.  The deletion happens on the first step; the rows follow. */
static int run_returning(struct store *st, sqlite3_stmt *s, int64_t *n, int64_t *bytes,
                         int64_t *seq)
{
  int rc, err;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (seq)
      *seq = sqlite3_column_int64(s, 0);
    *bytes += sqlite3_column_int64(s, 1);
    (*n)++;
  }
  err = rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_outbox_discard(struct store *st, const char *client_id, int64_t after,
                         int64_t before_ms, int64_t *n, int64_t *bytes)
{
  /* before_ms INT64_MAX means every message, even one stamped INT64_MAX. */
  static const char sql[] = "DELETE FROM outbox WHERE device_id = " DEVICE_OF " AND seq > ?2 "
                            "AND (?3 = 9223372036854775807 OR created_ms < ?3) "
                            "RETURNING seq, " MSG_BYTES;
  sqlite3_stmt *s;
  int err = check_client_id(st, client_id);
  if (err != STORE_OK || (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, after);
  sqlite3_bind_int64(s, 3, before_ms);
  return run_returning(st, s, n, bytes, NULL);
}

int store_outbox_drop_first(struct store *st, const char *client_id, int64_t after,
                            int64_t *seq, int64_t *bytes)
{
  static const char sql[] = "DELETE FROM outbox WHERE seq = (SELECT seq FROM outbox "
                            "WHERE device_id = " DEVICE_OF " AND seq > ?2 ORDER BY seq LIMIT 1) "
                            "RETURNING seq, " MSG_BYTES;
  sqlite3_stmt *s;
  int64_t n = 0;
  int err = check_client_id(st, client_id);

  *seq = 0;
  *bytes = 0;
  if (err != STORE_OK || (err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, after);
  if ((err = run_returning(st, s, &n, bytes, seq)) != STORE_OK)
    return err;
  return n == 0 ? store_fail(st, STORE_NOTFOUND, "no message in '%s' outbox after %lld",
                             client_id, (long long)after)
                : STORE_OK;
}
