/*
 * leaves.h - the LAN side of the gateway as gw.c composes it: the MQTT-SN
 * UDP socket, the table of leaf sessions (by ClientId and by address),
 * datagram dispatch, gateway discovery (SEARCHGW/GWINFO, ADVERTISE) and
 * admission of CONNECTs against the registry.  One leaf's behaviour is in
 * session.c; its upstream is reached through struct sess_uplink_ops.
 */
#ifndef FLEETGW_LEAVES_H
#define FLEETGW_LEAVES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "newid.h"
#include "session.h"

struct admit_room;
struct drain;
struct gw_config;
struct leaves;
struct metrics;
struct store;

/* An event for the operators' stream: {"type", "client_id", key: value,
 * key2: value2}; client_id, key and key2 may be NULL. */
typedef void (*leaves_event_fn)(void *ud, const char *type, const char *client_id,
                                const char *key, const char *value, const char *key2,
                                const char *value2);

struct leaves_env {
  uv_loop_t *loop;
  const struct gw_config *cfg;
  struct metrics *m;             /* the gateway's counters */
  struct store *store;           /* the registry, for admission */
  struct drain *drain;           /* asynchronous closes in flight */
  const struct sess_uplink_ops *up;
  void *up_ctx;
  leaves_event_fn event;
  void *event_ud;
  struct newid_opts newid;       /* how fast new identities may appear */
  const char *const *converters; /* IPs of protocol converters (newid.h) */
  size_t n_converters;
  struct admit_room *room;       /* the registry's room for new identities;
                                    NULL = unlimited (admission.h) */
};

/* Copies env.  Returns 0 or UV_ENOMEM. */
int leaves_new(const struct leaves_env *env, struct leaves **out);
/* Binds the UDP socket and starts ADVERTISE when configured.  Returns 0 or
 * a negative libuv error (logged). */
int leaves_start(struct leaves *lv);
/* Ends every session (DISCONNECT to live leaves, graceful upstream stop),
 * frees their records and closes the socket and timers; the closes are
 * counted in env.drain.  *live and *queued (may be NULL) tell how many
 * leaves were told DISCONNECT and how many downlink messages were dropped. */
void leaves_stop(struct leaves *lv, size_t *live, uint64_t *queued);
/* After leaves_stop and the drain. */
void leaves_free(struct leaves *lv);
/* The bound UDP port (useful with port 0). */
int leaves_port(const struct leaves *lv);
/* The DTLS port, -1 when lan.dtls is off. */
int leaves_dtls_port(const struct leaves *lv);

/* The session of client_id, or NULL. */
struct session *leaves_find(struct leaves *lv, const char *client_id);
/* The live gauges: sets m's leaves_active/asleep/connecting, upstreams_up
 * and sessions (other fields untouched); *links (sessions holding an
 * upstream) and *queued (downlink messages waiting in all sessions) may be
 * NULL. */
void leaves_count(const struct leaves *lv, struct metrics *m, uint64_t *links, uint64_t *queued);
/* The device's provisioning run ended (ok: it has its certificate now): its
 * waiting session, if any, goes on. */
/* The new-identity limits of a configuration reload (newid.h; the
 * number of sources tracked stays). */
void leaves_set_newid(struct leaves *lv, const struct newid_opts *o);
void leaves_on_provisioned(struct leaves *lv, const char *client_id, bool ok);
/* The device's DTLS key changed or was revoked: every DTLS association
 * that authenticated as client_id is closed (its session ends as lost), so
 * the leaf must handshake again with the key it holds now.  Returns how many
 * were closed. */
size_t leaves_dtls_revoked(struct leaves *lv, const char *client_id);

#endif
