/* config_schema.c — one checker for every block of the config file. It walks a ynode
 * map beside an org_config_entry table, reports each fault with its position and dotted
 * key path ("FILE:12:7: plugins.memory.config.mem_low: expected a size (e.g. 3GiB), got
 * \"lots\""), carries on to find the others, and produces normalised JSON: defaults
 * filled in (parsed through the same checker, so a default can never be of the wrong
 * type), durations as integer milliseconds, sizes as integer bytes. An explicit null
 * (`key:` or `key: ~`) counts as absent, so a plugin never reads a null where its map
 * promised a value.
 *
 * Entries carry limits (min, max, choices, format): a value outside them is a fault at
 * its own position ("swappiness: 300 is above the maximum 200"); a built-in default
 * outside them, or a limit that does not parse, is the plugin's bug and is said to be.
 * A plugin's tables are walked with the entry size its descriptor declares, so a table
 * built against the first, shorter org_config_entry is read without its limits. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config_schema.h"
#include "duration.h"
#include "subject.h"
#include "util.h"

typedef struct checker {
        diag *d;
        int error;    /* 0, -EINVAL after a reported fault, -ENOMEM */
        size_t esize; /* stride of the tables: the plugin's sizeof(org_config_entry) */
        /* Checking a built-in default: limit faults go to this diag at this position,
         * worded as the plugin's bug (NULL while checking the user's values). */
        diag *bug_d;
        int bug_line, bug_col;
        unsigned bugs; /* limit faults reported through bug_d */
} checker;

#define ENTRY_HAS(size, f) ((size) >= offsetof(org_config_entry, f) + sizeof(((org_config_entry *)0)->f))

const org_config_entry *config_entry_next(const org_config_entry *e, size_t entry_size) {
        return (const org_config_entry *)(const void *)((const char *)e + entry_size);
}

void config_entry_limits(const org_config_entry *e, size_t entry_size, config_limits *ret) {
        *ret = (config_limits){
                .min = ENTRY_HAS(entry_size, min) ? e->min : NULL,
                .max = ENTRY_HAS(entry_size, max) ? e->max : NULL,
                .choices = ENTRY_HAS(entry_size, choices) ? e->choices : NULL,
                .format = ENTRY_HAS(entry_size, format) ? e->format : NULL,
        };
}

int config_entry_size(const org_plugin *desc, size_t *ret_size) {
        size_t size = CONFIG_ENTRY_SIZE_V1;
        if (desc->struct_size >= offsetof(org_plugin, config_entry_size) + sizeof(desc->config_entry_size))
                size = desc->config_entry_size;
        /* A stride shorter than the first release, or one that misaligns the next entry,
         * cannot describe a table: refuse rather than read garbage. */
        if (size < CONFIG_ENTRY_SIZE_V1 || size % _Alignof(org_config_entry) != 0 || size > CONFIG_ENTRY_SIZE_MAX)
                return -EPROTO;
        *ret_size = size;
        return 0;
}

static void fault(checker *c) {
        if (c->error == 0)
                c->error = -EINVAL;
}

static void oom(checker *c) { c->error = -ENOMEM; }

const char *config_type_name(org_config_type t) {
        switch (t) {
        case ORG_CFG_STRING: return "string";
        case ORG_CFG_INT: return "int";
        case ORG_CFG_BOOL: return "bool";
        case ORG_CFG_DOUBLE: return "double";
        case ORG_CFG_DURATION: return "duration";
        case ORG_CFG_SIZE: return "size";
        case ORG_CFG_STRING_LIST: return "string list";
        case ORG_CFG_INT_LIST: return "int list";
        case ORG_CFG_OBJECT: return "object";
        case ORG_CFG_DICT: return "dict";
        case ORG_CFG_STRING_DICT: return "string dict";
        case ORG_CFG_ANY: return "any";
        case ORG_CFG_PATTERN: return "pattern";
        case ORG_CFG_PATTERN_LIST: return "pattern list";
        case ORG_CFG_OBJECT_LIST: return "object list";
        }
        return "unknown";
}

/* What a message says the value should have been. */
static const char *type_expectation(org_config_type t) {
        switch (t) {
        case ORG_CFG_STRING: return "a string";
        case ORG_CFG_INT: return "an integer";
        case ORG_CFG_BOOL: return "a boolean (true or false)";
        case ORG_CFG_DOUBLE: return "a number";
        case ORG_CFG_DURATION: return "a duration (e.g. 5s, 250ms, 1h30m)";
        case ORG_CFG_SIZE: return "a size (e.g. 3GiB)";
        case ORG_CFG_STRING_LIST: return "a list of strings";
        case ORG_CFG_INT_LIST: return "a list of integers";
        case ORG_CFG_OBJECT: return "a mapping";
        case ORG_CFG_DICT: return "a mapping of names to mappings";
        case ORG_CFG_STRING_DICT: return "a mapping of names to strings";
        case ORG_CFG_ANY: return "a value";
        case ORG_CFG_PATTERN: return "a subject pattern (e.g. gpu.task.*, alert.>)";
        case ORG_CFG_PATTERN_LIST: return "a list of subject patterns";
        case ORG_CFG_OBJECT_LIST: return "a list of mappings";
        }
        return "a value";
}

/* "\"text\"" for a scalar (escaped and cut short: it goes into one diagnostic line),
 * "a mapping" / "a list" otherwise. */
static void describe(const ynode *v, char *buf, size_t size) {
        size_t o = 0;

        if (v->kind == YNODE_MAP) {
                snprintf(buf, size, "a mapping");
                return;
        }
        if (v->kind == YNODE_SEQ) {
                snprintf(buf, size, "a list");
                return;
        }
        if (size < 16) {
                snprintf(buf, size, "?");
                return;
        }
        buf[o++] = '"';
        for (const unsigned char *p = (const unsigned char *)v->scalar; *p; p++) {
                if (o + 8 >= size) {
                        memcpy(buf + o, "...", 3);
                        o += 3;
                        break;
                }
                if (*p == '"' || *p == '\\') {
                        buf[o++] = '\\';
                        buf[o++] = (char)*p;
                } else if (*p < 0x20 || *p == 0x7f) {
                        o += (size_t)snprintf(buf + o, size - o, "\\x%02x", *p);
                } else {
                        buf[o++] = (char)*p;
                }
        }
        buf[o++] = '"';
        buf[o] = '\0';
}

static void type_error(checker *c, const ynode *v, const char *path, org_config_type t, const char *extra) {
        char got[96];
        describe(v, got, sizeof got);
        diag_add(c->d, v->line, v->col, "%s: expected %s, got %s%s", path, type_expectation(t), got, extra ? extra : "");
        fault(c);
}

/* The plugin's own fault (a limit that does not parse, a default outside its range),
 * reported where it shows: at the value, or at the key a default fills. */
static void plugin_bug(checker *c, const ynode *v, const char *path, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static void plugin_bug(checker *c, const ynode *v, const char *path, const char *fmt, ...) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (c->bug_d) {
                diag_add(c->bug_d, c->bug_line, c->bug_col, "%s: %s (a bug of the plugin)", path, msg);
                c->bugs++;
        } else
                diag_add(c->d, v->line, v->col, "%s: %s (a bug of the plugin)", path, msg);
        fault(c);
}

/* A value outside the entry's limits: the user's fault, or the plugin's for a default. */
static void limit_error(checker *c, const ynode *v, const char *path, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static void limit_error(checker *c, const ynode *v, const char *path, const char *fmt, ...) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (c->bug_d) {
                diag_add(c->bug_d, c->bug_line, c->bug_col,
                         "%s: the built-in default is outside the plugin's own limits: %s (a bug of the plugin)",
                         path, msg);
                c->bugs++;
        } else
                diag_add(c->d, v->line, v->col, "%s: %s", path, msg);
        fault(c);
}

static char *join_path(const char *where, const char *key) {
        char *s = NULL;
        if (asprintf(&s, "%s%s%s", isempty(where) ? "" : where, isempty(where) ? "" : ".", key) < 0)
                return NULL;
        return s;
}

/* The scalar read as YAML's core schema would read it unquoted: a config that says
 * `port: "4222"` means 4222 as surely as `port: 4222` does. */
static json_t *scalar_typed(const ynode *v) {
        ynode tmp = *v;
        tmp.plain = true;
        return ynode_to_json(&tmp);
}

static json_t *check_map(checker *c, const org_config_entry *table, const ynode *node, const char *where,
                         int pline, int pcol);
static json_t *check_value(checker *c, const org_config_entry *e, const ynode *v, const char *path, int kline,
                           int kcol);

static json_t *check_scalar(checker *c, org_config_type t, const ynode *v, const char *path) {
        json_t *j = NULL;
        uint64_t u;
        int r;

        if (v->kind != YNODE_SCALAR || ynode_is_null(v)) {
                type_error(c, v, path, t, NULL);
                return NULL;
        }
        switch (t) {
        case ORG_CFG_STRING:
                j = json_string(v->scalar);
                if (!j)
                        type_error(c, v, path, t, " (not UTF-8)");
                return j;
        case ORG_CFG_PATTERN:
                if (!pattern_is_valid(v->scalar)) {
                        type_error(c, v, path, t, NULL);
                        return NULL;
                }
                j = json_string(v->scalar);
                if (!j)
                        oom(c);
                return j;
        case ORG_CFG_INT:
        case ORG_CFG_BOOL:
        case ORG_CFG_DOUBLE:
                j = scalar_typed(v);
                if (!j) {
                        oom(c);
                        return NULL;
                }
                if ((t == ORG_CFG_INT && json_is_integer(j)) || (t == ORG_CFG_BOOL && json_is_boolean(j)))
                        return j;
                if (t == ORG_CFG_DOUBLE && json_is_number(j)) {
                        json_t *d = json_real(json_number_value(j));
                        json_decref(j);
                        if (!d)
                                oom(c);
                        return d;
                }
                json_decref(j);
                type_error(c, v, path, t, NULL);
                return NULL;
        case ORG_CFG_DURATION:
        case ORG_CFG_SIZE:
                r = t == ORG_CFG_DURATION ? parse_duration_ms(v->scalar, &u) : parse_size(v->scalar, &u);
                if (r >= 0 && u > (uint64_t)INT64_MAX)
                        r = -ERANGE;
                if (r < 0) {
                        type_error(c, v, path, t, r == -ERANGE ? " (too large)" : NULL);
                        return NULL;
                }
                j = json_integer((json_int_t)u);
                if (!j)
                        oom(c);
                return j;
        default:
                break;
        }
        type_error(c, v, path, t, NULL);
        return NULL;
}

/* --- limits: min, max, choices, format ------------------------------------------- */

static bool type_has_range(org_config_type t) {
        return t == ORG_CFG_INT || t == ORG_CFG_DOUBLE || t == ORG_CFG_SIZE || t == ORG_CFG_DURATION ||
               t == ORG_CFG_INT_LIST;
}

static bool type_has_choices(org_config_type t) {
        return t == ORG_CFG_STRING || t == ORG_CFG_STRING_LIST || t == ORG_CFG_STRING_DICT;
}

/* A bound's YAML text read by the value's own parser ("1s" for a duration, "64MiB" for a
 * size), so a bound means what a value written the same way means. */
static json_t *parse_bound(checker *c, org_config_type t, const char *text) {
        diag ignored;
        diag_init(&ignored, NULL);
        checker sub = {.d = &ignored, .esize = c->esize};
        ynode n = {.kind = YNODE_SCALAR, .scalar = (char *)text, .plain = true};
        json_t *j = check_scalar(&sub, t, &n, "bound");
        if (sub.error == -ENOMEM)
                oom(c);
        diag_done(&ignored);
        return j;
}

/* <0, 0, >0 as a is below, equal to, above b (both numbers). */
static int compare_numbers(const json_t *a, const json_t *b) {
        if (json_is_integer(a) && json_is_integer(b)) {
                json_int_t x = json_integer_value(a), y = json_integer_value(b);
                return x < y ? -1 : x > y;
        }
        double x = json_number_value(a), y = json_number_value(b);
        return x < y ? -1 : x > y;
}

/* Checks the number j (the value v of type t) against the entry's min and max. */
static bool check_range(checker *c, const config_limits *l, org_config_type t, const ynode *v, const json_t *j,
                        const char *path) {
        json_t *lo = NULL, *hi = NULL;
        bool ok = false;

        if (l->min && !(lo = parse_bound(c, t, l->min))) {
                plugin_bug(c, v, path, "its minimum \"%s\" is not %s", l->min, type_expectation(t));
                goto out;
        }
        if (l->max && !(hi = parse_bound(c, t, l->max))) {
                plugin_bug(c, v, path, "its maximum \"%s\" is not %s", l->max, type_expectation(t));
                goto out;
        }
        if (lo && hi && compare_numbers(lo, hi) > 0) {
                plugin_bug(c, v, path, "its minimum %s is above its maximum %s", l->min, l->max);
                goto out;
        }
        if (lo && compare_numbers(j, lo) < 0)
                limit_error(c, v, path, "%s is below the minimum %s", v->scalar, l->min);
        else if (hi && compare_numbers(j, hi) > 0)
                limit_error(c, v, path, "%s is above the maximum %s", v->scalar, l->max);
        else
                ok = true;
out:
        json_decref(lo);
        json_decref(hi);
        return ok;
}

static bool all_digits(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return n > 0;
}

static bool all_hex(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
                        return false;
        }
        return n > 0;
}

/* "hh:mm" or "hh:mm:ss", 00:00 to 23:59:59, two digits each. */
static bool is_clock(const char *s) {
        size_t n = strlen(s);
        if ((n != 5 && n != 8) || s[2] != ':' || (n == 8 && s[5] != ':'))
                return false;
        for (size_t i = 0; i < n; i += 3)
                if (!all_digits(s + i, 2))
                        return false;
        int hh = (s[0] - '0') * 10 + (s[1] - '0'), mm = (s[3] - '0') * 10 + (s[4] - '0');
        int ss = n == 8 ? (s[6] - '0') * 10 + (s[7] - '0') : 0;
        return hh < 24 && mm < 60 && ss < 60;
}

static bool parse_cpu(const char **p, unsigned long *ret) {
        const char *s = *p;
        size_t n = 0;
        while (s[n] >= '0' && s[n] <= '9' && n < 6)
                n++;
        if (n == 0 || (s[n] >= '0' && s[n] <= '9'))
                return false; /* no digits, or past 999999: no such CPU */
        unsigned long v = 0;
        for (size_t i = 0; i < n; i++)
                v = v * 10 + (unsigned long)(s[i] - '0');
        *ret = v;
        *p = s + n;
        return true;
}

/* The kernel's cpulist: "0-3,8,10-11", a range optionally with a stride ("0-7:2"). */
static bool is_cpulist(const char *s) {
        const char *p = s;
        for (;;) {
                unsigned long a, b, step;
                if (!parse_cpu(&p, &a))
                        return false;
                if (*p == '-') {
                        p++;
                        if (!parse_cpu(&p, &b) || b < a)
                                return false;
                        if (*p == ':') {
                                p++;
                                if (!parse_cpu(&p, &step) || step == 0)
                                        return false;
                        }
                }
                if (*p == '\0')
                        return true;
                if (*p++ != ',')
                        return false;
        }
}

/* "[dddd:]bb:dd[.f]" in hex, device 00-1f, function 0-7 (no function: the whole
 * device, as qm's hostpci takes it). */
static bool is_pci_address(const char *s) {
        size_t n = strlen(s);
        const char *p = s;
        if (n >= 5 && s[4] == ':') {
                if (!all_hex(s, 4))
                        return false;
                p = s + 5;
                n -= 5;
        }
        if (n != 5 && n != 7)
                return false;
        if (!all_hex(p, 2) || p[2] != ':' || !all_hex(p + 3, 2))
                return false;
        if (strtoul((char[]){p[3], p[4], '\0'}, NULL, 16) > 0x1f)
                return false;
        return n == 5 || (p[5] == '.' && p[6] >= '0' && p[6] <= '7');
}

/* What a value of the named format looks like, for messages; NULL: no such format. */
static const char *format_expectation(const char *format) {
        if (streq(format, "hh:mm"))
                return "a time of day hh:mm (or hh:mm:ss), 00:00 to 23:59";
        if (streq(format, "cpulist"))
                return "a CPU list (e.g. 0-3,8,10-11)";
        if (streq(format, "pci_address"))
                return "a PCI address [dddd:]bb:dd[.f] (e.g. 0000:01:00.0)";
        if (streq(format, "identifier"))
                return "an identifier (1 to 64 letters, digits, '_' or '-')";
        return NULL;
}

static bool format_matches(const char *format, const char *s) {
        if (streq(format, "hh:mm"))
                return is_clock(s);
        if (streq(format, "cpulist"))
                return is_cpulist(s);
        if (streq(format, "pci_address"))
                return is_pci_address(s);
        return name_is_valid(s); /* "identifier" */
}

/* Checks the string value v against the entry's choices and format. */
static bool check_string_limits(checker *c, const config_limits *l, const ynode *v, const char *path) {
        char got[96];
        if (l->format && !format_expectation(l->format)) {
                plugin_bug(c, v, path, "it declares an unknown format \"%s\"", l->format);
                return false;
        }
        if (l->choices && !l->choices[0]) {
                plugin_bug(c, v, path, "it declares an empty list of choices");
                return false;
        }
        if (l->choices) {
                char list[400];
                size_t o = 0;
                for (const char *const *ch = l->choices; *ch; ch++) {
                        if (streq(*ch, v->scalar))
                                goto format;
                }
                list[0] = '\0';
                for (const char *const *ch = l->choices; *ch && o < sizeof list; ch++)
                        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", o ? ", " : "", *ch);
                describe(v, got, sizeof got);
                limit_error(c, v, path, "%s is not one of: %s", got, list);
                return false;
        }
format:
        if (l->format && !format_matches(l->format, v->scalar)) {
                describe(v, got, sizeof got);
                limit_error(c, v, path, "%s is not %s", got, format_expectation(l->format));
                return false;
        }
        return true;
}

/* j (stolen) once it passed the entry's limits as a value of type t (the entry's own
 * type, or the type of its items); NULL after reporting why not. */
static json_t *limited(checker *c, const org_config_entry *e, org_config_type t, const ynode *v, const char *path,
                       json_t *j) {
        config_limits l;
        bool ok = true;

        if (!j)
                return NULL;
        config_entry_limits(e, c->esize, &l);
        if ((l.min || l.max) && type_has_range(e->type))
                ok = check_range(c, &l, t, v, j, path);
        if (ok && (l.choices || l.format) && type_has_choices(e->type))
                ok = check_string_limits(c, &l, v, path);
        if (ok)
                return j;
        json_decref(j);
        return NULL;
}

/* Limits the entry's type cannot have are the plugin's mistake, said at the value. */
static bool limits_fit_type(checker *c, const org_config_entry *e, const ynode *v, const char *path) {
        config_limits l;
        config_entry_limits(e, c->esize, &l);
        if ((l.min || l.max) && !type_has_range(e->type)) {
                plugin_bug(c, v, path, "it declares min/max on a %s key", config_type_name(e->type));
                return false;
        }
        if ((l.choices || l.format) && !type_has_choices(e->type)) {
                plugin_bug(c, v, path, "it declares choices/format on a %s key", config_type_name(e->type));
                return false;
        }
        return true;
}

/* Stores j (stolen) in container under key, or appends it when key is NULL; j NULL
 * means a fault already reported. False when it could not be stored. */
static bool put(checker *c, json_t *container, const char *key, json_t *j) {
        if (!j)
                return false;
        if ((key ? json_object_set_new(container, key, j) : json_array_append_new(container, j)) < 0) {
                oom(c);
                return false;
        }
        return true;
}

/* The checked container, or NULL (and freed) when any of its items was at fault. */
static json_t *finish(json_t *container, bool ok) {
        if (ok)
                return container;
        json_decref(container);
        return NULL;
}

static json_t *check_list(checker *c, const org_config_entry *e, org_config_type item, const ynode *v,
                          const char *path) {
        org_config_type t = e->type;
        json_t *a;
        bool ok = true;

        if (v->kind != YNODE_SEQ) {
                type_error(c, v, path, t, NULL);
                return NULL;
        }
        a = json_array();
        if (!a) {
                oom(c);
                return NULL;
        }
        for (size_t i = 0; i < v->n; i++) {
                _cleanup_free_ char *p = NULL;
                if (asprintf(&p, "%s[%zu]", path, i) < 0) {
                        oom(c);
                        ok = false;
                        break;
                }
                const ynode *it = v->values[i];
                if (!put(c, a, NULL, limited(c, e, item, it, p, check_scalar(c, item, it, p))))
                        ok = false;
        }
        return finish(a, ok);
}

/* A sequence of mappings, each checked against the entry's children. */
static json_t *check_object_list(checker *c, const org_config_entry *e, const ynode *v, const char *path) {
        if (v->kind != YNODE_SEQ) {
                type_error(c, v, path, e->type, NULL);
                return NULL;
        }
        json_t *a = json_array();
        bool ok = a != NULL;
        if (!a)
                oom(c);
        for (size_t i = 0; a && i < v->n; i++) {
                const ynode *item = v->values[i];
                _cleanup_free_ char *p = NULL;
                if (asprintf(&p, "%s[%zu]", path, i) < 0) {
                        oom(c);
                        ok = false;
                        break;
                }
                json_t *j = NULL;
                if (item->kind != YNODE_MAP)
                        type_error(c, item, p, ORG_CFG_OBJECT, NULL);
                else
                        j = e->children ? check_map(c, e->children, item, p, item->line, item->col)
                                        : ynode_to_json(item);
                if (!put(c, a, NULL, j))
                        ok = false;
        }
        return finish(a, ok);
}

/* name → value mappings: DICT (values checked against children) and STRING_DICT. */
static json_t *check_dict(checker *c, const org_config_entry *e, const ynode *v, const char *path) {
        json_t *o;
        bool ok = true;

        if (v->kind != YNODE_MAP) {
                type_error(c, v, path, e->type, NULL);
                return NULL;
        }
        o = json_object();
        if (!o) {
                oom(c);
                return NULL;
        }
        for (size_t i = 0; i < v->n; i++) {
                const ynode *k = v->keys[i], *val = v->values[i];
                _cleanup_free_ char *p = join_path(path, k->scalar);
                json_t *j;
                if (!p) {
                        oom(c);
                        ok = false;
                        break;
                }
                if (e->type == ORG_CFG_STRING_DICT)
                        j = limited(c, e, ORG_CFG_STRING, val, p, check_scalar(c, ORG_CFG_STRING, val, p));
                else if (e->children)
                        j = check_map(c, e->children, val, p, k->line, k->col);
                else if (val->kind == YNODE_MAP || ynode_is_null(val))
                        j = val->kind == YNODE_MAP ? ynode_to_json(val) : json_object();
                else {
                        type_error(c, val, p, ORG_CFG_OBJECT, NULL);
                        j = NULL;
                }
                if (!put(c, o, k->scalar, j))
                        ok = false;
        }
        return finish(o, ok);
}

/* v is present and not null; kline/kcol are its key's, where a missing required key
 * inside it is reported. */
static json_t *check_value(checker *c, const org_config_entry *e, const ynode *v, const char *path, int kline,
                           int kcol) {
        json_t *j;

        if (!limits_fit_type(c, e, v, path))
                return NULL;
        switch (e->type) {
        case ORG_CFG_STRING:
        case ORG_CFG_INT:
        case ORG_CFG_BOOL:
        case ORG_CFG_DOUBLE:
        case ORG_CFG_DURATION:
        case ORG_CFG_SIZE:
        case ORG_CFG_PATTERN:
                return limited(c, e, e->type, v, path, check_scalar(c, e->type, v, path));
        case ORG_CFG_STRING_LIST:
                return check_list(c, e, ORG_CFG_STRING, v, path);
        case ORG_CFG_INT_LIST:
                return check_list(c, e, ORG_CFG_INT, v, path);
        case ORG_CFG_PATTERN_LIST:
                return check_list(c, e, ORG_CFG_PATTERN, v, path);
        case ORG_CFG_OBJECT:
                if (v->kind != YNODE_MAP) {
                        type_error(c, v, path, e->type, NULL);
                        return NULL;
                }
                if (e->children)
                        return check_map(c, e->children, v, path, kline, kcol);
                break; /* an object without a schema: passed through */
        case ORG_CFG_DICT:
        case ORG_CFG_STRING_DICT:
                return check_dict(c, e, v, path);
        case ORG_CFG_OBJECT_LIST:
                return check_object_list(c, e, v, path);
        case ORG_CFG_ANY:
                break;
        default:
                diag_add(c->d, v->line, v->col, "%s: unknown type %d in the config map", path, (int)e->type);
                fault(c);
                return NULL;
        }
        j = ynode_to_json(v);
        if (!j)
                oom(c);
        return j;
}

/* A default is YAML text written by a programmer: parse and check it like a user's
 * value, so it is normalised the same way; a bad one, or one outside the entry's own
 * limits, is reported at the key it fills as the plugin's bug. */
static json_t *check_default(checker *c, const org_config_entry *e, const char *path, int line, int col) {
        diag tmp;
        checker sub;
        ynode *n = NULL;
        json_t *j = NULL;
        int r;

        /* An object whose default is "{}" is its children's defaults: check it as an
         * absent block, so a required child is reported as missing where it belongs. */
        if (e->type == ORG_CFG_OBJECT && e->children && streq(e->default_value, "{}"))
                return check_map(c, e->children, NULL, path, line, col);

        diag_init(&tmp, "default");
        /* limit faults of a default nested in a default go to the outermost key */
        sub = (checker){.d = &tmp,
                        .esize = c->esize,
                        .bug_d = c->bug_d ? c->bug_d : c->d,
                        .bug_line = c->bug_d ? c->bug_line : line,
                        .bug_col = c->bug_d ? c->bug_col : col};
        r = ynode_parse_string(e->default_value, strlen(e->default_value), &n, &tmp);
        if (r == -ENOMEM) {
                oom(c);
                goto out;
        }
        /* "~" or "" parse to an empty map, which a scalar type then refuses: a
         * default of nothing is written as no default_value. */
        if (r >= 0)
                j = check_value(&sub, e, n, path, line, col);
        if (sub.error == -ENOMEM) {
                oom(c);
                json_decref(j);
                j = NULL;
        } else if (!j || sub.error < 0) {
                json_decref(j);
                j = NULL;
                /* said already when the only faults were against its limits */
                if (sub.bugs == 0 || tmp.n > 0)
                        diag_add(c->d, line, col, "%s: invalid built-in default \"%s\"", path, e->default_value);
                fault(c);
        }
out:
        ynode_free(n);
        diag_done(&tmp);
        return j;
}

static json_t *check_map(checker *c, const org_config_entry *table, const ynode *node, const char *where,
                         int pline, int pcol) {
        json_t *o;
        bool ok = true;
        int mline = pline, mcol = pcol;

        if (node && ynode_is_null(node)) {
                /* `config:` with nothing under it: the same as leaving it out. */
                mline = pline > 0 ? pline : node->line;
                mcol = pline > 0 ? pcol : node->col;
                node = NULL;
        }
        if (node && node->kind != YNODE_MAP) {
                char got[96];
                describe(node, got, sizeof got);
                diag_add(c->d, node->line, node->col, "%s: expected a mapping, got %s",
                         isempty(where) ? "document" : where, got);
                fault(c);
                return NULL;
        }
        if (node && mline <= 0) {
                mline = node->line;
                mcol = node->col;
        }

        o = json_object();
        if (!o) {
                oom(c);
                return NULL;
        }
        for (size_t i = 0; node && i < node->n; i++) {
                const org_config_entry *e = table;
                while (e && e->key && !streq(e->key, node->keys[i]->scalar))
                        e = config_entry_next(e, c->esize);
                if (e && e->key)
                        continue;
                _cleanup_free_ char *p = join_path(where, node->keys[i]->scalar);
                if (!p) {
                        oom(c);
                        ok = false;
                        break;
                }
                diag_add(c->d, node->keys[i]->line, node->keys[i]->col, "%s: unknown key", p);
                fault(c);
                ok = false;
        }
        for (const org_config_entry *e = table; e && e->key; e = config_entry_next(e, c->esize)) {
                const ynode *k = NULL, *v = ynode_get(node, e->key, &k);
                _cleanup_free_ char *p = join_path(where, e->key);
                json_t *j;
                if (!p) {
                        oom(c);
                        ok = false;
                        break;
                }
                if (v && !ynode_is_null(v)) {
                        j = check_value(c, e, v, p, k->line, k->col);
                        /* The plugin's default must hold even where the user overrides
                         * it: a default outside its own range is a bug to be told of. */
                        if (e->default_value && !(e->type == ORG_CFG_OBJECT && e->children))
                                json_decref(check_default(c, e, p, k->line, k->col));
                } else if (e->default_value)
                        j = check_default(c, e, p, k ? k->line : mline, k ? k->col : mcol);
                else if (e->required) {
                        diag_add(c->d, k ? k->line : mline, k ? k->col : mcol, "%s: missing required key", p);
                        fault(c);
                        ok = false;
                        continue;
                } else
                        continue;
                if (!put(c, o, e->key, j))
                        ok = false;
        }
        return finish(o, ok);
}

int config_schema_check_sized(const org_config_entry *map, size_t entry_size, const ynode *node, const char *where,
                              int parent_line, int parent_col, json_t **ret, diag *d) {
        checker c = {.d = d, .esize = entry_size};
        json_t *j = check_map(&c, map, node, where ? where : "", parent_line, parent_col);

        if (!j || c.error < 0) {
                json_decref(j);
                return c.error < 0 ? c.error : -EINVAL;
        }
        *ret = j;
        return 0;
}

int config_schema_check(const org_config_entry *map, const ynode *node, const char *where, int parent_line,
                        int parent_col, json_t **ret, diag *d) {
        return config_schema_check_sized(map, sizeof(org_config_entry), node, where, parent_line, parent_col, ret, d);
}

int config_schema_check_plugin(const org_plugin *desc, const ynode *node, const char *where, int parent_line,
                               int parent_col, json_t **ret, diag *d) {
        size_t size;
        if (config_entry_size(desc, &size) < 0) {
                diag_add(d, parent_line, parent_col,
                         "%s: the plugin declares config entries of %u bytes, not a multiple of %zu from %zu to %zu",
                         isempty(where) ? "config" : where, (unsigned)desc->config_entry_size,
                         (size_t)_Alignof(org_config_entry), (size_t)CONFIG_ENTRY_SIZE_V1, (size_t)CONFIG_ENTRY_SIZE_MAX);
                return -EINVAL;
        }
        return config_schema_check_sized(desc->config_map, size, node, where, parent_line, parent_col, ret, d);
}

json_t *config_json_path(json_t *root, const char *path) {
        json_t *j = root;
        const char *p = path;

        if (!path)
                return NULL;
        for (;;) {
                const char *dot = strchr(p, '.');
                size_t l = dot ? (size_t)(dot - p) : strlen(p);
                if (!json_is_object(j))
                        return NULL;
                j = json_object_getn(j, p, l);
                if (!j || !dot)
                        return j;
                p = dot + 1;
        }
}

/* The table as documentation, walked with the plugin's own entry size; each limit the
 * entry declares is shown as the YAML text the plugin wrote. */
json_t *config_map_to_json(const org_config_entry *map, size_t entry_size) {
        json_t *arr = json_array();
        for (const org_config_entry *e = map; e && e->key; e = config_entry_next(e, entry_size)) {
                config_limits l;
                json_t *o = json_pack("{s:s, s:s, s:b, s:s}", "key", e->key, "type", config_type_name(e->type),
                                      "required", e->required, "help", e->help ? e->help : "");
                if (!o)
                        continue;
                if (e->default_value)
                        json_object_set_new(o, "default", json_string(e->default_value));
                config_entry_limits(e, entry_size, &l);
                if (l.min)
                        json_object_set_new(o, "min", json_string(l.min));
                if (l.max)
                        json_object_set_new(o, "max", json_string(l.max));
                if (l.choices) {
                        json_t *ch = json_array();
                        for (const char *const *c = l.choices; *c; c++)
                                json_array_append_new(ch, json_string(*c));
                        json_object_set_new(o, "choices", ch);
                }
                if (l.format)
                        json_object_set_new(o, "format", json_string(l.format));
                if (e->children)
                        json_object_set_new(o, "children", config_map_to_json(e->children, entry_size));
                json_array_append_new(arr, o);
        }
        return arr;
}
