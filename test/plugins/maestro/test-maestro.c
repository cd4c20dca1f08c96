/* test-maestro.c — the maestro plugin against the fake host: workers are simulated by
 * delivering heartbeats, metrics and results by hand, time moves by setting the fake
 * clocks, and a "turn" is the fake firing the timers (the flush that commits and then
 * releases what the turn decided). Covers score and spread, hot and dead GPUs, pinned
 * tasks that wait (and their deadline) without blocking others, leases, retries, stale
 * attempts, done with a non-zero return code, idempotent ids, queue full, malformed
 * submissions, cancel, and recovery from the store after a restart. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fakehost.h"
#include "test.h"

extern const org_plugin organism_plugin;

#define SEC 1000000ULL

/* Twice: timers that fire may arm the flush, which the fake fires only on the next pass. */
static void fire_ios(org_ctx *ctx) {
        for (size_t i = 0; i < ctx->n_ios; i++)
                if (ctx->ios[i].active)
                        ctx->ios[i].cb(ctx, i + 1, ctx->ios[i].fd, ORG_IO_IN, ctx->ios[i].userdata);
}

static void turn(org_ctx *ctx) {
        fire_ios(ctx); /* the flush (an eventfd) */
        fake_fire_timers(ctx);
        fire_ios(ctx);
        fake_fire_timers(ctx);
        fire_ios(ctx);
}

static void *start(org_ctx *ctx, const char *cfg) {
        fake_ctx_init(ctx, "maestro", cfg);
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, ctx, &state), 0);
        return state;
}

static void heartbeat(void *s, int n) {
        char buf[4096];
        size_t k = (size_t)snprintf(buf, sizeof buf, "{\"gpus\":[");
        for (int g = 0; g < n; g++)
                k += (size_t)snprintf(buf + k, sizeof buf - k,
                                      "%s{\"gpu\":%d,\"pci\":\"0000:%02x:00.0\",\"state\":\"idle\"}", g ? "," : "", g,
                                      g + 1);
        snprintf(buf + k, sizeof buf - k, "]}");
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.worker.heartbeat", buf), 0);
}

static void metrics(void *s, int g, double busy, double temp) {
        char buf[256];
        snprintf(buf, sizeof buf, "{\"gpu\":%d,\"gpu_busy_percent\":%g,\"temp_c\":%g}", g, busy, temp);
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.worker.metrics", buf), 0);
}

static int n_req;

/* Submits as a request; returns the reply subject to look the answer up after a turn. */
static const char *enqueue(void *s, const char *json) {
        static char reply[64];
        snprintf(reply, sizeof reply, "_INBOX.t.%d", ++n_req);
        org_msg m = {.subject = "gpu.task.enqueue", .reply = reply, .data = json, .len = strlen(json)};
        CHECK_INT(organism_plugin.handle(s, &m), 0);
        return reply;
}

static void result(void *s, const char *kind, const char *id, int attempt, int gpu, int rc) {
        char subject[64], buf[512];
        snprintf(subject, sizeof subject, "gpu.task.%s", kind);
        snprintf(buf, sizeof buf,
                 "{\"task_id\":\"%s\",\"attempt\":%d,\"gpu\":%d,\"returncode\":%d,\"stdout\":\"out\",\"stderr\":\"\","
                 "\"duration_ms\":5%s}",
                 id, attempt, gpu, rc, strcmp(kind, "err") == 0 ? ",\"error\":\"exit 1\"" : "");
        CHECK_INT(fake_deliver(&organism_plugin, s, subject, buf), 0);
}

/* The GPU of the last run message for task id (and its attempt), or -1. */
static int run_gpu(org_ctx *ctx, const char *id, int *ret_attempt) {
        for (size_t i = ctx->n_published; i > 0; i--) {
                fake_published *p = &ctx->published[i - 1];
                if (strncmp(p->subject, "gpu.task.run.", 13) != 0)
                        continue;
                json_error_t e;
                json_t *o = json_loads(p->data, 0, &e);
                const char *tid = json_string_value(json_object_get(o, "task_id"));
                if (tid && strcmp(tid, id) == 0) {
                        int gpu = (int)json_integer_value(json_object_get(o, "gpu"));
                        if (ret_attempt)
                                *ret_attempt = (int)json_integer_value(json_object_get(o, "attempt"));
                        json_decref(o);
                        return gpu;
                }
                json_decref(o);
        }
        return -1;
}

static size_t count_prefix(org_ctx *ctx, const char *prefix) {
        size_t n = 0;
        for (size_t i = 0; i < ctx->n_published; i++)
                n += strncmp(ctx->published[i].subject, prefix, strlen(prefix)) == 0;
        return n;
}

static const char *state_of(org_ctx *ctx, const char *id) {
        char subject[160];
        snprintf(subject, sizeof subject, "gpu.task.state.%s", id);
        return fake_last_published(ctx, subject);
}

/* True when some message on gpu.task.state.<id> contains needle. */
static bool state_seen(org_ctx *ctx, const char *id, const char *needle) {
        char subject[160];
        snprintf(subject, sizeof subject, "gpu.task.state.%s", id);
        for (size_t i = 0; i < ctx->n_published; i++)
                if (strcmp(ctx->published[i].subject, subject) == 0 && strstr(ctx->published[i].data, needle))
                        return true;
        return false;
}

static void test_spread_and_hot_gpu(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        heartbeat(s, 12);
        for (int g = 0; g < 12; g++)
                metrics(s, g, 10 + g, g == 5 ? 80 : 40 + g);
        int per_gpu[12] = {0};
        char id[64];
        for (int i = 0; i < 100; i++) {
                snprintf(id, sizeof id, "{\"task_id\":\"s%d\",\"cmd\":[\"true\"]}", i);
                enqueue(s, id);
        }
        turn(&ctx);
        /* one per eligible GPU (max_inflight 1), never the hot one */
        CHECK_INT(count_prefix(&ctx, "gpu.task.run."), 11);
        CHECK(!fake_last_published(&ctx, "gpu.task.run.5"));
        /* the first task went to the lowest score: gpu0 (busy 10, 40 C) */
        CHECK_INT(run_gpu(&ctx, "s0", NULL), 0);
        size_t done = 0;
        for (int round = 0; round < 20 && done < 100; round++) {
                /* answer every run of this round, then a turn sends the next ones */
                size_t n = ctx.n_published;
                char ids[64][32];
                int gpus[64], atts[64], k = 0;
                for (size_t i = 0; i < n && k < 64; i++) {
                        if (strncmp(ctx.published[i].subject, "gpu.task.run.", 13) != 0)
                                continue;
                        json_error_t e;
                        json_t *o = json_loads(ctx.published[i].data, 0, &e);
                        snprintf(ids[k], sizeof ids[k], "%s", json_string_value(json_object_get(o, "task_id")));
                        gpus[k] = (int)json_integer_value(json_object_get(o, "gpu"));
                        atts[k] = (int)json_integer_value(json_object_get(o, "attempt"));
                        json_decref(o);
                        k++;
                }
                fake_ctx_clear_published(&ctx);
                for (int i = 0; i < k; i++) {
                        per_gpu[gpus[i]]++;
                        result(s, "done", ids[i], atts[i], gpus[i], 0);
                        done++;
                }
                turn(&ctx);
        }
        CHECK_INT(done, 100);
        CHECK_INT(per_gpu[5], 0);
        for (int g = 0; g < 12; g++)
                if (g != 5)
                        CHECK(per_gpu[g] >= 100 / 11 - 1 && per_gpu[g] <= 100 / 11 + 1);
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* With room for several tasks per GPU, the in-flight term spreads them. */
static void test_inflight_weight_spreads(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"max_inflight\": 8}");
        heartbeat(s, 3);
        metrics(s, 0, 0, 30);
        metrics(s, 1, 20, 40);
        metrics(s, 2, 30, 50);
        for (int i = 0; i < 3; i++) {
                char buf[64];
                snprintf(buf, sizeof buf, "{\"task_id\":\"w%d\",\"cmd\":[\"true\"]}", i);
                enqueue(s, buf);
        }
        turn(&ctx);
        /* 0 scores 15, 1: 40, 2: 55; after one task 0 scores 55: the next go to 1, then 2 or 0 */
        CHECK_INT(run_gpu(&ctx, "w0", NULL), 0);
        CHECK_INT(run_gpu(&ctx, "w1", NULL), 1);
        CHECK(run_gpu(&ctx, "w2", NULL) != run_gpu(&ctx, "w1", NULL));
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

static void test_pinned_waits_not_blocking(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        heartbeat(s, 2);
        const char *r1 = enqueue(s, "{\"task_id\":\"p7\",\"cmd\":[\"true\"],\"gpu\":7,\"deadline\":5,\"priority\":9}");
        const char *r1c = strdup(r1);
        enqueue(s, "{\"task_id\":\"free\",\"cmd\":[\"true\"]}");
        turn(&ctx);
        CHECK_CONTAINS(fake_last_published(&ctx, r1c), "\"accepted\":true");
        CHECK_CONTAINS(state_of(&ctx, "p7"), "\"state\":\"waiting_gpu\"");
        CHECK(!fake_last_published(&ctx, "gpu.task.run.7"));
        /* the one behind it (lower priority even) went at once */
        CHECK(run_gpu(&ctx, "free", NULL) >= 0);
        /* more heartbeats: waiting_gpu is not said again */
        fake_ctx_clear_published(&ctx);
        heartbeat(s, 2);
        turn(&ctx);
        CHECK(!state_of(&ctx, "p7"));
        /* past the deadline: failed, never sent to the dead GPU */
        ctx.now_realtime_us += 6 * SEC;
        heartbeat(s, 2);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "p7"), "\"state\":\"failed\"");
        CHECK_CONTAINS(state_of(&ctx, "p7"), "deadline exceeded");
        CHECK_CONTAINS(fake_last_published(&ctx, "gpu.task.result.p7"), "\"ok\":false");
        CHECK(!fake_last_published(&ctx, "gpu.task.run.7"));
        free((void *)r1c);
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* A pinned task dispatched the moment its GPU first heartbeats. */
static void test_pinned_goes_when_gpu_appears(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        enqueue(s, "{\"task_id\":\"late\",\"cmd\":[\"true\"],\"gpu\":3}");
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "late"), "waiting_gpu");
        heartbeat(s, 4);
        turn(&ctx);
        CHECK_INT(run_gpu(&ctx, "late", NULL), 3);
        CHECK_CONTAINS(state_of(&ctx, "late"), "\"state\":\"scheduled\"");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

static void test_lease_expiry_retry_failed_and_stale(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"lease_grace\": 1000, \"retry_backoff\": 1000}");
        heartbeat(s, 2);
        enqueue(s, "{\"task_id\":\"L\",\"cmd\":[\"true\"],\"timeout\":1,\"max_retries\":1}");
        turn(&ctx);
        int a1 = 0, g1 = run_gpu(&ctx, "L", &a1);
        CHECK(g1 >= 0);
        CHECK_INT(a1, 1);
        /* running renews the lease: 1.5 s later it still holds */
        ctx.now_realtime_us += 1500000;
        result(s, "running", "L", 1, g1, 0);
        ctx.now_realtime_us += 1500000;
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "L"), "\"state\":\"running\"");
        /* the task hangs (its worker still says busy with it, no more running):
         * lease (1 s + 1 s grace) expires → retry after 1 s */
        ctx.now_realtime_us += 2100000;
        char hb[256];
        snprintf(hb, sizeof hb,
                 "{\"gpus\":[{\"gpu\":%d,\"pci\":\"a\",\"state\":\"busy\",\"task_id\":\"L\"},"
                 "{\"gpu\":%d,\"pci\":\"b\",\"state\":\"idle\"}]}",
                 g1, 1 - g1);
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.worker.heartbeat", hb), 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "L"), "\"state\":\"retry\"");
        CHECK_CONTAINS(state_of(&ctx, "L"), "lease expired");
        fake_ctx_clear_published(&ctx);
        ctx.now_realtime_us += 1100000;
        turn(&ctx);
        int a2 = 0, g2 = run_gpu(&ctx, "L", &a2);
        CHECK_INT(a2, 2);
        CHECK(g2 >= 0 && g2 != g1); /* another GPU */
        /* the first worker's late done for attempt 1: ignored */
        result(s, "done", "L", 1, g1, 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "L"), "\"state\":\"scheduled\"");
        CHECK(!fake_last_published(&ctx, "gpu.task.result.L"));
        /* attempt 2 expires too: retries exhausted → failed */
        ctx.now_realtime_us += 2100000;
        heartbeat(s, 2);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "L"), "\"state\":\"failed\"");
        CHECK_CONTAINS(fake_last_published(&ctx, "gpu.task.result.L"), "lease expired");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

static void test_err_twice_then_done_and_nonzero_done(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"retry_backoff\": 0}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"E\",\"cmd\":[\"true\"]}");
        turn(&ctx);
        result(s, "err", "E", 1, 0, 1);
        turn(&ctx); /* retry, and with no back-off dispatched again */
        CHECK(state_seen(&ctx, "E", "\"state\":\"retry\""));
        int a = 0;
        CHECK_INT(run_gpu(&ctx, "E", &a), 0);
        CHECK_INT(a, 2);
        /* done with a non-zero return code is a failure, not a success */
        fake_ctx_clear_published(&ctx);
        result(s, "done", "E", 2, 0, 3);
        turn(&ctx);
        CHECK(state_seen(&ctx, "E", "done with returncode 3"));
        CHECK(!fake_last_published(&ctx, "gpu.task.result.E"));
        CHECK_INT(run_gpu(&ctx, "E", &a), 0);
        CHECK_INT(a, 3);
        result(s, "done", "E", 3, 0, 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "E"), "\"state\":\"done\"");
        const char *res = fake_last_published(&ctx, "gpu.task.result.E");
        CHECK_CONTAINS(res, "\"ok\":true");
        CHECK_CONTAINS(res, "\"attempt\":3");
        CHECK_CONTAINS(res, "\"stdout\":\"out\"");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

static void test_idempotent_and_queue_full(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"max_queue\": 2}");
        const char *r = enqueue(s, "{\"task_id\":\"a\",\"cmd\":[\"x\"]}");
        char r1[64];
        snprintf(r1, sizeof r1, "%s", r);
        /* before the commit nothing is answered */
        CHECK(!fake_last_published(&ctx, r1));
        turn(&ctx);
        CHECK_CONTAINS(fake_last_published(&ctx, r1), "\"accepted\":true");
        r = enqueue(s, "{\"task_id\":\"a\",\"cmd\":[\"other\"]}");
        snprintf(r1, sizeof r1, "%s", r);
        turn(&ctx);
        CHECK_CONTAINS(fake_last_published(&ctx, r1), "\"existing\":true");
        enqueue(s, "{\"task_id\":\"b\",\"cmd\":[\"x\"]}");
        r = enqueue(s, "{\"task_id\":\"c\",\"cmd\":[\"x\"]}");
        snprintf(r1, sizeof r1, "%s", r);
        turn(&ctx);
        CHECK_CONTAINS(fake_last_published(&ctx, r1), "\"accepted\":false");
        CHECK_CONTAINS(fake_last_published(&ctx, r1), "queue full");
        /* one row for a; its spec is the first one */
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "status", "{\"args\":[\"a\"]}", &reply), 0);
        CHECK_CONTAINS(reply, "\"x\"");
        CHECK(!strstr(reply, "other"));
        free(reply);
        /* a plain publish of a bad task: refused on its state subject */
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.task.enqueue", "{\"task_id\":\"q\",\"cmd\":[]}"), 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "q"), "\"state\":\"rejected\"");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

static void test_malformed(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        static const char *const bad[][2] = {
                {"not json", "not JSON"},
                {"{\"task_id\":\"../x\",\"cmd\":[\"a\"]}", "task_id"},
                {"{\"task_id\":\"ok\"}", "cmd must be"},
                {"{\"task_id\":\"ok\",\"type\":\"shell\",\"shell\":\"ls\"}", "not allowed"},
                {"{\"task_id\":\"ok\",\"cmd\":[\"a\"],\"gpu\":99}", "gpu must be"},
                {"{\"task_id\":\"ok\",\"cmd\":[\"a\"],\"timeout\":-1}", "timeout"},
                {"{\"task_id\":\"ok\",\"cmd\":[\"a\"],\"bogus\":1}", "unknown key"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                char reply[64];
                snprintf(reply, sizeof reply, "%s", enqueue(s, bad[i][0]));
                turn(&ctx);
                CHECK_CONTAINS(fake_last_published(&ctx, reply), "\"accepted\":false");
                CHECK_CONTAINS(fake_last_published(&ctx, reply), bad[i][1]);
        }
        char big[70000];
        memset(big, ' ', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        big[0] = '{';
        big[sizeof big - 2] = '}';
        char reply[64];
        snprintf(reply, sizeof reply, "%s", enqueue(s, big));
        turn(&ctx);
        CHECK_CONTAINS(fake_last_published(&ctx, reply), "too large");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

static void test_cancel(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"run1\",\"cmd\":[\"a\"]}");
        enqueue(s, "{\"task_id\":\"q1\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "cancel", "{\"args\":[\"q1\"]}", &reply), 0);
        CHECK_CONTAINS(reply, "cancelled");
        free(reply);
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "cancel", "{\"args\":[\"run1\"]}", &reply), 0);
        CHECK_CONTAINS(reply, "cancelling");
        free(reply);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "q1"), "\"state\":\"cancelled\"");
        CHECK_CONTAINS(fake_last_published(&ctx, "gpu.task.cancel.0"), "run1");
        /* the worker confirms with err cancelled */
        CHECK_INT(fake_deliver(
                          &organism_plugin, s, "gpu.task.err",
                          "{\"task_id\":\"run1\",\"attempt\":1,\"gpu\":0,\"error\":\"cancelled\",\"returncode\":-9}"),
                  0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "run1"), "\"state\":\"cancelled\"");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* fini and init again on the same store: open tasks come back, leases as stored. */
static void test_recovery(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"r1\",\"cmd\":[\"a\"]}");
        enqueue(s, "{\"task_id\":\"r2\",\"cmd\":[\"a\"]}");
        enqueue(s, "{\"task_id\":\"r3\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        CHECK_INT(run_gpu(&ctx, "r1", NULL), 0);
        result(s, "done", "r1", 1, 0, 0);
        turn(&ctx);
        CHECK_INT(run_gpu(&ctx, "r2", NULL), 0);
        organism_plugin.fini(s);
        fake_ctx_clear_published(&ctx);

        s = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &s), 0);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "status", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "\"queued\":2");
        CHECK_CONTAINS(reply, "\"inflight\":1");
        free(reply);
        /* the worker still had r2: its done for the stored attempt counts */
        heartbeat(s, 1);
        turn(&ctx);
        CHECK(!fake_last_published(&ctx, "gpu.task.run.0")); /* r2 holds the GPU: r3 waits */
        result(s, "done", "r2", 1, 0, 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "r2"), "\"state\":\"done\"");
        CHECK_INT(run_gpu(&ctx, "r3", NULL), 0);
        /* r1 was done before the restart: a resubmission is the existing task, not rerun */
        char r[64];
        snprintf(r, sizeof r, "%s", enqueue(s, "{\"task_id\":\"r1\",\"cmd\":[\"a\"]}"));
        turn(&ctx);
        CHECK_CONTAINS(fake_last_published(&ctx, r), "\"state\":\"done\"");
        CHECK_CONTAINS(fake_last_published(&ctx, r), "\"existing\":true");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* A heartbeat lagging behind (busy with the task that just ended) keeps the GPU usable;
 * busy with a task we never leased there is somebody else's work. */
static void test_heartbeat_busy_lag_and_foreign(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"A\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        result(s, "done", "A", 1, 0, 0);
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.worker.heartbeat",
                               "{\"gpus\":[{\"gpu\":0,\"pci\":\"p\",\"state\":\"busy\",\"task_id\":\"A\"}]}"),
                  0);
        fake_ctx_clear_published(&ctx);
        enqueue(s, "{\"task_id\":\"B\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        CHECK_INT(run_gpu(&ctx, "B", NULL), 0);
        result(s, "done", "B", 1, 0, 0);
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.worker.heartbeat",
                               "{\"gpus\":[{\"gpu\":0,\"pci\":\"p\",\"state\":\"busy\",\"task_id\":\"other\"}]}"),
                  0);
        fake_ctx_clear_published(&ctx);
        enqueue(s, "{\"task_id\":\"C\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        CHECK_INT(run_gpu(&ctx, "C", NULL), -1);
        CHECK(state_seen(&ctx, "C", "no eligible GPU"));
        /* the worker says idle again: C goes */
        heartbeat(s, 1);
        turn(&ctx);
        CHECK_INT(run_gpu(&ctx, "C", NULL), 0);
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* A worker that restarted reports the GPU idle: the running task was lost, retried at
 * once instead of waiting for its lease. */
static void test_idle_heartbeat_after_running_retries(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"retry_backoff\": 0}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"R\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        /* idle before running: the heartbeat may predate the run, nothing happens */
        heartbeat(s, 1);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "R"), "\"state\":\"scheduled\"");
        result(s, "running", "R", 1, 0, 0);
        heartbeat(s, 1);
        turn(&ctx);
        /* one idle heartbeat may have overtaken the done, or predate the run */
        CHECK(!state_seen(&ctx, "R", "lost by the worker"));
        ctx.now_realtime_us += 6 * SEC; /* idle_grace 5 s: idle all that time */
        heartbeat(s, 1);
        turn(&ctx);
        CHECK(state_seen(&ctx, "R", "lost by the worker"));
        int a = 0;
        CHECK_INT(run_gpu(&ctx, "R", &a), 0);
        CHECK_INT(a, 2);
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* gpuworker names the task that ended on a GPU last: idle heartbeats that overtake its
 * done (NATS keeps no order across subjects) never fail it, however long they say so. */
static void test_idle_heartbeat_racing_done(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"retry_backoff\": 0, \"idle_grace\": 1000}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"F\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        result(s, "running", "F", 1, 0, 0);
        for (int i = 0; i < 3; i++) {
                CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.worker.heartbeat",
                                       "{\"gpus\":[{\"gpu\":0,\"pci\":\"a\",\"state\":\"idle\",\"last_task\":\"F\","
                                       "\"last_attempt\":1}]}"),
                          0);
                ctx.now_realtime_us += 2 * SEC;
                turn(&ctx);
        }
        CHECK(!state_seen(&ctx, "F", "lost by the worker"));
        CHECK_CONTAINS(state_of(&ctx, "F"), "\"state\":\"running\"");
        result(s, "done", "F", 1, 0, 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "F"), "\"state\":\"done\"");
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* A retried task the worker had run (its done lost): the worker answers the new attempt
 * from its store, naming the GPU that ran it, not the one asked: done, not stale. And a
 * late success of an older attempt while the task waits for its retry finishes it. */
static void test_replayed_and_late_done_finish(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"retry_backoff\": 10000, \"lease_grace\": 1000, \"default_timeout\": 1000}");
        heartbeat(s, 2);
        enqueue(s, "{\"task_id\":\"P\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        int g1 = run_gpu(&ctx, "P", NULL);
        CHECK(g1 >= 0);
        ctx.now_realtime_us += 3 * SEC;
        ctx.now_monotonic_us += 3 * SEC;
        heartbeat(s, 2);
        turn(&ctx); /* lease expired: retry in 10 s */
        CHECK_CONTAINS(state_of(&ctx, "P"), "\"state\":\"retry\"");
        ctx.now_realtime_us += 11 * SEC;
        ctx.now_monotonic_us += 11 * SEC;
        heartbeat(s, 2);
        turn(&ctx);
        int a = 0, g2 = run_gpu(&ctx, "P", &a);
        CHECK_INT(a, 2);
        CHECK(g2 >= 0 && g2 != g1);
        char buf[256];
        snprintf(buf, sizeof buf,
                 "{\"task_id\":\"P\",\"attempt\":2,\"ran_attempt\":1,\"replayed\":true,\"gpu\":%d,"
                 "\"returncode\":0,\"stdout\":\"x\"}",
                 g1);
        CHECK_INT(fake_deliver(&organism_plugin, s, "gpu.task.done", buf), 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "P"), "\"state\":\"done\"");
        CHECK(fake_last_published(&ctx, "gpu.task.result.P") != NULL);

        /* late: attempt 1's done arrives while Q waits for its retry */
        enqueue(s, "{\"task_id\":\"Q\",\"cmd\":[\"a\"]}");
        turn(&ctx);
        int gq = run_gpu(&ctx, "Q", NULL);
        ctx.now_realtime_us += 3 * SEC;
        ctx.now_monotonic_us += 3 * SEC;
        heartbeat(s, 2);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "Q"), "\"state\":\"retry\"");
        result(s, "done", "Q", 1, gq, 0);
        turn(&ctx);
        CHECK_CONTAINS(state_of(&ctx, "Q"), "\"state\":\"done\"");
        /* a failed late answer changes nothing, nor a success for another task's id */
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "status", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "\"replayed_total\":2");
        free(reply);
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

/* Final tasks older than keep_final leave the store; open ones never do. */
static void test_prune(void) {
        org_ctx ctx;
        void *s = start(&ctx, "{\"keep_final\": 60000}");
        heartbeat(s, 1);
        enqueue(s, "{\"task_id\":\"old\",\"cmd\":[\"a\"]}");
        enqueue(s, "{\"task_id\":\"open\",\"cmd\":[\"a\"],\"gpu\":5}");
        turn(&ctx);
        result(s, "done", "old", 1, 0, 0);
        turn(&ctx);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "status", "{\"args\":[\"old\"]}", &reply), 0);
        CHECK_CONTAINS(reply, "\"state\":\"done\"");
        free(reply);
        ctx.now_realtime_us += 120 * SEC;
        turn(&ctx); /* the heartbeat timer prunes */
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "status", "{\"args\":[\"old\"]}", &reply), 0);
        CHECK_CONTAINS(reply, "unknown task");
        free(reply);
        CHECK_INT(fake_call(&organism_plugin, s, &ctx, "status", "{\"args\":[\"open\"]}", &reply), 0);
        CHECK_CONTAINS(reply, "waiting_gpu");
        free(reply);
        organism_plugin.fini(s);
        fake_ctx_done(&ctx);
}

int main(void) {
        RUN(test_spread_and_hot_gpu);
        RUN(test_inflight_weight_spreads);
        RUN(test_pinned_waits_not_blocking);
        RUN(test_pinned_goes_when_gpu_appears);
        RUN(test_lease_expiry_retry_failed_and_stale);
        RUN(test_err_twice_then_done_and_nonzero_done);
        RUN(test_idempotent_and_queue_full);
        RUN(test_malformed);
        RUN(test_cancel);
        RUN(test_recovery);
        RUN(test_heartbeat_busy_lag_and_foreign);
        RUN(test_prune);
        RUN(test_idle_heartbeat_after_running_retries);
        RUN(test_idle_heartbeat_racing_done);
        RUN(test_replayed_and_late_done_finish);
        return 0;
}
