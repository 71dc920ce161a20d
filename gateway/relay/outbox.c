/*
 * outbox.c - store and forward for the leaves' QoS 1 and 2 publishes
 * (outbox.h; docs/outbox.md).
 *
 * The registry holds every message from the moment the leaf is told it was
 * taken until the broker's PUBACK.  Memory holds, per lane, what is staged
 * for the next commit, what is in flight and a window of the next messages
 * to send (outbox.memory_window); the rest is read back from the registry
 * in order ("spilled").  So an outage of an hour costs disk, not memory.
 *
 * Order per lane: seq is assigned at commit in put order; READY is kept in
 * seq order (a message given back by a stopped upstream goes back to its
 * place); a lane pumps only while every message in flight belongs to its
 * current sink (closing == 0), so a message never overtakes an older one
 * that is still out on another connection.
 */
#include "outbox_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "drain.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define TICK_MS 10            /* pacing of lanes waiting for a rate */
#define SWEEP_MS 5000         /* TTL sweep */
#define MAX_TOPIC 65535

/* ---- lanes -------------------------------------------------------------- */

static size_t hash_id(const char *s)
{
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return (size_t)h;
}

static int grow(struct outbox *ob)
{
  size_t nb = ob->nbuckets ? ob->nbuckets * 2 : 256;
  struct ob_lane **b = calloc(nb, sizeof *b);
  if (!b)
    return -1;
  for (size_t i = 0; i < ob->nbuckets; i++) {
    struct ob_lane *l = ob->buckets[i], *n;
    for (; l; l = n) {
      n = l->next_hash;
      size_t k = hash_id(l->client_id) & (nb - 1);
      l->next_hash = b[k];
      b[k] = l;
    }
  }
  free(ob->buckets);
  ob->buckets = b;
  ob->nbuckets = nb;
  return 0;
}

struct ob_lane *ob_find_lane(const struct outbox *ob, const char *id)
{
  if (!ob->nbuckets)
    return NULL;
  for (struct ob_lane *l = ob->buckets[hash_id(id) & (ob->nbuckets - 1)]; l; l = l->next_hash)
    if (strcmp(l->client_id, id) == 0)
      return l;
  return NULL;
}

struct ob_lane *outbox_lane(struct outbox *ob, const char *client_id)
{
  struct ob_lane *l = ob_find_lane(ob, client_id);
  size_t n;
  if (l)
    return l;
  if (ob->nlanes >= ob->nbuckets && grow(ob) != 0)
    return NULL;
  n = strlen(client_id);
  l = calloc(1, sizeof *l + n + 1);
  if (!l)
    return NULL;
  memcpy(l->client_id, client_id, n + 1);
  l->ob = ob;
  l->tokens = ob->cfg->outbox.rate_per_leaf;
  l->tokens_at = uv_now(ob->env.loop);
  size_t k = hash_id(client_id) & (ob->nbuckets - 1);
  l->next_hash = ob->buckets[k];
  ob->buckets[k] = l;
  ob->nlanes++;
  return l;
}

bool outbox_lane_busy(const struct ob_lane *l)
{
  return l->count > 0;
}

void *outbox_sink(const struct ob_lane *l)
{
  return l->sink;
}

/* ---- bookkeeping -------------------------------------------------------- */

static void arm_commit(struct outbox *ob, uint64_t ms);

/* How long queued deletions wait for a commit when no staged message
 * brings one sooner: commit_ms, or OB_DELETE_MS when that is 0, so that a
 * drain with no new publishes deletes in batches, not a transaction per
 * broker PUBACK.  (A deletion lost in a crash is only a duplicate.) */
#define OB_DELETE_MS 1
static uint64_t ob_delete_wait(const struct outbox *ob)
{
  return ob->cfg->outbox.commit_ms ? ob->cfg->outbox.commit_ms : OB_DELETE_MS;
}

/* A message leaves the lane's count (delivered, refused, dropped, expired). */
void ob_gone(struct ob_lane *l, uint64_t size)
{
  struct outbox *ob = l->ob;
  l->count--;
  l->bytes -= size;
  ob->count--;
  ob->bytes -= size;
}

/* n messages of bytes bytes in all left the lane's disk part at once. */
void ob_gone_n(struct ob_lane *l, int64_t n, int64_t bytes)
{
  l->count -= (uint64_t)n;
  l->bytes -= (uint64_t)bytes;
  l->ob->count -= (uint64_t)n;
  l->ob->bytes -= (uint64_t)bytes;
}

void ob_check_idle(struct ob_lane *l)
{
  if (l->count == 0 && l->sink && l->ob->env.idle)
    l->ob->env.idle(l->ob->env.ud, l->sink);
}

static void ready_push_tail(struct ob_lane *l, struct ob_msg *m)
{
  m->state = OB_READY;
  m->next = NULL;
  if (l->ready_tail)
    l->ready_tail->next = m;
  else
    l->ready = m;
  l->ready_tail = m;
  l->n_ready++;
}

/* Back into READY at its place by seq (messages come back from a stopped
 * upstream; they are older than every READY one, but maybe not in order). */
static void ready_insert(struct ob_lane *l, struct ob_msg *m)
{
  struct ob_msg **pp = &l->ready;
  while (*pp && (*pp)->seq < m->seq)
    pp = &(*pp)->next;
  m->state = OB_READY;
  m->next = *pp;
  *pp = m;
  if (!m->next)
    l->ready_tail = m;
  l->n_ready++;
}

struct ob_msg *ob_ready_pop(struct ob_lane *l)
{
  struct ob_msg *m = l->ready;
  if (!m)
    return NULL;
  l->ready = m->next;
  if (!l->ready)
    l->ready_tail = NULL;
  l->n_ready--;
  m->next = NULL;
  return m;
}

static void inflight_take(struct ob_lane *l, struct ob_msg *m)
{
  struct ob_msg *prev = NULL;
  for (struct ob_msg *x = l->inflight; x; prev = x, x = x->next) {
    if (x != m)
      continue;
    if (prev)
      prev->next = x->next;
    else
      l->inflight = x->next;
    if (l->inflight_tail == x)
      l->inflight_tail = prev;
    break;
  }
  m->next = NULL;
  l->n_inflight--;
  if (l->closing)
    l->closing--;
}

static struct ob_msg *msg_new(const char *topic, size_t tlen, const uint8_t *p, size_t len)
{
  struct ob_msg *m = malloc(sizeof *m + tlen + len);
  if (!m)
    return NULL;
  memset(m, 0, sizeof *m);
  memcpy(m->data, topic, tlen);
  if (len)
    memcpy(m->data + tlen, p, len);
  m->topic_len = (uint16_t)tlen;
  m->len = (uint32_t)len;
  return m;
}

/* ---- reading spilled messages back -------------------------------------- */

static int load_one(void *ud, const struct store_outbox_msg *sm)
{
  struct ob_lane *l = ud;
  struct ob_msg *m = msg_new(sm->topic, sm->topic_len, sm->payload, sm->len);
  if (!m)
    return 1;
  m->lane = l;
  m->seq = sm->seq;
  m->created_ms = sm->created_ms;
  m->retain = sm->retain;
  ready_push_tail(l, m);
  l->loaded_seq = sm->seq;
  l->disk_oldest_ms = sm->created_ms;
  return 0;
}

static void refill(struct ob_lane *l)
{
  struct outbox *ob = l->ob;
  uint32_t window = ob->cfg->outbox.memory_window;
  uint32_t before = l->n_ready;
  int rc;
  if (!l->spilled || l->n_ready >= window)
    return;
  rc = store_outbox_load(ob->env.store, l->client_id, l->loaded_seq, window - l->n_ready,
                         load_one, l);
  if (rc != STORE_OK) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: cannot read the outbox back: %s", l->client_id,
                    store_errmsg(ob->env.store));
    return;
  }
  if (l->n_ready - before < window - before)
    l->spilled = false; /* everything stored is in memory now */
}

/* ---- sending ------------------------------------------------------------ */

static void refill_tokens(double *tokens, uint64_t *at, uint64_t now, uint32_t rate)
{
  double burst = rate >= 10 ? rate / 10.0 : 1.0; /* 100 ms worth */
  *tokens += (double)(now - *at) * rate / 1000.0;
  if (*tokens > burst)
    *tokens = burst;
  *at = now;
}

static void on_tick(uv_timer_t *t);

static void wait_for_rate(struct ob_lane *l)
{
  struct outbox *ob = l->ob;
  if (!l->waiting) {
    l->waiting = true;
    l->next_wait = NULL;
    if (ob->wait_tail)
      ob->wait_tail->next_wait = l;
    else
      ob->wait_head = l;
    ob->wait_tail = l;
  }
  if (!ob->tick_armed && !ob->stopping) {
    ob->tick_armed = true;
    uv_timer_start(&ob->tick_timer, on_tick, TICK_MS, 0);
  }
}

/* Sends what the lane may send now, at most max messages. */
static void pump(struct ob_lane *l, uint32_t max)
{
  struct outbox *ob = l->ob;
  const struct gw_config *cfg = ob->cfg;
  uint64_t now = uv_now(ob->env.loop);

  while (max > 0 && l->sink && l->sink_up && l->closing == 0 && !ob->stopping &&
         l->n_inflight < cfg->outbox.max_inflight) {
    struct ob_msg *m;
    if (!l->ready)
      refill(l);
    if (!(m = l->ready))
      return;
    if (cfg->outbox.rate_per_leaf) {
      refill_tokens(&l->tokens, &l->tokens_at, now, cfg->outbox.rate_per_leaf);
      if (l->tokens < 1.0) {
        wait_for_rate(l);
        return;
      }
    }
    if (cfg->outbox.rate_total) {
      refill_tokens(&ob->tokens, &ob->tokens_at, now, cfg->outbox.rate_total);
      if (ob->tokens < 1.0) {
        wait_for_rate(l);
        return;
      }
    }
    if (ob->env.send(ob->env.ud, l->sink, m, (const char *)m->data, m->topic_len,
                     m->data + m->topic_len, m->len, m->retain) != 0)
      return; /* the upstream is full: the next ack pumps again */
    ob_ready_pop(l);
    m->state = OB_INFLIGHT;
    if (l->inflight_tail)
      l->inflight_tail->next = m;
    else
      l->inflight = m;
    l->inflight_tail = m;
    l->n_inflight++;
    if (cfg->outbox.rate_per_leaf)
      l->tokens -= 1.0;
    if (cfg->outbox.rate_total)
      ob->tokens -= 1.0;
    ob->m->outbox_sent++;
    max--;
  }
}

static void on_tick(uv_timer_t *t)
{
  struct outbox *ob = t->data;
  struct ob_lane *ring = ob->wait_head;
  ob->tick_armed = false;
  ob->wait_head = ob->wait_tail = NULL;
  /* Round robin: one message per lane per round while the gateway-wide rate
   * allows, so a lane with a backlog of thousands does not take every turn. */
  while (ring) {
    struct ob_lane *l = ring;
    ring = l->next_wait;
    l->waiting = false;
    pump(l, ob->cfg->outbox.rate_total ? 1 : UINT32_MAX);
    if (!l->waiting && ob->cfg->outbox.rate_total && l->ready && l->sink_up && l->closing == 0 &&
        l->n_inflight < ob->cfg->outbox.max_inflight)
      wait_for_rate(l); /* more to send: back to the end of the ring */
  }
}

/* ---- commit ------------------------------------------------------------- */

void ob_queue_delete(struct outbox *ob, int64_t seq)
{
  if (ob->n_dels == ob->cap_dels) {
    size_t cap = ob->cap_dels ? ob->cap_dels * 2 : 256;
    int64_t *d = realloc(ob->dels, cap * sizeof *d);
    if (!d) {
      /* No room to batch it: delete it on its own. */
      if (store_outbox_delete(ob->env.store, seq) != STORE_OK)
        LOGW(MOD, "cannot delete a delivered message: %s", store_errmsg(ob->env.store));
      return;
    }
    ob->dels = d;
    ob->cap_dels = cap;
  }
  ob->dels[ob->n_dels++] = seq;
  arm_commit(ob, ob_delete_wait(ob));
}

static int cmp_seq(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The queued deletions in seq order, one statement per run of consecutive
 * seqs: acknowledgements come back in about the order of sending, so a
 * commit's deletions are a few runs, not one statement a message. */
static int delete_queued(struct outbox *ob)
{
  int64_t *d = ob->dels;
  size_t n = ob->n_dels, i = 0;
  int rc = STORE_OK;
  if (n == 0)
    return STORE_OK; /* dels may be NULL */
  qsort(d, n, sizeof *d, cmp_seq);
  while (i < n && rc == STORE_OK) {
    size_t j = i;
    while (j + 1 < n && d[j + 1] - d[j] <= 1) /* a repeat (duplicate PUBACK) keeps the run */
      j++;
    rc = store_outbox_delete_range(ob->env.store, d[i], d[j]);
    i = j + 1;
  }
  return rc;
}

void ob_commit(struct outbox *ob)
{
  struct store *st = ob->env.store;
  struct ob_msg *list = ob->staged, *m, *next;
  struct ob_lane *pumps = NULL, **pumps_tail = &pumps; /* in the order of the commit */
  bool ok = true;
  size_t n_dels = ob->n_dels;
  uint64_t t0, us;

  if (!list && !n_dels)
    return;
  ob->last_commit_ms = uv_now(ob->env.loop);
  t0 = uv_hrtime();
  ob->staged = ob->staged_tail = NULL;
  ob->n_staged = 0;
  if (store_begin(st) != STORE_OK) {
    ok = false;
  } else {
    for (m = list; m && ok; m = m->next) {
      struct store_outbox_msg sm = {.topic = (const char *)m->data, .topic_len = m->topic_len,
                                    .payload = m->data + m->topic_len, .len = m->len, .qos = 1,
                                    .retain = m->retain, .created_ms = m->created_ms};
      int rc = store_outbox_add_dev(st, &m->lane->device, m->lane->client_id, &sm);
      if (rc == STORE_NOTFOUND) {
        m->seq = -1; /* the device is gone: this one is refused, the others go on */
        continue;
      }
      if (rc != STORE_OK)
        ok = false;
      m->seq = sm.seq;
    }
    if (ok && delete_queued(ob) != STORE_OK)
      ok = false;
    if (ok && store_commit(st) != STORE_OK)
      ok = false;
    if (!ok)
      store_rollback(st);
  }
  ob->m->outbox_commits++;
  us = (uv_hrtime() - t0) / 1000u;
  if (us > ob->m->outbox_commit_max_us)
    ob->m->outbox_commit_max_us = us;
  if (ok) {
    ob->n_dels = 0;
  } else {
    static struct log_ratelimit rl;
    ob->m->outbox_commit_failures++;
    log_ratelimited(&rl, LOG_ERROR, MOD, "cannot write the outbox: %s; leaves told congestion",
                    store_errmsg(st));
    /* The deletions stay queued for the next commit. */
  }
  for (m = list; m; m = next) {
    struct ob_lane *l = m->lane;
    bool taken = ok && m->seq > 0;
    next = m->next;
    m->next = NULL;
    l->n_staged--;
    if (ob->env.stored)
      ob->env.stored(ob->env.ud, m->owner, m->token, taken);
    m->owner = m->token = NULL;
    if (!taken) {
      ob_gone(l, ob_msg_size(m));
      l->st.refused_full++; /* not taken: counted with the refusals */
      free(m);
      ob_check_idle(l);
      continue;
    }
    l->st.stored++;
    ob->m->outbox_stored++;
    if (!l->spilled && l->n_ready < ob->cfg->outbox.memory_window) {
      ready_push_tail(l, m);
      l->loaded_seq = m->seq;
    } else {
      if (!l->spilled) {
        l->spilled = true;
        l->disk_oldest_ms = m->created_ms;
      }
      free(m);
    }
    if (!l->to_pump) {
      l->to_pump = true;
      *pumps_tail = l;
      pumps_tail = &l->next_pump;
    }
  }
  /* Every leaf of the commit has its answer (PUBACK) before the first of
   * these messages goes upstream: the answers do not wait behind the
   * publishes, which the broker's own acknowledgement then follows.  Lanes
   * live until outbox_free, so the list cannot hold a freed one. */
  if (list && ob->env.answered)
    ob->env.answered(ob->env.ud);
  while (pumps) {
    struct ob_lane *l = pumps;
    pumps = l->next_pump;
    l->next_pump = NULL;
    l->to_pump = false;
    pump(l, UINT32_MAX);
  }
}

static void ask_sinks(struct outbox *ob)
{
  ob->need_sinks = false;
  for (size_t i = 0; i < ob->nbuckets; i++)
    for (struct ob_lane *l = ob->buckets[i]; l; l = l->next_hash)
      if (l->want_sink) {
        l->want_sink = false;
        if (!l->sink && l->count > 0 && ob->env.need_sink)
          ob->env.need_sink(ob->env.ud, l->client_id);
      }
}

static void on_commit_timer(uv_timer_t *t)
{
  struct outbox *ob = t->data;
  ob->commit_armed = false;
  ob_commit(ob);
  if (ob->need_sinks && !ob->stopping)
    ask_sinks(ob);
}

static void arm_commit(struct outbox *ob, uint64_t ms)
{
  if (ob->stopping || !ob->started)
    return;
  /* Armed already: a later call moves the timer only to make it sooner,
   * to now (a 0 that is already due stays as it is). */
  if (ob->commit_armed && (ms > 0 || uv_timer_get_due_in(&ob->commit_timer) == 0))
    return;
  ob->commit_armed = true;
  uv_timer_start(&ob->commit_timer, on_commit_timer, ms, 0);
}

/* A message was staged: a leaf waits for the commit.  It runs at the start
 * of the next loop turn, after the rest of this turn's datagrams have been
 * staged with it: the batch is what arrived while the loop was busy, so it
 * grows with the load (and with a slow commit: an fsync under
 * registry.synchronous "full" holds the loop, and what arrives meanwhile
 * goes in the next one) and costs a lone message no wait.  With commit_ms
 * set, at most one commit every commit_ms: a message staged sooner after
 * the last one waits for the rest of the interval.  Deletions of
 * acknowledged messages wait for a timer (ob_delete_wait): no leaf waits
 * for them. */
static void arm_commit_staged(struct outbox *ob)
{
  uint64_t every = ob->cfg->outbox.commit_ms, now = uv_now(ob->env.loop);
  uint64_t due = ob->last_commit_ms + every;
  if (ob->n_staged >= ob->cfg->outbox.commit_max || due <= now)
    arm_commit(ob, 0);
  else
    arm_commit(ob, due - now);
}

/* ---- putting ------------------------------------------------------------ */

/* Drops the lane's oldest message not in flight; false when there is none. */
static bool drop_oldest(struct ob_lane *l)
{
  struct outbox *ob = l->ob;
  struct ob_msg *m = ob_ready_pop(l);
  if (m) {
    ob_queue_delete(ob, m->seq);
    ob_gone(l, ob_msg_size(m));
    free(m);
  } else if (l->spilled) {
    int64_t seq = 0, bytes = 0;
    int rc = store_outbox_drop_first(ob->env.store, l->client_id, l->loaded_seq, &seq, &bytes);
    if (rc == STORE_NOTFOUND) {
      l->spilled = false;
      return false;
    }
    if (rc != STORE_OK)
      return false;
    ob_gone(l, (uint64_t)bytes);
  } else {
    return false;
  }
  l->st.dropped++;
  ob->m->outbox_dropped++;
  return true;
}

static bool over(const struct ob_lane *l, uint64_t size)
{
  const struct gw_config *cfg = l->ob->cfg;
  return l->count + 1 > cfg->outbox.max_messages_per_leaf ||
         l->bytes + size > cfg->outbox.max_bytes_per_leaf ||
         l->ob->count + 1 > cfg->outbox.max_messages ||
         l->ob->bytes + size > cfg->outbox.max_bytes;
}

int outbox_put(struct ob_lane *l, void *owner, const char *topic, size_t topic_len,
               const uint8_t *payload, size_t len, bool retain, void *token)
{
  struct outbox *ob = l->ob;
  uint64_t size = (uint64_t)topic_len + len;
  struct ob_msg *m;

  if (topic_len == 0 || topic_len > MAX_TOPIC || len > UINT32_MAX)
    return OUTBOX_EINVAL;
  if (ob->stopping)
    return OUTBOX_FULL;
  while (over(l, size)) {
    if (ob->cfg->outbox.when_full != WHEN_FULL_DROP_OLDEST || !drop_oldest(l)) {
      static struct log_ratelimit rl;
      l->st.refused_full++;
      ob->m->outbox_refused_full++;
      log_ratelimited(&rl, LOG_WARN, MOD,
                      "%s: outbox full (%llu messages, %llu bytes; %llu in all): refused",
                      l->client_id, (unsigned long long)l->count, (unsigned long long)l->bytes,
                      (unsigned long long)ob->count);
      return OUTBOX_FULL;
    }
  }
  if (!(m = msg_new(topic, topic_len, payload, len)))
    return OUTBOX_ENOMEM;
  m->lane = l;
  m->owner = owner;
  m->token = token;
  m->retain = retain;
  m->created_ms = ob_wall_ms();
  m->state = OB_STAGED;
  if (ob->staged_tail)
    ob->staged_tail->next = m;
  else
    ob->staged = m;
  ob->staged_tail = m;
  ob->n_staged++;
  l->n_staged++;
  l->count++;
  l->bytes += size;
  ob->count++;
  ob->bytes += size;
  arm_commit_staged(ob);
  return OUTBOX_OK;
}

/* ---- the upstream's reports --------------------------------------------- */

void outbox_acked(struct ob_msg *m)
{
  struct ob_lane *l = m->lane;
  struct outbox *ob = l->ob;
  inflight_take(l, m);
  ob_queue_delete(ob, m->seq);
  ob_gone(l, ob_msg_size(m));
  l->st.delivered++;
  ob->m->outbox_delivered++;
  free(m);
  pump(l, UINT32_MAX);
  ob_check_idle(l);
}

void outbox_returned(struct ob_msg *m)
{
  struct ob_lane *l = m->lane;
  inflight_take(l, m);
  ready_insert(l, m);
  pump(l, UINT32_MAX);
}

void outbox_refused(struct ob_msg *m)
{
  struct ob_lane *l = m->lane;
  struct outbox *ob = l->ob;
  static struct log_ratelimit rl;
  inflight_take(l, m);
  ob_queue_delete(ob, m->seq);
  ob_gone(l, ob_msg_size(m));
  l->st.cloud_refused++;
  ob->m->publish_refused++;
  log_ratelimited(&rl, LOG_WARN, MOD,
                  "%s: the broker refused a stored message on %.*s (it closed the connection "
                  "after it, again and again): deleted",
                  l->client_id, (int)m->topic_len, (const char *)m->data);
  free(m);
  pump(l, UINT32_MAX);
  ob_check_idle(l);
}

/* ---- sinks -------------------------------------------------------------- */

void outbox_attach(struct ob_lane *l, void *sink, bool up)
{
  if (l->sink && l->sink != sink)
    outbox_detach(l, l->sink, false);
  l->sink = sink;
  l->sink_up = up;
  l->want_sink = false;
  pump(l, UINT32_MAX);
}

void outbox_detach(struct ob_lane *l, void *sink, bool want_other)
{
  struct outbox *ob = l->ob;
  for (struct ob_msg *m = ob->staged; m; m = m->next)
    if (m->owner == sink)
      m->owner = NULL;
  if (l->sink != sink)
    return;
  l->sink = NULL;
  l->sink_up = false;
  l->closing = l->n_inflight;
  if (want_other && l->count > 0 && !ob->stopping) {
    l->want_sink = true;
    ob->need_sinks = true;
    arm_commit(ob, ob->cfg->outbox.commit_ms);
  }
}

void outbox_sink_up(struct ob_lane *l, void *sink, bool up)
{
  if (l->sink != sink)
    return;
  l->sink_up = up;
  if (up)
    pump(l, UINT32_MAX);
}

/* ---- lifecycle ---------------------------------------------------------- */

int outbox_new(const struct outbox_env *env, struct outbox **out)
{
  struct outbox *ob = calloc(1, sizeof *ob);
  if (!ob)
    return UV_ENOMEM;
  ob->env = *env;
  ob->cfg = env->cfg;
  ob->m = env->m;
  if (grow(ob) != 0) {
    free(ob);
    return UV_ENOMEM;
  }
  *out = ob;
  return 0;
}

static int load_lane(void *ud, const char *client_id, const struct store_outbox_stats *s)
{
  struct outbox *ob = ud;
  struct ob_lane *l = outbox_lane(ob, client_id);
  if (!l)
    return 1;
  l->count = (uint64_t)s->count;
  l->bytes = (uint64_t)s->bytes;
  l->spilled = true;
  l->loaded_seq = s->first_seq - 1;
  l->disk_oldest_ms = s->oldest_ms;
  l->want_sink = true;
  ob->count += l->count;
  ob->bytes += l->bytes;
  return 0;
}

int outbox_start(struct outbox *ob)
{
  uv_loop_t *loop = ob->env.loop;
  struct outbox_info t;
  int rc;
  uv_timer_init(loop, &ob->commit_timer);
  uv_timer_init(loop, &ob->tick_timer);
  uv_timer_init(loop, &ob->sweep_timer);
  ob->commit_timer.data = ob->tick_timer.data = ob->sweep_timer.data = ob;
  ob->tokens_at = uv_now(loop);
  ob->tokens = ob->cfg->outbox.rate_total;
  ob->started = true;
  rc = store_outbox_each_client(ob->env.store, load_lane, ob);
  if (rc != STORE_OK) {
    LOGE(MOD, "cannot read the outbox: %s", store_errmsg(ob->env.store));
    return UV_EIO;
  }
  outbox_info(ob, NULL, &t);
  if (t.messages)
    LOGI(MOD, "%llu stored messages of %u leaves to deliver (oldest taken %llds ago)",
         (unsigned long long)t.messages, t.lanes,
         (long long)t.oldest_age_s);
  uv_timer_start(&ob->sweep_timer, ob_on_sweep, SWEEP_MS, SWEEP_MS);
  ob->need_sinks = true;
  ask_sinks(ob);
  return 0;
}

static void timer_closed(uv_handle_t *h)
{
  struct outbox *ob = h->data;
  drain_release(ob->env.drain);
}

void outbox_stop(struct outbox *ob)
{
  if (!ob->started || ob->stopping)
    return;
  ob->stopping = true; /* nothing more is taken or sent */
  ob_commit(ob);
  uv_timer_t *timers[] = {&ob->commit_timer, &ob->tick_timer, &ob->sweep_timer};
  for (size_t i = 0; i < 3; i++) {
    uv_timer_stop(timers[i]);
    drain_hold(ob->env.drain);
    uv_close((uv_handle_t *)timers[i], timer_closed);
  }
}

static void free_list(struct ob_msg *m)
{
  while (m) {
    struct ob_msg *n = m->next;
    free(m);
    m = n;
  }
}

void outbox_free(struct outbox *ob)
{
  if (!ob)
    return;
  /* The acknowledgements that came in while the upstreams closed. */
  if (ob->started)
    ob_commit(ob);
  for (size_t i = 0; i < ob->nbuckets; i++) {
    struct ob_lane *l = ob->buckets[i], *n;
    for (; l; l = n) {
      n = l->next_hash;
      free_list(l->ready);
      free_list(l->inflight);
      free(l);
    }
  }
  free_list(ob->staged);
  free(ob->buckets);
  free(ob->dels);
  free(ob);
}
