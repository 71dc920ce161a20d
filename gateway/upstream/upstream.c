/*
 * upstream.c - one MQTT 3.1.1 client connection on libuv (see upstream.h).
 *
 * Roadmap of the state machine (all transitions go through set_state):
 *
 *   IDLE --start--> BACKOFF(0 ms) --timer--> RESOLVING --gai_cb--> CONNECTING
 *     --connect_cb--> HANDSHAKE (TLS only) --handshake done--> WAIT_CONNACK
 *     --CONNACK 0--> UP
 *
 *   A failure before UP, or the loss of UP, closes the connection object
 *   (struct conn) with a reason; its close callback calls lost(), which
 *   reports on_down and arms the back-off timer.  upstream_stop() moves to
 *   CLOSING from any state; once the connection handles, the pending DNS
 *   request and the timer are all closed, finish() reports on_dropped for
 *   what was never acknowledged, frees the upstream and calls on_closed.
 *
 * Why a separate struct conn per attempt: libuv closes handles
 * asynchronously.  A fresh uv_tcp_t per attempt means a new attempt never
 * waits for the previous handle's close callback, and a callback of an old
 * handle recognises itself as stale (u->conn != c).
 *
 * Re-entrancy: owner callbacks may call any upstream_* function, including
 * upstream_stop().  Code that calls out re-checks conn_alive() afterwards,
 * and nothing is freed except in libuv close callbacks, which the loop runs
 * after our own frames have returned.
 *
 * Memory per connection: the receive buffers for ciphertext and plaintext
 * are shared per thread (libuv calls alloc_cb and read_cb back to back, and
 * every byte is consumed before read_cb returns).  What stays with a
 * connection is the SSL object, a small MQTT input buffer that grows only
 * for a large packet and shrinks afterwards, and the write requests in
 * flight.
 */
#include "upstream.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "log.h"
#include "mqtt.h"
#include "tls.h"
#include "topic.h"
#include "mqtt_stream.h"

#define MOD "upstream"

#define DEFAULT_CONNECT_TIMEOUT_MS 30000u
#define DEFAULT_BACKOFF_BASE_MS 1000u
#define DEFAULT_BACKOFF_CAP_MS 120000u
#define DEFAULT_MAX_QUEUE 1000u
#define DEFAULT_MAX_PACKET (256u * 1024u)
#define MIN_MAX_PACKET 16u
/* The MQTT input buffer kept between packets; larger packets get a buffer
 * of their exact size for as long as they take to arrive. */
#define INBUF_SMALL 512u
/* Ciphertext is fed to OpenSSL in slices so that its input BIO never grows
 * beyond this (BUF_MEM keeps its high-water mark). */
#define TLS_FEED_CHUNK 4096u
/* Stop taking messages off the queue while libuv holds this much unsent. */
#define WRITE_HIGH_WATER (64u * 1024u)
/* How long a graceful stop waits for DISCONNECT to be flushed. */
#define GRACEFUL_FLUSH_MS 2000u

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

static const char *const state_names[] = {"IDLE", "RESOLVING", "CONNECTING", "HANDSHAKE",
                                          "WAIT_CONNACK", "UP", "BACKOFF", "CLOSING"};

/* One connection attempt: the TCP handle and everything tied to it. */
struct conn {
  uv_tcp_t tcp;                /* tcp.data == this conn */
  uv_connect_t creq;
  uv_shutdown_t sreq;
  struct upstream *u;
  struct tls_conn *tls;        /* NULL for plain TCP */
  struct mqtt_stream stream;
  uint8_t *inbuf;              /* storage of stream */
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
  uint16_t topic_len;
  size_t len;
  uint8_t data[];              /* topic, then payload */
};

/* A small set of packet ids (few are ever pending at once). */
struct idset {
  uint16_t *v;
  uint32_t n, cap;
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
  uv_getaddrinfo_t gai;
  bool gai_active;             /* a DNS request is outstanding */
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

  struct upstream *pq_next;    /* in the pacer's wait queue */
  bool pq_waiting;
  bool holds_slot;             /* counted in the pacer's attempts in progress */
};

struct upstream_pacer {
  uv_loop_t *loop;
  uv_timer_t timer;
  uint32_t max_connecting;
  uint32_t rate_per_s;
  size_t connecting;
  size_t waiting;
  double tokens;
  uint64_t tokens_at;
  struct upstream *head, *tail;
  void (*done)(void *);
  void *done_ud;
};

/* A write in flight; data lives until write_cb. */
struct wreq {
  uv_write_t req;
  bool wipe;                   /* holds a password: cleared before free */
  size_t len;
  uint8_t data[];
};

/* Shared by all connections of a thread; see the comment at the top. */
static _Thread_local uint8_t g_rx[64 * 1024];
static _Thread_local uint8_t g_plain[16 * 1024];

#define MIN_CONNECT_INTERVAL_MS 1000

static void timer_cb(uv_timer_t *t);
static void start_attempt(struct upstream *u);
static void send_queue(struct upstream *u);
static void pace_release(struct upstream *u);
static void pace_start(struct upstream *u);

/* ---- small helpers ---- */

static void set_state(struct upstream *u, enum ustate s)
{
  if (u->state != s)
    LOGD(MOD, "%s: %s -> %s", u->o.client_id, state_names[u->state], state_names[s]);
  u->state = s;
}

static bool idset_has(const struct idset *s, uint16_t id)
{
  for (uint32_t i = 0; i < s->n; i++)
    if (s->v[i] == id)
      return true;
  return false;
}

static int idset_add(struct idset *s, uint16_t id)
{
  if (idset_has(s, id))
    return 0;
  if (s->n == s->cap) {
    uint32_t ncap = s->cap ? s->cap * 2 : 4;
    uint16_t *nv;
    if (ncap > 65536)
      return -1;
    nv = realloc(s->v, ncap * sizeof *nv);
    if (!nv)
      return -1;
    s->v = nv;
    s->cap = ncap;
  }
  s->v[s->n++] = id;
  return 0;
}

static bool idset_remove(struct idset *s, uint16_t id)
{
  for (uint32_t i = 0; i < s->n; i++) {
    if (s->v[i] == id) {
      s->v[i] = s->v[--s->n];
      return true;
    }
  }
  return false;
}

static void idset_clear(struct idset *s)
{
  free(s->v);
  s->v = NULL;
  s->n = s->cap = 0;
}

static char *dup_str(const char *s, bool *fail)
{
  char *d;
  if (!s)
    return NULL;
  d = strdup(s);
  if (!d)
    *fail = true;
  return d;
}

static void arm_timer_at(struct upstream *u, uint64_t at)
{
  uint64_t now = uv_now(u->loop);
  uv_timer_start(&u->timer, timer_cb, at > now ? at - now : 0, 0);
}

static bool conn_alive(const struct upstream *u, const struct conn *c)
{
  return u->conn == c && c && !c->closing && u->state != U_CLOSING;
}

static bool conn_up(const struct upstream *u)
{
  return u->state == U_UP && u->conn && !u->conn->closing;
}

/* The reason to report when the peer goes away in the current state. */
static enum upstream_reason eof_reason(const struct upstream *u)
{
  switch (u->state) {
  case U_HANDSHAKE:
    return UPSTREAM_R_TLS;
  case U_WAIT_CONNACK:
    return UPSTREAM_R_CLOSED_BEFORE_CONNACK;
  default:
    return UPSTREAM_R_TCP;
  }
}

/* ---- connection objects ---- */

static void conn_close_cb(uv_handle_t *h);

/* Closes a connection; if it is still the current one, its close callback
 * reports `why` through lost().  Safe to call from anywhere, any number of
 * times: the report is deferred to the close callback. */
static void abort_conn(struct conn *c, enum upstream_reason why, int connack_rc)
{
  if (c->closing)
    return;
  c->closing = true;
  c->why = why;
  c->connack_rc = connack_rc;
  uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

/* Closes a connection that is no longer current (nothing to report). */
static void discard_conn(struct upstream *u, struct conn *c)
{
  if (u->conn == c)
    u->conn = NULL;
  abort_conn(c, UPSTREAM_R_TCP, 0);
}

static struct conn *conn_new(struct upstream *u)
{
  struct conn *c = calloc(1, sizeof *c);
  size_t cap = u->o.max_packet < INBUF_SMALL ? u->o.max_packet : INBUF_SMALL;

  if (!c)
    return NULL;
  c->inbuf = malloc(cap);
  if (!c->inbuf)
    goto out_free_conn;
  if (uv_tcp_init(u->loop, &c->tcp) < 0)
    goto out_free_inbuf;
  mqtt_stream_init(&c->stream, c->inbuf, cap);
  c->tcp.data = c;
  c->u = u;
  u->nconns++;
  return c;

out_free_inbuf:
  free(c->inbuf);
out_free_conn:
  free(c);
  return NULL;
}

static void free_wreq(struct wreq *w)
{
  if (w->wipe)
    memset(w->data, 0, w->len);
  free(w);
}

static struct wreq *wreq_new(size_t len)
{
  struct wreq *w = malloc(sizeof *w + len);
  if (w) {
    w->wipe = false;
    w->len = len;
  }
  return w;
}

static void write_cb(uv_write_t *req, int status)
{
  struct wreq *w = (struct wreq *)req;
  struct conn *c = req->handle->data;
  struct upstream *u = c->u;

  free_wreq(w);
  if (status < 0) {
    if (status != UV_ECANCELED && !c->closing && u->conn == c) {
      LOGW(MOD, "%s: write failed: %s", u->o.client_id, uv_strerror(status));
      abort_conn(c, eof_reason(u), 0);
    }
    return;
  }
  /* The queue may have waited for libuv's write queue to drain. */
  if (conn_up(u) && u->conn == c && u->qhead)
    send_queue(u);
}

/* Hands a buffer of bytes for the wire to libuv; takes ownership of w.
 * When nothing is queued it first tries a direct write: the common case (a
 * small packet, a socket with room) then costs one write(2) and no request,
 * callback or poll re-arm (libuv re-arms the descriptor with epoll_ctl after
 * every completed uv_write, which cost as much as the write itself). */
static int write_raw(struct conn *c, struct wreq *w)
{
  uv_stream_t *st = (uv_stream_t *)&c->tcp;
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
  int r;

  if (uv_stream_get_write_queue_size(st) == 0) {
    r = uv_try_write(st, &b, 1);
    if (r == (int)w->len) {
      free_wreq(w);
      return 0;
    }
    if (r > 0) {
      /* Partly written: queue the rest. */
      memmove(w->data, w->data + r, w->len - (size_t)r);
      if (w->wipe)
        memset(w->data + (w->len - (size_t)r), 0, (size_t)r);
      w->len -= (size_t)r;
      b = uv_buf_init((char *)w->data, (unsigned)w->len);
    }
    /* UV_EAGAIN, or an error: uv_write reports errors through write_cb,
     * where a lost connection gets its proper reason. */
  }
  r = uv_write(&w->req, st, &b, 1, write_cb);
  if (r < 0)
    free_wreq(w);
  return r;
}

/* Moves all pending TLS output to the socket. */
static int flush_tls(struct conn *c)
{
  size_t n;

  while ((n = tls_pending_output(c->tls)) > 0) {
    struct wreq *w = wreq_new(n);
    int r;
    if (!w)
      return UV_ENOMEM;
    w->len = tls_take_output(c->tls, w->data, n);
    if (w->len == 0) {
      free_wreq(w);
      return UV_EIO;
    }
    r = write_raw(c, w);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Sends one encoded MQTT packet (plaintext in w); takes ownership of w. */
static int conn_send(struct upstream *u, struct conn *c, struct wreq *w)
{
  int r;

  u->last_tx = uv_now(u->loop);
  if (!c->tls)
    return write_raw(c, w);
  r = tls_write(c->tls, w->data, w->len);
  free_wreq(w);
  if (r < 0) {
    LOGW(MOD, "%s: %s", u->o.client_id, tls_last_error(c->tls));
    return UV_EPROTO;
  }
  return flush_tls(c);
}

/* Encodes and sends a fixed-size packet: PUBACK/PUBREC/PUBREL/PUBCOMP when
 * id != 0, else PINGREQ/DISCONNECT. */
static int send_small(struct upstream *u, struct conn *c, enum mqtt_type type, uint16_t id)
{
  struct wreq *w = wreq_new(4);
  int n;

  if (!w)
    return UV_ENOMEM;
  n = id ? mqtt_encode_ack(type, id, w->data, 4) : mqtt_encode_simple(type, w->data, 4);
  if (n < 0) {
    free_wreq(w);
    return UV_EINVAL;
  }
  w->len = (size_t)n;
  return conn_send(u, c, w);
}

/* Sends a small packet and drops the connection if that fails. */
static void send_small_or_abort(struct upstream *u, struct conn *c, enum mqtt_type type,
                                uint16_t id)
{
  if (send_small(u, c, type, id) < 0)
    abort_conn(c, UPSTREAM_R_TCP, 0);
}

static void send_connect(struct upstream *u, struct conn *c)
{
  const struct upstream_opts *o = &u->o;
  struct mqtt_connect m = {
      .client_id = {(const uint8_t *)o->client_id, strlen(o->client_id)},
      .clean_session = o->clean_session,
      .keepalive = o->keepalive,
  };
  struct wreq *w;
  int n;

  if (o->will.topic) {
    m.will = true;
    m.will_topic = (struct mqtt_bytes){(const uint8_t *)o->will.topic, strlen(o->will.topic)};
    m.will_payload = (struct mqtt_bytes){u->will_payload, o->will.payload_len};
    m.will_qos = o->will.qos;
    m.will_retain = o->will.retain;
  }
  if (o->username) {
    m.has_username = true;
    m.username = (struct mqtt_bytes){(const uint8_t *)o->username, strlen(o->username)};
    if (o->password) {
      m.has_password = true;
      m.password = (struct mqtt_bytes){(const uint8_t *)o->password, strlen(o->password)};
    }
  }
  set_state(u, U_WAIT_CONNACK);
  n = mqtt_encode_connect(&m, NULL, 0);
  if (n < 0) {
    LOGE(MOD, "%s: cannot encode CONNECT: %s", o->client_id, proto_strerror(n));
    abort_conn(c, UPSTREAM_R_PROTOCOL, 0);
    return;
  }
  w = wreq_new((size_t)n);
  if (!w) {
    abort_conn(c, UPSTREAM_R_TCP, 0);
    return;
  }
  w->wipe = o->password != NULL;
  mqtt_encode_connect(&m, w->data, (size_t)n);
  if (conn_send(u, c, w) < 0)
    abort_conn(c, UPSTREAM_R_TCP, 0);
}

/* ---- the outgoing queue ---- */

static bool id_in_use(const struct upstream *u, uint16_t id)
{
  for (const struct omsg *m = u->qhead; m; m = m->next)
    if (m->packet_id == id)
      return true;
  return idset_has(&u->subs, id);
}

/* Next free packet id: never 0, never one still in flight. 0 if none. */
static uint16_t alloc_id(struct upstream *u)
{
  for (uint32_t tries = 0; tries < 65535; tries++) {
    u->last_id = (uint16_t)(u->last_id == 65535 ? 1 : u->last_id + 1);
    if (!id_in_use(u, u->last_id))
      return u->last_id;
  }
  return 0;
}

static void unlink_msg(struct upstream *u, struct omsg *prev, struct omsg *m)
{
  if (prev)
    prev->next = m->next;
  else
    u->qhead = m->next;
  if (u->qtail == m)
    u->qtail = prev;
  u->nqueued--;
}

static void fill_publish(const struct omsg *m, struct mqtt_publish *p)
{
  *p = (struct mqtt_publish){
      .dup = m->ever_sent && m->qos > 0,
      .qos = m->qos,
      .retain = m->retain,
      .topic = {m->data, m->topic_len},
      .packet_id = m->packet_id,
      .payload = {m->data + m->topic_len, m->len},
  };
}

/* Writes every message not yet written on this connection, in order.  QoS 0
 * messages leave the queue once written; QoS 1 ones stay until PUBACK. */
static void send_queue(struct upstream *u)
{
  struct conn *c = u->conn;
  struct omsg *prev = NULL, *m = u->qhead;

  while (m && conn_up(u)) {
    struct mqtt_publish p;
    struct wreq *w;
    int n;

    if (m->sent) {
      prev = m;
      m = m->next;
      continue;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_HIGH_WATER)
      return; /* write_cb resumes */
    fill_publish(m, &p);
    n = mqtt_encode_publish(&p, NULL, 0);
    w = n > 0 ? wreq_new((size_t)n) : NULL;
    if (!w) {
      abort_conn(c, UPSTREAM_R_TCP, 0);
      return;
    }
    mqtt_encode_publish(&p, w->data, (size_t)n);
    if (conn_send(u, c, w) < 0) {
      abort_conn(c, UPSTREAM_R_TCP, 0);
      return;
    }
    if (m->qos == 0) {
      struct omsg *next = m->next;
      unlink_msg(u, prev, m);
      free(m);
      m = next;
      continue;
    }
    m->sent = m->ever_sent = true;
    prev = m;
    m = m->next;
  }
}

/* ---- timers and lifecycle ---- */

static void free_addrinfo(struct upstream *u)
{
  if (u->ai)
    uv_freeaddrinfo(u->ai);
  u->ai = u->ai_cur = NULL;
}

/* The connection attempt failed or the connection was lost: forget the
 * per-connection state, schedule a retry and tell the owner. */
static void lost(struct upstream *u, enum upstream_reason why, int connack_rc)
{
  uint32_t delay;

  pace_release(u);
  free_addrinfo(u);
  idset_clear(&u->in_qos1);
  idset_clear(&u->subs);
  for (struct omsg *m = u->qhead; m; m = m->next)
    m->sent = false;
  u->ping_outstanding = false;
  if (u->state == U_CLOSING)
    return;
  set_state(u, U_BACKOFF);
  delay = backoff_next(&u->bo);
  {
    /* AWS IoT accepts one CONNECT per second per client id (PROTOCOLS.md
     * A.9): attempts of one upstream start at least a second apart. */
    uint64_t since = uv_now(u->loop) - u->attempt_started;
    if (since + delay < MIN_CONNECT_INTERVAL_MS)
      delay = (uint32_t)(MIN_CONNECT_INTERVAL_MS - since);
  }
  uv_timer_start(&u->timer, timer_cb, delay, 0);
  if (why == UPSTREAM_R_CONNACK)
    LOGW(MOD, "%s: %s (%s), retry in %u ms", u->o.client_id, upstream_reason_str(why),
         mqtt_connack_str(connack_rc), delay);
  else
    LOGW(MOD, "%s: %s, retry in %u ms", u->o.client_id, upstream_reason_str(why), delay);
  if (u->cbs.on_down)
    u->cbs.on_down(u->ud, why, why == UPSTREAM_R_CONNACK ? connack_rc : 0, delay);
}

static void finish(struct upstream *u)
{
  void (*on_closed)(void *) = u->cbs.on_closed;
  void *ud = u->ud;

  /* Nothing more can be queued: upstream_publish returns ECLOSED now. */
  while (u->qhead) {
    struct omsg *m = u->qhead;
    unlink_msg(u, NULL, m);
    if (m->qos > 0 || !m->sent) {
      void *token = m->token;
      free(m);
      if (u->cbs.on_dropped)
        u->cbs.on_dropped(ud, token);
    } else {
      free(m);
    }
  }
  free_addrinfo(u);
  idset_clear(&u->subs);
  idset_clear(&u->in_qos1);
  idset_clear(&u->in_qos2);
  if (u->o.password)
    memset((char *)u->o.password, 0, strlen(u->o.password));
  free((char *)u->o.host);
  free((char *)u->o.alpn);
  free((char *)u->o.cert_file);
  free((char *)u->o.key_file);
  tls_identity_unref(u->o.identity);
  free((char *)u->o.client_id);
  free((char *)u->o.username);
  free((char *)u->o.password);
  free((char *)u->o.will.topic);
  free(u->will_payload);
  free(u);
  if (on_closed)
    on_closed(ud);
}

static void timer_close_cb(uv_handle_t *h) { finish(h->data); }

/* In CLOSING: once the last handle and request are done, close the timer;
 * its close callback frees the upstream. */
static void closing_progress(struct upstream *u)
{
  if (u->state != U_CLOSING || u->timer_closing || u->nconns > 0 || u->gai_active)
    return;
  u->timer_closing = true;
  uv_close((uv_handle_t *)&u->timer, timer_close_cb);
}

static void conn_close_cb(uv_handle_t *h)
{
  struct conn *c = h->data;
  struct upstream *u = c->u;
  bool current = u->conn == c;
  enum upstream_reason why = c->why;
  int rc = c->connack_rc;

  if (current)
    u->conn = NULL;
  tls_conn_free(c->tls);
  free(c->inbuf);
  free(c);
  u->nconns--;
  if (current)
    lost(u, why, rc);
  closing_progress(u);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
  struct conn *c = req->handle->data;
  abort_conn(c, UPSTREAM_R_TCP, 0);
}

static void keepalive_arm(struct upstream *u)
{
  uint64_t ka = (uint64_t)u->o.keepalive * 1000;
  uint64_t resp = ((uint64_t)u->o.keepalive / 2 + 5) * 1000;

  if (ka == 0) {
    uv_timer_stop(&u->timer);
    return;
  }
  arm_timer_at(u, u->ping_outstanding ? u->ping_sent + resp : u->last_tx + ka);
}

static void keepalive_tick(struct upstream *u)
{
  struct conn *c = u->conn;
  uint64_t now = uv_now(u->loop);
  uint64_t ka = (uint64_t)u->o.keepalive * 1000;
  uint64_t resp = ((uint64_t)u->o.keepalive / 2 + 5) * 1000;

  if (!c || c->closing || ka == 0)
    return;
  if (u->ping_outstanding) {
    if (now - u->ping_sent >= resp) {
      LOGW(MOD, "%s: no PINGRESP within %llu ms", u->o.client_id, (unsigned long long)resp);
      abort_conn(c, UPSTREAM_R_TIMEOUT, 0);
      return;
    }
  } else if (now - u->last_tx >= ka) {
    if (send_small(u, c, MQTT_PINGREQ, 0) < 0) {
      abort_conn(c, UPSTREAM_R_TCP, 0);
      return;
    }
    u->ping_outstanding = true;
    u->ping_sent = now;
  }
  keepalive_arm(u);
}

static void timer_cb(uv_timer_t *t)
{
  struct upstream *u = t->data;
  struct conn *c = u->conn;

  switch (u->state) {
  case U_BACKOFF:
    pace_start(u);
    break;
  case U_RESOLVING:
    LOGW(MOD, "%s: DNS for %s timed out", u->o.client_id, u->o.host);
    /* The request may already run in the thread pool; its late callback
     * is then discarded (or adopted by the next attempt). */
    uv_cancel((uv_req_t *)&u->gai);
    lost(u, UPSTREAM_R_TIMEOUT, 0);
    break;
  case U_CONNECTING:
  case U_HANDSHAKE:
  case U_WAIT_CONNACK:
    if (uv_now(u->loop) < u->deadline) {
      arm_timer_at(u, u->deadline);
    } else if (c && !c->closing) {
      LOGW(MOD, "%s: connect to %s:%u timed out in %s", u->o.client_id, u->o.host, u->o.port,
           state_names[u->state]);
      abort_conn(c, UPSTREAM_R_TIMEOUT, 0);
    } else if (!c) {
      lost(u, UPSTREAM_R_TIMEOUT, 0);
    }
    break;
  case U_UP:
    keepalive_tick(u);
    break;
  case U_CLOSING:
    /* The graceful flush took too long. */
    if (c)
      abort_conn(c, UPSTREAM_R_TCP, 0);
    break;
  case U_IDLE:
    break;
  }
}

/* ---- connecting ---- */

static void handle_packet(struct upstream *u, struct conn *c, const uint8_t *pkt, size_t len);

/* Grows the MQTT input buffer before feeding when the packet that starts
 * here is larger than the buffer but allowed (<= max_packet).  The header
 * may be split: bytes already buffered by the stream come first. */
static int inbuf_reserve(struct upstream *u, struct conn *c, const uint8_t *data, size_t n)
{
  struct mqtt_stream *s = &c->stream;
  uint8_t hdr[5];
  size_t h = 0, partial = 0;
  uint32_t rl;
  uint64_t total;
  uint8_t *nb;
  int k;

  if (s->need != 0 && s->have < s->need)
    return 0; /* inside a packet whose size was already accepted */
  if (s->need == 0) {
    partial = s->have < 4 ? s->have : 4;
    memcpy(hdr, s->buf, partial);
    h = partial;
  }
  while (h < 5 && h - partial < n) {
    hdr[h] = data[h - partial];
    h++;
  }
  if (h < 2)
    return 0;
  k = mqtt_varint_decode(hdr + 1, h - 1, &rl);
  if (k < 0)
    return 0; /* incomplete or malformed: the stream decides */
  total = 1 + (uint64_t)k + rl;
  if (total <= s->cap || total > u->o.max_packet)
    return 0; /* fits, or the stream refuses it as too big */
  nb = malloc((size_t)total);
  if (!nb)
    return -1;
  free(c->inbuf);
  c->inbuf = nb;
  mqtt_stream_init(s, nb, (size_t)total);
  if (partial) {
    const uint8_t *p;
    size_t plen;
    (void)mqtt_stream_feed(s, hdr, partial, &p, &plen);
  }
  return 0;
}

/* Back to the small buffer between packets after a large one. */
static void inbuf_shrink(struct upstream *u, struct conn *c)
{
  struct mqtt_stream *s = &c->stream;
  size_t small = u->o.max_packet < INBUF_SMALL ? u->o.max_packet : INBUF_SMALL;
  bool between = (s->need == 0 && s->have == 0) || (s->need != 0 && s->have == s->need);
  uint8_t *nb;

  if (s->cap <= small || !between)
    return;
  nb = malloc(small);
  if (!nb)
    return;
  free(c->inbuf);
  c->inbuf = nb;
  mqtt_stream_init(s, nb, small);
}

/* MQTT plaintext from the broker: frame and handle packets. */
static void process_plain(struct upstream *u, struct conn *c, const uint8_t *data, size_t n)
{
  while (n > 0) {
    const uint8_t *pkt;
    size_t plen;
    int used;

    if (inbuf_reserve(u, c, data, n) < 0) {
      LOGW(MOD, "%s: out of memory for an incoming packet", u->o.client_id);
      abort_conn(c, UPSTREAM_R_TCP, 0);
      return;
    }
    used = mqtt_stream_feed(&c->stream, data, n, &pkt, &plen);
    if (used < 0) {
      LOGW(MOD, "%s: bad packet from the broker: %s", u->o.client_id, proto_strerror(used));
      abort_conn(c, UPSTREAM_R_PROTOCOL, 0);
      return;
    }
    data += used;
    n -= (size_t)used;
    if (pkt) {
      handle_packet(u, c, pkt, plen);
      if (!conn_alive(u, c))
        return;
    }
  }
  inbuf_shrink(u, c);
}

/* Ciphertext from the broker: handshake, then decrypt and process. */
static void tls_pump(struct upstream *u, struct conn *c, const uint8_t *data, size_t n)
{
  while (n > 0) {
    size_t chunk = n < TLS_FEED_CHUNK ? n : TLS_FEED_CHUNK;

    if (tls_feed(c->tls, data, chunk) < 0) {
      abort_conn(c, UPSTREAM_R_TLS, 0);
      return;
    }
    data += chunk;
    n -= chunk;
    if (u->state == U_HANDSHAKE) {
      int r = tls_handshake(c->tls);
      if (r == TLS_WANT_IO)
        continue;
      if (r < 0) {
        LOGW(MOD, "%s: TLS handshake with %s:%u failed: %s", u->o.client_id, u->o.host,
             u->o.port, tls_last_error(c->tls));
        (void)flush_tls(c); /* the alert, if any */
        abort_conn(c, UPSTREAM_R_TLS, 0);
        return;
      }
      LOGD(MOD, "%s: TLS established with %s", u->o.client_id, u->o.host);
      if (flush_tls(c) < 0) {
        abort_conn(c, UPSTREAM_R_TCP, 0);
        return;
      }
      send_connect(u, c);
      if (!conn_alive(u, c))
        return;
    }
    for (;;) {
      int k = tls_read(c->tls, g_plain, sizeof g_plain);
      if (k == TLS_WANT_IO)
        break;
      if (k < 0) {
        enum upstream_reason why = k == TLS_ERR_CLOSED ? eof_reason(u) : UPSTREAM_R_TLS;
        LOGW(MOD, "%s: TLS: %s", u->o.client_id, tls_last_error(c->tls));
        abort_conn(c, why, 0);
        return;
      }
      process_plain(u, c, g_plain, (size_t)k);
      if (!conn_alive(u, c))
        return;
    }
  }
  if (flush_tls(c) < 0)
    abort_conn(c, UPSTREAM_R_TCP, 0);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  buf->base = (char *)g_rx;
  buf->len = sizeof g_rx;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
  struct conn *c = stream->data;
  struct upstream *u = c->u;

  if (nread == 0 || !conn_alive(u, c))
    return;
  if (nread < 0) {
    if (nread == UV_EOF)
      LOGI(MOD, "%s: connection closed by %s in %s", u->o.client_id, u->o.host,
           state_names[u->state]);
    else
      LOGW(MOD, "%s: read error: %s", u->o.client_id, uv_strerror((int)nread));
    abort_conn(c, eof_reason(u), 0);
    return;
  }
  if (c->tls)
    tls_pump(u, c, (const uint8_t *)buf->base, (size_t)nread);
  else
    process_plain(u, c, (const uint8_t *)buf->base, (size_t)nread);
}

static void connect_current(struct upstream *u);

static void connect_cb(uv_connect_t *req, int status)
{
  struct conn *c = req->handle->data;
  struct upstream *u = c->u;
  char err[256];
  int r;

  if (status == UV_ECANCELED || !conn_alive(u, c))
    return;
  if (status < 0) {
    if (u->ai_cur && u->ai_cur->ai_next) {
      LOGD(MOD, "%s: connect failed (%s), trying the next address", u->o.client_id,
           uv_strerror(status));
      u->ai_cur = u->ai_cur->ai_next;
      discard_conn(u, c);
      connect_current(u);
      return;
    }
    LOGW(MOD, "%s: connect to %s:%u failed: %s", u->o.client_id, u->o.host, u->o.port,
         uv_strerror(status));
    abort_conn(c, UPSTREAM_R_TCP, 0);
    return;
  }
  free_addrinfo(u);
  (void)uv_tcp_nodelay(&c->tcp, 1);
  r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (r < 0) {
    abort_conn(c, UPSTREAM_R_TCP, 0);
    return;
  }
  if (!u->o.tls) {
    send_connect(u, c);
    return;
  }
  if (u->o.identity)
    c->tls = tls_conn_new_identity(u->o.tls, u->o.host, u->o.alpn, u->o.identity, err,
                                   sizeof err);
  else
    c->tls = tls_conn_new(u->o.tls, u->o.host, u->o.alpn, u->o.cert_file, u->o.key_file, err,
                          sizeof err);
  if (!c->tls) {
    LOGW(MOD, "%s: TLS setup failed: %s", u->o.client_id, err);
    abort_conn(c, UPSTREAM_R_TLS, 0);
    return;
  }
  set_state(u, U_HANDSHAKE);
  r = tls_handshake(c->tls);
  if (r != TLS_WANT_IO && r != TLS_OK) {
    LOGW(MOD, "%s: TLS handshake failed: %s", u->o.client_id, tls_last_error(c->tls));
    abort_conn(c, UPSTREAM_R_TLS, 0);
    return;
  }
  if (flush_tls(c) < 0)
    abort_conn(c, UPSTREAM_R_TCP, 0);
}

/* Starts a TCP connect to u->ai_cur, moving on to the next address when
 * one cannot even be tried. */
static void connect_current(struct upstream *u)
{
  while (u->ai_cur) {
    struct addrinfo *ai = u->ai_cur;
    struct conn *c;

    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
      u->ai_cur = ai->ai_next;
      continue;
    }
    c = conn_new(u);
    if (!c) {
      LOGW(MOD, "%s: out of memory for a connection", u->o.client_id);
      lost(u, UPSTREAM_R_TCP, 0);
      return;
    }
    set_state(u, U_CONNECTING);
    u->conn = c;
    if (uv_tcp_connect(&c->creq, &c->tcp, ai->ai_addr, connect_cb) == 0)
      return;
    discard_conn(u, c);
    u->ai_cur = ai->ai_next;
  }
  LOGW(MOD, "%s: no usable address for %s", u->o.client_id, u->o.host);
  lost(u, UPSTREAM_R_TCP, 0);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res);

static void start_resolve(struct upstream *u)
{
  struct addrinfo hints;
  int r;

  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  r = uv_getaddrinfo(u->loop, &u->gai, gai_cb, u->o.host, u->port_str, &hints);
  if (r < 0) {
    LOGW(MOD, "%s: cannot resolve %s: %s", u->o.client_id, u->o.host, uv_strerror(r));
    lost(u, UPSTREAM_R_DNS, 0);
    return;
  }
  u->gai_active = true;
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
  struct upstream *u = req->data;

  u->gai_active = false;
  if (u->state != U_RESOLVING) {
    /* Stopped, or the attempt timed out meanwhile. */
    if (res)
      uv_freeaddrinfo(res);
    closing_progress(u);
    return;
  }
  if (status == UV_EAI_CANCELED) {
    /* A cancelled request of a timed-out attempt, adopted by this one. */
    if (res)
      uv_freeaddrinfo(res);
    start_resolve(u);
    return;
  }
  if (status < 0 || !res) {
    LOGW(MOD, "%s: cannot resolve %s: %s", u->o.client_id, u->o.host,
         status < 0 ? uv_strerror(status) : "no address");
    if (res)
      uv_freeaddrinfo(res);
    lost(u, UPSTREAM_R_DNS, 0);
    return;
  }
  u->ai = u->ai_cur = res;
  connect_current(u);
}

static void start_attempt(struct upstream *u)
{
  u->attempt_started = uv_now(u->loop);
  set_state(u, U_RESOLVING);
  u->deadline = uv_now(u->loop) + u->o.connect_timeout_ms;
  arm_timer_at(u, u->deadline);
  LOGD(MOD, "%s: connecting to %s:%u%s", u->o.client_id, u->o.host, u->o.port,
       u->o.tls ? " (TLS)" : "");
  /* A request left over from a timed-out attempt is adopted. */
  if (!u->gai_active)
    start_resolve(u);
}

/* ---- incoming packets ---- */

static void handle_connack(struct upstream *u, struct conn *c, const struct mqtt_packet *p)
{
  pace_release(u); /* the attempt is over, whatever the answer */
  if (p->type != MQTT_CONNACK) {
    LOGW(MOD, "%s: %s before CONNACK", u->o.client_id, mqtt_type_name(p->type));
    abort_conn(c, UPSTREAM_R_PROTOCOL, 0);
    return;
  }
  if (p->u.connack.rc != MQTT_CONNACK_ACCEPTED) {
    abort_conn(c, UPSTREAM_R_CONNACK, p->u.connack.rc);
    return;
  }
  set_state(u, U_UP);
  backoff_reset(&u->bo);
  u->ping_outstanding = false;
  /* Without a session on the broker no PUBREL can follow. */
  if (!p->u.connack.session_present)
    idset_clear(&u->in_qos2);
  LOGI(MOD, "%s: up (%s:%u%s, session %s)", u->o.client_id, u->o.host, u->o.port,
       c->tls ? ", TLS" : "", p->u.connack.session_present ? "present" : "new");
  keepalive_arm(u);
  send_queue(u);
  if (conn_alive(u, c) && u->cbs.on_up)
    u->cbs.on_up(u->ud, p->u.connack.session_present);
}

static void handle_puback(struct upstream *u, uint16_t id)
{
  struct omsg *prev = NULL;

  for (struct omsg *m = u->qhead; m; prev = m, m = m->next) {
    if (m->qos == 1 && m->packet_id == id && m->sent) {
      void *token = m->token;
      unlink_msg(u, prev, m);
      free(m);
      if (u->cbs.on_puback)
        u->cbs.on_puback(u->ud, token);
      return;
    }
  }
  LOGD(MOD, "%s: PUBACK for unknown id %u", u->o.client_id, id);
}

static void handle_publish(struct upstream *u, struct conn *c, const struct mqtt_publish *p)
{
  if (p->qos == 2 && idset_has(&u->in_qos2, p->packet_id)) {
    /* A resend of a message already delivered: only repeat PUBREC. */
    send_small_or_abort(u, c, MQTT_PUBREC, p->packet_id);
    return;
  }
  if ((p->qos == 1 && idset_add(&u->in_qos1, p->packet_id) < 0) ||
      (p->qos == 2 && idset_add(&u->in_qos2, p->packet_id) < 0)) {
    LOGW(MOD, "%s: out of memory tracking packet ids", u->o.client_id);
    abort_conn(c, UPSTREAM_R_TCP, 0);
    return;
  }
  if (u->cbs.on_message)
    u->cbs.on_message(u->ud, (const char *)p->topic.p, p->topic.len, p->payload.p,
                      p->payload.len, p->qos, p->retain, p->packet_id);
  if (p->qos == 2 && conn_alive(u, c))
    send_small_or_abort(u, c, MQTT_PUBREC, p->packet_id);
}

static void handle_packet(struct upstream *u, struct conn *c, const uint8_t *pkt, size_t len)
{
  struct mqtt_packet p;
  int r = mqtt_decode(pkt, len, &p);

  if (r != PROTO_OK) {
    LOGW(MOD, "%s: malformed packet from the broker (type %u): %s", u->o.client_id,
         (unsigned)(pkt[0] >> 4), proto_strerror(r));
    abort_conn(c, UPSTREAM_R_PROTOCOL, 0);
    return;
  }
  /* Any packet proves the broker alive. */
  u->ping_outstanding = false;
  if (u->state == U_WAIT_CONNACK) {
    handle_connack(u, c, &p);
    return;
  }
  if (u->state != U_UP)
    return;
  switch (p.type) {
  case MQTT_PUBLISH:
    handle_publish(u, c, &p.u.publish);
    break;
  case MQTT_PUBACK:
    handle_puback(u, p.u.packet_id);
    break;
  case MQTT_PUBREL:
    idset_remove(&u->in_qos2, p.u.packet_id);
    send_small_or_abort(u, c, MQTT_PUBCOMP, p.u.packet_id);
    break;
  case MQTT_SUBACK:
    if (idset_remove(&u->subs, p.u.suback.packet_id) && u->cbs.on_suback)
      u->cbs.on_suback(u->ud, p.u.suback.packet_id, p.u.suback.codes, p.u.suback.count);
    break;
  case MQTT_UNSUBACK:
    if (idset_remove(&u->subs, p.u.packet_id) && u->cbs.on_unsuback)
      u->cbs.on_unsuback(u->ud, p.u.packet_id);
    break;
  case MQTT_PINGRESP:
    break;
  case MQTT_PUBREC:
  case MQTT_PUBCOMP:
  case MQTT_CONNACK:
  default:
    /* We never send QoS 2, and CONNACK comes once. */
    LOGW(MOD, "%s: unexpected %s", u->o.client_id, mqtt_type_name(p.type));
    abort_conn(c, UPSTREAM_R_PROTOCOL, 0);
    break;
  }
}

/* ---- public API ---- */

/* ---- connect pacing ---- */

static bool pacer_take_token(struct upstream_pacer *p, uint64_t *wait_ms)
{
  uint64_t now = uv_now(p->loop);
  if (p->rate_per_s == 0)
    return true;
  p->tokens += (double)(now - p->tokens_at) * p->rate_per_s / 1000.0;
  if (p->tokens > p->rate_per_s)
    p->tokens = p->rate_per_s; /* a burst of at most one second's worth */
  p->tokens_at = now;
  if (p->tokens >= 1.0) {
    p->tokens -= 1.0;
    return true;
  }
  *wait_ms = (uint64_t)((1.0 - p->tokens) * 1000.0 / p->rate_per_s) + 1;
  return false;
}

static void pacer_dispatch(struct upstream_pacer *p);

static void pacer_timer_cb(uv_timer_t *t)
{
  pacer_dispatch(t->data);
}

/* Starts waiting attempts while there is room and rate. */
static void pacer_dispatch(struct upstream_pacer *p)
{
  while (p->head && (p->max_connecting == 0 || p->connecting < p->max_connecting)) {
    struct upstream *u = p->head;
    uint64_t wait_ms = 0;
    if (!pacer_take_token(p, &wait_ms)) {
      if (!uv_is_active((uv_handle_t *)&p->timer))
        uv_timer_start(&p->timer, pacer_timer_cb, wait_ms, 0);
      return;
    }
    p->head = u->pq_next;
    if (!p->head)
      p->tail = NULL;
    u->pq_next = NULL;
    u->pq_waiting = false;
    p->waiting--;
    u->holds_slot = true;
    p->connecting++;
    start_attempt(u);
  }
}

static void pace_start(struct upstream *u)
{
  struct upstream_pacer *p = u->o.pacer;
  if (!p) {
    start_attempt(u);
    return;
  }
  if (u->pq_waiting || u->holds_slot)
    return;
  u->pq_waiting = true;
  u->pq_next = NULL;
  if (p->tail)
    p->tail->pq_next = u;
  else
    p->head = u;
  p->tail = u;
  p->waiting++;
  pacer_dispatch(p);
}

/* The attempt ended (CONNACK, failure, stop), or the upstream stopped while
 * waiting: its place goes to the next. */
static void pace_release(struct upstream *u)
{
  struct upstream_pacer *p = u->o.pacer;
  if (!p)
    return;
  if (u->pq_waiting) {
    struct upstream **pp = &p->head, *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->pq_next) {
      if (*pp == u) {
        *pp = u->pq_next;
        if (p->tail == u)
          p->tail = prev;
        break;
      }
    }
    u->pq_waiting = false;
    u->pq_next = NULL;
    p->waiting--;
  }
  if (u->holds_slot) {
    u->holds_slot = false;
    p->connecting--;
    pacer_dispatch(p);
  }
}

int upstream_pacer_new(uv_loop_t *loop, uint32_t max_connecting, uint32_t rate_per_s,
                       struct upstream_pacer **out)
{
  struct upstream_pacer *p = calloc(1, sizeof *p);
  if (!p)
    return UPSTREAM_ENOMEM;
  p->loop = loop;
  p->max_connecting = max_connecting;
  p->rate_per_s = rate_per_s;
  p->tokens = rate_per_s;
  p->tokens_at = uv_now(loop);
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  *out = p;
  return UPSTREAM_OK;
}

static void pacer_closed(uv_handle_t *h)
{
  struct upstream_pacer *p = h->data;
  void (*done)(void *) = p->done;
  void *ud = p->done_ud;
  free(p);
  if (done)
    done(ud);
}

void upstream_pacer_close(struct upstream_pacer *p, void (*done)(void *), void *ud)
{
  p->done = done;
  p->done_ud = ud;
  uv_close((uv_handle_t *)&p->timer, pacer_closed);
}

size_t upstream_pacer_waiting(const struct upstream_pacer *p)
{
  return p->waiting;
}

size_t upstream_pacer_connecting(const struct upstream_pacer *p)
{
  return p->connecting;
}

static int validate_opts(const struct upstream_opts *o)
{
  if (!o->host || !o->host[0] || o->port == 0 || !o->client_id)
    return UPSTREAM_EINVAL;
  if (o->password && !o->username)
    return UPSTREAM_EINVAL; /* MQTT-3.1.2-22 */
  if (o->will.topic &&
      (!topic_name_is_valid(o->will.topic, strlen(o->will.topic)) || o->will.qos < 0 ||
       o->will.qos > 1 || (o->will.payload_len > 0 && !o->will.payload)))
    return UPSTREAM_EINVAL;
  if (o->max_packet != 0 && o->max_packet < MIN_MAX_PACKET)
    return UPSTREAM_EINVAL;
  if ((o->cert_file == NULL) != (o->key_file == NULL))
    return UPSTREAM_EINVAL;
  return UPSTREAM_OK;
}

int upstream_new(uv_loop_t *loop, const struct upstream_opts *opts,
                 const struct upstream_cbs *cbs, void *ud, struct upstream **out)
{
  struct upstream *u;
  bool fail = false;
  uint64_t seed;
  int r;

  *out = NULL;
  r = validate_opts(opts);
  if (r < 0)
    return r;
  u = calloc(1, sizeof *u);
  if (!u)
    return UPSTREAM_ENOMEM;
  u->loop = loop;
  u->cbs = *cbs;
  u->ud = ud;
  u->o = *opts;
  u->o.host = dup_str(opts->host, &fail);
  u->o.alpn = dup_str(opts->alpn, &fail);
  u->o.cert_file = dup_str(opts->cert_file, &fail);
  u->o.key_file = dup_str(opts->key_file, &fail);
  tls_identity_ref(opts->identity);
  u->o.client_id = dup_str(opts->client_id, &fail);
  u->o.username = dup_str(opts->username, &fail);
  u->o.password = dup_str(opts->password, &fail);
  u->o.will.topic = dup_str(opts->will.topic, &fail);
  u->o.will.payload = NULL;
  if (opts->will.topic && opts->will.payload_len > 0) {
    u->will_payload = malloc(opts->will.payload_len);
    if (u->will_payload)
      memcpy(u->will_payload, opts->will.payload, opts->will.payload_len);
    else
      fail = true;
  }
  if (!u->o.connect_timeout_ms)
    u->o.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
  if (!u->o.backoff_base_ms)
    u->o.backoff_base_ms = DEFAULT_BACKOFF_BASE_MS;
  if (!u->o.backoff_cap_ms)
    u->o.backoff_cap_ms = DEFAULT_BACKOFF_CAP_MS;
  if (u->o.backoff_cap_ms < u->o.backoff_base_ms)
    u->o.backoff_cap_ms = u->o.backoff_base_ms;
  if (!u->o.max_queue)
    u->o.max_queue = DEFAULT_MAX_QUEUE;
  if (!u->o.max_packet)
    u->o.max_packet = DEFAULT_MAX_PACKET;
  snprintf(u->port_str, sizeof u->port_str, "%u", (unsigned)opts->port);
  if (fail || uv_timer_init(loop, &u->timer) < 0) {
    /* finish() frees the copies; no handle exists (uv_timer_init comes
     * last and cannot fail on Unix), and on_closed is not for this. */
    u->cbs.on_closed = NULL;
    finish(u);
    return UPSTREAM_ENOMEM;
  }
  u->timer.data = u;
  u->gai.data = u;
  /* Different upstreams, different jitter: mix the clock and the address. */
  seed = uv_hrtime() ^ ((uint64_t)(uintptr_t)u << 16);
  for (const char *p = u->o.client_id; *p; p++)
    seed = seed * 131 + (unsigned char)*p;
  backoff_init(&u->bo, u->o.backoff_base_ms, u->o.backoff_cap_ms, seed);
  *out = u;
  return UPSTREAM_OK;
}

int upstream_start(struct upstream *u)
{
  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  if (u->state != U_IDLE)
    return UPSTREAM_OK;
  /* Start from the loop, so that no owner callback runs inside this call. */
  set_state(u, U_BACKOFF);
  uv_timer_start(&u->timer, timer_cb, 0, 0);
  return UPSTREAM_OK;
}

void upstream_stop(struct upstream *u, bool graceful)
{
  enum ustate prev = u->state;
  struct conn *c = u->conn;

  if (prev == U_CLOSING)
    return;
  set_state(u, U_CLOSING);
  uv_timer_stop(&u->timer);
  pace_release(u);
  if (u->gai_active)
    uv_cancel((uv_req_t *)&u->gai);
  LOGI(MOD, "%s: stopping (%s)", u->o.client_id, graceful ? "graceful" : "abrupt");
  if (c && !c->closing) {
    int r = -1;
    if (graceful && prev == U_UP) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      r = send_small(u, c, MQTT_DISCONNECT, 0);
      if (r == 0 && c->tls) {
        tls_shutdown(c->tls);
        r = flush_tls(c);
      }
      /* uv_shutdown waits for the queued writes, then sends FIN. */
      if (r == 0)
        r = uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, shutdown_cb);
    }
    if (r == 0)
      arm_timer_at(u, uv_now(u->loop) + GRACEFUL_FLUSH_MS);
    else
      abort_conn(c, UPSTREAM_R_TCP, 0);
  }
  closing_progress(u);
}

int upstream_publish(struct upstream *u, const char *topic, size_t topic_len,
                     const uint8_t *payload, size_t len, int qos, bool retain, void *token)
{
  struct mqtt_publish p;
  struct omsg *m;

  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  if ((qos != 0 && qos != 1) || !topic || topic_len == 0 || topic_len > 65535 ||
      (len > 0 && !payload) || !topic_name_is_valid(topic, topic_len))
    return UPSTREAM_EINVAL;
  p = (struct mqtt_publish){.qos = qos, .retain = retain,
                            .topic = {(const uint8_t *)topic, topic_len},
                            .packet_id = (uint16_t)(qos ? 1 : 0), .payload = {payload, len}};
  if (mqtt_encode_publish(&p, NULL, 0) < 0)
    return UPSTREAM_EINVAL;
  if (u->nqueued >= u->o.max_queue)
    return UPSTREAM_EFULL;
  m = malloc(sizeof *m + topic_len + len);
  if (!m)
    return UPSTREAM_ENOMEM;
  m->next = NULL;
  m->token = token;
  m->packet_id = 0;
  if (qos == 1) {
    m->packet_id = alloc_id(u);
    if (m->packet_id == 0) {
      free(m);
      return UPSTREAM_EFULL;
    }
  }
  m->qos = (uint8_t)qos;
  m->retain = retain;
  m->sent = m->ever_sent = false;
  m->topic_len = (uint16_t)topic_len;
  m->len = len;
  memcpy(m->data, topic, topic_len);
  if (len)
    memcpy(m->data + topic_len, payload, len);
  if (u->qtail)
    u->qtail->next = m;
  else
    u->qhead = m;
  u->qtail = m;
  u->nqueued++;
  if (conn_up(u))
    send_queue(u);
  return UPSTREAM_OK;
}

static int sub_unsub(struct upstream *u, bool sub, const char *filter, size_t len, int qos,
                     uint16_t *packet_id_out)
{
  struct mqtt_bytes f = {(const uint8_t *)filter, len};
  uint8_t q = (uint8_t)qos;
  struct wreq *w;
  uint16_t id;
  int n;

  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  if (!filter || len == 0 || len > 65535 || (sub && (qos < 0 || qos > 2)) ||
      !topic_filter_is_valid(filter, len))
    return UPSTREAM_EINVAL;
  if (!conn_up(u))
    return UPSTREAM_EFULL;
  id = alloc_id(u);
  if (id == 0)
    return UPSTREAM_EFULL;
  n = sub ? mqtt_encode_subscribe(id, &f, &q, 1, NULL, 0)
          : mqtt_encode_unsubscribe(id, &f, 1, NULL, 0);
  if (n < 0)
    return UPSTREAM_EINVAL;
  w = wreq_new((size_t)n);
  if (!w)
    return UPSTREAM_ENOMEM;
  if (idset_add(&u->subs, id) < 0) {
    free_wreq(w);
    return UPSTREAM_ENOMEM;
  }
  if (sub)
    mqtt_encode_subscribe(id, &f, &q, 1, w->data, (size_t)n);
  else
    mqtt_encode_unsubscribe(id, &f, 1, w->data, (size_t)n);
  /* A failed send drops the connection; the owner learns it from on_down
   * and subscribes again in on_up. */
  if (conn_send(u, u->conn, w) < 0)
    abort_conn(u->conn, UPSTREAM_R_TCP, 0);
  if (packet_id_out)
    *packet_id_out = id;
  return UPSTREAM_OK;
}

int upstream_subscribe(struct upstream *u, const char *filter, size_t len, int qos,
                       uint16_t *packet_id_out)
{
  return sub_unsub(u, true, filter, len, qos, packet_id_out);
}

int upstream_unsubscribe(struct upstream *u, const char *filter, size_t len,
                         uint16_t *packet_id_out)
{
  return sub_unsub(u, false, filter, len, 0, packet_id_out);
}

int upstream_puback(struct upstream *u, uint16_t packet_id)
{
  if (u->state == U_CLOSING)
    return UPSTREAM_ECLOSED;
  /* Unknown id (or one from a previous connection): the broker delivers the
   * message again, so there is nothing to acknowledge. */
  if (!idset_remove(&u->in_qos1, packet_id) || !conn_up(u))
    return UPSTREAM_OK;
  send_small_or_abort(u, u->conn, MQTT_PUBACK, packet_id);
  return UPSTREAM_OK;
}

bool upstream_is_up(const struct upstream *u) { return conn_up(u); }

size_t upstream_queued(const struct upstream *u) { return u->nqueued; }

const char *upstream_reason_str(enum upstream_reason why)
{
  switch (why) {
  case UPSTREAM_R_DNS:
    return "DNS resolution failed";
  case UPSTREAM_R_TCP:
    return "TCP connection failed or lost";
  case UPSTREAM_R_TLS:
    return "TLS handshake or verification failed";
  case UPSTREAM_R_CONNACK:
    return "CONNACK refused";
  case UPSTREAM_R_CLOSED_BEFORE_CONNACK:
    return "closed by the broker before CONNACK";
  case UPSTREAM_R_TIMEOUT:
    return "timed out";
  case UPSTREAM_R_PROTOCOL:
    return "protocol error";
  }
  return "unknown";
}

const char *upstream_client_id(const struct upstream *u) { return u->o.client_id; }
