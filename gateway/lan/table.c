/*
 * table.c - the session table: every leaf session by ClientId and by the
 * address it talks from, two hash tables of chains that share one bucket
 * count and double together when the load passes 1.  Never a linear walk on
 * the hot path; the one walk (evicting a record to make room) runs only when
 * the table is full.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lan_int.h"
#include "log.h"

#define MOD "lan"
#define INITIAL_BUCKETS 1024

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

static uint64_t hash_id(const char *id, size_t len)
{
  return fnv1a(id, len, 14695981039346656037ull);
}

/* Hashes what identifies a peer: the transport, family, port and address
 * bytes. */
static uint64_t hash_addr(const struct sockaddr *a, uint8_t via)
{
  uint64_t h = fnv1a(&via, 1, 14695981039346656037ull);
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)a;
    h = fnv1a(&in->sin_port, sizeof in->sin_port, h);
    h = fnv1a(&in->sin_addr, sizeof in->sin_addr, h);
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
    h = fnv1a(&in6->sin6_port, sizeof in6->sin6_port, h);
    h = fnv1a(&in6->sin6_addr, sizeof in6->sin6_addr, h);
  }
  return h;
}

bool leaves_addr_eq(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return false;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

bool sess_at(const struct session *s, const struct sockaddr *addr, uint8_t via)
{
  return s->in_addr_table && s->via == via &&
         leaves_addr_eq((const struct sockaddr *)&s->addr, addr);
}

void leaves_addr_str(const struct sockaddr *a, char *out, size_t cap)
{
  char ip[64] = "?";
  int port = 0;
  if (a->sa_family == AF_INET) {
    uv_ip4_name((const struct sockaddr_in *)a, ip, sizeof ip);
    port = ntohs(((const struct sockaddr_in *)a)->sin_port);
  } else if (a->sa_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)a, ip, sizeof ip);
    port = ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
  }
  snprintf(out, cap, "%s:%d", ip, port);
}

int leaves_table_init(struct leaves *lv)
{
  lv->nbuckets = INITIAL_BUCKETS;
  lv->by_id = calloc(lv->nbuckets, sizeof *lv->by_id);
  lv->by_addr = calloc(lv->nbuckets, sizeof *lv->by_addr);
  if (!lv->by_id || !lv->by_addr) {
    leaves_table_free(lv);
    return -1;
  }
  return 0;
}

void leaves_table_free(struct leaves *lv)
{
  free(lv->by_id);
  free(lv->by_addr);
  lv->by_id = lv->by_addr = NULL;
}

struct session *leaves_by_id(struct leaves *lv, const char *id, size_t len)
{
  struct session *s = lv->by_id[hash_id(id, len) & (lv->nbuckets - 1)];
  for (; s; s = s->next_by_id)
    if (s->id_len == len && memcmp(s->client_id, id, len) == 0)
      return s;
  return NULL;
}

struct session *leaves_by_addr(struct leaves *lv, const struct sockaddr *addr, uint8_t via)
{
  struct session *s = lv->by_addr[hash_addr(addr, via) & (lv->nbuckets - 1)];
  for (; s; s = s->next_by_addr)
    if (sess_at(s, addr, via))
      return s;
  return NULL;
}

void leaves_unbind_addr(struct leaves *lv, struct session *s)
{
  struct session **pp;
  if (!s->in_addr_table)
    return;
  pp = &lv->by_addr[hash_addr((struct sockaddr *)&s->addr, s->via) & (lv->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next_by_addr) {
    if (*pp == s) {
      *pp = s->next_by_addr;
      break;
    }
  }
  s->in_addr_table = false;
  s->next_by_addr = NULL;
}

void leaves_bind_addr(struct leaves *lv, struct session *s, const struct sockaddr *addr,
                      uint8_t via)
{
  size_t b;
  if (sess_at(s, addr, via))
    return;
  leaves_unbind_addr(lv, s);
  memset(&s->addr, 0, sizeof s->addr);
  memcpy(&s->addr, addr,
         addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
  s->via = via;
  b = hash_addr(addr, via) & (lv->nbuckets - 1);
  s->next_by_addr = lv->by_addr[b];
  lv->by_addr[b] = s;
  s->in_addr_table = true;
  sess_persist_mark(s);
}

/* Doubles both tables when the load factor passes 1. */
static int grow(struct leaves *lv)
{
  size_t n = lv->nbuckets * 2;
  struct session **ids = calloc(n, sizeof *ids), **addrs = calloc(n, sizeof *addrs);
  if (!ids || !addrs) {
    free(ids);
    free(addrs);
    return -1;
  }
  for (size_t i = 0; i < lv->nbuckets; i++) {
    struct session *s = lv->by_id[i];
    while (s) {
      struct session *next = s->next_by_id;
      size_t b = hash_id(s->client_id, s->id_len) & (n - 1);
      s->next_by_id = ids[b];
      ids[b] = s;
      s = next;
    }
    s = lv->by_addr[i];
    while (s) {
      struct session *next = s->next_by_addr;
      size_t b = hash_addr((struct sockaddr *)&s->addr, s->via) & (n - 1);
      s->next_by_addr = addrs[b];
      addrs[b] = s;
      s = next;
    }
  }
  free(lv->by_id);
  free(lv->by_addr);
  lv->by_id = ids;
  lv->by_addr = addrs;
  lv->nbuckets = n;
  return 0;
}

/* Takes s out of both tables (the caller frees it). */
void leaves_table_unlink(struct leaves *lv, struct session *s)
{
  struct session **pp = &lv->by_id[hash_id(s->client_id, s->id_len) & (lv->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next_by_id) {
    if (*pp == s) {
      *pp = s->next_by_id;
      break;
    }
  }
  leaves_unbind_addr(lv, s);
  lv->nsessions--;
}

/* Makes room for one more (grows the tables when the load passes 1). */
int leaves_table_reserve(struct leaves *lv)
{
  if (lv->nsessions + 1 > lv->nbuckets && grow(lv) != 0)
    return -1;
  return 0;
}

void leaves_table_insert(struct leaves *lv, struct session *s)
{
  size_t b = hash_id(s->client_id, s->id_len) & (lv->nbuckets - 1);
  s->next_by_id = lv->by_id[b];
  lv->by_id[b] = s;
  lv->nsessions++;
}
