/*
 * newid.c - token buckets for new identities (see newid.h).
 */
#include "newid.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* How many slots a source may probe from its hash position. */
#define PROBE 8

struct newid_slot {
  uint8_t key[19];             /* family, 16 address bytes, port (0: the IP's bucket) */
  bool used;
  const struct newid_limit *lim; /* the limit this bucket counts against */
  double tokens;
  uint64_t at;                 /* ms of the last refill */
};

static void make_key(const struct sockaddr *a, bool with_port, uint8_t key[19])
{
  memset(key, 0, 19);
  key[0] = (uint8_t)a->sa_family;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)a;
    memcpy(key + 1, &in->sin_addr, 4);
    if (with_port)
      memcpy(key + 17, &in->sin_port, 2);
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
    memcpy(key + 1, &in6->sin6_addr, 16);
    if (with_port)
      memcpy(key + 17, &in6->sin6_port, 2);
  }
}

static uint64_t hash_key(const uint8_t key[19])
{
  uint64_t h = 14695981039346656037ull;
  for (int i = 0; i < 19; i++) {
    h ^= key[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* Refills tokens of a bucket of limit l up to now. */
static double refill(const struct newid_limit *l, double tokens, uint64_t at, uint64_t now)
{
  double t = tokens + (double)(now - at) * l->count / (1000.0 * l->period_s);
  return t > l->count ? l->count : t;
}

static bool bucket_full(const struct newid_slot *s, uint64_t now)
{
  return refill(s->lim, s->tokens, s->at, now) >= s->lim->count;
}

/* The slot of key, or a free one for it (its bucket full), or NULL. */
static struct newid_slot *find(struct newid *n, const struct newid_limit *l, const uint8_t key[19],
                               uint64_t now)
{
  size_t i = (size_t)(hash_key(key) % n->o.slots);
  struct newid_slot *free_slot = NULL;

  for (int k = 0; k < PROBE; k++, i = (i + 1) % n->o.slots) {
    struct newid_slot *s = &n->slots[i];
    if (s->used && memcmp(s->key, key, 19) == 0)
      return s;
    if (!free_slot && (!s->used || bucket_full(s, now)))
      free_slot = s;
  }
  if (free_slot) {
    memcpy(free_slot->key, key, 19);
    free_slot->used = true;
    free_slot->lim = l;
    free_slot->tokens = l->count;
    free_slot->at = now;
  }
  return free_slot;
}

int newid_init(struct newid *n, const struct newid_opts *o, uint64_t now_ms)
{
  memset(n, 0, sizeof *n);
  n->o = *o;
  if (n->o.slots == 0)
    n->o.slots = 1;
  n->slots = calloc(n->o.slots, sizeof *n->slots);
  if (!n->slots)
    return -1;
  n->global_tokens = o->global.count;
  n->global_at = now_ms;
  return 0;
}

void newid_set_limits(struct newid *n, const struct newid_opts *o)
{
  /* The slots keep pointers to these limits: they count against the new
   * values from the next take, and refill() caps what a bucket holds at the
   * new count.  The table's size stays. */
  n->o.per_port = o->per_port;
  n->o.per_ip = o->per_ip;
  n->o.per_converter = o->per_converter;
  n->o.global = o->global;
  if (n->global_tokens > o->global.count)
    n->global_tokens = o->global.count;
}

void newid_free(struct newid *n)
{
  free(n->slots);
  n->slots = NULL;
}

int newid_take(struct newid *n, const struct sockaddr *from, bool converter, uint64_t now)
{
  const struct newid_limit *lp = &n->o.per_port;
  const struct newid_limit *li = converter ? &n->o.per_converter : &n->o.per_ip;
  const struct newid_limit *lg = &n->o.global;
  uint8_t kp[19], ki[19];
  struct newid_slot *sp = NULL, *si = NULL;
  double g = 0;

  if (lg->count) {
    g = refill(lg, n->global_tokens, n->global_at, now);
    n->global_tokens = g;
    n->global_at = now;
    if (g < 1.0)
      return NEWID_GLOBAL;
  }
  if (lp->count) {
    make_key(from, true, kp);
    if (!(sp = find(n, lp, kp, now)))
      return NEWID_TABLE_FULL;
    sp->tokens = refill(lp, sp->tokens, sp->at, now);
    sp->at = now;
    if (sp->tokens < 1.0)
      return NEWID_PORT;
  }
  if (li->count) {
    make_key(from, false, ki);
    if (!(si = find(n, li, ki, now)))
      return NEWID_TABLE_FULL;
    si->tokens = refill(li, si->tokens, si->at, now);
    si->at = now;
    if (si->tokens < 1.0)
      return NEWID_IP;
  }
  if (sp)
    sp->tokens -= 1.0;
  if (si)
    si->tokens -= 1.0;
  if (lg->count)
    n->global_tokens -= 1.0;
  return NEWID_OK;
}

const char *newid_result_str(int r)
{
  switch (r) {
  case NEWID_OK: return "ok";
  case NEWID_PORT: return "too many new ClientIds from this address and port";
  case NEWID_IP: return "too many new ClientIds from this IP";
  case NEWID_GLOBAL: return "too many new ClientIds on the gateway";
  case NEWID_TABLE_FULL: return "too many sources presenting new ClientIds at once";
  default: return "?";
  }
}
