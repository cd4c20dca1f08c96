/* ctl_verbs.c — what each control verb does. Each verb reads q->args, acts on the
 * agent and answers with ctl_reply_ok / ctl_reply_error, now or later (bus requests
 * and streams answer later and cancel their work if the peer leaves first). Which
 * verbs mutate is declared in the table at the end; control.c enforces it. */
#include <unistd.h>

#include "bridge.h"
#include "config_schema.h"
#include "context.h"
#include "control.h"
#include "instance.h"
#include "isolate.h"
#include "loader.h"
#include "log.h"
#include "notify.h"
#include "org-build-config.h"
#include "peers.h"
#include "subject.h"
#include "util.h"

static const char *arg_str(ctl_request *q, const char *key) {
        return json_string_value(json_object_get(q->args, key));
}

static instance *arg_instance(ctl_request *q) {
        const char *name = arg_str(q, "name");
        if (!name) {
                ctl_reply_error(q, EINVAL, "missing argument \"name\"");
                return NULL;
        }
        instance *in = agent_find_instance(q->agent, name);
        if (!in)
                ctl_reply_error(q, ENOENT, "no instance named \"%s\" (see: agentctl plugin list)", name);
        return in;
}

static void v_status(ctl_request *q) {
        agent *a = q->agent;
        bus_stats bs;
        bus_get_stats(a->bus, &bs);
        size_t running = 0, failed = 0, disabled = 0;
        for (size_t i = 0; i < a->n_instances; i++) {
                instance_state s = a->instances[i]->run_state;
                running += s == INSTANCE_RUNNING;
                failed += s == INSTANCE_FAILED;
                disabled += s == INSTANCE_DISABLED;
        }
        char started[40];
        format_rfc3339(a->started_us, started, sizeof started);
        json_t *r = json_pack(
                "{s:s, s:s, s:i, s:s, s:s?, s:s, s:b, s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I, s:I}, s:I, s:{s:b}}",
                "agent", a->config->name, "version", ORG_VERSION, "pid", (int)getpid(), "started", started, "config",
                a->config_path, "sysroot", a->config->sysroot, "dry_run", a->config->dry_run, "uptime_s",
                (json_int_t)((now_realtime_us() - a->started_us) / USEC_PER_SEC), "instances", "total",
                (json_int_t)a->n_instances, "running", (json_int_t)running, "failed", (json_int_t)failed, "disabled",
                (json_int_t)disabled, "bus", "published", (json_int_t)bs.published, "delivered",
                (json_int_t)bs.delivered, "dropped", (json_int_t)bs.dropped, "subscriptions", (json_int_t)bs.n_subs,
                "config_reloads", (json_int_t)a->config_reloads, "nats", "enabled", a->config->nats != NULL);
        json_object_set_new(json_object_get(r, "bus"), "replies_unknown", json_integer((json_int_t)bs.replies_unknown));
        json_object_set_new(r, "nats", bridge_status(a->bridge));
        json_object_set_new(r, "control", control_status(a->control));
        ctl_reply_ok(q, r);
}

static void v_plugin_list(ctl_request *q) {
        json_t *arr = json_array();
        for (size_t i = 0; i < q->agent->n_instances; i++)
                json_array_append_new(arr, instance_to_json(q->agent->instances[i], false));
        ctl_reply_ok(q, arr);
}

static json_t *verbs_to_json(const org_verb *verbs) {
        json_t *arr = json_array();
        for (size_t i = 0; verbs && verbs[i].name; i++)
                json_array_append_new(arr, json_pack("{s:s, s:b, s:s, s:s}", "name", verbs[i].name, "mutating",
                                                     verbs[i].mutating, "args", verbs[i].args ? verbs[i].args : "",
                                                     "help", verbs[i].help ? verbs[i].help : ""));
        return arr;
}

static json_t *descriptor_to_json(const plugin_so *so) {
        const org_plugin *d = so->desc;
        size_t esize;
        /* an impossible entry size: no table rather than garbage read as one */
        json_t *map = config_entry_size(d, &esize) < 0 ? json_null() : config_map_to_json(d->config_map, esize);
        return json_pack("{s:s, s:s, s:s, s:s, s:i, s:o, s:o}", "plugin", d->name, "version",
                         d->version ? d->version : "", "summary", d->summary ? d->summary : "", "file", so->path,
                         "abi_version", (int)d->abi_version, "config_map", map, "verbs",
                         verbs_to_json(d->verbs));
}

/* Info on an instance, or on a plugin file by name. The descriptor of a plugin that is
 * not loaded can only be read by loading it, which runs its constructors as agentd's
 * user: only an admin peer may cause that; a read-only peer gets the instance without
 * the descriptor, or EPERM for a plugin with no instance. */
static void v_plugin_info(ctl_request *q) {
        const char *name = arg_str(q, "name");
        if (!name || !name_is_valid(name))
                return ctl_reply_error(q, EINVAL, "plugin info needs an instance or plugin name");
        instance *in = agent_find_instance(q->agent, name);
        const char *plugin = in ? in->cfg.plugin : name;
        _cleanup_free_ char *path = NULL, *err = NULL;
        if (in && in->so_path)
                path = strdup(in->so_path);
        else if (loader_find(q->agent->config->plugin_dirs, plugin, &path) < 0 && !in)
                return ctl_reply_error(q, ENOENT, "no instance or plugin named \"%s\"", name);

        json_t *r = in ? instance_to_json(in, true) : json_object();
        plugin_so *so = NULL;
        if (in && in->so)
                json_object_update_new(r, descriptor_to_json(in->so));
        else if (path && !q->admin) {
                static const char why[] = "not loaded: reading the descriptor of a plugin means loading it, "
                                          "which only root may cause";
                if (!in) {
                        json_decref(r);
                        return ctl_reply_error(q, EPERM, "permission denied: plugin %s is %s", name, why);
                }
                json_object_set_new(r, "load_error", json_string(why));
        } else if (path && loader_open(path, q->agent->check_perms, &so, &err) >= 0) {
                json_object_update_new(r, descriptor_to_json(so));
                loader_close(so);
        } else if (err)
                json_object_set_new(r, "load_error", json_string(err));
        ctl_reply_ok(q, r);
}

static void v_plugin_load(ctl_request *q) {
        const char *name = arg_str(q, "name");
        if (!name)
                return ctl_reply_error(q, EINVAL, "missing argument \"name\"");
        json_t *cfg = json_object_get(q->args, "config");
        _cleanup_free_ char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
        _cleanup_free_ char *err = NULL;
        int r = agent_load_instance(q->agent, name, arg_str(q, "plugin"), arg_str(q, "path"), cfg_text, &err);
        if (r < 0)
                return ctl_reply_error(q, r, "cannot load %s: %s", name, err ? err : strerror(-r));
        ctl_reply_ok(q, instance_to_json(agent_find_instance(q->agent, name), false));
}

static void v_plugin_unload(ctl_request *q) {
        instance *in = arg_instance(q);
        if (!in)
                return;
        _cleanup_free_ char *name = strdup(in->name);
        agent_unload_instance(q->agent, in->name);
        ctl_reply_ok(q, json_pack("{s:s}", "unloaded", name ? name : "?"));
}

static void v_plugin_reload(ctl_request *q) {
        instance *in = arg_instance(q);
        if (!in)
                return;
        if (in->run_state == INSTANCE_DISABLED)
                return ctl_reply_error(q, EINVAL, "%s is disabled: agentctl plugin enable %s", in->name, in->name);
        _cleanup_free_ char *path = NULL, *err = NULL;
        /* the file now on disk where the instance's plugin is found */
        if (in->cfg.path)
                path = strdup(in->cfg.path);
        else
                loader_find(q->agent->config->plugin_dirs, in->cfg.plugin, &path);
        uint64_t t0 = now_monotonic_us();
        int r = instance_reload(in, NULL, path, &err);
        uint64_t dt = now_monotonic_us() - t0;
        if (r < 0)
                return ctl_reply_error(q, r, "reload of %s failed, the running version stays: %s", in->name,
                                       err ? err : strerror(-r));
        json_t *o = instance_to_json(in, false);
        json_object_set_new(o, "reload_us", json_integer((json_int_t)dt));
        ctl_reply_ok(q, o);
}

static void v_plugin_enable(ctl_request *q) {
        instance *in = arg_instance(q);
        if (!in)
                return;
        in->cfg.enabled = true;
        if (in->run_state != INSTANCE_RUNNING) {
                if (in->so_path == NULL)
                        loader_find(q->agent->config->plugin_dirs, in->cfg.plugin, &in->so_path);
                int r = instance_start(in);
                if (r < 0)
                        return ctl_reply_error(q, r, "cannot start %s: %s", in->name, in->error ? in->error : "?");
        }
        ctl_reply_ok(q, instance_to_json(in, false));
}

static void v_plugin_disable(ctl_request *q) {
        instance *in = arg_instance(q);
        if (!in)
                return;
        in->cfg.enabled = false;
        instance_stop(in, INSTANCE_DISABLED);
        ctl_reply_ok(q, instance_to_json(in, false));
}

static json_t *diag_to_json(const diag *d) {
        json_t *arr = json_array();
        for (size_t i = 0; i < d->n; i++)
                json_array_append_new(arr, json_string(d->lines[i]));
        return arr;
}

static void v_config_check(ctl_request *q) {
        const char *path = arg_str(q, "path");
        /* agentd reads as root and quotes what it reads in its errors: only root
         * may point it at another file */
        if (path && !q->admin)
                return ctl_reply_error(q, EPERM, "permission denied: checking another file than the running config needs root");
        /* an admin of another agent is not root here: over NATS only the running config */
        if (path && q->reply_subject)
                return ctl_reply_error(q, EPERM,
                                       "permission denied: config check FILE is refused over NATS (remote peers may "
                                       "check the running config only; run agentctl on this host)");
        if (!path)
                path = q->agent->config_path;
        if (!path)
                return ctl_reply_error(q, ENOENT, "this agent was started without a config file");
        diag d;
        diag_init(&d, path);
        agent_config *c = NULL;
        int r = config_load(path, &c, &d);
        if (r >= 0)
                r = agent_config_resolve(c, q->agent->check_perms, &d);
        if (r < 0 && d.n == 0)
                diag_add(&d, 0, 0, "%s", strerror(-r));
        json_t *o = json_pack("{s:s, s:b, s:o, s:I}", "path", path, "ok", r >= 0, "errors", diag_to_json(&d),
                              "instances", (json_int_t)(c ? c->n_instances : 0));
        diag_done(&d);
        config_free(c);
        ctl_reply_ok(q, o);
}

static void v_config_reload(ctl_request *q) {
        json_t *summary = NULL;
        _cleanup_free_ char *errors = NULL;
        if (!q->agent->config_path)
                return ctl_reply_error(q, ENOENT, "this agent was started without a config file");
        notify_reloading();
        int r = agent_reload_config(q->agent, &summary, &errors);
        notify_ready();
        if (r < 0)
                return ctl_reply_error(q, r, "the new configuration is invalid, nothing changed:\n%s",
                                       errors ? errors : "?");
        ctl_reply_ok(q, summary);
}

/* Headers from {"k":"v"} or {"k":["v1","v2"]}. */
static int headers_from_json(json_t *h, org_header **ret, size_t *ret_n) {
        *ret = NULL;
        *ret_n = 0;
        if (!h)
                return 0;
        if (!json_is_object(h))
                return -EINVAL;
        size_t n = 0, k = 0;
        const char *key;
        json_t *v;
        json_object_foreach(h, key, v) n += json_is_array(v) ? json_array_size(v) : 1;
        org_header *arr = new0(org_header, n ? n : 1);
        if (!arr)
                return -ENOMEM;
        json_object_foreach(h, key, v) {
                if (json_is_string(v))
                        arr[k++] = (org_header){key, json_string_value(v)};
                else if (json_is_array(v)) {
                        size_t i;
                        json_t *e;
                        json_array_foreach(v, i, e) {
                                if (!json_is_string(e)) {
                                        free(arr);
                                        return -EINVAL;
                                }
                                arr[k++] = (org_header){key, json_string_value(e)};
                        }
                } else {
                        free(arr);
                        return -EINVAL;
                }
        }
        *ret = arr;
        *ret_n = k;
        return 0;
}

/* The payload as bytes: "data" (a string, sent as is) or "payload" (any JSON). */
static int payload_from_args(ctl_request *q, char **ret, size_t *ret_len) {
        json_t *data = json_object_get(q->args, "data"), *payload = json_object_get(q->args, "payload");
        char *s;
        if (data) {
                if (!json_is_string(data))
                        return -EINVAL;
                s = strndup(json_string_value(data), json_string_length(data));
        } else if (payload)
                s = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
        else
                s = strdup("");
        if (!s)
                return -ENOMEM;
        *ret = s;
        *ret_len = strlen(s);
        return 0;
}

static void v_bus_pub(ctl_request *q) {
        const char *subject = arg_str(q, "subject");
        if (!subject || !subject_is_valid(subject))
                return ctl_reply_error(q, EINVAL, "invalid subject \"%s\"", subject ? subject : "");
        _cleanup_free_ char *data = NULL;
        _cleanup_free_ org_header *h = NULL;
        size_t len = 0, nh = 0;
        if (payload_from_args(q, &data, &len) < 0 || headers_from_json(json_object_get(q->args, "headers"), &h, &nh) < 0)
                return ctl_reply_error(q, EINVAL, "bad payload or headers");
        int r = bus_publish(q->agent->bus, subject, NULL, h, nh, data, len, NULL);
        if (r < 0)
                return ctl_reply_error(q, r, "publish failed: %s", strerror(-r));
        ctl_reply_ok(q, json_pack("{s:i}", "receivers", r));
}

/* A string from the bus as JSON: NATS lets subjects, origins and headers carry bytes
 * that are not UTF-8, which JSON cannot; those bytes are written as \\xNN. */
static json_t *json_bus_string(const char *s) {
        if (!s)
                return NULL;
        json_t *j = json_string(s);
        if (j)
                return j;
        _cleanup_free_ char *esc = str_escape_alloc(s, strlen(s), 0);
        return esc ? json_string(esc) : NULL;
}

/* A message as the control socket shows it: the payload parsed when it is JSON. */
static json_t *msg_to_json(const bus_msg *m) {
        json_error_t e;
        json_t *payload = m->m.len ? json_loadb(m->m.data, m->m.len, JSON_DECODE_ANY, &e) : NULL;
        json_t *o = json_pack("{s:o*, s:I, s:o*}", "subject", json_bus_string(m->m.subject), "seq", (json_int_t)m->seq,
                              "origin", json_bus_string(m->m.origin));
        if (!o) {
                json_decref(payload);
                return NULL;
        }
        if (m->m.reply)
                json_object_set_new(o, "reply", json_bus_string(m->m.reply));
        if (m->m.n_headers) {
                json_t *h = json_object();
                for (size_t i = 0; i < m->m.n_headers; i++) {
                        _cleanup_free_ char *key = str_escape_alloc(m->m.headers[i].key, strlen(m->m.headers[i].key), 0);
                        if (key)
                                json_object_set_new(h, key, json_bus_string(m->m.headers[i].value));
                }
                json_object_set_new(o, "headers", h);
        }
        if (payload)
                json_object_set_new(o, "payload", payload);
        else {
                json_t *s = json_stringn(m->m.data, m->m.len); /* NULL unless valid UTF-8 */
                json_object_set_new(o, "data", s ? s : json_sprintf("<%zu bytes, not UTF-8>", m->m.len));
        }
        return o;
}

typedef struct sub_stream {
        bus_client *client;
        sd_event_source *timer;
        uint64_t max;
} sub_stream;

static void sub_stream_finish(ctl_request *q, const char *why) {
        sub_stream *st = q->data;
        bus_client_stats cs;
        bus_client_get_stats(st->client, &cs);
        bus_client_free(st->client);
        sd_event_source_disable_unref(st->timer);
        free(st);
        q->data = NULL;
        q->dropped += cs.dropped;
        if (q->conn)
                ctl_stream_end(q, json_pack("{s:s}", "reason", why));
        else
                ctl_request_free(q);
}

static void sub_deliver(bus_client *c, const bus_msg *msg, void *userdata) {
        ctl_request *q = userdata;
        sub_stream *st = q->data;
        ctl_stream_send(q, msg_to_json(msg));
        if (st->max && q->sent >= st->max)
                sub_stream_finish(q, "count");
}

static int sub_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        sub_stream_finish(userdata, "timeout");
        return 0;
}

static void sub_on_close(ctl_request *q) { sub_stream_finish(q, "closed"); }

static void v_bus_sub(ctl_request *q) {
        const char *pattern = arg_str(q, "pattern");
        if (!pattern || !pattern_is_valid(pattern))
                return ctl_reply_error(q, EINVAL, "invalid pattern \"%s\"", pattern ? pattern : "");
        json_int_t count = json_integer_value(json_object_get(q->args, "count"));
        json_int_t timeout_ms = json_integer_value(json_object_get(q->args, "timeout_ms"));
        sub_stream *st = new0(sub_stream, 1);
        if (!st)
                return ctl_reply_error(q, ENOMEM, "out of memory");
        st->max = count > 0 ? (uint64_t)count : 0;
        st->client = bus_client_new(q->agent->bus, "control-sub", 0, sub_deliver, q);
        if (!st->client || bus_subscribe(st->client, pattern, NULL) < 0) {
                bus_client_free(st->client);
                free(st);
                return ctl_reply_error(q, ENOMEM, "cannot subscribe");
        }
        if (timeout_ms > 0)
                sd_event_add_time_relative(q->agent->event, &st->timer, CLOCK_MONOTONIC,
                                           (uint64_t)timeout_ms * USEC_PER_MSEC, 1000, sub_timeout, q);
        q->data = st;
        q->on_close = sub_on_close;
        /* the subscription is live: tell the client so it may start publishing */
        if (ctl_stream_send(q, json_pack("{s:b, s:s}", "subscribed", 1, "pattern", pattern)) >= 0)
                q->sent--; /* the marker is not a message */
}

typedef enum reply_kind {
        REPLY_MESSAGE,     /* bus request: the reply message as it came */
        REPLY_PLUGIN,      /* plugin verb: the payload, {"error": ...} is an error */
        REPLY_CONTROL,     /* another agent's control answer: {"ok","result"|"error"} */
} reply_kind;

typedef struct pending_request {
        uint64_t id;
        reply_kind kind;
} pending_request;

static void request_on_close(ctl_request *q) {
        pending_request *p = q->data;
        bus_request_cancel(q->agent->bus, p->id);
        free(p);
        ctl_request_free(q);
}

static void on_bus_reply(int error, const bus_msg *reply, void *userdata) {
        ctl_request *q = userdata;
        pending_request *p = q->data;
        reply_kind kind = p->kind;
        free(p);
        q->data = NULL;
        q->on_close = NULL;
        if (error == -ETIMEDOUT)
                return ctl_reply_error(q, ETIMEDOUT, "no reply within the time-out");
        if (error == -ENOENT)
                return ctl_reply_error(q, ENOENT, "no responder on that subject");
        if (error < 0)
                return ctl_reply_error(q, error, "request failed: %s", strerror(-error));
        json_t *m = msg_to_json(reply);
        if (kind == REPLY_CONTROL) {
                json_t *payload = json_object_get(m, "payload");
                if (json_is_true(json_object_get(payload, "ok")))
                        ctl_reply_ok(q, json_incref(json_object_get(payload, "result")));
                else {
                        const char *err = json_string_value(json_object_get(payload, "error"));
                        const char *en = json_string_value(json_object_get(payload, "errno"));
                        ctl_reply_error(q, en && streq(en, "EPERM") ? EPERM : EIO, "%s", err ? err : "the remote agent failed");
                }
                json_decref(m);
                return;
        }
        if (kind == REPLY_PLUGIN) {
                json_t *payload = json_object_get(m, "payload");
                const char *err = json_string_value(json_object_get(payload, "error"));
                if (err) {
                        ctl_reply_error(q, EIO, "%s", err);
                        json_decref(m);
                        return;
                }
                json_t *res = json_incref(payload ? payload : json_object_get(m, "data"));
                json_decref(m);
                return ctl_reply_ok(q, res);
        }
        ctl_reply_ok(q, m);
}

static void start_request(ctl_request *q, const char *subject, const char *data, size_t len, reply_kind kind) {
        json_int_t timeout_ms = json_integer_value(json_object_get(q->args, "timeout_ms"));
        pending_request *p = new0(pending_request, 1);
        if (!p)
                return ctl_reply_error(q, ENOMEM, "out of memory");
        p->kind = kind;
        q->data = p;
        q->on_close = request_on_close;
        int r = bus_request(q->agent->bus, subject, NULL, 0, data, len, timeout_ms > 0 ? (uint64_t)timeout_ms : 5000,
                            on_bus_reply, q, &p->id);
        if (r < 0) {
                free(p);
                q->data = NULL;
                q->on_close = NULL;
                ctl_reply_error(q, r, "request failed: %s", strerror(-r));
        }
}

static void v_bus_request(ctl_request *q) {
        const char *subject = arg_str(q, "subject");
        if (!subject || !subject_is_valid(subject))
                return ctl_reply_error(q, EINVAL, "invalid subject \"%s\"", subject ? subject : "");
        _cleanup_free_ char *data = NULL;
        size_t len = 0;
        if (payload_from_args(q, &data, &len) < 0)
                return ctl_reply_error(q, EINVAL, "bad payload");
        start_request(q, subject, data, len, REPLY_MESSAGE);
}

/* call INSTANCE VERB [ARGS]: a request to organism.ctl.<agent>.<instance>.<verb>. A
 * read-only peer may call only verbs the plugin declares as not mutating. */
static void v_call(ctl_request *q) {
        const char *verb = arg_str(q, "verb");
        const char *name = arg_str(q, "instance");
        if (!name || !verb)
                return ctl_reply_error(q, EINVAL, "call needs \"instance\" and \"verb\"");
        if (!name_is_valid(verb))
                return ctl_reply_error(q, EINVAL, "invalid verb \"%s\"", verb);
        instance *in = agent_find_instance(q->agent, name);
        if (!in)
                return ctl_reply_error(q, ENOENT, "no instance named \"%s\" (see: agentctl plugin list)", name);
        if (!q->admin) {
                const org_verb *v = NULL;
                for (size_t i = 0; in->so && in->so->desc->verbs && in->so->desc->verbs[i].name; i++)
                        if (streq(in->so->desc->verbs[i].name, verb))
                                v = &in->so->desc->verbs[i];
                if (!v || v->mutating)
                        return ctl_reply_error(q, EPERM, "permission denied: %s %s %s needs root", name, verb,
                                               v ? "changes the system and" : "is not a declared read-only verb and");
        }
        json_t *args = json_object_get(q->args, "args");
        _cleanup_free_ char *data = args ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
        _cleanup_free_ char *subject = instance_ctl_subject(in, verb);
        if (!data || !subject)
                return ctl_reply_error(q, ENOMEM, "out of memory");
        start_request(q, subject, data, strlen(data), REPLY_PLUGIN);
}

void ctl_forward(ctl_request *q, const char *target) {
        if (!q->agent->bridge)
                return ctl_reply_error(q, EOPNOTSUPP, "--agent %s needs the NATS bridge (bus.nats), and this agent has none",
                                       target);
        if (!name_is_valid(target))
                return ctl_reply_error(q, EINVAL, "invalid agent name \"%s\"", target);
        if (streq(q->verb, "bus.sub"))
                return ctl_reply_error(q, EOPNOTSUPP, "streams do not cross agents: run agentctl on %s itself", target);
        /* the other agent trusts this one, not our peer: a read-only peer may not borrow
         * that trust for a plugin verb (whose flag only the other side knows) or a path */
        if (!q->admin && (streq(q->verb, "call") || json_object_get(q->args, "path")))
                return ctl_reply_error(q, EPERM, "permission denied: read-only peers reach other agents with read-only "
                                                 "agent verbs only");
        _cleanup_free_ char *subject = NULL, *data = NULL;
        if (streq(q->verb, "call")) {
                /* straight to the instance on the other agent, which checks its own verbs */
                const char *inst = arg_str(q, "instance"), *verb = arg_str(q, "verb");
                if (!inst || !verb || !name_is_valid(inst) || !name_is_valid(verb))
                        return ctl_reply_error(q, EINVAL, "call needs a valid \"instance\" and \"verb\"");
                json_t *args = json_object_get(q->args, "args");
                data = args ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
                if (asprintf(&subject, "organism.ctl.%s.%s.%s", target, inst, verb) < 0 || !data)
                        return ctl_reply_error(q, ENOMEM, "out of memory");
                return start_request(q, subject, data, strlen(data), REPLY_PLUGIN);
        }
        json_t *args = json_deep_copy(q->args);
        json_object_del(args, "agent");
        data = json_dumps(args, JSON_COMPACT);
        json_decref(args);
        if (asprintf(&subject, "organism.ctl.%s._agent.%s", target, q->verb) < 0 || !data)
                return ctl_reply_error(q, ENOMEM, "out of memory");
        start_request(q, subject, data, strlen(data), REPLY_CONTROL);
}

static void v_metrics(ctl_request *q) {
        agent_update_builtin_metrics(q->agent);
        const char *format = arg_str(q, "format");
        if (format && streq(format, "text")) {
                char *text = metrics_render_text(q->agent->metrics);
                json_t *r = json_pack("{s:s}", "text", text ? text : "");
                free(text);
                return ctl_reply_ok(q, r);
        }
        ctl_reply_ok(q, metrics_to_json(q->agent->metrics));
}

static void v_audit(ctl_request *q) {
        agent *a = q->agent;
        json_t *arr = json_array();
        bool all_ok = true;
        for (size_t i = 0; i < a->n_instances; i++) {
                instance *in = a->instances[i];
                json_t *o = json_pack("{s:s, s:s, s:s}", "instance", in->name, "plugin", in->cfg.plugin, "state",
                                      instance_state_to_string(in->run_state));
                int (*verify)(void *, char **) = in->so ? PLUGIN_HOOK(in->so, verify) : NULL;
                if (in->run_state != INSTANCE_RUNNING || !verify) {
                        json_object_set_new(o, "verified", json_false());
                        json_array_append_new(arr, o);
                        continue;
                }
                char *text = NULL;
                int r = in->iso ? isolate_verify(in->iso, &text) : verify(in->state, &text);
                json_error_t e;
                json_t *res = r >= 0 && text ? json_loads(text, 0, &e) : NULL;
                free(text);
                json_object_set_new(o, "verified", json_true());
                if (!res || !json_is_object(res)) {
                        json_object_set_new(o, "ok", json_false());
                        json_object_set_new(o, "error", json_string(r < 0 ? strerror(-r) : "verify returned no JSON object"));
                        json_decref(res);
                } else {
                        json_object_update_new(o, res);
                        if (!json_is_boolean(json_object_get(o, "ok")))
                                json_object_set_new(o, "ok", json_false());
                }
                all_ok = all_ok && json_is_true(json_object_get(o, "ok"));
                json_array_append_new(arr, o);
        }
        ctl_reply_ok(q, json_pack("{s:b, s:o}", "ok", all_ok, "instances", arr));
}

/* agents: this one and the others heard on the NATS bus (peers.h). */
static void v_agents(ctl_request *q) {
        json_t *list = peers_to_json(q->agent->peers);
        json_array_insert_new(list, 0, json_pack("{s:s, s:s, s:b}", "agent", q->agent->config->name, "version",
                                                 ORG_VERSION, "self", 1));
        ctl_reply_ok(q, json_pack("{s:s, s:b, s:o}", "self", q->agent->config->name, "nats", q->agent->bridge != NULL,
                                  "agents", list));
}

static void v_verbs(ctl_request *q);

static const ctl_verb verbs[] = {
        {"status", false, v_status},
        {"plugin.list", false, v_plugin_list},
        {"plugin.info", false, v_plugin_info},
        {"plugin.load", true, v_plugin_load},
        {"plugin.unload", true, v_plugin_unload},
        {"plugin.reload", true, v_plugin_reload},
        {"plugin.enable", true, v_plugin_enable},
        {"plugin.disable", true, v_plugin_disable},
        {"config.check", false, v_config_check},
        {"config.reload", true, v_config_reload},
        {"bus.pub", true, v_bus_pub},
        {"bus.sub", false, v_bus_sub, true},
        {"bus.request", true, v_bus_request},
        {"call", false, v_call}, /* checks the plugin verb's own flag */
        {"metrics", false, v_metrics},
        {"audit", false, v_audit},
        {"verbs", false, v_verbs},
        {"agents", false, v_agents},
};

static void v_verbs(ctl_request *q) {
        json_t *arr = json_array();
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                json_array_append_new(arr, json_pack("{s:s, s:b}", "verb", verbs[i].name, "mutating", verbs[i].mutating));
        ctl_reply_ok(q, arr);
}

const ctl_verb *ctl_verb_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, name))
                        return &verbs[i];
        return NULL;
}
