/*
 * drain.h - counts the asynchronous closes still in flight (libuv handles,
 * upstream sessions) so that a graceful stop knows when everything is gone.
 *
 * Whoever starts an asynchronous close calls drain_hold(); its close callback
 * calls drain_release().  drain_wait() arms the stop: done(ud) runs once, on
 * the release that brings the count to zero (or at once if it already is).
 */
#ifndef FLEETGW_DRAIN_H
#define FLEETGW_DRAIN_H

#include <stdbool.h>

struct drain {
  unsigned pending;
  bool waiting;
  void (*done)(void *);
  void *ud;
};

static inline void drain_hold(struct drain *d) { d->pending++; }
void drain_release(struct drain *d);
void drain_wait(struct drain *d, void (*done)(void *), void *ud);

#endif
