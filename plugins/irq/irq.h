/* irq.h — the irq plugin's ("latency steering") state and the functions its files share.
 *
 * Split by responsibility: irq.c holds the descriptor, config, hooks, verbs and verify;
 * partition.c the HOST/VCPU/IO sets, the SMT topology and the kernel command line it
 * expects; devices.c finds IRQs by device (uplink ports behind bridges and bonds, NVMe
 * controllers) and parses /proc/interrupts; steer.c is one pass over IRQ affinities,
 * RPS/XPS and the other files, with the original values it keeps and puts back;
 * threads.c pins the QEMU threads of the configured VMs and watches /run/qemu-server.
 * Nothing here leaves the .so (built with -fvisibility=hidden). */
#ifndef PLUGINS_IRQ_IRQ_H
#define PLUGINS_IRQ_IRQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include <organism/cpuset.h>
#include <organism/plugin.h>

#define IRQ_NAME_MAX         64
#define IRQ_LABEL_MAX        64
#define IRQ_COMM_MAX         32
#define IRQ_PORTS_MAX        16
#define IRQ_VMS_MAX          32
#define IRQ_THREADS_MAX      512
#define IRQ_PID_DIR          "/run/qemu-server"
#define IRQ_CPU_DIR          "/sys/devices/system/cpu"
#define IRQ_SOCK_FLOW_PATH   "/proc/sys/net/core/rps_sock_flow_entries"
#define IRQ_PSTATE_MIN_PATH  "/sys/devices/system/cpu/intel_pstate/min_perf_pct"
#define IRQ_DMA_LATENCY_PATH "/dev/cpu_dma_latency"

typedef enum irq_set {
        IRQ_SET_HOST,
        IRQ_SET_VCPU,
        IRQ_SET_IO,
        IRQ_SET_COUNT,
} irq_set;

/* What a write can be about: the label of drift counters and metrics. */
typedef enum irq_kind {
        IRQ_KIND_IRQ,
        IRQ_KIND_RPS,
        IRQ_KIND_XPS,
        IRQ_KIND_FLOW,
        IRQ_KIND_SYSCTL,
        IRQ_KIND_PSTATE,
        IRQ_KIND_THREAD,
        IRQ_KIND_COUNT,
} irq_kind;

typedef struct irq_partition {
        org_cpuset set[IRQ_SET_COUNT]; /* guest mode: host = io = {0}, vcpu = the rest */
        org_cpuset present;
        bool from_config;
} irq_partition;

/* A group of SMT siblings that two sets share (a warning and a verify note). */
typedef struct irq_straddle {
        org_cpuset siblings;
        unsigned sets; /* bit per irq_set */
} irq_straddle;

/* Everything the plugin changed or considered: keyed by the sysroot path written, or
 * "thread:VMID:PID:TID". `orig` is what was there before our first write (persisted in
 * the store, put back by restore); the flags keep logs to one line per item. */
typedef struct irq_item {
        char *key;
        char *orig;    /* NULL: never written by us */
        bool dry_said; /* dry_run: "would write" logged once */
        bool failing;  /* last write failed (logged once) */
        bool managed;  /* EIO: kernel-managed IRQ, never retried */
} irq_item;

typedef struct irq_entry {
        unsigned irq;
        char label[IRQ_LABEL_MAX]; /* from /proc/interrupts, display only */
        char device[IRQ_NAME_MAX]; /* "eno1", "nvme0", "" = any other */
        irq_set want;
        bool has_actual;
        org_cpuset actual;
        bool has_effective;
        org_cpuset effective;
        int error; /* last read/write error, 0 */
        bool managed;
} irq_entry;

typedef struct irq_thread {
        pid_t tid;
        char comm[IRQ_COMM_MAX];
        int vcpu; /* n of "CPU n/KVM", -1 for any other thread */
        org_cpuset want;
        bool has_actual;
        org_cpuset actual;
        int error;
} irq_thread;

typedef struct irq_vm {
        int64_t vmid;
        char vmid_text[24];
        irq_set set; /* its vCPUs' set */
        pid_t pid;   /* 0: not running (why says so) */
        char why[128];
        irq_thread *threads;
        size_t n_threads;
        bool wrap_said;
        pid_t wrap_pid;
} irq_vm;

/* Thread affinity, replaceable by the tests: the real one uses sched_*affinity and,
 * under a sysroot other than /, touches a thread only when the real /proc names it
 * with the same comm (a fixture can never make it pin a stranger). */
typedef struct irq_affinity_ops {
        int (*get)(void *ud, pid_t pid, pid_t tid, const char *comm, org_cpuset *ret);
        int (*set)(void *ud, pid_t pid, pid_t tid, const char *comm, const org_cpuset *cpus);
        void *ud;
} irq_affinity_ops;

typedef struct irq {
        const org_host *host;
        org_ctx *ctx;
        bool real_root; /* sysroot is "/" */

        /* config */
        bool guest;
        char uplink[IRQ_NAME_MAX]; /* "" = the default route's */
        bool nvme, rps, pm_qos, latency_cmdline;
        int64_t sock_flow_entries, flow_cnt, min_perf_pct; /* min_perf_pct < 0: leave */
        char **expect;                                     /* kernel tokens to compare (names) */
        size_t n_expect;
        irq_vm vms[IRQ_VMS_MAX];
        size_t n_vms;

        /* partition */
        irq_partition part;
        irq_straddle *straddles;
        size_t n_straddles;
        bool has_suggested; /* a partition by core, when the sets straddle cores */
        irq_partition suggested;

        /* devices of the last pass */
        char uplink_used[IRQ_NAME_MAX];
        char ports[IRQ_PORTS_MAX][IRQ_NAME_MAX];
        size_t n_ports;
        char uplink_why[128]; /* why no port was found */

        /* IRQs of the last pass, sorted by number */
        irq_entry *irqs;
        size_t n_irqs;

        /* items written (or considered), sorted by key */
        irq_item *items;
        size_t n_items;
        bool store_ok;

        /* counters */
        uint64_t passes, writes, drift[IRQ_KIND_COUNT], last_pass_writes, managed;
        uint64_t threads_pinned;
        uint64_t last_pass_us;

        /* threads */
        irq_affinity_ops aff;
        int inotify_fd;
        uint64_t inotify_watch;
        char inotify_why[128];
        uint64_t vm_events;
        uint64_t settle_timer;
        bool settle_pending;
        unsigned settle_left;

        /* pm_qos */
        int dma_fd;
        int dma_errno; /* why it is not held: ENOENT, EACCES... 0 */
        char dma_why[128];

        /* irqbalance */
        bool irqbalance;
        pid_t irqbalance_pid;

        uint64_t first_timer;
        bool suspended;   /* after `restore`: no passes until `apply` */
        bool look_only;   /* verify: read the threads, pin nothing */
        bool handed_over; /* save_state ran: a reload's new generation owns the originals */
} irq;

/* partition.c */
const char *irq_set_name(irq_set s);
int irq_set_from_name(const char *name, irq_set *ret);
/* The CPUs of the (sys)root: cpu/present, else cpuN directories. */
int irq_present_cpus(irq *s, org_cpuset *ret);
/* The default sets for the present CPUs (host: HOST 0-1, IO the last two, VCPU the
 * rest, needs 5 CPUs; guest: 0 housekeeping and every IRQ, the rest workload). */
int irq_partition_default(const org_cpuset *present, bool guest, irq_partition *ret, char *err, size_t err_size);
/* Sets from text (cpu lists): each non-empty, pairwise disjoint, all present. */
int irq_partition_parse(const char *host, const char *vcpu, const char *io, const org_cpuset *present, bool guest,
                        irq_partition *ret, char *err, size_t err_size);
/* Reads thread_siblings_list of every present CPU and records the sibling groups that
 * two sets share; logs a warning for each the first time. */
int irq_topology_check(irq *s);
json_t *irq_straddles_json(const irq *s);
/* The kernel command-line tokens the partition wants: a JSON array of {token, want,
 * have, ok, why} for verify, and the line to add. */
json_t *irq_cmdline_checks(irq *s, const char *cmdline, bool *ret_ok, char **ret_line);
/* Pure helpers, for the tests: the last value of a token in a command line (NULL:
 * absent; "" for a bare token), malloc'd. */
int irq_cmdline_value(const char *cmdline, const char *token, char **ret);
/* Compares a cpu-list token value ("managed_irq,domain,2-9" or "2-9") with the wanted. */
bool irq_cmdline_same(const char *want, const char *have, bool cpulist);

/* devices.c */
typedef struct irq_line {
        unsigned irq;
        char label[IRQ_LABEL_MAX];
} irq_line;
/* Parses /proc/interrupts into the numbered lines (NMI, LOC, ... skipped), malloc'd. */
int irq_parse_interrupts(const char *text, irq_line **ret, size_t *ret_n);
/* Resolves ifname through bridges (brif/), bonds (bonding/slaves) and stacked devices
 * (lower_*) to the ports that have a device; at most max names. */
int irq_resolve_ports(irq *s, const char *ifname, char (*ports)[IRQ_NAME_MAX], size_t max, size_t *ret_n);
/* The interface of the default route in /proc/net/route (lowest metric). */
int irq_default_route(irq *s, char *buf, size_t size);
/* The IRQs of a device directory's msi_irqs/ ("/sys/class/net/eno1/device"). */
int irq_msi_irqs(irq *s, const char *device_dir, unsigned **ret, size_t *ret_n);
/* Names in a sysroot directory (not . or ..), malloc'd array of malloc'd strings. */
int irq_list_dir(irq *s, const char *path, char ***ret, size_t *ret_n);
void irq_free_names(char **names, size_t n);
bool irq_path_exists(irq *s, const char *path);

/* steer.c */
int irq_store_open(irq *s);
irq_item *irq_item_get(irq *s, const char *key, bool create);
/* Makes the file at path hold want (read first; nothing written when it does). `same`
 * compares the text read with want (NULL: text equality ignoring trailing space). */
typedef bool (*irq_same_fn)(const char *have, const char *want);
int irq_steer_file(irq *s, const char *path, const char *want, irq_kind kind, irq_same_fn same, bool *ret_wrote);
/* Records an original value before our first change (store + memory). */
void irq_item_save_orig(irq *s, irq_item *it, const char *value);
/* Forgets the items whose key starts with prefix (the threads of a gone process). */
void irq_items_forget_prefix(irq *s, const char *prefix);
/* One full pass: IRQs, RPS/XPS, files, threads, pm_qos, irqbalance, metrics. */
void irq_pass(irq *s, const char *why);
void irq_steer_irqs(irq *s);
void irq_steer_rps(irq *s);
typedef struct irq_rps_check {
        unsigned files, good;
        char first_bad[320];
} irq_rps_check;
/* Compares the RPS/XPS files of the last pass's ports with what they should hold. */
void irq_rps_verify(irq *s, irq_rps_check *ret);
/* Puts back every original value and forgets them; returns how many were restored. */
unsigned irq_restore_all(irq *s);
void irq_metrics(irq *s);
void irq_count_write(irq *s, irq_kind kind, bool drift);
const char *irq_kind_name(irq_kind k);
json_t *irq_irqs_json(irq *s);
void irq_pm_qos_hold(irq *s);
void irq_pm_qos_release(irq *s);
void irq_irqbalance_check(irq *s);

/* threads.c */
extern const irq_affinity_ops irq_real_affinity;
/* Parses "CPU 3/KVM" → 3; -1 for any other name. */
int irq_vcpu_index(const char *comm);
/* The CPU of vCPU n over set (n-th CPU, wrapping past the end). */
int irq_vcpu_cpu(const org_cpuset *set, unsigned n);
void irq_pin_vms(irq *s);
void irq_pin_vm(irq *s, irq_vm *vm);
int irq_watch_start(irq *s);
void irq_watch_stop(irq *s);
json_t *irq_vms_json(irq *s);
void irq_vms_free(irq *s);

#endif
