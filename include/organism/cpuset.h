/* organism/cpuset.h — CPU sets as the kernel writes them, header-only for every plugin.
 *
 * Two text forms: the cpu list of `smp_affinity_list`, `isolcpus=` or `present`
 * ("0-1,4,10-11", also the kernel's stride form "0-11:2/4"), and the hex mask of
 * `smp_affinity`, `rps_cpus` and `xps_cpus`: comma-separated 32-bit groups, highest
 * first ("ff,ffffffff"; above 32 CPUs a plain 64-bit hex number is wrong). Sets hold up
 * to ORG_CPUSET_MAX CPUs; a CPU beyond that is -E2BIG, never silently dropped. All
 * functions are static inline so a plugin links against nothing of agentd. Errors are 0
 * or a negative errno; `ret` parameters are not written on failure. */
#ifndef ORGANISM_CPUSET_H
#define ORGANISM_CPUSET_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ORG_CPUSET_MAX   1024u
#define ORG_CPUSET_WORDS (ORG_CPUSET_MAX / 64u)
/* Text sizes that always suffice: a list of every other CPU, a full mask. */
#define ORG_CPUSET_LIST_MAX (ORG_CPUSET_MAX / 2u * 5u + 1u)
#define ORG_CPUSET_MASK_MAX (ORG_CPUSET_MAX / 32u * 9u + 1u)

typedef struct org_cpuset {
        uint64_t bits[ORG_CPUSET_WORDS];
} org_cpuset;

static inline void org_cpuset_zero(org_cpuset *s) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                s->bits[i] = 0;
}

static inline int org_cpuset_add(org_cpuset *s, unsigned cpu) {
        if (cpu >= ORG_CPUSET_MAX)
                return -E2BIG;
        s->bits[cpu / 64u] |= UINT64_C(1) << (cpu % 64u);
        return 0;
}

static inline void org_cpuset_del(org_cpuset *s, unsigned cpu) {
        if (cpu < ORG_CPUSET_MAX)
                s->bits[cpu / 64u] &= ~(UINT64_C(1) << (cpu % 64u));
}

static inline bool org_cpuset_has(const org_cpuset *s, unsigned cpu) {
        return cpu < ORG_CPUSET_MAX && (s->bits[cpu / 64u] >> (cpu % 64u)) & 1u;
}

/* Adds first..last (inclusive). */
static inline int org_cpuset_add_range(org_cpuset *s, unsigned first, unsigned last) {
        if (last >= ORG_CPUSET_MAX || first > last)
                return last >= ORG_CPUSET_MAX ? -E2BIG : -EINVAL;
        for (unsigned c = first; c <= last; c++)
                s->bits[c / 64u] |= UINT64_C(1) << (c % 64u);
        return 0;
}

/* r = a | b, a & b, a & ~b; r may be a or b. */
static inline void org_cpuset_or(org_cpuset *r, const org_cpuset *a, const org_cpuset *b) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                r->bits[i] = a->bits[i] | b->bits[i];
}

static inline void org_cpuset_and(org_cpuset *r, const org_cpuset *a, const org_cpuset *b) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                r->bits[i] = a->bits[i] & b->bits[i];
}

static inline void org_cpuset_andnot(org_cpuset *r, const org_cpuset *a, const org_cpuset *b) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                r->bits[i] = a->bits[i] & ~b->bits[i];
}

static inline bool org_cpuset_equal(const org_cpuset *a, const org_cpuset *b) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                if (a->bits[i] != b->bits[i])
                        return false;
        return true;
}

static inline bool org_cpuset_intersects(const org_cpuset *a, const org_cpuset *b) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                if (a->bits[i] & b->bits[i])
                        return true;
        return false;
}

/* a is a subset of b. */
static inline bool org_cpuset_subset(const org_cpuset *a, const org_cpuset *b) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                if (a->bits[i] & ~b->bits[i])
                        return false;
        return true;
}

static inline bool org_cpuset_empty(const org_cpuset *s) {
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                if (s->bits[i])
                        return false;
        return true;
}

static inline unsigned org_cpuset_count(const org_cpuset *s) {
        unsigned n = 0;
        for (unsigned i = 0; i < ORG_CPUSET_WORDS; i++)
                for (uint64_t w = s->bits[i]; w; w &= w - 1)
                        n++;
        return n;
}

/* The first CPU >= from in s, or -1. */
static inline int org_cpuset_next(const org_cpuset *s, unsigned from) {
        for (unsigned c = from; c < ORG_CPUSET_MAX;) {
                uint64_t w = s->bits[c / 64u] >> (c % 64u);
                if (w) {
                        while (!(w & 1u)) {
                                w >>= 1;
                                c++;
                        }
                        return (int)c;
                }
                c = (c / 64u + 1u) * 64u;
        }
        return -1;
}

static inline int org_cpuset_first(const org_cpuset *s) {
        return org_cpuset_next(s, 0);
}

static inline int org_cpuset_last(const org_cpuset *s) {
        for (unsigned i = ORG_CPUSET_WORDS; i > 0; i--)
                if (s->bits[i - 1])
                        for (unsigned b = 64; b > 0; b--)
                                if ((s->bits[i - 1] >> (b - 1)) & 1u)
                                        return (int)((i - 1) * 64u + b - 1);
        return -1;
}

/* The n-th CPU of s (0-based, in ascending order), or -1. */
static inline int org_cpuset_nth(const org_cpuset *s, unsigned n) {
        for (int c = org_cpuset_first(s); c >= 0; c = org_cpuset_next(s, (unsigned)c + 1u))
                if (n-- == 0)
                        return c;
        return -1;
}

#define ORG_CPUSET_FOREACH(cpu, s)                                                                                     \
        for (int cpu = org_cpuset_first(s); cpu >= 0; cpu = org_cpuset_next((s), (unsigned)cpu + 1u))

static inline int org_cpuset__number(const char **p, unsigned *ret) {
        const char *s = *p;
        unsigned long v = 0;
        if (*s < '0' || *s > '9')
                return -EINVAL;
        for (; *s >= '0' && *s <= '9'; s++) {
                v = v * 10u + (unsigned long)(*s - '0');
                if (v >= ORG_CPUSET_MAX)
                        return -E2BIG;
        }
        *p = s;
        *ret = (unsigned)v;
        return 0;
}

static inline bool org_cpuset__space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parses a cpu list: "", "3", "0-1,4,10-11", the stride form "0-11:2/4" (the first 2
 * of every 4), trailing white space allowed. The empty list is the empty set. */
static inline int org_cpuset_parse_list(const char *text, org_cpuset *ret) {
        org_cpuset s;
        org_cpuset_zero(&s);
        const char *p = text;
        while (org_cpuset__space(*p))
                p++;
        while (*p && !org_cpuset__space(*p)) {
                unsigned a, b, used = 1, group = 1;
                int r = org_cpuset__number(&p, &a);
                if (r < 0)
                        return r;
                b = a;
                if (*p == '-') {
                        p++;
                        if ((r = org_cpuset__number(&p, &b)) < 0)
                                return r;
                        if (b < a)
                                return -EINVAL;
                        if (*p == ':') {
                                p++;
                                if ((r = org_cpuset__number(&p, &used)) < 0)
                                        return r;
                                if (*p++ != '/' || (r = org_cpuset__number(&p, &group)) < 0)
                                        return r < 0 ? r : -EINVAL;
                                if (used == 0 || group == 0 || used > group)
                                        return -EINVAL;
                        }
                }
                for (unsigned c = a; c <= b; c++)
                        if ((c - a) % group < used)
                                s.bits[c / 64u] |= UINT64_C(1) << (c % 64u);
                if (*p == ',') {
                        p++;
                        if (*p == '\0' || org_cpuset__space(*p))
                                return -EINVAL;
                } else if (*p && !org_cpuset__space(*p))
                        return -EINVAL;
        }
        while (org_cpuset__space(*p))
                p++;
        if (*p)
                return -EINVAL;
        *ret = s;
        return 0;
}

/* Appends text to buf at *pos; -ENOBUFS when it does not fit (NUL included). */
static inline int org_cpuset__put(char *buf, size_t size, size_t *pos, const char *text, size_t n) {
        if (*pos + n + 1 > size)
                return -ENOBUFS;
        for (size_t i = 0; i < n; i++)
                buf[*pos + i] = text[i];
        *pos += n;
        buf[*pos] = '\0';
        return 0;
}

static inline int org_cpuset__put_uint(char *buf, size_t size, size_t *pos, unsigned v) {
        char d[12];
        size_t n = 0;
        do {
                d[sizeof d - 1 - n++] = (char)('0' + v % 10u);
                v /= 10u;
        } while (v);
        return org_cpuset__put(buf, size, pos, d + sizeof d - n, n);
}

/* Prints the canonical list ("0-1,4,10-11"; "" for the empty set) as the kernel does.
 * Returns its length, or -ENOBUFS (buf then holds nothing useful). */
static inline int org_cpuset_format_list(const org_cpuset *s, char *buf, size_t size) {
        size_t pos = 0;
        int r;
        if (size == 0)
                return -ENOBUFS;
        buf[0] = '\0';
        for (int c = org_cpuset_first(s); c >= 0;) {
                int e = c;
                while (e + 1 < (int)ORG_CPUSET_MAX && org_cpuset_has(s, (unsigned)e + 1u))
                        e++;
                if (pos && (r = org_cpuset__put(buf, size, &pos, ",", 1)) < 0)
                        return r;
                if ((r = org_cpuset__put_uint(buf, size, &pos, (unsigned)c)) < 0)
                        return r;
                if (e > c && ((r = org_cpuset__put(buf, size, &pos, "-", 1)) < 0 ||
                              (r = org_cpuset__put_uint(buf, size, &pos, (unsigned)e)) < 0))
                        return r;
                c = org_cpuset_next(s, (unsigned)e + 1u);
        }
        return (int)pos;
}

static inline int org_cpuset__hex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Parses a hex mask in the kernel's 32-bit groups, highest first ("c00",
 * "00000000,00000c00", "ff,ffffffff"); each group has 1 to 8 digits, trailing white
 * space allowed. A set bit beyond ORG_CPUSET_MAX is -E2BIG. */
static inline int org_cpuset_parse_mask(const char *text, org_cpuset *ret) {
        const char *p = text, *end;
        while (org_cpuset__space(*p))
                p++;
        end = p;
        while (*end && !org_cpuset__space(*end))
                end++;
        for (const char *q = end; *q; q++)
                if (!org_cpuset__space(*q))
                        return -EINVAL;
        if (end == p)
                return -EINVAL;
        org_cpuset s;
        org_cpuset_zero(&s);
        /* walk the groups from the lowest (last) one */
        unsigned group = 0;
        const char *g_end = end;
        for (;;) {
                const char *g = g_end;
                while (g > p && g[-1] != ',')
                        g--;
                size_t n = (size_t)(g_end - g);
                if (n == 0 || n > 8)
                        return -EINVAL;
                uint32_t v = 0;
                for (const char *c = g; c < g_end; c++) {
                        int h = org_cpuset__hex(*c);
                        if (h < 0)
                                return -EINVAL;
                        v = v << 4 | (uint32_t)h;
                }
                if (v) {
                        if (group >= ORG_CPUSET_MAX / 32u)
                                return -E2BIG;
                        s.bits[group / 2u] |= (uint64_t)v << (32u * (group % 2u));
                }
                group++;
                if (g == p)
                        break;
                g_end = g - 1; /* skip the comma */
        }
        *ret = s;
        return 0;
}

/* Prints the mask in 32-bit groups, highest first, every group but the first padded to
 * 8 digits ("ff,ffffffff"). nbits > 0 pads to that many CPUs as the kernel does for
 * nr_cpu_ids ("000" for 12 CPUs, "00000000,00000c00" for 64); 0 = as short as the set
 * allows ("0" when empty). Returns the length or -ENOBUFS. */
static inline int org_cpuset_format_mask(const org_cpuset *s, unsigned nbits, char *buf, size_t size) {
        static const char digits[] = "0123456789abcdef";
        int last = org_cpuset_last(s);
        unsigned bits = last < 0 ? 1u : (unsigned)last + 1u;
        if (nbits > ORG_CPUSET_MAX)
                nbits = ORG_CPUSET_MAX;
        if (nbits > bits)
                bits = nbits;
        unsigned ndigits = (bits + 3u) / 4u; /* hex digits in all */
        size_t pos = 0;
        int r;
        if (size == 0)
                return -ENOBUFS;
        buf[0] = '\0';
        for (unsigned d = ndigits; d > 0; d--) {
                unsigned bit = (d - 1u) * 4u;
                unsigned v = (unsigned)((s->bits[bit / 64u] >> (bit % 64u)) & 0xfu);
                char c = digits[v];
                if ((r = org_cpuset__put(buf, size, &pos, &c, 1)) < 0)
                        return r;
                if (d > 1 && (d - 1u) % 8u == 0 && (r = org_cpuset__put(buf, size, &pos, ",", 1)) < 0)
                        return r;
        }
        return (int)pos;
}

#ifdef __cplusplus
}
#endif
#endif
