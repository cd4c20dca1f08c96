/* gpuworker.c — one worker for every GPU of this agent: the descriptor, config map,
 * hooks, verbs (`status`, `tasks [N]`, `cancel TASK_ID`) and telemetry.
 *
 * At init it finds the GPUs (discover.c), indexes them gpu<i> by sorted PCI address or
 * by the order of an explicit `gpus:` list (the rule gpucache and maestro share),
 * resolves the unprivileged task user, and subscribes to gpu.task.run.* and
 * gpu.task.cancel.* (a token per GPU: "3" or "gpu3"; there is no global subject, so an
 * unpinned task can never run on every GPU). It publishes gpu.worker.up, a heartbeat
 * and per-GPU metrics on their own timers (also as Prometheus gauges labelled gpu and
 * pci), and re-scans sysfs: a card that disappears is marked gone and its task fails
 * cleanly. Indices never move while the instance lives; a card that appears later is
 * reported and used after a reload. */
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gpuworker.h"

#define GPUW_VERSION       "1.0.0"
#define GPUW_TASKS_DEFAULT 20
#define GPUW_TASKS_MAX     1000

static const org_config_entry config_map[] = {
        {.key = "gpus",
         .type = ORG_CFG_ANY,
         .default_value = "auto",
         .help = "auto (every AMD display function, gpu<i> by sorted PCI address) or a list of PCI addresses "
                 "(gpu<i> = position in the list)"},
        {.key = "task_root",
         .type = ORG_CFG_STRING,
         .default_value = "/var/lib/organism/tasks",
         .help = "every task's cwd lies under it (default <task_root>/gpu<i>/<task_id>); on disk, not tmpfs"},
        {.key = "user",
         .type = ORG_CFG_STRING,
         .default_value = "organism-task",
         .help = "unprivileged user the tasks run as, with its groups (render, video); root is refused"},
        {.key = "allow_shell",
         .type = ORG_CFG_BOOL,
         .default_value = "false",
         .help = "accept type: shell tasks (/bin/sh -c TEXT); off: only argv tasks"},
        {.key = "default_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "1h",
         .min = "1s",
         .max = "30d",
         .help = "time-out of a task that gives none; on expiry its whole cgroup (or process group) is killed"},
        {.key = "max_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "12h",
         .min = "1s",
         .max = "30d",
         .help = "a task's own timeout is capped at this"},
        {.key = "heartbeat_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "5s",
         .min = "100ms",
         .max = "1h",
         .help = "period of gpu.worker.heartbeat"},
        {.key = "metrics_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "5s",
         .min = "100ms",
         .max = "1h",
         .help = "period of gpu.worker.metrics (one message per GPU) and of the Prometheus gauges"},
        {.key = "rescan_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "10s",
         .min = "100ms",
         .max = "1h",
         .help = "period of the sysfs re-scan that notices a card gone or rebound to vfio-pci"},
        {.key = "running_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "30s",
         .min = "100ms",
         .max = "1h",
         .help = "gpu.task.running is repeated at this period while a task runs (extends maestro's lease)"},
        {.key = "busy_sample_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "1s",
         .min = "100ms",
         .max = "1h",
         .help = "gpu_busy_percent is sampled at this period and gpu.worker.metrics reports the mean since the "
                 "last message (one reading jumps between 0 and 100); not below metrics_interval = one reading"},
        {.key = "uevents",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "re-scan within 200 ms of a kernel uevent of the pci or drm subsystem (a card unbound, rebound to "
                 "vfio-pci, removed), besides rescan_interval"},
        {.key = "env",
         .type = ORG_CFG_STRING_DICT,
         .help = "added to every task's minimal environment, e.g. {HSA_OVERRIDE_GFX_VERSION: \"8.0.3\"}"},
        {.key = "cgroup",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "run each task in its own cgroup v2 (falls back to its process group where none is writable)"},
        {.key = "libdrm",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "on the real system, cross-check discovery with libdrm (drmGetDevices2, drmGetVersion)"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "status", .help = "each GPU: state, PCI address, card, render node, current task, last metrics"},
        {.name = "tasks", .args = "[N]", .help = "the N most recent task results from the store (default 20)"},
        {.name = "cancel", .mutating = true, .args = "TASK_ID", .help = "kill a running task (err: cancelled)"},
        ORG_VERBS_END,
};

char *gpuw_ts(gpuw *w, char *buf, size_t len) {
        return org_rfc3339_us(w->host->now_realtime_us(w->ctx), buf, len);
}

void gpuw_publish(gpuw *w, const char *subject, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text) {
                w->host->log(w->ctx, ORG_LOG_ERR, "%s: out of memory", subject);
                return;
        }
        int r = w->host->publish(w->ctx, subject, NULL, 0, text, strlen(text));
        if (r < 0)
                w->host->log(w->ctx, ORG_LOG_ERR, "publish %s: %s", subject, strerror(-r));
        free(text);
}

static uint64_t cfg_ms(gpuw *w, const char *key, uint64_t def) {
        int64_t v;
        return w->host->config_int(w->ctx, key, &v) >= 0 && v > 0 ? (uint64_t)v : def;
}

static bool cfg_bool(gpuw *w, const char *key, bool def) {
        bool v;
        return w->host->config_bool(w->ctx, key, &v) >= 0 ? v : def;
}

/* ---- telemetry ---------------------------------------------------------------- */

static json_t *gpu_json(const gpuw_gpu *g) {
        return json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:o}", "gpu", (int)g->index, "pci", g->dev.pci,
                         "card", g->dev.card, "render", g->dev.render, "driver", g->dev.driver, "state",
                         gpuw_state_name(g->state), "task_id",
                         g->task ? json_string(gpuw_task_id(g->task)) : json_null(), "last_task",
                         g->last_task[0] ? json_string(g->last_task) : json_null(), "last_attempt",
                         g->last_task[0] ? json_integer(g->last_attempt) : json_null());
}

static json_t *gpus_json(gpuw *w) {
        json_t *a = json_array();
        for (size_t i = 0; i < w->n_gpus; i++)
                json_array_append_new(a, gpu_json(&w->gpus[i]));
        return a;
}

static json_t *num_or_null(bool has, double v) {
        return has ? json_real(v) : json_null();
}

static json_t *metrics_json(gpuw *w, const gpuw_gpu *g) {
        const gpuw_metrics *m = &g->last;
        char ts[40];
        json_t *o = json_object();
        json_object_set_new(o, "gpu", json_integer(g->index));
        json_object_set_new(o, "pci", json_string(g->dev.pci));
        json_object_set_new(o, "card", json_string(g->dev.card));
        json_object_set_new(o, "gpu_busy_percent", num_or_null(m->has_busy, m->busy));
        json_object_set_new(o, "gpu_busy_now", num_or_null(m->has_busy, m->busy_now));
        json_object_set_new(o, "busy_samples", json_integer(m->has_busy ? m->busy_samples : 0));
        json_object_set_new(o, "temp_c", num_or_null(m->has_temp, m->temp_c));
        json_object_set_new(o, "power_w", num_or_null(m->has_power, m->power_w));
        json_object_set_new(o, "fan_rpm", num_or_null(m->has_fan, m->fan_rpm));
        json_object_set_new(o, "vram_used", m->has_vram_used ? json_integer((json_int_t)m->vram_used) : json_null());
        json_object_set_new(o, "vram_total", m->has_vram_total ? json_integer((json_int_t)m->vram_total) : json_null());
        json_object_set_new(o, "suspended", json_boolean(m->suspended));
        json_object_set_new(o, "state", json_string(gpuw_state_name(g->state)));
        json_object_set_new(o, "ts", json_string(gpuw_ts(w, ts, sizeof ts)));
        return o;
}

static void gauge(gpuw *w, const gpuw_gpu *g, const char *name, bool has, double v, const char *help) {
        if (!has)
                return;
        char full[160];
        snprintf(full, sizeof full, "%s{gpu=\"%u\",pci=\"%s\"}", name, g->index, g->dev.pci);
        (void)w->host->metric_set(w->ctx, full, ORG_METRIC_GAUGE, v, help);
}

static void metrics_pass(gpuw *w) {
        uint64_t t0 = w->host->now_monotonic_us(w->ctx);
        for (size_t i = 0; i < w->n_gpus; i++) {
                gpuw_gpu *g = &w->gpus[i];
                if (g->state == GPUW_GONE || g->state == GPUW_PASSTHROUGH)
                        continue;
                gpuw_read_metrics(w, &g->dev, &g->last);
                gpuw_metrics *m = &g->last;
                if (m->has_busy) {
                        /* the mean of the samples of the window, this reading included */
                        m->busy_now = m->busy;
                        m->busy_samples = g->busy_n + 1;
                        m->busy = (g->busy_sum + m->busy) / m->busy_samples;
                }
                g->busy_sum = 0;
                g->busy_n = 0;
                gauge(w, g, "gpuworker_gpu_busy_percent", m->has_busy, m->busy, "gpu_busy_percent of the card");
                gauge(w, g, "gpuworker_temp_celsius", m->has_temp, m->temp_c, "hwmon temp1_input");
                gauge(w, g, "gpuworker_power_watts", m->has_power, m->power_w, "hwmon power1_average");
                gauge(w, g, "gpuworker_fan_rpm", m->has_fan, m->fan_rpm, "hwmon fan1_input");
                gauge(w, g, "gpuworker_vram_used_bytes", m->has_vram_used, (double)m->vram_used, "mem_info_vram_used");
                gauge(w, g, "gpuworker_vram_total_bytes", m->has_vram_total, (double)m->vram_total,
                      "mem_info_vram_total");
                gauge(w, g, "gpuworker_suspended", true, m->suspended, "1 when the card is runtime-suspended");
                gauge(w, g, "gpuworker_busy", true, g->task != NULL, "1 while a task runs on the GPU");
                gpuw_publish(w, "gpu.worker.metrics", metrics_json(w, g));
        }
        w->metrics_passes++;
        w->metrics_pass_us = w->host->now_monotonic_us(w->ctx) - t0;
}

static void heartbeat(gpuw *w) {
        char ts[40];
        gpuw_publish(w, "gpu.worker.heartbeat",
                     json_pack("{s:s, s:o, s:s}", "agent", w->host->agent_name(w->ctx), "gpus", gpus_json(w), "ts",
                               gpuw_ts(w, ts, sizeof ts)));
}

/* ---- discovery ---------------------------------------------------------------- */

static gpuw_state state_of(const gpuw_found *f) {
        return strcmp(f->driver, "vfio-pci") == 0 ? GPUW_PASSTHROUGH : GPUW_IDLE;
}

/* The explicit list as C strings (borrowed from w->gpus_list), or NULL for auto. */
static size_t only_list(gpuw *w, const char **only) {
        size_t n = 0;
        for (size_t i = 0; i < json_array_size(w->gpus_list) && n < GPUW_MAX_GPUS; i++)
                only[n++] = json_string_value(json_array_get(w->gpus_list, i));
        return n;
}

static int scan(gpuw *w, gpuw_found *found, size_t *ret_n) {
        const char *only[GPUW_MAX_GPUS];
        size_t n_only = only_list(w, only);
        return gpuw_discover(w, w->gpus_list ? only : NULL, n_only, found, GPUW_MAX_GPUS, ret_n);
}

static const gpuw_found *find_pci(const gpuw_found *f, size_t n, const char *pci) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(f[i].pci, pci) == 0)
                        return &f[i];
        return NULL;
}

static int initial_scan(gpuw *w) {
        gpuw_found found[GPUW_MAX_GPUS];
        size_t n = 0;
        int r = scan(w, found, &n);
        if (r < 0)
                return r;
        if (w->use_libdrm)
                gpuw_drm_check(w, found, n);
        else
                snprintf(w->drm_why, sizeof w->drm_why, "libdrm: false in the config: sysfs only");
        if (w->gpus_list) {
                /* gpu<i> is the position in the list, present or not */
                for (size_t i = 0; i < json_array_size(w->gpus_list) && i < GPUW_MAX_GPUS; i++) {
                        gpuw_gpu *g = &w->gpus[w->n_gpus++];
                        const char *pci = json_string_value(json_array_get(w->gpus_list, i));
                        const gpuw_found *f = find_pci(found, n, pci);
                        g->index = (unsigned)i;
                        if (f) {
                                g->dev = *f;
                                g->state = state_of(f);
                        } else {
                                gpuw_copy(g->dev.pci, sizeof g->dev.pci, pci);
                                g->state = GPUW_GONE;
                                w->host->log(w->ctx, ORG_LOG_WARNING, "gpu%zu: no AMD display function at %s", i, pci);
                        }
                }
        } else
                for (size_t i = 0; i < n; i++) {
                        gpuw_gpu *g = &w->gpus[w->n_gpus++];
                        g->index = (unsigned)i;
                        g->dev = found[i];
                        g->state = state_of(&found[i]);
                }
        unsigned pt = 0;
        for (size_t i = 0; i < w->n_gpus; i++)
                pt += w->gpus[i].state == GPUW_PASSTHROUGH;
        w->host->log(w->ctx, ORG_LOG_INFO, "%zu GPUs (%u passed through to vfio-pci, not driven)%s%s", w->n_gpus, pt,
                     w->drm_why[0] ? "; " : "", w->drm_why);
        return 0;
}

static void rescan(gpuw *w) {
        gpuw_found found[GPUW_MAX_GPUS];
        size_t n = 0;
        if (scan(w, found, &n) < 0)
                return;
        for (size_t i = 0; i < w->n_gpus; i++) {
                gpuw_gpu *g = &w->gpus[i];
                const gpuw_found *f = find_pci(found, n, g->dev.pci);
                gpuw_state want = f ? state_of(f) : GPUW_GONE;
                if (f) {
                        /* node names may change across a rebind */
                        gpuw_copy(g->dev.card, sizeof g->dev.card, f->card);
                        gpuw_copy(g->dev.render, sizeof g->dev.render, f->render);
                        gpuw_copy(g->dev.hwmon, sizeof g->dev.hwmon, f->hwmon);
                        gpuw_copy(g->dev.driver, sizeof g->dev.driver, f->driver);
                }
                gpuw_state have = g->state == GPUW_BUSY ? GPUW_IDLE : g->state;
                if (want == have)
                        continue;
                w->host->log(w->ctx, ORG_LOG_WARNING, "gpu%u (%s): %s -> %s", g->index, g->dev.pci,
                             gpuw_state_name(g->state), gpuw_state_name(want));
                if (want != GPUW_IDLE)
                        gpuw_task_fail_gpu(w, g, want == GPUW_GONE ? "gpu gone" : "gpu rebound to vfio-pci");
                g->state = want;
                if (want != GPUW_IDLE)
                        memset(&g->last, 0, sizeof g->last);
        }
        for (size_t k = 0; k < n; k++) {
                bool known = false;
                for (size_t i = 0; i < w->n_gpus && !known; i++)
                        known = strcmp(w->gpus[i].dev.pci, found[k].pci) == 0;
                if (!known)
                        w->host->log(w->ctx, ORG_LOG_NOTICE,
                                     "new GPU at %s: used after a reload (indices stay stable while running)",
                                     found[k].pci);
        }
}

/* ---- kernel uevents ------------------------------------------------------------ */

#define GPUW_UEVENT_DELAY_MS 200 /* events come in bursts (unbind, remove, the drm nodes) */

static void on_uevent_rescan(org_ctx *ctx, uint64_t id, void *userdata) {
        gpuw *w = userdata;
        w->uevent_timer = 0;
        w->uevent_rescans++;
        rescan(w);
}

/* "ACTION@DEVPATH\0KEY=VALUE\0...": a re-scan is due for the pci and drm subsystems. */
static bool uevent_relevant(const char *buf, size_t n) {
        for (size_t i = 0; i < n;) {
                const char *kv = buf + i;
                size_t l = strnlen(kv, n - i);
                if ((l == 13 && memcmp(kv, "SUBSYSTEM=pci", 13) == 0) ||
                    (l == 13 && memcmp(kv, "SUBSYSTEM=drm", 13) == 0))
                        return true;
                i += l + 1;
        }
        return false;
}

static void on_uevent(org_ctx *ctx, uint64_t id, int fd, uint32_t revents, void *userdata) {
        gpuw *w = userdata;
        char buf[8192];
        bool due = false;
        /* drain what is queued (bounded per wake-up); level-triggered brings us back */
        for (int k = 0; k < 64; k++) {
                ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (n <= 0)
                        break;
                w->uevents++;
                due |= uevent_relevant(buf, (size_t)n);
        }
        if (due && !w->uevent_timer &&
            w->host->timer_add(w->ctx, GPUW_UEVENT_DELAY_MS, 0, on_uevent_rescan, w, &w->uevent_timer) < 0)
                w->uevent_timer = 0;
}

/* Listens to the kernel's uevent multicast group; without it (no permission, a
 * sandbox) the timer re-scan remains. */
static void uevent_start(gpuw *w) {
        w->uevent_fd = -1;
        if (!w->use_uevents)
                return;
        int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
        struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1};
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
            w->host->io_add(w->ctx, fd, ORG_IO_IN, on_uevent, w, &w->uevent_watch) < 0) {
                w->host->log(w->ctx, ORG_LOG_NOTICE, "no kernel uevents (%s): re-scan every %" PRIu64 " ms only",
                             strerror(errno), w->rescan_ms);
                if (fd >= 0)
                        close(fd);
                return;
        }
        w->uevent_fd = fd;
}

static void uevent_stop(gpuw *w) {
        if (w->uevent_fd < 0)
                return;
        w->host->io_remove(w->ctx, w->uevent_watch);
        close(w->uevent_fd);
        w->uevent_fd = -1;
}

/* ---- the task user ------------------------------------------------------------ */

static int resolve_user(gpuw *w) {
        struct passwd pw, *res = NULL;
        char buf[16384];
        int e = getpwnam_r(w->user, &pw, buf, sizeof buf, &res);
        if (e || !res) {
                snprintf(w->user_why, sizeof w->user_why, "task user %s does not exist (see units/sysusers.d)",
                         w->user);
                w->host->log(w->ctx, ORG_LOG_WARNING, "%s: tasks will be refused", w->user_why);
                return 0;
        }
        if (pw.pw_uid == 0 || pw.pw_gid == 0) {
                /* A task from the bus never runs as root: that is the seed's remote root. */
                w->host->log(w->ctx, ORG_LOG_ERR,
                             "refusing to run tasks as %s (uid %u gid %u): set user to an "
                             "unprivileged account",
                             w->user, (unsigned)pw.pw_uid, (unsigned)pw.pw_gid);
                return -EPERM;
        }
        w->uid = pw.pw_uid;
        w->gid = pw.pw_gid;
        gid_t groups[GPUW_GROUPS_MAX];
        int ng = GPUW_GROUPS_MAX;
        if (getgrouplist(w->user, pw.pw_gid, groups, &ng) < 0)
                ng = GPUW_GROUPS_MAX; /* more than we keep: the first ones */
        w->n_groups = 0;
        for (int i = 0; i < ng && i < GPUW_GROUPS_MAX; i++)
                if (groups[i] != 0) /* never the root group */
                        w->groups[w->n_groups++] = groups[i];
        if (geteuid() == 0)
                w->set_ids = true;
        else if (geteuid() == w->uid)
                w->set_ids = false; /* agentd already is that user */
        else {
                snprintf(w->user_why, sizeof w->user_why,
                         "agentd runs as uid %u and cannot switch to task user %s (uid %u)", (unsigned)geteuid(),
                         w->user, (unsigned)w->uid);
                w->host->log(w->ctx, ORG_LOG_WARNING, "%s: tasks will be refused", w->user_why);
                return 0;
        }
        w->user_ok = true;
        return 0;
}

/* Creates the missing directories of path, mode set explicitly (not through agentd's
 * umask, 0027 under systemd: the task user must be able to traverse them). */
static int mkdir_p(const char *path, mode_t mode) {
        char buf[PATH_MAX];
        gpuw_copy(buf, sizeof buf, path);
        for (char *p = buf + 1;; p++)
                if (*p == '/' || *p == '\0') {
                        char c = *p;
                        *p = '\0';
                        if (mkdir(buf, mode) == 0)
                                (void)chmod(buf, mode);
                        else if (errno != EEXIST)
                                return -errno;
                        *p = c;
                        if (!c)
                                break;
                }
        return 0;
}

/* ---- hooks -------------------------------------------------------------------- */

static void on_heartbeat(org_ctx *ctx, uint64_t id, void *userdata) {
        heartbeat(userdata);
}
static void on_metrics(org_ctx *ctx, uint64_t id, void *userdata) {
        metrics_pass(userdata);
}
static void on_rescan(org_ctx *ctx, uint64_t id, void *userdata) {
        rescan(userdata);
}
static void on_running(org_ctx *ctx, uint64_t id, void *userdata) {
        gpuw_tasks_running_tick(userdata);
}

static void on_busy_sample(org_ctx *ctx, uint64_t id, void *userdata) {
        gpuw *w = userdata;
        for (size_t i = 0; i < w->n_gpus; i++) {
                gpuw_gpu *g = &w->gpus[i];
                double v;
                if ((g->state == GPUW_IDLE || g->state == GPUW_BUSY) && gpuw_read_busy(w, &g->dev, &v) == 0) {
                        g->busy_sum += v;
                        g->busy_n++;
                }
        }
}

static void gpuw_free(gpuw *w) {
        if (!w)
                return;
        uevent_stop(w);
        if (w->uevent_timer)
                w->host->timer_cancel(w->ctx, w->uevent_timer);
        uint64_t *timers[] = {&w->hb_timer, &w->metrics_timer, &w->rescan_timer, &w->running_timer, &w->busy_timer};
        for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
                if (*timers[i])
                        w->host->timer_cancel(w->ctx, *timers[i]);
        json_decref(w->env);
        json_decref(w->gpus_list);
        free(w);
}

static int load_config(gpuw *w) {
        json_error_t e;
        json_t *cfg = json_loads(w->host->config_json(w->ctx), 0, &e);
        int r = 0;
        if (!json_is_object(cfg)) {
                json_decref(cfg);
                cfg = json_object();
        }
        json_t *gpus = json_object_get(cfg, "gpus");
        if (json_is_array(gpus)) {
                size_t i;
                json_t *v;
                json_array_foreach (gpus, i, v)
                        if (!json_is_string(v)) {
                                w->host->log(w->ctx, ORG_LOG_ERR, "gpus: item %zu is not a PCI address", i);
                                r = -EINVAL;
                        }
                if (json_array_size(gpus) > GPUW_MAX_GPUS) {
                        w->host->log(w->ctx, ORG_LOG_ERR, "gpus: at most %d", GPUW_MAX_GPUS);
                        r = -EINVAL;
                }
                w->gpus_list = json_incref(gpus);
        } else if (gpus && !(json_is_string(gpus) && strcmp(json_string_value(gpus), "auto") == 0)) {
                w->host->log(w->ctx, ORG_LOG_ERR, "gpus: auto or a list of PCI addresses");
                r = -EINVAL;
        }
        json_t *env = json_object_get(cfg, "env");
        w->env = json_is_object(env) ? json_incref(env) : json_object();
        const char *s = json_string_value(json_object_get(cfg, "task_root"));
        char root[PATH_MAX];
        gpuw_copy(root, sizeof root, s ? s : "/var/lib/organism/tasks");
        const char *u = json_string_value(json_object_get(cfg, "user"));
        gpuw_copy(w->user, sizeof w->user, u ? u : "organism-task");
        json_decref(cfg);
        if (r < 0)
                return r;

        if (root[0] != '/') {
                w->host->log(w->ctx, ORG_LOG_ERR, "task_root must be an absolute path: %s", root);
                return -EINVAL;
        }
        if ((r = mkdir_p(root, 0755)) < 0 || !realpath(root, w->task_root)) {
                if (r == 0)
                        r = -errno;
                w->host->log(w->ctx, ORG_LOG_ERR, "task_root %s: %s", root, strerror(-r));
                return r;
        }
        if (strcmp(w->task_root, "/") == 0) {
                w->host->log(w->ctx, ORG_LOG_ERR, "task_root may not be /");
                return -EINVAL;
        }
        w->allow_shell = cfg_bool(w, "allow_shell", false);
        w->use_cgroup = cfg_bool(w, "cgroup", true);
        w->use_libdrm = cfg_bool(w, "libdrm", true);
        w->default_timeout_ms = cfg_ms(w, "default_timeout", 3600 * 1000);
        w->max_timeout_ms = cfg_ms(w, "max_timeout", 12 * 3600 * 1000);
        if (w->default_timeout_ms > w->max_timeout_ms)
                w->default_timeout_ms = w->max_timeout_ms;
        w->heartbeat_ms = cfg_ms(w, "heartbeat_interval", 5000);
        w->metrics_ms = cfg_ms(w, "metrics_interval", 5000);
        w->rescan_ms = cfg_ms(w, "rescan_interval", 10000);
        w->running_ms = cfg_ms(w, "running_interval", 30000);
        w->busy_sample_ms = cfg_ms(w, "busy_sample_interval", 1000);
        w->use_uevents = cfg_bool(w, "uevents", true);
        return 0;
}

static int gpuworker_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        gpuw *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->host = host;
        w->ctx = ctx;
        w->uevent_fd = -1;
        int r = load_config(w);
        if (r < 0)
                goto fail;
        if ((r = resolve_user(w)) < 0)
                goto fail;
        if ((r = initial_scan(w)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot list /sys/bus/pci/devices: %s", strerror(-r));
                goto fail;
        }
        if ((r = gpuw_tasks_init(w)) < 0)
                host->log(ctx, ORG_LOG_WARNING,
                          "store unavailable (%s): results are not kept, re-delivered "
                          "tasks may run again",
                          strerror(-r));
        uint64_t sid;
        if ((r = host->subscribe(ctx, "gpu.task.run.*", &sid)) < 0 ||
            (r = host->subscribe(ctx, "gpu.task.cancel.*", &sid)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "subscribe: %s", strerror(-r));
                goto fail;
        }
        if ((r = host->timer_add(ctx, w->heartbeat_ms, w->heartbeat_ms, on_heartbeat, w, &w->hb_timer)) < 0 ||
            (r = host->timer_add(ctx, w->metrics_ms, w->metrics_ms, on_metrics, w, &w->metrics_timer)) < 0 ||
            (r = host->timer_add(ctx, w->rescan_ms, w->rescan_ms, on_rescan, w, &w->rescan_timer)) < 0 ||
            (r = host->timer_add(ctx, w->running_ms, w->running_ms, on_running, w, &w->running_timer)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "timers: %s", strerror(-r));
                goto fail;
        }
        if (w->busy_sample_ms < w->metrics_ms &&
            (r = host->timer_add(ctx, w->busy_sample_ms, w->busy_sample_ms, on_busy_sample, w, &w->busy_timer)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "timers: %s", strerror(-r));
                goto fail;
        }
        uevent_start(w);
        char ts[40];
        gpuw_publish(w, "gpu.worker.up",
                     json_pack("{s:s, s:i, s:o, s:s, s:b, s:s}", "agent", host->agent_name(ctx), "pid", (int)getpid(),
                               "gpus", gpus_json(w), "task_root", w->task_root, "allow_shell", w->allow_shell, "ts",
                               gpuw_ts(w, ts, sizeof ts)));
        metrics_pass(w);
        heartbeat(w);
        *ret_state = w;
        return 0;
fail:
        gpuw_free(w);
        return r;
}

static int gpuworker_handle(void *state, const org_msg *msg) {
        gpuw *w = state;
        const char *last = strrchr(msg->subject, '.');
        if (!last)
                return 0;
        if (strncmp(msg->subject, "gpu.task.run.", 13) == 0)
                gpuw_task_run_msg(w, last + 1, msg);
        else if (strncmp(msg->subject, "gpu.task.cancel.", 16) == 0)
                gpuw_task_cancel_msg(w, last + 1, msg);
        return 0;
}

static int reply(gpuw *w, const org_msg *req, json_t *o, const char *error) {
        if (!o)
                o = json_pack("{s:s}", "error", error ? error : "out of memory");
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = w->host->respond(w->ctx, req->reply, text, strlen(text));
        free(text);
        return r;
}

static json_t *status_base(gpuw *w) {
        json_t *gpus = json_array();
        for (size_t i = 0; i < w->n_gpus; i++) {
                gpuw_gpu *g = &w->gpus[i];
                json_t *o = gpu_json(g);
                json_object_set_new(o, "hwmon", json_string(g->dev.hwmon));
                json_object_set_new(o, "libdrm", json_boolean(g->dev.drm_checked));
                json_object_set_new(o, "task", gpuw_task_json(g->task));
                json_object_set_new(o, "metrics", g->last.valid ? metrics_json(w, g) : json_null());
                json_object_set_new(o, "tasks_run", json_integer((json_int_t)g->tasks_run));
                json_object_set_new(o, "tasks_done", json_integer((json_int_t)g->tasks_done));
                json_object_set_new(o, "tasks_err", json_integer((json_int_t)g->tasks_err));
                json_array_append_new(gpus, o);
        }
        return json_pack("{s:o, s:s, s:s, s:b, s:s?, s:b, s:s, s:I, s:I, s:I}", "gpus", gpus, "task_root", w->task_root,
                         "user", w->user, "user_ok", w->user_ok, "user_why", w->user_ok ? NULL : w->user_why,
                         "allow_shell", w->allow_shell, "discovery", w->drm_why[0] ? w->drm_why : "sysfs + libdrm",
                         "metrics_passes", (json_int_t)w->metrics_passes, "metrics_pass_us",
                         (json_int_t)w->metrics_pass_us, "tasks_refused", (json_int_t)w->tasks_refused);
}

static json_t *status_json(gpuw *w) {
        json_t *o = status_base(w);
        json_object_set_new(o, "uevents", w->uevent_fd >= 0 ? json_integer((json_int_t)w->uevents) : json_null());
        json_object_set_new(o, "uevent_rescans", json_integer((json_int_t)w->uevent_rescans));
        return o;
}

/* The verb's first argument: {"args": [X]}, {"<key>": X}, or the bare JSON value. */
static json_t *first_arg(const org_msg *req, const char *key) {
        if (!req->data || req->len == 0)
                return NULL;
        json_error_t e;
        json_t *a = json_loadb(req->data, req->len, JSON_DECODE_ANY, &e);
        json_t *v = NULL;
        if (json_is_object(a)) {
                v = json_object_get(a, key);
                if (!v)
                        v = json_array_get(json_object_get(a, "args"), 0);
        } else
                v = a;
        json_incref(v);
        json_decref(a);
        return v;
}

static int gpuworker_call(void *state, const char *verb, const org_msg *req) {
        gpuw *w = state;
        if (strcmp(verb, "status") == 0)
                return reply(w, req, status_json(w), NULL);
        if (strcmp(verb, "tasks") == 0) {
                json_t *a = first_arg(req, "n");
                int64_t n = GPUW_TASKS_DEFAULT;
                if (json_is_integer(a))
                        n = json_integer_value(a);
                else if (json_is_string(a)) {
                        char *end;
                        n = strtoll(json_string_value(a), &end, 10);
                        if (*end)
                                n = 0;
                } else if (a && !json_is_null(a))
                        n = 0;
                json_decref(a);
                if (n < 1)
                        return reply(w, req, NULL, "tasks [N]: N must be a positive integer");
                if (n > GPUW_TASKS_MAX)
                        n = GPUW_TASKS_MAX;
                return reply(w, req, json_pack("{s:o}", "tasks", gpuw_tasks_recent(w, n)), NULL);
        }
        if (strcmp(verb, "cancel") == 0) {
                json_t *a = first_arg(req, "task_id");
                const char *id = json_string_value(a);
                int r = id && gpuw_task_id_valid(id) ? gpuw_task_cancel(w, id, "cancelled") : -EINVAL;
                json_t *o = r == 0 ? json_pack("{s:s, s:b}", "task_id", id, "cancelled", 1) : NULL;
                char why[200];
                snprintf(why, sizeof why,
                         r == -EINVAL ? "cancel TASK_ID: a valid task_id is needed" : "task %.128s is not running here",
                         id ? id : "");
                json_decref(a);
                return reply(w, req, o, why);
        }
        return -EOPNOTSUPP;
}

/* A reload hands the running tasks to the new build: it adopts their commands, so a
 * task running when the operator drops in a new gpuworker.so finishes and is reported
 * once, by the new build. */
static int gpuworker_save(void *state, void **ret_blob, size_t *ret_len) {
        gpuw *w = state;
        json_t *tasks = json_array();
        int r = tasks ? gpuw_tasks_save(w, tasks) : -ENOMEM;
        json_t *o = r >= 0 ? json_pack("{s:i, s:O}", "format", 1, "tasks", tasks) : NULL;
        json_decref(tasks);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static int gpuworker_restore(void *state, const void *blob, size_t len) {
        gpuw *w = state;
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        if (json_integer_value(json_object_get(o, "format")) == 1 && ORG_HOST_HAS(w->host, exec_adopt))
                gpuw_tasks_restore(w, json_object_get(o, "tasks"));
        else
                w->host->log(w->ctx, ORG_LOG_WARNING, "state of the previous build not understood: its tasks "
                                                     "are not taken over");
        json_decref(o);
        return 0;
}

static void gpuworker_fini(void *state) {
        gpuw *w = state;
        if (!w)
                return;
        gpuw_tasks_fini(w);
        gpuw_free(w);
}

ORG_PLUGIN_DEFINE(.name = "gpuworker", .version = GPUW_VERSION,
                  .summary = "one worker per GPU: discovery (sysfs + libdrm), metrics, one task at a time per GPU as "
                             "an unprivileged user in its own cgroup, results kept by task_id",
                  .config_map = config_map, .verbs = verbs, .init = gpuworker_init, .handle = gpuworker_handle,
                  .call = gpuworker_call, .fini = gpuworker_fini, .save_state = gpuworker_save,
                  .restore_state = gpuworker_restore);
