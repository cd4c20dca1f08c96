/* retention.c — which snapshots are ours and which of them go. Our names are
 * `organism-<tag>-YYYYmmddTHHMMSSZ` (UTC): anything else (another tool's, vzdump's,
 * `qm snapshot`'s, a name that merely starts like ours) is never a candidate. Per
 * dataset and tag the newest `keep` stay (by the `creation` property, not the name),
 * the newest one always, a held one always. Pure: no host, no clock. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zfs.h"

bool zfs_tag_valid(const char *tag) {
        size_t n = tag ? strlen(tag) : 0;
        if (n == 0 || n >= ZFS_TAG_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = tag[i];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '-'))
                        return false;
        }
        return true;
}

int zfs_snapname(const char *tag, int64_t unix_s, char *buf, size_t size) {
        time_t t = (time_t)unix_s;
        struct tm tm;
        if (!zfs_tag_valid(tag) || !gmtime_r(&t, &tm))
                return -EINVAL;
        char stamp[32];
        if (strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm) != ZFS_STAMP_LEN)
                return -EINVAL;
        int n = snprintf(buf, size, ZFS_SNAP_PREFIX "%s-%s", tag, stamp);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static bool digits(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return true;
}

/* YYYYmmddTHHMMSSZ with plausible fields. */
static bool stamp_valid(const char *s) {
        if (strlen(s) != ZFS_STAMP_LEN || !digits(s, 8) || s[8] != 'T' || !digits(s + 9, 6) || s[15] != 'Z')
                return false;
        int mo = (s[4] - '0') * 10 + (s[5] - '0'), d = (s[6] - '0') * 10 + (s[7] - '0');
        int h = (s[9] - '0') * 10 + (s[10] - '0'), mi = (s[11] - '0') * 10 + (s[12] - '0');
        int sec = (s[13] - '0') * 10 + (s[14] - '0');
        return mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h <= 23 && mi <= 59 && sec <= 60;
}

bool zfs_snapname_tag(const char *snap, char *ret_tag) {
        size_t pl = strlen(ZFS_SNAP_PREFIX), n = snap ? strlen(snap) : 0;
        if (n < pl + 2 + ZFS_STAMP_LEN || strncmp(snap, ZFS_SNAP_PREFIX, pl) != 0)
                return false;
        const char *stamp = snap + n - ZFS_STAMP_LEN;
        if (stamp[-1] != '-' || !stamp_valid(stamp))
                return false;
        size_t tl = (size_t)(stamp - 1 - (snap + pl));
        if (tl == 0 || tl >= ZFS_TAG_MAX)
                return false;
        char tag[ZFS_TAG_MAX];
        memcpy(tag, snap + pl, tl);
        tag[tl] = '\0';
        if (!zfs_tag_valid(tag))
                return false;
        if (ret_tag)
                memcpy(ret_tag, tag, tl + 1);
        return true;
}

bool zfs_snapname_is(const char *snap, const char *tag) {
        char t[ZFS_TAG_MAX];
        return zfs_snapname_tag(snap, t) && strcmp(t, tag) == 0;
}

static int by_age_newest_first(const void *a, const void *b) {
        const zfs_snap *x = a, *y = b;
        if (x->creation != y->creation)
                return x->creation > y->creation ? -1 : 1;
        /* same second: the name (its stamp) decides, so the order is total */
        return -strcmp(x->name, y->name);
}

size_t zfs_retention(zfs_snap *snaps, size_t n, unsigned keep, size_t *ret_held) {
        size_t marked = 0, held = 0;
        if (keep < 1)
                keep = 1; /* never the newest */
        qsort(snaps, n, sizeof *snaps, by_age_newest_first);
        for (size_t i = 0; i < n; i++) {
                snaps[i].destroy = false;
                if (i < keep)
                        continue;
                if (snaps[i].userrefs > 0) {
                        held++;
                        continue;
                }
                snaps[i].destroy = true;
                marked++;
        }
        if (ret_held)
                *ret_held = held;
        return marked;
}
