/* sysroot.h — a private sysroot for the vfio plugin's tests and benchmark: a temporary
 * folder whose sys/ and proc/ are symlinks to a fixture's (read only, and the sysfs tree
 * keeps its own symlinks intact) and whose etc/ is a copy the plugin may write. Header-
 * only, static: each program includes it once. */
#ifndef TEST_PLUGINS_VFIO_SYSROOT_H
#define TEST_PLUGINS_VFIO_SYSROOT_H

#include <errno.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char sr_src[512];
static char sr_dst[512];

static inline int sr_copy_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        char dst[1024];
        snprintf(dst, sizeof dst, "%s%s", sr_dst, path + strlen(sr_src));
        if (type == FTW_D)
                return mkdir(dst, 0755) < 0 && errno != EEXIST ? -1 : 0;
        if (type == FTW_SL || type == FTW_SLN) {
                char target[1024];
                ssize_t n = readlink(path, target, sizeof target - 1);
                if (n < 0)
                        return -1;
                target[n] = '\0';
                return symlink(target, dst);
        }
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

static inline int sr_rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path);
}

/* A new sysroot for FIXTURES/<name>; returns its malloc'd path. */
static inline char *sr_make(const char *fixtures, const char *name) {
        char tmpl[] = "/tmp/organism-vfio-XXXXXX";
        if (!mkdtemp(tmpl)) {
                perror("mkdtemp");
                exit(1);
        }
        const char *links[] = {"sys", "proc"};
        for (size_t i = 0; i < 2; i++) {
                char target[1024], link[1024];
                snprintf(target, sizeof target, "%s/%s/%s", fixtures, name, links[i]);
                snprintf(link, sizeof link, "%s/%s", tmpl, links[i]);
                if (symlink(target, link) < 0) {
                        perror(link);
                        exit(1);
                }
        }
        snprintf(sr_src, sizeof sr_src, "%s/%s/etc", fixtures, name);
        snprintf(sr_dst, sizeof sr_dst, "%s/etc", tmpl);
        if (nftw(sr_src, sr_copy_one, 16, FTW_PHYS) != 0) {
                fprintf(stderr, "cannot copy %s\n", sr_src);
                exit(1);
        }
        return strdup(tmpl);
}

/* Replaces root/<what> (a link: proc or sys) by a copy of the fixture's (symlinks kept),
 * to edit /proc/mounts or a driver link. */
static inline void sr_own(const char *root, const char *fixtures, const char *name, const char *what) {
        char link[1024];
        snprintf(link, sizeof link, "%s/%s", root, what);
        if (unlink(link) < 0) {
                perror(link);
                exit(1);
        }
        snprintf(sr_src, sizeof sr_src, "%s/%s/%s", fixtures, name, what);
        snprintf(sr_dst, sizeof sr_dst, "%s/%s", root, what);
        if (nftw(sr_src, sr_copy_one, 16, FTW_PHYS) != 0) {
                fprintf(stderr, "cannot copy %s\n", sr_src);
                exit(1);
        }
}

/* Removes the sysroot (the links, not what they point to). */
static inline void sr_remove(char *root) {
        nftw(root, sr_rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(root);
}

/* The content of root/path (static buffer), or NULL. */
static inline const char *sr_read(const char *root, const char *path) {
        static char buf[16384];
        char p[1024];
        snprintf(p, sizeof p, "%s%s", root, path);
        FILE *f = fopen(p, "re");
        if (!f)
                return NULL;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        return buf;
}

static inline void sr_write(const char *root, const char *path, const char *text) {
        char p[1024];
        snprintf(p, sizeof p, "%s%s", root, path);
        FILE *f = fopen(p, "we");
        if (!f) {
                perror(p);
                exit(1);
        }
        fputs(text, f);
        fclose(f);
}

/* Files in root/dir whose name starts with prefix. */
static inline int sr_count(const char *root, const char *dir, const char *prefix) {
        char p[1024];
        snprintf(p, sizeof p, "%s%s", root, dir);
        DIR *d = opendir(p);
        if (!d)
                return -1;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d)))
                if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
                        n++;
        closedir(d);
        return n;
}

#endif
