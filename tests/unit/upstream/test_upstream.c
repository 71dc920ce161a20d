/*
 * Tests for gateway/upstream/upstream.c (and tls.c) against a real mosquitto started
 * here: plain TCP and TLS with client certificates, verification failures,
 * QoS 0/1 both ways, broker restart with a message queued during the
 * outage, wills on abrupt versus graceful stop, timeouts, and a clean loop
 * at the end (uv_loop_close() == 0).
 *
 * The certificates are generated with the openssl CLI into a temporary
 * directory; mosquitto listens on three free loopback ports:
 *   plain      anonymous MQTT
 *   tls        server cert for localhost / 127.0.0.1, client cert required
 *   tls_wrong  server cert for "wronghost" only (name mismatch)
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "test.h"
#include "tls.h"
#include "upstream.h"

#define MOSQUITTO "/usr/sbin/mosquitto"
#define STEP_MS 8000 /* generous per-step timeout */

static char g_dir[64];
static char g_conf[128];
static pid_t g_broker = -1;
static uint16_t g_port_plain, g_port_tls, g_port_tls_wrong;
static uv_loop_t g_loop;
static uv_timer_t g_tick;

/* ---- processes, ports, files ---- */

static uint64_t now_ms(void) { return uv_hrtime() / 1000000u; }

static void sleep_ms(int ms)
{
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static uint16_t free_port(void)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  uint16_t port = 0;

  if (fd < 0)
    return 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static bool port_accepts(uint16_t port)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  bool ok;

  if (fd < 0)
    return false;
  ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

static int run_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run_cmd(const char *fmt, ...)
{
  char cmd[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  if (rc != 0)
    fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
  return rc;
}

static int write_file(const char *name, const char *text)
{
  char path[256];
  FILE *f;
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  f = fopen(path, "w");
  if (!f)
    return -1;
  fputs(text, f);
  return fclose(f);
}

/* A signed leaf certificate: key, CSR, then the CA's signature with SANs. */
static int make_leaf(const char *name, const char *cn, const char *ext)
{
  char extname[64];
  snprintf(extname, sizeof extname, "%s.ext", name);
  if (write_file(extname, ext) < 0)
    return -1;
  return run_cmd("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                 "-keyout %s.key -out %s.csr -subj /CN=%s 2>/dev/null >/dev/null && "
                 "openssl x509 -req -in %s.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
                 "-out %s.crt -days 2 -extfile %s 2>/dev/null >/dev/null",
                 g_dir, name, name, cn, name, name, extname);
}

static int make_certs(void)
{
  if (run_cmd("cd %s && for ca in ca ca2; do openssl req -x509 -newkey ec -pkeyopt "
              "ec_paramgen_curve:prime256v1 -nodes -keyout $ca.key -out $ca.crt -days 2 "
              "-subj /CN=fleetgw-test-$ca 2>/dev/null >/dev/null || exit 1; done",
              g_dir) != 0)
    return -1;
  if (make_leaf("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n") != 0 ||
      make_leaf("server2", "wronghost", "subjectAltName=DNS:wronghost\n") != 0 ||
      make_leaf("client", "fleetgw-client", "extendedKeyUsage=clientAuth\n") != 0)
    return -1;
  return 0;
}

static int write_broker_conf(void)
{
  char text[2048];
  snprintf(text, sizeof text,
           "per_listener_settings false\n"
           "allow_anonymous true\n"
           "persistence false\n"
           "user root\n"
           "log_dest file %s/mosquitto.log\n"
           "log_type all\n"
           /* One QoS 1 message in flight towards a client: this makes the
            * effect of upstream_puback() observable. */
           "max_inflight_messages 1\n"
           "listener %u 127.0.0.1\n"
           "listener %u 127.0.0.1\n"
           "cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key\n"
           "require_certificate true\n"
           "listener %u 127.0.0.1\n"
           "cafile %s/ca.crt\ncertfile %s/server2.crt\nkeyfile %s/server2.key\n"
           "require_certificate true\n",
           g_dir, g_port_plain, g_port_tls, g_dir, g_dir, g_dir, g_port_tls_wrong, g_dir, g_dir,
           g_dir);
  snprintf(g_conf, sizeof g_conf, "%s/mosquitto.conf", g_dir);
  return write_file("mosquitto.conf", text);
}

static int start_broker(void)
{
  uint64_t deadline = now_ms() + 5000;
  pid_t pid = fork();

  if (pid < 0)
    return -1;
  if (pid == 0) {
    char log[128];
    snprintf(log, sizeof log, "%s/mosquitto.out", g_dir);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(MOSQUITTO, "mosquitto", "-c", g_conf, (char *)NULL);
    _exit(127);
  }
  g_broker = pid;
  while (now_ms() < deadline) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      fprintf(stderr, "mosquitto exited early (status %d), see %s\n", status, g_dir);
      g_broker = -1;
      return -1;
    }
    if (port_accepts(g_port_plain) && port_accepts(g_port_tls) &&
        port_accepts(g_port_tls_wrong))
      return 0;
    sleep_ms(20);
  }
  return -1;
}

static void stop_broker(int sig)
{
  int status;
  if (g_broker <= 0)
    return;
  kill(g_broker, sig);
  for (int i = 0; i < 200; i++) {
    if (waitpid(g_broker, &status, WNOHANG) == g_broker) {
      g_broker = -1;
      return;
    }
    sleep_ms(10);
  }
  kill(g_broker, SIGKILL);
  waitpid(g_broker, &status, 0);
  g_broker = -1;
}

/* ---- a probe: one upstream and what its callbacks saw ---- */

struct probe {
  struct upstream *u;
  int up, down, closed, pubacks, subacks, unsubacks, messages, dropped;
  bool session_present;
  enum upstream_reason last_why;
  int last_rc;
  uint32_t last_retry;
  void *puback_tokens[8];
  void *dropped_tokens[8];
  uint8_t suback_code;
  uint16_t suback_id, unsuback_id;
  char topic[128];
  uint8_t payload[32768];
  size_t payload_len;
  size_t lens[16];               /* each message's payload length and byte sum */
  uint64_t sums[16];
  int qos;
  bool retain;
  uint16_t msg_id;
  bool auto_puback;
  bool stop_in_up, stop_in_down; /* re-entrancy: stop from a callback */
};

static void on_up(void *ud, bool sp)
{
  struct probe *p = ud;
  p->up++;
  p->session_present = sp;
  if (p->stop_in_up)
    upstream_stop(p->u, true);
}

static void on_down(void *ud, enum upstream_reason why, int rc, uint32_t retry_ms)
{
  struct probe *p = ud;
  p->down++;
  p->last_why = why;
  p->last_rc = rc;
  p->last_retry = retry_ms;
  if (p->stop_in_down)
    upstream_stop(p->u, false);
}

static void on_message(void *ud, const char *topic, size_t tlen, const uint8_t *payload,
                       size_t len, int qos, bool retain, uint16_t id)
{
  struct probe *p = ud;
  p->messages++;
  snprintf(p->topic, sizeof p->topic, "%.*s", (int)tlen, topic);
  p->payload_len = len < sizeof p->payload ? len : sizeof p->payload;
  if (len)
    memcpy(p->payload, payload, p->payload_len);
  if (p->messages <= 16) {
    p->lens[p->messages - 1] = len;
    p->sums[p->messages - 1] = 0;
    for (size_t i = 0; i < len; i++)
      p->sums[p->messages - 1] += payload[i];
  }
  p->qos = qos;
  p->retain = retain;
  p->msg_id = id;
  /* Calling back into the upstream from its own callback must be safe. */
  if (p->auto_puback && qos == 1)
    upstream_puback(p->u, id);
}

static void on_puback(void *ud, void *token)
{
  struct probe *p = ud;
  if (p->pubacks < 8)
    p->puback_tokens[p->pubacks] = token;
  p->pubacks++;
}

static void on_suback(void *ud, uint16_t id, const uint8_t *codes, size_t n)
{
  struct probe *p = ud;
  p->subacks++;
  p->suback_id = id;
  p->suback_code = n > 0 ? codes[0] : 0xff;
}

static void on_unsuback(void *ud, uint16_t id)
{
  struct probe *p = ud;
  p->unsubacks++;
  p->unsuback_id = id;
}

static void on_dropped(void *ud, void *token)
{
  struct probe *p = ud;
  if (p->dropped < 8)
    p->dropped_tokens[p->dropped] = token;
  p->dropped++;
}

static void on_closed(void *ud)
{
  struct probe *p = ud;
  p->closed++;
  p->u = NULL;
}

static const struct upstream_cbs g_cbs = {
    .on_up = on_up,         .on_down = on_down,         .on_message = on_message,
    .on_puback = on_puback, .on_suback = on_suback,     .on_unsuback = on_unsuback,
    .on_dropped = on_dropped, .on_closed = on_closed};

static struct upstream_opts plain_opts(const char *client_id)
{
  return (struct upstream_opts){
      .host = "127.0.0.1",
      .port = g_port_plain,
      .client_id = client_id,
      .keepalive = 30,
      .clean_session = true,
      .connect_timeout_ms = 5000,
      .backoff_base_ms = 100,
      .backoff_cap_ms = 400,
      .max_queue = 100,
      .max_packet = 64 * 1024,
  };
}

static void tick_cb(uv_timer_t *t) { (void)t; }

/* Runs the loop until cond holds or ms pass. */
#define WAIT_FOR(cond, ms)                                                    \
  do {                                                                        \
    uint64_t dl_ = now_ms() + (ms);                                           \
    while (!(cond) && now_ms() < dl_)                                         \
      uv_run(&g_loop, UV_RUN_ONCE);                                           \
  } while (0)

static void run_for(int ms)
{
  uint64_t dl = now_ms() + (uint64_t)ms;
  while (now_ms() < dl)
    uv_run(&g_loop, UV_RUN_ONCE);
}

static int start_probe(struct probe *p, const struct upstream_opts *o)
{
  int r = upstream_new(&g_loop, o, &g_cbs, p, &p->u);
  if (r == 0)
    r = upstream_start(p->u);
  return r;
}

static void stop_probe(struct probe *p, bool graceful)
{
  if (!p->u)
    return;
  upstream_stop(p->u, graceful);
  WAIT_FOR(p->closed == 1, STEP_MS);
  ASSERT_EQ(p->closed, 1);
}

/* ---- the cases ---- */

/* Plain TCP: subscribe, publish QoS 0 and 1 to ourselves, puback semantics
 * for incoming QoS 1, unsubscribe, keep-alive, graceful stop. */
static void test_plain(void)
{
  static struct probe a;
  struct upstream_opts o = plain_opts("fgw-plain");
  uint16_t sid = 0, uid = 0, first_id;
  int tok1, tok2;

  o.keepalive = 1; /* the broker drops us after 1.5 s without a PINGREQ */
  ASSERT_EQ(start_probe(&a, &o), 0);
  ASSERT_TRUE(!upstream_is_up(a.u));
  ASSERT_EQ(upstream_subscribe(a.u, "fgw/t/#", 7, 1, &sid), UPSTREAM_EFULL);
  WAIT_FOR(a.up == 1, STEP_MS);
  ASSERT_EQ(a.up, 1);
  ASSERT_TRUE(!a.session_present);
  ASSERT_TRUE(upstream_is_up(a.u));
  ASSERT_STR_EQ(upstream_client_id(a.u), "fgw-plain");

  ASSERT_EQ(upstream_subscribe(a.u, "fgw/t/#", 7, 1, &sid), 0);
  ASSERT_TRUE(sid != 0);
  WAIT_FOR(a.subacks == 1, STEP_MS);
  ASSERT_EQ(a.subacks, 1);
  ASSERT_EQ(a.suback_id, sid);
  ASSERT_EQ(a.suback_code, 1);

  ASSERT_EQ(upstream_publish(a.u, "fgw/t/a", 7, (const uint8_t *)"zero", 4, 0, false, NULL), 0);
  WAIT_FOR(a.messages == 1, STEP_MS);
  ASSERT_EQ(a.messages, 1);
  ASSERT_STR_EQ(a.topic, "fgw/t/a");
  ASSERT_EQ(a.payload_len, 4);
  ASSERT_MEM_EQ(a.payload, "zero", 4);
  ASSERT_EQ(a.qos, 0);
  ASSERT_EQ(a.msg_id, 0);

  ASSERT_EQ(upstream_publish(a.u, "fgw/t/b", 7, (const uint8_t *)"one", 3, 1, false, &tok1), 0);
  WAIT_FOR(a.pubacks == 1 && a.messages == 2, STEP_MS);
  ASSERT_EQ(a.pubacks, 1);
  ASSERT_TRUE(a.puback_tokens[0] == &tok1);
  ASSERT_EQ(a.messages, 2);
  ASSERT_STR_EQ(a.topic, "fgw/t/b");
  ASSERT_EQ(a.qos, 1);
  ASSERT_TRUE(a.msg_id != 0);
  ASSERT_EQ(upstream_queued(a.u), 0);
  first_id = a.msg_id;

  /* The broker keeps one QoS 1 message in flight to us, so the next one
   * arrives only once we acknowledged the first: proof that
   * upstream_puback() sends PUBACK. */
  ASSERT_EQ(upstream_publish(a.u, "fgw/t/c", 7, (const uint8_t *)"two", 3, 1, false, &tok2), 0);
  WAIT_FOR(a.pubacks == 2, STEP_MS);
  ASSERT_EQ(a.pubacks, 2);
  ASSERT_TRUE(a.puback_tokens[1] == &tok2);
  run_for(300);
  ASSERT_EQ(a.messages, 2);
  ASSERT_EQ(upstream_puback(a.u, (uint16_t)(first_id + 1000)), 0); /* unknown: ignored */
  run_for(200);
  ASSERT_EQ(a.messages, 2);
  ASSERT_EQ(upstream_puback(a.u, first_id), 0);
  WAIT_FOR(a.messages == 3, STEP_MS);
  ASSERT_EQ(a.messages, 3);
  ASSERT_STR_EQ(a.topic, "fgw/t/c");
  ASSERT_MEM_EQ(a.payload, "two", 3);
  ASSERT_EQ(upstream_puback(a.u, a.msg_id), 0);

  /* A packet larger than the small input buffer (it grows, then shrinks). */
  {
    static uint8_t big[20000];
    for (size_t i = 0; i < sizeof big; i++)
      big[i] = (uint8_t)(i * 7 + 3);
    ASSERT_EQ(upstream_publish(a.u, "fgw/t/big", 9, big, sizeof big, 0, false, NULL), 0);
    WAIT_FOR(a.messages == 4, STEP_MS);
    ASSERT_EQ(a.messages, 4);
    ASSERT_EQ(a.payload_len, sizeof big);
    ASSERT_MEM_EQ(a.payload, big, sizeof big);
  }

  /* Incoming QoS 2 (published by mosquitto_pub): delivered once, with
   * PUBREC/PUBREL/PUBCOMP done here.  The broker keeps one message in flight,
   * so the second arrives only if the first flow completed. */
  ASSERT_EQ(upstream_subscribe(a.u, "fgw/q2/#", 8, 2, NULL), 0);
  WAIT_FOR(a.subacks == 2, STEP_MS);
  ASSERT_EQ(a.suback_code, 2);
  ASSERT_EQ(run_cmd("/usr/bin/mosquitto_pub -h 127.0.0.1 -p %u -q 2 -t fgw/q2/x -m first && "
                    "/usr/bin/mosquitto_pub -h 127.0.0.1 -p %u -q 2 -t fgw/q2/y -m second",
                    g_port_plain, g_port_plain),
            0);
  WAIT_FOR(a.messages == 6, STEP_MS);
  ASSERT_EQ(a.messages, 6);
  ASSERT_STR_EQ(a.topic, "fgw/q2/y");
  ASSERT_EQ(a.qos, 2);
  ASSERT_MEM_EQ(a.payload, "second", 6);
  run_for(200);
  ASSERT_EQ(a.messages, 6);

  ASSERT_EQ(upstream_unsubscribe(a.u, "fgw/t/#", 7, &uid), 0);
  ASSERT_TRUE(uid != 0 && uid != sid);
  WAIT_FOR(a.unsubacks == 1, STEP_MS);
  ASSERT_EQ(a.unsubacks, 1);
  ASSERT_EQ(a.unsuback_id, uid);

  /* Idle for longer than 1.5 x keep-alive: only PINGREQs keep us up. */
  run_for(2600);
  ASSERT_EQ(a.down, 0);
  ASSERT_TRUE(upstream_is_up(a.u));

  stop_probe(&a, true);
  ASSERT_EQ(a.dropped, 0);
}

/* Argument checks and the queue bound, then a port with no listener:
 * on_down(TCP) with a retry in the back-off window, and on_dropped for the
 * queued messages on stop. */
static void test_refused_and_queue(void)
{
  static struct probe a;
  struct upstream_opts o = plain_opts("fgw-refused");
  int t1, t2;

  o.port = free_port();
  o.max_queue = 2;
  o.backoff_base_ms = 50;
  o.backoff_cap_ms = 100;
  ASSERT_EQ(upstream_new(&g_loop, &o, &g_cbs, &a, &a.u), 0);
  ASSERT_EQ(upstream_publish(a.u, "x/y", 3, (const uint8_t *)"1", 1, 2, false, NULL),
            UPSTREAM_EINVAL);
  ASSERT_EQ(upstream_publish(a.u, "x/#", 3, (const uint8_t *)"1", 1, 0, false, NULL),
            UPSTREAM_EINVAL);
  ASSERT_EQ(upstream_publish(a.u, "x/y", 3, (const uint8_t *)"1", 1, 1, false, &t1), 0);
  ASSERT_EQ(upstream_publish(a.u, "x/y", 3, (const uint8_t *)"2", 1, 0, false, &t2), 0);
  ASSERT_EQ(upstream_publish(a.u, "x/y", 3, (const uint8_t *)"3", 1, 0, false, NULL),
            UPSTREAM_EFULL);
  ASSERT_EQ(upstream_queued(a.u), 2);
  ASSERT_EQ(upstream_start(a.u), 0);
  WAIT_FOR(a.down >= 3, STEP_MS);
  ASSERT_TRUE(a.down >= 3);
  ASSERT_EQ(a.last_why, UPSTREAM_R_TCP);
  /* Back-off (base 50 ms) is floored so that attempts of one client id
   * start at least a second apart (AWS IoT's per-client-id CONNECT limit). */
  ASSERT_TRUE(a.last_retry >= 900 && a.last_retry <= 1000);
  ASSERT_EQ(a.up, 0);
  ASSERT_EQ(upstream_queued(a.u), 2);
  stop_probe(&a, false);
  ASSERT_EQ(a.dropped, 2);
  ASSERT_TRUE(a.dropped_tokens[0] == &t1 && a.dropped_tokens[1] == &t2);

  /* Bad options. */
  struct upstream *u = NULL;
  struct upstream_opts bad = plain_opts("x");
  bad.host = NULL;
  ASSERT_EQ(upstream_new(&g_loop, &bad, &g_cbs, NULL, &u), UPSTREAM_EINVAL);
  bad = plain_opts("x");
  bad.password = "secret";
  ASSERT_EQ(upstream_new(&g_loop, &bad, &g_cbs, NULL, &u), UPSTREAM_EINVAL);
  ASSERT_TRUE(u == NULL);
}

/* A listener that accepts (kernel backlog) but never answers: the CONNACK
 * never comes and the attempt times out. */
static void test_connect_timeout(void)
{
  static struct probe a;
  struct upstream_opts o = plain_opts("fgw-timeout");
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  ASSERT_TRUE(fd >= 0);
  ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  ASSERT_EQ(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  o.port = ntohs(sa.sin_port);
  o.connect_timeout_ms = 300;
  o.backoff_base_ms = 2000;
  o.backoff_cap_ms = 2000;
  ASSERT_EQ(start_probe(&a, &o), 0);
  WAIT_FOR(a.down == 1, STEP_MS);
  ASSERT_EQ(a.down, 1);
  ASSERT_EQ(a.last_why, UPSTREAM_R_TIMEOUT);
  ASSERT_TRUE(a.last_retry >= 1000 && a.last_retry <= 2000);
  stop_probe(&a, true);
  close(fd);
}

static struct tls_ctx *make_ctx(const char *ca, bool with_cert)
{
  char caf[128], cert[128], key[128], err[256];
  struct tls_ctx *ctx;
  snprintf(caf, sizeof caf, "%s/%s", g_dir, ca);
  snprintf(cert, sizeof cert, "%s/client.crt", g_dir);
  snprintf(key, sizeof key, "%s/client.key", g_dir);
  ctx = tls_ctx_new(caf, with_cert ? cert : NULL, with_cert ? key : NULL, err, sizeof err);
  if (!ctx)
    fprintf(stderr, "tls_ctx_new: %s\n", err);
  return ctx;
}

/* TLS with a client certificate from the context (host name "localhost")
 * and one per connection (IP literal 127.0.0.1 checked against the IP SAN);
 * a 20 KB message goes through several TLS records. */
static void test_tls_ok(void)
{
  static struct probe a, b;
  static uint8_t big[20000];
  struct tls_ctx *ctx = make_ctx("ca.crt", true), *ctx_nocert = make_ctx("ca.crt", false);
  struct upstream_opts o = plain_opts("fgw-tls-a");
  char cert[128], key[128];
  int tok;

  ASSERT_TRUE(ctx && ctx_nocert);
  if (!ctx || !ctx_nocert)
    return;
  o.host = "localhost";
  o.port = g_port_tls;
  o.tls = ctx;
  ASSERT_EQ(start_probe(&a, &o), 0);

  snprintf(cert, sizeof cert, "%s/client.crt", g_dir);
  snprintf(key, sizeof key, "%s/client.key", g_dir);
  o = plain_opts("fgw-tls-b");
  o.port = g_port_tls;
  o.tls = ctx_nocert;
  o.cert_file = cert;
  o.key_file = key;
  ASSERT_EQ(start_probe(&b, &o), 0);

  WAIT_FOR(a.up == 1 && b.up == 1, STEP_MS);
  ASSERT_EQ(a.up, 1);
  ASSERT_EQ(b.up, 1);
  ASSERT_EQ(a.down + b.down, 0);

  ASSERT_EQ(upstream_subscribe(b.u, "fgw/tls/#", 9, 1, NULL), 0);
  WAIT_FOR(b.subacks == 1, STEP_MS);
  b.auto_puback = true;
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 13 + 1);
  ASSERT_EQ(upstream_publish(a.u, "fgw/tls/big", 11, big, sizeof big, 1, false, &tok), 0);
  WAIT_FOR(a.pubacks == 1 && b.messages == 1, STEP_MS);
  ASSERT_EQ(a.pubacks, 1);
  ASSERT_TRUE(a.puback_tokens[0] == &tok);
  ASSERT_EQ(b.messages, 1);
  ASSERT_STR_EQ(b.topic, "fgw/tls/big");
  ASSERT_EQ(b.payload_len, sizeof big);
  ASSERT_MEM_EQ(b.payload, big, sizeof big);
  ASSERT_EQ(b.qos, 1);

  stop_probe(&a, true);
  stop_probe(&b, false);
  tls_ctx_free(ctx);
  tls_ctx_free(ctx_nocert);
}

/* Wrong CA and name mismatch fail with UPSTREAM_R_TLS; so does a missing
 * client certificate (see below); all keep retrying until stopped. */
static void test_tls_failures(void)
{
  static struct probe wrong_ca, mismatch, nocert;
  struct tls_ctx *ctx = make_ctx("ca.crt", true), *ctx2 = make_ctx("ca2.crt", true),
                 *ctx_nocert = make_ctx("ca.crt", false);
  struct upstream_opts o = plain_opts("fgw-tls-wrongca");
  char err[256];

  ASSERT_TRUE(ctx && ctx2 && ctx_nocert);
  if (!ctx || !ctx2 || !ctx_nocert)
    return;
  o.host = "localhost";
  o.port = g_port_tls;
  o.tls = ctx2;
  o.backoff_base_ms = 2000;
  o.backoff_cap_ms = 2000;
  ASSERT_EQ(start_probe(&wrong_ca, &o), 0);
  o.client_id = "fgw-tls-mismatch";
  o.port = g_port_tls_wrong;
  o.tls = ctx;
  ASSERT_EQ(start_probe(&mismatch, &o), 0);
  o.client_id = "fgw-tls-nocert";
  o.port = g_port_tls;
  o.tls = ctx_nocert;
  ASSERT_EQ(start_probe(&nocert, &o), 0);

  WAIT_FOR(wrong_ca.down >= 1 && mismatch.down >= 1 && nocert.down >= 1, STEP_MS);
  ASSERT_EQ(wrong_ca.down, 1);
  ASSERT_EQ(wrong_ca.last_why, UPSTREAM_R_TLS);
  ASSERT_EQ(mismatch.down, 1);
  ASSERT_EQ(mismatch.last_why, UPSTREAM_R_TLS);
  ASSERT_EQ(nocert.down, 1);
  /* With TLS 1.3 the client finishes its handshake before the server checks
   * the client certificate; the server's alert and its reset race with our
   * CONNECT, so either the alert (TLS) or the reset (closed before CONNACK)
   * is seen first. */
  ASSERT_TRUE(nocert.last_why == UPSTREAM_R_TLS ||
              nocert.last_why == UPSTREAM_R_CLOSED_BEFORE_CONNACK);
  ASSERT_EQ(wrong_ca.up + mismatch.up + nocert.up, 0);

  /* Stopping during the back-off wait. */
  stop_probe(&wrong_ca, true);
  stop_probe(&mismatch, false);
  stop_probe(&nocert, false);

  /* Configuration errors name the file. */
  ASSERT_TRUE(tls_ctx_new("/nonexistent/ca.pem", NULL, NULL, err, sizeof err) == NULL);
  ASSERT_TRUE(strstr(err, "/nonexistent/ca.pem") != NULL);
  ASSERT_TRUE(tls_conn_new(ctx, "localhost", NULL, "/nonexistent/c.pem", "/nonexistent/k.pem",
                           err, sizeof err) == NULL);
  ASSERT_TRUE(strstr(err, "/nonexistent/c.pem") != NULL);

  tls_ctx_free(ctx);
  tls_ctx_free(ctx2);
  tls_ctx_free(ctx_nocert);
}

/* The will is published when the connection ends abruptly, not after a
 * graceful DISCONNECT. */
static void test_will(void)
{
  static struct probe watch, w1, w2;
  struct upstream_opts o = plain_opts("fgw-will-watch");

  ASSERT_EQ(start_probe(&watch, &o), 0);
  WAIT_FOR(watch.up == 1, STEP_MS);
  watch.auto_puback = true;
  ASSERT_EQ(upstream_subscribe(watch.u, "fgw/will/#", 10, 1, NULL), 0);
  WAIT_FOR(watch.subacks == 1, STEP_MS);
  ASSERT_EQ(watch.subacks, 1);

  o = plain_opts("fgw-will-1");
  o.will = (struct upstream_will){"fgw/will/w1", (const uint8_t *)"gone1", 5, 1, false};
  ASSERT_EQ(start_probe(&w1, &o), 0);
  o.client_id = "fgw-will-2";
  o.will = (struct upstream_will){"fgw/will/w2", (const uint8_t *)"gone2", 5, 1, false};
  ASSERT_EQ(start_probe(&w2, &o), 0);
  WAIT_FOR(w1.up == 1 && w2.up == 1, STEP_MS);
  ASSERT_EQ(w1.up + w2.up, 2);

  stop_probe(&w1, true);
  run_for(500);
  ASSERT_EQ(watch.messages, 0);

  stop_probe(&w2, false);
  WAIT_FOR(watch.messages == 1, STEP_MS);
  ASSERT_EQ(watch.messages, 1);
  ASSERT_STR_EQ(watch.topic, "fgw/will/w2");
  ASSERT_EQ(watch.payload_len, 5);
  ASSERT_MEM_EQ(watch.payload, "gone2", 5);
  run_for(200);
  ASSERT_EQ(watch.messages, 1);
  stop_probe(&watch, true);
}

/* Kill the broker: on_down, a QoS 1 message queued during the outage,
 * restart: on_up again, the message is acknowledged, and a new subscriber
 * receives it (retained). */
static void test_broker_restart(void)
{
  static struct probe p, q;
  struct upstream_opts o = plain_opts("fgw-restart");
  int tok;

  o.clean_session = false;
  ASSERT_EQ(start_probe(&p, &o), 0);
  WAIT_FOR(p.up == 1, STEP_MS);
  ASSERT_EQ(p.up, 1);

  stop_broker(SIGKILL);
  WAIT_FOR(p.down >= 1, STEP_MS);
  ASSERT_TRUE(p.down >= 1);
  ASSERT_TRUE(p.last_why == UPSTREAM_R_TCP);
  ASSERT_TRUE(!upstream_is_up(p.u));
  ASSERT_EQ(upstream_publish(p.u, "fgw/restart/r", 13, (const uint8_t *)"after-outage", 12, 1,
                             true, &tok),
            0);
  ASSERT_EQ(upstream_queued(p.u), 1);
  run_for(300); /* a few refused attempts */
  ASSERT_EQ(p.pubacks, 0);

  ASSERT_EQ(start_broker(), 0);
  WAIT_FOR(p.up == 2 && p.pubacks == 1, STEP_MS);
  ASSERT_EQ(p.up, 2);
  ASSERT_EQ(p.pubacks, 1);
  ASSERT_TRUE(p.puback_tokens[0] == &tok);
  ASSERT_EQ(upstream_queued(p.u), 0);

  o = plain_opts("fgw-restart-sub");
  ASSERT_EQ(start_probe(&q, &o), 0);
  WAIT_FOR(q.up == 1, STEP_MS);
  q.auto_puback = true;
  ASSERT_EQ(upstream_subscribe(q.u, "fgw/restart/#", 13, 1, NULL), 0);
  WAIT_FOR(q.messages == 1, STEP_MS);
  ASSERT_EQ(q.messages, 1);
  ASSERT_STR_EQ(q.topic, "fgw/restart/r");
  ASSERT_MEM_EQ(q.payload, "after-outage", 12);
  ASSERT_TRUE(q.retain);

  stop_probe(&p, true);
  stop_probe(&q, true);
}

/* upstream_stop() called from inside on_up and on_down: the upstream must
 * finish closing on its own, with on_closed and nothing else afterwards. */
static void test_stop_from_callbacks(void)
{
  static struct probe a, b;
  struct upstream_opts o = plain_opts("fgw-stop-in-up");
  int tok;

  a.stop_in_up = true;
  ASSERT_EQ(start_probe(&a, &o), 0);
  ASSERT_EQ(upstream_publish(a.u, "fgw/s", 5, (const uint8_t *)"x", 1, 1, false, &tok), 0);
  WAIT_FOR(a.closed == 1, STEP_MS);
  ASSERT_EQ(a.up, 1);
  ASSERT_EQ(a.closed, 1);
  ASSERT_EQ(a.down, 0);
  /* The message was written before on_up; its PUBACK may not have been
   * read: it is either acknowledged or reported dropped, exactly once. */
  ASSERT_EQ(a.pubacks + a.dropped, 1);

  o = plain_opts("fgw-stop-in-down");
  o.port = free_port();
  b.stop_in_down = true;
  ASSERT_EQ(start_probe(&b, &o), 0);
  WAIT_FOR(b.closed == 1, STEP_MS);
  ASSERT_EQ(b.down, 1);
  ASSERT_EQ(b.closed, 1);
  run_for(300);
  ASSERT_EQ(b.down, 1);
}

/* ---- a scripted broker in a child process, for the DUP resend ---- */

static int read_full(int fd, uint8_t *p, size_t n)
{
  while (n > 0) {
    ssize_t k = read(fd, p, n);
    if (k <= 0)
      return -1;
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Reads one MQTT packet; returns its first byte (type and flags) and copies
 * up to cap bytes of its body into body. */
static int read_packet(int fd, uint8_t *body, size_t cap, size_t *len)
{
  uint8_t b0, c;
  uint32_t rl = 0;
  int shift = 0;

  if (read_full(fd, &b0, 1) < 0)
    return -1;
  do {
    if (read_full(fd, &c, 1) < 0 || shift > 21)
      return -1;
    rl |= (uint32_t)(c & 0x7f) << shift;
    shift += 7;
  } while (c & 0x80);
  if (rl > cap || read_full(fd, body, rl) < 0)
    return -1;
  *len = rl;
  return b0;
}


/* ---- framing, against a scripted broker ---- */

/* A QoS 0 PUBLISH of topic "f/t" with `len` bytes of `fill`, into out. */
static size_t make_publish(uint8_t *out, size_t len, uint8_t fill)
{
  size_t rl = 2 + 3 + len, h = 0;
  out[h++] = 0x30;
  do {
    uint8_t b = rl % 128;
    rl /= 128;
    out[h++] = rl ? (uint8_t)(b | 0x80) : b;
  } while (rl);
  out[h++] = 0;
  out[h++] = 3;
  memcpy(out + h, "f/t", 3);
  h += 3;
  memset(out + h, fill, len);
  return h + len;
}

static bool got_payload(const struct probe *p, int n, size_t len, uint8_t fill)
{
  if (p->messages != n || p->payload_len != len || strcmp(p->topic, "f/t") != 0)
    return false;
  for (size_t i = 0; i < len; i++)
    if (p->payload[i] != fill)
      return false;
  return true;
}

/* The broker's bytes cut at every kind of place: packets whole and several
 * in one read, a fixed header split after its first byte and inside its
 * Remaining Length, a packet of 1,500 bytes split in its
 * body, then one that declares more than max_packet (the connection is
 * dropped as a protocol error).  The writes are separate segments: the
 * test waits for each to be handled before the next. */
static void test_framing(void)
{
  static struct probe a;
  static uint8_t big[4096], buf[8192];
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0), fd = -1;
  struct upstream_opts o = plain_opts("fgw-framing");
  size_t n1, n2, n3, n4;
  uint8_t p1[64], p2[64], p3[64];
  ssize_t got;

  ASSERT_TRUE(lfd >= 0);
  if (lfd < 0)
    return;
  ASSERT_EQ(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  ASSERT_EQ(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
  o.port = ntohs(sa.sin_port);
  o.max_packet = 2048;
  ASSERT_EQ(start_probe(&a, &o), 0);
  /* The kernel completes the connection in the backlog; the CONNECT is
   * waiting once the loop has run. */
  run_for(200);
  fd = accept(lfd, NULL, NULL);
  ASSERT_TRUE(fd >= 0);
  if (fd < 0)
    goto out;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  got = recv(fd, buf, sizeof buf, 0);
  ASSERT_TRUE(got > 2 && buf[0] == 0x10);

  /* CONNACK + a whole publish + the first byte of the next. */
  n1 = make_publish(p1, 10, 'a');
  n2 = make_publish(p2, 20, 'b');
  memcpy(buf, "\x20\x02\x00\x00", 4);
  memcpy(buf + 4, p1, n1);
  buf[4 + n1] = p2[0];
  ASSERT_EQ(send(fd, buf, 4 + n1 + 1, 0), (ssize_t)(4 + n1 + 1));
  WAIT_FOR(a.up == 1 && a.messages == 1, STEP_MS);
  ASSERT_EQ(a.up, 1);
  ASSERT_TRUE(got_payload(&a, 1, 10, 'a'));
  /* The rest of it. */
  ASSERT_EQ(send(fd, p2 + 1, n2 - 1, 0), (ssize_t)(n2 - 1));
  WAIT_FOR(a.messages == 2, STEP_MS);
  ASSERT_TRUE(got_payload(&a, 2, 20, 'b'));

  /* 1,500 bytes (storage of exactly that size, given for it): the first byte of
   * its two-byte Remaining Length, then half the body, then the rest
   * followed by two whole small publishes in the same write. */
  n3 = make_publish(big, 1500, 'c');
  ASSERT_EQ(send(fd, big, 2, 0), 2);
  run_for(50);
  ASSERT_EQ(send(fd, big + 2, 700, 0), 700);
  run_for(50);
  ASSERT_EQ(a.messages, 2);
  n4 = make_publish(p3, 5, 'd');
  memcpy(buf, big + 702, n3 - 702);
  memcpy(buf + n3 - 702, p3, n4);
  memcpy(buf + n3 - 702 + n4, p1, n1);
  ASSERT_EQ(send(fd, buf, n3 - 702 + n4 + n1, 0), (ssize_t)(n3 - 702 + n4 + n1));
  WAIT_FOR(a.messages == 5, STEP_MS);
  ASSERT_TRUE(got_payload(&a, 5, 10, 'a'));
  ASSERT_EQ(a.lens[2], 1500u);
  ASSERT_EQ(a.sums[2], 1500u * 'c');
  ASSERT_EQ(a.lens[3], 5u);
  ASSERT_EQ(a.sums[3], 5u * 'd');

  /* Again a large one, whole in one write this time. */
  ASSERT_EQ(send(fd, big, n3, 0), (ssize_t)n3);
  WAIT_FOR(a.messages == 6, STEP_MS);
  ASSERT_TRUE(got_payload(&a, 6, 1500, 'c'));

  /* Remaining Length 4,000 > max_packet 2,048: dropped as a protocol error
   * before its body comes. */
  memcpy(buf, "\x30\xa0\x1f", 3);
  ASSERT_EQ(send(fd, buf, 3, 0), 3);
  WAIT_FOR(a.down == 1, STEP_MS);
  ASSERT_EQ(a.down, 1);
  ASSERT_EQ(a.last_why, UPSTREAM_R_PROTOCOL);
  ASSERT_EQ(a.messages, 6);
out:
  if (fd >= 0)
    close(fd);
  close(lfd);
  stop_probe(&a, false);
}

/* The script: CONNACK, take a QoS 1 PUBLISH without acknowledging it, drop
 * the connection; on the next connection expect the same PUBLISH again with
 * DUP=1 and the same packet id, acknowledge it, then wait for the close.
 * The exit status says which step failed. */
static int scripted_broker(int lfd)
{
  static const uint8_t connack_new[] = {0x20, 0x02, 0x00, 0x00};
  static const uint8_t connack_sp[] = {0x20, 0x02, 0x01, 0x00};
  uint8_t body[512], puback[4] = {0x40, 0x02, 0, 0};
  size_t len, len2, tlen;
  uint16_t id;
  int fd, t;

  fd = accept(lfd, NULL, NULL);
  if (fd < 0 || read_packet(fd, body, sizeof body, &len) != 0x10)
    return 1;
  if (write(fd, connack_new, 4) != 4)
    return 2;
  t = read_packet(fd, body, sizeof body, &len);
  tlen = (size_t)(body[0] << 8 | body[1]);
  if (t != 0x32 || len < 4 + tlen)
    return 3; /* QoS 1, no DUP on the first transmission */
  id = (uint16_t)(body[2 + tlen] << 8 | body[3 + tlen]);
  if (id == 0)
    return 10;
  close(fd);

  fd = accept(lfd, NULL, NULL);
  if (fd < 0 || read_packet(fd, body + 256, 256, &len2) != 0x10)
    return 4;
  if ((body[256 + 7] & 0x02) != 0)
    return 5; /* clean_session must be 0 */
  if (write(fd, connack_sp, 4) != 4)
    return 6;
  uint8_t again[512];
  t = read_packet(fd, again, sizeof again, &len2);
  if (t != 0x3a || len2 != len || memcmp(again, body, len) != 0)
    return 7; /* DUP=1, same id, same topic and payload */
  puback[2] = (uint8_t)(id >> 8);
  puback[3] = (uint8_t)id;
  if (write(fd, puback, 4) != 4)
    return 8;
  /* Expect DISCONNECT (graceful stop), then EOF. */
  if (read_packet(fd, body, sizeof body, &len) != 0xe0)
    return 9;
  close(fd);
  return 0;
}

static void test_dup_resend(void)
{
  static struct probe a;
  struct upstream_opts o = plain_opts("fgw-dup");
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {5, 0};
  socklen_t slen = sizeof sa;
  int lfd = socket(AF_INET, SOCK_STREAM, 0), status = -1, tok;
  pid_t pid;

  ASSERT_TRUE(lfd >= 0);
  ASSERT_EQ(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  ASSERT_EQ(getsockname(lfd, (struct sockaddr *)&sa, &slen), 0);
  setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  pid = fork();
  if (pid == 0)
    _exit(scripted_broker(lfd));
  close(lfd);
  ASSERT_TRUE(pid > 0);

  o.port = ntohs(sa.sin_port);
  o.clean_session = false;
  o.backoff_base_ms = 50;
  o.backoff_cap_ms = 50;
  ASSERT_EQ(start_probe(&a, &o), 0);
  ASSERT_EQ(upstream_publish(a.u, "fgw/dup", 7, (const uint8_t *)"again", 5, 1, false, &tok), 0);
  WAIT_FOR(a.up == 2 && a.pubacks == 1, STEP_MS);
  ASSERT_EQ(a.up, 2);
  ASSERT_TRUE(a.session_present);
  ASSERT_EQ(a.down, 1);
  ASSERT_EQ(a.last_why, UPSTREAM_R_TCP);
  ASSERT_EQ(a.pubacks, 1);
  ASSERT_TRUE(a.puback_tokens[0] == &tok);
  stop_probe(&a, true);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
  (void)arg;
  fprintf(stderr, "handle still open: type %d\n", (int)h->type);
}

int main(void)
{
  uint64_t t0 = now_ms();

  signal(SIGPIPE, SIG_IGN);
  if (getenv("FLEETGW_TEST_DEBUG"))
    log_set_level(LOG_DEBUG);
  else
    log_set_level(LOG_ERROR);
  snprintf(g_dir, sizeof g_dir, "/tmp/fgw-upstream-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  if (access(MOSQUITTO, X_OK) != 0) {
    fprintf(stderr, "%s not found\n", MOSQUITTO);
    return 1;
  }
  g_port_plain = free_port();
  g_port_tls = free_port();
  g_port_tls_wrong = free_port();
  ASSERT_TRUE(g_port_plain && g_port_tls && g_port_tls_wrong);
  ASSERT_EQ(make_certs(), 0);
  ASSERT_EQ(write_broker_conf(), 0);
  ASSERT_EQ(start_broker(), 0);
  if (test_failures) {
    fprintf(stderr, "setup failed; files in %s\n", g_dir);
    stop_broker(SIGTERM);
    return TEST_END();
  }

  ASSERT_EQ(uv_loop_init(&g_loop), 0);
  uv_timer_init(&g_loop, &g_tick);
  uv_timer_start(&g_tick, tick_cb, 20, 20);

  RUN(test_plain);
  RUN(test_refused_and_queue);
  RUN(test_connect_timeout);
  RUN(test_tls_ok);
  RUN(test_tls_failures);
  RUN(test_will);
  RUN(test_broker_restart);
  RUN(test_dup_resend);
  RUN(test_framing);
  RUN(test_stop_from_callbacks);

  uv_close((uv_handle_t *)&g_tick, NULL);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uv_walk(&g_loop, close_walk_cb, NULL);
  ASSERT_EQ(uv_loop_close(&g_loop), 0);

  stop_broker(SIGTERM);
  if (test_failures == 0)
    run_cmd("rm -rf %s", g_dir);
  else
    fprintf(stderr, "files kept in %s\n", g_dir);
  fprintf(stderr, "elapsed %llu ms\n", (unsigned long long)(now_ms() - t0));
  return TEST_END();
}
