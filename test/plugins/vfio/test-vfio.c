/* test-vfio.c — the vfio plugin against the fake host and the fixture sysfs trees (read
 * by the real libpci through sysfs.path): selection (never the Intel iGPU or the chipset
 * audio), the IOMMU group verdicts (a card sharing the NVMe's group refused, naming it),
 * IOMMU off, the binding choice (ids vs driver_override), the module list by kernel,
 * the hostpci plan (short addresses, existing entries kept, more than 16 refused, a
 * function never twice), apply with backups and atomic writes, a second apply that does
 * nothing, rollback, dry_run, bad input, and a sysfs tree libpci cannot read (the test
 * process must survive it). Argument 1 is the folder of fixture sysroots. */
#include <errno.h>
#include <sys/stat.h>

#include <jansson.h>

#include "fakehost.h"
#include "sysroot.h"
#include "test.h"
#include "vfio.h"

extern const org_plugin organism_plugin;

static const char *fixtures;

#define QM_Q35 "boot: order=scsi0\ncores: 4\nmachine: q35\nmemory: 8192\nname: gpu-pool\n"

typedef struct env {
        org_ctx ctx;
        char *root;
        void *state;
        char config[2048];
} env;

static void env_start(env *e, const char *fixture, const char *extra, const char *qm_out) {
        snprintf(e->config, sizeof e->config,
                 "{\"vmid\": 200, \"gpus\": [], \"vendor\": \"0x1002\", \"etc_dir\": \"/etc\", \"mgmt_nic\": \"\","
                 " \"binding\": \"auto\", \"initramfs\": true, \"qm_timeout\": 30000, \"initramfs_timeout\": "
                 "600000%s%s}",
                 extra && extra[0] ? ", " : "", extra ? extra : "");
        fake_ctx_init(&e->ctx, "vfio", e->config);
        e->root = fixture ? sr_make(fixtures, fixture) : NULL;
        e->ctx.sysroot = e->root ? strdup(e->root) : strdup("/nonexistent-organism-sysroot");
        e->ctx.exec_out = qm_out ? qm_out : QM_Q35;
        e->state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &e->ctx, &e->state), 0);
        fake_fire_timers(&e->ctx);
}

static void env_stop(env *e) {
        organism_plugin.fini(e->state);
        fake_ctx_done(&e->ctx);
        if (e->root)
                sr_remove(e->root);
}

static json_t *call(env *e, const char *verb, const char *args) {
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, e->state, &e->ctx, verb, args, &reply), 0);
        json_error_t err;
        json_t *o = json_loads(reply, 0, &err);
        if (!o)
                fprintf(stderr, "not JSON: %s\n", reply);
        CHECK(o);
        free(reply);
        return o;
}

static const char *exec_line(org_ctx *ctx, size_t i) {
        static char line[256];
        line[0] = '\0';
        for (size_t k = 0; k < 16 && ctx->execs[i].argv[k]; k++) {
                strncat(line, k ? " " : "", sizeof line - strlen(line) - 1);
                strncat(line, ctx->execs[i].argv[k], sizeof line - strlen(line) - 1);
        }
        return line;
}

static size_t count_execs(org_ctx *ctx, const char *prefix) {
        size_t n = 0;
        for (size_t i = 0; i < ctx->n_execs; i++)
                n += strncmp(exec_line(ctx, i), prefix, strlen(prefix)) == 0;
        return n;
}

static bool any_in(json_t *plan, const char *key, const char *needle) {
        json_t *errs = json_object_get(plan, key);
        for (size_t i = 0; i < json_array_size(errs); i++)
                if (strstr(json_string_value(json_array_get(errs, i)), needle))
                        return true;
        return false;
}

static bool any_error(json_t *plan, const char *needle) {
        json_t *errs = json_object_get(plan, "errors");
        for (size_t i = 0; i < json_array_size(errs); i++)
                if (strstr(json_string_value(json_array_get(errs, i)), needle))
                        return true;
        return false;
}

static json_t *card_of(json_t *plan, const char *pci) {
        json_t *cards = json_object_get(plan, "cards");
        for (size_t i = 0; i < json_array_size(cards); i++)
                if (strcmp(json_string_value(json_object_get(json_array_get(cards, i), "pci")), pci) == 0)
                        return json_array_get(cards, i);
        return NULL;
}

static const char *file_action(json_t *plan, const char *path) {
        json_t *files = json_object_get(plan, "files");
        for (size_t i = 0; i < json_array_size(files); i++)
                if (strcmp(json_string_value(json_object_get(json_array_get(files, i), "path")), path) == 0)
                        return json_string_value(json_object_get(json_array_get(files, i), "action"));
        return NULL;
}

static const char *file_want(json_t *plan, const char *path) {
        json_t *files = json_object_get(plan, "files");
        for (size_t i = 0; i < json_array_size(files); i++)
                if (strcmp(json_string_value(json_object_get(json_array_get(files, i), "path")), path) == 0)
                        return json_string_value(json_object_get(json_array_get(files, i), "want"));
        return NULL;
}

static void test_parse_addr(void) {
        char a[VFIO_ADDR_LEN];
        CHECK_INT(vfio_parse_addr("0000:05:00.0", a), 0);
        CHECK_STR(a, "0000:05:00.0");
        CHECK_INT(vfio_parse_addr("0b:00.1", a), 0);
        CHECK_STR(a, "0000:0b:00.1");
        CHECK_INT(vfio_parse_addr("0000:05:00", a), -EINVAL);
        CHECK_INT(vfio_parse_addr("0000:05:00.8", a), -EINVAL);
        CHECK_INT(vfio_parse_addr("0000:05:20.0", a), -EINVAL);
        CHECK_INT(vfio_parse_addr("zz:00.0", a), -EINVAL);
        CHECK_INT(vfio_parse_addr("0000:05:00.0 ", a), -EINVAL);
        CHECK_INT(vfio_parse_addr("", a), -EINVAL);
}

/* The reference box: 12 cards, never the iGPU or the chipset audio, ids binding. */
static void test_reference_plan(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        /* at start: vfio.state with the 12 cards, then their hostpci slots from qm config */
        const char *st = fake_last_published(&e.ctx, "vfio.state");
        CHECK(st);
        json_error_t err;
        json_t *s = json_loads(st, 0, &err);
        CHECK_INT(json_array_size(json_object_get(s, "gpus")), 12);
        CHECK(json_is_false(json_object_get(s, "reboot_needed")));
        CHECK(json_is_true(json_object_get(json_object_get(s, "iommu"), "on")));
        json_t *g0 = json_array_get(json_object_get(s, "gpus"), 0);
        CHECK_STR(json_string_value(json_object_get(g0, "pci")), "0000:05:00.0");
        CHECK_STR(json_string_value(json_object_get(g0, "hostpci")), "hostpci0");
        CHECK_INT(json_integer_value(json_object_get(g0, "gpu")), 0);
        CHECK_STR(json_string_value(json_object_get(g0, "group")), "9");
        CHECK(json_is_true(json_object_get(g0, "group_ok")));
        CHECK_STR(json_string_value(json_object_get(g0, "driver")), "amdgpu,snd_hda_intel");
        json_decref(s);
        CHECK_INT(count_execs(&e.ctx, "qm config 200"), 1);

        json_t *p = call(&e, "plan", "{}");
        if (!json_is_true(json_object_get(p, "ok")))
                fprintf(stderr, "%s\n", json_dumps(json_object_get(p, "errors"), 0));
        CHECK(json_is_true(json_object_get(p, "ok")));
        CHECK(json_is_true(json_object_get(p, "confirm_needed")));
        json_t *cards = json_object_get(p, "cards");
        CHECK_INT(json_array_size(cards), 12);
        CHECK_STR(json_string_value(json_object_get(p, "ids")), "1002:67df,1002:aaf0");
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "binding"), "mode")), "ids");
        CHECK(!card_of(p, "0000:00:02.0"));
        for (size_t i = 0; i < json_array_size(cards); i++) {
                json_t *fns = json_object_get(json_array_get(cards, i), "functions");
                CHECK_INT(json_array_size(fns), 2);
                for (size_t f = 0; f < 2; f++) {
                        const char *pci = json_string_value(json_object_get(json_array_get(fns, f), "pci"));
                        CHECK(strncmp(pci, "0000:00:", 8) != 0); /* nothing of the chipset */
                }
        }
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "root_disk"), "controller")), "0000:01:00.0");
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "iommu"), "cmdline")),
                  "intel_iommu=on iommu=pt");
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "kernel"), "release")), "6.8.12-4-pve");
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "mgmt_nic"), "iface")), "vmbr0");
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "mgmt_nic"), "controller")), "0000:02:00.0");
        /* the boot display is said to stay with the host (a warning, it is not AMD's) */
        json_t *cmds = json_object_get(p, "commands");
        CHECK_INT(json_array_size(cmds), 13);
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 0), 0)), "update-initramfs");
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 0), 3)), "all");
        json_t *c1 = json_array_get(cmds, 1), *c12 = json_array_get(cmds, 12);
        CHECK_STR(json_string_value(json_array_get(c1, 3)), "--hostpci0");
        CHECK_STR(json_string_value(json_array_get(c1, 4)), "0000:05:00,pcie=1");
        CHECK_STR(json_string_value(json_array_get(c12, 3)), "--hostpci11");
        CHECK_STR(json_string_value(json_array_get(c12, 4)), "0000:10:00,pcie=1");
        char *dump = json_dumps(p, 0);
        CHECK(!strstr(dump, "all-functions"));
        CHECK(!strstr(dump, "00:1f.3\",\"id\"") || !strstr(dump, "\"selected\""));
        free(dump);
        /* files: modules (no vfio_virqfd on 6.8), ids + softdeps, no udev rule */
        const char *mods = file_want(p, "/etc/modules-load.d/vfio.conf");
        CHECK_CONTAINS(mods, "\nvfio\nvfio_iommu_type1\nvfio_pci\n");
        CHECK(!strstr(mods, "vfio_virqfd\n"));
        const char *mp = file_want(p, "/etc/modprobe.d/vfio.conf");
        CHECK_CONTAINS(mp, "options vfio-pci ids=1002:67df,1002:aaf0 disable_vga=1\n");
        CHECK_CONTAINS(mp, "softdep amdgpu pre: vfio-pci\n");
        CHECK_CONTAINS(mp, "softdep radeon pre: vfio-pci\n");
        CHECK_STR(file_action(p, "/etc/modprobe.d/vfio.conf"), "create");
        CHECK_STR(file_action(p, "/etc/udev/rules.d/70-organism-vfio.rules"), "none");
        json_decref(p);
        /* plan without confirm, and apply without confirm: nothing written, nothing run */
        p = call(&e, "apply", "{}");
        CHECK(json_is_true(json_object_get(p, "confirm_needed")));
        json_decref(p);
        CHECK(!sr_read(e.root, "/etc/modprobe.d/vfio.conf"));
        CHECK(!sr_read(e.root, "/etc/modules-load.d/vfio.conf"));
        CHECK_INT(count_execs(&e.ctx, "qm set"), 0);
        CHECK_INT(count_execs(&e.ctx, "update-initramfs"), 0);
        /* status */
        p = call(&e, "status", "");
        CHECK(json_is_true(json_object_get(p, "ok")));
        CHECK_INT(json_array_size(json_object_get(json_object_get(p, "state"), "gpus")), 12);
        json_decref(p);
        CHECK(fake_metric(&e.ctx, "vfio_gpus") == 12);
        CHECK(fake_metric(&e.ctx, "vfio_iommu_on") == 1);
        env_stop(&e);
}

static void test_shared_group_refused(void) {
        env e;
        env_start(&e, "vfio-shared", NULL, NULL);
        json_t *p = call(&e, "plan", "{}");
        CHECK(json_is_false(json_object_get(p, "ok")));
        json_t *c = card_of(p, "0000:0b:00.0");
        CHECK(c);
        CHECK(json_is_false(json_object_get(c, "group_ok")));
        CHECK_CONTAINS(json_string_value(json_object_get(c, "refused")), "0000:01:00.0");
        CHECK_CONTAINS(json_string_value(json_object_get(c, "refused")), "root disk");
        CHECK(any_error(p, "DANGER: IOMMU group 5 holds 0000:01:00.0 (the root disk's controller)"));
        CHECK(json_is_true(json_object_get(card_of(p, "0000:05:00.0"), "group_ok")));
        json_decref(p);
        p = call(&e, "apply", "{\"confirm\": true}");
        CHECK_CONTAINS(json_string_value(json_object_get(p, "error")), "plan refused, nothing written");
        json_decref(p);
        CHECK(!sr_read(e.root, "/etc/modprobe.d/vfio.conf"));
        CHECK_INT(count_execs(&e.ctx, "qm set"), 0);
        CHECK(fake_metric(&e.ctx, "vfio_groups_refused") == 1);
        /* an explicit list without that card is safe */
        env_stop(&e);
        env_start(&e, "vfio-shared",
                  "\"gpus\": [\"0000:05:00.0\", \"0000:06:00.0\", \"0000:07:00.0\", \"0000:08:00.0\", \"0000:09:00.0\","
                  " \"0000:0a:00.0\", \"0000:0c:00.0\"]",
                  NULL);
        p = call(&e, "plan", "{}");
        CHECK(json_is_true(json_object_get(p, "ok")));
        CHECK_INT(json_array_size(json_object_get(p, "cards")), 7);
        /* 0b:00 keeps 1002:67df with the host: bound by address */
        CHECK_STR(json_string_value(json_object_get(json_object_get(p, "binding"), "mode")), "driver_override");
        const char *udev = file_want(p, "/etc/udev/rules.d/70-organism-vfio.rules");
        CHECK_CONTAINS(udev, "KERNEL==\"0000:0c:00.1\", ATTR{driver_override}=\"vfio-pci\"\n");
        CHECK(!strstr(udev, "0000:0b:00"));
        CHECK(!strstr(file_want(p, "/etc/modprobe.d/vfio.conf"), "ids="));
        json_decref(p);
        env_stop(&e);
}

static void test_iommu_off(void) {
        env e;
        env_start(&e, "vfio-noiommu", NULL, NULL);
        json_t *p = call(&e, "plan", "{}");
        CHECK(json_is_false(json_object_get(p, "ok")));
        CHECK(any_error(p, "the IOMMU is off"));
        CHECK(any_error(p, "has no IOMMU group"));
        CHECK(json_is_false(json_object_get(json_object_get(p, "iommu"), "on")));
        json_decref(p);
        p = call(&e, "apply", "{\"confirm\": true}");
        CHECK_CONTAINS(json_string_value(json_object_get(p, "error")), "the IOMMU is off");
        json_decref(p);
        CHECK(!sr_read(e.root, "/etc/modprobe.d/vfio.conf"));
        env_stop(&e);
}

static void test_kernel_61_and_bound(void) {
        env e;
        env_start(&e, "vfio-bound", NULL, NULL);
        json_t *p = call(&e, "plan", "{}");
        CHECK_CONTAINS(file_want(p, "/etc/modules-load.d/vfio.conf"), "vfio_pci\nvfio_virqfd\n");
        CHECK(json_is_true(json_object_get(json_object_get(p, "kernel"), "vfio_virqfd")));
        CHECK(!any_in(p, "warnings", "without vendor-reset"));
        CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(p, "cards"), 0), "reset_method")),
                  "device_specific bus");
        json_decref(p);
        json_error_t err;
        json_t *s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK(json_is_true(json_object_get(s, "bound")));
        CHECK(json_is_false(json_object_get(s, "reboot_needed")));
        CHECK(json_is_false(json_object_get(s, "applied")));
        CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(s, "gpus"), 3), "driver")),
                  "vfio-pci");
        json_decref(s);
        env_stop(&e);
}

#define HOSTPCI_12                                                                                                     \
        "hostpci0: 0000:05:00,pcie=1\nhostpci1: 0000:06:00,pcie=1\nhostpci2: 0000:07:00,pcie=1\n"                      \
        "hostpci3: 0000:08:00,pcie=1\nhostpci4: 0000:09:00,pcie=1\nhostpci5: 0000:0a:00,pcie=1\n"                      \
        "hostpci6: 0000:0b:00,pcie=1\nhostpci7: 0000:0c:00,pcie=1\nhostpci8: 0000:0d:00,pcie=1\n"                      \
        "hostpci9: 0000:0e:00,pcie=1\nhostpci10: 0000:0f:00,pcie=1\nhostpci11: 0000:10:00,pcie=1\n"

/* Files already as planned (written by hand or an earlier install) while the cards are
 * on amdgpu: a reboot is needed, whoever wrote them. */
static void test_files_in_place_need_reboot(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        json_t *p = call(&e, "plan", "{}");
        sr_write(e.root, "/etc/modules-load.d/vfio.conf", file_want(p, "/etc/modules-load.d/vfio.conf"));
        sr_write(e.root, "/etc/modprobe.d/vfio.conf", file_want(p, "/etc/modprobe.d/vfio.conf"));
        json_decref(p);
        organism_plugin.tick(e.state);
        json_error_t err;
        json_t *s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK(json_is_true(json_object_get(s, "applied")));
        CHECK(json_is_true(json_object_get(s, "reboot_needed")));
        json_decref(s);
        env_stop(&e);
}

static void test_apply_twice_and_rollback(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        const char *user = "# the user's own\noptions vfio-pci ids=1234:5678\n";
        sr_write(e.root, "/etc/modprobe.d/vfio.conf", user);
        size_t n0 = e.ctx.n_execs;
        json_t *a = call(&e, "apply", "{\"confirm\": true}");
        if (!json_is_true(json_object_get(a, "ok")))
                fprintf(stderr, "%s\n", json_dumps(a, 0));
        CHECK(json_is_true(json_object_get(a, "ok")));
        CHECK_INT(json_array_size(json_object_get(a, "written")), 2);
        CHECK_INT(json_array_size(json_object_get(a, "ran")), 13);
        json_decref(a);
        /* qm config, update-initramfs once, then one qm set per card */
        CHECK_STR(exec_line(&e.ctx, n0), "qm config 200");
        CHECK_STR(exec_line(&e.ctx, n0 + 1), "update-initramfs -u -k all");
        CHECK_STR(exec_line(&e.ctx, n0 + 2), "qm set 200 --hostpci0 0000:05:00,pcie=1");
        CHECK_STR(exec_line(&e.ctx, n0 + 13), "qm set 200 --hostpci11 0000:10:00,pcie=1");
        CHECK_INT(e.ctx.n_execs, n0 + 14);
        CHECK(e.ctx.execs[n0 + 2].mutating && !e.ctx.execs[n0].mutating);
        CHECK_CONTAINS(sr_read(e.root, "/etc/modprobe.d/vfio.conf"),
                       "options vfio-pci ids=1002:67df,1002:aaf0 disable_vga=1");
        CHECK_CONTAINS(sr_read(e.root, "/etc/modules-load.d/vfio.conf"), "vfio_iommu_type1\n");
        /* the backup holds the user's file; no temp file is left behind */
        CHECK_INT(sr_count(e.root, "/etc/modprobe.d", "vfio.conf.organism-"), 1);
        CHECK_INT(sr_count(e.root, "/etc/modprobe.d", ".vfio.conf."), 0);
        CHECK_INT(sr_count(e.root, "/etc/modules-load.d", "vfio.conf.organism-"), 0);
        CHECK_STR(sr_read(e.root, "/etc/modprobe.d/vfio.conf.organism-20261118T110640Z.bak"), user);
        CHECK_STR(sr_read(e.root, "/etc/modprobe.d/pve-blacklist.conf") ? "ok" : NULL, "ok");
        /* the state: applied, the cards still on amdgpu: a reboot is needed */
        json_error_t err;
        json_t *s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK(json_is_true(json_object_get(s, "reboot_needed")));
        CHECK(json_is_true(json_object_get(s, "applied")));
        json_decref(s);
        CHECK(fake_metric(&e.ctx, "vfio_reboot_needed") == 1);
        /* the VM's config followed the qm set calls */
        json_t *st0 = call(&e, "status", "");
        CHECK_STR(json_string_value(
                          json_object_get(json_object_get(json_object_get(st0, "vm"), "existing"), "hostpci11")),
                  "0000:10:00,pcie=1");
        json_decref(st0);
        char *vj = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &vj), 0);
        CHECK_CONTAINS(vj, "\"ok\":false");
        CHECK_CONTAINS(vj, "{\"what\":\"driver 0000:05:00.0\",\"want\":\"vfio-pci\",\"have\":\"amdgpu\",\"ok\":false}");
        free(vj);

        /* a second apply: the VM now has the entries, the files are as planned: nothing */
        e.ctx.exec_out = QM_Q35 HOSTPCI_12;
        size_t n1 = e.ctx.n_execs;
        a = call(&e, "apply", "{\"args\": [\"--confirm\"]}");
        CHECK(json_is_true(json_object_get(a, "ok")));
        CHECK_INT(json_array_size(json_object_get(a, "written")), 0);
        CHECK_INT(json_array_size(json_object_get(a, "ran")), 0);
        json_decref(a);
        CHECK_INT(e.ctx.n_execs, n1 + 1); /* qm config only */

        /* rollback without confirm: nothing */
        a = call(&e, "rollback", "{}");
        CHECK(json_is_true(json_object_get(a, "confirm_needed")));
        CHECK_INT(json_integer_value(json_object_get(a, "changes_recorded")), 14);
        json_decref(a);
        CHECK_INT(e.ctx.n_execs, n1 + 1);
        /* rollback: the user's file back, ours removed, the 12 entries deleted */
        size_t n2 = e.ctx.n_execs;
        a = call(&e, "rollback", "{\"confirm\": \"yes\"}");
        if (!json_is_true(json_object_get(a, "ok")))
                fprintf(stderr, "%s\n", json_dumps(a, 0));
        CHECK(json_is_true(json_object_get(a, "ok")));
        json_decref(a);
        CHECK_STR(sr_read(e.root, "/etc/modprobe.d/vfio.conf"), user);
        CHECK(!sr_read(e.root, "/etc/modules-load.d/vfio.conf"));
        CHECK_STR(exec_line(&e.ctx, n2), "qm config 200");
        CHECK_STR(exec_line(&e.ctx, n2 + 1), "update-initramfs -u -k all");
        CHECK_INT(count_execs(&e.ctx, "qm set 200 --delete hostpci"), 12);
        CHECK_INT(e.ctx.n_execs, n2 + 14);
        s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK(json_is_false(json_object_get(s, "applied")));
        CHECK(json_is_false(json_object_get(s, "reboot_needed")));
        json_decref(s);
        /* the VM's config followed the deletes (the fake's qm config text did not change) */
        json_t *stp = call(&e, "status", "");
        CHECK_INT(json_object_size(json_object_get(json_object_get(stp, "vm"), "existing")), 0);
        json_decref(stp);
        /* nothing left to roll back */
        size_t n3 = e.ctx.n_execs;
        a = call(&e, "rollback", "{\"confirm\": true}");
        CHECK(json_is_true(json_object_get(a, "ok")));
        CHECK_INT(json_array_size(json_object_get(a, "ran")), 0);
        json_decref(a);
        CHECK_INT(e.ctx.n_execs, n3);
        env_stop(&e);
}

/* After the reboot: the functions come up on vfio-pci one by one; each driver change is
 * seen at the next tick (the fingerprint of the tree changed), the state follows, and
 * reboot_needed ends when the last one is bound. A tick with nothing changed publishes
 * nothing. */
static void test_drivers_followed(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        sr_own(e.root, fixtures, "vfio-ref", "sys");
        json_decref(call(&e, "apply", "{\"confirm\": true}"));
        fake_ctx_clear_published(&e.ctx);
        organism_plugin.tick(e.state);
        CHECK(!fake_last_published(&e.ctx, "vfio.state"));
        json_error_t err;
        for (int bus = 0x05; bus <= 0x10; bus++)
                for (int fn = 0; fn < 2; fn++) {
                        char link[1024], target[1024];
                        snprintf(link, sizeof link, "%s/sys/bus/pci/devices/0000:%02x:00.%d/driver", e.root, bus, fn);
                        ssize_t n = readlink(link, target, sizeof target - 1);
                        CHECK(n > 0);
                        target[n] = '\0';
                        char *slash = strrchr(target, '/');
                        snprintf(slash + 1, sizeof target - (size_t)(slash + 1 - target), "vfio-pci");
                        CHECK_INT(unlink(link), 0);
                        CHECK_INT(symlink(target, link), 0);
                        fake_ctx_clear_published(&e.ctx);
                        organism_plugin.tick(e.state);
                        const char *st = fake_last_published(&e.ctx, "vfio.state");
                        CHECK(st);
                        json_t *s = json_loads(st, 0, &err);
                        bool last = bus == 0x10 && fn == 1;
                        CHECK(json_is_boolean(json_object_get(s, "reboot_needed")));
                        CHECK(json_is_true(json_object_get(s, "reboot_needed")) == !last);
                        CHECK(json_is_true(json_object_get(s, "bound")) == last);
                        json_decref(s);
                }
        json_t *s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(s, "gpus"), 0), "driver")),
                  "vfio-pci");
        json_decref(s);
        CHECK(fake_metric(&e.ctx, "vfio_gpus_on_vfio") == 12);
        char *vj = NULL;
        CHECK_INT(organism_plugin.verify(e.state, &vj), 0);
        CHECK_CONTAINS(vj, "{\"ok\":true,\"applied\":true");
        free(vj);
        env_stop(&e);
}

/* Two applies of different plans (ids, then by address for 11 cards): rollback takes
 * both back to what was there before the first, each file once. */
static void test_two_generations_rollback(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        const char *user = "options vfio-pci ids=1234:5678\n";
        sr_write(e.root, "/etc/modprobe.d/vfio.conf", user);
        json_t *a = call(&e, "apply", "{\"confirm\": true}");
        CHECK(json_is_true(json_object_get(a, "ok")));
        json_decref(a);
        organism_plugin.fini(e.state);
        /* the same store, another config: 11 cards, bound by address */
        char config[2048];
        snprintf(config, sizeof config, "%s", e.config);
        char *brace = strrchr(config, '}');
        snprintf(brace, sizeof config - (size_t)(brace - config),
                 ", \"gpus\": [\"0000:05:00.0\", \"0000:06:00.0\", \"0000:07:00.0\", \"0000:08:00.0\","
                 " \"0000:09:00.0\", \"0000:0a:00.0\", \"0000:0b:00.0\", \"0000:0c:00.0\", \"0000:0d:00.0\","
                 " \"0000:0e:00.0\", \"0000:0f:00.0\"]}");
        json_decref(e.ctx.config);
        free(e.ctx.config_json);
        e.ctx.config_json = strdup(config);
        json_error_t err;
        e.ctx.config = json_loads(config, 0, &err);
        CHECK(e.ctx.config);
        e.ctx.exec_out = QM_Q35 HOSTPCI_12;
        CHECK_INT(organism_plugin.init(&fake_host, &e.ctx, &e.state), 0);
        fake_fire_timers(&e.ctx);
        a = call(&e, "apply", "{\"confirm\": true}");
        CHECK(json_is_true(json_object_get(a, "ok")));
        CHECK_INT(json_array_size(json_object_get(a, "written")), 2); /* modprobe replaced, udev created */
        json_decref(a);
        CHECK(!strstr(sr_read(e.root, "/etc/modprobe.d/vfio.conf"), "ids="));
        CHECK_CONTAINS(sr_read(e.root, "/etc/udev/rules.d/70-organism-vfio.rules"), "KERNEL==\"0000:0f:00.1\"");
        CHECK_INT(sr_count(e.root, "/etc/modprobe.d", "vfio.conf.organism-"), 2);
        size_t n = e.ctx.n_execs;
        a = call(&e, "rollback", "{\"confirm\": true}");
        CHECK(json_is_true(json_object_get(a, "ok")));
        CHECK_INT(json_array_size(json_object_get(a, "written")), 3);
        json_decref(a);
        CHECK_STR(sr_read(e.root, "/etc/modprobe.d/vfio.conf"), user);
        CHECK(!sr_read(e.root, "/etc/modules-load.d/vfio.conf"));
        CHECK(!sr_read(e.root, "/etc/udev/rules.d/70-organism-vfio.rules"));
        CHECK_INT(count_execs(&e.ctx, "update-initramfs"), 3); /* apply, apply, rollback */
        CHECK_INT(e.ctx.n_execs - n, 14);                      /* qm config, initramfs, 12 deletes */
        env_stop(&e);
}

static void test_rollback_refuses_changed_file(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        json_decref(call(&e, "apply", "{\"confirm\": true}"));
        sr_write(e.root, "/etc/modules-load.d/vfio.conf", "vfio\n# edited by hand\n");
        size_t n = e.ctx.n_execs;
        json_t *a = call(&e, "rollback", "{\"confirm\": true}");
        CHECK_CONTAINS(json_string_value(json_object_get(a, "error")), "/etc/modules-load.d/vfio.conf changed since");
        json_decref(a);
        CHECK_INT(e.ctx.n_execs, n);
        CHECK(sr_read(e.root, "/etc/modprobe.d/vfio.conf"));
        env_stop(&e);
}

static void test_existing_hostpci(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, QM_Q35 "hostpci0: 0000:20:00.0,pcie=1\nhostpci1: 0000:21:00,pcie=1\n");
        json_t *p = call(&e, "plan", "{}");
        CHECK(json_is_true(json_object_get(p, "ok")));
        json_t *vm = json_object_get(p, "vm");
        CHECK_STR(json_string_value(json_object_get(json_object_get(vm, "existing"), "hostpci1")), "0000:21:00,pcie=1");
        json_t *cmds = json_object_get(p, "commands");
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 1), 3)), "--hostpci2");
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 12), 3)), "--hostpci13");
        json_decref(p);
        /* replace: from hostpci0, the old values recorded */
        p = call(&e, "plan", "{\"replace\": true}");
        cmds = json_object_get(p, "commands");
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 1), 3)), "--hostpci0");
        CHECK_STR(json_string_value(json_object_get(
                          json_array_get(json_object_get(json_object_get(p, "vm"), "assign"), 0), "before")),
                  "0000:20:00.0,pcie=1");
        json_decref(p);
        env_stop(&e);
        /* replace on a VM that already has exactly our entries: nothing to run */
        env_start(&e, "vfio-ref", NULL, QM_Q35 HOSTPCI_12 "hostpci12: 0000:30:00,pcie=1\n");
        p = call(&e, "plan", "{\"replace\": true}");
        cmds = json_object_get(p, "commands");
        CHECK_INT(json_array_size(cmds), 2); /* update-initramfs, and the delete of hostpci12 */
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 1), 4)), "hostpci12");
        CHECK_STR(json_string_value(json_array_get(json_array_get(cmds, 1), 3)), "--delete");
        json_decref(p);
        env_stop(&e);

        /* 5 entries taken + 12 cards > 16 slots: the card left out is named */
        env_start(&e, "vfio-ref", NULL,
                  QM_Q35 "hostpci0: 0000:20:00\nhostpci1: 0000:21:00\nhostpci2: 0000:22:00\nhostpci3: 0000:23:00\n"
                         "hostpci4: mapping=nic1\n");
        p = call(&e, "plan", "{}");
        CHECK(json_is_false(json_object_get(p, "ok")));
        CHECK(any_error(p, "at most 16 hostpci slots"));
        CHECK(any_error(p, "1 card(s) left out: 0000:10:00"));
        json_decref(p);
        json_t *a = call(&e, "apply", "{\"confirm\": true}");
        CHECK(json_object_get(a, "error"));
        json_decref(a);
        CHECK_INT(count_execs(&e.ctx, "qm set"), 0);
        env_stop(&e);

        /* 18 cards: 16 slots, the two left out named, even with replace */
        env_start(&e, "vfio-18", NULL, NULL);
        p = call(&e, "plan", "{\"replace\": true}");
        CHECK_INT(json_array_size(json_object_get(p, "cards")), 18);
        CHECK(any_error(p, "2 card(s) left out: 0000:17:00, 0000:18:00"));
        CHECK_INT(json_array_size(json_object_get(json_object_get(p, "vm"), "assign")), 16);
        json_decref(p);
        a = call(&e, "apply", "{\"confirm\": true}");
        CHECK_CONTAINS(json_string_value(json_object_get(a, "error")), "at most 16 hostpci slots");
        json_decref(a);
        CHECK_INT(count_execs(&e.ctx, "qm set"), 0);
        CHECK(!sr_read(e.root, "/etc/modules-load.d/vfio.conf"));
        env_stop(&e);

        /* an entry passing one function of a card: never twice */
        env_start(&e, "vfio-ref", NULL, QM_Q35 "hostpci0: 0000:05:00.1\n");
        p = call(&e, "plan", "{}");
        CHECK(any_error(p, "hostpci0 (0000:05:00.1) already passes 0000:05:00"));
        json_decref(p);
        env_stop(&e);

        /* not q35: said */
        env_start(&e, "vfio-ref", NULL, "memory: 8192\n");
        p = call(&e, "plan", "{}");
        json_t *w = json_object_get(p, "warnings");
        bool said = false;
        for (size_t i = 0; i < json_array_size(w); i++)
                said = said || strstr(json_string_value(json_array_get(w, i)), "pcie=1 needs q35");
        CHECK(said);
        json_decref(p);
        env_stop(&e);
}

static void test_bad_input(void) {
        env e;
        env_start(&e, "vfio-ref", "\"gpus\": [\"0000:77:00.0\", \"0000:00:1f.3\", \"0000:00:02.0\"]", NULL);
        json_t *p = call(&e, "plan", "{}");
        CHECK(any_error(p, "gpus: 0000:77:00.0: no such PCI function"));
        CHECK(any_error(p, "gpus: 0000:00:1f.3 is not a display function"));
        CHECK(any_error(p, "gpus: 0000:00:02.0 is a display of vendor 8086"));
        CHECK_INT(json_array_size(json_object_get(p, "cards")), 0);
        json_decref(p);
        env_stop(&e);
        /* the VM unknown to qm */
        env_start(&e, "vfio-ref", NULL, NULL);
        e.ctx.exec_status = 2;
        json_t *a = call(&e, "apply", "{\"confirm\": true}");
        CHECK_CONTAINS(json_string_value(json_object_get(a, "error")), "VM 200: qm config 200 failed (status 2)");
        json_decref(a);
        CHECK(!sr_read(e.root, "/etc/modules-load.d/vfio.conf"));
        CHECK_INT(count_execs(&e.ctx, "qm set"), 0);
        env_stop(&e);
        /* a bad address in the config: init refuses */
        fake_ctx_init(
                &e.ctx, "vfio",
                "{\"vmid\": 200, \"gpus\": [\"05:00\"], \"vendor\": \"0x1002\", \"etc_dir\": \"/etc\", \"mgmt_nic\": "
                "\"\","
                " \"binding\": \"auto\", \"initramfs\": true, \"qm_timeout\": 30000, \"initramfs_timeout\": 600000}");
        e.state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &e.ctx, &e.state), -EINVAL);
        fake_ctx_done(&e.ctx);
}

/* The root disk behind LVM (dm-0 on nvme0n1p3) is found; on ZFS it is not, and then
 * every storage controller counts as the host's. Other modprobe files are said. */
static void test_root_disk_lvm_zfs(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        sr_own(e.root, fixtures, "vfio-ref", "proc");
        sr_write(e.root, "/proc/mounts", "/dev/mapper/pve-root / ext4 rw,relatime 0 0\n");
        sr_write(e.root, "/etc/modprobe.d/blacklist-amd-gpu.conf", "blacklist amdgpu\nblacklist radeon\n");
        json_t *p = call(&e, "plan", "{}");
        json_t *rd = json_object_get(p, "root_disk");
        CHECK_STR(json_string_value(json_object_get(rd, "source")), "/dev/mapper/pve-root");
        CHECK_STR(json_string_value(json_object_get(rd, "controller")), "0000:01:00.0");
        json_t *w = json_object_get(p, "warnings");
        bool said = false;
        for (size_t i = 0; i < json_array_size(w); i++)
                said = said || strstr(json_string_value(json_array_get(w, i)),
                                      "/etc/modprobe.d/blacklist-amd-gpu.conf also has \"blacklist amdgpu\"");
        CHECK(said);
        json_decref(p);
        env_stop(&e);

        env_start(&e, "vfio-shared", NULL, NULL);
        sr_own(e.root, fixtures, "vfio-shared", "proc");
        sr_write(e.root, "/proc/mounts", "rpool/ROOT/pve-1 / zfs rw,relatime,xattr,noacl 0 0\n");
        p = call(&e, "plan", "{}");
        rd = json_object_get(p, "root_disk");
        CHECK(json_is_null(json_object_get(rd, "controller")));
        CHECK_CONTAINS(json_string_value(json_object_get(rd, "note")), "rpool/ROOT/pve-1 (zfs) is not resolved");
        CHECK(any_error(p, "DANGER: IOMMU group 5 holds 0000:01:00.0 (a storage controller (the root disk's controller "
                           "is not resolved))"));
        json_decref(p);
        env_stop(&e);
}

/* vmid 0: no VM, files only; status and plan still answer. */
static void test_no_vm(void) {
        env e;
        env_start(&e, "vfio-ref", "\"vmid\": 0", NULL);
        CHECK_INT(count_execs(&e.ctx, "qm"), 0);
        json_t *p = call(&e, "status", "");
        CHECK(json_is_null(json_object_get(p, "vm")));
        CHECK(json_is_true(json_object_get(p, "ok")));
        json_decref(p);
        p = call(&e, "plan", "{}");
        CHECK(json_is_true(json_object_get(p, "ok")));
        CHECK_INT(json_array_size(json_object_get(p, "commands")), 1); /* update-initramfs only */
        json_decref(p);
        env_stop(&e);
}

/* libpci's default error handler exits: ours must fail the enumeration only. */
static void test_unreadable_sysfs(void) {
        env e;
        env_start(&e, NULL, NULL, NULL);
        CHECK(!fake_last_published(&e.ctx, "vfio.state"));
        json_t *p = call(&e, "plan", "{}");
        CHECK_CONTAINS(json_string_value(json_object_get(p, "error")),
                       "cannot enumerate PCI: cannot open /nonexistent-organism-sysroot/sys/bus/pci/devices");
        json_decref(p);
        vfio_dev *devs = NULL;
        size_t n = 0;
        char err[256];
        CHECK_INT(vfio_pci_scan("/nonexistent/sys/bus/pci", &devs, &n, err, sizeof err), -ENOENT);
        CHECK_CONTAINS(err, "/nonexistent/sys/bus/pci/devices");
        /* an error from inside pci_fill_info (a function without its vendor file): libpci
         * calls a->error, ours longjmps back: a clean -EIO, many times over, no leak; an
         * entry that is no address is refused before libpci sees it */
        char tmpl[] = "/tmp/organism-vfio-bad-XXXXXX", path[256];
        CHECK(mkdtemp(tmpl));
        snprintf(path, sizeof path, "%s/devices", tmpl);
        CHECK_INT(mkdir(path, 0755), 0);
        snprintf(path, sizeof path, "%s/devices/0000:00:00.0", tmpl);
        CHECK_INT(mkdir(path, 0755), 0);
        for (int i = 0; i < 100; i++) {
                err[0] = '\0';
                CHECK_INT(vfio_pci_scan(tmpl, &devs, &n, err, sizeof err), -EIO);
                CHECK_CONTAINS(err, "0000:00:00.0/vendor");
        }
        rmdir(path);
        snprintf(path, sizeof path, "%s/devices/garbage", tmpl);
        CHECK_INT(mkdir(path, 0755), 0);
        CHECK_INT(vfio_pci_scan(tmpl, &devs, &n, err, sizeof err), -EBADMSG);
        CHECK_CONTAINS(err, "/devices/garbage is not a PCI function");
        rmdir(path);
        snprintf(path, sizeof path, "%s/devices", tmpl);
        rmdir(path);
        rmdir(tmpl);
        env_stop(&e);
}

/* A reload hands the VM's config over: the new instance maps hostpci without qm. */
static void test_reload_keeps_vm_config(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, QM_Q35 "hostpci0: 0000:20:00,pcie=1\n");
        void *blob = NULL;
        size_t len = 0;
        CHECK_INT(organism_plugin.save_state(e.state, &blob, &len), 0);
        organism_plugin.fini(e.state);
        size_t n = e.ctx.n_execs;
        fake_ctx_clear_published(&e.ctx);
        CHECK_INT(organism_plugin.init(&fake_host, &e.ctx, &e.state), 0);
        CHECK_INT(organism_plugin.restore_state(e.state, blob, len), 0);
        free(blob);
        fake_fire_timers(&e.ctx);
        CHECK_INT(e.ctx.n_execs, n);
        json_error_t err;
        json_t *s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(s, "gpus"), 0), "hostpci")),
                  "hostpci1");
        json_decref(s);
        CHECK_INT(organism_plugin.restore_state(e.state, "[1]", 3), -EINVAL);
        env_stop(&e);
}

static void test_dry_run(void) {
        env e;
        env_start(&e, "vfio-ref", NULL, NULL);
        e.ctx.dry_run = true;
        json_t *a = call(&e, "apply", "{\"confirm\": true}");
        CHECK(json_is_true(json_object_get(a, "ok")));
        CHECK(json_is_true(json_object_get(a, "dry_run")));
        json_decref(a);
        CHECK(!sr_read(e.root, "/etc/modprobe.d/vfio.conf"));
        CHECK(!sr_read(e.root, "/etc/modules-load.d/vfio.conf"));
        json_error_t err;
        json_t *s = json_loads(fake_last_published(&e.ctx, "vfio.state"), 0, &err);
        CHECK(json_is_false(json_object_get(s, "applied")));
        json_decref(s);
        env_stop(&e);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s FIXTURES\n", argv[0]);
                return 2;
        }
        fixtures = argv[1];
        RUN(test_parse_addr);
        RUN(test_reference_plan);
        RUN(test_shared_group_refused);
        RUN(test_iommu_off);
        RUN(test_kernel_61_and_bound);
        RUN(test_files_in_place_need_reboot);
        RUN(test_apply_twice_and_rollback);
        RUN(test_drivers_followed);
        RUN(test_two_generations_rollback);
        RUN(test_rollback_refuses_changed_file);
        RUN(test_existing_hostpci);
        RUN(test_bad_input);
        RUN(test_no_vm);
        RUN(test_root_disk_lvm_zfs);
        RUN(test_unreadable_sysfs);
        RUN(test_reload_keeps_vm_config);
        RUN(test_dry_run);
        return 0;
}
