/* loader.c — dlopen of plugin files through unique symlinks, descriptor checks and the
 * root-only permission checks on plugin files and directories. */
#include <dlfcn.h>
#include <stdarg.h>
#include <fcntl.h>
#include <libgen.h>
#include <stddef.h>
#include <sys/stat.h>

#include "loader.h"
#include "util.h"

static char *scratch_dir;
static unsigned long long open_counter;

/* The smallest descriptor this agentd accepts: everything up to and including fini. */
#define DESC_MIN_SIZE (offsetof(org_plugin, fini) + sizeof(((org_plugin *)0)->fini))

int loader_init(const char *base) {
        if (scratch_dir)
                return 0;
        if (!base)
                base = getenv("TMPDIR");
        if (isempty(base))
                base = "/tmp";
        char *t = NULL;
        if (asprintf(&t, "%s/agentd-so.XXXXXX", base) < 0)
                return -ENOMEM;
        if (!mkdtemp(t)) {
                int r = -errno;
                free(t);
                return r;
        }
        scratch_dir = t;
        return 0;
}

void loader_done(void) {
        if (!scratch_dir)
                return;
        rmdir(scratch_dir); /* links are removed as objects close; leftovers keep it */
        free(scratch_dir);
        scratch_dir = NULL;
}

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

static int check_one(const char *what, const char *path, char **ret_reason) {
        struct stat st;
        if (stat(path, &st) < 0) {
                if (asprintf(ret_reason, "cannot stat %s %s: %s", what, path, strerror(errno)) < 0)
                        *ret_reason = NULL;
                return -errno;
        }
        if (st.st_uid != 0) {
                if (asprintf(ret_reason, "%s %s is owned by uid %u, not root", what, path, (unsigned)st.st_uid) < 0)
                        *ret_reason = NULL;
                return -EPERM;
        }
        if (st.st_mode & (S_IWGRP | S_IWOTH)) {
                if (asprintf(ret_reason, "%s %s is writable by %s (mode %04o)", what, path,
                             (st.st_mode & S_IWOTH) ? "everyone" : "its group", (unsigned)(st.st_mode & 07777)) < 0)
                        *ret_reason = NULL;
                return -EPERM;
        }
        return 0;
}

int loader_check_perms(const char *path, char **ret_reason) {
        _cleanup_free_ char *copy = strdup(path);
        if (!copy)
                return -ENOMEM;
        int r = check_one("plugin file", path, ret_reason);
        if (r < 0)
                return r;
        return check_one("plugin directory", dirname(copy), ret_reason);
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
        int r;
        if (!scratch_dir && (r = loader_init(NULL)) < 0)
                return fail(ret_error, r, "cannot create the plugin scratch directory: %s", strerror(-r));

        _cleanup_free_ char *abspath = realpath(path, NULL);
        if (!abspath)
                return fail(ret_error, -errno, "%s: %s", path, strerror(errno));
        if (check_perms) {
                char *reason = NULL;
                r = loader_check_perms(abspath, &reason);
                if (r < 0) {
                        if (ret_error)
                                *ret_error = reason;
                        else
                                free(reason);
                        return r;
                }
        }
        struct stat st;
        if (stat(abspath, &st) < 0)
                return fail(ret_error, -errno, "%s: %s", abspath, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return fail(ret_error, -EINVAL, "%s is not a regular file", abspath);

        _cleanup_free_ char *link = NULL;
        const char *base = strrchr(abspath, '/') + 1;
        if (asprintf(&link, "%s/%llu-%s", scratch_dir, ++open_counter, base) < 0)
                return -ENOMEM;
        if (symlink(abspath, link) < 0)
                return fail(ret_error, -errno, "cannot link %s: %s", link, strerror(errno));

        void *dl = dlopen(link, RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
                const char *e = dlerror();
                unlink(link);
                return fail(ret_error, -ENOEXEC, "%s", e ? e : "dlopen failed");
        }
        const uint32_t *head = dlsym(dl, ORG_PLUGIN_SYMBOL);
        if (!head) {
                dlclose(dl);
                unlink(link);
                return fail(ret_error, -ENOEXEC, "%s does not export the symbol \"%s\": not an organism plugin",
                            abspath, ORG_PLUGIN_SYMBOL);
        }
        /* Only the first two words may be read before they are checked. */
        if (head[0] != ORG_PLUGIN_ABI_VERSION || head[1] < DESC_MIN_SIZE) {
                uint32_t v = head[0], sz = head[1];
                dlclose(dl);
                unlink(link);
                if (v != ORG_PLUGIN_ABI_VERSION)
                        return fail(ret_error, -EPROTO,
                                    "%s was built for plugin ABI version %u, this agentd speaks version %u", abspath,
                                    v, ORG_PLUGIN_ABI_VERSION);
                return fail(ret_error, -EPROTO, "%s has a descriptor of %u bytes, ABI %u needs at least %zu", abspath,
                            sz, v, (size_t)DESC_MIN_SIZE);
        }
        const org_plugin *desc = (const org_plugin *)head;
        if (!desc->name || !name_is_valid(desc->name) || !desc->init) {
                dlclose(dl);
                unlink(link);
                return fail(ret_error, -EINVAL, "%s: descriptor lacks a valid name or an init hook", abspath);
        }

        plugin_so *so = new0(plugin_so, 1);
        if (!so) {
                dlclose(dl);
                unlink(link);
                return -ENOMEM;
        }
        so->dl = dl;
        so->desc = desc;
        so->path = strdup(path);
        so->link = TAKE_PTR(link);
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
        if (so->dl)
                dlclose(so->dl);
        if (so->link)
                unlink(so->link);
        free(so->link);
        free(so->path);
        free(so);
}
