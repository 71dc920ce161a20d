/*
 * session.c - one leaf: its MQTT-SN v1.2 state machine (transparent gateway:
 * one upstream MQTT session per leaf) and the relay between the two.
 *
 * Roadmap:
 *   sess_on_connect    CONNECT, will prompts, upstream creation, CONNACK
 *   sess_on_message    every other message from the leaf, by state
 *   up_*               callbacks of the leaf's upstream session
 *   pump               the downlink: broker messages -> leaf, one in flight,
 *                      REGISTER first when the leaf has no id for the topic
 *   timer_cb           keep-alive, sleep, CONNACK wait, retransmission and
 *                      "upstream gone for good" deadlines, one timer
 *
 * Choices where the specification is silent or ambiguous (PROTOCOLS.md
 * C.13), each also marked where it is made:
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

#include "gw_int.h"
#include "log.h"
#include "provision.h"
#include "tls.h"
#include "topic.h"
#include "upstream.h"

#define MOD "session"
#define MAX_PENDING_SUBS 8 /* SUBSCRIBE/UNSUBSCRIBE awaiting the broker, per leaf */

static void pump(struct session *s);
static void sess_arm(struct session *s);
static void go_lost(struct session *s, const char *why);
static void end_upstream(struct session *s, bool graceful, bool publish_will);
static void send_disconnect(struct session *s);

const char *sess_state_name(enum sess_state st)
{
  static const char *const names[] = {"disconnected", "wait-willtopic", "wait-willmsg",
                                      "wait-upstream", "active", "asleep", "awake", "lost"};
  return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "?";
}

static void set_state(struct session *s, enum sess_state st)
{
  if (s->state == st)
    return;
  LOGD(MOD, "%s: %s -> %s", s->client_id, sess_state_name(s->state), sess_state_name(st));
  s->state = st;
  leaves_event(s->gw, "device.session", s->client_id, "session", sess_public_state(st));
}

const char *sess_public_state(enum sess_state st)
{
  /* The will prompts and the waits for provisioning and the upstream are
   * all "connecting" to an operator. */
  if (st == SESS_WAIT_WILLTOPIC || st == SESS_WAIT_WILLMSG || st == SESS_WAIT_UPSTREAM)
    return "connecting";
  return sess_state_name(st);
}

bool sess_is_live(const struct session *s)
{
  return s->state != SESS_DISCONNECTED && s->state != SESS_LOST;
}

void sess_count(const struct session *s, struct metrics *m)
{
  switch (s->state) {
  case SESS_ACTIVE:
    m->leaves_active++;
    break;
  case SESS_ASLEEP:
  case SESS_AWAKE:
    m->leaves_asleep++;
    break;
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
  case SESS_WAIT_UPSTREAM:
    m->leaves_connecting++;
    break;
  default:
    break;
  }
  if (s->up_is_up)
    m->upstreams_up++;
}

/* MQTT-SN §7.2: timers 50% above the indicated value below one minute, 10%
 * above it from one minute on. */
static uint64_t tolerance_ms(uint32_t seconds)
{
  uint64_t ms = (uint64_t)seconds * 1000u;
  return seconds < 60 ? ms + ms / 2 : ms + ms / 10;
}

static void send_msg(struct session *s, const struct mqttsn_msg *m)
{
  leaves_send(s->gw, (const struct sockaddr *)&s->addr, m);
}

static void send_simple(struct session *s, enum mqttsn_type t)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = t;
  send_msg(s, &m);
}

static void send_connack(struct session *s, uint8_t rc)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_CONNACK;
  m.u.connack.rc = rc;
  send_msg(s, &m);
}

static void send_disconnect(struct session *s)
{
  send_simple(s, MQTTSN_DISCONNECT);
}

static void send_puback(struct session *s, uint16_t topic_id, uint16_t msg_id, uint8_t rc)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_PUBACK;
  m.u.puback.topic_id = topic_id;
  m.u.puback.msg_id = msg_id;
  m.u.puback.rc = rc;
  send_msg(s, &m);
}

static void send_msgid(struct session *s, enum mqttsn_type t, uint16_t msg_id)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = t;
  m.u.msgid.msg_id = msg_id;
  send_msg(s, &m);
}

static uint16_t next_msg_id(struct session *s)
{
  if (++s->next_msg_id == 0)
    s->next_msg_id = 1;
  return s->next_msg_id;
}

/* ---- lifecycle ---------------------------------------------------------- */

static void timer_cb(uv_timer_t *t);

struct session *sess_new(struct gw *gw, const char *id, size_t len)
{
  struct session *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->gw = gw;
  memcpy(s->client_id, id, len);
  s->client_id[len] = '\0';
  s->id_len = (uint8_t)len;
  topics_init(&s->topics);
  uv_timer_init(gw->loop, &s->timer);
  s->timer.data = s;
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

static void free_subs(struct session *s)
{
  while (s->subs) {
    struct sub *n = s->subs->next;
    free(s->subs);
    s->subs = n;
  }
  while (s->psubs) {
    struct pending_sub *n = s->psubs->next;
    free(s->psubs);
    s->psubs = n;
  }
}

/* Drops every message queued for the leaf; QoS 1 ones are acknowledged
 * upstream when ack_upstream (the session goes on), so the broker does not
 * hold its in-flight window for them. */
static void clear_queue(struct session *s, bool ack_upstream)
{
  uint32_t n = 0;
  while (s->q_head) {
    struct downmsg *d = s->q_head;
    s->q_head = d->next;
    if (ack_upstream && d->up_pid && s->link)
      upstream_puback(s->link->u, d->up_pid);
    free(d);
    n++;
  }
  s->q_tail = NULL;
  s->q_len = 0;
  s->inflight = INF_NONE;
  if (n) {
    s->gw->m.queue_discarded += n;
    LOGW(MOD, "%s: %u queued message(s) for the leaf discarded", s->client_id, n);
  }
}

static void free_cb(uv_handle_t *h)
{
  struct session *s = h->data;
  struct gw *gw = s->gw;
  free(s);
  leaves_close_done(gw);
}

void sess_free(struct session *s)
{
  clear_queue(s, false);
  free_will(s);
  free_subs(s);
  topics_free(&s->topics);
  s->gw->pending_closes++;
  uv_close((uv_handle_t *)&s->timer, free_cb);
}

/* ---- upstream callbacks ------------------------------------------------- */

static void resubscribe(struct session *s)
{
  for (struct sub *b = s->subs; b; b = b->next) {
    uint16_t pid;
    struct pending_sub *p;
    if (upstream_subscribe(s->link->u, b->filter, b->len, b->qos, &pid) != UPSTREAM_OK)
      continue;
    p = calloc(1, sizeof *p + b->len + 1);
    if (!p)
      continue;
    p->up_pid = pid;
    p->internal = true;
    p->len = b->len;
    memcpy(p->filter, b->filter, b->len);
    p->next = s->psubs;
    s->psubs = p;
  }
}

static void up_on_up(void *ud, bool session_present)
{
  struct uplink *l = ud;
  struct session *s = l->s;
  if (!s)
    return;
  s->gw->m.upstream_connects++;
  s->up_is_up = true;
  s->up_down_since = 0;
  LOGD(MOD, "%s: upstream up (session present %d)", s->client_id, session_present);
  if (s->up_was_up && !session_present)
    resubscribe(s);
  else if (!s->up_was_up && !session_present && s->subs)
    resubscribe(s); /* CleanSession=0 leaf resuming over a fresh upstream */
  s->up_was_up = true;
  if (s->state == SESS_WAIT_UPSTREAM) {
    set_state(s, SESS_ACTIVE);
    s->last_rx = uv_now(s->gw->loop);
    send_connack(s, MQTTSN_RC_ACCEPTED);
    LOGI(MOD, "%s: connected (keep-alive %us)", s->client_id, s->keepalive);
  }
  sess_arm(s);
  pump(s);
}

/* The upstream session is gone for good: the leaf is told (CONNACK with
 * connack_rc while it waits for one, DISCONNECT otherwise) so that it
 * reconnects instead of publishing into the void. */
static void give_up(struct session *s, const char *why, uint8_t connack_rc)
{
  s->gw->m.upstream_given_up++;
  LOGW(MOD, "%s: upstream session gone for good (%s): leaf told so", s->client_id, why);
  if (s->state == SESS_WAIT_UPSTREAM) {
    if (connack_rc == MQTTSN_RC_CONGESTION)
      s->gw->m.connack_congestion++;
    send_connack(s, connack_rc);
  } else {
    send_disconnect(s);
  }
  end_upstream(s, true, false);
  set_state(s, SESS_DISCONNECTED);
  sess_arm(s);
}

static void up_on_down(void *ud, enum upstream_reason why, int connack_rc, uint32_t retry_ms)
{
  struct uplink *l = ud;
  struct session *s = l->s;
  if (!s)
    return;
  s->gw->m.upstream_failures++;
  s->up_is_up = false;
  if (!s->up_down_since)
    s->up_down_since = uv_now(s->gw->loop);
  {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: upstream down (%s%s%s), retry in %u ms",
                    s->client_id, upstream_reason_str(why),
                    why == UPSTREAM_R_CONNACK ? ": " : "",
                    why == UPSTREAM_R_CONNACK ? "refused" : "", retry_ms);
  }
  /* A broker that refuses the identity will keep refusing it: tell the leaf
   * now instead of letting it publish into the void. */
  if (why == UPSTREAM_R_CONNACK &&
      (connack_rc == 2 || connack_rc == 4 || connack_rc == 5)) {
    /* MQTT-SN has no "not authorized"; 0x03 is the nearest (as Paho does). */
    give_up(s, "connection refused by the broker", MQTTSN_RC_NOT_SUPPORTED);
    return;
  }
  sess_arm(s);
}

static void up_on_message(void *ud, const char *topic, size_t topic_len, const uint8_t *payload,
                          size_t len, int qos, bool retain, uint16_t packet_id)
{
  struct uplink *l = ud;
  struct session *s = l->s;
  struct gw *gw;
  struct downmsg *d;

  if (!s) /* cannot happen once detached, but never ack for a gone leaf */
    return;
  gw = s->gw;
  if (s->q_len >= gw->cfg->lan.queue_max || topic_len > 0xFFFF) {
    static struct log_ratelimit rl;
    gw->m.queue_dropped++;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: queue full (%u), message on %.*s dropped",
                    s->client_id, s->q_len, (int)(topic_len > 64 ? 64 : topic_len), topic);
    if (qos > 0)
      upstream_puback(l->u, packet_id);
    return;
  }
  d = malloc(sizeof *d + topic_len + 1 + len);
  if (!d) {
    gw->m.queue_dropped++;
    if (qos > 0)
      upstream_puback(l->u, packet_id);
    return;
  }
  d->next = NULL;
  /* QoS 2 from the broker is completed by the upstream itself; only QoS 1
   * waits for the leaf's acknowledgement. */
  d->up_pid = qos == 1 ? packet_id : 0;
  d->qos = (uint8_t)(qos > 1 ? 1 : qos);
  d->retain = retain;
  d->topic_len = (uint16_t)topic_len;
  d->len = len;
  memcpy(d->data, topic, topic_len);
  d->data[topic_len] = '\0';
  if (len)
    memcpy(d->data + topic_len + 1, payload, len);
  if (s->q_tail)
    s->q_tail->next = d;
  else
    s->q_head = d;
  s->q_tail = d;
  s->q_len++;
  pump(s);
}

static void up_on_puback(void *ud, void *token)
{
  struct uplink *l = ud;
  struct session *s = l->s;
  struct uppending *p = token;

  if (s && !p->orphan) {
    /* Unlink from the session's list. */
    for (struct uppending **pp = &s->upp; *pp; pp = &(*pp)->next) {
      if (*pp == p) {
        *pp = p->next;
        break;
      }
    }
    if (p->qos == 2) {
      if (s->n_qos2 < sizeof s->qos2_ids / sizeof s->qos2_ids[0])
        s->qos2_ids[s->n_qos2++] = p->msg_id;
      send_msgid(s, MQTTSN_PUBREC, p->msg_id);
    } else {
      send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_ACCEPTED);
    }
  }
  free(p);
}

static void up_on_dropped(void *ud, void *token)
{
  struct uplink *l = ud;
  struct uppending *p = token;
  struct session *s = l->s;
  if (s && !p->orphan) {
    for (struct uppending **pp = &s->upp; *pp; pp = &(*pp)->next) {
      if (*pp == p) {
        *pp = p->next;
        break;
      }
    }
  }
  l->gw->m.queue_discarded++;
  free(p);
}

static struct pending_sub *take_psub(struct session *s, uint16_t pid, bool unsub)
{
  for (struct pending_sub **pp = &s->psubs; *pp; pp = &(*pp)->next) {
    if ((*pp)->up_pid == pid && (*pp)->unsub == unsub) {
      struct pending_sub *p = *pp;
      *pp = p->next;
      return p;
    }
  }
  return NULL;
}

static void remember_sub(struct session *s, const char *filter, uint16_t len, uint8_t qos)
{
  struct sub *b;
  for (b = s->subs; b; b = b->next) {
    if (b->len == len && memcmp(b->filter, filter, len) == 0) {
      b->qos = qos;
      return;
    }
  }
  b = malloc(sizeof *b + len + 1);
  if (!b)
    return;
  b->qos = qos;
  b->len = len;
  memcpy(b->filter, filter, len);
  b->filter[len] = '\0';
  b->next = s->subs;
  s->subs = b;
}

static void forget_sub(struct session *s, const char *filter, uint16_t len)
{
  for (struct sub **pp = &s->subs; *pp; pp = &(*pp)->next) {
    if ((*pp)->len == len && memcmp((*pp)->filter, filter, len) == 0) {
      struct sub *b = *pp;
      *pp = b->next;
      free(b);
      return;
    }
  }
}

static void up_on_suback(void *ud, uint16_t packet_id, const uint8_t *codes, size_t n)
{
  struct uplink *l = ud;
  struct session *s = l->s;
  struct pending_sub *p;
  struct mqttsn_msg m;

  if (!s || !(p = take_psub(s, packet_id, false)))
    return;
  if (!p->internal) {
    memset(&m, 0, sizeof m);
    m.type = MQTTSN_SUBACK;
    m.u.suback.msg_id = p->msg_id;
    m.u.suback.topic_id = p->topic_id;
    if (n >= 1 && codes[0] != 0x80) {
      m.u.suback.flags.qos = codes[0];
      m.u.suback.rc = MQTTSN_RC_ACCEPTED;
      remember_sub(s, p->filter, p->len, p->qos);
    } else {
      /* MQTT-SN has no "refused" code; 0x03 "not supported" is the nearest. */
      m.u.suback.rc = MQTTSN_RC_NOT_SUPPORTED;
      LOGW(MOD, "%s: broker refused subscription to %s", s->client_id, p->filter);
    }
    send_msg(s, &m);
  } else if (n < 1 || codes[0] == 0x80) {
    LOGW(MOD, "%s: broker refused re-subscription to %s", s->client_id, p->filter);
  }
  free(p);
}

static void up_on_unsuback(void *ud, uint16_t packet_id)
{
  struct uplink *l = ud;
  struct session *s = l->s;
  struct pending_sub *p;
  if (!s || !(p = take_psub(s, packet_id, true)))
    return;
  send_msgid(s, MQTTSN_UNSUBACK, p->msg_id);
  free(p);
}

static void up_on_closed(void *ud)
{
  struct uplink *l = ud;
  struct gw *gw = l->gw;
  if (l->s && l->s->link == l)
    l->s->link = NULL;
  free(l);
  leaves_close_done(gw);
}

static const struct upstream_cbs up_cbs = {
    .on_up = up_on_up,
    .on_down = up_on_down,
    .on_message = up_on_message,
    .on_puback = up_on_puback,
    .on_suback = up_on_suback,
    .on_unsuback = up_on_unsuback,
    .on_dropped = up_on_dropped,
    .on_closed = up_on_closed,
};

/* Lets go of the upstream: the uplink is detached (callbacks become no-ops),
 * the leaf's pending publishes are orphaned (freed by the upstream's
 * callbacks), the upstream closes asynchronously.  With publish_will the
 * leaf's will is published first: when the will in the upstream CONNECT is
 * still current, by closing abruptly (the broker publishes it, as for any
 * lost client); when the leaf changed it since, explicitly. */
static void end_upstream(struct session *s, bool graceful, bool publish_will)
{
  struct uplink *l = s->link;
  if (!l)
    return;
  for (struct uppending *p = s->upp; p; p = p->next)
    p->orphan = true;
  s->upp = NULL;
  s->n_qos2 = 0;
  /* Messages for the leaf that it never acknowledged are not acked upstream:
   * with a persistent upstream session the broker will deliver them again. */
  clear_queue(s, false);
  while (s->psubs) {
    struct pending_sub *n = s->psubs->next;
    free(s->psubs);
    s->psubs = n;
  }
  if (publish_will && s->will_set) {
    s->gw->m.wills_published++;
    if (s->will_dirty) {
      upstream_publish(l->u, s->will_topic, strlen(s->will_topic), s->will_msg, s->will_msg_len,
                       s->will_qos > 1 ? 1 : s->will_qos, s->will_retain, NULL);
      graceful = true;
    } else {
      graceful = false;
    }
  }
  l->s = NULL;
  s->link = NULL;
  s->up_is_up = false;
  s->up_was_up = false;
  s->up_down_since = 0;
  s->gw->pending_closes++;
  upstream_stop(l->u, graceful);
}

/* Creates and starts the leaf's upstream session with its identity: the
 * client id (the thing name once provisioned) and its TLS client identity
 * (NULL: the configured certificate, or <cert_dir>/<ClientId>.crt). */
static int start_upstream(struct session *s, const struct provision_identity *id)
{
  struct gw *gw = s->gw;
  const struct gw_config *cfg = gw->cfg;
  struct upstream_opts o;
  struct uplink *l;
  char cert[4096], key[4096];
  const char *certp = NULL, *keyp = NULL;
  int rc;

  if (cfg->upstream.cert_dir && !id->tls) {
    snprintf(cert, sizeof cert, "%s/%s.crt", cfg->upstream.cert_dir, s->client_id);
    snprintf(key, sizeof key, "%s/%s.key", cfg->upstream.cert_dir, s->client_id);
    certp = cert;
    keyp = key;
  }
  leaves_upstream_opts(gw, &o, id->thing_name, certp, keyp);
  o.identity = id->tls;
  o.clean_session = cfg->upstream.clean_session && s->clean;
  if (s->will_set) {
    o.will.topic = s->will_topic;
    o.will.payload = s->will_msg;
    o.will.payload_len = s->will_msg_len;
    o.will.qos = s->will_qos > 1 ? 1 : s->will_qos;
    o.will.retain = s->will_retain;
  }
  l = calloc(1, sizeof *l);
  if (!l)
    return -1;
  l->s = s;
  l->gw = gw;
  rc = upstream_new(gw->loop, &o, &up_cbs, l, &l->u);
  if (rc != UPSTREAM_OK) {
    free(l);
    return -1;
  }
  s->link = l;
  s->will_dirty = false;
  s->up_is_up = false;
  s->up_was_up = false;
  s->up_down_since = 0;
  if (upstream_start(l->u) != UPSTREAM_OK) {
    end_upstream(s, false, false);
    return -1;
  }
  return 0;
}

/* ---- CONNECT ------------------------------------------------------------ */

/* The will prompts are done (or not needed): bring the upstream up. */
static void connect_proceed(struct session *s)
{
  struct gw *gw = s->gw;
  if (s->link && s->up_is_up) {
    if (s->will_dirty) {
      /* The will changed: the upstream CONNECT must carry the new one, so the
       * upstream session is made again (subscriptions are re-sent). */
      end_upstream(s, true, false);
    } else {
      set_state(s, SESS_ACTIVE);
      s->last_rx = uv_now(gw->loop);
      send_connack(s, MQTTSN_RC_ACCEPTED);
      LOGI(MOD, "%s: connected (session resumed)", s->client_id);
      sess_arm(s);
      pump(s);
      return;
    }
  }
  set_state(s, SESS_WAIT_UPSTREAM);
  s->wait_provision = false;
  if (!s->link) {
    /* The leaf's identity: provisioned once, then read from the registry.
     * While its run is in flight the CONNACK waits (up to the CONNACK
     * timeout); sess_on_provisioned() continues from here. */
    struct provision_identity id;
    char reason[256];
    int st = provision_ensure(gw->prov, s->client_id, &id, reason, sizeof reason);
    if (st == PROVISION_PENDING) {
      s->wait_provision = true;
      LOGD(MOD, "%s: CONNACK waits for provisioning (%s)", s->client_id, reason);
      sess_arm(s);
      return;
    }
    if (st == PROVISION_REFUSED) {
      LOGW(MOD, "%s: refused: %s", s->client_id, reason);
      send_connack(s, MQTTSN_RC_NOT_SUPPORTED);
      set_state(s, SESS_DISCONNECTED);
      sess_arm(s);
      return;
    }
    if (start_upstream(s, &id) != 0) {
      LOGE(MOD, "%s: cannot create the upstream session", s->client_id);
      gw->m.connack_congestion++;
      send_connack(s, MQTTSN_RC_CONGESTION);
      set_state(s, SESS_DISCONNECTED);
    }
    tls_identity_unref(id.tls);
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
    send_connack(s, MQTTSN_RC_NOT_SUPPORTED);
    set_state(s, SESS_DISCONNECTED);
    sess_arm(s);
    return;
  }
  connect_proceed(s);
}

void sess_on_connect(struct session *s, const struct sockaddr *from, const struct mqttsn_msg *m)
{
  struct gw *gw = s->gw;
  const struct mqttsn_connect *c = &m->u.connect;

  /* A CONNECT from a sleeping leaf is its way back to active, not a new
   * session: the upstream session, subscriptions and buffered messages stay,
   * whatever CleanSession says (PROTOCOLS.md C.13.1; Paho and Bisquitt read
   * the specification the same way).  Many leaves always send
   * CleanSession=1, and dropping their subscriptions on every wake-up would
   * lose their commands. */
  bool clean = c->flags.clean_session && s->state != SESS_ASLEEP && s->state != SESS_AWAKE;

  gw->m.connects++;
  leaves_bind_addr(gw, s, from);
  s->last_rx = uv_now(gw->loop);
  s->keepalive = c->duration;

  if (clean) {
    /* §6.3: CleanSession deletes subscriptions and will; the upstream
     * session is made again with CleanSession=1 as well. */
    end_upstream(s, true, false);
    free_subs(s);
    free_will(s);
    topics_clear(&s->topics);
    clear_queue(s, false);
  }
  /* CleanSession=0 keeps subscriptions, topic ids and will (§6.3). */
  s->clean = clean;
  /* A new connection restarts the downlink from the head of the queue. */
  s->inflight = INF_NONE;
  /* One deadline for the whole CONNECT: will prompts, provisioning, upstream. */
  s->connect_deadline = uv_now(gw->loop) + gw->cfg->lan.connack_timeout_ms;
  if (c->flags.will) {
    set_state(s, SESS_WAIT_WILLTOPIC);
    send_simple(s, MQTTSN_WILLTOPICREQ);
    sess_arm(s);
    return;
  }
  connect_proceed(s);
}

/* ---- other messages ----------------------------------------------------- */

static void set_will_topic(struct session *s, const struct mqttsn_willtopic *w)
{
  free_will(s);
  s->will_dirty = true;
  if (w->empty)
    return;
  s->will_topic = malloc(w->topic.len + 1);
  if (!s->will_topic)
    return;
  memcpy(s->will_topic, w->topic.p, w->topic.len);
  s->will_topic[w->topic.len] = '\0';
  s->will_qos = (uint8_t)(w->flags.qos < 0 ? 0 : w->flags.qos);
  s->will_retain = w->flags.retain;
  s->will_set = true;
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

/* Resolves a leaf's topic reference to a name (*name; a short name is written
 * into shortbuf[3]).  Returns the length, or -1 for an unknown id. */
static int resolve_topic(struct session *s, int type, uint16_t id, char *shortbuf,
                         const char **name)
{
  switch (type) {
  case MQTTSN_TOPIC_NORMAL: {
    struct topic_entry *e = topics_by_id(&s->topics, id);
    if (!e)
      return -1;
    *name = e->name;
    return e->len;
  }
  case MQTTSN_TOPIC_PREDEFINED: {
    const char *t = leaves_predefined_topic(s->gw, id);
    if (!t)
      return -1;
    *name = t;
    return (int)strlen(t);
  }
  case MQTTSN_TOPIC_SHORT:
    shortbuf[0] = (char)(id >> 8);
    shortbuf[1] = (char)(id & 0xFF);
    shortbuf[2] = '\0';
    *name = shortbuf;
    return 2;
  default:
    return -1;
  }
}

static void on_publish(struct session *s, const struct mqttsn_publish *p)
{
  struct gw *gw = s->gw;
  char sb[3];
  const char *name;
  int nlen, rc;
  struct uppending *u;

  s->msgs_in++;
  switch (p->flags.qos) {
  case 0: gw->m.publish_in_qos0++; break;
  case 1: gw->m.publish_in_qos1++; break;
  default: gw->m.publish_in_qos2++; break;
  }
  nlen = resolve_topic(s, p->flags.topic_type, p->topic_id, sb, &name);
  if (nlen < 0 || (p->flags.topic_type == MQTTSN_TOPIC_SHORT &&
                   !topic_name_is_valid(name, (size_t)nlen))) {
    gw->m.invalid_topic_id++;
    send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_INVALID_TOPIC_ID);
    return;
  }
  if (p->flags.qos == 0) {
    rc = upstream_publish(s->link->u, name, (size_t)nlen, p->data.p, p->data.len, 0,
                          p->flags.retain, NULL);
    if (rc != UPSTREAM_OK) {
      gw->m.uplink_congestion++;
      send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
    }
    return;
  }
  /* QoS 2 already relayed and waiting for PUBREL: the leaf lost our PUBREC. */
  if (p->flags.qos == 2) {
    for (uint8_t i = 0; i < s->n_qos2; i++) {
      if (s->qos2_ids[i] == p->msg_id) {
        send_msgid(s, MQTTSN_PUBREC, p->msg_id);
        return;
      }
    }
  }
  /* A retransmission (DUP) of a publish still on its way upstream: the ack
   * will come when the first copy is acknowledged. */
  for (u = s->upp; u; u = u->next)
    if (u->msg_id == p->msg_id)
      return;
  u = calloc(1, sizeof *u);
  if (!u) {
    send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
    return;
  }
  u->msg_id = p->msg_id;
  u->topic_id = p->topic_id;
  u->topic_type = (uint8_t)p->flags.topic_type;
  u->qos = (uint8_t)p->flags.qos;
  /* QoS 2 goes upstream as QoS 1: AWS IoT has no QoS 2. */
  rc = upstream_publish(s->link->u, name, (size_t)nlen, p->data.p, p->data.len, 1,
                        p->flags.retain, u);
  if (rc != UPSTREAM_OK) {
    free(u);
    gw->m.uplink_congestion++;
    send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
    return;
  }
  u->next = s->upp;
  s->upp = u;
}

static void on_register(struct session *s, const struct mqttsn_register *r)
{
  struct mqttsn_msg m;
  struct topic_entry *e = NULL;

  memset(&m, 0, sizeof m);
  m.type = MQTTSN_REGACK;
  m.u.regack.msg_id = r->msg_id;
  if (!topic_name_is_valid((const char *)r->topic_name.p, r->topic_name.len)) {
    m.u.regack.rc = MQTTSN_RC_NOT_SUPPORTED;
  } else if (!(e = topics_add(&s->topics, (const char *)r->topic_name.p, r->topic_name.len))) {
    m.u.regack.rc = MQTTSN_RC_CONGESTION;
  } else {
    e->known_by_leaf = true;
    m.u.regack.topic_id = e->id;
    m.u.regack.rc = MQTTSN_RC_ACCEPTED;
  }
  send_msg(s, &m);
}

static void on_subscribe(struct session *s, const struct mqttsn_subscribe *sb, bool unsub)
{
  struct mqttsn_msg m;
  char shortbuf[3];
  const char *filter = NULL;
  size_t flen = 0;
  uint16_t topic_id = 0, pid = 0;
  int rc;
  struct pending_sub *p;
  uint8_t qos = (uint8_t)(sb->flags.qos > 1 ? 1 : (sb->flags.qos < 0 ? 0 : sb->flags.qos));
  unsigned npending = 0;

  memset(&m, 0, sizeof m);
  m.type = MQTTSN_SUBACK;
  m.u.suback.msg_id = sb->msg_id;
  /* §6.9: one SUBSCRIBE/UNSUBSCRIBE outstanding per client.  A few are
   * tolerated; a leaf that floods them while the broker is slow gets
   * "congestion" instead of growing the pending list without bound. */
  for (p = s->psubs; p; p = p->next)
    if (!p->internal)
      npending++;
  if (npending >= MAX_PENDING_SUBS) {
    s->gw->m.uplink_congestion++;
    if (unsub)
      return; /* UNSUBACK has no return code: the leaf retries after T_RETRY */
    m.u.suback.rc = MQTTSN_RC_CONGESTION;
    send_msg(s, &m);
    return;
  }
  switch (sb->flags.topic_type) {
  case MQTTSN_TOPIC_NORMAL:
    filter = (const char *)sb->topic_name.p;
    flen = sb->topic_name.len;
    if (!topic_filter_is_valid(filter, flen)) {
      m.u.suback.rc = MQTTSN_RC_NOT_SUPPORTED;
      goto reply_error;
    }
    /* §5.4.16: a filter with wildcards gets TopicId 0x0000 (some gateways
     * allocate one anyway; we follow the specification).  A plain name gets
     * its id now so the leaf needs no REGISTER for it. */
    if (!unsub && !topic_filter_has_wildcard(filter, flen)) {
      struct topic_entry *e = topics_add(&s->topics, filter, flen);
      if (!e) {
        m.u.suback.rc = MQTTSN_RC_CONGESTION;
        goto reply_error;
      }
      e->known_by_leaf = true;
      topic_id = e->id;
    }
    break;
  case MQTTSN_TOPIC_PREDEFINED:
    filter = leaves_predefined_topic(s->gw, sb->topic_id);
    if (!filter) {
      m.u.suback.rc = MQTTSN_RC_INVALID_TOPIC_ID;
      goto reply_error;
    }
    flen = strlen(filter);
    topic_id = sb->topic_id;
    break;
  case MQTTSN_TOPIC_SHORT:
    shortbuf[0] = (char)(sb->topic_id >> 8);
    shortbuf[1] = (char)(sb->topic_id & 0xFF);
    shortbuf[2] = '\0';
    filter = shortbuf;
    flen = 2;
    topic_id = sb->topic_id;
    if (!topic_filter_is_valid(filter, flen)) {
      m.u.suback.rc = MQTTSN_RC_INVALID_TOPIC_ID;
      goto reply_error;
    }
    break;
  default:
    m.u.suback.rc = MQTTSN_RC_NOT_SUPPORTED;
    goto reply_error;
  }

  if (unsub) {
    forget_sub(s, filter, (uint16_t)flen);
    rc = upstream_unsubscribe(s->link->u, filter, flen, &pid);
    if (rc != UPSTREAM_OK) {
      /* The upstream is reconnecting: the subscription is gone from our list,
       * so it is not restored; acknowledge now. */
      send_msgid(s, MQTTSN_UNSUBACK, sb->msg_id);
      return;
    }
  } else {
    rc = upstream_subscribe(s->link->u, filter, flen, qos, &pid);
    if (rc != UPSTREAM_OK) {
      m.u.suback.rc = MQTTSN_RC_CONGESTION;
      goto reply_error;
    }
  }
  p = calloc(1, sizeof *p + flen + 1);
  if (!p)
    return; /* the leaf retries after T_RETRY */
  p->up_pid = pid;
  p->msg_id = sb->msg_id;
  p->topic_id = topic_id;
  p->qos = qos;
  p->unsub = unsub;
  p->len = (uint16_t)flen;
  memcpy(p->filter, filter, flen);
  p->next = s->psubs;
  s->psubs = p;
  return;

reply_error:
  if (unsub) {
    send_msgid(s, MQTTSN_UNSUBACK, sb->msg_id);
    return;
  }
  send_msg(s, &m);
}

static void finish_inflight(struct session *s)
{
  struct downmsg *d = s->q_head;
  s->inflight = INF_NONE;
  if (!d)
    return;
  s->q_head = d->next;
  if (!s->q_head)
    s->q_tail = NULL;
  s->q_len--;
  if (d->up_pid && s->link)
    upstream_puback(s->link->u, d->up_pid);
  free(d);
}

static void go_asleep(struct session *s)
{
  set_state(s, SESS_ASLEEP);
  s->sleep_deadline = uv_now(s->gw->loop) + tolerance_ms(s->keepalive);
  sess_arm(s);
}

void sess_on_wake(struct session *s, const struct sockaddr *from)
{
  (void)from;
  set_state(s, SESS_AWAKE);
  s->last_rx = uv_now(s->gw->loop);
  s->inflight = INF_NONE;
  pump(s);
}

void sess_on_message(struct session *s, const struct sockaddr *from, const struct mqttsn_msg *m)
{
  struct gw *gw = s->gw;
  s->last_rx = uv_now(gw->loop);

  switch (s->state) {
  case SESS_WAIT_WILLTOPIC:
    if (m->type != MQTTSN_WILLTOPIC)
      goto unexpected;
    set_will_topic(s, &m->u.willtopic);
    if (m->u.willtopic.empty) {
      connect_proceed(s);
      return;
    }
    set_state(s, SESS_WAIT_WILLMSG);
    send_simple(s, MQTTSN_WILLMSGREQ);
    return;
  case SESS_WAIT_WILLMSG:
    if (m->type != MQTTSN_WILLMSG)
      goto unexpected;
    set_will_msg(s, &m->u.willmsg);
    connect_proceed(s);
    return;
  case SESS_WAIT_UPSTREAM:
    /* Nothing but CONNECT (handled by gw.c) makes sense before CONNACK. */
    goto unexpected;
  case SESS_ACTIVE:
    break;
  case SESS_ASLEEP:
  case SESS_AWAKE:
    /* A sleeping leaf may acknowledge what we deliver while awake, ping
     * (handled by gw.c), go back to sleep or disconnect. */
    if (m->type != MQTTSN_PUBACK && m->type != MQTTSN_REGACK && m->type != MQTTSN_PUBREC &&
        m->type != MQTTSN_PUBCOMP && m->type != MQTTSN_DISCONNECT && m->type != MQTTSN_PINGREQ)
      goto not_connected;
    break;
  default:
    goto not_connected;
  }

  switch (m->type) {
  case MQTTSN_PUBLISH:
    if (s->state != SESS_ACTIVE)
      goto not_connected;
    on_publish(s, &m->u.publish);
    break;
  case MQTTSN_PUBREL: {
    uint16_t id = m->u.msgid.msg_id;
    for (uint8_t i = 0; i < s->n_qos2; i++) {
      if (s->qos2_ids[i] == id) {
        s->qos2_ids[i] = s->qos2_ids[--s->n_qos2];
        break;
      }
    }
    send_msgid(s, MQTTSN_PUBCOMP, id);
    break;
  }
  case MQTTSN_REGISTER:
    on_register(s, &m->u.reg);
    break;
  case MQTTSN_REGACK:
    if (s->inflight == INF_REGACK && m->u.regack.msg_id == s->inf_msg_id) {
      struct topic_entry *e = topics_by_id(&s->topics, s->inf_topic_id);
      s->inflight = INF_NONE;
      if (m->u.regack.rc == MQTTSN_RC_ACCEPTED && e) {
        e->known_by_leaf = true;
      } else {
        /* §6.10: a rejected REGISTER means the leaf does not want this topic. */
        finish_inflight(s);
        gw->m.queue_dropped++;
      }
      pump(s);
    }
    break;
  case MQTTSN_PUBACK:
    if (s->inflight == INF_PUBACK && m->u.puback.msg_id == s->inf_msg_id) {
      if (m->u.puback.rc == MQTTSN_RC_INVALID_TOPIC_ID) {
        /* The leaf forgot the id (it rebooted?): register it again. */
        struct topic_entry *e = topics_by_id(&s->topics, m->u.puback.topic_id);
        if (e)
          e->known_by_leaf = false;
        s->inflight = INF_NONE;
      } else {
        if (m->u.puback.rc != MQTTSN_RC_ACCEPTED)
          gw->m.queue_dropped++;
        finish_inflight(s);
      }
      pump(s);
    }
    break;
  case MQTTSN_PUBREC:
    /* Downlink is QoS 0/1 only (upstream QoS <= 1), so a PUBREC answers
     * nothing of ours; complete the flow politely. */
    send_msgid(s, MQTTSN_PUBREL, m->u.msgid.msg_id);
    break;
  case MQTTSN_PUBCOMP:
    break;
  case MQTTSN_SUBSCRIBE:
    on_subscribe(s, &m->u.subscribe, false);
    break;
  case MQTTSN_UNSUBSCRIBE:
    on_subscribe(s, &m->u.subscribe, true);
    break;
  case MQTTSN_PINGREQ:
    send_simple(s, MQTTSN_PINGRESP);
    break;
  case MQTTSN_PINGRESP:
    break;
  case MQTTSN_DISCONNECT:
    if (m->u.disconnect.has_duration && m->u.disconnect.duration > 0) {
      /* §6.14: acknowledge with a DISCONNECT without duration; the upstream
       * session stays up, its keep-alive is the gateway's own. */
      s->keepalive = m->u.disconnect.duration;
      send_disconnect(s);
      LOGI(MOD, "%s: asleep for %us", s->client_id, s->keepalive);
      s->inflight = INF_NONE;
      go_asleep(s);
    } else {
      send_disconnect(s);
      LOGI(MOD, "%s: disconnected", s->client_id);
      end_upstream(s, true, false);
      set_state(s, SESS_DISCONNECTED);
      sess_arm(s);
    }
    break;
  case MQTTSN_WILLTOPICUPD: {
    struct mqttsn_msg r;
    set_will_topic(s, &m->u.willtopic);
    memset(&r, 0, sizeof r);
    r.type = MQTTSN_WILLTOPICRESP;
    r.u.resp.rc = MQTTSN_RC_ACCEPTED;
    send_msg(s, &r);
    break;
  }
  case MQTTSN_WILLMSGUPD: {
    struct mqttsn_msg r;
    memset(&r, 0, sizeof r);
    r.type = MQTTSN_WILLMSGRESP;
    r.u.resp.rc = set_will_msg(s, &m->u.willmsg) ? MQTTSN_RC_ACCEPTED : MQTTSN_RC_CONGESTION;
    send_msg(s, &r);
    break;
  }
  default:
    goto unexpected;
  }
  return;

unexpected: {
  static struct log_ratelimit rl;
  gw->m.datagrams_unexpected++;
  log_ratelimited(&rl, LOG_WARN, MOD, "%s: unexpected %s in state %s", s->client_id,
                  mqttsn_type_name(m->type), sess_state_name(s->state));
  return;
}
not_connected:
  /* §6.12: the gateway cannot serve a leaf that is not connected; tell it so
   * it connects again. */
  gw->m.datagrams_unexpected++;
  send_disconnect(s);
}

/* ---- downlink ----------------------------------------------------------- */

static void send_inflight(struct session *s, bool dup)
{
  struct downmsg *d = s->q_head;
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  if (s->inflight == INF_REGACK) {
    struct topic_entry *e = topics_by_id(&s->topics, s->inf_topic_id);
    m.type = MQTTSN_REGISTER;
    m.u.reg.topic_id = s->inf_topic_id;
    m.u.reg.msg_id = s->inf_msg_id;
    m.u.reg.topic_name.p = (const uint8_t *)(e ? e->name : d->data);
    m.u.reg.topic_name.len = e ? e->len : d->topic_len;
  } else {
    int type;
    uint16_t id = s->inf_topic_id;
    m.type = MQTTSN_PUBLISH;
    if (d->topic_len == 2 && !topics_by_name(&s->topics, d->data, 2)) {
      type = MQTTSN_TOPIC_SHORT;
    } else if (leaves_predefined_id(s->gw, d->data, d->topic_len) >= 0 &&
               !topics_by_name(&s->topics, d->data, d->topic_len)) {
      type = MQTTSN_TOPIC_PREDEFINED;
    } else {
      type = MQTTSN_TOPIC_NORMAL;
    }
    m.u.publish.flags.topic_type = type;
    m.u.publish.flags.qos = d->qos;
    m.u.publish.flags.retain = d->retain;
    m.u.publish.flags.dup = dup;
    m.u.publish.topic_id = id;
    m.u.publish.msg_id = d->qos ? s->inf_msg_id : 0;
    m.u.publish.data.p = (const uint8_t *)d->data + d->topic_len + 1;
    m.u.publish.data.len = d->len;
  }
  send_msg(s, &m);
}

/* Sends what it can from the head of the queue: QoS 0 messages go out at
 * once, a QoS 1 message or a REGISTER waits for its acknowledgement. */
static void pump(struct session *s)
{
  struct gw *gw = s->gw;
  if (s->state != SESS_ACTIVE && s->state != SESS_AWAKE)
    return;
  while (s->inflight == INF_NONE && s->q_head) {
    struct downmsg *d = s->q_head;
    int pre = -1;
    struct topic_entry *e = topics_by_name(&s->topics, d->data, d->topic_len);

    if (d->len > 65535 - 9) {
      /* §6.10: a message that does not fit in one MQTT-SN datagram (the
       * 3-octet length form allows 65535 octets) is dropped. */
      static struct log_ratelimit rl;
      log_ratelimited(&rl, LOG_WARN, MOD, "%s: message of %zu bytes on %s too big for MQTT-SN, "
                      "dropped", s->client_id, d->len, d->data);
      gw->m.queue_dropped++;
      finish_inflight(s);
      continue;
    }
    if (!e && d->topic_len == 2) {
      s->inf_topic_id = (uint16_t)(((uint8_t)d->data[0] << 8) | (uint8_t)d->data[1]);
    } else if (!e && (pre = leaves_predefined_id(gw, d->data, d->topic_len)) >= 0) {
      s->inf_topic_id = (uint16_t)pre;
    } else {
      if (!e)
        e = topics_add(&s->topics, d->data, d->topic_len);
      if (!e) {
        gw->m.queue_dropped++;
        finish_inflight(s);
        continue;
      }
      s->inf_topic_id = e->id;
      if (!e->known_by_leaf) {
        s->inflight = INF_REGACK;
        s->inf_msg_id = next_msg_id(s);
        s->inf_tries = 0;
        s->inf_deadline = uv_now(gw->loop) + gw->cfg->lan.t_retry_ms;
        send_inflight(s, false);
        sess_arm(s);
        return;
      }
    }
    if (d->qos == 0) {
      s->inflight = INF_PUBACK; /* for send_inflight's sake */
      send_inflight(s, false);
      gw->m.publish_out_qos0++;
      s->msgs_out++;
      finish_inflight(s);
      continue;
    }
    s->inflight = INF_PUBACK;
    s->inf_msg_id = next_msg_id(s);
    s->inf_tries = 0;
    s->inf_deadline = uv_now(gw->loop) + gw->cfg->lan.t_retry_ms;
    gw->m.publish_out_qos1++;
    s->msgs_out++;
    send_inflight(s, false);
    sess_arm(s);
    return;
  }
  if (s->inflight == INF_NONE && s->state == SESS_AWAKE) {
    /* §6.14: the buffered messages are out; PINGRESP ends the awake time. */
    send_simple(s, MQTTSN_PINGRESP);
    go_asleep(s);
  }
}

/* ---- timers ------------------------------------------------------------- */

static void go_lost(struct session *s, const char *why)
{
  s->gw->m.leaves_lost++;
  LOGI(MOD, "%s: lost (%s)%s", s->client_id, why, s->will_set ? ", publishing its will" : "");
  end_upstream(s, true, true);
  set_state(s, SESS_LOST);
  leaves_unbind_addr(s->gw, s);
  sess_arm(s);
}

static uint64_t next_deadline(const struct session *s)
{
  const struct gw_config *cfg = s->gw->cfg;
  uint64_t d = UINT64_MAX;
#define MIN_D(x)        \
  do {                  \
    uint64_t x_ = (x);  \
    if (x_ < d)         \
      d = x_;           \
  } while (0)
  switch (s->state) {
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
  case SESS_WAIT_UPSTREAM:
    MIN_D(s->connect_deadline);
    break;
  case SESS_ACTIVE:
    if (s->keepalive)
      MIN_D(s->last_rx + tolerance_ms(s->keepalive));
    break;
  case SESS_ASLEEP:
    MIN_D(s->sleep_deadline);
    break;
  default:
    break;
  }
  if ((s->state == SESS_ACTIVE || s->state == SESS_AWAKE) && s->inflight != INF_NONE)
    MIN_D(s->inf_deadline);
  if (sess_is_live(s) && s->state != SESS_WAIT_UPSTREAM && s->up_down_since)
    MIN_D(s->up_down_since + (uint64_t)cfg->upstream.give_up_after_s * 1000u);
#undef MIN_D
  return d;
}

static void sess_arm(struct session *s)
{
  uint64_t d = next_deadline(s), now;
  if (d == UINT64_MAX) {
    uv_timer_stop(&s->timer);
    s->timer_due = 0;
    return;
  }
  if (s->timer_due == d && uv_is_active((uv_handle_t *)&s->timer))
    return;
  now = uv_now(s->gw->loop);
  s->timer_due = d;
  uv_timer_start(&s->timer, timer_cb, d > now ? d - now : 0, 0);
}

static void timer_cb(uv_timer_t *t)
{
  struct session *s = t->data;
  struct gw *gw = s->gw;
  uint64_t now = uv_now(gw->loop);

  s->timer_due = 0;
  switch (s->state) {
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
    if (now >= s->connect_deadline) {
      LOGW(MOD, "%s: will prompts not answered in time", s->client_id);
      set_state(s, SESS_DISCONNECTED);
    }
    break;
  case SESS_WAIT_UPSTREAM:
    if (now >= s->connect_deadline) {
      gw->m.connack_congestion++;
      LOGW(MOD, "%s: %s within %u ms: CONNACK congestion", s->client_id,
           s->wait_provision ? "not provisioned" : "upstream not up",
           gw->cfg->lan.connack_timeout_ms);
      s->wait_provision = false;
      send_connack(s, MQTTSN_RC_CONGESTION);
      end_upstream(s, true, false);
      set_state(s, SESS_DISCONNECTED);
    }
    break;
  case SESS_ACTIVE:
    if (s->keepalive && now >= s->last_rx + tolerance_ms(s->keepalive)) {
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
    if (s->inf_tries >= gw->cfg->lan.n_retry) {
      if (s->state == SESS_ACTIVE) {
        go_lost(s, "no acknowledgement after retries");
        return;
      }
      /* Awake leaf went back to sleep early: keep the message for next time. */
      s->inflight = INF_NONE;
      go_asleep(s);
    } else {
      s->inf_tries++;
      s->inf_deadline = now + gw->cfg->lan.t_retry_ms;
      gw->m.retransmissions++;
      send_inflight(s, true);
    }
  }
  if (sess_is_live(s) && s->state != SESS_WAIT_UPSTREAM && s->up_down_since &&
      now >= s->up_down_since + (uint64_t)gw->cfg->upstream.give_up_after_s * 1000u) {
    give_up(s, "upstream down too long", MQTTSN_RC_CONGESTION);
    return;
  }
  sess_arm(s);
}

void sess_shutdown(struct session *s, bool notify)
{
  if (notify && sess_is_live(s))
    send_disconnect(s);
  end_upstream(s, true, false);
  set_state(s, SESS_DISCONNECTED);
  uv_timer_stop(&s->timer);
}

void sess_kick(struct session *s)
{
  if (!sess_is_live(s))
    return;
  send_disconnect(s);
  end_upstream(s, true, false);
  set_state(s, SESS_DISCONNECTED);
  sess_arm(s);
}

void sess_each_sub(const struct session *s, sess_sub_cb cb, void *ud)
{
  for (const struct sub *b = s->subs; b; b = b->next)
    if (cb(ud, b->filter, b->qos) != 0)
      return;
}
