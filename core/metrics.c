/* metrics.c — the registry of counters and gauges from every instance. A series is
 * keyed by (instance, name with labels) in a hash table so updates stay O(1) with
 * thousands of series; labels are parsed, validated and put in a canonical order so
 * `{a="1",b="2"}` and `{b="2",a="1"}` are one series. Families (one metric name across
 * instances and labels) carry the type and help, because the Prometheus text format
 * allows exactly one TYPE per family. Rendering sorts a snapshot, so the output is
 * stable for diffing and tests. */
#include <math.h>

#include "metrics.h"
#include "util.h"

#define METRICS_PREFIX "organism_"
#define METRICS_TEXTFILE_MODE 0644

typedef struct family {
        char *name;
        org_metric_type type;
        char *help; /* NULL until some caller gives one */
        size_t refs;
        struct family *next;
} family;

typedef struct series {
        char *instance;
        char *name;   /* canonical "name{labels}" or "name": the key with instance */
        char *labels; /* canonical, braces stripped, "" without labels; points into name */
        family *fam;
        double value;
        struct series *next;
} series;

struct metrics {
        series **buckets;
        size_t n_buckets;
        size_t n_series;
        family **fam_buckets;
        size_t n_fam_buckets;
        size_t n_families;
};

static uint64_t hash_str(uint64_t h, const char *s) {
        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 1099511628211ULL;
        }
        return h;
}

static uint64_t hash_series(const char *instance, const char *name) {
        uint64_t h = hash_str(14695981039346656037ULL, instance);
        h ^= 0xff; /* a byte no name contains: ("ab","c") and ("a","bc") differ */
        h *= 1099511628211ULL;
        return hash_str(h, name);
}


/* --- names and labels ------------------------------------------------------------ */

static bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':'; }
static bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }
static bool is_label_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_label_char(char c) { return is_label_start(c) || (c >= '0' && c <= '9'); }

typedef struct label_ref {
        const char *name;
        size_t name_len;
        const char *value; /* escaped form, as written between the quotes */
        size_t value_len;
} label_ref;

static int label_cmp(const void *a, const void *b) {
        const label_ref *x = a, *y = b;
        size_t n = MIN(x->name_len, y->name_len);
        int c = memcmp(x->name, y->name, n);
        if (c != 0)
                return c;
        return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Validates "name" or "name{l=\"v\",...}" and builds the canonical form (labels
 * sorted, no trailing comma, no empty braces). *ret_family_len is the length of the
 * bare name. */
static int parse_name(const char *in, char **ret_canonical, size_t *ret_family_len) {
        if (!in || !is_name_start(in[0]))
                return -EINVAL;
        size_t n = 1;
        while (is_name_char(in[n]))
                n++;
        if (in[n] != '\0' && in[n] != '{')
                return -EINVAL;

        /* Each label needs at least 5 bytes (a="",), which bounds the array. */
        size_t max_labels = strlen(in + n) / 5 + 1;
        _cleanup_free_ label_ref *labels = NULL;
        size_t n_labels = 0;
        if (in[n] == '{') {
                labels = calloc(max_labels, sizeof(*labels));
                if (!labels)
                        return -ENOMEM;
                const char *p = in + n + 1;
                while (*p != '}') {
                        if (!is_label_start(*p))
                                return -EINVAL;
                        label_ref *l = &labels[n_labels];
                        l->name = p;
                        while (is_label_char(*p))
                                p++;
                        l->name_len = (size_t)(p - l->name);
                        /* "instance" is ours; "__" names are reserved by Prometheus. */
                        if ((l->name_len == 8 && memcmp(l->name, "instance", 8) == 0) ||
                            (l->name_len >= 2 && l->name[0] == '_' && l->name[1] == '_'))
                                return -EINVAL;
                        if (p[0] != '=' || p[1] != '"')
                                return -EINVAL;
                        p += 2;
                        l->value = p;
                        for (;;) {
                                if (*p == '\0' || *p == '\n')
                                        return -EINVAL;
                                if (*p == '"')
                                        break;
                                if (*p == '\\') {
                                        if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                                                return -EINVAL;
                                        p++;
                                }
                                p++;
                        }
                        l->value_len = (size_t)(p - l->value);
                        p++;
                        n_labels++;
                        if (*p == ',')
                                p++;
                        else if (*p != '}')
                                return -EINVAL;
                        if (n_labels == max_labels && *p != '}')
                                return -EINVAL;
                }
                if (p[1] != '\0')
                        return -EINVAL;
                qsort(labels, n_labels, sizeof(*labels), label_cmp);
                for (size_t i = 1; i < n_labels; i++)
                        if (label_cmp(&labels[i - 1], &labels[i]) == 0)
                                return -EINVAL;
        }

        size_t len = n + 1;
        for (size_t i = 0; i < n_labels; i++)
                len += labels[i].name_len + labels[i].value_len + 4;
        len += 2;
        char *out = malloc(len);
        if (!out)
                return -ENOMEM;
        memcpy(out, in, n);
        size_t o = n;
        if (n_labels > 0) {
                out[o++] = '{';
                for (size_t i = 0; i < n_labels; i++) {
                        if (i > 0)
                                out[o++] = ',';
                        memcpy(out + o, labels[i].name, labels[i].name_len);
                        o += labels[i].name_len;
                        out[o++] = '=';
                        out[o++] = '"';
                        memcpy(out + o, labels[i].value, labels[i].value_len);
                        o += labels[i].value_len;
                        out[o++] = '"';
                }
                out[o++] = '}';
        }
        out[o] = '\0';
        *ret_canonical = out;
        *ret_family_len = n;
        return 0;
}

/* --- tables ---------------------------------------------------------------------- */

metrics *metrics_new(void) {
        metrics *m = new0(metrics, 1);
        if (!m)
                return NULL;
        m->n_buckets = 64;
        m->n_fam_buckets = 32;
        m->buckets = new0(series *, m->n_buckets);
        m->fam_buckets = new0(family *, m->n_fam_buckets);
        if (!m->buckets || !m->fam_buckets) {
                free(m->buckets);
                free(m->fam_buckets);
                free(m);
                return NULL;
        }
        return m;
}

static void family_free(family *f) {
        if (!f)
                return;
        free(f->name);
        free(f->help);
        free(f);
}

static void series_free(series *s) {
        if (!s)
                return;
        free(s->instance);
        free(s->name);
        free(s);
}

void metrics_free(metrics *m) {
        if (!m)
                return;
        for (size_t i = 0; i < m->n_buckets; i++)
                for (series *s = m->buckets[i], *next; s; s = next) {
                        next = s->next;
                        series_free(s);
                }
        for (size_t i = 0; i < m->n_fam_buckets; i++)
                for (family *f = m->fam_buckets[i], *next; f; f = next) {
                        next = f->next;
                        family_free(f);
                }
        free(m->buckets);
        free(m->fam_buckets);
        free(m);
}

static series *series_find(const metrics *m, const char *instance, const char *name) {
        size_t b = hash_series(instance, name) & (m->n_buckets - 1);
        for (series *s = m->buckets[b]; s; s = s->next)
                if (streq(s->name, name) && streq(s->instance, instance))
                        return s;
        return NULL;
}

static uint64_t hash_family_n(const char *name, size_t len) {
        uint64_t h = 14695981039346656037ULL;
        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char)name[i];
                h *= 1099511628211ULL;
        }
        return h;
}

/* name need not end at len: the family is the part before the labels. */
static family *family_find(const metrics *m, const char *name, size_t len) {
        size_t b = hash_family_n(name, len) & (m->n_fam_buckets - 1);
        for (family *f = m->fam_buckets[b]; f; f = f->next)
                if (strncmp(f->name, name, len) == 0 && f->name[len] == '\0')
                        return f;
        return NULL;
}

/* Doubling keeps the chains short; a failed resize only costs speed. */
static void series_maybe_grow(metrics *m) {
        if (m->n_series < m->n_buckets)
                return;
        size_t nb = m->n_buckets * 2;
        series **b = new0(series *, nb);
        if (!b)
                return;
        for (size_t i = 0; i < m->n_buckets; i++)
                for (series *s = m->buckets[i], *next; s; s = next) {
                        next = s->next;
                        size_t h = hash_series(s->instance, s->name) & (nb - 1);
                        s->next = b[h];
                        b[h] = s;
                }
        free(m->buckets);
        m->buckets = b;
        m->n_buckets = nb;
}

static void family_maybe_grow(metrics *m) {
        if (m->n_families < m->n_fam_buckets)
                return;
        size_t nb = m->n_fam_buckets * 2;
        family **b = new0(family *, nb);
        if (!b)
                return;
        for (size_t i = 0; i < m->n_fam_buckets; i++)
                for (family *f = m->fam_buckets[i], *next; f; f = next) {
                        next = f->next;
                        size_t h = hash_family_n(f->name, strlen(f->name)) & (nb - 1);
                        f->next = b[h];
                        b[h] = f;
                }
        free(m->fam_buckets);
        m->fam_buckets = b;
        m->n_fam_buckets = nb;
}

static void family_unref(metrics *m, family *f) {
        if (--f->refs > 0)
                return;
        size_t b = hash_family_n(f->name, strlen(f->name)) & (m->n_fam_buckets - 1);
        for (family **pp = &m->fam_buckets[b]; *pp; pp = &(*pp)->next)
                if (*pp == f) {
                        *pp = f->next;
                        break;
                }
        m->n_families--;
        family_free(f);
}

static int set_help(family *f, const char *help) {
        if (isempty(help) || streq_ptr(f->help, help))
                return 0;
        char *h = strdup(help);
        if (!h)
                return -ENOMEM;
        free(f->help);
        f->help = h;
        return 0;
}

/* Finds or creates the series. type 0 means "whatever the family is, else counter". */
static int lookup(metrics *m, const char *instance, const char *name, org_metric_type type, const char *help,
                  series **ret) {
        if (!m || isempty(instance))
                return -EINVAL;
        if (type != 0 && type != ORG_METRIC_COUNTER && type != ORG_METRIC_GAUGE)
                return -EINVAL;
        _cleanup_free_ char *canon = NULL;
        size_t fam_len;
        int r = parse_name(name, &canon, &fam_len);
        if (r < 0)
                return r;

        series *s = series_find(m, instance, canon);
        if (s) {
                if (type != 0 && s->fam->type != type)
                        return -EINVAL;
                r = set_help(s->fam, help);
                if (r < 0)
                        return r;
                *ret = s;
                return 0;
        }

        family *f = family_find(m, canon, fam_len);
        if (f && type != 0 && f->type != type)
                return -EINVAL;
        bool new_family = !f;
        if (new_family) {
                f = new0(family, 1);
                if (!f)
                        return -ENOMEM;
                f->name = strndup(canon, fam_len);
                f->type = type != 0 ? type : ORG_METRIC_COUNTER;
                if (!f->name) {
                        family_free(f);
                        return -ENOMEM;
                }
        }
        r = set_help(f, help);
        s = new0(series, 1);
        if (r < 0 || !s || !(s->instance = strdup(instance))) {
                series_free(s);
                if (new_family)
                        family_free(f);
                return -ENOMEM;
        }
        s->name = TAKE_PTR(canon);
        s->labels = s->name[fam_len] == '{' ? s->name + fam_len + 1 : s->name + fam_len;
        s->fam = f;

        if (new_family) {
                family_maybe_grow(m);
                size_t b = hash_family_n(f->name, strlen(f->name)) & (m->n_fam_buckets - 1);
                f->next = m->fam_buckets[b];
                m->fam_buckets[b] = f;
                m->n_families++;
        }
        f->refs++;
        series_maybe_grow(m);
        size_t b = hash_series(s->instance, s->name) & (m->n_buckets - 1);
        s->next = m->buckets[b];
        m->buckets[b] = s;
        m->n_series++;
        *ret = s;
        return 0;
}

int metrics_set(metrics *m, const char *instance, const char *name, org_metric_type type, double value,
                const char *help) {
        if (type == 0)
                return -EINVAL;
        series *s;
        int r = lookup(m, instance, name, type, help, &s);
        if (r < 0)
                return r;
        s->value = value;
        return 0;
}

/* Counters only go up: a negative delta on one is refused. */
int metrics_add(metrics *m, const char *instance, const char *name, double delta, const char *help) {
        if (isnan(delta))
                return -EINVAL;
        series *s;
        int r = lookup(m, instance, name, 0, help, &s);
        if (r < 0)
                return r;
        if (s->fam->type == ORG_METRIC_COUNTER && delta < 0)
                return -EINVAL;
        s->value += delta;
        return 0;
}

void metrics_drop_instance(metrics *m, const char *instance) {
        if (!m || !instance)
                return;
        for (size_t i = 0; i < m->n_buckets; i++)
                for (series **pp = &m->buckets[i]; *pp;) {
                        series *s = *pp;
                        if (!streq(s->instance, instance)) {
                                pp = &s->next;
                                continue;
                        }
                        *pp = s->next;
                        family_unref(m, s->fam);
                        series_free(s);
                        m->n_series--;
                }
}

/* --- rendering ------------------------------------------------------------------- */

static int series_cmp(const void *a, const void *b) {
        const series *x = *(const series *const *)a, *y = *(const series *const *)b;
        int c = strcmp(x->fam->name, y->fam->name);
        if (c == 0)
                c = strcmp(x->instance, y->instance);
        if (c == 0)
                c = strcmp(x->labels, y->labels);
        return c;
}

/* A sorted snapshot; NULL with *ret_n 0 for an empty registry, NULL on OOM otherwise. */
static series **snapshot(const metrics *m, size_t *ret_n) {
        *ret_n = 0;
        if (m->n_series == 0)
                return NULL;
        series **v = new0(series *, m->n_series);
        if (!v)
                return NULL;
        size_t n = 0;
        for (size_t i = 0; i < m->n_buckets; i++)
                for (series *s = m->buckets[i]; s; s = s->next)
                        v[n++] = s;
        qsort(v, n, sizeof(*v), series_cmp);
        *ret_n = n;
        return v;
}

static const char *type_name(org_metric_type t) { return t == ORG_METRIC_GAUGE ? "gauge" : "counter"; }

/* Shortest decimal that reads back as the same double; Prometheus spellings for the
 * non-finite ones. */
static void format_value(double v, char *buf, size_t size) {
        if (isnan(v)) {
                snprintf(buf, size, "NaN");
                return;
        }
        if (isinf(v)) {
                snprintf(buf, size, "%s", v > 0 ? "+Inf" : "-Inf");
                return;
        }
        for (int prec = 15; prec <= 17; prec++) {
                snprintf(buf, size, "%.*g", prec, v);
                if (strtod(buf, NULL) == v)
                        return;
        }
}

static void put_escaped(FILE *f, const char *s, bool quote) {
        for (; *s; s++) {
                if (*s == '\\')
                        fputs("\\\\", f);
                else if (*s == '\n')
                        fputs("\\n", f);
                else if (quote && *s == '"')
                        fputs("\\\"", f);
                else
                        fputc(*s, f);
        }
}

char *metrics_render_text(const metrics *m) {
        if (!m)
                return NULL;
        size_t n;
        _cleanup_free_ series **v = snapshot(m, &n);
        if (!v && n == 0 && m->n_series > 0)
                return NULL;

        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return NULL;
        const family *cur = NULL;
        for (size_t i = 0; i < n; i++) {
                const series *s = v[i];
                if (s->fam != cur) {
                        cur = s->fam;
                        if (cur->help) {
                                fprintf(f, "# HELP " METRICS_PREFIX "%s ", cur->name);
                                put_escaped(f, cur->help, false);
                                fputc('\n', f);
                        }
                        fprintf(f, "# TYPE " METRICS_PREFIX "%s %s\n", cur->name, type_name(cur->type));
                }
                char val[64];
                format_value(s->value, val, sizeof(val));
                fprintf(f, METRICS_PREFIX "%s{instance=\"", cur->name);
                put_escaped(f, s->instance, true);
                /* The canonical labels are validated Prometheus syntax already. */
                fprintf(f, "\"%s%.*s} %s\n", *s->labels ? "," : "",
                        *s->labels ? (int)strlen(s->labels) - 1 : 0, s->labels, val);
        }
        if (ferror(f)) {
                fclose(f);
                free(buf);
                return NULL;
        }
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* Turns the canonical label list into {"name": "unescaped value"}. */
static json_t *labels_to_json(const char *labels) {
        json_t *o = json_object();
        if (!o)
                return NULL;
        const char *p = labels;
        while (*p && *p != '}') {
                const char *eq = strchr(p, '=');
                _cleanup_free_ char *name = strndup(p, (size_t)(eq - p));
                _cleanup_free_ char *val = malloc(strlen(eq));
                if (!name || !val) {
                        json_decref(o);
                        return NULL;
                }
                size_t n = 0;
                for (p = eq + 2; *p != '"'; p++) {
                        if (*p == '\\') {
                                p++;
                                val[n++] = *p == 'n' ? '\n' : *p;
                        } else
                                val[n++] = *p;
                }
                val[n] = '\0';
                if (json_object_set_new(o, name, json_string(val)) < 0) {
                        json_decref(o);
                        return NULL;
                }
                p++; /* the closing quote */
                if (*p == ',')
                        p++;
        }
        return o;
}

json_t *metrics_to_json(const metrics *m) {
        if (!m)
                return NULL;
        size_t n;
        _cleanup_free_ series **v = snapshot(m, &n);
        if (!v && m->n_series > 0)
                return NULL;
        json_t *a = json_array();
        if (!a)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                const series *s = v[i];
                /* JSON has no NaN or infinity. */
                json_t *val = isfinite(s->value) ? json_real(s->value) : json_null();
                json_t *o = json_pack("{s:s, s:s, s:o, s:s, s:o, s:s?}", "name", s->fam->name, "instance",
                                      s->instance, "labels", labels_to_json(s->labels), "type",
                                      type_name(s->fam->type), "value", val, "help", s->fam->help);
                if (!o || json_array_append_new(a, o) < 0) {
                        json_decref(a);
                        return NULL;
                }
        }
        return a;
}

int metrics_write_textfile(const metrics *m, const char *path) {
        if (!m || isempty(path))
                return -EINVAL;
        _cleanup_free_ char *text = metrics_render_text(m);
        if (!text)
                return -ENOMEM;
        return write_file_atomic(path, text, strlen(text), METRICS_TEXTFILE_MODE, false); /* rewritten every interval */
}
