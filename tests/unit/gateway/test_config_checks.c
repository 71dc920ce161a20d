/*
 * test_config_checks.c - what --check-config catches that used to fail only
 * at run time (the registry's directory, the local CA's files, the dashboard's
 * directory), every error of a file reported (with the cap), the web files
 * looked for next to the binary, and cfg_reload()'s split of changed keys into
 * applied and needing a restart.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "test.h"

#define UP "\"upstream\": {\"host\": \"h\", \"tls\": false}"

static char g_tmp[64];

/* Writes json (a printf format) to a temp file: its name into path. */
static void write_fmt(char *path, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void write_fmt(char *path, size_t cap, const char *fmt, ...)
{
  va_list ap;
  FILE *f;
  int fd;

  snprintf(path, cap, "/tmp/fleetgw-chk-XXXXXX");
  fd = mkstemp(path);
  ASSERT_TRUE(fd >= 0);
  if (fd < 0)
    return;
  f = fdopen(fd, "w");
  ASSERT_TRUE(f != NULL);
  if (!f)
    return;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
}

/* Loads path into errs; returns cfg_load_all's result (config freed). */
static int load_all(const char *path, struct cfg_errors *errs)
{
  struct gw_config *cfg = NULL;
  int rc = cfg_load_all(path, &cfg, errs);
  ASSERT_TRUE(rc == 0 ? cfg != NULL : cfg == NULL);
  cfg_free(cfg);
  return rc;
}

/* True when some line of errs contains both a and b. */
static bool has_error(const struct cfg_errors *errs, const char *a, const char *b)
{
  for (size_t i = 0; i < errs->n; i++)
    if (strstr(errs->line[i], a) && (!b || strstr(errs->line[i], b)))
      return true;
  for (size_t i = 0; i < errs->n; i++)
    fprintf(stderr, "  error %zu: %s\n", i, errs->line[i]);
  fprintf(stderr, "  wanted: %s ... %s\n", a, b ? b : "");
  return false;
}

static void test_registry_directory(void)
{
  struct cfg_errors *errs = calloc(1, sizeof *errs);
  char path[64];

  ASSERT_TRUE(errs != NULL);
  if (!errs)
    return;
  write_fmt(path, sizeof path, "{" UP ", \"registry\": {\"path\": \"/nonexistent-fleetgw/r.db\"}}");
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 1);
  ASSERT_TRUE(has_error(errs, "registry.path: expected a file in an existing directory",
                        "(directory /nonexistent-fleetgw: No such file or directory)"));
  unlink(path);

  /* A path that is a directory. */
  write_fmt(path, sizeof path, "{" UP ", \"registry\": {\"path\": \"%s\"}}", g_tmp);
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_TRUE(has_error(errs, "registry.path:", "(is a directory)"));
  unlink(path);

  /* A key file in another, missing directory is named on its own. */
  write_fmt(path, sizeof path,
            "{" UP ", \"registry\": {\"path\": \"%s/r.db\", \"key_file\": \"/nonexistent-k/r.key\"}}",
            g_tmp);
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 1);
  ASSERT_TRUE(has_error(errs, "registry.key_file:", "/nonexistent-k"));
  unlink(path);

  /* In an existing directory it is fine, existing or not. */
  write_fmt(path, sizeof path, "{" UP ", \"registry\": {\"path\": \"%s/r.db\"}}", g_tmp);
  ASSERT_EQ(load_all(path, errs), 0);
  unlink(path);
  free(errs);
}

static void test_local_ca_files(void)
{
  struct cfg_errors *errs = calloc(1, sizeof *errs);
  char path[64], crt[128], key[128];
  FILE *f;

  ASSERT_TRUE(errs != NULL);
  if (!errs)
    return;
  snprintf(crt, sizeof crt, "%s/ca.crt", g_tmp);
  snprintf(key, sizeof key, "%s/ca.key", g_tmp);
  /* create false: both files must be there; each one missing is named. */
  write_fmt(path, sizeof path,
            "{" UP ", \"provisioning\": {\"backend\": \"local-ca\", \"local_ca\": "
            "{\"create\": false, \"cert_file\": \"%s\", \"key_file\": \"%s\"}}}",
            crt, key);
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 2);
  ASSERT_TRUE(has_error(errs, "provisioning.local_ca.cert_file: expected a readable file "
                              "(provisioning.local_ca.create is false)",
                        crt));
  ASSERT_TRUE(has_error(errs, "provisioning.local_ca.key_file:", key));
  f = fopen(crt, "w");
  ASSERT_TRUE(f != NULL);
  if (f)
    fclose(f);
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 1);
  ASSERT_TRUE(has_error(errs, "provisioning.local_ca.key_file:", "No such file"));
  unlink(crt);
  unlink(path);

  /* create true: they are created, so their directory must exist. */
  write_fmt(path, sizeof path,
            "{" UP ", \"provisioning\": {\"backend\": \"local-ca\", \"local_ca\": "
            "{\"create\": true, \"cert_file\": \"/nonexistent-ca/ca.crt\", \"key_file\": \"%s\"}}}",
            key);
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 1);
  ASSERT_TRUE(has_error(errs, "provisioning.local_ca.cert_file:", "/nonexistent-ca"));
  unlink(path);

  /* Without the local-ca backend the files are not looked at. */
  write_fmt(path, sizeof path,
            "{" UP ", \"provisioning\": {\"local_ca\": {\"create\": false, "
            "\"cert_file\": \"/nonexistent-ca/ca.crt\"}}}");
  ASSERT_EQ(load_all(path, errs), 0);
  unlink(path);
  free(errs);
}

static void test_static_dir(void)
{
  struct cfg_errors *errs = calloc(1, sizeof *errs);
  struct gw_config *cfg = NULL;
  char path[64], out[256], tried[1024], index[128];
  FILE *f;

  ASSERT_TRUE(errs != NULL);
  if (!errs)
    return;
  /* Named by the operator and missing: an error. */
  write_fmt(path, sizeof path, "{" UP ", \"web\": {\"static_dir\": \"/nonexistent-web\"}}");
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_TRUE(has_error(errs, "web.static_dir: expected a directory holding the dashboard",
                        "\"/nonexistent-web\" (No such file or directory)"));
  unlink(path);
  /* Not looked at with the web API off. */
  write_fmt(path, sizeof path,
            "{" UP ", \"web\": {\"enabled\": false, \"static_dir\": \"/nonexistent-web\"}}");
  ASSERT_EQ(load_all(path, errs), 0);
  unlink(path);

  /* Named and there: served from there, with or without index.html. */
  write_fmt(path, sizeof path, "{" UP ", \"web\": {\"static_dir\": \"%s\"}}", g_tmp);
  ASSERT_EQ(cfg_load_all(path, &cfg, errs), 0);
  unlink(path);
  if (cfg) {
    ASSERT_EQ(cfg_web_path(cfg, CFG_WEB_STATIC, out, sizeof out, tried, sizeof tried), -1);
    ASSERT_STR_EQ(tried, g_tmp); /* a named directory is the only place looked at */
    snprintf(index, sizeof index, "%s/index.html", g_tmp);
    f = fopen(index, "w");
    ASSERT_TRUE(f != NULL);
    if (f)
      fclose(f);
    ASSERT_EQ(cfg_web_path(cfg, CFG_WEB_STATIC, out, sizeof out, tried, sizeof tried), 0);
    ASSERT_STR_EQ(out, g_tmp);
    unlink(index);
    cfg_free(cfg);
    cfg = NULL;
  }

  /* The default: when /usr/share/fleetgw/web is absent, the places next to
   * the binary are tried in order, all named when none has the files. */
  write_fmt(path, sizeof path, "{" UP "}");
  ASSERT_EQ(cfg_load_all(path, &cfg, errs), 0);
  unlink(path);
  if (cfg && access("/usr/share/fleetgw/web/index.html", R_OK) != 0) {
    int rc = cfg_web_path(cfg, CFG_WEB_STATIC, out, sizeof out, tried, sizeof tried);
    const char *a = strstr(tried, "/usr/share/fleetgw/web");
    const char *b = strstr(tried, "/../share/fleetgw/web");
    const char *c = strstr(tried, "/../web/static");
    if (rc == 0) {
      ASSERT_TRUE(strstr(out, "/../share/fleetgw/web") || strstr(out, "/../web/static"));
    } else {
      ASSERT_TRUE(a && b && c && a < b && b < c);
    }
  }
  cfg_free(cfg);
  free(errs);
}

/* Every error of a file, one per key, in file order, then the rules; the
 * first is what cfg_load() gives; more than CFG_MAX_ERRORS are counted. */
static void test_all_errors(void)
{
  struct cfg_errors *errs = calloc(1, sizeof *errs);
  char path[64], err[512], big[8192];
  struct gw_config *cfg = NULL;
  size_t n = 0;

  ASSERT_TRUE(errs != NULL);
  if (!errs)
    return;
  write_fmt(path, sizeof path,
            "{\"upstream\": {\"port\": \"x\", \"tls\": true},"
            " \"lan\": {\"bnd\": \"1\", \"port\": 0},"
            " \"log_level\": \"loud\","
            " \"registry\": {\"path\": \"/nonexistent-fleetgw/r.db\"}}");
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 7);
  ASSERT_EQ(errs->dropped, 0);
  ASSERT_TRUE(strstr(errs->line[0], ": upstream.port: expected an integer 1..65535, got \"x\"") !=
              NULL);
  ASSERT_TRUE(strstr(errs->line[1], ": lan.bnd: unknown key (did you mean \"bind\"?)") != NULL);
  ASSERT_TRUE(strstr(errs->line[2], ": lan.port: expected an integer") != NULL);
  ASSERT_TRUE(strstr(errs->line[3], ": log_level: expected one of") != NULL);
  ASSERT_TRUE(strstr(errs->line[4], ": upstream.host: required key missing") != NULL);
  ASSERT_TRUE(strstr(errs->line[5], ": upstream.ca_file: required key missing") != NULL);
  ASSERT_TRUE(strstr(errs->line[6], ": registry.path:") != NULL);
  for (size_t i = 0; i < errs->n; i++) {
    ASSERT_TRUE(strncmp(errs->line[i], path, strlen(path)) == 0);
    ASSERT_TRUE(strchr(errs->line[i], '\n') == NULL);
  }
  /* cfg_load: the first, as before. */
  ASSERT_EQ(cfg_load(path, &cfg, err, sizeof err), -1);
  ASSERT_TRUE(cfg == NULL);
  ASSERT_STR_EQ(err, errs->line[0]);
  unlink(path);

  /* A key whose value was refused is not reported again by a rule that
   * then finds it unset. */
  write_fmt(path, sizeof path, "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"/nonexistent\"}}");
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, 1);
  ASSERT_TRUE(has_error(errs, "upstream.ca_file: expected a readable file", NULL));
  unlink(path);

  /* The cap: 30 unknown keys, 20 kept, 10 counted. */
  n += (size_t)snprintf(big + n, sizeof big - n, "{" UP);
  for (int i = 0; i < 30; i++)
    n += (size_t)snprintf(big + n, sizeof big - n, ", \"zz_unknown_%02d\": 1", i);
  snprintf(big + n, sizeof big - n, "}");
  write_fmt(path, sizeof path, "%s", big);
  ASSERT_EQ(load_all(path, errs), -1);
  ASSERT_EQ(errs->n, CFG_MAX_ERRORS);
  ASSERT_EQ(errs->dropped, 30 - CFG_MAX_ERRORS);
  ASSERT_TRUE(strstr(errs->line[0], "zz_unknown_00: unknown key") != NULL);
  unlink(path);
  free(errs);
}

/* cfg_reload: live keys move into the running config, the others are named. */
static void test_reload(void)
{
  struct cfg_errors *errs = calloc(1, sizeof *errs);
  struct gw_config *live = NULL, *fresh = NULL;
  char path[64], applied[512], restart[512];

  ASSERT_TRUE(errs != NULL);
  if (!errs)
    return;
  ASSERT_TRUE(cfg_key_live("log_level"));
  ASSERT_TRUE(cfg_key_live("admission.policy"));
  ASSERT_TRUE(cfg_key_live("web.admin_token_file"));
  ASSERT_TRUE(!cfg_key_live("lan.port"));
  ASSERT_TRUE(cfg_key_live("admission.new_ids"));
  ASSERT_TRUE(!cfg_key_live("admission.sources_tracked"));
  ASSERT_TRUE(!cfg_key_live(NULL));

  write_fmt(path, sizeof path,
            "{" UP ", \"log_level\": \"info\", \"lan\": {\"port\": 1884},"
            " \"admission\": {\"policy\": \"open\", \"allowlist\": [\"a\"]}}");
  ASSERT_EQ(cfg_load_all(path, &live, errs), 0);
  unlink(path);
  write_fmt(path, sizeof path,
            "{" UP ", \"log_level\": \"debug\", \"lan\": {\"port\": 1999},"
            " \"admission\": {\"policy\": \"allowlist\", \"allowlist\": [\"a\", \"b*\"],"
            " \"sources_tracked\": 70}, \"outbox\": {\"rate_total\": 50}}");
  ASSERT_EQ(cfg_load_all(path, &fresh, errs), 0);
  unlink(path);
  if (live && fresh) {
    ASSERT_EQ(cfg_reload(live, fresh, applied, sizeof applied, restart, sizeof restart), 4);
    ASSERT_STR_EQ(applied, "log_level, outbox.rate_total, admission.policy, admission.allowlist");
    ASSERT_STR_EQ(restart, "lan.port, admission.sources_tracked");
    ASSERT_EQ(live->log_level, 3);
    ASSERT_EQ(live->admission.policy, POLICY_ALLOWLIST);
    ASSERT_EQ(live->admission.n_allowlist, 2);
    if (live->admission.n_allowlist == 2)
      ASSERT_STR_EQ(live->admission.allowlist[1], "b*");
    ASSERT_EQ(live->outbox.rate_total, 50);
    ASSERT_EQ(live->lan.port, 1884);      /* needs a restart: unchanged */
    ASSERT_EQ(live->admission.sources_tracked, 4096);
    ASSERT_EQ(fresh->admission.n_allowlist, 1); /* the old values, freed with it */
    ASSERT_EQ(fresh->log_level, 2);
    /* The same file again: nothing changes. */
    ASSERT_EQ(cfg_reload(live, live, applied, sizeof applied, restart, sizeof restart), 0);
    ASSERT_STR_EQ(applied, "");
    ASSERT_STR_EQ(restart, "");
  }
  cfg_free(live);
  cfg_free(fresh);
  free(errs);
}

int main(void)
{
  snprintf(g_tmp, sizeof g_tmp, "/tmp/fleetgw-chkdir-XXXXXX");
  ASSERT_TRUE(mkdtemp(g_tmp) != NULL);
  RUN(test_registry_directory);
  RUN(test_local_ca_files);
  RUN(test_static_dir);
  RUN(test_all_errors);
  RUN(test_reload);
  {
    char p[128];
    snprintf(p, sizeof p, "%s/r.db", g_tmp);
    unlink(p);
  }
  rmdir(g_tmp);
  return TEST_END();
}
