/* agent.c — the agent as a whole: builds the bus, metrics and control socket from the
 * config, creates and starts the instances, resolves plugins for --check and for config
 * reload, and applies a reloaded config by restarting only what changed. */
#include <grp.h>
#include <sys/stat.h>

#include "agent.h"
#include "bridge.h"
#include "peers.h"
#include "config_schema.h"
#include "control.h"
#include "instance.h"
#include "isolate.h"
#include "loader.h"
#include "log.h"
#include "org-build-config.h"
#include "trust.h"
#include "util.h"

instance *agent_find_instance(agent *a, const char *name) {
        for (size_t i = 0; i < a->n_instances; i++)
                if (streq(a->instances[i]->name, name))
                        return a->instances[i];
        return NULL;
}

/* The plugin file of an instance: its explicit path, or <plugin>.so in plugin_dirs. */
static int resolve_so(const agent_config *cfg, const instance_config *ic, char **ret_path) {
        if (ic->path) {
                char *p = strdup(ic->path);
                if (!p)
                        return -ENOMEM;
                *ret_path = p;
                return 0;
        }
        return loader_find(cfg->plugin_dirs, ic->plugin, ret_path);
}

/* Finds, loads and checks one instance's plugin and config block; on success sets
 * ic->config_json. Faults go to d. */
static int resolve_instance(char *const *plugin_dirs, instance_config *ic, bool check_perms, diag *d) {
        _cleanup_free_ char *path = NULL;
        int r = ic->path ? ((path = strdup(ic->path)) ? 0 : -ENOMEM) : loader_find(plugin_dirs, ic->plugin, &path);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                char dirs[1024] = "";
                size_t off = 0;
                for (size_t k = 0; plugin_dirs && plugin_dirs[k] && off < sizeof dirs; k++)
                        off += (size_t)snprintf(dirs + off, sizeof dirs - off, "%s%s", k ? ", " : "", plugin_dirs[k]);
                diag_add(d, ic->line, ic->col, "plugins.%s.plugin: unknown plugin \"%s\" (no %s.so in %s)", ic->name,
                         ic->plugin, ic->plugin, dirs);
                return -EINVAL;
        }
        plugin_so *so = NULL;
        _cleanup_free_ char *err = NULL;
        r = plugin_open(path, check_perms, ic->isolate, &so, &err); /* isolated: never mapped here */
        if (r < 0) {
                diag_add(d, ic->line, ic->col, "plugins.%s: cannot load %s: %s", ic->name, path, err ? err : strerror(-r));
                return -EINVAL;
        }
        if (!ic->path && !streq(so->desc->name, ic->plugin))
                diag_add(d, ic->line, ic->col, "plugins.%s: %s calls itself \"%s\", not \"%s\"", ic->name, path,
                         so->desc->name, ic->plugin);
        _cleanup_free_ char *where = NULL;
        if (asprintf(&where, "plugins.%s.config", ic->name) < 0) {
                plugin_close(so);
                return -ENOMEM;
        }
        json_t *cj = NULL;
        r = config_schema_check_plugin(so->desc, ic->config, where, ic->line, ic->col, &cj, d);
        plugin_close(so);
        if (r < 0)
                return r;
        json_decref(ic->config_json);
        ic->config_json = cj;
        return 0;
}

int agent_config_resolve(agent_config *cfg, bool check_perms, diag *d) {
        int ret = 0;
        for (size_t i = 0; i < cfg->n_instances; i++) {
                int r = resolve_instance(cfg->plugin_dirs, &cfg->instances[i], check_perms, d);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        ret = -EINVAL;
        }
        return ret;
}

static const char *raw_scalar(const ynode *map, const char *key) {
        const ynode *v = map && map->kind == YNODE_MAP ? ynode_get(map, key, NULL) : NULL;
        return v && v->kind == YNODE_SCALAR ? v->scalar : NULL;
}

int agent_config_check_blocks(const char *path, bool check_perms, diag *d) {
        diag ignored; /* syntax, structure and trust were reported by config_load already */
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        ynode *root = NULL;
        /* opened as config_load opens it: never a FIFO, never a file it refused */
        if (trust_open(path, "config", &fd, NULL) < 0 || read_full_fd(fd, &text, &len) < 0)
                return 0;
        diag_init(&ignored, path);
        int r = ynode_parse_string(text, len, &root, &ignored);
        diag_done(&ignored);
        if (r < 0)
                return 0;
        const ynode *agent_node = ynode_get(root, "agent", NULL);
        const ynode *dirs_node = agent_node && agent_node->kind == YNODE_MAP ? ynode_get(agent_node, "plugin_dirs", NULL) : NULL;
        char *dirs[33] = {0};
        size_t n = 0;
        if (dirs_node && dirs_node->kind == YNODE_SEQ)
                for (size_t i = 0; i < dirs_node->n && n < 32; i++)
                        if (dirs_node->values[i]->kind == YNODE_SCALAR)
                                dirs[n++] = dirs_node->values[i]->scalar;
        if (!dirs_node)
                dirs[n++] = (char *)ORG_PLUGINDIR;
        const ynode *plugins = ynode_get(root, "plugins", NULL);
        int ret = 0;
        for (size_t i = 0; plugins && plugins->kind == YNODE_MAP && i < plugins->n; i++) {
                const ynode *k = plugins->keys[i], *v = plugins->values[i];
                if (v->kind != YNODE_MAP || !name_is_valid(k->scalar))
                        continue;
                const ynode *cfg = ynode_get(v, "config", NULL);
                instance_config ic = {
                        .name = k->scalar,
                        .plugin = (char *)(raw_scalar(v, "plugin") ? raw_scalar(v, "plugin") : k->scalar),
                        .path = (char *)raw_scalar(v, "path"),
                        .config = ynode_is_null(cfg) ? NULL : cfg,
                        .line = k->line,
                        .col = k->col,
                };
                if (resolve_instance(dirs, &ic, check_perms, d) < 0)
                        ret = -EINVAL;
                json_decref(ic.config_json);
        }
        ynode_free(root);
        return ret;
}

static int agent_add_instance(agent *a, const instance_config *ic, instance **ret) {
        _cleanup_free_ char *path = NULL;
        resolve_so(a->config, ic, &path); /* a missing plugin makes the instance fail at start */
        instance **n = realloc(a->instances, (a->n_instances + 1) * sizeof(instance *));
        if (!n)
                return -ENOMEM;
        a->instances = n;
        instance *in = NULL;
        int r = instance_new(a, ic, path, &in);
        if (r < 0)
                return r;
        a->instances[a->n_instances++] = in;
        if (ret)
                *ret = in;
        return 0;
}

static int on_metrics_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        agent *a = userdata;
        agent_write_metrics(a);
        sd_event_source_set_time(s, usec + a->config->metrics_interval_ms * USEC_PER_MSEC);
        sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

static int ensure_dir(const char *path, mode_t mode) {
        if (mkdir(path, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int agent_new(sd_event *event, agent_config *cfg, const char *config_path, agent **ret) {
        agent *a = new0(agent, 1);
        if (!a) {
                config_free(cfg);
                return -ENOMEM;
        }
        a->event = sd_event_ref(event);
        a->config = cfg;
        a->config_path = config_path ? strdup(config_path) : NULL;
        /* always: as root only root's files pass; otherwise root's and our own (trust.h) */
        a->check_perms = true;
        a->started_us = now_realtime_us();
        int r;
        a->bus = bus_new(event, cfg->name);
        a->metrics = metrics_new();
        if (!a->bus || !a->metrics) {
                r = -ENOMEM;
                goto fail;
        }
        r = ensure_dir(cfg->state_dir, 0750);
        if (r < 0) {
                log_error_errno(r, "Failed to create state_dir %s: %m", cfg->state_dir);
                goto fail;
        }
        r = control_new(a, cfg->control_socket, &a->control);
        if (r < 0)
                goto fail;
        if (cfg->nats) {
                r = bridge_new(a, cfg->nats, &a->bridge);
                if (r < 0)
                        goto fail;
                r = peers_new(a, &a->peers);
                if (r < 0)
                        goto fail;
                const char *rc = json_string_value(json_object_get(cfg->nats, "remote_control"));
                if (!rc || !streq(rc, "off")) {
                        r = control_remote_start(a->control, rc && streq(rc, "admin"));
                        if (r < 0)
                                goto fail;
                }
        }

        for (size_t i = 0; i < cfg->n_instances; i++) {
                instance *in = NULL;
                r = agent_add_instance(a, &cfg->instances[i], &in);
                if (r < 0)
                        goto fail;
                if (!cfg->instances[i].enabled) {
                        in->run_state = INSTANCE_DISABLED;
                        continue;
                }
                instance_start(in); /* a failure is recorded on the instance; the others go on */
        }
        if (cfg->metrics_textfile) {
                r = sd_event_add_time_relative(event, &a->metrics_timer, CLOCK_MONOTONIC,
                                               cfg->metrics_interval_ms * USEC_PER_MSEC, USEC_PER_SEC,
                                               on_metrics_timer, a);
                if (r < 0)
                        goto fail;
        }
        *ret = a;
        return 0;
fail:
        agent_free(a);
        return r;
}

void agent_free(agent *a) {
        if (!a)
                return;
        sd_event_source_disable_unref(a->metrics_timer);
        control_free(a->control); /* first: no request may reach a half-torn agent */
        if (a->config && a->config->metrics_textfile && a->metrics && a->bus)
                agent_write_metrics(a); /* the last figures, while everything still exists */
        for (size_t i = a->n_instances; i > 0; i--)
                instance_free(a->instances[i - 1]);
        free(a->instances);
        if (a->bus)
                bus_dispatch(a->bus, 0); /* what the instances said last reaches the bridge */
        peers_free(a->peers);
        bridge_free(a->bridge);
        bus_free(a->bus);
        metrics_free(a->metrics);
        config_free(a->config);
        free(a->config_path);
        sd_event_unref(a->event);
        free(a);
}

static void remove_instance_at(agent *a, size_t i) {
        instance *in = a->instances[i];
        metrics_drop_instance(a->metrics, in->name);
        instance_free(in);
        memmove(a->instances + i, a->instances + i + 1, (a->n_instances - i - 1) * sizeof(instance *));
        a->n_instances--;
}

int agent_unload_instance(agent *a, const char *name) {
        for (size_t i = 0; i < a->n_instances; i++)
                if (streq(a->instances[i]->name, name)) {
                        log_info("Unloading instance %s.", name);
                        remove_instance_at(a, i);
                        return 0;
                }
        return -ENOENT;
}

int agent_load_instance(agent *a, const char *name, const char *plugin, const char *path, const char *config_json,
                        char **ret_error) {
        *ret_error = NULL;
        if (!name_is_valid(name) || name[0] == '_') {
                *ret_error = strdup("instance names are 1 to 64 of [A-Za-z0-9_-], not starting with '_'");
                return -EINVAL;
        }
        if (agent_find_instance(a, name)) {
                if (asprintf(ret_error, "instance %s exists already", name) < 0)
                        *ret_error = NULL;
                return -EEXIST;
        }
        ynode *root = NULL;
        if (config_json) {
                diag d;
                diag_init(&d, "config");
                int r = ynode_parse_string(config_json, strlen(config_json), &root, &d);
                if (r < 0) {
                        *ret_error = diag_join(&d);
                        diag_done(&d);
                        return r;
                }
                diag_done(&d);
        }
        instance_config ic = {
                .name = (char *)name,
                .plugin = (char *)(plugin ? plugin : name),
                .path = (char *)path,
                .enabled = true,
                .interval_ms = 5000,
                .dry_run = -1,
                .log_level = -1,
                .config = root,
        };
        instance *in = NULL;
        int r = agent_add_instance(a, &ic, &in);
        ynode_free(root); /* the instance keeps its own copy */
        if (r < 0)
                return r;
        r = instance_start(in);
        if (r < 0) {
                *ret_error = in->error ? strdup(in->error) : NULL;
                remove_instance_at(a, a->n_instances - 1);
                return r;
        }
        return 0;
}

static bool agent_keys_differ(const agent_config *o, const agent_config *n) {
        bool nats_same = (!o->nats && !n->nats) || (o->nats && n->nats && json_equal(o->nats, n->nats));
        return !streq(o->name, n->name) || !streq(o->control_socket, n->control_socket) ||
               !streq(o->state_dir, n->state_dir) || !streq(o->sysroot, n->sysroot) || !nats_same;
}

int agent_reload_config(agent *a, json_t **ret_summary, char **ret_errors) {
        diag d;
        diag_init(&d, a->config_path);
        agent_config *nc = NULL;
        int r = config_load(a->config_path, &nc, &d);
        if (r >= 0)
                r = agent_config_resolve(nc, a->check_perms, &d);
        else if (r == -EINVAL)
                agent_config_check_blocks(a->config_path, a->check_perms, &d);
        if (r < 0) {
                *ret_errors = diag_join(&d);
                if (!*ret_errors && asprintf(ret_errors, "%s: %s", a->config_path, strerror(-r)) < 0)
                        *ret_errors = NULL;
                diag_done(&d);
                config_free(nc);
                return -EINVAL;
        }
        diag_done(&d);
        if (agent_keys_differ(a->config, nc))
                log_warning("agent.name, control_socket, state_dir, sysroot and bus.nats take effect at the next restart.");

        json_t *restarted = json_array(), *started = json_array(), *stopped = json_array(),
               *unchanged = json_array(), *failed = json_array();

        /* Instances gone from the file stop first (reverse order, like a shutdown). */
        for (size_t i = a->n_instances; i > 0; i--) {
                instance *in = a->instances[i - 1];
                if (!config_find_instance(nc, in->name)) {
                        json_array_append_new(stopped, json_string(in->name));
                        remove_instance_at(a, i - 1);
                }
        }
        /* Keep the agent-wide keys that need a restart; take the rest. */
        agent_config *old = a->config;
        if (agent_keys_differ(old, nc)) {
                char *t;
                t = nc->name, nc->name = old->name, old->name = t;
                t = nc->control_socket, nc->control_socket = old->control_socket, old->control_socket = t;
                t = nc->state_dir, nc->state_dir = old->state_dir, old->state_dir = t;
                t = nc->sysroot, nc->sysroot = old->sysroot, old->sysroot = t;
                json_t *j = nc->nats;
                nc->nats = old->nats, old->nats = j;
        }
        a->config = nc;

        for (size_t i = 0; i < nc->n_instances; i++) {
                const instance_config *ic = &nc->instances[i];
                instance *in = agent_find_instance(a, ic->name);
                if (!in) {
                        r = agent_add_instance(a, ic, &in);
                        if (r < 0)
                                continue;
                        if (ic->enabled)
                                instance_start(in);
                        else
                                in->run_state = INSTANCE_DISABLED;
                        json_array_append_new(started, json_string(ic->name));
                        continue;
                }
                _cleanup_free_ char *fp = instance_config_fingerprint(ic);
                if (fp && in->fingerprint && streq(fp, in->fingerprint)) {
                        instance_adopt_config(in, ic);
                        json_array_append_new(unchanged, json_string(ic->name));
                        continue;
                }
                _cleanup_free_ char *path = NULL, *err = NULL;
                resolve_so(nc, ic, &path);
                if (!ic->enabled) {
                        instance_stop(in, INSTANCE_DISABLED);
                        instance_adopt_config(in, ic);
                        json_array_append_new(restarted, json_string(ic->name));
                        continue;
                }
                if (in->run_state == INSTANCE_DISABLED)
                        in->run_state = INSTANCE_STOPPED;
                r = instance_reload(in, ic, path, &err);
                if (r < 0)
                        json_array_append_new(failed, json_pack("{s:s, s:s}", "instance", ic->name, "error",
                                                                err ? err : strerror(-r)));
                else
                        json_array_append_new(restarted, json_string(ic->name));
        }
        config_free(old);
        a->config_reloads++;
        if (a->metrics_timer && !nc->metrics_textfile)
                a->metrics_timer = sd_event_source_disable_unref(a->metrics_timer);
        else if (!a->metrics_timer && nc->metrics_textfile)
                sd_event_add_time_relative(a->event, &a->metrics_timer, CLOCK_MONOTONIC,
                                           nc->metrics_interval_ms * USEC_PER_MSEC, USEC_PER_SEC, on_metrics_timer,
                                           a);
        log_set_max_level(nc->log_level);
        *ret_summary = json_pack("{s:o, s:o, s:o, s:o, s:o}", "restarted", restarted, "started", started, "stopped",
                                 stopped, "unchanged", unchanged, "failed", failed);
        log_info("Configuration reloaded: %zu restarted, %zu started, %zu stopped, %zu unchanged, %zu failed.",
                 json_array_size(restarted), json_array_size(started), json_array_size(stopped),
                 json_array_size(unchanged), json_array_size(failed));
        return 0;
}

void agent_update_builtin_metrics(agent *a) {
        for (size_t i = 0; i < a->n_instances; i++) {
                instance *in = a->instances[i];
                bus_client_stats st;
                bus_client_get_stats(in->client, &st);
                metrics_set(a->metrics, in->name, "instance_up", ORG_METRIC_GAUGE,
                            in->run_state == INSTANCE_RUNNING, "1 when the instance runs");
                metrics_set(a->metrics, in->name, "ticks_total", ORG_METRIC_COUNTER, (double)in->ticks,
                            "tick hooks run");
                metrics_set(a->metrics, in->name, "messages_handled_total", ORG_METRIC_COUNTER,
                            (double)in->handled, "bus messages handed to the handle hook");
                metrics_set(a->metrics, in->name, "messages_dropped_total", ORG_METRIC_COUNTER,
                            (double)st.dropped, "bus messages dropped because the inbox was full");
                metrics_set(a->metrics, in->name, "inbox_queued", ORG_METRIC_GAUGE, (double)st.queued,
                            "bus messages waiting in the inbox");
                metrics_set(a->metrics, in->name, "hook_errors_total", ORG_METRIC_COUNTER, (double)in->hook_errors,
                            "hooks that returned an error");
                metrics_set(a->metrics, in->name, "ticks_skipped_total", ORG_METRIC_COUNTER,
                            (double)in->ticks_skipped, "ticks missed while the loop stalled (coalesced)");
                metrics_set(a->metrics, in->name, "tick_seconds_max", ORG_METRIC_GAUGE,
                            (double)in->tick_us_max / 1e6, "longest tick hook so far");
                metrics_set(a->metrics, in->name, "reloads_total", ORG_METRIC_COUNTER, (double)in->reloads,
                            "successful reloads");
        }
        bus_stats bs;
        bus_get_stats(a->bus, &bs);
        metrics_set(a->metrics, "agentd", "bus_published_total", ORG_METRIC_COUNTER, (double)bs.published,
                    "messages published on the internal bus");
        metrics_set(a->metrics, "agentd", "bus_dropped_total", ORG_METRIC_COUNTER, (double)bs.dropped,
                    "messages dropped for full subscriber queues");
        /* those the bridge dropped before they reached the bus count too */
        json_t *ns = a->bridge ? bridge_status(a->bridge) : NULL;
        uint64_t unknown = bs.replies_unknown + (uint64_t)json_integer_value(json_object_get(ns, "replies_unknown"));
        json_decref(ns);
        metrics_set(a->metrics, "agentd", "bus_replies_unknown_total", ORG_METRIC_COUNTER, (double)unknown,
                    "replies to no pending request (unknown inbox or token): forged or late");
}

void agent_write_metrics(agent *a) {
        if (!a->config->metrics_textfile)
                return;
        agent_update_builtin_metrics(a);
        int r = metrics_write_textfile(a->metrics, a->config->metrics_textfile);
        if (r < 0)
                log_warning_errno(r, "Failed to write %s: %m", a->config->metrics_textfile);
}
