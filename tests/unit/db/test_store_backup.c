/*
 * test_store_backup.c - the registry's online backup (db/store_backup.c):
 * a copy taken while a write transaction is open holds what was committed
 * and not what was not; it opens with its copied key file and its sealed
 * private keys decrypt; both files are 0600; an existing destination or
 * key copy is never overwritten; a missing registry is refused and leaves
 * nothing behind.
 */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

static char g_dir[256];

static const char KEY_PEM[] =
    "-----BEGIN PRIVATE KEY-----\nbackup-test-key-material\n-----END PRIVATE KEY-----\n";

static struct store *open_at(const char *db, const char *key)
{
  struct store_opts o = {.path = db, .key_file = key, .synchronous = 1};
  struct store *st = NULL;
  int rc = store_open(&o, &st);
  if (rc != STORE_OK)
    fprintf(stderr, "store_open(%s): %s: %s\n", db, store_strerror(rc), store_errmsg(NULL));
  return st;
}

static int mode_of(const char *path)
{
  struct stat sb;
  return stat(path, &sb) == 0 ? (int)(sb.st_mode & 0777) : -1;
}

static void test_backup_while_writing(void)
{
  char db[320], key[320], dest[320], dest_key[330], err[512];
  struct store_backup_info info;
  struct store *st, *copy;
  struct store_device d;
  char *k = NULL;

  snprintf(db, sizeof db, "%s/reg.db", g_dir);
  snprintf(key, sizeof key, "%s/reg.key", g_dir);
  snprintf(dest, sizeof dest, "%s/backup.db", g_dir);
  snprintf(dest_key, sizeof dest_key, "%s.key", dest);
  st = open_at(db, key);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 200; i++) {
    char id[32];
    snprintf(id, sizeof id, "leaf-%03d", i);
    ASSERT_EQ(store_device_create(st, id, DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  }
  ASSERT_EQ(store_cert_insert(st, "leaf-007", "cert-7", "PEM", KEY_PEM, 5000, "ab", CERT_ACTIVE,
                              10),
            STORE_OK);
  /* A write in progress: not committed, so not in the copy. */
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_device_create(st, "uncommitted", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_backup(db, key, dest, &info, err, sizeof err), STORE_OK);
  ASSERT_EQ(store_commit(st), STORE_OK);
  ASSERT_TRUE(info.pages > 0 && info.steps > 0);
  ASSERT_EQ(mode_of(dest), 0600);
  ASSERT_EQ(mode_of(dest_key), 0600);

  copy = open_at(dest, dest_key);
  ASSERT_TRUE(copy != NULL);
  if (copy) {
    ASSERT_EQ(store_device_get(copy, "leaf-199", &d), STORE_OK);
    ASSERT_EQ(store_device_get(copy, "uncommitted", &d), STORE_NOTFOUND);
    ASSERT_EQ(store_cert_key(copy, "cert-7", &k), STORE_OK); /* the key file came along */
    ASSERT_STR_EQ(k, KEY_PEM);
    store_secret_free(k);
    store_close(copy);
  }
  ASSERT_EQ(store_device_get(st, "uncommitted", &d), STORE_OK);

  /* Never over an existing file: the destination, or its key copy. */
  ASSERT_EQ(store_backup(db, key, dest, &info, err, sizeof err), STORE_IO);
  ASSERT_TRUE(strstr(err, "backup.db") != NULL);
  {
    char other[320];
    snprintf(other, sizeof other, "%s/other.db", g_dir);
    snprintf(dest_key, sizeof dest_key, "%s.key", other);
    FILE *f = fopen(dest_key, "w");
    ASSERT_TRUE(f != NULL);
    if (f)
      fclose(f);
    ASSERT_EQ(store_backup(db, key, other, &info, err, sizeof err), STORE_IO);
    ASSERT_TRUE(strstr(err, "exists") != NULL);
    ASSERT_TRUE(access(other, F_OK) != 0);
  }
  /* No registry: refused, nothing left. */
  {
    char missing[320], out[320];
    snprintf(missing, sizeof missing, "%s/none.db", g_dir);
    snprintf(out, sizeof out, "%s/none-copy.db", g_dir);
    ASSERT_EQ(store_backup(missing, key, out, &info, err, sizeof err), STORE_IO);
    ASSERT_TRUE(access(out, F_OK) != 0);
  }
  store_close(st);
}

int main(void)
{
  const char *tmp = getenv("TMPDIR");
  char cmd[300];
  snprintf(g_dir, sizeof g_dir, "%s/test_store_backup_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_backup_while_writing);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
  return TEST_END();
}
