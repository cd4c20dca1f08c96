/* prune.c — retention of one tag over the set of its job: one `zfs list -t snapshot -o
 * name,creation,userrefs` over the roots, our names only (retention.c decides per
 * dataset: the newest `keep` stay, the newest always, a held one always), the held ones
 * asked about with `zfs holds -H` so the report names who holds them, then one `zfs
 * destroy ds@a,b,c` per dataset (batches of at most BATCH_MAX). A batch is
 * all-or-nothing in ZFS: when it fails on busy or held snapshots, those are reported
 * (log and zfs.prune.blocked, once per snapshot) and the rest is destroyed in one retry. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

#define BATCH_MAX 256        /* snapshots per destroy argument */
#define BLOCKED_MAX 4096     /* reported-once memory */

typedef struct prunectx {
        zfs *z;
        zfs_snapjob *j;
        bool dry;
        zfs_prune_done_fn done;
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
        zfs_prune_done_fn done = p->done;
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
                bool ok = zfs_job_in_set(p->j, f[0]);
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
                zfs_argv a = {0};
                int q = zfs_argv_add(&a, "zfs");
                q = q < 0 ? q : zfs_argv_add(&a, "holds");
                q = q < 0 ? q : zfs_argv_add(&a, "-H");
                for (size_t i = 0; i < p->n_held && i < HOLDS_MAX && q >= 0; i++)
                        q = zfs_argv_add(&a, p->held_names[i]);
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

int zfs_prune_start(zfs *z, zfs_snapjob *j, bool dry, zfs_prune_done_fn done, void *ud) {
        prunectx *p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->z = z;
        p->j = j;
        p->dry = dry;
        p->done = done;
        p->ud = ud;
        p->report = json_pack("{s:s, s:i, s:[]}", "tag", j->tag, "keep", (int)j->keep, "blocked");
        zfs_argv a = {0};
        int r = 0;
        const char *head[] = {"zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "name,creation,userrefs", "-s",
                              "creation", j->recursive ? "-r" : "-d", j->recursive ? NULL : "1"};
        for (size_t i = 0; i < sizeof head / sizeof *head && r >= 0; i++)
                if (head[i])
                        r = zfs_argv_add(&a, head[i]);
        for (size_t i = 0; i < j->n_datasets && r >= 0; i++)
                r = zfs_argv_add(&a, j->datasets[i]);
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

typedef struct prune_verb {
        char *reply;
} prune_verb;

static void prune_verb_done(zfs *z, void *rep, int result, void *ud) {
        json_t *report = rep;
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
        int r = zfs_prune_start(z, j, dry_run, prune_verb_done, v);
        if (r < 0) {
                free(v->reply);
                free(v);
        }
        return r;
}

