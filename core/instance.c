/* instance.c — the life of one plugin instance: start (load, check config, init),
 * ticks, delivery of bus messages and verb calls, stop, and reload of a new .so or a
 * new config without losing the messages queued for it. */
#include <stdarg.h>

#include "config_schema.h"
#include "context.h"
#include "isolate.h"
#include "log.h"
#include "util.h"

#define CTL_PREFIX "organism.ctl."

const char *instance_state_to_string(instance_state s) {
        switch (s) {
        case INSTANCE_STOPPED:
                return "stopped";
        case INSTANCE_RUNNING:
                return "running";
        case INSTANCE_FAILED:
                return "failed";
        case INSTANCE_DISABLED:
                return "disabled";
        }
        return "?";
}

bool instance_dry_run(const instance *in) {
        if (in->cfg.dry_run >= 0)
                return in->cfg.dry_run;
        return in->agent->config->dry_run;
}

int instance_log_level(const instance *in) {
        return in->cfg.log_level >= 0 ? in->cfg.log_level : in->agent->config->log_level;
}

char *instance_ctl_subject(const instance *in, const char *verb) {
        char *s = NULL;
        if (asprintf(&s, CTL_PREFIX "%s.%s.%s", in->agent->config->name, in->name, verb) < 0)
                return NULL;
        return s;
}

/* A deep copy, so an instance never points into a config tree that a reload frees. */
static ynode *ynode_clone(const ynode *n) {
        if (!n)
                return NULL;
        ynode *c = new0(ynode, 1);
        if (!c)
                return NULL;
        c->kind = n->kind;
        c->line = n->line;
        c->col = n->col;
        c->plain = n->plain;
        if (n->scalar && !(c->scalar = strdup(n->scalar)))
                goto fail;
        if (n->n > 0) {
                c->values = new0(ynode *, n->n);
                if (!c->values)
                        goto fail;
                if (n->keys && !(c->keys = new0(ynode *, n->n)))
                        goto fail;
                for (size_t i = 0; i < n->n; i++) {
                        c->n = i + 1;
                        if (!(c->values[i] = ynode_clone(n->values[i])))
                                goto fail;
                        if (n->keys && !(c->keys[i] = ynode_clone(n->keys[i])))
                                goto fail;
                }
        }
        return c;
fail:
        ynode_free(c);
        return NULL;
}

static void cfg_clear(instance_config *c) {
        free(c->name);
        free(c->plugin);
        free(c->path);
        json_decref(c->config_json);
        *c = (instance_config){0};
}

/* Copies ic into in->cfg (owning everything); the old copy is released on success. */
static int cfg_copy_into(instance *in, const instance_config *ic) {
        instance_config c = *ic;
        ynode *own = ynode_clone(ic->config);
        c.name = strdup(ic->name);
        c.plugin = strdup(ic->plugin ? ic->plugin : ic->name);
        c.path = ic->path ? strdup(ic->path) : NULL;
        c.config = own;
        c.config_json = json_incref(ic->config_json);
        char *fp = NULL;
        if (!c.name || !c.plugin || (ic->path && !c.path) || (ic->config && !own) ||
            !(fp = instance_config_fingerprint(&c))) {
                ynode_free(own);
                cfg_clear(&c);
                return -ENOMEM;
        }
        cfg_clear(&in->cfg);
        ynode_free(in->own_config);
        free(in->fingerprint);
        in->cfg = c;
        in->own_config = own;
        in->fingerprint = fp;
        return 0;
}

/* Same fingerprint, so the same checked config: the running plugin keeps the JSON it
 * was given (it may hold pointers into it, from the host's config getters). */
int instance_adopt_config(instance *in, const instance_config *ic) {
        json_t *keep = json_incref(in->cfg.config_json);
        int r = cfg_copy_into(in, ic);
        if (r < 0) {
                json_decref(keep);
                return r;
        }
        json_decref(in->cfg.config_json);
        in->cfg.config_json = keep;
        return 0;
}

static void respond_error(instance *in, const char *reply, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void respond_error(instance *in, const char *reply, const char *fmt, ...) {
        if (!reply)
                return;
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        json_t *o = json_pack("{s:s}", "error", msg);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text)
                bus_publish(in->agent->bus, reply, NULL, NULL, 0, text, strlen(text), NULL);
        free(text);
        json_decref(o);
}

static void deliver_call(instance *in, const char *verb, const bus_msg *msg) {
        const org_msg *m = &msg->m;
        if (in->run_state != INSTANCE_RUNNING) {
                respond_error(in, m->reply, "instance %s is %s%s%s", in->name, instance_state_to_string(in->run_state),
                              in->error ? ": " : "", in->error ? in->error : "");
                return;
        }
        /* From another agent over NATS: only read-only verbs unless remote_control is admin. */
        if (m->origin && !streq(m->origin, in->agent->config->name)) {
                const char *rc = json_string_value(json_object_get(in->agent->config->nats, "remote_control"));
                if (!rc || !streq(rc, "admin")) {
                        const org_verb *v = NULL;
                        for (size_t i = 0; in->so->desc->verbs && in->so->desc->verbs[i].name; i++)
                                if (streq(in->so->desc->verbs[i].name, verb))
                                        v = &in->so->desc->verbs[i];
                        if (!v || v->mutating || (rc && streq(rc, "off"))) {
                                respond_error(in, m->reply,
                                              "permission denied: %s %s from agent %s: remote control of %s is %s "
                                              "(bus.nats.remote_control)",
                                              in->name, verb, m->origin, in->agent->config->name, rc ? rc : "read-only");
                                return;
                        }
                }
        }
        int (*call)(void *, const char *, const org_msg *) = PLUGIN_HOOK(in->so, call);
        if (!call) {
                respond_error(in, m->reply, "plugin %s has no verbs", in->cfg.plugin);
                return;
        }
        in->calls++;
        if (in->iso) {
                isolate_deliver(in->iso, msg, verb);
                return;
        }
        in->ctx->call_reply = m->reply;
        in->ctx->call_replied = false;
        int r = call(in->state, verb, m);
        org_ctx *ctx = in->ctx; /* the call may not retire its own generation, but be safe */
        if (ctx) {
                if (r < 0 && !ctx->call_replied)
                        respond_error(in, m->reply, "%s %s: %s", in->name, verb,
                                      r == -EOPNOTSUPP ? "unknown verb" : strerror(-r));
                ctx->call_reply = NULL;
        }
        if (r < 0)
                in->hook_errors++;
}

static void instance_deliver(bus_client *c, const bus_msg *msg, void *userdata) {
        instance *in = userdata;
        const char *subject = msg->m.subject;
        size_t plen = strlen(CTL_PREFIX), alen = strlen(in->agent->config->name), ilen = strlen(in->name);
        /* organism.ctl.<agent>.<instance>.<verb> */
        if (strncmp(subject, CTL_PREFIX, plen) == 0 && strncmp(subject + plen, in->agent->config->name, alen) == 0 &&
            subject[plen + alen] == '.' && strncmp(subject + plen + alen + 1, in->name, ilen) == 0 &&
            subject[plen + alen + 1 + ilen] == '.') {
                deliver_call(in, subject + plen + alen + 1 + ilen + 1, msg);
                return;
        }
        if (in->run_state != INSTANCE_RUNNING)
                return;
        int (*handle)(void *, const org_msg *) = PLUGIN_HOOK(in->so, handle);
        if (!handle)
                return;
        in->handled++;
        if (in->iso) {
                isolate_deliver(in->iso, msg, NULL);
                return;
        }
        if (handle(in->state, &msg->m) < 0)
                in->hook_errors++;
}

static int subscribe_ctl(instance *in) {
        _cleanup_free_ char *p = instance_ctl_subject(in, "*");
        if (!p)
                return -ENOMEM;
        return bus_subscribe(in->client, p, &in->ctl_sid);
}

int instance_new(agent *a, const instance_config *ic, const char *so_path, instance **ret) {
        instance *in = new0(instance, 1);
        if (!in)
                return -ENOMEM;
        in->agent = a;
        in->run_state = INSTANCE_STOPPED;
        int r = cfg_copy_into(in, ic);
        if (r < 0)
                goto fail;
        in->name = strdup(ic->name);
        in->so_path = so_path ? strdup(so_path) : NULL;
        if (!in->name || (so_path && !in->so_path)) {
                r = -ENOMEM;
                goto fail;
        }
        in->client = bus_client_new(a->bus, in->name, ic->queue_max ? ic->queue_max : a->config->queue_max,
                                    instance_deliver, in);
        if (!in->client) {
                r = -ENOMEM;
                goto fail;
        }
        r = subscribe_ctl(in);
        if (r < 0)
                goto fail;
        *ret = in;
        return 0;
fail:
        instance_free(in);
        return r;
}

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        instance *in = userdata;
        uint64_t period = in->cfg.interval_ms * USEC_PER_MSEC, now = usec, next = usec + period;
        /* Next tick from the scheduled time, so ticks do not drift by their own cost. But
         * missed ticks are coalesced: when the loop (or this tick's predecessor) stalled
         * past a whole period, this one late tick stands for all that were missed, and
         * the next comes a period from now, not in a burst to catch up. */
        if (sd_event_now(sd_event_source_get_event(s), CLOCK_MONOTONIC, &now) < 0)
                now = usec;
        if (period > 0 && next <= now) {
                in->ticks_skipped += (now - usec) / period;
                next = now + period;
        }
        sd_event_source_set_time(s, next);
        sd_event_source_set_enabled(s, SD_EVENT_ON);
        int (*tick)(void *) = PLUGIN_HOOK(in->so, tick);
        if (!tick || in->run_state != INSTANCE_RUNNING)
                return 0;
        if (in->iso) {
                in->ticks++;
                isolate_tick(in->iso);
                return 0;
        }
        uint64_t t0 = now_monotonic_us();
        int r = tick(in->state);
        uint64_t dt = now_monotonic_us() - t0;
        in->ticks++;
        in->tick_us_last = dt;
        if (dt > in->tick_us_max)
                in->tick_us_max = dt;
        if (r < 0)
                in->hook_errors++;
        if (dt > 50000)
                log_internal(LOG_WARNING, 0, in->cfg.plugin, in->name,
                             "tick took %llu ms: a hook must not block the loop", (unsigned long long)(dt / 1000));
        return 0;
}

static int arm_tick(instance *in) {
        if (!PLUGIN_HOOK(in->so, tick))
                return 0;
        uint64_t period = in->cfg.interval_ms * USEC_PER_MSEC;
        /* a tenth of the interval (at most 1 s) of slack lets the kernel batch wake-ups */
        return sd_event_add_time_relative(in->agent->event, &in->tick_source, CLOCK_MONOTONIC, period,
                                          MAX(1000ULL, MIN(period / 10, USEC_PER_SEC)), on_tick, in);
}

static void set_error(instance *in, const char *msg) {
        free(in->error);
        in->error = msg ? strdup(msg) : NULL;
}

/* Loads a .so and checks the instance's config block against its config map. */
static int load_checked(instance *in, const instance_config *ic, const char *so_path, plugin_so **ret_so,
                        json_t **ret_json, char **ret_error) {
        plugin_so *so = NULL;
        int r = plugin_open(so_path, in->agent->check_perms, ic->isolate, &so, ret_error);
        if (r < 0)
                return r;
        diag d;
        diag_init(&d, in->agent->config_path);
        _cleanup_free_ char *where = NULL;
        if (asprintf(&where, "plugins.%s.config", ic->name) < 0) {
                plugin_close(so);
                return -ENOMEM;
        }
        json_t *cj = NULL;
        r = config_schema_check_plugin(so->desc, ic->config, where, ic->line, ic->col, &cj, &d);
        if (r < 0) {
                *ret_error = diag_join(&d);
                diag_done(&d);
                plugin_close(so);
                return r;
        }
        diag_done(&d);
        *ret_so = so;
        *ret_json = cj;
        return 0;
}

/* Makes a new generation run: ctx, init, restore. The old generation's subscriptions
 * stay while the new one subscribes (the inbox gets each message once either way);
 * on success they go, on failure the new ones go, and the old generation keeps its
 * subscription ids. Its running commands and worker jobs are offered to the new one
 * (ctx_hand_over_*): on success what it adopted is its own and the rest is cancelled,
 * on failure everything goes back to the old generation, which never stopped. */
static int start_generation(instance *in, plugin_so *so, const void *blob, size_t blob_len, char **ret_error) {
        if (in->cfg.isolate) /* a reload waits for the new child's init; a start does not */
                return isolate_start(in, so->path, blob, blob_len, in->run_state == INSTANCE_RUNNING, ret_error);
        bus *b = in->agent->bus;
        uint64_t marker = bus_next_sid(b);
        int r;
        in->generation++;
        org_ctx *ctx = ctx_new(in);
        if (!ctx) {
                in->generation--;
                return -ENOMEM;
        }
        /* The new generation must be reachable through `in` while init runs: its
         * host calls (subscribe, metrics, store) go through in->ctx. */
        org_ctx *old_ctx = in->ctx;
        plugin_so *old_so = in->so;
        in->ctx = ctx;
        in->so = so;
        if (old_ctx)
                ctx_hand_over_begin(ctx, old_ctx);
        void *state = NULL;
        r = so->desc->init(&host_table, ctx, &state);
        if (r >= 0 && blob) {
                int (*restore)(void *, const void *, size_t) = PLUGIN_HOOK(so, restore_state);
                if (restore && (r = restore(state, blob, blob_len)) < 0) {
                        /* first: a fini that cancels its commands must not kill the adopted ones */
                        ctx_hand_over_abort(ctx);
                        void (*fini)(void *) = PLUGIN_HOOK(so, fini);
                        if (fini)
                                fini(state);
                }
        }
        in->ctx = old_ctx;
        in->so = old_so;
        if (r < 0) {
                ctx_hand_over_abort(ctx);
                ctx_free(ctx);
                in->generation--;
                bus_client_unsubscribe_range(in->client, marker, UINT64_MAX, 0);
                if (asprintf(ret_error, "init of %s failed: %s", so->path, strerror(-r)) < 0)
                        *ret_error = NULL;
                return r;
        }
        /* Commit: retire the old generation, if any, then switch. Its fini runs before
         * the hand-over ends, so it still sees as its own exactly the commands the new
         * generation did not adopt (and may fail them in its own words); the host
         * kills what fini left of those. */
        if (old_ctx) {
                void (*fini)(void *) = PLUGIN_HOOK(old_so, fini);
                if (fini)
                        fini(in->state);
        }
        ctx_hand_over_commit(ctx);
        ctx_free(old_ctx);
        bus_client_unsubscribe_range(in->client, 0, marker, in->ctl_sid);
        in->ctx = ctx;
        in->state = state;
        return 0;
}

static int set_config_text(instance *in, json_t *cj) {
        char *text = json_dumps(cj, JSON_COMPACT | JSON_SORT_KEYS);
        if (!text)
                return -ENOMEM;
        json_decref(in->cfg.config_json);
        in->cfg.config_json = cj;
        free(in->config_text);
        in->config_text = text;
        return 0;
}

int instance_start(instance *in) {
        if (in->run_state == INSTANCE_RUNNING)
                return 0;
        if (in->iso) /* an isolated instance that failed keeps its descriptor until here */
                instance_stop(in, in->run_state);
        _cleanup_free_ char *err = NULL;
        int r;
        if (!in->so_path) {
                r = -ENOENT;
                if (asprintf(&err, "plugin \"%s\" not found in plugin_dirs", in->cfg.plugin) < 0)
                        err = NULL;
                goto fail;
        }
        plugin_so *so = NULL;
        json_t *cj = NULL;
        r = load_checked(in, &in->cfg, in->so_path, &so, &cj, &err);
        if (r < 0)
                goto fail;
        json_t *old_json = json_incref(in->cfg.config_json);
        r = set_config_text(in, cj);
        if (r < 0) {
                json_decref(old_json);
                json_decref(cj);
                plugin_close(so);
                goto fail;
        }
        /* old_json is ours from here: released below on success, restored on failure */
        r = start_generation(in, so, NULL, 0, &err);
        if (r < 0) {
                plugin_close(so);
                set_config_text(in, old_json ? old_json : json_object());
                goto fail;
        }
        json_decref(old_json);
        in->so = so;
        in->loaded_at_us = now_realtime_us();
        r = arm_tick(in);
        if (r < 0) {
                err = strdup("cannot arm the tick timer");
                instance_stop(in, INSTANCE_FAILED);
                goto fail;
        }
        in->run_state = INSTANCE_RUNNING;
        set_error(in, NULL);
        log_internal(LOG_INFO, 0, in->cfg.plugin, in->name, "started (%s %s, interval %llu ms)", so->desc->name,
                     so->desc->version ? so->desc->version : "?", (unsigned long long)in->cfg.interval_ms);
        return 0;
fail:
        in->run_state = INSTANCE_FAILED;
        set_error(in, err ? err : strerror(-r));
        log_internal(LOG_ERR, 0, in->cfg.plugin, in->name, "failed to start: %s", in->error ? in->error : "?");
        return r;
}

void instance_stop(instance *in, instance_state new_state) {
        isolate_free(in->iso);
        in->iso = NULL;
        if (in->ctx) {
                void (*fini)(void *) = PLUGIN_HOOK(in->so, fini);
                if (fini)
                        fini(in->state);
                ctx_free(in->ctx);
                in->ctx = NULL;
                in->state = NULL;
        }
        in->tick_source = sd_event_source_disable_unref(in->tick_source);
        plugin_close(in->so);
        in->so = NULL;
        if (in->client) {
                bus_client_unsubscribe_all(in->client);
                subscribe_ctl(in); /* calls to a stopped instance get a clear error */
        }
        in->run_state = new_state;
}

int instance_reload(instance *in, const instance_config *new_cfg, const char *new_so_path, char **ret_error) {
        const instance_config *ic = new_cfg ? new_cfg : &in->cfg;
        const char *so_path = new_so_path ? new_so_path : in->so_path;
        uint64_t t0 = now_monotonic_us();
        *ret_error = NULL;

        /* into or out of a child process: a plain restart */
        if (in->run_state == INSTANCE_RUNNING && new_cfg && new_cfg->isolate != in->cfg.isolate)
                instance_stop(in, INSTANCE_STOPPED);
        if (in->run_state != INSTANCE_RUNNING) {
                /* nothing runs: a reload is a fresh start with the new file and config */
                if (new_cfg) {
                        int r = cfg_copy_into(in, new_cfg);
                        if (r < 0)
                                return r;
                }
                if (new_so_path) {
                        char *p = strdup(new_so_path);
                        if (!p)
                                return -ENOMEM;
                        free(in->so_path);
                        in->so_path = p;
                }
                int r = instance_start(in);
                if (r < 0 && in->error)
                        *ret_error = strdup(in->error);
                return r;
        }

        plugin_so *so = NULL;
        json_t *cj = NULL;
        int r = load_checked(in, ic, so_path, &so, &cj, ret_error);
        if (r < 0)
                return r;

        void *blob = NULL;
        size_t blob_len = 0;
        int (*save)(void *, void **, size_t *) = PLUGIN_HOOK(in->so, save_state);
        if (in->iso)
                save = NULL; /* the child saves; a child without save_state answers -EOPNOTSUPP */
        if (in->iso && PLUGIN_HOOK(in->so, save_state) && PLUGIN_HOOK(so, restore_state) &&
            isolate_save(in->iso, &blob, &blob_len) < 0) {
                log_internal(LOG_WARNING, 0, in->cfg.plugin, in->name, "save_state failed; the new generation starts fresh");
                free(blob);
                blob = NULL;
        }
        if (save && PLUGIN_HOOK(so, restore_state) && save(in->state, &blob, &blob_len) < 0) {
                log_internal(LOG_WARNING, 0, in->cfg.plugin, in->name, "save_state failed; the new generation starts fresh");
                free(blob);
                blob = NULL;
        }

        /* The new generation must see its new config during init. */
        instance_config old_cfg = in->cfg;
        ynode *old_own = in->own_config;
        char *old_fp = in->fingerprint, *old_text = in->config_text;
        in->cfg = (instance_config){0};
        in->own_config = NULL;
        in->fingerprint = NULL;
        in->config_text = NULL;
        r = cfg_copy_into(in, ic == &in->cfg ? &old_cfg : ic);
        if (r >= 0 && (r = set_config_text(in, cj)) >= 0)
                cj = NULL; /* taken */
        json_decref(cj);
        if (r >= 0)
                r = start_generation(in, so, blob, blob_len, ret_error);
        free(blob);
        if (r < 0) {
                /* put the old config back; the old generation never stopped */
                cfg_clear(&in->cfg);
                ynode_free(in->own_config);
                free(in->fingerprint);
                free(in->config_text);
                in->cfg = old_cfg;
                in->own_config = old_own;
                in->fingerprint = old_fp;
                in->config_text = old_text;
                plugin_close(so);
                log_internal(LOG_ERR, 0, in->cfg.plugin, in->name, "reload refused, the running version stays: %s",
                             *ret_error ? *ret_error : strerror(-r));
                return r;
        }
        cfg_clear(&old_cfg);
        ynode_free(old_own);
        free(old_fp);
        free(old_text);

        plugin_close(in->so);
        in->so = so;
        if (new_so_path) {
                char *p = strdup(new_so_path);
                if (p) {
                        free(in->so_path);
                        in->so_path = p;
                }
        }
        in->tick_source = sd_event_source_disable_unref(in->tick_source);
        r = arm_tick(in);
        if (r < 0) {
                *ret_error = strdup("the new generation runs, but its tick timer could not be armed");
                instance_stop(in, INSTANCE_FAILED);
                set_error(in, "cannot arm the tick timer");
                return r;
        }
        in->reloads++;
        in->loaded_at_us = now_realtime_us();
        log_internal(LOG_INFO, 0, in->cfg.plugin, in->name, "reloaded %s (%s) in %llu us", so->path,
                     so->desc->version ? so->desc->version : "?", (unsigned long long)(now_monotonic_us() - t0));
        return 0;
}

int instance_open_store(instance *in) {
        if (in->store)
                return 0;
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s/%s.db", in->agent->config->state_dir, in->name) < 0)
                return -ENOMEM;
        int r = store_open(path, &in->store);
        if (r < 0)
                return log_internal(LOG_ERR, r, in->cfg.plugin, in->name, "cannot open store %s: %m", path);
        return 0;
}

void instance_free(instance *in) {
        if (!in)
                return;
        instance_stop(in, INSTANCE_STOPPED);
        bus_client_free(in->client);
        store_close(in->store);
        cfg_clear(&in->cfg);
        ynode_free(in->own_config);
        free(in->fingerprint);
        free(in->config_text);
        free(in->so_path);
        free(in->error);
        free(in->name);
        free(in);
}

json_t *instance_to_json(const instance *in, bool detailed) {
        bus_client_stats st;
        bus_client_get_stats(in->client, &st);
        json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "name", in->name, "plugin",
                              in->cfg.plugin, "state", instance_state_to_string(in->run_state), "enabled",
                              in->cfg.enabled, "interval_ms", (json_int_t)in->cfg.interval_ms, "ticks",
                              (json_int_t)in->ticks, "handled", (json_int_t)in->handled, "queued",
                              (json_int_t)st.queued, "dropped", (json_int_t)st.dropped, "reloads",
                              (json_int_t)in->reloads, "generation", (json_int_t)in->generation);
        if (!o)
                return NULL;
        json_object_set_new(o, "ticks_skipped", json_integer((json_int_t)in->ticks_skipped));
        if (in->so) {
                json_object_set_new(o, "version", json_string(in->so->desc->version ? in->so->desc->version : ""));
                json_object_set_new(o, "path", json_string(in->so->path));
        } else if (in->so_path)
                json_object_set_new(o, "path", json_string(in->so_path));
        if (in->error)
                json_object_set_new(o, "error", json_string(in->error));
        json_object_set_new(o, "dry_run", json_boolean(instance_dry_run(in)));
        if (in->cfg.isolate)
                isolate_to_json(in->iso, o);
        if (!detailed)
                return o;

        json_object_set_new(o, "calls", json_integer((json_int_t)in->calls));
        json_object_set_new(o, "hook_errors", json_integer((json_int_t)in->hook_errors));
        json_object_set_new(o, "tick_us_last", json_integer((json_int_t)in->tick_us_last));
        json_object_set_new(o, "tick_us_max", json_integer((json_int_t)in->tick_us_max));
        json_object_set_new(o, "queue_max", json_integer((json_int_t)st.queue_max));
        json_object_set_new(o, "delivered", json_integer((json_int_t)st.delivered));
        char **pats = bus_client_patterns(in->client);
        json_t *subs = json_array();
        for (size_t i = 0; pats && pats[i]; i++)
                json_array_append_new(subs, json_string(pats[i]));
        strv_free(pats);
        json_object_set_new(o, "subscriptions", subs);
        json_object_set_new(o, "config", in->cfg.config_json ? json_incref(in->cfg.config_json) : json_object());
        /* running commands, with the generation that started them (an adopted one runs on) */
        json_object_set_new(o, "execs", in->cfg.isolate ? isolate_execs_to_json(in->iso) : ctx_execs_to_json(in->ctx));
        if (in->so) {
                const org_plugin *d = in->so->desc;
                json_object_set_new(o, "summary", json_string(d->summary ? d->summary : ""));
                json_t *hooks = json_array();
                if (PLUGIN_HOOK(in->so, tick))
                        json_array_append_new(hooks, json_string("tick"));
                if (PLUGIN_HOOK(in->so, handle))
                        json_array_append_new(hooks, json_string("handle"));
                if (PLUGIN_HOOK(in->so, call))
                        json_array_append_new(hooks, json_string("call"));
                if (PLUGIN_HOOK(in->so, verify))
                        json_array_append_new(hooks, json_string("verify"));
                if (PLUGIN_HOOK(in->so, save_state))
                        json_array_append_new(hooks, json_string("save_state"));
                json_object_set_new(o, "hooks", hooks);
        }
        return o;
}
