/* bus.c — the internal publish/subscribe bus. publish() validates, matches the subject
 * in the sublist (one hash lookup per token), builds one refcounted message in a single
 * allocation and queues a reference on each matched client's bounded ring; nothing is
 * delivered from inside publish. bus_dispatch() hands queued messages out round-robin
 * over the clients that have some, FIFO within a client, and the event loop runs it
 * from a one-shot deferred source in batches so timers and I/O stay served under load.
 * Request/reply rides on the same machinery: one internal client listens on
 * `_INBOX.<agent>.<prefix>.>` (prefix: random per process) and routes each reply to its
 * pending request; each reply subject carries a random token of its own, so a reply
 * can only come from someone who saw the request (a blind flood of guessed inboxes
 * answers nothing; such replies are counted). Everything runs on the loop thread;
 * nothing here is locked. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "bus.h"
#include "log.h"
#include "subject.h"
#include "sublist.h"
#include "util.h"

#define BUS_QUEUE_DEFAULT 4096
/* Enough to amortise the loop's per-iteration cost, small enough that a flood of bus
 * traffic cannot starve timers, signals and sockets for long. */
#define BUS_DISPATCH_BATCH 256
#define BUS_RING_MIN 16
/* Reply subjects: `<inbox prefix><id>.<token>`. 22 base62 characters are 130 random
 * bits per request; the per-process prefix (71 bits) keeps the subscription narrow. */
#define BUS_TOKEN_LEN  22
#define BUS_PREFIX_LEN 12

typedef struct bus_sub {
        uint64_t sid;
        char *pattern;
} bus_sub;

struct bus_client {
        bus *bus;
        char *name;
        bus_deliver_fn fn;
        void *userdata;

        /* Bounded FIFO; the array grows by doubling up to queue_max so that thousands of
         * idle clients do not each pin queue_max pointers. */
        bus_msg **ring;
        size_t ring_cap, head, count, queue_max;

        /* The publish generation that last matched this client: two patterns of one
         * client matching the same message yield one copy, without a per-publish set. */
        uint64_t gen;

        uint64_t delivered, dropped;

        bus_sub *subs;
        size_t n_subs, cap_subs;

        bus_client *prev, *next;             /* every client of the bus */
        bus_client *ready_prev, *ready_next; /* clients with queued messages */
        bool ready;
        bool in_deliver; /* its callback is running: freeing must wait */
        bool freed;      /* bus_client_free() ran during its own delivery */
        bool internal;   /* the request inbox: not counted in stats */
};

typedef struct bus_request_s {
        bus *bus;
        uint64_t id;
        char token[BUS_TOKEN_LEN + 1];
        bus_reply_fn cb;
        void *userdata;
        sd_event_source *source; /* time-out, or the deferred "nobody listens" */
        int error;               /* what the source reports when it fires */
} bus_request_s;

struct bus {
        sd_event *event;
        sd_event_source *defer;
        bool armed;
        bool dispatching;
        char *agent;

        sublist *subs;
        bus_client *clients;
        bus_client *ready_head, *ready_tail;
        size_t n_queued;

        uint64_t gen, seq, next_sid;

        /* Matched clients of the publish in progress, reused across publishes so the
         * hot path does not allocate. */
        bus_client **scratch;
        size_t n_scratch, cap_scratch;
        bool scratch_oom;

        uint64_t published, delivered, dropped;

        bus_client *inbox;
        char *inbox_prefix; /* "_INBOX.<agent>.<random>." */
        size_t inbox_prefix_len;
        uint64_t replies_unknown; /* under our prefix, but no pending request has that id and token */
        uint8_t rnd[256];         /* getrandom() output, used up a byte at a time */
        size_t rnd_used;
        uint64_t next_req;
        bus_request_s **reqs; /* open addressing by id */
        size_t n_reqs, cap_reqs;
};

/* ---- messages ---- */

bus_msg *bus_msg_ref(bus_msg *m) {
        if (m)
                m->refs++;
        return m;
}

void bus_msg_unref(bus_msg *m) {
        if (m && --m->refs == 0)
                free(m);
}

static bool size_add(size_t *acc, size_t v) { return !__builtin_add_overflow(*acc, v, acc); }

static char *put_str(char **p, const char *s, size_t n) {
        char *r = *p;
        memcpy(r, s, n); /* n includes the NUL */
        *p += n;
        return r;
}

/* Layout: bus_msg | org_header[n_headers] | payload NUL | subject | reply | keys and
 * values | origin. The payload comes first after the pointer-aligned header array so
 * it is aligned as well. */
static bus_msg *msg_new(const char *subject, const char *reply, const org_header *headers, size_t n_headers,
                        const void *data, size_t len, const char *origin) {
        size_t ls = strlen(subject) + 1, lr = reply ? strlen(reply) + 1 : 0, lo = strlen(origin) + 1;
        size_t total = sizeof(bus_msg);

        if (n_headers > SIZE_MAX / sizeof(org_header))
                return NULL;
        bool ok = size_add(&total, n_headers * sizeof(org_header)) && size_add(&total, len) &&
                  size_add(&total, 1) && size_add(&total, ls) && size_add(&total, lr) && size_add(&total, lo);
        for (size_t i = 0; ok && i < n_headers; i++)
                ok = size_add(&total, strlen(headers[i].key) + 1) &&
                     size_add(&total, strlen(headers[i].value ? headers[i].value : "") + 1);
        if (!ok)
                return NULL;

        bus_msg *m = malloc(total);
        if (!m)
                return NULL;
        org_header *h = (org_header *)(m + 1);
        char *p = (char *)(h + n_headers);

        m->refs = 1;
        m->seq = 0;
        m->m = (org_msg){0}; /* fields appended to org_msg later must read as absent */
        m->m.data = p;
        if (len)
                memcpy(p, data, len);
        p[len] = '\0';
        p += len + 1;
        m->m.len = len;
        m->m.subject = put_str(&p, subject, ls);
        m->m.reply = reply ? put_str(&p, reply, lr) : NULL;
        for (size_t i = 0; i < n_headers; i++) {
                const char *v = headers[i].value ? headers[i].value : "";
                h[i].key = put_str(&p, headers[i].key, strlen(headers[i].key) + 1);
                h[i].value = put_str(&p, v, strlen(v) + 1);
        }
        m->m.headers = n_headers ? h : NULL;
        m->m.n_headers = n_headers;
        m->m.origin = put_str(&p, origin, lo);
        return m;
}

/* ---- client queues ---- */

static void ready_append(bus *b, bus_client *c) {
        c->ready = true;
        c->ready_next = NULL;
        c->ready_prev = b->ready_tail;
        if (b->ready_tail)
                b->ready_tail->ready_next = c;
        else
                b->ready_head = c;
        b->ready_tail = c;
}

static void ready_unlink(bus *b, bus_client *c) {
        if (!c->ready)
                return;
        if (c->ready_prev)
                c->ready_prev->ready_next = c->ready_next;
        else
                b->ready_head = c->ready_next;
        if (c->ready_next)
                c->ready_next->ready_prev = c->ready_prev;
        else
                b->ready_tail = c->ready_prev;
        c->ready_prev = c->ready_next = NULL;
        c->ready = false;
}

static int ring_push(bus_client *c, bus_msg *m) {
        if (c->count == c->ring_cap) {
                if (c->ring_cap >= c->queue_max)
                        return -ENOBUFS;
                size_t nc = MIN(MAX(c->ring_cap * 2, (size_t)BUS_RING_MIN), c->queue_max);
                bus_msg **r = malloc(nc * sizeof(bus_msg *));
                if (!r)
                        return -ENOMEM;
                for (size_t i = 0, j = c->head; i < c->count; i++) {
                        r[i] = c->ring[j];
                        if (++j == c->ring_cap)
                                j = 0;
                }
                free(c->ring);
                c->ring = r;
                c->ring_cap = nc;
                c->head = 0;
        }
        size_t i = c->head + c->count;
        if (i >= c->ring_cap)
                i -= c->ring_cap;
        c->ring[i] = m;
        c->count++;
        return 0;
}

static bus_msg *ring_pop(bus_client *c) {
        bus_msg *m = c->ring[c->head];
        if (++c->head == c->ring_cap)
                c->head = 0;
        c->count--;
        return m;
}

static void client_drop_queue(bus_client *c) {
        bus *b = c->bus;
        while (c->count > 0) {
                bus_msg_unref(ring_pop(c));
                b->n_queued--;
        }
        ready_unlink(b, c);
        free(c->ring);
        c->ring = NULL;
        c->ring_cap = c->head = 0;
}

/* ---- deferred dispatch ---- */

static void arm(bus *b) {
        if (!b->defer || b->armed)
                return;
        if (sd_event_source_set_enabled(b->defer, SD_EVENT_ONESHOT) >= 0)
                b->armed = true;
}

static int on_defer(sd_event_source *s, void *userdata) {
        bus *b = userdata;
        b->armed = false; /* ONESHOT switched the source off before calling us */
        bus_dispatch(b, BUS_DISPATCH_BATCH);
        if (b->n_queued > 0)
                arm(b);
        return 0;
}

/* ---- random tokens ---- */

/* Base62 from getrandom() bytes, without modulo bias (bytes ≥ 248 are skipped). The
 * pool amortises the system call over about ten requests. */
static int random_base62(bus *b, char *buf, size_t n) {
        static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        for (size_t i = 0; i < n;) {
                if (b->rnd_used >= sizeof(b->rnd)) {
                        ssize_t k = getrandom(b->rnd, sizeof(b->rnd), 0);
                        if (k != (ssize_t)sizeof(b->rnd))
                                return k < 0 ? -errno : -EIO;
                        b->rnd_used = 0;
                }
                uint8_t v = b->rnd[b->rnd_used];
                b->rnd[b->rnd_used++] = 0; /* a used byte is not kept around */
                if (v < 248)
                        buf[i++] = digits[v % 62];
        }
        buf[n] = '\0';
        return 0;
}

/* ---- bus ---- */

bus *bus_new(sd_event *event, const char *agent_name) {
        if (!agent_name)
                agent_name = "local";
        /* The name becomes a token of reply subjects and the origin of messages. */
        if (!name_is_valid(agent_name))
                return NULL;

        bus *b = calloc(1, sizeof(bus));
        if (!b)
                return NULL;
        b->agent = strdup(agent_name);
        b->subs = sublist_new();
        b->rnd_used = sizeof(b->rnd); /* empty pool */
        size_t plen = strlen("_INBOX.") + strlen(agent_name) + 1 + BUS_PREFIX_LEN + 2;
        char rnd[BUS_PREFIX_LEN + 1];
        b->inbox_prefix = malloc(plen);
        if (!b->agent || !b->subs || !b->inbox_prefix || random_base62(b, rnd, BUS_PREFIX_LEN) < 0)
                goto fail;
        snprintf(b->inbox_prefix, plen, "_INBOX.%s.%s.", agent_name, rnd);
        b->inbox_prefix_len = plen - 1;

        if (event) {
                b->event = sd_event_ref(event);
                if (sd_event_add_defer(event, &b->defer, on_defer, b) < 0 ||
                    sd_event_source_set_enabled(b->defer, SD_EVENT_OFF) < 0)
                        goto fail;
                (void)sd_event_source_set_description(b->defer, "bus-dispatch");
        }
        return b;

fail:
        bus_free(b);
        return NULL;
}

static void client_destroy(bus_client *c);

void bus_free(bus *b) {
        if (!b)
                return;
        for (size_t i = 0; i < b->cap_reqs; i++) {
                bus_request_s *r = b->reqs ? b->reqs[i] : NULL;
                if (r) {
                        sd_event_source_disable_unref(r->source);
                        free(r);
                }
        }
        free(b->reqs);
        while (b->clients)
                client_destroy(b->clients);
        sublist_free(b->subs);
        free(b->scratch);
        sd_event_source_disable_unref(b->defer);
        sd_event_unref(b->event);
        free(b->inbox_prefix);
        free(b->agent);
        free(b);
}

const char *bus_agent_name(const bus *b) { return b ? b->agent : NULL; }

const char *bus_inbox_prefix(const bus *b) { return b ? b->inbox_prefix : NULL; }

/* ---- clients ---- */

bus_client *bus_client_new(bus *b, const char *name, size_t queue_max, bus_deliver_fn fn, void *userdata) {
        if (!b)
                return NULL;
        bus_client *c = calloc(1, sizeof(bus_client));
        if (!c)
                return NULL;
        c->name = strdup(name ? name : "");
        if (!c->name) {
                free(c);
                return NULL;
        }
        c->bus = b;
        c->fn = fn;
        c->userdata = userdata;
        c->queue_max = queue_max ? queue_max : BUS_QUEUE_DEFAULT;
        c->next = b->clients;
        if (b->clients)
                b->clients->prev = c;
        b->clients = c;
        return c;
}

/* Detaches the client from everything the bus can reach; its memory stays. */
static void client_release(bus_client *c) {
        bus *b = c->bus;
        bus_client_unsubscribe_all(c);
        client_drop_queue(c);
        if (c->prev)
                c->prev->next = c->next;
        else
                b->clients = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
        if (b->inbox == c)
                b->inbox = NULL;
}

static void client_destroy(bus_client *c) {
        client_release(c);
        free(c->subs);
        free(c->name);
        free(c);
}

void bus_client_free(bus_client *c) {
        if (!c || c->freed)
                return;
        if (c->in_deliver) {
                /* bus_dispatch() still holds the pointer: detach now, free on return. */
                client_release(c);
                c->freed = true;
                return;
        }
        client_destroy(c);
}

void bus_client_set_deliver(bus_client *c, bus_deliver_fn fn, void *userdata) {
        if (!c)
                return;
        c->fn = fn;
        c->userdata = userdata;
}

const char *bus_client_name(const bus_client *c) { return c ? c->name : NULL; }

int bus_subscribe(bus_client *c, const char *pattern, uint64_t *ret_sid) {
        if (!c || c->freed || !pattern_is_valid(pattern))
                return -EINVAL;
        if (c->n_subs == c->cap_subs) {
                size_t cap = c->cap_subs ? c->cap_subs * 2 : 4;
                bus_sub *s = realloc(c->subs, cap * sizeof(bus_sub));
                if (!s)
                        return -ENOMEM;
                c->subs = s;
                c->cap_subs = cap;
        }
        char *p = strdup(pattern);
        if (!p)
                return -ENOMEM;
        int r = sublist_insert(c->bus->subs, pattern, c);
        if (r < 0) {
                free(p);
                return r;
        }
        uint64_t sid = ++c->bus->next_sid;
        c->subs[c->n_subs++] = (bus_sub){.sid = sid, .pattern = p};
        if (ret_sid)
                *ret_sid = sid;
        return 0;
}

int bus_unsubscribe(bus_client *c, uint64_t sid) {
        if (!c)
                return -EINVAL;
        for (size_t i = 0; i < c->n_subs; i++) {
                if (c->subs[i].sid != sid)
                        continue;
                (void)sublist_remove(c->bus->subs, c->subs[i].pattern, c);
                free(c->subs[i].pattern);
                memmove(c->subs + i, c->subs + i + 1, (c->n_subs - i - 1) * sizeof(bus_sub));
                c->n_subs--;
                return 0;
        }
        return -ENOENT;
}

uint64_t bus_next_sid(const bus *b) { return b->next_sid + 1; }

void bus_client_unsubscribe_range(bus_client *c, uint64_t lo, uint64_t hi, uint64_t keep) {
        if (!c)
                return;
        size_t k = 0;
        for (size_t i = 0; i < c->n_subs; i++) {
                uint64_t sid = c->subs[i].sid;
                if (sid >= lo && sid < hi && sid != keep) {
                        (void)sublist_remove(c->bus->subs, c->subs[i].pattern, c);
                        free(c->subs[i].pattern);
                } else
                        c->subs[k++] = c->subs[i];
        }
        c->n_subs = k;
}

void bus_client_unsubscribe_all(bus_client *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_subs; i++) {
                (void)sublist_remove(c->bus->subs, c->subs[i].pattern, c);
                free(c->subs[i].pattern);
        }
        c->n_subs = 0;
}

char **bus_client_patterns(const bus_client *c) {
        if (!c)
                return NULL;
        char **v = calloc(c->n_subs + 1, sizeof(char *));
        if (!v)
                return NULL;
        for (size_t i = 0; i < c->n_subs; i++) {
                v[i] = strdup(c->subs[i].pattern);
                if (!v[i]) {
                        strv_free(v);
                        return NULL;
                }
        }
        return v;
}

void bus_client_get_stats(const bus_client *c, bus_client_stats *ret) {
        if (!c || !ret)
                return;
        *ret = (bus_client_stats){
                .delivered = c->delivered,
                .dropped = c->dropped,
                .queued = c->count,
                .queue_max = c->queue_max,
                .n_subs = c->n_subs,
        };
}

/* ---- publish and dispatch ---- */

static void collect(void *item, void *userdata) {
        bus *b = userdata;
        bus_client *c = item;
        if (c->gen == b->gen)
                return; /* already matched by another of its patterns */
        c->gen = b->gen;
        if (b->n_scratch == b->cap_scratch) {
                size_t cap = b->cap_scratch ? b->cap_scratch * 2 : 16;
                bus_client **s = realloc(b->scratch, cap * sizeof(bus_client *));
                if (!s) {
                        b->scratch_oom = true;
                        return;
                }
                b->scratch = s;
                b->cap_scratch = cap;
        }
        b->scratch[b->n_scratch++] = c;
}

int bus_publish(bus *b, const char *subject, const char *reply, const org_header *headers, size_t n_headers,
                const void *data, size_t len, const char *origin) {
        if (!b || !subject_is_valid(subject))
                return -EINVAL;
        if (reply && !*reply)
                reply = NULL; /* bridges hand "" for "no reply" */
        if (reply && !subject_is_valid(reply))
                return -EINVAL;
        if ((n_headers && !headers) || (len && !data))
                return -EINVAL;
        for (size_t i = 0; i < n_headers; i++)
                if (!headers[i].key)
                        return -EINVAL;

        /* Match first: a subject nobody listens to costs no allocation at all. */
        b->gen++;
        b->n_scratch = 0;
        b->scratch_oom = false;
        sublist_match(b->subs, subject, collect, b);
        if (b->scratch_oom)
                return -ENOMEM;
        b->published++;
        if (b->n_scratch == 0)
                return 0;

        bus_msg *m = msg_new(subject, reply, headers, n_headers, data, len, origin ? origin : b->agent);
        if (!m)
                return -ENOMEM;
        m->seq = b->published;

        int queued = 0;
        for (size_t i = 0; i < b->n_scratch; i++) {
                bus_client *c = b->scratch[i];
                if (ring_push(c, m) < 0) {
                        c->dropped++;
                        b->dropped++;
                        /* Powers of two: a stuck client is visible without a log flood. */
                        if ((c->dropped & (c->dropped - 1)) == 0)
                                log_warning("bus: queue of client '%s' full (%zu), %" PRIu64 " message(s) dropped",
                                            c->name, c->queue_max, c->dropped);
                        continue;
                }
                m->refs++;
                b->n_queued++;
                queued++;
                if (!c->ready)
                        ready_append(b, c);
        }
        bus_msg_unref(m);
        if (queued)
                arm(b);
        return queued;
}

size_t bus_dispatch(bus *b, size_t max) {
        /* A deliver callback that dispatches would deliver re-entrantly: refuse. */
        if (!b || b->dispatching)
                return 0;
        b->dispatching = true;

        /* Only what is queued now: messages published by the callbacks wait for the next
         * call, so a client that answers itself cannot keep us here forever. */
        size_t limit = b->n_queued, n = 0;
        if (max && max < limit)
                limit = max;

        while (n < limit && b->ready_head) {
                bus_client *c = b->ready_head;
                bus_msg *m = ring_pop(c);
                b->n_queued--;
                /* Round-robin: the client goes to the back before its callback runs, so
                 * whatever the callback frees, the list stays consistent. */
                if (c->count == 0)
                        ready_unlink(b, c);
                else if (c->ready_next) {
                        ready_unlink(b, c);
                        ready_append(b, c);
                }

                c->delivered++;
                b->delivered++;
                n++;
                if (c->fn) {
                        c->in_deliver = true;
                        c->fn(c, m, c->userdata);
                        c->in_deliver = false;
                        if (c->freed) {
                                free(c->subs);
                                free(c->name);
                                free(c);
                        }
                }
                bus_msg_unref(m);
        }

        b->dispatching = false;
        return n;
}

/* ---- request/reply ---- */

static size_t req_home(uint64_t id, size_t mask) { return (size_t)((id * 11400714819323198485ull) >> 32) & mask; }

static size_t req_find(const bus *b, uint64_t id, bool *ret_found) {
        size_t mask = b->cap_reqs - 1, i = req_home(id, mask);
        while (b->reqs[i] && b->reqs[i]->id != id)
                i = (i + 1) & mask;
        *ret_found = b->reqs[i] != NULL;
        return i;
}

static int req_put(bus *b, bus_request_s *r) {
        if ((b->n_reqs + 1) * 2 > b->cap_reqs) {
                size_t cap = b->cap_reqs ? b->cap_reqs * 2 : 16;
                bus_request_s **t = calloc(cap, sizeof(bus_request_s *));
                if (!t)
                        return -ENOMEM;
                for (size_t i = 0; i < b->cap_reqs; i++) {
                        bus_request_s *x = b->reqs[i];
                        if (!x)
                                continue;
                        size_t j = req_home(x->id, cap - 1);
                        while (t[j])
                                j = (j + 1) & (cap - 1);
                        t[j] = x;
                }
                free(b->reqs);
                b->reqs = t;
                b->cap_reqs = cap;
        }
        bool found;
        size_t i = req_find(b, r->id, &found);
        b->reqs[i] = r;
        b->n_reqs++;
        return 0;
}

/* Removes and returns the request, or NULL. Backward-shift deletion keeps probes
 * short without tombstones. */
static bus_request_s *req_take(bus *b, uint64_t id) {
        if (b->n_reqs == 0)
                return NULL;
        bool found;
        size_t i = req_find(b, id, &found);
        if (!found)
                return NULL;
        bus_request_s *r = b->reqs[i];
        size_t mask = b->cap_reqs - 1;
        b->reqs[i] = NULL;
        for (size_t j = (i + 1) & mask; b->reqs[j]; j = (j + 1) & mask) {
                size_t k = req_home(b->reqs[j]->id, mask);
                bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
                if (!stays) {
                        b->reqs[i] = b->reqs[j];
                        b->reqs[j] = NULL;
                        i = j;
                }
        }
        b->n_reqs--;
        return r;
}

static void req_finish(bus_request_s *r, int error, const bus_msg *reply) {
        bus_reply_fn cb = r->cb;
        void *ud = r->userdata;
        /* Safe inside the source's own handler: sd-event defers the actual free. */
        sd_event_source_disable_unref(r->source);
        free(r);
        cb(error, reply, ud);
}

static void inbox_deliver(bus_client *c, const bus_msg *msg, void *userdata) {
        bus *b = userdata;
        const char *s = msg->m.subject;
        if (strncmp(s, b->inbox_prefix, b->inbox_prefix_len) != 0)
                return;
        s += b->inbox_prefix_len;

        /* Strict "<decimal id>.<token>": anything else under our inbox is not one of
         * our replies. */
        uint64_t id = 0;
        if (*s < '0' || *s > '9')
                goto unknown;
        for (; *s >= '0' && *s <= '9'; s++) {
                if (id > (UINT64_MAX - 9) / 10)
                        goto unknown;
                id = id * 10 + (uint64_t)(*s - '0');
        }
        if (*s++ != '.' || strlen(s) != BUS_TOKEN_LEN)
                goto unknown;
        bool found;
        size_t i = b->n_reqs ? req_find(b, id, &found) : 0;
        if (!b->n_reqs || !found)
                goto unknown; /* also later replies to a request already answered */
        /* compared in constant time: the time taken says nothing about the token */
        unsigned char diff = 0;
        for (size_t k = 0; k < BUS_TOKEN_LEN; k++)
                diff |= (unsigned char)(s[k] ^ b->reqs[i]->token[k]);
        if (diff)
                goto unknown;
        bus_request_s *r = req_take(b, id);
        /* NATS answers a request nobody subscribed to with an empty "Status: 503"
         * message (no responders): the same as our own -ENOENT */
        const char *status = org_msg_header(&msg->m, "Status");
        if (msg->m.len == 0 && status && streq(status, "503"))
                req_finish(r, -ENOENT, NULL);
        else
                req_finish(r, 0, msg);
        return;
unknown:
        b->replies_unknown++;
}

static int inbox_ensure(bus *b) {
        if (b->inbox)
                return 0;
        bus_client *c = bus_client_new(b, "_inbox", 0, inbox_deliver, b);
        if (!c)
                return -ENOMEM;
        char pattern[128];
        snprintf(pattern, sizeof(pattern), "%s>", b->inbox_prefix);
        int r = bus_subscribe(c, pattern, NULL);
        if (r < 0) {
                bus_client_free(c);
                return r;
        }
        c->internal = true;
        b->inbox = c;
        return 0;
}

static void req_fire(bus_request_s *r) {
        bus_request_s *t = req_take(r->bus, r->id);
        if (t)
                req_finish(t, t->error, NULL);
}

static int on_req_time(sd_event_source *s, uint64_t usec, void *userdata) {
        req_fire(userdata);
        return 0;
}

static int on_req_defer(sd_event_source *s, void *userdata) {
        req_fire(userdata);
        return 0;
}

int bus_request(bus *b, const char *subject, const org_header *headers, size_t n_headers, const void *data,
                size_t len, uint64_t timeout_ms, bus_reply_fn cb, void *userdata, uint64_t *ret_id) {
        if (!b || !cb || !subject_is_valid(subject))
                return -EINVAL;
        if (!b->event)
                return -EOPNOTSUPP; /* replies and time-outs need the loop */

        int r = inbox_ensure(b);
        if (r < 0)
                return r;

        bus_request_s *req = calloc(1, sizeof(bus_request_s));
        if (!req)
                return -ENOMEM;
        req->bus = b;
        req->id = ++b->next_req;
        req->cb = cb;
        req->userdata = userdata;
        r = random_base62(b, req->token, BUS_TOKEN_LEN);
        if (r < 0) {
                free(req);
                return r;
        }

        /* agent names are at most 64 characters (name_is_valid), so this fits. */
        char reply[160];
        snprintf(reply, sizeof(reply), "%s%" PRIu64 ".%s", b->inbox_prefix, req->id, req->token);

        r = req_put(b, req);
        if (r < 0) {
                free(req);
                return r;
        }

        r = bus_publish(b, subject, reply, headers, n_headers, data, len, NULL);
        if (r < 0)
                goto fail;
        if (r == 0) {
                /* Nobody listens: say so on the next loop iteration, never from in here,
                 * so the caller can finish storing the id first. */
                req->error = -ENOENT;
                r = sd_event_add_defer(b->event, &req->source, on_req_defer, req);
                if (r >= 0)
                        r = sd_event_source_set_enabled(req->source, SD_EVENT_ONESHOT);
        } else if (timeout_ms > 0) {
                uint64_t now, until, us;
                req->error = -ETIMEDOUT;
                r = sd_event_now(b->event, CLOCK_MONOTONIC, &now);
                if (r >= 0) {
                        if (__builtin_mul_overflow(timeout_ms, USEC_PER_MSEC, &us) ||
                            __builtin_add_overflow(now, us, &until))
                                until = UINT64_MAX - 1;
                        /* 1 ms accuracy: the default 250 ms slack would dwarf short
                         * request time-outs. */
                        r = sd_event_add_time(b->event, &req->source, CLOCK_MONOTONIC, until, USEC_PER_MSEC,
                                              on_req_time, req);
                }
        }
        if (r < 0)
                goto fail;
        if (req->source)
                (void)sd_event_source_set_description(req->source, "bus-request");

        if (ret_id)
                *ret_id = req->id;
        return 0;

fail:
        req_take(b, req->id);
        sd_event_source_disable_unref(req->source);
        free(req);
        return r;
}

void bus_request_cancel(bus *b, uint64_t id) {
        if (!b)
                return;
        bus_request_s *r = req_take(b, id);
        if (!r)
                return;
        sd_event_source_disable_unref(r->source);
        free(r);
}

void bus_get_stats(const bus *b, bus_stats *ret) {
        if (!b || !ret)
                return;
        size_t n_clients = 0;
        for (bus_client *c = b->clients; c; c = c->next)
                if (!c->internal)
                        n_clients++;
        size_t n_subs = sublist_count(b->subs);
        if (b->inbox)
                n_subs -= MIN(n_subs, b->inbox->n_subs);
        *ret = (bus_stats){
                .published = b->published,
                .delivered = b->delivered,
                .dropped = b->dropped,
                .n_clients = n_clients,
                .n_subs = n_subs,
                .replies_unknown = b->replies_unknown,
        };
}
