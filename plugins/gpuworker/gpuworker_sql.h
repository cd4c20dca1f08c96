/* gpuworker_sql.h — the task results table: one row per task_id, its last attempt.
 * A row in state "done" answers a re-delivered task without running it again; "err"
 * lets the next attempt run; "running" rows left by an agent that stopped mid-task are
 * turned into "err" (interrupted) at start. */
#ifndef PLUGINS_GPUWORKER_SQL_H
#define PLUGINS_GPUWORKER_SQL_H

#define GPUW_SQL_SCHEMA                                                                                                \
        "CREATE TABLE IF NOT EXISTS gpuworker_tasks("                                                                  \
        " task_id TEXT PRIMARY KEY, attempt INTEGER, gpu INTEGER, pci TEXT,"                                           \
        " state TEXT NOT NULL, error TEXT, returncode INTEGER, duration_ms INTEGER,"                                   \
        " result TEXT, started_us INTEGER, finished_us INTEGER);"                                                      \
        "CREATE INDEX IF NOT EXISTS gpuworker_tasks_finished ON gpuworker_tasks(finished_us);"

#define GPUW_SQL_INTERRUPTED                                                                                           \
        "UPDATE gpuworker_tasks SET state = 'err', error = 'interrupted: the agent stopped while it ran',"             \
        " finished_us = ?1 WHERE state = 'running'"

#define GPUW_SQL_LOOKUP "SELECT state, result, attempt FROM gpuworker_tasks WHERE task_id = ?1"

#define GPUW_SQL_START                                                                                                 \
        "INSERT INTO gpuworker_tasks(task_id, attempt, gpu, pci, state, started_us) VALUES(?1, ?2, ?3, ?4,"            \
        " 'running', ?5) ON CONFLICT(task_id) DO UPDATE SET attempt = ?2, gpu = ?3, pci = ?4,"                         \
        " state = 'running', error = NULL, returncode = NULL, duration_ms = NULL, result = NULL,"                      \
        " started_us = ?5, finished_us = NULL"

#define GPUW_SQL_FINISH                                                                                                \
        "UPDATE gpuworker_tasks SET state = ?2, error = ?3, returncode = ?4, duration_ms = ?5, result = ?6,"           \
        " finished_us = ?7 WHERE task_id = ?1"

#define GPUW_SQL_PRUNE                                                                                                 \
        "DELETE FROM gpuworker_tasks WHERE state != 'running' AND task_id NOT IN (SELECT task_id FROM"                 \
        " gpuworker_tasks ORDER BY COALESCE(finished_us, started_us) DESC LIMIT ?1)"

#define GPUW_SQL_RECENT                                                                                                \
        "SELECT task_id, attempt, gpu, pci, state, error, returncode, duration_ms, started_us, finished_us"            \
        " FROM gpuworker_tasks ORDER BY COALESCE(finished_us, started_us) DESC LIMIT ?1"

#endif
