/*
 * Unit tests of one leaf's MQTT-SN session (gateway/lan/session.c,
 * sess_up.c, sess_down.c, sess_state.c, reply.c), built through the entry
 * points gw.c uses (leaves_new/leaves_start with a struct leaves_env, a
 * config loaded from a temporary JSON file and a registry in a temporary
 * directory) and driven with a FAKE uplink (struct sess_uplink_ops) that
 * records every call; the test itself decides when the "upstream" reports
 * sess_up_up, sess_up_acked, sess_up_refused, sess_up_suback ...
 *
 * The leaf is a plain UDP socket on 127.0.0.1 (ephemeral port) talking to the
 * gateway's real socket; what the gateway sends is checked byte for byte and
 * decoded with protocol/mqttsn.h.  The loop runs in small steps
 * (UV_RUN_NOWAIT) between the leaf's sends and receives, and is closed
 * cleanly at the end (uv_loop_close() == 0).  Only the public headers of the
 * room are used: session.h, leaves.h (the session's state is read through
 * sess_get_info()).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "drain.h"
#include "leaves.h"
#include "log.h"
#include "metrics.h"
#include "mqttsn.h"
#include "session.h"
#include "store.h"
#include "test.h"

#define CONNACK_TIMEOUT_MS 300
#define RX_WAIT_MS 1000 /* how long to wait for a datagram that must come */
#define QUIET_MS 100    /* how long nothing must come */

/* ---- the fake uplink ------------------------------------------------------ */

#define MAXREC 16

struct fake_link {
  int id;
};

struct rec_pub {
  char topic[64];
  uint8_t payload[64];
  size_t len;
  int qos;
  bool retain;
  void *token;
  bool reported;        /* the token came back through sess_up_* */
};

struct rec_sub {
  char filter[64];
  int qos;
  uint16_t pid;
  bool unsub;
};

static struct fake {
  int open_result;      /* what open returns */
  int pub_rc, sub_rc;   /* what publish / subscribe return */
  int opens, closes, kicks, anons;
  int links_live;
  int next_link_id;
  struct session *s;    /* the session of the last open */
  struct sess_link *link; /* the link of the last open */
  struct sess_open o;   /* the last open's request (strings copied below) */
  char cid[64], will_topic[64];
  uint8_t will_msg[64];
  int last_closed_id;
  bool last_close_graceful;
  int npubs;
  struct rec_pub pubs[MAXREC];
  int nsubs;
  struct rec_sub subs[MAXREC];
  uint16_t next_pid;
  int npubacks;
  uint16_t pubacks[MAXREC];
} F;

static int fake_open(void *ctx, struct session *s, const struct sess_open *o,
                     struct sess_link **link, char *reason, size_t cap)
{
  struct fake_link *l;

  (void)ctx;
  F.opens++;
  F.s = s;
  F.o = *o;
  snprintf(F.cid, sizeof F.cid, "%s", o->client_id);
  F.o.client_id = F.cid;
  if (o->will_topic) {
    snprintf(F.will_topic, sizeof F.will_topic, "%s", o->will_topic);
    F.o.will_topic = F.will_topic;
    if (o->will_msg_len)
      memcpy(F.will_msg, o->will_msg, o->will_msg_len < 64 ? o->will_msg_len : 64);
    F.o.will_msg = F.will_msg;
  }
  if (F.open_result != SESS_OPEN_OK) {
    snprintf(reason, cap, "the fake says no");
    return F.open_result;
  }
  l = calloc(1, sizeof *l);
  if (!l)
    return SESS_OPEN_ERROR;
  l->id = ++F.next_link_id;
  F.links_live++;
  F.link = (struct sess_link *)l;
  *link = F.link;
  return SESS_OPEN_OK;
}

static void fake_close(void *ctx, struct sess_link *l, bool graceful)
{
  struct fake_link *fl = (struct fake_link *)l;
  (void)ctx;
  F.closes++;
  F.links_live--;
  F.last_closed_id = fl->id;
  F.last_close_graceful = graceful;
  if (F.link == l)
    F.link = NULL;
  free(fl);
}

static int fake_publish(void *ctx, struct sess_link *l, const char *topic, size_t topic_len,
                        const uint8_t *payload, size_t len, int qos, bool retain, void *token)
{
  struct rec_pub *p;
  (void)ctx;
  (void)l;
  if (F.pub_rc != SESS_UP_OK || F.npubs >= MAXREC)
    return F.pub_rc != SESS_UP_OK ? F.pub_rc : SESS_UP_FULL;
  p = &F.pubs[F.npubs++];
  snprintf(p->topic, sizeof p->topic, "%.*s", (int)topic_len, topic);
  p->len = len < sizeof p->payload ? len : sizeof p->payload;
  memcpy(p->payload, payload, p->len);
  p->qos = qos;
  p->retain = retain;
  p->token = token;
  return SESS_UP_OK;
}

static int record_sub(const char *filter, size_t len, int qos, uint16_t *pid, bool unsub)
{
  struct rec_sub *r;
  if (F.sub_rc != SESS_UP_OK || F.nsubs >= MAXREC)
    return F.sub_rc != SESS_UP_OK ? F.sub_rc : SESS_UP_FULL;
  r = &F.subs[F.nsubs++];
  snprintf(r->filter, sizeof r->filter, "%.*s", (int)len, filter);
  r->qos = qos;
  r->pid = ++F.next_pid;
  r->unsub = unsub;
  *pid = r->pid;
  return SESS_UP_OK;
}

static int fake_subscribe(void *ctx, struct sess_link *l, const char *filter, size_t len, int qos,
                          uint16_t *pid)
{
  (void)ctx;
  (void)l;
  return record_sub(filter, len, qos, pid, false);
}

static int fake_unsubscribe(void *ctx, struct sess_link *l, const char *filter, size_t len,
                            uint16_t *pid)
{
  (void)ctx;
  (void)l;
  return record_sub(filter, len, -1, pid, true);
}

static void fake_kick(void *ctx, struct sess_link *l)
{
  (void)ctx;
  (void)l;
  F.kicks++;
}

static void fake_puback(void *ctx, struct sess_link *l, uint16_t pid)
{
  (void)ctx;
  (void)l;
  if (F.npubacks < MAXREC)
    F.pubacks[F.npubacks++] = pid;
}

/* Recorded with the others, as QoS -1 on no link. */
static int fake_publish_anon(void *ctx, const char *topic, size_t topic_len,
                             const uint8_t *payload, size_t len, bool retain)
{
  F.anons++;
  return fake_publish(ctx, NULL, topic, topic_len, payload, len, -1, retain, NULL);
}

static const struct sess_uplink_ops fake_ops = {
    .open = fake_open,
    .close = fake_close,
    .publish = fake_publish,
    .subscribe = fake_subscribe,
    .unsubscribe = fake_unsubscribe,
    .kick = fake_kick,
    .puback = fake_puback,
    .publish_anon = fake_publish_anon,
};

/* The relay's answer to publish number i: acked, refused or dropped. */
static void report_acked(int i)
{
  F.pubs[i].reported = true;
  sess_up_acked(F.s, F.pubs[i].token);
}

static void report_refused(int i)
{
  F.pubs[i].reported = true;
  sess_up_refused(F.s, F.pubs[i].token);
}

/* ---- the world: loop, config, registry, LAN side -------------------------- */

static uv_loop_t g_loop;
static char g_dir[64];
static struct gw_config *g_cfg;
static struct store *g_store;
static struct metrics g_m;
static struct drain g_drain;
static struct leaves *g_lv;
static int g_leaf = -1;             /* the fake leaf's socket */
static struct sockaddr_in g_gw;     /* the gateway's address */
static uint8_t g_rx[2048];          /* the last datagram the leaf received */
static size_t g_rx_len;

static void sleep_ms(int ms)
{
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int load_config(void)
{
  char path[128], json[1024], err[512];
  FILE *f;

  snprintf(path, sizeof path, "%s/fleetgw.json", g_dir);
  snprintf(json, sizeof json,
           "{\"lan\": {\"bind\": \"127.0.0.1\", \"connack_timeout_ms\": %d,"
           " \"t_retry_ms\": 500, \"n_retry\": 2, \"queue_max\": 4},"
           " \"upstream\": {\"host\": \"broker.invalid\", \"tls\": false},"
           " \"registry\": {\"path\": \"%s/registry.db\"},"
           " \"admission\": {\"policy\": \"open\"}}",
           CONNACK_TIMEOUT_MS, g_dir);
  f = fopen(path, "w");
  if (!f)
    return -1;
  fputs(json, f);
  fclose(f);
  if (cfg_load(path, &g_cfg, err, sizeof err) != 0) {
    fprintf(stderr, "cfg_load: %s\n", err);
    return -1;
  }
  g_cfg->lan.port = 0; /* an ephemeral port (the file cannot say 0) */
  return 0;
}

static int open_store(void)
{
  char db[128], key[128];
  struct store_opts so = {.path = db, .key_file = key, .synchronous = 1};
  snprintf(db, sizeof db, "%s/registry.db", g_dir);
  snprintf(key, sizeof key, "%s/registry.key", g_dir);
  return store_open(&so, &g_store) == STORE_OK ? 0 : -1;
}

/* The sessions a previous test's LAN side left in the registry (sess_store.c
 * writes them, and leaves_start would restore them): gone, so that each test
 * starts from nothing. */
static int collect_id(void *ud, const struct store_leaf_session *s)
{
  char (*ids)[256] = ud;
  for (int i = 0; i < 64; i++) {
    if (!ids[i][0]) {
      snprintf(ids[i], sizeof ids[i], "%s", s->client_id);
      break;
    }
  }
  return 0;
}

static void forget_stored_sessions(void)
{
  static char ids[64][256];
  struct store_leaf_cbs cbs = {.sess = collect_id};
  memset(ids, 0, sizeof ids);
  ASSERT_EQ(store_leaf_load(g_store, &cbs, ids), STORE_OK);
  for (int i = 0; i < 64 && ids[i][0]; i++)
    ASSERT_EQ(store_leaf_delete(g_store, ids[i]), STORE_OK);
}

/* A fresh LAN side and a fresh leaf socket for each test. */
static void setup(void)
{
  struct leaves_env env = {
      .loop = &g_loop, .cfg = g_cfg, .m = &g_m, .store = g_store, .drain = &g_drain,
      .up = &fake_ops, .up_ctx = NULL,
      /* New-identity limits off: every test brings new ClientIds. */
      .newid = {.slots = 64},
  };
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int port;

  memset(&F, 0, sizeof F);
  memset(&g_m, 0, sizeof g_m);
  memset(&g_drain, 0, sizeof g_drain);
  forget_stored_sessions();
  ASSERT_EQ(leaves_new(&env, &g_lv), 0);
  ASSERT_EQ(leaves_start(g_lv), 0);
  port = leaves_port(g_lv);
  ASSERT_TRUE(port > 0);
  memset(&g_gw, 0, sizeof g_gw);
  g_gw.sin_family = AF_INET;
  g_gw.sin_port = htons((uint16_t)port);
  g_gw.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g_leaf = socket(AF_INET, SOCK_DGRAM, 0);
  ASSERT_TRUE(g_leaf >= 0);
  ASSERT_EQ(bind(g_leaf, (struct sockaddr *)&a, sizeof a), 0);
}

static void pump(int ms)
{
  uint64_t end = uv_hrtime() / 1000000u + (uint64_t)ms;
  do {
    uv_run(&g_loop, UV_RUN_NOWAIT);
    sleep_ms(1);
  } while (uv_hrtime() / 1000000u < end);
  uv_run(&g_loop, UV_RUN_NOWAIT);
}

/* Stops the LAN side (it closes every link still held), reports every
 * publish token the test left unanswered as dropped after the session let go
 * (NULL session, as the relay does), and waits for the closes. */
static void teardown(void)
{
  size_t live = 0;
  uint64_t queued = 0;
  uint64_t end;

  leaves_stop(g_lv, &live, &queued);
  for (int i = 0; i < F.npubs; i++) {
    if (F.pubs[i].token && !F.pubs[i].reported) {
      F.pubs[i].reported = true;
      sess_up_dropped(NULL, F.pubs[i].token);
    }
  }
  end = uv_hrtime() / 1000000u + 2000;
  while (g_drain.pending > 0 && uv_hrtime() / 1000000u < end)
    uv_run(&g_loop, UV_RUN_NOWAIT);
  ASSERT_EQ(g_drain.pending, 0);
  leaves_free(g_lv);
  g_lv = NULL;
  close(g_leaf);
  g_leaf = -1;
  /* Every link the sessions were given went back exactly once. */
  ASSERT_EQ(F.links_live, 0);
  ASSERT_EQ(F.next_link_id, F.closes);
}

/* ---- the leaf's side ------------------------------------------------------ */

static void leaf_send(const struct mqttsn_msg *m)
{
  uint8_t buf[512];
  int n = mqttsn_encode(m, buf, sizeof buf);
  ASSERT_TRUE(n > 0);
  if (n <= 0)
    return;
  ASSERT_EQ(sendto(g_leaf, buf, (size_t)n, 0, (struct sockaddr *)&g_gw, sizeof g_gw), n);
}

/* Runs the loop until the leaf receives a datagram (into g_rx) or ms pass. */
static bool leaf_recv(struct mqttsn_msg *m, int ms)
{
  uint64_t end = uv_hrtime() / 1000000u + (uint64_t)ms;
  for (;;) {
    ssize_t n = recv(g_leaf, g_rx, sizeof g_rx, MSG_DONTWAIT);
    if (n > 0) {
      g_rx_len = (size_t)n;
      if (mqttsn_decode(g_rx, g_rx_len, m) != PROTO_OK) {
        /* The gateway sent something its own codec cannot read. */
        ASSERT_TRUE(false);
        memset(m, 0, sizeof *m);
        m->type = (enum mqttsn_type)0xFF;
      }
      return true;
    }
    if (uv_hrtime() / 1000000u >= end)
      return false;
    uv_run(&g_loop, UV_RUN_NOWAIT);
    sleep_ms(1);
  }
}

/* The next datagram must be of type t; returns whether it was. */
static bool expect(enum mqttsn_type t, struct mqttsn_msg *m)
{
  bool got = leaf_recv(m, RX_WAIT_MS);
  ASSERT_TRUE(got);
  if (!got) {
    fprintf(stderr, "  expected %s, got nothing\n", mqttsn_type_name(t));
    return false;
  }
  ASSERT_EQ(m->type, t);
  if (m->type != t)
    fprintf(stderr, "  expected %s, got %s\n", mqttsn_type_name(t), mqttsn_type_name(m->type));
  return m->type == t;
}

/* The next datagram must be exactly these bytes. */
#define EXPECT_BYTES(...)                                                      \
  do {                                                                         \
    const uint8_t want_[] = {__VA_ARGS__};                                     \
    struct mqttsn_msg m_;                                                      \
    bool got_ = leaf_recv(&m_, RX_WAIT_MS);                                    \
    ASSERT_TRUE(got_);                                                         \
    ASSERT_EQ(g_rx_len, sizeof want_);                                         \
    if (got_ && g_rx_len == sizeof want_)                                      \
      ASSERT_MEM_EQ(g_rx, want_, sizeof want_);                                \
  } while (0)

/* Nothing may reach the leaf for QUIET_MS. */
static void expect_quiet(void)
{
  struct mqttsn_msg m;
  bool got = leaf_recv(&m, QUIET_MS);
  ASSERT_TRUE(!got);
  if (got)
    fprintf(stderr, "  unexpected %s (%zu bytes)\n", mqttsn_type_name(m.type), g_rx_len);
}

/* What the leaf sends, each built with designated initializers (the other
 * fields zero) and encoded by the codec. */
#define SEND(...) leaf_send(&(struct mqttsn_msg){__VA_ARGS__})

static struct mqttsn_str str(const char *text)
{
  return (struct mqttsn_str){(const uint8_t *)text, strlen(text)};
}

static void send_connect(const char *cid, uint16_t duration, bool will, bool clean)
{
  SEND(.type = MQTTSN_CONNECT,
       .u.connect = {.flags = {.will = will, .clean_session = clean},
                     .protocol_id = MQTTSN_PROTOCOL_ID, .duration = duration,
                     .client_id = str(cid)});
}

static void send_type(enum mqttsn_type t) { SEND(.type = t); }

static void send_willtopic(const char *topic, int qos, bool retain)
{
  SEND(.type = MQTTSN_WILLTOPIC,
       .u.willtopic = {.flags = {.qos = qos, .retain = retain}, .topic = str(topic)});
}

static void send_willmsg(const char *msg)
{
  SEND(.type = MQTTSN_WILLMSG, .u.willmsg.msg = str(msg));
}

static void send_register(uint16_t msg_id, const char *topic)
{
  SEND(.type = MQTTSN_REGISTER, .u.reg = {.msg_id = msg_id, .topic_name = str(topic)});
}

static void send_publish(int qos, uint16_t topic_id, uint16_t msg_id, const char *payload)
{
  SEND(.type = MQTTSN_PUBLISH,
       .u.publish = {.flags = {.qos = qos, .topic_type = MQTTSN_TOPIC_NORMAL},
                     .topic_id = topic_id, .msg_id = msg_id, .data = str(payload)});
}

static void send_subscribe(bool unsub, uint16_t msg_id, const char *filter, int qos)
{
  SEND(.type = unsub ? MQTTSN_UNSUBSCRIBE : MQTTSN_SUBSCRIBE,
       .u.subscribe = {.flags = {.qos = unsub ? 0 : qos, .topic_type = MQTTSN_TOPIC_NORMAL},
                       .msg_id = msg_id, .topic_name = str(filter)});
}

static void send_msgid(enum mqttsn_type t, uint16_t msg_id)
{
  SEND(.type = t, .u.msgid.msg_id = msg_id);
}

static void send_puback(uint16_t topic_id, uint16_t msg_id, uint8_t rc)
{
  SEND(.type = MQTTSN_PUBACK, .u.puback = {topic_id, msg_id, rc});
}

static void send_regack(uint16_t topic_id, uint16_t msg_id, uint8_t rc)
{
  SEND(.type = MQTTSN_REGACK, .u.regack = {topic_id, msg_id, rc});
}

static void send_disconnect(bool has_duration, uint16_t duration)
{
  SEND(.type = MQTTSN_DISCONNECT, .u.disconnect = {has_duration, duration});
}

static void send_wake_ping(const char *cid)
{
  SEND(.type = MQTTSN_PINGREQ, .u.pingreq.client_id = str(cid));
}

/* The session's state as the API shows it ("" when there is none). */
static const char *state_of(const char *cid)
{
  struct session *s = leaves_find(g_lv, cid);
  struct sess_info info;
  if (!s)
    return "";
  sess_get_info(s, &info);
  return info.state;
}

static struct sess_info info_of(const char *cid)
{
  struct sess_info info;
  struct session *s = leaves_find(g_lv, cid);
  memset(&info, 0, sizeof info);
  if (s)
    sess_get_info(s, &info);
  return info;
}

/* Runs the loop until cid's state is want or ms pass; returns the ms it took
 * (by the loop's clock), or -1. */
static int wait_state(const char *cid, const char *want, int ms)
{
  uint64_t start = uv_now(&g_loop), end = uv_hrtime() / 1000000u + (uint64_t)ms;
  while (strcmp(state_of(cid), want) != 0) {
    if (uv_hrtime() / 1000000u >= end)
      return -1;
    uv_run(&g_loop, UV_RUN_NOWAIT);
    sleep_ms(1);
  }
  return (int)(uv_now(&g_loop) - start);
}

/* CONNECT (no will) → open → the upstream comes up → CONNACK accepted. */
static bool connect_leaf(const char *cid, uint16_t duration, bool clean)
{
  int opens = F.opens;
  send_connect(cid, duration, false, clean);
  pump(20);
  ASSERT_EQ(F.opens, opens + 1);
  if (F.opens != opens + 1 || !F.s)
    return false;
  sess_up_up(F.s, false);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_ACCEPTED);
  return strcmp(state_of(cid), "active") == 0;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_connect_waits_for_the_upstream(void)
{
  struct sess_info info;
  setup();
  send_connect("leaf-c1", 30, false, true);
  pump(20);
  /* The uplink was asked for the leaf's session; no CONNACK before it is up. */
  ASSERT_EQ(F.opens, 1);
  ASSERT_STR_EQ(F.o.client_id, "leaf-c1");
  ASSERT_TRUE(F.o.clean);
  ASSERT_TRUE(F.o.will_topic == NULL);
  ASSERT_STR_EQ(state_of("leaf-c1"), "connecting");
  info = info_of("leaf-c1");
  ASSERT_TRUE(info.has_upstream);
  ASSERT_TRUE(!info.upstream_up);
  ASSERT_TRUE(info.has_address);
  expect_quiet();
  sess_up_up(F.s, false);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_ACCEPTED);
  ASSERT_STR_EQ(state_of("leaf-c1"), "active");
  info = info_of("leaf-c1");
  ASSERT_TRUE(info.upstream_up);
  ASSERT_EQ(g_m.connects, 1);
  ASSERT_EQ(F.closes, 0);
  teardown();
  /* The stop let go of the link, gracefully (no will). */
  ASSERT_EQ(F.closes, 1);
  ASSERT_TRUE(F.last_close_graceful);
}

static void test_connect_repeated_while_waiting(void)
{
  setup();
  send_connect("leaf-c4", 30, false, false);
  pump(20);
  ASSERT_EQ(F.opens, 1);
  /* The leaf asks again (CleanSession=0): the same upstream is kicked. */
  send_connect("leaf-c4", 30, false, false);
  pump(20);
  ASSERT_EQ(F.kicks, 1);
  ASSERT_EQ(F.opens, 1);
  ASSERT_EQ(F.closes, 0);
  expect_quiet();
  /* CleanSession=1 makes the upstream session again. */
  send_connect("leaf-c4", 30, false, true);
  pump(20);
  ASSERT_EQ(F.closes, 1);
  ASSERT_EQ(F.last_closed_id, 1);
  ASSERT_EQ(F.opens, 2);
  ASSERT_TRUE(F.o.clean);
  sess_up_up(F.s, false);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_ACCEPTED);
  teardown();
  ASSERT_EQ(F.last_closed_id, 2);
}

static void test_connack_congestion_when_upstream_never_up(void)
{
  int ms;
  setup();
  send_connect("leaf-c2", 30, false, true);
  pump(20);
  ASSERT_EQ(F.opens, 1);
  ms = wait_state("leaf-c2", "disconnected", CONNACK_TIMEOUT_MS + 1000);
  ASSERT_TRUE(ms >= 0);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_CONGESTION);
  ASSERT_EQ(F.closes, 1);
  ASSERT_EQ(g_m.connack_congestion, 1);
  ASSERT_TRUE(!info_of("leaf-c2").has_upstream);
  teardown();
  ASSERT_EQ(F.closes, 1);
}

static void test_open_refused_is_connack_not_supported(void)
{
  setup();
  F.open_result = SESS_OPEN_REFUSED;
  send_connect("leaf-c3", 30, false, true);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_NOT_SUPPORTED);
  ASSERT_EQ(F.opens, 1);
  ASSERT_STR_EQ(state_of("leaf-c3"), "disconnected");
  ASSERT_TRUE(!info_of("leaf-c3").has_upstream);
  teardown();
  ASSERT_EQ(F.closes, 0);
}

static void test_will_prompts_then_open_with_will(void)
{
  setup();
  send_connect("leaf-w1", 30, true, true);
  EXPECT_BYTES(0x02, MQTTSN_WILLTOPICREQ);
  ASSERT_STR_EQ(state_of("leaf-w1"), "connecting");
  ASSERT_EQ(F.opens, 0);
  /* QoS 2 is asked for: the upstream's will is capped at QoS 1. */
  send_willtopic("leaf/w1/status", 2, true);
  EXPECT_BYTES(0x02, MQTTSN_WILLMSGREQ);
  ASSERT_EQ(F.opens, 0);
  send_willmsg("gone");
  pump(20);
  ASSERT_EQ(F.opens, 1);
  ASSERT_STR_EQ(F.o.will_topic, "leaf/w1/status");
  ASSERT_EQ(F.o.will_msg_len, 4);
  ASSERT_MEM_EQ(F.o.will_msg, "gone", 4);
  ASSERT_EQ(F.o.will_qos, 1);
  ASSERT_TRUE(F.o.will_retain);
  expect_quiet();
  sess_up_up(F.s, false);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_ACCEPTED);
  ASSERT_STR_EQ(state_of("leaf-w1"), "active");
  teardown();
}

static void test_will_topic_with_wildcard_refused(void)
{
  setup();
  send_connect("leaf-w2", 30, true, true);
  EXPECT_BYTES(0x02, MQTTSN_WILLTOPICREQ);
  send_willtopic("leaf/#", 0, false);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_NOT_SUPPORTED);
  ASSERT_STR_EQ(state_of("leaf-w2"), "disconnected");
  ASSERT_EQ(F.opens, 0);
  ASSERT_EQ(g_m.will_topics_refused, 1);
  teardown();
}

static void test_will_prompts_time_out(void)
{
  int ms;
  setup();
  /* Never answered at all. */
  send_connect("leaf-h1", 30, true, true);
  EXPECT_BYTES(0x02, MQTTSN_WILLTOPICREQ);
  ms = wait_state("leaf-h1", "disconnected", CONNACK_TIMEOUT_MS + 1000);
  ASSERT_TRUE(ms >= CONNACK_TIMEOUT_MS - 50);
  ASSERT_EQ(g_m.connects_half_open, 1);
  ASSERT_EQ(F.opens, 0);
  /* No CONNACK for a half-open CONNECT. */
  expect_quiet();
  /* Will topic answered, will message not. */
  send_connect("leaf-h1", 30, true, true);
  EXPECT_BYTES(0x02, MQTTSN_WILLTOPICREQ);
  send_willtopic("leaf/h1/status", 1, false);
  EXPECT_BYTES(0x02, MQTTSN_WILLMSGREQ);
  ms = wait_state("leaf-h1", "disconnected", CONNACK_TIMEOUT_MS + 1000);
  ASSERT_TRUE(ms >= 0);
  ASSERT_EQ(g_m.connects_half_open, 2);
  ASSERT_EQ(F.opens, 0);
  expect_quiet();
  teardown();
}

static void test_half_open_resume_releases_the_upstream(void)
{
  int ms;
  setup();
  ASSERT_TRUE(connect_leaf("leaf-h2", 30, false));
  ASSERT_TRUE(info_of("leaf-h2").has_upstream);
  /* The leaf comes back with CleanSession=0 and a will, then goes silent:
   * the session it resumed holds an upstream, which must be let go of. */
  send_connect("leaf-h2", 30, true, false);
  EXPECT_BYTES(0x02, MQTTSN_WILLTOPICREQ);
  ASSERT_TRUE(info_of("leaf-h2").has_upstream);
  ASSERT_EQ(F.closes, 0);
  ms = wait_state("leaf-h2", "disconnected", CONNACK_TIMEOUT_MS + 1000);
  ASSERT_TRUE(ms >= 0);
  ASSERT_EQ(F.closes, 1);
  ASSERT_TRUE(F.last_close_graceful);
  ASSERT_TRUE(!info_of("leaf-h2").has_upstream);
  ASSERT_EQ(g_m.connects_half_open, 1);
  expect_quiet();
  teardown();
  ASSERT_EQ(F.closes, 1);
}

static void test_register(void)
{
  struct mqttsn_msg m;
  uint16_t first;
  setup();
  ASSERT_TRUE(connect_leaf("leaf-r1", 30, true));
  send_register(0x0105, "sensors/r1/temp");
  if (expect(MQTTSN_REGACK, &m)) {
    first = m.u.regack.topic_id;
    ASSERT_EQ(g_rx_len, 7);
    ASSERT_EQ(m.u.regack.msg_id, 0x0105);
    ASSERT_EQ(m.u.regack.rc, MQTTSN_RC_ACCEPTED);
    ASSERT_TRUE(first != 0x0000 && first != 0xFFFF);
    /* The same name again: the same id. */
    send_register(0x0106, "sensors/r1/temp");
    if (expect(MQTTSN_REGACK, &m)) {
      ASSERT_EQ(m.u.regack.topic_id, first);
      ASSERT_EQ(m.u.regack.msg_id, 0x0106);
    }
    /* Another name: another id. */
    send_register(0x0107, "sensors/r1/hum");
    if (expect(MQTTSN_REGACK, &m)) {
      ASSERT_TRUE(m.u.regack.topic_id != first);
      ASSERT_EQ(m.u.regack.rc, MQTTSN_RC_ACCEPTED);
    }
  }
  /* A wildcard is no topic name: refused, id 0. */
  send_register(0x0108, "sensors/+/temp");
  EXPECT_BYTES(0x07, MQTTSN_REGACK, 0x00, 0x00, 0x01, 0x08, MQTTSN_RC_NOT_SUPPORTED);
  ASSERT_EQ(F.npubs, 0);
  teardown();
}

/* Connects cid and registers topic; returns its id (0 on failure). */
static uint16_t connect_and_register(const char *cid, const char *topic)
{
  struct mqttsn_msg m;
  if (!connect_leaf(cid, 30, true))
    return 0;
  send_register(1, topic);
  if (!expect(MQTTSN_REGACK, &m) || m.u.regack.rc != MQTTSN_RC_ACCEPTED)
    return 0;
  return m.u.regack.topic_id;
}

/* The leaf publishes; afterwards the uplink has seen n publishes in all. */
static void publish_relayed(int qos, uint16_t topic_id, uint16_t msg_id, const char *payload,
                            int n)
{
  send_publish(qos, topic_id, msg_id, payload);
  pump(20);
  ASSERT_EQ(F.npubs, n);
}

/* The next datagram is PUBACK(topic_id, msg_id, rc), byte for byte. */
static void expect_puback(uint16_t topic_id, uint16_t msg_id, uint8_t rc)
{
  EXPECT_BYTES(0x07, MQTTSN_PUBACK, (uint8_t)(topic_id >> 8), (uint8_t)topic_id,
               (uint8_t)(msg_id >> 8), (uint8_t)msg_id, rc);
}

/* setup() and connect_and_register(). */
static uint16_t start_registered(const char *cid, const char *topic)
{
  uint16_t tid;
  setup();
  tid = connect_and_register(cid, topic);
  ASSERT_TRUE(tid != 0);
  return tid;
}

static void test_publish_qos0(void)
{
  uint16_t tid = start_registered("leaf-p0", "data/p0");
  publish_relayed(0, tid, 0, "hello", 1);
  ASSERT_STR_EQ(F.pubs[0].topic, "data/p0");
  ASSERT_EQ(F.pubs[0].len, 5);
  ASSERT_MEM_EQ(F.pubs[0].payload, "hello", 5);
  ASSERT_EQ(F.pubs[0].qos, 0);
  ASSERT_TRUE(F.pubs[0].token == NULL);
  /* QoS 0 is not acknowledged. */
  expect_quiet();
  ASSERT_EQ(info_of("leaf-p0").msgs_in, 1);
  /* An uplink that cannot take it: PUBACK congestion. */
  F.pub_rc = SESS_UP_FULL;
  send_publish(0, tid, 0, "again");
  expect_puback(tid, 0x0000, MQTTSN_RC_CONGESTION);
  ASSERT_EQ(g_m.uplink_congestion, 1);
  teardown();
}

static void test_publish_qos1_acked_only_after_the_broker(void)
{
  uint16_t tid = start_registered("leaf-p1", "data/p1");
  publish_relayed(1, tid, 0x0A0B, "one", 1);
  ASSERT_STR_EQ(F.pubs[0].topic, "data/p1");
  ASSERT_EQ(F.pubs[0].qos, 1);
  ASSERT_TRUE(F.pubs[0].token != NULL);
  /* No PUBACK while the broker has not acknowledged it. */
  expect_quiet();
  /* The leaf repeats it (DUP): still on its way, not relayed twice. */
  publish_relayed(1, tid, 0x0A0B, "one", 1);
  expect_quiet();
  report_acked(0);
  expect_puback(tid, 0x0A0B, MQTTSN_RC_ACCEPTED);
  expect_quiet();
  teardown();
}

static void test_publish_refused_by_the_broker(void)
{
  uint16_t tid = start_registered("leaf-p2", "data/p2");
  send_publish(1, tid, 0x0001, "denied");
  publish_relayed(1, tid, 0x0002, "allowed", 2);
  expect_quiet();
  report_refused(0);
  expect_puback(tid, 0x0001, MQTTSN_RC_NOT_SUPPORTED);
  ASSERT_EQ(info_of("leaf-p2").msgs_refused, 1);
  ASSERT_EQ(g_m.publish_refused, 1);
  /* The one behind it goes on. */
  report_acked(1);
  expect_puback(tid, 0x0002, MQTTSN_RC_ACCEPTED);
  ASSERT_STR_EQ(state_of("leaf-p2"), "active");
  teardown();
}

static void test_publish_unknown_topic_id(void)
{
  setup();
  ASSERT_TRUE(connect_leaf("leaf-p3", 30, true));
  send_publish(1, 0x0077, 0x0005, "x");
  expect_puback(0x0077, 0x0005, MQTTSN_RC_INVALID_TOPIC_ID);
  ASSERT_EQ(F.npubs, 0);
  ASSERT_EQ(g_m.invalid_topic_id, 1);
  teardown();
}

static void test_publish_qos2(void)
{
  uint16_t tid = start_registered("leaf-p4", "data/p4");
  publish_relayed(2, tid, 0x0033, "two", 1);
  /* Upstream at QoS 1 (no QoS 2 upstream). */
  ASSERT_EQ(F.pubs[0].qos, 1);
  expect_quiet();
  report_acked(0);
  EXPECT_BYTES(0x04, MQTTSN_PUBREC, 0x00, 0x33);
  /* The PUBREC was lost: the repeated PUBLISH is answered, not relayed. */
  send_publish(2, tid, 0x0033, "two");
  EXPECT_BYTES(0x04, MQTTSN_PUBREC, 0x00, 0x33);
  ASSERT_EQ(F.npubs, 1);
  send_msgid(MQTTSN_PUBREL, 0x0033);
  EXPECT_BYTES(0x04, MQTTSN_PUBCOMP, 0x00, 0x33);
  teardown();
}

static void test_subscribe(void)
{
  struct mqttsn_msg m;
  uint8_t refused = 0x80, granted = 1;
  setup();
  ASSERT_TRUE(connect_leaf("leaf-s1", 30, true));
  send_subscribe(false, 0x0201, "cmd/s1", 1);
  pump(20);
  ASSERT_EQ(F.nsubs, 1);
  ASSERT_STR_EQ(F.subs[0].filter, "cmd/s1");
  ASSERT_EQ(F.subs[0].qos, 1);
  /* No SUBACK before the broker's. */
  expect_quiet();
  sess_up_suback(F.s, F.subs[0].pid, &granted, 1);
  if (expect(MQTTSN_SUBACK, &m)) {
    ASSERT_EQ(g_rx_len, 8);
    ASSERT_EQ(m.u.suback.msg_id, 0x0201);
    ASSERT_EQ(m.u.suback.rc, MQTTSN_RC_ACCEPTED);
    ASSERT_EQ(m.u.suback.flags.qos, 1);
    /* A topic name gets its id at once. */
    ASSERT_TRUE(m.u.suback.topic_id != 0);
  }
  /* A wildcard filter: TopicId 0 (§5.4.16). */
  send_subscribe(false, 0x0202, "cmd/s1/#", 0);
  pump(20);
  ASSERT_EQ(F.nsubs, 2);
  ASSERT_EQ(F.subs[1].qos, 0);
  granted = 0;
  sess_up_suback(F.s, F.subs[1].pid, &granted, 1);
  EXPECT_BYTES(0x08, MQTTSN_SUBACK, 0x00, 0x00, 0x00, 0x02, 0x02, MQTTSN_RC_ACCEPTED);
  /* The broker refuses one: 0x03. */
  send_subscribe(false, 0x0203, "forbidden/x", 0);
  pump(20);
  ASSERT_EQ(F.nsubs, 3);
  sess_up_suback(F.s, F.subs[2].pid, &refused, 1);
  if (expect(MQTTSN_SUBACK, &m)) {
    ASSERT_EQ(m.u.suback.msg_id, 0x0203);
    ASSERT_EQ(m.u.suback.rc, MQTTSN_RC_NOT_SUPPORTED);
  }
  /* The uplink cannot take it now: SUBACK congestion at once. */
  F.sub_rc = SESS_UP_FULL;
  send_subscribe(false, 0x0204, "cmd/other", 0);
  EXPECT_BYTES(0x08, MQTTSN_SUBACK, 0x00, 0x00, 0x00, 0x02, 0x04, MQTTSN_RC_CONGESTION);
  F.sub_rc = SESS_UP_OK;
  /* UNSUBSCRIBE goes to the broker; UNSUBACK after its UNSUBACK. */
  send_subscribe(true, 0x0205, "cmd/s1", 0);
  pump(20);
  ASSERT_EQ(F.nsubs, 4);
  ASSERT_TRUE(F.subs[3].unsub);
  ASSERT_STR_EQ(F.subs[3].filter, "cmd/s1");
  expect_quiet();
  sess_up_unsuback(F.s, F.subs[3].pid);
  EXPECT_BYTES(0x04, MQTTSN_UNSUBACK, 0x02, 0x05);
  teardown();
}

static int count_sub(void *ud, const char *filter, int qos)
{
  int *n = ud;
  (void)qos;
  if (strcmp(filter, "cmd/k1") == 0)
    *n += 1;
  return 0;
}

static void test_subscriptions_kept(void)
{
  uint8_t granted = 1;
  int n = 0;
  setup();
  ASSERT_TRUE(connect_leaf("leaf-s2", 30, true));
  send_subscribe(false, 1, "cmd/k1", 1);
  pump(20);
  ASSERT_EQ(F.nsubs, 1);
  /* Not held until the broker granted it. */
  sess_each_sub(leaves_find(g_lv, "leaf-s2"), count_sub, &n);
  ASSERT_EQ(n, 0);
  sess_up_suback(F.s, F.subs[0].pid, &granted, 1);
  expect(MQTTSN_SUBACK, &(struct mqttsn_msg){0});
  sess_each_sub(leaves_find(g_lv, "leaf-s2"), count_sub, &n);
  ASSERT_EQ(n, 1);
  /* The upstream reconnects without its session: the leaf's subscription is
   * sent again, and the broker's SUBACK for it is not passed to the leaf. */
  sess_up_down(F.s, false);
  ASSERT_TRUE(!info_of("leaf-s2").upstream_up);
  sess_up_up(F.s, false);
  ASSERT_EQ(F.nsubs, 2);
  ASSERT_STR_EQ(F.subs[1].filter, "cmd/k1");
  ASSERT_EQ(F.subs[1].qos, 1);
  sess_up_suback(F.s, F.subs[1].pid, &granted, 1);
  expect_quiet();
  teardown();
}

static void test_pingreq(void)
{
  setup();
  ASSERT_TRUE(connect_leaf("leaf-g1", 30, true));
  send_type(MQTTSN_PINGREQ);
  EXPECT_BYTES(0x02, MQTTSN_PINGRESP);
  ASSERT_STR_EQ(state_of("leaf-g1"), "active");
  teardown();
}

static void test_keepalive_expiry(void)
{
  int ms;
  setup();
  /* With a will that the upstream CONNECT carried: the link is closed
   * abruptly so that the broker publishes it. */
  send_connect("leaf-k1", 1, true, true);
  EXPECT_BYTES(0x02, MQTTSN_WILLTOPICREQ);
  send_willtopic("leaf/k1/status", 1, false);
  EXPECT_BYTES(0x02, MQTTSN_WILLMSGREQ);
  send_willmsg("lost");
  pump(20);
  ASSERT_EQ(F.opens, 1);
  sess_up_up(F.s, false);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_ACCEPTED);
  /* Duration 1 s: lost 1.5 s after the last message (§7.2), not before. */
  ms = wait_state("leaf-k1", "lost", 3500);
  ASSERT_TRUE(ms >= 1400);
  if (ms < 1400)
    fprintf(stderr, "  lost after %d ms\n", ms);
  ASSERT_EQ(F.closes, 1);
  ASSERT_TRUE(!F.last_close_graceful);
  ASSERT_EQ(g_m.leaves_lost, 1);
  ASSERT_EQ(g_m.wills_published, 1);
  ASSERT_TRUE(!info_of("leaf-k1").has_upstream);
  /* Its address is forgotten: a message from it gets DISCONNECT. */
  ASSERT_TRUE(!info_of("leaf-k1").has_address);
  send_type(MQTTSN_PINGREQ);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_EQ(F.closes, 1);
  teardown();
  ASSERT_EQ(F.closes, 1);
}

static void test_keepalive_kept_by_pings(void)
{
  setup();
  ASSERT_TRUE(connect_leaf("leaf-k2", 1, true));
  /* A PINGREQ every 0.5 s keeps a 1 s session for 2.5 s. */
  for (int i = 0; i < 5; i++) {
    pump(500);
    send_type(MQTTSN_PINGREQ);
    EXPECT_BYTES(0x02, MQTTSN_PINGRESP);
  }
  ASSERT_STR_EQ(state_of("leaf-k2"), "active");
  ASSERT_EQ(F.closes, 0);
  teardown();
}

/* setup(), a connected leaf cid, and its granted QoS 1 subscription to
 * filter (a topic name); returns the topic id its SUBACK gave (0 on
 * failure). */
static uint16_t start_subscribed(const char *cid, const char *filter)
{
  struct mqttsn_msg m;
  uint8_t granted = 1;
  setup();
  if (!connect_leaf(cid, 30, true))
    return 0;
  send_subscribe(false, 1, filter, 1);
  pump(20);
  ASSERT_EQ(F.nsubs, 1);
  if (F.nsubs != 1)
    return 0;
  sess_up_suback(F.s, F.subs[0].pid, &granted, 1);
  if (!expect(MQTTSN_SUBACK, &m))
    return 0;
  ASSERT_TRUE(m.u.suback.topic_id != 0);
  return m.u.suback.topic_id;
}

static void test_sleep_buffers_and_wake_delivers(void)
{
  struct mqttsn_msg m;
  uint16_t cmd_tid = 0;
  struct session *s;
  cmd_tid = start_subscribed("leaf-z1", "cmd/z1");
  s = F.s;

  /* DISCONNECT with a duration: asleep, acknowledged by a DISCONNECT without
   * one; the upstream stays. */
  send_disconnect(true, 5);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_STR_EQ(state_of("leaf-z1"), "asleep");
  ASSERT_EQ(F.closes, 0);
  ASSERT_TRUE(info_of("leaf-z1").has_upstream);

  /* The broker's messages are buffered, not sent. */
  sess_up_message(s, "cmd/z1", 6, (const uint8_t *)"on", 2, 1, false, 42);
  sess_up_message(s, "cmd/z1/more", 11, (const uint8_t *)"x", 1, 0, false, 0);
  expect_quiet();
  ASSERT_EQ(info_of("leaf-z1").queued, 2);
  ASSERT_EQ(F.npubacks, 0);

  /* PINGREQ with the ClientId wakes it: the QoS 1 message first. */
  send_wake_ping("leaf-z1");
  if (expect(MQTTSN_PUBLISH, &m)) {
    ASSERT_EQ(m.u.publish.flags.qos, 1);
    ASSERT_EQ(m.u.publish.flags.topic_type, MQTTSN_TOPIC_NORMAL);
    ASSERT_EQ(m.u.publish.topic_id, cmd_tid);
    ASSERT_EQ(m.u.publish.data.len, 2);
    ASSERT_MEM_EQ(m.u.publish.data.p, "on", 2);
    ASSERT_TRUE(m.u.publish.msg_id != 0);
    ASSERT_STR_EQ(state_of("leaf-z1"), "awake");
    /* Acknowledged upstream only once the leaf acknowledged it. */
    ASSERT_EQ(F.npubacks, 0);
    send_puback(cmd_tid, m.u.publish.msg_id, MQTTSN_RC_ACCEPTED);
  }
  /* The second topic is new to the leaf: REGISTER first. */
  if (expect(MQTTSN_REGISTER, &m)) {
    uint16_t tid = m.u.reg.topic_id, mid = m.u.reg.msg_id;
    ASSERT_EQ(F.npubacks, 1);
    ASSERT_EQ(F.pubacks[0], 42);
    ASSERT_EQ(m.u.reg.topic_name.len, 11);
    ASSERT_MEM_EQ(m.u.reg.topic_name.p, "cmd/z1/more", 11);
    ASSERT_TRUE(tid != 0 && tid != cmd_tid);
    send_regack(tid, mid, MQTTSN_RC_ACCEPTED);
    if (expect(MQTTSN_PUBLISH, &m)) {
      ASSERT_EQ(m.u.publish.flags.qos, 0);
      ASSERT_EQ(m.u.publish.topic_id, tid);
      ASSERT_EQ(m.u.publish.msg_id, 0);
      ASSERT_EQ(m.u.publish.data.len, 1);
    }
  }
  /* The queue is empty: PINGRESP, and back to sleep. */
  EXPECT_BYTES(0x02, MQTTSN_PINGRESP);
  ASSERT_STR_EQ(state_of("leaf-z1"), "asleep");
  ASSERT_EQ(info_of("leaf-z1").queued, 0);
  ASSERT_EQ(info_of("leaf-z1").msgs_out, 2);
  ASSERT_EQ(F.npubacks, 1);
  /* A PUBLISH while asleep is not served: DISCONNECT. */
  send_publish(0, cmd_tid, 0, "no");
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_EQ(F.npubs, 0);
  /* Waking with nothing queued: PINGRESP at once. */
  send_wake_ping("leaf-z1");
  EXPECT_BYTES(0x02, MQTTSN_PINGRESP);
  ASSERT_STR_EQ(state_of("leaf-z1"), "asleep");
  ASSERT_EQ(F.closes, 0);
  teardown();
}

static void test_sleep_queue_bounded(void)
{
  setup();
  ASSERT_TRUE(connect_leaf("leaf-z2", 30, true));
  send_disconnect(true, 5);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  /* lan.queue_max is 4: the fifth QoS 1 message is dropped and acknowledged
   * upstream at once. */
  for (uint16_t pid = 1; pid <= 5; pid++)
    sess_up_message(F.s, "cmd/z2", 6, (const uint8_t *)"v", 1, 1, false, pid);
  ASSERT_EQ(info_of("leaf-z2").queued, 4);
  ASSERT_EQ(g_m.queue_dropped, 1);
  ASSERT_EQ(F.npubacks, 1);
  ASSERT_EQ(F.pubacks[0], 5);
  teardown();
}

static void test_sleep_timer_expiry(void)
{
  int ms;
  setup();
  ASSERT_TRUE(connect_leaf("leaf-z3", 30, true));
  send_disconnect(true, 1);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_STR_EQ(state_of("leaf-z3"), "asleep");
  ms = wait_state("leaf-z3", "lost", 3500);
  ASSERT_TRUE(ms >= 1400);
  ASSERT_EQ(F.closes, 1);
  /* No will: a graceful close. */
  ASSERT_TRUE(F.last_close_graceful);
  ASSERT_EQ(g_m.leaves_lost, 1);
  teardown();
  ASSERT_EQ(F.closes, 1);
}

static void test_connect_while_asleep_resumes(void)
{
  struct mqttsn_msg m;
  uint16_t tid = 0;
  tid = start_subscribed("leaf-z4", "cmd/z4");
  send_disconnect(true, 5);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  sess_up_message(F.s, "cmd/z4", 6, (const uint8_t *)"go", 2, 1, false, 7);
  ASSERT_EQ(info_of("leaf-z4").queued, 1);
  /* A CONNECT (even with CleanSession=1) brings a sleeper back: the same
   * upstream, CONNACK at once, then what was buffered. */
  send_connect("leaf-z4", 30, false, true);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_ACCEPTED);
  ASSERT_STR_EQ(state_of("leaf-z4"), "active");
  ASSERT_EQ(F.opens, 1);
  ASSERT_EQ(F.closes, 0);
  if (expect(MQTTSN_PUBLISH, &m)) {
    ASSERT_EQ(m.u.publish.topic_id, tid);
    ASSERT_EQ(m.u.publish.flags.qos, 1);
    ASSERT_TRUE(!m.u.publish.flags.dup);
    send_puback(tid, m.u.publish.msg_id, MQTTSN_RC_ACCEPTED);
  }
  pump(20);
  ASSERT_EQ(F.npubacks, 1);
  ASSERT_EQ(F.pubacks[0], 7);
  ASSERT_EQ(info_of("leaf-z4").queued, 0);
  teardown();
}

static void test_downlink_retransmitted_then_lost(void)
{
  struct mqttsn_msg m;
  uint16_t tid = 0, mid = 0;
  int ms;
  tid = start_subscribed("leaf-t1", "cmd/t1");
  sess_up_message(F.s, "cmd/t1", 6, (const uint8_t *)"hi", 2, 1, false, 99);
  if (expect(MQTTSN_PUBLISH, &m)) {
    mid = m.u.publish.msg_id;
    ASSERT_TRUE(!m.u.publish.flags.dup);
    ASSERT_EQ(m.u.publish.topic_id, tid);
  }
  /* Not acknowledged: sent again with DUP after lan.t_retry_ms (500), the
   * same MsgId, lan.n_retry (2) times. */
  for (int i = 0; i < 2; i++) {
    ASSERT_TRUE(leaf_recv(&m, 1500));
    ASSERT_EQ(m.type, MQTTSN_PUBLISH);
    ASSERT_TRUE(m.u.publish.flags.dup);
    ASSERT_EQ(m.u.publish.msg_id, mid);
  }
  ASSERT_EQ(g_m.retransmissions, 2);
  /* Then the leaf is considered lost; the broker's message is not
   * acknowledged upstream (a persistent session gets it again). */
  ms = wait_state("leaf-t1", "lost", 2000);
  ASSERT_TRUE(ms >= 0);
  ASSERT_EQ(F.npubacks, 0);
  ASSERT_EQ(F.closes, 1);
  ASSERT_EQ(g_m.leaves_lost, 1);
  teardown();
}

static void test_awake_leaf_silent_goes_back_to_sleep(void)
{
  struct mqttsn_msg m;
  ASSERT_TRUE(start_subscribed("leaf-t2", "cmd/t2") != 0);
  send_disconnect(true, 10);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  sess_up_message(F.s, "cmd/t2", 6, (const uint8_t *)"z", 1, 1, false, 5);
  send_wake_ping("leaf-t2");
  ASSERT_TRUE(expect(MQTTSN_PUBLISH, &m));
  ASSERT_STR_EQ(state_of("leaf-t2"), "awake");
  /* Never acknowledged: after the retries it is asleep again, the message
   * still queued for next time, the upstream kept. */
  ASSERT_TRUE(wait_state("leaf-t2", "asleep", 3000) >= 0);
  ASSERT_EQ(info_of("leaf-t2").queued, 1);
  ASSERT_EQ(F.npubacks, 0);
  ASSERT_EQ(F.closes, 0);
  /* The next wake delivers it again. */
  while (leaf_recv(&m, 20))
    ;
  send_wake_ping("leaf-t2");
  ASSERT_TRUE(expect(MQTTSN_PUBLISH, &m));
  send_puback(m.u.publish.topic_id, m.u.publish.msg_id, MQTTSN_RC_ACCEPTED);
  EXPECT_BYTES(0x02, MQTTSN_PINGRESP);
  ASSERT_EQ(F.npubacks, 1);
  ASSERT_EQ(info_of("leaf-t2").queued, 0);
  teardown();
}

static void test_disconnect_ends_the_upstream_once(void)
{
  uint16_t tid = start_registered("leaf-d1", "data/d1");
  /* A QoS 1 publish still waiting for the broker when the leaf leaves. */
  publish_relayed(1, tid, 9, "late", 1);
  send_disconnect(false, 0);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_STR_EQ(state_of("leaf-d1"), "disconnected");
  ASSERT_EQ(F.closes, 1);
  ASSERT_TRUE(F.last_close_graceful);
  ASSERT_TRUE(!info_of("leaf-d1").has_upstream);
  /* The broker's late acknowledgement names no session: nothing to the leaf
   * (and the token is freed). */
  F.pubs[0].reported = true;
  sess_up_acked(NULL, F.pubs[0].token);
  expect_quiet();
  /* A second DISCONNECT is answered but ends nothing more. */
  send_disconnect(false, 0);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_EQ(F.closes, 1);
  teardown();
  ASSERT_EQ(F.closes, 1);
  ASSERT_EQ(F.opens, 1);
}

static void test_reconnect_after_disconnect(void)
{
  setup();
  ASSERT_TRUE(connect_leaf("leaf-d2", 30, true));
  send_disconnect(false, 0);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_EQ(F.closes, 1);
  /* A new CONNECT asks for a new upstream. */
  ASSERT_TRUE(connect_leaf("leaf-d2", 30, true));
  ASSERT_EQ(F.opens, 2);
  ASSERT_EQ(F.closes, 1);
  teardown();
  ASSERT_EQ(F.closes, 2);
}

static void test_qos_minus1_needs_no_session(void)
{
  setup();
  /* A short topic name "ab": no CONNECT, no session, no reply. */
  SEND(.type = MQTTSN_PUBLISH,
       .u.publish = {.flags = {.qos = MQTTSN_QOS_M1, .topic_type = MQTTSN_TOPIC_SHORT},
                     .topic_id = ('a' << 8) | 'b', .data = str("m1")});
  pump(20);
  ASSERT_EQ(F.anons, 1);
  ASSERT_STR_EQ(F.pubs[0].topic, "ab");
  ASSERT_EQ(F.pubs[0].len, 2);
  ASSERT_MEM_EQ(F.pubs[0].payload, "m1", 2);
  ASSERT_EQ(F.opens, 0);
  expect_quiet();
  /* A predefined id that is not configured: dropped. */
  SEND(.type = MQTTSN_PUBLISH,
       .u.publish = {.flags = {.qos = MQTTSN_QOS_M1, .topic_type = MQTTSN_TOPIC_PREDEFINED},
                     .topic_id = 5, .data = str("m2")});
  pump(20);
  ASSERT_EQ(F.anons, 1);
  ASSERT_EQ(g_m.qos_m1_dropped, 1);
  expect_quiet();
  teardown();
}

static void test_upstream_refuses_the_identity(void)
{
  setup();
  ASSERT_TRUE(connect_leaf("leaf-u1", 30, true));
  /* A broker that refuses the identity: the leaf is told, the link released. */
  sess_up_down(F.s, true);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_STR_EQ(state_of("leaf-u1"), "disconnected");
  ASSERT_EQ(F.closes, 1);
  /* While the leaf waits for its CONNACK: CONNACK 0x03. */
  send_connect("leaf-u1", 30, false, true);
  pump(20);
  ASSERT_EQ(F.opens, 2);
  sess_up_down(F.s, true);
  EXPECT_BYTES(0x03, MQTTSN_CONNACK, MQTTSN_RC_NOT_SUPPORTED);
  ASSERT_STR_EQ(state_of("leaf-u1"), "disconnected");
  ASSERT_EQ(F.closes, 2);
  teardown();
  ASSERT_EQ(F.closes, 2);
}

static void test_upstream_down_too_long(void)
{
  uint32_t saved = g_cfg->upstream.give_up_after_s;
  int ms;
  g_cfg->upstream.give_up_after_s = 1;
  setup();
  ASSERT_TRUE(connect_leaf("leaf-u2", 30, true));
  /* Down, then back within the second: nothing happens. */
  sess_up_down(F.s, false);
  ASSERT_TRUE(!info_of("leaf-u2").upstream_up);
  ASSERT_TRUE(info_of("leaf-u2").has_upstream);
  pump(500);
  sess_up_up(F.s, true);
  pump(800);
  expect_quiet();
  ASSERT_STR_EQ(state_of("leaf-u2"), "active");
  ASSERT_EQ(F.closes, 0);
  /* Down for longer than upstream.give_up_after_s: the leaf is told. */
  sess_up_down(F.s, false);
  ms = wait_state("leaf-u2", "disconnected", 3000);
  ASSERT_TRUE(ms >= 900);
  EXPECT_BYTES(0x02, MQTTSN_DISCONNECT);
  ASSERT_EQ(F.closes, 1);
  ASSERT_EQ(g_m.upstream_given_up, 1);
  teardown();
  g_cfg->upstream.give_up_after_s = saved;
}

int main(void)
{
  char tmpl[] = "/tmp/fleetgw-test-session-XXXXXX";
  char path[128];

  if (!getenv("FLEETGW_TEST_VERBOSE"))
    log_set_level(LOG_ERROR);
  if (!mkdtemp(tmpl)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(g_dir, sizeof g_dir, "%s", tmpl);
  if (uv_loop_init(&g_loop) != 0 || load_config() != 0 || open_store() != 0) {
    fprintf(stderr, "cannot set up the test\n");
    return 1;
  }

  RUN(test_connect_waits_for_the_upstream);
  RUN(test_connect_repeated_while_waiting);
  RUN(test_connack_congestion_when_upstream_never_up);
  RUN(test_open_refused_is_connack_not_supported);
  RUN(test_will_prompts_then_open_with_will);
  RUN(test_will_topic_with_wildcard_refused);
  RUN(test_will_prompts_time_out);
  RUN(test_half_open_resume_releases_the_upstream);
  RUN(test_register);
  RUN(test_publish_qos0);
  RUN(test_publish_qos1_acked_only_after_the_broker);
  RUN(test_publish_refused_by_the_broker);
  RUN(test_publish_unknown_topic_id);
  RUN(test_publish_qos2);
  RUN(test_subscribe);
  RUN(test_subscriptions_kept);
  RUN(test_pingreq);
  RUN(test_keepalive_expiry);
  RUN(test_keepalive_kept_by_pings);
  RUN(test_sleep_buffers_and_wake_delivers);
  RUN(test_sleep_queue_bounded);
  RUN(test_sleep_timer_expiry);
  RUN(test_connect_while_asleep_resumes);
  RUN(test_downlink_retransmitted_then_lost);
  RUN(test_awake_leaf_silent_goes_back_to_sleep);
  RUN(test_disconnect_ends_the_upstream_once);
  RUN(test_reconnect_after_disconnect);
  RUN(test_qos_minus1_needs_no_session);
  RUN(test_upstream_refuses_the_identity);
  RUN(test_upstream_down_too_long);

  store_close(g_store);
  cfg_free(g_cfg);
  ASSERT_EQ(uv_loop_close(&g_loop), 0);
  snprintf(path, sizeof path, "rm -rf '%s'", g_dir);
  if (system(path) != 0)
    fprintf(stderr, "cannot remove %s\n", g_dir);
  return TEST_END();
}
