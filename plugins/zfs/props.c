/* props.c — the property policy: on the named datasets only (a pool root only when it is
 * named), read with one `zfs get -H -p` and changed with one `zfs set a=b c=d DS` per
 * dataset, only where the value in force differs from the policy's (a value already
 * in force, even inherited, is left alone and `verify` says it is inherited);
 * `sync=disabled` only on a dataset marked `unsafe: true`, and without it a
 * `sync=disabled` found there is put back to `standard`. Then `autotrim=on` on the fast
 * and scratch pools. Runs at start and every properties_interval; dry_run logs the
 * plan (the host short-circuits the set commands). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

typedef struct propctx {
        zfs *z;
        unsigned pending;
        bool pools_stage;
        uint64_t sets_before;
} propctx;

static void seen_clear(zfs *z) {
        for (size_t i = 0; i < z->n_seen; i++) {
                free(z->seen[i].dataset);
                free(z->seen[i].property);
                free(z->seen[i].want);
                free(z->seen[i].have);
                free(z->seen[i].source);
        }
        free(z->seen);
        z->seen = NULL;
        z->n_seen = 0;
}

static void seen_add(zfs *z, const char *ds, const char *prop, const char *want, const char *have,
                     const char *source) {
        zfs_propseen *nv = realloc(z->seen, (z->n_seen + 1) * sizeof *nv);
        if (!nv)
                return;
        z->seen = nv;
        zfs_propseen *s = &z->seen[z->n_seen++];
        s->dataset = strdup(ds);
        s->property = strdup(prop);
        s->want = strdup(want);
        s->have = strdup(have);
        s->source = strdup(source);
}

static void props_end(propctx *p) {
        zfs *z = p->z;
        z->props_running = false;
        z->host->metric_set(z->ctx, "zfs_property_sets_total", ORG_METRIC_COUNTER, (double)z->props_set,
                            "zfs set / zpool set calls made by the property policy");
        bool changed = z->props_set != p->sets_before;
        free(p);
        /* read once more what was just set, so that verify shows the values in force */
        if (changed && !z->props_reread && !z->stopping) {
                z->props_reread = true;
                zfs_props_run(z);
        } else
                z->props_reread = false;
}

static void pools_stage(propctx *p);

static void stage_done(propctx *p) {
        if (--p->pending > 0)
                return;
        if (!p->pools_stage && !p->z->stopping)
                pools_stage(p);
        else
                props_end(p);
}

static void on_set(zfs *z, const org_exec_result *res, void *ud) {
        propctx *p = ud;
        char why[400];
        if (res->status == 0 && !res->dry_run)
                z->props_set++;
        else if (res->status != 0 && res->status != -ECANCELED)
                z->host->log(z->ctx, ORG_LOG_ERR, "properties: set failed: %s", zfs_failure(res, why, sizeof why));
        stage_done(p);
}

/* Rows of `-o name,property,value,source`: calls fn for each; returns -EBADMSG on a
 * malformed line. */
static int rows(const char *text, void (*fn)(char **f, void *ud), void *ud) {
        char *copy = strdup(text ? text : "");
        if (!copy)
                return -ENOMEM;
        int r = 0;
        for (char *line = copy, *next; *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                else
                        next = line + strlen(line);
                if (!*line)
                        continue;
                char *f[4];
                if (zfs_split_tabs(line, f, 4) != 4) {
                        r = -EBADMSG;
                        break;
                }
                fn(f, ud);
        }
        free(copy);
        return r;
}

typedef struct getrows {
        char **f;                /* flattened name, property, value, source */
        size_t n;
} getrows;

static void keep_row(char **f, void *ud) {
        getrows *g = ud;
        char **nv = realloc(g->f, (g->n + 4) * sizeof *nv);
        if (!nv)
                return;
        g->f = nv;
        for (int i = 0; i < 4; i++)
                g->f[g->n + (size_t)i] = strdup(f[i]);
        g->n += 4;
}

static void getrows_free(getrows *g) {
        for (size_t i = 0; i < g->n; i++)
                free(g->f[i]);
        free(g->f);
}

static const char *row_find(const getrows *g, const char *ds, const char *prop, const char **ret_source) {
        for (size_t i = 0; i + 3 < g->n; i += 4)
                if (g->f[i] && g->f[i + 1] && strcmp(g->f[i], ds) == 0 && strcmp(g->f[i + 1], prop) == 0) {
                        *ret_source = g->f[i + 3] ? g->f[i + 3] : "";
                        return g->f[i + 2];
                }
        return NULL;
}

/* "1M" and "1048576" (what -p prints) are one value: sizes compare as bytes. */
static bool size_bytes(const char *s, uint64_t *ret) {
        uint64_t v = 0;
        size_t i = 0;
        for (; s[i] >= '0' && s[i] <= '9'; i++)
                v = v * 10 + (uint64_t)(s[i] - '0');
        if (i == 0)
                return false;
        const char *units = "KMGTP";
        const char *u = s[i] ? strchr(units, s[i] >= 'a' ? s[i] - 32 : s[i]) : NULL;
        if (s[i] && (!u || (s[i + 1] && !((s[i + 1] == 'B' || s[i + 1] == 'b') && !s[i + 2]))))
                return false;
        for (const char *k = units; u && k <= u; k++)
                v *= 1024;
        *ret = v;
        return true;
}

static bool same_value(const char *have, const char *want) {
        uint64_t a, b;
        if (strcmp(have, want) == 0)
                return true;
        return size_bytes(have, &a) && size_bytes(want, &b) && a == b;
}

static bool is_implicit_sync(const zfs_propset *ps, size_t k) {
        return ps->sync_implicit && k == ps->n - 1;
}

static void on_get(zfs *z, const org_exec_result *res, void *ud) {
        propctx *p = ud;
        char why[400];
        if (res->status == -ECANCELED) {
                props_end(p);
                return;
        }
        if (res->status != 0)
                /* a missing dataset makes zfs get exit 1 and still print the others */
                z->host->log(z->ctx, ORG_LOG_WARNING, "properties: zfs get: %s", zfs_failure(res, why, sizeof why));
        getrows g = {0};
        if (res->status < 0 || rows(res->out, keep_row, &g) < 0) {
                z->host->log(z->ctx, ORG_LOG_ERR, "properties: cannot read zfs get output");
                getrows_free(&g);
                p->pending = 1;
                stage_done(p);
                return;
        }
        seen_clear(z);
        p->pending = 1; /* held while queuing */
        for (size_t i = 0; i < z->n_props; i++) {
                const zfs_propset *ps = &z->props[i];
                char **sets = calloc(ps->n + 4, sizeof *sets);
                size_t ns = 0;
                const char *argv_head[] = {"zfs", "set"};
                bool missing = false;
                for (size_t k = 0; sets && k < ps->n; k++) {
                        const char *src = "";
                        const char *have = row_find(&g, ps->dataset, ps->keys[k], &src);
                        if (!have) {
                                missing = true;
                                seen_add(z, ps->dataset, ps->keys[k], ps->values[k], "(missing)", "");
                                continue;
                        }
                        seen_add(z, ps->dataset, ps->keys[k], is_implicit_sync(ps, k) ? "not disabled" : ps->values[k],
                                 have, src);
                        bool differs = is_implicit_sync(ps, k) ? strcmp(have, "disabled") == 0
                                                               : !same_value(have, ps->values[k]);
                        if (!differs)
                                continue;
                        size_t l = strlen(ps->keys[k]) + strlen(ps->values[k]) + 2;
                        if ((sets[ns] = malloc(l)))
                                snprintf(sets[ns++], l, "%s=%s", ps->keys[k], ps->values[k]);
                        z->host->log(z->ctx, ORG_LOG_NOTICE, "properties: %s %s: %s (%s) -> %s", ps->dataset,
                                     ps->keys[k], have, src, ps->values[k]);
                }
                if (missing)
                        z->host->log(z->ctx, ORG_LOG_WARNING, "properties: dataset %s does not exist: not touched",
                                     ps->dataset);
                if (ns) {
                        const char **argv = calloc(ns + 4, sizeof *argv);
                        if (argv) {
                                argv[0] = argv_head[0];
                                argv[1] = argv_head[1];
                                for (size_t k = 0; k < ns; k++)
                                        argv[2 + k] = sets[k];
                                argv[2 + ns] = ps->dataset;
                                p->pending++;
                                if (zfs_run(z, argv, true, on_set, p) < 0)
                                        p->pending--;
                        }
                        free(argv);
                }
                for (size_t k = 0; sets && k < ns; k++)
                        free(sets[k]);
                free(sets);
        }
        getrows_free(&g);
        stage_done(p);
}

static void on_pool_get(zfs *z, const org_exec_result *res, void *ud) {
        propctx *p = ud;
        getrows g = {0};
        if (res->status == -ECANCELED) {
                props_end(p);
                return;
        }
        if (res->status < 0 || rows(res->out, keep_row, &g) < 0) {
                char why[400];
                z->host->log(z->ctx, ORG_LOG_ERR, "properties: zpool get autotrim: %s",
                             zfs_failure(res, why, sizeof why));
                getrows_free(&g);
                props_end(p);
                return;
        }
        p->pending = 1;
        for (int r = 0; r < ZFS_ROLES; r++) {
                if (r == ZFS_ARCHIVE || !z->pools[r][0] ||
                    (r == ZFS_SCRATCH && !strcmp(z->pools[r], z->pools[ZFS_FAST])))
                        continue;
                const char *src = "";
                const char *have = row_find(&g, z->pools[r], "autotrim", &src);
                char what[ZFS_NAME_MAX + 16];
                snprintf(what, sizeof what, "pool:%s", z->pools[r]);
                seen_add(z, what, "autotrim", "on", have ? have : "(missing)", src);
                if (!have || strcmp(have, "on") == 0)
                        continue;
                z->host->log(z->ctx, ORG_LOG_NOTICE, "properties: pool %s autotrim: %s -> on", z->pools[r], have);
                const char *argv[] = {"zpool", "set", "autotrim=on", z->pools[r], NULL};
                p->pending++;
                if (zfs_run(z, argv, true, on_set, p) < 0)
                        p->pending--;
        }
        getrows_free(&g);
        stage_done(p);
}

static void pools_stage(propctx *p) {
        zfs *z = p->z;
        p->pools_stage = true;
        const char *argv[12] = {"zpool", "get", "-H", "-p", "-o", "name,property,value,source", "autotrim", NULL};
        size_t n = 7;
        for (int r = 0; r < ZFS_ROLES && n < 7 + 2; r++)
                if (r != ZFS_ARCHIVE && z->pools[r][0] && z->autotrim)
                        argv[n++] = z->pools[r];
        argv[n] = NULL;
        if (n == 7 || zfs_run(z, argv, false, on_pool_get, p) < 0)
                props_end(p);
}

void zfs_props_run(zfs *z) {
        if (z->props_running)
                return;
        propctx *p = calloc(1, sizeof *p);
        if (!p)
                return;
        p->z = z;
        p->sets_before = z->props_set;
        z->props_running = true;
        if (z->n_props == 0) {
                seen_clear(z);
                pools_stage(p);
                return;
        }
        /* one zfs get for every dataset, over the union of the properties */
        char props[1024] = "";
        size_t off = 0;
        for (size_t i = 0; i < z->n_props; i++)
                for (size_t k = 0; k < z->props[i].n; k++) {
                        const char *key = z->props[i].keys[k];
                        char probe[80];
                        snprintf(probe, sizeof probe, ",%s,", key);
                        char cur[1030];
                        snprintf(cur, sizeof cur, ",%s,", props);
                        if (strstr(cur, probe))
                                continue;
                        off += (size_t)snprintf(props + off, off < sizeof props ? sizeof props - off : 0, "%s%s",
                                                off ? "," : "", key);
                }
        const char **argv = calloc(z->n_props + 8, sizeof *argv);
        if (!argv) {
                props_end(p);
                return;
        }
        size_t n = 0;
        argv[n++] = "zfs";
        argv[n++] = "get";
        argv[n++] = "-H";
        argv[n++] = "-p";
        argv[n++] = "-o";
        argv[n++] = "name,property,value,source";
        argv[n++] = props;
        for (size_t i = 0; i < z->n_props; i++)
                argv[n++] = z->props[i].dataset;
        argv[n] = NULL;
        if (zfs_run(z, argv, false, on_get, p) < 0)
                props_end(p);
        free(argv);
}

static void on_props_timer(org_ctx *ctx, uint64_t id, void *ud) {
        (void)ctx;
        (void)id;
        zfs_props_run(ud);
}

int zfs_props_start(zfs *z) {
        zfs_props_run(z);
        return z->host->timer_add(z->ctx, z->properties_interval_ms, z->properties_interval_ms, on_props_timer, z,
                                  &z->props_timer);
}

void zfs_props_stop(zfs *z) {
        if (z->props_timer)
                (void)z->host->timer_cancel(z->ctx, z->props_timer);
        z->props_timer = 0;
        seen_clear(z);
}

void zfs_props_verify(zfs *z, void *checks) {
        json_t *a = checks;
        for (size_t i = 0; i < z->n_seen; i++) {
                const zfs_propseen *s = &z->seen[i];
                if (!s->dataset || !s->property || !s->want || !s->have || !s->source)
                        continue;
                char what[ZFS_NAME_MAX + 64], have[256];
                snprintf(what, sizeof what, "%s %s", s->dataset, s->property);
                snprintf(have, sizeof have, "%s (%s)", s->have, *s->source ? s->source : "?");
                bool ok = strcmp(s->want, "not disabled") == 0 ? strcmp(s->have, "disabled") != 0 &&
                                                                          strcmp(s->have, "(missing)") != 0
                                                                : same_value(s->have, s->want);
                json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:b, s:s}", "what", what, "want", s->want, "have",
                                                   have, "ok", ok, "source", s->source));
        }
}
