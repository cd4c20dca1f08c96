/* gen.h — crash-safe generations of an overlay upper on a persistent filesystem.
 *
 * A layer's persist directory holds complete copies of the upper, gen-<N>, and a
 * symlink `current` naming the one that counts; the one before it is kept as the
 * standby tree. A sync turns the standby into gen-<N+1>: it walks the upper and
 * changes only what differs in the standby (a file that differs is replaced by a new
 * inode renamed over it: hard-linked from gen-<N> when that one already equals the
 * upper, copied otherwise; nothing is written in place, so inodes shared between the
 * two trees never change), removes what the upper no longer has, syncfs(2)s the
 * filesystem, then renames a new symlink over `current` (atomic). So a sync costs one
 * lstat per entry plus the bytes changed since the last sync, and a crash at any
 * instant leaves `current` on a complete generation (the standby may be half-updated:
 * the next sync carries on from it). Overlay metadata is kept: whiteouts (0:0
 * character devices) and other special files, every xattr (trusted.overlay.opaque /
 * redirect / metacopy / origin ...), hard links within the tree, modes, owners, times,
 * symlinks. Restore copies `current` into an empty upper. Nothing here touches the
 * host table: these functions run on a worker thread. */
#ifndef GPUCACHE_GEN_H
#define GPUCACHE_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gc_stats {
        uint64_t files;         /* regular files in the tree */
        uint64_t dirs;
        uint64_t specials;      /* symlinks, whiteouts, fifos, devices */
        uint64_t copied;        /* regular files copied (changed or new) */
        uint64_t linked;        /* regular files kept or hard-linked (unchanged since the last sync) */
        uint64_t bytes_copied;
        uint64_t bytes_total;   /* size of every regular file of the tree */
        uint64_t torn;          /* files that changed while copied (copied again) */
        uint64_t vanished;      /* entries gone between readdir and copy */
        uint64_t settled;       /* files older than the standby's stamp: xattrs not compared */
        uint64_t gen;           /* the generation written (sync) or read (restore) */
} gc_stats;

/* Returns true when the work should stop (checked between entries). */
typedef bool (*gc_cancel_fn)(void *userdata);

/* Builds the next generation of `upper` under `persist` (which exists) and makes it
 * current. 0, or a negative errno with a sentence in err. */
int gc_gen_sync(const char *upper, const char *persist, gc_cancel_fn cancel, void *userdata, gc_stats *ret_stats,
                char *err, size_t err_len);

/* Copies the current generation of `persist` into `upper` (an existing, empty
 * directory). -ENOENT when there is no generation yet (nothing to restore). */
int gc_gen_restore(const char *persist, const char *upper, gc_cancel_fn cancel, void *userdata, gc_stats *ret_stats,
                   char *err, size_t err_len);

/* The current generation number (0 = none) of persist. */
uint64_t gc_gen_current(const char *persist);

/* Removes a directory tree (no symlink followed). 0 or a negative errno. */
int gc_rm_rf(const char *path);

#endif
