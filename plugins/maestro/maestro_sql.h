/* maestro_sql.h — the task table and its statements, kept apart from the C so the SQL
 * reads as SQL. One row per task, the source of truth: a task is answered `accepted`
 * only once its row is committed. Every change of a loop turn goes into one
 * transaction (the store keeps the row statement prepared), so a turn costs one
 * commit however many tasks moved. Times are Unix microseconds. */
#ifndef PLUGINS_MAESTRO_MAESTRO_SQL_H
#define PLUGINS_MAESTRO_MAESTRO_SQL_H

#define MAESTRO_SQL_SCHEMA                                                                                             \
        "CREATE TABLE IF NOT EXISTS maestro_tasks("                                                                    \
        "  id TEXT PRIMARY KEY,"                                                                                       \
        "  spec TEXT,"   /* the run payload: {type, cmd, shell, cwd, env, timeout} */                                  \
        "  pin INTEGER," /* the pinned GPU, NULL: any */                                                               \
        "  priority INTEGER NOT NULL DEFAULT 0,"                                                                       \
        "  max_retries INTEGER NOT NULL DEFAULT 2,"                                                                    \
        "  timeout_ms INTEGER NOT NULL DEFAULT 3600000,"                                                               \
        "  deadline_us INTEGER,"                                                                                       \
        "  seq INTEGER NOT NULL DEFAULT 0,"                                                                            \
        "  created_us INTEGER NOT NULL DEFAULT 0,"                                                                     \
        "  updated_us INTEGER NOT NULL DEFAULT 0,"                                                                     \
        "  state TEXT NOT NULL,"                                                                                       \
        "  attempt INTEGER NOT NULL DEFAULT 0,"                                                                        \
        "  failures INTEGER NOT NULL DEFAULT 0,"                                                                       \
        "  lease_gpu INTEGER,"                                                                                         \
        "  last_gpu INTEGER,"                                                                                          \
        "  lease_expiry_us INTEGER,"                                                                                   \
        "  next_try_us INTEGER,"                                                                                       \
        "  cancel_requested INTEGER NOT NULL DEFAULT 0,"                                                               \
        "  error TEXT,"                                                                                                \
        "  result TEXT,"                                                                                               \
        "  final INTEGER NOT NULL DEFAULT 0" /* done, failed, cancelled (a plain column: an IN list                    \
                                              * in the index predicate costs a temporary table per row) */             \
        ");"                                                                                                           \
        "CREATE INDEX IF NOT EXISTS maestro_tasks_open ON maestro_tasks(seq) WHERE final = 0;"

/* Final tasks older than ?1 (keep_final), at most ?2 per pass. No index for it (one
 * more write per finished task): rows are in submission order, so the old ones are
 * met first; a pass every 10 minutes scans at most the table. */
#define MAESTRO_SQL_PRUNE                                                                                              \
        "DELETE FROM maestro_tasks WHERE rowid IN (SELECT rowid FROM maestro_tasks"                                    \
        " WHERE final = 1 AND updated_us < ?1 LIMIT ?2);"

/* A new row, then updates of what changes: run once per row changed in the turn, all
 * inside one transaction; the store keeps both statements prepared. */
#define MAESTRO_SQL_INSERT_COLUMNS 21
#define MAESTRO_SQL_INSERT                                                                                             \
        "INSERT INTO maestro_tasks(id, spec, pin, priority, max_retries, timeout_ms, deadline_us, seq,"                \
        " created_us, updated_us, state, attempt, failures, lease_gpu, last_gpu, lease_expiry_us,"                     \
        " next_try_us, cancel_requested, error, result, final)"                                                        \
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21);"

#define MAESTRO_SQL_UPDATE_COLUMNS 13
#define MAESTRO_SQL_UPDATE                                                                                             \
        "UPDATE maestro_tasks SET updated_us = ?2, state = ?3, attempt = ?4, failures = ?5, lease_gpu = ?6,"           \
        " last_gpu = ?7, lease_expiry_us = ?8, next_try_us = ?9, cancel_requested = ?10, error = ?11,"                 \
        " result = ?12, final = ?13 WHERE id = ?1;"

/* The same for a task still open (final stays 0): a SET without `final` spares the
 * partial index maestro_tasks_open a delete and an insert per update (sqlite rewrites
 * the index entries of every index whose columns, or WHERE, the SET names). */
#define MAESTRO_SQL_UPDATE_OPEN_COLUMNS 12
#define MAESTRO_SQL_UPDATE_OPEN                                                                                        \
        "UPDATE maestro_tasks SET updated_us = ?2, state = ?3, attempt = ?4, failures = ?5, lease_gpu = ?6,"           \
        " last_gpu = ?7, lease_expiry_us = ?8, next_try_us = ?9, cancel_requested = ?10, error = ?11,"                 \
        " result = ?12 WHERE id = ?1;"

#define MAESTRO_SQL_OPEN                                                                                               \
        "SELECT id, spec, pin, priority, max_retries, timeout_ms, deadline_us, seq, created_us, state,"                \
        " attempt, failures, lease_gpu, last_gpu, lease_expiry_us, next_try_us, cancel_requested, error"               \
        " FROM maestro_tasks WHERE final = 0 ORDER BY seq;"

#define MAESTRO_SQL_MAX_SEQ "SELECT COALESCE(MAX(seq), 0) FROM maestro_tasks;"

#define MAESTRO_SQL_GET                                                                                                \
        "SELECT id, state, pin, priority, attempt, failures, lease_gpu, last_gpu, created_us, updated_us,"             \
        " error AS last_error, result, spec FROM maestro_tasks WHERE id = ?1;"

/* ?1: a JSON array of ids; the ones already in the store. */
#define MAESTRO_SQL_KNOWN "SELECT id, state FROM maestro_tasks WHERE id IN (SELECT value FROM json_each(?1));"

#define MAESTRO_SQL_LIST                                                                                               \
        "SELECT id, state, pin, priority, attempt, failures, lease_gpu, last_gpu, created_us, updated_us,"             \
        " error AS last_error FROM maestro_tasks WHERE (?1 IS NULL OR state = ?1) ORDER BY seq DESC LIMIT ?2;"

#endif
