/* threads.c — QEMU threads of the configured VMs, pinned by vCPU index.
 *
 * The PID comes from /run/qemu-server/<vmid>.pid (never pgrep, which matched VM 10
 * for VM 100) and is believed only when /proc/PID/cmdline carries "-id <vmid>". Each
 * thread of /proc/PID/task is classified by its comm: "CPU n/KVM" gets the n-th CPU
 * of the VM's set (one to one, wrapping only when the VM has more vCPUs than the set
 * has CPUs, said once), so the mapping is the same across restarts whatever the TID
 * order; every other thread (main loop, IOThreads, vhost workers) gets the IO CPUs.
 * Affinity is read before it is set. inotify on /run/qemu-server (through the sysroot)
 * pins a VM that starts or restarts at once, and again shortly after, since QEMU names
 * and starts its vCPU threads after it writes the pid file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "irq.h"

#define SETTLE_FIRST_MS 250
#define SETTLE_NEXT_MS  750
#define SETTLE_ROUNDS   2

/* Under a fixture sysroot the TIDs are real only when the real /proc agrees. */
static int check_real(irq *s, pid_t pid, pid_t tid, const char *comm) {
        if (s->real_root)
                return 0;
        char path[96], buf[IRQ_COMM_MAX + 2];
        snprintf(path, sizeof path, "/proc/%d/task/%d/comm", (int)pid, (int)tid);
        FILE *f = fopen(path, "re");
        if (!f)
                return -ESRCH;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        return strcmp(buf, comm) == 0 ? 0 : -ESRCH;
}

static int real_get(void *ud, pid_t pid, pid_t tid, const char *comm, org_cpuset *ret) {
        int r = check_real(ud, pid, tid, comm);
        if (r < 0)
                return r;
        cpu_set_t cs;
        CPU_ZERO(&cs);
        if (sched_getaffinity(tid, sizeof cs, &cs) < 0)
                return -errno;
        org_cpuset c;
        org_cpuset_zero(&c);
        for (unsigned i = 0; i < CPU_SETSIZE && i < ORG_CPUSET_MAX; i++)
                if (CPU_ISSET(i, &cs))
                        org_cpuset_add(&c, i);
        *ret = c;
        return 0;
}

static int real_set(void *ud, pid_t pid, pid_t tid, const char *comm, const org_cpuset *cpus) {
        int r = check_real(ud, pid, tid, comm);
        if (r < 0)
                return r;
        cpu_set_t cs;
        CPU_ZERO(&cs);
        ORG_CPUSET_FOREACH(c, cpus) {
                if (c < CPU_SETSIZE)
                        CPU_SET((unsigned)c, &cs);
        }
        return sched_setaffinity(tid, sizeof cs, &cs) < 0 ? -errno : 0;
}

const irq_affinity_ops irq_real_affinity = {.get = real_get, .set = real_set};

int irq_vcpu_index(const char *comm) {
        if (strncmp(comm, "CPU ", 4) != 0)
                return -1;
        const char *p = comm + 4;
        long v = 0;
        if (*p < '0' || *p > '9')
                return -1;
        for (; *p >= '0' && *p <= '9'; p++)
                if ((v = v * 10 + (*p - '0')) > 65535)
                        return -1;
        return strcmp(p, "/KVM") == 0 ? (int)v : -1;
}

int irq_vcpu_cpu(const org_cpuset *set, unsigned n) {
        unsigned count = org_cpuset_count(set);
        return count ? org_cpuset_nth(set, n % count) : -1;
}

static void trim(char *t) {
        size_t l = strlen(t);
        while (l && (t[l - 1] == '\n' || t[l - 1] == ' '))
                t[--l] = '\0';
}

/* "-id" then "<vmid>" as two arguments of the NUL-separated command line. */
static bool cmdline_has_id(const char *data, size_t len, const char *vmid) {
        const char *prev = NULL;
        for (size_t i = 0; i < len;) {
                const char *arg = data + i;
                size_t l = strnlen(arg, len - i);
                if (prev && strcmp(prev, "-id") == 0 && strcmp(arg, vmid) == 0)
                        return true;
                prev = arg;
                i += l + 1;
        }
        return false;
}

/* The process changed: its threads' items (and originals) go, nothing to restore. */
static void forget_process(irq *s, irq_vm *vm) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "thread:%s:%d:", vm->vmid_text, (int)vm->pid);
        irq_items_forget_prefix(s, prefix);
}

static void vm_gone(irq *s, irq_vm *vm, const char *why) {
        if (vm->pid) {
                s->host->log(s->ctx, ORG_LOG_INFO, "VM %s is gone (pid %d)", vm->vmid_text, (int)vm->pid);
                forget_process(s, vm);
        }
        vm->pid = 0;
        free(vm->threads);
        vm->threads = NULL;
        vm->n_threads = 0;
        snprintf(vm->why, sizeof vm->why, "%s", why);
}

void irq_pin_vm(irq *s, irq_vm *vm) {
        char path[128], *text = NULL;
        size_t len = 0;
        snprintf(path, sizeof path, IRQ_PID_DIR "/%s.pid", vm->vmid_text);
        if (s->host->read_file(s->ctx, path, &text, NULL) < 0) {
                vm_gone(s, vm, "not running (no pid file)");
                return;
        }
        trim(text);
        char *end = NULL;
        long pid = strtol(text, &end, 10);
        bool bad = end == text || *end != '\0' || pid <= 0 || pid > 1 << 22;
        free(text);
        if (bad) {
                vm_gone(s, vm, "the pid file holds no pid");
                return;
        }
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        char why[128];
        if (s->host->read_file(s->ctx, path, &text, &len) < 0) {
                snprintf(why, sizeof why, "not running (stale pid file: no process %ld)", pid);
                vm_gone(s, vm, why);
                return;
        }
        bool ours = cmdline_has_id(text, len, vm->vmid_text);
        free(text);
        if (!ours) {
                snprintf(why, sizeof why, "pid %ld has no \"-id %s\" in its command line (stale pid file)", pid,
                         vm->vmid_text);
                vm_gone(s, vm, why);
                return;
        }
        if (vm->pid != (pid_t)pid) {
                s->host->log(s->ctx, ORG_LOG_INFO, "VM %s runs as pid %ld", vm->vmid_text, pid);
                if (vm->pid)
                        forget_process(s, vm);
                free(vm->threads);
                vm->threads = NULL;
                vm->n_threads = 0;
                vm->pid = (pid_t)pid;
        }
        vm->why[0] = '\0';

        char **tids = NULL;
        size_t nt = 0;
        snprintf(path, sizeof path, "/proc/%ld/task", pid);
        if (irq_list_dir(s, path, &tids, &nt) < 0) {
                snprintf(vm->why, sizeof vm->why, "cannot list /proc/%ld/task", pid);
                return;
        }
        size_t n_names = nt;
        if (nt > IRQ_THREADS_MAX)
                nt = IRQ_THREADS_MAX;
        irq_thread *th = calloc(nt ? nt : 1, sizeof *th);
        if (!th) {
                irq_free_names(tids, n_names);
                return;
        }
        const org_cpuset *set = &s->part.set[vm->set], *io = &s->part.set[IRQ_SET_IO];
        unsigned set_n = org_cpuset_count(set);
        size_t n = 0;
        int max_vcpu = -1;
        bool dry = s->host->dry_run(s->ctx) || s->look_only;
        for (size_t i = 0; i < nt; i++) {
                char *e = NULL;
                long tid = strtol(tids[i], &e, 10);
                if (e == tids[i] || *e || tid <= 0)
                        continue;
                irq_thread *t = &th[n];
                t->tid = (pid_t)tid;
                snprintf(path, sizeof path, "/proc/%ld/task/%ld/comm", pid, tid);
                if (s->host->read_file(s->ctx, path, &text, NULL) < 0)
                        continue; /* exited meanwhile */
                trim(text);
                snprintf(t->comm, sizeof t->comm, "%s", text);
                free(text);
                t->vcpu = irq_vcpu_index(t->comm);
                org_cpuset_zero(&t->want);
                if (t->vcpu >= 0) {
                        org_cpuset_add(&t->want, (unsigned)irq_vcpu_cpu(set, (unsigned)t->vcpu));
                        if (t->vcpu > max_vcpu)
                                max_vcpu = t->vcpu;
                } else
                        t->want = *io;
                n++;
                int r = s->aff.get(s->aff.ud, vm->pid, t->tid, t->comm, &t->actual);
                if (r < 0) {
                        t->error = r;
                        continue;
                }
                t->has_actual = true;
                char key[96];
                snprintf(key, sizeof key, "thread:%s:%ld:%ld", vm->vmid_text, pid, tid);
                irq_item *it = irq_item_get(s, key, false);
                if (org_cpuset_equal(&t->actual, &t->want)) {
                        if (it)
                                it->dry_said = it->failing = false;
                        continue;
                }
                if (!it && !(it = irq_item_get(s, key, true)))
                        continue;
                char have[ORG_CPUSET_LIST_MAX], want[ORG_CPUSET_LIST_MAX];
                org_cpuset_format_list(&t->actual, have, sizeof have);
                org_cpuset_format_list(&t->want, want, sizeof want);
                if (s->look_only)
                        continue;
                if (dry) {
                        if (!it->dry_said)
                                s->host->log(s->ctx, ORG_LOG_NOTICE,
                                             "dry_run, would pin VM %s thread %ld \"%s\": %s -> %s", vm->vmid_text, tid,
                                             t->comm, have, want);
                        it->dry_said = true;
                        continue;
                }
                bool drift = it->orig != NULL, saved_now = !it->orig;
                irq_item_save_orig(s, it, have);
                r = s->aff.set(s->aff.ud, vm->pid, t->tid, t->comm, &t->want);
                if (r < 0) {
                        if (saved_now) {
                                free(it->orig);
                                it->orig = NULL;
                        }
                        if (!it->failing)
                                s->host->log(s->ctx, ORG_LOG_WARNING, "cannot pin VM %s thread %ld \"%s\" to %s: %s",
                                             vm->vmid_text, tid, t->comm, want, strerror(-r));
                        it->failing = true;
                        t->error = r;
                        continue;
                }
                it->failing = false;
                s->host->log(s->ctx, drift ? ORG_LOG_INFO : ORG_LOG_NOTICE, "%sVM %s thread %ld \"%s\": %s -> %s",
                             drift ? "drift: " : "pinned ", vm->vmid_text, tid, t->comm, have, want);
                irq_count_write(s, IRQ_KIND_THREAD, drift);
                t->actual = t->want;
        }
        irq_free_names(tids, n_names);
        if (max_vcpu >= 0 && (unsigned)max_vcpu + 1 > set_n && !(vm->wrap_said && vm->wrap_pid == vm->pid)) {
                s->host->log(s->ctx, ORG_LOG_NOTICE,
                             "VM %s has %d vCPUs for %u CPUs of the %s set: vCPUs wrap around the set", vm->vmid_text,
                             max_vcpu + 1, set_n, irq_set_name(vm->set));
                vm->wrap_said = true;
                vm->wrap_pid = vm->pid;
        }
        free(vm->threads);
        vm->threads = th;
        vm->n_threads = n;
}

void irq_pin_vms(irq *s) {
        if (s->n_vms && !s->inotify_watch)
                irq_watch_start(s); /* /run/qemu-server may appear after us */
        s->threads_pinned = 0;
        for (size_t i = 0; i < s->n_vms; i++) {
                irq_pin_vm(s, &s->vms[i]);
                for (size_t k = 0; k < s->vms[i].n_threads; k++) {
                        irq_thread *t = &s->vms[i].threads[k];
                        if (t->has_actual && org_cpuset_equal(&t->actual, &t->want))
                                s->threads_pinned++;
                }
        }
}

static void on_settle(org_ctx *ctx, uint64_t id, void *userdata) {
        irq *s = userdata;
        s->settle_pending = false;
        if (s->suspended)
                return;
        irq_pin_vms(s);
        irq_metrics(s);
        if (s->settle_left > 0) {
                s->settle_left--;
                if (s->host->timer_add(s->ctx, SETTLE_NEXT_MS, 0, on_settle, s, &s->settle_timer) >= 0)
                        s->settle_pending = true;
        }
}

static void on_inotify(org_ctx *ctx, uint64_t id, int fd, uint32_t revents, void *userdata) {
        irq *s = userdata;
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        bool any = false;
        for (;;) {
                ssize_t n = read(fd, buf, sizeof buf);
                if (n <= 0)
                        break;
                for (char *p = buf; p < buf + n;) {
                        const struct inotify_event *ev = (const struct inotify_event *)p;
                        if (ev->mask & (IN_Q_OVERFLOW | IN_IGNORED))
                                any = true;
                        if (ev->len) {
                                for (size_t i = 0; i < s->n_vms; i++) {
                                        size_t l = strlen(s->vms[i].vmid_text);
                                        if (strncmp(ev->name, s->vms[i].vmid_text, l) == 0 &&
                                            strcmp(ev->name + l, ".pid") == 0)
                                                any = true;
                                }
                        }
                        p += sizeof *ev + ev->len;
                }
        }
        if (revents & (ORG_IO_ERR | ORG_IO_HUP)) {
                irq_watch_stop(s);
                snprintf(s->inotify_why, sizeof s->inotify_why, "the inotify descriptor failed");
        }
        if (!any || s->suspended)
                return;
        s->vm_events++;
        s->last_pass_writes = 0;
        irq_pin_vms(s);
        irq_metrics(s);
        /* once more after the vCPU threads have had time to start */
        s->settle_left = SETTLE_ROUNDS - 1;
        if (!s->settle_pending && s->host->timer_add(s->ctx, SETTLE_FIRST_MS, 0, on_settle, s, &s->settle_timer) >= 0)
                s->settle_pending = true;
}

int irq_watch_start(irq *s) {
        if (s->inotify_watch || !ORG_HOST_HAS(s->host, io_add))
                return 0;
        char *path = NULL;
        int r = s->host->sysroot_path(s->ctx, IRQ_PID_DIR, &path);
        if (r < 0)
                return r;
        int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                free(path);
                snprintf(s->inotify_why, sizeof s->inotify_why, "inotify_init1: %s", strerror(-r));
                return r;
        }
        if (inotify_add_watch(fd, path, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM) < 0) {
                r = -errno;
                bool first = !s->inotify_why[0];
                snprintf(s->inotify_why, sizeof s->inotify_why, "%s: %s (VMs are pinned at each tick)", IRQ_PID_DIR,
                         strerror(-r));
                if (first)
                        s->host->log(s->ctx, ORG_LOG_NOTICE, "no watch on %s", s->inotify_why);
                close(fd);
                free(path);
                return r;
        }
        free(path);
        r = s->host->io_add(s->ctx, fd, ORG_IO_IN, on_inotify, s, &s->inotify_watch);
        if (r < 0) {
                close(fd);
                snprintf(s->inotify_why, sizeof s->inotify_why, "cannot watch the inotify descriptor: %s",
                         strerror(-r));
                return r;
        }
        s->inotify_fd = fd;
        s->inotify_why[0] = '\0';
        return 0;
}

void irq_watch_stop(irq *s) {
        if (s->inotify_watch) {
                s->host->io_remove(s->ctx, s->inotify_watch);
                s->inotify_watch = 0;
        }
        if (s->inotify_fd >= 0) {
                close(s->inotify_fd);
                s->inotify_fd = -1;
        }
        if (s->settle_pending) {
                s->host->timer_cancel(s->ctx, s->settle_timer);
                s->settle_pending = false;
        }
}

json_t *irq_vms_json(irq *s) {
        json_t *a = json_array();
        for (size_t i = 0; i < s->n_vms; i++) {
                irq_vm *vm = &s->vms[i];
                json_t *th = json_array();
                for (size_t k = 0; k < vm->n_threads; k++) {
                        irq_thread *t = &vm->threads[k];
                        char want[ORG_CPUSET_LIST_MAX], have[ORG_CPUSET_LIST_MAX];
                        org_cpuset_format_list(&t->want, want, sizeof want);
                        org_cpuset_format_list(&t->actual, have, sizeof have);
                        json_array_append_new(
                                th, json_pack("{s:I, s:s, s:o, s:s, s:o, s:b, s:o}", "tid", (json_int_t)t->tid, "comm",
                                              t->comm, "vcpu", t->vcpu >= 0 ? json_integer(t->vcpu) : json_null(),
                                              "wanted", want, "actual", t->has_actual ? json_string(have) : json_null(),
                                              "ok", t->has_actual && org_cpuset_equal(&t->actual, &t->want), "error",
                                              t->error ? json_string(strerror(-t->error)) : json_null()));
                }
                json_array_append_new(a, json_pack("{s:I, s:s, s:o, s:o, s:o}", "vmid", (json_int_t)vm->vmid, "set",
                                                   irq_set_name(vm->set), "pid",
                                                   vm->pid ? json_integer(vm->pid) : json_null(), "why",
                                                   vm->why[0] ? json_string(vm->why) : json_null(), "threads", th));
        }
        return a;
}

void irq_vms_free(irq *s) {
        for (size_t i = 0; i < s->n_vms; i++) {
                free(s->vms[i].threads);
                s->vms[i].threads = NULL;
                s->vms[i].n_threads = 0;
        }
}
