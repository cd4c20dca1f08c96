/* release.c — the deploy plugin's file system: release names, atomic link switches
 * (Capistrano's symlink-then-rename, plus the fsync of the directory that makes the
 * rename durable), atomic files, and recursive removal and ownership of a release
 * tree. Nothing here follows a symlink out of the tree it works on. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "deploy.h"

void deploy_release_name(uint64_t now_us, const char *sha, char *ret, size_t len) {
        time_t t = (time_t)(now_us / 1000000);
        struct tm tm;
        gmtime_r(&t, &tm);
        char stamp[32];
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
        snprintf(ret, len, "%s-%.8s", stamp, sha);
}

int deploy_fsync_dir(const char *path) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = fsync(fd) < 0 ? -errno : 0;
        close(fd);
        return r;
}

int deploy_link_switch(const char *dir, const char *link, const char *target) {
        char tmp[DEPLOY_PATH_MAX], final[DEPLOY_PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, link);
        snprintf(final, sizeof final, "%s/%s", dir, link);
        (void)unlink(tmp); /* a leftover of a switch killed half-way */
        if (symlink(target, tmp) < 0)
                return -errno;
        if (rename(tmp, final) < 0) {
                int r = -errno;
                (void)unlink(tmp);
                return r;
        }
        return deploy_fsync_dir(dir);
}

int deploy_link_read(const char *dir, const char *link, char *ret, size_t len) {
        char path[DEPLOY_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, link);
        ssize_t n = readlink(path, ret, len - 1);
        if (n < 0)
                return -errno;
        ret[n] = '\0';
        return 0;
}

int deploy_write_atomic(const char *path, const char *data, size_t len) {
        char tmp[DEPLOY_PATH_MAX + 8], dir[DEPLOY_PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        int r = 0;
        for (size_t off = 0; off < len && r == 0;) {
                ssize_t n = write(fd, data + off, len - off);
                if (n < 0 && errno != EINTR)
                        r = -errno;
                else if (n > 0)
                        off += (size_t)n;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        close(fd);
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void)unlink(tmp);
                return r;
        }
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash)
                *slash = '\0';
        return deploy_fsync_dir(slash ? dir : ".");
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        if (flag == FTW_DP)
                return rmdir(path) < 0 && errno != ENOENT ? -1 : 0;
        return unlink(path) < 0 && errno != ENOENT ? -1 : 0;
}

int deploy_rm_rf(const char *path) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISDIR(st.st_mode))
                return unlink(path) < 0 ? -errno : 0;
        return nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 ? -errno : 0;
}

static uid_t chown_uid;
static gid_t chown_gid;

static int chown_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return lchown(path, chown_uid, chown_gid) < 0 ? -1 : 0;
}

/* nftw has no payload: the ids sit in statics, so one caller at a time (the
 * plugin's run is serialised per instance; two instances chowning at once would race,
 * hence the lock) */
static pthread_mutex_t chown_lock = PTHREAD_MUTEX_INITIALIZER;

int deploy_chown_tree(const char *path, uid_t uid, gid_t gid) {
        pthread_mutex_lock(&chown_lock);
        chown_uid = uid;
        chown_gid = gid;
        int r = nftw(path, chown_one, 32, FTW_PHYS | FTW_MOUNT) < 0 ? -errno : 0;
        pthread_mutex_unlock(&chown_lock);
        return r;
}

int deploy_mkdir_p(const char *path, mode_t mode) {
        char buf[DEPLOY_PATH_MAX];
        snprintf(buf, sizeof buf, "%s", path);
        for (char *p = buf + 1; *p; p++)
                if (*p == '/') {
                        *p = '\0';
                        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                                return -errno;
                        *p = '/';
                }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int deploy_tail(const char *path, unsigned lines, size_t max, char **ret) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0) {
                close(fd);
                return -errno;
        }
        size_t size = (size_t)st.st_size, n = size < max ? size : max;
        char *buf = malloc(n + 1);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        ssize_t got = pread(fd, buf, n, (off_t)(size - n));
        close(fd);
        if (got < 0) {
                free(buf);
                return -errno;
        }
        buf[got] = '\0';
        size_t end = (size_t)got;
        if (end > 0 && buf[end - 1] == '\n')
                end--;
        size_t start = end;
        for (unsigned seen = 0; start > 0; start--)
                if (buf[start - 1] == '\n' && ++seen == lines)
                        break;
        memmove(buf, buf + start, (size_t)got - start + 1);
        *ret = buf;
        return 0;
}
