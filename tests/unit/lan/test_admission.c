/*
 * test_admission.c - admission's rules for the two transports (admission.h,
 * docs/dtls.md §9) on a real registry file: how a device authenticated is
 * recorded; a ClientId that holds a PSK or has authenticated over DTLS is
 * refused over plain UDP without an audit row; the IP binding applies over
 * plain UDP only; admission.plain_udp's three settings; the refusal of a
 * DTLS identity naming another ClientId is audited; a first sight's rows
 * (device, LAN security, audit) go in together or not at all.
 */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "admission.h"
#include "config.h"
#include "store.h"

#define NOW 1700000000

static char g_dir[256];
static struct store *g_st;
static struct gw_config *g_cfg;

struct audit_ctx {
  const char *action;
  int64_t n;
};

static int count_cb(void *ud, const struct store_audit *a)
{
  struct audit_ctx *c = ud;
  if (strcmp(a->action, c->action) == 0)
    c->n++;
  return 0;
}

static int64_t audits(const char *client_id, const char *action)
{
  struct audit_ctx c = {action, 0};
  int64_t total = 0;
  ASSERT_EQ(store_audit_list(g_st, client_id, 0, 1000, count_cb, &c, &total), STORE_OK);
  return c.n;
}

static int admit(const char *cid, const char *ip, int sec, struct store_device *dev)
{
  char reason[256];
  return admit_check(g_st, g_cfg, cid, ip, sec, NOW, NULL, dev, reason, sizeof reason);
}

static const char *security_of(const char *cid)
{
  static struct store_device d;
  if (store_device_get(g_st, cid, &d) != STORE_OK)
    return "(none)";
  return d.lan_security;
}

static void test_security_recorded(void)
{
  struct store_device d;
  ASSERT_EQ(admit("plain-1", "127.0.0.1", ADMIT_SEC_PLAIN, &d), ADMIT_OK);
  ASSERT_STR_EQ(security_of("plain-1"), "plain");
  ASSERT_TRUE(!d.has_psk);
  ASSERT_EQ(admit("cert-1", "127.0.0.1", ADMIT_SEC_CERT, NULL), ADMIT_OK);
  ASSERT_STR_EQ(security_of("cert-1"), "dtls-cert");
  /* A plain leaf that moves to DTLS is marked at its first DTLS CONNECT. */
  ASSERT_EQ(admit("plain-1", "127.0.0.1", ADMIT_SEC_PSK, NULL), ADMIT_OK);
  ASSERT_STR_EQ(security_of("plain-1"), "dtls-psk");
  ASSERT_STR_EQ(admit_sec_name(ADMIT_SEC_PLAIN), "plain");
  ASSERT_STR_EQ(admit_sec_name(ADMIT_SEC_CERT), "dtls-cert");
}

static void test_dtls_identity_refused_over_plain(void)
{
  static const uint8_t key[32] = {1, 2, 3};
  struct store_device d;

  ASSERT_EQ(admit("dtls-1", "127.0.0.1", ADMIT_SEC_CERT, NULL), ADMIT_OK);
  ASSERT_EQ(admit("dtls-1", "127.0.0.1", ADMIT_SEC_PLAIN, NULL), ADMIT_NEEDS_DTLS);
  /* Known to plain UDP so far, then given a key: plain is over for it. */
  ASSERT_EQ(admit("keyed-1", "127.0.0.1", ADMIT_SEC_PLAIN, NULL), ADMIT_OK);
  ASSERT_EQ(store_psk_set(g_st, "keyed-1", key, sizeof key, NOW), STORE_OK);
  ASSERT_EQ(store_device_get(g_st, "keyed-1", &d), STORE_OK);
  ASSERT_TRUE(d.has_psk);
  ASSERT_EQ(admit("keyed-1", "127.0.0.1", ADMIT_SEC_PLAIN, NULL), ADMIT_NEEDS_DTLS);
  ASSERT_EQ(admit("keyed-1", "127.0.0.1", ADMIT_SEC_PSK, NULL), ADMIT_OK);
  /* Refusals anyone can cause write nothing. */
  ASSERT_EQ(audits("dtls-1", "admission.refused"), 0);
  ASSERT_EQ(audits("keyed-1", "admission.refused"), 0);
  /* With its key deleted it is still DTLS-only: it has authenticated over
   * DTLS, and that mark stays. */
  ASSERT_EQ(store_psk_delete(g_st, "keyed-1"), STORE_OK);
  ASSERT_EQ(admit("keyed-1", "127.0.0.1", ADMIT_SEC_PLAIN, NULL), ADMIT_NEEDS_DTLS);
}

static void test_binding_plain_only(void)
{
  /* Bound to its IP over plain UDP... */
  ASSERT_EQ(admit("bound-1", "127.0.0.5", ADMIT_SEC_PLAIN, NULL), ADMIT_OK);
  ASSERT_EQ(admit("bound-1", "127.0.0.6", ADMIT_SEC_PLAIN, NULL), ADMIT_REFUSED);
  /* ...over DTLS the key is the binding: no address is recorded or checked. */
  ASSERT_EQ(admit("moving-1", "127.0.0.7", ADMIT_SEC_PSK, NULL), ADMIT_OK);
  {
    struct store_device d;
    ASSERT_EQ(store_device_get(g_st, "moving-1", &d), STORE_OK);
    ASSERT_STR_EQ(d.bound_addr, "");
  }
  ASSERT_EQ(admit("moving-1", "127.0.0.8", ADMIT_SEC_PSK, NULL), ADMIT_OK);
  /* A plain-bound device that moves to DTLS may come from anywhere. */
  ASSERT_EQ(admit("bound-1", "127.0.0.9", ADMIT_SEC_CERT, NULL), ADMIT_OK);
}

static void test_plain_udp_setting(void)
{
  static const char *const listed[] = {"legacy-*", "old-1"};
  char **saved = g_cfg->admission.plain_udp_clients;
  size_t n_saved = g_cfg->admission.n_plain_udp_clients;

  ASSERT_TRUE(admit_plain_allowed(g_cfg, "anything"));
  g_cfg->admission.plain_udp = PLAIN_UDP_OFF;
  ASSERT_TRUE(!admit_plain_allowed(g_cfg, "anything"));
  g_cfg->admission.plain_udp = PLAIN_UDP_LISTED;
  g_cfg->admission.plain_udp_clients = (char **)listed;
  g_cfg->admission.n_plain_udp_clients = 2;
  ASSERT_TRUE(admit_plain_allowed(g_cfg, "legacy-42"));
  ASSERT_TRUE(admit_plain_allowed(g_cfg, "old-1"));
  ASSERT_TRUE(!admit_plain_allowed(g_cfg, "old-10"));
  ASSERT_TRUE(!admit_plain_allowed(g_cfg, "new-1"));
  g_cfg->admission.plain_udp_clients = saved;
  g_cfg->admission.n_plain_udp_clients = n_saved;
  g_cfg->admission.plain_udp = PLAIN_UDP_ALLOW;
}

static void test_identity_refusal_audited(void)
{
  char reason[256];
  ASSERT_EQ(admit_refuse_identity(g_st, "victim-1", "leaf-7", NOW, reason, sizeof reason),
            ADMIT_REFUSED);
  ASSERT_TRUE(strstr(reason, "\"leaf-7\"") != NULL);
  ASSERT_EQ(audits("victim-1", "admission.refused"), 1);
  /* No device is created for the ClientId it named. */
  {
    struct store_device d;
    ASSERT_EQ(store_device_get(g_st, "victim-1", &d), STORE_NOTFOUND);
  }
}

/* A first sight writes its three rows in one transaction: when the second
 * write fails (a trigger another connection put on the registry), neither the
 * device nor its audit row is left, the registry's error is the reason, and
 * the next admission (the trigger gone) works with one audit row. */
static void test_first_sight_atomic(void)
{
  char db[300], reason[256];
  sqlite3 *other = NULL;
  struct store_device d;

  snprintf(db, sizeof db, "%s/registry.db", g_dir);
  ASSERT_EQ(sqlite3_open(db, &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other,
                         "CREATE TRIGGER no_security BEFORE UPDATE OF lan_security ON devices "
                         "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
                         NULL, NULL, NULL),
            SQLITE_OK);
  ASSERT_EQ(admit_check(g_st, g_cfg, "atomic-1", "127.0.0.1", ADMIT_SEC_PLAIN, NOW, NULL, &d,
                        reason, sizeof reason),
            ADMIT_ERROR);
  ASSERT_TRUE(strstr(reason, "refused by the test") != NULL);
  ASSERT_EQ(store_device_get(g_st, "atomic-1", &d), STORE_NOTFOUND);
  ASSERT_EQ(audits("atomic-1", "admission.admitted"), 0);
  ASSERT_EQ(sqlite3_exec(other, "DROP TRIGGER no_security", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  /* No transaction was left open: the next one goes through. */
  ASSERT_EQ(admit("atomic-1", "127.0.0.1", ADMIT_SEC_PLAIN, &d), ADMIT_OK);
  ASSERT_STR_EQ(security_of("atomic-1"), "plain");
  ASSERT_EQ(audits("atomic-1", "admission.admitted"), 1);
  ASSERT_EQ(store_begin(g_st), STORE_OK);
  ASSERT_EQ(store_commit(g_st), STORE_OK);
}

static int setup(void)
{
  char path[320], db[320], key[320], err[512];
  FILE *f;
  snprintf(g_dir, sizeof g_dir, "/tmp/fleetgw-test-admission-XXXXXX");
  if (!mkdtemp(g_dir))
    return -1;
  snprintf(path, sizeof path, "%s/fleetgw.json", g_dir);
  f = fopen(path, "w");
  if (!f)
    return -1;
  fputs("{\"upstream\": {\"host\": \"h\", \"tls\": false}, \"admission\": {\"policy\": \"open\"}}",
        f);
  fclose(f);
  if (cfg_load(path, &g_cfg, err, sizeof err) != 0) {
    fprintf(stderr, "cfg_load: %s\n", err);
    return -1;
  }
  unlink(path);
  snprintf(db, sizeof db, "%s/registry.db", g_dir);
  snprintf(key, sizeof key, "%s/registry.key", g_dir);
  struct store_opts o = {.path = db, .key_file = key, .synchronous = 1};
  return store_open(&o, &g_st) == STORE_OK ? 0 : -1;
}

int main(void)
{
  char cmd[300];
  ASSERT_EQ(setup(), 0);
  if (!g_st)
    return TEST_END();
  RUN(test_security_recorded);
  RUN(test_dtls_identity_refused_over_plain);
  RUN(test_binding_plain_only);
  RUN(test_plain_udp_setting);
  RUN(test_identity_refusal_audited);
  RUN(test_first_sight_atomic);
  store_close(g_st);
  cfg_free(g_cfg);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  ASSERT_EQ(system(cmd), 0);
  return TEST_END();
}
