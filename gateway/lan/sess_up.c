/*
 * sess_up.c - a leaf's traffic towards its upstream (PUBLISH with its QoS 1
 * and 2 flows, REGISTER, SUBSCRIBE/UNSUBSCRIBE and the subscriptions kept
 * for re-subscribing), and the upstream's reports about itself
 * (sess_up_up/down/acked/dropped/suback/unsuback/closed, session.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lan_int.h"
#include "log.h"
#include "topic.h"

#define MOD "session"
#define MAX_PENDING_SUBS 8 /* SUBSCRIBE/UNSUBSCRIBE awaiting the broker, per leaf */

void sess_free_subs(struct session *s)
{
  while (s->subs) {
    struct sub *n = s->subs->next;
    free(s->subs);
    s->subs = n;
  }
  s->n_subs = 0;
  s->sub_bytes = 0;
  sess_free_psubs(s);
}

void sess_free_psubs(struct session *s)
{
  while (s->psubs) {
    struct pending_sub *n = s->psubs->next;
    free(s->psubs);
    s->psubs = n;
  }
}

void sess_orphan_pending(struct session *s)
{
  for (struct uppending *p = s->upp; p; p = p->next)
    p->orphan = true;
  s->upp = NULL;
}

/* ---- upstream callbacks ------------------------------------------------- */

void sess_resubscribe(struct session *s)
{
  for (struct sub *b = s->subs; b; b = b->next) {
    uint16_t pid;
    struct pending_sub *p;
    if (SESS_UP(s)->subscribe(SESS_UP_CTX(s), s->link, b->filter, b->len, b->qos, &pid) != SESS_UP_OK)
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

void sess_up_up(struct session *s, bool session_present)
{
  s->lv->m->upstream_connects++;
  s->up_is_up = true;
  s->up_down_since = 0;
  LOGD(MOD, "%s: upstream up (session present %d)", s->client_id, session_present);
  if (s->up_was_up && !session_present)
    sess_resubscribe(s);
  else if (!s->up_was_up && !session_present && s->subs)
    sess_resubscribe(s); /* CleanSession=0 leaf resuming over a fresh upstream */
  s->up_was_up = true;
  sess_send_deferred(s);
  if (s->state == SESS_WAIT_UPSTREAM) {
    sess_connect_done(s);
    LOGI(MOD, "%s: connected (keep-alive %us)", s->client_id, s->keepalive);
  }
  sess_arm(s);
  sess_pump(s);
}

void sess_up_down(struct session *s, bool identity_refused)
{
  s->lv->m->upstream_failures++;
  s->up_is_up = false;
  if (!s->up_down_since)
    s->up_down_since = uv_now(s->lv->loop);
  /* A broker that refuses the identity will keep refusing it: tell the leaf
   * now instead of letting it publish into the void. */
  if (identity_refused) {
    /* MQTT-SN has no "not authorized"; 0x03 is the nearest (as Paho does). */
    sess_give_up(s, "connection refused by the broker", MQTTSN_RC_NOT_SUPPORTED);
    return;
  }
  sess_arm(s);
}

/* Takes token out of the session's list of publishes waiting for the
 * broker; false when the session let go of it (or there is no session). */
static bool take_pending(struct session *s, struct uppending *p)
{
  if (!s || p->orphan)
    return false;
  for (struct uppending **pp = &s->upp; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  return true;
}

void sess_up_acked(struct session *s, void *token)
{
  struct uppending *p = token;

  if (take_pending(s, p)) {
    if (p->qos == 2) {
      if (s->n_qos2 < sizeof s->qos2_ids / sizeof s->qos2_ids[0])
        s->qos2_ids[s->n_qos2++] = p->msg_id;
      sess_reply_msgid(s, MQTTSN_PUBREC, p->msg_id);
    } else {
      sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_ACCEPTED);
    }
  }
  free(p);
}

void sess_up_refused(struct session *s, void *token)
{
  struct uppending *p = token;

  if (take_pending(s, p)) {
    /* §5.4.13: a PUBACK with a return code rejects a PUBLISH of either QoS;
     * 0x03 "not supported" is the nearest to "not authorized". */
    static struct log_ratelimit rl;
    s->msgs_refused++;
    s->lv->m->publish_refused++;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: publish (MsgId %u) refused by the broker, dropped",
                    s->client_id, p->msg_id);
    sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_NOT_SUPPORTED);
  }
  free(p);
}

void sess_up_dropped(struct session *s, void *token)
{
  take_pending(s, token);
  free(token);
}

void sess_up_not_taken(struct session *s, void *token)
{
  struct uppending *p = token;
  if (take_pending(s, p)) {
    s->lv->m->uplink_congestion++;
    sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
  }
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
  sess_persist_mark(s);
  for (b = s->subs; b; b = b->next) {
    if (b->len == len && memcmp(b->filter, filter, len) == 0) {
      b->qos = qos;
      return;
    }
  }
  b = malloc(sizeof *b + len + 1);
  if (!b)
    return;
  s->n_subs++;
  s->sub_bytes += len;
  b->qos = qos;
  b->len = len;
  memcpy(b->filter, filter, len);
  b->filter[len] = '\0';
  b->next = s->subs;
  s->subs = b;
}

void sess_restore_sub(struct session *s, const char *filter, size_t len, uint8_t qos)
{
  if (len > 0 && len <= 0xFFFF)
    remember_sub(s, filter, (uint16_t)len, qos > 1 ? 1 : qos);
}

static void forget_sub(struct session *s, const char *filter, uint16_t len)
{
  sess_persist_mark(s);
  for (struct sub **pp = &s->subs; *pp; pp = &(*pp)->next) {
    if ((*pp)->len == len && memcmp((*pp)->filter, filter, len) == 0) {
      struct sub *b = *pp;
      *pp = b->next;
      s->n_subs--;
      s->sub_bytes -= b->len;
      free(b);
      return;
    }
  }
}

void sess_up_suback(struct session *s, uint16_t packet_id, const uint8_t *codes, size_t n)
{
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
      static struct log_ratelimit rl;
      log_ratelimited(&rl, LOG_WARN, MOD, "%s: broker refused subscription to %s", s->client_id,
                      p->filter);
    }
    sess_send(s, &m);
  } else if (n < 1 || codes[0] == 0x80) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: broker refused re-subscription to %s",
                    s->client_id, p->filter);
  }
  free(p);
}

void sess_up_unsuback(struct session *s, uint16_t packet_id)
{
  struct pending_sub *p;
  if (!s || !(p = take_psub(s, packet_id, true)))
    return;
  sess_reply_msgid(s, MQTTSN_UNSUBACK, p->msg_id);
  free(p);
}

void sess_up_closed(struct session *s, struct sess_link *l)
{
  if (s && s->link == l)
    s->link = NULL;
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
    const char *t = topics_predefined_name(s->lv->cfg, id);
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

void sess_on_publish(struct session *s, const struct mqttsn_publish *p)
{
  struct leaves *lv = s->lv;
  char sb[3];
  const char *name;
  int nlen, rc;
  struct uppending *u;

  s->msgs_in++;
  s->last_pub_in = uv_now(lv->loop);
  sess_rate_count(&s->rate_in, s->last_pub_in);
  switch (p->flags.qos) {
  case 0: lv->m->publish_in_qos0++; break;
  case 1: lv->m->publish_in_qos1++; break;
  default: lv->m->publish_in_qos2++; break;
  }
  nlen = resolve_topic(s, p->flags.topic_type, p->topic_id, sb, &name);
  if (nlen < 0 || (p->flags.topic_type == MQTTSN_TOPIC_SHORT &&
                   !topic_name_is_valid(name, (size_t)nlen))) {
    lv->m->invalid_topic_id++;
    sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_INVALID_TOPIC_ID);
    return;
  }
  if (p->flags.qos == 0) {
    rc = SESS_UP(s)->publish(SESS_UP_CTX(s), s->link, name, (size_t)nlen, p->data.p, p->data.len, 0,
                          p->flags.retain, NULL);
    if (rc != SESS_UP_OK) {
      lv->m->uplink_congestion++;
      sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
    }
    return;
  }
  /* QoS 2 already relayed and waiting for PUBREL: the leaf lost our PUBREC. */
  if (p->flags.qos == 2) {
    for (uint8_t i = 0; i < s->n_qos2; i++) {
      if (s->qos2_ids[i] == p->msg_id) {
        sess_reply_msgid(s, MQTTSN_PUBREC, p->msg_id);
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
    sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
    return;
  }
  u->msg_id = p->msg_id;
  u->topic_id = p->topic_id;
  u->topic_type = (uint8_t)p->flags.topic_type;
  u->qos = (uint8_t)p->flags.qos;
  /* QoS 2 goes upstream as QoS 1: AWS IoT has no QoS 2. */
  rc = SESS_UP(s)->publish(SESS_UP_CTX(s), s->link, name, (size_t)nlen, p->data.p, p->data.len, 1,
                        p->flags.retain, u);
  if (rc != SESS_UP_OK) {
    free(u);
    lv->m->uplink_congestion++;
    sess_send_puback(s, p->topic_id, p->msg_id, MQTTSN_RC_CONGESTION);
    return;
  }
  u->next = s->upp;
  s->upp = u;
}

/* §6.7: the leaf's PUBREL of a QoS 2 publish already relayed. */
void sess_on_pubrel(struct session *s, uint16_t id)
{
  for (uint8_t i = 0; i < s->n_qos2; i++) {
    if (s->qos2_ids[i] == id) {
      s->qos2_ids[i] = s->qos2_ids[--s->n_qos2];
      break;
    }
  }
  sess_reply_msgid(s, MQTTSN_PUBCOMP, id);
}

void sess_on_register(struct session *s, const struct mqttsn_register *r)
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
  sess_send(s, &m);
}

/* The filter a SUBSCRIBE/UNSUBSCRIBE names, by its topic id type: *filter
 * (a short name is written into shortbuf[3]), *flen and the topic id for the
 * SUBACK.  Returns MQTTSN_RC_ACCEPTED or the return code to refuse with. */
static uint8_t sub_filter(struct session *s, const struct mqttsn_subscribe *sb, bool unsub,
                          char *shortbuf, const char **filter, size_t *flen, uint16_t *topic_id)
{
  switch (sb->flags.topic_type) {
  case MQTTSN_TOPIC_NORMAL:
    *filter = (const char *)sb->topic_name.p;
    *flen = sb->topic_name.len;
    if (!topic_filter_is_valid(*filter, *flen))
      return MQTTSN_RC_NOT_SUPPORTED;
    /* §5.4.16: a filter with wildcards gets TopicId 0x0000 (some gateways
     * allocate one anyway; we follow the specification).  A plain name gets
     * its id now so the leaf needs no REGISTER for it. */
    if (!unsub && !topic_filter_has_wildcard(*filter, *flen)) {
      struct topic_entry *e = topics_add(&s->topics, *filter, *flen);
      if (!e)
        return MQTTSN_RC_CONGESTION;
      e->known_by_leaf = true;
      *topic_id = e->id;
    }
    return MQTTSN_RC_ACCEPTED;
  case MQTTSN_TOPIC_PREDEFINED:
    *filter = topics_predefined_name(s->lv->cfg, sb->topic_id);
    if (!*filter)
      return MQTTSN_RC_INVALID_TOPIC_ID;
    *flen = strlen(*filter);
    *topic_id = sb->topic_id;
    return MQTTSN_RC_ACCEPTED;
  case MQTTSN_TOPIC_SHORT:
    shortbuf[0] = (char)(sb->topic_id >> 8);
    shortbuf[1] = (char)(sb->topic_id & 0xFF);
    shortbuf[2] = '\0';
    *filter = shortbuf;
    *flen = 2;
    *topic_id = sb->topic_id;
    return topic_filter_is_valid(*filter, *flen) ? MQTTSN_RC_ACCEPTED
                                                 : MQTTSN_RC_INVALID_TOPIC_ID;
  default:
    return MQTTSN_RC_NOT_SUPPORTED;
  }
}

/* SUBSCRIBEs and UNSUBSCRIBEs of the leaf waiting for the broker. */
static unsigned leaf_pending_subs(const struct session *s)
{
  unsigned n = 0;
  for (const struct pending_sub *p = s->psubs; p; p = p->next)
    if (!p->internal)
      n++;
  return n;
}

/* A new subscription to filter[len] fits the leaf's bounds
 * (lan.max_subscriptions, lan.max_subscription_bytes), counting those
 * waiting for the broker.  Subscribing again to a held filter always fits. */
static bool sub_fits(const struct session *s, const char *filter, size_t len)
{
  const struct gw_config *cfg = s->lv->cfg;
  uint64_t n = s->n_subs + 1, bytes = (uint64_t)s->sub_bytes + len;
  for (const struct sub *b = s->subs; b; b = b->next)
    if (b->len == len && memcmp(b->filter, filter, len) == 0)
      return true;
  for (const struct pending_sub *p = s->psubs; p; p = p->next) {
    if (p->internal || p->unsub)
      continue;
    n++;
    bytes += p->len;
  }
  return n <= cfg->lan.max_subscriptions && bytes <= cfg->lan.max_subscription_bytes;
}

/* Answers a SUBSCRIBE (SUBACK with rc) or an UNSUBSCRIBE (UNSUBACK, which
 * has no return code) without asking the broker. */
static void sub_reply_now(struct session *s, const struct mqttsn_subscribe *sb, bool unsub,
                          uint8_t rc)
{
  struct mqttsn_msg m;
  if (unsub) {
    sess_reply_msgid(s, MQTTSN_UNSUBACK, sb->msg_id);
    return;
  }
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_SUBACK;
  m.u.suback.msg_id = sb->msg_id;
  m.u.suback.rc = rc;
  sess_send(s, &m);
}

void sess_on_subscribe(struct session *s, const struct mqttsn_subscribe *sb, bool unsub)
{
  char shortbuf[3];
  const char *filter = NULL;
  size_t flen = 0;
  uint16_t topic_id = 0, pid = 0;
  struct pending_sub *p;
  uint8_t qos = (uint8_t)(sb->flags.qos > 1 ? 1 : (sb->flags.qos < 0 ? 0 : sb->flags.qos));
  uint8_t rc;

  /* §6.9: one SUBSCRIBE/UNSUBSCRIBE outstanding per client.  A few are
   * tolerated; a leaf that floods them while the broker is slow gets
   * "congestion" instead of growing the pending list without bound. */
  /* A repeat of one still waiting for the upstream: its answer comes. */
  for (p = s->psubs; p; p = p->next)
    if (p->deferred && p->msg_id == sb->msg_id && p->unsub == unsub)
      return;
  if (leaf_pending_subs(s) >= MAX_PENDING_SUBS) {
    s->lv->m->uplink_congestion++;
    if (!unsub) /* UNSUBACK has no return code: the leaf retries after T_RETRY */
      sub_reply_now(s, sb, false, MQTTSN_RC_CONGESTION);
    return;
  }
  rc = sub_filter(s, sb, unsub, shortbuf, &filter, &flen, &topic_id);
  if (rc == MQTTSN_RC_ACCEPTED && !unsub && !sub_fits(s, filter, flen)) {
    static struct log_ratelimit rl;
    s->lv->m->subscriptions_refused++;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: SUBSCRIBE refused: %u subscriptions, %u bytes held",
                    s->client_id, s->n_subs, s->sub_bytes);
    rc = MQTTSN_RC_CONGESTION;
  }
  if (rc != MQTTSN_RC_ACCEPTED) {
    sub_reply_now(s, sb, unsub, rc);
    return;
  }
  /* A leaf accepted before its upstream is up (the outbox: it may be
   * coming up, or the uplink is down): the request waits for the upstream,
   * and the leaf gets the broker's answer then. */
  bool defer = s->link_ready && !s->up_is_up;
  if (unsub) {
    forget_sub(s, filter, (uint16_t)flen);
    if (!defer &&
        SESS_UP(s)->unsubscribe(SESS_UP_CTX(s), s->link, filter, flen, &pid) != SESS_UP_OK) {
      /* The upstream is reconnecting: the subscription is gone from our list,
       * so it is not restored; acknowledge now. */
      sub_reply_now(s, sb, true, 0);
      return;
    }
  } else if (!defer && SESS_UP(s)->subscribe(SESS_UP_CTX(s), s->link, filter, flen, qos, &pid) !=
                           SESS_UP_OK) {
    sub_reply_now(s, sb, false, MQTTSN_RC_CONGESTION);
    return;
  }
  p = calloc(1, sizeof *p + flen + 1);
  if (!p)
    return; /* the leaf retries after T_RETRY */
  p->deferred = defer;
  p->up_pid = pid;
  p->msg_id = sb->msg_id;
  p->topic_id = topic_id;
  p->qos = qos;
  p->unsub = unsub;
  p->len = (uint16_t)flen;
  memcpy(p->filter, filter, flen);
  p->next = s->psubs;
  s->psubs = p;
}

void sess_send_deferred(struct session *s)
{
  for (struct pending_sub **pp = &s->psubs; *pp;) {
    struct pending_sub *p = *pp;
    int rc;
    if (!p->deferred) {
      pp = &p->next;
      continue;
    }
    rc = p->unsub ? SESS_UP(s)->unsubscribe(SESS_UP_CTX(s), s->link, p->filter, p->len, &p->up_pid)
                  : SESS_UP(s)->subscribe(SESS_UP_CTX(s), s->link, p->filter, p->len, p->qos,
                                          &p->up_pid);
    if (rc == SESS_UP_OK) {
      p->deferred = false;
      pp = &p->next;
      continue;
    }
    /* The upstream went again at once: the leaf asks again later. */
    *pp = p->next;
    if (p->unsub) {
      sess_reply_msgid(s, MQTTSN_UNSUBACK, p->msg_id);
    } else {
      struct mqttsn_msg m;
      memset(&m, 0, sizeof m);
      m.type = MQTTSN_SUBACK;
      m.u.suback.msg_id = p->msg_id;
      m.u.suback.rc = MQTTSN_RC_CONGESTION;
      sess_send(s, &m);
    }
    free(p);
  }
}

/* ---- the end of the upstream --------------------------------------------- */

/* Lets go of the upstream: the link is given back to the relay (no report
 * names this session afterwards), the leaf's pending publishes are orphaned
 * (freed when the relay reports them), the upstream closes asynchronously.
 * With publish_will the leaf's will is published first: with the outbox
 * (s->link_ready) through it, behind the leaf's stored messages; otherwise,
 * when the will in the upstream CONNECT is still current, by closing
 * abruptly (the broker publishes it, as for any lost client), and when the
 * leaf changed it since, explicitly. */
void sess_end_upstream(struct session *s, bool graceful, bool publish_will)
{
  struct sess_link *l = s->link;
  if (!l)
    return;
  sess_orphan_pending(s);
  s->n_qos2 = 0;
  /* Messages for the leaf that it never acknowledged are not acked upstream:
   * with a persistent upstream session the broker will deliver them again. */
  sess_clear_queue(s, false);
  sess_free_psubs(s);
  if (publish_will && s->will_set) {
    s->lv->m->wills_published++;
    if (s->link_ready) {
      /* The outbox: the will is stored after the leaf's last messages and
       * goes out behind them, at QoS 1, even if the upstream never came up
       * to carry the will of its CONNECT (docs/outbox.md). */
      SESS_UP(s)->publish(SESS_UP_CTX(s), l, s->will_topic, strlen(s->will_topic), s->will_msg,
                          s->will_msg_len, 1, s->will_retain, NULL);
      graceful = true;
    } else if (s->will_dirty) {
      SESS_UP(s)->publish(SESS_UP_CTX(s), l, s->will_topic, strlen(s->will_topic), s->will_msg,
                          s->will_msg_len, s->will_qos > 1 ? 1 : s->will_qos, s->will_retain,
                          NULL);
      graceful = true;
    } else {
      graceful = false;
    }
  }
  s->link = NULL;
  s->link_ready = false;
  s->up_is_up = false;
  s->up_was_up = false;
  s->up_down_since = 0;
  SESS_UP(s)->close(SESS_UP_CTX(s), l, graceful);
}

/* The upstream session is gone for good: the leaf is told (CONNACK with
 * connack_rc while it waits for one, DISCONNECT otherwise) so that it
 * reconnects instead of publishing into the void. */
void sess_give_up(struct session *s, const char *why, uint8_t connack_rc)
{
  s->lv->m->upstream_given_up++;
  LOGW(MOD, "%s: upstream session gone for good (%s): leaf told so", s->client_id, why);
  if (s->state == SESS_WAIT_UPSTREAM) {
    if (connack_rc == MQTTSN_RC_CONGESTION)
      s->lv->m->connack_congestion++;
    sess_reply_connack(s, connack_rc);
  } else {
    sess_reply(s, MQTTSN_DISCONNECT);
  }
  sess_end_upstream(s, true, false);
  sess_set_state(s, SESS_DISCONNECTED);
  sess_arm(s);
}
