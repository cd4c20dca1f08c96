/* loader.c — opening plugin files: the file is opened once (after trust.c's checks
 * when agentd checks permissions), dlopen'ed through /proc/<pid>/fd/N so the inode
 * checked is the inode loaded, and its descriptor checked before any field is read. */
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "loader.h"
#include "trust.h"
#include "util.h"

/* The smallest descriptor this agentd accepts: everything up to and including fini. */
#define DESC_MIN_SIZE (offsetof(org_plugin, fini) + sizeof(((org_plugin *)0)->fini))

int loader_find(char *const *dirs, const char *name, char **ret_path) {
        if (!name_is_valid(name))
                return -EINVAL; /* a name, never a path: "../x" must not leave plugin_dirs */
        for (size_t i = 0; dirs && dirs[i]; i++) {
                char *p = NULL;
                if (asprintf(&p, "%s/%s.so", dirs[i], name) < 0)
                        return -ENOMEM;
                if (access(p, F_OK) == 0) {
                        *ret_path = p;
                        return 0;
                }
                free(p);
        }
        return -ENOENT;
}

int loader_check_perms(const char *path, char **ret_reason) {
        return trust_check_file(path, "plugin", ret_reason);
}

typedef struct name_query {
        const char *name;
        bool found;
} name_query;

static int match_name(struct dl_phdr_info *info, size_t size, void *userdata) {
        name_query *q = userdata;
        if (info->dlpi_name && streq(info->dlpi_name, q->name)) {
                q->found = true;
                return 1;
        }
        return 0;
}

/* glibc hands back an object already loaded under the same name without opening the
 * file: a descriptor number whose name an object still loaded carries (one dlclose
 * could not unload) must not be reused. The name holds the pid, not "self", so that a
 * debugger or symbolizer in another process finds the same file. */
static int unique_fd_name(int *fd, char *name, size_t size) {
        for (int tries = 0; tries < 1024; tries++) {
                snprintf(name, size, "/proc/%d/fd/%d", (int)getpid(), *fd);
                name_query q = {name, false};
                dl_iterate_phdr(match_name, &q);
                if (!q.found)
                        return 0;
                int nfd = fcntl(*fd, F_DUPFD_CLOEXEC, *fd + 1);
                if (nfd < 0)
                        return -errno;
                close(*fd);
                *fd = nfd;
        }
        return -EMFILE;
}

/* Whether the mapping that holds ADDR is the file ST describes. glibc also answers a
 * dlopen from an alias: when /proc/<pid>/fd/N once named a file that was loaded
 * already (found by inode), the name stays attached to that object, invisible to
 * dl_iterate_phdr, and a later dlopen of the same name with another file behind N
 * returns the old object. The mapping's device and inode in /proc/self/maps tell. */
static bool mapping_is_file(const void *addr, const struct stat *st) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/maps", "re");
        if (!f)
                return true; /* no /proc: dlopen through it would have failed already */
        char line[512];
        uintptr_t a = (uintptr_t)addr;
        while (fgets(line, sizeof line, f)) {
                unsigned long lo, hi, ino;
                unsigned maj, min;
                if (sscanf(line, "%lx-%lx %*s %*s %x:%x %lu", &lo, &hi, &maj, &min, &ino) != 5)
                        continue;
                if (a >= lo && a < hi)
                        return ino == (unsigned long)st->st_ino && maj == major(st->st_dev) &&
                               min == minor(st->st_dev);
        }
        return false;
}

static int fail(char **ret_error, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char **ret_error, int r, const char *fmt, ...) {
        if (ret_error) {
                va_list ap;
                va_start(ap, fmt);
                if (vasprintf(ret_error, fmt, ap) < 0)
                        *ret_error = NULL;
                va_end(ap);
        }
        return r;
}

int loader_open(const char *path, bool check_perms, plugin_so **ret, char **ret_error) {
        _cleanup_close_ int fd = -1;
        int r;

        if (check_perms) {
                char *reason = NULL;
                r = trust_open(path, "plugin", &fd, &reason);
                if (r < 0) {
                        if (ret_error)
                                *ret_error = reason;
                        else
                                free(reason);
                        return r;
                }
        } else {
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
                if (fd < 0)
                        return fail(ret_error, -errno, "%s: %s", path, strerror(errno));
        }
        struct stat st;
        if (fstat(fd, &st) < 0)
                return fail(ret_error, -errno, "%s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return fail(ret_error, -EINVAL, "%s is not a regular file", path);

        char name[64];
        void *dl = NULL;
        const uint32_t *head = NULL;
        for (int tries = 0;; tries++) {
                r = unique_fd_name(&fd, name, sizeof name);
                if (r < 0)
                        return fail(ret_error, r, "%s: %s", path, strerror(-r));
                dl = dlopen(name, RTLD_NOW | RTLD_LOCAL);
                if (!dl) {
                        const char *e = dlerror();
                        return fail(ret_error, -ENOEXEC, "%s: %s%s", path, e ? e : "dlopen failed",
                                    access(name, F_OK) < 0 ? " (plugins are loaded through /proc: is it mounted?)"
                                                           : "");
                }
                head = dlsym(dl, ORG_PLUGIN_SYMBOL);
                if (!head) {
                        dlclose(dl);
                        return fail(ret_error, -ENOEXEC,
                                    "%s does not export the symbol \"%s\": not an organism plugin", path,
                                    ORG_PLUGIN_SYMBOL);
                }
                if (mapping_is_file(head, &st))
                        break;
                /* another object answered under an alias of this name: a new number */
                dlclose(dl);
                int nfd = tries < 64 ? fcntl(fd, F_DUPFD_CLOEXEC, fd + 1) : -1;
                if (nfd < 0)
                        return fail(ret_error, -ELOOP, "%s: dlopen keeps answering with another object", path);
                close(fd);
                fd = nfd;
        }
        /* Only the first two words may be read before they are checked. */
        if (head[0] != ORG_PLUGIN_ABI_VERSION || head[1] < DESC_MIN_SIZE) {
                uint32_t v = head[0], sz = head[1];
                dlclose(dl);
                if (v != ORG_PLUGIN_ABI_VERSION)
                        return fail(ret_error, -EPROTO,
                                    "%s was built for plugin ABI version %u, this agentd speaks version %u", path,
                                    v, ORG_PLUGIN_ABI_VERSION);
                return fail(ret_error, -EPROTO, "%s has a descriptor of %u bytes, ABI %u needs at least %zu", path,
                            sz, v, (size_t)DESC_MIN_SIZE);
        }
        const org_plugin *desc = (const org_plugin *)head;
        if (!desc->name || !name_is_valid(desc->name) || !desc->init) {
                dlclose(dl);
                return fail(ret_error, -EINVAL, "%s: descriptor lacks a valid name or an init hook", path);
        }

        plugin_so *so = new0(plugin_so, 1);
        if (!so) {
                dlclose(dl);
                return -ENOMEM;
        }
        so->dl = dl;
        so->desc = desc;
        so->fd = TAKE_FD(fd);
        so->path = strdup(path);
        so->dev = st.st_dev;
        so->ino = st.st_ino;
        if (!so->path) {
                loader_close(so);
                return -ENOMEM;
        }
        *ret = so;
        return 0;
}

void loader_close(plugin_so *so) {
        if (!so)
                return;
        if (so->holds > 0) {
                so->closing = true;
                return;
        }
        if (so->dl)
                dlclose(so->dl);
        /* after dlclose: while the object is loaded, its name keeps this number taken */
        if (so->fd >= 0)
                close(so->fd);
        free(so->path);
        free(so);
}

void loader_hold(plugin_so *so) {
        if (so)
                so->holds++;
}

void loader_release(plugin_so *so) {
        if (!so || so->holds == 0)
                return;
        if (--so->holds == 0 && so->closing) {
                so->closing = false;
                loader_close(so);
        }
}
