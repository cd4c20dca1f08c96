/* util.h — small helpers every core file uses: cleanup attributes, string tests,
 * allocation shorthands. Nothing here allocates behind the caller's back. */
#ifndef CORE_UTIL_H
#define CORE_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define USEC_PER_MSEC 1000ULL
#define USEC_PER_SEC 1000000ULL
#define MSEC_PER_SEC 1000ULL

static inline bool streq(const char *a, const char *b) { return strcmp(a, b) == 0; }
static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}
static inline bool startswith(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}
static inline bool isempty(const char *s) { return !s || !*s; }

static inline void freep(void *p) { free(*(void **)p); }
static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
static inline void closep(int *fd) {
        if (*fd >= 0)
                close(*fd);
}
#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_fclose_ _cleanup_(fclosep)
#define _cleanup_close_ _cleanup_(closep)
#define _unused_ __attribute__((unused))

/* Takes ownership out of a cleanup variable: p = TAKE_PTR(q). */
#define TAKE_PTR(p)                            \
        ({                                     \
                __typeof__(p) _t = (p);        \
                (p) = NULL;                    \
                _t;                            \
        })
#define TAKE_FD(fd)                            \
        ({                                     \
                int _t = (fd);                 \
                (fd) = -1;                     \
                _t;                            \
        })

#define new0(t, n) ((t *)calloc((n), sizeof(t)))

/* Removes item from a singly linked list threaded through `next` (no-op if absent). */
#define LIST_UNLINK(head, item)                                                          \
        do {                                                                             \
                for (__typeof__(item) *_p = &(head); *_p; _p = &(*_p)->next)             \
                        if (*_p == (item)) {                                             \
                                *_p = (item)->next;                                      \
                                break;                                                   \
                        }                                                                \
        } while (0)

/* Frees a NULL-terminated string vector and the vector. */
static inline void strv_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}
static inline void strv_freep(char ***v) { strv_free(*v); }
#define _cleanup_strv_free_ _cleanup_(strv_freep)
static inline size_t strv_length(char *const *v) {
        size_t n = 0;
        while (v && v[n])
                n++;
        return n;
}

/* Monotonic and realtime clocks in microseconds. */
uint64_t now_monotonic_us(void);
uint64_t now_realtime_us(void);

/* "2026-11-28T23:41:06.123Z" into buf (>= 32 bytes). */
void format_rfc3339(uint64_t realtime_us, char *buf, size_t size);

/* Writes data to path atomically: a temporary file in the same directory, then
 * rename, so readers see the old or the new content, whole. durable: fsync first, so
 * a power loss cannot leave an empty file either (it costs a disk flush: not for files
 * rewritten every few seconds from the loop, like the metrics textfile). mode applies
 * to the new file. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, bool durable);

/* Reads a whole file into a malloc'd NUL-terminated buffer. */
int read_full_file(const char *path, char **ret, size_t *ret_len);
/* The same from an open descriptor (read to its end, not closed). */
int read_full_fd(int fd, char **ret, size_t *ret_len);

/* Valid names for agents and instances: [A-Za-z0-9_-], 1..64 characters. */
bool name_is_valid(const char *s);

/* Escaping of strings that came from a peer, so they cannot forge output: every byte
 * that is not part of valid UTF-8 becomes \xNN; with ESCAPE_CONTROLS so do control
 * characters (C0 including newline, DEL, and the C1 range U+0080..U+009F, which
 * terminals obey too); ESCAPE_KEEP_NEWLINE lets '\n' through. */
#define ESCAPE_CONTROLS 1u
#define ESCAPE_KEEP_NEWLINE 2u
/* len bytes of s into buf (size >= 1; always NUL-terminated; cut before a character
 * that does not fit). Returns the length written. */
size_t str_escape(const char *s, size_t len, unsigned flags, char *buf, size_t size);
/* The same into a malloc'd string (never cut); NULL when out of memory. */
char *str_escape_alloc(const char *s, size_t len, unsigned flags);
/* true when len bytes of s are valid UTF-8 (what JSON strings must be). */
bool utf8_is_valid(const char *s, size_t len);

#endif
