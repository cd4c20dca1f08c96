/* zfs.c — the zfs plugin's descriptor, lifecycle and verbs. init reads the config
 * (config.c), starts the calendar (jobs.c: snapshot tags, scrub, trim, a missed job
 * once), the health pass (health.c) and the property policy (props.c); the verbs
 * answer asynchronously once their zfs/zpool commands are done (queue.c runs them one
 * at a time, never on the loop's time). fini cancels what is in flight; every chain
 * then frees what it holds. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "zfs.h"

static const org_verb zfs_verbs[] = {
        {.name = "status", .mutating = false,
         .help = "pools (health, capacity, scan), alerts, jobs (last/next run), queue"},
        {.name = "snapshots", .mutating = false, .args = "[DATASET] [--tag TAG]",
         .help = "the snapshots this plugin made (organism-<tag>-...), oldest first"},
        {.name = "snapshot", .mutating = true, .args = "TAG", .help = "runs the snapshot job TAG now (then its prune)"},
        {.name = "prune", .mutating = true, .args = "TAG [--dry-run true]",
         .help = "retention of TAG on every dataset of its set; --dry-run true only plans"},
        {.name = "scrub", .mutating = true, .args = "POOL", .help = "queues a scrub of POOL (one pool at a time)"},
        {.name = "layout", .mutating = true, .args = "[--confirm true]",
         .help = "the organ datasets: the plan; with --confirm true creates what is missing"},
        ORG_VERBS_END,
};

void zfs_rfc3339(uint64_t us, char *buf, size_t size) {
        time_t t = (time_t)(us / ZFS_US);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(buf, size, "1970-01-01T00:00:00Z");
}

int zfs_reply(zfs *z, const char *reply, void *obj) {
        json_t *o = obj;
        if (z->stopping) {
                /* the instance is going: the caller's request times out, nothing is sent */
                json_decref(o);
                return -ECANCELED;
        }
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        const char *t = text ? text : "{\"error\":\"out of memory\"}";
        int r = z->host->respond(z->ctx, reply, t, strlen(t));
        free(text);
        return r;
}

int zfs_reply_error(zfs *z, const char *reply, const char *fmt, ...) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        return zfs_reply(z, reply, json_pack("{s:s}", "error", buf));
}

static void zfs_free(zfs *z) {
        if (!z)
                return;
        zfs_queue_free(z); /* first: the chains end while the state they use still exists */
        zfs_jobs_stop(z);
        zfs_health_stop(z);
        zfs_props_stop(z);
        zfs_config_free(z);
        free(z);
}

static int zfs_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        if (!ORG_HOST_HAS(host, timer_add_realtime) || !ORG_HOST_HAS(host, time_change_add)) {
                host->log(ctx, ORG_LOG_ERR, "this agentd has no wall-clock timers: zfs needs a newer one");
                return -EOPNOTSUPP;
        }
        zfs *z = calloc(1, sizeof *z);
        if (!z)
                return -ENOMEM;
        z->host = host;
        z->ctx = ctx;
        tzset(); /* local times of daily/weekly/monthly jobs: TZ, else /etc/localtime */
        int r = zfs_config_load(z);
        if (r < 0)
                goto fail;
        /* health first: scrub and trim need its view */
        if ((r = zfs_health_start(z)) < 0 || (r = zfs_props_start(z)) < 0 || (r = zfs_jobs_start(z)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot start the timers: %s", strerror(-r));
                goto fail;
        }
        host->log(ctx, ORG_LOG_INFO, "%zu snapshot job(s), scrub %s, trim %s, %zu dataset(s) with properties%s",
                  z->n_jobs, z->scrub_enabled ? "monthly" : "off", z->trim_enabled ? "weekly" : "off", z->n_props,
                  host->dry_run(ctx) ? ", dry_run" : "");
        *ret_state = z;
        return 0;
fail:
        zfs_free(z);
        return r;
}

static void zfs_fini(void *state) { zfs_free(state); }

/* ---------- verbs ---------- */

/* args: {"args": [WORD...], KEY: VALUE} or a JSON string. */
static const char *arg_word(json_t *args, size_t i) {
        if (i == 0 && json_is_string(args))
                return json_string_value(args);
        return json_string_value(json_array_get(json_object_get(args, "args"), i));
}

static bool arg_flag(json_t *args, const char *key, const char *alt) {
        json_t *v = json_object_get(args, key);
        if (!v && alt)
                v = json_object_get(args, alt);
        if (json_is_true(v) || (json_is_integer(v) && json_integer_value(v) != 0))
                return true;
        const char *s = json_string_value(v);
        if (s && (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "1") == 0))
                return true;
        /* a bare word: `layout confirm` */
        json_t *words = json_object_get(args, "args");
        size_t i;
        json_t *w;
        json_array_foreach(words, i, w) {
                const char *t = json_string_value(w);
                if (t && (strcmp(t, key) == 0 || (alt && strcmp(t, alt) == 0)))
                        return true;
        }
        return false;
}

static json_t *status_json(zfs *z) {
        json_t *alerts = json_array(), *jobs = json_array(), *maint = json_array();
        for (size_t i = 0; i < z->n_alerts; i++)
                if (z->alerts[i].key[0])
                        json_array_append_new(alerts, json_pack("{s:s, s:s}", "pool", z->alerts[i].pool, "conditions",
                                                                z->alerts[i].key));
        zfs_jobs_json(z, jobs);
        for (size_t i = 0; i < z->n_maint; i++)
                json_array_append_new(maint, json_pack("{s:s, s:s, s:b}", "job", z->maint[i].scrub ? "scrub" : "trim",
                                                       "pool", z->maint[i].pool, "started", z->maint[i].started));
        json_t *roles = json_object();
        for (int r = 0; r < ZFS_ROLES; r++)
                if (z->pools[r][0])
                        json_object_set_new(roles, zfs_role_names[r], json_string(z->pools[r]));
        return json_pack("{s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:b}", "roles", roles, "pools",
                         zfs_pools_json(z), "alerts", alerts, "jobs", jobs, "maintenance", maint, "queue",
                         (json_int_t)z->q_len + (z->q_busy ? 1 : 0), "health_passes", (json_int_t)z->health_passes,
                         "health_failures", (json_int_t)z->health_failures, "commands", (json_int_t)z->commands,
                         "dry_run", z->host->dry_run(z->ctx));
}

typedef struct listctx {
        char *reply;
        char tag[ZFS_TAG_MAX];
} listctx;

static void on_snapshots(zfs *z, const org_exec_result *res, void *ud) {
        listctx *l = ud;
        char why[400];
        if (res->status != 0) {
                (void)zfs_reply_error(z, l->reply, "zfs list: %s", zfs_failure(res, why, sizeof why));
                goto out;
        }
        json_t *a = json_array();
        char *copy = strdup(res->out ? res->out : "");
        for (char *line = copy, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                else
                        next = line + strlen(line);
                char *f[4], tag[ZFS_TAG_MAX];
                uint64_t creation, used, refs;
                if (zfs_split_tabs(line, f, 4) != 4 || zfs_parse_u64(f[1], &creation) < 0 ||
                    zfs_parse_u64(f[2], &used) < 0 || zfs_parse_u64(f[3], &refs) < 0)
                        continue;
                char *at = strchr(f[0], '@');
                if (!at || !zfs_snapname_tag(at + 1, tag) || (l->tag[0] && strcmp(tag, l->tag) != 0))
                        continue;
                char ts[40];
                zfs_rfc3339(creation * ZFS_US, ts, sizeof ts);
                json_array_append_new(a, json_pack("{s:s, s:s%, s:s, s:s, s:I, s:b}", "name", f[0], "dataset", f[0],
                                                   (int)(at - f[0]), "tag", tag, "creation", ts, "used",
                                                   (json_int_t)used, "held", refs > 0));
        }
        free(copy);
        (void)zfs_reply(z, l->reply, json_pack("{s:I, s:o}", "count", (json_int_t)json_array_size(a), "snapshots", a));
out:
        free(l->reply);
        free(l);
}

static int verb_snapshots(zfs *z, json_t *args, const char *reply) {
        const char *ds = arg_word(args, 0), *tag = json_string_value(json_object_get(args, "tag"));
        if (ds && (strlen(ds) >= ZFS_NAME_MAX || ds[0] == '-' || zfs_dataset_role(z, ds) < 0))
                return zfs_reply_error(z, reply, "%s is not a dataset of the named pools", ds);
        if (tag && !zfs_tag_valid(tag))
                return zfs_reply_error(z, reply, "bad tag \"%s\"", tag);
        listctx *l = calloc(1, sizeof *l);
        if (!l || !(l->reply = strdup(reply))) {
                free(l);
                return -ENOMEM;
        }
        if (tag)
                snprintf(l->tag, sizeof l->tag, "%s", tag);
        const char *argv[8 + ZFS_ROLES] = {"zfs", "list", "-H",       "-p",
                                           "-t",  "snapshot", "-o", "name,creation,used,userrefs"};
        size_t n = 8;
        const char *tail[] = {"-s", "creation", "-r"};
        const char *all[ZFS_ROLES + 1];
        size_t na = 0;
        if (ds)
                all[na++] = ds;
        else
                for (int r = 0; r < ZFS_ROLES; r++) {
                        bool dup = false;
                        for (int q = 0; q < r; q++)
                                dup = dup || strcmp(z->pools[q], z->pools[r]) == 0;
                        if (z->pools[r][0] && !dup)
                                all[na++] = z->pools[r];
                }
        const char *v[8 + 3 + ZFS_ROLES + 1];
        memcpy(v, argv, n * sizeof *v);
        for (size_t i = 0; i < 3; i++)
                v[n++] = tail[i];
        for (size_t i = 0; i < na; i++)
                v[n++] = all[i];
        v[n] = NULL;
        int r = zfs_run(z, v, false, on_snapshots, l);
        if (r < 0) {
                free(l->reply);
                free(l);
        }
        return r;
}

static int zfs_call(void *state, const char *verb, const org_msg *req) {
        zfs *z = state;
        if (!req->reply)
                return -EINVAL;
        json_error_t e;
        json_t *args = req->len ? json_loadb(req->data, req->len, JSON_DECODE_ANY, &e) : json_object();
        int r;
        if (strcmp(verb, "status") == 0)
                r = zfs_reply(z, req->reply, status_json(z));
        else if (strcmp(verb, "snapshots") == 0)
                r = verb_snapshots(z, args, req->reply);
        else if (strcmp(verb, "snapshot") == 0 || strcmp(verb, "prune") == 0) {
                const char *tag = arg_word(args, 0);
                zfs_snapjob *j = zfs_job_find(z, tag);
                if (!j) {
                        char known[512] = "";
                        size_t off = 0;
                        for (size_t i = 0; i < z->n_jobs && off < sizeof known; i++)
                                off += (size_t)snprintf(known + off, sizeof known - off, "%s%s", i ? ", " : "",
                                                        z->jobs[i].tag);
                        r = zfs_reply_error(z, req->reply, "%s TAG: unknown tag \"%s\" (tags: %s)", verb,
                                            tag ? tag : "", off ? known : "none configured");
                } else if (verb[1] == 'n') {
                        r = zfs_job_snapshot(z, j, req->reply, "verb");
                        if (r == -EBUSY)
                                r = 0; /* answered */
                } else
                        r = zfs_job_prune(z, j, arg_flag(args, "dry-run", "dry_run"), req->reply);
        } else if (strcmp(verb, "scrub") == 0) {
                const char *pool = arg_word(args, 0);
                bool known = false;
                for (int i = 0; pool && i < ZFS_ROLES; i++)
                        known = known || strcmp(z->pools[i], pool) == 0;
                if (!known)
                        r = zfs_reply_error(z, req->reply, "scrub POOL: \"%s\" is not a pool of pools:",
                                            pool ? pool : "");
                else {
                        r = zfs_maint_add(z, true, pool);
                        if (r == 0 || r == -EALREADY) {
                                size_t pos = 0;
                                for (size_t i = 0; i < z->n_maint; i++)
                                        if (z->maint[i].scrub && strcmp(z->maint[i].pool, pool) == 0)
                                                pos = i;
                                r = zfs_reply(z, req->reply,
                                              json_pack("{s:s, s:I, s:b}", "queued", pool, "position", (json_int_t)pos,
                                                        "already", r == -EALREADY));
                                zfs_health_run(z);
                        }
                }
        } else if (strcmp(verb, "layout") == 0) {
                r = zfs_layout(z, arg_flag(args, "confirm", "--confirm"), req->reply);
                if (r == -ENOENT)
                        r = zfs_reply_error(z, req->reply, "layout: no pool role is configured (pools:)");
        } else
                r = -EOPNOTSUPP;
        json_decref(args);
        return r;
}

static int zfs_verify(void *state, char **ret_json) {
        zfs *z = state;
        json_t *checks = json_array();
        if (!checks)
                return -ENOMEM;
        for (int r = 0; r < ZFS_ROLES; r++) {
                if (!z->pools[r][0])
                        continue;
                const zfs_pool_info *p = zfs_pool_find(z, z->pools[r]);
                char what[ZFS_NAME_MAX + 32], have[64];
                snprintf(what, sizeof what, "pool %s (%s) health", z->pools[r], zfs_role_names[r]);
                snprintf(have, sizeof have, "%s", p ? p->health : z->health_passes ? "missing" : "not read yet");
                json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", "ONLINE",
                                                        "have", have, "ok", p && !strcmp(p->health, "ONLINE")));
                if (p && p->cap >= 0) {
                        char w[32], hv[32];
                        snprintf(what, sizeof what, "pool %s capacity", z->pools[r]);
                        snprintf(w, sizeof w, "<= %d%%", z->cap_alert);
                        snprintf(hv, sizeof hv, "%d%%", p->cap);
                        json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", w,
                                                                "have", hv, "ok", p->cap <= z->cap_alert));
                }
        }
        for (size_t i = 0; i < z->n_jobs; i++) {
                const zfs_snapjob *j = &z->jobs[i];
                char what[64];
                snprintf(what, sizeof what, "snapshot job %s last result", j->tag);
                const char *have = j->st.runs == 0 ? "not run since start"
                                   : j->st.last_result == 0 ? "ok"
                                   : j->st.last_result > 0 ? "partial"
                                                           : "failed";
                json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", "ok", "have",
                                                        have, "ok", j->st.last_result >= 0));
        }
        zfs_props_verify(z, checks);
        bool ok = true;
        size_t i;
        json_t *c;
        json_array_foreach(checks, i, c) ok = ok && json_is_true(json_object_get(c, "ok"));
        json_t *o = json_pack("{s:b, s:o}", "ok", ok, "checks", checks);
        *ret_json = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return *ret_json ? 0 : -ENOMEM;
}

ORG_PLUGIN_DEFINE(.name = "zfs", .version = "1.0.0",
                  .summary = "ZFS organs: snapshots per tag with recursive retention, catch-up calendar, scrub/trim, "
                             "pool health and alerts, property policy, layout",
                  .config_map = zfs_config_map, .verbs = zfs_verbs, .init = zfs_init, .call = zfs_call,
                  .fini = zfs_fini, .verify = zfs_verify);
