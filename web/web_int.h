/*
 * web_int.h - web/ internals shared by web.c, web_http.c, web_api.c,
 * web_ws.c, web_auth.c, web_util.c and the handler files web_psk.c and
 * web_outbox.c.  Nothing outside web/ (except the unit tests in
 * tests/unit/web) includes this header.
 */
#ifndef FLEETGW_WEB_INT_H
#define FLEETGW_WEB_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "web.h"

/* ---- pure helpers (web_util.c): no libwebsockets, no gateway, no I/O ---- */

/* A numeric macro as a string literal, for messages that name a bound. */
#define WEB_STR_(x) #x
#define WEB_STR(x) WEB_STR_(x)

/* Methods as a bit set, so a route can say which it accepts. */
enum web_method {
  WEB_GET = 1u << 0,
  WEB_HEAD = 1u << 1,
  WEB_POST = 1u << 2,
  WEB_PUT = 1u << 3,
  WEB_PATCH = 1u << 4,
  WEB_DELETE = 1u << 5,
  WEB_OPTIONS = 1u << 6,
  WEB_OTHER = 1u << 7,
};

/* Matches a decoded request path (no query) against a route pattern:
 * literal text with at most one parameter "{name}", which stands for one or
 * more characters of any kind (a ClientId may contain '/', which lws decodes
 * from %2F).  The literal text after the parameter is matched at the end of
 * the path, so "/devices/{clientId}/approve" takes "/devices/line/7/approve"
 * with the parameter "line/7"; the price is that a ClientId ending in
 * "/approve" and the like cannot be addressed, which no sane device naming
 * does.  The pattern "*" matches every path outside the API (neither "/api"
 * nor under "/api/"): the dashboard's files.  On a match *arg and *arg_len
 * give the parameter inside path (NULL and 0 when the pattern has none). */
bool web_path_match(const char *pattern, const char *path, const char **arg, size_t *arg_len);

/* Writes "GET, HEAD, POST" style text for an Allow header.  Returns the
 * length, or -1 when cap is too small. */
int web_allow_header(unsigned allowed, char *buf, size_t cap);

/* Strict decimal integer in [min, max]: no sign other than a leading '-',
 * no spaces, no trailing garbage, no overflow.  0 or -1. */
int web_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out);

/* Splits a query fragment "name=value" in place: *name and *value point into
 * frag (value "" when there is no '=').  lws has already URL-decoded it. */
void web_query_split(char *frag, char **name, char **value);

/* The token from an Authorization header value "Bearer <token>" (scheme
 * case-insensitive, surrounding blanks ignored), copied into out.  0, or -1
 * when the header is not a bearer token or the token does not fit. */
int web_bearer_token(const char *header, char *out, size_t cap);

/* Compares a supplied secret with the expected one in time that depends
 * only on the supplied length, not on where they differ.  true if equal. */
bool web_ct_equal(const char *expected, size_t expected_len, const char *supplied,
                  size_t supplied_len);

/* true when a static-file request path is safe to join to the static
 * directory: starts with '/', no ".." segment, no backslash, no control
 * characters. */
bool web_static_path_ok(const char *path);

/* Content type by file name extension; "application/octet-stream" if
 * unknown. */
const char *web_content_type(const char *path);

/* One line of a text/csv allowlist body: returns the next trimmed entry
 * (CR, blanks and a surrounding pair of double quotes removed) starting at
 * *pos, advancing *pos; NULL at the end.  Empty lines are skipped.  The
 * entry is written NUL-terminated into buf; entries that do not fit are
 * returned as "" (so the caller counts them as skipped). */
const char *web_csv_next(const char *body, size_t len, size_t *pos, char *buf, size_t cap);

/* The ClientIds of a text/csv body of POST /api/v1/psks, split in place:
 * one a line, LF or CRLF, blanks around an id and blank lines ignored, a
 * UTF-8 byte order mark skipped, and a first line "client_id" taken as the
 * header.  Each id is 1..255 octets of printable ASCII without spaces and
 * '/', like a ClientId a leaf may CONNECT with (docs/architecture.md §7; the
 * gateway also checks lan.max_client_id_len), and without ',' and '"',
 * which the answer's CSV could not carry.  body[0..len) is overwritten (NULs
 * end the ids); ids[0..*n) then point into it, in the order of the body, at
 * most max of them.  Otherwise *line (1-based) and *why (static text) say
 * where and what. */
enum web_ids_err {
  WEB_IDS_OK = 0,
  WEB_IDS_EMPTY,     /* no id at all */
  WEB_IDS_TOO_MANY,  /* more than max; *line is the first one over */
  WEB_IDS_BAD,       /* a line that is no ClientId */
};
enum web_ids_err web_csv_ids(char *body, size_t len, const char **ids, size_t max, size_t *n,
                             size_t *line, const char **why);

/* Lower-case hex of key[0..len) into out[cap] (2 * len + 1 needed).  0, or
 * -1 when it does not fit. */
int web_hex_encode(const uint8_t *key, size_t len, char *out, size_t cap);
/* The bytes of a hex string (either case, even length, nothing else) into
 * out[cap]: how many, or -1. */
int web_hex_decode(const char *hex, uint8_t *out, size_t cap);

/* Text a peer chose (a ClientId from the path, a line of lws's), made safe
 * for one log line: printable ASCII as is, every other byte and '\\' as
 * "\\xHH", so it can neither forge a line nor send terminal escapes; and
 * whatever follows "token=", "token\":\"" or "Bearer " (any case) up to a
 * delimiter replaced by "<redacted>", so a secret that reached the text
 * never reaches the log.  Truncated with "..." to fit cap (>= 4); always
 * NUL-terminated.  Returns out. */
const char *web_log_text(const char *s, size_t len, char *out, size_t cap);

/* Strict JSON for every request body the API reads (web_http.c checks each
 * body before its handler runs, web_ws.c the event stream's token message;
 * cJSON, which is lax, then parses only what passed).  Beyond RFC 8259's
 * grammar (strict numbers, escapes, no raw control characters) it refuses
 * what cJSON would accept or quietly misread: a NUL byte anywhere or a
 * "\u0000" escape (C strings would end there), invalid UTF-8 (overlong
 * forms, surrogates, above U+10FFFF) or an unpaired surrogate escape, a key
 * repeated in one object (compared after decoding, so "a" and "\u0061"
 * clash; cJSON would silently take the first), anything but blanks after
 * the value, nesting deeper than WEB_JSON_MAX_DEPTH, more than
 * WEB_JSON_MAX_MEMBERS members in an object (which bounds the duplicate
 * search), and a top level that is not an object.  No allocation; the
 * recursion is bounded by the depth. */
#define WEB_JSON_MAX_DEPTH 8       /* the API's bodies are flat objects */
#define WEB_JSON_MAX_MEMBERS 256

enum web_json_err {
  WEB_JSON_OK = 0,
  WEB_JSON_SYNTAX,       /* not JSON (or unterminated) */
  WEB_JSON_UTF8,         /* invalid UTF-8, or an unpaired surrogate escape */
  WEB_JSON_NUL,          /* a NUL byte, or \u0000 in a string */
  WEB_JSON_DUP_KEY,
  WEB_JSON_DEPTH,
  WEB_JSON_MEMBERS,
  WEB_JSON_TRAILING,     /* non-blank bytes after the value */
  WEB_JSON_NOT_OBJECT,   /* valid JSON, but not an object */
};

/* Checks buf[0..len) as one JSON object.  On an error *at (if not NULL) is
 * the byte offset where it was found. */
enum web_json_err web_json_check_object(const char *buf, size_t len, size_t *at);
/* A short English phrase for the error (static). */
const char *web_json_strerror(enum web_json_err e);

/* Bounds on the HTTP side (docs/architecture.md §10), fixed: they protect
 * the one loop every leaf shares, and an operator's dashboard needs a
 * handful of connections.  A client that opens connections and never
 * finishes a request holds at most WEB_CONN_PER_IP of them, each for at
 * most WEB_HEADER_TIMEOUT_S (+ WEB_BODY_TIMEOUT_S if it sent headers
 * announcing a body); past the bounds a connection is closed at accept,
 * before any of its bytes are read.  Every admitted connection finds a
 * header table at once (the pool is WEB_CONN_MAX), so half-sent requests
 * never queue the others behind them. */
#define WEB_CONN_MAX 128            /* HTTP and WebSocket connections at once */
#define WEB_CONN_PER_IP 16          /* of those, from one IPv4 address or IPv6 /64 */
#define WEB_HEADER_TIMEOUT_S 5      /* accept (TLS handshake included) to complete headers */
#define WEB_BODY_TIMEOUT_S 5        /* complete headers to the whole body, however it trickles */

/* Who holds the connections: one slot per client address (an IPv6 address
 * counts by its /64, which one host can fill at will; an IPv4-mapped IPv6
 * address as the IPv4 address; anything that is not IP shares one slot).
 * Fixed size, no allocation. */
struct web_ip_slot {
  unsigned char key[9];        /* family tag, then 4 (IPv4) or 8 (IPv6 /64) bytes */
  uint16_t count;              /* 0: the slot is free */
};
struct web_conn_table {
  struct web_ip_slot slots[WEB_CONN_MAX];
  unsigned total;
};
enum web_admit { WEB_ADMIT_OK = 0, WEB_ADMIT_FULL, WEB_ADMIT_PER_IP };
struct sockaddr;
/* Would a connection from sa be admitted now?  Changes nothing. */
enum web_admit web_conn_check(const struct web_conn_table *t, const struct sockaddr *sa);
/* Admits it: WEB_ADMIT_OK with *slot its slot (for web_conn_release), or
 * the bound it hits. */
enum web_admit web_conn_admit(struct web_conn_table *t, const struct sockaddr *sa, int *slot);
void web_conn_release(struct web_conn_table *t, int slot);

/* The gateway's message counts over the last hour (GET
 * /api/v1/status/history), so that the dashboard's chart does not start
 * empty: every WEB_HIST_STEP_S web.c's timer adds one sample, the messages
 * in and out since the one before; the last WEB_HIST_LEN are kept, in a
 * fixed ring.  No allocation. */
#define WEB_HIST_STEP_S 10
#define WEB_HIST_LEN 360            /* one hour */
struct web_hist_sample {
  int64_t at;                  /* unix s, the end of its interval */
  uint32_t in, out;            /* messages in that interval */
};
struct web_hist {
  struct web_hist_sample s[WEB_HIST_LEN];
  uint32_t head;               /* the slot the next sample goes to */
  uint32_t n;                  /* samples held, <= WEB_HIST_LEN */
  bool primed;                 /* last_in/last_out hold a reading */
  uint64_t last_in, last_out;  /* the counters at the last reading */
};
/* Reads the counters (in, out: totals since the start) at unix time at.
 * The first reading only primes; a counter that went down is taken as
 * starting again from 0. */
void web_hist_add(struct web_hist *h, int64_t at, uint64_t in, uint64_t out);
/* The i-th oldest sample, i < h->n (NULL otherwise). */
const struct web_hist_sample *web_hist_get(const struct web_hist *h, uint32_t i);

/* ---- shared between the web/ files (need libwebsockets) ---------------- */

#ifndef WEB_UTIL_ONLY

#include <cjson/cJSON.h>
#include <libwebsockets.h>
#include <uv.h>

/* ---- what the API's handler files share (web_api.c) ----------------------- */

struct web_http_conn;

#define WEB_ACTOR "api:admin"     /* who acts, in the audit */
#define WEB_CLIENT_ID_CAP 256     /* struct api_device's client_id */
/* A command's log line: an API client sends commands at will, so each call
 * site is rate-limited (common/log.h). */
#define WEB_LOG_COMMAND(...)                                                                    \
  do {                                                                                          \
    static struct log_ratelimit rl_;                                                            \
    log_ratelimited(&rl_, LOG_INFO, "web", __VA_ARGS__);                                        \
  } while (0)
/* Replies with o (taken over) as JSON. */
int web_reply_json(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                   cJSON *o);
/* An api_err as HTTP; what: the thing a 404 did not find ("device"), NULL
 * when the reason says it. */
int web_reply_api_err(struct lws *wsi, struct web *w, struct web_http_conn *c, int err,
                      const char *reason, const char *what);
/* The device as it is now (after a command), calloc'd for the caller to
 * free; NULL when it cannot be had, with the error reply queued (*rc the
 * handler's return). */
struct api_device;
struct api_device *web_device_now(struct lws *wsi, struct web *w, struct web_http_conn *c,
                                  const char *id, int *rc);
/* Adds a member to o; *ok becomes false when memory runs out. */
void web_json_str(cJSON *o, const char *k, const char *v, bool *ok);
void web_json_num(cJSON *o, const char *k, double v, bool *ok);

#include "gw_api.h"

enum web_role { WEB_ROLE_NONE = 0, WEB_ROLE_READ = 1, WEB_ROLE_ADMIN = 2 };

struct web_ws_client;

/* What a connection is waiting for, against its deadline (web.c). */
enum web_deadline {
  WEB_DEADLINE_NONE,           /* nothing (a request is being answered, or kept-alive idle) */
  WEB_DEADLINE_HEADERS,        /* its first request's headers: WEB_HEADER_TIMEOUT_S */
  WEB_DEADLINE_BODY,           /* the body the headers announced: WEB_BODY_TIMEOUT_S */
};

/* One admitted connection's bookkeeping, found from its wsi through lws's
 * opaque user data (set only on connections web.c admitted). */
struct web_conn {
  struct web *w;
  struct lws *wsi;             /* NULL: the record is free */
  int slot;                    /* in w->conn_table */
  enum web_deadline deadline;
  lws_sorted_usec_list_t sul;  /* fires at the deadline */
  char peer[48];               /* the client's address, for the log */
};

/* Counted since the start, shown on /metrics (web_h_metrics). */
struct web_stats {
  uint64_t refused_full;       /* WEB_CONN_MAX connections were open */
  uint64_t refused_per_ip;     /* WEB_CONN_PER_IP from that client were open */
  uint64_t timeout_headers;    /* closed: no complete headers in time */
  uint64_t timeout_body;       /* closed: no complete body in time */
};

struct web {
  uv_loop_t *loop;
  struct gw *gw;
  struct lws_context *ctx;
  struct lws_vhost *vhost;
  int port;

  /* Our own copies of the options (the caller's strings may not outlive
   * web_start). */
  char *bind;
  char *admin_token;
  char *read_token;
  char *tls_cert_file;
  char *tls_key_file;
  char *static_dir;
  char *openapi_file;
  bool open_health;
  bool open_metrics;
  size_t max_body;

  struct web_ws_client *clients;  /* live event-stream sockets */

  /* Every admitted connection, counted per client (web.c). */
  struct web_conn_table conn_table;
  struct web_conn conns[WEB_CONN_MAX];
  struct web_stats stats;
  struct web_hist hist;           /* sampled by hist_timer (web.c) */
  uv_timer_t hist_timer;
  bool hist_on;                   /* hist_timer is initialised and not closed */

  /* Stopping: lws closes its libuv handles asynchronously, so a timer of
   * ours watches for the last of them before done() runs. */
  bool stopping;
  uv_timer_t stop_timer;
  unsigned stop_polls;
  void (*done)(void *);
  void *done_ud;
};

/* Per-transaction HTTP state, embedded in the per-session data. */
struct web_http_conn {
  unsigned method;             /* enum web_method */
  bool active;                 /* a request is being handled */
  bool body_expected;
  bool discard_body;           /* an error reply is already decided */
  bool close_after;            /* the request's framing leaves the socket unusable */
  char *body;
  size_t body_len;
  size_t body_cap;
  cJSON *json;                 /* the body, parsed once by dispatch (NULL for none or CSV) */
  bool secret;                 /* the route is secret (struct web_route): the reply is sent
                                  with Cache-Control: no-store and wiped with the request */

  /* The reply. */
  bool replying;
  bool headers_sent;
  bool head_only;
  int status;
  const char *ctype;
  bool www_auth;
  char allow[64];
  unsigned char *out;          /* LWS_PRE headroom, then out_len body bytes */
  size_t out_len;
  size_t out_off;
};

/* Per-client WebSocket state, embedded in the per-session data. */
struct web_ws_client {
  struct web *w;
  struct lws *wsi;
  struct web_ws_client *next;
  struct web_ws_client *prev;
  bool listed;
  bool authed;
  struct api_sub *sub;
  char *rx;                    /* the first (token) message, assembled */
  size_t rx_len;
  struct web_ws_event **queue; /* ring of WEB_WS_QUEUE entries */
  unsigned q_head;
  unsigned q_count;
  uint64_t dropped;
};

struct web_pss {
  struct web_http_conn http;
  struct web_ws_client ws;
};

/* web.c: arms the connection's deadline for what it now waits for, or
 * clears it (WEB_DEADLINE_NONE).  A connection web.c did not admit has no
 * deadline of ours. */
void web_conn_deadline(struct lws *wsi, enum web_deadline which);

/* web_auth.c */
enum web_role web_auth_token(const struct web *w, const char *token, size_t len);
enum web_role web_auth_request(const struct web *w, struct lws *wsi);

/* web_http.c: the HTTP side of the protocol callback. */
int web_http_callback(struct web *w, struct lws *wsi, enum lws_callback_reasons reason,
                      struct web_pss *pss, void *in, size_t len);

/* web_http.c: the replies, for the handlers in web_api.c.  Each queues the
 * whole reply on c and counts it; -1 closes the connection. */
extern const char web_ct_json[];   /* "application/json" */
/* LWS_PRE bytes of headroom, len body bytes and one spare; NULL if no memory. */
unsigned char *web_out_alloc(size_t len);
/* Takes ownership of out (from web_out_alloc, len body bytes). */
int web_reply_raw(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                  const char *ctype, unsigned char *out, size_t len);
int web_reply_copy(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                   const char *ctype, const char *body, size_t len);
/* true when the request's Content-Type is text/csv. */
bool web_request_is_csv(struct lws *wsi);
/* The one way web/ turns a peer's bytes into cJSON: web_json_check_object,
 * then cJSON_ParseWithLengthOpts with require_null_terminated over
 * buf[0..len] (buf[len] must be '\0'), so the two agree on where the
 * document ends.  NULL with *err and *at (either may be NULL) set on a
 * refusal; NULL with *err WEB_JSON_OK when out of memory. */
cJSON *web_json_parse_object(const char *buf, size_t len, enum web_json_err *err, size_t *at);
/* Overwrites every string value in the tree (key material a secret route
 * read or wrote), before it is deleted. */
void web_json_wipe(cJSON *o);
/* {"error": code, "message": message}; a 401 adds WWW-Authenticate. */
int web_reply_error(struct lws *wsi, struct web *w, struct web_http_conn *c, int status,
                    const char *code, const char *message);

/* web_http.c (the table, the search) and web_api.c (the handlers, the
 * rows): the routes.  Everything below is used by web_http.c and
 * web_api.c alone; it is declared here so that tests/unit/web can check the
 * route table and the JSON of the rows. */

/* Who may use a route. */
enum web_auth {
  WEB_AUTH_NONE,     /* anyone, without a token */
  WEB_AUTH_READ,     /* the read-only or the admin token */
  WEB_AUTH_ADMIN,    /* the admin token (commands) */
  WEB_AUTH_HEALTH,   /* WEB_AUTH_READ, or WEB_AUTH_NONE when open_health is set */
  WEB_AUTH_METRICS,  /* WEB_AUTH_READ, or WEB_AUTH_NONE when open_metrics is set */
};

/* A route's handler.  arg is the route's path parameter, NUL-terminated (the
 * ClientId or the allowlist entry), or the whole path for a route without
 * one.  It queues the reply; -1 closes the connection. */
typedef int web_handler(struct lws *wsi, struct web *w, struct web_http_conn *c, const char *arg);

struct web_route {
  unsigned methods;      /* enum web_method bits */
  const char *pattern;   /* see web_path_match */
  enum web_auth auth;
  web_handler *handler;
  const char *missing;   /* the 404 message when the parameter is too long to name anything */
  bool csv_ok;           /* also takes a text/csv body; any other body must pass
                            web_json_check_object, whatever the route does with it */
  bool secret;           /* its body or its answer may hold key material: both are
                            wiped, not just freed, and the answer is not cached */
};

/* ClientIds in one POST /api/v1/psks (= API_PSK_BULK_MAX of gw_api.h). */
#define WEB_PSK_BULK_MAX 1000

/* The table, in the order it is searched. */
extern const struct web_route web_routes[];
extern const size_t web_routes_count;

/* What a request finds.  The resource is the first entry whose pattern
 * matches the path; every entry with the same pattern belongs to it, one
 * per method.  resource NULL: no such resource (404); route NULL: the
 * resource does not take the method (405, with allowed for the Allow
 * header). */
struct web_route_hit {
  const struct web_route *resource;
  const struct web_route *route;
  unsigned allowed;      /* enum web_method bits of every entry of the resource */
  const char *arg;       /* the path parameter, inside the path; NULL if none */
  size_t arg_len;
};
void web_route_find(const char *path, unsigned method, struct web_route_hit *hit);

/* A route's auth under w's configuration: WEB_AUTH_NONE, _READ or _ADMIN. */
enum web_auth web_route_auth(const struct web *w, const struct web_route *rt);

/* web_api.c, web_psk.c and web_outbox.c: the handlers the table names. */
web_handler web_h_health, web_h_status, web_h_status_history, web_h_devices, web_h_device, web_h_device_cert,
    web_h_approve, web_h_block, web_h_unblock, web_h_reprovision, web_h_rotate, web_h_release,
    web_h_decommission, web_h_psk_create, web_h_psk_rotate, web_h_psk_revoke, web_h_psks_bulk,
    web_h_outbox_discard, web_h_allowlist_get, web_h_allowlist_post, web_h_allowlist_delete, web_h_certs, web_h_audit,
    web_h_openapi, web_h_metrics, web_h_events, web_h_static;

/* web_api.c: the JSON of the gateway's rows.  The row callbacks append one object to
 * a struct web_rows (their ud); when one cannot be built, ok goes false and
 * the callback returns -1, which stops the listing. */
struct web_rows {
  cJSON *items;          /* a cJSON array */
  bool ok;
};
cJSON *web_device_json(const struct api_device *d);
/* web_outbox.c: adds o's "outbox" member (a device's; totals: the status's,
 * with "leaves"); *ok becomes false when memory runs out. */
void web_outbox_json(cJSON *o, const struct api_outbox *ob, bool totals, bool *ok);
int web_device_row(void *ud, const struct api_device *d);
int web_cert_row(void *ud, const struct api_cert *cr);
int web_audit_row(void *ud, const struct api_audit *a);
int web_allow_row(void *ud, const char *entry, int64_t added_at);
int web_sub_row(void *ud, const char *filter, int qos);

/* web_ws.c: the WebSocket side. */
int web_ws_filter(struct web *w, struct lws *wsi);
int web_ws_callback(struct web *w, struct lws *wsi, enum lws_callback_reasons reason,
                    struct web_pss *pss, void *in, size_t len);
/* Drops every client's subscription (web_stop, before the context goes). */
void web_ws_detach_all(struct web *w);

#endif /* WEB_UTIL_ONLY */

#endif
