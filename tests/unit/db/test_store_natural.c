/*
 * test_store_natural.c - the natural order of ClientIds and thing names
 * (issue 14): store_natural_cmp (numbers by value, of any length, leading
 * zeros only breaking ties, a total order), and the device list sorted by
 * ClientId and by thing name through the NATSORT collation, both ways,
 * paged without a row lost or repeated.
 */
#include "test.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"

static char g_dir[256];

static int cmp(const char *a, const char *b)
{
  int r = store_natural_cmp(a, (int)strlen(a), b, (int)strlen(b));
  return r < 0 ? -1 : r > 0;
}

static void test_cmp(void)
{
  ASSERT_EQ(cmp("leaf-2", "leaf-10"), -1);
  ASSERT_EQ(cmp("leaf-10", "leaf-2"), 1);
  ASSERT_EQ(cmp("leaf-10", "leaf-10"), 0);
  ASSERT_EQ(cmp("", ""), 0);
  ASSERT_EQ(cmp("", "a"), -1);
  ASSERT_EQ(cmp("leaf", "leaf-1"), -1);
  ASSERT_EQ(cmp("a9b", "a10a"), -1);
  ASSERT_EQ(cmp("a10a", "a10b"), -1);
  ASSERT_EQ(cmp("x2y3", "x2y10"), -1);
  /* Equal values: fewer leading zeros first, never equal. */
  ASSERT_EQ(cmp("a1", "a01"), -1);
  ASSERT_EQ(cmp("a01", "a1"), 1);
  ASSERT_EQ(cmp("a0", "a00"), -1);
  ASSERT_EQ(cmp("a01b2", "a1b02"), 1);
  ASSERT_EQ(cmp("a007", "a8"), -1);
  /* Longer than any integer type. */
  ASSERT_EQ(cmp("n99999999999999999999999", "n100000000000000000000000"), -1);
  ASSERT_EQ(cmp("n123456789012345678901234567890", "n123456789012345678901234567891"), -1);
  /* Not digits: bytes, unsigned. */
  ASSERT_EQ(cmp("A", "a"), -1);
  ASSERT_EQ(cmp("a\x80", "a\x7f"), 1);
  ASSERT_EQ(cmp("a-1", "a1"), -1); /* '-' < '1' */
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

static const char *const want[] = {"leaf-0", "leaf-1",  "leaf-2",  "leaf-3",   "leaf-9",
                                   "leaf-10", "leaf-11", "leaf-20", "leaf-100", "leaf-101"};
#define NWANT ((int)(sizeof want / sizeof want[0]))

/* The whole list in one order: want[], or want[] backwards. */
static void expect(struct store *st, int sort, bool desc, bool backwards)
{
  struct names k;
  memset(&k, 0, sizeof k);
  ASSERT_EQ(store_device_list_sorted(st, -1, NULL, sort, desc, 0, 100, dev_name, &k, NULL),
            STORE_OK);
  ASSERT_EQ(k.n, NWANT);
  for (int i = 0; i < NWANT && i < k.n; i++)
    ASSERT_STR_EQ(k.v[i], want[backwards ? NWANT - 1 - i : i]);
}

static void test_list(void)
{
  char db[320], key[320];
  struct store_opts o = {.path = db, .key_file = key, .synchronous = 1};
  struct store *st = NULL;
  struct names k;
  int64_t total = 0;

  snprintf(db, sizeof db, "%s/natural.db", g_dir);
  snprintf(key, sizeof key, "%s/natural.key", g_dir);
  ASSERT_EQ(store_open(&o, &st), STORE_OK);
  if (!st)
    return;
  /* Made in an order that is neither. */
  for (int i = NWANT - 1; i >= 0; i -= 2)
    ASSERT_EQ(store_device_create(st, want[i], 0, NULL, 100, NULL), STORE_OK);
  for (int i = NWANT - 2; i >= 0; i -= 2)
    ASSERT_EQ(store_device_create(st, want[i], 0, NULL, 100, NULL), STORE_OK);
  /* Thing names in the reverse order of the ClientIds. */
  for (int i = 0; i < NWANT; i++) {
    char thing[32];
    snprintf(thing, sizeof thing, "thing-%d", (NWANT - i) * 7);
    ASSERT_EQ(store_device_set_thing(st, want[i], thing), STORE_OK);
  }

  expect(st, STORE_SORT_CLIENT_ID, false, false);
  expect(st, STORE_SORT_CLIENT_ID, true, true);
  /* By thing name: thing-7 (leaf-101) ... thing-70 (leaf-0). */
  expect(st, STORE_SORT_THING_NAME, false, true);
  expect(st, STORE_SORT_THING_NAME, true, false);

  /* Pages of 3 put together are the whole list, in order. */
  memset(&k, 0, sizeof k);
  for (int off = 0; off < NWANT; off += 3)
    ASSERT_EQ(store_device_list(st, -1, NULL, off, 3, dev_name, &k, &total), STORE_OK);
  ASSERT_EQ(total, NWANT);
  ASSERT_EQ(k.n, NWANT);
  for (int i = 0; i < NWANT && i < k.n; i++)
    ASSERT_STR_EQ(k.v[i], want[i]);
  store_close(st);
}

int main(void)
{
  const char *tmp = getenv("TMPDIR");
  char cmd[300];
  snprintf(g_dir, sizeof g_dir, "%s/test_natural_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_cmp);
  RUN(test_list);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
  return TEST_END();
}
