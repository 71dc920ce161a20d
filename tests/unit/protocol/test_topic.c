/*
 * test_topic.c - topic names, filters and matching (MQTT 3.1.1 §4.7, §1.5.3).
 */
#include <string.h>

#include "test.h"
#include "topic.h"

#define NAME_OK(s) topic_name_is_valid((s), sizeof(s) - 1)
#define FILTER_OK(s) topic_filter_is_valid((s), sizeof(s) - 1)
#define MATCH(f, n) topic_matches((f), sizeof(f) - 1, (n), sizeof(n) - 1)

static void test_name_valid(void)
{
  ASSERT_TRUE(NAME_OK("a"));
  ASSERT_TRUE(NAME_OK("sensors/temp/1"));
  ASSERT_TRUE(NAME_OK("/"));
  ASSERT_TRUE(NAME_OK("//"));
  ASSERT_TRUE(NAME_OK("/leading"));
  ASSERT_TRUE(NAME_OK("trailing/"));
  ASSERT_TRUE(NAME_OK("$aws/things/x/shadow/update"));
  ASSERT_TRUE(NAME_OK(" spaces are fine "));
  ASSERT_TRUE(NAME_OK("caf\xC3\xA9"));            /* U+00E9, 2 bytes */
  ASSERT_TRUE(NAME_OK("\xE2\x82\xAC"));           /* U+20AC, 3 bytes */
  ASSERT_TRUE(NAME_OK("\xF0\x9F\x98\x80"));       /* U+1F600, 4 bytes */
  ASSERT_TRUE(NAME_OK("\xF4\x8F\xBF\xBF"));       /* U+10FFFF, the last */
  ASSERT_TRUE(NAME_OK("\xEF\xBF\xBF"));           /* U+FFFF: only SHOULD NOT */
  ASSERT_TRUE(NAME_OK("\x01\x7F"));               /* controls: only SHOULD NOT */
}

static void test_name_invalid_4_7_3_1(void)
{
  /* Empty, NULL, too long [MQTT-4.7.3-1, MQTT-1.5.3]. */
  static char big[65536];
  memset(big, 'a', sizeof big);
  ASSERT_TRUE(!topic_name_is_valid("", 0));
  ASSERT_TRUE(!topic_name_is_valid(NULL, 0));
  ASSERT_TRUE(!topic_name_is_valid(NULL, 3));
  ASSERT_TRUE(topic_name_is_valid(big, 65535));
  ASSERT_TRUE(!topic_name_is_valid(big, 65536));
  /* Wildcards in a name [MQTT-3.3.2-2]. */
  ASSERT_TRUE(!NAME_OK("+"));
  ASSERT_TRUE(!NAME_OK("#"));
  ASSERT_TRUE(!NAME_OK("a/+/b"));
  ASSERT_TRUE(!NAME_OK("a/#"));
  ASSERT_TRUE(!NAME_OK("a+b"));
}

static void test_utf8_1_5_3_1(void)
{
  /* U+0000 [MQTT-1.5.3-2], anywhere. */
  ASSERT_TRUE(!NAME_OK("\0"));
  ASSERT_TRUE(!NAME_OK("a\0b"));
  ASSERT_TRUE(!FILTER_OK("a/\0"));
  /* Overlong forms, including the "modified UTF-8" NUL C0 80. */
  ASSERT_TRUE(!NAME_OK("\xC0\x80"));
  ASSERT_TRUE(!NAME_OK("\xC1\xBF"));
  ASSERT_TRUE(!NAME_OK("\xE0\x80\xAF"));
  ASSERT_TRUE(!NAME_OK("\xE0\x9F\xBF"));
  ASSERT_TRUE(!NAME_OK("\xF0\x8F\xBF\xBF"));
  /* Surrogates U+D800..U+DFFF. */
  ASSERT_TRUE(!NAME_OK("\xED\xA0\x80"));
  ASSERT_TRUE(!NAME_OK("\xED\xBF\xBF"));
  ASSERT_TRUE(NAME_OK("\xED\x9F\xBF"));           /* U+D7FF is fine */
  ASSERT_TRUE(NAME_OK("\xEE\x80\x80"));           /* U+E000 is fine */
  /* Beyond U+10FFFF. */
  ASSERT_TRUE(!NAME_OK("\xF4\x90\x80\x80"));
  ASSERT_TRUE(!NAME_OK("\xF5\x80\x80\x80"));
  ASSERT_TRUE(!NAME_OK("\xFF"));
  /* Truncated sequences and stray continuation bytes. */
  ASSERT_TRUE(!NAME_OK("\xC3"));
  ASSERT_TRUE(!NAME_OK("\xE2\x82"));
  ASSERT_TRUE(!NAME_OK("\xF0\x9F\x98"));
  ASSERT_TRUE(!NAME_OK("\x80"));
  ASSERT_TRUE(!NAME_OK("a\xBF"));
  ASSERT_TRUE(!NAME_OK("\xC3\x28"));
  ASSERT_TRUE(!NAME_OK("\xE2\x28\xA1"));
}

static void test_filter_valid_4_7_1(void)
{
  ASSERT_TRUE(FILTER_OK("#"));
  ASSERT_TRUE(FILTER_OK("+"));
  ASSERT_TRUE(FILTER_OK("a/b"));
  ASSERT_TRUE(FILTER_OK("sport/tennis/#"));
  ASSERT_TRUE(FILTER_OK("sport/+/player1"));
  ASSERT_TRUE(FILTER_OK("+/+"));
  ASSERT_TRUE(FILTER_OK("/+"));
  ASSERT_TRUE(FILTER_OK("+/tennis/#"));
  ASSERT_TRUE(FILTER_OK("/"));
  ASSERT_TRUE(FILTER_OK("$SYS/#"));
}

static void test_filter_invalid_4_7_1_2(void)
{
  /* '#' must be last and alone in its level [MQTT-4.7.1-2]. */
  ASSERT_TRUE(!FILTER_OK("sport/tennis#"));
  ASSERT_TRUE(!FILTER_OK("sport/tennis/#/ranking"));
  ASSERT_TRUE(!FILTER_OK("#/"));
  ASSERT_TRUE(!FILTER_OK("##"));
  /* '+' must be alone in its level [MQTT-4.7.1-3]. */
  ASSERT_TRUE(!FILTER_OK("sport+"));
  ASSERT_TRUE(!FILTER_OK("sport/+tennis"));
  ASSERT_TRUE(!FILTER_OK("++"));
  ASSERT_TRUE(!FILTER_OK("+#"));
  ASSERT_TRUE(!topic_filter_is_valid("", 0));
  ASSERT_TRUE(!topic_filter_is_valid(NULL, 1));
  ASSERT_TRUE(!FILTER_OK("a/\xC0\x80"));
}

static void test_has_wildcard(void)
{
  ASSERT_TRUE(topic_filter_has_wildcard("a/+", 3));
  ASSERT_TRUE(topic_filter_has_wildcard("#", 1));
  ASSERT_TRUE(!topic_filter_has_wildcard("a/b", 3));
  ASSERT_TRUE(!topic_filter_has_wildcard("a/#", 2)); /* length is honoured */
  ASSERT_TRUE(!topic_filter_has_wildcard(NULL, 0));
}

static void test_match_exact(void)
{
  ASSERT_TRUE(MATCH("a/b", "a/b"));
  ASSERT_TRUE(!MATCH("a/b", "a/c"));
  ASSERT_TRUE(!MATCH("a/b", "a/b/c"));
  ASSERT_TRUE(!MATCH("a/b/c", "a/b"));
  ASSERT_TRUE(!MATCH("a/b", "a/bc"));
  ASSERT_TRUE(!MATCH("a", "a/"));
  ASSERT_TRUE(MATCH("/", "/"));
  /* Case-sensitive (§4.7.3). */
  ASSERT_TRUE(!MATCH("ACCOUNTS", "Accounts"));
}

static void test_match_plus_4_7_1_3(void)
{
  ASSERT_TRUE(MATCH("sport/tennis/+", "sport/tennis/player1"));
  ASSERT_TRUE(MATCH("sport/tennis/+", "sport/tennis/player2"));
  ASSERT_TRUE(!MATCH("sport/tennis/+", "sport/tennis/player1/ranking"));
  ASSERT_TRUE(!MATCH("sport/tennis/+", "sport/tennis"));
  ASSERT_TRUE(MATCH("sport/+", "sport/"));
  ASSERT_TRUE(!MATCH("sport/+", "sport"));
  ASSERT_TRUE(MATCH("+/+", "/finance"));
  ASSERT_TRUE(MATCH("/+", "/finance"));
  ASSERT_TRUE(!MATCH("+", "/finance"));
  ASSERT_TRUE(MATCH("+", "a"));
  ASSERT_TRUE(MATCH("+/b/+", "a/b/c"));
  ASSERT_TRUE(!MATCH("+/b/+", "a/x/c"));
}

static void test_match_hash_4_7_1_2(void)
{
  ASSERT_TRUE(MATCH("sport/tennis/player1/#", "sport/tennis/player1"));
  ASSERT_TRUE(MATCH("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
  ASSERT_TRUE(MATCH("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
  ASSERT_TRUE(MATCH("sport/#", "sport"));
  ASSERT_TRUE(MATCH("a/#", "a"));
  ASSERT_TRUE(MATCH("a/#", "a/"));
  ASSERT_TRUE(!MATCH("a/#", "ab"));
  ASSERT_TRUE(!MATCH("a/b/#", "a"));
  ASSERT_TRUE(MATCH("#", "a"));
  ASSERT_TRUE(MATCH("#", "/"));
  ASSERT_TRUE(MATCH("#", "a/b/c"));
  ASSERT_TRUE(MATCH("+/#", "a"));
  ASSERT_TRUE(MATCH("+/+/#", "a/b"));
}

static void test_match_dollar_4_7_2_1(void)
{
  ASSERT_TRUE(!MATCH("#", "$SYS/broker/uptime"));
  ASSERT_TRUE(!MATCH("+/monitor/Clients", "$SYS/monitor/Clients"));
  ASSERT_TRUE(MATCH("$SYS/#", "$SYS/monitor/Clients"));
  ASSERT_TRUE(MATCH("$SYS/monitor/+", "$SYS/monitor/Clients"));
  ASSERT_TRUE(MATCH("$aws/things/+/shadow/#", "$aws/things/t1/shadow/update/accepted"));
  /* Only a leading '$' is special. */
  ASSERT_TRUE(MATCH("#", "a/$b"));
  ASSERT_TRUE(MATCH("a/+", "a/$b"));
}

static void test_match_degenerate(void)
{
  ASSERT_TRUE(!topic_matches("", 0, "a", 1));
  ASSERT_TRUE(!topic_matches("#", 1, "", 0));
  ASSERT_TRUE(!topic_matches(NULL, 1, "a", 1));
  ASSERT_TRUE(!topic_matches("a", 1, NULL, 1));
  /* Lengths are honoured, not NUL terminators. */
  ASSERT_TRUE(topic_matches("a/bXX", 3, "a/bYY", 3));
}

int main(void)
{
  RUN(test_name_valid);
  RUN(test_name_invalid_4_7_3_1);
  RUN(test_utf8_1_5_3_1);
  RUN(test_filter_valid_4_7_1);
  RUN(test_filter_invalid_4_7_1_2);
  RUN(test_has_wildcard);
  RUN(test_match_exact);
  RUN(test_match_plus_4_7_1_3);
  RUN(test_match_hash_4_7_1_2);
  RUN(test_match_dollar_4_7_2_1);
  RUN(test_match_degenerate);
  return TEST_END();
}
