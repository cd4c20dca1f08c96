/* config.h — agentd's configuration file: the `agent`, `bus` and `plugins` sections.
 *
 *   agent:   {name, plugin_dirs, state_dir, control_socket, sysroot, dry_run, log_level,
 *             metrics_textfile, metrics_interval, queue_max, commands: {name: path}}
 *   bus:     {nats: {...}}
 *   control: {max_connections, max_connections_per_uid, idle_timeout, send_timeout,
 *             max_output}
 *   plugins: {<instance>: {plugin, path, enabled, interval, dry_run, log_level,
 *             queue_max, isolate, hook_timeout, max_restarts, config: {...}}}
 *
 * config_load checks everything it can without the plugins; the plugin-specific
 * `config:` blocks are checked later against each plugin's config map
 * (config_schema_check), when the plugin's descriptor is known. */
#ifndef CORE_CONFIG_H
#define CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <organism/config.h>

#include "diag.h"
#include "yamlnode.h"

typedef struct command_entry {
        char *name;
        char *path;
} command_entry;

typedef struct instance_config {
        char *name;
        char *plugin;            /* plugin name; defaults to the instance name */
        char *path;              /* explicit .so path, or NULL */
        bool enabled;            /* default true */
        uint64_t interval_ms;    /* default 5000 */
        int dry_run;             /* -1 inherit the agent's, else 0/1 */
        int log_level;           /* -1 inherit, else a syslog level */
        size_t queue_max;        /* 0 inherit */
        bool isolate;            /* run in a child process (isolate.h) */
        uint64_t hook_timeout_ms; /* isolated: default 5000 */
        unsigned max_restarts;   /* isolated: crashes per minute before failed, default 5 */
        const ynode *config;     /* the raw `config:` block (borrowed from the tree) or NULL */
        int line, col;           /* of the instance's key */
        json_t *config_json;     /* set once the block is checked against its plugin */
} instance_config;

/* Limits of the control socket (control.c reads them at each use: a reload applies). */
typedef struct control_config {
        size_t max_connections;          /* all peers together; the last few are root's */
        size_t max_connections_per_uid;  /* each non-root uid */
        uint64_t idle_timeout_ms;        /* a connection with nothing pending and no input */
        uint64_t send_timeout_ms;        /* unsent output and no progress */
        size_t max_output;               /* bytes of output buffered, all connections */
} control_config;

typedef struct agent_config {
        char *path;
        ynode *root;
        char *name;              /* default: the host name */
        char **plugin_dirs;      /* NULL-terminated; default: the built-in plugin dir */
        char *state_dir;         /* default /var/lib/organism */
        char *control_socket;    /* default /run/organism/agentd.sock */
        char *sysroot;           /* default "/" */
        bool dry_run;
        int log_level;           /* default LOG_INFO */
        char *metrics_textfile;  /* NULL: off */
        uint64_t metrics_interval_ms; /* default 15000 */
        size_t queue_max;        /* default 4096 */
        command_entry *commands;
        size_t n_commands;
        json_t *nats;            /* bus.nats, checked and normalised; NULL when absent */
        instance_config *instances;
        size_t n_instances;
        control_config control;
} agent_config;

/* Reads and checks path. Every fault is added to d; returns -EINVAL if there was
 * any (and *ret is not written), -errno when the file cannot be read. The file, the
 * directories above it and the programs of agent.commands must pass trust.c's rules
 * (-EPERM, the reason in d; a file that is not a regular one: -EINVAL, never opened
 * for reading). */
int config_load(const char *path, agent_config **ret, diag *d);
/* The same from memory, without looking at any file; name is used in messages. */
int config_load_string(const char *text, size_t len, const char *name, agent_config **ret, diag *d);
void config_free(agent_config *c); /* accepts NULL */
/* The schema of the whole file (agent, bus, plugins.<instance>, control), for the
 * generated reference (config_reference.c); static, never freed. */
const org_config_entry *config_root_map(void);

const instance_config *config_find_instance(const agent_config *c, const char *name);
const char *config_command_path(const agent_config *c, const char *name);

/* A canonical JSON text of everything that defines an instance (plugin, path,
 * interval, flags, checked config): two instances with equal fingerprints need no
 * restart on config reload. malloc'd. */
char *instance_config_fingerprint(const instance_config *ic);

#endif
