/* organism/msg.h — the bus message a plugin receives and publishes.
 *
 * Subjects follow NATS syntax: dot-separated tokens; in subscription patterns `*`
 * matches one token and `>` the rest. Payloads are bytes (by convention a JSON object
 * with a "ts" field). A message handed to a hook is only valid during that call: copy
 * what you keep. */
#ifndef ORGANISM_MSG_H
#define ORGANISM_MSG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One header line. Keys are case-sensitive; a message may repeat a key. */
typedef struct org_header {
        const char *key;
        const char *value;
} org_header;

typedef struct org_msg {
        const char *subject;      /* never NULL */
        const char *reply;        /* reply subject of a request, or NULL */
        const org_header *headers;
        size_t n_headers;
        const void *data;         /* payload, always followed by a NUL byte (not counted) */
        size_t len;
        const char *origin;       /* name of the agent that published it first */
        /* Durable messages (host->consume_durable) only, 0 otherwise: the token to
         * pass to host->ack, and how many times this message was delivered. */
        uint64_t ack_token;
        uint64_t delivery_count;
} org_msg;

/* Returns the value of the first header named KEY, or NULL. */
static inline const char *org_msg_header(const org_msg *m, const char *key) {
        for (size_t i = 0; i < m->n_headers; i++) {
                const char *a = m->headers[i].key, *b = key;
                while (*a && *a == *b) {
                        a++;
                        b++;
                }
                if (*a == '\0' && *b == '\0')
                        return m->headers[i].value;
        }
        return NULL;
}

#ifdef __cplusplus
}
#endif
#endif
