/*
 * backoff.c - exponential back-off with full jitter (see backoff.h).
 *
 * The attempt counter n gives the ceiling min(cap, base * 2^n); the delay is
 * drawn uniformly from [base/2, ceiling].  The floor of base/2 keeps a retry
 * from hammering the broker immediately, and the randomness spreads a crowd
 * of sessions that failed together over the whole window.
 */
#include "backoff.h"

/* Used when the caller seeds with 0, the one state xorshift never leaves. */
#define BACKOFF_SEED_FALLBACK 0x9e3779b97f4a7c15ull

void backoff_init(struct backoff *b, uint32_t base_ms, uint32_t cap_ms, uint64_t seed)
{
  b->base_ms = base_ms;
  b->cap_ms = cap_ms;
  b->attempt = 0;
  b->rng = seed != 0 ? seed : BACKOFF_SEED_FALLBACK;
}

/* xorshift64* (Vigna): small, fast and good enough for jitter. */
static uint64_t next_random(struct backoff *b)
{
  uint64_t x = b->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  b->rng = x;
  return x * 0x2545f4914f6cdd1dull;
}

/* min(cap, base * 2^n) without overflowing: once the product passes the cap
 * the doubling stops. */
static uint64_t ceiling_for(const struct backoff *b, uint32_t n)
{
  uint64_t hi = b->base_ms;
  for (uint32_t i = 0; i < n && hi < b->cap_ms; i++)
    hi *= 2;
  return hi < b->cap_ms ? hi : b->cap_ms;
}

uint32_t backoff_next(struct backoff *b)
{
  uint64_t hi = ceiling_for(b, b->attempt);
  uint64_t lo = b->base_ms / 2;

  /* A cap below base/2 is a configuration oddity; the cap wins. */
  if (lo > hi)
    lo = hi;
  if (b->attempt < UINT32_MAX)
    b->attempt++;
  return (uint32_t)(lo + next_random(b) % (hi - lo + 1));
}

void backoff_reset(struct backoff *b) { b->attempt = 0; }
