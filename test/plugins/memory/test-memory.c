/* test-memory.c — the memory plugin ("membrain") against the fake host and a private
 * copy of the fixture sysroots: the /proc parsers, the hysteresis on MemAvailable,
 * phase changes from the bus, the three levers (ARC file, swappiness file, balloon via
 * qm), read-before-write, dry_run, a tick arriving while qm is in flight, qm failures
 * and back-off, verify, the verbs, save/restore, and the PSI trigger where the kernel
 * has one. Argument 1 is the folder of fixture sysroots. */
#include <errno.h>
#include <fcntl.h>

#include <jansson.h>

#include "fixture.h"
#include "memory.h"
#include "test.h"

extern const org_plugin organism_plugin;

#define GIB_KIB (1024ULL * 1024)
#define ARC_MAX "/sys/module/zfs/parameters/zfs_arc_max"
#define SWAPPINESS "/proc/sys/vm/swappiness"

static const char *fixtures;

/* The argv of exec i joined by spaces. */
static const char *exec_line(org_ctx *ctx, size_t i) {
        static char line[256];
        line[0] = '\0';
        for (size_t k = 0; k < 16 && ctx->execs[i].argv[k]; k++) {
                strncat(line, k ? " " : "", sizeof line - strlen(line) - 1);
                strncat(line, ctx->execs[i].argv[k], sizeof line - strlen(line) - 1);
        }
        return line;
}

static size_t count_published(org_ctx *ctx, const char *subject) {
        size_t n = 0;
        for (size_t i = 0; i < ctx->n_published; i++)
                if (strcmp(ctx->published[i].subject, subject) == 0)
                        n++;
        return n;
}

static json_t *call_json(void *state, org_ctx *ctx, const char *verb, const char *args) {
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, state, ctx, verb, args, &reply), 0);
        json_error_t e;
        json_t *o = json_loads(reply, 0, &e);
        CHECK(o);
        free(reply);
        return o;
}

typedef struct env {
        org_ctx ctx;
        const char *root;
        void *state;
} env;

/* deferred: qm calls wait for fake_exec_complete(), as real ones take their time */
static void env_start(env *e, const char *fixture, const char *config, bool deferred) {
        fake_ctx_init(&e->ctx, "memory", config);
        e->root = fixture ? strdup(fx_copy(fixtures, fixture)) : NULL;
        e->ctx.sysroot = e->root ? strdup(e->root) : NULL;
        e->ctx.exec_out = "status: running\n";
        e->ctx.exec_deferred = deferred;
        e->state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &e->ctx, &e->state), 0);
}

static void env_stop(env *e) {
        organism_plugin.fini(e->state);
        fake_ctx_done(&e->ctx);
        if (e->root) {
                fx_remove(e->root);
                free((char *)e->root);
        }
}

static void test_parsers(void) {
        memory_readings r = {0};
        CHECK_INT(memory_parse_meminfo("MemTotal: 100 kB\nMemAvailable:   2048 kB\nSwapFree: 4 kB\n", &r), 0);
        CHECK(r.has_mem && r.mem_available == 2048 * 1024ULL && r.swap_free == 4096 && r.mem_total == 102400);
        memset(&r, 0, sizeof r);
        CHECK_INT(memory_parse_meminfo("MemTotal: 100 kB\nMemFree: 3 kB\n", &r), -EBADMSG);
        CHECK(!r.has_mem);
        CHECK_INT(memory_parse_meminfo("MemAvailable: lots kB\n", &r), -EBADMSG);
        CHECK_INT(memory_parse_meminfo("", &r), -EBADMSG);
        /* a prefix of a key is not the key */
        CHECK_INT(memory_parse_meminfo("MemAvailableX: 5 kB\n", &r), -EBADMSG);

        CHECK_INT(memory_parse_vmstat("pgfault 1\npswpin 10\npswpout 20\n", &r), 0);
        CHECK(r.pswpin == 10 && r.pswpout == 20);
        CHECK_INT(memory_parse_vmstat("pswpin 10\n", &r), -EBADMSG);

        memset(&r, 0, sizeof r);
        CHECK_INT(memory_parse_arcstats("13 1 0x01 1 2 3 4\nname type data\nhits 4 75\nmisses 4 25\n"
                                        "c 4 100\nc_max 4 200\nsize 4 150\n",
                                        &r),
                  0);
        CHECK(r.arc_size == 150 && r.arc_c == 100 && r.arc_c_max == 200 && r.arc_hits == 75 && r.arc_misses == 25);
        CHECK(r.arc_hit_ratio > 0.749 && r.arc_hit_ratio < 0.751);
        CHECK_INT(memory_parse_arcstats("name type data\nhits 4 1\n", &r), -EBADMSG);

        memset(&r, 0, sizeof r);
        CHECK_INT(memory_parse_psi("some avg10=1.50 avg60=0.00 avg300=0.00 total=42\n"
                                   "full avg10=0.25 avg60=0.00 avg300=0.00 total=7\n",
                                   &r),
                  0);
        CHECK(r.psi_some_avg10 > 1.49 && r.psi_some_avg10 < 1.51 && r.psi_some_total == 42);
        CHECK(r.psi_full_avg10 > 0.24 && r.psi_full_avg10 < 0.26 && r.psi_full_total == 7);
        CHECK_INT(memory_parse_psi("bogus\n", &r), -EBADMSG);

        uint64_t v;
        CHECK_INT(memory_parse_u64(" 18446744073709551615\n", &v), 0);
        CHECK(v == UINT64_MAX);
        CHECK_INT(memory_parse_u64("18446744073709551616", &v), -ERANGE);
        CHECK_INT(memory_parse_u64("-1", &v), -EINVAL);
}

static void test_descriptor(void) {
        CHECK_INT(organism_plugin.abi_version, ORG_PLUGIN_ABI_VERSION);
        CHECK_STR(organism_plugin.name, "memory");
        const char *want[] = {"vmid", "mem_low", "mem_ok", "arc_floor", "profiles"};
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
                bool found = false;
                for (const org_config_entry *c = organism_plugin.config_map; c->key; c++)
                        found = found || strcmp(c->key, want[i]) == 0;
                CHECK(found);
        }
        size_t n = 0;
        for (const org_verb *v = organism_plugin.verbs; v->name; v++, n++)
                CHECK(!v->mutating);
        CHECK_INT(n, 2);
}

/* What agentd would hand the plugin for `config: {vmid: 100}` after normalising. */
#define CONFIG_32G                                                                                                   \
        "{\"vmid\":100,\"mem_low\":3221225472,\"mem_ok\":6442450944,\"arc_floor\":2147483648,"                       \
        "\"profiles\":{\"day\":{\"arc_max\":8589934592,\"balloon_mb\":24576,\"swappiness\":10},"                     \
        "\"night\":{\"arc_max\":4294967296,\"balloon_mb\":16384,\"swappiness\":10}},\"alert_profile\":\"night\","   \
        "\"psi_trigger\":true,\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":30000,"      \
        "\"journal_keep\":10000}"

static void test_hysteresis_and_levers(void) {
        env e;
        env_start(&e, "host32g", CONFIG_32G, false);
        CHECK_INT(e.ctx.n_subscriptions, 1);
        CHECK_STR(e.ctx.subscriptions[0], "circadian.phase");
        CHECK_INT(e.ctx.n_ios, 0); /* a fixture sysroot: no PSI trigger */

        /* the first evaluation right after start: day profile, MemAvailable 12 GiB */
        fake_fire_timers(&e.ctx);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");
        CHECK_STR(fx_read(e.root, SWAPPINESS), "10");
        CHECK_INT(e.ctx.n_execs, 3); /* read (config, status) before the write */
        CHECK_STR(exec_line(&e.ctx, 0), "qm config 100");
        CHECK(!e.ctx.execs[0].mutating);
        CHECK_STR(exec_line(&e.ctx, 1), "qm status 100 --verbose");
        CHECK(!e.ctx.execs[1].mutating);
        CHECK_STR(exec_line(&e.ctx, 2), "qm balloon 100 24576");
        CHECK(e.ctx.execs[2].mutating);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 3);
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"lever\":\"balloon\"");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"ts\":\"");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "sys.mem.state"), "\"mem_available\":12884901888");
        CHECK(fake_metric(&e.ctx, "mem_available_bytes") == 12884901888.0);
        CHECK(fake_metric(&e.ctx, "arc_size_bytes") == 7516192768.0);
        CHECK(fake_metric(&e.ctx, "arc_target_bytes") == 8589934592.0);
        CHECK(fake_metric(&e.ctx, "membrain_actions_total") == 3);
        CHECK(fake_metric(&e.ctx, "mem_alert") == 0);

        /* a tick with nothing new: nothing written, no qm */
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 3);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 3);
        CHECK_INT(count_published(&e.ctx, "sys.mem.state"), 2);

        /* swap rates come from two readings */
        fx_write(e.root, "/proc/vmstat", "pswpin 120550\npswpout 310220\n");
        e.ctx.now_monotonic_us += 2000000;
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK(fake_metric(&e.ctx, "swap_in_per_second") == 50.0);
        CHECK(fake_metric(&e.ctx, "swap_out_per_second") == 0.0);

        /* low memory: night profile and an alert */
        fx_mem_available(e.root, 2 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        CHECK_INT(e.ctx.n_execs, 6);
        CHECK_STR(exec_line(&e.ctx, 5), "qm balloon 100 16384");
        CHECK_INT(count_published(&e.ctx, "sys.mem.alert"), 1);
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"reason\":\"mem_low\"");
        CHECK(fake_metric(&e.ctx, "mem_alert") == 1);
        char *alert = NULL;
        CHECK_INT(fake_host.kv_get(&e.ctx, "alert", &alert), 0);
        CHECK_STR(alert, "1");
        free(alert);

        /* still low: the alert is not repeated and nothing moves */
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(count_published(&e.ctx, "sys.mem.alert"), 1);
        CHECK_INT(e.ctx.n_execs, 6);

        /* inside the band: hold the night profile */
        fx_mem_available(e.root, 4608 * 1024);
        size_t actions = count_published(&e.ctx, "membrain.action");
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        CHECK_INT(e.ctx.n_execs, 6);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), actions);

        /* above mem_ok: back to the day profile */
        fx_mem_available(e.root, 7 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");
        CHECK_STR(exec_line(&e.ctx, 8), "qm balloon 100 24576");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"reason\":\"mem_ok\"");
        CHECK(fake_metric(&e.ctx, "mem_alert") == 0);

        /* inside the band from above: hold the day profile */
        fx_mem_available(e.root, 4608 * 1024);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");
        CHECK_INT(e.ctx.n_execs, 9);

        /* someone changed the ARC ceiling behind our back: verify says so, a tick fixes it */
        fx_write(e.root, ARC_MAX, "1234\n");
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":false");
        CHECK_CONTAINS(v, "\"have\":\"1234\"");
        free(v);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"reason\":\"reconcile\"");
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        free(v);
        env_stop(&e);
}

static void test_phase(void) {
        env e;
        env_start(&e, "host32g", CONFIG_32G, false);
        fake_fire_timers(&e.ctx);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");

        /* the phase change itself applies the night profile, no tick needed */
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase",
                               "{\"phase\":\"night\",\"since\":\"2026-01-01T22:00:00Z\",\"next\":\"day\"}"),
                  0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        CHECK_STR(exec_line(&e.ctx, e.ctx.n_execs - 1), "qm balloon 100 16384");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"reason\":\"phase night\"");

        /* an unknown phase keeps the current one and is logged once */
        unsigned logs = e.ctx.logs;
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"dusk\"}"), 0);
        CHECK_INT(e.ctx.logs, logs + 1);
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"dusk\"}"), 0);
        CHECK_INT(e.ctx.logs, logs + 1);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        /* garbage is ignored */
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase", "{not json"), 0);
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":3}"), 0);

        json_t *st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK_STR(json_string_value(json_object_get(st, "phase")), "night");
        CHECK_STR(json_string_value(json_object_get(st, "phase_source")), "bus");
        json_decref(st);

        /* under alert, day does not raise the levers */
        fx_mem_available(e.root, 1 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        size_t n = e.ctx.n_execs;
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"day\"}"), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        CHECK_INT(e.ctx.n_execs, n);
        /* and when the alert ends, day it is */
        fx_mem_available(e.root, 10 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");
        env_stop(&e);
}

static void test_custom_profiles_and_floor(void) {
        env e;
        /* a third phase inherits from day; night's ARC under the floor is raised to it */
        env_start(&e, "host32g",
                  "{\"mem_low\":3221225472,\"mem_ok\":6442450944,\"arc_floor\":5368709120,"
                  "\"profiles\":{\"day\":{\"swappiness\":20},\"night\":{\"arc_max\":1073741824},"
                  "\"evening\":{\"arc_max\":6442450944}},\"alert_profile\":\"night\",\"psi_trigger\":true,"
                  "\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":30000,\"journal_keep\":10}",
                  false);
        fake_fire_timers(&e.ctx);
        CHECK_STR(fx_read(e.root, ARC_MAX), "8589934592");
        CHECK_STR(fx_read(e.root, SWAPPINESS), "20");
        CHECK_INT(e.ctx.n_execs, 0); /* no vmid: no balloon lever */
        fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"evening\"}");
        CHECK_STR(fx_read(e.root, ARC_MAX), "6442450944");
        CHECK_STR(fx_read(e.root, SWAPPINESS), "20");
        fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"night\"}");
        CHECK_STR(fx_read(e.root, ARC_MAX), "5368709120");
        CHECK_STR(fx_read(e.root, SWAPPINESS), "10");
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        CHECK_CONTAINS(v, "no vmid");
        free(v);
        env_stop(&e);

        /* bad configs are refused at init */
        const char *bad[] = {
                "{\"mem_low\":6442450944,\"mem_ok\":3221225472,\"arc_floor\":0,\"alert_profile\":\"night\","
                "\"psi_trigger\":false,\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":1,"
                "\"journal_keep\":1}",
                "{\"mem_low\":1,\"mem_ok\":2,\"arc_floor\":0,\"alert_profile\":\"nope\",\"psi_trigger\":false,"
                "\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":1,\"journal_keep\":1}",
                "{\"mem_low\":1,\"mem_ok\":2,\"arc_floor\":0,\"alert_profile\":\"night\",\"psi_trigger\":false,"
                "\"profiles\":{\"day\":{\"swappiness\":300}},\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,"
                "\"qm_timeout\":1,\"journal_keep\":1}",
                "{\"vmid\":0,\"mem_low\":1,\"mem_ok\":2,\"arc_floor\":0,\"alert_profile\":\"night\","
                "\"psi_trigger\":false,\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":1,"
                "\"journal_keep\":1}",
                "{\"mem_low\":1,\"mem_ok\":2,\"arc_floor\":0,\"alert_profile\":\"night\",\"psi_trigger\":false,"
                "\"psi_stall\":2000,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":1,\"journal_keep\":1}",
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                org_ctx ctx;
                fake_ctx_init(&ctx, "memory", bad[i]);
                void *state = NULL;
                CHECK(organism_plugin.init(&fake_host, &ctx, &state) < 0);
                CHECK(!state);
                fake_ctx_done(&ctx);
        }
}

static void test_nozfs_sources_logged_once(void) {
        env e;
        env_start(&e, "nozfs", CONFIG_32G, false);
        fake_fire_timers(&e.ctx);
        CHECK_STR(fx_read(e.root, SWAPPINESS), "10");
        CHECK(!fx_read(e.root, ARC_MAX));
        CHECK_STR(exec_line(&e.ctx, 2), "qm balloon 100 24576"); /* the balloon does not need ZFS */
        unsigned logs = e.ctx.logs;
        for (int i = 0; i < 5; i++)
                CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.logs, logs); /* absent arcstats, zfs_arc_max, PSI: said once, not per tick */
        json_t *st = call_json(e.state, &e.ctx, "status", "{}");
        json_t *lev = json_object_get(st, "levers");
        CHECK(json_is_false(json_object_get(json_object_get(lev, "arc_max"), "enabled")));
        CHECK(json_is_true(json_object_get(json_object_get(lev, "swappiness"), "enabled")));
        CHECK(json_is_null(json_object_get(json_object_get(st, "readings"), "arc_size")));
        CHECK(json_is_false(json_object_get(json_object_get(st, "sources"), ARC_MAX)));
        CHECK(json_is_false(json_object_get(st, "psi_trigger")));
        json_decref(st);
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        CHECK_CONTAINS(v, "absent (lever disabled)");
        free(v);
        /* low memory still moves the levers that exist */
        fx_write(e.root, "/proc/meminfo", "MemTotal: 16303480 kB\nMemAvailable: 1048576 kB\n");
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(exec_line(&e.ctx, e.ctx.n_execs - 1), "qm balloon 100 16384");
        /* the ARC parameter file appears (zfs loaded): the lever comes back, said once */
        fx_write(e.root, ARC_MAX, "0\n");
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        env_stop(&e);
}

static void test_dry_run(void) {
        env e;
        env_start(&e, "host32g", CONFIG_32G, false);
        e.ctx.dry_run = true;
        fake_fire_timers(&e.ctx);
        CHECK_STR(fx_read(e.root, ARC_MAX), "17179869184");
        CHECK_STR(fx_read(e.root, SWAPPINESS), "60");
        CHECK_INT(e.ctx.n_execs, 3);
        CHECK_STR(exec_line(&e.ctx, 2), "qm balloon 100 24576");
        CHECK(e.ctx.execs[2].mutating); /* the host skips it under dry_run */
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 3);
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"dry_run\":true");
        /* said once: the next ticks do not repeat it */
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 3);
        CHECK_INT(e.ctx.n_execs, 3);
        json_t *st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK(json_is_true(json_object_get(st, "dry_run")));
        CHECK_INT(json_integer_value(json_object_get(json_object_get(json_object_get(st, "levers"), "arc_max"),
                                                     "would_set")),
                  8589934592LL);
        json_decref(st);
        /* a new want is announced again */
        fx_mem_available(e.root, 1 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 5); /* ARC and balloon; swappiness is 10 in both */
        CHECK_STR(fx_read(e.root, ARC_MAX), "17179869184");
        env_stop(&e);
}

static void test_balloon_in_flight_and_stopped(void) {
        env e;
        env_start(&e, "host32g", CONFIG_32G, true);
        fake_fire_timers(&e.ctx);
        CHECK_INT(e.ctx.n_execs, 1);
        CHECK_STR(exec_line(&e.ctx, 0), "qm config 100");
        /* ticks while qm config runs: no second call */
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 1);
        json_t *st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK(json_is_true(json_object_get(json_object_get(json_object_get(st, "levers"), "balloon"), "busy")));
        json_decref(st);
        fake_exec_complete(&e.ctx, 0, "memory: 32768\nballoon: 8192\n");
        CHECK_INT(e.ctx.n_execs, 2);
        CHECK_STR(exec_line(&e.ctx, 1), "qm status 100 --verbose");
        fake_exec_complete(&e.ctx, 0, "maxmem: 34359738368\nstatus: stopped\n");
        CHECK_INT(e.ctx.n_execs, 3);
        CHECK_STR(exec_line(&e.ctx, 2), "qm set 100 --balloon 24576");
        /* memory drops while qm set runs: the tick leaves it be */
        fx_mem_available(e.root, 1 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 3);
        fake_exec_complete(&e.ctx, 0, "");
        /* before: what qm config said, not a guess */
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"before\":\"8192\"");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"after\":\"24576\"");
        /* the next tick catches up with the night target: the VM runs now */
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_STR(exec_line(&e.ctx, 3), "qm config 100");
        fake_exec_complete(&e.ctx, 0, "memory: 32768\nballoon: 24576\n");
        CHECK_STR(exec_line(&e.ctx, 4), "qm status 100 --verbose");
        fake_exec_complete(&e.ctx, 0, "balloon: 25769803776\nballooninfo:\n\tactual: 25769803776\nstatus: running\n");
        CHECK_STR(exec_line(&e.ctx, 5), "qm balloon 100 16384");
        fake_exec_complete(&e.ctx, 0, "");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"before\":\"24576\"");
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 6);
        env_stop(&e);
}

/* Read before write: a balloon that already holds the target is not written, nor
 * journalled; a VM with PCI passthrough, or with ballooning off, is refused once. */
static void test_balloon_read_before_write(void) {
        env e;
        /* running, the live balloon already at the day target (24576 MiB, in bytes) */
        env_start(&e, "host32g", CONFIG_32G, true);
        fake_fire_timers(&e.ctx);
        CHECK_STR(exec_line(&e.ctx, 0), "qm config 100");
        fake_exec_complete(&e.ctx, 0, "memory: 32768\nballoon: 16384\n");
        CHECK_STR(exec_line(&e.ctx, 1), "qm status 100 --verbose");
        fake_exec_complete(&e.ctx, 0,
                           "balloon: 25769803776\nballooninfo:\n\tactual: 1\nmaxmem: 34359738368\nstatus: running\n");
        CHECK_INT(e.ctx.n_execs, 2); /* no qm balloon */
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 2); /* ARC and swappiness only */
        json_t *st = call_json(e.state, &e.ctx, "status", "{}");
        json_t *bl = json_object_get(json_object_get(st, "levers"), "balloon");
        CHECK_INT(json_integer_value(json_object_get(bl, "have")), 24576);
        CHECK(json_is_false(json_object_get(bl, "busy")));
        json_decref(st);
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        free(v);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 2);
        env_stop(&e);

        /* stopped, the config's balloon (MiB) already at the target */
        env_start(&e, "host32g", CONFIG_32G, true);
        fake_fire_timers(&e.ctx);
        fake_exec_complete(&e.ctx, 0, "balloon: 24576\nmemory: 32768\n");
        fake_exec_complete(&e.ctx, 0, "maxmem: 34359738368\nstatus: stopped\n");
        CHECK_INT(e.ctx.n_execs, 2);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 2);
        /* a new target is written, with the balloon read as before */
        fx_mem_available(e.root, 1 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        fake_exec_complete(&e.ctx, 0, "balloon: 24576\nmemory: 32768\n");
        fake_exec_complete(&e.ctx, 0, "status: stopped\n");
        CHECK_STR(exec_line(&e.ctx, 4), "qm set 100 --balloon 16384");
        fake_exec_complete(&e.ctx, 0, "");
        CHECK_CONTAINS(fake_last_published(&e.ctx, "membrain.action"), "\"before\":\"24576\"");
        env_stop(&e);

        /* PCI passthrough: the RAM is pinned; refused once, saying why, never touched */
        env_start(&e, "host32g", CONFIG_32G, true);
        fake_fire_timers(&e.ctx);
        unsigned logs = e.ctx.logs;
        fake_exec_complete(&e.ctx, 0,
                           "balloon: 8192\nhostpci0: 0000:03:00,pcie=1\nhostpci1: 0000:04:00,pcie=1\nmemory: 16384\n");
        CHECK_INT(e.ctx.n_execs, 1);
        CHECK_INT(e.ctx.logs, logs + 1);
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 2);
        st = call_json(e.state, &e.ctx, "status", "{}");
        bl = json_object_get(json_object_get(st, "levers"), "balloon");
        CHECK_CONTAINS(json_string_value(json_object_get(bl, "refused")), "PCI passthrough (hostpci0)");
        CHECK(json_is_false(json_object_get(bl, "enabled")));
        json_decref(st);
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "its RAM is pinned");
        CHECK_CONTAINS(v, "\"ok\":true");
        free(v);
        /* neither ticks, nor low memory, nor a phase change bring qm back */
        fx_mem_available(e.root, 1 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"night\"}"), 0);
        CHECK_INT(e.ctx.n_execs, 1); /* so no second refusal either: it is said at qm config only */
        env_stop(&e);

        /* balloon: 0 (ballooning off, e.g. hugepages): the operator's, not ours */
        env_start(&e, "host32g", CONFIG_32G, true);
        fake_fire_timers(&e.ctx);
        fake_exec_complete(&e.ctx, 0, "balloon: 0\nmemory: 20480\nhugepages: 2\n");
        CHECK_INT(e.ctx.n_execs, 1);
        st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK_CONTAINS(json_string_value(json_object_get(json_object_get(json_object_get(st, "levers"), "balloon"),
                                                         "refused")),
                       "balloon: 0");
        json_decref(st);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 1);
        env_stop(&e);

        /* a running VM whose status says no balloon (no driver): unknown, so written */
        env_start(&e, "host32g", CONFIG_32G, true);
        fake_fire_timers(&e.ctx);
        fake_exec_complete(&e.ctx, 0, "memory: 32768\n");
        fake_exec_complete(&e.ctx, 0, "status: running\n");
        CHECK_STR(exec_line(&e.ctx, 2), "qm balloon 100 24576");
        env_stop(&e);
}

static void test_balloon_failure_backoff(void) {
        env e;
        env_start(&e, "host32g", CONFIG_32G, false);
        e.ctx.exec_status = 2;
        fake_fire_timers(&e.ctx);
        CHECK_INT(e.ctx.n_execs, 1); /* qm config failed: no further call */
        CHECK_INT(count_published(&e.ctx, "membrain.action"), 2);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 1); /* backing off */
        e.ctx.now_monotonic_us += 1500000;
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 2);
        e.ctx.exec_status = 0;
        e.ctx.now_monotonic_us += 1500000;
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 2); /* the second failure doubled the wait */
        e.ctx.now_monotonic_us += 1000000;
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, 5);
        CHECK_STR(exec_line(&e.ctx, 4), "qm balloon 100 24576");
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":true");
        free(v);
        env_stop(&e);
}

static void test_verbs_state_and_restart(void) {
        env e;
        env_start(&e, "host32g", CONFIG_32G, false);
        char *v = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &v), 0);
        CHECK_CONTAINS(v, "\"ok\":false"); /* nothing applied yet */
        CHECK_CONTAINS(v, "\"have\":\"unknown\"");
        free(v);
        fake_fire_timers(&e.ctx);
        json_t *h = call_json(e.state, &e.ctx, "history", "{\"n\": 5}");
        CHECK(json_is_array(json_object_get(h, "actions"))); /* the fake store keeps no rows */
        json_decref(h);
        h = call_json(e.state, &e.ctx, "history", "3");
        CHECK(json_is_array(json_object_get(h, "actions")));
        json_decref(h);
        h = call_json(e.state, &e.ctx, "history", "{\"n\": -1}");
        CHECK_CONTAINS(json_string_value(json_object_get(h, "error")), "positive");
        json_decref(h);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, e.state, &e.ctx, "nosuchverb", "{}", &reply), -EOPNOTSUPP);

        json_t *st = call_json(e.state, &e.ctx, "status", "");
        CHECK_STR(json_string_value(json_object_get(st, "phase")), "day");
        CHECK_STR(json_string_value(json_object_get(st, "phase_source")), "default");
        CHECK_STR(json_string_value(json_object_get(st, "profile")), "day");
        CHECK_INT(json_integer_value(json_object_get(json_object_get(st, "readings"), "mem_available")), 12884901888LL);
        CHECK_INT(json_integer_value(json_object_get(json_object_get(json_object_get(st, "levers"), "balloon"), "have")),
                  24576);
        CHECK_STR(json_string_value(json_object_get(st, "psi_trigger_error")), "the sysroot is not /");
        json_decref(st);

        /* a reload hands over phase and balloon: the new instance calls no qm */
        fake_deliver(&organism_plugin, e.state, "circadian.phase", "{\"phase\":\"night\"}");
        void *blob = NULL;
        size_t len = 0;
        CHECK_INT(organism_plugin.save_state(e.state, &blob, &len), 0);
        void *s2 = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &e.ctx, &s2), 0);
        CHECK_INT(organism_plugin.restore_state(s2, blob, len), 0);
        CHECK_INT(organism_plugin.restore_state(s2, "nope", 4), -EINVAL);
        free(blob);
        organism_plugin.fini(e.state);
        e.state = s2;
        size_t n = e.ctx.n_execs;
        CHECK_INT(organism_plugin.tick(e.state), 0);
        CHECK_INT(e.ctx.n_execs, n);
        st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK_STR(json_string_value(json_object_get(st, "phase")), "night");
        CHECK_STR(json_string_value(json_object_get(st, "phase_source")), "reload");
        json_decref(st);

        /* a restart inside the band after an alert keeps the alert (kv) */
        fx_mem_available(e.root, 1 * GIB_KIB);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        organism_plugin.fini(e.state);
        e.state = NULL;
        fx_mem_available(e.root, 4 * GIB_KIB);
        CHECK_INT(organism_plugin.init(&fake_host, &e.ctx, &e.state), 0);
        CHECK_INT(organism_plugin.tick(e.state), 0);
        st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK(json_is_true(json_object_get(st, "alert")));
        CHECK_STR(json_string_value(json_object_get(st, "profile")), "night");
        json_decref(st);
        CHECK_STR(fx_read(e.root, ARC_MAX), "4294967296");
        env_stop(&e);
}

/* On the real /proc, read-only: dry_run and no vmid, so nothing of this machine moves. */
static void test_psi_trigger_real(void) {
        if (access("/proc/pressure/memory", R_OK | W_OK) != 0) {
                printf("# no writable /proc/pressure/memory here: PSI part skipped\n");
                return;
        }
        env e;
        fake_ctx_init(&e.ctx, "memory",
                      "{\"mem_low\":1,\"mem_ok\":2,\"arc_floor\":0,\"alert_profile\":\"night\",\"psi_trigger\":true,"
                      "\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":1000,"
                      "\"journal_keep\":10}");
        e.ctx.dry_run = true;
        e.root = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &e.ctx, &e.state), 0);
        memory *m = e.state;
        if (!m->psi_armed) {
                printf("# the kernel refused a PSI trigger (%s): PSI part skipped\n", m->psi_why);
                env_stop(&e);
                return;
        }
        CHECK_INT(e.ctx.n_ios, 1);
        CHECK(e.ctx.ios[0].events == ORG_IO_PRI);
        int fd = e.ctx.ios[0].fd;
        CHECK(fcntl(fd, F_GETFD) >= 0);
        /* an event evaluates at once; a second one within the gap is deferred to a timer */
        uint64_t evals = m->evaluations;
        e.ctx.ios[0].cb(&e.ctx, 1, fd, ORG_IO_PRI, e.ctx.ios[0].userdata);
        CHECK_INT(m->evaluations, evals + 1);
        CHECK_CONTAINS(fake_last_published(&e.ctx, "sys.mem.state"), "\"trigger\":\"psi\"");
        e.ctx.now_monotonic_us += 50000;
        e.ctx.ios[0].cb(&e.ctx, 1, fd, ORG_IO_PRI, e.ctx.ios[0].userdata);
        CHECK_INT(m->evaluations, evals + 1);
        CHECK(m->psi_timer_pending);
        fake_fire_timers(&e.ctx);
        CHECK(!m->psi_timer_pending);
        CHECK_INT(m->psi_events, 2);
        json_t *st = call_json(e.state, &e.ctx, "status", "{}");
        CHECK(json_is_true(json_object_get(st, "psi_trigger")));
        json_decref(st);
        organism_plugin.fini(e.state);
        e.state = NULL;
        CHECK(!e.ctx.ios[0].active);
        CHECK(fcntl(fd, F_GETFD) < 0 && errno == EBADF); /* fini closed it */
        fake_ctx_done(&e.ctx);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURE_SYSROOTS\n", argv[0]);
                return 2;
        }
        fixtures = argv[1];
        RUN(test_parsers);
        RUN(test_descriptor);
        RUN(test_hysteresis_and_levers);
        RUN(test_phase);
        RUN(test_custom_profiles_and_floor);
        RUN(test_nozfs_sources_logged_once);
        RUN(test_dry_run);
        RUN(test_balloon_in_flight_and_stopped);
        RUN(test_balloon_read_before_write);
        RUN(test_balloon_failure_backoff);
        RUN(test_verbs_state_and_restart);
        RUN(test_psi_trigger_real);
        return 0;
}
