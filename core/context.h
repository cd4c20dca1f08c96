/* context.h — struct org_ctx, the host side of one plugin generation: what the plugin
 * created through the host (timers, processes, pending requests) so that retiring the
 * generation cancels all of it, and the log rate limiter. Only core/host.c and
 * core/instance.c look inside. */
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
} ctx_exec;

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
        uint64_t next_id;
        ctx_timer *timers;
        ctx_exec *execs;
        ctx_request *requests;
        ctx_io *ios;
        ctx_durable *durables;      /* pending durable publishes and live consumers */
        /* rate limiting of repeated log lines */
        uint64_t log_window_start_us;
        unsigned log_in_window;
        unsigned log_suppressed;
};

extern const org_host host_table;

org_ctx *ctx_new(instance *in);
/* Cancels every timer, process and request of the generation and frees it. */
void ctx_free(org_ctx *ctx);

#endif
