/* table.h — agentctl's human tables: columns sized to their widest cell. */
#ifndef CORE_TABLE_H
#define CORE_TABLE_H

#include <stddef.h>
#include <stdio.h>

typedef struct table table;

table *table_new(size_t n_columns, const char *const *headers);
/* Copies the n_columns cells (NULL prints as "-"). */
int table_add_row(table *t, const char *const *cells);
void table_print(const table *t, FILE *f);
void table_free(table *t); /* accepts NULL */

#endif
