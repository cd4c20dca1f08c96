/* bus.h — the internal publish/subscribe bus.
 *
 * Subjects and patterns follow NATS syntax (subject.h); subscriptions live in a token
 * trie (sublist.h). A subscriber is a *client* with one bounded FIFO queue: a plugin
 * instance, a `bus sub` stream of the control socket, the NATS bridge. publish() only
 * matches and queues (one refcounted copy of the message, shared by every queue); the
 * loop delivers later, so delivery is never re-entrant from publish and a slow client
 * only fills its own queue and counts drops. A client matched by several of its
 * patterns gets the message once. Requests use reply subjects
 * `_INBOX.<agent>.<prefix>.<n>.<token>`: random prefix per bus, random token per request. */
#ifndef CORE_BUS_H
#define CORE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include <organism/msg.h>

typedef struct bus bus;
typedef struct bus_client bus_client;

/* An immutable message in one allocation; `m` points into it. */
typedef struct bus_msg {
        unsigned refs;
        uint64_t seq;   /* publish order, from 1 */
        org_msg m;
} bus_msg;

bus_msg *bus_msg_ref(bus_msg *m);
void bus_msg_unref(bus_msg *m); /* accepts NULL */

typedef void (*bus_deliver_fn)(bus_client *c, const bus_msg *msg, void *userdata);

/* With a NULL event loop nothing is delivered until bus_dispatch() is called (tests,
 * benchmarks). The agent name is copied; it is the origin of local messages. */
bus *bus_new(sd_event *event, const char *agent_name);
void bus_free(bus *b); /* accepts NULL; frees remaining clients */
const char *bus_agent_name(const bus *b);
/* "_INBOX.<agent>.<prefix>.": every reply subject of this bus's requests starts so. */
const char *bus_inbox_prefix(const bus *b);

/* queue_max 0 means the default (4096). name is for logs and stats. */
bus_client *bus_client_new(bus *b, const char *name, size_t queue_max, bus_deliver_fn fn, void *userdata);
void bus_client_free(bus_client *c); /* accepts NULL; unsubscribes all, drops its queue */
void bus_client_set_deliver(bus_client *c, bus_deliver_fn fn, void *userdata);
const char *bus_client_name(const bus_client *c);

int bus_subscribe(bus_client *c, const char *pattern, uint64_t *ret_sid);
int bus_unsubscribe(bus_client *c, uint64_t sid);
void bus_client_unsubscribe_all(bus_client *c);
/* Subscription ids only grow: the id the next subscription will get splits a client's
 * subscriptions into "before" and "after" (plugin generations on reload). */
uint64_t bus_next_sid(const bus *b);
/* Removes the client's subscriptions with lo <= sid < hi, except `keep` (0: none). */
void bus_client_unsubscribe_range(bus_client *c, uint64_t lo, uint64_t hi, uint64_t keep);
/* malloc'd NULL-terminated copy of the client's patterns, in subscription order. */
char **bus_client_patterns(const bus_client *c);

typedef struct bus_client_stats {
        uint64_t delivered;
        uint64_t dropped;
        size_t queued;
        size_t queue_max;
        size_t n_subs;
} bus_client_stats;
void bus_client_get_stats(const bus_client *c, bus_client_stats *ret);

/* Copies everything. origin NULL means this agent. Returns the number of clients the
 * message was queued for (0 when nobody listens), or -EINVAL for a bad subject,
 * -ENOMEM. A message that finds a full queue is dropped for that client only. */
int bus_publish(bus *b, const char *subject, const char *reply, const org_header *headers, size_t n_headers,
                const void *data, size_t len, const char *origin);

/* Delivers up to max queued messages (0 = all) now; returns how many. The loop calls
 * this from a deferred event source; tests without a loop call it by hand. */
size_t bus_dispatch(bus *b, size_t max);

/* Request/reply: publishes with a fresh reply subject and calls cb once, on the loop,
 * with the first reply, or with -ENOENT (no subscriber) or -ETIMEDOUT. Needs a loop. */
typedef void (*bus_reply_fn)(int error, const bus_msg *reply, void *userdata);
int bus_request(bus *b, const char *subject, const org_header *headers, size_t n_headers, const void *data,
                size_t len, uint64_t timeout_ms, bus_reply_fn cb, void *userdata, uint64_t *ret_id);
/* Forgets a pending request: cb will not be called. */
void bus_request_cancel(bus *b, uint64_t id);

typedef struct bus_stats {
        uint64_t published;
        uint64_t delivered;
        uint64_t dropped;
        size_t n_clients;
        size_t n_subs;
        uint64_t replies_unknown; /* under our inbox prefix but matching no pending request and token */
} bus_stats;
void bus_get_stats(const bus *b, bus_stats *ret);

#endif
