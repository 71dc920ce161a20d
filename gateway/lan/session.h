/*
 * session.h - one leaf's session as the rest of the gateway sees it: what
 * the API may read of it, the operator's actions on it, and the interface
 * to its upstream.
 *
 * The session knows no TLS and no MQTT client.  It asks for its upstream
 * through struct sess_uplink_ops (the relay implements it; unit tests use a
 * fake), and the relay reports back through the sess_up_*() functions below.
 *
 *   session --ops->open/publish/subscribe/puback/close--> relay --> upstream
 *   session <--sess_up_up/down/message/acked/suback/...-- relay <-- upstream
 *
 * A link (struct sess_link, the relay's) belongs to one session until the
 * session lets go of it with ops->close.  Afterwards the relay may still
 * report acknowledgements and drops of the session's publishes: it then
 * passes NULL as the session, and the sess_up_*() functions free the tokens.
 */
#ifndef FLEETGW_SESSION_H
#define FLEETGW_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct session;
struct sess_link;

/* What a session asks its upstream to be. */
struct sess_open {
  const char *client_id;       /* the leaf's ClientId */
  bool clean;                  /* the leaf's CleanSession */
  const char *will_topic;      /* NULL: no will */
  const uint8_t *will_msg;
  size_t will_msg_len;
  int will_qos;                /* 0 or 1 */
  bool will_retain;
};

enum sess_open_result {
  SESS_OPEN_OK = 0,            /* *link is set; sess_up_up() follows when it is up */
  SESS_OPEN_PENDING = 1,       /* the identity is being provisioned: wait for
                                  sess_on_provisioned(), then open again */
  SESS_OPEN_REFUSED = 2,       /* the identity may not connect (reason says why) */
  SESS_OPEN_ERROR = 3,         /* out of resources: try again later */
  SESS_OPEN_READY = 4,         /* as OK, and the leaf may be accepted now: its
                                  publishes are stored until the upstream is up
                                  (the outbox), so CONNACK need not wait */
};

/* Errors of publish/subscribe/unsubscribe. */
enum { SESS_UP_OK = 0, SESS_UP_FULL = -1, SESS_UP_ERROR = -2 };

struct sess_uplink_ops {
  /* Creates and starts the upstream of session s.  Returns an enum
   * sess_open_result; reason (cap bytes) says why for PENDING/REFUSED. */
  int (*open)(void *ctx, struct session *s, const struct sess_open *o, struct sess_link **link,
              char *reason, size_t cap);
  /* Lets go of the link: graceful sends DISCONNECT (the broker drops the
   * will), otherwise the connection is closed abruptly (the broker publishes
   * the will).  The link closes asynchronously; no sess_up_*() call names
   * the session afterwards. */
  void (*close)(void *ctx, struct sess_link *l, bool graceful);
  /* Queues a publish (QoS 0 or 1).  token comes back in sess_up_acked() or
   * sess_up_dropped() for QoS 1; it must be NULL for QoS 0. */
  int (*publish)(void *ctx, struct sess_link *l, const char *topic, size_t topic_len,
                 const uint8_t *payload, size_t len, int qos, bool retain, void *token);
  /* SUBSCRIBE/UNSUBSCRIBE one filter; *pid matches sess_up_suback/unsuback.
   * SESS_UP_FULL while the upstream is not up. */
  int (*subscribe)(void *ctx, struct sess_link *l, const char *filter, size_t len, int qos,
                   uint16_t *pid);
  int (*unsubscribe)(void *ctx, struct sess_link *l, const char *filter, size_t len,
                     uint16_t *pid);
  /* The leaf is waiting for its upstream (a CONNECT): retry now if it is
   * backing off (upstream_kick). */
  void (*kick)(void *ctx, struct sess_link *l);
  /* The leaf has the broker's QoS 1 message pid: acknowledge it upstream. */
  void (*puback)(void *ctx, struct sess_link *l, uint16_t pid);
  /* A QoS -1 publish, through the gateway-level session (no leaf session).
   * SESS_UP_ERROR when there is none. */
  int (*publish_anon)(void *ctx, const char *topic, size_t topic_len, const uint8_t *payload,
                      size_t len, bool retain);
};

/* ---- reports from the upstream (called by the relay) ---- */

/* The upstream is up (CONNACK accepted). */
void sess_up_up(struct session *s, bool session_present);
/* The upstream went down and will retry; identity_refused when the broker
 * refused the identity itself (it will keep refusing it). */
void sess_up_down(struct session *s, bool identity_refused);
/* A message from the broker for the leaf; for QoS 1 the session later calls
 * ops->puback(pid) once the leaf has it.  The view is valid during the call. */
void sess_up_message(struct session *s, const char *topic, size_t topic_len,
                     const uint8_t *payload, size_t len, int qos, bool retain, uint16_t pid);
/* The broker acknowledged the publish token, or with the outbox: it is on
 * disk (s may be NULL: see above). */
void sess_up_acked(struct session *s, void *token);
/* Sends the leaves' answers batched so far (the LAN sends its datagrams in
 * one system call at the end of the loop turn): for a caller that has just
 * answered many leaves and goes on with slower work in the same turn. */
void sess_up_flush(void);
/* The broker refused the publish token (it closed the connection after it,
 * again and again): the leaf gets PUBACK "not supported" and its later
 * messages go on (s may be NULL). */
void sess_up_refused(struct session *s, void *token);
/* The publish token was discarded unacknowledged (s may be NULL). */
void sess_up_dropped(struct session *s, void *token);
/* The publish token could not be taken after all (the outbox's commit
 * failed): the leaf gets "congestion" and sends it again (s may be NULL). */
void sess_up_not_taken(struct session *s, void *token);
void sess_up_suback(struct session *s, uint16_t pid, const uint8_t *codes, size_t n);
void sess_up_unsuback(struct session *s, uint16_t pid);
/* The link l closed; the session (if it still names l) forgets it. */
void sess_up_closed(struct session *s, struct sess_link *l);

/* ---- what the API reads, and the operator's actions ---- */

struct sess_info {
  const char *state;           /* as the API shows it ("connecting" for the waits) */
  bool has_address;
  char address[80];            /* "ip:port" */
  uint64_t msgs_in, msgs_out;
  uint64_t msgs_refused;       /* publishes the broker refused (dropped) */
  uint32_t queued;             /* downlink messages waiting for the leaf */
  double rate_in, rate_out;    /* publishes per second over the last minute */
  bool has_last_pub;
  uint64_t last_pub_age_ms;    /* since the leaf's last publish */
  uint16_t keepalive_s;        /* the keep-alive (or sleep duration) in force */
  uint32_t reconnects;         /* CONNECTs after the first (wake-ups not counted) */
  bool has_upstream;
  bool upstream_up;
};
void sess_get_info(const struct session *s, struct sess_info *out);
/* Ends the leaf's session now (DISCONNECT, so it connects again and meets
 * the registry's new state). */
void sess_kick(struct session *s);
/* Calls cb for each of the leaf's subscriptions until it returns non-zero. */
typedef int (*sess_sub_cb)(void *ud, const char *filter, int qos);
void sess_each_sub(const struct session *s, sess_sub_cb cb, void *ud);

#endif
