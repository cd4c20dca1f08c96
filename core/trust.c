/* trust.c — the ownership and mode rules for the files that decide what agentd runs
 * (plugins, the config, agent.commands): a descriptor walk from `/` that checks each
 * directory before taking anything from it and resolves symlinks itself, then opens
 * the checked inode once. The rules are in trust.h. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trust.h"
#include "util.h"

#define MAX_LINKS 40 /* as the kernel's own bound on nested links */

typedef struct walk {
        const char *what; /* "plugin", "config", "command" */
        const char *path; /* as given, for messages */
        char **ret_reason;
        char cur[PATH_MAX]; /* the directory reached, free of symlinks; "" is / */
        int dfd;            /* O_PATH descriptor of cur */
        struct stat dst;    /* its stat */
} walk;

static int refuse(walk *w, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(walk *w, int r, const char *fmt, ...) {
        if (w->ret_reason) {
                va_list ap;
                va_start(ap, fmt);
                if (vasprintf(w->ret_reason, fmt, ap) < 0)
                        *w->ret_reason = NULL;
                va_end(ap);
        }
        return r;
}

/* Root's files, or ours when we are not root: a user running agentd can only give it
 * the power it has already. */
static bool owner_ok(uid_t uid) {
        return uid == 0 || uid == geteuid();
}

static const char *trusted_owners(void) {
        return geteuid() == 0 ? "root" : "root or agentd's own user";
}

static const char *writers(mode_t m) {
        return (m & S_IWOTH) ? "everyone" : "its group";
}

static const char *dir_shown(const walk *w) {
        return w->cur[0] ? w->cur : "/";
}

static int enter_root(walk *w) {
        int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return refuse(w, -errno, "cannot open /: %s", strerror(errno));
        if (w->dfd >= 0)
                close(w->dfd);
        w->dfd = fd;
        w->cur[0] = '\0';
        if (fstat(fd, &w->dst) < 0)
                return refuse(w, -errno, "cannot stat /: %s", strerror(errno));
        if (!owner_ok(w->dst.st_uid))
                return refuse(w, -EPERM, "directory / is owned by uid %u, not %s", (unsigned)w->dst.st_uid,
                              trusted_owners());
        return 0;
}

/* ".." of a directory reached without symlinks is the one passed before it. */
static int enter_parent(walk *w) {
        int fd = openat(w->dfd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return refuse(w, -errno, "cannot open %s/..: %s", dir_shown(w), strerror(errno));
        close(w->dfd);
        w->dfd = fd;
        char *slash = strrchr(w->cur, '/');
        if (slash)
                *slash = '\0';
        if (fstat(fd, &w->dst) < 0)
                return refuse(w, -errno, "cannot stat %s: %s", dir_shown(w), strerror(errno));
        if (!owner_ok(w->dst.st_uid))
                return refuse(w, -EPERM, "directory %s is owned by uid %u, not %s", dir_shown(w),
                              (unsigned)w->dst.st_uid, trusted_owners());
        return 0;
}

/* May the entry `name` (stat st) be taken from the directory reached? last: it is what
 * the path names, or the last link on the way to it, so a writable directory holding
 * it is never excused. */
static int check_take(walk *w, const char *name, const struct stat *st, bool last) {
        mode_t m = w->dst.st_mode;
        if (!(m & (S_IWGRP | S_IWOTH)))
                return 0;
        if (last)
                return refuse(w, -EPERM, "%s directory %s is writable by %s (mode %04o)%s", w->what, dir_shown(w),
                              writers(m), (unsigned)(m & 07777),
                              (m & S_ISVTX) ? "; a sticky directory is not enough to hold it" : "");
        if (!(m & S_ISVTX))
                return refuse(w, -EPERM, "directory %s, above %s, is writable by %s (mode %04o)", dir_shown(w), w->path,
                              writers(m), (unsigned)(m & 07777));
        if (!owner_ok(st->st_uid))
                return refuse(w, -EPERM, "directory %s, above %s, is writable by %s and %s/%s in it belongs to uid %u",
                              dir_shown(w), w->path, writers(m), w->cur, name, (unsigned)st->st_uid);
        return 0; /* sticky: nobody else may rename or remove an entry that is ours */
}

/* The end of the walk: the entry itself. fd is its O_PATH descriptor (taken). */
static int check_final(walk *w, const char *name, int fd, const struct stat *st, bool want_dir, int *ret_fd) {
        char shown[PATH_MAX + NAME_MAX + 2];
        snprintf(shown, sizeof shown, "%s/%s", w->cur, name);
        int r = 0;
        if (want_dir) {
                if (!S_ISDIR(st->st_mode))
                        r = refuse(w, -ENOTDIR, "%s is not a directory", shown);
                else if (!owner_ok(st->st_uid))
                        r = refuse(w, -EPERM, "%s directory %s is owned by uid %u, not %s", w->what, shown,
                                   (unsigned)st->st_uid, trusted_owners());
                else if (st->st_mode & (S_IWGRP | S_IWOTH))
                        r = refuse(w, -EPERM, "%s directory %s is writable by %s (mode %04o)%s", w->what, shown,
                                   writers(st->st_mode), (unsigned)(st->st_mode & 07777),
                                   (st->st_mode & S_ISVTX) ? "; a sticky directory is not enough" : "");
                close(fd);
                return r;
        }
        close(fd);
        if (!S_ISREG(st->st_mode))
                return refuse(w, -EINVAL, "%s is not a regular file", shown);
        if (!owner_ok(st->st_uid))
                return refuse(w, -EPERM, "%s file %s is owned by uid %u, not %s", w->what, shown, (unsigned)st->st_uid,
                              trusted_owners());
        if (st->st_mode & (S_IWGRP | S_IWOTH))
                return refuse(w, -EPERM, "%s file %s is writable by %s (mode %04o)", w->what, shown,
                              writers(st->st_mode), (unsigned)(st->st_mode & 07777));
        if (!ret_fd)
                return 0;
        /* The directory was checked: nobody else can have replaced the entry since. The
         * inode is compared all the same, for a cheap certainty. */
        int rfd = openat(w->dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (rfd < 0)
                return refuse(w, -errno, "cannot open %s: %s", shown, strerror(errno));
        struct stat rst;
        if (fstat(rfd, &rst) < 0 || rst.st_dev != st->st_dev || rst.st_ino != st->st_ino) {
                close(rfd);
                return refuse(w, -EAGAIN, "%s changed while it was checked", shown);
        }
        *ret_fd = rfd;
        return 0;
}

static int walk_path(const char *path, const char *what, bool want_dir, int *ret_fd, char **ret_reason) {
        walk w = {.what = what, .path = path, .ret_reason = ret_reason, .dfd = -1};
        _cleanup_free_ char *todo = NULL;
        int r, links = 0;

        if (isempty(path))
                return refuse(&w, -EINVAL, "empty %s path", what);
        if (path[0] == '/')
                todo = strdup(path);
        else {
                char cwd[PATH_MAX];
                if (!getcwd(cwd, sizeof cwd))
                        return refuse(&w, -errno, "cannot resolve %s: %s", path, strerror(errno));
                if (asprintf(&todo, "%s/%s", cwd, path) < 0)
                        todo = NULL;
        }
        if (!todo)
                return -ENOMEM;
        r = enter_root(&w);
        for (const char *p = todo; r >= 0;) {
                p += strspn(p, "/");
                if (!*p) {
                        /* the path ends on a directory already reached ("/", "x/.") */
                        if (!want_dir)
                                r = refuse(&w, -EINVAL, "%s is not a regular file", path);
                        else if (w.dst.st_mode & (S_IWGRP | S_IWOTH))
                                r = refuse(&w, -EPERM, "%s directory %s is writable by %s (mode %04o)", what,
                                           dir_shown(&w), writers(w.dst.st_mode), (unsigned)(w.dst.st_mode & 07777));
                        break;
                }
                size_t n = strcspn(p, "/");
                char name[NAME_MAX + 1];
                if (n > NAME_MAX) {
                        r = refuse(&w, -ENAMETOOLONG, "%s: a component is too long", path);
                        break;
                }
                memcpy(name, p, n);
                name[n] = '\0';
                p += n;
                const char *rest = p + strspn(p, "/");
                bool last = !*rest;
                if (streq(name, "."))
                        continue;
                if (streq(name, "..")) {
                        r = enter_parent(&w);
                        continue;
                }

                int fd = openat(w.dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0 && errno == ENOENT && (w.dst.st_mode & (S_IWGRP | S_IWOTH))) {
                        /* absent today, but anyone who may write here could put it there */
                        r = refuse(&w, -EPERM, "%s/%s does not exist and directory %s is writable by %s (mode %04o)",
                                   w.cur, name, dir_shown(&w), writers(w.dst.st_mode),
                                   (unsigned)(w.dst.st_mode & 07777));
                        break;
                }
                if (fd < 0) {
                        r = refuse(&w, -errno, "cannot open %s/%s: %s", w.cur, name, strerror(errno));
                        break;
                }
                struct stat st;
                if (fstat(fd, &st) < 0) {
                        r = refuse(&w, -errno, "cannot stat %s/%s: %s", w.cur, name, strerror(errno));
                        close(fd);
                        break;
                }
                r = check_take(&w, name, &st, last);
                if (r < 0) {
                        close(fd);
                        break;
                }
                if (S_ISLNK(st.st_mode)) {
                        char target[PATH_MAX];
                        ssize_t k = readlinkat(fd, "", target, sizeof target - 1);
                        int e = errno;
                        close(fd);
                        if (++links > MAX_LINKS) {
                                r = refuse(&w, -ELOOP, "%s: too many levels of symbolic links", path);
                                break;
                        }
                        if (k <= 0) {
                                r = refuse(&w, k < 0 ? -e : -ENOENT, "cannot read the link %s/%s: %s", w.cur, name,
                                           k < 0 ? strerror(e) : "empty");
                                break;
                        }
                        target[k] = '\0';
                        char *next = NULL;
                        if (asprintf(&next, "%s/%s", target, rest) < 0) {
                                r = -ENOMEM;
                                break;
                        }
                        free(todo);
                        todo = next;
                        p = todo;
                        if (target[0] == '/')
                                r = enter_root(&w);
                        continue;
                }
                if (last) {
                        r = check_final(&w, name, fd, &st, want_dir, ret_fd);
                        break;
                }
                if (!S_ISDIR(st.st_mode)) {
                        r = refuse(&w, -ENOTDIR, "%s/%s is not a directory", w.cur, name);
                        close(fd);
                        break;
                }
                if (!owner_ok(st.st_uid)) {
                        r = refuse(&w, -EPERM, "directory %s/%s, above %s, is owned by uid %u, not %s", w.cur, name,
                                   path, (unsigned)st.st_uid, trusted_owners());
                        close(fd);
                        break;
                }
                size_t len = strlen(w.cur);
                if (len + 1 + n >= sizeof w.cur) {
                        r = refuse(&w, -ENAMETOOLONG, "%s: path too long", path);
                        close(fd);
                        break;
                }
                w.cur[len] = '/';
                memcpy(w.cur + len + 1, name, n + 1);
                close(w.dfd);
                w.dfd = fd;
                w.dst = st;
        }
        if (w.dfd >= 0)
                close(w.dfd);
        return r;
}

int trust_open(const char *path, const char *what, int *ret_fd, char **ret_reason) {
        return walk_path(path, what, false, ret_fd, ret_reason);
}

int trust_check_file(const char *path, const char *what, char **ret_reason) {
        return walk_path(path, what, false, NULL, ret_reason);
}

int trust_check_dir(const char *path, const char *what, char **ret_reason) {
        return walk_path(path, what, true, NULL, ret_reason);
}
