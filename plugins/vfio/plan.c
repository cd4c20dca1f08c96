/* plan.c — from the inventory to a plan, as JSON: which functions go to the GPU-Pool VM,
 * whether their IOMMU groups allow it, which binding files that takes, and which
 * `qm set VMID --hostpciN 0000:BB:DD,pcie=1` calls.
 *
 * Selection: the display functions (class 0x0300/0x0302/0x0380) of the configured vendor,
 * or the explicit `gpus:` list, never a boot display; a card is its slot, and every
 * function of the slot goes with it (the short address passes them all: the HDMI audio,
 * and anything else the card carries), so no function is ever assigned twice. A group is
 * safe when every other member is selected too or is a PCI bridge nothing the host needs
 * sits behind; otherwise the card is refused, naming the member, and a member the host
 * needs (root disk controller, management NIC, boot display) is flagged loudly. Binding by
 * `vfio-pci ids=` only when every function carrying those ids is selected; otherwise by
 * address (driver_override, from a udev rule). Nothing here writes or runs anything. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vfio.h"

#define MODULES_LOAD_FILE "/modules-load.d/vfio.conf"
#define MODPROBE_FILE     "/modprobe.d/vfio.conf"
#define UDEV_FILE         "/udev/rules.d/70-organism-vfio.rules"

static bool is_display(const vfio_dev *d) {
        return d->cls == 0x0300 || d->cls == 0x0302 || d->cls == 0x0380;
}

/* Polaris 10/11/12 and relatives (RX 470-590, 540-560, WX): the cards vendor-reset serves. */
static bool is_polaris(const vfio_dev *d) {
        static const uint16_t ids[] = {0x67c0, 0x67c2, 0x67c4, 0x67c7, 0x67df, 0x67e0, 0x67e3, 0x67e8, 0x67eb, 0x67ef,
                                       0x67ff, 0x6980, 0x6981, 0x6985, 0x6986, 0x6987, 0x6995, 0x6997, 0x699f, 0x6fdf};
        if (d->vendor != 0x1002)
                return false;
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
                if (ids[i] == d->device)
                        return true;
        return false;
}

static void slot_of(const vfio_dev *d, char out[VFIO_ADDR_LEN]) {
        snprintf(out, VFIO_ADDR_LEN, "%04x:%02x:%02x", d->domain & 0xffffu, d->bus, d->dev);
}

static bool same_slot(const vfio_dev *a, const vfio_dev *b) {
        return a->domain == b->domain && a->bus == b->bus && a->dev == b->dev;
}

static void id_of(const vfio_dev *d, char out[10]) {
        snprintf(out, 10, "%04x:%04x", d->vendor, d->device);
}

static json_t *dev_json(const vfio_dev *d) {
        char id[10], cls[8];
        id_of(d, id);
        snprintf(cls, sizeof cls, "%04x", d->cls);
        return json_pack("{s:s, s:s, s:s, s:o, s:o}", "pci", d->addr, "id", id, "class", cls, "driver",
                         d->driver[0] ? json_string(d->driver) : json_null(), "group",
                         d->group[0] ? json_string(d->group) : json_null());
}

static const char *role_text(unsigned roles) {
        if (roles & VFIO_ROLE_ROOT_DISK)
                return "the root disk's controller";
        if (roles & VFIO_ROLE_MGMT_NIC)
                return "the management NIC";
        if (roles & VFIO_ROLE_BOOT_DISPLAY)
                return "the boot display";
        if (roles & VFIO_ROLE_UPSTREAM)
                return "a bridge the root disk, the management NIC or the boot display sits behind";
        if (roles & VFIO_ROLE_STORAGE_GUESS)
                return "a storage controller (the root disk's controller is not resolved)";
        return NULL;
}

static void add_error(json_t *errors, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_error(json_t *errors, const char *fmt, ...) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        json_array_append_new(errors, json_string(buf));
}

static vfio_dev *find(vfio_inventory *inv, const char *addr) {
        for (size_t i = 0; i < inv->n_devs; i++)
                if (strcmp(inv->devs[i].addr, addr) == 0)
                        return &inv->devs[i];
        return NULL;
}

/* Marks the display functions chosen (auto or the explicit list); NULL-terminated
 * list of them in order, malloc'd. */
static vfio_dev **choose(vfio *v, vfio_inventory *inv, json_t *errors, json_t *warnings, size_t *ret_n) {
        vfio_dev **out = calloc(inv->n_devs + 1, sizeof *out);
        size_t n = 0;
        if (!out)
                return NULL;
        if (v->cfg.gpus) {
                for (size_t i = 0; i < v->cfg.n_gpus; i++) {
                        vfio_dev *d = find(inv, v->cfg.gpus[i]);
                        if (!d)
                                add_error(errors, "gpus: %s: no such PCI function on this host", v->cfg.gpus[i]);
                        else if (!is_display(d))
                                add_error(errors, "gpus: %s is not a display function (class %04x)", d->addr, d->cls);
                        else if (d->vendor != v->cfg.vendor)
                                add_error(errors, "gpus: %s is a display of vendor %04x, not %04x", d->addr, d->vendor,
                                          v->cfg.vendor);
                        else if (d->boot_vga == 1)
                                add_error(errors, "gpus: %s is the boot display: the host keeps it", d->addr);
                        else if (!d->selected) {
                                d->selected = true;
                                out[n++] = d;
                        }
                }
        } else {
                for (size_t i = 0; i < inv->n_devs; i++) {
                        vfio_dev *d = &inv->devs[i];
                        if (!is_display(d))
                                continue;
                        if (d->vendor != v->cfg.vendor)
                                continue; /* the host's own display (an Intel iGPU...) */
                        if (d->boot_vga == 1) {
                                add_error(warnings, "%s is the boot display: left to the host", d->addr);
                                continue;
                        }
                        d->selected = true;
                        out[n++] = d;
                }
        }
        *ret_n = n;
        return out;
}

/* The card's group check: every member of every function's group must be selected, or a
 * PCI bridge nothing the host needs sits behind. Sets refused/critical on the card. */
static bool check_groups(vfio_inventory *inv, const vfio_dev *const *fns, size_t n_fn, json_t *card, json_t *errors) {
        json_t *members = json_array(), *critical = json_array();
        char refused[512] = "";
        bool ok = true;
        const char *seen[8] = {0};
        size_t n_seen = 0;
        for (size_t f = 0; f < n_fn; f++) {
                const vfio_dev *fn = fns[f];
                if (!fn->group[0]) {
                        ok = false;
                        if (!refused[0])
                                snprintf(refused, sizeof refused, "%s has no IOMMU group", fn->addr);
                        continue;
                }
                bool dup = false;
                for (size_t s = 0; s < n_seen; s++)
                        dup = dup || strcmp(seen[s], fn->group) == 0;
                if (dup)
                        continue;
                if (n_seen < 8)
                        seen[n_seen++] = fn->group;
                for (size_t i = 0; i < inv->n_devs; i++) {
                        const vfio_dev *m = &inv->devs[i];
                        if (strcmp(m->group, fn->group) != 0)
                                continue;
                        json_t *mj = dev_json(m);
                        const char *role = role_text(m->roles);
                        const char *why = NULL;
                        if (m->selected)
                                why = "selected";
                        else if (m->cls == 0x0604 && !(m->roles & VFIO_ROLE_UPSTREAM))
                                why = "PCI bridge (stays with the host, not bound)";
                        json_object_set_new(mj, "ok", json_boolean(why != NULL));
                        json_object_set_new(mj, "why",
                                            why ? json_string(why) : json_string(role ? role : "not selected"));
                        json_array_append_new(members, mj);
                        if (why)
                                continue;
                        ok = false;
                        char id[10];
                        id_of(m, id);
                        if (!refused[0])
                                snprintf(refused, sizeof refused,
                                         "IOMMU group %s also holds %s [%s] (class %04x, driver %s)%s%s: vfio-pci "
                                         "would take the whole group from the host",
                                         fn->group, m->addr, id, m->cls, m->driver[0] ? m->driver : "none",
                                         role ? ", " : "", role ? role : "");
                        if (role) {
                                char line[256];
                                snprintf(line, sizeof line, "%s: %s", m->addr, role);
                                json_array_append_new(critical, json_string(line));
                                add_error(errors,
                                          "DANGER: IOMMU group %s holds %s (%s) together with the GPU %s; passing it "
                                          "through would take it from the host (no ACS override is ever proposed)",
                                          fn->group, m->addr, role, fns[0]->addr);
                        }
                }
        }
        json_object_set_new(card, "group_members", members);
        json_object_set_new(card, "critical", critical);
        json_object_set_new(card, "group_ok", json_boolean(ok));
        json_object_set_new(card, "refused", refused[0] ? json_string(refused) : json_null());
        if (refused[0])
                add_error(errors, "card %s refused: %s", fns[0]->addr, refused);
        return ok;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- the VM side: `qm config VMID` ---- */

typedef struct hostpci_entry {
        int index;
        char value[256];
        char slots[8][VFIO_ADDR_LEN]; /* normalised slots it references */
        size_t n_slots;
        char exact[VFIO_ADDR_LEN]; /* the short address when the entry is exactly "0000:BB:DD,pcie=1..." */
} hostpci_entry;

/* One "hostpciN: VALUE" line → entry; the host part is "[host=]ADDR[;ADDR...]". */
static bool parse_hostpci(const char *line, hostpci_entry *e) {
        int idx, used = 0;
        if (sscanf(line, "hostpci%d:%n", &idx, &used) != 1 || used == 0 || idx < 0 || idx > 99)
                return false;
        memset(e, 0, sizeof *e);
        e->index = idx;
        const char *val = line + used;
        while (*val == ' ')
                val++;
        snprintf(e->value, sizeof e->value, "%.*s", (int)strcspn(val, "\r\n"), val);
        char host[200];
        snprintf(host, sizeof host, "%.*s", (int)strcspn(e->value, ","), e->value);
        const char *h = strncmp(host, "host=", 5) == 0 ? host + 5 : host;
        if (strncmp(h, "mapping=", 8) == 0)
                return true; /* a resource mapping: no address we can compare */
        bool single = !strchr(h, ';');
        for (const char *p = h; *p && e->n_slots < 8;) {
                size_t len = strcspn(p, ";");
                char a[24], full[VFIO_ADDR_LEN];
                snprintf(a, sizeof a, "%.*s", (int)(len < 23 ? len : 23), p);
                /* short forms: "BB:DD", "DDDD:BB:DD" (every function) */
                unsigned dom = 0, bus, dev;
                int n = 0;
                bool is_short = false;
                if ((sscanf(a, "%4x:%2x:%2x%n", &dom, &bus, &dev, &n) == 3 && (size_t)n == strlen(a)) ||
                    (dom = 0, n = 0, sscanf(a, "%2x:%2x%n", &bus, &dev, &n) == 2 && (size_t)n == strlen(a))) {
                        snprintf(e->slots[e->n_slots], VFIO_ADDR_LEN, "%04x:%02x:%02x", dom, bus, dev);
                        is_short = true;
                } else if (vfio_parse_addr(a, full) >= 0) {
                        snprintf(e->slots[e->n_slots], VFIO_ADDR_LEN, "%.10s", full);
                } else {
                        p += len + (p[len] == ';');
                        continue;
                }
                if (single && is_short)
                        snprintf(e->exact, sizeof e->exact, "%s", e->slots[e->n_slots]);
                e->n_slots++;
                p += len + (p[len] == ';');
        }
        if (e->exact[0] && !strstr(e->value, "pcie=1"))
                e->exact[0] = '\0'; /* same card, other options: it is replaced, not kept as ours */
        return true;
}

static json_t *vm_plan(vfio *v, json_t *cards, const char *qm_config, const char *qm_error, bool replace,
                       json_t *errors, json_t *warnings) {
        json_t *vm = json_object();
        json_object_set_new(vm, "vmid", json_integer((json_int_t)v->cfg.vmid));
        hostpci_entry *entries = calloc(100, sizeof *entries);
        size_t n_entries = 0;
        bool used[100] = {false};
        json_t *existing = json_object(), *assign = json_array(), *left = json_array(), *del = json_array();
        char machine[64] = "";
        if (!entries)
                goto out;
        if (!qm_config) {
                json_object_set_new(vm, "known", json_false());
                add_error(errors, "VM %s: %s", v->cfg.vmid_text,
                          qm_error && qm_error[0] ? qm_error : "qm config not read");
        } else {
                json_object_set_new(vm, "known", json_true());
                for (const char *l = qm_config; *l;) {
                        size_t len = strcspn(l, "\n");
                        char line[320];
                        snprintf(line, sizeof line, "%.*s", (int)(len < 319 ? len : 319), l);
                        if (strncmp(line, "machine:", 8) == 0)
                                snprintf(machine, sizeof machine, "%.63s", line + 8 + (line[8] == ' '));
                        if (n_entries < 100 && parse_hostpci(line, &entries[n_entries])) {
                                char key[24];
                                snprintf(key, sizeof key, "hostpci%d", entries[n_entries].index);
                                json_object_set_new(existing, key, json_string(entries[n_entries].value));
                                used[entries[n_entries].index] = true;
                                n_entries++;
                        }
                        l += len + (l[len] == '\n');
                }
                if (!strstr(machine, "q35"))
                        add_error(warnings, "VM %s: machine is %s; pcie=1 needs q35 (qm set %s --machine q35)",
                                  v->cfg.vmid_text, machine[0] ? machine : "i440fx (the default)", v->cfg.vmid_text);
        }
        json_object_set_new(vm, "machine", machine[0] ? json_string(machine) : json_null());
        json_object_set_new(vm, "existing", existing);
        json_object_set_new(vm, "replace", json_boolean(replace));
        if (!qm_config)
                goto out;

        size_t n_cards = json_array_size(cards);
        bool *done = calloc(n_cards + 1, sizeof *done);
        if (!done)
                goto out;
        if (replace) {
                memset(used, 0, sizeof used);
        } else {
                /* an entry exactly ours is kept as the card's; one that names part of a card conflicts */
                for (size_t e = 0; e < n_entries; e++) {
                        for (size_t c = 0; c < n_cards; c++) {
                                const char *slot = json_string_value(json_object_get(json_array_get(cards, c), "slot"));
                                for (size_t s = 0; s < entries[e].n_slots; s++) {
                                        if (strcmp(entries[e].slots[s], slot) != 0)
                                                continue;
                                        if (strcmp(entries[e].exact, slot) == 0 && !done[c]) {
                                                char key[24];
                                                snprintf(key, sizeof key, "hostpci%d", entries[e].index);
                                                done[c] = true;
                                                json_object_set_new(json_array_get(cards, c), "hostpci",
                                                                    json_string(key));
                                                json_array_append_new(assign,
                                                                      json_pack("{s:s, s:s, s:s, s:b}", "slot", slot,
                                                                                "hostpci", key, "value",
                                                                                entries[e].value, "already", 1));
                                        } else
                                                add_error(errors,
                                                          "VM %s: hostpci%d (%s) already passes %s, part of card %s: "
                                                          "a function must not be assigned twice (apply with "
                                                          "replace to rewrite the VM's hostpci entries)",
                                                          v->cfg.vmid_text, entries[e].index, entries[e].value, slot,
                                                          slot);
                                }
                        }
                }
        }
        int next = 0;
        for (size_t c = 0; c < n_cards; c++) {
                json_t *card = json_array_get(cards, c);
                const char *slot = json_string_value(json_object_get(card, "slot"));
                if (done[c])
                        continue;
                while (next < VFIO_HOSTPCI_MAX && used[next])
                        next++;
                if (next >= VFIO_HOSTPCI_MAX) {
                        json_array_append_new(left, json_string(slot));
                        continue;
                }
                used[next] = true;
                char key[24], opt[24], value[64];
                snprintf(key, sizeof key, "hostpci%d", next);
                snprintf(opt, sizeof opt, "--hostpci%d", next);
                snprintf(value, sizeof value, "%s,pcie=1", slot);
                json_object_set_new(card, "hostpci", json_string(key));
                json_t *a = json_pack("{s:s, s:s, s:s, s:b, s:[s,s,s,s,s]}", "slot", slot, "hostpci", key, "value",
                                      value, "already", 0, "argv", "qm", "set", v->cfg.vmid_text, opt, value);
                const char *before = json_string_value(json_object_get(existing, key));
                if (before && strcmp(before, value) == 0) {
                        /* replace found it there already: nothing to run */
                        json_object_del(a, "argv");
                        json_object_set_new(a, "already", json_true());
                } else if (before)
                        json_object_set_new(a, "before", json_string(before));
                json_array_append_new(assign, a);
        }
        if (replace) /* entries beyond the cards' go */
                for (size_t e = 0; e < n_entries; e++)
                        if (!used[entries[e].index]) {
                                char key[24];
                                snprintf(key, sizeof key, "hostpci%d", entries[e].index);
                                json_array_append_new(del, json_pack("{s:s, s:s, s:[s,s,s,s,s]}", "hostpci", key,
                                                                     "before", entries[e].value, "argv", "qm", "set",
                                                                     v->cfg.vmid_text, "--delete", key));
                        }
        free(done);
        if (json_array_size(left)) {
                char names[512] = "";
                for (size_t i = 0; i < json_array_size(left); i++) {
                        size_t u = strlen(names);
                        snprintf(names + u, sizeof names - u, "%s%s", i ? ", " : "",
                                 json_string_value(json_array_get(left, i)));
                }
                add_error(errors,
                          "VM %s: a VM has at most %d hostpci slots (hostpci0-hostpci%d)%s; %zu card(s) left out: %s",
                          v->cfg.vmid_text, VFIO_HOSTPCI_MAX, VFIO_HOSTPCI_MAX - 1,
                          replace ? "" : ", counting the entries it already has", json_array_size(left), names);
        }
out:
        free(entries);
        json_object_set_new(vm, "assign", assign);
        json_object_set_new(vm, "delete", del);
        json_object_set_new(vm, "left_out", left);
        return vm;
}

/* ---- the binding files ---- */

static const char *const *softdeps(uint16_t vendor) {
        static const char *const amd[] = {"amdgpu", "radeon", NULL};
        static const char *const nvidia[] = {"nouveau", "nvidia", "nvidiafb", NULL};
        static const char *const none[] = {NULL};
        return vendor == 0x1002 ? amd : vendor == 0x10de ? nvidia : none;
}

static void appendf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t size, const char *fmt, ...) {
        size_t used = strlen(buf);
        if (used + 1 >= size)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf + used, size - used, fmt, ap);
        va_end(ap);
}

/* Other modprobe.d files that also steer vfio-pci or the GPU drivers (the seed's
 * vfio-pci-ids.conf, blacklist-amd-gpu.conf): left alone, but said, since modprobe
 * merges them with ours. */
static void other_modprobe(vfio *v, json_t *warnings) {
        char dir[320], *full = NULL;
        snprintf(dir, sizeof dir, "%s/modprobe.d", v->cfg.etc_dir);
        if (v->host->sysroot_path(v->ctx, dir, &full) < 0)
                return;
        DIR *d = opendir(full);
        free(full);
        if (!d)
                return;
        struct dirent *e;
        while ((e = readdir(d))) {
                size_t len = strlen(e->d_name);
                if (len < 6 || len > 200 || strcmp(e->d_name + len - 5, ".conf") != 0 ||
                    strcmp(e->d_name, "vfio.conf") == 0)
                        continue;
                char path[600], *text = NULL;
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                if (vfio_read(v, path, &text) < 0)
                        continue;
                for (char *l = text, *next; l && *l; l = next) {
                        next = strchr(l, '\n');
                        if (next)
                                *next++ = '\0';
                        while (*l == ' ' || *l == '\t')
                                l++;
                        if (strncmp(l, "options vfio-pci", 16) == 0 || strncmp(l, "options vfio_pci", 16) == 0 ||
                            strncmp(l, "blacklist amdgpu", 16) == 0 || strncmp(l, "blacklist radeon", 16) == 0 ||
                            strncmp(l, "softdep amdgpu", 14) == 0)
                                add_error(warnings, "%s also has \"%.120s\" (left alone; modprobe merges it with %s%s)",
                                          path, l, v->cfg.etc_dir, MODPROBE_FILE);
                }
                free(text);
        }
        closedir(d);
}

static json_t *file_entry(vfio *v, const char *rel, const char *want) {
        char path[320];
        snprintf(path, sizeof path, "%s%s", v->cfg.etc_dir, rel);
        char *have = NULL;
        int r = vfio_read(v, path, &have);
        const char *action;
        if (r < 0 && r != -ENOENT)
                action = "unreadable";
        else if (r < 0)
                action = want ? "create" : "none";
        else if (!want)
                action = "remove";
        else
                action = strcmp(have, want) == 0 ? "keep" : "replace";
        json_t *o = json_pack("{s:s, s:o, s:s, s:b}", "path", path, "want", want ? json_string(want) : json_null(),
                              "action", action, "exists", r >= 0);
        if (r >= 0 && strcmp(action, "keep") != 0)
                json_object_set_new(o, "have", json_string(have));
        free(have);
        return o;
}

int vfio_plan_files(vfio *v, const vfio_inventory *inv, const json_t *cards, bool use_ids, const char *ids,
                    json_t **ret_files) {
        char mods[512] = "", modprobe[1024] = "", *udev = NULL;
        bool virqfd =
                inv->kernel_major >= 0 && (inv->kernel_major < 6 || (inv->kernel_major == 6 && inv->kernel_minor < 2));
        snprintf(mods, sizeof mods,
                 "# Written by organism's vfio plugin (agentctl vfio rollback removes it).\n"
                 "# Kernel %s: %s\nvfio\nvfio_iommu_type1\nvfio_pci\n%s",
                 inv->kernel[0] ? inv->kernel : "unknown",
                 virqfd ? "before 6.2, vfio_virqfd is a module of its own" : "vfio_virqfd is part of vfio since 6.2",
                 virqfd ? "vfio_virqfd\n" : "");
        appendf(modprobe, sizeof modprobe,
                "# Written by organism's vfio plugin (agentctl vfio rollback restores what was here).\n");
        if (use_ids)
                appendf(modprobe, sizeof modprobe,
                        "# Every function with these ids goes to the GPU-Pool VM.\noptions vfio-pci ids=%s "
                        "disable_vga=1\n",
                        ids);
        else
                appendf(modprobe, sizeof modprobe, "# Bound by address (udev rule %s%s): vfio-pci loads first.\n",
                        v->cfg.etc_dir, UDEV_FILE);
        for (const char *const *s = softdeps(v->cfg.vendor); *s; s++)
                appendf(modprobe, sizeof modprobe, "softdep %s pre: vfio-pci\n", *s);
        appendf(modprobe, sizeof modprobe, "softdep snd_hda_intel pre: vfio-pci\n");
        if (!use_ids) {
                size_t n = 0;
                for (size_t c = 0; c < json_array_size(cards); c++)
                        n += json_array_size(json_object_get(json_array_get(cards, c), "functions"));
                size_t size = 256 + n * 128;
                udev = calloc(1, size);
                if (!udev)
                        return -ENOMEM;
                appendf(udev, size,
                        "# Written by organism's vfio plugin: these functions go to vfio-pci, by address.\n");
                for (size_t c = 0; c < json_array_size(cards); c++) {
                        json_t *fns = json_object_get(json_array_get(cards, c), "functions");
                        for (size_t f = 0; f < json_array_size(fns); f++)
                                appendf(udev, size,
                                        "ACTION==\"add\", SUBSYSTEM==\"pci\", KERNEL==\"%s\", "
                                        "ATTR{driver_override}=\"vfio-pci\"\n",
                                        json_string_value(json_object_get(json_array_get(fns, f), "pci")));
                }
        }
        json_t *files = json_pack("[o, o, o]", file_entry(v, MODULES_LOAD_FILE, mods),
                                  file_entry(v, MODPROBE_FILE, modprobe), file_entry(v, UDEV_FILE, udev));
        free(udev);
        if (!files)
                return -ENOMEM;
        *ret_files = files;
        return 0;
}

int vfio_plan_build(vfio *v, vfio_inventory *inv, const char *qm_config, const char *qm_error, bool replace,
                    json_t **ret) {
        json_t *errors = json_array(), *warnings = json_array(), *cards = json_array();
        for (size_t i = 0; i < inv->n_devs; i++)
                inv->devs[i].selected = false;
        if (!inv->iommu_on)
                add_error(
                        errors,
                        "the IOMMU is off (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the firmware and "
                        "add intel_iommu=on iommu=pt (Intel) to the kernel command line, then reboot; nothing can be "
                        "passed through safely without it");
        if (inv->pci_warning[0])
                add_error(warnings, "libpci: %s", inv->pci_warning);
        if (inv->acs_override)
                add_error(warnings, "pcie_acs_override is on the kernel command line: the IOMMU groups shown may not "
                                    "isolate devices (the plugin never sets it)");
        size_t n_chosen = 0;
        vfio_dev **chosen = choose(v, inv, errors, warnings, &n_chosen);
        if (!chosen)
                return -ENOMEM;
        /* every function of a chosen card's slot goes with it */
        for (size_t c = 0; c < n_chosen; c++)
                for (size_t i = 0; i < inv->n_devs; i++)
                        if (same_slot(&inv->devs[i], chosen[c]))
                                inv->devs[i].selected = true;
        if (n_chosen == 0 && json_array_size(errors) == 0)
                add_error(errors, "no display function of vendor %04x to pass through", v->cfg.vendor);
        char **ids = calloc(inv->n_devs + 1, sizeof *ids);
        size_t n_ids = 0, n_reset = 0;
        bool all_ok = true;
        for (size_t c = 0; c < n_chosen && ids; c++) {
                const vfio_dev *fns[8];
                size_t n_fn = 0;
                char slot[VFIO_ADDR_LEN];
                slot_of(chosen[c], slot);
                bool dup = false;
                for (size_t k = 0; k < c; k++)
                        dup = dup || same_slot(chosen[k], chosen[c]);
                if (dup)
                        continue; /* two display functions of one card: one card */
                json_t *fa = json_array(), *card_ids = json_array();
                char driver[128] = "";
                for (size_t i = 0; i < inv->n_devs && n_fn < 8; i++) {
                        vfio_dev *d = &inv->devs[i];
                        if (!same_slot(d, chosen[c]))
                                continue;
                        fns[n_fn++] = d;
                        json_array_append_new(fa, dev_json(d));
                        char id[10];
                        id_of(d, id);
                        json_array_append_new(card_ids, json_string(id));
                        bool known = false;
                        for (size_t k = 0; k < n_ids; k++)
                                known = known || strcmp(ids[k], id) == 0;
                        if (!known)
                                ids[n_ids++] = strdup(id);
                        if (!strstr(driver, d->driver[0] ? d->driver : "none"))
                                appendf(driver, sizeof driver, "%s%s", driver[0] ? "," : "",
                                        d->driver[0] ? d->driver : "none");
                }
                json_t *card =
                        json_pack("{s:I, s:s, s:s, s:o, s:o, s:s, s:s, s:o}", "gpu", (json_int_t)json_array_size(cards),
                                  "pci", chosen[c]->addr, "slot", slot, "functions", fa, "ids", card_ids, "driver",
                                  driver, "group", chosen[c]->group, "hostpci", json_null());
                json_object_set_new(card, "reset_method",
                                    chosen[c]->reset_method[0] ? json_string(chosen[c]->reset_method) : json_null());
                if (is_polaris(chosen[c]) && !(inv->vendor_reset && strstr(chosen[c]->reset_method, "device_specific")))
                        n_reset++;
                all_ok = check_groups(inv, fns, n_fn, card, errors) && all_ok;
                json_array_append_new(cards, card);
        }
        free(chosen);
        if (!ids)
                return -ENOMEM;
        if (n_reset)
                add_error(
                        warnings,
                        "%zu Polaris card(s) without vendor-reset: the AMD reset bug can leave a card unusable after a "
                        "VM restart until the host reboots; load vendor-reset early and set reset_method to "
                        "device_specific (udev), or restart the GPU-Pool VM rarely",
                        n_reset);
        qsort(ids, n_ids, sizeof *ids, cmp_str);
        char idlist[512] = "";
        for (size_t k = 0; k < n_ids; k++)
                appendf(idlist, sizeof idlist, "%s%s", k ? "," : "", ids[k]);
        /* ids= binds every device with an id: only when each of them is ours */
        json_t *others = json_array();
        for (size_t i = 0; i < inv->n_devs; i++) {
                char id[10];
                id_of(&inv->devs[i], id);
                for (size_t k = 0; k < n_ids; k++)
                        if (!inv->devs[i].selected && strcmp(ids[k], id) == 0)
                                json_array_append_new(others,
                                                      json_pack("{s:s, s:s}", "pci", inv->devs[i].addr, "id", id));
        }
        for (size_t k = 0; k < n_ids; k++)
                free(ids[k]);
        free(ids);
        bool use_ids;
        char why[700];
        if (v->cfg.binding == VFIO_BIND_OVERRIDE) {
                use_ids = false;
                snprintf(why, sizeof why, "binding: driver_override (configured)");
        } else if (json_array_size(others) == 0) {
                use_ids = true;
                snprintf(why, sizeof why, "every function with ids %s is passed through", idlist);
        } else {
                use_ids = false;
                snprintf(why, sizeof why,
                         "%s also carries an id of the list (%s) and stays with the host: bound by address",
                         json_string_value(json_object_get(json_array_get(others, 0), "pci")),
                         json_string_value(json_object_get(json_array_get(others, 0), "id")));
                if (v->cfg.binding == VFIO_BIND_IDS)
                        add_error(errors, "binding: ids would also take %s; use binding: auto or driver_override",
                                  json_string_value(json_object_get(json_array_get(others, 0), "pci")));
        }
        json_t *files = NULL;
        int r = vfio_plan_files(v, inv, cards, use_ids, idlist, &files);
        if (r < 0)
                return r;
        bool files_change = false;
        for (size_t i = 0; i < json_array_size(files); i++) {
                const char *a = json_string_value(json_object_get(json_array_get(files, i), "action"));
                files_change = files_change || strcmp(a, "create") == 0 || strcmp(a, "replace") == 0 ||
                               strcmp(a, "remove") == 0;
                if (strcmp(a, "unreadable") == 0)
                        add_error(errors, "%s cannot be read",
                                  json_string_value(json_object_get(json_array_get(files, i), "path")));
        }
        other_modprobe(v, warnings);
        json_t *vm = v->cfg.vmid > 0 ? vm_plan(v, cards, qm_config, qm_error, replace, errors, warnings) : json_null();
        json_t *commands = json_array();
        if (files_change && v->cfg.initramfs)
                json_array_append_new(commands, json_pack("[s,s,s,s]", "update-initramfs", "-u", "-k", "all"));
        if (json_is_object(vm)) {
                json_t *del = json_object_get(vm, "delete"), *assign = json_object_get(vm, "assign");
                for (size_t i = 0; i < json_array_size(del); i++)
                        json_array_append(commands, json_object_get(json_array_get(del, i), "argv"));
                for (size_t i = 0; i < json_array_size(assign); i++)
                        if (json_object_get(json_array_get(assign, i), "argv"))
                                json_array_append(commands, json_object_get(json_array_get(assign, i), "argv"));
        }
        char cmdline[600];
        snprintf(cmdline, sizeof cmdline, "%s", inv->cmdline);
        json_t *plan = json_pack(
                "{s:b, s:o, s:o, s:{s:b, s:I, s:s, s:b}, s:{s:s, s:b}, s:{s:o, s:o, s:o}, s:{s:o, s:o, s:o}, s:o, "
                "s:o, s:{s:s, s:s, s:o}, s:o, s:o, s:o, s:b}",
                "ok", json_array_size(errors) == 0, "errors", errors, "warnings", warnings, "iommu", "on",
                inv->iommu_on, "groups", (json_int_t)inv->n_groups, "cmdline", cmdline, "acs_override",
                inv->acs_override, "kernel", "release", inv->kernel, "vfio_virqfd",
                inv->kernel_major >= 0 && (inv->kernel_major < 6 || (inv->kernel_major == 6 && inv->kernel_minor < 2)),
                "root_disk", "source", inv->root_source[0] ? json_string(inv->root_source) : json_null(), "controller",
                inv->root_ctrl[0] ? json_string(inv->root_ctrl) : json_null(), "note",
                inv->root_note[0] ? json_string(inv->root_note) : json_null(), "mgmt_nic", "iface",
                inv->nic_iface[0] ? json_string(inv->nic_iface) : json_null(), "controller",
                inv->nic_ctrl[0] ? json_string(inv->nic_ctrl) : json_null(), "note",
                inv->nic_note[0] ? json_string(inv->nic_note) : json_null(), "cards", cards, "groups_ok",
                json_boolean(all_ok), "binding", "mode", use_ids ? "ids" : "driver_override", "why", why, "ids_also_on",
                others, "files", files, "vm", vm, "commands", commands, "files_change", files_change);
        if (!plan)
                return -ENOMEM;
        json_object_set_new(plan, "ids", json_string(idlist));
        *ret = plan;
        return 0;
}

bool vfio_all_bound(const vfio_inventory *inv) {
        bool any = false;
        for (size_t i = 0; i < inv->n_devs; i++) {
                if (!inv->devs[i].selected)
                        continue;
                any = true;
                if (strcmp(inv->devs[i].driver, "vfio-pci") != 0)
                        return false;
        }
        return any;
}

json_t *vfio_state_json(vfio *v, const vfio_inventory *inv, const json_t *plan) {
        json_t *gpus = json_array();
        json_t *cards = plan ? json_object_get(plan, "cards") : NULL;
        for (size_t c = 0; c < json_array_size(cards); c++) {
                json_t *card = json_array_get(cards, c);
                json_array_append_new(
                        gpus,
                        json_pack("{s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O}", "gpu", json_object_get(card, "gpu"),
                                  "pci", json_object_get(card, "pci"), "slot", json_object_get(card, "slot"), "ids",
                                  json_object_get(card, "ids"), "driver", json_object_get(card, "driver"), "group",
                                  json_object_get(card, "group"), "group_ok", json_object_get(card, "group_ok"),
                                  "hostpci", json_object_get(card, "hostpci")));
        }
        /* applied: recorded by apply, or the planned files are all in place already */
        bool in_place = false;
        json_t *files = plan ? json_object_get(plan, "files") : NULL;
        for (size_t i = 0; i < json_array_size(files); i++) {
                const char *a = json_string_value(json_object_get(json_array_get(files, i), "action"));
                if (strcmp(a, "keep") == 0)
                        in_place = true;
                else if (strcmp(a, "none") != 0) {
                        in_place = false;
                        break;
                }
        }
        bool applied = vfio_store_active(v) || (in_place && json_array_size(cards) > 0);
        bool bound = vfio_all_bound(inv);
        return json_pack("{s:o, s:b, s:b, s:b, s:{s:b, s:I}, s:s, s:o}", "gpus", gpus, "reboot_needed",
                         applied && !bound, "applied", applied, "bound", bound, "iommu", "on", inv->iommu_on, "groups",
                         (json_int_t)inv->n_groups, "kernel", inv->kernel, "plan_ok",
                         plan ? json_incref(json_object_get(plan, "ok")) : json_null());
}
