/*
 * test_store_prune.c - what the registry's upkeep (gateway/upkeep.c) relies
 * on: pending devices pruned by age and in batches, only pending ones and
 * never one holding a DTLS key; the audit retention by rows and by age,
 * oldest first; a lock held by another connection answered STORE_BUSY after
 * the (short) busy time-out; the free space of the registry's filesystem;
 * DTLS pre-shared keys sealed at rest.
 */
#include "test.h"

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

static struct store *open_named(const char *name, char *db, size_t cap)
{
  char key[320];
  struct store *st = NULL;
  snprintf(db, cap, "%s/%s.db", g_dir, name);
  snprintf(key, sizeof key, "%s/%s.key", g_dir, name);
  struct store_opts o = {.path = db, .key_file = key, .synchronous = 1};
  if (store_open(&o, &st) != STORE_OK)
    fprintf(stderr, "store_open(%s): %s\n", db, store_errmsg(NULL));
  return st;
}

static void add_device(struct store *st, const char *id, int state, int64_t seen)
{
  ASSERT_EQ(store_device_create(st, id, state, NULL, seen, NULL), STORE_OK);
  ASSERT_EQ(store_device_touch(st, id, seen), STORE_OK);
}

static void test_prune_pending(void)
{
  char db[320], id[32];
  struct store *st = open_named("pending", db, sizeof db);
  struct store_device d;
  int64_t n = -1;
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "old-%d", i);
    add_device(st, id, DEV_PENDING, 1000 + i);
  }
  add_device(st, "new", DEV_PENDING, 5000);
  add_device(st, "old-approved", DEV_APPROVED, 10);
  add_device(st, "old-blocked", DEV_BLOCKED, 10);

  /* A batch of at most 3, the oldest first. */
  ASSERT_EQ(store_device_prune(st, DEV_PENDING, 4000, 3, &n), STORE_OK);
  ASSERT_EQ(n, 3);
  ASSERT_EQ(store_device_get(st, "old-0", &d), STORE_NOTFOUND);
  ASSERT_EQ(store_device_get(st, "old-2", &d), STORE_NOTFOUND);
  ASSERT_EQ(store_device_get(st, "old-3", &d), STORE_OK);
  ASSERT_EQ(store_device_prune(st, DEV_PENDING, 4000, 100, &n), STORE_OK);
  ASSERT_EQ(n, 2);
  ASSERT_EQ(store_device_prune(st, DEV_PENDING, 4000, 100, &n), STORE_OK);
  ASSERT_EQ(n, 0);
  /* Recent pending devices and every other state stay. */
  ASSERT_EQ(store_device_get(st, "new", &d), STORE_OK);
  ASSERT_EQ(store_device_get(st, "old-approved", &d), STORE_OK);
  ASSERT_EQ(store_device_get(st, "old-blocked", &d), STORE_OK);
  /* Only pending devices may be pruned. */
  ASSERT_EQ(store_device_prune(st, DEV_BLOCKED, 4000, 100, &n), STORE_INVAL);
  ASSERT_EQ(n, 0);
  store_close(st);
}

/* A device given a DTLS key before its first CONNECT is never pruned: the
 * cascade would take the key with it. */
static void test_prune_keeps_psk_holders(void)
{
  char db[320];
  struct store *st = open_named("prune-psk", db, sizeof db);
  struct store_device d;
  uint8_t key[32], got[64];
  size_t len = 0;
  int64_t n = -1;
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  memset(key, 0x5A, sizeof key);
  add_device(st, "keyed-old", DEV_PENDING, 100);
  add_device(st, "bare-old", DEV_PENDING, 100);
  ASSERT_EQ(store_psk_set(st, "keyed-old", key, sizeof key, 100), STORE_OK);
  ASSERT_EQ(store_device_get(st, "keyed-old", &d), STORE_OK);
  ASSERT_TRUE(d.has_psk);

  ASSERT_EQ(store_device_prune(st, DEV_PENDING, 4000, 100, &n), STORE_OK);
  ASSERT_EQ(n, 1);
  ASSERT_EQ(store_device_get(st, "bare-old", &d), STORE_NOTFOUND);
  ASSERT_EQ(store_device_get(st, "keyed-old", &d), STORE_OK);
  ASSERT_EQ(store_psk_get(st, "keyed-old", got, sizeof got, &len), STORE_OK);
  ASSERT_EQ(len, sizeof key);
  /* Without its key it is an ordinary stale pending identity again. */
  ASSERT_EQ(store_psk_delete(st, "keyed-old"), STORE_OK);
  ASSERT_EQ(store_device_prune(st, DEV_PENDING, 4000, 100, &n), STORE_OK);
  ASSERT_EQ(n, 1);
  ASSERT_EQ(store_device_get(st, "keyed-old", &d), STORE_NOTFOUND);
  store_close(st);
}

static int64_t audit_count(struct store *st)
{
  int64_t total = -1;
  ASSERT_EQ(store_audit_list(st, NULL, 0, 1, NULL, NULL, &total), STORE_OK);
  return total;
}

static int first_id_cb(void *ud, const struct store_audit *a)
{
  char *out = ud;
  size_t n = strnlen(a->client_id, 63);
  memcpy(out, a->client_id, n);
  out[n] = '\0';
  return 0;
}

static void test_prune_audit(void)
{
  char db[320], id[32], newest[64] = "";
  struct store *st = open_named("audit", db, sizeof db);
  int64_t n = -1, total = 0;
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 50; i++) {
    snprintf(id, sizeof id, "c-%d", i);
    ASSERT_EQ(store_audit(st, 1000 + i, "gateway", "admission.refused", id, "x"), STORE_OK);
  }
  /* No limit at all: nothing happens. */
  ASSERT_EQ(store_audit_prune(st, 0, 0, 100, &n), STORE_OK);
  ASSERT_EQ(n, 0);
  /* By rows: the newest 20 stay, in batches. */
  ASSERT_EQ(store_audit_prune(st, 20, 0, 25, &n), STORE_OK);
  ASSERT_EQ(n, 25);
  ASSERT_EQ(store_audit_prune(st, 20, 0, 25, &n), STORE_OK);
  ASSERT_EQ(n, 5);
  ASSERT_EQ(audit_count(st), 20);
  ASSERT_EQ(store_audit_list(st, NULL, 0, 1, first_id_cb, newest, &total), STORE_OK);
  ASSERT_STR_EQ(newest, "c-49");
  /* By age: rows before 1040 go (c-30 .. c-39), the rest stay. */
  ASSERT_EQ(store_audit_prune(st, 0, 1040, 100, &n), STORE_OK);
  ASSERT_EQ(n, 10);
  ASSERT_EQ(audit_count(st), 10);
  ASSERT_EQ(store_audit_prune(st, 0, 0, 0, &n), STORE_INVAL);
  store_close(st);
}

static void test_busy(void)
{
  char db[320];
  struct store *st = open_named("busy", db, sizeof db);
  sqlite3 *other = NULL;
  struct timespec t0, t1;
  double ms;
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  store_set_busy_timeout(st, 50);
  ASSERT_EQ(sqlite3_open(db, &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ASSERT_EQ(store_device_create(st, "locked-out", DEV_PENDING, NULL, 1, NULL), STORE_BUSY);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
  /* It waited for the lock (a lower bound only: the box may be slow). */
  ASSERT_TRUE(ms >= 40.0);
  ASSERT_STR_EQ(store_strerror(STORE_BUSY), "registry busy (locked by another connection)");
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  ASSERT_EQ(store_device_create(st, "locked-out", DEV_PENDING, NULL, 1, NULL), STORE_OK);
  ASSERT_TRUE(store_free_bytes(st) > 0);
  ASSERT_TRUE(store_size_bytes(st) > 0);
  store_close(st);
}

static bool file_has(const char *path, const uint8_t *needle, size_t n)
{
  static uint8_t buf[1 << 20];
  FILE *f = fopen(path, "rb");
  size_t len;
  if (!f)
    return false;
  len = fread(buf, 1, sizeof buf, f);
  fclose(f);
  for (size_t i = 0; i + n <= len; i++)
    if (memcmp(buf + i, needle, n) == 0)
      return true;
  return false;
}

static void test_psk(void)
{
  char db[320], wal[340], hexkey[65];
  struct store *st = open_named("psk", db, sizeof db);
  uint8_t key[32], got[64];
  size_t len = 0;
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 32; i++)
    key[i] = (uint8_t)(0xA0 + i);
  for (int i = 0; i < 32; i++)
    snprintf(hexkey + 2 * i, 3, "%02x", key[i]);
  ASSERT_EQ(store_psk_set(st, "nobody", key, 32, 1), STORE_NOTFOUND);
  add_device(st, "plc-psk", DEV_APPROVED, 5);
  ASSERT_EQ(store_psk_set(st, "plc-psk", key, 8, 1), STORE_INVAL);
  ASSERT_EQ(store_psk_set(st, "plc-psk", key, 32, 1), STORE_OK);
  ASSERT_EQ(store_psk_get(st, "plc-psk", got, sizeof got, &len), STORE_OK);
  ASSERT_EQ(len, 32);
  ASSERT_TRUE(memcmp(got, key, 32) == 0);
  ASSERT_EQ(store_psk_get(st, "other", got, sizeof got, &len), STORE_NOTFOUND);
  /* Replaced, not added. */
  key[0] ^= 1;
  ASSERT_EQ(store_psk_set(st, "plc-psk", key, 32, 2), STORE_OK);
  ASSERT_EQ(store_psk_get(st, "plc-psk", got, sizeof got, &len), STORE_OK);
  ASSERT_EQ(got[0], key[0]);
  ASSERT_EQ(store_device_set_lan_security(st, "plc-psk", "dtls-psk"), STORE_OK);
  ASSERT_EQ(store_device_set_lan_security(st, "plc-psk", "telnet"), STORE_INVAL);
  store_close(st);
  /* Neither the key nor its hex is anywhere in the files. */
  snprintf(wal, sizeof wal, "%s-wal", db);
  ASSERT_TRUE(!file_has(db, key, 32) && !file_has(wal, key, 32));
  ASSERT_TRUE(!file_has(db, (const uint8_t *)hexkey + 2, 62) &&
              !file_has(wal, (const uint8_t *)hexkey + 2, 62));
  st = open_named("psk", db, sizeof db);
  if (!st)
    return;
  ASSERT_EQ(store_psk_delete(st, "plc-psk"), STORE_OK);
  ASSERT_EQ(store_psk_get(st, "plc-psk", got, sizeof got, &len), STORE_NOTFOUND);
  ASSERT_EQ(store_psk_delete(st, "plc-psk"), STORE_NOTFOUND);
  store_close(st);
}

int main(void)
{
  const char *tmp = getenv("TMPDIR");
  char cmd[300];
  snprintf(g_dir, sizeof g_dir, "%s/test_prune_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_prune_pending);
  RUN(test_prune_keeps_psk_holders);
  RUN(test_prune_audit);
  RUN(test_busy);
  RUN(test_psk);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
  return TEST_END();
}
