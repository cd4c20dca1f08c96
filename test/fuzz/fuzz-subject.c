/* fuzz-subject.c — libFuzzer target for subject syntax and the trie. The input is split
 * at its first NUL or newline into a pattern and a subject; the validity checks must
 * hold their invariants on any bytes, and for valid inputs the trie must agree with
 * subject_matches(), including for the pattern's wildcard variants. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "subject.h"
#include "sublist.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_match(void *item, void *userdata) { (*(size_t *)userdata)++; }

/* One trie for the whole run: every check leaves it empty again, which also exercises
 * pruning back to the bare root. */
static size_t trie_count(const char *pattern, const char *subject) {
        static sublist *s;
        if (!s && !(s = sublist_new()))
                abort();
        if (sublist_insert(s, pattern, s) < 0)
                abort();
        size_t calls = 0, n = sublist_match(s, subject, on_match, &calls);
        if (n != calls || sublist_count(s) != 1)
                abort();
        if (sublist_remove(s, pattern, s) != 0 || sublist_count(s) != 0 || sublist_match(s, subject, on_match, &calls))
                abort();
        return n;
}

static void check_pair(const char *pattern, const char *subject) {
        size_t n = trie_count(pattern, subject);
        if (n != (subject_matches(pattern, subject) ? 1u : 0u))
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > 4096)
                return 0; /* deep token chains recurse; keep the stack bounded */
        char *buf = malloc(size + 2);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        buf[size] = buf[size + 1] = '\0';

        size_t cut = 0;
        while (cut < size && buf[cut] != '\0' && buf[cut] != '\n')
                cut++;
        buf[cut] = '\0';
        char *pattern = buf, *subject = buf + cut + 1;

        bool pv = pattern_is_valid(pattern), sv = subject_is_valid(subject);
        /* Every subject is a pattern; a subject is never a pattern with wildcards. */
        if (subject_is_valid(pattern) && !pv)
                abort();
        if (sv && !pattern_is_valid(subject))
                abort();
        if (sv && !subject_matches(subject, subject))
                abort();
        if (sv && (!subject_matches(">", subject) || !subject_matches(subject, subject)))
                abort();

        if (pv && sv) {
                check_pair(pattern, subject);

                /* The subject turned into patterns: each token as `*`, and a `>` tail. */
                size_t len = strlen(subject);
                char *p = malloc(len + 3);
                if (!p)
                        abort();
                /* The first 16 tokens: enough for every shape, and it keeps each run
                 * linear in the input rather than quadratic. */
                for (size_t i = 0, tokens = 0; i <= len && tokens < 16; i++) {
                        if (i > 0 && subject[i - 1] != '.')
                                continue; /* only at token starts */
                        tokens++;
                        size_t end = i;
                        while (subject[end] && subject[end] != '.')
                                end++;
                        /* prefix, `*`, rest */
                        memcpy(p, subject, i);
                        p[i] = '*';
                        memcpy(p + i + 1, subject + end, len - end + 1);
                        if (!pattern_is_valid(p) || !subject_matches(p, subject))
                                abort();
                        check_pair(p, subject);
                        /* prefix, `>` */
                        p[i] = '>';
                        p[i + 1] = '\0';
                        if (!pattern_is_valid(p) || !subject_matches(p, subject))
                                abort();
                        check_pair(p, subject);
                }
                free(p);
        }
        free(buf);
        return 0;
}
