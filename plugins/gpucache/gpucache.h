/* gpucache.h — the gpucache plugin's shared types: one layer per GPU (keyed by PCI
 * address) or per named entry of `layers:`, each a tmpfs at `ram` holding upper/ and
 * work/, an overlay at `merged` over `lower`, and generations under `persist`.
 *
 * gpucache.c holds the descriptor, config, hooks, bus and verbs; layer.c the start
 * (check, adopt, mount, restore), sync and prewarm scheduling and disable; mounts.c
 * mountinfo, statfs and the busy scan; jobs.c the worker-pool jobs; handover.c the
 * state a `plugin reload` hands to the new build (running jobs included); gen.c the
 * generation builder. */
#ifndef GPUCACHE_H
#define GPUCACHE_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <organism/plugin.h>
#include <organism/text.h>

#include "gen.h"

#define GC_MAX_LAYERS  40
#define GC_MAX_GPUS    32
#define GC_MAX_WAITERS 64
#define GC_NAME_MAX    40
#define GC_PCI_MAX     16
#define GC_REPLY_MAX   256
#define GC_WHY_MAX     400

typedef enum gc_state {
        GC_DOWN,        /* not started yet */
        GC_RESTORING,   /* tmpfs mounted, restore running off the loop */
        GC_MOUNTED,     /* tmpfs + overlay in place */
        GC_DISABLED,    /* unmounted by `disable` */
        GC_ERROR,       /* refused or failed: see why */
        GC_DRY_RUN,     /* dry_run: the mounts were logged, not made */
} gc_state;

/* A job of the worker pool (jobs.c; opaque elsewhere). */
typedef struct gc_job gc_job;
typedef enum gc_job_kind { GC_JOB_SYNC, GC_JOB_RESTORE, GC_JOB_PREWARM, GC_JOB_BUSY } gc_job_kind;
/* The layout of gc_job and of the hand-over blob: a build that changes either bumps it. */
#define GC_JOB_FORMAT 1

typedef struct gc_handover gc_handover;

typedef struct gc_layer {
        char name[GC_NAME_MAX]; /* gpu<i> or the key of layers: */
        int index;              /* gpu index, -1 for a named layer */
        char pci[GC_PCI_MAX];   /* "" for a named layer */
        uint64_t size;
        char lower[PATH_MAX], persist[PATH_MAX], ram[PATH_MAX], merged[PATH_MAX];
        char upper[PATH_MAX], work[PATH_MAX];
        gc_state state;
        char why[GC_WHY_MAX];
        bool adopted;           /* found mounted by an earlier run */
        /* the jobs in flight (their blocks, until done): mine or adopted from the old build */
        gc_job *sync_job, *prewarm_job, *restore_job, *busy_job;
        bool restore_inherited; /* restoring: the previous build's restore, until the hand-over */
        bool restore_retry;     /* start afresh: never wait for a previous build's restore */

        /* sync: one at a time; a request during one asks for exactly one more */
        bool syncing, sync_pending;
        uint64_t sync_seq;      /* number of the last sync started */
        uint64_t syncs, sync_errors, sync_bytes;
        uint64_t last_sync_us;  /* wall clock of the last successful sync */
        uint64_t last_sync_ms;  /* its duration */
        uint64_t generation;
        gc_stats last;
        char last_error[GC_WHY_MAX];

        bool prewarming;
        uint64_t prewarm_seq;
        uint64_t prewarm_files, prewarm_bytes, prewarm_ms;

        /* usage of the tmpfs */
        uint64_t used_bytes, size_bytes, inodes_used, inodes_total;
        bool full;              /* alert.gpucache.<layer>.full is raised */

        /* a disable or enable in progress: its reply subject ("" = none) */
        bool disabling;
        char op_reply[GC_REPLY_MAX];
} gc_layer;

typedef enum gc_kind { GC_WAIT_SYNC, GC_WAIT_PREWARM, GC_WAIT_DISABLE } gc_kind;

/* Someone waiting for syncs or prewarms of several layers: a request's reply subject. */
typedef struct gc_waiter {
        bool used;
        gc_kind kind;
        char reply[GC_REPLY_MAX];
        uint64_t target[GC_MAX_LAYERS]; /* the sequence number that satisfies it, 0 = not waited for */
        json_t *results;
} gc_waiter;

typedef struct gc {
        const org_host *host;
        org_ctx *ctx;
        gc_handover *handover;  /* handover.c: the ticket of the last save_state, or NULL */
        bool dry_run;

        uint64_t cache_bytes, sync_ms, heartbeat_ms, prewarm_max, max_ram;
        unsigned prewarm_parallel;
        bool prewarm_on_start;
        double max_ram_fraction, full_ratio, clear_ratio;
        uint64_t mem_total;

        gc_layer layers[GC_MAX_LAYERS];
        size_t n_layers;
        gc_waiter waiters[GC_MAX_WAITERS];

        uint64_t sync_timer, hb_timer, inherit_timer;
        uint64_t busy_refusals;
} gc;

/* gpucache.c */
void gc_publish(gc *g, const char *subject, json_t *o);
void gc_respond(gc *g, const char *reply, json_t *o);
char *gc_ts(gc *g, char *buf, size_t len);
json_t *gc_layer_id(const gc_layer *l); /* {gpu, layer, pci} */

/* layer.c */
void gc_sync_done(gc *g, size_t layer, uint64_t seq, int r, const gc_stats *st, const char *err, uint64_t us);
void gc_restore_done(gc *g, size_t layer, int r, const gc_stats *st, const char *err, uint64_t us);
void gc_prewarm_done(gc *g, size_t layer, uint64_t seq, int r, const gc_stats *st, uint64_t us);
void gc_busy_done(gc *g, size_t layer, int r, const char *why);
void gc_layer_start(gc *g, gc_layer *l);
int gc_layer_sync(gc *g, gc_layer *l);    /* starts or queues one; -EAGAIN when not mounted */
int gc_layer_prewarm(gc *g, gc_layer *l);
void gc_layer_disable(gc *g, gc_layer *l, const char *reply);
void gc_layer_enable(gc *g, gc_layer *l, const char *reply);
void gc_layer_usage(gc *g, gc_layer *l);
void gc_layers_final_sync(gc *g);
/* After a reload: a layer left waiting for a previous build's restore that was not
 * handed over starts afresh (the old build's fini unmounted its tmpfs). */
void gc_layers_inherited_check(gc *g);
const char *gc_state_name(gc_state s);
/* A sync (or prewarm) of l numbered seq finished: tells the waiters. */
void gc_waiters_done(gc *g, gc_kind kind, size_t layer, uint64_t seq, json_t *result);

/* mounts.c */
typedef struct gc_mount {
        bool found;
        char fstype[32];
        char source[128];
        char super_opts[1024];
} gc_mount;
/* The topmost mount at path from the sysroot's /proc/self/mountinfo. */
int gc_mount_at(gc *g, const char *path, gc_mount *ret);
/* 1 when path sits on a tmpfs or ramfs, 0 when not, a negative errno. */
int gc_on_ramfs(const char *path, char *fstype, size_t len);
int gc_mkdir_p(const char *path, mode_t mode);
/* Mount calls: under dry_run they log and succeed. */
int gc_mount_tmpfs(gc *g, gc_layer *l);
int gc_mount_overlay(gc *g, gc_layer *l);
int gc_umount(gc *g, const char *path);
void gc_remount_ro(gc *g, gc_layer *l, bool ro);
/* PCI discovery: AMD display functions, sorted. */
size_t gc_discover(gc *g, char (*ret)[GC_PCI_MAX], size_t max);
uint64_t gc_mem_total(gc *g);

/* jobs.c */
/* Cancels a job and waits until it is not running (a queued one then never runs). */
void gc_job_stop(gc_job *j);
/* The pool's id, sequence number, kind and layer name of a job; valid = a block of this
 * layout (handover.c checks a block the old build named before reading it). */
bool gc_job_valid(const gc_job *j);
uint64_t gc_job_id(const gc_job *j);
uint64_t gc_job_seq(const gc_job *j);
gc_job_kind gc_job_kind_of(const gc_job *j);
const char *gc_job_layer(const gc_job *j);
/* host->work_adopt of the old build's job id: its completion comes to g (restore_state only). */
int gc_job_adopt(gc *g, uint64_t id);
int gc_submit_sync(gc *g, gc_layer *l, uint64_t seq);
int gc_submit_restore(gc *g, gc_layer *l);
int gc_submit_prewarm(gc *g, gc_layer *l, uint64_t seq);
int gc_submit_busy(gc *g, gc_layer *l);
/* Sync on the calling thread (fini). */
int gc_sync_now(gc_layer *l, gc_stats *st, char *err, size_t len);

/* handover.c */
int gc_save_state(gc *g, void **ret_blob, size_t *ret_len);
int gc_restore_state(gc *g, const void *blob, size_t len);
/* In fini: was layer i (this build's numbering) taken over by a new build, and the
 * waiter k? Both false at a stop or when the reload did not take it. */
bool gc_handed_layer(const gc *g, size_t i);
bool gc_handed_waiter(const gc *g, size_t k);
void gc_handover_free(gc *g);

#endif
