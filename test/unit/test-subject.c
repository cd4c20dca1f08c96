/* test-subject.c — NATS subject syntax: what is a valid subject or pattern, and how
 * `*` and `>` match. These are the rules the trie is checked against, so the edge
 * cases live here. */
#include <stdbool.h>

#include "subject.h"
#include "test.h"

static void test_subject_valid(void) {
        static const char *const good[] = {
                "a", "foo", "foo.bar", "a.b.c.d.e", "_INBOX.agent.17", "metrics.cpu-0", "a*", "*a", "a>b",
                "x.>y", "héllo.wörld", "0.1.2", "a-b_c:d/e", "ÿ",
        };
        static const char *const bad[] = {
                "", ".", "..", ".a", "a.", "a..b", "a b", "a\tb", "a\nb", "a\rb", "a\x7f", "a\x01.b",
                "*", ">", "a.*", "a.>", "*.a", "a.*.b", " a", "a ",
        };
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                if (!subject_is_valid(good[i]))
                        fprintf(stderr, "should be a valid subject: \"%s\"\n", good[i]);
                CHECK(subject_is_valid(good[i]));
                CHECK(pattern_is_valid(good[i])); /* every subject is also a pattern */
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                if (subject_is_valid(bad[i]))
                        fprintf(stderr, "should be an invalid subject: \"%s\"\n", bad[i]);
                CHECK(!subject_is_valid(bad[i]));
        }
        CHECK(!subject_is_valid(NULL));
}

static void test_pattern_valid(void) {
        static const char *const good[] = {
                "*", ">", "a.*", "a.>", "*.a", "*.*", "*.>", "a.*.b", "a.*.>", "_INBOX.x.>", "a*.b>",
        };
        static const char *const bad[] = {
                "", ".", "a.", ".a", "a..b", ">.a", "a.>.b", ">.>", "> ", "* ", "a.* .b", "a.\x01", "a.b\n",
        };
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                if (!pattern_is_valid(good[i]))
                        fprintf(stderr, "should be a valid pattern: \"%s\"\n", good[i]);
                CHECK(pattern_is_valid(good[i]));
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                if (pattern_is_valid(bad[i]))
                        fprintf(stderr, "should be an invalid pattern: \"%s\"\n", bad[i]);
                CHECK(!pattern_is_valid(bad[i]));
        }
        CHECK(!pattern_is_valid(NULL));
}

static void test_matches(void) {
        static const struct {
                const char *pattern, *subject;
                bool match;
        } cases[] = {
                {"a", "a", true},
                {"a", "b", false},
                {"a", "ab", false},
                {"ab", "a", false},
                {"a.b", "a.b", true},
                {"a.b", "a.bc", false},
                {"a.b", "a", false},
                {"a", "a.b", false},
                {"*", "a", true},
                {"*", "a.b", false},
                {"a.*", "a.b", true},
                {"a.*", "a", false},
                {"a.*", "a.b.c", false},
                {"*.b", "a.b", true},
                {"*.b", "a.c", false},
                {"a.*.c", "a.b.c", true},
                {"a.*.c", "a.b.d", false},
                {"*.*", "a.b", true},
                {"*.*", "a", false},
                {">", "a", true},
                {">", "a.b.c.d", true},
                {"a.>", "a", false}, /* `>` needs at least one token */
                {"a.>", "a.b", true},
                {"a.>", "a.b.c", true},
                {"a.>", "b.c", false},
                {"*.>", "a", false},
                {"*.>", "a.b", true},
                {"a.*.>", "a.b.c", true},
                {"a.*.>", "a.b", false},
                {"a*", "a*", true}, /* wildcard characters inside a token are literal */
                {"a*", "ab", false},
                {"a>", "a>", true},
                {"a>", "a.b", false},
                {"_INBOX.x.>", "_INBOX.x.42", true},
                {"_INBOX.x.>", "_INBOX.y.42", false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                bool m = subject_matches(cases[i].pattern, cases[i].subject);
                if (m != cases[i].match)
                        fprintf(stderr, "subject_matches(\"%s\", \"%s\") == %d\n", cases[i].pattern,
                                cases[i].subject, m);
                CHECK(m == cases[i].match);
        }
}

/* Overlap of two patterns: what config.c asks of each import against the command
 * subjects; symmetric, and equal to subject_matches when one side is literal. */
static void test_overlap(void) {
        static const struct {
                const char *a, *b;
                bool overlap;
        } cases[] = {
                {"gpu.task.>", "gpu.task.run.>", true},
                {"gpu.>", "gpu.task.enqueue", true},
                {">", "gpu.task.enqueue", true},
                {"*.task.*", "gpu.task.enqueue", true},
                {"gpu.*.run.*", "gpu.task.run.>", true},
                {"gpu.task.run", "gpu.task.run.>", false}, /* `>` needs one more token */
                {"gpu.task.running", "gpu.task.run.>", false},
                {"gpu.task.done", "gpu.task.enqueue", false},
                {"gpu.worker.>", "gpu.task.run.>", false},
                {"gpu.task.*", "gpu.task.run.>", false},
                {"*.*.*.*", "gpu.task.run.>", true},
                {"gpu.task.enqueue.x", "gpu.task.enqueue", false},
                {"gpu.task.run.*", "gpu.task.run.3", true},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                bool o = patterns_overlap(cases[i].a, cases[i].b), r = patterns_overlap(cases[i].b, cases[i].a);
                if (o != cases[i].overlap || r != o)
                        fprintf(stderr, "patterns_overlap(\"%s\", \"%s\") == %d, reversed %d\n", cases[i].a,
                                cases[i].b, o, r);
                CHECK(o == cases[i].overlap && r == o);
        }
}

int main(void) {
        RUN(test_subject_valid);
        RUN(test_pattern_valid);
        RUN(test_matches);
        RUN(test_overlap);
        return 0;
}
