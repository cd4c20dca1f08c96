/* maestro.h — the maestro plugin's shared state: tasks (in memory for every task not
 * yet final, the sqlite store being the source of truth), the GPUs seen in workers'
 * heartbeats and metrics, the ready queues (one for unpinned tasks, one per GPU for
 * pinned ones), one timer heap (deadlines, retry back-offs, lease expiries) and the
 * per-turn write batch whose commit releases replies and messages. */
#ifndef PLUGINS_MAESTRO_MAESTRO_H
#define PLUGINS_MAESTRO_MAESTRO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <organism/plugin.h>

#define MAESTRO_VERSION  "0.1.0"
#define MAESTRO_MAX_GPUS 64
#define MAESTRO_ID_MAX   128
#define MAESTRO_US       1000000ULL

typedef enum maestro_state {
        TS_ENQUEUED,
        TS_WAITING_GPU,
        TS_SCHEDULED,
        TS_RUNNING,
        TS_RETRY,
        TS_DONE,
        TS_FAILED,
        TS_CANCELLED,
        TS_REJECTED,
        TS__COUNT,
} maestro_state;

/* An index-tracked binary heap of tasks: removal from the middle is O(log n), so a
 * cancelled or finished task leaves at once instead of lingering as a stale entry. */
typedef struct maestro_task maestro_task;
typedef struct maestro_heap {
        maestro_task **v;
        size_t n, cap;
        bool timer; /* keyed by when_us (one per task); else by priority desc, seq asc */
} maestro_heap;

struct maestro_task {
        char id[MAESTRO_ID_MAX + 1];
        char *spec; /* JSON object: {type, cmd, shell, cwd, env, timeout} of the run payload */
        int pin;    /* -1: any GPU */
        int64_t priority;
        int64_t max_retries;
        uint64_t timeout_ms;
        uint64_t deadline_us; /* realtime; 0: none */
        uint64_t seq;         /* FIFO order within a priority */
        uint64_t created_us;
        maestro_state state;
        int64_t attempt;  /* the attempt of the lease (1 = first dispatch) */
        int64_t failures; /* attempts that failed (err, lease expiry): retried while <= max_retries */
        int lease_gpu;    /* -1 none */
        int last_gpu;     /* the GPU of the previous attempt, avoided on retry */
        uint64_t lease_expiry_us;
        uint64_t next_try_us;
        uint64_t enqueue_mono_us;
        char *error;  /* last error */
        char *result; /* final result JSON (done/failed) */
        bool cancel_requested;
        bool waiting_published;
        bool dirty;
        bool stored;  /* its row exists (committed): changes are updates */
        bool started; /* running seen for this attempt */
        /* a submission of this turn, not yet checked against the store nor admitted */
        bool incoming, client_id, watch, dup;
        char dup_state[24];
        char *reply;
        uint64_t ack_token; /* a JetStream submission: acked once committed */
        /* membership */
        maestro_heap *queue; /* ready queue holding it, or NULL */
        size_t qpos;
        size_t tpos;                 /* position in the timer heap, SIZE_MAX when absent */
        uint64_t when_us;            /* key in the timer heap (realtime) */
        maestro_task *hnext;         /* hash chain */
        maestro_task *gprev, *gnext; /* tasks leased on lease_gpu */
};

typedef struct maestro_gpu {
        bool seen;
        char pci[32];
        char state[24];      /* from the heartbeat: idle, busy, gone, passthrough... */
        uint64_t hb_us;      /* realtime of the last heartbeat naming it */
        uint64_t idle_since_us; /* heartbeats say idle since (0: busy, or a task's running came after) */
        uint64_t metrics_us; /* realtime of the last metrics */
        bool has_busy, has_temp;
        double busy, temp;
        uint64_t last_release_us;           /* a task of ours ended there (its busy% is ours, not load) */
        char last_task[MAESTRO_ID_MAX + 1]; /* the task that ended there last */
        unsigned inflight;                  /* tasks scheduled or running there */
        maestro_task *leased;               /* list of those tasks */
        uint64_t dispatched;
} maestro_gpu;

/* A bus message, reply or JetStream ack held until the turn's commit. */
typedef enum maestro_out_kind { OUT_PUBLISH, OUT_REPLY, OUT_ACK } maestro_out_kind;
typedef struct maestro_out {
        maestro_out_kind kind;
        char *subject;
        char *data;
        uint64_t ack_token;
        int ack; /* org_ack_kind */
        uint64_t ack_delay_ms;
} maestro_out;

/* A verb or request answered later (watch, submit --watch). */
typedef struct maestro_waiter {
        char id[MAESTRO_ID_MAX + 1];
        char *reply;
        uint64_t timer_id;
        struct maestro *m;
        struct maestro_waiter *next;
} maestro_waiter;

typedef struct maestro_cfg {
        uint64_t heartbeat_ttl_us, metrics_ttl_us;
        double max_temp, max_busy, inflight_weight;
        int64_t max_inflight, max_retries, max_queue;
        uint64_t retry_backoff_ms, default_timeout_ms, lease_grace_ms, heartbeat_ms, keep_final_ms;
        uint64_t idle_grace_ms;
        int64_t max_task_bytes;
        bool allow_shell, durability_full, durability_off;
        const char *intake_stream, *intake_durable, *intake_filter;
        uint64_t intake_ack_wait_ms;
        int64_t intake_max_pending;
} maestro_cfg;

typedef struct maestro {
        const org_host *host;
        org_ctx *ctx;
        maestro_cfg cfg;
        bool store_ok;

        maestro_task **hash;
        size_t hash_cap, n_tasks; /* n_tasks: tasks in memory (not yet final, or final and not yet flushed) */
        size_t n_queued;          /* not yet final: counts against max_queue */
        size_t n_inflight;
        uint64_t next_seq;

        maestro_heap ready; /* unpinned */
        maestro_heap pinned[MAESTRO_MAX_GPUS];
        maestro_heap timers;
        uint64_t wake_timer, wake_at;

        maestro_gpu gpus[MAESTRO_MAX_GPUS];

        maestro_task **dirty;
        size_t n_dirty, dirty_cap;
        maestro_out *out;
        size_t n_out, out_cap;
        uint64_t flush_timer;
        int wake_fd; /* eventfd: readable = a flush is due */
        uint64_t wake_io;
        bool wake_armed;
        bool in_flush;

        maestro_task **incoming;
        size_t n_incoming, incoming_cap;

        maestro_waiter *waiters;
        uint64_t hb_timer;
        uint64_t last_prune_us;

        /* counters */
        uint64_t accepted_total, rejected_total, dispatched_total, done_total, failed_total, cancelled_total;
        uint64_t retries_total, lease_expiries_total, stale_total, commits_total, commit_errors_total;
        uint64_t lost_total, replayed_total; /* idle rule fired; done answered from a worker's store */
        uint64_t busy_refusals_total;
        uint64_t admit_us, commit_us, commit_cpu_us, commit_max_us, send_us; /* time spent in flushes */
        /* enqueue → dispatch latency (µs), a ring of the last samples for quantiles */
        uint64_t lat[4096];
        size_t n_lat;
} maestro;

/* dispatch.c */
const char *maestro_state_name(maestro_state s);
bool maestro_state_final(maestro_state s);
void maestro_heap_push(maestro_heap *h, maestro_task *t);
void maestro_heap_remove(maestro_heap *h, maestro_task *t);
maestro_task *maestro_heap_top(const maestro_heap *h);
void maestro_heap_free(maestro_heap *h);
void maestro_timer_set(maestro *m, maestro_task *t, uint64_t when_us);
void maestro_timer_clear(maestro *m, maestro_task *t);
void maestro_rearm(maestro *m);
bool maestro_gpu_eligible(const maestro *m, int g, uint64_t now_us, const char **ret_why);
double maestro_gpu_score(const maestro *m, int g, uint64_t now_us);
void maestro_queue(maestro *m, maestro_task *t);
void maestro_dispatch(maestro *m);
void maestro_note_waiting(maestro *m, maestro_task *t);
void maestro_on_heartbeat(maestro *m, const char *data, size_t len);
void maestro_on_metrics(maestro *m, const char *data, size_t len);
void maestro_on_result(maestro *m, const char *kind, const char *data, size_t len);
void maestro_on_timers(maestro *m);
int maestro_cancel(maestro *m, maestro_task *t);
void maestro_finish(maestro *m, maestro_task *t, maestro_state s, const char *error, char *result);
void maestro_lease_release(maestro *m, maestro_task *t);
size_t maestro_gpus_alive(const maestro *m, uint64_t now_us);

/* maestro.c */
uint64_t maestro_now(const maestro *m);
void maestro_mark_dirty(maestro *m, maestro_task *t);
void maestro_emit(maestro *m, const char *subject, char *data); /* takes data */
void maestro_emit_state(maestro *m, const maestro_task *t, const char *extra_fmt, ...)
        __attribute__((format(printf, 3, 4)));
maestro_task *maestro_find(const maestro *m, const char *id);
void maestro_forget(maestro *m, maestro_task *t);
void maestro_ts(uint64_t us, char *buf, size_t n);
char *maestro_json_str(const char *s, size_t len); /* a quoted JSON string, malloc'd */
void maestro_waiters_notify(maestro *m, const maestro_task *t);

#endif
