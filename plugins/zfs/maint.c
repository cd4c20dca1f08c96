/* maint.c — scrub and trim, one pool at a time: the calendar (or `scrub POOL`) queues
 * pools, and each health pass advances the queue, since only `zpool status` tells when
 * a pool's scrub or trim has ended. A pool already scrubbing or resilvering (or
 * trimming, for a trim) is skipped and said so; each finished scrub's result is logged
 * and published (zfs.scrub.done), the alert on its errors comes from health.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

int zfs_maint_add(zfs *z, bool scrub, const char *pool) {
        for (size_t i = 0; i < z->n_maint; i++)
                if (z->maint[i].scrub == scrub && strcmp(z->maint[i].pool, pool) == 0)
                        return -EALREADY;
        zfs_maint *nv = realloc(z->maint, (z->n_maint + 1) * sizeof *nv);
        if (!nv)
                return -ENOMEM;
        z->maint = nv;
        zfs_maint *m = &z->maint[z->n_maint++];
        memset(m, 0, sizeof *m);
        m->scrub = scrub;
        snprintf(m->pool, sizeof m->pool, "%s", pool);
        return 0;
}

static void maint_pop(zfs *z) {
        if (z->n_maint == 0)
                return;
        memmove(z->maint, z->maint + 1, (z->n_maint - 1) * sizeof *z->maint);
        z->n_maint--;
}

static void on_maint_start(zfs *z, const org_exec_result *res, void *ud) {
        (void)ud;
        if (z->n_maint == 0 || res->status == -ECANCELED)
                return;
        zfs_maint *m = &z->maint[0];
        m->starting = false;
        char why[400];
        const char *what = m->scrub ? "scrub" : "trim";
        if (res->status != 0) {
                z->host->log(z->ctx, ORG_LOG_ERR, "%s %s: cannot start: %s", what, m->pool,
                             zfs_failure(res, why, sizeof why));
                if (m->scrub)
                        z->scrub_st.failures++;
                else
                        z->trim_st.failures++;
                maint_pop(z);
                zfs_maint_step(z);
                return;
        }
        if (res->dry_run) {
                z->host->log(z->ctx, ORG_LOG_NOTICE, "%s %s: dry run, not started", what, m->pool);
                maint_pop(z);
                zfs_maint_step(z);
                return;
        }
        z->host->log(z->ctx, ORG_LOG_NOTICE, "%s %s: started", what, m->pool);
        m->started = true;
        m->passes = 0;
}

/* zfs.scrub.done / zfs.trim.done {ts, pool, repaired, errors, scan}: the result of
 * each scrub for whoever keeps a history (the alert, if any, comes from health). */
static void maint_done_event(zfs *z, const zfs_maint *m, const zfs_pool_info *pi) {
        char ts[40];
        zfs_rfc3339(zfs_now_us(z), ts, sizeof ts);
        json_t *o = json_pack("{s:s, s:s, s:s}", "ts", ts, "pool", m->pool, "scan", pi->st.scan);
        if (o && m->scrub) {
                json_object_set_new(o, "repaired", json_integer((json_int_t)pi->st.scrub_repaired));
                json_object_set_new(o, "errors", json_integer((json_int_t)pi->st.scrub_errors));
        }
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        const char *subject = m->scrub ? "zfs.scrub.done" : "zfs.trim.done";
        if (!text || z->host->publish(z->ctx, subject, NULL, 0, text, strlen(text)) < 0)
                z->host->log(z->ctx, ORG_LOG_WARNING, "cannot publish %s", subject);
        free(text);
}

void zfs_maint_step(zfs *z) {
        while (z->n_maint > 0) {
                zfs_maint *m = &z->maint[0];
                const char *what = m->scrub ? "scrub" : "trim";
                const zfs_pool_info *pi = zfs_pool_find(z, m->pool);
                if (m->starting)
                        return; /* its zpool command is queued */
                if (m->started) {
                        if (!pi || !pi->have_status)
                                return; /* wait for a pass that sees it */
                        bool busy = m->scrub ? pi->st.scrubbing : pi->st.trimming;
                        if (busy || m->passes++ == 0)
                                return;
                        if (m->scrub)
                                z->host->log(z->ctx,
                                             pi->st.scrub_errors ? ORG_LOG_ERR : ORG_LOG_NOTICE,
                                             "scrub %s: done: %llu repaired, %llu errors (%s)", m->pool,
                                             (unsigned long long)pi->st.scrub_repaired,
                                             (unsigned long long)pi->st.scrub_errors, pi->st.scan);
                        else
                                z->host->log(z->ctx, ORG_LOG_NOTICE, "trim %s: done", m->pool);
                        maint_done_event(z, m, pi);
                        maint_pop(z);
                        continue;
                }
                if (!pi || !pi->have_status) {
                        z->host->log(z->ctx, ORG_LOG_WARNING, "%s %s: pool not seen by zpool status: skipped", what,
                                     m->pool);
                        maint_pop(z);
                        continue;
                }
                if (pi->st.scrubbing || pi->st.resilvering || (!m->scrub && pi->st.trimming)) {
                        z->host->log(z->ctx, ORG_LOG_NOTICE, "%s %s: skipped: %s", what, m->pool,
                                     pi->st.resilvering ? "resilver in progress"
                                     : pi->st.scrubbing ? "scrub in progress"
                                                        : "trim in progress");
                        maint_pop(z);
                        continue;
                }
                const char *argv[] = {"zpool", what, m->pool, NULL};
                m->starting = true;
                if (zfs_run(z, argv, true, on_maint_start, NULL) < 0)
                        maint_pop(z);
                else
                        return;
        }
}

void zfs_maint_job(zfs *z, bool scrub) {
        zfs_job_stat *st = scrub ? &z->scrub_st : &z->trim_st;
        int64_t now = (int64_t)(zfs_now_us(z) / ZFS_US);
        st->runs++;
        st->last_run = now;
        zfs_save_last_run(z, scrub ? "scrub" : "trim", now);
        for (int r = 0; r < ZFS_ROLES; r++) {
                if (!z->pools[r][0] || (!scrub && r == ZFS_ARCHIVE))
                        continue;
                (void)zfs_maint_add(z, scrub, z->pools[r]);
        }
        z->host->log(z->ctx, ORG_LOG_INFO, "%s job: %zu pool(s) queued", scrub ? "scrub" : "trim", z->n_maint);
        zfs_health_run(z); /* fresh state before the first start */
}

