/*
 * sess_down.c - the downlink of one leaf: messages from the broker queue
 * here (bounded by lan.queue_max) and go to the leaf one QoS 1 message in
 * flight at a time, each preceded by a REGISTER when the leaf has no topic
 * id for it yet; retransmission is driven by the session's timer
 * (session.c).  A broker QoS 1 message is acknowledged upstream only once
 * the leaf acknowledged it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lan_int.h"
#include "log.h"

#define MOD "session"

static uint16_t next_msg_id(struct session *s)
{
  if (++s->next_msg_id == 0)
    s->next_msg_id = 1;
  return s->next_msg_id;
}

/* Drops every message queued for the leaf; QoS 1 ones are acknowledged
 * upstream when ack_upstream (the session goes on), so the broker does not
 * hold its in-flight window for them. */
void sess_clear_queue(struct session *s, bool ack_upstream)
{
  uint32_t n = 0;
  while (s->q_head) {
    struct downmsg *d = s->q_head;
    s->q_head = d->next;
    if (ack_upstream && d->up_pid && s->link)
      SESS_UP(s)->puback(SESS_UP_CTX(s), s->link, d->up_pid);
    free(d);
    n++;
  }
  s->q_tail = NULL;
  s->q_len = 0;
  s->inflight = INF_NONE;
  if (n) {
    s->lv->m->queue_discarded += n;
    LOGW(MOD, "%s: %u queued message(s) for the leaf discarded", s->client_id, n);
  }
}

/* Appends a message to the leaf's queue (up_pid: the upstream packet id to
 * acknowledge once the leaf has it, 0 for none).  false: out of memory. */
static bool enqueue(struct session *s, const char *topic, size_t topic_len,
                    const uint8_t *payload, size_t len, int qos, bool retain, uint16_t up_pid)
{
  struct downmsg *d = malloc(sizeof *d + topic_len + 1 + len);
  if (!d)
    return false;
  d->next = NULL;
  d->up_pid = up_pid;
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
  /* A sleeping leaf's queue is kept in the registry. */
  if (s->state != SESS_ACTIVE)
    sess_persist_mark(s);
  return true;
}

void sess_restore_down(struct session *s, const char *topic, size_t topic_len,
                       const uint8_t *payload, size_t len, int qos, bool retain)
{
  /* The upstream that delivered it is gone: nothing to acknowledge. */
  if (s->q_len < s->lv->cfg->lan.queue_max && topic_len <= 0xFFFF)
    (void)enqueue(s, topic, topic_len, payload, len, qos, retain, 0);
}

void sess_up_message(struct session *s, const char *topic, size_t topic_len,
                     const uint8_t *payload, size_t len, int qos, bool retain, uint16_t packet_id)
{
  struct leaves *lv = s->lv;

  if (s->q_len >= lv->cfg->lan.queue_max || topic_len > 0xFFFF) {
    static struct log_ratelimit rl;
    lv->m->queue_dropped++;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: queue full (%u), message on %.*s dropped",
                    s->client_id, s->q_len, (int)(topic_len > 64 ? 64 : topic_len), topic);
    if (qos > 0)
      SESS_UP(s)->puback(SESS_UP_CTX(s), s->link, packet_id);
    return;
  }
  /* QoS 2 from the broker is completed by the upstream itself; only QoS 1
   * waits for the leaf's acknowledgement. */
  if (!enqueue(s, topic, topic_len, payload, len, qos, retain, qos == 1 ? packet_id : 0)) {
    lv->m->queue_dropped++;
    if (qos > 0)
      SESS_UP(s)->puback(SESS_UP_CTX(s), s->link, packet_id);
    return;
  }
  sess_pump(s);
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
    SESS_UP(s)->puback(SESS_UP_CTX(s), s->link, d->up_pid);
  free(d);
  if (s->state != SESS_ACTIVE)
    sess_persist_mark(s);
}

void sess_go_asleep(struct session *s)
{
  sess_set_state(s, SESS_ASLEEP);
  s->sleep_deadline = uv_now(s->lv->loop) + sess_tolerance_ms(s->keepalive);
  sess_arm(s);
}

void sess_on_regack(struct session *s, const struct mqttsn_regack *r)
{
  struct topic_entry *e;

  if (s->inflight != INF_REGACK || r->msg_id != s->inf_msg_id)
    return;
  e = topics_by_id(&s->topics, s->inf_topic_id);
  s->inflight = INF_NONE;
  if (r->rc == MQTTSN_RC_ACCEPTED && e) {
    e->known_by_leaf = true;
  } else {
    /* §6.10: a rejected REGISTER means the leaf does not want this topic. */
    finish_inflight(s);
    s->lv->m->queue_dropped++;
  }
  sess_pump(s);
}

void sess_on_puback(struct session *s, const struct mqttsn_puback *p)
{
  if (s->inflight != INF_PUBACK || p->msg_id != s->inf_msg_id)
    return;
  if (p->rc == MQTTSN_RC_INVALID_TOPIC_ID) {
    /* The leaf forgot the id (it rebooted?): register it again. */
    struct topic_entry *e = topics_by_id(&s->topics, p->topic_id);
    if (e)
      e->known_by_leaf = false;
    s->inflight = INF_NONE;
  } else {
    if (p->rc != MQTTSN_RC_ACCEPTED)
      s->lv->m->queue_dropped++;
    finish_inflight(s);
  }
  sess_pump(s);
}

/* ---- downlink ----------------------------------------------------------- */

void sess_send_inflight(struct session *s, bool dup)
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
    } else if (topics_predefined_id(s->lv->cfg, d->data, d->topic_len) >= 0 &&
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
  sess_send(s, &m);
}

/* Sends what it can from the head of the queue: QoS 0 messages go out at
 * once, a QoS 1 message or a REGISTER waits for its acknowledgement. */
void sess_pump(struct session *s)
{
  struct leaves *lv = s->lv;
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
      lv->m->queue_dropped++;
      finish_inflight(s);
      continue;
    }
    if (!e && d->topic_len == 2) {
      s->inf_topic_id = (uint16_t)(((uint8_t)d->data[0] << 8) | (uint8_t)d->data[1]);
    } else if (!e && (pre = topics_predefined_id(lv->cfg, d->data, d->topic_len)) >= 0) {
      s->inf_topic_id = (uint16_t)pre;
    } else {
      if (!e)
        e = topics_add(&s->topics, d->data, d->topic_len);
      if (!e) {
        lv->m->queue_dropped++;
        finish_inflight(s);
        continue;
      }
      s->inf_topic_id = e->id;
      if (!e->known_by_leaf) {
        s->inflight = INF_REGACK;
        s->inf_msg_id = next_msg_id(s);
        s->inf_tries = 0;
        s->inf_deadline = uv_now(lv->loop) + lv->cfg->lan.t_retry_ms;
        sess_send_inflight(s, false);
        sess_arm(s);
        return;
      }
    }
    if (d->qos == 0) {
      s->inflight = INF_PUBACK; /* for send_inflight's sake */
      sess_send_inflight(s, false);
      lv->m->publish_out_qos0++;
      s->msgs_out++;
      sess_rate_count(&s->rate_out, uv_now(lv->loop));
      finish_inflight(s);
      continue;
    }
    s->inflight = INF_PUBACK;
    s->inf_msg_id = next_msg_id(s);
    s->inf_tries = 0;
    s->inf_deadline = uv_now(lv->loop) + lv->cfg->lan.t_retry_ms;
    lv->m->publish_out_qos1++;
    s->msgs_out++;
    sess_rate_count(&s->rate_out, uv_now(lv->loop));
    sess_send_inflight(s, false);
    sess_arm(s);
    return;
  }
  if (s->inflight == INF_NONE && s->state == SESS_AWAKE) {
    /* §6.14: the buffered messages are out; PINGRESP ends the awake time. */
    sess_reply(s, MQTTSN_PINGRESP);
    sess_go_asleep(s);
  }
}
