/* test-circadian.c — the circadian plugin against the fake host with its injectable
 * wall clock, in Europe/Paris, on a temporary sysroot of 4 CPUs: phase published at
 * start and exactly at each boundary (one realtime timer, no polling), per-phase
 * governor and gpu.cache.sync, DST days, clock jumps backwards and forwards without
 * duplicates, the override with expiry and its persistence across a restart, verify,
 * dry_run, metrics, and configs init must refuse. */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fakehost.h"
#include "test.h"
#include "tz.h"

extern const org_plugin organism_plugin;

#define ACTIONS_CFG                                                                                             \
        "\"actions\":{\"night\":{\"governor\":\"powersave\",\"gpu_cache_sync\":true},\"day\":{\"governor\":" \
        "\"performance\",\"gpu_cache_sync\":false}}"
#define CFG "{\"phases\":{\"day\":\"07:00\",\"night\":\"22:00\"}," ACTIONS_CFG "}"

static char sysroot[] = "/tmp/circadian-test-XXXXXX";

static void write_text(const char *rel, const char *text) {
        char path[600];
        int n = snprintf(path, sizeof path, "%s%s", sysroot, rel);
        CHECK(n > 0 && (size_t)n < sizeof path); /* a cut path would write somewhere else */
        FILE *f = fopen(path, "we");
        CHECK(f);
        fputs(text, f);
        fclose(f);
}

static const char *governor(int cpu) {
        static char buf[64];
        char path[512];
        snprintf(path, sizeof path, "%s/sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor", sysroot, cpu);
        FILE *f = fopen(path, "re");
        CHECK(f);
        CHECK(fgets(buf, sizeof buf, f));
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
        return buf;
}

/* 4 CPUs with cpufreq, all "schedutil", like test/fixtures/sysroots/cpufreq4. */
static void make_sysroot(bool with_present) {
        char path[512];
        const char *dirs[] = {"/sys", "/sys/devices", "/sys/devices/system", "/sys/devices/system/cpu", NULL};
        for (size_t i = 0; dirs[i]; i++) {
                snprintf(path, sizeof path, "%s%s", sysroot, dirs[i]);
                mkdir(path, 0755);
        }
        for (int c = 0; c < 4; c++) {
                snprintf(path, sizeof path, "%s/sys/devices/system/cpu/cpu%d", sysroot, c);
                mkdir(path, 0755);
                snprintf(path, sizeof path, "%s/sys/devices/system/cpu/cpu%d/cpufreq", sysroot, c);
                mkdir(path, 0755);
                snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor", c);
                write_text(path, "schedutil\n");
        }
        snprintf(path, sizeof path, "%s/sys/devices/system/cpu/present", sysroot);
        unlink(path);
        if (with_present)
                write_text("/sys/devices/system/cpu/present", "0-3\n");
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void ctx_setup(org_ctx *ctx, const char *cfg, uint64_t now) {
        fake_ctx_init(ctx, "circadian", cfg);
        ctx->sysroot = strdup(sysroot);
        ctx->now_realtime_us = now;
}

static size_t count(org_ctx *ctx, const char *subject) {
        size_t n = 0;
        for (size_t i = 0; i < ctx->n_published; i++)
                n += strcmp(ctx->published[i].subject, subject) == 0;
        return n;
}

/* The phases published on circadian.phase so far, space-separated. */
static const char *phases_seen(org_ctx *ctx) {
        static char buf[2048];
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < ctx->n_published && off < sizeof buf; i++) {
                if (strcmp(ctx->published[i].subject, "circadian.phase") != 0)
                        continue;
                json_error_t e;
                json_t *o = json_loads(ctx->published[i].data, 0, &e);
                CHECK(o);
                off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", off ? " " : "",
                                        json_string_value(json_object_get(o, "phase")));
                json_decref(o);
        }
        return buf;
}

static void check_last(org_ctx *ctx, const char *phase, const char *since, const char *next, const char *next_at) {
        const char *m = fake_last_published(ctx, "circadian.phase");
        CHECK(m);
        json_error_t e;
        json_t *o = json_loads(m, 0, &e);
        CHECK(o);
        CHECK_STR(json_string_value(json_object_get(o, "phase")), phase);
        CHECK_STR(json_string_value(json_object_get(o, "since")), since);
        if (next) {
                CHECK_STR(json_string_value(json_object_get(o, "next")), next);
                CHECK_STR(json_string_value(json_object_get(o, "next_at")), next_at);
        } else
                CHECK(json_is_null(json_object_get(o, "next")));
        CHECK(json_string_value(json_object_get(o, "ts")));
        json_decref(o);
}

static void check_governors(const char *want) {
        for (int c = 0; c < 4; c++)
                CHECK_STR(governor(c), want);
}

static void test_bad_config_rejected(void) {
        const char *bad[] = {
                "{\"phases\":{\"day\":\"7:00\",\"night\":\"22:00\"}}",
                "{\"phases\":{\"day\":\"24:00\"}}",
                "{\"phases\":{\"day\":\"07:60\"}}",
                "{\"phases\":{\"day\":\"seven\"}}",
                "{\"phases\":{\"day\":7}}",
                "{\"phases\":{\"day\":\"07:00\",\"morning\":\"07:00\"}}",
                "{\"phases\":{}}",
                "{\"phases\":{\"bad name\":\"07:00\"}}",
                "{\"phases\":{\"day\":\"07:00\"},\"actions\":{\"nite\":{\"governor\":\"powersave\"}}}",
                "{\"phases\":{\"day\":\"07:00\"},\"actions\":{\"day\":{\"governor\":\"power save\"}}}",
                "{\"phases\":{\"day\":\"07:00\"},\"actions\":{\"day\":{\"gpu_cache_sync\":\"yes\"}}}",
                NULL,
        };
        for (size_t i = 0; bad[i]; i++) {
                org_ctx ctx;
                ctx_setup(&ctx, bad[i], utc_us(2026, 6, 10, 10, 0, 0));
                void *state = NULL;
                int r = organism_plugin.init(&fake_host, &ctx, &state);
                if (r != -EINVAL)
                        fprintf(stderr, "config accepted: %s\n", bad[i]);
                CHECK_INT(r, -EINVAL);
                CHECK(state == NULL);
                CHECK(ctx.logs > 0);                  /* it said why */
                CHECK_INT(ctx.n_published, 0);        /* and did nothing */
                CHECK_INT(fake_realtime_timers(&ctx, NULL), 0);
                fake_ctx_done(&ctx);
        }
        /* no config at all: the built-in default day 07:00 / night 22:00 */
        org_ctx ctx;
        ctx_setup(&ctx, "{}", utc_us(2026, 6, 10, 10, 0, 0));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
}

static void test_boundaries_exact(void) {
        make_sysroot(true);
        org_ctx ctx;
        /* 06:59:59 local (CEST) */
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 4, 59, 59));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        CHECK_INT(count(&ctx, "circadian.phase"), 1);
        check_last(&ctx, "night", "2026-06-09T20:00:00.000Z", "day", "2026-06-10T05:00:00.000Z");
        check_governors("powersave");
        CHECK(fake_last_published(&ctx, "gpu.cache.sync"));
        CHECK_CONTAINS(fake_last_published(&ctx, "gpu.cache.sync"), "\"gpu\":\"all\"");
        CHECK_CONTAINS(fake_last_published(&ctx, "gpu.cache.sync"), "\"reason\":\"circadian\"");
        /* one timer, at the boundary itself */
        uint64_t at = 0;
        CHECK_INT(fake_realtime_timers(&ctx, &at), 1);
        CHECK_INT(at, utc_us(2026, 6, 10, 5, 0, 0));
        CHECK_INT(ctx.n_timers, 2); /* the boundary timer and the clock-change watch */

        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 5, 0, 0) - 1);
        CHECK_INT(count(&ctx, "circadian.phase"), 1);
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 5, 0, 0));
        CHECK_INT(count(&ctx, "circadian.phase"), 2);
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        check_governors("performance");
        CHECK_INT(count(&ctx, "gpu.cache.sync"), 1); /* day does not ask for one */
        CHECK_INT(fake_realtime_timers(&ctx, &at), 1);
        CHECK_INT(at, utc_us(2026, 6, 10, 20, 0, 0));

        /* 22:00 local, then across midnight to the next morning */
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 20, 0, 0));
        check_last(&ctx, "night", "2026-06-10T20:00:00.000Z", "day", "2026-06-11T05:00:00.000Z");
        check_governors("powersave");
        CHECK_INT(count(&ctx, "gpu.cache.sync"), 2);
        fake_advance_realtime(&ctx, utc_us(2026, 6, 11, 0, 0, 0));
        CHECK_INT(count(&ctx, "circadian.phase"), 3);
        fake_advance_realtime(&ctx, utc_us(2026, 6, 14, 12, 0, 0)); /* four days of boundaries, in order */
        CHECK_STR(phases_seen(&ctx), "night day night day night day night day night day");
        check_last(&ctx, "day", "2026-06-14T05:00:00.000Z", "night", "2026-06-14T20:00:00.000Z");
        CHECK_INT(fake_realtime_timers(&ctx, NULL), 1);
        organism_plugin.fini(state);
        CHECK_INT(fake_realtime_timers(&ctx, NULL), 0);
        fake_ctx_done(&ctx);
}

static void test_three_phases(void) {
        make_sysroot(true);
        org_ctx ctx;
        ctx_setup(&ctx, "{\"phases\":{\"night\":\"22:00\",\"day\":\"07:00\",\"evening\":\"18:30\"}}",
                  utc_us(2026, 6, 10, 10, 0, 0));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "evening", "2026-06-10T16:30:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 16, 30, 0));
        check_last(&ctx, "evening", "2026-06-10T16:30:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 23, 0, 0));
        check_last(&ctx, "night", "2026-06-10T20:00:00.000Z", "day", "2026-06-11T05:00:00.000Z");
        CHECK_STR(phases_seen(&ctx), "day evening night");
        check_governors("schedutil"); /* no actions configured: hands off */
        CHECK_INT(count(&ctx, "gpu.cache.sync"), 0);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "status", "{}", &reply), 0);
        json_error_t e;
        json_t *o = json_loads(reply, 0, &e);
        CHECK(o);
        json_t *sched = json_object_get(o, "schedule");
        CHECK_INT(json_array_size(sched), 3);
        CHECK_STR(json_string_value(json_object_get(json_array_get(sched, 0), "phase")), "day");
        CHECK_STR(json_string_value(json_object_get(json_array_get(sched, 1), "start")), "18:30");
        CHECK(json_is_null(json_object_get(o, "override")));
        json_decref(o);
        free(reply);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
}

static void test_dst_days(void) {
        make_sysroot(true);
        org_ctx ctx;
        /* spring forward, 2026-03-29: the night is 8 h (22:00 CET -> 07:00 CEST) */
        ctx_setup(&ctx, CFG, utc_us(2026, 3, 28, 12, 0, 0));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-03-28T06:00:00.000Z", "night", "2026-03-28T21:00:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 3, 28, 21, 0, 0));
        check_last(&ctx, "night", "2026-03-28T21:00:00.000Z", "day", "2026-03-29T05:00:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 3, 29, 5, 0, 0));
        check_last(&ctx, "day", "2026-03-29T05:00:00.000Z", "night", "2026-03-29T20:00:00.000Z");
        CHECK_STR(phases_seen(&ctx), "day night day");
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);

        /* fall back, 2026-10-25: the night is 10 h (22:00 CEST -> 07:00 CET), and a
         * phase at 02:30, a time the clock reads twice, is entered once */
        ctx_setup(&ctx,
                  "{\"phases\":{\"day\":\"07:00\",\"night\":\"22:00\",\"deep\":\"02:30\"}," ACTIONS_CFG "}",
                  utc_us(2026, 10, 24, 19, 0, 0));
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-10-24T05:00:00.000Z", "night", "2026-10-24T20:00:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 10, 24, 20, 0, 0));
        check_last(&ctx, "night", "2026-10-24T20:00:00.000Z", "deep", "2026-10-25T00:30:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 10, 25, 0, 30, 0));
        check_last(&ctx, "deep", "2026-10-25T00:30:00.000Z", "day", "2026-10-25T06:00:00.000Z");
        fake_advance_realtime(&ctx, utc_us(2026, 10, 25, 1, 30, 0)); /* 02:30 CET, again */
        fake_advance_realtime(&ctx, utc_us(2026, 10, 25, 5, 59, 59));
        CHECK_STR(phases_seen(&ctx), "day night deep");
        fake_advance_realtime(&ctx, utc_us(2026, 10, 25, 6, 0, 0));
        check_last(&ctx, "day", "2026-10-25T06:00:00.000Z", "night", "2026-10-25T21:00:00.000Z");
        CHECK_STR(phases_seen(&ctx), "day night deep day");
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
}

static void test_clock_jumps(void) {
        make_sysroot(true);
        org_ctx ctx;
        /* 22:00:05 local: night */
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 20, 0, 5));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "night", "2026-06-10T20:00:00.000Z", "day", "2026-06-11T05:00:00.000Z");
        /* backwards across the boundary: day again, once */
        fake_clock_jump(&ctx, utc_us(2026, 6, 10, 19, 59, 0));
        CHECK_STR(phases_seen(&ctx), "night day");
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        check_governors("performance");
        uint64_t at = 0;
        CHECK_INT(fake_realtime_timers(&ctx, &at), 1); /* re-armed to the earlier boundary */
        CHECK_INT(at, utc_us(2026, 6, 10, 20, 0, 0));
        /* more jumps that stay in the phase publish nothing */
        fake_clock_jump(&ctx, utc_us(2026, 6, 10, 19, 59, 30));
        fake_clock_jump(&ctx, utc_us(2026, 6, 10, 12, 0, 0));
        CHECK_STR(phases_seen(&ctx), "night day");
        /* and the boundary comes again */
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 20, 0, 0));
        CHECK_STR(phases_seen(&ctx), "night day night");
        check_governors("powersave");

        /* forwards over several boundaries (day, night, day, night): one publish */
        fake_clock_jump(&ctx, utc_us(2026, 6, 12, 4, 0, 0)); /* 06:00 local, two days on: night */
        CHECK_STR(phases_seen(&ctx), "night day night");
        fake_clock_jump(&ctx, utc_us(2026, 6, 13, 10, 0, 0)); /* midday: day */
        CHECK_STR(phases_seen(&ctx), "night day night day");
        check_last(&ctx, "day", "2026-06-13T05:00:00.000Z", "night", "2026-06-13T20:00:00.000Z");
        CHECK_INT(fake_realtime_timers(&ctx, &at), 1);
        CHECK_INT(at, utc_us(2026, 6, 13, 20, 0, 0));
        /* a wake-up by the timer and by the clock-change notice at once: still one */
        fake_clock_jump(&ctx, utc_us(2026, 6, 13, 20, 0, 1));
        CHECK_STR(phases_seen(&ctx), "night day night day night");
        CHECK_INT(fake_realtime_timers(&ctx, NULL), 1);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
}

static void test_override_expiry_and_restart(void) {
        make_sysroot(true);
        org_ctx ctx;
        /* 10:00 local: day */
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 8, 0, 0));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_governors("performance");
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "{\"phase\":\"night\",\"for\":\"1h\"}", &reply), 0);
        CHECK_CONTAINS(reply, "\"phase\":\"night\"");
        CHECK_CONTAINS(reply, "\"until\":\"2026-06-10T09:00:00.000Z\"");
        free(reply);
        CHECK_STR(phases_seen(&ctx), "day night");
        check_last(&ctx, "night", "2026-06-10T08:00:00.000Z", "day", "2026-06-10T09:00:00.000Z");
        check_governors("powersave");
        uint64_t at = 0;
        CHECK_INT(fake_realtime_timers(&ctx, &at), 1);
        CHECK_INT(at, utc_us(2026, 6, 10, 9, 0, 0)); /* the expiry, sooner than 22:00 */
        char *kv = NULL;
        CHECK_INT(fake_host.kv_get(&ctx, "override", &kv), 0);
        CHECK_CONTAINS(kv, "\"phase\":\"night\"");
        free(kv);
        CHECK(fake_metric(&ctx, "circadian_override") == 1.0);
        CHECK(fake_metric(&ctx, "circadian_phase_index") == 1.0);
        CHECK(fake_metric(&ctx, "circadian_phase_active{phase=\"night\"}") == 1.0);

        /* a restart at 10:30 keeps it (the kv store survives the instance) */
        organism_plugin.fini(state);
        state = NULL;
        ctx.now_realtime_us = utc_us(2026, 6, 10, 8, 30, 0);
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "night", "2026-06-10T08:00:00.000Z", "day", "2026-06-10T09:00:00.000Z");
        CHECK_STR(phases_seen(&ctx), "day night night"); /* a restart publishes its start */
        /* 11:00: back to day, once, and the override is gone from the store */
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 9, 0, 0));
        CHECK_STR(phases_seen(&ctx), "day night night day");
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        check_governors("performance");
        kv = NULL;
        CHECK_INT(fake_host.kv_get(&ctx, "override", &kv), 0);
        CHECK_STR(kv, "null");
        free(kv);
        CHECK(fake_metric(&ctx, "circadian_override") == 0.0);
        CHECK_INT(fake_realtime_timers(&ctx, &at), 1);
        CHECK_INT(at, utc_us(2026, 6, 10, 20, 0, 0));

        /* an override of the phase in force publishes nothing; without "for" it holds
         * across boundaries until cleared */
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "\"day\"", &reply), 0);
        CHECK_CONTAINS(reply, "\"override\":{");
        CHECK_CONTAINS(reply, "\"next\":null");
        free(reply);
        CHECK_STR(phases_seen(&ctx), "day night night day");
        fake_advance_realtime(&ctx, utc_us(2026, 6, 11, 12, 0, 0));
        CHECK_STR(phases_seen(&ctx), "day night night day");
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "clear", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "\"override\":null");
        free(reply);
        CHECK_STR(phases_seen(&ctx), "day night night day");
        kv = NULL;
        CHECK_INT(fake_host.kv_get(&ctx, "override", &kv), 0);
        CHECK_STR(kv, "null");
        free(kv);

        /* an override that expires while stopped is dropped at start */
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "{\"phase\":\"night\",\"for\":\"30m\"}", &reply), 0);
        free(reply);
        organism_plugin.fini(state);
        ctx.now_realtime_us = utc_us(2026, 6, 11, 13, 0, 0);
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-06-11T05:00:00.000Z", "night", "2026-06-11T20:00:00.000Z");
        kv = NULL;
        CHECK_INT(fake_host.kv_get(&ctx, "override", &kv), 0);
        CHECK_STR(kv, "null");
        free(kv);

        /* bad requests are errors, and change nothing */
        size_t before = ctx.n_published;
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "{\"phase\":\"dusk\"}", &reply), 0);
        CHECK_CONTAINS(reply, "\"error\":\"unknown phase \\\"dusk\\\" (phases: day, night)\"");
        free(reply);
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "{\"phase\":\"night\",\"for\":\"2 hours\"}", &reply), 0);
        CHECK_CONTAINS(reply, "\"error\":\"bad duration");
        free(reply);
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "{\"phase\":\"night\",\"for\":7200}", &reply), 0);
        CHECK_CONTAINS(reply, "\"error\"");
        free(reply);
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "set", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "\"error\"");
        free(reply);
        CHECK_INT(ctx.n_published, before + 4); /* the four answers, no phase */
        CHECK_INT(fake_call(&organism_plugin, state, &ctx, "nosuchverb", "{}", &reply), -EOPNOTSUPP);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);

        /* a persisted override of a phase that no longer exists is dropped */
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 8, 0, 0));
        CHECK_INT(fake_host.kv_set(&ctx, "override", "{\"phase\":\"siesta\",\"since_us\":1,\"until_us\":0}"), 0);
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        kv = NULL;
        CHECK_INT(fake_host.kv_get(&ctx, "override", &kv), 0);
        CHECK_STR(kv, "null");
        free(kv);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
}

static void test_verify_dry_run_and_no_present(void) {
        make_sysroot(true);
        org_ctx ctx;
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 8, 0, 0));
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        CHECK_CONTAINS(v, "\"what\":\"cpu3 scaling_governor\"");
        free(v);
        write_text("/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor", "ondemand\n");
        CHECK_INT(organism_plugin.verify(state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":false");
        CHECK_CONTAINS(v, "{\"what\":\"cpu2 scaling_governor\",\"want\":\"performance\",\"have\":\"ondemand\",\"ok\":false}");
        free(v);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);

        /* dry_run: the phase changes, the governors do not */
        make_sysroot(true);
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 8, 0, 0));
        ctx.dry_run = true;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        fake_advance_realtime(&ctx, utc_us(2026, 6, 10, 20, 0, 0));
        CHECK_STR(phases_seen(&ctx), "day night");
        check_governors("schedutil");
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);

        /* no /sys/devices/system/cpu/present: the CPUs are probed */
        make_sysroot(false);
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 8, 0, 0));
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_governors("performance");
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);

        /* no cpufreq at all (a VM): nothing written, nothing created; verify says so */
        char empty[] = "/tmp/circadian-empty-XXXXXX";
        CHECK(mkdtemp(empty));
        ctx_setup(&ctx, CFG, utc_us(2026, 6, 10, 8, 0, 0));
        free(ctx.sysroot);
        ctx.sysroot = strdup(empty);
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        check_last(&ctx, "day", "2026-06-10T05:00:00.000Z", "night", "2026-06-10T20:00:00.000Z");
        CHECK_INT(organism_plugin.verify(state, &v), 0);
        CHECK_CONTAINS(v, "\"have\":\"no cpufreq\"");
        free(v);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
        CHECK_INT(rmdir(empty), 0); /* still empty */
}

static void test_descriptor(void) {
        CHECK_STR(organism_plugin.name, "circadian");
        bool set = false, clear = false, status = true;
        for (const org_verb *v = organism_plugin.verbs; v->name; v++) {
                if (strcmp(v->name, "set") == 0)
                        set = v->mutating;
                if (strcmp(v->name, "clear") == 0)
                        clear = v->mutating;
                if (strcmp(v->name, "status") == 0)
                        status = v->mutating;
        }
        CHECK(set && clear && !status);
        CHECK_STR(organism_plugin.config_map[0].key, "phases");
        CHECK_INT(organism_plugin.config_map[0].type, ORG_CFG_STRING_DICT);
        CHECK(organism_plugin.verify);
        CHECK(!organism_plugin.tick); /* woken by its timer only */
}

int main(void) {
        tz_paris();
        CHECK(mkdtemp(sysroot));
        RUN(test_descriptor);
        RUN(test_bad_config_rejected);
        RUN(test_boundaries_exact);
        RUN(test_three_phases);
        RUN(test_dst_days);
        RUN(test_clock_jumps);
        RUN(test_override_expiry_and_restart);
        RUN(test_verify_dry_run_and_no_present);
        CHECK_INT(nftw(sysroot, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
        return 0;
}
