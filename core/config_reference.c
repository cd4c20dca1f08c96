/* config_reference.c — organism-config-reference, a build-time tool: prints every key
 * of agentd's configuration file, agentd's own (config.c's tables) and each plugin's
 * (the config map of every <name>.so in a plugins folder, read through the loader as
 * agentd reads it), as groff for agentd.yaml(5) or as JSON for tests. The man page is
 * generated from the very tables the checker uses, so it cannot drift from them, and a
 * plugin added to the tree appears in it without anyone editing the page.
 *
 *   organism-config-reference --json PLUGIN_DIR
 *   organism-config-reference --man TEMPLATE -o OUTPUT PLUGIN_DIR
 * In --man mode TEMPLATE is copied to OUTPUT with the line `.\" {{config-reference}}`
 * replaced by the generated sections. Not installed. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"
#include "config_schema.h"
#include "loader.h"
#include "util.h"

#define MARK ".\\\" {{config-reference}}"

/* Text for groff: a backslash becomes \e, and a line never starts with a control
 * character. minus: '-' becomes \- (keys, values and paths, which are typed as shown). */
static void put(FILE *f, const char *s, bool minus) {
        for (; s && *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '\\')
                        fputs("\\e", f);
                else if (c == '-' && minus)
                        fputs("\\-", f);
                else if (c >= 0x80) {
                        /* UTF-8 as a groff \[uXXXX] escape: troff reads bytes, not UTF-8 */
                        unsigned cp, extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
                        cp = c & (0x3f >> extra);
                        for (unsigned k = 0; k < extra && (s[1] & 0xc0) == 0x80; k++)
                                cp = (cp << 6) | ((unsigned char)*++s & 0x3f);
                        fprintf(f, "\\[u%04X]", extra ? cp : 0xfffd);
                } else
                        fputc(c, f);
        }
}

static void put_line(FILE *f, const char *s) {
        if (s[0] == '.' || s[0] == '\'')
                fputs("\\&", f);
        put(f, s, false);
        fputc('\n', f);
}

/* The path of a child: OBJECT "a.b", DICT "a.NAME.b", OBJECT_LIST "a[].b". */
static int child_prefix(const char *prefix, const org_config_entry *e, char **ret) {
        const char *mid = e->type == ORG_CFG_DICT ? ".NAME." : e->type == ORG_CFG_OBJECT_LIST ? "[]." : ".";
        return asprintf(ret, "%s%s%s", prefix, e->key, mid) < 0 ? -ENOMEM : 0;
}

static int man_map(FILE *f, const org_config_entry *map, size_t esize, const char *prefix) {
        for (const org_config_entry *e = map; e && e->key; e = config_entry_next(e, esize)) {
                config_limits l;
                config_entry_limits(e, esize, &l);
                fputs(".TP\n\\fB", f);
                put(f, prefix, true);
                put(f, e->key, true);
                fprintf(f, "\\fR (\\fI%s\\fR", config_type_name(e->type));
                if (e->required)
                        fputs("; required", f);
                if (e->default_value) {
                        fputs("; default \\fB", f);
                        put(f, e->default_value, true);
                        fputs("\\fR", f);
                }
                if (l.min) {
                        fputs("; min ", f);
                        put(f, l.min, true);
                }
                if (l.max) {
                        fputs("; max ", f);
                        put(f, l.max, true);
                }
                if (l.choices) {
                        fputs("; one of", f);
                        for (const char *const *c = l.choices; *c; c++) {
                                fputs(c == l.choices ? " \\fB" : ", \\fB", f);
                                put(f, *c, true);
                                fputs("\\fR", f);
                        }
                }
                if (l.format) {
                        fputs("; format ", f);
                        put(f, l.format, true);
                }
                fputs(")\n", f);
                put_line(f, e->help && *e->help ? e->help : "(undocumented)");
                if (e->children) {
                        _cleanup_free_ char *p = NULL;
                        if (child_prefix(prefix, e, &p) < 0)
                                return -ENOMEM;
                        int r = man_map(f, e->children, esize, p);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int so_filter(const struct dirent *d) {
        size_t n = strlen(d->d_name);
        return d->d_name[0] != '.' && n > 3 && streq(d->d_name + n - 3, ".so");
}

/* Opens every plugin of dir, sorted by name; the caller closes them. */
static int load_all(const char *dir, plugin_so ***ret, size_t *ret_n) {
        struct dirent **names = NULL;
        int n = scandir(dir, &names, so_filter, alphasort);
        if (n < 0)
                return fprintf(stderr, "organism-config-reference: %s: %s\n", dir, strerror(errno)), -errno;
        plugin_so **sos = calloc((size_t)n + 1, sizeof(*sos));
        int r = sos ? 0 : -ENOMEM;
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL, *err = NULL;
                if (r == 0 && asprintf(&path, "%s/%s", dir, names[i]->d_name) < 0)
                        r = -ENOMEM;
                if (r == 0 && loader_open(path, false, &sos[i], &err) < 0) {
                        fprintf(stderr, "organism-config-reference: %s: %s\n", path, err ? err : "cannot load");
                        r = -EINVAL;
                }
                free(names[i]);
        }
        free(names);
        if (r < 0) {
                for (int i = 0; sos && i < n; i++)
                        loader_close(sos[i]);
                free(sos);
                return r;
        }
        *ret = sos;
        *ret_n = (size_t)n;
        return 0;
}

static int man_reference(FILE *f, plugin_so **sos, size_t n) {
        fputs(".SH CORE KEYS\n"
              "The sections of the file, as agentd checks them.\n"
              "\\fBNAME\\fR stands for a name the file chooses (an instance, a profile).\n",
              f);
        for (const org_config_entry *e = config_root_map(); e->key; e++) {
                _cleanup_free_ char *p = NULL;
                fprintf(f, ".SS %s\n", e->key);
                put_line(f, e->help ? e->help : "");
                if (child_prefix("", e, &p) < 0 || man_map(f, e->children, sizeof(*e), p) < 0)
                        return -ENOMEM;
        }
        fputs(".SH PLUGIN KEYS\n"
              "The keys of each plugin's \\fBconfig:\\fR block, from the plugin's config map\n"
              "(\\fBagentctl plugin info\\fR \\fIPLUGIN\\fR prints the same table).\n",
              f);
        for (size_t i = 0; i < n; i++) {
                const org_plugin *d = sos[i]->desc;
                size_t esize;
                fprintf(f, ".SS %s\n", d->name);
                put_line(f, d->summary && *d->summary ? d->summary : d->name);
                if (config_entry_size(d, &esize) < 0)
                        return fprintf(stderr, "organism-config-reference: %s: impossible config_entry_size\n", d->name),
                               -EPROTO;
                if (!d->config_map || !d->config_map->key)
                        fputs(".PP\nNo keys: its config block stays empty.\n", f);
                else if (man_map(f, d->config_map, esize, "") < 0)
                        return -ENOMEM;
        }
        return 0;
}

static int man_main(const char *template, const char *output, plugin_so **sos, size_t n) {
        _cleanup_fclose_ FILE *in = fopen(template, "re");
        if (!in)
                return fprintf(stderr, "organism-config-reference: %s: %s\n", template, strerror(errno)), 1;
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp", output) < 0)
                return 1;
        FILE *out = fopen(tmp, "we");
        if (!out)
                return fprintf(stderr, "organism-config-reference: %s: %s\n", tmp, strerror(errno)), 1;
        _cleanup_free_ char *line = NULL;
        size_t cap = 0;
        bool marked = false;
        int r = 0;
        while (r == 0 && getline(&line, &cap, in) >= 0) {
                if (startswith(line, MARK)) {
                        r = man_reference(out, sos, n);
                        marked = true;
                } else
                        fputs(line, out);
        }
        if (fclose(out) != 0 || r < 0 || !marked || rename(tmp, output) < 0) {
                if (!marked)
                        fprintf(stderr, "organism-config-reference: %s: no line %s\n", template, MARK);
                unlink(tmp);
                return 1;
        }
        return 0;
}

static int json_main(plugin_so **sos, size_t n) {
        json_t *plugins = json_array();
        for (size_t i = 0; i < n; i++) {
                const org_plugin *d = sos[i]->desc;
                size_t esize;
                json_t *map = config_entry_size(d, &esize) < 0 ? json_null() : config_map_to_json(d->config_map, esize);
                json_array_append_new(plugins, json_pack("{s:s, s:s, s:s, s:o}", "plugin", d->name, "summary",
                                                         d->summary ? d->summary : "", "file", sos[i]->path,
                                                         "config_map", map));
        }
        json_t *root = json_pack("{s:o, s:o}", "core", config_map_to_json(config_root_map(), sizeof(org_config_entry)),
                                 "plugins", plugins);
        int r = root && json_dumpf(root, stdout, JSON_INDENT(2)) == 0 ? 0 : 1;
        json_decref(root);
        putchar('\n');
        return r;
}

int main(int argc, char **argv) {
        const char *template = NULL, *output = NULL, *dir = NULL;
        bool json = false;
        for (int i = 1; i < argc; i++) {
                if (streq(argv[i], "--json"))
                        json = true;
                else if (streq(argv[i], "--man") && i + 1 < argc)
                        template = argv[++i];
                else if (streq(argv[i], "-o") && i + 1 < argc)
                        output = argv[++i];
                else if (!dir && argv[i][0] != '-')
                        dir = argv[i];
                else
                        dir = NULL, i = argc;
        }
        if (!dir || json == !!template || (template && !output)) {
                fprintf(stderr, "Usage: organism-config-reference --json PLUGIN_DIR\n"
                                "       organism-config-reference --man TEMPLATE -o OUTPUT PLUGIN_DIR\n");
                return 2;
        }
        plugin_so **sos = NULL;
        size_t n = 0;
        if (load_all(dir, &sos, &n) < 0)
                return 1;
        int r = json ? json_main(sos, n) : man_main(template, output, sos, n);
        for (size_t i = 0; i < n; i++)
                loader_close(sos[i]);
        free(sos);
        return r;
}
