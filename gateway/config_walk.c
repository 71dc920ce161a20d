/*
 * config_walk.c - applies a key table (config_keys.c): to a JSON object of
 * the file, key by key, so that "unknown key", "duplicate key" and "wrong
 * type" are reported the same way at every level, and to a fresh config for
 * the defaults.
 */
#include "config_int.h"

#include "topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- value loaders ------------------------------------------------------ */

static void *slot(const struct loader *ld, const struct key_spec *ks)
{
  return cfgi_field_at(ld->cfg, ks->off);
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
    return cfgi_fail_expected(ld, path, what, v, NULL);
  d = v->valuedouble;
  /* The range test comes first so that the cast below is defined; every
   * max is at most JSON_INT_MAX, so the double holds the integer exactly. */
  if (!(d >= (double)ks->min && d <= (double)ks->max) || d != (double)(uint64_t)d)
    return cfgi_fail_expected(ld, path, what, v, NULL);
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
    return cfgi_fail_expected(ld, path, ks->expect, v, NULL);
  if (!(ks->check ? ks->check(v->valuestring, &why) : v->valuestring[0] != '\0'))
    return cfgi_fail_expected(ld, path, ks->expect, v, why);
  copy = strdup(v->valuestring);
  if (!copy)
    return cfgi_fail_oom(ld);
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

/* The start of every list key: v must be a JSON object (or array, as
 * is_object says), and the list at ks's slot gets room for its elements,
 * each elem_size bytes.  Returns their number, or -1. */
static int list_start(const struct loader *ld, const char *path, const struct key_spec *ks,
                      const cJSON *v, bool is_object, const char *what, size_t elem_size)
{
  void *mem;
  int n;

  if (is_object ? !cJSON_IsObject(v) : !cJSON_IsArray(v))
    return cfgi_fail_expected(ld, path, what, v, NULL);
  n = cJSON_GetArraySize(v);
  if (n == 0)
    return 0;
  mem = calloc((size_t)n, elem_size);
  if (!mem)
    return cfgi_fail_oom(ld);
  memcpy(slot(ld, ks), &mem, sizeof mem);
  return n;
}

static int load_predefined(const struct loader *ld, const char *path, const struct key_spec *ks,
                           const cJSON *obj)
{
  struct cfg_predefined **list = slot(ld, ks);
  size_t *count = cfgi_count_at(ld->cfg, ks);
  char key[KEY_PATH_CAP];
  const cJSON *it;
  int n = list_start(ld, path, ks, obj, true, "an object mapping topic ids to topic names",
                     sizeof **list);

  if (n <= 0)
    return n;
  cJSON_ArrayForEach(it, obj) {
    struct cfg_predefined *p = &(*list)[*count];
    const char *name = it->string ? it->string : "";

    cfgi_join_path(key, sizeof key, path, name);
    if (parse_topic_id(name, &p->id) != 0) {
      char got[80];
      cfgi_describe_str(name, got, sizeof got);
      return cfgi_fail(ld, key, "expected a topic id \"1\"..\"65534\" as the key, got %s", got);
    }
    if (!cJSON_IsString(it) ||
        !topic_name_is_valid(it->valuestring, strlen(it->valuestring)))
      return cfgi_fail_expected(ld, key, "a valid MQTT topic name without wildcards", it, NULL);
    p->topic = strdup(it->valuestring);
    if (!p->topic)
      return cfgi_fail_oom(ld);
    (*count)++;
  }

  /* Sorted by id so that lookups can bisect; adjacent equal ids are then
   * duplicates ("5" given twice: JSON parsers keep both). */
  qsort(*list, *count, sizeof **list, cmp_predefined);
  for (size_t i = 1; i < *count; i++) {
    if ((*list)[i].id == (*list)[i - 1].id) {
      char idkey[16];
      snprintf(idkey, sizeof idkey, "%u", (unsigned)(*list)[i].id);
      cfgi_join_path(key, sizeof key, path, idkey);
      return cfgi_fail(ld, key, "duplicate topic id");
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
    return cfgi_fail_expected(ld, path, what, v, NULL);
  store_enum(ld, ks, idx);
  return 0;
}

static int load_strlist(const struct loader *ld, const char *path, const struct key_spec *ks,
                        const cJSON *arr)
{
  char ***list = slot(ld, ks);
  size_t *count = cfgi_count_at(ld->cfg, ks);
  const cJSON *it;
  int n = list_start(ld, path, ks, arr, false, ks->expect, sizeof **list);

  if (n <= 0)
    return n;
  cJSON_ArrayForEach(it, arr) {
    const char *why = NULL;
    char *copy;
    if (!cJSON_IsString(it) || it->valuestring[0] == '\0' || strlen(it->valuestring) > 255 ||
        (ks->check && !ks->check(it->valuestring, &why)))
      return cfgi_fail_expected(ld, path, ks->expect, it, why);
    copy = strdup(it->valuestring);
    if (!copy)
      return cfgi_fail_oom(ld);
    (*list)[(*count)++] = copy;
  }
  return 0;
}

static int load_params(const struct loader *ld, const char *path, const struct key_spec *ks,
                       const cJSON *obj)
{
  struct cfg_param **list = slot(ld, ks);
  size_t *count = cfgi_count_at(ld->cfg, ks);
  char key[KEY_PATH_CAP];
  const cJSON *it;
  int n = list_start(ld, path, ks, obj, true, "an object of string parameters", sizeof **list);

  if (n <= 0)
    return n;
  cJSON_ArrayForEach(it, obj) {
    struct cfg_param *p = &(*list)[*count];
    const char *name = it->string ? it->string : "";
    cfgi_join_path(key, sizeof key, path, name);
    /* RegisterThing parameters are a flat string map (docs/protocol-notes.md §5.2). */
    if (!cJSON_IsString(it) || name[0] == '\0')
      return cfgi_fail_expected(ld, key, "a string value", it, NULL);
    p->key = strdup(name);
    p->value = strdup(it->valuestring);
    (*count)++;
    if (!p->key || !p->value)
      return cfgi_fail_oom(ld);
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
    return cfgi_fail(ld, path, "unknown key (did you mean \"%s\"?)", best);
  list[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    int k = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", specs[i].name);
    if (k < 0 || (size_t)k >= sizeof list - used)
      break;
    used += (size_t)k;
  }
  return cfgi_fail(ld, path, "unknown key (expected one of: %s)", list);
}

/* Loads the value v of key ks (at path) according to its kind. */
static int load_value(const struct loader *ld, const char *path, const struct key_spec *ks,
                      const cJSON *v)
{
  switch (ks->kind) {
  case K_UINT:
    return load_uint(ld, path, ks, v);
  case K_BOOL:
    if (!cJSON_IsBool(v))
      return cfgi_fail_expected(ld, path, "true or false", v, NULL);
    store_bool(ld, ks, cJSON_IsTrue(v));
    return 0;
  case K_STR:
    return load_string(ld, path, ks, v);
  case K_OBJECT:
    return cfgi_load_object(ld, path, v, ks->sub, ks->n_sub);
  case K_PREDEFINED:
    return load_predefined(ld, path, ks, v);
  case K_ENUM:
    return load_enum(ld, path, ks, v);
  case K_STRLIST:
    return load_strlist(ld, path, ks, v);
  case K_PARAMS:
    return load_params(ld, path, ks, v);
  }
  return 0;
}

int cfgi_load_object(const struct loader *ld, const char *prefix, const cJSON *obj,
                     const struct key_spec *specs, size_t n)
{
  bool seen[32] = {false};
  char path[KEY_PATH_CAP];
  const cJSON *it;
  int result = 0;

  if (!cJSON_IsObject(obj))
    return cfgi_fail_expected(ld, prefix, "an object", obj, NULL);

  cJSON_ArrayForEach(it, obj) {
    const char *name = it->string ? it->string : "";
    const struct key_spec *ks = NULL;
    size_t idx = 0;
    int rc;

    cfgi_join_path(path, sizeof path, prefix, name);
    for (idx = 0; idx < n; idx++) {
      if (strcmp(specs[idx].name, name) == 0) {
        ks = &specs[idx];
        break;
      }
    }
    /* An error is recorded and the walk goes on with the next key, so that
     * every wrong key is reported; out of memory stops it. */
    if (!ks) {
      result = fail_unknown(ld, path, name, specs, n);
      continue;
    }
    /* cJSON keeps both copies of a repeated key; silently taking one would
     * hide an editing mistake. */
    if (idx < sizeof seen / sizeof seen[0]) {
      if (seen[idx]) {
        result = cfgi_fail(ld, path, "duplicate key");
        continue;
      }
      seen[idx] = true;
    }
    rc = load_value(ld, path, ks, it);
    if (rc != 0) {
      result = rc;
      if (*ld->oom)
        return rc;
    }
  }
  return result;
}

/* ---- defaults ----------------------------------------------------------- */

/* Gives every key its default from the tables, before the file is read (the
 * file's keys then replace them).  Lists start empty: the config is calloc'd. */
int cfgi_set_defaults(const struct loader *ld, const struct key_spec *specs, size_t n)
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
          return cfgi_fail_oom(ld);
        set_string(slot(ld, ks), copy);
      }
      break;
    case K_OBJECT:
      if (cfgi_set_defaults(ld, ks->sub, ks->n_sub) != 0)
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


/* ---- reload (SIGHUP) ---------------------------------------------------- */

static bool str_eq(const char *a, const char *b)
{
  return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* True when key ks holds the same value in a and b (objects: not compared
 * here, their keys are). */
static bool same_value(const struct gw_config *a, const struct gw_config *b,
                       const struct key_spec *ks)
{
  const void *pa = cfgi_field_at((struct gw_config *)a, ks->off);
  const void *pb = cfgi_field_at((struct gw_config *)b, ks->off);
  size_t na, nb;

  switch (ks->kind) {
  case K_UINT:
  case K_ENUM:
    return memcmp(pa, pb, ks->size) == 0;
  case K_BOOL:
    return memcmp(pa, pb, sizeof(bool)) == 0;
  case K_STR:
    return str_eq(*(char *const *)pa, *(char *const *)pb);
  case K_OBJECT:
    return true;
  case K_PREDEFINED:
  case K_STRLIST:
  case K_PARAMS:
    break;
  }
  na = *cfgi_count_at((struct gw_config *)a, ks);
  nb = *cfgi_count_at((struct gw_config *)b, ks);
  if (na != nb)
    return false;
  for (size_t i = 0; i < na; i++) {
    if (ks->kind == K_STRLIST) {
      if (!str_eq((*(char **const *)pa)[i], (*(char **const *)pb)[i]))
        return false;
    } else if (ks->kind == K_PREDEFINED) {
      const struct cfg_predefined *x = *(struct cfg_predefined *const *)pa;
      const struct cfg_predefined *y = *(struct cfg_predefined *const *)pb;
      if (x[i].id != y[i].id || !str_eq(x[i].topic, y[i].topic))
        return false;
    } else {
      const struct cfg_param *x = *(struct cfg_param *const *)pa;
      const struct cfg_param *y = *(struct cfg_param *const *)pb;
      if (!str_eq(x[i].key, y[i].key) || !str_eq(x[i].value, y[i].value))
        return false;
    }
  }
  return true;
}

/* Swaps n bytes at a and b. */
static void swap_bytes(void *a, void *b, size_t n)
{
  unsigned char t[sizeof(uint64_t)];
  while (n > 0) {
    size_t k = n < sizeof t ? n : sizeof t;
    memcpy(t, a, k);
    memcpy(a, b, k);
    memcpy(b, t, k);
    a = (unsigned char *)a + k;
    b = (unsigned char *)b + k;
    n -= k;
  }
}

/* Swaps the value of key ks between a and b (with its count for lists). */
static void swap_value(struct gw_config *a, struct gw_config *b, const struct key_spec *ks)
{
  void *pa = cfgi_field_at(a, ks->off), *pb = cfgi_field_at(b, ks->off);

  switch (ks->kind) {
  case K_UINT:
  case K_ENUM:
    swap_bytes(pa, pb, ks->size);
    break;
  case K_BOOL:
    swap_bytes(pa, pb, sizeof(bool));
    break;
  case K_STR:
    swap_bytes(pa, pb, sizeof(char *));
    break;
  case K_PREDEFINED:
  case K_STRLIST:
  case K_PARAMS:
    swap_bytes(pa, pb, sizeof(void *));
    swap_bytes(cfgi_count_at(a, ks), cfgi_count_at(b, ks), sizeof(size_t));
    break;
  case K_OBJECT:
    break;
  }
}

/* Appends ", path" (or "path" first) to list[cap], cut to fit. */
static void list_add(char *list, size_t cap, const char *path)
{
  size_t n = strlen(list);
  if (n > 0 && n + 2 < cap) {
    memcpy(list + n, ", ", 2);
    n += 2;
    list[n] = '\0';
  }
  for (const char *c = path; *c && n + 1 < cap; c++)
    list[n++] = *c;
  list[n] = '\0';
}

size_t cfgi_reload_keys(struct gw_config *live, struct gw_config *fresh, const char *prefix,
                        const struct key_spec *specs, size_t n, char *applied, size_t acap,
                        char *restart, size_t rcap)
{
  char path[KEY_PATH_CAP];
  size_t moved = 0;

  for (size_t i = 0; i < n; i++) {
    const struct key_spec *ks = &specs[i];

    cfgi_join_path(path, sizeof path, prefix, ks->name);
    if (ks->kind == K_OBJECT) {
      moved += cfgi_reload_keys(live, fresh, path, ks->sub, ks->n_sub, applied, acap, restart,
                                rcap);
      continue;
    }
    if (same_value(live, fresh, ks))
      continue;
    if (cfg_key_live(path)) {
      swap_value(live, fresh, ks);
      list_add(applied, acap, path);
      moved++;
    } else {
      list_add(restart, rcap, path);
    }
  }
  return moved;
}
