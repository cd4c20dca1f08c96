/* bench-irq.c — the cost of the irq plugin's passes on a copy of the pve12 fixture (12
 * CPUs, 25 IRQs, vmbr0 over eno1, nvme0, one VM with 7 threads): a steady pass (reads
 * only: it must write nothing, and says so), a full apply after a restore, and the time
 * from a new pid file to pinned threads through the inotify watch (poll on the watch
 * descriptor, as the daemon's loop would). Figures are printed, never asserted, except
 * that a steady pass writes nothing. Argument 1 is the folder of fixture sysroots. */
#include <poll.h>
#include <stdarg.h>
#include <time.h>

#include <jansson.h>

#include "fixture.h"
#include "irq.h"
#include "test.h"

extern const org_plugin organism_plugin;

static org_host host;
static unsigned long writes;

static int w_write_file(org_ctx *ctx, const char *path, const char *value, bool *ret_changed) {
        int r = fake_host.write_file(ctx, path, value, ret_changed);
        if (r >= 0 && ret_changed && *ret_changed)
                writes++;
        return r;
}

static void w_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
static void w_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) {}
static void w_log(org_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void w_log(org_ctx *ctx, int level, const char *fmt, ...) {}

/* thread affinities as t_set left them, by tid; unknown threads run on 0-11 */
static unsigned long sets;
static org_cpuset bench_cpus[8192];
static bool bench_has[8192];

static int t_get(void *ud, pid_t pid, pid_t tid, const char *comm, org_cpuset *ret) {
        org_cpuset_zero(ret);
        org_cpuset_add_range(ret, 0, 11);
        if (tid >= 0 && tid < 8192 && bench_has[tid])
                *ret = bench_cpus[tid];
        return 0;
}

static int t_set(void *ud, pid_t pid, pid_t tid, const char *comm, const org_cpuset *cpus) {
        if (tid >= 0 && tid < 8192) {
                bench_cpus[tid] = *cpus;
                bench_has[tid] = true;
        }
        sets++;
        return 0;
}

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static void qemu(const char *root, int pid) {
        char p[128], cmd[64], text[32];
        int len = snprintf(cmd, sizeof cmd, "/usr/bin/kvm%c-id%c100", 0, 0);
        snprintf(p, sizeof p, "/proc/%d/cmdline", pid);
        fx_write(root, p, "");
        char full[512];
        snprintf(full, sizeof full, "%s%s", root, p);
        FILE *f = fopen(full, "we");
        fwrite(cmd, 1, (size_t)len + 1, f);
        fclose(f);
        const char *comms[] = {"kvm", "CPU 0/KVM", "CPU 1/KVM", "CPU 2/KVM", "CPU 3/KVM", "IO iothread0", "vhost-1"};
        for (int i = 0; i < 7; i++) {
                snprintf(p, sizeof p, "/proc/%d/task/%d/comm", pid, pid + i);
                fx_write(root, p, comms[i]);
        }
        snprintf(text, sizeof text, "%d\n", pid);
        snprintf(p, sizeof p, "/run/qemu-server/.100.pid.new");
        fx_write(root, p, text);
        char from[512], to[512];
        snprintf(from, sizeof from, "%s/run/qemu-server/.100.pid.new", root);
        snprintf(to, sizeof to, "%s/run/qemu-server/100.pid", root);
        rename(from, to);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURE_SYSROOTS\n", argv[0]);
                return 2;
        }
        host = fake_host;
        host.write_file = w_write_file;
        host.log = w_log;
        host.logv = w_logv;
        /* on tmpfs when there is one: a truncating write on ext4 flushes at close, a cost
         * sysfs and procfs do not have */
        static char src[512];
        snprintf(src, sizeof src, "%s/pve12", argv[1]);
        snprintf(fx_dst_root, sizeof fx_dst_root, "/dev/shm/organism-irq-XXXXXX");
        if (!mkdtemp(fx_dst_root)) {
                snprintf(fx_dst_root, sizeof fx_dst_root, "/tmp/organism-irq-XXXXXX");
                CHECK(mkdtemp(fx_dst_root));
        }
        fx_src_root = src;
        CHECK(nftw(src, fx_copy_one, 16, FTW_PHYS) == 0);
        const char *root = fx_dst_root;
        org_ctx ctx;
        fake_ctx_init(&ctx, "irq", "{\"vms\": {\"100\": \"vcpu\"}}");
        ctx.sysroot = strdup(root);
        qemu(root, 4000);
        irq *s = NULL;
        CHECK_INT(organism_plugin.init(&host, &ctx, (void **)&s), 0);
        s->aff = (irq_affinity_ops){.get = t_get, .set = t_set};

        uint64_t t0 = now_ns();
        irq_pass(s, "bench");
        uint64_t first = now_ns() - t0;
        unsigned long first_writes = writes;

        enum { N = 2000 };
        static uint64_t d[N];
        writes = sets = 0;
        for (int i = 0; i < N; i++) {
                t0 = now_ns();
                irq_pass(s, "bench");
                d[i] = now_ns() - t0;
        }
        qsort(d, N, sizeof d[0], cmp_u64);
        printf("steady pass: median %.1f us, p99 %.1f us over %d passes (%zu IRQs, %zu ports, 1 VM of %zu threads); "
               "writes %lu, thread sets %lu\n",
               d[N / 2] / 1e3, d[N * 99 / 100] / 1e3, N, s->n_irqs, s->n_ports, s->vms[0].n_threads, writes, sets);
        CHECK_INT(writes, 0);
        CHECK_INT(sets, 0);

        /* a full apply: everything put back, then steered again */
        enum { M = 50 };
        static uint64_t f[M];
        unsigned long w = 0;
        for (int i = 0; i < M; i++) {
                irq_restore_all(s);
                memset(bench_has, 0, sizeof bench_has);
                writes = 0;
                t0 = now_ns();
                irq_pass(s, "bench");
                f[i] = now_ns() - t0;
                w = writes;
        }
        qsort(f, M, sizeof f[0], cmp_u64);
        printf("full apply: median %.1f us (%lu file writes + %zu thread pins; the first at start: %.1f us, %lu "
               "writes)\n",
               f[M / 2] / 1e3, w, s->vms[0].n_threads, first / 1e3, first_writes);

        /* a VM restart: new pid file -> inotify -> pinned */
        enum { K = 50 };
        static uint64_t r[K];
        struct pollfd pfd = {.fd = s->inotify_fd, .events = POLLIN};
        fake_io *io = &ctx.ios[s->inotify_watch - 1];
        for (int i = 0; i < K; i++) {
                int pid = 5000 + i * 10;
                t0 = now_ns();
                qemu(root, pid);
                if (poll(&pfd, 1, 1000) != 1)
                        TEST_SKIP("no inotify event");
                io->cb(&ctx, s->inotify_watch, io->fd, ORG_IO_IN, io->userdata);
                r[i] = now_ns() - t0;
                CHECK(s->vms[0].pid == pid && s->threads_pinned == 7);
        }
        qsort(r, K, sizeof r[0], cmp_u64);
        printf("VM restart to pinned (pid file written, event, 7 threads): median %.1f us, max %.1f us over %d\n",
               r[K / 2] / 1e3, r[K - 1] / 1e3, K);

        organism_plugin.fini(s);
        fx_remove(root);
        fake_ctx_done(&ctx);
        return 0;
}
