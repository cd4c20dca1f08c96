/* mounts.c — what the kernel says about mounts and memory, and the mount calls.
 *
 * /proc/self/mountinfo, /proc/meminfo and /sys/bus/pci/devices are read through the
 * agent's sysroot (a fixture in tests); mount(2) and umount2(2) are called directly
 * (agentd runs as root), and under dry_run only logged. Overlay options are built from
 * paths the config check already cleared of ',', ':' and '\'. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "gpucache.h"

#define TMPFS_MAGIC_ 0x01021994
#define RAMFS_MAGIC_ 0x858458f6

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s) {
        char *o = s;
        for (char *p = s; *p;) {
                if (p[0] == '\\' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' &&
                    p[3] <= '7') {
                        *o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
                        p += 4;
                } else
                        *o++ = *p++;
        }
        *o = '\0';
}

static void copy(char *dst, size_t len, const char *src) {
        snprintf(dst, len, "%s", src ? src : "");
}

/* The next space-separated field of *p (cut in place), or NULL. */
static char *field(char **p) {
        if (!*p || !**p)
                return NULL;
        char *s = *p, *sp = strchr(s, ' ');
        if (sp) {
                *sp = '\0';
                *p = sp + 1;
        } else
                *p = NULL;
        return s;
}

int gc_mount_at(gc *g, const char *path, gc_mount *ret) {
        char *data = NULL;
        int r = g->host->read_file(g->ctx, "/proc/self/mountinfo", &data, NULL);
        if (r < 0)
                return r;
        gc_mount m = {0};
        for (char *line = data, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                /* id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
                char *f[6] = {0}, *p = line;
                for (int i = 0; i < 5 && p; i++)
                        f[i] = field(&p);
                if (!f[4])
                        continue;
                char *tok;
                while ((tok = field(&p)) && strcmp(tok, "-") != 0)
                        ;
                if (!tok)
                        continue;
                char *fstype = field(&p);
                char *source = field(&p);
                char *opts = field(&p);
                unescape(f[4]);
                if (strcmp(f[4], path) != 0)
                        continue;
                /* later lines are mounted on top of earlier ones */
                m.found = true;
                copy(m.fstype, sizeof m.fstype, fstype);
                copy(m.source, sizeof m.source, source);
                copy(m.super_opts, sizeof m.super_opts, opts);
                unescape(m.super_opts);
        }
        free(data);
        *ret = m;
        return 0;
}

int gc_on_ramfs(const char *path, char *fstype, size_t len) {
        struct statfs s;
        if (statfs(path, &s) < 0)
                return -errno;
        if ((unsigned long)s.f_type == TMPFS_MAGIC_) {
                copy(fstype, len, "tmpfs");
                return 1;
        }
        if ((unsigned long)s.f_type == RAMFS_MAGIC_) {
                copy(fstype, len, "ramfs");
                return 1;
        }
        return 0;
}

int gc_mkdir_p(const char *path, mode_t mode) {
        char buf[PATH_MAX];
        if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
                return -ENAMETOOLONG;
        for (char *p = buf + 1;; p++)
                if (*p == '/' || *p == '\0') {
                        char c = *p;
                        *p = '\0';
                        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                                return -errno;
                        *p = c;
                        if (!c)
                                break;
                }
        return 0;
}

int gc_mount_tmpfs(gc *g, gc_layer *l) {
        char opts[64];
        snprintf(opts, sizeof opts, "size=%llu,mode=0755", (unsigned long long)l->size);
        if (g->dry_run) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would mount -t tmpfs -o nosuid,nodev,%s tmpfs %s", opts,
                             l->ram);
                return 0;
        }
        if (mount("tmpfs", l->ram, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
                return -errno;
        return 0;
}

int gc_mount_overlay(gc *g, gc_layer *l) {
        char opts[3 * PATH_MAX + 64];
        int n = snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", l->lower, l->upper, l->work);
        if (n < 0 || (size_t)n >= sizeof opts)
                return -ENAMETOOLONG;
        if (g->dry_run) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would mount -t overlay -o %s overlay %s", opts, l->merged);
                return 0;
        }
        if (mount("overlay", l->merged, "overlay", 0, opts) < 0)
                return -errno;
        return 0;
}

int gc_umount(gc *g, const char *path) {
        if (g->dry_run) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would umount %s", path);
                return 0;
        }
        return umount2(path, UMOUNT_NOFOLLOW) < 0 ? -errno : 0;
}

void gc_remount_ro(gc *g, gc_layer *l, bool ro) {
        if (g->dry_run)
                return;
        if (mount(NULL, l->merged, NULL, MS_REMOUNT | (ro ? MS_RDONLY : 0), NULL) < 0)
                g->host->log(g->ctx, ORG_LOG_INFO, "%s: remount %s %s: %s (going on)", l->name, ro ? "ro" : "rw",
                             l->merged, strerror(errno));
}

static bool read_is(gc *g, const char *pci, const char *file, const char *prefix) {
        char path[128], *data = NULL;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/%s", pci, file);
        if (g->host->read_file(g->ctx, path, &data, NULL) < 0)
                return false;
        bool ok = strncmp(data, prefix, strlen(prefix)) == 0;
        free(data);
        return ok;
}

static int cmp_pci(const void *a, const void *b) {
        return strcmp(a, b);
}

size_t gc_discover(gc *g, char (*ret)[GC_PCI_MAX], size_t max) {
        char *dir = NULL;
        if (g->host->sysroot_path(g->ctx, "/sys/bus/pci/devices", &dir) < 0)
                return 0;
        DIR *d = opendir(dir);
        free(dir);
        if (!d)
                return 0;
        size_t n = 0;
        struct dirent *e;
        while ((e = readdir(d)) && n < max)
                if (org_pci_address_valid(e->d_name) && read_is(g, e->d_name, "vendor", "0x1002") &&
                    read_is(g, e->d_name, "class", "0x03"))
                        copy(ret[n++], GC_PCI_MAX, e->d_name);
        closedir(d);
        qsort(ret, n, GC_PCI_MAX, cmp_pci);
        return n;
}

uint64_t gc_mem_total(gc *g) {
        char *data = NULL;
        if (g->host->read_file(g->ctx, "/proc/meminfo", &data, NULL) < 0)
                return 0;
        uint64_t kb = 0;
        const char *p = strstr(data, "MemTotal:");
        if (p)
                kb = strtoull(p + 9, NULL, 10);
        free(data);
        return kb * 1024;
}
