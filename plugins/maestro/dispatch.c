/* dispatch.c — where tasks go and when: the GPU table fed by workers' heartbeats and
 * metrics (eligibility and score), the ready queues (unpinned, and one per GPU for
 * pinned tasks, so a task waiting for its GPU never blocks those behind it), leases
 * with attempt fencing, results, retries with back-off, deadlines, cancel, and the one
 * monotonic timer armed at the earliest instant anything is due (no polling tick).
 *
 * Dispatch is event driven: it runs after whatever may free or reveal capacity (an
 * enqueue, a heartbeat, a result, a timer) and hands out as many tasks as there is room
 * for, each to the lowest score among the eligible GPUs with room: O(GPUs) per task. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "maestro.h"

static const char *const state_names[TS__COUNT] = {
        [TS_ENQUEUED] = "enqueued",   [TS_WAITING_GPU] = "waiting_gpu",
        [TS_SCHEDULED] = "scheduled", [TS_RUNNING] = "running",
        [TS_RETRY] = "retry",         [TS_DONE] = "done",
        [TS_FAILED] = "failed",       [TS_CANCELLED] = "cancelled",
        [TS_REJECTED] = "rejected",
};

const char *maestro_state_name(maestro_state s) {
        return s < TS__COUNT ? state_names[s] : "unknown";
}

bool maestro_state_final(maestro_state s) {
        return s == TS_DONE || s == TS_FAILED || s == TS_CANCELLED || s == TS_REJECTED;
}

/* ---- heaps ---- */

static bool before(const maestro_heap *h, const maestro_task *a, const maestro_task *b) {
        if (h->timer)
                return a->when_us < b->when_us;
        return a->priority > b->priority || (a->priority == b->priority && a->seq < b->seq);
}

static void setpos(const maestro_heap *h, maestro_task *t, size_t i) {
        if (h->timer)
                t->tpos = i;
        else
                t->qpos = i;
}

static size_t getpos(const maestro_heap *h, const maestro_task *t) {
        return h->timer ? t->tpos : t->qpos;
}

static void sift_up(maestro_heap *h, size_t i) {
        maestro_task *t = h->v[i];
        while (i > 0) {
                size_t p = (i - 1) / 2;
                if (!before(h, t, h->v[p]))
                        break;
                h->v[i] = h->v[p];
                setpos(h, h->v[i], i);
                i = p;
        }
        h->v[i] = t;
        setpos(h, t, i);
}

static void sift_down(maestro_heap *h, size_t i) {
        maestro_task *t = h->v[i];
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, c = i;
                const maestro_task *best = t;
                if (l < h->n && before(h, h->v[l], best)) {
                        c = l;
                        best = h->v[l];
                }
                if (r < h->n && before(h, h->v[r], best))
                        c = r;
                if (c == i)
                        break;
                h->v[i] = h->v[c];
                setpos(h, h->v[i], i);
                i = c;
        }
        h->v[i] = t;
        setpos(h, t, i);
}

/* Never fails: the capacity grows ahead (maestro_heap_reserve at enqueue). */
void maestro_heap_push(maestro_heap *h, maestro_task *t) {
        if (h->n == h->cap) {
                size_t cap = h->cap ? h->cap * 2 : 64;
                maestro_task **v = realloc(h->v, cap * sizeof(*v));
                if (!v)
                        abort(); /* a queue that cannot hold an accepted task has no safe way on */
                h->v = v;
                h->cap = cap;
        }
        h->v[h->n] = t;
        sift_up(h, h->n++);
}

void maestro_heap_remove(maestro_heap *h, maestro_task *t) {
        size_t i = getpos(h, t);
        if (i >= h->n || h->v[i] != t)
                return;
        h->n--;
        if (i != h->n) {
                maestro_task *x = h->v[h->n];
                h->v[i] = x;
                setpos(h, x, i);
                sift_down(h, i);
                sift_up(h, getpos(h, x));
        }
        setpos(h, t, SIZE_MAX);
}

maestro_task *maestro_heap_top(const maestro_heap *h) {
        return h->n ? h->v[0] : NULL;
}

void maestro_heap_free(maestro_heap *h) {
        free(h->v);
        h->v = NULL;
        h->n = h->cap = 0;
}

/* ---- the timer heap and the one host timer ---- */

void maestro_timer_clear(maestro *m, maestro_task *t) {
        if (t->tpos != SIZE_MAX)
                maestro_heap_remove(&m->timers, t);
}

void maestro_timer_set(maestro *m, maestro_task *t, uint64_t when_us) {
        maestro_timer_clear(m, t);
        t->when_us = when_us;
        maestro_heap_push(&m->timers, t);
}

static void on_wake(org_ctx *ctx, uint64_t id, void *userdata) {
        maestro *m = userdata;
        if (id == m->wake_timer) {
                m->wake_timer = 0;
                m->wake_at = 0;
        }
        maestro_on_timers(m);
}

/* Arms the host timer for the earliest entry (realtime instants, a monotonic delay). */
void maestro_rearm(maestro *m) {
        const maestro_task *t = maestro_heap_top(&m->timers);
        if (!t) {
                if (m->wake_timer)
                        m->host->timer_cancel(m->ctx, m->wake_timer);
                m->wake_timer = 0;
                m->wake_at = 0;
                return;
        }
        if (m->wake_timer && m->wake_at <= t->when_us)
                return; /* an earlier wake re-arms when it fires */
        if (m->wake_timer)
                m->host->timer_cancel(m->ctx, m->wake_timer);
        uint64_t now = maestro_now(m);
        uint64_t ms = t->when_us > now ? (t->when_us - now + 999) / 1000 : 0;
        m->wake_timer = 0;
        if (m->host->timer_add(m->ctx, ms, 0, on_wake, m, &m->wake_timer) < 0)
                m->host->log(m->ctx, ORG_LOG_ERR, "cannot arm the wake-up timer: leases and retries wait");
        m->wake_at = t->when_us;
}

/* ---- GPUs ---- */

static const char *const dead_states[] = {"gone", "passthrough", "vfio", "error", "offline", "down", "suspended", NULL};

bool maestro_gpu_eligible(const maestro *m, int g, uint64_t now_us, const char **ret_why) {
        const maestro_gpu *u = &m->gpus[g];
        const char *why = NULL;
        if (!u->seen)
                why = "no heartbeat seen";
        else if (now_us > u->hb_us + m->cfg.heartbeat_ttl_us)
                why = "heartbeat stale";
        else {
                for (size_t i = 0; dead_states[i]; i++)
                        if (strcmp(u->state, dead_states[i]) == 0)
                                why = "not usable by its worker";
                if (!why && strcmp(u->state, "foreign") == 0)
                        why = "busy with a task of another scheduler";
        }
        bool fresh = u->metrics_us && now_us <= u->metrics_us + m->cfg.metrics_ttl_us;
        if (!why && fresh && u->has_temp && u->temp > m->cfg.max_temp)
                why = "too hot";
        /* busy sampled while one of our tasks ran there says nothing about other load */
        if (!why && fresh && u->has_busy && u->metrics_us > u->last_release_us && u->busy > m->cfg.max_busy)
                why = "too busy";
        if (ret_why)
                *ret_why = why;
        return !why;
}

double maestro_gpu_score(const maestro *m, int g, uint64_t now_us) {
        const maestro_gpu *u = &m->gpus[g];
        bool fresh = u->metrics_us && now_us <= u->metrics_us + m->cfg.metrics_ttl_us;
        double busy = fresh && u->has_busy && u->metrics_us > u->last_release_us ? u->busy : 50.0;
        double temp = fresh && u->has_temp ? u->temp : 60.0;
        return busy + 0.5 * temp + (fresh ? 0.0 : 30.0) + m->cfg.inflight_weight * (double)u->inflight;
}

size_t maestro_gpus_alive(const maestro *m, uint64_t now_us) {
        size_t n = 0;
        for (int g = 0; g < MAESTRO_MAX_GPUS; g++)
                if (maestro_gpu_eligible(m, g, now_us, NULL))
                        n++;
        return n;
}

/* "3", "gpu3" or 3 → 3; -1 otherwise. */
static int gpu_index(json_t *v) {
        long long i = -1;
        if (json_is_integer(v))
                i = json_integer_value(v);
        else if (json_is_string(v)) {
                const char *s = json_string_value(v);
                if (strncmp(s, "gpu", 3) == 0)
                        s += 3;
                char *end;
                errno = 0;
                i = *s ? strtoll(s, &end, 10) : -1;
                if (errno || *end)
                        i = -1;
        }
        return i >= 0 && i < MAESTRO_MAX_GPUS ? (int)i : -1;
}

static bool leased_here(const maestro_gpu *u, const char *task_id) {
        for (const maestro_task *t = u->leased; t; t = t->gnext)
                if (strcmp(t->id, task_id) == 0)
                        return true;
        return false;
}

static void attempt_failed(maestro *m, maestro_task *t, const char *error, json_t *msg);

void maestro_on_heartbeat(maestro *m, const char *data, size_t len) {
        json_error_t e;
        json_t *o = json_loadb(data, len, 0, &e);
        json_t *gpus = json_object_get(o, "gpus");
        uint64_t now = maestro_now(m);
        size_t i;
        json_t *x;
        json_array_foreach (gpus, i, x) {
                int g = gpu_index(json_object_get(x, "gpu"));
                const char *state = json_string_value(json_object_get(x, "state"));
                const char *pci = json_string_value(json_object_get(x, "pci"));
                const char *tid = json_string_value(json_object_get(x, "task_id"));
                if (g < 0)
                        continue;
                maestro_gpu *u = &m->gpus[g];
                u->seen = true;
                u->hb_us = now;
                if (pci)
                        snprintf(u->pci, sizeof u->pci, "%s", pci);
                snprintf(u->state, sizeof u->state, "%s", state ? state : "idle");
                /* busy with a task we never leased there: somebody else's work (busy with
                 * the one that just ended there is the heartbeat lagging behind) */
                if (state && strcmp(state, "busy") == 0 && tid && !leased_here(u, tid) &&
                    strcmp(tid, u->last_task) != 0)
                        snprintf(u->state, sizeof u->state, "foreign");
                /* Idle, after the worker said it runs one of ours there: the worker lost it
                 * (a restart). Only once heartbeats have said idle for idle_grace since that
                 * running (a heartbeat may overtake a result or predate the run: NATS keeps
                 * no order across subjects), and never when the worker names that task as
                 * the one that ended there last (its done or err is on the way, or was lost
                 * with the bridge: the lease expiry retries it, answered from the worker's
                 * store). */
                bool idle = state && strcmp(state, "idle") == 0;
                if (!idle)
                        u->idle_since_us = 0;
                else if (!u->idle_since_us)
                        u->idle_since_us = now;
                if (idle && now >= u->idle_since_us + m->cfg.idle_grace_ms * 1000ULL) {
                        const char *last = json_string_value(json_object_get(x, "last_task"));
                        json_t *la = json_object_get(x, "last_attempt");
                        for (maestro_task *t = u->leased, *n; t; t = n) {
                                n = t->gnext;
                                if (!t->started)
                                        continue;
                                if (last && strcmp(last, t->id) == 0 &&
                                    (!json_is_integer(la) || json_integer_value(la) >= t->attempt))
                                        continue;
                                m->lost_total++;
                                attempt_failed(m, t, "lost by the worker (its GPU reports idle)", NULL);
                        }
                }
        }
        json_decref(o);
        maestro_dispatch(m);
}

void maestro_on_metrics(maestro *m, const char *data, size_t len) {
        json_error_t e;
        json_t *o = json_loadb(data, len, 0, &e);
        int g = gpu_index(json_object_get(o, "gpu"));
        if (g >= 0) {
                maestro_gpu *u = &m->gpus[g];
                json_t *b = json_object_get(o, "gpu_busy_percent"), *t = json_object_get(o, "temp_c");
                u->has_busy = json_is_number(b);
                u->busy = u->has_busy ? json_number_value(b) : 0;
                u->has_temp = json_is_number(t);
                u->temp = u->has_temp ? json_number_value(t) : 0;
                u->metrics_us = maestro_now(m);
        }
        json_decref(o);
        maestro_dispatch(m);
}

/* ---- queueing and leases ---- */

/* A queued task no GPU can take now says so once (waiting_gpu, with why), not at
 * every pass. */
void maestro_note_waiting(maestro *m, maestro_task *t) {
        if (!t->queue || t->waiting_published)
                return;
        uint64_t now = maestro_now(m);
        const char *why = NULL;
        if (t->pin >= 0)
                maestro_gpu_eligible(m, t->pin, now, &why);
        else if (maestro_gpus_alive(m, now) == 0)
                why = "no eligible GPU";
        if (!why)
                return;
        t->waiting_published = true;
        if (t->state == TS_ENQUEUED)
                t->state = TS_WAITING_GPU;
        char *w = maestro_json_str(why, strlen(why));
        if (t->pin >= 0)
                maestro_emit_state(m, t, ",\"gpu\":%d,\"reason\":%s", t->pin, w ? w : "null");
        else
                maestro_emit_state(m, t, ",\"reason\":%s", w ? w : "null");
        free(w);
}

/* Into its ready queue; the timer heap then holds its deadline, if any. */
void maestro_queue(maestro *m, maestro_task *t) {
        maestro_heap *q = t->pin >= 0 ? &m->pinned[t->pin] : &m->ready;
        maestro_heap_push(q, t);
        t->queue = q;
        if (t->deadline_us)
                maestro_timer_set(m, t, t->deadline_us);
        else
                maestro_timer_clear(m, t);
}

static void unqueue(maestro_task *t) {
        if (t->queue)
                maestro_heap_remove(t->queue, t);
        t->queue = NULL;
}

static uint64_t lease_len_us(const maestro *m, const maestro_task *t) {
        return (t->timeout_ms + m->cfg.lease_grace_ms) * 1000ULL;
}

void maestro_lease_release(maestro *m, maestro_task *t) {
        if (t->lease_gpu < 0)
                return;
        maestro_gpu *u = &m->gpus[t->lease_gpu];
        if (t->gprev)
                t->gprev->gnext = t->gnext;
        else
                u->leased = t->gnext;
        if (t->gnext)
                t->gnext->gprev = t->gprev;
        t->gprev = t->gnext = NULL;
        u->inflight--;
        m->n_inflight--;
        uint64_t now = maestro_now(m);
        u->last_release_us = now;
        snprintf(u->last_task, sizeof u->last_task, "%s", t->id);
        t->last_gpu = t->lease_gpu;
        t->lease_gpu = -1;
        /* tasks queued at the worker behind this one start now: their clock starts now */
        for (maestro_task *o = u->leased; o; o = o->gnext)
                if (!o->started && o->lease_expiry_us < now + lease_len_us(m, o)) {
                        o->lease_expiry_us = now + lease_len_us(m, o);
                        maestro_timer_set(m, o, o->lease_expiry_us);
                        maestro_mark_dirty(m, o);
                }
}

static void lease(maestro *m, maestro_task *t, int g, uint64_t now) {
        unqueue(t);
        maestro_gpu *u = &m->gpus[g];
        t->attempt++;
        t->state = TS_SCHEDULED;
        t->started = false;
        t->lease_gpu = g;
        t->lease_expiry_us = now + lease_len_us(m, t);
        maestro_timer_set(m, t, t->lease_expiry_us);
        t->gprev = NULL;
        t->gnext = u->leased;
        if (u->leased)
                u->leased->gprev = t;
        u->leased = t;
        u->inflight++;
        u->dispatched++;
        m->n_inflight++;
        m->dispatched_total++;
        if (t->attempt == 1 && t->enqueue_mono_us) {
                uint64_t mono = m->host->now_monotonic_us(m->ctx);
                m->lat[m->n_lat++ % (sizeof m->lat / sizeof m->lat[0])] = mono - t->enqueue_mono_us;
        }
        maestro_mark_dirty(m, t);

        char subject[64], ts[40];
        snprintf(subject, sizeof subject, "gpu.task.run.%d", g);
        maestro_ts(maestro_now(m), ts, sizeof ts);
        size_t n = strlen(t->spec) + strlen(t->id) + 160;
        char *data = malloc(n);
        if (data) {
                /* the spec is a JSON object: splice the envelope in front of its members */
                const char *rest = t->spec + 1;
                snprintf(data, n, "{\"ts\":\"%s\",\"task_id\":\"%s\",\"attempt\":%" PRId64 ",\"gpu\":%d%s%s", ts, t->id,
                         t->attempt, g, *rest == '}' ? "" : ",", rest);
                maestro_emit(m, subject, data);
        }
        maestro_emit_state(m, t, ",\"gpu\":%d,\"pci\":\"%s\",\"attempt\":%" PRId64, g, u->pci, t->attempt);
}

/* True when a goes before b (b may be NULL). */
static bool task_before(const maestro_task *a, const maestro_task *b) {
        return !b || a->priority > b->priority || (a->priority == b->priority && a->seq < b->seq);
}

void maestro_dispatch(maestro *m) {
        if (m->in_flush)
                return;
        uint64_t now = maestro_now(m);
        bool elig[MAESTRO_MAX_GPUS];
        int n_elig = 0;
        for (int g = 0; g < MAESTRO_MAX_GPUS; g++)
                if ((elig[g] = m->gpus[g].seen && maestro_gpu_eligible(m, g, now, NULL)))
                        n_elig++;
        if (n_elig == 0)
                return;
        for (;;) {
                maestro_task *cand = maestro_heap_top(&m->ready);
                int cg = -1;
                for (int g = 0; g < MAESTRO_MAX_GPUS; g++) {
                        if (!elig[g] || m->gpus[g].inflight >= (unsigned)m->cfg.max_inflight)
                                continue;
                        maestro_task *p = maestro_heap_top(&m->pinned[g]);
                        if (p && task_before(p, cand)) {
                                cand = p;
                                cg = g;
                        }
                }
                if (!cand)
                        return;
                if (cg < 0) {
                        double best = 0;
                        for (int g = 0; g < MAESTRO_MAX_GPUS; g++) {
                                if (!elig[g] || m->gpus[g].inflight >= (unsigned)m->cfg.max_inflight)
                                        continue;
                                /* a retry goes elsewhere when there is anywhere else */
                                double s = maestro_gpu_score(m, g, now) + (g == cand->last_gpu ? 1000.0 : 0.0);
                                if (cg < 0 || s < best) {
                                        best = s;
                                        cg = g;
                                }
                        }
                        if (cg < 0)
                                return; /* every eligible GPU is full */
                }
                lease(m, cand, cg, now);
        }
}

/* ---- results ---- */

/* The back-off before attempt n+1: retry_backoff × n, n capped at 10. */
static uint64_t backoff_us(const maestro *m, int64_t failures) {
        int64_t k = failures < 1 ? 1 : failures > 10 ? 10 : failures;
        return m->cfg.retry_backoff_ms * 1000ULL * (uint64_t)k;
}

static char *result_json(maestro *m, const maestro_task *t, bool ok, int gpu, json_t *msg, const char *error) {
        char ts[40];
        maestro_ts(maestro_now(m), ts, sizeof ts);
        json_t *rc = json_object_get(msg, "returncode");
        json_t *o = json_pack("{s:s, s:s, s:b, s:i, s:I, s:O?, s:O?, s:O?, s:O?, s:s?}", "ts", ts, "task_id", t->id,
                              "ok", ok, "gpu", gpu, "attempt", (json_int_t)t->attempt, "returncode",
                              json_is_integer(rc) ? rc : NULL, "stdout", json_object_get(msg, "stdout"), "stderr",
                              json_object_get(msg, "stderr"), "duration_ms", json_object_get(msg, "duration_ms"),
                              "error", error);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return text;
}

/* An attempt ended without success: retry, or the end. Takes nothing. */
static void attempt_failed(maestro *m, maestro_task *t, const char *error, json_t *msg) {
        int gpu = t->lease_gpu;
        maestro_lease_release(m, t);
        free(t->error);
        t->error = strdup(error);
        if (t->cancel_requested) {
                maestro_finish(m, t, TS_CANCELLED, "cancelled", result_json(m, t, false, gpu, msg, "cancelled"));
                return;
        }
        t->failures++;
        if (t->failures > t->max_retries) {
                maestro_finish(m, t, TS_FAILED, error, result_json(m, t, false, gpu, msg, error));
                return;
        }
        uint64_t now = maestro_now(m);
        t->state = TS_RETRY;
        t->next_try_us = now + backoff_us(m, t->failures);
        if (t->deadline_us && t->deadline_us < t->next_try_us) {
                maestro_finish(m, t, TS_FAILED, "deadline exceeded",
                               result_json(m, t, false, gpu, msg, "deadline exceeded"));
                return;
        }
        maestro_timer_set(m, t, t->next_try_us);
        m->retries_total++;
        maestro_mark_dirty(m, t);
        char *err = maestro_json_str(error, strlen(error));
        maestro_emit_state(m, t, ",\"attempt\":%" PRId64 ",\"gpu\":%d,\"error\":%s,\"retry_in_ms\":%" PRIu64,
                           t->attempt, gpu, err ? err : "null", backoff_us(m, t->failures) / 1000);
        free(err);
}

void maestro_on_result(maestro *m, const char *kind, const char *data, size_t len) {
        json_error_t e;
        json_t *o = json_loadb(data, len, 0, &e);
        const char *id = json_string_value(json_object_get(o, "task_id"));
        json_t *a = json_object_get(o, "attempt");
        int g = gpu_index(json_object_get(o, "gpu"));
        maestro_task *t = id ? maestro_find(m, id) : NULL;
        json_t *rc = json_object_get(o, "returncode");
        bool success = strcmp(kind, "done") == 0 && json_is_integer(rc) && json_integer_value(rc) == 0;
        /* A success the worker answered from its store (it ran the task once, before, on
         * the GPU the result names): it answers the attempt asked, from any GPU of it. */
        bool replayed = success && json_object_get(o, "ran_attempt") != NULL;
        bool leased = t && (t->state == TS_SCHEDULED || t->state == TS_RUNNING);
        /* A late success of an older attempt while no other attempt holds a lease (the
         * task waits for its retry or a GPU): the work was done, once; running it again
         * would do it twice. With a newer attempt leased it is stale (that one runs). */
        bool late_ok = success && t && !leased && !maestro_state_final(t->state) && json_is_integer(a) &&
                       json_integer_value(a) >= 1 && json_integer_value(a) <= t->attempt;
        /* fencing: only the current attempt on the GPU that holds the lease counts */
        if (!late_ok && (!leased || !json_is_integer(a) || json_integer_value(a) != t->attempt ||
                         (!replayed && json_object_get(o, "gpu") && g != t->lease_gpu))) {
                m->stale_total++;
                json_decref(o);
                return;
        }
        uint64_t now = maestro_now(m);
        if (strcmp(kind, "running") == 0) {
                bool first = !t->started;
                t->started = true;
                m->gpus[t->lease_gpu].idle_since_us = 0; /* an idle heartbeat before this proves nothing */
                t->state = TS_RUNNING;
                t->lease_expiry_us = now + lease_len_us(m, t);
                maestro_timer_set(m, t, t->lease_expiry_us);
                maestro_mark_dirty(m, t);
                if (first)
                        maestro_emit_state(m, t, ",\"gpu\":%d,\"attempt\":%" PRId64 ",\"pid\":%lld", t->lease_gpu,
                                           t->attempt, (long long)json_integer_value(json_object_get(o, "pid")));
                json_decref(o);
                return;
        }
        const char *err = json_string_value(json_object_get(o, "error"));
        if (success) {
                /* the GPU that ran it: the lease's, or the one a replay or late result names */
                int gpu = t->lease_gpu >= 0 && !replayed ? t->lease_gpu : g >= 0 ? g : t->last_gpu;
                if (replayed || late_ok)
                        m->replayed_total++;
                maestro_lease_release(m, t);
                t->last_gpu = gpu;
                maestro_finish(m, t, TS_DONE, NULL, result_json(m, t, true, gpu, o, NULL));
        } else if (strcmp(kind, "err") == 0 && err && strcmp(err, "busy") == 0 && !t->cancel_requested) {
                /* the worker refused it (another task holds the GPU): not an attempt of the task */
                m->busy_refusals_total++;
                maestro_gpu *u = &m->gpus[t->lease_gpu];
                maestro_lease_release(m, t);
                snprintf(u->state, sizeof u->state, "foreign");
                t->state = TS_ENQUEUED;
                maestro_queue(m, t);
                maestro_mark_dirty(m, t);
        } else {
                char why[160];
                if (strcmp(kind, "done") == 0)
                        snprintf(why, sizeof why,
                                 json_is_integer(rc) ? "done with returncode %lld" : "done without a returncode",
                                 (long long)json_integer_value(rc));
                else if (err)
                        snprintf(why, sizeof why, "%.150s", err);
                else if (json_is_integer(rc))
                        snprintf(why, sizeof why, "returncode %lld", (long long)json_integer_value(rc));
                else
                        snprintf(why, sizeof why, "error");
                attempt_failed(m, t, why, o);
        }
        json_decref(o);
        maestro_dispatch(m);
}

/* Whatever is due: deadlines of queued tasks, back-offs ending, leases expiring. */
void maestro_on_timers(maestro *m) {
        uint64_t now = maestro_now(m);
        maestro_task *t;
        while ((t = maestro_heap_top(&m->timers)) && t->when_us <= now) {
                maestro_timer_clear(m, t);
                switch (t->state) {
                case TS_ENQUEUED:
                case TS_WAITING_GPU:
                        maestro_finish(m, t, TS_FAILED, "deadline exceeded",
                                       result_json(m, t, false, t->pin, NULL, "deadline exceeded"));
                        break;
                case TS_RETRY:
                        if (t->queue) /* waiting for a GPU after its back-off: the deadline */
                                maestro_finish(m, t, TS_FAILED, "deadline exceeded",
                                               result_json(m, t, false, t->pin, NULL, "deadline exceeded"));
                        else
                                maestro_queue(m, t);
                        break;
                case TS_SCHEDULED:
                case TS_RUNNING:
                        m->lease_expiries_total++;
                        attempt_failed(m, t, "lease expired", NULL);
                        break;
                default:
                        break;
                }
        }
        maestro_dispatch(m);
        maestro_rearm(m);
}

/* Queued: cancelled at once. Leased: the worker is told, and the task ends cancelled
 * when it answers (or its lease ends). */
int maestro_cancel(maestro *m, maestro_task *t) {
        if (maestro_state_final(t->state))
                return -EALREADY;
        if (t->lease_gpu < 0) {
                maestro_finish(m, t, TS_CANCELLED, "cancelled", result_json(m, t, false, t->pin, NULL, "cancelled"));
                return 0;
        }
        if (t->cancel_requested)
                return 0;
        t->cancel_requested = true;
        char subject[64], ts[40];
        snprintf(subject, sizeof subject, "gpu.task.cancel.%d", t->lease_gpu);
        maestro_ts(maestro_now(m), ts, sizeof ts);
        char *data = NULL;
        if (asprintf(&data, "{\"ts\":\"%s\",\"task_id\":\"%s\",\"attempt\":%" PRId64 ",\"gpu\":%d}", ts, t->id,
                     t->attempt, t->lease_gpu) >= 0)
                maestro_emit(m, subject, data);
        return 1;
}

/* The end of a task: out of every queue, its state and result published (after the
 * commit), watchers answered. Takes result. */
void maestro_finish(maestro *m, maestro_task *t, maestro_state s, const char *error, char *result) {
        unqueue(t);
        maestro_timer_clear(m, t);
        maestro_lease_release(m, t);
        t->state = s;
        if (error && (!t->error || strcmp(t->error, error) != 0)) {
                free(t->error);
                t->error = strdup(error);
        }
        free(t->result);
        t->result = result;
        m->n_queued--;
        if (s == TS_DONE)
                m->done_total++;
        else if (s == TS_FAILED)
                m->failed_total++;
        else if (s == TS_CANCELLED)
                m->cancelled_total++;
        maestro_mark_dirty(m, t);
        if (error) {
                char *err = maestro_json_str(error, strlen(error));
                maestro_emit_state(m, t, ",\"attempt\":%" PRId64 ",\"error\":%s", t->attempt, err ? err : "null");
                free(err);
        } else
                maestro_emit_state(m, t, ",\"attempt\":%" PRId64 ",\"gpu\":%d", t->attempt, t->last_gpu);
        if (result) {
                char subject[MAESTRO_ID_MAX + 32];
                snprintf(subject, sizeof subject, "gpu.task.result.%s", t->id);
                maestro_emit(m, subject, strdup(result));
        }
        maestro_waiters_notify(m, t);
}
