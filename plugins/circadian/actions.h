/* actions.h — what circadian does to the system on entering a phase: the CPU
 * frequency governor of every CPU (sysfs, through the host's sysroot helpers, read
 * before write, dry_run aware) and a `gpu.cache.sync` request on the bus; and the
 * matching checks for `verify`. */
#ifndef CIRCADIAN_ACTIONS_H
#define CIRCADIAN_ACTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <organism/host.h>

#define CIRCADIAN_GOVERNOR_MAX 32
#define CIRCADIAN_CACHE_SYNC_SUBJECT "gpu.cache.sync"

typedef struct circadian_action {
        char governor[CIRCADIAN_GOVERNOR_MAX]; /* "" = leave the governor alone */
        bool gpu_cache_sync;                   /* publish gpu.cache.sync on entering */
} circadian_action;

/* A governor name as the kernel spells them: 1..31 of [a-z0-9_-]. */
bool circadian_governor_valid(const char *governor);

/* Parses a kernel CPU list ("0-3", "0,2-5,8\n") into a malloc'd array (caller frees).
 * -EINVAL when malformed, -E2BIG past 8192 CPUs, -ENOMEM. */
int circadian_parse_cpu_list(const char *text, unsigned **ret_cpus, size_t *ret_n);

/* The CPUs of the (sys)root: /sys/devices/system/cpu/present, else cpu0, cpu1, ...
 * while their scaling_governor exists. An empty list is not an error. */
int circadian_cpus(const org_host *host, org_ctx *ctx, unsigned **ret_cpus, size_t *ret_n);

/* Sets `governor` on every CPU that has cpufreq, logging each failure; CPUs without a
 * scaling_governor file are skipped (a sysroot write would create it). */
typedef struct circadian_apply_result {
        unsigned cpus;    /* CPUs with cpufreq */
        unsigned changed; /* values that differed (under dry_run: would have been written) */
        unsigned failed;
} circadian_apply_result;
int circadian_governor_apply(const org_host *host, org_ctx *ctx, const char *governor, circadian_apply_result *ret);

/* Appends one check per CPU {what, want, have, ok} to `checks` (a JSON array), or one
 * failed check when no CPU has cpufreq. *ret_ok is false when any check failed. */
int circadian_governor_verify(const org_host *host, org_ctx *ctx, const char *governor, json_t *checks,
                              bool *ret_ok);

/* Publishes gpu.cache.sync {ts, gpu: "all", reason: "circadian", phase}. */
int circadian_cache_sync_publish(const org_host *host, org_ctx *ctx, const char *phase, uint64_t now_us);

#endif
