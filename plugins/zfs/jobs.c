/* jobs.c — the calendar jobs: snapshot tags, the monthly scrub and the weekly trim. Each
 * job's last run is persisted in the store (kv "last_run.<job>", unix seconds) the
 * moment it starts, and one wall-clock timer is armed at the earliest next slot; when
 * it fires, or when the wall clock is set, every due job runs (calendar.c decides: a
 * missed job once, a repeated slot never). A job seen for the first time records "now"
 * and waits for its next slot, as systemd's Persistent=true does without a stamp.
 *
 * A snapshot job lists its datasets (children when recursive, minus the excluded
 * subtrees), takes them in one `zfs snapshot` per pool (atomic: `-r` when nothing is
 * excluded, else every dataset named), then prunes the tag on every dataset of the
 * set: one `zfs destroy ds@a,b,c` per dataset, a held or busy snapshot reported once
 * and the rest retried at once. Scrub and trim go one pool at a time, advanced by the
 * health passes, which tell when a pool's scrub or trim has ended. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

#define BATCH_MAX 256        /* snapshots per destroy argument */
#define BLOCKED_MAX 4096     /* reported-once memory */

uint64_t zfs_now_us(zfs *z) { return z->host->now_realtime_us(z->ctx); }

static uint64_t mono_us(zfs *z) { return z->host->now_monotonic_us(z->ctx); }

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

static void save_last_run(zfs *z, const char *job, int64_t t) {
        char key[96], buf[32];
        job_key(job, key, sizeof key);
        snprintf(buf, sizeof buf, "%lld", (long long)t);
        int r = z->host->kv_set(z->ctx, key, buf);
        if (r < 0)
                z->host->log(z->ctx, ORG_LOG_WARNING, "cannot persist the last run of %s: %s", job, strerror(-r));
}

static void job_finished(zfs *z, const char *job, zfs_job_stat *st, uint64_t t0_us, int result) {
        st->last_duration_us = mono_us(z) - t0_us;
        st->last_result = result;
        if (result < 0)
                st->failures++;
        zfs_job_metrics(z);
        (void)job;
}

/* ---------- the set of a job ---------- */

static bool under(const char *ds, const char *root) {
        size_t l = strlen(root);
        return strncmp(ds, root, l) == 0 && (ds[l] == '\0' || ds[l] == '/');
}

static bool excluded(const zfs_snapjob *j, const char *ds) {
        for (size_t i = 0; i < j->n_exclude; i++)
                if (under(ds, j->exclude[i]))
                        return true;
        return false;
}

/* In the set: a named dataset, or (recursive) one under it; never an excluded one. */
static bool in_set(const zfs_snapjob *j, const char *ds) {
        if (excluded(j, ds))
                return false;
        for (size_t i = 0; i < j->n_datasets; i++)
                if (j->recursive ? under(ds, j->datasets[i]) : strcmp(ds, j->datasets[i]) == 0)
                        return true;
        return false;
}

static void pool_of(const char *ds, char *buf, size_t size) {
        size_t l = strcspn(ds, "/@");
        snprintf(buf, size, "%.*s", (int)l, ds);
}

/* argv builder */
typedef struct argv_buf {
        const char **v;
        size_t n, cap;
} argv_buf;

static int argv_add(argv_buf *a, const char *s) {
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

/* ---------- prune ---------- */

typedef void (*prune_done_fn)(zfs *z, json_t *report, int result, void *ud);

typedef struct prunectx {
        zfs *z;
        zfs_snapjob *j;
        bool dry;
        prune_done_fn done;
        void *ud;
        json_t *report;
        char **batches;          /* "ds@a,b,c" */
        size_t *batch_counts;
        size_t n_batches, next;
        bool retried;
        uint64_t destroyed, kept, held, blocked, failed;
        int result;
        char **held_names;       /* held ones retention would have destroyed, for `zfs holds` */
        size_t n_held;
} prunectx;

static void prune_free(prunectx *p) {
        for (size_t i = 0; i < p->n_held; i++)
                free(p->held_names[i]);
        free(p->held_names);
        for (size_t i = 0; i < p->n_batches; i++)
                free(p->batches[i]);
        free(p->batches);
        free(p->batch_counts);
        json_decref(p->report);
        free(p);
}

static bool reported_before(zfs *z, const char *snap) {
        for (size_t i = 0; i < z->n_blocked; i++)
                if (strcmp(z->blocked[i], snap) == 0)
                        return true;
        if (z->n_blocked < BLOCKED_MAX) {
                char **nv = realloc(z->blocked, (z->n_blocked + 1) * sizeof *nv);
                if (nv) {
                        z->blocked = nv;
                        if ((z->blocked[z->n_blocked] = strdup(snap)))
                                z->n_blocked++;
                }
        }
        return false;
}

/* A snapshot retention wanted gone but could not take: in the report always, on the
 * bus and in the log once. */
static void prune_blocked(prunectx *p, const char *snap, const char *reason) {
        zfs *z = p->z;
        json_t *a = json_object_get(p->report, "blocked");
        json_array_append_new(a, json_pack("{s:s, s:s}", "snapshot", snap, "reason", reason));
        p->blocked++;
        if (reported_before(z, snap))
                return;
        z->host->log(z->ctx, ORG_LOG_WARNING, "prune %s: %s stays: %s", p->j->tag, snap, reason);
        char ts[40];
        zfs_rfc3339(zfs_now_us(z), ts, sizeof ts);
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "tag", p->j->tag, "snapshot", snap, "reason", reason);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text)
                (void)z->host->publish(z->ctx, "zfs.prune.blocked", NULL, 0, text, strlen(text));
        free(text);
}

static void prune_finish(prunectx *p) {
        zfs *z = p->z;
        json_object_set_new(p->report, "destroyed", json_integer((json_int_t)p->destroyed));
        json_object_set_new(p->report, "kept", json_integer((json_int_t)p->kept));
        json_object_set_new(p->report, "failed", json_integer((json_int_t)p->failed));
        json_object_set_new(p->report, "dry_run", json_boolean(p->dry));
        if (!p->dry && p->result >= 0)
                p->j->count = p->kept + p->blocked + p->failed;
        z->destroyed += p->destroyed;
        if (p->failed)
                z->prune_failures += p->failed;
        if (p->result >= 0 && (p->blocked || p->failed))
                p->result = 1;
        z->host->log(z->ctx, p->failed ? ORG_LOG_WARNING : ORG_LOG_INFO,
                     "prune %s%s: %llu destroyed, %llu kept, %llu held or busy, %llu failed", p->j->tag,
                     p->dry ? " (dry run)" : "", (unsigned long long)p->destroyed, (unsigned long long)p->kept,
                     (unsigned long long)p->blocked, (unsigned long long)p->failed);
        zfs_job_metrics(z);
        json_t *rep = p->report;
        p->report = NULL;
        prune_done_fn done = p->done;
        void *ud = p->ud;
        int result = p->result;
        prune_free(p);
        done(z, rep, result, ud);
}

static void prune_next(prunectx *p);

typedef struct destroy_err {
        prunectx *p;
        char **names;            /* snapshot part of the blocked ones */
        size_t n;
} destroy_err;

static void on_destroy_error(const char *snap, const char *reason, void *ud) {
        destroy_err *e = ud;
        prune_blocked(e->p, snap, reason);
        const char *at = strchr(snap, '@');
        char **nv = realloc(e->names, (e->n + 1) * sizeof *nv);
        if (!nv)
                return;
        e->names = nv;
        if ((e->names[e->n] = strdup(at ? at + 1 : snap)))
                e->n++;
}

/* The batch without the names that failed; NULL if none is left. */
static char *batch_without(const char *batch, const destroy_err *e, size_t *ret_count) {
        const char *at = strchr(batch, '@');
        if (!at)
                return NULL;
        size_t dl = (size_t)(at - batch), cap = strlen(batch) + 1, len = 0, count = 0;
        char *out = malloc(cap);
        if (!out)
                return NULL;
        memcpy(out, batch, dl + 1);
        len = dl + 1;
        const char *s = at + 1;
        while (*s) {
                size_t l = strcspn(s, ",");
                bool bad = false;
                for (size_t i = 0; i < e->n; i++)
                        if (strlen(e->names[i]) == l && strncmp(e->names[i], s, l) == 0)
                                bad = true;
                if (!bad) {
                        if (count)
                                out[len++] = ',';
                        memcpy(out + len, s, l);
                        len += l;
                        count++;
                }
                s += l;
                if (*s == ',')
                        s++;
        }
        out[len] = '\0';
        if (count == 0) {
                free(out);
                return NULL;
        }
        *ret_count = count;
        return out;
}

static void on_destroy(zfs *z, const org_exec_result *res, void *ud) {
        prunectx *p = ud;
        size_t i = p->next - 1;
        if (res->status == -ECANCELED) {
                p->result = -ECANCELED;
                p->next = p->n_batches;
                prune_next(p);
                return;
        }
        if (res->status == 0) {
                p->destroyed += res->dry_run ? 0 : p->batch_counts[i];
                p->retried = false;
                prune_next(p);
                return;
        }
        destroy_err e = {.p = p};
        zfs_parse_destroy_errors(res->err, on_destroy_error, &e);
        size_t left = 0;
        char *rest = e.n ? batch_without(p->batches[i], &e, &left) : NULL;
        if (e.n == 0) {
                char why[400];
                z->host->log(z->ctx, ORG_LOG_ERR, "prune %s: zfs destroy %s failed: %s", p->j->tag, p->batches[i],
                             zfs_failure(res, why, sizeof why));
                p->failed += p->batch_counts[i];
        }
        for (size_t k = 0; k < e.n; k++)
                free(e.names[k]);
        free(e.names);
        /* a batch is all-or-nothing: without the refused ones, once */
        if (rest && !p->retried) {
                free(p->batches[i]);
                p->batches[i] = rest;
                p->batch_counts[i] = left;
                p->retried = true;
                p->next = i;
        } else {
                if (rest)
                        p->failed += left;
                free(rest);
                p->retried = false;
        }
        prune_next(p);
}

static void prune_next(prunectx *p) {
        zfs *z = p->z;
        if (p->dry || p->next >= p->n_batches) {
                prune_finish(p);
                return;
        }
        const char *argv[] = {"zfs", "destroy", p->batches[p->next], NULL};
        p->next++;
        int r = zfs_run(z, argv, true, on_destroy, p);
        if (r < 0) {
                p->result = r;
                p->next = p->n_batches;
                prune_finish(p);
        }
}

static int by_name(const void *a, const void *b) {
        return strcmp(((const zfs_snap *)a)->name, ((const zfs_snap *)b)->name);
}

static size_t ds_len(const char *full) { return strcspn(full, "@"); }

static int add_batch(prunectx *p, zfs_snap *group, size_t n) {
        size_t dl = ds_len(group[0].name);
        size_t i = 0;
        while (i < n) {
                size_t len = dl + 2, count = 0, k;
                for (k = i; k < n && count < BATCH_MAX; k++)
                        if (group[k].destroy) {
                                len += strlen(group[k].name) - dl;
                                count++;
                        }
                if (count == 0)
                        break;
                char *b = malloc(len);
                if (!b)
                        return -ENOMEM;
                memcpy(b, group[0].name, dl);
                size_t off = dl;
                b[off++] = '@';
                size_t c = 0;
                for (size_t m = i; m < k; m++)
                        if (group[m].destroy) {
                                const char *s = group[m].name + dl + 1;
                                if (c++)
                                        b[off++] = ',';
                                size_t sl = strlen(s);
                                memcpy(b + off, s, sl);
                                off += sl;
                        }
                b[off] = '\0';
                char **nb = realloc(p->batches, (p->n_batches + 1) * sizeof *nb);
                size_t *nc = nb ? realloc(p->batch_counts, (p->n_batches + 1) * sizeof *nc) : NULL;
                if (nb)
                        p->batches = nb;
                if (!nc) {
                        free(b);
                        return -ENOMEM;
                }
                p->batch_counts = nc;
                p->batches[p->n_batches] = b;
                p->batch_counts[p->n_batches++] = count;
                i = k;
        }
        return 0;
}

/* Retention over the `zfs list -t snapshot` output: groups by dataset, decides, plans. */
static int prune_plan(prunectx *p, char *out) {
        zfs_snap *v = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        json_t *plan = json_array();
        for (char *line = out, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                char *f[3];
                uint64_t creation, refs;
                if (zfs_split_tabs(line, f, 3) != 3 || zfs_parse_u64(f[1], &creation) < 0 ||
                    zfs_parse_u64(f[2], &refs) < 0) {
                        r = -EBADMSG;
                        goto out;
                }
                char *at = strchr(f[0], '@');
                if (!at || !zfs_snapname_is(at + 1, p->j->tag))
                        continue;
                *at = '\0';
                bool ok = in_set(p->j, f[0]);
                *at = '@';
                if (!ok)
                        continue;
                if (n == cap) {
                        size_t nc = cap ? cap * 2 : 64;
                        zfs_snap *nv = realloc(v, nc * sizeof *nv);
                        if (!nv) {
                                r = -ENOMEM;
                                goto out;
                        }
                        v = nv;
                        cap = nc;
                }
                v[n] = (zfs_snap){.name = f[0], .creation = creation, .userrefs = refs};
                n++;
        }
        if (n)
                qsort(v, n, sizeof *v, by_name);
        for (size_t i = 0; i < n;) {
                size_t dl = ds_len(v[i].name), k = i;
                while (k < n && ds_len(v[k].name) == dl && strncmp(v[k].name, v[i].name, dl) == 0)
                        k++;
                size_t held = 0;
                size_t marked = zfs_retention(v + i, k - i, p->j->keep, &held);
                p->kept += (k - i) - marked - held;
                for (size_t m = i; m < k; m++) {
                        if (v[m].destroy)
                                json_array_append_new(plan, json_string(v[m].name));
                        else if (m - i >= p->j->keep && v[m].userrefs) {
                                char **nv = realloc(p->held_names, (p->n_held + 1) * sizeof *nv);
                                if (!nv) {
                                        r = -ENOMEM;
                                        goto out;
                                }
                                p->held_names = nv;
                                if (!(p->held_names[p->n_held] = strdup(v[m].name))) {
                                        r = -ENOMEM;
                                        goto out;
                                }
                                p->n_held++;
                        }
                }
                if (marked && (r = add_batch(p, v + i, k - i)) < 0)
                        goto out;
                i = k;
        }
        json_object_set_new(p->report, "plan", plan);
        plan = NULL;
out:
        json_decref(plan);
        free(v);
        return r;
}

#define HOLDS_MAX 512 /* snapshots asked about in one `zfs holds` */

/* `zfs holds -H` lines: NAME<TAB>TAG<TAB>TIMESTAMP. Each held snapshot is reported with
 * the tags that hold it (zrepl's, a send's, an operator's), so the operator knows whom
 * to ask; the destroys go on either way. */
static void on_holds(zfs *z, const org_exec_result *res, void *ud) {
        prunectx *p = ud;
        char *copy = res->status == 0 && res->out ? strdup(res->out) : NULL;
        for (size_t i = 0; i < p->n_held; i++) {
                char reason[300] = "held";
                size_t off = strlen(reason);
                size_t nl = strlen(p->held_names[i]);
                for (const char *line = copy; line && *line;) {
                        const char *end = strchr(line, '\n');
                        size_t len = end ? (size_t)(end - line) : strlen(line);
                        if (len > nl + 1 && strncmp(line, p->held_names[i], nl) == 0 && line[nl] == '\t') {
                                const char *tag = line + nl + 1;
                                size_t tl = strcspn(tag, "\t\n");
                                if (off < sizeof reason)
                                        off += (size_t)snprintf(reason + off, sizeof reason - off, "%s%.*s",
                                                                strstr(reason, " by ") ? "," : " by ", (int)tl, tag);
                        }
                        line = end ? end + 1 : line + len;
                }
                if (i >= HOLDS_MAX || res->status != 0)
                        snprintf(reason, sizeof reason, "held (zfs holds: %s)",
                                 i >= HOLDS_MAX ? "not asked" : "failed");
                prune_blocked(p, p->held_names[i], reason);
        }
        free(copy);
        if (res->status == -ECANCELED) {
                p->result = -ECANCELED;
                p->next = p->n_batches;
        }
        prune_next(p);
}

static void on_prune_list(zfs *z, const org_exec_result *res, void *ud) {
        prunectx *p = ud;
        char why[400];
        if (res->status != 0) {
                if (res->status != -ECANCELED)
                        z->host->log(z->ctx, ORG_LOG_ERR, "prune %s: zfs list failed: %s", p->j->tag,
                                     zfs_failure(res, why, sizeof why));
                p->result = res->status < 0 ? res->status : -EIO;
                prune_finish(p);
                return;
        }
        char *out = strdup(res->out ? res->out : "");
        int r = out ? prune_plan(p, out) : -ENOMEM;
        free(out);
        if (r < 0) {
                z->host->log(z->ctx, ORG_LOG_ERR, "prune %s: cannot read zfs list output: %s", p->j->tag,
                             r == -EBADMSG ? "not NAME<TAB>CREATION<TAB>USERREFS lines" : strerror(-r));
                p->result = r;
                p->next = p->n_batches;
        } else if (p->n_held) {
                argv_buf a = {0};
                int q = argv_add(&a, "zfs");
                q = q < 0 ? q : argv_add(&a, "holds");
                q = q < 0 ? q : argv_add(&a, "-H");
                for (size_t i = 0; i < p->n_held && i < HOLDS_MAX && q >= 0; i++)
                        q = argv_add(&a, p->held_names[i]);
                if (q >= 0)
                        q = zfs_run(z, a.v, false, on_holds, p);
                free(a.v);
                if (q >= 0)
                        return;
                org_exec_result failed = {.status = q, .out = "", .err = ""};
                on_holds(z, &failed, p);
                return;
        }
        prune_next(p);
}

static int prune_start(zfs *z, zfs_snapjob *j, bool dry, prune_done_fn done, void *ud) {
        prunectx *p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->z = z;
        p->j = j;
        p->dry = dry;
        p->done = done;
        p->ud = ud;
        p->report = json_pack("{s:s, s:i, s:[]}", "tag", j->tag, "keep", (int)j->keep, "blocked");
        argv_buf a = {0};
        int r = 0;
        const char *head[] = {"zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "name,creation,userrefs", "-s",
                              "creation", j->recursive ? "-r" : "-d", j->recursive ? NULL : "1"};
        for (size_t i = 0; i < sizeof head / sizeof *head && r >= 0; i++)
                if (head[i])
                        r = argv_add(&a, head[i]);
        for (size_t i = 0; i < j->n_datasets && r >= 0; i++)
                r = argv_add(&a, j->datasets[i]);
        if (r >= 0 && !p->report)
                r = -ENOMEM;
        if (r >= 0)
                r = zfs_run(z, a.v, false, on_prune_list, p);
        free(a.v);
        if (r < 0) {
                prune_free(p);
        }
        return r;
}

/* ---------- snapshot ---------- */

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

static void snap_done(zfs *z, json_t *prune, int result, void *ud) {
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
        if (s->result == -ECANCELED || prune_start(z, s->j, false, snap_done, s) < 0)
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
                if (!in_set(j, line)) {
                        cut = cut || excluded(j, line);
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
                pool_of(set[i], pool, sizeof pool);
                argv_buf a = {0};
                int r = argv_add(&a, "zfs");
                r = r < 0 ? r : argv_add(&a, "snapshot");
                bool use_r = j->recursive && !cut;
                if (use_r)
                        r = r < 0 ? r : argv_add(&a, "-r");
                for (size_t k = i; k < n && r >= 0; k++) {
                        char p2[ZFS_NAME_MAX];
                        pool_of(set[k], p2, sizeof p2);
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
                                if (strcmp(set[k], j->datasets[d]) != 0 && under(set[k], j->datasets[d]))
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
                        r = argv_add(&a, names[k]);
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
        s->t0 = mono_us(z);
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
        save_last_run(z, id, now);
        z->host->log(z->ctx, ORG_LOG_INFO, "snapshot job %s (%s)", j->tag, why);
        argv_buf a = {0};
        const char *head[] = {"zfs", "list", "-H", "-p", "-o", "name", "-t", "filesystem,volume"};
        for (size_t i = 0; i < sizeof head / sizeof *head && r >= 0; i++)
                r = argv_add(&a, head[i]);
        if (j->recursive && r >= 0)
                r = argv_add(&a, "-r");
        for (size_t i = 0; i < j->n_datasets && r >= 0; i++)
                r = argv_add(&a, j->datasets[i]);
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

typedef struct prune_verb {
        char *reply;
} prune_verb;

static void prune_verb_done(zfs *z, json_t *report, int result, void *ud) {
        prune_verb *v = ud;
        if (report)
                json_object_set_new(report, "result",
                                    json_string(result == 0 ? "ok" : result > 0 ? "partial" : "failed"));
        if (report)
                (void)zfs_reply(z, v->reply, report);
        else
                (void)zfs_reply_error(z, v->reply, "prune failed: %s", strerror(-result));
        free(v->reply);
        free(v);
}

int zfs_job_prune(zfs *z, zfs_snapjob *j, bool dry_run, const char *reply) {
        prune_verb *v = calloc(1, sizeof *v);
        if (!v || !(v->reply = strdup(reply))) {
                free(v);
                return -ENOMEM;
        }
        int r = prune_start(z, j, dry_run, prune_verb_done, v);
        if (r < 0) {
                free(v->reply);
                free(v);
        }
        return r;
}

zfs_snapjob *zfs_job_find(zfs *z, const char *tag) {
        for (size_t i = 0; tag && i < z->n_jobs; i++)
                if (strcmp(z->jobs[i].tag, tag) == 0)
                        return &z->jobs[i];
        return NULL;
}

/* ---------- scrub and trim, one pool at a time ---------- */

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

static void maint_job(zfs *z, bool scrub) {
        zfs_job_stat *st = scrub ? &z->scrub_st : &z->trim_st;
        int64_t now = (int64_t)(zfs_now_us(z) / ZFS_US);
        st->runs++;
        st->last_run = now;
        save_last_run(z, scrub ? "scrub" : "trim", now);
        for (int r = 0; r < ZFS_ROLES; r++) {
                if (!z->pools[r][0] || (!scrub && r == ZFS_ARCHIVE))
                        continue;
                (void)zfs_maint_add(z, scrub, z->pools[r]);
        }
        z->host->log(z->ctx, ORG_LOG_INFO, "%s job: %zu pool(s) queued", scrub ? "scrub" : "trim", z->n_maint);
        zfs_health_run(z); /* fresh state before the first start */
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
                maint_job(z, true);
        if (z->trim_enabled && zfs_cal_due(&z->trim_cal, z->trim_st.last_run, now))
                maint_job(z, false);
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
