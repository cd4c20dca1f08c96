/* subject.c — NATS subject syntax: validity of literal subjects and subscription
 * patterns, and matching one pattern against one subject. The bus matches through the
 * trie (sublist.c); subject_matches() is the reference the trie is tested against and
 * what callers use for a single check. Bytes >= 0x80 are allowed so UTF-8 subjects
 * pass, as nats-server accepts them; a `*` or `>` inside a longer token is literal. */
#include <stdbool.h>
#include <stddef.h>

#include "subject.h"

/* Space, control characters and DEL would make a subject unprintable or ambiguous on
 * the wire (the NATS protocol separates fields by whitespace). */
static inline bool char_is_bad(unsigned char c) { return c <= 0x20 || c == 0x7f; }

/* One scan for both forms: wildcards decide which of the two is asked for. */
static bool check(const char *s, bool allow_wildcards) {
        if (!s || !*s)
                return false;

        const char *tok = s;
        for (const char *p = s;; p++) {
                unsigned char c = (unsigned char)*p;
                if (c == '.' || c == '\0') {
                        size_t len = (size_t)(p - tok);
                        if (len == 0)
                                return false; /* leading, trailing or double dot */
                        if (len == 1 && (*tok == '*' || *tok == '>')) {
                                if (!allow_wildcards)
                                        return false;
                                /* `>` swallows the rest, so nothing may follow it. */
                                if (*tok == '>' && c != '\0')
                                        return false;
                        }
                        if (c == '\0')
                                return true;
                        tok = p + 1;
                } else if (char_is_bad(c))
                        return false;
        }
}

bool subject_is_valid(const char *s) { return check(s, false); }

bool pattern_is_valid(const char *s) { return check(s, true); }

bool subject_matches(const char *pattern, const char *subject) {
        const char *p = pattern, *s = subject;

        for (;;) {
                const char *pe = p, *se = s;
                while (*pe && *pe != '.')
                        pe++;
                while (*se && *se != '.')
                        se++;

                if (pe - p == 1 && *p == '>')
                        return true; /* at least one subject token is left here */
                if (!(pe - p == 1 && *p == '*')) {
                        if (pe - p != se - s)
                                return false;
                        for (const char *a = p, *b = s; a < pe; a++, b++)
                                if (*a != *b)
                                        return false;
                }

                if (!*pe || !*se)
                        return !*pe && !*se; /* both must end on the same token */
                p = pe + 1;
                s = se + 1;
        }
}

static bool token_is(const char *t, const char *end, char c) { return end - t == 1 && *t == c; }

bool patterns_overlap(const char *a, const char *b) {
        for (;;) {
                const char *ae = a, *be = b;
                while (*ae && *ae != '.')
                        ae++;
                while (*be && *be != '.')
                        be++;

                if (token_is(a, ae, '>') || token_is(b, be, '>'))
                        return true; /* each side has at least one token here */
                if (!token_is(a, ae, '*') && !token_is(b, be, '*')) {
                        if (ae - a != be - b)
                                return false;
                        for (const char *x = a, *y = b; x < ae; x++, y++)
                                if (*x != *y)
                                        return false;
                }

                if (!*ae || !*be)
                        return !*ae && !*be;
                a = ae + 1;
                b = be + 1;
        }
}
