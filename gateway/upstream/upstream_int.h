/*
 * upstream_int.h - what the two halves of an upstream share, and nothing
 * outside gateway/upstream/ includes: upstream.c is the MQTT client (state
 * machine, outgoing queue, incoming packets, public API), upstream_conn.c
 * the wire of one connection attempt (TCP, DNS, TLS pump, writes, reads).
 * upstream.c calls the wire's uconn_* functions; the wire reports back
 * through struct uconn_owner, so calls run one way.
 */
#ifndef FLEETGW_UPSTREAM_INT_H
#define FLEETGW_UPSTREAM_INT_H

#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "backoff.h"
#include "idset.h"
#include "mqtt.h"
#include "mqtt_stream.h"
#include "pacer.h"
#include "upstream.h"

enum ustate {
  U_IDLE = 0,
  U_RESOLVING = 1,
  U_CONNECTING = 2,     /* TCP connect in progress (possibly the next address) */
  U_HANDSHAKE = 3,      /* TLS handshake in progress */
  U_WAIT_CONNACK = 4,   /* CONNECT sent */
  U_UP = 5,
  U_BACKOFF = 6,        /* waiting for the timer before the next attempt */
  U_CLOSING = 7,        /* upstream_stop() called; terminal */
};

extern const char *const uconn_state_names[];

/* One connection attempt: the TCP handle and everything tied to it. */
struct conn {
  uv_tcp_t tcp;                /* tcp.data == this conn */
  union {                      /* never both in flight: a shutdown is only of an UP conn */
    uv_connect_t creq;
    uv_shutdown_t sreq;
  };
  struct upstream *u;
  struct tls_conn *tls;        /* NULL for plain TCP */
  struct mqtt_stream stream;
  bool closing;                /* uv_close called */
  enum upstream_reason why;    /* reported by lost() once closed */
  int connack_rc;
};

/* One outgoing PUBLISH. */
struct omsg {
  struct omsg *next;
  void *token;
  uint16_t packet_id;          /* QoS 1 only, allocated at enqueue */
  uint8_t qos;
  bool retain;
  bool sent;                   /* written on the current connection */
  bool ever_sent;              /* a resend carries DUP=1 */
  uint8_t strikes;             /* connections the broker closed right after it */
  uint64_t sent_at;            /* loop ms of its last write */
  uint16_t topic_len;
  size_t len;
  uint8_t data[];              /* topic, then payload */
};

struct upstream {
  uv_loop_t *loop;
  enum ustate state;
  struct upstream_cbs cbs;
  void *ud;
  struct upstream_opts o;      /* strings are our own copies */
  uint8_t *will_payload;
  char port_str[8];

  uv_timer_t timer;            /* one timer, its meaning depends on state */
  bool timer_closing;
  uv_getaddrinfo_t *gai;       /* while a DNS request is outstanding, else NULL */
  struct addrinfo *ai;         /* results being tried */
  struct addrinfo *ai_cur;
  struct conn *conn;           /* the current attempt, NULL if none */
  unsigned nconns;             /* conns not yet through their close callback */

  struct backoff bo;
  uint64_t deadline;           /* end of the current attempt (loop ms) */
  uint64_t attempt_started;    /* start of the current or last attempt (loop ms) */
  uint64_t last_tx;
  uint64_t ping_sent;
  bool ping_outstanding;

  struct omsg *qhead, *qtail;
  size_t nqueued;
  uint16_t last_id;
  struct idset subs;           /* SUBSCRIBE/UNSUBSCRIBE awaiting their ack */
  struct idset in_qos1;        /* incoming QoS 1 not yet acked by the owner */
  struct idset in_qos2;        /* incoming QoS 2 delivered, awaiting PUBREL */

  struct pacer_slot slot;      /* this upstream's place with the connect pacer */
  const struct uconn_owner *own; /* the client's hooks for the wire */
  uint64_t up_since;           /* loop ms of the last CONNACK */
  bool kicked;                 /* upstream_kick used in this back-off */
  bool switching;              /* upstream_switch_identity: reconnect at once */
};

/* A write in flight; data lives until write_cb. */
struct wreq {
  uv_write_t req;
  bool wipe;                   /* holds a password: cleared before free */
  size_t len;
  uint8_t data[];
};

#define MIN_MAX_PACKET 16u
/* Ciphertext is fed to OpenSSL in slices so that its input BIO never grows
 * beyond this (BUF_MEM keeps its high-water mark). */
#define TLS_FEED_CHUNK 4096u
/* Stop taking messages off the queue while libuv holds this much unsent. */
#define WRITE_HIGH_WATER (64u * 1024u)
/* Packets up to this size are encoded on the stack and sent from there. */
#define SMALL_PACKET 512
/* How long a graceful stop waits for DISCONNECT to be flushed. */
#define GRACEFUL_FLUSH_MS 2000u

/* AWS IoT accepts one CONNECT per second per client id
 * (docs/protocol-notes.md §4.6): attempts of one upstream start at least this far
 * apart. */
#define MIN_CONNECT_INTERVAL_MS 1000
/* A connection that stayed up this long was healthy: the back-off starts
 * again from its base.  A broker that closes each connection sooner (AWS IoT
 * refusing a publish, a policy that denies the CONNECT's follow-up) meets a
 * growing back-off instead of a reconnect every second. */
#define STABLE_UP_MS 10000
/* The broker closing the connection within this long of a QoS 1 PUBLISH
 * that it did not acknowledge counts as a refusal of that message. */
#define REFUSAL_WINDOW_MS 2000

/* What the wire reports to the MQTT client above it (upstream.c fills it
 * in): the wire calls upwards only through these, so the two files do not
 * call each other in a circle. */
struct uconn_owner {
  /* The attempt failed or the connection was lost: schedule a retry, tell
   * the owner. */
  void (*lost)(struct upstream *u, enum upstream_reason why, int connack_rc);
  /* In CLOSING: frees the upstream once its last handle is closed. */
  void (*closing_progress)(struct upstream *u);
  /* libuv's write queue drained: write what is queued. */
  void (*writable)(struct upstream *u);
  /* One complete MQTT packet from the broker. */
  void (*packet)(struct upstream *u, struct conn *c, const uint8_t *pkt, size_t len);
  /* The upstream's one timer fired. */
  void (*timer)(uv_timer_t *t);
};

/* upstream_conn.c: the wire, and the state both halves read */
void uconn_set_state(struct upstream *u, enum ustate s);
/* (Re)arms the upstream's timer for loop time at. */
void uconn_arm_timer_at(struct upstream *u, uint64_t at);
/* The connection c is the current one, open, and the upstream not stopping. */
bool uconn_alive(const struct upstream *u, const struct conn *c);
/* MQTT is up on the current connection. */
bool uconn_up(const struct upstream *u);
/* The reason to report when the peer goes away in the current state. */
enum upstream_reason uconn_eof_reason(const struct upstream *u);
/* The close callback of a connection's TCP handle. */
void uconn_close_cb(uv_handle_t *h);
void uconn_free_addrinfo(struct upstream *u);

/* Closes c; if it is still the current connection its close callback
 * reports why through the owner's lost().  Idempotent. */
void uconn_abort(struct conn *c, enum upstream_reason why, int connack_rc);
/* Closes a connection that is no longer current (nothing to report). */
void uconn_discard(struct upstream *u, struct conn *c);
/* Sends one encoded MQTT packet (plaintext in w); takes ownership of w. */
int uconn_send(struct upstream *u, struct conn *c, struct wreq *w);
/* Sends an encoded MQTT packet from the caller's buffer, which may be
 * reused at once: over TLS it is encrypted straight from it; over TCP it
 * is written directly when nothing is queued, and only what the socket did
 * not take is copied into a request.  No allocation in the common case. */
int uconn_send_bytes(struct upstream *u, struct conn *c, const uint8_t *data, size_t len);
/* A write request of len bytes, and its release (wiped when it held a
 * password). */
struct wreq *uconn_wreq_new(size_t len);
void uconn_wreq_free(struct wreq *w);
/* A fixed-size packet: PUBACK/PUBREC/PUBREL/PUBCOMP when id != 0, else
 * PINGREQ/DISCONNECT. */
int uconn_send_small(struct upstream *u, struct conn *c, enum mqtt_type type, uint16_t id);
/* The same; the connection is dropped if it fails. */
void uconn_send_small_or_abort(struct upstream *u, struct conn *c, enum mqtt_type type,
                               uint16_t id);
/* Moves all pending TLS output to the socket. */
int uconn_flush_tls(struct conn *c);
/* Starts one attempt: DNS, TCP, TLS, then CONNECT. */
void uconn_start_attempt(struct upstream *u);

#endif
