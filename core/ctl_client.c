/* ctl_client.c — a blocking client of the control socket for agentctl: one
 * connection, newline-framed JSON, poll() time-outs. */
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "control.h"
#include "ctl_client.h"
#include "util.h"

struct ctl_client {
        int fd;
        json_t *hello;
        int64_t next_id;
        char *buf;
        size_t len, cap;
};

void ctl_client_free(ctl_client *c) {
        if (!c)
                return;
        if (c->fd >= 0)
                close(c->fd);
        json_decref(c->hello);
        free(c->buf);
        free(c);
}

json_t *ctl_client_hello(ctl_client *c) { return c->hello; }

int ctl_client_read(ctl_client *c, uint64_t timeout_ms, json_t **ret) {
        uint64_t deadline = timeout_ms ? now_monotonic_us() + timeout_ms * USEC_PER_MSEC : 0;
        for (;;) {
                char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
                if (nl) {
                        size_t l = (size_t)(nl - c->buf);
                        json_error_t e;
                        json_t *o = json_loadb(c->buf, l, 0, &e);
                        memmove(c->buf, nl + 1, c->len - l - 1);
                        c->len -= l + 1;
                        if (!o)
                                return -EBADMSG;
                        *ret = o;
                        return 0;
                }
                int wait = -1;
                if (deadline) {
                        uint64_t now = now_monotonic_us();
                        if (now >= deadline)
                                return -ETIMEDOUT;
                        wait = (int)((deadline - now + 999) / 1000);
                }
                struct pollfd p = {.fd = c->fd, .events = POLLIN};
                int r = poll(&p, 1, wait);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        return -ETIMEDOUT;
                if (c->cap - c->len < 65536) {
                        size_t ncap = c->cap ? c->cap * 2 : 131072;
                        char *n = realloc(c->buf, ncap);
                        if (!n)
                                return -ENOMEM;
                        c->buf = n;
                        c->cap = ncap;
                }
                ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -ECONNRESET;
                c->len += (size_t)n;
        }
}

int ctl_client_connect(const char *path, uint64_t timeout_ms, ctl_client **ret, char **ret_error) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof sa.sun_path)
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        ctl_client *c = new0(ctl_client, 1);
        if (!c)
                return -ENOMEM;
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                int r = -errno;
                ctl_client_free(c);
                return r;
        }
        json_t *hello = NULL;
        int r = ctl_client_read(c, timeout_ms, &hello);
        if (r < 0) {
                ctl_client_free(c);
                return r;
        }
        if (!json_object_get(hello, "hello")) {
                const char *err = json_string_value(json_object_get(hello, "error"));
                if (ret_error)
                        *ret_error = strdup(err ? err : "unexpected greeting");
                json_decref(hello);
                ctl_client_free(c);
                return -EACCES;
        }
        c->hello = hello;
        *ret = c;
        return 0;
}

int ctl_client_send(ctl_client *c, const char *verb, json_t *args) {
        json_t *o = json_pack("{s:I, s:s, s:o, s:i}", "id", (json_int_t)++c->next_id, "verb", verb, "args",
                              args ? args : json_object(), "protocol", CTL_PROTOCOL);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        size_t len = strlen(text);
        char *line = realloc(text, len + 2);
        if (!line) {
                free(text);
                return -ENOMEM;
        }
        line[len] = '\n';
        line[len + 1] = '\0';
        int r = 0;
        for (size_t off = 0; off < len + 1;) {
                ssize_t n = send(c->fd, line + off, len + 1 - off, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                off += (size_t)n;
        }
        free(line);
        return r;
}
