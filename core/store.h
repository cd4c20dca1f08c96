/* store.h — a thin sqlite3 wrapper: one database file per plugin instance under
 * state_dir, WAL journal, synchronous=NORMAL, a busy time-out, and a key/value table
 * for small state. Parameters are bound as text. */
#ifndef CORE_STORE_H
#define CORE_STORE_H

#include <stddef.h>

#include <organism/host.h>

typedef struct store store;

/* Opens (creating) the database at path, mode 0600. */
int store_open(const char *path, store **ret);
void store_close(store *s); /* accepts NULL */

int store_exec(store *s, const char *sql, const char *const *params, size_t n_params);
int store_query(store *s, const char *sql, const char *const *params, size_t n_params, org_row_fn row,
                void *userdata);
int store_kv_get(store *s, const char *key, char **ret_value); /* -ENOENT when absent */
int store_kv_set(store *s, const char *key, const char *value);
/* The last sqlite error message of this store, for logs. */
const char *store_errmsg(store *s);

#endif
