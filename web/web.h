/*
 * web.h - the operators' side: REST API, WebSocket event stream and the
 * dashboard's static files, on libwebsockets attached to the gateway's own
 * libuv loop (LWS_SERVER_OPTION_LIBUV with foreign_loops).  It reaches the
 * gateway only through gateway/api/gw_api.h.
 */
#ifndef FLEETGW_WEB_H
#define FLEETGW_WEB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct gw;
struct web;

struct web_opts {
  const char *bind;           /* listen address, e.g. "127.0.0.1" */
  uint16_t port;              /* e.g. 8080; 0 picks a free port */
  const char *admin_token;    /* required: read + commands (secret; never logged) */
  const char *read_token;     /* optional: GET only (secret) */
  bool open_health;           /* GET /api/v1/health without a token */
  bool open_metrics;          /* GET /metrics without a token */
  const char *tls_cert_file;  /* both set: HTTPS */
  const char *tls_key_file;
  const char *static_dir;     /* the dashboard: index.html, app.js, style.css */
  const char *openapi_file;   /* served at /api/v1/openapi.json */
  size_t max_body;            /* largest request body accepted (413 above) */
};

/* Starts listening on loop.  Returns 0, or -1 with the reason logged. */
int web_start(uv_loop_t *loop, const struct web_opts *opts, struct gw *gw, struct web **out);
/* The port actually bound (useful with port 0). */
int web_port(const struct web *w);
/* Replaces the tokens (SIGHUP): admin is required (at least 8 characters),
 * read may be NULL (no read-only token).  Requests from then on are checked
 * against the new ones; the old ones are wiped.  Returns 0, or -1 (nothing
 * changed) when admin is missing or memory runs out.  *changed (may be NULL)
 * says whether either token differs from before. */
int web_set_tokens(struct web *w, const char *admin, const char *read, bool *changed);
/* Closes every connection and the listener; done(ud) runs when all of
 * libwebsockets' handles on the loop are closed. */
void web_stop(struct web *w, void (*done)(void *), void *ud);

#endif
