/* bridge_stub.c — the NATS bridge of an agentd built without libnats: a config with
 * bus.nats is refused at start with a clear message. */
#include <errno.h>

#include "bridge.h"
#include "log.h"

int bridge_new(agent *a, json_t *nats_config, bridge **ret) {
        return log_error_errno(EOPNOTSUPP, "bus.nats is set, but this agentd was built without libnats (-Dnats=disabled).");
}

void bridge_free(bridge *b) {}

json_t *bridge_status(bridge *b) { return json_pack("{s:b, s:s}", "enabled", 0, "build", "without libnats"); }

bool bridge_addressed_to(const char *subject, const char *agent_name) { return false; }

int bridge_publish_durable(bridge *b, const char *subject, const char *msg_id, const void *data, size_t len,
                           bridge_pub_done_fn cb, void *userdata) {
        return -EOPNOTSUPP;
}

int bridge_consume(bridge *b, const org_consume_opts *opts, bridge_deliver_fn fn, void *userdata,
                   bridge_consumer **ret) {
        return -EOPNOTSUPP;
}

void bridge_consume_cancel(bridge_consumer *c) {}

int bridge_ack(bridge *b, uint64_t ack_token, org_ack_kind kind, uint64_t delay_ms) { return -EOPNOTSUPP; }
