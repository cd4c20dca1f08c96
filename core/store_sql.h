/* store_sql.h — the store's schema and fixed statements, kept apart from the C so the
 * SQL reads as SQL. Every open applies the pragmas (synchronous is per connection;
 * journal_mode=WAL persists but costs nothing to repeat) and creates what is missing. */
#ifndef CORE_STORE_SQL_H
#define CORE_STORE_SQL_H

/* Returns one row with the mode now in force: it must say "wal". */
#define STORE_SQL_JOURNAL_MODE "PRAGMA journal_mode=WAL;"

#define STORE_SQL_SETUP                                                                  \
        "PRAGMA synchronous=NORMAL;"                                                     \
        "CREATE TABLE IF NOT EXISTS kv("                                                 \
        "  key TEXT PRIMARY KEY,"                                                        \
        "  value TEXT,"                                                                  \
        "  updated_at INTEGER"                                                           \
        ");"

#define STORE_SQL_KV_GET "SELECT value FROM kv WHERE key = ?1;"

/* updated_at is Unix seconds, set by sqlite so callers cannot get it wrong. */
#define STORE_SQL_KV_SET                                                                 \
        "INSERT INTO kv(key, value, updated_at)"                                         \
        " VALUES(?1, ?2, CAST(strftime('%s','now') AS INTEGER))"                         \
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"                        \
        " updated_at = excluded.updated_at;"

#define STORE_SQL_KV_DELETE "DELETE FROM kv WHERE key = ?1;"

#endif
