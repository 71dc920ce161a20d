/*
 * test_store_outbox.c - the outbox of store and forward (db/store_outbox.c):
 * per-device order in seq order with devices interleaved; seq never reused,
 * after the table empties and across a reopen; load with a cursor, a limit
 * and an early stop; stats, each_client, discard, drop_first; refused
 * arguments; empty and binary payloads; the CHECK constraints against raw
 * SQL on the same file; migration from a version-3 file; a batch of 10,000
 * in one transaction and its rollback, with the time per add and per delete
 * printed (never asserted); the WAL checkpoint thread (bounded WAL, the
 * fallback on the writer's connection, empty WAL after close).
 */
#include "test.h"

#include <dirent.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "store_int.h" /* store_exec, for the foreign-key fallback */

static char g_dir[256];

struct paths {
  char db[320];
  char key[320];
};

static void paths_for(struct paths *p, const char *name)
{
  snprintf(p->db, sizeof p->db, "%s/%s.db", g_dir, name);
  snprintf(p->key, sizeof p->key, "%s/%s.key", g_dir, name);
}

static struct store *open_store(const struct paths *p)
{
  struct store_opts o = {.path = p->db, .key_file = p->key, .synchronous = 1};
  struct store *st = NULL;
  int rc = store_open(&o, &st);
  if (rc != STORE_OK)
    fprintf(stderr, "store_open(%s): %s: %s\n", p->db, store_strerror(rc), store_errmsg(NULL));
  return st;
}

static sqlite3 *raw_open(const struct paths *p)
{
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(p->db, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
    return NULL;
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, 5000);
  return db;
}

static int raw_exec(sqlite3 *db, const char *sql)
{
  return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
  sqlite3_stmt *s = NULL;
  int64_t v = -999;
  if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
    v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return v;
}

/* Adds a message with a text topic and payload; returns its seq (0 on error). */
static int64_t add(struct store *st, const char *client_id, const char *topic,
                   const char *payload, int64_t created_ms)
{
  struct store_outbox_msg m = {.topic = topic,
                               .topic_len = strlen(topic),
                               .payload = (const uint8_t *)payload,
                               .len = payload ? strlen(payload) : 0,
                               .qos = 1,
                               .retain = false,
                               .created_ms = created_ms};
  int rc = store_outbox_add(st, client_id, &m);
  ASSERT_EQ(rc, STORE_OK);
  return rc == STORE_OK ? m.seq : 0;
}

/* What a load saw: the seqs and the first message's bytes. */
#define MAXSEEN 64
struct seen {
  int64_t seq[MAXSEEN];
  int n;
  int stop_after; /* answer 7 after this many; 0 never */
  uint8_t payload[256];
  size_t len;
  bool payload_null;
  char topic[64];
  size_t topic_len;
  uint8_t qos;
  bool retain;
  int64_t created_ms;
};

static int collect(void *ud, const struct store_outbox_msg *m)
{
  struct seen *s = ud;
  if (s->n == 0) {
    s->len = m->len;
    s->payload_null = m->payload == NULL;
    if (m->len && m->len <= sizeof s->payload)
      memcpy(s->payload, m->payload, m->len);
    s->topic_len = m->topic_len;
    if (m->topic_len < sizeof s->topic)
      memcpy(s->topic, m->topic, m->topic_len);
    s->qos = m->qos;
    s->retain = m->retain;
    s->created_ms = m->created_ms;
  }
  if (s->n < MAXSEEN)
    s->seq[s->n] = m->seq;
  s->n++;
  return s->stop_after && s->n == s->stop_after ? 7 : 0;
}

static void make_devices(struct store *st)
{
  ASSERT_EQ(store_device_create(st, "leaf-a", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "leaf-b", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
}

/* A fresh registry named name with leaf-a and leaf-b in it; NULL (the
 * failure counted) when it cannot be opened. */
static struct store *open_with_devices(struct paths *p, const char *name)
{
  struct store *st;
  paths_for(p, name);
  st = open_store(p);
  ASSERT_TRUE(st != NULL);
  if (st)
    make_devices(st);
  return st;
}

/* ---- order, seq ---- */

static void test_order(void)
{
  struct paths p;
  struct store *st;
  int64_t a[5], b[5];
  struct seen sa = {0}, sb = {0};

  if (!(st = open_with_devices(&p, "order")))
    return;
  for (int i = 0; i < 5; i++) {
    char t[32];
    snprintf(t, sizeof t, "a/%d", i);
    a[i] = add(st, "leaf-a", t, "x", 100 + i);
    snprintf(t, sizeof t, "b/%d", i);
    b[i] = add(st, "leaf-b", t, "y", 100 + i);
  }
  for (int i = 1; i < 5; i++) {
    ASSERT_TRUE(a[i] > a[i - 1]);
    ASSERT_TRUE(b[i] > b[i - 1]);
    ASSERT_TRUE(b[i - 1] > a[i - 1]); /* one sequence across devices */
  }
  ASSERT_EQ(store_outbox_load(st, "leaf-a", 0, -1, collect, &sa), STORE_OK);
  ASSERT_EQ(store_outbox_load(st, "leaf-b", 0, -1, collect, &sb), STORE_OK);
  ASSERT_EQ(sa.n, 5);
  ASSERT_EQ(sb.n, 5);
  for (int i = 0; i < 5; i++) {
    ASSERT_EQ(sa.seq[i], a[i]);
    ASSERT_EQ(sb.seq[i], b[i]);
  }
  ASSERT_STR_EQ(sa.topic, "a/0");
  ASSERT_EQ(sa.topic_len, 3);
  store_close(st);
}

static void test_seq_never_reused(void)
{
  struct paths p;
  struct store *st;
  int64_t s1, s2, s3, s4;
  struct store_outbox_stats stats;

  if (!(st = open_with_devices(&p, "seq")))
    return;
  s1 = add(st, "leaf-a", "t", "1", 1);
  s2 = add(st, "leaf-a", "t", "2", 2);
  ASSERT_EQ(store_outbox_delete(st, s1), STORE_OK);
  ASSERT_EQ(store_outbox_delete(st, s2), STORE_OK);
  ASSERT_EQ(store_outbox_delete(st, s2), STORE_OK); /* already gone */
  ASSERT_EQ(store_outbox_stats(st, NULL, &stats), STORE_OK);
  ASSERT_EQ(stats.count, 0);
  ASSERT_EQ(stats.first_seq, 0);
  ASSERT_EQ(stats.last_seq, 0);
  ASSERT_EQ(stats.oldest_ms, 0);
  ASSERT_EQ(stats.bytes, 0);
  /* Empty table: a plain INTEGER PRIMARY KEY would hand out s1 again. */
  s3 = add(st, "leaf-a", "t", "3", 3);
  ASSERT_TRUE(s3 > s2);
  ASSERT_EQ(store_outbox_delete(st, s3), STORE_OK);
  store_close(st);
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  s4 = add(st, "leaf-a", "t", "4", 4);
  ASSERT_TRUE(s4 > s3);
  store_close(st);
}

/* ---- load ---- */

static void test_load(void)
{
  struct paths p;
  struct store *st;
  int64_t seq[10];

  if (!(st = open_with_devices(&p, "load")))
    return;
  for (int i = 0; i < 10; i++)
    seq[i] = add(st, "leaf-a", "t", "p", 1000 + i);
  {
    struct seen s = {0};
    ASSERT_EQ(store_outbox_load(st, "leaf-a", seq[3], 4, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 4);
    ASSERT_EQ(s.seq[0], seq[4]);
    ASSERT_EQ(s.seq[3], seq[7]);
    ASSERT_EQ(s.created_ms, 1004);
  }
  {
    struct seen s = {0};
    ASSERT_EQ(store_outbox_load(st, "leaf-a", seq[9], -1, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 0);
    ASSERT_EQ(store_outbox_load(st, "leaf-a", 0, 0, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 0);
    ASSERT_EQ(store_outbox_load(st, "leaf-b", 0, -1, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 0);
    ASSERT_EQ(store_outbox_load(st, "nobody", 0, -1, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 0);
  }
  {
    /* A non-zero answer stops and comes back as is. */
    struct seen s = {.stop_after = 3};
    ASSERT_EQ(store_outbox_load(st, "leaf-a", 0, -1, collect, &s), 7);
    ASSERT_EQ(s.n, 3);
  }
  store_close(st);
}

/* A callback that deletes each message it is shown (a drain re-entering). */
static int delete_each(void *ud, const struct store_outbox_msg *m)
{
  return store_outbox_delete(ud, m->seq);
}

static void test_load_reenter(void)
{
  struct paths p;
  struct store *st;
  struct store_outbox_stats stats;

  if (!(st = open_with_devices(&p, "reenter")))
    return;
  for (int i = 0; i < 5; i++)
    add(st, "leaf-a", "t", "p", i);
  ASSERT_EQ(store_outbox_load(st, "leaf-a", 0, -1, delete_each, st), STORE_OK);
  ASSERT_EQ(store_outbox_stats(st, "leaf-a", &stats), STORE_OK);
  ASSERT_EQ(stats.count, 0);
  store_close(st);
}

/* ---- stats, each_client ---- */

struct clients {
  char id[4][32];
  struct store_outbox_stats s[4];
  int n;
};

static int collect_client(void *ud, const char *client_id, const struct store_outbox_stats *s)
{
  struct clients *c = ud;
  if (c->n < 4) {
    snprintf(c->id[c->n], sizeof c->id[c->n], "%s", client_id);
    c->s[c->n] = *s;
  }
  c->n++;
  return 0;
}

static int stop_client(void *ud, const char *client_id, const struct store_outbox_stats *s)
{
  (void)ud;
  (void)client_id;
  (void)s;
  return -42;
}

static void test_stats(void)
{
  struct paths p;
  struct store *st;
  struct store_outbox_stats s;
  struct clients c = {0};
  int64_t a1, a2, b1;

  if (!(st = open_with_devices(&p, "stats")))
    return;
  ASSERT_EQ(store_device_create(st, "leaf-c", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  a1 = add(st, "leaf-a", "ab", "12345", 500);   /* 7 bytes */
  b1 = add(st, "leaf-b", "b/\xc3\xa9", "", 300); /* é is 2 bytes: 4 bytes */
  a2 = add(st, "leaf-a", "abc", "1", 400);      /* 4 bytes */

  ASSERT_EQ(store_outbox_stats(st, "leaf-a", &s), STORE_OK);
  ASSERT_EQ(s.count, 2);
  ASSERT_EQ(s.bytes, 11);
  ASSERT_EQ(s.oldest_ms, 400);
  ASSERT_EQ(s.first_seq, a1);
  ASSERT_EQ(s.last_seq, a2);
  ASSERT_EQ(store_outbox_stats(st, "leaf-b", &s), STORE_OK);
  ASSERT_EQ(s.count, 1);
  ASSERT_EQ(s.bytes, 4);
  ASSERT_EQ(s.first_seq, b1);
  ASSERT_EQ(s.last_seq, b1);
  ASSERT_EQ(store_outbox_stats(st, "leaf-c", &s), STORE_OK);
  ASSERT_EQ(s.count, 0);
  ASSERT_EQ(s.bytes, 0);
  ASSERT_EQ(s.oldest_ms, 0);
  ASSERT_EQ(s.first_seq, 0);
  ASSERT_EQ(store_outbox_stats(st, "nobody", &s), STORE_NOTFOUND);
  ASSERT_EQ(store_outbox_stats(st, NULL, &s), STORE_OK);
  ASSERT_EQ(s.count, 3);
  ASSERT_EQ(s.bytes, 15);
  ASSERT_EQ(s.oldest_ms, 300);
  ASSERT_EQ(s.first_seq, a1);
  ASSERT_EQ(s.last_seq, a2);

  ASSERT_EQ(store_outbox_each_client(st, collect_client, &c), STORE_OK);
  ASSERT_EQ(c.n, 2); /* leaf-c has none */
  ASSERT_STR_EQ(c.id[0], "leaf-a");
  ASSERT_EQ(c.s[0].count, 2);
  ASSERT_EQ(c.s[0].bytes, 11);
  ASSERT_EQ(c.s[0].oldest_ms, 400);
  ASSERT_EQ(c.s[0].first_seq, a1);
  ASSERT_EQ(c.s[0].last_seq, a2);
  ASSERT_STR_EQ(c.id[1], "leaf-b");
  ASSERT_EQ(c.s[1].count, 1);
  ASSERT_EQ(c.s[1].bytes, 4);
  ASSERT_EQ(store_outbox_each_client(st, stop_client, NULL), -42);
  store_close(st);
}

/* ---- discard, drop_first ---- */

static void test_discard(void)
{
  struct paths p;
  struct store *st;
  struct store_outbox_stats s;
  int64_t seq[6], n = 0, bytes = 0, one = 0, size = 0;

  if (!(st = open_with_devices(&p, "discard")))
    return;
  for (int i = 0; i < 6; i++)
    seq[i] = add(st, "leaf-a", "tt", "pppp", 100 * (i + 1)); /* 6 bytes each, 100..600 */
  add(st, "leaf-b", "tt", "pppp", 1);

  /* The expiry: older than 350 ms, not counting what is in flight (<= seq[0]). */
  ASSERT_EQ(store_outbox_discard(st, "leaf-a", seq[0], 350, &n, &bytes), STORE_OK);
  ASSERT_EQ(n, 2); /* seq[1] (200) and seq[2] (300) */
  ASSERT_EQ(bytes, 12);
  {
    struct seen l = {0};
    ASSERT_EQ(store_outbox_load(st, "leaf-a", 0, -1, collect, &l), STORE_OK);
    ASSERT_EQ(l.n, 4);
    ASSERT_EQ(l.seq[0], seq[0]);
    ASSERT_EQ(l.seq[1], seq[3]);
  }
  /* drop_first after the cursor: the oldest not in flight. */
  ASSERT_EQ(store_outbox_drop_first(st, "leaf-a", seq[0], &one, &size), STORE_OK);
  ASSERT_EQ(one, seq[3]);
  ASSERT_EQ(size, 6);
  ASSERT_EQ(store_outbox_drop_first(st, "leaf-a", 0, &one, &size), STORE_OK);
  ASSERT_EQ(one, seq[0]);
  /* Everything that is left, adding to the counts. */
  ASSERT_EQ(store_outbox_discard(st, "leaf-a", 0, INT64_MAX, &n, &bytes), STORE_OK);
  ASSERT_EQ(n, 4);
  ASSERT_EQ(bytes, 24);
  ASSERT_EQ(store_outbox_drop_first(st, "leaf-a", 0, &one, &size), STORE_NOTFOUND);
  ASSERT_EQ(one, 0);
  ASSERT_EQ(size, 0);
  ASSERT_EQ(store_outbox_drop_first(st, "nobody", 0, &one, &size), STORE_NOTFOUND);
  n = bytes = 0;
  ASSERT_EQ(store_outbox_discard(st, "nobody", 0, INT64_MAX, &n, &bytes), STORE_OK);
  ASSERT_EQ(n, 0);
  /* leaf-b untouched. */
  ASSERT_EQ(store_outbox_stats(st, "leaf-b", &s), STORE_OK);
  ASSERT_EQ(s.count, 1);
  store_close(st);
}

/* ---- arguments, payloads ---- */

static void test_refused(void)
{
  struct paths p;
  struct store *st;
  struct store_outbox_msg m = {
      .topic = "t", .topic_len = 1, .payload = (const uint8_t *)"x", .len = 1, .qos = 1};
  struct store_outbox_stats s;
  char *big;

  if (!(st = open_with_devices(&p, "refused")))
    return;
  ASSERT_EQ(store_outbox_add(st, "nobody", &m), STORE_NOTFOUND);
  ASSERT_EQ(store_outbox_add(st, "", &m), STORE_INVAL);
  m.qos = 0;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_INVAL);
  m.qos = 3;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_INVAL);
  m.qos = 2;
  m.topic_len = 0;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_INVAL);
  m.topic = NULL;
  m.topic_len = 1;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_INVAL);
  big = malloc(65536);
  ASSERT_TRUE(big != NULL);
  if (big) {
    memset(big, 'a', 65536);
    m.topic = big;
    m.topic_len = 65536;
    ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_INVAL);
    m.topic_len = 65535;
    ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_OK);
    free(big);
  }
  m.topic = "t";
  m.topic_len = 1;
  m.payload = NULL;
  m.len = 3;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_INVAL);
  ASSERT_EQ(store_outbox_stats(st, NULL, &s), STORE_OK);
  ASSERT_EQ(s.count, 1);
  store_close(st);
}

static void test_payloads(void)
{
  static const uint8_t bin[] = {0x00, 0xff, 0x00, 'a', 0x80, 0x00};
  static const char topic[] = {'t', 0x00, 'z'}; /* bytes, NUL and all */
  struct paths p;
  struct store *st;
  struct store_outbox_msg m = {.topic = "e", .topic_len = 1, .payload = NULL, .len = 0,
                               .qos = 2, .retain = true, .created_ms = 77};
  int64_t empty_seq;

  if (!(st = open_with_devices(&p, "payloads")))
    return;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_OK);
  empty_seq = m.seq;
  {
    struct seen s = {0};
    ASSERT_EQ(store_outbox_load(st, "leaf-a", 0, 1, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 1);
    ASSERT_EQ(s.len, 0);
    ASSERT_EQ(s.qos, 2);
    ASSERT_TRUE(s.retain);
    ASSERT_EQ(s.created_ms, 77);
  }
  /* An empty but non-NULL payload is the same thing. */
  m.payload = bin;
  ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_OK);
  m.len = sizeof bin;
  m.topic = topic;
  m.topic_len = sizeof topic;
  m.retain = false;
  m.qos = 1;
  ASSERT_EQ(store_outbox_add(st, "leaf-b", &m), STORE_OK);
  {
    struct seen s = {0};
    ASSERT_EQ(store_outbox_load(st, "leaf-a", empty_seq, -1, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 1);
    ASSERT_EQ(s.len, 0);
  }
  {
    struct seen s = {0};
    ASSERT_EQ(store_outbox_load(st, "leaf-b", 0, -1, collect, &s), STORE_OK);
    ASSERT_EQ(s.n, 1);
    ASSERT_EQ(s.len, sizeof bin);
    ASSERT_MEM_EQ(s.payload, bin, sizeof bin);
    ASSERT_EQ(s.topic_len, sizeof topic);
    ASSERT_MEM_EQ(s.topic, topic, sizeof topic);
    ASSERT_EQ(s.qos, 1);
    ASSERT_TRUE(!s.retain);
  }
  {
    struct store_outbox_stats s;
    ASSERT_EQ(store_outbox_stats(st, "leaf-b", &s), STORE_OK);
    ASSERT_EQ(s.bytes, (int64_t)(sizeof bin + sizeof topic));
  }
  store_close(st);
  {
    sqlite3 *db = raw_open(&p);
    ASSERT_TRUE(db != NULL);
    ASSERT_EQ(raw_int(db, "SELECT count(*) FROM outbox WHERE payload IS NULL"), 0);
    ASSERT_EQ(raw_int(db, "SELECT count(*) FROM outbox WHERE typeof(payload) = 'blob'"), 3);
    sqlite3_close(db);
  }
}

/* ---- the schema against raw SQL ---- */

static void test_raw_checks(void)
{
  struct paths p;
  struct store *st;
  sqlite3 *db;

  if (!(st = open_with_devices(&p, "raw")))
    return;
  add(st, "leaf-a", "t", "p", 1);
  store_close(st);
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  if (!db)
    return;
  ASSERT_EQ(raw_exec(db, "PRAGMA foreign_keys = ON"), SQLITE_OK);
#define INS(topic, payload, qos, retain)                                                     \
  "INSERT INTO outbox(device_id, topic, payload, qos, retain, created_ms) "                   \
  "SELECT id, " topic ", " payload ", " qos ", " retain ", 1 FROM devices WHERE client_id = 'leaf-a'"
  ASSERT_EQ(raw_exec(db, INS("'t'", "x'00'", "1", "0")), SQLITE_OK);
  ASSERT_EQ(raw_exec(db, INS("'t'", "x'00'", "0", "0")), SQLITE_CONSTRAINT_CHECK);
  ASSERT_EQ(raw_exec(db, INS("'t'", "x'00'", "3", "0")), SQLITE_CONSTRAINT_CHECK);
  ASSERT_EQ(raw_exec(db, INS("'t'", "x'00'", "1", "2")), SQLITE_CONSTRAINT_CHECK);
  ASSERT_EQ(raw_exec(db, INS("''", "x'00'", "1", "0")), SQLITE_CONSTRAINT_CHECK);
  ASSERT_EQ(raw_exec(db, INS("printf('%.*c', 65536, 'a')", "x''", "1", "0")),
            SQLITE_CONSTRAINT_CHECK);
  ASSERT_EQ(raw_exec(db, INS("printf('%.*c', 65535, 'a')", "x''", "1", "0")), SQLITE_OK);
  ASSERT_EQ(raw_exec(db, INS("'t'", "NULL", "1", "0")), SQLITE_CONSTRAINT_NOTNULL);
  ASSERT_EQ(raw_exec(db, INS("NULL", "x''", "1", "0")), SQLITE_CONSTRAINT_NOTNULL);
#undef INS
  ASSERT_EQ(raw_exec(db, "INSERT INTO outbox(device_id, topic, payload, qos, retain, created_ms) "
                         "VALUES (9999, 't', x'', 1, 0, 1)"),
            SQLITE_CONSTRAINT_FOREIGNKEY);
  /* A message goes with its device. */
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM outbox"), 3);
  ASSERT_EQ(raw_exec(db, "DELETE FROM devices WHERE client_id = 'leaf-a'"), SQLITE_OK);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM outbox"), 0);
  sqlite3_close(db);
}

/* ---- migration ---- */

static void test_migration_from_3(void)
{
  struct paths p;
  struct store *st;
  struct store_device d;
  struct store_outbox_stats s;
  sqlite3 *db;

  paths_for(&p, "mig3");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), 6);
  make_devices(st);
  ASSERT_EQ(store_device_set_thing(st, "leaf-a", "thing-a"), STORE_OK);
  store_close(st);

  /* Back to version 3: no outbox. */
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  if (!db)
    return;
  ASSERT_EQ(raw_exec(db, "DROP INDEX one_next_cert; ALTER TABLE runs DROP COLUMN old_cert_id; ALTER TABLE runs DROP COLUMN kind; "
                         "DROP TABLE leaf_downlink; DROP TABLE leaf_topics; DROP TABLE leaf_subs; "
                             "DROP TABLE leaf_sessions; DROP TABLE outbox; PRAGMA user_version = 3;"), SQLITE_OK);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'outbox'"), 0);
  sqlite3_close(db);

  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), 6);
  ASSERT_EQ(store_device_get(st, "leaf-a", &d), STORE_OK);
  ASSERT_STR_EQ(d.thing_name, "thing-a");
  ASSERT_EQ(store_device_get(st, "leaf-b", NULL), STORE_OK);
  ASSERT_TRUE(add(st, "leaf-a", "t", "p", 1) > 0);
  ASSERT_EQ(store_outbox_stats(st, NULL, &s), STORE_OK);
  ASSERT_EQ(s.count, 1);
  store_close(st);
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'outbox_device'"), 1);
  sqlite3_close(db);
}

/* ---- batches ---- */

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define BATCH 10000

static void test_batch(void)
{
  static int64_t seqs[BATCH];
  static const uint8_t payload[64] = {1, 2, 3};
  struct paths p;
  struct store *st;
  struct store_outbox_stats s;
  struct store_outbox_msg m = {.topic = "factory/line-1/sensor/temperature",
                               .payload = payload,
                               .len = sizeof payload,
                               .qos = 1};
  int failures = 0;
  double t0, t1, t2, t3;

  m.topic_len = strlen(m.topic);
  if (!(st = open_with_devices(&p, "batch")))
    return;

  /* Rolled back: none of them is left. */
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < BATCH; i++) {
    m.created_ms = i;
    failures += store_outbox_add(st, "leaf-a", &m) != STORE_OK;
  }
  ASSERT_EQ(store_rollback(st), STORE_OK);
  ASSERT_EQ(failures, 0);
  ASSERT_EQ(store_outbox_stats(st, NULL, &s), STORE_OK);
  ASSERT_EQ(s.count, 0);

  t0 = now_s();
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < BATCH; i++) {
    m.created_ms = i;
    failures += store_outbox_add(st, i % 2 ? "leaf-a" : "leaf-b", &m) != STORE_OK;
    seqs[i] = m.seq;
  }
  ASSERT_EQ(store_commit(st), STORE_OK);
  t1 = now_s();
  ASSERT_EQ(failures, 0);
  ASSERT_EQ(store_outbox_stats(st, NULL, &s), STORE_OK);
  ASSERT_EQ(s.count, BATCH);
  ASSERT_EQ(s.bytes, (int64_t)BATCH * (int64_t)(m.topic_len + sizeof payload));
  ASSERT_EQ(store_outbox_stats(st, "leaf-a", &s), STORE_OK);
  ASSERT_EQ(s.count, BATCH / 2);

  t2 = now_s();
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < BATCH; i++)
    failures += store_outbox_delete(st, seqs[i]) != STORE_OK;
  ASSERT_EQ(store_commit(st), STORE_OK);
  t3 = now_s();
  ASSERT_EQ(failures, 0);
  ASSERT_EQ(store_outbox_stats(st, NULL, &s), STORE_OK);
  ASSERT_EQ(s.count, 0);

  /* The same in batches of 100, as the gateway commits them. */
  {
    double b0, b1, b2;
    b0 = now_s();
    for (int i = 0; i < BATCH; i += 100) {
      failures += store_begin(st) != STORE_OK;
      for (int j = i; j < i + 100; j++) {
        failures += store_outbox_add(st, j % 2 ? "leaf-a" : "leaf-b", &m) != STORE_OK;
        seqs[j] = m.seq;
      }
      failures += store_commit(st) != STORE_OK;
    }
    b1 = now_s();
    for (int i = 0; i < BATCH; i += 100) {
      failures += store_begin(st) != STORE_OK;
      for (int j = i; j < i + 100; j++)
        failures += store_outbox_delete(st, seqs[j]) != STORE_OK;
      failures += store_commit(st) != STORE_OK;
    }
    b2 = now_s();
    ASSERT_EQ(failures, 0);
    fprintf(stderr,
            "timing: outbox, one transaction of %d: %.2f us per add, %.2f us per delete; "
            "100 transactions of 100: %.2f us per add, %.2f us per delete "
            "(64-byte payload, synchronous=NORMAL, WAL)\n",
            BATCH, (t1 - t0) * 1e6 / BATCH, (t3 - t2) * 1e6 / BATCH, (b1 - b0) * 1e6 / BATCH,
            (b2 - b1) * 1e6 / BATCH);
  }
  store_close(st);
}

/* store_outbox_add_dev: the cached row id is used while no device has been
 * deleted since; a device deleted by another connection is refused (and
 * the cache cleared), one created again is found, an id given to another
 * device in between never puts the message in that device's outbox, and a
 * prune by this connection makes every cached id be looked up again. */
static void test_add_dev_cache(void)
{
  struct paths p;
  struct store *st;
  struct store_outbox_stats os;
  struct store_devref ref = {0, 0}, old;
  int64_t first, pruned = 0;
  struct store_outbox_msg m = {.topic = "t", .topic_len = 1, .qos = 1};

  if (!(st = open_with_devices(&p, "adddev")))
    return;
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_TRUE(ref.id > 0);
  first = ref.id;
  old = ref;
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_EQ(ref.id, first);
  ASSERT_EQ(ref.gen, old.gen);
  /* Deleted by another connection: refused, the cache cleared. */
  sqlite3 *raw = raw_open(&p);
  ASSERT_TRUE(raw != NULL);
  ASSERT_EQ(raw_exec(raw, "PRAGMA foreign_keys = ON; "
                          "DELETE FROM devices WHERE client_id = 'leaf-a'"), SQLITE_OK);
  sqlite3_close(raw);
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_NOTFOUND);
  ASSERT_EQ(ref.id, 0);
  /* Another device may now hold the old id: the cached id, from before the
   * deletion, is looked up again, not used for it. */
  ASSERT_EQ(store_device_create(st, "leaf-z", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ref = old;
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_NOTFOUND);
  ASSERT_EQ(store_outbox_stats(st, "leaf-z", &os), STORE_OK);
  ASSERT_EQ(os.count, 0);
  /* Created again: the stale id is replaced by the new row's. */
  ASSERT_EQ(store_device_create(st, "leaf-a", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ref = old;
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_TRUE(ref.id > 0);
  ASSERT_TRUE(ref.gen != old.gen);
  ASSERT_EQ(store_outbox_stats(st, "leaf-a", &os), STORE_OK);
  ASSERT_EQ(os.count, 1);
  /* A prune by this connection (a pending device) invalidates the cache:
   * the next add looks the id up again and still finds leaf-a. */
  old = ref;
  ASSERT_EQ(store_device_create(st, "leaf-pending", DEV_PENDING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_prune(st, DEV_PENDING, 2, 10, &pruned), STORE_OK);
  ASSERT_EQ(pruned, 1);
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_EQ(ref.id, old.id);
  ASSERT_TRUE(ref.gen != old.gen);
  /* A run of seqs deleted in one statement; its ends included. */
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_EQ(store_outbox_delete_range(st, m.seq - 2, m.seq - 1), STORE_OK);
  ASSERT_EQ(store_outbox_stats(st, "leaf-a", &os), STORE_OK);
  ASSERT_EQ(os.count, 2);
  ASSERT_EQ(os.last_seq, m.seq);
  store_close(st);
}

/* A cached id whose row is gone while the generation did not move (the
 * defensive path: the foreign key refuses the INSERT, and the transaction
 * goes on).  Inside one transaction of ours, data_version is read once, so
 * a row deleted through our own connection without store_devices_changed
 * is what reaches it. */
static void test_add_dev_fk_fallback(void)
{
  struct paths p;
  struct store *st;
  struct store_outbox_stats os;
  struct store_devref ref = {0, 0};
  struct store_outbox_msg m = {.topic = "t", .topic_len = 1, .qos = 1};

  if (!(st = open_with_devices(&p, "adddevfk")))
    return;
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_OK);
  ASSERT_EQ(store_exec(st, "DELETE FROM devices WHERE client_id = 'leaf-a'"), STORE_OK);
  ASSERT_EQ(store_outbox_add_dev(st, &ref, "leaf-a", &m), STORE_NOTFOUND);
  ASSERT_EQ(ref.id, 0);
  /* The other device's message in the same transaction still goes in. */
  ASSERT_EQ(store_outbox_add_dev(st, &(struct store_devref){0, 0}, "leaf-b", &m), STORE_OK);
  ASSERT_EQ(store_commit(st), STORE_OK);
  ASSERT_EQ(store_outbox_stats(st, "leaf-b", &os), STORE_OK);
  ASSERT_EQ(os.count, 1);
  store_close(st);
}

/* The size of a file, -1 when it does not exist. */
static long long file_size(const char *path)
{
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

/* Commits n transactions of k 1 KB messages each, deleting the previous
 * transaction's messages in the next, as the outbox does; returns the
 * largest the WAL file got. */
static long long churn(struct store *st, const char *wal, int n, int k)
{
  static uint8_t payload[1024];
  int64_t prev[64];
  int nprev = 0;
  long long wal_max = 0;
  for (int i = 0; i < n; i++) {
    int nnew = 0;
    int64_t cur[64];
    ASSERT_EQ(store_begin(st), STORE_OK);
    for (int j = 0; j < k && j < 64; j++) {
      struct store_outbox_msg m = {.topic = "t/ckpt", .topic_len = 6, .payload = payload,
                                   .len = sizeof payload, .qos = 1, .created_ms = i};
      ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_OK);
      cur[nnew++] = m.seq;
    }
    for (int j = 0; j < nprev; j++)
      ASSERT_EQ(store_outbox_delete(st, prev[j]), STORE_OK);
    ASSERT_EQ(store_commit(st), STORE_OK);
    memcpy(prev, cur, sizeof cur);
    nprev = nnew;
    long long w = file_size(wal);
    if (w > wal_max)
      wal_max = w;
  }
  return wal_max;
}

/* A burst grows the WAL far past the checkpoint threshold; once a
 * checkpoint lets it start over it is cut back to 1 MB
 * (journal_size_limit), not kept at the burst's size. */
static void test_wal_cut_back_after_a_burst(void)
{
  static uint8_t payload[4096];
  struct paths p;
  char wal[340];
  struct store *st;
  long long big;

  paths_for(&p, "walcut");
  snprintf(wal, sizeof wal, "%s-wal", p.db);
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  make_devices(st);
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < 2000; i++) {
    struct store_outbox_msg m = {.topic = "t/burst", .topic_len = 7, .payload = payload,
                                 .len = sizeof payload, .qos = 1, .created_ms = i};
    ASSERT_EQ(store_outbox_add(st, "leaf-a", &m), STORE_OK);
  }
  ASSERT_EQ(store_commit(st), STORE_OK);
  big = file_size(wal);
  ASSERT_TRUE(big > 8LL * 1024 * 1024);
  /* Small commits after it: SQLite's checkpoint copies the burst back, and
   * the next write starts the WAL over. */
  churn(st, wal, 50, 1);
  fprintf(stderr, "  WAL %lld bytes after the burst, %lld after 50 small commits\n", big,
          file_size(wal));
  ASSERT_TRUE(file_size(wal) <= 1024LL * 1024 + 64 * 1024);
  store_close(st);
}

/* The checkpoint thread (db/store_ckpt.c): many commits leave the WAL
 * bounded by what the threshold allows, the checkpoints ran on the thread,
 * and a close stops it and leaves no WAL behind; a cap at the threshold
 * makes every checkpoint a fallback on the writer's connection. */
static void test_checkpoint_thread(void)
{
  struct paths p;
  char wal[340];
  struct store_ckpt_stats ck;
  struct store *st;
  long long wal_max;

  paths_for(&p, "ckpt");
  snprintf(wal, sizeof wal, "%s-wal", p.db);
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  make_devices(st);
  ASSERT_EQ(store_ckpt_start(st, 0, 10), STORE_INVAL);
  ASSERT_EQ(store_ckpt_start(st, 20, 10), STORE_INVAL);
  ASSERT_EQ(store_ckpt_start(st, 100, 4000), STORE_OK);
  ASSERT_EQ(store_ckpt_start(st, 100, 4000), STORE_INVAL);
  /* 3000 commits of 8 KB added and deleted: 24 MB through the WAL. */
  wal_max = churn(st, wal, 3000, 8);
  store_ckpt_stats(st, &ck);
  fprintf(stderr, "  checkpoints %llu (%llu caught up), fallbacks %llu, WAL max %lld pages "
                  "(%lld bytes on disk), checkpoint max %lld us\n",
          (unsigned long long)ck.runs, (unsigned long long)ck.caught_up,
          (unsigned long long)ck.fallbacks, (long long)ck.wal_pages_max, wal_max,
          (long long)ck.max_us);
  ASSERT_TRUE(ck.runs > 0);
  ASSERT_EQ(ck.failures, 0);
  /* Bounded by the cap, plus what commits add while the thread's pass that
   * kept the writer from falling back ends (4 KiB pages plus headers). */
  ASSERT_TRUE(ck.wal_pages_max < 2 * 4000);
  ASSERT_TRUE(wal_max < 2 * 4000 * 4200LL);
  /* Within the cap the WAL keeps the size it reached: starting it over cut
   * nothing (no ftruncate on the writer's thread), unlike a store without
   * the thread (test_wal_cut_back_after_a_burst).  Only a WAL past the
   * bound (threshold + cap pages, with their frame headers) is cut to it. */
  {
    long long keep = (100 + 4000) * (4096LL + 24), end = file_size(wal);
    fprintf(stderr, "  WAL file %lld bytes at the end, %lld at most, kept up to %lld\n", end,
            wal_max, keep);
    ASSERT_TRUE(wal_max > 1100LL * 1024);
    ASSERT_TRUE(end >= (wal_max < keep ? wal_max : keep));
  }
  store_close(st);
  ASSERT_TRUE(file_size(wal) <= 0); /* TRUNCATE at close, or removed */

  /* Reopened: the data is there; the cap at the threshold checkpoints on
   * the writer's own connection every time. */
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  struct store_outbox_stats os;
  ASSERT_EQ(store_outbox_stats(st, "leaf-a", &os), STORE_OK);
  ASSERT_EQ(os.count, 8);
  ASSERT_EQ(store_ckpt_start(st, 50, 50), STORE_OK);
  wal_max = churn(st, wal, 500, 8);
  store_ckpt_stats(st, &ck);
  ASSERT_EQ(ck.runs, 0);
  ASSERT_TRUE(ck.fallbacks > 0);
  ASSERT_TRUE(wal_max < (50 + 100) * 4200LL);
  store_close(st);
  ASSERT_TRUE(file_size(wal) <= 0);
}

static void remove_dir(const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[600];
  if (!d)
    return;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

int main(void)
{
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/test_store_outbox_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }

  RUN(test_order);
  RUN(test_seq_never_reused);
  RUN(test_load);
  RUN(test_load_reenter);
  RUN(test_stats);
  RUN(test_discard);
  RUN(test_refused);
  RUN(test_payloads);
  RUN(test_raw_checks);
  RUN(test_migration_from_3);
  RUN(test_batch);
  RUN(test_checkpoint_thread);
  RUN(test_wal_cut_back_after_a_burst);
  RUN(test_add_dev_cache);
  RUN(test_add_dev_fk_fallback);

  remove_dir(g_dir);
  return TEST_END();
}
