/*
 * log.h - levelled logging to stderr.
 *
 * One line per event: "2026-11-29T21:30:00.123Z WARN  lan: message".  Lines
 * are written with a single write(2) so concurrent writers do not interleave.
 * Secrets (private keys, tokens, passwords) are never passed to these
 * functions: callers log identifiers (ClientId, certificate id), not
 * material.  log_ratelimited() is for events a peer can trigger at will
 * (malformed datagrams): at most `burst` lines per 10 s per call site, then a
 * summary of how many were suppressed.
 */
#ifndef FLEETGW_LOG_H
#define FLEETGW_LOG_H

#include <stdbool.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3, LOG_TRACE = 4 };

/* Reads the environment once at start: under systemd's journal (stderr is
 * the journal stream, JOURNAL_STREAM names it) each line starts with the
 * syslog priority "<3>".."<7>" so that journalctl can filter by level, and
 * without the timestamp, which the journal adds itself. */
void log_init_from_env(void);

/* Parses "error", "warn", "info", "debug", "trace"; -1 if unknown. */
int log_level_parse(const char *s);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
static inline bool log_enabled(enum log_level l) { return l <= log_get_level(); }

void log_msg(enum log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Per-call-site rate limiter state; declare it static at the call site. */
struct log_ratelimit {
  double window_start;
  unsigned count;
  unsigned suppressed;
};
void log_ratelimited(struct log_ratelimit *rl, enum log_level level, const char *module,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define LOGE(mod, ...) log_msg(LOG_ERROR, mod, __VA_ARGS__)
#define LOGW(mod, ...) log_msg(LOG_WARN, mod, __VA_ARGS__)
#define LOGI(mod, ...) log_msg(LOG_INFO, mod, __VA_ARGS__)
#define LOGD(mod, ...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, mod, __VA_ARGS__); } while (0)
#define LOGT(mod, ...) do { if (log_enabled(LOG_TRACE)) log_msg(LOG_TRACE, mod, __VA_ARGS__); } while (0)

#endif
