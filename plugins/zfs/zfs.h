/* zfs.h — the zfs plugin's shared state and the interfaces between its files: the
 * pure pieces (parse.c for `-H -p` output, retention.c for names and what to destroy,
 * calendar.c for wall-clock slots) take no host and are unit-tested alone; the rest
 * (queue.c the command queue, jobs.c the calendar and the snapshot jobs, prune.c
 * retention and batched destroys, maint.c scrub/trim one pool at a time, health.c pool
 * health and alerts, props.c the property policy, layout.c the organ datasets, config.c
 * the config) share the `zfs` struct below. Everything runs on the
 * daemon's loop; commands go through host->exec one at a time (queue.c). */
#ifndef PLUGINS_ZFS_ZFS_H
#define PLUGINS_ZFS_ZFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <organism/plugin.h>

#define ZFS_NAME_MAX 256     /* dataset names (ZFS_MAX_DATASET_NAME_LEN) */
#define ZFS_TAG_MAX 33       /* snapshot tags: 1..32 of [A-Za-z0-9_-] */
#define ZFS_SNAP_PREFIX "organism-"
#define ZFS_STAMP_LEN 16     /* YYYYmmddTHHMMSSZ */
#define ZFS_US 1000000ULL

/* ---- parse.c: `-H -p` output, tab-separated ---- */

/* Splits one line (modified in place) at tabs into at most max fields; returns the count. */
size_t zfs_split_tabs(char *line, char **fields, size_t max);
/* Parses a decimal unsigned integer (the whole string); "-" and "" give -EINVAL. */
int zfs_parse_u64(const char *s, uint64_t *ret);

typedef struct zfs_pool_status {
        char name[ZFS_NAME_MAX];
        char state[32];        /* the "state:" line */
        bool scrubbing;        /* scan: scrub in progress (or paused) */
        bool resilvering;      /* scan: resilver in progress */
        bool trimming;         /* a vdev line says "trimmed, started at" */
        bool scrub_done;       /* scan: scrub repaired ... (a finished scrub) */
        uint64_t scrub_repaired;
        uint64_t scrub_errors;
        char scan[160];        /* the scan: line as printed, trimmed */
        bool data_errors;      /* errors: other than "No known data errors" */
        char errors[160];
} zfs_pool_status;

/* Parses `zpool status -p -t` for every pool it prints into a malloc'd array
 * (*ret_n entries). -EBADMSG when the text has no "pool:" line at all. */
int zfs_parse_zpool_status(const char *text, zfs_pool_status **ret, size_t *ret_n);

/* Parses "cannot destroy snapshot NAME: REASON" lines of stderr: calls fn per line. */
void zfs_parse_destroy_errors(const char *text, void (*fn)(const char *snap, const char *reason, void *ud),
                              void *ud);

/* ---- retention.c ---- */

/* organism-<tag>-YYYYmmddTHHMMSSZ for a UTC instant. */
int zfs_snapname(const char *tag, int64_t unix_s, char *buf, size_t size);
/* True if snap (the part after '@') is one of ours for tag (exact shape, valid stamp). */
bool zfs_snapname_is(const char *snap, const char *tag);
/* True if snap looks like one of ours for any tag; ret_tag (size ZFS_TAG_MAX) gets it. */
bool zfs_snapname_tag(const char *snap, char *ret_tag);
bool zfs_tag_valid(const char *tag);

typedef struct zfs_snap {
        char *name;            /* full: dataset@snap (owned) */
        uint64_t creation;     /* unix seconds */
        uint64_t userrefs;     /* holds */
        bool destroy;          /* decided by zfs_retention */
} zfs_snap;

/* Marks for destruction all but the newest `keep` snapshots of one dataset (by
 * creation, then name), never the newest one, never a held one; snaps must be of one
 * dataset and one tag. Returns how many were marked; *ret_held counts the held ones
 * that would otherwise have gone. */
size_t zfs_retention(zfs_snap *snaps, size_t n, unsigned keep, size_t *ret_held);

/* ---- calendar.c ---- */

typedef enum zfs_cal_kind {
        ZFS_CAL_EVERY = 1,     /* every `period` seconds, slots at multiples since the epoch (UTC) */
        ZFS_CAL_DAILY,         /* at local `at` every day */
        ZFS_CAL_WEEKLY,        /* at local `at` on `weekday` (0 = Sunday) */
        ZFS_CAL_MONTHLY,       /* at local `at` on day `mday` (1..28) */
} zfs_cal_kind;

typedef struct zfs_cal {
        zfs_cal_kind kind;
        int64_t period;        /* EVERY: seconds */
        int at;                /* seconds after local midnight */
        int weekday;
        int mday;
} zfs_cal;

/* "HH:MM" → seconds after midnight. */
int zfs_parse_hhmm(const char *s, int *ret);
/* The instant a local date reads `seconds` after midnight: the first such instant when
 * the clock reads it twice (fall-back), the instant the clock jumps over it when it
 * never does (spring-forward). */
int zfs_local_instant(int y, int mon, int mday, int seconds, int64_t *ret);
/* The latest slot <= now and the earliest slot > now. */
int zfs_cal_prev(const zfs_cal *c, int64_t now, int64_t *ret);
int zfs_cal_next(const zfs_cal *c, int64_t now, int64_t *ret);
/* Due: the job last ran (0 = never) before the latest slot. A run recorded after now
 * (the clock went back) is not due again until the slot after it. */
bool zfs_cal_due(const zfs_cal *c, int64_t last_run, int64_t now);

/* ---- the plugin's state ---- */

typedef enum zfs_role { ZFS_FAST, ZFS_SCRATCH, ZFS_ARCHIVE, ZFS_ROLES } zfs_role;
extern const char *const zfs_role_names[ZFS_ROLES];

typedef struct zfs_job_stat {
        int64_t last_run;      /* unix seconds, persisted */
        uint64_t last_duration_us;
        int last_result;       /* 0 ok, negative errno, 1 partial (some blocked) */
        uint64_t runs, failures;
} zfs_job_stat;

typedef struct zfs_snapjob {
        char tag[ZFS_TAG_MAX];
        zfs_cal cal;
        unsigned keep;
        char **datasets;
        size_t n_datasets;
        char **exclude;
        size_t n_exclude;
        bool recursive;
        zfs_job_stat st;
        bool running;
        uint64_t count;        /* snapshots of this tag seen at the last prune */
} zfs_snapjob;

typedef struct zfs_propset {
        char dataset[ZFS_NAME_MAX];
        char **keys, **values; /* wanted local values (sync included when it applies) */
        size_t n;
        bool unsafe;
        bool sync_implicit;    /* the last key is sync=standard put back, not configured */
} zfs_propset;

/* One property as last read: for verify. */
typedef struct zfs_propseen {
        char *dataset, *property, *want, *have, *source;
} zfs_propseen;

typedef struct zfs_alert {
        char pool[ZFS_NAME_MAX];
        char key[256];         /* the conditions; "" = none */
        uint64_t sent_us;      /* monotonic */
        bool seen;             /* in the last pass */
} zfs_alert;

typedef struct zfs_pool_info {
        char name[ZFS_NAME_MAX];
        char health[32];
        uint64_t size, alloc, free;
        int cap, frag;         /* percent, -1 unknown */
        zfs_pool_status st;
        bool have_status;
} zfs_pool_info;

typedef struct zfs_maint {
        bool scrub;            /* else trim */
        char pool[ZFS_NAME_MAX];
        bool starting;         /* its zpool scrub/trim is queued */
        bool started;
        unsigned passes;       /* health passes since it started */
} zfs_maint;

typedef struct zfs_queue_item zfs_queue_item;

typedef struct zfs {
        const org_host *host;
        org_ctx *ctx;

        /* config */
        char pools[ZFS_ROLES][ZFS_NAME_MAX]; /* "" = role not configured */
        zfs_snapjob *jobs;
        size_t n_jobs;
        bool scrub_enabled, trim_enabled, autotrim;
        zfs_cal scrub_cal, trim_cal;
        uint64_t health_interval_ms, alert_repeat_ms, properties_interval_ms, command_timeout_ms;
        int cap_alert;
        zfs_propset *props;
        size_t n_props;

        /* calendar */
        zfs_job_stat scrub_st, trim_st;
        uint64_t cal_timer, cal_timer_at, time_change_id;

        /* command queue (queue.c) */
        zfs_queue_item *q_head, *q_tail;
        size_t q_len;
        bool q_busy, q_pumping, stopping;
        zfs_queue_item *q_inflight;
        uint64_t q_exec_id;
        uint64_t commands, command_failures;

        /* health (health.c) */
        uint64_t health_timer;
        bool health_running;
        zfs_pool_info *pools_seen;
        size_t n_pools_seen;
        zfs_alert *alerts;
        size_t n_alerts;
        uint64_t health_passes, health_failures;
        uint64_t health_last_us;   /* duration of the last pass */

        /* scrub/trim, one pool at a time */
        zfs_maint *maint;
        size_t n_maint;

        /* properties (props.c) */
        uint64_t props_timer;
        bool props_running;
        zfs_propseen *seen;
        size_t n_seen;
        uint64_t props_set;        /* zfs set / zpool set calls made */
        bool props_reread;         /* this pass re-reads after the previous one set something */

        /* prune reports already made: "snap\treason" */
        char **blocked;
        size_t n_blocked;
        uint64_t prune_failures, destroyed;
} zfs;

/* ---- config.c ---- */
extern const org_config_entry zfs_config_map[];
/* Reads and checks the config (the host checked types; this checks meaning). Logs. */
int zfs_config_load(zfs *z);
void zfs_config_free(zfs *z);
/* The role whose pool holds dataset, or -1. */
int zfs_dataset_role(const zfs *z, const char *dataset);
/* ds is root or under it. */
bool zfs_under(const char *ds, const char *root);
/* ds is an excluded dataset of the job or under one. */
bool zfs_job_excluded(const zfs_snapjob *j, const char *ds);
/* ds belongs to the job's set: a named dataset or (recursive) one under it, never an
 * excluded one. */
bool zfs_job_in_set(const zfs_snapjob *j, const char *ds);
/* The pool part of a dataset or snapshot name. */
void zfs_pool_of(const char *ds, char *buf, size_t size);

/* ---- queue.c ---- */

typedef void (*zfs_done_fn)(zfs *z, const org_exec_result *res, void *ud);
/* Queues argv (copied; argv[0] is "zfs" or "zpool"), run after those before it. cb
 * (may be NULL) runs on completion, failure included (res->status < 0 when it could not
 * start). Returns 0 or -ENOMEM (cb not called). */
int zfs_run(zfs *z, const char *const *argv, bool mutating, zfs_done_fn cb, void *ud);
/* Cancels what is in flight and what waits: each callback runs with -ECANCELED (and
 * zfs_run refuses new commands from then on), so every chain frees what it holds. */
void zfs_queue_free(zfs *z);
/* A growing NULL-terminated argv (the strings are borrowed; free v only). */
typedef struct zfs_argv {
        const char **v;
        size_t n, cap;
} zfs_argv;
int zfs_argv_add(zfs_argv *a, const char *s);
/* "exit 1: first line of stderr" into buf, for logs. */
const char *zfs_failure(const org_exec_result *res, char *buf, size_t size);

/* ---- prune.c ---- */
/* report (stolen, may be NULL) {tag, keep, plan, blocked, destroyed, kept, failed}. */
typedef void (*zfs_prune_done_fn)(zfs *z, void *report, int result, void *ud);
/* Starts the retention of job's tag; done is called exactly once unless this fails. */
int zfs_prune_start(zfs *z, zfs_snapjob *j, bool dry, zfs_prune_done_fn done, void *ud);

/* ---- maint.c ---- */
/* Queues the scrub (or trim) of every named pool (trim: fast and scratch). */
void zfs_maint_job(zfs *z, bool scrub);

/* ---- jobs.c ---- */
void zfs_save_last_run(zfs *z, const char *job, int64_t t);
uint64_t zfs_mono_us(zfs *z);
int zfs_jobs_start(zfs *z);
void zfs_jobs_stop(zfs *z);
/* Takes the snapshots of job now (verb or calendar); reply may be NULL. */
int zfs_job_snapshot(zfs *z, zfs_snapjob *j, const char *reply, const char *why);
int zfs_job_prune(zfs *z, zfs_snapjob *j, bool dry_run, const char *reply);
zfs_snapjob *zfs_job_find(zfs *z, const char *tag);
/* Called by health after each pass: advances scrub/trim. */
void zfs_maint_step(zfs *z);
int zfs_maint_add(zfs *z, bool scrub, const char *pool);
void zfs_jobs_json(zfs *z, void *json_array);
void zfs_job_metrics(zfs *z);

/* ---- health.c ---- */
int zfs_health_start(zfs *z);
void zfs_health_stop(zfs *z);
void zfs_health_run(zfs *z);
const zfs_pool_info *zfs_pool_find(const zfs *z, const char *name);
void *zfs_pools_json(const zfs *z);  /* json_t * array */

/* ---- props.c ---- */
int zfs_props_start(zfs *z);
void zfs_props_stop(zfs *z);
void zfs_props_run(zfs *z);
void zfs_props_verify(zfs *z, void *checks); /* appends to a json_t * array */

/* ---- layout.c ---- */
int zfs_layout(zfs *z, bool confirm, const char *reply);

/* ---- zfs.c ---- */
/* Answers a verb's request with o (stolen; NULL answers an out-of-memory error). */
int zfs_reply(zfs *z, const char *reply, void *o);
int zfs_reply_error(zfs *z, const char *reply, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void zfs_rfc3339(uint64_t realtime_us, char *buf, size_t size);
uint64_t zfs_now_us(zfs *z);

#endif
