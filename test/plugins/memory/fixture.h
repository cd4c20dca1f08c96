/* fixture.h — helpers shared by the memory plugin's unit test and benchmark: a private
 * copy of a fixture sysroot (the plugin writes into it), small file edits, and a host
 * table whose exec holds the completion until the test releases it, to see a tick
 * arrive while a qm call is in flight. Header-only, static: each program includes it
 * once. */
#ifndef TEST_PLUGINS_MEMORY_FIXTURE_H
#define TEST_PLUGINS_MEMORY_FIXTURE_H

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fakehost.h"

static const char *fx_src_root;
static char fx_dst_root[256];

static inline int fx_copy_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        char dst[1024];
        snprintf(dst, sizeof dst, "%s%s", fx_dst_root, path + strlen(fx_src_root));
        if (type == FTW_D)
                return mkdir(dst, 0755) < 0 && errno != EEXIST ? -1 : 0;
        if (type != FTW_F)
                return 0;
        FILE *in = fopen(path, "re"), *out = fopen(dst, "we");
        int r = in && out ? 0 : -1;
        char buf[4096];
        size_t n;
        while (r == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
                if (fwrite(buf, 1, n, out) != n)
                        r = -1;
        if (in)
                fclose(in);
        if (out)
                fclose(out);
        return r;
}

static inline int fx_rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) { return remove(path); }

/* Copies FIXTURES/<name> to a new temporary folder; returns it (static storage). */
static inline const char *fx_copy(const char *fixtures, const char *name) {
        static char src[512];
        snprintf(src, sizeof src, "%s/%s", fixtures, name);
        snprintf(fx_dst_root, sizeof fx_dst_root, "/tmp/organism-memory-XXXXXX");
        if (!mkdtemp(fx_dst_root)) {
                perror("mkdtemp");
                exit(1);
        }
        fx_src_root = src;
        if (nftw(src, fx_copy_one, 16, FTW_PHYS) != 0) {
                fprintf(stderr, "cannot copy %s to %s\n", src, fx_dst_root);
                exit(1);
        }
        return fx_dst_root;
}

static inline void fx_remove(const char *root) { nftw(root, fx_rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* Writes text to root/path, creating the missing folders. */
static inline void fx_write(const char *root, const char *path, const char *text) {
        char p[1024];
        snprintf(p, sizeof p, "%s%s", root, path);
        for (char *s = strchr(p + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = '\0';
                mkdir(p, 0755);
                *s = '/';
        }
        FILE *f = fopen(p, "we");
        if (!f) {
                perror(p);
                exit(1);
        }
        fputs(text, f);
        fclose(f);
}

static inline char *fx_read(const char *root, const char *path) {
        static char buf[4096];
        char p[1024];
        snprintf(p, sizeof p, "%s%s", root, path);
        FILE *f = fopen(p, "re");
        if (!f)
                return NULL;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        while (n && buf[n - 1] == '\n')
                buf[--n] = '\0';
        return buf;
}

/* Sets MemAvailable (in KiB) in the copy's /proc/meminfo. */
static inline void fx_mem_available(const char *root, unsigned long long kib) {
        char text[256];
        snprintf(text, sizeof text,
                 "MemTotal:       32803480 kB\nMemFree:         1843212 kB\nMemAvailable:   %llu kB\n"
                 "SwapTotal:       8388604 kB\nSwapFree:        8123456 kB\n",
                 kib);
        fx_write(root, "/proc/meminfo", text);
}

#endif
