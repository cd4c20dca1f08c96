/* notify.h — the systemd notification protocol (Type=notify): READY, RELOADING,
 * STOPPING, STATUS. Harmless no-ops when NOTIFY_SOCKET is not set. */
#ifndef CORE_NOTIFY_H
#define CORE_NOTIFY_H

void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
