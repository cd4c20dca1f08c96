/* organism/plugin.h — what a plugin `.so` exports: one constant descriptor.
 *
 * The loader reads `abi_version` and `struct_size` first and refuses a descriptor of
 * another ABI or one smaller than the ABI's first release before touching any other
 * field. Fields are only ever appended, so a newer agentd reads an older plugin (it sees
 * a smaller struct_size and treats the missing hooks as absent).
 *
 * Lifecycle, all on the daemon's loop thread:
 *   init(host, ctx, &state)  → subscribe, start timers; a non-zero return marks the
 *                              instance failed, with the reason logged.
 *   tick(state)              → every `interval` of the instance (coalesced: after a stall
 *                              one late tick, not a burst; the rest count in
 *                              ticks_skipped_total).
 *   handle(state, msg)       → each bus message matching the instance's subscriptions.
 *   call(state, verb, req)   → `agentctl call INSTANCE VERB`; answer with host->respond.
 *   verify(state, &json)     → desired vs actual for `agentctl audit`.
 *   save_state / restore_state → hand state from the old to the new .so on reload.
 *   fini(state)              → release everything.
 * A hook must not block: long work belongs to host->exec or a thread whose result is
 * posted back with a timer or a bus message. */
#ifndef ORGANISM_PLUGIN_H
#define ORGANISM_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <organism/config.h>
#include <organism/host.h>
#include <organism/msg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ORG_PLUGIN_ABI_VERSION 1u
#define ORG_PLUGIN_SYMBOL "organism_plugin"

typedef struct org_plugin {
        uint32_t abi_version;     /* ORG_PLUGIN_ABI_VERSION */
        uint32_t struct_size;     /* sizeof(org_plugin) as the plugin was built */

        const char *name;         /* matches the plugin's file name: <name>.so */
        const char *version;
        const char *summary;
        const org_config_entry *config_map; /* may be NULL: the config block must be empty */
        const org_verb *verbs;              /* may be NULL */

        int (*init)(const org_host *host, org_ctx *ctx, void **ret_state);
        int (*tick)(void *state);
        int (*handle)(void *state, const org_msg *msg);
        int (*call)(void *state, const char *verb, const org_msg *request);
        void (*fini)(void *state);

        /* Optional. Writes a malloc'd JSON object {"ok": bool, "checks": [{"what",
         * "want", "have", "ok"}...]}. */
        int (*verify)(void *state, char **ret_json);
        /* Optional, both or neither: malloc'd blob from the old instance, handed to the
         * new one right after its init. */
        int (*save_state)(void *state, void **ret_blob, size_t *ret_len);
        int (*restore_state)(void *state, const void *blob, size_t len);

        /* sizeof(org_config_entry) as the plugin was built: the stride of config_map and
         * of every children table. Absent (older plugin) = the first release's entry. */
        uint32_t config_entry_size;
} org_plugin;

/* Use once per plugin: ORG_PLUGIN_DEFINE(.name = "example", .init = ..., ...). */
#define ORG_PLUGIN_DEFINE(...)                                                               \
        __attribute__((visibility("default"))) const org_plugin organism_plugin = {           \
                .abi_version = ORG_PLUGIN_ABI_VERSION,                                         \
                .struct_size = sizeof(org_plugin),                                             \
                .config_entry_size = sizeof(org_config_entry),                                 \
                __VA_ARGS__}

#ifdef __cplusplus
}
#endif
#endif
