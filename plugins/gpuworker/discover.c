/* discover.c — finds the AMD GPUs and reads their sensors.
 *
 * The source of truth is sysfs through the agent's sysroot: every PCI function under
 * /sys/bus/pci/devices with vendor 0x1002 and a display class (0x03xxxx), its driver
 * (a card bound to vfio-pci is passed through, not driven), its DRM nodes under
 * device/drm (card<N> and renderD<N> with any number of digits: node_exporter's
 * card[0-9] glob misses card10 and card11), and its hwmon directory. On the real system
 * libdrm's drmGetDevices2 gives the node names and drmGetVersion the driver, and both
 * are compared with sysfs. Sensors come from sysfs files only (no lspci, no ROCm), and a
 * runtime-suspended card is left asleep: reading hwmon or gpu_busy_percent would wake it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef GPUW_HAVE_LIBDRM
#include <xf86drm.h>
#endif

#include "gpuworker.h"

const char *gpuw_state_name(gpuw_state s) {
        switch (s) {
        case GPUW_IDLE:
                return "idle";
        case GPUW_BUSY:
                return "busy";
        case GPUW_GONE:
                return "gone";
        case GPUW_PASSTHROUGH:
                return "passthrough";
        }
        return "unknown";
}

/* "<prefix><digits>" with at least one digit and nothing else. */
static bool node_name(const char *name, const char *prefix) {
        size_t l = strlen(prefix);
        if (strncmp(name, prefix, l) != 0 || !name[l])
                return false;
        for (const char *p = name + l; *p; p++)
                if (*p < '0' || *p > '9')
                        return false;
        return true;
}

static unsigned long node_number(const char *name, const char *prefix) {
        return strtoul(name + strlen(prefix), NULL, 10);
}

/* Reads a small sysfs file (absolute real-system path) into buf, trailing white space
 * cut. 0 or a negative errno. */
static int read_small(gpuw *w, const char *path, char *buf, size_t len) {
        char *data = NULL;
        size_t n = 0;
        int r = w->host->read_file(w->ctx, path, &data, &n);
        if (r < 0)
                return r;
        while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == ' ' || data[n - 1] == '\t'))
                data[--n] = '\0';
        gpuw_copy(buf, len, data);
        free(data);
        return 0;
}

static int read_u64(gpuw *w, const char *path, uint64_t *ret) {
        char buf[64], *end;
        int r = read_small(w, path, buf, sizeof buf);
        if (r < 0)
                return r;
        errno = 0;
        unsigned long long v = strtoull(buf, &end, 0);
        if (errno || end == buf || buf[0] == '-')
                return -EINVAL;
        *ret = v;
        return 0;
}

/* The lowest-numbered entry of dir named <prefix><digits> into ret (or ""). */
static void first_node(const char *dir, const char *prefix, char *ret, size_t len) {
        ret[0] = '\0';
        DIR *d = opendir(dir);
        if (!d)
                return;
        unsigned long best = ULONG_MAX;
        struct dirent *e;
        while ((e = readdir(d)))
                if (node_name(e->d_name, prefix) && node_number(e->d_name, prefix) < best) {
                        best = node_number(e->d_name, prefix);
                        gpuw_copy(ret, len, e->d_name);
                }
        closedir(d);
}

/* The driver's name: the basename of the driver link, else DRIVER= of uevent. */
static void driver_of(gpuw *w, const char *real_dir, const char *pci, char *ret, size_t len) {
        char link[PATH_MAX + 16], target[PATH_MAX];
        ret[0] = '\0';
        snprintf(link, sizeof link, "%s/driver", real_dir);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
                target[n] = '\0';
                const char *b = strrchr(target, '/');
                gpuw_copy(ret, len, b ? b + 1 : target);
                return;
        }
        char path[128], *data = NULL;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/uevent", pci);
        if (w->host->read_file(w->ctx, path, &data, NULL) < 0)
                return;
        for (char *line = data; line && *line;) {
                char *nl = strchr(line, '\n');
                if (nl)
                        *nl = '\0';
                if (strncmp(line, "DRIVER=", 7) == 0) {
                        gpuw_copy(ret, len, line + 7);
                        break;
                }
                line = nl ? nl + 1 : NULL;
        }
        free(data);
}

static int cmp_found(const void *a, const void *b) {
        return strcmp(((const gpuw_found *)a)->pci, ((const gpuw_found *)b)->pci);
}

/* Fills f for the function at pci if it is an AMD display function; false otherwise. */
static bool probe(gpuw *w, const char *devices_dir, const char *pci, gpuw_found *f) {
        char path[160], buf[32];
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", pci);
        if (read_small(w, path, buf, sizeof buf) < 0 || strcmp(buf, "0x1002") != 0)
                return false;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/class", pci);
        if (read_small(w, path, buf, sizeof buf) < 0 || strncmp(buf, "0x03", 4) != 0)
                return false;
        memset(f, 0, sizeof *f);
        gpuw_copy(f->pci, sizeof f->pci, pci);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", pci);
        if (read_small(w, path, buf, sizeof buf) == 0)
                gpuw_copy(f->device_id, sizeof f->device_id, strncmp(buf, "0x", 2) == 0 ? buf + 2 : buf);

        char real_dir[PATH_MAX], sub[PATH_MAX + 8];
        snprintf(real_dir, sizeof real_dir, "%s/%s", devices_dir, pci);
        driver_of(w, real_dir, pci, f->driver, sizeof f->driver);
        snprintf(sub, sizeof sub, "%s/drm", real_dir);
        first_node(sub, "card", f->card, sizeof f->card);
        first_node(sub, "renderD", f->render, sizeof f->render);
        snprintf(sub, sizeof sub, "%s/hwmon", real_dir);
        first_node(sub, "hwmon", f->hwmon, sizeof f->hwmon);
        return true;
}

int gpuw_discover(gpuw *w, const char *const *only, size_t n_only, gpuw_found *ret, size_t max, size_t *ret_n) {
        char *devices_dir = NULL;
        int r = w->host->sysroot_path(w->ctx, "/sys/bus/pci/devices", &devices_dir);
        if (r < 0)
                return r;
        size_t n = 0;
        if (only) {
                for (size_t i = 0; i < n_only && n < max; i++)
                        if (org_pci_address_valid(only[i]) && probe(w, devices_dir, only[i], &ret[n]))
                                n++;
        } else {
                DIR *d = opendir(devices_dir);
                if (!d) {
                        r = -errno;
                        free(devices_dir);
                        return r;
                }
                struct dirent *e;
                while ((e = readdir(d)) && n < max)
                        if (org_pci_address_valid(e->d_name) && probe(w, devices_dir, e->d_name, &ret[n]))
                                n++;
                closedir(d);
                qsort(ret, n, sizeof ret[0], cmp_found);
        }
        free(devices_dir);
        *ret_n = n;
        return 0;
}

void gpuw_drm_check(gpuw *w, gpuw_found *found, size_t n) {
        char *root = NULL;
        bool real = w->host->sysroot_path(w->ctx, "/", &root) >= 0 && strcmp(root, "/") == 0;
        free(root);
        if (!real) {
                snprintf(w->drm_why, sizeof w->drm_why, "sysroot is not /: sysfs only");
                return;
        }
        if (access("/dev/dri", F_OK) < 0) {
                snprintf(w->drm_why, sizeof w->drm_why, "no /dev/dri: sysfs only");
                return;
        }
#ifdef GPUW_HAVE_LIBDRM
        drmDevicePtr devs[GPUW_MAX_GPUS * 2];
        int nd = drmGetDevices2(0, devs, (int)(sizeof devs / sizeof devs[0]));
        if (nd < 0) {
                snprintf(w->drm_why, sizeof w->drm_why, "drmGetDevices2 failed (%d): sysfs only", nd);
                return;
        }
        w->drm_why[0] = '\0';
        for (int i = 0; i < nd; i++) {
                drmDevicePtr d = devs[i];
                if (d->bustype != DRM_BUS_PCI || !d->businfo.pci)
                        continue;
                char pci[GPUW_PCI_MAX];
                snprintf(pci, sizeof pci, "%04x:%02x:%02x.%x", d->businfo.pci->domain, d->businfo.pci->bus,
                         d->businfo.pci->dev, d->businfo.pci->func);
                for (size_t k = 0; k < n; k++) {
                        gpuw_found *f = &found[k];
                        if (strcmp(f->pci, pci) != 0)
                                continue;
                        f->drm_checked = true;
                        const char *nodes[2] = {
                                (d->available_nodes & (1 << DRM_NODE_PRIMARY)) ? d->nodes[DRM_NODE_PRIMARY] : NULL,
                                (d->available_nodes & (1 << DRM_NODE_RENDER)) ? d->nodes[DRM_NODE_RENDER] : NULL};
                        char *mine[2] = {f->card, f->render};
                        for (int t = 0; t < 2; t++) {
                                const char *b = nodes[t] ? strrchr(nodes[t], '/') : NULL;
                                if (!b)
                                        continue;
                                if (strcmp(b + 1, mine[t]) != 0) {
                                        w->host->log(w->ctx, ORG_LOG_WARNING,
                                                     "%s: libdrm says %s, sysfs says %s; using libdrm's", pci, b + 1,
                                                     mine[t][0] ? mine[t] : "(none)");
                                        gpuw_copy(mine[t], GPUW_NODE_MAX, b + 1);
                                }
                        }
                        /* The driver as the kernel's DRM reports it (render node: no
                         * master needed). */
                        if (nodes[1]) {
                                int fd = open(nodes[1], O_RDWR | O_CLOEXEC);
                                drmVersionPtr v = fd >= 0 ? drmGetVersion(fd) : NULL;
                                if (v && v->name && strcmp(v->name, f->driver) != 0)
                                        w->host->log(w->ctx, ORG_LOG_WARNING, "%s: DRM driver %s, sysfs %s", pci,
                                                     v->name, f->driver);
                                if (v)
                                        drmFreeVersion(v);
                                if (fd >= 0)
                                        close(fd);
                        }
                }
        }
        drmFreeDevices(devs, nd);
#else
        snprintf(w->drm_why, sizeof w->drm_why, "built without libdrm: sysfs only");
#endif
}

int gpuw_read_busy(gpuw *w, const gpuw_found *dev, double *ret) {
        char path[192], buf[32];
        uint64_t v;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/power/runtime_status", dev->pci);
        if (read_small(w, path, buf, sizeof buf) == 0 && strcmp(buf, "suspended") == 0)
                return -EAGAIN;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/gpu_busy_percent", dev->pci);
        int r = read_u64(w, path, &v);
        if (r < 0)
                return r;
        *ret = (double)v;
        return 0;
}

void gpuw_read_metrics(gpuw *w, const gpuw_found *dev, gpuw_metrics *m) {
        char path[192], buf[32];
        uint64_t v;
        memset(m, 0, sizeof *m);
        m->valid = true;
        m->ts_us = w->host->now_realtime_us(w->ctx);
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/power/runtime_status", dev->pci);
        if (read_small(w, path, buf, sizeof buf) == 0 && strcmp(buf, "suspended") == 0) {
                m->suspended = true;
                return;
        }
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/gpu_busy_percent", dev->pci);
        if ((m->has_busy = read_u64(w, path, &v) == 0))
                m->busy = (double)v;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/mem_info_vram_used", dev->pci);
        m->has_vram_used = read_u64(w, path, &m->vram_used) == 0;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/mem_info_vram_total", dev->pci);
        m->has_vram_total = read_u64(w, path, &m->vram_total) == 0;
        if (!dev->hwmon[0])
                return;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/hwmon/%s/temp1_input", dev->pci, dev->hwmon);
        if ((m->has_temp = read_u64(w, path, &v) == 0))
                m->temp_c = (double)v / 1000.0;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/hwmon/%s/power1_average", dev->pci, dev->hwmon);
        if ((m->has_power = read_u64(w, path, &v) == 0))
                m->power_w = (double)v / 1e6;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/hwmon/%s/fan1_input", dev->pci, dev->hwmon);
        if ((m->has_fan = read_u64(w, path, &v) == 0))
                m->fan_rpm = (double)v;
}
