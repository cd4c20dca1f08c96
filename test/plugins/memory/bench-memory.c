/* bench-memory.c — the cost of one memory tick against the fake host and a copy of the
 * host32g fixture (real file reads and writes, no daemon): a steady tick (read
 * everything, nothing to change) and an acting tick (the alert flips, the ARC file is
 * rewritten and the action journalled and published). Prints figures; asserts nothing
 * about time. Argument 1 is the folder of fixture sysroots. */
#include <time.h>

#include "fixture.h"
#include "test.h"

extern const org_plugin organism_plugin;

#define CONFIG                                                                                                       \
        "{\"mem_low\":3221225472,\"mem_ok\":6442450944,\"arc_floor\":2147483648,\"alert_profile\":\"night\","       \
        "\"psi_trigger\":false,\"psi_stall\":150,\"psi_window\":1000,\"psi_min_gap\":200,\"qm_timeout\":30000,"     \
        "\"journal_keep\":10000}"

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURE_SYSROOTS\n", argv[0]);
                return 2;
        }
        org_ctx ctx;
        fake_ctx_init(&ctx, "memory", CONFIG);
        const char *root = fx_copy(argv[1], "host32g");
        ctx.sysroot = strdup(root);
        /* stderr carries the fake host's log lines: keep the figures readable */
        FILE *saved = stderr;
        stderr = fopen("/dev/null", "we");
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        fake_fire_timers(&ctx);

        const int n = 5000;
        uint64_t total = 0;
        for (int i = 0; i < n; i++) {
                ctx.now_monotonic_us += 5000000;
                uint64_t t0 = now_ns();
                organism_plugin.tick(state);
                total += now_ns() - t0;
                fake_ctx_clear_published(&ctx);
        }
        double steady = (double)total / n / 1000.0;

        const int k = 1000;
        total = 0;
        for (int i = 0; i < k; i++) {
                fx_mem_available(root, (i % 2) ? 12ULL * 1024 * 1024 : 1ULL * 1024 * 1024);
                ctx.now_monotonic_us += 5000000;
                uint64_t t0 = now_ns();
                organism_plugin.tick(state);
                total += now_ns() - t0;
                fake_ctx_clear_published(&ctx);
        }
        double acting = (double)total / k / 1000.0;

        fclose(stderr);
        stderr = saved;
        printf("memory tick, steady (4 /proc files + 2 lever files read, state published): %.1f us (mean of %d)\n",
               steady, n);
        printf("memory tick, acting (alert flips, ARC file rewritten, action journalled): %.1f us (mean of %d)\n",
               acting, k);
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
        fx_remove(root);
        return 0;
}
