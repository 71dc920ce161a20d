/*
 * test_store.c - the registry (db/): open and migrations, devices,
 * certificates and the one-active-certificate invariant (also against raw
 * SQL on the same file), the provisioning journal, keys at rest, audit,
 * allowlist, the edge cases of paged listings, and a crash-safety smoke
 * test.  Each case works in its own files under one temporary directory.
 */
#include "test.h"

#include <dirent.h>
#include <fcntl.h>
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

#define LATEST_VERSION 6

static char g_dir[256];

static const char CERT_PEM[] = "-----BEGIN CERTIFICATE-----\n"
                               "MIIBszCCAVmgAwIBAgIUTESTCERTIFICATEBODY\n"
                               "-----END CERTIFICATE-----\n";
static const char KEY_PEM[] = "-----BEGIN PRIVATE KEY-----\n"
                              "PLAINTEXTKEYMARKER0123456789abcdefMARKER\n"
                              "-----END PRIVATE KEY-----\n";
static const char KEY_PEM2[] = "-----BEGIN PRIVATE KEY-----\n"
                               "SECONDKEYMARKER9876543210\n"
                               "-----END PRIVATE KEY-----\n";

/* Paths of one case's database and key file. */
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

static int open_rc(const struct paths *p)
{
  struct store_opts o = {.path = p->db, .key_file = p->key, .synchronous = 1};
  struct store *st = NULL;
  int rc = store_open(&o, &st);
  store_close(st);
  return rc;
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

static mode_t file_mode(const char *path)
{
  struct stat sb;
  return stat(path, &sb) == 0 ? (sb.st_mode & 07777) : (mode_t)-1;
}

static bool file_contains(const char *path, const char *needle)
{
  FILE *f = fopen(path, "rb");
  size_t cap = 1 << 20, n, k = strlen(needle);
  char *buf;
  bool found = false;
  if (!f)
    return false;
  buf = malloc(cap);
  while (buf && (n = fread(buf, 1, cap, f)) > 0 && !found) {
    for (size_t i = 0; i + k <= n; i++)
      if (memcmp(buf + i, needle, k) == 0) {
        found = true;
        break;
      }
    if (n == cap)
      fseek(f, -(long)k, SEEK_CUR);
  }
  free(buf);
  fclose(f);
  return found;
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  if (fd >= 0) {
    ssize_t w = write(fd, data, len);
    (void)w;
    fchmod(fd, mode);
    close(fd);
  }
}

/* ---- open and migrations ---- */

static void test_open_migrate(void)
{
  struct paths p;
  struct store *st;
  sqlite3 *db;

  paths_for(&p, "open");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), LATEST_VERSION);
  ASSERT_EQ(file_mode(p.key), 0600);
  ASSERT_EQ(file_mode(p.db), 0600);
  ASSERT_TRUE(store_size_bytes(st) > 0);
  ASSERT_EQ(store_device_create(st, "dev-1", DEV_APPROVED, NULL, 100, NULL), STORE_OK);
  store_close(st);

  /* Reopening is idempotent: same version, the data is still there. */
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), LATEST_VERSION);
  ASSERT_EQ(store_device_get(st, "dev-1", NULL), STORE_OK);
  store_close(st);

  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_int(db, "PRAGMA user_version"), LATEST_VERSION);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'"), 1);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'one_active_cert'"), 1);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'one_open_run'"), 1);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'outbox'"), 1);
  /* A schema newer than this build is refused, not downgraded. */
  ASSERT_EQ(raw_exec(db, "PRAGMA user_version = 99"), SQLITE_OK);
  sqlite3_close(db);
  ASSERT_EQ(open_rc(&p), STORE_CORRUPT);
  ASSERT_TRUE(strstr(store_errmsg(NULL), "newer") != NULL);

  /* Bad arguments. */
  {
    struct store_opts o = {.path = p.db, .key_file = NULL, .synchronous = 1};
    struct store *none = (struct store *)&o;
    ASSERT_EQ(store_open(&o, &none), STORE_INVAL);
    ASSERT_TRUE(none == NULL);
  }
}

static void test_key_file_checks(void)
{
  struct paths p, other;
  struct store *st;
  unsigned char junk[32];

  paths_for(&p, "keyfile");
  paths_for(&other, "keyfile-other");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  store_close(st);

  /* Group/other permissions are refused with a clear message. */
  ASSERT_EQ(chmod(p.key, 0644), 0);
  ASSERT_EQ(open_rc(&p), STORE_CRYPTO);
  ASSERT_TRUE(strstr(store_errmsg(NULL), "0644") != NULL);
  ASSERT_EQ(chmod(p.key, 0640), 0);
  ASSERT_EQ(open_rc(&p), STORE_CRYPTO);
  ASSERT_EQ(chmod(p.key, 0600), 0);
  ASSERT_EQ(open_rc(&p), STORE_OK);

  /* A key file of the wrong size. */
  memset(junk, 0x5a, sizeof junk);
  write_file(other.key, junk, 31, 0600);
  snprintf(other.db, sizeof other.db, "%s/keyfile-other.db", g_dir);
  ASSERT_EQ(open_rc(&other), STORE_CRYPTO);
  ASSERT_TRUE(strstr(store_errmsg(NULL), "31 bytes") != NULL);

  /* The wrong key for this database (a well-formed 32-byte file). */
  write_file(other.key, junk, 32, 0600);
  other = (struct paths){{0}, {0}};
  snprintf(other.db, sizeof other.db, "%s", p.db);
  snprintf(other.key, sizeof other.key, "%s/keyfile-other.key", g_dir);
  ASSERT_EQ(open_rc(&other), STORE_CRYPTO);
  ASSERT_TRUE(strstr(store_errmsg(NULL), "does not match") != NULL);

  /* A lost key file is not silently recreated for a database that has keys. */
  ASSERT_EQ(unlink(p.key), 0);
  ASSERT_EQ(open_rc(&p), STORE_CRYPTO);
  ASSERT_TRUE(access(p.key, F_OK) != 0);
}

/* ---- devices ---- */

struct collect {
  int n;
  char ids[16][260];
  int stop_after;
};

static int collect_dev(void *ud, const struct store_device *d)
{
  struct collect *c = ud;
  if (c->n < 16)
    snprintf(c->ids[c->n], sizeof c->ids[0], "%s", d->client_id);
  c->n++;
  return c->stop_after && c->n >= c->stop_after ? 1 : 0;
}

static void test_devices(void)
{
  struct paths p;
  struct store *st;
  struct store_device d;
  int64_t counts[7], total = -1;
  char longid[300];
  struct collect c;

  paths_for(&p, "devices");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;

  ASSERT_EQ(store_device_create(st, "alpha", DEV_PENDING, "10.0.0.1:5000", 100, &d), STORE_OK);
  ASSERT_TRUE(d.id > 0);
  ASSERT_STR_EQ(d.client_id, "alpha");
  ASSERT_EQ(store_device_create(st, "alpha", DEV_APPROVED, NULL, 101, NULL), STORE_CONFLICT);
  ASSERT_EQ(store_device_create(st, "", DEV_APPROVED, NULL, 101, NULL), STORE_INVAL);
  ASSERT_EQ(store_device_create(st, "bad-state", 7, NULL, 101, NULL), STORE_INVAL);
  memset(longid, 'x', 256);
  longid[256] = '\0';
  ASSERT_EQ(store_device_create(st, longid, DEV_APPROVED, NULL, 101, NULL), STORE_INVAL);
  longid[255] = '\0';
  ASSERT_EQ(store_device_create(st, longid, DEV_APPROVED, NULL, 101, NULL), STORE_OK);

  ASSERT_EQ(store_device_get(st, "alpha", &d), STORE_OK);
  ASSERT_EQ(d.state, DEV_PENDING);
  ASSERT_STR_EQ(d.bound_addr, "10.0.0.1:5000");
  ASSERT_STR_EQ(d.thing_name, "");
  ASSERT_EQ(d.first_seen, 100);
  ASSERT_EQ(store_device_get(st, "nobody", &d), STORE_NOTFOUND);

  ASSERT_EQ(store_device_create(st, "beta", DEV_APPROVED, NULL, 102, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "gamma", DEV_ACTIVE, NULL, 103, NULL), STORE_OK);
  ASSERT_EQ(store_device_set_thing(st, "alpha", "thing-alpha"), STORE_OK);
  ASSERT_EQ(store_device_set_thing(st, "alpha", "thing-alpha"), STORE_OK); /* same: fine */
  ASSERT_EQ(store_device_set_thing(st, "beta", "thing-alpha"), STORE_CONFLICT);
  ASSERT_EQ(store_device_set_thing(st, "nobody", "thing-x"), STORE_NOTFOUND);
  ASSERT_EQ(store_device_get_by_thing(st, "thing-alpha", &d), STORE_OK);
  ASSERT_STR_EQ(d.client_id, "alpha");
  ASSERT_EQ(store_device_get_by_thing(st, "thing-none", &d), STORE_NOTFOUND);

  ASSERT_EQ(store_device_bind(st, "beta", "10.0.0.2:6000"), STORE_OK);
  ASSERT_EQ(store_device_get(st, "beta", &d), STORE_OK);
  ASSERT_STR_EQ(d.bound_addr, "10.0.0.2:6000");
  ASSERT_EQ(store_device_bind(st, "beta", NULL), STORE_OK);
  ASSERT_EQ(store_device_get(st, "beta", &d), STORE_OK);
  ASSERT_STR_EQ(d.bound_addr, "");

  ASSERT_EQ(store_device_touch(st, "beta", 500), STORE_OK);
  ASSERT_EQ(store_device_set_state(st, "beta", DEV_PROVISIONING), STORE_OK);
  ASSERT_EQ(store_device_set_state(st, "beta", 42), STORE_INVAL);
  ASSERT_EQ(store_device_set_error(st, "beta", "400 InvalidCsr: bad", 600), STORE_OK);
  ASSERT_EQ(store_device_set_error(st, "beta", "500 InternalFailure: oops", 700), STORE_OK);
  ASSERT_EQ(store_device_get(st, "beta", &d), STORE_OK);
  ASSERT_EQ(d.last_seen, 500);
  ASSERT_EQ(d.state, DEV_PROVISIONING);
  ASSERT_EQ(d.attempts, 2);
  ASSERT_EQ(d.retry_at, 700);
  ASSERT_STR_EQ(d.last_error, "500 InternalFailure: oops");
  ASSERT_EQ(store_device_clear_error(st, "beta"), STORE_OK);
  ASSERT_EQ(store_device_get(st, "beta", &d), STORE_OK);
  ASSERT_EQ(d.attempts, 0);
  ASSERT_EQ(d.retry_at, 0);
  ASSERT_STR_EQ(d.last_error, "");

  /* A long error is cut to fit, on a UTF-8 boundary, not refused. */
  {
    char err[700];
    memset(err, 'e', sizeof err);
    memcpy(err + 510, "\xc3\xa9", 2); /* 'é' straddling the 511-byte limit */
    err[sizeof err - 1] = '\0';
    ASSERT_EQ(store_device_set_error(st, "gamma", err, 1), STORE_OK);
    ASSERT_EQ(store_device_get(st, "gamma", &d), STORE_OK);
    ASSERT_EQ(strlen(d.last_error), 510); /* the split 'é' is dropped whole */
    ASSERT_EQ(store_device_set_error(st, "gamma", err + 1, 1), STORE_OK);
    ASSERT_EQ(store_device_get(st, "gamma", &d), STORE_OK);
    ASSERT_EQ(strlen(d.last_error), 511); /* now it fits */
    ASSERT_MEM_EQ(d.last_error + 509, "\xc3\xa9", 2);
  }

  ASSERT_EQ(store_device_counts(st, counts), STORE_OK);
  ASSERT_EQ(counts[DEV_PENDING], 1);
  ASSERT_EQ(counts[DEV_APPROVED], 1); /* longid */
  ASSERT_EQ(counts[DEV_PROVISIONING], 1);
  ASSERT_EQ(counts[DEV_ACTIVE], 1);
  ASSERT_EQ(counts[DEV_REVOKED], 0);

  /* Paging: 20 more devices, ordered by ClientId. */
  for (int i = 0; i < 20; i++) {
    char id[32];
    snprintf(id, sizeof id, "page-%02d", i);
    ASSERT_EQ(store_device_create(st, id, i % 2 ? DEV_ACTIVE : DEV_APPROVED, NULL, 200 + i, NULL),
              STORE_OK);
  }
  memset(&c, 0, sizeof c);
  ASSERT_EQ(store_device_list(st, -1, "page-", 5, 4, collect_dev, &c, &total), STORE_OK);
  ASSERT_EQ(total, 20);
  ASSERT_EQ(c.n, 4);
  ASSERT_STR_EQ(c.ids[0], "page-05");
  ASSERT_STR_EQ(c.ids[3], "page-08");
  memset(&c, 0, sizeof c);
  ASSERT_EQ(store_device_list(st, DEV_ACTIVE, "page-", 0, -1, collect_dev, &c, &total), STORE_OK);
  ASSERT_EQ(total, 10);
  ASSERT_EQ(c.n, 10);
  ASSERT_STR_EQ(c.ids[0], "page-01");
  memset(&c, 0, sizeof c);
  ASSERT_EQ(store_device_list(st, -1, NULL, 0, 100, collect_dev, &c, &total), STORE_OK);
  ASSERT_EQ(total, 24);
  ASSERT_STR_EQ(c.ids[0], "alpha");
  /* The text filter also matches thing names. */
  memset(&c, 0, sizeof c);
  ASSERT_EQ(store_device_list(st, -1, "thing-al", 0, 10, collect_dev, &c, &total), STORE_OK);
  ASSERT_EQ(total, 1);
  ASSERT_STR_EQ(c.ids[0], "alpha");
  /* '%' and '_' are plain characters, not LIKE wildcards. */
  ASSERT_EQ(store_device_list(st, -1, "%", 0, 10, NULL, NULL, &total), STORE_OK);
  ASSERT_EQ(total, 0);
  /* A positive callback result stops early without an error. */
  memset(&c, 0, sizeof c);
  c.stop_after = 3;
  ASSERT_EQ(store_device_list(st, -1, NULL, 0, 100, collect_dev, &c, NULL), STORE_OK);
  ASSERT_EQ(c.n, 3);
  ASSERT_EQ(store_device_list(st, 9, NULL, 0, 10, collect_dev, &c, NULL), STORE_INVAL);

  store_close(st);
}

/* ---- certificates and the invariant ---- */

static int collect_cert(void *ud, const struct store_cert *cert)
{
  struct collect *c = ud;
  if (c->n < 16)
    snprintf(c->ids[c->n], sizeof c->ids[0], "%s", cert->cert_id);
  c->n++;
  return 0;
}

static void test_cert_invariant(void)
{
  struct paths p;
  struct store *st;
  struct store_cert cert;
  sqlite3 *db;
  int64_t n = -1;
  int rc;

  paths_for(&p, "certs");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "dev-a", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "dev-b", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);

  ASSERT_EQ(store_cert_insert(st, "dev-a", "cert-a1", CERT_PEM, KEY_PEM, 2000, "ab12", CERT_ACTIVE,
                              10),
            STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "dev-a", "cert-a1", CERT_PEM, NULL, 2000, NULL, CERT_PENDING, 11),
            STORE_CONFLICT); /* duplicate certificate id */
  ASSERT_EQ(store_cert_insert(st, "dev-a", "cert-a2", CERT_PEM, NULL, 2000, NULL, CERT_ACTIVE, 11),
            STORE_CONFLICT); /* second active */
  ASSERT_EQ(store_cert_insert(st, "dev-a", "cert-a3", CERT_PEM, NULL, 2000, NULL, CERT_ORPHANED,
                              11),
            STORE_INVAL);
  ASSERT_EQ(store_cert_insert(st, "nobody", "cert-x", CERT_PEM, NULL, 2000, NULL, CERT_PENDING, 11),
            STORE_NOTFOUND);
  ASSERT_EQ(store_cert_insert(st, "dev-a", "cert-a2", CERT_PEM, NULL, 3000, NULL, CERT_PENDING, 12),
            STORE_OK);
  ASSERT_EQ(store_cert_set_status(st, "cert-a2", CERT_ACTIVE, NULL, 13), STORE_CONFLICT);
  ASSERT_TRUE(strstr(store_errmsg(st), "UNIQUE") != NULL);
  /* Another device's active certificate is no conflict. */
  ASSERT_EQ(store_cert_insert(st, "dev-b", "cert-b1", CERT_PEM, NULL, 2000, NULL, CERT_ACTIVE, 14),
            STORE_OK);

  ASSERT_EQ(store_cert_get_active(st, "dev-a", true, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.cert_id, "cert-a1");
  ASSERT_STR_EQ(cert.client_id, "dev-a");
  ASSERT_STR_EQ(cert.fingerprint, "ab12");
  ASSERT_EQ(cert.not_after, 2000);
  ASSERT_TRUE(cert.pem != NULL);
  ASSERT_STR_EQ(cert.pem, CERT_PEM);
  store_cert_clear(&cert);
  ASSERT_TRUE(cert.pem == NULL);
  ASSERT_EQ(store_cert_get(st, "cert-a2", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_PENDING);
  ASSERT_TRUE(cert.pem == NULL);
  ASSERT_EQ(store_cert_get(st, "cert-zz", false, &cert), STORE_NOTFOUND);

  /* Supersede then promote: allowed, one at a time. */
  ASSERT_EQ(store_cert_set_status(st, "cert-a1", CERT_SUPERSEDED, "reprovisioned", 20), STORE_OK);
  ASSERT_EQ(store_cert_set_status(st, "cert-a2", CERT_ACTIVE, NULL, 21), STORE_OK);
  ASSERT_EQ(store_cert_get(st, "cert-a1", false, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.reason, "reprovisioned");
  ASSERT_EQ(cert.updated_at, 20);
  ASSERT_EQ(store_cert_count(st, "dev-a", -1, &n), STORE_OK);
  ASSERT_EQ(n, 2);
  ASSERT_EQ(store_cert_count(st, "dev-a", CERT_ACTIVE, &n), STORE_OK);
  ASSERT_EQ(n, 1);
  ASSERT_EQ(store_cert_count(st, NULL, CERT_ACTIVE, &n), STORE_OK);
  ASSERT_EQ(n, 2);
  ASSERT_EQ(store_cert_set_status(st, "cert-zz", CERT_ACTIVE, NULL, 21), STORE_NOTFOUND);
  ASSERT_EQ(store_cert_set_status(st, "cert-a1", 5, NULL, 21), STORE_INVAL);

  /* The invariant is the schema's: a raw SQL writer on the same file is
   * refused too, for an INSERT and for an UPDATE. */
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  rc = raw_exec(db, "INSERT INTO certificates(cert_id, device_id, status, pem, created_at, "
                    "updated_at) SELECT 'raw-1', id, 1, 'pem', 0, 0 FROM devices "
                    "WHERE client_id = 'dev-a'");
  ASSERT_EQ(rc, SQLITE_CONSTRAINT_UNIQUE);
  rc = raw_exec(db, "INSERT INTO certificates(cert_id, device_id, status, pem, created_at, "
                    "updated_at) SELECT 'raw-2', id, 0, 'pem', 0, 0 FROM devices "
                    "WHERE client_id = 'dev-a'");
  ASSERT_EQ(rc, SQLITE_OK);
  rc = raw_exec(db, "UPDATE certificates SET status = 1 WHERE cert_id = 'raw-2'");
  ASSERT_EQ(rc, SQLITE_CONSTRAINT_UNIQUE);
  rc = raw_exec(db, "UPDATE certificates SET status = 1 WHERE cert_id = 'cert-a1'");
  ASSERT_EQ(rc, SQLITE_CONSTRAINT_UNIQUE);
  /* CHECK constraints pin the enums. */
  ASSERT_EQ(raw_exec(db, "UPDATE certificates SET status = 9 WHERE cert_id = 'raw-2'"),
            SQLITE_CONSTRAINT_CHECK);
  ASSERT_EQ(raw_exec(db, "UPDATE devices SET state = 7 WHERE client_id = 'dev-a'"),
            SQLITE_CONSTRAINT_CHECK);
  /* Foreign keys are the connection's setting; the store turns them on. */
  ASSERT_EQ(raw_exec(db, "PRAGMA foreign_keys = ON"), SQLITE_OK);
  ASSERT_EQ(raw_exec(db, "INSERT INTO certificates(cert_id, device_id, status, pem, created_at, "
                         "updated_at) VALUES ('raw-3', 9999, 0, 'pem', 0, 0)"),
            SQLITE_CONSTRAINT_FOREIGNKEY);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM certificates c JOIN devices d ON d.id = "
                        "c.device_id WHERE d.client_id = 'dev-a' AND c.status = 1"),
            1);
  sqlite3_close(db);

  {
    struct collect c;
    int64_t total = -1;
    memset(&c, 0, sizeof c);
    ASSERT_EQ(store_cert_list(st, -1, 0, 2, collect_cert, &c, &total), STORE_OK);
    ASSERT_EQ(total, 4);
    ASSERT_EQ(c.n, 2);
    ASSERT_STR_EQ(c.ids[0], "raw-2"); /* newest first */
    ASSERT_STR_EQ(c.ids[1], "cert-b1");
  }
  store_close(st);
}

static void test_one_open_run(void)
{
  struct paths p;
  struct store *st;
  struct store_run r;
  sqlite3 *db;
  int64_t run1 = 0, run2 = 0;

  paths_for(&p, "runs");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "leaf", DEV_APPROVED, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "leaf", "aws", 10, &run1), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "leaf", "aws", 11, &run2), STORE_CONFLICT);
  ASSERT_EQ(store_run_begin(st, "nobody", "aws", 11, &run2), STORE_NOTFOUND);
  ASSERT_EQ(store_run_begin(st, "leaf", "", 11, &run2), STORE_INVAL);

  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_exec(db, "INSERT INTO runs(device_id, backend, step, finished) SELECT id, 'aws', "
                         "0, 0 FROM devices WHERE client_id = 'leaf'"),
            SQLITE_CONSTRAINT_UNIQUE);
  /* Re-opening a finished run is refused too, once one is open. */
  sqlite3_close(db);

  ASSERT_EQ(store_run_get_open(st, "leaf", &r), STORE_OK);
  ASSERT_EQ(r.id, run1);
  ASSERT_EQ(store_run_fail(st, run1, "test", 20), STORE_OK);
  ASSERT_EQ(store_run_get_open(st, "leaf", &r), STORE_NOTFOUND);
  ASSERT_EQ(store_run_fail(st, run1, "again", 21), STORE_INVAL);
  ASSERT_EQ(store_run_set_step(st, run1, RUN_CSR_SENT, 21), STORE_INVAL);
  ASSERT_EQ(store_run_set_step(st, 9999, RUN_CSR_SENT, 21), STORE_NOTFOUND);
  ASSERT_EQ(store_run_begin(st, "leaf", "local-ca", 30, &run2), STORE_OK);
  ASSERT_TRUE(run2 != run1);

  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_exec(db, "UPDATE runs SET finished = 0, step = 0 WHERE id = (SELECT min(id) "
                         "FROM runs)"),
            SQLITE_CONSTRAINT_UNIQUE);
  /* finished and a final step go together. */
  ASSERT_EQ(raw_exec(db, "UPDATE runs SET finished = 1 WHERE finished = 0"),
            SQLITE_CONSTRAINT_CHECK);
  sqlite3_close(db);
  store_close(st);
}

/* ---- the journal ---- */

static int collect_run(void *ud, const struct store_run *r)
{
  struct store_run *out = ud;
  *out = *r;
  return 0;
}

static void test_journal_flow(void)
{
  struct paths p;
  struct store *st;
  struct store_run r;
  struct store_device d;
  struct store_cert cert;
  char *key = NULL;
  int64_t run = 0, total = -1;
  sqlite3 *db;

  paths_for(&p, "journal");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "leaf-1", DEV_PROVISIONING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_set_error(st, "leaf-1", "earlier failure", 50), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "leaf-1", "aws", 100, &run), STORE_OK);
  ASSERT_EQ(store_run_key(st, run, &key), STORE_NOTFOUND);
  ASSERT_EQ(store_run_set_key(st, run, KEY_PEM, 101), STORE_OK);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_KEY_READY);
  ASSERT_STR_EQ(r.backend, "aws");
  ASSERT_STR_EQ(r.client_id, "leaf-1");
  ASSERT_EQ(store_run_key(st, run, &key), STORE_OK);
  ASSERT_STR_EQ(key, KEY_PEM);
  store_secret_free(key);
  key = NULL;
  ASSERT_EQ(store_run_set_step(st, run, RUN_CSR_SENT, 102), STORE_OK);
  ASSERT_EQ(store_run_set_step(st, run, RUN_DONE, 102), STORE_INVAL);
  ASSERT_EQ(store_run_complete(st, run, 102), STORE_INVAL); /* no certificate yet */

  ASSERT_EQ(store_run_cert_received(st, run, "cloud-cert-1", CERT_PEM, NULL, 9000, "ff00",
                                    "ownership-token-xyz", 103),
            STORE_OK);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_CERT_RECEIVED);
  ASSERT_STR_EQ(r.cert_id, "cloud-cert-1");
  ASSERT_STR_EQ(r.token, "ownership-token-xyz");
  ASSERT_EQ(r.token_at, 103);
  ASSERT_EQ(store_cert_get(st, "cloud-cert-1", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_PENDING);
  /* The run's key went to the certificate. */
  ASSERT_EQ(store_cert_key(st, "cloud-cert-1", &key), STORE_OK);
  ASSERT_STR_EQ(key, KEY_PEM);
  store_secret_free(key);
  key = NULL;

  /* RegisterThing with a name another device holds: CONFLICT, no step. */
  ASSERT_EQ(store_device_create(st, "other", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_set_thing(st, "other", "taken-thing"), STORE_OK);
  ASSERT_EQ(store_run_set_step(st, run, RUN_REGISTER_SENT, 104), STORE_OK);
  ASSERT_EQ(store_run_registered(st, run, "taken-thing", 105), STORE_CONFLICT);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_REGISTER_SENT);
  ASSERT_STR_EQ(r.thing_name, "");
  ASSERT_EQ(store_run_registered(st, run, "thing-leaf-1", 106), STORE_OK);
  ASSERT_EQ(store_device_get(st, "leaf-1", &d), STORE_OK);
  ASSERT_STR_EQ(d.thing_name, "thing-leaf-1");

  /* store_run_complete inside a caller's transaction, rolled back: undone. */
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_run_complete(st, run, 107), STORE_OK);
  ASSERT_EQ(store_rollback(st), STORE_OK);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_REGISTERED);
  ASSERT_TRUE(!r.finished);

  ASSERT_EQ(store_run_complete(st, run, 108), STORE_OK);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_DONE);
  ASSERT_TRUE(r.finished);
  ASSERT_STR_EQ(r.token, ""); /* the short-lived secret is gone */
  ASSERT_EQ(store_run_key(st, run, &key), STORE_NOTFOUND);
  ASSERT_EQ(store_cert_get_active(st, "leaf-1", false, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.cert_id, "cloud-cert-1");
  ASSERT_EQ(store_device_get(st, "leaf-1", &d), STORE_OK);
  ASSERT_EQ(d.state, DEV_ACTIVE);
  ASSERT_EQ(d.attempts, 0);
  ASSERT_STR_EQ(d.last_error, "");
  ASSERT_EQ(store_run_get_open(st, "leaf-1", &r), STORE_NOTFOUND);
  ASSERT_EQ(store_cert_key(st, "cloud-cert-1", &key), STORE_OK);
  ASSERT_STR_EQ(key, KEY_PEM);
  store_secret_free(key);
  key = NULL;

  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  /* Every step is in the history (the rolled-back completion is not). */
  {
    sqlite3_stmt *s = NULL;
    const char *want = "0,1,2,3,4,5,6";
    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT group_concat(step, ',') FROM (SELECT step FROM "
                                     "run_steps ORDER BY rowid)",
                                 -1, &s, NULL),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
    ASSERT_STR_EQ((const char *)sqlite3_column_text(s, 0), want);
    sqlite3_finalize(s);
  }
  sqlite3_close(db);

  /* complete refuses (CONFLICT) when the device gained another active
   * certificate meanwhile, and changes nothing. */
  ASSERT_EQ(store_device_create(st, "leaf-2", DEV_PROVISIONING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "leaf-2", "local-ca", 200, &run), STORE_OK);
  ASSERT_EQ(store_run_cert_received(st, run, "ca-2a", CERT_PEM, KEY_PEM2, 9000, NULL, NULL, 201),
            STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "leaf-2", "ca-2b", CERT_PEM, NULL, 9000, NULL, CERT_ACTIVE, 202),
            STORE_OK);
  ASSERT_EQ(store_run_complete(st, run, 203), STORE_CONFLICT);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_CERT_RECEIVED);
  ASSERT_TRUE(!r.finished);
  ASSERT_EQ(store_device_get(st, "leaf-2", &d), STORE_OK);
  ASSERT_EQ(d.state, DEV_PROVISIONING);
  ASSERT_EQ(store_cert_get(st, "ca-2a", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_PENDING);
  ASSERT_EQ(store_cert_key(st, "ca-2a", &key), STORE_OK);
  ASSERT_STR_EQ(key, KEY_PEM2);
  store_secret_free(key);
  key = NULL;

  /* The fail path: the pending certificate becomes ORPHANED. */
  ASSERT_EQ(store_run_fail(st, run, "token expired", 204), STORE_OK);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_FAILED);
  ASSERT_TRUE(r.finished);
  ASSERT_STR_EQ(r.outcome, "token expired");
  ASSERT_EQ(store_cert_get(st, "ca-2a", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_ORPHANED);
  ASSERT_STR_EQ(cert.reason, "token expired");
  ASSERT_EQ(store_cert_get(st, "ca-2b", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_ACTIVE); /* the active one is untouched */
  {
    struct collect c;
    memset(&c, 0, sizeof c);
    ASSERT_EQ(store_cert_list(st, CERT_ORPHANED, 0, 10, collect_cert, &c, &total), STORE_OK);
    ASSERT_EQ(total, 1);
    ASSERT_EQ(c.n, 1);
    ASSERT_STR_EQ(c.ids[0], "ca-2a");
  }

  /* A failed run whose certificate did become active keeps it active. */
  ASSERT_EQ(store_run_begin(st, "leaf-2", "local-ca", 300, &run), STORE_OK);
  ASSERT_EQ(store_run_list_open(st, collect_run, &r), STORE_OK);
  ASSERT_EQ(r.id, run);
  ASSERT_EQ(store_run_fail(st, run, NULL, 301), STORE_OK);
  ASSERT_EQ(store_cert_count(st, "leaf-2", CERT_ACTIVE, &total), STORE_OK);
  ASSERT_EQ(total, 1);
  store_close(st);
}

/* Rotation (migration 6): a run of kind RUN_ROTATE for an ACTIVE device
 * names the certificate it replaces; its next certificate is the device's
 * one pending one; completing supersedes the old and activates the new in
 * one transaction; a rotation keeps the thing; failing orphans the new and
 * leaves the old active; a blocked device's rotation cannot complete. */
static void test_rotation_journal(void)
{
  struct paths p;
  struct store *st;
  struct store_run r;
  struct store_cert cert;
  struct store_device d;
  int64_t run = 0, run2 = 0, n = -1;
  sqlite3 *db;

  paths_for(&p, "rotate");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "rot-1", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_set_thing(st, "rot-1", "thing-rot-1"), STORE_OK);
  ASSERT_EQ(store_device_create(st, "rot-new", DEV_APPROVED, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "rot-bare", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "rot-1", "old-1", CERT_PEM, KEY_PEM, 5000, "aa", CERT_ACTIVE, 10),
            STORE_OK);

  /* Only an ACTIVE device with an active certificate, one run at a time. */
  ASSERT_EQ(store_run_begin_rotation(st, "nobody", "local-ca", 20, &run), STORE_NOTFOUND);
  ASSERT_EQ(store_run_begin_rotation(st, "rot-new", "local-ca", 20, &run), STORE_CONFLICT);
  ASSERT_EQ(store_run_begin_rotation(st, "rot-bare", "local-ca", 20, &run), STORE_NOTFOUND);
  ASSERT_EQ(store_run_begin_rotation(st, "rot-1", "local-ca", 20, &run), STORE_OK);
  ASSERT_EQ(store_run_begin_rotation(st, "rot-1", "local-ca", 21, &run2), STORE_CONFLICT);
  ASSERT_EQ(store_run_begin(st, "rot-1", "local-ca", 21, &run2), STORE_CONFLICT);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.kind, RUN_ROTATE);
  ASSERT_STR_EQ(r.old_cert_id, "old-1");
  ASSERT_EQ(r.step, RUN_STARTED);

  ASSERT_EQ(store_run_set_key(st, run, KEY_PEM, 22), STORE_OK);
  ASSERT_EQ(store_run_cert_received(st, run, "new-1", CERT_PEM, NULL, 9000, "bb", "", 23),
            STORE_OK);
  /* The old one is still the active one until the run completes. */
  ASSERT_EQ(store_cert_get_active(st, "rot-1", false, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.cert_id, "old-1");
  /* At most one next certificate: the schema refuses a second. */
  ASSERT_EQ(store_cert_insert(st, "rot-1", "third", CERT_PEM, NULL, 9000, NULL, CERT_PENDING, 24),
            STORE_CONFLICT);
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_exec(db, "INSERT INTO certificates(cert_id, device_id, status, pem, created_at, "
                         "updated_at) SELECT 'raw-next', id, 0, 'pem', 0, 0 FROM devices "
                         "WHERE client_id = 'rot-1'"),
            SQLITE_CONSTRAINT_UNIQUE);
  sqlite3_close(db);

  /* A rotation keeps the thing. */
  ASSERT_EQ(store_run_registered(st, run, "another-thing", 25), STORE_CONFLICT);
  ASSERT_EQ(store_run_registered(st, run, "thing-rot-1", 25), STORE_OK);
  ASSERT_EQ(store_run_complete(st, run, 26), STORE_OK);
  ASSERT_EQ(store_cert_get_active(st, "rot-1", false, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.cert_id, "new-1");
  ASSERT_EQ(store_cert_get(st, "old-1", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_SUPERSEDED);
  ASSERT_STR_EQ(cert.reason, "rotated: replaced by new-1");
  ASSERT_EQ(cert.updated_at, 26);
  ASSERT_EQ(store_device_get(st, "rot-1", &d), STORE_OK);
  ASSERT_EQ(d.state, DEV_ACTIVE);
  ASSERT_STR_EQ(d.thing_name, "thing-rot-1");
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_EQ(r.step, RUN_DONE);
  ASSERT_TRUE(r.finished);

  /* A failed rotation: the new certificate is orphaned, the old stays. */
  ASSERT_EQ(store_run_begin_rotation(st, "rot-1", "local-ca", 30, &run2), STORE_OK);
  ASSERT_EQ(store_run_get(st, run2, &r), STORE_OK);
  ASSERT_STR_EQ(r.old_cert_id, "new-1");
  ASSERT_EQ(store_run_cert_received(st, run2, "new-2", CERT_PEM, KEY_PEM, 9500, "cc", "", 31),
            STORE_OK);
  ASSERT_EQ(store_run_fail(st, run2, "test: abandoned", 32), STORE_OK);
  ASSERT_EQ(store_cert_get(st, "new-2", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_ORPHANED);
  ASSERT_EQ(store_cert_get_active(st, "rot-1", false, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.cert_id, "new-1");

  /* A device blocked during its rotation: completing is refused and
   * changes nothing. */
  ASSERT_EQ(store_run_begin_rotation(st, "rot-1", "local-ca", 40, &run2), STORE_OK);
  ASSERT_EQ(store_run_cert_received(st, run2, "new-3", CERT_PEM, KEY_PEM, 9900, "dd", "", 41),
            STORE_OK);
  ASSERT_EQ(store_run_registered(st, run2, "thing-rot-1", 42), STORE_OK);
  ASSERT_EQ(store_device_set_state(st, "rot-1", DEV_BLOCKED), STORE_OK);
  ASSERT_EQ(store_run_complete(st, run2, 43), STORE_CONFLICT);
  ASSERT_EQ(store_cert_get_active(st, "rot-1", false, &cert), STORE_OK);
  ASSERT_STR_EQ(cert.cert_id, "new-1");
  ASSERT_EQ(store_cert_get(st, "new-3", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_PENDING);
  ASSERT_EQ(store_device_get(st, "rot-1", &d), STORE_OK);
  ASSERT_EQ(d.state, DEV_BLOCKED);
  ASSERT_EQ(store_cert_count(st, "rot-1", CERT_ACTIVE, &n), STORE_OK);
  ASSERT_EQ(n, 1);
  store_close(st);
}

/* Migration 6 on a registry holding two pending certificates of one device
 * (possible before it): the older is orphaned, the newest stays pending. */
static void test_migration_6_pending(void)
{
  struct paths p;
  struct store *st;
  struct store_cert cert;
  sqlite3 *db;

  paths_for(&p, "mig6");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "m6", DEV_PROVISIONING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "m6", "p-old", CERT_PEM, NULL, 1, NULL, CERT_PENDING, 1),
            STORE_OK);
  store_close(st);
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  if (!db)
    return;
  ASSERT_EQ(raw_exec(db, "DROP INDEX one_next_cert; ALTER TABLE runs DROP COLUMN old_cert_id; "
                         "ALTER TABLE runs DROP COLUMN kind; PRAGMA user_version = 5;"),
            SQLITE_OK);
  ASSERT_EQ(raw_exec(db, "INSERT INTO certificates(cert_id, device_id, status, pem, created_at, "
                         "updated_at) SELECT 'p-new', id, 0, 'pem', 2, 2 FROM devices "
                         "WHERE client_id = 'm6'"),
            SQLITE_OK);
  sqlite3_close(db);
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), LATEST_VERSION);
  ASSERT_EQ(store_cert_get(st, "p-old", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_ORPHANED);
  ASSERT_TRUE(strstr(cert.reason, "schema 6") != NULL);
  ASSERT_EQ(store_cert_get(st, "p-new", false, &cert), STORE_OK);
  ASSERT_EQ(cert.status, CERT_PENDING);
  store_close(st);
}

static void test_nested_tx(void)
{
  struct paths p;
  struct store *st;
  struct store_device d;

  paths_for(&p, "tx");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_commit(st), STORE_INVAL);
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_device_create(st, "outer", DEV_APPROVED, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_device_create(st, "inner", DEV_APPROVED, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_rollback(st), STORE_OK); /* undoes only "inner" */
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_device_create(st, "inner2", DEV_APPROVED, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_commit(st), STORE_OK);
  /* An atomic function failing inside the caller's transaction leaves the
   * caller's earlier writes in place. */
  ASSERT_EQ(store_run_begin(st, "outer", "aws", 1, NULL), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "outer", "aws", 1, NULL), STORE_CONFLICT);
  ASSERT_EQ(store_commit(st), STORE_OK);
  ASSERT_EQ(store_device_get(st, "outer", &d), STORE_OK);
  ASSERT_EQ(store_device_get(st, "inner", &d), STORE_NOTFOUND);
  ASSERT_EQ(store_device_get(st, "inner2", &d), STORE_OK);
  {
    struct store_run r;
    ASSERT_EQ(store_run_get_open(st, "outer", &r), STORE_OK);
  }
  store_close(st);
}

/* ---- keys at rest ---- */

static void test_keys(void)
{
  struct paths p;
  struct store *st;
  sqlite3 *db;
  char *key = NULL;
  char walpath[340];

  paths_for(&p, "keys");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "dev-k1", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_device_create(st, "dev-k2", DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "dev-k1", "k1", CERT_PEM, KEY_PEM, 1, NULL, CERT_ACTIVE, 1),
            STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "dev-k2", "k2", CERT_PEM, KEY_PEM, 1, NULL, CERT_ACTIVE, 1),
            STORE_OK);
  ASSERT_EQ(store_cert_insert(st, "dev-k2", "k3", CERT_PEM, NULL, 1, NULL, CERT_PENDING, 1),
            STORE_OK);
  ASSERT_EQ(store_cert_key(st, "k3", &key), STORE_NOTFOUND);
  ASSERT_TRUE(key == NULL);
  ASSERT_EQ(store_cert_key(st, "k1", &key), STORE_OK);
  ASSERT_STR_EQ(key, KEY_PEM);
  store_secret_free(key);
  key = NULL;

  /* Neither the database nor its WAL holds the plaintext key. */
  snprintf(walpath, sizeof walpath, "%s-wal", p.db);
  ASSERT_TRUE(file_contains(p.db, "TESTCERTIFICATEBODY") ||
              file_contains(walpath, "TESTCERTIFICATEBODY")); /* the search works */
  ASSERT_TRUE(!file_contains(p.db, "PLAINTEXTKEYMARKER"));
  ASSERT_TRUE(!file_contains(walpath, "PLAINTEXTKEYMARKER"));

  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  /* Layout: version byte, 12-byte nonce, ciphertext, 16-byte tag. */
  ASSERT_EQ(raw_int(db, "SELECT length(key_blob) FROM certificates WHERE cert_id = 'k1'"),
            1 + 12 + (int64_t)strlen(KEY_PEM) + 16);
  ASSERT_EQ(raw_int(db, "SELECT unicode(CAST(substr(key_blob, 1, 1) AS TEXT)) FROM "
                        "certificates WHERE cert_id = 'k1'"),
            1);
  /* Same plaintext, different nonces: the blobs differ. */
  ASSERT_EQ(raw_int(db, "SELECT count(DISTINCT key_blob) FROM certificates WHERE key_blob IS "
                        "NOT NULL"),
            2);
  /* Moved onto another device's row, the blob fails: ClientId is the AAD. */
  ASSERT_EQ(raw_exec(db, "UPDATE certificates SET key_blob = (SELECT key_blob FROM certificates "
                         "WHERE cert_id = 'k1') WHERE cert_id = 'k3'"),
            SQLITE_OK);
  sqlite3_close(db);
  ASSERT_EQ(store_cert_key(st, "k3", &key), STORE_CRYPTO);
  ASSERT_TRUE(key == NULL);
  ASSERT_TRUE(strstr(store_errmsg(st), "PLAINTEXT") == NULL);

  ASSERT_EQ(store_cert_key(st, "k2", &key), STORE_OK); /* its own blob still opens */
  ASSERT_STR_EQ(key, KEY_PEM);
  store_secret_free(key);
  key = NULL;
  store_secret_free(NULL);
  store_close(st);

  /* A key file readable by others is refused at open. */
  ASSERT_EQ(chmod(p.key, 0644), 0);
  ASSERT_EQ(open_rc(&p), STORE_CRYPTO);
  ASSERT_EQ(chmod(p.key, 0600), 0);
}

/* Flips one byte of a certificate's key blob in the file, through the raw
 * SQLite blob API; offset < 0 counts from the end. */
static void flip_blob_byte(const struct paths *p, const char *cert_id, int offset)
{
  sqlite3 *db = raw_open(p);
  sqlite3_stmt *s = NULL;
  unsigned char blob[512];
  int len = 0;

  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT key_blob FROM certificates WHERE cert_id = ?", -1, &s,
                               NULL),
            SQLITE_OK);
  sqlite3_bind_text(s, 1, cert_id, -1, SQLITE_STATIC);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  len = sqlite3_column_bytes(s, 0);
  ASSERT_TRUE(len > 29 && len <= (int)sizeof blob);
  if (len > 29 && len <= (int)sizeof blob)
    memcpy(blob, sqlite3_column_blob(s, 0), (size_t)len);
  sqlite3_finalize(s);
  blob[offset < 0 ? len + offset : offset] ^= 0x01;
  ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE certificates SET key_blob = ? WHERE cert_id = ?", -1,
                               &s, NULL),
            SQLITE_OK);
  sqlite3_bind_blob(s, 1, blob, len, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, cert_id, -1, SQLITE_STATIC);
  ASSERT_EQ(sqlite3_step(s), SQLITE_DONE);
  sqlite3_finalize(s);
  sqlite3_close(db);
}

static void test_keys_tamper(void)
{
  static const int offsets[] = {0, 5, 20, -1}; /* version, nonce, ciphertext, tag */
  struct paths p;
  struct store *st;
  char *key = NULL;

  paths_for(&p, "tamper");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 4; i++) {
    char cid[16], dev[16];
    snprintf(cid, sizeof cid, "t%d", i);
    /* One device each: a device holds at most one pending certificate. */
    snprintf(dev, sizeof dev, "dev-t%d", i);
    ASSERT_EQ(store_device_create(st, dev, DEV_ACTIVE, NULL, 1, NULL), STORE_OK);
    ASSERT_EQ(store_cert_insert(st, dev, cid, CERT_PEM, KEY_PEM, 1, NULL, CERT_PENDING, 1),
              STORE_OK);
    flip_blob_byte(&p, cid, offsets[i]);
    ASSERT_EQ(store_cert_key(st, cid, &key), STORE_CRYPTO);
    ASSERT_TRUE(key == NULL);
  }
  store_close(st);
}

/* ---- audit and allowlist ---- */

struct audit_collect {
  int n;
  int64_t ids[16];
  char actions[16][64];
};

static int collect_audit(void *ud, const struct store_audit *a)
{
  struct audit_collect *c = ud;
  if (c->n < 16) {
    c->ids[c->n] = a->id;
    snprintf(c->actions[c->n], sizeof c->actions[0], "%s", a->action);
  }
  c->n++;
  return 0;
}

static int collect_allow(void *ud, const char *entry, int64_t added_at)
{
  struct collect *c = ud;
  if (c->n < 16)
    snprintf(c->ids[c->n], sizeof c->ids[0], "%s@%lld", entry, (long long)added_at);
  c->n++;
  return 0;
}

/* The details of a device's audit rows, oldest first, through a second
 * connection (for the repeat counting). */
static int details_of(const struct paths *p, const char *client_id, char out[][256], int max)
{
  sqlite3 *db = raw_open(p);
  sqlite3_stmt *s = NULL;
  int n = 0;
  if (!db)
    return -1;
  if (sqlite3_prepare_v2(db, "SELECT coalesce(detail, '') FROM audit WHERE client_id = ? ORDER BY id",
                         -1, &s, NULL) == SQLITE_OK) {
    sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
    while (sqlite3_step(s) == SQLITE_ROW) {
      if (n < max)
        snprintf(out[n], 256, "%s", (const char *)sqlite3_column_text(s, 0));
      n++;
    }
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return n;
}

/* A refused leaf retrying (store_audit_repeat): the first row at once, the
 * repeats of the interval as one row when it is over (the next repeat, a
 * flush, or the close), another reason apart; more identities than slots
 * evict the oldest with its count written. */
static void test_audit_repeat(void)
{
  struct paths p;
  struct store *st;
  char rows[8][256];
  int n;

  paths_for(&p, "audit-repeat");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 100; i++)
    ASSERT_EQ(store_audit_repeat(st, 1000 + i, "gateway", "admission.refused", "leaf-r",
                                 "device is blocked"),
              STORE_OK);
  ASSERT_EQ(store_audit_repeat(st, 1010, "gateway", "admission.refused", "leaf-r",
                               "ClientId bound to another address"),
            STORE_OK);
  n = details_of(&p, "leaf-r", rows, 8);
  ASSERT_EQ(n, 2);
  ASSERT_STR_EQ(rows[0], "device is blocked");
  ASSERT_STR_EQ(rows[1], "ClientId bound to another address");
  /* Not over yet: nothing to write. */
  ASSERT_EQ(store_audit_flush(st, 1000 + STORE_AUDIT_REPEAT_S - 1, false), STORE_OK);
  ASSERT_EQ(details_of(&p, "leaf-r", rows, 8), 2);
  /* The next repeat after the interval: its count, then itself anew. */
  ASSERT_EQ(store_audit_repeat(st, 1000 + STORE_AUDIT_REPEAT_S, "gateway", "admission.refused",
                               "leaf-r", "device is blocked"),
            STORE_OK);
  n = details_of(&p, "leaf-r", rows, 8);
  ASSERT_EQ(n, 4);
  ASSERT_STR_EQ(rows[2], "repeated 99 more times in 600s: device is blocked");
  ASSERT_STR_EQ(rows[3], "device is blocked");
  /* The other reason's interval is over too: the flush writes nothing for
   * it (no repeat), and frees its slot. */
  ASSERT_EQ(store_audit_flush(st, 1010 + STORE_AUDIT_REPEAT_S, false), STORE_OK);
  ASSERT_EQ(details_of(&p, "leaf-r", rows, 8), 4);
  /* More identities than slots: the oldest goes, with its count. */
  ASSERT_EQ(store_audit_repeat(st, 2000, "gateway", "admission.refused", "leaf-r",
                               "device is blocked"),
            STORE_OK); /* counted on the slot of 1600 */
  for (int i = 0; i < STORE_AUDIT_REPEAT_SLOTS; i++) {
    char id[32];
    snprintf(id, sizeof id, "other-%d", i);
    ASSERT_EQ(store_audit_repeat(st, 2001, "gateway", "admission.refused", id, "x"), STORE_OK);
  }
  n = details_of(&p, "leaf-r", rows, 8);
  ASSERT_EQ(n, 5);
  ASSERT_TRUE(strncmp(rows[4], "repeated 1 more times in ", 25) == 0);
  /* Repeats counted at the close are written by it. */
  for (int i = 0; i < 3; i++)
    ASSERT_EQ(store_audit_repeat(st, 2002, "gateway", "admission.refused", "other-7", "x"),
              STORE_OK);
  store_close(st);
  n = details_of(&p, "other-7", rows, 8);
  ASSERT_EQ(n, 2);
  ASSERT_TRUE(strncmp(rows[1], "repeated 3 more times in ", 25) == 0);
}

static void test_audit_allowlist(void)
{
  struct paths p;
  struct store *st;
  struct audit_collect ac;
  struct collect c;
  int64_t total = -1;

  paths_for(&p, "audit");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < 10; i++) {
    char action[32];
    snprintf(action, sizeof action, "action-%d", i);
    ASSERT_EQ(store_audit(st, 1000 + i, "gateway", action, i % 2 ? "dev-odd" : NULL, "{}"),
              STORE_OK);
  }
  ASSERT_EQ(store_audit(st, 1, "", "x", NULL, NULL), STORE_INVAL);
  memset(&ac, 0, sizeof ac);
  ASSERT_EQ(store_audit_list(st, NULL, 0, 3, collect_audit, &ac, &total), STORE_OK);
  ASSERT_EQ(total, 10);
  ASSERT_EQ(ac.n, 3);
  ASSERT_STR_EQ(ac.actions[0], "action-9"); /* newest first */
  ASSERT_STR_EQ(ac.actions[2], "action-7");
  memset(&ac, 0, sizeof ac);
  ASSERT_EQ(store_audit_list(st, NULL, 9, 3, collect_audit, &ac, &total), STORE_OK);
  ASSERT_EQ(ac.n, 1);
  ASSERT_STR_EQ(ac.actions[0], "action-0");
  memset(&ac, 0, sizeof ac);
  ASSERT_EQ(store_audit_list(st, "dev-odd", 1, 10, collect_audit, &ac, &total), STORE_OK);
  ASSERT_EQ(total, 5);
  ASSERT_EQ(ac.n, 4);
  ASSERT_STR_EQ(ac.actions[0], "action-7");

  ASSERT_EQ(store_allow_add(st, "sensor-001", 5), STORE_OK);
  ASSERT_EQ(store_allow_add(st, "sensor-001", 6), STORE_CONFLICT);
  ASSERT_EQ(store_allow_add(st, "lab-*", 7), STORE_OK);
  ASSERT_EQ(store_allow_add(st, "node-?[0-9]", 8), STORE_OK);
  ASSERT_EQ(store_allow_add(st, "", 8), STORE_INVAL);
  ASSERT_EQ(store_allow_match(st, "sensor-001"), 1);
  ASSERT_EQ(store_allow_match(st, "sensor-002"), 0);
  ASSERT_EQ(store_allow_match(st, "lab-anything"), 1);
  ASSERT_EQ(store_allow_match(st, "lab"), 0);
  ASSERT_EQ(store_allow_match(st, "node-a7"), 1);
  ASSERT_EQ(store_allow_match(st, "node-ab"), 0);
  ASSERT_EQ(store_allow_match(st, "xlab-1"), 0);
  memset(&c, 0, sizeof c);
  ASSERT_EQ(store_allow_list(st, collect_allow, &c), STORE_OK);
  ASSERT_EQ(c.n, 3);
  ASSERT_STR_EQ(c.ids[0], "lab-*@7");
  ASSERT_EQ(store_allow_remove(st, "lab-*"), STORE_OK);
  ASSERT_EQ(store_allow_remove(st, "lab-*"), STORE_NOTFOUND);
  ASSERT_EQ(store_allow_match(st, "lab-anything"), 0);
  store_close(st);
}

/* ---- paging, the same edge cases over every paged listing ---- */

/* Counts the rows a listing hands out, keeps their names in order, and
 * answers `ret` from the `ret_at`-th row on (0: go on throughout). */
struct probe {
  int n;
  char keys[16][260];
  int ret_at;
  int ret;
};

static int probe_row(struct probe *pr, const char *key)
{
  if (pr->n < 16)
    snprintf(pr->keys[pr->n], sizeof pr->keys[0], "%s", key);
  pr->n++;
  return pr->ret_at && pr->n >= pr->ret_at ? pr->ret : 0;
}

static int probe_dev(void *ud, const struct store_device *d)
{
  return probe_row(ud, d->client_id);
}

static int probe_cert(void *ud, const struct store_cert *c)
{
  return probe_row(ud, c->cert_id);
}

static int probe_audit(void *ud, const struct store_audit *a)
{
  return probe_row(ud, a->action);
}

/* One paged listing, unfiltered; pr NULL asks for the total only. */
typedef int (*page_fn)(struct store *st, int64_t offset, int64_t limit, struct probe *pr,
                       int64_t *total);

static int page_devices(struct store *st, int64_t offset, int64_t limit, struct probe *pr,
                        int64_t *total)
{
  return store_device_list(st, -1, NULL, offset, limit, pr ? probe_dev : NULL, pr, total);
}

static int page_certs(struct store *st, int64_t offset, int64_t limit, struct probe *pr,
                      int64_t *total)
{
  return store_cert_list(st, -1, offset, limit, pr ? probe_cert : NULL, pr, total);
}

static int page_audit(struct store *st, int64_t offset, int64_t limit, struct probe *pr,
                      int64_t *total)
{
  return store_audit_list(st, NULL, offset, limit, pr ? probe_audit : NULL, pr, total);
}

/* Runs one page and checks the row count and the total it reports. */
static void expect_page(struct store *st, page_fn fn, int64_t offset, int64_t limit, int rows,
                        int64_t want_total)
{
  struct probe pr;
  int64_t total = -1;

  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(fn(st, offset, limit, &pr, &total), STORE_OK);
  ASSERT_EQ(pr.n, rows);
  ASSERT_EQ(total, want_total);
}

static void check_paging(struct store *st, page_fn fn, int rows)
{
  struct probe all, pr;
  int64_t total;

  /* The whole list, the reference for the pages below. */
  memset(&all, 0, sizeof all);
  ASSERT_EQ(fn(st, 0, -1, &all, &total), STORE_OK);
  ASSERT_EQ(all.n, rows);
  ASSERT_EQ(total, rows);

  /* Limits: 0 hands out nothing but still counts; negative, just enough,
   * one too many and the largest are all "every row" (there is no cap). */
  expect_page(st, fn, 0, 0, 0, rows);
  expect_page(st, fn, 0, rows, rows, rows);
  expect_page(st, fn, 0, rows + 1, rows, rows);
  expect_page(st, fn, 0, INT64_MAX, rows, rows);
  expect_page(st, fn, 0, -5, rows, rows);

  /* Offsets: the last row, then at, past and far past the end. */
  expect_page(st, fn, rows - 1, 10, 1, rows);
  expect_page(st, fn, rows, 10, 0, rows);
  expect_page(st, fn, rows + 100, 10, 0, rows);
  expect_page(st, fn, INT64_MAX, 10, 0, rows);
  expect_page(st, fn, rows, 0, 0, rows);

  /* Pages of three, one after another, are the whole list in order. */
  for (int off = 0; off < rows; off += 3) {
    memset(&pr, 0, sizeof pr);
    ASSERT_EQ(fn(st, off, 3, &pr, NULL), STORE_OK);
    ASSERT_EQ(pr.n, rows - off < 3 ? rows - off : 3);
    for (int i = 0; i < pr.n; i++)
      ASSERT_STR_EQ(pr.keys[i], all.keys[off + i]);
  }

  /* A negative offset is refused before anything is counted or listed. */
  memset(&pr, 0, sizeof pr);
  total = -1;
  ASSERT_EQ(fn(st, -1, 10, &pr, &total), STORE_INVAL);
  ASSERT_EQ(pr.n, 0);
  ASSERT_EQ(total, -1);
  ASSERT_EQ(fn(st, INT64_MIN, 10, NULL, &total), STORE_INVAL);

  /* No callback: the total alone.  No total: the rows alone. */
  total = -1;
  ASSERT_EQ(fn(st, 0, 10, NULL, &total), STORE_OK);
  ASSERT_EQ(total, rows);
  expect_page(st, fn, 1, 2, 2, rows);
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(fn(st, 0, -1, &pr, NULL), STORE_OK);
  ASSERT_EQ(pr.n, rows);

  /* The callback's answer: positive stops quietly, negative is passed on. */
  memset(&pr, 0, sizeof pr);
  pr.ret_at = 2;
  pr.ret = 7;
  ASSERT_EQ(fn(st, 0, -1, &pr, NULL), STORE_OK);
  ASSERT_EQ(pr.n, 2);
  memset(&pr, 0, sizeof pr);
  pr.ret_at = 3;
  pr.ret = -42;
  ASSERT_EQ(fn(st, 0, -1, &pr, NULL), -42);
  ASSERT_EQ(pr.n, 3);
}

static void test_paging(void)
{
  enum { ROWS = 7 };
  struct paths p;
  struct store *st;
  struct probe pr;
  int64_t total;

  paths_for(&p, "paging");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (int i = 0; i < ROWS; i++) {
    char id[32], cid[32], action[32];
    snprintf(id, sizeof id, "pg-%02d", i);
    snprintf(cid, sizeof cid, "pg-cert-%02d", i);
    snprintf(action, sizeof action, "pg-action-%02d", i);
    ASSERT_EQ(store_device_create(st, id, i % 2 ? DEV_ACTIVE : DEV_PENDING, NULL, i, NULL),
              STORE_OK);
    ASSERT_EQ(store_cert_insert(st, id, cid, CERT_PEM, NULL, 0, NULL,
                                i % 2 ? CERT_ACTIVE : CERT_PENDING, i),
              STORE_OK);
    ASSERT_EQ(store_audit(st, i, "gateway", action, i % 2 ? id : NULL, NULL), STORE_OK);
  }
  check_paging(st, page_devices, ROWS);
  check_paging(st, page_certs, ROWS);
  check_paging(st, page_audit, ROWS);

  /* A filter narrows the total and the rows alike, also past its end. */
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_device_list(st, DEV_ACTIVE, NULL, 2, 10, probe_dev, &pr, &total), STORE_OK);
  ASSERT_EQ(total, 3);
  ASSERT_EQ(pr.n, 1);
  ASSERT_STR_EQ(pr.keys[0], "pg-05");
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_device_list(st, DEV_ACTIVE, "", 3, 10, probe_dev, &pr, &total), STORE_OK);
  ASSERT_EQ(total, 3);
  ASSERT_EQ(pr.n, 0);
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_cert_list(st, CERT_PENDING, 1, 2, probe_cert, &pr, &total), STORE_OK);
  ASSERT_EQ(total, 4);
  ASSERT_EQ(pr.n, 2);
  ASSERT_STR_EQ(pr.keys[0], "pg-cert-04"); /* newest first */
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_audit_list(st, "pg-03", 0, 0, probe_audit, &pr, &total), STORE_OK);
  ASSERT_EQ(total, 1);
  ASSERT_EQ(pr.n, 0);
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_audit_list(st, "pg-03", 1, 10, probe_audit, &pr, &total), STORE_OK);
  ASSERT_EQ(total, 1);
  ASSERT_EQ(pr.n, 0);

  /* The other arguments are still checked. */
  ASSERT_EQ(store_device_list_sorted(st, -1, NULL, 99, false, 0, 10, probe_dev, &pr, NULL),
            STORE_INVAL);
  ASSERT_EQ(store_device_list(st, -2, NULL, 0, 10, probe_dev, &pr, NULL), STORE_INVAL);
  store_close(st);
}

/* How each device last authenticated on the LAN, and whether it holds a DTLS
 * key, are read with the device and filter the listing. */
static int probe_psk(void *ud, const struct store_device *d)
{
  return probe_row(ud, d->has_psk ? "psk" : "none");
}

static void test_lan_security_view(void)
{
  static const struct {
    const char *id, *security; /* NULL: never connected */
  } devs[] = {{"lan-a", "plain"}, {"lan-b", "dtls-psk"}, {"lan-c", "dtls-cert"},
              {"lan-d", NULL}, {"lan-e", "dtls-psk"}};
  struct store_device_filter where = {.state = -1};
  struct store_device d;
  struct paths p;
  struct store *st;
  struct probe pr;
  uint8_t key[STORE_PSK_MIN] = {1};
  int64_t total;

  paths_for(&p, "lansec");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
    ASSERT_EQ(store_device_create(st, devs[i].id, DEV_APPROVED, NULL, 1, NULL), STORE_OK);
    if (devs[i].security)
      ASSERT_EQ(store_device_set_lan_security(st, devs[i].id, devs[i].security), STORE_OK);
  }
  ASSERT_EQ(store_psk_set(st, "lan-d", key, sizeof key, 1), STORE_OK);
  ASSERT_EQ(store_device_get(st, "lan-b", &d), STORE_OK);
  ASSERT_STR_EQ(d.lan_security, "dtls-psk");
  ASSERT_TRUE(!d.has_psk);
  ASSERT_EQ(store_device_get(st, "lan-d", &d), STORE_OK);
  ASSERT_STR_EQ(d.lan_security, "");
  ASSERT_TRUE(d.has_psk);

  where.lan_security = "dtls-psk";
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CLIENT_ID, false, 0, 10, probe_dev,
                                    &pr, &total),
            STORE_OK);
  ASSERT_EQ(total, 2);
  ASSERT_EQ(pr.n, 2);
  ASSERT_STR_EQ(pr.keys[0], "lan-b");
  ASSERT_STR_EQ(pr.keys[1], "lan-e");
  /* "none": never connected; the key is read in the listing too. */
  where.lan_security = "none";
  memset(&pr, 0, sizeof pr);
  ASSERT_EQ(store_device_list_where(st, &where, STORE_SORT_CLIENT_ID, false, 0, 10, probe_psk,
                                    &pr, &total),
            STORE_OK);
  ASSERT_EQ(total, 1);
  ASSERT_STR_EQ(pr.keys[0], "psk");
  /* With the other filters; "" is no filter. */
  where.lan_security = "plain";
  where.text = "lan-a";
  ASSERT_EQ(store_device_list_where(st, &where, 0, false, 0, 10, NULL, NULL, &total), STORE_OK);
  ASSERT_EQ(total, 1);
  where.state = DEV_ACTIVE;
  ASSERT_EQ(store_device_list_where(st, &where, 0, false, 0, 10, NULL, NULL, &total), STORE_OK);
  ASSERT_EQ(total, 0);
  where.state = -1;
  where.text = NULL;
  where.lan_security = "";
  ASSERT_EQ(store_device_list_where(st, &where, 0, false, 0, 10, NULL, NULL, &total), STORE_OK);
  ASSERT_EQ(total, 5);
  where.lan_security = "telnet";
  ASSERT_EQ(store_device_list_where(st, &where, 0, false, 0, 10, NULL, NULL, &total),
            STORE_INVAL);
  store_close(st);
}

/* ---- crash safety ---- */

static int count_open(void *ud, const struct store_run *r)
{
  struct store_run *out = ud;
  if (out->id == 0)
    *out = *r;
  return 0;
}

static void test_crash_resume(void)
{
  struct paths p;
  struct store *st;
  struct store_run r;
  int64_t run = 0;
  char *key = NULL;

  paths_for(&p, "crash");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_device_create(st, "sleepy", DEV_PROVISIONING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "sleepy", "aws", 10, &run), STORE_OK);
  ASSERT_EQ(store_run_set_key(st, run, KEY_PEM, 11), STORE_OK);
  ASSERT_EQ(store_run_set_step(st, run, RUN_CSR_SENT, 12), STORE_OK);
  ASSERT_EQ(store_run_cert_received(st, run, "c-sleepy", CERT_PEM, NULL, 5000, NULL, "tok-123",
                                    13),
            STORE_OK);
  /* An uncommitted caller transaction at the moment of the "crash". */
  ASSERT_EQ(store_begin(st), STORE_OK);
  ASSERT_EQ(store_run_set_step(st, run, RUN_REGISTER_SENT, 14), STORE_OK);
  store_close(st); /* no finish, no commit */

  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  memset(&r, 0, sizeof r);
  ASSERT_EQ(store_run_list_open(st, count_open, &r), STORE_OK);
  ASSERT_EQ(r.id, run);
  ASSERT_EQ(r.step, RUN_CERT_RECEIVED);
  ASSERT_STR_EQ(r.token, "tok-123");
  ASSERT_EQ(r.token_at, 13);
  ASSERT_STR_EQ(r.cert_id, "c-sleepy");
  ASSERT_STR_EQ(r.client_id, "sleepy");
  ASSERT_EQ(store_run_key(st, run, &key), STORE_OK);
  ASSERT_STR_EQ(key, KEY_PEM);
  store_secret_free(key);
  /* And the device still cannot start a second run. */
  ASSERT_EQ(store_run_begin(st, "sleepy", "aws", 20, NULL), STORE_CONFLICT);
  store_close(st);
}

/* ---- ownership tokens at rest ---- */

static const char TOKEN[] = "OWNERSHIPTOKENMARKER-eyJhbGciOiJIUzI1NiJ9.c2lnbmF0dXJl";

/* A run of device client_id at RUN_CERT_RECEIVED holding token. */
static int64_t run_with_token(struct store *st, const char *client_id, const char *cert_id,
                              const char *token)
{
  int64_t run = 0;
  ASSERT_EQ(store_device_create(st, client_id, DEV_PROVISIONING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_run_begin(st, client_id, "aws", 300, &run), STORE_OK);
  ASSERT_EQ(store_run_set_key(st, run, KEY_PEM, 301), STORE_OK);
  ASSERT_EQ(store_run_set_step(st, run, RUN_CSR_SENT, 302), STORE_OK);
  ASSERT_EQ(store_run_cert_received(st, run, cert_id, CERT_PEM, NULL, 9000, NULL, token, 303),
            STORE_OK);
  return run;
}

/* The token is stored sealed: neither the runs table nor the files hold its
 * text, and reading the run opens it. */
static void test_token_sealed(void)
{
  struct paths p;
  struct store *st;
  struct store_run r;
  sqlite3 *db;
  char walpath[340], *key = NULL;
  int64_t run, run2 = 0;

  paths_for(&p, "token");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  run = run_with_token(st, "tok-leaf", "tok-cert", TOKEN);

  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  if (!db)
    return;
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM runs WHERE token IS NOT NULL"), 0);
  ASSERT_EQ(raw_int(db, "SELECT length(token_blob) FROM runs"), 1 + 12 + strlen(TOKEN) + 16);
  ASSERT_EQ(raw_int(db, "SELECT instr(token_blob, CAST('OWNERSHIPTOKENMARKER' AS BLOB)) FROM runs"),
            0);
  /* The schema keeps the plaintext column empty against any writer. */
  ASSERT_TRUE(raw_exec(db, "UPDATE runs SET token = 'plain'") != SQLITE_OK);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM runs WHERE token IS NOT NULL"), 0);

  snprintf(walpath, sizeof walpath, "%s-wal", p.db);
  ASSERT_TRUE(file_contains(p.db, "TESTCERTIFICATEBODY") ||
              file_contains(walpath, "TESTCERTIFICATEBODY")); /* the search works */
  ASSERT_TRUE(!file_contains(p.db, "OWNERSHIPTOKENMARKER"));
  ASSERT_TRUE(!file_contains(walpath, "OWNERSHIPTOKENMARKER"));

  /* Every way of reading the run hands the token back. */
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK);
  ASSERT_STR_EQ(r.token, TOKEN);
  ASSERT_EQ(r.token_at, 303);
  memset(&r, 0, sizeof r);
  ASSERT_EQ(store_run_get_open(st, "tok-leaf", &r), STORE_OK);
  ASSERT_STR_EQ(r.token, TOKEN);
  memset(&r, 0, sizeof r);
  ASSERT_EQ(store_run_list_open(st, count_open, &r), STORE_OK);
  ASSERT_EQ(r.id, run);
  ASSERT_STR_EQ(r.token, TOKEN);

  /* The blob is bound to its device and to being a token: moved onto
   * another device's run, or into a key column, it does not open. */
  ASSERT_EQ(store_device_create(st, "tok-other", DEV_PROVISIONING, NULL, 1, NULL), STORE_OK);
  ASSERT_EQ(store_run_begin(st, "tok-other", "aws", 310, &run2), STORE_OK);
  ASSERT_EQ(raw_exec(db, "UPDATE runs SET token_blob = (SELECT token_blob FROM runs WHERE "
                         "token_blob IS NOT NULL) WHERE token_blob IS NULL"),
            SQLITE_OK);
  ASSERT_EQ(raw_exec(db, "UPDATE runs SET key_blob = token_blob"), SQLITE_OK);
  ASSERT_EQ(store_run_get(st, run2, &r), STORE_CRYPTO);
  ASSERT_TRUE(strstr(store_errmsg(st), "OWNERSHIP") == NULL);
  ASSERT_EQ(store_run_key(st, run, &key), STORE_CRYPTO);
  ASSERT_TRUE(key == NULL);
  ASSERT_EQ(store_run_get(st, run, &r), STORE_OK); /* its own blob still opens */
  ASSERT_STR_EQ(r.token, TOKEN);

  /* A finished run keeps no token, sealed or not. */
  ASSERT_EQ(store_run_fail(st, run, "test", 320), STORE_OK);
  ASSERT_EQ(store_run_fail(st, run2, "test", 320), STORE_OK);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM runs WHERE token_blob IS NOT NULL"), 0);
  sqlite3_close(db);
  store_close(st);
}

/* A registry of schema version 1 kept the token in plain text; migration 2
 * seals it, and the file keeps no copy. */
static void test_token_migration(void)
{
  static const char legacy[] = "LEGACYTOKENMARKER-0123456789abcdef";
  struct paths p;
  struct store *st;
  struct store_run r;
  sqlite3 *db;
  char walpath[340];

  paths_for(&p, "tokmig");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  run_with_token(st, "mig-leaf", "mig-cert", "placeholder");
  store_close(st);

  /* Back to version 1: no token_blob, no triggers, the token in plain text. */
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  if (!db)
    return;
  ASSERT_EQ(raw_exec(db, "DROP TRIGGER runs_token_sealed_insert;"
                         "DROP TRIGGER runs_token_sealed_update;"
                         "UPDATE runs SET token = 'LEGACYTOKENMARKER-0123456789abcdef';"
                         "DROP INDEX one_next_cert;"
                         "ALTER TABLE runs DROP COLUMN old_cert_id;"
                         "ALTER TABLE runs DROP COLUMN kind;"
                         "ALTER TABLE runs DROP COLUMN token_blob;"
                         "DROP TABLE leaf_downlink;"
                         "DROP TABLE leaf_topics;"
                         "DROP TABLE leaf_subs;"
                         "DROP TABLE leaf_sessions;"
                         "DROP TABLE outbox;"
                         "DROP TABLE psks;"
                         "ALTER TABLE devices DROP COLUMN lan_security;"
                         "PRAGMA user_version = 1;"),
            SQLITE_OK);
  sqlite3_close(db);
  snprintf(walpath, sizeof walpath, "%s-wal", p.db);
  ASSERT_TRUE(file_contains(p.db, legacy) || file_contains(walpath, legacy)); /* it is there */

  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  ASSERT_EQ(store_schema_version(st), LATEST_VERSION);
  ASSERT_EQ(store_run_get_open(st, "mig-leaf", &r), STORE_OK);
  ASSERT_STR_EQ(r.token, legacy);
  ASSERT_EQ(r.step, RUN_CERT_RECEIVED);
  db = raw_open(&p);
  ASSERT_TRUE(db != NULL);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM runs WHERE token IS NOT NULL"), 0);
  ASSERT_EQ(raw_int(db, "SELECT count(*) FROM runs WHERE token_blob IS NOT NULL"), 1);
  ASSERT_EQ(raw_int(db, "SELECT instr(token_blob, CAST('LEGACYTOKENMARKER' AS BLOB)) FROM runs"),
            0);
  sqlite3_close(db);
  ASSERT_TRUE(!file_contains(p.db, legacy));
  ASSERT_TRUE(!file_contains(walpath, legacy));
  store_close(st);
  ASSERT_TRUE(!file_contains(p.db, legacy));
}

/* ---- timing (printed, never asserted) ---- */

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_timing(void)
{
  struct paths p;
  struct store *st;
  double t0, t1, t2;
  int failures = 0;
  int64_t n = 0;

  paths_for(&p, "timing");
  st = open_store(&p);
  ASSERT_TRUE(st != NULL);
  if (!st)
    return;
  t0 = now_s();
  for (int i = 0; i < 1000; i++) {
    char id[32];
    snprintf(id, sizeof id, "bench-%04d", i);
    failures += store_device_create(st, id, DEV_APPROVED, NULL, i, NULL) != STORE_OK;
  }
  t1 = now_s();
  for (int i = 0; i < 1000; i++) {
    char id[32], cid[32];
    snprintf(id, sizeof id, "bench-%04d", i);
    snprintf(cid, sizeof cid, "cert-%04d", i);
    failures += store_cert_insert(st, id, cid, CERT_PEM, KEY_PEM, 9999, NULL, CERT_ACTIVE, i) !=
                STORE_OK;
  }
  t2 = now_s();
  ASSERT_EQ(failures, 0);
  ASSERT_EQ(store_cert_count(st, NULL, CERT_ACTIVE, &n), STORE_OK);
  ASSERT_EQ(n, 1000);
  fprintf(stderr,
          "timing: 1000 device creations %.1f ms, 1000 cert inserts (with key encryption) "
          "%.1f ms (one transaction each, synchronous=NORMAL)\n",
          (t1 - t0) * 1e3, (t2 - t1) * 1e3);
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
  snprintf(g_dir, sizeof g_dir, "%s/test_store_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  /* A permissive umask must not leak into the key file's mode. */
  umask(022);

  RUN(test_open_migrate);
  RUN(test_key_file_checks);
  RUN(test_devices);
  RUN(test_cert_invariant);
  RUN(test_one_open_run);
  RUN(test_journal_flow);
  RUN(test_nested_tx);
  RUN(test_keys);
  RUN(test_keys_tamper);
  RUN(test_audit_allowlist);
  RUN(test_paging);
  RUN(test_lan_security_view);
  RUN(test_crash_resume);
  RUN(test_audit_repeat);
  RUN(test_rotation_journal);
  RUN(test_migration_6_pending);
  RUN(test_token_sealed);
  RUN(test_token_migration);
  RUN(test_timing);

  remove_dir(g_dir);
  return TEST_END();
}
