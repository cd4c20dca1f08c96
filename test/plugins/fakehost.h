/* fakehost.h — an org_host for plugin unit tests: no daemon, no loop. It records what
 * the plugin publishes, subscribes, writes and runs; config comes from a JSON text
 * (as agentd would hand it after checking); files are read from and written to a
 * fixture sysroot; timers fire when the test says so; exec answers from canned
 * results, at once or when the test completes it; the store is sqlite in memory. Plugins are linked into the test directly and get this table in init, the
 * way Redis modules' tests hand modules a fake RedisModuleCtx. */
#ifndef TEST_FAKEHOST_H
#define TEST_FAKEHOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <organism/plugin.h>

#define FAKE_MAX 256

typedef struct fake_published {
        char *subject;
        char *data;
} fake_published;

typedef enum fake_timer_kind { FAKE_TIMER_MONOTONIC, FAKE_TIMER_REALTIME, FAKE_TIMER_TIME_CHANGE } fake_timer_kind;

typedef struct fake_timer {
        uint64_t id;
        fake_timer_kind kind;
        uint64_t first_ms, period_ms;
        uint64_t at_realtime_us;  /* FAKE_TIMER_REALTIME */
        org_timer_fn cb;
        void *userdata;
        bool active;
} fake_timer;

typedef struct fake_io {
        int fd;
        uint32_t events;
        org_io_fn cb;
        void *userdata;
        bool active;
} fake_io;

typedef struct fake_exec {
        char *argv[16];
        bool mutating;
        /* what exec_opts (and exec) were asked for */
        bool allow_path, set_ids;
        unsigned uid, gid;
        uint64_t timeout_ms;
        size_t capture_max;
        char *cwd;
        char *env[64];
        uint32_t flags;           /* org_exec_opts.flags */
        size_t n_groups;
        bool cancelled;
} fake_exec;

struct org_ctx {
        const char *instance;
        const char *agent;
        bool dry_run;
        char *config_json;
        void *config;           /* json_t * */
        char *sysroot;          /* NULL: real paths */
        uint64_t now_realtime_us, now_monotonic_us;

        fake_published published[FAKE_MAX];
        size_t n_published;
        char *subscriptions[FAKE_MAX];
        size_t n_subscriptions;
        fake_timer timers[FAKE_MAX];
        size_t n_timers;
        fake_io ios[FAKE_MAX];
        size_t n_ios;
        fake_exec execs[FAKE_MAX];
        size_t n_execs;
        /* exec completes at once with this ... */
        int exec_status;
        const char *exec_out;
        /* ... unless exec_deferred: then it waits, "in flight", for fake_exec_complete() */
        bool exec_deferred;
        struct {
                org_exec_fn cb;
                void *userdata;
                uint64_t id;      /* exec id: exec_cancel drops it */
        } pending[FAKE_MAX];
        size_t n_pending;
        void *db;                 /* sqlite3 *, in memory: the store, opened on first use */
        char *metric_names[FAKE_MAX];
        double metric_values[FAKE_MAX];
        size_t n_metrics;
        unsigned logs;
        /* work_submit: queued until fake_work_run(), as a pool would, never inside submit */
        struct {
                org_work_fn work;
                org_work_done_fn done;
                void *userdata;
        } works[FAKE_MAX];
        size_t n_works;
        unsigned works_submitted;
};

extern const org_host fake_host;

/* config_json may be NULL ("{}"). */
void fake_ctx_init(org_ctx *ctx, const char *instance, const char *config_json);
void fake_ctx_done(org_ctx *ctx);
void fake_ctx_clear_published(org_ctx *ctx);
/* The last message published on subject, or NULL. */
const char *fake_last_published(org_ctx *ctx, const char *subject);
/* Fires every active monotonic timer once. */
void fake_fire_timers(org_ctx *ctx);
/* Moves the wall clock forward to now_us and fires the realtime timers that are due,
 * in time order (timers they add are considered too). */
void fake_advance_realtime(org_ctx *ctx, uint64_t now_us);
/* Sets the wall clock to now_us (forwards or backwards) like settimeofday and runs the
 * time-change watchers; due realtime timers then fire as in fake_advance_realtime. */
void fake_clock_jump(org_ctx *ctx, uint64_t now_us);
/* Active realtime timers. */
size_t fake_realtime_timers(org_ctx *ctx, uint64_t *ret_first_at);
double fake_metric(org_ctx *ctx, const char *name);
/* Completes the oldest deferred exec with status and out; false if none is pending. */
bool fake_exec_complete(org_ctx *ctx, int status, const char *out);
/* Completes the oldest deferred exec with a full result. */
bool fake_exec_complete_res(org_ctx *ctx, const org_exec_result *res);
/* Builds a message and hands it to the plugin's handle / call hook. */
int fake_deliver(const org_plugin *p, void *state, const char *subject, const char *data);
/* Runs every queued job (work, then done, in submit order, jobs they submit too);
 * returns how many ran. */
unsigned fake_work_run(org_ctx *ctx);
int fake_call(const org_plugin *p, void *state, org_ctx *ctx, const char *verb, const char *args, char **ret_reply);

#endif
