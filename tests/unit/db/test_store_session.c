/*
 * test_store_session.c - the leaves' session state (db/store_session.c):
 * put + adds + load round-trip every field (a will with a binary message,
 * no will, an IPv6 address, DTLS); a put again replaces the children;
 * delete clears all four tables; unknown devices and out-of-range fields
 * refused; a deleted device takes its session along (foreign keys); load
 * in ClientId order, downlink in seq order, an early stop; count;
 * migration from a version-4 file; a batch of 1,000 leaves with 5
 * subscriptions and 5 topics each in one transaction, then a load, with
 * the times printed (never asserted).
 */
#include "test.h"

#include <dirent.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

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
  sqlite3_busy_timeout(db, 5000);
  return db;
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

/* Rows of the four tables together, through a second connection. */
static int64_t rows_of(const struct paths *p, const char *table)
{
  char sql[96];
  sqlite3 *db = raw_open(p);
  int64_t n;
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
  n = db ? raw_int(db, sql) : -1;
  sqlite3_close(db);
  return n;
}

static int64_t all_rows(const struct paths *p)
{
  return rows_of(p, "leaf_sessions") + rows_of(p, "leaf_subs") + rows_of(p, "leaf_topics") +
         rows_of(p, "leaf_downlink");
}

/* A record with every field set to something other than its default. */
static const uint8_t WILL_MSG[] = {'g', 'o', 0, 'n', 'e', 0, 0xff};

static struct store_leaf_session full_session(const char *client_id)
{
  struct store_leaf_session s = {.client_id = client_id,
                                 .state = LEAF_ASLEEP,
                                 .clean = false,
                                 .keepalive = 65535,
                                 .sleep_s = 3600,
                                 .addr = "[fe80::1:2]:47193",
                                 .via = 1,
                                 .sec = 3,
                                 .will_topic = "dev/\0will", /* with a NUL inside */
                                 .will_topic_len = 9,
                                 .will_msg = WILL_MSG,
                                 .will_msg_len = sizeof WILL_MSG,
                                 .will_qos = 2,
                                 .will_retain = true,
                                 .next_msg_id = 65535,
                                 .next_topic_id = 0};
  return s;
}

static struct store_leaf_session plain_session(const char *client_id)
{
  struct store_leaf_session s = {.client_id = client_id,
                                 .state = LEAF_ACTIVE,
                                 .clean = true,
                                 .keepalive = 60,
                                 .next_msg_id = 1,
                                 .next_topic_id = 1};
  return s;
}

/* What a load saw, flattened: one line per callback into log[]. */
#define MAXLOG 64
struct seen {
  char log[MAXLOG][160];
  int n;
  int stop_at; /* answer 9 at this callback (1-based); 0 never */
  struct store_leaf_session first;
  uint8_t will_msg[16];
  char will_topic[16];
  char addr[80];
  bool will_msg_null;
  bool addr_null;
  bool will_topic_null;
  uint8_t down_payload[16];
  size_t down_len;
  bool down_null;
};

static int note(struct seen *s, const char *line)
{
  if (s->n < MAXLOG)
    snprintf(s->log[s->n], sizeof s->log[0], "%s", line);
  s->n++;
  return s->stop_at && s->n == s->stop_at ? 9 : 0;
}

static int on_sess(void *ud, const struct store_leaf_session *ls)
{
  struct seen *s = ud;
  char line[160];
  if (s->n == 0) {
    s->first = *ls;
    s->will_topic_null = ls->will_topic == NULL;
    if (ls->will_topic && ls->will_topic_len <= sizeof s->will_topic)
      memcpy(s->will_topic, ls->will_topic, ls->will_topic_len);
    s->will_msg_null = ls->will_msg == NULL;
    if (ls->will_msg && ls->will_msg_len <= sizeof s->will_msg)
      memcpy(s->will_msg, ls->will_msg, ls->will_msg_len);
    s->addr_null = ls->addr == NULL;
    if (ls->addr)
      snprintf(s->addr, sizeof s->addr, "%s", ls->addr);
    s->first.client_id = s->first.addr = s->first.will_topic = NULL;
    s->first.will_msg = NULL;
  }
  snprintf(line, sizeof line, "sess %s", ls->client_id);
  return note(s, line);
}

static int on_sub(void *ud, const char *client_id, const char *filter, size_t len, int qos)
{
  char line[160];
  snprintf(line, sizeof line, "sub %s %.*s %d", client_id, (int)len, filter, qos);
  return note(ud, line);
}

static int on_topic(void *ud, const char *client_id, uint16_t id, const char *name, size_t len,
                    bool known)
{
  char line[160];
  snprintf(line, sizeof line, "topic %s %u %.*s %d", client_id, (unsigned)id, (int)len, name,
           known ? 1 : 0);
  return note(ud, line);
}

static int on_down(void *ud, const char *client_id, const char *topic, size_t topic_len,
                   const uint8_t *payload, size_t len, int qos, bool retain)
{
  struct seen *s = ud;
  char line[160];
  if (s->down_len == 0 && !s->down_null) {
    s->down_len = len;
    s->down_null = payload == NULL;
    if (payload && len <= sizeof s->down_payload)
      memcpy(s->down_payload, payload, len);
  }
  snprintf(line, sizeof line, "down %s %.*s %zu %d %d", client_id, (int)topic_len, topic, len, qos,
           retain ? 1 : 0);
  return note(s, line);
}

static const struct store_leaf_cbs ALL_CBS = {on_sess, on_sub, on_topic, on_down};

static void make_devices(struct store *st)
{
  ASSERT_EQ(store_device_create(st, "leaf-a", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "leaf-b", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "leaf-c", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
}

static struct store *fresh(struct paths *p, const char *name)
{
  struct store *st;
  paths_for(p, name);
  st = open_store(p);
  ASSERT_TRUE(st != NULL);
  if (st)
    make_devices(st);
  return st;
}

/* ---- round trip ---- */

static void test_round_trip(void)
{
  static const uint8_t bin[] = {0, 1, 0, 2};
  struct paths p;
  struct store *st = fresh(&p, "round");
  struct store_leaf_session a = full_session("leaf-a"), b = plain_session("leaf-b");
  struct seen s = {0};

  if (!st)
    return;
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_leaf_put(st, &a, 100), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "a/+/c", 5, 1), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "#", 1, 0), STORE_OK);
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 1, "up/x", 4, true), STORE_OK);
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 65535, "down/y", 6, false), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "down/y", 6, bin, sizeof bin, 1, true), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "down/z", 6, NULL, 0, 0, false), STORE_OK);
  ASSERT_EQ(store_leaf_put(st, &b, 101), STORE_OK);
  ASSERT_EQ(store_commit(st), STORE_OK);
  store_close(st);

  /* Through a reopen, as after a restart. */
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &s), STORE_OK);
  ASSERT_EQ(s.n, 8);
  ASSERT_STR_EQ(s.log[0], "sess leaf-a");
  ASSERT_STR_EQ(s.log[1], "sub leaf-a # 0"); /* by filter */
  ASSERT_STR_EQ(s.log[2], "sub leaf-a a/+/c 1");
  ASSERT_STR_EQ(s.log[3], "topic leaf-a 1 up/x 1");
  ASSERT_STR_EQ(s.log[4], "topic leaf-a 65535 down/y 0");
  ASSERT_STR_EQ(s.log[5], "down leaf-a down/y 4 1 1");
  ASSERT_STR_EQ(s.log[6], "down leaf-a down/z 0 0 0");
  ASSERT_STR_EQ(s.log[7], "sess leaf-b");
  ASSERT_EQ(s.down_len, sizeof bin);
  ASSERT_MEM_EQ(s.down_payload, bin, sizeof bin);

  ASSERT_EQ(s.first.state, LEAF_ASLEEP);
  ASSERT_EQ(s.first.clean, false);
  ASSERT_EQ(s.first.keepalive, 65535);
  ASSERT_EQ(s.first.sleep_s, 3600);
  ASSERT_TRUE(!s.addr_null);
  ASSERT_STR_EQ(s.addr, "[fe80::1:2]:47193");
  ASSERT_EQ(s.first.via, 1);
  ASSERT_EQ(s.first.sec, 3);
  ASSERT_TRUE(!s.will_topic_null);
  ASSERT_EQ(s.first.will_topic_len, 9);
  ASSERT_MEM_EQ(s.will_topic, "dev/\0will", 9);
  ASSERT_TRUE(!s.will_msg_null);
  ASSERT_EQ(s.first.will_msg_len, sizeof WILL_MSG);
  ASSERT_MEM_EQ(s.will_msg, WILL_MSG, sizeof WILL_MSG);
  ASSERT_EQ(s.first.will_qos, 2);
  ASSERT_EQ(s.first.will_retain, true);
  ASSERT_EQ(s.first.next_msg_id, 65535);
  ASSERT_EQ(s.first.next_topic_id, 0);

  /* leaf-b: no will, no address, defaults. */
  {
    struct seen sb = {0};
    ASSERT_EQ(store_leaf_delete(st, "leaf-a"), STORE_OK);
    ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &sb), STORE_OK);
    ASSERT_EQ(sb.n, 1);
    ASSERT_STR_EQ(sb.log[0], "sess leaf-b");
    ASSERT_EQ(sb.first.state, LEAF_ACTIVE);
    ASSERT_EQ(sb.first.clean, true);
    ASSERT_EQ(sb.first.keepalive, 60);
    ASSERT_EQ(sb.first.sleep_s, 0);
    ASSERT_TRUE(sb.addr_null);
    ASSERT_EQ(sb.first.via, 0);
    ASSERT_TRUE(sb.will_topic_null);
    ASSERT_EQ(sb.first.will_topic_len, 0);
    ASSERT_TRUE(sb.will_msg_null);
    ASSERT_EQ(sb.first.will_msg_len, 0);
    ASSERT_EQ(sb.first.next_msg_id, 1);
  }
  /* An empty will message with a will topic stays a will. */
  {
    struct store_leaf_session c = plain_session("leaf-c");
    struct seen sc = {0};
    c.will_topic = "w";
    c.will_topic_len = 1;
    c.addr = "192.0.2.7:1883";
    ASSERT_EQ(store_leaf_delete(st, "leaf-b"), STORE_OK);
    ASSERT_EQ(store_leaf_put(st, &c, 5), STORE_OK);
    ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &sc), STORE_OK);
    ASSERT_EQ(sc.n, 1);
    ASSERT_TRUE(!sc.will_topic_null);
    ASSERT_EQ(sc.first.will_topic_len, 1);
    ASSERT_EQ(sc.first.will_msg_len, 0);
    ASSERT_STR_EQ(sc.addr, "192.0.2.7:1883");
  }
  store_close(st);
}

/* ---- replace, delete, cascade ---- */

static void test_replace_and_delete(void)
{
  struct paths p;
  struct store *st = fresh(&p, "replace");
  struct store_leaf_session a = full_session("leaf-a"), b = plain_session("leaf-b");
  struct seen s = {0};
  int64_t n = -1;

  if (!st)
    return;
  ASSERT_EQ(store_leaf_put(st, &a, 1), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "old/sub", 7, 1), STORE_OK);
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 3, "old/topic", 9, true), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "old/down", 8, (const uint8_t *)"x", 1, 1, false),
            STORE_OK);
  ASSERT_EQ(store_leaf_put(st, &b, 1), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-b", "b/sub", 5, 0), STORE_OK);

  /* The same leaf again: the record changes, the old children are gone. */
  a.state = LEAF_ACTIVE;
  a.will_topic = NULL;
  a.will_topic_len = 0;
  a.will_msg = NULL;
  a.will_msg_len = 0;
  ASSERT_EQ(store_leaf_put(st, &a, 2), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "new/sub", 7, 0), STORE_OK);
  /* Subscribing twice keeps the later QoS, one row. */
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "new/sub", 7, 1), STORE_OK);
  ASSERT_EQ(store_leaf_count(st, &n), STORE_OK);
  ASSERT_EQ(n, 2);
  ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &s), STORE_OK);
  ASSERT_EQ(s.n, 4);
  ASSERT_STR_EQ(s.log[0], "sess leaf-a");
  ASSERT_STR_EQ(s.log[1], "sub leaf-a new/sub 1");
  ASSERT_STR_EQ(s.log[2], "sess leaf-b");
  ASSERT_STR_EQ(s.log[3], "sub leaf-b b/sub 0"); /* the other leaf untouched */
  ASSERT_EQ(s.first.state, LEAF_ACTIVE);
  ASSERT_TRUE(s.will_topic_null);
  ASSERT_TRUE(s.will_msg_null);

  /* Delete: all four tables, only that leaf; twice is fine. */
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 3, "t", 1, true), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "d", 1, NULL, 0, 0, false), STORE_OK);
  ASSERT_EQ(all_rows(&p), 2 + 2 + 1 + 1);
  ASSERT_EQ(store_leaf_delete(st, "leaf-a"), STORE_OK);
  ASSERT_EQ(all_rows(&p), 2);
  ASSERT_EQ(store_leaf_delete(st, "leaf-a"), STORE_OK);
  ASSERT_EQ(store_leaf_delete(st, "nobody"), STORE_OK);
  ASSERT_EQ(store_leaf_count(st, &n), STORE_OK);
  ASSERT_EQ(n, 1);

  /* A device deleted (raw, as a prune would) takes its session along. */
  ASSERT_EQ(store_leaf_put(st, &a, 3), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "s", 1, 0), STORE_OK);
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 3, "t", 1, true), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "d", 1, NULL, 0, 0, false), STORE_OK);
  {
    sqlite3 *db = raw_open(&p);
    ASSERT_TRUE(db != NULL);
    ASSERT_EQ(sqlite3_exec(db,
                           "PRAGMA foreign_keys = ON; "
                           "DELETE FROM devices WHERE client_id = 'leaf-a'",
                           NULL, NULL, NULL),
              SQLITE_OK);
    sqlite3_close(db);
  }
  ASSERT_EQ(all_rows(&p), 2); /* leaf-b's record and subscription */
  store_close(st);
}

/* ---- refused ---- */

static void test_refused(void)
{
  struct paths p;
  struct store *st = fresh(&p, "refused");
  struct store_leaf_session s = plain_session("leaf-a");
  int64_t n = -1;

  if (!st)
    return;
  /* Unknown device; and children of a device without a record. */
  s.client_id = "nobody";
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_NOTFOUND);
  ASSERT_EQ(store_leaf_sub_add(st, "nobody", "f", 1, 0), STORE_NOTFOUND);
  ASSERT_EQ(store_leaf_topic_add(st, "nobody", 1, "t", 1, true), STORE_NOTFOUND);
  ASSERT_EQ(store_leaf_downlink_add(st, "nobody", "t", 1, NULL, 0, 0, false), STORE_NOTFOUND);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "f", 1, 0), STORE_NOTFOUND);

  s.client_id = "leaf-a";
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
#define REFUSED(field, value)                                                                      \
  do {                                                                                             \
    struct store_leaf_session b_ = plain_session("leaf-a");                                        \
    b_.field = value;                                                                              \
    ASSERT_EQ(store_leaf_put(st, &b_, 2), STORE_INVAL);                                            \
  } while (0)
  REFUSED(keepalive, 0);
  REFUSED(state, 3);
  REFUSED(state, -1);
  REFUSED(via, 2);
  REFUSED(sec, 4);
  REFUSED(will_qos, 3);
  REFUSED(client_id, "");
  REFUSED(client_id, NULL);
  REFUSED(addr,
          "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535-and-then-some-more-text-to-be-long");
  REFUSED(will_msg_len, 3); /* with will_msg NULL */
#undef REFUSED
  {
    struct store_leaf_session b = plain_session("leaf-a");
    b.will_topic = "w";
    b.will_topic_len = 0;
    ASSERT_EQ(store_leaf_put(st, &b, 2), STORE_INVAL);
    b.will_topic_len = 65536;
    ASSERT_EQ(store_leaf_put(st, &b, 2), STORE_INVAL);
  }
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "", 0, 0), STORE_INVAL);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", NULL, 3, 0), STORE_INVAL);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "f", 1, 2), STORE_INVAL);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "f", 1, -1), STORE_INVAL);
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 0, "t", 1, true), STORE_INVAL);
  ASSERT_EQ(store_leaf_topic_add(st, "leaf-a", 1, "", 0, true), STORE_INVAL);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "t", 1, NULL, 2, 0, false), STORE_INVAL);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "t", 1, NULL, 0, 2, false), STORE_INVAL);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "", 0, NULL, 0, 0, false), STORE_INVAL);

  /* Nothing of it was written; the first record is whole. */
  ASSERT_EQ(store_leaf_count(st, &n), STORE_OK);
  ASSERT_EQ(n, 1);
  ASSERT_EQ(all_rows(&p), 1);

  /* A refused put inside a batch leaves the batch usable. */
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "kept", 4, 0), STORE_OK);
  s.client_id = "nobody";
  ASSERT_EQ(store_leaf_put(st, &s, 3), STORE_NOTFOUND);
  ASSERT_EQ(store_commit(st), STORE_OK);
  ASSERT_EQ(rows_of(&p, "leaf_subs"), 1);
  store_close(st);
}

/* ---- load order, stop, downlink order ---- */

static void test_load_order(void)
{
  struct paths p;
  struct store *st = fresh(&p, "order");
  struct store_leaf_session s;
  struct seen all = {0};
  char topic[8];

  if (!st)
    return;
  /* Written out of ClientId order, the downlink interleaved. */
  s = plain_session("leaf-c");
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
  s = plain_session("leaf-a");
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
  s = plain_session("leaf-b");
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
  for (int i = 0; i < 6; i++) {
    /* Topics that sort against their seq order: z9, y8, ... */
    snprintf(topic, sizeof topic, "%c%d", 'z' - i, 9 - i);
    ASSERT_EQ(store_leaf_downlink_add(st, i % 2 ? "leaf-a" : "leaf-c", topic, 2, NULL, 0, 1, false),
              STORE_OK);
  }
  ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &all), STORE_OK);
  ASSERT_EQ(all.n, 9);
  ASSERT_STR_EQ(all.log[0], "sess leaf-a");
  ASSERT_STR_EQ(all.log[1], "down leaf-a y8 0 1 0");
  ASSERT_STR_EQ(all.log[2], "down leaf-a w6 0 1 0");
  ASSERT_STR_EQ(all.log[3], "down leaf-a u4 0 1 0");
  ASSERT_STR_EQ(all.log[4], "sess leaf-b");
  ASSERT_STR_EQ(all.log[5], "sess leaf-c");
  ASSERT_STR_EQ(all.log[6], "down leaf-c z9 0 1 0");
  ASSERT_STR_EQ(all.log[7], "down leaf-c x7 0 1 0");
  ASSERT_STR_EQ(all.log[8], "down leaf-c v5 0 1 0");

  /* A stop in a child callback and in a record callback; its code comes back. */
  {
    struct seen a = {.stop_at = 3}, b = {.stop_at = 5};
    ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &a), 9);
    ASSERT_EQ(a.n, 3);
    ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &b), 9);
    ASSERT_EQ(b.n, 5);
    ASSERT_STR_EQ(b.log[4], "sess leaf-b");
  }
  /* NULL callbacks are skipped; only records. */
  {
    struct store_leaf_cbs only = {.sess = on_sess};
    struct seen c = {0};
    ASSERT_EQ(store_leaf_load(st, &only, &c), STORE_OK);
    ASSERT_EQ(c.n, 3);
    ASSERT_STR_EQ(c.log[2], "sess leaf-c");
  }
  /* Downlink seq survives its leaf's put clearing it: the next one is
   * after all the earlier ones (AUTOINCREMENT), so order holds after a put. */
  s = plain_session("leaf-a");
  ASSERT_EQ(store_leaf_put(st, &s, 2), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "b", 1, NULL, 0, 0, false), STORE_OK);
  ASSERT_EQ(store_leaf_downlink_add(st, "leaf-a", "a", 1, NULL, 0, 0, false), STORE_OK);
  {
    struct store_leaf_cbs only = {.down = on_down};
    struct seen d = {0};
    ASSERT_EQ(store_leaf_load(st, &only, &d), STORE_OK);
    ASSERT_EQ(d.n, 5);
    ASSERT_STR_EQ(d.log[0], "down leaf-a b 0 0 0");
    ASSERT_STR_EQ(d.log[1], "down leaf-a a 0 0 0");
    ASSERT_STR_EQ(d.log[2], "down leaf-c z9 0 1 0");
  }
  store_close(st);
}

/* A callback that writes to the store while the load reads (a fresh
 * statement each: no cached statement reset under the load). */
static int reenter_sess(void *ud, const struct store_leaf_session *ls)
{
  struct store *st = ud;
  return store_audit(st, 1, "test", "leaf.loaded", ls->client_id, NULL);
}

static void test_load_reenter(void)
{
  struct paths p;
  struct store *st = fresh(&p, "reenter");
  struct store_leaf_session s = plain_session("leaf-a");
  struct store_leaf_cbs cbs = {.sess = reenter_sess};
  int64_t n = -1;

  if (!st)
    return;
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
  s.client_id = "leaf-b";
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
  ASSERT_EQ(store_leaf_load(st, &cbs, st), STORE_OK);
  ASSERT_EQ(store_audit_list(st, NULL, 0, 10, NULL, NULL, &n), STORE_OK);
  ASSERT_TRUE(n >= 2);
  ASSERT_EQ(store_leaf_count(st, &n), STORE_OK);
  ASSERT_EQ(n, 2);
  store_close(st);
}

/* ---- migration ---- */

static void test_migration_from_4(void)
{
  struct paths p;
  struct store *st = fresh(&p, "mig4");
  struct store_device d;
  struct store_leaf_session s = plain_session("leaf-a");
  struct seen seen = {0};
  sqlite3 *db;

  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), 6);
  ASSERT_EQ(store_device_set_thing(st, "leaf-a", "thing-a"), STORE_OK);
  store_close(st);

  /* Back to version 4: no leaf tables. */
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  if (!db)
    return;
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP INDEX one_next_cert; ALTER TABLE runs DROP COLUMN old_cert_id; ALTER TABLE runs DROP COLUMN kind; "
                         "DROP TABLE leaf_downlink; DROP TABLE leaf_topics; "
                         "DROP TABLE leaf_subs; DROP TABLE leaf_sessions; "
                         "PRAGMA user_version = 4;",
                         NULL, NULL, NULL),
            SQLITE_OK);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'leaf_%'"), 0);
  sqlite3_close(db);

  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), 6);
  ASSERT_EQ(store_device_get(st, "leaf-a", &d), STORE_OK);
  ASSERT_STR_EQ(d.thing_name, "thing-a");
  ASSERT_EQ(store_device_get(st, "leaf-c", NULL), STORE_OK);
  ASSERT_EQ(store_leaf_put(st, &s, 1), STORE_OK);
  ASSERT_EQ(store_leaf_sub_add(st, "leaf-a", "f", 1, 1), STORE_OK);
  ASSERT_EQ(store_leaf_load(st, &ALL_CBS, &seen), STORE_OK);
  ASSERT_EQ(seen.n, 2);
  store_close(st);
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'leaf_%'"), 5);
  sqlite3_close(db);
}

/* ---- a batch ---- */

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define LEAVES 1000

struct counts {
  int64_t sess, sub, topic, down;
};

static int count_sess(void *ud, const struct store_leaf_session *s)
{
  (void)s;
  ((struct counts *)ud)->sess++;
  return 0;
}

static int count_sub(void *ud, const char *c, const char *f, size_t len, int qos)
{
  (void)c, (void)f, (void)len, (void)qos;
  ((struct counts *)ud)->sub++;
  return 0;
}

static int count_topic(void *ud, const char *c, uint16_t id, const char *n, size_t len, bool k)
{
  (void)c, (void)id, (void)n, (void)len, (void)k;
  ((struct counts *)ud)->topic++;
  return 0;
}

static void test_batch(void)
{
  static char ids[LEAVES][24];
  struct paths p;
  struct store *st;
  struct store_leaf_cbs cbs = {count_sess, count_sub, count_topic, NULL};
  struct counts c = {0};
  int failures = 0;
  int64_t n = -1;
  double t0, t1, t2, t3, t4;

  paths_for(&p, "batch");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < LEAVES; i++) {
    snprintf(ids[i], sizeof ids[i], "leaf-%05d", (i * 7919) % LEAVES); /* not in order */
    failures += store_device_create(st, ids[i], DEV_ACTIVE, NULL, 1, NULL) != STORE_OK;
  }
  ASSERT_EQ(store_commit(st), STORE_OK);

  t0 = now_s();
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < LEAVES; i++) {
    struct store_leaf_session s = full_session(ids[i]);
    char name[64];
    s.addr = "[2001:db8::17]:50123";
    failures += store_leaf_put(st, &s, 10) != STORE_OK;
    for (int j = 0; j < 5; j++) {
      int len = snprintf(name, sizeof name, "factory/line-%d/sensor/%d/#", i % 10, j);
      failures += store_leaf_sub_add(st, ids[i], name, (size_t)len, j % 2) != STORE_OK;
    }
    for (int j = 0; j < 5; j++) {
      int len = snprintf(name, sizeof name, "factory/line-%d/leaf/%d/temperature", i % 10, j);
      failures +=
          store_leaf_topic_add(st, ids[i], (uint16_t)(j + 1), name, (size_t)len, j < 3) != STORE_OK;
    }
  }
  ASSERT_EQ(store_commit(st), STORE_OK);
  t1 = now_s();

  /* The same again (every session changed): the put now replaces. */
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < LEAVES; i++) {
    struct store_leaf_session s = full_session(ids[i]);
    failures += store_leaf_put(st, &s, 11) != STORE_OK;
  }
  ASSERT_EQ(store_commit(st), STORE_OK);
  t2 = now_s();
  ASSERT_EQ(failures, 0);

  /* Put the children back for the load. */
  ASSERT_EQ(store_begin(st), STORE_OK);
  for (int i = 0; i < LEAVES; i++) {
    struct store_leaf_session s = full_session(ids[i]);
    failures += store_leaf_put(st, &s, 12) != STORE_OK;
    for (int j = 0; j < 5; j++) {
      char name[64];
      int len = snprintf(name, sizeof name, "f/%d", j);
      failures += store_leaf_sub_add(st, ids[i], name, (size_t)len, 0) != STORE_OK;
      failures +=
          store_leaf_topic_add(st, ids[i], (uint16_t)(j + 1), name, (size_t)len, true) != STORE_OK;
    }
  }
  ASSERT_EQ(store_commit(st), STORE_OK);
  ASSERT_EQ(failures, 0);
  store_close(st);
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;

  t3 = now_s();
  ASSERT_EQ(store_leaf_load(st, &cbs, &c), STORE_OK);
  t4 = now_s();
  ASSERT_EQ(c.sess, LEAVES);
  ASSERT_EQ(c.sub, LEAVES * 5);
  ASSERT_EQ(c.topic, LEAVES * 5);
  ASSERT_EQ(store_leaf_count(st, &n), STORE_OK);
  ASSERT_EQ(n, LEAVES);
  fprintf(stderr,
          "timing: leaf sessions, one transaction of %d leaves: %.2f us per leaf "
          "(put + 5 subs + 5 topics, the first time), %.2f us per put alone (replacing); "
          "load of %d leaves with %d subs and %d topics: %.2f ms (%.2f us per leaf) "
          "(synchronous=NORMAL, WAL)\n",
          LEAVES, (t1 - t0) * 1e6 / LEAVES, (t2 - t1) * 1e6 / LEAVES, LEAVES, LEAVES * 5,
          LEAVES * 5, (t4 - t3) * 1e3, (t4 - t3) * 1e6 / LEAVES);
  store_close(st);
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
  snprintf(g_dir, sizeof g_dir, "%s/test_store_session_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }

  RUN(test_round_trip);
  RUN(test_replace_and_delete);
  RUN(test_refused);
  RUN(test_load_order);
  RUN(test_load_reenter);
  RUN(test_migration_from_4);
  RUN(test_batch);

  remove_dir(g_dir);
  return TEST_END();
}
