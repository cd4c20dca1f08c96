/* memory.c — "membrain", the memory homeostasis plugin: its descriptor, config map and
 * hooks, the `status` and `history` verbs, and the evaluation that runs on each tick,
 * on each PSI event and on each phase change: read (readings.c), decide (rules.c), act
 * (levers.c), record (journal.c), then publish `sys.mem.state` and the metrics.
 *
 * It takes the phase from `circadian.phase` and never reads the clock to decide, so
 * circadian and membrain cannot fight over the profile. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "memory.h"

#define MEMORY_VERSION "1.0.0"
#define HISTORY_DEFAULT 20
#define HISTORY_MAX 1000

static const org_config_entry profile_entries[] = {
        {.key = "arc_max", .type = ORG_CFG_SIZE, .min = "1",
         .help = "ZFS ARC ceiling (zfs_arc_max) in this phase, never below arc_floor"},
        {.key = "balloon_mb", .type = ORG_CFG_INT, .min = "1", .max = "1073741824",
         .help = "balloon target of the VM in MiB"},
        {.key = "swappiness", .type = ORG_CFG_INT, .min = "0", .max = "200", .help = "vm.swappiness, 0 to 200"},
        ORG_CONFIG_END,
};

static const org_config_entry config_map[] = {
        {.key = "vmid", .type = ORG_CFG_INT, .min = "1",
         .help = "Proxmox VM whose balloon is steered; absent: no balloon lever"},
        {.key = "mem_low", .type = ORG_CFG_SIZE, .default_value = "3GiB",
         .help = "MemAvailable below this: alert (sys.mem.alert) and the alert profile"},
        {.key = "mem_ok", .type = ORG_CFG_SIZE, .default_value = "6GiB",
         .help = "MemAvailable above this: the alert ends, back to the phase's profile"},
        {.key = "arc_floor", .type = ORG_CFG_SIZE, .default_value = "2GiB",
         .help = "the ARC ceiling is never set below this"},
        {.key = "profiles", .type = ORG_CFG_DICT,
         .default_value = "{day: {arc_max: 8GiB, balloon_mb: 24576, swappiness: 10},"
                          " night: {arc_max: 4GiB, balloon_mb: 16384, swappiness: 10}}",
         .help = "lever values by phase name; missing keys: built-in day/night values, else the day profile's",
         .children = profile_entries},
        {.key = "alert_profile", .type = ORG_CFG_STRING, .default_value = "night",
         .help = "profile applied while MemAvailable is low"},
        {.key = "psi_trigger", .type = ORG_CFG_BOOL, .default_value = "true",
         .help = "arm a PSI trigger on /proc/pressure/memory (real sysroot only) to act between ticks"},
        {.key = "psi_stall", .type = ORG_CFG_DURATION, .default_value = "150ms", .min = "1ms", .max = "10s",
         .help = "PSI trigger: stall time of some tasks within the window"},
        {.key = "psi_window", .type = ORG_CFG_DURATION, .default_value = "1s", .min = "500ms", .max = "10s",
         .help = "PSI trigger window (500ms to 10s; unprivileged: rounded up to a multiple of 2s)"},
        {.key = "psi_min_gap", .type = ORG_CFG_DURATION, .default_value = "200ms",
         .help = "at most one evaluation per this gap on PSI events"},
        {.key = "qm_timeout", .type = ORG_CFG_DURATION, .default_value = "30s", .min = "1ms",
         .help = "time-out of each qm call"},
        {.key = "journal_keep", .type = ORG_CFG_INT, .default_value = "10000", .min = "1",
         .help = "newest actions kept in the journal"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "status", .help = "readings, levers (have/want), phase, alert, PSI trigger"},
        {.name = "history", .args = "{\"n\": int} or N", .help = "the newest N actions from the journal (default 20)"},
        ORG_VERBS_END,
};

void memory_rfc3339(memory *m, char *buf, size_t size) {
        org_rfc3339_us(m->host->now_realtime_us(m->ctx), buf, size);
}

/* Publishes o (stolen) on subject. */
static void publish_json(memory *m, const char *subject, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text)
                m->host->publish(m->ctx, subject, NULL, 0, text, strlen(text));
        free(text);
}

static json_t *want_json(memory *m, const memory_profile *p) {
        return json_pack("{s:s, s:I, s:I, s:I}", "profile", p->name, "arc_max",
                         (json_int_t)memory_rules_arc_want(m, p), "balloon_mb", (json_int_t)p->balloon_mb, "swappiness",
                         (json_int_t)p->swappiness);
}

static void publish_alert(memory *m) {
        char ts[40];
        memory_rfc3339(m, ts, sizeof ts);
        publish_json(m, "sys.mem.alert",
                     json_pack("{s:s, s:b, s:I, s:I, s:I, s:s, s:s}", "ts", ts, "alert", 1, "mem_available",
                               (json_int_t)m->cur.mem_available, "mem_low", (json_int_t)m->mem_low, "mem_ok",
                               (json_int_t)m->mem_ok, "profile", m->alert_profile, "phase", m->phase));
}

static void publish_state(memory *m, const memory_profile *p, const char *why) {
        char ts[40];
        memory_rfc3339(m, ts, sizeof ts);
        publish_json(m, "sys.mem.state",
                     json_pack("{s:s, s:s, s:s, s:b, s:o, s:o, s:b}", "ts", ts, "trigger", why, "phase", m->phase,
                               "alert", m->alert, "readings", memory_readings_json(&m->cur), "want", want_json(m, p),
                               "psi_trigger", m->psi_armed));
}

static void update_metrics(memory *m, const memory_profile *p) {
        const org_host *h = m->host;
        const memory_readings *r = &m->cur;
        if (r->has_mem) {
                h->metric_set(m->ctx, "mem_available_bytes", ORG_METRIC_GAUGE, (double)r->mem_available,
                              "MemAvailable of /proc/meminfo");
                h->metric_set(m->ctx, "swap_free_bytes", ORG_METRIC_GAUGE, (double)r->swap_free, "SwapFree");
        }
        if (r->has_rates) {
                h->metric_set(m->ctx, "swap_in_per_second", ORG_METRIC_GAUGE, r->swap_in_rate,
                              "pages swapped in per second (pswpin)");
                h->metric_set(m->ctx, "swap_out_per_second", ORG_METRIC_GAUGE, r->swap_out_rate,
                              "pages swapped out per second (pswpout)");
        }
        if (r->has_arc) {
                h->metric_set(m->ctx, "arc_size_bytes", ORG_METRIC_GAUGE, (double)r->arc_size, "ZFS ARC size");
                h->metric_set(m->ctx, "arc_hit_ratio", ORG_METRIC_GAUGE, r->arc_hit_ratio,
                              "ZFS ARC hits / (hits + misses) over the last interval");
        }
        if (m->arc.enabled)
                h->metric_set(m->ctx, "arc_target_bytes", ORG_METRIC_GAUGE, (double)memory_rules_arc_want(m, p),
                              "ARC ceiling the rules want (zfs_arc_max)");
        h->metric_set(m->ctx, "mem_alert", ORG_METRIC_GAUGE, m->alert ? 1 : 0, "1 while MemAvailable is low");
}

/* True when every usable lever holds (or, under dry_run, was said to get) its want. */
static bool levers_settled(memory *m, const memory_profile *p) {
        uint64_t arc = memory_rules_arc_want(m, p), sw = (uint64_t)p->swappiness;
        const memory_file_lever *a = &m->arc, *s = &m->swappiness;
        const memory_balloon *b = &m->balloon;
        bool ok_a = !a->enabled || a->value == arc || (a->dry_pending && a->dry_value == arc);
        bool ok_s = !s->enabled || s->value == sw || (s->dry_pending && s->dry_value == sw);
        bool ok_b = !b->enabled || (!b->busy && ((b->has_set && b->set_mb == p->balloon_mb) ||
                                                 (b->dry_pending && b->dry_mb == p->balloon_mb)));
        return ok_a && ok_s && ok_b;
}

void memory_evaluate(memory *m, const char *why) {
        memory_readings r;
        memory_readings_take(m, &r);
        memory_journal_after(m, &r);
        int t = memory_rules_update(m, &r);
        m->cur = r;
        m->has_cur = true;
        m->last_eval_us = r.mono_us;
        m->evaluations++;
        if (t > 0)
                publish_alert(m);
        const memory_profile *p = memory_rules_profile(m);
        memory_levers_apply(m, p, m->event[0] ? m->event : "reconcile");
        if (m->event[0] && levers_settled(m, p))
                m->event[0] = '\0';
        publish_state(m, p, why);
        update_metrics(m, p);
}

static void on_first(org_ctx *ctx, uint64_t id, void *userdata) {
        memory *m = userdata;
        m->first_timer = 0;
        if (m->phase_asked)
                m->start_waiting = true; /* the answer to circadian.phase.get starts us */
        else
                memory_evaluate(m, "start");
}

/* The phase in force when we started, from circadian (which may have published it
 * before we subscribed). No answer (no circadian here): the default phase. */
static void on_phase_answer(org_ctx *ctx, int error, const org_msg *reply, void *userdata) {
        memory *m = userdata;
        m->phase_asked = false;
        if (error >= 0 && reply)
                memory_rules_phase(m, reply->data, reply->len);
        if (m->start_waiting) {
                m->start_waiting = false;
                memory_evaluate(m, "start");
        }
}

static void memory_free(memory *m) {
        if (!m)
                return;
        memory_psi_stop(m);
        free(m->profiles);
        free(m);
}

static int config_u64(memory *m, const char *key, uint64_t *ret) {
        int64_t v;
        int r = m->host->config_int(m->ctx, key, &v);
        if (r < 0 || v < 0) {
                m->host->log(m->ctx, ORG_LOG_ERR, "%s: %s", key, r < 0 ? strerror(-r) : "must not be negative");
                return r < 0 ? r : -EINVAL;
        }
        *ret = (uint64_t)v;
        return 0;
}

static int load_config(memory *m) {
        const org_host *h = m->host;
        int r;
        uint64_t stall_ms, window_ms, gap_ms;
        const char *alert_profile = "night";
        if ((r = config_u64(m, "mem_low", &m->mem_low)) < 0 || (r = config_u64(m, "mem_ok", &m->mem_ok)) < 0 ||
            (r = config_u64(m, "arc_floor", &m->arc_floor)) < 0 || (r = config_u64(m, "psi_stall", &stall_ms)) < 0 ||
            (r = config_u64(m, "psi_window", &window_ms)) < 0 || (r = config_u64(m, "psi_min_gap", &gap_ms)) < 0 ||
            (r = config_u64(m, "qm_timeout", &m->qm_timeout_ms)) < 0 ||
            (r = config_u64(m, "journal_keep", &m->journal_keep)) < 0)
                return r;
        if ((r = h->config_bool(m->ctx, "psi_trigger", &m->psi_enable)) < 0 ||
            (r = h->config_string(m->ctx, "alert_profile", &alert_profile)) < 0) {
                h->log(m->ctx, ORG_LOG_ERR, "psi_trigger/alert_profile: %s", strerror(-r));
                return r;
        }
        if (m->mem_ok < m->mem_low) {
                h->log(m->ctx, ORG_LOG_ERR, "mem_ok (%" PRIu64 ") must not be below mem_low (%" PRIu64 ")", m->mem_ok,
                       m->mem_low);
                return -EINVAL;
        }
        if (stall_ms == 0 || stall_ms >= window_ms || window_ms > 10000 || window_ms < 500) {
                h->log(m->ctx, ORG_LOG_ERR, "psi_stall must be above 0 and below psi_window, psi_window 500ms to 10s");
                return -EINVAL;
        }
        if (m->journal_keep == 0 || m->qm_timeout_ms == 0) {
                h->log(m->ctx, ORG_LOG_ERR, "journal_keep and qm_timeout must be positive");
                return -EINVAL;
        }
        if (strlen(alert_profile) >= sizeof m->alert_profile) {
                h->log(m->ctx, ORG_LOG_ERR, "alert_profile: name too long");
                return -EINVAL;
        }
        snprintf(m->alert_profile, sizeof m->alert_profile, "%s", alert_profile);
        m->psi_stall_us = stall_ms * 1000;
        m->psi_window_us = window_ms * 1000;
        m->psi_min_gap_us = gap_ms * 1000;

        int64_t vmid;
        r = h->config_int(m->ctx, "vmid", &vmid);
        if (r >= 0) {
                if (vmid <= 0) {
                        h->log(m->ctx, ORG_LOG_ERR, "vmid: must be a positive VM id");
                        return -EINVAL;
                }
                m->balloon.configured = m->balloon.enabled = true;
                m->balloon.vmid = vmid;
                snprintf(m->balloon.vmid_text, sizeof m->balloon.vmid_text, "%" PRId64, vmid);
        } else if (r != -ENOENT) {
                h->log(m->ctx, ORG_LOG_ERR, "vmid: %s", strerror(-r));
                return r;
        } else
                h->log(m->ctx, ORG_LOG_INFO, "no vmid: the balloon lever is disabled");
        return memory_rules_load(m);
}

static int memory_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        memory *m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->host = host;
        m->ctx = ctx;
        m->psi_fd = -1;
        memory_levers_init(m);
        snprintf(m->phase, sizeof m->phase, "day");
        snprintf(m->phase_source, sizeof m->phase_source, "default");
        int r = load_config(m);
        if (r < 0)
                goto fail;

        memory_set_event(m, "start");
        /* the hysteresis survives a restart: inside the band, an alert stays an alert */
        char *alert = NULL;
        if (host->kv_get(ctx, "alert", &alert) >= 0 && alert && strcmp(alert, "1") == 0) {
                m->alert = true;
                memory_set_event(m, "mem_low (restored)");
                host->log(ctx, ORG_LOG_INFO, "the alert of the previous run holds until MemAvailable > mem_ok");
        }
        free(alert);
        memory_journal_open(m);
        /* the counter exists from the start, at 0, not from the first action */
        host->metric_add(ctx, "membrain_actions_total", 0, "levers moved (or, under dry_run, that would have been)");
        if ((r = host->subscribe(ctx, "circadian.phase", NULL)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot subscribe to circadian.phase: %s", strerror(-r));
                goto fail;
        }
        m->phase_asked = true;
        if (host->request(ctx, "circadian.phase.get", "{}", 2, 1000, on_phase_answer, m) < 0)
                m->phase_asked = false;
        if (ORG_HOST_HAS(host, io_add))
                memory_psi_start(m);
        else
                snprintf(m->psi_why, sizeof m->psi_why, "the host has no fd watches");
        /* act at once rather than one interval after start */
        if ((r = host->timer_add(ctx, 0, 0, on_first, m, &m->first_timer)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot add a timer: %s", strerror(-r));
                goto fail;
        }
        *ret_state = m;
        return 0;
fail:
        memory_free(m);
        return r;
}

static int memory_tick(void *state) {
        memory_evaluate(state, "tick");
        return 0;
}

static int memory_handle(void *state, const org_msg *msg) {
        memory *m = state;
        if (strcmp(msg->subject, "circadian.phase") != 0)
                return 0;
        /* a bad message is its sender's fault, logged by the rules: not a hook error */
        if (memory_rules_phase(m, msg->data, msg->len) > 0)
                memory_evaluate(m, "phase");
        return 0;
}

/* Answers with o (stolen), or with {"error": ...} when o is NULL. */
static int reply(memory *m, const org_msg *req, json_t *o, const char *error) {
        if (!o)
                o = json_pack("{s:s}", "error", error ? error : "out of memory");
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = m->host->respond(m->ctx, req->reply, text, strlen(text));
        free(text);
        return r;
}

static json_t *status_json(memory *m) {
        const memory_profile *p = memory_rules_profile(m);
        memory_levers_refresh(m);
        json_t *sources = json_object();
        for (int s = 0; s < MEMORY_SRC_COUNT; s++)
                json_object_set_new(sources, memory_source_name((memory_source)s),
                                    m->source_state[s] == 0 ? json_null() : json_boolean(m->source_state[s] > 0));
        char since[40] = "";
        if (m->alert && m->alert_since_us) {
                time_t t = (time_t)(m->alert_since_us / 1000000);
                struct tm tm;
                if (gmtime_r(&t, &tm))
                        strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        return json_pack("{s:s, s:s, s:b, s:o, s:s, s:o, s:{s:I, s:I, s:I}, s:o, s:o, s:o, s:o, s:b, s:o, s:I, s:b, "
                         "s:I, s:I, s:b}",
                         "phase", m->phase, "phase_source", m->phase_source, "alert", m->alert, "alert_since",
                         since[0] ? json_string(since) : json_null(), "profile", p->name, "event",
                         m->event[0] ? json_string(m->event) : json_null(), "thresholds", "mem_low",
                         (json_int_t)m->mem_low, "mem_ok", (json_int_t)m->mem_ok, "arc_floor", (json_int_t)m->arc_floor,
                         "readings", m->has_cur ? memory_readings_json(&m->cur) : json_null(), "sources", sources,
                         "want", want_json(m, p), "levers", memory_levers_json(m, p), "psi_trigger", m->psi_armed,
                         "psi_trigger_error", m->psi_why[0] ? json_string(m->psi_why) : json_null(), "psi_events",
                         (json_int_t)m->psi_events, "dry_run", m->host->dry_run(m->ctx), "actions",
                         (json_int_t)m->actions, "evaluations", (json_int_t)m->evaluations, "journal", m->journal_ok);
}

/* history's argument: nothing, {}, N, {"n": N} or agentctl's words {"args": [N]},
 * N > 0 (capped at HISTORY_MAX). */
static int history_n(const org_msg *req, int64_t *ret) {
        *ret = HISTORY_DEFAULT;
        if (!req->data || req->len == 0)
                return 0;
        json_error_t e;
        json_t *a = json_loadb(req->data, req->len, JSON_DECODE_ANY, &e);
        json_t *n = json_is_object(a) ? json_object_get(a, "n") : a;
        if (json_is_object(a) && !n)
                n = json_array_get(json_object_get(a, "args"), 0);
        int r = 0;
        if (a && (!n || json_is_null(n)))
                ; /* the default */
        else if (json_is_integer(n) && json_integer_value(n) > 0)
                *ret = json_integer_value(n) > HISTORY_MAX ? HISTORY_MAX : json_integer_value(n);
        else
                r = -EINVAL;
        json_decref(a);
        return r;
}

static int memory_call(void *state, const char *verb, const org_msg *req) {
        memory *m = state;
        if (strcmp(verb, "status") == 0)
                return reply(m, req, status_json(m), NULL);
        if (strcmp(verb, "history") == 0) {
                int64_t n;
                if (history_n(req, &n) < 0)
                        return reply(m, req, NULL, "history takes N or {\"n\": N}, N a positive integer");
                json_t *a = NULL;
                int r = memory_journal_history(m, n, &a);
                if (r < 0) {
                        char err[96];
                        snprintf(err, sizeof err, "journal unavailable: %s", strerror(-r));
                        return reply(m, req, NULL, err);
                }
                return reply(m, req, json_pack("{s:I, s:o}", "count", (json_int_t)json_array_size(a), "actions", a),
                             NULL);
        }
        return -EOPNOTSUPP;
}

static int memory_verify(void *state, char **ret_json) {
        memory *m = state;
        bool ok = false;
        const memory_profile *p = memory_rules_profile(m);
        json_t *checks = memory_levers_verify(m, p, &ok);
        json_t *o = checks ? json_pack("{s:b, s:s, s:b, s:o}", "ok", ok, "profile", p->name, "alert", m->alert,
                                       "checks", checks)
                           : NULL;
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_json = text;
        return 0;
}

/* A reload keeps the phase (circadian publishes it only on change), the alert and the
 * balloon target last set (so the new instance need not ask qm again). */
static int memory_save(void *state, void **ret_blob, size_t *ret_len) {
        memory *m = state;
        json_t *o = json_pack("{s:s, s:s, s:b, s:o}", "phase", m->phase, "phase_source", m->phase_source, "alert",
                              m->alert, "balloon_mb",
                              m->balloon.has_set ? json_integer((json_int_t)m->balloon.set_mb) : json_null());
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static int memory_restore(void *state, const void *blob, size_t len) {
        memory *m = state;
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        if (!json_is_object(o)) {
                json_decref(o);
                return -EINVAL;
        }
        const char *phase = json_string_value(json_object_get(o, "phase"));
        if (phase && memory_profile_find(m, phase)) {
                snprintf(m->phase, sizeof m->phase, "%s", phase);
                snprintf(m->phase_source, sizeof m->phase_source, "reload");
        }
        m->alert = json_is_true(json_object_get(o, "alert"));
        json_t *b = json_object_get(o, "balloon_mb");
        if (json_is_integer(b) && m->balloon.configured) {
                m->balloon.has_set = true;
                m->balloon.set_mb = json_integer_value(b);
        }
        json_decref(o);
        return 0;
}

static void memory_fini(void *state) { memory_free(state); }

ORG_PLUGIN_DEFINE(.name = "memory", .version = MEMORY_VERSION,
                  .summary = "membrain: memory homeostasis (ARC ceiling, VM balloon, swappiness) with hysteresis and PSI",
                  .config_map = config_map, .verbs = verbs, .init = memory_init, .tick = memory_tick,
                  .handle = memory_handle, .call = memory_call, .fini = memory_fini, .verify = memory_verify,
                  .save_state = memory_save, .restore_state = memory_restore);
