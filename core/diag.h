/* diag.h — a list of diagnostics, each "FILE:LINE:COL: message", gathered while a
 * config is read so that `agentd --check` can print every fault at once. */
#ifndef CORE_DIAG_H
#define CORE_DIAG_H

#include <stddef.h>
#include <stdio.h>

typedef struct diag {
        char **lines;
        size_t n;
        size_t cap;
        const char *file; /* borrowed: the name written before each line */
} diag;

void diag_init(diag *d, const char *file);
void diag_done(diag *d);
/* Adds one line; line/col are 1-based, 0 when unknown. */
void diag_add(diag *d, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void diag_print(const diag *d, FILE *f);
/* All lines joined with '\n', malloc'd (NULL when there are none). */
char *diag_join(const diag *d);

#endif
