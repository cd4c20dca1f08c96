/* override.c — duration parsing and the persisted form of circadian's manual override
 * (see override.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "override.h"

#define CIRCADIAN_DURATION_MAX_MS (100ULL * 366 * 86400 * 1000)

int circadian_parse_duration(const char *text, uint64_t *ret_ms) {
        static const struct {
                const char *unit;
                uint64_t ms;
        } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
        if (!text || !*text)
                return -EINVAL;
        uint64_t total = 0;
        const char *p = text;
        while (*p) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                uint64_t n = 0;
                for (; *p >= '0' && *p <= '9'; p++) {
                        n = n * 10 + (uint64_t)(*p - '0');
                        if (n > CIRCADIAN_DURATION_MAX_MS)
                                return -EINVAL;
                }
                /* longest unit first: "ms" before "m" */
                uint64_t mult = 0;
                size_t ulen = 0;
                for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
                        size_t l = strlen(units[i].unit);
                        if (strncmp(p, units[i].unit, l) == 0 && l > ulen) {
                                mult = units[i].ms;
                                ulen = l;
                        }
                }
                if (!mult)
                        return -EINVAL; /* a bare number is ambiguous: say the unit */
                p += ulen;
                if (n > (CIRCADIAN_DURATION_MAX_MS - total) / mult)
                        return -EINVAL;
                total += n * mult;
        }
        if (total == 0)
                return -EINVAL;
        *ret_ms = total;
        return 0;
}

char *circadian_override_to_json(const circadian_override *o) {
        if (!o->active)
                return strdup("null");
        json_t *j = json_pack("{s:s, s:I, s:I}", "phase", o->phase, "since_us", (json_int_t)o->since_us, "until_us",
                              (json_int_t)o->until_us);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        return text;
}

int circadian_override_from_json(const char *text, circadian_override *ret) {
        circadian_override o = {0};
        if (!text || !*text || strcmp(text, "null") == 0) {
                *ret = o;
                return 0;
        }
        json_error_t e;
        json_t *j = json_loads(text, 0, &e);
        const char *phase = NULL;
        json_int_t since = 0, until = 0;
        int r = j && json_unpack(j, "{s:s, s:I, s:I}", "phase", &phase, "since_us", &since, "until_us", &until) == 0
                        ? 0
                        : -EINVAL;
        if (r == 0 && (!circadian_name_valid(phase) || since < 0 || until < 0))
                r = -EINVAL;
        if (r == 0) {
                o.active = true;
                snprintf(o.phase, sizeof o.phase, "%s", phase);
                o.since_us = (uint64_t)since;
                o.until_us = (uint64_t)until;
                *ret = o;
        }
        json_decref(j);
        return r;
}

bool circadian_override_expired(const circadian_override *o, uint64_t now_us) {
        return o->active && o->until_us != 0 && o->until_us <= now_us;
}
