/*
 * gw.h - the gateway: one libuv loop, the LAN socket, the leaf sessions and
 * their upstream sessions.  This is what main.c composes.
 */
#ifndef FLEETGW_GW_H
#define FLEETGW_GW_H

#include <uv.h>

struct gw;
struct gw_config;

/* Creates the gateway on loop; cfg must outlive it.  Returns 0 or a negative
 * libuv-style error with a message logged. */
int gw_new(uv_loop_t *loop, const struct gw_config *cfg, struct gw **out);
/* Binds the UDP socket, starts timers and the QoS -1 session.  Logs
 * "ready" once leaves can connect.  Returns 0 or a negative error. */
int gw_start(struct gw *gw);
/* Graceful stop: every leaf gets DISCONNECT, every upstream session a
 * DISCONNECT, messages still queued are counted and logged; done(ud) runs
 * when every handle has been closed.  Safe to call twice (second is a no-op). */
void gw_stop(struct gw *gw, void (*done)(void *), void *ud);
/* Frees the gateway after done() ran. */
void gw_free(struct gw *gw);
/* After cfg_reload() changed the gateway's config in place (SIGHUP): takes
 * up what is not read where it is used, the admission.allowlist entries
 * (added to the registry's allowlist).  Returns 0, or -1 with the reason
 * logged. */
int gw_reload(struct gw *gw);
/* Logs one line "metrics {json}" at INFO. */
void gw_log_metrics(struct gw *gw);

#endif
