/* health.c — the health pass, every health_interval: `zpool list -H -p` (health, size,
 * alloc, free, capacity, fragmentation of every pool) then `zpool status -p -t` (scan
 * line, trim progress, data errors), published as sys.health with every pool by name.
 * Each pool's alert conditions (a state other than ONLINE, capacity above cap_alert,
 * errors of the last scrub, data errors, a named pool missing) form a key: a new or
 * changed key is published on alert.zfs.<pool> at once, an unchanged one again after
 * alert_repeat, and alert.zfs.<pool>.cleared when it becomes empty. A failed pass
 * (non-zero exit, garbage, time-out) is logged and counted and changes no state. The
 * pass ends by advancing scrub/trim (jobs.c), which need its fresh view. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

typedef struct healthctx {
        zfs *z;
        uint64_t t0;
        zfs_pool_info *pools;
        size_t n;
} healthctx;

const zfs_pool_info *zfs_pool_find(const zfs *z, const char *name) {
        for (size_t i = 0; i < z->n_pools_seen; i++)
                if (strcmp(z->pools_seen[i].name, name) == 0)
                        return &z->pools_seen[i];
        return NULL;
}

static void health_end(healthctx *h, bool ok) {
        zfs *z = h->z;
        z->health_running = false;
        if (!ok) {
                z->health_failures++;
                z->host->metric_set(z->ctx, "zfs_health_failures_total", ORG_METRIC_COUNTER,
                                    (double)z->health_failures, "health passes that failed (zpool error or garbage)");
        }
        free(h->pools);
        free(h);
        zfs_maint_step(z);
}

static zfs_alert *alert_get(zfs *z, const char *pool) {
        for (size_t i = 0; i < z->n_alerts; i++)
                if (strcmp(z->alerts[i].pool, pool) == 0)
                        return &z->alerts[i];
        zfs_alert *nv = realloc(z->alerts, (z->n_alerts + 1) * sizeof *nv);
        if (!nv)
                return NULL;
        z->alerts = nv;
        zfs_alert *a = &z->alerts[z->n_alerts++];
        memset(a, 0, sizeof *a);
        snprintf(a->pool, sizeof a->pool, "%s", pool);
        return a;
}

static void publish_json(zfs *z, const char *subject, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        int r = text ? z->host->publish(z->ctx, subject, NULL, 0, text, strlen(text)) : -ENOMEM;
        if (r < 0)
                z->host->log(z->ctx, ORG_LOG_WARNING, "cannot publish %s: %s", subject, strerror(-r));
        free(text);
}

/* alert.zfs.<pool>: a '.' in a pool name would split the token. */
static void alert_subject(const char *pool, bool cleared, char *buf, size_t size) {
        char tok[ZFS_NAME_MAX];
        snprintf(tok, sizeof tok, "%s", pool);
        for (char *p = tok; *p; p++)
                if (*p == '.' || *p == '*' || *p == '>' || *p == ' ')
                        *p = '_';
        snprintf(buf, size, "alert.zfs.%s%s", tok, cleared ? ".cleared" : "");
}

static void evaluate(zfs *z, const zfs_pool_info *pi, const char *pool) {
        zfs_alert *a = alert_get(z, pool);
        if (!a)
                return;
        a->seen = true;
        char key[256] = "";
        size_t off = 0;
        json_t *conds = json_array();
#define COND(...)                                                                                        \
        do {                                                                                             \
                char c_[128];                                                                            \
                snprintf(c_, sizeof c_, __VA_ARGS__);                                                    \
                json_array_append_new(conds, json_string(c_));                                           \
                off += (size_t)snprintf(key + off, off < sizeof key ? sizeof key - off : 0, "%s%s",      \
                                        off ? "," : "", c_);                                             \
        } while (0)
        if (!pi)
                COND("missing");
        else {
                if (strcmp(pi->health, "ONLINE") != 0)
                        COND("state %s", pi->health);
                if (pi->cap > z->cap_alert)
                        COND("capacity above %d%%", z->cap_alert);
                if (pi->have_status && pi->st.scrub_done && pi->st.scrub_errors)
                        COND("scrub errors");
                if (pi->have_status && pi->st.data_errors)
                        COND("data errors");
        }
#undef COND
        if (off >= sizeof key)
                key[sizeof key - 1] = '\0';
        uint64_t now = z->host->now_monotonic_us(z->ctx);
        char ts[40], subject[ZFS_NAME_MAX + 32];
        zfs_rfc3339(zfs_now_us(z), ts, sizeof ts);
        bool changed = strcmp(key, a->key) != 0;
        if (!*key) {
                if (*a->key) {
                        alert_subject(pool, true, subject, sizeof subject);
                        z->host->log(z->ctx, ORG_LOG_NOTICE, "pool %s: alert cleared (was: %s)", pool, a->key);
                        publish_json(z, subject,
                                     json_pack("{s:s, s:s, s:s, s:i, s:s}", "ts", ts, "pool", pool, "health",
                                               pi ? pi->health : "MISSING", "cap", pi ? pi->cap : -1, "was", a->key));
                        a->key[0] = '\0';
                }
                json_decref(conds);
                return;
        }
        if (!changed && now - a->sent_us < z->alert_repeat_ms * 1000) {
                json_decref(conds);
                return;
        }
        alert_subject(pool, false, subject, sizeof subject);
        if (changed)
                z->host->log(z->ctx, ORG_LOG_ERR, "pool %s: %s", pool, key);
        json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:b, s:i, s:i, s:I}", "ts", ts, "pool", pool, "health",
                              pi ? pi->health : "MISSING", "conditions", conds, "repeat", !changed, "cap",
                              pi ? pi->cap : -1, "cap_alert", z->cap_alert, "scrub_errors",
                              (json_int_t)(pi && pi->have_status ? pi->st.scrub_errors : 0));
        if (o && pi && pi->have_status) {
                json_object_set_new(o, "scan", json_string(pi->st.scan));
                json_object_set_new(o, "errors", json_string(pi->st.errors));
        }
        publish_json(z, subject, o);
        snprintf(a->key, sizeof a->key, "%s", key);
        a->sent_us = now;
}

static json_t *pool_json(const zfs_pool_info *p) {
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:i, s:i}", "name", p->name, "health", p->health, "size",
                              (json_int_t)p->size, "alloc", (json_int_t)p->alloc, "free", (json_int_t)p->free, "cap",
                              p->cap, "frag", p->frag);
        if (o && p->have_status) {
                json_object_set_new(o, "scan", json_string(p->st.scan));
                json_object_set_new(o, "scrubbing", json_boolean(p->st.scrubbing));
                json_object_set_new(o, "resilvering", json_boolean(p->st.resilvering));
                json_object_set_new(o, "trimming", json_boolean(p->st.trimming));
                json_object_set_new(o, "errors", json_string(p->st.errors));
                if (p->st.scrub_done)
                        json_object_set_new(o, "last_scrub",
                                            json_pack("{s:I, s:I}", "repaired", (json_int_t)p->st.scrub_repaired,
                                                      "errors", (json_int_t)p->st.scrub_errors));
        }
        return o;
}

void *zfs_pools_json(const zfs *z) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < z->n_pools_seen; i++)
                json_array_append_new(a, pool_json(&z->pools_seen[i]));
        return a;
}

static void health_publish(zfs *z) {
        const org_host *h = z->host;
        for (size_t i = 0; i < z->n_alerts; i++)
                z->alerts[i].seen = false;
        for (size_t i = 0; i < z->n_pools_seen; i++)
                evaluate(z, &z->pools_seen[i], z->pools_seen[i].name);
        for (int r = 0; r < ZFS_ROLES; r++)
                if (z->pools[r][0] && !zfs_pool_find(z, z->pools[r]))
                        evaluate(z, NULL, z->pools[r]);
        /* a pool gone that nobody named (exported): its alert ends */
        for (size_t i = 0; i < z->n_alerts; i++)
                if (!z->alerts[i].seen && z->alerts[i].key[0]) {
                        char subject[ZFS_NAME_MAX + 32], ts[40];
                        alert_subject(z->alerts[i].pool, true, subject, sizeof subject);
                        zfs_rfc3339(zfs_now_us(z), ts, sizeof ts);
                        publish_json(z, subject,
                                     json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "pool", z->alerts[i].pool, "health",
                                               "EXPORTED", "was", z->alerts[i].key));
                        z->alerts[i].key[0] = '\0';
                }
        char ts[40];
        zfs_rfc3339(zfs_now_us(z), ts, sizeof ts);
        publish_json(z, "sys.health",
                     json_pack("{s:s, s:s, s:o}", "ts", ts, "source", "zfs", "pools", zfs_pools_json(z)));
        for (size_t i = 0; i < z->n_pools_seen; i++) {
                const zfs_pool_info *p = &z->pools_seen[i];
                char n[ZFS_NAME_MAX + 64];
                snprintf(n, sizeof n, "zfs_pool_online{pool=\"%s\"}", p->name);
                h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, strcmp(p->health, "ONLINE") == 0,
                              "1 while the pool is ONLINE");
                snprintf(n, sizeof n, "zfs_pool_capacity_percent{pool=\"%s\"}", p->name);
                h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, p->cap, "zpool list capacity");
                snprintf(n, sizeof n, "zfs_pool_fragmentation_percent{pool=\"%s\"}", p->name);
                h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, p->frag, "zpool list fragmentation (-1 unknown)");
                snprintf(n, sizeof n, "zfs_pool_scrub_errors{pool=\"%s\"}", p->name);
                h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, p->have_status ? (double)p->st.scrub_errors : 0,
                              "errors found by the last scrub");
        }
        for (size_t i = 0; i < z->n_alerts; i++) {
                char n[ZFS_NAME_MAX + 64];
                snprintf(n, sizeof n, "zfs_pool_alert{pool=\"%s\"}", z->alerts[i].pool);
                h->metric_set(z->ctx, n, ORG_METRIC_GAUGE, z->alerts[i].key[0] != '\0', "1 while the pool is alerted");
        }
        h->metric_set(z->ctx, "zfs_health_pass_seconds", ORG_METRIC_GAUGE, (double)z->health_last_us / 1e6,
                      "duration of the last health pass (both zpool commands)");
        h->metric_set(z->ctx, "zfs_health_passes_total", ORG_METRIC_COUNTER, (double)z->health_passes,
                      "health passes done");
}

static void on_status(zfs *z, const org_exec_result *res, void *ud) {
        healthctx *h = ud;
        char why[400];
        if (res->status != 0) {
                if (res->status != -ECANCELED)
                        z->host->log(z->ctx, ORG_LOG_ERR, "health: zpool status failed: %s",
                                     zfs_failure(res, why, sizeof why));
                health_end(h, false);
                return;
        }
        zfs_pool_status *st = NULL;
        size_t n = 0;
        int r = zfs_parse_zpool_status(res->out, &st, &n);
        if (r < 0 && h->n > 0) {
                z->host->log(z->ctx, ORG_LOG_ERR, "health: cannot read zpool status output: %s",
                             r == -EBADMSG ? "no \"pool:\" line" : strerror(-r));
                health_end(h, false);
                return;
        }
        for (size_t i = 0; i < n; i++)
                for (size_t k = 0; k < h->n; k++)
                        if (strcmp(st[i].name, h->pools[k].name) == 0) {
                                h->pools[k].st = st[i];
                                h->pools[k].have_status = true;
                        }
        free(st);
        /* the new view replaces the old one only now, whole */
        free(z->pools_seen);
        z->pools_seen = h->pools;
        z->n_pools_seen = h->n;
        h->pools = NULL;
        h->n = 0;
        z->health_passes++;
        z->health_last_us = z->host->now_monotonic_us(z->ctx) - h->t0;
        health_publish(z);
        health_end(h, true);
}

static int parse_list(healthctx *h, const char *text) {
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
                char *f[7];
                uint64_t cap = 0, frag = 0;
                zfs_pool_info p = {0};
                if (zfs_split_tabs(line, f, 7) != 7 || !*f[0] || strlen(f[0]) >= sizeof p.name ||
                    strlen(f[1]) >= sizeof p.health || zfs_parse_u64(f[2], &p.size) < 0 ||
                    zfs_parse_u64(f[3], &p.alloc) < 0 || zfs_parse_u64(f[4], &p.free) < 0 ||
                    (zfs_parse_u64(f[5], &cap) < 0 && strcmp(f[5], "-") != 0) ||
                    (zfs_parse_u64(f[6], &frag) < 0 && strcmp(f[6], "-") != 0)) {
                        r = -EBADMSG;
                        break;
                }
                snprintf(p.name, sizeof p.name, "%s", f[0]);
                snprintf(p.health, sizeof p.health, "%s", f[1]);
                p.cap = strcmp(f[5], "-") == 0 ? -1 : (int)(cap > 1000 ? 1000 : cap);
                p.frag = strcmp(f[6], "-") == 0 ? -1 : (int)(frag > 1000 ? 1000 : frag);
                zfs_pool_info *nv = realloc(h->pools, (h->n + 1) * sizeof *nv);
                if (!nv) {
                        r = -ENOMEM;
                        break;
                }
                h->pools = nv;
                h->pools[h->n++] = p;
        }
        free(copy);
        return r;
}

static void on_list(zfs *z, const org_exec_result *res, void *ud) {
        healthctx *h = ud;
        char why[400];
        if (res->status != 0) {
                if (res->status != -ECANCELED)
                        z->host->log(z->ctx, ORG_LOG_ERR, "health: zpool list failed: %s",
                                     zfs_failure(res, why, sizeof why));
                health_end(h, false);
                return;
        }
        int r = parse_list(h, res->out);
        if (r < 0) {
                z->host->log(z->ctx, ORG_LOG_ERR, "health: cannot read zpool list output: %s",
                             r == -EBADMSG ? "not NAME HEALTH SIZE ALLOC FREE CAP FRAG, tab-separated" : strerror(-r));
                health_end(h, false);
                return;
        }
        const char *argv[] = {"zpool", "status", "-p", "-t", NULL};
        if (h->n == 0) {
                /* no pool imported: nothing to ask zpool status about */
                org_exec_result none = {.status = 0, .out = "", .err = ""};
                on_status(z, &none, h);
                return;
        }
        if (zfs_run(z, argv, false, on_status, h) < 0)
                health_end(h, false);
}

void zfs_health_run(zfs *z) {
        if (z->health_running)
                return;
        healthctx *h = calloc(1, sizeof *h);
        if (!h)
                return;
        h->z = z;
        h->t0 = z->host->now_monotonic_us(z->ctx);
        z->health_running = true;
        const char *argv[] = {"zpool", "list", "-H", "-p", "-o", "name,health,size,alloc,free,cap,frag", NULL};
        if (zfs_run(z, argv, false, on_list, h) < 0) {
                z->health_running = false;
                free(h);
        }
}

static void on_health_timer(org_ctx *ctx, uint64_t id, void *ud) {
        (void)ctx;
        (void)id;
        zfs_health_run(ud);
}

int zfs_health_start(zfs *z) {
        zfs_health_run(z);
        return z->host->timer_add(z->ctx, z->health_interval_ms, z->health_interval_ms, on_health_timer, z,
                                  &z->health_timer);
}

void zfs_health_stop(zfs *z) {
        if (z->health_timer)
                (void)z->host->timer_cancel(z->ctx, z->health_timer);
        z->health_timer = 0;
        free(z->pools_seen);
        z->pools_seen = NULL;
        z->n_pools_seen = 0;
        free(z->alerts);
        z->alerts = NULL;
        z->n_alerts = 0;
}
