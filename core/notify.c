/* notify.c — sd_notify wrappers. RELOADING and READY bracket a config reload so that
 * `systemctl reload` waits for it; the watchdog pings are sent by sd-event itself
 * (sd_event_set_watchdog) from the loop, so a stuck loop stops them. */
#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "notify.h"

void notify_ready(void) { sd_notify(0, "READY=1"); }
void notify_reloading(void) { sd_notify(0, "RELOADING=1"); }
void notify_stopping(void) { sd_notify(0, "STOPPING=1"); }

void notify_status(const char *fmt, ...) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "STATUS=");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
        va_end(ap);
        sd_notify(0, buf);
}
