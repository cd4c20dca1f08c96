/* test-schedule.c — circadian's pure parts without any host: start-time and duration
 * syntax, the phase and next boundary at given instants in Europe/Paris (ordinary
 * days, across midnight, three phases, the 23 h and 25 h days of 2026 with start
 * times inside the skipped and the repeated hour), CPU lists and the persisted
 * override. */
#include <errno.h>
#include <stdlib.h>

#include "actions.h"
#include "override.h"
#include "schedule.h"
#include "test.h"
#include "tz.h"

static void test_parse_clock(void) {
        int s = -1;
        CHECK_INT(circadian_parse_clock("07:00", &s), 0);
        CHECK_INT(s, 7 * 3600);
        CHECK_INT(circadian_parse_clock("23:59:59", &s), 0);
        CHECK_INT(s, 86399);
        CHECK_INT(circadian_parse_clock("00:00", &s), 0);
        CHECK_INT(s, 0);
        const char *bad[] = {"7:00", "24:00", "07:60", "07:00:60", "ab:cd", "07-00", "", "07:00 ", "0700", "07:0", NULL};
        for (size_t i = 0; bad[i]; i++)
                CHECK_INT(circadian_parse_clock(bad[i], &s), -EINVAL);
        CHECK_INT(circadian_parse_clock(NULL, &s), -EINVAL);
        char buf[16];
        circadian_format_clock(22 * 3600, buf, sizeof buf);
        CHECK_STR(buf, "22:00");
        circadian_format_clock(3661, buf, sizeof buf);
        CHECK_STR(buf, "01:01:01");
}

static void test_parse_duration(void) {
        uint64_t ms = 0;
        CHECK_INT(circadian_parse_duration("2h", &ms), 0);
        CHECK_INT(ms, 7200000);
        CHECK_INT(circadian_parse_duration("1h30m", &ms), 0);
        CHECK_INT(ms, 5400000);
        CHECK_INT(circadian_parse_duration("250ms", &ms), 0);
        CHECK_INT(ms, 250);
        CHECK_INT(circadian_parse_duration("1d", &ms), 0);
        CHECK_INT(ms, 86400000);
        CHECK_INT(circadian_parse_duration("90s", &ms), 0);
        CHECK_INT(ms, 90000);
        const char *bad[] = {"", "2", "h", "2x", "-1h", "0s", "1h 30m", "99999999999999999999d", "40000d", NULL};
        for (size_t i = 0; bad[i]; i++)
                CHECK_INT(circadian_parse_duration(bad[i], &ms), -EINVAL);
}

static circadian_schedule make(const char *const *names, const char *const *starts) {
        circadian_schedule s = {0};
        for (size_t i = 0; names[i]; i++) {
                int sec;
                CHECK_INT(circadian_parse_clock(starts[i], &sec), 0);
                CHECK_INT(circadian_schedule_add(&s, names[i], sec, NULL), 0);
        }
        return s;
}

static void check_eval(const circadian_schedule *s, int64_t now, const char *cur, int64_t since, const char *next,
                       int64_t next_at) {
        circadian_eval e;
        CHECK_INT(circadian_schedule_eval(s, now, &e), 0);
        CHECK_STR(s->phases[e.cur].name, cur);
        CHECK_INT(e.since, since);
        CHECK_STR(s->phases[e.next].name, next);
        CHECK_INT(e.next_at, next_at);
}

static void test_schedule_add(void) {
        circadian_schedule s = make((const char *[]){"night", "day", NULL}, (const char *[]){"22:00", "07:00"});
        CHECK_INT(s.n, 2);
        CHECK_STR(s.phases[0].name, "day"); /* sorted by start */
        const char *clash = NULL;
        CHECK_INT(circadian_schedule_add(&s, "morning", 7 * 3600, &clash), -EEXIST);
        CHECK_STR(clash, "day");
        CHECK_INT(circadian_schedule_add(&s, "day", 8 * 3600, &clash), -EEXIST);
        CHECK_INT(circadian_schedule_add(&s, "bad name", 8 * 3600, NULL), -EINVAL);
        CHECK_INT(circadian_schedule_add(&s, "x", 86400, NULL), -EINVAL);
        CHECK_INT(circadian_schedule_find(&s, "night"), 1);
        CHECK_INT(circadian_schedule_find(&s, "nope"), -1);
        circadian_schedule_clear(&s);
        circadian_eval e;
        CHECK_INT(circadian_schedule_eval(&s, 0, &e), -ENOENT);
}

static void test_boundaries_and_midnight(void) {
        circadian_schedule s = make((const char *[]){"day", "night", NULL}, (const char *[]){"07:00", "22:00"});
        /* June: CEST, UTC+2. 07:00 local = 05:00Z, 22:00 local = 20:00Z */
        int64_t d7 = utc_s(2026, 6, 10, 5, 0, 0), d22 = utc_s(2026, 6, 10, 20, 0, 0);
        check_eval(&s, d7 - 1, "night", utc_s(2026, 6, 9, 20, 0, 0), "day", d7);
        check_eval(&s, d7, "day", d7, "night", d22); /* a boundary is in force at its instant */
        check_eval(&s, d22 - 1, "day", d7, "night", d22);
        check_eval(&s, d22, "night", d22, "day", utc_s(2026, 6, 11, 5, 0, 0));
        /* across midnight, before and after */
        check_eval(&s, utc_s(2026, 6, 10, 21, 59, 59), "night", d22, "day", utc_s(2026, 6, 11, 5, 0, 0));
        check_eval(&s, utc_s(2026, 6, 10, 22, 0, 1), "night", d22, "day", utc_s(2026, 6, 11, 5, 0, 0));
        /* new year: the date arithmetic crosses years (winter, UTC+1) */
        check_eval(&s, utc_s(2026, 12, 31, 23, 30, 0), "night", utc_s(2026, 12, 31, 21, 0, 0), "day",
                   utc_s(2027, 1, 1, 6, 0, 0));
        circadian_schedule_clear(&s);
}

static void test_three_phases(void) {
        circadian_schedule s = make((const char *[]){"night", "evening", "day", NULL},
                                    (const char *[]){"22:00", "18:30", "07:00"});
        CHECK_STR(s.phases[1].name, "evening");
        check_eval(&s, utc_s(2026, 6, 10, 10, 0, 0), "day", utc_s(2026, 6, 10, 5, 0, 0), "evening",
                   utc_s(2026, 6, 10, 16, 30, 0));
        check_eval(&s, utc_s(2026, 6, 10, 16, 30, 0), "evening", utc_s(2026, 6, 10, 16, 30, 0), "night",
                   utc_s(2026, 6, 10, 20, 0, 0));
        check_eval(&s, utc_s(2026, 6, 10, 21, 0, 0), "night", utc_s(2026, 6, 10, 20, 0, 0), "day",
                   utc_s(2026, 6, 11, 5, 0, 0));
        circadian_schedule_clear(&s);
        /* one phase: always in force, re-entered each day */
        s = make((const char *[]){"always", NULL}, (const char *[]){"12:00"});
        check_eval(&s, utc_s(2026, 6, 10, 9, 0, 0), "always", utc_s(2026, 6, 9, 10, 0, 0), "always",
                   utc_s(2026, 6, 10, 10, 0, 0));
        circadian_schedule_clear(&s);
}

static void test_dst_spring_forward(void) {
        /* 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00Z; the day has 23 h */
        circadian_schedule s = make((const char *[]){"day", "night", NULL}, (const char *[]){"07:00", "22:00"});
        check_eval(&s, utc_s(2026, 3, 29, 0, 0, 0), "night", utc_s(2026, 3, 28, 21, 0, 0), "day",
                   utc_s(2026, 3, 29, 5, 0, 0));
        check_eval(&s, utc_s(2026, 3, 29, 5, 0, 0), "day", utc_s(2026, 3, 29, 5, 0, 0), "night",
                   utc_s(2026, 3, 29, 20, 0, 0));
        circadian_schedule_clear(&s);

        /* a start time inside the skipped hour starts at the jump, 03:00 CEST = 01:00Z */
        int64_t t;
        CHECK_INT(circadian_local_instant(2026, 3, 29, 2 * 3600 + 30 * 60, &t), 0);
        CHECK_INT(t, utc_s(2026, 3, 29, 1, 0, 0));
        CHECK_INT(circadian_local_instant(2026, 3, 29, 3 * 3600, &t), 0);
        CHECK_INT(t, utc_s(2026, 3, 29, 1, 0, 0));
        CHECK_INT(circadian_local_instant(2026, 3, 29, 1 * 3600 + 59 * 60 + 59, &t), 0);
        CHECK_INT(t, utc_s(2026, 3, 29, 0, 59, 59));
        s = make((const char *[]){"day", "night", "late", NULL}, (const char *[]){"07:00", "22:00", "02:30"});
        check_eval(&s, utc_s(2026, 3, 29, 0, 30, 0), "night", utc_s(2026, 3, 28, 21, 0, 0), "late",
                   utc_s(2026, 3, 29, 1, 0, 0));
        check_eval(&s, utc_s(2026, 3, 29, 1, 0, 0), "late", utc_s(2026, 3, 29, 1, 0, 0), "day",
                   utc_s(2026, 3, 29, 5, 0, 0));
        /* the next day is ordinary again: 02:30 CEST = 00:30Z */
        check_eval(&s, utc_s(2026, 3, 29, 21, 0, 0), "night", utc_s(2026, 3, 29, 20, 0, 0), "late",
                   utc_s(2026, 3, 30, 0, 30, 0));
        circadian_schedule_clear(&s);

        /* two starts in the skipped hour: both map to the jump, the later one wins */
        s = make((const char *[]){"day", "a", "b", NULL}, (const char *[]){"07:00", "02:10", "02:50"});
        check_eval(&s, utc_s(2026, 3, 29, 0, 30, 0), "day", utc_s(2026, 3, 28, 6, 0, 0), "b",
                   utc_s(2026, 3, 29, 1, 0, 0));
        check_eval(&s, utc_s(2026, 3, 29, 1, 0, 0), "b", utc_s(2026, 3, 29, 1, 0, 0), "day",
                   utc_s(2026, 3, 29, 5, 0, 0));
        circadian_schedule_clear(&s);
}

static void test_dst_fall_back(void) {
        /* 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z; the day has 25 h */
        circadian_schedule s = make((const char *[]){"day", "night", NULL}, (const char *[]){"07:00", "22:00"});
        check_eval(&s, utc_s(2026, 10, 25, 0, 0, 0), "night", utc_s(2026, 10, 24, 20, 0, 0), "day",
                   utc_s(2026, 10, 25, 6, 0, 0));
        check_eval(&s, utc_s(2026, 10, 25, 6, 0, 0), "day", utc_s(2026, 10, 25, 6, 0, 0), "night",
                   utc_s(2026, 10, 25, 21, 0, 0));
        circadian_schedule_clear(&s);

        /* 02:30 happens twice (00:30Z CEST, 01:30Z CET): only the first is a boundary */
        int64_t t;
        CHECK_INT(circadian_local_instant(2026, 10, 25, 2 * 3600 + 30 * 60, &t), 0);
        CHECK_INT(t, utc_s(2026, 10, 25, 0, 30, 0));
        s = make((const char *[]){"day", "night", "late", NULL}, (const char *[]){"07:00", "22:00", "02:30"});
        check_eval(&s, utc_s(2026, 10, 25, 0, 30, 0), "late", utc_s(2026, 10, 25, 0, 30, 0), "day",
                   utc_s(2026, 10, 25, 6, 0, 0));
        check_eval(&s, utc_s(2026, 10, 25, 1, 30, 0), "late", utc_s(2026, 10, 25, 0, 30, 0), "day",
                   utc_s(2026, 10, 25, 6, 0, 0));
        circadian_schedule_clear(&s);
}

static void test_cpu_list(void) {
        unsigned *c = NULL;
        size_t n = 0;
        CHECK_INT(circadian_parse_cpu_list("0-3\n", &c, &n), 0);
        CHECK_INT(n, 4);
        CHECK_INT(c[3], 3);
        free(c);
        CHECK_INT(circadian_parse_cpu_list("0,2-4,7", &c, &n), 0);
        CHECK_INT(n, 5);
        CHECK_INT(c[1], 2);
        CHECK_INT(c[4], 7);
        free(c);
        CHECK_INT(circadian_parse_cpu_list("", &c, &n), 0);
        CHECK_INT(n, 0);
        free(c);
        CHECK_INT(circadian_parse_cpu_list("3-1", &c, &n), -EINVAL);
        CHECK_INT(circadian_parse_cpu_list("a", &c, &n), -EINVAL);
        CHECK_INT(circadian_parse_cpu_list("0;1", &c, &n), -EINVAL);
        CHECK_INT(circadian_parse_cpu_list("0-99999", &c, &n), -E2BIG);
        CHECK(circadian_governor_valid("powersave"));
        CHECK(!circadian_governor_valid("power save"));
        CHECK(!circadian_governor_valid(""));
        CHECK(!circadian_governor_valid("x\nperformance"));
}

static void test_override_json(void) {
        circadian_override o = {.active = true, .phase = "night", .since_us = 5, .until_us = 7}, back;
        char *text = circadian_override_to_json(&o);
        CHECK(text);
        CHECK_INT(circadian_override_from_json(text, &back), 0);
        free(text);
        CHECK(back.active);
        CHECK_STR(back.phase, "night");
        CHECK_INT(back.since_us, 5);
        CHECK_INT(back.until_us, 7);
        CHECK(!circadian_override_expired(&back, 6));
        CHECK(circadian_override_expired(&back, 7));
        back.until_us = 0;
        CHECK(!circadian_override_expired(&back, UINT64_MAX)); /* until cleared */
        o.active = false;
        text = circadian_override_to_json(&o);
        CHECK_STR(text, "null");
        CHECK_INT(circadian_override_from_json(text, &back), 0);
        CHECK(!back.active);
        free(text);
        CHECK_INT(circadian_override_from_json("{\"phase\":\"bad name\",\"since_us\":1,\"until_us\":0}", &back),
                  -EINVAL);
        CHECK_INT(circadian_override_from_json("{nope", &back), -EINVAL);
        CHECK_INT(circadian_override_from_json("{\"phase\":\"x\"}", &back), -EINVAL);
}

int main(void) {
        tz_paris();
        RUN(test_parse_clock);
        RUN(test_parse_duration);
        RUN(test_schedule_add);
        RUN(test_boundaries_and_midnight);
        RUN(test_three_phases);
        RUN(test_dst_spring_forward);
        RUN(test_dst_fall_back);
        RUN(test_cpu_list);
        RUN(test_override_json);
        return 0;
}
