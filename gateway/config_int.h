/*
 * config_int.h - what the parts of the configuration loader share; internal
 * to gateway/ (nothing outside gateway/config*.c includes it).
 *
 *   config.c        cfg_load(), cfg_free(), the error messages, the template
 *                   expansions (the public API of config.h)
 *   config_keys.c   the key tables, the one list of keys and their defaults,
 *                   and cfg_key_count()/cfg_key_at() for README.md's check
 *   config_walk.c   applies a key table: to a JSON object, and to a fresh
 *                   config for the defaults
 *   config_rules.c  the value checks the tables name, the defaults and rules
 *                   that involve several keys, cfg_warnings()
 */
#ifndef FLEETGW_CONFIG_INT_H
#define FLEETGW_CONFIG_INT_H

#include "config.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
 * (cfg_key_at()) all walk them, so a new key is one line in config_keys.c. */
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
  struct cfg_errors *errs;     /* every error (cfgi_fail appends) */
  bool *oom;                   /* set by cfgi_fail_oom: stop at once */
  struct gw_config *cfg;
};


/* The placeholders of upstream.client_id_template, thing_name_template and
 * the claim client id prefix. */
#define PH_CLIENT_ID "{client_id}"
#define PH_GATEWAY_ID "{gateway_id}"

/* The packaged layout of the web files (the defaults of web.static_dir and
 * web.openapi_file; cfg_web_path() looks elsewhere when they are absent). */
#define CFG_DEFAULT_STATIC_DIR "/usr/share/fleetgw/web"
#define CFG_DEFAULT_OPENAPI_FILE "/usr/share/fleetgw/openapi.json"

/* The "expected ..." texts more than one part uses. */
#define WHAT_FILE "a readable file"
#define WHAT_HOST "a host name or IP address"

static inline void *cfgi_field_at(const struct gw_config *cfg, size_t off)
{
  return (unsigned char *)cfg + off;
}

/* The element count of a list key (K_PREDEFINED, K_STRLIST, K_PARAMS). */
static inline size_t *cfgi_count_at(const struct gw_config *cfg, const struct key_spec *ks)
{
  return cfgi_field_at(cfg, ks->count_off);
}

/* ---- config_keys.c ---- */

extern const struct key_spec cfgi_top_keys[];
extern const size_t cfgi_n_top_keys;
/* Strings the loader fills in from elsewhere than a key of the file. */
extern const struct key_spec cfgi_owned_fields[];
extern const size_t cfgi_n_owned_fields;

/* ---- config.c: errors ---- */

/* Appends "<file>: <key>: <message>" (or "<file>: <message>" when key is
 * NULL) to the loader's errors, as one line, unless key already has an error
 * (one error per key); returns -1. */
int cfgi_fail(const struct loader *ld, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "expected <what>, got <v>" plus " (<why>)" when why is not NULL. */
int cfgi_fail_expected(const struct loader *ld, const char *key, const char *what,
                       const cJSON *got, const char *why);
int cfgi_fail_oom(const struct loader *ld);
/* A short, printable rendering of a string or a JSON value. */
void cfgi_describe_str(const char *s, char *buf, size_t cap);
void cfgi_describe(const cJSON *v, char *buf, size_t cap);
/* out = prefix.key (or key when prefix is ""), cut to fit cap. */
void cfgi_join_path(char *out, size_t cap, const char *prefix, const char *key);

/* ---- config_walk.c ---- */

/* Gives every key of specs its default; 0 or -1 (out of memory). */
int cfgi_set_defaults(const struct loader *ld, const struct key_spec *specs, size_t n);
/* Applies the table specs to the JSON object obj found at prefix. */
int cfgi_load_object(const struct loader *ld, const char *prefix, const cJSON *obj,
                     const struct key_spec *specs, size_t n);
/* cfg_reload()'s walk: compares the keys of specs (at prefix) between live
 * and fresh, moves the differing live ones (cfg_key_live) into live and
 * lists the paths in applied or restart; returns how many it moved. */
size_t cfgi_reload_keys(struct gw_config *live, struct gw_config *fresh, const char *prefix,
                        const struct key_spec *specs, size_t n, char *applied, size_t acap,
                        char *restart, size_t rcap);

/* ---- config_rules.c ---- */

/* The value checks the key tables name (str_check_fn). */
bool cfgi_check_nonempty(const char *s, const char **why);
bool cfgi_check_host(const char *s, const char **why);
bool cfgi_check_ip(const char *s, const char **why);
bool cfgi_check_readable_file(const char *s, const char **why);
bool cfgi_check_dir(const char *s, const char **why);
bool cfgi_check_template(const char *s, const char **why);
bool cfgi_check_env_name(const char *s, const char **why);
bool cfgi_check_alpn(const char *s, const char **why);
bool cfgi_check_claim_prefix(const char *s, const char **why);
bool cfgi_check_template_name(const char *s, const char **why);
/* Once the whole file is read: the defaults that depend on other keys, then
 * the rules that involve several keys (and the secrets they name). */
int cfgi_derive_defaults(const struct loader *ld);
int cfgi_check_rules(const struct loader *ld);

#endif
