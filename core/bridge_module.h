/* bridge_module.h — the one table between agentd and its NATS bridge module,
 * organism-bridge.so (bridge.c, bridge_js.c and, through them, libnats, libssl and
 * libcrypto). agentd dlopens the module only when bus.nats is configured, so an agentd
 * without it maps none of these libraries. The module is part of the same build as
 * agentd (it reads agentd's structures): `abi` and the sizes below catch a module from
 * another build. It calls back into agentd through the few functions agentd exports
 * (core/agentd.dynlist). */
#ifndef CORE_BRIDGE_MODULE_H
#define CORE_BRIDGE_MODULE_H

#include <stdint.h>

#include "bridge.h"

#define BRIDGE_MODULE_SYMBOL "organism_bridge_module"
#define BRIDGE_MODULE_ABI    1

typedef struct bridge_module {
        uint32_t abi;        /* BRIDGE_MODULE_ABI */
        uint32_t size;       /* sizeof(bridge_module) */
        const char *version; /* ORG_VERSION */
        uint32_t agent_size; /* sizeof(agent) as the module was built: same build */
        int (*bridge_new)(agent *a, json_t *nats_config, bridge **ret);
        void (*bridge_free)(bridge *b);
        json_t *(*bridge_status)(bridge *b);
        int (*bridge_publish_durable)(bridge *b, const char *subject, const char *msg_id, const void *data, size_t len,
                                      bridge_pub_done_fn cb, void *userdata);
        int (*bridge_consume)(bridge *b, const org_consume_opts *opts, bridge_deliver_fn fn, void *userdata,
                              bridge_consumer **ret);
        void (*bridge_consume_cancel)(bridge_consumer *c);
        int (*bridge_ack)(bridge *b, uint64_t ack_token, org_ack_kind kind, uint64_t delay_ms);
} bridge_module;

/* In the module, the one symbol it exports. */
extern const bridge_module organism_bridge_module;

#endif
