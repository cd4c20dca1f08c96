/* agent.h — the running agent: its loop, config, bus, metrics, plugin instances and
 * control socket, and the operations the control verbs drive (reload, load, enable,
 * config reload). One per agentd process. */
#ifndef CORE_AGENT_H
#define CORE_AGENT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <systemd/sd-event.h>

#include "bus.h"
#include "config.h"
#include "diag.h"
#include "metrics.h"

typedef struct instance instance;
typedef struct control control;
typedef struct bridge bridge;
typedef struct peers peers;

typedef struct agent {
        sd_event *event;
        agent_config *config;
        char *config_path;
        bus *bus;
        metrics *metrics;
        instance **instances;   /* in config order; runtime-loaded ones appended */
        size_t n_instances;
        control *control;
        bridge *bridge;         /* NULL in embedded mode (no bus.nats) */
        peers *peers;           /* the other agents heard on NATS; NULL without the bridge */
        bool check_perms;       /* refuse plugin files trust.c refuses (always set) */
        uint64_t started_us;
        uint64_t config_reloads;
        sd_event_source *metrics_timer;
} agent;

/* Takes ownership of cfg. Creates the bus, control socket and instances, and starts
 * the enabled ones (a failing instance is marked failed; the others run). */
int agent_new(sd_event *event, agent_config *cfg, const char *config_path, agent **ret);
void agent_free(agent *a); /* fini of every instance in reverse order */

instance *agent_find_instance(agent *a, const char *name);

/* Resolves every instance's plugin, checks its config block against the plugin's
 * config map (filling instance_config.config_json) and the permissions of the files.
 * Faults go to d. Used by --check and before a config reload. */
int agent_config_resolve(agent_config *cfg, bool check_perms, diag *d);

/* For a file that config_load refused: checks the plugin blocks it could still make
 * out, so that one run reports every fault. */
int agent_config_check_blocks(const char *path, bool check_perms, diag *d);

/* Re-reads the config file; an invalid file changes nothing and its faults are
 * returned (malloc'd text in *ret_errors). On success *ret_summary tells what
 * changed: {"restarted":[...],"started":[...],"stopped":[...],"unchanged":[...]}. */
int agent_reload_config(agent *a, json_t **ret_summary, char **ret_errors);

/* Adds an instance at run time (not written to the config file). */
int agent_load_instance(agent *a, const char *name, const char *plugin, const char *path, const char *config_json,
                        char **ret_error);
int agent_unload_instance(agent *a, const char *name);

/* Writes the metrics textfile now (also done by a timer). */
void agent_write_metrics(agent *a);
/* Collects the built-in per-instance series (ticks, drops, ...) into a->metrics. */
void agent_update_builtin_metrics(agent *a);

#endif
