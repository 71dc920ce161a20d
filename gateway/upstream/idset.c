#include "idset.h"

#include <stdlib.h>

bool idset_has(const struct idset *s, uint16_t id)
{
  for (uint32_t i = 0; i < s->n; i++)
    if (s->v[i] == id)
      return true;
  return false;
}

int idset_add(struct idset *s, uint16_t id)
{
  if (idset_has(s, id))
    return 0;
  if (s->n == s->cap) {
    uint32_t ncap = s->cap ? s->cap * 2 : 4;
    uint16_t *nv;
    if (ncap > 65536)
      return -1;
    nv = realloc(s->v, ncap * sizeof *nv);
    if (!nv)
      return -1;
    s->v = nv;
    s->cap = ncap;
  }
  s->v[s->n++] = id;
  return 0;
}

bool idset_remove(struct idset *s, uint16_t id)
{
  for (uint32_t i = 0; i < s->n; i++) {
    if (s->v[i] == id) {
      s->v[i] = s->v[--s->n];
      return true;
    }
  }
  return false;
}

void idset_clear(struct idset *s)
{
  free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
}
