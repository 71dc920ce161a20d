/*
 * config.c - load and validate the gateway's JSON configuration.
 *
 * The loader is table-driven: every object level of the file has a table of
 * its known keys (name, kind, where the value goes in struct gw_config, its
 * range or validator).  One generic walker applies a table to a JSON object,
 * so "unknown key", "duplicate key" and "wrong type" are reported the same
 * way at every level.  Checks that involve several keys (host required, CA
 * required with TLS, certificate pairing, the password variable) run once the
 * whole file has been read.
 *
 * Every error is one line: "<file>: <key path>: expected <what>, got <what>".
 */
#include "config.h"

#include "log.h"
#include "provisioning.h"
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
  K_UINT,       /* integer in [min, max], stored in a 1-, 2- or 4-byte field */
  K_BOOL,       /* true / false */
  K_STR,        /* string, optionally validated; copied */
  K_LOG_LEVEL,  /* "error" .. "trace" -> enum log_level */
  K_OBJECT,     /* nested table */
  K_PREDEFINED, /* lan.predefined_topics: {"<id>": "<topic>", ...} */
  K_ENUM,       /* one of .choices; its index stored in an int (or a bool) */
  K_STRLIST,    /* admission.allowlist: ["entry", ...] */
  K_PARAMS,     /* provisioning.aws.parameters: {"name": "value", ...} */
};

/* A string validator returns true when s is acceptable.  It may set *why to a
 * short reason (e.g. strerror) that is appended to the "got" part. */
typedef bool (*str_check_fn)(const char *s, const char **why);

struct key_spec {
  const char *name;
  enum key_kind kind;
  size_t off;                  /* offset of the destination in struct gw_config */
  size_t size;                 /* its size, for K_UINT */
  uint32_t min, max;           /* K_UINT range */
  str_check_fn check;          /* K_STR: NULL accepts any non-empty string */
  const char *expect;          /* K_STR: what a valid value looks like */
  bool nullable;               /* K_STR: JSON null means "not set" */
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

static const char *const policy_names[] = {"open", "allowlist", "approve", NULL};
static const char *const backend_names[] = {"none", "local-ca", "aws", NULL};
static const char *const sync_names[] = {"off", "normal", "full", NULL};
static const char *const method_names[] = {"csr", "create-keys", NULL};

/* ---- key tables --------------------------------------------------------- */

#define FIELD(f) .off = offsetof(struct gw_config, f), .size = sizeof(((struct gw_config *)0)->f)
#define UINT_KEY(n, f, lo, hi) {.name = n, .kind = K_UINT, FIELD(f), .min = lo, .max = hi}
#define BOOL_KEY(n, f) {.name = n, .kind = K_BOOL, FIELD(f)}
#define STR_KEY(n, f, fn, what, null_ok) \
  {.name = n, .kind = K_STR, FIELD(f), .check = fn, .expect = what, .nullable = null_ok}
#define OBJ_KEY(n, table) \
  {.name = n, .kind = K_OBJECT, .sub = table, .n_sub = sizeof table / sizeof table[0]}

#define ENUM_KEY(n, f, list) {.name = n, .kind = K_ENUM, FIELD(f), .choices = list}

#define WHAT_IP "an IPv4 or IPv6 address literal"
#define WHAT_FILE "a readable file"
#define WHAT_HOST "a host name or IP address"
#define WHAT_TEMPLATE \
  "a template containing {client_id} and no placeholder other than {client_id} and {gateway_id}"

static const struct key_spec advertise_keys[] = {
    STR_KEY("address", lan.advertise_address, check_ip, WHAT_IP, true),
    UINT_KEY("port", lan.advertise_port, 1, 65535),
    /* ADVERTISE carries the interval in a 2-byte Duration field (§5.4.2). */
    UINT_KEY("interval_s", lan.advertise_interval_s, 1, 65535),
};

static const struct key_spec lan_keys[] = {
    STR_KEY("bind", lan.bind, check_ip, WHAT_IP, false),
    UINT_KEY("port", lan.port, 1, 65535),
    UINT_KEY("recv_buffer_bytes", lan.recv_buffer_bytes, 4096, 1073741824),
    UINT_KEY("max_client_id_len", lan.max_client_id_len, 1, 255),
    UINT_KEY("max_leaves", lan.max_leaves, 1, 1000000),
    UINT_KEY("t_retry_ms", lan.t_retry_ms, 100, 600000),
    UINT_KEY("n_retry", lan.n_retry, 0, 20),
    UINT_KEY("connack_timeout_ms", lan.connack_timeout_ms, 100, 600000),
    UINT_KEY("queue_max", lan.queue_max, 1, 1000000),
    OBJ_KEY("advertise", advertise_keys),
    {.name = "predefined_topics", .kind = K_PREDEFINED},
};

static const struct key_spec upstream_keys[] = {
    STR_KEY("host", upstream.host, check_host, WHAT_HOST, false),
    UINT_KEY("port", upstream.port, 1, 65535),
    BOOL_KEY("tls", upstream.tls),
    STR_KEY("ca_file", upstream.ca_file, check_readable_file, WHAT_FILE, true),
    STR_KEY("cert_file", upstream.cert_file, check_readable_file, WHAT_FILE, true),
    STR_KEY("key_file", upstream.key_file, check_readable_file, WHAT_FILE, true),
    STR_KEY("cert_dir", upstream.cert_dir, check_dir, "a readable directory", true),
    STR_KEY("alpn", upstream.alpn, check_alpn, "an ALPN protocol id of 1..255 printable bytes",
            true),
    STR_KEY("client_id_template", upstream.client_id_template, check_template, WHAT_TEMPLATE,
            false),
    STR_KEY("username", upstream.username, check_nonempty, "a non-empty string", true),
    STR_KEY("password_env", upstream.password_env, check_env_name,
            "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", true),
    UINT_KEY("keepalive_s", upstream.keepalive_s, 30, 1200),
    BOOL_KEY("clean_session", upstream.clean_session),
    UINT_KEY("connect_timeout_ms", upstream.connect_timeout_ms, 100, 600000),
    UINT_KEY("backoff_base_ms", upstream.backoff_base_ms, 1, 3600000),
    UINT_KEY("backoff_cap_ms", upstream.backoff_cap_ms, 1, 86400000),
    UINT_KEY("give_up_after_s", upstream.give_up_after_s, 0, 86400),
    UINT_KEY("max_queue", upstream.max_queue, 1, 1000000),
    /* 268435455 is the largest MQTT Remaining Length, plus 5 header bytes. */
    UINT_KEY("max_packet", upstream.max_packet, 1024, 268435460),
    UINT_KEY("max_connecting", upstream.max_connecting, 0, 100000),
    UINT_KEY("connect_rate_per_s", upstream.connect_rate_per_s, 0, 100000),
    STR_KEY("qos_minus1_client_id", upstream.qos_m1_client_id, check_nonempty,
            "a non-empty string", true),
};

static const struct key_spec web_keys[] = {
    BOOL_KEY("enabled", web.enabled),
    STR_KEY("bind", web.bind, check_ip, WHAT_IP, false),
    UINT_KEY("port", web.port, 0, 65535),
    STR_KEY("admin_token_file", web.admin_token_file, check_nonempty, "a file path", true),
    STR_KEY("admin_token_env", web.admin_token_env, check_env_name,
            "an environment variable name", true),
    STR_KEY("read_token_file", web.read_token_file, check_nonempty, "a file path", true),
    STR_KEY("read_token_env", web.read_token_env, check_env_name,
            "an environment variable name", true),
    BOOL_KEY("open_health", web.open_health),
    BOOL_KEY("open_metrics", web.open_metrics),
    STR_KEY("tls_cert_file", web.tls_cert_file, check_readable_file, WHAT_FILE, true),
    STR_KEY("tls_key_file", web.tls_key_file, check_readable_file, WHAT_FILE, true),
    STR_KEY("static_dir", web.static_dir, check_nonempty, "a directory path", false),
    STR_KEY("openapi_file", web.openapi_file, check_nonempty, "a file path", false),
    UINT_KEY("max_body_bytes", web.max_body_bytes, 1024, 16777216),
};

static const struct key_spec registry_keys[] = {
    STR_KEY("path", registry.path, check_nonempty, "a file path", false),
    STR_KEY("key_file", registry.key_file, check_nonempty, "a file path", true),
    ENUM_KEY("synchronous", registry.synchronous, sync_names),
};

static const struct key_spec admission_keys[] = {
    ENUM_KEY("policy", admission.policy, policy_names),
    STR_KEY("pattern", admission.pattern, check_nonempty, "a glob pattern", false),
    {.name = "allowlist", .kind = K_STRLIST, FIELD(admission.allowlist)},
    BOOL_KEY("bind_address", admission.bind_address),
};

static const struct key_spec local_ca_keys[] = {
    STR_KEY("cert_file", provisioning.local_ca.cert_file, check_nonempty, "a file path", false),
    STR_KEY("key_file", provisioning.local_ca.key_file, check_nonempty, "a file path", false),
    BOOL_KEY("create", provisioning.local_ca.create),
    UINT_KEY("days", provisioning.local_ca.days, 1, 36500),
};

static const struct key_spec aws_keys[] = {
    STR_KEY("claim_cert_file", provisioning.aws.claim_cert_file, check_readable_file, WHAT_FILE,
            true),
    STR_KEY("claim_key_file", provisioning.aws.claim_key_file, check_readable_file, WHAT_FILE,
            true),
    STR_KEY("template_name", provisioning.aws.template_name, check_template_name,
            "a provisioning template name: 1..36 of [0-9A-Za-z_-]", true),
    ENUM_KEY("method", provisioning.aws.create_keys, method_names),
    UINT_KEY("pool_size", provisioning.aws.pool_size, 1, 64),
    STR_KEY("client_id_prefix", provisioning.aws.client_id_prefix, check_claim_prefix,
            "printable characters with no placeholder but {gateway_id}", false),
    STR_KEY("serial_parameter", provisioning.aws.serial_parameter, check_nonempty,
            "a template parameter name", false),
    {.name = "parameters", .kind = K_PARAMS, FIELD(provisioning.aws.params)},
    UINT_KEY("token_ttl_s", provisioning.aws.token_ttl_s, 1, 86400),
};

static const struct key_spec provisioning_keys[] = {
    ENUM_KEY("backend", provisioning.backend, backend_names),
    STR_KEY("thing_name_template", provisioning.thing_name_template, check_template,
            WHAT_TEMPLATE, false),
    UINT_KEY("rate_per_s", provisioning.rate_per_s, 1, 10000),
    UINT_KEY("retry_base_ms", provisioning.retry_base_ms, 10, 3600000),
    UINT_KEY("retry_cap_ms", provisioning.retry_cap_ms, 10, 86400000),
    UINT_KEY("request_timeout_ms", provisioning.request_timeout_ms, 100, 600000),
    OBJ_KEY("local_ca", local_ca_keys),
    OBJ_KEY("aws", aws_keys),
};

static const struct key_spec top_keys[] = {
    {.name = "log_level", .kind = K_LOG_LEVEL, FIELD(log_level)},
    UINT_KEY("gateway_id", gateway_id, 1, 255),
    OBJ_KEY("lan", lan_keys),
    OBJ_KEY("upstream", upstream_keys),
    OBJ_KEY("web", web_keys),
    OBJ_KEY("registry", registry_keys),
    OBJ_KEY("admission", admission_keys),
    OBJ_KEY("provisioning", provisioning_keys),
};

/* ---- value loaders ------------------------------------------------------ */

static void *slot(const struct loader *ld, const struct key_spec *ks)
{
  return (unsigned char *)ld->cfg + ks->off;
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
  uint32_t u;

  snprintf(what, sizeof what, "an integer %lu..%lu", (unsigned long)ks->min,
           (unsigned long)ks->max);
  if (!cJSON_IsNumber(v))
    return fail_expected(ld, path, what, v, NULL);
  d = v->valuedouble;
  /* The range test comes first so that the cast below is defined. */
  if (!(d >= (double)ks->min && d <= (double)ks->max) || d != (double)(uint32_t)d)
    return fail_expected(ld, path, what, v, NULL);
  u = (uint32_t)d;
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
  default:
    memcpy(slot(ld, ks), &u, 4);
    break;
  }
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

static int load_predefined(const struct loader *ld, const char *path, const cJSON *obj)
{
  struct gw_config *cfg = ld->cfg;
  char key[KEY_PATH_CAP];
  const cJSON *it;
  int n;

  if (!cJSON_IsObject(obj))
    return fail_expected(ld, path, "an object mapping topic ids to topic names", obj, NULL);
  n = cJSON_GetArraySize(obj);
  if (n == 0)
    return 0;
  cfg->lan.predefined = calloc((size_t)n, sizeof *cfg->lan.predefined);
  if (!cfg->lan.predefined)
    return fail_oom(ld);

  cJSON_ArrayForEach(it, obj) {
    struct cfg_predefined *p = &cfg->lan.predefined[cfg->lan.n_predefined];
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
    cfg->lan.n_predefined++;
  }

  /* Sorted by id so that lookups can bisect; adjacent equal ids are then
   * duplicates ("5" given twice: JSON parsers keep both). */
  qsort(cfg->lan.predefined, cfg->lan.n_predefined, sizeof *cfg->lan.predefined,
        cmp_predefined);
  for (size_t i = 1; i < cfg->lan.n_predefined; i++) {
    if (cfg->lan.predefined[i].id == cfg->lan.predefined[i - 1].id) {
      char idkey[16];
      snprintf(idkey, sizeof idkey, "%u", (unsigned)cfg->lan.predefined[i].id);
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
  if (ks->size == sizeof(bool)) {
    bool b = idx != 0;
    memcpy(slot(ld, ks), &b, sizeof b);
  } else {
    memcpy(slot(ld, ks), &idx, sizeof idx);
  }
  return 0;
}

static int load_strlist(const struct loader *ld, const char *path, const cJSON *arr)
{
  struct gw_config *cfg = ld->cfg;
  const cJSON *it;
  int n;

  if (!cJSON_IsArray(arr))
    return fail_expected(ld, path, "an array of strings", arr, NULL);
  n = cJSON_GetArraySize(arr);
  if (n == 0)
    return 0;
  cfg->admission.allowlist = calloc((size_t)n, sizeof(char *));
  if (!cfg->admission.allowlist)
    return fail_oom(ld);
  cJSON_ArrayForEach(it, arr) {
    char *copy;
    if (!cJSON_IsString(it) || it->valuestring[0] == '\0' || strlen(it->valuestring) > 255)
      return fail_expected(ld, path, "an array of non-empty strings (ClientIds or patterns)",
                           it, NULL);
    copy = strdup(it->valuestring);
    if (!copy)
      return fail_oom(ld);
    cfg->admission.allowlist[cfg->admission.n_allowlist++] = copy;
  }
  return 0;
}

static int load_params(const struct loader *ld, const char *path, const cJSON *obj)
{
  struct gw_config *cfg = ld->cfg;
  char key[KEY_PATH_CAP];
  const cJSON *it;
  int n;

  if (!cJSON_IsObject(obj))
    return fail_expected(ld, path, "an object of string parameters", obj, NULL);
  n = cJSON_GetArraySize(obj);
  if (n == 0)
    return 0;
  cfg->provisioning.aws.params = calloc((size_t)n, sizeof *cfg->provisioning.aws.params);
  if (!cfg->provisioning.aws.params)
    return fail_oom(ld);
  cJSON_ArrayForEach(it, obj) {
    struct cfg_param *p = &cfg->provisioning.aws.params[cfg->provisioning.aws.n_params];
    const char *name = it->string ? it->string : "";
    join_path(key, sizeof key, path, name);
    /* RegisterThing parameters are a flat string map (PROTOCOLS.md A.2). */
    if (!cJSON_IsString(it) || name[0] == '\0')
      return fail_expected(ld, key, "a string value", it, NULL);
    p->key = strdup(name);
    p->value = strdup(it->valuestring);
    cfg->provisioning.aws.n_params++;
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
      {
        bool b = cJSON_IsTrue(it);
        memcpy(slot(ld, ks), &b, sizeof b);
      }
      break;
    case K_STR:
      rc = load_string(ld, path, ks, it);
      break;
    case K_LOG_LEVEL: {
      int lvl = cJSON_IsString(it) ? log_level_parse(it->valuestring) : -1;
      if (lvl < 0)
        return fail_expected(ld, path,
                             "one of \"error\", \"warn\", \"info\", \"debug\", \"trace\"", it,
                             NULL);
      memcpy(slot(ld, ks), &lvl, sizeof lvl);
      break;
    }
    case K_OBJECT:
      rc = load_object(ld, path, it, ks->sub, ks->n_sub);
      break;
    case K_PREDEFINED:
      rc = load_predefined(ld, path, it);
      break;
    case K_ENUM:
      rc = load_enum(ld, path, ks, it);
      break;
    case K_STRLIST:
      rc = load_strlist(ld, path, it);
      break;
    case K_PARAMS:
      rc = load_params(ld, path, it);
      break;
    }
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* ---- defaults and cross-key rules -------------------------------------- */

static int set_defaults(const struct loader *ld)
{
  struct gw_config *cfg = ld->cfg;

  cfg->log_level = LOG_INFO;
  cfg->gateway_id = 1;

  cfg->lan.bind = strdup("0.0.0.0");
  cfg->lan.port = 1884;
  cfg->lan.recv_buffer_bytes = 4194304;
  cfg->lan.max_client_id_len = 23; /* MQTT-SN §5.3.1 */
  cfg->lan.max_leaves = 10000;
  cfg->lan.t_retry_ms = 10000;
  cfg->lan.n_retry = 3;
  cfg->lan.connack_timeout_ms = 10000;
  cfg->lan.queue_max = 100;
  cfg->lan.advertise_port = 1884;
  cfg->lan.advertise_interval_s = 900;

  cfg->upstream.port = 0; /* 0 = not given; resolved from tls in check_rules() */
  cfg->upstream.tls = true;
  cfg->upstream.client_id_template = strdup(PH_CLIENT_ID);
  cfg->upstream.keepalive_s = 60;
  cfg->upstream.clean_session = true;
  cfg->upstream.connect_timeout_ms = 10000;
  cfg->upstream.backoff_base_ms = 1000;
  cfg->upstream.backoff_cap_ms = 60000;
  cfg->upstream.give_up_after_s = 120;
  cfg->upstream.max_queue = 1000;
  cfg->upstream.max_packet = 131072 + 1024;
  cfg->upstream.max_connecting = 64;
  cfg->upstream.connect_rate_per_s = 500; /* AWS IoT: 500 CONNECTs/s per account (A.9) */

  cfg->web.enabled = true;
  cfg->web.bind = strdup("127.0.0.1");
  cfg->web.port = 8080;
  cfg->web.admin_token_file = strdup("fleetgw-admin.token");
  cfg->web.open_health = true;
  cfg->web.open_metrics = false;
  cfg->web.static_dir = strdup("/usr/share/fleetgw/web");
  cfg->web.openapi_file = strdup("/usr/share/fleetgw/openapi.json");
  cfg->web.max_body_bytes = 65536;
  cfg->registry.path = strdup("fleetgw-registry.db");
  cfg->registry.synchronous = 1;
  cfg->admission.policy = POLICY_OPEN;
  cfg->admission.pattern = strdup("*");
  cfg->admission.bind_address = true;
  cfg->provisioning.backend = BACKEND_NONE;
  cfg->provisioning.thing_name_template = strdup(PH_CLIENT_ID);
  cfg->provisioning.rate_per_s = 10;        /* AWS: RegisterThing 10 TPS (PROTOCOLS.md A.9) */
  cfg->provisioning.retry_base_ms = 2000;
  cfg->provisioning.retry_cap_ms = 300000;
  cfg->provisioning.request_timeout_ms = 30000;
  cfg->provisioning.local_ca.cert_file = strdup("fleetgw-ca.crt");
  cfg->provisioning.local_ca.key_file = strdup("fleetgw-ca.key");
  cfg->provisioning.local_ca.create = true;
  cfg->provisioning.local_ca.days = 3650;
  cfg->provisioning.aws.pool_size = 2;
  cfg->provisioning.aws.client_id_prefix = strdup("fleetgw-{gateway_id}-claim-");
  cfg->provisioning.aws.serial_parameter = strdup("SerialNumber");
  cfg->provisioning.aws.token_ttl_s = 3600; /* the ownership token's life (A.4) */

  if (!cfg->web.bind || !cfg->web.admin_token_file || !cfg->web.static_dir ||
      !cfg->web.openapi_file)
    return fail_oom(ld);
  if (!cfg->lan.bind || !cfg->upstream.client_id_template || !cfg->registry.path ||
      !cfg->admission.pattern || !cfg->provisioning.thing_name_template ||
      !cfg->provisioning.local_ca.cert_file || !cfg->provisioning.local_ca.key_file ||
      !cfg->provisioning.aws.client_id_prefix || !cfg->provisioning.aws.serial_parameter)
    return fail_oom(ld);
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
  if (cfg->upstream.port == 0)
    cfg->upstream.port = cfg->upstream.tls ? 8883 : 1883;
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
  if (!cfg->registry.key_file) {
    size_t n = strlen(cfg->registry.path) + 5;
    cfg->registry.key_file = malloc(n);
    if (!cfg->registry.key_file)
      return fail_oom(ld);
    snprintf(cfg->registry.key_file, n, "%s.key", cfg->registry.path);
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
  if (set_defaults(&ld) != 0)
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
  if (check_rules(&ld) != 0)
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

static void wipe_free(char *secret)
{
  if (secret) {
    volatile char *p = secret;
    while (*p)
      *p++ = '\0';
    free(secret);
  }
}

void cfg_free(struct gw_config *cfg)
{
  if (!cfg)
    return;
  free(cfg->path);
  free(cfg->lan.bind);
  free(cfg->lan.advertise_address);
  for (size_t i = 0; i < cfg->lan.n_predefined; i++)
    free(cfg->lan.predefined[i].topic);
  free(cfg->lan.predefined);
  free(cfg->upstream.host);
  free(cfg->upstream.ca_file);
  free(cfg->upstream.cert_file);
  free(cfg->upstream.key_file);
  free(cfg->upstream.cert_dir);
  free(cfg->upstream.alpn);
  free(cfg->upstream.client_id_template);
  free(cfg->upstream.username);
  if (cfg->upstream.password) {
    /* Do not leave the secret in freed heap memory; volatile keeps the
     * compiler from dropping the stores as dead. */
    volatile char *p = cfg->upstream.password;
    while (*p)
      *p++ = '\0';
    free(cfg->upstream.password);
  }
  free(cfg->upstream.password_env);
  free(cfg->upstream.qos_m1_client_id);
  free(cfg->web.bind);
  free(cfg->web.admin_token_file);
  free(cfg->web.admin_token_env);
  free(cfg->web.read_token_file);
  free(cfg->web.read_token_env);
  free(cfg->web.tls_cert_file);
  free(cfg->web.tls_key_file);
  free(cfg->web.static_dir);
  free(cfg->web.openapi_file);
  wipe_free(cfg->web.admin_token);
  wipe_free(cfg->web.read_token);
  free(cfg->registry.path);
  free(cfg->registry.key_file);
  free(cfg->admission.pattern);
  for (size_t i = 0; i < cfg->admission.n_allowlist; i++)
    free(cfg->admission.allowlist[i]);
  free(cfg->admission.allowlist);
  free(cfg->provisioning.thing_name_template);
  free(cfg->provisioning.local_ca.cert_file);
  free(cfg->provisioning.local_ca.key_file);
  free(cfg->provisioning.aws.claim_cert_file);
  free(cfg->provisioning.aws.claim_key_file);
  free(cfg->provisioning.aws.template_name);
  free(cfg->provisioning.aws.client_id_prefix);
  free(cfg->provisioning.aws.serial_parameter);
  for (size_t i = 0; i < cfg->provisioning.aws.n_params; i++) {
    free(cfg->provisioning.aws.params[i].key);
    free(cfg->provisioning.aws.params[i].value);
  }
  free(cfg->provisioning.aws.params);
  free(cfg);
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
