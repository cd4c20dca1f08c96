/* test-gpuworker.c — the gpuworker plugin against the fake host and a private copy of
 * the gpupool12 fixture sysroot: twelve RX 580 whose card numbers (card0..card11) run in
 * another order than their PCI addresses, their HDMI audio functions, gpu5
 * runtime-suspended, a 13th card bound to vfio-pci.
 *
 * The fake host's table is copied with read_file wrapped, to see that no sensor of the
 * suspended card is read. Execs are deferred: the test completes them with the result
 * it wants (status, output, time-out, truncation). Task tests need root (the task user is
 * `nobody`, and the task's directory is given to it); without root they are skipped with
 * the reason. Argument 1 is the folder of fixture sysroots. */
#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "../memory/fixture.h"
#include "test.h"

extern const org_plugin organism_plugin;

#define GPUW_BIG (256 * 1024 + 16)

static const char *fixtures;
static org_host host;

static int atoi_safe(const char *s) {
        return (int)strtol(s, NULL, 10);
}
static char suspended_pci[] = "0000:08:00.0";
static unsigned suspended_sensor_reads;

static int w_read_file(org_ctx *ctx, const char *path, char **ret_data, size_t *ret_len) {
        if (strstr(path, suspended_pci) && !strstr(path, "/power/runtime_status") && !strstr(path, "/vendor") &&
            !strstr(path, "/class") && !strstr(path, "/device") && !strstr(path, "/uevent"))
                suspended_sensor_reads++;
        return fake_host.read_file(ctx, path, ret_data, ret_len);
}

static json_t *last_json(org_ctx *ctx, const char *subject) {
        const char *t = fake_last_published(ctx, subject);
        json_error_t e;
        return t ? json_loads(t, 0, &e) : NULL;
}

/* The n-th (0-based) message on subject. */
static json_t *nth_json(org_ctx *ctx, const char *subject, size_t n) {
        for (size_t i = 0; i < ctx->n_published; i++)
                if (strcmp(ctx->published[i].subject, subject) == 0 && n-- == 0) {
                        json_error_t e;
                        return json_loads(ctx->published[i].data, 0, &e);
                }
        return NULL;
}

static size_t count_published(org_ctx *ctx, const char *subject) {
        size_t n = 0;
        for (size_t i = 0; i < ctx->n_published; i++)
                n += strcmp(ctx->published[i].subject, subject) == 0;
        return n;
}

static const char *jstr(json_t *o, const char *k) {
        return json_string_value(json_object_get(o, k));
}
static long long jint(json_t *o, const char *k) {
        return json_integer_value(json_object_get(o, k));
}

static char task_root[256];
static const char *sysroot;

static void *start(org_ctx *ctx, const char *extra) {
        char cfg[2048];
        snprintf(cfg, sizeof cfg,
                 "{\"task_root\": \"%s\", \"user\": \"nobody\", \"default_timeout\": 3600000, \"max_timeout\": "
                 "7200000, \"env\": {\"HSA_OVERRIDE_GFX_VERSION\": \"8.0.3\"}%s%s}",
                 task_root, extra ? ", " : "", extra ? extra : "");
        fake_ctx_init(ctx, "gpuworker", cfg);
        ctx->sysroot = strdup(sysroot);
        ctx->exec_deferred = true;
        void *st = NULL;
        int r = organism_plugin.init(&host, ctx, &st);
        if (r < 0) {
                fake_ctx_done(ctx);
                return NULL;
        }
        return st;
}

static void stop(org_ctx *ctx, void *st) {
        organism_plugin.fini(st);
        fake_ctx_done(ctx);
}

/* ---- discovery and metrics ---------------------------------------------------- */

static void test_discovery(void) {
        org_ctx ctx;
        void *st = start(&ctx, NULL);
        CHECK(st);
        json_t *up = last_json(&ctx, "gpu.worker.up");
        CHECK(up);
        json_t *gpus = json_object_get(up, "gpus");
        /* 12 amdgpu cards + the vfio one; no audio function, no Intel bridge */
        CHECK_INT(json_array_size(gpus), 13);
        static const char *want_card[12] = {"card0", "card5",  "card10", "card3", "card8", "card1",
                                            "card6", "card11", "card4",  "card9", "card2", "card7"};
        for (size_t i = 0; i < 12; i++) {
                json_t *g = json_array_get(gpus, i);
                char pci[16];
                snprintf(pci, sizeof pci, "0000:%02zx:00.0", 3 + i);
                CHECK_INT(jint(g, "gpu"), (long long)i);
                CHECK_STR(jstr(g, "pci"), pci);
                CHECK_STR(jstr(g, "card"), want_card[i]);
                char render[32];
                snprintf(render, sizeof render, "renderD%d", 128 + atoi_safe(want_card[i] + 4));
                CHECK_STR(jstr(g, "render"), render);
                CHECK_STR(jstr(g, "driver"), "amdgpu");
                CHECK_STR(jstr(g, "state"), "idle");
        }
        json_t *vf = json_array_get(gpus, 12);
        CHECK_STR(jstr(vf, "pci"), "0000:0f:00.0");
        CHECK_STR(jstr(vf, "state"), "passthrough");
        CHECK_STR(jstr(vf, "driver"), "vfio-pci");
        json_decref(up);

        /* subscriptions: per-GPU tokens, never a bare global subject */
        bool run = false, cancel = false;
        for (size_t i = 0; i < ctx.n_subscriptions; i++) {
                run |= strcmp(ctx.subscriptions[i], "gpu.task.run.*") == 0;
                cancel |= strcmp(ctx.subscriptions[i], "gpu.task.cancel.*") == 0;
                CHECK(strcmp(ctx.subscriptions[i], "gpu.task.run") != 0);
        }
        CHECK(run && cancel);

        json_t *hb = last_json(&ctx, "gpu.worker.heartbeat");
        CHECK(hb);
        CHECK_INT(json_array_size(json_object_get(hb, "gpus")), 13);
        CHECK(jstr(hb, "ts"));
        json_decref(hb);
        stop(&ctx, st);
}

static void test_explicit_list(void) {
        org_ctx ctx;
        void *st = start(&ctx, "\"gpus\": [\"0000:0e:00.0\", \"0000:03:00.0\", \"0000:99:00.0\"]");
        CHECK(st);
        json_t *up = last_json(&ctx, "gpu.worker.up");
        json_t *gpus = json_object_get(up, "gpus");
        CHECK_INT(json_array_size(gpus), 3);
        CHECK_STR(jstr(json_array_get(gpus, 0), "pci"), "0000:0e:00.0");
        CHECK_STR(jstr(json_array_get(gpus, 0), "card"), "card7");
        CHECK_STR(jstr(json_array_get(gpus, 1), "pci"), "0000:03:00.0");
        CHECK_STR(jstr(json_array_get(gpus, 2), "state"), "gone");
        json_decref(up);
        stop(&ctx, st);
}

static void test_metrics(void) {
        org_ctx ctx;
        suspended_sensor_reads = 0;
        void *st = start(&ctx, NULL);
        CHECK(st);
        /* init made one pass: 12 messages (not the vfio card) */
        CHECK_INT(count_published(&ctx, "gpu.worker.metrics"), 12);
        json_t *m = nth_json(&ctx, "gpu.worker.metrics", 1);
        CHECK_INT(jint(m, "gpu"), 1);
        CHECK_STR(jstr(m, "pci"), "0000:04:00.0");
        CHECK_STR(jstr(m, "card"), "card5");
        CHECK(json_real_value(json_object_get(m, "temp_c")) == 41.5);
        CHECK(json_real_value(json_object_get(m, "power_w")) == 51.25);
        CHECK(json_real_value(json_object_get(m, "fan_rpm")) == 1010);
        CHECK(json_real_value(json_object_get(m, "gpu_busy_percent")) == 7);
        CHECK_INT(jint(m, "vram_used"), 200LL * 1048576);
        CHECK_INT(jint(m, "vram_total"), 8589934592LL);
        CHECK(json_is_false(json_object_get(m, "suspended")));
        json_decref(m);
        /* card10 and card11 are read like the others */
        m = nth_json(&ctx, "gpu.worker.metrics", 7);
        CHECK_STR(jstr(m, "card"), "card11");
        CHECK(json_real_value(json_object_get(m, "temp_c")) == 47.5);
        json_decref(m);
        /* gpu5 is runtime-suspended: reported, not woken */
        m = nth_json(&ctx, "gpu.worker.metrics", 5);
        CHECK_STR(jstr(m, "pci"), suspended_pci);
        CHECK(json_is_true(json_object_get(m, "suspended")));
        CHECK(json_is_null(json_object_get(m, "temp_c")));
        CHECK(json_is_null(json_object_get(m, "gpu_busy_percent")));
        CHECK(json_is_null(json_object_get(m, "vram_used")));
        json_decref(m);
        CHECK_INT(suspended_sensor_reads, 0);
        /* Prometheus gauges carry gpu and pci */
        CHECK(fake_metric(&ctx, "gpuworker_temp_celsius{gpu=\"2\",pci=\"0000:05:00.0\"}") == 42.5);
        CHECK(fake_metric(&ctx, "gpuworker_suspended{gpu=\"5\",pci=\"0000:08:00.0\"}") == 1);
        /* busy is the mean of the 1 s samples of the window and this reading: one reading
         * of gpu_busy_percent jumps between 0 and 100 */
        fake_timer *sampler = NULL;
        for (size_t i = 0; i < ctx.n_timers; i++)
                if (ctx.timers[i].active && ctx.timers[i].period_ms == 1000)
                        sampler = &ctx.timers[i];
        CHECK(sampler);
        const char *busy_path = "/sys/bus/pci/devices/0000:04:00.0/gpu_busy_percent";
        static const char *const vals[] = {"100\n", "0\n", "100\n", "0\n"};
        for (int k = 0; k < 4; k++) {
                fx_write(sysroot, busy_path, vals[k]);
                sampler->cb(&ctx, sampler->id, sampler->userdata);
        }
        fx_write(sysroot, busy_path, "50\n");
        unsigned before = suspended_sensor_reads;
        fake_ctx_clear_published(&ctx);
        fake_fire_timers(&ctx); /* the pass (added before the sampler) reads 50 */
        CHECK_INT(suspended_sensor_reads, before);
        m = nth_json(&ctx, "gpu.worker.metrics", 1);
        CHECK(m);
        CHECK_INT(jint(m, "busy_samples"), 5);
        CHECK(json_real_value(json_object_get(m, "gpu_busy_percent")) == 50.0); /* (100+0+100+0+50)/5 */
        CHECK(json_real_value(json_object_get(m, "gpu_busy_now")) == 50.0);
        json_decref(m);
        fx_write(sysroot, busy_path, "7\n");
        /* the timer pass reads the sensors again */
        fake_ctx_clear_published(&ctx);
        fake_fire_timers(&ctx);
        CHECK_INT(count_published(&ctx, "gpu.worker.metrics"), 12);
        CHECK_INT(suspended_sensor_reads, 0);
        stop(&ctx, st);
}

/* ---- tasks -------------------------------------------------------------------- */

static void run(void *st, const char *gpu, const char *json) {
        char subject[64];
        snprintf(subject, sizeof subject, "gpu.task.run.%s", gpu);
        CHECK(fake_deliver(&organism_plugin, st, subject, json) == 0);
}

static json_t *expect(org_ctx *ctx, const char *subject) {
        json_t *o = last_json(ctx, subject);
        if (!o) {
                fprintf(stderr, "nothing on %s\n", subject);
                exit(1);
        }
        return o;
}

static bool env_has(const fake_exec *x, const char *kv) {
        for (size_t i = 0; i < 64 && x->env[i]; i++)
                if (strcmp(x->env[i], kv) == 0)
                        return true;
        return false;
}

static bool env_key(const fake_exec *x, const char *k) {
        size_t l = strlen(k);
        for (size_t i = 0; i < 64 && x->env[i]; i++)
                if (strncmp(x->env[i], k, l) == 0 && x->env[i][l] == '=')
                        return true;
        return false;
}

static void complete(org_ctx *ctx, int status, const char *out, bool timed_out, bool trunc) {
        org_exec_result res = {.status = timed_out ? -ETIMEDOUT : status,
                               .timed_out = timed_out,
                               .out = out,
                               .out_len = strlen(out),
                               .out_truncated = trunc,
                               .err = "warn\n",
                               .err_len = 5,
                               .duration_us = 1500000};
        CHECK(fake_exec_complete_res(ctx, &res));
}

static void test_task_lifecycle(void) {
        org_ctx ctx;
        void *st = start(&ctx, NULL);
        CHECK(st);
        fake_ctx_clear_published(&ctx);

        run(st, "3", "{\"task_id\": \"t1\", \"attempt\": 1, \"type\": \"cmd\", \"cmd\": [\"/bin/echo\", \"hi\"]}");
        CHECK_INT(ctx.n_execs, 1);
        fake_exec *x = &ctx.execs[0];
        CHECK_STR(x->argv[0], "/bin/echo");
        CHECK_STR(x->argv[1], "hi");
        CHECK(x->allow_path && x->set_ids);
        CHECK_INT(x->uid, 65534);
        CHECK_INT(x->timeout_ms, 3600000);
        CHECK_INT(x->capture_max, 64000);
        CHECK(x->flags & ORG_EXEC_CGROUP);
        char cwd[512];
        snprintf(cwd, sizeof cwd, "%s/gpu3/t1", task_root);
        CHECK_STR(x->cwd, cwd);
        struct stat sb;
        CHECK(stat(cwd, &sb) == 0 && S_ISDIR(sb.st_mode));
        CHECK_INT(sb.st_uid, 65534);
        CHECK_INT(sb.st_mode & 0777, 0750);
        CHECK(env_has(x, "TASK_ID=t1"));
        CHECK(env_has(x, "GPU_ID=3"));
        CHECK(env_has(x, "GPU_PCI=0000:06:00.0"));
        CHECK(env_has(x, "GPU_RENDER_NODE=/dev/dri/renderD131"));
        CHECK(env_has(x, "HSA_OVERRIDE_GFX_VERSION=8.0.3"));
        CHECK(env_has(x, "PATH=/usr/local/bin:/usr/bin:/bin"));
        CHECK(!env_key(x, "NATS_URL") && !env_key(x, "LD_PRELOAD") && !env_key(x, "PWD"));
        json_t *o = expect(&ctx, "gpu.task.running");
        CHECK_STR(jstr(o, "task_id"), "t1");
        CHECK_INT(jint(o, "attempt"), 1);
        CHECK_INT(jint(o, "gpu"), 3);
        CHECK_STR(jstr(o, "pci"), "0000:06:00.0");
        CHECK_INT(jint(o, "pid"), 10001);
        json_decref(o);
        o = expect(&ctx, "gpu.worker.log");
        CHECK_STR(jstr(o, "event"), "start");
        CHECK_STR(jstr(o, "cwd"), cwd);
        json_decref(o);

        /* a second task for the busy GPU is refused, not queued */
        run(st, "gpu3", "{\"task_id\": \"t-other\", \"cmd\": [\"/bin/true\"]}");
        CHECK_INT(ctx.n_execs, 1);
        o = expect(&ctx, "gpu.task.err");
        CHECK_STR(jstr(o, "error"), "busy");
        CHECK_STR(jstr(o, "task_id"), "t-other");
        CHECK_STR(jstr(o, "running"), "t1");
        json_decref(o);

        /* the same task delivered again while it runs: answered running */
        fake_ctx_clear_published(&ctx);
        run(st, "3", "{\"task_id\": \"t1\", \"attempt\": 1, \"cmd\": [\"/bin/echo\", \"hi\"]}");
        CHECK_INT(ctx.n_execs, 1);
        CHECK_INT(count_published(&ctx, "gpu.task.running"), 1);
        CHECK_INT(count_published(&ctx, "gpu.task.err"), 0);
        /* ... as a newer attempt (maestro's lease ran out): the run adopts it */
        run(st, "5", "{\"task_id\": \"t1\", \"attempt\": 3, \"cmd\": [\"/bin/echo\", \"hi\"]}");
        CHECK_INT(ctx.n_execs, 1);
        o = expect(&ctx, "gpu.task.running");
        CHECK_INT(jint(o, "attempt"), 3);
        CHECK_INT(jint(o, "gpu"), 3);
        json_decref(o);

        /* running is repeated by its timer while the task runs (lease extension) */
        fake_ctx_clear_published(&ctx);
        fake_fire_timers(&ctx);
        CHECK_INT(count_published(&ctx, "gpu.task.running"), 1);
        json_t *hb = expect(&ctx, "gpu.worker.heartbeat");
        CHECK_STR(jstr(json_array_get(json_object_get(hb, "gpus"), 3), "state"), "busy");
        CHECK_STR(jstr(json_array_get(json_object_get(hb, "gpus"), 3), "task_id"), "t1");
        json_decref(hb);

        /* exit 0 → done */
        complete(&ctx, 0, "hi\n", false, false);
        o = expect(&ctx, "gpu.task.done");
        CHECK_STR(jstr(o, "task_id"), "t1");
        CHECK_INT(jint(o, "returncode"), 0);
        CHECK_STR(jstr(o, "stdout"), "hi\n");
        CHECK_STR(jstr(o, "stderr"), "warn\n");
        CHECK_INT(jint(o, "duration_ms"), 1500);
        CHECK_INT(jint(o, "attempt"), 3);
        json_t *lg = expect(&ctx, "gpu.worker.log");
        CHECK_STR(jstr(lg, "event"), "end");
        CHECK_STR(jstr(lg, "detail"), "done");
        json_decref(lg);
        CHECK(jstr(o, "ts"));
        CHECK(!json_object_get(o, "error"));
        json_decref(o);

        /* delivered again after done: the stored result, not a second run */
        fake_ctx_clear_published(&ctx);
        run(st, "3", "{\"task_id\": \"t1\", \"attempt\": 2, \"cmd\": [\"/bin/echo\", \"hi\"]}");
        CHECK_INT(ctx.n_execs, 1);
        o = expect(&ctx, "gpu.task.done");
        CHECK(json_is_true(json_object_get(o, "replayed")));
        CHECK_STR(jstr(o, "stdout"), "hi\n");
        CHECK_INT(jint(o, "attempt"), 2);     /* the attempt asked about, or maestro drops it */
        CHECK_INT(jint(o, "ran_attempt"), 3); /* the run adopted attempt 3 above */
        json_decref(o);

        /* non-zero exit → err with the returncode, never done */
        fake_ctx_clear_published(&ctx);
        run(st, "3", "{\"task_id\": \"t2\", \"attempt\": 1, \"cmd\": [\"/bin/false\"]}");
        CHECK_INT(ctx.n_execs, 2);
        complete(&ctx, 3, "", false, false);
        CHECK_INT(count_published(&ctx, "gpu.task.done"), 0);
        o = expect(&ctx, "gpu.task.err");
        CHECK_INT(jint(o, "returncode"), 3);
        CHECK_STR(jstr(o, "error"), "exit status 3");
        json_decref(o);
        /* a failed task delivered again runs again, as the new attempt */
        run(st, "3", "{\"task_id\": \"t2\", \"attempt\": 2, \"cmd\": [\"/bin/false\"]}");
        CHECK_INT(ctx.n_execs, 3);
        o = expect(&ctx, "gpu.task.running");
        CHECK_INT(jint(o, "attempt"), 2);
        json_decref(o);
        /* time-out: err, truncation flagged */
        complete(&ctx, 0, "partial", true, true);
        o = expect(&ctx, "gpu.task.err");
        CHECK_CONTAINS(jstr(o, "error"), "timeout");
        CHECK(json_is_null(json_object_get(o, "returncode")));
        CHECK(json_is_true(json_object_get(o, "stdout_truncated")));
        json_decref(o);

        /* bare names resolve in the task PATH; a timeout is capped by max_timeout */
        run(st, "4", "{\"task_id\": \"t3\", \"cmd\": [\"true\"], \"timeout\": 999999}");
        CHECK_INT(ctx.n_execs, 4);
        CHECK(strcmp(ctx.execs[3].argv[0], "/usr/bin/true") == 0 || strcmp(ctx.execs[3].argv[0], "/bin/true") == 0);
        CHECK_INT(ctx.execs[3].timeout_ms, 7200000);

        /* one task per GPU, several GPUs at once */
        run(st, "5", "{\"task_id\": \"t4\", \"cmd\": [\"/bin/true\"]}");
        CHECK_INT(ctx.n_execs, 5);

        /* cancel by subject: err cancelled, the exec killed */
        fake_ctx_clear_published(&ctx);
        CHECK(fake_deliver(&organism_plugin, st, "gpu.task.cancel.4", "{\"task_id\": \"t3\"}") == 0);
        CHECK(ctx.execs[3].cancelled);
        o = expect(&ctx, "gpu.task.err");
        CHECK_STR(jstr(o, "error"), "cancelled");
        CHECK_STR(jstr(o, "task_id"), "t3");
        json_decref(o);
        /* cancel verb */
        char *rep = NULL;
        CHECK(fake_call(&organism_plugin, st, &ctx, "cancel", "{\"args\": [\"t4\"]}", &rep) == 0);
        CHECK_CONTAINS(rep, "\"cancelled\":true");
        free(rep);
        CHECK(ctx.execs[4].cancelled);
        CHECK(fake_call(&organism_plugin, st, &ctx, "cancel", "{\"args\": [\"nope\"]}", &rep) == 0);
        CHECK_CONTAINS(rep, "not running");
        free(rep);

        /* verbs */
        CHECK(fake_call(&organism_plugin, st, &ctx, "tasks", "{\"args\": [\"10\"]}", &rep) == 0);
        json_error_t e;
        json_t *t = json_loads(rep, 0, &e);
        free(rep);
        CHECK_INT(json_array_size(json_object_get(t, "tasks")), 4); /* t1 t2 t3 t4 */
        json_decref(t);
        CHECK(fake_call(&organism_plugin, st, &ctx, "status", "", &rep) == 0);
        t = json_loads(rep, 0, &e);
        free(rep);
        CHECK_INT(json_array_size(json_object_get(t, "gpus")), 13);
        CHECK(json_is_true(json_object_get(t, "user_ok")));
        json_decref(t);
        stop(&ctx, st);
}

/* Each refused task: an err naming why, no exec. */
static void refused(org_ctx *ctx, void *st, const char *gpu, const char *json, const char *why, bool has_id) {
        size_t before = ctx->n_execs;
        fake_ctx_clear_published(ctx);
        run(st, gpu, json);
        if (ctx->n_execs != before) {
                fprintf(stderr, "ran: %s\n", json);
                exit(1);
        }
        json_t *o = expect(ctx, "gpu.task.err");
        CHECK_CONTAINS(jstr(o, "error"), why);
        CHECK(has_id ? json_is_string(json_object_get(o, "task_id")) : json_is_null(json_object_get(o, "task_id")));
        json_decref(o);
}

static void test_task_refusals(void) {
        org_ctx ctx;
        void *st = start(&ctx, NULL);
        CHECK(st);
        static char big[GPUW_BIG];
        memset(big, ' ', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        refused(&ctx, st, "1", big, "payload of", false);
        refused(&ctx, st, "1", "{\"task_id\": ", "malformed JSON", false);
        refused(&ctx, st, "1", "[1, 2]", "malformed JSON", false);
        refused(&ctx, st, "1", "{\"cmd\": [\"/bin/true\"]}", "task_id is missing", false);
        refused(&ctx, st, "1", "{\"task_id\": \"../../etc\", \"cmd\": [\"/bin/true\"]}", "task_id must match", false);
        refused(&ctx, st, "1", "{\"task_id\": \"a/b\", \"cmd\": [\"/bin/true\"]}", "task_id must match", false);
        refused(&ctx, st, "1", "{\"task_id\": \"..\", \"cmd\": [\"/bin/true\"]}", "task_id must match", false);
        refused(&ctx, st, "1", "{\"task_id\": \"\", \"cmd\": [\"/bin/true\"]}", "task_id must match", false);
        char longid[300];
        snprintf(longid, sizeof longid, "{\"task_id\": \"%0129d\", \"cmd\": [\"/bin/true\"]}", 0);
        refused(&ctx, st, "1", longid, "task_id must match", false);
        refused(&ctx, st, "99", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"]}", "unknown gpu", true);
        refused(&ctx, st, "03", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"]}", "unknown gpu", true);
        refused(&ctx, st, "12", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"]}", "passed through", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"type\": \"shell\", \"shell\": \"id\"}", "allow_shell", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"type\": \"perl\", \"cmd\": [\"/bin/true\"]}", "type", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\"}", "cmd must be", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": []}", "cmd must be", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/echo\", 3]}", "cmd[1]", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"bin/evil\"]}", "relative path", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"cwd\": \"/etc\"}", "outside", true);
        char c[600];
        snprintf(c, sizeof c, "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"cwd\": \"%s/../x\"}", task_root);
        refused(&ctx, st, "1", c, "'..'", true);
        snprintf(c, sizeof c, "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"cwd\": \"%s/gpu1/../../etc\"}",
                 task_root);
        refused(&ctx, st, "1", c, "'..'", true);
        snprintf(c, sizeof c, "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"cwd\": \"%sx\"}", task_root);
        refused(&ctx, st, "1", c, "outside", true);
        /* a symlink inside task_root that points out of it */
        char link[400];
        snprintf(link, sizeof link, "%s/evil", task_root);
        CHECK(symlink("/tmp", link) == 0);
        snprintf(c, sizeof c, "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"cwd\": \"%s/evil/x\"}", task_root);
        refused(&ctx, st, "1", c, "symlink", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"cwd\": \"evil\"}", "symlink", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"env\": {\"LD_PRELOAD\": \"/x.so\"}}",
                "LD_PRELOAD", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"env\": {\"GPU_ID\": \"7\"}}",
                "GPU_ID", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"env\": {\"A\": 1}}", "env A", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"timeout\": -1}", "timeout", true);
        refused(&ctx, st, "1", "{\"task_id\": \"x1\", \"cmd\": [\"/bin/true\"], \"attempt\": \"2\"}", "attempt", true);
        /* a relative cwd inside task_root is fine */
        fake_ctx_clear_published(&ctx);
        run(st, "1", "{\"task_id\": \"x2\", \"cmd\": [\"/bin/true\"], \"cwd\": \"shared/run\"}");
        CHECK_INT(ctx.n_execs, 1);
        char want[400];
        snprintf(want, sizeof want, "%s/shared/run", task_root);
        CHECK_STR(ctx.execs[0].cwd, want);
        stop(&ctx, st);

        /* allow_shell: true lets a shell task through, by /bin/sh -c */
        st = start(&ctx, "\"allow_shell\": true");
        CHECK(st);
        run(st, "2", "{\"task_id\": \"s1\", \"type\": \"shell\", \"shell\": \"echo $GPU_ID\"}");
        CHECK_INT(ctx.n_execs, 1);
        CHECK_STR(ctx.execs[0].argv[0], "/bin/sh");
        CHECK_STR(ctx.execs[0].argv[1], "-c");
        CHECK_STR(ctx.execs[0].argv[2], "echo $GPU_ID");
        stop(&ctx, st);

        /* root as task user: init refuses */
        org_ctx c2;
        fake_ctx_init(&c2, "gpuworker", "{\"user\": \"root\", \"task_root\": \"/tmp\"}");
        c2.sysroot = strdup(sysroot);
        void *s2 = NULL;
        CHECK_INT(organism_plugin.init(&host, &c2, &s2), -EPERM);
        fake_ctx_done(&c2);
}

static void test_gone(void) {
        org_ctx ctx;
        void *st = start(&ctx, NULL);
        CHECK(st);
        run(st, "4", "{\"task_id\": \"g1\", \"cmd\": [\"/bin/sleep\", \"100\"]}");
        CHECK_INT(ctx.n_execs, 1);
        /* the card leaves (hot-unplug, or a reset that lost it) */
        char dir[512], cmd[600];
        snprintf(dir, sizeof dir, "%s/sys/bus/pci/devices/0000:07:00.0", sysroot);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
        fake_ctx_clear_published(&ctx);
        fake_fire_timers(&ctx);
        CHECK(ctx.execs[0].cancelled);
        json_t *o = expect(&ctx, "gpu.task.err");
        CHECK_STR(jstr(o, "task_id"), "g1");
        CHECK_STR(jstr(o, "error"), "gpu gone");
        json_decref(o);
        fake_fire_timers(&ctx); /* the heartbeat fired before the re-scan in that round */
        json_t *hb = expect(&ctx, "gpu.worker.heartbeat");
        CHECK_STR(jstr(json_array_get(json_object_get(hb, "gpus"), 4), "state"), "gone");
        json_decref(hb);
        refused(&ctx, st, "4", "{\"task_id\": \"g2\", \"cmd\": [\"/bin/true\"]}", "gpu gone", true);
        stop(&ctx, st);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURES\n", argv[0]);
                return 2;
        }
        fixtures = argv[1];
        host = fake_host;
        host.read_file = w_read_file;
        snprintf(task_root, sizeof task_root, "/tmp/organism-gpuworker-tasks-XXXXXX");
        CHECK(mkdtemp(task_root));
        sysroot = fx_copy(fixtures, "gpupool12");
        RUN(test_discovery);
        RUN(test_explicit_list);
        RUN(test_metrics);
        if (geteuid() != 0)
                printf("# task tests skipped: they need root (the task user is nobody)\n");
        else {
                RUN(test_task_lifecycle);
                RUN(test_task_refusals);
                RUN(test_gone);
        }
        fx_remove(sysroot);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", task_root);
        (void)!system(cmd);
        if (geteuid() != 0)
                TEST_SKIP("task tests need root (discovery and metrics passed)");
        printf("ok\n");
        return 0;
}
