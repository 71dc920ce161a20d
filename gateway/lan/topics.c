#include "topics.h"

#include "config.h"

#include <stdlib.h>
#include <string.h>

void topics_init(struct topics *t)
{
  memset(t, 0, sizeof *t);
  t->next_id = 1;
}

void topics_clear(struct topics *t)
{
  for (uint32_t i = 0; i < t->n; i++)
    free(t->v[i].name);
  t->n = 0;
  t->next_id = 1;
}

void topics_free(struct topics *t)
{
  topics_clear(t);
  free(t->v);
  t->v = NULL;
  t->cap = 0;
}

struct topic_entry *topics_by_name(struct topics *t, const char *name, size_t len)
{
  for (uint32_t i = 0; i < t->n; i++)
    if (t->v[i].len == len && memcmp(t->v[i].name, name, len) == 0)
      return &t->v[i];
  return NULL;
}

struct topic_entry *topics_by_id(struct topics *t, uint16_t id)
{
  for (uint32_t i = 0; i < t->n; i++)
    if (t->v[i].id == id)
      return &t->v[i];
  return NULL;
}

/* The next free id, skipping the reserved 0x0000 and 0xFFFF. */
static uint16_t alloc_id(struct topics *t)
{
  for (;;) {
    uint16_t id = t->next_id++;
    if (t->next_id == 0xFFFF)
      t->next_id = 1;
    if (id != 0 && id != 0xFFFF && !topics_by_id(t, id))
      return id;
  }
}

struct topic_entry *topics_add(struct topics *t, const char *name, size_t len)
{
  struct topic_entry *e = topics_by_name(t, name, len);
  if (e)
    return e;
  if (len == 0 || len > 0xFFFF || t->n >= TOPICS_MAX)
    return NULL;
  if (t->n == t->cap) {
    uint32_t ncap = t->cap ? t->cap * 2 : 4;
    struct topic_entry *nv = realloc(t->v, ncap * sizeof *nv);
    if (!nv)
      return NULL;
    t->v = nv;
    t->cap = ncap;
  }
  e = &t->v[t->n];
  e->name = malloc(len + 1);
  if (!e->name)
    return NULL;
  memcpy(e->name, name, len);
  e->name[len] = '\0';
  e->len = (uint16_t)len;
  e->known_by_leaf = false;
  e->id = alloc_id(t);
  t->n++;
  return e;
}

struct topic_entry *topics_put(struct topics *t, uint16_t id, const char *name, size_t len,
                               bool known_by_leaf)
{
  uint16_t next = t->next_id;
  struct topic_entry *e;
  if (id == 0 || id == 0xFFFF || topics_by_id(t, id) || topics_by_name(t, name, len))
    return NULL;
  t->next_id = id;
  e = topics_add(t, name, len);
  if (e)
    e->known_by_leaf = known_by_leaf;
  /* alloc_id moved next_id past id; keep whichever is further on. */
  if (next > t->next_id)
    t->next_id = next;
  return e;
}

const char *topics_predefined_name(const struct gw_config *cfg, uint16_t id)
{
  for (size_t i = 0; i < cfg->lan.n_predefined; i++)
    if (cfg->lan.predefined[i].id == id)
      return cfg->lan.predefined[i].topic;
  return NULL;
}

int topics_predefined_id(const struct gw_config *cfg, const char *topic, size_t len)
{
  for (size_t i = 0; i < cfg->lan.n_predefined; i++) {
    const char *t = cfg->lan.predefined[i].topic;
    if (strlen(t) == len && memcmp(t, topic, len) == 0)
      return cfg->lan.predefined[i].id;
  }
  return -1;
}
