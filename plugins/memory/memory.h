/* memory.h — the memory plugin's ("membrain") state and the functions its files share.
 *
 * The plugin is split by responsibility: memory.c holds the hooks, verbs and the
 * evaluation that ties the rest together; readings.c parses /proc; rules.c decides
 * (hysteresis, phase, profiles); levers.c moves the ARC ceiling, vm.swappiness and the
 * VM balloon; journal.c records actions (sqlite, bus, metrics); psi.c arms the kernel's
 * PSI trigger. None of these symbols leave the .so: plugins are built with
 * -fvisibility=hidden and only the descriptor is exported. */
#ifndef PLUGINS_MEMORY_MEMORY_H
#define PLUGINS_MEMORY_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <organism/plugin.h>
#include <organism/text.h>

#define MEMORY_ARC_MAX_PATH "/sys/module/zfs/parameters/zfs_arc_max"
#define MEMORY_SWAPPINESS_PATH "/proc/sys/vm/swappiness"
#define MEMORY_MEMINFO_PATH "/proc/meminfo"
#define MEMORY_VMSTAT_PATH "/proc/vmstat"
#define MEMORY_ARCSTATS_PATH "/proc/spl/kstat/zfs/arcstats"
#define MEMORY_PSI_PATH "/proc/pressure/memory"

#define MEMORY_NAME_MAX 64
#define MEMORY_REASON_MAX 96

/* The optional inputs; each one's absence is logged once, when it is first noticed. */
typedef enum memory_source {
        MEMORY_SRC_MEMINFO,
        MEMORY_SRC_VMSTAT,
        MEMORY_SRC_ARCSTATS,
        MEMORY_SRC_PSI,
        MEMORY_SRC_ARC_MAX,
        MEMORY_SRC_SWAPPINESS,
        MEMORY_SRC_COUNT,
} memory_source;

typedef struct memory_profile {
        char name[MEMORY_NAME_MAX];
        uint64_t arc_max;   /* bytes */
        int64_t balloon_mb;
        int64_t swappiness;
} memory_profile;

/* One pass over /proc. A `has_*` false means that source was absent or unreadable. */
typedef struct memory_readings {
        uint64_t mono_us;
        bool has_mem;
        uint64_t mem_total, mem_available, swap_total, swap_free; /* bytes */
        bool has_vmstat;
        uint64_t pswpin, pswpout;    /* pages since boot */
        bool has_rates;              /* needs two successive readings */
        double swap_in_rate, swap_out_rate; /* pages per second */
        bool has_arc;
        uint64_t arc_size, arc_c, arc_c_max, arc_hits, arc_misses;
        double arc_hit_ratio;        /* over the last interval; since boot at first */
        bool has_psi;
        double psi_some_avg10, psi_full_avg10;
        uint64_t psi_some_total, psi_full_total; /* µs */
} memory_readings;

/* A file lever (zfs_arc_max, vm.swappiness): a number in one sysroot file. */
typedef struct memory_file_lever {
        const char *name;   /* "arc_max", "swappiness" */
        const char *path;
        memory_source source;
        bool enabled;       /* the file exists */
        bool has_value;
        uint64_t value;     /* what the file holds, as last read */
        bool dry_pending;   /* dry_run: we already said we would write dry_value */
        uint64_t dry_value;
        bool failing;       /* the last write failed: its repeats are logged at debug */
} memory_file_lever;

/* The balloon of one VM, steered through `qm` asynchronously. */
typedef struct memory_balloon {
        bool configured;    /* a vmid is set */
        bool enabled;       /* configured and qm runnable */
        int64_t vmid;
        char vmid_text[24];
        bool busy;          /* a qm call is in flight: a tick never starts a second */
        uint64_t exec_id;
        int64_t target_mb;  /* of the call in flight */
        char reason[MEMORY_REASON_MAX];
        bool has_set;
        int64_t set_mb;     /* last target set successfully (qm has no cheap read of it) */
        bool dry_pending;
        int64_t dry_mb;
        char vm_status[24]; /* from the last `qm status` */
        bool has_seen;
        int64_t seen_mb;    /* what the last read found (live balloon or config), before a write */
        int64_t config_mb;  /* `balloon:` of the last `qm config`, -1 when absent */
        char refused[160];  /* why the lever is refused for good (passthrough...), "" if not */
        unsigned fails;
        uint64_t retry_at_us; /* back-off after a failed call */
} memory_balloon;

typedef struct memory {
        const org_host *host;
        org_ctx *ctx;

        /* config */
        uint64_t mem_low, mem_ok, arc_floor;
        char alert_profile[MEMORY_NAME_MAX];
        memory_profile *profiles;
        size_t n_profiles;
        bool psi_enable;
        uint64_t psi_stall_us, psi_window_us, psi_min_gap_us;
        uint64_t qm_timeout_ms;
        uint64_t journal_keep;          /* rows kept in the journal */

        /* rules */
        char phase[MEMORY_NAME_MAX];
        char phase_source[16];          /* "default", "bus", "reload" */
        char unknown_phase[MEMORY_NAME_MAX]; /* last unknown name logged, so it is logged once */
        bool alert;
        uint64_t alert_since_us;        /* realtime */
        char event[MEMORY_REASON_MAX];  /* why levers move now; cleared once all hold their want */

        /* readings */
        memory_readings cur;
        bool has_cur;
        int8_t source_state[MEMORY_SRC_COUNT]; /* 0 unknown, 1 present, -1 absent */

        /* levers */
        memory_file_lever arc, swappiness;
        memory_balloon balloon;

        /* psi */
        int psi_fd;
        uint64_t psi_watch;
        bool psi_armed;
        char psi_why[160];              /* why there is no trigger */
        uint64_t psi_events;
        uint64_t psi_timer;
        bool psi_timer_pending;
        uint64_t last_eval_us;          /* monotonic */

        /* journal */
        bool journal_ok;
        bool after_pending;             /* rows waiting for the next reading as their "after" */
        uint64_t actions;
        uint64_t evaluations;
        uint64_t first_timer;
        bool phase_asked;       /* circadian.phase.get sent at start, no answer yet */
        bool start_waiting;     /* the first evaluation waits for that answer */
} memory;

/* One change made (or, under dry_run, one that would have been). */
typedef struct memory_action {
        const char *lever;
        const char *reason;
        const char *before;   /* NULL: unknown */
        const char *after;
        const char *detail;   /* e.g. the qm command line; may be NULL */
        bool dry_run;
} memory_action;

/* memory.c */
/* Reads, decides and acts; `why` names the trigger ("tick", "psi", "phase"...). */
void memory_evaluate(memory *m, const char *why);
/* The current time as RFC 3339 UTC ("2026-01-02T03:04:05Z") into buf. */
void memory_rfc3339(memory *m, char *buf, size_t size);

/* readings.c */
/* Fills *ret from the sysroot; rates come from m->cur (the previous reading). */
void memory_readings_take(memory *m, memory_readings *ret);
/* Records whether a source is present, logging only when that changes. */
void memory_source_seen(memory *m, memory_source s, int r);
const char *memory_source_name(memory_source s);
/* Parses the first unsigned decimal number of text (leading white space allowed). */
int memory_parse_u64(const char *text, uint64_t *ret);
/* Pure parsers over file contents, for the tests. */
int memory_parse_meminfo(const char *text, memory_readings *r);
int memory_parse_vmstat(const char *text, memory_readings *r);
int memory_parse_arcstats(const char *text, memory_readings *r);
int memory_parse_psi(const char *text, memory_readings *r);
json_t *memory_readings_json(const memory_readings *r);

/* rules.c */
/* Loads the profiles from the config (built-in day and night, overridden by the user's). */
int memory_rules_load(memory *m);
const memory_profile *memory_profile_find(const memory *m, const char *name);
/* The profile the rules want now (the alert profile under alert, else the phase's). */
const memory_profile *memory_rules_profile(const memory *m);
uint64_t memory_rules_arc_want(const memory *m, const memory_profile *p);
/* Applies the hysteresis to a reading. Returns +1 entering alert, -1 leaving it, 0 hold. */
int memory_rules_update(memory *m, const memory_readings *r);
/* Handles a circadian.phase payload: 1 if the phase changed, 0 if not, <0 if invalid. */
int memory_rules_phase(memory *m, const char *data, size_t len);
void memory_set_event(memory *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* levers.c */
void memory_levers_init(memory *m);
/* Reads what each file lever holds now (for status and verify). */
void memory_levers_refresh(memory *m);
/* Moves every lever toward the profile; reason is journalled with each change. */
void memory_levers_apply(memory *m, const memory_profile *p, const char *reason);
/* verify: a JSON array of {what, want, have, ok}; *ret_ok is their conjunction. */
json_t *memory_levers_verify(memory *m, const memory_profile *p, bool *ret_ok);
json_t *memory_levers_json(memory *m, const memory_profile *p);

/* journal.c */
int memory_journal_open(memory *m);
/* Journals, publishes membrain.action, counts and logs one action. */
void memory_journal_action(memory *m, const memory_action *a);
/* Fills the "after" readings of the actions of the previous evaluation. */
void memory_journal_after(memory *m, const memory_readings *r);
/* The n newest actions, newest first. */
int memory_journal_history(memory *m, int64_t n, json_t **ret);

/* psi.c */
/* Arms the trigger when the sysroot is the real / and the kernel accepts it; otherwise
 * records why in m->psi_why and returns a negative errno (polling goes on). */
int memory_psi_start(memory *m);
void memory_psi_stop(memory *m);

#endif
