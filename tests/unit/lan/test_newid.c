/* Unit tests for gateway/lan/newid.c: the three buckets for new identities,
 * their refill, the converter allowance and the bounded table. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "newid.h"
#include "test.h"

static struct sockaddr_in addr(const char *ip, uint16_t port)
{
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}
#define SA(a) ((const struct sockaddr *)&(a))

static const struct newid_opts defaults = {
    .per_port = {1, 600}, .per_ip = {3, 60}, .per_converter = {50, 60}, .global = {10, 10},
    .slots = 64};

static void test_one_socket_gets_one_new_identity(void)
{
  struct newid n;
  struct sockaddr_in a = addr("127.0.0.1", 4000);
  ASSERT_EQ(newid_init(&n, &defaults, 0), 0);
  ASSERT_EQ(newid_take(&n, SA(a), false, 0), NEWID_OK);
  ASSERT_EQ(newid_take(&n, SA(a), false, 1), NEWID_PORT);
  /* After the period one more. */
  ASSERT_EQ(newid_take(&n, SA(a), false, 599000), NEWID_PORT);
  ASSERT_EQ(newid_take(&n, SA(a), false, 600000), NEWID_OK);
  newid_free(&n);
}

static void test_per_ip_and_converter(void)
{
  struct newid n;
  ASSERT_EQ(newid_init(&n, &defaults, 0), 0);
  /* Three sockets of one IP pass, the fourth is refused by the IP's bucket
   * and takes no token from its own port bucket. */
  for (uint16_t p = 1; p <= 3; p++) {
    struct sockaddr_in a = addr("127.0.0.2", p);
    ASSERT_EQ(newid_take(&n, SA(a), false, 0), NEWID_OK);
  }
  struct sockaddr_in a4 = addr("127.0.0.2", 4);
  ASSERT_EQ(newid_take(&n, SA(a4), false, 0), NEWID_IP);
  /* 20 s later one token is back (3 per 60 s): a4's port bucket is intact. */
  ASSERT_EQ(newid_take(&n, SA(a4), false, 20000), NEWID_OK);
  /* A converter IP may present many, one per socket. */
  for (uint16_t p = 1; p <= 6; p++) {
    struct sockaddr_in c = addr("127.0.0.3", p);
    ASSERT_EQ(newid_take(&n, SA(c), true, 20000), NEWID_OK);
  }
  newid_free(&n);
}

static void test_global_limit(void)
{
  struct newid n;
  int ok = 0, global = 0;
  ASSERT_EQ(newid_init(&n, &defaults, 0), 0);
  for (int i = 0; i < 30; i++) {
    char ip[32];
    struct sockaddr_in a;
    snprintf(ip, sizeof ip, "127.0.1.%d", i + 1);
    a = addr(ip, 1000);
    int r = newid_take(&n, SA(a), false, 0);
    ok += r == NEWID_OK;
    global += r == NEWID_GLOBAL;
  }
  ASSERT_EQ(ok, 10);
  ASSERT_EQ(global, 20);
  newid_free(&n);
}

static void test_table_is_bounded_and_forgets_full_buckets(void)
{
  struct newid_opts o = defaults;
  struct newid n;
  int full = 0;
  o.slots = 8;
  o.global.count = 0; /* off */
  ASSERT_EQ(newid_init(&n, &o, 0), 0);
  /* Each source uses two slots (port, IP); eight slots hold four sources.
   * More at the same instant are refused: no memory grows. */
  for (int i = 0; i < 40; i++) {
    char ip[32];
    struct sockaddr_in a;
    snprintf(ip, sizeof ip, "127.0.2.%d", i + 1);
    a = addr(ip, 1000);
    full += newid_take(&n, SA(a), false, 0) == NEWID_TABLE_FULL;
  }
  ASSERT_TRUE(full >= 36 - 4);
  /* Once the buckets have refilled, their slots serve new sources. */
  {
    struct sockaddr_in a = addr("127.0.3.1", 1000);
    ASSERT_EQ(newid_take(&n, SA(a), false, 3600000), NEWID_OK);
  }
  newid_free(&n);
}

/* A configuration reload's new limits (newid_set_limits): the buckets
 * already there count against them from the next take, a lower count caps
 * what a bucket holds, and 0 turns a limit off. */
static void test_set_limits(void)
{
  struct newid n;
  struct newid_opts o = defaults;
  ASSERT_EQ(newid_init(&n, &defaults, 0), 0);
  for (uint16_t p = 1; p <= 2; p++) {
    struct sockaddr_in a = addr("127.0.0.9", p);
    ASSERT_EQ(newid_take(&n, SA(a), false, 0), NEWID_OK);
  }
  /* 3 per IP became 1 (the IP's bucket, 1 left of 3, stays at 1); the
   * global 10 became 2 (its 8 left are capped at 2). */
  o.per_ip.count = 1;
  o.global.count = 2;
  newid_set_limits(&n, &o);
  struct sockaddr_in c = addr("127.0.0.9", 3), d = addr("127.0.0.9", 4);
  struct sockaddr_in b = addr("127.0.0.10", 1), e = addr("127.0.0.11", 1);
  ASSERT_EQ(newid_take(&n, SA(c), false, 0), NEWID_OK);
  ASSERT_EQ(newid_take(&n, SA(d), false, 0), NEWID_IP);
  ASSERT_EQ(newid_take(&n, SA(b), false, 0), NEWID_OK);
  ASSERT_EQ(newid_take(&n, SA(e), false, 0), NEWID_GLOBAL);
  o.global.count = 0; /* off */
  newid_set_limits(&n, &o);
  ASSERT_EQ(newid_take(&n, SA(e), false, 0), NEWID_OK);
  newid_free(&n);
}

static void test_limits_off(void)
{
  struct newid_opts o = {.slots = 4};
  struct newid n;
  struct sockaddr_in a = addr("127.0.0.1", 5);
  ASSERT_EQ(newid_init(&n, &o, 0), 0);
  for (int i = 0; i < 100; i++)
    ASSERT_EQ(newid_take(&n, SA(a), false, 0), NEWID_OK);
  ASSERT_STR_EQ(newid_result_str(NEWID_PORT), "too many new ClientIds from this address and port");
  newid_free(&n);
}

int main(void)
{
  RUN(test_one_socket_gets_one_new_identity);
  RUN(test_per_ip_and_converter);
  RUN(test_global_limit);
  RUN(test_table_is_bounded_and_forgets_full_buckets);
  RUN(test_limits_off);
  RUN(test_set_limits);
  return TEST_END();
}
