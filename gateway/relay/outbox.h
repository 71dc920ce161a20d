/*
 * outbox.h - store and forward: a leaf's QoS 1 and 2 publishes are written
 * to the registry's outbox before the leaf is acknowledged, and go to the
 * cloud from there, in order, paced, and are deleted only after the broker's
 * PUBACK (docs/outbox.md).
 *
 * One lane per ClientId holds that leaf's messages in order.  A message:
 *
 *   outbox_put --> STAGED (memory) --group commit--> on disk: stored(token)
 *   tells the owner (the leaf gets its PUBACK) --> READY, in the lane's
 *   memory window, or only on disk ("spilled": loaded again in order when
 *   the window empties) --pump--> IN FLIGHT (the upstream's token)
 *      --outbox_acked--> deleted at the next commit
 *      --outbox_returned (the upstream stopped)--> READY again, in order
 *      --outbox_refused (the cloud refused it)--> deleted, counted
 *
 * Group commit: staged messages and deletions go to the registry in one
 * transaction, in the loop turn after they were staged (everything the
 * turn before took in goes in it), at most one every outbox.commit_ms when
 * that is set, and on the next loop turn once outbox.commit_max are staged.
 * Deletions alone wait at least a millisecond (OB_DELETE_MS).
 *
 * A lane sends through its sink (the relay's link to the leaf's upstream)
 * while the sink is up, at most outbox.max_inflight at once, within
 * outbox.rate_per_leaf and the gateway-wide outbox.rate_total (the lanes
 * that wait for either take turns, so none starves another).  A new sink
 * sends nothing until the previous one has given back its messages in
 * flight, so the order holds across reconnects and link changes.
 *
 * Bounds: messages and bytes per lane and in total, and an age
 * (outbox.ttl_s).  When full, outbox.when_full says: refuse the new message
 * (the leaf gets "congestion") or drop the lane's oldest one not in flight.
 * Each refusal, drop and expiry is counted per lane and in the metrics.
 *
 * The owner's callbacks are never called from inside an outbox_* call that
 * the owner made, except send() (from outbox_attach/sink_up/acked/returned,
 * i.e. from the upstream's own callbacks, where upstream_publish is allowed).
 */
#ifndef FLEETGW_OUTBOX_H
#define FLEETGW_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct drain;
struct gw_config;
struct metrics;
struct store;
struct outbox;
struct ob_lane;
struct ob_msg;

enum { OUTBOX_OK = 0, OUTBOX_FULL = -1, OUTBOX_ENOMEM = -2, OUTBOX_EINVAL = -3 };

struct outbox_env {
  uv_loop_t *loop;
  const struct gw_config *cfg;
  struct store *store;
  struct metrics *m;
  struct drain *drain;          /* the timers' closes */
  /* Hands m to sink's upstream as a QoS 1 PUBLISH with m as its token.
   * Returns 0, or -1 when the upstream cannot take it now (it is offered
   * again after the next acknowledgement or reconnect). */
  int (*send)(void *ud, void *sink, struct ob_msg *m, const char *topic, size_t topic_len,
              const uint8_t *payload, size_t len, bool retain);
  /* The message outbox_put() took with owner and token is on disk (ok) or
   * was lost with a failed commit (!ok).  owner is NULL once the owner
   * detached (outbox_detach). */
  void (*stored)(void *ud, void *owner, void *token, bool ok);
  /* Every stored() of one commit has been called, and the commit's
   * messages go upstream next (optional: the owner sends the answers it
   * batched, so they do not wait behind the publishes). */
  void (*answered)(void *ud);
  /* A lane holds messages and has no sink: open one for client_id (after a
   * restart, or after a leaf with a backlog went without a graceful end). */
  void (*need_sink)(void *ud, const char *client_id);
  /* sink's lane has delivered everything (nothing staged, stored or in
   * flight): the owner may close a sink that only drained. */
  void (*idle)(void *ud, void *sink);
  void *ud;
};

/* What a lane (or the whole outbox) holds and has done. */
struct outbox_info {
  uint64_t messages;            /* staged, stored and in flight */
  uint64_t bytes;               /* their topic and payload bytes */
  uint64_t in_flight;
  int64_t oldest_ms;            /* Unix ms the oldest was taken; 0 when empty */
  int64_t oldest_age_s;         /* its age now, s; -1 when empty */
  uint64_t stored;              /* taken and acknowledged to the leaf */
  uint64_t delivered;           /* acknowledged by the broker and deleted */
  uint64_t refused_full;        /* refused: a bound (when_full "reject") */
  uint64_t dropped;             /* dropped to make room (when_full "drop-oldest") */
  uint64_t expired;             /* older than outbox.ttl_s, deleted */
  uint64_t cloud_refused;       /* the broker refused them (closed after them) */
  uint64_t discarded;           /* discarded by an operator */
  uint32_t lanes;               /* lanes holding messages (totals only) */
};

/* Returns 0 or UV_ENOMEM. */
int outbox_new(const struct outbox_env *env, struct outbox **out);
/* Loads the lanes of the messages on disk (need_sink for each) and starts
 * the timers.  Returns 0 or a negative libuv error (logged). */
int outbox_start(struct outbox *ob);
/* Commits what is staged (stored() follows for each), stops sending and
 * closes the timers (drain_hold/release on env.drain). */
void outbox_stop(struct outbox *ob);
void outbox_free(struct outbox *ob);

/* The lane of client_id, created when absent (NULL: out of memory).  A
 * lane lives as long as the outbox (its counters are the leaf's since the
 * start); there is one per leaf that sent a QoS 1/2 message. */
struct ob_lane *outbox_lane(struct outbox *ob, const char *client_id);
/* sink carries the lane from now on (it replaces the current one, which
 * is detached); up says whether it is connected. */
void outbox_attach(struct ob_lane *l, void *sink, bool up);
/* sink (if it is the lane's) stops carrying it: its messages in flight are
 * expected back through outbox_returned or outbox_acked; staged messages put
 * by sink as owner are reported to a NULL owner.  want_other: a lane left
 * with messages asks for another sink (need_sink, after the next commit). */
void outbox_detach(struct ob_lane *l, void *sink, bool want_other);
/* sink's upstream went up or down. */
void outbox_sink_up(struct ob_lane *l, void *sink, bool up);
/* True while the lane holds messages (a session that ends lets its link
 * drain them). */
bool outbox_lane_busy(const struct ob_lane *l);
/* The lane's current sink, or NULL. */
void *outbox_sink(const struct ob_lane *l);

/* Takes a leaf's message (QoS 1 upstream).  owner and token come back in
 * stored().  OUTBOX_FULL: over a bound (refused; counted); OUTBOX_EINVAL:
 * an empty or over-long topic. */
int outbox_put(struct ob_lane *l, void *owner, const char *topic, size_t topic_len,
               const uint8_t *payload, size_t len, bool retain, void *token);

/* The upstream's reports about a message it was given by send(). */
void outbox_acked(struct ob_msg *m);
void outbox_returned(struct ob_msg *m);
void outbox_refused(struct ob_msg *m);

/* One lane's figures (by ClientId; all zero for a ClientId without a lane
 * that has nothing on disk), or the totals when client_id is NULL. */
void outbox_info(struct outbox *ob, const char *client_id, struct outbox_info *out);
/* Deletes client_id's stored messages that are not in flight (an
 * operator's action), committed before it returns; messages in flight, and
 * those staged for the next commit, still go.  *n says how many went.
 * Returns 0, or -1 on a registry error. */
int outbox_discard(struct outbox *ob, const char *client_id, uint64_t *n);

#endif
