/* schedule.c — phase and boundary computation for circadian (see schedule.h for the DST
 * rule). Boundaries are found without mktime: a local wall time W (as if it were UTC)
 * is read at instant W - offset for the UTC offsets in force around it, and each
 * candidate is checked with localtime_r. That handles DST and any other offset change
 * the same way, and is cheaper than mktime's search. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "schedule.h"

#define CIRCADIAN_DAY 86400

int circadian_parse_clock(const char *text, int *ret_seconds) {
        if (!text)
                return -EINVAL;
        size_t len = strlen(text);
        if (len != 5 && len != 8)
                return -EINVAL;
        int f[3] = {0, 0, 0};
        for (size_t i = 0; i < len; i++) {
                if (i % 3 == 2) {
                        if (text[i] != ':')
                                return -EINVAL;
                        continue;
                }
                if (text[i] < '0' || text[i] > '9')
                        return -EINVAL;
                f[i / 3] = f[i / 3] * 10 + (text[i] - '0');
        }
        if (f[0] > 23 || f[1] > 59 || f[2] > 59)
                return -EINVAL;
        *ret_seconds = f[0] * 3600 + f[1] * 60 + f[2];
        return 0;
}

void circadian_format_clock(int seconds, char *buf, size_t size) {
        if (seconds % 60)
                snprintf(buf, size, "%02d:%02d:%02d", seconds / 3600, seconds / 60 % 60, seconds % 60);
        else
                snprintf(buf, size, "%02d:%02d", seconds / 3600, seconds / 60 % 60);
}

void circadian_format_rfc3339(uint64_t realtime_us, char *buf, size_t size) {
        time_t t = (time_t)(realtime_us / 1000000);
        struct tm tm;
        if (!gmtime_r(&t, &tm)) {
                snprintf(buf, size, "?");
                return;
        }
        snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(realtime_us % 1000000 / 1000));
}

int circadian_name_valid(const char *name) {
        size_t n = 0;
        if (!name)
                return 0;
        for (const char *p = name; *p; p++, n++) {
                char ch = *p;
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                      ch == '-' || ch == '.'))
                        return 0;
        }
        return n > 0 && n < CIRCADIAN_NAME_MAX;
}

int circadian_schedule_add(circadian_schedule *s, const char *name, int start, const char **ret_clash) {
        if (!circadian_name_valid(name) || start < 0 || start >= CIRCADIAN_DAY)
                return -EINVAL;
        size_t at = s->n;
        for (size_t i = 0; i < s->n; i++) {
                if (strcmp(s->phases[i].name, name) == 0 || s->phases[i].start == start) {
                        if (ret_clash)
                                *ret_clash = s->phases[i].name;
                        return -EEXIST;
                }
                if (at == s->n && s->phases[i].start > start)
                        at = i;
        }
        circadian_phase *p = realloc(s->phases, (s->n + 1) * sizeof *p);
        if (!p)
                return -ENOMEM;
        memmove(p + at + 1, p + at, (s->n - at) * sizeof *p);
        memset(&p[at], 0, sizeof p[at]);
        snprintf(p[at].name, sizeof p[at].name, "%s", name);
        p[at].start = start;
        s->phases = p;
        s->n++;
        return 0;
}

long circadian_schedule_find(const circadian_schedule *s, const char *name) {
        for (size_t i = 0; name && i < s->n; i++)
                if (strcmp(s->phases[i].name, name) == 0)
                        return (long)i;
        return -1;
}

void circadian_schedule_clear(circadian_schedule *s) {
        free(s->phases);
        s->phases = NULL;
        s->n = 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (H. Hinnant's
 * algorithms): date arithmetic without mktime, exact for any year we meet. */
static int64_t circadian_days_from_civil(int64_t y, int m, int d) {
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        int64_t yoe = y - era * 400;
        int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
}

static void circadian_civil_from_days(int64_t z, int *ret_y, int *ret_m, int *ret_d) {
        z += 719468;
        int64_t era = (z >= 0 ? z : z - 146096) / 146097;
        int64_t doe = z - era * 146097;
        int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        int64_t mp = (5 * doy + 2) / 153;
        int d = (int)(doy - (153 * mp + 2) / 5 + 1);
        int m = (int)(mp < 10 ? mp + 3 : mp - 9);
        *ret_y = (int)(yoe + era * 400 + (m <= 2));
        *ret_m = m;
        *ret_d = d;
}

/* The local wall time of instant t as seconds of a "local epoch" (days_from_civil of
 * the local date, plus seconds of the day), and the UTC offset then. Comparing these
 * keys compares wall-clock readings. */
static int circadian_local_key(int64_t t, int64_t *ret_key, long *ret_gmtoff) {
        time_t tt = (time_t)t;
        struct tm tm;
        if (!localtime_r(&tt, &tm))
                return -EINVAL;
        *ret_key = circadian_days_from_civil((int64_t)tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday) * CIRCADIAN_DAY +
                   tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
        if (ret_gmtoff)
                *ret_gmtoff = tm.tm_gmtoff;
        return 0;
}

int circadian_local_instant(int y, int mon, int mday, int seconds, int64_t *ret) {
        /* the wall reading wanted, as if it were UTC */
        int64_t want = circadian_days_from_civil(y, mon, mday) * CIRCADIAN_DAY + seconds;
        /* the offsets in force around it: at most one change within a day either side */
        long off[3];
        int64_t key;
        for (int i = 0; i < 3; i++)
                if (circadian_local_key(want + (i - 1) * CIRCADIAN_DAY, &key, &off[i]) < 0)
                        return -EINVAL;
        bool found = false;
        int64_t best = 0, lo = INT64_MAX, hi = INT64_MIN;
        for (int i = 0; i < 3; i++) {
                if ((i > 0 && off[i] == off[0]) || (i > 1 && off[i] == off[1]))
                        continue;
                int64_t t = want - off[i];
                if (t < lo)
                        lo = t;
                if (t > hi)
                        hi = t;
                if (circadian_local_key(t, &key, NULL) < 0)
                        return -EINVAL;
                /* a reading that exists: keep its first occurrence */
                if (key == want && (!found || t < best)) {
                        best = t;
                        found = true;
                }
        }
        if (found) {
                *ret = best;
                return 0;
        }
        /* The clock never reads `want` (a spring-forward gap): the boundary is the
         * first instant whose reading is past it, between the two candidates. */
        int64_t klo, khi;
        if (circadian_local_key(lo, &klo, NULL) < 0 || circadian_local_key(hi, &khi, NULL) < 0)
                return -EINVAL;
        if (!(klo < want && khi >= want)) {
                *ret = hi; /* not a gap we understand: the later candidate keeps order */
                return 0;
        }
        while (hi - lo > 1) {
                int64_t mid = lo + (hi - lo) / 2;
                if (circadian_local_key(mid, &key, NULL) < 0)
                        return -EINVAL;
                if (key >= want)
                        hi = mid;
                else
                        lo = mid;
        }
        *ret = hi;
        return 0;
}

int circadian_schedule_eval(const circadian_schedule *s, int64_t now, circadian_eval *ret) {
        if (!s || s->n == 0)
                return -ENOENT;
        time_t tt = (time_t)now;
        struct tm tm;
        if (!localtime_r(&tt, &tm))
                return -EINVAL;
        int64_t today = circadian_days_from_civil((int64_t)tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
        circadian_eval e = {0};
        bool have_cur = false, have_next = false;
        /* Yesterday's boundaries are all before now and tomorrow's all after it, so the
         * three days hold both the boundary in force and the next one. Boundaries are
         * visited in time order (the DST rule keeps each day's in start order). */
        for (int64_t day = today - 1; day <= today + 1; day++) {
                int y, m, d;
                circadian_civil_from_days(day, &y, &m, &d);
                for (size_t i = 0; i < s->n; i++) {
                        int64_t t;
                        int r = circadian_local_instant(y, m, d, s->phases[i].start, &t);
                        if (r < 0)
                                return r;
                        if (t <= now) {
                                /* ties: the later phase wins, the earlier lasts 0 s */
                                e.cur = i;
                                e.since = t;
                                have_cur = true;
                        } else if (!have_next || t == e.next_at) {
                                e.next = i;
                                e.next_at = t;
                                have_next = true;
                        }
                }
        }
        if (!have_cur || !have_next)
                return -EINVAL;
        *ret = e;
        return 0;
}
