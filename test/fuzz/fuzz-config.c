/* fuzz-config.c — libFuzzer target for the config path: arbitrary bytes through the
 * YAML reader, agentd's own schema, and a plugin-style config map (DICT, OBJECT,
 * lists, sizes, patterns) applied to every instance's `config:` block, then the
 * fingerprints. Nothing may crash, hang on deep input, or leak. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "config.h"
#include "config_schema.h"

static const org_config_entry child_entries[] = {
        {"size", ORG_CFG_SIZE, NULL, true, "", NULL},
        {"count", ORG_CFG_INT, "3", false, "", NULL},
        ORG_CONFIG_END,
};

static const org_config_entry plugin_entries[] = {
        {"a", ORG_CFG_STRING, "x", false, "", NULL},
        {"b", ORG_CFG_BOOL, NULL, false, "", NULL},
        {"c", ORG_CFG_DOUBLE, NULL, false, "", NULL},
        {"d", ORG_CFG_DURATION, "1s", false, "", NULL},
        {"e", ORG_CFG_STRING_LIST, NULL, false, "", NULL},
        {"f", ORG_CFG_INT_LIST, NULL, false, "", NULL},
        {"g", ORG_CFG_OBJECT, "{}", false, "", child_entries + 1},
        {"h", ORG_CFG_DICT, NULL, false, "", child_entries},
        {"i", ORG_CFG_STRING_DICT, NULL, false, "", NULL},
        {"j", ORG_CFG_ANY, NULL, false, "", NULL},
        {"k", ORG_CFG_PATTERN, NULL, false, "", NULL},
        {"l", ORG_CFG_PATTERN_LIST, NULL, false, "", NULL},
        ORG_CONFIG_END,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        agent_config *c = NULL;
        diag d;

        diag_init(&d, "fuzz.yaml");
        if (config_load_string((const char *)data, size, "fuzz.yaml", &c, &d) >= 0) {
                for (size_t i = 0; i < c->n_instances; i++) {
                        instance_config *ic = &c->instances[i];
                        json_t *j = NULL;
                        free(instance_config_fingerprint(ic));
                        if (config_schema_check(plugin_entries, ic->config, "plugins.x.config", ic->line, ic->col, &j,
                                                &d) >= 0) {
                                if (!config_json_path(j, "g.count"))
                                        abort(); /* a filled default went missing */
                                ic->config_json = j; /* freed by config_free */
                                free(instance_config_fingerprint(ic));
                        }
                }
                config_free(c);
        }
        free(diag_join(&d));
        diag_done(&d);
        return 0;
}
