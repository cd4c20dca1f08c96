/* test-zfs.c — the whole zfs plugin against the fake host, whose exec stays in flight
 * until the test answers it (a tiny model of zfs/zpool below), with the injectable wall
 * clock, in Europe/Paris: one command in flight at a time, the catch-up once from a
 * persisted last run and none after a restart inside the window, a clock set
 * backwards that never repeats a slot, a daily job across both 2026 DST changes run
 * exactly once a day, health alerts on change/repeat/clear, configs init refuses. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "fakehost.h"
#include "test.h"

extern const org_plugin organism_plugin;
static const org_plugin *P = &organism_plugin;

static const char *health = "ONLINE";
static unsigned snapshots, in_flight_max;

static int64_t utc(int y, int mo, int d, int h, int mi, int s) {
        struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = s};
        return (int64_t)timegm(&tm);
}

static bool starts(const fake_exec *x, const char *a0, const char *a1) {
        return x->argv[0] && x->argv[1] && strcmp(x->argv[0], a0) == 0 && strcmp(x->argv[1], a1) == 0;
}

static bool has_arg(const fake_exec *x, const char *a) {
        for (size_t i = 0; i < 16 && x->argv[i]; i++)
                if (strcmp(x->argv[i], a) == 0)
                        return true;
        return false;
}

/* Answers every command in flight, as the real tools would for pool "nvme" with
 * datasets nvme/organism{,/a}. Returns how many were answered. */
static unsigned drain(org_ctx *ctx) {
        unsigned n = 0;
        while (ctx->n_pending) {
                if (ctx->n_pending > in_flight_max)
                        in_flight_max = (unsigned)ctx->n_pending;
                const fake_exec *x = &ctx->execs[ctx->n_execs - 1];
                char buf[512] = "";
                if (starts(x, "zpool", "list"))
                        snprintf(buf, sizeof buf, "nvme\t%s\t1000\t250\t750\t25\t3\n", health);
                else if (starts(x, "zpool", "status"))
                        snprintf(buf, sizeof buf, "  pool: nvme\n state: %s\n  scan: none requested\nconfig:\n\n"
                                                  "errors: No known data errors\n", health);
                else if (starts(x, "zpool", "get"))
                        snprintf(buf, sizeof buf, "nvme\tautotrim\ton\tlocal\n");
                else if (starts(x, "zfs", "list") && !has_arg(x, "snapshot"))
                        snprintf(buf, sizeof buf, "nvme/organism\nnvme/organism/a\n");
                else if (starts(x, "zfs", "snapshot"))
                        snapshots++;
                n++;
                CHECK(fake_exec_complete(ctx, 0, buf));
        }
        return n;
}

#define CFG_JOBS                                                                                                 \
        "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"6h\",\"every\":21600000,\"keep\":2,"          \
        "\"datasets\":[\"nvme/organism\"],\"recursive\":true},{\"tag\":\"night\",\"at\":\"02:30\",\"keep\":3,"  \
        "\"datasets\":[\"nvme/organism\"]}],\"scrub\":{\"enabled\":false},\"trim\":{\"enabled\":false},"        \
        "\"alert_repeat\":10000}"

static void ctx_setup(org_ctx *ctx, const char *cfg, int64_t now) {
        fake_ctx_init(ctx, "zfs", cfg);
        ctx->now_realtime_us = (uint64_t)now * 1000000ULL;
        ctx->now_monotonic_us = 1000000;
        ctx->exec_deferred = true;
}

static void *start(org_ctx *ctx) {
        void *st = NULL;
        CHECK_INT(P->init(&fake_host, ctx, &st), 0);
        drain(ctx);
        return st;
}

static void test_catch_up_restart_and_clock_back(void) {
        org_ctx ctx;
        int64_t now = utc(2026, 12, 1, 13, 0, 0);
        ctx_setup(&ctx, CFG_JOBS, now);
        /* down across two 6h windows: the persisted last run is 13 h old */
        char old[32];
        snprintf(old, sizeof old, "%lld", (long long)(now - 13 * 3600));
        CHECK_INT(fake_host.kv_set(&ctx, "last_run.snap.6h", old), 0);
        snapshots = 0;
        void *st = start(&ctx);
        CHECK_INT(snapshots, 1); /* once, not twice; "night" was never seen: baseline only */
        CHECK_INT(in_flight_max, 1);
        char *v = NULL;
        CHECK_INT(fake_host.kv_get(&ctx, "last_run.snap.6h", &v), 0);
        CHECK_INT(strtoll(v, NULL, 10), now);
        free(v);
        P->fini(st);

        /* a restart inside the window: nothing */
        ctx.now_realtime_us += 600 * 1000000ULL;
        st = start(&ctx);
        CHECK_INT(snapshots, 1);

        /* the next slot (18:00 UTC) by the wall-clock timer, once */
        fake_advance_realtime(&ctx, (uint64_t)utc(2026, 12, 1, 18, 0, 0) * 1000000ULL);
        drain(&ctx);
        CHECK_INT(snapshots, 2);
        /* the clock set back 3 h (to 15:00): 18:00 does not come again */
        fake_clock_jump(&ctx, (uint64_t)utc(2026, 12, 1, 15, 0, 0) * 1000000ULL);
        drain(&ctx);
        fake_advance_realtime(&ctx, (uint64_t)utc(2026, 12, 1, 18, 30, 0) * 1000000ULL);
        drain(&ctx);
        CHECK_INT(snapshots, 2);
        /* and the one after it runs */
        fake_advance_realtime(&ctx, (uint64_t)utc(2026, 12, 2, 0, 0, 1) * 1000000ULL);
        drain(&ctx);
        CHECK_INT(snapshots, 3);
        CHECK_INT(in_flight_max, 1);
        /* a run still going when the next slot passes: caught up once when it ends */
        fake_advance_realtime(&ctx, (uint64_t)utc(2026, 12, 2, 6, 0, 0) * 1000000ULL);
        CHECK(ctx.n_pending == 1); /* its zfs list, unanswered */
        fake_advance_realtime(&ctx, (uint64_t)utc(2026, 12, 2, 12, 0, 1) * 1000000ULL);
        drain(&ctx);
        CHECK_INT(snapshots, 6); /* night (01:30 UTC), 6h at 06:00, and 6h caught up at 12:00:01 */
        fake_advance_realtime(&ctx, (uint64_t)utc(2026, 12, 2, 17, 59, 0) * 1000000ULL);
        drain(&ctx);
        CHECK_INT(snapshots, 6);
        P->fini(st);
        fake_ctx_done(&ctx);
}

/* The "night" job (02:30 local) over days that include both DST changes: one run a day. */
static void test_dst_once_a_day(void) {
        const char *cfg = "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"night\",\"at\":\"02:30\","
                          "\"keep\":3,\"datasets\":[\"nvme/organism\"]}],\"scrub\":{\"enabled\":false},"
                          "\"trim\":{\"enabled\":false}}";
        int64_t starts_at[] = {utc(2026, 3, 27, 12, 0, 0), utc(2026, 10, 23, 12, 0, 0)};
        for (size_t k = 0; k < 2; k++) {
                org_ctx ctx;
                ctx_setup(&ctx, cfg, starts_at[k]);
                snapshots = 0;
                void *st = start(&ctx);
                CHECK_INT(snapshots, 0);
                /* walk 4 days in 10-minute steps; each timer fires at its instant */
                for (int64_t t = starts_at[k]; t <= starts_at[k] + 4 * 86400; t += 600) {
                        fake_advance_realtime(&ctx, (uint64_t)t * 1000000ULL);
                        drain(&ctx);
                }
                CHECK_INT(snapshots, 4);
                P->fini(st);
                fake_ctx_done(&ctx);
        }
}

static unsigned count(org_ctx *ctx, const char *subject) {
        unsigned n = 0;
        for (size_t i = 0; i < ctx->n_published; i++)
                if (strcmp(ctx->published[i].subject, subject) == 0)
                        n++;
        return n;
}

static void test_alert_change_repeat_cleared(void) {
        org_ctx ctx;
        ctx_setup(&ctx, CFG_JOBS, utc(2026, 12, 1, 13, 0, 0));
        health = "ONLINE";
        void *st = start(&ctx);
        CHECK(fake_last_published(&ctx, "sys.health"));
        CHECK_INT(count(&ctx, "alert.zfs.nvme"), 0);
        health = "SUSPENDED";
        fake_fire_timers(&ctx); /* health and properties passes */
        drain(&ctx);
        CHECK_INT(count(&ctx, "alert.zfs.nvme"), 1);
        json_t *o = json_loads(fake_last_published(&ctx, "alert.zfs.nvme"), 0, NULL);
        CHECK_STR(json_string_value(json_object_get(o, "health")), "SUSPENDED");
        CHECK(json_is_false(json_object_get(o, "repeat")));
        json_decref(o);
        /* unchanged, before alert_repeat (10 s): not again */
        ctx.now_monotonic_us += 5 * 1000000ULL;
        fake_fire_timers(&ctx);
        drain(&ctx);
        CHECK_INT(count(&ctx, "alert.zfs.nvme"), 1);
        ctx.now_monotonic_us += 6 * 1000000ULL;
        fake_fire_timers(&ctx);
        drain(&ctx);
        CHECK_INT(count(&ctx, "alert.zfs.nvme"), 2);
        health = "ONLINE";
        fake_fire_timers(&ctx);
        drain(&ctx);
        CHECK_INT(count(&ctx, "alert.zfs.nvme.cleared"), 1);
        fake_fire_timers(&ctx);
        drain(&ctx);
        CHECK_INT(count(&ctx, "alert.zfs.nvme.cleared"), 1);
        CHECK_INT(count(&ctx, "alert.zfs.nvme"), 2);
        /* a failing zpool list: counted, no alert, no state lost */
        fake_fire_timers(&ctx);
        while (ctx.n_pending)
                CHECK(fake_exec_complete(&ctx, 1, ""));
        CHECK(fake_metric(&ctx, "zfs_health_failures_total") >= 1);
        CHECK_INT(count(&ctx, "alert.zfs.nvme"), 2);
        P->fini(st);
        fake_ctx_done(&ctx);
}

static void test_refused_configs(void) {
        const char *bad[] = {
                "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"x\",\"every\":3600000,\"keep\":0,"
                "\"datasets\":[\"nvme/a\"]}]}",
                "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"x\",\"every\":3600000,\"keep\":1,"
                "\"datasets\":[\"other/a\"]}]}",
                "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"x\",\"every\":3600000,\"at\":\"03:00\","
                "\"keep\":1,\"datasets\":[\"nvme/a\"]}]}",
                "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"x\",\"keep\":1,\"datasets\":[\"nvme/a\"]}]}",
                "{\"pools\":{\"fast\":\"nvme\"},\"snapshots\":[{\"tag\":\"a b\",\"every\":3600000,\"keep\":1,"
                "\"datasets\":[\"nvme/a\"]}]}",
                "{\"pools\":{\"fast\":\"nvme\"},\"properties\":{\"nvme/tmp\":{\"sync\":\"disabled\"}}}",
                "{\"pools\":{\"fast\":\"nvme/x\"}}",
                "{\"pools\":{\"fast\":\"nvme\"},\"scrub\":{\"day_of_month\":31}}",
                NULL,
        };
        for (size_t i = 0; bad[i]; i++) {
                org_ctx ctx;
                ctx_setup(&ctx, bad[i], utc(2026, 12, 1, 13, 0, 0));
                void *st = NULL;
                int r = P->init(&fake_host, &ctx, &st);
                if (r != -EINVAL)
                        fprintf(stderr, "config %zu: init returned %d\n", i, r);
                CHECK_INT(r, -EINVAL);
                CHECK_INT(ctx.n_execs, 0);
                fake_ctx_done(&ctx);
        }
        /* sync: disabled with unsafe is fine */
        org_ctx ctx;
        ctx_setup(&ctx, "{\"pools\":{\"scratch\":\"zr\"},\"properties\":{\"zr/tmp\":{\"sync\":\"disabled\","
                        "\"unsafe\":true}}}",
                  utc(2026, 12, 1, 13, 0, 0));
        void *st = NULL;
        CHECK_INT(P->init(&fake_host, &ctx, &st), 0);
        while (ctx.n_pending)
                CHECK(fake_exec_complete(&ctx, 0, ""));
        P->fini(st);
        fake_ctx_done(&ctx);
}

/* fini with commands in flight and queued: every chain ends, nothing leaks (ASan). */
static void test_fini_in_flight(void) {
        org_ctx ctx;
        ctx_setup(&ctx, CFG_JOBS, utc(2026, 12, 1, 13, 0, 0));
        void *st = NULL;
        CHECK_INT(P->init(&fake_host, &ctx, &st), 0);
        char *reply = NULL;
        CHECK_INT(P->call(st, "snapshot", &(org_msg){.subject = "snapshot", .reply = "_r", .data = "\"6h\"", .len = 4}),
                  0);
        CHECK_INT(P->call(st, "layout", &(org_msg){.subject = "layout", .reply = "_r", .data = "{}", .len = 2}), 0);
        CHECK(ctx.n_pending == 1); /* one in flight, the rest queued */
        P->fini(st);
        free(reply);
        fake_ctx_done(&ctx);
}

int main(void) {
        if (access("/usr/share/zoneinfo/Europe/Paris", R_OK) == 0)
                setenv("TZ", "Europe/Paris", 1);
        else
                setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3", 1);
        tzset();
        test_catch_up_restart_and_clock_back();
        test_dst_once_a_day();
        test_alert_change_repeat_cleared();
        test_refused_configs();
        test_fini_in_flight();
        printf("ok\n");
        return 0;
}
