/* maestro_sql.h — the task table and its statements, kept apart from the C so the SQL
 * reads as SQL. One row per task, the source of truth: a task is answered `accepted`
 * only once its row is committed. Every change of a loop turn goes into one
 * transaction as one statement over a JSON array (json_each), so the statement is
 * prepared once per turn however many tasks moved. Times are Unix microseconds. */
#ifndef PLUGINS_MAESTRO_MAESTRO_SQL_H
#define PLUGINS_MAESTRO_MAESTRO_SQL_H

#define MAESTRO_SQL_SCHEMA                                                               \
        "CREATE TABLE IF NOT EXISTS maestro_tasks("                                      \
        "  id TEXT PRIMARY KEY,"                                                         \
        "  spec TEXT,"                     /* the run payload: {type, cmd, shell, cwd, env, timeout} */ \
        "  pin INTEGER,"                   /* the pinned GPU, NULL: any */               \
        "  priority INTEGER NOT NULL DEFAULT 0,"                                         \
        "  max_retries INTEGER NOT NULL DEFAULT 2,"                                      \
        "  timeout_ms INTEGER NOT NULL DEFAULT 3600000,"                                 \
        "  deadline_us INTEGER,"                                                         \
        "  seq INTEGER NOT NULL DEFAULT 0,"                                              \
        "  created_us INTEGER NOT NULL DEFAULT 0,"                                       \
        "  updated_us INTEGER NOT NULL DEFAULT 0,"                                       \
        "  state TEXT NOT NULL,"                                                         \
        "  attempt INTEGER NOT NULL DEFAULT 0,"                                          \
        "  failures INTEGER NOT NULL DEFAULT 0,"                                         \
        "  lease_gpu INTEGER,"                                                           \
        "  last_gpu INTEGER,"                                                            \
        "  lease_expiry_us INTEGER,"                                                     \
        "  next_try_us INTEGER,"                                                         \
        "  cancel_requested INTEGER NOT NULL DEFAULT 0,"                                 \
        "  error TEXT,"                                                                  \
        "  result TEXT"                                                                  \
        ");"                                                                             \
        "CREATE INDEX IF NOT EXISTS maestro_tasks_open ON maestro_tasks(seq)"            \
        "  WHERE state NOT IN ('done', 'failed', 'cancelled', 'rejected');"              \
        "CREATE INDEX IF NOT EXISTS maestro_tasks_state ON maestro_tasks(state, seq);"

/* ?1: a JSON array of rows; spec only matters to a new row. */
#define MAESTRO_SQL_UPSERT                                                               \
        "INSERT INTO maestro_tasks(id, spec, pin, priority, max_retries, timeout_ms, deadline_us, seq," \
        " created_us, updated_us, state, attempt, failures, lease_gpu, last_gpu, lease_expiry_us," \
        " next_try_us, cancel_requested, error, result)"                                 \
        " SELECT json_extract(value, '$.id'), json_extract(value, '$.spec'),"            \
        " json_extract(value, '$.pin'), json_extract(value, '$.pr'), json_extract(value, '$.mr'),"  \
        " json_extract(value, '$.to'), json_extract(value, '$.dl'), json_extract(value, '$.seq')," \
        " json_extract(value, '$.cr'), json_extract(value, '$.up'), json_extract(value, '$.st')," \
        " json_extract(value, '$.at'), json_extract(value, '$.fl'), json_extract(value, '$.lg')," \
        " json_extract(value, '$.pg'), json_extract(value, '$.le'), json_extract(value, '$.nt')," \
        " json_extract(value, '$.cx'), json_extract(value, '$.err'), json_extract(value, '$.res')" \
        " FROM json_each(?1) WHERE true"                                                 \
        " ON CONFLICT(id) DO UPDATE SET updated_us = excluded.updated_us, state = excluded.state," \
        " attempt = excluded.attempt, failures = excluded.failures, lease_gpu = excluded.lease_gpu," \
        " last_gpu = excluded.last_gpu, lease_expiry_us = excluded.lease_expiry_us,"     \
        " next_try_us = excluded.next_try_us, cancel_requested = excluded.cancel_requested," \
        " error = excluded.error, result = excluded.result;"

#define MAESTRO_SQL_OPEN                                                                 \
        "SELECT id, spec, pin, priority, max_retries, timeout_ms, deadline_us, seq, created_us, state," \
        " attempt, failures, lease_gpu, last_gpu, lease_expiry_us, next_try_us, cancel_requested, error" \
        " FROM maestro_tasks WHERE state NOT IN ('done', 'failed', 'cancelled', 'rejected') ORDER BY seq;"

#define MAESTRO_SQL_MAX_SEQ "SELECT COALESCE(MAX(seq), 0) FROM maestro_tasks;"

#define MAESTRO_SQL_GET                                                                  \
        "SELECT id, state, pin, priority, attempt, failures, lease_gpu, last_gpu, created_us, updated_us," \
        " error AS last_error, result, spec FROM maestro_tasks WHERE id = ?1;"

/* ?1: a JSON array of ids; the ones already in the store. */
#define MAESTRO_SQL_KNOWN "SELECT id, state FROM maestro_tasks WHERE id IN (SELECT value FROM json_each(?1));"

#define MAESTRO_SQL_LIST                                                                 \
        "SELECT id, state, pin, priority, attempt, failures, lease_gpu, last_gpu, created_us, updated_us," \
        " error AS last_error FROM maestro_tasks WHERE (?1 IS NULL OR state = ?1) ORDER BY seq DESC LIMIT ?2;"

#endif
