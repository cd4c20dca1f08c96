/* readings.c — what the memory plugin knows about the machine, read from the sysroot:
 * MemAvailable and swap from /proc/meminfo, swap-in/out counters from /proc/vmstat
 * (turned into rates between two readings), the ZFS ARC from arcstats and memory
 * pressure from /proc/pressure/memory. Every source is optional: a box without ZFS or
 * PSI is normal, so an absent source is logged once when first noticed (and once when
 * it comes back), never on every tick. The parsers are pure functions over the file
 * text so the tests can feed them odd inputs. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "memory.h"

static const char *const source_names[MEMORY_SRC_COUNT] = {
        [MEMORY_SRC_MEMINFO] = MEMORY_MEMINFO_PATH,    [MEMORY_SRC_VMSTAT] = MEMORY_VMSTAT_PATH,
        [MEMORY_SRC_ARCSTATS] = MEMORY_ARCSTATS_PATH,  [MEMORY_SRC_PSI] = MEMORY_PSI_PATH,
        [MEMORY_SRC_ARC_MAX] = MEMORY_ARC_MAX_PATH,    [MEMORY_SRC_SWAPPINESS] = MEMORY_SWAPPINESS_PATH,
};

/* What the plugin loses without each source, said once in the log. */
static const char *const source_loss[MEMORY_SRC_COUNT] = {
        [MEMORY_SRC_MEMINFO] = "no MemAvailable: the thresholds are not evaluated, levers follow the phase",
        [MEMORY_SRC_VMSTAT] = "no swap rates",
        [MEMORY_SRC_ARCSTATS] = "no ARC readings",
        [MEMORY_SRC_PSI] = "no pressure readings",
        [MEMORY_SRC_ARC_MAX] = "the ARC lever is disabled",
        [MEMORY_SRC_SWAPPINESS] = "the swappiness lever is disabled",
};

const char *memory_source_name(memory_source s) { return s < MEMORY_SRC_COUNT ? source_names[s] : "?"; }

void memory_source_seen(memory *m, memory_source s, int r) {
        int8_t now = r >= 0 ? 1 : -1, before = m->source_state[s];
        if (now == before)
                return;
        m->source_state[s] = now;
        if (now < 0)
                m->host->log(m->ctx, s == MEMORY_SRC_MEMINFO ? ORG_LOG_WARNING : ORG_LOG_NOTICE, "%s: %s; %s",
                             source_names[s], strerror(-r), source_loss[s]);
        else if (before < 0)
                m->host->log(m->ctx, ORG_LOG_NOTICE, "%s is available again", source_names[s]);
}

int memory_parse_u64(const char *text, uint64_t *ret) {
        const char *p = text;
        while (*p == ' ' || *p == '\t')
                p++;
        if (*p < '0' || *p > '9')
                return -EINVAL;
        uint64_t v = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
                unsigned d = (unsigned)(*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

/* "12.34" as the kernel prints PSI averages; no locale, no exponent. */
static int parse_decimal(const char *text, double *ret) {
        uint64_t ip = 0;
        int r = memory_parse_u64(text, &ip);
        if (r < 0)
                return r;
        const char *p = text;
        while (*p == ' ' || *p == '\t')
                p++;
        while (*p >= '0' && *p <= '9')
                p++;
        double v = (double)ip, scale = 0.1;
        if (*p == '.')
                for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
                        v += (*p - '0') * scale;
        *ret = v;
        return 0;
}

/* Iterates over lines: returns the next line's start and sets *len, or NULL at the end. */
static const char *next_line(const char **cursor, size_t *len) {
        const char *s = *cursor;
        if (!s || !*s)
                return NULL;
        const char *e = strchr(s, '\n');
        *len = e ? (size_t)(e - s) : strlen(s);
        *cursor = e ? e + 1 : s + *len;
        return s;
}

/* True when line (of length len) starts with key followed by one of the delimiters. */
static bool line_key(const char *line, size_t len, const char *key, const char *delims, const char **ret_rest) {
        size_t k = strlen(key);
        if (len <= k || memcmp(line, key, k) != 0 || !strchr(delims, line[k]))
                return false;
        *ret_rest = line + k + 1;
        return true;
}

int memory_parse_meminfo(const char *text, memory_readings *r) {
        static const struct {
                const char *key;
                size_t off;
        } keys[] = {
                {"MemTotal", offsetof(memory_readings, mem_total)},
                {"MemAvailable", offsetof(memory_readings, mem_available)},
                {"SwapTotal", offsetof(memory_readings, swap_total)},
                {"SwapFree", offsetof(memory_readings, swap_free)},
        };
        bool seen_available = false;
        const char *cur = text, *line, *rest;
        size_t len;
        while ((line = next_line(&cur, &len)))
                for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
                        uint64_t v;
                        if (!line_key(line, len, keys[i].key, ":", &rest) || memory_parse_u64(rest, &v) < 0)
                                continue;
                        /* values are in kB (KiB); guard the multiplication */
                        if (memmem(rest, (size_t)(line + len - rest), "kB", 2) && v <= UINT64_MAX / 1024)
                                v *= 1024;
                        memcpy((char *)r + keys[i].off, &v, sizeof v);
                        if (i == 1)
                                seen_available = true;
                }
        if (!seen_available)
                return -EBADMSG;
        r->has_mem = true;
        return 0;
}

int memory_parse_vmstat(const char *text, memory_readings *r) {
        bool in = false, out = false;
        const char *cur = text, *line, *rest;
        size_t len;
        while ((line = next_line(&cur, &len))) {
                if (line_key(line, len, "pswpin", " \t", &rest))
                        in = memory_parse_u64(rest, &r->pswpin) >= 0;
                else if (line_key(line, len, "pswpout", " \t", &rest))
                        out = memory_parse_u64(rest, &r->pswpout) >= 0;
        }
        if (!in || !out)
                return -EBADMSG;
        r->has_vmstat = true;
        return 0;
}

/* Lines "name type data" after two header lines; data is the third column. */
int memory_parse_arcstats(const char *text, memory_readings *r) {
        static const struct {
                const char *key;
                size_t off;
        } keys[] = {
                {"size", offsetof(memory_readings, arc_size)},
                {"c", offsetof(memory_readings, arc_c)},
                {"c_max", offsetof(memory_readings, arc_c_max)},
                {"hits", offsetof(memory_readings, arc_hits)},
                {"misses", offsetof(memory_readings, arc_misses)},
        };
        bool seen_size = false;
        const char *cur = text, *line, *rest;
        size_t len;
        while ((line = next_line(&cur, &len)))
                for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
                        if (!line_key(line, len, keys[i].key, " \t", &rest))
                                continue;
                        /* skip the type column */
                        const char *end = line + len;
                        while (rest < end && (*rest == ' ' || *rest == '\t'))
                                rest++;
                        while (rest < end && *rest != ' ' && *rest != '\t')
                                rest++;
                        uint64_t v;
                        if (rest >= end || memory_parse_u64(rest, &v) < 0)
                                continue;
                        memcpy((char *)r + keys[i].off, &v, sizeof v);
                        if (i == 0)
                                seen_size = true;
                }
        if (!seen_size)
                return -EBADMSG;
        r->has_arc = true;
        uint64_t total = r->arc_hits + r->arc_misses;
        r->arc_hit_ratio = total ? (double)r->arc_hits / (double)total : 0.0;
        return 0;
}

/* "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and the same for "full". */
int memory_parse_psi(const char *text, memory_readings *r) {
        bool some = false;
        const char *cur = text, *line, *rest;
        size_t len;
        while ((line = next_line(&cur, &len))) {
                bool is_some = line_key(line, len, "some", " ", &rest);
                if (!is_some && !line_key(line, len, "full", " ", &rest))
                        continue;
                double avg10 = 0;
                uint64_t total = 0;
                const char *a = strstr(rest, "avg10="), *t = strstr(rest, "total=");
                if (!a || a >= line + len || parse_decimal(a + 6, &avg10) < 0)
                        continue;
                if (t && t < line + len)
                        (void)memory_parse_u64(t + 6, &total);
                if (is_some) {
                        r->psi_some_avg10 = avg10;
                        r->psi_some_total = total;
                        some = true;
                } else {
                        r->psi_full_avg10 = avg10;
                        r->psi_full_total = total;
                }
        }
        if (!some)
                return -EBADMSG;
        r->has_psi = true;
        return 0;
}

typedef int (*parse_fn)(const char *text, memory_readings *r);

static void read_source(memory *m, memory_source s, parse_fn parse, memory_readings *r) {
        char *text = NULL;
        int rc = m->host->read_file(m->ctx, source_names[s], &text, NULL);
        if (rc >= 0)
                rc = parse(text, r);
        free(text);
        memory_source_seen(m, s, rc);
}

void memory_readings_take(memory *m, memory_readings *r) {
        memset(r, 0, sizeof *r);
        r->mono_us = m->host->now_monotonic_us(m->ctx);
        read_source(m, MEMORY_SRC_MEMINFO, memory_parse_meminfo, r);
        read_source(m, MEMORY_SRC_VMSTAT, memory_parse_vmstat, r);
        read_source(m, MEMORY_SRC_ARCSTATS, memory_parse_arcstats, r);
        read_source(m, MEMORY_SRC_PSI, memory_parse_psi, r);

        const memory_readings *p = m->has_cur ? &m->cur : NULL;
        if (p && p->has_vmstat && r->has_vmstat && r->mono_us > p->mono_us && r->pswpin >= p->pswpin &&
            r->pswpout >= p->pswpout) {
                double dt = (double)(r->mono_us - p->mono_us) / 1e6;
                r->swap_in_rate = (double)(r->pswpin - p->pswpin) / dt;
                r->swap_out_rate = (double)(r->pswpout - p->pswpout) / dt;
                r->has_rates = true;
        }
        /* the ratio since boot hides what the cache does now: prefer the last interval */
        if (p && p->has_arc && r->has_arc && r->arc_hits >= p->arc_hits && r->arc_misses >= p->arc_misses) {
                uint64_t h = r->arc_hits - p->arc_hits, n = h + (r->arc_misses - p->arc_misses);
                if (n > 0)
                        r->arc_hit_ratio = (double)h / (double)n;
        }
}

json_t *memory_readings_json(const memory_readings *r) {
        json_t *o = json_object();
        if (!o)
                return NULL;
#define SET_U(key, cond, v) json_object_set_new(o, key, (cond) ? json_integer((json_int_t)(v)) : json_null())
#define SET_D(key, cond, v) json_object_set_new(o, key, (cond) ? json_real(v) : json_null())
        SET_U("mem_total", r->has_mem, r->mem_total);
        SET_U("mem_available", r->has_mem, r->mem_available);
        SET_U("swap_total", r->has_mem, r->swap_total);
        SET_U("swap_free", r->has_mem, r->swap_free);
        SET_D("swap_in_per_second", r->has_rates, r->swap_in_rate);
        SET_D("swap_out_per_second", r->has_rates, r->swap_out_rate);
        SET_U("arc_size", r->has_arc, r->arc_size);
        SET_U("arc_c", r->has_arc, r->arc_c);
        SET_U("arc_c_max", r->has_arc, r->arc_c_max);
        SET_D("arc_hit_ratio", r->has_arc, r->arc_hit_ratio);
        SET_D("psi_some_avg10", r->has_psi, r->psi_some_avg10);
        SET_D("psi_full_avg10", r->has_psi, r->psi_full_avg10);
        SET_U("psi_some_total_us", r->has_psi, r->psi_some_total);
#undef SET_U
#undef SET_D
        return o;
}
