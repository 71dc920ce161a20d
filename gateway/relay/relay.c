/*
 * relay.c - one upstream per leaf behind the session's uplink interface
 * (see relay.h).
 *
 * A link is the glue between a session and one upstream instance.  The
 * upstream's callbacks get the link; when the session lets go of it
 * (ops->close) link->s becomes NULL, the upstream closes asynchronously and
 * the link is freed in on_closed.  So a callback never reaches a freed
 * session: reports for a detached link pass NULL (session.h).
 */
#include "relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "drain.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "provision.h"
#include "tls.h"
#include "upstream.h"

#define MOD "relay"

#define ROT_TOPICS 4              /* the reply topics a rotation subscribes to */

struct sess_link {
  struct session *s;             /* NULL once the session let go, or a drain link */
  struct relay *r;
  struct upstream *u;
  struct ob_lane *lane;          /* the leaf's outbox lane this link carries, or NULL */
  bool stopped;                  /* upstream_stop() called */
  bool was_up;                   /* its upstream came up before */
  bool rot_refused;              /* a rotation reply topic was refused (SUBACK 0x80) */
  uint8_t rot_pending;           /* rotation SUBACKs still to come */
  uint16_t rot_pid[ROT_TOPICS];  /* their packet ids (never the session's) */
  struct sess_link *prev, *next; /* every leaf link (relay.links) */
  char client_id[];              /* the leaf's ClientId */
};

struct relay {
  struct relay_env env;
  struct sess_link *qm1;         /* the gateway-level session for QoS -1, or NULL */
  struct outbox *ob;             /* store and forward, NULL when outbox.enabled is false */
  struct sess_link *links;
  bool stopping;
  uint64_t kicked_at;            /* loop ms of the last "the uplink is back" sweep */
};

static void link_insert(struct relay *r, struct sess_link *l)
{
  l->prev = NULL;
  l->next = r->links;
  if (r->links)
    r->links->prev = l;
  r->links = l;
}

static void link_remove(struct relay *r, struct sess_link *l)
{
  if (l->prev)
    l->prev->next = l->next;
  else if (r->links == l)
    r->links = l->next;
  if (l->next)
    l->next->prev = l->prev;
  l->prev = l->next = NULL;
}

/* Stops l's upstream (graceful: DISCONNECT, the broker drops the will).
 * Its lane asks for another sink when want_other and messages are left. */
static void stop_link(struct sess_link *l, bool graceful, bool want_other)
{
  if (l->stopped)
    return;
  l->stopped = true;
  if (l->lane) {
    struct ob_lane *lane = l->lane;
    l->lane = NULL;
    outbox_detach(lane, l, want_other);
  }
  drain_hold(l->r->env.drain);
  upstream_stop(l->u, graceful);
}

/* Upstream options for client_id from the configuration; cert and key are
 * per-connection certificate files (NULL: the context's). */
static void upstream_opts(const struct relay *r, struct upstream_opts *o, const char *client_id,
                          const char *cert, const char *key)
{
  const struct gw_config *cfg = r->env.cfg;
  memset(o, 0, sizeof *o);
  o->host = cfg->upstream.host;
  o->port = cfg->upstream.port;
  o->tls = r->env.tls;
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
  o->max_refusals = cfg->upstream.max_refusals;
  o->pacer = r->env.pacer;
}

static int map_err(int rc)
{
  if (rc == UPSTREAM_OK)
    return SESS_UP_OK;
  return rc == UPSTREAM_EFULL ? SESS_UP_FULL : SESS_UP_ERROR;
}

/* ---- the upstream's callbacks for a leaf's link ------------------------- */

/* One upstream came up: the uplink is back, so the others that are backing
 * off (after an outage, up to upstream.backoff_cap_ms) try now, through the
 * connect pacer (upstream.connect_rate_per_s), instead of each waiting out
 * its own back-off.  At most one sweep a second: O(links) each. */
static void uplink_back(struct relay *r)
{
  uint64_t now = uv_now(r->env.loop);
  if (r->kicked_at && now - r->kicked_at < 1000)
    return;
  r->kicked_at = now;
  for (struct sess_link *l = r->links; l; l = l->next)
    if (!l->stopped && !upstream_is_up(l->u))
      upstream_kick(l->u);
}

static void up_on_up(void *ud, bool session_present)
{
  struct sess_link *l = ud;
  uplink_back(l->r);
  l->rot_pending = 0;
  provision_link_up(l->r->env.prov, l->client_id);
  if (l->was_up)
    l->r->env.m->upstream_reconnects++;
  l->was_up = true;
  if (l->lane)
    outbox_sink_up(l->lane, l, true);
  if (!l->s)
    return;
  sess_up_up(l->s, session_present); /* counts upstream_connects */
}

static void up_on_down(void *ud, enum upstream_reason why, int connack_rc, uint32_t retry_ms)
{
  struct sess_link *l = ud;
  static struct log_ratelimit rl;
  bool refused = why == UPSTREAM_R_CONNACK && (connack_rc == 2 || connack_rc == 4 || connack_rc == 5);
  l->rot_pending = 0;
  provision_link_down(l->r->env.prov, l->client_id);
  if (l->lane)
    outbox_sink_up(l->lane, l, false);
  if (!l->s) {
    /* A link that only drains a leaf's outbox: a refused identity stays
     * refused, so its messages wait (outbox.ttl_s) for the leaf's return. */
    if (refused)
      stop_link(l, true, false);
    return;
  }
  if (why == UPSTREAM_R_SWITCH) {
    sess_up_down(l->s, false); /* a new certificate, back in a moment */
    return;
  }
  log_ratelimited(&rl, LOG_WARN, MOD, "%s: upstream down (%s%s%s), retry in %u ms",
                  upstream_client_id(l->u), upstream_reason_str(why),
                  why == UPSTREAM_R_CONNACK ? ": " : "",
                  why == UPSTREAM_R_CONNACK ? "refused" : "", retry_ms);
  /* CONNACK 2 (identifier rejected), 4 (bad user name or password) and 5
   * (not authorized) refuse the identity itself: retrying will not help. */
  sess_up_down(l->s, refused);
}

static void up_on_message(void *ud, const char *topic, size_t topic_len, const uint8_t *payload,
                          size_t len, int qos, bool retain, uint16_t packet_id)
{
  struct sess_link *l = ud;
  /* A reply to the gateway's own rotation request never reaches the leaf
   * (docs/rotation.md §3). */
  if (topic_len > 5 && topic[0] == '$' &&
      provision_link_message(l->r->env.prov, l->client_id, topic, topic_len, payload, len)) {
    if (qos == 1)
      upstream_puback(l->u, packet_id);
    return;
  }
  /* Never acknowledged for a gone leaf: the broker delivers it again to the
   * next session of the same client id. */
  if (l->s)
    sess_up_message(l->s, topic, topic_len, payload, len, qos, retain, packet_id);
}

/* With the outbox, every QoS 1 token on a leaf's link is an outbox message
 * (the will goes without one). */
static void up_on_puback(void *ud, void *token)
{
  struct sess_link *l = ud;
  if (l->r->ob) {
    if (token)
      outbox_acked(token);
    return;
  }
  if (token) /* none: a rotation request of the gateway's */
    sess_up_acked(l->s, token);
}

static void up_on_dropped(void *ud, void *token)
{
  struct sess_link *l = ud;
  if (l->r->ob) {
    if (token)
      outbox_returned(token); /* still on disk: it goes again, in its place */
    return;
  }
  if (!token)
    return;
  l->r->env.m->queue_discarded++;
  sess_up_dropped(l->s, token);
}

static void up_on_refused(void *ud, void *token)
{
  struct sess_link *l = ud;
  if (l->r->ob) {
    if (token)
      outbox_refused(token);
    return;
  }
  if (token)
    sess_up_refused(l->s, token);
}

static void up_on_suback(void *ud, uint16_t packet_id, const uint8_t *codes, size_t n)
{
  struct sess_link *l = ud;
  for (unsigned i = 0; l->rot_pending > 0 && i < ROT_TOPICS; i++) {
    if (l->rot_pid[i] != packet_id)
      continue;
    l->rot_pid[i] = 0;
    if (n < 1 || codes[0] == 0x80)
      l->rot_refused = true;
    if (--l->rot_pending == 0)
      provision_link_ready(l->r->env.prov, l->client_id, !l->rot_refused);
    return;
  }
  if (l->s)
    sess_up_suback(l->s, packet_id, codes, n);
}

static void up_on_unsuback(void *ud, uint16_t packet_id)
{
  struct sess_link *l = ud;
  if (l->s)
    sess_up_unsuback(l->s, packet_id);
}

static void up_on_closed(void *ud)
{
  struct sess_link *l = ud;
  struct drain *d = l->r->env.drain;
  if (l->lane)
    outbox_detach(l->lane, l, false);
  link_remove(l->r, l);
  sess_up_closed(l->s, l);
  free(l);
  drain_release(d);
}

static const struct upstream_cbs leaf_cbs = {
    .on_up = up_on_up,
    .on_down = up_on_down,
    .on_message = up_on_message,
    .on_puback = up_on_puback,
    .on_suback = up_on_suback,
    .on_unsuback = up_on_unsuback,
    .on_dropped = up_on_dropped,
    .on_refused = up_on_refused,
    .on_closed = up_on_closed,
};

/* ---- the uplink interface ----------------------------------------------- */

/* Creates and starts the leaf's upstream session with its identity: the
 * client id (the thing name once provisioned) and its TLS client identity
 * (NULL: the configured certificate, or <cert_dir>/<ClientId>.crt). */
static int start_upstream(struct relay *r, struct session *s, const struct sess_open *so,
                          const struct provision_identity *id, struct sess_link **out)
{
  const struct gw_config *cfg = r->env.cfg;
  struct upstream_opts o;
  struct sess_link *l;
  char cert[4096], key[4096];
  const char *certp = NULL, *keyp = NULL;

  if (cfg->upstream.cert_dir && !id->tls) {
    snprintf(cert, sizeof cert, "%s/%s.crt", cfg->upstream.cert_dir, so->client_id);
    snprintf(key, sizeof key, "%s/%s.key", cfg->upstream.cert_dir, so->client_id);
    /* No certificate, no upstream: refused now rather than accepted into
     * an outbox that no connection will ever drain. */
    if (access(cert, R_OK) != 0 || access(key, R_OK) != 0) {
      static struct log_ratelimit rl;
      log_ratelimited(&rl, LOG_WARN, MOD, "%s: no readable %s and %s (upstream.cert_dir)",
                      so->client_id, cert, key);
      return -1;
    }
    certp = cert;
    keyp = key;
  }
  upstream_opts(r, &o, id->thing_name, certp, keyp);
  o.identity = id->tls;
  o.clean_session = cfg->upstream.clean_session && so->clean;
  if (so->will_topic) {
    o.will.topic = so->will_topic;
    o.will.payload = so->will_msg;
    o.will.payload_len = so->will_msg_len;
    o.will.qos = so->will_qos;
    o.will.retain = so->will_retain;
  }
  l = calloc(1, sizeof *l + strlen(so->client_id) + 1);
  if (!l)
    return -1;
  memcpy(l->client_id, so->client_id, strlen(so->client_id) + 1);
  l->s = s;
  l->r = r;
  if (upstream_new(r->env.loop, &o, &leaf_cbs, l, &l->u) != UPSTREAM_OK) {
    free(l);
    return -1;
  }
  link_insert(r, l);
  if (upstream_start(l->u) != UPSTREAM_OK) {
    l->s = NULL;
    stop_link(l, false, false);
    return -1;
  }
  *out = l;
  return 0;
}

/* The lane of the leaf's outbox goes with its new link: a link that was
 * only draining it is let go (the new one carries the rest, in order). */
static int carry_lane(struct relay *r, struct sess_link *l, const char *client_id)
{
  struct ob_lane *lane = outbox_lane(r->ob, client_id);
  struct sess_link *old;
  if (!lane)
    return -1;
  old = outbox_sink(lane);
  if (old && old != l) {
    outbox_detach(lane, old, false);
    old->lane = NULL;
    if (!old->s)
      stop_link(old, true, false);
  }
  l->lane = lane;
  outbox_attach(lane, l, upstream_is_up(l->u));
  return 0;
}

static int op_open(void *ctx, struct session *s, const struct sess_open *so,
                   struct sess_link **link, char *reason, size_t cap)
{
  struct relay *r = ctx;
  struct provision_identity id;
  int st, rc;

  *link = NULL;
  st = provision_ensure(r->env.prov, so->client_id, &id, reason, cap);
  if (st == PROVISION_PENDING)
    return SESS_OPEN_PENDING;
  if (st == PROVISION_REFUSED)
    return SESS_OPEN_REFUSED;
  rc = start_upstream(r, s, so, &id, link);
  tls_identity_unref(id.tls);
  if (rc != 0)
    return SESS_OPEN_ERROR;
  if (!r->ob)
    return SESS_OPEN_OK;
  if (carry_lane(r, *link, so->client_id) != 0) {
    (*link)->s = NULL;
    stop_link(*link, true, false);
    *link = NULL;
    return SESS_OPEN_ERROR;
  }
  /* A known identity with an outbox is accepted now: its publishes are
   * stored until the upstream is up (docs/outbox.md). */
  return SESS_OPEN_READY;
}

static void op_close(void *ctx, struct sess_link *l, bool graceful)
{
  struct relay *r = ctx;
  l->s = NULL;
  /* A leaf that ends gracefully with messages still in its outbox: the
   * link stays to deliver them, then closes (ob_idle). */
  if (graceful && l->lane && outbox_lane_busy(l->lane) && !r->stopping && !l->stopped) {
    LOGD(MOD, "%s: session ended, its link stays to deliver the outbox",
         upstream_client_id(l->u));
    return;
  }
  /* An abrupt end (the will): another link delivers what is left. */
  stop_link(l, graceful, !graceful);
}

static int op_publish(void *ctx, struct sess_link *l, const char *topic, size_t topic_len,
                      const uint8_t *payload, size_t len, int qos, bool retain, void *token)
{
  struct relay *r = ctx;
  /* Every QoS 1 publish of a leaf goes through its outbox: its own, and its
   * will when the session publishes it (no token: nobody waits for it). */
  if (r->ob && qos == 1 && l->lane) {
    switch (outbox_put(l->lane, l, topic, topic_len, payload, len, retain, token)) {
    case OUTBOX_OK: return SESS_UP_OK;
    case OUTBOX_EINVAL: return SESS_UP_ERROR;
    default: return SESS_UP_FULL;
    }
  }
  return map_err(upstream_publish(l->u, topic, topic_len, payload, len, qos, retain, token));
}

static int op_subscribe(void *ctx, struct sess_link *l, const char *filter, size_t len, int qos,
                        uint16_t *pid)
{
  (void)ctx;
  return map_err(upstream_subscribe(l->u, filter, len, qos, pid));
}

static int op_unsubscribe(void *ctx, struct sess_link *l, const char *filter, size_t len,
                          uint16_t *pid)
{
  (void)ctx;
  return map_err(upstream_unsubscribe(l->u, filter, len, pid));
}

static void op_kick(void *ctx, struct sess_link *l)
{
  (void)ctx;
  upstream_kick(l->u);
}

static void op_puback(void *ctx, struct sess_link *l, uint16_t pid)
{
  (void)ctx;
  upstream_puback(l->u, pid);
}

static int op_publish_anon(void *ctx, const char *topic, size_t topic_len,
                           const uint8_t *payload, size_t len, bool retain)
{
  struct relay *r = ctx;
  if (!r->qm1)
    return SESS_UP_ERROR;
  return map_err(upstream_publish(r->qm1->u, topic, topic_len, payload, len, 0, retain, NULL));
}

static const struct sess_uplink_ops ops = {
    .open = op_open,
    .close = op_close,
    .publish = op_publish,
    .subscribe = op_subscribe,
    .unsubscribe = op_unsubscribe,
    .kick = op_kick,
    .puback = op_puback,
    .publish_anon = op_publish_anon,
};

const struct sess_uplink_ops *relay_ops(void)
{
  return &ops;
}

/* ---- the QoS -1 session ------------------------------------------------- */

static void qm1_on_up(void *ud, bool sp)
{
  struct sess_link *l = ud;
  (void)sp;
  LOGI(MOD, "QoS -1 upstream session up");
  l->r->env.m->upstream_connects++;
}

static void qm1_on_down(void *ud, enum upstream_reason why, int rc, uint32_t retry)
{
  struct sess_link *l = ud;
  (void)rc;
  l->r->env.m->upstream_failures++;
  LOGW(MOD, "QoS -1 upstream session down (%s), retry in %u ms", upstream_reason_str(why), retry);
}

static void qm1_on_message(void *ud, const char *t, size_t tl, const uint8_t *p, size_t n, int q,
                           bool rt, uint16_t pid)
{
  struct sess_link *l = ud;
  (void)t; (void)tl; (void)p; (void)n; (void)rt;
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
  struct sess_link *l = ud;
  struct drain *d = l->r->env.drain;
  free(l);
  drain_release(d);
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

/* ---- the outbox's hooks -------------------------------------------------- */

static int ob_send(void *ud, void *sink, struct ob_msg *m, const char *topic, size_t topic_len,
                   const uint8_t *payload, size_t len, bool retain)
{
  struct sess_link *l = sink;
  (void)ud;
  return upstream_publish(l->u, topic, topic_len, payload, len, 1, retain, m) == UPSTREAM_OK
             ? 0
             : -1;
}

static void ob_answered(void *ud)
{
  (void)ud;
  sess_up_flush();
}

static void ob_stored(void *ud, void *owner, void *token, bool ok)
{
  struct sess_link *l = owner;
  struct session *s = l ? l->s : NULL;
  (void)ud;
  if (!token)
    return; /* a will */
  if (ok)
    sess_up_acked(s, token);
  else
    sess_up_not_taken(s, token);
}

/* A leaf's outbox has messages and no link to carry them (after a restart,
 * or once the leaf went without a graceful end): a link of its own, with
 * no will and without cleaning the leaf's broker session. */
static void ob_need_sink(void *ud, const char *client_id)
{
  struct relay *r = ud;
  struct provision_identity id;
  struct sess_open so = {.client_id = client_id, .clean = false};
  struct sess_link *l = NULL;
  char reason[256] = "";
  int st;

  if (r->stopping)
    return;
  st = provision_ensure(r->env.prov, client_id, &id, reason, sizeof reason);
  if (st != PROVISION_READY) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: its outbox waits: no identity to deliver it with (%s)",
                    client_id, reason[0] ? reason : "pending");
    return;
  }
  if (start_upstream(r, NULL, &so, &id, &l) == 0 && carry_lane(r, l, client_id) != 0)
    stop_link(l, true, false);
  tls_identity_unref(id.tls);
  if (l)
    LOGD(MOD, "%s: a link delivers its outbox", client_id);
}

static void ob_idle(void *ud, void *sink)
{
  struct sess_link *l = sink;
  (void)ud;
  if (!l->s)
    stop_link(l, true, false);
}

/* ---- the provisioner's rotations over a leaf's own upstream -------------- */

/* The link that carries client_id's traffic now: its session's, else one
 * that drains its outbox; NULL when it has none. */
static struct sess_link *link_of(struct relay *r, const char *client_id)
{
  struct sess_link *drain = NULL;
  for (struct sess_link *l = r->links; l; l = l->next) {
    if (l->stopped || strcmp(l->client_id, client_id) != 0)
      continue;
    if (l->s)
      return l;
    drain = l;
  }
  return drain;
}

static int rot_subscribe(void *ud, const char *client_id, const char *const *topics, size_t n)
{
  struct sess_link *l = link_of(ud, client_id);
  if (!l || !upstream_is_up(l->u) || n > ROT_TOPICS)
    return -1;
  l->rot_pending = 0;
  l->rot_refused = false;
  for (size_t i = 0; i < n; i++) {
    if (upstream_subscribe(l->u, topics[i], strlen(topics[i]), 1, &l->rot_pid[i]) !=
        UPSTREAM_OK) {
      l->rot_pending = 0;
      return -1;
    }
    l->rot_pending++;
  }
  return 0;
}

static int rot_publish(void *ud, const char *client_id, const char *topic, const char *payload,
                       size_t len)
{
  struct sess_link *l = link_of(ud, client_id);
  if (!l || !upstream_is_up(l->u))
    return -1;
  return upstream_publish(l->u, topic, strlen(topic), (const uint8_t *)payload, len, 1, false,
                          NULL) == UPSTREAM_OK
             ? 0
             : -1;
}

/* The registry made a new certificate the leaf's active one: every link
 * of the leaf reconnects with it (provision_ensure gives it now). */
static void rot_rotated(void *ud, const char *client_id)
{
  struct relay *r = ud;
  struct provision_identity id;
  char reason[256];

  if (r->stopping ||
      provision_ensure(r->env.prov, client_id, &id, reason, sizeof reason) != PROVISION_READY)
    return;
  for (struct sess_link *l = r->links; l; l = l->next)
    if (!l->stopped && strcmp(l->client_id, client_id) == 0 && id.tls)
      upstream_switch_identity(l->u, id.tls);
  tls_identity_unref(id.tls);
}

static const struct provision_link_ops rot_ops = {
    .subscribe = rot_subscribe,
    .publish = rot_publish,
    .rotated = rot_rotated,
};

/* ---- lifecycle ---------------------------------------------------------- */

int relay_new(const struct relay_env *env, struct relay **out)
{
  struct relay *r = calloc(1, sizeof *r);
  if (!r)
    return UV_ENOMEM;
  r->env = *env;
  if (env->prov)
    provision_set_link(env->prov, &rot_ops, r);
  if (env->cfg->outbox.enabled) {
    struct outbox_env oe = {.loop = env->loop, .cfg = env->cfg, .store = env->store,
                            .m = env->m, .drain = env->drain, .send = ob_send,
                            .stored = ob_stored, .answered = ob_answered, .need_sink = ob_need_sink, .idle = ob_idle,
                            .ud = r};
    if (outbox_new(&oe, &r->ob) != 0) {
      free(r);
      return UV_ENOMEM;
    }
  }
  *out = r;
  return 0;
}

struct outbox *relay_outbox(struct relay *r)
{
  return r->ob;
}

void relay_count(struct relay *r, struct metrics *m)
{
  struct outbox_info t;
  if (!r->ob)
    return;
  outbox_info(r->ob, NULL, &t);
  m->outbox_messages = t.messages;
  m->outbox_bytes = t.bytes;
  m->outbox_leaves = t.lanes;
  m->outbox_oldest_age_s = t.oldest_age_s > 0 ? (uint64_t)t.oldest_age_s : 0;
}

int relay_start(struct relay *r)
{
  const char *id = r->env.cfg->upstream.qos_m1_client_id;
  struct upstream_opts o;
  struct sess_link *l;
  int rc;

  if (r->ob && (rc = outbox_start(r->ob)) != 0)
    return rc;
  if (!id)
    return 0;
  l = calloc(1, sizeof *l + 1); /* an empty client_id: not a leaf's */
  if (!l)
    return UV_ENOMEM;
  l->r = r;
  upstream_opts(r, &o, id, NULL, NULL);
  if (upstream_new(r->env.loop, &o, &qm1_cbs, l, &l->u) != UPSTREAM_OK) {
    free(l);
    LOGE(MOD, "cannot create the QoS -1 upstream session");
    return UV_ENOMEM;
  }
  r->qm1 = l;
  upstream_start(l->u);
  return 0;
}

void relay_stop(struct relay *r)
{
  struct sess_link *l, *next;
  r->stopping = true;
  /* What is staged is committed (it stays on disk for the next start);
   * links that only drained go now. */
  if (r->ob)
    outbox_stop(r->ob);
  for (l = r->links; l; l = next) {
    next = l->next;
    if (!l->s)
      stop_link(l, true, false);
  }
  if (!r->qm1)
    return;
  drain_hold(r->env.drain);
  upstream_stop(r->qm1->u, true);
  r->qm1 = NULL;
}

void relay_free(struct relay *r)
{
  if (!r)
    return;
  outbox_free(r->ob);
  free(r);
}
