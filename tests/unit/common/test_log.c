/* test_log.c - the log line format, plain and under the systemd journal. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "test.h"

/* Runs one log_msg with stderr sent to a temp file; returns its text. */
static void capture(char *out, size_t cap, enum log_level level, const char *msg)
{
  char path[] = "/tmp/fleetgw-log-XXXXXX";
  int fd = mkstemp(path), saved = dup(STDERR_FILENO);
  ssize_t n;

  dup2(fd, STDERR_FILENO);
  log_msg(level, "test", "%s", msg);
  dup2(saved, STDERR_FILENO);
  close(saved);
  lseek(fd, 0, SEEK_SET);
  n = read(fd, out, cap - 1);
  out[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(path);
}

static void test_plain_format(void)
{
  char line[512];
  unsetenv("JOURNAL_STREAM");
  log_init_from_env();
  log_set_level(LOG_INFO);
  capture(line, sizeof line, LOG_WARN, "hello");
  /* 2026-11-29T21:30:00.123Z WARN  test: hello */
  ASSERT_EQ(strlen(line) > 24, 1);
  ASSERT_EQ(line[10], 'T');
  ASSERT_EQ(line[23], 'Z');
  ASSERT_TRUE(strstr(line, " WARN  test: hello\n") != NULL);
  capture(line, sizeof line, LOG_DEBUG, "hidden");
  ASSERT_STR_EQ(line, "");
}

static void test_journal_format(void)
{
  char line[512], js[64];
  struct stat st;
  /* JOURNAL_STREAM must match stderr: point it at a file and make that
   * file stderr, as systemd does with its stream socket. */
  char path[] = "/tmp/fleetgw-log-XXXXXX";
  int fd = mkstemp(path), saved = dup(STDERR_FILENO);
  ssize_t n;

  fstat(fd, &st);
  snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino);
  setenv("JOURNAL_STREAM", js, 1);
  dup2(fd, STDERR_FILENO);
  log_init_from_env();
  log_set_level(LOG_DEBUG);
  log_msg(LOG_ERROR, "gw", "boom %d", 1);
  log_msg(LOG_DEBUG, "gw", "detail");
  dup2(saved, STDERR_FILENO);
  close(saved);
  lseek(fd, 0, SEEK_SET);
  n = read(fd, line, sizeof line - 1);
  line[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(path);
  ASSERT_STR_EQ(line, "<3>ERROR gw: boom 1\n<7>DEBUG gw: detail\n");

  /* A JOURNAL_STREAM that is not stderr (output redirected): plain lines. */
  setenv("JOURNAL_STREAM", "1:2", 1);
  log_init_from_env();
  capture(line, sizeof line, LOG_INFO, "x");
  ASSERT_TRUE(line[0] == '2' && strstr(line, " INFO  test: x\n") != NULL);
  unsetenv("JOURNAL_STREAM");
}

int main(void)
{
  RUN(test_plain_format);
  RUN(test_journal_format);
  return TEST_END();
}
