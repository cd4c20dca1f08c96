/* calendar.c — the wall-clock slots of the calendar jobs and the one rule that decides
 * whether a job runs: it is due when its last run (persisted) is older than the latest
 * slot. That gives systemd's Persistent=true semantics: a job missed while agentd or
 * the host was down runs once at start, not once per missed slot; a restart inside a
 * window runs nothing; a clock set backwards never repeats a slot already done (the
 * recorded run is later than every slot until the clock passes it again).
 *
 * `every` slots are multiples of the period since the epoch, in UTC: no DST at all.
 * Daily/weekly/monthly slots are local times: on a fall-back day a time read twice is a
 * slot only at its first occurrence, and on a spring-forward day a time the clock
 * skips is a slot at the instant the clock jumps over it; neither doubles nor skips a
 * run. Pure: the instant is always an argument. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "zfs.h"

#define DAY 86400

int zfs_parse_hhmm(const char *s, int *ret) {
        if (!s || strlen(s) != 5 || s[2] != ':')
                return -EINVAL;
        for (int i = 0; i < 5; i++)
                if (i != 2 && (s[i] < '0' || s[i] > '9'))
                        return -EINVAL;
        int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
        if (h > 23 || m > 59)
                return -EINVAL;
        *ret = h * 3600 + m * 60;
        return 0;
}

/* The local wall reading of t as seconds "as if UTC", for comparisons. */
static int wall(int64_t t, int64_t *ret) {
        time_t tt = (time_t)t;
        struct tm tm;
        if (!localtime_r(&tt, &tm))
                return -EINVAL;
        *ret = (int64_t)timegm(&tm);
        return 0;
}

int zfs_local_instant(int y, int mon, int mday, int seconds, int64_t *ret) {
        struct tm want = {.tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = mday, .tm_sec = seconds};
        int64_t w = (int64_t)timegm(&want); /* normalised: the wall reading wanted */
        bool found = false;
        int64_t best = 0, lo = INT64_MAX, hi = INT64_MIN;
        for (int isdst = 0; isdst <= 1; isdst++) {
                time_t tt = (time_t)w;
                struct tm tm;
                if (!gmtime_r(&tt, &tm))
                        return -EINVAL;
                tm.tm_isdst = isdst;
                time_t t = mktime(&tm);
                if (t == (time_t)-1)
                        continue;
                if ((int64_t)t < lo)
                        lo = (int64_t)t;
                if ((int64_t)t > hi)
                        hi = (int64_t)t;
                int64_t r;
                if (wall((int64_t)t, &r) < 0)
                        return -EINVAL;
                if (r == w && (!found || (int64_t)t < best)) {
                        best = (int64_t)t;
                        found = true;
                }
        }
        if (found) {
                *ret = best;
                return 0;
        }
        if (lo > hi)
                return -EINVAL;
        /* a gap: the first instant whose reading is past w, between the candidates */
        lo -= 2 * 3600;
        hi += 2 * 3600;
        while (hi - lo > 1) {
                int64_t mid = lo + (hi - lo) / 2, r;
                if (wall(mid, &r) < 0)
                        return -EINVAL;
                if (r >= w)
                        hi = mid;
                else
                        lo = mid;
        }
        *ret = hi;
        return 0;
}

/* Local date of t shifted by `days` (normalised). */
static int local_date(int64_t t, int days, int *y, int *mon, int *mday, int *wday) {
        time_t tt = (time_t)t;
        struct tm tm;
        if (!localtime_r(&tt, &tm))
                return -EINVAL;
        struct tm d = {.tm_year = tm.tm_year, .tm_mon = tm.tm_mon, .tm_mday = tm.tm_mday + days, .tm_hour = 12};
        time_t n = timegm(&d);
        if (!gmtime_r(&n, &d))
                return -EINVAL;
        *y = d.tm_year + 1900;
        *mon = d.tm_mon + 1;
        *mday = d.tm_mday;
        *wday = d.tm_wday;
        return 0;
}

/* Walks the slots around now: the latest <= now (prev) and the earliest > now (next). */
static int around(const zfs_cal *c, int64_t now, int64_t *ret_prev, int64_t *ret_next) {
        if (c->kind == ZFS_CAL_EVERY) {
                if (c->period <= 0)
                        return -EINVAL;
                int64_t p = now >= 0 ? now / c->period * c->period : -((-now + c->period - 1) / c->period) * c->period;
                *ret_prev = p;
                *ret_next = p + c->period;
                return 0;
        }
        int64_t prev = INT64_MIN, next = INT64_MAX;
        int span = c->kind == ZFS_CAL_MONTHLY ? 62 : c->kind == ZFS_CAL_WEEKLY ? 8 : 2;
        for (int k = -span; k <= span; k++) {
                int y, mon, mday, wday;
                int r = local_date(now, k, &y, &mon, &mday, &wday);
                if (r < 0)
                        return r;
                if (c->kind == ZFS_CAL_WEEKLY && wday != c->weekday)
                        continue;
                if (c->kind == ZFS_CAL_MONTHLY && mday != c->mday)
                        continue;
                int64_t t;
                if ((r = zfs_local_instant(y, mon, mday, c->at, &t)) < 0)
                        return r;
                if (t <= now && t > prev)
                        prev = t;
                if (t > now && t < next)
                        next = t;
        }
        if (prev == INT64_MIN || next == INT64_MAX)
                return -EINVAL;
        *ret_prev = prev;
        *ret_next = next;
        return 0;
}

int zfs_cal_prev(const zfs_cal *c, int64_t now, int64_t *ret) {
        int64_t p, n;
        int r = around(c, now, &p, &n);
        if (r < 0)
                return r;
        *ret = p;
        return 0;
}

int zfs_cal_next(const zfs_cal *c, int64_t now, int64_t *ret) {
        int64_t p, n;
        int r = around(c, now, &p, &n);
        if (r < 0)
                return r;
        *ret = n;
        return 0;
}

bool zfs_cal_due(const zfs_cal *c, int64_t last_run, int64_t now) {
        int64_t p;
        if (zfs_cal_prev(c, now, &p) < 0)
                return false;
        return last_run < p;
}
