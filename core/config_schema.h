/* config_schema.h — checks a YAML mapping against a config map (organism/config.h),
 * fills defaults and normalises values into JSON: durations to milliseconds, sizes to
 * bytes. The same checker serves the plugins' `config:` blocks and agentd's own
 * sections, so every key of the file is checked one way and reported one way:
 * "FILE:LINE:COL: <where>.<key>: message". */
#ifndef CORE_CONFIG_SCHEMA_H
#define CORE_CONFIG_SCHEMA_H

#include <stddef.h>

#include <jansson.h>

#include <organism/config.h>
#include <organism/plugin.h>

#include "diag.h"
#include "yamlnode.h"

/* node may be NULL (block absent: defaults only; missing required keys are reported at
 * parent_line/parent_col). where is the dotted path of the block for messages
 * ("plugins.memory.config"). Returns 0 and a new JSON object, or -EINVAL after adding
 * every fault to d (then *ret is not written). */
int config_schema_check(const org_config_entry *map, const ynode *node, const char *where, int parent_line,
                        int parent_col, json_t **ret, diag *d);
/* The same for a table whose entries are entry_size bytes apart (see config_entry_size). */
int config_schema_check_sized(const org_config_entry *map, size_t entry_size, const ynode *node, const char *where,
                              int parent_line, int parent_col, json_t **ret, diag *d);
/* The same for a plugin's config map, walked with the entry size its descriptor declares;
 * an impossible one is reported at parent_line/parent_col. */
int config_schema_check_plugin(const org_plugin *desc, const ynode *node, const char *where, int parent_line,
                               int parent_col, json_t **ret, diag *d);

/* The first release's org_config_entry (key to children: no min, max, choices, format),
 * and the largest entry believed (a newer SDK may append fields this agentd ignores). */
#define CONFIG_ENTRY_SIZE_V1 offsetof(org_config_entry, min)
#define CONFIG_ENTRY_SIZE_MAX 1024

/* The stride of desc's config tables: its config_entry_size when the descriptor is new
 * enough to carry the field, else CONFIG_ENTRY_SIZE_V1. -EPROTO when the declared size
 * is shorter than V1, misaligned or absurd. */
int config_entry_size(const org_plugin *desc, size_t *ret_size);
/* The entry after e in a table of entry_size strides. */
const org_config_entry *config_entry_next(const org_config_entry *e, size_t entry_size);

/* An entry's limits, NULL where the table's entries are too short to have the field. */
typedef struct config_limits {
        const char *min, *max;
        const char *const *choices;
        const char *format;
} config_limits;
void config_entry_limits(const org_config_entry *e, size_t entry_size, config_limits *ret);

const char *config_type_name(org_config_type t);

/* A config map as JSON documentation (agentctl plugin info, the man page generator):
 * one object per entry with key, type, required, help, and default, min, max, choices,
 * format, children where the entry has them. Returns a new reference. */
json_t *config_map_to_json(const org_config_entry *map, size_t entry_size);

/* Looks up a dotted path ("profiles.day.arc_max") in a JSON object; NULL if absent. */
json_t *config_json_path(json_t *root, const char *path);

#endif
