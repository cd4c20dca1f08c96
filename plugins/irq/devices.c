/* devices.c — IRQs by device, never by label.
 *
 * The uplink is resolved to the ports that have hardware: a bridge (vmbr0 on Proxmox:
 * no IRQs, software queues) through /sys/class/net/<br>/brif/, a bond through
 * bonding/slaves, a VLAN or other stacked device through its lower_* links; a port
 * without a `device` (tap, veth, fwpr) is virtual and skipped. Each port's IRQs are the
 * names in device/msi_irqs/, NVMe controllers' likewise under /sys/class/nvme/. Labels
 * from /proc/interrupts are kept for display only, so "eno1" can never match "eno10".
 * Directory listings go through the host's sysroot_path, so a fixture tree works. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "irq.h"

#define IRQ_RESOLVE_DEPTH 4

bool irq_path_exists(irq *s, const char *path) {
        char *full = NULL;
        if (s->host->sysroot_path(s->ctx, path, &full) < 0)
                return false;
        struct stat st;
        bool ok = stat(full, &st) == 0;
        free(full);
        return ok;
}

void irq_free_names(char **names, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
}

static int cmp_names(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

int irq_list_dir(irq *s, const char *path, char ***ret, size_t *ret_n) {
        char *full = NULL;
        int r = s->host->sysroot_path(s->ctx, path, &full);
        if (r < 0)
                return r;
        DIR *d = opendir(full);
        free(full);
        if (!d)
                return -errno;
        char **names = NULL;
        size_t n = 0;
        struct dirent *e;
        r = 0;
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                char **nn = realloc(names, (n + 1) * sizeof *nn);
                if (!nn || !(nn[n] = strdup(e->d_name))) {
                        if (nn)
                                names = nn;
                        r = -ENOMEM;
                        break;
                }
                names = nn;
                n++;
        }
        closedir(d);
        if (r < 0) {
                irq_free_names(names, n);
                return r;
        }
        if (n > 1)
                qsort(names, n, sizeof *names, cmp_names);
        *ret = names;
        *ret_n = n;
        return 0;
}

/* An interface name as the kernel allows (1..15, no '/', no white space), so a name
 * read from a file cannot walk out of /sys/class/net. */
static bool ifname_ok(const char *n) {
        size_t l = strlen(n);
        if (l == 0 || l >= 16 || strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
                return false;
        for (size_t i = 0; i < l; i++)
                if (n[i] == '/' || n[i] == ' ' || n[i] == '\t' || n[i] == '\n' || n[i] == ':')
                        return false;
        return true;
}

static void add_port(char (*ports)[IRQ_NAME_MAX], size_t max, size_t *n, const char *name) {
        for (size_t i = 0; i < *n; i++)
                if (strcmp(ports[i], name) == 0)
                        return;
        if (*n < max)
                snprintf(ports[(*n)++], IRQ_NAME_MAX, "%s", name);
}

static int resolve(irq *s, const char *ifname, char (*ports)[IRQ_NAME_MAX], size_t max, size_t *n, int depth) {
        char path[192];
        if (!ifname_ok(ifname) || depth > IRQ_RESOLVE_DEPTH)
                return 0;
        snprintf(path, sizeof path, "/sys/class/net/%s", ifname);
        if (!irq_path_exists(s, path))
                return -ENOENT;
        char **names = NULL;
        size_t nn = 0;
        /* a bridge: its ports */
        snprintf(path, sizeof path, "/sys/class/net/%s/brif", ifname);
        if (irq_list_dir(s, path, &names, &nn) >= 0) {
                for (size_t i = 0; i < nn; i++)
                        resolve(s, names[i], ports, max, n, depth + 1);
                irq_free_names(names, nn);
                return 0;
        }
        /* a bond: its slaves */
        char *slaves = NULL;
        snprintf(path, sizeof path, "/sys/class/net/%s/bonding/slaves", ifname);
        if (s->host->read_file(s->ctx, path, &slaves, NULL) >= 0) {
                char *save = NULL;
                for (char *t = strtok_r(slaves, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save))
                        resolve(s, t, ports, max, n, depth + 1);
                free(slaves);
                return 0;
        }
        /* hardware */
        snprintf(path, sizeof path, "/sys/class/net/%s/device", ifname);
        if (irq_path_exists(s, path)) {
                add_port(ports, max, n, ifname);
                return 0;
        }
        /* stacked (VLAN, macvlan): lower_<dev> entries */
        snprintf(path, sizeof path, "/sys/class/net/%s", ifname);
        if (irq_list_dir(s, path, &names, &nn) >= 0) {
                for (size_t i = 0; i < nn; i++)
                        if (strncmp(names[i], "lower_", 6) == 0)
                                resolve(s, names[i] + 6, ports, max, n, depth + 1);
                irq_free_names(names, nn);
        }
        return 0; /* virtual (tap, veth): no IRQs of its own */
}

int irq_resolve_ports(irq *s, const char *ifname, char (*ports)[IRQ_NAME_MAX], size_t max, size_t *ret_n) {
        size_t n = 0;
        int r = resolve(s, ifname, ports, max, &n, 0);
        if (r < 0)
                return r;
        *ret_n = n;
        return 0;
}

int irq_default_route(irq *s, char *buf, size_t size) {
        char *text = NULL;
        int r = s->host->read_file(s->ctx, "/proc/net/route", &text, NULL);
        if (r < 0)
                return r;
        unsigned long best = (unsigned long)-1;
        bool found = false;
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char ifname[32], dest[16], gw[16], mask[16];
                unsigned flags, refcnt, use;
                unsigned long metric;
                if (sscanf(line, "%31s %15s %15s %x %u %u %lu %15s", ifname, dest, gw, &flags, &refcnt, &use, &metric,
                           mask) != 8)
                        continue;
                /* RTF_UP (0x1), destination and mask 0 */
                if (strcmp(dest, "00000000") != 0 || strcmp(mask, "00000000") != 0 || !(flags & 1u))
                        continue;
                if (!found || metric < best) {
                        snprintf(buf, size, "%s", ifname);
                        best = metric;
                        found = true;
                }
        }
        free(text);
        return found ? 0 : -ENOENT;
}

static int cmp_uint(const void *a, const void *b) {
        unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
        return x < y ? -1 : x > y;
}

int irq_msi_irqs(irq *s, const char *device_dir, unsigned **ret, size_t *ret_n) {
        char path[256];
        snprintf(path, sizeof path, "%s/msi_irqs", device_dir);
        char **names = NULL;
        size_t nn = 0;
        int r = irq_list_dir(s, path, &names, &nn);
        if (r < 0)
                return r;
        unsigned *v = calloc(nn ? nn : 1, sizeof *v);
        size_t n = 0;
        if (!v) {
                irq_free_names(names, nn);
                return -ENOMEM;
        }
        for (size_t i = 0; i < nn; i++) {
                char *end = NULL;
                unsigned long x = strtoul(names[i], &end, 10);
                if (end && *end == '\0' && end != names[i] && x < 1u << 24)
                        v[n++] = (unsigned)x;
        }
        irq_free_names(names, nn);
        qsort(v, n, sizeof *v, cmp_uint);
        *ret = v;
        *ret_n = n;
        return 0;
}

int irq_parse_interrupts(const char *text, irq_line **ret, size_t *ret_n) {
        irq_line *v = NULL;
        size_t n = 0;
        const char *p = text;
        /* the first line names the CPU columns */
        const char *nl = strchr(p, '\n');
        if (!nl)
                return -EINVAL;
        unsigned cols = 0;
        for (const char *q = p; q < nl; q++)
                if ((q == p || q[-1] == ' ') && q[0] == 'C' && strncmp(q, "CPU", 3) == 0)
                        cols++;
        p = nl + 1;
        while (*p) {
                nl = strchr(p, '\n');
                const char *end = nl ? nl : p + strlen(p);
                const char *q = p;
                while (q < end && *q == ' ')
                        q++;
                char *e = NULL;
                unsigned long num = strtoul(q, &e, 10);
                if (e != q && e < end && *e == ':' && num < 1u << 24) {
                        irq_line *nv = realloc(v, (n + 1) * sizeof *nv);
                        if (!nv) {
                                free(v);
                                return -ENOMEM;
                        }
                        v = nv;
                        irq_line *l = &v[n++];
                        l->irq = (unsigned)num;
                        l->label[0] = '\0';
                        /* skip the counts, then the label is the last word */
                        const char *t = e + 1;
                        for (unsigned c = 0; c < cols; c++) {
                                while (t < end && *t == ' ')
                                        t++;
                                while (t < end && *t >= '0' && *t <= '9')
                                        t++;
                        }
                        const char *last_end = end;
                        while (last_end > t && (last_end[-1] == ' ' || last_end[-1] == '\r'))
                                last_end--;
                        const char *last = last_end;
                        while (last > t && last[-1] != ' ')
                                last--;
                        size_t len = (size_t)(last_end - last);
                        if (len >= sizeof l->label)
                                len = sizeof l->label - 1;
                        memcpy(l->label, last, len);
                        l->label[len] = '\0';
                }
                p = nl ? nl + 1 : end;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}
