/*
 * outbox_int.h - relay-internal: the outbox's structures and the helpers
 * its two files share.  outbox.c is the hot path (put, commit, pump, the
 * upstream's reports, sinks, lifecycle); outbox_figures.c is what
 * operators read and do (figures, discard) and the TTL sweep.
 */
#ifndef FLEETGW_OUTBOX_INT_H
#define FLEETGW_OUTBOX_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "outbox.h"
#include "store.h" /* struct store_devref */

#define MOD "outbox"

enum ob_state { OB_STAGED = 1, OB_READY, OB_INFLIGHT };

struct ob_msg {
  struct ob_msg *next;
  struct ob_lane *lane;
  void *owner, *token;          /* while staged */
  int64_t seq;                  /* 0 while staged */
  int64_t created_ms;
  uint32_t len;                 /* payload bytes */
  uint16_t topic_len;
  uint8_t state;
  bool retain;
  uint8_t data[];               /* topic, then payload */
};

struct ob_lane {
  struct ob_lane *next_hash;
  struct ob_lane *next_wait;    /* the ring of lanes waiting for a rate */
  struct ob_lane *next_pump;    /* lanes to pump once a commit's leaves are answered */
  bool waiting, to_pump;
  struct outbox *ob;
  void *sink;
  bool sink_up;
  uint32_t closing;             /* in flight on a previous sink */
  struct ob_msg *ready, *ready_tail;
  uint32_t n_ready;
  struct ob_msg *inflight, *inflight_tail;
  uint32_t n_inflight;
  uint32_t n_staged;
  bool spilled;                 /* stored messages after loaded_seq are only on disk */
  int64_t loaded_seq;           /* the last seq read into memory (or kept there) */
  int64_t disk_oldest_ms;       /* created_ms of the first spilled one, as far as known */
  uint64_t count, bytes;        /* staged + stored + in flight */
  double tokens;                /* rate_per_leaf bucket */
  uint64_t tokens_at;
  bool want_sink;               /* need_sink pending */
  struct outbox_info st;        /* counters (messages/bytes/... filled on read) */
  struct store_devref device;   /* the registry's row id, as store_outbox_add_dev keeps it */
  char client_id[];
};

struct outbox {
  struct outbox_env env;
  const struct gw_config *cfg;
  struct metrics *m;
  struct ob_lane **buckets;
  size_t nbuckets, nlanes;
  struct ob_msg *staged, *staged_tail;
  uint32_t n_staged;
  int64_t *dels;                /* seqs acknowledged, deleted at the next commit */
  size_t n_dels, cap_dels;
  uint64_t count, bytes;
  struct ob_lane *wait_head, *wait_tail;
  double tokens;                /* rate_total bucket */
  uint64_t tokens_at;
  uv_timer_t commit_timer, tick_timer, sweep_timer;
  uint64_t last_commit_ms;      /* loop time of the last commit that wrote */
  bool commit_armed, tick_armed, started, stopping;
  bool need_sinks;              /* a lane wants a sink (asked on the next commit timer) */
};

static inline int64_t ob_wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline uint64_t ob_msg_size(const struct ob_msg *m)
{
  return (uint64_t)m->topic_len + m->len;
}

/* outbox.c */
struct ob_lane *ob_find_lane(const struct outbox *ob, const char *id);
/* The first READY message, out of the list (NULL when none). */
struct ob_msg *ob_ready_pop(struct ob_lane *l);
/* seq is deleted from the registry with the next commit. */
void ob_queue_delete(struct outbox *ob, int64_t seq);
/* One message of size bytes / n messages of bytes in all left the lane. */
void ob_gone(struct ob_lane *l, uint64_t size);
void ob_gone_n(struct ob_lane *l, int64_t n, int64_t bytes);
/* An empty lane tells its sink's owner (env.idle). */
void ob_check_idle(struct ob_lane *l);
/* The group commit: what is staged and the queued deletions, now. */
void ob_commit(struct outbox *ob);

/* outbox_figures.c: the TTL sweep's timer callback. */
void ob_on_sweep(uv_timer_t *t);

#endif
