/*
 * topic.c - MQTT 3.1.1 topic names and filters (§4.7, §1.5.3).
 *
 * Everything here works on (pointer, length) pairs, never on NUL-terminated
 * strings, because U+0000 is itself a thing we must detect and reject.
 */
#include "topic.h"

#include <stdint.h>
#include <string.h>

#define TOPIC_MAX_LEN 65535u

/*
 * Returns true when s[0..len) is well-formed UTF-8 (RFC 3629) without U+0000.
 * Overlong forms, UTF-16 surrogates (U+D800..U+DFFF) and code points above
 * U+10FFFF are ill-formed and rejected [MQTT-1.5.3-1].  U+0000 is forbidden by
 * [MQTT-1.5.3-2].  Control characters and non-characters are only a "SHOULD
 * NOT" in the spec, so they are accepted.
 */
static bool utf8_is_valid(const unsigned char *s, size_t len)
{
  size_t i = 0;

  while (i < len) {
    unsigned c = s[i];
    size_t n;
    uint32_t cp, min;

    if (c == 0x00)
      return false;
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
      cp = c & 0x1F;
      min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      cp = c & 0x0F;
      min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      cp = c & 0x07;
      min = 0x10000;
    } else {
      /* 0x80..0xBF are stray continuation bytes; 0xC0, 0xC1 can only start
       * overlong forms; 0xF5..0xFF would encode beyond U+10FFFF. */
      return false;
    }
    if (len - i - 1 < n)
      return false;
    for (size_t k = 1; k <= n; k++) {
      unsigned cc = s[i + k];
      if ((cc & 0xC0) != 0x80)
        return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

bool topic_name_is_valid(const char *s, size_t len)
{
  if (s == NULL || len == 0 || len > TOPIC_MAX_LEN)
    return false;
  if (memchr(s, '+', len) != NULL || memchr(s, '#', len) != NULL)
    return false;
  return utf8_is_valid((const unsigned char *)s, len);
}

bool topic_filter_is_valid(const char *s, size_t len)
{
  if (s == NULL || len == 0 || len > TOPIC_MAX_LEN)
    return false;
  if (!utf8_is_valid((const unsigned char *)s, len))
    return false;
  /* A wildcard must be the whole level: preceded by the start or '/', and
   * followed by the end or '/'.  '#' must in addition be the last character
   * [MQTT-4.7.1-2, MQTT-4.7.1-3]. */
  for (size_t i = 0; i < len; i++) {
    bool starts_level = i == 0 || s[i - 1] == '/';
    bool ends_level = i + 1 == len || s[i + 1] == '/';
    if (s[i] == '+' && !(starts_level && ends_level))
      return false;
    if (s[i] == '#' && !(starts_level && i + 1 == len))
      return false;
  }
  return true;
}

bool topic_filter_has_wildcard(const char *s, size_t len)
{
  if (s == NULL)
    return false;
  return memchr(s, '+', len) != NULL || memchr(s, '#', len) != NULL;
}

/* Returns the index of the next '/' at or after from, or len if none. */
static size_t level_end(const char *s, size_t len, size_t from)
{
  const char *slash = from < len ? memchr(s + from, '/', len - from) : NULL;
  return slash ? (size_t)(slash - s) : len;
}

/*
 * Walks filter and name one level at a time.  The filter is assumed valid
 * (topic_filter_is_valid); an invalid one gives some answer but never reads
 * out of bounds.
 */
bool topic_matches(const char *filter, size_t flen, const char *name, size_t nlen)
{
  size_t fp = 0, np = 0;

  if (filter == NULL || name == NULL || flen == 0 || nlen == 0)
    return false;
  /* Topics starting with '$' are server-specific and must not be matched by
   * a filter that starts with a wildcard [MQTT-4.7.2-1]. */
  if (name[0] == '$' && (filter[0] == '+' || filter[0] == '#'))
    return false;

  for (;;) {
    size_t fe = level_end(filter, flen, fp);
    size_t ne = level_end(name, nlen, np);
    bool f_last, n_last;

    /* '#' matches this level and everything below it. */
    if (fe - fp == 1 && filter[fp] == '#')
      return true;
    if (!(fe - fp == 1 && filter[fp] == '+')) {
      if (fe - fp != ne - np || memcmp(filter + fp, name + np, fe - fp) != 0)
        return false;
    }
    f_last = fe == flen;
    n_last = ne == nlen;
    if (f_last && n_last)
      return true;
    if (f_last)
      return false;
    if (n_last) {
      /* The name has run out of levels.  Only a trailing "/#" still matches,
       * because '#' also covers the parent level: "a/#" matches "a"
       * (§4.7.1.2). */
      return flen - fe == 2 && filter[fe + 1] == '#';
    }
    fp = fe + 1;
    np = ne + 1;
  }
}
