/*
 * test_store_expiry.c - certificate expiry in the registry (issue 12):
 * the device list sorted by the active certificate's not-after (devices
 * without one last, both ways), filtered by "expires before" (expired
 * ones included, other statuses ignored), the aggregate store_cert_expiry
 * (soonest, expiring, expired, max id; nothing when there is nothing) and
 * store_cert_expiring with its marks, which the upkeep uses to warn once
 * per certificate; the aggregate's query plan uses an index.
 */
#include "test.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static char g_dir[256];

static const char CERT_PEM[] = "-----BEGIN CERTIFICATE-----\n"
                               "MIIBszCCAVmgAwIBAgIUTESTCERTIFICATEBODY\n"
                               "-----END CERTIFICATE-----\n";

static struct store *open_named(const char *name, char *db, size_t cap)
{
  char key[320];
  struct store_opts o = {.path = db, .key_file = key, .synchronous = 1};
  struct store *st = NULL;
  snprintf(db, cap, "%s/%s.db", g_dir, name);
  snprintf(key, sizeof key, "%s/%s.key", g_dir, name);
  if (store_open(&o, &st) != STORE_OK)
    fprintf(stderr, "store_open(%s): %s\n", db, store_errmsg(NULL));
  return st;
}

struct names {
  int n;
  char v[16][260];
};

static int dev_name(void *ud, const struct store_device *d)
{
  struct names *k = ud;
  if (k->n < 16)
    snprintf(k->v[k->n], sizeof k->v[0], "%s", d->client_id);
  k->n++;
  return 0;
}

static int cert_name(void *ud, const struct store_cert *c)
{
  struct names *k = ud;
  if (k->n < 16)
    snprintf(k->v[k->n], sizeof k->v[0], "%s", c->cert_id);
  k->n++;
  return 0;
}

/* "a,b,c" of the names collected. */
static const char *joined(const struct names *k)
{
  static char buf[1024];
  size_t n = 0;
  buf[0] = '\0';
  for (int i = 0; i < k->n && i < 16; i++)
    n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? "," : "", k->v[i]);
  return buf;
}

/* Devices: d-late (active, 5000), d-soon (active, 2000), d-none (no
 * certificate), d-old (active, 500: "expired" at now 1000), d-super (only a
 * superseded certificate, 100), d-pend (a pending certificate, 300, and an
 * active one, 8000). */
static void fill(struct store *st)
{
  static const struct {
    const char *dev, *cert;
    int64_t not_after;
    int status;
  } certs[] = {{"d-late", "c-late", 5000, CERT_ACTIVE},   {"d-soon", "c-soon", 2000, CERT_ACTIVE},
               {"d-old", "c-old", 500, CERT_ACTIVE},      {"d-super", "c-super", 100, CERT_ACTIVE},
               {"d-pend", "c-pend", 300, CERT_PENDING},   {"d-pend", "c-pend2", 8000, CERT_ACTIVE}};
  static const char *const devs[] = {"d-late", "d-soon", "d-none", "d-old", "d-super", "d-pend"};
  for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++)
    ASSERT_EQ(store_device_create(st, devs[i], DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  for (size_t i = 0; i < sizeof certs / sizeof certs[0]; i++)
    ASSERT_EQ(store_cert_insert(st, certs[i].dev, certs[i].cert, CERT_PEM, NULL,
                                certs[i].not_after, NULL, certs[i].status, 1),
              STORE_OK);
  ASSERT_EQ(store_cert_set_status(st, "c-super", CERT_SUPERSEDED, "test", 2), STORE_OK);
}

static void test_sort_and_filter(void)
{
  struct store_device_filter where = {.state = -1};
  struct names k;
  int64_t total = -1;
  char db[320];
  struct store *st = open_named("sort", db, sizeof db);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  fill(st);

  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CERT_NOT_AFTER, false, 0, 10, dev_name,
                                    &k, &total),
            STORE_OK);
  ASSERT_EQ(total, 6);
  ASSERT_STR_EQ(joined(&k), "d-old,d-soon,d-late,d-pend,d-none,d-super");
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CERT_NOT_AFTER, true, 0, 10, dev_name,
                                    &k, NULL),
            STORE_OK);
  ASSERT_STR_EQ(joined(&k), "d-pend,d-late,d-soon,d-old,d-super,d-none");
  /* A page of it. */
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CERT_NOT_AFTER, false, 1, 2, dev_name,
                                    &k, NULL),
            STORE_OK);
  ASSERT_STR_EQ(joined(&k), "d-soon,d-late");

  /* Before 2500: the expired one and the soon one; not the superseded
   * certificate, not the pending one. */
  where.cert_expires_before = 2500;
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CLIENT_ID, false, 0, 10, dev_name, &k,
                                    &total),
            STORE_OK);
  ASSERT_EQ(total, 2);
  ASSERT_STR_EQ(joined(&k), "d-old,d-soon");
  /* With the other filters. */
  where.text = "soon";
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CLIENT_ID, false, 0, 10, dev_name, &k,
                                    &total),
            STORE_OK);
  ASSERT_EQ(total, 1);
  ASSERT_STR_EQ(joined(&k), "d-soon");
  where.text = NULL;
  where.cert_expires_before = 1;
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CLIENT_ID, false, 0, 10, NULL, NULL,
                                    &total),
            STORE_OK);
  ASSERT_EQ(total, 0);
  /* The sort order right after the last known one is refused. */
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CERT_NOT_AFTER + 1, false, 0, 10,
                                    dev_name, &k, NULL),
            STORE_INVAL);
  store_close(st);
}

static void test_aggregate_and_marks(void)
{
  struct store_cert_expiry e;
  struct names k;
  char db[320];
  struct store *st = open_named("agg", db, sizeof db);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;

  /* Nothing yet. */
  memset(&e, 0xff, sizeof e);
  ASSERT_EQ(store_cert_expiry(st, 1000, 3000, &e), STORE_OK);
  ASSERT_EQ(e.soonest, 0);
  ASSERT_EQ(e.expiring, 0);
  ASSERT_EQ(e.expired, 0);
  ASSERT_EQ(e.max_id, 0);

  fill(st);
  /* now 1000, window to 3000: active ones are 500, 2000, 5000, 8000. */
  ASSERT_EQ(store_cert_expiry(st, 1000, 3000, &e), STORE_OK);
  ASSERT_EQ(e.soonest, 500);
  ASSERT_EQ(e.expiring, 2);
  ASSERT_EQ(e.expired, 1);
  ASSERT_EQ(e.max_id, 6);

  /* No marks: both, soonest first. */
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_cert_expiring(st, 3000, 0, 0, cert_name, &k), STORE_OK);
  ASSERT_STR_EQ(joined(&k), "c-old,c-soon");
  /* Past the marks of that pass (not-after 2000, max id 6): nothing. */
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_cert_expiring(st, 3000, 2000, 6, cert_name, &k), STORE_OK);
  ASSERT_EQ(k.n, 0);
  /* Time goes on, the window reaches 5000: only the new one. */
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_cert_expiring(st, 6000, 2000, 6, cert_name, &k), STORE_OK);
  ASSERT_STR_EQ(joined(&k), "c-late");
  /* A certificate issued inside the window below the not-after mark is
   * found by its id. */
  ASSERT_EQ(store_device_create(st, "d-new", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "d-new", "c-new", CERT_PEM, NULL, 1500, NULL, CERT_ACTIVE, 3),
            STORE_OK);
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_cert_expiring(st, 3000, 2000, 6, cert_name, &k), STORE_OK);
  ASSERT_STR_EQ(joined(&k), "c-new");
  /* Once no longer active, it is not counted. */
  ASSERT_EQ(store_cert_set_status(st, "c-old", CERT_INACTIVE, "test", 4), STORE_OK);
  ASSERT_EQ(store_cert_expiry(st, 1000, 3000, &e), STORE_OK);
  ASSERT_EQ(e.soonest, 1500);
  ASSERT_EQ(e.expiring, 2);
  ASSERT_EQ(e.expired, 0);
  ASSERT_EQ(e.max_id, 7);
  store_close(st);

  /* The aggregate visits only the active rows, through an index. */
  {
    sqlite3 *raw = NULL;
    sqlite3_stmt *s = NULL;
    bool indexed = false;
    ASSERT_EQ(sqlite3_open_v2(db, &raw, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(raw,
                                 "EXPLAIN QUERY PLAN SELECT coalesce(min(not_after), 0) "
                                 "FROM certificates WHERE status = 1 AND not_after IS NOT NULL",
                                 -1, &s, NULL),
              SQLITE_OK);
    while (s && sqlite3_step(s) == SQLITE_ROW) {
      const char *d = (const char *)sqlite3_column_text(s, 3);
      if (d && strstr(d, "USING") && strstr(d, "INDEX"))
        indexed = true;
    }
    sqlite3_finalize(s);
    sqlite3_close(raw);
    ASSERT_TRUE(indexed);
  }
}

int main(void)
{
  const char *tmp = getenv("TMPDIR");
  char cmd[300];
  snprintf(g_dir, sizeof g_dir, "%s/test_expiry_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_sort_and_filter);
  RUN(test_aggregate_and_marks);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
  return TEST_END();
}
