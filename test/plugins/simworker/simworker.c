/* simworker.c — a scripted stand-in for gpuworker (tests and benchmarks only): it
 * heartbeats N GPUs, answers gpu.task.run.<gpu> at once (or never, for the GPUs listed
 * in `silent`, or with err for the first `fail_first` attempts of each task), and with a
 * `marker_dir` it keeps one file per task_id, created exclusively on the first run, so a
 * test can prove each task's side effect happened exactly once (a task delivered again
 * after done is answered from that file, as gpuworker answers from its store).
 *
 * With `load.count` > 0 it is also the load: it submits tasks to gpu.task.enqueue as
 * requests (all at once within `load.window` outstanding, or at `load.rate` per second),
 * and measures enqueue → run latency and the time to the last result; the `bench` verb
 * answers the figures. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include <organism/plugin.h>

typedef struct sim {
        const org_host *host;
        org_ctx *ctx;
        int64_t gpus;
        uint64_t hb_ms;
        int64_t fail_first, delay_ms;
        uint64_t silent; /* bitmask of GPUs that never answer */
        const char *marker_dir;
        /* load */
        int64_t count, rate, window, timeout;
        bool wait_results;
        int64_t submitted, accepted, rejected, results, runs, reruns_prevented;
        uint64_t *sent_us; /* per seq */
        uint64_t *lat_us;
        size_t n_lat;
        uint64_t t0_us, t_last_us;
        uint64_t load_timer;
} sim;

static const org_config_entry load_entries[] = {
        {.key = "count", .type = ORG_CFG_INT, .default_value = "0", .min = "0", .help = "tasks to submit"},
        {.key = "rate", .type = ORG_CFG_INT, .default_value = "0", .min = "0", .help = "per second; 0 = window-bound"},
        {.key = "window", .type = ORG_CFG_INT, .default_value = "2000", .min = "1", .help = "outstanding at most"},
        {.key = "start", .type = ORG_CFG_DURATION, .default_value = "1s", .help = "delay before the first"},
        {.key = "wait_results",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "the window counts tasks until their result (else until the reply)"},
        {.key = "timeout",
         .type = ORG_CFG_INT,
         .default_value = "60",
         .min = "1",
         .help = "each task's timeout, seconds"},
        ORG_CONFIG_END,
};

static const org_config_entry config_map[] = {
        {.key = "gpus", .type = ORG_CFG_INT, .default_value = "12", .min = "1", .max = "64", .help = "GPUs simulated"},
        {.key = "heartbeat", .type = ORG_CFG_DURATION, .default_value = "1s", .help = "heartbeat period"},
        {.key = "fail_first", .type = ORG_CFG_INT, .default_value = "0", .help = "attempts answered err first"},
        {.key = "silent", .type = ORG_CFG_INT_LIST, .default_value = "[]", .help = "GPUs that never answer"},
        {.key = "delay_ms", .type = ORG_CFG_INT, .default_value = "0", .min = "0", .help = "answer after this"},
        {.key = "marker_dir", .type = ORG_CFG_STRING, .help = "one file per task_id, created once"},
        {.key = "load", .type = ORG_CFG_OBJECT, .children = load_entries, .help = "the load generator"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "bench", .help = "the load's figures"},
        ORG_VERBS_END,
};

static void heartbeat(org_ctx *ctx, uint64_t id, void *userdata) {
        sim *s = userdata;
        char buf[8192];
        size_t n = (size_t)snprintf(buf, sizeof buf, "{\"gpus\":[");
        for (int64_t g = 0; g < s->gpus; g++)
                n += (size_t)snprintf(buf + n, sizeof buf - n,
                                      "%s{\"gpu\":%" PRId64 ",\"pci\":\"0000:%02" PRIx64 ":00.0\",\"state\":\"idle\"}",
                                      g ? "," : "", g, g + 1);
        n += (size_t)snprintf(buf + n, sizeof buf - n, "]}");
        s->host->publish(ctx, "gpu.worker.heartbeat", NULL, 0, buf, n);
        (void)id;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static void on_load(org_ctx *ctx, uint64_t id, void *userdata);

static void on_reply(org_ctx *ctx, int error, const org_msg *reply, void *userdata) {
        sim *s = userdata;
        if (!error && reply && strstr(reply->data, "\"accepted\":true"))
                s->accepted++;
        else
                s->rejected++;
        if (!s->wait_results && s->rate == 0 && s->submitted < s->count && !s->load_timer &&
            s->submitted - (s->accepted + s->rejected) < s->window / 2)
                s->host->timer_add(s->ctx, 0, 0, on_load, s, &s->load_timer);
        (void)ctx;
}

static void submit_some(sim *s, int64_t k) {
        for (; k > 0 && s->submitted < s->count; k--) {
                char buf[256];
                int64_t seq = s->submitted++;
                int n = snprintf(buf, sizeof buf,
                                 "{\"task_id\":\"b%" PRId64 "\",\"cmd\":[\"true\"],\"timeout\":%" PRId64 "}", seq,
                                 s->timeout);
                s->sent_us[seq] = s->host->now_monotonic_us(s->ctx);
                if (s->host->request(s->ctx, "gpu.task.enqueue", buf, (size_t)n, 30000, on_reply, s) < 0)
                        s->rejected++;
        }
}

static void on_load(org_ctx *ctx, uint64_t id, void *userdata) {
        sim *s = userdata;
        if (!s->t0_us)
                s->t0_us = s->host->now_monotonic_us(ctx);
        if (s->rate > 0) {
                /* every 10 ms its share; the timer is periodic */
                int64_t due =
                        (int64_t)((s->host->now_monotonic_us(ctx) - s->t0_us) * (uint64_t)s->rate / 1000000ULL) + 1;
                submit_some(s, due - s->submitted);
                if (s->submitted >= s->count && s->load_timer) {
                        s->host->timer_cancel(ctx, s->load_timer);
                        s->load_timer = 0;
                }
        } else {
                s->load_timer = 0;
                int64_t done = s->wait_results ? s->results : s->accepted + s->rejected;
                submit_some(s, s->window - (s->submitted - done));
        }
        (void)id;
}

static void answer(sim *s, const char *subject, const char *id, int64_t attempt, int gpu, int rc, const char *err) {
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "{\"task_id\":\"%s\",\"attempt\":%" PRId64
                         ",\"gpu\":%d,\"returncode\":%d,\"stdout\":\"ok\\n\","
                         "\"stderr\":\"\",\"duration_ms\":0%s%s%s}",
                         id, attempt, gpu, rc, err ? ",\"error\":\"" : "", err ? err : "", err ? "\"" : "");
        s->host->publish(s->ctx, subject, NULL, 0, buf, (size_t)n);
}

typedef struct later {
        sim *s;
        char id[136];
        int64_t attempt;
        int gpu;
} later;

static void finish(sim *s, const char *id, int64_t attempt, int gpu);

static void on_later(org_ctx *ctx, uint64_t tid, void *userdata) {
        later *l = userdata;
        finish(l->s, l->id, l->attempt, l->gpu);
        free(l);
        (void)ctx;
        (void)tid;
}

static void on_run(sim *s, const org_msg *msg) {
        json_error_t e;
        json_t *o = json_loadb(msg->data, msg->len, 0, &e);
        const char *id = json_string_value(json_object_get(o, "task_id"));
        int64_t attempt = json_integer_value(json_object_get(o, "attempt"));
        int gpu = (int)json_integer_value(json_object_get(o, "gpu"));
        if (!id || gpu < 0 || gpu >= 64) {
                json_decref(o);
                return;
        }
        s->runs++;
        if (s->count && id[0] == 'b') {
                int64_t seq = strtoll(id + 1, NULL, 10);
                if (seq >= 0 && seq < s->count && attempt == 1)
                        s->lat_us[s->n_lat++] = s->host->now_monotonic_us(s->ctx) - s->sent_us[seq];
        }
        if (s->silent & (1ULL << gpu)) {
                json_decref(o);
                return;
        }
        if (attempt <= s->fail_first) {
                answer(s, "gpu.task.err", id, attempt, gpu, 1, "scripted failure");
                json_decref(o);
                return;
        }
        if (s->delay_ms > 0) {
                later *l = calloc(1, sizeof *l);
                if (l) {
                        l->s = s;
                        snprintf(l->id, sizeof l->id, "%s", id);
                        l->attempt = attempt;
                        l->gpu = gpu;
                        char buf[256];
                        int n = snprintf(buf, sizeof buf,
                                         "{\"task_id\":\"%s\",\"attempt\":%" PRId64 ",\"gpu\":%d,\"pid\":1}", id,
                                         attempt, gpu);
                        s->host->publish(s->ctx, "gpu.task.running", NULL, 0, buf, (size_t)n);
                        if (s->host->timer_add(s->ctx, (uint64_t)s->delay_ms, 0, on_later, l, NULL) < 0)
                                free(l);
                }
                json_decref(o);
                return;
        }
        finish(s, id, attempt, gpu);
        json_decref(o);
}

static void finish(sim *s, const char *id, int64_t attempt, int gpu) {
        if (s->marker_dir) {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", s->marker_dir, id);
                int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        char line[64];
                        int n = snprintf(line, sizeof line, "attempt %" PRId64 " gpu %d\n", attempt, gpu);
                        if (write(fd, line, (size_t)n) < 0)
                                s->host->log(s->ctx, ORG_LOG_WARNING, "cannot write %s", path);
                        close(fd);
                } else
                        s->reruns_prevented++; /* ran before: answered from the "store" */
        }
        answer(s, "gpu.task.done", id, attempt, gpu, 0, NULL);
}

static int sim_handle(void *state, const org_msg *msg) {
        sim *s = state;
        if (strncmp(msg->subject, "gpu.task.run.", 13) == 0)
                on_run(s, msg);
        else if (strncmp(msg->subject, "gpu.task.result.", 16) == 0) {
                s->results++;
                s->t_last_us = s->host->now_monotonic_us(s->ctx);
                if (s->rate == 0 && s->wait_results && s->submitted < s->count && !s->load_timer &&
                    s->submitted - s->results < s->window / 2)
                        s->host->timer_add(s->ctx, 0, 0, on_load, s, &s->load_timer);
        }
        return 0;
}

static int sim_call(void *state, const char *verb, const org_msg *req) {
        sim *s = state;
        if (strcmp(verb, "bench") != 0)
                return -EOPNOTSUPP;
        size_t n = s->n_lat;
        uint64_t *v = n ? malloc(n * sizeof(*v)) : NULL;
        if (v) {
                memcpy(v, s->lat_us, n * sizeof(*v));
                qsort(v, n, sizeof(*v), cmp_u64);
        }
        char buf[1024];
        double secs = s->t_last_us > s->t0_us ? (double)(s->t_last_us - s->t0_us) / 1e6 : 0;
        int len = snprintf(buf, sizeof buf,
                           "{\"count\":%" PRId64 ",\"submitted\":%" PRId64 ",\"accepted\":%" PRId64
                           ",\"rejected\":%" PRId64 ",\"runs\":%" PRId64 ",\"results\":%" PRId64
                           ",\"reruns_prevented\":%" PRId64
                           ",\"seconds\":%.4f,\"tasks_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}",
                           s->count, s->submitted, s->accepted, s->rejected, s->runs, s->results, s->reruns_prevented,
                           secs, secs > 0 ? (double)s->results / secs : 0, v ? (double)v[n / 2] / 1000 : 0,
                           v ? (double)v[n * 99 / 100] / 1000 : 0, v ? (double)v[n - 1] / 1000 : 0);
        free(v);
        return s->host->respond(s->ctx, req->reply, buf, (size_t)len);
}

static int sim_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        sim *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->host = host;
        s->ctx = ctx;
        int64_t v;
        s->gpus = host->config_int(ctx, "gpus", &v) == 0 ? v : 12;
        s->hb_ms = host->config_int(ctx, "heartbeat", &v) == 0 ? (uint64_t)v : 1000;
        s->fail_first = host->config_int(ctx, "fail_first", &v) == 0 ? v : 0;
        s->delay_ms = host->config_int(ctx, "delay_ms", &v) == 0 ? v : 0;
        if (host->config_string(ctx, "marker_dir", &s->marker_dir) < 0)
                s->marker_dir = NULL;
        json_error_t e;
        json_t *cfg = json_loads(host->config_json(ctx), 0, &e);
        size_t i;
        json_t *x;
        json_array_foreach (json_object_get(cfg, "silent"), i, x)
                if (json_integer_value(x) >= 0 && json_integer_value(x) < 64)
                        s->silent |= 1ULL << json_integer_value(x);
        json_decref(cfg);
        uint64_t start = 1000;
        if (host->config_int(ctx, "load.count", &v) == 0)
                s->count = v;
        if (host->config_int(ctx, "load.rate", &v) == 0)
                s->rate = v;
        s->window = host->config_int(ctx, "load.window", &v) == 0 ? v : 2000;
        s->timeout = host->config_int(ctx, "load.timeout", &v) == 0 ? v : 60;
        bool wr = true;
        if (host->config_bool(ctx, "load.wait_results", &wr) < 0)
                wr = true;
        s->wait_results = wr;
        if (host->config_int(ctx, "load.start", &v) == 0)
                start = (uint64_t)v;
        host->subscribe(ctx, "gpu.task.run.>", NULL);
        if (s->count) {
                s->sent_us = calloc((size_t)s->count, sizeof(uint64_t));
                s->lat_us = calloc((size_t)s->count, sizeof(uint64_t));
                if (!s->sent_us || !s->lat_us)
                        return -ENOMEM;
                host->subscribe(ctx, "gpu.task.result.>", NULL);
                host->timer_add(ctx, start, s->rate ? 10 : 0, on_load, s, &s->load_timer);
        }
        host->timer_add(ctx, 0, s->hb_ms, heartbeat, s, NULL);
        *ret_state = s;
        return 0;
}

static void sim_fini(void *state) {
        sim *s = state;
        if (s) {
                free(s->sent_us);
                free(s->lat_us);
        }
        free(s);
}

ORG_PLUGIN_DEFINE(.name = "simworker", .version = "1", .summary = "simulated GPU workers and load (tests only)",
                  .config_map = config_map, .verbs = verbs, .init = sim_init, .handle = sim_handle, .call = sim_call,
                  .fini = sim_fini);
