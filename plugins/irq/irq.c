/* irq.c — the latency-steering plugin: its descriptor, config map, hooks, the verbs
 * `status`, `apply` and `restore`, and `verify` for `agentctl audit`.
 *
 * It partitions the CPUs into HOST, VCPU and IO sets (partition.c), steers device IRQs
 * and RPS/XPS to IO and every other movable IRQ to HOST (steer.c, devices.c), pins the
 * QEMU threads of the configured VMs by vCPU index (threads.c), and holds
 * /dev/cpu_dma_latency at 0. Each pass reads before it writes: a steady host costs
 * zero writes. Everything it changed is put back on disable or unload (fini), from the
 * originals kept in the store; a reload hands them to the new generation instead. The
 * kernel command line is only compared (verify), never edited. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "irq.h"

#define IRQ_VERSION "1.0.0"

static const org_config_entry cpus_entries[] = {
        {.key = "host",
         .type = ORG_CFG_STRING,
         .format = "cpulist",
         .help = "housekeeping CPUs: every IRQ that is not a device's, kernel threads (guest: the housekeeping CPU)"},
        {.key = "vcpu",
         .type = ORG_CFG_STRING,
         .format = "cpulist",
         .help = "CPUs for the vCPU threads of the VMs set to vcpu (guest: the workload CPUs)"},
        {.key = "io",
         .type = ORG_CFG_STRING,
         .format = "cpulist",
         .help = "CPUs for NIC/NVMe IRQs, RPS/XPS, IOThreads, vhost and QEMU's main thread"},
        ORG_CONFIG_END,
};

static const org_config_entry config_map[] = {
        {.key = "mode",
         .type = ORG_CFG_STRING,
         .default_value = "host",
         .choices = ORG_CHOICES("host", "guest"),
         .help = "host: the partition below; guest (inside a VM): CPU 0 keeps house and takes every IRQ"},
        {.key = "cpus",
         .type = ORG_CFG_OBJECT,
         .children = cpus_entries,
         .help = "the sets as cpu lists, all three, disjoint; absent: HOST 0-1, IO the last two, VCPU the rest"},
        {.key = "uplink",
         .type = ORG_CFG_STRING,
         .help = "the uplink interface (a bridge or bond is resolved to its ports); absent: the default route's"},
        {.key = "nvme",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "steer the IRQs of /sys/class/nvme/* to the IO CPUs"},
        {.key = "rps",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "RPS/XPS masks of the uplink ports' queues to the IO CPUs, rps_flow_cnt, rps_sock_flow_entries"},
        {.key = "rps_sock_flow_entries",
         .type = ORG_CFG_INT,
         .default_value = "32768",
         .min = "0",
         .max = "16777216",
         .help = "net.core.rps_sock_flow_entries"},
        {.key = "rps_flow_cnt",
         .type = ORG_CFG_INT,
         .default_value = "4096",
         .min = "0",
         .max = "1048576",
         .help = "rps_flow_cnt of each rx queue"},
        {.key = "vms",
         .type = ORG_CFG_STRING_DICT,
         .choices = ORG_CHOICES("vcpu", "io", "host"),
         .help = "VMID -> the set its vCPU threads are pinned to by index ({100: vcpu, 200: io}); host mode only"},
        {.key = "pm_qos",
         .type = ORG_CFG_BOOL,
         .default_value = "true",
         .help = "hold /dev/cpu_dma_latency open at 0 while enabled"},
        {.key = "min_perf_pct",
         .type = ORG_CFG_INT,
         .min = "0",
         .max = "100",
         .help = "intel_pstate min_perf_pct; absent: left alone (the governor belongs to circadian)"},
        {.key = "expect_cmdline",
         .type = ORG_CFG_STRING_LIST,
         .default_value = "[isolcpus, nohz_full, rcu_nocbs, kthread_cpus, irqaffinity]",
         .choices = ORG_CHOICES("isolcpus", "nohz_full", "rcu_nocbs", "kthread_cpus", "irqaffinity"),
         .help = "kernel command-line tokens verify expects, with values from the partition"},
        {.key = "latency_cmdline",
         .type = ORG_CFG_BOOL,
         .default_value = "false",
         .help = "verify also expects intel_idle.max_cstate=0 processor.max_cstate=1 pcie_aspm=off "
                 "nvme_core.default_ps_max_latency_us=0"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "status",
         .help = "partition, SMT, uplink ports, each IRQ (device, wanted, actual, movable), each VM's "
                 "threads, counters"},
        {.name = "apply", .mutating = true, .help = "one pass now (and resume after restore)"},
        {.name = "restore",
         .mutating = true,
         .args = "--confirm true",
         .help = "put every original value back and pause until apply"},
        ORG_VERBS_END,
};

static void irq_free(irq *s) {
        if (!s)
                return;
        irq_watch_stop(s);
        irq_pm_qos_release(s);
        if (s->first_timer)
                s->host->timer_cancel(s->ctx, s->first_timer);
        irq_vms_free(s);
        for (size_t i = 0; i < s->n_items; i++) {
                free(s->items[i].key);
                free(s->items[i].orig);
        }
        free(s->items);
        free(s->irqs);
        free(s->straddles);
        for (size_t i = 0; i < s->n_expect; i++)
                free(s->expect[i]);
        free(s->expect);
        free(s);
}

static const char *str_or(json_t *o, const char *key, const char *dflt) {
        json_t *v = json_object_get(o, key);
        return json_is_string(v) ? json_string_value(v) : dflt;
}

static bool bool_or(json_t *o, const char *key, bool dflt) {
        json_t *v = json_object_get(o, key);
        return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int64_t int_or(json_t *o, const char *key, int64_t dflt) {
        json_t *v = json_object_get(o, key);
        return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Reads the checked config (the fake host of the tests fills no defaults: hence the
 * defaults here too) and builds the partition. Logs each fault. */
static int load_config(irq *s) {
        const org_host *h = s->host;
        json_error_t e;
        json_t *cfg = json_loads(h->config_json(s->ctx), 0, &e);
        char err[256] = "";
        int r = 0;
        if (!json_is_object(cfg)) {
                h->log(s->ctx, ORG_LOG_ERR, "config is not a JSON object: %s", e.text);
                json_decref(cfg);
                return -EINVAL;
        }
        const char *mode = str_or(cfg, "mode", "host");
        if (strcmp(mode, "host") != 0 && strcmp(mode, "guest") != 0) {
                h->log(s->ctx, ORG_LOG_ERR, "mode: \"%s\" is neither host nor guest", mode);
                r = -EINVAL;
                goto out;
        }
        s->guest = strcmp(mode, "guest") == 0;
        const char *uplink = str_or(cfg, "uplink", "");
        if (strlen(uplink) >= 16 || strchr(uplink, '/')) {
                h->log(s->ctx, ORG_LOG_ERR, "uplink: \"%s\" is not an interface name", uplink);
                r = -EINVAL;
                goto out;
        }
        snprintf(s->uplink, sizeof s->uplink, "%s", uplink);
        s->nvme = bool_or(cfg, "nvme", true);
        s->rps = bool_or(cfg, "rps", true);
        s->pm_qos = bool_or(cfg, "pm_qos", true);
        s->latency_cmdline = bool_or(cfg, "latency_cmdline", false);
        s->sock_flow_entries = int_or(cfg, "rps_sock_flow_entries", 32768);
        s->flow_cnt = int_or(cfg, "rps_flow_cnt", 4096);
        s->min_perf_pct = int_or(cfg, "min_perf_pct", -1);
        if (s->sock_flow_entries < 0 || s->flow_cnt < 0 || s->min_perf_pct > 100) {
                h->log(s->ctx, ORG_LOG_ERR, "rps_sock_flow_entries, rps_flow_cnt >= 0; min_perf_pct 0 to 100");
                r = -EINVAL;
                goto out;
        }

        json_t *exp = json_object_get(cfg, "expect_cmdline");
        static const char *const dflt_expect[] = {"isolcpus", "nohz_full", "rcu_nocbs", "kthread_cpus", "irqaffinity"};
        size_t ne = json_is_array(exp) ? json_array_size(exp) : 5;
        s->expect = calloc(ne ? ne : 1, sizeof *s->expect);
        if (!s->expect) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < ne; i++) {
                const char *t = json_is_array(exp) ? json_string_value(json_array_get(exp, i)) : dflt_expect[i];
                if (!t || !(s->expect[s->n_expect] = strdup(t))) {
                        r = t ? -ENOMEM : -EINVAL;
                        goto out;
                }
                s->n_expect++;
        }

        org_cpuset present;
        if ((r = irq_present_cpus(s, &present)) < 0) {
                h->log(s->ctx, ORG_LOG_ERR, "cannot find the CPUs (%s/present): %s", IRQ_CPU_DIR, strerror(-r));
                goto out;
        }
        json_t *cpus = json_object_get(cfg, "cpus");
        if (json_is_object(cpus) && json_object_size(cpus))
                r = irq_partition_parse(str_or(cpus, "host", NULL), str_or(cpus, "vcpu", NULL),
                                        str_or(cpus, "io", NULL), &present, s->guest, &s->part, err, sizeof err);
        else
                r = irq_partition_default(&present, s->guest, &s->part, err, sizeof err);
        if (r < 0) {
                h->log(s->ctx, ORG_LOG_ERR, "%s", err);
                goto out;
        }

        json_t *vms = json_object_get(cfg, "vms");
        const char *key;
        json_t *val;
        if (json_is_object(vms))
                json_object_foreach (vms, key, val) {
                        char *end = NULL;
                        long long id = strtoll(key, &end, 10);
                        irq_set set;
                        if (end == key || *end || id <= 0 || id > 999999999) {
                                h->log(s->ctx, ORG_LOG_ERR, "vms.%s: a VM id is a positive integer", key);
                                r = -EINVAL;
                                goto out;
                        }
                        if (!json_is_string(val) || irq_set_from_name(json_string_value(val), &set) < 0) {
                                h->log(s->ctx, ORG_LOG_ERR, "vms.%s: the set is vcpu, io or host", key);
                                r = -EINVAL;
                                goto out;
                        }
                        if (s->n_vms == IRQ_VMS_MAX) {
                                h->log(s->ctx, ORG_LOG_ERR, "vms: at most %d VMs", IRQ_VMS_MAX);
                                r = -E2BIG;
                                goto out;
                        }
                        irq_vm *vm = &s->vms[s->n_vms++];
                        vm->vmid = id;
                        vm->set = set;
                        snprintf(vm->vmid_text, sizeof vm->vmid_text, "%lld", id);
                        snprintf(vm->why, sizeof vm->why, "not looked at yet");
                }
        if (s->guest && s->n_vms) {
                h->log(s->ctx, ORG_LOG_WARNING, "vms: ignored in guest mode (no QEMU here)");
                s->n_vms = 0;
        }
out:
        json_decref(cfg);
        return r;
}

static void on_first(org_ctx *ctx, uint64_t id, void *userdata) {
        irq *s = userdata;
        s->first_timer = 0;
        irq_pass(s, "start");
}

static int irq_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        irq *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->host = host;
        s->ctx = ctx;
        s->inotify_fd = -1;
        s->dma_fd = -1;
        s->aff = irq_real_affinity;
        s->aff.ud = s;
        char *root = NULL;
        if (host->sysroot_path(ctx, "/", &root) >= 0)
                s->real_root = strcmp(root, "/") == 0;
        free(root);
        int r = load_config(s);
        if (r < 0)
                goto fail;
        char l[IRQ_SET_COUNT][ORG_CPUSET_LIST_MAX];
        for (int k = 0; k < IRQ_SET_COUNT; k++)
                org_cpuset_format_list(&s->part.set[k], l[k], sizeof l[k]);
        host->log(ctx, ORG_LOG_INFO, "%s mode, %s partition: host %s, vcpu %s, io %s", s->guest ? "guest" : "host",
                  s->part.from_config ? "configured" : "default", l[0], l[1], l[2]);
        irq_topology_check(s);
        irq_store_open(s);
        char *susp = NULL;
        if (host->kv_get(ctx, "suspended", &susp) >= 0 && susp && strcmp(susp, "1") == 0) {
                s->suspended = true;
                host->log(ctx, ORG_LOG_NOTICE, "restored and paused by `restore`: `agentctl irq apply` resumes");
        }
        free(susp);
        if (s->n_vms)
                irq_watch_start(s);
        irq_metrics(s);
        if ((r = host->timer_add(ctx, 0, 0, on_first, s, &s->first_timer)) < 0) {
                host->log(ctx, ORG_LOG_ERR, "cannot add a timer: %s", strerror(-r));
                goto fail;
        }
        *ret_state = s;
        return 0;
fail:
        irq_free(s);
        return r;
}

static int irq_tick(void *state) {
        irq_pass(state, "tick");
        return 0;
}

static int reply(irq *s, const org_msg *req, json_t *o, const char *error) {
        if (!o)
                o = json_pack("{s:s}", "error", error ? error : "out of memory");
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = s->host->respond(s->ctx, req->reply, text, strlen(text));
        free(text);
        return r;
}

static json_t *counters_json(irq *s) {
        json_t *d = json_object();
        for (int k = 0; k < IRQ_KIND_COUNT; k++)
                json_object_set_new(d, irq_kind_name((irq_kind)k), json_integer((json_int_t)s->drift[k]));
        size_t origs = 0;
        for (size_t i = 0; i < s->n_items; i++)
                origs += s->items[i].orig != NULL;
        return json_pack("{s:I, s:I, s:I, s:o, s:I, s:I, s:I, s:I, s:I}", "passes", (json_int_t)s->passes, "writes",
                         (json_int_t)s->writes, "last_pass_writes", (json_int_t)s->last_pass_writes, "drift", d,
                         "managed", (json_int_t)s->managed, "threads_pinned", (json_int_t)s->threads_pinned,
                         "originals", (json_int_t)origs, "vm_events", (json_int_t)s->vm_events, "last_pass_us",
                         (json_int_t)s->last_pass_us);
}

static json_t *rps_json(irq *s) {
        json_t *a = json_array();
        for (size_t i = 0; i < s->n_items; i++) {
                irq_item *it = &s->items[i];
                if (!strstr(it->key, "/queues/") && strcmp(it->key, IRQ_SOCK_FLOW_PATH) != 0)
                        continue;
                char *have = NULL;
                int r = s->host->read_file(s->ctx, it->key, &have, NULL);
                if (r >= 0)
                        have[strcspn(have, "\n")] = '\0';
                json_array_append_new(a, json_pack("{s:s, s:o, s:o, s:b}", "path", it->key, "actual",
                                                   r >= 0 ? json_string(have) : json_null(), "original",
                                                   it->orig ? json_string(it->orig) : json_null(), "failing",
                                                   it->failing));
                free(have);
        }
        return a;
}

static json_t *suggested_json(irq *s) {
        if (!s->has_suggested)
                return json_null();
        char l[IRQ_SET_COUNT][ORG_CPUSET_LIST_MAX];
        for (int k = 0; k < IRQ_SET_COUNT; k++)
                org_cpuset_format_list(&s->suggested.set[k], l[k], sizeof l[k]);
        return json_pack("{s:s, s:s, s:s}", "host", l[0], "vcpu", l[1], "io", l[2]);
}

static json_t *status_json(irq *s) {
        char l[IRQ_SET_COUNT][ORG_CPUSET_LIST_MAX], all[ORG_CPUSET_LIST_MAX];
        for (int k = 0; k < IRQ_SET_COUNT; k++)
                org_cpuset_format_list(&s->part.set[k], l[k], sizeof l[k]);
        org_cpuset_format_list(&s->part.present, all, sizeof all);
        json_t *ports = json_array();
        for (size_t i = 0; i < s->n_ports; i++)
                json_array_append_new(ports, json_string(s->ports[i]));
        return json_pack("{s:s, s:b, s:b, s:{s:s, s:s, s:s, s:s, s:s}, s:o, s:o, s:{s:s, s:o, s:o}, s:o, s:o, s:o, "
                         "s:{s:b, s:b, s:o}, s:{s:b, s:o}, s:o, s:o}",
                         "mode", s->guest ? "guest" : "host", "dry_run", s->host->dry_run(s->ctx), "suspended",
                         s->suspended, "partition", "host", l[0], "vcpu", l[1], "io", l[2], "cpus", all, "source",
                         s->part.from_config ? "config" : "default", "smt_straddles", irq_straddles_json(s), "by_core",
                         suggested_json(s), "uplink", "name", s->uplink_used, "ports", ports, "why",
                         s->uplink_why[0] ? json_string(s->uplink_why) : json_null(), "irqs", irq_irqs_json(s), "rps",
                         rps_json(s), "vms", irq_vms_json(s), "pm_qos", "enabled", s->pm_qos, "held", s->dma_fd >= 0,
                         "why", s->dma_why[0] ? json_string(s->dma_why) : json_null(), "irqbalance", "running",
                         s->irqbalance, "pid", s->irqbalance ? json_integer(s->irqbalance_pid) : json_null(), "watch",
                         s->inotify_watch ? json_string(IRQ_PID_DIR)
                                          : json_string(s->inotify_why[0] ? s->inotify_why : "none"),
                         "counters", counters_json(s));
}

static bool confirmed(const org_msg *req) {
        if (!req->data || !req->len)
                return false;
        json_error_t e;
        json_t *a = json_loadb(req->data, req->len, JSON_DECODE_ANY, &e);
        json_t *c = json_is_object(a) ? json_object_get(a, "confirm") : NULL;
        bool ok = json_is_true(c) || (json_is_string(c) && strcmp(json_string_value(c), "yes") == 0);
        json_t *words = json_is_object(a) ? json_object_get(a, "args") : NULL;
        for (size_t i = 0; !ok && i < json_array_size(words); i++) {
                const char *w = json_string_value(json_array_get(words, i));
                ok = w && strcmp(w, "confirm") == 0;
        }
        json_decref(a);
        return ok;
}

static int irq_call(void *state, const char *verb, const org_msg *req) {
        irq *s = state;
        if (strcmp(verb, "status") == 0)
                return reply(s, req, status_json(s), NULL);
        if (strcmp(verb, "apply") == 0) {
                if (s->suspended) {
                        s->suspended = false;
                        s->host->kv_set(s->ctx, "suspended", "0");
                        s->host->log(s->ctx, ORG_LOG_NOTICE, "resumed by apply");
                }
                s->dma_why[0] = '\0';
                irq_pass(s, "apply");
                return reply(s, req,
                             json_pack("{s:I, s:b, s:o}", "writes", (json_int_t)s->last_pass_writes, "dry_run",
                                       s->host->dry_run(s->ctx), "counters", counters_json(s)),
                             NULL);
        }
        if (strcmp(verb, "restore") == 0) {
                if (!confirmed(req))
                        return reply(s, req, NULL,
                                     "restore puts every original value back and pauses steering: add --confirm true");
                unsigned n = irq_restore_all(s);
                irq_pm_qos_release(s);
                s->suspended = true;
                s->host->kv_set(s->ctx, "suspended", "1");
                s->host->log(s->ctx, ORG_LOG_NOTICE, "restored %u original values; paused until apply", n);
                irq_metrics(s);
                return reply(s, req, json_pack("{s:I, s:b}", "restored", (json_int_t)n, "suspended", 1), NULL);
        }
        return -EOPNOTSUPP;
}

static json_t *check(const char *what, const char *want, const char *have, bool ok) {
        return json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", want, "have", have, "ok", ok);
}

static int irq_verify(void *state, char **ret_json) {
        irq *s = state;
        json_t *checks = json_array();
        bool all = true;
        char want[160], have[512];

        /* IRQs, read again now */
        unsigned movable = 0, good = 0, managed = 0;
        char bad[256] = "";
        for (size_t i = 0; i < s->n_irqs; i++) {
                irq_entry *e = &s->irqs[i];
                if (e->managed) {
                        managed++;
                        continue;
                }
                if (e->error)
                        continue;
                char path[64], *t = NULL;
                org_cpuset c;
                snprintf(path, sizeof path, "/proc/irq/%u/smp_affinity_list", e->irq);
                if (s->host->read_file(s->ctx, path, &t, NULL) < 0)
                        continue;
                movable++;
                bool ok = org_cpuset_parse_list(t, &c) >= 0 && org_cpuset_equal(&c, &s->part.set[e->want]);
                free(t);
                good += ok;
                if (!ok && strlen(bad) + 24 < sizeof bad) {
                        size_t l = strlen(bad);
                        snprintf(bad + l, sizeof bad - l, "%s%u", l ? "," : "; off: ", e->irq);
                }
        }
        snprintf(want, sizeof want, "%u movable IRQs on their set", movable);
        snprintf(have, sizeof have, "%u on their set, %u kernel-managed%s", good, managed, bad);
        json_array_append_new(checks, check("irq affinity", want, have, good == movable));
        all = all && good == movable;

        if (s->rps) {
                irq_rps_check rc;
                irq_rps_verify(s, &rc);
                snprintf(want, sizeof want, "%u RPS/XPS files of %zu port(s) as wanted", rc.files, s->n_ports);
                snprintf(have, sizeof have, "%u as wanted%s%s", rc.good, rc.first_bad[0] ? "; " : "", rc.first_bad);
                json_array_append_new(checks, check("rps/xps", want, have, rc.good == rc.files));
                all = all && rc.good == rc.files;
        }

        for (size_t i = 0; i < s->n_vms; i++) {
                irq_vm *vm = &s->vms[i];
                char what[64];
                snprintf(what, sizeof what, "VM %s threads", vm->vmid_text);
                s->look_only = true; /* verify reads, it never pins */
                irq_pin_vm(s, vm);
                s->look_only = false;
                unsigned ok_n = 0;
                for (size_t k = 0; k < vm->n_threads; k++)
                        ok_n += vm->threads[k].has_actual &&
                                org_cpuset_equal(&vm->threads[k].actual, &vm->threads[k].want);
                if (!vm->pid) {
                        json_array_append_new(checks, check(what, "pinned when running", vm->why, true));
                        continue;
                }
                snprintf(want, sizeof want, "%zu threads pinned (vCPUs by index on %s)", vm->n_threads,
                         irq_set_name(vm->set));
                snprintf(have, sizeof have, "%u pinned", ok_n);
                json_array_append_new(checks, check(what, want, have, ok_n == vm->n_threads));
                all = all && ok_n == vm->n_threads;
        }

        irq_irqbalance_check(s);
        if (s->irqbalance)
                snprintf(have, sizeof have, "running (pid %d)", (int)s->irqbalance_pid);
        json_array_append_new(checks,
                              check("irqbalance", "not running", s->irqbalance ? have : "not running", !s->irqbalance));
        all = all && !s->irqbalance;

        /* SMT siblings shared by two sets: a note, not a failure */
        have[0] = '\0';
        for (size_t i = 0; i < s->n_straddles; i++) {
                char l[ORG_CPUSET_LIST_MAX];
                size_t n = strlen(have);
                org_cpuset_format_list(&s->straddles[i].siblings, l, sizeof l);
                if (n + strlen(l) + 2 < sizeof have) {
                        if (n)
                                have[n++] = ' ';
                        memcpy(have + n, l, strlen(l) + 1);
                }
        }
        json_t *smt = check("smt siblings (note)", "each core's threads in one set",
                            s->n_straddles ? have : "each core in one set", true);
        json_object_set_new(smt, "note", json_boolean(s->n_straddles > 0));
        json_array_append_new(checks, smt);

        /* absent (a VM without it) or not permitted: a note, not a failure */
        bool held_ok = !s->pm_qos || s->dma_fd >= 0 || s->host->dry_run(s->ctx) || s->dma_errno == ENOENT ||
                       s->dma_errno == EACCES || s->dma_errno == EPERM;
        json_array_append_new(checks, check("pm_qos /dev/cpu_dma_latency", s->pm_qos ? "held at 0" : "not wanted",
                                            s->dma_fd >= 0  ? "held at 0"
                                            : s->dma_why[0] ? s->dma_why
                                                            : "not held",
                                            held_ok));
        all = all && held_ok;

        char *cmdline = NULL, *line = NULL;
        bool cmd_ok = true;
        if (s->host->read_file(s->ctx, "/proc/cmdline", &cmdline, NULL) < 0)
                cmdline = NULL;
        json_t *cmd = irq_cmdline_checks(s, cmdline, &cmd_ok, &line);
        free(cmdline);
        json_array_extend(checks, cmd);
        json_decref(cmd);
        all = all && cmd_ok;

        json_t *o = json_pack("{s:b, s:o, s:s, s:b}", "ok", all, "checks", checks, "cmdline_add", line ? line : "",
                              "reboot_needed", !cmd_ok);
        free(line);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_json = text;
        return 0;
}

/* A reload: the new generation takes the originals (they are in the store) and the
 * IRQs already known to be kernel-managed; this one must then not restore in fini. */
static int irq_save(void *state, void **ret_blob, size_t *ret_len) {
        irq *s = state;
        json_t *m = json_array();
        for (size_t i = 0; i < s->n_items; i++)
                if (s->items[i].managed)
                        json_array_append_new(m, json_string(s->items[i].key));
        json_t *o = json_pack("{s:o}", "managed", m);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        s->handed_over = true;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static int irq_restore_state(void *state, const void *blob, size_t len) {
        irq *s = state;
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        json_t *m = json_object_get(o, "managed");
        for (size_t i = 0; i < json_array_size(m); i++) {
                const char *k = json_string_value(json_array_get(m, i));
                irq_item *it = k ? irq_item_get(s, k, true) : NULL;
                if (it && !it->managed) {
                        it->managed = true;
                        s->managed++;
                }
        }
        json_decref(o);
        return 0;
}

static void irq_fini(void *state) {
        irq *s = state;
        if (s && !s->handed_over) {
                unsigned n = irq_restore_all(s);
                if (n)
                        s->host->log(s->ctx, ORG_LOG_NOTICE, "stopping: restored %u original values", n);
        }
        irq_free(s);
}

ORG_PLUGIN_DEFINE(.name = "irq", .version = IRQ_VERSION,
                  .summary = "latency steering: CPU partition, device IRQs by device, RPS/XPS, QEMU threads by vCPU "
                             "index, pm_qos; drift only, restored on disable",
                  .config_map = config_map, .verbs = verbs, .init = irq_init, .tick = irq_tick, .call = irq_call,
                  .fini = irq_fini, .verify = irq_verify, .save_state = irq_save, .restore_state = irq_restore_state);
