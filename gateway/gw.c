/*
 * gw.c - the gateway process: the LAN socket, the session tables (hash by
 * ClientId and by address, never a linear walk on the hot path), datagram
 * dispatch, gateway discovery, the QoS -1 session and graceful shutdown.
 * One leaf's behaviour lives in session.c.
 */
#include "gw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admission.h"
#include "config.h"
#include "gw_int.h"
#include "udp.h"
#include "log.h"
#include "provision.h"
#include "store.h"
#include "tls.h"
#include "pacer.h"
#include "upstream.h"

#include <time.h>

#define MOD "gw"

/* ---- tables ------------------------------------------------------------- */











static void remove_session(struct gw *gw, struct session *s)
{
  struct session **pp = &gw->by_id[leaves_hash_id(s->client_id, s->id_len) & (gw->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next_by_id) {
    if (*pp == s) {
      *pp = s->next_by_id;
      break;
    }
  }
  leaves_unbind_addr(gw, s);
  gw->nsessions--;
  sess_free(s);
}

/* Frees one session record that holds no connection, to make room.  Rare
 * (the table is full), so a walk is acceptable here. */
static bool evict_one(struct gw *gw)
{
  for (size_t i = 0; i < gw->nbuckets; i++) {
    for (struct session *s = gw->by_id[i]; s; s = s->next_by_id) {
      if (!sess_is_live(s) && !s->link) {
        LOGD(MOD, "%s: session record evicted", s->client_id);
        remove_session(gw, s);
        return true;
      }
    }
  }
  return false;
}

static struct session *add_session(struct gw *gw, const char *id, size_t len)
{
  struct session *s;
  size_t b;
  if (gw->nsessions >= gw->cfg->lan.max_leaves && !evict_one(gw))
    return NULL;
  if (gw->nsessions + 1 > gw->nbuckets && leaves_grow(gw) != 0)
    return NULL;
  s = sess_new(gw, id, len);
  if (!s)
    return NULL;
  b = leaves_hash_id(id, len) & (gw->nbuckets - 1);
  s->next_by_id = gw->by_id[b];
  gw->by_id[b] = s;
  gw->nsessions++;
  return s;
}

/* ---- sending ------------------------------------------------------------ */





/* ---- dispatch ----------------------------------------------------------- */

static void reply_simple(struct gw *gw, const struct sockaddr *to, enum mqttsn_type t)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = t;
  leaves_send(gw, to, &m);
}

static void reply_connack(struct gw *gw, const struct sockaddr *to, uint8_t rc)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_CONNACK;
  m.u.connack.rc = rc;
  leaves_send(gw, to, &m);
}

/* A ClientId is 1..max octets of printable ASCII: it becomes part of an
 * upstream client id, a file name (cert_dir) and log lines. */
static bool client_id_ok(const struct gw *gw, const struct mqttsn_str *id)
{
  if (id->len < 1 || id->len > gw->cfg->lan.max_client_id_len || id->len > 255)
    return false;
  for (size_t i = 0; i < id->len; i++)
    if (id->p[i] <= 0x20 || id->p[i] >= 0x7F || id->p[i] == '/')
      return false;
  return true;
}

static void on_connect(struct gw *gw, const struct sockaddr *from, const struct mqttsn_msg *m)
{
  const struct mqttsn_str *id = &m->u.connect.client_id;
  struct session *s, *other;
  char a[80], b[80];

  if (!client_id_ok(gw, id)) {
    static struct log_ratelimit rl;
    gw->m.connects_refused++;
    leaves_addr_str(from, a, sizeof a);
    log_ratelimited(&rl, LOG_WARN, MOD,
                    "CONNECT from %s refused: ClientId of %zu octets (allowed: 1..%u printable)",
                    a, id->len, gw->cfg->lan.max_client_id_len);
    reply_connack(gw, from, MQTTSN_RC_NOT_SUPPORTED);
    return;
  }
  s = leaves_by_id(gw, (const char *)id->p, id->len);
  if (s && s->in_addr_table && !leaves_addr_eq((struct sockaddr *)&s->addr, from) && sess_is_live(s)) {
    /* The ClientId is in use by a live leaf at another address: a second box
     * must not take over an identity. */
    static struct log_ratelimit rl;
    gw->m.connects_refused++;
    leaves_addr_str(from, a, sizeof a);
    leaves_addr_str((struct sockaddr *)&s->addr, b, sizeof b);
    log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s from %s refused: bound to %s", s->client_id,
                    a, b);
    {
      char why[256];
      snprintf(why, sizeof why, "ClientId in use by a connected leaf at %s, CONNECT came from %s",
               b, a);
      store_audit(gw->store, (int64_t)time(NULL), "gateway", "admission.refused", s->client_id,
                  why);
    }
    reply_connack(gw, from, MQTTSN_RC_NOT_SUPPORTED);
    return;
  }
  /* Another session at this address: that leaf came back under a new id. */
  other = leaves_by_addr(gw, from);
  if (other && other != s) {
    LOGI(MOD, "%s: address reused by %.*s, session ended", other->client_id, (int)id->len,
         (const char *)id->p);
    /* No DISCONNECT: it would reach the new leaf at the same address. */
    sess_shutdown(other, false);
    leaves_unbind_addr(gw, other);
  }
  /* Admission, against the registry: policy, approval, identity binding. */
  {
    char cid[256], ip[64], reason[256];
    int ar;
    memcpy(cid, id->p, id->len);
    cid[id->len] = '\0';
    leaves_addr_str(from, a, sizeof a);
    if (from->sa_family == AF_INET)
      uv_ip4_name((const struct sockaddr_in *)from, ip, sizeof ip);
    else
      uv_ip6_name((const struct sockaddr_in6 *)from, ip, sizeof ip);
    ar = admit_check(gw->store, gw->cfg, cid, ip, (int64_t)time(NULL), NULL, reason,
                     sizeof reason);
    leaves_event2(gw, "admission", cid, "result",
                  ar == ADMIT_OK ? "admitted" : (ar == ADMIT_PENDING ? "pending" : "refused"),
                  "reason", reason);
    if (ar != ADMIT_OK) {
      static struct log_ratelimit rl;
      if (ar == ADMIT_PENDING)
        gw->m.admission_pending++;
      else
        gw->m.admission_refused++;
      log_ratelimited(&rl, ar == ADMIT_ERROR ? LOG_ERROR : LOG_WARN, MOD,
                      "CONNECT %s from %s %s: %s", cid, a,
                      ar == ADMIT_PENDING ? "held" : "refused", reason);
      /* Pending (or a registry hiccup): try again later.  Refused: MQTT-SN
       * has no "not authorized"; 0x03 is the nearest. */
      reply_connack(gw, from, ar == ADMIT_REFUSED ? MQTTSN_RC_NOT_SUPPORTED
                                                  : MQTTSN_RC_CONGESTION);
      return;
    }
  }
  if (!s) {
    s = add_session(gw, (const char *)id->p, id->len);
    if (!s) {
      gw->m.connects_refused++;
      LOGW(MOD, "CONNECT %.*s refused: %zu sessions (lan.max_leaves)", (int)id->len,
           (const char *)id->p, gw->nsessions);
      reply_connack(gw, from, MQTTSN_RC_CONGESTION);
      return;
    }
  }
  sess_on_connect(s, from, m);
}

/* QoS -1 (§6.8): no connection; predefined or short topic ids only. */
static void on_qos_m1(struct gw *gw, const struct mqttsn_publish *p)
{
  char sb[3];
  const char *name = NULL;
  size_t nlen = 0;

  gw->m.publish_in_qos_m1++;
  if (p->flags.topic_type == MQTTSN_TOPIC_PREDEFINED) {
    name = leaves_predefined_topic(gw, p->topic_id);
    nlen = name ? strlen(name) : 0;
  } else if (p->flags.topic_type == MQTTSN_TOPIC_SHORT) {
    sb[0] = (char)(p->topic_id >> 8);
    sb[1] = (char)(p->topic_id & 0xFF);
    sb[2] = '\0';
    name = sb;
    nlen = 2;
  }
  if (!name || !gw->qm1 ||
      upstream_publish(gw->qm1->u, name, nlen, p->data.p, p->data.len, 0, p->flags.retain,
                       NULL) != UPSTREAM_OK) {
    static struct log_ratelimit rl;
    gw->m.qos_m1_dropped++;
    log_ratelimited(&rl, LOG_INFO, MOD, "QoS -1 publish dropped (%s)",
                    !name ? "unknown topic id" : !gw->qm1 ? "no QoS -1 session configured"
                                                          : "queue full");
  }
}

static void on_datagram(void *ud, const struct sockaddr *from, const uint8_t *data, size_t len)
{
  struct gw *gw = ud;
  struct mqttsn_msg m;
  struct session *s;
  int rc;

  gw->m.datagrams_in++;
  if (gw->stopping)
    return;
  rc = mqttsn_decode(data, len, &m);
  if (rc == PROTO_OK && m.type == MQTTSN_ENCAPSULATED) {
    /* Forwarder encapsulation (§5.5) is not supported: leaves talk directly. */
    rc = PROTO_UNSUPPORTED;
  }
  if (rc != PROTO_OK) {
    static struct log_ratelimit rl;
    char a[80];
    gw->m.datagrams_malformed++;
    leaves_addr_str(from, a, sizeof a);
    log_ratelimited(&rl, LOG_WARN, MOD, "malformed datagram of %zu bytes from %s: %s", len, a,
                    proto_strerror(rc));
    return;
  }
  LOGT(MOD, "rx %s (%zu bytes)", mqttsn_type_name(m.type), len);

  switch (m.type) {
  case MQTTSN_SEARCHGW: {
    /* §6.1: answer at once with our GwId (the reply is unicast to the
     * searcher; broadcasting it needs a configured advertise address). */
    struct mqttsn_msg r;
    memset(&r, 0, sizeof r);
    r.type = MQTTSN_GWINFO;
    r.u.gwinfo.gw_id = gw->cfg->gateway_id;
    leaves_send(gw, from, &r);
    return;
  }
  case MQTTSN_ADVERTISE:
  case MQTTSN_GWINFO:
    return; /* other gateways, or leaves answering for us: nothing to do */
  case MQTTSN_CONNECT:
    on_connect(gw, from, &m);
    return;
  case MQTTSN_PUBLISH:
    if (m.u.publish.flags.qos == MQTTSN_QOS_M1) {
      on_qos_m1(gw, &m.u.publish);
      return;
    }
    break;
  case MQTTSN_PINGREQ:
    if (m.u.pingreq.client_id.len > 0) {
      /* A sleeping leaf waking up (§6.14); it must come from its address. */
      s = leaves_by_id(gw, (const char *)m.u.pingreq.client_id.p, m.u.pingreq.client_id.len);
      if (s && (s->state == SESS_ASLEEP || s->state == SESS_AWAKE) && s->in_addr_table &&
          leaves_addr_eq((struct sockaddr *)&s->addr, from)) {
        sess_on_wake(s, from);
        return;
      }
      if (s && s->state == SESS_ACTIVE && s->in_addr_table &&
          leaves_addr_eq((struct sockaddr *)&s->addr, from)) {
        sess_on_message(s, from, &m);
        return;
      }
      gw->m.datagrams_unknown_client++;
      reply_simple(gw, from, MQTTSN_DISCONNECT);
      return;
    }
    break;
  default:
    break;
  }
  s = leaves_by_addr(gw, from);
  if (!s) {
    /* §6.12: not a connected client; a DISCONNECT tells it to connect again
     * (after a gateway restart, for example).  A DISCONNECT is not answered,
     * so two gateways cannot ping-pong. */
    gw->m.datagrams_unknown_client++;
    if (m.type != MQTTSN_DISCONNECT)
      reply_simple(gw, from, MQTTSN_DISCONNECT);
    return;
  }
  sess_on_message(s, from, &m);
}

/* ---- ADVERTISE ---------------------------------------------------------- */

static void adv_cb(uv_timer_t *t)
{
  struct gw *gw = t->data;
  struct sockaddr_storage ss;
  struct mqttsn_msg m;
  const char *ip = gw->cfg->lan.advertise_address;

  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(ip, gw->cfg->lan.advertise_port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(ip, gw->cfg->lan.advertise_port, (struct sockaddr_in6 *)&ss) != 0)
    return;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_ADVERTISE;
  m.u.advertise.gw_id = gw->cfg->gateway_id;
  m.u.advertise.duration = (uint16_t)(gw->cfg->lan.advertise_interval_s > 0xFFFF
                                          ? 0xFFFF
                                          : gw->cfg->lan.advertise_interval_s);
  leaves_send(gw, (struct sockaddr *)&ss, &m);
}

/* ---- QoS -1 session ----------------------------------------------------- */

static void qm1_on_up(void *ud, bool sp)
{
  struct uplink *l = ud;
  (void)sp;
  LOGI(MOD, "QoS -1 upstream session up");
  l->gw->m.upstream_connects++;
}
static void qm1_on_down(void *ud, enum upstream_reason why, int rc, uint32_t retry)
{
  struct uplink *l = ud;
  (void)rc;
  l->gw->m.upstream_failures++;
  LOGW(MOD, "QoS -1 upstream session down (%s), retry in %u ms", upstream_reason_str(why), retry);
}
static void qm1_on_message(void *ud, const char *t, size_t tl, const uint8_t *p, size_t n, int q,
                           bool r, uint16_t pid)
{
  struct uplink *l = ud;
  (void)t; (void)tl; (void)p; (void)n; (void)r;
  if (q > 0)
    upstream_puback(l->u, pid);
}
static void qm1_noop_token(void *ud, void *token) { (void)ud; (void)token; }
static void qm1_on_suback(void *ud, uint16_t pid, const uint8_t *c, size_t n)
{
  (void)ud; (void)pid; (void)c; (void)n;
}
static void qm1_on_unsuback(void *ud, uint16_t pid) { (void)ud; (void)pid; }
static void qm1_on_closed(void *ud)
{
  struct uplink *l = ud;
  struct gw *gw = l->gw;
  free(l);
  leaves_close_done(gw);
}

static const struct upstream_cbs qm1_cbs = {
    .on_up = qm1_on_up,
    .on_down = qm1_on_down,
    .on_message = qm1_on_message,
    .on_puback = qm1_noop_token,
    .on_suback = qm1_on_suback,
    .on_unsuback = qm1_on_unsuback,
    .on_dropped = qm1_noop_token,
    .on_closed = qm1_on_closed,
};

/* ---- lifecycle ---------------------------------------------------------- */

/* A device's provisioning run ended: its waiting session (if any) goes on. */
static void on_provision_step(void *ud, const char *client_id, const char *step)
{
  leaves_event(ud, "provision.step", client_id, "step", step);
}

static void on_provisioned(void *ud, const char *client_id, bool ok)
{
  struct gw *gw = ud;
  struct session *s = leaves_by_id(gw, client_id, strlen(client_id));
  leaves_event(gw, "device.state", client_id, "state", ok ? "active" : "failed");
  if (s)
    sess_on_provisioned(s, ok);
}

int gw_new(uv_loop_t *loop, const struct gw_config *cfg, struct gw **out)
{
  struct gw *gw = calloc(1, sizeof *gw);
  char err[512];

  if (!gw)
    return UV_ENOMEM;
  gw->loop = loop;
  gw->cfg = cfg;
  gw->nbuckets = 1024;
  gw->by_id = calloc(gw->nbuckets, sizeof *gw->by_id);
  gw->by_addr = calloc(gw->nbuckets, sizeof *gw->by_addr);
  if (!gw->by_id || !gw->by_addr)
    goto fail_free;
  if (cfg->upstream.tls) {
    gw->tls = tls_ctx_new(cfg->upstream.ca_file, cfg->upstream.cert_file,
                          cfg->upstream.key_file, err, sizeof err);
    if (!gw->tls) {
      LOGE(MOD, "TLS setup failed: %s", err);
      goto fail_free;
    }
  }
  {
    struct store_opts so = {.path = cfg->registry.path,
                            .key_file = cfg->registry.key_file,
                            .synchronous = cfg->registry.synchronous};
    int rc = store_open(&so, &gw->store);
    if (rc != STORE_OK) {
      LOGE(MOD, "cannot open the registry %s: %s (%s)", cfg->registry.path, store_strerror(rc),
           store_errmsg(gw->store));
      goto fail_tls;
    }
    if (admit_seed_allowlist(gw->store, cfg, (int64_t)time(NULL)) != STORE_OK)
      LOGW(MOD, "cannot add admission.allowlist entries: %s", store_errmsg(gw->store));
  }
  if (provision_new(loop, cfg, gw->store, gw->tls, &gw->m, on_provisioned, gw, &gw->prov) != 0)
    goto fail_store;
  provision_observe(gw->prov, on_provision_step, gw);
  gw->started_ms = uv_now(loop);
  if (pacer_new(loop, cfg->upstream.max_connecting, cfg->upstream.connect_rate_per_s,
                         &gw->pacer) != 0) {
    provision_free(gw->prov);
    goto fail_store;
  }
  *out = gw;
  return 0;

fail_store:
  store_close(gw->store);
fail_tls:
  if (gw->tls)
    tls_ctx_free(gw->tls);
fail_free:
  free(gw->by_id);
  free(gw->by_addr);
  free(gw);
  return UV_EINVAL;
}

int gw_start(struct gw *gw)
{
  const struct gw_config *cfg = gw->cfg;
  int rc = lan_open(gw->loop, cfg->lan.bind, cfg->lan.port, cfg->lan.recv_buffer_bytes,
                    on_datagram, gw, &gw->lan);
  if (rc != 0) {
    LOGE(MOD, "cannot bind UDP %s:%u: %s", cfg->lan.bind, cfg->lan.port, uv_strerror(rc));
    return rc;
  }
  if (provision_start(gw->prov) != 0) {
    LOGE(MOD, "provisioning could not start");
    return UV_EINVAL;
  }
  if (cfg->upstream.qos_m1_client_id) {
    struct upstream_opts o;
    struct uplink *l = calloc(1, sizeof *l);
    if (!l)
      return UV_ENOMEM;
    l->gw = gw;
    leaves_upstream_opts(gw, &o, cfg->upstream.qos_m1_client_id, NULL, NULL);
    if (upstream_new(gw->loop, &o, &qm1_cbs, l, &l->u) != UPSTREAM_OK) {
      free(l);
      LOGE(MOD, "cannot create the QoS -1 upstream session");
      return UV_ENOMEM;
    }
    gw->qm1 = l;
    upstream_start(l->u);
  }
  if (cfg->lan.advertise_address) {
    uv_timer_init(gw->loop, &gw->adv_timer);
    gw->adv_timer.data = gw;
    uint64_t ms = (uint64_t)cfg->lan.advertise_interval_s * 1000u;
    uv_timer_start(&gw->adv_timer, adv_cb, 0, ms);
    gw->adv_started = true;
  }
  LOGI(MOD, "ready: MQTT-SN on udp %s:%d, upstream %s:%u (%s), gateway id %u", cfg->lan.bind,
       lan_port(gw->lan), cfg->upstream.host, cfg->upstream.port,
       cfg->upstream.tls ? "TLS" : "plain TCP", cfg->gateway_id);
  return 0;
}


static void lan_closed(void *ud)
{
  leaves_close_done(ud);
}

static void close_done_cb(void *ud)
{
  leaves_close_done(ud);
}

static void adv_closed(uv_handle_t *h)
{
  leaves_close_done(h->data);
}

void gw_stop(struct gw *gw, void (*done)(void *), void *ud)
{
  size_t live = 0;
  uint64_t queued = 0;

  if (gw->stopping)
    return;
  gw->stopping = true;
  gw->stop_done = done;
  gw->stop_ud = ud;
  gw->pending_closes++; /* held until the end of this function */

  for (size_t i = 0; i < gw->nbuckets; i++) {
    struct session *s = gw->by_id[i];
    while (s) {
      struct session *next = s->next_by_id;
      if (sess_is_live(s))
        live++;
      queued += s->q_len;
      sess_shutdown(s, true);
      s = next;
    }
  }
  /* Free every session record (each closes its timer). */
  for (size_t i = 0; i < gw->nbuckets; i++) {
    while (gw->by_id[i])
      remove_session(gw, gw->by_id[i]);
  }
  if (gw->qm1) {
    gw->pending_closes++;
    upstream_stop(gw->qm1->u, true);
    gw->qm1 = NULL;
  }
  gw->pending_closes++;
  provision_stop(gw->prov, close_done_cb, gw);
  if (gw->pacer) {
    gw->pending_closes++;
    pacer_close(gw->pacer, close_done_cb, gw);
    gw->pacer = NULL;
  }
  if (gw->adv_started) {
    gw->pending_closes++;
    uv_close((uv_handle_t *)&gw->adv_timer, adv_closed);
  }
  if (gw->lan) {
    gw->pending_closes++;
    lan_close(gw->lan, lan_closed, gw);
    gw->lan = NULL;
  }
  LOGI(MOD, "stopping: %zu leaves told DISCONNECT, %llu queued downlink messages discarded",
       live, (unsigned long long)queued);
  leaves_close_done(gw);
}

void gw_free(struct gw *gw)
{
  if (!gw)
    return;
  provision_free(gw->prov);
  store_close(gw->store);
  if (gw->tls)
    tls_ctx_free(gw->tls);
  free(gw->by_id);
  free(gw->by_addr);
  free(gw);
}

void gw_log_metrics(struct gw *gw)
{
  char buf[4096];
  struct metrics m = gw->m;
  m.leaves_active = m.leaves_asleep = m.leaves_connecting = m.upstreams_up = 0;
  m.sessions = gw->nsessions;
  for (size_t i = 0; i < gw->nbuckets; i++)
    for (struct session *s = gw->by_id[i]; s; s = s->next_by_id)
      sess_count(s, &m);
  if (metrics_to_json(&m, buf, sizeof buf) > 0)
    LOGI("metrics", "metrics %s", buf);
}
