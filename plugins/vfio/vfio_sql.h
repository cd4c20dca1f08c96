/* vfio_sql.h — the vfio plugin's record of what apply changed, kept apart from the C so
 * the SQL reads as SQL. One row per change: a binding file (before = what was there, NULL
 * when it did not exist; after = what apply wrote, NULL when it removed it; the backup
 * file's path) or a hostpci entry of the VM (before/after its values). Rollback undoes
 * the rows not yet undone, newest first, and marks them. */
#ifndef PLUGINS_VFIO_VFIO_SQL_H
#define PLUGINS_VFIO_VFIO_SQL_H

#define VFIO_SQL_SCHEMA                                                                                                \
        "CREATE TABLE IF NOT EXISTS vfio_changes("                                                                     \
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"                                                                      \
        "  ts TEXT NOT NULL,"     /* RFC 3339 UTC */                                                                   \
        "  kind TEXT NOT NULL,"   /* file, hostpci */                                                                  \
        "  target TEXT NOT NULL," /* the path as on the system, or hostpciN */                                         \
        "  vmid TEXT,"                                                                                                 \
        "  before TEXT,"                                                                                               \
        "  after TEXT,"                                                                                                \
        "  backup TEXT,"                                                                                               \
        "  undone INTEGER NOT NULL DEFAULT 0"                                                                          \
        ");"

#define VFIO_SQL_INSERT                                                                                                \
        "INSERT INTO vfio_changes(ts, kind, target, vmid, before, after, backup)"                                      \
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7);"

#define VFIO_SQL_COUNT_ACTIVE "SELECT COUNT(*) FROM vfio_changes WHERE undone = 0;"

#define VFIO_SQL_ACTIVE                                                                                                \
        "SELECT id, kind, target, vmid, before, after, backup FROM vfio_changes"                                       \
        " WHERE undone = 0 ORDER BY id DESC;"

/* ?1 is a comma-separated list of ids ("12,7,3"). */
#define VFIO_SQL_UNDO_LIST                                                                                             \
        "UPDATE vfio_changes SET undone = 1 WHERE undone = 0 AND"                                                      \
        " instr(',' || ?1 || ',', ',' || id || ',') > 0;"

#endif
