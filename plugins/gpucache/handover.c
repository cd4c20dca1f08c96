/* handover.c — what a `plugin reload` (or a `config reload` that restarts the instance)
 * hands from this build to the next, so a reload never blocks the loop on a final sync
 * nor fails a request whose sync gets done.
 *
 * save_state writes, per mounted layer without a disable or enable in progress, its
 * counters and the sync and prewarm in flight (the pool's job id and the address of
 * its block), and the pending requests (reply subject, what each waits for); and it
 * leaves a ticket (malloc'd, owned by the old state) whose address the blob carries.
 * restore_state adopts the jobs (host->work_adopt: the job runs on, its completion
 * comes to the new build, once), marks each layer busy with them (a request meanwhile
 * asks for one more sync after it, never a second one beside it), takes the requests
 * over, starts an off-loop sync of each idle layer it took, and then writes into the
 * ticket what it took. The old build's fini, which runs right after, reads the ticket:
 * it leaves the jobs of a taken layer running, does not answer a taken request, and
 * runs no final sync of a taken layer; what was not taken it handles as at a stop.
 *
 * The ticket is written only by a restore_state that then succeeds (it always returns
 * 0), so the reload commits and the old fini does run; after a reload refused earlier
 * (the new init failed) the ticket is untouched and a later stop is a stop. The blob's
 * addresses are used only in the process that wrote them (pid) and, for a job, only
 * once work_adopt accepted its id (the old generation still owns that block). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpucache.h"

#define GC_HANDOVER_MAGIC 0x6763686e646f7631ull /* "gchndov1" */

struct gc_handover {
        uint64_t magic;
        uint32_t format; /* GC_JOB_FORMAT */
        pid_t pid;
        bool taken;      /* the new build's restore_state is done with it */
        bool layer[GC_MAX_LAYERS];   /* by the old build's layer index */
        bool waiter[GC_MAX_WAITERS]; /* by the old build's waiter index */
};

void gc_handover_free(gc *g) {
        free(g->handover);
        g->handover = NULL;
}

bool gc_handed_layer(const gc *g, size_t i) {
        return g->handover && g->handover->taken && i < GC_MAX_LAYERS && g->handover->layer[i];
}

bool gc_handed_waiter(const gc *g, size_t k) {
        return g->handover && g->handover->taken && k < GC_MAX_WAITERS && g->handover->waiter[k];
}

static json_t *addr(const void *p) {
        char s[32];
        snprintf(s, sizeof s, "%" PRIxPTR, (uintptr_t)p);
        return json_string(s);
}

static void *addr_of(json_t *v) {
        const char *s = json_string_value(v);
        if (!s || !s[0] || strspn(s, "0123456789abcdef") != strlen(s) || strlen(s) > 16)
                return NULL;
        return (void *)(uintptr_t)strtoull(s, NULL, 16);
}

static json_t *job_json(const gc_job *j) {
        return json_pack("{s:I, s:o, s:I}", "id", (json_int_t)gc_job_id(j), "block", addr(j), "seq",
                         (json_int_t)gc_job_seq(j));
}

static uint64_t u64(json_t *o, const char *key) {
        json_int_t v = json_integer_value(json_object_get(o, key));
        return v > 0 ? (uint64_t)v : 0;
}

int gc_save_state(gc *g, void **ret_blob, size_t *ret_len) {
        gc_handover_free(g);
        gc_handover *t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;
        t->magic = GC_HANDOVER_MAGIC;
        t->format = GC_JOB_FORMAT;
        t->pid = getpid();
        g->handover = t;
        json_t *layers = json_array(), *waiters = json_array();
        for (size_t i = 0; i < g->n_layers; i++) {
                const gc_layer *l = &g->layers[i];
                bool restoring = l->state == GC_RESTORING && l->restore_job;
                if ((l->state != GC_MOUNTED && !restoring) || l->disabling || l->op_reply[0] || l->busy_job)
                        continue; /* the old fini handles it as at a stop */
                json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "i",
                                      (json_int_t)i, "name", l->name, "upper", l->upper, "persist", l->persist,
                                      "sync_seq", (json_int_t)l->sync_seq, "sync_pending", l->sync_pending,
                                      "prewarm_seq", (json_int_t)l->prewarm_seq, "syncs", (json_int_t)l->syncs,
                                      "sync_errors", (json_int_t)l->sync_errors, "sync_bytes",
                                      (json_int_t)l->sync_bytes, "last_sync_us", (json_int_t)l->last_sync_us,
                                      "last_sync_ms", (json_int_t)l->last_sync_ms, "generation",
                                      (json_int_t)l->generation, "last_error", l->last_error);
                if (o && l->sync_job)
                        json_object_set_new(o, "sync_job", job_json(l->sync_job));
                if (o && l->prewarm_job)
                        json_object_set_new(o, "prewarm_job", job_json(l->prewarm_job));
                if (o && l->restore_job)
                        json_object_set_new(o, "restore_job", job_json(l->restore_job));
                json_array_append_new(layers, o);
        }
        for (size_t k = 0; k < GC_MAX_WAITERS; k++) {
                const gc_waiter *w = &g->waiters[k];
                if (!w->used)
                        continue;
                json_t *targets = json_object();
                for (size_t i = 0; i < g->n_layers; i++)
                        if (w->target[i])
                                json_object_set_new(targets, g->layers[i].name, json_integer((json_int_t)w->target[i]));
                json_array_append_new(waiters, json_pack("{s:I, s:i, s:s, s:o, s:O}", "k", (json_int_t)k, "kind",
                                                         (int)w->kind, "reply", w->reply, "targets", targets,
                                                         "results", w->results));
        }
        json_t *o = json_pack("{s:i, s:I, s:o, s:o, s:o}", "format", GC_JOB_FORMAT, "pid", (json_int_t)getpid(),
                              "ticket", addr(t), "layers", layers, "waiters", waiters);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static gc_layer *layer_named(gc *g, const char *name) {
        for (size_t i = 0; name && i < g->n_layers; i++)
                if (strcmp(g->layers[i].name, name) == 0)
                        return &g->layers[i];
        return NULL;
}

/* Adopts the job a layer entry names; NULL when there is none, *ret_r < 0 when it
 * could not be adopted. */
static gc_job *adopt(gc *g, json_t *e, gc_job_kind kind, int *ret_r) {
        *ret_r = 0;
        json_t *jo = json_object_get(e, kind == GC_JOB_SYNC      ? "sync_job"
                                        : kind == GC_JOB_PREWARM ? "prewarm_job"
                                                                 : "restore_job");
        if (!jo)
                return NULL;
        uint64_t id = u64(jo, "id");
        gc_job *j = addr_of(json_object_get(jo, "block"));
        int r = j && id ? gc_job_adopt(g, id) : -EINVAL;
        /* from here on the block is alive (the old generation owns it until commit) */
        if (r == 0 && (!gc_job_valid(j) || gc_job_id(j) != id || gc_job_kind_of(j) != kind))
                r = -EPROTO; /* adopted all the same: its completion finds no layer and frees it */
        *ret_r = r;
        return r == 0 ? j : NULL;
}

int gc_restore_state(gc *g, const void *blob, size_t len) {
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        gc_handover *t = o ? addr_of(json_object_get(o, "ticket")) : NULL;
        if (!o || json_integer_value(json_object_get(o, "format")) != GC_JOB_FORMAT ||
            u64(o, "pid") != (uint64_t)getpid() || !ORG_HOST_HAS(g->host, work_adopt) || !t ||
            t->magic != GC_HANDOVER_MAGIC || t->format != GC_JOB_FORMAT || t->pid != getpid()) {
                g->host->log(g->ctx, ORG_LOG_NOTICE,
                             "the previous build's state is not one this build takes over: it finishes its own "
                             "work (final sync)");
                json_decref(o);
                return 0;
        }
        bool took[GC_MAX_LAYERS] = {false}, prewarm_took[GC_MAX_LAYERS] = {false};
        size_t i;
        json_t *v;
        json_array_foreach (json_object_get(o, "layers"), i, v) {
                uint64_t oi = u64(v, "i");
                gc_layer *l = layer_named(g, json_string_value(json_object_get(v, "name")));
                const char *upper = json_string_value(json_object_get(v, "upper"));
                const char *persist = json_string_value(json_object_get(v, "persist"));
                if (oi >= GC_MAX_LAYERS || !l || !upper || !persist || strcmp(l->upper, upper) != 0 ||
                    strcmp(l->persist, persist) != 0 || l->sync_job || l->prewarm_job || l->restore_job ||
                    l->busy_job)
                        continue; /* not the same layer here: the old build finishes it */
                int r;
                if (json_object_get(v, "restore_job")) {
                        /* layer.c left it waiting (restoring) for exactly this */
                        if (l->state != GC_RESTORING || !l->restore_inherited)
                                continue;
                        gc_job *rj = adopt(g, v, GC_JOB_RESTORE, &r);
                        if (r < 0 || !rj) {
                                g->host->log(g->ctx, ORG_LOG_WARNING, "%s: cannot adopt the running restore: %s",
                                             l->name, strerror(r < 0 ? -r : EINVAL));
                                continue;
                        }
                        l->restore_job = rj;
                        t->layer[oi] = true;
                        g->host->log(g->ctx, ORG_LOG_NOTICE, "%s: restore of the previous build adopted: it runs on, "
                                     "the overlay goes on here", l->name);
                        continue;
                }
                if (l->state != GC_MOUNTED)
                        continue;
                gc_job *sj = adopt(g, v, GC_JOB_SYNC, &r);
                if (r < 0) {
                        g->host->log(g->ctx, ORG_LOG_WARNING, "%s: cannot adopt the running sync: %s", l->name,
                                     strerror(-r));
                        continue;
                }
                size_t ni = (size_t)(l - g->layers);
                took[ni] = true;
                l->sync_seq = u64(v, "sync_seq");
                l->sync_pending = json_is_true(json_object_get(v, "sync_pending"));
                l->prewarm_seq = u64(v, "prewarm_seq");
                l->syncs = u64(v, "syncs");
                l->sync_errors = u64(v, "sync_errors");
                l->sync_bytes = u64(v, "sync_bytes");
                l->last_sync_us = u64(v, "last_sync_us");
                l->last_sync_ms = u64(v, "last_sync_ms");
                if (u64(v, "generation"))
                        l->generation = u64(v, "generation");
                const char *last_error = json_string_value(json_object_get(v, "last_error"));
                snprintf(l->last_error, sizeof l->last_error, "%s", last_error ? last_error : "");
                if (sj) {
                        l->sync_job = sj;
                        l->syncing = true;
                        g->host->log(g->ctx, ORG_LOG_NOTICE, "%s: sync %" PRIu64 " of the previous build adopted: it "
                                     "runs on, reported here", l->name, gc_job_seq(sj));
                }
                gc_job *pj = adopt(g, v, GC_JOB_PREWARM, &r);
                if (r < 0)
                        g->host->log(g->ctx, ORG_LOG_WARNING, "%s: cannot adopt the running prewarm: %s", l->name,
                                     strerror(-r));
                else if (pj) {
                        l->prewarm_job = pj;
                        l->prewarming = true;
                        prewarm_took[ni] = true;
                }
                t->layer[oi] = true;
        }
        json_array_foreach (json_object_get(o, "waiters"), i, v) {
                uint64_t ok = u64(v, "k");
                int kind = (int)json_integer_value(json_object_get(v, "kind"));
                const char *reply = json_string_value(json_object_get(v, "reply"));
                json_t *results = json_object_get(v, "results");
                if (ok >= GC_MAX_WAITERS || (kind != GC_WAIT_SYNC && kind != GC_WAIT_PREWARM) || !reply ||
                    !json_is_array(results))
                        continue;
                gc_waiter *w = NULL;
                for (size_t k = 0; k < GC_MAX_WAITERS && !w; k++)
                        if (!g->waiters[k].used)
                                w = &g->waiters[k];
                if (!w)
                        break;
                uint64_t target[GC_MAX_LAYERS] = {0};
                bool all = true;
                const char *name;
                json_t *seq;
                json_object_foreach (json_object_get(v, "targets"), name, seq) {
                        gc_layer *l = layer_named(g, name);
                        size_t ni = l ? (size_t)(l - g->layers) : 0;
                        if (!l || !took[ni] || (kind == GC_WAIT_PREWARM && !prewarm_took[ni]) ||
                            json_integer_value(seq) <= 0) {
                                all = false;
                                break;
                        }
                        target[ni] = (uint64_t)json_integer_value(seq);
                }
                if (!all)
                        continue; /* the old build answers it */
                w->used = true;
                w->kind = (gc_kind)kind;
                snprintf(w->reply, sizeof w->reply, "%s", reply);
                memcpy(w->target, target, sizeof w->target);
                w->results = json_deep_copy(results);
                t->waiter[ok] = true;
        }
        /* what the old build would have synced on the loop at its fini, synced here off it */
        for (size_t k = 0; k < g->n_layers; k++)
                if (took[k] && !g->layers[k].sync_job)
                        (void)gc_layer_sync(g, &g->layers[k]);
        t->taken = true;
        json_decref(o);
        return 0;
}
