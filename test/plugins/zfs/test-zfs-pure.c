/* test-zfs-pure.c — the zfs plugin's pure pieces alone: `-H -p` and `zpool status`
 * parsing (scrub in progress, resilver, finished scrub with errors, trimming, data
 * errors, garbage), the destroy error lines, our snapshot names (and everything that
 * only looks like them), retention (keep, never the newest, never a held one, ties),
 * and the calendar in Europe/Paris: slots of every/daily/weekly/monthly jobs, both
 * 2026 DST changes, and the due rule (missed once, restart inside a window, clock set
 * backwards). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "zfs.h"

static void tz_paris(void) {
        if (access("/usr/share/zoneinfo/Europe/Paris", R_OK) == 0)
                setenv("TZ", "Europe/Paris", 1);
        else {
                printf("# no /usr/share/zoneinfo/Europe/Paris: using the POSIX rule\n");
                setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3", 1);
        }
        tzset();
}

static int64_t utc(int y, int mo, int d, int h, int mi, int s) {
        struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = s};
        return (int64_t)timegm(&tm);
}

static const char STATUS[] =
        "  pool: nvme\n"
        " state: ONLINE\n"
        "  scan: scrub in progress since Sun Nov 29 02:00:00 2026\n"
        "\t1000 scanned at 1000/s, 500 issued at 500/s, 10000 total\n"
        "\t0 repaired, 5.00% done, 00:10:00 to go\n"
        "config:\n\n"
        "\tNAME        STATE     READ WRITE CKSUM\n"
        "\tnvme        ONLINE       0     0     0\n"
        "\t  nvme0n1   ONLINE       0     0     0  (12% trimmed, started at Sun Nov 29 04:00:00 2026)\n\n"
        "errors: No known data errors\n\n"
        "  pool: zr\n"
        " state: DEGRADED\n"
        "status: One or more devices could not be used.\n"
        "  scan: resilver in progress since Sun Nov 29 02:00:00 2026\n"
        "config:\n\n"
        "errors: No known data errors\n\n"
        "  pool: arch\n"
        " state: ONLINE\n"
        "  scan: scrub repaired 4096 in 00:00:05 with 3 errors on Sun Nov 29 02:00:05 2026\n"
        "config:\n\n"
        "\t  sda       ONLINE       0     0     0  (100% trimmed, completed at Sun Nov 29 04:01:00 2026)\n"
        "errors: 2 data errors, use '-v' for a list\n";

static void test_parse(void) {
        char line[] = "tank\tONLINE\t1000\t\t7";
        char *f[8];
        CHECK_INT(zfs_split_tabs(line, f, 8), 5);
        CHECK_STR(f[0], "tank");
        CHECK_STR(f[3], "");
        CHECK_STR(f[4], "7");
        uint64_t v;
        CHECK_INT(zfs_parse_u64("1099511627776", &v), 0);
        CHECK_INT(v, 1099511627776LL);
        CHECK_INT(zfs_parse_u64("-", &v), -EINVAL);
        CHECK_INT(zfs_parse_u64("", &v), -EINVAL);
        CHECK_INT(zfs_parse_u64("12M", &v), -EINVAL);
        CHECK_INT(zfs_parse_u64("99999999999999999999999", &v), -ERANGE);

        zfs_pool_status *st;
        size_t n;
        CHECK_INT(zfs_parse_zpool_status(STATUS, &st, &n), 0);
        CHECK_INT(n, 3);
        CHECK_STR(st[0].name, "nvme");
        CHECK(st[0].scrubbing && !st[0].resilvering && st[0].trimming && !st[0].scrub_done && !st[0].data_errors);
        CHECK_STR(st[1].state, "DEGRADED");
        CHECK(st[1].resilvering && !st[1].scrubbing && !st[1].trimming);
        CHECK(st[2].scrub_done && !st[2].scrubbing && !st[2].trimming);
        CHECK_INT(st[2].scrub_repaired, 4096);
        CHECK_INT(st[2].scrub_errors, 3);
        CHECK(st[2].data_errors);
        CHECK_STR(st[2].errors, "2 data errors, use '-v' for a list");
        free(st);
        /* without -p: a non-zero amount with a unit is never read as zero */
        CHECK_INT(zfs_parse_zpool_status("  pool: a\n  scan: scrub repaired 0.5M in 1 with 0 errors on x\n", &st, &n),
                  0);
        CHECK(st[0].scrub_done && st[0].scrub_repaired > 0 && st[0].scrub_errors == 0);
        free(st);
        CHECK_INT(zfs_parse_zpool_status("no pools available\n", &st, &n), -EBADMSG);
        CHECK_INT(zfs_parse_zpool_status("", &st, &n), -EBADMSG);
}

static unsigned n_err;
static char last_err[256];

static void on_err(const char *snap, const char *reason, void *ud) {
        (void)ud;
        n_err++;
        snprintf(last_err, sizeof last_err, "%s|%s", snap, reason);
}

static void test_destroy_errors(void) {
        zfs_parse_destroy_errors("cannot destroy snapshot tank/a@organism-6h-20260101T000000Z: dataset is busy\n"
                                 "some other line\n"
                                 "cannot destroy snapshot tank/b@x: snapshot is cloned\n",
                                 on_err, NULL);
        CHECK_INT(n_err, 2);
        CHECK_STR(last_err, "tank/b@x|snapshot is cloned");
        n_err = 0;
        zfs_parse_destroy_errors("", on_err, NULL);
        zfs_parse_destroy_errors(NULL, on_err, NULL);
        CHECK_INT(n_err, 0);
}

static void test_names(void) {
        char buf[128], tag[ZFS_TAG_MAX];
        CHECK_INT(zfs_snapname("6h", utc(2026, 3, 29, 1, 0, 0), buf, sizeof buf), 0);
        CHECK_STR(buf, "organism-6h-20260329T010000Z");
        CHECK(zfs_snapname_is(buf, "6h"));
        CHECK(!zfs_snapname_is(buf, "daily"));
        CHECK(zfs_snapname_tag("organism-my-tag-20261025T003000Z", tag));
        CHECK_STR(tag, "my-tag");
        const char *foreign[] = {"autosnap_2026-01-01_00:00:00_daily", "organism-6h-notastamp",
                                 "organism-6h-20261325T003000Z", "organism--20261025T003000Z",
                                 "organism-6h-20261025T003000", "xorganism-6h-20261025T003000Z",
                                 "organism-6h-20261025T003000Z-copy", "organism-6h.x-20261025T003000Z", "vzdump", NULL};
        for (size_t i = 0; foreign[i]; i++)
                CHECK(!zfs_snapname_tag(foreign[i], tag));
        CHECK(!zfs_tag_valid(""));
        CHECK(!zfs_tag_valid("a b"));
        CHECK(!zfs_tag_valid("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 33 */
        CHECK_INT(zfs_snapname("bad tag", 0, buf, sizeof buf), -EINVAL);
        CHECK_INT(zfs_snapname("6h", 0, buf, 8), -ENAMETOOLONG);
}

static void test_retention(void) {
        char names[6][64];
        zfs_snap s[6];
        for (int i = 0; i < 6; i++) {
                snprintf(names[i], sizeof names[i], "t/a@organism-6h-2026010%dT000000Z", i + 1);
                s[i] = (zfs_snap){.name = names[i], .creation = 1000 + (uint64_t)i * 10};
        }
        s[1].userrefs = 1; /* an old held one */
        size_t held;
        CHECK_INT(zfs_retention(s, 6, 2, &held), 3);
        CHECK_INT(held, 1);
        /* sorted newest first: the two newest stay */
        CHECK(!s[0].destroy && !s[1].destroy && s[0].creation == 1050);
        for (int i = 2; i < 6; i++)
                CHECK(s[i].destroy == (s[i].userrefs == 0));
        /* keep 0 is taken as 1: never the newest */
        CHECK_INT(zfs_retention(s, 6, 0, &held), 4);
        CHECK(!s[0].destroy);
        /* the newest held and the only one */
        zfs_snap one = {.name = names[0], .creation = 1, .userrefs = 2};
        CHECK_INT(zfs_retention(&one, 1, 1, &held), 0);
        CHECK_INT(held, 0);
        /* same creation second: the later stamp is the newer */
        zfs_snap tie[2] = {{.name = names[0], .creation = 5}, {.name = names[1], .creation = 5}};
        CHECK_INT(zfs_retention(tie, 2, 1, NULL), 1);
        CHECK_STR(tie[0].name, names[1]);
        CHECK(tie[1].destroy);
        CHECK_INT(zfs_retention(NULL, 0, 3, &held), 0);
}

static void test_calendar(void) {
        int64_t t;
        int at;
        CHECK_INT(zfs_parse_hhmm("03:00", &at), 0);
        CHECK_INT(at, 3 * 3600);
        CHECK_INT(zfs_parse_hhmm("24:00", &at), -EINVAL);
        CHECK_INT(zfs_parse_hhmm("3:00", &at), -EINVAL);
        CHECK_INT(zfs_parse_hhmm("03:60", &at), -EINVAL);

        /* every 6h: UTC slots, no DST whatsoever */
        zfs_cal every = {.kind = ZFS_CAL_EVERY, .period = 6 * 3600};
        CHECK_INT(zfs_cal_prev(&every, utc(2026, 3, 29, 1, 30, 0), &t), 0);
        CHECK_INT(t, utc(2026, 3, 29, 0, 0, 0));
        CHECK_INT(zfs_cal_next(&every, utc(2026, 3, 29, 1, 30, 0), &t), 0);
        CHECK_INT(t, utc(2026, 3, 29, 6, 0, 0));
        CHECK_INT(zfs_cal_prev(&every, utc(2026, 3, 29, 6, 0, 0), &t), 0); /* a slot at now is in force */
        CHECK_INT(t, utc(2026, 3, 29, 6, 0, 0));

        /* daily at 02:30 local: spring forward (2026-03-29, 02:00 CET -> 03:00 CEST): the
         * skipped time is a slot at the jump, 01:00 UTC */
        zfs_cal daily = {.kind = ZFS_CAL_DAILY, .at = 2 * 3600 + 30 * 60};
        CHECK_INT(zfs_local_instant(2026, 3, 29, daily.at, &t), 0);
        CHECK_INT(t, utc(2026, 3, 29, 1, 0, 0));
        CHECK_INT(zfs_local_instant(2026, 3, 28, daily.at, &t), 0);
        CHECK_INT(t, utc(2026, 3, 28, 1, 30, 0)); /* CET */
        CHECK_INT(zfs_local_instant(2026, 3, 30, daily.at, &t), 0);
        CHECK_INT(t, utc(2026, 3, 30, 0, 30, 0)); /* CEST */
        /* fall back (2026-10-25, 03:00 CEST -> 02:00 CET): 02:30 is read twice, a slot
         * only at the first, 00:30 UTC */
        CHECK_INT(zfs_local_instant(2026, 10, 25, daily.at, &t), 0);
        CHECK_INT(t, utc(2026, 10, 25, 0, 30, 0));
        CHECK_INT(zfs_cal_prev(&daily, utc(2026, 10, 25, 1, 45, 0), &t), 0); /* the second 02:45 */
        CHECK_INT(t, utc(2026, 10, 25, 0, 30, 0));
        CHECK_INT(zfs_cal_next(&daily, utc(2026, 10, 25, 0, 30, 0), &t), 0);
        CHECK_INT(t, utc(2026, 10, 26, 1, 30, 0));
        /* every day of both changes has exactly one slot: walk them slot by slot */
        int64_t days[] = {utc(2026, 3, 27, 12, 0, 0), utc(2026, 10, 23, 12, 0, 0)};
        for (size_t k = 0; k < 2; k++) {
                int64_t cur;
                CHECK_INT(zfs_cal_next(&daily, days[k], &cur), 0);
                for (int i = 0; i < 5; i++) {
                        int64_t nx;
                        CHECK_INT(zfs_cal_next(&daily, cur, &nx), 0);
                        CHECK(nx - cur >= 23 * 3600 - 1800 && nx - cur <= 25 * 3600);
                        cur = nx;
                }
        }

        /* weekly: Sunday 04:00 local */
        zfs_cal weekly = {.kind = ZFS_CAL_WEEKLY, .at = 4 * 3600, .weekday = 0};
        CHECK_INT(zfs_cal_next(&weekly, utc(2026, 12, 1, 12, 0, 0), &t), 0); /* a Tuesday */
        CHECK_INT(t, utc(2026, 12, 6, 3, 0, 0));
        CHECK_INT(zfs_cal_prev(&weekly, utc(2026, 12, 1, 12, 0, 0), &t), 0);
        CHECK_INT(t, utc(2026, 11, 29, 3, 0, 0));
        /* monthly: day 1 at 02:00 local */
        zfs_cal monthly = {.kind = ZFS_CAL_MONTHLY, .at = 2 * 3600, .mday = 1};
        CHECK_INT(zfs_cal_prev(&monthly, utc(2026, 12, 1, 0, 59, 0), &t), 0);
        CHECK_INT(t, utc(2026, 11, 1, 1, 0, 0));
        CHECK_INT(zfs_cal_next(&monthly, utc(2026, 12, 1, 0, 59, 0), &t), 0);
        CHECK_INT(t, utc(2026, 12, 1, 1, 0, 0));

        /* the due rule */
        int64_t now = utc(2026, 12, 1, 13, 0, 0);
        CHECK(zfs_cal_due(&every, now - 13 * 3600, now));   /* down across two windows: due (once) */
        CHECK(!zfs_cal_due(&every, now - 30 * 60, now));    /* ran in this window (12:00): not due */
        CHECK(!zfs_cal_due(&every, now + 3 * 3600, now));   /* the clock went back below the last run */
        CHECK(!zfs_cal_due(&every, utc(2026, 12, 1, 12, 0, 5), utc(2026, 12, 1, 10, 0, 0)));
        CHECK(zfs_cal_due(&every, utc(2026, 12, 1, 12, 0, 5), utc(2026, 12, 1, 18, 0, 0)));
        /* the fall-back hour: run at the first 02:30, the second 02:30 is not due */
        CHECK(!zfs_cal_due(&daily, utc(2026, 10, 25, 0, 30, 1), utc(2026, 10, 25, 1, 30, 1)));
}

int main(void) {
        tz_paris();
        test_parse();
        test_destroy_errors();
        test_names();
        test_retention();
        test_calendar();
        printf("ok\n");
        return 0;
}
