/* sysroot.c — the single door to /proc and /sys. Paths are joined under the configured
 * root (a fixture tree in tests) after refusing relative paths and ".." so nothing
 * escapes it. Writes compare first and touch nothing when the value is already there;
 * a real write is one write() on an O_TRUNC descriptor, because these are kernel
 * attribute files: a temporary file and rename() would replace the attribute instead of
 * setting it, and the kernel takes a value per write call. */
#include <ctype.h>
#include <fcntl.h>

#include "sysroot.h"
#include "util.h"

/* True when path has a ".." component. */
static bool has_dotdot(const char *path) {
        for (const char *p = path; *p;) {
                while (*p == '/')
                        p++;
                const char *end = strchrnul(p, '/');
                if (end - p == 2 && p[0] == '.' && p[1] == '.')
                        return true;
                p = end;
        }
        return false;
}

int sysroot_path(const char *root, const char *path, char **ret) {
        if (!path || path[0] != '/' || has_dotdot(path) || !ret)
                return -EINVAL;
        if (!root || streq(root, "/")) {
                char *c = strdup(path);
                if (!c)
                        return -ENOMEM;
                *ret = c;
                return 0;
        }
        /* A relative root would depend on the daemon's cwd. */
        if (root[0] != '/' || has_dotdot(root))
                return -EINVAL;
        size_t rlen = strlen(root);
        while (rlen > 1 && root[rlen - 1] == '/')
                rlen--;
        size_t plen = strlen(path);
        char *j = malloc(rlen + plen + 1);
        if (!j)
                return -ENOMEM;
        memcpy(j, root, rlen);
        memcpy(j + rlen, path, plen + 1);
        *ret = j;
        return 0;
}

int sysroot_read(const char *root, const char *path, char **ret_data, size_t *ret_len) {
        if (!ret_data)
                return -EINVAL;
        _cleanup_free_ char *full = NULL;
        int r = sysroot_path(root, path, &full);
        if (r < 0)
                return r;
        return read_full_file(full, ret_data, ret_len);
}

static size_t trimmed_len(const char *s, size_t len) {
        while (len > 0 && isspace((unsigned char)s[len - 1]))
                len--;
        return len;
}

/* One write() of value plus a newline when it has none: the kernel parses each write
 * as one value, so splitting it could set a truncated value. */
static int write_once(const char *path, const char *value) {
        size_t vlen = strlen(value);
        bool nl = vlen == 0 || value[vlen - 1] != '\n';
        _cleanup_free_ char *buf = malloc(vlen + 2);
        if (!buf)
                return -ENOMEM;
        memcpy(buf, value, vlen);
        if (nl)
                buf[vlen++] = '\n';
        buf[vlen] = '\0';

        int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        ssize_t n = write(fd, buf, vlen);
        int r = n < 0 ? -errno : (size_t)n != vlen ? -EIO : 0;
        /* Some attributes report their error only when the file is closed. */
        if (close(fd) < 0 && r == 0 && errno != EINTR)
                r = -errno;
        return r;
}

int sysroot_write(const char *root, const char *path, const char *value, bool dry_run, bool *ret_changed,
                  char **ret_before) {
        if (!value)
                return -EINVAL;
        _cleanup_free_ char *full = NULL;
        int r = sysroot_path(root, path, &full);
        if (r < 0)
                return r;

        _cleanup_free_ char *cur = NULL;
        size_t cur_len = 0;
        r = read_full_file(full, &cur, &cur_len);
        if (r == -ENOENT || r == -ENOTDIR || r == -EISDIR)
                return r;
        /* Write-only attributes (no show method) cannot be read: then the value is
         * unknown, and we write. */
        bool known = r >= 0;
        bool changed = true;
        if (known) {
                size_t a = trimmed_len(cur, cur_len), b = trimmed_len(value, strlen(value));
                changed = a != b || memcmp(cur, value, a) != 0;
                cur[a] = '\0';
        }

        if (changed && !dry_run) {
                r = write_once(full, value);
                if (r < 0)
                        return r;
        }
        if (ret_changed)
                *ret_changed = changed;
        if (ret_before)
                *ret_before = known ? TAKE_PTR(cur) : NULL;
        return 0;
}
