/*
 * upstream_conn.c - the wire of one upstream connection attempt: its TCP
 * handle, DNS, the TLS pump over memory BIOs (tls.h), writes and reads.  The
 * MQTT client above it is upstream.c; see upstream_int.h for what the two
 * share.
 *
 * Memory per connection: the receive buffers for ciphertext and plaintext
 * are shared per thread (libuv calls alloc_cb and read_cb back to back, and
 * every byte is consumed before read_cb returns).  What stays with a
 * connection is the SSL object, a small MQTT input buffer that grows only
 * for a large packet and shrinks afterwards, and the write requests in
 * flight.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls.h"
#include "upstream_int.h"

#define MOD "upstream"

/* Shared by all connections of a thread; see the comment at the top. */
static _Thread_local uint8_t g_rx[64 * 1024];
static _Thread_local uint8_t g_plain[16 * 1024];

static void connect_current(struct upstream *u);

const char *const uconn_state_names[] = {"IDLE", "RESOLVING", "CONNECTING", "HANDSHAKE",
                                             "WAIT_CONNACK", "UP", "BACKOFF", "CLOSING"};

/* ---- small helpers ---- */

void uconn_set_state(struct upstream *u, enum ustate s)
{
  if (u->state != s)
    LOGD(MOD, "%s: %s -> %s", u->o.client_id, uconn_state_names[u->state], uconn_state_names[s]);
  u->state = s;
}

void uconn_arm_timer_at(struct upstream *u, uint64_t at)
{
  uint64_t now = uv_now(u->loop);
  uv_timer_start(&u->timer, u->own->timer, at > now ? at - now : 0, 0);
}

bool uconn_alive(const struct upstream *u, const struct conn *c)
{
  return u->conn == c && c && !c->closing && u->state != U_CLOSING;
}

bool uconn_up(const struct upstream *u)
{
  return u->state == U_UP && u->conn && !u->conn->closing;
}

/* The reason to report when the peer goes away in the current state. */
enum upstream_reason uconn_eof_reason(const struct upstream *u)
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

/* ---- timers and lifecycle ---- */

void uconn_free_addrinfo(struct upstream *u)
{
  if (u->ai)
    uv_freeaddrinfo(u->ai);
  u->ai = u->ai_cur = NULL;
}

void uconn_close_cb(uv_handle_t *h)
{
  struct conn *c = h->data;
  struct upstream *u = c->u;
  bool current = u->conn == c;
  enum upstream_reason why = c->why;
  int rc = c->connack_rc;

  if (current)
    u->conn = NULL;
  tls_conn_free(c->tls);
  mqtt_stream_reset(&c->stream); /* a packet half read: its storage comes back too */
  free(mqtt_stream_take_back(&c->stream));
  free(c);
  u->nconns--;
  if (current)
    u->own->lost(u, why, rc);
  u->own->closing_progress(u);
}

/* ---- connection objects ---- */

/* Closes a connection; if it is still the current one, its close callback
 * reports `why` through the owner's lost().  Safe to call from anywhere, any number of
 * times: the report is deferred to the close callback. */
void uconn_abort(struct conn *c, enum upstream_reason why, int connack_rc)
{
  if (c->closing)
    return;
  c->closing = true;
  c->why = why;
  c->connack_rc = connack_rc;
  uv_close((uv_handle_t *)&c->tcp, uconn_close_cb);
}

/* Closes a connection that is no longer current (nothing to report). */
void uconn_discard(struct upstream *u, struct conn *c)
{
  if (u->conn == c)
    u->conn = NULL;
  uconn_abort(c, UPSTREAM_R_TCP, 0);
}

static struct conn *conn_new(struct upstream *u)
{
  struct conn *c = calloc(1, sizeof *c);

  if (!c)
    return NULL;
  if (uv_tcp_init(u->loop, &c->tcp) < 0) {
    free(c);
    return NULL;
  }
  /* No input buffer until a packet arrives split across reads. */
  mqtt_stream_init_lazy(&c->stream, u->o.max_packet);
  c->tcp.data = c;
  c->u = u;
  u->nconns++;
  return c;
}

void uconn_wreq_free(struct wreq *w)
{
  if (w->wipe)
    memset(w->data, 0, w->len);
  free(w);
}

struct wreq *uconn_wreq_new(size_t len)
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

  uconn_wreq_free(w);
  if (status < 0) {
    if (status != UV_ECANCELED && !c->closing && u->conn == c) {
      LOGW(MOD, "%s: write failed: %s", u->o.client_id, uv_strerror(status));
      uconn_abort(c, uconn_eof_reason(u), 0);
    }
    return;
  }
  /* The queue may have waited for libuv's write queue to drain. */
  if (uconn_up(u) && u->conn == c && u->qhead)
    u->own->writable(u);
}

/* Hands a buffer of bytes for the wire to libuv; takes ownership of w.
 * When nothing is queued it first tries a direct write: the common case (a
 * small packet, a socket with room) then costs one write(2) and no request,
 * callback or poll re-arm (libuv re-arms the descriptor with epoll_ctl after
 * every completed uv_write, which cost as much as the write itself). */
/* What a direct write took of data: 0 when earlier writes are queued, the
 * socket has no room, or it failed (uv_write then reports the error through
 * write_cb, where a lost connection gets its proper reason). */
static size_t write_direct(struct conn *c, const uint8_t *data, size_t len)
{
  uv_stream_t *st = (uv_stream_t *)&c->tcp;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int r;

  if (uv_stream_get_write_queue_size(st) != 0)
    return 0;
  r = uv_try_write(st, &b, 1);
  return r > 0 ? (size_t)r : 0;
}

/* Queues w behind libuv's earlier writes; takes ownership of w. */
static int write_queued(struct conn *c, struct wreq *w)
{
  uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
  int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
  if (r < 0)
    uconn_wreq_free(w);
  return r;
}

static int write_raw(struct conn *c, struct wreq *w)
{
  size_t n = write_direct(c, w->data, w->len);

  if (n == w->len) {
    uconn_wreq_free(w);
    return 0;
  }
  if (n > 0) {
    /* Partly written: queue the rest. */
    memmove(w->data, w->data + n, w->len - n);
    if (w->wipe)
      memset(w->data + (w->len - n), 0, n);
    w->len -= n;
  }
  return write_queued(c, w);
}

/* Moves all pending TLS output to the socket. */
int uconn_flush_tls(struct conn *c)
{
  size_t n;

  while ((n = tls_pending_output(c->tls)) > 0) {
    struct wreq *w = uconn_wreq_new(n);
    int r;
    if (!w)
      return UV_ENOMEM;
    w->len = tls_take_output(c->tls, w->data, n);
    if (w->len == 0) {
      uconn_wreq_free(w);
      return UV_EIO;
    }
    r = write_raw(c, w);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Sends one encoded MQTT packet (plaintext in w); takes ownership of w. */
int uconn_send(struct upstream *u, struct conn *c, struct wreq *w)
{
  int r;

  if (!c->tls) {
    u->last_tx = uv_now(u->loop);
    return write_raw(c, w);
  }
  r = uconn_send_bytes(u, c, w->data, w->len);
  uconn_wreq_free(w);
  return r;
}

int uconn_send_bytes(struct upstream *u, struct conn *c, const uint8_t *data, size_t len)
{
  struct wreq *w;
  size_t n;

  u->last_tx = uv_now(u->loop);
  if (c->tls) {
    if (tls_write(c->tls, data, len) < 0) {
      LOGW(MOD, "%s: %s", u->o.client_id, tls_last_error(c->tls));
      return UV_EPROTO;
    }
    return uconn_flush_tls(c);
  }
  n = write_direct(c, data, len);
  if (n == len)
    return 0;
  /* Only what the socket did not take is copied, behind libuv's queue. */
  if (!(w = uconn_wreq_new(len - n)))
    return UV_ENOMEM;
  memcpy(w->data, data + n, len - n);
  return write_queued(c, w);
}

/* Encodes and sends a fixed-size packet: PUBACK/PUBREC/PUBREL/PUBCOMP when
 * id != 0, else PINGREQ/DISCONNECT. */
int uconn_send_small(struct upstream *u, struct conn *c, enum mqtt_type type, uint16_t id)
{
  uint8_t b[4];
  int n = id ? mqtt_encode_ack(type, id, b, sizeof b) : mqtt_encode_simple(type, b, sizeof b);

  if (n < 0)
    return UV_EINVAL;
  return uconn_send_bytes(u, c, b, (size_t)n);
}

/* Sends a small packet and drops the connection if that fails. */
void uconn_send_small_or_abort(struct upstream *u, struct conn *c, enum mqtt_type type,
                                uint16_t id)
{
  if (uconn_send_small(u, c, type, id) < 0)
    uconn_abort(c, UPSTREAM_R_TCP, 0);
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
  uconn_set_state(u, U_WAIT_CONNACK);
  n = mqtt_encode_connect(&m, NULL, 0);
  if (n < 0) {
    LOGE(MOD, "%s: cannot encode CONNECT: %s", o->client_id, proto_strerror(n));
    uconn_abort(c, UPSTREAM_R_PROTOCOL, 0);
    return;
  }
  w = uconn_wreq_new((size_t)n);
  if (!w) {
    uconn_abort(c, UPSTREAM_R_TCP, 0);
    return;
  }
  w->wipe = o->password != NULL;
  mqtt_encode_connect(&m, w->data, (size_t)n);
  if (uconn_send(u, c, w) < 0)
    uconn_abort(c, UPSTREAM_R_TCP, 0);
}

/* ---- connecting ---- */

/* MQTT plaintext from the broker: frame and handle packets.  The stream
 * (protocol/mqtt_stream, lazy storage) returns a packet that is whole in
 * data where it lies and keeps a split acknowledgement in itself; only a
 * larger packet split across reads wants storage, of exactly its size, which
 * is freed once the packet is handled, so an idle connection holds no input
 * buffer. */
static void process_plain(struct upstream *u, struct conn *c, const uint8_t *data, size_t n)
{
  struct mqtt_stream *s = &c->stream;
  while (n > 0) {
    const uint8_t *pkt;
    size_t plen, want;
    int used = mqtt_stream_feed(s, data, n, &pkt, &plen);
    if (used < 0) {
      LOGW(MOD, "%s: bad packet from the broker: %s", u->o.client_id, proto_strerror(used));
      uconn_abort(c, UPSTREAM_R_PROTOCOL, 0);
      return;
    }
    data += used;
    n -= (size_t)used;
    if (pkt) {
      u->own->packet(u, c, pkt, plen);
      if (!uconn_alive(u, c))
        return;
    }
    if ((want = mqtt_stream_wants(s)) != 0) {
      uint8_t *b;
      free(mqtt_stream_take_back(s));
      if (!(b = malloc(want))) {
        LOGW(MOD, "%s: out of memory for an incoming packet", u->o.client_id);
        uconn_abort(c, UPSTREAM_R_TCP, 0);
        return;
      }
      mqtt_stream_give(s, b);
    }
  }
  free(mqtt_stream_take_back(s));
}

/* Ciphertext from the broker: handshake, then decrypt and process. */
static void tls_pump(struct upstream *u, struct conn *c, const uint8_t *data, size_t n)
{
  while (n > 0) {
    size_t chunk = n < TLS_FEED_CHUNK ? n : TLS_FEED_CHUNK;

    if (tls_feed(c->tls, data, chunk) < 0) {
      uconn_abort(c, UPSTREAM_R_TLS, 0);
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
        (void)uconn_flush_tls(c); /* the alert, if any */
        uconn_abort(c, UPSTREAM_R_TLS, 0);
        return;
      }
      LOGD(MOD, "%s: TLS established with %s", u->o.client_id, u->o.host);
      if (uconn_flush_tls(c) < 0) {
        uconn_abort(c, UPSTREAM_R_TCP, 0);
        return;
      }
      send_connect(u, c);
      if (!uconn_alive(u, c))
        return;
    }
    for (;;) {
      int k = tls_read(c->tls, g_plain, sizeof g_plain);
      if (k == TLS_WANT_IO)
        break;
      if (k < 0) {
        enum upstream_reason why = k == TLS_ERR_CLOSED ? uconn_eof_reason(u) : UPSTREAM_R_TLS;
        LOGW(MOD, "%s: TLS: %s", u->o.client_id, tls_last_error(c->tls));
        uconn_abort(c, why, 0);
        return;
      }
      process_plain(u, c, g_plain, (size_t)k);
      if (!uconn_alive(u, c))
        return;
    }
  }
  if (uconn_flush_tls(c) < 0)
    uconn_abort(c, UPSTREAM_R_TCP, 0);
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

  if (nread == 0 || !uconn_alive(u, c))
    return;
  if (nread < 0) {
    if (nread == UV_EOF)
      LOGI(MOD, "%s: connection closed by %s in %s", u->o.client_id, u->o.host,
           uconn_state_names[u->state]);
    else
      LOGW(MOD, "%s: read error: %s", u->o.client_id, uv_strerror((int)nread));
    uconn_abort(c, uconn_eof_reason(u), 0);
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

  if (status == UV_ECANCELED || !uconn_alive(u, c))
    return;
  if (status < 0) {
    if (u->ai_cur && u->ai_cur->ai_next) {
      LOGD(MOD, "%s: connect failed (%s), trying the next address", u->o.client_id,
           uv_strerror(status));
      u->ai_cur = u->ai_cur->ai_next;
      uconn_discard(u, c);
      connect_current(u);
      return;
    }
    LOGW(MOD, "%s: connect to %s:%u failed: %s", u->o.client_id, u->o.host, u->o.port,
         uv_strerror(status));
    uconn_abort(c, UPSTREAM_R_TCP, 0);
    return;
  }
  uconn_free_addrinfo(u);
  (void)uv_tcp_nodelay(&c->tcp, 1);
  r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
  if (r < 0) {
    uconn_abort(c, UPSTREAM_R_TCP, 0);
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
    uconn_abort(c, UPSTREAM_R_TLS, 0);
    return;
  }
  uconn_set_state(u, U_HANDSHAKE);
  r = tls_handshake(c->tls);
  if (r != TLS_WANT_IO && r != TLS_OK) {
    LOGW(MOD, "%s: TLS handshake failed: %s", u->o.client_id, tls_last_error(c->tls));
    uconn_abort(c, UPSTREAM_R_TLS, 0);
    return;
  }
  if (uconn_flush_tls(c) < 0)
    uconn_abort(c, UPSTREAM_R_TCP, 0);
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
      u->own->lost(u, UPSTREAM_R_TCP, 0);
      return;
    }
    uconn_set_state(u, U_CONNECTING);
    u->conn = c;
    if (uv_tcp_connect(&c->creq, &c->tcp, ai->ai_addr, connect_cb) == 0)
      return;
    uconn_discard(u, c);
    u->ai_cur = ai->ai_next;
  }
  LOGW(MOD, "%s: no usable address for %s", u->o.client_id, u->o.host);
  u->own->lost(u, UPSTREAM_R_TCP, 0);
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
  /* An IP literal needs no resolver: with AI_NUMERICHOST getaddrinfo
   * answers it at once, here, without a trip through libuv's thread pool
   * for each of thousands of connections (and refuses a name without any
   * I/O: a name goes to the resolver below). */
  {
    struct addrinfo *res = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(u->o.host, u->port_str, &hints, &res) == 0 && res) {
      u->ai = u->ai_cur = res;
      connect_current(u);
      return;
    }
    hints.ai_flags = 0;
  }
  /* Allocated for the request only: thousands of upstreams would each
   * hold 160 bytes for a request made once a connection. */
  u->gai = malloc(sizeof *u->gai);
  if (!u->gai) {
    LOGW(MOD, "%s: cannot resolve %s: out of memory", u->o.client_id, u->o.host);
    u->own->lost(u, UPSTREAM_R_DNS, 0);
    return;
  }
  u->gai->data = u;
  r = uv_getaddrinfo(u->loop, u->gai, gai_cb, u->o.host, u->port_str, &hints);
  if (r < 0) {
    free(u->gai);
    u->gai = NULL;
    LOGW(MOD, "%s: cannot resolve %s: %s", u->o.client_id, u->o.host, uv_strerror(r));
    u->own->lost(u, UPSTREAM_R_DNS, 0);
    return;
  }
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
  struct upstream *u = req->data;

  free(req);
  u->gai = NULL;
  if (u->state != U_RESOLVING) {
    /* Stopped, or the attempt timed out meanwhile. */
    if (res)
      uv_freeaddrinfo(res);
    u->own->closing_progress(u);
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
    u->own->lost(u, UPSTREAM_R_DNS, 0);
    return;
  }
  u->ai = u->ai_cur = res;
  connect_current(u);
}

void uconn_start_attempt(struct upstream *u)
{
  u->attempt_started = uv_now(u->loop);
  uconn_set_state(u, U_RESOLVING);
  u->deadline = uv_now(u->loop) + u->o.connect_timeout_ms;
  uconn_arm_timer_at(u, u->deadline);
  LOGD(MOD, "%s: connecting to %s:%u%s", u->o.client_id, u->o.host, u->o.port,
       u->o.tls ? " (TLS)" : "");
  /* A request left over from a timed-out attempt is adopted. */
  if (!u->gai)
    start_resolve(u);
}