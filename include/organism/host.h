/* organism/host.h — the services agentd lends a plugin instance.
 *
 * A plugin links against nothing of agentd: everything it may do goes through this
 * table, handed to `init` together with the instance's opaque context. Every call takes
 * that context first and runs on the daemon's single loop thread; callbacks come back on
 * it too, so a plugin needs no locks. Like the descriptor, the table starts with a
 * version and its size and only ever grows at the end: check `struct_size` before using
 * a member added after the version you were built against (ORG_HOST_HAS).
 *
 * Errors are 0 or a negative errno. Output parameters come last (`ret_*`) and are not
 * written on failure. Strings returned as `const char *` belong to the host and live as
 * long as the instance unless said otherwise; `char **ret_*` results are malloc'd and
 * the plugin frees them. */
#ifndef ORGANISM_HOST_H
#define ORGANISM_HOST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <organism/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ORG_HOST_ABI_VERSION 1u

typedef struct org_ctx org_ctx; /* one per plugin instance, owned by agentd */

enum org_log_level {
        ORG_LOG_ERR = 3,
        ORG_LOG_WARNING = 4,
        ORG_LOG_NOTICE = 5,
        ORG_LOG_INFO = 6,
        ORG_LOG_DEBUG = 7,
};

/* A request's answer, or its failure (-ETIMEDOUT, -ENOENT when nobody listens). The
 * message is valid during the call only. */
typedef void (*org_reply_fn)(org_ctx *ctx, int error, const org_msg *reply, void *userdata);

typedef void (*org_timer_fn)(org_ctx *ctx, uint64_t timer_id, void *userdata);

/* Readiness of a watched file descriptor (poll(2) bits: POLLIN, POLLPRI, ...). */
#define ORG_IO_IN 0x001u
#define ORG_IO_PRI 0x002u
#define ORG_IO_OUT 0x004u
#define ORG_IO_ERR 0x008u
#define ORG_IO_HUP 0x010u
typedef void (*org_io_fn)(org_ctx *ctx, uint64_t watch_id, int fd, uint32_t revents, void *userdata);

/* What a finished process left: exit status (or -signal when killed, -ETIMEDOUT when
 * the time-out fired), captured output (NUL terminated, cut at the cap). */
typedef struct org_exec_result {
        int status;
        bool timed_out;
        bool dry_run;             /* nothing ran: dry_run short-circuited it */
        const char *out;
        size_t out_len;
        bool out_truncated;
        const char *err;
        size_t err_len;
        bool err_truncated;
        uint64_t duration_us;
} org_exec_result;

typedef void (*org_exec_fn)(org_ctx *ctx, const org_exec_result *res, void *userdata);

typedef struct org_exec_spec {
        /* argv[0] is a command *name* looked up in the agent's command table
         * (`agent.commands`), or an absolute path when `allow_path` is set by a plugin
         * that runs what its own operator configured (a task, a repository script). */
        const char *const *argv;          /* NULL-terminated */
        bool allow_path;
        const char *const *env;           /* "K=V", NULL-terminated; NULL = minimal env */
        const char *cwd;                  /* NULL = "/" */
        uid_t uid;                        /* used when set_ids is true */
        gid_t gid;
        bool set_ids;
        uint64_t timeout_ms;              /* 0 = 60 s; on expiry the process group is killed */
        size_t capture_max;               /* per stream; 0 = 64000 bytes */
        bool mutating;                    /* changes the system: dry_run skips it */
        const char *stdin_data;           /* optional bytes written to stdin */
        size_t stdin_len;
} org_exec_spec;

/* Options of host->exec_opts (appended to the SDK by gpuworker). Set struct_size to
 * sizeof(org_exec_opts); the host reads only the members that size covers, so the
 * struct may grow at its end. */
/* ORG_EXEC_CGROUP: an own cgroup v2 (under agentd's) so a time-out or cancel kills
 * everything the command started, even what left its process group (setsid,
 * daemonise); when the command exits, what it left behind is killed too. Where no
 * cgroup v2 is writable the process group is used and the log says so once. */
#define ORG_EXEC_CGROUP 0x1u
typedef struct org_exec_opts {
        uint32_t struct_size;
        uint32_t flags;            /* ORG_EXEC_* */
        const gid_t *groups;       /* supplementary groups with set_ids; NULL = none */
        size_t n_groups;
} org_exec_opts;

/* One row from `store_query`: `n` columns, NULL for SQL NULL. */
typedef int (*org_row_fn)(void *userdata, int n, const char *const *columns, const char *const *names);

typedef enum org_metric_type {
        ORG_METRIC_COUNTER = 1,
        ORG_METRIC_GAUGE = 2,
} org_metric_type;

/* A durable consumer (JetStream pull consumer through the NATS bridge). Every agent
 * that consumes with the same stream and durable name shares the work: each message
 * goes to one of them, and comes back if it is not acked in time. */
typedef struct org_consume_opts {
        const char *stream;        /* stream name (declared in bus.nats.jetstream.streams) */
        const char *durable;       /* consumer name, shared by the agents taking this work */
        const char *filter;        /* subject filter; NULL = every subject of the stream */
        unsigned max_deliver;      /* deliveries before the server gives up on a message (0 = 5) */
        uint64_t ack_wait_ms;      /* redelivered when not acked within this (0 = 30 s) */
        unsigned max_pending;      /* delivered but not acked at once, at most (0 = 64) */
} org_consume_opts;

typedef enum org_ack_kind {
        ORG_ACK = 1,               /* done: never delivered again */
        ORG_NAK,                   /* failed: deliver again after delay_ms (0 = now) */
        ORG_IN_PROGRESS,           /* still working: restart the ack_wait clock */
        ORG_TERM,                  /* never deliver again, not done either (poison message) */
} org_ack_kind;

/* The worker pool (host->work_submit). `work` runs on a pool thread: it must not call
 * the host, nor touch plugin state the loop also uses — only its userdata. Its return
 * (0 or a negative errno, by convention) reaches `done`, which runs later on the loop.
 * A job of a generation that is disabled or stopped before its `done` ran: a queued
 * job never runs; a running one is waited for (so work must be bounded: give the
 * library inside it a time-out, or a cancel flag in the userdata that fini sets);
 * `done` is not called, and the host calls free(userdata) instead. So userdata must be
 * NULL or one malloc'd block that owns nothing else (fixed-size strings inside it).
 * On a reload the new generation may adopt the job (work_adopt); what it does not
 * adopt is dropped the same way, except that a running job is not waited for: it
 * finishes on its thread (its .so stays mapped until then) and its userdata is freed. */
typedef int (*org_work_fn)(void *userdata);
typedef void (*org_work_done_fn)(org_ctx *ctx, int result, void *userdata);
/* The completion of a job adopted by a new generation (host->work_adopt): work_data is
 * the block the old generation submitted (the adopter owns it now: free() it), userdata
 * the adopter's own, which the host never frees. */
typedef void (*org_work_adopted_fn)(org_ctx *ctx, int result, void *work_data, void *userdata);

typedef struct org_host {
        uint32_t abi_version;
        uint32_t struct_size;

        /* Identity. */
        const char *(*instance_name)(org_ctx *ctx);
        const char *(*agent_name)(org_ctx *ctx);
        bool (*dry_run)(org_ctx *ctx); /* global or per-instance */

        /* Logging: the line carries [plugin:instance]; repeats are rate-limited. */
        void (*log)(org_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
        void (*logv)(org_ctx *ctx, int level, const char *fmt, va_list ap);

        /* Config, validated and normalised against the plugin's config map. `path`
         * names a key with dots ("profiles.day.arc_max"). Getters return -ENOENT for
         * an absent key without a default, -EINVAL for a key of another type. */
        const char *(*config_json)(org_ctx *ctx);
        int (*config_string)(org_ctx *ctx, const char *path, const char **ret);
        int (*config_int)(org_ctx *ctx, const char *path, int64_t *ret);
        int (*config_bool)(org_ctx *ctx, const char *path, bool *ret);
        int (*config_double)(org_ctx *ctx, const char *path, double *ret);

        /* Bus. publish copies everything; delivery happens later on the loop, never
         * inside this call. Messages matching a subscription arrive in `handle`. */
        int (*publish)(org_ctx *ctx, const char *subject, const org_header *headers, size_t n_headers,
                       const void *data, size_t len);
        int (*subscribe)(org_ctx *ctx, const char *pattern, uint64_t *ret_sid);
        int (*unsubscribe)(org_ctx *ctx, uint64_t sid);
        int (*request)(org_ctx *ctx, const char *subject, const void *data, size_t len, uint64_t timeout_ms,
                       org_reply_fn cb, void *userdata);
        /* Answers a request; `reply_subject` is msg->reply of the request (copy it to
         * answer later). */
        int (*respond)(org_ctx *ctx, const char *reply_subject, const void *data, size_t len);

        /* Timers on the monotonic clock. period_ms 0 = one-shot. */
        int (*timer_add)(org_ctx *ctx, uint64_t first_ms, uint64_t period_ms, org_timer_fn cb, void *userdata,
                         uint64_t *ret_id);
        int (*timer_cancel)(org_ctx *ctx, uint64_t id);
        uint64_t (*now_realtime_us)(org_ctx *ctx);
        uint64_t (*now_monotonic_us)(org_ctx *ctx);

        /* Sysroot I/O: `path` is absolute as on the real system ("/proc/meminfo"); the
         * agent's sysroot is prefixed. read_file returns a malloc'd NUL-terminated
         * copy. write_file reads first, compares ignoring trailing white space, and only
         * writes a different value; under dry_run it logs what it would write.
         * *ret_changed tells whether the value differed. */
        int (*read_file)(org_ctx *ctx, const char *path, char **ret_data, size_t *ret_len);
        int (*write_file)(org_ctx *ctx, const char *path, const char *value, bool *ret_changed);
        int (*sysroot_path)(org_ctx *ctx, const char *path, char **ret_path);

        /* Exec by argv, completion on the loop. *ret_id may be NULL. */
        int (*exec)(org_ctx *ctx, const org_exec_spec *spec, org_exec_fn cb, void *userdata, uint64_t *ret_id);
        int (*exec_cancel)(org_ctx *ctx, uint64_t id);

        /* Store: the instance's own sqlite database (WAL). Parameters are bound as text
         * (?1, ?2, ...); NULL binds SQL NULL. `store_query` calls `row` per row; a
         * non-zero return from `row` stops it. kv_* use a key/value table of the store. */
        int (*store_exec)(org_ctx *ctx, const char *sql, const char *const *params, size_t n_params);
        int (*store_query)(org_ctx *ctx, const char *sql, const char *const *params, size_t n_params,
                           org_row_fn row, void *userdata);
        int (*kv_get)(org_ctx *ctx, const char *key, char **ret_value);
        int (*kv_set)(org_ctx *ctx, const char *key, const char *value);

        /* Metrics: names are snake_case, Prometheus style, optional labels in braces
         * ("gpu_temp_c{gpu=\"3\"}"). agentd prefixes "organism_" and adds the
         * instance label. */
        int (*metric_set)(org_ctx *ctx, const char *name, org_metric_type type, double value, const char *help);
        int (*metric_add)(org_ctx *ctx, const char *name, double delta, const char *help);

        /* Watches fd (which the plugin owns and closes after io_remove) for ORG_IO_*
         * events; cb runs on the loop while they hold (level-triggered). Used for PSI
         * triggers (ORG_IO_PRI), pipes, sockets. */
        int (*io_add)(org_ctx *ctx, int fd, uint32_t events, org_io_fn cb, void *userdata, uint64_t *ret_id);
        int (*io_remove)(org_ctx *ctx, uint64_t id);
        /* One-shot timer at an absolute CLOCK_REALTIME instant (wall-clock schedules:
         * "22:00 local"). Cancel with timer_cancel. */
        int (*timer_add_realtime)(org_ctx *ctx, uint64_t at_realtime_us, org_timer_fn cb, void *userdata,
                                  uint64_t *ret_id);
        /* cb runs after the wall clock was set (a jump, NTP step, manual date); the
         * plugin then recomputes its wall-clock timers. Cancel with timer_cancel. */
        int (*time_change_add)(org_ctx *ctx, org_timer_fn cb, void *userdata, uint64_t *ret_id);

        /* Durable messaging through JetStream (needs bus.nats; -EOPNOTSUPP otherwise).
         * publish_durable stores data on subject in the stream that holds it; msg_id
         * (may be NULL) de-duplicates re-sends within the stream's duplicate window.
         * cb (may be NULL) runs on the loop with 0 once stored (or known duplicate),
         * or a negative errno; it never blocks the loop. */
        int (*publish_durable)(org_ctx *ctx, const char *subject, const char *msg_id, const void *data, size_t len,
                               org_reply_fn cb, void *userdata);
        /* Messages of the consumer arrive in `handle` with msg->ack_token set; each
         * must be answered with ack (now or later) or it comes back after ack_wait,
         * up to max_deliver times. Cancel with consume_cancel. */
        int (*consume_durable)(org_ctx *ctx, const org_consume_opts *opts, uint64_t *ret_id);
        int (*consume_cancel)(org_ctx *ctx, uint64_t id);
        int (*ack)(org_ctx *ctx, uint64_t ack_token, org_ack_kind kind, uint64_t delay_ms);

        /* -- appended by gpuworker: exec options -- */
        /* exec with options the first org_exec_spec lacks. org_exec_spec has no size
         * field, so it cannot grow (an older plugin's struct would be read past its
         * end); options live in org_exec_opts instead, which starts with its own
         * struct_size. opts may be NULL (= exec). */
        int (*exec_opts)(org_ctx *ctx, const org_exec_spec *spec, const org_exec_opts *opts, org_exec_fn cb,
                         void *userdata, uint64_t *ret_id);
        /* The pid of a running exec and whether it got its own cgroup; -ENOENT when
         * the id is not running (finished, cancelled, or a dry_run). */
        int (*exec_info)(org_ctx *ctx, uint64_t id, pid_t *ret_pid, bool *ret_cgroup);
        /* Runs work(userdata) on the agent's small worker pool (started on first use, so
         * an agent whose plugins never submit has no extra thread), then done(ctx,
         * result, userdata) on the loop. Blocking library calls (libgit2 fetch and
         * checkout, libcurl, big copies) belong here, never on the loop. See org_work_fn
         * for a job that outlives its generation. *ret_id may be NULL. */
        int (*work_submit)(org_ctx *ctx, org_work_fn work, org_work_done_fn done, void *userdata, uint64_t *ret_id);

        /* -- appended by reload: running work survives `plugin reload` and `config reload` --
         *
         * A command started with exec/exec_opts, and a worker job of work_submit, belong
         * to the instance, not to the generation (the loaded build) that started them. On
         * a reload the old generation's save_state runs, then the new one's init and
         * restore_state; meanwhile the process keeps running, its output is still
         * captured and its time-out still counts. During the new generation's init or
         * restore_state (and only then: later the old generation is gone) it re-attaches
         * each such id to its own callback with exec_adopt/work_adopt; from then on the
         * completion comes to the new generation, once, and never to the old one. What it
         * does not adopt by the end of restore_state is cancelled as before (a command is
         * killed and the log says "killing exec ID ARGV0 ...: not adopted by the new
         * generation"), so a plugin that never calls these behaves as it always did. If
         * the new generation fails (init or restore_state returns an error) the reload is
         * refused: what it adopted goes back to the old generation with the old callback
         * and userdata, and the old generation receives the completion. Ids are never
         * reused within an instance, across generations.
         *
         * The plugin learns its inherited ids through its own state hand-over: save_state
         * writes the ids (and whatever it needs to finish the work: what the task was,
         * whom to answer) into its blob, restore_state reads them and adopts each one. A
         * new build that changed its blob layout should put a version in it. The old
         * generation's userdata is not handed over: the new generation passes its own.
         * The old generation's fini runs after the new one's restore_state succeeded:
         * a command the new one adopted is no longer the old one's (exec_info and
         * exec_cancel on it answer -ENOENT), so a fini that reports its running work as
         * failed can skip what was handed over and report only what was not. On a
         * failed reload the old fini never runs; when the new one's restore_state
         * failed, its fini runs after what it adopted went back (so there too -ENOENT
         * means "not mine").
         *
         * exec_adopt: 0, -ENOENT (no such inherited command: finished, cancelled, never
         * the predecessor's, or called outside init/restore_state of a reload), -EBUSY
         * (already adopted). cb may be NULL (the result is dropped). A dry_run answer
         * still pending is adopted the same way. In an isolated instance (isolate:
         * true) the same holds across the child being replaced: agentd runs the child's
         * commands, their ids are unique across its children, and a reload's new child
         * adopts them like this; a child that crashes has its commands killed. */
        int (*exec_adopt)(org_ctx *ctx, uint64_t id, org_exec_fn cb, void *userdata);
        /* work_adopt: the job runs on with its block (the one work() writes into, whose
         * layout the old build chose: adopt only jobs whose layout this build knows, and
         * do not touch the block before done), and done(ctx, result, block, userdata)
         * runs here instead of the old done. A pointer into the old state inside the
         * block is stale: reach your state through userdata. If this generation retires
         * before the job ends, the block is freed as for any job and done is not called;
         * userdata stays yours. Same returns as exec_adopt. In an isolated instance the
         * jobs run in the child's own threads and die with it: work_adopt answers
         * -ENOENT there (a reload's new child starts that work again if it must). */
        int (*work_adopt)(org_ctx *ctx, uint64_t id, org_work_adopted_fn done, void *userdata);
} org_host;

/* True when the host table has member M (a host older than the plugin may not). */
#define ORG_HOST_HAS(host, member) \
        ((host)->struct_size >= offsetof(org_host, member) + sizeof(((org_host *)0)->member))

#ifdef __cplusplus
}
#endif
#endif
