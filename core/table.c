/* table.c — plain-text tables with a header row, left-aligned columns separated by
 * two spaces, the last column unpadded. */
#include "table.h"
#include "util.h"

struct table {
        size_t cols;
        char **cells; /* rows * cols, row 0 = headers */
        size_t rows, cap;
};

table *table_new(size_t n_columns, const char *const *headers) {
        table *t = new0(table, 1);
        if (!t)
                return NULL;
        t->cols = n_columns;
        if (table_add_row(t, headers) < 0) {
                table_free(t);
                return NULL;
        }
        return t;
}

int table_add_row(table *t, const char *const *cells) {
        if (t->rows == t->cap) {
                size_t ncap = t->cap ? t->cap * 2 : 16;
                char **n = realloc(t->cells, ncap * t->cols * sizeof(char *));
                if (!n)
                        return -ENOMEM;
                t->cells = n;
                t->cap = ncap;
        }
        for (size_t i = 0; i < t->cols; i++) {
                char *s = strdup(cells[i] ? cells[i] : "-");
                if (!s)
                        return -ENOMEM;
                /* one line per cell: a newline would break the columns */
                for (char *p = s; *p; p++)
                        if (*p == '\n' || *p == '\t')
                                *p = ' ';
                t->cells[t->rows * t->cols + i] = s;
        }
        t->rows++;
        return 0;
}

void table_print(const table *t, FILE *f) {
        size_t *w = new0(size_t, t->cols);
        if (!w)
                return;
        for (size_t r = 0; r < t->rows; r++)
                for (size_t c = 0; c < t->cols; c++)
                        w[c] = MAX(w[c], strlen(t->cells[r * t->cols + c]));
        for (size_t r = 0; r < t->rows; r++) {
                for (size_t c = 0; c < t->cols; c++) {
                        const char *s = t->cells[r * t->cols + c];
                        if (c + 1 < t->cols)
                                fprintf(f, "%-*s  ", (int)w[c], s);
                        else
                                fprintf(f, "%s", s);
                }
                fputc('\n', f);
        }
        free(w);
}

void table_free(table *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->rows * t->cols; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
}
