/* yamlnode.c — reads one YAML document with libyaml's event parser into a ynode tree
 * that keeps every node's line and column. The input is untrusted (a fuzzer feeds it),
 * so nesting depth, input size and node count are capped before anything recurses or
 * allocates without bound; anchors and aliases are refused outright rather than
 * expanded. Faults that leave the tree well-formed (an anchor, a duplicate key) are
 * reported and parsing goes on, so one run shows them all; a syntax error stops it. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <yaml.h>

#include "util.h"
#include "yamlnode.h"

#define YNODE_MAX_DEPTH 64
#define YNODE_MAX_INPUT (1u << 20) /* a config file is a few KiB; 1 MiB is generous */
#define YNODE_MAX_NODES 100000

typedef struct parser {
        yaml_parser_t yp;
        diag *d;
        size_t n_nodes;
        bool failed; /* a fault was reported but the tree is still whole */
} parser;

static ynode *ynode_new(ynode_kind kind, const yaml_mark_t *mark) {
        ynode *n = new0(ynode, 1);
        if (!n)
                return NULL;
        n->kind = kind;
        n->line = (int)MIN(mark->line + 1, (size_t)INT32_MAX);
        n->col = (int)MIN(mark->column + 1, (size_t)INT32_MAX);
        return n;
}

void ynode_free(ynode *n) {
        if (!n)
                return;
        for (size_t i = 0; i < n->n; i++) {
                if (n->keys)
                        ynode_free(n->keys[i]);
                ynode_free(n->values[i]);
        }
        free(n->keys);
        free(n->values);
        free(n->scalar);
        free(n);
}

static void ynode_freep(ynode **n) { ynode_free(*n); }
#define _cleanup_ynode_ _cleanup_(ynode_freep)

static void report_syntax_error(parser *p) {
        const yaml_parser_t *yp = &p->yp;
        const char *problem = yp->problem ? yp->problem : "invalid YAML";

        if (yp->error == YAML_READER_ERROR) {
                /* The reader knows a byte offset, not a line: give where the scanner stood. */
                diag_add(p->d, (int)yp->mark.line + 1, (int)yp->mark.column + 1, "%s (byte %zu)", problem,
                         yp->problem_offset);
                return;
        }
        if (yp->context)
                diag_add(p->d, (int)yp->problem_mark.line + 1, (int)yp->problem_mark.column + 1, "%s (%s at line %zu)",
                         problem, yp->context, yp->context_mark.line + 1);
        else
                diag_add(p->d, (int)yp->problem_mark.line + 1, (int)yp->problem_mark.column + 1, "%s", problem);
}

/* Next event, or -EINVAL after reporting the syntax error (-ENOMEM when libyaml ran
 * out of memory). */
static int next_event(parser *p, yaml_event_t *ev) {
        if (!yaml_parser_parse(&p->yp, ev)) {
                if (p->yp.error == YAML_MEMORY_ERROR)
                        return -ENOMEM;
                report_syntax_error(p);
                return -EINVAL;
        }
        return 0;
}

static void event_deletep(yaml_event_t *ev) { yaml_event_delete(ev); }

/* Appends (key, value) to a map or value to a seq (key NULL). Takes both on success. */
static int append(ynode *n, ynode *key, ynode *value) {
        if ((n->n & (n->n - 1)) == 0) { /* 0, 1, 2, 4...: grow by doubling */
                size_t cap = n->n ? n->n * 2 : 1;
                ynode **nv = realloc(n->values, cap * sizeof(ynode *));
                if (!nv)
                        return -ENOMEM;
                n->values = nv;
                if (n->kind == YNODE_MAP) {
                        ynode **nk = realloc(n->keys, cap * sizeof(ynode *));
                        if (!nk)
                                return -ENOMEM;
                        n->keys = nk;
                }
        }
        if (n->kind == YNODE_MAP)
                n->keys[n->n] = key;
        n->values[n->n++] = value;
        return 0;
}

static int cmp_key_index(const void *a, const void *b, void *userdata) {
        ynode *const *keys = userdata;
        size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
        int c = strcmp(keys[ia]->scalar, keys[ib]->scalar);
        if (c != 0)
                return c;
        return ia < ib ? -1 : ia > ib;
}

/* Reports every key that repeats an earlier one, in source order. Sorting keeps this
 * O(n log n): a mapping of 100000 keys must not cost 10^10 comparisons. */
static int check_duplicates(parser *p, const ynode *map) {
        if (map->n < 2)
                return 0;
        _cleanup_free_ size_t *idx = new0(size_t, map->n);
        _cleanup_free_ size_t *first = new0(size_t, map->n); /* index of the original, or SIZE_MAX */
        if (!idx || !first)
                return -ENOMEM;
        for (size_t i = 0; i < map->n; i++) {
                idx[i] = i;
                first[i] = SIZE_MAX;
        }
        qsort_r(idx, map->n, sizeof(size_t), cmp_key_index, map->keys);
        /* Equal keys are now adjacent, the earliest first (ties sort by index). */
        for (size_t i = 1, start = 0; i < map->n; i++) {
                if (streq(map->keys[idx[i]]->scalar, map->keys[idx[start]]->scalar))
                        first[idx[i]] = idx[start];
                else
                        start = i;
        }
        for (size_t i = 0; i < map->n; i++) {
                if (first[i] == SIZE_MAX)
                        continue;
                const ynode *k = map->keys[i], *orig = map->keys[first[i]];
                diag_add(p->d, k->line, k->col, "duplicate key \"%.200s\" (first at line %d)", k->scalar, orig->line);
                p->failed = true;
        }
        return 0;
}

static int parse_node(parser *p, yaml_event_t *ev, int depth, ynode **ret);

static int parse_children(parser *p, ynode *n, yaml_event_type_t end, int depth) {
        for (;;) {
                _cleanup_(event_deletep) yaml_event_t ev = {0};
                _cleanup_ynode_ ynode *key = NULL, *value = NULL;
                int r = next_event(p, &ev);
                if (r < 0)
                        return r;
                if (ev.type == end)
                        break;
                r = parse_node(p, &ev, depth + 1, n->kind == YNODE_MAP ? &key : &value);
                if (r < 0)
                        return r;
                if (n->kind == YNODE_MAP) {
                        _cleanup_(event_deletep) yaml_event_t vev = {0};
                        if (key->kind != YNODE_SCALAR) {
                                /* "? [a, b]: c" is legal YAML but means nothing in a config,
                                 * and ynode_get and JSON need string keys. */
                                diag_add(p->d, key->line, key->col, "mapping keys must be plain strings");
                                p->failed = true;
                                ynode *k = ynode_new(YNODE_SCALAR, &ev.start_mark);
                                if (!k)
                                        return -ENOMEM;
                                k->scalar = strdup("");
                                if (!k->scalar) {
                                        ynode_free(k);
                                        return -ENOMEM;
                                }
                                ynode_free(key);
                                key = k;
                        }
                        r = next_event(p, &vev);
                        if (r < 0)
                                return r;
                        r = parse_node(p, &vev, depth + 1, &value);
                        if (r < 0)
                                return r;
                }
                r = append(n, key, value);
                if (r < 0)
                        return r;
                key = value = NULL;
        }
        if (n->kind == YNODE_MAP)
                return check_duplicates(p, n);
        return 0;
}

/* Builds the node that starts with ev (a scalar, alias or collection start), reading
 * the rest of a collection's events. */
static int parse_node(parser *p, yaml_event_t *ev, int depth, ynode **ret) {
        _cleanup_ynode_ ynode *n = NULL;
        const yaml_char_t *anchor = NULL;
        int r;

        if (depth > YNODE_MAX_DEPTH) {
                diag_add(p->d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                         "nesting deeper than %d levels", YNODE_MAX_DEPTH);
                return -EINVAL;
        }
        if (++p->n_nodes > YNODE_MAX_NODES) {
                diag_add(p->d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                         "more than %d nodes in the document", YNODE_MAX_NODES);
                return -EINVAL;
        }

        switch (ev->type) {
        case YAML_ALIAS_EVENT:
                diag_add(p->d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                         "aliases (*%.100s) are not supported", (const char *)ev->data.alias.anchor);
                p->failed = true;
                /* Stand in a null so the tree stays whole and later faults still show. */
                n = ynode_new(YNODE_SCALAR, &ev->start_mark);
                if (!n || !(n->scalar = strdup("")))
                        return -ENOMEM;
                n->plain = true;
                break;
        case YAML_SCALAR_EVENT:
                anchor = ev->data.scalar.anchor;
                if (memchr(ev->data.scalar.value, '\0', ev->data.scalar.length)) {
                        diag_add(p->d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                                 "NUL character in a string");
                        p->failed = true;
                }
                n = ynode_new(YNODE_SCALAR, &ev->start_mark);
                if (!n || !(n->scalar = strndup((const char *)ev->data.scalar.value, ev->data.scalar.length)))
                        return -ENOMEM;
                /* A tag ("!!str 123") asks for a string reading; only untagged plain
                 * scalars get typed as null/bool/number. */
                n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !ev->data.scalar.tag;
                break;
        case YAML_SEQUENCE_START_EVENT:
                anchor = ev->data.sequence_start.anchor;
                n = ynode_new(YNODE_SEQ, &ev->start_mark);
                if (!n)
                        return -ENOMEM;
                r = parse_children(p, n, YAML_SEQUENCE_END_EVENT, depth);
                if (r < 0)
                        return r;
                break;
        case YAML_MAPPING_START_EVENT:
                anchor = ev->data.mapping_start.anchor;
                n = ynode_new(YNODE_MAP, &ev->start_mark);
                if (!n)
                        return -ENOMEM;
                r = parse_children(p, n, YAML_MAPPING_END_EVENT, depth);
                if (r < 0)
                        return r;
                break;
        default:
                /* libyaml only gives node events here; anything else is its bug or ours. */
                diag_add(p->d, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1, "unexpected YAML event");
                return -EINVAL;
        }
        if (anchor) {
                diag_add(p->d, n->line, n->col, "anchors (&%.100s) are not supported", (const char *)anchor);
                p->failed = true;
        }
        *ret = TAKE_PTR(n);
        return 0;
}

static int parse_document(parser *p, ynode **ret) {
        _cleanup_ynode_ ynode *root = NULL;
        int r;

        {
                _cleanup_(event_deletep) yaml_event_t ev = {0};
                r = next_event(p, &ev);
                if (r < 0)
                        return r;
                if (ev.type != YAML_STREAM_START_EVENT)
                        return -EINVAL;
        }
        {
                _cleanup_(event_deletep) yaml_event_t ev = {0};
                r = next_event(p, &ev);
                if (r < 0)
                        return r;
                if (ev.type == YAML_STREAM_END_EVENT) {
                        /* Nothing at all, or only comments. */
                        yaml_mark_t m = {.line = 0, .column = 0};
                        root = ynode_new(YNODE_MAP, &m);
                        if (!root)
                                return -ENOMEM;
                        *ret = TAKE_PTR(root);
                        return 0;
                }
                if (ev.type != YAML_DOCUMENT_START_EVENT)
                        return -EINVAL;
        }
        {
                _cleanup_(event_deletep) yaml_event_t ev = {0};
                r = next_event(p, &ev);
                if (r < 0)
                        return r;
                r = parse_node(p, &ev, 1, &root);
                if (r < 0)
                        return r;
        }
        if (ynode_is_null(root)) {
                /* "---" alone (or "~"): an empty document is an empty map. */
                ynode *m = new0(ynode, 1);
                if (!m)
                        return -ENOMEM;
                m->kind = YNODE_MAP;
                m->line = root->line;
                m->col = root->col;
                ynode_free(root);
                root = m;
        }
        {
                _cleanup_(event_deletep) yaml_event_t ev = {0};
                r = next_event(p, &ev);
                if (r < 0)
                        return r;
                if (ev.type != YAML_DOCUMENT_END_EVENT)
                        return -EINVAL;
        }
        {
                _cleanup_(event_deletep) yaml_event_t ev = {0};
                r = next_event(p, &ev);
                if (r < 0)
                        return r;
                if (ev.type == YAML_DOCUMENT_START_EVENT) {
                        diag_add(p->d, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                                 "only one YAML document is allowed");
                        return -EINVAL;
                }
                if (ev.type != YAML_STREAM_END_EVENT)
                        return -EINVAL;
        }
        if (p->failed)
                return -EINVAL;
        *ret = TAKE_PTR(root);
        return 0;
}

int ynode_parse_string(const char *text, size_t len, ynode **ret, diag *d) {
        parser p = {.d = d};
        ynode *root = NULL;
        int r;

        if (!text)
                text = ""; /* libyaml asserts on a NULL input, even of length 0 */
        if (len > YNODE_MAX_INPUT) {
                diag_add(d, 0, 0, "file too large (%zu bytes, at most %u)", len, YNODE_MAX_INPUT);
                return -EINVAL;
        }
        if (!yaml_parser_initialize(&p.yp))
                return -ENOMEM;
        yaml_parser_set_input_string(&p.yp, (const unsigned char *)text, len);
        r = parse_document(&p, &root);
        yaml_parser_delete(&p.yp);
        if (r < 0)
                return r;
        *ret = root;
        return 0;
}

int ynode_parse_file(const char *path, ynode **ret, diag *d) {
        _cleanup_free_ char *text = NULL;
        struct stat st;
        size_t len;
        int r;

        /* Refuse a huge file before reading it rather than after. */
        if (stat(path, &st) < 0)
                return -errno;
        if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > YNODE_MAX_INPUT) {
                diag_add(d, 0, 0, "file too large (%llu bytes, at most %u)", (unsigned long long)st.st_size,
                         YNODE_MAX_INPUT);
                return -EINVAL;
        }
        r = read_full_file(path, &text, &len);
        if (r < 0)
                return r;
        return ynode_parse_string(text, len, ret, d);
}

const ynode *ynode_get(const ynode *map, const char *key, const ynode **ret_key) {
        if (!map || map->kind != YNODE_MAP)
                return NULL;
        for (size_t i = 0; i < map->n; i++)
                if (streq(map->keys[i]->scalar, key)) {
                        if (ret_key)
                                *ret_key = map->keys[i];
                        return map->values[i];
                }
        return NULL;
}

bool ynode_is_null(const ynode *n) {
        if (!n)
                return true;
        if (n->kind != YNODE_SCALAR || !n->plain)
                return false;
        return streq(n->scalar, "") || streq(n->scalar, "~") || streq(n->scalar, "null") ||
               streq(n->scalar, "Null") || streq(n->scalar, "NULL");
}

static bool is_core_int(const char *s, long long *ret) {
        const char *p = s;
        int base = 10;
        bool neg = false;

        if (*p == '-' || *p == '+') {
                neg = *p == '-';
                p++;
        }
        if (p[0] == '0' && p[1] == 'x' && s == p) {
                base = 16;
                p += 2;
        } else if (p[0] == '0' && p[1] == 'o' && s == p) {
                base = 8;
                p += 2;
        }
        if (!*p)
                return false;
        for (const char *q = p; *q; q++) {
                bool ok = base == 16 ? ((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f') || (*q >= 'A' && *q <= 'F'))
                          : base == 8 ? (*q >= '0' && *q <= '7')
                                      : (*q >= '0' && *q <= '9');
                if (!ok)
                        return false;
        }
        errno = 0;
        unsigned long long u = strtoull(p, NULL, base);
        if (errno == ERANGE)
                return false;
        if (neg) {
                if (u > (unsigned long long)LLONG_MAX + 1)
                        return false;
                *ret = u == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)u;
        } else {
                if (u > (unsigned long long)LLONG_MAX)
                        return false;
                *ret = (long long)u;
        }
        return true;
}

static bool is_core_float(const char *s, double *ret) {
        const char *p = s;
        bool digits = false;

        if (*p == '-' || *p == '+')
                p++;
        while (*p >= '0' && *p <= '9') {
                p++;
                digits = true;
        }
        if (*p == '.') {
                p++;
                while (*p >= '0' && *p <= '9') {
                        p++;
                        digits = true;
                }
        }
        if (!digits)
                return false;
        if (*p == 'e' || *p == 'E') {
                p++;
                if (*p == '-' || *p == '+')
                        p++;
                if (!(*p >= '0' && *p <= '9'))
                        return false;
                while (*p >= '0' && *p <= '9')
                        p++;
        }
        if (*p)
                return false;
        char *end;
        double v = strtod(s, &end);
        if (*end || !isfinite(v))
                return false; /* JSON has no infinity */
        *ret = v;
        return true;
}

static json_t *scalar_to_json(const ynode *n) {
        const char *s = n->scalar;
        long long i;
        double f;

        if (!n->plain)
                return json_string(s);
        if (ynode_is_null(n))
                return json_null();
        if (streq(s, "true") || streq(s, "True") || streq(s, "TRUE"))
                return json_true();
        if (streq(s, "false") || streq(s, "False") || streq(s, "FALSE"))
                return json_false();
        if (is_core_int(s, &i))
                return json_integer(i);
        if (is_core_float(s, &f))
                return json_real(f);
        /* .inf and .nan stay text (JSON cannot hold them); an integer too large for 64
         * bits has already become a float, as the core schema allows. */
        return json_string(s);
}

json_t *ynode_to_json(const ynode *n) {
        if (!n)
                return json_null();
        switch (n->kind) {
        case YNODE_SCALAR: {
                json_t *j = scalar_to_json(n);
                /* json_string refuses invalid UTF-8; libyaml has checked it, but be safe. */
                return j ? j : json_null();
        }
        case YNODE_SEQ: {
                json_t *a = json_array();
                if (!a)
                        return NULL;
                for (size_t i = 0; i < n->n; i++)
                        if (json_array_append_new(a, ynode_to_json(n->values[i])) < 0) {
                                json_decref(a);
                                return NULL;
                        }
                return a;
        }
        case YNODE_MAP: {
                json_t *o = json_object();
                if (!o)
                        return NULL;
                for (size_t i = 0; i < n->n; i++)
                        if (json_object_set_new(o, n->keys[i]->scalar, ynode_to_json(n->values[i])) < 0) {
                                json_decref(o);
                                return NULL;
                        }
                return o;
        }
        }
        return NULL;
}
