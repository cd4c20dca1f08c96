/* isolate.c — the parent side of isolated instances: spawning the child (a re-exec of
 * agentd), batching the instance's messages and ticks to it, serving its host calls
 * with the ordinary host.c services on a parent-side context, watching its hooks'
 * duration through the shared page, and surviving its death: the messages it had not
 * finished go back to the front of the queue (except the one it died in), the crash is
 * logged and counted, and a new child starts after a backoff. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "context.h"
#include "isolate.h"
#include "isolate_proto.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define OUT_HIGH        (1u << 20) /* stop framing more messages beyond this much unsent */
#define READ_CHUNK      (1u << 20)
#define RING_MAX        65536 /* messages sent and not yet acknowledged by the child */
#define BACKOFF_MIN_MS  100ULL
#define BACKOFF_MAX_MS  30000ULL
#define CRASH_WINDOW_US (60 * USEC_PER_SEC)
#define SPAWN_GRACE_US  (2 * USEC_PER_SEC) /* exec + dlopen before init counts */

typedef struct q_entry {
        bus_msg *m;
        const char *verb; /* into m: a call, or NULL */
        uint64_t seq;     /* ring: the child's message number, from 1 */
} q_entry;

typedef struct msgq {
        q_entry *e;
        size_t cap, head, n;
} msgq;

typedef enum child_state {
        CHILD_STARTING,
        CHILD_READY,
        CHILD_DRAINING, /* retired: fini sent, its last frames still served */
        CHILD_DISCARD,  /* refused (failed sync start): killed, waiting to be reaped */
} child_state;

typedef struct sid_map {
        struct sid_map *next;
        uint64_t csid, sid;
        bool adopted; /* execs: taken from the predecessor child by a reload not yet committed */
} sid_map;

typedef struct iso_child {
        struct iso_child *next; /* all children of all instances */
        isolate *iso;
        pid_t pid;
        pid_t dead_pid; /* once reaped, for the log */
        int fd;
        child_state state;
        sd_event_source *io, *child_src, *watchdog;
        iso_shm *shm;
        iso_buf in, out;
        org_ctx *pctx;        /* parent-side context: exec, store, requests, metrics */
        uint64_t marker;      /* first bus sid of this child's subscriptions */
        uint64_t sent;        /* messages sent */
        uint64_t errors_seen; /* the child's hook error count at its last ACK */
        msgq ring;            /* sent, not acknowledged */
        sid_map *sids;
        /* the commands it started or adopted: sid is the exec id (the parent's, which the
         * child uses too); each is the userdata of its exec callback */
        sid_map *execs;
        sid_map *consumers; /* child consumer id -> parent consumer id */
        uint64_t spawned_us, retired_us;
        bool eof, sync_wait, got_ready, got_saved, got_verified;
        int ready_r, saved_r, verified_r;
        char *init_error;
        void *saved;
        size_t saved_len;
        char *verified;
        char *kill_reason; /* set when the watchdog killed it */
} iso_child;

struct isolate {
        instance *in;
        iso_child *cur;
        char *so_path;
        msgq pending; /* waiting for a (new) child */
        uint64_t dropped, requeued, poisoned;
        uint64_t crashes, restarts;
        uint64_t crash_times[64];
        unsigned n_crash_times;
        bool ever_ready;
        sd_event_source *restart_timer;
        uint64_t backoff_ms;
        char *last_crash;
};

static iso_child *children;

static agent *iso_agent(isolate *iso) {
        return iso->in->agent;
}

static uint64_t hook_timeout_us(const isolate *iso) {
        uint64_t ms = iso->in->cfg.hook_timeout_ms ? iso->in->cfg.hook_timeout_ms : 5000;
        return ms * USEC_PER_MSEC;
}

static unsigned max_restarts(const isolate *iso) {
        return iso->in->cfg.max_restarts ? iso->in->cfg.max_restarts : 5;
}

/* --- message queues ------------------------------------------------------------ */

static int q_grow(msgq *q) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        q_entry *e = new0(q_entry, cap);
        if (!e)
                return -ENOMEM;
        for (size_t i = 0; i < q->n; i++)
                e[i] = q->e[(q->head + i) % q->cap];
        free(q->e);
        q->e = e;
        q->cap = cap;
        q->head = 0;
        return 0;
}

static int q_push(msgq *q, q_entry x) {
        if (q->n == q->cap && q_grow(q) < 0)
                return -ENOMEM;
        q->e[(q->head + q->n) % q->cap] = x;
        q->n++;
        return 0;
}

static int q_push_front(msgq *q, q_entry x) {
        if (q->n == q->cap && q_grow(q) < 0)
                return -ENOMEM;
        q->head = (q->head + q->cap - 1) % q->cap;
        q->e[q->head] = x;
        q->n++;
        return 0;
}

static q_entry *q_front(msgq *q) {
        return q->n ? &q->e[q->head] : NULL;
}
static q_entry *q_back(msgq *q) {
        return q->n ? &q->e[(q->head + q->n - 1) % q->cap] : NULL;
}

static void q_pop(msgq *q) {
        q->head = (q->head + 1) % q->cap;
        q->n--;
}

static void q_pop_back(msgq *q) {
        q->n--;
}

static void q_clear(msgq *q) {
        while (q->n) {
                bus_msg_unref(q_front(q)->m);
                q_pop(q);
        }
        free(q->e);
        *q = (msgq){0};
}

/* --- output ---------------------------------------------------------------------- */

static void want_write(iso_child *c) {
        if (c->io && c->out.len > c->out.off)
                sd_event_source_set_io_events(c->io, EPOLLIN | EPOLLOUT);
}

static void send_simple(iso_child *c, uint32_t type) {
        size_t at = iso_put_begin(&c->out, type);
        if (iso_put_end(&c->out, at) >= 0)
                want_write(c);
}

static size_t queue_bound(const isolate *iso) {
        size_t max = iso->in->cfg.queue_max ? iso->in->cfg.queue_max : iso->in->agent->config->queue_max;
        return max ? max : 4096;
}

/* A child that does not keep up (or spins) holds at most queue_max messages in flight;
 * the rest wait in `pending`, under the same bound, and overflow is counted. */
static bool can_send(const iso_child *c) {
        return c->state == CHILD_READY && c->out.len - c->out.off < OUT_HIGH &&
               c->ring.n < MIN((size_t)RING_MAX, queue_bound(c->iso));
}

static int send_msg(iso_child *c, q_entry *x) {
        size_t at = iso_put_begin(&c->out, x->verb ? ISO_P_CALL : ISO_P_MSG);
        if (x->verb)
                iso_put_str(&c->out, x->verb);
        iso_put_msg(&c->out, &x->m->m);
        int r = iso_put_end(&c->out, at);
        if (r < 0)
                return r;
        x->seq = ++c->sent;
        r = q_push(&c->ring, *x);
        if (r < 0) { /* cannot keep it for a re-delivery: it goes anyway */
                bus_msg_unref(x->m);
                return 0;
        }
        want_write(c);
        return 0;
}

static void drain_pending(isolate *iso) {
        iso_child *c = iso->cur;
        while (c && iso->pending.n && can_send(c)) {
                q_entry x = *q_front(&iso->pending);
                q_pop(&iso->pending);
                if (send_msg(c, &x) < 0) {
                        bus_msg_unref(x.m);
                        iso->dropped++;
                }
        }
}

void isolate_deliver(isolate *iso, const bus_msg *msg, const char *verb) {
        q_entry x = {.m = bus_msg_ref((bus_msg *)msg), .verb = verb};
        iso_child *c = iso->cur;
        if (c && iso->pending.n == 0 && can_send(c)) {
                if (send_msg(c, &x) < 0) {
                        bus_msg_unref(x.m);
                        iso->dropped++;
                }
                return;
        }
        if (iso->pending.n >= queue_bound(iso) || q_push(&iso->pending, x) < 0) {
                bus_msg_unref(x.m);
                iso->dropped++;
        }
}

static iso_child *child_of_ctx(org_ctx *ctx);

int isolate_deliver_durable(isolate *iso, org_ctx *ctx, const org_msg *msg) {
        iso_child *c = child_of_ctx(ctx);
        if (!c || c != iso->cur || c->state != CHILD_READY || c->out.len - c->out.off >= OUT_HIGH)
                return -EAGAIN; /* the server delivers it again (NAK) */
        size_t at = iso_put_begin(&c->out, ISO_P_DURABLE);
        iso_put_msg(&c->out, msg);
        int r = iso_put_end(&c->out, at);
        if (r < 0)
                return r;
        iso->in->handled++;
        want_write(c);
        return 0;
}

void isolate_tick(isolate *iso) {
        iso_child *c = iso->cur;
        if (c && c->state == CHILD_READY && c->out.len - c->out.off < OUT_HIGH)
                send_simple(c, ISO_P_TICK);
}

/* --- frames from the child ------------------------------------------------------- */

static iso_child *child_of_ctx(org_ctx *ctx) {
        for (iso_child *c = children; c; c = c->next)
                if (c->pctx == ctx)
                        return c;
        return NULL;
}

static void on_request_reply(org_ctx *ctx, int error, const org_msg *reply, void *userdata) {
        iso_child *c = child_of_ctx(ctx);
        if (!c)
                return;
        size_t at = iso_put_begin(&c->out, ISO_P_REPLY);
        iso_put_u64(&c->out, (uint64_t)(uintptr_t)userdata);
        iso_put_u64(&c->out, (uint64_t)(int64_t)error);
        iso_put_u64(&c->out, reply ? 1 : 0);
        if (reply)
                iso_put_msg(&c->out, reply);
        if (iso_put_end(&c->out, at) >= 0)
                want_write(c);
}

/* userdata is the command's sid_map, in the list of the child that owns it now (an
 * adopted command's completion goes to the child that adopted it). */
static void on_exec_done(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        iso_child *c = child_of_ctx(ctx);
        sid_map *x = userdata;
        if (!c)
                return;
        uint64_t id = x->sid;
        for (sid_map **pp = &c->execs; *pp; pp = &(*pp)->next)
                if (*pp == x) {
                        *pp = x->next;
                        free(x);
                        break;
                }
        size_t at = iso_put_begin(&c->out, ISO_P_EXEC_DONE);
        iso_put_u64(&c->out, id);
        iso_put_u64(&c->out, (uint64_t)(int64_t)res->status);
        iso_put_u64(&c->out, (res->timed_out ? 1u : 0u) | (res->dry_run ? 2u : 0u) | (res->out_truncated ? 4u : 0u) |
                                     (res->err_truncated ? 8u : 0u));
        iso_put_bytes(&c->out, res->out ? res->out : "", res->out ? res->out_len : 0);
        iso_put_bytes(&c->out, res->err ? res->err : "", res->err ? res->err_len : 0);
        iso_put_u64(&c->out, res->duration_us);
        if (iso_put_end(&c->out, at) >= 0)
                want_write(c);
}

static void answer(iso_child *c, uint64_t id, int r) {
        size_t at = iso_put_begin(&c->out, ISO_P_ANSWER);
        iso_put_u64(&c->out, id);
        iso_put_u64(&c->out, (uint64_t)(int64_t)r);
        if (iso_put_end(&c->out, at) >= 0)
                want_write(c);
}

typedef struct row_collect {
        iso_buf b;
        uint64_t n;
} row_collect;

static int collect_row(void *userdata, int n, const char *const *columns, const char *const *names) {
        row_collect *rc = userdata;
        iso_put_u64(&rc->b, (uint64_t)n);
        for (int i = 0; i < n; i++) {
                iso_put_str(&rc->b, names[i]);
                iso_put_str(&rc->b, columns[i]);
        }
        rc->n++;
        return rc->b.oom || rc->b.len > ISO_FRAME_MAX / 2 ? 1 : 0;
}

static const char **get_params(iso_rd *r, size_t *ret_n) {
        uint64_t n = iso_get_u64(r);
        *ret_n = 0;
        if (r->bad || n > 999) {
                r->bad = true;
                return NULL;
        }
        const char **v = new0(const char *, n + 1);
        if (!v) {
                r->bad = true;
                return NULL;
        }
        for (uint64_t i = 0; i < n; i++)
                v[i] = iso_get_str(r);
        *ret_n = (size_t)n;
        return v;
}

static void child_kill(iso_child *c, const char *reason) {
        if (reason && !c->kill_reason)
                c->kill_reason = strdup(reason);
        if (c->pid > 0)
                kill(c->pid, SIGKILL);
}

static void commit(iso_child *c);

/* One frame from the child; false on a protocol violation. */
static bool dispatch(iso_child *c, uint32_t type, iso_rd *r) {
        isolate *iso = c->iso;
        instance *in = iso->in;
        bool live = c->state == CHILD_STARTING || c->state == CHILD_READY;
        org_header hdrs[ISO_HEADERS_MAX];
        org_msg m;
        switch (type) {
        case ISO_C_READY: {
                int rr = (int)(int64_t)iso_get_u64(r);
                const char *err = iso_get_str(r);
                if (r->bad || c->state != CHILD_STARTING || c->got_ready)
                        return !r->bad;
                c->got_ready = true;
                c->ready_r = rr;
                if (rr < 0) {
                        free(c->init_error);
                        c->init_error = strdup(err ? err : strerror(-rr));
                } else if (!c->sync_wait)
                        commit(c);
                return true;
        }
        case ISO_C_PUB:
                iso_get_msg(r, &m, hdrs);
                if (r->bad)
                        return false;
                bus_publish(iso_agent(iso)->bus, m.subject, NULL, m.headers, m.n_headers, m.data, m.len, NULL);
                return true;
        case ISO_C_SUB: {
                uint64_t csid = iso_get_u64(r);
                const char *pattern = iso_get_str(r);
                if (r->bad || !pattern)
                        return false;
                uint64_t sid;
                if (!live || host_table.subscribe(c->pctx, pattern, &sid) < 0)
                        return true;
                sid_map *s = new0(sid_map, 1);
                if (!s)
                        return true;
                s->csid = csid;
                s->sid = sid;
                s->next = c->sids;
                c->sids = s;
                return true;
        }
        case ISO_C_UNSUB: {
                uint64_t csid = iso_get_u64(r);
                for (sid_map **pp = &c->sids; *pp; pp = &(*pp)->next)
                        if ((*pp)->csid == csid) {
                                sid_map *s = *pp;
                                *pp = s->next;
                                bus_unsubscribe(in->client, s->sid);
                                free(s);
                                break;
                        }
                return !r->bad;
        }
        case ISO_C_REQ: {
                uint64_t id = iso_get_u64(r);
                const char *subject = iso_get_str(r);
                size_t len;
                const char *data = iso_get_bytes(r, &len);
                uint64_t timeout = iso_get_u64(r);
                if (r->bad || !subject || !data)
                        return false;
                int rr = host_table.request(c->pctx, subject, data, len, timeout, on_request_reply,
                                            (void *)(uintptr_t)id);
                if (rr < 0)
                        on_request_reply(c->pctx, rr, NULL, (void *)(uintptr_t)id);
                return true;
        }
        case ISO_C_EXEC: {
                uint64_t id = iso_get_u64(r);
                bool argv_null, env_null;
                _cleanup_free_ const char **argv = iso_get_strv(r, &argv_null);
                _cleanup_free_ const char **env = iso_get_strv(r, &env_null);
                org_exec_spec spec = {.argv = argv, .env = env};
                spec.cwd = iso_get_str(r);
                spec.uid = (uid_t)iso_get_u64(r);
                spec.gid = (gid_t)iso_get_u64(r);
                uint64_t flags = iso_get_u64(r);
                spec.set_ids = flags & 1;
                spec.allow_path = flags & 2;
                spec.mutating = flags & 4;
                spec.timeout_ms = iso_get_u64(r);
                spec.capture_max = (size_t)iso_get_u64(r);
                spec.stdin_data = iso_get_bytes(r, &spec.stdin_len);
                if (r->bad)
                        return false;
                uint64_t pid_id = 0;
                int rr = -EINVAL;
                sid_map *x = new0(sid_map, 1);
                if (!x)
                        rr = -ENOMEM;
                else if (live)
                        rr = host_table.exec(c->pctx, &spec, on_exec_done, x, &pid_id);
                if (rr >= 0) {
                        x->csid = x->sid = pid_id;
                        x->next = c->execs;
                        c->execs = x;
                } else
                        free(x);
                /* the answer carries the exec id: the child's calls and our EXEC_DONE use it */
                size_t at = iso_put_begin(&c->out, ISO_P_ANSWER);
                iso_put_u64(&c->out, id);
                iso_put_u64(&c->out, (uint64_t)(int64_t)rr);
                iso_put_u64(&c->out, rr >= 0 ? pid_id : 0);
                if (iso_put_end(&c->out, at) >= 0)
                        want_write(c);
                return true;
        }
        case ISO_C_EXEC_ADOPT: {
                uint64_t rpc = iso_get_u64(r), id = iso_get_u64(r);
                if (r->bad)
                        return false;
                /* only a reload's new child has a predecessor, and only until it commits */
                org_ctx *pred = live ? c->pctx->predecessor : NULL;
                iso_child *old = pred ? child_of_ctx(pred) : NULL;
                int rr = -ENOENT;
                for (sid_map **pp = old ? &old->execs : NULL; pp && *pp; pp = &(*pp)->next)
                        if ((*pp)->sid == id) {
                                sid_map *x = *pp;
                                rr = host_table.exec_adopt(c->pctx, id, on_exec_done, x);
                                if (rr >= 0) {
                                        *pp = x->next;
                                        x->adopted = true;
                                        x->next = c->execs;
                                        c->execs = x;
                                }
                                break;
                        }
                answer(c, rpc, rr);
                return true;
        }
        case ISO_C_EXEC_CANCEL: {
                uint64_t id = iso_get_u64(r);
                for (sid_map **pp = &c->execs; *pp; pp = &(*pp)->next)
                        if ((*pp)->sid == id) {
                                sid_map *x = *pp;
                                *pp = x->next;
                                host_table.exec_cancel(c->pctx, x->sid);
                                free(x);
                                break;
                        }
                return !r->bad;
        }
        case ISO_C_METRIC_SET:
        case ISO_C_METRIC_ADD: {
                const char *name = iso_get_str(r);
                uint64_t mtype = type == ISO_C_METRIC_SET ? iso_get_u64(r) : 0;
                uint64_t bits = iso_get_u64(r);
                const char *help = iso_get_str(r);
                double v;
                memcpy(&v, &bits, sizeof v);
                if (r->bad || !name)
                        return false;
                if (type == ISO_C_METRIC_SET)
                        host_table.metric_set(c->pctx, name, (org_metric_type)mtype, v, help);
                else
                        host_table.metric_add(c->pctx, name, v, help);
                return true;
        }
        case ISO_C_STORE_EXEC:
        case ISO_C_STORE_QUERY: {
                uint64_t id = iso_get_u64(r);
                const char *sql = iso_get_str(r);
                size_t n;
                _cleanup_free_ const char **params = get_params(r, &n);
                if (r->bad || !sql)
                        return false;
                if (type == ISO_C_STORE_EXEC) {
                        answer(c, id, host_table.store_exec(c->pctx, sql, params, n));
                        return true;
                }
                row_collect rc = {0};
                int rr = host_table.store_query(c->pctx, sql, params, n, collect_row, &rc);
                if (rc.b.oom)
                        rr = -ENOMEM;
                size_t at = iso_put_begin(&c->out, ISO_P_ANSWER);
                iso_put_u64(&c->out, id);
                iso_put_u64(&c->out, (uint64_t)(int64_t)rr);
                iso_put_u64(&c->out, rr < 0 ? 0 : rc.n);
                if (rr >= 0 && rc.b.len && iso_buf_reserve(&c->out, rc.b.len) >= 0) {
                        memcpy(c->out.data + c->out.len, rc.b.data, rc.b.len);
                        c->out.len += rc.b.len;
                }
                if (iso_put_end(&c->out, at) < 0)
                        answer(c, id, -ENOMEM);
                iso_buf_done(&rc.b);
                want_write(c);
                return true;
        }
        case ISO_C_KV_GET: {
                uint64_t id = iso_get_u64(r);
                const char *key = iso_get_str(r);
                if (r->bad || !key)
                        return false;
                _cleanup_free_ char *value = NULL;
                int rr = host_table.kv_get(c->pctx, key, &value);
                size_t at = iso_put_begin(&c->out, ISO_P_ANSWER);
                iso_put_u64(&c->out, id);
                iso_put_u64(&c->out, (uint64_t)(int64_t)rr);
                iso_put_str(&c->out, rr >= 0 ? value : NULL);
                if (iso_put_end(&c->out, at) < 0)
                        answer(c, id, -ENOMEM);
                want_write(c);
                return true;
        }
        case ISO_C_KV_SET: {
                uint64_t id = iso_get_u64(r);
                const char *key = iso_get_str(r), *value = iso_get_str(r);
                if (r->bad || !key)
                        return false;
                answer(c, id, host_table.kv_set(c->pctx, key, value));
                return true;
        }
        case ISO_C_PUB_DURABLE: {
                uint64_t id = iso_get_u64(r);
                const char *subject = iso_get_str(r), *msg_id = iso_get_str(r);
                size_t len;
                const char *data = iso_get_bytes(r, &len);
                if (r->bad || !subject || !data)
                        return false;
                int rr = live ? host_table.publish_durable(c->pctx, subject, msg_id, data, len, on_request_reply,
                                                           (void *)(uintptr_t)id)
                              : -ESRCH;
                answer(c, id, rr);
                return true;
        }
        case ISO_C_CONSUME: {
                uint64_t id = iso_get_u64(r);
                org_consume_opts o = {0};
                o.stream = iso_get_str(r);
                o.durable = iso_get_str(r);
                o.filter = iso_get_str(r);
                o.max_deliver = (unsigned)iso_get_u64(r);
                o.ack_wait_ms = iso_get_u64(r);
                o.max_pending = (unsigned)iso_get_u64(r);
                if (r->bad || !o.stream || !o.durable)
                        return false;
                uint64_t pid_id = 0;
                sid_map *x = new0(sid_map, 1);
                int rr = !x ? -ENOMEM : live ? host_table.consume_durable(c->pctx, &o, &pid_id) : -ESRCH;
                if (rr >= 0) {
                        x->csid = id;
                        x->sid = pid_id;
                        x->next = c->consumers;
                        c->consumers = x;
                } else
                        free(x);
                answer(c, id, rr);
                return true;
        }
        case ISO_C_CONSUME_CANCEL: {
                uint64_t id = iso_get_u64(r);
                for (sid_map **pp = &c->consumers; *pp; pp = &(*pp)->next)
                        if ((*pp)->csid == id) {
                                sid_map *x = *pp;
                                *pp = x->next;
                                host_table.consume_cancel(c->pctx, x->sid);
                                free(x);
                                break;
                        }
                return !r->bad;
        }
        case ISO_C_DACK: {
                uint64_t token = iso_get_u64(r), kind = iso_get_u64(r), delay = iso_get_u64(r);
                if (r->bad)
                        return false;
                host_table.ack(c->pctx, token, (org_ack_kind)kind, delay);
                return true;
        }
        case ISO_C_ACK: {
                uint64_t done = iso_get_u64(r), errors = iso_get_u64(r);
                uint64_t tick_last = iso_get_u64(r), tick_max = iso_get_u64(r);
                if (r->bad || done > c->sent || errors < c->errors_seen)
                        return false;
                in->hook_errors += errors - c->errors_seen;
                c->errors_seen = errors;
                in->tick_us_last = tick_last;
                in->tick_us_max = MAX(in->tick_us_max, tick_max);
                while (c->ring.n && q_front(&c->ring)->seq <= done) {
                        bus_msg_unref(q_front(&c->ring)->m);
                        q_pop(&c->ring);
                }
                if (c == iso->cur)
                        drain_pending(iso);
                return true;
        }
        case ISO_C_SAVED: {
                c->saved_r = (int)(int64_t)iso_get_u64(r);
                size_t len;
                const char *blob = iso_get_bytes(r, &len);
                if (r->bad)
                        return false;
                free(c->saved);
                c->saved = NULL;
                c->saved_len = 0;
                if (c->saved_r >= 0 && blob && (c->saved = malloc(len ? len : 1))) {
                        memcpy(c->saved, blob, len);
                        c->saved_len = len;
                }
                c->got_saved = true;
                return true;
        }
        case ISO_C_VERIFIED: {
                c->verified_r = (int)(int64_t)iso_get_u64(r);
                const char *text = iso_get_str(r);
                if (r->bad)
                        return false;
                free(c->verified);
                c->verified = text ? strdup(text) : NULL;
                c->got_verified = true;
                return true;
        }
        default:
                return false;
        }
}

/* Reads once and serves every complete frame. Returns 1 when something was read, 0
 * when nothing was there, -1 at EOF or on a fault (c->eof set). */
static int read_frames(iso_child *c) {
        iso_buf_compact(&c->in);
        if (iso_buf_reserve(&c->in, READ_CHUNK) < 0)
                return 0; /* try again later */
        ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                c->eof = true;
                return -1;
        }
        if (n < 0)
                return 0;
        c->in.len += (size_t)n;
        for (;;) {
                uint32_t type;
                iso_rd r;
                int k = iso_next_frame(&c->in, &type, &r);
                if (k == 0)
                        return 1;
                if (k < 0 || !dispatch(c, type, &r)) {
                        log_internal(LOG_ERR, 0, c->iso->in->cfg.plugin, c->iso->in->name,
                                     "isolated child %d broke the protocol (frame type %u): killing it", (int)c->pid,
                                     k < 0 ? 0u : type);
                        child_kill(c, "it broke the protocol");
                        c->eof = true;
                        return -1;
                }
        }
}

static int flush_some(iso_child *c) {
        while (c->out.off < c->out.len) {
                ssize_t n = write(c->fd, c->out.data + c->out.off, c->out.len - c->out.off);
                if (n > 0) {
                        c->out.off += (size_t)n;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return 0;
                return -errno;
        }
        c->out.len = c->out.off = 0;
        return 0;
}

static int on_child_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        iso_child *c = userdata;
        if (revents & EPOLLOUT) {
                if (flush_some(c) < 0)
                        c->eof = true;
                if (c->out.off >= c->out.len && !c->eof) {
                        c->out.len = c->out.off = 0;
                        sd_event_source_set_io_events(c->io, EPOLLIN);
                }
                if (c == c->iso->cur)
                        drain_pending(c->iso);
        }
        if ((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->eof)
                read_frames(c);
        if (c->eof) /* the exit (always reported by sd-event) finishes the story */
                c->io = sd_event_source_disable_unref(c->io);
        return 0;
}

/* Waits (blocking the loop, bounded) until *flag, serving the child's frames. */
static int wait_for(iso_child *c, const bool *flag, uint64_t timeout_us) {
        uint64_t deadline = now_monotonic_us() + timeout_us;
        while (!*flag) {
                if (c->eof)
                        return -ECHILD;
                uint64_t now = now_monotonic_us();
                if (now >= deadline)
                        return -ETIMEDOUT;
                struct pollfd p = {.fd = c->fd, .events = POLLIN | (c->out.len > c->out.off ? POLLOUT : 0)};
                int k = poll(&p, 1, (int)((deadline - now) / USEC_PER_MSEC) + 1);
                if (k < 0 && errno != EINTR)
                        return -errno;
                if (k <= 0)
                        continue;
                if ((p.revents & POLLOUT) && flush_some(c) < 0)
                        c->eof = true;
                if (p.revents & (POLLIN | POLLHUP | POLLERR))
                        read_frames(c);
        }
        return 0;
}

/* --- life and death -------------------------------------------------------------- */

static void child_free(iso_child *c) {
        if (!c)
                return;
        LIST_UNLINK(children, c);
        if (c->iso && c->iso->cur == c)
                c->iso->cur = NULL;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->child_src);
        sd_event_source_disable_unref(c->watchdog);
        if (c->fd >= 0)
                close(c->fd);
        if (c->shm && c->shm != MAP_FAILED)
                munmap(c->shm, sizeof(iso_shm));
        ctx_free(c->pctx); /* kills its processes, forgets its requests */
        q_clear(&c->ring);
        while (c->sids) {
                sid_map *s = c->sids;
                c->sids = s->next;
                free(s);
        }
        while (c->execs) {
                sid_map *s = c->execs;
                c->execs = s->next;
                free(s);
        }
        while (c->consumers) {
                sid_map *s = c->consumers;
                c->consumers = s->next;
                free(s);
        }
        iso_buf_done(&c->in);
        iso_buf_done(&c->out);
        free(c->init_error);
        free(c->saved);
        free(c->verified);
        free(c->kill_reason);
        free(c);
}

static uint64_t crashes_in_window(isolate *iso, uint64_t now) {
        uint64_t n = 0;
        for (unsigned i = 0; i < iso->n_crash_times && i < ELEMENTSOF(iso->crash_times); i++)
                if (now - iso->crash_times[i] <= CRASH_WINDOW_US)
                        n++;
        return n;
}

static void describe_exit(const siginfo_t *si, char *buf, size_t size) {
        if (si->si_code == CLD_EXITED)
                snprintf(buf, size, "exited with status %d", si->si_status);
        else {
                const char *abbrev = sigabbrev_np(si->si_status);
                snprintf(buf, size, "killed by signal %d (SIG%s: %s)%s", si->si_status, abbrev ? abbrev : "?",
                         strsignal(si->si_status), si->si_code == CLD_DUMPED ? ", core dumped" : "");
        }
}

static int on_restart(sd_event_source *s, uint64_t usec, void *userdata) {
        isolate *iso = userdata;
        iso->restart_timer = sd_event_source_disable_unref(iso->restart_timer);
        instance *in = iso->in;
        if (in->run_state != INSTANCE_RUNNING || iso->cur)
                return 0;
        iso->restarts++;
        _cleanup_free_ char *err = NULL;
        int r = isolate_start(in, iso->so_path, NULL, 0, false, &err);
        if (r < 0) {
                log_internal(LOG_ERR, 0, in->cfg.plugin, in->name, "cannot restart the isolated child: %s",
                             err ? err : strerror(-r));
                /* try again later, as a crash would */
                iso->backoff_ms = MIN(BACKOFF_MAX_MS, MAX(BACKOFF_MIN_MS, iso->backoff_ms * 2));
                sd_event_add_time_relative(in->agent->event, &iso->restart_timer, CLOCK_MONOTONIC,
                                           iso->backoff_ms * USEC_PER_MSEC, 1000, on_restart, iso);
        }
        return 0;
}

/* The instance gives up: no more children until a reload or enable. */
static void iso_fail(isolate *iso, const char *why) {
        instance *in = iso->in;
        in->run_state = INSTANCE_FAILED;
        free(in->error);
        in->error = strdup(why);
        q_clear(&iso->pending);
        bus_client_unsubscribe_range(in->client, 0, UINT64_MAX, in->ctl_sid);
        log_internal(LOG_ERR, 0, in->cfg.plugin, in->name, "failed: %s", why);
}

/* A caller waiting on the verb the child died in learns why now, not at its time-out. */
static void answer_dead_call(isolate *iso, const char *reply, const char *how) {
        json_t *o = json_pack("{s:s+}", "error", "the isolated child died in this call: ", how);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text)
                bus_publish(iso_agent(iso)->bus, reply, NULL, NULL, 0, text, strlen(text), NULL);
        free(text);
        json_decref(o);
}

static void child_crashed(iso_child *c, const siginfo_t *si) {
        isolate *iso = c->iso;
        instance *in = iso->in;
        unsigned kind = __atomic_load_n(&c->shm->busy_kind, __ATOMIC_ACQUIRE);
        uint64_t done = __atomic_load_n(&c->shm->msgs_done, __ATOMIC_ACQUIRE);
        bool starting = c->state == CHILD_STARTING;
        const char *hook = kind ? iso_hook_name(kind) : starting ? "init" : "none (between hooks)";
        char how[160];
        describe_exit(si, how, sizeof how);

        /* what it published before dying still counts */
        while (!c->eof && read_frames(c) > 0)
                ;

        /* init failed cleanly (no crash) on the very first start: like an in-process init */
        if (starting && c->got_ready && c->ready_r < 0 && !iso->ever_ready) {
                char *why = c->init_error ? c->init_error : "init failed";
                iso_fail(iso, why);
                child_free(c);
                return;
        }

        /* The messages it did not acknowledge go back to the front (their output, if any,
         * died with it), except the one it died in. */
        uint64_t poison = (kind == ISO_HOOK_HANDLE || kind == ISO_HOOK_CALL) ? done + 1 : 0;
        char poison_subject[160] = "";
        while (c->ring.n) {
                q_entry x = *q_back(&c->ring);
                q_pop_back(&c->ring);
                if (x.seq == poison) {
                        iso->poisoned++;
                        snprintf(poison_subject, sizeof poison_subject, "%s", x.m->m.subject);
                        if (x.verb && x.m->m.reply)
                                answer_dead_call(iso, x.m->m.reply, how);
                        bus_msg_unref(x.m);
                        continue;
                }
                if (q_push_front(&iso->pending, x) < 0) {
                        bus_msg_unref(x.m);
                        iso->dropped++;
                } else
                        iso->requeued++;
        }

        uint64_t now = now_monotonic_us();
        iso->crashes++;
        iso->crash_times[iso->n_crash_times++ % ELEMENTSOF(iso->crash_times)] = now;
        metrics_set(in->agent->metrics, in->name, "instance_crashes_total", ORG_METRIC_COUNTER, (double)iso->crashes,
                    "isolated children that crashed or were killed");
        uint64_t n = crashes_in_window(iso, now);
        char line[512];
        snprintf(line, sizeof line, "isolated child %d %s%s%s in hook %s%s%s%s%s%s", (int)c->dead_pid, how,
                 c->kill_reason ? ": " : "", c->kill_reason ? c->kill_reason : "", hook, c->init_error ? ": " : "",
                 c->init_error ? c->init_error : "", poison_subject[0] ? " (message on " : "", poison_subject,
                 poison_subject[0] ? " dropped)" : "");
        free(iso->last_crash);
        iso->last_crash = strdup(line);
        child_free(c);

        if (n > max_restarts(iso)) {
                char why[700];
                snprintf(why, sizeof why, "crashed %llu times within %llu s (max_restarts %u); last: %s",
                         (unsigned long long)n, (unsigned long long)(CRASH_WINDOW_US / USEC_PER_SEC), max_restarts(iso),
                         line);
                iso_fail(iso, why);
                return;
        }
        iso->backoff_ms = MIN(BACKOFF_MAX_MS, BACKOFF_MIN_MS << MIN(n - 1, 20ULL));
        log_internal(LOG_ERR, 0, in->cfg.plugin, in->name,
                     "%s; restarting in %llu ms (crash %llu of %u allowed in %llu s)", line,
                     (unsigned long long)iso->backoff_ms, (unsigned long long)n, max_restarts(iso),
                     (unsigned long long)(CRASH_WINDOW_US / USEC_PER_SEC));
        iso->restart_timer = sd_event_source_disable_unref(iso->restart_timer);
        sd_event_add_time_relative(in->agent->event, &iso->restart_timer, CLOCK_MONOTONIC,
                                   iso->backoff_ms * USEC_PER_MSEC, 1000, on_restart, iso);
}

static int on_child_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        iso_child *c = userdata;
        c->child_src = sd_event_source_disable_unref(c->child_src);
        c->dead_pid = c->pid;
        c->pid = 0;
        if (c->state == CHILD_DRAINING || c->state == CHILD_DISCARD) {
                while (!c->eof && read_frames(c) > 0)
                        ;
                if (c->state == CHILD_DRAINING && !(si->si_code == CLD_EXITED && si->si_status == 0)) {
                        char how[160];
                        describe_exit(si, how, sizeof how);
                        log_internal(LOG_WARNING, 0, c->iso->in->cfg.plugin, c->iso->in->name,
                                     "retired isolated child %s", how);
                }
                child_free(c);
                return 0;
        }
        child_crashed(c, si);
        return 0;
}

static void arm_watchdog(iso_child *c, uint64_t at);

static int on_watchdog(sd_event_source *s, uint64_t usec, void *userdata) {
        iso_child *c = userdata;
        uint64_t to = hook_timeout_us(c->iso), now = now_monotonic_us();
        if (c->pid <= 0)
                return 0;
        if (c->state == CHILD_DRAINING || c->state == CHILD_DISCARD) {
                if (now - c->retired_us >= to) {
                        child_kill(c, NULL);
                        return 0;
                }
                arm_watchdog(c, c->retired_us + to);
                return 0;
        }
        unsigned kind = __atomic_load_n(&c->shm->busy_kind, __ATOMIC_ACQUIRE);
        uint64_t since = kind ? c->shm->busy_since_us : 0;
        if (!kind && c->state == CHILD_STARTING) {
                since = c->spawned_us + SPAWN_GRACE_US; /* exec and dlopen: not the plugin's time yet */
                kind = ISO_HOOK_INIT;
        }
        if (kind && now >= since && now - since >= to) {
                char why[160];
                snprintf(why, sizeof why, "hook %s ran longer than hook_timeout (%llu ms)", iso_hook_name(kind),
                         (unsigned long long)(to / USEC_PER_MSEC));
                child_kill(c, why);
                return 0;
        }
        arm_watchdog(c, kind ? since + to : now + to);
        return 0;
}

static void arm_watchdog(iso_child *c, uint64_t at) {
        agent *a = iso_agent(c->iso);
        if (!c->watchdog)
                sd_event_add_time(a->event, &c->watchdog, CLOCK_MONOTONIC, at, 50000, on_watchdog, c);
        else {
                sd_event_source_set_time(c->watchdog, at);
                sd_event_source_set_enabled(c->watchdog, SD_EVENT_ONESHOT);
        }
}

/* A reload's new child is up (or refused): the commands of the child it replaces that
 * it adopted stay its own and the others are killed and logged, like an in-process
 * reload (ctx_hand_over_commit); or they all go back (abort). Before the old child
 * retires, so its fini cannot cancel what the new one adopted. */
static void hand_over_commit(iso_child *c) {
        iso_child *old = c->pctx->predecessor ? child_of_ctx(c->pctx->predecessor) : NULL;
        ctx_hand_over_commit(c->pctx);
        for (sid_map *x = c->execs; x; x = x->next)
                x->adopted = false;
        while (old && old->execs) { /* each killed by ctx_hand_over_commit, callback and all */
                sid_map *x = old->execs;
                old->execs = x->next;
                free(x);
        }
}

static void hand_over_abort(iso_child *c) {
        iso_child *old = c->pctx->predecessor ? child_of_ctx(c->pctx->predecessor) : NULL;
        ctx_hand_over_abort(c->pctx);
        for (sid_map **pp = &c->execs; *pp;) {
                sid_map *x = *pp;
                if (!x->adopted || !old) {
                        pp = &x->next;
                        continue;
                }
                *pp = x->next;
                x->adopted = false;
                x->next = old->execs;
                old->execs = x;
        }
}

/* The new child is up: the previous one retires, the subscriptions made before this
 * child's go, and what waited is sent. */
static void commit(iso_child *c) {
        isolate *iso = c->iso;
        instance *in = iso->in;
        iso_child *old = iso->cur != c ? iso->cur : NULL;
        hand_over_commit(c);
        if (old) {
                send_simple(old, ISO_P_FINI);
                old->state = CHILD_DRAINING;
                old->retired_us = now_monotonic_us();
                arm_watchdog(old, old->retired_us + hook_timeout_us(iso));
        }
        bus_client_unsubscribe_range(in->client, 0, c->marker, in->ctl_sid);
        iso->cur = c;
        c->state = CHILD_READY;
        in->generation++;
        if (!iso->ever_ready || iso->restarts)
                log_internal(LOG_INFO, 0, in->cfg.plugin, in->name, "isolated child %d ready%s", (int)c->pid,
                             iso->pending.n ? ", delivering what waited" : "");
        iso->ever_ready = true;
        drain_pending(iso);
}

static char *hello_json(instance *in, const char *so_path) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:i, s:s, s:b}", "agent", in->agent->config->name,
                              "instance", in->name, "plugin", in->cfg.plugin, "so_path", so_path, "sysroot",
                              in->agent->config->sysroot ? in->agent->config->sysroot : "/", "dry_run",
                              instance_dry_run(in), "log_level", instance_log_level(in), "config",
                              in->config_text ? in->config_text : "{}", "check_perms", in->agent->check_perms);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return s;
}

#if defined(__SANITIZE_ADDRESS__)
#define ISO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ISO_ASAN 1
#endif
#endif

/* The child's environment: agentd's, except that under AddressSanitizer a crash of the
 * plugin stays a crash (the kernel's SIGSEGV, not ASan's report and exit 1) and the
 * child's exit skips the leak check (it never frees the plugin's state). malloc'd. */
char **isolate_child_env(void) {
        extern char **environ;
        size_t n = strv_length(environ);
        char **env = new0(char *, n + 2);
        if (!env)
                return NULL;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
#ifdef ISO_ASAN
                if (startswith(environ[i], "ASAN_OPTIONS="))
                        continue;
#endif
                if (!(env[k++] = strdup(environ[i]))) {
                        strv_free(env);
                        return NULL;
                }
        }
#ifdef ISO_ASAN
        const char *old = getenv("ASAN_OPTIONS");
        if (asprintf(&env[k],
                     "ASAN_OPTIONS=%s%shandle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_abort=0:"
                     "detect_leaks=0",
                     old ? old : "", old && *old ? ":" : "") < 0) {
                env[k] = NULL;
                strv_free(env);
                return NULL;
        }
#endif
        return env;
}

static int spawn(isolate *iso, const char *so_path, const void *blob, size_t blob_len, iso_child **ret) {
        instance *in = iso->in;
        agent *a = in->agent;
        _cleanup_free_ char *hello = hello_json(in, so_path);
        _cleanup_free_ char *argv0 = NULL;
        _cleanup_strv_free_ char **env = isolate_child_env();
        if (!hello || !env || asprintf(&argv0, "agentd[%s]", in->name) < 0)
                return -ENOMEM;
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        int memfd = memfd_create("agentd-isolate", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, sizeof(iso_shm)) < 0) {
                int r = -errno;
                if (memfd >= 0)
                        close(memfd);
                close(sv[0]);
                close(sv[1]);
                return r;
        }
        /* the child finds them at 3 and 4; above 10 here so the dup2s cannot collide */
        int cs = fcntl(sv[1], F_DUPFD_CLOEXEC, 10), cm = fcntl(memfd, F_DUPFD_CLOEXEC, 10);
        close(sv[1]);
        iso_child *c = new0(iso_child, 1);
        if (c)
                c->shm = mmap(NULL, sizeof(iso_shm), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        close(memfd);
        if (!c || cs < 0 || cm < 0 || c->shm == MAP_FAILED) {
                if (c && c->shm != MAP_FAILED)
                        munmap(c->shm, sizeof(iso_shm));
                free(c);
                if (cs >= 0)
                        close(cs);
                if (cm >= 0)
                        close(cm);
                close(sv[0]);
                return -ENOMEM;
        }
        c->fd = sv[0];
        c->iso = iso;
        c->next = children;
        children = c;
        c->state = CHILD_STARTING;
        c->spawned_us = now_monotonic_us();
        c->marker = bus_next_sid(a->bus);
        c->pctx = ctx_new(in);
        int r = c->pctx ? 0 : -ENOMEM;

        /* HELLO goes first, so the child never waits on us */
        size_t at = iso_put_begin(&c->out, ISO_P_HELLO);
        iso_put_str(&c->out, hello);
        iso_put_bytes(&c->out, blob, blob_len);
        if (r >= 0)
                r = iso_put_end(&c->out, at);
        int big = 4 << 20;
        if (setsockopt(c->fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) < 0)
                setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        if (setsockopt(c->fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
                setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);

        pid_t pid = r < 0 ? -1 : fork();
        if (pid == 0) {
                /* async-signal-safe calls only until execv */
                dup2(cs, 3);
                dup2(cm, 4);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                char *const argv[] = {argv0, (char *)"--isolated-child", (char *)"3", (char *)"4", NULL};
                execve("/proc/self/exe", argv, env);
                _exit(127);
        }
        if (pid < 0 && r >= 0)
                r = -errno;
        close(cs);
        close(cm);
        if (r < 0) {
                child_free(c);
                return r;
        }
        c->pid = pid;
        r = sd_event_add_child(a->event, &c->child_src, pid, WEXITED, on_child_exit, c);
        if (r >= 0)
                r = sd_event_add_io(a->event, &c->io, c->fd, EPOLLIN | EPOLLOUT, on_child_io, c);
        if (r < 0) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                c->pid = 0;
                child_free(c);
                return r;
        }
        arm_watchdog(c, c->spawned_us + SPAWN_GRACE_US + hook_timeout_us(iso));
        *ret = c;
        return 0;
}

int isolate_start(instance *in, const char *so_path, const void *blob, size_t blob_len, bool sync, char **ret_error) {
        isolate *iso = in->iso;
        if (!iso) {
                iso = new0(isolate, 1);
                if (!iso)
                        return -ENOMEM;
                iso->in = in;
                in->iso = iso;
                metrics_set(in->agent->metrics, in->name, "instance_crashes_total", ORG_METRIC_COUNTER, 0,
                            "isolated children that crashed or were killed");
        }
        if (!sync && in->run_state != INSTANCE_RUNNING && !iso->restart_timer && !iso->cur) {
                /* a fresh start (start, enable, reload of a stopped or failed instance) */
                iso->n_crash_times = 0;
                iso->ever_ready = false;
        }
        char *p = strdup(so_path); /* so_path may be iso->so_path itself */
        if (!p)
                return -ENOMEM;
        free(iso->so_path);
        iso->so_path = p;
        so_path = p;

        iso_child *c = NULL;
        int r = spawn(iso, so_path, blob, blob_len, &c);
        if (r < 0) {
                if (asprintf(ret_error, "cannot start the isolated child: %s", strerror(-r)) < 0)
                        *ret_error = NULL;
                return r;
        }
        if (!sync) {
                if (!iso->cur)
                        iso->cur = c;
                /* else (should not happen): the running one stays until this one is ready */
                return 0;
        }
        /* a reload: the running child's commands are offered to the new one (ISO_C_EXEC_ADOPT) */
        if (iso->cur && iso->cur != c && iso->cur->state == CHILD_READY)
                ctx_hand_over_begin(c->pctx, iso->cur->pctx);
        c->sync_wait = true;
        r = wait_for(c, &c->got_ready, SPAWN_GRACE_US + hook_timeout_us(iso));
        c->sync_wait = false;
        if (r >= 0 && c->ready_r < 0)
                r = c->ready_r;
        if (r < 0) {
                const char *why = c->init_error     ? c->init_error
                                  : r == -ETIMEDOUT ? "its init ran longer than hook_timeout"
                                  : r == -ECHILD    ? "the child died during init"
                                                    : strerror(-r);
                if (asprintf(ret_error, "isolated init of %s failed: %s", so_path, why) < 0)
                        *ret_error = NULL;
                hand_over_abort(c);
                c->state = CHILD_DISCARD;
                c->retired_us = now_monotonic_us();
                child_kill(c, NULL);
                bus_client_unsubscribe_range(in->client, c->marker, UINT64_MAX, 0);
                return r;
        }
        commit(c);
        return 0;
}

/* Synchronous exchange with the running child: send type, wait for *flag. */
static int exchange(isolate *iso, uint32_t type, bool *flag) {
        iso_child *c = iso ? iso->cur : NULL;
        if (!c || c->state != CHILD_READY)
                return -ESRCH;
        *flag = false;
        send_simple(c, type);
        return wait_for(c, flag, hook_timeout_us(iso));
}

int isolate_save(isolate *iso, void **ret_blob, size_t *ret_len) {
        iso_child *c = iso ? iso->cur : NULL;
        int r = c ? exchange(iso, ISO_P_SAVE, &c->got_saved) : -ESRCH;
        if (r < 0)
                return r;
        if (c->saved_r < 0)
                return c->saved_r;
        *ret_blob = TAKE_PTR(c->saved);
        *ret_len = c->saved_len;
        return 0;
}

int isolate_verify(isolate *iso, char **ret_json) {
        iso_child *c = iso ? iso->cur : NULL;
        int r = c ? exchange(iso, ISO_P_VERIFY, &c->got_verified) : -ESRCH;
        if (r < 0)
                return r;
        if (c->verified_r < 0)
                return c->verified_r;
        *ret_json = TAKE_PTR(c->verified);
        return 0;
}

static void child_stop(iso_child *c, uint64_t grace_us) {
        if (c->pid > 0 && !c->eof) {
                if (c->state != CHILD_DRAINING && c->state != CHILD_DISCARD)
                        send_simple(c, ISO_P_FINI);
                c->state = CHILD_DRAINING;
                bool never = false;
                wait_for(c, &never, grace_us); /* returns at EOF: fini done, or the grace ran out */
        }
        if (c->pid > 0) {
                kill(c->pid, SIGKILL);
                c->child_src = sd_event_source_disable_unref(c->child_src);
                waitpid(c->pid, NULL, 0);
                c->pid = 0;
        }
        child_free(c);
}

void isolate_free(isolate *iso) {
        if (!iso)
                return;
        uint64_t grace = MIN(hook_timeout_us(iso), 2 * USEC_PER_SEC);
        for (iso_child *c = children, *next; c; c = next) {
                next = c->next;
                if (c->iso == iso) {
                        child_stop(c, grace);
                        next = children; /* the list changed under us */
                }
        }
        sd_event_source_disable_unref(iso->restart_timer);
        q_clear(&iso->pending);
        if (iso->in && iso->in->iso == iso)
                iso->in->iso = NULL;
        free(iso->so_path);
        free(iso->last_crash);
        free(iso);
}

json_t *isolate_execs_to_json(const isolate *iso) {
        return ctx_execs_to_json(iso && iso->cur ? iso->cur->pctx : NULL);
}

void isolate_to_json(const isolate *iso, json_t *o) {
        json_object_set_new(o, "isolated", json_true());
        iso_child *c = iso ? iso->cur : NULL;
        json_object_set_new(o, "pid", c && c->pid > 0 ? json_integer(c->pid) : json_null());
        if (!iso)
                return;
        json_object_set_new(o, "child_state",
                            json_string(!c                        ? (iso->restart_timer ? "backoff" : "none")
                                        : c->state == CHILD_READY ? "ready"
                                                                  : "starting"));
        json_object_set_new(o, "crashes", json_integer((json_int_t)iso->crashes));
        json_object_set_new(o, "restarts", json_integer((json_int_t)iso->restarts));
        json_object_set_new(o, "isolate_queued", json_integer((json_int_t)iso->pending.n));
        json_object_set_new(o, "isolate_dropped", json_integer((json_int_t)iso->dropped));
        json_object_set_new(o, "requeued", json_integer((json_int_t)iso->requeued));
        json_object_set_new(o, "poisoned", json_integer((json_int_t)iso->poisoned));
        if (iso->last_crash)
                json_object_set_new(o, "last_crash", json_string(iso->last_crash));
}
