/* host.c — the org_host table: the services a plugin reaches through its context.
 *
 * Every entry resolves the instance behind the context and calls the core module that
 * does the work (bus, sysroot, exec, store, metrics). What a generation creates
 * (timers, processes, pending requests) is recorded in its org_ctx so that retiring
 * the generation — on reload, disable or stop — cancels all of it and no callback ever
 * reaches freed plugin state — except running commands and worker jobs that the next
 * generation adopts during a reload (exec_adopt, work_adopt, ctx_hand_over_*): those
 * move to it, callbacks and all, and complete there. */
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>

#include "bridge.h"
#include "config_schema.h"
#include "context.h"
#include "isolate.h"
#include "log.h"
#include "metrics.h"
#include "sysroot.h"
#include "util.h"
#include "workpool.h"

#define LOG_WINDOW_US (10 * USEC_PER_SEC)
#define LOG_WINDOW_MAX 50

static agent *ctx_agent(org_ctx *ctx) { return ctx->inst->agent; }

static const char *h_instance_name(org_ctx *ctx) { return ctx->inst->name; }
static const char *h_agent_name(org_ctx *ctx) { return ctx_agent(ctx)->config->name; }
static bool h_dry_run(org_ctx *ctx) { return instance_dry_run(ctx->inst); }

/* Repeats beyond LOG_WINDOW_MAX lines in a window are counted, not printed (Fluent
 * Bit's approach): a plugin stuck in an error path cannot flood the journal. */
static void h_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
static void h_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) {
        instance *in = ctx->inst;
        if (level > instance_log_level(in))
                return;
        uint64_t now = now_monotonic_us();
        if (now - ctx->log_window_start_us > LOG_WINDOW_US) {
                if (ctx->log_suppressed > 0)
                        log_internal(LOG_WARNING, 0, in->cfg.plugin, in->name,
                                     "%u log messages suppressed in the last %llu s", ctx->log_suppressed,
                                     (unsigned long long)(LOG_WINDOW_US / USEC_PER_SEC));
                ctx->log_window_start_us = now;
                ctx->log_in_window = 0;
                ctx->log_suppressed = 0;
        }
        if (++ctx->log_in_window > LOG_WINDOW_MAX) {
                ctx->log_suppressed++;
                return;
        }
        /* the instance's own level was applied above; let the line through the global one */
        int saved = log_get_max_level();
        log_set_max_level(LOG_DEBUG);
        log_internalv(level, 0, in->cfg.plugin, in->name, fmt, ap);
        log_set_max_level(saved);
}

static void h_log(org_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void h_log(org_ctx *ctx, int level, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        h_logv(ctx, level, fmt, ap);
        va_end(ap);
}

static const char *h_config_json(org_ctx *ctx) { return ctx->inst->config_text ? ctx->inst->config_text : "{}"; }

static int config_lookup(org_ctx *ctx, const char *path, json_t **ret) {
        if (!path)
                return -EINVAL;
        json_t *v = config_json_path(ctx->inst->cfg.config_json, path);
        if (!v || json_is_null(v))
                return -ENOENT;
        *ret = v;
        return 0;
}

/* The typed getters: absent -ENOENT, another type -EINVAL. */
#define CONFIG_GETTER(fn, ctype, is_type, value)                                         \
        static int fn(org_ctx *ctx, const char *path, ctype *ret) {                      \
                json_t *v;                                                               \
                int r = config_lookup(ctx, path, &v);                                    \
                if (r < 0)                                                               \
                        return r;                                                        \
                if (!is_type(v))                                                         \
                        return -EINVAL;                                                  \
                *ret = value(v);                                                         \
                return 0;                                                                \
        }
CONFIG_GETTER(h_config_string, const char *, json_is_string, json_string_value)
CONFIG_GETTER(h_config_int, int64_t, json_is_integer, json_integer_value)
CONFIG_GETTER(h_config_bool, bool, json_is_boolean, json_is_true)
CONFIG_GETTER(h_config_double, double, json_is_number, json_number_value)

static int h_publish(org_ctx *ctx, const char *subject, const org_header *headers, size_t n_headers,
                     const void *data, size_t len) {
        int r = bus_publish(ctx_agent(ctx)->bus, subject, NULL, headers, n_headers, data, len, NULL);
        return r < 0 ? r : 0;
}

static int h_subscribe(org_ctx *ctx, const char *pattern, uint64_t *ret_sid) {
        return bus_subscribe(ctx->inst->client, pattern, ret_sid);
}

static int h_unsubscribe(org_ctx *ctx, uint64_t sid) { return bus_unsubscribe(ctx->inst->client, sid); }

static void on_reply(int error, const bus_msg *reply, void *userdata) {
        ctx_request *q = userdata;
        org_ctx *ctx = q->ctx;
        LIST_UNLINK(ctx->requests, q);
        org_reply_fn cb = q->cb;
        void *ud = q->userdata;
        free(q);
        cb(ctx, error, reply ? &reply->m : NULL, ud);
}

static int h_request(org_ctx *ctx, const char *subject, const void *data, size_t len, uint64_t timeout_ms,
                     org_reply_fn cb, void *userdata) {
        if (!cb)
                return -EINVAL;
        ctx_request *q = new0(ctx_request, 1);
        if (!q)
                return -ENOMEM;
        q->cb = cb;
        q->userdata = userdata;
        q->ctx = ctx;
        int r = bus_request(ctx_agent(ctx)->bus, subject, NULL, 0, data, len, timeout_ms ? timeout_ms : 5000,
                            on_reply, q, &q->bus_id);
        if (r < 0) {
                free(q);
                return r;
        }
        q->next = ctx->requests;
        ctx->requests = q;
        return 0;
}

static int h_respond(org_ctx *ctx, const char *reply_subject, const void *data, size_t len) {
        if (isempty(reply_subject))
                return -EINVAL;
        if (ctx->call_reply && streq(ctx->call_reply, reply_subject))
                ctx->call_replied = true;
        int r = bus_publish(ctx_agent(ctx)->bus, reply_subject, NULL, NULL, 0, data, len, NULL);
        return r < 0 ? r : 0;
}

static void timer_free(ctx_timer *t) {
        sd_event_source_disable_unref(t->source);
        if (t->fd >= 0)
                close(t->fd);
        free(t);
}

static ctx_timer *timer_new(org_ctx *ctx, ctx_timer_kind kind, org_timer_fn cb, void *userdata) {
        ctx_timer *t = new0(ctx_timer, 1);
        if (!t)
                return NULL;
        t->id = ++ctx->inst->next_id;
        t->kind = kind;
        t->fd = -1;
        t->cb = cb;
        t->userdata = userdata;
        t->ctx = ctx;
        return t;
}

/* Keeps a timer whose event source was just set up (r >= 0), or frees it. */
static int timer_link(org_ctx *ctx, ctx_timer *t, int r, uint64_t *ret_id) {
        if (r < 0) {
                timer_free(t);
                return r;
        }
        t->next = ctx->timers;
        ctx->timers = t;
        if (ret_id)
                *ret_id = t->id;
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ctx_timer *t = userdata;
        org_ctx *ctx = t->ctx;
        uint64_t id = t->id;
        org_timer_fn cb = t->cb;
        void *ud = t->userdata;
        if (t->period_us > 0) {
                sd_event_source_set_time(s, usec + t->period_us);
                sd_event_source_set_enabled(s, SD_EVENT_ON);
        } else {
                LIST_UNLINK(ctx->timers, t);
                timer_free(t);
        }
        cb(ctx, id, ud); /* last: it may cancel this very timer */
        return 0;
}

/* Accuracy lets sd-event coalesce wake-ups: a tenth of the period, at most 250 ms. */
static uint64_t timer_accuracy_us(uint64_t us) { return MAX(1000ULL, MIN(us / 10, 250000ULL)); }

static int h_timer_add(org_ctx *ctx, uint64_t first_ms, uint64_t period_ms, org_timer_fn cb, void *userdata,
                       uint64_t *ret_id) {
        ctx_timer *t = cb ? timer_new(ctx, CTX_TIMER_MONOTONIC, cb, userdata) : NULL;
        if (!t)
                return cb ? -ENOMEM : -EINVAL;
        t->period_us = period_ms * USEC_PER_MSEC;
        uint64_t first_us = first_ms * USEC_PER_MSEC;
        int r = sd_event_add_time_relative(ctx_agent(ctx)->event, &t->source, CLOCK_MONOTONIC, first_us,
                                           timer_accuracy_us(period_ms ? t->period_us : first_us), on_timer, t);
        return timer_link(ctx, t, r, ret_id);
}

static int h_timer_cancel(org_ctx *ctx, uint64_t id) {
        for (ctx_timer *t = ctx->timers; t; t = t->next)
                if (t->id == id) {
                        LIST_UNLINK(ctx->timers, t);
                        timer_free(t);
                        return 0;
                }
        return -ENOENT;
}

static int h_timer_add_realtime(org_ctx *ctx, uint64_t at_realtime_us, org_timer_fn cb, void *userdata,
                                uint64_t *ret_id) {
        ctx_timer *t = cb ? timer_new(ctx, CTX_TIMER_REALTIME, cb, userdata) : NULL;
        if (!t)
                return cb ? -ENOMEM : -EINVAL;
        /* wall-clock schedules want the instant itself, not a coalesced neighbour */
        int r = sd_event_add_time(ctx_agent(ctx)->event, &t->source, CLOCK_REALTIME, at_realtime_us, 1000, on_timer, t);
        return timer_link(ctx, t, r, ret_id);
}

/* A CLOCK_REALTIME timerfd armed far in the future with TFD_TIMER_CANCEL_ON_SET: the
 * kernel wakes it (read fails with ECANCELED) whenever the wall clock is set. */
static int arm_time_change_fd(int fd) {
        struct itimerspec its = {.it_value.tv_sec = (time_t)INT32_MAX};
        return timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its, NULL) < 0 ? -errno : 0;
}

static int on_time_change(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ctx_timer *t = userdata;
        uint64_t expirations;
        ssize_t _unused_ n = read(fd, &expirations, sizeof expirations); /* ECANCELED: the clock was set */
        arm_time_change_fd(fd);
        t->cb(t->ctx, t->id, t->userdata); /* last: it may cancel this watch */
        return 0;
}

static int h_time_change_add(org_ctx *ctx, org_timer_fn cb, void *userdata, uint64_t *ret_id) {
        ctx_timer *t = cb ? timer_new(ctx, CTX_TIMER_TIME_CHANGE, cb, userdata) : NULL;
        if (!t)
                return cb ? -ENOMEM : -EINVAL;
        t->fd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
        int r = t->fd < 0 ? -errno : arm_time_change_fd(t->fd);
        if (r >= 0)
                r = sd_event_add_io(ctx_agent(ctx)->event, &t->source, t->fd, EPOLLIN, on_time_change, t);
        return timer_link(ctx, t, r, ret_id);
}

static uint32_t io_to_epoll(uint32_t ev) {
        return ((ev & ORG_IO_IN) ? EPOLLIN : 0) | ((ev & ORG_IO_PRI) ? EPOLLPRI : 0) | ((ev & ORG_IO_OUT) ? EPOLLOUT : 0);
}

static uint32_t epoll_to_io(uint32_t ev) {
        return ((ev & EPOLLIN) ? ORG_IO_IN : 0) | ((ev & EPOLLPRI) ? ORG_IO_PRI : 0) | ((ev & EPOLLOUT) ? ORG_IO_OUT : 0) |
               ((ev & EPOLLERR) ? ORG_IO_ERR : 0) | ((ev & EPOLLHUP) ? ORG_IO_HUP : 0);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ctx_io *w = userdata;
        w->cb(w->ctx, w->id, fd, epoll_to_io(revents), w->userdata);
        return 0;
}

static int h_io_add(org_ctx *ctx, int fd, uint32_t events, org_io_fn cb, void *userdata, uint64_t *ret_id) {
        if (fd < 0 || !cb)
                return -EINVAL;
        ctx_io *w = new0(ctx_io, 1);
        if (!w)
                return -ENOMEM;
        w->id = ++ctx->inst->next_id;
        w->cb = cb;
        w->userdata = userdata;
        w->ctx = ctx;
        int r = sd_event_add_io(ctx_agent(ctx)->event, &w->source, fd, io_to_epoll(events), on_io, w);
        if (r < 0) {
                free(w);
                return r;
        }
        w->next = ctx->ios;
        ctx->ios = w;
        if (ret_id)
                *ret_id = w->id;
        return 0;
}

static int h_io_remove(org_ctx *ctx, uint64_t id) {
        for (ctx_io *w = ctx->ios; w; w = w->next)
                if (w->id == id) {
                        LIST_UNLINK(ctx->ios, w);
                        sd_event_source_disable_unref(w->source);
                        free(w);
                        return 0;
                }
        return -ENOENT;
}

static void on_durable_published(int error, void *userdata) {
        ctx_durable *d = userdata;
        org_ctx *ctx = d->ctx;
        if (!ctx) { /* orphaned by ctx_free: nobody to tell */
                free(d);
                return;
        }
        LIST_UNLINK(ctx->durables, d);
        org_reply_fn cb = d->cb;
        void *ud = d->userdata;
        free(d);
        if (cb)
                cb(ctx, error, NULL, ud);
}

static int h_publish_durable(org_ctx *ctx, const char *subject, const char *msg_id, const void *data, size_t len,
                             org_reply_fn cb, void *userdata) {
        ctx_durable *d = new0(ctx_durable, 1);
        if (!d)
                return -ENOMEM;
        d->cb = cb;
        d->userdata = userdata;
        d->ctx = ctx;
        d->id = ++ctx->inst->next_id;
        int r = bridge_publish_durable(ctx_agent(ctx)->bridge, subject, msg_id, data, len, on_durable_published, d);
        if (r < 0) {
                free(d);
                return r;
        }
        d->next = ctx->durables;
        ctx->durables = d;
        return 0;
}

/* A durable message for this generation's handle hook. */
static void on_durable_message(const org_msg *msg, void *userdata) {
        ctx_durable *d = userdata;
        instance *in = d->ctx->inst;
        if (in->iso) { /* a consumer of an isolated instance's child: its handle runs there */
                if (in->run_state != INSTANCE_RUNNING || isolate_deliver_durable(in->iso, d->ctx, msg) < 0)
                        bridge_ack(ctx_agent(d->ctx)->bridge, msg->ack_token, ORG_NAK, 0);
                return;
        }
        int (*handle)(void *, const org_msg *) = in->so ? PLUGIN_HOOK(in->so, handle) : NULL;
        if (in->ctx != d->ctx || in->run_state != INSTANCE_RUNNING || !handle) {
                bridge_ack(ctx_agent(d->ctx)->bridge, msg->ack_token, ORG_NAK, 0);
                return;
        }
        in->handled++;
        if (handle(in->state, msg) < 0)
                in->hook_errors++;
}

static int h_consume_durable(org_ctx *ctx, const org_consume_opts *opts, uint64_t *ret_id) {
        ctx_durable *d = new0(ctx_durable, 1);
        if (!d)
                return -ENOMEM;
        d->ctx = ctx;
        d->id = ++ctx->inst->next_id;
        int r = bridge_consume(ctx_agent(ctx)->bridge, opts, on_durable_message, d, &d->consumer);
        if (r < 0) {
                free(d);
                return r;
        }
        d->next = ctx->durables;
        ctx->durables = d;
        if (ret_id)
                *ret_id = d->id;
        return 0;
}

static int h_consume_cancel(org_ctx *ctx, uint64_t id) {
        for (ctx_durable *d = ctx->durables; d; d = d->next)
                if (d->id == id && d->consumer) {
                        LIST_UNLINK(ctx->durables, d);
                        bridge_consume_cancel(d->consumer);
                        free(d);
                        return 0;
                }
        return -ENOENT;
}

static int h_ack(org_ctx *ctx, uint64_t token, org_ack_kind kind, uint64_t delay_ms) {
        return bridge_ack(ctx_agent(ctx)->bridge, token, kind, delay_ms);
}

static uint64_t h_now_realtime_us(org_ctx *ctx) { return now_realtime_us(); }
static uint64_t h_now_monotonic_us(org_ctx *ctx) { return now_monotonic_us(); }

static int h_read_file(org_ctx *ctx, const char *path, char **ret_data, size_t *ret_len) {
        return sysroot_read(ctx_agent(ctx)->config->sysroot, path, ret_data, ret_len);
}

static int h_write_file(org_ctx *ctx, const char *path, const char *value, bool *ret_changed) {
        instance *in = ctx->inst;
        bool dry = instance_dry_run(in), changed = false;
        _cleanup_free_ char *before = NULL;
        int r = sysroot_write(ctx_agent(ctx)->config->sysroot, path, value, dry, &changed, &before);
        if (r < 0)
                return r;
        if (changed)
                log_internal(LOG_NOTICE, 0, in->cfg.plugin, in->name, "%s%s: \"%s\" -> \"%s\"",
                             dry ? "dry_run, would write " : "wrote ", path, before ? before : "", value);
        if (ret_changed)
                *ret_changed = changed;
        return 0;
}

static int h_sysroot_path(org_ctx *ctx, const char *path, char **ret_path) {
        return sysroot_path(ctx_agent(ctx)->config->sysroot, path, ret_path);
}

static void on_exec_done(const org_exec_result *res, void *userdata) {
        ctx_exec *x = userdata;
        org_ctx *ctx = x->ctx;
        LIST_UNLINK(ctx->execs, x);
        org_exec_fn cb = x->cb;
        void *ud = x->userdata;
        free(x->argv0);
        free(x);
        if (cb)
                cb(ctx, res, ud);
}

/* dry_run answers from a deferred source so the plugin sees the same asynchronous
 * shape as a real run. */
static int on_dry_run_defer(sd_event_source *s, void *userdata) {
        ctx_exec *x = userdata;
        org_exec_result res = {.dry_run = true, .out = "", .err = ""};
        x->defer = sd_event_source_disable_unref(s);
        on_exec_done(&res, x);
        return 0;
}

static int h_exec_opts(org_ctx *ctx, const org_exec_spec *spec, const org_exec_opts *opts, org_exec_fn cb,
                       void *userdata, uint64_t *ret_id) {
        instance *in = ctx->inst;
        if (!spec || !spec->argv || !spec->argv[0])
                return -EINVAL;
        /* Only the members the plugin's struct_size covers exist. */
        org_exec_opts o = {0};
        if (opts) {
                if (opts->struct_size < offsetof(org_exec_opts, flags) + sizeof(opts->flags))
                        return -EINVAL;
                memcpy(&o, opts, MIN(opts->struct_size, (uint32_t)sizeof(o)));
                if (opts->struct_size < offsetof(org_exec_opts, n_groups) + sizeof(opts->n_groups))
                        o.groups = NULL, o.n_groups = 0;
                if (o.n_groups > 64 || (o.n_groups && !o.groups))
                        return -EINVAL;
        }
        const char *name = spec->argv[0], *path;
        if (name[0] == '/') {
                if (!spec->allow_path) {
                        log_internal(LOG_ERR, 0, in->cfg.plugin, in->name,
                                     "refusing to run %s: only commands of agent.commands may run", name);
                        return -EPERM;
                }
                path = name;
        } else {
                path = config_command_path(ctx_agent(ctx)->config, name);
                if (!path) {
                        log_internal(LOG_ERR, 0, in->cfg.plugin, in->name,
                                     "command \"%s\" is not in agent.commands of %s", name,
                                     ctx_agent(ctx)->config_path ? ctx_agent(ctx)->config_path : "the config");
                        return -ENOENT;
                }
        }

        ctx_exec *x = new0(ctx_exec, 1);
        if (!x)
                return -ENOMEM;
        x->id = ++ctx->inst->next_id;
        x->cb = cb;
        x->userdata = userdata;
        x->ctx = ctx;
        x->argv0 = strdup(name);
        x->generation = ctx->generation;
        x->started_us = now_monotonic_us();
        x->timeout_ms = spec->timeout_ms ? spec->timeout_ms : 60000;

        /* the command line, for the log */
        char line[512] = "";
        size_t off = 0;
        for (size_t i = 0; spec->argv[i] && off < sizeof line - 1; i++)
                off += (size_t)snprintf(line + off, sizeof line - off, "%s%s", i ? " " : "", i ? spec->argv[i] : path);

        int r;
        if (spec->mutating && instance_dry_run(in)) {
                log_internal(LOG_NOTICE, 0, in->cfg.plugin, in->name, "dry_run, would run: %s", line);
                r = sd_event_add_defer(ctx_agent(ctx)->event, &x->defer, on_dry_run_defer, x);
                if (r < 0)
                        goto fail;
        } else {
                exec_params p = {
                        .path = path,
                        .argv = spec->argv,
                        .env = spec->env,
                        .cwd = spec->cwd,
                        .set_ids = spec->set_ids,
                        .uid = spec->uid,
                        .gid = spec->gid,
                        .timeout_ms = spec->timeout_ms ? spec->timeout_ms : 60000,
                        .capture_max = spec->capture_max,
                        .stdin_data = spec->stdin_data,
                        .stdin_len = spec->stdin_len,
                        .groups = o.groups,
                        .n_groups = o.n_groups,
                        .cgroup = (o.flags & ORG_EXEC_CGROUP) != 0,
                };
                log_internal(spec->mutating ? LOG_INFO : LOG_DEBUG, 0, in->cfg.plugin, in->name, "run: %s", line);
                r = exec_start(ctx_agent(ctx)->event, &p, on_exec_done, x, &x->job);
                if (r < 0)
                        goto fail;
        }
        x->next = ctx->execs;
        ctx->execs = x;
        if (ret_id)
                *ret_id = x->id;
        return 0;
fail:
        free(x->argv0);
        free(x);
        return r;
}

static int h_exec(org_ctx *ctx, const org_exec_spec *spec, org_exec_fn cb, void *userdata, uint64_t *ret_id) {
        return h_exec_opts(ctx, spec, NULL, cb, userdata, ret_id);
}

static int h_exec_info(org_ctx *ctx, uint64_t id, pid_t *ret_pid, bool *ret_cgroup) {
        for (ctx_exec *x = ctx->execs; x; x = x->next)
                if (x->id == id) {
                        if (!x->job)
                                return -ENOENT;
                        if (ret_pid)
                                *ret_pid = exec_job_pid(x->job);
                        if (ret_cgroup)
                                *ret_cgroup = exec_job_in_cgroup(x->job);
                        return 0;
                }
        return -ENOENT;
}

static int h_exec_cancel(org_ctx *ctx, uint64_t id) {
        for (ctx_exec *x = ctx->execs; x; x = x->next)
                if (x->id == id) {
                        LIST_UNLINK(ctx->execs, x);
                        if (x->job)
                                exec_cancel(x->job);
                        sd_event_source_disable_unref(x->defer);
                        free(x->argv0);
                        free(x);
                        return 0;
                }
        return -ENOENT;
}

/* Moves a command of the predecessor to this generation now (so exec_info and
 * exec_cancel work on it during init); ctx_hand_over_abort moves it back. */
static int h_exec_adopt(org_ctx *ctx, uint64_t id, org_exec_fn cb, void *userdata) {
        for (ctx_exec *x = ctx->execs; x; x = x->next)
                if (x->id == id)
                        return -EBUSY;
        if (!ctx->predecessor)
                return -ENOENT;
        for (ctx_exec *x = ctx->predecessor->execs; x; x = x->next)
                if (x->id == id) {
                        LIST_UNLINK(ctx->predecessor->execs, x);
                        x->adopted = true;
                        x->prev_cb = x->cb;
                        x->prev_userdata = x->userdata;
                        x->cb = cb;
                        x->userdata = userdata;
                        x->ctx = ctx;
                        x->next = ctx->execs;
                        ctx->execs = x;
                        log_internal(LOG_DEBUG, 0, ctx->inst->cfg.plugin, ctx->inst->name,
                                     "exec %llu %s adopted by generation %llu", (unsigned long long)id, x->argv0,
                                     (unsigned long long)ctx->generation);
                        return 0;
                }
        return -ENOENT;
}

static int h_store_exec(org_ctx *ctx, const char *sql, const char *const *params, size_t n_params) {
        int r = instance_open_store(ctx->inst);
        if (r < 0)
                return r;
        r = store_exec(ctx->inst->store, sql, params, n_params);
        if (r < 0)
                log_internal(LOG_ERR, 0, ctx->inst->cfg.plugin, ctx->inst->name, "store: %s",
                             store_errmsg(ctx->inst->store));
        return r;
}

static int h_store_query(org_ctx *ctx, const char *sql, const char *const *params, size_t n_params, org_row_fn row,
                         void *userdata) {
        int r = instance_open_store(ctx->inst);
        if (r < 0)
                return r;
        r = store_query(ctx->inst->store, sql, params, n_params, row, userdata);
        if (r < 0)
                log_internal(LOG_ERR, 0, ctx->inst->cfg.plugin, ctx->inst->name, "store: %s",
                             store_errmsg(ctx->inst->store));
        return r;
}

static int h_kv_get(org_ctx *ctx, const char *key, char **ret_value) {
        int r = instance_open_store(ctx->inst);
        return r < 0 ? r : store_kv_get(ctx->inst->store, key, ret_value);
}

static int h_kv_set(org_ctx *ctx, const char *key, const char *value) {
        int r = instance_open_store(ctx->inst);
        return r < 0 ? r : store_kv_set(ctx->inst->store, key, value);
}

static int h_metric_set(org_ctx *ctx, const char *name, org_metric_type type, double value, const char *help) {
        return metrics_set(ctx_agent(ctx)->metrics, ctx->inst->name, name, type, value, help);
}

static int h_metric_add(org_ctx *ctx, const char *name, double delta, const char *help) {
        return metrics_add(ctx_agent(ctx)->metrics, ctx->inst->name, name, delta, help);
}

/* One pool for the agent, made on the first submit and freed when the last generation
 * that used it retires: an agent whose plugins never submit has no extra thread. The
 * users are the org_ctx that submitted at least once. */
static workpool *pool;
static org_ctx **pool_users;
static size_t n_pool_users;

static bool pool_user_index(org_ctx *ctx, size_t *ret_i) {
        for (size_t i = 0; i < n_pool_users; i++)
                if (pool_users[i] == ctx) {
                        *ret_i = i;
                        return true;
                }
        return false;
}

static void release_so(void *hold) { loader_release(hold); }

static int pool_user_add(org_ctx *ctx) {
        size_t i;
        if (pool_user_index(ctx, &i))
                return 0;
        org_ctx **n = realloc(pool_users, (n_pool_users + 1) * sizeof *n);
        if (!n)
                return -ENOMEM;
        pool_users = n;
        pool_users[n_pool_users++] = ctx;
        return 0;
}

static int h_work_submit(org_ctx *ctx, org_work_fn work, org_work_done_fn done, void *userdata, uint64_t *ret_id) {
        if (!work)
                return -EINVAL;
        if (!pool) {
                int r = workpool_new(ctx_agent(ctx)->event, 2, free, release_so, &pool);
                if (r < 0)
                        return r;
        }
        int r = pool_user_add(ctx);
        if (r < 0)
                return r;
        /* the job's code is in the generation's .so: mapped until the job is gone */
        plugin_so *so = ctx->inst->so;
        r = workpool_submit(pool, ctx, work, done, userdata, so, ret_id);
        if (r >= 0)
                loader_hold(so);
        return r;
}

/* Recorded now, applied at commit (the pool is shared with worker threads; a failed
 * init must leave the jobs exactly as they were). */
static int h_work_adopt(org_ctx *ctx, uint64_t id, org_work_adopted_fn done, void *userdata) {
        for (ctx_work_adopt *w = ctx->work_adopts; w; w = w->next)
                if (w->id == id)
                        return -EBUSY;
        if (!ctx->predecessor || !workpool_owns(pool, ctx->predecessor, id))
                return -ENOENT;
        ctx_work_adopt *w = new0(ctx_work_adopt, 1);
        if (!w)
                return -ENOMEM;
        w->id = id;
        w->done = done;
        w->userdata = userdata;
        w->next = ctx->work_adopts;
        ctx->work_adopts = w;
        return 0;
}

/* A retiring generation: its jobs are dropped (queued) or waited for (running), their
 * userdata freed; the pool goes when nobody uses it any more. */
static void work_retire(org_ctx *ctx) {
        size_t i;
        if (!pool || !pool_user_index(ctx, &i))
                return;
        workpool_cancel_owner(pool, ctx);
        pool_users[i] = pool_users[--n_pool_users];
        if (n_pool_users == 0) {
                workpool_free(pool);
                pool = NULL;
                free(pool_users);
                pool_users = NULL;
        }
}

const org_host host_table = {
        .abi_version = ORG_HOST_ABI_VERSION,
        .struct_size = sizeof(org_host),
        .instance_name = h_instance_name,
        .agent_name = h_agent_name,
        .dry_run = h_dry_run,
        .log = h_log,
        .logv = h_logv,
        .config_json = h_config_json,
        .config_string = h_config_string,
        .config_int = h_config_int,
        .config_bool = h_config_bool,
        .config_double = h_config_double,
        .publish = h_publish,
        .subscribe = h_subscribe,
        .unsubscribe = h_unsubscribe,
        .request = h_request,
        .respond = h_respond,
        .timer_add = h_timer_add,
        .timer_cancel = h_timer_cancel,
        .now_realtime_us = h_now_realtime_us,
        .now_monotonic_us = h_now_monotonic_us,
        .read_file = h_read_file,
        .write_file = h_write_file,
        .sysroot_path = h_sysroot_path,
        .exec = h_exec,
        .exec_cancel = h_exec_cancel,
        .store_exec = h_store_exec,
        .store_query = h_store_query,
        .kv_get = h_kv_get,
        .kv_set = h_kv_set,
        .metric_set = h_metric_set,
        .metric_add = h_metric_add,
        .io_add = h_io_add,
        .io_remove = h_io_remove,
        .timer_add_realtime = h_timer_add_realtime,
        .time_change_add = h_time_change_add,
        .publish_durable = h_publish_durable,
        .consume_durable = h_consume_durable,
        .consume_cancel = h_consume_cancel,
        .ack = h_ack,
        /* appended by gpuworker */
        .exec_opts = h_exec_opts,
        .exec_info = h_exec_info,
        .work_submit = h_work_submit,
        /* appended by reload */
        .exec_adopt = h_exec_adopt,
        .work_adopt = h_work_adopt,
};

org_ctx *ctx_new(instance *in) {
        org_ctx *ctx = new0(org_ctx, 1);
        if (!ctx)
                return NULL;
        ctx->inst = in;
        ctx->generation = in->generation;
        return ctx;
}

static void exec_record_free(ctx_exec *x) {
        sd_event_source_disable_unref(x->defer);
        free(x->argv0);
        free(x);
}

static void work_adopts_free(org_ctx *ctx) {
        while (ctx->work_adopts) {
                ctx_work_adopt *w = ctx->work_adopts;
                ctx->work_adopts = w->next;
                free(w);
        }
}

void ctx_hand_over_begin(org_ctx *ctx, org_ctx *old) { ctx->predecessor = old; }

void ctx_hand_over_commit(org_ctx *ctx) {
        org_ctx *old = ctx->predecessor;
        ctx->predecessor = NULL;
        for (ctx_exec *x = ctx->execs; x; x = x->next)
                x->adopted = false;
        if (!old) {
                work_adopts_free(ctx);
                return;
        }
        instance *in = ctx->inst;
        while (old->execs) {
                ctx_exec *x = old->execs;
                old->execs = x->next;
                if (x->job) {
                        log_internal(LOG_NOTICE, 0, in->cfg.plugin, in->name,
                                     "killing exec %llu %s (pid %d): not adopted by the new generation",
                                     (unsigned long long)x->id, x->argv0, (int)exec_job_pid(x->job));
                        exec_cancel(x->job);
                }
                exec_record_free(x);
        }
        /* The new generation inherits the old one's use of the pool, so the pool (and
         * the jobs left running in it) lives on with the instance: retiring the old
         * generation must not free the pool and wait for those jobs on the loop. */
        size_t i;
        if (pool && pool_user_index(old, &i) && pool_user_add(ctx) < 0) {
                log_internal(LOG_ERR, ENOMEM, in->cfg.plugin, in->name,
                             "out of memory: the adopted worker jobs are dropped");
                work_adopts_free(ctx);
        }
        for (ctx_work_adopt *w = ctx->work_adopts; w; w = w->next)
                (void)workpool_adopt(pool, old, w->id, ctx, w->done, w->userdata);
        work_adopts_free(ctx);
        unsigned left = workpool_orphan_owner(pool, old);
        if (left > 0)
                log_internal(LOG_NOTICE, 0, in->cfg.plugin, in->name,
                             "%u worker job(s) not adopted by the new generation: they finish, their result is "
                             "dropped", left);
}

void ctx_hand_over_abort(org_ctx *ctx) {
        org_ctx *old = ctx->predecessor;
        ctx->predecessor = NULL;
        work_adopts_free(ctx);
        if (!old)
                return;
        for (ctx_exec *x = ctx->execs, *next; x; x = next) {
                next = x->next;
                if (!x->adopted)
                        continue;
                LIST_UNLINK(ctx->execs, x);
                x->adopted = false;
                x->cb = x->prev_cb;
                x->userdata = x->prev_userdata;
                x->ctx = old;
                x->next = old->execs;
                old->execs = x;
        }
}

json_t *ctx_execs_to_json(const org_ctx *ctx) {
        json_t *arr = json_array();
        uint64_t now = now_monotonic_us();
        for (const ctx_exec *x = ctx ? ctx->execs : NULL; x && arr; x = x->next) {
                if (!x->job)
                        continue; /* a dry_run answer about to be delivered */
                json_array_append_new(arr, json_pack("{s:I, s:s, s:i, s:I, s:I, s:I, s:b}", "id", (json_int_t)x->id,
                                                     "argv0", x->argv0 ? x->argv0 : "?", "pid",
                                                     (int)exec_job_pid(x->job), "age_ms",
                                                     (json_int_t)((now - x->started_us) / USEC_PER_MSEC),
                                                     "timeout_ms", (json_int_t)x->timeout_ms, "generation",
                                                     (json_int_t)x->generation, "cgroup",
                                                     exec_job_in_cgroup(x->job)));
        }
        return arr;
}

void ctx_free(org_ctx *ctx) {
        if (!ctx)
                return;
        work_retire(ctx);
        while (ctx->timers) {
                ctx_timer *t = ctx->timers;
                ctx->timers = t->next;
                timer_free(t);
        }
        while (ctx->execs) {
                ctx_exec *x = ctx->execs;
                ctx->execs = x->next;
                if (x->job) {
                        log_internal(LOG_NOTICE, 0, ctx->inst->cfg.plugin, ctx->inst->name,
                                     "killing %s (pid %d): its plugin generation is retired", x->argv0,
                                     (int)exec_job_pid(x->job));
                        exec_cancel(x->job);
                }
                exec_record_free(x);
        }
        work_adopts_free(ctx);
        while (ctx->ios) {
                ctx_io *w = ctx->ios;
                ctx->ios = w->next;
                sd_event_source_disable_unref(w->source);
                free(w);
        }
        while (ctx->durables) {
                ctx_durable *d = ctx->durables;
                ctx->durables = d->next;
                if (d->consumer) {
                        bridge_consume_cancel(d->consumer);
                        free(d);
                } else
                        d->ctx = NULL; /* freed by on_durable_published, which always comes */
        }
        while (ctx->requests) {
                ctx_request *q = ctx->requests;
                ctx->requests = q->next;
                bus_request_cancel(ctx_agent(ctx)->bus, q->bus_id);
                free(q);
        }
        free(ctx);
}
