/*
 * test_web_json.c - the strict JSON every request body passes
 * (web_json_check_object in web_util.c, web_json_parse_object in
 * web_http.c): each refusal with its error and offset, the bodies the API
 * really takes, and that what passes is what cJSON then reads.
 */
#include "web_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_api_fakes.h"
#include "test.h"

/* Checks a document given with its length (so NUL bytes can be inside). */
static enum web_json_err check_n(const char *doc, size_t len, size_t *at)
{
  /* A copy of exactly len bytes, so the sanitizer sees any read past it. */
  char *copy = malloc(len ? len : 1);
  size_t where = 12345;
  enum web_json_err e;

  ASSERT_TRUE(copy != NULL);
  if (!copy)
    return WEB_JSON_SYNTAX;
  memcpy(copy, doc, len);
  e = web_json_check_object(copy, len, &where);
  free(copy);
  if (e == WEB_JSON_OK)
    ASSERT_EQ(where, 0);
  if (at)
    *at = where;
  return e;
}

static enum web_json_err check(const char *doc, size_t *at)
{
  return check_n(doc, strlen(doc), at);
}

#define OK(doc) ASSERT_EQ(check(doc, NULL), WEB_JSON_OK)
#define BAD(doc, err) ASSERT_EQ(check(doc, NULL), err)
#define BAD_AT(doc, err, off)                                                                  \
  do {                                                                                         \
    size_t at_;                                                                                \
    ASSERT_EQ(check(doc, &at_), err);                                                          \
    ASSERT_EQ(at_, off);                                                                       \
  } while (0)

static void test_valid(void)
{
  /* What the API's clients send. */
  OK("{\"entry\": \"leaf-7\"}");
  OK("{\"entry\":\"line-*\"}");
  OK("{\"token\": \"abcdefgh12345678\"}");
  OK("{}");
  OK(" \t\r\n{ } \r\n\t ");
  OK("{\"a\": [1, -2, 3.5, 0, -0, 1e3, 1E-3, 2.5e+10], \"b\": {\"c\": null}, \"d\": true, "
     "\"e\": false, \"f\": \"\"}");
  /* Escapes, UTF-8 (2, 3 and 4 bytes) and a surrogate pair. */
  OK("{\"s\": \"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0041 \\u00e9 \\uD83D\\uDE00\"}");
  OK("{\"s\": \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}");
  OK("{\"\\u0001\": 1}");
  /* Keys differing only in case, or one a prefix of the other, are two keys. */
  OK("{\"a\": 1, \"A\": 2, \"ab\": 3, \"\": 4}");
  /* The same key in two different objects is fine. */
  OK("{\"a\": {\"a\": 1}, \"b\": {\"a\": 2}}");
  /* Nesting up to the bound (the top object is level 1). */
  OK("{\"a\":[[[[[[{}]]]]]]}");
}

static void test_duplicate_keys(void)
{
  BAD_AT("{\"entry\": \"a\", \"entry\": \"b\"}", WEB_JSON_DUP_KEY, 15);
  /* Compared after decoding the escapes. */
  BAD("{\"entry\": 1, \"\\u0065ntry\": 2}", WEB_JSON_DUP_KEY);
  BAD("{\"\\u00e9\": 1, \"\xc3\xa9\": 2}", WEB_JSON_DUP_KEY);
  BAD("{\"\": 1, \"\": 2}", WEB_JSON_DUP_KEY);
  BAD("{\"a\": 1, \"b\": 2, \"c\": 3, \"a\": 4}", WEB_JSON_DUP_KEY);
  /* Inside a nested object too. */
  BAD("{\"x\": [{\"k\": 1, \"k\": 1}]}", WEB_JSON_DUP_KEY);
}

static void test_nul(void)
{
  /* "\u0000" in a value or a key: a C string would end there. */
  BAD_AT("{\"entry\": \"ab\\u0000cd\"}", WEB_JSON_NUL, 13);
  BAD("{\"a\\u0000\": 1}", WEB_JSON_NUL);
  /* A raw NUL byte anywhere, even after a complete object. */
  static const char raw[] = "{\"entry\": \"a\0b\"}";
  size_t at;
  ASSERT_EQ(check_n(raw, sizeof raw - 1, &at), WEB_JSON_NUL);
  ASSERT_EQ(at, 12);
  static const char after[] = "{}\0";
  ASSERT_EQ(check_n(after, sizeof after - 1, NULL), WEB_JSON_NUL);
  /* "\u0100" is not NUL. */
  OK("{\"a\": \"\\u0100\"}");
}

static void test_trailing(void)
{
  BAD_AT("{\"entry\": \"a\"} x", WEB_JSON_TRAILING, 15);
  BAD("{}{}", WEB_JSON_TRAILING);
  BAD("{} {\"entry\": \"b\"}", WEB_JSON_TRAILING);
  BAD("{},", WEB_JSON_TRAILING);
  BAD("{}}", WEB_JSON_TRAILING);
  /* Only JSON's four blanks count as blanks. */
  BAD("{}\v", WEB_JSON_TRAILING);
  BAD("{}\f", WEB_JSON_TRAILING);
  BAD("{}\xc2\xa0", WEB_JSON_TRAILING);
}

static void test_depth(void)
{
  char doc[128];

  /* 8 levels pass (test_valid), 9 do not, wherever the 9th opens. */
  BAD_AT("{\"a\":[[[[[[[{}]]]]]]]}", WEB_JSON_DEPTH, 12);
  BAD("{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{}}}}}}}}}", WEB_JSON_DEPTH);
  /* Far deeper than the bound, unterminated: refused at the bound, no
   * recursion beyond it. */
  memset(doc, '[', sizeof doc - 1);
  doc[0] = '{';
  doc[sizeof doc - 1] = '\0';
  ASSERT_EQ(check(doc, NULL), WEB_JSON_SYNTAX); /* '{' then '[': a key is missing */
  memcpy(doc, "{\"a\":", 5);
  ASSERT_EQ(check(doc, NULL), WEB_JSON_DEPTH);
}

static void test_not_object(void)
{
  BAD_AT("[]", WEB_JSON_NOT_OBJECT, 0);
  BAD_AT("  [{\"entry\": \"a\"}]", WEB_JSON_NOT_OBJECT, 2);
  BAD("\"entry\"", WEB_JSON_NOT_OBJECT);
  BAD("42", WEB_JSON_NOT_OBJECT);
  BAD("null", WEB_JSON_NOT_OBJECT);
  BAD("true", WEB_JSON_NOT_OBJECT);
  /* Not even JSON. */
  BAD("", WEB_JSON_SYNTAX);
  BAD("   ", WEB_JSON_SYNTAX);
  ASSERT_EQ(web_json_check_object(NULL, 0, NULL), WEB_JSON_SYNTAX);
}

static void test_members(void)
{
  /* WEB_JSON_MAX_MEMBERS members pass, one more does not. */
  size_t cap = 16 * (WEB_JSON_MAX_MEMBERS + 2);
  char *doc = malloc(cap);
  size_t n;

  ASSERT_TRUE(doc != NULL);
  if (!doc)
    return;
  n = (size_t)snprintf(doc, cap, "{");
  for (int i = 0; i < WEB_JSON_MAX_MEMBERS; i++)
    n += (size_t)snprintf(doc + n, cap - n, "%s\"k%d\":%d", i ? "," : "", i, i);
  snprintf(doc + n, cap - n, "}");
  ASSERT_EQ(check(doc, NULL), WEB_JSON_OK);
  n += (size_t)snprintf(doc + n, cap - n, ",\"extra\":1}");
  ASSERT_EQ(check(doc, NULL), WEB_JSON_MEMBERS);
  free(doc);
}

static void test_syntax(void)
{
  /* What cJSON would let through or misread. */
  BAD("{\"a\": 1,}", WEB_JSON_SYNTAX);          /* trailing comma */
  BAD("{\"a\": [1,]}", WEB_JSON_SYNTAX);
  BAD("{'a': 1}", WEB_JSON_SYNTAX);             /* single quotes */
  BAD("{a: 1}", WEB_JSON_SYNTAX);               /* bare key */
  BAD("{\"a\" 1}", WEB_JSON_SYNTAX);
  BAD("{\"a\": 01}", WEB_JSON_SYNTAX);          /* leading zero */
  BAD("{\"a\": +1}", WEB_JSON_SYNTAX);
  BAD("{\"a\": 1.}", WEB_JSON_SYNTAX);
  BAD("{\"a\": .5}", WEB_JSON_SYNTAX);
  BAD("{\"a\": 1e}", WEB_JSON_SYNTAX);
  BAD("{\"a\": -}", WEB_JSON_SYNTAX);
  BAD("{\"a\": 0x10}", WEB_JSON_SYNTAX);
  BAD("{\"a\": NaN}", WEB_JSON_SYNTAX);
  BAD("{\"a\": Infinity}", WEB_JSON_SYNTAX);
  BAD("{\"a\": tru}", WEB_JSON_SYNTAX);
  BAD("{\"a\": nul", WEB_JSON_SYNTAX);
  BAD("{\"a\": \"x\\q\"}", WEB_JSON_SYNTAX);    /* unknown escape */
  BAD("{\"a\": \"\\u12\"}", WEB_JSON_SYNTAX);   /* short \u */
  BAD("{\"a\": \"\\u12g4\"}", WEB_JSON_SYNTAX);
  BAD("{\"a\": \"tab\there\"}", WEB_JSON_SYNTAX); /* raw control character */
  BAD("{\"a\": \"line\nbreak\"}", WEB_JSON_SYNTAX);
  BAD("{\"a\": \"unterminated}", WEB_JSON_SYNTAX);
  BAD("{\"a\": \"x\\", WEB_JSON_SYNTAX);
  BAD("{\"a\": 1", WEB_JSON_SYNTAX);
  BAD("{\"a\":", WEB_JSON_SYNTAX);
  BAD("{", WEB_JSON_SYNTAX);
  BAD("{\"a\": 1 /* comment */}", WEB_JSON_SYNTAX);
}

static void test_utf8(void)
{
  BAD_AT("{\"a\": \"\xff\"}", WEB_JSON_UTF8, 7);
  BAD("{\"a\": \"\x80\"}", WEB_JSON_UTF8);              /* lone continuation byte */
  BAD("{\"a\": \"\xc0\xaf\"}", WEB_JSON_UTF8);          /* overlong '/' */
  BAD("{\"a\": \"\xe0\x80\xaf\"}", WEB_JSON_UTF8);      /* overlong, 3 bytes */
  BAD("{\"a\": \"\xed\xa0\x80\"}", WEB_JSON_UTF8);      /* an encoded surrogate */
  BAD("{\"a\": \"\xf4\x90\x80\x80\"}", WEB_JSON_UTF8);  /* above U+10FFFF */
  BAD("{\"a\": \"\xe2\x82\"}", WEB_JSON_UTF8);          /* truncated */
  BAD("{\"a\": \"\\uD83D\"}", WEB_JSON_UTF8);           /* unpaired high surrogate */
  BAD("{\"a\": \"\\uD83Dx\"}", WEB_JSON_UTF8);
  BAD("{\"a\": \"\\uD83D\\u0041\"}", WEB_JSON_UTF8);
  BAD("{\"a\": \"\\uDE00\"}", WEB_JSON_UTF8);           /* a low surrogate first */
  /* Outside strings, bytes above 0x7f are not JSON at all. */
  BAD("{\xc3\xa9: 1}", WEB_JSON_SYNTAX);
}

static void test_strerror(void)
{
  ASSERT_STR_EQ(web_json_strerror(WEB_JSON_DUP_KEY), "a duplicate key in an object");
  ASSERT_STR_EQ(web_json_strerror(WEB_JSON_DEPTH), "nested deeper than 8 levels");
  ASSERT_STR_EQ(web_json_strerror(WEB_JSON_NUL), "a NUL character (\\u0000)");
  ASSERT_STR_EQ(web_json_strerror(WEB_JSON_TRAILING), "data after the JSON value");
  ASSERT_STR_EQ(web_json_strerror(WEB_JSON_NOT_OBJECT), "the top level is not a JSON object");
  for (int e = WEB_JSON_OK; e <= WEB_JSON_NOT_OBJECT; e++)
    ASSERT_TRUE(web_json_strerror((enum web_json_err)e)[0] != '\0');
}

/* web_json_parse_object: what passes is what cJSON builds; what does not
 * builds nothing. */
static cJSON *parse(const char *doc, enum web_json_err *e, size_t *at)
{
  size_t len = strlen(doc);
  char *copy = malloc(len + 1); /* the body buffer: len bytes and a NUL */
  cJSON *root;

  ASSERT_TRUE(copy != NULL);
  if (!copy)
    return NULL;
  memcpy(copy, doc, len + 1);
  root = web_json_parse_object(copy, len, e, at);
  free(copy);
  return root;
}

static void test_parse(void)
{
  enum web_json_err e = WEB_JSON_SYNTAX;
  size_t at = 99;
  cJSON *root = parse(" {\"entry\": \"leaf-\\u0037\", \"n\": [1, {\"x\": null}]}\r\n", &e, &at);
  const cJSON *entry = root ? cJSON_GetObjectItemCaseSensitive(root, "entry") : NULL;

  ASSERT_TRUE(root != NULL);
  ASSERT_EQ(e, WEB_JSON_OK);
  ASSERT_EQ(at, 0);
  ASSERT_TRUE(cJSON_IsString(entry));
  if (cJSON_IsString(entry))
    ASSERT_STR_EQ(entry->valuestring, "leaf-7");
  cJSON_Delete(root);

  root = parse("{}", &e, &at);
  ASSERT_TRUE(cJSON_IsObject(root));
  cJSON_Delete(root);

  /* Each refusal, with the offset the 400 names. */
  ASSERT_TRUE(parse("{\"entry\": \"a\", \"entry\": \"b\"}", &e, &at) == NULL);
  ASSERT_EQ(e, WEB_JSON_DUP_KEY);
  ASSERT_EQ(at, 15);
  ASSERT_TRUE(parse("{\"entry\": \"a\\u0000b\"}", &e, &at) == NULL);
  ASSERT_EQ(e, WEB_JSON_NUL);
  ASSERT_TRUE(parse("{\"entry\": \"a\"}garbage", &e, &at) == NULL);
  ASSERT_EQ(e, WEB_JSON_TRAILING);
  ASSERT_EQ(at, 14);
  ASSERT_TRUE(parse("{\"a\":[[[[[[[[1]]]]]]]]}", &e, &at) == NULL);
  ASSERT_EQ(e, WEB_JSON_DEPTH);
  ASSERT_TRUE(parse("[{\"entry\": \"a\"}]", &e, &at) == NULL);
  ASSERT_EQ(e, WEB_JSON_NOT_OBJECT);
  ASSERT_TRUE(parse("", &e, &at) == NULL);
  ASSERT_EQ(e, WEB_JSON_SYNTAX);
  /* err and at may be NULL. */
  ASSERT_TRUE(parse("{\"a\":1,\"a\":2}", NULL, NULL) == NULL);
}

/* Only the allowlist import and the bulk of DTLS keys take a body that is
 * not JSON. */
static void test_csv_routes(void)
{
  unsigned csv = 0;

  for (size_t i = 0; i < web_routes_count; i++) {
    const struct web_route *rt = &web_routes[i];
    if (!rt->csv_ok)
      continue;
    csv++;
    ASSERT_EQ(rt->methods, WEB_POST);
    ASSERT_TRUE(strcmp(rt->pattern, "/api/v1/allowlist") == 0 ||
                strcmp(rt->pattern, "/api/v1/psks") == 0);
  }
  ASSERT_EQ(csv, 2);
}

int main(void)
{
  RUN(test_valid);
  RUN(test_duplicate_keys);
  RUN(test_nul);
  RUN(test_trailing);
  RUN(test_depth);
  RUN(test_not_object);
  RUN(test_members);
  RUN(test_syntax);
  RUN(test_utf8);
  RUN(test_strerror);
  RUN(test_parse);
  RUN(test_csv_routes);
  return TEST_END();
}
