/* log.h — the daemon's logging: journald with structured fields (PLUGIN=, INSTANCE=)
 * when stderr is connected to the journal, plain stderr lines otherwise. Levels are
 * syslog's. The *_errno forms set errno for %m and return -abs(error), so a caller can
 * `return log_error_errno(r, "Failed to ...: %m");`. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stdarg.h>
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

#endif
