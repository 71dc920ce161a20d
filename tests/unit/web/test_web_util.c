/*
 * test_web_util.c - the pure helpers of web/ (web_util.c): path patterns,
 * the Allow header, integer and query parsing, bearer tokens, the
 * constant-time comparison, static-path safety, content types, CSV lines,
 * the ClientId lists of POST /api/v1/psks and hex keys.
 */
#define WEB_UTIL_ONLY
#include "web_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "test.h"

/* arg NULL: path must not match pattern; "": it matches without a
 * parameter; anything else: it matches with that parameter. */
static void match(const char *pattern, const char *path, const char *arg)
{
  const char *got = "x";
  size_t got_len = 99;
  bool ok = web_path_match(pattern, path, &got, &got_len);

  ASSERT_EQ(ok, arg != NULL);
  if (!arg || !*arg) {
    /* Without a parameter (or a match) nothing points into the path. */
    ASSERT_TRUE(got == NULL);
    ASSERT_EQ(got_len, 0);
    return;
  }
  ASSERT_EQ(got_len, strlen(arg));
  ASSERT_TRUE(got && got_len == strlen(arg) && memcmp(got, arg, got_len) == 0);
  ASSERT_TRUE(got >= path && got + got_len <= path + strlen(path));
}

static void test_path_match(void)
{
  match("/api/v1/status", "/api/v1/status", "");
  match("/api/v1/status", "/api/v1/statusx", NULL);
  match("/api/v1/status", "/api/v1/statu", NULL);
  match("/api/v1/status", "/api/v1/status/", NULL);
  match("/metrics", "/metrics/x", NULL);

  match("/api/v1/devices/{clientId}", "/api/v1/devices/dev-1", "dev-1");
  /* A ClientId with a '/' (sent as %2F, decoded by lws). */
  match("/api/v1/devices/{clientId}", "/api/v1/devices/line/7", "line/7");
  match("/api/v1/devices/{clientId}", "/api/v1/devices/", NULL);
  match("/api/v1/devices/{clientId}", "/api/v1/devices", NULL);
  match("/api/v1/devices/{clientId}", "/api/v1/devicesx", NULL);

  match("/api/v1/devices/{clientId}/approve", "/api/v1/devices/dev-1/approve", "dev-1");
  match("/api/v1/devices/{clientId}/approve", "/api/v1/devices/line/7/approve", "line/7");
  /* The action alone is not a ClientId followed by the action, and the
   * parameter is never empty. */
  match("/api/v1/devices/{clientId}/approve", "/api/v1/devices/approve", NULL);
  match("/api/v1/devices/{clientId}/approve", "/api/v1/devices//approve", NULL);
  match("/api/v1/devices/{clientId}/approve", "/api/v1/devices/x/approve/more", NULL);
  match("/api/v1/devices/{clientId}/approve", "/api/v1/devices/x/unapprove", NULL);
  match("/api/v1/devices/{clientId}/block", "/api/v1/devices/x/unblock", NULL);
  match("/api/v1/devices/{clientId}/unblock", "/api/v1/devices/x/unblock", "x");

  match("/api/v1/allowlist/{entry}", "/api/v1/allowlist/line1-*", "line1-*");
  match("/api/v1/allowlist/{entry}", "/api/v1/allowlist/", NULL);

  /* "*": everything outside the API. */
  match("*", "/", "");
  match("*", "/app.js", "");
  match("*", "/apix", "");
  match("*", "/metrics", "");
  match("*", "/metrics/x", "");
  match("*", "/api", NULL);
  match("*", "/api/", NULL);
  match("*", "/api/v1/status", NULL);
  match("*", "/api/v2/status", NULL);

  /* A malformed pattern matches nothing. */
  match("/api/v1/devices/{clientId", "/api/v1/devices/{clientId", NULL);
}

static void test_allow_header(void)
{
  char buf[64];
  ASSERT_EQ(web_allow_header(WEB_GET | WEB_HEAD | WEB_DELETE, buf, sizeof buf), 17);
  ASSERT_STR_EQ(buf, "GET, HEAD, DELETE");
  ASSERT_EQ(web_allow_header(WEB_POST, buf, sizeof buf), 4);
  ASSERT_STR_EQ(buf, "POST");
  ASSERT_EQ(web_allow_header(0, buf, sizeof buf), 0);
  ASSERT_STR_EQ(buf, "");
  ASSERT_EQ(web_allow_header(WEB_GET | WEB_HEAD, buf, 9), -1);
  ASSERT_EQ(web_allow_header(WEB_GET | WEB_HEAD, buf, 10), 9);
  ASSERT_EQ(web_allow_header(WEB_GET, buf, 0), -1);
}

static void test_parse_int(void)
{
  int64_t v = 7;
  ASSERT_EQ(web_parse_int64("0", 0, 10, &v), 0);
  ASSERT_EQ(v, 0);
  ASSERT_EQ(web_parse_int64("1000", 1, 1000, &v), 0);
  ASSERT_EQ(v, 1000);
  ASSERT_EQ(web_parse_int64("1001", 1, 1000, &v), -1);
  ASSERT_EQ(web_parse_int64("0", 1, 1000, &v), -1);
  ASSERT_EQ(web_parse_int64("-1", 0, 10, &v), -1);
  ASSERT_EQ(web_parse_int64("-5", -10, 10, &v), 0);
  ASSERT_EQ(v, -5);
  ASSERT_EQ(web_parse_int64("", 0, 10, &v), -1);
  ASSERT_EQ(web_parse_int64("-", -10, 10, &v), -1);
  ASSERT_EQ(web_parse_int64(NULL, 0, 10, &v), -1);
  ASSERT_EQ(web_parse_int64(" 1", 0, 10, &v), -1);
  ASSERT_EQ(web_parse_int64("1 ", 0, 10, &v), -1);
  ASSERT_EQ(web_parse_int64("+1", 0, 10, &v), -1);
  ASSERT_EQ(web_parse_int64("0x10", 0, 100, &v), -1);
  ASSERT_EQ(web_parse_int64("1e3", 0, 10000, &v), -1);
  ASSERT_EQ(web_parse_int64("9223372036854775807", 0, INT64_MAX, &v), 0);
  ASSERT_TRUE(v == INT64_MAX);
  ASSERT_EQ(web_parse_int64("9223372036854775808", 0, INT64_MAX, &v), -1);
  ASSERT_EQ(web_parse_int64("-9223372036854775808", INT64_MIN, 0, &v), 0);
  ASSERT_TRUE(v == INT64_MIN);
  ASSERT_EQ(web_parse_int64("-9223372036854775809", INT64_MIN, 0, &v), -1);
  ASSERT_EQ(web_parse_int64("99999999999999999999999", 0, INT64_MAX, &v), -1);
}

static void test_query_split(void)
{
  char a[] = "limit=50", b[] = "flag", c[] = "q=a=b", d[] = "=x";
  char *k, *v;
  web_query_split(a, &k, &v);
  ASSERT_STR_EQ(k, "limit");
  ASSERT_STR_EQ(v, "50");
  web_query_split(b, &k, &v);
  ASSERT_STR_EQ(k, "flag");
  ASSERT_STR_EQ(v, "");
  web_query_split(c, &k, &v);
  ASSERT_STR_EQ(k, "q");
  ASSERT_STR_EQ(v, "a=b");
  web_query_split(d, &k, &v);
  ASSERT_STR_EQ(k, "");
  ASSERT_STR_EQ(v, "x");
}

static void test_bearer(void)
{
  char t[16];
  ASSERT_EQ(web_bearer_token("Bearer abc", t, sizeof t), 0);
  ASSERT_STR_EQ(t, "abc");
  ASSERT_EQ(web_bearer_token("  bearer \t xyz  ", t, sizeof t), 0);
  ASSERT_STR_EQ(t, "xyz");
  ASSERT_EQ(web_bearer_token("Basic abc", t, sizeof t), -1);
  ASSERT_EQ(web_bearer_token("Bearer", t, sizeof t), -1);
  ASSERT_EQ(web_bearer_token("Bearer   ", t, sizeof t), -1);
  ASSERT_EQ(web_bearer_token("Bearerabc", t, sizeof t), -1);
  ASSERT_EQ(web_bearer_token("", t, sizeof t), -1);
  ASSERT_EQ(web_bearer_token(NULL, t, sizeof t), -1);
  ASSERT_EQ(web_bearer_token("Bearer 0123456789abcde", t, sizeof t), 0);
  ASSERT_EQ(web_bearer_token("Bearer 0123456789abcdef", t, sizeof t), -1);
}

static void test_ct_equal(void)
{
  const char *secret = "s3cret-token";
  size_t n = strlen(secret);
  ASSERT_TRUE(web_ct_equal(secret, n, "s3cret-token", n));
  ASSERT_TRUE(!web_ct_equal(secret, n, "s3cret-tokeN", n));
  ASSERT_TRUE(!web_ct_equal(secret, n, "S3cret-token", n));
  ASSERT_TRUE(!web_ct_equal(secret, n, "s3cret", 6));
  ASSERT_TRUE(!web_ct_equal(secret, n, "s3cret-token-and-more", 21));
  ASSERT_TRUE(!web_ct_equal(secret, n, "", 0));
  /* A supplied token that repeats the secret must not match it. */
  ASSERT_TRUE(!web_ct_equal("ab", 2, "abab", 4));
  /* An empty expected secret matches nothing, not even the empty token. */
  ASSERT_TRUE(!web_ct_equal("", 0, "", 0));
  ASSERT_TRUE(!web_ct_equal("", 0, "x", 1));
}

static void test_static_path(void)
{
  ASSERT_TRUE(web_static_path_ok("/"));
  ASSERT_TRUE(web_static_path_ok("/index.html"));
  ASSERT_TRUE(web_static_path_ok("/css/style.css"));
  ASSERT_TRUE(web_static_path_ok("/.well-known/x"));
  ASSERT_TRUE(web_static_path_ok("/a..b"));
  ASSERT_TRUE(web_static_path_ok("/..a"));
  ASSERT_TRUE(!web_static_path_ok("/.."));
  ASSERT_TRUE(!web_static_path_ok("/../etc/passwd"));
  ASSERT_TRUE(!web_static_path_ok("/a/../../b"));
  ASSERT_TRUE(!web_static_path_ok("/a/.."));
  ASSERT_TRUE(!web_static_path_ok("/a\\..\\b"));
  ASSERT_TRUE(!web_static_path_ok("index.html"));
  ASSERT_TRUE(!web_static_path_ok(""));
  ASSERT_TRUE(!web_static_path_ok(NULL));
  ASSERT_TRUE(!web_static_path_ok("/a\nb"));
  ASSERT_TRUE(!web_static_path_ok("/a\x7f"));
}

static void test_content_type(void)
{
  ASSERT_STR_EQ(web_content_type("/index.html"), "text/html; charset=utf-8");
  ASSERT_STR_EQ(web_content_type("/app.js"), "text/javascript; charset=utf-8");
  ASSERT_STR_EQ(web_content_type("/style.CSS"), "text/css; charset=utf-8");
  ASSERT_STR_EQ(web_content_type("/logo.svg"), "image/svg+xml");
  ASSERT_STR_EQ(web_content_type("/logo.png"), "image/png");
  ASSERT_STR_EQ(web_content_type("/openapi.json"), "application/json");
  ASSERT_STR_EQ(web_content_type("/README"), "application/octet-stream");
  ASSERT_STR_EQ(web_content_type("/dir.js/file"), "application/octet-stream");
  ASSERT_STR_EQ(web_content_type("/x.exe"), "application/octet-stream");
}

static void test_csv(void)
{
  const char body[] = "entry\r\n  line1-*  \r\n\r\n\"quoted\",\n\nlast";
  char buf[16];
  size_t pos = 0;
  const char *e;

  e = web_csv_next(body, sizeof body - 1, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "entry");
  e = web_csv_next(body, sizeof body - 1, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "line1-*");
  e = web_csv_next(body, sizeof body - 1, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "quoted");
  e = web_csv_next(body, sizeof body - 1, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "last");
  ASSERT_TRUE(web_csv_next(body, sizeof body - 1, &pos, buf, sizeof buf) == NULL);

  /* Too long for the buffer: returned as "" so the caller skips it. */
  const char lng[] = "0123456789abcdefXYZ\nok\n";
  pos = 0;
  e = web_csv_next(lng, sizeof lng - 1, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "");
  e = web_csv_next(lng, sizeof lng - 1, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "ok");
  ASSERT_TRUE(web_csv_next(lng, sizeof lng - 1, &pos, buf, sizeof buf) == NULL);

  /* An embedded NUL never produces a truncated entry. */
  const char nul[] = {'a', '\0', 'b', '\n'};
  pos = 0;
  e = web_csv_next(nul, sizeof nul, &pos, buf, sizeof buf);
  ASSERT_STR_EQ(e, "");

  pos = 0;
  ASSERT_TRUE(web_csv_next("", 0, &pos, buf, sizeof buf) == NULL);
  ASSERT_TRUE(web_csv_next("\n\r\n \n", 5, &pos, buf, sizeof buf) == NULL);
}

/* Parses text (copied: the parser writes into its body) with room for max
 * ids; returns the result, the ids in out[]. */
static enum web_ids_err ids_of(const char *text, size_t len, size_t max, char *copy,
                               const char **out, size_t *n, size_t *line, const char **why)
{
  memcpy(copy, text, len);
  return web_csv_ids(copy, len, out, max, n, line, why);
}

static void test_csv_ids(void)
{
  char buf[4096];
  const char *ids[8], *why = "x";
  size_t n = 99, line = 99;

  /* The header, CRLF, blanks around ids, blank lines, no final newline. */
  const char ok[] = "client_id\r\n  line1-press-01\t\r\n\r\n\nline1-press-02\nrobot:7\r\nlast";
  ASSERT_EQ(ids_of(ok, sizeof ok - 1, 8, buf, ids, &n, &line, &why), WEB_IDS_OK);
  ASSERT_EQ(n, 4);
  ASSERT_STR_EQ(ids[0], "line1-press-01");
  ASSERT_STR_EQ(ids[1], "line1-press-02");
  ASSERT_STR_EQ(ids[2], "robot:7");
  ASSERT_STR_EQ(ids[3], "last");
  /* Without a header, with a UTF-8 byte order mark (a spreadsheet's). */
  const char bom[] = "\xEF\xBB\xBF" "a\nb\n";
  ASSERT_EQ(ids_of(bom, sizeof bom - 1, 8, buf, ids, &n, &line, &why), WEB_IDS_OK);
  ASSERT_EQ(n, 2);
  ASSERT_STR_EQ(ids[0], "a");
  /* "client_id" is the header only on the first line that has anything. */
  const char late[] = "\n\nclient_id\nx\nclient_id\n";
  ASSERT_EQ(ids_of(late, sizeof late - 1, 8, buf, ids, &n, &line, &why), WEB_IDS_OK);
  ASSERT_EQ(n, 2);
  ASSERT_STR_EQ(ids[0], "x");
  ASSERT_STR_EQ(ids[1], "client_id");
  /* Nothing, or only the header and blanks. */
  ASSERT_EQ(ids_of("", 0, 8, buf, ids, &n, &line, &why), WEB_IDS_EMPTY);
  ASSERT_EQ(n, 0);
  const char blank[] = "client_id\r\n \r\n\t\n";
  ASSERT_EQ(ids_of(blank, sizeof blank - 1, 8, buf, ids, &n, &line, &why), WEB_IDS_EMPTY);

  /* The limit: max ids pass, one more names its line. */
  const char three[] = "a\n\nb\nc\n";
  ASSERT_EQ(ids_of(three, sizeof three - 1, 3, buf, ids, &n, &line, &why), WEB_IDS_OK);
  ASSERT_EQ(n, 3);
  ASSERT_EQ(ids_of(three, sizeof three - 1, 2, buf, ids, &n, &line, &why), WEB_IDS_TOO_MANY);
  ASSERT_EQ(line, 4);
  ASSERT_TRUE(why != NULL);

  /* Lines that are no ClientId, each with its line number. */
  static const struct {
    const char *text;
    size_t line;
  } bad[] = {
    {"a\nline/7\n", 2},        /* '/' */
    {"a b\n", 1},               /* a space inside */
    {"ok\nx,y\n", 2},          /* a second column */
    {"\"quoted\"\n", 1},        /* quotes */
    {"a\n\n\x01\n", 3},        /* a control character */
    {"caf\xc3\xa9\n", 1},       /* not ASCII */
    {"a\x7f\n", 1},             /* DEL */
    {"id,key\n", 1},            /* another header */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    why = NULL;
    ASSERT_EQ(ids_of(bad[i].text, strlen(bad[i].text), 8, buf, ids, &n, &line, &why),
              WEB_IDS_BAD);
    ASSERT_EQ(line, bad[i].line);
    ASSERT_TRUE(why != NULL && *why);
  }
  /* An embedded NUL is refused, never a shortened id. */
  const char nul[] = {'a', '\0', 'b', '\n'};
  ASSERT_EQ(ids_of(nul, sizeof nul, 8, buf, ids, &n, &line, &why), WEB_IDS_BAD);
  /* 255 octets pass, 256 do not. */
  char lng[300];
  memset(lng, 'k', 256);
  lng[256] = '\n';
  ASSERT_EQ(ids_of(lng, 257, 8, buf, ids, &n, &line, &why), WEB_IDS_BAD);
  ASSERT_EQ(ids_of(lng + 1, 256, 8, buf, ids, &n, &line, &why), WEB_IDS_OK);
  ASSERT_EQ(strlen(ids[0]), 255);
}

static void test_hex(void)
{
  static const uint8_t key[4] = {0x00, 0x9f, 0xa0, 0xff};
  uint8_t out[8];
  char hex[16];

  ASSERT_EQ(web_hex_encode(key, 4, hex, sizeof hex), 0);
  ASSERT_STR_EQ(hex, "009fa0ff");
  ASSERT_EQ(web_hex_encode(key, 4, hex, 8), -1); /* no room for the NUL */
  ASSERT_EQ(web_hex_decode("009FA0ff", out, sizeof out), 4);
  ASSERT_MEM_EQ(out, key, 4);
  ASSERT_EQ(web_hex_decode("", out, sizeof out), 0);
  ASSERT_EQ(web_hex_decode("abc", out, sizeof out), -1);      /* odd */
  ASSERT_EQ(web_hex_decode("0g", out, sizeof out), -1);       /* not hex */
  ASSERT_EQ(web_hex_decode("0x12", out, sizeof out), -1);
  ASSERT_EQ(web_hex_decode(" 12", out, sizeof out), -1);
  ASSERT_EQ(web_hex_decode("000102030405060708", out, sizeof out), -1); /* 9 > 8 */
  ASSERT_EQ(web_hex_decode("0001020304050607", out, sizeof out), 8);
}

static struct sockaddr_storage addr_of(const char *ip)
{
  struct sockaddr_storage ss;

  memset(&ss, 0, sizeof ss);
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    ASSERT_EQ(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
  } else {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    ASSERT_EQ(inet_pton(AF_INET, ip, &in->sin_addr), 1);
  }
  return ss;
}

/* Admits n connections from ip; returns how many were admitted, their
 * slots in slots[] (if not NULL). */
static int admit_n(struct web_conn_table *t, const char *ip, int n, int *slots)
{
  struct sockaddr_storage ss = addr_of(ip);
  int ok = 0;

  for (int i = 0; i < n; i++) {
    int slot = 99;
    if (web_conn_admit(t, (const struct sockaddr *)&ss, &slot) == WEB_ADMIT_OK) {
      ASSERT_TRUE(slot >= 0 && slot < WEB_CONN_MAX);
      if (slots)
        slots[ok] = slot;
      ok++;
    } else {
      ASSERT_EQ(slot, -1);
    }
  }
  return ok;
}

static void test_conn_table(void)
{
  static struct web_conn_table t;
  int slots[WEB_CONN_MAX];
  struct sockaddr_storage a = addr_of("192.0.2.1");

  memset(&t, 0, sizeof t);
  /* One client: WEB_CONN_PER_IP, then refused; checking changes nothing. */
  ASSERT_EQ(web_conn_check(&t, (const struct sockaddr *)&a), WEB_ADMIT_OK);
  ASSERT_EQ(admit_n(&t, "192.0.2.1", WEB_CONN_PER_IP + 5, slots), WEB_CONN_PER_IP);
  ASSERT_EQ(t.total, WEB_CONN_PER_IP);
  ASSERT_EQ(web_conn_check(&t, (const struct sockaddr *)&a), WEB_ADMIT_PER_IP);
  ASSERT_EQ(web_conn_check(&t, (const struct sockaddr *)&a), WEB_ADMIT_PER_IP);
  ASSERT_EQ(t.total, WEB_CONN_PER_IP);
  /* All of one client's connections share a slot. */
  for (int i = 1; i < WEB_CONN_PER_IP; i++)
    ASSERT_EQ(slots[i], slots[0]);
  /* Another client is not affected. */
  ASSERT_EQ(admit_n(&t, "192.0.2.2", 1, NULL), 1);
  /* The same address as IPv4-mapped IPv6 is the same client. */
  ASSERT_EQ(admit_n(&t, "::ffff:192.0.2.1", 1, NULL), 0);
  /* One released: one more admitted, in the same slot. */
  web_conn_release(&t, slots[0]);
  ASSERT_EQ(web_conn_check(&t, (const struct sockaddr *)&a), WEB_ADMIT_OK);
  ASSERT_EQ(admit_n(&t, "::ffff:192.0.2.1", 1, slots + WEB_CONN_PER_IP), 1);
  ASSERT_EQ(slots[WEB_CONN_PER_IP], slots[0]);
  ASSERT_EQ(t.total, WEB_CONN_PER_IP + 1);

  /* IPv6 counts by /64: other hosts of the prefix share the bound. */
  ASSERT_EQ(admit_n(&t, "2001:db8:1:2::1", WEB_CONN_PER_IP - 1, NULL), WEB_CONN_PER_IP - 1);
  ASSERT_EQ(admit_n(&t, "2001:db8:1:2:ffff::7", 5, NULL), 1);
  ASSERT_EQ(admit_n(&t, "2001:db8:1:3::1", 1, NULL), 1);
  /* Peers that are not IP share one slot (and its bound). */
  {
    struct sockaddr_storage u;
    memset(&u, 0, sizeof u);
    u.ss_family = AF_UNSPEC;
    for (int i = 0; i < WEB_CONN_PER_IP; i++) {
      int slot;
      ASSERT_EQ(web_conn_admit(&t, (const struct sockaddr *)&u, &slot), WEB_ADMIT_OK);
    }
    ASSERT_EQ(web_conn_check(&t, (const struct sockaddr *)&u), WEB_ADMIT_PER_IP);
    ASSERT_EQ(web_conn_check(&t, NULL), WEB_ADMIT_PER_IP);
  }

  /* In all: WEB_CONN_MAX, whoever asks. */
  memset(&t, 0, sizeof t);
  int got = 0;
  for (int c = 0; got < WEB_CONN_MAX + 10 && c < 64; c++) {
    char ip[32];
    snprintf(ip, sizeof ip, "10.0.0.%d", c + 1);
    got += admit_n(&t, ip, WEB_CONN_PER_IP, NULL);
  }
  ASSERT_EQ(got, WEB_CONN_MAX);
  ASSERT_EQ(t.total, WEB_CONN_MAX);
  {
    struct sockaddr_storage n = addr_of("10.9.9.9");
    int slot = 7;
    ASSERT_EQ(web_conn_check(&t, (const struct sockaddr *)&n), WEB_ADMIT_FULL);
    ASSERT_EQ(web_conn_admit(&t, (const struct sockaddr *)&n, &slot), WEB_ADMIT_FULL);
    ASSERT_EQ(slot, -1);
  }
  /* Releasing every connection empties the table; a bad slot is ignored. */
  web_conn_release(&t, -1);
  web_conn_release(&t, WEB_CONN_MAX);
  for (int i = 0; i < WEB_CONN_MAX; i++)
    while (t.slots[i].count)
      web_conn_release(&t, i);
  ASSERT_EQ(t.total, 0);
  web_conn_release(&t, 0); /* already free: nothing happens */
  ASSERT_EQ(t.total, 0);
  ASSERT_EQ(admit_n(&t, "10.9.9.9", 1, NULL), 1);
}

static void test_log_text(void)
{
  char out[64];

  /* Printable ASCII passes; everything else, and '\', is escaped. */
  ASSERT_STR_EQ(web_log_text("leaf-7", 6, out, sizeof out), "leaf-7");
  ASSERT_STR_EQ(web_log_text("a\nFAKE b", 8, out, sizeof out), "a\\x0aFAKE b");
  ASSERT_STR_EQ(web_log_text("\x1b[31mred", 8, out, sizeof out), "\\x1b[31mred");
  ASSERT_STR_EQ(web_log_text("a\\x0a", 5, out, sizeof out), "a\\x5cx0a");
  ASSERT_STR_EQ(web_log_text("\xc3\xa9", 2, out, sizeof out), "\\xc3\\xa9");
  ASSERT_STR_EQ(web_log_text("a\0b", 3, out, sizeof out), "a\\x00b");
  ASSERT_STR_EQ(web_log_text("", 0, out, sizeof out), "");
  /* The length counts, not a NUL. */
  ASSERT_STR_EQ(web_log_text("abcdef", 3, out, sizeof out), "abc");

  /* Secrets are redacted, whatever the case, up to a delimiter; a secret
   * with a control character in it ends there and the rest is escaped. */
  static const struct {
    const char *in, *want;
  } secrets[] = {
    {"GET /api/v1/events?token=s3cr3t&x=1", "GET /api/v1/events?token=<redacted>&x=1"},
    {"?access_token=abc", "?access_token=<redacted>"},
    {"Authorization: Bearer a/b+c== rest", "Authorization: Bearer <redacted> rest"},
    {"authorization: BEARER xyz", "authorization: BEARER <redacted>"},
    {"{\"token\":\"abc\"}", "{\"token\":\"<redacted>\"}"},
    {"{\"TOKEN\": \"abc\"}", "{\"TOKEN\": \"<redacted>\"}"},
    {"token=ab\ncd", "token=<redacted>\\x0acd"},
  };
  for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
    ASSERT_STR_EQ(web_log_text(secrets[i].in, strlen(secrets[i].in), out, sizeof out),
                  secrets[i].want);

  /* Too long: cut with "..." within cap, never in the middle of an escape. */
  char small[8];
  ASSERT_STR_EQ(web_log_text("abcdefghij", 10, small, sizeof small), "abcd...");
  ASSERT_STR_EQ(web_log_text("ab\n\n", 4, small, sizeof small), "ab...");
  ASSERT_STR_EQ(web_log_text("abc", 3, small, sizeof small), "abc");
  ASSERT_STR_EQ(web_log_text("abcdefghij", 10, small, 4), "...");
  small[0] = 'x';
  web_log_text("abc", 3, small, 3);
  ASSERT_EQ(small[0], '\0');
  {
    /* Every byte value, into an exact-size buffer: no overrun (ASan). */
    char all[256], big[256 * 4 + 4];
    for (int i = 0; i < 256; i++)
      all[i] = (char)i;
    web_log_text(all, sizeof all, big, sizeof big);
    ASSERT_TRUE(strlen(big) < sizeof big);
    for (const char *p = big; *p; p++)
      ASSERT_TRUE(*p >= 0x20 && *p < 0x7f);
  }
}

/* The message history: the first reading primes, each later one adds the
 * counts since the one before; a counter that went down starts again; the
 * ring keeps the last WEB_HIST_LEN, oldest first. */
static void test_hist(void)
{
  static struct web_hist h;
  const struct web_hist_sample *s;

  memset(&h, 0, sizeof h);
  ASSERT_TRUE(web_hist_get(&h, 0) == NULL);
  web_hist_add(&h, 1000, 50, 7);
  ASSERT_EQ(h.n, 0);
  web_hist_add(&h, 1010, 80, 7);
  web_hist_add(&h, 1020, 5, 9); /* in went down: 5 since 0 */
  ASSERT_EQ(h.n, 2);
  s = web_hist_get(&h, 0);
  ASSERT_TRUE(s && s->at == 1010 && s->in == 30 && s->out == 0);
  s = web_hist_get(&h, 1);
  ASSERT_TRUE(s && s->at == 1020 && s->in == 5 && s->out == 2);
  ASSERT_TRUE(web_hist_get(&h, 2) == NULL);
  /* More than the ring holds: the oldest go. */
  for (uint64_t i = 1; i <= WEB_HIST_LEN + 5; i++)
    web_hist_add(&h, (int64_t)(1020 + i * 10), 5 + i * 3, 9 + i);
  ASSERT_EQ(h.n, WEB_HIST_LEN);
  s = web_hist_get(&h, 0);
  ASSERT_TRUE(s && s->at == 1020 + 6 * 10 && s->in == 3 && s->out == 1);
  s = web_hist_get(&h, WEB_HIST_LEN - 1);
  ASSERT_TRUE(s && s->at == (int64_t)(1020 + (WEB_HIST_LEN + 5) * 10));
  ASSERT_TRUE(web_hist_get(&h, WEB_HIST_LEN) == NULL);
  /* A jump past 32 bits is clamped, not wrapped. */
  web_hist_add(&h, 99999, UINT64_C(1) << 40, 0);
  s = web_hist_get(&h, WEB_HIST_LEN - 1);
  ASSERT_TRUE(s && s->in == UINT32_MAX && s->out == 0);
}

int main(void)
{
  RUN(test_path_match);
  RUN(test_allow_header);
  RUN(test_parse_int);
  RUN(test_query_split);
  RUN(test_bearer);
  RUN(test_ct_equal);
  RUN(test_static_path);
  RUN(test_content_type);
  RUN(test_csv);
  RUN(test_csv_ids);
  RUN(test_hex);
  RUN(test_conn_table);
  RUN(test_log_text);
  RUN(test_hist);
  return TEST_END();
}
