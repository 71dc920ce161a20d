/*
 * leaves.c - what the leaf sessions share, below both gw.c and session.c:
 * the session tables (hash by ClientId and by address, grown by doubling;
 * never a linear walk on the hot path), sending one MQTT-SN message to an
 * address, the predefined topics, upstream options, and the accounting of
 * asynchronous closes during shutdown.  It calls nothing in session.c or
 * gw.c, so the dependency runs one way: gw.c -> session.c -> leaves.c.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_int.h"
#include "udp.h"
#include "log.h"
#include "upstream.h"

#define MOD "gw"

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t leaves_hash_id(const char *id, size_t len)
{
  return fnv1a(id, len, 14695981039346656037ull);
}

/* Hashes what identifies a UDP peer: family, port and address bytes. */
uint64_t leaves_hash_addr(const struct sockaddr *a)
{
  uint64_t h = 14695981039346656037ull;
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

struct session *leaves_by_id(struct gw *gw, const char *id, size_t len)
{
  struct session *s = gw->by_id[leaves_hash_id(id, len) & (gw->nbuckets - 1)];
  for (; s; s = s->next_by_id)
    if (s->id_len == len && memcmp(s->client_id, id, len) == 0)
      return s;
  return NULL;
}

struct session *leaves_by_addr(struct gw *gw, const struct sockaddr *addr)
{
  struct session *s = gw->by_addr[leaves_hash_addr(addr) & (gw->nbuckets - 1)];
  for (; s; s = s->next_by_addr)
    if (leaves_addr_eq((const struct sockaddr *)&s->addr, addr))
      return s;
  return NULL;
}

void leaves_unbind_addr(struct gw *gw, struct session *s)
{
  struct session **pp;
  if (!s->in_addr_table)
    return;
  pp = &gw->by_addr[leaves_hash_addr((struct sockaddr *)&s->addr) & (gw->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next_by_addr) {
    if (*pp == s) {
      *pp = s->next_by_addr;
      break;
    }
  }
  s->in_addr_table = false;
  s->next_by_addr = NULL;
}

void leaves_bind_addr(struct gw *gw, struct session *s, const struct sockaddr *addr)
{
  size_t b;
  if (s->in_addr_table && leaves_addr_eq((struct sockaddr *)&s->addr, addr))
    return;
  leaves_unbind_addr(gw, s);
  memset(&s->addr, 0, sizeof s->addr);
  memcpy(&s->addr, addr,
         addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
  b = leaves_hash_addr(addr) & (gw->nbuckets - 1);
  s->next_by_addr = gw->by_addr[b];
  gw->by_addr[b] = s;
  s->in_addr_table = true;
}

/* Doubles both tables when the load factor passes 1. */
int leaves_grow(struct gw *gw)
{
  size_t n = gw->nbuckets * 2;
  struct session **ids = calloc(n, sizeof *ids), **addrs = calloc(n, sizeof *addrs);
  if (!ids || !addrs) {
    free(ids);
    free(addrs);
    return -1;
  }
  for (size_t i = 0; i < gw->nbuckets; i++) {
    struct session *s = gw->by_id[i];
    while (s) {
      struct session *next = s->next_by_id;
      size_t b = leaves_hash_id(s->client_id, s->id_len) & (n - 1);
      s->next_by_id = ids[b];
      ids[b] = s;
      s = next;
    }
    s = gw->by_addr[i];
    while (s) {
      struct session *next = s->next_by_addr;
      size_t b = leaves_hash_addr((struct sockaddr *)&s->addr) & (n - 1);
      s->next_by_addr = addrs[b];
      addrs[b] = s;
      s = next;
    }
  }
  free(gw->by_id);
  free(gw->by_addr);
  gw->by_id = ids;
  gw->by_addr = addrs;
  gw->nbuckets = n;
  return 0;
}

int leaves_send(struct gw *gw, const struct sockaddr *to, const struct mqttsn_msg *msg)
{
  int n = mqttsn_encode(msg, gw->tx, sizeof gw->tx);
  if (n < 0) {
    /* §6.10: what does not fit is dropped. */
    static struct log_ratelimit rl;
    gw->m.send_errors++;
    log_ratelimited(&rl, LOG_WARN, MOD, "cannot encode %s: %s", mqttsn_type_name(msg->type),
                    proto_strerror(n));
    return n;
  }
  if (lan_send(gw->lan, to, gw->tx, (size_t)n) != 0) {
    gw->m.send_errors++;
    return -1;
  }
  gw->m.datagrams_out++;
  return 0;
}

const char *leaves_predefined_topic(const struct gw *gw, uint16_t id)
{
  for (size_t i = 0; i < gw->cfg->lan.n_predefined; i++)
    if (gw->cfg->lan.predefined[i].id == id)
      return gw->cfg->lan.predefined[i].topic;
  return NULL;
}

int leaves_predefined_id(const struct gw *gw, const char *topic, size_t len)
{
  for (size_t i = 0; i < gw->cfg->lan.n_predefined; i++) {
    const char *t = gw->cfg->lan.predefined[i].topic;
    if (strlen(t) == len && memcmp(t, topic, len) == 0)
      return gw->cfg->lan.predefined[i].id;
  }
  return -1;
}

void leaves_upstream_opts(struct gw *gw, struct upstream_opts *o, const char *client_id,
                      const char *cert, const char *key)
{
  const struct gw_config *cfg = gw->cfg;
  memset(o, 0, sizeof *o);
  o->host = cfg->upstream.host;
  o->port = cfg->upstream.port;
  o->tls = gw->tls;
  o->alpn = cfg->upstream.alpn;
  o->cert_file = cert;
  o->key_file = key;
  o->client_id = client_id;
  o->username = cfg->upstream.username;
  o->password = cfg->upstream.password;
  o->keepalive = cfg->upstream.keepalive_s;
  o->clean_session = cfg->upstream.clean_session;
  o->connect_timeout_ms = cfg->upstream.connect_timeout_ms;
  o->backoff_base_ms = cfg->upstream.backoff_base_ms;
  o->backoff_cap_ms = cfg->upstream.backoff_cap_ms;
  o->max_queue = cfg->upstream.max_queue;
  o->max_packet = cfg->upstream.max_packet;
  o->pacer = gw->pacer;
}

void leaves_close_done(struct gw *gw)
{
  if (gw->pending_closes > 0)
    gw->pending_closes--;
  if (gw->stopping && gw->pending_closes == 0 && gw->stop_done) {
    void (*done)(void *) = gw->stop_done;
    gw->stop_done = NULL;
    done(gw->stop_ud);
  }
}

void leaves_event(struct gw *gw, const char *type, const char *client_id, const char *key,
                  const char *value)
{
  leaves_event2(gw, type, client_id, key, value, NULL, NULL);
}

void leaves_event2(struct gw *gw, const char *type, const char *client_id, const char *key,
                   const char *value, const char *key2, const char *value2)
{
  struct timespec ts;
  cJSON *o;
  char *json;

  if (!gw->subs)
    return;
  o = cJSON_CreateObject();
  if (!o)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  cJSON_AddStringToObject(o, "type", type);
  cJSON_AddNumberToObject(o, "at", (double)ts.tv_sec * 1000.0 + (double)(ts.tv_nsec / 1000000));
  if (client_id)
    cJSON_AddStringToObject(o, "client_id", client_id);
  if (key)
    cJSON_AddStringToObject(o, key, value ? value : "");
  if (key2)
    cJSON_AddStringToObject(o, key2, value2 ? value2 : "");
  json = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!json)
    return;
  gw->emitting++;
  for (struct api_sub *sub = gw->subs; sub; sub = sub->next)
    if (!sub->dead)
      sub->cb(sub->ud, json, strlen(json));
  gw->emitting--;
  free(json);
  /* Subscribers that left during the calls are freed now. */
  if (gw->emitting == 0) {
    for (struct api_sub **pp = &gw->subs; *pp;) {
      if ((*pp)->dead) {
        struct api_sub *d = *pp;
        *pp = d->next;
        free(d);
      } else {
        pp = &(*pp)->next;
      }
    }
  }
}
