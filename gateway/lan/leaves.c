/*
 * leaves.c - the LAN side (leaves.h): the UDP socket, datagram dispatch to
 * the sessions, CONNECT admission, gateway discovery (SEARCHGW/GWINFO and
 * ADVERTISE), QoS -1 publishes, the queries the API makes, and the stop.
 * One leaf's behaviour lives in session.c, the table in table.c.
 */
#include "leaves.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admission.h"
#include "lan_int.h"
#include "log.h"
#include "udp.h"

#define MOD "lan"

/* ---- session records ---------------------------------------------------- */

void leaves_remove(struct leaves *lv, struct session *s)
{
  leaves_table_unlink(lv, s);
  sess_free(s);
}

/* Frees one session record that holds no connection, to make room.  Rare
 * (the table is full), so a walk is acceptable here. */
static bool evict_one(struct leaves *lv)
{
  for (size_t i = 0; i < lv->nbuckets; i++) {
    for (struct session *s = lv->by_id[i]; s; s = s->next_by_id) {
      if (!sess_is_live(s) && !s->link) {
        LOGD(MOD, "%s: session record evicted", s->client_id);
        leaves_remove(lv, s);
        return true;
      }
    }
  }
  return false;
}

struct session *leaves_add(struct leaves *lv, const char *id, size_t len)
{
  struct session *s;
  if (lv->nsessions >= lv->cfg->lan.max_leaves && !evict_one(lv))
    return NULL;
  if (leaves_table_reserve(lv) != 0)
    return NULL;
  s = sess_new(lv, id, len);
  if (!s)
    return NULL;
  leaves_table_insert(lv, s);
  return s;
}

/* ---- CONNECT ------------------------------------------------------------ */

/* A ClientId is 1..max octets of printable ASCII: it becomes part of an
 * upstream client id, a file name (cert_dir) and log lines. */
static bool client_id_ok(const struct leaves *lv, const struct mqttsn_str *id)
{
  if (id->len < 1 || id->len > lv->cfg->lan.max_client_id_len || id->len > 255)
    return false;
  for (size_t i = 0; i < id->len; i++)
    if (id->p[i] <= 0x20 || id->p[i] >= 0x7F || id->p[i] == '/')
      return false;
  return true;
}

static void ip_of(const struct sockaddr *from, char *ip, size_t cap)
{
  if (from->sa_family == AF_INET)
    uv_ip4_name((const struct sockaddr_in *)from, ip, cap);
  else
    uv_ip6_name((const struct sockaddr_in6 *)from, ip, cap);
}

/* The rate limits of new identities (newid.h), for the CONNECT being
 * admitted. */
struct gate_ctx {
  struct leaves *lv;
  const struct sockaddr *from;
  const char *ip;
};

/* The registry's room (admission.h): the size guard and, under "approve",
 * admission.max_pending.  Returns NULL when a new identity fits. */
static const char *no_room(struct leaves *lv)
{
  const struct admit_room *room = lv->env.room;
  if (!room)
    return NULL;
  if (room->registry_full) {
    lv->m->new_ids_registry_full++;
    return "the registry is full (registry.max_bytes or registry.min_free_bytes)";
  }
  if (lv->cfg->admission.policy == POLICY_APPROVE &&
      room->pending >= lv->cfg->admission.max_pending) {
    lv->m->new_ids_pending_full++;
    return "admission.max_pending identities wait for approval already";
  }
  return NULL;
}

static int gate_take(void *ud, char *reason, size_t cap)
{
  struct gate_ctx *g = ud;
  struct leaves *lv = g->lv;
  const char *full = no_room(lv);
  int r;

  if (full) {
    snprintf(reason, cap, "%s", full);
    return -1;
  }
  r = newid_take(&lv->newid, g->from, leaves_is_converter(lv, g->ip), uv_now(lv->loop));
  if (r != NEWID_OK) {
    lv->m->new_ids_throttled++;
    snprintf(reason, cap, "%s", newid_result_str(r));
    return -1;
  }
  /* Counted before it is written: the upkeep recounts from the registry. */
  if (lv->env.room && lv->cfg->admission.policy == POLICY_APPROVE)
    lv->env.room->pending++;
  return 0;
}

/* Admission against the registry: policy, approval, identity binding.
 * Returns true when the CONNECT may go on; otherwise the leaf was answered. */
static bool admit(struct leaves *lv, const struct sockaddr *from, const char *cid)
{
  char a[80], ip[64], reason[256];
  struct gate_ctx gc = {.lv = lv, .from = from, .ip = ip};
  struct admit_gate gate = {.take = gate_take, .ud = &gc};
  int ar;

  leaves_addr_str(from, a, sizeof a);
  ip_of(from, ip, sizeof ip);
  ar = admit_check(lv->env.store, lv->cfg, cid, ip, (int64_t)time(NULL), &gate, NULL, reason,
                   sizeof reason);
  if (ar == ADMIT_THROTTLED) {
    /* Counted (gate_take), logged at a rate, answered "congestion": a real
     * new leaf retries later; a flood costs nothing. */
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s from %s throttled: %s", cid, a, reason);
    leaves_reply_connack(lv, from, MQTTSN_RC_CONGESTION);
    return false;
  }
  leaves_event2(lv, "admission", cid, "result",
                ar == ADMIT_OK ? "admitted" : (ar == ADMIT_PENDING ? "pending" : "refused"),
                "reason", reason);
  if (ar == ADMIT_OK)
    return true;
  {
    static struct log_ratelimit rl;
    if (ar == ADMIT_PENDING)
      lv->m->admission_pending++;
    else if (ar == ADMIT_BUSY)
      lv->m->registry_busy++;
    else
      lv->m->admission_refused++;
    log_ratelimited(&rl, ar == ADMIT_ERROR ? LOG_ERROR : LOG_WARN, MOD,
                    "CONNECT %s from %s %s: %s", cid, a,
                    ar == ADMIT_REFUSED ? "refused" : "held", reason);
  }
  /* Pending, or the registry busy or failing: try again later.  Refused: MQTT-SN has
   * no "not authorized"; 0x03 is the nearest. */
  leaves_reply_connack(lv, from,
                       ar == ADMIT_REFUSED ? MQTTSN_RC_NOT_SUPPORTED : MQTTSN_RC_CONGESTION);
  return false;
}

/* Refuses the CONNECT when the ClientId is in use by a live leaf at another
 * address (admission.h: admit_check_live).  Returns true when it may go on. */
static bool not_taken(struct leaves *lv, const struct sockaddr *from, struct session *s)
{
  char a[80], b[80], reason[256];
  static struct log_ratelimit rl;

  if (!s || !s->in_addr_table || leaves_addr_eq((struct sockaddr *)&s->addr, from) ||
      !sess_is_live(s))
    return true;
  lv->m->connects_refused++;
  leaves_addr_str(from, a, sizeof a);
  leaves_addr_str((struct sockaddr *)&s->addr, b, sizeof b);
  log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s from %s refused: bound to %s", s->client_id, a,
                  b);
  admit_check_live(lv->env.store, s->client_id, b, a, (int64_t)time(NULL), reason,
                   sizeof reason);
  leaves_reply_connack(lv, from, MQTTSN_RC_NOT_SUPPORTED);
  return false;
}

static void on_connect(struct leaves *lv, const struct sockaddr *from, const struct mqttsn_msg *m)
{
  const struct mqttsn_str *id = &m->u.connect.client_id;
  struct session *s, *other;
  char cid[256];

  if (!client_id_ok(lv, id)) {
    static struct log_ratelimit rl;
    char a[80];
    lv->m->connects_refused++;
    leaves_addr_str(from, a, sizeof a);
    log_ratelimited(&rl, LOG_WARN, MOD,
                    "CONNECT from %s refused: ClientId of %zu octets (allowed: 1..%u printable)",
                    a, id->len, lv->cfg->lan.max_client_id_len);
    leaves_reply_connack(lv, from, MQTTSN_RC_NOT_SUPPORTED);
    return;
  }
  memcpy(cid, id->p, id->len);
  cid[id->len] = '\0';
  s = leaves_by_id(lv, cid, id->len);
  if (!not_taken(lv, from, s) || !admit(lv, from, cid))
    return;
  if (!s) {
    s = leaves_add(lv, cid, id->len);
    if (!s) {
      static struct log_ratelimit rl;
      lv->m->connects_refused++;
      log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s refused: %zu sessions (lan.max_leaves)",
                      cid, lv->nsessions);
      leaves_reply_connack(lv, from, MQTTSN_RC_CONGESTION);
      return;
    }
  }
  /* Another session at this address: that leaf came back under a new id.
   * It ends only now that the new CONNECT is accepted, so a refused CONNECT
   * from a live leaf's address changes nothing (docs/architecture.md §7). */
  other = leaves_by_addr(lv, from);
  if (other && other != s) {
    static struct log_ratelimit rl;
    lv->m->sessions_replaced++;
    log_ratelimited(&rl, LOG_INFO, MOD, "%s: address reused by %s, session ended",
                    other->client_id, cid);
    /* No DISCONNECT: it would reach the new leaf at the same address. */
    sess_shutdown(other, false);
    leaves_unbind_addr(lv, other);
  }
  sess_on_connect(s, from, m);
}

/* ---- other datagrams ---------------------------------------------------- */

/* QoS -1 (§6.8): no connection; predefined or short topic ids only. */
static void on_qos_m1(struct leaves *lv, const struct mqttsn_publish *p)
{
  char sb[3];
  const char *name = NULL;
  size_t nlen = 0;

  lv->m->publish_in_qos_m1++;
  if (p->flags.topic_type == MQTTSN_TOPIC_PREDEFINED) {
    name = topics_predefined_name(lv->cfg, p->topic_id);
    nlen = name ? strlen(name) : 0;
  } else if (p->flags.topic_type == MQTTSN_TOPIC_SHORT) {
    sb[0] = (char)(p->topic_id >> 8);
    sb[1] = (char)(p->topic_id & 0xFF);
    sb[2] = '\0';
    name = sb;
    nlen = 2;
  }
  if (!name || lv->env.up->publish_anon(lv->env.up_ctx, name, nlen, p->data.p, p->data.len,
                                        p->flags.retain) != SESS_UP_OK) {
    static struct log_ratelimit rl;
    lv->m->qos_m1_dropped++;
    log_ratelimited(&rl, LOG_INFO, MOD, "QoS -1 publish dropped (%s)",
                    !name ? "unknown topic id"
                          : !lv->cfg->upstream.qos_m1_client_id ? "no QoS -1 session configured"
                                                                : "queue full");
  }
}

/* PINGREQ with a ClientId: a sleeping leaf waking up (§6.14); it must come
 * from the session's address. */
static void on_wake_ping(struct leaves *lv, const struct sockaddr *from,
                         const struct mqttsn_msg *m)
{
  struct session *s =
      leaves_by_id(lv, (const char *)m->u.pingreq.client_id.p, m->u.pingreq.client_id.len);
  bool here = s && s->in_addr_table && leaves_addr_eq((struct sockaddr *)&s->addr, from);

  if (here && (s->state == SESS_ASLEEP || s->state == SESS_AWAKE)) {
    sess_on_wake(s, from);
    return;
  }
  if (here && s->state == SESS_ACTIVE) {
    sess_on_message(s, from, m);
    return;
  }
  lv->m->datagrams_unknown_client++;
  leaves_reply(lv, from, MQTTSN_DISCONNECT);
}

/* Decodes a datagram; false (counted and logged) when it is not one we take. */
static bool decode(struct leaves *lv, const struct sockaddr *from, const uint8_t *data,
                   size_t len, struct mqttsn_msg *m)
{
  int rc = mqttsn_decode(data, len, m);
  if (rc == PROTO_OK && m->type == MQTTSN_ENCAPSULATED) {
    /* Forwarder encapsulation (§5.5) is not supported: leaves talk directly. */
    rc = PROTO_UNSUPPORTED;
  }
  if (rc != PROTO_OK) {
    static struct log_ratelimit rl;
    char a[80];
    lv->m->datagrams_malformed++;
    leaves_addr_str(from, a, sizeof a);
    log_ratelimited(&rl, LOG_WARN, MOD, "malformed datagram of %zu bytes from %s: %s", len, a,
                    proto_strerror(rc));
    return false;
  }
  LOGT(MOD, "rx %s (%zu bytes)", mqttsn_type_name(m->type), len);
  return true;
}

static void on_datagram(void *ud, const struct sockaddr *from, const uint8_t *data, size_t len)
{
  struct leaves *lv = ud;
  struct mqttsn_msg m;
  struct session *s;

  lv->m->datagrams_in++;
  if (lv->stopping || !decode(lv, from, data, len, &m))
    return;
  switch (m.type) {
  case MQTTSN_SEARCHGW: {
    /* §6.1: answer at once with our GwId (the reply is unicast to the
     * searcher; broadcasting it needs a configured advertise address). */
    struct mqttsn_msg r;
    memset(&r, 0, sizeof r);
    r.type = MQTTSN_GWINFO;
    r.u.gwinfo.gw_id = lv->cfg->gateway_id;
    leaves_send(lv, from, &r);
    return;
  }
  case MQTTSN_ADVERTISE:
  case MQTTSN_GWINFO:
    return; /* other gateways, or leaves answering for us: nothing to do */
  case MQTTSN_CONNECT:
    on_connect(lv, from, &m);
    return;
  case MQTTSN_PUBLISH:
    if (m.u.publish.flags.qos == MQTTSN_QOS_M1) {
      on_qos_m1(lv, &m.u.publish);
      return;
    }
    break;
  case MQTTSN_PINGREQ:
    if (m.u.pingreq.client_id.len > 0) {
      on_wake_ping(lv, from, &m);
      return;
    }
    break;
  default:
    break;
  }
  s = leaves_by_addr(lv, from);
  if (!s) {
    /* §6.12: not a connected client; a DISCONNECT tells it to connect again
     * (after a gateway restart, for example).  A DISCONNECT is not answered,
     * so two gateways cannot ping-pong. */
    lv->m->datagrams_unknown_client++;
    if (m.type != MQTTSN_DISCONNECT)
      leaves_reply(lv, from, MQTTSN_DISCONNECT);
    return;
  }
  sess_on_message(s, from, &m);
}

/* ---- ADVERTISE ---------------------------------------------------------- */

static void adv_cb(uv_timer_t *t)
{
  struct leaves *lv = t->data;
  struct sockaddr_storage ss;
  struct mqttsn_msg m;
  const char *ip = lv->cfg->lan.advertise_address;

  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(ip, lv->cfg->lan.advertise_port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(ip, lv->cfg->lan.advertise_port, (struct sockaddr_in6 *)&ss) != 0)
    return;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_ADVERTISE;
  m.u.advertise.gw_id = lv->cfg->gateway_id;
  m.u.advertise.duration = (uint16_t)(lv->cfg->lan.advertise_interval_s > 0xFFFF
                                          ? 0xFFFF
                                          : lv->cfg->lan.advertise_interval_s);
  leaves_send(lv, (struct sockaddr *)&ss, &m);
}

/* ---- lifecycle ---------------------------------------------------------- */

int leaves_new(const struct leaves_env *env, struct leaves **out)
{
  struct leaves *lv = calloc(1, sizeof *lv);
  if (!lv)
    return UV_ENOMEM;
  lv->env = *env;
  lv->loop = env->loop;
  lv->cfg = env->cfg;
  lv->m = env->m;
  if (leaves_table_init(lv) != 0) {
    free(lv);
    return UV_ENOMEM;
  }
  if (newid_init(&lv->newid, &env->newid, uv_now(env->loop)) != 0) {
    leaves_table_free(lv);
    free(lv);
    return UV_ENOMEM;
  }
  *out = lv;
  return 0;
}

int leaves_start(struct leaves *lv)
{
  const struct gw_config *cfg = lv->cfg;
  int rc = udp_open(lv->loop, cfg->lan.bind, cfg->lan.port, cfg->lan.recv_buffer_bytes,
                    on_datagram, lv, &lv->udp);
  if (rc != 0) {
    LOGE(MOD, "cannot bind UDP %s:%u: %s", cfg->lan.bind, cfg->lan.port, uv_strerror(rc));
    return rc;
  }
  if (cfg->lan.advertise_address) {
    uint64_t ms = (uint64_t)cfg->lan.advertise_interval_s * 1000u;
    uv_timer_init(lv->loop, &lv->adv_timer);
    lv->adv_timer.data = lv;
    uv_timer_start(&lv->adv_timer, adv_cb, 0, ms);
    lv->adv_started = true;
  }
  return 0;
}

static void udp_closed(void *ud)
{
  drain_release(ud);
}

static void adv_closed(uv_handle_t *h)
{
  struct leaves *lv = h->data;
  drain_release(lv->env.drain);
}

void leaves_stop(struct leaves *lv, size_t *live_out, uint64_t *queued_out)
{
  size_t live = 0;
  uint64_t queued = 0;

  lv->stopping = true;
  for (size_t i = 0; i < lv->nbuckets; i++) {
    for (struct session *s = lv->by_id[i], *next; s; s = next) {
      next = s->next_by_id;
      if (sess_is_live(s))
        live++;
      queued += s->q_len;
      sess_shutdown(s, true);
    }
  }
  /* Free every session record (each closes its timer). */
  for (size_t i = 0; i < lv->nbuckets; i++)
    while (lv->by_id[i])
      leaves_remove(lv, lv->by_id[i]);
  if (lv->adv_started) {
    drain_hold(lv->env.drain);
    uv_close((uv_handle_t *)&lv->adv_timer, adv_closed);
    lv->adv_started = false;
  }
  if (lv->udp) {
    drain_hold(lv->env.drain);
    udp_close(lv->udp, udp_closed, lv->env.drain);
    lv->udp = NULL;
  }
  if (live_out)
    *live_out = live;
  if (queued_out)
    *queued_out = queued;
}

void leaves_free(struct leaves *lv)
{
  if (!lv)
    return;
  leaves_table_free(lv);
  newid_free(&lv->newid);
  free(lv);
}

bool leaves_is_converter(const struct leaves *lv, const char *ip)
{
  for (size_t i = 0; i < lv->env.n_converters; i++)
    if (strcmp(lv->env.converters[i], ip) == 0)
      return true;
  return false;
}

int leaves_port(const struct leaves *lv)
{
  return lv->udp ? udp_port(lv->udp) : -1;
}

/* ---- queries ------------------------------------------------------------ */

struct session *leaves_find(struct leaves *lv, const char *client_id)
{
  return leaves_by_id(lv, client_id, strlen(client_id));
}

void leaves_count(const struct leaves *lv, struct metrics *m, uint64_t *links, uint64_t *queued)
{
  uint64_t nl = 0, nq = 0;
  m->leaves_active = m->leaves_asleep = m->leaves_connecting = m->upstreams_up = 0;
  m->sessions = lv->nsessions;
  for (size_t i = 0; i < lv->nbuckets; i++) {
    for (const struct session *s = lv->by_id[i]; s; s = s->next_by_id) {
      sess_count(s, m);
      if (s->link)
        nl++;
      nq += s->q_len;
    }
  }
  if (links)
    *links = nl;
  if (queued)
    *queued = nq;
}

void leaves_on_provisioned(struct leaves *lv, const char *client_id, bool ok)
{
  struct session *s = leaves_find(lv, client_id);
  if (s)
    sess_on_provisioned(s, ok);
}

size_t leaves_dtls_revoked(struct leaves *lv, const char *client_id)
{
  (void)lv;
  (void)client_id;
  return 0; /* FIXME(issue 10): wired with the DTLS listener */
}
