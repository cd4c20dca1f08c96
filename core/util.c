/* util.c — clocks, RFC 3339 time stamps, atomic file writes and whole-file reads used
 * across the core. */
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#include "util.h"

uint64_t now_monotonic_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t now_realtime_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

void format_rfc3339(uint64_t realtime_us, char *buf, size_t size) {
        time_t t = (time_t)(realtime_us / USEC_PER_SEC);
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)((realtime_us % USEC_PER_SEC) / 1000));
}

int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, bool durable) {
        size_t plen = strlen(path);
        _cleanup_free_ char *tmp = malloc(plen + 16);
        if (!tmp)
                return -ENOMEM;
        snprintf(tmp, plen + 16, "%s.tmpXXXXXX", path);
        _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = 0;
        const char *p = data;
        size_t left = len;
        while (left > 0) {
                ssize_t n = write(fd, p, left);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto fail;
                }
                p += n;
                left -= (size_t)n;
        }
        if (fchmod(fd, mode) < 0 || (durable && fsync(fd) < 0)) {
                r = -errno;
                goto fail;
        }
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        return 0;
fail:
        unlink(tmp);
        return r;
}

int read_full_file(const char *path, char **ret, size_t *ret_len) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        return read_full_fd(fd, ret, ret_len);
}

int read_full_fd(int fd, char **ret, size_t *ret_len) {
        size_t cap = 4096, len = 0;
        _cleanup_free_ char *buf = malloc(cap);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (cap - len < 2) {
                        if (cap > (64u << 20))
                                return -EFBIG;
                        char *nb = realloc(buf, cap * 2);
                        if (!nb)
                                return -ENOMEM;
                        buf = nb;
                        cap *= 2;
                }
                ssize_t n = read(fd, buf + len, cap - len - 1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = '\0';
        if (ret_len)
                *ret_len = len;
        *ret = TAKE_PTR(buf);
        return 0;
}

bool name_is_valid(const char *s) {
        size_t n = 0;
        if (!s)
                return false;
        for (; s[n]; n++) {
                char c = s[n];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '-'))
                        return false;
        }
        return n > 0 && n <= 64;
}
