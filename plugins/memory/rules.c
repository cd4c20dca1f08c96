/* rules.c — what the memory plugin wants: the profile of each phase (built-in day and
 * night, overridden or extended by the config), the hysteresis on MemAvailable (below
 * mem_low: alert and the alert profile; above mem_ok: back to the phase's profile; in
 * between: hold whichever state it is in) and the phase taken from circadian.phase. The
 * alert state is kept in the instance's store so that a restart inside the band does
 * not undo an alert. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memory.h"

#define GIB (1024ULL * 1024 * 1024)

/* The defaults of the spec; a profile of another name starts from the day profile. */
static const memory_profile builtin_day = {.name = "day", .arc_max = 8 * GIB, .balloon_mb = 24576, .swappiness = 10};
static const memory_profile builtin_night = {.name = "night", .arc_max = 4 * GIB, .balloon_mb = 16384, .swappiness = 10};

void memory_set_event(memory *m, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->event, sizeof m->event, fmt, ap);
        va_end(ap);
}

const memory_profile *memory_profile_find(const memory *m, const char *name) {
        for (size_t i = 0; i < m->n_profiles; i++)
                if (strcmp(m->profiles[i].name, name) == 0)
                        return &m->profiles[i];
        return NULL;
}

const memory_profile *memory_rules_profile(const memory *m) {
        const memory_profile *p = memory_profile_find(m, m->alert ? m->alert_profile : m->phase);
        /* load guarantees the alert profile and the phase exist; day is the last resort */
        return p ? p : memory_profile_find(m, "day");
}

uint64_t memory_rules_arc_want(const memory *m, const memory_profile *p) {
        return p->arc_max < m->arc_floor ? m->arc_floor : p->arc_max;
}

static memory_profile *add_profile(memory *m, const memory_profile *base, const char *name) {
        memory_profile *p = (memory_profile *)memory_profile_find(m, name);
        if (p)
                return p;
        memory_profile *n = realloc(m->profiles, (m->n_profiles + 1) * sizeof *n);
        if (!n)
                return NULL;
        m->profiles = n;
        p = &n[m->n_profiles++];
        *p = *base;
        snprintf(p->name, sizeof p->name, "%s", name);
        return p;
}

/* Overrides p's fields with those present in the config object o. */
static int apply_profile(memory *m, memory_profile *p, json_t *o) {
        json_t *v;
        if ((v = json_object_get(o, "arc_max"))) {
                if (!json_is_integer(v) || json_integer_value(v) <= 0) {
                        m->host->log(m->ctx, ORG_LOG_ERR, "profiles.%s.arc_max: must be a positive size", p->name);
                        return -EINVAL;
                }
                p->arc_max = (uint64_t)json_integer_value(v);
        }
        if ((v = json_object_get(o, "balloon_mb"))) {
                if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 30)) {
                        m->host->log(m->ctx, ORG_LOG_ERR, "profiles.%s.balloon_mb: must be a positive number of MiB",
                                     p->name);
                        return -EINVAL;
                }
                p->balloon_mb = json_integer_value(v);
        }
        if ((v = json_object_get(o, "swappiness"))) {
                /* the kernel's range for vm.swappiness */
                if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 200) {
                        m->host->log(m->ctx, ORG_LOG_ERR, "profiles.%s.swappiness: must be 0 to 200", p->name);
                        return -EINVAL;
                }
                p->swappiness = json_integer_value(v);
        }
        return 0;
}

int memory_rules_load(memory *m) {
        int r = 0;
        json_error_t e;
        json_t *cfg = json_loads(m->host->config_json(m->ctx), 0, &e);
        json_t *profiles = json_object_get(cfg, "profiles");

        if (!add_profile(m, &builtin_day, "day") || !add_profile(m, &builtin_night, "night")) {
                r = -ENOMEM;
                goto out;
        }
        /* day first: other names start from the day profile as configured */
        json_t *day = json_object_get(profiles, "day");
        if (day && (r = apply_profile(m, (memory_profile *)memory_profile_find(m, "day"), day)) < 0)
                goto out;
        const char *name;
        json_t *o;
        json_object_foreach(profiles, name, o) {
                if (strcmp(name, "day") == 0)
                        continue;
                if (strlen(name) >= MEMORY_NAME_MAX) {
                        m->host->log(m->ctx, ORG_LOG_ERR, "profiles.%s: name too long", name);
                        r = -EINVAL;
                        goto out;
                }
                memory_profile day_copy = *memory_profile_find(m, "day");
                memory_profile *p = add_profile(m, &day_copy, name);
                if (!p) {
                        r = -ENOMEM;
                        goto out;
                }
                if ((r = apply_profile(m, p, o)) < 0)
                        goto out;
        }
        if (!memory_profile_find(m, m->alert_profile)) {
                m->host->log(m->ctx, ORG_LOG_ERR, "alert_profile: no profile named \"%s\"", m->alert_profile);
                r = -EINVAL;
        }
out:
        json_decref(cfg);
        return r;
}

int memory_rules_update(memory *m, const memory_readings *r) {
        if (!r->has_mem)
                return 0; /* nothing to judge: hold */
        if (!m->alert && r->mem_available < m->mem_low) {
                m->alert = true;
                m->alert_since_us = m->host->now_realtime_us(m->ctx);
                m->host->kv_set(m->ctx, "alert", "1");
                memory_set_event(m, "mem_low");
                m->host->log(m->ctx, ORG_LOG_NOTICE, "MemAvailable %llu MiB < mem_low %llu MiB: alert, profile %s",
                             (unsigned long long)(r->mem_available >> 20), (unsigned long long)(m->mem_low >> 20),
                             m->alert_profile);
                return 1;
        }
        if (m->alert && r->mem_available > m->mem_ok) {
                m->alert = false;
                m->host->kv_set(m->ctx, "alert", "0");
                memory_set_event(m, "mem_ok");
                m->host->log(m->ctx, ORG_LOG_NOTICE, "MemAvailable %llu MiB > mem_ok %llu MiB: alert over, profile %s",
                             (unsigned long long)(r->mem_available >> 20), (unsigned long long)(m->mem_ok >> 20),
                             m->phase);
                return -1;
        }
        return 0;
}

int memory_rules_phase(memory *m, const char *data, size_t len) {
        json_error_t e;
        json_t *o = json_loadb(data, len, 0, &e);
        const char *name = json_string_value(json_object_get(o, "phase"));
        int r = 0;
        if (!name || !*name || strlen(name) >= MEMORY_NAME_MAX) {
                m->host->log(m->ctx, ORG_LOG_WARNING, "circadian.phase: ignored, no valid \"phase\" in %.120s", data);
                r = -EINVAL;
                goto out;
        }
        if (!memory_profile_find(m, name)) {
                if (strcmp(m->unknown_phase, name) != 0) {
                        m->host->log(m->ctx, ORG_LOG_NOTICE, "phase \"%s\" has no profile: keeping %s", name, m->phase);
                        snprintf(m->unknown_phase, sizeof m->unknown_phase, "%s", name);
                }
                goto out;
        }
        m->unknown_phase[0] = '\0';
        snprintf(m->phase_source, sizeof m->phase_source, "bus");
        if (strcmp(m->phase, name) == 0)
                goto out;
        m->host->log(m->ctx, ORG_LOG_INFO, "phase %s -> %s%s", m->phase, name, m->alert ? " (held by the alert)" : "");
        snprintf(m->phase, sizeof m->phase, "%s", name);
        memory_set_event(m, "phase %s", name);
        r = 1;
out:
        json_decref(o);
        return r;
}
