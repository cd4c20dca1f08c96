/* actions.c — circadian's levers (see actions.h): CPU enumeration, governor writes and
 * checks through the host's sysroot helpers, and the gpu.cache.sync request. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actions.h"
#include "schedule.h"

#define CIRCADIAN_CPU_MAX 8192
#define CIRCADIAN_CPU_DIR "/sys/devices/system/cpu"

bool circadian_governor_valid(const char *g) {
        size_t n = 0;
        if (!g)
                return false;
        for (; g[n]; n++)
                if (!((g[n] >= 'a' && g[n] <= 'z') || (g[n] >= '0' && g[n] <= '9') || g[n] == '_' || g[n] == '-'))
                        return false;
        return n > 0 && n < CIRCADIAN_GOVERNOR_MAX;
}

static int circadian_parse_uint(const char **p, unsigned *ret) {
        const char *s = *p;
        unsigned long v = 0;
        if (*s < '0' || *s > '9')
                return -EINVAL;
        for (; *s >= '0' && *s <= '9'; s++) {
                v = v * 10 + (unsigned long)(*s - '0');
                if (v >= CIRCADIAN_CPU_MAX)
                        return -E2BIG;
        }
        *p = s;
        *ret = (unsigned)v;
        return 0;
}

int circadian_parse_cpu_list(const char *text, unsigned **ret_cpus, size_t *ret_n) {
        unsigned *cpus = NULL;
        size_t n = 0;
        const char *p = text;
        int r = 0;
        while (*p && *p != '\n') {
                unsigned a, b;
                if ((r = circadian_parse_uint(&p, &a)) < 0)
                        goto fail;
                b = a;
                if (*p == '-') {
                        p++;
                        if ((r = circadian_parse_uint(&p, &b)) < 0)
                                goto fail;
                        if (b < a) {
                                r = -EINVAL;
                                goto fail;
                        }
                }
                if (n + (b - a + 1) > CIRCADIAN_CPU_MAX) {
                        r = -E2BIG;
                        goto fail;
                }
                unsigned *nc = realloc(cpus, (n + (b - a + 1)) * sizeof *nc);
                if (!nc) {
                        r = -ENOMEM;
                        goto fail;
                }
                cpus = nc;
                for (unsigned c = a; c <= b; c++)
                        cpus[n++] = c;
                if (*p == ',')
                        p++;
                else if (*p && *p != '\n') {
                        r = -EINVAL;
                        goto fail;
                }
        }
        *ret_cpus = cpus;
        *ret_n = n;
        return 0;
fail:
        free(cpus);
        return r;
}

static void circadian_governor_path(unsigned cpu, char *buf, size_t size) {
        snprintf(buf, size, CIRCADIAN_CPU_DIR "/cpu%u/cpufreq/scaling_governor", cpu);
}

/* Reads a CPU's governor without its trailing new line; malloc'd. */
static int circadian_governor_read(const org_host *host, org_ctx *ctx, unsigned cpu, char **ret) {
        char path[128];
        circadian_governor_path(cpu, path, sizeof path);
        char *data = NULL;
        size_t len = 0;
        int r = host->read_file(ctx, path, &data, &len);
        if (r < 0)
                return r;
        while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == ' ' || data[len - 1] == '\t'))
                data[--len] = '\0';
        *ret = data;
        return 0;
}

int circadian_cpus(const org_host *host, org_ctx *ctx, unsigned **ret_cpus, size_t *ret_n) {
        char *present = NULL;
        if (host->read_file(ctx, CIRCADIAN_CPU_DIR "/present", &present, NULL) >= 0) {
                int r = circadian_parse_cpu_list(present, ret_cpus, ret_n);
                free(present);
                return r;
        }
        /* no `present` (an old kernel, a thin sysroot): probe until the first gap */
        unsigned *cpus = NULL;
        size_t n = 0;
        for (unsigned c = 0; c < CIRCADIAN_CPU_MAX; c++) {
                char *g = NULL;
                if (circadian_governor_read(host, ctx, c, &g) < 0)
                        break;
                free(g);
                unsigned *nc = realloc(cpus, (n + 1) * sizeof *nc);
                if (!nc) {
                        free(cpus);
                        return -ENOMEM;
                }
                cpus = nc;
                cpus[n++] = c;
        }
        *ret_cpus = cpus;
        *ret_n = n;
        return 0;
}

int circadian_governor_apply(const org_host *host, org_ctx *ctx, const char *governor, circadian_apply_result *ret) {
        circadian_apply_result res = {0};
        unsigned *cpus = NULL;
        size_t n = 0;
        int r = circadian_cpus(host, ctx, &cpus, &n);
        if (r < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot list the CPUs (%s/present): %s", CIRCADIAN_CPU_DIR, strerror(-r));
                return r;
        }
        for (size_t i = 0; i < n; i++) {
                char *have = NULL;
                /* only CPUs that have cpufreq: a write into a sysroot would create the file */
                if (circadian_governor_read(host, ctx, cpus[i], &have) < 0)
                        continue;
                free(have);
                res.cpus++;
                char path[128];
                circadian_governor_path(cpus[i], path, sizeof path);
                bool changed = false;
                int w = host->write_file(ctx, path, governor, &changed);
                if (w < 0) {
                        res.failed++;
                        host->log(ctx, ORG_LOG_WARNING, "cannot set governor %s on cpu%u: %s", governor, cpus[i],
                                  strerror(-w));
                } else if (changed)
                        res.changed++;
        }
        free(cpus);
        *ret = res;
        return 0;
}

int circadian_governor_verify(const org_host *host, org_ctx *ctx, const char *governor, json_t *checks,
                              bool *ret_ok) {
        unsigned *cpus = NULL;
        size_t n = 0;
        bool ok = true;
        unsigned seen = 0;
        int r = circadian_cpus(host, ctx, &cpus, &n);
        if (r < 0)
                n = 0;
        for (size_t i = 0; i < n; i++) {
                char *have = NULL;
                if (circadian_governor_read(host, ctx, cpus[i], &have) < 0)
                        continue;
                seen++;
                char what[64];
                snprintf(what, sizeof what, "cpu%u scaling_governor", cpus[i]);
                bool good = strcmp(have, governor) == 0;
                ok = ok && good;
                json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", governor, "have",
                                                        have, "ok", good));
                free(have);
        }
        free(cpus);
        if (seen == 0) {
                ok = false;
                json_array_append_new(checks, json_pack("{s:s, s:s, s:s, s:b}", "what", "scaling_governor", "want",
                                                        governor, "have", "no cpufreq", "ok", 0));
        }
        *ret_ok = ok;
        return 0;
}

int circadian_cache_sync_publish(const org_host *host, org_ctx *ctx, const char *phase, uint64_t now_us) {
        char ts[CIRCADIAN_TIME_MAX];
        circadian_format_rfc3339(now_us, ts, sizeof ts);
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "gpu", "all", "reason", "circadian", "phase", phase);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = host->publish(ctx, CIRCADIAN_CACHE_SYNC_SUBJECT, NULL, 0, text, strlen(text));
        free(text);
        return r;
}
