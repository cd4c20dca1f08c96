/* bridge_stub.c — the NATS bridge of an agentd built without libnats: a config with
 * bus.nats is refused at start with a clear message. */
#include "bridge.h"
#include "log.h"

int bridge_new(agent *a, json_t *nats_config, bridge **ret) {
        return log_error_errno(EOPNOTSUPP, "bus.nats is set, but this agentd was built without libnats (-Dnats=disabled).");
}

void bridge_free(bridge *b) {}

json_t *bridge_status(bridge *b) { return json_pack("{s:b, s:s}", "enabled", 0, "build", "without libnats"); }

bool bridge_addressed_to(const char *subject, const char *agent_name) { return false; }
