/* fakehost.c — the recording org_host of fakehost.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include "fakehost.h"

static int add_timer(org_ctx *ctx, fake_timer t, uint64_t *ret_id);

static const char *f_instance_name(org_ctx *ctx) { return ctx->instance; }
static const char *f_agent_name(org_ctx *ctx) { return ctx->agent; }
static bool f_dry_run(org_ctx *ctx) { return ctx->dry_run; }

static void f_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
static void f_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) {
        ctx->logs++;
        fprintf(stderr, "[fake:%s] <%d> ", ctx->instance, level);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

static void f_log(org_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void f_log(org_ctx *ctx, int level, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        f_logv(ctx, level, fmt, ap);
        va_end(ap);
}

static const char *f_config_json(org_ctx *ctx) { return ctx->config_json; }

static json_t *lookup(org_ctx *ctx, const char *path) {
        json_t *cur = ctx->config;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", path);
        char *save = NULL;
        for (char *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
                cur = json_object_get(cur, tok);
        return cur;
}

static int f_config_string(org_ctx *ctx, const char *path, const char **ret) {
        json_t *v = lookup(ctx, path);
        if (!v || json_is_null(v))
                return -ENOENT;
        if (!json_is_string(v))
                return -EINVAL;
        *ret = json_string_value(v);
        return 0;
}

static int f_config_int(org_ctx *ctx, const char *path, int64_t *ret) {
        json_t *v = lookup(ctx, path);
        if (!v || json_is_null(v))
                return -ENOENT;
        if (!json_is_integer(v))
                return -EINVAL;
        *ret = json_integer_value(v);
        return 0;
}

static int f_config_bool(org_ctx *ctx, const char *path, bool *ret) {
        json_t *v = lookup(ctx, path);
        if (!v || json_is_null(v))
                return -ENOENT;
        if (!json_is_boolean(v))
                return -EINVAL;
        *ret = json_is_true(v);
        return 0;
}

static int f_config_double(org_ctx *ctx, const char *path, double *ret) {
        json_t *v = lookup(ctx, path);
        if (!v || json_is_null(v))
                return -ENOENT;
        if (!json_is_number(v))
                return -EINVAL;
        *ret = json_number_value(v);
        return 0;
}

static int f_publish(org_ctx *ctx, const char *subject, const org_header *h, size_t nh, const void *data,
                     size_t len) {
        if (ctx->n_published == FAKE_MAX)
                return -ENOBUFS;
        fake_published *p = &ctx->published[ctx->n_published++];
        p->subject = strdup(subject);
        p->data = strndup(data, len);
        return 0;
}

static int f_subscribe(org_ctx *ctx, const char *pattern, uint64_t *ret_sid) {
        if (ctx->n_subscriptions == FAKE_MAX)
                return -ENOBUFS;
        ctx->subscriptions[ctx->n_subscriptions++] = strdup(pattern);
        if (ret_sid)
                *ret_sid = ctx->n_subscriptions;
        return 0;
}

static int f_unsubscribe(org_ctx *ctx, uint64_t sid) {
        if (sid == 0 || sid > ctx->n_subscriptions || !ctx->subscriptions[sid - 1])
                return -ENOENT;
        free(ctx->subscriptions[sid - 1]);
        ctx->subscriptions[sid - 1] = NULL;
        return 0;
}

static int f_request(org_ctx *ctx, const char *subject, const void *data, size_t len, uint64_t timeout_ms,
                     org_reply_fn cb, void *userdata) {
        f_publish(ctx, subject, NULL, 0, data, len);
        cb(ctx, -ENOENT, NULL, userdata); /* nobody answers in the fake */
        return 0;
}

static int f_respond(org_ctx *ctx, const char *reply_subject, const void *data, size_t len) {
        return f_publish(ctx, reply_subject ? reply_subject : "_reply", NULL, 0, data, len);
}

static int f_timer_add(org_ctx *ctx, uint64_t first_ms, uint64_t period_ms, org_timer_fn cb, void *userdata,
                       uint64_t *ret_id) {
        if (ctx->n_timers == FAKE_MAX)
                return -ENOBUFS;
        return add_timer(ctx, (fake_timer){.kind = FAKE_TIMER_MONOTONIC, .first_ms = first_ms, .period_ms = period_ms,
                                           .cb = cb, .userdata = userdata},
                         ret_id);
}

static int add_timer(org_ctx *ctx, fake_timer t, uint64_t *ret_id) {
        if (ctx->n_timers == FAKE_MAX)
                return -ENOBUFS;
        t.id = ctx->n_timers + 1;
        t.active = true;
        ctx->timers[ctx->n_timers++] = t;
        if (ret_id)
                *ret_id = t.id;
        return 0;
}

static int f_timer_add_realtime(org_ctx *ctx, uint64_t at, org_timer_fn cb, void *userdata, uint64_t *ret_id) {
        return add_timer(ctx, (fake_timer){.kind = FAKE_TIMER_REALTIME, .at_realtime_us = at, .cb = cb, .userdata = userdata},
                         ret_id);
}

static int f_time_change_add(org_ctx *ctx, org_timer_fn cb, void *userdata, uint64_t *ret_id) {
        return add_timer(ctx, (fake_timer){.kind = FAKE_TIMER_TIME_CHANGE, .cb = cb, .userdata = userdata}, ret_id);
}

static int f_io_add(org_ctx *ctx, int fd, uint32_t events, org_io_fn cb, void *userdata, uint64_t *ret_id) {
        if (ctx->n_ios == FAKE_MAX)
                return -ENOBUFS;
        ctx->ios[ctx->n_ios++] = (fake_io){.fd = fd, .events = events, .cb = cb, .userdata = userdata, .active = true};
        if (ret_id)
                *ret_id = ctx->n_ios;
        return 0;
}

static int f_io_remove(org_ctx *ctx, uint64_t id) {
        if (id == 0 || id > ctx->n_ios || !ctx->ios[id - 1].active)
                return -ENOENT;
        ctx->ios[id - 1].active = false;
        return 0;
}

static int f_timer_cancel(org_ctx *ctx, uint64_t id) {
        if (id == 0 || id > ctx->n_timers)
                return -ENOENT;
        ctx->timers[id - 1].active = false;
        return 0;
}

static uint64_t f_now_realtime_us(org_ctx *ctx) { return ctx->now_realtime_us; }
static uint64_t f_now_monotonic_us(org_ctx *ctx) { return ctx->now_monotonic_us; }

static int f_sysroot_path(org_ctx *ctx, const char *path, char **ret) {
        if (!path || path[0] != '/')
                return -EINVAL;
        if (asprintf(ret, "%s%s", ctx->sysroot ? ctx->sysroot : "", path) < 0)
                return -ENOMEM;
        return 0;
}

static int f_read_file(org_ctx *ctx, const char *path, char **ret_data, size_t *ret_len) {
        char *p = NULL;
        int r = f_sysroot_path(ctx, path, &p);
        if (r < 0)
                return r;
        FILE *f = fopen(p, "re");
        free(p);
        if (!f)
                return -errno;
        char *buf = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&buf, &len);
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
                fwrite(chunk, 1, n, m);
        fclose(f);
        fclose(m);
        *ret_data = buf;
        if (ret_len)
                *ret_len = len;
        return 0;
}

static int f_write_file(org_ctx *ctx, const char *path, const char *value, bool *ret_changed) {
        char *old = NULL;
        bool changed = true;
        if (f_read_file(ctx, path, &old, NULL) >= 0) {
                size_t l = strlen(old);
                while (l && (old[l - 1] == '\n' || old[l - 1] == ' '))
                        old[--l] = '\0';
                changed = strcmp(old, value) != 0;
                free(old);
        }
        if (changed && !ctx->dry_run) {
                char *p = NULL;
                f_sysroot_path(ctx, path, &p);
                FILE *f = p ? fopen(p, "we") : NULL;
                free(p);
                if (!f)
                        return -errno;
                fprintf(f, "%s\n", value);
                fclose(f);
        }
        if (ret_changed)
                *ret_changed = changed;
        return 0;
}

static int f_exec(org_ctx *ctx, const org_exec_spec *spec, org_exec_fn cb, void *userdata, uint64_t *ret_id) {
        if (ctx->n_execs == FAKE_MAX)
                return -ENOBUFS;
        fake_exec *x = &ctx->execs[ctx->n_execs++];
        for (size_t i = 0; spec->argv[i] && i < 15; i++)
                x->argv[i] = strdup(spec->argv[i]);
        x->mutating = spec->mutating;
        x->allow_path = spec->allow_path;
        x->set_ids = spec->set_ids;
        x->uid = (unsigned)spec->uid;
        x->gid = (unsigned)spec->gid;
        x->timeout_ms = spec->timeout_ms;
        x->capture_max = spec->capture_max;
        x->cwd = spec->cwd ? strdup(spec->cwd) : NULL;
        for (size_t i = 0; spec->env && spec->env[i] && i < 63; i++)
                x->env[i] = strdup(spec->env[i]);
        if (ret_id)
                *ret_id = ctx->n_execs;
        if (ctx->exec_deferred && !(spec->mutating && ctx->dry_run)) {
                if (ctx->n_pending == FAKE_MAX)
                        return -ENOBUFS;
                ctx->pending[ctx->n_pending].cb = cb;
                ctx->pending[ctx->n_pending].id = ctx->n_execs;
                ctx->pending[ctx->n_pending++].userdata = userdata;
                return 0;
        }
        org_exec_result res = {.status = ctx->exec_status,
                               .dry_run = spec->mutating && ctx->dry_run,
                               .out = ctx->exec_out ? ctx->exec_out : "",
                               .out_len = ctx->exec_out ? strlen(ctx->exec_out) : 0,
                               .err = ""};
        if (cb)
                cb(ctx, &res, userdata);
        return 0;
}

bool fake_exec_complete(org_ctx *ctx, int status, const char *out) {
        if (ctx->n_pending == 0)
                return false;
        org_exec_fn cb = ctx->pending[0].cb;
        void *ud = ctx->pending[0].userdata;
        memmove(ctx->pending, ctx->pending + 1, (ctx->n_pending - 1) * sizeof ctx->pending[0]);
        ctx->n_pending--;
        org_exec_result res = {.status = status, .out = out ? out : "", .out_len = out ? strlen(out) : 0, .err = ""};
        if (cb)
                cb(ctx, &res, ud);
        return true;
}

bool fake_exec_complete_res(org_ctx *ctx, const org_exec_result *res) {
        if (ctx->n_pending == 0)
                return false;
        org_exec_fn cb = ctx->pending[0].cb;
        void *ud = ctx->pending[0].userdata;
        memmove(ctx->pending, ctx->pending + 1, (ctx->n_pending - 1) * sizeof ctx->pending[0]);
        ctx->n_pending--;
        if (cb)
                cb(ctx, res, ud);
        return true;
}

/* A cancelled exec never calls back, as in agentd. */
static int f_exec_cancel(org_ctx *ctx, uint64_t id) {
        for (size_t i = 0; i < ctx->n_pending; i++)
                if (ctx->pending[i].id == id) {
                        memmove(ctx->pending + i, ctx->pending + i + 1,
                                (ctx->n_pending - i - 1) * sizeof ctx->pending[0]);
                        ctx->n_pending--;
                        if (id >= 1 && id <= ctx->n_execs)
                                ctx->execs[id - 1].cancelled = true;
                        return 0;
                }
        return 0;
}

static int f_exec_opts(org_ctx *ctx, const org_exec_spec *spec, const org_exec_opts *opts, org_exec_fn cb,
                       void *userdata, uint64_t *ret_id) {
        size_t slot = ctx->n_execs;
        int r = f_exec(ctx, spec, cb, userdata, ret_id);
        if (r >= 0 && opts && slot < ctx->n_execs) {
                ctx->execs[slot].flags = opts->flags;
                ctx->execs[slot].n_groups = opts->n_groups;
        }
        return r;
}

/* Pid 10000 + id for an exec still in flight. */
static int f_exec_info(org_ctx *ctx, uint64_t id, pid_t *ret_pid, bool *ret_cgroup) {
        for (size_t i = 0; i < ctx->n_pending; i++)
                if (ctx->pending[i].id == id) {
                        if (ret_pid)
                                *ret_pid = (pid_t)(10000 + id);
                        if (ret_cgroup)
                                *ret_cgroup = id >= 1 && id <= ctx->n_execs &&
                                              (ctx->execs[id - 1].flags & ORG_EXEC_CGROUP);
                        return 0;
                }
        return -ENOENT;
}

/* The store: a real sqlite database in memory, so plugins' SQL is exercised. */
static sqlite3 *fake_db(org_ctx *ctx) {
        if (!ctx->db) {
                sqlite3 *db = NULL;
                if (sqlite3_open(":memory:", &db) != SQLITE_OK ||
                    sqlite3_exec(db, "CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT)", NULL, NULL, NULL) != SQLITE_OK) {
                        sqlite3_close(db);
                        return NULL;
                }
                ctx->db = db;
        }
        return ctx->db;
}

static int fake_prepare(org_ctx *ctx, const char *sql, const char *const *p, size_t n, sqlite3_stmt **ret) {
        sqlite3 *db = fake_db(ctx);
        if (!db || sqlite3_prepare_v2(db, sql, -1, ret, NULL) != SQLITE_OK) {
                if (db)
                        fprintf(stderr, "[fake store] %s: %s\n", sql, sqlite3_errmsg(db));
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++)
                sqlite3_bind_text(*ret, (int)i + 1, p[i], -1, SQLITE_TRANSIENT);
        return 0;
}

static int f_store_query(org_ctx *ctx, const char *sql, const char *const *p, size_t n, org_row_fn row, void *ud) {
        sqlite3_stmt *st = NULL;
        int r = fake_prepare(ctx, sql, p, n, &st);
        if (r < 0)
                return r;
        int cols = sqlite3_column_count(st), rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW && row) {
                const char *v[64], *names[64];
                for (int i = 0; i < cols && i < 64; i++) {
                        v[i] = (const char *)sqlite3_column_text(st, i);
                        names[i] = sqlite3_column_name(st, i);
                }
                r = row(ud, cols < 64 ? cols : 64, v, names);
                if (r != 0)
                        break;
        }
        sqlite3_finalize(st);
        if (r < 0)
                return r;
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -EIO;
}

static int f_store_exec(org_ctx *ctx, const char *sql, const char *const *p, size_t n) {
        if (n == 0) { /* may hold several statements (schemas) */
                sqlite3 *db = fake_db(ctx);
                return db && sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -EINVAL;
        }
        return f_store_query(ctx, sql, p, n, NULL, NULL);
}

static int kv_row(void *ud, int n, const char *const *v, const char *const *names) {
        *(char **)ud = v[0] ? strdup(v[0]) : NULL;
        return 1;
}

static int f_kv_get(org_ctx *ctx, const char *key, char **ret) {
        char *v = NULL;
        const char *p[] = {key};
        int r = f_store_query(ctx, "SELECT value FROM kv WHERE key = ?1", p, 1, kv_row, &v);
        if (r < 0)
                return r;
        if (!v)
                return -ENOENT;
        *ret = v;
        return 0;
}

static int f_kv_set(org_ctx *ctx, const char *key, const char *value) {
        const char *p[] = {key, value};
        return f_store_query(ctx, "INSERT OR REPLACE INTO kv(key, value) VALUES (?1, ?2)", p, 2, NULL, NULL);
}

static int f_metric_set(org_ctx *ctx, const char *name, org_metric_type type, double value, const char *help) {
        for (size_t i = 0; i < ctx->n_metrics; i++)
                if (strcmp(ctx->metric_names[i], name) == 0) {
                        ctx->metric_values[i] = value;
                        return 0;
                }
        if (ctx->n_metrics == FAKE_MAX)
                return -ENOBUFS;
        ctx->metric_names[ctx->n_metrics] = strdup(name);
        ctx->metric_values[ctx->n_metrics++] = value;
        return 0;
}

static int f_metric_add(org_ctx *ctx, const char *name, double delta, const char *help) {
        return f_metric_set(ctx, name, ORG_METRIC_COUNTER, fake_metric(ctx, name) + delta, help);
}

static int f_work_submit(org_ctx *ctx, org_work_fn work, org_work_done_fn done, void *userdata, uint64_t *ret_id) {
        if (!work)
                return -EINVAL;
        if (ctx->n_works == FAKE_MAX)
                return -ENOSPC;
        ctx->works[ctx->n_works].work = work;
        ctx->works[ctx->n_works].done = done;
        ctx->works[ctx->n_works].userdata = userdata;
        ctx->n_works++;
        ctx->works_submitted++;
        if (ret_id)
                *ret_id = ctx->works_submitted;
        return 0;
}

/* A deferred exec still pending gets the adopter's callback (a test plays the reload:
 * a second init on the same ctx); there is no predecessor check here. */
static int f_exec_adopt(org_ctx *ctx, uint64_t id, org_exec_fn cb, void *userdata) {
        for (size_t i = 0; i < ctx->n_pending; i++)
                if (ctx->pending[i].id == id) {
                        ctx->pending[i].cb = cb;
                        ctx->pending[i].userdata = userdata;
                        return 0;
                }
        return -ENOENT;
}

static int f_work_adopt(org_ctx *ctx, uint64_t id, org_work_adopted_fn done, void *userdata) { return -ENOENT; }

unsigned fake_work_run(org_ctx *ctx) {
        unsigned n = 0;
        while (ctx->n_works > 0) {
                org_work_fn work = ctx->works[0].work;
                org_work_done_fn done = ctx->works[0].done;
                void *ud = ctx->works[0].userdata;
                memmove(&ctx->works[0], &ctx->works[1], (ctx->n_works - 1) * sizeof ctx->works[0]);
                ctx->n_works--;
                int r = work(ud);
                if (done)
                        done(ctx, r, ud);
                n++;
        }
        return n;
}

const org_host fake_host = {
        .abi_version = ORG_HOST_ABI_VERSION,
        .struct_size = sizeof(org_host),
        .instance_name = f_instance_name,
        .agent_name = f_agent_name,
        .dry_run = f_dry_run,
        .log = f_log,
        .logv = f_logv,
        .config_json = f_config_json,
        .config_string = f_config_string,
        .config_int = f_config_int,
        .config_bool = f_config_bool,
        .config_double = f_config_double,
        .publish = f_publish,
        .subscribe = f_subscribe,
        .unsubscribe = f_unsubscribe,
        .request = f_request,
        .respond = f_respond,
        .timer_add = f_timer_add,
        .timer_cancel = f_timer_cancel,
        .now_realtime_us = f_now_realtime_us,
        .now_monotonic_us = f_now_monotonic_us,
        .read_file = f_read_file,
        .write_file = f_write_file,
        .sysroot_path = f_sysroot_path,
        .exec = f_exec,
        .exec_cancel = f_exec_cancel,
        .exec_opts = f_exec_opts,
        .exec_info = f_exec_info,
        .store_exec = f_store_exec,
        .store_query = f_store_query,
        .kv_get = f_kv_get,
        .kv_set = f_kv_set,
        .metric_set = f_metric_set,
        .metric_add = f_metric_add,
        .io_add = f_io_add,
        .io_remove = f_io_remove,
        .timer_add_realtime = f_timer_add_realtime,
        .time_change_add = f_time_change_add,
        .work_submit = f_work_submit,
        .exec_adopt = f_exec_adopt,
        .work_adopt = f_work_adopt,
};

void fake_ctx_init(org_ctx *ctx, const char *instance, const char *config_json) {
        memset(ctx, 0, sizeof *ctx);
        ctx->instance = instance;
        ctx->agent = "test-agent";
        ctx->config_json = strdup(config_json ? config_json : "{}");
        json_error_t e;
        ctx->config = json_loads(ctx->config_json, 0, &e);
        ctx->now_realtime_us = 1795000000ULL * 1000000ULL;
        ctx->now_monotonic_us = 1000000;
}

void fake_ctx_clear_published(org_ctx *ctx) {
        for (size_t i = 0; i < ctx->n_published; i++) {
                free(ctx->published[i].subject);
                free(ctx->published[i].data);
        }
        ctx->n_published = 0;
}

void fake_ctx_done(org_ctx *ctx) {
        fake_ctx_clear_published(ctx);
        for (size_t i = 0; i < ctx->n_subscriptions; i++)
                free(ctx->subscriptions[i]);
        for (size_t i = 0; i < ctx->n_execs; i++) {
                for (size_t k = 0; k < 16; k++)
                        free(ctx->execs[i].argv[k]);
                for (size_t k = 0; k < 64; k++)
                        free(ctx->execs[i].env[k]);
                free(ctx->execs[i].cwd);
        }
        for (size_t i = 0; i < ctx->n_works; i++)
                free(ctx->works[i].userdata); /* as the host does for a job of a retired generation */
        sqlite3_close(ctx->db);
        for (size_t i = 0; i < ctx->n_metrics; i++)
                free(ctx->metric_names[i]);
        json_decref(ctx->config);
        free(ctx->config_json);
        free(ctx->sysroot);
}

const char *fake_last_published(org_ctx *ctx, const char *subject) {
        for (size_t i = ctx->n_published; i > 0; i--)
                if (strcmp(ctx->published[i - 1].subject, subject) == 0)
                        return ctx->published[i - 1].data;
        return NULL;
}

void fake_fire_timers(org_ctx *ctx) {
        size_t n = ctx->n_timers;
        for (size_t i = 0; i < n; i++) {
                fake_timer *t = &ctx->timers[i];
                if (!t->active || t->kind != FAKE_TIMER_MONOTONIC)
                        continue;
                if (t->period_ms == 0)
                        t->active = false;
                t->cb(ctx, t->id, t->userdata);
        }
}

double fake_metric(org_ctx *ctx, const char *name) {
        for (size_t i = 0; i < ctx->n_metrics; i++)
                if (strcmp(ctx->metric_names[i], name) == 0)
                        return ctx->metric_values[i];
        return 0;
}

int fake_deliver(const org_plugin *p, void *state, const char *subject, const char *data) {
        org_msg m = {.subject = subject, .data = data, .len = strlen(data), .origin = "test-agent"};
        return p->handle(state, &m);
}

int fake_call(const org_plugin *p, void *state, org_ctx *ctx, const char *verb, const char *args, char **ret_reply) {
        org_msg m = {.subject = verb, .reply = "_INBOX.test.1", .data = args, .len = strlen(args)};
        size_t before = ctx->n_published;
        int r = p->call(state, verb, &m);
        if (r < 0)
                return r;
        if (ctx->n_published == before)
                return -ENOMSG;
        *ret_reply = strdup(ctx->published[ctx->n_published - 1].data);
        return 0;
}

size_t fake_realtime_timers(org_ctx *ctx, uint64_t *ret_first_at) {
        size_t n = 0;
        uint64_t first = UINT64_MAX;
        for (size_t i = 0; i < ctx->n_timers; i++)
                if (ctx->timers[i].active && ctx->timers[i].kind == FAKE_TIMER_REALTIME) {
                        n++;
                        if (ctx->timers[i].at_realtime_us < first)
                                first = ctx->timers[i].at_realtime_us;
                }
        if (ret_first_at)
                *ret_first_at = first;
        return n;
}

static void fire_due_realtime(org_ctx *ctx) {
        /* bounded: a plugin that re-arms in the past must not spin the test forever */
        for (int round = 0; round < 10000; round++) {
                fake_timer *due = NULL;
                for (size_t i = 0; i < ctx->n_timers; i++) {
                        fake_timer *t = &ctx->timers[i];
                        if (t->active && t->kind == FAKE_TIMER_REALTIME && t->at_realtime_us <= ctx->now_realtime_us &&
                            (!due || t->at_realtime_us < due->at_realtime_us))
                                due = t;
                }
                if (!due)
                        return;
                due->active = false;
                due->cb(ctx, due->id, due->userdata);
        }
}

void fake_advance_realtime(org_ctx *ctx, uint64_t now_us) {
        /* fire in order, with the clock at each timer's instant */
        for (;;) {
                uint64_t first;
                if (fake_realtime_timers(ctx, &first) == 0 || first > now_us)
                        break;
                if (first > ctx->now_realtime_us)
                        ctx->now_realtime_us = first;
                fire_due_realtime(ctx);
        }
        ctx->now_realtime_us = now_us;
}

void fake_clock_jump(org_ctx *ctx, uint64_t now_us) {
        ctx->now_realtime_us = now_us;
        size_t n = ctx->n_timers;
        for (size_t i = 0; i < n; i++) {
                fake_timer *t = &ctx->timers[i];
                if (t->active && t->kind == FAKE_TIMER_TIME_CHANGE)
                        t->cb(ctx, t->id, t->userdata);
        }
        fire_due_realtime(ctx);
}
