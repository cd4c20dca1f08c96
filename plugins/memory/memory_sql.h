/* memory_sql.h — the memory plugin's journal schema and statements, kept apart from the
 * C so the SQL reads as SQL. One row per action (a lever moved, or under dry_run one
 * that would have moved), with the readings when it was decided and, filled at the next
 * reading, the readings after it. The store applies WAL and synchronous=NORMAL when it
 * opens the instance's database; the schema only creates what is missing. */
#ifndef PLUGINS_MEMORY_MEMORY_SQL_H
#define PLUGINS_MEMORY_MEMORY_SQL_H

#define MEMORY_SQL_SCHEMA                                                                \
        "CREATE TABLE IF NOT EXISTS memory_actions("                                     \
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"                                        \
        "  ts TEXT NOT NULL,"                 /* RFC 3339 UTC */                         \
        "  reason TEXT NOT NULL,"             /* mem_low, mem_ok, phase NAME, reconcile */ \
        "  lever TEXT NOT NULL,"              /* arc_max, swappiness, balloon */         \
        "  before TEXT,"                      /* NULL: not known (balloon at start) */   \
        "  after TEXT NOT NULL,"                                                         \
        "  detail TEXT,"                      /* the qm command line */                 \
        "  mem_available INTEGER,"            /* bytes */                                \
        "  arc_size INTEGER,"                 /* bytes */                                \
        "  swap_in_rate REAL,"                /* pages per second */                     \
        "  swap_out_rate REAL,"                                                          \
        "  phase TEXT NOT NULL,"                                                         \
        "  alert INTEGER NOT NULL,"                                                      \
        "  dry_run INTEGER NOT NULL,"                                                    \
        "  pending_after INTEGER NOT NULL DEFAULT 1,"                                    \
        "  mem_available_after INTEGER,"                                                 \
        "  arc_size_after INTEGER"                                                       \
        ");"                                                                             \
        "CREATE INDEX IF NOT EXISTS memory_actions_pending ON memory_actions(pending_after)" \
        "  WHERE pending_after = 1;"

#define MEMORY_SQL_INSERT                                                                \
        "INSERT INTO memory_actions(ts, reason, lever, before, after, detail, mem_available," \
        " arc_size, swap_in_rate, swap_out_rate, phase, alert, dry_run)"                  \
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13);"

/* Keeps the newest ?1 rows: the journal must not grow without bound. */
#define MEMORY_SQL_PRUNE                                                                 \
        "DELETE FROM memory_actions WHERE id <= (SELECT MAX(id) FROM memory_actions) - ?1;"

#define MEMORY_SQL_AFTER                                                                 \
        "UPDATE memory_actions SET mem_available_after = ?1, arc_size_after = ?2,"       \
        " pending_after = 0 WHERE pending_after = 1;"

#define MEMORY_SQL_HISTORY                                                               \
        "SELECT id, ts, reason, lever, before, after, detail, mem_available, arc_size,"  \
        " swap_in_rate, swap_out_rate, phase, alert, dry_run, mem_available_after,"      \
        " arc_size_after FROM memory_actions ORDER BY id DESC LIMIT ?1;"

#endif
