#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static enum log_level g_level = LOG_INFO;
static int g_journal; /* stderr is the systemd journal: "<N>" prefixes */

void log_init_from_env(void)
{
  /* JOURNAL_STREAM is "device:inode" of the journal's stream; it applies only
   * when stderr is still that stream (not redirected by a wrapper). */
  const char *js = getenv("JOURNAL_STREAM");
  unsigned long long dev = 0, ino = 0;
  struct stat st;
  g_journal = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
              (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}
static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

int log_level_parse(const char *s)
{
  static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
  for (int i = 0; i < 5; i++)
    if (strcmp(s, names[i]) == 0)
      return i;
  return -1;
}

void log_set_level(enum log_level level) { g_level = level; }
enum log_level log_get_level(void) { return g_level; }

__attribute__((format(printf, 3, 0))) static void vlog(enum log_level level,
                                                     const char *module, const char *fmt,
                                                     va_list ap)
{
  /* Room for the SIGUSR1 metrics line whole (about 2.1 KB of JSON). */
  char line[8192];
  struct timespec ts;
  struct tm tm;
  size_t n;
  int k;

  if (g_journal) {
    /* syslog priorities: err 3, warning 4, info 6, debug 7 (trace too). */
    static const int prio[] = {3, 4, 6, 7, 7};
    k = snprintf(line, sizeof line, "<%d>%-5s %s: ", prio[level], level_names[level], module);
    n = k > 0 ? (size_t)k : 0;
  } else {
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    k = snprintf(line + n, sizeof line - n, ".%03ldZ %-5s %s: ", ts.tv_nsec / 1000000L,
                 level_names[level], module);
    if (k > 0)
      n += (size_t)k;
  }
  if (n < sizeof line) {
    k = vsnprintf(line + n, sizeof line - n, fmt, ap);
    if (k > 0)
      n += (size_t)k;
  }
  if (n > sizeof line - 2)
    n = sizeof line - 2; /* truncated: keep the newline */
  line[n++] = '\n';
  /* One write per line; a short write to stderr is not worth a retry loop. */
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
}

void log_msg(enum log_level level, const char *module, const char *fmt, ...)
{
  va_list ap;
  if (level > g_level)
    return;
  va_start(ap, fmt);
  vlog(level, module, fmt, ap);
  va_end(ap);
}

void log_ratelimited(struct log_ratelimit *rl, enum log_level level, const char *module,
                     const char *fmt, ...)
{
  enum { BURST = 5 };
  struct timespec ts;
  double now;
  va_list ap;

  if (level > g_level)
    return;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  if (now - rl->window_start >= 10.0) {
    if (rl->suppressed)
      log_msg(level, module, "(%u similar messages suppressed in the last 10 s)", rl->suppressed);
    rl->window_start = now;
    rl->count = 0;
    rl->suppressed = 0;
  }
  if (rl->count >= BURST) {
    rl->suppressed++;
    return;
  }
  rl->count++;
  va_start(ap, fmt);
  vlog(level, module, fmt, ap);
  va_end(ap);
}
