/*
 * upstream.c - one MQTT 3.1.1 client connection on libuv (see upstream.h).
 *
 * Roadmap of the state machine (all transitions go through set_state):
 *
 *   IDLE --start--> BACKOFF(0 ms) --timer--> RESOLVING --gai_cb--> CONNECTING
 *     --connect_cb--> HANDSHAKE (TLS only) --handshake done--> WAIT_CONNACK
 *     --CONNACK 0--> UP
 *
 *   A failure before UP, or the loss of UP, closes the connection object
 *   (struct conn) with a reason; its close callback calls lost(), which
 *   reports on_down and arms the back-off timer.  upstream_stop() moves to
 *   CLOSING from any state; once the connection handles, the pending DNS
 *   request and the timer are all closed, finish() reports on_dropped for
 *   what was never acknowledged, frees the upstream and calls on_closed.
 *
 * Why a separate struct conn per attempt: libuv closes handles
 * asynchronously.  A fresh uv_tcp_t per attempt means a new attempt never
 * waits for the previous handle's close callback, and a callback of an old
 * handle recognises itself as stale (u->conn != c).
 *
 * Re-entrancy: owner callbacks may call any upstream_* function, including
 * upstream_stop().  Code that calls out re-checks conn_alive() afterwards,
 * and nothing is freed except in libuv close callbacks, which the loop runs
 * after our own frames have returned.
 *
 * Memory per connection: the receive buffers for ciphertext and plaintext
 * are shared per thread (libuv calls alloc_cb and read_cb back to back, and
 * every byte is consumed before read_cb returns).  What stays with a
 * connection is the SSL object, a small MQTT input buffer that grows only
 * for a large packet and shrinks afterwards, and the write requests in
 * flight.
 */
#include "upstream.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls.h"
#include "topic.h"
#include "upstream_int.h"

#define MOD "upstream"


static void pace_release(struct upstream *u);
static void pace_start(struct upstream *u);
static void lost(struct upstream *u, enum upstream_reason why, int connack_rc);
static void closing_progress(struct upstream *u);
static void send_queue(struct upstream *u);
static void handle_packet(struct upstream *u, struct conn *c, const uint8_t *pkt,
                                    size_t len);
static void timer_cb(uv_timer_t *t);


static char *dup_str(const char *s, bool *fail)
{
  char *d;
  if (!s)
    return NULL;
  d = strdup(s);
  if (!d)
    *fail = true;
  return d;
}





/* ---- the outgoing queue ---- */

static bool id_in_use(const struct upstream *u, uint16_t id)
{
  for (const struct omsg *m = u->qhead; m; m = m->next)
    if (m->packet_id == id)
      return true;
  return idset_has(&u->subs, id);
}

/* Next free packet id: never 0, never one still in flight. 0 if none. */
static uint16_t alloc_id(struct upstream *u)
{
  for (uint32_t tries = 0; tries < 65535; tries++) {
    u->last_id = (uint16_t)(u->last_id == 65535 ? 1 : u->last_id + 1);
    if (!id_in_use(u, u->last_id))
      return u->last_id;
  }
  return 0;
}

static void unlink_msg(struct upstream *u, struct omsg *prev, struct omsg *m)
{
  if (prev)
    prev->next = m->next;
  else
    u->qhead = m->next;
  if (u->qtail == m)
    u->qtail = prev;
  u->nqueued--;
}

static void fill_publish(const struct omsg *m, struct mqtt_publish *p)
{
  *p = (struct mqtt_publish){
      .dup = m->ever_sent && m->qos > 0,
      .qos = m->qos,
      .retain = m->retain,
      .topic = {m->data, m->topic_len},
      .packet_id = m->packet_id,
      .payload = {m->data + m->topic_len, m->len},
  };
}

/* Encodes p and sends it on c: a packet of up to SMALL_PACKET bytes from the
 * stack (no allocation), a larger one through a write request. */
static int send_publish(struct upstream *u, struct conn *c, const struct mqtt_publish *p)
{
  uint8_t small[SMALL_PACKET];
  struct wreq *w;
  int n = mqtt_encode_publish(p, NULL, 0);

  if (n <= 0)
    return UV_EINVAL;
  if ((size_t)n <= sizeof small) {
    mqtt_encode_publish(p, small, (size_t)n);
    return uconn_send_bytes(u, c, small, (size_t)n);
  }
  if (!(w = uconn_wreq_new((size_t)n)))
    return UV_ENOMEM;
  mqtt_encode_publish(p, w->data, (size_t)n);
  return uconn_send(u, c, w);
}

/* Writes every message not yet written on this connection, in order.  QoS 0
 * messages leave the queue once written; QoS 1 ones stay until PUBACK. */
static void send_queue(struct upstream *u)
{
  struct conn *c = u->conn;
  struct omsg *prev = NULL, *m = u->qhead;

  while (m && uconn_up(u)) {
    struct mqtt_publish p;

    if (m->sent) {
      prev = m;
      m = m->next;
      continue;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_HIGH_WATER)
      return; /* write_cb resumes */
    fill_publish(m, &p);
    if (send_publish(u, c, &p) < 0) {
      uconn_abort(c, UPSTREAM_R_TCP, 0);
      return;
    }
    if (m->qos == 0) {
      struct omsg *next = m->next;
      unlink_msg(u, prev, m);
      free(m);
      m = next;
      continue;
    }
    m->sent = m->ever_sent = true;
    m->sent_at = uv_now(u->loop);
    prev = m;
    m = m->next;
  }
}


/* The connection attempt failed or the connection was lost: forget the
 * per-connection state, schedule a retry and tell the owner. */
/* The broker closed an UP connection: if it did so right after a QoS 1
 * PUBLISH it never acknowledged, that message gets a strike, and after
 * max_refusals strikes in a row it is refused and dropped. */
static void strike_refused(struct upstream *u, enum upstream_reason why)
{
  struct omsg *prev = NULL, *m;
  uint64_t now = uv_now(u->loop);

  if (u->state != U_UP || why != UPSTREAM_R_TCP || u->o.max_refusals == 0)
    return;
  for (m = u->qhead; m; prev = m, m = m->next)
    if (m->qos == 1 && m->sent)
      break;
  if (!m || now - m->sent_at > REFUSAL_WINDOW_MS)
    return;
  if (++m->strikes < u->o.max_refusals)
    return;
  LOGW(MOD, "%s: the broker closed the connection after the same message %u times: "
       "refused, dropped", u->o.client_id, (unsigned)m->strikes);
  unlink_msg(u, prev, m);
  {
    void *token = m->token;
    free(m);
    if (u->cbs.on_refused)
      u->cbs.on_refused(u->ud, token);
    else if (u->cbs.on_dropped)
      u->cbs.on_dropped(u->ud, token);
  }
}

static void lost(struct upstream *u, enum upstream_reason why, int connack_rc)
{
  uint32_t delay;

  strike_refused(u, why);
  if (u->state == U_UP && uv_now(u->loop) - u->up_since >= STABLE_UP_MS)
    backoff_reset(&u->bo);
  u->kicked = false;
  pace_release(u);
  uconn_free_addrinfo(u);
  idset_clear(&u->in_qos1);
  idset_clear(&u->subs);
  for (struct omsg *m = u->qhead; m; m = m->next)
    m->sent = false;
  u->ping_outstanding = false;
  if (u->state == U_CLOSING)
    return;
  uconn_set_state(u, U_BACKOFF);
  if (u->switching) {
    /* A new identity, not a failure: straight back (within the interval). */
    u->switching = false;
    backoff_reset(&u->bo);
    delay = 0;
  } else {
    delay = backoff_next(&u->bo);
  }
  {
    /* AWS IoT accepts one CONNECT per second per client id (docs/protocol-notes.md
     * §4.6): attempts of one upstream start at least a second apart. */
    uint64_t since = uv_now(u->loop) - u->attempt_started;
    if (since + delay < MIN_CONNECT_INTERVAL_MS)
      delay = (uint32_t)(MIN_CONNECT_INTERVAL_MS - since);
  }
  uv_timer_start(&u->timer, timer_cb, delay, 0);
  if (why == UPSTREAM_R_SWITCH)
    LOGI(MOD, "%s: reconnecting with its new certificate in %u ms", u->o.client_id, delay);
  else if (why == UPSTREAM_R_CONNACK)
    LOGW(MOD, "%s: %s (%s), retry in %u ms", u->o.client_id, upstream_reason_str(why),
         mqtt_connack_str(connack_rc), delay);
  else
    LOGW(MOD, "%s: %s, retry in %u ms", u->o.client_id, upstream_reason_str(why), delay);
  if (u->cbs.on_down)
    u->cbs.on_down(u->ud, why, why == UPSTREAM_R_CONNACK ? connack_rc : 0, delay);
}

static void finish(struct upstream *u)
{
  void (*on_closed)(void *) = u->cbs.on_closed;
  void *ud = u->ud;

  /* Nothing more can be queued: upstream_publish returns ECLOSED now. */
  while (u->qhead) {
    struct omsg *m = u->qhead;
    unlink_msg(u, NULL, m);
    if (m->qos > 0 || !m->sent) {
      void *token = m->token;
      free(m);
      if (u->cbs.on_dropped)
        u->cbs.on_dropped(ud, token);
    } else {
      free(m);
    }
  }
  uconn_free_addrinfo(u);
  idset_clear(&u->subs);
  idset_clear(&u->in_qos1);
  idset_clear(&u->in_qos2);
  if (u->o.password)
    memset((char *)u->o.password, 0, strlen(u->o.password));
  free((char *)u->o.host);
  free((char *)u->o.alpn);
  free((char *)u->o.cert_file);
  free((char *)u->o.key_file);
  tls_identity_unref(u->o.identity);
  free((char *)u->o.client_id);
  free((char *)u->o.username);
  free((char *)u->o.password);
  free((char *)u->o.will.topic);
  free(u->will_payload);
  free(u);
  if (on_closed)
    on_closed(ud);
}

static void timer_close_cb(uv_handle_t *h) { finish(h->data); }

/* In CLOSING: once the last handle and request are done, close the timer;
 * its close callback frees the upstream. */
static void closing_progress(struct upstream *u)
{
  if (u->state != U_CLOSING || u->timer_closing || u->nconns > 0 || u->gai)
    return;
  u->timer_closing = true;
  uv_close((uv_handle_t *)&u->timer, timer_close_cb);
}


static void shutdown_cb(uv_shutdown_t *req, int status)
{
  struct conn *c = req->handle->data;
  uconn_abort(c, UPSTREAM_R_TCP, 0);
}

/* The graceful end of an UP connection: DISCONNECT, the TLS close, then a
 * FIN once the writes are out (cb); 0 or an error (abort it then). */
static int say_goodbye(struct upstream *u, struct conn *c, uv_shutdown_cb cb)
{
  int r;
  uv_read_stop((uv_stream_t *)&c->tcp);
  r = uconn_send_small(u, c, MQTT_DISCONNECT, 0);
  if (r == 0 && c->tls) {
    tls_shutdown(c->tls);
    r = uconn_flush_tls(c);
  }
  /* uv_shutdown waits for the queued writes, then sends FIN. */
  return r == 0 ? uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, cb) : r;
}

static void switch_shutdown_cb(uv_shutdown_t *req, int status)
{
  struct conn *c = req->handle->data;
  (void)status;
  uconn_abort(c, UPSTREAM_R_SWITCH, 0);
}

static void keepalive_arm(struct upstream *u)
{
  uint64_t ka = (uint64_t)u->o.keepalive * 1000;
  uint64_t resp = ((uint64_t)u->o.keepalive / 2 + 5) * 1000;

  if (ka == 0) {
    uv_timer_stop(&u->timer);
    return;
  }
  uconn_arm_timer_at(u, u->ping_outstanding ? u->ping_sent + resp : u->last_tx + ka);
}

static void keepalive_tick(struct upstream *u)
{
  struct conn *c = u->conn;
  uint64_t now = uv_now(u->loop);
  uint64_t ka = (uint64_t)u->o.keepalive * 1000;
  uint64_t resp = ((uint64_t)u->o.keepalive / 2 + 5) * 1000;

  if (!c || c->closing || ka == 0)
    return;
  if (u->ping_outstanding) {
    if (now - u->ping_sent >= resp) {
      LOGW(MOD, "%s: no PINGRESP within %llu ms", u->o.client_id, (unsigned long long)resp);
      uconn_abort(c, UPSTREAM_R_TIMEOUT, 0);
      return;
    }
  } else if (now - u->last_tx >= ka) {
    if (uconn_send_small(u, c, MQTT_PINGREQ, 0) < 0) {
      uconn_abort(c, UPSTREAM_R_TCP, 0);
      return;
    }
    u->ping_outstanding = true;
    u->ping_sent = now;
  }
  keepalive_arm(u);
}

static void timer_cb(uv_timer_t *t)
{
  struct upstream *u = t->data;
  struct conn *c = u->conn;

  switch (u->state) {
  case U_BACKOFF:
    pace_start(u);
    break;
  case U_RESOLVING:
    LOGW(MOD, "%s: DNS for %s timed out", u->o.client_id, u->o.host);
    /* The request may already run in the thread pool; its late callback
     * is then discarded (or adopted by the next attempt). */
    if (u->gai)
      uv_cancel((uv_req_t *)u->gai);
    lost(u, UPSTREAM_R_TIMEOUT, 0);
    break;
  case U_CONNECTING:
  case U_HANDSHAKE:
  case U_WAIT_CONNACK:
    if (uv_now(u->loop) < u->deadline) {
      uconn_arm_timer_at(u, u->deadline);
    } else if (c && !c->closing) {
      LOGW(MOD, "%s: connect to %s:%u timed out in %s", u->o.client_id, u->o.host, u->o.port,
           uconn_state_names[u->state]);
      uconn_abort(c, UPSTREAM_R_TIMEOUT, 0);
    } else if (!c) {
      lost(u, UPSTREAM_R_TIMEOUT, 0);
    }
    break;
  case U_UP:
    keepalive_tick(u);
    break;
  case U_CLOSING:
    /* The graceful flush took too long. */
    if (c)
      uconn_abort(c, UPSTREAM_R_TCP, 0);
    break;
  case U_IDLE:
    break;
  }
}

/* ---- incoming packets ---- */

static void handle_connack(struct upstream *u, struct conn *c, const struct mqtt_packet *p)
{
  pace_release(u); /* the attempt is over, whatever the answer */
  if (p->type != MQTT_CONNACK) {
    LOGW(MOD, "%s: %s before CONNACK", u->o.client_id, mqtt_type_name(p->type));
    uconn_abort(c, UPSTREAM_R_PROTOCOL, 0);
    return;
  }
  if (p->u.connack.rc != MQTT_CONNACK_ACCEPTED) {
    uconn_abort(c, UPSTREAM_R_CONNACK, p->u.connack.rc);
    return;
  }
  uconn_set_state(u, U_UP);
  /* The back-off is reset only once the connection proved stable
   * (lost), not here: a broker that accepts and then closes at
   * once must not get a reconnect every second. */
  u->up_since = uv_now(u->loop);
  u->ping_outstanding = false;
  /* Without a session on the broker no PUBREL can follow. */
  if (!p->u.connack.session_present)
    idset_clear(&u->in_qos2);
  LOGI(MOD, "%s: up (%s:%u%s, session %s)", u->o.client_id, u->o.host, u->o.port,
       c->tls ? ", TLS" : "", p->u.connack.session_present ? "present" : "new");
  keepalive_arm(u);
  send_queue(u);
  if (uconn_alive(u, c) && u->cbs.on_up)
    u->cbs.on_up(u->ud, p->u.connack.session_present);
}

static void handle_puback(struct upstream *u, uint16_t id)
{
  struct omsg *prev = NULL;

  for (struct omsg *m = u->qhead; m; prev = m, m = m->next) {
    if (m->qos == 1 && m->packet_id == id && m->sent) {
      void *token = m->token;
      unlink_msg(u, prev, m);
      free(m);
      if (u->cbs.on_puback)
        u->cbs.on_puback(u->ud, token);
      return;
    }
  }
  LOGD(MOD, "%s: PUBACK for unknown id %u", u->o.client_id, id);
}

static void handle_publish(struct upstream *u, struct conn *c, const struct mqtt_publish *p)
{
  if (p->qos == 2 && idset_has(&u->in_qos2, p->packet_id)) {
    /* A resend of a message already delivered: only repeat PUBREC. */
    uconn_send_small_or_abort(u, c, MQTT_PUBREC, p->packet_id);
    return;
  }
  if ((p->qos == 1 && idset_add(&u->in_qos1, p->packet_id) < 0) ||
      (p->qos == 2 && idset_add(&u->in_qos2, p->packet_id) < 0)) {
    LOGW(MOD, "%s: out of memory tracking packet ids", u->o.client_id);
    uconn_abort(c, UPSTREAM_R_TCP, 0);
    return;
  }
  if (u->cbs.on_message)
    u->cbs.on_message(u->ud, (const char *)p->topic.p, p->topic.len, p->payload.p,
                      p->payload.len, p->qos, p->retain, p->packet_id);
  if (p->qos == 2 && uconn_alive(u, c))
    uconn_send_small_or_abort(u, c, MQTT_PUBREC, p->packet_id);
}

static void handle_packet(struct upstream *u, struct conn *c, const uint8_t *pkt, size_t len)
{
  struct mqtt_packet p;
  int r = mqtt_decode(pkt, len, &p);

  if (r != PROTO_OK) {
    LOGW(MOD, "%s: malformed packet from the broker (type %u): %s", u->o.client_id,
         (unsigned)(pkt[0] >> 4), proto_strerror(r));
    uconn_abort(c, UPSTREAM_R_PROTOCOL, 0);
    return;
  }
  /* Any packet proves the broker alive. */
  u->ping_outstanding = false;
  if (u->state == U_WAIT_CONNACK) {
    handle_connack(u, c, &p);
    return;
  }
  if (u->state != U_UP)
    return;
  switch (p.type) {
  case MQTT_PUBLISH:
    handle_publish(u, c, &p.u.publish);
    break;
  case MQTT_PUBACK:
    handle_puback(u, p.u.packet_id);
    break;
  case MQTT_PUBREL:
    idset_remove(&u->in_qos2, p.u.packet_id);
    uconn_send_small_or_abort(u, c, MQTT_PUBCOMP, p.u.packet_id);
    break;
  case MQTT_SUBACK:
    if (idset_remove(&u->subs, p.u.suback.packet_id) && u->cbs.on_suback)
      u->cbs.on_suback(u->ud, p.u.suback.packet_id, p.u.suback.codes, p.u.suback.count);
    break;
  case MQTT_UNSUBACK:
    if (idset_remove(&u->subs, p.u.packet_id) && u->cbs.on_unsuback)
      u->cbs.on_unsuback(u->ud, p.u.packet_id);
    break;
  case MQTT_PINGRESP:
    break;
  case MQTT_PUBREC:
  case MQTT_PUBCOMP:
  case MQTT_CONNACK:
  default:
    /* We never send QoS 2, and CONNACK comes once. */
    LOGW(MOD, "%s: unexpected %s", u->o.client_id, mqtt_type_name(p.type));
    uconn_abort(c, UPSTREAM_R_PROTOCOL, 0);
    break;
  }
}

static int validate_opts(const struct upstream_opts *o)
{
  if (!o->host || !o->host[0] || o->port == 0 || !o->client_id)
    return UPSTREAM_EINVAL;
  if (o->password && !o->username)
    return UPSTREAM_EINVAL; /* MQTT-3.1.2-22 */
  if (o->will.topic &&
      (!topic_name_is_valid(o->will.topic, strlen(o->will.topic)) || o->will.qos < 0 ||
       o->will.qos > 1 || (o->will.payload_len > 0 && !o->will.payload)))
    return UPSTREAM_EINVAL;
  if (o->max_packet < MIN_MAX_PACKET || o->connect_timeout_ms == 0 || o->backoff_base_ms == 0 ||
      o->backoff_cap_ms == 0 || o->max_queue == 0)
    return UPSTREAM_EINVAL;
  if ((o->cert_file == NULL) != (o->key_file == NULL))
    return UPSTREAM_EINVAL;
  return UPSTREAM_OK;
}

/* What the wire (upstream_conn.c) reports to the client above it. */
static const struct uconn_owner owner = {
    .lost = lost,
    .closing_progress = closing_progress,
    .writable = send_queue,
    .packet = handle_packet,
    .timer = timer_cb,
};

/* ---- connect pacing ---- */

static void pace_go(struct pacer_slot *slot)
{
  struct upstream *u = (struct upstream *)((char *)slot - offsetof(struct upstream, slot));
  uconn_start_attempt(u);
}

static void pace_start(struct upstream *u)
{
  if (!u->o.pacer) {
    uconn_start_attempt(u);
    return;
  }
  pacer_wait(u->o.pacer, &u->slot);
}

/* The attempt ended (CONNACK, failure, stop), or the upstream stopped while
 * waiting: its turn goes to the next. */
static void pace_release(struct upstream *u)
{
  if (u->o.pacer)
    pacer_done(u->o.pacer, &u->slot);
}

int upstream_new(uv_loop_t *loop, const struct upstream_opts *opts,
                 const struct upstream_cbs *cbs, void *ud, struct upstream **out)
{
  struct upstream *u;
  bool fail = false;
  uint64_t seed;
  int r;

  *out = NULL;
  r = validate_opts(opts);
  if (r < 0)
    return r;
  u = calloc(1, sizeof *u);
  if (!u)
    return UPSTREAM_ENOMEM;
  u->loop = loop;
  u->cbs = *cbs;
  u->ud = ud;
  u->o = *opts;
  u->o.host = dup_str(opts->host, &fail);
  u->o.alpn = dup_str(opts->alpn, &fail);
  u->o.cert_file = dup_str(opts->cert_file, &fail);
  u->o.key_file = dup_str(opts->key_file, &fail);
  tls_identity_ref(opts->identity);
  u->o.client_id = dup_str(opts->client_id, &fail);
  u->o.username = dup_str(opts->username, &fail);
  u->o.password = dup_str(opts->password, &fail);
  u->o.will.topic = dup_str(opts->will.topic, &fail);
  u->o.will.payload = NULL;
  if (opts->will.topic && opts->will.payload_len > 0) {
    u->will_payload = malloc(opts->will.payload_len);
    if (u->will_payload)
      memcpy(u->will_payload, opts->will.payload, opts->will.payload_len);
    else
      fail = true;
  }
  if (u->o.backoff_cap_ms < u->o.backoff_base_ms)
    u->o.backoff_cap_ms = u->o.backoff_base_ms;
  snprintf(u->port_str, sizeof u->port_str, "%u", (unsigned)opts->port);
  if (fail || uv_timer_init(loop, &u->timer) < 0) {
    /* finish() frees the copies; no handle exists (uv_timer_init comes
     * last and cannot fail on Unix), and on_closed is not for this. */
    u->cbs.on_closed = NULL;
    finish(u);
    return UPSTREAM_ENOMEM;
  }
  u->timer.data = u;
  u->own = &owner;
  u->slot.go = pace_go;
  /* Different upstreams, different jitter: mix the clock and the address. */
  seed = uv_hrtime() ^ ((uint64_t)(uintptr_t)u << 16);
  for (const char *p = u->o.client_id; *p; p++)
    seed = seed * 131 + (unsigned char)*p;
  backoff_init(&u->bo, u->o.backoff_base_ms, u->o.backoff_cap_ms, seed);
  *out = u;
  return UPSTREAM_OK;
}

int upstream_start(struct upstream *u)
{
  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  if (u->state != U_IDLE)
    return UPSTREAM_OK;
  /* Start from the loop, so that no owner callback runs inside this call. */
  uconn_set_state(u, U_BACKOFF);
  uv_timer_start(&u->timer, timer_cb, 0, 0);
  return UPSTREAM_OK;
}

void upstream_stop(struct upstream *u, bool graceful)
{
  enum ustate prev = u->state;
  struct conn *c = u->conn;

  if (prev == U_CLOSING)
    return;
  uconn_set_state(u, U_CLOSING);
  uv_timer_stop(&u->timer);
  pace_release(u);
  if (u->gai)
    uv_cancel((uv_req_t *)u->gai);
  LOGI(MOD, "%s: stopping (%s)", u->o.client_id, graceful ? "graceful" : "abrupt");
  if (c && !c->closing) {
    int r = -1;
    if (graceful && prev == U_UP)
      r = say_goodbye(u, c, shutdown_cb);
    if (r == 0)
      uconn_arm_timer_at(u, uv_now(u->loop) + GRACEFUL_FLUSH_MS);
    else
      uconn_abort(c, UPSTREAM_R_TCP, 0);
  }
  closing_progress(u);
}

int upstream_publish(struct upstream *u, const char *topic, size_t topic_len,
                     const uint8_t *payload, size_t len, int qos, bool retain, void *token)
{
  struct mqtt_publish p;
  struct omsg *m;

  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  if ((qos != 0 && qos != 1) || !topic || topic_len == 0 || topic_len > 65535 ||
      (len > 0 && !payload) || !topic_name_is_valid(topic, topic_len))
    return UPSTREAM_EINVAL;
  p = (struct mqtt_publish){.qos = qos, .retain = retain,
                            .topic = {(const uint8_t *)topic, topic_len},
                            .packet_id = (uint16_t)(qos ? 1 : 0), .payload = {payload, len}};
  if (mqtt_encode_publish(&p, NULL, 0) < 0)
    return UPSTREAM_EINVAL;
  if (u->nqueued >= u->o.max_queue)
    return UPSTREAM_EFULL;
  if (qos == 0 && uconn_up(u) && (!u->qtail || u->qtail->sent) &&
      uv_stream_get_write_queue_size((uv_stream_t *)&u->conn->tcp) <= WRITE_HIGH_WATER) {
    /* QoS 0 with nothing waiting before it: straight to the wire, with no
     * queue entry (it would leave the queue as soon as written).  A failed
     * write drops the connection, and the message with it: QoS 0. */
    p.packet_id = 0;
    if (send_publish(u, u->conn, &p) < 0)
      uconn_abort(u->conn, UPSTREAM_R_TCP, 0);
    return UPSTREAM_OK;
  }
  m = malloc(sizeof *m + topic_len + len);
  if (!m)
    return UPSTREAM_ENOMEM;
  m->next = NULL;
  m->token = token;
  m->packet_id = 0;
  if (qos == 1) {
    m->packet_id = alloc_id(u);
    if (m->packet_id == 0) {
      free(m);
      return UPSTREAM_EFULL;
    }
  }
  m->qos = (uint8_t)qos;
  m->retain = retain;
  m->sent = m->ever_sent = false;
  m->strikes = 0;
  m->sent_at = 0;
  m->topic_len = (uint16_t)topic_len;
  m->len = len;
  memcpy(m->data, topic, topic_len);
  if (len)
    memcpy(m->data + topic_len, payload, len);
  if (u->qtail)
    u->qtail->next = m;
  else
    u->qhead = m;
  u->qtail = m;
  u->nqueued++;
  if (uconn_up(u))
    send_queue(u);
  return UPSTREAM_OK;
}

static int sub_unsub(struct upstream *u, bool sub, const char *filter, size_t len, int qos,
                     uint16_t *packet_id_out)
{
  struct mqtt_bytes f = {(const uint8_t *)filter, len};
  uint8_t q = (uint8_t)qos;
  struct wreq *w;
  uint16_t id;
  int n;

  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  if (!filter || len == 0 || len > 65535 || (sub && (qos < 0 || qos > 2)) ||
      !topic_filter_is_valid(filter, len))
    return UPSTREAM_EINVAL;
  if (!uconn_up(u))
    return UPSTREAM_EFULL;
  id = alloc_id(u);
  if (id == 0)
    return UPSTREAM_EFULL;
  n = sub ? mqtt_encode_subscribe(id, &f, &q, 1, NULL, 0)
          : mqtt_encode_unsubscribe(id, &f, 1, NULL, 0);
  if (n < 0)
    return UPSTREAM_EINVAL;
  w = uconn_wreq_new((size_t)n);
  if (!w)
    return UPSTREAM_ENOMEM;
  if (idset_add(&u->subs, id) < 0) {
    uconn_wreq_free(w);
    return UPSTREAM_ENOMEM;
  }
  if (sub)
    mqtt_encode_subscribe(id, &f, &q, 1, w->data, (size_t)n);
  else
    mqtt_encode_unsubscribe(id, &f, 1, w->data, (size_t)n);
  /* A failed send drops the connection; the owner learns it from on_down
   * and subscribes again in on_up. */
  if (uconn_send(u, u->conn, w) < 0)
    uconn_abort(u->conn, UPSTREAM_R_TCP, 0);
  if (packet_id_out)
    *packet_id_out = id;
  return UPSTREAM_OK;
}

int upstream_subscribe(struct upstream *u, const char *filter, size_t len, int qos,
                       uint16_t *packet_id_out)
{
  return sub_unsub(u, true, filter, len, qos, packet_id_out);
}

int upstream_unsubscribe(struct upstream *u, const char *filter, size_t len,
                         uint16_t *packet_id_out)
{
  return sub_unsub(u, false, filter, len, 0, packet_id_out);
}

int upstream_puback(struct upstream *u, uint16_t packet_id)
{
  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  /* Unknown id (or one from a previous connection): the broker delivers the
   * message again, so there is nothing to acknowledge. */
  if (!idset_remove(&u->in_qos1, packet_id) || !uconn_up(u))
    return UPSTREAM_OK;
  uconn_send_small_or_abort(u, u->conn, MQTT_PUBACK, packet_id);
  return UPSTREAM_OK;
}

void upstream_kick(struct upstream *u)
{
  uint64_t since;
  if (u->state != U_BACKOFF || u->kicked || u->slot.waiting)
    return;
  u->kicked = true;
  since = uv_now(u->loop) - u->attempt_started;
  uv_timer_start(&u->timer, timer_cb,
                 since < MIN_CONNECT_INTERVAL_MS ? MIN_CONNECT_INTERVAL_MS - since : 0, 0);
}

int upstream_switch_identity(struct upstream *u, struct tls_identity *id)
{
  struct conn *c = u->conn;
  int r = -1;

  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  tls_identity_ref(id);
  tls_identity_unref(u->o.identity);
  u->o.identity = id;
  if (u->state == U_IDLE || u->state == U_BACKOFF || !c || c->closing)
    return UPSTREAM_OK; /* the next attempt uses it */
  u->switching = true;
  if (u->state == U_UP)
    r = say_goodbye(u, c, switch_shutdown_cb);
  if (r != 0)
    uconn_abort(c, UPSTREAM_R_SWITCH, 0);
  return UPSTREAM_OK;
}

bool upstream_is_up(const struct upstream *u) { return uconn_up(u); }

size_t upstream_queued(const struct upstream *u) { return u->nqueued; }

const char *upstream_reason_str(enum upstream_reason why)
{
  switch (why) {
  case UPSTREAM_R_DNS:
    return "DNS resolution failed";
  case UPSTREAM_R_TCP:
    return "TCP connection failed or lost";
  case UPSTREAM_R_TLS:
    return "TLS handshake or verification failed";
  case UPSTREAM_R_CONNACK:
    return "CONNACK refused";
  case UPSTREAM_R_CLOSED_BEFORE_CONNACK:
    return "closed by the broker before CONNACK";
  case UPSTREAM_R_TIMEOUT:
    return "timed out";
  case UPSTREAM_R_PROTOCOL:
    return "protocol error";
  case UPSTREAM_R_SWITCH:
    return "switching to a new certificate";
  }
  return "unknown";
}

const char *upstream_client_id(const struct upstream *u) { return u->o.client_id; }
