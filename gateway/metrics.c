#include "metrics.h"

#include <inttypes.h>
#include <stdio.h>

int metrics_to_json(const struct metrics *m, char *buf, size_t cap)
{
  size_t n = 0;
  int k;
  const char *sep = "";

  k = snprintf(buf, cap, "{");
  if (k < 0 || (size_t)k >= cap)
    return -1;
  n = (size_t)k;
#define METRICS_JSON(name, help)                                                    \
  k = snprintf(buf + n, cap - n, "%s\"%s\":%" PRIu64, sep, #name, m->name);         \
  if (k < 0 || (size_t)k >= cap - n)                                                \
    return -1;                                                                      \
  n += (size_t)k;                                                                   \
  sep = ",";
  METRICS_MAP(METRICS_JSON, METRICS_JSON)
#undef METRICS_JSON
  if (n + 2 > cap)
    return -1;
  buf[n++] = '}';
  buf[n] = '\0';
  return (int)n;
}
