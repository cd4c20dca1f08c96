/* config.c — the zfs plugin's config map (what `agentd --check` validates with
 * FILE:LINE:COL: types, ranges, choices, unknown keys such as an unknown pool role) and
 * the reading of the checked config into the `zfs` struct, with the checks of meaning
 * a schema cannot express: a dataset outside the named pools, a job with both or
 * neither of `every` and `at`, `sync: disabled` without `unsafe: true`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zfs.h"

const char *const zfs_role_names[ZFS_ROLES] = {"fast", "scratch", "archive"};

static const org_config_entry pool_entries[] = {
        {.key = "fast", .type = ORG_CFG_STRING, .help = "pool of the fast role (NVMe): 6h snapshots, autotrim, trim"},
        {.key = "scratch", .type = ORG_CFG_STRING, .help = "pool of the scratch role (SSD RAID0): autotrim, trim"},
        {.key = "archive", .type = ORG_CFG_STRING, .help = "pool of the archive role (HDD): backups, long retention"},
        ORG_CONFIG_END,
};

static const org_config_entry snapshot_entries[] = {
        {.key = "tag", .type = ORG_CFG_STRING, .required = true,
         .help = "1-32 of [A-Za-z0-9_-]: snapshots are organism-<tag>-YYYYmmddTHHMMSSZ (UTC)"},
        {.key = "every", .type = ORG_CFG_DURATION, .min = "1m", .max = "366d",
         .help = "period; slots at multiples of it since the epoch, in UTC (6h: 00, 06, 12, 18 UTC)"},
        {.key = "at", .type = ORG_CFG_STRING, .format = "hh:mm",
         .help = "local time of a daily job (instead of every)"},
        {.key = "keep", .type = ORG_CFG_INT, .required = true, .min = "1", .max = "100000",
         .help = "snapshots of this tag kept on every dataset of the set (children included)"},
        {.key = "datasets", .type = ORG_CFG_STRING_LIST, .required = true,
         .help = "datasets of the job, each inside one of the named pools"},
        {.key = "recursive", .type = ORG_CFG_BOOL, .default_value = "false", .help = "their children too"},
        {.key = "exclude", .type = ORG_CFG_STRING_LIST,
         .help = "datasets left out with everything under them (then the datasets are listed explicitly)"},
        ORG_CONFIG_END,
};

static const org_config_entry scrub_entries[] = {
        {.key = "enabled", .type = ORG_CFG_BOOL, .default_value = "true", .help = "scrub every named pool monthly"},
        {.key = "day_of_month", .type = ORG_CFG_INT, .default_value = "1", .min = "1", .max = "28",
         .help = "day of the month (1-28, so that every month has it)"},
        {.key = "at", .type = ORG_CFG_STRING, .default_value = "\"02:00\"", .format = "hh:mm", .help = "local time"},
        ORG_CONFIG_END,
};

static const org_config_entry trim_entries[] = {
        {.key = "enabled", .type = ORG_CFG_BOOL, .default_value = "true",
         .help = "zpool trim the fast and scratch pools weekly"},
        {.key = "weekday", .type = ORG_CFG_STRING, .default_value = "sun",
         .choices = ORG_CHOICES("sun", "mon", "tue", "wed", "thu", "fri", "sat"), .help = "day of the week"},
        {.key = "at", .type = ORG_CFG_STRING, .default_value = "\"04:00\"", .format = "hh:mm", .help = "local time"},
        ORG_CONFIG_END,
};

static const org_config_entry prop_entries[] = {
        {.key = "primarycache", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("all", "none", "metadata"),
         .help = "ARC caching"},
        {.key = "secondarycache", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("all", "none", "metadata"),
         .help = "L2ARC caching"},
        {.key = "compression", .type = ORG_CFG_STRING, .help = "on, off, lz4, zstd, zstd-N, gzip-N, zle, lzjb"},
        {.key = "atime", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("on", "off"), .help = "access times"},
        {.key = "relatime", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("on", "off"), .help = "relative atime"},
        {.key = "recordsize", .type = ORG_CFG_STRING, .help = "e.g. 128K, 1M"},
        {.key = "logbias", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("latency", "throughput"), .help = "ZIL use"},
        {.key = "sync", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("standard", "always", "disabled"),
         .help = "disabled only with unsafe: true (without it, standard is put back)"},
        {.key = "xattr", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("on", "off", "sa", "dir"), .help = "xattrs"},
        {.key = "acltype", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("off", "posix", "posixacl", "nfsv4"),
         .help = "ACLs"},
        {.key = "redundant_metadata", .type = ORG_CFG_STRING, .choices = ORG_CHOICES("all", "most", "some", "none"),
         .help = "extra metadata copies"},
        {.key = "dnodesize", .type = ORG_CFG_STRING, .help = "legacy, auto, 1k ... 16k"},
        {.key = "unsafe", .type = ORG_CFG_BOOL, .default_value = "false",
         .help = "allows sync: disabled on this dataset (loses the last seconds of writes on a crash)"},
        ORG_CONFIG_END,
};

const org_config_entry zfs_config_map[] = {
        {.key = "pools", .type = ORG_CFG_OBJECT, .children = pool_entries,
         .help = "pool name of each role: {fast, scratch, archive}; a role may be absent"},
        {.key = "snapshots", .type = ORG_CFG_OBJECT_LIST, .children = snapshot_entries,
         .help = "snapshot jobs: {tag, every | at, keep, datasets, recursive, exclude}"},
        {.key = "scrub", .type = ORG_CFG_OBJECT, .children = scrub_entries,
         .help = "monthly scrub, one pool at a time: {enabled, day_of_month, at}"},
        {.key = "trim", .type = ORG_CFG_OBJECT, .children = trim_entries,
         .help = "weekly zpool trim of fast/scratch, one pool at a time: {enabled, weekday, at}"},
        {.key = "health_interval", .type = ORG_CFG_DURATION, .default_value = "60s", .min = "1s", .max = "1d",
         .help = "period of the health pass (zpool list + zpool status, sys.health, alerts)"},
        {.key = "cap_alert", .type = ORG_CFG_INT, .default_value = "80", .min = "1", .max = "100",
         .help = "alert when a pool's capacity is above this percentage"},
        {.key = "alert_repeat", .type = ORG_CFG_DURATION, .default_value = "1h", .min = "1s", .max = "30d",
         .help = "an unchanged alert is published again at most this often"},
        {.key = "properties", .type = ORG_CFG_DICT, .children = prop_entries,
         .help = "dataset -> properties set where the local value differs (named datasets only)"},
        {.key = "autotrim", .type = ORG_CFG_BOOL, .default_value = "true",
         .help = "zpool set autotrim=on on the fast and scratch pools"},
        {.key = "properties_interval", .type = ORG_CFG_DURATION, .default_value = "1h", .min = "1s", .max = "30d",
         .help = "how often the property policy is checked (and applied where it drifted)"},
        {.key = "command_timeout", .type = ORG_CFG_DURATION, .default_value = "2m", .min = "1s", .max = "1d",
         .help = "time-out of each zfs/zpool command (its process group is killed)"},
        ORG_CONFIG_END,
};

static char **strv_from_json(json_t *a, size_t *ret_n) {
        size_t n = json_is_array(a) ? json_array_size(a) : 0;
        char **v = calloc(n + 1, sizeof *v);
        if (!v)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                const char *s = json_string_value(json_array_get(a, i));
                v[i] = strdup(s ? s : "");
                if (!v[i]) {
                        for (size_t k = 0; k < i; k++)
                                free(v[k]);
                        free(v);
                        return NULL;
                }
        }
        *ret_n = n;
        return v;
}

static void strv_free(char **v, size_t n) {
        for (size_t i = 0; v && i < n; i++)
                free(v[i]);
        free(v);
}

bool zfs_under(const char *ds, const char *root) {
        size_t l = strlen(root);
        return strncmp(ds, root, l) == 0 && (ds[l] == '\0' || ds[l] == '/');
}

bool zfs_job_excluded(const zfs_snapjob *j, const char *ds) {
        for (size_t i = 0; i < j->n_exclude; i++)
                if (zfs_under(ds, j->exclude[i]))
                        return true;
        return false;
}

/* In the set: a named dataset, or (recursive) one under it; never an excluded one. */
bool zfs_job_in_set(const zfs_snapjob *j, const char *ds) {
        if (zfs_job_excluded(j, ds))
                return false;
        for (size_t i = 0; i < j->n_datasets; i++)
                if (j->recursive ? zfs_under(ds, j->datasets[i]) : strcmp(ds, j->datasets[i]) == 0)
                        return true;
        return false;
}

void zfs_pool_of(const char *ds, char *buf, size_t size) {
        size_t l = strcspn(ds, "/@");
        snprintf(buf, size, "%.*s", (int)l, ds);
}

int zfs_dataset_role(const zfs *z, const char *ds) {
        for (int r = 0; r < ZFS_ROLES; r++) {
                size_t l = strlen(z->pools[r]);
                if (l && strncmp(ds, z->pools[r], l) == 0 && (ds[l] == '\0' || ds[l] == '/'))
                        return r;
        }
        return -1;
}

static bool name_ok(const char *ds) {
        size_t n = strlen(ds);
        if (n == 0 || n >= ZFS_NAME_MAX || ds[0] == '/' || ds[n - 1] == '/' || strstr(ds, "//"))
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = ds[i];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '-' || c == '.' || c == ':' || c == '/'))
                        return false;
        }
        return true;
}

static int64_t get_int(json_t *o, const char *key, int64_t deflt) {
        json_t *v = json_object_get(o, key);
        return json_is_integer(v) ? json_integer_value(v) : deflt;
}

static bool get_bool(json_t *o, const char *key, bool deflt) {
        json_t *v = json_object_get(o, key);
        return json_is_boolean(v) ? json_is_true(v) : deflt;
}

static const char *get_str(json_t *o, const char *key, const char *deflt) {
        const char *s = json_string_value(json_object_get(o, key));
        return s ? s : deflt;
}

static int load_job(zfs *z, json_t *o, size_t idx, zfs_snapjob *j) {
        const org_host *h = z->host;
        const char *tag = get_str(o, "tag", NULL);
        if (!zfs_tag_valid(tag)) {
                h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].tag: \"%s\" is not 1-32 of [A-Za-z0-9_-]", idx,
                       tag ? tag : "(missing)");
                return -EINVAL;
        }
        snprintf(j->tag, sizeof j->tag, "%s", tag);
        for (size_t i = 0; i < z->n_jobs; i++)
                if (strcmp(z->jobs[i].tag, tag) == 0) {
                        h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].tag: %s is the tag of another job", idx, tag);
                        return -EINVAL;
                }
        json_t *every = json_object_get(o, "every");
        const char *at = get_str(o, "at", NULL);
        if ((every && !json_is_null(every)) == (at != NULL)) {
                h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu] (%s): give exactly one of every (a period) and at (HH:MM)",
                       idx, tag);
                return -EINVAL;
        }
        if (at) {
                j->cal.kind = ZFS_CAL_DAILY;
                if (zfs_parse_hhmm(at, &j->cal.at) < 0) {
                        h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].at: \"%s\" is not HH:MM", idx, at);
                        return -EINVAL;
                }
        } else {
                j->cal.kind = ZFS_CAL_EVERY;
                int64_t ms = json_integer_value(every);
                if (!json_is_integer(every) || ms < 60000) {
                        h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].every: at least 1m", idx);
                        return -EINVAL;
                }
                j->cal.period = ms / 1000;
        }
        int64_t keep = get_int(o, "keep", 0);
        if (keep < 1 || keep > 100000) {
                h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].keep: %lld, must be 1..100000 (the newest always stays)",
                       idx, (long long)keep);
                return -EINVAL;
        }
        j->keep = (unsigned)keep;
        j->recursive = get_bool(o, "recursive", false);
        j->datasets = strv_from_json(json_object_get(o, "datasets"), &j->n_datasets);
        j->exclude = strv_from_json(json_object_get(o, "exclude"), &j->n_exclude);
        if (!j->datasets || !j->exclude)
                return -ENOMEM;
        if (j->n_datasets == 0) {
                h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].datasets: needs at least one dataset", idx);
                return -EINVAL;
        }
        for (size_t i = 0; i < j->n_datasets + j->n_exclude; i++) {
                bool ex = i >= j->n_datasets;
                const char *ds = ex ? j->exclude[i - j->n_datasets] : j->datasets[i];
                if (!name_ok(ds) || zfs_dataset_role(z, ds) < 0) {
                        h->log(z->ctx, ORG_LOG_ERR, "snapshots[%zu].%s: \"%s\" is not a dataset of the named pools",
                               idx, ex ? "exclude" : "datasets", ds);
                        return -EINVAL;
                }
        }
        return 0;
}

static int load_props(zfs *z, json_t *props) {
        const org_host *h = z->host;
        size_t n = json_is_object(props) ? json_object_size(props) : 0;
        z->props = calloc(n ? n : 1, sizeof *z->props);
        if (!z->props)
                return -ENOMEM;
        const char *ds;
        json_t *o;
        json_object_foreach(props, ds, o) {
                zfs_propset *p = &z->props[z->n_props++];
                snprintf(p->dataset, sizeof p->dataset, "%s", ds);
                if (!name_ok(ds) || zfs_dataset_role(z, ds) < 0) {
                        h->log(z->ctx, ORG_LOG_ERR, "properties.%s: not a dataset of the named pools", ds);
                        return -EINVAL;
                }
                p->unsafe = get_bool(o, "unsafe", false);
                size_t m = json_object_size(o) + 1;
                p->keys = calloc(m, sizeof *p->keys);
                p->values = calloc(m, sizeof *p->values);
                if (!p->keys || !p->values)
                        return -ENOMEM;
                bool has_sync = false;
                const char *k;
                json_t *v;
                json_object_foreach(o, k, v) {
                        if (strcmp(k, "unsafe") == 0)
                                continue;
                        const char *s = json_string_value(v);
                        if (!s || !*s) {
                                h->log(z->ctx, ORG_LOG_ERR, "properties.%s.%s: must be a string", ds, k);
                                return -EINVAL;
                        }
                        if (strcmp(k, "sync") == 0) {
                                has_sync = true;
                                if (strcmp(s, "disabled") == 0 && !p->unsafe) {
                                        h->log(z->ctx, ORG_LOG_ERR,
                                               "properties.%s.sync: disabled needs unsafe: true on that dataset "
                                               "(a crash loses the last seconds of writes)",
                                               ds);
                                        return -EINVAL;
                                }
                        }
                        p->keys[p->n] = strdup(k);
                        p->values[p->n] = strdup(s);
                        if (!p->keys[p->n] || !p->values[p->n])
                                return -ENOMEM;
                        p->n++;
                }
                /* without unsafe, a sync=disabled left from before is put back */
                if (!has_sync && !p->unsafe) {
                        p->keys[p->n] = strdup("sync");
                        p->values[p->n] = strdup("standard");
                        if (!p->keys[p->n] || !p->values[p->n])
                                return -ENOMEM;
                        p->n++;
                        p->sync_implicit = true;
                }
        }
        return 0;
}

static const char *const weekdays[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

int zfs_config_load(zfs *z) {
        const org_host *h = z->host;
        json_error_t e;
        json_t *cfg = json_loads(h->config_json(z->ctx), 0, &e);
        if (!json_is_object(cfg)) {
                json_decref(cfg);
                h->log(z->ctx, ORG_LOG_ERR, "config is not a JSON object: %s", e.text);
                return -EINVAL;
        }
        int r = 0;
        json_t *pools = json_object_get(cfg, "pools");
        for (int i = 0; i < ZFS_ROLES; i++) {
                const char *p = get_str(pools, zfs_role_names[i], "");
                if (*p && (!name_ok(p) || strchr(p, '/'))) {
                        h->log(z->ctx, ORG_LOG_ERR, "pools.%s: \"%s\" is not a pool name", zfs_role_names[i], p);
                        r = -EINVAL;
                        goto out;
                }
                snprintf(z->pools[i], sizeof z->pools[i], "%s", p);
        }
        json_t *snaps = json_object_get(cfg, "snapshots");
        size_t n = json_is_array(snaps) ? json_array_size(snaps) : 0;
        z->jobs = calloc(n ? n : 1, sizeof *z->jobs);
        if (!z->jobs) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                r = load_job(z, json_array_get(snaps, i), i, &z->jobs[z->n_jobs]);
                z->n_jobs++; /* counted even when half-read, so that free releases it */
                if (r < 0)
                        goto out;
        }
        json_t *scrub = json_object_get(cfg, "scrub"), *trim = json_object_get(cfg, "trim");
        z->scrub_enabled = get_bool(scrub, "enabled", true);
        z->scrub_cal.kind = ZFS_CAL_MONTHLY;
        z->scrub_cal.mday = (int)get_int(scrub, "day_of_month", 1);
        if (z->scrub_cal.mday < 1 || z->scrub_cal.mday > 28 ||
            zfs_parse_hhmm(get_str(scrub, "at", "02:00"), &z->scrub_cal.at) < 0) {
                h->log(z->ctx, ORG_LOG_ERR, "scrub: day_of_month 1..28 and at HH:MM");
                r = -EINVAL;
                goto out;
        }
        z->trim_enabled = get_bool(trim, "enabled", true);
        z->trim_cal.kind = ZFS_CAL_WEEKLY;
        z->trim_cal.weekday = -1;
        const char *wd = get_str(trim, "weekday", "sun");
        for (int i = 0; i < 7; i++)
                if (strcmp(wd, weekdays[i]) == 0)
                        z->trim_cal.weekday = i;
        if (z->trim_cal.weekday < 0 || zfs_parse_hhmm(get_str(trim, "at", "04:00"), &z->trim_cal.at) < 0) {
                h->log(z->ctx, ORG_LOG_ERR, "trim: weekday sun..sat and at HH:MM");
                r = -EINVAL;
                goto out;
        }
        z->health_interval_ms = (uint64_t)get_int(cfg, "health_interval", 60000);
        z->alert_repeat_ms = (uint64_t)get_int(cfg, "alert_repeat", 3600000);
        z->properties_interval_ms = (uint64_t)get_int(cfg, "properties_interval", 3600000);
        z->command_timeout_ms = (uint64_t)get_int(cfg, "command_timeout", 120000);
        z->cap_alert = (int)get_int(cfg, "cap_alert", 80);
        z->autotrim = get_bool(cfg, "autotrim", true);
        if (z->health_interval_ms < 1000 || z->alert_repeat_ms < 1000 || z->properties_interval_ms < 1000 ||
            z->command_timeout_ms < 1000 || z->cap_alert < 1 || z->cap_alert > 100) {
                h->log(z->ctx, ORG_LOG_ERR, "health_interval, alert_repeat, properties_interval, command_timeout "
                                            "at least 1s; cap_alert 1..100");
                r = -EINVAL;
                goto out;
        }
        r = load_props(z, json_object_get(cfg, "properties"));
out:
        json_decref(cfg);
        return r;
}

void zfs_config_free(zfs *z) {
        for (size_t i = 0; z->jobs && i < z->n_jobs; i++) {
                strv_free(z->jobs[i].datasets, z->jobs[i].n_datasets);
                strv_free(z->jobs[i].exclude, z->jobs[i].n_exclude);
        }
        free(z->jobs);
        z->jobs = NULL;
        z->n_jobs = 0;
        for (size_t i = 0; z->props && i < z->n_props; i++) {
                strv_free(z->props[i].keys, z->props[i].n);
                strv_free(z->props[i].values, z->props[i].n);
        }
        free(z->props);
        z->props = NULL;
        z->n_props = 0;
}
