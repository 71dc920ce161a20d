/*
 * idset.h - a small set of MQTT packet ids.  Few ids are pending at once per
 * connection (SUBSCRIBEs in flight, incoming QoS 1/2 not yet acknowledged),
 * so a growable array with linear search beats a hash here.  Bounded by the
 * id space (65,535 ids).
 */
#ifndef FLEETGW_IDSET_H
#define FLEETGW_IDSET_H

#include <stdbool.h>
#include <stdint.h>

struct idset {
  uint16_t *v;
  uint32_t n, cap;
};

bool idset_has(const struct idset *s, uint16_t id);
/* Adds id (no-op when present).  Returns 0, or -1 when out of memory. */
int idset_add(struct idset *s, uint16_t id);
/* Removes id; false when it was not there. */
bool idset_remove(struct idset *s, uint16_t id);
/* Empties the set and frees its storage. */
void idset_clear(struct idset *s);

#endif
