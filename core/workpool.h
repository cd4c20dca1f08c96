/* workpool.h — the host's small worker pool: submit a function, its completion comes
 * back on the loop.
 *
 * A fixed number of threads, started on the first submit, take jobs in FIFO order; a
 * finished job is queued for the loop and an eventfd watched by sd-event wakes it, so
 * `done` always runs on the loop thread, never inside submit. Jobs belong to an owner
 * (the plugin generation's org_ctx, never dereferenced here): cancelling an owner drops
 * its queued jobs, waits for its running ones, and hands every such userdata to the
 * pool's drop function instead of calling done. */
#ifndef CORE_WORKPOOL_H
#define CORE_WORKPOOL_H

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include <organism/host.h>

typedef struct workpool workpool;

/* n_threads 0 = 2. drop (may be NULL) receives the userdata of cancelled jobs, release
 * (may be NULL) the hold of every job once it is delivered or dropped. */
int workpool_new(sd_event *event, unsigned n_threads, void (*drop)(void *userdata), void (*release)(void *hold),
                 workpool **ret);
/* Cancels every job (as workpool_cancel_owner does for each owner), joins the threads. */
void workpool_free(workpool *p);

/* work runs on a pool thread, done(owner, result, userdata) later on the loop. */
int workpool_submit(workpool *p, org_ctx *owner, org_work_fn work, org_work_done_fn done, void *userdata,
                    void *hold, uint64_t *ret_id);
/* True when job id is not yet delivered nor dropped and belongs to owner. */
bool workpool_owns(workpool *p, org_ctx *owner, uint64_t id);
/* Job id of owner goes to new_owner: adopted(new_owner, result, userdata, adopted_ud)
 * replaces its done. 0 or -ENOENT. */
int workpool_adopt(workpool *p, org_ctx *owner, uint64_t id, org_ctx *new_owner, org_work_adopted_fn adopted,
                   void *adopted_ud);
/* Drops the owner's queued and finished jobs; its running ones finish without waiting
 * for them here, and are then dropped. Returns how many were left running. Loop thread. */
unsigned workpool_orphan_owner(workpool *p, org_ctx *owner);
/* Drops the owner's queued and finished-but-undelivered jobs, waits for its running
 * ones; done is never called for them, drop gets their userdata. Loop thread only. */
void workpool_cancel_owner(workpool *p, org_ctx *owner);
/* Jobs submitted and not yet delivered or dropped, of one owner (NULL: all). */
unsigned workpool_pending(workpool *p, org_ctx *owner);
/* Threads started so far (0 until the first submit). */
unsigned workpool_threads(workpool *p);

#endif
