/*
 * store_session.c - the leaves' MQTT-SN session state in the registry
 * (issue 11, docs/outbox.md §8): the session record (state, keep-alive,
 * sleep, address, the will, the id counters), the subscriptions, the topic
 * registrations in both directions and a sleeping leaf's buffered downlink,
 * so that a gateway restart is invisible to the leaves.
 *
 * The gateway writes snapshots: store_leaf_put replaces the record and
 * clears the three child tables, then the caller adds the current children,
 * all of it batched in the caller's transaction every ~20 ms.  So the put
 * and the adds are cached statements with the device looked up inside them,
 * and the put is an upsert plus three DELETEs by device id (the children
 * reference devices, not leaf_sessions, so replacing the record alone would
 * not clear them).  A child can only be added under a stored record (the
 * INSERTs join leaf_sessions): a subscription without a session would be
 * loaded by nobody and deleted only with its device.
 *
 * store_leaf_load reads everything at start-up in four statements, one per
 * table, each over all devices in ClientId order, and merges them: O(total
 * rows), never a query per device.  They are fresh statements, so the
 * callbacks may call back into the store (though writing the leaf tables
 * while the load reads them gives SQLite's undefined read order).
 *
 * Text that MQTT-SN carries with a length (topics, filters, the will topic)
 * is bound with that length and read back with column_blob, byte for byte,
 * and measured as length(CAST(x AS BLOB)) by the CHECKs, as in the outbox.
 */
#include "store_int.h"

#include <string.h>

/* The device's row id, for the per-device statements (?1: its ClientId). */
#define DEVICE_OF "(SELECT id FROM devices WHERE client_id = ?1)"
/* The rows an add inserts from: the device with its session record, so an
 * unknown ClientId or a device without a record inserts nothing. */
#define SESSION_OF                                                                                 \
  "FROM devices d JOIN leaf_sessions l ON l.device_id = d.id WHERE d.client_id = ?1"
#define MAX_ADDR 79
#define MAX_TEXT 65535

static int check_client_id(struct store *st, const char *client_id)
{
  return store_check_str(st, client_id, STORE_MAX_CLIENT_ID, true, "client id");
}

static int check_text(struct store *st, const char *text, size_t len, const char *what)
{
  if (!text || len < 1 || len > MAX_TEXT)
    return store_fail(st, STORE_INVAL, "%s must be 1..65535 bytes (got %zu)", what, text ? len : 0);
  return STORE_OK;
}

/* A blob that may be empty: a zero-length blob, not NULL, for length 0
 * (sqlite3_bind_blob binds NULL for a NULL pointer). */
static void bind_bytes(sqlite3_stmt *s, int idx, const uint8_t *p, size_t len)
{
  if (len == 0)
    sqlite3_bind_zeroblob(s, idx, 0);
  else
    sqlite3_bind_blob64(s, idx, p, len, SQLITE_STATIC);
}

/* After an INSERT ... SELECT of an add: no row means no device or no record. */
static int add_done(struct store *st, sqlite3_stmt *s, const char *client_id)
{
  int err = store_stmt_run(st, s);
  if (err == STORE_OK && sqlite3_changes(st->db) == 0)
    err = store_fail(st, STORE_NOTFOUND, "no leaf session for '%s'", client_id);
  return err;
}

static int check_session(struct store *st, const struct store_leaf_session *s)
{
  int err = check_client_id(st, s->client_id);
  if (err != STORE_OK)
    return err;
  if (s->state < LEAF_DISCONNECTED || s->state > LEAF_ASLEEP)
    return store_fail(st, STORE_INVAL, "leaf state %d out of range", s->state);
  if (s->keepalive == 0)
    return store_fail(st, STORE_INVAL, "leaf keep-alive must be 1..65535 s");
  if (s->via != 0 && s->via != 1)
    return store_fail(st, STORE_INVAL, "leaf via %d must be 0 (UDP) or 1 (DTLS)", s->via);
  if (s->sec < 0 || s->sec > 3)
    return store_fail(st, STORE_INVAL, "leaf sec %d out of range 0..3", s->sec);
  if ((err = store_check_str(st, s->addr, MAX_ADDR, false, "leaf address")) != STORE_OK)
    return err;
  if (s->will_topic &&
      (err = check_text(st, s->will_topic, s->will_topic_len, "will topic")) != STORE_OK)
    return err;
  if (!s->will_msg && s->will_msg_len > 0)
    return store_fail(st, STORE_INVAL, "will message is NULL with length %zu", s->will_msg_len);
  if (s->will_qos < 0 || s->will_qos > 2)
    return store_fail(st, STORE_INVAL, "will qos %d out of range 0..2", s->will_qos);
  return STORE_OK;
}

/* A leaf's rows by table: the three children first, then the record, so
 * that a put clears the first NCHILDREN and a delete all of them. */
static const char *const clear_sql[] = {
    "DELETE FROM leaf_subs WHERE device_id = " DEVICE_OF,
    "DELETE FROM leaf_topics WHERE device_id = " DEVICE_OF,
    "DELETE FROM leaf_downlink WHERE device_id = " DEVICE_OF,
    "DELETE FROM leaf_sessions WHERE device_id = " DEVICE_OF,
};
#define NCHILDREN 3

static int clear_rows(struct store *st, const char *client_id, size_t ntables)
{
  sqlite3_stmt *s;
  int err;
  for (size_t i = 0; i < ntables; i++) {
    if ((err = store_stmt(st, clear_sql[i], &s)) != STORE_OK)
      return err;
    sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
    if ((err = store_stmt_run(st, s)) != STORE_OK)
      return err;
  }
  return STORE_OK;
}

/* The record's upsert and the children's clearing, inside put's atomic section. */
static int put_rows(struct store *st, const struct store_leaf_session *ls, int64_t now)
{
  static const char put_sql[] =
      "INSERT INTO leaf_sessions(device_id, state, clean, keepalive, sleep_s, addr, via, sec, "
      "will_topic, will_msg, will_qos, will_retain, next_msg_id, next_topic_id, updated_at) "
      "SELECT id, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15 "
      "FROM devices WHERE client_id = ?1 "
      "ON CONFLICT(device_id) DO UPDATE SET state = excluded.state, clean = excluded.clean, "
      "keepalive = excluded.keepalive, sleep_s = excluded.sleep_s, addr = excluded.addr, "
      "via = excluded.via, sec = excluded.sec, will_topic = excluded.will_topic, "
      "will_msg = excluded.will_msg, will_qos = excluded.will_qos, "
      "will_retain = excluded.will_retain, next_msg_id = excluded.next_msg_id, "
      "next_topic_id = excluded.next_topic_id, updated_at = excluded.updated_at";
  sqlite3_stmt *s;
  int err = store_stmt(st, put_sql, &s);

  if (err != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, ls->client_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 2, ls->state);
  sqlite3_bind_int(s, 3, ls->clean ? 1 : 0);
  sqlite3_bind_int(s, 4, ls->keepalive);
  sqlite3_bind_int(s, 5, ls->sleep_s);
  store_bind_opt_text(s, 6, ls->addr); /* "" is no address, like NULL */
  sqlite3_bind_int(s, 7, ls->via);
  sqlite3_bind_int(s, 8, ls->sec);
  if (ls->will_topic) {
    sqlite3_bind_text64(s, 9, ls->will_topic, ls->will_topic_len, SQLITE_STATIC, SQLITE_UTF8);
    bind_bytes(s, 10, ls->will_msg, ls->will_msg_len); /* an empty will message is a message */
  } else if (ls->will_msg_len > 0) {
    /* WILLMSGUPD before a will topic: kept, though there is no will yet. */
    sqlite3_bind_blob64(s, 10, ls->will_msg, ls->will_msg_len, SQLITE_STATIC);
  }
  sqlite3_bind_int(s, 11, ls->will_qos);
  sqlite3_bind_int(s, 12, ls->will_retain ? 1 : 0);
  sqlite3_bind_int(s, 13, ls->next_msg_id);
  sqlite3_bind_int(s, 14, ls->next_topic_id);
  sqlite3_bind_int64(s, 15, now);
  if ((err = store_stmt_run(st, s)) != STORE_OK)
    return err;
  /* An upsert that updated counts as a change too; none means no device. */
  if (sqlite3_changes(st->db) == 0)
    return store_fail(st, STORE_NOTFOUND, "no device '%s'", ls->client_id);
  return clear_rows(st, ls->client_id, NCHILDREN);
}

int store_leaf_put(struct store *st, const struct store_leaf_session *s, int64_t now)
{
  struct store_tx tx;
  int err = check_session(st, s);

  if (err != STORE_OK || (err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  /* A SAVEPOINT in the caller's batch: a put that fails half-way (a CHECK,
   * the disk) leaves the previous snapshot whole, not a record without its
   * children. */
  return store_tx_end(st, &tx, put_rows(st, s, now));
}

int store_leaf_sub_add(struct store *st, const char *client_id, const char *filter, size_t len,
                       int qos)
{
  /* A filter subscribed twice keeps the later QoS, as a SUBSCRIBE again does. */
  static const char sql[] = "INSERT INTO leaf_subs(device_id, filter, qos) "
                            "SELECT d.id, ?2, ?3 " SESSION_OF " "
                            "ON CONFLICT(device_id, filter) DO UPDATE SET qos = excluded.qos";
  sqlite3_stmt *s;
  int err = check_client_id(st, client_id);

  if (err != STORE_OK || (err = check_text(st, filter, len, "subscription filter")) != STORE_OK)
    return err;
  if (qos != 0 && qos != 1)
    return store_fail(st, STORE_INVAL, "subscription qos must be 0 or 1 (got %d)", qos);
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_text64(s, 2, filter, len, SQLITE_STATIC, SQLITE_UTF8);
  sqlite3_bind_int(s, 3, qos);
  return add_done(st, s, client_id);
}

int store_leaf_topic_add(struct store *st, const char *client_id, uint16_t topic_id,
                         const char *name, size_t len, bool known)
{
  /* An id registered twice keeps the later name, as a REGISTER again does. */
  static const char sql[] = "INSERT INTO leaf_topics(device_id, topic_id, name, known) "
                            "SELECT d.id, ?2, ?3, ?4 " SESSION_OF " "
                            "ON CONFLICT(device_id, topic_id) DO UPDATE SET "
                            "name = excluded.name, known = excluded.known";
  sqlite3_stmt *s;
  int err = check_client_id(st, client_id);

  if (err != STORE_OK || (err = check_text(st, name, len, "topic name")) != STORE_OK)
    return err;
  if (topic_id == 0)
    return store_fail(st, STORE_INVAL, "topic id 0 is reserved");
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 2, topic_id);
  sqlite3_bind_text64(s, 3, name, len, SQLITE_STATIC, SQLITE_UTF8);
  sqlite3_bind_int(s, 4, known ? 1 : 0);
  return add_done(st, s, client_id);
}

int store_leaf_downlink_add(struct store *st, const char *client_id, const char *topic,
                            size_t topic_len, const uint8_t *payload, size_t len, int qos,
                            bool retain)
{
  static const char sql[] = "INSERT INTO leaf_downlink(device_id, topic, payload, qos, retain) "
                            "SELECT d.id, ?2, ?3, ?4, ?5 " SESSION_OF;
  sqlite3_stmt *s;
  int err = check_client_id(st, client_id);

  if (err != STORE_OK || (err = check_text(st, topic, topic_len, "downlink topic")) != STORE_OK)
    return err;
  if (!payload && len > 0)
    return store_fail(st, STORE_INVAL, "downlink payload is NULL with length %zu", len);
  if (qos != 0 && qos != 1)
    return store_fail(st, STORE_INVAL, "downlink qos must be 0 or 1 (got %d)", qos);
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_text64(s, 2, topic, topic_len, SQLITE_STATIC, SQLITE_UTF8);
  bind_bytes(s, 3, payload, len); /* payload is NOT NULL: empty is a zero-length blob */
  sqlite3_bind_int(s, 4, qos);
  sqlite3_bind_int(s, 5, retain ? 1 : 0);
  return add_done(st, s, client_id);
}

int store_leaf_delete(struct store *st, const char *client_id)
{
  struct store_tx tx;
  int err = check_client_id(st, client_id);
  if (err != STORE_OK || (err = store_tx_begin(st, &tx)) != STORE_OK)
    return err;
  return store_tx_end(st, &tx, clear_rows(st, client_id, NCHILDREN + 1));
}

/* ---- load ---- */

/* One per-table cursor of the load: a fresh statement whose column 0 is the
 * ClientId, in ClientId order; `row` says whether it stands on a row. */
struct cursor {
  sqlite3_stmt *s;
  bool row;
};

static int cursor_step(struct store *st, struct cursor *c)
{
  int rc = sqlite3_step(c->s);
  c->row = rc == SQLITE_ROW;
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
}

/* Bytes of a column as stored, for text carried with a length. */
static const char *col_bytes(sqlite3_stmt *s, int col, size_t *len)
{
  const char *p = sqlite3_column_blob(s, col);
  *len = (size_t)sqlite3_column_bytes(s, col);
  return p;
}

static void read_session(sqlite3_stmt *s, struct store_leaf_session *ls)
{
  memset(ls, 0, sizeof *ls);
  ls->client_id = (const char *)sqlite3_column_text(s, 0);
  ls->state = sqlite3_column_int(s, 1);
  ls->clean = sqlite3_column_int(s, 2) != 0;
  ls->keepalive = (uint16_t)sqlite3_column_int(s, 3);
  ls->sleep_s = (uint16_t)sqlite3_column_int(s, 4);
  ls->addr = (const char *)sqlite3_column_text(s, 5); /* NULL when NULL */
  ls->via = sqlite3_column_int(s, 6);
  ls->sec = sqlite3_column_int(s, 7);
  ls->will_topic = col_bytes(s, 8, &ls->will_topic_len);
  ls->will_msg = sqlite3_column_blob(s, 9); /* NULL for an empty (or no) message */
  ls->will_msg_len = (size_t)sqlite3_column_bytes(s, 9);
  ls->will_qos = sqlite3_column_int(s, 10);
  ls->will_retain = sqlite3_column_int(s, 11) != 0;
  ls->next_msg_id = (uint16_t)sqlite3_column_int(s, 12);
  ls->next_topic_id = (uint16_t)sqlite3_column_int(s, 13);
}

/* Hands cursor c's rows for client_id to its callback (which one: `table`),
 * skipping rows of ClientIds before it (none are, unless a raw writer left
 * children without a record), and stops at the first later ClientId. */
static int emit_children(struct store *st, struct cursor *c, int table,
                         const struct store_leaf_cbs *cbs, void *ud, const char *client_id)
{
  int err;
  while (c->row) {
    const char *p, *id = (const char *)sqlite3_column_text(c->s, 0);
    size_t n;
    int cmp = strcmp(id, client_id), r = 0;
    if (cmp > 0)
      return STORE_OK;
    if (cmp == 0) {
      sqlite3_stmt *s = c->s;
      /* Lengths read before the calls: argument order is unspecified. */
      if (table == 0 && cbs->sub) {
        p = col_bytes(s, 1, &n);
        r = cbs->sub(ud, client_id, p, n, sqlite3_column_int(s, 2));
      } else if (table == 1 && cbs->topic) {
        p = col_bytes(s, 2, &n);
        r = cbs->topic(ud, client_id, (uint16_t)sqlite3_column_int(s, 1), p, n,
                       sqlite3_column_int(s, 3) != 0);
      } else if (table == 2 && cbs->down) {
        const uint8_t *payload = sqlite3_column_blob(s, 2); /* NULL when empty */
        size_t len = (size_t)sqlite3_column_bytes(s, 2);
        p = col_bytes(s, 1, &n);
        r = cbs->down(ud, client_id, p, n, payload, len, sqlite3_column_int(s, 3),
                      sqlite3_column_int(s, 4) != 0);
      }
      if (r != 0)
        return r;
    }
    if ((err = cursor_step(st, c)) != STORE_OK)
      return err;
  }
  return STORE_OK;
}

int store_leaf_load(struct store *st, const struct store_leaf_cbs *cbs, void *ud)
{
  /* Each ordered by ClientId (the devices' UNIQUE index) and then by the
   * child table's own key, which the primary keys and leaf_downlink_device
   * give without a sort per device.  The ORDER BY's BINARY collation is
   * byte order, which strcmp in emit_children matches. */
  static const char *const sql[] = {
      "SELECT d.client_id, l.state, l.clean, l.keepalive, l.sleep_s, l.addr, l.via, l.sec, "
      "l.will_topic, l.will_msg, l.will_qos, l.will_retain, l.next_msg_id, l.next_topic_id "
      "FROM leaf_sessions l JOIN devices d ON d.id = l.device_id ORDER BY d.client_id",
      "SELECT d.client_id, c.filter, c.qos FROM leaf_subs c JOIN devices d ON d.id = c.device_id "
      "ORDER BY d.client_id, c.filter",
      "SELECT d.client_id, c.topic_id, c.name, c.known FROM leaf_topics c "
      "JOIN devices d ON d.id = c.device_id ORDER BY d.client_id, c.topic_id",
      "SELECT d.client_id, c.topic, c.payload, c.qos, c.retain FROM leaf_downlink c "
      "JOIN devices d ON d.id = c.device_id ORDER BY d.client_id, c.seq",
  };
  struct cursor c[4] = {{0}};
  struct store_leaf_session ls;
  int err = STORE_OK;
  size_t i;

  /* Fresh statements: the callbacks may call back into the store. */
  for (i = 0; i < 4 && err == STORE_OK; i++)
    if ((err = store_stmt_fresh(st, sql[i], &c[i].s)) == STORE_OK)
      err = cursor_step(st, &c[i]);
  while (err == STORE_OK && c[0].row) {
    read_session(c[0].s, &ls);
    if (cbs->sess && (err = cbs->sess(ud, &ls)) != 0)
      break;
    for (i = 1; i < 4 && err == STORE_OK; i++)
      err = emit_children(st, &c[i], (int)i - 1, cbs, ud, ls.client_id);
    if (err == STORE_OK)
      err = cursor_step(st, &c[0]);
  }
  for (i = 0; i < 4; i++)
    sqlite3_finalize(c[i].s); /* NULL is a no-op */
  return err;
}

int store_leaf_count(struct store *st, int64_t *n)
{
  static const char sql[] = "SELECT count(*) FROM leaf_sessions";
  sqlite3_stmt *s;
  int err = store_stmt(st, sql, &s);
  *n = 0;
  if (err != STORE_OK)
    return err;
  return store_count_done(st, s, n);
}
