/* peers.h — the other agents on the NATS bus, as this agent has heard them.
 *
 * With the bridge on, every agent announces itself on `organism.agent.<name>`
 * ({agent, version, ts, hello}) at start (hello: true) and every PEERS_ANNOUNCE_S
 * seconds; one that hears a hello, or an agent it did not know, answers with its own
 * announcement, so a new agent knows the others within a round
 * trip. The bridge always exports and imports that subject family. `agentctl agents`
 * lists what is known, and `agentctl audit --all-agents` audits each of them. */
#ifndef CORE_PEERS_H
#define CORE_PEERS_H

#include <jansson.h>

#include "agent.h"

#define PEERS_ANNOUNCE_S 10
#define PEERS_STALE_S    (3 * PEERS_ANNOUNCE_S) /* not heard for that long: listed as stale */
#define PEERS_FORGET_S   600                     /* and forgotten after this */
#define PEERS_MAX        256

typedef struct peers peers;

int peers_new(agent *a, peers **ret);
void peers_free(peers *p); /* accepts NULL */

/* [{agent, version, last_seen, age_ms, stale}], sorted by name, new reference; the
 * agent itself is not in it. */
json_t *peers_to_json(peers *p);

#endif
