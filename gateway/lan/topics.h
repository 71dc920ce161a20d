/*
 * topics.h - one leaf's topic-id registry (MQTT-SN §6.5, §7.3: ids are per
 * client, never a shared pool).
 *
 * Normal topic ids are assigned by the gateway, 1..0xFFFE (0x0000 and 0xFFFF
 * are reserved, §5.3.11), for a REGISTER from the leaf, for a SUBSCRIBE to a
 * topic name without wildcards, and for a topic the broker delivers that the
 * leaf does not know yet (the gateway then REGISTERs it to the leaf first).
 *
 * A leaf talks to a handful of topics, so the registry is a small array
 * searched linearly (faster than hashing at that size); it is bounded by
 * TOPICS_MAX so that a leaf cannot make the gateway grow without limit.
 */
#ifndef FLEETGW_TOPICS_H
#define FLEETGW_TOPICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOPICS_MAX 1024

struct topic_entry {
  uint16_t id;
  bool known_by_leaf; /* false until the leaf acknowledged our REGISTER */
  uint16_t len;
  char *name;         /* NUL-terminated copy */
};

struct topics {
  struct topic_entry *v;
  uint32_t n, cap;
  uint16_t next_id;
};

void topics_init(struct topics *t);
void topics_free(struct topics *t);
/* Forget every id (clean session). */
void topics_clear(struct topics *t);

/* The entry for a name, or NULL. */
struct topic_entry *topics_by_name(struct topics *t, const char *name, size_t len);
/* The entry for an id, or NULL. */
struct topic_entry *topics_by_id(struct topics *t, uint16_t id);
/* Find or add a name; returns the entry or NULL (no memory, or TOPICS_MAX).
 * A new entry has known_by_leaf == false. */
struct topic_entry *topics_add(struct topics *t, const char *name, size_t len);
/* Puts name back under the id it had (a session restored from the
 * registry); the next new id stays after it.  NULL when the id or the name
 * is taken, or out of memory. */
struct topic_entry *topics_put(struct topics *t, uint16_t id, const char *name, size_t len,
                               bool known_by_leaf);

struct gw_config;
/* The configured predefined topics (lan.predefined_topics): the name of id,
 * or NULL; the id of a name, or -1. */
const char *topics_predefined_name(const struct gw_config *cfg, uint16_t id);
int topics_predefined_id(const struct gw_config *cfg, const char *topic, size_t len);

#endif
