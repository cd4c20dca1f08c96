/* bench-gpuworker.c — the cost of one gpuworker metrics pass for the twelve GPUs of the
 * gpupool12 fixture (a private copy): sysfs reads of busy, VRAM and hwmon files, twelve
 * gpu.worker.metrics messages built and published, 96 gauges set, through the fake host,
 * and the 1 s gpu_busy_percent sampler that feeds the mean busy.
 * It prints µs per pass (CPU and wall) and the share of one core at the default 5 s
 * interval (the budget: under 1 %). Figures only, never asserted. Argument 1 is the
 * folder of fixture sysroots. */
#include <time.h>

#include <jansson.h>

#include "../plugins/memory/fixture.h"
#include "test.h"

extern const org_plugin organism_plugin;

static uint64_t clock_ns(clockid_t id) {
        struct timespec ts;
        clock_gettime(id, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void quiet_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) {}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURES\n", argv[0]);
                return 2;
        }
        const char *root = fx_copy(argv[1], "gpupool12");
        char task_root[] = "/tmp/organism-gpuworker-bench-XXXXXX";
        CHECK(mkdtemp(task_root));
        char cfg[512];
        /* only the metrics timer matters: the others an hour away */
        snprintf(cfg, sizeof cfg,
                 "{\"task_root\": \"%s\", \"user\": \"nobody\", \"metrics_interval\": 5000, \"heartbeat_interval\": "
                 "3600000, \"rescan_interval\": 3600000, \"running_interval\": 3600000}",
                 task_root);
        org_host host = fake_host;
        host.logv = quiet_logv;
        org_ctx ctx;
        fake_ctx_init(&ctx, "gpuworker", cfg);
        ctx.sysroot = strdup(root);
        void *st = NULL;
        CHECK(organism_plugin.init(&host, &ctx, &st) == 0);

        /* the metrics timer is the one with a 5000 ms period */
        fake_timer *t = NULL;
        for (size_t i = 0; i < ctx.n_timers; i++)
                if (ctx.timers[i].active && ctx.timers[i].period_ms == 5000)
                        t = &ctx.timers[i];
        CHECK(t);
        const int passes = 2000;
        uint64_t cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID), wall0 = clock_ns(CLOCK_MONOTONIC);
        size_t msgs = 0;
        for (int i = 0; i < passes; i++) {
                fake_ctx_clear_published(&ctx);
                t->cb(&ctx, t->id, t->userdata);
                msgs += ctx.n_published;
        }
        uint64_t cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0, wall = clock_ns(CLOCK_MONOTONIC) - wall0;
        double cpu_us = (double)cpu / passes / 1000.0, wall_us = (double)wall / passes / 1000.0;
        printf("gpuworker metrics pass, 12 GPUs (13 functions, 1 vfio, 1 suspended): %.1f us CPU, %.1f us wall per "
               "pass; %.1f messages per pass\n",
               cpu_us, wall_us, (double)msgs / passes);
        printf("share of one core at a 5 s interval: %.4f %% (budget 1 %%)\n", cpu_us / 5e6 * 100.0);
        /* the busy sampler (1 s): one gpu_busy_percent read per awake GPU */
        fake_timer *b = NULL;
        for (size_t i = 0; i < ctx.n_timers; i++)
                if (ctx.timers[i].active && ctx.timers[i].period_ms == 1000)
                        b = &ctx.timers[i];
        CHECK(b);
        cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        for (int i = 0; i < passes; i++)
                b->cb(&ctx, b->id, b->userdata);
        double b_us = (double)(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0) / passes / 1000.0;
        printf("busy sampler pass (1 s): %.1f us CPU; metrics + sampler: %.4f %% of one core (budget 1 %%)\n", b_us,
               (cpu_us / 5e6 + b_us / 1e6) * 100.0);
        organism_plugin.fini(st);
        fake_ctx_done(&ctx);
        fx_remove(root);
        rmdir(task_root);
        return 0;
}
