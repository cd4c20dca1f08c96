/* irq_sql.h — the irq plugin's store: the original value of everything it changed, so
 * `disable`, unload and `restore` put the host back as it was, even after a crash or a
 * restart of agentd in between (the first original is kept: INSERT OR IGNORE). Keys are
 * sysroot paths ("/proc/irq/42/smp_affinity_list") or "thread:VMID:PID:TID". */
#ifndef PLUGINS_IRQ_IRQ_SQL_H
#define PLUGINS_IRQ_IRQ_SQL_H

#define IRQ_SQL_SCHEMA                                                                                                 \
        "CREATE TABLE IF NOT EXISTS irq_originals("                                                                    \
        "  key TEXT PRIMARY KEY,"                                                                                      \
        "  value TEXT NOT NULL,"                                                                                       \
        "  saved_at TEXT NOT NULL" /* RFC 3339 UTC */                                                                  \
        ");"

#define IRQ_SQL_LOAD "SELECT key, value FROM irq_originals ORDER BY key;"

#define IRQ_SQL_SAVE "INSERT OR IGNORE INTO irq_originals(key, value, saved_at) VALUES(?1, ?2, ?3);"

#define IRQ_SQL_FORGET "DELETE FROM irq_originals WHERE key = ?1;"

#endif
