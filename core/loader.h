/* loader.h — finding and opening plugin `.so` files.
 *
 * The descriptor's ABI version and size are checked before any other field is read.
 * Every open goes through a uniquely named symlink in a private scratch directory:
 * glibc returns an already loaded object when dlopen is given the same name again, so
 * without a fresh name a reload would get the old code back. When agentd runs as root
 * it refuses a plugin file, or the directory holding it, that is writable by group or
 * others or not owned by root. */
#ifndef CORE_LOADER_H
#define CORE_LOADER_H

#include <stdbool.h>
#include <stddef.h>

#include <organism/plugin.h>

typedef struct plugin_so {
        void *dl;
        const org_plugin *desc;
        char *path;          /* the file as configured/found */
        char *link;          /* the scratch symlink that was dlopen'ed */
        unsigned long long dev, ino;
} plugin_so;

/* A hook of the descriptor, or NULL when the plugin's descriptor is older than the
 * field (struct_size too small) or leaves it unset. */
#define PLUGIN_HOOK(so, f)                                                                   \
        ((so)->desc->struct_size >= offsetof(org_plugin, f) + sizeof((so)->desc->f) ? (so)->desc->f : NULL)

/* Creates the scratch directory (mode 0700) under base (NULL: $TMPDIR or /tmp). */
int loader_init(const char *base);
void loader_done(void);

/* Looks for <name>.so in dirs (NULL-terminated). */
int loader_find(char *const *dirs, const char *name, char **ret_path);

/* Checks ownership and modes of path and its directory (only meaningful as root).
 * On refusal returns -EPERM and a malloc'd reason. */
int loader_check_perms(const char *path, char **ret_reason);

/* Opens path. On failure returns a negative errno and, when ret_error is not NULL, a
 * malloc'd human reason ("ABI version 2, agentd speaks 1", dlerror() text, ...). */
int loader_open(const char *path, bool check_perms, plugin_so **ret, char **ret_error);
void loader_close(plugin_so *so); /* accepts NULL */

#endif
