/* journal.c — the record of what the memory plugin did. Each action (or, under dry_run,
 * each action it would have taken) becomes a row of the instance's sqlite journal with
 * the reason and the readings of the moment, a `membrain.action` message on the bus, a
 * count in `membrain_actions_total` and a log line. The readings *after* an action are
 * filled in at the next reading, so a row shows what the change did. `history` reads
 * the rows back, newest first. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memory.h"
#include "memory_sql.h"

int memory_journal_open(memory *m) {
        int r = m->host->store_exec(m->ctx, MEMORY_SQL_SCHEMA, NULL, 0);
        if (r < 0)
                m->host->log(m->ctx, ORG_LOG_WARNING, "journal unavailable (%s): actions are only logged",
                             strerror(-r));
        m->journal_ok = r >= 0;
        return r;
}

static void fmt_u64(char *buf, size_t size, bool has, uint64_t v, const char **ret) {
        if (!has) {
                *ret = NULL;
                return;
        }
        snprintf(buf, size, "%" PRIu64, v);
        *ret = buf;
}

static void fmt_double(char *buf, size_t size, bool has, double v, const char **ret) {
        if (!has) {
                *ret = NULL;
                return;
        }
        snprintf(buf, size, "%.3f", v);
        *ret = buf;
}

void memory_journal_action(memory *m, const memory_action *a) {
        const memory_readings *r = &m->cur;
        bool has = m->has_cur;
        char ts[40], mem[24], arc[24], sin[32], sout[32];
        const char *p_mem, *p_arc, *p_sin, *p_sout;
        memory_rfc3339(m, ts, sizeof ts);
        fmt_u64(mem, sizeof mem, has && r->has_mem, r->mem_available, &p_mem);
        fmt_u64(arc, sizeof arc, has && r->has_arc, r->arc_size, &p_arc);
        fmt_double(sin, sizeof sin, has && r->has_rates, r->swap_in_rate, &p_sin);
        fmt_double(sout, sizeof sout, has && r->has_rates, r->swap_out_rate, &p_sout);

        m->host->log(m->ctx, ORG_LOG_NOTICE, "%s%s: %s -> %s (%s%s%s)", a->dry_run ? "dry_run, would set " : "",
                     a->lever, a->before ? a->before : "unknown", a->after, a->reason, a->detail ? "; " : "",
                     a->detail ? a->detail : "");

        if (m->journal_ok) {
                const char *params[] = {ts,         a->reason,   a->lever, a->before, a->after,
                                        a->detail,  p_mem,       p_arc,    p_sin,     p_sout,
                                        m->phase,   m->alert ? "1" : "0", a->dry_run ? "1" : "0"};
                if (m->host->store_exec(m->ctx, MEMORY_SQL_INSERT, params, sizeof params / sizeof params[0]) >= 0) {
                        char keep[24];
                        snprintf(keep, sizeof keep, "%" PRIu64, m->journal_keep);
                        const char *kp[] = {keep};
                        m->host->store_exec(m->ctx, MEMORY_SQL_PRUNE, kp, 1);
                        m->after_pending = true;
                }
        }

        json_t *o = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s?, s:b, s:s, s:b, s:o, s:o, s:o, s:o}", "ts", ts, "lever",
                              a->lever, "reason", a->reason, "before", a->before, "after", a->after, "detail",
                              a->detail, "dry_run", a->dry_run, "phase", m->phase, "alert", m->alert, "mem_available",
                              p_mem ? json_integer((json_int_t)r->mem_available) : json_null(), "arc_size",
                              p_arc ? json_integer((json_int_t)r->arc_size) : json_null(), "swap_in_per_second",
                              p_sin ? json_real(r->swap_in_rate) : json_null(), "swap_out_per_second",
                              p_sout ? json_real(r->swap_out_rate) : json_null());
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text)
                m->host->publish(m->ctx, "membrain.action", NULL, 0, text, strlen(text));
        free(text);
        m->actions++;
        m->host->metric_add(m->ctx, "membrain_actions_total", 1, "levers moved (or, under dry_run, that would have been)");
}

void memory_journal_after(memory *m, const memory_readings *r) {
        if (!m->after_pending || !m->journal_ok)
                return;
        char mem[24], arc[24];
        const char *params[2];
        fmt_u64(mem, sizeof mem, r->has_mem, r->mem_available, &params[0]);
        fmt_u64(arc, sizeof arc, r->has_arc, r->arc_size, &params[1]);
        m->host->store_exec(m->ctx, MEMORY_SQL_AFTER, params, 2);
        m->after_pending = false;
}

static json_t *int_or_null(const char *s) {
        uint64_t v;
        return s && memory_parse_u64(s, &v) >= 0 ? json_integer((json_int_t)v) : json_null();
}

static json_t *real_or_null(const char *s) {
        if (!s)
                return json_null();
        char *end = NULL;
        double v = strtod(s, &end);
        return end && end != s ? json_real(v) : json_null();
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static int history_row(void *userdata, int n, const char *const *c, const char *const *names) {
        json_t *a = userdata;
        if (n < 16)
                return -EINVAL;
        json_t *o = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:b, s:b, s:o, s:o}", "id",
                              int_or_null(c[0]), "ts", str_or_null(c[1]), "reason", str_or_null(c[2]), "lever",
                              str_or_null(c[3]), "before", str_or_null(c[4]), "after", str_or_null(c[5]), "detail",
                              str_or_null(c[6]), "mem_available", int_or_null(c[7]), "arc_size", int_or_null(c[8]),
                              "swap_in_per_second", real_or_null(c[9]), "swap_out_per_second", real_or_null(c[10]),
                              "phase", str_or_null(c[11]), "alert", c[12] && strcmp(c[12], "1") == 0, "dry_run",
                              c[13] && strcmp(c[13], "1") == 0, "mem_available_after", int_or_null(c[14]),
                              "arc_size_after", int_or_null(c[15]));
        if (!o || json_array_append_new(a, o) < 0)
                return -ENOMEM;
        return 0;
}

int memory_journal_history(memory *m, int64_t n, json_t **ret) {
        if (!m->journal_ok)
                return -ENODEV;
        json_t *a = json_array();
        if (!a)
                return -ENOMEM;
        char lim[24];
        snprintf(lim, sizeof lim, "%" PRId64, n);
        const char *params[] = {lim};
        int r = m->host->store_query(m->ctx, MEMORY_SQL_HISTORY, params, 1, history_row, a);
        if (r < 0) {
                json_decref(a);
                return r;
        }
        *ret = a;
        return 0;
}
