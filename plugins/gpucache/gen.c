/* gen.c — the generation builder and restore of gen.h: recursive walks over full
 * paths (lstat, never following a symlink), a hard-link map keyed by (dev, inode) for
 * files linked more than once, and a file copy that notices a source changing under it
 * (copied once more, then kept: the next sync takes it again). copy_tree() makes a new
 * tree (restore, the first generation, a hard-link clone for the first standby);
 * reconcile() brings the standby tree to the upper. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "gen.h"

#define GC_COPY_BUF   (256 * 1024)
#define GC_XATTR_LIST 65536
#define GC_XATTR_VAL  65536

/* ---- hard-link map -------------------------------------------------------------- */

typedef struct link_entry {
        dev_t dev;
        ino_t ino;
        char *rel; /* path relative to the destination root */
} link_entry;

typedef struct link_map {
        link_entry *v;
        size_t n, cap; /* cap is a power of two, or 0 */
} link_map;

static size_t link_hash(dev_t d, ino_t i) {
        uint64_t h = (uint64_t)i * 0x9e3779b97f4a7c15ull ^ (uint64_t)d;
        return (size_t)(h ^ (h >> 29));
}

static const char *link_find(const link_map *m, dev_t d, ino_t i) {
        if (!m->cap)
                return NULL;
        for (size_t k = link_hash(d, i) & (m->cap - 1);; k = (k + 1) & (m->cap - 1)) {
                if (!m->v[k].rel)
                        return NULL;
                if (m->v[k].dev == d && m->v[k].ino == i)
                        return m->v[k].rel;
        }
}

static int link_add(link_map *m, dev_t d, ino_t i, const char *rel) {
        if ((m->n + 1) * 2 > m->cap) {
                size_t cap = m->cap ? m->cap * 2 : 256;
                link_entry *v = calloc(cap, sizeof *v);
                if (!v)
                        return -ENOMEM;
                for (size_t k = 0; k < m->cap; k++)
                        if (m->v[k].rel) {
                                size_t j = link_hash(m->v[k].dev, m->v[k].ino) & (cap - 1);
                                while (v[j].rel)
                                        j = (j + 1) & (cap - 1);
                                v[j] = m->v[k];
                        }
                free(m->v);
                m->v = v;
                m->cap = cap;
        }
        size_t k = link_hash(d, i) & (m->cap - 1);
        while (m->v[k].rel)
                k = (k + 1) & (m->cap - 1);
        m->v[k].rel = strdup(rel);
        if (!m->v[k].rel)
                return -ENOMEM;
        m->v[k].dev = d;
        m->v[k].ino = i;
        m->n++;
        return 0;
}

static void link_free(link_map *m) {
        for (size_t k = 0; k < m->cap; k++)
                free(m->v[k].rel);
        free(m->v);
        memset(m, 0, sizeof *m);
}

/* ---- the walk ------------------------------------------------------------------- */

typedef struct walk {
        const char *src_root, *prev_root, *dst_root; /* prev_root NULL: copy everything */
        gc_cancel_fn cancel;
        void *userdata;
        gc_stats *st;
        link_map links;
        char *buf;  /* GC_COPY_BUF */
        char *xl_a, *xl_b, *xv_a, *xv_b; /* xattr names and values: GC_XATTR_LIST, GC_XATTR_VAL */
        char *err;
        size_t err_len;
        /* the standby tree was complete as of this wall-clock second (its stamp, less a
         * margin): an upper entry whose ctime is older has not changed since, so its
         * xattrs need no comparing (size, mtime, mode and owner still are). 0 = none */
        int64_t settled_before;
} walk;

static int fail(walk *w, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(walk *w, int r, const char *fmt, ...) {
        if (w->err && w->err_len && !w->err[0]) {
                va_list ap;
                va_start(ap, fmt);
                int n = vsnprintf(w->err, w->err_len, fmt, ap);
                va_end(ap);
                if (n >= 0 && (size_t)n < w->err_len)
                        snprintf(w->err + n, w->err_len - (size_t)n, ": %s", strerror(-r));
        }
        return r;
}

static int join(char *out, size_t len, const char *root, const char *rel) {
        int n = rel[0] ? snprintf(out, len, "%s/%s", root, rel) : snprintf(out, len, "%s", root);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int xattr_names(const char *path, char *list, size_t len, ssize_t *ret_n) {
        ssize_t n = llistxattr(path, list, len);
        if (n < 0) {
                if (errno == ENOTSUP || errno == ENODATA) {
                        *ret_n = 0;
                        return 0;
                }
                return -errno;
        }
        *ret_n = n;
        return 0;
}

static size_t count_names(const char *list, ssize_t n) {
        size_t c = 0;
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1)
                c++;
        return c;
}

/* true when a and b carry the same xattrs (names and values). */
/* By name: every name of a has the same value in b, and the counts match. */
static bool xattrs_equal(walk *w, const char *a, const char *b) {
        char *la = w->xl_a, *lb = w->xl_b, *va = w->xv_a, *vb = w->xv_b;
        ssize_t na = 0, nb = 0;
        if (xattr_names(a, la, GC_XATTR_LIST, &na) < 0 || xattr_names(b, lb, GC_XATTR_LIST, &nb) < 0)
                return false;
        if (count_names(la, na) != count_names(lb, nb))
                return false;
        for (ssize_t i = 0; i < na; i += (ssize_t)strlen(la + i) + 1) {
                ssize_t x = lgetxattr(a, la + i, va, GC_XATTR_VAL);
                ssize_t y = lgetxattr(b, la + i, vb, GC_XATTR_VAL);
                if (x < 0 || y < 0 || x != y || memcmp(va, vb, (size_t)x) != 0)
                        return false;
        }
        return true;
}

static int copy_xattrs(walk *w, const char *src, const char *dst) {
        char *list = w->xl_a, *val = w->xv_a;
        ssize_t n = 0;
        int r = xattr_names(src, list, GC_XATTR_LIST, &n);
        if (r < 0)
                return fail(w, r, "list xattrs of %s", src);
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1) {
                ssize_t l = lgetxattr(src, list + i, val, GC_XATTR_VAL);
                if (l < 0) {
                        if (errno == ENODATA)
                                continue; /* removed meanwhile */
                        return fail(w, -errno, "read xattr %s of %s", list + i, src);
                }
                if (lsetxattr(dst, list + i, val, (size_t)l, 0) < 0)
                        return fail(w, -errno, "write xattr %s on %s", list + i, dst);
        }
        return 0;
}

/* Owner, mode (after chown, which clears set-id bits), xattrs, then times. */
static int copy_meta(walk *w, const char *src, const char *dst, const struct stat *st) {
        if (lchown(dst, st->st_uid, st->st_gid) < 0)
                return fail(w, -errno, "chown %s", dst);
        if (!S_ISLNK(st->st_mode) && chmod(dst, st->st_mode & 07777) < 0)
                return fail(w, -errno, "chmod %s", dst);
        int r = copy_xattrs(w, src, dst);
        if (r < 0)
                return r;
        struct timespec t[2] = {st->st_atim, st->st_mtim};
        if (utimensat(AT_FDCWD, dst, t, AT_SYMLINK_NOFOLLOW) < 0)
                return fail(w, -errno, "set times of %s", dst);
        return 0;
}

static bool same_time(const struct timespec *a, const struct timespec *b) {
        return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* The bytes of src into a new file dst. *ret_changed: the source moved meanwhile. */
static int copy_bytes(walk *w, const char *src, const char *dst, const struct stat *st, bool *ret_changed,
                      struct stat *ret_after) {
        int in = open(src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (in < 0)
                return -errno; /* ENOENT: vanished, the caller decides */
        int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (out < 0) {
                int r = -errno;
                close(in);
                return fail(w, r, "create %s", dst);
        }
        int r = 0;
        uint64_t total = 0;
        for (;;) {
                ssize_t n = read(in, w->buf, GC_COPY_BUF);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = fail(w, -errno, "read %s", src);
                        break;
                }
                if (n == 0)
                        break;
                for (ssize_t off = 0; off < n;) {
                        ssize_t m = write(out, w->buf + off, (size_t)(n - off));
                        if (m < 0) {
                                if (errno == EINTR)
                                        continue;
                                r = fail(w, -errno, "write %s", dst);
                                break;
                        }
                        off += m;
                }
                if (r < 0)
                        break;
                total += (uint64_t)n;
        }
        struct stat after;
        if (r == 0 && fstat(in, &after) == 0) {
                *ret_changed = after.st_size != st->st_size || !same_time(&after.st_mtim, &st->st_mtim) ||
                               (uint64_t)after.st_size != total;
                *ret_after = after;
        } else
                *ret_changed = false;
        if (close(out) < 0 && r == 0)
                r = fail(w, -errno, "close %s", dst);
        close(in);
        if (r == 0)
                w->st->bytes_copied += total;
        return r;
}

/* Unchanged since the previous generation: the same kind of file with the same size,
 * mtime, mode, owner and xattrs. */
static bool unchanged(walk *w, const char *src, const struct stat *st, const char *prev) {
        struct stat p;
        if (lstat(prev, &p) < 0 || !S_ISREG(p.st_mode))
                return false;
        if (p.st_size != st->st_size || !same_time(&p.st_mtim, &st->st_mtim) || p.st_mode != st->st_mode ||
            p.st_uid != st->st_uid || p.st_gid != st->st_gid)
                return false;
        return xattrs_equal(w, src, prev);
}

static int do_file(walk *w, const char *rel, const char *src, const char *dst, const struct stat *st0) {
        struct stat st = *st0;
        w->st->files++;
        w->st->bytes_total += (uint64_t)st.st_size;
        if (st.st_nlink > 1) {
                const char *first = link_find(&w->links, st.st_dev, st.st_ino);
                if (first) {
                        char target[PATH_MAX];
                        if (join(target, sizeof target, w->dst_root, first) < 0)
                                return fail(w, -ENAMETOOLONG, "path of %s", first);
                        if (link(target, dst) < 0)
                                return fail(w, -errno, "link %s to %s", dst, target);
                        w->st->linked++;
                        return 0;
                }
        }
        bool linked = false;
        if (w->prev_root) {
                char prev[PATH_MAX];
                if (join(prev, sizeof prev, w->prev_root, rel) == 0 && unchanged(w, src, &st, prev) && link(prev, dst) == 0) {
                        linked = true;
                        w->st->linked++;
                }
        }
        if (!linked) {
                for (int attempt = 0;; attempt++) {
                        bool changed = false;
                        struct stat after;
                        int r = copy_bytes(w, src, dst, &st, &changed, &after);
                        if (r == -ENOENT || r == -ELOOP) {
                                w->st->vanished++;
                                (void)unlink(dst);
                                return 0;
                        }
                        if (r < 0)
                                return r;
                        if (!changed)
                                break;
                        /* written while we read it: once more, then keep what we have (the next
                         * sync takes it again, its mtime will differ) */
                        w->st->torn++;
                        st = after;
                        if (attempt >= 1)
                                break;
                }
                int r = copy_meta(w, src, dst, &st);
                if (r < 0)
                        return r;
                w->st->copied++;
        }
        if (st.st_nlink > 1) {
                int r = link_add(&w->links, st.st_dev, st.st_ino, rel);
                if (r < 0)
                        return fail(w, r, "hard-link map");
        }
        return 0;
}

static int do_special(walk *w, const char *src, const char *dst, const struct stat *st) {
        w->st->specials++;
        if (S_ISLNK(st->st_mode)) {
                char target[PATH_MAX];
                ssize_t n = readlink(src, target, sizeof target - 1);
                if (n < 0) {
                        if (errno == ENOENT) {
                                w->st->vanished++;
                                return 0;
                        }
                        return fail(w, -errno, "readlink %s", src);
                }
                target[n] = '\0';
                if (symlink(target, dst) < 0)
                        return fail(w, -errno, "symlink %s", dst);
        } else if (mknod(dst, st->st_mode & (S_IFMT | 07777), st->st_rdev) < 0)
                return fail(w, -errno, "mknod %s", dst);
        return copy_meta(w, src, dst, st);
}

static int do_dir(walk *w, const char *rel, int depth);

static int do_entry(walk *w, const char *rel, int depth) {
        char src[PATH_MAX], dst[PATH_MAX];
        if (join(src, sizeof src, w->src_root, rel) < 0 || join(dst, sizeof dst, w->dst_root, rel) < 0)
                return fail(w, -ENAMETOOLONG, "path %s", rel);
        struct stat st;
        if (lstat(src, &st) < 0) {
                if (errno == ENOENT) {
                        w->st->vanished++;
                        return 0;
                }
                return fail(w, -errno, "lstat %s", src);
        }
        if (S_ISDIR(st.st_mode)) {
                if (mkdir(dst, 0700) < 0)
                        return fail(w, -errno, "mkdir %s", dst);
                int r = do_dir(w, rel, depth + 1);
                if (r < 0)
                        return r;
                w->st->dirs++;
                return copy_meta(w, src, dst, &st); /* times last: the children moved them */
        }
        if (S_ISREG(st.st_mode))
                return do_file(w, rel, src, dst, &st);
        return do_special(w, src, dst, &st);
}

static int do_dir(walk *w, const char *rel, int depth) {
        if (depth > 256)
                return fail(w, -ELOOP, "tree deeper than 256 levels at %s", rel);
        char src[PATH_MAX];
        if (join(src, sizeof src, w->src_root, rel) < 0)
                return fail(w, -ENAMETOOLONG, "path %s", rel);
        DIR *d = opendir(src);
        if (!d) {
                if (errno == ENOENT) {
                        w->st->vanished++;
                        return 0;
                }
                return fail(w, -errno, "open directory %s", src);
        }
        int r = 0;
        struct dirent *e;
        char sub[PATH_MAX];
        while ((errno = 0, e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                if (w->cancel && w->cancel(w->userdata)) {
                        r = fail(w, -ECANCELED, "cancelled");
                        break;
                }
                int n = rel[0] ? snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name)
                               : snprintf(sub, sizeof sub, "%s", e->d_name);
                if (n < 0 || (size_t)n >= sizeof sub) {
                        r = fail(w, -ENAMETOOLONG, "path under %s", rel);
                        break;
                }
                if ((r = do_entry(w, sub, depth)) < 0)
                        break;
        }
        if (r == 0 && errno)
                r = fail(w, -errno, "read directory %s", src);
        closedir(d);
        return r;
}

static int alloc_bufs(walk *w);
static void free_bufs(walk *w);

/* Copies the tree at src_root into dst_root (which must not exist): the root's own
 * metadata too. */
static int copy_tree(walk *w) {
        struct stat st;
        if (lstat(w->src_root, &st) < 0)
                return fail(w, -errno, "lstat %s", w->src_root);
        if (!S_ISDIR(st.st_mode))
                return fail(w, -ENOTDIR, "%s", w->src_root);
        int r = alloc_bufs(w);
        if (r == 0)
                r = do_dir(w, "", 0);
        if (r == 0)
                r = copy_meta(w, w->src_root, w->dst_root, &st);
        free_bufs(w);
        return r;
}

/* ---- generations ---------------------------------------------------------------- */

static bool gen_name(const char *name, uint64_t *ret) {
        if (strncmp(name, "gen-", 4) != 0 || !name[4])
                return false;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(name + 4, &end, 10);
        if (errno || *end || name[4] < '0' || name[4] > '9')
                return false;
        *ret = v;
        return true;
}

uint64_t gc_gen_current(const char *persist) {
        char path[PATH_MAX], target[64];
        if (snprintf(path, sizeof path, "%s/current", persist) >= (int)sizeof path)
                return 0;
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
                return 0;
        target[n] = '\0';
        uint64_t g;
        if (!gen_name(target, &g))
                return 0;
        /* the symlink only ever names a complete generation; check it is there */
        char dir[PATH_MAX];
        struct stat st;
        if (snprintf(dir, sizeof dir, "%s/%s", persist, target) >= (int)sizeof dir || lstat(dir, &st) < 0 ||
            !S_ISDIR(st.st_mode))
                return 0;
        return g;
}

int gc_rm_rf(const char *path) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISDIR(st.st_mode))
                return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
        DIR *d = opendir(path);
        if (!d)
                return -errno;
        int r = 0;
        struct dirent *e;
        char sub[PATH_MAX];
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                if (snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= (int)sizeof sub) {
                        r = -ENAMETOOLONG;
                        continue;
                }
                int q = gc_rm_rf(sub);
                if (q < 0 && r == 0)
                        r = q;
        }
        closedir(d);
        if (rmdir(path) < 0 && errno != ENOENT && r == 0)
                r = -errno;
        return r;
}

/* Keeps `cur` and one standby tree (the newest other gen-*), removes the rest and
 * current.new. *ret_standby: its number, 0 for none. */
static int pick_standby(const char *persist, uint64_t cur, uint64_t *ret_standby) {
        DIR *d = opendir(persist);
        if (!d)
                return -errno;
        uint64_t best = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
                uint64_t g;
                if (gen_name(e->d_name, &g) && g != cur && g > best)
                        best = g;
        }
        rewinddir(d);
        int r = 0;
        char sub[PATH_MAX];
        while ((e = readdir(d))) {
                uint64_t g;
                bool stale = (gen_name(e->d_name, &g) && g != cur && g != best) || strcmp(e->d_name, "current.new") == 0;
                if (!stale || snprintf(sub, sizeof sub, "%s/%s", persist, e->d_name) >= (int)sizeof sub)
                        continue;
                int q = gc_rm_rf(sub);
                if (q < 0 && r == 0)
                        r = q;
        }
        closedir(d);
        *ret_standby = best;
        return r;
}

static int fsync_path(const char *path) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = fsync(fd) < 0 ? -errno : 0;
        close(fd);
        return r;
}

/* ---- reconcile: bring the standby tree to the upper, changing only what differs ---- */

#define TMP_NAME ".gpucache-tmp"

/* Sets every xattr of src on dst and removes those dst has and src has not (dirs are
 * fixed in place: they are never shared with the current tree). */
static int sync_xattrs(walk *w, const char *src, const char *dst) {
        int r = copy_xattrs(w, src, dst);
        if (r < 0)
                return r;
        ssize_t n = 0;
        if ((r = xattr_names(dst, w->xl_b, GC_XATTR_LIST, &n)) < 0)
                return fail(w, r, "list xattrs of %s", dst);
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(w->xl_b + i) + 1)
                if (lgetxattr(src, w->xl_b + i, NULL, 0) < 0 && errno == ENODATA &&
                    lremovexattr(dst, w->xl_b + i) < 0 && errno != ENODATA)
                        return fail(w, -errno, "remove xattr %s of %s", w->xl_b + i, dst);
        return 0;
}

static bool same_special(walk *w, const char *src, const struct stat *s, const char *dst, const struct stat *d) {
        if ((s->st_mode & S_IFMT) != (d->st_mode & S_IFMT) || s->st_uid != d->st_uid || s->st_gid != d->st_gid)
                return false;
        if (S_ISLNK(s->st_mode)) {
                char a[PATH_MAX], b[PATH_MAX];
                ssize_t x = readlink(src, a, sizeof a), y = readlink(dst, b, sizeof b);
                if (x < 0 || y < 0 || x != y || memcmp(a, b, (size_t)x) != 0)
                        return false;
        } else if (s->st_mode != d->st_mode || s->st_rdev != d->st_rdev)
                return false;
        return same_time(&s->st_mtim, &d->st_mtim) && xattrs_equal(w, src, dst);
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

static int rec_dir(walk *w, const char *rel, int depth);

/* dst differs or is missing: a new file (or special) at TMP_NAME, renamed over it. Never
 * written in place: dst's inode may be shared with the current generation. */
static int replace(walk *w, const char *rel, const char *src, const char *dst, const char *dir, const struct stat *st,
                   bool dst_is_dir) {
        char tmp[PATH_MAX];
        if (snprintf(tmp, sizeof tmp, "%s/%s", dir, TMP_NAME) >= (int)sizeof tmp)
                return fail(w, -ENAMETOOLONG, "path %s", dir);
        if (dst_is_dir) {
                int r = gc_rm_rf(dst);
                if (r < 0)
                        return fail(w, r, "remove %s", dst);
        }
        (void)gc_rm_rf(tmp);
        int r;
        if (S_ISREG(st->st_mode)) {
                /* do_file links the current generation's file when that one equals the
                 * upper (changed in the interval before last), else copies */
                uint64_t files = w->st->files, bytes = w->st->bytes_total, vanished = w->st->vanished;
                r = do_file(w, rel, src, tmp, st);
                w->st->files = files;
                w->st->bytes_total = bytes;
                if (r == 0 && w->st->vanished != vanished) {
                        (void)unlink(dst);
                        return 0;
                }
        } else {
                uint64_t specials = w->st->specials;
                r = do_special(w, src, tmp, st);
                w->st->specials = specials;
        }
        if (r < 0)
                return r;
        if (rename(tmp, dst) < 0)
                return fail(w, -errno, "rename %s", dst);
        return 0;
}

static int rec_entry(walk *w, const char *rel, const char *dir, int depth) {
        char src[PATH_MAX], dst[PATH_MAX];
        if (join(src, sizeof src, w->src_root, rel) < 0 || join(dst, sizeof dst, w->dst_root, rel) < 0)
                return fail(w, -ENAMETOOLONG, "path %s", rel);
        struct stat s, d;
        if (lstat(src, &s) < 0) {
                if (errno == ENOENT) {
                        w->st->vanished++;
                        return gc_rm_rf(dst) < 0 ? fail(w, -EIO, "remove %s", dst) : 0;
                }
                return fail(w, -errno, "lstat %s", src);
        }
        bool have = lstat(dst, &d) == 0;
        if (S_ISDIR(s.st_mode)) {
                if (have && !S_ISDIR(d.st_mode)) {
                        if (unlink(dst) < 0)
                                return fail(w, -errno, "unlink %s", dst);
                        have = false;
                }
                if (!have && mkdir(dst, 0700) < 0)
                        return fail(w, -errno, "mkdir %s", dst);
                int r = rec_dir(w, rel, depth + 1);
                if (r < 0)
                        return r;
                w->st->dirs++;
                if (lchown(dst, s.st_uid, s.st_gid) < 0 || chmod(dst, s.st_mode & 07777) < 0)
                        return fail(w, -errno, "chown/chmod %s", dst);
                if ((r = sync_xattrs(w, src, dst)) < 0)
                        return r;
                struct timespec t[2] = {s.st_atim, s.st_mtim};
                if (utimensat(AT_FDCWD, dst, t, AT_SYMLINK_NOFOLLOW) < 0)
                        return fail(w, -errno, "set times of %s", dst);
                return 0;
        }
        bool dst_dir = have && S_ISDIR(d.st_mode);
        if (S_ISREG(s.st_mode)) {
                w->st->files++;
                w->st->bytes_total += (uint64_t)s.st_size;
                const char *first = s.st_nlink > 1 ? link_find(&w->links, s.st_dev, s.st_ino) : NULL;
                if (first) {
                        /* another name of a file already placed: the same inode here too */
                        char target[PATH_MAX], tmp[PATH_MAX];
                        struct stat t;
                        if (join(target, sizeof target, w->dst_root, first) < 0 ||
                            snprintf(tmp, sizeof tmp, "%s/%s", dir, TMP_NAME) >= (int)sizeof tmp)
                                return fail(w, -ENAMETOOLONG, "path %s", first);
                        if (have && lstat(target, &t) == 0 && t.st_ino == d.st_ino && t.st_dev == d.st_dev) {
                                w->st->linked++;
                                return 0;
                        }
                        if (dst_dir && gc_rm_rf(dst) < 0)
                                return fail(w, -EIO, "remove %s", dst);
                        (void)unlink(tmp);
                        if (link(target, tmp) < 0 || rename(tmp, dst) < 0)
                                return fail(w, -errno, "link %s to %s", dst, target);
                        w->st->linked++;
                        return 0;
                }
                bool same = have && S_ISREG(d.st_mode) && d.st_size == s.st_size && same_time(&d.st_mtim, &s.st_mtim) &&
                            d.st_mode == s.st_mode && d.st_uid == s.st_uid && d.st_gid == s.st_gid &&
                            ((s.st_ctim.tv_sec < w->settled_before && ++w->st->settled) || xattrs_equal(w, src, dst));
                int r = 0;
                if (same)
                        w->st->linked++;
                else
                        r = replace(w, rel, src, dst, dir, &s, dst_dir);
                /* (a copied one was added by do_file) */
                if (r == 0 && same && s.st_nlink > 1 && (r = link_add(&w->links, s.st_dev, s.st_ino, rel)) < 0)
                        return fail(w, r, "hard-link map");
                return r;
        }
        w->st->specials++;
        if (have && !dst_dir && same_special(w, src, &s, dst, &d))
                return 0;
        return replace(w, rel, src, dst, dir, &s, dst_dir);
}

static int rec_dir(walk *w, const char *rel, int depth) {
        if (depth > 256)
                return fail(w, -ELOOP, "tree deeper than 256 levels at %s", rel);
        char src[PATH_MAX], dst[PATH_MAX], sub[PATH_MAX];
        if (join(src, sizeof src, w->src_root, rel) < 0 || join(dst, sizeof dst, w->dst_root, rel) < 0)
                return fail(w, -ENAMETOOLONG, "path %s", rel);
        DIR *d = opendir(src);
        if (!d)
                return errno == ENOENT ? 0 : fail(w, -errno, "open directory %s", src);
        char **names = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        struct dirent *e;
        while ((errno = 0, e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                if (n == cap) {
                        cap = cap ? cap * 2 : 64;
                        char **v = realloc(names, cap * sizeof *v);
                        if (!v) {
                                r = fail(w, -ENOMEM, "names of %s", src);
                                break;
                        }
                        names = v;
                }
                if (!(names[n] = strdup(e->d_name))) {
                        r = fail(w, -ENOMEM, "names of %s", src);
                        break;
                }
                n++;
        }
        if (r == 0 && errno)
                r = fail(w, -errno, "read directory %s", src);
        closedir(d);
        if (names)
                qsort(names, n, sizeof *names, cmp_str);
        for (size_t i = 0; i < n && r == 0; i++) {
                if (w->cancel && w->cancel(w->userdata)) {
                        r = fail(w, -ECANCELED, "cancelled");
                        break;
                }
                int k = rel[0] ? snprintf(sub, sizeof sub, "%s/%s", rel, names[i])
                               : snprintf(sub, sizeof sub, "%s", names[i]);
                if (k < 0 || (size_t)k >= sizeof sub)
                        r = fail(w, -ENAMETOOLONG, "path under %s", rel);
                else
                        r = rec_entry(w, sub, dst, depth);
        }
        /* what the standby has and the upper has not any more */
        if (r == 0 && (d = opendir(dst))) {
                while ((e = readdir(d))) {
                        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                                continue;
                        const char *key = e->d_name;
                        if (names && bsearch(&key, names, n, sizeof *names, cmp_str))
                                continue;
                        if (snprintf(sub, sizeof sub, "%s/%s", dst, e->d_name) >= (int)sizeof sub)
                                continue;
                        int q = gc_rm_rf(sub);
                        if (q < 0) {
                                r = fail(w, q, "remove %s", sub);
                                break;
                        }
                }
                closedir(d);
        }
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
        return r;
}

static int alloc_bufs(walk *w) {
        w->buf = malloc(GC_COPY_BUF);
        w->xl_a = malloc(GC_XATTR_LIST);
        w->xl_b = malloc(GC_XATTR_LIST);
        w->xv_a = malloc(GC_XATTR_VAL);
        w->xv_b = malloc(GC_XATTR_VAL);
        return w->buf && w->xl_a && w->xl_b && w->xv_a && w->xv_b ? 0 : fail(w, -ENOMEM, "copy buffers");
}

static void free_bufs(walk *w) {
        free(w->buf);
        free(w->xl_a);
        free(w->xl_b);
        free(w->xv_a);
        free(w->xv_b);
        w->buf = w->xl_a = w->xl_b = w->xv_a = w->xv_b = NULL;
        link_free(&w->links);
}

/* The standby tree equal to the upper: its entries that differ replaced, its extra
 * ones removed, the root's metadata set. */
static int reconcile(walk *w) {
        struct stat st;
        if (lstat(w->src_root, &st) < 0)
                return fail(w, -errno, "lstat %s", w->src_root);
        if (!S_ISDIR(st.st_mode))
                return fail(w, -ENOTDIR, "%s", w->src_root);
        int r = alloc_bufs(w);
        if (r == 0)
                r = rec_dir(w, "", 0);
        if (r == 0 && (lchown(w->dst_root, st.st_uid, st.st_gid) < 0 || chmod(w->dst_root, st.st_mode & 07777) < 0))
                r = fail(w, -errno, "chown/chmod %s", w->dst_root);
        if (r == 0)
                r = sync_xattrs(w, w->src_root, w->dst_root);
        struct timespec t[2] = {st.st_atim, st.st_mtim};
        if (r == 0 && utimensat(AT_FDCWD, w->dst_root, t, 0) < 0)
                r = fail(w, -errno, "set times of %s", w->dst_root);
        free_bufs(w);
        return r;
}

/* ---- stamps: persist/stamp-<N> holds the wall-clock second at which the reconcile
 * that made gen-<N> started (less a margin for coarse timestamps), written once gen-<N>
 * was complete. Removed (and fsynced away) before gen-<N> is modified again. */

static int64_t now_coarse_s(void) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME_COARSE, &t);
        return (int64_t)t.tv_sec;
}

static int64_t stamp_read(const char *persist, uint64_t g) {
        char path[PATH_MAX], buf[32];
        if (snprintf(path, sizeof path, "%s/stamp-%llu", persist, (unsigned long long)g) >= (int)sizeof path)
                return 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return 0;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
                return 0;
        buf[n] = '\0';
        int64_t v = strtoll(buf, NULL, 10);
        /* a clock that went back since: trust nothing */
        return v > 0 && v <= now_coarse_s() ? v : 0;
}

static void stamp_remove(const char *persist, uint64_t g) {
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/stamp-%llu", persist, (unsigned long long)g) < (int)sizeof path)
                (void)unlink(path);
}

static void stamp_write(const char *persist, uint64_t g, int64_t t) {
        char path[PATH_MAX], tmp[PATH_MAX + 8], buf[32];
        if (snprintf(path, sizeof path, "%s/stamp-%llu", persist, (unsigned long long)g) >= (int)sizeof path ||
            snprintf(tmp, sizeof tmp, "%s.new", path) >= (int)sizeof tmp)
                return;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return;
        int n = snprintf(buf, sizeof buf, "%lld\n", (long long)t);
        bool ok = write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
        close(fd);
        if (!ok || rename(tmp, path) < 0)
                (void)unlink(tmp);
}

/* Stamps of generations that are neither current nor the standby go. */
static void stamps_prune(const char *persist, uint64_t cur, uint64_t standby) {
        DIR *d = opendir(persist);
        if (!d)
                return;
        struct dirent *e;
        char sub[PATH_MAX];
        while ((e = readdir(d))) {
                if (strncmp(e->d_name, "stamp-", 6) != 0)
                        continue;
                unsigned long long g = strtoull(e->d_name + 6, NULL, 10);
                if ((g == cur || g == standby) && !strchr(e->d_name, '.'))
                        continue;
                if (snprintf(sub, sizeof sub, "%s/%s", persist, e->d_name) < (int)sizeof sub)
                        (void)unlink(sub);
        }
        closedir(d);
}

int gc_gen_sync(const char *upper, const char *persist, gc_cancel_fn cancel, void *userdata, gc_stats *ret_stats,
                char *err, size_t err_len) {
        gc_stats st = {0};
        if (err && err_len)
                err[0] = '\0';
        walk w = {.src_root = upper, .cancel = cancel, .userdata = userdata, .st = &st, .err = err, .err_len = err_len};
        uint64_t cur = gc_gen_current(persist), standby = 0;
        /* leftovers of interrupted syncs go; one standby tree stays to be reused */
        int r = pick_standby(persist, cur, &standby);
        if (r < 0)
                return fail(&w, r, "clean up generations in %s", persist);
        char curp[PATH_MAX], next[PATH_MAX], old[PATH_MAX], link_new[PATH_MAX], link_cur[PATH_MAX], name[64];
        snprintf(name, sizeof name, "gen-%llu", (unsigned long long)(cur + 1));
        if (snprintf(curp, sizeof curp, "%s/gen-%llu", persist, (unsigned long long)cur) >= (int)sizeof curp ||
            snprintf(old, sizeof old, "%s/gen-%llu", persist, (unsigned long long)standby) >= (int)sizeof old ||
            snprintf(next, sizeof next, "%s/%s", persist, name) >= (int)sizeof next ||
            snprintf(link_new, sizeof link_new, "%s/current.new", persist) >= (int)sizeof link_new ||
            snprintf(link_cur, sizeof link_cur, "%s/current", persist) >= (int)sizeof link_cur)
                return fail(&w, -ENAMETOOLONG, "persist path %s", persist);
        stamps_prune(persist, cur, standby);
        int64_t settled = standby ? stamp_read(persist, standby) : 0;
        if (standby) {
                /* the standby is about to change: its stamp goes first, for good */
                stamp_remove(persist, standby);
                if ((r = fsync_path(persist)) < 0)
                        return fail(&w, r, "fsync %s", persist);
        }
        w.settled_before = settled;
        int64_t started = now_coarse_s() - 2; /* coarse ctime may lag the clock by a tick */
        if (standby && standby != cur + 1 && rename(old, next) < 0)
                return fail(&w, -errno, "rename %s", old);
        if (!standby) {
                /* no standby yet: a clone of the current tree by hard links (once), or an
                 * empty one for the first generation */
                if (mkdir(next, 0700) < 0)
                        return fail(&w, -errno, "mkdir %s", next);
                if (cur) {
                        gc_stats clone = {0};
                        walk c = {.src_root = curp, .prev_root = curp, .dst_root = next, .cancel = cancel,
                                  .userdata = userdata, .st = &clone, .err = err, .err_len = err_len};
                        if ((r = copy_tree(&c)) < 0)
                                return r; /* the partial clone is the next sync's standby */
                }
        }
        w.dst_root = next;
        w.prev_root = cur ? curp : NULL;
        if ((r = reconcile(&w)) < 0)
                goto out;
        /* everything of the new generation on disk before it becomes current */
        int fd = open(next, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || syncfs(fd) < 0) {
                r = fail(&w, -errno, "syncfs %s", next);
                if (fd >= 0)
                        close(fd);
                goto out;
        }
        close(fd);
        (void)unlink(link_new);
        if (symlink(name, link_new) < 0) {
                r = fail(&w, -errno, "symlink %s", link_new);
                goto out;
        }
        if (rename(link_new, link_cur) < 0) {
                r = fail(&w, -errno, "rename %s", link_new);
                (void)unlink(link_new);
                goto out;
        }
        if ((r = fsync_path(persist)) < 0) {
                r = fail(&w, r, "fsync %s", persist); /* switched, maybe not durable yet */
                goto out;
        }
        st.gen = cur + 1;
        stamp_write(persist, cur + 1, started);
        /* the previous generation stays: the standby tree of the next sync. After the
         * first one there is none: a hard-link clone now, off the next sync's path (a
         * partial clone is fine, the next sync reconciles whatever it finds) */
        if (!cur) {
                char second[PATH_MAX];
                if (snprintf(second, sizeof second, "%s/gen-2", persist) < (int)sizeof second &&
                    mkdir(second, 0700) == 0) {
                        gc_stats clone = {0};
                        char cerr[64];
                        walk c = {.src_root = next, .prev_root = next, .dst_root = second, .cancel = cancel,
                                  .userdata = userdata, .st = &clone, .err = cerr, .err_len = sizeof cerr};
                        cerr[0] = '\0';
                        if (copy_tree(&c) == 0)
                                stamp_write(persist, 2, started); /* gen-2 = gen-1, complete */
                }
        }
out:
        if (ret_stats)
                *ret_stats = st;
        return r;
}

int gc_gen_restore(const char *persist, const char *upper, gc_cancel_fn cancel, void *userdata, gc_stats *ret_stats,
                   char *err, size_t err_len) {
        gc_stats st = {0};
        if (err && err_len)
                err[0] = '\0';
        walk w = {.dst_root = upper, .cancel = cancel, .userdata = userdata, .st = &st, .err = err, .err_len = err_len};
        uint64_t cur = gc_gen_current(persist);
        if (!cur)
                return -ENOENT;
        char src[PATH_MAX];
        if (snprintf(src, sizeof src, "%s/gen-%llu", persist, (unsigned long long)cur) >= (int)sizeof src)
                return fail(&w, -ENAMETOOLONG, "persist path %s", persist);
        w.src_root = src;
        int r = copy_tree(&w);
        st.gen = cur;
        if (ret_stats)
                *ret_stats = st;
        return r;
}
