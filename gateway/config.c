/*
 * config.c - load and validate the gateway's JSON configuration.
 *
 * The loader is table-driven: every object level of the file has a table of
 * its known keys (name, kind, where the value goes in struct gw_config, its
 * range or validator, its default).  One generic walker applies a table to a
 * JSON object, so "unknown key", "duplicate key" and "wrong type" are
 * reported the same way at every level; other walks over the same tables set
 * the defaults, free the config and list the keys for README.md's check.
 * Defaults that depend on other keys and checks that involve several keys
 * (host required, CA required with TLS, certificate pairing, the password
 * variable) run once the whole file has been read.
 *
 * Every error is one line: "<file>: <key path>: expected <what>, got <what>".
 */
#include "config.h"

#include "log.h"
#include "provisioning.h"
#include "secret.h"
#include "topic.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A configuration file is a few kilobytes; anything near this size is a
 * wrong path (a log, a core file), and reading it whole would waste memory. */
#define MAX_FILE_BYTES (1024u * 1024u)

/* Long enough for any real key path; longer (hostile) keys are truncated in
 * messages only. */
#define KEY_PATH_CAP 256

enum key_kind {
  K_UINT,       /* integer in [min, max], stored in a 1-, 2-, 4- or 8-byte field */
  K_BOOL,       /* true / false */
  K_STR,        /* string, optionally validated; copied */
  K_OBJECT,     /* nested table */
  K_PREDEFINED, /* lan.predefined_topics: {"<id>": "<topic>", ...} */
  K_ENUM,       /* one of .choices; its index stored in an int (or a bool) */
  K_STRLIST,    /* admission.allowlist, admission.converters: ["entry", ...] */
  K_PARAMS,     /* provisioning.aws.parameters: {"name": "value", ...} */
};

/* A string validator returns true when s is acceptable.  It may set *why to a
 * short reason (e.g. strerror) that is appended to the "got" part. */
typedef bool (*str_check_fn)(const char *s, const char **why);

/* One key of the file.  The tables of these are the only list of the keys
 * and their defaults: loading, the defaults, cfg_free() and the README check
 * (cfg_key_at()) all walk them, so a new key is one line here. */
struct key_spec {
  const char *name;
  enum key_kind kind;
  size_t off;                  /* offset of the destination in struct gw_config */
  size_t size;                 /* its size, for K_UINT and K_ENUM */
  size_t count_off;            /* K_PREDEFINED, K_STRLIST, K_PARAMS: offset of the size_t count */
  uint64_t min, max;           /* K_UINT range */
  uint64_t def;                /* default: K_UINT value, K_BOOL 0/1, K_ENUM index */
  const char *def_str;         /* K_STR default; NULL = not set */
  const char *doc_default;     /* the README's default where another key decides it */
  str_check_fn check;          /* K_STR, K_STRLIST (each entry): NULL accepts any
                                  non-empty string */
  const char *expect;          /* K_STR, K_STRLIST: what a valid value looks like */
  bool nullable;               /* K_STR: JSON null means "not set" */
  bool secret;                 /* K_STR: wiped with secret_free() before it is freed */
  const struct key_spec *sub;  /* K_OBJECT */
  size_t n_sub;
  const char *const *choices;  /* K_ENUM: NULL-terminated */
};

struct loader {
  const char *file;
  char *err;
  size_t errlen;
  struct gw_config *cfg;
};

/* ---- error reporting ---------------------------------------------------- */

static int fail(const struct loader *ld, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(const struct loader *ld, const char *key, const char *fmt, ...)
{
  va_list ap;
  int n;

  if (!ld->err || ld->errlen == 0)
    return -1;
  if (key)
    n = snprintf(ld->err, ld->errlen, "%s: %s: ", ld->file, key);
  else
    n = snprintf(ld->err, ld->errlen, "%s: ", ld->file);
  if (n >= 0 && (size_t)n < ld->errlen) {
    va_start(ap, fmt);
    vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  /* The message must stay one line whatever the file or key contained. */
  for (char *p = ld->err; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = '?';
  return -1;
}

/* Writes s quoted, control characters replaced and long strings cut. */
static void describe_str(const char *s, char *buf, size_t cap)
{
  enum { SHOWN = 48 };
  size_t n = 0, i;

  if (cap < 8) {
    buf[0] = '\0';
    return;
  }
  buf[n++] = '"';
  for (i = 0; s[i] && i < SHOWN && n + 5 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    buf[n++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
  buf[n++] = '"';
  if (s[i] && n + 4 < cap) {
    memcpy(buf + n, "...", 3);
    n += 3;
  }
  buf[n] = '\0';
}

/* Writes a short, printable rendering of a JSON value for "got ..." parts. */
static void describe(const cJSON *v, char *buf, size_t cap)
{
  if (!v) {
    snprintf(buf, cap, "nothing");
  } else if (cJSON_IsString(v)) {
    describe_str(v->valuestring, buf, cap);
  } else if (cJSON_IsNumber(v)) {
    double d = v->valuedouble;
    if (d == (double)(long long)d && d > -1e15 && d < 1e15)
      snprintf(buf, cap, "%lld", (long long)d);
    else
      snprintf(buf, cap, "%g", d);
  } else if (cJSON_IsTrue(v)) {
    snprintf(buf, cap, "true");
  } else if (cJSON_IsFalse(v)) {
    snprintf(buf, cap, "false");
  } else if (cJSON_IsNull(v)) {
    snprintf(buf, cap, "null");
  } else if (cJSON_IsArray(v)) {
    snprintf(buf, cap, "an array");
  } else if (cJSON_IsObject(v)) {
    snprintf(buf, cap, "an object");
  } else {
    snprintf(buf, cap, "an invalid value");
  }
}

static int fail_expected(const struct loader *ld, const char *key, const char *what,
                         const cJSON *got, const char *why)
{
  char g[80];
  describe(got, g, sizeof g);
  if (why)
    return fail(ld, key, "expected %s, got %s (%s)", what, g, why);
  return fail(ld, key, "expected %s, got %s", what, g);
}

static int fail_oom(const struct loader *ld)
{
  return fail(ld, NULL, "out of memory while loading the configuration");
}

/* out = prefix.key (or key at the top level), truncated to fit: a cut-off
 * path still identifies the key well enough, and hostile keys can be long.
 * Copied by hand because gcc -O2 flags every possibly-truncating snprintf. */
static void join_path(char *out, size_t cap, const char *prefix, const char *key)
{
  size_t n = 0;
  const char *parts[3] = {prefix, prefix[0] ? "." : "", key};

  for (size_t p = 0; p < 3; p++)
    for (const char *c = parts[p]; *c && n + 1 < cap; c++)
      out[n++] = *c;
  out[n] = '\0';
}

/* ---- string validators -------------------------------------------------- */

static bool check_nonempty(const char *s, const char **why)
{
  (void)why;
  /* An MQTT UTF-8 string is at most 65535 bytes (MQTT 3.1.1 §1.5.3). */
  return s[0] != '\0' && strlen(s) <= 65535;
}

static bool check_host(const char *s, const char **why)
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

static bool check_ip(const char *s, const char **why)
{
  unsigned char addr[16];
  (void)why;
  return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

static bool check_readable_file(const char *s, const char **why)
{
  struct stat st;
  if (s[0] == '\0')
    return false;
  if (stat(s, &st) != 0) {
    *why = strerror(errno);
    return false;
  }
  if (S_ISDIR(st.st_mode)) {
    *why = "is a directory";
    return false;
  }
  if (access(s, R_OK) != 0) {
    *why = strerror(errno);
    return false;
  }
  return true;
}

static bool check_dir(const char *s, const char **why)
{
  struct stat st;
  if (s[0] == '\0')
    return false;
  if (stat(s, &st) != 0) {
    *why = strerror(errno);
    return false;
  }
  if (!S_ISDIR(st.st_mode)) {
    *why = "not a directory";
    return false;
  }
  /* Per-leaf files are opened by name, so the directory must be searchable. */
  if (access(s, R_OK | X_OK) != 0) {
    *why = strerror(errno);
    return false;
  }
  return true;
}

static const char PH_CLIENT_ID[] = "{client_id}";
static const char PH_GATEWAY_ID[] = "{gateway_id}";

static bool check_template(const char *s, const char **why)
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

static bool check_env_name(const char *s, const char **why)
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

static bool check_alpn(const char *s, const char **why)
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
static bool check_claim_prefix(const char *s, const char **why)
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

static bool check_template_name(const char *s, const char **why)
{
  (void)why;
  return prov_template_name_ok(s) != 0;
}

/* In enum log_level order, so that the index is the level; log_level_parse()
 * accepts exactly these names. */
static const char *const log_level_names[] = {"error", "warn", "info", "debug", "trace", NULL};
static const char *const policy_names[] = {"open", "allowlist", "approve", NULL};
static const char *const backend_names[] = {"none", "local-ca", "aws", NULL};
static const char *const sync_names[] = {"off", "normal", "full", NULL};
static const char *const method_names[] = {"csr", "create-keys", NULL};

/* ---- key tables --------------------------------------------------------- */

/* Each macro takes the key's default last.  A K_STR default of NULL means
 * "not set"; a non-nullable K_STR without a default is a required key. */
#define FIELD(f) .off = offsetof(struct gw_config, f), .size = sizeof(((struct gw_config *)0)->f)
#define UINT_KEY(n, f, lo, hi, d) \
  {.name = n, .kind = K_UINT, FIELD(f), .min = lo, .max = hi, .def = d}
#define BOOL_KEY(n, f, d) {.name = n, .kind = K_BOOL, FIELD(f), .def = d}
#define STR_KEY(n, f, fn, what, null_ok, d)                                                   \
  {.name = n, .kind = K_STR, FIELD(f), .check = fn, .expect = what, .nullable = null_ok,     \
   .def_str = d}
#define ENUM_KEY(n, f, list, d) {.name = n, .kind = K_ENUM, FIELD(f), .choices = list, .def = d}
#define LIST_KEY(n, k, f, count) \
  {.name = n, .kind = k, FIELD(f), .count_off = offsetof(struct gw_config, count)}
/* An array of strings; fn checks each entry (NULL: non-empty, at most 255). */
#define STRLIST_KEY(n, f, count, fn, what)                                                 \
  {.name = n, .kind = K_STRLIST, FIELD(f), .count_off = offsetof(struct gw_config, count), \
   .check = fn, .expect = what}
#define OBJ_KEY(n, table) \
  {.name = n, .kind = K_OBJECT, .sub = table, .n_sub = sizeof table / sizeof table[0]}

/* The largest integer a JSON number (a double) holds exactly: 2^53 - 1. */
#define JSON_INT_MAX 9007199254740991ull

#define WHAT_IP "an IPv4 or IPv6 address literal"
#define WHAT_FILE "a readable file"
#define WHAT_HOST "a host name or IP address"
#define WHAT_TEMPLATE \
  "a template containing {client_id} and no placeholder other than {client_id} and {gateway_id}"

static const struct key_spec advertise_keys[] = {
    STR_KEY("address", lan.advertise_address, check_ip, WHAT_IP, true, NULL),
    UINT_KEY("port", lan.advertise_port, 1, 65535, 1884),
    /* ADVERTISE carries the interval in a 2-byte Duration field (§5.4.2); the
     * spec recommends more than 15 minutes (T_ADV). */
    UINT_KEY("interval_s", lan.advertise_interval_s, 1, 65535, 900),
};

static const struct key_spec lan_keys[] = {
    STR_KEY("bind", lan.bind, check_ip, WHAT_IP, false, "0.0.0.0"),
    UINT_KEY("port", lan.port, 1, 65535, 1884),
    UINT_KEY("recv_buffer_bytes", lan.recv_buffer_bytes, 4096, 1073741824, 4194304),
    /* MQTT-SN §5.3.1 allows 1..23 characters. */
    UINT_KEY("max_client_id_len", lan.max_client_id_len, 1, 255, 23),
    UINT_KEY("max_leaves", lan.max_leaves, 1, 1000000, 10000),
    /* The spec suggests T_retry 10-15 s and N_retry 3-5. */
    UINT_KEY("t_retry_ms", lan.t_retry_ms, 100, 600000, 10000),
    UINT_KEY("n_retry", lan.n_retry, 0, 20, 3),
    UINT_KEY("connack_timeout_ms", lan.connack_timeout_ms, 100, 600000, 10000),
    UINT_KEY("queue_max", lan.queue_max, 1, 1000000, 100),
    /* Duration 0 is "no keep-alive" (§5.4.4), which would let a silent
     * peer hold its record and its upstream for ever. */
    UINT_KEY("max_keepalive_s", lan.max_keepalive_s, 1, 65535, 3600),
    UINT_KEY("max_subscriptions", lan.max_subscriptions, 1, 100000, 64),
    UINT_KEY("max_subscription_bytes", lan.max_subscription_bytes, 64, 16777216, 16384),
    OBJ_KEY("advertise", advertise_keys),
    LIST_KEY("predefined_topics", K_PREDEFINED, lan.predefined, lan.n_predefined),
};

static const struct key_spec upstream_keys[] = {
    STR_KEY("host", upstream.host, check_host, WHAT_HOST, false, NULL),
    /* 0 is "not given" (the file cannot say 0): derive_defaults() picks the
     * port from upstream.tls. */
    {.name = "port", .kind = K_UINT, FIELD(upstream.port), .min = 1, .max = 65535, .def = 0,
     .doc_default = "`8883` with TLS, `1883` without"},
    BOOL_KEY("tls", upstream.tls, true),
    STR_KEY("ca_file", upstream.ca_file, check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("cert_file", upstream.cert_file, check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("key_file", upstream.key_file, check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("cert_dir", upstream.cert_dir, check_dir, "a readable directory", true, NULL),
    STR_KEY("alpn", upstream.alpn, check_alpn, "an ALPN protocol id of 1..255 printable bytes",
            true, NULL),
    STR_KEY("client_id_template", upstream.client_id_template, check_template, WHAT_TEMPLATE,
            false, PH_CLIENT_ID),
    STR_KEY("username", upstream.username, check_nonempty, "a non-empty string", true, NULL),
    STR_KEY("password_env", upstream.password_env, check_env_name,
            "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", true, NULL),
    UINT_KEY("keepalive_s", upstream.keepalive_s, 30, 1200, 60),
    BOOL_KEY("clean_session", upstream.clean_session, true),
    UINT_KEY("connect_timeout_ms", upstream.connect_timeout_ms, 100, 600000, 10000),
    UINT_KEY("backoff_base_ms", upstream.backoff_base_ms, 1, 3600000, 1000),
    UINT_KEY("backoff_cap_ms", upstream.backoff_cap_ms, 1, 86400000, 60000),
    UINT_KEY("give_up_after_s", upstream.give_up_after_s, 0, 86400, 120),
    UINT_KEY("max_queue", upstream.max_queue, 1, 1000000, 1000),
    /* 268435455 is the largest MQTT Remaining Length, plus 5 header bytes.
     * The default is AWS IoT's 128 KiB payload limit plus 1 KiB for the
     * header and topic. */
    UINT_KEY("max_packet", upstream.max_packet, 1024, 268435460, 131072 + 1024),
    UINT_KEY("max_connecting", upstream.max_connecting, 0, 100000, 64),
    /* AWS IoT: 500 CONNECTs/s per account (PROTOCOLS.md A.9). */
    UINT_KEY("connect_rate_per_s", upstream.connect_rate_per_s, 0, 100000, 500),
    UINT_KEY("max_refusals", upstream.max_refusals, 1, 100, 3),
    STR_KEY("qos_minus1_client_id", upstream.qos_m1_client_id, check_nonempty,
            "a non-empty string", true, NULL),
};

static const struct key_spec web_keys[] = {
    BOOL_KEY("enabled", web.enabled, true),
    STR_KEY("bind", web.bind, check_ip, WHAT_IP, false, "127.0.0.1"),
    UINT_KEY("port", web.port, 0, 65535, 8080),
    STR_KEY("admin_token_file", web.admin_token_file, check_nonempty, "a file path", true,
            "fleetgw-admin.token"),
    STR_KEY("admin_token_env", web.admin_token_env, check_env_name,
            "an environment variable name", true, NULL),
    STR_KEY("read_token_file", web.read_token_file, check_nonempty, "a file path", true, NULL),
    STR_KEY("read_token_env", web.read_token_env, check_env_name,
            "an environment variable name", true, NULL),
    BOOL_KEY("open_health", web.open_health, true),
    BOOL_KEY("open_metrics", web.open_metrics, false),
    STR_KEY("tls_cert_file", web.tls_cert_file, check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("tls_key_file", web.tls_key_file, check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("static_dir", web.static_dir, check_nonempty, "a directory path", false,
            "/usr/share/fleetgw/web"),
    STR_KEY("openapi_file", web.openapi_file, check_nonempty, "a file path", false,
            "/usr/share/fleetgw/openapi.json"),
    UINT_KEY("max_body_bytes", web.max_body_bytes, 1024, 16777216, 65536),
};

static const struct key_spec registry_keys[] = {
    STR_KEY("path", registry.path, check_nonempty, "a file path", false, "fleetgw-registry.db"),
    /* NULL is "not given": derive_defaults() names it after registry.path. */
    {.name = "key_file", .kind = K_STR, FIELD(registry.key_file), .check = check_nonempty,
     .expect = "a file path", .nullable = true, .doc_default = "`\"<path>.key\"`"},
    ENUM_KEY("synchronous", registry.synchronous, sync_names, 1 /* normal */),
    UINT_KEY("busy_timeout_ms", registry.busy_timeout_ms, 0, 10000, 50),
    UINT_KEY("audit_max_rows", registry.audit_max_rows, 0, 100000000, 100000),
    UINT_KEY("audit_max_days", registry.audit_max_days, 0, 36500, 90),
    UINT_KEY("max_bytes", registry.max_bytes, 0, JSON_INT_MAX, 0),
    UINT_KEY("min_free_bytes", registry.min_free_bytes, 0, JSON_INT_MAX, 64u << 20),
};

static const struct key_spec admission_keys[] = {
    ENUM_KEY("policy", admission.policy, policy_names, POLICY_APPROVE),
    STR_KEY("pattern", admission.pattern, check_nonempty, "a glob pattern", false, "*"),
    STRLIST_KEY("allowlist", admission.allowlist, admission.n_allowlist, NULL,
                "an array of non-empty strings (ClientIds or patterns)"),
    BOOL_KEY("bind_address", admission.bind_address, true),
    UINT_KEY("new_ids_per_port", admission.new_ids_per_port, 0, 1000000, 1),
    UINT_KEY("new_ids_per_port_window_s", admission.new_ids_per_port_window_s, 1, 86400, 600),
    UINT_KEY("new_ids_per_ip", admission.new_ids_per_ip, 0, 1000000, 5),
    UINT_KEY("new_ids_per_ip_window_s", admission.new_ids_per_ip_window_s, 1, 86400, 60),
    /* A converter fronts many leaves from one IP (docs/architecture.md §7). */
    STRLIST_KEY("converters", admission.converters, admission.n_converters, check_ip,
                "an array of IPv4 or IPv6 address literals"),
    UINT_KEY("new_ids_per_converter", admission.new_ids_per_converter, 0, 1000000, 100),
    UINT_KEY("new_ids_per_converter_window_s", admission.new_ids_per_converter_window_s, 1,
             86400, 60),
    UINT_KEY("new_ids", admission.new_ids, 0, 1000000, 30),
    UINT_KEY("new_ids_window_s", admission.new_ids_window_s, 1, 86400, 60),
    UINT_KEY("sources_tracked", admission.sources_tracked, 16, 1000000, 4096),
    UINT_KEY("pending_ttl_s", admission.pending_ttl_s, 0, 31536000, 86400),
    UINT_KEY("max_pending", admission.max_pending, 1, 1000000, 1000),
};

static const struct key_spec local_ca_keys[] = {
    STR_KEY("cert_file", provisioning.local_ca.cert_file, check_nonempty, "a file path", false,
            "fleetgw-ca.crt"),
    STR_KEY("key_file", provisioning.local_ca.key_file, check_nonempty, "a file path", false,
            "fleetgw-ca.key"),
    BOOL_KEY("create", provisioning.local_ca.create, true),
    UINT_KEY("days", provisioning.local_ca.days, 1, 36500, 3650),
};

static const struct key_spec aws_keys[] = {
    STR_KEY("claim_cert_file", provisioning.aws.claim_cert_file, check_readable_file, WHAT_FILE,
            true, NULL),
    STR_KEY("claim_key_file", provisioning.aws.claim_key_file, check_readable_file, WHAT_FILE,
            true, NULL),
    STR_KEY("template_name", provisioning.aws.template_name, check_template_name,
            "a provisioning template name: 1..36 of [0-9A-Za-z_-]", true, NULL),
    ENUM_KEY("method", provisioning.aws.create_keys, method_names, 0 /* csr */),
    UINT_KEY("pool_size", provisioning.aws.pool_size, 1, 64, 2),
    STR_KEY("client_id_prefix", provisioning.aws.client_id_prefix, check_claim_prefix,
            "printable characters with no placeholder but {gateway_id}", false,
            "fleetgw-{gateway_id}-claim-"),
    STR_KEY("serial_parameter", provisioning.aws.serial_parameter, check_nonempty,
            "a template parameter name", false, "SerialNumber"),
    LIST_KEY("parameters", K_PARAMS, provisioning.aws.params, provisioning.aws.n_params),
    /* The certificate ownership token's life (PROTOCOLS.md A.4). */
    UINT_KEY("token_ttl_s", provisioning.aws.token_ttl_s, 1, 86400, 3600),
};

static const struct key_spec provisioning_keys[] = {
    ENUM_KEY("backend", provisioning.backend, backend_names, BACKEND_NONE),
    STR_KEY("thing_name_template", provisioning.thing_name_template, check_template,
            WHAT_TEMPLATE, false, PH_CLIENT_ID),
    /* AWS: RegisterThing 10 TPS (PROTOCOLS.md A.9). */
    UINT_KEY("rate_per_s", provisioning.rate_per_s, 1, 10000, 10),
    UINT_KEY("retry_base_ms", provisioning.retry_base_ms, 10, 3600000, 2000),
    UINT_KEY("retry_cap_ms", provisioning.retry_cap_ms, 10, 86400000, 300000),
    UINT_KEY("request_timeout_ms", provisioning.request_timeout_ms, 100, 600000, 30000),
    OBJ_KEY("local_ca", local_ca_keys),
    OBJ_KEY("aws", aws_keys),
};

static const struct key_spec top_keys[] = {
    ENUM_KEY("log_level", log_level, log_level_names, LOG_INFO),
    UINT_KEY("gateway_id", gateway_id, 1, 255, 1),
    OBJ_KEY("lan", lan_keys),
    OBJ_KEY("upstream", upstream_keys),
    OBJ_KEY("web", web_keys),
    OBJ_KEY("registry", registry_keys),
    OBJ_KEY("admission", admission_keys),
    OBJ_KEY("provisioning", provisioning_keys),
};

/* Strings the loader fills in from elsewhere than a key of the file: the
 * file's own path and the secrets read from the environment.  They are not
 * keys (never loaded from the file, not documented); cfg_free() walks them
 * together with the key tables. */
#define OWNED_FIELD(f, is_secret) {.name = #f, .kind = K_STR, FIELD(f), .secret = is_secret}

static const struct key_spec owned_fields[] = {
    OWNED_FIELD(path, false),
    OWNED_FIELD(upstream.password, true),
    OWNED_FIELD(web.admin_token, true),
    OWNED_FIELD(web.read_token, true),
};

/* ---- value loaders ------------------------------------------------------ */

static void *field_at(const struct gw_config *cfg, size_t off)
{
  return (unsigned char *)cfg + off;
}

static void *slot(const struct loader *ld, const struct key_spec *ks)
{
  return field_at(ld->cfg, ks->off);
}

/* The element count of a list key (K_PREDEFINED, K_STRLIST, K_PARAMS). */
static size_t *count_at(const struct gw_config *cfg, const struct key_spec *ks)
{
  return field_at(cfg, ks->count_off);
}

/* Stores u into a K_UINT key's 1-, 2-, 4- or 8-byte field. */
static void store_uint(const struct loader *ld, const struct key_spec *ks, uint64_t u)
{
  switch (ks->size) {
  case 1: {
    uint8_t x = (uint8_t)u;
    memcpy(slot(ld, ks), &x, 1);
    break;
  }
  case 2: {
    uint16_t x = (uint16_t)u;
    memcpy(slot(ld, ks), &x, 2);
    break;
  }
  case 4: {
    uint32_t x = (uint32_t)u;
    memcpy(slot(ld, ks), &x, 4);
    break;
  }
  default:
    memcpy(slot(ld, ks), &u, 8);
    break;
  }
}

static void store_bool(const struct loader *ld, const struct key_spec *ks, bool b)
{
  memcpy(slot(ld, ks), &b, sizeof b);
}

/* Stores a K_ENUM index: a two-choice key may live in a bool. */
static void store_enum(const struct loader *ld, const struct key_spec *ks, int idx)
{
  if (ks->size == sizeof(bool))
    store_bool(ld, ks, idx != 0);
  else
    memcpy(slot(ld, ks), &idx, sizeof idx);
}

/* Replaces the string at a char * slot, freeing what was there. */
static void set_string(void *dst, char *s)
{
  char *old;
  memcpy(&old, dst, sizeof old);
  free(old);
  memcpy(dst, &s, sizeof s);
}

static int load_uint(const struct loader *ld, const char *path, const struct key_spec *ks,
                     const cJSON *v)
{
  char what[64];
  double d;

  snprintf(what, sizeof what, "an integer %llu..%llu", (unsigned long long)ks->min,
           (unsigned long long)ks->max);
  if (!cJSON_IsNumber(v))
    return fail_expected(ld, path, what, v, NULL);
  d = v->valuedouble;
  /* The range test comes first so that the cast below is defined; every
   * max is at most JSON_INT_MAX, so the double holds the integer exactly. */
  if (!(d >= (double)ks->min && d <= (double)ks->max) || d != (double)(uint64_t)d)
    return fail_expected(ld, path, what, v, NULL);
  store_uint(ld, ks, (uint64_t)d);
  return 0;
}

static int load_string(const struct loader *ld, const char *path, const struct key_spec *ks,
                       const cJSON *v)
{
  const char *why = NULL;
  char *copy;

  if (ks->nullable && cJSON_IsNull(v)) {
    set_string(slot(ld, ks), NULL);
    return 0;
  }
  if (!cJSON_IsString(v))
    return fail_expected(ld, path, ks->expect, v, NULL);
  if (!(ks->check ? ks->check(v->valuestring, &why) : v->valuestring[0] != '\0'))
    return fail_expected(ld, path, ks->expect, v, why);
  copy = strdup(v->valuestring);
  if (!copy)
    return fail_oom(ld);
  set_string(slot(ld, ks), copy);
  return 0;
}

static int cmp_predefined(const void *a, const void *b)
{
  const struct cfg_predefined *x = a, *y = b;
  return (x->id > y->id) - (x->id < y->id);
}

/* Parses a canonical decimal topic id: digits only, no sign, no leading zero,
 * 1..65534 (0x0000 and 0xFFFF are reserved, MQTT-SN §5.3.11). */
static int parse_topic_id(const char *s, uint16_t *id)
{
  unsigned long v = 0;
  size_t n = strlen(s);
  if (n == 0 || n > 5 || s[0] == '0')
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (unsigned long)(s[i] - '0');
  }
  if (v < 1 || v > 65534)
    return -1;
  *id = (uint16_t)v;
  return 0;
}

static int load_predefined(const struct loader *ld, const char *path, const struct key_spec *ks,
                           const cJSON *obj)
{
  struct cfg_predefined **list = slot(ld, ks);
  size_t *count = count_at(ld->cfg, ks);
  char key[KEY_PATH_CAP];
  const cJSON *it;
  int n;

  if (!cJSON_IsObject(obj))
    return fail_expected(ld, path, "an object mapping topic ids to topic names", obj, NULL);
  n = cJSON_GetArraySize(obj);
  if (n == 0)
    return 0;
  *list = calloc((size_t)n, sizeof **list);
  if (!*list)
    return fail_oom(ld);

  cJSON_ArrayForEach(it, obj) {
    struct cfg_predefined *p = &(*list)[*count];
    const char *name = it->string ? it->string : "";

    join_path(key, sizeof key, path, name);
    if (parse_topic_id(name, &p->id) != 0) {
      char got[80];
      describe_str(name, got, sizeof got);
      return fail(ld, key, "expected a topic id \"1\"..\"65534\" as the key, got %s", got);
    }
    if (!cJSON_IsString(it) ||
        !topic_name_is_valid(it->valuestring, strlen(it->valuestring)))
      return fail_expected(ld, key, "a valid MQTT topic name without wildcards", it, NULL);
    p->topic = strdup(it->valuestring);
    if (!p->topic)
      return fail_oom(ld);
    (*count)++;
  }

  /* Sorted by id so that lookups can bisect; adjacent equal ids are then
   * duplicates ("5" given twice: JSON parsers keep both). */
  qsort(*list, *count, sizeof **list, cmp_predefined);
  for (size_t i = 1; i < *count; i++) {
    if ((*list)[i].id == (*list)[i - 1].id) {
      char idkey[16];
      snprintf(idkey, sizeof idkey, "%u", (unsigned)(*list)[i].id);
      join_path(key, sizeof key, path, idkey);
      return fail(ld, key, "duplicate topic id");
    }
  }
  return 0;
}

static int load_enum(const struct loader *ld, const char *path, const struct key_spec *ks,
                     const cJSON *v)
{
  char what[160];
  size_t n = 0;
  int idx = -1;

  n = (size_t)snprintf(what, sizeof what, "one of");
  for (int i = 0; ks->choices[i]; i++) {
    if (n < sizeof what)
      n += (size_t)snprintf(what + n, sizeof what - n, "%s \"%s\"", i ? "," : "",
                            ks->choices[i]);
    if (cJSON_IsString(v) && strcmp(v->valuestring, ks->choices[i]) == 0)
      idx = i;
  }
  if (idx < 0)
    return fail_expected(ld, path, what, v, NULL);
  store_enum(ld, ks, idx);
  return 0;
}

static int load_strlist(const struct loader *ld, const char *path, const struct key_spec *ks,
                        const cJSON *arr)
{
  char ***list = slot(ld, ks);
  size_t *count = count_at(ld->cfg, ks);
  const cJSON *it;
  int n;

  if (!cJSON_IsArray(arr))
    return fail_expected(ld, path, ks->expect, arr, NULL);
  n = cJSON_GetArraySize(arr);
  if (n == 0)
    return 0;
  *list = calloc((size_t)n, sizeof **list);
  if (!*list)
    return fail_oom(ld);
  cJSON_ArrayForEach(it, arr) {
    const char *why = NULL;
    char *copy;
    if (!cJSON_IsString(it) || it->valuestring[0] == '\0' || strlen(it->valuestring) > 255 ||
        (ks->check && !ks->check(it->valuestring, &why)))
      return fail_expected(ld, path, ks->expect, it, why);
    copy = strdup(it->valuestring);
    if (!copy)
      return fail_oom(ld);
    (*list)[(*count)++] = copy;
  }
  return 0;
}

static int load_params(const struct loader *ld, const char *path, const struct key_spec *ks,
                       const cJSON *obj)
{
  struct cfg_param **list = slot(ld, ks);
  size_t *count = count_at(ld->cfg, ks);
  char key[KEY_PATH_CAP];
  const cJSON *it;
  int n;

  if (!cJSON_IsObject(obj))
    return fail_expected(ld, path, "an object of string parameters", obj, NULL);
  n = cJSON_GetArraySize(obj);
  if (n == 0)
    return 0;
  *list = calloc((size_t)n, sizeof **list);
  if (!*list)
    return fail_oom(ld);
  cJSON_ArrayForEach(it, obj) {
    struct cfg_param *p = &(*list)[*count];
    const char *name = it->string ? it->string : "";
    join_path(key, sizeof key, path, name);
    /* RegisterThing parameters are a flat string map (PROTOCOLS.md A.2). */
    if (!cJSON_IsString(it) || name[0] == '\0')
      return fail_expected(ld, key, "a string value", it, NULL);
    p->key = strdup(name);
    p->value = strdup(it->valuestring);
    (*count)++;
    if (!p->key || !p->value)
      return fail_oom(ld);
  }
  return 0;
}

/* Levenshtein distance, for "did you mean" hints; capped at small inputs. */
static size_t edit_distance(const char *a, const char *b)
{
  enum { MAXLEN = 40 };
  size_t la = strlen(a), lb = strlen(b), row[MAXLEN + 1];
  if (la > MAXLEN || lb > MAXLEN)
    return (size_t)-1;
  for (size_t j = 0; j <= lb; j++)
    row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

static int fail_unknown(const struct loader *ld, const char *path, const char *name,
                        const struct key_spec *specs, size_t n)
{
  const char *best = NULL;
  size_t best_d = 3; /* suggest only close matches: typos, not guesses */
  char list[512];
  size_t used = 0;

  for (size_t i = 0; i < n; i++) {
    size_t d = edit_distance(name, specs[i].name);
    if (d < best_d) {
      best_d = d;
      best = specs[i].name;
    }
  }
  if (best)
    return fail(ld, path, "unknown key (did you mean \"%s\"?)", best);
  list[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    int k = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", specs[i].name);
    if (k < 0 || (size_t)k >= sizeof list - used)
      break;
    used += (size_t)k;
  }
  return fail(ld, path, "unknown key (expected one of: %s)", list);
}

static int load_object(const struct loader *ld, const char *prefix, const cJSON *obj,
                       const struct key_spec *specs, size_t n)
{
  bool seen[32] = {false};
  char path[KEY_PATH_CAP];
  const cJSON *it;

  if (!cJSON_IsObject(obj))
    return fail_expected(ld, prefix, "an object", obj, NULL);

  cJSON_ArrayForEach(it, obj) {
    const char *name = it->string ? it->string : "";
    const struct key_spec *ks = NULL;
    size_t idx = 0;
    int rc = 0;

    join_path(path, sizeof path, prefix, name);
    for (idx = 0; idx < n; idx++) {
      if (strcmp(specs[idx].name, name) == 0) {
        ks = &specs[idx];
        break;
      }
    }
    if (!ks)
      return fail_unknown(ld, path, name, specs, n);
    /* cJSON keeps both copies of a repeated key; silently taking one would
     * hide an editing mistake. */
    if (idx < sizeof seen / sizeof seen[0]) {
      if (seen[idx])
        return fail(ld, path, "duplicate key");
      seen[idx] = true;
    }

    switch (ks->kind) {
    case K_UINT:
      rc = load_uint(ld, path, ks, it);
      break;
    case K_BOOL:
      if (!cJSON_IsBool(it))
        return fail_expected(ld, path, "true or false", it, NULL);
      store_bool(ld, ks, cJSON_IsTrue(it));
      break;
    case K_STR:
      rc = load_string(ld, path, ks, it);
      break;
    case K_OBJECT:
      rc = load_object(ld, path, it, ks->sub, ks->n_sub);
      break;
    case K_PREDEFINED:
      rc = load_predefined(ld, path, ks, it);
      break;
    case K_ENUM:
      rc = load_enum(ld, path, ks, it);
      break;
    case K_STRLIST:
      rc = load_strlist(ld, path, ks, it);
      break;
    case K_PARAMS:
      rc = load_params(ld, path, ks, it);
      break;
    }
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* ---- defaults and cross-key rules -------------------------------------- */

/* Gives every key its default from the tables, before the file is read (the
 * file's keys then replace them).  Lists start empty: the config is calloc'd. */
static int set_defaults(const struct loader *ld, const struct key_spec *specs, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    const struct key_spec *ks = &specs[i];
    char *copy;

    switch (ks->kind) {
    case K_UINT:
      store_uint(ld, ks, ks->def);
      break;
    case K_BOOL:
      store_bool(ld, ks, ks->def != 0);
      break;
    case K_ENUM:
      store_enum(ld, ks, (int)ks->def);
      break;
    case K_STR:
      if (ks->def_str) {
        copy = strdup(ks->def_str);
        if (!copy)
          return fail_oom(ld);
        set_string(slot(ld, ks), copy);
      }
      break;
    case K_OBJECT:
      if (set_defaults(ld, ks->sub, ks->n_sub) != 0)
        return -1;
      break;
    case K_PREDEFINED:
    case K_STRLIST:
    case K_PARAMS:
      break;
    }
  }
  return 0;
}

/* The defaults that depend on other keys, so they can only be settled once
 * the whole file has been read.  Their table entries hold "not given" (port
 * 0, which the file cannot set; key_file NULL) and a doc_default that tells
 * the README what they become. */
static int derive_defaults(const struct loader *ld)
{
  struct gw_config *cfg = ld->cfg;

  if (cfg->upstream.port == 0)
    cfg->upstream.port = cfg->upstream.tls ? 8883 : 1883;
  if (!cfg->registry.key_file) {
    size_t n = strlen(cfg->registry.path) + 5;
    cfg->registry.key_file = malloc(n);
    if (!cfg->registry.key_file)
      return fail_oom(ld);
    snprintf(cfg->registry.key_file, n, "%s.key", cfg->registry.path);
  }
  return 0;
}

static int fail_missing(const struct loader *ld, const char *key, const char *when,
                        const char *what)
{
  return fail(ld, key, "required key missing%s (expected %s)", when, what);
}

static int check_rules(const struct loader *ld)
{
  struct gw_config *cfg = ld->cfg;

  if (!cfg->upstream.host)
    return fail_missing(ld, "upstream.host", "", WHAT_HOST);
  if (cfg->upstream.tls && !cfg->upstream.ca_file)
    return fail_missing(ld, "upstream.ca_file", " when upstream.tls is true", WHAT_FILE);

  /* One certificate for every leaf, or one per leaf from a directory. */
  if (cfg->upstream.cert_dir && cfg->upstream.cert_file)
    return fail(ld, "upstream.cert_dir",
                "expected either upstream.cert_dir or upstream.cert_file, not both");
  if (cfg->upstream.cert_dir && cfg->upstream.key_file)
    return fail(ld, "upstream.key_file",
                "expected no upstream.key_file with upstream.cert_dir (keys are <dir>/<ClientId>.key)");
  if (cfg->upstream.cert_file && !cfg->upstream.key_file)
    return fail_missing(ld, "upstream.key_file", " when upstream.cert_file is set", WHAT_FILE);
  if (cfg->upstream.key_file && !cfg->upstream.cert_file)
    return fail_missing(ld, "upstream.cert_file", " when upstream.key_file is set", WHAT_FILE);

  if (cfg->upstream.password_env) {
    const char *pw = getenv(cfg->upstream.password_env);
    if (!pw)
      return fail(ld, "upstream.password_env",
                  "expected the name of a set environment variable, got \"%s\" (not set)",
                  cfg->upstream.password_env);
    /* MQTT 3.1.1 allows a password only together with a user name
     * (MQTT-3.1.2-22). */
    if (!cfg->upstream.username)
      return fail_missing(ld, "upstream.username", " when upstream.password_env is set",
                          "a non-empty string");
    cfg->upstream.password = strdup(pw);
    if (!cfg->upstream.password)
      return fail_oom(ld);
  }

  if ((cfg->web.tls_cert_file == NULL) != (cfg->web.tls_key_file == NULL))
    return fail_missing(ld, cfg->web.tls_cert_file ? "web.tls_key_file" : "web.tls_cert_file",
                        " when the other of web.tls_cert_file/web.tls_key_file is set",
                        WHAT_FILE);
  if (cfg->web.admin_token_env) {
    const char *t = getenv(cfg->web.admin_token_env);
    if (!t || strlen(t) < 16)
      return fail(ld, "web.admin_token_env",
                  "expected the name of a set environment variable holding a token of at least "
                  "16 characters, got \"%s\"%s", cfg->web.admin_token_env, t ? " (too short)" : " (not set)");
    cfg->web.admin_token = strdup(t);
    if (!cfg->web.admin_token)
      return fail_oom(ld);
  }
  if (cfg->web.read_token_env) {
    const char *t = getenv(cfg->web.read_token_env);
    if (!t || strlen(t) < 16)
      return fail(ld, "web.read_token_env",
                  "expected the name of a set environment variable holding a token of at least "
                  "16 characters, got \"%s\"%s", cfg->web.read_token_env, t ? " (too short)" : " (not set)");
    cfg->web.read_token = strdup(t);
    if (!cfg->web.read_token)
      return fail_oom(ld);
  }
  if (cfg->provisioning.retry_cap_ms < cfg->provisioning.retry_base_ms)
    return fail(ld, "provisioning.retry_cap_ms",
                "expected an integer >= provisioning.retry_base_ms (%lu), got %lu",
                (unsigned long)cfg->provisioning.retry_base_ms,
                (unsigned long)cfg->provisioning.retry_cap_ms);
  if (cfg->provisioning.backend == BACKEND_AWS) {
    if (!cfg->upstream.tls)
      return fail(ld, "upstream.tls", "expected true with provisioning.backend \"aws\"");
    if (!cfg->provisioning.aws.claim_cert_file)
      return fail_missing(ld, "provisioning.aws.claim_cert_file",
                          " with provisioning.backend \"aws\"", WHAT_FILE);
    if (!cfg->provisioning.aws.claim_key_file)
      return fail_missing(ld, "provisioning.aws.claim_key_file",
                          " with provisioning.backend \"aws\"", WHAT_FILE);
    if (!cfg->provisioning.aws.template_name)
      return fail_missing(ld, "provisioning.aws.template_name",
                          " with provisioning.backend \"aws\"", "a provisioning template name");
  }
  if (cfg->provisioning.backend != BACKEND_NONE && (cfg->upstream.cert_file || cfg->upstream.cert_dir))
    return fail(ld, cfg->upstream.cert_file ? "upstream.cert_file" : "upstream.cert_dir",
                "expected no upstream certificate with a provisioning backend (each leaf gets its own)");

  if (cfg->upstream.backoff_cap_ms < cfg->upstream.backoff_base_ms)
    return fail(ld, "upstream.backoff_cap_ms",
                "expected an integer >= upstream.backoff_base_ms (%lu), got %lu",
                (unsigned long)cfg->upstream.backoff_base_ms, (unsigned long)cfg->upstream.backoff_cap_ms);
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
  return fail(ld, key,
              "expected a file only its owner may access, got \"%s\" with mode %04o (group or "
              "others may read the token: chmod 600 %s)",
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

/* ---- file reading ------------------------------------------------------- */

static int read_whole_file(const struct loader *ld, char **out, size_t *len)
{
  struct stat st;
  char *buf = NULL;
  size_t n = 0;
  int fd;

  fd = open(ld->file, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(ld, NULL, "cannot open: %s", strerror(errno));
  if (fstat(fd, &st) != 0) {
    fail(ld, NULL, "cannot stat: %s", strerror(errno));
    goto close_fd;
  }
  if (S_ISDIR(st.st_mode)) {
    fail(ld, NULL, "expected a JSON file, got a directory");
    goto close_fd;
  }
  if (S_ISREG(st.st_mode) && st.st_size > (off_t)MAX_FILE_BYTES) {
    fail(ld, NULL, "expected a file of at most 1 MiB, got %lld bytes", (long long)st.st_size);
    goto close_fd;
  }
  /* One byte more than the limit tells "exactly 1 MiB" from "too big", even
   * for files whose size stat() does not know (pipes). */
  buf = malloc(MAX_FILE_BYTES + 1);
  if (!buf) {
    fail_oom(ld);
    goto close_fd;
  }
  for (;;) {
    ssize_t k = read(fd, buf + n, MAX_FILE_BYTES + 1 - n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      fail(ld, NULL, "cannot read: %s", strerror(errno));
      goto free_buf;
    }
    if (k == 0)
      break;
    n += (size_t)k;
    if (n > MAX_FILE_BYTES) {
      fail(ld, NULL, "expected a file of at most 1 MiB, got more");
      goto free_buf;
    }
  }
  close(fd);
  *out = buf;
  *len = n;
  return 0;

free_buf:
  free(buf);
close_fd:
  close(fd);
  return -1;
}

static int fail_syntax(const struct loader *ld, const char *buf, size_t len, const char *at)
{
  size_t pos = (at && at >= buf && at <= buf + len) ? (size_t)(at - buf) : len;
  size_t line = 1, col = 1, k = 0;
  bool at_end = true;
  char near[24];

  /* cJSON reports where it gave up, which is often the whitespace after the
   * offending token (e.g. the newline after ",,"); point at the token. */
  for (size_t i = pos; i < len; i++)
    if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\r' && buf[i] != '\n')
      at_end = false;
  while (pos > 0 && (pos >= len || buf[pos] == ' ' || buf[pos] == '\t' || buf[pos] == '\r' ||
                     buf[pos] == '\n'))
    pos--;

  for (size_t i = 0; i < pos; i++) {
    if (buf[i] == '\n') {
      line++;
      col = 1;
    } else {
      col++;
    }
  }
  if (at_end)
    return fail(ld, NULL, "line %zu, column %zu: JSON syntax error: unexpected end of input",
                line, col);
  for (size_t i = pos; i < len && buf[i] != '\n' && k < sizeof near - 1; i++)
    near[k++] = (unsigned char)buf[i] < 0x20 ? '?' : buf[i];
  near[k] = '\0';
  return fail(ld, NULL, "line %zu, column %zu: JSON syntax error near '%s'", line, col, near);
}

/* ---- public API --------------------------------------------------------- */

int cfg_load(const char *path, struct gw_config **out, char *err, size_t errlen)
{
  struct loader ld = {.file = path ? path : "(null)", .err = err, .errlen = errlen};
  const char *end = NULL;
  cJSON *root = NULL;
  char *buf = NULL;
  size_t len = 0;

  if (err && errlen)
    err[0] = '\0';
  if (!out || !path)
    return fail(&ld, NULL, "cfg_load: no path or no output pointer");
  *out = NULL;

  ld.cfg = calloc(1, sizeof *ld.cfg);
  if (!ld.cfg)
    return fail_oom(&ld);
  ld.cfg->path = strdup(path);
  if (!ld.cfg->path) {
    fail_oom(&ld);
    goto free_cfg;
  }
  if (set_defaults(&ld, top_keys, sizeof top_keys / sizeof top_keys[0]) != 0)
    goto free_cfg;
  if (read_whole_file(&ld, &buf, &len) != 0)
    goto free_cfg;
  if (memchr(buf, '\0', len)) {
    fail(&ld, NULL, "expected a JSON text, got a NUL byte at offset %zu",
         (size_t)((char *)memchr(buf, '\0', len) - buf));
    goto free_buf;
  }
  /* With require_null_terminated cJSON insists on seeing the NUL inside the
   * given length; that is what rejects trailing garbage after the object.
   * The buffer has room for it: len <= MAX_FILE_BYTES. */
  buf[len] = '\0';
  root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
  if (!root) {
    fail_syntax(&ld, buf, len, end);
    goto free_buf;
  }
  if (!cJSON_IsObject(root)) {
    char got[80];
    describe(root, got, sizeof got);
    fail(&ld, NULL, "expected a JSON object at the top level, got %s", got);
    goto free_json;
  }
  if (load_object(&ld, "", root, top_keys, sizeof top_keys / sizeof top_keys[0]) != 0)
    goto free_json;
  if (derive_defaults(&ld) != 0 || check_rules(&ld) != 0 || check_token_files(&ld) != 0)
    goto free_json;

  cJSON_Delete(root);
  free(buf);
  *out = ld.cfg;
  return 0;

free_json:
  cJSON_Delete(root);
free_buf:
  free(buf);
free_cfg:
  cfg_free(ld.cfg);
  return -1;
}

/* Frees what the keys of specs own: strings (secrets wiped first) and lists. */
static void free_keys(struct gw_config *cfg, const struct key_spec *specs, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    const struct key_spec *ks = &specs[i];
    void *p = field_at(cfg, ks->off);

    switch (ks->kind) {
    case K_STR:
      if (ks->secret)
        secret_free(*(char **)p);
      else
        free(*(char **)p);
      break;
    case K_OBJECT:
      free_keys(cfg, ks->sub, ks->n_sub);
      break;
    case K_PREDEFINED: {
      struct cfg_predefined *list = *(struct cfg_predefined **)p;
      for (size_t j = 0; j < *count_at(cfg, ks); j++)
        free(list[j].topic);
      free(list);
      break;
    }
    case K_STRLIST: {
      char **list = *(char ***)p;
      for (size_t j = 0; j < *count_at(cfg, ks); j++)
        free(list[j]);
      free(list);
      break;
    }
    case K_PARAMS: {
      struct cfg_param *list = *(struct cfg_param **)p;
      for (size_t j = 0; j < *count_at(cfg, ks); j++) {
        free(list[j].key);
        free(list[j].value);
      }
      free(list);
      break;
    }
    case K_UINT:
    case K_BOOL:
    case K_ENUM:
      break;
    }
  }
}

void cfg_free(struct gw_config *cfg)
{
  if (!cfg)
    return;
  free_keys(cfg, top_keys, sizeof top_keys / sizeof top_keys[0]);
  free_keys(cfg, owned_fields, sizeof owned_fields / sizeof owned_fields[0]);
  free(cfg);
}

/* ---- warnings ----------------------------------------------------------- */

/* 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and "localhost". */
static bool is_loopback(const char *addr)
{
  static const unsigned char v6_loopback[16] = {[15] = 1};
  static const unsigned char v4_mapped[12] = {[10] = 0xff, [11] = 0xff};
  unsigned char a[16];

  if (strcmp(addr, "localhost") == 0)
    return true;
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

size_t cfg_warnings(const struct gw_config *cfg, char lines[][CFG_WARNING_LEN], size_t max)
{
  size_t n = 0;

  if (!cfg || !lines)
    return 0;
  if (cfg->web.enabled && !cfg->web.tls_cert_file && !is_loopback(cfg->web.bind))
    add_warning(lines, max, &n, "web.bind %s without TLS: tokens cross the network in clear",
                cfg->web.bind);
  /* The gateway-wide limit is the one a flood from spoofed sources meets. */
  if (cfg->admission.policy == POLICY_OPEN && cfg->provisioning.backend != BACKEND_NONE &&
      cfg->admission.new_ids == 0)
    add_warning(lines, max, &n,
                "admission.policy \"open\" with admission.new_ids 0: boxes on the LAN can have "
                "certificates issued with no gateway-wide limit");
  return n;
}

/* ---- key iteration (documentation and tests) --------------------------- */

static size_t count_keys(const struct key_spec *specs, size_t n)
{
  size_t total = n;
  for (size_t i = 0; i < n; i++)
    if (specs[i].kind == K_OBJECT)
      total += count_keys(specs[i].sub, specs[i].n_sub);
  return total;
}

/* Finds key number *i below specs, depth-first with each object before its
 * keys, counting *i down as it goes; writes its dotted path into path[cap]. */
static const struct key_spec *nth_key(const struct key_spec *specs, size_t n, const char *prefix,
                                      size_t *i, char *path, size_t cap)
{
  for (size_t k = 0; k < n; k++) {
    char here[KEY_PATH_CAP];
    const struct key_spec *found;

    join_path(here, sizeof here, prefix, specs[k].name);
    if ((*i)-- == 0) {
      join_path(path, cap, "", here);
      return &specs[k];
    }
    if (specs[k].kind == K_OBJECT) {
      found = nth_key(specs[k].sub, specs[k].n_sub, here, i, path, cap);
      if (found)
        return found;
    }
  }
  return NULL;
}

/* The type column of README.md's key tables. */
static const char *kind_name(const struct key_spec *ks)
{
  switch (ks->kind) {
  case K_UINT:
    return "integer";
  case K_BOOL:
    return "boolean";
  case K_STR:
    return ks->nullable ? "string or null" : "string";
  case K_ENUM:
    return "string";
  case K_STRLIST:
    return "array of strings";
  case K_OBJECT:
  case K_PREDEFINED:
  case K_PARAMS:
    break;
  }
  return "object";
}

/* The default column of README.md's key tables (Markdown). */
static void render_default(const struct key_spec *ks, char *out, size_t cap)
{
  const char *text = "";

  if (ks->doc_default) {
    snprintf(out, cap, "%s", ks->doc_default);
    return;
  }
  switch (ks->kind) {
  case K_UINT:
    snprintf(out, cap, "`%llu`", (unsigned long long)ks->def);
    return;
  case K_ENUM:
    snprintf(out, cap, "`\"%s\"`", ks->choices[ks->def]);
    return;
  case K_STR:
    if (ks->def_str) {
      snprintf(out, cap, "`\"%s\"`", ks->def_str);
      return;
    }
    /* Without a default and with null refused, the file must give it. */
    text = ks->nullable ? "not set" : "**required**";
    break;
  case K_BOOL:
    text = ks->def ? "`true`" : "`false`";
    break;
  case K_STRLIST:
    text = "`[]`";
    break;
  case K_PREDEFINED:
  case K_PARAMS:
    text = "`{}`";
    break;
  case K_OBJECT:
    break; /* an object has no default of its own: its keys have */
  }
  snprintf(out, cap, "%s", text);
}

size_t cfg_key_count(void)
{
  return count_keys(top_keys, sizeof top_keys / sizeof top_keys[0]);
}

int cfg_key_at(size_t i, struct cfg_key_info *info)
{
  const struct key_spec *ks;

  if (!info)
    return -1;
  ks = nth_key(top_keys, sizeof top_keys / sizeof top_keys[0], "", &i, info->path,
               sizeof info->path);
  if (!ks)
    return -1;
  info->type = kind_name(ks);
  render_default(ks, info->def, sizeof info->def);
  return 0;
}

/* Expands {client_id} and {gateway_id} in template t into out[cap]. */
static int expand(const struct gw_config *cfg, const char *t, const char *leaf_client_id,
                  char *out, size_t cap)
{
  char gw[4];
  size_t n = 0;

  if (!out || cap == 0)
    return -1;
  out[0] = '\0';
  if (!cfg || !leaf_client_id || !t)
    return -1;
  snprintf(gw, sizeof gw, "%u", (unsigned)cfg->gateway_id);

  while (*t) {
    const char *piece = t;
    size_t plen = 1;

    if (strncmp(t, PH_CLIENT_ID, sizeof PH_CLIENT_ID - 1) == 0) {
      piece = leaf_client_id;
      plen = strlen(leaf_client_id);
      t += sizeof PH_CLIENT_ID - 1;
    } else if (strncmp(t, PH_GATEWAY_ID, sizeof PH_GATEWAY_ID - 1) == 0) {
      piece = gw;
      plen = strlen(gw);
      t += sizeof PH_GATEWAY_ID - 1;
    } else {
      t++;
    }
    /* Room for the piece and the terminating NUL. */
    if (plen >= cap - n) {
      out[0] = '\0';
      return -1;
    }
    memcpy(out + n, piece, plen);
    n += plen;
  }
  out[n] = '\0';
  return 0;
}

int cfg_upstream_client_id(const struct gw_config *cfg, const char *leaf_client_id, char *out,
                           size_t cap)
{
  return expand(cfg, cfg && cfg->upstream.client_id_template ? cfg->upstream.client_id_template
                                                             : PH_CLIENT_ID,
                leaf_client_id, out, cap);
}

int cfg_thing_name(const struct gw_config *cfg, const char *leaf_client_id, char *out, size_t cap)
{
  return expand(cfg, cfg && cfg->provisioning.thing_name_template
                         ? cfg->provisioning.thing_name_template
                         : PH_CLIENT_ID,
                leaf_client_id, out, cap);
}

int cfg_claim_client_id(const struct gw_config *cfg, unsigned index, char *out, size_t cap)
{
  char base[256];
  int k;
  if (!cfg || expand(cfg, cfg->provisioning.aws.client_id_prefix, "", base, sizeof base) != 0)
    return -1;
  k = snprintf(out, cap, "%s%u", base, index);
  return k < 0 || (size_t)k >= cap ? -1 : 0;
}
