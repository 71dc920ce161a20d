/*
 * web_util.c - the pure helpers of web/: path patterns, parameter parsing, the
 * bearer-token comparison, static-path checks.  No libwebsockets, no
 * gateway, no I/O, no allocation, so tests/unit/web can check them alone.
 *
 * Note on URL decoding: libwebsockets already percent-decodes the request
 * path and every query fragment (and turns '+' into a space in the query)
 * before we see them, so nothing here decodes again; a second decoding pass
 * would corrupt ClientIds that contain '%'.
 */
#define WEB_UTIL_ONLY
#include "web_int.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool web_path_match(const char *pattern, const char *path, const char **arg, size_t *arg_len)
{
  const char *lbrace, *rbrace;
  size_t prefix_len, suffix_len, len;

  *arg = NULL;
  *arg_len = 0;
  if (strcmp(pattern, "*") == 0)
    return strcmp(path, "/api") != 0 && strncmp(path, "/api/", 5) != 0;
  lbrace = strchr(pattern, '{');
  if (!lbrace)
    return strcmp(pattern, path) == 0;
  rbrace = strchr(lbrace, '}');
  if (!rbrace)
    return false; /* a malformed pattern matches nothing */
  prefix_len = (size_t)(lbrace - pattern);
  suffix_len = strlen(rbrace + 1);
  len = strlen(path);
  /* The parameter is never empty, and the literal text after it is found
   * at the end of the path. */
  if (len < prefix_len + 1 + suffix_len || strncmp(path, pattern, prefix_len) != 0 ||
      memcmp(path + len - suffix_len, rbrace + 1, suffix_len) != 0)
    return false;
  *arg = path + prefix_len;
  *arg_len = len - prefix_len - suffix_len;
  return true;
}

int web_allow_header(unsigned allowed, char *buf, size_t cap)
{
  static const struct {
    unsigned bit;
    const char *name;
  } names[] = {
    {WEB_GET, "GET"},     {WEB_HEAD, "HEAD"},     {WEB_POST, "POST"},
    {WEB_PUT, "PUT"},     {WEB_PATCH, "PATCH"},   {WEB_DELETE, "DELETE"},
    {WEB_OPTIONS, "OPTIONS"},
  };
  size_t n = 0;

  if (cap == 0)
    return -1;
  buf[0] = '\0';
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (!(allowed & names[i].bit))
      continue;
    size_t need = strlen(names[i].name) + (n ? 2 : 0);
    if (n + need + 1 > cap)
      return -1;
    if (n) {
      memcpy(buf + n, ", ", 2);
      n += 2;
    }
    memcpy(buf + n, names[i].name, strlen(names[i].name));
    n += strlen(names[i].name);
    buf[n] = '\0';
  }
  return (int)n;
}

int web_parse_int64(const char *s, int64_t min, int64_t max, int64_t *out)
{
  const char *p = s;
  bool neg = false;
  uint64_t v = 0;

  if (!s || !*s)
    return -1;
  if (*p == '-') {
    neg = true;
    p++;
  }
  if (!*p)
    return -1;
  for (; *p; p++) {
    if (*p < '0' || *p > '9')
      return -1;
    unsigned d = (unsigned)(*p - '0');
    /* The magnitude of INT64_MIN is INT64_MAX + 1. */
    if (v > ((uint64_t)INT64_MAX + 1u - d) / 10u)
      return -1;
    v = v * 10u + d;
  }
  int64_t r;
  if (neg) {
    if (v > (uint64_t)INT64_MAX + 1u)
      return -1;
    r = v == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)v;
  } else {
    if (v > (uint64_t)INT64_MAX)
      return -1;
    r = (int64_t)v;
  }
  if (r < min || r > max)
    return -1;
  *out = r;
  return 0;
}

void web_query_split(char *frag, char **name, char **value)
{
  char *eq = strchr(frag, '=');
  *name = frag;
  if (eq) {
    *eq = '\0';
    *value = eq + 1;
  } else {
    *value = frag + strlen(frag);
  }
}

int web_bearer_token(const char *header, char *out, size_t cap)
{
  const char *p = header;
  size_t n;

  if (!header || cap == 0)
    return -1;
  while (*p == ' ' || *p == '\t')
    p++;
  if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
    return -1;
  p += 6;
  while (*p == ' ' || *p == '\t')
    p++;
  n = strlen(p);
  while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  if (n == 0 || n >= cap)
    return -1;
  memcpy(out, p, n);
  out[n] = '\0';
  return 0;
}

bool web_ct_equal(const char *expected, size_t expected_len, const char *supplied,
                  size_t supplied_len)
{
  /* The loop runs over the supplied bytes only, so its time reveals the
   * length the client sent (which it knows) and nothing about the secret;
   * the length difference is folded into the result rather than tested
   * first. */
  volatile unsigned char diff = 0;
  size_t i;

  if (expected_len == 0)
    return false;
  diff |= (unsigned char)(expected_len != supplied_len);
  for (i = 0; i < supplied_len; i++)
    diff |= (unsigned char)(expected[i % expected_len] ^ supplied[i]);
  return diff == 0;
}

bool web_static_path_ok(const char *path)
{
  const char *p;

  if (!path || path[0] != '/')
    return false;
  for (p = path; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c < 0x20 || c == 0x7f || c == '\\')
      return false;
  }
  /* Refuse any ".." segment (lws already folds them, but the file system
   * is not the place to find out it did not). */
  for (p = path; (p = strstr(p, "..")) != NULL; p += 2) {
    bool starts = p == path || p[-1] == '/';
    bool ends = p[2] == '\0' || p[2] == '/';
    if (starts && ends)
      return false;
  }
  return true;
}

const char *web_content_type(const char *path)
{
  static const struct {
    const char *ext;
    const char *type;
  } types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".json", "application/json"},
    {".txt", "text/plain; charset=utf-8"},
  };
  const char *dot = strrchr(path, '.');
  const char *slash = strrchr(path, '/');

  if (dot && (!slash || dot > slash)) {
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
      if (strcasecmp(dot, types[i].ext) == 0)
        return types[i].type;
  }
  return "application/octet-stream";
}

const char *web_csv_next(const char *body, size_t len, size_t *pos, char *buf, size_t cap)
{
  while (*pos < len) {
    size_t start = *pos, end;
    while (*pos < len && body[*pos] != '\n')
      (*pos)++;
    end = *pos;
    if (*pos < len)
      (*pos)++; /* the '\n' */
    while (start < end && (body[start] == ' ' || body[start] == '\t'))
      start++;
    while (end > start && (body[end - 1] == '\r' || body[end - 1] == ' ' ||
                           body[end - 1] == '\t' || body[end - 1] == ','))
      end--;
    if (end - start >= 2 && body[start] == '"' && body[end - 1] == '"') {
      start++;
      end--;
    }
    if (end == start)
      continue;
    if (cap == 0)
      return NULL;
    if (end - start >= cap || memchr(body + start, '\0', end - start)) {
      buf[0] = '\0';
    } else {
      memcpy(buf, body + start, end - start);
      buf[end - start] = '\0';
    }
    return buf;
  }
  return NULL;
}
