/*
 * web_log.c - web/'s log lines, in the gateway's format, below every other
 * file of web/ (they all log; this calls none of them).
 */
#include "web_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

/* The gateway's log format (<ISO time> LEVEL module: message), written by
 * hand because web/ may not include gateway/log.h.  Callers never pass a
 * token to it. */
void web_log(enum web_log_level level, const char *fmt, ...)
{
  char line[1024];
  struct timespec ts;
  struct tm tm;
  size_t n;
  int k;
  va_list ap;

  if (level > WEB_LOG_INFO && !getenv("FLEETGW_WEB_DEBUG"))
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
  k = snprintf(line + n, sizeof line - n, ".%03ldZ %-5s web: ", ts.tv_nsec / 1000000L,
               level_names[level]);
  if (k > 0)
    n += (size_t)k;
  if (n < sizeof line) {
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (k > 0)
      n += (size_t)k;
  }
  if (n > sizeof line - 2)
    n = sizeof line - 2;
  line[n++] = '\n';
  ssize_t wr = write(STDERR_FILENO, line, n);
  (void)wr;
}

