/* test-gpucache.c — the gpucache plugin against the fake host, without mounting
 * anything: a sysroot whose sys/ is the gpupool12 fixture and whose proc/ holds a
 * meminfo and a mountinfo written here. Checked: gpu<i> by sorted PCI address (auto) or
 * by list order, dry_run logs instead of mounting, the admission limit, an unknown gpu
 * answered with .err, a missing lower refused, a layer that mountinfo shows mounted is
 * adopted (no restore) and synced through the worker-pool jobs (run by the fake
 * host), requests during a sync fold into one more, metrics and verify, a reload
 * whose new build cannot adopt the running sync (the old one's fini answers and
 * syncs), and fini's final sync. Arguments: the fixtures folder and a scratch folder on disk. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fakehost.h"
#include "gen.h"
#include "test.h"

extern const org_plugin organism_plugin;
static const org_plugin *P = &organism_plugin;

static char work[256], sysroot[300];

static void put(const char *path, const char *text) {
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        fputs(text, f);
        fclose(f);
}

static void mkdirs(const char *path) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
        CHECK(system(cmd) == 0);
}

static json_t *call(void *state, org_ctx *ctx, const char *verb, const char *args) {
        char *text = NULL;
        CHECK_INT(fake_call(P, state, ctx, verb, args, &text), 0);
        json_error_t e;
        json_t *o = json_loads(text, 0, &e);
        free(text);
        CHECK(o != NULL);
        return o;
}

static json_t *layer(json_t *status, const char *name) {
        size_t i;
        json_t *v;
        json_array_foreach (json_object_get(status, "layers"), i, v)
                if (strcmp(json_string_value(json_object_get(v, "layer")), name) == 0)
                        return v;
        return NULL;
}

static void *start(org_ctx *ctx, const char *config, bool dry_run, int want) {
        fake_ctx_init(ctx, "cache", config);
        ctx->sysroot = strdup(sysroot);
        ctx->dry_run = dry_run;
        void *state = NULL;
        int r = P->init(&fake_host, ctx, &state);
        CHECK_INT(r, want);
        return state;
}

static void test_gpus_dry_run(void) {
        char cfg[8192];
        snprintf(cfg, sizeof cfg,
                 "{\"gpus\": \"auto\", \"cache_mb\": 256, \"base_root\": \"%s/data\", \"persist_root\": \"%s/data\", "
                 "\"ram_root\": \"%s/run\", \"merge_root\": \"%s/srv\", \"prewarm_on_start\": false}",
                 work, work, work, work);
        for (int i = 0; i < 16; i++) {
                char p[700];
                snprintf(p, sizeof p, "%s/data/gpu%d/base", work, i);
                mkdirs(p);
        }
        org_ctx ctx;
        void *g = start(&ctx, cfg, true, 0);
        json_t *st = call(g, &ctx, "status", "{}");
        json_t *layers = json_object_get(st, "layers");
        CHECK(json_array_size(layers) >= 12);
        const char *prev = "";
        for (size_t i = 0; i < json_array_size(layers); i++) {
                json_t *l = json_array_get(layers, i);
                char name[32];
                snprintf(name, sizeof name, "gpu%zu", i);
                CHECK_STR(json_string_value(json_object_get(l, "layer")), name);
                CHECK_STR(json_string_value(json_object_get(l, "state")), "dry_run");
                const char *pci = json_string_value(json_object_get(l, "pci"));
                CHECK(strcmp(pci, prev) > 0); /* sorted by PCI address */
                prev = pci;
        }
        char pci3[32];
        snprintf(pci3, sizeof pci3, "%s", json_string_value(json_object_get(json_array_get(layers, 3), "pci")));
        json_decref(st);
        /* a sync by PCI address reaches gpu3, and does nothing (dry_run) */
        char args[64];
        snprintf(args, sizeof args, "{\"args\": [\"%s\"]}", pci3);
        json_t *r = call(g, &ctx, "sync", args);
        json_t *res = json_array_get(json_object_get(r, "results"), 0);
        CHECK_STR(json_string_value(json_object_get(res, "layer")), "gpu3");
        CHECK(json_is_true(json_object_get(res, "dry_run")));
        json_decref(r);
        CHECK_INT(ctx.n_works, 0);
        /* an unknown gpu: .err on the bus and an error in the reply */
        fake_ctx_clear_published(&ctx);
        CHECK_INT(fake_deliver(P, g, "gpu.cache.sync", "{\"gpu\": \"gpu42\"}"), 0);
        const char *err = fake_last_published(&ctx, "gpu.cache.sync.err");
        CHECK(err && strstr(err, "unknown gpu") && strstr(err, "gpu42"));
        r = call(g, &ctx, "prewarm", "{\"args\": [\"7x\"]}");
        CHECK(json_is_false(json_object_get(r, "ok")));
        json_decref(r);
        char *vj = NULL;
        CHECK_INT(P->verify(g, &vj), 0);
        CHECK(strstr(vj, "\"ok\":true") && strstr(vj, "gpu0 overlay at"));
        free(vj);
        P->fini(g);
        fake_ctx_done(&ctx);

        /* admission: 16 × 1 GiB > 0.5 of 16 GB */
        snprintf(cfg, sizeof cfg,
                 "{\"gpus\": \"auto\", \"cache_mb\": 1024, \"base_root\": \"%s/data\", \"persist_root\": \"%s/data\", "
                 "\"ram_root\": \"%s/run\", \"merge_root\": \"%s/srv\"}",
                 work, work, work, work);
        start(&ctx, cfg, true, -E2BIG);
        fake_ctx_done(&ctx);

        /* an explicit list: gpu<i> is the position in it */
        snprintf(cfg, sizeof cfg,
                 "{\"gpus\": [\"0000:0c:00.0\", \"0000:03:00.0\"], \"base_root\": \"%s/data\", \"persist_root\": "
                 "\"%s/data\", \"ram_root\": \"%s/run\", \"merge_root\": \"%s/srv\", \"prewarm_on_start\": false}",
                 work, work, work, work);
        g = start(&ctx, cfg, true, 0);
        st = call(g, &ctx, "status", "{}");
        CHECK_STR(json_string_value(json_object_get(layer(st, "gpu0"), "pci")), "0000:0c:00.0");
        CHECK_STR(json_string_value(json_object_get(layer(st, "gpu1"), "pci")), "0000:03:00.0");
        json_decref(st);
        P->fini(g);
        fake_ctx_done(&ctx);
}

static void test_adopted_sync(void) {
        char ram[700], merged[700], upper[720], lower[700], persist[700], mi[700], cfg[8192], p[800];
        snprintf(ram, sizeof ram, "%s/rl/ram", work);
        snprintf(merged, sizeof merged, "%s/rl/merged", work);
        snprintf(upper, sizeof upper, "%s/upper", ram);
        snprintf(lower, sizeof lower, "%s/rl/lower", work);
        snprintf(persist, sizeof persist, "%s/rl/persist", work);
        mkdirs(upper);
        mkdirs(lower);
        snprintf(p, sizeof p, "%s/model.bin", upper);
        put(p, "weights\n");
        /* what an earlier run left mounted */
        char line[8192];
        snprintf(line, sizeof line,
                 "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                 "80 22 0:50 / %s rw,nosuid,nodev - tmpfs tmpfs rw,size=65536k\n"
                 "81 22 0:51 / %s rw - overlay overlay rw,lowerdir=%s,upperdir=%s,workdir=%s/work\n",
                 ram, merged, lower, upper, ram);
        snprintf(mi, sizeof mi, "%s/proc/self/mountinfo", sysroot);
        put(mi, line);
        snprintf(cfg, sizeof cfg,
                 "{\"gpus\": [], \"prewarm_on_start\": false, \"layers\": {"
                 "\"ramlayer\": {\"size\": 67108864, \"lower\": \"%s\", \"persist\": \"%s\", \"ram\": \"%s\", \"merged\": "
                 "\"%s\"}, "
                 "\"nolower\": {\"size\": 1048576, \"lower\": \"%s/absent\", \"persist\": \"%s/p2\", \"ram\": \"%s/r2\", "
                 "\"merged\": \"%s/m2\"}, "
                 "\"noanchor\": {\"size\": 1048576, \"lower\": \"%s\", \"persist\": \"%s/notmounted/p3\", \"ram\": "
                 "\"%s/r3\", \"merged\": \"%s/m3\"}}}",
                 lower, persist, ram, merged, work, work, work, work, lower, work, work, work);
        org_ctx ctx;
        void *g = start(&ctx, cfg, false, 0);
        json_t *st = call(g, &ctx, "status", "{}");
        json_t *rl = layer(st, "ramlayer");
        CHECK_STR(json_string_value(json_object_get(rl, "state")), "mounted");
        CHECK(json_is_true(json_object_get(rl, "adopted")));
        json_t *nl = layer(st, "nolower");
        CHECK_STR(json_string_value(json_object_get(nl, "state")), "error");
        CHECK(strstr(json_string_value(json_object_get(nl, "why")), "lower layer"));
        json_t *na = layer(st, "noanchor");
        CHECK_STR(json_string_value(json_object_get(na, "state")), "error");
        CHECK(strstr(json_string_value(json_object_get(na, "why")), "notmounted (where"));
        snprintf(p, sizeof p, "%s/notmounted", work);
        CHECK(access(p, F_OK) < 0); /* not made on the filesystem below */
        json_decref(st);
        CHECK_INT(ctx.n_works, 0); /* adopted: no restore job */

        /* three requests before the pool runs: one sync, then exactly one more */
        fake_ctx_clear_published(&ctx);
        org_msg m = {.subject = "gpu.cache.sync", .data = "{}", .len = 2};
        CHECK_INT(P->handle(g, &m), 0);
        /* circadian's night sync: every layer */
        const char *night = "{\"ts\": \"2026-01-01T22:00:00Z\", \"gpu\": \"all\", \"reason\": \"circadian\"}";
        org_msg n = {.subject = "gpu.cache.sync", .data = night, .len = strlen(night)};
        CHECK_INT(P->handle(g, &n), 0);
        CHECK(fake_last_published(&ctx, "gpu.cache.sync.err") == NULL);
        org_msg q = {.subject = "gpu.cache.sync", .reply = "_INBOX.req.1", .data = "{\"gpu\": \"ramlayer\"}", .len = 19};
        CHECK_INT(P->handle(g, &q), 0);
        CHECK_INT(ctx.n_works, 1);
        CHECK_INT(fake_work_run(&ctx), 2);
        const char *reply = fake_last_published(&ctx, "_INBOX.req.1");
        CHECK(reply && strstr(reply, "\"ok\":true") && strstr(reply, "\"generation\":2"));
        const char *done = fake_last_published(&ctx, "gpu.cache.sync.done");
        CHECK(done && strstr(done, "\"layer\":\"ramlayer\""));
        CHECK(fake_metric(&ctx, "gpucache_syncs_total{layer=\"ramlayer\",pci=\"\"}") == 2);
        CHECK(fake_metric(&ctx, "gpucache_size_bytes{layer=\"ramlayer\",pci=\"\"}") > 0);
        CHECK(fake_metric(&ctx, "gpucache_last_sync_timestamp_seconds{layer=\"ramlayer\",pci=\"\"}") > 0);
        CHECK_INT(gc_gen_current(persist), 2);
        snprintf(p, sizeof p, "%s/current/model.bin", persist);
        CHECK(access(p, F_OK) == 0);
        char *vj = NULL;
        CHECK_INT(P->verify(g, &vj), 0);
        CHECK(strstr(vj, "ramlayer last sync") && strstr(vj, "generation 2") && strstr(vj, "\"ok\":false"));
        free(vj); /* ok false: nolower is in error */

        /* a reload whose new build cannot adopt the sync (the fake host's work_adopt
         * answers -ENOENT, as for an isolated instance): the old build keeps it, and its
         * fini cancels it, answers the request and runs the final sync, as at a stop */
        org_msg q2 = {.subject = "gpu.cache.sync", .reply = "_INBOX.req.2", .data = "{\"gpu\": \"ramlayer\"}", .len = 19};
        CHECK_INT(P->handle(g, &q2), 0);
        CHECK_INT(ctx.n_works, 1);
        void *blob = NULL;
        size_t blob_len = 0;
        CHECK_INT(P->save_state(g, &blob, &blob_len), 0);
        CHECK(strstr(blob, "\"sync_job\"") && strstr(blob, "_INBOX.req.2"));
        org_ctx ctx2;
        void *g2 = start(&ctx2, cfg, false, 0);
        CHECK_INT(P->restore_state(g2, blob, blob_len), 0);
        free(blob);
        st = call(g2, &ctx2, "status", "{}");
        CHECK(json_is_false(json_object_get(layer(st, "ramlayer"), "syncing")));
        json_decref(st);
        P->fini(g);
        reply = fake_last_published(&ctx, "_INBOX.req.2");
        CHECK(reply && strstr(reply, "instance stopping"));
        fake_ctx_done(&ctx);
        CHECK_INT(gc_gen_current(persist), 3);
        CHECK_INT(ctx2.n_works, 0); /* the old build synced it: the new one has no sync to start */

        /* stop: a final sync on the spot */
        snprintf(p, sizeof p, "%s/late.txt", upper);
        put(p, "written before stop\n");
        P->fini(g2);
        fake_ctx_done(&ctx2);
        CHECK_INT(gc_gen_current(persist), 4);
        snprintf(p, sizeof p, "%s/current/late.txt", persist);
        CHECK(access(p, F_OK) == 0);
}

int main(int argc, char **argv) {
        if (argc < 3)
                TEST_SKIP("usage: test-gpucache FIXTURES SCRATCH");
        snprintf(work, sizeof work, "%s/gpucache-unit-XXXXXX", argv[2]);
        CHECK(mkdtemp(work) != NULL);
        snprintf(sysroot, sizeof sysroot, "%s/root", work);
        char p[1200];
        snprintf(p, sizeof p, "%s/proc/self", sysroot);
        mkdirs(p);
        snprintf(p, sizeof p, "%s/proc/meminfo", sysroot);
        put(p, "MemTotal:       16000000 kB\nMemFree:         8000000 kB\n");
        snprintf(p, sizeof p, "%s/proc/self/mountinfo", sysroot);
        put(p, "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n");
        char target[PATH_MAX + 32], fixtures[PATH_MAX];
        CHECK(realpath(argv[1], fixtures) != NULL);
        snprintf(target, sizeof target, "%s/gpupool12/sys", fixtures);
        snprintf(p, sizeof p, "%s/sys", sysroot);
        CHECK(symlink(target, p) == 0);
        test_gpus_dry_run();
        test_adopted_sync();
        CHECK_INT(gc_rm_rf(work), 0);
        printf("ok\n");
        return 0;
}
