/* levers.c — the three things the memory plugin moves: the ZFS ARC ceiling
 * (zfs_arc_max), vm.swappiness and the balloon target of one Proxmox VM.
 *
 * The two file levers are read before every write and written only when they differ
 * (the host's write_file checks again and logs before → after); a missing file disables
 * its lever only. The balloon goes through `qm` from the agent's command table, by argv
 * and asynchronously, reading before it writes: `qm config VMID` (a VM with PCI
 * passthrough, hostpciN, has its RAM pinned, and one with `balloon: 0` has ballooning
 * off: the lever is refused once, saying why, and never touched), then `qm status VMID
 * --verbose` (running: the live `balloon:` in bytes; stopped: the config's `balloon:` in
 * MiB), and only when that differs from the target `qm balloon VMID MB` (running) or
 * `qm set VMID --balloon MB` (stopped). The chain runs when the target differs from
 * what the plugin last set or found, so a restart with the balloon already right
 * writes nothing and journals nothing. One call chain at a time: a tick that finds one
 * in flight leaves it be.
 * Under dry_run nothing is written and mutating qm calls are skipped by the host; each
 * change that would have been made is journalled once, not on every tick. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memory.h"

#define BALLOON_BACKOFF_MAX_US (300ULL * 1000000ULL)

void memory_levers_init(memory *m) {
        m->arc = (memory_file_lever){.name = "arc_max", .path = MEMORY_ARC_MAX_PATH, .source = MEMORY_SRC_ARC_MAX};
        m->swappiness = (memory_file_lever){
                .name = "swappiness", .path = MEMORY_SWAPPINESS_PATH, .source = MEMORY_SRC_SWAPPINESS};
}

/* Reads what the lever's file holds; a missing or unparsable file disables the lever. */
static int read_lever(memory *m, memory_file_lever *l) {
        char *text = NULL;
        uint64_t v = 0;
        int r = m->host->read_file(m->ctx, l->path, &text, NULL);
        if (r >= 0)
                r = memory_parse_u64(text, &v) < 0 ? -EBADMSG : 0;
        free(text);
        memory_source_seen(m, l->source, r);
        l->enabled = r >= 0;
        l->has_value = r >= 0;
        if (r >= 0)
                l->value = v;
        return r;
}

void memory_levers_refresh(memory *m) {
        read_lever(m, &m->arc);
        read_lever(m, &m->swappiness);
}

static void apply_file(memory *m, memory_file_lever *l, uint64_t want, const char *reason) {
        if (read_lever(m, l) < 0)
                return;
        if (l->value == want) {
                l->dry_pending = false;
                l->failing = false;
                return;
        }
        bool dry = m->host->dry_run(m->ctx);
        if (dry && l->dry_pending && l->dry_value == want)
                return; /* already said once what we would do */
        char before[24], after[24];
        snprintf(before, sizeof before, "%" PRIu64, l->value);
        snprintf(after, sizeof after, "%" PRIu64, want);
        bool changed = false;
        int r = m->host->write_file(m->ctx, l->path, after, &changed);
        if (r < 0) {
                m->host->log(m->ctx, l->failing ? ORG_LOG_DEBUG : ORG_LOG_WARNING, "cannot set %s to %s: %s", l->path,
                             after, strerror(-r));
                l->failing = true;
                return;
        }
        if (l->failing)
                m->host->log(m->ctx, ORG_LOG_NOTICE, "%s is writable again", l->path);
        l->failing = false;
        if (!changed) {
                l->value = want; /* same value written differently ("08" vs "8") */
                return;
        }
        if (dry) {
                l->dry_pending = true;
                l->dry_value = want;
        } else
                l->value = want;
        memory_journal_action(m, &(memory_action){.lever = l->name, .reason = reason, .before = before,
                                                  .after = after, .dry_run = dry});
}

/* A qm call failed: say it once, then back off so a broken VM is not hammered. */
static void balloon_failed(memory *m, const char *what, int error, const org_exec_result *res) {
        memory_balloon *b = &m->balloon;
        b->busy = false;
        b->fails++;
        unsigned shift = b->fails > 9 ? 8 : b->fails - 1;
        uint64_t delay = 1000000ULL << shift;
        b->retry_at_us = m->host->now_monotonic_us(m->ctx) + (delay > BALLOON_BACKOFF_MAX_US ? BALLOON_BACKOFF_MAX_US : delay);
        int level = b->fails == 1 ? ORG_LOG_WARNING : ORG_LOG_DEBUG;
        if (res)
                m->host->log(m->ctx, level, "%s %s failed (%s %d): %.200s", what, b->vmid_text,
                             res->timed_out ? "timed out," : "status", res->status, res->err ? res->err : "");
        else
                m->host->log(m->ctx, level, "%s %s: %s", what, b->vmid_text, strerror(-error));
}

/* The command is not runnable at all (not in agent.commands): no balloon lever. */
static void balloon_disable(memory *m, int error) {
        m->balloon.busy = false;
        m->balloon.enabled = false;
        m->host->log(m->ctx, ORG_LOG_WARNING, "cannot run qm (%s): the balloon lever is disabled", strerror(-error));
}

static void on_balloon_set(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        memory *m = userdata;
        memory_balloon *b = &m->balloon;
        const char *verb = b->vm_status[0] && strcmp(b->vm_status, "running") == 0 ? "qm balloon" : "qm set";
        if (!res->dry_run && (res->status != 0 || res->timed_out)) {
                balloon_failed(m, verb, 0, res);
                return;
        }
        if (b->fails > 0)
                m->host->log(m->ctx, ORG_LOG_NOTICE, "qm works again for VM %s", b->vmid_text);
        b->fails = 0;
        b->busy = false;
        char before[24], after[24], detail[96];
        bool had = b->has_seen || b->has_set;
        if (had)
                snprintf(before, sizeof before, "%" PRId64, b->has_seen ? b->seen_mb : b->set_mb);
        snprintf(after, sizeof after, "%" PRId64, b->target_mb);
        if (strcmp(verb, "qm balloon") == 0)
                snprintf(detail, sizeof detail, "qm balloon %s %s", b->vmid_text, after);
        else
                snprintf(detail, sizeof detail, "qm set %s --balloon %s", b->vmid_text, after);
        if (res->dry_run) {
                b->dry_pending = true;
                b->dry_mb = b->target_mb;
        } else {
                b->has_set = true;
                b->set_mb = b->target_mb;
                b->dry_pending = false;
        }
        memory_journal_action(m, &(memory_action){.lever = "balloon", .reason = b->reason, .before = had ? before : NULL,
                                                  .after = after, .detail = detail, .dry_run = res->dry_run});
}

/* The value of "KEY: value" at the start of a line of qm's output, trimmed, into buf
 * (indented lines are sub-fields, as in ballooninfo:, and never match). */
static bool qm_field(const char *out, const char *key, char *buf, size_t size) {
        size_t kl = strlen(key);
        for (const char *line = out; line && *line;) {
                const char *nl = strchr(line, '\n');
                size_t len = nl ? (size_t)(nl - line) : strlen(line);
                if (len > kl && strncmp(line, key, kl) == 0 && line[kl] == ':') {
                        const char *v = line + kl + 1;
                        size_t vl = len - kl - 1;
                        while (vl > 0 && (*v == ' ' || *v == '\t')) {
                                v++;
                                vl--;
                        }
                        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t' || v[vl - 1] == '\r'))
                                vl--;
                        if (vl >= size)
                                return false;
                        memcpy(buf, v, vl);
                        buf[vl] = '\0';
                        return true;
                }
                line = nl ? nl + 1 : NULL;
        }
        return false;
}

/* The first passthrough key (hostpci0..hostpci15) of `qm config`, into buf. */
static bool qm_passthrough(const char *out, char *buf, size_t size) {
        for (const char *line = out; line && *line;) {
                const char *nl = strchr(line, '\n');
                size_t n = strlen("hostpci"), d = 0;
                if (strncmp(line, "hostpci", n) == 0) {
                        while (line[n + d] >= '0' && line[n + d] <= '9')
                                d++;
                        if (d > 0 && line[n + d] == ':' && n + d < size) {
                                memcpy(buf, line, n + d);
                                buf[n + d] = '\0';
                                return true;
                        }
                }
                line = nl ? nl + 1 : NULL;
        }
        return false;
}

static bool parse_i64(const char *text, int64_t *ret) {
        uint64_t v;
        const char *p = text;
        if (memory_parse_u64(text, &v) < 0 || v > INT64_MAX)
                return false;
        while (*p == ' ' || *p == '\t')
                p++;
        while (*p >= '0' && *p <= '9')
                p++;
        if (*p != '\0')
                return false;
        *ret = (int64_t)v;
        return true;
}

/* The VM must never be ballooned: say why once, and leave it alone from now on. */
static void balloon_refuse(memory *m, const char *why) {
        memory_balloon *b = &m->balloon;
        b->busy = false;
        b->enabled = false;
        snprintf(b->refused, sizeof b->refused, "%s", why);
        m->host->log(m->ctx, ORG_LOG_WARNING, "VM %s: %s: the balloon lever is refused", b->vmid_text, why);
}

static void on_balloon_status(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        memory *m = userdata;
        memory_balloon *b = &m->balloon;
        if (res->status != 0 || res->timed_out) {
                balloon_failed(m, "qm status", 0, res);
                return;
        }
        /* "status: running" among the other lines of --verbose */
        b->vm_status[0] = '\0';
        if (res->out && !qm_field(res->out, "status", b->vm_status, sizeof b->vm_status))
                b->vm_status[0] = '\0';
        bool running = strcmp(b->vm_status, "running") == 0;
        /* what the VM has now: the live balloon of a running VM (bytes), the config's
         * target of a stopped one (MiB); unknown when qm does not say */
        char text[32];
        int64_t have = -1, bytes;
        if (running) {
                if (res->out && qm_field(res->out, "balloon", text, sizeof text) && parse_i64(text, &bytes))
                        have = (bytes + (1 << 19)) >> 20; /* to the nearest MiB */
        } else
                have = b->config_mb;
        b->has_seen = have >= 0;
        b->seen_mb = have;
        if (have == b->target_mb) {
                /* already so: nothing to write, nothing to journal */
                if (b->fails > 0)
                        m->host->log(m->ctx, ORG_LOG_NOTICE, "qm works again for VM %s", b->vmid_text);
                b->fails = 0;
                b->busy = false;
                b->has_set = true;
                b->set_mb = have;
                b->dry_pending = false;
                m->host->log(m->ctx, ORG_LOG_DEBUG, "VM %s balloon already %" PRId64 " MiB", b->vmid_text, have);
                return;
        }
        char mb[24];
        snprintf(mb, sizeof mb, "%" PRId64, b->target_mb);
        const char *argv_run[] = {"qm", "balloon", b->vmid_text, mb, NULL};
        const char *argv_set[] = {"qm", "set", b->vmid_text, "--balloon", mb, NULL};
        org_exec_spec spec = {.argv = running ? argv_run : argv_set,
                              .timeout_ms = m->qm_timeout_ms,
                              .capture_max = 4096,
                              .mutating = true};
        int r = m->host->exec(m->ctx, &spec, on_balloon_set, m, &b->exec_id);
        if (r == -ENOENT || r == -EPERM)
                balloon_disable(m, r);
        else if (r < 0)
                balloon_failed(m, running ? "qm balloon" : "qm set", r, NULL);
}

static void on_balloon_config(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        memory *m = userdata;
        memory_balloon *b = &m->balloon;
        if (res->status != 0 || res->timed_out) {
                balloon_failed(m, "qm config", 0, res);
                return;
        }
        const char *out = res->out ? res->out : "";
        char key[24], text[32], why[128];
        int64_t mb;
        /* SPEC §6: a passthrough VM's RAM is pinned; ballooning it does nothing but harm */
        if (qm_passthrough(out, key, sizeof key)) {
                snprintf(why, sizeof why, "it has PCI passthrough (%s), its RAM is pinned", key);
                balloon_refuse(m, why);
                return;
        }
        b->config_mb = -1;
        if (qm_field(out, "balloon", text, sizeof text)) {
                if (!parse_i64(text, &mb)) {
                        balloon_failed(m, "qm config", -EBADMSG, NULL);
                        return;
                }
                if (mb == 0) {
                        /* the operator turned ballooning off (e.g. hugepages): not ours to undo */
                        balloon_refuse(m, "its config says balloon: 0 (ballooning off)");
                        return;
                }
                b->config_mb = mb;
        }
        const char *argv[] = {"qm", "status", b->vmid_text, "--verbose", NULL};
        org_exec_spec spec = {.argv = argv, .timeout_ms = m->qm_timeout_ms, .capture_max = 65536};
        int r = m->host->exec(m->ctx, &spec, on_balloon_status, m, &b->exec_id);
        if (r == -ENOENT || r == -EPERM)
                balloon_disable(m, r);
        else if (r < 0)
                balloon_failed(m, "qm status", r, NULL);
}

static void apply_balloon(memory *m, int64_t want, const char *reason) {
        memory_balloon *b = &m->balloon;
        if (!b->enabled || b->busy)
                return;
        if (b->has_set && b->set_mb == want) {
                b->dry_pending = false;
                return;
        }
        if (m->host->dry_run(m->ctx) && b->dry_pending && b->dry_mb == want)
                return;
        if (b->fails > 0 && m->host->now_monotonic_us(m->ctx) < b->retry_at_us)
                return;
        b->busy = true;
        b->target_mb = want;
        snprintf(b->reason, sizeof b->reason, "%s", reason);
        const char *argv[] = {"qm", "config", b->vmid_text, NULL};
        org_exec_spec spec = {.argv = argv, .timeout_ms = m->qm_timeout_ms, .capture_max = 65536};
        /* the callback may run before exec returns (it does in the tests' fake host) */
        int r = m->host->exec(m->ctx, &spec, on_balloon_config, m, &b->exec_id);
        if (r == -ENOENT || r == -EPERM)
                balloon_disable(m, r);
        else if (r < 0)
                balloon_failed(m, "qm config", r, NULL);
}

void memory_levers_apply(memory *m, const memory_profile *p, const char *reason) {
        apply_file(m, &m->arc, memory_rules_arc_want(m, p), reason);
        apply_file(m, &m->swappiness, (uint64_t)p->swappiness, reason);
        apply_balloon(m, p->balloon_mb, reason);
}

static json_t *check(const char *what, const char *want, const char *have, bool ok) {
        return json_pack("{s:s, s:s, s:s, s:b}", "what", what, "want", want, "have", have, "ok", ok);
}

json_t *memory_levers_verify(memory *m, const memory_profile *p, bool *ret_ok) {
        json_t *a = json_array();
        bool all = true;
        memory_levers_refresh(m);
        memory_file_lever *files[] = {&m->arc, &m->swappiness};
        uint64_t wants[] = {memory_rules_arc_want(m, p), (uint64_t)p->swappiness};
        for (size_t i = 0; i < 2; i++) {
                char want[24], have[24];
                snprintf(want, sizeof want, "%" PRIu64, wants[i]);
                if (!files[i]->enabled) {
                        /* no file, no lever: nothing to be wrong about */
                        json_array_append_new(a, check(files[i]->name, want, "absent (lever disabled)", true));
                        continue;
                }
                snprintf(have, sizeof have, "%" PRIu64, files[i]->value);
                bool ok = files[i]->value == wants[i];
                all = all && ok;
                json_array_append_new(a, check(files[i]->name, want, have, ok));
        }
        memory_balloon *b = &m->balloon;
        char want[24], have[48];
        snprintf(want, sizeof want, "%" PRId64, p->balloon_mb);
        if (!b->configured)
                json_array_append_new(a, check("balloon", want, "no vmid (lever disabled)", true));
        else if (b->refused[0])
                json_array_append_new(a, check("balloon", want, b->refused, true)); /* left alone on purpose */
        else if (!b->enabled)
                json_array_append_new(a, check("balloon", want, "qm not runnable (lever disabled)", true));
        else {
                if (b->has_set)
                        snprintf(have, sizeof have, "%" PRId64, b->set_mb);
                else if (b->has_seen)
                        snprintf(have, sizeof have, "%" PRId64, b->seen_mb); /* read, not yet set */
                else
                        snprintf(have, sizeof have, "unknown");
                bool ok = b->has_set && b->set_mb == p->balloon_mb;
                all = all && ok;
                json_array_append_new(a, check("balloon", want, have, ok));
        }
        *ret_ok = all;
        return a;
}

static json_t *file_json(const memory_file_lever *l, uint64_t want) {
        return json_pack("{s:b, s:o, s:I, s:o}", "enabled", l->enabled, "have",
                         l->has_value ? json_integer((json_int_t)l->value) : json_null(), "want", (json_int_t)want,
                         "would_set", l->dry_pending ? json_integer((json_int_t)l->dry_value) : json_null());
}

json_t *memory_levers_json(memory *m, const memory_profile *p) {
        const memory_balloon *b = &m->balloon;
        json_t *balloon = json_pack("{s:b, s:b, s:o, s:o, s:I, s:b, s:o, s:o, s:I}", "configured", b->configured,
                                    "enabled", b->enabled, "vmid",
                                    b->configured ? json_integer((json_int_t)b->vmid) : json_null(), "have",
                                    b->has_set ? json_integer((json_int_t)b->set_mb) : json_null(), "want",
                                    (json_int_t)p->balloon_mb, "busy", b->busy, "vm_status",
                                    b->vm_status[0] ? json_string(b->vm_status) : json_null(), "would_set",
                                    b->dry_pending ? json_integer((json_int_t)b->dry_mb) : json_null(), "failures",
                                    (json_int_t)b->fails);
        if (balloon && b->refused[0])
                json_object_set_new(balloon, "refused", json_string(b->refused));
        return json_pack("{s:o, s:o, s:o}", "arc_max", file_json(&m->arc, memory_rules_arc_want(m, p)), "swappiness",
                         file_json(&m->swappiness, (uint64_t)p->swappiness), "balloon", balloon);
}
