/* yamlnode.h — a YAML document read with libyaml into a small tree that remembers the
 * line and column of every node, so every later check can point at the fault. Anchors
 * and aliases are refused (a config has no need of them, and they are a billion-laughs
 * door); duplicate keys in a mapping are errors. */
#ifndef CORE_YAMLNODE_H
#define CORE_YAMLNODE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "diag.h"

typedef enum ynode_kind {
        YNODE_SCALAR,
        YNODE_MAP,
        YNODE_SEQ,
} ynode_kind;

typedef struct ynode {
        ynode_kind kind;
        int line, col;          /* 1-based */
        char *scalar;           /* YNODE_SCALAR */
        bool plain;             /* scalar was unquoted: null/true/123 are typed */
        size_t n;               /* entries of a map or items of a seq */
        struct ynode **keys;    /* YNODE_MAP: scalar key nodes */
        struct ynode **values;  /* YNODE_MAP values, YNODE_SEQ items */
} ynode;

/* Parses one document. An empty document gives an empty map. Syntax errors are added
 * to d (with line and column) and make it return -EINVAL. */
int ynode_parse_file(const char *path, ynode **ret, diag *d);
int ynode_parse_string(const char *text, size_t len, ynode **ret, diag *d);
void ynode_free(ynode *n); /* accepts NULL */

/* Value of KEY in a map node, or NULL; *ret_key (may be NULL) gets the key node. */
const ynode *ynode_get(const ynode *map, const char *key, const ynode **ret_key);
/* A plain scalar "null", "~" or "" (or an absent value). */
bool ynode_is_null(const ynode *n);
/* Typed JSON as YAML's core schema reads it (plain scalars: null, bool, int, float;
 * anything quoted is a string). New reference. */
json_t *ynode_to_json(const ynode *n);

#endif
