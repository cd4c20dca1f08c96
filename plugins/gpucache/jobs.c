/* jobs.c — gpucache's work on the host's worker pool: sync (gen.c), restore, prewarm
 * and the busy scan of disable. The loop never copies a byte.
 *
 * A job's userdata is one malloc'd block (gc_job) with its own copies of the paths and
 * everything the job and its completion need: its cancel flag and its phase (queued,
 * running, returned) sit in the block, under a mutex and condition of the block, never
 * in this .so's static memory. That is what lets a job outlive its generation: on a
 * `plugin reload` the new build adopts the job (host->work_adopt, handover.c); the job
 * goes on running the old build's code, which reads only its block, and the new build
 * can still cancel it and wait for it at its own stop, with the block's own mutex. The
 * block's layout is part of the hand-over format (GC_JOB_FORMAT): a build that
 * changes it changes the format, and the next build does not adopt older blocks.
 *
 * The state pointer in the block (g) is the submitter's: only that generation's done
 * reads it (the host never calls done of a retired generation); an adopted job's
 * completion reaches the state through the adopter's userdata instead. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gpucache.h"

#define PREWARM_MAX_THREADS 16
#define PREWARM_BUF  (1024 * 1024)
#define GC_JOB_MAGIC 0x6763616a6f622131ull /* "gcajob!1" */

typedef enum job_phase { PHASE_QUEUED, PHASE_RUNNING, PHASE_RETURNED } job_phase;

struct gc_job {
        uint64_t magic;
        uint32_t format;                /* GC_JOB_FORMAT */
        pthread_mutex_t lock;           /* phase and cancel */
        pthread_cond_t returned;
        job_phase phase;
        atomic_bool cancel;
        gc *g;                          /* the submitter's state (see the top) */
        uint64_t id;                    /* the pool's job id */
        gc_job_kind kind;
        char layer[GC_NAME_MAX];
        uint64_t seq;
        char a[PATH_MAX], b[PATH_MAX]; /* sync: upper, persist; restore: persist, upper; prewarm/busy: merged, ram */
        char proc[PATH_MAX];           /* busy: the sysroot's /proc */
        uint64_t max_file;
        unsigned parallel;
        /* results */
        gc_stats st;
        char err[GC_WHY_MAX];
        uint64_t duration_us;
};

static bool cancelled(void *userdata) {
        gc_job *j = userdata;
        return atomic_load(&j->cancel);
}

/* A job cancelled before it began never begins (the phase changes under the lock, so
 * gc_job_stop either sees it running and waits, or it sees the cancel and returns). */
static bool job_begin(gc_job *j) {
        pthread_mutex_lock(&j->lock);
        bool ok = !atomic_load(&j->cancel);
        j->phase = ok ? PHASE_RUNNING : PHASE_RETURNED;
        pthread_mutex_unlock(&j->lock);
        return ok;
}

static void job_end(gc_job *j) {
        pthread_mutex_lock(&j->lock);
        j->phase = PHASE_RETURNED;
        pthread_cond_broadcast(&j->returned);
        pthread_mutex_unlock(&j->lock);
}

void gc_job_stop(gc_job *j) {
        if (!j)
                return;
        pthread_mutex_lock(&j->lock);
        atomic_store(&j->cancel, true);
        while (j->phase == PHASE_RUNNING)
                pthread_cond_wait(&j->returned, &j->lock);
        pthread_mutex_unlock(&j->lock);
}

bool gc_job_valid(const gc_job *j) {
        return j && j->magic == GC_JOB_MAGIC && j->format == GC_JOB_FORMAT;
}
uint64_t gc_job_id(const gc_job *j) {
        return j->id;
}
uint64_t gc_job_seq(const gc_job *j) {
        return j->seq;
}
gc_job_kind gc_job_kind_of(const gc_job *j) {
        return j->kind;
}
const char *gc_job_layer(const gc_job *j) {
        return j->layer;
}

static uint64_t mono_us(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

typedef gc_job job;
typedef gc_job_kind job_kind;

/* ---- prewarm ---------------------------------------------------------------------- */

typedef struct pw_list {
        char **v;
        size_t n, cap;
        atomic_size_t next;
        atomic_uint_fast64_t files, bytes;
        gc_job *job;
        uint64_t max_file;
} pw_list;

static int pw_walk(pw_list *l, const char *dir, int depth) {
        if (depth > 256 || cancelled(l->job))
                return 0;
        DIR *d = opendir(dir);
        if (!d)
                return 0;
        struct dirent *e;
        char sub[PATH_MAX];
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                if (snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= (int)sizeof sub)
                        continue;
                struct stat st;
                if (lstat(sub, &st) < 0)
                        continue;
                if (S_ISDIR(st.st_mode))
                        pw_walk(l, sub, depth + 1);
                else if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < l->max_file) {
                        if (l->n == l->cap) {
                                size_t cap = l->cap ? l->cap * 2 : 1024;
                                char **v = realloc(l->v, cap * sizeof *v);
                                if (!v)
                                        break;
                                l->v = v;
                                l->cap = cap;
                        }
                        if (!(l->v[l->n] = strdup(sub)))
                                break;
                        l->n++;
                }
        }
        closedir(d);
        return 0;
}

/* Readers run at nice 10: on a 2-core box four of them would otherwise take the CPU the
 * daemon's loop needs to answer heartbeats and requests. */
static void *pw_reader(void *arg) {
        pw_list *l = arg;
        (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
        char *buf = malloc(PREWARM_BUF);
        if (!buf)
                return NULL;
        for (;;) {
                size_t i = atomic_fetch_add(&l->next, 1);
                if (i >= l->n || cancelled(l->job))
                        break;
                int fd = open(l->v[i], O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
                if (fd < 0)
                        continue;
                uint64_t got = 0;
                ssize_t n;
                while ((n = read(fd, buf, PREWARM_BUF)) > 0)
                        got += (uint64_t)n;
                close(fd);
                atomic_fetch_add(&l->files, 1);
                atomic_fetch_add(&l->bytes, got);
        }
        free(buf);
        return NULL;
}

static int prewarm(job *j) {
        pw_list l = {.job = j, .max_file = j->max_file};
        atomic_init(&l.next, 0);
        atomic_init(&l.files, 0);
        atomic_init(&l.bytes, 0);
        pw_walk(&l, j->a, 0);
        unsigned n = j->parallel < 1 ? 1 : j->parallel > PREWARM_MAX_THREADS ? PREWARM_MAX_THREADS : j->parallel;
        pthread_t t[PREWARM_MAX_THREADS];
        unsigned started = 0;
        for (unsigned k = 0; k < n; k++)
                if (pthread_create(&t[started], NULL, pw_reader, &l) == 0)
                        started++;
        if (!started)
                pw_reader(&l); /* no thread to be had: this one reads (at nice 10 from now on) */
        for (unsigned k = 0; k < started; k++)
                pthread_join(t[k], NULL);
        j->st.files = atomic_load(&l.files);
        j->st.bytes_total = atomic_load(&l.bytes);
        for (size_t i = 0; i < l.n; i++)
                free(l.v[i]);
        free(l.v);
        return cancelled(j) ? -ECANCELED : 0;
}

/* ---- busy scan -------------------------------------------------------------------- */

static bool inside(const char *path, const char *dir) {
        size_t n = strlen(dir);
        return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static void comm_of(const char *proc, const char *pid, char *ret, size_t len) {
        char path[PATH_MAX + 32];
        snprintf(ret, len, "?");
        if (snprintf(path, sizeof path, "%s/%s/comm", proc, pid) >= (int)sizeof path)
                return;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return;
        ssize_t n = read(fd, ret, len - 1);
        close(fd);
        if (n <= 0) {
                snprintf(ret, len, "?");
                return;
        }
        ret[n] = '\0';
        ret[strcspn(ret, "\n")] = '\0';
}

/* The first process with its cwd or an open file under a or b: a sentence in err. */
static int busy(job *j) {
        DIR *d = opendir(j->proc);
        if (!d)
                return 0;
        pid_t self = getpid();
        struct dirent *e;
        char path[PATH_MAX + 64], target[PATH_MAX], comm[64];
        int found = 0;
        while (!found && (e = readdir(d))) {
                if (e->d_name[0] < '1' || e->d_name[0] > '9' || strtol(e->d_name, NULL, 10) == self)
                        continue;
                if (snprintf(path, sizeof path, "%s/%s/cwd", j->proc, e->d_name) >= (int)sizeof path)
                        continue;
                ssize_t n = readlink(path, target, sizeof target - 1);
                if (n > 0) {
                        target[n] = '\0';
                        if (inside(target, j->a) || inside(target, j->b)) {
                                comm_of(j->proc, e->d_name, comm, sizeof comm);
                                snprintf(j->err, sizeof j->err, "pid %.16s (%.32s) has its cwd in %.200s", e->d_name,
                                         comm, target);
                                found = 1;
                                break;
                        }
                }
                if (snprintf(path, sizeof path, "%s/%s/fd", j->proc, e->d_name) >= (int)sizeof path)
                        continue;
                DIR *fds = opendir(path);
                if (!fds)
                        continue;
                struct dirent *f;
                while ((f = readdir(fds))) {
                        if (f->d_name[0] < '0' || f->d_name[0] > '9')
                                continue;
                        if (snprintf(path, sizeof path, "%s/%s/fd/%s", j->proc, e->d_name, f->d_name) >=
                            (int)sizeof path)
                                continue;
                        n = readlink(path, target, sizeof target - 1);
                        if (n <= 0)
                                continue;
                        target[n] = '\0';
                        if (inside(target, j->a) || inside(target, j->b)) {
                                comm_of(j->proc, e->d_name, comm, sizeof comm);
                                snprintf(j->err, sizeof j->err, "pid %.16s (%.32s) has %.200s open", e->d_name, comm,
                                         target);
                                found = 1;
                                break;
                        }
                }
                closedir(fds);
        }
        closedir(d);
        return found ? -EBUSY : 0;
}

/* ---- the pool side ---------------------------------------------------------------- */

static int run(void *userdata) {
        job *j = userdata;
        if (!job_begin(j))
                return -ECANCELED;
        uint64_t t0 = mono_us();
        /* copies at nice 10 (the pool thread is given back at its old priority): the
         * loop's thread keeps its share of a 2-core box */
        id_t tid = (id_t)gettid();
        errno = 0;
        int prio = getpriority(PRIO_PROCESS, tid);
        bool reniced = errno == 0 && j->kind != GC_JOB_BUSY && prio < 10 && setpriority(PRIO_PROCESS, tid, 10) == 0;
        int r = 0;
        switch (j->kind) {
        case GC_JOB_SYNC:
                r = gc_gen_sync(j->a, j->b, cancelled, j, &j->st, j->err, sizeof j->err);
                break;
        case GC_JOB_RESTORE:
                r = gc_gen_restore(j->a, j->b, cancelled, j, &j->st, j->err, sizeof j->err);
                break;
        case GC_JOB_PREWARM:
                r = prewarm(j);
                break;
        case GC_JOB_BUSY:
                r = busy(j);
                break;
        }
        if (reniced)
                (void)setpriority(PRIO_PROCESS, tid, prio);
        j->duration_us = mono_us() - t0;
        job_end(j);
        return r;
}

/* The completion, for the submitter or the adopter alike: the layer is the one whose
 * job this block is (found by the pointer, so a new build's layer numbering is free). */
static void complete(gc *g, job *j, int result) {
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                gc_job **slot = j->kind == GC_JOB_SYNC      ? &l->sync_job
                                : j->kind == GC_JOB_RESTORE ? &l->restore_job
                                : j->kind == GC_JOB_PREWARM ? &l->prewarm_job
                                                            : &l->busy_job;
                if (*slot != j)
                        continue;
                *slot = NULL;
                switch (j->kind) {
                case GC_JOB_SYNC:
                        gc_sync_done(g, i, j->seq, result, &j->st, j->err, j->duration_us);
                        break;
                case GC_JOB_RESTORE:
                        gc_restore_done(g, i, result, &j->st, j->err, j->duration_us);
                        break;
                case GC_JOB_PREWARM:
                        gc_prewarm_done(g, i, j->seq, result, &j->st, j->duration_us);
                        break;
                case GC_JOB_BUSY:
                        gc_busy_done(g, i, result, j->err);
                        break;
                }
                break;
        }
        free(j);
}

static void done(org_ctx *ctx, int result, void *userdata) {
        job *j = userdata;
        complete(j->g, j, result);
}

static void adopted_done(org_ctx *ctx, int result, void *work_data, void *userdata) {
        complete(userdata, work_data, result);
}

int gc_job_adopt(gc *g, uint64_t id) {
        return g->host->work_adopt(g->ctx, id, adopted_done, g);
}

static int submit(gc *g, gc_layer *l, job_kind kind, uint64_t seq, const char *a, const char *b) {
        job *j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->magic = GC_JOB_MAGIC;
        j->format = GC_JOB_FORMAT;
        pthread_mutex_init(&j->lock, NULL);
        pthread_cond_init(&j->returned, NULL);
        j->phase = PHASE_QUEUED;
        atomic_init(&j->cancel, false);
        j->g = g;
        j->kind = kind;
        snprintf(j->layer, sizeof j->layer, "%s", l->name);
        j->seq = seq;
        snprintf(j->a, sizeof j->a, "%s", a);
        snprintf(j->b, sizeof j->b, "%s", b);
        j->max_file = g->prewarm_max;
        j->parallel = g->prewarm_parallel;
        if (kind == GC_JOB_BUSY) {
                char *proc = NULL;
                if (g->host->sysroot_path(g->ctx, "/proc", &proc) == 0) {
                        snprintf(j->proc, sizeof j->proc, "%s", proc);
                        free(proc);
                } else
                        snprintf(j->proc, sizeof j->proc, "/proc");
        }
        uint64_t id = 0;
        int r = g->host->work_submit(g->ctx, run, done, j, &id);
        if (r < 0) {
                free(j);
                return r;
        }
        /* the thread never reads id; done runs later, on the loop */
        j->id = id;
        *(kind == GC_JOB_SYNC      ? &l->sync_job
          : kind == GC_JOB_RESTORE ? &l->restore_job
          : kind == GC_JOB_PREWARM ? &l->prewarm_job
                                   : &l->busy_job) = j;
        return 0;
}

int gc_submit_sync(gc *g, gc_layer *l, uint64_t seq) {
        return submit(g, l, GC_JOB_SYNC, seq, l->upper, l->persist);
}
int gc_submit_restore(gc *g, gc_layer *l) {
        return submit(g, l, GC_JOB_RESTORE, 0, l->persist, l->upper);
}
int gc_submit_prewarm(gc *g, gc_layer *l, uint64_t seq) {
        return submit(g, l, GC_JOB_PREWARM, seq, l->merged, "");
}
int gc_submit_busy(gc *g, gc_layer *l) {
        return submit(g, l, GC_JOB_BUSY, 0, l->merged, l->ram);
}

int gc_sync_now(gc_layer *l, gc_stats *st, char *err, size_t len) {
        return gc_gen_sync(l->upper, l->persist, NULL, NULL, st, err, len);
}
