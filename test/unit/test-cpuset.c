/* test-cpuset.c — the SDK's cpuset (organism/cpuset.h) against a brute-force model: a
 * plain array of booleans. Random sets go through list and mask text and back, set
 * operations agree with the model bit by bit, and the kernel's own spellings parse
 * ("0-1,4,10-11", "ff,ffffffff", "00000000,00000c00", "0-11:2/4"). */
#include <organism/cpuset.h>

#include "test.h"

#define N ORG_CPUSET_MAX

typedef struct model {
        bool b[N];
} model;

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

/* A random set of one of several shapes: sparse, dense, runs, small, empty. */
static void random_set(model *m, org_cpuset *s) {
        memset(m, 0, sizeof *m);
        org_cpuset_zero(s);
        unsigned shape = (unsigned)(next_rand() % 5), limit = 1 + (unsigned)(next_rand() % N);
        for (unsigned c = 0; c < limit; c++) {
                bool on;
                switch (shape) {
                case 0:
                        on = next_rand() % 17 == 0;
                        break;
                case 1:
                        on = next_rand() % 3 != 0;
                        break;
                case 2:
                        on = (c / (1 + limit / 7)) % 2 == 0;
                        break;
                case 3:
                        on = c < 16 && next_rand() % 2;
                        break;
                default:
                        on = false;
                }
                if (on) {
                        m->b[c] = true;
                        CHECK_INT(org_cpuset_add(s, c), 0);
                }
        }
}

static void check_same(const model *m, const org_cpuset *s) {
        unsigned n = 0;
        int first = -1, last = -1;
        for (unsigned c = 0; c < N; c++) {
                CHECK(org_cpuset_has(s, c) == m->b[c]);
                if (m->b[c]) {
                        if (first < 0)
                                first = (int)c;
                        last = (int)c;
                        CHECK_INT(org_cpuset_nth(s, n), c);
                        n++;
                }
        }
        CHECK_INT(org_cpuset_count(s), n);
        CHECK_INT(org_cpuset_first(s), first);
        CHECK_INT(org_cpuset_last(s), last);
        CHECK(org_cpuset_empty(s) == (n == 0));
        CHECK_INT(org_cpuset_nth(s, n), -1);
}

/* The list the model spells, built the obvious way. */
static void model_list(const model *m, char *buf, size_t size) {
        size_t pos = 0;
        buf[0] = '\0';
        for (unsigned c = 0; c < N; c++) {
                if (!m->b[c])
                        continue;
                unsigned e = c;
                while (e + 1 < N && m->b[e + 1])
                        e++;
                pos += (size_t)snprintf(buf + pos, size - pos, "%s%u", pos ? "," : "", c);
                if (e > c)
                        pos += (size_t)snprintf(buf + pos, size - pos, "-%u", e);
                c = e;
        }
}

static void test_round_trip(void) {
        static char text[ORG_CPUSET_LIST_MAX], want[ORG_CPUSET_LIST_MAX * 2], mask[ORG_CPUSET_MASK_MAX];
        for (int i = 0; i < 3000; i++) {
                model m;
                org_cpuset s, back;
                random_set(&m, &s);
                check_same(&m, &s);
                int n = org_cpuset_format_list(&s, text, sizeof text);
                CHECK(n >= 0);
                model_list(&m, want, sizeof want);
                CHECK_STR(text, want);
                CHECK_INT(org_cpuset_parse_list(text, &back), 0);
                CHECK(org_cpuset_equal(&s, &back));
                n = org_cpuset_format_mask(&s, 0, mask, sizeof mask);
                CHECK(n > 0);
                CHECK_INT(org_cpuset_parse_mask(mask, &back), 0);
                CHECK(org_cpuset_equal(&s, &back));
                /* padded as the kernel pads for nr_cpu_ids: same set */
                n = org_cpuset_format_mask(&s, N, mask, sizeof mask);
                CHECK_INT(n, N / 32 * 9 - 1);
                CHECK_INT(org_cpuset_parse_mask(mask, &back), 0);
                CHECK(org_cpuset_equal(&s, &back));
                /* the model's mask digit by digit */
                for (unsigned g = 0; g < N / 32; g++) {
                        const char *grp = mask + (N / 32 - 1 - g) * 9;
                        unsigned v = 0;
                        for (unsigned b = 0; b < 32; b++)
                                v |= (unsigned)m.b[g * 32 + b] << b;
                        char hex[9];
                        snprintf(hex, sizeof hex, "%08x", v);
                        CHECK(memcmp(grp, hex, 8) == 0);
                }
        }
}

static void test_operations(void) {
        for (int i = 0; i < 2000; i++) {
                model a, b, r;
                org_cpuset sa, sb, s;
                random_set(&a, &sa);
                random_set(&b, &sb);
                bool inter = false, sub = true, eq = true;
                for (unsigned c = 0; c < N; c++) {
                        inter = inter || (a.b[c] && b.b[c]);
                        sub = sub && (!a.b[c] || b.b[c]);
                        eq = eq && a.b[c] == b.b[c];
                }
                CHECK(org_cpuset_intersects(&sa, &sb) == inter);
                CHECK(org_cpuset_subset(&sa, &sb) == sub);
                CHECK(org_cpuset_equal(&sa, &sb) == eq);
                for (unsigned c = 0; c < N; c++)
                        r.b[c] = a.b[c] || b.b[c];
                org_cpuset_or(&s, &sa, &sb);
                check_same(&r, &s);
                for (unsigned c = 0; c < N; c++)
                        r.b[c] = a.b[c] && b.b[c];
                org_cpuset_and(&s, &sa, &sb);
                check_same(&r, &s);
                for (unsigned c = 0; c < N; c++)
                        r.b[c] = a.b[c] && !b.b[c];
                org_cpuset_andnot(&s, &sa, &sb);
                check_same(&r, &s);
                /* in place */
                s = sa;
                org_cpuset_or(&s, &s, &sb);
                for (unsigned c = 0; c < N; c++)
                        r.b[c] = a.b[c] || b.b[c];
                check_same(&r, &s);
                /* next from every point */
                unsigned from = (unsigned)(next_rand() % N);
                int want = -1;
                for (unsigned c = from; c < N; c++)
                        if (a.b[c]) {
                                want = (int)c;
                                break;
                        }
                CHECK_INT(org_cpuset_next(&sa, from), want);
                int k = 0;
                ORG_CPUSET_FOREACH(cpu, &sa) {
                        CHECK(a.b[cpu]);
                        k++;
                }
                CHECK_INT(k, org_cpuset_count(&sa));
        }
}

static void check_list(const char *text, const char *canonical) {
        org_cpuset s;
        char buf[256];
        CHECK_INT(org_cpuset_parse_list(text, &s), 0);
        CHECK(org_cpuset_format_list(&s, buf, sizeof buf) >= 0);
        CHECK_STR(buf, canonical);
}

static void check_mask(const char *text, const char *list) {
        org_cpuset s;
        char buf[256];
        CHECK_INT(org_cpuset_parse_mask(text, &s), 0);
        CHECK(org_cpuset_format_list(&s, buf, sizeof buf) >= 0);
        CHECK_STR(buf, list);
}

static void test_kernel_spellings(void) {
        check_list("0-1,4,10-11\n", "0-1,4,10-11");
        check_list("", "");
        check_list("\n", "");
        check_list("3", "3");
        check_list("0,1,2,3", "0-3");
        check_list("4-4,0-1", "0-1,4");
        check_list("0-11:2/4", "0-1,4-5,8-9");
        check_list("1023", "1023");
        check_mask("c00\n", "10-11");
        check_mask("fff", "0-11");
        check_mask("00000000,00000c00", "10-11");
        check_mask("ff,ffffffff", "0-39");
        check_mask("0", "");
        check_mask("80000000,00000000,00000001", "0,95");
        check_mask("80000000,00000001", "0,63");
        org_cpuset s;
        /* refused, and ret untouched */
        const char *bad_lists[] = {"a",   "1-",      "-1",      "3-1",  "1,,2",   "1,",
                                   "1 2", "0-3:0/4", "0-3:3/2", "1024", "0-1024", "99999999999"};
        for (size_t i = 0; i < sizeof bad_lists / sizeof bad_lists[0]; i++) {
                org_cpuset_zero(&s);
                org_cpuset_add(&s, 7);
                CHECK(org_cpuset_parse_list(bad_lists[i], &s) < 0);
                CHECK(org_cpuset_has(&s, 7) && org_cpuset_count(&s) == 1);
        }
        CHECK_INT(org_cpuset_parse_list("1024", &s), -E2BIG);
        const char *bad_masks[] = {"", "g", "1,", ",1", "123456789", "1 2", "ff,,ff"};
        for (size_t i = 0; i < sizeof bad_masks / sizeof bad_masks[0]; i++)
                CHECK(org_cpuset_parse_mask(bad_masks[i], &s) < 0);
        /* a set bit past the limit is refused, zero groups past it are fine */
        char big[ORG_CPUSET_MASK_MAX + 16];
        snprintf(big, sizeof big, "1");
        for (unsigned g = 0; g < N / 32; g++)
                strcat(big, ",00000000");
        CHECK_INT(org_cpuset_parse_mask(big, &s), -E2BIG);
        big[0] = '0';
        CHECK_INT(org_cpuset_parse_mask(big, &s), 0);
        CHECK(org_cpuset_empty(&s));

        /* formats: the kernel's padding for 12 and 64 CPUs, short buffers */
        char buf[64];
        org_cpuset_parse_list("10-11", &s);
        CHECK(org_cpuset_format_mask(&s, 12, buf, sizeof buf) == 3);
        CHECK_STR(buf, "c00");
        CHECK(org_cpuset_format_mask(&s, 64, buf, sizeof buf) > 0);
        CHECK_STR(buf, "00000000,00000c00");
        org_cpuset_parse_list("0-39", &s);
        CHECK(org_cpuset_format_mask(&s, 0, buf, sizeof buf) > 0);
        CHECK_STR(buf, "ff,ffffffff");
        org_cpuset_zero(&s);
        CHECK(org_cpuset_format_mask(&s, 0, buf, sizeof buf) == 1);
        CHECK_STR(buf, "0");
        org_cpuset_parse_list("0-1,4,10-11", &s);
        CHECK_INT(org_cpuset_format_list(&s, buf, 5), -ENOBUFS);
        CHECK_INT(org_cpuset_format_list(&s, buf, 12), 11);
        CHECK_INT(org_cpuset_format_mask(&s, 64, buf, 10), -ENOBUFS);
        CHECK_INT(org_cpuset_add(&s, N), -E2BIG);
        CHECK_INT(org_cpuset_add_range(&s, 5, 3), -EINVAL);
        CHECK_INT(org_cpuset_add_range(&s, 5, N), -E2BIG);
}

int main(void) {
        RUN(test_kernel_spellings);
        RUN(test_round_trip);
        RUN(test_operations);
        return 0;
}
