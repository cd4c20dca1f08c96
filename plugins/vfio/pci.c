/* pci.c — the vfio plugin's view of the machine: every PCI function from libpci (the
 * linux-sysfs method on the sysroot's /sys/bus/pci, through libpci's `sysfs.path`
 * parameter, with PCI_FILL_IDENT|CLASS|IOMMU_GROUP|DRIVER), each display function's
 * boot_vga, whether the IOMMU is on (groups present; the command line's iommu tokens),
 * the kernel release, and what the host itself needs: the controller of the root disk
 * (from /proc/mounts and the /sys/class/block links), the NIC of the default route
 * (/proc/net/route, /sys/class/net, bridge members) and the bridges they sit behind.
 *
 * libpci calls a->error on any failure and its default handler exits the process; ours
 * records the message and longjmps back to the enumeration, which then fails cleanly.
 * The folder libpci scans is checked first, since its own error path there leaks. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pci/pci.h>

#include "vfio.h"

#define VFIO_MAX_DEVS 4096

/* libpci's callbacks have no user pointer: the enumeration runs on the loop thread,
 * one at a time, and these hold its context. */
static _Thread_local jmp_buf *pci_jmp;
static _Thread_local char pci_error[256];
static _Thread_local char pci_warning[256];

__attribute__((format(printf, 1, 2), noreturn)) static void on_pci_error(char *msg, ...) {
        va_list ap;
        va_start(ap, msg);
        vsnprintf(pci_error, sizeof pci_error, msg, ap);
        va_end(ap);
        if (pci_jmp)
                longjmp(*pci_jmp, 1);
        abort(); /* never: every libpci call below runs under setjmp */
}

__attribute__((format(printf, 1, 2))) static void on_pci_warning(char *msg, ...) {
        if (pci_warning[0])
                return; /* the first one says enough */
        va_list ap;
        va_start(ap, msg);
        vsnprintf(pci_warning, sizeof pci_warning, msg, ap);
        va_end(ap);
}

__attribute__((format(printf, 1, 2))) static void on_pci_debug(char *msg, ...) {}

static int dev_cmp(const void *a, const void *b) {
        return strcmp(((const vfio_dev *)a)->addr, ((const vfio_dev *)b)->addr);
}

/* What libpci's sysfs_scan would fail on, checked first: its error path there leaks the
 * open folder and a device (it expects the process to exit). */
static int precheck(const char *sysfs_path, char *err, size_t err_size) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/devices", sysfs_path);
        DIR *d = opendir(dir);
        if (!d) {
                int r = -errno;
                snprintf(err, err_size, "cannot open %s: %s", dir, strerror(-r));
                return r;
        }
        struct dirent *e;
        int r = 0;
        while (r == 0 && (e = readdir(d))) {
                unsigned dom, bus, dev;
                int fn;
                if (e->d_name[0] == '.')
                        continue;
                if (sscanf(e->d_name, "%x:%x:%x.%d", &dom, &bus, &dev, &fn) < 4 || dom > 0x7fffffff) {
                        snprintf(err, err_size, "%s/%.64s is not a PCI function", dir, e->d_name);
                        r = -EBADMSG;
                }
        }
        closedir(d);
        return r;
}

int vfio_pci_scan(const char *sysfs_path, vfio_dev **ret_devs, size_t *ret_n, char *err, size_t err_size) {
        int pr = precheck(sysfs_path, err, err_size);
        if (pr < 0)
                return pr;
        struct pci_access *volatile a = NULL;
        vfio_dev *volatile devs = NULL;
        volatile size_t n = 0;
        jmp_buf jb;
        pci_error[0] = pci_warning[0] = '\0';
        if (setjmp(jb)) {
                pci_jmp = NULL;
                snprintf(err, err_size, "libpci: %s", pci_error);
                if (a)
                        pci_cleanup(a);
                free(devs);
                return -EIO;
        }
        pci_jmp = &jb;
        a = pci_alloc();
        a->error = on_pci_error;
        a->warning = on_pci_warning;
        a->debug = on_pci_debug;
        a->method = PCI_ACCESS_SYS_BUS_PCI;
        if (pci_set_param(a, (char *)"sysfs.path", (char *)sysfs_path) < 0)
                on_pci_error("this libpci has no sysfs.path parameter");
        pci_init(a);
        pci_scan_bus(a);
        size_t count = 0;
        for (struct pci_dev *d = a->devices; d; d = d->next)
                count++;
        if (count > VFIO_MAX_DEVS)
                on_pci_error("%zu PCI functions: more than %d", count, VFIO_MAX_DEVS);
        devs = calloc(count ? count : 1, sizeof *devs);
        if (!devs)
                on_pci_error("out of memory");
        for (struct pci_dev *d = a->devices; d; d = d->next) {
                pci_fill_info(d, PCI_FILL_IDENT | PCI_FILL_CLASS | PCI_FILL_IOMMU_GROUP | PCI_FILL_DRIVER);
                vfio_dev *x = &devs[n];
                x->domain = (unsigned)d->domain;
                x->bus = d->bus;
                x->dev = d->dev;
                x->func = d->func;
                snprintf(x->addr, sizeof x->addr, "%04x:%02x:%02x.%u", x->domain & 0xffffu, x->bus, x->dev,
                         x->func & 7u);
                x->vendor = d->vendor_id;
                x->device = d->device_id;
                x->cls = d->device_class;
                x->boot_vga = -1;
                const char *g = pci_get_string_property(d, PCI_FILL_IOMMU_GROUP);
                const char *drv = pci_get_string_property(d, PCI_FILL_DRIVER);
                snprintf(x->group, sizeof x->group, "%s", g ? g : "");
                snprintf(x->driver, sizeof x->driver, "%s", drv ? drv : "");
                n++;
        }
        pci_cleanup(a);
        pci_jmp = NULL;
        qsort(devs, n, sizeof *devs, dev_cmp);
        *ret_devs = devs;
        *ret_n = n;
        return 0;
}

static uint64_t fnv(uint64_t h, const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char)s[i];
                h *= 0x100000001b3ULL;
        }
        return h;
}

int vfio_pci_fingerprint(vfio *v, uint64_t *ret) {
        char *full = NULL;
        int r = v->host->sysroot_path(v->ctx, "/sys/bus/pci/devices", &full);
        if (r < 0)
                return r;
        DIR *d = opendir(full);
        if (!d) {
                r = -errno;
                free(full);
                return r;
        }
        uint64_t h = 0xcbf29ce484222325ULL;
        struct dirent *e;
        while ((e = readdir(d))) {
                if (e->d_name[0] == '.' || strlen(e->d_name) > 64)
                        continue;
                char path[PATH_MAX], link[PATH_MAX];
                snprintf(path, sizeof path, "%s/%s/driver", full, e->d_name);
                ssize_t n = readlink(path, link, sizeof link);
                h = fnv(h, e->d_name, strlen(e->d_name) + 1);
                h = n > 0 ? fnv(h, link, (size_t)n) : fnv(h, "-", 1);
        }
        closedir(d);
        free(full);
        *ret = h;
        return 0;
}

int vfio_parse_addr(const char *s, char ret[VFIO_ADDR_LEN]) {
        unsigned dom = 0, bus, dev, fn;
        int used = 0;
        if (!s || strlen(s) > 12)
                return -EINVAL;
        if (sscanf(s, "%4x:%2x:%2x.%1u%n", &dom, &bus, &dev, &fn, &used) == 4 && (size_t)used == strlen(s))
                ;
        else if (dom = 0, used = 0,
                 sscanf(s, "%2x:%2x.%1u%n", &bus, &dev, &fn, &used) == 3 && (size_t)used == strlen(s))
                ;
        else
                return -EINVAL;
        for (const char *c = s; *c; c++)
                if (!isxdigit((unsigned char)*c) && *c != ':' && *c != '.')
                        return -EINVAL;
        if (dev > 0x1f || fn > 7)
                return -EINVAL;
        snprintf(ret, VFIO_ADDR_LEN, "%04x:%02x:%02x.%u", dom, bus, dev, fn);
        return 0;
}

/* True when the path component is a PCI address "dddd:bb:dd.f". */
static bool is_addr(const char *c, size_t len) {
        if (len != 12 || c[4] != ':' || c[7] != ':' || c[10] != '.')
                return false;
        for (size_t i = 0; i < len; i++)
                if (i != 4 && i != 7 && i != 10 && !isxdigit((unsigned char)c[i]))
                        return false;
        return c[11] >= '0' && c[11] <= '7';
}

static vfio_dev *find_dev(vfio_inventory *inv, const char *addr) {
        for (size_t i = 0; i < inv->n_devs; i++)
                if (strcmp(inv->devs[i].addr, addr) == 0)
                        return &inv->devs[i];
        return NULL;
}

/* The PCI functions on a sysfs path (the last is the device, the others the bridges
 * above it), up to max; returns how many. */
static size_t path_addrs(const char *path, char out[][VFIO_ADDR_LEN], size_t max) {
        size_t n = 0;
        const char *p = path;
        while (*p && n < max) {
                while (*p == '/')
                        p++;
                const char *e = strchr(p, '/');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                if (is_addr(p, len)) {
                        memcpy(out[n], p, len);
                        out[n][len] = '\0';
                        n++;
                }
                p += len;
        }
        return n;
}

/* Marks the device at the end of a sysfs path with role, and the bridges above it. */
static bool mark_path(vfio_inventory *inv, const char *real, unsigned role, char ctrl[VFIO_ADDR_LEN]) {
        char addrs[16][VFIO_ADDR_LEN];
        size_t n = path_addrs(real, addrs, 16);
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++) {
                vfio_dev *d = find_dev(inv, addrs[i]);
                if (d)
                        d->roles |= i + 1 == n ? role : VFIO_ROLE_UPSTREAM;
        }
        if (ctrl)
                snprintf(ctrl, VFIO_ADDR_LEN, "%s", addrs[n - 1]);
        return true;
}

static char *real_of(vfio *v, const char *path) {
        char *full = NULL;
        if (v->host->sysroot_path(v->ctx, path, &full) < 0)
                return NULL;
        char *r = realpath(full, NULL);
        free(full);
        return r;
}

/* The block device name → its PCI controller, through dm/md slaves (LVM, RAID). */
static bool resolve_block(vfio *v, vfio_inventory *inv, const char *name, int depth) {
        char path[PATH_MAX];
        if (depth > 4 || strchr(name, '/'))
                return false;
        snprintf(path, sizeof path, "/sys/class/block/%s", name);
        char *real = real_of(v, path);
        if (!real)
                return false;
        bool ok = mark_path(inv, real, VFIO_ROLE_ROOT_DISK, inv->root_ctrl);
        free(real);
        if (ok)
                return true;
        snprintf(path, sizeof path, "/sys/class/block/%s/slaves", name);
        char *full = NULL;
        if (v->host->sysroot_path(v->ctx, path, &full) < 0)
                return false;
        DIR *d = opendir(full);
        free(full);
        if (!d)
                return false;
        struct dirent *e;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.' && resolve_block(v, inv, e->d_name, depth + 1))
                        ok = true;
        closedir(d);
        return ok;
}

/* /dev/mapper/NAME → the dm-N whose dm/name is NAME. */
static bool mapper_name(vfio *v, const char *name, char *ret, size_t size) {
        char *full = NULL;
        if (v->host->sysroot_path(v->ctx, "/sys/class/block", &full) < 0)
                return false;
        DIR *d = opendir(full);
        free(full);
        if (!d)
                return false;
        struct dirent *e;
        bool found = false;
        while (!found && (e = readdir(d))) {
                if (strncmp(e->d_name, "dm-", 3) != 0 || strlen(e->d_name) > 32)
                        continue;
                char path[96], *text = NULL;
                snprintf(path, sizeof path, "/sys/class/block/%.32s/dm/name", e->d_name);
                if (v->host->read_file(v->ctx, path, &text, NULL) >= 0) {
                        text[strcspn(text, "\n")] = '\0';
                        if (strcmp(text, name) == 0) {
                                snprintf(ret, size, "%s", e->d_name);
                                found = true;
                        }
                }
                free(text);
        }
        closedir(d);
        return found;
}

static void find_root_disk(vfio *v, vfio_inventory *inv) {
        char *mounts = NULL;
        if (v->host->read_file(v->ctx, "/proc/mounts", &mounts, NULL) < 0) {
                snprintf(inv->root_note, sizeof inv->root_note, "/proc/mounts unreadable");
                goto fallback;
        }
        char fstype[32] = "";
        for (char *line = mounts, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                char src[128], mnt[128], fs[32];
                if (sscanf(line, "%127s %127s %31s", src, mnt, fs) == 3 && strcmp(mnt, "/") == 0) {
                        snprintf(inv->root_source, sizeof inv->root_source, "%s", src); /* the last mount wins */
                        snprintf(fstype, sizeof fstype, "%s", fs);
                }
        }
        free(mounts);
        if (!inv->root_source[0]) {
                snprintf(inv->root_note, sizeof inv->root_note, "no / in /proc/mounts");
                goto fallback;
        }
        const char *src = inv->root_source;
        char name[64] = "";
        if (strncmp(src, "/dev/mapper/", 12) == 0) {
                if (!mapper_name(v, src + 12, name, sizeof name))
                        snprintf(name, sizeof name, "%.63s", src + 12);
        } else if (strncmp(src, "/dev/", 5) == 0)
                snprintf(name, sizeof name, "%.63s", strrchr(src, '/') + 1);
        if (name[0] && resolve_block(v, inv, name, 0))
                return;
        snprintf(inv->root_note, sizeof inv->root_note, "the controller of %s (%s) is not resolved", src,
                 fstype[0] ? fstype : "?");
fallback:
        /* Unknown root disk: every storage controller may be it. */
        for (size_t i = 0; i < inv->n_devs; i++)
                if (inv->devs[i].cls >> 8 == 0x01)
                        inv->devs[i].roles |= VFIO_ROLE_STORAGE_GUESS;
}

/* The interface → its PCI function; a bridge (vmbr0) or bond through its members. */
static bool resolve_net(vfio *v, vfio_inventory *inv, const char *iface, int depth) {
        char path[160];
        if (depth > 3 || strchr(iface, '/') || strlen(iface) > 31)
                return false;
        snprintf(path, sizeof path, "/sys/class/net/%s", iface);
        char *real = real_of(v, path);
        if (!real)
                return false;
        bool ok = mark_path(inv, real, VFIO_ROLE_MGMT_NIC, inv->nic_ctrl);
        free(real);
        if (ok)
                return true;
        const char *subs[] = {"brif", "lower", NULL};
        for (size_t s = 0; subs[s]; s++) {
                snprintf(path, sizeof path, "/sys/class/net/%s%s%s", iface, s == 0 ? "/" : "", s == 0 ? subs[s] : "");
                char *full = NULL;
                if (v->host->sysroot_path(v->ctx, path, &full) < 0)
                        continue;
                DIR *d = opendir(full);
                free(full);
                if (!d)
                        continue;
                struct dirent *e;
                while ((e = readdir(d))) {
                        const char *m = NULL;
                        if (s == 0 && e->d_name[0] != '.')
                                m = e->d_name;
                        else if (s == 1 && strncmp(e->d_name, "lower_", 6) == 0)
                                m = e->d_name + 6;
                        if (m && resolve_net(v, inv, m, depth + 1))
                                ok = true;
                }
                closedir(d);
        }
        return ok;
}

static void find_mgmt_nic(vfio *v, vfio_inventory *inv) {
        if (v->cfg.mgmt_nic[0])
                snprintf(inv->nic_iface, sizeof inv->nic_iface, "%s", v->cfg.mgmt_nic);
        else {
                char *route = NULL;
                unsigned best = UINT32_MAX;
                if (v->host->read_file(v->ctx, "/proc/net/route", &route, NULL) >= 0) {
                        for (char *line = route, *next; line && *line; line = next) {
                                next = strchr(line, '\n');
                                if (next)
                                        *next++ = '\0';
                                char ifc[32], dst[16], gw[16];
                                unsigned flags, refcnt, use, metric;
                                if (sscanf(line, "%31s %15s %15s %x %u %u %u", ifc, dst, gw, &flags, &refcnt, &use,
                                           &metric) == 7 &&
                                    strcmp(dst, "00000000") == 0 && metric < best) {
                                        best = metric;
                                        snprintf(inv->nic_iface, sizeof inv->nic_iface, "%s", ifc);
                                }
                        }
                }
                free(route);
                if (!inv->nic_iface[0]) {
                        snprintf(inv->nic_note, sizeof inv->nic_note, "no default route in /proc/net/route");
                        return;
                }
        }
        if (!resolve_net(v, inv, inv->nic_iface, 0))
                snprintf(inv->nic_note, sizeof inv->nic_note, "the PCI function of %s is not resolved", inv->nic_iface);
}

static void find_iommu(vfio *v, vfio_inventory *inv) {
        char *full = NULL;
        if (v->host->sysroot_path(v->ctx, "/sys/kernel/iommu_groups", &full) >= 0) {
                DIR *d = opendir(full);
                if (d) {
                        struct dirent *e;
                        while ((e = readdir(d)))
                                if (e->d_name[0] != '.')
                                        inv->n_groups++;
                        closedir(d);
                }
                free(full);
        }
        inv->iommu_on = inv->n_groups > 0;
        char *cmdline = NULL;
        if (v->host->read_file(v->ctx, "/proc/cmdline", &cmdline, NULL) >= 0) {
                size_t used = 0;
                for (char *t = cmdline; *t;) {
                        while (*t && isspace((unsigned char)*t))
                                t++;
                        size_t len = strcspn(t, " \t\n");
                        if (len == 0)
                                break;
                        static const char *const keys[] = {"iommu", "intel_iommu", "amd_iommu", "pcie_acs_override",
                                                           NULL};
                        bool want = false;
                        for (size_t k = 0; keys[k]; k++) {
                                size_t kl = strlen(keys[k]);
                                want = want || (len >= kl && strncmp(t, keys[k], kl) == 0 &&
                                                (len == kl || t[kl] == '=' || t[kl] == '.'));
                        }
                        if (want && used + len + 2 < sizeof inv->cmdline) {
                                if (used)
                                        inv->cmdline[used++] = ' ';
                                memcpy(inv->cmdline + used, t, len);
                                used += len;
                                inv->cmdline[used] = '\0';
                        }
                        if (len >= 17 && strncmp(t, "pcie_acs_override", 17) == 0)
                                inv->acs_override = true;
                        t += len;
                }
        }
        free(cmdline);
}

static void find_kernel(vfio *v, vfio_inventory *inv) {
        char *text = NULL;
        inv->kernel_major = inv->kernel_minor = -1;
        if (v->host->read_file(v->ctx, "/proc/sys/kernel/osrelease", &text, NULL) < 0)
                return;
        text[strcspn(text, " \t\n")] = '\0';
        snprintf(inv->kernel, sizeof inv->kernel, "%s", text);
        int maj, min;
        if (sscanf(text, "%d.%d", &maj, &min) == 2) {
                inv->kernel_major = maj;
                inv->kernel_minor = min;
        }
        free(text);
}

int vfio_inventory_take(vfio *v, vfio_inventory *inv, char *err, size_t err_size) {
        uint64_t t0 = v->host->now_monotonic_us(v->ctx);
        memset(inv, 0, sizeof *inv);
        char *sysfs = NULL;
        int r = v->host->sysroot_path(v->ctx, "/sys/bus/pci", &sysfs);
        if (r < 0) {
                snprintf(err, err_size, "sysroot path: %s", strerror(-r));
                return r;
        }
        r = vfio_pci_scan(sysfs, &inv->devs, &inv->n_devs, err, err_size);
        free(sysfs);
        if (r < 0)
                return r;
        snprintf(inv->pci_warning, sizeof inv->pci_warning, "%s", pci_warning);
        for (size_t i = 0; i < inv->n_devs; i++) {
                vfio_dev *d = &inv->devs[i];
                if (d->cls >> 8 != 0x03)
                        continue;
                char path[96], *text = NULL;
                snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/boot_vga", d->addr);
                if (v->host->read_file(v->ctx, path, &text, NULL) >= 0) {
                        d->boot_vga = text[0] == '1' ? 1 : 0;
                        if (d->boot_vga == 1)
                                d->roles |= VFIO_ROLE_BOOT_DISPLAY;
                }
                free(text);
                text = NULL;
                snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/reset_method", d->addr);
                if (v->host->read_file(v->ctx, path, &text, NULL) >= 0) {
                        text[strcspn(text, "\n")] = '\0';
                        snprintf(d->reset_method, sizeof d->reset_method, "%.47s", text);
                }
                free(text);
        }
        char *mod = NULL;
        if (v->host->sysroot_path(v->ctx, "/sys/module/vendor_reset", &mod) >= 0) {
                inv->vendor_reset = access(mod, F_OK) == 0;
                free(mod);
        }
        find_iommu(v, inv);
        find_kernel(v, inv);
        find_root_disk(v, inv);
        find_mgmt_nic(v, inv);
        inv->enumerate_us = v->host->now_monotonic_us(v->ctx) - t0;
        return 0;
}

void vfio_inventory_done(vfio_inventory *inv) {
        free(inv->devs);
        inv->devs = NULL;
        inv->n_devs = 0;
}
