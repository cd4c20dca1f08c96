/* test-store.c — the store against a real sqlite file in a private temporary directory:
 * file mode, WAL mode, key/value round trips, text-bound parameters (hostile strings
 * stay data), row callbacks with names and NULLs, errors, and persistence across a
 * reopen. */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "test.h"
#include "util.h"

static char dir[] = "/tmp/test-store-XXXXXX";
static char dbpath[256];

typedef struct rows {
        int n;
        char text[1024];
} rows;

/* Appends "name=value|..." per row, ";" between rows, NULL as "(null)". */
static int collect(void *userdata, int n, const char *const *cols, const char *const *names) {
        rows *r = userdata;
        size_t len = strlen(r->text);
        for (int i = 0; i < n; i++) {
                int w = snprintf(r->text + len, sizeof(r->text) - len, "%s%s=%s", i ? "|" : "", names[i],
                                 cols[i] ? cols[i] : "(null)");
                CHECK(w > 0 && (size_t)w < sizeof(r->text) - len);
                len += (size_t)w;
        }
        int w = snprintf(r->text + len, sizeof(r->text) - len, ";");
        CHECK(w == 1);
        r->n++;
        return 0;
}

static int stop_after_one(void *userdata, int n, const char *const *cols, const char *const *names) {
        int *count = userdata;
        (*count)++;
        return 1;
}

static int fail_row(void *userdata, int n, const char *const *cols, const char *const *names) {
        return -ECANCELED;
}

static void test_open_mode_and_wal(void) {
        store *s = NULL;
        CHECK_INT(store_open(dbpath, &s), 0);
        CHECK(s);

        struct stat st;
        CHECK(stat(dbpath, &st) == 0);
        CHECK_INT(st.st_mode & 0777, 0600);

        rows r = { 0 };
        CHECK_INT(store_query(s, "PRAGMA journal_mode;", NULL, 0, collect, &r), 0);
        CHECK_STR(r.text, "journal_mode=wal;");
        memset(&r, 0, sizeof(r));
        /* NORMAL is 1. */
        CHECK_INT(store_query(s, "PRAGMA synchronous;", NULL, 0, collect, &r), 0);
        CHECK_STR(r.text, "synchronous=1;");
        memset(&r, 0, sizeof(r));
        CHECK_INT(store_query(s, "PRAGMA busy_timeout;", NULL, 0, collect, &r), 0);
        CHECK_STR(r.text, "timeout=5000;");

        /* The write-ahead log exists once something was written, with the same mode. */
        CHECK_INT(store_kv_set(s, "k", "v"), 0);
        char wal[300];
        snprintf(wal, sizeof(wal), "%s-wal", dbpath);
        CHECK(stat(wal, &st) == 0);
        CHECK_INT(st.st_mode & 0777, 0600);
        store_close(s);
        store_close(NULL);
}

static void test_kv(void) {
        store *s = NULL;
        CHECK_INT(store_open(dbpath, &s), 0);

        char *v = (char *)0x1;
        CHECK_INT(store_kv_get(s, "absent", &v), -ENOENT);
        CHECK(v == (char *)0x1); /* not written on failure */

        CHECK_INT(store_kv_set(s, "mode", "day"), 0);
        CHECK_INT(store_kv_get(s, "mode", &v), 0);
        CHECK_STR(v, "day");
        free(v);

        /* Overwrite keeps one row and updates the time stamp. */
        CHECK_INT(store_kv_set(s, "mode", "night"), 0);
        CHECK_INT(store_kv_get(s, "mode", &v), 0);
        CHECK_STR(v, "night");
        free(v);
        rows r = { 0 };
        CHECK_INT(store_query(s, "SELECT count(*) AS n, updated_at > 1600000000 AS recent FROM kv WHERE key = ?1",
                              (const char *[]){ "mode" }, 1, collect, &r),
                  0);
        CHECK_STR(r.text, "n=1|recent=1;");

        /* Values are data, whatever they look like. */
        const char *hostile = "x'); DROP TABLE kv; --";
        CHECK_INT(store_kv_set(s, hostile, hostile), 0);
        CHECK_INT(store_kv_get(s, hostile, &v), 0);
        CHECK_STR(v, hostile);
        free(v);

        CHECK_INT(store_kv_set(s, "empty", ""), 0);
        CHECK_INT(store_kv_get(s, "empty", &v), 0);
        CHECK_STR(v, "");
        free(v);

        /* NULL deletes. */
        CHECK_INT(store_kv_set(s, "empty", NULL), 0);
        CHECK_INT(store_kv_get(s, "empty", &v), -ENOENT);

        CHECK_INT(store_kv_set(s, NULL, "x"), -EINVAL);
        CHECK_INT(store_kv_get(NULL, "x", &v), -EINVAL);
        store_close(s);
}

static void test_exec_query(void) {
        store *s = NULL;
        CHECK_INT(store_open(dbpath, &s), 0);

        CHECK_INT(store_exec(s,
                             "CREATE TABLE IF NOT EXISTS jobs(id INTEGER PRIMARY KEY, name TEXT, note TEXT);"
                             "DELETE FROM jobs;",
                             NULL, 0),
                  0);
        const char *p1[] = { "alpha", "first" };
        const char *p2[] = { "beta", NULL };
        const char *p3[] = { "gamma'; --", "third" };
        CHECK_INT(store_exec(s, "INSERT INTO jobs(name, note) VALUES(?1, ?2)", p1, 2), 0);
        CHECK_INT(store_exec(s, "INSERT INTO jobs(name, note) VALUES(?1, ?2)", p2, 2), 0);
        CHECK_INT(store_exec(s, "INSERT INTO jobs(name, note) VALUES(?1, ?2)", p3, 2), 0);

        rows r = { 0 };
        CHECK_INT(store_query(s, "SELECT name, note FROM jobs ORDER BY id", NULL, 0, collect, &r), 0);
        CHECK_INT(r.n, 3);
        CHECK_STR(r.text, "name=alpha|note=first;name=beta|note=(null);name=gamma'; --|note=third;");

        /* Parameters are text: comparing with a number still works through affinity. */
        memset(&r, 0, sizeof(r));
        CHECK_INT(store_query(s, "SELECT id, name FROM jobs WHERE id = ?1", (const char *[]){ "2" }, 1, collect, &r),
                  0);
        CHECK_STR(r.text, "id=2|name=beta;");

        /* No rows: the callback never runs. */
        memset(&r, 0, sizeof(r));
        CHECK_INT(store_query(s, "SELECT name FROM jobs WHERE name = ?1", (const char *[]){ "zeta" }, 1, collect, &r),
                  0);
        CHECK_INT(r.n, 0);

        /* A positive return stops quietly, a negative one is the error. */
        int count = 0;
        CHECK_INT(store_query(s, "SELECT name FROM jobs", NULL, 0, stop_after_one, &count), 0);
        CHECK_INT(count, 1);
        CHECK_INT(store_query(s, "SELECT name FROM jobs", NULL, 0, fail_row, NULL), -ECANCELED);

        /* Errors. */
        CHECK_INT(store_exec(s, "SELEKT nonsense", NULL, 0), -EINVAL);
        CHECK(strlen(store_errmsg(s)) > 0);
        CHECK_INT(store_exec(s, "INSERT INTO jobs(id, name) VALUES(1, 'dup')", NULL, 0), -EEXIST);
        CHECK_CONTAINS(store_errmsg(s), "UNIQUE");
        /* A parameter the caller did not supply is refused, not bound as NULL. */
        CHECK_INT(store_exec(s, "INSERT INTO jobs(name, note) VALUES(?1, ?2)", p1, 1), -EINVAL);
        CHECK_INT(store_query(s, "SELECT 1", NULL, 0, NULL, NULL), -EINVAL);
        store_close(s);
}

static void test_reopen_persists(void) {
        store *s = NULL;
        CHECK_INT(store_open(dbpath, &s), 0);
        char *v = NULL;
        CHECK_INT(store_kv_get(s, "mode", &v), 0);
        CHECK_STR(v, "night");
        free(v);
        rows r = { 0 };
        CHECK_INT(store_query(s, "SELECT count(*) AS n FROM jobs", NULL, 0, collect, &r), 0);
        CHECK_STR(r.text, "n=3;");
        store_close(s);

        /* Two connections on one file (another process, a reader): WAL lets both work. */
        store *a = NULL, *b = NULL;
        CHECK_INT(store_open(dbpath, &a), 0);
        CHECK_INT(store_open(dbpath, &b), 0);
        CHECK_INT(store_kv_set(a, "shared", "1"), 0);
        CHECK_INT(store_kv_get(b, "shared", &v), 0);
        CHECK_STR(v, "1");
        free(v);
        store_close(a);
        store_close(b);
}

static void test_open_errors(void) {
        store *s = (store *)0x1;
        char bad[300];
        snprintf(bad, sizeof(bad), "%s/missing-dir/db.sqlite", dir);
        CHECK_INT(store_open(bad, &s), -ENOENT);
        CHECK(s == (store *)0x1);
        CHECK_INT(store_open(dir, &s), -EISDIR);
        CHECK_INT(store_open("", &s), -EINVAL);
}

int main(void) {
        CHECK(mkdtemp(dir));
        snprintf(dbpath, sizeof(dbpath), "%s/instance.sqlite", dir);

        RUN(test_open_mode_and_wal);
        RUN(test_kv);
        RUN(test_exec_query);
        RUN(test_reopen_persists);
        RUN(test_open_errors);

        const char *suffixes[] = { "", "-wal", "-shm" };
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                char p[300];
                snprintf(p, sizeof(p), "%s%s", dbpath, suffixes[i]);
                unlink(p);
        }
        CHECK(rmdir(dir) == 0);
        printf("ok\n");
        return 0;
}
