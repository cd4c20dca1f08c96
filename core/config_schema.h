/* config_schema.h — checks a YAML mapping against a config map (organism/config.h),
 * fills defaults and normalises values into JSON: durations to milliseconds, sizes to
 * bytes. The same checker serves the plugins' `config:` blocks and agentd's own
 * sections, so every key of the file is checked one way and reported one way:
 * "FILE:LINE:COL: <where>.<key>: message". */
#ifndef CORE_CONFIG_SCHEMA_H
#define CORE_CONFIG_SCHEMA_H

#include <jansson.h>

#include <organism/config.h>

#include "diag.h"
#include "yamlnode.h"

/* node may be NULL (block absent: defaults only; missing required keys are reported at
 * parent_line/parent_col). where is the dotted path of the block for messages
 * ("plugins.memory.config"). Returns 0 and a new JSON object, or -EINVAL after adding
 * every fault to d (then *ret is not written). */
int config_schema_check(const org_config_entry *map, const ynode *node, const char *where, int parent_line,
                        int parent_col, json_t **ret, diag *d);

const char *config_type_name(org_config_type t);

/* Looks up a dotted path ("profiles.day.arc_max") in a JSON object; NULL if absent. */
json_t *config_json_path(json_t *root, const char *path);

#endif
