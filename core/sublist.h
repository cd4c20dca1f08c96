/* sublist.h — a token trie of subscription patterns, as nats-server's sublist: matching
 * a subject costs in proportion to its number of tokens (and the wildcard branches it
 * meets), not to the number of subscriptions. Items are opaque pointers; the same item
 * may sit under several patterns. */
#ifndef CORE_SUBLIST_H
#define CORE_SUBLIST_H

#include <stddef.h>

typedef struct sublist sublist;

sublist *sublist_new(void);
void sublist_free(sublist *s); /* accepts NULL; does not free items */

/* 0, -EINVAL for a bad pattern, -ENOMEM. Inserting the same (pattern, item) twice
 * stores it twice. */
int sublist_insert(sublist *s, const char *pattern, void *item);
/* Removes one (pattern, item) entry; -ENOENT when absent. Empty nodes are pruned. */
int sublist_remove(sublist *s, const char *pattern, void *item);

typedef void (*sublist_match_fn)(void *item, void *userdata);
/* Calls fn once per matching (pattern, item) entry. SUBJECT must be a valid literal
 * subject. fn must not modify the sublist. Returns the number of calls. */
size_t sublist_match(const sublist *s, const char *subject, sublist_match_fn fn, void *userdata);
size_t sublist_count(const sublist *s);

#endif
