/*
 * Tests for gateway/upstream/pacer.c on a real uv_loop: FIFO order, the
 * max_connecting bound, the token-bucket rate (lower bounds of elapsed loop
 * time only, never upper bounds), leaving the queue with pacer_done, the
 * counters, 0 = unlimited, and a clean close (uv_loop_close() == 0).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "pacer.h"
#include "test.h"

#define NSLOTS 32

struct tslot {
  struct pacer_slot slot; /* first: a pacer_slot * is a struct tslot * */
  int id;
  int gos;                /* times go ran */
  uint64_t go_at;         /* uv_now() when go ran */
  bool done_in_go;        /* call pacer_done from inside go */
};

static uv_loop_t g_loop;
static struct pacer *g_pacer;
static int g_order[NSLOTS * 2];
static int g_norder;
static int g_closed;

static void go_cb(struct pacer_slot *slot)
{
  struct tslot *t = (struct tslot *)slot;
  t->gos++;
  t->go_at = uv_now(&g_loop);
  if (g_norder < (int)(sizeof g_order / sizeof g_order[0]))
    g_order[g_norder++] = t->id;
  if (t->done_in_go)
    pacer_done(g_pacer, slot);
}

static void init_slots(struct tslot *s, int n)
{
  memset(s, 0, sizeof *s * (size_t)n);
  for (int i = 0; i < n; i++) {
    s[i].slot.go = go_cb;
    s[i].id = i;
  }
  g_norder = 0;
}

static void closed_cb(void *ud)
{
  ASSERT_TRUE(ud == &g_closed);
  g_closed++;
}

/* Closes the pacer and checks its done callback ran exactly once. */
static void close_pacer(void)
{
  g_closed = 0;
  pacer_close(g_pacer, closed_cb, &g_closed);
  ASSERT_EQ(g_closed, 0); /* asynchronous: runs from the loop */
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(g_closed, 1);
  g_pacer = NULL;
}

/* max 0 and rate 0: every slot starts at once, inside pacer_wait. */
static void test_unlimited(void)
{
  struct tslot s[NSLOTS];

  init_slots(s, NSLOTS);
  ASSERT_EQ(pacer_new(&g_loop, 0, 0, &g_pacer), 0);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  for (int i = 0; i < NSLOTS; i++) {
    pacer_wait(g_pacer, &s[i].slot);
    ASSERT_EQ(s[i].gos, 1); /* before pacer_wait returned */
    ASSERT_EQ(pacer_connecting(g_pacer), (size_t)i + 1);
    ASSERT_EQ(pacer_waiting(g_pacer), 0);
  }
  ASSERT_EQ(g_norder, NSLOTS);
  for (int i = 0; i < NSLOTS; i++)
    ASSERT_EQ(g_order[i], i);
  for (int i = 0; i < NSLOTS; i++)
    pacer_done(g_pacer, &s[i].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  close_pacer();
}

/* max_connecting = 2: two turns at a time, the next in FIFO order on done. */
static void test_max_connecting(void)
{
  struct tslot s[6];

  init_slots(s, 6);
  ASSERT_EQ(pacer_new(&g_loop, 2, 0, &g_pacer), 0);
  for (int i = 0; i < 6; i++)
    pacer_wait(g_pacer, &s[i].slot);
  ASSERT_EQ(s[0].gos, 1);
  ASSERT_EQ(s[1].gos, 1);
  for (int i = 2; i < 6; i++)
    ASSERT_EQ(s[i].gos, 0);
  ASSERT_EQ(pacer_connecting(g_pacer), 2);
  ASSERT_EQ(pacer_waiting(g_pacer), 4);

  /* Nothing changes by running the loop: the turns are all taken. */
  uv_run(&g_loop, UV_RUN_NOWAIT);
  ASSERT_EQ(g_norder, 2);

  /* Asking again for a holding or a waiting slot changes nothing. */
  pacer_wait(g_pacer, &s[0].slot);
  pacer_wait(g_pacer, &s[3].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 2);
  ASSERT_EQ(pacer_waiting(g_pacer), 4);
  ASSERT_EQ(s[0].gos, 1);
  ASSERT_EQ(s[3].gos, 0);

  /* The second one finishing first lets the third start (inside done). */
  pacer_done(g_pacer, &s[1].slot);
  ASSERT_EQ(s[2].gos, 1);
  ASSERT_EQ(s[3].gos, 0);
  ASSERT_EQ(pacer_connecting(g_pacer), 2);
  ASSERT_EQ(pacer_waiting(g_pacer), 3);

  /* Done twice, or on a slot that neither waits nor holds: no effect. */
  pacer_done(g_pacer, &s[1].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 2);
  ASSERT_EQ(pacer_waiting(g_pacer), 3);
  ASSERT_EQ(s[3].gos, 0);

  pacer_done(g_pacer, &s[0].slot);
  ASSERT_EQ(s[3].gos, 1);
  pacer_done(g_pacer, &s[2].slot);
  ASSERT_EQ(s[4].gos, 1);
  ASSERT_EQ(s[5].gos, 0);
  ASSERT_EQ(pacer_connecting(g_pacer), 2);
  ASSERT_EQ(pacer_waiting(g_pacer), 1);
  pacer_done(g_pacer, &s[3].slot);
  pacer_done(g_pacer, &s[4].slot);
  pacer_done(g_pacer, &s[5].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);

  ASSERT_EQ(g_norder, 6);
  for (int i = 0; i < 6; i++) {
    ASSERT_EQ(g_order[i], i);
    ASSERT_EQ(s[i].gos, 1);
  }

  /* A slot given back may ask again, and goes to the back of the line. */
  pacer_wait(g_pacer, &s[0].slot);
  pacer_wait(g_pacer, &s[1].slot);
  pacer_wait(g_pacer, &s[2].slot);
  pacer_wait(g_pacer, &s[0].slot); /* holding: ignored */
  ASSERT_EQ(s[0].gos, 2);
  ASSERT_EQ(s[1].gos, 2);
  ASSERT_EQ(s[2].gos, 1);
  pacer_done(g_pacer, &s[0].slot);
  ASSERT_EQ(s[2].gos, 2);
  pacer_done(g_pacer, &s[1].slot);
  pacer_done(g_pacer, &s[2].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  ASSERT_EQ(g_norder, 9);
  close_pacer();
}

/* pacer_done on a waiting slot: it leaves the queue wherever it is (head,
 * middle, tail) and never gets go; the queue stays intact behind it. */
static void test_leave_queue(void)
{
  struct tslot s[8];

  init_slots(s, 8);
  ASSERT_EQ(pacer_new(&g_loop, 1, 0, &g_pacer), 0);
  for (int i = 0; i < 6; i++)
    pacer_wait(g_pacer, &s[i].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 1);
  ASSERT_EQ(pacer_waiting(g_pacer), 5); /* queue: 1 2 3 4 5 */

  pacer_done(g_pacer, &s[5].slot);      /* the tail */
  ASSERT_EQ(pacer_waiting(g_pacer), 4);
  pacer_wait(g_pacer, &s[6].slot);      /* appended after 4, not after 5 */
  ASSERT_EQ(pacer_waiting(g_pacer), 5); /* queue: 1 2 3 4 6 */
  pacer_done(g_pacer, &s[1].slot);      /* the head */
  pacer_done(g_pacer, &s[3].slot);      /* the middle */
  ASSERT_EQ(pacer_waiting(g_pacer), 3); /* queue: 2 4 6 */
  pacer_done(g_pacer, &s[3].slot);      /* no longer waiting: no effect */
  ASSERT_EQ(pacer_waiting(g_pacer), 3);
  ASSERT_EQ(pacer_connecting(g_pacer), 1);

  /* Drain the queue one turn at a time. */
  pacer_done(g_pacer, &s[0].slot);
  ASSERT_EQ(s[2].gos, 1);
  pacer_done(g_pacer, &s[2].slot);
  ASSERT_EQ(s[4].gos, 1);
  pacer_done(g_pacer, &s[4].slot);
  ASSERT_EQ(s[6].gos, 1);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  /* The queue is empty and its tail reset: a new slot starts at once. */
  pacer_done(g_pacer, &s[6].slot);
  pacer_wait(g_pacer, &s[7].slot);
  ASSERT_EQ(s[7].gos, 1);
  pacer_done(g_pacer, &s[7].slot);

  ASSERT_EQ(s[1].gos, 0);
  ASSERT_EQ(s[3].gos, 0);
  ASSERT_EQ(s[5].gos, 0);
  int want[] = {0, 2, 4, 6, 7};
  ASSERT_EQ(g_norder, 5);
  for (int i = 0; i < 5; i++)
    ASSERT_EQ(g_order[i], want[i]);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);

  /* The only waiting slot leaves: head and tail both reset. */
  pacer_wait(g_pacer, &s[0].slot);
  pacer_wait(g_pacer, &s[1].slot);
  pacer_done(g_pacer, &s[1].slot);
  pacer_wait(g_pacer, &s[2].slot);
  ASSERT_EQ(pacer_waiting(g_pacer), 1);
  pacer_done(g_pacer, &s[0].slot);
  ASSERT_EQ(s[2].gos, 2);
  ASSERT_EQ(s[1].gos, 0);
  pacer_done(g_pacer, &s[2].slot);
  close_pacer();
}

/* A go callback that gives its turn back at once (the attempt failed
 * synchronously): the next ones start in order from inside it. */
static void test_done_inside_go(void)
{
  struct tslot s[5];

  init_slots(s, 5);
  ASSERT_EQ(pacer_new(&g_loop, 1, 0, &g_pacer), 0);
  pacer_wait(g_pacer, &s[0].slot); /* holds */
  for (int i = 1; i < 5; i++) {
    s[i].done_in_go = true;
    pacer_wait(g_pacer, &s[i].slot);
  }
  ASSERT_EQ(pacer_waiting(g_pacer), 4);
  pacer_done(g_pacer, &s[0].slot);
  ASSERT_EQ(g_norder, 5);
  for (int i = 0; i < 5; i++) {
    ASSERT_EQ(g_order[i], i);
    ASSERT_EQ(s[i].gos, 1);
  }
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  close_pacer();
}

/* The burst is 10 ms' worth of the rate, at least one. */
static void test_burst_size(void)
{
  ASSERT_EQ(pacer_burst(0), 0);
  ASSERT_EQ(pacer_burst(1), 1);
  ASSERT_EQ(pacer_burst(50), 1);
  ASSERT_EQ(pacer_burst(199), 1);
  ASSERT_EQ(pacer_burst(500), 5); /* the default, AWS IoT's quota */
  ASSERT_EQ(pacer_burst(100000), 1000);
}

/* rate_per_s = N (no bound on attempts): the bucket starts full (B =
 * pacer_burst(N) tokens), then refills at N per second, so the k-th start
 * (k from 1) happens no earlier than (k - B) * 1000 / N ms after the pacer
 * was made. */
static void test_rate(void)
{
  enum { RATE = 20, COUNT = 26 };
  const int B = (int)pacer_burst(RATE);
  struct tslot s[COUNT];
  uint64_t t0;

  init_slots(s, COUNT);
  ASSERT_EQ(pacer_new(&g_loop, 0, RATE, &g_pacer), 0);
  t0 = uv_now(&g_loop); /* the pacer's bucket time: the same cached loop time */
  for (int i = 0; i < COUNT; i++)
    pacer_wait(g_pacer, &s[i].slot);
  /* The burst: B at once, the rest wait for tokens. */
  ASSERT_EQ(g_norder, B);
  ASSERT_EQ(pacer_connecting(g_pacer), B);
  ASSERT_EQ(pacer_waiting(g_pacer), COUNT - B);
  for (int i = B; i < COUNT; i++)
    ASSERT_EQ(s[i].gos, 0);

  /* The pacer's timer keeps the loop alive until the queue is empty. */
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(g_norder, COUNT);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  ASSERT_EQ(pacer_connecting(g_pacer), COUNT);
  for (int i = 0; i < COUNT; i++) {
    ASSERT_EQ(g_order[i], i);
    ASSERT_EQ(s[i].gos, 1);
    int k = i + 1;
    uint64_t min_ms = k > B ? (uint64_t)(k - B) * 1000u / RATE : 0;
    if (s[i].go_at - t0 < min_ms)
      fprintf(stderr, "slot %d started after %llu ms, bucket allows %llu\n", i,
              (unsigned long long)(s[i].go_at - t0), (unsigned long long)min_ms);
    ASSERT_TRUE(s[i].go_at - t0 >= min_ms);
    if (i > 0)
      ASSERT_TRUE(s[i].go_at >= s[i - 1].go_at);
  }
  /* Any one-second window holds at most RATE + B starts. */
  for (int i = 0; i < COUNT; i++) {
    int in_window = 0;
    for (int j = i; j < COUNT && s[j].go_at < s[i].go_at + 1000u; j++)
      in_window++;
    ASSERT_TRUE(in_window <= RATE + B);
  }
  for (int i = 0; i < COUNT; i++)
    pacer_done(g_pacer, &s[i].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  close_pacer();
}

/* Rate and max together; a rate-limited waiter that leaves the queue while
 * the timer is armed never gets go, and the loop still ends. */
static void test_rate_and_max(void)
{
  enum { RATE = 50 }; /* one token per 20 ms once the burst is spent */
  const int B = (int)pacer_burst(RATE);
  struct tslot s[RATE + 4];
  uint64_t t0;
  const int n = RATE + 4;

  init_slots(s, n);
  ASSERT_EQ(pacer_new(&g_loop, 0, RATE, &g_pacer), 0);
  t0 = uv_now(&g_loop);
  for (int i = 0; i < B; i++)
    pacer_wait(g_pacer, &s[i].slot);
  ASSERT_EQ(g_norder, B); /* the burst is spent */
  pacer_wait(g_pacer, &s[B].slot);
  pacer_wait(g_pacer, &s[B + 1].slot);
  ASSERT_EQ(pacer_waiting(g_pacer), 2);
  pacer_done(g_pacer, &s[B].slot); /* leaves while the timer is armed */
  ASSERT_EQ(pacer_waiting(g_pacer), 1);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(s[B].gos, 0);
  ASSERT_EQ(s[B + 1].gos, 1);
  ASSERT_TRUE(s[B + 1].go_at - t0 >= 1000u / RATE);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  for (int i = 0; i <= B + 1; i++)
    pacer_done(g_pacer, &s[i].slot);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  close_pacer();

  /* max 1 and rate 50: each start needs both a free turn and a token. */
  init_slots(s, n);
  ASSERT_EQ(pacer_new(&g_loop, 1, RATE, &g_pacer), 0);
  t0 = uv_now(&g_loop);
  for (int i = 0; i < n; i++)
    s[i].done_in_go = true;
  for (int i = 0; i < n; i++)
    pacer_wait(g_pacer, &s[i].slot);
  ASSERT_EQ(g_norder, B);
  ASSERT_EQ(pacer_waiting(g_pacer), n - B);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(g_norder, n);
  for (int i = 0; i < n; i++) {
    ASSERT_EQ(g_order[i], i);
    int k = i + 1;
    uint64_t min_ms = k > B ? (uint64_t)(k - B) * 1000u / RATE : 0;
    ASSERT_TRUE(s[i].go_at - t0 >= min_ms);
  }
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  close_pacer();
}

static void idle_cb(uv_timer_t *t)
{
  (void)t;
}

/* The bucket refills only up to the burst: after an idle spell of more
 * than a second, B start at once, not a second's worth (RATE).  RATE 500
 * (the default) has a burst of 5. */
static void test_burst_cap(void)
{
  enum { RATE = 500, B = 5 };
  struct tslot s[2 * B + 1];
  const int n = 2 * B + 1;
  uv_timer_t idle;
  uint64_t t1;

  ASSERT_EQ(pacer_burst(RATE), B);
  init_slots(s, n);
  ASSERT_EQ(pacer_new(&g_loop, 0, RATE, &g_pacer), 0);
  for (int i = 0; i < B; i++)
    pacer_wait(g_pacer, &s[i].slot);
  ASSERT_EQ(g_norder, B);
  /* Let 1.3 s of loop time pass with nothing waiting. */
  uv_timer_init(&g_loop, &idle);
  uv_timer_start(&idle, idle_cb, 1300, 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&idle, NULL);
  uv_run(&g_loop, UV_RUN_NOWAIT);
  t1 = uv_now(&g_loop);
  for (int i = B; i < n; i++)
    pacer_wait(g_pacer, &s[i].slot);
  /* 1.3 s would be 650 tokens; the cap keeps B. */
  ASSERT_EQ(g_norder, 2 * B);
  ASSERT_EQ(pacer_waiting(g_pacer), 1);
  ASSERT_EQ(s[n - 1].gos, 0);
  /* The last one waits for a fresh token: 2 ms. */
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(s[n - 1].gos, 1);
  ASSERT_TRUE(s[n - 1].go_at - t1 >= 1000u / RATE);
  for (int i = 0; i < n; i++)
    pacer_done(g_pacer, &s[i].slot);
  ASSERT_EQ(pacer_waiting(g_pacer), 0);
  ASSERT_EQ(pacer_connecting(g_pacer), 0);
  close_pacer();
}

/* pacer_close right after pacer_new, and with no callback. */
static void test_close(void)
{
  ASSERT_EQ(pacer_new(&g_loop, 3, 7, &g_pacer), 0);
  close_pacer();
  ASSERT_EQ(pacer_new(&g_loop, 0, 0, &g_pacer), 0);
  pacer_close(g_pacer, NULL, NULL);
  g_pacer = NULL;
  uv_run(&g_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_alive(&g_loop), 0);
}

static void walk_cb(uv_handle_t *h, void *arg)
{
  (void)arg;
  fprintf(stderr, "handle still open: type %d\n", (int)h->type);
}

int main(void)
{
  ASSERT_EQ(uv_loop_init(&g_loop), 0);
  RUN(test_unlimited);
  RUN(test_max_connecting);
  RUN(test_leave_queue);
  RUN(test_done_inside_go);
  RUN(test_burst_size);
  RUN(test_rate);
  RUN(test_rate_and_max);
  RUN(test_burst_cap);
  RUN(test_close);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uv_walk(&g_loop, walk_cb, NULL);
  ASSERT_EQ(uv_loop_close(&g_loop), 0);
  return TEST_END();
}
