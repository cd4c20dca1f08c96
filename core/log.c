/* log.c — journald when stderr is the journal's stream (JOURNAL_STREAM matches), plain
 * "agentd[plugin:instance] level: message" lines on stderr otherwise; the escaping of
 * peer strings and the rate limiting of messages peers can trigger. */
#include <stdarg.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include "log.h"
#include "util.h"

static int max_level = LOG_INFO;
static bool use_journal = false;

static const char *const level_names[] = {
        [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",   [LOG_ERR] = "err",
        [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

/* JOURNAL_STREAM is "DEV:INODE" of the stream systemd connected stderr to; when it
 * still is our stderr, the journal gets structured entries. */
void log_open(void) {
        const char *js = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long long dev, ino;
        use_journal = false;
        if (js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
            (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino)
                use_journal = true;
}

void log_set_max_level(int level) { max_level = level; }
int log_get_max_level(void) { return max_level; }

int log_level_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                if (streq(s, level_names[i]))
                        return (int)i;
        if (streq(s, "error"))
                return LOG_ERR;
        if (streq(s, "warn"))
                return LOG_WARNING;
        return -EINVAL;
}

const char *log_level_to_string(int level) {
        if (level < 0 || (size_t)level >= ELEMENTSOF(level_names))
                return "?";
        return level_names[level];
}

int log_internalv(int level, int error, const char *plugin, const char *instance, const char *fmt, va_list ap) {
        int saved = errno;
        if (error < 0)
                error = -error;
        if (level > max_level)
                return -error;

        char raw[2048], msg[2048];
        errno = error; /* for %m */
        vsnprintf(raw, sizeof raw, fmt, ap);
        /* the net under every call site: no escape code reaches a terminal or the journal */
        str_escape(raw, strlen(raw), ESCAPE_CONTROLS | ESCAPE_KEEP_NEWLINE, msg, sizeof msg);

        if (use_journal) {
                char prio[16];
                snprintf(prio, sizeof prio, "PRIORITY=%d", level);
                if (instance)
                        sd_journal_send("MESSAGE=[%s:%s] %s", plugin ? plugin : "?", instance, msg, prio,
                                        "PLUGIN=%s", plugin ? plugin : "", "INSTANCE=%s", instance,
                                        "SYSLOG_IDENTIFIER=agentd", NULL);
                else
                        sd_journal_send("MESSAGE=%s", msg, prio, "SYSLOG_IDENTIFIER=agentd", NULL);
        } else {
                char line[2304];
                if (instance)
                        snprintf(line, sizeof line, "agentd[%s:%s] %s: %s\n", plugin ? plugin : "?", instance,
                                 log_level_to_string(level), msg);
                else
                        snprintf(line, sizeof line, "agentd: %s: %s\n", log_level_to_string(level), msg);
                /* one write per line so concurrent writers do not interleave */
                ssize_t _unused_ n = write(STDERR_FILENO, line, strlen(line));
        }
        errno = saved;
        return -error;
}

int log_internal(int level, int error, const char *plugin, const char *instance, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = log_internalv(level, error, plugin, instance, fmt, ap);
        va_end(ap);
        return r;
}

const char *log_escape(const char *s, char *buf, size_t size) {
        str_escape(s, s ? strlen(s) : 0, ESCAPE_CONTROLS, buf, size);
        return buf;
}

bool log_ratelimit_test(log_ratelimit *rl, uint64_t now_us, unsigned long long *ret_suppressed) {
        if (rl->begin_us == 0 || now_us - rl->begin_us >= rl->interval_us) {
                rl->begin_us = now_us;
                rl->n = 0;
        }
        if (rl->n >= rl->burst) {
                rl->suppressed++;
                return false;
        }
        rl->n++;
        *ret_suppressed = rl->suppressed;
        rl->suppressed = 0;
        return true;
}
