/* config_schema.c — one checker for every block of the config file. It walks a ynode
 * map beside an org_config_entry table, reports each fault with its position and dotted
 * key path ("FILE:12:7: plugins.memory.config.mem_low: expected a size (e.g. 3GiB), got
 * \"lots\""), carries on to find the others, and produces normalised JSON: defaults
 * filled in (parsed through the same checker, so a default can never be of the wrong
 * type), durations as integer milliseconds, sizes as integer bytes. An explicit null
 * (`key:` or `key: ~`) counts as absent, so a plugin never reads a null where its map
 * promised a value. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config_schema.h"
#include "duration.h"
#include "subject.h"
#include "util.h"

typedef struct checker {
        diag *d;
        int error; /* 0, -EINVAL after a reported fault, -ENOMEM */
} checker;

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

static json_t *check_list(checker *c, org_config_type t, org_config_type item, const ynode *v, const char *path) {
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
                if (!put(c, a, NULL, check_scalar(c, item, v->values[i], p)))
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
                        j = e->children ? check_map(c, e->children, item, p, item->line, item->col) : ynode_to_json(item);
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
                        j = check_scalar(c, ORG_CFG_STRING, val, p);
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

        switch (e->type) {
        case ORG_CFG_STRING:
        case ORG_CFG_INT:
        case ORG_CFG_BOOL:
        case ORG_CFG_DOUBLE:
        case ORG_CFG_DURATION:
        case ORG_CFG_SIZE:
        case ORG_CFG_PATTERN:
                return check_scalar(c, e->type, v, path);
        case ORG_CFG_STRING_LIST:
                return check_list(c, e->type, ORG_CFG_STRING, v, path);
        case ORG_CFG_INT_LIST:
                return check_list(c, e->type, ORG_CFG_INT, v, path);
        case ORG_CFG_PATTERN_LIST:
                return check_list(c, e->type, ORG_CFG_PATTERN, v, path);
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
 * value, so it is normalised the same way; a bad one is reported at the key it fills. */
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
        sub = (checker){.d = &tmp};
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
        } else if (!j) {
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
                        e++;
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
        for (const org_config_entry *e = table; e && e->key; e++) {
                const ynode *k = NULL, *v = ynode_get(node, e->key, &k);
                _cleanup_free_ char *p = join_path(where, e->key);
                json_t *j;
                if (!p) {
                        oom(c);
                        ok = false;
                        break;
                }
                if (v && !ynode_is_null(v))
                        j = check_value(c, e, v, p, k->line, k->col);
                else if (e->default_value)
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

int config_schema_check(const org_config_entry *map, const ynode *node, const char *where, int parent_line,
                        int parent_col, json_t **ret, diag *d) {
        checker c = {.d = d};
        json_t *j = check_map(&c, map, node, where ? where : "", parent_line, parent_col);

        if (!j || c.error < 0) {
                json_decref(j);
                return c.error < 0 ? c.error : -EINVAL;
        }
        *ret = j;
        return 0;
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
