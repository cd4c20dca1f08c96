/* partition.c — the HOST / VCPU / IO sets, the SMT topology they are checked against,
 * and the kernel command line they imply.
 *
 * The sets come from the config or from the default for N CPUs (HOST 0-1, IO the last
 * two, VCPU the rest; in a guest CPU 0 keeps house and takes every IRQ). SMT siblings
 * (thread_siblings_list) that two sets share are a warning and a verify note: on the
 * reference i7-8700K the pairs are (n, n+6), so "HOST 0-1, VCPU 2-9, IO 10-11" puts
 * vCPU threads on the cores of the host and IO CPUs.
 *
 * The command line it expects: isolcpus=managed_irq,domain,<VCPU> (IO CPUs stay out
 * of isolcpus: an isolated CPU gets no load balancing, so IO threads allowed on two of
 * them would pile up on one), nohz_full and rcu_nocbs on VCPU, kthread_cpus and
 * irqaffinity on HOST; optionally the latency tokens. It compares token by token with
 * /proc/cmdline (the last occurrence wins, as in the kernel) and never edits GRUB. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "irq.h"

static const char *const set_names[IRQ_SET_COUNT] = {"host", "vcpu", "io"};

const char *irq_set_name(irq_set s) {
        return s < IRQ_SET_COUNT ? set_names[s] : "?";
}

int irq_set_from_name(const char *name, irq_set *ret) {
        for (int i = 0; i < IRQ_SET_COUNT; i++)
                if (strcmp(name, set_names[i]) == 0) {
                        *ret = (irq_set)i;
                        return 0;
                }
        return -EINVAL;
}

int irq_present_cpus(irq *s, org_cpuset *ret) {
        char *text = NULL;
        org_cpuset set;
        int r = s->host->read_file(s->ctx, IRQ_CPU_DIR "/present", &text, NULL);
        if (r >= 0) {
                r = org_cpuset_parse_list(text, &set);
                free(text);
                if (r >= 0 && !org_cpuset_empty(&set)) {
                        *ret = set;
                        return 0;
                }
        }
        /* no `present` (a thin sysroot): the cpuN directories until the first gap */
        org_cpuset_zero(&set);
        for (unsigned c = 0; c < ORG_CPUSET_MAX; c++) {
                char path[96];
                snprintf(path, sizeof path, IRQ_CPU_DIR "/cpu%u", c);
                if (!irq_path_exists(s, path))
                        break;
                org_cpuset_add(&set, c);
        }
        if (org_cpuset_empty(&set))
                return -ENOENT;
        *ret = set;
        return 0;
}

int irq_partition_default(const org_cpuset *present, bool guest, irq_partition *ret, char *err, size_t err_size) {
        irq_partition p = {.present = *present};
        unsigned n = org_cpuset_count(present);
        for (int i = 0; i < IRQ_SET_COUNT; i++)
                org_cpuset_zero(&p.set[i]);
        if (guest) {
                if (n < 2) {
                        snprintf(err, err_size, "guest mode needs at least 2 CPUs (found %u)", n);
                        return -EINVAL;
                }
                org_cpuset_add(&p.set[IRQ_SET_HOST], (unsigned)org_cpuset_nth(present, 0));
                p.set[IRQ_SET_IO] = p.set[IRQ_SET_HOST];
                org_cpuset_andnot(&p.set[IRQ_SET_VCPU], present, &p.set[IRQ_SET_HOST]);
        } else {
                if (n < 5) {
                        snprintf(err, err_size,
                                 "the default partition needs at least 5 CPUs (found %u): set cpus: {host, vcpu, io}",
                                 n);
                        return -EINVAL;
                }
                /* by position among the present CPUs, so a hole in the numbering is fine */
                for (unsigned i = 0; i < n; i++) {
                        unsigned c = (unsigned)org_cpuset_nth(present, i);
                        irq_set which = i < 2 ? IRQ_SET_HOST : i >= n - 2 ? IRQ_SET_IO : IRQ_SET_VCPU;
                        org_cpuset_add(&p.set[which], c);
                }
        }
        *ret = p;
        return 0;
}

int irq_partition_parse(const char *host, const char *vcpu, const char *io, const org_cpuset *present, bool guest,
                        irq_partition *ret, char *err, size_t err_size) {
        irq_partition p = {.present = *present, .from_config = true};
        const char *text[IRQ_SET_COUNT] = {host, vcpu, io};
        for (int i = 0; i < IRQ_SET_COUNT; i++) {
                if (!text[i]) {
                        snprintf(err, err_size, "cpus.%s is missing: give host, vcpu and io together", set_names[i]);
                        return -EINVAL;
                }
                int r = org_cpuset_parse_list(text[i], &p.set[i]);
                if (r < 0) {
                        snprintf(err, err_size, "cpus.%s: \"%s\" is not a cpu list (e.g. \"0-1,4\")", set_names[i],
                                 text[i]);
                        return r;
                }
                if (org_cpuset_empty(&p.set[i])) {
                        snprintf(err, err_size, "cpus.%s names no CPU", set_names[i]);
                        return -EINVAL;
                }
                org_cpuset missing;
                org_cpuset_andnot(&missing, &p.set[i], present);
                if (!org_cpuset_empty(&missing)) {
                        char l[ORG_CPUSET_LIST_MAX];
                        org_cpuset_format_list(&missing, l, sizeof l);
                        snprintf(err, err_size, "cpus.%s: CPU %s does not exist here", set_names[i], l);
                        return -EINVAL;
                }
        }
        for (int i = 0; i < IRQ_SET_COUNT; i++)
                for (int k = i + 1; k < IRQ_SET_COUNT; k++) {
                        /* in a guest, housekeeping and IO are the same CPUs by design */
                        if (guest && i == IRQ_SET_HOST && k == IRQ_SET_IO)
                                continue;
                        if (org_cpuset_intersects(&p.set[i], &p.set[k])) {
                                org_cpuset both;
                                char l[ORG_CPUSET_LIST_MAX];
                                org_cpuset_and(&both, &p.set[i], &p.set[k]);
                                org_cpuset_format_list(&both, l, sizeof l);
                                snprintf(err, err_size, "cpus.%s and cpus.%s overlap (CPU %s)", set_names[i],
                                         set_names[k], l);
                                return -EINVAL;
                        }
                }
        *ret = p;
        return 0;
}

static unsigned sets_of(const irq_partition *p, const org_cpuset *group) {
        unsigned m = 0;
        for (int i = 0; i < IRQ_SET_COUNT; i++)
                if (org_cpuset_intersects(&p->set[i], group))
                        m |= 1u << i;
        return m;
}

/* The same shape as the default (2 CPUs for HOST, 2 for IO, the rest VCPU; a guest: 1
 * housekeeping) but in whole cores, taken in the order of their first CPU. */
static bool by_core(const org_cpuset *groups, size_t n, bool guest, irq_partition *ret) {
        irq_partition p = *ret;
        for (int k = 0; k < IRQ_SET_COUNT; k++)
                org_cpuset_zero(&p.set[k]);
        size_t lo = 0, hi = n;
        while (lo < hi && org_cpuset_count(&p.set[IRQ_SET_HOST]) < (guest ? 1u : 2u))
                org_cpuset_or(&p.set[IRQ_SET_HOST], &p.set[IRQ_SET_HOST], &groups[lo++]);
        if (guest)
                p.set[IRQ_SET_IO] = p.set[IRQ_SET_HOST];
        else
                while (hi > lo && org_cpuset_count(&p.set[IRQ_SET_IO]) < 2u)
                        org_cpuset_or(&p.set[IRQ_SET_IO], &p.set[IRQ_SET_IO], &groups[--hi]);
        for (size_t i = lo; i < hi; i++)
                org_cpuset_or(&p.set[IRQ_SET_VCPU], &p.set[IRQ_SET_VCPU], &groups[i]);
        if (org_cpuset_empty(&p.set[IRQ_SET_VCPU]) || org_cpuset_empty(&p.set[IRQ_SET_IO]))
                return false;
        p.from_config = false;
        *ret = p;
        return true;
}

int irq_topology_check(irq *s) {
        free(s->straddles);
        s->straddles = NULL;
        s->n_straddles = 0;
        s->has_suggested = false;
        org_cpuset done;
        org_cpuset_zero(&done);
        org_cpuset *groups = NULL;
        size_t n_groups = 0;
        int r = 0;
        ORG_CPUSET_FOREACH(cpu, &s->part.present) {
                if (org_cpuset_has(&done, (unsigned)cpu))
                        continue;
                char path[128], *text = NULL;
                snprintf(path, sizeof path, IRQ_CPU_DIR "/cpu%d/topology/thread_siblings_list", cpu);
                org_cpuset sib;
                org_cpuset_zero(&sib);
                if (s->host->read_file(s->ctx, path, &text, NULL) >= 0) {
                        if (org_cpuset_parse_list(text, &sib) < 0)
                                org_cpuset_zero(&sib);
                        free(text);
                }
                org_cpuset_add(&sib, (unsigned)cpu);
                org_cpuset_and(&sib, &sib, &s->part.present);
                org_cpuset_or(&done, &done, &sib);
                org_cpuset *ng = realloc(groups, (n_groups + 1) * sizeof *ng);
                if (!ng) {
                        r = -ENOMEM;
                        break;
                }
                groups = ng;
                groups[n_groups++] = sib;
                unsigned m = sets_of(&s->part, &sib);
                /* guest: host and io are one set, sharing a core is no straddle */
                if (s->guest && (m & (1u << IRQ_SET_IO)))
                        m = (m & ~(1u << IRQ_SET_IO)) | (1u << IRQ_SET_HOST);
                if ((m & (m - 1)) == 0)
                        continue;
                irq_straddle *n = realloc(s->straddles, (s->n_straddles + 1) * sizeof *n);
                if (!n) {
                        r = -ENOMEM;
                        break;
                }
                s->straddles = n;
                s->straddles[s->n_straddles++] = (irq_straddle){.siblings = sib, .sets = m};
                char l[ORG_CPUSET_LIST_MAX];
                org_cpuset_format_list(&sib, l, sizeof l);
                s->host->log(s->ctx, ORG_LOG_WARNING, "SMT siblings %s are shared by the %s%s%s%s%s sets", l,
                             m & 1 ? "host" : "", m & 1 && m & 6 ? "+" : "", m & 2 ? "vcpu" : "",
                             m & 2 && m & 4 ? "+" : "", m & 4 ? "io" : "");
        }
        if (r >= 0 && s->n_straddles) {
                s->suggested = s->part;
                s->has_suggested = by_core(groups, n_groups, s->guest, &s->suggested);
                if (s->has_suggested) {
                        char l[IRQ_SET_COUNT][ORG_CPUSET_LIST_MAX];
                        for (int k = 0; k < IRQ_SET_COUNT; k++)
                                org_cpuset_format_list(&s->suggested.set[k], l[k], sizeof l[k]);
                        s->host->log(s->ctx, ORG_LOG_WARNING,
                                     "a partition by core keeps each core in one set: cpus: {host: \"%s\", vcpu: "
                                     "\"%s\", io: \"%s\"}",
                                     l[0], l[1], l[2]);
                }
        }
        free(groups);
        return r;
}

json_t *irq_straddles_json(const irq *s) {
        json_t *a = json_array();
        for (size_t i = 0; i < s->n_straddles; i++) {
                char l[ORG_CPUSET_LIST_MAX];
                org_cpuset_format_list(&s->straddles[i].siblings, l, sizeof l);
                json_t *sets = json_array();
                for (int k = 0; k < IRQ_SET_COUNT; k++)
                        if (s->straddles[i].sets & (1u << k))
                                json_array_append_new(sets, json_string(set_names[k]));
                json_array_append_new(a, json_pack("{s:s, s:o}", "siblings", l, "sets", sets));
        }
        return a;
}

/* The next token of a command line: white-space separated, double quotes group. */
static const char *next_token(const char *p, char *buf, size_t size) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
                p++;
        if (!*p)
                return NULL;
        size_t n = 0;
        bool quoted = false;
        for (; *p && (quoted || (*p != ' ' && *p != '\t' && *p != '\n')); p++) {
                if (*p == '"') {
                        quoted = !quoted;
                        continue;
                }
                if (n + 1 < size)
                        buf[n++] = *p;
        }
        buf[n] = '\0';
        return p;
}

int irq_cmdline_value(const char *cmdline, const char *token, char **ret) {
        char tok[4096];
        const char *p = cmdline, *found = NULL;
        char *last = NULL;
        size_t tl = strlen(token);
        while ((p = next_token(p, tok, sizeof tok))) {
                if (strcmp(tok, "--") == 0)
                        break; /* the rest belongs to init */
                if (strncmp(tok, token, tl) == 0 && (tok[tl] == '=' || tok[tl] == '\0')) {
                        free(last);
                        last = strdup(tok[tl] == '=' ? tok + tl + 1 : "");
                        if (!last)
                                return -ENOMEM;
                        found = p;
                }
        }
        if (!found)
                return -ENOENT;
        *ret = last;
        return 0;
}

/* Splits "managed_irq,domain,2-9" into its flags (sorted words) and cpus. */
static int split_flags(const char *v, char *flags, size_t size, org_cpuset *cpus) {
        const char *p = v;
        size_t n = 0;
        flags[0] = '\0';
        while (*p && !(*p >= '0' && *p <= '9')) {
                const char *e = strchr(p, ',');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                if (n + len + 2 > size)
                        return -ENOBUFS;
                /* flags are few: insertion keeps "domain,managed_irq" order-free */
                memcpy(flags + n, p, len);
                n += len;
                flags[n++] = ',';
                flags[n] = '\0';
                p = e ? e + 1 : p + len;
        }
        return org_cpuset_parse_list(p, cpus);
}

static bool flags_same(const char *a, const char *b) {
        /* each comma-terminated word of a is in b and the lengths agree */
        if (strlen(a) != strlen(b))
                return false;
        for (const char *p = a; *p;) {
                const char *e = strchr(p, ',');
                char w[64];
                size_t len = (size_t)(e - p);
                if (len + 2 > sizeof w)
                        return false;
                w[0] = ',';
                memcpy(w + 1, p, len + 1);
                w[len + 2] = '\0';
                char hay[512];
                snprintf(hay, sizeof hay, ",%s", b);
                if (!strstr(hay, w))
                        return false;
                p = e + 1;
        }
        return true;
}

bool irq_cmdline_same(const char *want, const char *have, bool cpulist) {
        if (!cpulist)
                return strcmp(want, have) == 0;
        char fw[256], fh[256];
        org_cpuset cw, ch;
        if (split_flags(want, fw, sizeof fw, &cw) < 0 || split_flags(have, fh, sizeof fh, &ch) < 0)
                return false;
        return flags_same(fw, fh) && org_cpuset_equal(&cw, &ch);
}

typedef struct cmd_token {
        const char *name;
        char want[ORG_CPUSET_LIST_MAX + 32];
        bool cpulist;
} cmd_token;

static void cpus_text(const org_cpuset *c, char *buf, size_t size) {
        org_cpuset_format_list(c, buf, size);
}

json_t *irq_cmdline_checks(irq *s, const char *cmdline, bool *ret_ok, char **ret_line) {
        static const char *const latency[][2] = {{"intel_idle.max_cstate", "0"},
                                                 {"processor.max_cstate", "1"},
                                                 {"pcie_aspm", "off"},
                                                 {"nvme_core.default_ps_max_latency_us", "0"}};
        cmd_token t[16];
        size_t n = 0;
        char isol[ORG_CPUSET_LIST_MAX], hk[ORG_CPUSET_LIST_MAX];
        cpus_text(&s->part.set[IRQ_SET_VCPU], isol, sizeof isol);
        cpus_text(&s->part.set[IRQ_SET_HOST], hk, sizeof hk);
        for (size_t i = 0; i < s->n_expect && n < 11; i++) {
                const char *name = s->expect[i];
                cmd_token *k = &t[n];
                k->name = name;
                k->cpulist = true;
                if (strcmp(name, "isolcpus") == 0)
                        snprintf(k->want, sizeof k->want, "managed_irq,domain,%s", isol);
                else if (strcmp(name, "nohz_full") == 0 || strcmp(name, "rcu_nocbs") == 0)
                        snprintf(k->want, sizeof k->want, "%s", isol);
                else if (strcmp(name, "kthread_cpus") == 0 || strcmp(name, "irqaffinity") == 0)
                        snprintf(k->want, sizeof k->want, "%s", hk);
                else
                        continue; /* the config map's choices keep others out */
                n++;
        }
        if (s->latency_cmdline)
                for (size_t i = 0; i < sizeof latency / sizeof latency[0]; i++) {
                        t[n].name = latency[i][0];
                        snprintf(t[n].want, sizeof t[n].want, "%s", latency[i][1]);
                        t[n].cpulist = false;
                        n++;
                }
        json_t *a = json_array();
        bool ok = true;
        size_t line_size = 1;
        for (size_t i = 0; i < n; i++)
                line_size += strlen(t[i].name) + strlen(t[i].want) + 2;
        char *line = calloc(1, line_size);
        for (size_t i = 0; i < n; i++) {
                char *have = NULL;
                int r = cmdline ? irq_cmdline_value(cmdline, t[i].name, &have) : -ENOENT;
                bool good = r >= 0 && irq_cmdline_same(t[i].want, have, t[i].cpulist);
                const char *why = r < 0 ? "missing" : good ? "present" : "different value";
                char what[96], want[ORG_CPUSET_LIST_MAX + 128];
                snprintf(what, sizeof what, "cmdline %s", t[i].name);
                snprintf(want, sizeof want, "%s=%s", t[i].name, t[i].want);
                json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:b, s:s}", "what", what, "want", want, "have",
                                                   r < 0 ? "(absent)" : have, "ok", good, "why", why));
                free(have);
                ok = ok && good;
                if (line) {
                        size_t l = strlen(line);
                        snprintf(line + l, line_size - l, "%s%s=%s", l ? " " : "", t[i].name, t[i].want);
                }
        }
        *ret_ok = ok;
        *ret_line = line;
        return a;
}
