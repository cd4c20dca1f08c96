/* maestro.c — the maestro plugin's hooks: intake (`gpu.task.enqueue` requests and the
 * `submit` verb, validated, idempotent by task_id, bounded by max_queue), the per-turn
 * write batch (every task changed during a loop turn is written in one transaction;
 * replies, states and run messages are held until that commit, so nothing leaves
 * maestro that a crash could take back), recovery from the store at init, the
 * heartbeat, metrics and the verbs behind `agentctl task ...`. Where tasks go is in
 * dispatch.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <organism/plugin.h>

#include "maestro.h"
#include "maestro_sql.h"

#define ENQUEUE_SUBJECT          "gpu.task.enqueue"
#define WATCH_TIMEOUT_MS_DEFAULT 3600000ULL

static const org_config_entry intake_entries[] = {
        {.key = "stream", .type = ORG_CFG_STRING, .help = "the stream holding gpu.task.enqueue (e.g. ORG_WQ)"},
        {.key = "durable",
         .type = ORG_CFG_STRING,
         .default_value = "MAESTRO_ENQ",
         .format = "identifier",
         .help = "the durable consumer shared by the maestros taking this work"},
        {.key = "filter",
         .type = ORG_CFG_PATTERN,
         .default_value = "gpu.task.enqueue",
         .help = "the subjects of the stream taken as submissions"},
        {.key = "ack_wait",
         .type = ORG_CFG_DURATION,
         .default_value = "60s",
         .min = "1s",
         .max = "1h",
         .help = "a message not acked within this comes back"},
        {.key = "max_pending",
         .type = ORG_CFG_INT,
         .default_value = "256",
         .min = "1",
         .max = "65536",
         .help = "messages delivered but not yet acked, at most"},
        ORG_CONFIG_END,
};

static const org_config_entry config_map[] = {
        {.key = "heartbeat_ttl",
         .type = ORG_CFG_DURATION,
         .default_value = "15s",
         .min = "1s",
         .max = "1h",
         .help = "a GPU is alive while its worker's last heartbeat is younger than this"},
        {.key = "metrics_ttl",
         .type = ORG_CFG_DURATION,
         .default_value = "15s",
         .min = "1s",
         .max = "1h",
         .help = "metrics older than this are stale: busy/temp unknown and a penalty of 30 in the score"},
        {.key = "max_temp",
         .type = ORG_CFG_DOUBLE,
         .default_value = "78",
         .min = "0",
         .max = "150",
         .help = "a GPU hotter than this (degrees C, when known) gets no task"},
        {.key = "max_busy",
         .type = ORG_CFG_DOUBLE,
         .default_value = "95",
         .min = "0",
         .max = "100",
         .help = "a GPU busier than this (percent, when known) gets no task"},
        {.key = "inflight_weight",
         .type = ORG_CFG_DOUBLE,
         .default_value = "40",
         .min = "0",
         .max = "10000",
         .help = "score added per task already scheduled or running on a GPU (spreads work)"},
        {.key = "max_inflight",
         .type = ORG_CFG_INT,
         .default_value = "1",
         .min = "1",
         .max = "1024",
         .help = "tasks leased to one GPU at once (gpuworker runs one at a time and refuses more)"},
        {.key = "max_retries",
         .type = ORG_CFG_INT,
         .default_value = "2",
         .min = "0",
         .max = "100",
         .help = "retries after an err or a lease expiry, unless the task says otherwise"},
        {.key = "retry_backoff",
         .type = ORG_CFG_DURATION,
         .default_value = "2s",
         .min = "0",
         .max = "1h",
         .help = "wait before retry n: retry_backoff x n (n capped at 10)"},
        {.key = "max_queue",
         .type = ORG_CFG_INT,
         .default_value = "10000",
         .min = "1",
         .max = "10000000",
         .help = "tasks not yet final, at most; beyond, submissions are refused with \"queue full\""},
        {.key = "default_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "1h",
         .min = "1s",
         .max = "7d",
         .help = "a task's timeout when it gives none"},
        {.key = "lease_grace",
         .type = ORG_CFG_DURATION,
         .default_value = "60s",
         .min = "1s",
         .max = "1d",
         .help = "lease = task timeout + this, renewed by the worker's gpu.task.running"},
        {.key = "idle_grace",
         .type = ORG_CFG_DURATION,
         .default_value = "5s",
         .min = "100ms",
         .max = "1h",
         .help = "a worker's heartbeat saying a GPU is idle fails the task it runs (lost, e.g. the worker "
                 "restarted) only this long after the task's gpu.task.running: a heartbeat may overtake a "
                 "result or a running (NATS keeps no order across subjects)"},
        {.key = "keep_final",
         .type = ORG_CFG_DURATION,
         .default_value = "7d",
         .min = "1m",
         .max = "3650d",
         .help = "done, failed and cancelled tasks stay in the store (status, watch, idempotent ids) this long"},
        {.key = "heartbeat_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "5s",
         .min = "100ms",
         .max = "1h",
         .help = "period of maestro.heartbeat"},
        {.key = "max_task_bytes",
         .type = ORG_CFG_SIZE,
         .default_value = "64KiB",
         .min = "256",
         .max = "8MiB",
         .help = "a submission larger than this is rejected"},
        {.key = "allow_shell",
         .type = ORG_CFG_BOOL,
         .default_value = "false",
         .help = "accept type: shell tasks (the worker must allow them too); cmd (argv) otherwise"},
        {.key = "intake",
         .type = ORG_CFG_OBJECT,
         .children = intake_entries,
         .help = "also take gpu.task.enqueue from a JetStream work-queue stream (needs bus.nats.jetstream): "
                 "{stream, durable, filter, ack_wait, max_pending}; each message acked once committed"},
        {.key = "durability",
         .type = ORG_CFG_STRING,
         .default_value = "normal",
         .choices = ORG_CHOICES("normal", "full", "off"),
         .help = "normal: synchronous=NORMAL (survives a crash of agentd, a power cut may lose the last commits; "
                 "the fsync of each WAL checkpoint stalls the loop); full: synchronous=FULL (fsync per commit); "
                 "off: no fsync at all (survives a crash or kill of agentd; an OS crash or power cut may corrupt "
                 "the store), for the lowest dispatch latency"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "submit",
         .mutating = true,
         .args = "[--gpu N] [--timeout S] [--retries N] [--id ID] [--priority P] [--shell TEXT] [--watch true] -- "
                 "ARGV...",
         .help = "enqueue a task (type cmd by default); --watch answers with its result"},
        {.name = "status", .mutating = false, .args = "[ID]", .help = "one task, or the queue and the GPUs"},
        {.name = "list", .mutating = false, .args = "[--state S] [--limit N]", .help = "tasks, newest first"},
        {.name = "cancel",
         .mutating = true,
         .args = "ID",
         .help = "cancel a task (queued: at once; leased: via its worker)"},
        {.name = "watch", .mutating = false, .args = "ID", .help = "answers with the task's result once it is final"},
        ORG_VERBS_END,
};

/* ---- small helpers ---- */

uint64_t maestro_now(const maestro *m) {
        return m->host->now_realtime_us(m->ctx);
}

/* Every message carries a ts: the text of the last millisecond formatted is kept (a
 * busy turn stamps thousands of messages within one). */
void maestro_ts(uint64_t us, char *buf, size_t n) {
        static uint64_t last_ms = UINT64_MAX;
        static char last[64];
        if (us / 1000 != last_ms) {
                time_t s = (time_t)(us / MAESTRO_US);
                struct tm tm;
                gmtime_r(&s, &tm);
                snprintf(last, sizeof last, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
                         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(us % MAESTRO_US / 1000));
                last_ms = us / 1000;
        }
        snprintf(buf, n, "%s", last);
}

char *maestro_json_str(const char *s, size_t len) {
        json_t *j = json_stringn(s, len);
        char *out = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
        json_decref(j);
        return out;
}

static bool id_valid(const char *s) {
        size_t n = 0;
        for (; s[n]; n++) {
                char c = s[n];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-'))
                        return false;
        }
        /* a dot makes sub-tokens of gpu.task.state.<id>; an empty token is no subject */
        return n >= 1 && n <= MAESTRO_ID_MAX && s[0] != '.' && s[n - 1] != '.' && !strstr(s, "..");
}

/* ---- tasks in memory ---- */

static size_t hash_id(const char *s) {
        size_t h = 1469598103934665603ULL;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        return h;
}

maestro_task *maestro_find(const maestro *m, const char *id) {
        if (!m->hash_cap)
                return NULL;
        for (maestro_task *t = m->hash[hash_id(id) & (m->hash_cap - 1)]; t; t = t->hnext)
                if (strcmp(t->id, id) == 0)
                        return t;
        return NULL;
}

static int hash_grow(maestro *m) {
        size_t cap = m->hash_cap ? m->hash_cap * 2 : 1024;
        maestro_task **h = calloc(cap, sizeof(*h));
        if (!h)
                return -ENOMEM;
        for (size_t i = 0; i < m->hash_cap; i++)
                for (maestro_task *t = m->hash[i], *n; t; t = n) {
                        n = t->hnext;
                        size_t b = hash_id(t->id) & (cap - 1);
                        t->hnext = h[b];
                        h[b] = t;
                }
        free(m->hash);
        m->hash = h;
        m->hash_cap = cap;
        return 0;
}

static int hash_add(maestro *m, maestro_task *t) {
        if (m->n_tasks + 1 > m->hash_cap / 2 * 1 + m->hash_cap / 4) {
                int r = hash_grow(m);
                if (r < 0)
                        return r;
        }
        size_t b = hash_id(t->id) & (m->hash_cap - 1);
        t->hnext = m->hash[b];
        m->hash[b] = t;
        m->n_tasks++;
        return 0;
}

static void task_free(maestro_task *t) {
        if (!t)
                return;
        free(t->spec);
        free(t->reply);
        free(t->error);
        free(t->result);
        free(t);
}

/* Out of the hash and freed: only for a final task whose row is committed. */
void maestro_forget(maestro *m, maestro_task *t) {
        maestro_task **p = &m->hash[hash_id(t->id) & (m->hash_cap - 1)];
        while (*p && *p != t)
                p = &(*p)->hnext;
        if (*p)
                *p = t->hnext;
        m->n_tasks--;
        task_free(t);
}

static maestro_task *task_new(const char *id) {
        maestro_task *t = calloc(1, sizeof(*t));
        if (!t)
                return NULL;
        snprintf(t->id, sizeof t->id, "%s", id);
        t->pin = t->lease_gpu = t->last_gpu = -1;
        t->qpos = t->tpos = SIZE_MAX;
        return t;
}

/* ---- the per-turn batch ---- */

static void on_flush(org_ctx *ctx, uint64_t id, void *userdata);

/* The end of the turn: an eventfd made readable is served on the loop's next
 * iteration, right after the bus batch in hand (a 0 ms timer would carry the loop's
 * 1 ms of timer slack into every dispatch). A retry after a failed commit waits on a
 * timer. */
static void arm_flush(maestro *m, uint64_t ms) {
        if (m->in_flush)
                return;
        if (ms == 0 && m->wake_fd >= 0) {
                if (!m->wake_armed) {
                        uint64_t one = 1;
                        if (write(m->wake_fd, &one, sizeof one) == (ssize_t)sizeof one) {
                                m->wake_armed = true;
                                return;
                        }
                } else
                        return;
        }
        if (m->flush_timer)
                return;
        if (m->host->timer_add(m->ctx, ms, 0, on_flush, m, &m->flush_timer) < 0)
                m->flush_timer = 0;
}

void maestro_mark_dirty(maestro *m, maestro_task *t) {
        if (!t->dirty) {
                if (m->n_dirty == m->dirty_cap) {
                        size_t cap = m->dirty_cap ? m->dirty_cap * 2 : 256;
                        maestro_task **d = realloc(m->dirty, cap * sizeof(*d));
                        if (!d)
                                abort(); /* cannot remember an accepted change: no safe way on */
                        m->dirty = d;
                        m->dirty_cap = cap;
                }
                m->dirty[m->n_dirty++] = t;
                t->dirty = true;
        }
        arm_flush(m, 0);
}

static void out_push(maestro *m, const char *subject, char *data, maestro_out_kind kind) {
        if (!data)
                return;
        if (m->n_out == m->out_cap) {
                size_t cap = m->out_cap ? m->out_cap * 2 : 256;
                maestro_out *o = realloc(m->out, cap * sizeof(*o));
                if (!o) {
                        free(data);
                        return;
                }
                m->out = o;
                m->out_cap = cap;
        }
        char *s = strdup(subject);
        if (!s) {
                free(data);
                return;
        }
        m->out[m->n_out++] = (maestro_out){.kind = kind, .subject = s, .data = data};
        arm_flush(m, 0);
}

void maestro_emit(maestro *m, const char *subject, char *data) {
        out_push(m, subject, data, OUT_PUBLISH);
}

static void emit_reply(maestro *m, const char *reply, char *data) {
        if (reply)
                out_push(m, reply, data, OUT_REPLY);
        else
                free(data);
}

/* A JetStream submission is answered once this turn is committed. */
static void emit_ack(maestro *m, uint64_t token, org_ack_kind kind, uint64_t delay_ms) {
        if (!token)
                return;
        size_t before = m->n_out;
        out_push(m, "ack", strdup(""), OUT_ACK);
        if (m->n_out > before) {
                maestro_out *o = &m->out[m->n_out - 1];
                o->ack_token = token;
                o->ack = (int)kind;
                o->ack_delay_ms = delay_ms;
        }
}

void maestro_emit_state(maestro *m, const maestro_task *t, const char *extra_fmt, ...) {
        char extra[512] = "", ts[40], subject[MAESTRO_ID_MAX + 32];
        if (extra_fmt) {
                va_list ap;
                va_start(ap, extra_fmt);
                vsnprintf(extra, sizeof extra, extra_fmt, ap);
                va_end(ap);
        }
        maestro_ts(maestro_now(m), ts, sizeof ts);
        snprintf(subject, sizeof subject, "gpu.task.state.%s", t->id);
        char *data = NULL;
        if (asprintf(&data, "{\"ts\":\"%s\",\"task_id\":\"%s\",\"state\":\"%s\"%s}", ts, t->id,
                     maestro_state_name(t->state), extra) < 0)
                return;
        maestro_emit(m, subject, data);
}

/* A growing text buffer for the batch's JSON array. */
typedef struct buf {
        char *p;
        size_t n, cap;
        bool oom;
} buf;

static void buf_add(buf *b, const char *s, size_t len) {
        if (b->oom)
                return;
        if (b->n + len + 1 > b->cap) {
                size_t cap = b->cap ? b->cap : 4096;
                while (cap < b->n + len + 1)
                        cap *= 2;
                char *p = realloc(b->p, cap);
                if (!p) {
                        b->oom = true;
                        return;
                }
                b->p = p;
                b->cap = cap;
        }
        memcpy(b->p + b->n, s, len);
        b->n += len;
        b->p[b->n] = '\0';
}

static void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf *b, const char *fmt, ...) {
        char tmp[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= sizeof tmp) {
                b->oom = true;
                return;
        }
        buf_add(b, tmp, (size_t)n);
}

/* Numbers as text for the parameters. */
typedef struct numbuf {
        char p[MAESTRO_SQL_INSERT_COLUMNS][24];
        size_t n;
} numbuf;

static const char *num(numbuf *nb, bool has, long long v) {
        if (!has || nb->n == MAESTRO_SQL_INSERT_COLUMNS)
                return NULL;
        snprintf(nb->p[nb->n], sizeof nb->p[0], "%lld", v);
        return nb->p[nb->n++];
}

static void update_params(const maestro_task *t, uint64_t now, numbuf *nb, const char **p) {
        p[0] = t->id;
        p[1] = num(nb, true, (long long)now);
        p[2] = maestro_state_name(t->state);
        p[3] = num(nb, true, t->attempt);
        p[4] = num(nb, true, t->failures);
        p[5] = num(nb, t->lease_gpu >= 0, t->lease_gpu);
        p[6] = num(nb, t->last_gpu >= 0, t->last_gpu);
        p[7] = num(nb, t->lease_gpu >= 0, (long long)t->lease_expiry_us);
        p[8] = num(nb, t->state == TS_RETRY, (long long)t->next_try_us);
        p[9] = t->cancel_requested ? "1" : "0";
        p[10] = t->error;
        p[11] = t->result;
        p[12] = maestro_state_final(t->state) ? "1" : "0";
}

static void row_params(const maestro_task *t, uint64_t now, numbuf *nb, const char **p) {
        p[0] = t->id;
        p[1] = t->spec;
        p[2] = num(nb, t->pin >= 0, t->pin);
        p[3] = num(nb, true, t->priority);
        p[4] = num(nb, true, t->max_retries);
        p[5] = num(nb, true, (long long)t->timeout_ms);
        p[6] = num(nb, t->deadline_us != 0, (long long)t->deadline_us);
        p[7] = num(nb, true, (long long)t->seq);
        p[8] = num(nb, true, (long long)t->created_us);
        p[9] = num(nb, true, (long long)now);
        p[10] = maestro_state_name(t->state);
        p[11] = num(nb, true, t->attempt);
        p[12] = num(nb, true, t->failures);
        p[13] = num(nb, t->lease_gpu >= 0, t->lease_gpu);
        p[14] = num(nb, t->last_gpu >= 0, t->last_gpu);
        p[15] = num(nb, t->lease_gpu >= 0, (long long)t->lease_expiry_us);
        p[16] = num(nb, t->state == TS_RETRY, (long long)t->next_try_us);
        p[17] = t->cancel_requested ? "1" : "0";
        p[18] = t->error;
        p[19] = t->result;
        p[20] = maestro_state_final(t->state) ? "1" : "0";
}

static int commit(maestro *m) {
        if (m->n_dirty == 0)
                return 0;
        uint64_t now = maestro_now(m);
        const org_host *h = m->host;
        int r = h->store_exec(m->ctx, "BEGIN IMMEDIATE;", NULL, 0);
        if (r >= 0) {
                for (size_t i = 0; i < m->n_dirty && r >= 0; i++) {
                        const char *p[MAESTRO_SQL_INSERT_COLUMNS];
                        numbuf nb = {.n = 0};
                        maestro_task *t = m->dirty[i];
                        if (t->stored) {
                                update_params(t, now, &nb, p);
                                r = maestro_state_final(t->state)
                                            ? h->store_exec(m->ctx, MAESTRO_SQL_UPDATE, p, MAESTRO_SQL_UPDATE_COLUMNS)
                                            : h->store_exec(m->ctx, MAESTRO_SQL_UPDATE_OPEN, p,
                                                            MAESTRO_SQL_UPDATE_OPEN_COLUMNS);
                        } else {
                                row_params(t, now, &nb, p);
                                r = h->store_exec(m->ctx, MAESTRO_SQL_INSERT, p, MAESTRO_SQL_INSERT_COLUMNS);
                        }
                }
                if (r >= 0)
                        r = h->store_exec(m->ctx, "COMMIT;", NULL, 0);
                if (r < 0)
                        (void)h->store_exec(m->ctx, "ROLLBACK;", NULL, 0);
        }
        if (r < 0)
                return r;
        m->commits_total++;
        for (size_t i = 0; i < m->n_dirty; i++) {
                maestro_task *t = m->dirty[i];
                t->dirty = false;
                t->stored = true;
                if (maestro_state_final(t->state))
                        maestro_forget(m, t);
        }
        m->n_dirty = 0;
        return 0;
}

static void send_out(maestro *m) {
        for (size_t i = 0; i < m->n_out; i++) {
                maestro_out *o = &m->out[i];
                int r = o->kind == OUT_REPLY ? m->host->respond(m->ctx, o->subject, o->data, strlen(o->data))
                        : o->kind == OUT_ACK ? m->host->ack(m->ctx, o->ack_token, (org_ack_kind)o->ack, o->ack_delay_ms)
                                             : m->host->publish(m->ctx, o->subject, NULL, 0, o->data, strlen(o->data));
                if (r < 0)
                        m->host->log(m->ctx, ORG_LOG_WARNING, "cannot publish %s: %s", o->subject, strerror(-r));
                free(o->subject);
                free(o->data);
        }
        m->n_out = 0;
}

static void admit_incoming(maestro *m);

static void flush(maestro *m) {
        uint64_t t0 = m->host->now_monotonic_us(m->ctx);
        admit_incoming(m);
        uint64_t t1 = m->host->now_monotonic_us(m->ctx);
        m->in_flush = true;
        struct timespec c0, c1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        int r = commit(m);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        m->commit_cpu_us += (uint64_t)((c1.tv_sec - c0.tv_sec) * 1000000LL + (c1.tv_nsec - c0.tv_nsec) / 1000);
        m->in_flush = false;
        uint64_t t2 = m->host->now_monotonic_us(m->ctx);
        m->admit_us += t1 - t0;
        m->commit_us += t2 - t1;
        if (t2 - t1 > m->commit_max_us)
                m->commit_max_us = t2 - t1;
        if (r < 0) {
                /* nothing leaves before it is stored: replies and runs wait for the retry */
                m->commit_errors_total++;
                m->host->log(m->ctx, ORG_LOG_ERR, "cannot commit %zu task changes (retrying in 200 ms): %s", m->n_dirty,
                             strerror(-r));
                arm_flush(m, 200);
                return;
        }
        send_out(m);
        m->send_us += m->host->now_monotonic_us(m->ctx) - t2;
}

static void on_flush(org_ctx *ctx, uint64_t id, void *userdata) {
        maestro *m = userdata;
        m->flush_timer = 0;
        flush(m);
        maestro_rearm(m);
}

static void on_flush_io(org_ctx *ctx, uint64_t id, int fd, uint32_t revents, void *userdata) {
        maestro *m = userdata;
        uint64_t n;
        if (read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
                m->host->log(m->ctx, ORG_LOG_WARNING, "cannot read the flush eventfd: %m");
        m->wake_armed = false;
        flush(m);
        maestro_rearm(m);
}

/* ---- intake ---- */

/* ids match [A-Za-z0-9._-] and states are fixed words: only the error needs escaping. */
static char *reply_text(bool accepted, const char *id, const char *state, bool existing, const char *error) {
        char *err = error ? maestro_json_str(error, strlen(error)) : NULL, *s = NULL;
        if (asprintf(&s, "{\"accepted\":%s,\"task_id\":%s%s%s,\"state\":\"%s\",\"existing\":%s%s%s}",
                     accepted ? "true" : "false", id ? "\"" : "", id ? id : "null", id ? "\"" : "", state ? state : "",
                     existing ? "true" : "false", err ? ",\"error\":" : "", err ? err : "") < 0)
                s = NULL;
        free(err);
        return s;
}

typedef struct stored_row {
        bool found;
        char state[24];
        json_t *o;
} stored_row;

static int get_row(void *userdata, int n, const char *const *cols, const char *const *names) {
        stored_row *s = userdata;
        s->found = true;
        s->o = json_object();
        for (int i = 0; i < n && s->o; i++) {
                const char *c = cols[i];
                json_t *v = !c ? json_null() : NULL;
                if (c && (strcmp(names[i], "result") == 0 || strcmp(names[i], "spec") == 0)) {
                        json_error_t e;
                        v = json_loads(c, 0, &e);
                }
                if (!v && c) {
                        char *end;
                        errno = 0;
                        long long x = strtoll(c, &end, 10);
                        v = (!errno && *c && !*end && strcmp(names[i], "id") != 0) ? json_integer(x) : json_string(c);
                }
                json_object_set_new(s->o, strcmp(names[i], "id") == 0 ? "task_id" : names[i], v);
        }
        if (cols[1])
                snprintf(s->state, sizeof s->state, "%s", cols[1]);
        return 1;
}

/* The stored row of a task (any state) as JSON, or NULL. */
static json_t *stored(maestro *m, const char *id, char ret_state[24]) {
        stored_row s = {0};
        const char *p[] = {id};
        if (m->host->store_query(m->ctx, MAESTRO_SQL_GET, p, 1, get_row, &s) < 0 || !s.found) {
                json_decref(s.o);
                return NULL;
        }
        if (ret_state)
                memcpy(ret_state, s.state, 24);
        return s.o;
}

static int parse_duration_ms(json_t *v, uint64_t *ret) {
        if (json_is_number(v)) {
                double d = json_number_value(v);
                if (!(d > 0) || d > 7 * 86400.0)
                        return -EINVAL;
                *ret = (uint64_t)(d * 1000);
                return 0;
        }
        if (!json_is_string(v))
                return -EINVAL;
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        double d = strtod(s, &end);
        if (errno || end == s || !(d > 0))
                return -EINVAL;
        double mul = strcmp(end, "ms") == 0             ? 0.001
                     : (!*end || strcmp(end, "s") == 0) ? 1
                     : strcmp(end, "m") == 0            ? 60
                     : strcmp(end, "h") == 0            ? 3600
                     : strcmp(end, "d") == 0            ? 86400
                                                        : -1;
        if (mul < 0 || d * mul > 7 * 86400.0)
                return -EINVAL;
        *ret = (uint64_t)(d * mul * 1000);
        return 0;
}

static int parse_rfc3339(const char *s, uint64_t *ret_us) {
        struct tm tm = {0};
        const char *e = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!e)
                return -EINVAL;
        if (*e == '.')
                for (e++; *e >= '0' && *e <= '9'; e++)
                        ;
        if (strcmp(e, "Z") != 0 && strcmp(e, "+00:00") != 0)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t < 0)
                return -EINVAL;
        *ret_us = (uint64_t)t * MAESTRO_US;
        return 0;
}

/* Builds a task from a submission; NULL with *ret_why on a bad one. */
static maestro_task *task_from_json(maestro *m, json_t *o, const char **ret_why, char ret_id[MAESTRO_ID_MAX + 1]) {
        static const char *const known[] = {"ts",      "task_id", "type",        "cmd",      "shell",    "cwd", "env",
                                            "timeout", "gpu",     "max_retries", "deadline", "priority", NULL};
        *ret_why = NULL;
        if (!json_is_object(o)) {
                *ret_why = "bad task: not a JSON object";
                return NULL;
        }
        json_t *idv = json_object_get(o, "task_id");
        char id[MAESTRO_ID_MAX + 1];
        if (idv) {
                if (!json_is_string(idv) || !id_valid(json_string_value(idv))) {
                        *ret_why = "bad task: task_id must match [A-Za-z0-9._-]{1,128}";
                        return NULL;
                }
                snprintf(id, sizeof id, "%s", json_string_value(idv));
        } else
                snprintf(id, sizeof id, "t%" PRIx64 "-%" PRIu64, maestro_now(m), m->next_seq + 1);
        memcpy(ret_id, id, sizeof id);
        const char *key;
        json_t *v;
        json_object_foreach (o, key, v) {
                bool ok = false;
                for (size_t i = 0; known[i]; i++)
                        ok = ok || strcmp(key, known[i]) == 0;
                if (!ok) {
                        *ret_why = "bad task: unknown key";
                        return NULL;
                }
        }
        const char *type = json_string_value(json_object_get(o, "type"));
        if (json_object_get(o, "type") && !type)
                return *ret_why = "bad task: type must be \"cmd\" or \"shell\"", NULL;
        if (!type)
                type = json_object_get(o, "shell") && !json_object_get(o, "cmd") ? "shell" : "cmd";
        json_t *spec = json_object();
        if (strcmp(type, "cmd") == 0) {
                json_t *cmd = json_object_get(o, "cmd");
                size_t i;
                if (!json_is_array(cmd) || json_array_size(cmd) == 0)
                        *ret_why = "bad task: cmd must be a non-empty array of strings";
                json_array_foreach (cmd, i, v)
                        if (!json_is_string(v) || !*json_string_value(v))
                                *ret_why = "bad task: cmd must be a non-empty array of strings";
                if (!*ret_why)
                        json_object_set(spec, "cmd", cmd);
        } else if (strcmp(type, "shell") == 0) {
                json_t *sh = json_object_get(o, "shell");
                if (!m->cfg.allow_shell)
                        *ret_why = "bad task: type shell is not allowed here (allow_shell: false)";
                else if (!json_is_string(sh) || !*json_string_value(sh))
                        *ret_why = "bad task: shell must be a non-empty string";
                else
                        json_object_set(spec, "shell", sh);
        } else
                *ret_why = "bad task: type must be \"cmd\" or \"shell\"";
        json_object_set_new(spec, "type", json_string(type));
        json_t *cwd = json_object_get(o, "cwd"), *env = json_object_get(o, "env");
        if (cwd && !json_is_string(cwd))
                *ret_why = "bad task: cwd must be a string";
        else if (cwd)
                json_object_set(spec, "cwd", cwd);
        if (env) {
                if (!json_is_object(env))
                        *ret_why = "bad task: env must be an object of strings";
                json_object_foreach (env, key, v)
                        if (!json_is_string(v))
                                *ret_why = "bad task: env must be an object of strings";
                json_object_set(spec, "env", env);
        }
        uint64_t timeout_ms = m->cfg.default_timeout_ms;
        if (json_object_get(o, "timeout") && parse_duration_ms(json_object_get(o, "timeout"), &timeout_ms) < 0)
                *ret_why = "bad task: timeout must be seconds (> 0, at most 7 days)";
        json_object_set_new(spec, "timeout", json_real((double)timeout_ms / 1000.0));
        int pin = -1;
        json_t *g = json_object_get(o, "gpu");
        if (g && !json_is_null(g)) {
                long long gi = -1;
                if (json_is_integer(g))
                        gi = json_integer_value(g);
                else if (json_is_string(g)) {
                        const char *s = json_string_value(g);
                        char *end;
                        if (strncmp(s, "gpu", 3) == 0)
                                s += 3;
                        errno = 0;
                        gi = *s ? strtoll(s, &end, 10) : -1;
                        if (errno || *end)
                                gi = -1;
                }
                if (gi < 0 || gi >= MAESTRO_MAX_GPUS)
                        *ret_why = "bad task: gpu must be an index 0..63";
                pin = (int)gi;
        }
        int64_t max_retries = m->cfg.max_retries, priority = 0;
        json_t *mr = json_object_get(o, "max_retries"), *pr = json_object_get(o, "priority");
        if (mr && (!json_is_integer(mr) || json_integer_value(mr) < 0 || json_integer_value(mr) > 100))
                *ret_why = "bad task: max_retries must be an integer 0..100";
        else if (mr)
                max_retries = json_integer_value(mr);
        if (pr && (!json_is_integer(pr) || json_integer_value(pr) < -1000000 || json_integer_value(pr) > 1000000))
                *ret_why = "bad task: priority must be an integer";
        else if (pr)
                priority = json_integer_value(pr);
        uint64_t deadline = 0, now = maestro_now(m);
        json_t *dl = json_object_get(o, "deadline");
        if (dl && !json_is_null(dl)) {
                uint64_t ms;
                if (json_is_string(dl) && parse_rfc3339(json_string_value(dl), &deadline) == 0)
                        ;
                else if (parse_duration_ms(dl, &ms) == 0)
                        deadline = now + ms * 1000;
                else
                        *ret_why = "bad task: deadline must be seconds from now or an RFC 3339 UTC time";
        }
        if (*ret_why) {
                json_decref(spec);
                return NULL;
        }
        char *spec_text = json_dumps(spec, JSON_COMPACT);
        json_decref(spec);
        maestro_task *t = spec_text ? task_new(id) : NULL;
        if (!t) {
                free(spec_text);
                *ret_why = "out of memory";
                return NULL;
        }
        t->spec = spec_text;
        t->pin = pin;
        t->priority = priority;
        t->max_retries = max_retries;
        t->timeout_ms = timeout_ms;
        t->deadline_us = deadline;
        t->created_us = now;
        return t;
}

static void add_waiter(maestro *m, const char *id, const char *reply) {
        maestro_waiter *w = calloc(1, sizeof(*w));
        if (!w || !(w->reply = strdup(reply))) {
                free(w);
                return;
        }
        snprintf(w->id, sizeof w->id, "%s", id);
        w->m = m;
        w->next = m->waiters;
        m->waiters = w;
        maestro_task *cur = maestro_find(m, id);
        if (!cur || maestro_state_final(cur->state))
                maestro_waiters_notify(m, cur);
}

/* What a submission gets: accepted (new or existing), or refused with why. A refused
 * publish without reply subject is said on gpu.task.state.<id> when the id is known.
 * With watch, the accepted reply is replaced by the result once final. A new task
 * waits in `incoming` until the turn's flush, which checks all of them against the
 * store in one query (an id seen before is the existing task) and admits the rest. */
static void intake(maestro *m, const char *data, size_t len, const char *reply, bool watch, uint64_t ack_token) {
        json_error_t e;
        const char *why = NULL;
        char id[MAESTRO_ID_MAX + 1] = "";
        json_t *o = NULL;
        maestro_task *t = NULL;
        bool client_id = false;
        if ((int64_t)len > m->cfg.max_task_bytes)
                why = "bad task: too large (max_task_bytes)";
        else if (!(o = json_loadb(data, len, 0, &e)))
                why = "bad task: not JSON";
        if (!why) {
                const char *sid = json_string_value(json_object_get(o, "task_id"));
                maestro_task *old = sid && id_valid(sid) ? maestro_find(m, sid) : NULL;
                if (old) {
                        snprintf(id, sizeof id, "%s", sid);
                        json_decref(o);
                        emit_ack(m, ack_token, ORG_ACK, 0);
                        if (watch && reply)
                                add_waiter(m, id, reply);
                        else
                                emit_reply(m, reply, reply_text(true, id, maestro_state_name(old->state), true, NULL));
                        return;
                }
                client_id = sid != NULL;
                t = task_from_json(m, o, &why, id);
        }
        if (!why && m->n_queued >= (size_t)m->cfg.max_queue)
                why = "queue full";
        json_decref(o);
        if (!why && (m->n_incoming == m->incoming_cap)) {
                size_t cap = m->incoming_cap ? m->incoming_cap * 2 : 256;
                maestro_task **v = realloc(m->incoming, cap * sizeof(*v));
                if (!v)
                        why = "out of memory";
                else {
                        m->incoming = v;
                        m->incoming_cap = cap;
                }
        }
        if (!why && ((reply && !(t->reply = strdup(reply))) || hash_add(m, t) < 0))
                why = "out of memory";
        if (why && ack_token && strcmp(why, "queue full") == 0) {
                /* durable: it stays in the stream and comes back, not refused */
                task_free(t);
                emit_ack(m, ack_token, ORG_NAK, 1000);
                return;
        }
        if (why) {
                task_free(t);
                m->rejected_total++;
                emit_ack(m, ack_token, ORG_TERM, 0); /* it will never be a good task */
                char *r = reply_text(false, id[0] ? id : NULL, "rejected", false, why);
                if (reply)
                        emit_reply(m, reply, r);
                else {
                        free(r);
                        if (id[0]) {
                                maestro_task tmp = {.state = TS_REJECTED};
                                snprintf(tmp.id, sizeof tmp.id, "%s", id);
                                char *w = maestro_json_str(why, strlen(why));
                                maestro_emit_state(m, &tmp, ",\"error\":%s", w ? w : "null");
                                free(w);
                        }
                }
                m->host->log(m->ctx, ORG_LOG_INFO, "task %s rejected: %s", id[0] ? id : "(no id)", why);
                return;
        }
        t->state = TS_ENQUEUED;
        t->ack_token = ack_token;
        t->incoming = true;
        t->client_id = client_id;
        t->watch = watch;
        t->enqueue_mono_us = m->host->now_monotonic_us(m->ctx);
        m->n_queued++;
        m->incoming[m->n_incoming++] = t;
        arm_flush(m, 0);
}

static int known_row(void *userdata, int n, const char *const *cols, const char *const *names) {
        maestro *m = userdata;
        maestro_task *t = n >= 2 && cols[0] ? maestro_find(m, cols[0]) : NULL;
        if (t && t->incoming && !t->dup) {
                t->dup = true;
                snprintf(t->dup_state, sizeof t->dup_state, "%s", cols[1] ? cols[1] : "");
        }
        (void)names;
        return 0;
}

/* The turn's new submissions: one query for the ids seen before, then the others are
 * accepted (a row in this turn's commit, the reply after it) and dispatched. */
static void admit_incoming(maestro *m) {
        if (m->n_incoming == 0)
                return;
        buf b = {0};
        buf_add(&b, "[", 1);
        size_t n_ids = 0;
        for (size_t i = 0; i < m->n_incoming; i++)
                if (m->incoming[i]->client_id) {
                        buf_printf(&b, "%s\"%s\"", n_ids++ ? "," : "", m->incoming[i]->id);
                }
        buf_add(&b, "]", 1);
        if (n_ids && !b.oom) {
                const char *p[] = {b.p};
                int r = m->host->store_query(m->ctx, MAESTRO_SQL_KNOWN, p, 1, known_row, m);
                if (r < 0)
                        m->host->log(m->ctx, ORG_LOG_WARNING, "cannot look submitted ids up: %s", strerror(-r));
        }
        free(b.p);
        for (size_t i = 0; i < m->n_incoming; i++) {
                maestro_task *t = m->incoming[i];
                t->incoming = false;
                emit_ack(m, t->ack_token, ORG_ACK, 0); /* sent after this turn's commit */
                t->ack_token = 0;
                emit_ack(m, t->ack_token, ORG_ACK, 0); /* sent after this turn's commit */
                t->ack_token = 0;
                if (t->dup) {
                        /* submitted before (and since forgotten in memory): the existing task */
                        char id[MAESTRO_ID_MAX + 1];
                        snprintf(id, sizeof id, "%s", t->id);
                        char *reply = t->reply, st[24];
                        snprintf(st, sizeof st, "%s", t->dup_state);
                        bool watch = t->watch;
                        t->reply = NULL;
                        m->n_queued--;
                        maestro_forget(m, t);
                        if (reply && watch)
                                add_waiter(m, id, reply);
                        else
                                emit_reply(m, reply, reply_text(true, id, st, true, NULL));
                        free(reply);
                        m->incoming[i] = NULL;
                        continue;
                }
                t->seq = ++m->next_seq;
                m->accepted_total++;
                maestro_mark_dirty(m, t);
                if (!t->watch)
                        emit_reply(m, t->reply, reply_text(true, t->id, "enqueued", false, NULL));
                maestro_emit_state(m, t, ",\"qsize\":%zu", m->n_queued);
                maestro_queue(m, t);
        }
        maestro_dispatch(m);
        for (size_t i = 0; i < m->n_incoming; i++) {
                maestro_task *t = m->incoming[i];
                if (!t)
                        continue;
                if (t->watch && t->reply)
                        add_waiter(m, t->id, t->reply);
                free(t->reply);
                t->reply = NULL;
                if (!maestro_state_final(t->state))
                        maestro_note_waiting(m, t);
        }
        m->n_incoming = 0;
}

/* ---- watchers ---- */

static char *final_text(maestro *m, const char *id, const maestro_task *t) {
        if (t && t->result)
                return strdup(t->result);
        char st[24] = "";
        json_t *row = stored(m, id, st);
        json_t *res = json_object_get(row, "result");
        char *s = NULL;
        if (json_is_object(res))
                s = json_dumps(res, JSON_COMPACT);
        else if (row)
                s = json_dumps(row, JSON_COMPACT);
        json_decref(row);
        return s;
}

/* Answers every watcher of a final task (t may be NULL: look it up in the store). */
void maestro_waiters_notify(maestro *m, const maestro_task *t) {
        for (maestro_waiter **p = &m->waiters; *p;) {
                maestro_waiter *w = *p;
                const maestro_task *cur = t && strcmp(t->id, w->id) == 0 ? t : maestro_find(m, w->id);
                if ((t && cur != t) || (cur && !maestro_state_final(cur->state))) {
                        p = &w->next;
                        continue;
                }
                char *text = final_text(m, w->id, cur);
                emit_reply(m, w->reply, text ? text : strdup("{\"error\":\"unknown task\"}"));
                *p = w->next;
                free(w->reply);
                free(w);
        }
}

/* ---- verbs ---- */

static void respond_json(maestro *m, const org_msg *req, json_t *o) {
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!s)
                s = strdup("{\"error\":\"out of memory\"}");
        if (s)
                m->host->respond(m->ctx, req->reply, s, strlen(s));
        free(s);
}

static json_t *verb_args(const org_msg *req) {
        json_error_t e;
        json_t *a = req->len ? json_loadb(req->data, req->len, JSON_DECODE_ANY, &e) : NULL;
        return json_is_object(a) ? a : (json_decref(a), json_object());
}

/* The first word of agentctl's words, or the "id" key. */
static const char *arg_id(json_t *a) {
        const char *id = json_string_value(json_object_get(a, "id"));
        return id ? id : json_string_value(json_array_get(json_object_get(a, "args"), 0));
}

static json_t *word_string(json_t *v) {
        if (json_is_string(v))
                return json_incref(v);
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        json_t *r = s ? json_string(s) : NULL;
        free(s);
        return r;
}

static int verb_submit(maestro *m, const org_msg *req) {
        json_t *a = verb_args(req), *task = json_object();
        json_t *words = json_object_get(a, "args"), *cmd = json_array();
        size_t i;
        json_t *v;
        json_array_foreach (words, i, v) {
                if (i == 0 && json_is_string(v) && strcmp(json_string_value(v), "--") == 0)
                        continue;
                json_array_append_new(cmd, word_string(v));
        }
        if (json_object_get(a, "cmd"))
                json_object_set(task, "cmd", json_object_get(a, "cmd"));
        else if (json_array_size(cmd))
                json_object_set(task, "cmd", cmd);
        json_decref(cmd);
        static const char *const map[][2] = {
                {"gpu", "gpu"},    {"timeout", "timeout"}, {"retries", "max_retries"}, {"max_retries", "max_retries"},
                {"id", "task_id"}, {"task_id", "task_id"}, {"priority", "priority"},   {"shell", "shell"},
                {"cwd", "cwd"},    {"env", "env"},         {"deadline", "deadline"},   {"type", "type"}};
        for (i = 0; i < sizeof map / sizeof map[0]; i++) {
                json_t *x = json_object_get(a, map[i][0]);
                if (!x)
                        continue;
                if (strcmp(map[i][1], "task_id") == 0 || strcmp(map[i][1], "shell") == 0)
                        x = word_string(x);
                else
                        json_incref(x);
                json_object_set_new(task, map[i][1], x);
        }
        if (json_object_get(task, "shell") && !json_object_get(task, "type"))
                json_object_set_new(task, "type", json_string("shell"));
        bool watch = json_is_true(json_object_get(a, "watch"));
        char *text = json_dumps(task, JSON_COMPACT);
        json_decref(task);
        json_decref(a);
        if (!text)
                return -ENOMEM;
        intake(m, text, strlen(text), req->reply, watch, 0);
        free(text);
        return 0;
}

static json_t *task_json(const maestro_task *t) {
        return json_pack("{s:s, s:s, s:o, s:I, s:I, s:I, s:o, s:o, s:s?, s:b}", "task_id", t->id, "state",
                         maestro_state_name(t->state), "pin", t->pin >= 0 ? json_integer(t->pin) : json_null(),
                         "priority", (json_int_t)t->priority, "attempt", (json_int_t)t->attempt, "failures",
                         (json_int_t)t->failures, "gpu", t->lease_gpu >= 0 ? json_integer(t->lease_gpu) : json_null(),
                         "last_gpu", t->last_gpu >= 0 ? json_integer(t->last_gpu) : json_null(), "last_error", t->error,
                         "cancel_requested", t->cancel_requested);
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static json_t *latency_json(const maestro *m) {
        size_t n = m->n_lat < sizeof m->lat / sizeof m->lat[0] ? m->n_lat : sizeof m->lat / sizeof m->lat[0];
        if (!n)
                return json_null();
        uint64_t *v = malloc(n * sizeof(*v));
        if (!v)
                return json_null();
        memcpy(v, m->lat, n * sizeof(*v));
        qsort(v, n, sizeof(*v), cmp_u64);
        json_t *o = json_pack("{s:I, s:f, s:f, s:f}", "samples", (json_int_t)n, "p50_ms", (double)v[n / 2] / 1000.0,
                              "p99_ms", (double)v[n * 99 / 100] / 1000.0, "max_ms", (double)v[n - 1] / 1000.0);
        free(v);
        return o;
}

static json_t *overview_json(maestro *m) {
        uint64_t now = maestro_now(m);
        json_t *gpus = json_array();
        for (int g = 0; g < MAESTRO_MAX_GPUS; g++) {
                const maestro_gpu *u = &m->gpus[g];
                if (!u->seen)
                        continue;
                const char *why = NULL;
                bool ok = maestro_gpu_eligible(m, g, now, &why);
                json_array_append_new(gpus, json_pack("{s:i, s:s, s:s, s:b, s:s?, s:f, s:I, s:I, s:o, s:o}", "gpu", g,
                                                      "pci", u->pci, "state", u->state, "eligible", ok, "why", why,
                                                      "score", maestro_gpu_score(m, g, now), "inflight",
                                                      (json_int_t)u->inflight, "dispatched", (json_int_t)u->dispatched,
                                                      "busy", u->has_busy ? json_real(u->busy) : json_null(), "temp_c",
                                                      u->has_temp ? json_real(u->temp) : json_null()));
        }
        return json_pack(
                "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o}", "gpus_alive",
                (json_int_t)maestro_gpus_alive(m, now), "queued", (json_int_t)m->n_queued, "inflight",
                (json_int_t)m->n_inflight, "accepted_total", (json_int_t)m->accepted_total, "rejected_total",
                (json_int_t)m->rejected_total, "dispatched_total", (json_int_t)m->dispatched_total, "done_total",
                (json_int_t)m->done_total, "failed_total", (json_int_t)m->failed_total, "cancelled_total",
                (json_int_t)m->cancelled_total, "retries_total", (json_int_t)m->retries_total, "lease_expiries_total",
                (json_int_t)m->lease_expiries_total, "stale_results_total", (json_int_t)m->stale_total, "lost_total",
                (json_int_t)m->lost_total, "replayed_total", (json_int_t)m->replayed_total, "commits_total",
                (json_int_t)m->commits_total, "dispatch_latency", latency_json(m), "gpus", gpus, "flush_ms",
                json_pack("{s:f, s:f, s:f, s:f, s:f}", "admit", (double)m->admit_us / 1000.0, "commit_cpu",
                          (double)m->commit_cpu_us / 1000.0, "commit", (double)m->commit_us / 1000.0, "commit_max",
                          (double)m->commit_max_us / 1000.0, "send", (double)m->send_us / 1000.0));
}

static int list_row(void *userdata, int n, const char *const *cols, const char *const *names) {
        stored_row s = {0};
        get_row(&s, n, cols, names);
        json_array_append_new(userdata, s.o);
        return 0;
}

static int maestro_call(void *state, const char *verb, const org_msg *req) {
        maestro *m = state;
        if (strcmp(verb, "submit") == 0)
                return verb_submit(m, req);
        json_t *a = verb_args(req);
        const char *id = arg_id(a);
        int r = 0;
        if (strcmp(verb, "status") == 0) {
                if (!id)
                        respond_json(m, req, overview_json(m));
                else {
                        maestro_task *t = maestro_find(m, id);
                        json_t *row = stored(m, id, NULL);
                        if (t) {
                                json_t *o = task_json(t);
                                if (row)
                                        json_object_set(o, "stored", row);
                                respond_json(m, req, o);
                        } else if (row)
                                respond_json(m, req, json_incref(row));
                        else
                                respond_json(m, req, json_pack("{s:s, s:s}", "task_id", id, "error", "unknown task"));
                        json_decref(row);
                }
        } else if (strcmp(verb, "list") == 0) {
                const char *st = json_string_value(json_object_get(a, "state"));
                json_t *lim = json_object_get(a, "limit");
                char limit[24];
                snprintf(limit, sizeof limit, "%lld",
                         json_is_integer(lim) ? (long long)json_integer_value(lim) : 100LL);
                const char *p[] = {st, limit};
                json_t *rows = json_array();
                r = m->host->store_query(m->ctx, MAESTRO_SQL_LIST, p, 2, list_row, rows);
                if (r < 0) {
                        json_decref(rows);
                        respond_json(m, req, json_pack("{s:s}", "error", strerror(-r)));
                        r = 0;
                } else
                        respond_json(
                                m, req,
                                json_pack("{s:I, s:o}", "count", (json_int_t)json_array_size(rows), "tasks", rows));
        } else if (strcmp(verb, "cancel") == 0) {
                maestro_task *t = id ? maestro_find(m, id) : NULL;
                if (!t) {
                        char st[24] = "";
                        json_t *row = id ? stored(m, id, st) : NULL;
                        respond_json(m, req,
                                     json_pack("{s:s?, s:s}", "task_id", id, "error",
                                               row ? "already final" : "unknown task"));
                        json_decref(row);
                } else {
                        int c = maestro_cancel(m, t);
                        respond_json(m, req,
                                     json_pack("{s:s, s:s, s:b}", "task_id", t->id, "state",
                                               c > 0 ? "cancelling" : maestro_state_name(t->state), "pending", c > 0));
                        maestro_dispatch(m);
                        maestro_rearm(m);
                }
        } else if (strcmp(verb, "watch") == 0) {
                if (!id)
                        respond_json(m, req, json_pack("{s:s}", "error", "watch needs a task id"));
                else {
                        char *copy = strdup(req->reply ? req->reply : "");
                        maestro_waiter *w = copy ? calloc(1, sizeof(*w)) : NULL;
                        if (!w) {
                                free(copy);
                                r = -ENOMEM;
                        } else {
                                snprintf(w->id, sizeof w->id, "%s", id);
                                w->reply = copy;
                                w->m = m;
                                w->next = m->waiters;
                                m->waiters = w;
                                maestro_task *t = maestro_find(m, id);
                                /* final (or only in the store): answered from the store at once */
                                if (!t || maestro_state_final(t->state)) {
                                        maestro_waiters_notify(m, t);
                                        flush(m);
                                }
                        }
                }
        } else
                r = -EOPNOTSUPP;
        json_decref(a);
        return r;
}

/* ---- bus ---- */

static int maestro_handle(void *state, const org_msg *msg) {
        maestro *m = state;
        const char *s = msg->subject;
        if (msg->ack_token)
                intake(m, msg->data, msg->len, NULL, false, msg->ack_token);
        else if (strcmp(s, ENQUEUE_SUBJECT) == 0)
                intake(m, msg->data, msg->len, msg->reply, false, 0);
        else if (strcmp(s, "gpu.worker.heartbeat") == 0)
                maestro_on_heartbeat(m, msg->data, msg->len);
        else if (strcmp(s, "gpu.worker.metrics") == 0)
                maestro_on_metrics(m, msg->data, msg->len);
        else if (strcmp(s, "gpu.task.running") == 0)
                maestro_on_result(m, "running", msg->data, msg->len);
        else if (strcmp(s, "gpu.task.done") == 0)
                maestro_on_result(m, "done", msg->data, msg->len);
        else if (strcmp(s, "gpu.task.err") == 0)
                maestro_on_result(m, "err", msg->data, msg->len);
        maestro_rearm(m);
        return 0;
}

static void publish_heartbeat(maestro *m) {
        char ts[40], *data = NULL;
        uint64_t now = maestro_now(m);
        maestro_ts(now, ts, sizeof ts);
        size_t alive = maestro_gpus_alive(m, now);
        if (asprintf(&data,
                     "{\"ts\":\"%s\",\"gpus_alive\":%zu,\"queued\":%zu,\"inflight\":%zu,\"done_total\":%" PRIu64
                     ",\"failed_total\":%" PRIu64 "}",
                     ts, alive, m->n_queued, m->n_inflight, m->done_total, m->failed_total) >= 0) {
                m->host->publish(m->ctx, "maestro.heartbeat", NULL, 0, data, strlen(data));
                free(data);
        }
        const org_host *h = m->host;
        h->metric_set(m->ctx, "maestro_queued", ORG_METRIC_GAUGE, (double)m->n_queued, "tasks not yet final");
        h->metric_set(m->ctx, "maestro_inflight", ORG_METRIC_GAUGE, (double)m->n_inflight, "tasks leased to a GPU");
        h->metric_set(m->ctx, "maestro_gpus_alive", ORG_METRIC_GAUGE, (double)alive, "eligible GPUs");
        h->metric_set(m->ctx, "maestro_accepted_total", ORG_METRIC_COUNTER, (double)m->accepted_total,
                      "tasks accepted");
        h->metric_set(m->ctx, "maestro_rejected_total", ORG_METRIC_COUNTER, (double)m->rejected_total,
                      "submissions refused");
        h->metric_set(m->ctx, "maestro_dispatched_total", ORG_METRIC_COUNTER, (double)m->dispatched_total,
                      "leases handed out");
        h->metric_set(m->ctx, "maestro_done_total", ORG_METRIC_COUNTER, (double)m->done_total, "tasks done");
        h->metric_set(m->ctx, "maestro_failed_total", ORG_METRIC_COUNTER, (double)m->failed_total, "tasks failed");
        h->metric_set(m->ctx, "maestro_retries_total", ORG_METRIC_COUNTER, (double)m->retries_total,
                      "retries scheduled");
        h->metric_set(m->ctx, "maestro_lease_expiries_total", ORG_METRIC_COUNTER, (double)m->lease_expiries_total,
                      "leases that ended without a result");
        h->metric_set(m->ctx, "maestro_stale_results_total", ORG_METRIC_COUNTER, (double)m->stale_total,
                      "running/done/err of an older attempt or another GPU, ignored");
        h->metric_set(m->ctx, "maestro_lost_total", ORG_METRIC_COUNTER, (double)m->lost_total,
                      "running tasks a worker's idle heartbeat showed lost (retried before their lease ended)");
        h->metric_set(m->ctx, "maestro_replayed_total", ORG_METRIC_COUNTER, (double)m->replayed_total,
                      "tasks finished by a done a worker answered from its store (run once, before)");
        h->metric_set(m->ctx, "maestro_commit_errors_total", ORG_METRIC_COUNTER, (double)m->commit_errors_total,
                      "store commits that failed (retried)");
}

static void prune(maestro *m) {
        uint64_t now = maestro_now(m);
        if (now < m->cfg.keep_final_ms * 1000)
                return;
        char before[24];
        snprintf(before, sizeof before, "%" PRIu64, now - m->cfg.keep_final_ms * 1000);
        const char *p[] = {before, "5000"};
        int r = m->host->store_exec(m->ctx, MAESTRO_SQL_PRUNE, p, 2);
        if (r < 0)
                m->host->log(m->ctx, ORG_LOG_WARNING, "cannot prune old tasks: %s", strerror(-r));
}

static void on_heartbeat(org_ctx *ctx, uint64_t id, void *userdata) {
        maestro *m = userdata;
        publish_heartbeat(m);
        /* every keep_final / 10 (at most 10 min), between batches, never inside one */
        uint64_t now = maestro_now(m), every = m->cfg.keep_final_ms * 100;
        if (every > 600 * MAESTRO_US)
                every = 600 * MAESTRO_US;
        if (!m->flush_timer && !m->wake_armed && (!m->last_prune_us || now >= m->last_prune_us + every)) {
                m->last_prune_us = now;
                prune(m);
        }
        /* a GPU whose heartbeat went stale frees nothing, but one that became eligible
         * again by time alone (metrics aging out) may take work */
        maestro_dispatch(m);
        maestro_rearm(m);
}

/* ---- init: config, store, recovery ---- */

static int load_config(maestro *m) {
        const org_host *h = m->host;
        int64_t v;
        double d;
        bool b;
        const char *s;
#define DUR(key, field)                                                                                                \
        do {                                                                                                           \
                if (h->config_int(m->ctx, key, &v) == 0)                                                               \
                        field = (uint64_t)v;                                                                           \
        } while (0)
        DUR("heartbeat_ttl", m->cfg.heartbeat_ttl_us);
        DUR("metrics_ttl", m->cfg.metrics_ttl_us);
        m->cfg.heartbeat_ttl_us *= 1000;
        m->cfg.metrics_ttl_us *= 1000;
        DUR("retry_backoff", m->cfg.retry_backoff_ms);
        DUR("default_timeout", m->cfg.default_timeout_ms);
        DUR("lease_grace", m->cfg.lease_grace_ms);
        DUR("idle_grace", m->cfg.idle_grace_ms);
        DUR("heartbeat_interval", m->cfg.heartbeat_ms);
        DUR("keep_final", m->cfg.keep_final_ms);
#undef DUR
        if (h->config_double(m->ctx, "max_temp", &d) == 0)
                m->cfg.max_temp = d;
        if (h->config_double(m->ctx, "max_busy", &d) == 0)
                m->cfg.max_busy = d;
        if (h->config_double(m->ctx, "inflight_weight", &d) == 0)
                m->cfg.inflight_weight = d;
        if (h->config_int(m->ctx, "max_inflight", &v) == 0 && v >= 1)
                m->cfg.max_inflight = v;
        if (h->config_int(m->ctx, "max_retries", &v) == 0 && v >= 0)
                m->cfg.max_retries = v;
        if (h->config_int(m->ctx, "max_queue", &v) == 0 && v >= 1)
                m->cfg.max_queue = v;
        if (h->config_int(m->ctx, "max_task_bytes", &v) == 0 && v >= 256)
                m->cfg.max_task_bytes = v;
        if (h->config_bool(m->ctx, "allow_shell", &b) == 0)
                m->cfg.allow_shell = b;
        if (h->config_string(m->ctx, "intake.stream", &s) == 0 && s && *s) {
                m->cfg.intake_stream = s;
                m->cfg.intake_durable = "MAESTRO_ENQ";
                m->cfg.intake_filter = ENQUEUE_SUBJECT;
                m->cfg.intake_ack_wait_ms = 60000;
                m->cfg.intake_max_pending = 256;
                if (h->config_string(m->ctx, "intake.durable", &s) == 0 && s)
                        m->cfg.intake_durable = s;
                if (h->config_string(m->ctx, "intake.filter", &s) == 0 && s)
                        m->cfg.intake_filter = s;
                if (h->config_int(m->ctx, "intake.ack_wait", &v) == 0 && v > 0)
                        m->cfg.intake_ack_wait_ms = (uint64_t)v;
                if (h->config_int(m->ctx, "intake.max_pending", &v) == 0 && v > 0)
                        m->cfg.intake_max_pending = v;
        }
        if (h->config_string(m->ctx, "durability", &s) == 0 && s) {
                m->cfg.durability_full = strcmp(s, "full") == 0;
                m->cfg.durability_off = strcmp(s, "off") == 0;
        }
        return 0;
}

static maestro_state state_from_name(const char *s) {
        for (int i = 0; i < TS__COUNT; i++)
                if (s && strcmp(s, maestro_state_name((maestro_state)i)) == 0)
                        return (maestro_state)i;
        return TS_ENQUEUED;
}

static uint64_t col_u64(const char *c) {
        return c ? strtoull(c, NULL, 10) : 0;
}
static int64_t col_i64(const char *c, int64_t dflt) {
        return c ? strtoll(c, NULL, 10) : dflt;
}

static int recover_row(void *userdata, int n, const char *const *c, const char *const *names) {
        maestro *m = userdata;
        if (n < 18 || !c[0] || !id_valid(c[0]))
                return 0;
        maestro_task *t = task_new(c[0]);
        if (!t || !(t->spec = strdup(c[1] ? c[1] : "{}"))) {
                task_free(t);
                return -ENOMEM;
        }
        t->stored = true;
        t->pin = (int)col_i64(c[2], -1);
        if (t->pin >= MAESTRO_MAX_GPUS)
                t->pin = -1;
        t->priority = col_i64(c[3], 0);
        t->max_retries = col_i64(c[4], m->cfg.max_retries);
        t->timeout_ms = col_u64(c[5]);
        t->deadline_us = col_u64(c[6]);
        t->seq = col_u64(c[7]);
        t->created_us = col_u64(c[8]);
        t->state = state_from_name(c[9]);
        t->attempt = col_i64(c[10], 0);
        t->failures = col_i64(c[11], 0);
        int lg = (int)col_i64(c[12], -1);
        t->last_gpu = (int)col_i64(c[13], -1);
        t->lease_expiry_us = col_u64(c[14]);
        t->next_try_us = col_u64(c[15]);
        t->cancel_requested = col_i64(c[16], 0) != 0;
        t->error = c[17] ? strdup(c[17]) : NULL;
        if (hash_add(m, t) < 0) {
                task_free(t);
                return -ENOMEM;
        }
        m->n_queued++;
        if ((t->state == TS_SCHEDULED || t->state == TS_RUNNING) && lg >= 0 && lg < MAESTRO_MAX_GPUS) {
                /* the lease holds as stored: a worker still running it renews it, else it expires and retries */
                maestro_gpu *u = &m->gpus[lg];
                t->lease_gpu = lg;
                t->started = t->state == TS_RUNNING;
                t->gnext = u->leased;
                if (u->leased)
                        u->leased->gprev = t;
                u->leased = t;
                u->inflight++;
                m->n_inflight++;
                maestro_timer_set(m, t, t->lease_expiry_us);
        } else if (t->state == TS_RETRY && !t->queue && t->next_try_us) {
                maestro_timer_set(m, t, t->next_try_us);
        } else {
                if (t->state == TS_SCHEDULED || t->state == TS_RUNNING)
                        t->state = TS_ENQUEUED;
                maestro_queue(m, t);
        }
        (void)names;
        return 0;
}

static int max_seq_row(void *userdata, int n, const char *const *c, const char *const *names) {
        *(uint64_t *)userdata = n > 0 ? col_u64(c[0]) : 0;
        (void)names;
        return 1;
}

static void maestro_free(maestro *m) {
        if (!m)
                return;
        if (m->wake_fd >= 0) {
                if (m->wake_io)
                        m->host->io_remove(m->ctx, m->wake_io);
                close(m->wake_fd);
        }
        for (size_t i = 0; i < m->hash_cap; i++)
                for (maestro_task *t = m->hash[i], *n; t; t = n) {
                        n = t->hnext;
                        task_free(t);
                }
        free(m->hash);
        maestro_heap_free(&m->ready);
        maestro_heap_free(&m->timers);
        for (int g = 0; g < MAESTRO_MAX_GPUS; g++)
                maestro_heap_free(&m->pinned[g]);
        free(m->dirty);
        free(m->incoming);
        for (size_t i = 0; i < m->n_out; i++) {
                free(m->out[i].subject);
                free(m->out[i].data);
        }
        free(m->out);
        for (maestro_waiter *w = m->waiters, *n; w; w = n) {
                n = w->next;
                free(w->reply);
                free(w);
        }
        free(m);
}

static int maestro_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        maestro *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->host = host;
        m->ctx = ctx;
        m->wake_fd = -1;
        m->cfg = (maestro_cfg){.heartbeat_ttl_us = 15000,
                               .metrics_ttl_us = 15000,
                               .max_temp = 78,
                               .max_busy = 95,
                               .inflight_weight = 40,
                               .max_inflight = 1,
                               .max_retries = 2,
                               .max_queue = 10000,
                               .retry_backoff_ms = 2000,
                               .default_timeout_ms = 3600000,
                               .lease_grace_ms = 60000,
                               .idle_grace_ms = 5000,
                               .heartbeat_ms = 5000,
                               .keep_final_ms = 7ULL * 86400 * 1000,
                               .max_task_bytes = 65536};
        m->timers.timer = true;
        m->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (m->wake_fd >= 0 && host->io_add(ctx, m->wake_fd, ORG_IO_IN, on_flush_io, m, &m->wake_io) < 0) {
                close(m->wake_fd);
                m->wake_fd = -1; /* the flush then rides a 0 ms timer */
                m->wake_io = 0;
        }
        load_config(m);
        int r = host->store_exec(ctx, MAESTRO_SQL_SCHEMA, NULL, 0);
        if (r >= 0 && m->cfg.durability_full)
                r = host->store_exec(ctx, "PRAGMA synchronous=FULL;", NULL, 0);
        /* WAL without fsync: a process crash loses nothing committed (the OS has the
         * pages); only an OS crash or power cut can, and may corrupt the file */
        if (r >= 0 && m->cfg.durability_off)
                r = host->store_exec(ctx, "PRAGMA synchronous=OFF;", NULL, 0);
        /* checkpoints (the only fsyncs under synchronous=NORMAL) every 16 MiB of WAL, not 4 */
        if (r >= 0)
                r = host->store_exec(ctx, "PRAGMA wal_autocheckpoint=4096;", NULL, 0);
        if (r < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot open the task store: %s", strerror(-r));
                maestro_free(m);
                return r;
        }
        uint64_t t0 = host->now_monotonic_us(ctx);
        r = host->store_query(ctx, MAESTRO_SQL_MAX_SEQ, NULL, 0, max_seq_row, &m->next_seq);
        if (r >= 0)
                r = host->store_query(ctx, MAESTRO_SQL_OPEN, NULL, 0, recover_row, m);
        if (r < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot reload the tasks from the store: %s", strerror(-r));
                maestro_free(m);
                return r;
        }
        if (m->n_queued)
                host->log(ctx, ORG_LOG_NOTICE, "recovered %zu open tasks (%zu leased) in %.1f ms", m->n_queued,
                          m->n_inflight, (double)(host->now_monotonic_us(ctx) - t0) / 1000.0);
        static const char *const subs[] = {ENQUEUE_SUBJECT,    "gpu.worker.heartbeat", "gpu.worker.metrics",
                                           "gpu.task.running", "gpu.task.done",        "gpu.task.err"};
        for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
                if ((r = host->subscribe(ctx, subs[i], NULL)) < 0) {
                        host->log(ctx, ORG_LOG_ERR, "cannot subscribe to %s: %s", subs[i], strerror(-r));
                        maestro_free(m);
                        return r;
                }
        if (m->cfg.intake_stream) {
                org_consume_opts o = {.stream = m->cfg.intake_stream,
                                      .durable = m->cfg.intake_durable,
                                      .filter = m->cfg.intake_filter,
                                      .max_deliver = 1000000,
                                      .ack_wait_ms = m->cfg.intake_ack_wait_ms,
                                      .max_pending = (unsigned)m->cfg.intake_max_pending};
                r = ORG_HOST_HAS(host, consume_durable) ? host->consume_durable(ctx, &o, NULL) : -EOPNOTSUPP;
                if (r < 0) {
                        host->log(ctx, ORG_LOG_ERR,
                                  "cannot consume %s from stream %s (intake needs bus.nats.jetstream): %s",
                                  m->cfg.intake_filter, m->cfg.intake_stream, strerror(-r));
                        maestro_free(m);
                        return r;
                }
        }
        if ((r = host->timer_add(ctx, m->cfg.heartbeat_ms, m->cfg.heartbeat_ms, on_heartbeat, m, &m->hb_timer)) < 0) {
                maestro_free(m);
                return r;
        }
        char ts[40], *up = NULL;
        maestro_ts(maestro_now(m), ts, sizeof ts);
        if (asprintf(&up, "{\"ts\":\"%s\",\"event\":\"up\",\"version\":\"%s\",\"recovered\":%zu}", ts, MAESTRO_VERSION,
                     m->n_queued) >= 0) {
                host->publish(ctx, "maestro.up", NULL, 0, up, strlen(up));
                free(up);
        }
        maestro_rearm(m);
        *ret_state = m;
        return 0;
}

static void maestro_fini(void *state) {
        maestro *m = state;
        if (!m)
                return;
        flush(m); /* what was decided this turn is kept */
        uint64_t timers[] = {m->hb_timer, m->wake_timer, m->flush_timer};
        for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
                if (timers[i])
                        m->host->timer_cancel(m->ctx, timers[i]);
        maestro_free(m);
}

ORG_PLUGIN_DEFINE(.name = "maestro", .version = MAESTRO_VERSION,
                  .summary = "the conductor: durable GPU task queue (sqlite), scored dispatch with leases and retries",
                  .config_map = config_map, .verbs = verbs, .init = maestro_init, .handle = maestro_handle,
                  .call = maestro_call, .fini = maestro_fini);
