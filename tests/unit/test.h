/*
 * test.h - minimal assertion macros for the unit tests.  Each failure prints
 * the file, line, expression and both values; a test binary exits non-zero
 * when any assertion failed.  Use TEST_MAIN's summary line at the end.
 */
#ifndef FLEETGW_TEST_H
#define FLEETGW_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int test_failures;
static int test_checks;

#define ASSERT_TRUE(x)                                                        \
  do {                                                                        \
    test_checks++;                                                            \
    if (!(x)) {                                                               \
      test_failures++;                                                        \
      fprintf(stderr, "%s:%d: ASSERT_TRUE(%s) failed\n", __FILE__, __LINE__, #x); \
    }                                                                         \
  } while (0)

#define ASSERT_EQ(a, b)                                                       \
  do {                                                                        \
    long long va_ = (long long)(a), vb_ = (long long)(b);                     \
    test_checks++;                                                            \
    if (va_ != vb_) {                                                         \
      test_failures++;                                                        \
      fprintf(stderr, "%s:%d: ASSERT_EQ(%s, %s) failed: %lld != %lld\n", __FILE__, \
              __LINE__, #a, #b, va_, vb_);                                    \
    }                                                                         \
  } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                \
  do {                                                                        \
    test_checks++;                                                            \
    if (memcmp((a), (b), (n)) != 0) {                                         \
      test_failures++;                                                        \
      fprintf(stderr, "%s:%d: ASSERT_MEM_EQ(%s, %s, %zu) failed\n", __FILE__,  \
              __LINE__, #a, #b, (size_t)(n));                                 \
    }                                                                         \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                   \
  do {                                                                        \
    const char *sa_ = (a), *sb_ = (b);                                        \
    test_checks++;                                                            \
    if (!sa_ || !sb_ || strcmp(sa_, sb_) != 0) {                              \
      test_failures++;                                                        \
      fprintf(stderr, "%s:%d: ASSERT_STR_EQ(%s, %s) failed: \"%s\" != \"%s\"\n", \
              __FILE__, __LINE__, #a, #b, sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)"); \
    }                                                                         \
  } while (0)

/* Runs a named test case function. */
#define RUN(fn)                                                               \
  do {                                                                        \
    int before_ = test_failures;                                              \
    fn();                                                                     \
    fprintf(stderr, "%s %s\n", test_failures == before_ ? "ok  " : "FAIL", #fn); \
  } while (0)

/* Ends main(): prints "N checks, N failed" and returns the exit status. */
#define TEST_END()                                                            \
  (fprintf(stderr, "%d checks, %d failed\n", test_checks, test_failures),     \
   test_failures == 0 ? 0 : 1)

#endif
