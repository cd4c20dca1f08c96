/* parse.c — reading what `zfs` and `zpool` print: `-H -p` tables (one record a line,
 * fields split by one tab, numbers exact), the text of `zpool status -p -t` (pool
 * state, the scan line, trim progress of each vdev, the errors line) and the per
 * snapshot lines of a failed batched destroy. Pure functions of the text: nothing here
 * runs a command or touches the host. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zfs.h"

size_t zfs_split_tabs(char *line, char **fields, size_t max) {
        size_t n = 0;
        if (!line || max == 0)
                return 0;
        char *p = line;
        for (;;) {
                fields[n++] = p;
                char *t = strchr(p, '\t');
                if (!t || n == max)
                        break;
                *t = '\0';
                p = t + 1;
        }
        return n;
}

int zfs_parse_u64(const char *s, uint64_t *ret) {
        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        uint64_t v = 0;
        for (; *s; s++) {
                if (*s < '0' || *s > '9')
                        return -EINVAL;
                unsigned d = (unsigned)(*s - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

/* Copies s without leading/trailing blanks, cut to size. */
static void copy_trimmed(char *dst, size_t size, const char *s, size_t len) {
        while (len && (*s == ' ' || *s == '\t')) {
                s++;
                len--;
        }
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r'))
                len--;
        if (len >= size)
                len = size - 1;
        memcpy(dst, s, len);
        dst[len] = '\0';
}

/* The number after `word ` in s: "repaired 123 in", "with 4 errors". Accepts a unit
 * suffix (without -p zpool prints "1.5M"): the digits are what counts, so a non-zero
 * amount is never read as zero. */
static uint64_t number_after(const char *s, const char *word) {
        const char *p = strstr(s, word);
        if (!p)
                return 0;
        p += strlen(word);
        while (*p == ' ')
                p++;
        uint64_t v = 0;
        bool any = false;
        for (; *p >= '0' && *p <= '9'; p++) {
                any = true;
                if (v < UINT64_MAX / 10)
                        v = v * 10 + (uint64_t)(*p - '0');
        }
        /* "1.5M" or "0B": a fraction or unit still says "not zero" when digits were */
        if (any && v == 0 && *p == '.')
                v = 1;
        return v;
}

static void scan_line(zfs_pool_status *st, const char *text) {
        copy_trimmed(st->scan, sizeof st->scan, text, strlen(text));
        if (strstr(text, "resilver in progress") || strstr(text, "resilvering"))
                st->resilvering = true;
        else if (strstr(text, "scrub in progress") || strstr(text, "scrub paused"))
                st->scrubbing = true;
        else if (strstr(text, "scrub repaired")) {
                st->scrub_done = true;
                st->scrub_repaired = number_after(text, "repaired");
                st->scrub_errors = number_after(text, "with");
        }
}

int zfs_parse_zpool_status(const char *text, zfs_pool_status **ret, size_t *ret_n) {
        zfs_pool_status *v = NULL;
        size_t n = 0, cap = 0;
        zfs_pool_status *cur = NULL;
        const char *line = text ? text : "";
        while (*line) {
                const char *end = strchr(line, '\n');
                size_t len = end ? (size_t)(end - line) : strlen(line);
                char buf[512];
                copy_trimmed(buf, sizeof buf, line, len);
                if (strncmp(buf, "pool:", 5) == 0) {
                        if (n == cap) {
                                size_t nc = cap ? cap * 2 : 4;
                                zfs_pool_status *nv = realloc(v, nc * sizeof *nv);
                                if (!nv) {
                                        free(v);
                                        return -ENOMEM;
                                }
                                v = nv;
                                cap = nc;
                        }
                        cur = &v[n++];
                        memset(cur, 0, sizeof *cur);
                        copy_trimmed(cur->name, sizeof cur->name, buf + 5, strlen(buf + 5));
                } else if (cur && strncmp(buf, "state:", 6) == 0)
                        copy_trimmed(cur->state, sizeof cur->state, buf + 6, strlen(buf + 6));
                else if (cur && strncmp(buf, "scan:", 5) == 0)
                        scan_line(cur, buf + 5);
                else if (cur && strncmp(buf, "errors:", 7) == 0) {
                        copy_trimmed(cur->errors, sizeof cur->errors, buf + 7, strlen(buf + 7));
                        cur->data_errors = strcmp(cur->errors, "No known data errors") != 0;
                } else if (cur && strstr(buf, "trimmed, started at"))
                        cur->trimming = true;
                if (!end)
                        break;
                line = end + 1;
        }
        if (n == 0) {
                free(v);
                return -EBADMSG;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

void zfs_parse_destroy_errors(const char *text, void (*fn)(const char *snap, const char *reason, void *ud),
                              void *ud) {
        static const char lead[] = "cannot destroy snapshot ";
        const char *line = text ? text : "";
        while (*line) {
                const char *end = strchr(line, '\n');
                size_t len = end ? (size_t)(end - line) : strlen(line);
                if (len > sizeof lead - 1 && strncmp(line, lead, sizeof lead - 1) == 0) {
                        char buf[512];
                        copy_trimmed(buf, sizeof buf, line + sizeof lead - 1, len - (sizeof lead - 1));
                        char *sep = strstr(buf, ": ");
                        if (sep) {
                                *sep = '\0';
                                fn(buf, sep + 2, ud);
                        }
                }
                if (!end)
                        break;
                line = end + 1;
        }
}
