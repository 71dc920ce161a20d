/*
 * sess_store.c - a leaf session's state in the registry, so that a gateway
 * restart is invisible to the leaves (docs/outbox.md §8): the session
 * (clean flag, keep-alive or sleep duration, address, will, message id),
 * its subscriptions, its topic ids in both directions and, while it
 * sleeps, its buffered downlink messages.
 *
 * Write-behind, batched: a change marks the session (sess_persist_mark),
 * and every PERSIST_MS one transaction writes a snapshot of each marked
 * session (store_leaf_put clears its rows, the adds write them again).  A
 * crash loses at most the last PERSIST_MS of changes; a leaf whose REGISTER
 * was lost so is answered "invalid topic id" and registers again, which
 * MQTT-SN leaves do.
 *
 * What is kept, by state:
 *   ACTIVE, and the will prompts and waits of a leaf that was ACTIVE: the
 *     session as ACTIVE (restored with its address over plain UDP; a DTLS
 *     association does not survive a restart, so a DTLS leaf's session comes
 *     back DISCONNECTED and resumes with its next CONNECT);
 *   ASLEEP and AWAKE: ASLEEP, with the downlink messages it has not had;
 *   DISCONNECTED or LOST with CleanSession=0: DISCONNECTED, for its next
 *     CONNECT; otherwise nothing (the row is deleted).
 *
 * At start-up (sess_persist_restore) each stored session becomes a record
 * again; ACTIVE and ASLEEP ones ask for their upstream at once, through the
 * relay and its connect pacer.  At a graceful stop the states are written
 * as they were before the leaves were told DISCONNECT, then writing stops.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lan_int.h"
#include "log.h"
#include "store.h"

#define MOD "session"
#define PERSIST_MS 20

/* ---- marking and writing ------------------------------------------------ */

static void flush(struct leaves *lv);

static void on_persist_timer(uv_timer_t *t)
{
  struct leaves *lv = t->data;
  lv->persist_armed = false;
  flush(lv);
}

void sess_persist_mark(struct session *s)
{
  struct leaves *lv = s->lv;
  if (!lv->persist_on || s->dirty)
    return;
  s->dirty = true;
  s->next_dirty = lv->dirty;
  lv->dirty = s;
  if (!lv->persist_armed) {
    lv->persist_armed = true;
    uv_timer_start(&lv->persist_timer, on_persist_timer, PERSIST_MS, 0);
  }
}

/* What the registry keeps of s now (enum store_leaf_state), or -1: nothing. */
static int kept_state(const struct session *s)
{
  switch (s->state) {
  case SESS_ASLEEP:
  case SESS_AWAKE:
    return LEAF_ASLEEP;
  case SESS_ACTIVE:
    return s->via == LAN_PLAIN ? LEAF_ACTIVE : (s->clean ? -1 : LEAF_DISCONNECTED);
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
  case SESS_WAIT_UPSTREAM:
  case SESS_DISCONNECTED:
  case SESS_LOST:
  default:
    return s->clean ? -1 : LEAF_DISCONNECTED;
  }
}

static int write_one(struct leaves *lv, struct session *s, int64_t now)
{
  struct store *st = lv->env.store;
  struct store_leaf_session r;
  char addr[80] = "";
  int kept = kept_state(s), rc;

  if (kept < 0)
    return store_leaf_delete(st, s->client_id);
  memset(&r, 0, sizeof r);
  r.client_id = s->client_id;
  r.state = kept;
  r.clean = s->clean;
  r.keepalive = s->keepalive ? s->keepalive : 1;
  r.sleep_s = kept == LEAF_ASLEEP ? s->keepalive : 0;
  if (kept != LEAF_DISCONNECTED && s->via == LAN_PLAIN && s->in_addr_table) {
    leaves_addr_str((const struct sockaddr *)&s->addr, addr, sizeof addr);
    r.addr = addr;
  }
  r.via = s->via;
  r.sec = s->sec;
  if (s->will_set && s->will_topic) {
    r.will_topic = s->will_topic;
    r.will_topic_len = strlen(s->will_topic);
    r.will_msg = s->will_msg;
    r.will_msg_len = s->will_msg_len;
    r.will_qos = s->will_qos;
    r.will_retain = s->will_retain;
  }
  r.next_msg_id = s->next_msg_id;
  r.next_topic_id = s->topics.next_id;
  if ((rc = store_leaf_put(st, &r, now)) != STORE_OK)
    return rc;
  for (const struct sub *b = s->subs; b; b = b->next)
    if ((rc = store_leaf_sub_add(st, s->client_id, b->filter, b->len, b->qos)) != STORE_OK)
      return rc;
  for (uint32_t i = 0; i < s->topics.n; i++) {
    const struct topic_entry *e = &s->topics.v[i];
    if ((rc = store_leaf_topic_add(st, s->client_id, e->id, e->name, e->len,
                                   e->known_by_leaf)) != STORE_OK)
      return rc;
  }
  if (kept == LEAF_ASLEEP)
    for (const struct downmsg *d = s->q_head; d; d = d->next)
      if ((rc = store_leaf_downlink_add(st, s->client_id, d->data, d->topic_len,
                                        (const uint8_t *)d->data + d->topic_len + 1, d->len,
                                        d->qos, d->retain)) != STORE_OK)
        return rc;
  return STORE_OK;
}

static void flush(struct leaves *lv)
{
  struct store *st = lv->env.store;
  struct session *list = lv->dirty, *s, *next;
  int64_t now = (int64_t)time(NULL);
  bool ok;

  lv->dirty = NULL;
  if (!list)
    return;
  ok = store_begin(st) == STORE_OK;
  for (s = list; s && ok; s = s->next_dirty) {
    int rc = write_one(lv, s, now);
    /* A device deleted meanwhile has nothing to keep: not an error. */
    if (rc != STORE_OK && rc != STORE_NOTFOUND)
      ok = false;
  }
  if (ok && store_commit(st) != STORE_OK)
    ok = false;
  if (!ok) {
    static struct log_ratelimit rl;
    store_rollback(st);
    lv->m->sessions_persist_failed++;
    log_ratelimited(&rl, LOG_WARN, MOD, "cannot write leaf sessions to the registry: %s "
                    "(tried again)", store_errmsg(st));
  }
  for (s = list; s; s = next) {
    next = s->next_dirty;
    s->dirty = false;
    s->next_dirty = NULL;
    if (!ok)
      sess_persist_mark(s); /* the next pass tries again */
  }
}

void sess_persist_forget(struct session *s)
{
  struct leaves *lv = s->lv;
  if (s->dirty) {
    for (struct session **pp = &lv->dirty; *pp; pp = &(*pp)->next_dirty) {
      if (*pp == s) {
        *pp = s->next_dirty;
        break;
      }
    }
    s->dirty = false;
  }
  /* A record evicted to make room: its stored state goes with it.  At a
   * stop the records are freed, and what is stored stays for the restart. */
  if (lv->persist_on && store_leaf_delete(lv->env.store, s->client_id) != STORE_OK)
    LOGD(MOD, "%s: stored session not deleted: %s", s->client_id,
         store_errmsg(lv->env.store));
}

/* ---- restoring ---------------------------------------------------------- */

/* "ip:port" or "[ip6]:port" into a socket address. */
static int parse_addr(const char *s, struct sockaddr_storage *out)
{
  char ip[64];
  const char *colon;
  int port;
  memset(out, 0, sizeof *out);
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof ip)
      return -1;
    memcpy(ip, s + 1, (size_t)(end - s - 1));
    ip[end - s - 1] = '\0';
    port = atoi(end + 2);
    if (port < 1 || port > 65535)
      return -1;
    return uv_ip6_addr(ip, port, (struct sockaddr_in6 *)out);
  }
  colon = strrchr(s, ':');
  if (!colon || (size_t)(colon - s) >= sizeof ip)
    return -1;
  memcpy(ip, s, (size_t)(colon - s));
  ip[colon - s] = '\0';
  port = atoi(colon + 1);
  if (port < 1 || port > 65535)
    return -1;
  if (strchr(ip, ':'))
    return uv_ip6_addr(ip, port, (struct sockaddr_in6 *)out);
  return uv_ip4_addr(ip, port, (struct sockaddr_in *)out);
}

struct restore {
  struct leaves *lv;
  struct session *cur;          /* the session the children belong to */
  uint64_t n, active, asleep;
};

static struct session *owner(struct restore *r, const char *client_id)
{
  return r->cur && strcmp(r->cur->client_id, client_id) == 0 ? r->cur : NULL;
}

static int on_sess(void *ud, const struct store_leaf_session *rec)
{
  struct restore *r = ud;
  struct leaves *lv = r->lv;
  size_t len = strlen(rec->client_id);
  struct session *s;

  r->cur = NULL;
  if (len == 0 || len > 255 || leaves_by_id(lv, rec->client_id, len))
    return 0;
  if (!(s = leaves_add(lv, rec->client_id, len))) {
    LOGW(MOD, "%s: stored session not restored: lan.max_leaves held", rec->client_id);
    return 0;
  }
  r->cur = s;
  r->n++;
  s->restored = true;
  s->clean = rec->clean;
  s->keepalive = rec->state == LEAF_ASLEEP && rec->sleep_s ? rec->sleep_s : rec->keepalive;
  s->via = (uint8_t)rec->via;
  s->sec = (uint8_t)rec->sec;
  s->next_msg_id = rec->next_msg_id;
  if (rec->will_topic && rec->will_topic_len) {
    s->will_topic = malloc(rec->will_topic_len + 1);
    s->will_msg = malloc(rec->will_msg_len ? rec->will_msg_len : 1);
    if (s->will_topic && s->will_msg) {
      memcpy(s->will_topic, rec->will_topic, rec->will_topic_len);
      s->will_topic[rec->will_topic_len] = '\0';
      if (rec->will_msg_len)
        memcpy(s->will_msg, rec->will_msg, rec->will_msg_len);
      s->will_msg_len = rec->will_msg_len;
      s->will_qos = (uint8_t)rec->will_qos;
      s->will_retain = rec->will_retain;
      s->will_set = true;
    } else {
      free(s->will_topic);
      free(s->will_msg);
      s->will_topic = NULL;
      s->will_msg = NULL;
    }
  }
  s->last_rx = uv_now(lv->loop);
  switch (rec->state) {
  case LEAF_ACTIVE: {
    struct sockaddr_storage a;
    if (rec->via == LAN_PLAIN && rec->addr && parse_addr(rec->addr, &a) == 0) {
      leaves_bind_addr(lv, s, (const struct sockaddr *)&a, LAN_PLAIN);
      s->state = SESS_ACTIVE;
      r->active++;
    } else {
      s->state = SESS_DISCONNECTED;
    }
    break;
  }
  case LEAF_ASLEEP: {
    struct sockaddr_storage a;
    /* Over plain UDP it wakes from its address; over DTLS through a new
     * association that proves its identity. */
    if (rec->via == LAN_PLAIN && rec->addr && parse_addr(rec->addr, &a) == 0)
      leaves_bind_addr(lv, s, (const struct sockaddr *)&a, LAN_PLAIN);
    s->state = SESS_ASLEEP;
    s->sleep_deadline = s->last_rx + sess_tolerance_ms(s->keepalive);
    r->asleep++;
    break;
  }
  default:
    s->state = SESS_DISCONNECTED;
    break;
  }
  return 0;
}

static int on_sub(void *ud, const char *client_id, const char *filter, size_t len, int qos)
{
  struct session *s = owner(ud, client_id);
  if (s)
    sess_restore_sub(s, filter, len, (uint8_t)qos);
  return 0;
}

static int on_topic(void *ud, const char *client_id, uint16_t id, const char *name, size_t len,
                    bool known)
{
  struct session *s = owner(ud, client_id);
  if (s)
    topics_put(&s->topics, id, name, len, known);
  return 0;
}

static int on_down(void *ud, const char *client_id, const char *topic, size_t topic_len,
                   const uint8_t *payload, size_t len, int qos, bool retain)
{
  struct session *s = owner(ud, client_id);
  if (s)
    sess_restore_down(s, topic, topic_len, payload, len, qos, retain);
  return 0;
}

int sess_persist_restore(struct leaves *lv)
{
  static const struct store_leaf_cbs cbs = {on_sess, on_sub, on_topic, on_down};
  struct restore r = {.lv = lv};
  int rc;

  uv_timer_init(lv->loop, &lv->persist_timer);
  lv->persist_timer.data = lv;
  lv->persist_started = true;
  rc = store_leaf_load(lv->env.store, &cbs, &r);
  if (rc != STORE_OK) {
    LOGE(MOD, "cannot read the stored leaf sessions: %s", store_errmsg(lv->env.store));
    return UV_EIO;
  }
  /* The restored records must not be written back as they are restored. */
  lv->persist_on = true;
  if (r.n)
    LOGI(MOD, "%llu leaf sessions restored (%llu active, %llu asleep); their upstreams come "
         "back paced", (unsigned long long)r.n, (unsigned long long)r.active,
         (unsigned long long)r.asleep);
  for (size_t i = 0; i < lv->nbuckets; i++)
    for (struct session *s = lv->by_id[i]; s; s = s->next_by_id)
      if (s->state == SESS_ACTIVE || s->state == SESS_ASLEEP)
        sess_restore_open(s);
  return 0;
}

static void persist_closed(uv_handle_t *h)
{
  struct leaves *lv = h->data;
  drain_release(lv->env.drain);
}

void sess_persist_stop(struct leaves *lv)
{
  if (!lv->persist_started)
    return;
  flush(lv);
  lv->persist_on = false; /* the shutdown's DISCONNECTs are not written */
  uv_timer_stop(&lv->persist_timer);
  lv->persist_started = false;
  drain_hold(lv->env.drain);
  uv_close((uv_handle_t *)&lv->persist_timer, persist_closed);
}
