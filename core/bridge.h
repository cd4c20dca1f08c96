/* bridge.h — the NATS bridge: the internal bus reaches NATS (libnats), so agents on
 * several hosts cooperate.
 *
 * Export: messages that originate in this agent and match `bus.nats.export` are
 * published to NATS with an `Organism-Origin` header. Import: messages from NATS
 * matching `bus.nats.import` are published on the local bus with their origin agent;
 * they are never exported again, and a message whose origin is this agent is dropped,
 * so agents sharing a server never echo. Requests cross too: replies travel on
 * `_INBOX.<agent>.<random prefix>.<n>.<token>` (only that prefix is imported; see bus.h)
 * and control requests on `organism.ctl.<agent>.>`.
 *
 * libnats calls back on its own threads: those callbacks only queue and wake the loop
 * through an eventfd; plugin code never runs on a libnats thread. */
#ifndef CORE_BRIDGE_H
#define CORE_BRIDGE_H

#include <stdbool.h>

#include <jansson.h>

#include <organism/host.h>

#include "agent.h"

#define BRIDGE_ORIGIN_HEADER "Organism-Origin"

typedef struct bridge bridge;

/* Connects in the background: a server that is down does not stop the agent (exports
 * are buffered up to reconnect_buffer, then counted as dropped). -EOPNOTSUPP when
 * agentd was built without libnats. */
int bridge_new(agent *a, json_t *nats_config, bridge **ret);
void bridge_free(bridge *b); /* accepts NULL */

/* {"enabled","connected","server","rtt_us","in_msgs",...}, new reference. */
json_t *bridge_status(bridge *b);

/* Durable publish (JetStream): 0 once queued; cb runs on the loop, always, with 0
 * when the server stored it (or knew it already by msg_id), or a negative errno. */
typedef void (*bridge_pub_done_fn)(int error, void *userdata);
int bridge_publish_durable(bridge *b, const char *subject, const char *msg_id, const void *data, size_t len,
                           bridge_pub_done_fn cb, void *userdata);

/* Durable consumer: fn runs on the loop for each message (msg->ack_token set). */
typedef struct bridge_consumer bridge_consumer;
typedef void (*bridge_deliver_fn)(const org_msg *msg, void *userdata);
int bridge_consume(bridge *b, const org_consume_opts *opts, bridge_deliver_fn fn, void *userdata,
                   bridge_consumer **ret);
/* Stops it; messages it holds unacked go back to the server at once. */
void bridge_consume_cancel(bridge_consumer *c);
int bridge_ack(bridge *b, uint64_t ack_token, org_ack_kind kind, uint64_t delay_ms);

/* Is `subject` (organism.ctl.<agent>.… or _INBOX.<agent>.…) addressed to agent? */
bool bridge_addressed_to(const char *subject, const char *agent_name);

#endif
