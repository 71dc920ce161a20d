#include "drain.h"

#include <stddef.h>

static void maybe_done(struct drain *d)
{
  if (d->waiting && d->pending == 0 && d->done) {
    void (*done)(void *) = d->done;
    d->done = NULL;
    done(d->ud);
  }
}

void drain_release(struct drain *d)
{
  if (d->pending > 0)
    d->pending--;
  maybe_done(d);
}

void drain_wait(struct drain *d, void (*done)(void *), void *ud)
{
  d->waiting = true;
  d->done = done;
  d->ud = ud;
  maybe_done(d);
}
