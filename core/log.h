/* log.h — the daemon's logging: journald with structured fields (PLUGIN=, INSTANCE=)
 * when stderr is connected to the journal, plain stderr lines otherwise. Levels are
 * syslog's. The *_errno forms set errno for %m and return -abs(error), so a caller can
 * `return log_error_errno(r, "Failed to ...: %m");`. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <syslog.h>

/* Chooses journald or stderr; call once at start. */
void log_open(void);
void log_set_max_level(int level);
int log_get_max_level(void);
/* Parses "err", "warning", "notice", "info", "debug" into a syslog level. */
int log_level_from_string(const char *s);
const char *log_level_to_string(int level);

int log_internalv(int level, int error, const char *plugin, const char *instance, const char *fmt, va_list ap)
        __attribute__((format(printf, 5, 0)));
int log_internal(int level, int error, const char *plugin, const char *instance, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));

#define log_full_errno(level, error, ...) log_internal((level), (error), NULL, NULL, __VA_ARGS__)
#define log_debug(...) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...) log_full_errno(LOG_DEBUG, (e), __VA_ARGS__)
#define log_info_errno(e, ...) log_full_errno(LOG_INFO, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, (e), __VA_ARGS__)
#define log_oom() log_error_errno(ENOMEM, "Out of memory.")

/* A string from a peer (control client, NATS message, bus payload) as it may be
 * logged: control characters, newlines and invalid UTF-8 written as \xNN, at most
 * LOG_STR_MAX - 1 bytes. The buffer lives until the end of the enclosing statement's
 * block, so use it as an argument: log_info("from %s", log_str(origin)). Every log
 * line is also cleaned of control characters other than newline (log_internalv), so a
 * forgotten call site cannot put escape codes on a terminal. */
#define LOG_STR_MAX 256
#define log_str(s) log_escape((s), (char[LOG_STR_MAX]){0}, LOG_STR_MAX)
const char *log_escape(const char *s, char *buf, size_t size);

/* Rate limiting of a message a peer can trigger at will (refused connections):
 * at most `burst` in each `interval_us`; the first one logged after a pause says how
 * many were suppressed. */
typedef struct log_ratelimit {
        uint64_t interval_us;
        unsigned burst;
        uint64_t begin_us;
        unsigned n;
        unsigned long long suppressed;
} log_ratelimit;
#define LOG_RATELIMIT_INIT(interval, b) ((log_ratelimit){.interval_us = (interval), .burst = (b)})
/* true: log it now; *ret_suppressed is then the count suppressed before it. */
bool log_ratelimit_test(log_ratelimit *rl, uint64_t now_us, unsigned long long *ret_suppressed);

#endif
