/*
 * web.c - the libwebsockets context on the gateway's own libuv loop: one
 * vhost, one protocol that serves both HTTP (REST + static files) and the
 * /api/v1/events WebSocket, start and stop.
 *
 * Stopping with a foreign loop in lws 4.1: lws_context_destroy() only starts
 * closing; every wsi's uv_poll handle and then lws's two static handles (an
 * idle and a timer, whose data pointer is the context) close asynchronously.
 * With a foreign loop lws usually does not finish the destruction by itself,
 * so a timer of ours watches the loop until no handle with data == context
 * is left, then calls lws_context_destroy() a second time, which frees the
 * context without touching the loop, and only then runs the caller's done().
 * info.pcontext tells us when lws has freed the context (w->ctx goes NULL),
 * so the context pointer is never used after it is freed.
 */
#include "web_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "secret.h"

#define MOD "web"

enum {
  STOP_POLL_MS = 10,
  STOP_POLL_MAX = 500,       /* 5 s: then give up waiting and say so */
  HEADER_DATA_MAX = 8192,    /* largest request header block */
  /* Concurrent header parses: one for every connection that may be open,
   * so that no admitted request waits for a header table (lws would make
   * it wait behind the half-sent ones). */
  HEADER_POOL = WEB_CONN_MAX,
};

/* lws's own errors and warnings, in our format (lines end in '\n').  Most
 * are about one misbehaving client, which can make lws say them at will, so
 * they go through the rate limiter. */
static void lws_log_emit(int level, const char *line)
{
  static struct log_ratelimit rl;
  char safe[1024];
  size_t n = strlen(line);

  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    n--;
  /* Warnings, even lws's "errors": most are about one bad client (for
   * example "Ran out of header data space"), and our own code logs the
   * failures that matter (such as not being able to listen) as errors.
   * A line may quote what the client sent: escaped, and any token in it
   * redacted. */
  (void)level;
  log_ratelimited(&rl, LOG_WARN, MOD, "lws: %s", web_log_text(line, n, safe, sizeof safe));
}

/* ---- connection bounds (web_int.h: WEB_CONN_*, WEB_*_TIMEOUT_S) ---------- */

static void peer_text(const struct sockaddr *sa, char *out, size_t cap)
{
  const void *a = NULL;

  if (sa->sa_family == AF_INET)
    a = &((const struct sockaddr_in *)sa)->sin_addr;
  else if (sa->sa_family == AF_INET6)
    a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
  if (!a || !inet_ntop(sa->sa_family, a, out, (socklen_t)cap))
    snprintf(out, cap, "?");
}

static void count_refusal(struct web *w, enum web_admit a, const struct sockaddr *sa)
{
  /* Anyone who can reach the port can make these at will. */
  static struct log_ratelimit rl;
  char peer[48];

  if (a == WEB_ADMIT_PER_IP)
    w->stats.refused_per_ip++;
  else
    w->stats.refused_full++;
  peer_text(sa, peer, sizeof peer);
  log_ratelimited(&rl, LOG_WARN, MOD, "refused a connection from %s: %s", peer,
                  a == WEB_ADMIT_PER_IP ? "too many open from that client"
                                        : "too many connections open");
}

/* LWS_CALLBACK_FILTER_NETWORK_CONNECTION: accepted by the kernel, nothing
 * read yet.  Non-zero makes lws close it at once. */
static int conn_filter(struct web *w, const struct lws_filter_network_conn_args *f)
{
  enum web_admit a = web_conn_check(&w->conn_table, (const struct sockaddr *)&f->cli_addr);

  if (a == WEB_ADMIT_OK)
    return 0;
  count_refusal(w, a, (const struct sockaddr *)&f->cli_addr);
  return 1;
}

static void deadline_fired(lws_sorted_usec_list_t *sul)
{
  static struct log_ratelimit rl;
  struct web_conn *rec = lws_container_of(sul, struct web_conn, sul);
  bool headers = rec->deadline == WEB_DEADLINE_HEADERS;

  if (headers)
    rec->w->stats.timeout_headers++;
  else
    rec->w->stats.timeout_body++;
  rec->deadline = WEB_DEADLINE_NONE;
  log_ratelimited(&rl, LOG_INFO, MOD, "closed a connection from %s: its request %s took over %d s",
                  rec->peer, headers ? "headers" : "body",
                  headers ? WEB_HEADER_TIMEOUT_S : WEB_BODY_TIMEOUT_S);
  /* Closed on lws's next pass (the record goes at LWS_CALLBACK_WSI_DESTROY). */
  lws_set_timeout(rec->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void conn_arm(struct web_conn *rec, enum web_deadline which)
{
  rec->deadline = which;
  if (which == WEB_DEADLINE_NONE) {
    lws_sul_cancel(&rec->sul);
    return;
  }
  lws_sul_schedule(lws_get_context(rec->wsi), lws_get_tsi(rec->wsi), &rec->sul, deadline_fired,
                   (which == WEB_DEADLINE_HEADERS ? WEB_HEADER_TIMEOUT_S : WEB_BODY_TIMEOUT_S) *
                       LWS_US_PER_SEC);
}

void web_conn_deadline(struct lws *wsi, enum web_deadline which)
{
  struct web_conn *rec = lws_get_opaque_user_data(wsi);

  if (rec)
    conn_arm(rec, which);
}

/* LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED: the connection counts from
 * now until LWS_CALLBACK_WSI_DESTROY, and its headers are due.  conn_filter
 * let it in just before (both run inside one accept), so admitting it here
 * succeeds; -1 would make lws close it. */
static int conn_open(struct web *w, struct lws *wsi)
{
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  int fd = lws_get_socket_fd(wsi);
  struct web_conn *rec = NULL;
  enum web_admit a;
  int slot;

  memset(&ss, 0, sizeof ss);
  if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
    ss.ss_family = AF_UNSPEC; /* counted in the one slot of non-IP peers */
  a = web_conn_admit(&w->conn_table, (const struct sockaddr *)&ss, &slot);
  if (a != WEB_ADMIT_OK) {
    count_refusal(w, a, (const struct sockaddr *)&ss);
    return -1;
  }
  /* As many records as the table admits, so one is free. */
  for (size_t i = 0; i < WEB_CONN_MAX && !rec; i++)
    if (!w->conns[i].wsi)
      rec = &w->conns[i];
  if (!rec) {
    web_conn_release(&w->conn_table, slot);
    return -1;
  }
  memset(rec, 0, sizeof *rec);
  rec->w = w;
  rec->wsi = wsi;
  rec->slot = slot;
  peer_text((const struct sockaddr *)&ss, rec->peer, sizeof rec->peer);
  lws_set_opaque_user_data(wsi, rec);
  conn_arm(rec, WEB_DEADLINE_HEADERS);
  return 0;
}

/* LWS_CALLBACK_WSI_DESTROY: the socket is closed. */
static void conn_close(struct web *w, struct lws *wsi)
{
  struct web_conn *rec = lws_get_opaque_user_data(wsi);

  if (!rec || rec < w->conns || rec >= w->conns + WEB_CONN_MAX)
    return;
  lws_sul_cancel(&rec->sul);
  web_conn_release(&w->conn_table, rec->slot);
  lws_set_opaque_user_data(wsi, NULL);
  memset(rec, 0, sizeof *rec);
}

/* ---- the protocol callback ------------------------------------------------ */

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
  struct lws_context *ctx = lws_get_context(wsi);
  struct web *w = ctx ? lws_context_user(ctx) : NULL;
  struct web_pss *pss = user;

  if (!w)
    return lws_callback_http_dummy(wsi, reason, user, in, len);

  switch (reason) {
  case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
    /* user is the peer's address here, wsi the listening socket. */
    return conn_filter(w, user);
  case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
    return conn_open(w, wsi);
  case LWS_CALLBACK_WSI_DESTROY:
    conn_close(w, wsi);
    break;
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
    /* An upgrade's headers are complete; web_ws.c times the token. */
    web_conn_deadline(wsi, WEB_DEADLINE_NONE);
    return web_ws_filter(w, wsi);
  case LWS_CALLBACK_ESTABLISHED:
  case LWS_CALLBACK_RECEIVE:
  case LWS_CALLBACK_SERVER_WRITEABLE:
  case LWS_CALLBACK_CLOSED:
    return web_ws_callback(w, wsi, reason, pss, in, len);
  case LWS_CALLBACK_HTTP:
  case LWS_CALLBACK_HTTP_BODY:
  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
  case LWS_CALLBACK_HTTP_WRITEABLE:
  case LWS_CALLBACK_CLOSED_HTTP:
  case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    return web_http_callback(w, wsi, reason, pss, in, len);
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
  /* One protocol for HTTP and the event WebSocket (clients send no
   * subprotocol, so lws binds the upgrade to protocols[0]). */
  {"fleetgw", callback, sizeof(struct web_pss), 4096, 0, NULL, 0},
  {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Keep-alive for the event stream: ping an idle socket, drop a dead one. */
static const lws_retry_bo_t idle_policy = {
  .secs_since_valid_ping = 30,
  .secs_since_valid_hangup = 75,
};

static void free_web(struct web *w)
{
  free(w->bind);
  /* A memset before free() may be optimised away; secret_free's wipe is not. */
  secret_free(w->admin_token);
  secret_free(w->read_token);
  free(w->tls_cert_file);
  free(w->tls_key_file);
  free(w->static_dir);
  free(w->openapi_file);
  free(w);
}

/* strdup of an optional string; *ok goes false on allocation failure. */
static char *dup_opt(const char *s, bool *ok)
{
  char *d;
  if (!s || !*s)
    return NULL;
  d = strdup(s);
  if (!d)
    *ok = false;
  return d;
}

struct walk_state {
  const void *ctx;
  unsigned left;
};

static void count_lws_handles(uv_handle_t *h, void *arg)
{
  struct walk_state *ws = arg;
  if (h->data == ws->ctx)
    ws->left++;
}

static void stop_timer_closed(uv_handle_t *h)
{
  struct web *w = h->data;
  void (*done)(void *) = w->done;
  void *ud = w->done_ud;

  /* If lws never finished, it may still write w->ctx (info.pcontext):
   * leak w with the context rather than free it under lws. */
  if (!w->ctx)
    free_web(w);
  if (done)
    done(ud);
}

static void stop_poll(uv_timer_t *t)
{
  struct web *w = t->data;

  if (w->ctx) {
    struct walk_state ws = {w->ctx, 0};
    uv_walk(w->loop, count_lws_handles, &ws);
    if (ws.left == 0) {
      /* lws closes its static handles only after every wsi handle is
       * closed, so none left means lws is off the loop.  This call
       * finishes the destruction and sets w->ctx to NULL (pcontext). */
      lws_context_destroy(w->ctx);
    } else if (++w->stop_polls < STOP_POLL_MAX) {
      return;
    } else {
      /* Freeing the context now would leave lws's handles pointing at
       * freed memory; leaking it is the lesser evil. */
      LOGW(MOD, "libwebsockets still has %u handles open; not waiting longer", ws.left);
    }
  }
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, stop_timer_closed);
}

/* ---- the message history (web_int.h: struct web_hist) ------------------- */

static void hist_read(struct web *w)
{
  uint64_t in, out;
  api_msg_totals(w->gw, &in, &out);
  web_hist_add(&w->hist, (int64_t)time(NULL), in, out);
}

static void hist_tick(uv_timer_t *t)
{
  hist_read(t->data);
}

static void hist_start(struct web *w)
{
  hist_read(w); /* primes: the first sample comes WEB_HIST_STEP_S later */
  uv_timer_init(w->loop, &w->hist_timer);
  w->hist_timer.data = w;
  uv_timer_start(&w->hist_timer, hist_tick, WEB_HIST_STEP_S * 1000, WEB_HIST_STEP_S * 1000);
  w->hist_on = true;
}

/* Its close completes at the end of this loop iteration, before stop_poll
 * (and so free_web) can run. */
static void hist_stop(struct web *w)
{
  if (!w->hist_on)
    return;
  uv_timer_stop(&w->hist_timer);
  uv_close((uv_handle_t *)&w->hist_timer, NULL);
  w->hist_on = false;
}

/* destroying: lws already began destroying the context itself (it does so
 * when lws_create_context fails half way on a foreign loop). */
static void begin_stop(struct web *w, bool destroying, void (*done)(void *), void *ud)
{
  w->stopping = true;
  w->done = done;
  w->done_ud = ud;

  /* The gateway must not call into clients whose sockets are going away. */
  web_ws_detach_all(w);
  hist_stop(w);
  if (!destroying && w->ctx)
    lws_context_destroy(w->ctx);

  uv_timer_init(w->loop, &w->stop_timer);
  w->stop_timer.data = w;
  uv_timer_start(&w->stop_timer, stop_poll, 0, STOP_POLL_MS);
  LOGI(MOD, "stopping");
}

int web_start(uv_loop_t *loop, const struct web_opts *opts, struct gw *gw, struct web **out)
{
  struct lws_context_creation_info info;
  void *foreign_loops[1];
  struct web *w;
  bool ok = true;

  *out = NULL;
  if (!opts->admin_token || strlen(opts->admin_token) < 8) {
    LOGE(MOD, "an admin token of at least 8 characters is required");
    return -1;
  }
  w = calloc(1, sizeof *w);
  if (!w) {
    LOGE(MOD, "out of memory");
    return -1;
  }
  w->loop = loop;
  w->gw = gw;
  w->bind = dup_opt(opts->bind, &ok);
  w->admin_token = dup_opt(opts->admin_token, &ok);
  w->read_token = dup_opt(opts->read_token, &ok);
  w->tls_cert_file = dup_opt(opts->tls_cert_file, &ok);
  w->tls_key_file = dup_opt(opts->tls_key_file, &ok);
  w->static_dir = dup_opt(opts->static_dir, &ok);
  w->openapi_file = dup_opt(opts->openapi_file, &ok);
  w->open_health = opts->open_health;
  w->open_metrics = opts->open_metrics;
  w->max_body = opts->max_body ? opts->max_body : 64 * 1024;
  if (!ok) {
    LOGE(MOD, "out of memory");
    goto fail_free_web;
  }

  lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_emit);

  memset(&info, 0, sizeof info);
  foreign_loops[0] = loop;
  info.foreign_loops = foreign_loops;
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_VALIDATE_UTF8;
  /* libwebsockets 4.1 with IPv6 support listens on "::" (every interface)
   * even when iface is an IPv4 address: for an IPv4 bind address IPv6 is
   * turned off, so that 127.0.0.1 really means the box only. */
  if (strchr(w->bind, ':') == NULL)
    info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
  info.port = opts->port;
  info.iface = w->bind;
  info.protocols = protocols;
  info.user = w; /* lws_context_user() */
  info.vhost_name = "fleetgw";
  info.server_string = "fleetgw";
  info.max_http_header_data = HEADER_DATA_MAX;
  info.max_http_header_pool = HEADER_POOL;
  info.timeout_secs = 10;
  /* lws's own header deadline, from the first byte of a request: a
   * backstop behind ours on a new connection (WEB_HEADER_TIMEOUT_S from
   * accept, counted), the bound itself for the later requests of a
   * kept-alive connection. */
  info.timeout_secs_ah_idle = WEB_HEADER_TIMEOUT_S + 1;
  info.keepalive_timeout = 30;
  info.retry_and_idle_policy = &idle_policy;
  /* HTTP/1.1 only: the handlers read the h1 method tokens. */
  info.alpn = "http/1.1";
  if (w->tls_cert_file && w->tls_key_file) {
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = w->tls_cert_file;
    info.ssl_private_key_filepath = w->tls_key_file;
  }

  /* lws writes NULL here once it has freed the context. */
  info.pcontext = &w->ctx;
  w->ctx = lws_create_context(&info);
  /* lws 4.1 returns a context even when the vhost could not listen. */
  if (w->ctx) {
    w->vhost = lws_get_vhost_by_name(w->ctx, "fleetgw");
    w->port = w->vhost ? lws_get_vhost_listen_port(w->vhost) : -1;
  }
  if (!w->ctx || w->port <= 0) {
    LOGE(MOD, "cannot listen on %s:%u", w->bind ? w->bind : "*", (unsigned)opts->port);
    if (!w->ctx)
      goto fail_free_web;
    /* The context may already have handles on the loop: take it down the
     * asynchronous way; the loop finishes it (and frees w) if it runs. */
    begin_stop(w, true, NULL, NULL);
    return -1;
  }
  hist_start(w);
  LOGI(MOD, "listening on %s://%s:%d/", info.ssl_cert_filepath ? "https" : "http",
       w->bind ? w->bind : "*", w->port);
  *out = w;
  return 0;

fail_free_web:
  free_web(w);
  return -1;
}

int web_port(const struct web *w) { return w ? w->port : -1; }

void web_stop(struct web *w, void (*done)(void *), void *ud)
{
  if (!w) {
    if (done)
      done(ud);
    return;
  }
  if (w->stopping)
    return;
  begin_stop(w, false, done, ud);
}
