/*
 * session.c - one leaf's MQTT-SN v1.2 state machine (transparent gateway:
 * one upstream MQTT session per leaf): CONNECT and the will prompts, sleep
 * and wake, keep-alive, the timers, and the end of a session.  The leaf's
 * traffic towards its upstream is in sess_up.c, the downlink in
 * sess_down.c; the upstream itself is reached through struct
 * sess_uplink_ops (session.h), so this file knows no TLS and no MQTT client.
 *
 * Roadmap:
 *   sess_on_connect    CONNECT, will prompts, upstream creation, CONNACK
 *   sess_on_message    every other message from the leaf, by state
 *   timer_cb           keep-alive, sleep, CONNACK wait, retransmission and
 *                      "upstream gone for good" deadlines, one timer
 *
 * Choices where the specification is silent or ambiguous
 * (docs/protocol-notes.md §2.9), each also marked where it is made:
 *   - CONNECT while asleep/awake resumes the session whatever its
 *     CleanSession flag (the upstream, subscriptions and queue stay).
 *   - A wildcard SUBSCRIBE is answered with TopicId 0x0000 as §5.4.16 says
 *     (Paho allocates an id); concrete topics are REGISTERed later.
 *   - A leaf's QoS 2 is completed with the leaf and relayed upstream as QoS 1
 *     (AWS IoT has no QoS 2); PUBREC goes to the leaf once the upstream PUBACK
 *     is back, so the message is at the broker before the leaf lets go of it.
 *   - Broker QoS 1 messages are acknowledged upstream only when the leaf
 *     acknowledged them (end-to-end at-least-once, also across sleep).
 *   - Messages the gateway sends and that the leaf does not acknowledge are
 *     re-sent every T_RETRY with DUP, N_RETRY times; then an active leaf is
 *     considered lost (the spec gives this rule to clients, §6.13) and an
 *     awake one goes back to sleep with the message still queued.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lan_int.h"
#include "log.h"
#include "topic.h"

#define MOD "session"

static void timer_cb(uv_timer_t *t);
static void go_lost(struct session *s, const char *why);

/* ---- lifecycle ---------------------------------------------------------- */

struct session *sess_new(struct leaves *lv, const char *id, size_t len)
{
  struct session *s;

  if (len > 255)
    return NULL;
  s = calloc(1, sizeof *s + len + 1);
  if (!s)
    return NULL;
  s->lv = lv;
  memcpy(s->client_id, id, len);
  s->client_id[len] = '\0';
  s->id_len = (uint8_t)len;
  topics_init(&s->topics);
  uv_timer_init(lv->loop, &s->timer);
  s->timer.data = s;
  s->on_timer = timer_cb;
  return s;
}

static void free_will(struct session *s)
{
  free(s->will_topic);
  free(s->will_msg);
  s->will_topic = NULL;
  s->will_msg = NULL;
  s->will_msg_len = 0;
  s->will_set = false;
}

static void free_cb(uv_handle_t *h)
{
  struct session *s = h->data;
  struct drain *dr = s->lv->env.drain;
  free(s);
  drain_release(dr);
}

void sess_free(struct session *s)
{
  sess_clear_queue(s, false);
  free_will(s);
  sess_free_subs(s);
  topics_free(&s->topics);
  drain_hold(s->lv->env.drain);
  uv_close((uv_handle_t *)&s->timer, free_cb);
}

/* ---- CONNECT ------------------------------------------------------------ */

/* Asks the relay for the leaf's upstream, with its will.  The relay finds
 * the leaf's identity: provisioned once, then read from the registry.  While
 * the provisioning run is in flight the CONNACK waits (up to the CONNACK
 * timeout); sess_on_provisioned() continues from here. */
/* ops->open with the session's ClientId, clean flag and will. */
static int ask_open(struct session *s, char *reason, size_t cap)
{
  struct sess_open o = {.client_id = s->client_id, .clean = s->clean};
  if (s->will_set) {
    o.will_topic = s->will_topic;
    o.will_msg = s->will_msg;
    o.will_msg_len = s->will_msg_len;
    o.will_qos = s->will_qos > 1 ? 1 : s->will_qos;
    o.will_retain = s->will_retain;
  }
  return SESS_UP(s)->open(SESS_UP_CTX(s), s, &o, &s->link, reason, cap);
}

static void open_upstream(struct session *s)
{
  char reason[256] = "";
  int st = ask_open(s, reason, sizeof reason);
  switch (st) {
  case SESS_OPEN_OK:
  case SESS_OPEN_READY:
    s->link_ready = st == SESS_OPEN_READY;
    s->will_dirty = false;
    s->up_is_up = false;
    s->up_was_up = false;
    s->up_down_since = 0;
    break;
  case SESS_OPEN_PENDING:
    s->wait_provision = true;
    LOGD(MOD, "%s: CONNACK waits for provisioning (%s)", s->client_id, reason);
    break;
  case SESS_OPEN_REFUSED:
    LOGW(MOD, "%s: refused: %s", s->client_id, reason);
    sess_reply_connack(s, MQTTSN_RC_NOT_SUPPORTED);
    sess_set_state(s, SESS_DISCONNECTED);
    break;
  default:
    LOGE(MOD, "%s: cannot create the upstream session", s->client_id);
    s->lv->m->connack_congestion++;
    sess_reply_connack(s, MQTTSN_RC_CONGESTION);
    sess_set_state(s, SESS_DISCONNECTED);
    break;
  }
}

/* The will prompts are done (or not needed): bring the upstream up. */
static void connect_proceed(struct session *s)
{
  if (s->link && (s->up_is_up || s->link_ready)) {
    if (!s->up_is_up)
      SESS_UP(s)->kick(SESS_UP_CTX(s), s->link); /* the leaf is back: try now */
    if (s->will_dirty) {
      /* The will changed: the upstream CONNECT must carry the new one, so the
       * upstream session is made again (subscriptions are re-sent). */
      sess_end_upstream(s, true, false);
    } else {
      sess_connect_done(s);
      LOGI(MOD, "%s: connected (session resumed)", s->client_id);
      sess_arm(s);
      sess_pump(s);
      return;
    }
  }
  sess_set_state(s, SESS_WAIT_UPSTREAM);
  s->wait_provision = false;
  if (!s->link)
    open_upstream(s);
  else
    SESS_UP(s)->kick(SESS_UP_CTX(s), s->link);
  if (s->state == SESS_WAIT_UPSTREAM && s->link && s->link_ready) {
    /* Store and forward: a known leaf is accepted while its upstream comes
     * up (or while the uplink is down); its publishes wait on disk. */
    sess_connect_done(s);
    LOGI(MOD, "%s: connected (keep-alive %us; upstream %s)", s->client_id, s->keepalive,
         s->up_is_up ? "up" : "coming up");
    sess_pump(s);
  }
  sess_arm(s);
}

/* A session restored from the registry (sess_store.c) asks for its
 * upstream, without a CONNACK to send: a leaf whose identity is refused now
 * is left disconnected, and told so when it next speaks. */
void sess_restore_open(struct session *s)
{
  char reason[256] = "";
  int st = ask_open(s, reason, sizeof reason);
  if (st == SESS_OPEN_OK || st == SESS_OPEN_READY) {
    s->link_ready = st == SESS_OPEN_READY;
    s->will_dirty = false;
  } else {
    LOGW(MOD, "%s: restored session not resumed: %s", s->client_id,
         reason[0] ? reason : "no upstream now");
    s->link = NULL;
    leaves_unbind_addr(s->lv, s);
    s->state = SESS_DISCONNECTED;
  }
  sess_arm(s);
}

void sess_on_provisioned(struct session *s, bool ok)
{
  if (s->state != SESS_WAIT_UPSTREAM || !s->wait_provision || s->link)
    return;
  if (!ok) {
    LOGW(MOD, "%s: provisioning failed: CONNACK rejected", s->client_id);
    s->wait_provision = false;
    sess_reply_connack(s, MQTTSN_RC_NOT_SUPPORTED);
    sess_set_state(s, SESS_DISCONNECTED);
    sess_arm(s);
    return;
  }
  connect_proceed(s);
}

void sess_on_connect(struct session *s, const struct sockaddr *from, uint8_t via,
                     const struct mqttsn_msg *m)
{
  struct leaves *lv = s->lv;
  const struct mqttsn_connect *c = &m->u.connect;

  /* A CONNECT from a sleeping leaf is its way back to active, not a new
   * session: the upstream session, subscriptions and buffered messages stay,
   * whatever CleanSession says (docs/protocol-notes.md §2.9 item 1; Paho and Bisquitt read
   * the specification the same way).  Many leaves always send
   * CleanSession=1, and dropping their subscriptions on every wake-up would
   * lose their commands. */
  bool clean = c->flags.clean_session && s->state != SESS_ASLEEP && s->state != SESS_AWAKE;

  lv->m->connects++;
  if (s->state != SESS_ASLEEP && s->state != SESS_AWAKE && s->connects < UINT32_MAX)
    s->connects++;
  s->restored = false;
  leaves_bind_addr(lv, s, from, via);
  s->last_rx = uv_now(lv->loop);
  s->keepalive = sess_keepalive(lv, c->duration);

  if (clean) {
    /* §6.3: CleanSession deletes subscriptions and will; the upstream
     * session is made again with CleanSession=1 as well. */
    sess_end_upstream(s, true, false);
    sess_free_subs(s);
    free_will(s);
    topics_clear(&s->topics);
    sess_clear_queue(s, false);
  }
  /* CleanSession=0 keeps subscriptions, topic ids and will (§6.3). */
  s->clean = clean;
  /* A new connection restarts the downlink from the head of the queue. */
  s->inflight = INF_NONE;
  /* One deadline for the whole CONNECT: will prompts, provisioning, upstream. */
  s->connect_deadline = uv_now(lv->loop) + lv->cfg->lan.connack_timeout_ms;
  if (c->flags.will) {
    sess_set_state(s, SESS_WAIT_WILLTOPIC);
    sess_reply(s, MQTTSN_WILLTOPICREQ);
    sess_arm(s);
    return;
  }
  connect_proceed(s);
}

/* ---- other messages ----------------------------------------------------- */

/* ---- other messages ----------------------------------------------------- */

/* Sets (or, empty, clears) the will topic.  Returns MQTTSN_RC_ACCEPTED, or
 * the code to refuse with: a will topic must be a valid MQTT topic name (no
 * wildcard, no NUL: "a\0#" would otherwise be published on "a"), and memory
 * may run out. */
static uint8_t set_will_topic(struct session *s, const struct mqttsn_willtopic *w)
{
  if (!w->empty && !topic_name_is_valid((const char *)w->topic.p, w->topic.len)) {
    s->lv->m->will_topics_refused++;
    return MQTTSN_RC_NOT_SUPPORTED;
  }
  char *topic;
  if (w->empty) {
    free_will(s);
    s->will_dirty = true;
    return MQTTSN_RC_ACCEPTED;
  }
  /* §6.4: WILLTOPICUPD changes the topic (and its flags) only; the will
   * message stays (during CONNECT, WILLMSG follows and replaces it). */
  topic = malloc(w->topic.len + 1);
  if (!topic)
    return MQTTSN_RC_CONGESTION;
  memcpy(topic, w->topic.p, w->topic.len);
  topic[w->topic.len] = '\0';
  free(s->will_topic);
  s->will_topic = topic;
  s->will_dirty = true;
  s->will_qos = (uint8_t)(w->flags.qos < 0 ? 0 : w->flags.qos);
  s->will_retain = w->flags.retain;
  s->will_set = true;
  return MQTTSN_RC_ACCEPTED;
}

static bool set_will_msg(struct session *s, const struct mqttsn_willmsg *w)
{
  uint8_t *p = malloc(w->msg.len ? w->msg.len : 1);
  if (!p)
    return false;
  memcpy(p, w->msg.p, w->msg.len);
  free(s->will_msg);
  s->will_msg = p;
  s->will_msg_len = w->msg.len;
  s->will_dirty = true;
  return true;
}

void sess_on_wake(struct session *s, const struct sockaddr *from)
{
  (void)from;
  s->restored = false;
  sess_set_state(s, SESS_AWAKE);
  s->last_rx = uv_now(s->lv->loop);
  s->inflight = INF_NONE;
  sess_pump(s);
}

/* What a message leads to in the session's state. */
enum verdict {
  V_HANDLE,                     /* handle it by type */
  V_DONE,                       /* handled */
  V_UNEXPECTED,                 /* makes no sense now: counted, logged, ignored */
  V_NOT_CONNECTED,              /* §6.12: tell the leaf to connect again */
};

/* A CONNECT that will not complete (the leaf left, or its will was
 * refused): everything it holds is let go, its upstream included. */
static void connect_abandon(struct session *s)
{
  s->wait_provision = false;
  sess_end_upstream(s, true, false);
  sess_set_state(s, SESS_DISCONNECTED);
  sess_arm(s);
}

/* DISCONNECT before CONNACK: the leaf gave up on its CONNECT (§6.14 allows
 * DISCONNECT from any state); acknowledged, and nothing is held for it. */
static enum verdict on_connecting_disconnect(struct session *s)
{
  static struct log_ratelimit rl;
  sess_reply(s, MQTTSN_DISCONNECT);
  log_ratelimited(&rl, LOG_INFO, MOD, "%s: disconnected before CONNACK", s->client_id);
  connect_abandon(s);
  return V_DONE;
}

/* A message during the will prompts of a CONNECT. */
static enum verdict on_will_prompt(struct session *s, const struct mqttsn_msg *m)
{
  if (m->type == MQTTSN_DISCONNECT)
    return on_connecting_disconnect(s);
  if (s->state == SESS_WAIT_WILLTOPIC) {
    uint8_t rc;
    if (m->type != MQTTSN_WILLTOPIC)
      return V_UNEXPECTED;
    rc = set_will_topic(s, &m->u.willtopic);
    if (rc != MQTTSN_RC_ACCEPTED) {
      /* WILLTOPIC has no return code: the CONNECT is refused (§5.4.5). */
      static struct log_ratelimit rl;
      log_ratelimited(&rl, LOG_WARN, MOD, "%s: will topic refused", s->client_id);
      sess_reply_connack(s, rc);
      connect_abandon(s);
      return V_DONE;
    }
    if (m->u.willtopic.empty) {
      connect_proceed(s);
      return V_DONE;
    }
    sess_set_state(s, SESS_WAIT_WILLMSG);
    sess_reply(s, MQTTSN_WILLMSGREQ);
    return V_DONE;
  }
  if (m->type != MQTTSN_WILLMSG)
    return V_UNEXPECTED;
  set_will_msg(s, &m->u.willmsg);
  connect_proceed(s);
  return V_DONE;
}

/* A sleeping leaf may acknowledge what we deliver while awake, ping
 * (PINGREQ with its ClientId is handled by leaves.c), go back to sleep or
 * disconnect. */
static bool sleeper_may_send(enum mqttsn_type t)
{
  return t == MQTTSN_PUBACK || t == MQTTSN_REGACK || t == MQTTSN_PUBREC ||
         t == MQTTSN_PUBCOMP || t == MQTTSN_DISCONNECT || t == MQTTSN_PINGREQ;
}

static void on_disconnect(struct session *s, const struct mqttsn_disconnect *d)
{
  if (d->has_duration && d->duration > 0) {
    /* §6.14: acknowledge with a DISCONNECT without duration; the upstream
     * session stays up, its keep-alive is the gateway's own. */
    s->keepalive = d->duration;
    sess_reply(s, MQTTSN_DISCONNECT);
    LOGI(MOD, "%s: asleep for %us", s->client_id, s->keepalive);
    s->inflight = INF_NONE;
    sess_go_asleep(s);
    return;
  }
  sess_reply(s, MQTTSN_DISCONNECT);
  LOGI(MOD, "%s: disconnected", s->client_id);
  sess_end_upstream(s, true, false);
  sess_set_state(s, SESS_DISCONNECTED);
  sess_arm(s);
}

/* WILLTOPICUPD / WILLMSGUPD (§6.4). */
static void on_will_update(struct session *s, const struct mqttsn_msg *m)
{
  struct mqttsn_msg r;
  memset(&r, 0, sizeof r);
  if (m->type == MQTTSN_WILLTOPICUPD) {
    r.type = MQTTSN_WILLTOPICRESP;
    r.u.resp.rc = set_will_topic(s, &m->u.willtopic);
  } else {
    r.type = MQTTSN_WILLMSGRESP;
    r.u.resp.rc = set_will_msg(s, &m->u.willmsg) ? MQTTSN_RC_ACCEPTED : MQTTSN_RC_CONGESTION;
  }
  sess_send(s, &r);
}

/* A message of a connected (or awake) leaf, by type. */
static enum verdict on_by_type(struct session *s, const struct mqttsn_msg *m)
{
  switch (m->type) {
  case MQTTSN_PUBLISH:
    if (s->state != SESS_ACTIVE)
      return V_NOT_CONNECTED;
    sess_on_publish(s, &m->u.publish);
    return V_DONE;
  case MQTTSN_PUBREL:
    sess_on_pubrel(s, m->u.msgid.msg_id);
    return V_DONE;
  case MQTTSN_REGISTER:
    sess_on_register(s, &m->u.reg);
    return V_DONE;
  case MQTTSN_REGACK:
    sess_on_regack(s, &m->u.regack);
    return V_DONE;
  case MQTTSN_PUBACK:
    sess_on_puback(s, &m->u.puback);
    return V_DONE;
  case MQTTSN_PUBREC:
    /* Downlink is QoS 0/1 only (upstream QoS <= 1), so a PUBREC answers
     * nothing of ours; complete the flow politely. */
    sess_reply_msgid(s, MQTTSN_PUBREL, m->u.msgid.msg_id);
    return V_DONE;
  case MQTTSN_PUBCOMP:
  case MQTTSN_PINGRESP:
    return V_DONE;
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
    sess_on_subscribe(s, &m->u.subscribe, m->type == MQTTSN_UNSUBSCRIBE);
    return V_DONE;
  case MQTTSN_PINGREQ:
    sess_reply(s, MQTTSN_PINGRESP);
    return V_DONE;
  case MQTTSN_DISCONNECT:
    on_disconnect(s, &m->u.disconnect);
    return V_DONE;
  case MQTTSN_WILLTOPICUPD:
  case MQTTSN_WILLMSGUPD:
    on_will_update(s, m);
    return V_DONE;
  default:
    return V_UNEXPECTED;
  }
}

void sess_on_message(struct session *s, const struct sockaddr *from, const struct mqttsn_msg *m)
{
  enum verdict v;

  (void)from;
  s->last_rx = uv_now(s->lv->loop);
  s->restored = false;
  switch (s->state) {
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
    v = on_will_prompt(s, m);
    break;
  case SESS_WAIT_UPSTREAM:
    /* Nothing but CONNECT (handled by leaves.c) and DISCONNECT makes sense
     * before CONNACK. */
    v = m->type == MQTTSN_DISCONNECT ? on_connecting_disconnect(s) : V_UNEXPECTED;
    break;
  case SESS_ACTIVE:
    v = V_HANDLE;
    break;
  case SESS_ASLEEP:
  case SESS_AWAKE:
    v = sleeper_may_send(m->type) ? V_HANDLE : V_NOT_CONNECTED;
    break;
  default:
    v = V_NOT_CONNECTED;
    break;
  }
  if (v == V_HANDLE)
    v = on_by_type(s, m);
  /* What the registry keeps of the session may have changed (topic ids,
   * will, subscriptions; a sleeper's queue is marked where it changes). */
  switch (m->type) {
  case MQTTSN_REGISTER:
  case MQTTSN_REGACK:
  case MQTTSN_SUBSCRIBE:
  case MQTTSN_UNSUBSCRIBE:
  case MQTTSN_WILLTOPIC:
  case MQTTSN_WILLMSG:
  case MQTTSN_WILLTOPICUPD:
  case MQTTSN_WILLMSGUPD:
    sess_persist_mark(s);
    break;
  default:
    break;
  }
  if (v == V_UNEXPECTED) {
    static struct log_ratelimit rl;
    s->lv->m->datagrams_unexpected++;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: unexpected %s in state %s", s->client_id,
                    mqttsn_type_name(m->type), sess_state_name(s->state));
  } else if (v == V_NOT_CONNECTED) {
    /* §6.12: the gateway cannot serve a leaf that is not connected; tell it
     * so it connects again. */
    s->lv->m->datagrams_unexpected++;
    sess_reply(s, MQTTSN_DISCONNECT);
  }
}

/* ---- timers ------------------------------------------------------------- */

/* ---- timers ------------------------------------------------------------- */

static void go_lost(struct session *s, const char *why)
{
  s->lv->m->leaves_lost++;
  LOGI(MOD, "%s: lost (%s)%s", s->client_id, why, s->will_set ? ", publishing its will" : "");
  sess_end_upstream(s, true, true);
  sess_set_state(s, SESS_LOST);
  leaves_unbind_addr(s->lv, s);
  sess_arm(s);
}

void sess_on_transport_closed(struct session *s, const char *why)
{
  switch (s->state) {
  case SESS_ACTIVE:
    go_lost(s, why);
    return;
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
  case SESS_WAIT_UPSTREAM:
    /* No CONNACK can reach the leaf any more. */
    connect_abandon(s);
    break;
  case SESS_AWAKE:
    /* It went back to sleep without saying so: what is left waits. */
    s->inflight = INF_NONE;
    sess_set_state(s, SESS_ASLEEP);
    sess_arm(s);
    break;
  default:
    /* Asleep: the session stays, its sleep timer runs, and the leaf wakes
     * through a new association (docs/dtls.md §9). */
    break;
  }
  leaves_unbind_addr(s->lv, s);
}

static void timer_cb(uv_timer_t *t)
{
  struct session *s = t->data;
  struct leaves *lv = s->lv;
  uint64_t now = uv_now(lv->loop);

  s->timer_due = 0;
  switch (s->state) {
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
    if (now >= s->connect_deadline) {
      /* A half-open CONNECT lets go of everything it holds, the upstream of
       * a resumed CleanSession=0 session included. */
      static struct log_ratelimit rl;
      s->lv->m->connects_half_open++;
      log_ratelimited(&rl, LOG_WARN, MOD, "%s: will prompts not answered in time",
                      s->client_id);
      sess_end_upstream(s, true, false);
      sess_set_state(s, SESS_DISCONNECTED);
    }
    break;
  case SESS_WAIT_UPSTREAM:
    if (now >= s->connect_deadline) {
      lv->m->connack_congestion++;
      LOGW(MOD, "%s: %s within %u ms: CONNACK congestion", s->client_id,
           s->wait_provision ? "not provisioned" : "upstream not up",
           lv->cfg->lan.connack_timeout_ms);
      s->wait_provision = false;
      sess_reply_connack(s, MQTTSN_RC_CONGESTION);
      sess_end_upstream(s, true, false);
      sess_set_state(s, SESS_DISCONNECTED);
    }
    break;
  case SESS_ACTIVE:
    if (s->keepalive && now >= s->last_rx + sess_tolerance_ms(s->keepalive)) {
      go_lost(s, "keep-alive expired");
      return;
    }
    break;
  case SESS_ASLEEP:
    if (now >= s->sleep_deadline) {
      go_lost(s, "sleep timer expired");
      return;
    }
    break;
  default:
    break;
  }
  if ((s->state == SESS_ACTIVE || s->state == SESS_AWAKE) && s->inflight != INF_NONE &&
      now >= s->inf_deadline) {
    if (s->inf_tries >= lv->cfg->lan.n_retry) {
      if (s->state == SESS_ACTIVE) {
        go_lost(s, "no acknowledgement after retries");
        return;
      }
      /* Awake leaf went back to sleep early: keep the message for next time. */
      s->inflight = INF_NONE;
      sess_go_asleep(s);
    } else {
      s->inf_tries++;
      s->inf_deadline = now + lv->cfg->lan.t_retry_ms;
      lv->m->retransmissions++;
      sess_send_inflight(s, true);
    }
  }
  if (sess_is_live(s) && s->state != SESS_WAIT_UPSTREAM && s->up_down_since && !s->link_ready &&
      now >= s->up_down_since + (uint64_t)lv->cfg->upstream.give_up_after_s * 1000u) {
    sess_give_up(s, "upstream down too long", MQTTSN_RC_CONGESTION);
    return;
  }
  sess_arm(s);
}

void sess_shutdown(struct session *s, bool notify)
{
  if (notify && sess_is_live(s))
    sess_reply(s, MQTTSN_DISCONNECT);
  sess_end_upstream(s, true, false);
  sess_set_state(s, SESS_DISCONNECTED);
  uv_timer_stop(&s->timer);
}

void sess_kick(struct session *s)
{
  if (!sess_is_live(s))
    return;
  sess_reply(s, MQTTSN_DISCONNECT);
  sess_end_upstream(s, true, false);
  sess_set_state(s, SESS_DISCONNECTED);
  sess_arm(s);
}

void sess_each_sub(const struct session *s, sess_sub_cb cb, void *ud)
{
  for (const struct sub *b = s->subs; b; b = b->next)
    if (cb(ud, b->filter, b->qos) != 0)
      return;
}

void sess_rate_count(struct sess_rate *r, uint64_t now_ms)
{
  uint64_t slot = now_ms / SESS_RATE_SLOT_MS;
  if (slot > r->slot) {
    uint64_t gone = slot - r->slot;
    for (uint64_t k = 1; k <= gone && k <= SESS_RATE_SLOTS; k++)
      r->n[(r->slot + k) % SESS_RATE_SLOTS] = 0;
    r->slot = slot;
  }
  if (r->n[slot % SESS_RATE_SLOTS] < UINT32_MAX)
    r->n[slot % SESS_RATE_SLOTS]++;
}

double sess_rate_get(const struct sess_rate *r, uint64_t now_ms)
{
  uint64_t cur = now_ms / SESS_RATE_SLOT_MS, sum = 0;
  for (uint64_t k = 0; k < SESS_RATE_SLOTS && k <= cur; k++) {
    uint64_t sl = cur - k;
    if (sl <= r->slot && r->slot - sl < SESS_RATE_SLOTS)
      sum += r->n[sl % SESS_RATE_SLOTS];
  }
  /* The current slot is under way: divide by the time actually covered. */
  return (double)sum * 1000.0 /
         (double)((SESS_RATE_SLOTS - 1) * SESS_RATE_SLOT_MS + now_ms % SESS_RATE_SLOT_MS + 1);
}

void sess_get_info(const struct session *s, struct sess_info *out)
{
  memset(out, 0, sizeof *out);
  out->state = sess_public_state(s->state);
  out->has_address = s->in_addr_table;
  if (s->in_addr_table)
    leaves_addr_str((const struct sockaddr *)&s->addr, out->address, sizeof out->address);
  out->msgs_in = s->msgs_in;
  out->msgs_out = s->msgs_out;
  out->msgs_refused = s->msgs_refused;
  out->queued = s->q_len;
  {
    uint64_t now = uv_now(s->lv->loop);
    out->rate_in = sess_rate_get(&s->rate_in, now);
    out->rate_out = sess_rate_get(&s->rate_out, now);
    out->has_last_pub = s->last_pub_in != 0;
    out->last_pub_age_ms = s->last_pub_in && now > s->last_pub_in ? now - s->last_pub_in : 0;
  }
  out->keepalive_s = s->keepalive;
  out->reconnects = s->connects > 1 ? s->connects - 1 : 0;
  out->has_upstream = s->link != NULL;
  out->upstream_up = s->up_is_up;
}
