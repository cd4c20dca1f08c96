/* test-irq.c — the irq plugin against the fake host and private copies of the pve12
 * (i7-8700K-like: 12 CPUs, SMT pairs n/n+6, vmbr0 over eno1, eno10 beside it, nvme0q0..12)
 * and guest8 fixture sysroots.
 *
 * The fake host's table is copied and two members wrapped: write_file counts every
 * write and returns -EIO for the paths a test marks kernel-managed (the kernel's answer
 * for managed NVMe queue IRQs, which no fixture file can give), and log counts the lines
 * that mention EIO. Thread affinity goes through the plugin's replaceable ops: the test
 * records them, with TIDs of fixture /proc/PID/task entries in an order that differs
 * from the vCPU order. Argument 1 is the folder of fixture sysroots. */
#include <errno.h>
#include <stdarg.h>

#include <jansson.h>

#include "fixture.h"
#include "irq.h"
#include "test.h"

extern const org_plugin organism_plugin;

static const char *fixtures;

/* --- the wrapped host ---------------------------------------------------------- */

static org_host host;
static unsigned writes, eio_logs;
static char eio_paths[64][64];
static size_t n_eio;

static int w_write_file(org_ctx *ctx, const char *path, const char *value, bool *ret_changed) {
        for (size_t i = 0; i < n_eio; i++)
                if (strcmp(path, eio_paths[i]) == 0) {
                        writes++;
                        return -EIO;
                }
        int r = fake_host.write_file(ctx, path, value, ret_changed);
        if (r >= 0 && !ctx->dry_run)
                writes++;
        return r;
}

static void w_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
static void w_logv(org_ctx *ctx, int level, const char *fmt, va_list ap) {
        char line[1024];
        va_list aq;
        va_copy(aq, ap);
        vsnprintf(line, sizeof line, fmt, aq);
        va_end(aq);
        if (strstr(line, "EIO"))
                eio_logs++;
        fake_host.logv(ctx, level, fmt, ap);
}

static void w_log(org_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void w_log(org_ctx *ctx, int level, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        w_logv(ctx, level, fmt, ap);
        va_end(ap);
}

static void eio(const char *path) {
        snprintf(eio_paths[n_eio++], sizeof eio_paths[0], "%s", path);
}

/* nvme0q1..q12 are managed (the admin queue q0 is not), and so is the timer. */
static void eio_nvme(void) {
        n_eio = 0;
        for (int q = 1; q <= 12; q++) {
                char p[64];
                snprintf(p, sizeof p, "/proc/irq/%d/smp_affinity_list", 128 + q);
                eio(p);
        }
        eio("/proc/irq/0/smp_affinity_list");
}

/* --- recorded thread affinities ------------------------------------------------ */

typedef struct fake_thread {
        pid_t tid;
        org_cpuset cpus;
} fake_thread;
static fake_thread threads[32];
static size_t n_threads;
static unsigned sets;

static fake_thread *thread(pid_t tid) {
        for (size_t i = 0; i < n_threads; i++)
                if (threads[i].tid == tid)
                        return &threads[i];
        CHECK(n_threads < 32);
        threads[n_threads].tid = tid;
        org_cpuset_zero(&threads[n_threads].cpus);
        org_cpuset_add_range(&threads[n_threads].cpus, 0, 11);
        return &threads[n_threads++];
}

static int t_get(void *ud, pid_t pid, pid_t tid, const char *comm, org_cpuset *ret) {
        *ret = thread(tid)->cpus;
        return 0;
}

static int t_set(void *ud, pid_t pid, pid_t tid, const char *comm, const org_cpuset *cpus) {
        thread(tid)->cpus = *cpus;
        sets++;
        return 0;
}

static const char *thread_cpus(pid_t tid) {
        static char l[ORG_CPUSET_LIST_MAX];
        org_cpuset_format_list(&thread(tid)->cpus, l, sizeof l);
        return l;
}

/* --- environment ---------------------------------------------------------------- */

typedef struct env {
        org_ctx ctx;
        const char *root;
        irq *s;
} env;

static void env_init(env *e) {
        int r = organism_plugin.init(&host, &e->ctx, (void **)&e->s);
        CHECK_INT(r, 0);
        e->s->aff = (irq_affinity_ops){.get = t_get, .set = t_set};
}

static void env_start(env *e, const char *fixture, const char *config, bool dry) {
        memset(e, 0, sizeof *e);
        fake_ctx_init(&e->ctx, "irq", config);
        e->ctx.dry_run = dry;
        e->root = strdup(fx_copy(fixtures, fixture));
        e->ctx.sysroot = strdup(e->root);
        writes = eio_logs = sets = 0;
        n_threads = 0;
        env_init(e);
}

static void env_pass(env *e) {
        writes = 0;
        sets = 0;
        irq_pass(e->s, "test");
}

static void env_stop(env *e) {
        if (e->s)
                organism_plugin.fini(e->s);
        fx_remove(e->root);
        free((char *)e->root);
        fake_ctx_done(&e->ctx);
}

static const char *aff(env *e, unsigned irq_n) {
        char p[64];
        snprintf(p, sizeof p, "/proc/irq/%u/smp_affinity_list", irq_n);
        return fx_read(e->root, p);
}

static json_t *call_json(env *e, const char *verb, const char *args) {
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, e->s, &e->ctx, verb, args, &reply), 0);
        json_error_t je;
        json_t *o = json_loads(reply, 0, &je);
        CHECK(o);
        free(reply);
        return o;
}

static json_t *verify_json(env *e) {
        char *text = NULL;
        CHECK_INT(organism_plugin.verify(e->s, &text), 0);
        json_error_t je;
        json_t *o = json_loads(text, 0, &je);
        CHECK(o);
        free(text);
        return o;
}

static json_t *find_check(json_t *v, const char *what) {
        json_t *c;
        size_t i;
        json_array_foreach (json_object_get(v, "checks"), i, c)
                if (strcmp(json_string_value(json_object_get(c, "what")), what) == 0)
                        return c;
        return NULL;
}

/* --- tests ---------------------------------------------------------------------- */

static void test_partition(void) {
        org_cpuset present;
        irq_partition p;
        char err[256], l[64];
        org_cpuset_parse_list("0-11", &present);
        CHECK_INT(irq_partition_default(&present, false, &p, err, sizeof err), 0);
        org_cpuset_format_list(&p.set[IRQ_SET_HOST], l, sizeof l);
        CHECK_STR(l, "0-1");
        org_cpuset_format_list(&p.set[IRQ_SET_VCPU], l, sizeof l);
        CHECK_STR(l, "2-9");
        org_cpuset_format_list(&p.set[IRQ_SET_IO], l, sizeof l);
        CHECK_STR(l, "10-11");
        /* N = 16: VCPU 2-13, IO 14-15; holes in the numbering count by position */
        org_cpuset_parse_list("0-15", &present);
        CHECK_INT(irq_partition_default(&present, false, &p, err, sizeof err), 0);
        org_cpuset_format_list(&p.set[IRQ_SET_VCPU], l, sizeof l);
        CHECK_STR(l, "2-13");
        org_cpuset_parse_list("0-3,8-11", &present);
        CHECK_INT(irq_partition_default(&present, false, &p, err, sizeof err), 0);
        org_cpuset_format_list(&p.set[IRQ_SET_IO], l, sizeof l);
        CHECK_STR(l, "10-11");
        org_cpuset_parse_list("0-3", &present);
        CHECK_INT(irq_partition_default(&present, false, &p, err, sizeof err), -EINVAL);
        CHECK_CONTAINS(err, "at least 5 CPUs");
        CHECK_INT(irq_partition_default(&present, true, &p, err, sizeof err), 0);
        org_cpuset_format_list(&p.set[IRQ_SET_VCPU], l, sizeof l);
        CHECK_STR(l, "1-3");
        org_cpuset_format_list(&p.set[IRQ_SET_IO], l, sizeof l);
        CHECK_STR(l, "0");
        /* from config: overlap, missing CPU, empty, bad text */
        org_cpuset_parse_list("0-11", &present);
        CHECK_INT(irq_partition_parse("0-1", "2-9", "10-11", &present, false, &p, err, sizeof err), 0);
        CHECK(p.from_config);
        CHECK_INT(irq_partition_parse("0-2", "2-9", "10-11", &present, false, &p, err, sizeof err), -EINVAL);
        CHECK_CONTAINS(err, "cpus.host and cpus.vcpu overlap (CPU 2)");
        CHECK_INT(irq_partition_parse("0-1", "2-9", "10-12", &present, false, &p, err, sizeof err), -EINVAL);
        CHECK_CONTAINS(err, "cpus.io: CPU 12 does not exist");
        CHECK_INT(irq_partition_parse("0-1", "", "10-11", &present, false, &p, err, sizeof err), -EINVAL);
        CHECK_CONTAINS(err, "cpus.vcpu names no CPU");
        CHECK(irq_partition_parse("0-1", "two", "10-11", &present, false, &p, err, sizeof err) < 0);
        CHECK(irq_partition_parse("0-1", NULL, "10-11", &present, false, &p, err, sizeof err) < 0);
}

static void test_parsers(void) {
        /* vCPU names, strictly */
        CHECK_INT(irq_vcpu_index("CPU 0/KVM"), 0);
        CHECK_INT(irq_vcpu_index("CPU 11/KVM"), 11);
        CHECK_INT(irq_vcpu_index("CPU 1/KVMx"), -1);
        CHECK_INT(irq_vcpu_index("vcpu 1"), -1);
        CHECK_INT(irq_vcpu_index("IO iothread0"), -1);
        CHECK_INT(irq_vcpu_index("CPU /KVM"), -1);
        org_cpuset set;
        org_cpuset_parse_list("2-5", &set);
        CHECK_INT(irq_vcpu_cpu(&set, 0), 2);
        CHECK_INT(irq_vcpu_cpu(&set, 3), 5);
        CHECK_INT(irq_vcpu_cpu(&set, 4), 2); /* wraps past the end */
        /* /proc/interrupts: numbered lines only, label = the last word */
        char *text = NULL;
        char path[512];
        snprintf(path, sizeof path, "%s/pve12/proc/interrupts", fixtures);
        FILE *f = fopen(path, "re");
        CHECK(f);
        text = calloc(1, 65536);
        size_t n = fread(text, 1, 65535, f);
        fclose(f);
        text[n] = '\0';
        irq_line *lines = NULL;
        size_t nl = 0;
        CHECK_INT(irq_parse_interrupts(text, &lines, &nl), 0);
        CHECK_INT(nl, 25);
        CHECK_INT(lines[0].irq, 0);
        CHECK_STR(lines[0].label, "timer");
        CHECK_INT(lines[8].irq, 124);
        CHECK_STR(lines[8].label, "eno10");
        CHECK_STR(lines[24].label, "nvme0q12");
        free(lines);
        free(text);
        /* command line: last one wins, bare tokens, the init part ignored */
        char *v = NULL;
        CHECK_INT(irq_cmdline_value("quiet isolcpus=1 isolcpus=2-9 -- isolcpus=3", "isolcpus", &v), 0);
        CHECK_STR(v, "2-9");
        free(v);
        CHECK_INT(irq_cmdline_value("quiet", "quiet", &v), 0);
        CHECK_STR(v, "");
        free(v);
        CHECK_INT(irq_cmdline_value("isolcpus2=1", "isolcpus", &v), -ENOENT);
        CHECK(irq_cmdline_same("managed_irq,domain,2-9", "domain,managed_irq,2,3,4-9", true));
        CHECK(!irq_cmdline_same("managed_irq,domain,2-9", "2-9", true));
        CHECK(!irq_cmdline_same("2-9", "2-11", true));
        CHECK(irq_cmdline_same("0-1", "0,1", true));
}

/* After one pass: NIC (by device, not label) and NVMe IRQs on IO, the rest on HOST;
 * managed IRQs recorded once; a second pass writes nothing; RPS/XPS right. */
static void test_first_pass_steady_and_managed(void) {
        env e;
        eio_nvme();
        env_start(&e, "pve12", "{\"cpus\": {\"host\": \"0-1\", \"vcpu\": \"2-9\", \"io\": \"10-11\"}}", false);
        fake_fire_timers(&e.ctx); /* the first pass, at start */
        for (unsigned i = 121; i <= 123; i++)
                CHECK_STR(aff(&e, i), "10-11"); /* eno1 behind vmbr0 */
        for (unsigned i = 124; i <= 126; i++)
                CHECK_STR(aff(&e, i), "0-1"); /* eno10: not the uplink, whatever its label */
        CHECK_STR(aff(&e, 128), "10-11");     /* nvme0q0 moved */
        CHECK_STR(aff(&e, 130), "0-11");      /* nvme0q2 managed: left */
        CHECK_STR(aff(&e, 0), "0-11");
        CHECK_STR(aff(&e, 120), "0-1");
        CHECK_STR(aff(&e, 127), "0-1");
        CHECK_INT(e.s->managed, 13);
        CHECK_INT(eio_logs, 13);
        /* RPS/XPS of eno1's queues, not eno10's */
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-0/rps_cpus"), "c00");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-1/rps_cpus"), "c00");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/tx-1/xps_cpus"), "c00");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-0/rps_flow_cnt"), "4096");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno10/queues/rx-0/rps_cpus"), "000");
        CHECK_STR(fx_read(e.root, "/proc/sys/net/core/rps_sock_flow_entries"), "32768");
        CHECK_INT(e.s->n_ports, 1);
        CHECK_STR(e.s->ports[0], "eno1"); /* tap100i0 has no device */
        /* pm_qos: the fixture's file holds the 32-bit 0 */
        CHECK(e.s->dma_fd >= 0);
        /* SMT: (0,6) (1,7) (4,10) (5,11) straddle */
        CHECK_INT(e.s->n_straddles, 4);

        /* steady: reads only, the managed IRQs not retried nor logged again */
        unsigned logs = eio_logs;
        env_pass(&e);
        CHECK_INT(writes, 0);
        CHECK_INT(e.s->last_pass_writes, 0);
        CHECK_INT(eio_logs, logs);
        CHECK_INT(e.s->managed, 13);
        CHECK(fake_metric(&e.ctx, "irq_last_pass_writes") == 0);
        CHECK(fake_metric(&e.ctx, "irq_managed_irqs") == 13);

        /* drift injected into one file: exactly that file rewritten, one drift event */
        fx_write(e.root, "/proc/irq/120/smp_affinity_list", "0-11\n");
        env_pass(&e);
        CHECK_INT(writes, 1);
        CHECK_STR(aff(&e, 120), "0-1");
        CHECK_INT(e.s->drift[IRQ_KIND_IRQ], 1);
        fx_write(e.root, "/sys/class/net/eno1/queues/tx-0/xps_cpus", "fff\n");
        env_pass(&e);
        CHECK_INT(writes, 1);
        CHECK_INT(e.s->drift[IRQ_KIND_XPS], 1);
        CHECK(fake_metric(&e.ctx, "irq_drift_total{kind=\"irq\"}") == 1);
        /* a value written differently but meaning the same is no drift */
        fx_write(e.root, "/proc/irq/121/smp_affinity_list", "10,11\n");
        env_pass(&e);
        CHECK_INT(writes, 0);

        /* status: each IRQ with device, wanted, actual, movable */
        json_t *st = call_json(&e, "status", "{}");
        json_t *irqs = json_object_get(st, "irqs"), *it;
        size_t i, n_managed = 0;
        json_array_foreach (irqs, i, it) {
                int n = (int)json_integer_value(json_object_get(it, "irq"));
                if (n == 122) {
                        CHECK_STR(json_string_value(json_object_get(it, "device")), "eno1");
                        CHECK_STR(json_string_value(json_object_get(it, "wanted")), "10-11");
                        CHECK_STR(json_string_value(json_object_get(it, "label")), "eno1-TxRx-0");
                }
                if (n == 125)
                        CHECK(json_is_null(json_object_get(it, "device")));
                if (!json_is_true(json_object_get(it, "movable")))
                        n_managed++;
        }
        CHECK_INT(n_managed, 13);
        CHECK_STR(json_string_value(json_object_get(json_object_get(st, "partition"), "vcpu")), "2-9");
        CHECK_INT(json_array_size(json_object_get(st, "smt_straddles")), 4);
        /* the partition by core it suggests: (0,6) host, (5,11) io, the rest vcpu */
        json_t *bc = json_object_get(st, "by_core");
        CHECK_STR(json_string_value(json_object_get(bc, "host")), "0,6");
        CHECK_STR(json_string_value(json_object_get(bc, "vcpu")), "1-4,7-10");
        CHECK_STR(json_string_value(json_object_get(bc, "io")), "5,11");
        json_decref(st);

        /* disable: every original back, managed ones never touched */
        organism_plugin.fini(e.s);
        e.s = NULL;
        for (unsigned k = 120; k <= 128; k++)
                CHECK_STR(aff(&e, k), "0-11");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-0/rps_cpus"), "000");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/tx-0/xps_cpus"), "000");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-1/rps_flow_cnt"), "0");
        CHECK_STR(fx_read(e.root, "/proc/sys/net/core/rps_sock_flow_entries"), "0");
        env_stop(&e);
        n_eio = 0;
}

/* A reload hands the originals over (no restore in between); the new generation, which
 * read them from the store, puts them back at the end. */
static void test_reload_keeps_originals(void) {
        env e;
        n_eio = 0;
        env_start(&e, "pve12", "{}", false);
        fake_fire_timers(&e.ctx);
        CHECK_STR(aff(&e, 8), "0-1");
        void *blob = NULL;
        size_t len = 0;
        CHECK_INT(organism_plugin.save_state(e.s, &blob, &len), 0);
        organism_plugin.fini(e.s);    /* the old generation, after the new one's init */
        CHECK_STR(aff(&e, 8), "0-1"); /* not restored */
        env_init(&e);
        CHECK_INT(organism_plugin.restore_state(e.s, blob, len), 0);
        free(blob);
        env_pass(&e);
        CHECK_INT(writes, 0);
        organism_plugin.fini(e.s);
        e.s = NULL;
        CHECK_STR(aff(&e, 8), "0-11"); /* the first original, from the store */
        CHECK_STR(fx_read(e.root, "/sys/devices/system/cpu/intel_pstate/min_perf_pct"), "20");
        env_stop(&e);
}

static void test_dry_run(void) {
        env e;
        env_start(&e, "pve12", "{\"vms\": {\"100\": \"vcpu\"}}", true);
        fx_write(e.root, "/run/qemu-server/100.pid", "4000\n");
        fx_write(e.root, "/proc/4000/cmdline", "/usr/bin/kvm");
        fx_write(e.root, "/proc/4000/task/4002/comm", "CPU 0/KVM\n");
        fake_fire_timers(&e.ctx);
        CHECK_INT(writes, 0);
        CHECK_INT(sets, 0);
        CHECK_STR(aff(&e, 121), "0-11");
        CHECK(e.s->dma_fd < 0);
        /* the plan is in status */
        json_t *st = call_json(&e, "status", "{}");
        json_t *it;
        size_t i;
        json_array_foreach (json_object_get(st, "irqs"), i, it)
                if (json_integer_value(json_object_get(it, "irq")) == 121) {
                        CHECK_STR(json_string_value(json_object_get(it, "state")), "pending");
                        CHECK_STR(json_string_value(json_object_get(it, "wanted")), "10-11");
                }
        CHECK(json_is_true(json_object_get(st, "dry_run")));
        /* a pid file whose process is not VM 100's: not pinned */
        json_t *vm = json_array_get(json_object_get(st, "vms"), 0);
        CHECK_CONTAINS(json_string_value(json_object_get(vm, "why")), "-id 100");
        json_decref(st);
        env_stop(&e);
}

static void write_qemu(const char *root, const char *pid, const char *const *tids, const char *const *comms, size_t n) {
        char p[128], cmd[64];
        int len = snprintf(cmd, sizeof cmd, "/usr/bin/kvm%c-id%c100%c-name%ccortex", 0, 0, 0, 0);
        snprintf(p, sizeof p, "%s/proc/%s/cmdline", root, pid);
        fx_write(root, p + strlen(root), "");
        FILE *f = fopen(p, "we");
        CHECK(f);
        fwrite(cmd, 1, (size_t)len + 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++) {
                snprintf(p, sizeof p, "/proc/%s/task/%s/comm", pid, tids[i]);
                fx_write(root, p, comms[i]);
        }
        char text[32];
        snprintf(text, sizeof text, "%s\n", pid);
        fx_write(root, "/run/qemu-server/100.pid", text);
}

/* vCPU threads by index, whatever the TID order; the rest on IO; a restart is seen
 * through the inotify watch at once. */
static void test_threads(void) {
        env e;
        env_start(&e, "pve12", "{\"vms\": {\"100\": \"vcpu\"}}", false);
        const char *tids[] = {"4000", "4001", "4002", "4003", "4004", "4005", "4006"};
        const char *comms[] = {"kvm\n",       "CPU 3/KVM\n",    "CPU 1/KVM\n", "CPU 0/KVM\n",
                               "CPU 2/KVM\n", "IO iothread0\n", "vhost-4000\n"};
        write_qemu(e.root, "4000", tids, comms, 7);
        fake_fire_timers(&e.ctx);
        CHECK_STR(thread_cpus(4003), "2");
        CHECK_STR(thread_cpus(4002), "3");
        CHECK_STR(thread_cpus(4004), "4");
        CHECK_STR(thread_cpus(4001), "5");
        CHECK_STR(thread_cpus(4000), "10-11");
        CHECK_STR(thread_cpus(4005), "10-11");
        CHECK_STR(thread_cpus(4006), "10-11");
        CHECK_INT(e.s->threads_pinned, 7);
        env_pass(&e);
        CHECK_INT(sets, 0); /* read before write */
        /* drift on a thread */
        org_cpuset_parse_list("0-11", &thread(4002)->cpus);
        env_pass(&e);
        CHECK_INT(sets, 1);
        CHECK_INT(e.s->drift[IRQ_KIND_THREAD], 1);
        CHECK_STR(thread_cpus(4002), "3");

        /* the VM restarts with a new PID: the watch pins it without a tick */
        CHECK(e.s->inotify_watch > 0);
        const char *tids2[] = {"5000", "5001", "5002"};
        const char *comms2[] = {"kvm\n", "CPU 1/KVM\n", "CPU 0/KVM\n"};
        write_qemu(e.root, "5000", tids2, comms2, 3);
        fake_io *io = &e.ctx.ios[e.s->inotify_watch - 1];
        CHECK(io->active);
        io->cb(&e.ctx, e.s->inotify_watch, io->fd, ORG_IO_IN, io->userdata);
        CHECK_STR(thread_cpus(5002), "2");
        CHECK_STR(thread_cpus(5001), "3");
        CHECK_STR(thread_cpus(5000), "10-11");
        CHECK_INT(e.s->vm_events, 1);
        json_t *st = call_json(&e, "status", "{}");
        json_t *vm = json_array_get(json_object_get(st, "vms"), 0);
        CHECK_INT(json_integer_value(json_object_get(vm, "pid")), 5000);
        CHECK_INT(json_array_size(json_object_get(vm, "threads")), 3);
        json_decref(st);
        /* disable: the live threads get their affinity back */
        organism_plugin.fini(e.s);
        e.s = NULL;
        CHECK_STR(thread_cpus(5002), "0-11");
        CHECK_STR(thread_cpus(5000), "0-11");
        env_stop(&e);
}

static void test_verify_cmdline_and_irqbalance(void) {
        env e;
        env_start(&e, "pve12", "{\"latency_cmdline\": true}", false);
        fake_fire_timers(&e.ctx);
        json_t *v = verify_json(&e);
        CHECK(json_is_false(json_object_get(v, "ok")));
        json_t *c = find_check(v, "cmdline isolcpus");
        CHECK(c && json_is_false(json_object_get(c, "ok")));
        CHECK_STR(json_string_value(json_object_get(c, "why")), "different value");
        CHECK_STR(json_string_value(json_object_get(c, "have")), "2-11");
        c = find_check(v, "cmdline kthread_cpus");
        CHECK_STR(json_string_value(json_object_get(c, "why")), "missing");
        c = find_check(v, "cmdline irqaffinity");
        CHECK(json_is_true(json_object_get(c, "ok")));
        c = find_check(v, "cmdline pcie_aspm");
        CHECK_STR(json_string_value(json_object_get(c, "why")), "missing");
        CHECK(json_is_true(json_object_get(find_check(v, "irq affinity"), "ok")));
        CHECK(json_is_true(json_object_get(find_check(v, "smt siblings (note)"), "note")));
        CHECK_STR(json_string_value(json_object_get(v, "cmdline_add")),
                  "isolcpus=managed_irq,domain,2-9 nohz_full=2-9 rcu_nocbs=2-9 kthread_cpus=0-1 irqaffinity=0-1 "
                  "intel_idle.max_cstate=0 processor.max_cstate=1 pcie_aspm=off nvme_core.default_ps_max_latency_us=0");
        json_decref(v);

        /* the line it prints, booted: everything holds */
        fx_write(e.root, "/proc/cmdline",
                 "BOOT_IMAGE=/vmlinuz root=ZFS=rpool isolcpus=domain,managed_irq,2-9 nohz_full=2-9 rcu_nocbs=2-9 "
                 "kthread_cpus=0-1 irqaffinity=0,1 intel_idle.max_cstate=0 processor.max_cstate=1 pcie_aspm=off "
                 "nvme_core.default_ps_max_latency_us=0\n");
        v = verify_json(&e);
        CHECK(json_is_true(json_object_get(v, "ok")));
        CHECK(json_is_false(json_object_get(v, "reboot_needed")));
        CHECK(json_is_true(json_object_get(find_check(v, "rps/xps"), "ok")));
        json_decref(v);
        fx_write(e.root, "/sys/class/net/eno1/queues/rx-1/rps_cpus", "fff\n");
        v = verify_json(&e);
        CHECK(json_is_false(json_object_get(find_check(v, "rps/xps"), "ok")));
        CHECK_CONTAINS(json_string_value(json_object_get(find_check(v, "rps/xps"), "have")),
                       "/sys/class/net/eno1/queues/rx-1/rps_cpus holds fff");
        json_decref(v);
        env_pass(&e);

        /* drift shows in verify before the next pass fixes it */
        fx_write(e.root, "/proc/irq/9/smp_affinity_list", "0-11\n");
        v = verify_json(&e);
        CHECK(json_is_false(json_object_get(find_check(v, "irq affinity"), "ok")));
        CHECK_CONTAINS(json_string_value(json_object_get(find_check(v, "irq affinity"), "have")), "off: 9");
        json_decref(v);
        env_pass(&e);

        /* irqbalance running: a warning and a failure */
        fx_write(e.root, "/proc/4242/comm", "irqbalance\n");
        v = verify_json(&e);
        CHECK(json_is_false(json_object_get(v, "ok")));
        c = find_check(v, "irqbalance");
        CHECK(json_is_false(json_object_get(c, "ok")));
        CHECK_STR(json_string_value(json_object_get(c, "have")), "running (pid 4242)");
        json_decref(v);
        env_stop(&e);
}

static void test_guest(void) {
        env e;
        env_start(&e, "guest8", "{\"mode\": \"guest\", \"vms\": {\"100\": \"vcpu\"}}", false);
        CHECK_INT(e.s->n_vms, 0);
        fake_fire_timers(&e.ctx);
        for (unsigned i = 0; i < 28; i++) {
                const char *a = aff(&e, i);
                if (a)
                        CHECK_STR(a, "0");
        }
        CHECK_STR(fx_read(e.root, "/sys/class/net/ens18/queues/rx-0/rps_cpus"), "01");
        json_t *v = verify_json(&e);
        if (!json_is_true(json_object_get(v, "ok"))) {
                char *t = json_dumps(v, 0);
                fprintf(stderr, "%s\n", t);
                free(t);
        }
        CHECK(json_is_true(json_object_get(v, "ok")));
        json_decref(v);
        env_pass(&e);
        CHECK_INT(writes, 0);
        env_stop(&e);
}

static void test_restore_verb(void) {
        env e;
        env_start(&e, "pve12", "{}", false);
        fake_fire_timers(&e.ctx);
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, e.s, &e.ctx, "restore", "{}", &reply), 0);
        CHECK_CONTAINS(reply, "--confirm");
        free(reply);
        CHECK_STR(aff(&e, 9), "0-1");
        json_t *o = call_json(&e, "restore", "{\"confirm\": true}");
        CHECK(json_integer_value(json_object_get(o, "restored")) > 20);
        json_decref(o);
        CHECK_STR(aff(&e, 9), "0-11");
        CHECK(e.s->dma_fd < 0);
        env_pass(&e); /* paused */
        CHECK_INT(writes, 0);
        o = call_json(&e, "apply", "{}");
        CHECK(json_integer_value(json_object_get(o, "writes")) > 20);
        json_decref(o);
        CHECK_STR(aff(&e, 9), "0-1");
        env_stop(&e);
}

/* A bond (over eno10 here) is resolved through bonding/slaves; a VLAN on it through
 * lower_*; a configured uplink that does not exist steers nothing of the NICs' IRQs. */
static void test_bond_and_vlan(void) {
        env e;
        env_start(&e, "pve12", "{\"uplink\": \"bond0.10\"}", false);
        fx_write(e.root, "/sys/class/net/bond0/bonding/slaves", "eno10\n");
        fx_write(e.root, "/sys/class/net/bond0.10/lower_bond0/ifindex", "7\n");
        fake_fire_timers(&e.ctx);
        CHECK_INT(e.s->n_ports, 1);
        CHECK_STR(e.s->ports[0], "eno10");
        CHECK_STR(aff(&e, 125), "10-11");
        CHECK_STR(aff(&e, 122), "0-1");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno10/queues/rx-0/rps_cpus"), "c00");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-0/rps_cpus"), "000");
        env_stop(&e);

        env_start(&e, "pve12", "{\"uplink\": \"eth9\"}", false);
        fake_fire_timers(&e.ctx);
        CHECK_INT(e.s->n_ports, 0);
        CHECK_CONTAINS(e.s->uplink_why, "eth9: no such interface");
        CHECK_STR(aff(&e, 122), "0-1");
        CHECK_STR(aff(&e, 130), "10-11"); /* NVMe still by device (nothing managed here) */
        env_stop(&e);
}

static void test_partition_by_core(void) {
        env e;
        env_start(&e, "pve12", "{\"cpus\": {\"host\": \"0,6\", \"vcpu\": \"1-4,7-10\", \"io\": \"5,11\"}}", false);
        CHECK_INT(e.s->n_straddles, 0);
        CHECK(!e.s->has_suggested);
        fake_fire_timers(&e.ctx);
        CHECK_STR(aff(&e, 121), "5,11");
        CHECK_STR(fx_read(e.root, "/sys/class/net/eno1/queues/rx-0/rps_cpus"), "820");
        json_t *v = verify_json(&e);
        CHECK(json_is_false(json_object_get(find_check(v, "smt siblings (note)"), "note")));
        json_decref(v);
        env_stop(&e);
}

static void test_bad_config(void) {
        const char *bad[] = {"{\"cpus\": {\"host\": \"0-2\", \"vcpu\": \"2-9\", \"io\": \"10-11\"}}",
                             "{\"cpus\": {\"host\": \"0-1\", \"vcpu\": \"2-9\", \"io\": \"10-12\"}}",
                             "{\"cpus\": {\"host\": \"0-1\"}}",
                             "{\"vms\": {\"abc\": \"vcpu\"}}",
                             "{\"vms\": {\"100\": \"gpu\"}}",
                             "{\"mode\": \"vm\"}",
                             "{\"uplink\": \"../../etc\"}"};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                org_ctx ctx;
                fake_ctx_init(&ctx, "irq", bad[i]);
                const char *root = fx_copy(fixtures, "pve12");
                ctx.sysroot = strdup(root);
                void *state = NULL;
                CHECK(organism_plugin.init(&host, &ctx, &state) < 0);
                fx_remove(root);
                fake_ctx_done(&ctx);
        }
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURE_SYSROOTS\n", argv[0]);
                return 2;
        }
        fixtures = argv[1];
        host = fake_host;
        host.write_file = w_write_file;
        host.log = w_log;
        host.logv = w_logv;
        RUN(test_partition);
        RUN(test_parsers);
        RUN(test_first_pass_steady_and_managed);
        RUN(test_reload_keeps_originals);
        RUN(test_dry_run);
        RUN(test_threads);
        RUN(test_verify_cmdline_and_irqbalance);
        RUN(test_guest);
        RUN(test_restore_verb);
        RUN(test_bond_and_vlan);
        RUN(test_partition_by_core);
        RUN(test_bad_config);
        return 0;
}
