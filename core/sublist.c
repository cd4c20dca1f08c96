/* sublist.c — the subscription trie behind the bus, after nats-server's sublist. Each
 * node is one token position: an open-addressed hash of literal children, a `*` child,
 * the items whose pattern ends here and the items whose pattern continues with `>`.
 * Matching walks the subject's tokens once per branch it meets (literal and `*`), so
 * its cost follows the subject, not the number of subscriptions, and it allocates
 * nothing. Removal prunes nodes left empty so churn does not leak memory. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "subject.h"
#include "sublist.h"

typedef struct ptrvec {
        void **v;
        size_t n, cap;
} ptrvec;

typedef struct node node;
struct node {
        node **slots;    /* literal children, open addressing, NULL = free slot */
        size_t n_children;
        size_t n_slots;  /* 0 or a power of two */
        node *star;
        ptrvec items;    /* patterns ending at this token */
        ptrvec rest;     /* patterns "<this prefix>.>" */
        uint32_t hash;   /* of token, the key in the parent's table */
        size_t token_len;
        char token[];    /* not NUL-terminated; empty for the root and `*` nodes */
};

struct sublist {
        node *root;
        size_t count;
};

/* FNV-1a: short tokens, no need for anything stronger, and it runs while the token's
 * end is being searched for, so the subject is read once. */
static inline uint32_t hash_token(const char *s, const char **ret_end) {
        uint32_t h = 2166136261u;
        const char *p = s;
        for (; *p && *p != '.'; p++)
                h = (h ^ (unsigned char)*p) * 16777619u;
        *ret_end = p;
        return h;
}

static int vec_push(ptrvec *v, void *item) {
        if (v->n == v->cap) {
                size_t cap = v->cap ? v->cap * 2 : 2;
                void **nv = realloc(v->v, cap * sizeof(void *));
                if (!nv)
                        return -ENOMEM;
                v->v = nv;
                v->cap = cap;
        }
        v->v[v->n++] = item;
        return 0;
}

/* Keeps the order of the others, so callbacks stay in subscription order. */
static int vec_remove(ptrvec *v, void *item) {
        for (size_t i = v->n; i > 0; i--)
                if (v->v[i - 1] == item) {
                        memmove(v->v + i - 1, v->v + i, (v->n - i) * sizeof(void *));
                        v->n--;
                        if (v->n == 0) {
                                free(v->v);
                                *v = (ptrvec){0};
                        }
                        return 0;
                }
        return -ENOENT;
}

static node *node_new(const char *token, size_t len, uint32_t hash) {
        node *n = calloc(1, sizeof(node) + len);
        if (!n)
                return NULL;
        if (len)
                memcpy(n->token, token, len);
        n->token_len = len;
        n->hash = hash;
        return n;
}

static void node_free(node *n) {
        if (!n)
                return;
        for (size_t i = 0; i < n->n_slots; i++)
                node_free(n->slots[i]);
        free(n->slots);
        node_free(n->star);
        free(n->items.v);
        free(n->rest.v);
        free(n);
}

static bool node_is_empty(const node *n) {
        return n->items.n == 0 && n->rest.n == 0 && !n->star && n->n_children == 0;
}

static node *child_find(const node *n, const char *tok, size_t len, uint32_t h) {
        if (n->n_children == 0)
                return NULL;
        size_t mask = n->n_slots - 1;
        for (size_t i = h & mask;; i = (i + 1) & mask) {
                node *c = n->slots[i];
                if (!c)
                        return NULL;
                if (c->hash == h && c->token_len == len && memcmp(c->token, tok, len) == 0)
                        return c;
        }
}

static void slots_place(node **slots, size_t n_slots, node *c) {
        size_t mask = n_slots - 1;
        size_t i = c->hash & mask;
        while (slots[i])
                i = (i + 1) & mask;
        slots[i] = c;
}

static int child_add(node *n, node *c) {
        /* Load factor at most 3/4 keeps probe chains short. */
        if ((n->n_children + 1) * 4 > n->n_slots * 3) {
                size_t ns = n->n_slots ? n->n_slots * 2 : 4;
                node **slots = calloc(ns, sizeof(node *));
                if (!slots)
                        return -ENOMEM;
                for (size_t i = 0; i < n->n_slots; i++)
                        if (n->slots[i])
                                slots_place(slots, ns, n->slots[i]);
                free(n->slots);
                n->slots = slots;
                n->n_slots = ns;
        }
        slots_place(n->slots, n->n_slots, c);
        n->n_children++;
        return 0;
}

/* Backward-shift deletion: no tombstones, so lookups never slow down with churn. */
static void child_del(node *n, node *c) {
        size_t mask = n->n_slots - 1;
        size_t i = c->hash & mask;
        while (n->slots[i] != c)
                i = (i + 1) & mask;
        n->slots[i] = NULL;
        for (size_t j = (i + 1) & mask; n->slots[j]; j = (j + 1) & mask) {
                size_t k = n->slots[j]->hash & mask;
                /* Move slots[j] into the hole unless its home k lies cyclically in (i, j]. */
                bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
                if (!stays) {
                        n->slots[i] = n->slots[j];
                        n->slots[j] = NULL;
                        i = j;
                }
        }
        if (--n->n_children == 0) {
                free(n->slots);
                n->slots = NULL;
                n->n_slots = 0;
        }
}

sublist *sublist_new(void) {
        sublist *s = calloc(1, sizeof(sublist));
        if (!s)
                return NULL;
        s->root = node_new(NULL, 0, 0);
        if (!s->root) {
                free(s);
                return NULL;
        }
        return s;
}

void sublist_free(sublist *s) {
        if (!s)
                return;
        node_free(s->root);
        free(s);
}

static int remove_rec(node *n, const char *p, void *item, bool only_prune);

int sublist_insert(sublist *s, const char *pattern, void *item) {
        if (!s || !pattern_is_valid(pattern))
                return -EINVAL;

        node *n = s->root;
        const char *p = pattern;
        for (;;) {
                const char *pe;
                uint32_t h = hash_token(p, &pe);
                size_t len = (size_t)(pe - p);

                if (len == 1 && *p == '>') {
                        if (vec_push(&n->rest, item) < 0)
                                goto fail;
                        break;
                }

                node *c;
                if (len == 1 && *p == '*') {
                        c = n->star;
                        if (!c) {
                                c = node_new(NULL, 0, 0);
                                if (!c)
                                        goto fail;
                                n->star = c;
                        }
                } else {
                        c = child_find(n, p, len, h);
                        if (!c) {
                                c = node_new(p, len, h);
                                if (!c)
                                        goto fail;
                                if (child_add(n, c) < 0) {
                                        free(c);
                                        goto fail;
                                }
                        }
                }
                n = c;
                if (!*pe) {
                        if (vec_push(&n->items, item) < 0)
                                goto fail;
                        break;
                }
                p = pe + 1;
        }
        s->count++;
        return 0;

fail:
        /* Nodes created on the way down may be empty now: drop them. */
        (void)remove_rec(s->root, pattern, NULL, true);
        return -ENOMEM;
}

/* Recursion depth is the pattern's token count; it unwinds through the parents, which
 * is where pruning needs to look. With only_prune it removes no item and just drops
 * the empty nodes a failed insert left on the pattern's path. */
static int remove_rec(node *n, const char *p, void *item, bool only_prune) {
        const char *pe;
        uint32_t h = hash_token(p, &pe);
        size_t len = (size_t)(pe - p);

        if (len == 1 && *p == '>')
                return only_prune ? 0 : vec_remove(&n->rest, item);

        bool star = len == 1 && *p == '*';
        node *c = star ? n->star : child_find(n, p, len, h);
        if (!c)
                return only_prune ? 0 : -ENOENT; /* a failed insert may stop short */

        int r = *pe ? remove_rec(c, pe + 1, item, only_prune) : only_prune ? 0 : vec_remove(&c->items, item);
        if (r == 0 && node_is_empty(c)) {
                if (star)
                        n->star = NULL;
                else
                        child_del(n, c);
                free(c);
        }
        return r;
}

int sublist_remove(sublist *s, const char *pattern, void *item) {
        if (!s || !pattern_is_valid(pattern))
                return -EINVAL;
        int r = remove_rec(s->root, pattern, item, false);
        if (r == 0)
                s->count--;
        return r;
}

static inline size_t emit(const ptrvec *v, sublist_match_fn fn, void *userdata) {
        for (size_t i = 0; i < v->n; i++)
                fn(v->v[i], userdata);
        return v->n;
}

/* S points at a token that exists. Loops down the literal branch and recurses only
 * where a `*` child forks the walk. */
static size_t match_rec(const node *n, const char *s, sublist_match_fn fn, void *userdata) {
        size_t k = 0;
        for (;;) {
                k += emit(&n->rest, fn, userdata); /* `>` needs one token or more: s has one */

                const char *se;
                uint32_t h = hash_token(s, &se);
                const node *lit = child_find(n, s, (size_t)(se - s), h);

                if (!*se) {
                        if (lit)
                                k += emit(&lit->items, fn, userdata);
                        if (n->star)
                                k += emit(&n->star->items, fn, userdata);
                        return k;
                }
                s = se + 1;
                if (n->star) {
                        if (lit)
                                k += match_rec(lit, s, fn, userdata);
                        n = n->star;
                } else if (lit)
                        n = lit;
                else
                        return k;
        }
}

size_t sublist_match(const sublist *s, const char *subject, sublist_match_fn fn, void *userdata) {
        if (!s || !subject || !*subject)
                return 0;
        return match_rec(s->root, subject, fn, userdata);
}

size_t sublist_count(const sublist *s) { return s ? s->count : 0; }
