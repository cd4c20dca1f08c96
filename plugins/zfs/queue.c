/* queue.c — every zfs/zpool command of the instance goes through one FIFO, one command
 * in flight at a time: ZFS serialises administrative operations per pool anyway, the
 * health pass never races a destroy batch, and the loop never waits (host->exec is
 * asynchronous; its completion comes back on the loop and starts the next command).
 * Each command has the configured time-out; a command that cannot even start completes
 * with a negative status, so every caller's chain always ends. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zfs.h"

#define ZFS_ARGV_MAX 4096

struct zfs_queue_item {
        zfs_queue_item *next;
        char **argv;
        bool mutating;
        zfs_done_fn cb;
        void *ud;
        zfs *z;
};

static void item_free(zfs_queue_item *it) {
        if (!it)
                return;
        for (size_t i = 0; it->argv && it->argv[i]; i++)
                free(it->argv[i]);
        free(it->argv);
        free(it);
}

static void pump(zfs *z);

static void on_done(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        zfs_queue_item *it = userdata;
        zfs *z = it->z;
        z->q_inflight = NULL;
        z->commands++;
        if (res->status != 0 && !res->dry_run) {
                z->command_failures++;
                z->host->metric_set(z->ctx, "zfs_command_failures_total", ORG_METRIC_COUNTER,
                                    (double)z->command_failures,
                                    "zfs/zpool commands that failed (exit status, time-out, could not start)");
        }
        if (it->cb)
                it->cb(z, res, it->ud);
        item_free(it);
        z->q_busy = false;
        pump(z);
}

static void pump(zfs *z) {
        if (z->q_pumping)
                return; /* the fake host completes inside exec: the outer loop goes on */
        z->q_pumping = true;
        while (!z->q_busy && z->q_head) {
                zfs_queue_item *it = z->q_head;
                z->q_head = it->next;
                if (!z->q_head)
                        z->q_tail = NULL;
                z->q_len--;
                z->q_busy = true;
                z->q_inflight = it;
                org_exec_spec spec = {.argv = (const char *const *)it->argv,
                                      .timeout_ms = z->command_timeout_ms,
                                      .capture_max = 8 * 1024 * 1024,
                                      .mutating = it->mutating};
                int r = z->host->exec(z->ctx, &spec, on_done, it, &z->q_exec_id);
                if (r < 0) {
                        org_exec_result res = {.status = r, .out = "", .err = ""};
                        z->q_pumping = false; /* on_done pumps again */
                        on_done(z->ctx, &res, it);
                        return;
                }
        }
        z->q_pumping = false;
}

int zfs_run(zfs *z, const char *const *argv, bool mutating, zfs_done_fn cb, void *ud) {
        size_t n = 0;
        if (z->stopping)
                return -ECANCELED;
        while (argv[n])
                n++;
        if (n == 0 || n > ZFS_ARGV_MAX)
                return -EINVAL;
        zfs_queue_item *it = calloc(1, sizeof *it);
        if (!it)
                return -ENOMEM;
        it->argv = calloc(n + 1, sizeof *it->argv);
        if (!it->argv) {
                free(it);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                if (!(it->argv[i] = strdup(argv[i]))) {
                        item_free(it);
                        return -ENOMEM;
                }
        it->mutating = mutating;
        it->cb = cb;
        it->ud = ud;
        it->z = z;
        if (z->q_tail)
                z->q_tail->next = it;
        else
                z->q_head = it;
        z->q_tail = it;
        z->q_len++;
        pump(z);
        return 0;
}

void zfs_queue_free(zfs *z) {
        z->stopping = true;
        org_exec_result res = {.status = -ECANCELED, .out = "", .err = ""};
        zfs_queue_item *it = z->q_inflight;
        if (it) {
                (void)z->host->exec_cancel(z->ctx, z->q_exec_id);
                z->q_inflight = NULL;
                if (it->cb)
                        it->cb(z, &res, it->ud);
                item_free(it);
        }
        it = z->q_head;
        z->q_head = z->q_tail = NULL;
        z->q_len = 0;
        while (it) {
                zfs_queue_item *next = it->next;
                if (it->cb)
                        it->cb(z, &res, it->ud);
                item_free(it);
                it = next;
        }
        z->q_busy = false;
}

int zfs_argv_add(zfs_argv *a, const char *s) {
        if (a->n + 2 > a->cap) {
                size_t nc = a->cap ? a->cap * 2 : 16;
                const char **nv = realloc(a->v, nc * sizeof *nv);
                if (!nv)
                        return -ENOMEM;
                a->v = nv;
                a->cap = nc;
        }
        a->v[a->n++] = s;
        a->v[a->n] = NULL;
        return 0;
}

const char *zfs_failure(const org_exec_result *res, char *buf, size_t size) {
        if (res->timed_out)
                snprintf(buf, size, "timed out after %llu ms", (unsigned long long)(res->duration_us / 1000));
        else if (res->status < 0)
                snprintf(buf, size, "could not run: %s", strerror(-res->status));
        else {
                const char *e = res->err ? res->err : "";
                size_t l = strcspn(e, "\n");
                snprintf(buf, size, "exit %d%s%.*s", res->status, l ? ": " : "", (int)(l > 300 ? 300 : l), e);
        }
        return buf;
}
