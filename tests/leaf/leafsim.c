/*
 * leafsim.c - fleetgw-leafsim: many simulated MQTT-SN v1.2 leaves in one
 * single-threaded process, for load tests and benchmarks of fleetgw.
 *
 * Each leaf has its own UDP socket bound to 127.0.0.1 (ephemeral port), so the
 * gateway sees N distinct addresses, and its own timer.  Everything runs on
 * one libuv loop (epoll underneath: no select(), no descriptor-number limit).
 *
 * The MQTT-SN codec below is deliberately written from the specification
 * (MQTT-SN v1.2, docs/protocol-notes.md §2) and does NOT use the
 * project's protocol/ library, so that the simulator and the gateway check
 * each other rather than sharing a bug.
 *
 * A leaf's life:
 *   IDLE -> CONNECT -> CONNACK -> REGISTER (publish topic) -> REGACK
 *        -> [SUBSCRIBE -> SUBACK] -> ACTIVE (publishing at --rate)
 *   ACTIVE -> DISCONNECT(Duration) -> ASLEEP -> PINGREQ(ClientId) -> drain
 *        -> PINGRESP -> CONNECT -> ACTIVE           (only with --sleep)
 *   stop (--duration elapsed, SIGINT or SIGTERM): in-flight QoS 1/2 drained,
 *        DISCONNECT, wait for the gateway's DISCONNECT, exit 0.
 * Like a constrained device, a leaf has at most one request outstanding
 * (CONNECT, REGISTER, SUBSCRIBE, QoS 1/2 PUBLISH, sleep or wake-up), which it
 * retransmits every --retry-ms up to --retries times.
 *
 * With --dtls each leaf first runs a DTLS 1.2 handshake (leaf_dtls.c) and
 * then lives the same life inside the association, one MQTT-SN datagram per
 * record:  IDLE -> HANDSHAKE -> CONNECT ...  A failed handshake or a fatal
 * alert sends the leaf back to IDLE and a new handshake follows --retry-ms
 * later; a request that gets no answer after its retries also ends the
 * association (close_notify), as nothing else tells a leaf that the gateway
 * has forgotten it.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <uv.h>

#include "leaf_dtls.h"
#include "leafsim_opts.h"

/* ------------------------------------------------------------------------ */
/* MQTT-SN v1.2 codec (spec section 5; docs/protocol-notes.md §2.1-§2.4)                 */
/* ------------------------------------------------------------------------ */

enum {
  SN_ADVERTISE = 0x00,
  SN_SEARCHGW = 0x01,
  SN_GWINFO = 0x02,
  SN_CONNECT = 0x04,
  SN_CONNACK = 0x05,
  SN_WILLTOPICREQ = 0x06,
  SN_WILLMSGREQ = 0x08,
  SN_REGISTER = 0x0A,
  SN_REGACK = 0x0B,
  SN_PUBLISH = 0x0C,
  SN_PUBACK = 0x0D,
  SN_PUBCOMP = 0x0E, /* note: PUBCOMP comes before PUBREC, unlike MQTT */
  SN_PUBREC = 0x0F,
  SN_PUBREL = 0x10,
  SN_SUBSCRIBE = 0x12,
  SN_SUBACK = 0x13,
  SN_PINGREQ = 0x16,
  SN_PINGRESP = 0x17,
  SN_DISCONNECT = 0x18,
};

enum {
  RC_ACCEPTED = 0x00,
  RC_CONGESTION = 0x01,
  RC_INVALID_TOPIC = 0x02,
  RC_NOT_SUPPORTED = 0x03,
};

/* Flags byte (spec 5.3.4). */
#define FL_DUP 0x80
#define FL_QOS_SHIFT 5
#define FL_QOS_MASK 0x60
#define FL_RETAIN 0x10
#define FL_CLEAN 0x04
#define TID_NORMAL 0x00
#define TID_PREDEF 0x01
#define TID_SHORT 0x02
#define TID_MASK 0x03

#define SN_PROTOCOL_ID 0x01
#define SN_MAX_MSG 65535u

/* Builds one message: a body is written after a 4-octet gap, then the header
 * is put in front of it in the 1- or 3-octet Length form. */
struct wbuf {
  uint8_t *b;
  size_t cap;
  size_t n; /* bytes of body written, starting at b + 4 */
  bool overflow;
};

static void w_init(struct wbuf *w, uint8_t *buf, size_t cap)
{
  w->b = buf;
  w->cap = cap;
  w->n = 0;
  w->overflow = cap < 4;
}

static void w_bytes(struct wbuf *w, const void *p, size_t len)
{
  if (w->overflow || len > w->cap - 4 - w->n) {
    w->overflow = true;
    return;
  }
  memcpy(w->b + 4 + w->n, p, len);
  w->n += len;
}

static void w_u8(struct wbuf *w, uint8_t v)
{
  w_bytes(w, &v, 1);
}

static void w_u16(struct wbuf *w, uint16_t v)
{
  uint8_t be[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  w_bytes(w, be, 2);
}

/* Finishes the message of type `type`; returns its total length, or 0 when it
 * did not fit.  Length counts the whole message including itself.  The short
 * form is used while the total is at most 255; beyond, the 3-octet form
 * (0x01 + 16-bit total), so a 254-octet body becomes 258 octets, not 256. */
static size_t w_finish(struct wbuf *w, uint8_t type)
{
  size_t body = w->n + 1; /* MsgType + variable part */
  size_t total, hdr;
  if (w->overflow)
    return 0;
  if (body + 1 <= 255) {
    hdr = 1;
    total = body + 1;
  } else {
    hdr = 3;
    total = body + 3;
    if (total > SN_MAX_MSG)
      return 0;
  }
  /* Move the header right in front of the body (body starts at b + 4). */
  size_t start = 4 - hdr - 1;
  if (hdr == 1) {
    w->b[start] = (uint8_t)total;
  } else {
    w->b[start] = 0x01;
    w->b[start + 1] = (uint8_t)(total >> 8);
    w->b[start + 2] = (uint8_t)total;
  }
  w->b[start + hdr] = type;
  if (start > 0)
    memmove(w->b, w->b + start, total);
  return total;
}

/* A decoded message: its type and a view of its variable part. */
struct msg {
  uint8_t type;
  const uint8_t *p;
  size_t n;
};

/* Splits a datagram into header and variable part.  The declared Length must
 * equal the datagram size exactly; returns 0 or -1. */
static int sn_parse(const uint8_t *d, size_t len, struct msg *m)
{
  size_t total, hdr;
  if (len < 2)
    return -1;
  if (d[0] == 0x01) {
    if (len < 4)
      return -1;
    total = ((size_t)d[1] << 8) | d[2];
    hdr = 3;
  } else {
    total = d[0];
    hdr = 1;
  }
  if (total != len || total < hdr + 1)
    return -1;
  m->type = d[hdr];
  m->p = d + hdr + 1;
  m->n = len - hdr - 1;
  return 0;
}

static uint16_t rd16(const uint8_t *p)
{
  return (uint16_t)((p[0] << 8) | p[1]);
}

/* Offset of the Flags byte of an encoded message (after Length and MsgType). */
static size_t flags_offset(const uint8_t *msg)
{
  return msg[0] == 0x01 ? 4 : 2;
}

/* ------------------------------------------------------------------------ */
/* Latency histogram: log-linear buckets, < 0.2 % relative error, 96 KiB.   */
/* ------------------------------------------------------------------------ */

#define H_SUB_BITS 9
#define H_SUB (1u << H_SUB_BITS)
#define H_BUCKETS (2 * H_SUB + (32 - H_SUB_BITS - 1) * H_SUB)

struct hist {
  uint64_t count[H_BUCKETS];
  uint64_t n;
  uint64_t max;
  double sum;
};

static unsigned hist_index(uint64_t v)
{
  if (v > UINT32_MAX)
    v = UINT32_MAX;
  if (v < 2 * H_SUB)
    return (unsigned)v;
  unsigned top = 63u - (unsigned)__builtin_clzll(v); /* >= H_SUB_BITS + 1 */
  unsigned e = top - H_SUB_BITS;
  return 2 * H_SUB + (e - 1) * H_SUB + (unsigned)((v >> e) - H_SUB);
}

static uint64_t hist_value(unsigned idx)
{
  if (idx < 2 * H_SUB)
    return idx;
  unsigned e = (idx - 2 * H_SUB) / H_SUB + 1;
  uint64_t m = (idx - 2 * H_SUB) % H_SUB + H_SUB;
  /* The middle of the bucket [m << e, (m + 1) << e). */
  return (m << e) + ((1ull << e) >> 1);
}

static void hist_add(struct hist *h, uint64_t v)
{
  h->count[hist_index(v)]++;
  h->n++;
  h->sum += (double)v;
  if (v > h->max)
    h->max = v;
}

static uint64_t hist_pct(const struct hist *h, double pct)
{
  if (h->n == 0)
    return 0;
  uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)h->n);
  uint64_t seen = 0;
  if (rank < 1)
    rank = 1;
  for (unsigned i = 0; i < H_BUCKETS; i++) {
    seen += h->count[i];
    if (seen >= rank) {
      uint64_t v = hist_value(i);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}

/* ------------------------------------------------------------------------ */
/* The simulator                                                             */
/* ------------------------------------------------------------------------ */

#define MAX_ID_LEN 64
#define MAX_TOPIC_LEN 512
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
/* At most this many QoS 0 publishes per leaf per timer tick, so that a leaf
 * that has fallen behind catches up without starving the others. */
#define QOS0_BURST 64
/* How long the final stop waits for in-flight QoS 1/2 and for DISCONNECTs. */
#define DRAIN_MS 2000
#define BYE_MS 1500

enum lstate {
  ST_IDLE,        /* not connected; (re)connects at `due` */
  ST_HANDSHAKE,   /* --dtls: DTLS handshake under way */
  ST_CONNECTING,  /* CONNECT outstanding */
  ST_REGISTERING, /* REGISTER of the publish topic outstanding */
  ST_SUBSCRIBING, /* SUBSCRIBE outstanding */
  ST_ACTIVE,      /* connected: publishing */
  ST_SLEEPING,    /* DISCONNECT(Duration) outstanding */
  ST_ASLEEP,      /* asleep until `due` */
  ST_WAKING,      /* PINGREQ(ClientId) outstanding: buffered messages drain */
  ST_BYE,         /* final DISCONNECT outstanding */
  ST_DONE,        /* finished (or never started) */
};

static const char *const state_names[] = {"idle",        "handshake", "connecting", "registering",
                                          "subscribing", "active",    "sleeping",   "asleep",
                                          "waking",      "bye",       "done"};

struct topic_map {
  uint16_t id;
  char *name;
};

struct leaf {
  struct sim *sim;
  uv_udp_t udp;
  uv_timer_t timer;
  unsigned idx;
  enum lstate st;
  char id[MAX_ID_LEN + 1];
  char pub_topic[MAX_TOPIC_LEN + 1];
  char sub_topic[MAX_TOPIC_LEN + 1];
  uint16_t pub_topic_id; /* 0 = not registered */
  uint16_t next_msgid;
  bool ever_connected;
  bool resume;    /* next CONNECT resumes the session (CleanSession=0) */
  uint64_t due;   /* ns: reconnect (IDLE), go to sleep (ACTIVE), wake (ASLEEP) */
  uint64_t last_tx;

  /* The one outstanding request, kept encoded for retransmission. */
  bool req_active;
  uint8_t req_reply;  /* the message type that completes it */
  uint16_t req_msgid; /* 0 when the reply carries none */
  bool req_is_pub;
  unsigned req_tries;
  uint64_t req_first;    /* ns, first transmission (latency start) */
  uint64_t req_deadline; /* ns, next retransmission */
  size_t req_len;
  uint8_t *req;

  /* Pacing of publishes within the current active phase. */
  uint64_t pace_base;
  uint64_t pace_sent;
  uint64_t seq;

  struct topic_map *topics; /* ids the gateway told us (REGISTER, SUBACK) */
  size_t ntopics, captopics;

  struct leaf_dtls *dtls; /* --dtls: the association, or NULL */
  uint64_t hs_start;      /* ns: the handshake began */
};

struct counters {
  uint64_t connects_sent, connacks, connack_congestion, connack_refused;
  uint64_t pub_sent, pub_acked, pub_rejected, pub_congestion, pub_invalid_topic;
  uint64_t retransmissions, timeouts, send_errors, send_eagain;
  uint64_t received, malformed, unexpected, gw_disconnects, recv_errors;
  uint64_t register_refused, subscribe_refused;
  uint64_t sleeps, wakes;
  uint64_t hs_ok, hs_failed, dtls_lost; /* --dtls */
};

struct sim {
  uv_loop_t *loop;
  struct opts o;
  struct sockaddr_storage gw_addr;
  struct leaf *leaves;
  uv_timer_t connect_timer;
  uv_timer_t stop_timer;
  uv_timer_t hold_timer; /* --start-together */
  uv_signal_t sigint, sigterm;
  bool held;             /* --start-together: publishing not started yet */
  unsigned started;      /* leaves whose first CONNECT went out */
  unsigned connected;    /* leaves that got CONNACK accepted at least once */
  unsigned done;         /* leaves in ST_DONE */
  unsigned open_handles; /* handles not yet closed */
  int stop_phase;        /* 0 running, 1 draining in-flight, 2 saying bye, 3 closing */
  uint64_t t_start, t_first_connect, t_last_connack, t_stop;
  uint64_t t_first_pub, t_last_pub; /* first publish sent; last sent (QoS 0) or acked */
  uint8_t *payload; /* payload template of --payload-size bytes */
  uint8_t *pl_buf;  /* one payload being built */
  struct counters c;
  struct hist lat;

  /* --dtls */
  struct leaf_dtls_ctx *dtls;
  struct leaf_dtls_keys keys; /* --psk-hex, --psk-file */
  struct hist hs_lat;     /* handshake times, us */
  unsigned dtls_reported; /* failures printed so far */
  bool warned_too_big;

  uint8_t rbuf[SN_MAX_MSG + 1];
  int exit_code;
};

static uint64_t now_ns(void)
{
  return uv_hrtime();
}

#define VLOG(l, ...)                                                                               \
  do {                                                                                             \
    if ((l)->sim->o.verbose) {                                                                     \
      fprintf(stderr, "leafsim: %s: ", (l)->id);                                                   \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
    }                                                                                              \
  } while (0)

/* Expands a --topic / --subscribe pattern: %s is the client id, %% a '%'. */
static int expand(const char *fmt, const char *id, char *out, size_t cap)
{
  size_t n = 0;
  for (const char *p = fmt; *p; p++) {
    const char *s = p;
    size_t len = 1;
    if (p[0] == '%' && p[1] == 's') {
      s = id;
      len = strlen(id);
      p++;
    } else if (p[0] == '%' && p[1] == '%') {
      p++;
    }
    if (n + len >= cap)
      return -1;
    memcpy(out + n, s, len);
    n += len;
  }
  out[n] = '\0';
  return 0;
}

static uint16_t new_msgid(struct leaf *l)
{
  if (++l->next_msgid == 0)
    l->next_msgid = 1;
  return l->next_msgid;
}

static void set_state(struct leaf *l, enum lstate st)
{
  if (l->st == st)
    return;
  VLOG(l, "%s -> %s", state_names[l->st], state_names[st]);
  if (st == ST_DONE)
    l->sim->done++;
  l->st = st;
}

static int udp_send(struct leaf *l, const uint8_t *data, size_t len)
{
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int rc = uv_udp_try_send(&l->udp, &b, 1, (const struct sockaddr *)&l->sim->gw_addr);
  if (rc < 0) {
    if (rc == UV_EAGAIN)
      l->sim->c.send_eagain++;
    else
      l->sim->c.send_errors++;
    return rc;
  }
  return 0;
}

static int dtls_send(struct leaf *l, const uint8_t *data, size_t len);
static void dtls_begin(struct leaf *l);
static void dtls_drop(struct leaf *l);

static bool needs_handshake(const struct leaf *l)
{
  return l->sim->dtls && !(l->dtls && leaf_dtls_established(l->dtls));
}

static int send_raw(struct leaf *l, const uint8_t *data, size_t len)
{
  int rc = l->sim->dtls ? dtls_send(l, data, len) : udp_send(l, data, len);
  if (rc < 0)
    return rc;
  l->last_tx = now_ns();
  return 0;
}

/* Sends a request and remembers it for retransmission until `reply` (with
 * `msgid`, if nonzero) arrives.  A failed first send is retried like a lost
 * datagram. */
static void send_request(struct leaf *l, size_t len, uint8_t reply, uint16_t msgid, bool is_pub)
{
  uint64_t t = now_ns();
  l->req_active = true;
  l->req_len = len;
  l->req_reply = reply;
  l->req_msgid = msgid;
  l->req_is_pub = is_pub;
  l->req_tries = 0;
  l->req_first = t;
  l->req_deadline = t + (uint64_t)l->sim->o.retry_ms * NS_PER_MS;
  (void)send_raw(l, l->req, len);
}

static size_t req_cap(const struct sim *s)
{
  return s->o.payload_size + MAX_TOPIC_LEN + MAX_ID_LEN + 64;
}

static void send_connect(struct leaf *l)
{
  struct sim *s = l->sim;
  struct wbuf w;
  w_init(&w, l->req, req_cap(s));
  w_u8(&w, l->resume ? 0 : FL_CLEAN);
  w_u8(&w, SN_PROTOCOL_ID);
  w_u16(&w, (uint16_t)s->o.keepalive);
  w_bytes(&w, l->id, strlen(l->id));
  size_t n = w_finish(&w, SN_CONNECT);
  if (s->t_first_connect == 0)
    s->t_first_connect = now_ns();
  s->c.connects_sent++;
  set_state(l, ST_CONNECTING);
  send_request(l, n, SN_CONNACK, 0, false);
}

static void send_register(struct leaf *l)
{
  struct wbuf w;
  uint16_t mid = new_msgid(l);
  w_init(&w, l->req, req_cap(l->sim));
  w_u16(&w, 0); /* TopicId is 0x0000 when a client registers */
  w_u16(&w, mid);
  w_bytes(&w, l->pub_topic, strlen(l->pub_topic));
  set_state(l, ST_REGISTERING);
  send_request(l, w_finish(&w, SN_REGISTER), SN_REGACK, mid, false);
}

static void send_subscribe(struct leaf *l)
{
  struct wbuf w;
  uint16_t mid = new_msgid(l);
  int q = l->sim->o.qos < 0 ? 0 : l->sim->o.qos;
  w_init(&w, l->req, req_cap(l->sim));
  w_u8(&w, (uint8_t)((unsigned)q << FL_QOS_SHIFT) | TID_NORMAL); /* a topic name follows */
  w_u16(&w, mid);
  w_bytes(&w, l->sub_topic, strlen(l->sub_topic));
  set_state(l, ST_SUBSCRIBING);
  send_request(l, w_finish(&w, SN_SUBSCRIBE), SN_SUBACK, mid, false);
}

static void send_simple(struct leaf *l, uint8_t type)
{
  uint8_t buf[8];
  struct wbuf w;
  w_init(&w, buf, sizeof buf);
  (void)send_raw(l, buf, w_finish(&w, type));
}

static void send_msgid_msg(struct leaf *l, uint8_t type, uint16_t mid)
{
  uint8_t buf[8];
  struct wbuf w;
  w_init(&w, buf, sizeof buf);
  w_u16(&w, mid);
  (void)send_raw(l, buf, w_finish(&w, type));
}

static void send_ack5(struct leaf *l, uint8_t type, uint16_t topic, uint16_t mid, uint8_t rc)
{
  uint8_t buf[12];
  struct wbuf w;
  w_init(&w, buf, sizeof buf);
  w_u16(&w, topic);
  w_u16(&w, mid);
  w_u8(&w, rc);
  (void)send_raw(l, buf, w_finish(&w, type));
}

/* Builds the payload "<client id> <seq> " padded with the template to the
 * configured size (cut when the size is smaller than the prefix). */
static size_t make_payload(struct leaf *l, uint8_t *out)
{
  struct sim *s = l->sim;
  char head[MAX_ID_LEN + 32];
  int hl = snprintf(head, sizeof head, "%s %" PRIu64 " ", l->id, l->seq);
  size_t n = s->o.payload_size;
  size_t h = hl < 0 ? 0 : (size_t)hl;
  if (h > n)
    h = n;
  memcpy(out, head, h);
  memcpy(out + h, s->payload + h, n - h);
  return n;
}

/* Sends the next publish.  QoS 1/2 become the outstanding request. */
static void send_publish(struct leaf *l)
{
  struct sim *s = l->sim;
  struct wbuf w;
  uint8_t *pl = s->pl_buf;
  int q = s->o.qos;
  uint8_t tidtype = TID_NORMAL;
  uint16_t tid = l->pub_topic_id;
  uint16_t mid = 0;

  if (s->o.predefined) {
    tidtype = TID_PREDEF;
    tid = (uint16_t)s->o.predefined;
  }
  if (q > 0)
    mid = new_msgid(l);
  l->seq++;
  size_t pn = make_payload(l, pl);
  w_init(&w, l->req, req_cap(s));
  w_u8(&w, (uint8_t)(((unsigned)(q < 0 ? 3 : q) << FL_QOS_SHIFT) | tidtype));
  w_u16(&w, tid);
  w_u16(&w, mid);
  w_bytes(&w, pl, pn);
  size_t n = w_finish(&w, SN_PUBLISH);
  if (n == 0) {
    s->c.send_errors++;
    return;
  }
  s->c.pub_sent++;
  l->pace_sent++;
  if (s->t_first_pub == 0)
    s->t_first_pub = now_ns();
  if (q <= 0)
    s->t_last_pub = now_ns();
  if (q >= 1)
    send_request(l, n, q == 1 ? SN_PUBACK : SN_PUBREC, mid, true);
  else
    (void)send_raw(l, l->req, n);
}

static void send_sleep(struct leaf *l)
{
  struct wbuf w;
  w_init(&w, l->req, req_cap(l->sim));
  w_u16(&w, (uint16_t)l->sim->o.sleep_s);
  l->sim->c.sleeps++;
  set_state(l, ST_SLEEPING);
  send_request(l, w_finish(&w, SN_DISCONNECT), SN_DISCONNECT, 0, false);
}

static void send_wake(struct leaf *l)
{
  struct wbuf w;
  w_init(&w, l->req, req_cap(l->sim));
  w_bytes(&w, l->id, strlen(l->id));
  l->sim->c.wakes++;
  set_state(l, ST_WAKING);
  send_request(l, w_finish(&w, SN_PINGREQ), SN_PINGRESP, 0, false);
}

static void send_bye(struct leaf *l)
{
  struct wbuf w;
  w_init(&w, l->req, req_cap(l->sim));
  set_state(l, ST_BYE);
  send_request(l, w_finish(&w, SN_DISCONNECT), SN_DISCONNECT, 0, false);
}

/* The publish schedule of an active phase starts at t. */
static void start_schedule(struct leaf *l, uint64_t t)
{
  struct sim *s = l->sim;
  l->pace_base = t;
  if (s->o.rate > 0) {
    /* Spread the leaves over one publish interval (a golden-ratio sequence
     * by leaf index), so that leaves that connected together do not all
     * publish in the same millisecond: the offered load is then even, not a
     * burst of N datagrams every 1/rate seconds. */
    double frac = fmod((double)l->idx * 0.6180339887498949, 1.0);
    l->pace_base += (uint64_t)(frac / s->o.rate * (double)NS_PER_S);
  }
  l->pace_sent = 0;
}

/* Starts (or restarts) the publish schedule of an active phase. */
static void enter_active(struct leaf *l)
{
  struct sim *s = l->sim;
  uint64_t t = now_ns();
  set_state(l, ST_ACTIVE);
  start_schedule(l, t);
  l->due = 0;
  if (s->o.sleep_s > 0) {
    /* Odd and even leaves alternate: the odd ones first sleep after half a
     * period, so about half of the fleet is asleep at any time. */
    double active = s->o.sleep_s;
    if (!l->resume && (l->idx % 2) == 1)
      active /= 2;
    l->due = t + (uint64_t)(active * (double)NS_PER_S);
  }
}

/* After CONNACK (or after REGACK / SUBACK): the next setup step. */
static void setup_next(struct leaf *l)
{
  struct sim *s = l->sim;
  if (l->st == ST_CONNECTING && s->o.rate > 0 && !s->o.predefined && l->pub_topic_id == 0) {
    send_register(l);
    return;
  }
  if ((l->st == ST_CONNECTING || l->st == ST_REGISTERING) && s->o.sub_fmt && !l->resume) {
    send_subscribe(l);
    return;
  }
  enter_active(l);
}

static void go_idle(struct leaf *l, uint64_t delay_ms)
{
  l->req_active = false;
  l->pub_topic_id = 0;
  l->resume = false;
  l->pace_base = 0; /* the next CONNECT is a fresh start: register, subscribe */
  l->due = now_ns() + delay_ms * NS_PER_MS;
  set_state(l, ST_IDLE);
}

static const char *topic_name(struct leaf *l, uint8_t tidtype, uint16_t tid, char *tmp,
                              size_t cap)
{
  if (tidtype == TID_SHORT) {
    tmp[0] = (char)(tid >> 8);
    tmp[1] = (char)tid;
    tmp[2] = '\0';
    return tmp;
  }
  if (tidtype == TID_NORMAL) {
    for (size_t i = 0; i < l->ntopics; i++)
      if (l->topics[i].id == tid)
        return l->topics[i].name;
  }
  snprintf(tmp, cap, "%s:%u", tidtype == TID_PREDEF ? "predefined" : "unknown", tid);
  return tmp;
}

static int remember_topic(struct leaf *l, uint16_t id, const char *name, size_t len)
{
  for (size_t i = 0; i < l->ntopics; i++) {
    if (l->topics[i].id == id) {
      char *nn = strndup(name, len);
      if (!nn)
        return -1;
      free(l->topics[i].name);
      l->topics[i].name = nn;
      return 0;
    }
  }
  if (l->ntopics == l->captopics) {
    size_t cap = l->captopics ? l->captopics * 2 : 4;
    struct topic_map *t = realloc(l->topics, cap * sizeof *t);
    if (!t)
      return -1;
    l->topics = t;
    l->captopics = cap;
  }
  char *nn = strndup(name, len);
  if (!nn)
    return -1;
  l->topics[l->ntopics].id = id;
  l->topics[l->ntopics].name = nn;
  l->ntopics++;
  return 0;
}

/* Prints "<client id> <topic> <payload>"; bytes outside printable ASCII (and
 * the backslash) are written as \xHH so that one message is one line. */
static void print_publish(struct leaf *l, const char *topic, const uint8_t *p, size_t n)
{
  printf("%s %s ", l->id, topic);
  for (size_t i = 0; i < n; i++) {
    if (p[i] >= 0x20 && p[i] < 0x7F && p[i] != '\\')
      putchar(p[i]);
    else
      printf("\\x%02X", p[i]);
  }
  putchar('\n');
}

static void on_publish(struct leaf *l, const struct msg *m)
{
  struct sim *s = l->sim;
  char tmp[32];
  if (m->n < 5) {
    s->c.malformed++;
    return;
  }
  uint8_t flags = m->p[0];
  unsigned q = (flags & FL_QOS_MASK) >> FL_QOS_SHIFT;
  uint16_t tid = rd16(m->p + 1), mid = rd16(m->p + 3);
  uint8_t tt = flags & TID_MASK;
  bool known = tt != TID_NORMAL;
  for (size_t i = 0; !known && i < l->ntopics; i++)
    known = l->topics[i].id == tid;
  if (!known) {
    /* An id we were never told: the spec's answer is "invalid topic id". */
    s->c.unexpected++;
    if (q == 1 || q == 2)
      send_ack5(l, SN_PUBACK, tid, mid, RC_INVALID_TOPIC);
    return;
  }
  s->c.received++;
  if (s->o.sub_fmt)
    print_publish(l, topic_name(l, tt, tid, tmp, sizeof tmp), m->p + 5, m->n - 5);
  if (q == 1)
    send_ack5(l, SN_PUBACK, tid, mid, RC_ACCEPTED);
  else if (q == 2)
    send_msgid_msg(l, SN_PUBREC, mid);
}

/* A reply that matches the outstanding request. */
static bool matches(const struct leaf *l, uint8_t type, const struct msg *m)
{
  if (!l->req_active || l->req_reply != type)
    return false;
  switch (type) {
  case SN_REGACK:
  case SN_PUBACK:
    return m->n == 5 && rd16(m->p + 2) == l->req_msgid;
  case SN_SUBACK:
    return m->n == 6 && rd16(m->p + 3) == l->req_msgid;
  case SN_PUBREC:
  case SN_PUBCOMP:
    return m->n == 2 && rd16(m->p) == l->req_msgid;
  default:
    return true;
  }
}

static void pub_done(struct leaf *l)
{
  struct sim *s = l->sim;
  uint64_t t = now_ns();
  uint64_t us = (t - l->req_first) / 1000u;
  hist_add(&s->lat, us);
  s->t_last_pub = t;
  s->c.pub_acked++;
  l->req_active = false;
}

static void duration_cb(uv_timer_t *h);
static void arm(struct leaf *l, uint64_t t);

/* --start-together: every leaf has had its CONNACK and the wait is over (or
 * the time-out for the stragglers): each active leaf's schedule starts now,
 * and so does --duration. */
static void hold_cb(uv_timer_t *h)
{
  struct sim *s = h->loop->data;
  uint64_t t = now_ns();
  if (!s->held || s->stop_phase > 0)
    return;
  s->held = false;
  if (s->connected < s->o.leaves)
    fprintf(stderr, "leafsim: %u of %u leaves connected; publishing starts anyway\n",
            s->connected, s->o.leaves);
  for (unsigned i = 0; i < s->o.leaves; i++) {
    struct leaf *l = &s->leaves[i];
    if (l->st == ST_ACTIVE) {
      start_schedule(l, t);
      arm(l, t);
    }
  }
  if (s->o.duration > 0)
    uv_timer_start(&s->stop_timer, duration_cb, (uint64_t)(s->o.duration * 1000.0), 0);
}

static void on_connack(struct leaf *l, const struct msg *m)
{
  struct sim *s = l->sim;
  if (l->st != ST_CONNECTING || !matches(l, SN_CONNACK, m) || m->n != 1) {
    s->c.unexpected++;
    return;
  }
  l->req_active = false;
  if (m->p[0] == RC_ACCEPTED) {
    s->c.connacks++;
    if (!l->ever_connected) {
      l->ever_connected = true;
      s->connected++;
      s->t_last_connack = now_ns();
      if (s->held && s->connected == s->o.leaves)
        uv_timer_start(&s->hold_timer, hold_cb, (uint64_t)s->o.start_together_ms, 0);
    }
    if (s->stop_phase > 0) {
      send_bye(l);
      return;
    }
    setup_next(l);
    return;
  }
  if (m->p[0] == RC_CONGESTION)
    s->c.connack_congestion++;
  else
    s->c.connack_refused++;
  VLOG(l, "CONNACK rc=0x%02X, retrying in %u ms", m->p[0], s->o.congestion_ms);
  go_idle(l, s->o.congestion_ms);
}

static void on_puback(struct leaf *l, const struct msg *m)
{
  struct sim *s = l->sim;
  if (m->n != 5) {
    s->c.malformed++;
    return;
  }
  uint8_t rc = m->p[4];
  bool ours = l->st == ST_ACTIVE && matches(l, SN_PUBACK, m);
  if (ours && rc == RC_ACCEPTED) {
    pub_done(l);
    return;
  }
  if (rc == RC_ACCEPTED) {
    s->c.unexpected++; /* a duplicate ack after a retransmission */
    return;
  }
  /* A rejection may come for any QoS, even 0. */
  if (ours)
    l->req_active = false;
  s->c.pub_rejected++;
  if (rc == RC_INVALID_TOPIC && l->st == ST_ACTIVE && !s->o.predefined) {
    s->c.pub_invalid_topic++;
    l->pub_topic_id = 0;
    if (!l->req_active)
      send_register(l);
  } else if (rc == RC_CONGESTION) {
    /* Congestion: hold off publishing for a while (T_WAIT, shortened). */
    s->c.pub_congestion++;
    l->pace_base = now_ns() + (uint64_t)s->o.congestion_ms * NS_PER_MS;
    l->pace_sent = 0;
  }
}

static void on_datagram(struct leaf *l, const uint8_t *d, size_t len)
{
  struct sim *s = l->sim;
  struct msg m;
  if (sn_parse(d, len, &m) != 0) {
    s->c.malformed++;
    return;
  }
  switch (m.type) {
  case SN_CONNACK:
    on_connack(l, &m);
    break;
  case SN_REGACK:
    if (l->st != ST_REGISTERING || !matches(l, SN_REGACK, &m)) {
      s->c.unexpected++;
      break;
    }
    l->req_active = false;
    if (m.p[4] != RC_ACCEPTED) {
      s->c.register_refused++;
      go_idle(l, s->o.congestion_ms);
      break;
    }
    l->pub_topic_id = rd16(m.p);
    if (remember_topic(l, l->pub_topic_id, l->pub_topic, strlen(l->pub_topic)) != 0)
      s->c.send_errors++;
    if (s->stop_phase > 0)
      send_bye(l);
    else if (l->resume || l->pace_base != 0)
      enter_active(l); /* a re-registration after "invalid topic id" */
    else
      setup_next(l);
    break;
  case SN_SUBACK:
    if (l->st != ST_SUBSCRIBING || !matches(l, SN_SUBACK, &m)) {
      s->c.unexpected++;
      break;
    }
    l->req_active = false;
    if (m.p[5] != RC_ACCEPTED) {
      s->c.subscribe_refused++;
    } else if (rd16(m.p + 1) != 0) {
      /* A concrete topic: later PUBLISHes carry this id. */
      if (remember_topic(l, rd16(m.p + 1), l->sub_topic, strlen(l->sub_topic)) != 0)
        s->c.send_errors++;
    }
    if (s->stop_phase > 0)
      send_bye(l);
    else
      enter_active(l);
    break;
  case SN_REGISTER: /* the gateway names a topic before publishing on it */
    if (m.n < 5) {
      s->c.malformed++;
      break;
    }
    if (remember_topic(l, rd16(m.p), (const char *)m.p + 4, m.n - 4) != 0) {
      send_ack5(l, SN_REGACK, rd16(m.p), rd16(m.p + 2), RC_CONGESTION);
      break;
    }
    send_ack5(l, SN_REGACK, rd16(m.p), rd16(m.p + 2), RC_ACCEPTED);
    break;
  case SN_PUBLISH:
    on_publish(l, &m);
    if (l->st == ST_WAKING) /* T_retry restarts on every message while awake */
      l->req_deadline = now_ns() + (uint64_t)s->o.retry_ms * NS_PER_MS;
    break;
  case SN_PUBREL:
    if (m.n != 2) {
      s->c.malformed++;
      break;
    }
    send_msgid_msg(l, SN_PUBCOMP, rd16(m.p));
    break;
  case SN_PUBACK:
    on_puback(l, &m);
    break;
  case SN_PUBREC:
    if (l->st != ST_ACTIVE || !matches(l, SN_PUBREC, &m)) {
      s->c.unexpected++;
      break;
    }
    /* The second half of QoS 2: PUBREL replaces PUBLISH as the request;
     * latency keeps counting from the first PUBLISH. */
    {
      uint64_t first = l->req_first;
      struct wbuf w;
      w_init(&w, l->req, req_cap(s));
      w_u16(&w, l->req_msgid);
      send_request(l, w_finish(&w, SN_PUBREL), SN_PUBCOMP, l->req_msgid, true);
      l->req_first = first;
    }
    break;
  case SN_PUBCOMP:
    if (l->st != ST_ACTIVE || !matches(l, SN_PUBCOMP, &m)) {
      s->c.unexpected++;
      break;
    }
    pub_done(l);
    break;
  case SN_PINGREQ:
    send_simple(l, SN_PINGRESP);
    break;
  case SN_PINGRESP:
    if (l->st == ST_WAKING && matches(l, SN_PINGRESP, &m)) {
      /* Everything buffered has arrived; connect again to publish. */
      l->req_active = false;
      if (s->stop_phase > 0) {
        send_bye(l);
      } else {
        l->resume = true;
        send_connect(l);
      }
    }
    break;
  case SN_DISCONNECT:
    if (matches(l, SN_DISCONNECT, &m) && (l->st == ST_SLEEPING || l->st == ST_BYE)) {
      l->req_active = false;
      if (l->st == ST_BYE) {
        set_state(l, ST_DONE);
      } else {
        set_state(l, ST_ASLEEP);
        l->due = now_ns() + (uint64_t)(s->o.sleep_s * (double)NS_PER_S);
      }
      break;
    }
    if (l->st == ST_DONE || l->st == ST_IDLE)
      break;
    /* Unsolicited: the gateway ended the session. */
    s->c.gw_disconnects++;
    VLOG(l, "DISCONNECT from the gateway in state %s", state_names[l->st]);
    if (s->stop_phase > 0)
      set_state(l, ST_DONE);
    else
      go_idle(l, s->o.congestion_ms);
    break;
  case SN_WILLTOPICREQ:
  case SN_WILLMSGREQ:
  case SN_ADVERTISE:
  case SN_GWINFO:
  default:
    s->c.unexpected++;
    break;
  }
}

/* Retransmits the outstanding request, or gives up on it. */
static void retry_request(struct leaf *l, uint64_t t)
{
  struct sim *s = l->sim;
  if (l->req_tries >= s->o.retries) {
    s->c.timeouts++;
    l->req_active = false;
    VLOG(l, "no reply (type 0x%02X) after %u retries in state %s", l->req_reply, l->req_tries,
         state_names[l->st]);
    if (l->st == ST_BYE || s->stop_phase >= 2)
      set_state(l, ST_DONE);
    else
      go_idle(l, s->o.congestion_ms); /* the spec: the connection is lost */
    dtls_drop(l);
    return;
  }
  l->req_tries++;
  s->c.retransmissions++;
  if (l->req_is_pub && l->req[flags_offset(l->req) - 1] == SN_PUBLISH)
    l->req[flags_offset(l->req)] |= FL_DUP;
  l->req_deadline = t + (uint64_t)s->o.retry_ms * NS_PER_MS;
  (void)send_raw(l, l->req, l->req_len);
}

/* Publishes that are due by time t in the current active phase. */
static uint64_t pubs_due(const struct leaf *l, uint64_t t)
{
  if (t < l->pace_base)
    return 0;
  return (uint64_t)((double)(t - l->pace_base) * l->sim->o.rate / (double)NS_PER_S) + 1;
}

static void arm(struct leaf *l, uint64_t t);

/* Does whatever is due for one leaf, then re-arms its timer. */
static void service(struct leaf *l)
{
  struct sim *s = l->sim;
  uint64_t t = now_ns();

  if (l->req_active && t >= l->req_deadline)
    retry_request(l, t);

  switch (l->st) {
  case ST_IDLE:
    if (s->stop_phase > 0)
      set_state(l, ST_DONE);
    else if (t >= l->due && needs_handshake(l))
      dtls_begin(l);
    else if (t >= l->due)
      send_connect(l);
    break;
  case ST_HANDSHAKE:
    if (s->stop_phase > 0) {
      dtls_drop(l);
      set_state(l, ST_DONE);
    }
    break;
  case ST_ACTIVE:
    if (s->stop_phase > 0) {
      if (s->o.qos == -1)
        set_state(l, ST_DONE); /* never connected: nothing to say goodbye to */
      else if (!l->req_active || s->stop_phase >= 2)
        send_bye(l);
      break;
    }
    if (l->req_active)
      break;
    if (s->o.sleep_s > 0 && l->due && t >= l->due) {
      send_sleep(l);
      break;
    }
    if (s->o.rate > 0 && !s->held && (l->pub_topic_id || s->o.predefined)) {
      uint64_t due = pubs_due(l, t);
      if (s->o.qos >= 1) {
        if (l->pace_sent < due)
          send_publish(l);
      } else {
        for (int i = 0; i < QOS0_BURST && l->pace_sent < due; i++)
          send_publish(l);
      }
    }
    if (s->o.keepalive && t > l->last_tx &&
        t - l->last_tx >= (uint64_t)s->o.keepalive * 750u * NS_PER_MS)
      send_simple(l, SN_PINGREQ);
    break;
  case ST_ASLEEP:
    if (s->stop_phase > 0)
      send_bye(l);
    else if (t >= l->due)
      send_wake(l);
    break;
  default:
    break;
  }
  arm(l, t);
}

static void timer_cb(uv_timer_t *h)
{
  service(h->data);
}

/* Sets the leaf's timer to the earliest thing it has to do next. */
static void arm(struct leaf *l, uint64_t t)
{
  struct sim *s = l->sim;
  uint64_t next = UINT64_MAX;
  if (l->req_active)
    next = l->req_deadline;
  switch (l->st) {
  case ST_IDLE:
  case ST_ASLEEP:
    if (l->due < next)
      next = l->due;
    break;
  case ST_ACTIVE:
    if (s->stop_phase > 0 || l->req_active)
      break;
    if (s->o.sleep_s > 0 && l->due && l->due < next)
      next = l->due;
    if (s->o.rate > 0 && !s->held && (l->pub_topic_id || s->o.predefined)) {
      uint64_t at = l->pace_base + (uint64_t)((double)l->pace_sent * (double)NS_PER_S / s->o.rate);
      if (at < next)
        next = at;
    }
    if (s->o.keepalive) {
      uint64_t at = l->last_tx + (uint64_t)s->o.keepalive * 750u * NS_PER_MS;
      if (at < next)
        next = at;
    }
    break;
  case ST_DONE:
    uv_timer_stop(&l->timer);
    return;
  default:
    break;
  }
  if (next == UINT64_MAX) {
    uv_timer_stop(&l->timer);
    return;
  }
  /* libuv timers count whole milliseconds; round up so we are never early
   * (a timer that fires early would only re-arm itself).  Never 0: libuv
   * runs a timer re-armed with 0 from its own callback again in the same
   * pass, with the loop's clock frozen, so a leaf that has fallen behind
   * its schedule would starve the I/O and every other timer (--duration
   * included).  At least 1 ms lets the loop poll between bursts. */
  uint64_t ms = next <= t ? 1 : (next - t + NS_PER_MS - 1) / NS_PER_MS;
  uv_timer_start(&l->timer, timer_cb, ms, 0);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct leaf *l = h->data;
  (void)suggested;
  /* One shared buffer: each datagram is handled before the next read. */
  buf->base = (char *)l->sim->rbuf;
  buf->len = sizeof l->sim->rbuf;
}

static bool same_addr(const struct sockaddr *a, const struct sockaddr_storage *b)
{
  if (a->sa_family != b->ss_family)
    return false;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a;
    const struct sockaddr_in *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
  const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static void recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags)
{
  struct leaf *l = h->data;
  if (nread < 0) {
    l->sim->c.recv_errors++;
    return;
  }
  if (addr == NULL || nread == 0)
    return;
  if ((flags & UV_UDP_PARTIAL) || !same_addr(addr, &l->sim->gw_addr)) {
    l->sim->c.malformed++;
    return;
  }
  if (l->sim->dtls) {
    if (l->dtls)
      (void)leaf_dtls_input(l->dtls, (const uint8_t *)buf->base, (size_t)nread);
  } else {
    on_datagram(l, (const uint8_t *)buf->base, (size_t)nread);
  }
  service(l);
}

/* ------------------------------------------------------------------------ */
/* --dtls: one DTLS 1.2 association per leaf (leaf_dtls.c)                   */
/* ------------------------------------------------------------------------ */

#define DTLS_REPORT_MAX 10 /* failures printed on stderr without -v */

static int dtls_send(struct leaf *l, const uint8_t *data, size_t len)
{
  struct sim *s = l->sim;
  int rc = l->dtls ? leaf_dtls_send(l->dtls, data, len) : LEAF_DTLS_ESTATE;
  if (rc == LEAF_DTLS_ETOOBIG && !s->warned_too_big) {
    s->warned_too_big = true;
    fprintf(stderr, "leafsim: a %zu-byte datagram does not fit a DTLS record (%zu): raise --mtu\n",
            len, leaf_dtls_max_data(l->dtls));
  }
  if (rc < 0)
    s->c.send_errors++;
  return rc;
}

static int dtls_io(void *ud, const uint8_t *data, size_t len)
{
  return udp_send(ud, data, len);
}

/* Lets the association go (with close_notify if it was up). */
static void dtls_drop(struct leaf *l)
{
  if (!l->dtls)
    return;
  (void)leaf_dtls_shutdown(l->dtls);
  leaf_dtls_free(l->dtls);
  l->dtls = NULL;
}

/* The handshake failed or the association died: report it, and like a
 * device start again after T_retry. */
static void dtls_end(struct leaf *l, const char *what, const char *reason)
{
  struct sim *s = l->sim;
  if (s->o.verbose || s->dtls_reported < DTLS_REPORT_MAX) {
    s->dtls_reported++;
    bool last = !s->o.verbose && s->dtls_reported == DTLS_REPORT_MAX;
    fprintf(stderr, "leafsim: %s: DTLS %s: %s%s\n", l->id, what, reason,
            last ? " (further failures only counted)" : "");
  }
  leaf_dtls_free(l->dtls);
  l->dtls = NULL;
  if (s->stop_phase > 0)
    set_state(l, ST_DONE);
  else
    go_idle(l, s->o.retry_ms);
  arm(l, now_ns());
}

static void dtls_on_error(void *ud, const char *reason)
{
  struct leaf *l = ud;
  if (l->st == ST_HANDSHAKE) {
    l->sim->c.hs_failed++;
    dtls_end(l, "handshake failed", reason);
  } else {
    l->sim->c.dtls_lost++;
    dtls_end(l, "association lost", reason);
  }
}

static void dtls_on_closed(void *ud)
{
  struct leaf *l = ud;
  l->sim->c.dtls_lost++;
  dtls_end(l, "association closed", "close_notify from the gateway");
}

static void dtls_on_done(void *ud)
{
  struct leaf *l = ud;
  struct sim *s = l->sim;
  s->c.hs_ok++;
  hist_add(&s->hs_lat, (now_ns() - l->hs_start) / 1000u);
  VLOG(l, "DTLS handshake done, %s", leaf_dtls_cipher(l->dtls));
  if (s->stop_phase > 0)
    set_state(l, ST_DONE);
  else if (s->o.qos == -1)
    enter_active(l);
  else
    send_connect(l);
  arm(l, now_ns());
}

static void dtls_on_plaintext(void *ud, const uint8_t *data, size_t len)
{
  on_datagram(ud, data, len);
}

static void dtls_begin(struct leaf *l)
{
  struct sim *s = l->sim;
  struct leaf_dtls_cred cr = {.psk_identity = l->id};
  char crt[4096], key[4096], err[256];
  dtls_drop(l);
  cr.psk = leaf_dtls_key_for(&s->keys, l->id, &cr.psk_len); /* checked at start */
  if (s->o.cert_dir) {
    snprintf(crt, sizeof crt, "%s/%s.crt", s->o.cert_dir, l->id);
    snprintf(key, sizeof key, "%s/%s.key", s->o.cert_dir, l->id);
    cr.cert_file = crt;
    cr.key_file = key;
  }
  set_state(l, ST_HANDSHAKE);
  l->hs_start = now_ns();
  if (leaf_dtls_new(s->dtls, l, &cr, &l->dtls, err, sizeof err) != LEAF_DTLS_OK) {
    s->c.hs_failed++;
    dtls_end(l, "handshake not started", err);
    return;
  }
  (void)leaf_dtls_start(l->dtls); /* a failure comes through dtls_on_error */
}

/* The shared context and the keys, from the options. */
static int dtls_setup(struct sim *s)
{
  static const struct leaf_dtls_cbs cbs = {
      .send = dtls_io,
      .on_handshake_done = dtls_on_done,
      .on_plaintext = dtls_on_plaintext,
      .on_error = dtls_on_error,
      .on_closed = dtls_on_closed,
  };
  struct leaf_dtls_opts o = {.use_certs = s->o.cert_dir || s->o.cert_file,
                             .ciphers = s->o.ciphers,
                             .cert_file = s->o.cert_file,
                             .key_file = s->o.key_file,
                             .ca_file = s->o.ca_file,
                             .mtu = s->o.mtu,
                             .handshake_ms = s->o.handshake_ms};
  char err[256];
  if (leaf_dtls_keys_load(&s->keys, s->o.psk_hex, s->o.psk_file, err, sizeof err) != 0 ||
      leaf_dtls_ctx_new(s->loop, &o, &cbs, &s->dtls, err, sizeof err) != LEAF_DTLS_OK) {
    fprintf(stderr, "fleetgw-leafsim: %s\n", err);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Start, stop and the summary                                               */
/* ------------------------------------------------------------------------ */

static void close_cb(uv_handle_t *h)
{
  struct sim *s = h->loop->data;
  (void)h;
  s->open_handles--;
}

static void close_handle(struct sim *s, uv_handle_t *h)
{
  if (!uv_is_closing(h))
    uv_close(h, close_cb);
}

static void close_all(struct sim *s)
{
  s->stop_phase = 3;
  for (unsigned i = 0; i < s->o.leaves; i++) {
    dtls_drop(&s->leaves[i]);
    if (s->leaves[i].udp.data) {
      close_handle(s, (uv_handle_t *)&s->leaves[i].udp);
      close_handle(s, (uv_handle_t *)&s->leaves[i].timer);
    }
  }
  close_handle(s, (uv_handle_t *)&s->connect_timer);
  close_handle(s, (uv_handle_t *)&s->stop_timer);
  close_handle(s, (uv_handle_t *)&s->hold_timer);
  close_handle(s, (uv_handle_t *)&s->sigint);
  close_handle(s, (uv_handle_t *)&s->sigterm);
}

static bool any_inflight(const struct sim *s)
{
  for (unsigned i = 0; i < s->o.leaves; i++)
    if (s->leaves[i].req_active && s->leaves[i].req_is_pub)
      return true;
  return false;
}

static void stop_timer_cb(uv_timer_t *h);

/* Advances the stop sequence: drain in-flight publishes (phase 1), say
 * DISCONNECT and wait for the replies (phase 2), then close (phase 3). */
static void stop_step(struct sim *s)
{
  uint64_t t = now_ns();
  if (s->stop_phase == 1) {
    if (any_inflight(s) && t < s->t_stop + DRAIN_MS * NS_PER_MS) {
      uv_timer_start(&s->stop_timer, stop_timer_cb, 20, 0);
      return;
    }
    s->stop_phase = 2;
    for (unsigned i = 0; i < s->o.leaves; i++) {
      struct leaf *l = &s->leaves[i];
      if (!l->udp.data || l->st == ST_DONE)
        continue;
      if (l->st == ST_IDLE || l->st == ST_HANDSHAKE || s->o.qos == -1) {
        set_state(l, ST_DONE);
        continue;
      }
      if (l->st == ST_BYE)
        continue;
      /* One quick retry is enough for a goodbye. */
      send_bye(l);
      l->req_deadline = t + 300 * NS_PER_MS;
      arm(l, t);
    }
    s->t_stop = t;
  }
  if (s->stop_phase == 2) {
    if (s->done < s->o.leaves && t < s->t_stop + BYE_MS * NS_PER_MS) {
      uv_timer_start(&s->stop_timer, stop_timer_cb, 20, 0);
      return;
    }
    close_all(s);
  }
}

static void stop_timer_cb(uv_timer_t *h)
{
  stop_step(h->loop->data);
}

static void request_stop(struct sim *s)
{
  if (s->stop_phase > 0)
    return;
  s->stop_phase = 1;
  s->t_stop = now_ns();
  uv_timer_stop(&s->connect_timer);
  /* Leaves with nothing in flight say goodbye at their next service. */
  for (unsigned i = 0; i < s->o.leaves; i++) {
    struct leaf *l = &s->leaves[i];
    if (l->udp.data && l->st != ST_DONE && !l->req_active)
      uv_timer_start(&l->timer, timer_cb, 0, 0);
  }
  stop_step(s);
}

static void signal_cb(uv_signal_t *h, int signum)
{
  (void)signum;
  request_stop(h->loop->data);
}

static void duration_cb(uv_timer_t *h)
{
  request_stop(h->loop->data);
}

static int open_leaf(struct sim *s, struct leaf *l, unsigned i)
{
  struct sockaddr_in local;
  int rc;
  l->sim = s;
  l->idx = i;
  l->st = ST_DONE; /* counted as done until it is started */
  s->done++;
  if (snprintf(l->id, sizeof l->id, "%s%u", s->o.prefix, s->o.first_index + i) >=
      (int)sizeof l->id) {
    fprintf(stderr, "leafsim: client id too long (prefix %s)\n", s->o.prefix);
    return -1;
  }
  if (expand(s->o.topic_fmt, l->id, l->pub_topic, sizeof l->pub_topic) != 0 ||
      (s->o.sub_fmt && expand(s->o.sub_fmt, l->id, l->sub_topic, sizeof l->sub_topic) != 0)) {
    fprintf(stderr, "leafsim: topic too long for %s\n", l->id);
    return -1;
  }
  size_t klen;
  if (s->keys.table && !leaf_dtls_key_for(&s->keys, l->id, &klen)) {
    fprintf(stderr, "leafsim: no PSK for %s in %s\n", l->id, s->o.psk_file);
    return -1;
  }
  l->req = malloc(req_cap(s));
  if (!l->req) {
    fprintf(stderr, "leafsim: out of memory\n");
    return -1;
  }
  rc = uv_udp_init(s->loop, &l->udp);
  if (rc != 0)
    goto fail_udp;
  s->open_handles++;
  l->udp.data = l;
  uv_timer_init(s->loop, &l->timer);
  s->open_handles++;
  l->timer.data = l;
  uv_ip4_addr("127.0.0.1", 0, &local);
  rc = uv_udp_bind(&l->udp, (const struct sockaddr *)&local, 0);
  if (rc == 0)
    rc = uv_udp_recv_start(&l->udp, alloc_cb, recv_cb);
  if (rc != 0)
    goto fail_udp;
  return 0;

fail_udp:
  fprintf(stderr, "leafsim: UDP socket for %s: %s%s\n", l->id, uv_strerror(rc),
          rc == UV_EMFILE ? " (raise the open files limit: ulimit -n)" : "");
  return -1;
}

static void start_leaf(struct leaf *l)
{
  struct sim *s = l->sim;
  s->done--;
  l->st = ST_IDLE;
  s->started++;
  if (needs_handshake(l)) {
    dtls_begin(l);
  } else if (s->o.qos == -1) {
    /* QoS -1 needs no connection: publish straight away. */
    l->pace_base = now_ns();
    enter_active(l);
    l->due = 0;
  } else {
    send_connect(l);
  }
  arm(l, now_ns());
}

/* Starts the next leaves that are due by --connect-rate. */
static void connect_cb(uv_timer_t *h)
{
  struct sim *s = h->loop->data;
  uint64_t t = now_ns();
  uint64_t due = s->o.leaves;
  if (s->o.connect_rate > 0)
    due = (uint64_t)((double)(t - s->t_start) * s->o.connect_rate / (double)NS_PER_S) + 1;
  while (s->started < s->o.leaves && s->started < due)
    start_leaf(&s->leaves[s->started]);
  if (s->started < s->o.leaves) {
    double next_s = (double)s->started / s->o.connect_rate;
    uint64_t at = s->t_start + (uint64_t)(next_s * (double)NS_PER_S);
    uint64_t ms = at <= t ? 1 : (at - t + NS_PER_MS - 1) / NS_PER_MS; /* never 0: see arm() */
    uv_timer_start(&s->connect_timer, connect_cb, ms, 0);
  }
}

static void print_stats(struct sim *s)
{
  uint64_t end = now_ns();
  double elapsed = (double)(end - s->t_start) / 1e9;
  double connect_all_ms = -1, connect_last_ms = -1;
  unsigned expect = s->o.qos == -1 ? 0 : s->o.leaves;
  if (expect && s->connected == expect && s->t_first_connect)
    connect_all_ms = (double)(s->t_last_connack - s->t_first_connect) / 1e6;
  if (s->connected && s->t_first_connect)
    connect_last_ms = (double)(s->t_last_connack - s->t_first_connect) / 1e6;
  /* connect_all_ms is -1 unless every leaf connected; connect_last_ms is the
   * time to the last first CONNACK of those that did. */
  printf("{\"leaves\":%u,\"connected\":%u,\"connect_all_ms\":%.3f,\"connect_last_ms\":%.3f,",
         s->o.leaves, s->connected, connect_all_ms, connect_last_ms);
  printf("\"connects_sent\":%" PRIu64 ",\"connack_congestion\":%" PRIu64
         ",\"connack_refused\":%" PRIu64 ",",
         s->c.connects_sent, s->c.connack_congestion, s->c.connack_refused);
  printf("\"qos\":%d,\"elapsed_s\":%.3f,\"publishes_sent\":%" PRIu64 ",\"publishes_acked\":%" PRIu64
         ",\"publishes_rejected\":%" PRIu64 ",",
         s->o.qos, elapsed, s->c.pub_sent, s->c.pub_acked, s->c.pub_rejected);
  /* The publishing window: first publish to the last one sent (QoS -1/0) or
   * acknowledged (QoS 1/2); leaves start publishing only once connected. */
  double span = s->t_last_pub > s->t_first_pub ? (double)(s->t_last_pub - s->t_first_pub) / 1e9 : 0;
  uint64_t done = s->o.qos >= 1 ? s->c.pub_acked : s->c.pub_sent;
  printf("\"publish_span_s\":%.3f,\"publish_rate\":%.1f,", span,
         span > 0 ? (double)done / span : 0.0);
  /* From the first CONNECT to the first publish (-1: none). */
  printf("\"first_publish_ms\":%.3f,",
         s->t_first_pub && s->t_first_connect
             ? (double)(s->t_first_pub - s->t_first_connect) / 1e6
             : -1.0);
  printf("\"latency_us\":{\"count\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p90\":%" PRIu64
         ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64 ",\"mean\":%.1f},",
         s->lat.n, hist_pct(&s->lat, 50), hist_pct(&s->lat, 90), hist_pct(&s->lat, 99), s->lat.max,
         s->lat.n ? s->lat.sum / (double)s->lat.n : 0.0);
  printf("\"received\":%" PRIu64 ",\"retransmissions\":%" PRIu64 ",\"timeouts\":%" PRIu64
         ",\"gw_disconnects\":%" PRIu64 ",\"sleeps\":%" PRIu64 ",\"wakes\":%" PRIu64 ",",
         s->c.received, s->c.retransmissions, s->c.timeouts, s->c.gw_disconnects, s->c.sleeps,
         s->c.wakes);
  printf("\"errors\":{\"malformed\":%" PRIu64 ",\"unexpected\":%" PRIu64 ",\"send\":%" PRIu64
         ",\"send_eagain\":%" PRIu64 ",\"recv\":%" PRIu64 ",\"congestion\":%" PRIu64
         ",\"invalid_topic\":%" PRIu64 ",\"register_refused\":%" PRIu64
         ",\"subscribe_refused\":%" PRIu64 "}",
         s->c.malformed, s->c.unexpected, s->c.send_errors, s->c.send_eagain, s->c.recv_errors,
         s->c.pub_congestion, s->c.pub_invalid_topic, s->c.register_refused,
         s->c.subscribe_refused);
  if (s->dtls)
    printf(",\"dtls\":{\"handshakes_ok\":%" PRIu64 ",\"handshakes_failed\":%" PRIu64
           ",\"associations_lost\":%" PRIu64 ",\"handshake_ms\":{\"count\":%" PRIu64
           ",\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f}}",
           s->c.hs_ok, s->c.hs_failed, s->c.dtls_lost, s->hs_lat.n,
           (double)hist_pct(&s->hs_lat, 50) / 1e3, (double)hist_pct(&s->hs_lat, 99) / 1e3,
           (double)s->hs_lat.max / 1e3);
  printf("}\n");
}

/* Each leaf needs a descriptor: raise the soft limit to the hard one. */
static void raise_nofile(unsigned leaves)
{
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)leaves + 32)
    fprintf(stderr, "leafsim: open files limit %lu is below %u leaves + 32\n",
            (unsigned long)rl.rlim_cur, leaves);
}

int main(int argc, char **argv)
{
  struct sim *s;
  int rc = 1;

  s = calloc(1, sizeof *s);
  if (!s) {
    fprintf(stderr, "leafsim: out of memory\n");
    return 1;
  }
  if (leafsim_parse_args(argc, argv, &s->o) != 0)
    goto out_sim;
  if (leafsim_resolve_gw(s->o.gw, &s->gw_addr) != 0) {
    fprintf(stderr, "fleetgw-leafsim: --gw: expected HOST:PORT (IPv4), got \"%s\"\n", s->o.gw);
    goto out_sim;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  raise_nofile(s->o.leaves);

  s->payload = malloc(s->o.payload_size + 1);
  s->pl_buf = malloc(s->o.payload_size + 1);
  s->leaves = calloc(s->o.leaves, sizeof *s->leaves);
  if (!s->payload || !s->pl_buf || !s->leaves) {
    fprintf(stderr, "leafsim: out of memory\n");
    goto out_mem;
  }
  for (size_t i = 0; i < s->o.payload_size; i++)
    s->payload[i] = (uint8_t)('a' + i % 26);

  s->loop = uv_default_loop();
  s->loop->data = s;
  s->exit_code = 0;
  if (s->o.dtls && dtls_setup(s) != 0)
    s->exit_code = 1;
  for (unsigned i = 0; i < s->o.leaves && s->exit_code == 0; i++) {
    if (open_leaf(s, &s->leaves[i], i) != 0) {
      s->exit_code = 1;
      break;
    }
  }
  uv_timer_init(s->loop, &s->connect_timer);
  uv_timer_init(s->loop, &s->stop_timer);
  uv_timer_init(s->loop, &s->hold_timer);
  uv_signal_init(s->loop, &s->sigint);
  uv_signal_init(s->loop, &s->sigterm);
  s->open_handles += 5;
  if (s->exit_code != 0) {
    close_all(s);
  } else {
    uv_signal_start(&s->sigint, signal_cb, SIGINT);
    uv_signal_start(&s->sigterm, signal_cb, SIGTERM);
    s->t_start = now_ns();
    if (s->o.start_together_ms >= 0) {
      /* Publishing waits for every CONNACK; stragglers get 60 s. */
      s->held = true;
      uv_timer_start(&s->hold_timer, hold_cb, 60000, 0);
    } else if (s->o.duration > 0) {
      uv_timer_start(&s->stop_timer, duration_cb, (uint64_t)(s->o.duration * 1000.0), 0);
    }
    connect_cb(&s->connect_timer);
  }
  uv_run(s->loop, UV_RUN_DEFAULT);
  if (s->o.stats && s->exit_code == 0)
    print_stats(s);
  rc = s->exit_code;
  if (rc == 0 && s->dtls && s->c.hs_ok == 0) {
    fprintf(stderr, "leafsim: no DTLS handshake completed (%" PRIu64 " failed)\n", s->c.hs_failed);
    rc = 1;
  }
  if (uv_loop_close(s->loop) != 0)
    fprintf(stderr, "leafsim: loop not closed cleanly\n");

out_mem:
  if (s->leaves) {
    for (unsigned i = 0; i < s->o.leaves; i++) {
      for (size_t k = 0; k < s->leaves[i].ntopics; k++)
        free(s->leaves[i].topics[k].name);
      free(s->leaves[i].topics);
      free(s->leaves[i].req);
    }
  }
  free(s->leaves);
  free(s->payload);
  free(s->pl_buf);
  leaf_dtls_ctx_free(s->dtls);
  leaf_dtls_keys_free(&s->keys);
out_sim:
  free(s);
  return rc;
}
