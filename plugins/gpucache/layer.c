/* layer.c — one layer's life on the loop: start (refuse, adopt, mount, restore off the
 * loop, overlay), the sync and prewarm schedule (one at a time, a request during a sync
 * asks for exactly one more), the waiters that answer requests, usage and the full
 * alert, and disable / enable.
 *
 * Start order matters (the seed got it wrong twice): the tmpfs is mounted first, then
 * upper/ and work/ are created inside it, then the persisted generation is restored
 * into that upper while nothing is mounted on top, and only then the overlay. A layer
 * found mounted by an earlier run is adopted as it is, never restored over. A tmpfs
 * left without its overlay is kept only when the marker written after a complete
 * restore is in it; otherwise it held an interrupted restore and is mounted afresh —
 * unless the restore is one a previous build of this same agentd process is running
 * (a `plugin reload` during the restore: the tmpfs carries the process's identity):
 * then the layer waits, restoring, for the hand-over (handover.c adopts the job); if
 * the job is not handed over, the old build's fini unmounts its tmpfs and the layer
 * starts afresh right after the reload. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "gpucache.h"

#define RESTORED_MARK ".gpucache-restored"
#define RESTORING_MARK ".gpucache-restoring"

const char *gc_state_name(gc_state s) {
        switch (s) {
        case GC_DOWN:
                return "down";
        case GC_RESTORING:
                return "restoring";
        case GC_MOUNTED:
                return "mounted";
        case GC_DISABLED:
                return "disabled";
        case GC_ERROR:
                return "error";
        case GC_DRY_RUN:
                return "dry_run";
        }
        return "unknown";
}

static void set_error(gc *g, gc_layer *l, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void set_error(gc *g, gc_layer *l, int r, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(l->why, sizeof l->why, fmt, ap);
        va_end(ap);
        if (r < 0 && n >= 0 && (size_t)n < sizeof l->why)
                snprintf(l->why + n, sizeof l->why - (size_t)n, ": %s", strerror(-r));
        l->state = GC_ERROR;
        g->host->log(g->ctx, ORG_LOG_ERR, "%s: %s", l->name, l->why);
}

static void respond_op(gc *g, gc_layer *l, json_t *o) {
        if (l->op_reply[0])
                gc_respond(g, l->op_reply, o);
        else
                json_decref(o);
        l->op_reply[0] = '\0';
}

static void op_error(gc *g, gc_layer *l, const char *why) {
        json_t *o = gc_layer_id(l);
        json_object_set_new(o, "error", json_string(why));
        respond_op(g, l, o);
}

static bool mark_path(const gc_layer *l, char *buf, size_t len) {
        return snprintf(buf, len, "%s/%s", l->ram, RESTORED_MARK) < (int)len;
}

/* This agentd process, different from any other one even with the same pid: the pid
 * and its start time (field 22 of /proc/self/stat). */
static void process_identity(char *buf, size_t len) {
        char stat[1024] = "";
        int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, stat, sizeof stat - 1) : -1;
        if (fd >= 0)
                close(fd);
        stat[n > 0 ? n : 0] = '\0';
        const char *p = strrchr(stat, ')');
        for (int field = 2; p && field < 22; field++)
                p = strchr(p + 1, ' ');
        char start[24] = "?";
        if (p) {
                size_t k = strcspn(p + 1, " \n");
                k = k < sizeof start ? k : sizeof start - 1;
                memcpy(start, p + 1, k);
                start[k] = '\0';
        }
        snprintf(buf, len, "%ld %s", (long)getpid(), start);
}

static bool restoring_path(const gc_layer *l, char *buf, size_t len) {
        return snprintf(buf, len, "%s/%s", l->ram, RESTORING_MARK) < (int)len;
}

/* Is the restore in this tmpfs one this process runs (a previous build's)? */
static bool restoring_here(const gc_layer *l) {
        char path[PATH_MAX + 32], want[64], have[64] = "";
        if (!restoring_path(l, path, sizeof path))
                return false;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return false;
        ssize_t n = read(fd, have, sizeof have - 1);
        close(fd);
        have[n > 0 ? n : 0] = '\0';
        process_identity(want, sizeof want);
        return strcmp(have, want) == 0;
}

/* The tmpfs is in place with upper/ and work/ complete: the overlay on top. */
static void mount_overlay(gc *g, gc_layer *l) {
        int r = gc_mount_overlay(g, l);
        if (r < 0) {
                set_error(g, l, r, "mount overlay at %s (lowerdir=%s)", l->merged, l->lower);
                op_error(g, l, l->why);
                return;
        }
        l->state = g->dry_run ? GC_DRY_RUN : GC_MOUNTED;
        l->why[0] = '\0';
        g->host->log(g->ctx, ORG_LOG_INFO, "%s: overlay mounted at %s (tmpfs %s, %" PRIu64 " MiB)", l->name, l->merged,
                     l->ram, l->size >> 20);
        json_t *o = gc_layer_id(l);
        json_object_set_new(o, "state", json_string(gc_state_name(l->state)));
        respond_op(g, l, o);
        gc_layer_usage(g, l);
        if (g->prewarm_on_start && l->state == GC_MOUNTED)
                (void)gc_layer_prewarm(g, l);
}

void gc_restore_done(gc *g, size_t i, int r, const gc_stats *st, const char *err, uint64_t us) {
        gc_layer *l = &g->layers[i];
        if (l->state != GC_RESTORING)
                return;
        if (r < 0 && r != -ENOENT) {
                /* a partial upper must never be synced nor used: drop the tmpfs */
                (void)gc_umount(g, l->ram);
                set_error(g, l, 0, "restore of %s into %s failed: %s", l->persist, l->upper,
                          err && err[0] ? err : strerror(-r));
                op_error(g, l, l->why);
                return;
        }
        if (r == -ENOENT)
                g->host->log(g->ctx, ORG_LOG_INFO, "%s: nothing persisted yet in %s: empty upper", l->name, l->persist);
        else {
                l->generation = st->gen;
                g->host->log(g->ctx, ORG_LOG_INFO,
                             "%s: restored generation %" PRIu64 " (%" PRIu64 " files, %" PRIu64 " bytes) in %" PRIu64
                             " ms",
                             l->name, st->gen, st->files, st->bytes_copied, us / 1000);
        }
        char mark[PATH_MAX + 32];
        int fd = mark_path(l, mark, sizeof mark) ? open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
        if (fd < 0) {
                r = -errno;
                (void)gc_umount(g, l->ram);
                set_error(g, l, r, "write %s", mark);
                op_error(g, l, l->why);
                return;
        }
        close(fd);
        if (restoring_path(l, mark, sizeof mark))
                (void)unlink(mark);
        mount_overlay(g, l);
}

/* tmpfs, upper/ and work/ inside it, then the restore job. */
static void mount_fresh(gc *g, gc_layer *l) {
        int r = gc_mount_tmpfs(g, l);
        if (r < 0) {
                set_error(g, l, r, "mount tmpfs at %s", l->ram);
                op_error(g, l, l->why);
                return;
        }
        if (g->dry_run) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would create %s and %s, restore generation %" PRIu64
                             " of %s into it", l->upper, l->work, gc_gen_current(l->persist), l->persist);
                mount_overlay(g, l);
                return;
        }
        if (mkdir(l->upper, 0755) < 0 || mkdir(l->work, 0700) < 0) {
                r = -errno;
                (void)gc_umount(g, l->ram);
                set_error(g, l, r, "create upper/ and work/ in the tmpfs %s", l->ram);
                op_error(g, l, l->why);
                return;
        }
        char mark[PATH_MAX + 32], id[64];
        process_identity(id, sizeof id);
        int fd = restoring_path(l, mark, sizeof mark) ? open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
        if (fd >= 0) {
                ssize_t wr = write(fd, id, strlen(id));
                (void)wr; /* without it a reload during this restore starts the layer afresh */
                close(fd);
        }
        l->state = GC_RESTORING;
        if ((r = gc_submit_restore(g, l)) < 0) {
                (void)gc_umount(g, l->ram);
                set_error(g, l, r, "start the restore of %s", l->persist);
                op_error(g, l, l->why);
        }
}

void gc_layers_inherited_check(gc *g) {
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                if (!l->restore_inherited)
                        continue;
                l->restore_inherited = false;
                if (l->state != GC_RESTORING || l->restore_job)
                        continue; /* adopted: gc_restore_done goes on from here */
                g->host->log(g->ctx, ORG_LOG_NOTICE, "%s: the previous build's restore was not handed over: starting "
                             "afresh", l->name);
                l->state = GC_DOWN;
                l->restore_retry = true;
                gc_layer_start(g, l);
                l->restore_retry = false;
        }
}

void gc_layer_start(gc *g, gc_layer *l) {
        l->adopted = false;
        char fstype[16], anchor[PATH_MAX];
        /* the persist directory may be made, its anchor (<persist_root> of a GPU layer,
         * the parent of a named layer's persist) must exist: a filesystem that is not
         * mounted yet must not be replaced by directories on the root filesystem */
        snprintf(anchor, sizeof anchor, "%s", l->persist);
        for (int k = 0; k < (l->index >= 0 ? 2 : 1); k++) {
                char *slash = strrchr(anchor, '/');
                if (slash && slash != anchor)
                        *slash = '\0';
        }
        struct stat st;
        if (stat(anchor, &st) < 0 || !S_ISDIR(st.st_mode))
                return set_error(g, l, stat(anchor, &st) < 0 ? -errno : -ENOTDIR,
                                 "%s (where %s goes) is missing: create it on a disk filesystem, or mount it", anchor,
                                 l->persist);
        int r = 0;
        if (g->dry_run)
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would create %s, %s and %s", l->persist, l->ram,
                             l->merged);
        else if ((r = gc_mkdir_p(l->persist, 0700)) < 0)
                return set_error(g, l, r, "create persist directory %s", l->persist);
        const char *probe = access(l->persist, F_OK) == 0 ? l->persist : anchor;
        if ((r = gc_on_ramfs(probe, fstype, sizeof fstype)) != 0) {
                if (r > 0)
                        return set_error(g, l, 0,
                                         "persist directory %s is on %s: refused, its generations would not survive "
                                         "a reboot (point persist at a disk filesystem)",
                                         l->persist, fstype);
                return set_error(g, l, r, "statfs %s", probe);
        }
        if (stat(l->lower, &st) < 0 || !S_ISDIR(st.st_mode))
                return set_error(g, l, stat(l->lower, &st) < 0 ? -errno : -ENOTDIR,
                                 "lower layer %s is missing (create it, or mount its filesystem)", l->lower);
        if (g->dry_run) {
                gc_mount m;
                if ((r = gc_mount_at(g, l->merged, &m)) == 0 && m.found)
                        g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: %s is mounted (%s): would adopt it", l->merged,
                                     m.fstype);
                return mount_fresh(g, l);
        }
        if ((r = gc_mkdir_p(l->ram, 0755)) < 0 || (r = gc_mkdir_p(l->merged, 0755)) < 0)
                return set_error(g, l, r, "create mount points %s and %s", l->ram, l->merged);

        gc_mount m_merged, m_ram;
        if ((r = gc_mount_at(g, l->merged, &m_merged)) < 0 || (r = gc_mount_at(g, l->ram, &m_ram)) < 0)
                return set_error(g, l, r, "read /proc/self/mountinfo");
        if (m_merged.found) {
                char want[PATH_MAX + 16];
                snprintf(want, sizeof want, "upperdir=%s", l->upper);
                const char *at = strstr(m_merged.super_opts, want);
                if (strcmp(m_merged.fstype, "overlay") == 0 && at && (at[strlen(want)] == ',' || !at[strlen(want)])) {
                        l->adopted = true;
                        l->state = GC_MOUNTED;
                        l->generation = gc_gen_current(l->persist);
                        g->host->log(g->ctx, ORG_LOG_NOTICE,
                                     "%s: already mounted at %s by an earlier run: adopted as it is (no restore)",
                                     l->name, l->merged);
                        gc_layer_usage(g, l);
                        return;
                }
                return set_error(g, l, 0, "%s already has a %s mount that is not this layer's overlay", l->merged,
                                 m_merged.fstype);
        }
        if (m_ram.found) {
                char mark[PATH_MAX + 32];
                if (strcmp(m_ram.fstype, "tmpfs") != 0)
                        return set_error(g, l, 0, "%s already has a %s mount, not a tmpfs", l->ram, m_ram.fstype);
                if (mark_path(l, mark, sizeof mark) && access(mark, F_OK) == 0) {
                        /* a complete upper whose overlay went away: keep it, it may be newer
                         * than the persisted generation */
                        l->adopted = true;
                        l->generation = gc_gen_current(l->persist);
                        g->host->log(g->ctx, ORG_LOG_NOTICE,
                                     "%s: tmpfs %s with a complete upper found without its overlay: re-mounting it "
                                     "(no restore)",
                                     l->name, l->ram);
                        mount_overlay(g, l);
                        return;
                }
                if (!l->restore_retry && restoring_here(l)) {
                        l->state = GC_RESTORING;
                        l->restore_inherited = true;
                        g->host->log(g->ctx, ORG_LOG_NOTICE,
                                     "%s: tmpfs %s: the previous build's restore is running: waiting for the hand-over",
                                     l->name, l->ram);
                        return;
                }
                g->host->log(g->ctx, ORG_LOG_WARNING,
                             "%s: tmpfs %s holds an interrupted restore: unmounting it and restoring again", l->name,
                             l->ram);
                if ((r = gc_umount(g, l->ram)) < 0)
                        return set_error(g, l, r, "umount %s", l->ram);
        }
        mount_fresh(g, l);
}

/* ---- waiters ---------------------------------------------------------------------- */

void gc_waiters_done(gc *g, gc_kind kind, size_t i, uint64_t seq, json_t *result) {
        for (size_t k = 0; k < GC_MAX_WAITERS; k++) {
                gc_waiter *w = &g->waiters[k];
                if (!w->used || w->kind != kind || !w->target[i] || seq < w->target[i])
                        continue;
                w->target[i] = 0;
                json_array_append(w->results, result);
                bool left = false;
                for (size_t j = 0; j < g->n_layers && !left; j++)
                        left = w->target[j] != 0;
                if (left)
                        continue;
                bool ok = true;
                size_t n;
                json_t *v;
                json_array_foreach (w->results, n, v)
                        ok = ok && !json_object_get(v, "error");
                gc_respond(g, w->reply, json_pack("{s:b, s:O}", "ok", ok, "results", w->results));
                json_decref(w->results);
                memset(w, 0, sizeof *w);
        }
        json_decref(result);
}

/* ---- sync ------------------------------------------------------------------------- */

static void sync_start(gc *g, gc_layer *l) {
        l->syncing = true;
        l->sync_pending = false;
        uint64_t seq = ++l->sync_seq;
        int r = gc_submit_sync(g, l, seq);
        if (r < 0) {
                gc_stats none = {0};
                char why[128];
                snprintf(why, sizeof why, "submit: %s", strerror(-r));
                gc_sync_done(g, (size_t)(l - g->layers), seq, r, &none, why, 0);
        }
}

int gc_layer_sync(gc *g, gc_layer *l) {
        if (l->state == GC_DRY_RUN) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would sync %s into %s", l->upper, l->persist);
                return 0;
        }
        if (l->state != GC_MOUNTED)
                return -EAGAIN;
        if (l->syncing)
                l->sync_pending = true; /* any number of requests meanwhile: one more sync */
        else
                sync_start(g, l);
        return 0;
}

static void publish_alert(gc *g, gc_layer *l, bool raise) {
        char subject[96];
        snprintf(subject, sizeof subject, "alert.gpucache.%s.full%s", l->name, raise ? "" : ".cleared");
        json_t *o = gc_layer_id(l);
        char ts[40];
        json_object_set_new(o, "used_bytes", json_integer((json_int_t)l->used_bytes));
        json_object_set_new(o, "size_bytes", json_integer((json_int_t)l->size_bytes));
        json_object_set_new(o, "used_ratio", json_real(l->size_bytes ? (double)l->used_bytes / l->size_bytes : 0));
        json_object_set_new(o, "message",
                            json_string(raise ? "tmpfs nearly full: writes in the merged view will fail with ENOSPC"
                                              : "tmpfs usage back under the limit"));
        json_object_set_new(o, "ts", json_string(gc_ts(g, ts, sizeof ts)));
        gc_publish(g, subject, o);
        g->host->log(g->ctx, raise ? ORG_LOG_WARNING : ORG_LOG_NOTICE, "%s: tmpfs %s %.0f %% used%s", l->name, l->ram,
                     l->size_bytes ? 100.0 * (double)l->used_bytes / l->size_bytes : 0.0,
                     raise ? ": alert raised" : ": alert cleared");
}

static void metric(gc *g, gc_layer *l, const char *name, org_metric_type t, double v, const char *help) {
        char full[192];
        snprintf(full, sizeof full, "%s{layer=\"%s\",pci=\"%s\"}", name, l->name, l->pci);
        (void)g->host->metric_set(g->ctx, full, t, v, help);
}

void gc_layer_usage(gc *g, gc_layer *l) {
        if (l->state == GC_MOUNTED || l->state == GC_RESTORING) {
                struct statfs s;
                if (statfs(l->ram, &s) == 0) {
                        l->size_bytes = (uint64_t)s.f_blocks * (uint64_t)s.f_bsize;
                        l->used_bytes = (uint64_t)(s.f_blocks - s.f_bfree) * (uint64_t)s.f_bsize;
                        l->inodes_total = (uint64_t)s.f_files;
                        l->inodes_used = (uint64_t)(s.f_files - s.f_ffree);
                }
        } else {
                l->used_bytes = l->inodes_used = 0;
                l->size_bytes = l->size;
        }
        double ratio = l->size_bytes ? (double)l->used_bytes / (double)l->size_bytes : 0.0;
        if (!l->full && ratio > g->full_ratio) {
                l->full = true;
                publish_alert(g, l, true);
        } else if (l->full && ratio < g->clear_ratio) {
                l->full = false;
                publish_alert(g, l, false);
        }
        metric(g, l, "gpucache_used_bytes", ORG_METRIC_GAUGE, (double)l->used_bytes, "bytes used in the layer's tmpfs");
        metric(g, l, "gpucache_size_bytes", ORG_METRIC_GAUGE, (double)l->size_bytes, "size of the layer's tmpfs");
        metric(g, l, "gpucache_used_ratio", ORG_METRIC_GAUGE, ratio, "used / size of the layer's tmpfs");
        metric(g, l, "gpucache_inodes_used", ORG_METRIC_GAUGE, (double)l->inodes_used, "inodes used in the tmpfs");
        metric(g, l, "gpucache_last_sync_timestamp_seconds", ORG_METRIC_GAUGE, (double)l->last_sync_us / 1e6,
               "wall clock of the last successful sync (0 = none yet)");
        metric(g, l, "gpucache_syncs_total", ORG_METRIC_COUNTER, (double)l->syncs, "successful syncs");
        metric(g, l, "gpucache_sync_errors_total", ORG_METRIC_COUNTER, (double)l->sync_errors, "failed syncs");
        metric(g, l, "gpucache_sync_bytes_total", ORG_METRIC_COUNTER, (double)l->sync_bytes,
               "bytes copied into the persist directory by syncs");
}

static void disable_finish(gc *g, gc_layer *l, int sync_r, const char *sync_err);

void gc_sync_done(gc *g, size_t i, uint64_t seq, int r, const gc_stats *st, const char *err, uint64_t us) {
        gc_layer *l = &g->layers[i];
        l->syncing = false;
        json_t *o = gc_layer_id(l);
        char ts[40];
        if (r == 0) {
                l->syncs++;
                l->sync_bytes += st->bytes_copied;
                l->last = *st;
                l->generation = st->gen;
                l->last_sync_us = g->host->now_realtime_us(g->ctx);
                l->last_sync_ms = us / 1000;
                l->last_error[0] = '\0';
                json_object_set_new(o, "files", json_integer((json_int_t)st->copied));
                json_object_set_new(o, "bytes", json_integer((json_int_t)st->bytes_copied));
                json_object_set_new(o, "linked", json_integer((json_int_t)st->linked));
                json_object_set_new(o, "total_files", json_integer((json_int_t)st->files));
                json_object_set_new(o, "total_bytes", json_integer((json_int_t)st->bytes_total));
                json_object_set_new(o, "torn", json_integer((json_int_t)st->torn));
                json_object_set_new(o, "generation", json_integer((json_int_t)st->gen));
                json_object_set_new(o, "duration_ms", json_integer((json_int_t)(us / 1000)));
                g->host->log(g->ctx, ORG_LOG_INFO,
                             "%s: generation %" PRIu64 ": %" PRIu64 " files copied (%" PRIu64 " bytes), %" PRIu64
                             " linked, in %" PRIu64 " ms",
                             l->name, st->gen, st->copied, st->bytes_copied, st->linked, us / 1000);
        } else {
                l->sync_errors++;
                snprintf(l->last_error, sizeof l->last_error, "%s", err && err[0] ? err : strerror(-r));
                json_object_set_new(o, "error", json_string(l->last_error));
                g->host->log(g->ctx, ORG_LOG_ERR, "%s: sync failed, generation %" PRIu64 " stays current: %s", l->name,
                             l->generation, l->last_error);
        }
        json_object_set_new(o, "ts", json_string(gc_ts(g, ts, sizeof ts)));
        gc_publish(g, r == 0 ? "gpu.cache.sync.done" : "gpu.cache.sync.err", json_incref(o));
        gc_layer_usage(g, l);
        gc_waiters_done(g, GC_WAIT_SYNC, i, seq, json_incref(o));
        if (l->disabling && !l->sync_pending) {
                json_decref(o);
                return disable_finish(g, l, r, l->last_error);
        }
        json_decref(o);
        if (l->sync_pending && l->state == GC_MOUNTED)
                sync_start(g, l);
}

/* ---- prewarm ---------------------------------------------------------------------- */

int gc_layer_prewarm(gc *g, gc_layer *l) {
        if (l->state == GC_DRY_RUN) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would prewarm %s", l->merged);
                return 0;
        }
        if (l->state != GC_MOUNTED)
                return -EAGAIN;
        if (l->prewarming)
                return 0; /* the running one serves this request too */
        l->prewarming = true;
        uint64_t seq = ++l->prewarm_seq;
        int r = gc_submit_prewarm(g, l, seq);
        if (r < 0) {
                gc_stats none = {0};
                gc_prewarm_done(g, (size_t)(l - g->layers), seq, r, &none, 0);
        }
        return 0;
}

void gc_prewarm_done(gc *g, size_t i, uint64_t seq, int r, const gc_stats *st, uint64_t us) {
        gc_layer *l = &g->layers[i];
        l->prewarming = false;
        json_t *o = gc_layer_id(l);
        char ts[40];
        if (r == 0) {
                l->prewarm_files = st->files;
                l->prewarm_bytes = st->bytes_total;
                l->prewarm_ms = us / 1000;
                json_object_set_new(o, "files", json_integer((json_int_t)st->files));
                json_object_set_new(o, "bytes", json_integer((json_int_t)st->bytes_total));
                json_object_set_new(o, "duration_ms", json_integer((json_int_t)(us / 1000)));
                json_object_set_new(o, "note", json_string("read through the merged view: this warms the page cache "
                                                           "(lower layer files stay on disk, not in the tmpfs)"));
                g->host->log(g->ctx, ORG_LOG_INFO,
                             "%s: prewarm read %" PRIu64 " files, %" PRIu64 " bytes in %" PRIu64
                             " ms (page cache warmed)",
                             l->name, st->files, st->bytes_total, us / 1000);
        } else
                json_object_set_new(o, "error", json_string(strerror(-r)));
        json_object_set_new(o, "ts", json_string(gc_ts(g, ts, sizeof ts)));
        gc_publish(g, r == 0 ? "gpu.cache.prewarm.done" : "gpu.cache.prewarm.err", json_incref(o));
        gc_waiters_done(g, GC_WAIT_PREWARM, i, seq, o);
}

/* ---- disable / enable ------------------------------------------------------------- */

void gc_layer_disable(gc *g, gc_layer *l, const char *reply) {
        if (l->op_reply[0] || l->disabling) {
                json_t *o = gc_layer_id(l);
                json_object_set_new(o, "error", json_string("an enable or disable of this layer is in progress"));
                gc_respond(g, reply, o);
                return;
        }
        snprintf(l->op_reply, sizeof l->op_reply, "%s", reply ? reply : "");
        if (l->state == GC_DRY_RUN) {
                g->host->log(g->ctx, ORG_LOG_NOTICE, "dry_run: would sync %s, then umount %s and %s", l->name,
                             l->merged, l->ram);
                l->state = GC_DISABLED;
                json_t *o = gc_layer_id(l);
                json_object_set_new(o, "state", json_string("disabled"));
                return respond_op(g, l, o);
        }
        if (l->state != GC_MOUNTED) {
                char why[128];
                snprintf(why, sizeof why, "%.40s is %s, not mounted", l->name, gc_state_name(l->state));
                return op_error(g, l, why);
        }
        int r = gc_submit_busy(g, l);
        if (r < 0) {
                char why[128];
                snprintf(why, sizeof why, "busy scan: %s", strerror(-r));
                op_error(g, l, why);
        }
}

void gc_busy_done(gc *g, size_t i, int r, const char *who) {
        gc_layer *l = &g->layers[i];
        if (r == -EBUSY) {
                g->busy_refusals++;
                char why[GC_WHY_MAX];
                snprintf(why, sizeof why, "disable refused: %.300s (stop it or move it out first)", who);
                g->host->log(g->ctx, ORG_LOG_WARNING, "%s: %s", l->name, why);
                return op_error(g, l, why);
        }
        if (l->state != GC_MOUNTED)
                return op_error(g, l, "no longer mounted");
        /* nothing new can be written between the final sync and the unmount */
        gc_remount_ro(g, l, true);
        l->disabling = true;
        (void)gc_layer_sync(g, l);
}

static void disable_finish(gc *g, gc_layer *l, int sync_r, const char *sync_err) {
        l->disabling = false;
        char why[GC_WHY_MAX];
        if (sync_r < 0) {
                gc_remount_ro(g, l, false);
                snprintf(why, sizeof why, "final sync failed, %s stays mounted: %.300s", l->name, sync_err);
                return op_error(g, l, why);
        }
        int r = gc_umount(g, l->merged);
        if (r < 0) {
                gc_remount_ro(g, l, false);
                snprintf(why, sizeof why, "umount %.200s: %s (still mounted, synced)", l->merged, strerror(-r));
                return op_error(g, l, why);
        }
        if ((r = gc_umount(g, l->ram)) < 0) {
                snprintf(why, sizeof why, "umount %.200s: %s", l->ram, strerror(-r));
                l->state = GC_ERROR;
                snprintf(l->why, sizeof l->why, "%s", why);
                return op_error(g, l, why);
        }
        l->state = GC_DISABLED;
        l->full = false;
        g->host->log(g->ctx, ORG_LOG_NOTICE, "%s: disabled: synced (generation %" PRIu64 "), %s and %s unmounted",
                     l->name, l->generation, l->merged, l->ram);
        gc_layer_usage(g, l);
        json_t *o = gc_layer_id(l);
        json_object_set_new(o, "state", json_string("disabled"));
        json_object_set_new(o, "generation", json_integer((json_int_t)l->generation));
        respond_op(g, l, o);
}

void gc_layer_enable(gc *g, gc_layer *l, const char *reply) {
        if (l->op_reply[0] || l->disabling) {
                json_t *o = gc_layer_id(l);
                json_object_set_new(o, "error", json_string("an enable or disable of this layer is in progress"));
                gc_respond(g, reply, o);
                return;
        }
        if (l->state == GC_MOUNTED || l->state == GC_RESTORING || l->state == GC_DRY_RUN) {
                json_t *o = gc_layer_id(l);
                json_object_set_new(o, "state", json_string(gc_state_name(l->state)));
                gc_respond(g, reply, o);
                return;
        }
        snprintf(l->op_reply, sizeof l->op_reply, "%s", reply ? reply : "");
        l->why[0] = '\0';
        gc_layer_start(g, l);
        if (l->state == GC_ERROR)
                op_error(g, l, l->why);
        else if (l->state == GC_MOUNTED && l->op_reply[0]) {
                json_t *o = gc_layer_id(l);
                json_object_set_new(o, "state", json_string("mounted"));
                respond_op(g, l, o);
        }
}

void gc_layers_final_sync(gc *g) {
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                if (l->state != GC_MOUNTED)
                        continue;
                if (gc_handed_layer(g, i)) {
                        g->host->log(g->ctx, ORG_LOG_INFO, "%s: handed to the new build, which syncs it (no final sync "
                                     "here)", l->name);
                        continue;
                }
                gc_stats st;
                char err[GC_WHY_MAX];
                int r = gc_sync_now(l, &st, err, sizeof err);
                if (r < 0)
                        g->host->log(g->ctx, ORG_LOG_ERR, "%s: final sync failed, generation %" PRIu64
                                     " stays current: %s", l->name, l->generation, err[0] ? err : strerror(-r));
                else
                        g->host->log(g->ctx, ORG_LOG_NOTICE,
                                     "%s: final sync: generation %" PRIu64 ", %" PRIu64 " files copied (%" PRIu64
                                     " bytes), %" PRIu64 " linked",
                                     l->name, st.gen, st.copied, st.bytes_copied, st.linked);
        }
}
