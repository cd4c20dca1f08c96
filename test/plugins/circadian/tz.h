/* tz.h — puts the circadian tests in Europe/Paris: the zoneinfo file when the system
 * has it, else the equivalent POSIX rule (valid since 1996), so the DST cases run
 * everywhere; and builds UTC instants for the expectations. */
#ifndef TEST_CIRCADIAN_TZ_H
#define TEST_CIRCADIAN_TZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static inline void tz_paris(void) {
        if (access("/usr/share/zoneinfo/Europe/Paris", R_OK) == 0)
                setenv("TZ", "Europe/Paris", 1);
        else {
                printf("# no /usr/share/zoneinfo/Europe/Paris: using the POSIX rule CET-1CEST,M3.5.0,M10.5.0/3\n");
                setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3", 1);
        }
        tzset();
}

/* Unix seconds / µs of a UTC date and time. */
static inline int64_t utc_s(int y, int mo, int d, int h, int mi, int s) {
        struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = s};
        return (int64_t)timegm(&tm);
}

static inline uint64_t utc_us(int y, int mo, int d, int h, int mi, int s) {
        return (uint64_t)utc_s(y, mo, d, h, mi, s) * 1000000ULL;
}

#endif
