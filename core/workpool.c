/* workpool.c — the worker pool of workpool.h: a mutex-guarded FIFO of jobs for the
 * threads, a list of finished ones for the loop, and an eventfd between them. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util.h"
#include "workpool.h"

#define WORKPOOL_MAX_THREADS 8

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_FINISHED } job_state;

typedef struct job {
        struct job *next;
        uint64_t id;
        org_ctx *owner;
        org_work_fn work;
        org_work_done_fn done;
        org_work_adopted_fn adopted; /* set by workpool_adopt: called instead of done */
        void *adopted_ud;
        void *userdata;
        void *hold;
        job_state state;
        bool cancelled; /* its owner went away while it ran: drop it once it returns */
        int result;
} job;

struct workpool {
        sd_event_source *source;
        int efd;
        void (*drop)(void *userdata);
        void (*release)(void *hold);
        unsigned n_wanted, n_threads;
        pthread_t threads[WORKPOOL_MAX_THREADS];
        pthread_mutex_t lock;
        pthread_cond_t wake;     /* a job was queued, or stop */
        pthread_cond_t finished; /* a running job returned */
        job *queue, *queue_tail; /* JOB_QUEUED, FIFO */
        job *running;            /* JOB_RUNNING */
        job *done, *done_tail;   /* JOB_FINISHED, FIFO, for the loop */
        uint64_t next_id;
        bool stop;
};

static void list_remove(job **head, job **tail, job *j) {
        job *prev = NULL;
        for (job *c = *head; c; prev = c, c = c->next)
                if (c == j) {
                        if (prev)
                                prev->next = c->next;
                        else
                                *head = c->next;
                        if (tail && *tail == c)
                                *tail = prev;
                        c->next = NULL;
                        return;
                }
}

static void list_append(job **head, job **tail, job *j) {
        j->next = NULL;
        if (*tail)
                (*tail)->next = j;
        else
                *head = j;
        *tail = j;
}

static void *worker(void *arg) {
        workpool *p = arg;
        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->queue && !p->stop)
                        pthread_cond_wait(&p->wake, &p->lock);
                if (p->stop)
                        break;
                job *j = p->queue;
                list_remove(&p->queue, &p->queue_tail, j);
                j->state = JOB_RUNNING;
                j->next = p->running;
                p->running = j;
                pthread_mutex_unlock(&p->lock);

                int result = j->work ? j->work(j->userdata) : 0;

                pthread_mutex_lock(&p->lock);
                j->result = result;
                list_remove(&p->running, NULL, j);
                j->state = JOB_FINISHED;
                list_append(&p->done, &p->done_tail, j);
                pthread_cond_broadcast(&p->finished);
                uint64_t one = 1;
                ssize_t _unused_ n = write(p->efd, &one, sizeof one); /* EAGAIN: already signalled */
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

static void job_drop(workpool *p, job *j) {
        if (p->drop)
                p->drop(j->userdata);
        void *hold = j->hold;
        free(j);
        if (hold && p->release)
                p->release(hold);
}

/* On the loop: deliver every finished job, one at a time, without the lock held while
 * done runs (it may submit again or cancel its owner). */
static int on_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        workpool *p = userdata;
        uint64_t n;
        ssize_t _unused_ r = read(fd, &n, sizeof n);
        for (;;) {
                pthread_mutex_lock(&p->lock);
                job *j = p->done;
                if (j)
                        list_remove(&p->done, &p->done_tail, j);
                pthread_mutex_unlock(&p->lock);
                if (!j)
                        break;
                if (j->cancelled) {
                        job_drop(p, j);
                        continue;
                }
                org_work_done_fn done = j->done;
                org_work_adopted_fn adopted = j->adopted;
                org_ctx *owner = j->owner;
                int result = j->result;
                void *ud = j->userdata, *aud = j->adopted_ud, *hold = j->hold;
                free(j);
                if (adopted)
                        adopted(owner, result, ud, aud);
                else if (done)
                        done(owner, result, ud);
                /* last: done may be code of the held .so */
                if (hold && p->release)
                        p->release(hold);
        }
        return 0;
}

int workpool_new(sd_event *event, unsigned n_threads, void (*drop)(void *userdata), void (*release)(void *hold),
                 workpool **ret) {
        workpool *p = new0(workpool, 1);
        if (!p)
                return -ENOMEM;
        p->n_wanted = MIN(n_threads ? n_threads : 2, WORKPOOL_MAX_THREADS);
        p->drop = drop;
        p->release = release;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->wake, NULL);
        pthread_cond_init(&p->finished, NULL);
        p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        int r = p->efd < 0 ? -errno : sd_event_add_io(event, &p->source, p->efd, EPOLLIN, on_event, p);
        if (r < 0) {
                workpool_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

/* Threads start with every signal blocked: signals belong to the loop's signalfd. */
static int start_threads(workpool *p) {
        sigset_t all, saved;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        int r = 0;
        while (p->n_threads < p->n_wanted) {
                r = -pthread_create(&p->threads[p->n_threads], NULL, worker, p);
                if (r < 0)
                        break;
                p->n_threads++;
        }
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        return p->n_threads > 0 ? 0 : r;
}

int workpool_submit(workpool *p, org_ctx *owner, org_work_fn work, org_work_done_fn done, void *userdata,
                    void *hold, uint64_t *ret_id) {
        if (!p || !work)
                return -EINVAL;
        if (p->n_threads == 0) {
                int r = start_threads(p);
                if (r < 0)
                        return r;
        }
        job *j = new0(job, 1);
        if (!j)
                return -ENOMEM;
        j->owner = owner;
        j->work = work;
        j->done = done;
        j->userdata = userdata;
        j->hold = hold;
        j->state = JOB_QUEUED;
        pthread_mutex_lock(&p->lock);
        j->id = ++p->next_id;
        list_append(&p->queue, &p->queue_tail, j);
        pthread_cond_signal(&p->wake);
        pthread_mutex_unlock(&p->lock);
        if (ret_id)
                *ret_id = j->id;
        return 0;
}

static bool owner_running(workpool *p, org_ctx *owner) {
        for (job *j = p->running; j; j = j->next)
                if (!owner || j->owner == owner)
                        return true;
        return false;
}

/* Moves the jobs of owner (all: every job) from one list onto *dropped. */
static void take_jobs(job **head, job **tail, org_ctx *owner, bool all, bool only_cancelled, job **dropped) {
        for (job *j = *head, *next; j; j = next) {
                next = j->next;
                if ((all || j->owner == owner) && (!only_cancelled || j->cancelled)) {
                        list_remove(head, tail, j);
                        j->next = *dropped;
                        *dropped = j;
                }
        }
}

static void drop_list(workpool *p, job *dropped) {
        while (dropped) {
                job *j = dropped;
                dropped = j->next;
                job_drop(p, j);
        }
}

static void cancel_matching(workpool *p, org_ctx *owner, bool all) {
        job *dropped = NULL;
        pthread_mutex_lock(&p->lock);
        take_jobs(&p->queue, &p->queue_tail, owner, all, false, &dropped);
        take_jobs(&p->done, &p->done_tail, owner, all, false, &dropped);
        /* running: its code (in the plugin's .so) must have returned before we go on */
        for (job *j = p->running; j; j = j->next)
                if (all || j->owner == owner)
                        j->cancelled = true;
        while (owner_running(p, all ? NULL : owner))
                pthread_cond_wait(&p->finished, &p->lock);
        /* those that just returned sit in `done`, marked cancelled */
        take_jobs(&p->done, &p->done_tail, owner, all, true, &dropped);
        pthread_mutex_unlock(&p->lock);
        drop_list(p, dropped);
}

static job *find_job(workpool *p, org_ctx *owner, uint64_t id) {
        for (job *lists[] = {p->queue, p->running, p->done}, **l = lists; l < lists + 3; l++)
                for (job *j = *l; j; j = j->next)
                        if (j->id == id && j->owner == owner && !j->cancelled)
                                return j;
        return NULL;
}

bool workpool_owns(workpool *p, org_ctx *owner, uint64_t id) {
        if (!p || !owner)
                return false;
        pthread_mutex_lock(&p->lock);
        bool found = find_job(p, owner, id) != NULL;
        pthread_mutex_unlock(&p->lock);
        return found;
}

int workpool_adopt(workpool *p, org_ctx *owner, uint64_t id, org_ctx *new_owner, org_work_adopted_fn adopted,
                   void *adopted_ud) {
        if (!p || !owner)
                return -ENOENT;
        pthread_mutex_lock(&p->lock);
        job *j = find_job(p, owner, id);
        if (j) {
                j->owner = new_owner;
                j->adopted = adopted;
                j->adopted_ud = adopted_ud;
        }
        pthread_mutex_unlock(&p->lock);
        return j ? 0 : -ENOENT;
}

unsigned workpool_orphan_owner(workpool *p, org_ctx *owner) {
        if (!p || !owner)
                return 0;
        job *dropped = NULL;
        unsigned left = 0;
        pthread_mutex_lock(&p->lock);
        take_jobs(&p->queue, &p->queue_tail, owner, false, false, &dropped);
        take_jobs(&p->done, &p->done_tail, owner, false, false, &dropped);
        /* owner NULL: no later cancel of another owner matches it; on_event drops it */
        for (job *j = p->running; j; j = j->next)
                if (j->owner == owner) {
                        j->cancelled = true;
                        j->owner = NULL;
                        left++;
                }
        pthread_mutex_unlock(&p->lock);
        drop_list(p, dropped);
        return left;
}

void workpool_cancel_owner(workpool *p, org_ctx *owner) {
        if (p)
                cancel_matching(p, owner, false);
}

unsigned workpool_pending(workpool *p, org_ctx *owner) {
        if (!p)
                return 0;
        unsigned n = 0;
        pthread_mutex_lock(&p->lock);
        for (job *lists[] = {p->queue, p->running, p->done}, **l = lists; l < lists + 3; l++)
                for (job *j = *l; j; j = j->next)
                        if (!owner || j->owner == owner)
                                n++;
        pthread_mutex_unlock(&p->lock);
        return n;
}

unsigned workpool_threads(workpool *p) {
        return p ? p->n_threads : 0;
}

void workpool_free(workpool *p) {
        if (!p)
                return;
        cancel_matching(p, NULL, true);
        pthread_mutex_lock(&p->lock);
        p->stop = true;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        sd_event_source_disable_unref(p->source);
        if (p->efd >= 0)
                close(p->efd);
        pthread_cond_destroy(&p->finished);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(p);
}
