/* config.c — agentd's own configuration file. The `agent`, `bus.nats` and instance
 * blocks are described as config map tables and checked by the same config_schema code
 * as the plugins' blocks, so agentd's keys and the plugins' keys are validated, reported
 * and defaulted one way. What a table cannot say (log level names, absolute command
 * paths, valid instance names, positive intervals) is checked here against the YAML
 * tree so that every fault still carries its line and column. The plugins' `config:`
 * blocks are only kept as ynodes here: their schema is known once the plugin is. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "config_schema.h"
#include "duration.h"
#include "log.h"
#include "org-build-config.h"
#include "subject.h"
#include "trust.h"
#include "util.h"

static const org_config_entry agent_entries[] = {
        {"name", ORG_CFG_STRING, NULL, false, "this agent's name on the bus (default: the host name)", NULL},
        {"plugin_dirs", ORG_CFG_STRING_LIST, "['" ORG_PLUGINDIR "']", false, "directories searched for plugins",
         NULL},
        {"state_dir", ORG_CFG_STRING, "/var/lib/organism", false, "where the sqlite state lives", NULL},
        {"control_socket", ORG_CFG_STRING, "/run/organism/agentd.sock", false, "agentctl's Unix socket", NULL},
        {"sysroot", ORG_CFG_STRING, "/", false, "prefix of every /proc and /sys access", NULL},
        {"dry_run", ORG_CFG_BOOL, "false", false, "log changes instead of making them", NULL},
        {"log_level", ORG_CFG_STRING, "info", false, "err, warning, notice, info or debug", NULL},
        {"metrics_textfile", ORG_CFG_STRING, NULL, false, "Prometheus textfile to write (default: none)", NULL},
        {"metrics_interval", ORG_CFG_DURATION, "15s", false, "how often the textfile is written", NULL},
        {"queue_max", ORG_CFG_INT, "4096", false, "default bound of each subscriber's queue", NULL},
        {"commands", ORG_CFG_STRING_DICT, NULL, false, "external commands: name → absolute path", NULL},
        ORG_CONFIG_END,
};

static const org_config_entry tls_entries[] = {
        {"ca", ORG_CFG_STRING, NULL, false, "CA certificate file", NULL},
        {"cert", ORG_CFG_STRING, NULL, false, "client certificate file", NULL},
        {"key", ORG_CFG_STRING, NULL, false, "client key file", NULL},
        ORG_CONFIG_END,
};

static const org_config_entry stream_entries[] = {
        {"name", ORG_CFG_STRING, NULL, true, "stream name", NULL},
        {"subjects", ORG_CFG_PATTERN_LIST, NULL, true, "subjects the stream stores", NULL},
        {"retention", ORG_CFG_STRING, "limits", false, "limits | workqueue | interest", NULL},
        {"storage", ORG_CFG_STRING, "file", false, "file | memory", NULL},
        {"max_bytes", ORG_CFG_SIZE, NULL, false, "size bound of the stream (absent: none)", NULL},
        {"max_age", ORG_CFG_DURATION, NULL, false, "age bound of its messages (absent: none)", NULL},
        {"max_msgs", ORG_CFG_INT, NULL, false, "count bound (absent: none)", NULL},
        {"duplicate_window", ORG_CFG_DURATION, "2m", false, "window of message-id de-duplication", NULL},
        {"replicas", ORG_CFG_INT, "1", false, "replicas in a cluster", NULL},
        ORG_CONFIG_END,
};

static const org_config_entry jetstream_entries[] = {
        {"domain", ORG_CFG_STRING, NULL, false, "JetStream domain (absent: the account's default)", NULL},
        {"streams", ORG_CFG_OBJECT_LIST, NULL, false, "streams created at start if missing, checked otherwise",
         stream_entries},
        ORG_CONFIG_END,
};

static const org_config_entry nats_entries[] = {
        {"url", ORG_CFG_STRING, NULL, false, "server URL (or servers)", NULL},
        {"servers", ORG_CFG_STRING_LIST, NULL, false, "server URLs (or url)", NULL},
        {"name", ORG_CFG_STRING, NULL, false, "connection name", NULL},
        {"export", ORG_CFG_PATTERN_LIST, NULL, false, "subjects published to NATS", NULL},
        {"import", ORG_CFG_PATTERN_LIST, NULL, false, "subjects subscribed from NATS", NULL},
        {"token", ORG_CFG_STRING, NULL, false, "auth token", NULL},
        {"user", ORG_CFG_STRING, NULL, false, "user name", NULL},
        {"password", ORG_CFG_STRING, NULL, false, "password", NULL},
        {"creds", ORG_CFG_STRING, NULL, false, "credentials file", NULL},
        {"tls", ORG_CFG_OBJECT, NULL, false, "TLS files", tls_entries},
        {"reconnect_wait", ORG_CFG_DURATION, "2s", false, "pause between reconnection attempts", NULL},
        {"reconnect_attempts", ORG_CFG_INT, "-1", false, "attempts before giving up (-1: forever)", NULL},
        {"reconnect_buffer", ORG_CFG_SIZE, "8MiB", false, "outgoing buffer while disconnected", NULL},
        {"jetstream", ORG_CFG_OBJECT, NULL, false, "JetStream settings", jetstream_entries},
        {"remote_control", ORG_CFG_STRING, "read-only", false,
         "control of this agent from others over NATS: off | read-only | admin", NULL},
        {"connect_timeout", ORG_CFG_DURATION, "2s", false, "time-out of one connection attempt", NULL},
        ORG_CONFIG_END,
};

static const org_config_entry bus_entries[] = {
        {"nats", ORG_CFG_OBJECT, NULL, false, "the NATS bridge (absent: no bridge)", nats_entries},
        ORG_CONFIG_END,
};

static const org_config_entry instance_entries[] = {
        {"plugin", ORG_CFG_STRING, NULL, false, "plugin name (default: the instance name)", NULL},
        {"path", ORG_CFG_STRING, NULL, false, "explicit path of the .so", NULL},
        {"enabled", ORG_CFG_BOOL, "true", false, "whether the instance runs", NULL},
        {"interval", ORG_CFG_DURATION, "5s", false, "tick period", NULL},
        {"dry_run", ORG_CFG_BOOL, NULL, false, "override of agent.dry_run", NULL},
        {"log_level", ORG_CFG_STRING, NULL, false, "override of agent.log_level", NULL},
        {"queue_max", ORG_CFG_INT, NULL, false, "override of agent.queue_max", NULL},
        {"isolate", ORG_CFG_BOOL, "false", false, "run the plugin in a child process (crashes kill only it)", NULL},
        {"hook_timeout", ORG_CFG_DURATION, "5s", false, "isolated: a hook running longer kills the child", NULL},
        {"max_restarts", ORG_CFG_INT, "5", false, "isolated: crashes within a minute before the instance fails", NULL},
        /* Checked later against the plugin's own config map. */
        {"config", ORG_CFG_ANY, NULL, false, "the plugin's settings", NULL},
        ORG_CONFIG_END,
};

/* Bounds of what control socket peers may hold (control.c). */
static const org_config_entry control_entries[] = {
        {"max_connections", ORG_CFG_INT, "64", false, "connections of all peers (the last 4 only for root)", NULL,
         .min = "8", .max = "100000"},
        {"max_connections_per_uid", ORG_CFG_INT, "16", false, "connections of each non-root uid", NULL, .min = "1",
         .max = "100000"},
        {"idle_timeout", ORG_CFG_DURATION, "60s", false, "a connection with nothing pending is closed after this",
         NULL, .min = "1ms"},
        {"send_timeout", ORG_CFG_DURATION, "30s", false, "a peer that reads none of its pending output is closed after this",
         NULL, .min = "1ms"},
        {"max_output", ORG_CFG_SIZE, "64MiB", false, "output buffered for all peers together", NULL, .min = "64KiB"},
        ORG_CONFIG_END,
};

static const org_config_entry root_entries[] = {
        {"agent", ORG_CFG_OBJECT, "{}", false, "the agent itself", agent_entries},
        {"bus", ORG_CFG_OBJECT, NULL, false, "the bus bridge", bus_entries},
        {"plugins", ORG_CFG_DICT, NULL, false, "plugin instances by name", instance_entries},
        {"control", ORG_CFG_OBJECT, "{}", false, "limits of the control socket", control_entries},
        ORG_CONFIG_END,
};

const org_config_entry *config_root_map(void) { return root_entries; }

/* The checks the tables cannot express. Each looks only at values of the right type
 * (the schema reports the others), so no fault is reported twice. */

static const ynode *scalar_value(const ynode *map, const char *key) {
        const ynode *v = ynode_get(map, key, NULL);
        if (!v || v->kind != YNODE_SCALAR || ynode_is_null(v))
                return NULL;
        return v;
}

static bool scalar_int(const ynode *v, long long *ret) {
        ynode tmp = *v;
        tmp.plain = true; /* as config_schema reads it: quoted numbers count */
        json_t *j = ynode_to_json(&tmp);
        bool ok = json_is_integer(j);
        if (ok)
                *ret = json_integer_value(j);
        json_decref(j);
        return ok;
}

static void check_log_level(const ynode *map, const char *where, diag *d, bool *bad) {
        const ynode *v = scalar_value(map, "log_level");
        if (v && log_level_from_string(v->scalar) < 0) {
                diag_add(d, v->line, v->col,
                         "%s.log_level: expected one of err, warning, notice, info, debug, got \"%.64s\"", where,
                         v->scalar);
                *bad = true;
        }
}

static void check_positive_duration(const ynode *map, const char *key, const char *where, diag *d, bool *bad) {
        const ynode *v = scalar_value(map, key);
        uint64_t ms;
        if (v && parse_duration_ms(v->scalar, &ms) >= 0 && ms == 0) {
                diag_add(d, v->line, v->col, "%s.%s: must be greater than 0", where, key);
                *bad = true;
        }
}

static void check_int_min(const ynode *map, const char *key, long long min, const char *where, diag *d,
                          bool *bad) {
        const ynode *v = scalar_value(map, key);
        long long i;
        if (v && scalar_int(v, &i) && i < min) {
                diag_add(d, v->line, v->col, "%s.%s: must be at least %lld", where, key, min);
                *bad = true;
        }
}

static void check_agent(const ynode *agent, diag *d, bool *bad) {
        const ynode *v;

        if (!agent || agent->kind != YNODE_MAP)
                return;
        v = scalar_value(agent, "name");
        if (v && !name_is_valid(v->scalar)) {
                diag_add(d, v->line, v->col,
                         "agent.name: expected a name of letters, digits, '_' and '-' (at most 64), got \"%.64s\"",
                         v->scalar);
                *bad = true;
        }
        check_log_level(agent, "agent", d, bad);
        check_positive_duration(agent, "metrics_interval", "agent", d, bad);
        check_int_min(agent, "queue_max", 1, "agent", d, bad);

        v = ynode_get(agent, "commands", NULL);
        if (v && v->kind == YNODE_MAP)
                for (size_t i = 0; i < v->n; i++) {
                        const ynode *p = v->values[i];
                        if (p->kind != YNODE_SCALAR || ynode_is_null(p) || p->scalar[0] == '/')
                                continue;
                        diag_add(d, p->line, p->col, "agent.commands.%s: expected an absolute path, got \"%.64s\"",
                                 v->keys[i]->scalar, p->scalar);
                        *bad = true;
                }
}

/* The programs of agent.commands run as agentd's user: the same trust rules as
 * plugin files (trust.h). One missing is left to fail when it is run (the shipped
 * config names qm, zfs and zpool, which a host may lack), unless it is missing from a
 * directory others may write, where anyone could create it. Faults point at the key. */
static void check_command_files(const ynode *agent, diag *d, bool *bad) {
        const ynode *v = agent && agent->kind == YNODE_MAP ? ynode_get(agent, "commands", NULL) : NULL;

        if (!v || v->kind != YNODE_MAP)
                return;
        for (size_t i = 0; i < v->n; i++) {
                const ynode *k = v->keys[i], *p = v->values[i];
                _cleanup_free_ char *reason = NULL;
                if (p->kind != YNODE_SCALAR || ynode_is_null(p) || p->scalar[0] != '/')
                        continue;
                int r = trust_check_file(p->scalar, "command", &reason);
                if (r >= 0 || r == -ENOENT || r == -ENOMEM)
                        continue;
                diag_add(d, k->line, k->col, "agent.commands.%s: refusing %s: %s", k->scalar, p->scalar,
                         reason ? reason : strerror(-r));
                *bad = true;
        }
}

/* A plugin folder others may write is refused as a whole, before any plugin is taken
 * from it (the loader refuses each file from it as well). One that does not exist is
 * fine: the default one may not, on a host without packaged plugins. */
static void check_plugin_dirs(const ynode *agent, diag *d, bool *bad) {
        const ynode *v = agent && agent->kind == YNODE_MAP ? ynode_get(agent, "plugin_dirs", NULL) : NULL;

        for (size_t i = 0; v && v->kind == YNODE_SEQ && i < v->n; i++) {
                const ynode *p = v->values[i];
                _cleanup_free_ char *reason = NULL;
                if (p->kind != YNODE_SCALAR || ynode_is_null(p))
                        continue;
                int r = trust_check_dir(p->scalar, "plugin", &reason);
                if (r >= 0 || r == -ENOENT || r == -ENOMEM)
                        continue;
                diag_add(d, p->line, p->col, "agent.plugin_dirs[%zu]: refusing %s: %s", i, p->scalar,
                         reason ? reason : strerror(-r));
                *bad = true;
        }
}

/* SPEC §6: gpu.task.* carries commands. An agent that would take them from NATS (an
 * import reaching gpu.task.run.> or gpu.task.enqueue), or that lets NATS peers use
 * its admin verbs, must make the server authenticate it, or anyone who can reach the
 * server runs programs here. A JetStream stream on those subjects counts too (whoever
 * consumes it runs what anyone published). Refused at --check with the line of the fault. */
static bool scalar_set(const ynode *map, const char *key) {
        const ynode *v = map && map->kind == YNODE_MAP ? ynode_get(map, key, NULL) : NULL;
        return v && v->kind == YNODE_SCALAR && v->scalar[0];
}

static void check_nats_auth(const ynode *nats, diag *d, bool *bad) {
        static const char *const commands[] = {"gpu.task.run.>", "gpu.task.enqueue"};
        if (scalar_set(nats, "token") || scalar_set(nats, "user") || scalar_set(nats, "creds") ||
            scalar_set(ynode_get(nats, "tls", NULL), "cert"))
                return;
        const char *fix = "set bus.nats.token, user and password, creds or tls.cert, so that the server "
                          "authenticates this agent";
        const ynode *imports = ynode_get(nats, "import", NULL), *v;
        for (size_t i = 0; imports && imports->kind == YNODE_SEQ && i < imports->n; i++) {
                v = imports->values[i];
                if (v->kind != YNODE_SCALAR || !pattern_is_valid(v->scalar))
                        continue;
                for (size_t j = 0; j < ELEMENTSOF(commands); j++)
                        if (patterns_overlap(v->scalar, commands[j])) {
                                diag_add(d, v->line, v->col,
                                         "bus.nats.import[%zu]: \"%.64s\" takes commands (%s) from NATS "
                                         "without authentication: %s",
                                         i, v->scalar, commands[j], fix);
                                *bad = true;
                                break;
                        }
        }
        /* a JetStream stream kept for command subjects holds what anyone may publish there */
        const ynode *js = ynode_get(nats, "jetstream", NULL);
        const ynode *streams = js && js->kind == YNODE_MAP ? ynode_get(js, "streams", NULL) : NULL;
        for (size_t i = 0; streams && streams->kind == YNODE_SEQ && i < streams->n; i++) {
                const ynode *st = streams->values[i];
                const ynode *subjects = st->kind == YNODE_MAP ? ynode_get(st, "subjects", NULL) : NULL;
                bool said = false;
                for (size_t k = 0; !said && subjects && subjects->kind == YNODE_SEQ && k < subjects->n; k++) {
                        v = subjects->values[k];
                        if (v->kind != YNODE_SCALAR || !pattern_is_valid(v->scalar))
                                continue;
                        for (size_t j = 0; !said && j < ELEMENTSOF(commands); j++)
                                if (patterns_overlap(v->scalar, commands[j])) {
                                        diag_add(d, v->line, v->col,
                                                 "bus.nats.jetstream.streams[%zu].subjects[%zu]: \"%.64s\" keeps "
                                                 "commands (%s) from NATS without authentication: %s",
                                                 i, k, v->scalar, commands[j], fix);
                                        *bad = said = true;
                                }
                }
        }
        v = ynode_get(nats, "remote_control", NULL);
        if (v && v->kind == YNODE_SCALAR && streq(v->scalar, "admin")) {
                diag_add(d, v->line, v->col,
                         "bus.nats.remote_control: admin lets NATS peers run admin verbs, but nothing "
                         "authenticates this agent: %s",
                         fix);
                *bad = true;
        }
}

static void check_nats(const ynode *bus, diag *d, bool *bad) {
        const ynode *nats = ynode_get(bus, "nats", NULL), *k = NULL, *v;

        if (!nats || nats->kind != YNODE_MAP)
                return;
        if (ynode_get(nats, "url", NULL) && ynode_get(nats, "servers", &k)) {
                diag_add(d, k->line, k->col, "bus.nats.servers: give url or servers, not both");
                *bad = true;
        }
        check_int_min(nats, "reconnect_attempts", -1, "bus.nats", d, bad);
        check_nats_auth(nats, d, bad);
        v = ynode_get(nats, "remote_control", NULL);
        if (v && v->kind == YNODE_SCALAR && !streq(v->scalar, "off") && !streq(v->scalar, "read-only") &&
            !streq(v->scalar, "admin")) {
                diag_add(d, v->line, v->col, "bus.nats.remote_control: expected off, read-only or admin, got \"%.64s\"",
                         v->scalar);
                *bad = true;
        }
        v = ynode_get(nats, "jetstream", NULL);
        v = v && v->kind == YNODE_MAP ? ynode_get(v, "streams", NULL) : NULL;
        for (size_t i = 0; v && v->kind == YNODE_SEQ && i < v->n; i++) {
                const ynode *s = v->values[i];
                static const char *const retentions[] = {"limits", "workqueue", "interest"};
                static const char *const storages[] = {"file", "memory"};
                const ynode *r = s->kind == YNODE_MAP ? ynode_get(s, "retention", NULL) : NULL;
                const ynode *st = s->kind == YNODE_MAP ? ynode_get(s, "storage", NULL) : NULL;
                bool ok_r = !r || r->kind != YNODE_SCALAR, ok_s = !st || st->kind != YNODE_SCALAR;
                for (size_t j = 0; j < ELEMENTSOF(retentions) && !ok_r; j++)
                        ok_r = streq(r->scalar, retentions[j]);
                for (size_t j = 0; j < ELEMENTSOF(storages) && !ok_s; j++)
                        ok_s = streq(st->scalar, storages[j]);
                if (!ok_r) {
                        diag_add(d, r->line, r->col, "bus.nats.jetstream.streams[%zu].retention: expected limits, workqueue or interest", i);
                        *bad = true;
                }
                if (!ok_s) {
                        diag_add(d, st->line, st->col, "bus.nats.jetstream.streams[%zu].storage: expected file or memory", i);
                        *bad = true;
                }
        }
}

static void check_instances(const ynode *plugins, diag *d, bool *bad) {
        if (!plugins || plugins->kind != YNODE_MAP)
                return;
        for (size_t i = 0; i < plugins->n; i++) {
                const ynode *k = plugins->keys[i], *v = plugins->values[i];
                _cleanup_free_ char *where = NULL;
                if (!name_is_valid(k->scalar) || k->scalar[0] == '_') {
                        /* a leading '_' is reserved: organism.ctl.<agent>._agent.<verb> is the agent itself */
                        diag_add(d, k->line, k->col,
                                 "plugins.%.64s: invalid instance name (letters, digits, '_' and '-', at most 64, "
                                 "not starting with '_')",
                                 k->scalar);
                        *bad = true;
                }
                if (v->kind != YNODE_MAP)
                        continue;
                if (asprintf(&where, "plugins.%s", k->scalar) < 0)
                        continue; /* out of memory: one check fewer, no wrong answer */
                check_log_level(v, where, d, bad);
                check_positive_duration(v, "interval", where, d, bad);
                check_int_min(v, "queue_max", 0, where, d, bad);
                check_positive_duration(v, "hook_timeout", where, d, bad);
                check_int_min(v, "max_restarts", 1, where, d, bad);
        }
}

void config_free(agent_config *c) {
        if (!c)
                return;
        free(c->path);
        ynode_free(c->root);
        free(c->name);
        strv_free(c->plugin_dirs);
        free(c->state_dir);
        free(c->control_socket);
        free(c->sysroot);
        free(c->metrics_textfile);
        for (size_t i = 0; i < c->n_commands; i++) {
                free(c->commands[i].name);
                free(c->commands[i].path);
        }
        free(c->commands);
        json_decref(c->nats);
        for (size_t i = 0; i < c->n_instances; i++) {
                instance_config *ic = &c->instances[i];
                free(ic->name);
                free(ic->plugin);
                free(ic->path);
                json_decref(ic->config_json);
        }
        free(c->instances);
        free(c);
}

static void config_freep(agent_config **c) { config_free(*c); }

/* strdup of a string member, NULL when absent; *oom set when the copy failed. */
static char *dup_member(json_t *o, const char *key, bool *oom) {
        const char *s = json_string_value(json_object_get(o, key));
        char *r;
        if (!s)
                return NULL;
        r = strdup(s);
        if (!r)
                *oom = true;
        return r;
}

static char *default_agent_name(void) {
        char host[256] = "";
        if (gethostname(host, sizeof host - 1) < 0 || !host[0])
                return strdup("localhost");
        host[sizeof host - 1] = '\0';
        /* The short name: dots would split the agent's name into subject tokens. */
        char *dot = strchr(host, '.');
        if (dot)
                *dot = '\0';
        return strdup(host);
}

static int fill_agent(agent_config *c, json_t *agent) {
        bool oom = false;
        json_t *dirs = json_object_get(agent, "plugin_dirs"), *cmds = json_object_get(agent, "commands");
        const ynode *cmd_node = ynode_get(ynode_get(c->root, "agent", NULL), "commands", NULL);

        c->name = dup_member(agent, "name", &oom);
        if (!c->name && !oom)
                c->name = default_agent_name();
        if (!c->name)
                return -ENOMEM;
        c->state_dir = dup_member(agent, "state_dir", &oom);
        c->control_socket = dup_member(agent, "control_socket", &oom);
        c->sysroot = dup_member(agent, "sysroot", &oom);
        c->metrics_textfile = dup_member(agent, "metrics_textfile", &oom);
        if (oom)
                return -ENOMEM;
        c->dry_run = json_is_true(json_object_get(agent, "dry_run"));
        c->log_level = log_level_from_string(json_string_value(json_object_get(agent, "log_level")));
        c->metrics_interval_ms = (uint64_t)json_integer_value(json_object_get(agent, "metrics_interval"));
        c->queue_max = (size_t)json_integer_value(json_object_get(agent, "queue_max"));

        c->plugin_dirs = new0(char *, json_array_size(dirs) + 1);
        if (!c->plugin_dirs)
                return -ENOMEM;
        for (size_t i = 0; i < json_array_size(dirs); i++)
                if (!(c->plugin_dirs[i] = strdup(json_string_value(json_array_get(dirs, i)))))
                        return -ENOMEM;

        /* In the file's order (the YAML map), which `agentctl` shows back. */
        if (cmds && cmd_node && cmd_node->kind == YNODE_MAP && cmd_node->n > 0) {
                c->commands = new0(command_entry, cmd_node->n);
                if (!c->commands)
                        return -ENOMEM;
                for (size_t i = 0; i < cmd_node->n; i++) {
                        const char *name = cmd_node->keys[i]->scalar;
                        command_entry *ce = &c->commands[c->n_commands++];
                        ce->name = strdup(name);
                        ce->path = strdup(json_string_value(json_object_get(cmds, name)));
                        if (!ce->name || !ce->path)
                                return -ENOMEM;
                }
        }
        return 0;
}

static void fill_control(control_config *cc, json_t *o) {
        cc->max_connections = (size_t)json_integer_value(json_object_get(o, "max_connections"));
        cc->max_connections_per_uid = (size_t)json_integer_value(json_object_get(o, "max_connections_per_uid"));
        cc->idle_timeout_ms = (uint64_t)json_integer_value(json_object_get(o, "idle_timeout"));
        cc->send_timeout_ms = (uint64_t)json_integer_value(json_object_get(o, "send_timeout"));
        cc->max_output = (size_t)json_integer_value(json_object_get(o, "max_output"));
}

static int fill_instances(agent_config *c, json_t *plugins) {
        const ynode *pn = ynode_get(c->root, "plugins", NULL);

        if (!pn || pn->kind != YNODE_MAP || pn->n == 0)
                return 0;
        c->instances = new0(instance_config, pn->n);
        if (!c->instances)
                return -ENOMEM;
        for (size_t i = 0; i < pn->n; i++) {
                const ynode *k = pn->keys[i], *v = pn->values[i];
                json_t *o = json_object_get(plugins, k->scalar), *j;
                instance_config *ic = &c->instances[c->n_instances++];
                bool oom = false;

                ic->line = k->line;
                ic->col = k->col;
                ic->name = strdup(k->scalar);
                ic->plugin = dup_member(o, "plugin", &oom);
                if (!ic->plugin && !oom)
                        ic->plugin = strdup(k->scalar);
                ic->path = dup_member(o, "path", &oom);
                if (!ic->name || !ic->plugin || oom)
                        return -ENOMEM;
                ic->enabled = json_is_true(json_object_get(o, "enabled"));
                ic->interval_ms = (uint64_t)json_integer_value(json_object_get(o, "interval"));
                j = json_object_get(o, "dry_run");
                ic->dry_run = j ? json_is_true(j) : -1;
                j = json_object_get(o, "log_level");
                ic->log_level = j ? log_level_from_string(json_string_value(j)) : -1;
                ic->queue_max = (size_t)json_integer_value(json_object_get(o, "queue_max"));
                ic->isolate = json_is_true(json_object_get(o, "isolate"));
                ic->hook_timeout_ms = (uint64_t)json_integer_value(json_object_get(o, "hook_timeout"));
                ic->max_restarts = (unsigned)json_integer_value(json_object_get(o, "max_restarts"));
                if (v->kind == YNODE_MAP) {
                        const ynode *cfg = ynode_get(v, "config", NULL);
                        ic->config = ynode_is_null(cfg) ? NULL : cfg;
                }
        }
        return 0;
}

/* check_files: also check the files the config names (agent.commands, plugin_dirs),
 * for a config read from disk; never for one from memory (the fuzzers, tests). */
static int load_text(const char *text, size_t len, const char *name, bool check_files, agent_config **ret,
                     diag *d) {
        _cleanup_(config_freep) agent_config *c = NULL;
        json_t *root_json = NULL;
        bool bad = false;
        int r;

        /* diag keeps a borrowed name: the caller's, which outlives the diag. */
        if (!d->file)
                d->file = name;
        c = new0(agent_config, 1);
        if (!c)
                return -ENOMEM;
        c->path = strdup(name ? name : "<config>");
        if (!c->path)
                return -ENOMEM;
        r = ynode_parse_string(text, len, &c->root, d);
        if (r < 0)
                return r;

        r = config_schema_check(root_entries, c->root, "", 0, 0, &root_json, d);
        if (r == -ENOMEM)
                return r;
        if (c->root->kind == YNODE_MAP) {
                check_agent(ynode_get(c->root, "agent", NULL), d, &bad);
                if (check_files) {
                        check_command_files(ynode_get(c->root, "agent", NULL), d, &bad);
                        check_plugin_dirs(ynode_get(c->root, "agent", NULL), d, &bad);
                }
                check_nats(ynode_get(c->root, "bus", NULL), d, &bad);
                check_instances(ynode_get(c->root, "plugins", NULL), d, &bad);
        }
        if (r < 0 || bad) {
                json_decref(root_json);
                return -EINVAL;
        }

        r = fill_agent(c, json_object_get(root_json, "agent"));
        if (r >= 0)
                r = fill_instances(c, json_object_get(root_json, "plugins"));
        if (r >= 0) {
                c->nats = json_object_get(json_object_get(root_json, "bus"), "nats");
                json_incref(c->nats);
                fill_control(&c->control, json_object_get(root_json, "control"));
        }
        json_decref(root_json);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

int config_load_string(const char *text, size_t len, const char *name, agent_config **ret, diag *d) {
        return load_text(text, len, name, false, ret, d);
}

int config_load(const char *path, agent_config **ret, diag *d) {
        _cleanup_free_ char *text = NULL, *reason = NULL;
        _cleanup_close_ int fd = -1;
        size_t len;
        int r;

        /* The file decides which code runs as root: it must pass the same rules as a
         * plugin, at start and at every reload. Opened once, without following a last
         * symlink and without blocking: a FIFO is refused, never waited on. */
        r = trust_open(path, "config", &fd, &reason);
        if (r < 0) {
                if (!d->file)
                        d->file = path;
                if (reason)
                        diag_add(d, 0, 0, "%s", reason);
                return r;
        }
        r = read_full_fd(fd, &text, &len);
        if (r < 0)
                return r;
        return load_text(text, len, path, true, ret, d);
}

const instance_config *config_find_instance(const agent_config *c, const char *name) {
        for (size_t i = 0; c && i < c->n_instances; i++)
                if (streq(c->instances[i].name, name))
                        return &c->instances[i];
        return NULL;
}

const char *config_command_path(const agent_config *c, const char *name) {
        for (size_t i = 0; c && i < c->n_commands; i++)
                if (streq(c->commands[i].name, name))
                        return c->commands[i].path;
        return NULL;
}

char *instance_config_fingerprint(const instance_config *ic) {
        json_t *o, *cfg;
        char *s;

        /* Before the block is checked against its plugin, the raw block stands in: a
         * change to it must still change the fingerprint. */
        cfg = ic->config_json ? json_incref(ic->config_json) : ic->config ? ynode_to_json(ic->config) : json_null();
        o = json_pack("{s:s, s:s?, s:b, s:I, s:i, s:i, s:I, s:o?}", "plugin", ic->plugin, "path", ic->path,
                      "enabled", ic->enabled, "interval", (json_int_t)ic->interval_ms, "dry_run", ic->dry_run,
                      "log_level", ic->log_level, "queue_max", (json_int_t)ic->queue_max, "config", cfg);
        if (!o)
                return NULL;
        if (ic->isolate) /* only then: the fingerprints of other instances stay as they were */
                json_object_set_new(o, "isolate", json_pack("{s:I, s:I}", "hook_timeout", (json_int_t)ic->hook_timeout_ms,
                                                            "max_restarts", (json_int_t)ic->max_restarts));
        s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(o);
        return s;
}
