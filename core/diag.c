/* diag.c — the list of config diagnostics printed by `agentd --check`. */
#include <stdarg.h>

#include "diag.h"
#include "util.h"

void diag_init(diag *d, const char *file) {
        *d = (diag){.file = file};
}

void diag_done(diag *d) {
        for (size_t i = 0; i < d->n; i++)
                free(d->lines[i]);
        free(d->lines);
        *d = (diag){0};
}

void diag_add(diag *d, int line, int col, const char *fmt, ...) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);

        if (d->n == d->cap) {
                size_t ncap = d->cap ? d->cap * 2 : 8;
                char **nl = realloc(d->lines, ncap * sizeof(char *));
                if (!nl)
                        return; /* out of memory: the diagnostic is lost, the failure is not */
                d->lines = nl;
                d->cap = ncap;
        }
        char *s = NULL;
        int r;
        if (line > 0)
                r = asprintf(&s, "%s:%d:%d: %s", d->file ? d->file : "<config>", line, col > 0 ? col : 1, msg);
        else
                r = asprintf(&s, "%s: %s", d->file ? d->file : "<config>", msg);
        if (r < 0)
                return;
        d->lines[d->n++] = s;
}

void diag_print(const diag *d, FILE *f) {
        for (size_t i = 0; i < d->n; i++)
                fprintf(f, "%s\n", d->lines[i]);
}

char *diag_join(const diag *d) {
        if (d->n == 0)
                return NULL;
        size_t len = 0;
        for (size_t i = 0; i < d->n; i++)
                len += strlen(d->lines[i]) + 1;
        char *s = malloc(len + 1), *p = s;
        if (!s)
                return NULL;
        for (size_t i = 0; i < d->n; i++) {
                size_t l = strlen(d->lines[i]);
                memcpy(p, d->lines[i], l);
                p += l;
                *p++ = '\n';
        }
        p[-1] = '\0';
        return s;
}
