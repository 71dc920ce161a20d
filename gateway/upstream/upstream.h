/*
 * upstream.h - one MQTT 3.1.1 client connection on the gateway's libuv loop.
 *
 * DNS through uv_getaddrinfo, TCP through uv_tcp_t, optional TLS through
 * tls.h (memory BIOs), then MQTT through protocol/mqtt.h and mqtt_stream.h.
 * It knows nothing about leaves: it reports to its owner through callbacks
 * given at creation.
 *
 * Lifecycle (roadmap of the state machine in upstream.c):
 *
 *   IDLE --start--> RESOLVING --> CONNECTING (tcp) --> HANDSHAKE (tls)
 *        --> MQTT_WAIT_CONNACK --> UP
 *   any failure before UP, or loss of UP  --> BACKOFF --timer--> RESOLVING
 *   upstream_stop()                        --> CLOSING --> (on_closed) freed
 *
 * Reconnects are automatic, with exponential back-off and jitter (backoff.h),
 * until upstream_stop().  The owner decides when to give up (for instance
 * after on_down has been reported for too long, or on a CONNACK refusal).
 *
 * Messages: QoS 0 and 1 only (AWS IoT has no QoS 2).  upstream_publish()
 * may be called in any state: the message is queued (bounded by
 * opts.max_queue; PROTO-style error UPSTREAM_EFULL when full) and sent when
 * the connection is UP.  A QoS 1 message stays queued until its PUBACK; after
 * a reconnect unacknowledged messages are sent again with DUP=1.  The owner
 * gets on_puback(token) exactly once per QoS 1 message that the broker
 * acknowledged, and for QoS 0 nothing.  On upstream_stop, messages never
 * acknowledged are reported through on_dropped(token) so nothing is lost
 * silently.
 *
 * Incoming PUBLISH: on_message() gets a view valid only during the call.  For
 * QoS 1 the owner must later call upstream_puback(u, packet_id) (the gateway
 * acknowledges upstream only when the leaf has the message).  Incoming QoS 2
 * is completed here (PUBREC/PUBREL/PUBCOMP) and delivered once.
 *
 * Keep-alive: the connection sends PINGREQ when it has sent nothing for
 * opts.keepalive seconds and closes the connection (then reconnects) if no
 * PINGRESP (or any packet) arrives within opts.keepalive/2 + 5 s after it.
 *
 * Memory: an upstream owns its buffers; it is freed only after on_closed.
 * Callbacks may call any upstream_* function on the same upstream, including
 * upstream_stop().
 */
#ifndef FLEETGW_UPSTREAM_H
#define FLEETGW_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct tls_ctx;
struct tls_identity;
struct upstream;
struct pacer;

enum upstream_err {
  UPSTREAM_OK = 0,
  UPSTREAM_EFULL = -1,     /* queue full: message not accepted */
  UPSTREAM_EINVAL = -2,    /* bad argument (QoS 2, oversize, ...) */
  UPSTREAM_ENOMEM = -3,
  UPSTREAM_ECLOSED = -4,   /* upstream_stop() was called */
};

/* Why a connection attempt failed or an established connection was lost. */
enum upstream_reason {
  UPSTREAM_R_DNS = 1,
  UPSTREAM_R_TCP,          /* connect refused / reset / EOF */
  UPSTREAM_R_TLS,          /* handshake or verification */
  UPSTREAM_R_CONNACK,      /* broker answered CONNACK with a refusal (see rc) */
  UPSTREAM_R_CLOSED_BEFORE_CONNACK, /* AWS's way of refusing auth/policy */
  UPSTREAM_R_TIMEOUT,      /* connect/handshake/CONNACK or keep-alive timeout */
  UPSTREAM_R_PROTOCOL,     /* malformed packet from the broker */
  UPSTREAM_R_SWITCH,       /* ended by upstream_switch_identity (not a failure) */
};

struct upstream_will {
  const char *topic;       /* NULL: no will */
  const uint8_t *payload;
  size_t payload_len;
  int qos;                 /* 0 or 1 */
  bool retain;
};

struct upstream_opts {
  const char *host;        /* DNS name or IP literal */
  uint16_t port;
  struct tls_ctx *tls;     /* NULL: plain TCP */
  const char *alpn;        /* NULL or e.g. "x-amzn-mqtt-ca" */
  const char *cert_file;   /* per-connection client cert (NULL: the ctx's) */
  const char *key_file;
  struct tls_identity *identity; /* in-memory client cert + key (overrides the
                                    files); the upstream takes a reference */
  const char *client_id;
  const char *username;    /* NULL: none */
  const char *password;    /* NULL: none; never logged */
  uint16_t keepalive;      /* seconds, > 0 */
  bool clean_session;
  struct upstream_will will;
  /* The limits below have no defaults here: the caller passes the
   * configuration's (config.h), so there is one default for each.  0 is
   * refused with UPSTREAM_EINVAL. */
  uint32_t connect_timeout_ms;   /* whole DNS..CONNACK budget per attempt */
  uint32_t backoff_base_ms;
  uint32_t backoff_cap_ms;       /* raised to backoff_base_ms when below it */
  uint32_t max_queue;      /* queued + in-flight outgoing messages */
  uint32_t max_packet;     /* largest incoming packet accepted, >= 16 */
  uint32_t max_refusals;   /* see on_refused; 0: never drop a message */
  struct pacer *pacer;     /* shared connect pacing (pacer.h), or NULL */
};
/* All strings in opts are copied by upstream_new(). */

struct upstream_cbs {
  /* The session is UP (CONNACK accepted). */
  void (*on_up)(void *ud, bool session_present);
  /* An attempt failed or an UP connection was lost; a retry is scheduled in
   * retry_ms.  connack_rc is the refusal code for UPSTREAM_R_CONNACK, else 0. */
  void (*on_down)(void *ud, enum upstream_reason why, int connack_rc, uint32_t retry_ms);
  void (*on_message)(void *ud, const char *topic, size_t topic_len, const uint8_t *payload,
                     size_t len, int qos, bool retain, uint16_t packet_id);
  void (*on_puback)(void *ud, void *token);
  void (*on_suback)(void *ud, uint16_t packet_id, const uint8_t *codes, size_t n);
  void (*on_unsuback)(void *ud, uint16_t packet_id);
  /* A queued message was discarded without acknowledgement (stop). */
  void (*on_dropped)(void *ud, void *token);
  /* After upstream_stop(): all handles closed, the upstream is freed. */
  void (*on_closed)(void *ud);
  /* The broker refused the QoS 1 message token: it closed the connection
   * right after it, without PUBACK, opts.max_refusals times in a row (the
   * MQTT 3.1.1 way, AWS IoT's answer to a publish its policy denies).  The
   * message is dropped so the ones behind it can go.  May be NULL
   * (on_dropped is called instead). */
  void (*on_refused)(void *ud, void *token);
};

int upstream_new(uv_loop_t *loop, const struct upstream_opts *opts,
                 const struct upstream_cbs *cbs, void *ud, struct upstream **out);
/* Begin connecting (and keep reconnecting). */
int upstream_start(struct upstream *u);
/* Stop: graceful=true sends DISCONNECT (the broker discards the will) and
 * flushes before closing; graceful=false closes the socket abruptly (the
 * broker publishes the will).  on_closed follows, asynchronously. */
void upstream_stop(struct upstream *u, bool graceful);

/* Queue a PUBLISH (qos 0 or 1).  token is returned in on_puback/on_dropped. */
int upstream_publish(struct upstream *u, const char *topic, size_t topic_len,
                     const uint8_t *payload, size_t len, int qos, bool retain, void *token);
/* SUBSCRIBE/UNSUBSCRIBE one filter.  Sent when UP; *packet_id_out matches the
 * later on_suback/on_unsuback.  Returns UPSTREAM_EFULL when the connection is
 * not UP (the owner re-subscribes in on_up when session_present is false). */
int upstream_subscribe(struct upstream *u, const char *filter, size_t len, int qos,
                       uint16_t *packet_id_out);
int upstream_unsubscribe(struct upstream *u, const char *filter, size_t len,
                         uint16_t *packet_id_out);
/* Someone is waiting for this upstream (a leaf connects): when it is
 * backing off, the next attempt starts now (at least a second after the
 * last, the cloud's per-client-id limit).  Once per back-off, so a leaf that
 * keeps asking cannot make it reconnect faster than every other attempt. */
void upstream_kick(struct upstream *u);
/* Acknowledge an incoming QoS 1 PUBLISH.  The upstream keeps the set of
 * incoming packet ids not yet acknowledged by the owner for the current
 * connection; the set is cleared when the connection is lost, and a puback
 * for an id not in the set is ignored (the broker will deliver it again). */
int upstream_puback(struct upstream *u, uint16_t packet_id);

/* Replaces the TLS client identity (a certificate rotation): the next
 * connection uses id (a reference is taken).  A connection that is up ends
 * gracefully (DISCONNECT: the broker drops the will, the leaf did not
 * die), an attempt in progress is abandoned, and the upstream connects
 * again at once, at least a second after its last attempt (the cloud's
 * limit per client id); on_down reports UPSTREAM_R_SWITCH.  Messages in
 * flight go again on the new connection as after any loss. */
int upstream_switch_identity(struct upstream *u, struct tls_identity *id);

bool upstream_is_up(const struct upstream *u);
/* Messages queued or in flight. */
size_t upstream_queued(const struct upstream *u);
const char *upstream_reason_str(enum upstream_reason why);

const char *upstream_client_id(const struct upstream *u);

#endif
