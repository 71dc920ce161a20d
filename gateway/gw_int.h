/*
 * gw_int.h - gateway internals shared by gw.c (the process: dispatch, start,
 * shutdown), session.c (one leaf's MQTT-SN state machine and its relay to its
 * upstream session) and leaves.c (what sessions share: tables, sending).
 * Dependencies run gw.c -> session.c -> leaves.c.  Nothing else includes it.
 */
#ifndef FLEETGW_GW_INT_H
#define FLEETGW_GW_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "api/gw_api.h"
#include "config.h"
#include "metrics.h"
#include "mqttsn.h"
#include "topics.h"

struct upstream;
struct upstream_opts;
struct pacer;
struct store;
struct provisioner;
struct tls_identity;
struct tls_ctx;
struct lan;

/*
 * A leaf session's states (MQTT-SN §6.14 plus the gateway's own waits):
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
 * given to upstream_publish(); it is freed in on_puback or on_dropped, which
 * the upstream calls exactly once per QoS 1 message. */
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
  uint16_t len;
  char filter[];
};

/* The glue between a session and one upstream instance.  The upstream's
 * callbacks get the link; when a session lets go of its upstream (the
 * upstream closes asynchronously) link->s becomes NULL, and the link is freed
 * in on_closed.  So a callback never touches a freed session. */
struct uplink {
  struct session *s;
  struct gw *gw;
  struct upstream *u;
};

enum inflight { INF_NONE = 0, INF_REGACK, INF_PUBACK };

struct session {
  struct gw *gw;
  struct session *next_by_id;   /* hash chains */
  struct session *next_by_addr;
  bool in_addr_table;

  char client_id[256];
  uint8_t id_len;
  struct sockaddr_storage addr;
  enum sess_state state;
  bool clean;
  uint16_t keepalive;           /* leaf keep-alive, s */
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

  struct uplink *link;          /* NULL when no upstream */
  bool up_is_up;
  bool up_was_up;               /* it came up at least once (resubscribe on later ups) */

  struct topics topics;
  struct sub *subs;
  struct pending_sub *psubs;

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
  uint64_t timer_due;           /* 0 when not armed */
  uint64_t msgs_in;             /* publishes from the leaf */
  uint64_t msgs_out;            /* publishes to the leaf */
};

/* An event subscriber (gw_api.h).  Removed lazily: a subscriber may
 * unsubscribe from inside its own callback. */
struct api_sub {
  struct api_sub *next;
  api_event_cb cb;
  void *ud;
  bool dead;
};

struct gw {
  uv_loop_t *loop;
  uint64_t started_ms;          /* uv_now at gw_new, for the uptime */
  struct api_sub *subs;         /* event subscribers */
  unsigned emitting;            /* nesting depth of leaves_event() */
  uint64_t http_counts[6];      /* HTTP responses by class: 1xx..5xx (index 1..5) */
  const struct gw_config *cfg;
  struct lan *lan;
  struct tls_ctx *tls;
  struct store *store;
  struct provisioner *prov;
  struct pacer *pacer;
  struct metrics m;

  struct session **by_id;
  struct session **by_addr;
  size_t nbuckets;              /* power of two, shared by both tables */
  size_t nsessions;

  struct uplink *qm1;           /* gateway-level session for QoS -1, or NULL */
  uv_timer_t adv_timer;
  bool adv_started;
  bool stopping;
  unsigned pending_closes;
  void (*stop_done)(void *);
  void *stop_ud;

  uint8_t tx[65540];            /* encode buffer for datagrams */
};

/* leaves.c: tables, sending, shared lookups (below session.c and gw.c) */
uint64_t leaves_hash_id(const char *id, size_t len);
uint64_t leaves_hash_addr(const struct sockaddr *a);
bool leaves_addr_eq(const struct sockaddr *a, const struct sockaddr *b);
void leaves_addr_str(const struct sockaddr *a, char *out, size_t cap);
/* Doubles both tables; -1 when out of memory. */
int leaves_grow(struct gw *gw);
struct session *leaves_by_id(struct gw *gw, const char *id, size_t len);
struct session *leaves_by_addr(struct gw *gw, const struct sockaddr *addr);
void leaves_bind_addr(struct gw *gw, struct session *s, const struct sockaddr *addr);
void leaves_unbind_addr(struct gw *gw, struct session *s);
int leaves_send(struct gw *gw, const struct sockaddr *to, const struct mqttsn_msg *msg);
const char *leaves_predefined_topic(const struct gw *gw, uint16_t id);
int leaves_predefined_id(const struct gw *gw, const char *topic, size_t len);
/* One asynchronous close finished (upstream, timer, socket); the last one
 * during gw_stop() runs the stop callback. */
void leaves_close_done(struct gw *gw);
/* Publishes an event {"type", "at", "client_id" (when not NULL), key: value
 * (when key is not NULL)} to every subscriber (gw_api.h). */
void leaves_event(struct gw *gw, const char *type, const char *client_id, const char *key,
                  const char *value);
/* The same with a second key and value. */
void leaves_event2(struct gw *gw, const char *type, const char *client_id, const char *key,
                   const char *value, const char *key2, const char *value2);
/* Upstream options for a client id, shared by leaf and QoS -1 sessions. */
void leaves_upstream_opts(struct gw *gw, struct upstream_opts *o, const char *client_id,
                          const char *cert, const char *key);

/* session.c */
struct session *sess_new(struct gw *gw, const char *id, size_t len);
/* Frees the session once its timer is closed; it must already be out of the
 * tables and detached from its upstream. */
void sess_free(struct session *s);
void sess_on_message(struct session *s, const struct sockaddr *from, const struct mqttsn_msg *m);
void sess_on_connect(struct session *s, const struct sockaddr *from, const struct mqttsn_msg *m);
void sess_on_wake(struct session *s, const struct sockaddr *from);
/* The device's provisioning run ended (ok: it has its certificate now). */
void sess_on_provisioned(struct session *s, bool ok);
/* Ends the session: DISCONNECT to the leaf when notify, graceful upstream
 * stop (no will). */
void sess_shutdown(struct session *s, bool notify);
bool sess_is_live(const struct session *s);
const char *sess_state_name(enum sess_state st);
/* The state as the API shows it: "connecting" for the waits. */
const char *sess_public_state(enum sess_state st);
void sess_count(const struct session *s, struct metrics *m);
/* Operator actions: ends the leaf's session now (DISCONNECT, so it connects
 * again and meets the registry's new state). */
void sess_kick(struct session *s);
/* Calls cb for each of the leaf's subscriptions. */
typedef int (*sess_sub_cb)(void *ud, const char *filter, int qos);
void sess_each_sub(const struct session *s, sess_sub_cb cb, void *ud);


#endif
