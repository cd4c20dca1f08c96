/* loader.h — finding and opening plugin `.so` files.
 *
 * The file is opened once and dlopen'ed through /proc/<pid>/fd/N, so the inode that
 * was checked is the one that runs and a name can never bring back an old object: a
 * rebuilt file renamed over the old one loads as new code while the old stays loaded.
 * The descriptor's ABI version and size are checked before any other field is read.
 * With check_perms the file and every directory above it must pass trust.c's rules
 * (owned by root, or by agentd's euid when it is not root; not writable by group or
 * others; see trust.h). /proc must be mounted. */
#ifndef CORE_LOADER_H
#define CORE_LOADER_H

#include <stdbool.h>
#include <stddef.h>

#include <organism/plugin.h>

typedef struct plugin_so {
        void *dl;
        const org_plugin *desc;
        char *path;          /* the file as configured/found */
        int fd;              /* the file, open while loaded: its /proc name was dlopen'ed */
        unsigned long long dev, ino;
        unsigned holds;      /* worker jobs still running code of this file (loader_hold) */
        bool closing;        /* loader_close came while held: the last release closes */
} plugin_so;

/* A hook of the descriptor, or NULL when the plugin's descriptor is older than the
 * field (struct_size too small) or leaves it unset. */
#define PLUGIN_HOOK(so, f)                                                                   \
        ((so)->desc->struct_size >= offsetof(org_plugin, f) + sizeof((so)->desc->f) ? (so)->desc->f : NULL)

/* Looks for <name>.so in dirs (NULL-terminated). */
int loader_find(char *const *dirs, const char *name, char **ret_path);

/* Checks path by trust.c's rules (trust_check_file). On refusal returns -EPERM and a
 * malloc'd reason. */
int loader_check_perms(const char *path, char **ret_reason);

/* Opens path. On failure returns a negative errno and, when ret_error is not NULL, a
 * malloc'd human reason ("ABI version 2, agentd speaks 1", dlerror() text, ...). */
int loader_open(const char *path, bool check_perms, plugin_so **ret, char **ret_error);
void loader_close(plugin_so *so); /* accepts NULL */
/* Keeps so mapped past loader_close until the matching release: a worker job of a
 * retired generation may still run its code. Loop thread only. */
void loader_hold(plugin_so *so);
void loader_release(plugin_so *so);

#endif
