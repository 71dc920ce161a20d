/*
 * backoff.h - exponential back-off with "full jitter".  Pure and tested.
 *
 * delay(n) = random in [base/2, min(cap, base * 2^n)], so that a thousand
 * sessions that lost the broker at the same instant do not all come back at
 * the same instant (no reconnect storm).
 */
#ifndef FLEETGW_BACKOFF_H
#define FLEETGW_BACKOFF_H

#include <stdint.h>

struct backoff {
  uint32_t base_ms;
  uint32_t cap_ms;
  uint32_t attempt;  /* failures since the last success */
  uint64_t rng;      /* xorshift state, seeded at init */
};

void backoff_init(struct backoff *b, uint32_t base_ms, uint32_t cap_ms, uint64_t seed);
/* The delay before the next attempt; increments the attempt counter. */
uint32_t backoff_next(struct backoff *b);
/* Call on success. */
void backoff_reset(struct backoff *b);

#endif
