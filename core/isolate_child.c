/* isolate_child.c — the child side of an isolated instance: `agentd --isolated-child
 * SOCKFD SHMFD`. It dlopens the instance's .so, hands it a host table whose bus,
 * store, exec and metrics calls become frames to the parent (isolate.c), and runs
 * every hook on its own sd-event loop. Config getters, timers, io watches, sysroot I/O
 * and logging are the ordinary host.c functions, run locally on a small agent/instance
 * built from the parent's HELLO. Before and after each hook it writes what it runs into
 * the shared page, so the parent can kill a hook past hook_timeout and name it. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include "context.h"
#include "isolate.h"
#include "isolate_proto.h"
#include "log.h"
#include "subject.h"
#include "util.h"

#define READ_CHUNK (256u << 10)
#define OUT_FLUSH  (256u << 10)

typedef struct c_pending {
        struct c_pending *next;
        uint64_t id;
        org_reply_fn rcb;
        org_exec_fn ecb;
        void *userdata;
} c_pending;

/* A plugin timer or io watch, wrapped so the shared page says "timer"/"io" while its
 * callback runs. */
typedef struct c_wrap {
        struct c_wrap *next;
        uint64_t id;
        bool is_io, one_shot, firing, cancelled;
        org_timer_fn tcb;
        org_io_fn iocb;
        void *userdata;
} c_wrap;

static struct {
        int fd;
        iso_shm *shm;
        sd_event *event;
        iso_buf in, side, out, answer;
        agent_config acfg;
        agent agent;
        instance inst;
        org_ctx *ctx;
        plugin_so *so;
        void *state;
        org_host host;
        uint64_t next_id;
        c_pending *requests, *execs;
        c_wrap *wraps;
        uint64_t msgs_done, msgs_acked;
        uint64_t hook_errors, tick_us_last, tick_us_max; /* reported with each ACK */
        bool stats_dirty;
} C;

static void busy(unsigned kind) {
        if (kind)
                C.shm->busy_since_us = now_monotonic_us();
        __atomic_store_n(&C.shm->busy_kind, kind, __ATOMIC_RELEASE);
}

static _Noreturn void die(int status) {
        /* what is already framed still goes out (a fini's last publishes) */
        iso_write_all(C.fd, &C.out, 2000);
        _exit(status);
}

/* Every flush carries the count of messages done so far, after their output: what the
 * parent has acknowledged is exactly what it will not hand to the next child. */
static void flush(void) {
        if (C.msgs_done != C.msgs_acked || C.stats_dirty) {
                size_t at = iso_put_begin(&C.out, ISO_C_ACK);
                iso_put_u64(&C.out, C.msgs_done);
                iso_put_u64(&C.out, C.hook_errors);
                iso_put_u64(&C.out, C.tick_us_last);
                iso_put_u64(&C.out, C.tick_us_max);
                if (iso_put_end(&C.out, at) >= 0) {
                        C.msgs_acked = C.msgs_done;
                        C.stats_dirty = false;
                }
        }
        if (C.out.len > C.out.off && iso_write_all(C.fd, &C.out, 600000) < 0)
                _exit(1); /* the parent is gone or stuck: nothing left to do */
}

static void maybe_flush(void) {
        if (C.out.len >= OUT_FLUSH)
                flush();
}

/* Reads what the parent sent; EOF means it is gone. */
static void read_into(iso_buf *b) {
        if (iso_buf_reserve(b, READ_CHUNK) < 0)
                _exit(1);
        for (;;) {
                ssize_t n = read(C.fd, b->data + b->len, b->cap - b->len);
                if (n > 0) {
                        b->len += (size_t)n;
                        return;
                }
                if (n == 0)
                        _exit(0);
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN)
                        _exit(1);
                struct pollfd p = {.fd = C.fd, .events = POLLIN};
                poll(&p, 1, -1);
        }
}

/* Sends the frame already in C.out and waits for the ISO_P_ANSWER with this id; its
 * payload (after id) lands in C.answer. Frames that arrive meanwhile wait in C.side,
 * in order, for the main loop. */
static iso_rd rpc_wait(uint64_t id) {
        flush();
        /* bytes after the last complete frame of C.in continue in the socket: move them */
        size_t pos = C.in.off;
        for (;;) {
                uint32_t h[2];
                if (C.in.len - pos < sizeof h)
                        break;
                memcpy(h, C.in.data + pos, sizeof h);
                if (C.in.len - pos < sizeof h + h[0])
                        break;
                pos += sizeof h + h[0];
        }
        if (pos < C.in.len) {
                if (iso_buf_reserve(&C.side, C.in.len - pos) < 0)
                        _exit(1);
                memmove(C.side.data + C.side.len, C.in.data + pos, C.in.len - pos);
                C.side.len += C.in.len - pos;
                C.in.len = pos;
        }
        size_t scan = 0;
        for (;;) {
                while (C.side.len - scan >= 8) {
                        uint32_t h[2];
                        memcpy(h, C.side.data + scan, sizeof h);
                        if (h[0] > ISO_FRAME_MAX)
                                _exit(1);
                        if (C.side.len - scan < sizeof h + h[0])
                                break;
                        size_t fsize = sizeof h + h[0];
                        iso_rd r = {.p = C.side.data + scan + 8, .end = C.side.data + scan + fsize};
                        if (h[1] == ISO_P_ANSWER && iso_get_u64(&r) == id) {
                                C.answer.len = C.answer.off = 0;
                                size_t plen = (size_t)(r.end - r.p);
                                if (iso_buf_reserve(&C.answer, plen) < 0)
                                        _exit(1);
                                memcpy(C.answer.data, r.p, plen);
                                C.answer.len = plen;
                                memmove(C.side.data + scan, C.side.data + scan + fsize, C.side.len - scan - fsize);
                                C.side.len -= fsize;
                                return (iso_rd){.p = C.answer.data, .end = C.answer.data + plen};
                        }
                        scan += fsize;
                }
                read_into(&C.side);
        }
}

static bool reply_subject_ok(const char *s) {
        return !isempty(s) && strlen(s) < 1024;
}

static int c_publish(org_ctx *ctx, const char *subject, const org_header *headers, size_t n_headers, const void *data,
                     size_t len) {
        if (!subject || !subject_is_valid(subject) || n_headers > ISO_HEADERS_MAX || (len && !data))
                return -EINVAL;
        org_msg m = {
                .subject = subject, .headers = headers, .n_headers = n_headers, .data = data ? data : "", .len = len};
        size_t at = iso_put_begin(&C.out, ISO_C_PUB);
        iso_put_msg(&C.out, &m);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        maybe_flush();
        return 0;
}

static int c_respond(org_ctx *ctx, const char *reply_subject, const void *data, size_t len) {
        if (!reply_subject_ok(reply_subject))
                return -EINVAL;
        if (ctx->call_reply && streq(ctx->call_reply, reply_subject))
                ctx->call_replied = true;
        org_msg m = {.subject = reply_subject, .data = data ? data : "", .len = len};
        size_t at = iso_put_begin(&C.out, ISO_C_PUB);
        iso_put_msg(&C.out, &m);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        maybe_flush();
        return 0;
}

static int c_subscribe(org_ctx *ctx, const char *pattern, uint64_t *ret_sid) {
        if (!pattern || !pattern_is_valid(pattern))
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_SUB);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, pattern);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        if (ret_sid)
                *ret_sid = id;
        return 0;
}

static int c_unsubscribe(org_ctx *ctx, uint64_t sid) {
        size_t at = iso_put_begin(&C.out, ISO_C_UNSUB);
        iso_put_u64(&C.out, sid);
        return iso_put_end(&C.out, at);
}

static int pending_add(c_pending **list, uint64_t id, org_reply_fn rcb, org_exec_fn ecb, void *userdata) {
        c_pending *p = new0(c_pending, 1);
        if (!p)
                return -ENOMEM;
        p->id = id;
        p->rcb = rcb;
        p->ecb = ecb;
        p->userdata = userdata;
        p->next = *list;
        *list = p;
        return 0;
}

static c_pending *pending_take(c_pending **list, uint64_t id) {
        for (c_pending **pp = list; *pp; pp = &(*pp)->next)
                if ((*pp)->id == id) {
                        c_pending *p = *pp;
                        *pp = p->next;
                        return p;
                }
        return NULL;
}

static int c_request(org_ctx *ctx, const char *subject, const void *data, size_t len, uint64_t timeout_ms,
                     org_reply_fn cb, void *userdata) {
        if (!cb || !subject || !subject_is_valid(subject))
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_REQ);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, subject);
        iso_put_bytes(&C.out, data ? data : "", len);
        iso_put_u64(&C.out, timeout_ms);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        r = pending_add(&C.requests, id, cb, NULL, userdata);
        maybe_flush();
        return r;
}

static int c_exec_cancel_frame(uint64_t id) {
        size_t at = iso_put_begin(&C.out, ISO_C_EXEC_CANCEL);
        iso_put_u64(&C.out, id);
        return iso_put_end(&C.out, at);
}

static int c_exec(org_ctx *ctx, const org_exec_spec *spec, org_exec_fn cb, void *userdata, uint64_t *ret_id) {
        if (!spec || !spec->argv || !spec->argv[0])
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_EXEC);
        iso_put_u64(&C.out, id);
        iso_put_strv(&C.out, spec->argv);
        iso_put_strv(&C.out, spec->env);
        iso_put_str(&C.out, spec->cwd);
        iso_put_u64(&C.out, spec->uid);
        iso_put_u64(&C.out, spec->gid);
        iso_put_u64(&C.out, (spec->set_ids ? 1u : 0u) | (spec->allow_path ? 2u : 0u) | (spec->mutating ? 4u : 0u));
        iso_put_u64(&C.out, spec->timeout_ms);
        iso_put_u64(&C.out, spec->capture_max);
        iso_put_bytes(&C.out, spec->stdin_data, spec->stdin_len);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        /* synchronous like in-process: the command table is checked now; the id is the
         * parent's, unique across this instance's children (so a reload can hand it on) */
        iso_rd a = rpc_wait(id);
        r = (int)(int64_t)iso_get_u64(&a);
        uint64_t xid = iso_get_u64(&a);
        if (r < 0)
                return r;
        if (a.bad)
                _exit(1);
        r = pending_add(&C.execs, xid, NULL, cb, userdata);
        if (r < 0) {
                c_exec_cancel_frame(xid);
                return r;
        }
        if (ret_id)
                *ret_id = xid;
        return 0;
}

/* A command of the child this one replaces (a reload): the parent owns it and hands
 * it over if it is still running; its completion then comes here. */
static int c_exec_adopt(org_ctx *ctx, uint64_t id, org_exec_fn cb, void *userdata) {
        for (c_pending *p = C.execs; p; p = p->next)
                if (p->id == id)
                        return -EBUSY;
        uint64_t rpc = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_EXEC_ADOPT);
        iso_put_u64(&C.out, rpc);
        iso_put_u64(&C.out, id);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(rpc);
        r = (int)(int64_t)iso_get_u64(&a);
        if (r < 0)
                return r;
        r = pending_add(&C.execs, id, NULL, cb, userdata);
        if (r < 0)
                c_exec_cancel_frame(id);
        return r;
}

/* Worker jobs run in this process's threads and die with it: none to adopt. */
static int c_work_adopt(org_ctx *ctx, uint64_t id, org_work_adopted_fn done, void *userdata) {
        return -ENOENT;
}

static int c_exec_cancel(org_ctx *ctx, uint64_t id) {
        c_pending *p = pending_take(&C.execs, id);
        if (!p)
                return -ENOENT;
        free(p);
        return c_exec_cancel_frame(id);
}

static void put_params(const char *const *params, size_t n) {
        iso_put_u64(&C.out, n);
        for (size_t i = 0; i < n; i++)
                iso_put_str(&C.out, params ? params[i] : NULL);
}

static int c_store_exec(org_ctx *ctx, const char *sql, const char *const *params, size_t n_params) {
        if (!sql)
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_STORE_EXEC);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, sql);
        put_params(params, n_params);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(id);
        return (int)(int64_t)iso_get_u64(&a);
}

/* The parent sends every row at once: r, n rows, then per row n columns, names, values. */
static int c_store_query(org_ctx *ctx, const char *sql, const char *const *params, size_t n_params, org_row_fn row,
                         void *userdata) {
        if (!sql || !row)
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_STORE_QUERY);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, sql);
        put_params(params, n_params);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(id);
        r = (int)(int64_t)iso_get_u64(&a);
        uint64_t nrows = iso_get_u64(&a);
        for (uint64_t i = 0; i < nrows && !a.bad; i++) {
                uint64_t n = iso_get_u64(&a);
                if (n > 4096)
                        return -EBADMSG;
                _cleanup_free_ const char **cols = new0(const char *, n + 1);
                _cleanup_free_ const char **names = new0(const char *, n + 1);
                if (!cols || !names)
                        return -ENOMEM;
                for (uint64_t k = 0; k < n; k++) {
                        names[k] = iso_get_str(&a);
                        cols[k] = iso_get_str(&a);
                }
                if (a.bad)
                        return -EBADMSG;
                if (row(userdata, (int)n, cols, names) != 0)
                        break;
        }
        return r;
}

static int c_kv_get(org_ctx *ctx, const char *key, char **ret_value) {
        if (!key)
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_KV_GET);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, key);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(id);
        r = (int)(int64_t)iso_get_u64(&a);
        const char *v = iso_get_str(&a);
        if (r < 0)
                return r;
        if (!v)
                return -EBADMSG;
        char *copy = strdup(v);
        if (!copy)
                return -ENOMEM;
        *ret_value = copy;
        return 0;
}

static int c_kv_set(org_ctx *ctx, const char *key, const char *value) {
        if (!key)
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_KV_SET);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, key);
        iso_put_str(&C.out, value);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(id);
        return (int)(int64_t)iso_get_u64(&a);
}

static int c_metric_set(org_ctx *ctx, const char *name, org_metric_type type, double value, const char *help) {
        if (!name)
                return -EINVAL;
        uint64_t bits;
        memcpy(&bits, &value, sizeof bits);
        size_t at = iso_put_begin(&C.out, ISO_C_METRIC_SET);
        iso_put_str(&C.out, name);
        iso_put_u64(&C.out, (uint64_t)type);
        iso_put_u64(&C.out, bits);
        iso_put_str(&C.out, help);
        return iso_put_end(&C.out, at);
}

static int c_metric_add(org_ctx *ctx, const char *name, double delta, const char *help) {
        if (!name)
                return -EINVAL;
        uint64_t bits;
        memcpy(&bits, &delta, sizeof bits);
        size_t at = iso_put_begin(&C.out, ISO_C_METRIC_ADD);
        iso_put_str(&C.out, name);
        iso_put_u64(&C.out, bits);
        iso_put_str(&C.out, help);
        return iso_put_end(&C.out, at);
}

static void wrap_free(c_wrap *w) {
        LIST_UNLINK(C.wraps, w);
        free(w);
}

static void on_wrapped_timer(org_ctx *ctx, uint64_t id, void *userdata) {
        c_wrap *w = userdata;
        w->firing = true;
        busy(ISO_HOOK_TIMER);
        w->tcb(ctx, id, w->userdata);
        busy(ISO_HOOK_NONE);
        w->firing = false;
        if (w->one_shot || w->cancelled)
                wrap_free(w);
        flush();
}

static void on_wrapped_io(org_ctx *ctx, uint64_t id, int fd, uint32_t revents, void *userdata) {
        c_wrap *w = userdata;
        w->firing = true;
        busy(ISO_HOOK_IO);
        w->iocb(ctx, id, fd, revents, w->userdata);
        busy(ISO_HOOK_NONE);
        w->firing = false;
        if (w->cancelled)
                wrap_free(w);
        flush();
}

static c_wrap *wrap_new(void *userdata) {
        c_wrap *w = new0(c_wrap, 1);
        if (!w)
                return NULL;
        w->userdata = userdata;
        w->next = C.wraps;
        C.wraps = w;
        return w;
}

/* Links the wrapper to the id host.c gave, or drops it when that failed. */
static int wrap_done(c_wrap *w, int r, uint64_t id, uint64_t *ret_id) {
        if (r < 0) {
                wrap_free(w);
                return r;
        }
        w->id = id;
        if (ret_id)
                *ret_id = id;
        return 0;
}

static int c_timer_add(org_ctx *ctx, uint64_t first_ms, uint64_t period_ms, org_timer_fn cb, void *userdata,
                       uint64_t *ret_id) {
        c_wrap *w = cb ? wrap_new(userdata) : NULL;
        if (!w)
                return cb ? -ENOMEM : -EINVAL;
        w->tcb = cb;
        w->one_shot = period_ms == 0;
        uint64_t id = 0;
        int r = host_table.timer_add(ctx, first_ms, period_ms, on_wrapped_timer, w, &id);
        return wrap_done(w, r, id, ret_id);
}

static int c_timer_add_realtime(org_ctx *ctx, uint64_t at_us, org_timer_fn cb, void *userdata, uint64_t *ret_id) {
        c_wrap *w = cb ? wrap_new(userdata) : NULL;
        if (!w)
                return cb ? -ENOMEM : -EINVAL;
        w->tcb = cb;
        w->one_shot = true;
        uint64_t id = 0;
        int r = host_table.timer_add_realtime(ctx, at_us, on_wrapped_timer, w, &id);
        return wrap_done(w, r, id, ret_id);
}

static int c_time_change_add(org_ctx *ctx, org_timer_fn cb, void *userdata, uint64_t *ret_id) {
        c_wrap *w = cb ? wrap_new(userdata) : NULL;
        if (!w)
                return cb ? -ENOMEM : -EINVAL;
        w->tcb = cb;
        uint64_t id = 0;
        int r = host_table.time_change_add(ctx, on_wrapped_timer, w, &id);
        return wrap_done(w, r, id, ret_id);
}

static int c_timer_cancel(org_ctx *ctx, uint64_t id) {
        int r = host_table.timer_cancel(ctx, id);
        for (c_wrap *w = C.wraps; w; w = w->next)
                if (!w->is_io && w->id == id) {
                        if (w->firing)
                                w->cancelled = true;
                        else
                                wrap_free(w);
                        break;
                }
        return r;
}

static int c_io_add(org_ctx *ctx, int fd, uint32_t events, org_io_fn cb, void *userdata, uint64_t *ret_id) {
        c_wrap *w = cb ? wrap_new(userdata) : NULL;
        if (!w)
                return cb ? -ENOMEM : -EINVAL;
        w->is_io = true;
        w->iocb = cb;
        uint64_t id = 0;
        int r = host_table.io_add(ctx, fd, events, on_wrapped_io, w, &id);
        return wrap_done(w, r, id, ret_id);
}

static int c_io_remove(org_ctx *ctx, uint64_t id) {
        int r = host_table.io_remove(ctx, id);
        for (c_wrap *w = C.wraps; w; w = w->next)
                if (w->is_io && w->id == id) {
                        if (w->firing)
                                w->cancelled = true;
                        else
                                wrap_free(w);
                        break;
                }
        return r;
}

/* Durable messaging goes through agentd's bridge: the call is answered at once (no
 * bridge, no stream), the completion comes later as an ISO_P_REPLY. */
static int c_publish_durable(org_ctx *ctx, const char *subject, const char *msg_id, const void *data, size_t len,
                             org_reply_fn cb, void *userdata) {
        if (!subject || !subject_is_valid(subject) || (len && !data))
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_PUB_DURABLE);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, subject);
        iso_put_str(&C.out, msg_id);
        iso_put_bytes(&C.out, data ? data : "", len);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(id);
        r = (int)(int64_t)iso_get_u64(&a);
        if (r < 0)
                return r;
        return pending_add(&C.requests, id, cb, NULL, userdata);
}

static int c_consume_durable(org_ctx *ctx, const org_consume_opts *opts, uint64_t *ret_id) {
        if (!opts || !opts->stream || !opts->durable)
                return -EINVAL;
        uint64_t id = ++C.next_id;
        size_t at = iso_put_begin(&C.out, ISO_C_CONSUME);
        iso_put_u64(&C.out, id);
        iso_put_str(&C.out, opts->stream);
        iso_put_str(&C.out, opts->durable);
        iso_put_str(&C.out, opts->filter);
        iso_put_u64(&C.out, opts->max_deliver);
        iso_put_u64(&C.out, opts->ack_wait_ms);
        iso_put_u64(&C.out, opts->max_pending);
        int r = iso_put_end(&C.out, at);
        if (r < 0)
                return r;
        iso_rd a = rpc_wait(id);
        r = (int)(int64_t)iso_get_u64(&a);
        if (r < 0)
                return r;
        if (ret_id)
                *ret_id = id;
        return 0;
}

static int c_consume_cancel(org_ctx *ctx, uint64_t id) {
        size_t at = iso_put_begin(&C.out, ISO_C_CONSUME_CANCEL);
        iso_put_u64(&C.out, id);
        return iso_put_end(&C.out, at);
}

static int c_ack(org_ctx *ctx, uint64_t token, org_ack_kind kind, uint64_t delay_ms) {
        size_t at = iso_put_begin(&C.out, ISO_C_DACK);
        iso_put_u64(&C.out, token);
        iso_put_u64(&C.out, (uint64_t)kind);
        iso_put_u64(&C.out, delay_ms);
        int r = iso_put_end(&C.out, at);
        if (r >= 0)
                maybe_flush();
        return r;
}

static void respond_error(const char *reply, const char *verb, int r) {
        char text[512];
        snprintf(text, sizeof text, "{\"error\":\"%s %s: %s\"}", C.inst.name, verb,
                 r == -EOPNOTSUPP ? "unknown verb" : strerror(-r));
        c_respond(C.ctx, reply, text, strlen(text));
}

static void hook_result(int r) {
        if (r < 0) {
                C.hook_errors++;
                C.stats_dirty = true;
        }
}

static void msg_done(void) {
        C.msgs_done++;
        __atomic_store_n(&C.shm->msgs_done, C.msgs_done, __ATOMIC_RELEASE);
}

static void dispatch(uint32_t type, iso_rd *r) {
        const org_plugin *d = C.so->desc;
        org_header hdrs[ISO_HEADERS_MAX];
        org_msg m;
        switch (type) {
        case ISO_P_MSG: {
                iso_get_msg(r, &m, hdrs);
                int (*handle)(void *, const org_msg *) = PLUGIN_HOOK(C.so, handle);
                if (!r->bad && handle) {
                        busy(ISO_HOOK_HANDLE);
                        hook_result(handle(C.state, &m));
                        busy(ISO_HOOK_NONE);
                }
                msg_done();
                break;
        }
        case ISO_P_DURABLE: {
                iso_get_msg(r, &m, hdrs);
                int (*handle)(void *, const org_msg *) = PLUGIN_HOOK(C.so, handle);
                if (!r->bad && handle) {
                        busy(ISO_HOOK_HANDLE_DURABLE);
                        hook_result(handle(C.state, &m));
                        busy(ISO_HOOK_NONE);
                }
                break;
        }
        case ISO_P_CALL: {
                const char *verb = iso_get_str(r);
                iso_get_msg(r, &m, hdrs);
                int (*call)(void *, const char *, const org_msg *) = PLUGIN_HOOK(C.so, call);
                if (!r->bad && verb && call) {
                        C.ctx->call_reply = m.reply;
                        C.ctx->call_replied = false;
                        busy(ISO_HOOK_CALL);
                        int rr = call(C.state, verb, &m);
                        hook_result(rr);
                        busy(ISO_HOOK_NONE);
                        if (rr < 0 && !C.ctx->call_replied && m.reply)
                                respond_error(m.reply, verb, rr);
                        C.ctx->call_reply = NULL;
                }
                msg_done();
                break;
        }
        case ISO_P_TICK: {
                int (*tick)(void *) = PLUGIN_HOOK(C.so, tick);
                if (tick) {
                        uint64_t t0 = now_monotonic_us();
                        busy(ISO_HOOK_TICK);
                        hook_result(tick(C.state));
                        busy(ISO_HOOK_NONE);
                        C.tick_us_last = now_monotonic_us() - t0;
                        C.tick_us_max = MAX(C.tick_us_max, C.tick_us_last);
                        C.stats_dirty = true;
                        if (C.tick_us_last > 50000) /* it blocks only this child, but it is late */
                                log_internal(LOG_WARNING, 0, C.inst.cfg.plugin, C.inst.name, "tick took %llu ms",
                                             (unsigned long long)(C.tick_us_last / 1000));
                }
                break;
        }
        case ISO_P_REPLY: {
                uint64_t id = iso_get_u64(r);
                int error = (int)(int64_t)iso_get_u64(r);
                bool has = iso_get_u64(r) != 0;
                if (has)
                        iso_get_msg(r, &m, hdrs);
                c_pending *p = r->bad ? NULL : pending_take(&C.requests, id);
                if (!p)
                        break;
                busy(ISO_HOOK_REPLY);
                p->rcb(C.ctx, error, has ? &m : NULL, p->userdata);
                busy(ISO_HOOK_NONE);
                free(p);
                break;
        }
        case ISO_P_EXEC_DONE: {
                uint64_t id = iso_get_u64(r);
                org_exec_result res = {0};
                res.status = (int)(int64_t)iso_get_u64(r);
                uint64_t flags = iso_get_u64(r);
                res.timed_out = flags & 1;
                res.dry_run = flags & 2;
                res.out_truncated = flags & 4;
                res.err_truncated = flags & 8;
                res.out = iso_get_bytes(r, &res.out_len);
                res.err = iso_get_bytes(r, &res.err_len);
                res.duration_us = iso_get_u64(r);
                c_pending *p = r->bad ? NULL : pending_take(&C.execs, id);
                if (!p)
                        break;
                if (!res.out)
                        res.out = "";
                if (!res.err)
                        res.err = "";
                if (p->ecb) {
                        busy(ISO_HOOK_EXEC_DONE);
                        p->ecb(C.ctx, &res, p->userdata);
                        busy(ISO_HOOK_NONE);
                }
                free(p);
                break;
        }
        case ISO_P_SAVE: {
                int (*save)(void *, void **, size_t *) = PLUGIN_HOOK(C.so, save_state);
                void *blob = NULL;
                size_t len = 0;
                int rr = -EOPNOTSUPP;
                if (save) {
                        busy(ISO_HOOK_SAVE);
                        rr = save(C.state, &blob, &len);
                        busy(ISO_HOOK_NONE);
                }
                size_t at = iso_put_begin(&C.out, ISO_C_SAVED);
                iso_put_u64(&C.out, (uint64_t)(int64_t)rr);
                iso_put_bytes(&C.out, rr >= 0 ? blob : NULL, len);
                if (iso_put_end(&C.out, at) < 0) {
                        at = iso_put_begin(&C.out, ISO_C_SAVED);
                        iso_put_u64(&C.out, (uint64_t)(int64_t)-E2BIG);
                        iso_put_bytes(&C.out, NULL, 0);
                        iso_put_end(&C.out, at);
                }
                free(blob);
                break;
        }
        case ISO_P_VERIFY: {
                int (*verify)(void *, char **) = PLUGIN_HOOK(C.so, verify);
                char *text = NULL;
                int rr = -EOPNOTSUPP;
                if (verify) {
                        busy(ISO_HOOK_VERIFY);
                        rr = verify(C.state, &text);
                        busy(ISO_HOOK_NONE);
                }
                size_t at = iso_put_begin(&C.out, ISO_C_VERIFIED);
                iso_put_u64(&C.out, (uint64_t)(int64_t)rr);
                iso_put_str(&C.out, rr >= 0 ? text : NULL);
                iso_put_end(&C.out, at);
                free(text);
                break;
        }
        case ISO_P_FINI: {
                void (*fini)(void *) = PLUGIN_HOOK(C.so, fini);
                if (fini) {
                        busy(ISO_HOOK_FINI);
                        fini(C.state);
                        busy(ISO_HOOK_NONE);
                }
                die(0);
        }
        default:
                break; /* a stale ISO_P_ANSWER, or a newer parent's frame */
        }
        (void)d;
        maybe_flush();
}

static void process(void) {
        for (;;) {
                uint32_t type;
                iso_rd r;
                int k = iso_next_frame(&C.in, &type, &r);
                if (k < 0)
                        _exit(1);
                if (k > 0) {
                        dispatch(type, &r);
                        continue;
                }
                if (C.side.len == 0)
                        break;
                /* frames that came in during a synchronous call follow the rest of C.in */
                iso_buf_compact(&C.in);
                if (iso_buf_reserve(&C.in, C.side.len) < 0)
                        _exit(1);
                memcpy(C.in.data + C.in.len, C.side.data, C.side.len);
                C.in.len += C.side.len;
                C.side.len = 0;
        }
}

static int on_socket(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        iso_buf_compact(&C.in);
        read_into(&C.in);
        process();
        flush();
        return 0;
}

static int send_ready(int r, const char *error) {
        size_t at = iso_put_begin(&C.out, ISO_C_READY);
        iso_put_u64(&C.out, (uint64_t)(int64_t)r);
        iso_put_str(&C.out, error);
        iso_put_end(&C.out, at);
        flush();
        return r;
}

static int parse_fd(const char *s) {
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || !end || *end || v < 0 || v > INT32_MAX)
                return -EINVAL;
        return (int)v;
}

static int child_run(int argc, char **argv);

/* Never returns into main(): nothing of agentd's exit path (or a sanitizer's) runs
 * for a process that only ever hosted one plugin. */
int isolate_child_main(int argc, char **argv) {
        int r = child_run(argc, argv);
        fflush(NULL);
        _exit(r);
}

static int child_run(int argc, char **argv) {
        if (argc != 4)
                return 2;
        int fd = parse_fd(argv[2]), shmfd = parse_fd(argv[3]);
        if (fd < 0 || shmfd < 0)
                return 2;
        /* the parent blocks signals for sd-event; here the defaults apply, except that
         * the parent alone decides when this child stops (FINI, EOF or SIGKILL) */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* what it runs goes through agentd's exec, so nothing here needs to gain privileges */
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (getppid() == 1)
                return 1;
        /* systemd talks to agentd alone */
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_PID");
        log_open();

        C.fd = fd;
        C.shm = mmap(NULL, sizeof(iso_shm), PROT_READ | PROT_WRITE, MAP_SHARED, shmfd, 0);
        close(shmfd);
        if (C.shm == MAP_FAILED)
                return 1;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

        /* HELLO */
        uint32_t type = 0;
        iso_rd r;
        int k;
        while ((k = iso_next_frame(&C.in, &type, &r)) == 0)
                read_into(&C.in);
        if (k < 0 || type != ISO_P_HELLO)
                return 1;
        const char *json_text = iso_get_str(&r);
        size_t blob_len = 0;
        const char *blob = iso_get_bytes(&r, &blob_len);
        json_error_t e;
        json_t *hello = json_text ? json_loads(json_text, 0, &e) : NULL;
        if (r.bad || !hello)
                return 1;
        const char *so_path = json_string_value(json_object_get(hello, "so_path"));
        C.acfg.name = strdup(json_string_value(json_object_get(hello, "agent")) ?: "?");
        C.acfg.sysroot = strdup(json_string_value(json_object_get(hello, "sysroot")) ?: "/");
        C.acfg.dry_run = json_is_true(json_object_get(hello, "dry_run"));
        C.acfg.log_level = (int)json_integer_value(json_object_get(hello, "log_level"));
        C.agent.config = &C.acfg;
        C.inst.agent = &C.agent;
        C.inst.name = strdup(json_string_value(json_object_get(hello, "instance")) ?: "?");
        C.inst.cfg.name = C.inst.name;
        C.inst.cfg.plugin = strdup(json_string_value(json_object_get(hello, "plugin")) ?: "?");
        C.inst.cfg.dry_run = -1;
        C.inst.cfg.log_level = -1;
        C.inst.config_text = strdup(json_string_value(json_object_get(hello, "config")) ?: "{}");
        if (!C.acfg.name || !C.acfg.sysroot || !C.inst.name || !C.inst.cfg.plugin || !C.inst.config_text || !so_path)
                return 1;
        C.inst.cfg.config_json = json_loads(C.inst.config_text, 0, &e);
        if (!C.inst.cfg.config_json)
                C.inst.cfg.config_json = json_object();
        log_set_max_level(C.acfg.log_level);
        C.inst.run_state = INSTANCE_RUNNING;

        if (sd_event_new(&C.event) < 0)
                return 1;
        C.agent.event = C.event;

        char *err = NULL;
        int rr = loader_open(so_path, json_is_true(json_object_get(hello, "check_perms")), &C.so, &err);
        if (rr < 0) {
                send_ready(rr, err ? err : strerror(-rr));
                return 1;
        }

        C.host = host_table;
        C.host.publish = c_publish;
        C.host.subscribe = c_subscribe;
        C.host.unsubscribe = c_unsubscribe;
        C.host.request = c_request;
        C.host.respond = c_respond;
        C.host.timer_add = c_timer_add;
        C.host.timer_cancel = c_timer_cancel;
        C.host.timer_add_realtime = c_timer_add_realtime;
        C.host.time_change_add = c_time_change_add;
        C.host.io_add = c_io_add;
        C.host.io_remove = c_io_remove;
        C.host.exec = c_exec;
        C.host.exec_cancel = c_exec_cancel;
        C.host.exec_adopt = c_exec_adopt;
        C.host.work_adopt = c_work_adopt;
        C.host.store_exec = c_store_exec;
        C.host.store_query = c_store_query;
        C.host.kv_get = c_kv_get;
        C.host.kv_set = c_kv_set;
        C.host.metric_set = c_metric_set;
        C.host.metric_add = c_metric_add;
        C.host.publish_durable = c_publish_durable;
        C.host.consume_durable = c_consume_durable;
        C.host.consume_cancel = c_consume_cancel;
        C.host.ack = c_ack;

        C.inst.generation = 1;
        C.ctx = ctx_new(&C.inst);
        if (!C.ctx)
                return send_ready(-ENOMEM, "out of memory"), 1;
        C.inst.ctx = C.ctx;
        C.inst.so = C.so;
        busy(ISO_HOOK_INIT);
        rr = C.so->desc->init(&C.host, C.ctx, &C.state);
        if (rr >= 0 && blob) {
                int (*restore)(void *, const void *, size_t) = PLUGIN_HOOK(C.so, restore_state);
                if (restore) {
                        busy(ISO_HOOK_RESTORE);
                        rr = restore(C.state, blob, blob_len);
                }
        }
        busy(ISO_HOOK_NONE);
        if (rr < 0) {
                char msg[256];
                snprintf(msg, sizeof msg, "init of %s failed: %s", so_path, strerror(-rr));
                send_ready(rr, msg);
                return 1;
        }
        json_decref(hello);
        send_ready(0, NULL);

        if (sd_event_add_io(C.event, NULL, fd, EPOLLIN, on_socket, NULL) < 0)
                return 1;
        /* frames that came with HELLO */
        process();
        flush();
        sd_event_loop(C.event);
        return 0;
}
