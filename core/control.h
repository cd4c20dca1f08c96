/* control.h — the Unix control socket: one JSON object per line each way.
 *
 *   server → {"hello":"agentd","protocol":1,"version":..,"agent":..,"access":"admin"|"read-only"}
 *   client → {"id":1,"verb":"plugin.list","args":{...},"protocol":1}
 *   server → {"id":1,"ok":true,"result":...} | {"id":1,"ok":false,"error":"...","errno":"EPERM"}
 *   streams: {"id":1,"event":{...}} ... then {"id":1,"end":true,"count":N,...}
 *
 * SO_PEERCRED decides the access: root (or agentd's own uid) may do everything, members
 * of group `organism` the read-only verbs, everyone else is refused at the hello. */
#ifndef CORE_CONTROL_H
#define CORE_CONTROL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "agent.h"

#define CTL_PROTOCOL 1
#define CTL_MAX_LINE (1u << 20)      /* a request line larger than this is refused */
#define CTL_MAX_OUTPUT (8u << 20)    /* stream events beyond this much unsent output are dropped */
/* A request's id is echoed in its answer and in every event of its stream: an integer
 * or a string of at most this many bytes, or the request is refused (EINVAL). */
#define CTL_MAX_ID 256
/* Streams (bus.sub) open at once: each holds a bus subscription and its queue. Enough
 * for any operator's terminals; beyond it EBUSY. */
#define CTL_MAX_STREAMS_CONN 16
#define CTL_MAX_STREAMS_UID 64
/* Requests of one connection awaiting their answer (streams, calls, bus requests):
 * beyond it no further line is read until one ends (back-pressure, not an error). */
#define CTL_MAX_PENDING 64
/* Connections only root (or agentd's own uid) may take, out of control.max_connections,
 * so that a crowd of read-only peers never locks the administrator out. */
#define CTL_ROOT_RESERVED 4
/* Work for one peer in one wake-up of the loop: then back to the loop (ticks, bus,
 * other peers, the watchdog ping), and the rest in a later turn. */
#define CTL_LINES_PER_WAKEUP 64
#define CTL_USEC_PER_WAKEUP 2000
#define CTL_READ_CHUNK (64u << 10)

typedef struct ctl_conn ctl_conn;
typedef struct ctl_request ctl_request;

struct ctl_request {
        ctl_conn *conn;              /* NULL once the peer went away (or for a remote request) */
        char *reply_subject;         /* a request that came over the bus from another agent */
        agent *agent;
        json_t *id;
        char *verb;
        json_t *args;                /* always an object */
        bool admin;
        uint64_t sent;               /* stream events sent */
        uint64_t dropped;            /* stream events dropped (output full) */
        /* A verb that answers later sets these; on_close runs when the peer leaves
         * first (the verb must then cancel its work and call ctl_request_free). */
        void *data;
        void (*on_close)(ctl_request *q);
        ctl_request *next;
        bool stream;                 /* counted against CTL_MAX_STREAMS_* */
};

int control_new(agent *a, const char *path, control **ret);
void control_free(control *c); /* accepts NULL; closes every connection */

/* Answers and frees q. result/extra are stolen (may be NULL). */
void ctl_reply_ok(ctl_request *q, json_t *result);
void ctl_reply_error(ctl_request *q, int error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sends one stream event (stolen). -ENOBUFS when the peer is too slow: dropped. */
int ctl_stream_send(ctl_request *q, json_t *event);
/* Ends a stream with {"end":true,"count":sent,"dropped":..} plus extra's members. */
void ctl_stream_end(ctl_request *q, json_t *extra);
/* Frees a request whose connection is gone (from on_close or later). */
void ctl_request_free(ctl_request *q);

/* Serves organism.ctl.<agent>._agent.<verb> on the bus: the control verbs for other
 * agents (through the NATS bridge). admin: mutating verbs allowed too. */
int control_remote_start(control *c, bool admin);

/* Figures for `agentctl status`: connections open, output bytes buffered, refused. */
json_t *control_status(const control *c);

/* ctl_verbs.c: the verbs. */
typedef struct ctl_verb {
        const char *name;
        bool mutating;
        void (*run)(ctl_request *q);
        bool stream;                 /* answers with a stream that lasts (bus.sub) */
} ctl_verb;
const ctl_verb *ctl_verb_find(const char *name);
/* Sends q to agent `target` over the bus (agentctl --agent). */
void ctl_forward(ctl_request *q, const char *target);

#endif
