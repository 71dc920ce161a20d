/*
 * test_config_secret.c - cfg_free() wipes every secret with secret_free().
 *
 * config.c (where cfg_free() is) is included with its secret_free() calls
 * routed to a recorder, which notes each string before handing it to the
 * real secret_free(); the other parts of the loader come from the library.  A
 * configuration with an upstream password and both web tokens is loaded and
 * freed; the recorder must have seen exactly those three values.  (ASan's
 * leak check covers the rest of what cfg_free() frees.)
 */
#include "secret.h"

static void t_secret_free(char *s);

/* secret.h is already in, so this only redirects config.c's calls. */
#define secret_free(s) t_secret_free(s)
#include "../../../gateway/config.c"
#undef secret_free

#include "test.h"

static char g_seen[8][64];
static int g_n_seen;

static void t_secret_free(char *s)
{
  if (s && g_n_seen < 8)
    snprintf(g_seen[g_n_seen++], sizeof g_seen[0], "%s", s);
  secret_free(s);
}

static bool seen(const char *value)
{
  for (int i = 0; i < g_n_seen; i++)
    if (strcmp(g_seen[i], value) == 0)
      return true;
  return false;
}

static void test_secrets_wiped(void)
{
  static const char json[] =
      "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"username\": \"u\", "
      "\"password_env\": \"FLEETGW_SECRET_PW\"}, "
      "\"web\": {\"admin_token_env\": \"FLEETGW_SECRET_ADMIN\", "
      "\"read_token_env\": \"FLEETGW_SECRET_READ\"}}";
  char path[] = "/tmp/fleetgw-test-XXXXXX", err[512] = "";
  struct gw_config *cfg = NULL;
  int fd = mkstemp(path);

  ASSERT_TRUE(fd >= 0);
  if (fd < 0)
    return;
  ASSERT_EQ(write(fd, json, sizeof json - 1), (long long)(sizeof json - 1));
  close(fd);
  setenv("FLEETGW_SECRET_PW", "the-password", 1);
  setenv("FLEETGW_SECRET_ADMIN", "admin-token-0123456789", 1);
  setenv("FLEETGW_SECRET_READ", "read-token-0123456789", 1);

  ASSERT_EQ(cfg_load(path, &cfg, err, sizeof err), 0);
  if (!cfg)
    fprintf(stderr, "  message was: %s\n", err);
  g_n_seen = 0;
  cfg_free(cfg);
  ASSERT_EQ(g_n_seen, 3);
  ASSERT_TRUE(seen("the-password"));
  ASSERT_TRUE(seen("admin-token-0123456789"));
  ASSERT_TRUE(seen("read-token-0123456789"));

  unsetenv("FLEETGW_SECRET_PW");
  unsetenv("FLEETGW_SECRET_ADMIN");
  unsetenv("FLEETGW_SECRET_READ");
  unlink(path);
}

int main(void)
{
  RUN(test_secrets_wiped);
  return TEST_END();
}
