/* test-duration.c — the config's duration and size syntax: units, chains, fractions,
 * bare numbers, and the overflow and typo cases that must be refused, not wrapped. */
#include <errno.h>
#include <stdint.h>

#include "duration.h"
#include "test.h"

static uint64_t dur(const char *s) {
        uint64_t v = 0;
        int r = parse_duration_ms(s, &v);
        if (r < 0) {
                fprintf(stderr, "parse_duration_ms(\"%s\") failed: %d\n", s, r);
                exit(1);
        }
        return v;
}

static uint64_t size(const char *s) {
        uint64_t v = 0;
        int r = parse_size(s, &v);
        if (r < 0) {
                fprintf(stderr, "parse_size(\"%s\") failed: %d\n", s, r);
                exit(1);
        }
        return v;
}

static void test_durations(void) {
        CHECK_INT(dur("250ms"), 250);
        CHECK_INT(dur("5s"), 5000);
        CHECK_INT(dur("2m"), 120000);
        CHECK_INT(dur("1h30m"), 5400000);
        CHECK_INT(dur("7d"), 7ULL * 86400000);
        CHECK_INT(dur("1w"), 7ULL * 86400000);
        CHECK_INT(dur("90"), 90000); /* bare number: seconds */
        CHECK_INT(dur("0"), 0);
        CHECK_INT(dur("1.5s"), 1500);
        CHECK_INT(dur(".5h"), 1800000);
        CHECK_INT(dur("1m30s250ms"), 90250);
        CHECK_INT(dur("10min"), 600000);
        CHECK_INT(dur("3sec"), 3000);
}

static void test_bad_durations(void) {
        uint64_t v = 12345;
        CHECK_INT(parse_duration_ms("", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("5x", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("s", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("1h30", &v), -EINVAL); /* bare number only on its own */
        CHECK_INT(parse_duration_ms("-5s", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("5 s", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("lots", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("5mss", &v), -EINVAL);
        CHECK_INT(parse_duration_ms(".", &v), -EINVAL);
        CHECK_INT(parse_duration_ms("99999999999999999999", &v), -ERANGE);
        CHECK_INT(parse_duration_ms("999999999999999999d", &v), -ERANGE);
        CHECK_INT(parse_duration_ms("18446744073709551615ms1ms", &v), -ERANGE);
        CHECK_INT(v, 12345); /* never written on failure */
}

static void test_sizes(void) {
        CHECK_INT(size("512"), 512);
        CHECK_INT(size("512B"), 512);
        CHECK_INT(size("64KiB"), 64 * 1024);
        CHECK_INT(size("64K"), 64 * 1024);
        CHECK_INT(size("64k"), 64 * 1024);
        CHECK_INT(size("3GiB"), 3ULL << 30);
        CHECK_INT(size("2G"), 2ULL << 30);
        CHECK_INT(size("8MiB"), 8ULL << 20);
        CHECK_INT(size("1Ti"), 1ULL << 40);
        CHECK_INT(size("1kB"), 1000);
        CHECK_INT(size("2MB"), 2000000);
        CHECK_INT(size("1GB"), 1000000000);
        CHECK_INT(size("1.5GiB"), 3ULL << 29);
        CHECK_INT(size("4 GiB"), 4ULL << 30);
        CHECK_INT(size("0"), 0);
}

static void test_bad_sizes(void) {
        uint64_t v = 7;
        CHECK_INT(parse_size("", &v), -EINVAL);
        CHECK_INT(parse_size("lots", &v), -EINVAL);
        CHECK_INT(parse_size("3Gb", &v), -EINVAL);
        CHECK_INT(parse_size("3X", &v), -EINVAL);
        CHECK_INT(parse_size("3GiBs", &v), -EINVAL);
        CHECK_INT(parse_size("-1", &v), -EINVAL);
        CHECK_INT(parse_size("GiB", &v), -EINVAL);
        CHECK_INT(parse_size("16EiB", &v), -ERANGE);
        CHECK_INT(parse_size("99999999999999999999", &v), -ERANGE);
        CHECK_INT(v, 7);
        CHECK_INT(size("15EiB"), 15ULL << 60);
}

static void test_format(void) {
        char buf[64];
        format_duration_ms(0, buf, sizeof buf);
        CHECK_STR(buf, "0");
        format_duration_ms(250, buf, sizeof buf);
        CHECK_STR(buf, "250ms");
        format_duration_ms(5400000, buf, sizeof buf);
        CHECK_STR(buf, "1h30m");
        format_duration_ms(86400000ULL + 1001, buf, sizeof buf);
        CHECK_STR(buf, "1d1s1ms");
        format_duration_ms(5000, buf, sizeof buf);
        CHECK_STR(buf, "5s");

        /* Round trip through the parser. */
        uint64_t samples[] = {1, 999, 1000, 61000, 3599999, 86400000ULL * 400 + 7};
        for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
                format_duration_ms(samples[i], buf, sizeof buf);
                CHECK_INT(dur(buf), samples[i]);
        }

        /* A short buffer is cut, never overrun. */
        char small[4];
        format_duration_ms(5400000, small, sizeof small);
        CHECK(strlen(small) < sizeof small);
}

int main(void) {
        RUN(test_durations);
        RUN(test_bad_durations);
        RUN(test_sizes);
        RUN(test_bad_sizes);
        RUN(test_format);
        return 0;
}
