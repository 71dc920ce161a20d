/*
 * lan_int.h - what the files of gateway/lan/ share, and nothing outside it
 * includes: the session record, the LAN side's state, and the functions one
 * file of the room calls in another.
 *
 *   leaves.c     the LAN side: start/stop, datagram dispatch, discovery
 *   table.c      the session table (hash by ClientId and by address)
 *   reply.c      encoding and sending one MQTT-SN message to an address
 *   sess_state.c a session's state setter, deadlines and timer arming
 *   session.c    one leaf's state machine: CONNECT, will, sleep, timers
 *   sess_up.c    the leaf's traffic towards its upstream: PUBLISH,
 *                SUBSCRIBE, the upstream's reports (sess_up_*) and its end
 *
 * The files call downwards only (leaves.c -> session.c -> sess_up.c ->
 * sess_down.c -> sess_state.c -> reply.c, table.c), so none of them is
 * part of a circle; the timer callback reaches session.c through the
 * session's on_timer pointer.
 *   sess_down.c  the downlink: broker messages queued for the leaf, one in
 *                flight, REGISTER first when the leaf has no id for a topic
 *   sess_store.c a session's state in the registry, written behind in
 *                batches and restored at start-up
 *   admission.c  who may connect (registry policy, identity binding)
 *   topics.c     per-leaf topic ids; the configured predefined topics
 *   udp.c        the UDP socket
 *   dtls.c       the DTLS server (dtls.h): its datagrams reach the same
 *                dispatch, marked with the identity they authenticated
 */
#ifndef FLEETGW_LAN_INT_H
#define FLEETGW_LAN_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "admission.h"
#include "config.h"
#include "drain.h"
#include "dtls.h"
#include "leaves.h"
#include "metrics.h"
#include "mqttsn.h"
#include "session.h"
#include "topics.h"

struct udp;

/* The two ways a leaf reaches the gateway.  A session's address is an
 * address on one of them: the same ip:port over plain UDP and over DTLS
 * are two different peers (two sockets of the gateway). */
enum lan_via { LAN_PLAIN = 0, LAN_DTLS = 1 };

/*
 * A leaf session's states (MQTT-SN v1.2 §6.14 plus the gateway's own waits;
 * docs/architecture.md §6):
 *
 *   DISCONNECTED --CONNECT(will)--> WAIT_WILLTOPIC --> WAIT_WILLMSG --+
 *   DISCONNECTED --CONNECT---------------------------------------------+--> WAIT_UPSTREAM
 *   WAIT_UPSTREAM --upstream up--> ACTIVE   (CONNACK accepted)
 *   WAIT_UPSTREAM --timeout------> DISCONNECTED (CONNACK congestion)
 *   ACTIVE --DISCONNECT(duration)--> ASLEEP --PINGREQ(ClientId)--> AWAKE
 *   AWAKE --queue drained, PINGRESP--> ASLEEP
 *   ACTIVE/ASLEEP --keep-alive or sleep timer--> LOST (will published)
 *   any --DISCONNECT--> DISCONNECTED
 *
 * All transitions go through sess_set_state(), which logs them at debug.
 */
enum sess_state {
  SESS_DISCONNECTED = 0, /* no connection; record kept for CleanSession=0 */
  SESS_WAIT_WILLTOPIC,   /* sent WILLTOPICREQ */
  SESS_WAIT_WILLMSG,     /* sent WILLMSGREQ */
  SESS_WAIT_UPSTREAM,    /* CONNECT complete, CONNACK waits for the upstream */
  SESS_ACTIVE,
  SESS_ASLEEP,
  SESS_AWAKE,            /* woke with PINGREQ(ClientId), draining its queue */
  SESS_LOST,             /* keep-alive or sleep timer expired; like DISCONNECTED */
};

/* A message from the broker waiting to go to the leaf. */
struct downmsg {
  struct downmsg *next;
  uint16_t up_pid;       /* upstream packet id to acknowledge (QoS 1), else 0 */
  uint8_t qos;
  bool retain;
  uint16_t topic_len;
  size_t len;
  char data[];           /* topic, NUL, payload */
};

/* A leaf's QoS 1/2 publish waiting for the upstream PUBACK.  It is the token
 * given to ops->publish; it is freed in sess_up_acked or sess_up_dropped,
 * which the relay calls exactly once per QoS 1 message. */
struct uppending {
  struct uppending *next;
  uint16_t msg_id;
  uint16_t topic_id;
  uint8_t topic_type;
  uint8_t qos;           /* the leaf's QoS: 1 or 2 */
  bool orphan;           /* the session let go of this upstream */
};

/* A leaf's subscription, kept to re-subscribe after an upstream reconnect. */
struct sub {
  struct sub *next;
  uint8_t qos;           /* as requested upstream: 0 or 1 */
  uint16_t len;
  char filter[];
};

/* A SUBSCRIBE/UNSUBSCRIBE waiting for the upstream SUBACK/UNSUBACK. */
struct pending_sub {
  struct pending_sub *next;
  uint16_t up_pid;
  uint16_t msg_id;       /* the leaf's; unused when internal */
  uint16_t topic_id;
  uint8_t qos;
  bool unsub;
  bool internal;         /* a re-subscription after reconnect: no leaf reply */
  bool deferred;         /* not sent yet: the upstream was not up (sess_send_deferred) */
  uint16_t len;
  char filter[];
};

enum inflight { INF_NONE = 0, INF_REGACK, INF_PUBACK };

/* A leaf's publishes over the last minute, for the API's rate: counts per
 * SESS_RATE_SLOT_MS in a fixed ring (no allocation, O(1) per message). */
#define SESS_RATE_SLOTS 6
#define SESS_RATE_SLOT_MS 10000u
struct sess_rate {
  uint64_t slot;                /* the slot (loop ms / SESS_RATE_SLOT_MS) last counted in */
  uint32_t n[SESS_RATE_SLOTS];
};
void sess_rate_count(struct sess_rate *r, uint64_t now_ms);
/* Messages per second over the last 50..60 s. */
double sess_rate_get(const struct sess_rate *r, uint64_t now_ms);

struct session {
  struct leaves *lv;
  struct session *next_by_id;   /* hash chains */
  struct session *next_by_addr;
  bool in_addr_table;

  uint8_t id_len;
  /* The leaf's address: IPv4 or IPv6 only (28 bytes, not a 128-byte
   * sockaddr_storage in each of thousands of sessions). */
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
  } addr;
  uint8_t via;                  /* enum lan_via of addr */
  uint8_t sec;                  /* enum admit_sec: how the leaf that CONNECTed proved it */
  enum sess_state state;
  bool clean;
  uint16_t keepalive;           /* leaf keep-alive, s: never 0 (lan.max_keepalive_s) */
  uint64_t last_rx;             /* loop ms of the last message from the leaf */
  uint64_t sleep_deadline;
  uint64_t connect_deadline;
  uint64_t up_down_since;       /* 0 while the upstream is up */
  bool wait_provision;          /* WAIT_UPSTREAM for provisioning, not the upstream */

  /* The will, as the leaf set it. */
  bool will_set;
  uint8_t will_qos;
  bool will_retain;
  char *will_topic;
  uint8_t *will_msg;
  size_t will_msg_len;
  bool will_dirty;              /* changed since the upstream CONNECT carried it */

  struct sess_link *link;       /* the relay's; NULL when no upstream */
  bool link_ready;              /* the link stores publishes (SESS_OPEN_READY):
                                   the leaf need not wait for the upstream */
  bool up_is_up;
  bool up_was_up;               /* it came up at least once (resubscribe on later ups) */

  struct topics topics;
  struct sub *subs;
  struct pending_sub *psubs;
  uint32_t n_subs;              /* subscriptions held (lan.max_subscriptions) */
  uint32_t sub_bytes;           /* their filters' bytes (lan.max_subscription_bytes) */

  /* Downlink: one message in flight to the leaf at a time. */
  struct downmsg *q_head, *q_tail;
  uint32_t q_len;
  enum inflight inflight;
  uint16_t inf_msg_id;
  uint16_t inf_topic_id;
  uint8_t inf_tries;
  uint64_t inf_deadline;
  uint16_t next_msg_id;

  /* Uplink. */
  struct uppending *upp;
  uint16_t qos2_ids[8];         /* QoS 2 msg ids relayed, waiting for PUBREL */
  uint8_t n_qos2;

  uv_timer_t timer;
  uv_timer_cb on_timer;         /* session.c's timer callback */
  uint64_t timer_due;           /* 0 when not armed */
  uint64_t msgs_in;             /* publishes from the leaf */
  uint64_t msgs_out;            /* publishes to the leaf */
  uint64_t msgs_refused;        /* publishes the broker refused */
  struct sess_rate rate_in;     /* of msgs_in, msgs_out */
  struct sess_rate rate_out;
  uint64_t last_pub_in;         /* loop ms of the leaf's last publish; 0 none */
  uint32_t connects;            /* CONNECTs (not wake-ups) since the record was made */

  bool dirty;                   /* to be written to the registry (sess_store.c) */
  bool restored;                /* restored at start-up, the leaf not heard since */
  struct session *next_dirty;
  char client_id[];             /* id_len bytes and a NUL, allocated with the session */
};

struct leaves {
  struct leaves_env env;
  uv_loop_t *loop;              /* env.loop, env.cfg, env.m, shortened */
  const struct gw_config *cfg;
  struct metrics *m;
  struct udp *udp;
  struct dtls *dtls;            /* NULL unless lan.dtls.enabled */
  struct dtls_opts dtls_opts;   /* what it was made with */

  struct session **by_id;
  struct session **by_addr;
  size_t nbuckets;              /* power of two, shared by both tables */
  size_t nsessions;

  struct newid newid;           /* rate limits of new identities */

  uv_timer_t adv_timer;
  bool adv_started;
  bool stopping;

  /* Sessions in the registry (sess_store.c). */
  struct session *dirty;        /* marked since the last write */
  uv_timer_t persist_timer;
  bool persist_armed, persist_on, persist_started;

  uint8_t tx[65540];            /* encode buffer for datagrams */
};

/* The uplink operations, for the session's upstream. */
#define SESS_UP(s) ((s)->lv->env.up)
#define SESS_UP_CTX(s) ((s)->lv->env.up_ctx)

/* leaves.c */
/* A new session record for id, evicting a record without a connection when
 * the table holds lan.max_leaves.  NULL when full or out of memory. */
struct session *leaves_add(struct leaves *lv, const char *id, size_t len);
/* Takes s out of both tables and frees it (asynchronously: its timer). */
void leaves_remove(struct leaves *lv, struct session *s);
/* ip (no port) is a listed protocol converter. */
bool leaves_is_converter(const struct leaves *lv, const char *ip);

/* table.c */
bool leaves_addr_eq(const struct sockaddr *a, const struct sockaddr *b);
/* s talks from addr over via. */
bool sess_at(const struct session *s, const struct sockaddr *addr, uint8_t via);
void leaves_addr_str(const struct sockaddr *a, char *out, size_t cap);
int leaves_table_init(struct leaves *lv);
void leaves_table_free(struct leaves *lv);
struct session *leaves_by_id(struct leaves *lv, const char *id, size_t len);
struct session *leaves_by_addr(struct leaves *lv, const struct sockaddr *addr, uint8_t via);
void leaves_bind_addr(struct leaves *lv, struct session *s, const struct sockaddr *addr,
                      uint8_t via);
void leaves_unbind_addr(struct leaves *lv, struct session *s);
/* Room for one more session (the tables grow); -1 when out of memory. */
int leaves_table_reserve(struct leaves *lv);
/* Puts s in the ClientId table (leaves_bind_addr adds its address). */
void leaves_table_insert(struct leaves *lv, struct session *s);
/* Takes s out of both tables; the caller frees it. */
void leaves_table_unlink(struct leaves *lv, struct session *s);

/* reply.c: to an address over via (enum lan_via). */
int leaves_send(struct leaves *lv, const struct sockaddr *to, uint8_t via,
                const struct mqttsn_msg *msg);
/* A message with no fields but its type (PINGRESP, DISCONNECT, WILLTOPICREQ...). */
int leaves_reply(struct leaves *lv, const struct sockaddr *to, uint8_t via, enum mqttsn_type t);
int leaves_reply_connack(struct leaves *lv, const struct sockaddr *to, uint8_t via, uint8_t rc);
/* A message whose only field is a MsgId (PUBREC, PUBREL, PUBCOMP, UNSUBACK). */
int leaves_reply_msgid(struct leaves *lv, const struct sockaddr *to, uint8_t via,
                       enum mqttsn_type t, uint16_t msg_id);
void leaves_event(struct leaves *lv, const char *type, const char *client_id, const char *key,
                  const char *value);
void leaves_event2(struct leaves *lv, const char *type, const char *client_id, const char *key,
                   const char *value, const char *key2, const char *value2);

/* session.c */
struct session *sess_new(struct leaves *lv, const char *id, size_t len);
/* Frees the session once its timer is closed; it must already be out of the
 * tables and detached from its upstream. */
void sess_free(struct session *s);
void sess_set_state(struct session *s, enum sess_state st);
const char *sess_state_name(enum sess_state st);
/* The state as the API shows it: "connecting" for the waits. */
const char *sess_public_state(enum sess_state st);
bool sess_is_live(const struct session *s);
void sess_count(const struct session *s, struct metrics *m);
void sess_arm(struct session *s);
/* MQTT-SN §7.2: a timer's tolerance above the indicated seconds. */
uint64_t sess_tolerance_ms(uint32_t seconds);
/* The keep-alive kept for a CONNECT's Duration (0 and too long capped). */
uint16_t sess_keepalive(struct leaves *lv, uint16_t duration);
void sess_send(struct session *s, const struct mqttsn_msg *m);
/* To the leaf: a message of only its type, or of a MsgId. */
void sess_reply(struct session *s, enum mqttsn_type t);
void sess_reply_msgid(struct session *s, enum mqttsn_type t, uint16_t msg_id);
void sess_reply_connack(struct session *s, uint8_t rc);
void sess_send_puback(struct session *s, uint16_t topic_id, uint16_t msg_id, uint8_t rc);
void sess_on_message(struct session *s, const struct sockaddr *from, const struct mqttsn_msg *m);
/* A CONNECT admitted from from over via (s->sec already says how it
 * authenticated). */
void sess_on_connect(struct session *s, const struct sockaddr *from, uint8_t via,
                     const struct mqttsn_msg *m);
void sess_on_wake(struct session *s, const struct sockaddr *from);
void sess_on_provisioned(struct session *s, bool ok);
/* Ends the session: DISCONNECT to the leaf when notify, graceful upstream
 * stop (no will). */
void sess_shutdown(struct session *s, bool notify);
/* Lets go of the upstream (see sess_up.c). */
void sess_end_upstream(struct session *s, bool graceful, bool publish_will);
/* The upstream is gone for good: the leaf is told. */
void sess_give_up(struct session *s, const char *why, uint8_t connack_rc);
void sess_connect_done(struct session *s);
/* The leaf's transport went away under it (its DTLS association closed):
 * a connected leaf is lost (its will published), a sleeping one keeps its
 * session and may wake through a new association. */
void sess_on_transport_closed(struct session *s, const char *why);

/* sess_up.c */
void sess_on_publish(struct session *s, const struct mqttsn_publish *p);
void sess_on_pubrel(struct session *s, uint16_t msg_id);
void sess_on_register(struct session *s, const struct mqttsn_register *r);
void sess_on_subscribe(struct session *s, const struct mqttsn_subscribe *sb, bool unsub);
void sess_resubscribe(struct session *s);
void sess_free_subs(struct session *s);
void sess_free_psubs(struct session *s);
/* The SUBSCRIBE/UNSUBSCRIBEs that waited for the upstream go now. */
void sess_send_deferred(struct session *s);
/* Orphans the leaf's publishes waiting for the broker (the link is going). */
void sess_orphan_pending(struct session *s);

/* sess_store.c */
/* s changed in a way the registry keeps: written within PERSIST_MS. */
void sess_persist_mark(struct session *s);
/* s is being freed: out of the batch, and (unless the gateway is stopping)
 * its stored state deleted. */
void sess_persist_forget(struct session *s);
/* At start-up: the stored sessions become records again, their upstreams
 * asked for.  Returns 0 or a negative libuv error (logged). */
int sess_persist_restore(struct leaves *lv);
/* Writes what is marked, then stops writing (before the shutdown). */
void sess_persist_stop(struct leaves *lv);
/* session.c, sess_up.c, sess_down.c: the parts of a restored session. */
void sess_restore_open(struct session *s);
void sess_restore_sub(struct session *s, const char *filter, size_t len, uint8_t qos);
void sess_restore_down(struct session *s, const char *topic, size_t topic_len,
                       const uint8_t *payload, size_t len, int qos, bool retain);

/* sess_down.c */
void sess_pump(struct session *s);
void sess_send_inflight(struct session *s, bool dup);
void sess_clear_queue(struct session *s, bool ack_upstream);
void sess_on_regack(struct session *s, const struct mqttsn_regack *r);
void sess_on_puback(struct session *s, const struct mqttsn_puback *p);
void sess_go_asleep(struct session *s);

#endif
