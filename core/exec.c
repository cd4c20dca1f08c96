/* exec.c — runs one program by argv in its own session and process group, feeds it
 * stdin, captures stdout/stderr up to a cap on the sd-event loop, enforces a time-out by
 * killing the whole group (or, on request, the job's own cgroup v2), and reports once
 * through a completion callback. The child
 * side only makes async-signal-safe calls, since the daemon may have threads (libnats)
 * and fork() copies only the calling one. */
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "exec.h"
#include "log.h"
#include "util.h"

#define EXEC_CAPTURE_DEFAULT 64000u
/* After a time-out kill, how long the pipes may stay open before we stop waiting: a
 * process that escaped the group (its own setsid) must not hold the job forever. */
#define EXEC_KILL_GRACE_US (1 * USEC_PER_SEC)
/* Reads per wake-up of one stream, so a chatty child cannot starve the loop; epoll is
 * level-triggered and brings us back. */
#define EXEC_READS_PER_WAKEUP 16

/* How long a cgroup whose processes were killed may take to empty before we give up
 * removing it (rmdir says EBUSY until the last one is gone). */
#define EXEC_CGROUP_RMDIR_TRIES 250
#define EXEC_CGROUP_RMDIR_STEP_US (20 * USEC_PER_MSEC)

static const char *const default_env[] = {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        NULL,
};

typedef struct capture {
        char *buf;
        size_t len;
        size_t cap;
        bool truncated;
} capture;

struct exec_job {
        sd_event *event;
        pid_t pid;
        exec_done_fn cb;
        void *userdata;

        sd_event_source *child_src;
        sd_event_source *out_src;
        sd_event_source *err_src;
        sd_event_source *in_src;
        sd_event_source *timer_src;

        int in_fd;
        int out_fd;
        int err_fd;

        uint8_t *in_buf; /* the part of stdin_data not yet written, owned */
        size_t in_len;
        size_t in_off;

        capture out;
        capture err;
        size_t capture_max;

        uint64_t start_us;
        int status;
        bool exited;          /* reaped (or about to be, by sd-event after on_child) */
        bool killed;          /* the time-out sent SIGKILL to the group */
        bool pipes_abandoned; /* the grace period after the kill ran out */
        bool finishing;       /* inside the completion callback */

        char *cgroup;         /* the job's cgroup directory, or NULL */
};

/* ---- cgroup v2 ---------------------------------------------------------------- */

static struct {
        bool probed;
        bool warned;
        char *base;  /* agentd's own cgroup directory, writable, or NULL */
        unsigned seq;
} cg;

/* The cgroup2 mount point from /proc/self/mountinfo (fields: ... mountpoint ... - fstype). */
static char *cgroup2_mount(void) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        if (!f)
                return NULL;
        char line[4096], *found = NULL;
        while (!found && fgets(line, sizeof line, f)) {
                char *sep = strstr(line, " - cgroup2 ");
                if (!sep)
                        continue;
                /* the 5th field is the mount point */
                char *p = line;
                for (int i = 0; i < 4 && p; i++) {
                        p = strchr(p, ' ');
                        if (p)
                                p++;
                }
                char *end = p ? strchr(p, ' ') : NULL;
                if (p && end && end < sep)
                        found = strndup(p, (size_t)(end - p));
        }
        fclose(f);
        return found;
}

static char *cgroup2_self(void) {
        FILE *f = fopen("/proc/self/cgroup", "re");
        if (!f)
                return NULL;
        char line[4096], *found = NULL;
        while (!found && fgets(line, sizeof line, f))
                if (strncmp(line, "0::", 3) == 0) {
                        line[strcspn(line, "\n")] = '\0';
                        found = strdup(line + 3);
                }
        fclose(f);
        return found;
}

const char *exec_cgroup_base(void) {
        if (cg.probed)
                return cg.base;
        cg.probed = true;
        _cleanup_free_ char *mnt = cgroup2_mount(), *self = cgroup2_self();
        const char *why = NULL;
        if (!mnt)
                why = "no cgroup2 mount";
        else if (!self)
                why = "no cgroup v2 line in /proc/self/cgroup";
        else {
                char buf[PATH_MAX];
                int n = snprintf(buf, sizeof buf, "%s%s", mnt, strcmp(self, "/") == 0 ? "" : self);
                if (n < 0 || (size_t)n >= sizeof buf)
                        why = "cgroup path too long";
                else if (access(buf, W_OK) < 0)
                        why = "agentd's cgroup is not writable (no delegation)";
                else
                        cg.base = strdup(buf);
        }
        if (!cg.base && !cg.warned) {
                cg.warned = true;
                log_internal(LOG_NOTICE, 0, NULL, NULL,
                             "exec: %s; commands asking for their own cgroup run in their process group only",
                             why ? why : "out of memory");
        }
        return cg.base;
}

/* Kills every process of a cgroup. cgroup.kill (5.14+) is atomic against forks; before
 * it, SIGKILL each member until the list stays empty (bounded). */
static void cgroup_kill(const char *dir) {
        char path[PATH_MAX];
        if (strlen(dir) > PATH_MAX - 32)
                return;
        snprintf(path, sizeof path, "%s/cgroup.kill", dir);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
                bool ok = write(fd, "1", 1) == 1;
                close(fd);
                if (ok)
                        return;
        }
        snprintf(path, sizeof path, "%s/cgroup.procs", dir);
        for (int round = 0; round < 100; round++) {
                FILE *f = fopen(path, "re");
                if (!f)
                        return;
                unsigned n = 0;
                long pid;
                while (fscanf(f, "%ld", &pid) == 1) {
                        if (pid > 0)
                                (void)kill((pid_t)pid, SIGKILL);
                        n++;
                }
                fclose(f);
                if (n == 0)
                        return;
        }
}

typedef struct cgroup_rm {
        char *dir;
        unsigned tries;
        sd_event_source *timer;
        sd_event_source *on_exit; /* the loop ends first: finish the job synchronously */
} cgroup_rm;

static void cgroup_rm_free(cgroup_rm *c) {
        sd_event_source_disable_unref(c->timer);
        sd_event_source_disable_unref(c->on_exit);
        free(c->dir);
        free(c);
}

static int on_cgroup_rm(sd_event_source *s, uint64_t usec, void *userdata) {
        cgroup_rm *c = userdata;
        if (rmdir(c->dir) == 0 || errno != EBUSY || ++c->tries >= EXEC_CGROUP_RMDIR_TRIES) {
                if (c->tries >= EXEC_CGROUP_RMDIR_TRIES)
                        log_internal(LOG_WARNING, 0, NULL, NULL, "exec: cgroup %s did not empty; left in place",
                                     c->dir);
                cgroup_rm_free(c);
                return 0;
        }
        cgroup_kill(c->dir);
        (void)sd_event_source_set_time_relative(s, EXEC_CGROUP_RMDIR_STEP_US);
        (void)sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

/* agentd is stopping with a killed cgroup not yet empty: wait for it (bounded; the
 * processes are SIGKILLed, they go within milliseconds) so no directory is left. */
static int on_cgroup_rm_exit(sd_event_source *s, void *userdata) {
        cgroup_rm *c = userdata;
        for (unsigned i = 0; i < 100 && rmdir(c->dir) < 0 && errno == EBUSY; i++) {
                cgroup_kill(c->dir);
                struct timespec ts = {0, 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
        }
        cgroup_rm_free(c);
        return 0;
}

/* Kills what is left in the job's cgroup and removes it, now or (while the killed
 * processes exit) from a timer of its own that outlives the job. Takes dir. */
static void cgroup_release(sd_event *event, char *dir) {
        if (!dir)
                return;
        cgroup_kill(dir);
        if (rmdir(dir) == 0 || errno != EBUSY) {
                free(dir);
                return;
        }
        cgroup_rm *c = new0(cgroup_rm, 1);
        if (c && event) {
                c->dir = dir;
                if (sd_event_add_time_relative(event, &c->timer, CLOCK_MONOTONIC, EXEC_CGROUP_RMDIR_STEP_US, 0,
                                               on_cgroup_rm, c) >= 0 &&
                    sd_event_add_exit(event, &c->on_exit, on_cgroup_rm_exit, c) >= 0)
                        return;
                c->dir = NULL;
                sd_event_source_disable_unref(c->timer);
                sd_event_source_disable_unref(c->on_exit);
        }
        log_internal(LOG_WARNING, 0, NULL, NULL, "exec: cgroup %s still busy; left in place", dir);
        free(c);
        free(dir);
}

/* A new cgroup for one job and an O_WRONLY descriptor of its cgroup.procs (for the
 * child to move itself in before execve), or NULL when none can be had. */
static char *cgroup_create(int *ret_procs_fd) {
        const char *base = exec_cgroup_base();
        if (!base)
                return NULL;
        char dir[PATH_MAX - 32], procs[PATH_MAX];
        int n = snprintf(dir, sizeof dir, "%s/organism-exec-%d-%u", base, (int)getpid(), ++cg.seq);
        if (n < 0 || (size_t)n >= sizeof dir || mkdir(dir, 0755) < 0)
                goto fail;
        snprintf(procs, sizeof procs, "%s/cgroup.procs", dir);
        int fd = open(procs, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
                (void)rmdir(dir);
                goto fail;
        }
        char *d = strdup(dir);
        if (!d) {
                close(fd);
                (void)rmdir(dir);
                return NULL;
        }
        *ret_procs_fd = fd;
        return d;
fail:
        if (!cg.warned) {
                cg.warned = true;
                log_internal(LOG_NOTICE, errno, NULL, NULL,
                             "exec: cannot create a cgroup under %s (%m); using process groups only", base);
        }
        return NULL;
}

static void close_source(sd_event_source **src, int *fd) {
        *src = sd_event_source_disable_unref(*src);
        if (*fd >= 0) {
                close(*fd);
                *fd = -1;
        }
}

static void job_free(exec_job *j) {
        if (!j)
                return;
        close_source(&j->in_src, &j->in_fd);
        close_source(&j->out_src, &j->out_fd);
        close_source(&j->err_src, &j->err_fd);
        j->timer_src = sd_event_source_disable_unref(j->timer_src);
        j->child_src = sd_event_source_disable_unref(j->child_src);
        free(j->in_buf);
        free(j->out.buf);
        free(j->err.buf);
        if (j->cgroup)
                cgroup_release(j->event, j->cgroup);
        sd_event_unref(j->event);
        free(j);
}

static void finish(exec_job *j) {
        org_exec_result res = {
                .status = j->killed ? -ETIMEDOUT : j->status,
                .timed_out = j->killed,
                .out = j->out.buf ? j->out.buf : "",
                .out_len = j->out.len,
                .out_truncated = j->out.truncated,
                .err = j->err.buf ? j->err.buf : "",
                .err_len = j->err.len,
                .err_truncated = j->err.truncated,
                .duration_us = now_monotonic_us() - j->start_us,
        };
        /* The buffers always keep one byte beyond the cap for this terminator. */
        if (j->out.buf)
                j->out.buf[j->out.len] = '\0';
        if (j->err.buf)
                j->err.buf[j->err.len] = '\0';
        j->finishing = true;
        j->cb(&res, j->userdata);
        job_free(j);
}

/* Completes once the child is reaped and both streams are at EOF, or the group was
 * killed and the pipes had their grace period. */
static void maybe_finish(exec_job *j) {
        if (!j->exited)
                return;
        if ((j->out_fd >= 0 || j->err_fd >= 0) && !j->pipes_abandoned)
                return;
        finish(j);
}

/* write() that never raises SIGPIPE in the daemon: the signal is blocked around the
 * call and, if the write provoked it, consumed before unblocking. A pipe is not a
 * socket, so MSG_NOSIGNAL is not available. */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t len) {
        sigset_t block, old, pending;
        sigemptyset(&block);
        sigaddset(&block, SIGPIPE);
        bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
        pthread_sigmask(SIG_BLOCK, &block, &old);
        ssize_t n = write(fd, buf, len);
        int saved = errno;
        if (n < 0 && saved == EPIPE && !was_pending) {
                struct timespec zero = { 0, 0 };
                (void)sigtimedwait(&block, NULL, &zero);
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        errno = saved;
        return n;
}

/* Writes what it can without blocking. 1 when all is written or the reader is gone
 * (both end our interest in stdin), 0 when the pipe is full. */
static int stdin_push(exec_job *j, const uint8_t *data, size_t len, size_t *off) {
        while (*off < len) {
                ssize_t n = write_nosigpipe(j->in_fd, data + *off, len - *off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        /* EPIPE: the child does not want the rest; not an error of the job. */
                        return 1;
                }
                *off += (size_t)n;
        }
        return 1;
}

static int on_stdin(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        exec_job *j = userdata;
        if ((revents & (EPOLLERR | EPOLLHUP)) || stdin_push(j, j->in_buf, j->in_len, &j->in_off) != 0) {
                close_source(&j->in_src, &j->in_fd);
                free(j->in_buf);
                j->in_buf = NULL;
        }
        return 0;
}

/* Makes room for at least one more byte below the cap (the buffer ends at most one byte
 * beyond it, for the NUL); false when none can be had. */
static bool capture_grow(capture *c, size_t max) {
        if (c->cap > c->len + 1)
                return true;
        size_t want = c->cap ? c->cap * 2 : 4096;
        if (want > max + 1)
                want = max + 1;
        if (want <= c->len + 1)
                return false;
        char *nb = realloc(c->buf, want);
        if (!nb)
                return false;
        c->buf = nb;
        c->cap = want;
        return true;
}

static int on_output(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        exec_job *j = userdata;
        bool is_out = s == j->out_src;
        capture *c = is_out ? &j->out : &j->err;

        for (int i = 0; i < EXEC_READS_PER_WAKEUP; i++) {
                char discard[16384];
                char *dst = discard;
                size_t room = sizeof(discard);
                bool keep = c->len < j->capture_max && capture_grow(c, j->capture_max);
                if (keep) {
                        dst = c->buf + c->len;
                        room = MIN(c->cap - 1, j->capture_max) - c->len;
                }
                ssize_t n = read(fd, dst, room);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        n = 0; /* an unreadable pipe is treated as closed */
                }
                if (n == 0) {
                        if (is_out)
                                close_source(&j->out_src, &j->out_fd);
                        else
                                close_source(&j->err_src, &j->err_fd);
                        maybe_finish(j);
                        return 0;
                }
                if (keep)
                        c->len += (size_t)n;
                else
                        c->truncated = true;
        }
        return 0;
}

static int on_child(sd_event_source *s, const siginfo_t *si, void *userdata) {
        exec_job *j = userdata;
        if (si->si_code == CLD_EXITED)
                j->status = si->si_status;
        else if (si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED)
                j->status = -si->si_status;
        else
                return 0; /* only WEXITED is watched; nothing else should arrive */
        /* sd-event reaps the zombie right after this callback returns. */
        j->exited = true;
        /* What the command left behind in its cgroup dies with it, and so lets go of
         * the pipes. */
        if (j->cgroup)
                cgroup_kill(j->cgroup);
        maybe_finish(j);
        return 0;
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        exec_job *j = userdata;
        if (!j->killed) {
                j->killed = true;
                /* The child called setsid(), so its pid is the group id. */
                (void)kill(-j->pid, SIGKILL);
                if (j->cgroup)
                        cgroup_kill(j->cgroup);
                if (sd_event_source_set_time_relative(s, EXEC_KILL_GRACE_US) >= 0 &&
                    sd_event_source_set_enabled(s, SD_EVENT_ONESHOT) >= 0)
                        return 0;
        }
        j->pipes_abandoned = true;
        maybe_finish(j);
        return 0;
}

/* Closes every descriptor from 3 up except keep. */
static void close_all_fds_except(int keep, long max_fd) {
        int r = 0;
        if (keep > 3)
                r = close_range(3, (unsigned)keep - 1, 0);
        if (r == 0)
                r = close_range((unsigned)keep + 1, ~0U, 0);
        if (r == 0)
                return;
        /* Kernels before 5.9 or a seccomp filter: walk the table. */
        for (long fd = 3; fd < max_fd; fd++)
                if (fd != keep)
                        (void)close((int)fd);
}

/* The child between fork() and execve(): async-signal-safe calls only. On failure the
 * errno goes up the CLOEXEC error pipe, so exec_start can return it. */
__attribute__((noreturn)) static void child_run(const exec_params *p, char *const *env, int in_fd, int out_fd,
                                                int err_fd, int errp, int cg_fd, long max_fd) {
        struct sigaction sa;
        sigset_t none;
        int e;

        /* Ignored signals survive execve; the program expects the defaults. */
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        for (int sig = 1; sig < _NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void)sigaction(sig, &sa, NULL);
        /* The daemon blocks SIGCHLD (and maybe more) for sd-event; the mask is inherited. */
        sigemptyset(&none);
        if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
                goto fail;

        /* Into the job's own cgroup first, so whatever it forks later is in it too. */
        if (cg_fd >= 0) {
                if (write(cg_fd, "0", 1) != 1)
                        goto fail;
                close(cg_fd);
        }

        if (setsid() < 0)
                goto fail;

        /* All three sources are >= 3 (exec_start made sure), so no dup2 clobbers another. */
        if (dup2(in_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 || dup2(err_fd, STDERR_FILENO) < 0)
                goto fail;
        close_all_fds_except(errp, max_fd);

        if (chdir(p->cwd ? p->cwd : "/") < 0)
                goto fail;

        if (p->set_ids) {
                /* Groups first: after setuid we could no longer drop them. Only the
                 * supplementary groups asked for (none by default): least privilege. */
                if (setgroups(p->groups ? p->n_groups : 0, p->groups) < 0 || setgid(p->gid) < 0 ||
                    setuid(p->uid) < 0)
                        goto fail;
        }

        execve(p->path, (char *const *)p->argv, env);
fail:
        e = errno;
        (void)!write(errp, &e, sizeof(e));
        _exit(127);
}

/* Moves a descriptor out of 0..2, keeping it CLOEXEC. */
static int fd_above_stdio(int *fd) {
        if (*fd > STDERR_FILENO)
                return 0;
        int nfd = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
        if (nfd < 0)
                return -errno;
        close(*fd);
        *fd = nfd;
        return 0;
}

static int fd_nonblock(int fd) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        return 0;
}

static void close_pair(int p[2]) {
        for (int i = 0; i < 2; i++)
                if (p[i] >= 0) {
                        close(p[i]);
                        p[i] = -1;
                }
}

static void reap(pid_t pid) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
}

int exec_start(sd_event *event, const exec_params *p, exec_done_fn cb, void *userdata, exec_job **ret_job) {
        int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, errp[2] = { -1, -1 };
        int cg_fd = -1;
        exec_job *j = NULL;
        pid_t pid = -1;
        int r;

        if (!event || !p || !cb || !p->path || p->path[0] != '/' || !p->argv || !p->argv[0])
                return -EINVAL;
        if (p->stdin_len > 0 && !p->stdin_data)
                return -EINVAL;

        /* sd-event needs SIGCHLD blocked to watch children; find out before forking. */
        sigset_t cur;
        if (pthread_sigmask(SIG_SETMASK, NULL, &cur) != 0 || sigismember(&cur, SIGCHLD) != 1)
                return -EBUSY;

        j = new0(exec_job, 1);
        if (!j)
                return -ENOMEM;
        j->in_fd = j->out_fd = j->err_fd = -1;
        j->event = sd_event_ref(event);
        j->cb = cb;
        j->userdata = userdata;
        j->capture_max = p->capture_max ? p->capture_max : EXEC_CAPTURE_DEFAULT;

        if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
            pipe2(errp, O_CLOEXEC) < 0) {
                r = -errno;
                goto fail;
        }
        /* A daemon started with 0..2 closed would hand out those numbers here. */
        if ((r = fd_above_stdio(&in[0])) < 0 || (r = fd_above_stdio(&out[1])) < 0 ||
            (r = fd_above_stdio(&err[1])) < 0 || (r = fd_above_stdio(&errp[1])) < 0)
                goto fail;

        if (p->cgroup) {
                j->cgroup = cgroup_create(&cg_fd);
                if (j->cgroup && (r = fd_above_stdio(&cg_fd)) < 0)
                        goto fail;
        }

        long max_fd = sysconf(_SC_OPEN_MAX);
        if (max_fd <= 0)
                max_fd = 65536;
        char *const *env = (char *const *)(p->env ? p->env : default_env);

        j->start_us = now_monotonic_us();
        pid = fork();
        if (pid < 0) {
                r = -errno;
                goto fail;
        }
        if (pid == 0)
                child_run(p, env, in[0], out[1], err[1], errp[1], cg_fd, max_fd);
        if (cg_fd >= 0) {
                close(cg_fd);
                cg_fd = -1;
        }

        close(in[0]);
        in[0] = -1;
        close(out[1]);
        out[1] = -1;
        close(err[1]);
        err[1] = -1;
        close(errp[1]);
        errp[1] = -1;

        /* EOF means execve() succeeded (the pipe was CLOEXEC); an int means it failed. */
        int child_errno = 0;
        ssize_t n;
        do
                n = read(errp[0], &child_errno, sizeof(child_errno));
        while (n < 0 && errno == EINTR);
        close_pair(errp);
        if (n != 0) {
                reap(pid);
                pid = -1;
                r = n == (ssize_t)sizeof(child_errno) && child_errno > 0 ? -child_errno : -EIO;
                goto fail;
        }
        j->pid = pid;

        j->out_fd = out[0];
        out[0] = -1;
        j->err_fd = err[0];
        err[0] = -1;
        j->in_fd = in[1];
        in[1] = -1;
        if ((r = fd_nonblock(j->out_fd)) < 0 || (r = fd_nonblock(j->err_fd)) < 0 ||
            (r = fd_nonblock(j->in_fd)) < 0)
                goto fail;

        r = sd_event_add_child(event, &j->child_src, pid, WEXITED, on_child, j);
        if (r < 0)
                goto fail;
        r = sd_event_add_io(event, &j->out_src, j->out_fd, EPOLLIN, on_output, j);
        if (r < 0)
                goto fail;
        r = sd_event_add_io(event, &j->err_src, j->err_fd, EPOLLIN, on_output, j);
        if (r < 0)
                goto fail;
        if (p->timeout_ms > 0) {
                r = sd_event_add_time_relative(event, &j->timer_src, CLOCK_MONOTONIC,
                                               p->timeout_ms * USEC_PER_MSEC, 0, on_timeout, j);
                if (r < 0)
                        goto fail;
        }

        /* Small input fits in the pipe buffer now; the rest waits for EPOLLOUT. */
        size_t off = 0;
        if (p->stdin_len == 0 || stdin_push(j, p->stdin_data, p->stdin_len, &off) != 0) {
                close(j->in_fd);
                j->in_fd = -1;
        } else {
                j->in_len = p->stdin_len - off;
                j->in_buf = malloc(j->in_len);
                if (!j->in_buf) {
                        r = -ENOMEM;
                        goto fail;
                }
                memcpy(j->in_buf, (const uint8_t *)p->stdin_data + off, j->in_len);
                r = sd_event_add_io(event, &j->in_src, j->in_fd, EPOLLOUT, on_stdin, j);
                if (r < 0)
                        goto fail;
        }

        if (ret_job)
                *ret_job = j;
        return 0;

fail:
        if (cg_fd >= 0)
                close(cg_fd);
        if (pid > 0) {
                (void)kill(-pid, SIGKILL);
                j->child_src = sd_event_source_disable_unref(j->child_src);
                reap(pid);
        }
        close_pair(in);
        close_pair(out);
        close_pair(err);
        close_pair(errp);
        job_free(j);
        return r;
}

/* Reaps a cancelled child later, on the loop: one stuck in uninterruptible sleep (a
 * hung zfs or NFS call) must not freeze the loop in waitpid. */
static int on_reaped(sd_event_source *s, const siginfo_t *si, void *userdata) {
        sd_event_source_disable_unref(s); /* sd-event reaps the child after this returns */
        return 0;
}

void exec_cancel(exec_job *j) {
        if (!j || j->finishing)
                return;
        /* Also kills what the child left behind in its group (and cgroup), even if it
         * has exited. */
        (void)kill(-j->pid, SIGKILL);
        if (j->cgroup)
                cgroup_kill(j->cgroup);
        sd_event *e = j->child_src ? sd_event_ref(sd_event_source_get_event(j->child_src)) : NULL;
        j->child_src = sd_event_source_disable_unref(j->child_src);
        sd_event_source *reaper = NULL; /* its own callback drops this reference */
        if (!j->exited && (!e || sd_event_add_child(e, &reaper, j->pid, WEXITED, on_reaped, NULL) < 0))
                reap(j->pid);
        sd_event_unref(e);
        job_free(j);
}

pid_t exec_job_pid(const exec_job *j) { return j ? j->pid : -1; }

bool exec_job_in_cgroup(const exec_job *j) { return j && j->cgroup; }
