/* gpucache.c — RAM cache layers: the descriptor, config map, hooks, bus and verbs.
 *
 * At init the layers are built from the config (one per GPU, gpu<i> by sorted PCI
 * address or by the order of an explicit `gpus:` list, the rule gpuworker and maestro
 * share; then the named `layers:`), the sum of their sizes is checked against
 * MemTotal × max_ram_fraction, and each layer is started (layer.c). Syncs run every
 * sync_interval, on gpu.cache.sync and on the `sync` verb, and once more, on the loop,
 * in fini (stop, disable of the instance). A reload hands the layers over instead
 * (handover.c): the sync or prewarm in flight runs on and the new build reports it, a
 * pending request is answered by the new build, and the new build syncs off the loop. Requests name a layer as "gpu3", 3,
 * a PCI address or a named layer; no name means every layer. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpucache.h"

#define GC_VERSION "1.0.0"

static const org_config_entry layer_map[] = {
        {.key = "size", .type = ORG_CFG_SIZE, .required = true, .min = "1MiB", .help = "size of the layer's tmpfs"},
        {.key = "lower", .type = ORG_CFG_STRING, .required = true, .help = "lower (read-only) directory of the overlay"},
        {.key = "persist",
         .type = ORG_CFG_STRING,
         .required = true,
         .help = "directory on a disk filesystem holding the generations (refused on tmpfs/ramfs)"},
        {.key = "ram", .type = ORG_CFG_STRING, .required = true, .help = "mount point of the tmpfs (holds upper/, work/)"},
        {.key = "merged", .type = ORG_CFG_STRING, .required = true, .help = "mount point of the overlay"},
        ORG_CONFIG_END,
};

static const org_config_entry config_map[] = {
        {.key = "gpus",
         .type = ORG_CFG_ANY,
         .default_value = "auto",
         .help = "auto (a layer per AMD display function, gpu<i> by sorted PCI address), a list of PCI addresses "
                 "(gpu<i> = position), or [] for none"},
        {.key = "cache_mb", .type = ORG_CFG_INT, .default_value = "500", .min = "1", .max = "1048576",
         .help = "size of each GPU layer's tmpfs, MiB"},
        {.key = "base_root", .type = ORG_CFG_STRING, .default_value = "/data/gpucache",
         .help = "<base_root>/gpu<i>/base is a GPU layer's lower directory"},
        {.key = "persist_root", .type = ORG_CFG_STRING, .default_value = "/data/gpucache",
         .help = "<persist_root>/gpu<i>/persist holds a GPU layer's generations (a disk filesystem)"},
        {.key = "ram_root", .type = ORG_CFG_STRING, .default_value = "/run/gpucache",
         .help = "<ram_root>/gpu<i> is a GPU layer's tmpfs"},
        {.key = "merge_root", .type = ORG_CFG_STRING, .default_value = "/srv/gpucache",
         .help = "<merge_root>/gpu<i> is a GPU layer's overlay (what tasks use)"},
        {.key = "sync_interval", .type = ORG_CFG_DURATION, .default_value = "60s", .min = "1s", .max = "1d",
         .help = "period of the sync of every layer (also on gpu.cache.sync, the sync verb, and at stop)"},
        {.key = "heartbeat_interval", .type = ORG_CFG_DURATION, .default_value = "5s", .min = "100ms", .max = "1h",
         .help = "period of gpu.cache.heartbeat, of the usage metrics and of the full check"},
        {.key = "prewarm_on_start", .type = ORG_CFG_BOOL, .default_value = "true",
         .help = "prewarm each layer once it is mounted"},
        {.key = "prewarm_max_file_mb", .type = ORG_CFG_INT, .default_value = "128", .min = "1", .max = "1048576",
         .help = "prewarm reads files smaller than this, MiB"},
        {.key = "prewarm_parallel", .type = ORG_CFG_INT, .default_value = "4", .min = "1", .max = "16",
         .help = "readers of one prewarm"},
        {.key = "max_ram_fraction", .type = ORG_CFG_DOUBLE, .default_value = "0.5", .min = "0.01", .max = "0.95",
         .help = "the layers' sizes together may take at most this fraction of MemTotal (checked at start)"},
        {.key = "full_percent", .type = ORG_CFG_INT, .default_value = "90", .min = "1", .max = "100",
         .help = "alert.gpucache.<layer>.full above this use of a tmpfs; cleared 5 points below"},
        {.key = "layers", .type = ORG_CFG_DICT, .children = layer_map,
         .help = "named layers (e.g. the host ramlayer): name -> {size, lower, persist, ram, merged}"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "status", .help = "every layer: state, paths, usage, last sync and prewarm"},
        {.name = "sync", .mutating = true, .args = "[GPU]", .help = "sync a layer (or all) now; answers when done"},
        {.name = "prewarm", .mutating = true, .args = "[GPU]", .help = "read the layer's small files (page cache)"},
        {.name = "enable", .mutating = true, .args = "GPU", .help = "mount a disabled layer again (restore, overlay)"},
        {.name = "disable", .mutating = true, .args = "GPU",
         .help = "final sync, then unmount; refused while a process has its cwd or a file inside"},
        ORG_VERBS_END,
};

/* ---- helpers ---------------------------------------------------------------------- */

char *gc_ts(gc *g, char *buf, size_t len) {
        return org_rfc3339_us(g->host->now_realtime_us(g->ctx), buf, len);
}

void gc_publish(gc *g, const char *subject, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return;
        int r = g->host->publish(g->ctx, subject, NULL, 0, text, strlen(text));
        if (r < 0)
                g->host->log(g->ctx, ORG_LOG_ERR, "publish %s: %s", subject, strerror(-r));
        free(text);
}

void gc_respond(gc *g, const char *reply, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text && reply && reply[0])
                (void)g->host->respond(g->ctx, reply, text, strlen(text));
        free(text);
}

json_t *gc_layer_id(const gc_layer *l) {
        json_t *o = json_object();
        json_object_set_new(o, "gpu", l->index >= 0 ? json_integer(l->index) : json_string(l->name));
        json_object_set_new(o, "layer", json_string(l->name));
        json_object_set_new(o, "pci", json_string(l->pci));
        return o;
}

static void copy(char *dst, size_t len, const char *src) {
        snprintf(dst, len, "%s", src ? src : "");
}

static bool path_ok(const char *p) {
        return p && p[0] == '/' && strlen(p) < PATH_MAX - 64 && !strpbrk(p, ",:\\\n") && strcmp(p, "/") != 0;
}

/* The layer a request names, or NULL: "gpu3", "3", 3, a PCI address, a layer name. */
static gc_layer *find_layer(gc *g, json_t *v) {
        char name[GC_NAME_MAX + 8];
        if (json_is_integer(v))
                snprintf(name, sizeof name, "gpu%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else if (json_is_string(v)) {
                const char *s = json_string_value(v);
                if (s[0] >= '0' && s[0] <= '9' && strspn(s, "0123456789") == strlen(s) && strlen(s) < 6)
                        snprintf(name, sizeof name, "gpu%s", s);
                else
                        copy(name, sizeof name, s);
        } else
                return NULL;
        for (size_t i = 0; i < g->n_layers; i++)
                if (strcmp(g->layers[i].name, name) == 0 || (g->layers[i].pci[0] && strcmp(g->layers[i].pci, name) == 0))
                        return &g->layers[i];
        return NULL;
}

/* ---- config ----------------------------------------------------------------------- */

static uint64_t cfg_int(gc *g, const char *key, uint64_t def) {
        int64_t v;
        return g->host->config_int(g->ctx, key, &v) >= 0 && v > 0 ? (uint64_t)v : def;
}

static int add_layer(gc *g, const char *name, int index, const char *pci, uint64_t size, const char *lower,
                     const char *persist, const char *ram, const char *merged) {
        if (g->n_layers >= GC_MAX_LAYERS) {
                g->host->log(g->ctx, ORG_LOG_ERR, "at most %d layers", GC_MAX_LAYERS);
                return -E2BIG;
        }
        const char *paths[] = {lower, persist, ram, merged};
        for (size_t k = 0; k < 4; k++)
                if (!path_ok(paths[k])) {
                        g->host->log(g->ctx, ORG_LOG_ERR,
                                     "%s: path \"%s\" must be absolute, not /, without ',', ':' or '\\' (overlay "
                                     "options)",
                                     name, paths[k] ? paths[k] : "");
                        return -EINVAL;
                }
        for (size_t i = 0; i < g->n_layers; i++)
                if (strcmp(g->layers[i].name, name) == 0 || strcmp(g->layers[i].ram, ram) == 0 ||
                    strcmp(g->layers[i].merged, merged) == 0 || strcmp(g->layers[i].persist, persist) == 0) {
                        g->host->log(g->ctx, ORG_LOG_ERR, "%s: name or a path shared with layer %s", name,
                                     g->layers[i].name);
                        return -EINVAL;
                }
        gc_layer *l = &g->layers[g->n_layers++];
        memset(l, 0, sizeof *l);
        copy(l->name, sizeof l->name, name);
        l->index = index;
        copy(l->pci, sizeof l->pci, pci);
        l->size = size;
        copy(l->lower, sizeof l->lower, lower);
        copy(l->persist, sizeof l->persist, persist);
        copy(l->ram, sizeof l->ram, ram);
        copy(l->merged, sizeof l->merged, merged);
        snprintf(l->upper, sizeof l->upper, "%s/upper", ram);
        snprintf(l->work, sizeof l->work, "%s/work", ram);
        l->size_bytes = size;
        return 0;
}

static int load_layers(gc *g, json_t *cfg) {
        char pcis[GC_MAX_GPUS][GC_PCI_MAX];
        size_t n = 0;
        json_t *gpus = json_object_get(cfg, "gpus");
        if (!gpus || (json_is_string(gpus) && strcmp(json_string_value(gpus), "auto") == 0))
                n = gc_discover(g, pcis, GC_MAX_GPUS);
        else if (json_is_array(gpus)) {
                size_t i;
                json_t *v;
                json_array_foreach (gpus, i, v) {
                        const char *s = json_string_value(v);
                        if (!s || strlen(s) != 12 || i >= GC_MAX_GPUS) {
                                g->host->log(g->ctx, ORG_LOG_ERR, "gpus: item %zu is not a PCI address (dddd:bb:dd.f)",
                                             i);
                                return -EINVAL;
                        }
                        copy(pcis[n++], GC_PCI_MAX, s);
                }
                /* gpu<i> stays the position in the list, present or not (as in gpuworker) */
                char found[GC_MAX_GPUS][GC_PCI_MAX];
                size_t nf = gc_discover(g, found, GC_MAX_GPUS);
                for (size_t j = 0; j < n; j++) {
                        bool there = false;
                        for (size_t k = 0; k < nf && !there; k++)
                                there = strcmp(found[k], pcis[j]) == 0;
                        if (!there)
                                g->host->log(g->ctx, ORG_LOG_WARNING,
                                             "gpu%zu: no AMD display function at %s (its layer is made all the same)", j,
                                             pcis[j]);
                }
        } else {
                g->host->log(g->ctx, ORG_LOG_ERR, "gpus: auto, a list of PCI addresses, or []");
                return -EINVAL;
        }
        const char *base = json_string_value(json_object_get(cfg, "base_root"));
        const char *persist = json_string_value(json_object_get(cfg, "persist_root"));
        const char *ram = json_string_value(json_object_get(cfg, "ram_root"));
        const char *merge = json_string_value(json_object_get(cfg, "merge_root"));
        for (size_t i = 0; i < n; i++) {
                char name[32], lp[PATH_MAX], pp[PATH_MAX], rp[PATH_MAX], mp[PATH_MAX];
                snprintf(name, sizeof name, "gpu%zu", i);
                snprintf(lp, sizeof lp, "%s/%s/base", base ? base : "/data/gpucache", name);
                snprintf(pp, sizeof pp, "%s/%s/persist", persist ? persist : "/data/gpucache", name);
                snprintf(rp, sizeof rp, "%s/%s", ram ? ram : "/run/gpucache", name);
                snprintf(mp, sizeof mp, "%s/%s", merge ? merge : "/srv/gpucache", name);
                int r = add_layer(g, name, (int)i, pcis[i], g->cache_bytes, lp, pp, rp, mp);
                if (r < 0)
                        return r;
        }
        json_t *layers = json_object_get(cfg, "layers");
        const char *key;
        json_t *v;
        json_object_foreach (layers, key, v) {
                if (strlen(key) >= GC_NAME_MAX || strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(key)) {
                        g->host->log(g->ctx, ORG_LOG_ERR, "layers: name \"%s\": lower-case letters, digits, _ and -",
                                     key);
                        return -EINVAL;
                }
                if ((strncmp(key, "gpu", 3) == 0 && key[3] >= '0' && key[3] <= '9') || strcmp(key, "all") == 0) {
                        g->host->log(g->ctx, ORG_LOG_ERR, "layers: name \"%s\" is reserved (GPU layers, \"all\")", key);
                        return -EINVAL;
                }
                json_int_t size = json_integer_value(json_object_get(v, "size"));
                int r = add_layer(g, key, -1, "", (uint64_t)size, json_string_value(json_object_get(v, "lower")),
                                  json_string_value(json_object_get(v, "persist")),
                                  json_string_value(json_object_get(v, "ram")),
                                  json_string_value(json_object_get(v, "merged")));
                if (r < 0)
                        return r;
        }
        return 0;
}

static int load_config(gc *g) {
        json_error_t e;
        json_t *cfg = json_loads(g->host->config_json(g->ctx), 0, &e);
        if (!json_is_object(cfg)) {
                json_decref(cfg);
                cfg = json_object();
        }
        g->cache_bytes = cfg_int(g, "cache_mb", 500) << 20;
        g->sync_ms = cfg_int(g, "sync_interval", 60000);
        g->heartbeat_ms = cfg_int(g, "heartbeat_interval", 5000);
        g->prewarm_max = cfg_int(g, "prewarm_max_file_mb", 128) << 20;
        g->prewarm_parallel = (unsigned)cfg_int(g, "prewarm_parallel", 4);
        bool b = true;
        g->prewarm_on_start = g->host->config_bool(g->ctx, "prewarm_on_start", &b) >= 0 ? b : true;
        double f = 0.5;
        g->max_ram_fraction = g->host->config_double(g->ctx, "max_ram_fraction", &f) >= 0 ? f : 0.5;
        uint64_t pct = cfg_int(g, "full_percent", 90);
        g->full_ratio = (double)pct / 100.0;
        g->clear_ratio = pct > 5 ? (double)(pct - 5) / 100.0 : 0.0;
        int r = load_layers(g, cfg);
        json_decref(cfg);
        return r;
}

/* Sum of the layers' sizes against MemTotal × max_ram_fraction. */
static int admission(gc *g) {
        g->mem_total = gc_mem_total(g);
        uint64_t sum = 0;
        for (size_t i = 0; i < g->n_layers; i++)
                sum += g->layers[i].size;
        if (!g->mem_total) {
                g->host->log(g->ctx, ORG_LOG_ERR, "cannot read MemTotal from /proc/meminfo: refusing to size tmpfs layers");
                return -ENOENT;
        }
        g->max_ram = (uint64_t)((double)g->mem_total * g->max_ram_fraction);
        if (sum > g->max_ram) {
                g->host->log(g->ctx, ORG_LOG_ERR,
                             "admission: %zu layers need %" PRIu64 " MiB of RAM, more than %.2f of MemTotal (%" PRIu64
                             " MiB of %" PRIu64 " MiB): lower cache_mb or a layer's size, or raise max_ram_fraction",
                             g->n_layers, sum >> 20, g->max_ram_fraction, g->max_ram >> 20, g->mem_total >> 20);
                return -E2BIG;
        }
        g->host->log(g->ctx, ORG_LOG_INFO, "%zu layers, %" PRIu64 " MiB of RAM (limit %" PRIu64 " MiB)", g->n_layers,
                     sum >> 20, g->max_ram >> 20);
        return 0;
}

/* ---- timers ----------------------------------------------------------------------- */

static json_t *layer_brief(gc *g, const gc_layer *l) {
        json_t *o = gc_layer_id(l);
        char ts[40] = "";
        if (l->last_sync_us) {
                time_t t = (time_t)(l->last_sync_us / 1000000);
                struct tm tm;
                gmtime_r(&t, &tm);
                strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        json_object_set_new(o, "state", json_string(gc_state_name(l->state)));
        json_object_set_new(o, "mounted", json_boolean(l->state == GC_MOUNTED));
        json_object_set_new(o, "used_bytes", json_integer((json_int_t)l->used_bytes));
        json_object_set_new(o, "size_bytes", json_integer((json_int_t)l->size_bytes));
        json_object_set_new(o, "last_sync", l->last_sync_us ? json_string(ts) : json_null());
        json_object_set_new(o, "generation", json_integer((json_int_t)l->generation));
        (void)g;
        return o;
}

static void on_heartbeat(org_ctx *ctx, uint64_t id, void *userdata) {
        gc *g = userdata;
        json_t *a = json_array();
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer_usage(g, &g->layers[i]);
                json_array_append_new(a, layer_brief(g, &g->layers[i]));
        }
        char ts[40];
        gc_publish(g, "gpu.cache.heartbeat", json_pack("{s:s, s:o, s:s}", "agent", g->host->agent_name(g->ctx), "gpus",
                                                       a, "ts", gc_ts(g, ts, sizeof ts)));
}

static void on_sync_timer(org_ctx *ctx, uint64_t id, void *userdata) {
        gc *g = userdata;
        for (size_t i = 0; i < g->n_layers; i++)
                if (g->layers[i].state == GC_MOUNTED)
                        (void)gc_layer_sync(g, &g->layers[i]);
}

static void on_inherited_check(org_ctx *ctx, uint64_t id, void *userdata) {
        gc *g = userdata;
        g->inherit_timer = 0;
        gc_layers_inherited_check(g);
}

/* ---- requests --------------------------------------------------------------------- */

/* The "gpu" of a request: from {"gpu": X}, {"args": [X]} or a bare X; NULL = all
 * (absent, null, "all" or "*"). */
static json_t *request_gpu(const org_msg *msg, bool *ret_bad) {
        *ret_bad = false;
        if (!msg->data || msg->len == 0)
                return NULL;
        json_error_t e;
        json_t *a = json_loadb(msg->data, msg->len, JSON_DECODE_ANY, &e);
        if (!a) {
                *ret_bad = true;
                return NULL;
        }
        json_t *v = NULL;
        if (json_is_object(a)) {
                v = json_object_get(a, "gpu");
                if (!v)
                        v = json_array_get(json_object_get(a, "args"), 0);
        } else if (json_is_array(a))
                v = json_array_get(a, 0);
        else
                v = a;
        /* circadian's night sync says {"gpu": "all"} */
        if (json_is_null(v) || (json_is_string(v) && (strcmp(json_string_value(v), "all") == 0 ||
                                                      strcmp(json_string_value(v), "*") == 0)))
                v = NULL;
        json_incref(v);
        json_decref(a);
        return v;
}

static void err_result(gc *g, const char *subject, json_t *gpu, const char *why, const char *reply) {
        json_t *o = json_object();
        char ts[40];
        json_object_set_new(o, "gpu", gpu ? json_incref(gpu) : json_null());
        json_object_set_new(o, "error", json_string(why));
        json_object_set_new(o, "ts", json_string(gc_ts(g, ts, sizeof ts)));
        if (subject)
                gc_publish(g, subject, json_incref(o));
        if (reply)
                gc_respond(g, reply, json_pack("{s:b, s:[o]}", "ok", 0, "results", json_incref(o)));
        json_decref(o);
}

/* A sync or prewarm of one layer (gpu) or of all (NULL); reply (may be NULL) gets one
 * answer when every one of them finished. */
static void start_op(gc *g, gc_kind kind, json_t *gpu, bool bad, const char *reply) {
        const char *err_subject = kind == GC_WAIT_SYNC ? "gpu.cache.sync.err" : "gpu.cache.prewarm.err";
        if (bad)
                return err_result(g, err_subject, NULL, "payload is not JSON: {\"gpu\": \"gpu3\"} or {}", reply);
        gc_layer *only = NULL;
        if (gpu && !(only = find_layer(g, gpu))) {
                char *s = json_dumps(gpu, JSON_ENCODE_ANY);
                char why[160];
                snprintf(why, sizeof why, "unknown gpu %.64s (layers: gpu<i>, a PCI address or a layer name)",
                         s ? s : "?");
                free(s);
                return err_result(g, err_subject, gpu, why, reply);
        }
        gc_waiter *w = NULL;
        if (reply)
                for (size_t k = 0; k < GC_MAX_WAITERS && !w; k++)
                        if (!g->waiters[k].used)
                                w = &g->waiters[k];
        if (reply && !w)
                return err_result(g, NULL, gpu, "too many requests in flight", reply);
        json_t *immediate = json_array();
        size_t waited = 0;
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                if (only && l != only)
                        continue;
                if (l->state != GC_MOUNTED) {
                        if (!only && l->state != GC_DRY_RUN)
                                continue; /* all: the mounted ones */
                        if (l->state == GC_DRY_RUN) {
                                (void)(kind == GC_WAIT_SYNC ? gc_layer_sync(g, l) : gc_layer_prewarm(g, l));
                                json_t *o = gc_layer_id(l);
                                json_object_set_new(o, "dry_run", json_true());
                                json_array_append_new(immediate, o);
                                continue;
                        }
                        char why[160];
                        snprintf(why, sizeof why, "%s is %s, not mounted%s%.100s", l->name, gc_state_name(l->state),
                                 l->why[0] ? ": " : "", l->why);
                        json_t *o = gc_layer_id(l);
                        char ts[40];
                        json_object_set_new(o, "error", json_string(why));
                        json_object_set_new(o, "ts", json_string(gc_ts(g, ts, sizeof ts)));
                        gc_publish(g, err_subject, json_incref(o));
                        json_array_append_new(immediate, o);
                        continue;
                }
                /* the sync that satisfies this request is the next one to start */
                uint64_t target;
                if (kind == GC_WAIT_SYNC) {
                        target = l->sync_seq + 1;
                        (void)gc_layer_sync(g, l);
                } else {
                        target = l->prewarming ? l->prewarm_seq : l->prewarm_seq + 1;
                        (void)gc_layer_prewarm(g, l);
                }
                if (w) {
                        w->target[i] = target;
                        waited++;
                }
        }
        if (!w) {
                json_decref(immediate);
                return;
        }
        if (!waited) {
                bool ok = true;
                size_t n;
                json_t *v;
                json_array_foreach (immediate, n, v)
                        ok = ok && !json_object_get(v, "error");
                gc_respond(g, reply, json_pack("{s:b, s:o}", "ok", ok, "results", immediate));
                memset(w->target, 0, sizeof w->target);
                return;
        }
        w->used = true;
        w->kind = kind;
        copy(w->reply, sizeof w->reply, reply);
        w->results = immediate;
}

static int gpucache_handle(void *state, const org_msg *msg) {
        gc *g = state;
        bool bad;
        json_t *gpu = request_gpu(msg, &bad);
        if (strcmp(msg->subject, "gpu.cache.sync") == 0)
                start_op(g, GC_WAIT_SYNC, gpu, bad, msg->reply);
        else if (strcmp(msg->subject, "gpu.cache.prewarm") == 0)
                start_op(g, GC_WAIT_PREWARM, gpu, bad, msg->reply);
        json_decref(gpu);
        return 0;
}

/* ---- status and verify ------------------------------------------------------------ */

static json_t *layer_status(gc *g, const gc_layer *l) {
        json_t *o = layer_brief(g, l);
        json_object_set_new(o, "why", l->why[0] ? json_string(l->why) : json_null());
        json_object_set_new(o, "adopted", json_boolean(l->adopted));
        json_object_set_new(o, "lower", json_string(l->lower));
        json_object_set_new(o, "persist", json_string(l->persist));
        json_object_set_new(o, "ram", json_string(l->ram));
        json_object_set_new(o, "merged", json_string(l->merged));
        json_object_set_new(o, "inodes_used", json_integer((json_int_t)l->inodes_used));
        json_object_set_new(o, "full", json_boolean(l->full));
        json_object_set_new(o, "syncing", json_boolean(l->syncing));
        json_object_set_new(o, "sync_pending", json_boolean(l->sync_pending));
        json_object_set_new(o, "syncs", json_integer((json_int_t)l->syncs));
        json_object_set_new(o, "sync_errors", json_integer((json_int_t)l->sync_errors));
        json_object_set_new(o, "sync_bytes", json_integer((json_int_t)l->sync_bytes));
        json_object_set_new(o, "last_sync_ms", json_integer((json_int_t)l->last_sync_ms));
        json_object_set_new(o, "last_sync_copied", json_integer((json_int_t)l->last.copied));
        json_object_set_new(o, "last_sync_linked", json_integer((json_int_t)l->last.linked));
        json_object_set_new(o, "last_error", l->last_error[0] ? json_string(l->last_error) : json_null());
        json_object_set_new(o, "prewarming", json_boolean(l->prewarming));
        json_object_set_new(o, "prewarm_files", json_integer((json_int_t)l->prewarm_files));
        json_object_set_new(o, "prewarm_bytes", json_integer((json_int_t)l->prewarm_bytes));
        json_object_set_new(o, "prewarm_ms", json_integer((json_int_t)l->prewarm_ms));
        return o;
}

static json_t *status_json(gc *g) {
        json_t *a = json_array();
        for (size_t i = 0; i < g->n_layers; i++)
                json_array_append_new(a, layer_status(g, &g->layers[i]));
        return json_pack("{s:o, s:b, s:I, s:I, s:I, s:I}", "layers", a, "dry_run", g->dry_run, "mem_total",
                         (json_int_t)g->mem_total, "ram_limit", (json_int_t)g->max_ram, "sync_interval_ms",
                         (json_int_t)g->sync_ms, "busy_refusals", (json_int_t)g->busy_refusals);
}

static json_t *check(const char *what, const char *want, const char *have, bool ok) {
        return json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", want, "have", have, "ok", ok);
}

static int gpucache_verify(void *state, char **ret_json) {
        gc *g = state;
        json_t *checks = json_array();
        bool all = true;
        uint64_t now = g->host->now_realtime_us(g->ctx);
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                char what[PATH_MAX + 64], want[PATH_MAX + 64], have[PATH_MAX + 128];
                bool ok;
                snprintf(what, sizeof what, "%s overlay at %s", l->name, l->merged);
                if (l->state == GC_DISABLED || l->state == GC_DRY_RUN) {
                        snprintf(want, sizeof want, "%s", gc_state_name(l->state));
                        snprintf(have, sizeof have, "%s", gc_state_name(l->state));
                        ok = true;
                } else {
                        snprintf(want, sizeof want, "overlay upperdir=%s", l->upper);
                        gc_mount m;
                        if (gc_mount_at(g, l->merged, &m) < 0 || !m.found)
                                snprintf(have, sizeof have, "not mounted (%s%s%.200s)", gc_state_name(l->state),
                                         l->why[0] ? ": " : "", l->why);
                        else
                                snprintf(have, sizeof have, "%s %.200s", m.fstype,
                                         strstr(m.super_opts, "upperdir=") ? strstr(m.super_opts, "upperdir=")
                                                                           : m.super_opts);
                        ok = m.found && strstr(have, want + 8) != NULL && strcmp(m.fstype, "overlay") == 0;
                }
                all = all && ok;
                json_array_append_new(checks, check(what, want, have, ok));
                if (l->state != GC_MOUNTED)
                        continue;
                snprintf(what, sizeof what, "%s last sync", l->name);
                snprintf(want, sizeof want, "within %" PRIu64 " s", 2 * g->sync_ms / 1000 + 1);
                uint64_t age = l->last_sync_us && now > l->last_sync_us ? (now - l->last_sync_us) / 1000000 : 0;
                if (l->last_sync_us)
                        snprintf(have, sizeof have, "%" PRIu64 " s ago, generation %" PRIu64 "%s%.200s", age,
                                 l->generation, l->last_error[0] ? ", last error: " : "", l->last_error);
                else
                        snprintf(have, sizeof have, "none yet this run (generation %" PRIu64 " current)%s%.200s",
                                 l->generation, l->last_error[0] ? ", last error: " : "", l->last_error);
                ok = !l->last_error[0] && (!l->last_sync_us || age <= 2 * g->sync_ms / 1000 + 1);
                all = all && ok;
                json_array_append_new(checks, check(what, want, have, ok));
        }
        json_t *o = json_pack("{s:b, s:o}", "ok", all, "checks", checks);
        *ret_json = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return *ret_json ? 0 : -ENOMEM;
}

/* ---- verbs ------------------------------------------------------------------------ */

static int gpucache_call(void *state, const char *verb, const org_msg *req) {
        gc *g = state;
        if (strcmp(verb, "status") == 0) {
                gc_respond(g, req->reply, status_json(g));
                return 0;
        }
        bool bad;
        json_t *gpu = request_gpu(req, &bad);
        if (strcmp(verb, "sync") == 0 || strcmp(verb, "prewarm") == 0) {
                start_op(g, verb[0] == 's' ? GC_WAIT_SYNC : GC_WAIT_PREWARM, gpu, bad, req->reply);
                json_decref(gpu);
                return 0;
        }
        if (strcmp(verb, "enable") == 0 || strcmp(verb, "disable") == 0) {
                gc_layer *l = gpu ? find_layer(g, gpu) : NULL;
                if (!l) {
                        char why[160];
                        snprintf(why, sizeof why, "%.10s GPU: name a layer (gpu<i>, a PCI address or a layer name)%s",
                                 verb, gpu ? ": unknown" : "");
                        gc_respond(g, req->reply, json_pack("{s:s}", "error", why));
                } else if (verb[0] == 'e')
                        gc_layer_enable(g, l, req->reply);
                else
                        gc_layer_disable(g, l, req->reply);
                json_decref(gpu);
                return 0;
        }
        json_decref(gpu);
        return -EOPNOTSUPP;
}

/* ---- lifecycle -------------------------------------------------------------------- */

static void gc_free(gc *g) {
        if (!g)
                return;
        if (g->sync_timer)
                g->host->timer_cancel(g->ctx, g->sync_timer);
        if (g->hb_timer)
                g->host->timer_cancel(g->ctx, g->hb_timer);
        if (g->inherit_timer)
                g->host->timer_cancel(g->ctx, g->inherit_timer);
        for (size_t k = 0; k < GC_MAX_WAITERS; k++)
                json_decref(g->waiters[k].results);
        gc_handover_free(g);
        free(g);
}

static int gpucache_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        if (!ORG_HOST_HAS(host, work_submit)) {
                host->log(ctx, ORG_LOG_ERR, "this agentd has no worker pool (work_submit): too old for gpucache");
                return -EOPNOTSUPP;
        }
        gc *g = calloc(1, sizeof *g);
        if (!g)
                return -ENOMEM;
        g->host = host;
        g->ctx = ctx;
        g->dry_run = host->dry_run(ctx);
        int r;
        if ((r = load_config(g)) < 0 || (r = admission(g)) < 0)
                goto fail;
        uint64_t sid;
        if ((r = host->subscribe(ctx, "gpu.cache.sync", &sid)) < 0 ||
            (r = host->subscribe(ctx, "gpu.cache.prewarm", &sid)) < 0 ||
            (r = host->timer_add(ctx, g->sync_ms, g->sync_ms, on_sync_timer, g, &g->sync_timer)) < 0 ||
            (r = host->timer_add(ctx, g->heartbeat_ms, g->heartbeat_ms, on_heartbeat, g, &g->hb_timer)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "subscribe/timers: %s", strerror(-r));
                goto fail;
        }
        bool inherited = false;
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer_start(g, &g->layers[i]);
                inherited = inherited || g->layers[i].restore_inherited;
        }
        /* the first event after the reload: restore_state has adopted what it could */
        if (inherited && (r = host->timer_add(ctx, 1, 0, on_inherited_check, g, &g->inherit_timer)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "timer: %s", strerror(-r));
                goto fail;
        }
        *ret_state = g;
        return 0;
fail:
        gc_free(g);
        return r;
}

static void gpucache_fini(void *state) {
        gc *g = state;
        if (!g)
                return;
        /* The jobs of a layer a new build took over run on: they are its own now. The
         * others are cancelled and waited for; a cancelled sync leaves its generation
         * unfinished and `current` where it was. */
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                if (gc_handed_layer(g, i))
                        continue;
                gc_job_stop(l->sync_job);
                gc_job_stop(l->prewarm_job);
                gc_job_stop(l->restore_job);
                gc_job_stop(l->busy_job);
        }
        for (size_t i = 0; i < g->n_layers; i++) {
                gc_layer *l = &g->layers[i];
                if (gc_handed_layer(g, i))
                        continue;
                if (l->state == GC_RESTORING) {
                        /* a partial upper: never synced, never left mounted */
                        (void)gc_umount(g, l->ram);
                        l->state = GC_DOWN;
                }
                if (l->disabling)
                        gc_remount_ro(g, l, false);
                if (l->op_reply[0])
                        gc_respond(g, l->op_reply, json_pack("{s:s}", "error", "instance stopping"));
        }
        for (size_t k = 0; k < GC_MAX_WAITERS; k++)
                if (g->waiters[k].used && !gc_handed_waiter(g, k))
                        gc_respond(g, g->waiters[k].reply,
                                   json_pack("{s:b, s:s}", "ok", 0, "error", "instance stopping (a final sync follows)"));
        if (!g->dry_run)
                gc_layers_final_sync(g);
        gc_free(g);
}

static int gpucache_save(void *state, void **ret_blob, size_t *ret_len) {
        return gc_save_state(state, ret_blob, ret_len);
}

static int gpucache_restore(void *state, const void *blob, size_t len) {
        return gc_restore_state(state, blob, len);
}

ORG_PLUGIN_DEFINE(.name = "gpucache", .version = GC_VERSION,
                  .summary = "RAM cache layers: tmpfs + overlay per GPU (by PCI address) and named layers, "
                             "crash-safe incremental sync to generations on disk, restore, prewarm off the loop",
                  .config_map = config_map, .verbs = verbs, .init = gpucache_init, .handle = gpucache_handle,
                  .call = gpucache_call, .verify = gpucache_verify, .fini = gpucache_fini,
                  .save_state = gpucache_save, .restore_state = gpucache_restore);
