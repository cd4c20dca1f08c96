/* test-escape.c — escaping of peer strings (str_escape, log_escape, utf8_is_valid) and
 * the log rate limiter: what a control peer or a NATS message may send must come out
 * printable, valid UTF-8 and unable to forge a log line or move a terminal. */
#include <stdint.h>

#include "log.h"
#include "test.h"
#include "util.h"

static const char *esc(const char *s, unsigned flags) {
        static char buf[256];
        str_escape(s, strlen(s), flags, buf, sizeof buf);
        return buf;
}

static void test_utf8(void) {
        CHECK(utf8_is_valid("plain", 5));
        CHECK(utf8_is_valid("gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80", 15));
        CHECK(!utf8_is_valid("\xff", 1));
        CHECK(!utf8_is_valid("\xc3", 1));              /* truncated */
        CHECK(!utf8_is_valid("\xc0\xaf", 2));          /* overlong '/' */
        CHECK(!utf8_is_valid("\xe0\x80\xaf", 3));      /* overlong */
        CHECK(!utf8_is_valid("\xed\xa0\x80", 3));      /* a surrogate */
        CHECK(!utf8_is_valid("\xf4\x90\x80\x80", 4));  /* above U+10FFFF */
}

static void test_escape_bytes(void) {
        /* without ESCAPE_CONTROLS only invalid UTF-8 changes (for JSON) */
        CHECK_STR(esc("raw.\xff\xfe", 0), "raw.\\xff\\xfe");
        CHECK_STR(esc("a\tb\x1b", 0), "a\tb\x1b");
        CHECK_STR(esc("gr\xc3\xbc\xc3\x9f", 0), "gr\xc3\xbc\xc3\x9f");
        /* for logs: C0, DEL, C1 and newlines too */
        CHECK_STR(esc("\x1b[31mevil\x07", ESCAPE_CONTROLS), "\\x1b[31mevil\\x07");
        CHECK_STR(esc("a\nagentd: err: forged", ESCAPE_CONTROLS), "a\\x0aagentd: err: forged");
        CHECK_STR(esc("a\nb\x7f", ESCAPE_CONTROLS | ESCAPE_KEEP_NEWLINE), "a\nb\\x7f");
        CHECK_STR(esc("\xc2\x9b" "2J \xc2\xa0ok", ESCAPE_CONTROLS), "\\xc2\\x9b2J \xc2\xa0ok"); /* C1 CSI */
        CHECK_STR(esc("", ESCAPE_CONTROLS), "");
}

static void test_escape_bounds(void) {
        char small[8];
        /* cut before what does not fit, never inside an escape or a character */
        CHECK_INT(str_escape("abcd\x1b" "ef", 7, ESCAPE_CONTROLS, small, sizeof small), 4);
        CHECK_STR(small, "abcd");
        CHECK_INT(str_escape("ab\xe2\x82\xac" "cdef", 9, 0, small, sizeof small), 7);
        CHECK_STR(small, "ab\xe2\x82\xac" "cd");
        char one[1];
        CHECK_INT(str_escape("abc", 3, 0, one, sizeof one), 0);
        CHECK_STR(one, "");
        char *a = str_escape_alloc("\xff\xff\xff", 3, 0);
        CHECK_STR(a, "\\xff\\xff\\xff");
        free(a);
        CHECK_STR(log_str(NULL), "(null)");
        char buf[LOG_STR_MAX];
        CHECK_STR(log_escape("\x1b]0;title\x07", buf, sizeof buf), "\\x1b]0;title\\x07");
        char longer[1000];
        memset(longer, 'x', sizeof longer - 1);
        longer[sizeof longer - 1] = '\0';
        CHECK_INT(strlen(log_str(longer)), LOG_STR_MAX - 1);
}

static void test_ratelimit(void) {
        log_ratelimit rl = LOG_RATELIMIT_INIT(10 * USEC_PER_SEC, 3);
        unsigned long long sup = 99;
        uint64_t t = 1000;
        for (int i = 0; i < 3; i++) {
                CHECK(log_ratelimit_test(&rl, t + (uint64_t)i, &sup));
                CHECK_INT(sup, 0);
        }
        for (int i = 0; i < 50; i++)
                CHECK(!log_ratelimit_test(&rl, t + 100 + (uint64_t)i, &sup));
        /* a new interval: logged again, saying how many were not */
        CHECK(log_ratelimit_test(&rl, t + 10 * USEC_PER_SEC, &sup));
        CHECK_INT(sup, 50);
        CHECK(log_ratelimit_test(&rl, t + 10 * USEC_PER_SEC + 1, &sup));
        CHECK_INT(sup, 0);
}

int main(void) {
        RUN(test_utf8);
        RUN(test_escape_bytes);
        RUN(test_escape_bounds);
        RUN(test_ratelimit);
        return 0;
}
