/*
 * config_rules.c - what the configuration's values must be: the checks the
 * key tables name for single values (addresses, files, templates, names),
 * the defaults that depend on other keys, the rules that involve several
 * keys (host required, CA required with TLS, certificate pairing, the
 * secrets named by variables, the token files' modes), and cfg_warnings()
 * for settings that are valid but unsafe.
 */
#include "config_int.h"

#include "provisioning.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- value checks (the str_check_fn of the key tables) ------------------- */

bool cfgi_check_nonempty(const char *s, const char **why)
{
  (void)why;
  /* An MQTT UTF-8 string is at most 65535 bytes (MQTT 3.1.1 §1.5.3). */
  return s[0] != '\0' && strlen(s) <= 65535;
}

bool cfgi_check_host(const char *s, const char **why)
{
  size_t n = strlen(s);
  (void)why;
  if (n == 0 || n > 253) /* RFC 1035 limit on a DNS name */
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f || c == '/')
      return false;
  }
  return true;
}

bool cfgi_check_ip(const char *s, const char **why)
{
  unsigned char addr[16];
  (void)why;
  return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

/* True when path s exists, is (or is not, as want_dir says) a directory and
 * this process may access it as mode (access(2)); otherwise *why says why. */
static bool check_path(const char *s, bool want_dir, int mode, const char **why)
{
  struct stat st;
  if (s[0] == '\0')
    return false;
  if (stat(s, &st) != 0) {
    *why = strerror(errno);
    return false;
  }
  if (S_ISDIR(st.st_mode) != want_dir) {
    *why = want_dir ? "not a directory" : "is a directory";
    return false;
  }
  if (access(s, mode) != 0) {
    *why = strerror(errno);
    return false;
  }
  return true;
}

bool cfgi_check_readable_file(const char *s, const char **why)
{
  return check_path(s, false, R_OK, why);
}

bool cfgi_check_dir(const char *s, const char **why)
{
  /* Per-leaf files are opened by name, so the directory must be searchable. */
  return check_path(s, true, R_OK | X_OK, why);
}

bool cfgi_check_template(const char *s, const char **why)
{
  bool has_client_id = false;
  while (*s) {
    if (strncmp(s, PH_CLIENT_ID, sizeof PH_CLIENT_ID - 1) == 0) {
      has_client_id = true;
      s += sizeof PH_CLIENT_ID - 1;
    } else if (strncmp(s, PH_GATEWAY_ID, sizeof PH_GATEWAY_ID - 1) == 0) {
      s += sizeof PH_GATEWAY_ID - 1;
    } else if (*s == '{' || *s == '}') {
      *why = "unknown placeholder or stray brace";
      return false;
    } else {
      s++;
    }
  }
  if (!has_client_id)
    *why = "no {client_id}";
  return has_client_id;
}

bool cfgi_check_env_name(const char *s, const char **why)
{
  (void)why;
  if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
    return false;
  for (const char *p = s + 1; *p; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
          *p == '_'))
      return false;
  return true;
}

bool cfgi_check_alpn(const char *s, const char **why)
{
  size_t n = strlen(s);
  (void)why;
  /* An ALPN protocol id is 1..255 bytes on the wire (RFC 7301 §3.1). */
  if (n == 0 || n > 255)
    return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
      return false;
  return true;
}

/* A prefix for claim client ids: printable, no spaces, only {gateway_id}. */
bool cfgi_check_claim_prefix(const char *s, const char **why)
{
  (void)why;
  for (const char *p = s; *p; p++) {
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
      return false;
    if (*p == '{') {
      if (strncmp(p, PH_GATEWAY_ID, sizeof PH_GATEWAY_ID - 1) != 0)
        return false;
      p += sizeof PH_GATEWAY_ID - 2;
    } else if (*p == '}') {
      return false;
    }
  }
  return s[0] != '\0';
}

bool cfgi_check_template_name(const char *s, const char **why)
{
  (void)why;
  return prov_template_name_ok(s) != 0;
}

/* ---- defaults and cross-key rules -------------------------------------- */

/* The defaults that depend on other keys, so they can only be settled once
 * the whole file has been read.  Their table entries hold "not given" (port
 * 0, which the file cannot set; key_file NULL) and a doc_default that tells
 * the README what they become. */
int cfgi_derive_defaults(const struct loader *ld)
{
  struct gw_config *cfg = ld->cfg;

  if (cfg->upstream.port == 0)
    cfg->upstream.port = cfg->upstream.tls ? 8883 : 1883;
  if (!cfg->registry.key_file) {
    size_t n = strlen(cfg->registry.path) + 5;
    cfg->registry.key_file = malloc(n);
    if (!cfg->registry.key_file)
      return cfgi_fail_oom(ld);
    snprintf(cfg->registry.key_file, n, "%s.key", cfg->registry.path);
  }
  return 0;
}

static int fail_missing(const struct loader *ld, const char *key, const char *when,
                        const char *what)
{
  return cfgi_fail(ld, key, "required key missing%s (expected %s)", when, what);
}

/* The broker: its host, its CA with TLS, the certificate pairing, the
 * password from the environment. */
static int upstream_rules(const struct loader *ld)
{
  struct gw_config *cfg = ld->cfg;
  int rc = 0;

  if (!cfg->upstream.host)
    rc = fail_missing(ld, "upstream.host", "", WHAT_HOST);
  if (cfg->upstream.tls && !cfg->upstream.ca_file)
    rc = fail_missing(ld, "upstream.ca_file", " when upstream.tls is true", WHAT_FILE);

  /* One certificate for every leaf, or one per leaf from a directory. */
  if (cfg->upstream.cert_dir && cfg->upstream.cert_file)
    rc = cfgi_fail(ld, "upstream.cert_dir",
                   "expected either upstream.cert_dir or upstream.cert_file, not both");
  if (cfg->upstream.cert_dir && cfg->upstream.key_file)
    rc = cfgi_fail(ld, "upstream.key_file",
                   "expected no upstream.key_file with upstream.cert_dir (keys are "
                   "<dir>/<ClientId>.key)");
  if (cfg->upstream.cert_file && !cfg->upstream.key_file)
    rc = fail_missing(ld, "upstream.key_file", " when upstream.cert_file is set", WHAT_FILE);
  if (cfg->upstream.key_file && !cfg->upstream.cert_file)
    rc = fail_missing(ld, "upstream.cert_file", " when upstream.key_file is set", WHAT_FILE);

  if (cfg->upstream.password_env) {
    const char *pw = getenv(cfg->upstream.password_env);
    if (!pw)
      return cfgi_fail(ld, "upstream.password_env",
                       "expected the name of a set environment variable, got \"%s\" (not set)",
                       cfg->upstream.password_env);
    /* MQTT 3.1.1 allows a password only together with a user name
     * (MQTT-3.1.2-22). */
    if (!cfg->upstream.username)
      return fail_missing(ld, "upstream.username", " when upstream.password_env is set",
                          "a non-empty string");
    cfg->upstream.password = strdup(pw);
    if (!cfg->upstream.password)
      return cfgi_fail_oom(ld);
  }
  return rc;
}

/* *dst = the token in the variable name (the value of key), when name is set;
 * a token has at least 16 characters. */
static int token_from_env(const struct loader *ld, const char *key, const char *name,
                          char **dst)
{
  const char *t;

  if (!name)
    return 0;
  t = getenv(name);
  if (!t || strlen(t) < 16)
    return cfgi_fail(ld, key,
                     "expected the name of a set environment variable holding a token of at "
                     "least 16 characters, got \"%s\"%s",
                     name, t ? " (too short)" : " (not set)");
  *dst = strdup(t);
  return *dst ? 0 : cfgi_fail_oom(ld);
}

static int web_rules(const struct loader *ld)
{
  struct gw_config *cfg = ld->cfg;

  int rc = 0;

  if ((cfg->web.tls_cert_file == NULL) != (cfg->web.tls_key_file == NULL))
    rc = fail_missing(ld, cfg->web.tls_cert_file ? "web.tls_key_file" : "web.tls_cert_file",
                      " when the other of web.tls_cert_file/web.tls_key_file is set",
                      WHAT_FILE);
  if (token_from_env(ld, "web.admin_token_env", cfg->web.admin_token_env,
                     &cfg->web.admin_token) != 0)
    rc = -1;
  if (!*ld->oom && token_from_env(ld, "web.read_token_env", cfg->web.read_token_env,
                                  &cfg->web.read_token) != 0)
    rc = -1;
  return rc;
}

static int provisioning_rules(const struct loader *ld)
{
  const struct gw_config *cfg = ld->cfg;
  static const char with_aws[] = " with provisioning.backend \"aws\"";

  if (cfg->provisioning.retry_cap_ms < cfg->provisioning.retry_base_ms)
    return cfgi_fail(ld, "provisioning.retry_cap_ms",
                     "expected an integer >= provisioning.retry_base_ms (%lu), got %lu",
                     (unsigned long)cfg->provisioning.retry_base_ms,
                     (unsigned long)cfg->provisioning.retry_cap_ms);
  if (cfg->provisioning.backend == BACKEND_AWS) {
    if (!cfg->upstream.tls)
      return cfgi_fail(ld, "upstream.tls", "expected true%s", with_aws);
    if (!cfg->provisioning.aws.claim_cert_file)
      return fail_missing(ld, "provisioning.aws.claim_cert_file", with_aws, WHAT_FILE);
    if (!cfg->provisioning.aws.claim_key_file)
      return fail_missing(ld, "provisioning.aws.claim_key_file", with_aws, WHAT_FILE);
    if (!cfg->provisioning.aws.template_name)
      return fail_missing(ld, "provisioning.aws.template_name", with_aws,
                          "a provisioning template name");
  }
  /* A new certificate would be due the moment it is issued, and rotated
   * again and again (docs/rotation.md §2). */
  if (cfg->provisioning.backend == BACKEND_LOCAL_CA && cfg->provisioning.rotate_before_days > 0 &&
      cfg->provisioning.rotate_before_days >= cfg->provisioning.local_ca.days)
    return cfgi_fail(ld, "provisioning.rotate_before_days",
                     "expected fewer days than provisioning.local_ca.days (%lu), got %lu: every "
                     "new certificate would be due for rotation at once",
                     (unsigned long)cfg->provisioning.local_ca.days,
                     (unsigned long)cfg->provisioning.rotate_before_days);
  if (cfg->provisioning.backend != BACKEND_NONE &&
      (cfg->upstream.cert_file || cfg->upstream.cert_dir))
    return cfgi_fail(ld, cfg->upstream.cert_file ? "upstream.cert_file" : "upstream.cert_dir",
                     "expected no upstream certificate with a provisioning backend (each leaf "
                     "gets its own)");
  return 0;
}

/* A file that holds a secret must be open to its owner only, the rule the
 * registry's key file follows (docs/architecture.md §3).  A missing file is
 * left to its reader: the admin token file is then created 0600. */
static int check_secret_file(const struct loader *ld, const char *key, const char *path)
{
  struct stat st;

  if (!path || stat(path, &st) != 0 || (st.st_mode & 077) == 0)
    return 0;
  return cfgi_fail(ld, key,
                   "expected a file only its owner may access, got \"%s\" with mode %04o "
                   "(group or others may read the token: chmod 600 %s)",
                   path, (unsigned)(st.st_mode & 07777), path);
}

/* The token files the web API will read: those no variable replaces. */
static int check_token_files(const struct loader *ld)
{
  const struct gw_config *cfg = ld->cfg;

  if (!cfg->web.enabled)
    return 0;
  if (!cfg->web.admin_token_env &&
      check_secret_file(ld, "web.admin_token_file", cfg->web.admin_token_file) != 0)
    return -1;
  if (!cfg->web.read_token_env)
    return check_secret_file(ld, "web.read_token_file", cfg->web.read_token_file);
  return 0;
}

/* The DTLS listener's certificate trio, its port against the plain one's,
 * and a way in for leaves. */
static int lan_rules(const struct loader *ld)
{
  const struct gw_config *cfg = ld->cfg;
  const char *f[3] = {cfg->lan.dtls.cert_file, cfg->lan.dtls.key_file, cfg->lan.dtls.ca_file};
  static const char *const names[3] = {"lan.dtls.cert_file", "lan.dtls.key_file",
                                       "lan.dtls.ca_file"};
  int set = (f[0] != NULL) + (f[1] != NULL) + (f[2] != NULL);

  if (set != 0 && set != 3)
    for (int i = 0; i < 3; i++)
      if (!f[i])
        return fail_missing(ld, names[i],
                            " when another of lan.dtls.cert_file/key_file/ca_file is set "
                            "(certificate mode needs all three)",
                            WHAT_FILE);
  if (cfg->lan.dtls.enabled && cfg->lan.dtls.port == cfg->lan.port)
    return cfgi_fail(ld, "lan.dtls.port", "expected a port other than lan.port (%u)",
                     (unsigned)cfg->lan.port);
  if (cfg->admission.plain_udp == PLAIN_UDP_OFF && !cfg->lan.dtls.enabled)
    return cfgi_fail(ld, "admission.plain_udp",
                     "expected \"allow\" or \"listed\" when lan.dtls.enabled is false (no leaf "
                     "could connect)");
  return 0;
}

/* ---- the files and directories the gateway will create or read --------- */

/* The directory part of path into out ("." for a bare name). */
static void dir_of(const char *path, char *out, size_t cap)
{
  const char *slash = strrchr(path, '/');
  size_t n;

  if (!slash) {
    snprintf(out, cap, ".");
    return;
  }
  n = slash == path ? 1 : (size_t)(slash - path);
  if (n >= cap)
    n = cap - 1;
  memcpy(out, path, n);
  out[n] = '\0';
}

/* A file the gateway creates when it is absent (the registry, its key, a
 * local CA): when it exists it must be a readable and writable (as want_w
 * says) file; when it does not, its directory must exist and be writable. */
static int check_creatable(const struct loader *ld, const char *key, const char *path,
                           bool want_w, const char *what)
{
  char dir[1024];
  struct stat st;

  if (!path)
    return 0;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return cfgi_fail(ld, key, "expected %s, got \"%s\" (is a directory)", what, path);
    if (access(path, want_w ? R_OK | W_OK : R_OK) != 0)
      return cfgi_fail(ld, key, "expected %s, got \"%s\" (%s)", what, path, strerror(errno));
    return 0;
  }
  if (errno != ENOENT)
    return cfgi_fail(ld, key, "expected %s, got \"%s\" (%s)", what, path, strerror(errno));
  dir_of(path, dir, sizeof dir);
  if (stat(dir, &st) != 0)
    return cfgi_fail(ld, key, "expected %s, got \"%s\" (directory %s: %s)", what, path, dir,
                     strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return cfgi_fail(ld, key, "expected %s, got \"%s\" (%s is not a directory)", what, path,
                     dir);
  if (access(dir, W_OK | X_OK) != 0)
    return cfgi_fail(ld, key, "expected %s, got \"%s\" (directory %s: %s)", what, path, dir,
                     strerror(errno));
  return 0;
}

static const char WHAT_STATE_FILE[] =
    "a file in an existing directory this process may write (created when absent)";

/* What fails only when the gateway starts, checked now: the registry's
 * directory, the local CA's files, the dashboard's directory. */
static int path_rules(const struct loader *ld)
{
  const struct gw_config *cfg = ld->cfg;
  char regdir[1024], keydir[1024];
  int rc = 0;

  if (check_creatable(ld, "registry.path", cfg->registry.path, true, WHAT_STATE_FILE) != 0)
    rc = -1;
  /* The key file beside the registry has been checked with it. */
  dir_of(cfg->registry.path, regdir, sizeof regdir);
  dir_of(cfg->registry.key_file, keydir, sizeof keydir);
  if (strcmp(regdir, keydir) != 0 &&
      check_creatable(ld, "registry.key_file", cfg->registry.key_file, false,
                      WHAT_STATE_FILE) != 0)
    rc = -1;

  if (cfg->provisioning.backend == BACKEND_LOCAL_CA) {
    static const char *const keys[2] = {"provisioning.local_ca.cert_file",
                                        "provisioning.local_ca.key_file"};
    const char *files[2] = {cfg->provisioning.local_ca.cert_file,
                            cfg->provisioning.local_ca.key_file};
    for (int i = 0; i < 2; i++) {
      const char *why = NULL;
      if (cfg->provisioning.local_ca.create) {
        if (check_creatable(ld, keys[i], files[i], false, WHAT_STATE_FILE) != 0)
          rc = -1;
      } else if (!cfgi_check_readable_file(files[i], &why)) {
        rc = cfgi_fail(ld, keys[i],
                       "expected a readable file (provisioning.local_ca.create is false), got "
                       "\"%s\" (%s)",
                       files[i], why ? why : "empty");
      }
    }
  }

  /* A dashboard directory the operator names must be there; the default one
   * may be missing (the places next to the binary are tried, and none found
   * is a warning: the API works without the dashboard). */
  if (cfg->web.enabled && strcmp(cfg->web.static_dir, CFG_DEFAULT_STATIC_DIR) != 0) {
    const char *why = NULL;
    if (!cfgi_check_dir(cfg->web.static_dir, &why))
      rc = cfgi_fail(ld, "web.static_dir",
                     "expected a directory holding the dashboard (index.html), got \"%s\" (%s)",
                     cfg->web.static_dir, why ? why : "empty");
  }
  return rc;
}

int cfgi_check_rules(const struct loader *ld)
{
  const struct gw_config *cfg = ld->cfg;
  int rc = 0;

  /* Each group reports what it finds and the next one still runs, so that
   * --check-config names every error at once; out of memory stops. */
  if (upstream_rules(ld) != 0)
    rc = -1;
  if (!*ld->oom && web_rules(ld) != 0)
    rc = -1;
  if (*ld->oom)
    return -1;
  if (provisioning_rules(ld) != 0)
    rc = -1;
  if (lan_rules(ld) != 0)
    rc = -1;
  if (cfg->upstream.backoff_cap_ms < cfg->upstream.backoff_base_ms)
    rc = cfgi_fail(ld, "upstream.backoff_cap_ms",
                   "expected an integer >= upstream.backoff_base_ms (%lu), got %lu",
                   (unsigned long)cfg->upstream.backoff_base_ms,
                   (unsigned long)cfg->upstream.backoff_cap_ms);
  if (path_rules(ld) != 0)
    rc = -1;
  if (check_token_files(ld) != 0)
    rc = -1;
  return rc;
}

/* ---- warnings ----------------------------------------------------------- */

/* 127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z); web.bind is an address
 * literal (cfgi_check_ip), so no name needs resolving. */
static bool is_loopback(const char *addr)
{
  static const unsigned char v6_loopback[16] = {[15] = 1};
  static const unsigned char v4_mapped[12] = {[10] = 0xff, [11] = 0xff};
  unsigned char a[16];

  if (inet_pton(AF_INET, addr, a) == 1)
    return a[0] == 127;
  if (inet_pton(AF_INET6, addr, a) != 1)
    return false;
  return memcmp(a, v6_loopback, 16) == 0 || (memcmp(a, v4_mapped, 12) == 0 && a[12] == 127);
}

static void add_warning(char lines[][CFG_WARNING_LEN], size_t max, size_t *n, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

static void add_warning(char lines[][CFG_WARNING_LEN], size_t max, size_t *n, const char *fmt,
                        ...)
{
  va_list ap;

  if (*n >= max)
    return;
  va_start(ap, fmt);
  vsnprintf(lines[*n], CFG_WARNING_LEN, fmt, ap);
  va_end(ap);
  (*n)++;
}

/* True when every new-identity limit is off (0 = no limit). */
static bool no_new_id_limit(const struct gw_config *cfg)
{
  return cfg->admission.new_ids_per_port == 0 && cfg->admission.new_ids_per_ip == 0 &&
         cfg->admission.new_ids_per_converter == 0 && cfg->admission.new_ids == 0;
}

/* ---- the web files ------------------------------------------------------ */

/* The directory of the running binary into out, or -1. */
static int exe_dir(char *out, size_t cap)
{
  char buf[1024];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  char *slash;

  if (n <= 0)
    return -1;
  buf[n] = '\0';
  slash = strrchr(buf, '/');
  if (!slash)
    return -1;
  *slash = '\0';
  if ((size_t)snprintf(out, cap, "%s", buf) >= cap)
    return -1;
  return 0;
}

/* True when candidate holds what which needs: the dashboard's index.html,
 * or the readable OpenAPI file. */
static bool web_file_ok(enum cfg_web_file which, const char *candidate)
{
  char index[1100];
  const char *why = NULL;

  if (which == CFG_WEB_OPENAPI)
    return cfgi_check_readable_file(candidate, &why);
  if (!cfgi_check_dir(candidate, &why))
    return false;
  if ((size_t)snprintf(index, sizeof index, "%s/index.html", candidate) >= sizeof index)
    return false;
  return cfgi_check_readable_file(index, &why);
}

int cfg_web_path(const struct gw_config *cfg, enum cfg_web_file which, char *out, size_t cap,
                 char *tried, size_t tcap)
{
  static const char *const beside[2][2] = {
      {"/../share/fleetgw/web", "/../web/static"},
      {"/../share/fleetgw/openapi.json", "/../web/openapi.json"},
  };
  const char *value = which == CFG_WEB_STATIC ? cfg->web.static_dir : cfg->web.openapi_file;
  const char *def = which == CFG_WEB_STATIC ? CFG_DEFAULT_STATIC_DIR : CFG_DEFAULT_OPENAPI_FILE;
  char dir[1024], cand[1100];
  size_t used = 0;

  if (!out || cap == 0 || !tried || tcap == 0)
    return -1;
  out[0] = tried[0] = '\0';
  for (int i = 0; i < 3; i++) {
    int k;
    if (i == 0) {
      snprintf(cand, sizeof cand, "%s", value);
    } else {
      /* Only the default is looked for elsewhere: a path the operator
       * wrote is meant. */
      if (strcmp(value, def) != 0 || exe_dir(dir, sizeof dir) != 0)
        break;
      snprintf(cand, sizeof cand, "%s%s", dir, beside[which][i - 1]);
    }
    if (web_file_ok(which, cand)) {
      if ((size_t)snprintf(out, cap, "%s", cand) >= cap)
        return -1;
      return 0;
    }
    k = snprintf(tried + used, tcap - used, "%s%s", used ? ", " : "", cand);
    if (k > 0 && (size_t)k < tcap - used)
      used += (size_t)k;
  }
  return -1;
}

size_t cfg_warnings(const struct gw_config *cfg, char lines[][CFG_WARNING_LEN], size_t max)
{
  size_t n = 0;
  bool is_open;

  if (!cfg || !lines)
    return 0;
  is_open = cfg->admission.policy == POLICY_OPEN;
  if (cfg->web.enabled && !cfg->web.tls_cert_file && !is_loopback(cfg->web.bind))
    add_warning(lines, max, &n,
                "web.bind %s without web.tls_cert_file: API tokens cross the network in clear",
                cfg->web.bind);
  if (is_open && no_new_id_limit(cfg))
    add_warning(lines, max, &n,
                "admission.policy \"open\" with no new-identity limit: any box on the LAN can "
                "mint identities");
  /* The gateway-wide limit is the one a flood from spoofed sources meets: the
   * per-port and per-IP limits do not hold it back. */
  else if (is_open && cfg->provisioning.backend != BACKEND_NONE && cfg->admission.new_ids == 0)
    add_warning(lines, max, &n,
                "admission.policy \"open\" with admission.new_ids 0: boxes on the LAN can have "
                "certificates issued with no gateway-wide limit");
  if (cfg->admission.plain_udp == PLAIN_UDP_LISTED && cfg->admission.n_plain_udp_clients == 0)
    add_warning(lines, max, &n,
                "admission.plain_udp \"listed\" with no admission.plain_udp_clients: plain UDP "
                "is refused to every leaf");
  if (cfg->lan.dtls.enabled && cfg->admission.plain_udp == PLAIN_UDP_ALLOW)
    add_warning(lines, max, &n,
                "lan.dtls.enabled with admission.plain_udp \"allow\": any box can still claim a "
                "ClientId over plain UDP (set \"listed\" or \"off\" once leaves use DTLS)");
  return n;
}
