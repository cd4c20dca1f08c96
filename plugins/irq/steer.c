/* steer.c — one pass of the irq plugin, and the way back.
 *
 * Every file is read before it is written and compared by meaning (a cpu list with a
 * cpu list, a mask with a mask, a number with a number), so a steady host costs reads
 * only: zero writes. The first write to a file records the value found (the store,
 * before the write, so a crash cannot lose it); a later difference on a file we set is
 * drift, counted by kind. A write that fails with EIO on an IRQ marks it kernel-managed
 * (NVMe queue IRQs): recorded once, counted, shown in `status`, never retried and never
 * logged again. Other failures are logged once per file and retried each pass. Under
 * dry_run nothing is written and each change it would make is logged once. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "irq.h"
#include "irq_sql.h"

static const char *const kind_names[IRQ_KIND_COUNT] = {"irq", "rps", "xps", "flow", "sysctl", "pstate", "thread"};

const char *irq_kind_name(irq_kind k) {
        return k < IRQ_KIND_COUNT ? kind_names[k] : "?";
}

static int cmp_item(const void *key, const void *item) {
        return strcmp(key, ((const irq_item *)item)->key);
}

irq_item *irq_item_get(irq *s, const char *key, bool create) {
        irq_item *it = s->n_items ? bsearch(key, s->items, s->n_items, sizeof *s->items, cmp_item) : NULL;
        if (it || !create)
                return it;
        size_t pos = 0;
        while (pos < s->n_items && strcmp(s->items[pos].key, key) < 0)
                pos++;
        irq_item *n = realloc(s->items, (s->n_items + 1) * sizeof *n);
        if (!n)
                return NULL;
        s->items = n;
        char *k = strdup(key);
        if (!k)
                return NULL;
        memmove(s->items + pos + 1, s->items + pos, (s->n_items - pos) * sizeof *n);
        s->items[pos] = (irq_item){.key = k};
        s->n_items++;
        return &s->items[pos];
}

static int load_row(void *userdata, int n, const char *const *c, const char *const *names) {
        irq *s = userdata;
        if (n < 2 || !c[0] || !c[1])
                return 0;
        irq_item *it = irq_item_get(s, c[0], true);
        if (!it)
                return -ENOMEM;
        free(it->orig);
        it->orig = strdup(c[1]);
        return 0;
}

int irq_store_open(irq *s) {
        int r = s->host->store_exec(s->ctx, IRQ_SQL_SCHEMA, NULL, 0);
        if (r >= 0)
                r = s->host->store_query(s->ctx, IRQ_SQL_LOAD, NULL, 0, load_row, s);
        s->store_ok = r >= 0;
        if (r < 0)
                s->host->log(s->ctx, ORG_LOG_WARNING,
                             "store unavailable (%s): originals are kept in memory only, a crash loses them",
                             strerror(-r));
        return r;
}

void irq_item_save_orig(irq *s, irq_item *it, const char *value) {
        if (it->orig)
                return;
        it->orig = strdup(value);
        if (!s->store_ok)
                return;
        char ts[32];
        time_t t = (time_t)(s->host->now_realtime_us(s->ctx) / 1000000);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(ts, sizeof ts, "1970-01-01T00:00:00Z");
        const char *p[] = {it->key, value, ts};
        s->host->store_exec(s->ctx, IRQ_SQL_SAVE, p, 3);
}

static void forget_orig(irq *s, irq_item *it) {
        free(it->orig);
        it->orig = NULL;
        if (s->store_ok) {
                const char *p[] = {it->key};
                s->host->store_exec(s->ctx, IRQ_SQL_FORGET, p, 1);
        }
}

void irq_items_forget_prefix(irq *s, const char *prefix) {
        size_t l = strlen(prefix), k = 0;
        for (size_t i = 0; i < s->n_items; i++) {
                irq_item *it = &s->items[i];
                if (strncmp(it->key, prefix, l) == 0) {
                        if (it->orig)
                                forget_orig(s, it);
                        free(it->key);
                        continue;
                }
                s->items[k++] = *it;
        }
        s->n_items = k;
}

void irq_count_write(irq *s, irq_kind kind, bool drift) {
        s->writes++;
        s->last_pass_writes++;
        if (drift)
                s->drift[kind]++;
}

static void trim(char *t) {
        size_t l = strlen(t);
        while (l && (t[l - 1] == '\n' || t[l - 1] == ' ' || t[l - 1] == '\t' || t[l - 1] == '\r'))
                t[--l] = '\0';
}

static bool same_text(const char *have, const char *want) {
        return strcmp(have, want) == 0;
}

static bool same_list(const char *have, const char *want) {
        org_cpuset a, b;
        return org_cpuset_parse_list(have, &a) >= 0 && org_cpuset_parse_list(want, &b) >= 0 && org_cpuset_equal(&a, &b);
}

static bool same_mask(const char *have, const char *want) {
        org_cpuset a, b;
        return org_cpuset_parse_mask(have, &a) >= 0 && org_cpuset_parse_mask(want, &b) >= 0 && org_cpuset_equal(&a, &b);
}

static bool same_number(const char *have, const char *want) {
        char *e1 = NULL, *e2 = NULL;
        long long a = strtoll(have, &e1, 10), b = strtoll(want, &e2, 10);
        return e1 != have && e2 != want && a == b;
}

/* The core of every file lever: have (read here when NULL) against want. */
static int steer_value(irq *s, const char *path, const char *have_in, const char *want, irq_kind kind, irq_same_fn same,
                       bool *ret_wrote) {
        char *have = NULL;
        int r;
        *ret_wrote = false;
        if (have_in)
                have = strdup(have_in);
        else if ((r = s->host->read_file(s->ctx, path, &have, NULL)) < 0)
                return r;
        if (!have)
                return -ENOMEM;
        trim(have);
        irq_item *it = irq_item_get(s, path, false);
        if ((same ? same : same_text)(have, want)) {
                if (it) {
                        if (it->failing)
                                s->host->log(s->ctx, ORG_LOG_NOTICE, "%s holds %s again", path, want);
                        it->failing = false;
                        it->dry_said = false;
                }
                free(have);
                return 0;
        }
        if (!it && !(it = irq_item_get(s, path, true))) {
                free(have);
                return -ENOMEM;
        }
        if (it->managed) {
                free(have);
                return -EIO;
        }
        if (s->host->dry_run(s->ctx)) {
                if (!it->dry_said)
                        s->host->log(s->ctx, ORG_LOG_NOTICE, "dry_run, would write %s: \"%s\" -> \"%s\"", path, have,
                                     want);
                it->dry_said = true;
                free(have);
                return 0;
        }
        bool drift = it->orig != NULL, saved_now = !it->orig;
        irq_item_save_orig(s, it, have);
        bool changed = false;
        r = s->host->write_file(s->ctx, path, want, &changed);
        if (r < 0) {
                if (saved_now)
                        forget_orig(s, it); /* nothing of ours to undo */
                if (r == -EIO && kind == IRQ_KIND_IRQ) {
                        it->managed = true;
                        s->managed++;
                        s->host->log(s->ctx, ORG_LOG_INFO,
                                     "%s: EIO, the kernel manages this IRQ's affinity: recorded as unmovable, not "
                                     "retried",
                                     path);
                } else if (!it->failing)
                        s->host->log(s->ctx, ORG_LOG_WARNING,
                                     "cannot write %s to %s: %s (retried each pass, logged once)", want, path,
                                     strerror(-r));
                it->failing = true;
                free(have);
                return r;
        }
        if (it->failing)
                s->host->log(s->ctx, ORG_LOG_NOTICE, "%s is writable again", path);
        it->failing = false;
        if (drift)
                s->host->log(s->ctx, ORG_LOG_INFO, "drift on %s: found \"%s\", set \"%s\" again", path, have, want);
        irq_count_write(s, kind, drift);
        *ret_wrote = true;
        free(have);
        return 0;
}

int irq_steer_file(irq *s, const char *path, const char *want, irq_kind kind, irq_same_fn same, bool *ret_wrote) {
        bool w = false;
        int r = steer_value(s, path, NULL, want, kind, same, &w);
        if (ret_wrote)
                *ret_wrote = w;
        return r;
}

static void resolve_uplink_now(irq *s, char *name);

/* irq number -> device name, for the IRQs of the uplink's ports and NVMe. */
typedef struct dev_irq {
        unsigned irq;
        char device[IRQ_NAME_MAX];
} dev_irq;

static void add_device_irqs(irq *s, const char *dir, const char *device, dev_irq **map, size_t *n) {
        unsigned *v = NULL;
        size_t nv = 0;
        if (irq_msi_irqs(s, dir, &v, &nv) < 0)
                return;
        dev_irq *m = realloc(*map, (*n + nv + 1) * sizeof *m);
        if (m) {
                *map = m;
                for (size_t i = 0; i < nv; i++) {
                        m[*n].irq = v[i];
                        snprintf(m[*n].device, sizeof m[*n].device, "%s", device);
                        (*n)++;
                }
        }
        free(v);
}

static void resolve_uplink(irq *s) {
        char name[IRQ_NAME_MAX] = "", before[sizeof s->uplink_why];
        snprintf(before, sizeof before, "%s", s->uplink_why);
        resolve_uplink_now(s, name);
        if (s->uplink_why[0] && strcmp(before, s->uplink_why) != 0)
                s->host->log(s->ctx, ORG_LOG_WARNING, "uplink: %s; its IRQs and queues are not steered", s->uplink_why);
}

static void resolve_uplink_now(irq *s, char *name) {
        s->n_ports = 0;
        s->uplink_why[0] = '\0';
        if (s->uplink[0])
                snprintf(name, IRQ_NAME_MAX, "%s", s->uplink);
        else if (irq_default_route(s, name, IRQ_NAME_MAX) < 0) {
                snprintf(s->uplink_why, sizeof s->uplink_why, "no default route in /proc/net/route");
                s->uplink_used[0] = '\0';
                return;
        }
        snprintf(s->uplink_used, sizeof s->uplink_used, "%s", name);
        int r = irq_resolve_ports(s, name, s->ports, IRQ_PORTS_MAX, &s->n_ports);
        if (r < 0)
                snprintf(s->uplink_why, sizeof s->uplink_why, "%s: no such interface", name);
        else if (s->n_ports == 0)
                snprintf(s->uplink_why, sizeof s->uplink_why, "%s has no physical port (bridge without one?)", name);
}

void irq_steer_irqs(irq *s) {
        char *text = NULL;
        int r = s->host->read_file(s->ctx, "/proc/interrupts", &text, NULL);
        if (r < 0) {
                s->host->log(s->ctx, ORG_LOG_DEBUG, "cannot read /proc/interrupts: %s", strerror(-r));
                return;
        }
        irq_line *lines = NULL;
        size_t n_lines = 0;
        r = irq_parse_interrupts(text, &lines, &n_lines);
        free(text);
        if (r < 0)
                return;

        dev_irq *map = NULL;
        size_t n_map = 0;
        resolve_uplink(s);
        for (size_t i = 0; i < s->n_ports; i++) {
                char dir[128];
                snprintf(dir, sizeof dir, "/sys/class/net/%s/device", s->ports[i]);
                add_device_irqs(s, dir, s->ports[i], &map, &n_map);
        }
        if (s->nvme) {
                char **ctrls = NULL;
                size_t nc = 0;
                if (irq_list_dir(s, "/sys/class/nvme", &ctrls, &nc) >= 0) {
                        for (size_t i = 0; i < nc; i++) {
                                char dir[128];
                                snprintf(dir, sizeof dir, "/sys/class/nvme/%s/device", ctrls[i]);
                                add_device_irqs(s, dir, ctrls[i], &map, &n_map);
                        }
                        irq_free_names(ctrls, nc);
                }
        }

        irq_entry *next = calloc(n_lines ? n_lines : 1, sizeof *next);
        if (!next) {
                free(lines);
                free(map);
                return;
        }
        char want_text[IRQ_SET_COUNT][ORG_CPUSET_LIST_MAX];
        for (int k = 0; k < IRQ_SET_COUNT; k++)
                org_cpuset_format_list(&s->part.set[k], want_text[k], sizeof want_text[k]);
        size_t n = 0;
        for (size_t i = 0; i < n_lines; i++) {
                irq_entry *e = &next[n];
                e->irq = lines[i].irq;
                snprintf(e->label, sizeof e->label, "%s", lines[i].label);
                for (size_t m = 0; m < n_map; m++)
                        if (map[m].irq == e->irq) {
                                snprintf(e->device, sizeof e->device, "%s", map[m].device);
                                break;
                        }
                e->want = e->device[0] ? IRQ_SET_IO : IRQ_SET_HOST;
                char path[64];
                snprintf(path, sizeof path, "/proc/irq/%u/smp_affinity_list", e->irq);
                irq_item *it = irq_item_get(s, path, false);
                e->managed = it && it->managed;
                char *have = NULL;
                r = s->host->read_file(s->ctx, path, &have, NULL);
                if (r < 0) {
                        e->error = r; /* no affinity file (IRQ 0 on some, a chained IRQ) */
                        n++;
                        continue;
                }
                trim(have);
                e->has_actual = org_cpuset_parse_list(have, &e->actual) >= 0;
                if (!e->managed) {
                        bool wrote = false;
                        r = steer_value(s, path, have, want_text[e->want], IRQ_KIND_IRQ, same_list, &wrote);
                        if (r == -EIO)
                                e->managed = true;
                        else if (r < 0)
                                e->error = r;
                        else if (wrote) {
                                e->actual = s->part.set[e->want];
                                e->has_actual = true;
                        }
                }
                free(have);
                n++;
        }
        free(lines);
        free(map);
        free(s->irqs);
        s->irqs = next;
        s->n_irqs = n;
}

/* One RPS/XPS file: steered, or under `look` (verify) only compared and counted. */
static void rps_file(irq *s, bool look, const char *path, const char *want, irq_kind kind, irq_same_fn same,
                     irq_rps_check *c) {
        bool w;
        if (!look) {
                irq_steer_file(s, path, want, kind, same, &w);
                return;
        }
        char *have = NULL;
        if (s->host->read_file(s->ctx, path, &have, NULL) < 0)
                return;
        trim(have);
        c->files++;
        if (same(have, want))
                c->good++;
        else if (!c->first_bad[0])
                snprintf(c->first_bad, sizeof c->first_bad, "%s holds %s", path, have);
        free(have);
}

static void walk_rps(irq *s, bool look, irq_rps_check *c) {
        if (!s->rps)
                return;
        int last = org_cpuset_last(&s->part.present);
        char mask[ORG_CPUSET_MASK_MAX], num[24], flows[24];
        org_cpuset_format_mask(&s->part.set[IRQ_SET_IO], last < 0 ? 0 : (unsigned)last + 1, mask, sizeof mask);
        snprintf(flows, sizeof flows, "%" PRId64, s->flow_cnt);
        for (size_t i = 0; i < s->n_ports; i++) {
                char dir[128];
                snprintf(dir, sizeof dir, "/sys/class/net/%s/queues", s->ports[i]);
                char **qs = NULL;
                size_t nq = 0;
                if (irq_list_dir(s, dir, &qs, &nq) < 0)
                        continue;
                for (size_t q = 0; q < nq; q++) {
                        char path[256];
                        if (strncmp(qs[q], "rx-", 3) == 0) {
                                snprintf(path, sizeof path, "%s/%s/rps_cpus", dir, qs[q]);
                                rps_file(s, look, path, mask, IRQ_KIND_RPS, same_mask, c);
                                snprintf(path, sizeof path, "%s/%s/rps_flow_cnt", dir, qs[q]);
                                rps_file(s, look, path, flows, IRQ_KIND_FLOW, same_number, c);
                        } else if (strncmp(qs[q], "tx-", 3) == 0) {
                                snprintf(path, sizeof path, "%s/%s/xps_cpus", dir, qs[q]);
                                rps_file(s, look, path, mask, IRQ_KIND_XPS, same_mask, c);
                        }
                }
                irq_free_names(qs, nq);
        }
        snprintf(num, sizeof num, "%" PRId64, s->sock_flow_entries);
        rps_file(s, look, IRQ_SOCK_FLOW_PATH, num, IRQ_KIND_SYSCTL, same_number, c);
}

void irq_steer_rps(irq *s) {
        irq_rps_check c = {0};
        walk_rps(s, false, &c);
}

void irq_rps_verify(irq *s, irq_rps_check *ret) {
        irq_rps_check c = {0};
        walk_rps(s, true, &c);
        *ret = c;
}

static void steer_pstate(irq *s) {
        if (s->min_perf_pct < 0)
                return;
        char num[24];
        bool w;
        snprintf(num, sizeof num, "%" PRId64, s->min_perf_pct);
        int r = irq_steer_file(s, IRQ_PSTATE_MIN_PATH, num, IRQ_KIND_PSTATE, same_number, &w);
        if (r == -ENOENT)
                s->host->log(s->ctx, ORG_LOG_DEBUG, "no intel_pstate: min_perf_pct left alone");
}

void irq_pm_qos_hold(irq *s) {
        if (!s->pm_qos || s->dma_fd >= 0)
                return;
        if (s->host->dry_run(s->ctx)) {
                snprintf(s->dma_why, sizeof s->dma_why, "dry_run: not held");
                return;
        }
        char *path = NULL;
        int r = s->host->sysroot_path(s->ctx, IRQ_DMA_LATENCY_PATH, &path);
        if (r < 0)
                return;
        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY);
        free(path);
        if (fd < 0) {
                bool first = !s->dma_why[0];
                s->dma_errno = errno;
                snprintf(s->dma_why, sizeof s->dma_why, "%s: %s", IRQ_DMA_LATENCY_PATH, strerror(errno));
                if (first)
                        s->host->log(s->ctx, ORG_LOG_NOTICE, "pm_qos not held (%s)", s->dma_why);
                return;
        }
        /* the PM QoS request is the 32-bit value written, held until the fd closes */
        int32_t zero = 0;
        if (write(fd, &zero, sizeof zero) != (ssize_t)sizeof zero) {
                snprintf(s->dma_why, sizeof s->dma_why, "write %s: %s", IRQ_DMA_LATENCY_PATH, strerror(errno));
                s->host->log(s->ctx, ORG_LOG_NOTICE, "pm_qos not held (%s)", s->dma_why);
                close(fd);
                return;
        }
        s->dma_fd = fd;
        s->dma_errno = 0;
        s->dma_why[0] = '\0';
        s->host->log(s->ctx, ORG_LOG_INFO, "holding %s at 0 us", IRQ_DMA_LATENCY_PATH);
}

void irq_pm_qos_release(irq *s) {
        if (s->dma_fd >= 0) {
                close(s->dma_fd);
                s->dma_fd = -1;
                s->host->log(s->ctx, ORG_LOG_INFO, "released %s", IRQ_DMA_LATENCY_PATH);
        }
}

static bool is_irqbalance(irq *s, const char *pid) {
        char path[sizeof "/proc//comm" + 256], *comm = NULL; /* pid is a /proc entry name */
        snprintf(path, sizeof path, "/proc/%s/comm", pid);
        if (s->host->read_file(s->ctx, path, &comm, NULL) < 0)
                return false;
        trim(comm);
        bool yes = strcmp(comm, "irqbalance") == 0;
        free(comm);
        return yes;
}

/* irqbalance undoes the pinning: its pid file, else a process named so. */
void irq_irqbalance_check(irq *s) {
        pid_t found = 0;
        static const char *const pidfiles[] = {"/run/irqbalance.pid", "/var/run/irqbalance.pid"};
        for (size_t i = 0; i < 2 && !found; i++) {
                char *t = NULL;
                if (s->host->read_file(s->ctx, pidfiles[i], &t, NULL) < 0)
                        continue;
                trim(t);
                char *e = NULL;
                long p = strtol(t, &e, 10);
                if (e != t && *e == '\0' && p > 0 && is_irqbalance(s, t))
                        found = (pid_t)p;
                free(t);
        }
        char *full = NULL;
        DIR *d = NULL;
        if (!found && s->host->sysroot_path(s->ctx, "/proc", &full) >= 0)
                d = opendir(full);
        free(full);
        if (d) {
                struct dirent *e;
                while (!found && (e = readdir(d)))
                        if (e->d_name[0] >= '1' && e->d_name[0] <= '9' && is_irqbalance(s, e->d_name))
                                found = (pid_t)strtol(e->d_name, NULL, 10);
                closedir(d);
        }
        if (found && !s->irqbalance)
                s->host->log(s->ctx, ORG_LOG_WARNING,
                             "irqbalance is running (pid %d): it rewrites IRQ affinities behind us; disable it "
                             "(systemctl disable --now irqbalance)",
                             (int)found);
        else if (!found && s->irqbalance)
                s->host->log(s->ctx, ORG_LOG_NOTICE, "irqbalance is gone");
        s->irqbalance = found != 0;
        s->irqbalance_pid = found;
}

void irq_metrics(irq *s) {
        const org_host *h = s->host;
        h->metric_set(s->ctx, "irq_passes_total", ORG_METRIC_COUNTER, (double)s->passes, "steering passes run");
        h->metric_set(s->ctx, "irq_writes_total", ORG_METRIC_COUNTER, (double)s->writes,
                      "values written (IRQ affinities, RPS/XPS, sysctls, thread affinities)");
        for (int k = 0; k < IRQ_KIND_COUNT; k++) {
                char name[64];
                snprintf(name, sizeof name, "irq_drift_total{kind=\"%s\"}", kind_names[k]);
                h->metric_set(s->ctx, name, ORG_METRIC_COUNTER, (double)s->drift[k],
                              "values found changed after we had set them, by kind");
        }
        h->metric_set(s->ctx, "irq_managed_irqs", ORG_METRIC_GAUGE, (double)s->managed,
                      "IRQs whose affinity the kernel manages (EIO): left alone");
        h->metric_set(s->ctx, "irq_threads_pinned", ORG_METRIC_GAUGE, (double)s->threads_pinned,
                      "QEMU threads on their wanted CPUs");
        h->metric_set(s->ctx, "irq_pm_qos_held", ORG_METRIC_GAUGE, s->dma_fd >= 0 ? 1.0 : 0.0,
                      "1 while /dev/cpu_dma_latency is held at 0");
        h->metric_set(s->ctx, "irq_irqbalance_running", ORG_METRIC_GAUGE, s->irqbalance ? 1.0 : 0.0,
                      "1 when irqbalance runs (it fights the pinning)");
        h->metric_set(s->ctx, "irq_last_pass_writes", ORG_METRIC_GAUGE, (double)s->last_pass_writes,
                      "values written by the last pass (0 on a steady host)");
}

void irq_pass(irq *s, const char *why) {
        if (s->suspended)
                return;
        s->handed_over = false; /* still running: a reload that failed left us in charge */
        uint64_t t0 = s->host->now_monotonic_us(s->ctx);
        s->last_pass_writes = 0;
        irq_steer_irqs(s);
        irq_steer_rps(s);
        steer_pstate(s);
        if (!s->guest)
                irq_pin_vms(s);
        irq_pm_qos_hold(s);
        irq_irqbalance_check(s);
        s->passes++;
        s->last_pass_us = s->host->now_monotonic_us(s->ctx) - t0;
        s->host->log(s->ctx, ORG_LOG_DEBUG, "pass (%s): %" PRIu64 " writes", why, s->last_pass_writes);
        irq_metrics(s);
}

static irq_thread *find_thread(irq *s, long vmid, long pid, long tid) {
        for (size_t i = 0; i < s->n_vms; i++) {
                irq_vm *vm = &s->vms[i];
                if (vm->vmid != vmid || vm->pid != pid)
                        continue;
                for (size_t k = 0; k < vm->n_threads; k++)
                        if (vm->threads[k].tid == tid)
                                return &vm->threads[k];
        }
        return NULL;
}

unsigned irq_restore_all(irq *s) {
        unsigned n = 0;
        if (s->host->dry_run(s->ctx)) {
                /* writing nothing and forgetting them would lose them: keep them for later */
                size_t kept = 0;
                for (size_t i = 0; i < s->n_items; i++)
                        kept += s->items[i].orig != NULL;
                if (kept)
                        s->host->log(s->ctx, ORG_LOG_NOTICE,
                                     "dry_run: %zu original values kept in the store, not written back", kept);
                return 0;
        }
        for (size_t i = 0; i < s->n_items; i++) {
                irq_item *it = &s->items[i];
                it->dry_said = false;
                it->failing = false;
                if (!it->orig)
                        continue;
                int r = 0;
                long vmid, pid, tid;
                if (it->key[0] == '/') {
                        bool changed = false;
                        r = s->host->write_file(s->ctx, it->key, it->orig, &changed);
                        if (r == -ENOENT)
                                r = 0; /* the device is gone, and its value with it */
                } else if (sscanf(it->key, "thread:%ld:%ld:%ld", &vmid, &pid, &tid) == 3) {
                        irq_thread *t = find_thread(s, vmid, pid, tid);
                        org_cpuset c;
                        if (t && org_cpuset_parse_list(it->orig, &c) >= 0)
                                r = s->aff.set(s->aff.ud, (pid_t)pid, (pid_t)tid, t->comm, &c);
                        if (r == -ESRCH)
                                r = 0;
                }
                if (r < 0) {
                        s->host->log(s->ctx, ORG_LOG_WARNING, "cannot restore %s to \"%s\": %s", it->key, it->orig,
                                     strerror(-r));
                        continue; /* kept: a later restore may succeed */
                }
                forget_orig(s, it);
                n++;
        }
        return n;
}

json_t *irq_irqs_json(irq *s) {
        json_t *a = json_array();
        for (size_t i = 0; i < s->n_irqs; i++) {
                irq_entry *e = &s->irqs[i];
                char want[ORG_CPUSET_LIST_MAX], have[ORG_CPUSET_LIST_MAX], eff[ORG_CPUSET_LIST_MAX];
                org_cpuset_format_list(&s->part.set[e->want], want, sizeof want);
                org_cpuset_format_list(&e->actual, have, sizeof have);
                char path[64], *t = NULL;
                snprintf(path, sizeof path, "/proc/irq/%u/effective_affinity_list", e->irq);
                bool has_eff = false;
                org_cpuset ec;
                if (s->host->read_file(s->ctx, path, &t, NULL) >= 0 && org_cpuset_parse_list(t, &ec) >= 0) {
                        has_eff = true;
                        org_cpuset_format_list(&ec, eff, sizeof eff);
                }
                free(t);
                const char *state = e->managed                                            ? "managed"
                                    : e->error                                            ? "unreadable"
                                    : !e->has_actual                                      ? "unknown"
                                    : org_cpuset_equal(&e->actual, &s->part.set[e->want]) ? "ok"
                                                                                          : "pending";
                json_array_append_new(
                        a, json_pack("{s:I, s:s, s:o, s:s, s:s, s:o, s:o, s:b, s:s}", "irq", (json_int_t)e->irq,
                                     "label", e->label, "device", e->device[0] ? json_string(e->device) : json_null(),
                                     "set", irq_set_name(e->want), "wanted", want, "actual",
                                     e->has_actual ? json_string(have) : json_null(), "effective",
                                     has_eff ? json_string(eff) : json_null(), "movable", !e->managed, "state", state));
        }
        return a;
}
