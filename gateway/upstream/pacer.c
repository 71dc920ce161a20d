/*
 * pacer.c - connect pacing (see pacer.h): a token bucket for the rate and a
 * counter for the attempts in progress, in front of a FIFO of slots.
 */
#include "pacer.h"

#include <stdlib.h>

struct pacer {
  uv_loop_t *loop;
  uv_timer_t timer;            /* wakes the queue when a token is due */
  uint32_t max_connecting;
  uint32_t rate_per_s;
  size_t connecting;
  size_t waiting;
  double tokens;
  uint64_t tokens_at;          /* loop ms of the last refill */
  struct pacer_slot *head, *tail;
  void (*done)(void *);
  void *done_ud;
};

uint32_t pacer_burst(uint32_t rate_per_s)
{
  if (rate_per_s == 0)
    return 0;
  return rate_per_s >= 200 ? rate_per_s / 100 : 1; /* 10 ms' worth, at least one */
}

/* Takes a token if one is there; otherwise says how long until one is. */
static bool take_token(struct pacer *p, uint64_t *wait_ms)
{
  uint64_t now = uv_now(p->loop);
  if (p->rate_per_s == 0)
    return true;
  p->tokens += (double)(now - p->tokens_at) * p->rate_per_s / 1000.0;
  if (p->tokens > pacer_burst(p->rate_per_s))
    p->tokens = pacer_burst(p->rate_per_s);
  p->tokens_at = now;
  if (p->tokens >= 1.0) {
    p->tokens -= 1.0;
    return true;
  }
  *wait_ms = (uint64_t)((1.0 - p->tokens) * 1000.0 / p->rate_per_s) + 1;
  return false;
}

static void dispatch(struct pacer *p);

static void timer_cb(uv_timer_t *t)
{
  dispatch(t->data);
}

/* Starts waiting slots while there is room and rate. */
static void dispatch(struct pacer *p)
{
  while (p->head && (p->max_connecting == 0 || p->connecting < p->max_connecting)) {
    struct pacer_slot *s = p->head;
    uint64_t wait_ms = 0;
    if (!take_token(p, &wait_ms)) {
      if (!uv_is_active((uv_handle_t *)&p->timer))
        uv_timer_start(&p->timer, timer_cb, wait_ms, 0);
      return;
    }
    p->head = s->next;
    if (p->head)
      p->head->prev = NULL;
    else
      p->tail = NULL;
    s->next = NULL;
    s->waiting = false;
    p->waiting--;
    s->holding = true;
    p->connecting++;
    s->go(s);
  }
}

void pacer_wait(struct pacer *p, struct pacer_slot *s)
{
  if (s->waiting || s->holding)
    return;
  s->waiting = true;
  s->next = NULL;
  s->prev = p->tail;
  if (p->tail)
    p->tail->next = s;
  else
    p->head = s;
  p->tail = s;
  p->waiting++;
  dispatch(p);
}

void pacer_done(struct pacer *p, struct pacer_slot *s)
{
  if (s->waiting) {
    if (s->prev)
      s->prev->next = s->next;
    else
      p->head = s->next;
    if (s->next)
      s->next->prev = s->prev;
    else
      p->tail = s->prev;
    s->waiting = false;
    s->next = s->prev = NULL;
    p->waiting--;
  }
  if (s->holding) {
    s->holding = false;
    p->connecting--;
    dispatch(p);
  }
}

int pacer_new(uv_loop_t *loop, uint32_t max_connecting, uint32_t rate_per_s, struct pacer **out)
{
  struct pacer *p = calloc(1, sizeof *p);
  if (!p)
    return -1;
  p->loop = loop;
  p->max_connecting = max_connecting;
  p->rate_per_s = rate_per_s;
  p->tokens = pacer_burst(rate_per_s);
  p->tokens_at = uv_now(loop);
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  *out = p;
  return 0;
}

static void closed_cb(uv_handle_t *h)
{
  struct pacer *p = h->data;
  void (*done)(void *) = p->done;
  void *ud = p->done_ud;
  free(p);
  if (done)
    done(ud);
}

void pacer_close(struct pacer *p, void (*done)(void *), void *ud)
{
  p->done = done;
  p->done_ud = ud;
  uv_close((uv_handle_t *)&p->timer, closed_cb);
}

size_t pacer_waiting(const struct pacer *p)
{
  return p->waiting;
}

size_t pacer_connecting(const struct pacer *p)
{
  return p->connecting;
}
