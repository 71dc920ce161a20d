/*
 * relay.h - the bridge between a leaf session (gateway/lan) and its own
 * upstream MQTT session (gateway/upstream): it implements the session's
 * uplink interface (struct sess_uplink_ops, lan/session.h) with one upstream
 * per leaf, finds the leaf's cloud identity (provision_ensure: the thing
 * name and TLS client identity, provisioned exactly once), builds the
 * upstream options from the configuration, and turns the upstream's
 * callbacks into the session's sess_up_*() reports.  With outbox.enabled
 * a leaf's QoS 1/2 publishes go through its outbox lane (outbox.h): the
 * session hears "acked" once they are on disk, and the links deliver them;
 * a link outlives its session while its lane still holds messages.  It also owns the
 * gateway-level upstream session that carries QoS -1 publishes.
 */
#ifndef FLEETGW_RELAY_H
#define FLEETGW_RELAY_H

#include <uv.h>

#include "session.h"

struct drain;
struct gw_config;
struct metrics;
struct outbox;
struct store;
struct pacer;
struct provisioner;
struct relay;
struct tls_ctx;

struct relay_env {
  uv_loop_t *loop;
  const struct gw_config *cfg;
  struct metrics *m;
  struct tls_ctx *tls;           /* NULL: plain TCP upstreams */
  struct pacer *pacer;           /* connect pacing shared by every upstream */
  struct provisioner *prov;      /* the leaves' identities */
  struct drain *drain;           /* upstream closes in flight */
  struct store *store;           /* the registry, for the outbox */
};

/* Copies env.  Returns 0 or UV_ENOMEM. */
int relay_new(const struct relay_env *env, struct relay **out);
/* The uplink interface; its ctx is the relay. */
const struct sess_uplink_ops *relay_ops(void);
/* Starts the QoS -1 session when upstream.qos_m1_client_id is set.
 * Returns 0 or a negative libuv error (logged). */
int relay_start(struct relay *r);
/* Stops the QoS -1 session (graceful); its close is counted in the drain. */
void relay_stop(struct relay *r);
/* After relay_stop and the drain. */
void relay_free(struct relay *r);
/* The outbox (outbox.h), or NULL when outbox.enabled is false. */
struct outbox *relay_outbox(struct relay *r);
/* The outbox's gauges (outbox_messages, _bytes, _oldest_age_s, _leaves) into m. */
void relay_count(struct relay *r, struct metrics *m);

#endif
