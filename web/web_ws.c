/*
 * web_ws.c - GET /api/v1/events as a WebSocket: one JSON event per text
 * frame.
 *
 * A client authenticates with ?token= in the URL or with its first text
 * message {"token": "..."} (browsers cannot set headers on a WebSocket);
 * until then it gets nothing, and after 5 s it is closed.  Once
 * authenticated it subscribes to the gateway's events; each event is copied
 * into a bounded per-client queue, so a slow reader costs at most
 * WEB_WS_QUEUE events of memory: when the queue is full the oldest event is
 * dropped and counted.
 */
#include "web_int.h"

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define MOD "web"

enum {
  WEB_WS_QUEUE = 256,          /* events buffered per client */
  EVENT_MAX = 16 * 1024,       /* larger events are dropped */
  AUTH_MSG_MAX = 2048,         /* the first (token) message */
  AUTH_TIMEOUT_S = 5,
  TOKEN_MAX = 512,
};

struct web_ws_event {
  size_t len;
  unsigned char data[];        /* LWS_PRE bytes of headroom, then len bytes */
};

static void list_add(struct web *w, struct web_ws_client *cl)
{
  cl->prev = NULL;
  cl->next = w->clients;
  if (w->clients)
    w->clients->prev = cl;
  w->clients = cl;
  cl->listed = true;
}

static void list_remove(struct web *w, struct web_ws_client *cl)
{
  if (!cl->listed)
    return;
  if (cl->prev)
    cl->prev->next = cl->next;
  else
    w->clients = cl->next;
  if (cl->next)
    cl->next->prev = cl->prev;
  cl->next = cl->prev = NULL;
  cl->listed = false;
}

static void queue_clear(struct web_ws_client *cl)
{
  if (cl->queue) {
    for (unsigned i = 0; i < cl->q_count; i++)
      free(cl->queue[(cl->q_head + i) % WEB_WS_QUEUE]);
    free(cl->queue);
  }
  cl->queue = NULL;
  cl->q_head = cl->q_count = 0;
}

/* Everything a client holds, except its lws socket. */
static void client_release(struct web *w, struct web_ws_client *cl)
{
  if (cl->sub) {
    api_unsubscribe(w->gw, cl->sub);
    cl->sub = NULL;
  }
  queue_clear(cl);
  free(cl->rx);
  cl->rx = NULL;
  cl->rx_len = 0;
  list_remove(w, cl);
}

static void enqueue(struct web_ws_client *cl, const char *json, size_t len)
{
  struct web_ws_event *ev;

  if (!cl->queue || len > EVENT_MAX) {
    cl->dropped++;
    return;
  }
  ev = malloc(sizeof *ev + LWS_PRE + len);
  if (!ev) {
    cl->dropped++;
    return;
  }
  ev->len = len;
  memcpy(ev->data + LWS_PRE, json, len);
  if (cl->q_count == WEB_WS_QUEUE) {
    /* A slow reader: the oldest event goes. */
    free(cl->queue[cl->q_head]);
    cl->q_head = (cl->q_head + 1) % WEB_WS_QUEUE;
    cl->q_count--;
    /* Once per client, and any number of clients can be slow. */
    static struct log_ratelimit rl;
    if (cl->dropped++ == 0)
      log_ratelimited(&rl, LOG_WARN, MOD,
                      "event stream client too slow: dropping its oldest events");
  }
  cl->queue[(cl->q_head + cl->q_count) % WEB_WS_QUEUE] = ev;
  cl->q_count++;
  lws_callback_on_writable(cl->wsi);
}

static void on_event(void *ud, const char *json, size_t len)
{
  enqueue(ud, json, len);
}

static int64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The token checked: subscribe, say hello.  -1 closes the socket. */
static int authenticated(struct web *w, struct web_ws_client *cl)
{
  char hello[64];
  int n;

  cl->queue = calloc(WEB_WS_QUEUE, sizeof *cl->queue);
  if (!cl->queue)
    return -1;
  cl->sub = api_subscribe(w->gw, on_event, cl);
  if (!cl->sub)
    return -1;
  cl->authed = true;
  lws_set_timeout(cl->wsi, NO_PENDING_TIMEOUT, 0);
  n = snprintf(hello, sizeof hello, "{\"type\":\"hello\",\"at\":%lld}", (long long)now_ms());
  enqueue(cl, hello, (size_t)n);
  return 0;
}

static int refuse(struct lws *wsi, const char *why)
{
  lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)why, strlen(why));
  return -1;
}

static bool path_is_events(struct lws *wsi)
{
  char path[32];
  int n = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI);
  if (n <= 0 || n >= (int)sizeof path || lws_hdr_copy(wsi, path, (int)sizeof path,
                                                      WSI_TOKEN_GET_URI) < 0)
    return false;
  return strcmp(path, "/api/v1/events") == 0;
}

int web_ws_filter(struct web *w, struct lws *wsi)
{
  /* Upgrades anywhere else are refused before the handshake completes. */
  if (w->stopping || !path_is_events(wsi))
    return 1;
  return 0;
}

/* ?token= in the URL; the role, or WEB_ROLE_NONE. */
static enum web_role url_token(struct web *w, struct lws *wsi)
{
  char frag[TOKEN_MAX + 8];
  enum web_role role = WEB_ROLE_NONE;

  for (int i = 0; i < 32; i++) {
    int flen = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
    if (flen <= 0) {
      if (lws_hdr_copy_fragment(wsi, frag, (int)sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i) < 0)
        break;
      continue;
    }
    if (flen >= (int)sizeof frag)
      continue;
    if (lws_hdr_copy_fragment(wsi, frag, (int)sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i) < 0)
      break;
    if (strncmp(frag, "token=", 6) == 0) {
      role = web_auth_token(w, frag + 6, strlen(frag + 6));
      break;
    }
  }
  OPENSSL_cleanse(frag, sizeof frag);
  return role;
}

/* The first message: {"token": "..."}. */
static int on_auth_message(struct web *w, struct web_ws_client *cl)
{
  /* The same strict parser as every HTTP body. */
  cJSON *in = web_json_parse_object(cl->rx, cl->rx_len, NULL, NULL);
  const cJSON *tok = in ? cJSON_GetObjectItemCaseSensitive(in, "token") : NULL;
  enum web_role role = WEB_ROLE_NONE;

  if (cJSON_IsString(tok))
    role = web_auth_token(w, tok->valuestring, strlen(tok->valuestring));
  if (cJSON_IsString(tok))
    OPENSSL_cleanse(tok->valuestring, strlen(tok->valuestring));
  cJSON_Delete(in);
  OPENSSL_cleanse(cl->rx, cl->rx_len);
  free(cl->rx);
  cl->rx = NULL;
  cl->rx_len = 0;
  if (role == WEB_ROLE_NONE) {
    /* Anyone who can reach the port can send bad tokens at will. */
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_INFO, MOD, "event stream: refused a client with a bad token");
    return refuse(cl->wsi, "unauthorized");
  }
  return authenticated(w, cl) < 0 ? refuse(cl->wsi, "internal error") : 0;
}

int web_ws_callback(struct web *w, struct lws *wsi, enum lws_callback_reasons reason,
                    struct web_pss *pss, void *in, size_t len)
{
  struct web_ws_client *cl = pss ? &pss->ws : NULL;

  if (!cl)
    return -1;

  switch (reason) {
  case LWS_CALLBACK_ESTABLISHED:
    memset(cl, 0, sizeof *cl);
    cl->w = w;
    cl->wsi = wsi;
    list_add(w, cl);
    api_count_http(w->gw, 101);
    if (url_token(w, wsi) != WEB_ROLE_NONE)
      return authenticated(w, cl) < 0 ? -1 : 0;
    /* Closed by lws unless a valid token arrives in time. */
    lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, AUTH_TIMEOUT_S);
    return 0;

  case LWS_CALLBACK_RECEIVE:
    if (cl->authed || !cl->listed)
      return 0; /* clients have nothing to say once in */
    if (lws_frame_is_binary(wsi) || len > AUTH_MSG_MAX - cl->rx_len)
      return refuse(wsi, "expected {\"token\": ...}");
    {
      char *rx = realloc(cl->rx, cl->rx_len + len + 1);
      if (!rx)
        return -1;
      cl->rx = rx;
      memcpy(cl->rx + cl->rx_len, in, len);
      cl->rx_len += len;
      cl->rx[cl->rx_len] = '\0'; /* web_json_parse_object reads it */
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
      return 0;
    return on_auth_message(w, cl);

  case LWS_CALLBACK_SERVER_WRITEABLE: {
    if (!cl->authed || !cl->queue || cl->q_count == 0)
      return 0;
    struct web_ws_event *ev = cl->queue[cl->q_head];
    cl->queue[cl->q_head] = NULL;
    cl->q_head = (cl->q_head + 1) % WEB_WS_QUEUE;
    cl->q_count--;
    int n = lws_write(wsi, ev->data + LWS_PRE, ev->len, LWS_WRITE_TEXT);
    bool short_write = n < (int)ev->len;
    free(ev);
    if (short_write)
      return -1;
    if (cl->q_count)
      lws_callback_on_writable(wsi);
    return 0;
  }

  case LWS_CALLBACK_CLOSED:
    if (cl->listed || cl->sub || cl->queue || cl->rx)
      client_release(w, cl);
    return 0;

  default:
    return 0;
  }
}

void web_ws_detach_all(struct web *w)
{
  while (w->clients)
    client_release(w, w->clients);
}
