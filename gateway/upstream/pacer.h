/*
 * pacer.h - connect pacing shared by every upstream of a gateway.
 *
 * At most max_connecting attempts are in progress at once (DNS to CONNACK)
 * and at most rate_per_s new attempts start per second; the others wait
 * their turn in FIFO order.  A thousand leaves connecting at once then
 * neither overflow the broker's listen backlog (dropped SYNs cost a
 * one-second retransmission) nor exceed a cloud's connect quota (AWS IoT
 * limits connects per second per account: docs/protocol-notes.md §4.6).  0 means
 * unlimited for either bound.
 *
 * The rate is a token bucket that holds at most pacer_burst(rate_per_s)
 * tokens, 10 ms' worth and at least one: any second then sees at most
 * rate_per_s + pacer_burst starts, also right after an idle spell (a bucket
 * of a whole second's worth let twice the rate through in the first second
 * after an outage, over a per-second quota).
 *
 * The pacer knows nothing of what it paces: a user embeds a struct
 * pacer_slot, asks for a turn with pacer_wait() and gets slot->go(slot) when
 * its turn comes (never from inside pacer_wait's caller's frame unless the
 * turn is free at once, see below).  pacer_done() gives the turn back, or
 * leaves the queue when still waiting.
 */
#ifndef FLEETGW_PACER_H
#define FLEETGW_PACER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct pacer;

struct pacer_slot {
  /* Called when the attempt may start; the slot then holds a turn until
   * pacer_done(). */
  void (*go)(struct pacer_slot *slot);
  /* Private to the pacer: the FIFO is doubly linked so that a slot leaves
   * it in O(1) wherever it is (thousands of leaves may wait at once). */
  struct pacer_slot *next, *prev;
  bool waiting;
  bool holding;
};

/* The most attempts the rate lets start at once (0 for rate 0: unlimited). */
uint32_t pacer_burst(uint32_t rate_per_s);

/* Returns 0, or -1 when out of memory. */
int pacer_new(uv_loop_t *loop, uint32_t max_connecting, uint32_t rate_per_s,
              struct pacer **out);
/* Closes the pacer's timer; done(ud) runs once it is freed.  Every slot must
 * have been given back (pacer_done) before. */
void pacer_close(struct pacer *p, void (*done)(void *), void *ud);

/* Queues slot for a turn.  When a turn is free now, slot->go runs before
 * pacer_wait returns.  A slot already waiting or holding a turn is left as it
 * is. */
void pacer_wait(struct pacer *p, struct pacer_slot *slot);
/* The attempt is over, or the user stops waiting: the turn goes to the next
 * slot in line.  Safe to call on a slot that neither waits nor holds. */
void pacer_done(struct pacer *p, struct pacer_slot *slot);

/* Slots waiting for their turn, and holding one. */
size_t pacer_waiting(const struct pacer *p);
size_t pacer_connecting(const struct pacer *p);

#endif
