/* test-config-limits.c — the limits of config entries (min, max, choices, format):
 * each type against each bound, the named formats, a plugin's default outside its own
 * limits, limits that are the plugin's own mistake, and tables built against the first,
 * shorter org_config_entry (walked with the stride the descriptor declares, limits
 * absent). */
#include <errno.h>
#include <stddef.h>

#include "config_schema.h"
#include "test.h"
#include "util.h"

/* Checks the YAML text against map (entries esize bytes apart) under the path "c".
 * Returns the diagnostics joined (NULL when none); *ret_r gets the checker's result. */
static char *run(const org_config_entry *map, size_t esize, const char *text, int *ret_r, json_t **ret_json) {
        diag d;
        ynode *n = NULL;
        json_t *j = NULL;
        diag_init(&d, "t.yaml");
        CHECK_INT(ynode_parse_string(text, strlen(text), &n, &d), 0);
        *ret_r = config_schema_check_sized(map, esize, n, "c", 1, 1, &j, &d);
        char *s = diag_join(&d);
        diag_done(&d);
        ynode_free(n);
        if (ret_json)
                *ret_json = *ret_r == 0 ? j : NULL;
        else if (*ret_r == 0)
                json_decref(j);
        return s;
}

/* The text passes; its value of key is returned as JSON (the caller frees). */
static json_t *ok(const org_config_entry *map, const char *text, const char *key) {
        int r;
        json_t *j = NULL;
        char *s = run(map, sizeof(org_config_entry), text, &r, &j);
        if (s)
                fprintf(stderr, "unexpected: %s\n", s);
        CHECK(s == NULL);
        CHECK_INT(r, 0);
        free(s);
        json_t *v = json_incref(config_json_path(j, key));
        json_decref(j);
        return v;
}

/* The text is refused with exactly one diagnostic, which is want. */
static void refused(const org_config_entry *map, const char *text, const char *want) {
        int r;
        char *s = run(map, sizeof(org_config_entry), text, &r, NULL);
        CHECK_INT(r, -EINVAL);
        CHECK_STR(s, want);
        free(s);
}

static void passes(const org_config_entry *map, const char *text) {
        json_decref(ok(map, text, "x"));
}

static const org_config_entry numbers[] = {
        {.key = "swappiness", .type = ORG_CFG_INT, .min = "0", .max = "200"},
        {.key = "fraction", .type = ORG_CFG_DOUBLE, .min = "0", .max = "1"},
        {.key = "cache", .type = ORG_CFG_SIZE, .min = "64MiB", .max = "1GiB"},
        {.key = "window", .type = ORG_CFG_DURATION, .min = "500ms", .max = "10s"},
        {.key = "interval", .type = ORG_CFG_DURATION, .min = "1ms"},
        {.key = "below", .type = ORG_CFG_INT, .max = "-1"},
        {.key = "cpus", .type = ORG_CFG_INT_LIST, .min = "0", .max = "63"},
        ORG_CONFIG_END,
};

static void test_int(void) {
        json_t *v = ok(numbers, "swappiness: 0", "swappiness");
        CHECK_INT(json_integer_value(v), 0);
        json_decref(v);
        v = ok(numbers, "swappiness: 200", "swappiness");
        CHECK_INT(json_integer_value(v), 200);
        json_decref(v);
        v = ok(numbers, "swappiness: \"60\"", "swappiness"); /* quoted numbers count, bounds too */
        CHECK_INT(json_integer_value(v), 60);
        json_decref(v);
        refused(numbers, "swappiness: 300", "t.yaml:1:13: c.swappiness: 300 is above the maximum 200");
        refused(numbers, "swappiness: 201", "t.yaml:1:13: c.swappiness: 201 is above the maximum 200");
        refused(numbers, "swappiness: -1", "t.yaml:1:13: c.swappiness: -1 is below the minimum 0");
        refused(numbers, "below: 0", "t.yaml:1:8: c.below: 0 is above the maximum -1");
        passes(numbers, "below: -5");
        /* a type error stays a type error: no range message on top */
        refused(numbers, "swappiness: lots", "t.yaml:1:13: c.swappiness: expected an integer, got \"lots\"");
}

static void test_double(void) {
        json_t *v = ok(numbers, "fraction: 0.25", "fraction");
        CHECK(json_real_value(v) == 0.25);
        json_decref(v);
        passes(numbers, "fraction: 1");
        passes(numbers, "fraction: 0");
        refused(numbers, "fraction: 1.5", "t.yaml:1:11: c.fraction: 1.5 is above the maximum 1");
        refused(numbers, "fraction: -0.01", "t.yaml:1:11: c.fraction: -0.01 is below the minimum 0");
}

static void test_size(void) {
        json_t *v = ok(numbers, "cache: 512MiB", "cache");
        CHECK_INT(json_integer_value(v), 512LL << 20);
        json_decref(v);
        passes(numbers, "cache: 64MiB");
        passes(numbers, "cache: 1GiB");
        passes(numbers, "cache: 67108864"); /* bytes, the same bound */
        refused(numbers, "cache: 67108863", "t.yaml:1:8: c.cache: 67108863 is below the minimum 64MiB");
        refused(numbers, "cache: 2GiB", "t.yaml:1:8: c.cache: 2GiB is above the maximum 1GiB");
        refused(numbers, "cache: 32MiB", "t.yaml:1:8: c.cache: 32MiB is below the minimum 64MiB");
}

static void test_duration(void) {
        json_t *v = ok(numbers, "window: 2s", "window");
        CHECK_INT(json_integer_value(v), 2000);
        json_decref(v);
        passes(numbers, "window: 500ms");
        passes(numbers, "window: 10s");
        refused(numbers, "window: 20s", "t.yaml:1:9: c.window: 20s is above the maximum 10s");
        refused(numbers, "window: 499ms", "t.yaml:1:9: c.window: 499ms is below the minimum 500ms");
        refused(numbers, "interval: 0s", "t.yaml:1:11: c.interval: 0s is below the minimum 1ms");
        passes(numbers, "interval: 1ms");
}

static void test_int_list(void) {
        json_t *v = ok(numbers, "cpus: [0, 5, 63]", "cpus");
        CHECK_INT(json_array_size(v), 3);
        json_decref(v);
        refused(numbers, "cpus: [1, 5, 99]", "t.yaml:1:14: c.cpus[2]: 99 is above the maximum 63");
        /* every item at fault is reported */
        int r;
        char *s = run(numbers, sizeof(org_config_entry), "cpus: [-1, 64]", &r, NULL);
        CHECK_INT(r, -EINVAL);
        CHECK_CONTAINS(s, "t.yaml:1:8: c.cpus[0]: -1 is below the minimum 0");
        CHECK_CONTAINS(s, "t.yaml:1:12: c.cpus[1]: 64 is above the maximum 63");
        free(s);
}

static const org_config_entry strings[] = {
        {.key = "policy", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("on", "off")},
        {.key = "governors", .type = ORG_CFG_STRING_LIST, .choices = ORG_CHOICES("performance", "powersave")},
        {.key = "phases", .type = ORG_CFG_STRING_DICT, .format = "hh:mm"},
        {.key = "cpus", .type = ORG_CFG_STRING, .format = "cpulist"},
        {.key = "gpu", .type = ORG_CFG_STRING, .format = "pci_address"},
        {.key = "name", .type = ORG_CFG_STRING, .format = "identifier"},
        {.key = "mode", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("a-1", "b"), .format = "identifier"},
        ORG_CONFIG_END,
};

static void test_choices(void) {
        json_t *v = ok(strings, "policy: off", "policy");
        CHECK_STR(json_string_value(v), "off");
        json_decref(v);
        refused(strings, "policy: sometimes", "t.yaml:1:9: c.policy: \"sometimes\" is not one of: on, off");
        refused(strings, "policy: ON", "t.yaml:1:9: c.policy: \"ON\" is not one of: on, off");
        passes(strings, "governors: [powersave, performance]");
        refused(strings, "governors: [powersave, turbo]",
                "t.yaml:1:24: c.governors[1]: \"turbo\" is not one of: performance, powersave");
        passes(strings, "mode: a-1");
        refused(strings, "mode: c", "t.yaml:1:7: c.mode: \"c\" is not one of: a-1, b");
}

static void test_formats(void) {
        passes(strings, "phases: {day: \"07:00\", night: \"22:00\", late: \"23:59:59\", zero: \"00:00\"}");
        refused(strings, "phases: {day: \"25:00\"}",
                "t.yaml:1:15: c.phases.day: \"25:00\" is not a time of day hh:mm (or hh:mm:ss), 00:00 to 23:59");
        const char *bad_clocks[] = {"7:00", "07:60", "24:00", "07-00", "07:00:60", "07:000", "", "ab:cd", NULL};
        for (size_t i = 0; bad_clocks[i]; i++) {
                char text[64];
                snprintf(text, sizeof text, "phases: {p: \"%s\"}", bad_clocks[i]);
                int r;
                char *s = run(strings, sizeof(org_config_entry), text, &r, NULL);
                CHECK_INT(r, -EINVAL);
                CHECK_CONTAINS(s, "is not a time of day");
                free(s);
        }

        const char *good_cpus[] = {"0", "0-3", "0-3,8,10-11", "0-7:2", "5,1", "12-12", NULL};
        for (size_t i = 0; good_cpus[i]; i++) {
                char text[64];
                snprintf(text, sizeof text, "cpus: \"%s\"", good_cpus[i]);
                passes(strings, text);
        }
        const char *bad_cpus[] = {"", "a", "3-1", "1,,2", "1,", "-1", "0-", "0-7:0", "0 1", "1234567", NULL};
        for (size_t i = 0; bad_cpus[i]; i++) {
                char text[64];
                snprintf(text, sizeof text, "cpus: \"%s\"", bad_cpus[i]);
                int r;
                char *s = run(strings, sizeof(org_config_entry), text, &r, NULL);
                CHECK_INT(r, -EINVAL);
                CHECK_CONTAINS(s, "is not a CPU list (e.g. 0-3,8,10-11)");
                free(s);
        }

        const char *good_pci[] = {"0000:01:00.0", "01:00.0", "0000:01:00", "0a:1f.7", "FFFF:FF:1F.7", NULL};
        for (size_t i = 0; good_pci[i]; i++) {
                char text[64];
                snprintf(text, sizeof text, "gpu: \"%s\"", good_pci[i]);
                passes(strings, text);
        }
        const char *bad_pci[] = {"01:20.0", "01:00.8", "zz:00.0", "000:01:00.0", "0000:01:00.", "1:00.0", "0000:01",
                                 "", NULL};
        for (size_t i = 0; bad_pci[i]; i++) {
                char text[64];
                snprintf(text, sizeof text, "gpu: \"%s\"", bad_pci[i]);
                int r;
                char *s = run(strings, sizeof(org_config_entry), text, &r, NULL);
                CHECK_INT(r, -EINVAL);
                CHECK_CONTAINS(s, "is not a PCI address");
                free(s);
        }

        passes(strings, "name: gpu_0-a");
        refused(strings, "name: \"a b\"",
                "t.yaml:1:7: c.name: \"a b\" is not an identifier (1 to 64 letters, digits, '_' or '-')");
        char longname[128] = "name: ";
        memset(longname + 6, 'x', 65);
        longname[71] = '\0';
        int r;
        char *s = run(strings, sizeof(org_config_entry), longname, &r, NULL);
        CHECK_INT(r, -EINVAL);
        CHECK_CONTAINS(s, "is not an identifier");
        free(s);
}

/* A plugin's own default outside its own limits is its bug, said even when the user
 * sets the key; a default inside them is used as before. */
static void test_defaults(void) {
        static const org_config_entry bad_default[] = {
                {.key = "swappiness", .type = ORG_CFG_INT, .default_value = "300", .min = "0", .max = "200"},
                ORG_CONFIG_END,
        };
        const char *want = "t.yaml:1:1: c.swappiness: the built-in default is outside the plugin's own limits: "
                           "300 is above the maximum 200 (a bug of the plugin)";
        refused(bad_default, "{}", want);
        int r;
        char *s = run(bad_default, sizeof(org_config_entry), "swappiness: 10", &r, NULL);
        CHECK_INT(r, -EINVAL);
        CHECK_STR(s, "t.yaml:1:1: c.swappiness: the built-in default is outside the plugin's own limits: "
                     "300 is above the maximum 200 (a bug of the plugin)");
        free(s);

        /* nested: a dict default whose values break the children's limits */
        static const org_config_entry profile[] = {
                {.key = "level", .type = ORG_CFG_INT, .max = "9"},
                ORG_CONFIG_END,
        };
        static const org_config_entry nested[] = {
                {.key = "profiles", .type = ORG_CFG_DICT, .default_value = "{day: {level: 12}}", .children = profile},
                {.key = "phases", .type = ORG_CFG_STRING_DICT, .default_value = "{day: \"7:00\"}", .format = "hh:mm"},
                ORG_CONFIG_END,
        };
        s = run(nested, sizeof(org_config_entry), "{}", &r, NULL);
        CHECK_INT(r, -EINVAL);
        CHECK_CONTAINS(s, "t.yaml:1:1: c.profiles.day.level: the built-in default is outside the plugin's own limits: "
                          "12 is above the maximum 9 (a bug of the plugin)");
        CHECK_CONTAINS(s, "t.yaml:1:1: c.phases.day: the built-in default is outside the plugin's own limits: "
                          "\"7:00\" is not a time of day");
        CHECK(!strstr(s, "invalid built-in default")); /* said once, not twice */
        free(s);

        static const org_config_entry good_default[] = {
                {.key = "x", .type = ORG_CFG_DURATION, .default_value = "1s", .min = "500ms", .max = "10s"},
                ORG_CONFIG_END,
        };
        json_t *v = ok(good_default, "{}", "x");
        CHECK_INT(json_integer_value(v), 1000);
        json_decref(v);
}

/* ORG_CHOICES is a compound literal: constant in a table at file scope only. */
static const org_config_entry wrong_type[] = {
        {.key = "x", .type = ORG_CFG_STRING, .min = "1"},
        {.key = "y", .type = ORG_CFG_INT, .choices = ORG_CHOICES("1")},
        ORG_CONFIG_END,
};

/* Limits that cannot be read, or that the entry's type cannot have. */
static void test_plugin_bugs(void) {
        static const org_config_entry bad_bound[] = {
                {.key = "x", .type = ORG_CFG_INT, .min = "zero"},
                ORG_CONFIG_END,
        };
        refused(bad_bound, "x: 5", "t.yaml:1:4: c.x: its minimum \"zero\" is not an integer (a bug of the plugin)");
        static const org_config_entry bad_dur[] = {
                {.key = "x", .type = ORG_CFG_DURATION, .max = "soon"},
                ORG_CONFIG_END,
        };
        refused(bad_dur, "x: 5s",
                "t.yaml:1:4: c.x: its maximum \"soon\" is not a duration (e.g. 5s, 250ms, 1h30m) (a bug of the plugin)");
        static const org_config_entry crossed[] = {
                {.key = "x", .type = ORG_CFG_INT, .min = "10", .max = "1"},
                ORG_CONFIG_END,
        };
        refused(crossed, "x: 5", "t.yaml:1:4: c.x: its minimum 10 is above its maximum 1 (a bug of the plugin)");
        refused(wrong_type, "x: a", "t.yaml:1:4: c.x: it declares min/max on a string key (a bug of the plugin)");
        refused(wrong_type, "y: 1", "t.yaml:1:4: c.y: it declares choices/format on a int key (a bug of the plugin)");
        static const org_config_entry bad_format[] = {
                {.key = "x", .type = ORG_CFG_STRING, .format = "ipv9"},
                ORG_CONFIG_END,
        };
        refused(bad_format, "x: a", "t.yaml:1:4: c.x: it declares an unknown format \"ipv9\" (a bug of the plugin)");
        static const char *const none[] = {NULL};
        static const org_config_entry no_choices[] = {
                {.key = "x", .type = ORG_CFG_STRING, .choices = none},
                ORG_CONFIG_END,
        };
        refused(no_choices, "x: a", "t.yaml:1:4: c.x: it declares an empty list of choices (a bug of the plugin)");
}

/* The first release's entry, as a plugin built then laid its table out. */
typedef struct old_entry {
        const char *key;
        org_config_type type;
        const char *default_value;
        bool required;
        const char *help;
        const struct old_entry *children;
} old_entry;
_Static_assert(sizeof(old_entry) == CONFIG_ENTRY_SIZE_V1, "the first release's entry");

static const old_entry old_children[] = {
        {"level", ORG_CFG_INT, "3", false, "", NULL},
        {"mode", ORG_CFG_STRING, NULL, false, "", NULL},
        {NULL, 0, NULL, false, NULL, NULL},
};
/* Walked with today's stride, "b" would be read as the minimum of "a" (and "c" as its
 * choices): the stride of the old table must be used, and its limits be absent. */
static const old_entry old_table[] = {
        {"a", ORG_CFG_INT, "1", false, "", NULL},
        {"b", ORG_CFG_STRING, "x", false, "", NULL},
        {"c", ORG_CFG_OBJECT, NULL, false, "", old_children},
        {"d", ORG_CFG_DURATION, "5s", false, "", NULL},
        {NULL, 0, NULL, false, NULL, NULL},
};

static const org_plugin old_desc = {
        .abi_version = ORG_PLUGIN_ABI_VERSION,
        /* built before config_entry_size existed: whatever lies there is not read */
        .struct_size = offsetof(org_plugin, config_entry_size),
        .name = "old",
        .config_map = (const org_config_entry *)(const void *)old_table,
        .config_entry_size = 12345,
};

static void test_old_table(void) {
        size_t size = 0;
        CHECK_INT(config_entry_size(&old_desc, &size), 0);
        CHECK_INT(size, CONFIG_ENTRY_SIZE_V1);

        const char *text = "a: 1000\nb: anything\nc: {level: 99, mode: fast}\nd: 1h\n";
        diag d;
        ynode *n = NULL;
        json_t *j = NULL;
        diag_init(&d, "t.yaml");
        CHECK_INT(ynode_parse_string(text, strlen(text), &n, &d), 0);
        int r = config_schema_check_plugin(&old_desc, n, "c", 1, 1, &j, &d);
        diag_print(&d, stderr);
        CHECK_INT(r, 0);
        CHECK_INT(d.n, 0);
        CHECK_INT(json_integer_value(config_json_path(j, "a")), 1000);
        CHECK_STR(json_string_value(config_json_path(j, "b")), "anything");
        CHECK_INT(json_integer_value(config_json_path(j, "c.level")), 99);
        CHECK_INT(json_integer_value(config_json_path(j, "d")), 3600000);
        json_decref(j);
        ynode_free(n);
        diag_done(&d);

        /* an unknown key is still found unknown (each key of the old table is seen) */
        int rr;
        char *s = run((const org_config_entry *)(const void *)old_table, CONFIG_ENTRY_SIZE_V1, "e: 1\nc: {x: 1}", &rr,
                      NULL);
        CHECK_INT(rr, -EINVAL);
        CHECK_CONTAINS(s, "t.yaml:1:1: c.e: unknown key");
        CHECK_CONTAINS(s, "t.yaml:2:5: c.c.x: unknown key");
        free(s);

        /* defaults of the old table are filled in */
        json_t *v = NULL;
        s = run((const org_config_entry *)(const void *)old_table, CONFIG_ENTRY_SIZE_V1, "{}", &rr, &v);
        CHECK(s == NULL);
        CHECK_INT(json_integer_value(config_json_path(v, "a")), 1);
        CHECK_STR(json_string_value(config_json_path(v, "b")), "x");
        CHECK_INT(json_integer_value(config_json_path(v, "d")), 5000);
        json_decref(v);

        /* limits read through the accessor are absent for an old entry */
        config_limits l;
        config_entry_limits((const org_config_entry *)(const void *)&old_table[0], CONFIG_ENTRY_SIZE_V1, &l);
        CHECK(!l.min && !l.max && !l.choices && !l.format);
        CHECK(config_entry_next((const org_config_entry *)(const void *)&old_table[0], CONFIG_ENTRY_SIZE_V1) ==
              (const org_config_entry *)(const void *)&old_table[1]);
}

/* A descriptor that has the field: its size is the stride; an impossible one is refused. */
static void test_entry_sizes(void) {
        org_plugin desc = {.abi_version = ORG_PLUGIN_ABI_VERSION,
                           .struct_size = sizeof(org_plugin),
                           .name = "new",
                           .config_map = numbers,
                           .config_entry_size = sizeof(org_config_entry)};
        size_t size = 0;
        CHECK_INT(config_entry_size(&desc, &size), 0);
        CHECK_INT(size, sizeof(org_config_entry));

        /* a new descriptor still pointing at an old table says so with its entry size */
        desc.config_map = (const org_config_entry *)(const void *)old_table;
        desc.config_entry_size = sizeof(old_entry);
        CHECK_INT(config_entry_size(&desc, &size), 0);
        CHECK_INT(size, sizeof(old_entry));

        /* a newer SDK's larger entry: walked with its stride, known fields read */
        struct newer_entry {
                org_config_entry e;
                const char *unit;
        };
        static const struct newer_entry newer[] = {
                {{.key = "swappiness", .type = ORG_CFG_INT, .max = "200"}, "percent"},
                {{.key = "other", .type = ORG_CFG_STRING}, "x"},
                {{.key = NULL}, NULL},
        };
        int r;
        char *s = run(&newer[0].e, sizeof(struct newer_entry), "swappiness: 300\nother: y", &r, NULL);
        CHECK_INT(r, -EINVAL);
        CHECK_STR(s, "t.yaml:1:13: c.swappiness: 300 is above the maximum 200");
        free(s);

        const uint32_t impossible[] = {0, 12, CONFIG_ENTRY_SIZE_V1 - 8, CONFIG_ENTRY_SIZE_V1 + 4, 1u << 20};
        for (size_t i = 0; i < ELEMENTSOF(impossible); i++) {
                desc.config_entry_size = impossible[i];
                CHECK_INT(config_entry_size(&desc, &size), -EPROTO);
                diag d;
                json_t *j = NULL;
                diag_init(&d, "t.yaml");
                CHECK_INT(config_schema_check_plugin(&desc, NULL, "plugins.x.config", 4, 3, &j, &d), -EINVAL);
                CHECK_INT(d.n, 1);
                CHECK_CONTAINS(d.lines[0], "t.yaml:4:3: plugins.x.config: the plugin declares config entries of");
                diag_done(&d);
        }
}

int main(void) {
        RUN(test_int);
        RUN(test_double);
        RUN(test_size);
        RUN(test_duration);
        RUN(test_int_list);
        RUN(test_choices);
        RUN(test_formats);
        RUN(test_defaults);
        RUN(test_plugin_bugs);
        RUN(test_old_table);
        RUN(test_entry_sizes);
        return 0;
}
