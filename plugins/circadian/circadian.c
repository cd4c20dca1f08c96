/* circadian.c — the circadian plugin's hooks and verbs: reads the phases and actions
 * from the config, enters the phase in force (actions, then `circadian.phase` on the
 * bus) at start and at each boundary, woken by one wall-clock timer armed at the exact
 * next boundary (no polling), re-evaluates when the wall clock is set, and keeps an
 * operator's override (persisted in the kv store) until it expires or is cleared.
 *
 * Never flapping comes from one rule: whatever woke us (boundary timer, clock change,
 * override expiry, a verb), the phase is computed from the current instant and
 * published only if it differs from the phase entered last. The pure computation is
 * in schedule.c, the override's data in override.c, the levers in actions.c. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include <organism/plugin.h>

#include "actions.h"
#include "override.h"
#include "schedule.h"

#define CIRCADIAN_SUBJECT "circadian.phase"
#define CIRCADIAN_GET_SUBJECT "circadian.phase.get" /* request: the phase in force now */
#define CIRCADIAN_US 1000000ULL

typedef struct circadian {
        const org_host *host;
        org_ctx *ctx;
        circadian_schedule sched;
        circadian_action *actions; /* one per phase, same index as sched.phases */
        circadian_override ovr;
        bool entered;     /* a phase was entered (published) since init */
        size_t phase;     /* the phase entered last */
        uint64_t timer_id; /* the one wall-clock timer, 0 when none */
        uint64_t timer_at;
        uint64_t time_change_id;
        uint64_t changes;
} circadian;

/* What holds at an instant, the override taken into account. */
typedef struct circadian_view {
        size_t phase;
        uint64_t since_us;
        bool has_next; /* false under an override without expiry */
        size_t next;
        uint64_t next_at_us;
        bool override;
        circadian_eval sched; /* the schedule alone */
} circadian_view;

static const org_config_entry circadian_action_entries[] = {
        {.key = "governor", .type = ORG_CFG_STRING,
         .choices = ORG_CHOICES("performance", "powersave", "schedutil", "ondemand", "conservative", "userspace"),
         .help = "CPU frequency governor written to every cpu*/cpufreq/scaling_governor on entering the phase"},
        {.key = "gpu_cache_sync", .type = ORG_CFG_BOOL, .default_value = "false",
         .help = "publish gpu.cache.sync {gpu: all} on entering the phase"},
        ORG_CONFIG_END,
};

static const org_config_entry circadian_config_map[] = {
        {.key = "phases", .type = ORG_CFG_STRING_DICT, .default_value = "{day: \"07:00\", night: \"22:00\"}",
         .format = "hh:mm",
         .help = "phase name -> local start time \"HH:MM\" (or \"HH:MM:SS\"); a phase lasts until the next one starts"},
        {.key = "actions", .type = ORG_CFG_DICT, .children = circadian_action_entries,
         .help = "phase name -> what to do on entering it: {governor, gpu_cache_sync}; none by default"},
        ORG_CONFIG_END,
};

static const org_verb circadian_verbs[] = {
        {.name = "status", .mutating = false,
         .help = "phase in force, since, next, next_at, the override and the schedule"},
        {.name = "set", .mutating = true, .args = "{\"phase\": NAME, \"for\": \"2h\"} (no \"for\": until cleared)",
         .help = "force a phase (manual override), kept across restarts until it expires"},
        {.name = "clear", .mutating = true, .help = "end the override: back to the schedule"},
        ORG_VERBS_END,
};

static int circadian_view_at(const circadian *c, uint64_t now_us, circadian_view *ret) {
        circadian_view v = {0};
        int r = circadian_schedule_eval(&c->sched, (int64_t)(now_us / CIRCADIAN_US), &v.sched);
        if (r < 0)
                return r;
        long o = c->ovr.active && !circadian_override_expired(&c->ovr, now_us)
                         ? circadian_schedule_find(&c->sched, c->ovr.phase)
                         : -1;
        if (o >= 0) {
                v.override = true;
                v.phase = (size_t)o;
                v.since_us = c->ovr.since_us;
                if (c->ovr.until_us) {
                        circadian_eval after;
                        if ((r = circadian_schedule_eval(&c->sched, (int64_t)(c->ovr.until_us / CIRCADIAN_US), &after)) <
                            0)
                                return r;
                        v.has_next = true;
                        v.next = after.cur;
                        v.next_at_us = c->ovr.until_us;
                }
        } else {
                v.phase = v.sched.cur;
                v.since_us = (uint64_t)v.sched.since * CIRCADIAN_US;
                v.has_next = true;
                v.next = v.sched.next;
                v.next_at_us = (uint64_t)v.sched.next_at * CIRCADIAN_US;
        }
        *ret = v;
        return 0;
}

/* {ts, phase, since, next, next_at, override}: the payload of circadian.phase and the
 * head of `status`. next/next_at are null under an override without expiry. */
static json_t *circadian_view_json(const circadian *c, const circadian_view *v, uint64_t now_us) {
        char ts[CIRCADIAN_TIME_MAX], since[CIRCADIAN_TIME_MAX], next_at[CIRCADIAN_TIME_MAX];
        circadian_format_rfc3339(now_us, ts, sizeof ts);
        circadian_format_rfc3339(v->since_us, since, sizeof since);
        circadian_format_rfc3339(v->next_at_us, next_at, sizeof next_at);
        return json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:b}", "ts", ts, "phase", c->sched.phases[v->phase].name, "since",
                         since, "next", v->has_next ? c->sched.phases[v->next].name : NULL, "next_at",
                         v->has_next ? next_at : NULL, "override", v->override);
}

static void circadian_persist_override(circadian *c) {
        char *text = circadian_override_to_json(&c->ovr);
        int r = text ? c->host->kv_set(c->ctx, CIRCADIAN_OVERRIDE_KEY, text) : -ENOMEM;
        free(text);
        if (r < 0)
                c->host->log(c->ctx, ORG_LOG_WARNING, "cannot persist the override (it holds until a restart): %s",
                             strerror(-r));
}

static void circadian_metrics(circadian *c) {
        const org_host *h = c->host;
        h->metric_set(c->ctx, "circadian_phase_index", ORG_METRIC_GAUGE, (double)c->phase,
                      "phase in force: its index in the schedule sorted by start time");
        h->metric_set(c->ctx, "circadian_override", ORG_METRIC_GAUGE, c->ovr.active ? 1.0 : 0.0,
                      "1 while a manual override holds");
        h->metric_set(c->ctx, "circadian_phase_changes_total", ORG_METRIC_COUNTER, (double)c->changes,
                      "phases entered since start");
        for (size_t i = 0; i < c->sched.n; i++) {
                char name[CIRCADIAN_NAME_MAX + 48];
                snprintf(name, sizeof name, "circadian_phase_active{phase=\"%s\"}", c->sched.phases[i].name);
                h->metric_set(c->ctx, name, ORG_METRIC_GAUGE, i == c->phase ? 1.0 : 0.0, "1 for the phase in force");
        }
}

/* Enters v->phase: its actions first, so that whoever reacts to circadian.phase finds
 * them done, then the event. */
static int circadian_enter(circadian *c, const circadian_view *v, uint64_t now_us) {
        const org_host *h = c->host;
        const char *name = c->sched.phases[v->phase].name;
        const circadian_action *a = &c->actions[v->phase];
        bool first = !c->entered;
        c->entered = true;
        c->phase = v->phase;
        c->changes++;

        char since[CIRCADIAN_TIME_MAX], next_at[CIRCADIAN_TIME_MAX];
        circadian_format_rfc3339(v->since_us, since, sizeof since);
        circadian_format_rfc3339(v->next_at_us, next_at, sizeof next_at);
        h->log(c->ctx, ORG_LOG_NOTICE, "%s phase %s%s since %s, next %s at %s", first ? "starting in" : "entering", name,
               v->override ? " (override)" : "", since, v->has_next ? c->sched.phases[v->next].name : "-",
               v->has_next ? next_at : "-");

        if (a->governor[0]) {
                circadian_apply_result res = {0};
                if (circadian_governor_apply(h, c->ctx, a->governor, &res) >= 0)
                        h->log(c->ctx, res.failed ? ORG_LOG_WARNING : ORG_LOG_INFO,
                               "governor %s on %u cpus: %u %s, %u failed", a->governor, res.cpus, res.changed,
                               h->dry_run(c->ctx) ? "would change" : "changed", res.failed);
        }
        if (a->gpu_cache_sync) {
                int r = circadian_cache_sync_publish(h, c->ctx, name, now_us);
                if (r < 0)
                        h->log(c->ctx, ORG_LOG_WARNING, "cannot publish %s: %s", CIRCADIAN_CACHE_SYNC_SUBJECT,
                               strerror(-r));
        }

        json_t *o = circadian_view_json(c, v, now_us);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = h->publish(c->ctx, CIRCADIAN_SUBJECT, NULL, 0, text, strlen(text));
        free(text);
        return r;
}

static void circadian_on_timer(org_ctx *ctx, uint64_t id, void *userdata);

/* One timer at the next instant anything can change: the next boundary, or the
 * override's expiry if sooner. Left alone when already there (a clock change does not
 * move an absolute wall-clock timer). */
static int circadian_arm(circadian *c, const circadian_view *v) {
        uint64_t at = (uint64_t)v->sched.next_at * CIRCADIAN_US;
        if (v->override && v->has_next && v->next_at_us < at)
                at = v->next_at_us;
        if (c->timer_id && c->timer_at == at)
                return 0;
        if (c->timer_id)
                (void)c->host->timer_cancel(c->ctx, c->timer_id);
        c->timer_id = 0;
        int r = c->host->timer_add_realtime(c->ctx, at, circadian_on_timer, c, &c->timer_id);
        if (r < 0)
                return r;
        c->timer_at = at;
        return 0;
}

/* The one place that decides: called by every wake-up. */
static int circadian_update(circadian *c) {
        uint64_t now = c->host->now_realtime_us(c->ctx);
        if (circadian_override_expired(&c->ovr, now)) {
                c->host->log(c->ctx, ORG_LOG_NOTICE, "override %s expired", c->ovr.phase);
                c->ovr.active = false;
                circadian_persist_override(c);
        }
        circadian_view v;
        int r = circadian_view_at(c, now, &v);
        if (r < 0) {
                c->host->log(c->ctx, ORG_LOG_ERR, "cannot compute the phase in the local time zone: %s", strerror(-r));
                return r;
        }
        if (!c->entered || v.phase != c->phase) {
                r = circadian_enter(c, &v, now);
                if (r < 0)
                        c->host->log(c->ctx, ORG_LOG_WARNING, "cannot publish %s: %s", CIRCADIAN_SUBJECT, strerror(-r));
        }
        circadian_metrics(c);
        r = circadian_arm(c, &v);
        if (r < 0)
                c->host->log(c->ctx, ORG_LOG_ERR, "cannot arm the boundary timer: %s", strerror(-r));
        return r;
}

static void circadian_on_timer(org_ctx *ctx, uint64_t id, void *userdata) {
        circadian *c = userdata;
        if (id == c->timer_id)
                c->timer_id = 0; /* a one-shot: the host dropped it */
        (void)circadian_update(c);
}

static void circadian_on_time_change(org_ctx *ctx, uint64_t id, void *userdata) {
        circadian *c = userdata;
        c->host->log(c->ctx, ORG_LOG_INFO, "wall clock set: re-evaluating the phase");
        (void)circadian_update(c);
}

static void circadian_free(circadian *c) {
        if (!c)
                return;
        if (c->timer_id)
                (void)c->host->timer_cancel(c->ctx, c->timer_id);
        if (c->time_change_id)
                (void)c->host->timer_cancel(c->ctx, c->time_change_id);
        circadian_schedule_clear(&c->sched);
        free(c->actions);
        free(c);
}

/* Reads phases and actions from the checked config (the host filled the defaults; the
 * fake host of the tests may not, hence the built-in default). Logs each fault. */
static int circadian_load_config(circadian *c) {
        const org_host *h = c->host;
        json_error_t e;
        json_t *cfg = json_loads(h->config_json(c->ctx), 0, &e);
        if (!cfg || !json_is_object(cfg)) {
                json_decref(cfg);
                h->log(c->ctx, ORG_LOG_ERR, "config is not a JSON object: %s", e.text);
                return -EINVAL;
        }
        int r = 0;
        json_t *phases = json_object_get(cfg, "phases");
        json_t *deflt = NULL;
        if (!phases || json_is_null(phases))
                phases = deflt = json_pack("{s:s, s:s}", "day", "07:00", "night", "22:00");
        const char *name;
        json_t *val;
        if (!json_is_object(phases) || json_object_size(phases) == 0) {
                h->log(c->ctx, ORG_LOG_ERR, "phases: needs at least one phase, e.g. {day: \"07:00\", night: \"22:00\"}");
                r = -EINVAL;
                goto out;
        }
        json_object_foreach(phases, name, val) {
                int start;
                const char *clash = NULL;
                if (!circadian_name_valid(name)) {
                        h->log(c->ctx, ORG_LOG_ERR, "phases.%s: a phase name is 1-63 of [A-Za-z0-9_.-]", name);
                        r = -EINVAL;
                        goto out;
                }
                if (!json_is_string(val) || circadian_parse_clock(json_string_value(val), &start) < 0) {
                        h->log(c->ctx, ORG_LOG_ERR, "phases.%s: \"%s\" is not a local start time HH:MM (00:00-23:59)",
                               name, json_is_string(val) ? json_string_value(val) : "(not a string)");
                        r = -EINVAL;
                        goto out;
                }
                r = circadian_schedule_add(&c->sched, name, start, &clash);
                if (r == -EEXIST) {
                        h->log(c->ctx, ORG_LOG_ERR,
                               "phases.%s: starts at %s like phases.%s: two phases cannot start at the same time", name,
                               json_string_value(val), clash);
                        r = -EINVAL;
                }
                if (r < 0)
                        goto out;
        }
        c->actions = calloc(c->sched.n, sizeof *c->actions);
        if (!c->actions) {
                r = -ENOMEM;
                goto out;
        }
        json_t *actions = json_object_get(cfg, "actions");
        if (actions && !json_is_null(actions) && !json_is_object(actions)) {
                h->log(c->ctx, ORG_LOG_ERR, "actions: must be a mapping phase -> {governor, gpu_cache_sync}");
                r = -EINVAL;
                goto out;
        }
        json_object_foreach(actions, name, val) {
                long i = circadian_schedule_find(&c->sched, name);
                if (i < 0) {
                        h->log(c->ctx, ORG_LOG_ERR, "actions.%s: no phase of that name in phases", name);
                        r = -EINVAL;
                        goto out;
                }
                json_t *gov = json_object_get(val, "governor"), *sync = json_object_get(val, "gpu_cache_sync");
                if (gov && !json_is_null(gov)) {
                        if (!json_is_string(gov) || !circadian_governor_valid(json_string_value(gov))) {
                                h->log(c->ctx, ORG_LOG_ERR,
                                       "actions.%s.governor: not a governor name (performance, powersave, schedutil, ...)",
                                       name);
                                r = -EINVAL;
                                goto out;
                        }
                        snprintf(c->actions[i].governor, sizeof c->actions[i].governor, "%s", json_string_value(gov));
                }
                if (sync && !json_is_null(sync)) {
                        if (!json_is_boolean(sync)) {
                                h->log(c->ctx, ORG_LOG_ERR, "actions.%s.gpu_cache_sync: must be true or false", name);
                                r = -EINVAL;
                                goto out;
                        }
                        c->actions[i].gpu_cache_sync = json_is_true(sync);
                }
        }
out:
        json_decref(deflt);
        json_decref(cfg);
        return r;
}

/* The override a previous run left, if it still applies. */
static void circadian_restore_override(circadian *c) {
        char *text = NULL;
        if (c->host->kv_get(c->ctx, CIRCADIAN_OVERRIDE_KEY, &text) < 0)
                return;
        circadian_override o;
        int r = circadian_override_from_json(text, &o);
        free(text);
        uint64_t now = c->host->now_realtime_us(c->ctx);
        if (r < 0)
                c->host->log(c->ctx, ORG_LOG_WARNING, "ignoring a malformed persisted override");
        else if (o.active && circadian_schedule_find(&c->sched, o.phase) < 0)
                c->host->log(c->ctx, ORG_LOG_NOTICE, "dropping the persisted override: no phase %s any more", o.phase);
        else if (circadian_override_expired(&o, now))
                c->host->log(c->ctx, ORG_LOG_INFO, "the persisted override %s expired while stopped", o.phase);
        else {
                c->ovr = o;
                return;
        }
        c->ovr.active = false;
        circadian_persist_override(c);
}

static int circadian_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        if (!ORG_HOST_HAS(host, timer_add_realtime) || !ORG_HOST_HAS(host, time_change_add)) {
                host->log(ctx, ORG_LOG_ERR, "this agentd has no wall-clock timers: circadian needs a newer one");
                return -EOPNOTSUPP;
        }
        circadian *c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->host = host;
        c->ctx = ctx;
        /* the local time zone is read once (TZ, else /etc/localtime): a change of zone
         * takes a restart of the instance */
        tzset();
        int r = circadian_load_config(c);
        if (r < 0)
                goto fail;
        circadian_restore_override(c);
        r = host->time_change_add(ctx, circadian_on_time_change, c, &c->time_change_id);
        if (r < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot watch wall-clock changes: %s", strerror(-r));
                goto fail;
        }
        /* whoever starts after our first event asks for the phase in force */
        r = host->subscribe(ctx, CIRCADIAN_GET_SUBJECT, NULL);
        if (r < 0)
                goto fail;
        r = circadian_update(c);
        if (r < 0)
                goto fail;
        *ret_state = c;
        return 0;
fail:
        circadian_free(c);
        return r;
}

static int circadian_reply(circadian *c, const org_msg *req, json_t *o);

/* circadian.phase.get: the payload of the last circadian.phase, as of now. */
static int circadian_handle(void *state, const org_msg *msg) {
        circadian *c = state;
        if (!msg->reply || strcmp(msg->subject, CIRCADIAN_GET_SUBJECT) != 0 || !c->entered)
                return 0;
        uint64_t now = c->host->now_realtime_us(c->ctx);
        circadian_view v;
        if (circadian_view_at(c, now, &v) < 0)
                return -EINVAL;
        return circadian_reply(c, msg, circadian_view_json(c, &v, now));
}

static void circadian_fini(void *state) { circadian_free(state); }

/* Answers req with o (stolen). */
static int circadian_reply(circadian *c, const org_msg *req, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = c->host->respond(c->ctx, req->reply, text, strlen(text));
        free(text);
        return r;
}

static int circadian_reply_error(circadian *c, const org_msg *req, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static int circadian_reply_error(circadian *c, const org_msg *req, const char *fmt, ...) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        return circadian_reply(c, req, json_pack("{s:s}", "error", buf));
}

static json_t *circadian_status_json(circadian *c) {
        uint64_t now = c->host->now_realtime_us(c->ctx);
        circadian_view v;
        if (circadian_view_at(c, now, &v) < 0)
                return NULL;
        json_t *o = circadian_view_json(c, &v, now);
        if (!o)
                return NULL;
        char a[CIRCADIAN_TIME_MAX], b[CIRCADIAN_TIME_MAX];
        circadian_format_rfc3339((uint64_t)v.sched.since * CIRCADIAN_US, a, sizeof a);
        circadian_format_rfc3339((uint64_t)v.sched.next_at * CIRCADIAN_US, b, sizeof b);
        json_object_set_new(o, "scheduled",
                            json_pack("{s:s, s:s, s:s, s:s}", "phase", c->sched.phases[v.sched.cur].name, "since", a,
                                      "next", c->sched.phases[v.sched.next].name, "next_at", b));
        if (v.override) {
                circadian_format_rfc3339(c->ovr.since_us, a, sizeof a);
                circadian_format_rfc3339(c->ovr.until_us, b, sizeof b);
                json_object_set_new(o, "override", json_pack("{s:s, s:s, s:s?}", "phase", c->ovr.phase, "since", a,
                                                             "until", c->ovr.until_us ? b : NULL));
        } else
                json_object_set_new(o, "override", json_null());
        json_t *sched = json_array();
        for (size_t i = 0; sched && i < c->sched.n; i++) {
                char start[16];
                circadian_format_clock(c->sched.phases[i].start, start, sizeof start);
                json_array_append_new(sched, json_pack("{s:s, s:s, s:s?, s:b}", "phase", c->sched.phases[i].name,
                                                       "start", start, "governor",
                                                       c->actions[i].governor[0] ? c->actions[i].governor : NULL,
                                                       "gpu_cache_sync", c->actions[i].gpu_cache_sync));
        }
        json_object_set_new(o, "schedule", sched ? sched : json_null());
        return o;
}

/* set: {"phase": P, "for": "2h"}, or just "P" (a JSON string); `agentctl circadian set
 * night --for 2h` sends {"args": ["night"], "for": "2h"}. */
static int circadian_verb_set(circadian *c, const org_msg *req) {
        json_error_t e;
        json_t *args = json_loadb(req->data, req->len, JSON_DECODE_ANY, &e);
        const char *phase = NULL, *dur = NULL;
        json_t *jfor = NULL;
        if (json_is_string(args))
                phase = json_string_value(args);
        else if (json_is_object(args)) {
                phase = json_string_value(json_object_get(args, "phase"));
                if (!phase)
                        phase = json_string_value(json_array_get(json_object_get(args, "args"), 0));
                jfor = json_object_get(args, "for");
                if (jfor && !json_is_null(jfor) && !(dur = json_string_value(jfor))) {
                        json_decref(args);
                        return circadian_reply_error(c, req, "\"for\" must be a duration string like \"2h\" or \"90m\"");
                }
        }
        int r;
        if (!phase) {
                r = circadian_reply_error(c, req, "set needs {\"phase\": NAME, \"for\": DURATION (optional)}");
                goto out;
        }
        if (circadian_schedule_find(&c->sched, phase) < 0) {
                char known[512] = "";
                size_t off = 0;
                for (size_t i = 0; i < c->sched.n && off < sizeof known; i++)
                        off += (size_t)snprintf(known + off, sizeof known - off, "%s%s", i ? ", " : "",
                                                c->sched.phases[i].name);
                r = circadian_reply_error(c, req, "unknown phase \"%s\" (phases: %s)", phase, known);
                goto out;
        }
        uint64_t ms = 0;
        if (dur && circadian_parse_duration(dur, &ms) < 0) {
                r = circadian_reply_error(c, req, "bad duration \"%s\": use e.g. 90s, 45m, 2h, 1h30m, 1d", dur);
                goto out;
        }
        uint64_t now = c->host->now_realtime_us(c->ctx);
        circadian_override o = {.active = true, .since_us = now, .until_us = dur ? now + ms * 1000 : 0};
        snprintf(o.phase, sizeof o.phase, "%s", phase);
        c->ovr = o;
        c->host->log(c->ctx, ORG_LOG_NOTICE, "override: phase %s %s%s", phase, dur ? "for " : "until cleared",
                     dur ? dur : "");
        circadian_persist_override(c);
        (void)circadian_update(c);
        r = circadian_reply(c, req, circadian_status_json(c));
out:
        json_decref(args);
        return r;
}

static int circadian_verb_clear(circadian *c, const org_msg *req) {
        if (c->ovr.active) {
                c->host->log(c->ctx, ORG_LOG_NOTICE, "override %s cleared: back to the schedule", c->ovr.phase);
                c->ovr.active = false;
                circadian_persist_override(c);
                (void)circadian_update(c);
        }
        return circadian_reply(c, req, circadian_status_json(c));
}

static int circadian_call(void *state, const char *verb, const org_msg *req) {
        circadian *c = state;
        if (strcmp(verb, "status") == 0)
                return circadian_reply(c, req, circadian_status_json(c));
        if (strcmp(verb, "set") == 0)
                return circadian_verb_set(c, req);
        if (strcmp(verb, "clear") == 0)
                return circadian_verb_clear(c, req);
        return -EOPNOTSUPP;
}

/* The phase entered is the one in force now, and the CPUs run its governor. */
static int circadian_verify(void *state, char **ret_json) {
        circadian *c = state;
        uint64_t now = c->host->now_realtime_us(c->ctx);
        circadian_view v;
        int r = circadian_view_at(c, now, &v);
        if (r < 0)
                return r;
        json_t *checks = json_array();
        if (!checks)
                return -ENOMEM;
        const char *want = c->sched.phases[v.phase].name, *have = c->entered ? c->sched.phases[c->phase].name : "none";
        bool ok = c->entered && c->phase == v.phase;
        json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:b}", "what", "phase", "want", want, "have", have,
                                                "ok", ok));
        if (c->actions[v.phase].governor[0]) {
                bool gov_ok = false;
                circadian_governor_verify(c->host, c->ctx, c->actions[v.phase].governor, checks, &gov_ok);
                ok = ok && gov_ok;
        }
        json_t *o = json_pack("{s:b, s:o}", "ok", ok, "checks", checks);
        *ret_json = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return *ret_json ? 0 : -ENOMEM;
}

ORG_PLUGIN_DEFINE(.name = "circadian", .version = "1.0.0",
                  .summary = "day/night phases at exact local-time boundaries, per-phase CPU governor and cache sync, "
                             "manual override",
                  .config_map = circadian_config_map, .verbs = circadian_verbs, .init = circadian_init,
                  .handle = circadian_handle, .call = circadian_call, .fini = circadian_fini, .verify = circadian_verify);
