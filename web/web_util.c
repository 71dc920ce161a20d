/*
 * web_util.c - the pure helpers of web/: path patterns, parameter parsing, the
 * bearer-token comparison, static-path checks, ClientId lists and hex keys.
 * No libwebsockets, no gateway, no I/O, no allocation, so tests/unit/web can
 * check them alone.
 *
 * Note on URL decoding: libwebsockets already percent-decodes the request
 * path and every query fragment (and turns '+' into a space in the query)
 * before we see them, so nothing here decodes again; a second decoding pass
 * would corrupt ClientIds that contain '%'.
 */
#define WEB_UTIL_ONLY
#include "web_int.h"

#include <ctype.h>
#include <netinet/in.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/crypto.h>

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

/* ---- ClientId lists and keys (POST /api/v1/psks) -------------------------- */

/* Why one trimmed line is no ClientId, NULL when it is one. */
static const char *csv_id_problem(const char *id, size_t len)
{
  if (len > 255)
    return "longer than 255 octets";
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)id[i];
    if (ch <= 0x20 || ch >= 0x7F)
      return "a space, a control character or a byte that is not ASCII";
    if (ch == '/')
      return "a '/', which no ClientId has";
    if (ch == ',' || ch == '"')
      return "a ',' or a '\"', which the CSV of the answer cannot carry";
  }
  return NULL;
}

enum web_ids_err web_csv_ids(char *body, size_t len, const char **ids, size_t max, size_t *n,
                             size_t *line, const char **why)
{
  static const char bom[] = "\xEF\xBB\xBF";
  size_t pos = 0, lineno = 0;
  bool first = true;

  *n = 0;
  *line = 0;
  *why = NULL;
  if (len >= 3 && memcmp(body, bom, 3) == 0)
    pos = 3;
  while (pos < len) {
    size_t start = pos, end;
    const char *bad;
    while (pos < len && body[pos] != '\n')
      pos++;
    end = pos;
    if (pos < len)
      body[pos++] = '\0'; /* the '\n' */
    lineno++;
    if (end > start && body[end - 1] == '\r')
      end--;
    while (start < end && (body[start] == ' ' || body[start] == '\t'))
      start++;
    while (end > start && (body[end - 1] == ' ' || body[end - 1] == '\t'))
      end--;
    if (end == start)
      continue;
    if (first) {
      first = false;
      if (end - start == 9 && memcmp(body + start, "client_id", 9) == 0)
        continue; /* the header */
    }
    if ((bad = csv_id_problem(body + start, end - start)) != NULL) {
      *line = lineno;
      *why = bad;
      return WEB_IDS_BAD;
    }
    if (*n == max) {
      *line = lineno;
      *why = "too many ClientIds";
      return WEB_IDS_TOO_MANY;
    }
    body[end] = '\0';
    ids[(*n)++] = body + start;
  }
  if (*n == 0) {
    *why = "no ClientId";
    return WEB_IDS_EMPTY;
  }
  return WEB_IDS_OK;
}

int web_hex_encode(const uint8_t *key, size_t len, char *out, size_t cap)
{
  size_t n = 0;
  if (cap < 2 * len + 1 || len > LONG_MAX ||
      OPENSSL_buf2hexstr_ex(out, cap, &n, key, (long)len, '\0') != 1)
    return -1;
  /* OpenSSL writes upper case. */
  for (size_t i = 0; i < 2 * len; i++)
    out[i] = (char)tolower((unsigned char)out[i]);
  out[2 * len] = '\0';
  return 0;
}

static int hex_digit(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  c = (char)(c | 0x20);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int web_hex_decode(const char *hex, uint8_t *out, size_t cap)
{
  size_t len = strlen(hex);
  if (len % 2 || len / 2 > cap || len / 2 > INT_MAX)
    return -1;
  for (size_t i = 0; i < len / 2; i++) {
    int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return (int)(len / 2);
}

/* ---- log text ------------------------------------------------------------- */

/* The length of a secret's lead-in at s ("token=", ...), 0 if none. */
static size_t secret_lead(const char *s, size_t len)
{
  static const char *const leads[] = {"token=", "token\":\"", "token\": \"", "bearer "};

  for (size_t i = 0; i < sizeof leads / sizeof leads[0]; i++) {
    size_t n = strlen(leads[i]);
    if (len >= n && strncasecmp(s, leads[i], n) == 0)
      return n;
  }
  return 0;
}

static bool secret_end(unsigned char c)
{
  return c <= 0x20 || c >= 0x7f || c == '&' || c == '"' || c == '\'' || c == ',' || c == ';';
}

const char *web_log_text(const char *s, size_t len, char *out, size_t cap)
{
  static const char redacted[] = "<redacted>";
  size_t o = 0, i = 0;

  if (cap < 4) {
    if (cap)
      out[0] = '\0';
    return out;
  }
  while (i < len) {
    char tmp[sizeof redacted + 16];
    size_t k, lead = secret_lead(s + i, len - i);

    if (lead) {
      memcpy(tmp, s + i, lead);
      memcpy(tmp + lead, redacted, sizeof redacted - 1);
      k = lead + sizeof redacted - 1;
      for (i += lead; i < len && !secret_end((unsigned char)s[i]); i++)
        ;
    } else {
      unsigned char c = (unsigned char)s[i++];
      if (c >= 0x20 && c < 0x7f && c != '\\') {
        tmp[0] = (char)c;
        k = 1;
      } else {
        k = (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", c);
      }
    }
    /* Three bytes and the NUL stay free for "...". */
    if (o + k > cap - 4) {
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    memcpy(out + o, tmp, k);
    o += k;
  }
  out[o] = '\0';
  return out;
}

/* ---- strict JSON (request bodies) ----------------------------------------- */

struct jscan {
  const unsigned char *p;
  size_t len;
  size_t i;
  enum web_json_err err;
  size_t err_at;
};

static bool jfail(struct jscan *s, enum web_json_err e, size_t at)
{
  if (s->err == WEB_JSON_OK) {
    s->err = e;
    s->err_at = at;
  }
  return false;
}

static void jspace(struct jscan *s)
{
  while (s->i < s->len && (s->p[s->i] == ' ' || s->p[s->i] == '\t' || s->p[s->i] == '\n' ||
                           s->p[s->i] == '\r'))
    s->i++;
}

/* One UTF-8 sequence whose first byte is >= 0x80 (RFC 3629 §4): no
 * overlong forms, no surrogates, nothing above U+10FFFF.  Its length, or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp)
{
  size_t need;
  uint32_t v, min;

  if (p[0] >= 0xc2 && p[0] <= 0xdf) {
    need = 2, v = p[0] & 0x1fu, min = 0x80;
  } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    need = 3, v = p[0] & 0x0fu, min = 0x800;
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    need = 4, v = p[0] & 0x07u, min = 0x10000;
  } else {
    return 0; /* a continuation byte, 0xc0/0xc1, or 0xf5.. */
  }
  if (n < need)
    return 0;
  for (size_t k = 1; k < need; k++) {
    if ((p[k] & 0xc0u) != 0x80u)
      return 0;
    v = (v << 6) | (p[k] & 0x3fu);
  }
  if (v < min || v > 0x10ffffu || (v >= 0xd800u && v <= 0xdfffu))
    return 0;
  *cp = v;
  return need;
}

static int hex4(const unsigned char *p, size_t n, uint32_t *out)
{
  uint32_t v = 0;

  if (n < 4)
    return -1;
  for (int k = 0; k < 4; k++) {
    unsigned char c = p[k];
    unsigned d;
    if (c >= '0' && c <= '9')
      d = (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      d = (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      d = (unsigned)(c - 'A' + 10);
    else
      return -1;
    v = v << 4 | d;
  }
  *out = v;
  return 0;
}

/* The next code point of the string whose content (after the opening
 * quote) continues at s->i: 1 with *cp, 0 at the closing quote (consumed),
 * -1 on an error (s->err set).  Validation and the key comparison both read
 * strings through it, so "a" and "\u0061" are the same key. */
static int str_next(struct jscan *s, uint32_t *cp)
{
  size_t at = s->i;
  unsigned char c;

  if (at >= s->len)
    return jfail(s, WEB_JSON_SYNTAX, at), -1; /* unterminated */
  c = s->p[at];
  if (c == '"') {
    s->i++;
    return 0;
  }
  if (c < 0x20)
    return jfail(s, WEB_JSON_SYNTAX, at), -1; /* raw control characters must be escaped */
  if (c >= 0x80) {
    size_t n = utf8_seq(s->p + at, s->len - at, cp);
    if (!n)
      return jfail(s, WEB_JSON_UTF8, at), -1;
    s->i += n;
    return 1;
  }
  if (c != '\\') {
    *cp = c;
    s->i++;
    return 1;
  }
  if (at + 1 >= s->len)
    return jfail(s, WEB_JSON_SYNTAX, at), -1;
  switch (s->p[at + 1]) {
  case '"': *cp = '"'; break;
  case '\\': *cp = '\\'; break;
  case '/': *cp = '/'; break;
  case 'b': *cp = '\b'; break;
  case 'f': *cp = '\f'; break;
  case 'n': *cp = '\n'; break;
  case 'r': *cp = '\r'; break;
  case 't': *cp = '\t'; break;
  case 'u': {
    uint32_t hi, lo;
    if (hex4(s->p + at + 2, s->len - at - 2, &hi) < 0)
      return jfail(s, WEB_JSON_SYNTAX, at), -1;
    if (hi == 0)
      return jfail(s, WEB_JSON_NUL, at), -1;
    if (hi >= 0xdc00u && hi <= 0xdfffu)
      return jfail(s, WEB_JSON_UTF8, at), -1; /* a low surrogate first */
    if (hi >= 0xd800u && hi <= 0xdbffu) {
      /* Must be followed by "\uDC00".."\uDFFF": together one code point. */
      if (at + 12 > s->len || s->p[at + 6] != '\\' || s->p[at + 7] != 'u' ||
          hex4(s->p + at + 8, s->len - at - 8, &lo) < 0 || lo < 0xdc00u || lo > 0xdfffu)
        return jfail(s, WEB_JSON_UTF8, at), -1;
      *cp = 0x10000u + ((hi - 0xd800u) << 10) + (lo - 0xdc00u);
      s->i += 12;
      return 1;
    }
    *cp = hi;
    s->i += 6;
    return 1;
  }
  default:
    return jfail(s, WEB_JSON_SYNTAX, at), -1;
  }
  s->i += 2;
  return 1;
}

/* A whole string; s->i is at its opening quote. */
static bool jstring(struct jscan *s)
{
  uint32_t cp;
  int r;

  s->i++;
  while ((r = str_next(s, &cp)) == 1)
    ;
  return r == 0;
}

/* Two keys already checked (offsets of their opening quotes): equal once
 * decoded? */
static bool key_equal(const struct jscan *s, size_t a, size_t b)
{
  struct jscan x = {s->p, s->len, a + 1, WEB_JSON_OK, 0};
  struct jscan y = {s->p, s->len, b + 1, WEB_JSON_OK, 0};

  for (;;) {
    uint32_t ca = 0, cb = 0;
    int ra = str_next(&x, &ca), rb = str_next(&y, &cb);
    if (ra != rb || (ra == 1 && ca != cb))
      return false;
    if (ra != 1)
      return true; /* both ended (an error cannot happen: both were checked) */
  }
}

/* RFC 8259 §6: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool jnumber(struct jscan *s)
{
  size_t at = s->i;
  const unsigned char *p = s->p;

#define DIGIT(k) ((k) < s->len && p[k] >= '0' && p[k] <= '9')
  if (s->i < s->len && p[s->i] == '-')
    s->i++;
  if (s->i < s->len && p[s->i] == '0') {
    s->i++;
  } else if (DIGIT(s->i)) {
    while (DIGIT(s->i))
      s->i++;
  } else {
    return jfail(s, WEB_JSON_SYNTAX, at);
  }
  if (s->i < s->len && p[s->i] == '.') {
    s->i++;
    if (!DIGIT(s->i))
      return jfail(s, WEB_JSON_SYNTAX, at);
    while (DIGIT(s->i))
      s->i++;
  }
  if (s->i < s->len && (p[s->i] == 'e' || p[s->i] == 'E')) {
    s->i++;
    if (s->i < s->len && (p[s->i] == '+' || p[s->i] == '-'))
      s->i++;
    if (!DIGIT(s->i))
      return jfail(s, WEB_JSON_SYNTAX, at);
    while (DIGIT(s->i))
      s->i++;
  }
#undef DIGIT
  return true;
}

static bool jliteral(struct jscan *s, const char *word)
{
  size_t n = strlen(word);

  if (s->len - s->i < n || memcmp(s->p + s->i, word, n) != 0)
    return jfail(s, WEB_JSON_SYNTAX, s->i);
  s->i += n;
  return true;
}

static bool jvalue(struct jscan *s, unsigned depth);

/* Skips blanks; consumes c and returns true if it comes next. */
static bool jtake(struct jscan *s, unsigned char c)
{
  jspace(s);
  if (s->i < s->len && s->p[s->i] == c) {
    s->i++;
    return true;
  }
  return false;
}

/* An object or an array; s->i is at its '{' or '['; depth counts it.  An
 * object's member keys' offsets are kept (on the stack: the recursion is
 * bounded by WEB_JSON_MAX_DEPTH) so that each new key is compared with the
 * earlier ones. */
static bool jcontainer(struct jscan *s, unsigned depth)
{
  bool object = s->p[s->i] == '{';
  unsigned char close = object ? '}' : ']';
  size_t keys[WEB_JSON_MAX_MEMBERS];
  size_t n = 0;

  s->i++;
  if (jtake(s, close))
    return true;
  do {
    if (object) {
      size_t key_at;

      jspace(s);
      if (s->i >= s->len || s->p[s->i] != '"')
        return jfail(s, WEB_JSON_SYNTAX, s->i);
      if (n == WEB_JSON_MAX_MEMBERS)
        return jfail(s, WEB_JSON_MEMBERS, s->i);
      key_at = s->i;
      if (!jstring(s))
        return false;
      for (size_t k = 0; k < n; k++)
        if (key_equal(s, keys[k], key_at))
          return jfail(s, WEB_JSON_DUP_KEY, key_at);
      keys[n++] = key_at;
      if (!jtake(s, ':'))
        return jfail(s, WEB_JSON_SYNTAX, s->i);
    }
    if (!jvalue(s, depth))
      return false;
  } while (jtake(s, ','));
  if (jtake(s, close))
    return true;
  return jfail(s, WEB_JSON_SYNTAX, s->i);
}

/* One value at s->i (after blanks); depth is that of the enclosing
 * container (0 at the top). */
static bool jvalue(struct jscan *s, unsigned depth)
{
  jspace(s);
  if (s->i >= s->len)
    return jfail(s, WEB_JSON_SYNTAX, s->i);
  switch (s->p[s->i]) {
  case '{':
  case '[':
    if (depth + 1 > WEB_JSON_MAX_DEPTH)
      return jfail(s, WEB_JSON_DEPTH, s->i);
    return jcontainer(s, depth + 1);
  case '"':
    return jstring(s);
  case 't':
    return jliteral(s, "true");
  case 'f':
    return jliteral(s, "false");
  case 'n':
    return jliteral(s, "null");
  default:
    return jnumber(s);
  }
}

enum web_json_err web_json_check_object(const char *buf, size_t len, size_t *at)
{
  struct jscan s = {(const unsigned char *)buf, len, 0, WEB_JSON_OK, 0};
  size_t start;

  const char *nul;

  if (!buf)
    s.len = 0;
  /* A NUL byte anywhere is refused first: C string handling downstream
   * would stop at it and see a different document. */
  nul = s.len ? memchr(buf, '\0', s.len) : NULL;
  if (nul) {
    jfail(&s, WEB_JSON_NUL, (size_t)(nul - buf));
  } else {
    jspace(&s);
    start = s.i;
    if (jvalue(&s, 0)) {
      jspace(&s);
      if (s.i < s.len)
        jfail(&s, WEB_JSON_TRAILING, s.i);
      else if (s.p[start] != '{')
        jfail(&s, WEB_JSON_NOT_OBJECT, start);
    }
  }
  if (at)
    *at = s.err == WEB_JSON_OK ? 0 : s.err_at;
  return s.err;
}

const char *web_json_strerror(enum web_json_err e)
{
  switch (e) {
  case WEB_JSON_OK: return "valid";
  case WEB_JSON_SYNTAX: return "malformed JSON";
  case WEB_JSON_UTF8: return "invalid UTF-8 or an unpaired surrogate escape";
  case WEB_JSON_NUL: return "a NUL character (\\u0000)";
  case WEB_JSON_DUP_KEY: return "a duplicate key in an object";
  case WEB_JSON_DEPTH: return "nested deeper than " WEB_STR(WEB_JSON_MAX_DEPTH) " levels";
  case WEB_JSON_MEMBERS:
    return "more than " WEB_STR(WEB_JSON_MAX_MEMBERS) " members in one object";
  case WEB_JSON_TRAILING: return "data after the JSON value";
  case WEB_JSON_NOT_OBJECT: return "the top level is not a JSON object";
  }
  return "malformed JSON";
}

/* ---- connection bounds ---------------------------------------------------- */

/* The slot key of a peer address. */
static void conn_key(const struct sockaddr *sa, unsigned char key[9])
{
  static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

  memset(key, 0, 9); /* tag 0: not IP */
  if (!sa)
    return;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    key[0] = 4;
    memcpy(key + 1, &in->sin_addr, 4);
    return;
  }
  if (sa->sa_family == AF_INET6) {
    const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    if (memcmp(a, v4mapped, sizeof v4mapped) == 0) {
      key[0] = 4;
      memcpy(key + 1, a + 12, 4);
    } else {
      key[0] = 6;
      memcpy(key + 1, a, 8); /* the /64 */
    }
  }
}

/* The slot holding key, or -1; *free_slot gets a free one (or -1). */
static int conn_find(const struct web_conn_table *t, const unsigned char key[9], int *free_slot)
{
  *free_slot = -1;
  for (int i = 0; i < WEB_CONN_MAX; i++) {
    if (t->slots[i].count == 0) {
      if (*free_slot < 0)
        *free_slot = i;
    } else if (memcmp(t->slots[i].key, key, sizeof t->slots[i].key) == 0) {
      return i;
    }
  }
  return -1;
}

/* The decision and the slot it would use. */
static enum web_admit conn_decide(const struct web_conn_table *t, const struct sockaddr *sa,
                                  unsigned char key[9], int *slot)
{
  int free_slot;

  *slot = -1;
  conn_key(sa, key);
  if (t->total >= WEB_CONN_MAX)
    return WEB_ADMIT_FULL;
  *slot = conn_find(t, key, &free_slot);
  if (*slot >= 0)
    return t->slots[*slot].count >= WEB_CONN_PER_IP ? WEB_ADMIT_PER_IP : WEB_ADMIT_OK;
  /* total < WEB_CONN_MAX, so some slot is free. */
  *slot = free_slot;
  return free_slot >= 0 ? WEB_ADMIT_OK : WEB_ADMIT_FULL;
}

enum web_admit web_conn_check(const struct web_conn_table *t, const struct sockaddr *sa)
{
  unsigned char key[9];
  int slot;

  return conn_decide(t, sa, key, &slot);
}

enum web_admit web_conn_admit(struct web_conn_table *t, const struct sockaddr *sa, int *slot)
{
  unsigned char key[9];
  enum web_admit a = conn_decide(t, sa, key, slot);

  if (a != WEB_ADMIT_OK) {
    *slot = -1;
    return a;
  }
  memcpy(t->slots[*slot].key, key, sizeof key);
  t->slots[*slot].count++;
  t->total++;
  return WEB_ADMIT_OK;
}

void web_conn_release(struct web_conn_table *t, int slot)
{
  if (slot < 0 || slot >= WEB_CONN_MAX || t->slots[slot].count == 0)
    return;
  t->slots[slot].count--;
  if (t->total)
    t->total--;
}

/* ---- the message history ------------------------------------------------- */

static uint32_t delta32(uint64_t now, uint64_t before)
{
  uint64_t d = now >= before ? now - before : now;
  return d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

void web_hist_add(struct web_hist *h, int64_t at, uint64_t in, uint64_t out)
{
  if (h->primed) {
    struct web_hist_sample *s = &h->s[h->head];
    s->at = at;
    s->in = delta32(in, h->last_in);
    s->out = delta32(out, h->last_out);
    h->head = (h->head + 1) % WEB_HIST_LEN;
    if (h->n < WEB_HIST_LEN)
      h->n++;
  }
  h->primed = true;
  h->last_in = in;
  h->last_out = out;
}

const struct web_hist_sample *web_hist_get(const struct web_hist *h, uint32_t i)
{
  if (i >= h->n)
    return NULL;
  return &h->s[(h->head + WEB_HIST_LEN - h->n + i) % WEB_HIST_LEN];
}
