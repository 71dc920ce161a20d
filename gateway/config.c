/*
 * config.c - load the gateway's JSON configuration: cfg_load(), cfg_free(),
 * the one-line error messages, and the template expansions of config.h.
 *
 * The loader is table-driven: every object level of the file has a table of
 * its known keys (name, kind, where the value goes in struct gw_config, its
 * range or validator, its default; config_keys.c).  One generic walker
 * (config_walk.c) applies a table to a JSON object, so "unknown key",
 * "duplicate key" and "wrong type" are reported the same way at every level;
 * other walks over the same tables set the defaults, free the config and
 * list the keys for README.md's check.  Defaults that depend on other keys
 * and checks that involve several keys (host required, CA required with TLS,
 * certificate pairing, the password variable) run once the whole file has
 * been read (config_rules.c).
 *
 * Every error is one line: "<file>: <key path>: expected <what>, got <what>".
 */
#include "config_int.h"

#include "secret.h"

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

/* ---- error reporting ---------------------------------------------------- */

/* True when errs holds an error for key: its lines start "<file>: <key>: ". */
static bool key_has_error(const struct loader *ld, const char *key)
{
  size_t fl = strlen(ld->file), kl = strlen(key);
  for (size_t i = 0; i < ld->errs->n; i++) {
    const char *l = ld->errs->line[i];
    if (strncmp(l, ld->file, fl) == 0 && strncmp(l + fl, ": ", 2) == 0 &&
        strncmp(l + fl + 2, key, kl) == 0 && strncmp(l + fl + 2 + kl, ": ", 2) == 0)
      return true;
  }
  return false;
}

int cfgi_fail(const struct loader *ld, const char *key, const char *fmt, ...)
{
  struct cfg_errors *e = ld->errs;
  va_list ap;
  char *line;
  int n;

  if (key && key_has_error(ld, key))
    return -1;
  if (e->n >= CFG_MAX_ERRORS) {
    e->dropped++;
    return -1;
  }
  line = e->line[e->n++];
  if (key)
    n = snprintf(line, CFG_ERROR_LEN, "%s: %s: ", ld->file, key);
  else
    n = snprintf(line, CFG_ERROR_LEN, "%s: ", ld->file);
  if (n >= 0 && (size_t)n < CFG_ERROR_LEN) {
    va_start(ap, fmt);
    vsnprintf(line + n, CFG_ERROR_LEN - (size_t)n, fmt, ap);
    va_end(ap);
  }
  /* The message must stay one line whatever the file or key contained. */
  for (char *p = line; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      *p = '?';
  return -1;
}

/* Writes s quoted, control characters replaced and long strings cut. */
void cfgi_describe_str(const char *s, char *buf, size_t cap)
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
void cfgi_describe(const cJSON *v, char *buf, size_t cap)
{
  if (!v) {
    snprintf(buf, cap, "nothing");
  } else if (cJSON_IsString(v)) {
    cfgi_describe_str(v->valuestring, buf, cap);
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

int cfgi_fail_expected(const struct loader *ld, const char *key, const char *what,
                       const cJSON *got, const char *why)
{
  char g[80];
  cfgi_describe(got, g, sizeof g);
  if (why)
    return cfgi_fail(ld, key, "expected %s, got %s (%s)", what, g, why);
  return cfgi_fail(ld, key, "expected %s, got %s", what, g);
}

int cfgi_fail_oom(const struct loader *ld)
{
  *ld->oom = true;
  return cfgi_fail(ld, NULL, "out of memory while loading the configuration");
}

/* out = prefix.key (or key at the top level), truncated to fit: a cut-off
 * path still identifies the key well enough, and hostile keys can be long.
 * Copied by hand because gcc -O2 flags every possibly-truncating snprintf. */
void cfgi_join_path(char *out, size_t cap, const char *prefix, const char *key)
{
  size_t n = 0;
  const char *parts[3] = {prefix, prefix[0] ? "." : "", key};

  for (size_t p = 0; p < 3; p++)
    for (const char *c = parts[p]; *c && n + 1 < cap; c++)
      out[n++] = *c;
  out[n] = '\0';
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
    return cfgi_fail(ld, NULL, "cannot open: %s", strerror(errno));
  if (fstat(fd, &st) != 0) {
    cfgi_fail(ld, NULL, "cannot stat: %s", strerror(errno));
    goto close_fd;
  }
  if (S_ISDIR(st.st_mode)) {
    cfgi_fail(ld, NULL, "expected a JSON file, got a directory");
    goto close_fd;
  }
  if (S_ISREG(st.st_mode) && st.st_size > (off_t)MAX_FILE_BYTES) {
    cfgi_fail(ld, NULL, "expected a file of at most 1 MiB, got %lld bytes",
              (long long)st.st_size);
    goto close_fd;
  }
  /* One byte more than the limit tells "exactly 1 MiB" from "too big", even
   * for files whose size stat() does not know (pipes). */
  buf = malloc(MAX_FILE_BYTES + 1);
  if (!buf) {
    cfgi_fail_oom(ld);
    goto close_fd;
  }
  for (;;) {
    ssize_t k = read(fd, buf + n, MAX_FILE_BYTES + 1 - n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      cfgi_fail(ld, NULL, "cannot read: %s", strerror(errno));
      goto free_buf;
    }
    if (k == 0)
      break;
    n += (size_t)k;
    if (n > MAX_FILE_BYTES) {
      cfgi_fail(ld, NULL, "expected a file of at most 1 MiB, got more");
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
    return cfgi_fail(ld, NULL,
                     "line %zu, column %zu: JSON syntax error: unexpected end of input", line,
                     col);
  for (size_t i = pos; i < len && buf[i] != '\n' && k < sizeof near - 1; i++)
    near[k++] = (unsigned char)buf[i] < 0x20 ? '?' : buf[i];
  near[k] = '\0';
  return cfgi_fail(ld, NULL, "line %zu, column %zu: JSON syntax error near '%s'", line, col,
                   near);
}

/* Reads and parses the file: its JSON object, or NULL (the error written). */
static cJSON *parse_file(const struct loader *ld)
{
  const char *end = NULL, *nul;
  cJSON *root = NULL;
  char *buf = NULL, got[80];
  size_t len = 0;

  if (read_whole_file(ld, &buf, &len) != 0)
    return NULL;
  nul = memchr(buf, '\0', len);
  if (nul) {
    cfgi_fail(ld, NULL, "expected a JSON text, got a NUL byte at offset %zu",
              (size_t)(nul - buf));
    goto out;
  }
  /* With require_null_terminated cJSON insists on seeing the NUL inside the
   * given length; that is what rejects trailing garbage after the object.
   * The buffer has room for it: len <= MAX_FILE_BYTES. */
  buf[len] = '\0';
  root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
  if (!root) {
    fail_syntax(ld, buf, len, end);
  } else if (!cJSON_IsObject(root)) {
    cfgi_describe(root, got, sizeof got);
    cfgi_fail(ld, NULL, "expected a JSON object at the top level, got %s", got);
    cJSON_Delete(root);
    root = NULL;
  }
out:
  free(buf);
  return root;
}

/* ---- public API --------------------------------------------------------- */

int cfg_load_all(const char *path, struct gw_config **out, struct cfg_errors *errs)
{
  bool oom = false;
  struct loader ld = {.file = path ? path : "(null)", .errs = errs, .oom = &oom};
  cJSON *root;
  int rc = -1;

  if (!errs)
    return -1;
  errs->n = errs->dropped = 0;
  if (!out || !path)
    return cfgi_fail(&ld, NULL, "cfg_load: no path or no output pointer");
  *out = NULL;

  ld.cfg = calloc(1, sizeof *ld.cfg);
  if (!ld.cfg)
    return cfgi_fail_oom(&ld);
  ld.cfg->path = strdup(path);
  if (!ld.cfg->path) {
    cfgi_fail_oom(&ld);
    goto out;
  }
  if (cfgi_set_defaults(&ld, cfgi_top_keys, cfgi_n_top_keys) != 0)
    goto out;
  root = parse_file(&ld);
  if (!root)
    goto out;
  /* Every key is looked at, then every rule, so that one run names all
   * that is wrong; out of memory ends it at once. */
  cfgi_load_object(&ld, "", root, cfgi_top_keys, cfgi_n_top_keys);
  if (!oom && cfgi_derive_defaults(&ld) == 0)
    cfgi_check_rules(&ld);
  if (errs->n == 0)
    rc = 0;
  cJSON_Delete(root);
out:
  if (rc == 0)
    *out = ld.cfg;
  else
    cfg_free(ld.cfg);
  return rc;
}

int cfg_load(const char *path, struct gw_config **out, char *err, size_t errlen)
{
  struct cfg_errors *errs = malloc(sizeof *errs);
  int rc;

  if (err && errlen)
    err[0] = '\0';
  if (!errs) {
    if (err && errlen)
      snprintf(err, errlen, "%s: out of memory while loading the configuration",
               path ? path : "(null)");
    if (out)
      *out = NULL;
    return -1;
  }
  rc = cfg_load_all(path, out, errs);
  if (rc != 0 && err && errlen) {
    /* The first error, cut to errlen: the caller's buffer is a summary. */
    const char *first = errs->n ? errs->line[0] : "invalid configuration";
    size_t len = strnlen(first, errlen - 1);

    memcpy(err, first, len);
    err[len] = '\0';
  }
  free(errs);
  return rc;
}

/* Frees what the keys of specs own: strings (secrets wiped first) and lists. */
static void free_keys(struct gw_config *cfg, const struct key_spec *specs, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    const struct key_spec *ks = &specs[i];
    void *p = cfgi_field_at(cfg, ks->off);

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
      for (size_t j = 0; j < *cfgi_count_at(cfg, ks); j++)
        free(list[j].topic);
      free(list);
      break;
    }
    case K_STRLIST: {
      char **list = *(char ***)p;
      for (size_t j = 0; j < *cfgi_count_at(cfg, ks); j++)
        free(list[j]);
      free(list);
      break;
    }
    case K_PARAMS: {
      struct cfg_param *list = *(struct cfg_param **)p;
      for (size_t j = 0; j < *cfgi_count_at(cfg, ks); j++) {
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
  free_keys(cfg, cfgi_top_keys, cfgi_n_top_keys);
  free_keys(cfg, cfgi_owned_fields, cfgi_n_owned_fields);
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


/* ---- reload (SIGHUP) ---------------------------------------------------- */

/* The keys a running gateway takes a new value of (README.md, "Running it").
 * Each is read where it is used, not copied at start:
 *   log_level                  the log's threshold
 *   admission.policy, .pattern, .bind_address, .plain_udp,
 *   .plain_udp_clients         at each CONNECT (admission.c)
 *   admission.allowlist        new entries are added to the registry (the
 *                              registry's allowlist is also the API's, so an
 *                              entry removed from the file stays there)
 *   admission.pending_ttl_s, .max_pending   the upkeep and each new identity
 *   admission.new_ids*         the buckets' limits (leaves_set_newid via
 *                              gw_reload); admission.sources_tracked, the
 *                              table's size, stays
 *   lan.max_keepalive_s        at each CONNECT
 *   outbox.rate_per_leaf, .rate_total       at each send (token buckets)
 *   registry.audit_max_rows, .audit_max_days, .max_bytes, .min_free_bytes
 *                              the upkeep's next pass
 *   provisioning.expiry_warn_days           the upkeep's next pass
 *   web.admin_token_env, .admin_token_file, .read_token_env, .read_token_file
 *                              the tokens are read again from them
 * Everything else (sockets, TLS contexts, the registry file, the limits
 * sized at start such as the new-identity table and the converter list)
 * needs a restart. */
static const char *const live_keys[] = {
    "log_level",
    "admission.policy",
    "admission.pattern",
    "admission.allowlist",
    "admission.bind_address",
    "admission.plain_udp",
    "admission.plain_udp_clients",
    "admission.pending_ttl_s",
    "admission.max_pending",
    "admission.new_ids",
    "admission.new_ids_window_s",
    "admission.new_ids_per_port",
    "admission.new_ids_per_port_window_s",
    "admission.new_ids_per_ip",
    "admission.new_ids_per_ip_window_s",
    "admission.new_ids_per_converter",
    "admission.new_ids_per_converter_window_s",
    "lan.max_keepalive_s",
    "outbox.rate_per_leaf",
    "outbox.rate_total",
    "registry.audit_max_rows",
    "registry.audit_max_days",
    "registry.max_bytes",
    "registry.min_free_bytes",
    "provisioning.expiry_warn_days",
    "web.admin_token_env",
    "web.admin_token_file",
    "web.read_token_env",
    "web.read_token_file",
};

bool cfg_key_live(const char *path)
{
  if (!path)
    return false;
  for (size_t i = 0; i < sizeof live_keys / sizeof live_keys[0]; i++)
    if (strcmp(live_keys[i], path) == 0)
      return true;
  return false;
}

size_t cfg_reload(struct gw_config *live, struct gw_config *fresh, char *applied, size_t acap,
                  char *restart, size_t rcap)
{
  char *t;

  if (!applied || !restart || acap == 0 || rcap == 0)
    return 0;
  applied[0] = restart[0] = '\0';
  if (!live || !fresh)
    return 0;
  /* The tokens from the variables are taken as loaded now; the variables of
   * a running process do not change, but the keys naming them may. */
  t = live->web.admin_token;
  live->web.admin_token = fresh->web.admin_token;
  fresh->web.admin_token = t;
  t = live->web.read_token;
  live->web.read_token = fresh->web.read_token;
  fresh->web.read_token = t;
  return cfgi_reload_keys(live, fresh, "", cfgi_top_keys, cfgi_n_top_keys, applied, acap,
                          restart, rcap);
}
