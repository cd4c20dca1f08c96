/* bench-vfio.c — the cost of the vfio plugin's reading of the machine on the twelve-card
 * fixture (49 PCI functions, through the real libpci and sysfs.path), against the fake
 * host: libpci's enumeration alone, the whole inventory (plus boot_vga, IOMMU, kernel,
 * root disk and NIC resolution), the plan built from it, and one tick (the tree's
 * fingerprint, then the plan and state; libpci is not called while the fingerprint holds;
 * nothing published when nothing changed). For scale, the same tree read by
 * `lspci -A linux-sysfs -nnk` (a process each) when pciutils is installed. Prints
 * figures; asserts nothing about time. Argument 1 is the folder of fixture sysroots. */
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>

#include <jansson.h>

#include "fakehost.h"
#include "sysroot.h"
#include "test.h"
#include "vfio.h"

extern const org_plugin organism_plugin;
extern char **environ;

#define CONFIG                                                                                                         \
        "{\"vmid\": 200, \"gpus\": [], \"vendor\": \"0x1002\", \"etc_dir\": \"/etc\", \"mgmt_nic\": \"\","             \
        " \"binding\": \"auto\", \"initramfs\": true, \"qm_timeout\": 30000, \"initramfs_timeout\": 600000}"

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static void report(const char *what, uint64_t *ns, int n) {
        qsort(ns, (size_t)n, sizeof *ns, cmp_u64);
        printf("%-44s median %8.1f us   p99 %8.1f us   (%d runs)\n", what, ns[n / 2] / 1000.0,
               ns[n * 99 / 100] / 1000.0, n);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURE_SYSROOTS\n", argv[0]);
                return 2;
        }
        char *root = sr_make(argv[1], "vfio-ref");
        char sysfs[600];
        snprintf(sysfs, sizeof sysfs, "%s/sys/bus/pci", root);
        /* argument 2: the runs of each measure (default 500) */
        int N = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 500;
        if (N < 1 || N > 100000)
                N = 500;
        uint64_t *ns = calloc((size_t)N + 100, sizeof *ns);
        CHECK(ns);

        size_t n_devs = 0;
        for (int i = 0; i < N; i++) {
                vfio_dev *devs = NULL;
                char err[256];
                uint64_t t0 = now_ns();
                CHECK_INT(vfio_pci_scan(sysfs, &devs, &n_devs, err, sizeof err), 0);
                ns[i] = now_ns() - t0;
                free(devs);
        }
        char load[64] = "?";
        FILE *lf = fopen("/proc/loadavg", "re");
        if (lf) {
                if (!fgets(load, sizeof load, lf))
                        snprintf(load, sizeof load, "?");
                fclose(lf);
                load[strcspn(load, "\n")] = '\0';
        }
        printf("# %zu PCI functions, 12 RX 580 + HDMI audio; load average %s (shared box: figures are noisy)\n", n_devs,
               load);
        report("libpci scan + fill_info (ident,class,group,drv)", ns, N);

        org_ctx ctx;
        fake_ctx_init(&ctx, "vfio", CONFIG);
        ctx.sysroot = strdup(root);
        ctx.exec_out = "machine: q35\nmemory: 8192\n";
        FILE *saved = stderr;
        stderr = fopen("/dev/null", "we"); /* the fake host's log lines */
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        fake_fire_timers(&ctx);
        vfio *v = state;

        for (int i = 0; i < N; i++) {
                vfio_inventory inv;
                char err[256];
                uint64_t t0 = now_ns();
                CHECK_INT(vfio_inventory_take(v, &inv, err, sizeof err), 0);
                ns[i] = now_ns() - t0;
                vfio_inventory_done(&inv);
        }
        report("inventory (scan + boot_vga, iommu, disk, nic)", ns, N);

        vfio_inventory inv;
        char err[256];
        CHECK_INT(vfio_inventory_take(v, &inv, err, sizeof err), 0);
        for (int i = 0; i < N; i++) {
                json_t *plan = NULL;
                uint64_t t0 = now_ns();
                CHECK_INT(vfio_plan_build(v, &inv, ctx.exec_out, NULL, false, &plan), 0);
                ns[i] = now_ns() - t0;
                CHECK(json_is_true(json_object_get(plan, "ok")));
                json_decref(plan);
        }
        vfio_inventory_done(&inv);
        report("plan (12 cards, groups, files, 12 qm set)", ns, N);

        size_t pub = ctx.n_published;
        for (int i = 0; i < N; i++) {
                uint64_t t0 = now_ns();
                organism_plugin.tick(state);
                ns[i] = now_ns() - t0;
        }
        report("tick (fingerprint, plan, state; unchanged)", ns, N);
        CHECK_INT(ctx.n_published, pub); /* nothing changed: nothing published */
        fclose(stderr);
        stderr = saved;
        organism_plugin.fini(state);
        fake_ctx_done(&ctx);

        /* the peer: lspci reading the same tree, one process per run */
        const char *lspci = access("/usr/bin/lspci", X_OK) == 0 ? "/usr/bin/lspci" : NULL;
        if (lspci) {
                char opt[700];
                snprintf(opt, sizeof opt, "sysfs.path=%s", sysfs);
                char *args[] = {(char *)"lspci", (char *)"-A", (char *)"linux-sysfs", (char *)"-O", opt,
                                (char *)"-nnk",  NULL};
                posix_spawn_file_actions_t fa;
                posix_spawn_file_actions_init(&fa);
                posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
                posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
                enum { M = 30 };
                for (int i = 0; i < M; i++) {
                        pid_t pid;
                        int status;
                        uint64_t t0 = now_ns();
                        CHECK_INT(posix_spawn(&pid, lspci, &fa, NULL, args, environ), 0);
                        waitpid(pid, &status, 0);
                        ns[i] = now_ns() - t0;
                }
                posix_spawn_file_actions_destroy(&fa);
                report("peer: lspci -A linux-sysfs -nnk (a process)", ns, M);
        } else
                printf("# lspci not installed: no peer figure\n");
        sr_remove(root);
        free(ns);
        return 0;
}
