/*
 * Tests for gateway/lan/udp.c on a real uv_loop and real loopback sockets:
 * sends are batched until the end of the loop turn's callbacks (nothing on
 * the wire before, everything after, in order), udp_flush and
 * udp_flush_all send at once, a datagram the kernel refuses in the middle
 * of a batch is counted and the others still go, a close sends what was
 * batched, and the loop closes cleanly (the flush handles do not keep it
 * alive).  Receives are batched too: datagrams waiting in the socket are
 * read 20 to a system call, in order, and one too long is dropped.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "test.h"
#include "udp.h"

#define N 200

static uv_loop_t g_loop;
static struct udp *g_udp;
static int g_rx = -1;                 /* the peer: a plain socket */
static struct sockaddr_in g_rx_addr;
static uint64_t g_errors;
static int g_closed;
static int g_seen_in_turn = -1;       /* datagrams the peer had before the turn ended */
static int g_got[N];                  /* their numbers */
static int g_nrecv;                   /* datagrams handed to on_recv */
static int g_recv[N];                 /* their numbers */

static void on_recv(void *ud, const struct sockaddr *from, const uint8_t *data, size_t len)
{
  char buf[32];
  (void)ud;
  (void)from;
  if (len >= sizeof buf)
    len = sizeof buf - 1;
  memcpy(buf, data, len);
  buf[len] = '\0';
  if (g_nrecv < N)
    g_recv[g_nrecv] = atoi(buf);
  g_nrecv++;
}

static void open_peer(void)
{
  socklen_t sl = sizeof g_rx_addr;
  int big = 4 << 20;
  g_rx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  ASSERT_TRUE(g_rx >= 0);
  setsockopt(g_rx, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  memset(&g_rx_addr, 0, sizeof g_rx_addr);
  g_rx_addr.sin_family = AF_INET;
  g_rx_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(g_rx, (struct sockaddr *)&g_rx_addr, sizeof g_rx_addr), 0);
  ASSERT_EQ(getsockname(g_rx, (struct sockaddr *)&g_rx_addr, &sl), 0);
}

/* What the peer has now, without waiting: the datagrams' numbers in
 * order into got[], their count returned. */
static int drain_peer(int *got, int cap)
{
  char buf[64];
  int n = 0;
  for (;;) {
    ssize_t r = recv(g_rx, buf, sizeof buf - 1, MSG_DONTWAIT);
    if (r < 0)
      return n;
    buf[r] = '\0';
    if (n < cap)
      got[n] = atoi(buf);
    n++;
  }
}

static void send_n(int from, int count)
{
  char buf[32];
  for (int i = from; i < from + count; i++) {
    int len = snprintf(buf, sizeof buf, "%d", i);
    ASSERT_EQ(udp_send(g_udp, (struct sockaddr *)&g_rx_addr, (const uint8_t *)buf, (size_t)len),
              0);
  }
}

static void on_burst(uv_timer_t *t)
{
  (void)t;
  send_n(0, N);
  /* Inside the callback only full batches are on the wire: the rest waits
   * for the end of the turn. */
  g_seen_in_turn = drain_peer(g_got, N);
}

static void run_turns(int n)
{
  for (int i = 0; i < n; i++)
    uv_run(&g_loop, UV_RUN_NOWAIT);
}

static void closed_cb(void *ud)
{
  (void)ud;
  g_closed++;
}

static void test_batched_in_order(void)
{
  uv_timer_t t;
  int n, i;

  uv_timer_init(&g_loop, &t);
  uv_timer_start(&t, on_burst, 0, 0);
  run_turns(3);
  /* The batch holds 64: what the callback saw is what went when it was
   * full, a multiple of 64, never all 200. */
  ASSERT_TRUE(g_seen_in_turn >= 0 && g_seen_in_turn < N);
  ASSERT_EQ(g_seen_in_turn % 64, 0);
  /* The rest arrived once the turn's callbacks were done. */
  n = g_seen_in_turn;
  ASSERT_EQ(n + drain_peer(g_got + n, N - n), N);
  for (i = 0; i < N; i++)
    ASSERT_EQ(g_got[i], i);
  ASSERT_EQ(g_errors, 0);
  uv_close((uv_handle_t *)&t, NULL);
  run_turns(1);
}

static void test_flush_now(void)
{
  int got[8];
  send_n(1000, 3);
  ASSERT_EQ(drain_peer(got, 8), 0);
  udp_flush(g_udp);
  ASSERT_EQ(drain_peer(got, 8), 3);
  ASSERT_EQ(got[0], 1000);
  ASSERT_EQ(got[2], 1002);
  send_n(2000, 2);
  udp_flush_all();
  ASSERT_EQ(drain_peer(got, 8), 2);
  ASSERT_EQ(got[1], 2001);
  /* Nothing left to flush: a second flush sends nothing. */
  udp_flush_all();
  ASSERT_EQ(drain_peer(got, 8), 0);
}

/* Port 0 is refused by the kernel (EINVAL): counted, and the datagrams
 * before and after it in the batch still go. */
static void test_refused_in_batch(void)
{
  struct sockaddr_in bad = g_rx_addr;
  int got[8];
  bad.sin_port = 0;
  send_n(3000, 1);
  ASSERT_EQ(udp_send(g_udp, (struct sockaddr *)&bad, (const uint8_t *)"x", 1), 0);
  send_n(3001, 1);
  udp_flush(g_udp);
  ASSERT_EQ(g_errors, 1);
  ASSERT_EQ(drain_peer(got, 8), 2);
  ASSERT_EQ(got[0], 3000);
  ASSERT_EQ(got[1], 3001);
  /* Not an address family the socket sends to: refused at once. */
  {
    struct sockaddr sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_family = AF_UNIX;
    ASSERT_EQ(udp_send(g_udp, &sa, (const uint8_t *)"x", 1), UV_EINVAL);
  }
}

/* 25 datagrams wait in the socket, the 8th of them 3,000 bytes long: one
 * loop turn reads them in two recvmmsg calls (20, then 5), hands over the 24
 * short ones in order and drops the long one.  With a receive buffer under
 * libuv's 20 x 64 KiB it would be 25 calls. */
static void test_recv_batched(void)
{
  struct sockaddr_in to;
  struct udp_rx_stats st0, st1;
  static char big[3000];
  char buf[32];
  int tx, i, want = 0;

  memset(&to, 0, sizeof to);
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons((uint16_t)udp_port(g_udp));
  tx = socket(AF_INET, SOCK_DGRAM, 0);
  ASSERT_TRUE(tx >= 0);
  memset(big, '7', sizeof big);
  udp_get_rx_stats(g_udp, &st0);
  g_nrecv = 0;
  for (i = 0; i < 25; i++) {
    if (i == 7) {
      ASSERT_EQ(sendto(tx, big, sizeof big, 0, (struct sockaddr *)&to, sizeof to),
                (ssize_t)sizeof big);
      continue;
    }
    int len = snprintf(buf, sizeof buf, "%d", 5000 + i);
    ASSERT_EQ(sendto(tx, buf, (size_t)len, 0, (struct sockaddr *)&to, sizeof to), len);
  }
  run_turns(1);
  udp_get_rx_stats(g_udp, &st1);
  ASSERT_EQ(st1.datagrams - st0.datagrams, 25);
  ASSERT_EQ(st1.reads - st0.reads, 2);
  ASSERT_EQ(st1.too_long - st0.too_long, 1);
  ASSERT_EQ(g_nrecv, 24);
  for (i = 0; i < 25; i++) {
    if (i == 7)
      continue;
    ASSERT_EQ(g_recv[want], 5000 + i);
    want++;
  }
  close(tx);
}

static void test_close_sends_batch(void)
{
  int got[8];
  send_n(4000, 2);
  udp_close(g_udp, closed_cb, NULL);
  g_udp = NULL;
  ASSERT_EQ(drain_peer(got, 8), 2);
  ASSERT_EQ(got[1], 4001);
  /* The loop ends by itself: the flush handles hold no reference. */
  ASSERT_EQ(uv_run(&g_loop, UV_RUN_DEFAULT), 0);
  ASSERT_EQ(g_closed, 1);
}

int main(void)
{
  ASSERT_EQ(uv_loop_init(&g_loop), 0);
  open_peer();
  ASSERT_EQ(udp_open(&g_loop, "127.0.0.1", 0, 0, on_recv, NULL, &g_udp), 0);
  udp_count_errors(g_udp, &g_errors);
  RUN(test_batched_in_order);
  RUN(test_flush_now);
  RUN(test_refused_in_batch);
  RUN(test_recv_batched);
  RUN(test_close_sends_batch);
  close(g_rx);
  ASSERT_EQ(uv_loop_close(&g_loop), 0);
  return TEST_END();
}
