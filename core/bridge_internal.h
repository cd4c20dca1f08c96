/* bridge_internal.h — what bridge.c (core NATS) and bridge_js.c (JetStream) share:
 * the bridge state and the one way from any thread back to the loop, a queue of
 * items that the loop runs after an eventfd wake-up. Private to those two files. */
#ifndef CORE_BRIDGE_INTERNAL_H
#define CORE_BRIDGE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <nats/nats.h>

#include "bridge.h"
#include "bus.h"

#define POST_QUEUE_MAX 65536               /* items waiting for the loop; beyond, bounded posts are refused */
#define POST_QUEUE_MAX_BYTES (256u << 20)  /* and their payload bytes */
#define POST_BATCH 4096                     /* items run per loop wake-up */

typedef struct post_item post_item;
struct post_item {
        post_item *next;
        size_t bytes;                            /* payload size, for the queue's byte bound */
        void (*run)(bridge *b, post_item *it);  /* on the loop; frees it */
        void (*drop)(post_item *it);             /* never ran (shutdown); frees it */
};

typedef struct import_sub {
        bridge *bridge;
        size_t index;          /* order among the import subscriptions */
        char *pattern;
        natsSubscription *sub;
} import_sub;

typedef struct js_state js_state;

typedef struct reply_slot {
        uint64_t hash, expires_us; /* hash 0: free */
} reply_slot;

struct bridge {
        agent *agent;
        char *self;            /* this agent's name */
        char *url;             /* the first server, for messages */
        natsOptions *opts;
        natsConnection *nc;    /* bulk: batched writes (libnats' flusher), imports */
        natsConnection *fast;  /* request/reply and JetStream: every write goes out at once */
        bus_client *exporter;
        char *scratch; /* export: encoded headers + payload of the message at hand (loop only) */
        size_t scratch_size;
        bool raw_msgs;         /* export builds messages from encoded headers (see bridge.c) */
        import_sub *imports;   /* the configured patterns (bulk), then inbox and control (fast) */
        size_t n_imports, n_user_imports;
        bool remote_control;
        js_state *js;          /* JetStream: streams, durable publish and consumers */

        /* any thread → loop */
        pthread_mutex_t lock;
        post_item *head, *tail;
        size_t queued, queued_bytes;
        int efd;
        sd_event_source *efd_source;

        /* round-trip time, measured off the loop (natsConnection_GetRTT blocks) */
        pthread_t rtt_thread;
        bool rtt_started;
        pthread_mutex_t rtt_lock;
        pthread_cond_t rtt_cond;
        _Atomic bool stopping;

        _Atomic uint64_t rtt_us, exported, export_dropped, imported, import_dropped, echo_dropped, duplicates,
                disconnects, slow_consumers, errors;
        _Atomic bool connected, fast_connected;
        /* Reply subjects of the requests this agent sent over NATS (a hash each), so a
         * reply to anything else is dropped on the libnats thread and never fills the
         * queue to the loop (the bus checks the token again). Open addressing in
         * windows of REPLY_WINDOW slots; a full window turns the filter off for as long
         * as a slot is kept, rather than ever dropping a real reply. */
        pthread_mutex_t replies_lock;
        reply_slot *replies;
        uint64_t replies_seed;
        uint64_t replies_open_until_us; /* a window was full: no filter until then */
        _Atomic uint64_t replies_unknown;
        /* libnats' Buffered() leaves out its reconnect buffer: what went into it is the
         * connection's out_bytes since it went down, so each is noted then ([0] bulk, [1] fast) */
        _Atomic uint64_t out_bytes_at_down[2];
};

/* From any thread. bounded: refuse (false) when the queue is full. */
bool bridge_post(bridge *b, post_item *it, bool bounded);
const char *bridge_nats_error(natsStatus s);

/* bridge_js.c */
int js_init(bridge *b, json_t *jetstream_config);  /* before the connections exist */
int js_start(bridge *b);                          /* once they do */
void js_on_connected(bridge *b);   /* any thread: (re)create streams, wake waiters */
void js_stop(bridge *b);           /* stops threads; before the connection closes */
void js_free(bridge *b);           /* after every libnats thread is gone */
json_t *js_status(bridge *b);

#endif
