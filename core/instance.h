/* instance.h — one named plugin instance: the loaded .so, its current generation of
 * plugin state and host context, its bus client (inbox) and its tick timer.
 *
 * The bus client outlives generations: on reload the new .so is initialised while the
 * inbox keeps what was queued, so no message addressed to the instance is lost; if the
 * new one fails, the old one goes on exactly as before. */
#ifndef CORE_INSTANCE_H
#define CORE_INSTANCE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <systemd/sd-event.h>

#include "agent.h"
#include "bus.h"
#include "config.h"
#include "loader.h"
#include "store.h"
#include "yamlnode.h"

typedef enum instance_state {
        INSTANCE_STOPPED,
        INSTANCE_RUNNING,
        INSTANCE_FAILED,
        INSTANCE_DISABLED,
} instance_state;

struct instance {
        agent *agent;
        char *name;
        instance_config cfg;     /* own copy: strings, config block and config_json owned */
        ynode *own_config;       /* deep copy of the `config:` block; cfg.config points here */
        char *config_text;       /* cfg.config_json as compact text, for host->config_json */
        char *fingerprint;
        char *so_path;           /* resolved plugin file */
        plugin_so *so;
        struct org_ctx *ctx;     /* current generation, NULL when not running */
        void *state;
        bus_client *client;
        uint64_t ctl_sid;        /* its organism.ctl.<agent>.<instance>.* subscription */
        store *store;            /* opened on first use */
        sd_event_source *tick_source;
        instance_state run_state;
        char *error;             /* why it failed, or NULL */
        uint64_t generation;
        uint64_t next_id;        /* ids of timers, commands, watches: never reused, across generations */
        uint64_t loaded_at_us;
        uint64_t ticks, handled, calls, hook_errors;
        uint64_t tick_us_last, tick_us_max;
        uint64_t ticks_skipped;  /* missed while the loop stalled, coalesced into one */
        uint64_t reloads;
        struct isolate *iso;     /* isolate: true — the child process side (isolate.h), else NULL */
};

/* Copies ic. Does not start it. */
int instance_new(agent *a, const instance_config *ic, const char *so_path, instance **ret);
void instance_free(instance *in); /* stops it first; accepts NULL */

/* Loads the .so and runs init. On failure the instance is FAILED with in->error set;
 * returns the error. */
int instance_start(instance *in);
/* fini, timers and processes cancelled, state DISABLED or STOPPED. The bus client
 * stays (messages keep queueing up to its bound) unless the instance is freed. */
void instance_stop(instance *in, instance_state new_state);

/* Replaces the running generation with the .so now on disk (and, when new_cfg is not
 * NULL, a new config). On failure nothing changes and *ret_error says why. */
int instance_reload(instance *in, const instance_config *new_cfg, const char *new_so_path, char **ret_error);

/* Replaces the config copy without a restart (fingerprint unchanged). */
int instance_adopt_config(instance *in, const instance_config *ic);

const char *instance_state_to_string(instance_state s);
bool instance_dry_run(const instance *in);
int instance_log_level(const instance *in);
int instance_open_store(instance *in);

/* JSON views for the control socket. */
json_t *instance_to_json(const instance *in, bool detailed);

/* Control subject of a verb: organism.ctl.<agent>.<instance>.<verb>. malloc'd. */
char *instance_ctl_subject(const instance *in, const char *verb);

#endif
