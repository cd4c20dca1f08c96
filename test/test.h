/* test.h — the unit tests' few assertion macros. A failed check prints where and what,
 * then the test exits 1; a test that cannot run here exits 77 (meson's "skipped")
 * after saying why. */
#ifndef TEST_TEST_H
#define TEST_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_SKIP(...)                                                                   \
        do {                                                                             \
                printf("SKIP: ");                                                        \
                printf(__VA_ARGS__);                                                     \
                printf("\n");                                                            \
                exit(77);                                                                \
        } while (0)

#define CHECK(expr)                                                                      \
        do {                                                                             \
                if (!(expr)) {                                                           \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
                        exit(1);                                                         \
                }                                                                        \
        } while (0)

#define CHECK_INT(a, b)                                                                  \
        do {                                                                             \
                long long _a = (long long)(a), _b = (long long)(b);                      \
                if (_a != _b) {                                                          \
                        fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, _a, #b, _b); \
                        exit(1);                                                         \
                }                                                                        \
        } while (0)

#define CHECK_STR(a, b)                                                                  \
        do {                                                                             \
                const char *_a = (a), *_b = (b);                                         \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                                 \
                        fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
                                _a ? _a : "(null)", _b ? _b : "(null)");                 \
                        exit(1);                                                         \
                }                                                                        \
        } while (0)

#define CHECK_CONTAINS(hay, needle)                                                      \
        do {                                                                             \
                const char *_h = (hay), *_n = (needle);                                  \
                if (!_h || !strstr(_h, _n)) {                                            \
                        fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
                                _h ? _h : "(null)", _n);                                 \
                        exit(1);                                                         \
                }                                                                        \
        } while (0)

/* Runs one test function and says so. */
#define RUN(fn)                                                                          \
        do {                                                                             \
                printf("# %s\n", #fn);                                                   \
                fflush(stdout);                                                          \
                fn();                                                                    \
        } while (0)

#endif
