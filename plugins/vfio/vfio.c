/* vfio.c — the GPU passthrough preparation plugin: its descriptor, config map, hooks and
 * verbs. `status` and `plan` only read (plan runs `qm config VMID`); `apply` writes the
 * binding files and runs update-initramfs and the `qm set` calls, and `rollback` takes
 * them back, both only with confirm (otherwise: the plan, nothing changed). Each tick
 * re-reads the PCI inventory (libpci, cheap) and publishes `vfio.state` when it changed:
 * the cards with their ids, driver, IOMMU group and its verdict, hostpci slot, and
 * reboot_needed (applied, not every function on vfio-pci yet). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vfio.h"

#define VFIO_VERSION "1.0.0"

static const org_config_entry config_map[] = {
        {.key = "vmid",
         .type = ORG_CFG_INT,
         .default_value = "200",
         .min = "0",
         .max = "999999999",
         .help = "the GPU-Pool VM the cards are planned for (hostpci entries); 0: no VM, files only"},
        {.key = "gpus",
         .type = ORG_CFG_STRING_LIST,
         .default_value = "[]",
         .format = "pci_address",
         .help = "display functions to pass through, by address (0000:05:00.0); empty: every display function of "
                 "the vendor but the boot display"},
        {.key = "vendor",
         .type = ORG_CFG_STRING,
         .default_value = "\"0x1002\"",
         .help = "PCI vendor id of the cards (0x1002 AMD); other vendors' displays stay with the host"},
        {.key = "etc_dir",
         .type = ORG_CFG_STRING,
         .default_value = "/etc",
         .help = "where modules-load.d, modprobe.d and udev/rules.d live (under agent.sysroot)"},
        {.key = "mgmt_nic",
         .type = ORG_CFG_STRING,
         .default_value = "\"\"",
         .help = "the management interface (vmbr0, eno1); empty: the interface of the default route"},
        {.key = "binding",
         .type = ORG_CFG_STRING,
         .default_value = "auto",
         .choices = ORG_CHOICES("auto", "ids", "driver_override"),
         .help = "auto: vfio-pci ids= when every function with those ids is passed through, else by address"},
        {.key = "initramfs",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "run update-initramfs -u -k all after a binding file changed"},
        {.key = "qm_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "30s",
         .min = "1s",
         .max = "10m",
         .help = "time-out of each qm call"},
        {.key = "initramfs_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "10m",
         .min = "10s",
         .max = "2h",
         .help = "time-out of update-initramfs"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "status", .help = "IOMMU, kernel, root disk and NIC, the cards, their groups and drivers, files, VM"},
        {.name = "plan",
         .args = "{\"replace\": bool}",
         .help = "the full plan: groups, files, qm set calls; changes nothing"},
        {.name = "apply",
         .mutating = true,
         .args = "{\"confirm\": true, \"replace\": bool}",
         .help = "write the binding files (backups kept), update-initramfs, qm set per card; without confirm: the "
                 "plan"},
        {.name = "rollback",
         .mutating = true,
         .args = "{\"confirm\": true}",
         .help = "restore the files apply replaced, remove the ones it created, undo its hostpci entries"},
        ORG_VERBS_END,
};

void vfio_rfc3339(vfio *v, char *buf, size_t size) {
        org_rfc3339_us(v->host->now_realtime_us(v->ctx), buf, size);
}

void vfio_respond(vfio *v, const char *reply_subject, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                text = strdup("{\"error\":\"out of memory\"}");
        if (text && reply_subject)
                v->host->respond(v->ctx, reply_subject, text, strlen(text));
        free(text);
}

static void update_metrics(vfio *v, const json_t *state) {
        const org_host *h = v->host;
        json_t *gpus = json_object_get(state, "gpus");
        size_t bound = 0, refused = 0;
        for (size_t i = 0; i < json_array_size(gpus); i++) {
                json_t *g = json_array_get(gpus, i);
                const char *d = json_string_value(json_object_get(g, "driver"));
                bound += d && strcmp(d, "vfio-pci") == 0;
                refused += !json_is_true(json_object_get(g, "group_ok"));
        }
        h->metric_set(v->ctx, "vfio_gpus", ORG_METRIC_GAUGE, (double)json_array_size(gpus),
                      "cards selected for passthrough");
        h->metric_set(v->ctx, "vfio_gpus_on_vfio", ORG_METRIC_GAUGE, (double)bound,
                      "cards whose every function is on vfio-pci");
        h->metric_set(v->ctx, "vfio_groups_refused", ORG_METRIC_GAUGE, (double)refused,
                      "cards refused: their IOMMU group holds a device the host keeps");
        h->metric_set(v->ctx, "vfio_iommu_on", ORG_METRIC_GAUGE, v->inv.iommu_on ? 1 : 0, "1 when IOMMU groups exist");
        h->metric_set(v->ctx, "vfio_reboot_needed", ORG_METRIC_GAUGE,
                      json_is_true(json_object_get(state, "reboot_needed")) ? 1 : 0,
                      "1 when applied files wait for a reboot to bind vfio-pci");
        h->metric_set(v->ctx, "vfio_enumerate_seconds", ORG_METRIC_GAUGE, (double)v->inv.enumerate_us / 1e6,
                      "time of the last PCI enumeration");
}

void vfio_refresh_state(vfio *v, bool force) {
        vfio_inventory inv;
        char err[300];
        uint64_t fp = 0;
        bool has_fp = vfio_pci_fingerprint(v, &fp) >= 0;
        json_t *plan = NULL;
        if (!force && v->has_inv && has_fp && v->has_fp && fp == v->inv_fp) {
                /* the same functions on the same drivers: no libpci scan, the plan again
                 * (the files and the VM's config may have changed) */
                if (vfio_plan_build(v, &v->inv, v->qm_config, v->qm_error, false, &plan) < 0)
                        return;
        } else {
                if (vfio_inventory_take(v, &inv, err, sizeof err) < 0) {
                        if (v->has_inv || force)
                                v->host->log(v->ctx, ORG_LOG_ERR, "cannot enumerate PCI: %s", err);
                        vfio_inventory_done(&v->inv);
                        v->has_inv = false;
                        return;
                }
                if (vfio_plan_build(v, &inv, v->qm_config, v->qm_error, false, &plan) < 0) {
                        vfio_inventory_done(&inv);
                        return;
                }
                vfio_inventory_done(&v->inv);
                v->inv = inv;
                v->has_inv = true;
                v->inv_fp = fp;
                v->has_fp = has_fp;
        }
        json_decref(v->last_plan);
        v->last_plan = plan;
        json_t *state = vfio_state_json(v, &v->inv, plan);
        char *text = state ? json_dumps(state, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (text && (force || !v->last_state || strcmp(text, v->last_state) != 0)) {
                char ts[40];
                vfio_rfc3339(v, ts, sizeof ts);
                json_object_set_new(state, "ts", json_string(ts));
                char *msg = json_dumps(state, JSON_COMPACT);
                if (msg && v->host->publish(v->ctx, "vfio.state", NULL, 0, msg, strlen(msg)) >= 0)
                        v->published++;
                free(msg);
                free(v->last_state);
                v->last_state = text;
                text = NULL;
        }
        if (state)
                update_metrics(v, state);
        free(text);
        json_decref(state);
}

static void vfio_free(vfio *v) {
        if (!v)
                return;
        vfio_job_free(v->job);
        free(v->pending_reply);
        vfio_inventory_done(&v->inv);
        for (size_t i = 0; i < v->cfg.n_gpus; i++)
                free(v->cfg.gpus[i]);
        free(v->cfg.gpus);
        free(v->qm_config);
        json_decref(v->last_plan);
        free(v->last_state);
        free(v);
}

static int cfg_string(vfio *v, const char *key, char *buf, size_t size) {
        const char *s = NULL;
        int r = v->host->config_string(v->ctx, key, &s);
        if (r < 0 || strlen(s) >= size) {
                v->host->log(v->ctx, ORG_LOG_ERR, "%s: %s", key, r < 0 ? strerror(-r) : "too long");
                return r < 0 ? r : -EINVAL;
        }
        snprintf(buf, size, "%s", s);
        return 0;
}

static int load_config(vfio *v) {
        const org_host *h = v->host;
        vfio_settings *c = &v->cfg;
        json_error_t e;
        int64_t vmid, qm_ms, ini_ms;
        int r;
        char vendor[16], binding[24];
        if ((r = h->config_int(v->ctx, "vmid", &vmid)) < 0 || (r = h->config_int(v->ctx, "qm_timeout", &qm_ms)) < 0 ||
            (r = h->config_int(v->ctx, "initramfs_timeout", &ini_ms)) < 0 ||
            (r = h->config_bool(v->ctx, "initramfs", &c->initramfs)) < 0) {
                h->log(v->ctx, ORG_LOG_ERR, "vmid/qm_timeout/initramfs_timeout/initramfs: %s", strerror(-r));
                return r;
        }
        if (vmid < 0 || vmid > 999999999 || (vmid > 0 && vmid < 100) || qm_ms <= 0 || ini_ms <= 0) {
                h->log(v->ctx, ORG_LOG_ERR, "vmid must be 0 or 100..999999999, time-outs positive");
                return -EINVAL;
        }
        c->vmid = vmid;
        snprintf(c->vmid_text, sizeof c->vmid_text, "%" PRId64, vmid);
        c->qm_timeout_ms = (uint64_t)qm_ms;
        c->initramfs_timeout_ms = (uint64_t)ini_ms;
        if ((r = cfg_string(v, "vendor", vendor, sizeof vendor)) < 0 ||
            (r = cfg_string(v, "etc_dir", c->etc_dir, sizeof c->etc_dir)) < 0 ||
            (r = cfg_string(v, "mgmt_nic", c->mgmt_nic, sizeof c->mgmt_nic)) < 0 ||
            (r = cfg_string(v, "binding", binding, sizeof binding)) < 0)
                return r;
        char *end = NULL;
        unsigned long vid = strtoul(vendor, &end, 16);
        if (!end || *end || end == vendor || vid == 0 || vid >= 0xffff) {
                h->log(v->ctx, ORG_LOG_ERR, "vendor: \"%s\" is not a PCI vendor id (0x1002)", vendor);
                return -EINVAL;
        }
        c->vendor = (uint16_t)vid;
        if (c->etc_dir[0] != '/' || strstr(c->etc_dir, "..")) {
                h->log(v->ctx, ORG_LOG_ERR, "etc_dir: \"%s\" must be an absolute path without ..", c->etc_dir);
                return -EINVAL;
        }
        size_t el = strlen(c->etc_dir);
        while (el > 1 && c->etc_dir[el - 1] == '/')
                c->etc_dir[--el] = '\0';
        if (strcmp(binding, "auto") == 0)
                c->binding = VFIO_BIND_AUTO;
        else if (strcmp(binding, "ids") == 0)
                c->binding = VFIO_BIND_IDS;
        else if (strcmp(binding, "driver_override") == 0)
                c->binding = VFIO_BIND_OVERRIDE;
        else {
                h->log(v->ctx, ORG_LOG_ERR, "binding: \"%s\" is not auto, ids or driver_override", binding);
                return -EINVAL;
        }
        json_t *o = json_loads(h->config_json(v->ctx), 0, &e);
        json_t *list = json_object_get(o, "gpus");
        if (json_array_size(list) > 0) {
                if (json_array_size(list) > 64) {
                        json_decref(o);
                        h->log(v->ctx, ORG_LOG_ERR, "gpus: at most 64 addresses");
                        return -EINVAL;
                }
                c->gpus = calloc(json_array_size(list), sizeof *c->gpus);
                if (!c->gpus) {
                        json_decref(o);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < json_array_size(list); i++) {
                        const char *s = json_string_value(json_array_get(list, i));
                        char addr[VFIO_ADDR_LEN];
                        if (!s || vfio_parse_addr(s, addr) < 0) {
                                h->log(v->ctx, ORG_LOG_ERR, "gpus[%zu]: \"%s\" is not a PCI address (0000:05:00.0)", i,
                                       s ? s : "?");
                                json_decref(o);
                                return -EINVAL;
                        }
                        c->gpus[c->n_gpus++] = strdup(addr);
                }
        }
        json_decref(o);
        return 0;
}

static void on_first(org_ctx *ctx, uint64_t id, void *userdata) {
        vfio *v = userdata;
        vfio_refresh_state(v, true);
        /* the hostpci mapping needs the VM's config: read it once, in the background */
        if (v->cfg.vmid > 0 && !v->job && !v->qm_config)
                vfio_job_refresh(v);
}

static int vfio_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        vfio *v = calloc(1, sizeof *v);
        if (!v)
                return -ENOMEM;
        v->host = host;
        v->ctx = ctx;
        int r = load_config(v);
        if (r < 0)
                goto fail;
        if (vfio_store_open(v) < 0)
                host->log(ctx, ORG_LOG_WARNING, "store unavailable: apply works, rollback will not know what it wrote");
        snprintf(v->qm_error, sizeof v->qm_error, "qm config not read yet");
        if ((r = host->timer_add(ctx, 0, 0, on_first, v, NULL)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot add a timer: %s", strerror(-r));
                goto fail;
        }
        *ret_state = v;
        return 0;
fail:
        vfio_free(v);
        return r;
}

static int vfio_tick(void *state) {
        vfio *v = state;
        if (!v->job)
                vfio_refresh_state(v, false);
        return 0;
}

/* confirm / replace: {"confirm": true}, agentctl's `--confirm yes`, or the words
 * `confirm` / `--confirm` / `replace`. */
static bool flag(const org_msg *req, const char *name) {
        if (!req->data || req->len == 0)
                return false;
        json_error_t e;
        json_t *o = json_loadb(req->data, req->len, JSON_DECODE_ANY, &e);
        bool on = false;
        json_t *f = json_object_get(o, name);
        if (f)
                on = json_is_true(f) || (json_is_integer(f) && json_integer_value(f) == 1) ||
                     (json_is_string(f) &&
                      (strcmp(json_string_value(f), "yes") == 0 || strcmp(json_string_value(f), "true") == 0));
        json_t *words = json_is_array(o) ? o : json_object_get(o, "args");
        for (size_t i = 0; i < json_array_size(words); i++) {
                const char *w = json_string_value(json_array_get(words, i));
                if (w && (strcmp(w, name) == 0 || (strncmp(w, "--", 2) == 0 && strcmp(w + 2, name) == 0)))
                        on = true;
        }
        json_decref(o);
        return on;
}

static json_t *status_json(vfio *v) {
        json_t *plan = v->last_plan;
        json_t *state = v->has_inv ? vfio_state_json(v, &v->inv, plan) : json_null();
        json_t *files = json_array();
        json_t *pf = json_object_get(plan, "files");
        for (size_t i = 0; i < json_array_size(pf); i++)
                json_array_append_new(files,
                                      json_pack("{s:O, s:O}", "path", json_object_get(json_array_get(pf, i), "path"),
                                                "action", json_object_get(json_array_get(pf, i), "action")));
        json_t *vm = json_object_get(plan, "vm");
        return json_pack(
                "{s:o, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:o, s:o, s:b, s:b, s:I, s:I, s:o}", "state", state, "ok",
                json_object_get(plan, "ok") ? json_object_get(plan, "ok") : json_false(), "errors",
                json_object_get(plan, "errors") ? json_object_get(plan, "errors") : json_null(), "warnings",
                json_object_get(plan, "warnings") ? json_object_get(plan, "warnings") : json_null(), "iommu",
                json_object_get(plan, "iommu") ? json_object_get(plan, "iommu") : json_null(), "root_disk",
                json_object_get(plan, "root_disk") ? json_object_get(plan, "root_disk") : json_null(), "mgmt_nic",
                json_object_get(plan, "mgmt_nic") ? json_object_get(plan, "mgmt_nic") : json_null(), "binding",
                json_object_get(plan, "binding") ? json_object_get(plan, "binding") : json_null(), "files", files, "vm",
                json_is_object(vm)
                        ? json_pack("{s:O, s:O, s:O, s:O}", "vmid", json_object_get(vm, "vmid"), "known",
                                    json_object_get(vm, "known") ? json_object_get(vm, "known") : json_false(),
                                    "existing",
                                    json_object_get(vm, "existing") ? json_object_get(vm, "existing") : json_null(),
                                    "left_out",
                                    json_object_get(vm, "left_out") ? json_object_get(vm, "left_out") : json_null())
                        : json_null(),
                "busy", v->job != NULL, "dry_run", v->host->dry_run(v->ctx), "changes_recorded", (json_int_t)v->active,
                "enumerate_us", (json_int_t)v->inv.enumerate_us, "qm_error",
                v->qm_config ? json_null() : json_string(v->qm_error));
}

static int vfio_call(void *state, const char *verb, const org_msg *req) {
        vfio *v = state;
        int r;
        if (strcmp(verb, "status") == 0) {
                if (!v->job)
                        vfio_refresh_state(v, false);
                vfio_respond(v, req->reply, status_json(v));
                return 0;
        }
        bool confirm = flag(req, "confirm"), replace = flag(req, "replace");
        if (strcmp(verb, "plan") == 0 || strcmp(verb, "apply") == 0)
                r = vfio_job_plan(v, req->reply, strcmp(verb, "apply") == 0 && confirm, replace);
        else if (strcmp(verb, "rollback") == 0) {
                if (!confirm) {
                        vfio_respond(v, req->reply,
                                     json_pack("{s:b, s:I, s:s}", "confirm_needed", 1, "changes_recorded",
                                               (json_int_t)v->active, "note",
                                               "rollback restores the files apply replaced and undoes its hostpci "
                                               "entries: call it with confirm (agentctl vfio rollback --confirm yes)"));
                        return 0;
                }
                r = vfio_job_rollback(v, req->reply);
        } else
                return -EOPNOTSUPP;
        if (r == -EBUSY)
                vfio_respond(v, req->reply,
                             json_pack("{s:s}", "error", "busy: another plan/apply/rollback is running"));
        else if (r < 0)
                vfio_respond(v, req->reply, json_pack("{s:s}", "error", strerror(-r)));
        return 0;
}

static json_t *check(const char *what, const char *want, const char *have, bool ok) {
        return json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", want, "have", have, "ok", ok);
}

static int vfio_verify(void *state, char **ret_json) {
        vfio *v = state;
        if (!v->job)
                vfio_refresh_state(v, false);
        json_t *checks = json_array();
        json_t *st = v->has_inv ? vfio_state_json(v, &v->inv, v->last_plan) : NULL;
        bool all = true, applied = json_is_true(json_object_get(st, "applied"));
        json_decref(st);
        all = all && v->has_inv && v->inv.iommu_on;
        json_array_append_new(checks, check("iommu", "on",
                                            v->has_inv ? (v->inv.iommu_on ? "on" : "off (no groups)") : "unknown",
                                            v->has_inv && v->inv.iommu_on));
        json_t *files = json_object_get(v->last_plan, "files");
        for (size_t i = 0; i < json_array_size(files); i++) {
                json_t *f = json_array_get(files, i);
                const char *action = json_string_value(json_object_get(f, "action"));
                bool ok = strcmp(action, "keep") == 0 || strcmp(action, "none") == 0;
                if (!applied) {
                        json_array_append_new(checks, check(json_string_value(json_object_get(f, "path")), "as planned",
                                                            "not applied (plan only)", true));
                        continue;
                }
                all = all && ok;
                json_array_append_new(checks, check(json_string_value(json_object_get(f, "path")), "as planned",
                                                    ok ? "as planned" : action, ok));
        }
        json_t *cards = json_object_get(v->last_plan, "cards");
        for (size_t c = 0; c < json_array_size(cards); c++) {
                json_t *fns = json_object_get(json_array_get(cards, c), "functions");
                for (size_t f = 0; f < json_array_size(fns); f++) {
                        const char *pci = json_string_value(json_object_get(json_array_get(fns, f), "pci"));
                        const char *drv = json_string_value(json_object_get(json_array_get(fns, f), "driver"));
                        bool ok = drv && strcmp(drv, "vfio-pci") == 0;
                        char what[64];
                        snprintf(what, sizeof what, "driver %s", pci);
                        if (!applied)
                                json_array_append_new(checks, check(what, "vfio-pci", drv ? drv : "none", true));
                        else {
                                all = all && ok;
                                json_array_append_new(checks, check(what, "vfio-pci", drv ? drv : "none", ok));
                        }
                }
        }
        json_t *o = json_pack("{s:b, s:b, s:o}", "ok", all, "applied", applied, "checks", checks);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_json = text;
        return 0;
}

/* A reload keeps the VM's config as last read, so the new instance has the hostpci
 * mapping without calling qm again. */
static int vfio_save(void *state, void **ret_blob, size_t *ret_len) {
        vfio *v = state;
        json_t *o = json_pack("{s:o, s:s}", "qm_config", v->qm_config ? json_string(v->qm_config) : json_null(),
                              "qm_error", v->qm_error);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static int vfio_restore(void *state, const void *blob, size_t len) {
        vfio *v = state;
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        if (!json_is_object(o)) {
                json_decref(o);
                return -EINVAL;
        }
        const char *qc = json_string_value(json_object_get(o, "qm_config"));
        const char *qe = json_string_value(json_object_get(o, "qm_error"));
        if (qc && strlen(qc) <= 65536) {
                free(v->qm_config);
                v->qm_config = strdup(qc);
        }
        if (qe)
                snprintf(v->qm_error, sizeof v->qm_error, "%s", qe);
        json_decref(o);
        return 0;
}

static void vfio_fini(void *state) {
        vfio_free(state);
}

ORG_PLUGIN_DEFINE(.name = "vfio", .version = VFIO_VERSION,
                  .summary = "GPU passthrough preparation: libpci inventory, IOMMU group safety, vfio-pci binding "
                             "files, hostpci plan, rollback",
                  .config_map = config_map, .verbs = verbs, .init = vfio_init, .tick = vfio_tick, .call = vfio_call,
                  .fini = vfio_fini, .verify = vfio_verify, .save_state = vfio_save, .restore_state = vfio_restore);
