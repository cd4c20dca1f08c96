/* oldmap.c — a plugin as built against the first release of the SDK: its descriptor
 * ends at restore_state (no config_entry_size) and its config entries end at children
 * (no min, max, choices, format). Both structs are spelled out here as they were, so
 * the exported object really is that short: an agentd that read past it, or walked the
 * table with today's stride, would read the next entry's key as a limit (or, under
 * ASan, past the symbol). */
#include <stdbool.h>
#include <stddef.h>

#include <organism/plugin.h>

typedef struct v1_entry {
        const char *key;
        org_config_type type;
        const char *default_value;
        bool required;
        const char *help;
        const struct v1_entry *children;
} v1_entry;

typedef struct v1_plugin {
        uint32_t abi_version;
        uint32_t struct_size;
        const char *name;
        const char *version;
        const char *summary;
        const v1_entry *config_map;
        const org_verb *verbs;
        int (*init)(const org_host *host, org_ctx *ctx, void **ret_state);
        int (*tick)(void *state);
        int (*handle)(void *state, const org_msg *msg);
        int (*call)(void *state, const char *verb, const org_msg *request);
        void (*fini)(void *state);
        int (*verify)(void *state, char **ret_json);
        int (*save_state)(void *state, void **ret_blob, size_t *ret_len);
        int (*restore_state)(void *state, const void *blob, size_t len);
} v1_plugin;

_Static_assert(sizeof(v1_plugin) == offsetof(org_plugin, config_entry_size), "the first release's descriptor");
_Static_assert(sizeof(v1_entry) == offsetof(org_config_entry, min), "the first release's config entry");

static const v1_entry limits_entries[] = {
        {"soft", ORG_CFG_SIZE, "1GiB", false, "soft limit", NULL},
        {"hard", ORG_CFG_SIZE, NULL, false, "hard limit", NULL},
        {NULL, 0, NULL, false, NULL, NULL},
};

static const v1_entry config_map[] = {
        {"level", ORG_CFG_INT, "3", false, "any integer", NULL},
        {"mode", ORG_CFG_STRING, "fast", false, "any string", NULL},
        {"limits", ORG_CFG_OBJECT, "{}", false, "sizes", limits_entries},
        {"period", ORG_CFG_DURATION, "5s", false, "a duration", NULL},
        {NULL, 0, NULL, false, NULL, NULL},
};

static int oldmap_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        *ret_state = NULL;
        return 0;
}

static void oldmap_fini(void *state) {}

__attribute__((visibility("default"))) const v1_plugin organism_plugin = {
        .abi_version = ORG_PLUGIN_ABI_VERSION,
        .struct_size = sizeof(v1_plugin),
        .name = "oldmap",
        .version = "0.9",
        .summary = "a plugin of the first SDK release",
        .config_map = config_map,
        .init = oldmap_init,
        .fini = oldmap_fini,
};
