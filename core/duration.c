/* duration.c — the config's durations and sizes. Both are a decimal number (a fraction
 * is allowed: "1.5s", "0.5GiB") followed by a unit; durations may chain components
 * ("1h30m"). Everything is checked for overflow, because these values come straight
 * from a file an operator typed and end up as timer periods and memory limits. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "duration.h"

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Reads "123" or "123.456" at *p. Returns the integer part and the fraction as
 * frac / frac_div (frac_div a power of ten); digits past 18 in the fraction are
 * dropped, they are far below a millisecond or a byte anyway. */
static int read_number(const char **p, uint64_t *ret_int, uint64_t *ret_frac, uint64_t *ret_div) {
        const char *s = *p;
        uint64_t v = 0, frac = 0, div = 1;
        bool any = false;

        while (is_digit(*s)) {
                unsigned d = (unsigned)(*s - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
                s++;
                any = true;
        }
        if (*s == '.') {
                s++;
                while (is_digit(*s)) {
                        if (div < 1000000000000000000ULL) {
                                frac = frac * 10 + (uint64_t)(*s - '0');
                                div *= 10;
                        }
                        s++;
                        any = true;
                }
        }
        if (!any)
                return -EINVAL;
        *p = s;
        *ret_int = v;
        *ret_frac = frac;
        *ret_div = div;
        return 0;
}

/* v * unit + frac * unit / div, or -ERANGE. 128-bit arithmetic: both products fit
 * (v < 2^64, frac < 10^18, unit <= 1024^6). */
static int scale(uint64_t v, uint64_t frac, uint64_t div, uint64_t unit, uint64_t *ret) {
        __uint128_t t = (__uint128_t)v * unit + (__uint128_t)frac * unit / div;
        if (t > UINT64_MAX)
                return -ERANGE;
        *ret = (uint64_t)t;
        return 0;
}

static const struct {
        const char *suffix;
        uint64_t ms;
} duration_units[] = {
        /* Longest suffixes first, so "ms" is not read as "m" followed by junk. */
        {"msec", 1},      {"ms", 1},           {"sec", 1000},         {"s", 1000},
        {"min", 60000},   {"m", 60000},        {"h", 3600000},        {"d", 86400000},
        {"w", 604800000},
};

int parse_duration_ms(const char *s, uint64_t *ret_ms) {
        uint64_t total = 0;
        bool first = true;

        if (!s || !*s)
                return -EINVAL;
        while (*s) {
                uint64_t v, frac, div, part;
                int r = read_number(&s, &v, &frac, &div);
                if (r < 0)
                        return r;
                if (*s == '\0') {
                        /* A bare number is seconds, but only on its own: "1h30" is a typo. */
                        if (!first)
                                return -EINVAL;
                        r = scale(v, frac, div, 1000, &part);
                        if (r < 0)
                                return r;
                        total = part;
                        break;
                }
                size_t i;
                for (i = 0; i < sizeof duration_units / sizeof duration_units[0]; i++) {
                        size_t l = strlen(duration_units[i].suffix);
                        if (strncmp(s, duration_units[i].suffix, l) == 0 && !(s[l] >= 'a' && s[l] <= 'z'))
                                break;
                }
                if (i == sizeof duration_units / sizeof duration_units[0])
                        return -EINVAL;
                s += strlen(duration_units[i].suffix);
                r = scale(v, frac, div, duration_units[i].ms, &part);
                if (r < 0)
                        return r;
                if (total > UINT64_MAX - part)
                        return -ERANGE;
                total += part;
                first = false;
        }
        *ret_ms = total;
        return 0;
}

int parse_size(const char *s, uint64_t *ret_bytes) {
        static const char prefixes[] = "KMGTPE";
        uint64_t v, frac, div, unit = 1;
        int r;

        if (!s || !*s)
                return -EINVAL;
        r = read_number(&s, &v, &frac, &div);
        if (r < 0)
                return r;
        while (*s == ' ')
                s++;
        if (*s != '\0') {
                char c = *s == 'k' ? 'K' : *s;
                const char *pp = strchr(prefixes, c);
                if (c == 'B' && s[1] == '\0') {
                        s++;
                } else if (pp && c != '\0') {
                        int exp = (int)(pp - prefixes) + 1;
                        bool binary;
                        s++;
                        if (*s == 'i') {
                                /* "KiB", "Ki": explicitly binary. */
                                binary = true;
                                s++;
                                if (*s == 'B')
                                        s++;
                        } else if (*s == 'B') {
                                /* "kB", "MB": the SI meaning, as disks are sold. */
                                binary = false;
                                s++;
                        } else {
                                /* "2G": what every sysadmin means by it. */
                                binary = true;
                        }
                        if (*s != '\0')
                                return -EINVAL;
                        for (int i = 0; i < exp; i++)
                                unit *= binary ? 1024 : 1000;
                } else {
                        return -EINVAL;
                }
        }
        uint64_t bytes;
        r = scale(v, frac, div, unit, &bytes);
        if (r < 0)
                return r;
        *ret_bytes = bytes;
        return 0;
}

void format_duration_ms(uint64_t ms, char *buf, size_t size) {
        static const struct {
                const char *suffix;
                uint64_t ms;
        } units[] = {
                {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1},
        };
        size_t off = 0;

        if (size == 0)
                return;
        buf[0] = '\0';
        if (ms == 0) {
                snprintf(buf, size, "0");
                return;
        }
        for (size_t i = 0; i < sizeof units / sizeof units[0] && ms > 0; i++) {
                uint64_t n = ms / units[i].ms;
                if (n == 0)
                        continue;
                ms -= n * units[i].ms;
                int w = snprintf(buf + off, size - off, "%llu%s", (unsigned long long)n, units[i].suffix);
                if (w < 0 || (size_t)w >= size - off)
                        return; /* truncated: snprintf already NUL-terminated it */
                off += (size_t)w;
        }
}
