/*
 * test_config_oom.c - cfg_load under allocation failure.
 *
 * The loader's sources (gateway/config*.c) are included with
 * malloc/calloc/strdup redirected to counting wrappers, and cJSON is given
 * the same allocator through its hooks.  The
 * test loads one full configuration again and again, failing the 1st, 2nd,
 * 3rd ... allocation, until a load succeeds.  Every failed load must return
 * -1 with a message and no config; ASan's leak check at exit catches anything
 * a failure path forgot to free.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static long g_alloc_count;
static long g_fail_at = -1;

static bool fail_now(void) { return g_alloc_count++ == g_fail_at; }

static void *t_malloc(size_t n) { return fail_now() ? NULL : malloc(n); }
static void *t_calloc(size_t n, size_t m) { return fail_now() ? NULL : calloc(n, m); }
static char *t_strdup(const char *s) { return fail_now() ? NULL : strdup(s); }

/* The system headers above are already in (every one the loader's sources
 * include), so these only affect the loader.  Its files define the same
 * symbols as fleetgw_config's, so the linker takes none of those. */
#undef strdup
#define malloc(n) t_malloc(n)
#define calloc(n, m) t_calloc(n, m)
#define strdup(s) t_strdup(s)
#include "../../../gateway/config.c"
#include "../../../gateway/config_keys.c"
#include "../../../gateway/config_rules.c"
#include "../../../gateway/config_walk.c"
#undef malloc
#undef calloc
#undef strdup

#include "test.h"

static void write_file(char *path, size_t cap, const char *content)
{
  int fd;
  snprintf(path, cap, "/tmp/fleetgw-test-XXXXXX");
  fd = mkstemp(path);
  ASSERT_TRUE(fd >= 0);
  if (fd < 0)
    return;
  ASSERT_EQ(write(fd, content, strlen(content)), (long long)strlen(content));
  close(fd);
}

static void test_every_allocation_failure(void)
{
  cJSON_Hooks hooks = {.malloc_fn = t_malloc, .free_fn = free};
  char ca[64], cfgpath[64], json[4096], err[512];
  struct gw_config *cfg;
  long n;
  int rc = -1;

  write_file(ca, sizeof ca, "pem");
  snprintf(json, sizeof json,
           "{\"log_level\": \"warn\", \"lan\": {\"bind\": \"::\", "
           "\"advertise\": {\"address\": \"127.0.0.1\"}, "
           "\"predefined_topics\": {\"1\": \"a\", \"2\": \"b/c\"}}, "
           "\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"alpn\": \"x\", "
           "\"client_id_template\": \"{gateway_id}-{client_id}\", \"username\": \"u\", "
           "\"password_env\": \"FLEETGW_OOM_PW\", \"qos_minus1_client_id\": \"q\"}, "
           "\"web\": {\"admin_token_env\": \"FLEETGW_OOM_TOKEN\", "
           "\"read_token_env\": \"FLEETGW_OOM_TOKEN\"}, "
           "\"admission\": {\"allowlist\": [\"a*\", \"b\"], \"converters\": [\"::1\"]}, "
           "\"provisioning\": {\"backend\": \"aws\", \"aws\": {\"claim_cert_file\": \"%s\", "
           "\"claim_key_file\": \"%s\", \"template_name\": \"t\", "
           "\"parameters\": {\"GatewayId\": \"1\", \"Site\": \"x\"}}}}",
           ca, ca, ca);
  write_file(cfgpath, sizeof cfgpath, json);
  setenv("FLEETGW_OOM_PW", "pw", 1);
  setenv("FLEETGW_OOM_TOKEN", "0123456789abcdef", 1);
  cJSON_InitHooks(&hooks);

  for (n = 0; n < 10000; n++) {
    g_alloc_count = 0;
    g_fail_at = n;
    cfg = (struct gw_config *)1;
    err[0] = '\0';
    rc = cfg_load(cfgpath, &cfg, err, sizeof err);
    if (rc == 0)
      break;
    ASSERT_EQ(rc, -1);
    ASSERT_TRUE(cfg == NULL);
    ASSERT_TRUE(strncmp(err, cfgpath, strlen(cfgpath)) == 0);
  }
  g_fail_at = -1;
  cJSON_InitHooks(NULL);

  /* The loop must end in a successful load, after failing each of the
   * (several dozen) allocations a full file needs. */
  ASSERT_EQ(rc, 0);
  ASSERT_TRUE(n > 40);
  if (rc == 0) {
    ASSERT_STR_EQ(cfg->upstream.password, "pw");
    ASSERT_EQ(cfg->lan.n_predefined, 2);
    ASSERT_STR_EQ(cfg->web.read_token, "0123456789abcdef");
    ASSERT_EQ(cfg->admission.n_allowlist, 2);
    ASSERT_EQ(cfg->admission.n_converters, 1);
    ASSERT_EQ(cfg->provisioning.aws.n_params, 2);
    cfg_free(cfg);
  }
  unsetenv("FLEETGW_OOM_PW");
  unsetenv("FLEETGW_OOM_TOKEN");
  unlink(cfgpath);
  unlink(ca);
}

int main(void)
{
  RUN(test_every_allocation_failure);
  return TEST_END();
}
