/* organism/config.h — a plugin's config map: the schema of its `config:` block.
 *
 * agentd validates every instance's block against this table before the plugin runs
 * (`agentd --check` reports FILE:LINE:COL for each fault), fills in defaults, and
 * normalises values: durations become integer milliseconds, sizes integer bytes. The
 * plugin then reads the result through the host (`config_json`, `config_*` getters), so
 * it never parses YAML and never sees a value of the wrong type. `agentctl plugin info`
 * prints the same table as documentation. */
#ifndef ORGANISM_CONFIG_H
#define ORGANISM_CONFIG_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum org_config_type {
        ORG_CFG_STRING = 1,
        ORG_CFG_INT,          /* 64-bit signed integer */
        ORG_CFG_BOOL,
        ORG_CFG_DOUBLE,
        ORG_CFG_DURATION,     /* "250ms", "5s", "2m", "1h30m", "7d" → milliseconds */
        ORG_CFG_SIZE,         /* "512", "64KiB", "3GiB", "2G" (powers of 1024) → bytes */
        ORG_CFG_STRING_LIST,  /* sequence of strings */
        ORG_CFG_INT_LIST,     /* sequence of integers */
        ORG_CFG_OBJECT,       /* a mapping whose keys are given by `children` */
        ORG_CFG_DICT,         /* name → mapping checked against `children` (e.g. profiles) */
        ORG_CFG_STRING_DICT,  /* name → string (e.g. phases: {day: "07:00"}) */
        ORG_CFG_ANY,          /* any YAML value, passed through as JSON, unchecked */
        ORG_CFG_PATTERN,      /* a bus subscription pattern ("gpu.task.*", "alert.>") */
        ORG_CFG_PATTERN_LIST, /* sequence of patterns */
        ORG_CFG_OBJECT_LIST,  /* sequence of mappings, each checked against `children` */
} org_config_type;

typedef struct org_config_entry {
        const char *key;                  /* NULL ends a table */
        org_config_type type;
        const char *default_value;        /* YAML text of the default, or NULL for none */
        bool required;
        const char *help;                 /* one line of documentation */
        const struct org_config_entry *children; /* for OBJECT, DICT and OBJECT_LIST */

        /* Appended after the first release: the loader reads them only from a plugin whose
         * descriptor says its entries are this large (org_plugin.config_entry_size), so a
         * table built against the older, shorter struct is still walked correctly.
         * `agentd --check` refuses a value outside them with FILE:LINE:COL. */
        const char *min;                  /* YAML text of the smallest value (INT, DOUBLE, SIZE, DURATION
                                           * and the items of INT_LIST), in the key's own unit: "0", "1s",
                                           * "64MiB"; NULL = no bound */
        const char *max;                  /* likewise the largest value; NULL = no bound */
        const char *const *choices;       /* NULL-terminated allowed values of a STRING (and of the items
                                           * of STRING_LIST, the values of STRING_DICT); NULL = any */
        const char *format;               /* a named syntax a STRING (item, value) must match: "hh:mm",
                                           * "cpulist", "pci_address", "identifier"; NULL = any */
} org_config_entry;

/* `.choices = ORG_CHOICES("on", "off")`, in a table at file scope (a compound literal is
 * a constant there only). */
#define ORG_CHOICES(...) ((const char *const[]){__VA_ARGS__, NULL})

#define ORG_CONFIG_END { .key = NULL }

/* A verb reachable as `agentctl call INSTANCE VERB [JSON]` (and sugar like
 * `agentctl memory status`). Mutating verbs are refused to read-only peers. */
typedef struct org_verb {
        const char *name;                 /* NULL ends a table */
        bool mutating;
        const char *args;                 /* argument synopsis, e.g. "{\"n\": int}" */
        const char *help;
} org_verb;

#define ORG_VERBS_END { .name = NULL }

#ifdef __cplusplus
}
#endif
#endif
