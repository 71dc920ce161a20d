/*
 * outbox_figures.c - what operators read of the outbox and do to it (the
 * figures per lane and in total, discarding a lane's messages), and the
 * TTL sweep that deletes what is older than outbox.ttl_s (outbox.h;
 * docs/outbox.md).  Off the hot path: outbox.c has that.
 */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "outbox_int.h"
#include "store.h"

/* ---- figures and the operator ------------------------------------------- */

static int64_t lane_oldest(const struct ob_lane *l)
{
  int64_t o = 0;
  if (l->inflight)
    o = l->inflight->created_ms;
  if (l->ready && (!o || l->ready->created_ms < o))
    o = l->ready->created_ms;
  if (l->spilled && l->disk_oldest_ms && (!o || l->disk_oldest_ms < o))
    o = l->disk_oldest_ms;
  if (!o && l->n_staged) {
    for (const struct ob_msg *m = l->ob->staged; m; m = m->next)
      if (m->lane == l)
        return m->created_ms;
  }
  return o;
}

static int64_t age_s(int64_t since_ms)
{
  int64_t now = ob_wall_ms();
  if (!since_ms)
    return -1;
  return now > since_ms ? (now - since_ms) / 1000 : 0;
}

void outbox_info(struct outbox *ob, const char *client_id, struct outbox_info *out)
{
  memset(out, 0, sizeof *out);
  out->oldest_age_s = -1;
  if (client_id) {
    const struct ob_lane *l = ob_find_lane(ob, client_id);
    if (!l)
      return;
    *out = l->st;
    out->messages = l->count;
    out->bytes = l->bytes;
    out->in_flight = l->n_inflight;
    out->oldest_ms = lane_oldest(l);
    out->oldest_age_s = age_s(out->oldest_ms);
    return;
  }
  out->messages = ob->count;
  out->bytes = ob->bytes;
  /* Lanes live as long as the outbox, so their counters sum to the totals. */
  for (size_t i = 0; i < ob->nbuckets; i++) {
    for (const struct ob_lane *l = ob->buckets[i]; l; l = l->next_hash) {
      int64_t o;
      out->stored += l->st.stored;
      out->delivered += l->st.delivered;
      out->refused_full += l->st.refused_full;
      out->dropped += l->st.dropped;
      out->expired += l->st.expired;
      out->cloud_refused += l->st.cloud_refused;
      out->discarded += l->st.discarded;
      if (!l->count)
        continue;
      out->lanes++;
      out->in_flight += l->n_inflight;
      o = lane_oldest(l);
      if (o && (!out->oldest_ms || o < out->oldest_ms))
        out->oldest_ms = o;
    }
  }
  out->oldest_age_s = age_s(out->oldest_ms);
}

int outbox_discard(struct outbox *ob, const char *client_id, uint64_t *n)
{
  struct ob_lane *l = ob_find_lane(ob, client_id);
  struct ob_msg *m;
  int64_t dn = 0, dbytes = 0;
  *n = 0;
  if (!l)
    return 0;
  while ((m = ob_ready_pop(l))) {
    ob_queue_delete(ob, m->seq);
    ob_gone(l, ob_msg_size(m));
    free(m);
    (*n)++;
  }
  if (l->spilled) {
    if (store_outbox_discard(ob->env.store, client_id, l->loaded_seq, INT64_MAX, &dn, &dbytes) !=
        STORE_OK) {
      l->st.discarded += *n; /* those from memory went all the same */
      ob_commit(ob);
      return -1;
    }
    l->spilled = false;
    ob_gone_n(l, dn, dbytes);
    *n += (uint64_t)dn;
  }
  l->st.discarded += *n;
  /* Gone from disk before the operator is told (and the audit says so). */
  ob_commit(ob);
  ob_check_idle(l);
  return ob->n_dels == 0 ? 0 : -1;
}

/* ---- expiry ------------------------------------------------------------- */

static void expire_lane(struct ob_lane *l, int64_t cutoff)
{
  struct outbox *ob = l->ob;
  uint64_t n = 0;
  while (l->ready && l->ready->created_ms < cutoff) {
    struct ob_msg *m = ob_ready_pop(l);
    ob_queue_delete(ob, m->seq);
    ob_gone(l, ob_msg_size(m));
    free(m);
    n++;
  }
  if (!l->ready && l->spilled && l->disk_oldest_ms < cutoff) {
    int64_t dn = 0, dbytes = 0;
    if (store_outbox_discard(ob->env.store, l->client_id, l->loaded_seq, cutoff, &dn, &dbytes) ==
        STORE_OK) {
      ob_gone_n(l, dn, dbytes);
      n += (uint64_t)dn;
      l->disk_oldest_ms = cutoff;
    }
  }
  if (n) {
    static struct log_ratelimit rl;
    l->st.expired += n;
    ob->m->outbox_expired += n;
    log_ratelimited(&rl, LOG_WARN, MOD, "%s: %llu messages older than outbox.ttl_s deleted",
                    l->client_id, (unsigned long long)n);
    ob_check_idle(l);
  }
}

void ob_on_sweep(uv_timer_t *t)
{
  struct outbox *ob = t->data;
  int64_t cutoff;
  if (!ob->cfg->outbox.ttl_s)
    return;
  cutoff = ob_wall_ms() - (int64_t)ob->cfg->outbox.ttl_s * 1000;
  for (size_t i = 0; i < ob->nbuckets; i++)
    for (struct ob_lane *l = ob->buckets[i]; l; l = l->next_hash)
      if (l->count) {
        int64_t o = lane_oldest(l);
        if (o && o < cutoff)
          expire_lane(l, cutoff);
      }
}
