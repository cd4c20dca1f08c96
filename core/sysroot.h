/* sysroot.h — every access to /proc and /sys goes through here, prefixed by the
 * agent's sysroot so the whole daemon runs against a fixture tree in tests. Writes read
 * first and change nothing when the value is already there. */
#ifndef CORE_SYSROOT_H
#define CORE_SYSROOT_H

#include <stdbool.h>
#include <stddef.h>

/* root "/" or NULL means the real system. path must be absolute. ret is malloc'd. */
int sysroot_path(const char *root, const char *path, char **ret);
int sysroot_read(const char *root, const char *path, char **ret_data, size_t *ret_len);
/* Compares the current content (trailing white space ignored) with value; when they
 * differ and !dry_run writes value (with a newline if it has none). *ret_changed says
 * whether they differed; *ret_before (may be NULL) receives the old content, trimmed. */
int sysroot_write(const char *root, const char *path, const char *value, bool dry_run, bool *ret_changed,
                  char **ret_before);

#endif
