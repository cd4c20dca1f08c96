/* psi.c — the kernel's memory-pressure trigger (Documentation/accounting/psi.rst):
 * writing "some STALL_US WINDOW_US" to /proc/pressure/memory makes the descriptor
 * report POLLPRI as soon as tasks stalled that long within the window, so the plugin
 * evaluates at once instead of at the next tick. It is armed only on the real system
 * (sysroot "/"; a fixture file is not procfs and must not be written) and only when the
 * kernel accepts it; otherwise the reason is logged once and the plugin keeps polling.
 * Events are rate-limited: one burst of pressure is one evaluation per min gap. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "memory.h"

/* Without CAP_SYS_RESOURCE the kernel (6.5+) accepts only windows that are multiples of
 * 2 s, the period of its averaging work; the maximum window is 10 s. */
#define PSI_UNPRIV_WINDOW_US 2000000ULL
#define PSI_MAX_WINDOW_US 10000000ULL

static void on_psi_timer(org_ctx *ctx, uint64_t id, void *userdata) {
        memory *m = userdata;
        m->psi_timer_pending = false;
        memory_evaluate(m, "psi");
}

static void on_psi(org_ctx *ctx, uint64_t id, int fd, uint32_t revents, void *userdata) {
        memory *m = userdata;
        if ((revents & (ORG_IO_ERR | ORG_IO_HUP)) && !(revents & ORG_IO_PRI)) {
                /* the trigger is gone (it never is for /proc, but a cgroup file can vanish) */
                memory_psi_stop(m);
                snprintf(m->psi_why, sizeof m->psi_why, "the trigger reported an error; polling");
                m->host->log(m->ctx, ORG_LOG_WARNING, "PSI trigger failed: back to polling every tick");
                return;
        }
        if (!(revents & ORG_IO_PRI))
                return;
        m->psi_events++;
        if (m->psi_timer_pending)
                return; /* an evaluation is already scheduled */
        uint64_t now = m->host->now_monotonic_us(m->ctx);
        if (now - m->last_eval_us >= m->psi_min_gap_us) {
                memory_evaluate(m, "psi");
                return;
        }
        uint64_t wait_ms = (m->psi_min_gap_us - (now - m->last_eval_us) + 999) / 1000;
        if (m->host->timer_add(m->ctx, wait_ms ? wait_ms : 1, 0, on_psi_timer, m, &m->psi_timer) >= 0)
                m->psi_timer_pending = true;
}

/* The kernel turns the last byte written into a NUL: write the terminator with it. */
static int write_trigger(int fd, uint64_t stall_us, uint64_t window_us) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "some %" PRIu64 " %" PRIu64, stall_us, window_us);
        if (n < 0 || (size_t)n >= sizeof buf)
                return -EINVAL;
        ssize_t w = write(fd, buf, (size_t)n + 1);
        return w < 0 ? -errno : 0;
}

/* Records and logs why there is no trigger; `what` is the step that failed. */
static int fail(memory *m, int fd, int error, const char *what) {
        if (fd >= 0)
                close(fd);
        snprintf(m->psi_why, sizeof m->psi_why, "%s: %s", what, strerror(-error));
        m->host->log(m->ctx, ORG_LOG_NOTICE, "no PSI trigger (%s): evaluating at each tick only", m->psi_why);
        return error;
}

int memory_psi_start(memory *m) {
        m->psi_fd = -1;
        if (!m->psi_enable) {
                snprintf(m->psi_why, sizeof m->psi_why, "psi_trigger is false");
                return -ECANCELED;
        }
        char *path = NULL;
        int r = m->host->sysroot_path(m->ctx, MEMORY_PSI_PATH, &path);
        if (r < 0)
                return fail(m, -1, r, MEMORY_PSI_PATH);
        bool real = strcmp(path, MEMORY_PSI_PATH) == 0;
        if (!real) {
                free(path);
                snprintf(m->psi_why, sizeof m->psi_why, "the sysroot is not /");
                m->host->log(m->ctx, ORG_LOG_DEBUG, "no PSI trigger: the sysroot is not /");
                return -EOPNOTSUPP;
        }
        int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        free(path);
        if (fd < 0)
                return fail(m, -1, -errno, "cannot open " MEMORY_PSI_PATH);
        struct statfs sfs;
        if (fstatfs(fd, &sfs) < 0)
                return fail(m, fd, -errno, "fstatfs " MEMORY_PSI_PATH);
        if (sfs.f_type != PROC_SUPER_MAGIC)
                return fail(m, fd, -EOPNOTSUPP, MEMORY_PSI_PATH " is not on procfs");

        uint64_t window = m->psi_window_us;
        r = write_trigger(fd, m->psi_stall_us, window);
        if (r == -EINVAL && window % PSI_UNPRIV_WINDOW_US != 0) {
                uint64_t w2 = (window / PSI_UNPRIV_WINDOW_US + 1) * PSI_UNPRIV_WINDOW_US;
                if (w2 <= PSI_MAX_WINDOW_US && write_trigger(fd, m->psi_stall_us, w2) >= 0) {
                        m->host->log(m->ctx, ORG_LOG_NOTICE,
                                     "the kernel refused a %" PRIu64 " us PSI window (unprivileged triggers need "
                                     "multiples of 2 s): using %" PRIu64 " us",
                                     window, w2);
                        window = w2;
                        r = 0;
                }
        }
        if (r < 0)
                return fail(m, fd, r, "the kernel refused the trigger");
        r = m->host->io_add(m->ctx, fd, ORG_IO_PRI, on_psi, m, &m->psi_watch);
        if (r < 0)
                return fail(m, fd, r, "cannot watch the trigger");
        m->psi_fd = fd;
        m->psi_armed = true;
        m->psi_why[0] = '\0';
        m->host->log(m->ctx, ORG_LOG_INFO, "PSI trigger armed: some %" PRIu64 " us stalled in %" PRIu64 " us",
                     m->psi_stall_us, window);
        return 0;
}

void memory_psi_stop(memory *m) {
        if (m->psi_watch) {
                m->host->io_remove(m->ctx, m->psi_watch);
                m->psi_watch = 0;
        }
        if (m->psi_fd >= 0) {
                close(m->psi_fd);
                m->psi_fd = -1;
        }
        if (m->psi_timer_pending) {
                m->host->timer_cancel(m->ctx, m->psi_timer);
                m->psi_timer_pending = false;
        }
        m->psi_armed = false;
}
