/*
 * reply.c - sending to leaves: one MQTT-SN message encoded into the LAN
 * side's one transmit buffer and handed to the UDP socket, the one reply
 * helper for messages of a type alone, a CONNACK or a MsgId, and the events
 * for the operators' stream.
 */
#include <string.h>

#include "dtls.h"
#include "lan_int.h"
#include "log.h"
#include "udp.h"

#define MOD "lan"

void sess_up_flush(void)
{
  udp_flush_all();
}

int leaves_send(struct leaves *lv, const struct sockaddr *to, uint8_t via,
                const struct mqttsn_msg *msg)
{
  int rc;
  int n = mqttsn_encode(msg, lv->tx, sizeof lv->tx);
  if (n < 0) {
    /* §6.10: what does not fit is dropped. */
    static struct log_ratelimit rl;
    lv->m->send_errors++;
    log_ratelimited(&rl, LOG_WARN, MOD, "cannot encode %s: %s", mqttsn_type_name(msg->type),
                    proto_strerror(n));
    return n;
  }
  /* Over DTLS one message is one record; one that does not fit the
   * record MTU is dropped (counted by the DTLS server, docs/dtls.md §5). */
  rc = via == LAN_DTLS ? (lv->dtls ? dtls_send(lv->dtls, to, lv->tx, (size_t)n) : UV_ENOTCONN)
                       : udp_send(lv->udp, to, lv->tx, (size_t)n);
  if (rc != 0) {
    lv->m->send_errors++;
    return -1;
  }
  lv->m->datagrams_out++;
  return 0;
}

int leaves_reply(struct leaves *lv, const struct sockaddr *to, uint8_t via, enum mqttsn_type t)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = t;
  return leaves_send(lv, to, via, &m);
}

int leaves_reply_connack(struct leaves *lv, const struct sockaddr *to, uint8_t via, uint8_t rc)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_CONNACK;
  m.u.connack.rc = rc;
  return leaves_send(lv, to, via, &m);
}

int leaves_reply_msgid(struct leaves *lv, const struct sockaddr *to, uint8_t via,
                       enum mqttsn_type t, uint16_t msg_id)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = t;
  m.u.msgid.msg_id = msg_id;
  return leaves_send(lv, to, via, &m);
}

void leaves_event(struct leaves *lv, const char *type, const char *client_id, const char *key,
                  const char *value)
{
  leaves_event2(lv, type, client_id, key, value, NULL, NULL);
}

void leaves_event2(struct leaves *lv, const char *type, const char *client_id, const char *key,
                   const char *value, const char *key2, const char *value2)
{
  if (lv->env.event)
    lv->env.event(lv->env.event_ud, type, client_id, key, value, key2, value2);
}

/* ---- to one session's leaf ------------------------------------------------- */

void sess_send(struct session *s, const struct mqttsn_msg *m)
{
  leaves_send(s->lv, (const struct sockaddr *)&s->addr, s->via, m);
}

void sess_reply(struct session *s, enum mqttsn_type t)
{
  leaves_reply(s->lv, (const struct sockaddr *)&s->addr, s->via, t);
}

void sess_reply_msgid(struct session *s, enum mqttsn_type t, uint16_t msg_id)
{
  leaves_reply_msgid(s->lv, (const struct sockaddr *)&s->addr, s->via, t, msg_id);
}

void sess_reply_connack(struct session *s, uint8_t rc)
{
  leaves_reply_connack(s->lv, (const struct sockaddr *)&s->addr, s->via, rc);
}

void sess_send_puback(struct session *s, uint16_t topic_id, uint16_t msg_id, uint8_t rc)
{
  struct mqttsn_msg m;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_PUBACK;
  m.u.puback.topic_id = topic_id;
  m.u.puback.msg_id = msg_id;
  m.u.puback.rc = rc;
  sess_send(s, &m);
}
