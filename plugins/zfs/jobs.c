/* jobs.c — the calendar jobs: snapshot tags, the monthly scrub and the weekly trim. Each
 * job's last run is persisted in the store (kv "last_run.<job>", unix seconds) the
 * moment it starts, and one wall-clock timer is armed at the earliest next slot; when
 * it fires, or when the wall clock is set, every due job runs (calendar.c decides: a
 * missed job once, a repeated slot never). A job seen for the first time records "now"
 * and waits for its next slot, as systemd's Persistent=true does without a stamp.
 *
 * A snapshot job lists its datasets (children when recursive, minus the excluded
 * subtrees), takes them in one `zfs snapshot` per pool (atomic: `-r` when nothing is
 * excluded, else every dataset named), then prunes the tag (prune.c). Scrub and trim
 * are queued for maint.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

uint64_t zfs_now_us(zfs *z) { return z->host->now_realtime_us(z->ctx); }

uint64_t zfs_mono_us(zfs *z) { return z->host->now_monotonic_us(z->ctx); }

/* ---------- persistence ---------- */

static void job_key(const char *job, char *buf, size_t size) { snprintf(buf, size, "last_run.%s", job); }

static int64_t load_last_run(zfs *z, const char *job, int64_t now) {
        char key[96], *v = NULL;
        job_key(job, key, sizeof key);
        uint64_t t;
        if (z->host->kv_get(z->ctx, key, &v) >= 0 && v && zfs_parse_u64(v, &t) >= 0) {
                free(v);
                return (int64_t)t;
        }
        free(v);
        /* first sight: baseline now, the next slot is the first run */
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)now);
        if (z->host->kv_set(z->ctx, key, buf) < 0)
                z->host->log(z->ctx, ORG_LOG_WARNING, "cannot persist the last run of %s", job);
        return now;
}

void zfs_save_last_run(zfs *z, const char *job, int64_t t) {
        char key[96], buf[32];
        job_key(job, key, sizeof key);
        snprintf(buf, sizeof buf, "%lld", (long long)t);
        int r = z->host->kv_set(z->ctx, key, buf);
        if (r < 0)
                z->host->log(z->ctx, ORG_LOG_WARNING, "cannot persist the last run of %s: %s", job, strerror(-r));
}

static void job_finished(zfs *z, const char *job, zfs_job_stat *st, uint64_t t0_us, int result) {
        st->last_duration_us = zfs_mono_us(z) - t0_us;
        st->last_result = result;
        if (result < 0)
                st->failures++;
        zfs_job_metrics(z);
        (void)job;
}

typedef struct snapctx {
        zfs *z;
        zfs_snapjob *j;
        char *reply;
        char name[128];
        uint64_t t0;
        unsigned pending;
        int result;
        bool dry;
        json_t *report;
} snapctx;

static void snap_free(snapctx *s) {
        json_decref(s->report);
        free(s->reply);
        free(s);
}

static void cal_update(zfs *z, const char *why);

static void snap_done(zfs *z, void *rep, int result, void *ud) {
        json_t *prune = rep;
        snapctx *s = ud;
        if (prune)
                json_object_set_new(s->report, "prune", prune);
        if (s->result >= 0 && result < 0)
                s->result = result;
        else if (s->result == 0 && result == 1)
                s->result = 1;
        s->j->running = false;
        job_finished(z, s->j->tag, &s->j->st, s->t0, s->result);
        json_object_set_new(s->report, "result",
                            json_string(s->result == 0  ? "ok"
                                        : s->result > 0 ? "partial"
                                                        : "failed"));
        if (s->reply) {
                json_t *r = s->report;
                s->report = NULL;
                (void)zfs_reply(z, s->reply, r);
        }
        snap_free(s);
        /* a slot that passed while this run was still going is caught up now, once */
        if (!z->stopping)
                cal_update(z, "slot passed during the previous run");
}

static void snap_prune(snapctx *s) {
        zfs *z = s->z;
        if (s->result == -ECANCELED || zfs_prune_start(z, s->j, false, snap_done, s) < 0)
                snap_done(z, NULL, s->result < 0 ? s->result : -ENOMEM, s);
}

static void on_snapshot(zfs *z, const org_exec_result *res, void *ud) {
        snapctx *s = ud;
        char why[400];
        s->dry = s->dry || res->dry_run;
        if (res->status != 0) {
                if (res->status != -ECANCELED)
                        z->host->log(z->ctx, ORG_LOG_ERR, "snapshot %s: zfs snapshot failed: %s", s->name,
                                     zfs_failure(res, why, sizeof why));
                s->result = res->status < 0 ? res->status : -EIO;
        }
        if (--s->pending == 0) {
                z->host->log(z->ctx, s->result < 0 ? ORG_LOG_WARNING : ORG_LOG_NOTICE, "snapshot %s: %s%s", s->name,
                             s->result < 0 ? "failed" : "taken", s->dry ? " (dry run: nothing taken)" : "");
                json_object_set_new(s->report, "dry_run", json_boolean(s->dry));
                snap_prune(s);
        }
}

/* One `zfs snapshot` per pool over the listed set. */
static void on_snap_list(zfs *z, const org_exec_result *res, void *ud) {
        snapctx *s = ud;
        zfs_snapjob *j = s->j;
        char why[400];
        if (res->status == -ECANCELED || (res->status != 0 && !(res->out && *res->out))) {
                if (res->status != -ECANCELED)
                        z->host->log(z->ctx, ORG_LOG_ERR, "snapshot %s: zfs list failed: %s", s->name,
                                     zfs_failure(res, why, sizeof why));
                s->result = res->status < 0 ? res->status : -EIO;
                snap_prune(s);
                return;
        }
        if (res->status != 0) {
                /* some named dataset is missing: the others are still taken */
                z->host->log(z->ctx, ORG_LOG_WARNING, "snapshot %s: %s", s->name, zfs_failure(res, why, sizeof why));
                s->result = 1;
        }
        char *out = strdup(res->out);
        if (!out) {
                s->result = -ENOMEM;
                snap_prune(s);
                return;
        }
        /* datasets of the set, and whether exclusion removed any */
        char **set = NULL;
        size_t n = 0;
        bool cut = false;
        for (char *line = out, *next; *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                else
                        next = line + strlen(line);
                if (!*line)
                        continue;
                if (!zfs_job_in_set(j, line)) {
                        cut = cut || zfs_job_excluded(j, line);
                        continue;
                }
                char **nv = realloc(set, (n + 1) * sizeof *nv);
                if (!nv)
                        break;
                set = nv;
                set[n++] = line;
        }
        json_t *taken = json_array();
        for (size_t i = 0; i < n; i++)
                json_array_append_new(taken, json_string(set[i]));
        json_object_set_new(s->report, "datasets", taken);
        json_object_set_new(s->report, "atomic",
                            json_string(j->recursive && !cut ? "zfs snapshot -r" : "zfs snapshot (listed)"));
        /* one call per pool: a snapshot set is atomic within one pool only */
        bool *done = calloc(n ? n : 1, sizeof *done);
        char **names = calloc(n ? n : 1, sizeof *names);
        s->pending = 1; /* held while queuing */
        for (size_t i = 0; done && names && i < n; i++) {
                if (done[i])
                        continue;
                char pool[ZFS_NAME_MAX];
                zfs_pool_of(set[i], pool, sizeof pool);
                zfs_argv a = {0};
                int r = zfs_argv_add(&a, "zfs");
                r = r < 0 ? r : zfs_argv_add(&a, "snapshot");
                bool use_r = j->recursive && !cut;
                if (use_r)
                        r = r < 0 ? r : zfs_argv_add(&a, "-r");
                for (size_t k = i; k < n && r >= 0; k++) {
                        char p2[ZFS_NAME_MAX];
                        zfs_pool_of(set[k], p2, sizeof p2);
                        if (done[k] || strcmp(p2, pool) != 0)
                                continue;
                        done[k] = true;
                        /* with -r only the named roots; without, every dataset */
                        bool root = false;
                        for (size_t d = 0; d < j->n_datasets; d++)
                                if (strcmp(set[k], j->datasets[d]) == 0)
                                        root = true;
                        if (use_r && !root)
                                continue;
                        /* a root under another root is covered by -r */
                        bool nested = false;
                        for (size_t d = 0; use_r && d < j->n_datasets; d++)
                                if (strcmp(set[k], j->datasets[d]) != 0 && zfs_under(set[k], j->datasets[d]))
                                        nested = true;
                        if (nested)
                                continue;
                        size_t l = strlen(set[k]) + strlen(s->name) + 2;
                        names[k] = malloc(l);
                        if (!names[k]) {
                                r = -ENOMEM;
                                break;
                        }
                        snprintf(names[k], l, "%s@%s", set[k], s->name);
                        r = zfs_argv_add(&a, names[k]);
                }
                if (r >= 0 && a.n > (use_r ? 3u : 2u)) {
                        s->pending++;
                        r = zfs_run(z, a.v, true, on_snapshot, s);
                        if (r < 0)
                                s->pending--;
                }
                if (r < 0)
                        s->result = r;
                free(a.v);
        }
        for (size_t i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
        free(done);
        free(set);
        free(out);
        /* release the hold: completes now if nothing was queued */
        org_exec_result none = {.status = 0, .out = "", .err = ""};
        if (n == 0) {
                z->host->log(z->ctx, ORG_LOG_WARNING, "snapshot %s: no dataset of the set exists", s->name);
                if (s->result == 0)
                        s->result = -ENOENT;
        }
        on_snapshot(z, &none, s);
}

int zfs_job_snapshot(zfs *z, zfs_snapjob *j, const char *reply, const char *why) {
        if (j->running) {
                if (reply)
                        (void)zfs_reply_error(z, reply, "snapshot job %s is already running", j->tag);
                return -EBUSY;
        }
        snapctx *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->z = z;
        s->j = j;
        s->t0 = zfs_mono_us(z);
        int64_t now = (int64_t)(zfs_now_us(z) / ZFS_US);
        int r = zfs_snapname(j->tag, now, s->name, sizeof s->name);
        s->report = json_pack("{s:s, s:s, s:s}", "tag", j->tag, "snapshot", s->name, "reason", why);
        if (r >= 0 && (!s->report || (reply && !(s->reply = strdup(reply)))))
                r = -ENOMEM;
        if (r < 0) {
                snap_free(s);
                return r;
        }
        j->running = true;
        j->st.runs++;
        j->st.last_run = now;
        char id[64];
        snprintf(id, sizeof id, "snap.%s", j->tag);
        zfs_save_last_run(z, id, now);
        z->host->log(z->ctx, ORG_LOG_INFO, "snapshot job %s (%s)", j->tag, why);
        zfs_argv a = {0};
        const char *head[] = {"zfs", "list", "-H", "-p", "-o", "name", "-t", "filesystem,volume"};
        for (size_t i = 0; i < sizeof head / sizeof *head && r >= 0; i++)
                r = zfs_argv_add(&a, head[i]);
        if (j->recursive && r >= 0)
                r = zfs_argv_add(&a, "-r");
        for (size_t i = 0; i < j->n_datasets && r >= 0; i++)
                r = zfs_argv_add(&a, j->datasets[i]);
        if (r >= 0)
                r = zfs_run(z, a.v, false, on_snap_list, s);
        free(a.v);
        if (r < 0) {
                j->running = false;
                free(s->reply); /* the caller answers */
                s->reply = NULL;
                snap_free(s);
        }
        return r;
}

zfs_snapjob *zfs_job_find(zfs *z, const char *tag) {
        for (size_t i = 0; tag && i < z->n_jobs; i++)
                if (strcmp(z->jobs[i].tag, tag) == 0)
                        return &z->jobs[i];
        return NULL;
}

/* ---------- the calendar ---------- */

static void on_cal_timer(org_ctx *ctx, uint64_t id, void *ud);

static void cal_arm(zfs *z, int64_t now) {
        int64_t at = INT64_MAX, t;
        for (size_t i = 0; i < z->n_jobs; i++)
                if (zfs_cal_next(&z->jobs[i].cal, now, &t) >= 0 && t < at)
                        at = t;
        if (z->scrub_enabled && zfs_cal_next(&z->scrub_cal, now, &t) >= 0 && t < at)
                at = t;
        if (z->trim_enabled && zfs_cal_next(&z->trim_cal, now, &t) >= 0 && t < at)
                at = t;
        if (at == INT64_MAX)
                return;
        uint64_t at_us = (uint64_t)at * ZFS_US;
        if (z->cal_timer && z->cal_timer_at == at_us)
                return;
        if (z->cal_timer)
                (void)z->host->timer_cancel(z->ctx, z->cal_timer);
        z->cal_timer = 0;
        int r = z->host->timer_add_realtime(z->ctx, at_us, on_cal_timer, z, &z->cal_timer);
        if (r < 0)
                z->host->log(z->ctx, ORG_LOG_ERR, "cannot arm the calendar timer: %s", strerror(-r));
        else
                z->cal_timer_at = at_us;
}

static void cal_update(zfs *z, const char *why) {
        int64_t now = (int64_t)(zfs_now_us(z) / ZFS_US);
        for (size_t i = 0; i < z->n_jobs; i++) {
                zfs_snapjob *j = &z->jobs[i];
                int r;
                if (!j->running && zfs_cal_due(&j->cal, j->st.last_run, now) &&
                    (r = zfs_job_snapshot(z, j, NULL, why)) < 0)
                        z->host->log(z->ctx, ORG_LOG_ERR, "snapshot job %s: cannot start: %s", j->tag, strerror(-r));
        }
        if (z->scrub_enabled && zfs_cal_due(&z->scrub_cal, z->scrub_st.last_run, now))
                zfs_maint_job(z, true);
        if (z->trim_enabled && zfs_cal_due(&z->trim_cal, z->trim_st.last_run, now))
                zfs_maint_job(z, false);
        cal_arm(z, now);
}

static void on_cal_timer(org_ctx *ctx, uint64_t id, void *ud) {
        zfs *z = ud;
        (void)ctx;
        if (id == z->cal_timer)
                z->cal_timer = 0;
        cal_update(z, "schedule");
}

static void on_time_change(org_ctx *ctx, uint64_t id, void *ud) {
        zfs *z = ud;
        (void)ctx;
        (void)id;
        z->host->log(z->ctx, ORG_LOG_INFO, "wall clock set: calendar re-evaluated");
        cal_update(z, "clock change");
}

int zfs_jobs_start(zfs *z) {
        int64_t now = (int64_t)(zfs_now_us(z) / ZFS_US);
        for (size_t i = 0; i < z->n_jobs; i++)
                {
                char id[64];
                snprintf(id, sizeof id, "snap.%s", z->jobs[i].tag);
                z->jobs[i].st.last_run = load_last_run(z, id, now);
        }
        z->scrub_st.last_run = load_last_run(z, "scrub", now);
        z->trim_st.last_run = load_last_run(z, "trim", now);
        int r = z->host->time_change_add(z->ctx, on_time_change, z, &z->time_change_id);
        if (r < 0)
                return r;
        cal_update(z, "missed while stopped");
        zfs_job_metrics(z);
        return 0;
}

void zfs_jobs_stop(zfs *z) {
        if (z->cal_timer)
                (void)z->host->timer_cancel(z->ctx, z->cal_timer);
        if (z->time_change_id)
                (void)z->host->timer_cancel(z->ctx, z->time_change_id);
        z->cal_timer = z->time_change_id = 0;
        free(z->maint);
        z->maint = NULL;
        z->n_maint = 0;
        for (size_t i = 0; i < z->n_blocked; i++)
                free(z->blocked[i]);
        free(z->blocked);
        z->blocked = NULL;
        z->n_blocked = 0;
}

static json_t *job_json(zfs *z, const char *name, const zfs_cal *c, const zfs_job_stat *st, bool running) {
        char last[40] = "", next[40] = "";
        int64_t now = (int64_t)(zfs_now_us(z) / ZFS_US), t = 0;
        if (st->last_run > 0)
                zfs_rfc3339((uint64_t)st->last_run * ZFS_US, last, sizeof last);
        /* next run: the next slot after the later of now and the last run */
        if (zfs_cal_next(c, st->last_run > now ? st->last_run : now, &t) >= 0)
                zfs_rfc3339((uint64_t)t * ZFS_US, next, sizeof next);
        return json_pack("{s:s, s:s?, s:s?, s:s, s:I, s:I, s:I, s:b}", "job", name, "last_run", *last ? last : NULL,
                         "next_run", *next ? next : NULL, "last_result",
                         st->runs == 0          ? "none"
                         : st->last_result == 0 ? "ok"
                         : st->last_result > 0  ? "partial"
                                                : "failed",
                         "last_duration_ms", (json_int_t)(st->last_duration_us / 1000), "runs", (json_int_t)st->runs,
                         "failures", (json_int_t)st->failures, "running", running);
}

void zfs_jobs_json(zfs *z, void *array) {
        json_t *a = array;
        for (size_t i = 0; i < z->n_jobs; i++) {
                char name[64];
                snprintf(name, sizeof name, "snapshot:%s", z->jobs[i].tag);
                json_t *o = job_json(z, name, &z->jobs[i].cal, &z->jobs[i].st, z->jobs[i].running);
                json_object_set_new(o, "keep", json_integer(z->jobs[i].keep));
                json_object_set_new(o, "snapshots", json_integer((json_int_t)z->jobs[i].count));
                json_array_append_new(a, o);
        }
        if (z->scrub_enabled)
                json_array_append_new(a, job_json(z, "scrub", &z->scrub_cal, &z->scrub_st, false));
        if (z->trim_enabled)
                json_array_append_new(a, job_json(z, "trim", &z->trim_cal, &z->trim_st, false));
}

static void stat_metrics(zfs *z, const char *job, const zfs_job_stat *st) {
        const org_host *h = z->host;
        char n[160];
        snprintf(n, sizeof n, "zfs_job_last_run_timestamp_seconds{job=\"%s\"}", job);
        h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, (double)st->last_run, "when the job last started (unix time)");
        snprintf(n, sizeof n, "zfs_job_last_duration_seconds{job=\"%s\"}", job);
        h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, (double)st->last_duration_us / 1e6, "how long its last run took");
        snprintf(n, sizeof n, "zfs_job_last_result{job=\"%s\"}", job);
        h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, st->last_result == 0 ? 0 : st->last_result > 0 ? 1 : 2,
                      "0 ok, 1 partial (some snapshot held, busy or missing), 2 failed");
        snprintf(n, sizeof n, "zfs_job_runs_total{job=\"%s\"}", job);
        h->metric_set(z->ctx, n, ORG_METRIC_COUNTER, (double)st->runs, "runs since start");
        snprintf(n, sizeof n, "zfs_job_failures_total{job=\"%s\"}", job);
        h->metric_set(z->ctx, n, ORG_METRIC_COUNTER, (double)st->failures, "failed runs since start");
}

void zfs_job_metrics(zfs *z) {
        const org_host *h = z->host;
        for (size_t i = 0; i < z->n_jobs; i++) {
                char n[96];
                snprintf(n, sizeof n, "snapshot:%s", z->jobs[i].tag);
                stat_metrics(z, n, &z->jobs[i].st);
                snprintf(n, sizeof n, "zfs_snapshots{tag=\"%s\"}", z->jobs[i].tag);
                h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, (double)z->jobs[i].count,
                              "snapshots of the tag over its set, as of the last prune");
        }
        stat_metrics(z, "scrub", &z->scrub_st);
        stat_metrics(z, "trim", &z->trim_st);
        h->metric_set(z->ctx, "zfs_prune_failures_total", ORG_METRIC_COUNTER, (double)z->prune_failures,
                      "snapshots retention wanted gone that a destroy failed on (held or busy not counted)");
        h->metric_set(z->ctx, "zfs_snapshots_destroyed_total", ORG_METRIC_COUNTER, (double)z->destroyed,
                      "snapshots destroyed by retention");
        h->metric_set(z->ctx, "zfs_commands_total", ORG_METRIC_COUNTER, (double)z->commands, "zfs/zpool commands run");
        h->metric_set(z->ctx, "zfs_command_failures_total", ORG_METRIC_COUNTER, (double)z->command_failures,
                      "zfs/zpool commands that failed (exit status, time-out, could not start)");
}

