/*
 * fuzz_topic.c - topic validators and matching on arbitrary bytes.
 *
 * Input layout: byte 0 chooses where the rest splits into a filter and a
 * name.  Nothing may crash on any input, and for valid inputs:
 *   - a valid name is also a valid filter, and matches itself;
 *   - a filter without wildcards matches a name exactly when they are equal;
 *   - "#" matches every valid name not starting with '$';
 *   - a name never contains a wildcard.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const char *filter, *name;
  size_t flen, nlen;
  bool fvalid, nvalid;

  if (size < 1)
    return 0;
  flen = data[0] % size;
  filter = (const char *)data + 1;
  name = filter + flen;
  nlen = size - 1 - flen;

  fvalid = topic_filter_is_valid(filter, flen);
  nvalid = topic_name_is_valid(name, nlen);
  (void)topic_name_is_valid(filter, flen);
  (void)topic_filter_is_valid(name, nlen);
  (void)topic_filter_has_wildcard(filter, flen);
  /* Matching with an invalid filter gives some answer but must not crash. */
  (void)topic_matches(filter, flen, name, nlen);
  (void)topic_matches(name, nlen, filter, flen);

  if (nvalid) {
    if (!topic_filter_is_valid(name, nlen) || topic_filter_has_wildcard(name, nlen))
      abort();
    if (!topic_matches(name, nlen, name, nlen))
      abort();
    if (topic_matches("#", 1, name, nlen) != (name[0] != '$'))
      abort();
  }
  if (fvalid && nvalid && !topic_filter_has_wildcard(filter, flen)) {
    bool equal = flen == nlen && memcmp(filter, name, flen) == 0;
    if (topic_matches(filter, flen, name, nlen) != equal)
      abort();
  }
  return 0;
}
