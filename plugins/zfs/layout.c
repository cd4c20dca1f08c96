/* layout.c — the organ datasets (the seed's canonical layout): <fast>/organism/{base,
 * ram-persist,vmdata,bench} under /mnt/fast, <scratch>/organism/tmp under /mnt/scratch,
 * <archive>/organism/{backups,ram-persist} under /mnt/archive, each with its mountpoint
 * and properties. `layout` reads what exists (one `zfs get -H -p`) and answers the plan;
 * with confirm (and not dry_run) it creates what is missing, parents first (`zfs
 * create -p -o ...`). It is idempotent, and an existing dataset whose mountpoint or
 * properties differ is reported as a conflict, never silently taken: nothing is
 * created under a conflicting parent either. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

typedef struct layout_prop {
        const char *key, *create, *parsable; /* value given to zfs create, and as -p prints it */
} layout_prop;

typedef struct layout_entry {
        zfs_role role;
        const char *rel;                     /* under the pool; "organism" is the organ root */
        const char *mountpoint;
        layout_prop props[3];
} layout_entry;

static const layout_entry layout[] = {
        {ZFS_FAST, "organism", "/mnt/fast", {{0}}},
        {ZFS_FAST, "organism/base", "/mnt/fast/base", {{"atime", "off", "off"}, {"compression", "zstd", "zstd"}}},
        {ZFS_FAST, "organism/ram-persist", "/mnt/fast/ram-persist",
         {{"compression", "zstd", "zstd"}, {"recordsize", "1M", "1048576"}}},
        {ZFS_FAST, "organism/vmdata", "/mnt/fast/vmdata", {{"compression", "lz4", "lz4"}}},
        {ZFS_FAST, "organism/bench", "/mnt/fast/bench", {{"compression", "off", "off"}}},
        {ZFS_SCRATCH, "organism", "/mnt/scratch", {{0}}},
        {ZFS_SCRATCH, "organism/tmp", "/mnt/scratch/tmp",
         {{"atime", "off", "off"}, {"compression", "zstd", "zstd"}, {"recordsize", "1M", "1048576"}}},
        {ZFS_ARCHIVE, "organism", "/mnt/archive", {{0}}},
        {ZFS_ARCHIVE, "organism/backups", "/mnt/archive/backups", {{"compression", "zstd", "zstd"}}},
        {ZFS_ARCHIVE, "organism/ram-persist", "/mnt/archive/ram-persist",
         {{"compression", "zstd", "zstd"}, {"recordsize", "1M", "1048576"}}},
};
#define N_LAYOUT (sizeof layout / sizeof layout[0])

typedef enum { L_OK, L_CREATE, L_CONFLICT, L_NOPOOL, L_BLOCKED } l_action;
static const char *const action_names[] = {"ok", "create", "conflict", "pool missing", "parent conflicts"};

typedef struct layoutctx {
        zfs *z;
        char *reply;
        bool confirm;
        json_t *plan;            /* array of entries */
        unsigned pending;
        unsigned created, failed;
        bool dry;
} layoutctx;

typedef struct create_cb {
        layoutctx *l;
        json_t *entry;
} create_cb;

static void layout_free(layoutctx *l) {
        json_decref(l->plan);
        free(l->reply);
        free(l);
}

static void layout_answer(layoutctx *l) {
        zfs *z = l->z;
        json_t *o = json_pack("{s:b, s:b, s:O, s:i, s:i}", "confirm", l->confirm, "dry_run", l->dry, "plan", l->plan,
                              "created", (int)l->created, "failed", (int)l->failed);
        if (o && !l->confirm)
                json_object_set_new(o, "hint", json_string("nothing was changed: add --confirm true to create"));
        (void)zfs_reply(z, l->reply, o);
        layout_free(l);
}

static void on_create(zfs *z, const org_exec_result *res, void *ud) {
        create_cb *c = ud;
        layoutctx *l = c->l;
        char why[400];
        if (res->status == 0) {
                json_object_set_new(c->entry, "done", json_string(res->dry_run ? "dry run: not created" : "created"));
                if (res->dry_run)
                        l->dry = true;
                else
                        l->created++;
                z->host->log(z->ctx, ORG_LOG_NOTICE, "layout: %s %s",
                             res->dry_run ? "dry run, would create" : "created",
                             json_string_value(json_object_get(c->entry, "dataset")));
        } else {
                l->failed++;
                json_object_set_new(c->entry, "done", json_string(zfs_failure(res, why, sizeof why)));
                if (res->status != -ECANCELED)
                        z->host->log(z->ctx, ORG_LOG_ERR, "layout: cannot create %s: %s",
                                     json_string_value(json_object_get(c->entry, "dataset")), why);
        }
        json_decref(c->entry);
        free(c);
        if (--l->pending == 0)
                layout_answer(l);
}

typedef struct lrow {
        char *name, *prop, *value;
} lrow;

static const char *lookup(lrow *rows, size_t n, const char *ds, const char *prop) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(rows[i].name, ds) == 0 && strcmp(rows[i].prop, prop) == 0)
                        return rows[i].value;
        return NULL;
}

static void on_get(zfs *z, const org_exec_result *res, void *ud) {
        layoutctx *l = ud;
        if (res->status < 0) {
                char why[400];
                (void)zfs_reply_error(z, l->reply, "layout: zfs get: %s", zfs_failure(res, why, sizeof why));
                layout_free(l);
                return;
        }
        /* exit 1 with the missing ones on stderr is expected: the rest is printed */
        char *copy = strdup(res->out ? res->out : "");
        lrow *rows = NULL;
        size_t n = 0;
        for (char *line = copy, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                else
                        next = line + strlen(line);
                char *f[4];
                if (zfs_split_tabs(line, f, 4) != 4)
                        continue;
                lrow *nv = realloc(rows, (n + 1) * sizeof *nv);
                if (!nv)
                        break;
                rows = nv;
                rows[n++] = (lrow){f[0], f[1], f[2]};
        }
        l_action act[N_LAYOUT];
        for (size_t i = 0; i < N_LAYOUT; i++) {
                const layout_entry *e = &layout[i];
                const char *pool = z->pools[e->role];
                act[i] = L_OK;
                if (!pool[0])
                        continue;
                char ds[ZFS_NAME_MAX + 32];
                snprintf(ds, sizeof ds, "%s/%s", pool, e->rel);
                json_t *want = json_object();
                json_object_set_new(want, "mountpoint", json_string(e->mountpoint));
                for (size_t k = 0; k < 3 && e->props[k].key; k++)
                        json_object_set_new(want, e->props[k].key, json_string(e->props[k].create));
                json_t *detail = json_array();
                if (!lookup(rows, n, pool, "mountpoint") && !lookup(rows, n, pool, "compression"))
                        act[i] = L_NOPOOL;
                else if (!lookup(rows, n, ds, "mountpoint"))
                        act[i] = L_CREATE;
                else {
                        const char *mp = lookup(rows, n, ds, "mountpoint");
                        if (strcmp(mp, e->mountpoint) != 0) {
                                act[i] = L_CONFLICT;
                                json_array_append_new(detail, json_sprintf("mountpoint is %s, want %s", mp,
                                                                           e->mountpoint));
                        }
                        for (size_t k = 0; k < 3 && e->props[k].key; k++) {
                                const char *have = lookup(rows, n, ds, e->props[k].key);
                                if (have && strcmp(have, e->props[k].parsable) != 0) {
                                        act[i] = L_CONFLICT;
                                        json_array_append_new(detail, json_sprintf("%s is %s, want %s",
                                                                                   e->props[k].key, have,
                                                                                   e->props[k].create));
                                }
                        }
                }
                /* under a conflicting (or blocked) parent nothing is created */
                for (size_t p = 0; p < i; p++) {
                        char pds[ZFS_NAME_MAX + 32];
                        snprintf(pds, sizeof pds, "%s/%s", z->pools[layout[p].role], layout[p].rel);
                        size_t pl = strlen(pds);
                        if (layout[p].role == e->role && (act[p] == L_CONFLICT || act[p] == L_BLOCKED) &&
                            strncmp(ds, pds, pl) == 0 && ds[pl] == '/' && act[i] == L_CREATE)
                                act[i] = L_BLOCKED;
                }
                if (act[i] == L_CONFLICT)
                        z->host->log(z->ctx, ORG_LOG_WARNING, "layout: %s exists and differs: not taken", ds);
                json_array_append_new(l->plan, json_pack("{s:s, s:s, s:s, s:o, s:o}", "dataset", ds, "role",
                                                         zfs_role_names[e->role], "action", action_names[act[i]],
                                                         "want", want, "detail", detail));
        }
        free(rows);
        free(copy);
        l->dry = z->host->dry_run(z->ctx);
        l->pending = 1;
        if (l->confirm) {
                size_t idx = 0;
                for (size_t i = 0; i < N_LAYOUT; i++) {
                        const layout_entry *e = &layout[i];
                        if (!z->pools[e->role][0])
                                continue;
                        json_t *entry = json_array_get(l->plan, idx++);
                        if (act[i] != L_CREATE)
                                continue;
                        const char *argv[16];
                        char opts[4][128];
                        size_t a = 0;
                        argv[a++] = "zfs";
                        argv[a++] = "create";
                        argv[a++] = "-p";
                        snprintf(opts[0], sizeof opts[0], "mountpoint=%s", e->mountpoint);
                        argv[a++] = "-o";
                        argv[a++] = opts[0];
                        for (size_t k = 0; k < 3 && e->props[k].key; k++) {
                                snprintf(opts[k + 1], sizeof opts[k + 1], "%s=%s", e->props[k].key,
                                         e->props[k].create);
                                argv[a++] = "-o";
                                argv[a++] = opts[k + 1];
                        }
                        argv[a++] = json_string_value(json_object_get(entry, "dataset"));
                        argv[a] = NULL;
                        create_cb *c = calloc(1, sizeof *c);
                        if (!c)
                                break;
                        c->l = l;
                        c->entry = json_incref(entry);
                        l->pending++;
                        if (zfs_run(z, argv, true, on_create, c) < 0) {
                                l->pending--;
                                json_decref(entry);
                                free(c);
                        }
                }
        }
        if (--l->pending == 0)
                layout_answer(l);
}

int zfs_layout(zfs *z, bool confirm, const char *reply) {
        layoutctx *l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        l->z = z;
        l->confirm = confirm;
        l->reply = strdup(reply);
        l->plan = json_array();
        if (!l->reply || !l->plan) {
                layout_free(l);
                return -ENOMEM;
        }
        const char *argv[8 + N_LAYOUT + ZFS_ROLES];
        char names[N_LAYOUT][ZFS_NAME_MAX + 32];
        size_t a = 0;
        argv[a++] = "zfs";
        argv[a++] = "get";
        argv[a++] = "-H";
        argv[a++] = "-p";
        argv[a++] = "-o";
        argv[a++] = "name,property,value,source";
        argv[a++] = "mountpoint,compression,recordsize,atime";
        for (int r = 0; r < ZFS_ROLES; r++) {
                bool dup = false;
                for (int q = 0; q < r; q++)
                        dup = dup || strcmp(z->pools[q], z->pools[r]) == 0;
                if (z->pools[r][0] && !dup)
                        argv[a++] = z->pools[r];
        }
        for (size_t i = 0; i < N_LAYOUT; i++) {
                if (!z->pools[layout[i].role][0])
                        continue;
                snprintf(names[i], sizeof names[i], "%s/%s", z->pools[layout[i].role], layout[i].rel);
                argv[a++] = names[i];
        }
        argv[a] = NULL;
        if (a == 7) {
                layout_free(l);
                return -ENOENT;
        }
        int r = zfs_run(z, argv, false, on_get, l);
        if (r < 0)
                layout_free(l);
        return r;
}
