/* context.h — struct org_ctx, the host side of one plugin generation: what the plugin
 * created through the host (timers, processes, pending requests) so that retiring the
 * generation cancels all of it, and the log rate limiter. Running commands and worker
 * jobs are the exception: on a reload the new generation may adopt them (exec_adopt,
 * work_adopt) while its predecessor is still there, and only what it left is cancelled.
 * Only core/host.c and core/instance.c look inside. */
#ifndef CORE_CONTEXT_H
#define CORE_CONTEXT_H

#include <stdbool.h>
#include <stdint.h>

#include <organism/host.h>

#include "exec.h"
#include "instance.h"

typedef enum ctx_timer_kind {
        CTX_TIMER_MONOTONIC,
        CTX_TIMER_REALTIME,
        CTX_TIMER_TIME_CHANGE,  /* a timerfd that fires when the wall clock is set */
} ctx_timer_kind;

typedef struct ctx_timer {
        struct ctx_timer *next;
        uint64_t id;
        ctx_timer_kind kind;
        uint64_t period_us;
        int fd;                  /* CTX_TIMER_TIME_CHANGE only, else -1 */
        sd_event_source *source;
        org_timer_fn cb;
        void *userdata;
        org_ctx *ctx;
} ctx_timer;

typedef struct ctx_exec {
        struct ctx_exec *next;
        uint64_t id;
        exec_job *job;           /* NULL for a dry_run answer still pending in `defer` */
        sd_event_source *defer;
        org_exec_fn cb;
        void *userdata;
        org_ctx *ctx;
        char *argv0;
        uint64_t generation;     /* the generation that started it */
        uint64_t started_us;     /* monotonic */
        uint64_t timeout_ms;
        /* adopted by a generation whose init/restore has not committed yet: where it
         * goes back to if that generation fails */
        bool adopted;
        org_exec_fn prev_cb;
        void *prev_userdata;
} ctx_exec;

/* A worker job of the predecessor that this generation adopted during init/restore;
 * applied to the pool when the generation commits. */
typedef struct ctx_work_adopt {
        struct ctx_work_adopt *next;
        uint64_t id;
        org_work_adopted_fn done;
        void *userdata;
} ctx_work_adopt;

typedef struct ctx_io {
        struct ctx_io *next;
        uint64_t id;
        sd_event_source *source;
        org_io_fn cb;
        void *userdata;
        org_ctx *ctx;
} ctx_io;

typedef struct ctx_durable {
        struct ctx_durable *next;
        uint64_t id;
        struct bridge_consumer *consumer; /* consume: the consumer; NULL for a publish */
        org_reply_fn cb;
        void *userdata;
        org_ctx *ctx;            /* NULL: a publish whose generation retired before it completed */
} ctx_durable;

typedef struct ctx_request {
        struct ctx_request *next;
        uint64_t bus_id;
        org_reply_fn cb;
        void *userdata;
        org_ctx *ctx;
} ctx_request;

struct org_ctx {
        instance *inst;
        uint64_t generation;
        const char *call_reply;     /* reply subject of the call being handled */
        bool call_replied;          /* respond() answered it during the call hook */
        org_ctx *predecessor;       /* the running generation, while this one's init/restore runs */
        ctx_timer *timers;
        ctx_exec *execs;
        ctx_request *requests;
        ctx_io *ios;
        ctx_durable *durables;      /* pending durable publishes and live consumers */
        ctx_work_adopt *work_adopts;
        /* rate limiting of repeated log lines */
        uint64_t log_window_start_us;
        unsigned log_in_window;
        unsigned log_suppressed;
};

extern const org_host host_table;

org_ctx *ctx_new(instance *in);
/* Cancels every timer, process and request of the generation and frees it. */
void ctx_free(org_ctx *ctx);

/* A reload: ctx (the new generation) is about to run init/restore with old as its
 * predecessor, so exec_adopt/work_adopt can find old's work. */
void ctx_hand_over_begin(org_ctx *ctx, org_ctx *old);
/* The new generation's init/restore succeeded: its adoptions take effect, and every
 * command of old it did not adopt is killed (and logged); worker jobs it did not adopt
 * finish on their own (their .so stays mapped) and are dropped. Then old can be freed. */
void ctx_hand_over_commit(org_ctx *ctx);
/* The new generation failed: what it adopted goes back to old, with old's callbacks. */
void ctx_hand_over_abort(org_ctx *ctx);

/* The running commands of a generation, for `plugin info`. */
json_t *ctx_execs_to_json(const org_ctx *ctx);

#endif
