/* store.c — the thin sqlite3 wrapper behind a plugin instance's store: opens the
 * database 0600 in WAL mode with a busy time-out, runs caller SQL with every parameter
 * bound as text (never spliced into the SQL), streams rows to a callback, and keeps a
 * small key/value table on prepared statements. A single-statement SQL text seen
 * again reuses its prepared statement from a small cache (a plugin writing one row per
 * call inside its own BEGIN/COMMIT then pays the parse once, not per row). sqlite
 * result codes become negative errno values; the sqlite message stays available
 * through store_errmsg(). */
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include "store.h"
#include "store_sql.h"
#include "util.h"

#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_CACHE 16

/* A prepared single statement kept for its SQL text; in_use while a call steps it (a
 * row callback running the same SQL gets a fresh statement). */
typedef struct store_cached {
        char *sql;
        size_t hash;
        sqlite3_stmt *st;
        uint64_t used;
        bool in_use;
} store_cached;

struct store {
        sqlite3 *db;
        store_cached cache[STORE_CACHE];
        uint64_t clock;
        sqlite3_stmt *kv_get;
        sqlite3_stmt *kv_set;
        sqlite3_stmt *kv_delete;
};

static int errno_from_sqlite(int rc) {
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_ROW:
        case SQLITE_DONE:
                return 0;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_PERM:
        case SQLITE_AUTH:
                return -EPERM;
        case SQLITE_READONLY:
                return -EROFS;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_CANTOPEN:
                return -EACCES;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_CONSTRAINT:
                return -EEXIST;
        case SQLITE_TOOBIG:
                return -E2BIG;
        case SQLITE_RANGE:
                return -ERANGE;
        case SQLITE_INTERRUPT:
                return -EINTR;
        case SQLITE_ERROR:  /* SQL syntax, missing table...: the caller's statement */
        case SQLITE_MISUSE:
        case SQLITE_MISMATCH:
                return -EINVAL;
        default:
                return -EIO;
        }
}

static int bind_params(sqlite3_stmt *st, const char *const *params, size_t n_params) {
        int count = sqlite3_bind_parameter_count(st);
        /* An unbound parameter would silently be NULL: treat it as the caller's bug. */
        if ((size_t)count > n_params)
                return -EINVAL;
        for (int i = 0; i < count; i++) {
                int rc = params[i] ? sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_TRANSIENT)
                                   : sqlite3_bind_null(st, i + 1);
                if (rc != SQLITE_OK)
                        return errno_from_sqlite(rc);
        }
        return 0;
}

/* Steps st to the end. 0 when done, 1 when row asked to stop, negative on error. */
static int step_all(sqlite3_stmt *st, org_row_fn row, void *userdata) {
        int n = sqlite3_column_count(st);
        _cleanup_free_ const char **cols = NULL;
        _cleanup_free_ const char **names = NULL;

        if (row && n > 0) {
                cols = calloc((size_t)n, sizeof(*cols));
                names = calloc((size_t)n, sizeof(*names));
                if (!cols || !names)
                        return -ENOMEM;
                for (int i = 0; i < n; i++) {
                        names[i] = sqlite3_column_name(st, i);
                        if (!names[i])
                                return -ENOMEM;
                }
        }
        for (;;) {
                int rc = sqlite3_step(st);
                if (rc == SQLITE_DONE)
                        return 0;
                if (rc != SQLITE_ROW)
                        return errno_from_sqlite(rc);
                if (!row)
                        continue;
                for (int i = 0; i < n; i++) {
                        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
                                cols[i] = NULL;
                                continue;
                        }
                        cols[i] = (const char *)sqlite3_column_text(st, i);
                        if (!cols[i])
                                return -ENOMEM;
                }
                int r = row(userdata, n, cols, names);
                if (r < 0)
                        return r;
                if (r > 0)
                        return 1;
        }
}

static size_t sql_hash(const char *sql) {
        size_t h = 1469598103934665603ULL;
        for (; *sql; sql++)
                h = (h ^ (unsigned char)*sql) * 1099511628211ULL;
        return h;
}

static bool only_space(const char *s) {
        for (; s && *s; s++)
                if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' && *s != ';')
                        return false;
        return true;
}

/* The cached statement for sql, prepared (and cached) on first use; NULL when sql is not
 * a single statement or the cache entry is busy: the caller takes the plain path. */
static store_cached *cached(store *s, const char *sql, int *ret_error) {
        size_t h = sql_hash(sql);
        store_cached *victim = NULL;
        *ret_error = 0;
        for (size_t i = 0; i < STORE_CACHE; i++) {
                store_cached *c = &s->cache[i];
                if (c->sql && c->hash == h && streq(c->sql, sql)) {
                        if (c->in_use)
                                return NULL;
                        c->used = ++s->clock;
                        return c;
                }
                if (!c->in_use && (!victim || !c->sql || (victim->sql && c->used < victim->used)))
                        victim = c;
        }
        if (!victim)
                return NULL;
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail);
        if (rc != SQLITE_OK) {
                *ret_error = errno_from_sqlite(rc);
                return NULL;
        }
        if (!st || !only_space(tail)) {
                sqlite3_finalize(st);
                return NULL;
        }
        char *copy = strdup(sql);
        if (!copy) {
                sqlite3_finalize(st);
                return NULL;
        }
        sqlite3_finalize(victim->st);
        free(victim->sql);
        *victim = (store_cached){.sql = copy, .hash = h, .st = st, .used = ++s->clock};
        return victim;
}

/* Runs every statement of sql in turn, each bound to the same parameters. */
static int run_sql(store *s, const char *sql, const char *const *params, size_t n_params, org_row_fn row,
                   void *userdata) {
        if (!s || !sql || (n_params > 0 && !params))
                return -EINVAL;
        int err;
        store_cached *c = cached(s, sql, &err);
        if (err < 0)
                return err;
        if (c) {
                c->in_use = true;
                int r = bind_params(c->st, params, n_params);
                if (r >= 0)
                        r = step_all(c->st, row, userdata);
                sqlite3_reset(c->st);
                sqlite3_clear_bindings(c->st);
                c->in_use = false;
                return r < 0 ? r : 0;
        }
        const char *tail = sql;
        while (tail && *tail) {
                sqlite3_stmt *st = NULL;
                const char *start = tail;
                int rc = sqlite3_prepare_v2(s->db, start, -1, &st, &tail);
                if (rc != SQLITE_OK)
                        return errno_from_sqlite(rc);
                if (!st) { /* white space, a comment or an empty statement */
                        if (!tail || tail == start)
                                break;
                        continue;
                }
                int r = bind_params(st, params, n_params);
                if (r >= 0)
                        r = step_all(st, row, userdata);
                sqlite3_finalize(st);
                if (r < 0)
                        return r;
                if (r > 0)
                        return 0;
        }
        return 0;
}

static int check_wal(void *userdata, int n, char **values, char **names) {
        bool *is_wal = userdata;
        *is_wal = n == 1 && values[0] && sqlite3_stricmp(values[0], "wal") == 0;
        return 0;
}

/* Creates the file ourselves so it is 0600 from its first byte (sqlite would use 0644
 * less the umask); sqlite gives the -wal and -shm files the database file's mode. */
static int precreate(const char *path) {
        _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        /* An existing file that others could read is tightened, never loosened. */
        if ((st.st_mode & 0077) && fchmod(fd, st.st_mode & 0700) < 0)
                return -errno;
        return 0;
}

void store_close(store *s) {
        if (!s)
                return;
        sqlite3_finalize(s->kv_get);
        sqlite3_finalize(s->kv_set);
        sqlite3_finalize(s->kv_delete);
        for (size_t i = 0; i < STORE_CACHE; i++) {
                sqlite3_finalize(s->cache[i].st);
                free(s->cache[i].sql);
        }
        sqlite3_close(s->db);
        free(s);
}

/* A store sees a few statements per tick: sqlite's per-connection bulk page-cache
 * allocation and lookaside slots (about 130 KiB of heap per store, touched at once)
 * buy nothing here. Before the first connection only; later calls fail harmlessly. */
static void store_configure_once(void) {
        static bool done;
        if (done)
                return;
        done = true;
        (void)sqlite3_config(SQLITE_CONFIG_PAGECACHE, NULL, 0, 0);
        (void)sqlite3_config(SQLITE_CONFIG_LOOKASIDE, 0, 0);
}

int store_open(const char *path, store **ret) {
        if (isempty(path) || !ret)
                return -EINVAL;
        int r = precreate(path);
        if (r < 0)
                return r;
        store_configure_once();

        store *s = new0(store, 1);
        if (!s)
                return -ENOMEM;
        int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
        if (rc != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                goto fail;
        }
        sqlite3_extended_result_codes(s->db, 1);
        rc = sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
        if (rc != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                goto fail;
        }

        bool is_wal = false;
        rc = sqlite3_exec(s->db, STORE_SQL_JOURNAL_MODE, check_wal, &is_wal, NULL);
        if (rc != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                goto fail;
        }
        /* A file system without shared memory support keeps the old mode silently. */
        if (!is_wal) {
                r = -EOPNOTSUPP;
                goto fail;
        }
        rc = sqlite3_exec(s->db, STORE_SQL_SETUP, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                goto fail;
        }

        if ((rc = sqlite3_prepare_v3(s->db, STORE_SQL_KV_GET, -1, SQLITE_PREPARE_PERSISTENT, &s->kv_get, NULL)) !=
                    SQLITE_OK ||
            (rc = sqlite3_prepare_v3(s->db, STORE_SQL_KV_SET, -1, SQLITE_PREPARE_PERSISTENT, &s->kv_set, NULL)) !=
                    SQLITE_OK ||
            (rc = sqlite3_prepare_v3(s->db, STORE_SQL_KV_DELETE, -1, SQLITE_PREPARE_PERSISTENT, &s->kv_delete,
                                     NULL)) != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                goto fail;
        }

        *ret = s;
        return 0;
fail:
        store_close(s);
        return r;
}

int store_exec(store *s, const char *sql, const char *const *params, size_t n_params) {
        return run_sql(s, sql, params, n_params, NULL, NULL);
}

/* The column texts handed to row are valid during that call only. A negative return
 * from row is returned as the error; a positive one stops quietly (0). */
int store_query(store *s, const char *sql, const char *const *params, size_t n_params, org_row_fn row,
                void *userdata) {
        if (!row)
                return -EINVAL;
        return run_sql(s, sql, params, n_params, row, userdata);
}

int store_kv_get(store *s, const char *key, char **ret_value) {
        if (!s || !key || !ret_value)
                return -EINVAL;
        sqlite3_stmt *st = s->kv_get;
        int r;
        int rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (rc != SQLITE_OK) {
                r = errno_from_sqlite(rc);
                goto out;
        }
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE || (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_NULL)) {
                r = -ENOENT;
                goto out;
        }
        if (rc != SQLITE_ROW) {
                r = errno_from_sqlite(rc);
                goto out;
        }
        const char *v = (const char *)sqlite3_column_text(st, 0);
        char *copy = v ? strdup(v) : NULL;
        if (!copy) {
                r = -ENOMEM;
                goto out;
        }
        *ret_value = copy;
        r = 0;
out:
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return r;
}

/* A NULL value deletes the key. */
int store_kv_set(store *s, const char *key, const char *value) {
        if (!s || !key)
                return -EINVAL;
        sqlite3_stmt *st = value ? s->kv_set : s->kv_delete;
        int rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK && value)
                rc = sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        int r = rc == SQLITE_DONE ? 0 : rc == SQLITE_ROW ? -EIO : errno_from_sqlite(rc);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return r;
}

const char *store_errmsg(store *s) {
        if (!s || !s->db)
                return "no store";
        return sqlite3_errmsg(s->db);
}
