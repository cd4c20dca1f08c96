/* bench-circadian.c — the cost of one circadian phase evaluation (the phase in force,
 * since when, what comes next: what every wake-up computes), for 2 and 6 phases, in
 * Europe/Paris (DST) and UTC, over instants spread across a year. Prints figures; it
 * asserts nothing about them. */
#include <stdio.h>
#include <time.h>

#include "schedule.h"
#include "test.h"
#include "tz.h"

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench(const char *zone, size_t n_phases) {
        static const char *const names[] = {"night", "dawn", "day", "noon", "evening", "late"};
        static const int starts[] = {22 * 3600, 6 * 3600, 7 * 3600, 12 * 3600, 18 * 3600 + 1800, 23 * 3600 + 1800};
        circadian_schedule s = {0};
        for (size_t i = 0; i < n_phases; i++)
                CHECK_INT(circadian_schedule_add(&s, names[i], starts[i], NULL), 0);
        const int iterations = 200000;
        int64_t t0 = utc_s(2026, 1, 1, 0, 0, 0);
        size_t sink = 0;
        double start = now_s();
        for (int i = 0; i < iterations; i++) {
                circadian_eval e;
                /* a prime step walks every hour of the year, DST days included */
                CHECK_INT(circadian_schedule_eval(&s, t0 + (int64_t)i * 157, &e), 0);
                sink += e.cur;
        }
        double us = (now_s() - start) * 1e6 / iterations;
        printf("circadian eval, %-12s %zu phases: %.2f us per evaluation (%d evaluations, %zu)\n", zone, n_phases, us,
               iterations, sink % 2);
        circadian_schedule_clear(&s);
}

int main(void) {
        tz_paris();
        bench("Europe/Paris", 2);
        bench("Europe/Paris", 6);
        setenv("TZ", "UTC", 1);
        tzset();
        bench("UTC", 2);
        bench("UTC", 6);
        return 0;
}
