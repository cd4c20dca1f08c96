/* isolate_proto.c — encoding and decoding of the frames exchanged with the child of an
 * isolated instance (see isolate_proto.h), and the buffers they are batched in. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "isolate_proto.h"
#include "util.h"

const char *iso_hook_name(unsigned kind) {
        static const char *const names[] = {
                [ISO_HOOK_NONE] = "none",
                [ISO_HOOK_INIT] = "init",
                [ISO_HOOK_TICK] = "tick",
                [ISO_HOOK_HANDLE] = "handle",
                [ISO_HOOK_CALL] = "call",
                [ISO_HOOK_VERIFY] = "verify",
                [ISO_HOOK_SAVE] = "save_state",
                [ISO_HOOK_RESTORE] = "restore_state",
                [ISO_HOOK_FINI] = "fini",
                [ISO_HOOK_TIMER] = "timer",
                [ISO_HOOK_IO] = "io",
                [ISO_HOOK_REPLY] = "reply",
                [ISO_HOOK_EXEC_DONE] = "exec_done",
                [ISO_HOOK_HANDLE_DURABLE] = "handle",
        };
        return kind < ELEMENTSOF(names) && names[kind] ? names[kind] : "?";
}

void iso_buf_done(iso_buf *b) {
        free(b->data);
        *b = (iso_buf){0};
}

int iso_buf_reserve(iso_buf *b, size_t extra) {
        if (b->len + extra <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + extra)
                cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p) {
                b->oom = true;
                return -ENOMEM;
        }
        b->data = p;
        b->cap = cap;
        return 0;
}

void iso_buf_compact(iso_buf *b) {
        if (b->off == 0)
                return;
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
}

static void put_raw(iso_buf *b, const void *p, size_t n) {
        if (b->oom || iso_buf_reserve(b, n) < 0)
                return;
        memcpy(b->data + b->len, p, n);
        b->len += n;
}

size_t iso_put_begin(iso_buf *b, uint32_t type) {
        size_t at = b->len;
        b->oom = false;
        uint32_t h[2] = {0, type};
        put_raw(b, h, sizeof h);
        return at;
}

int iso_put_end(iso_buf *b, size_t at) {
        size_t n = b->len - at - 8;
        if (b->oom || n > ISO_FRAME_MAX) {
                b->len = at;
                b->oom = false;
                return n > ISO_FRAME_MAX ? -E2BIG : -ENOMEM;
        }
        uint32_t len = (uint32_t)n;
        memcpy(b->data + at, &len, sizeof len);
        return 0;
}

void iso_put_u64(iso_buf *b, uint64_t v) {
        put_raw(b, &v, sizeof v);
}

void iso_put_bytes(iso_buf *b, const void *p, size_t len) {
        if (!p) {
                uint32_t n = ISO_NULL_LEN;
                put_raw(b, &n, sizeof n);
                return;
        }
        if (len >= ISO_FRAME_MAX) {
                b->oom = true; /* iso_put_end refuses the frame */
                return;
        }
        uint32_t n = (uint32_t)len;
        put_raw(b, &n, sizeof n);
        put_raw(b, p, len);
        put_raw(b, "", 1);
}

void iso_put_str(iso_buf *b, const char *s) {
        iso_put_bytes(b, s, s ? strlen(s) : 0);
}

void iso_put_msg(iso_buf *b, const org_msg *m) {
        size_t nh = MIN(m->n_headers, (size_t)ISO_HEADERS_MAX);
        iso_put_str(b, m->subject);
        iso_put_str(b, m->reply);
        iso_put_str(b, m->origin);
        iso_put_u64(b, nh);
        for (size_t i = 0; i < nh; i++) {
                iso_put_str(b, m->headers[i].key);
                iso_put_str(b, m->headers[i].value);
        }
        iso_put_bytes(b, m->data ? m->data : "", m->len);
        iso_put_u64(b, m->ack_token);
        iso_put_u64(b, m->delivery_count);
}

void iso_put_strv(iso_buf *b, const char *const *v) {
        size_t n = 0;
        while (v && v[n])
                n++;
        iso_put_u64(b, v ? n + 1 : 0);
        for (size_t i = 0; i < n; i++)
                iso_put_str(b, v[i]);
}

uint64_t iso_get_u64(iso_rd *r) {
        uint64_t v = 0;
        if (r->bad || (size_t)(r->end - r->p) < sizeof v) {
                r->bad = true;
                return 0;
        }
        memcpy(&v, r->p, sizeof v);
        r->p += sizeof v;
        return v;
}

const char *iso_get_bytes(iso_rd *r, size_t *ret_len) {
        uint32_t n;
        if (ret_len)
                *ret_len = 0;
        if (r->bad || (size_t)(r->end - r->p) < sizeof n) {
                r->bad = true;
                return NULL;
        }
        memcpy(&n, r->p, sizeof n);
        r->p += sizeof n;
        if (n == ISO_NULL_LEN)
                return NULL;
        if ((size_t)(r->end - r->p) < (size_t)n + 1 || r->p[n] != '\0') {
                r->bad = true;
                return NULL;
        }
        const char *s = (const char *)r->p;
        r->p += (size_t)n + 1;
        if (ret_len)
                *ret_len = n;
        return s;
}

const char *iso_get_str(iso_rd *r) {
        size_t n;
        const char *s = iso_get_bytes(r, &n);
        if (s && strlen(s) != n) { /* an embedded NUL would cut the string */
                r->bad = true;
                return NULL;
        }
        return s;
}

void iso_get_msg(iso_rd *r, org_msg *m, org_header *hdrs) {
        *m = (org_msg){0};
        m->subject = iso_get_str(r);
        m->reply = iso_get_str(r);
        m->origin = iso_get_str(r);
        uint64_t nh = iso_get_u64(r);
        if (nh > ISO_HEADERS_MAX) {
                r->bad = true;
                return;
        }
        for (uint64_t i = 0; i < nh; i++) {
                hdrs[i].key = iso_get_str(r);
                hdrs[i].value = iso_get_str(r);
                if (!hdrs[i].key || !hdrs[i].value)
                        r->bad = true;
        }
        m->headers = hdrs;
        m->n_headers = (size_t)nh;
        m->data = iso_get_bytes(r, &m->len);
        m->ack_token = iso_get_u64(r);
        m->delivery_count = iso_get_u64(r);
        if (!m->subject || !m->data)
                r->bad = true;
}

const char **iso_get_strv(iso_rd *r, bool *ret_null) {
        uint64_t n = iso_get_u64(r);
        *ret_null = n == 0;
        if (r->bad || n == 0)
                return NULL;
        if (n > 4096) {
                r->bad = true;
                return NULL;
        }
        const char **v = new0(const char *, n);
        if (!v) {
                r->bad = true;
                return NULL;
        }
        for (uint64_t i = 0; i + 1 < n; i++)
                if (!(v[i] = iso_get_str(r)))
                        r->bad = true;
        if (r->bad) {
                free(v);
                return NULL;
        }
        return v;
}

int iso_next_frame(iso_buf *b, uint32_t *ret_type, iso_rd *ret_payload) {
        size_t avail = b->len - b->off;
        uint32_t h[2];
        if (avail < sizeof h)
                return 0;
        memcpy(h, b->data + b->off, sizeof h);
        if (h[0] > ISO_FRAME_MAX)
                return -EBADMSG;
        if (avail < sizeof h + h[0])
                return 0;
        const uint8_t *p = b->data + b->off + sizeof h;
        *ret_type = h[1];
        *ret_payload = (iso_rd){.p = p, .end = p + h[0]};
        b->off += sizeof h + h[0];
        return 1;
}

int iso_write_all(int fd, iso_buf *b, int timeout_ms) {
        uint64_t deadline = now_monotonic_us() + (uint64_t)timeout_ms * USEC_PER_MSEC;
        while (b->off < b->len) {
                ssize_t n = write(fd, b->data + b->off, b->len - b->off);
                if (n > 0) {
                        b->off += (size_t)n;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno != EAGAIN)
                        return -errno;
                uint64_t now = now_monotonic_us();
                if (now >= deadline)
                        return -ETIMEDOUT;
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                if (poll(&p, 1, (int)((deadline - now) / USEC_PER_MSEC) + 1) < 0 && errno != EINTR)
                        return -errno;
        }
        b->len = b->off = 0;
        return 0;
}
