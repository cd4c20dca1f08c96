/* exec.h — child processes by argv, watched by the loop.
 *
 * A job runs in its own process group (so a time-out kills everything it started),
 * with a chosen environment, cwd and uid/gid, stdout and stderr captured up to a cap
 * (the rest is read and discarded so the child never blocks on a full pipe), and one
 * completion callback on the loop. Never through a shell. With `cgroup` set, the job
 * also gets its own cgroup v2 directory under agentd's own cgroup (found through
 * /proc/self/cgroup and the cgroup2 mount): a time-out, a cancel or the main process's
 * exit kill the whole cgroup (cgroup.kill, or SIGKILL to each of cgroup.procs on kernels
 * before 5.14), so even what called setsid() dies; the directory is removed once empty.
 * Where no cgroup v2 is writable the job runs with its process group only, logged once. */
#ifndef CORE_EXEC_H
#define CORE_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include <organism/host.h>

typedef struct exec_job exec_job;

typedef struct exec_params {
        const char *path;                /* absolute path of the program */
        const char *const *argv;         /* argv[0] as the program will see it */
        const char *const *env;          /* NULL-terminated "K=V"; NULL = PATH only */
        const char *cwd;                 /* NULL = "/" */
        bool set_ids;
        uid_t uid;
        gid_t gid;
        uint64_t timeout_ms;             /* 0 = no time-out */
        size_t capture_max;              /* per stream, 0 = 64000 */
        const void *stdin_data;
        size_t stdin_len;
        const gid_t *groups;             /* supplementary groups with set_ids (NULL = none) */
        size_t n_groups;
        bool cgroup;                     /* own cgroup v2 when one is writable */
} exec_params;

/* Called once with the result (org_exec_result from the SDK). The job is freed after
 * the callback returns. */
typedef void (*exec_done_fn)(const org_exec_result *res, void *userdata);

/* Starts the process. 0 or negative errno (the fork/exec failure of the child, such as
 * -ENOENT for a missing program, is reported synchronously). *ret_job may be NULL. */
int exec_start(sd_event *event, const exec_params *p, exec_done_fn cb, void *userdata, exec_job **ret_job);
/* Kills the process group (SIGKILL), reaps it, frees the job; cb is not called. */
void exec_cancel(exec_job *job);
pid_t exec_job_pid(const exec_job *job);
/* True when the job runs in its own cgroup. */
bool exec_job_in_cgroup(const exec_job *job);
/* agentd's cgroup v2 directory when it is writable (probed once), or NULL. */
const char *exec_cgroup_base(void);

#endif
