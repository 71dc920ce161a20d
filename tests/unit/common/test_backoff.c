/* Unit tests for common/backoff.c: bounds, growth of the ceiling, reset and
 * jitter. */
#include "backoff.h"
#include "test.h"

static uint64_t ceiling(uint32_t base, uint32_t cap, uint32_t n)
{
  uint64_t hi = base;
  for (uint32_t i = 0; i < n && hi < cap; i++)
    hi *= 2;
  return hi < cap ? hi : cap;
}

/* Every delay lies in [base/2, min(cap, base * 2^n)]. */
static void test_bounds(void)
{
  struct backoff b;
  int bad = 0;

  backoff_init(&b, 1000, 60000, 42);
  for (uint32_t n = 0; n < 40; n++) {
    uint32_t d = backoff_next(&b);
    if (d < 500 || d > ceiling(1000, 60000, n))
      bad++;
  }
  ASSERT_EQ(bad, 0);
  ASSERT_EQ(b.attempt, 40);
}

/* The largest delay observed per attempt grows with n until it reaches the
 * cap, and never passes it. */
static void test_ceiling_growth(void)
{
  uint32_t max_at[12] = {0};

  for (uint64_t seed = 1; seed <= 400; seed++) {
    struct backoff b;
    backoff_init(&b, 100, 5000, seed);
    for (int n = 0; n < 12; n++) {
      uint32_t d = backoff_next(&b);
      if (d > max_at[n])
        max_at[n] = d;
    }
  }
  for (int n = 1; n < 12; n++)
    ASSERT_TRUE(max_at[n] >= max_at[n - 1] || max_at[n - 1] > 4500);
  /* Ceilings 100, 200, 400, 800, 1600, 3200, 5000...: with 400 draws the
   * maximum comes close to each ceiling. */
  ASSERT_TRUE(max_at[0] <= 100 && max_at[0] >= 95);
  ASSERT_TRUE(max_at[3] <= 800 && max_at[3] >= 700);
  ASSERT_TRUE(max_at[11] <= 5000 && max_at[11] >= 4800);
  ASSERT_TRUE(max_at[3] > max_at[0] * 4);
}

static void test_reset(void)
{
  struct backoff b;
  backoff_init(&b, 200, 10000, 7);
  for (int i = 0; i < 10; i++)
    backoff_next(&b);
  ASSERT_EQ(b.attempt, 10);
  backoff_reset(&b);
  ASSERT_EQ(b.attempt, 0);
  /* After a reset the first delay is within the first window again. */
  uint32_t d = backoff_next(&b);
  ASSERT_TRUE(d >= 100 && d <= 200);
}

/* Jitter: many sessions failing together do not pick the same delay. */
static void test_distribution(void)
{
  struct backoff b;
  uint32_t first = 0;
  int distinct = 0, below_mid = 0, above_mid = 0;

  backoff_init(&b, 1000, 1000, 99);
  for (int i = 0; i < 1000; i++) {
    uint32_t d = backoff_next(&b);
    if (i == 0)
      first = d;
    else if (d != first)
      distinct++;
    if (d < 750)
      below_mid++;
    else
      above_mid++;
  }
  ASSERT_TRUE(distinct > 900);
  /* Uniform on [500, 1000]: both halves get a fair share. */
  ASSERT_TRUE(below_mid > 350 && above_mid > 350);

  /* Different seeds give different sequences. */
  struct backoff a, c;
  int differ = 0;
  backoff_init(&a, 1000, 60000, 1);
  backoff_init(&c, 1000, 60000, 2);
  for (int i = 0; i < 8; i++)
    differ += backoff_next(&a) != backoff_next(&c);
  ASSERT_TRUE(differ >= 6);
}

/* Edge cases: seed 0 still jitters, a cap below base/2 wins, huge attempt
 * counts do not overflow. */
static void test_edges(void)
{
  struct backoff b;
  backoff_init(&b, 1000, 60000, 0);
  uint32_t d1 = backoff_next(&b), d2 = backoff_next(&b);
  ASSERT_TRUE(d1 >= 500 && d1 <= 1000);
  ASSERT_TRUE(d2 >= 500 && d2 <= 2000);
  ASSERT_TRUE(b.rng != 0);

  backoff_init(&b, 1000, 100, 5);
  for (int i = 0; i < 5; i++)
    ASSERT_EQ(backoff_next(&b), 100);

  backoff_init(&b, 4000000000u, 4294967295u, 5);
  b.attempt = UINT32_MAX - 1;
  uint32_t d = backoff_next(&b);
  ASSERT_TRUE(d >= 2000000000u);
  ASSERT_EQ(b.attempt, UINT32_MAX);
  backoff_next(&b);
  ASSERT_EQ(b.attempt, UINT32_MAX);
}

int main(void)
{
  RUN(test_bounds);
  RUN(test_ceiling_growth);
  RUN(test_reset);
  RUN(test_distribution);
  RUN(test_edges);
  return TEST_END();
}
