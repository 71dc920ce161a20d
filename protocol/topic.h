/*
 * topic.h - MQTT topic names and filters (MQTT 3.1.1 §4.7).  Pure.
 */
#ifndef FLEETGW_TOPIC_H
#define FLEETGW_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

/* A topic NAME for PUBLISH: 1..65535 bytes, valid UTF-8, no U+0000, no '+'
 * or '#'. */
bool topic_name_is_valid(const char *s, size_t len);

/* A topic FILTER for SUBSCRIBE: as a name, but '+' and '#' allowed when each
 * occupies a whole level and '#' is last. */
bool topic_filter_is_valid(const char *s, size_t len);

/* True when the filter contains '+' or '#'. */
bool topic_filter_has_wildcard(const char *s, size_t len);

/* MQTT matching of a name against a valid filter, including the rule that a
 * filter starting with a wildcard does not match a name starting with '$'
 * (MQTT-4.7.2-1). */
bool topic_matches(const char *filter, size_t flen, const char *name, size_t nlen);

#endif
