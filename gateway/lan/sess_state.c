/*
 * sess_state.c - the state of one leaf session and its one timer: the
 * state setter (every transition goes through sess_set_state, which logs it
 * and tells the operators' stream), the names, the deadlines the timer is
 * armed for, and the MQTT-SN §7.2 tolerances.  What happens when a deadline
 * passes is session.c's timer callback (struct session on_timer).
 */
#include "lan_int.h"
#include "log.h"

#define MOD "session"

const char *sess_state_name(enum sess_state st)
{
  static const char *const names[] = {"disconnected", "wait-willtopic", "wait-willmsg",
                                      "wait-upstream", "active", "asleep", "awake", "lost"};
  return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "?";
}

void sess_set_state(struct session *s, enum sess_state st)
{
  if (s->state == st)
    return;
  LOGD(MOD, "%s: %s -> %s", s->client_id, sess_state_name(s->state), sess_state_name(st));
  s->state = st;
  sess_persist_mark(s);
  leaves_event(s->lv, "device.session", s->client_id, "session", sess_public_state(st));
}

const char *sess_public_state(enum sess_state st)
{
  /* The will prompts and the waits for provisioning and the upstream are
   * all "connecting" to an operator. */
  if (st == SESS_WAIT_WILLTOPIC || st == SESS_WAIT_WILLMSG || st == SESS_WAIT_UPSTREAM)
    return "connecting";
  return sess_state_name(st);
}

bool sess_is_live(const struct session *s)
{
  return s->state != SESS_DISCONNECTED && s->state != SESS_LOST;
}

void sess_count(const struct session *s, struct metrics *m)
{
  switch (s->state) {
  case SESS_ACTIVE:
    m->leaves_active++;
    break;
  case SESS_ASLEEP:
  case SESS_AWAKE:
    m->leaves_asleep++;
    break;
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
  case SESS_WAIT_UPSTREAM:
    m->leaves_connecting++;
    break;
  default:
    break;
  }
  if (s->up_is_up)
    m->upstreams_up++;
}

/* MQTT-SN §7.2: timers 50% above the indicated value below one minute, 10%
 * above it from one minute on. */
uint64_t sess_tolerance_ms(uint32_t seconds)
{
  uint64_t ms = (uint64_t)seconds * 1000u;
  return seconds < 60 ? ms + ms / 2 : ms + ms / 10;
}

/* A CONNECT's Duration as the gateway keeps it: 0 ("no keep-alive", which
 * would let a silent peer hold its record and its upstream for ever) and
 * anything above lan.max_keepalive_s become lan.max_keepalive_s. */
uint16_t sess_keepalive(struct leaves *lv, uint16_t duration)
{
  uint32_t max = lv->cfg->lan.max_keepalive_s;
  if (duration != 0 && duration <= max)
    return duration;
  lv->m->keepalive_capped++;
  return (uint16_t)(max > 0xFFFF ? 0xFFFF : max);
}

static uint64_t next_deadline(const struct session *s)
{
  const struct gw_config *cfg = s->lv->cfg;
  uint64_t d = UINT64_MAX;
#define MIN_D(x)        \
  do {                  \
    uint64_t x_ = (x);  \
    if (x_ < d)         \
      d = x_;           \
  } while (0)
  switch (s->state) {
  case SESS_WAIT_WILLTOPIC:
  case SESS_WAIT_WILLMSG:
  case SESS_WAIT_UPSTREAM:
    MIN_D(s->connect_deadline);
    break;
  case SESS_ACTIVE:
    if (s->keepalive)
      MIN_D(s->last_rx + sess_tolerance_ms(s->keepalive));
    break;
  case SESS_ASLEEP:
    MIN_D(s->sleep_deadline);
    break;
  default:
    break;
  }
  if ((s->state == SESS_ACTIVE || s->state == SESS_AWAKE) && s->inflight != INF_NONE)
    MIN_D(s->inf_deadline);
  if (sess_is_live(s) && s->state != SESS_WAIT_UPSTREAM && s->up_down_since && !s->link_ready)
    MIN_D(s->up_down_since + (uint64_t)cfg->upstream.give_up_after_s * 1000u);
#undef MIN_D
  return d;
}

void sess_arm(struct session *s)
{
  uint64_t d = next_deadline(s), now;
  if (d == UINT64_MAX) {
    uv_timer_stop(&s->timer);
    s->timer_due = 0;
    return;
  }
  /* Lazily: a timer already due at or before d stays as it is.  When it
   * fires the callback checks every deadline against the clock and arms
   * again for the next one, so a deadline that moved later (the keep-alive
   * after every message, the retry after an acknowledgement) costs one
   * early wake-up per period, not a timer-heap update per message. */
  if (s->timer_due != 0 && s->timer_due <= d && uv_is_active((uv_handle_t *)&s->timer))
    return;
  now = uv_now(s->lv->loop);
  s->timer_due = d;
  uv_timer_start(&s->timer, s->on_timer, d > now ? d - now : 0, 0);
}

/* The CONNACK goes out: the session is active. */
void sess_connect_done(struct session *s)
{
  sess_set_state(s, SESS_ACTIVE);
  s->last_rx = uv_now(s->lv->loop);
  sess_reply_connack(s, MQTTSN_RC_ACCEPTED);
}
