/* test-workpool.c — the worker pool on a real sd-event loop: no thread before the first
 * submit, work off the loop thread and done on it, results carried through, chains
 * submitted from done, and the retirement rule: cancelling an owner drops its queued
 * jobs, waits for its running ones, never calls their done and hands every userdata to
 * the drop function, while another owner's jobs complete. The reload rules: an
 * adopted job completes with its new owner and done; an orphaned owner's running job
 * is not waited for, finishes, and is dropped; each job's hold is released once, after
 * its done (or drop). Loops are bounded by iteration counts and sd-event time-outs. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "test.h"
#include "util.h"
#include "workpool.h"

static pthread_t loop_thread;
static atomic_int started, work_on_loop, gate_open;
static int done_calls, done_on_other_thread, dropped, result_sum;

typedef struct item {
        int value;
        bool slow;
        int done_seen;
} item;

static int work(void *userdata) {
        item *it = userdata;
        if (pthread_equal(pthread_self(), loop_thread))
                atomic_fetch_add(&work_on_loop, 1);
        atomic_fetch_add(&started, 1);
        /* a slow job waits for the gate (opened by the test), bounded to 5 s */
        for (int i = 0; it->slow && !atomic_load(&gate_open) && i < 5000; i++) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
        }
        return it->value * 2;
}

static void done(org_ctx *ctx, int result, void *userdata) {
        item *it = userdata;
        if (!pthread_equal(pthread_self(), loop_thread))
                done_on_other_thread++;
        done_calls++;
        result_sum += result;
        it->done_seen++;
}

static void drop(void *userdata) {
        dropped++;
        free(userdata);
}

static void run_until(sd_event *e, int *counter, int want) {
        for (int i = 0; i < 2000 && *counter < want; i++)
                CHECK(sd_event_run(e, 10 * USEC_PER_MSEC) >= 0);
}

static item *item_new(int v, bool slow) {
        item *it = new0(item, 1);
        CHECK(it);
        it->value = v;
        it->slow = slow;
        return it;
}

static void wait_started(int want) {
        for (int i = 0; i < 5000 && atomic_load(&started) < want; i++) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
        }
        CHECK(atomic_load(&started) >= want);
}

static void test_basic(sd_event *e) {
        workpool *p;
        CHECK_INT(workpool_new(e, 2, drop, NULL, &p), 0);
        CHECK_INT(workpool_threads(p), 0); /* lazily started */
        org_ctx *owner = (org_ctx *)(uintptr_t)0x1;
        item *items[20];
        done_calls = result_sum = 0;
        for (int i = 0; i < 20; i++) {
                items[i] = item_new(i, false);
                uint64_t id = 0;
                CHECK_INT(workpool_submit(p, owner, work, done, items[i], NULL, &id), 0);
                CHECK(id > 0);
        }
        CHECK_INT(workpool_threads(p), 2);
        CHECK_INT(done_calls, 0); /* never inside submit */
        run_until(e, &done_calls, 20);
        CHECK_INT(done_calls, 20);
        CHECK_INT(result_sum, 2 * (19 * 20 / 2));
        CHECK_INT(done_on_other_thread, 0);
        CHECK_INT(atomic_load(&work_on_loop), 0);
        CHECK_INT(workpool_pending(p, NULL), 0);
        for (int i = 0; i < 20; i++) {
                CHECK_INT(items[i]->done_seen, 1);
                free(items[i]);
        }
        CHECK_INT(dropped, 0);
        CHECK_INT(workpool_submit(p, owner, NULL, done, NULL, NULL, NULL), -EINVAL);
        workpool_free(p);
}

/* done submits the next job: a chain of 5 */
static workpool *chain_pool;
static int chain_left;
static void chain_done(org_ctx *ctx, int result, void *userdata) {
        done_calls++;
        free(userdata);
        if (--chain_left > 0)
                CHECK_INT(workpool_submit(chain_pool, ctx, work, chain_done, item_new(1, false), NULL, NULL), 0);
}

static void test_chain(sd_event *e) {
        CHECK_INT(workpool_new(e, 1, drop, NULL, &chain_pool), 0);
        done_calls = 0;
        chain_left = 5;
        CHECK_INT(workpool_submit(chain_pool, NULL, work, chain_done, item_new(1, false), NULL, NULL), 0);
        run_until(e, &done_calls, 5);
        CHECK_INT(done_calls, 5);
        workpool_free(chain_pool);
}

static void *open_gate_later(void *arg) {
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
        atomic_store(&gate_open, 1);
        return NULL;
}

static void test_cancel_owner(sd_event *e) {
        workpool *p;
        CHECK_INT(workpool_new(e, 2, drop, NULL, &p), 0);
        org_ctx *a = (org_ctx *)(uintptr_t)0xa, *b = (org_ctx *)(uintptr_t)0xb;
        atomic_store(&started, 0);
        atomic_store(&gate_open, 0);
        done_calls = dropped = 0;
        /* two slow jobs of a occupy both threads, then two more of a and one of b queue */
        for (int i = 0; i < 2; i++)
                CHECK_INT(workpool_submit(p, a, work, done, item_new(1, true), NULL, NULL), 0);
        wait_started(2);
        for (int i = 0; i < 2; i++)
                CHECK_INT(workpool_submit(p, a, work, done, item_new(1, false), NULL, NULL), 0);
        item *bi = item_new(7, false);
        CHECK_INT(workpool_submit(p, b, work, done, bi, NULL, NULL), 0);
        CHECK_INT(workpool_pending(p, a), 4);
        CHECK_INT(workpool_pending(p, b), 1);

        /* cancel waits for the two running jobs of a: the gate opens from another thread */
        pthread_t t;
        CHECK_INT(pthread_create(&t, NULL, open_gate_later, NULL), 0);
        workpool_cancel_owner(p, a);
        pthread_join(t, NULL);
        CHECK_INT(dropped, 4);
        CHECK_INT(workpool_pending(p, a), 0);

        run_until(e, &done_calls, 1);
        CHECK_INT(done_calls, 1); /* b's only: a's done never ran */
        CHECK_INT(bi->done_seen, 1);
        free(bi);
        /* the two queued jobs of a never ran: 2 slow + b's = 3 started (at most) */
        CHECK(atomic_load(&started) <= 3);

        /* free with work still queued drops it too */
        atomic_store(&gate_open, 0);
        atomic_store(&started, 0);
        CHECK_INT(workpool_submit(p, a, work, done, item_new(1, true), NULL, NULL), 0);
        CHECK_INT(workpool_submit(p, a, work, done, item_new(1, true), NULL, NULL), 0);
        wait_started(2);
        CHECK_INT(workpool_submit(p, b, work, done, item_new(1, false), NULL, NULL), 0);
        CHECK_INT(pthread_create(&t, NULL, open_gate_later, NULL), 0);
        dropped = 0;
        workpool_free(p);
        pthread_join(t, NULL);
        CHECK_INT(dropped, 3);
        CHECK_INT(done_calls, 1);
}

static int releases;
static org_ctx *done_owner;
static void release(void *hold) {
        CHECK(hold == (void *)&releases);
        releases++;
}

static void *adopted_ud_seen;
static void done_adopted(org_ctx *ctx, int result, void *work_data, void *userdata) {
        done_owner = ctx;
        adopted_ud_seen = userdata;
        done(ctx, result, work_data);
}

static void test_adopt_and_orphan(sd_event *e) {
        workpool *p;
        CHECK_INT(workpool_new(e, 1, drop, release, &p), 0);
        org_ctx *a = (org_ctx *)(uintptr_t)0xa, *b = (org_ctx *)(uintptr_t)0xb;
        atomic_store(&started, 0);
        atomic_store(&gate_open, 0);
        done_calls = dropped = releases = 0;
        uint64_t id1 = 0, id2 = 0;
        item *it = item_new(3, true);
        CHECK_INT(workpool_submit(p, a, work, done, it, &releases, &id1), 0);
        wait_started(1);
        CHECK(workpool_owns(p, a, id1));
        CHECK(!workpool_owns(p, b, id1));
        CHECK_INT(workpool_adopt(p, b, id1, a, done_adopted, NULL), -ENOENT); /* not b's */
        CHECK_INT(workpool_adopt(p, a, id1, b, done_adopted, &done_owner), 0);
        CHECK(!workpool_owns(p, a, id1));
        /* a's running job is b's now: orphaning a leaves nothing of a's running */
        CHECK_INT(workpool_orphan_owner(p, a), 0);
        atomic_store(&gate_open, 1);
        run_until(e, &done_calls, 1);
        CHECK_INT(done_calls, 1);
        CHECK(done_owner == b);
        CHECK(adopted_ud_seen == &done_owner);
        CHECK_INT(it->done_seen, 1);
        CHECK_INT(releases, 1);
        free(it);

        /* orphan: a slow running job and a queued one of a */
        atomic_store(&started, 0);
        atomic_store(&gate_open, 0);
        done_calls = dropped = releases = 0;
        CHECK_INT(workpool_submit(p, a, work, done, item_new(1, true), &releases, &id1), 0);
        wait_started(1);
        CHECK_INT(workpool_submit(p, a, work, done, item_new(1, false), &releases, &id2), 0);
        /* returns at once, the gate still closed: nothing waits for the running job */
        CHECK_INT(workpool_orphan_owner(p, a), 1);
        CHECK_INT(dropped, 1);  /* the queued one, never started */
        CHECK_INT(releases, 1);
        CHECK_INT(atomic_load(&gate_open), 0);
        CHECK_INT(workpool_pending(p, a), 0);
        CHECK_INT(workpool_pending(p, NULL), 1);
        atomic_store(&gate_open, 1);
        run_until(e, &dropped, 2);
        CHECK_INT(dropped, 2);
        CHECK_INT(releases, 2);
        CHECK_INT(done_calls, 0);
        CHECK_INT(atomic_load(&started), 1);
        workpool_free(p);
}

int main(void) {
        loop_thread = pthread_self();
        sd_event *e = NULL;
        CHECK(sd_event_new(&e) >= 0);
        test_basic(e);
        test_chain(e);
        test_cancel_owner(e);
        test_adopt_and_orphan(e);
        sd_event_unref(e);
        printf("ok\n");
        return 0;
}
