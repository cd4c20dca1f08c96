/* gpuworker.h — the GPU worker plugin's state and the functions its files share.
 *
 * gpuworker.c holds the descriptor, config, hooks, verbs and the telemetry timers;
 * discover.c finds the AMD GPUs (sysfs through the sysroot, cross-checked with libdrm on
 * the real system) and reads their sensors; tasks.c validates, runs and answers tasks
 * (one at a time per GPU, results kept in the store by task_id). Nothing here leaves
 * the .so: only the descriptor is exported. */
#ifndef PLUGINS_GPUWORKER_GPUWORKER_H
#define PLUGINS_GPUWORKER_GPUWORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include <jansson.h>

#include <organism/plugin.h>
#include <organism/text.h>

#define GPUW_MAX_GPUS    64
#define GPUW_PCI_MAX     16 /* "0000:03:00.0" + NUL */
#define GPUW_NODE_MAX    32 /* "card11", "renderD139" */
#define GPUW_TASK_ID_MAX 128
#define GPUW_PAYLOAD_MAX (256 * 1024)
#define GPUW_ARGV_MAX    256
#define GPUW_ARG_MAX     4096
#define GPUW_ENV_MAX     64
#define GPUW_CAPTURE     64000u
#define GPUW_GROUPS_MAX  32

typedef enum gpuw_state {
        GPUW_IDLE,
        GPUW_BUSY,
        GPUW_GONE,
        GPUW_PASSTHROUGH,
} gpuw_state;

/* One sensor pass of one GPU; has_* false = not read (absent, or card suspended). */
typedef struct gpuw_metrics {
        bool valid;
        bool suspended;
        bool has_busy, has_temp, has_power, has_fan, has_vram_used, has_vram_total;
        double busy, temp_c, power_w, fan_rpm; /* busy: the mean of the samples since the last pass */
        double busy_now;                       /* busy: read at this pass */
        unsigned busy_samples;
        uint64_t vram_used, vram_total;
        uint64_t ts_us;
} gpuw_metrics;

/* What discovery found at one PCI address. */
typedef struct gpuw_found {
        char pci[GPUW_PCI_MAX];
        char card[GPUW_NODE_MAX];   /* "card10" or "" */
        char render[GPUW_NODE_MAX]; /* "renderD138" or "" */
        char hwmon[GPUW_NODE_MAX];  /* "hwmon3" or "" */
        char driver[32];            /* "amdgpu", "vfio-pci", "" (unbound) */
        char device_id[8];          /* "67df" */
        bool drm_checked;           /* libdrm saw it too */
} gpuw_found;

typedef struct gpuw_task gpuw_task;

typedef struct gpuw_gpu {
        unsigned index;
        gpuw_found dev;
        gpuw_state state; /* GPUW_BUSY while task != NULL */
        gpuw_task *task;  /* the one running, or NULL */
        gpuw_metrics last;
        double busy_sum; /* samples of gpu_busy_percent since the last pass */
        unsigned busy_n;
        uint64_t tasks_run, tasks_done, tasks_err;
        /* the task that ended here last, in the heartbeat: "idle" then does not read as
         * "lost" to maestro while that task's done is still on its way */
        char last_task[GPUW_TASK_ID_MAX + 1];
        int64_t last_attempt;
} gpuw_gpu;

typedef struct gpuw {
        const org_host *host;
        org_ctx *ctx;

        /* config */
        char task_root[4096]; /* realpath, no trailing slash */
        char user[64];
        bool allow_shell;
        uint64_t default_timeout_ms, max_timeout_ms;
        uint64_t heartbeat_ms, metrics_ms, rescan_ms, running_ms, busy_sample_ms;
        json_t *env;       /* object: added to every task's environment */
        json_t *gpus_list; /* array of PCI addresses, or NULL for auto */
        bool use_cgroup;
        bool use_libdrm;

        /* the task user */
        bool user_ok;
        char user_why[160];
        uid_t uid;
        gid_t gid;
        gid_t groups[GPUW_GROUPS_MAX];
        size_t n_groups;
        bool set_ids; /* false when agentd already runs as that user */

        gpuw_gpu gpus[GPUW_MAX_GPUS];
        size_t n_gpus;
        char drm_why[160]; /* why libdrm was not used, or "" */

        uint64_t hb_timer, metrics_timer, rescan_timer, running_timer, busy_timer;
        int uevent_fd; /* kernel uevents (NETLINK_KOBJECT_UEVENT), or -1 */
        uint64_t uevent_watch, uevent_timer;
        uint64_t uevents, uevent_rescans;
        bool use_uevents;
        uint64_t metrics_passes, metrics_pass_us;
        uint64_t tasks_refused;
        bool store_ok;
} gpuw;

/* Copies src into dst (size len), cut to fit, always terminated. */
static inline void gpuw_copy(char *dst, size_t len, const char *src) {
        size_t n = 0;
        while (src[n] && n + 1 < len)
                n++;
        memcpy(dst, src, n);
        dst[n] = '\0';
}

/* discover.c */
/* Finds AMD display functions under /sys/bus/pci/devices of the sysroot, sorted by
 * address (or in the order of `only` when not NULL: an array of n_only addresses,
 * missing ones skipped). Fills ret (up to max) and *ret_n. */
int gpuw_discover(gpuw *w, const char *const *only, size_t n_only, gpuw_found *ret, size_t max, size_t *ret_n);
/* Cross-checks found with libdrm (drmGetDevices2/drmGetVersion) when the sysroot is "/"
 * and /dev/dri exists; otherwise writes why not into w->drm_why. */
void gpuw_drm_check(gpuw *w, gpuw_found *found, size_t n);
/* Reads one GPU's sensors; a runtime-suspended card is not woken (only
 * power/runtime_status is read). */
void gpuw_read_metrics(gpuw *w, const gpuw_found *dev, gpuw_metrics *ret);
/* One sample of gpu_busy_percent; -EAGAIN for a runtime-suspended card (not woken). */
int gpuw_read_busy(gpuw *w, const gpuw_found *dev, double *ret);
const char *gpuw_state_name(gpuw_state s);

/* tasks.c */
int gpuw_tasks_init(gpuw *w);
void gpuw_task_run_msg(gpuw *w, const char *gpu_token, const org_msg *msg);
void gpuw_task_cancel_msg(gpuw *w, const char *gpu_token, const org_msg *msg);
/* Cancels task_id if it runs here; error is the err payload's "error". -ENOENT if not. */
int gpuw_task_cancel(gpuw *w, const char *task_id, const char *error);
/* Fails gpu's running task with error (the card went away). */
void gpuw_task_fail_gpu(gpuw *w, gpuw_gpu *g, const char *error);
void gpuw_tasks_running_tick(gpuw *w);
json_t *gpuw_task_json(const gpuw_task *t);
const char *gpuw_task_id(const gpuw_task *t);
json_t *gpuw_tasks_recent(gpuw *w, int64_t n);
void gpuw_tasks_fini(gpuw *w);
/* Reload: appends the running tasks to the array tasks / adopts those of the array
 * (host->exec_adopt, during restore_state). */
int gpuw_tasks_save(gpuw *w, json_t *tasks);
void gpuw_tasks_restore(gpuw *w, const json_t *tasks);
bool gpuw_task_id_valid(const char *id);
/* The GPU named by a subject token ("3" or "gpu3"), or NULL. */
gpuw_gpu *gpuw_gpu_by_token(gpuw *w, const char *token);

/* gpuworker.c */
char *gpuw_ts(gpuw *w, char *buf, size_t len);
void gpuw_publish(gpuw *w, const char *subject, json_t *o); /* takes o */

#endif
