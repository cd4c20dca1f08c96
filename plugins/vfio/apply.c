/* apply.c — what the vfio plugin changes, and how it takes it back.
 *
 * A job runs one verb that needs commands, one step at a time on the loop: `qm config
 * VMID` (read only) so the plan knows the VM's hostpci entries; then, for apply, the
 * binding files (each with a timestamped backup of what was there, written atomically:
 * temp file, fsync, rename, fsync of the folder; a file is only rewritten when its
 * content differs), `update-initramfs -u -k all` when a file changed, and one
 * `qm set VMID --hostpciN 0000:BB:DD,pcie=1` per card. Every change is recorded in the
 * instance's store (before, after, backup) so rollback restores exactly the previous
 * state: files whose content is still ours get their backup back (or are removed when
 * there was none), hostpci entries we added are deleted and the ones we replaced are set
 * back. Under dry_run nothing is written and the host skips the mutating commands. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vfio.h"
#include "vfio_sql.h"

typedef enum job_kind { JOB_REFRESH, JOB_PLAN, JOB_APPLY, JOB_ROLLBACK } job_kind;

struct vfio_job {
        vfio *v;
        job_kind kind;
        char *reply;
        bool replace;
        json_t *plan;
        json_t *steps; /* [{argv, record?}] still to run, in order */
        size_t next;
        json_t *done;    /* what ran: [{argv, status}] */
        json_t *written; /* files written / removed */
        json_t *rows;    /* rollback: the store's active rows, newest first */
        char stamp[32];  /* 20261201T200102Z: the backups' suffix */
};

static const char *const job_names[] = {"refresh", "plan", "apply", "rollback"};

/* ---- files ---- */

int vfio_read(vfio *v, const char *path, char **ret) {
        char *text = NULL;
        int r = v->host->read_file(v->ctx, path, &text, NULL);
        if (r < 0)
                return r;
        *ret = text;
        return 0;
}

static int fsync_dir(const char *file) {
        char *copy = strdup(file);
        if (!copy)
                return -ENOMEM;
        int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        free(copy);
        if (fd < 0)
                return -errno;
        int r = fsync(fd) < 0 ? -errno : 0;
        close(fd);
        return r;
}

static int mkdir_parents(char *path) {
        for (char *s = strchr(path + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = '\0';
                int r = mkdir(path, 0755) < 0 && errno != EEXIST ? -errno : 0;
                *s = '/';
                if (r < 0)
                        return r;
        }
        return 0;
}

int vfio_write_atomic(vfio *v, const char *path, const char *content) {
        char *full = NULL, *tmp = NULL;
        int r = v->host->sysroot_path(v->ctx, path, &full);
        if (r < 0)
                return r;
        size_t len = strlen(full);
        if ((r = mkdir_parents(full)) < 0)
                goto out;
        tmp = malloc(len + 16);
        if (!tmp) {
                r = -ENOMEM;
                goto out;
        }
        /* ".name.XXXXXX" beside it: modprobe, systemd and udev read only *.conf / *.rules */
        char *slash = strrchr(full, '/');
        snprintf(tmp, len + 16, "%.*s.%s.XXXXXX", (int)(slash - full + 1), full, slash + 1);
        int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        size_t n = strlen(content), off = 0;
        while (off < n) {
                ssize_t w = write(fd, content + off, n - off);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0) {
                        r = -errno;
                        break;
                }
                off += (size_t)w;
        }
        if (r == 0 && fchmod(fd, 0644) < 0)
                r = -errno;
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, full) < 0)
                r = -errno;
        if (r < 0)
                unlink(tmp);
        else
                r = fsync_dir(full);
out:
        free(tmp);
        free(full);
        return r;
}

static int remove_file(vfio *v, const char *path) {
        char *full = NULL;
        int r = v->host->sysroot_path(v->ctx, path, &full);
        if (r < 0)
                return r;
        r = unlink(full) < 0 && errno != ENOENT ? -errno : 0;
        if (r == 0)
                r = fsync_dir(full);
        free(full);
        return r;
}

/* ---- the store ---- */

static int count_row(void *userdata, int n, const char *const *c, const char *const *names) {
        int64_t *out = userdata;
        *out = n > 0 && c[0] ? strtoll(c[0], NULL, 10) : 0;
        return 0;
}

int vfio_store_open(vfio *v) {
        int r = v->host->store_exec(v->ctx, VFIO_SQL_SCHEMA, NULL, 0);
        v->store_ok = r >= 0;
        v->active = 0;
        if (r >= 0)
                r = v->host->store_query(v->ctx, VFIO_SQL_COUNT_ACTIVE, NULL, 0, count_row, &v->active);
        return r;
}

bool vfio_store_active(vfio *v) {
        return v->active > 0;
}

static int record(vfio_job *j, const char *kind, const char *target, const char *before, const char *after,
                  const char *backup) {
        vfio *v = j->v;
        char ts[40];
        vfio_rfc3339(v, ts, sizeof ts);
        const char *p[] = {ts, kind, target, v->cfg.vmid_text, before, after, backup};
        int r = v->store_ok ? v->host->store_exec(v->ctx, VFIO_SQL_INSERT, p, 7) : -ENODEV;
        if (r >= 0)
                v->active++;
        else
                v->host->log(v->ctx, ORG_LOG_ERR, "cannot record the change of %s (%s): rollback will not know it",
                             target, strerror(-r));
        return r;
}

/* ---- jobs ---- */

void vfio_job_free(vfio_job *j) {
        if (!j)
                return;
        free(j->reply);
        json_decref(j->plan);
        json_decref(j->steps);
        json_decref(j->done);
        json_decref(j->written);
        json_decref(j->rows);
        free(j);
}

static vfio_job *job_new(vfio *v, job_kind kind, const char *reply) {
        vfio_job *j = calloc(1, sizeof *j);
        if (!j)
                return NULL;
        j->v = v;
        j->kind = kind;
        j->reply = reply ? strdup(reply) : NULL;
        j->steps = json_array();
        j->done = json_array();
        j->written = json_array();
        time_t t = (time_t)(v->host->now_realtime_us(v->ctx) / 1000000);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || strftime(j->stamp, sizeof j->stamp, "%Y%m%dT%H%M%SZ", &tm) == 0)
                snprintf(j->stamp, sizeof j->stamp, "unknown");
        return j;
}

static json_t *error_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Ends the job: answers o (stolen; NULL = no answer), refreshes the state. */
static void job_finish(vfio_job *j, json_t *o) {
        vfio *v = j->v;
        if (v->job == j)
                v->job = NULL;
        /* the state first: the answer is then the last message, and says the same */
        vfio_refresh_state(v, false);
        if (j->reply && o)
                vfio_respond(v, j->reply, o);
        else
                json_decref(o);
        vfio_job_free(j);
        if (v->pending_reply && !v->job) {
                char *reply = v->pending_reply;
                int kind = v->pending_kind;
                v->pending_reply = NULL;
                int r = kind == 3 ? vfio_job_rollback(v, reply)
                                  : vfio_job_plan(v, reply, kind == 2, v->pending_replace);
                if (r < 0)
                        vfio_respond(v, reply, error_reply("cannot start: %s", strerror(-r)));
                free(reply);
        }
}

static json_t *error_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *error_reply(const char *fmt, ...) {
        char buf[600];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        return json_pack("{s:s}", "error", buf);
}

static void run_next(vfio_job *j);

static void argv_line(json_t *argv, char *buf, size_t size) {
        buf[0] = '\0';
        for (size_t i = 0; i < json_array_size(argv); i++) {
                size_t u = strlen(buf);
                snprintf(buf + u, size - u, "%s%s", i ? " " : "", json_string_value(json_array_get(argv, i)));
        }
}

/* A `qm set VMID --hostpciN VALUE` / `--delete hostpciN` that succeeded, applied to the
 * VM's config as last read: the state's hostpci mapping follows without asking qm again. */
static void qm_config_follow(vfio *v, json_t *argv) {
        const char *a1 = json_string_value(json_array_get(argv, 1));
        const char *opt = json_string_value(json_array_get(argv, 3));
        const char *val = json_string_value(json_array_get(argv, 4));
        if (!v->qm_config || !a1 || strcmp(a1, "set") != 0 || !opt || !val || strncmp(opt, "--", 2) != 0)
                return;
        bool del = strcmp(opt, "--delete") == 0;
        const char *key = del ? val : opt + 2;
        size_t klen = strlen(key), len = strlen(v->qm_config);
        char *out = malloc(len + klen + strlen(val) + 8);
        if (!out)
                return;
        size_t o = 0;
        for (const char *l = v->qm_config; *l;) {
                size_t n = strcspn(l, "\n");
                bool nl = l[n] == '\n';
                if (!(n > klen && strncmp(l, key, klen) == 0 && l[klen] == ':')) {
                        memcpy(out + o, l, n);
                        o += n;
                        out[o++] = '\n';
                }
                l += n + nl;
        }
        if (!del)
                o += (size_t)snprintf(out + o, klen + strlen(val) + 4, "%s: %s\n", key, val);
        out[o] = '\0';
        free(v->qm_config);
        v->qm_config = out;
}

static void on_step(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        vfio_job *j = userdata;
        vfio *v = j->v;
        json_t *step = json_array_get(j->steps, j->next);
        json_t *argv = json_object_get(step, "argv");
        char line[512];
        argv_line(argv, line, sizeof line);
        json_array_append_new(
                j->done, json_pack("{s:s, s:i, s:b}", "command", line, "status", res->status, "dry_run", res->dry_run));
        if (!res->dry_run && (res->status != 0 || res->timed_out)) {
                char err[300];
                snprintf(err, sizeof err, "%.*s", (int)strcspn(res->err ? res->err : "", "\n"),
                         res->err ? res->err : "");
                v->host->log(v->ctx, ORG_LOG_ERR, "%s failed (%s %d): %s", line,
                             res->timed_out ? "timed out," : "status", res->status, err);
                json_t *o = error_reply("%s failed (%s %d): %s; what ran before is recorded (rollback takes it back)",
                                        line, res->timed_out ? "timed out," : "status", res->status, err);
                json_object_set(o, "ran", j->done);
                json_object_set(o, "written", j->written);
                job_finish(j, o);
                return;
        }
        json_t *rec = json_object_get(step, "record");
        if (!res->dry_run && strcmp(json_string_value(json_array_get(argv, 0)), "qm") == 0)
                qm_config_follow(v, argv);
        if (json_is_object(rec) && !res->dry_run) {
                if (j->kind == JOB_APPLY)
                        record(j, "hostpci", json_string_value(json_object_get(rec, "target")),
                               json_string_value(json_object_get(rec, "before")),
                               json_string_value(json_object_get(rec, "after")), NULL);
                else {
                        const char *ids = json_string_value(json_object_get(rec, "ids"));
                        const char *p[] = {ids};
                        v->host->store_exec(v->ctx, VFIO_SQL_UNDO_LIST, p, 1);
                        vfio_store_open(v);
                }
        }
        if (res->dry_run)
                v->host->log(v->ctx, ORG_LOG_NOTICE, "dry_run, would run: %s", line);
        else
                v->host->log(v->ctx, ORG_LOG_NOTICE, "ran: %s", line);
        j->next++;
        run_next(j);
}

static void run_next(vfio_job *j) {
        vfio *v = j->v;
        if (j->next >= json_array_size(j->steps)) {
                bool dry = v->host->dry_run(v->ctx);
                json_t *o = json_pack("{s:b, s:s, s:b, s:O, s:O}", "ok", 1, "verb", job_names[j->kind], "dry_run", dry,
                                      "written", j->written, "ran", j->done);
                if (j->plan)
                        json_object_set(o, "plan", j->plan);
                v->host->log(v->ctx, ORG_LOG_NOTICE, "%s%s done: %zu file(s), %zu command(s)", dry ? "dry_run, " : "",
                             job_names[j->kind], json_array_size(j->written), json_array_size(j->done));
                job_finish(j, o);
                return;
        }
        json_t *argv = json_object_get(json_array_get(j->steps, j->next), "argv");
        const char *args[16] = {0};
        for (size_t i = 0; i < json_array_size(argv) && i < 15; i++)
                args[i] = json_string_value(json_array_get(argv, i));
        bool initramfs = strcmp(args[0], "update-initramfs") == 0;
        org_exec_spec spec = {.argv = args,
                              .timeout_ms = initramfs ? v->cfg.initramfs_timeout_ms : v->cfg.qm_timeout_ms,
                              .capture_max = 16384,
                              .mutating = true};
        int r = v->host->exec(v->ctx, &spec, on_step, j, NULL);
        if (r < 0) {
                char line[512];
                argv_line(argv, line, sizeof line);
                job_finish(j, error_reply("cannot run %s: %s%s", line, strerror(-r),
                                          r == -ENOENT ? " (not in agent.commands)" : ""));
        }
}

/* The binding files of the plan: backup, write or remove, record. */
static int write_files(vfio_job *j, char *err, size_t err_size) {
        vfio *v = j->v;
        bool dry = v->host->dry_run(v->ctx);
        json_t *files = json_object_get(j->plan, "files");
        for (size_t i = 0; i < json_array_size(files); i++) {
                json_t *f = json_array_get(files, i);
                const char *action = json_string_value(json_object_get(f, "action"));
                const char *path = json_string_value(json_object_get(f, "path"));
                const char *want = json_string_value(json_object_get(f, "want"));
                if (strcmp(action, "create") != 0 && strcmp(action, "replace") != 0 && strcmp(action, "remove") != 0)
                        continue;
                if (dry) {
                        v->host->log(v->ctx, ORG_LOG_NOTICE, "dry_run, would %s %s", action, path);
                        json_array_append_new(
                                j->written, json_pack("{s:s, s:s, s:b}", "path", path, "action", action, "dry_run", 1));
                        continue;
                }
                /* read before write: what is there now, not what the plan saw */
                char *have = NULL;
                int r = vfio_read(v, path, &have);
                if (r < 0 && r != -ENOENT) {
                        snprintf(err, err_size, "cannot read %s: %s", path, strerror(-r));
                        return r;
                }
                char backup[400] = "";
                if (have) {
                        for (int k = 0; k < 100; k++) {
                                char *probe = NULL;
                                snprintf(backup, sizeof backup, "%s.organism-%s%s%.0d.bak", path, j->stamp,
                                         k ? "-" : "", k);
                                if (vfio_read(v, backup, &probe) == -ENOENT)
                                        break;
                                free(probe);
                        }
                        if ((r = vfio_write_atomic(v, backup, have)) < 0) {
                                free(have);
                                snprintf(err, err_size, "cannot write the backup %s: %s", backup, strerror(-r));
                                return r;
                        }
                }
                r = want ? vfio_write_atomic(v, path, want) : remove_file(v, path);
                if (r < 0) {
                        free(have);
                        snprintf(err, err_size, "cannot %s %s: %s", want ? "write" : "remove", path, strerror(-r));
                        return r;
                }
                record(j, "file", path, have, want, backup[0] ? backup : NULL);
                v->host->log(v->ctx, ORG_LOG_NOTICE, "%s %s%s%s", want ? "wrote" : "removed", path,
                             backup[0] ? ", backup " : "", backup);
                json_array_append_new(j->written, json_pack("{s:s, s:s, s:o}", "path", path, "action", action, "backup",
                                                            backup[0] ? json_string(backup) : json_null()));
                free(have);
        }
        return 0;
}

static void build_steps(vfio_job *j) {
        json_t *vm = json_object_get(j->plan, "vm");
        bool changed = json_array_size(j->written) > 0;
        if (changed && j->v->cfg.initramfs)
                json_array_append_new(j->steps,
                                      json_pack("{s:[s,s,s,s]}", "argv", "update-initramfs", "-u", "-k", "all"));
        json_t *lists[] = {json_object_get(vm, "delete"), json_object_get(vm, "assign")};
        for (size_t l = 0; l < 2; l++)
                for (size_t i = 0; i < json_array_size(lists[l]); i++) {
                        json_t *a = json_array_get(lists[l], i);
                        json_t *argv = json_object_get(a, "argv");
                        if (!argv)
                                continue; /* already in the VM */
                        json_array_append_new(
                                j->steps,
                                json_pack("{s:O, s:{s:s, s:o, s:o}}", "argv", argv, "record", "target",
                                          json_string_value(json_object_get(a, "hostpci")), "before",
                                          json_incref(json_object_get(a, "before") ? json_object_get(a, "before")
                                                                                   : json_null()),
                                          "after", l == 0 ? json_null() : json_incref(json_object_get(a, "value"))));
                }
}

/* qm config is known (or failed): plan, and for apply go on. */
static void after_config(vfio_job *j) {
        vfio *v = j->v;
        vfio_inventory inv;
        char err[300];
        int r = vfio_inventory_take(v, &inv, err, sizeof err);
        if (r < 0) {
                job_finish(j, error_reply("cannot enumerate PCI: %s", err));
                return;
        }
        json_t *plan = NULL;
        r = vfio_plan_build(v, &inv, v->qm_config, v->qm_error, j->replace, &plan);
        if (r < 0) {
                vfio_inventory_done(&inv);
                job_finish(j, error_reply("cannot build the plan: %s", strerror(-r)));
                return;
        }
        vfio_inventory_done(&v->inv);
        v->inv = inv;
        v->has_inv = true;
        json_decref(v->last_plan);
        v->last_plan = json_incref(plan);
        j->plan = plan;
        if (j->kind == JOB_REFRESH) {
                job_finish(j, NULL);
                return;
        }
        if (j->kind == JOB_PLAN) {
                json_t *o = json_deep_copy(plan);
                json_object_set_new(o, "confirm_needed", json_true());
                job_finish(j, o);
                return;
        }
        if (!json_is_true(json_object_get(plan, "ok"))) {
                json_t *o = error_reply("plan refused, nothing written: %s",
                                        json_string_value(json_array_get(json_object_get(plan, "errors"), 0)));
                json_object_set(o, "plan", plan);
                job_finish(j, o);
                return;
        }
        if ((r = write_files(j, err, sizeof err)) < 0) {
                json_t *o = error_reply("%s; what was written before is recorded (rollback takes it back)", err);
                json_object_set(o, "written", j->written);
                job_finish(j, o);
                return;
        }
        build_steps(j);
        run_next(j);
}

/* The value of hostpciN in the last qm config, or NULL. */
static char *qm_value(const char *config, const char *key) {
        size_t klen = strlen(key);
        for (const char *l = config; l && *l;) {
                size_t len = strcspn(l, "\n");
                if (len > klen + 1 && strncmp(l, key, klen) == 0 && l[klen] == ':') {
                        const char *s = l + klen + 1;
                        while (*s == ' ')
                                s++;
                        return strndup(s, (size_t)(l + len - s));
                }
                l += len + (l[len] == '\n');
        }
        return NULL;
}

/* Rollback's hostpci steps whose entry was changed by someone else are dropped. */
static void rollback_check_vm(vfio_job *j) {
        vfio *v = j->v;
        if (!v->qm_config)
                return;
        for (size_t i = 0; i < json_array_size(j->steps);) {
                json_t *rec = json_object_get(json_array_get(j->steps, i), "record");
                const char *target = json_string_value(json_object_get(rec, "target"));
                const char *now = json_string_value(json_object_get(rec, "now"));
                if (!target) {
                        i++;
                        continue;
                }
                char *have = qm_value(v->qm_config, target);
                bool ok = now ? have && strcmp(have, now) == 0 : !have;
                if (!ok) {
                        v->host->log(v->ctx, ORG_LOG_WARNING, "VM %s %s is now %s, not what apply set: left alone",
                                     v->cfg.vmid_text, target, have ? have : "absent");
                        const char *p[] = {json_string_value(json_object_get(rec, "ids"))};
                        v->host->store_exec(v->ctx, VFIO_SQL_UNDO_LIST, p, 1);
                        json_array_remove(j->steps, i);
                } else
                        i++;
                free(have);
        }
}

static void on_qm_config(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        vfio_job *j = userdata;
        vfio *v = j->v;
        free(v->qm_config);
        v->qm_config = NULL;
        v->qm_error[0] = '\0';
        if (res->status != 0 || res->timed_out)
                snprintf(v->qm_error, sizeof v->qm_error, "qm config %s failed (%s %d): %.*s", v->cfg.vmid_text,
                         res->timed_out ? "timed out," : "status", res->status,
                         (int)strcspn(res->err ? res->err : "", "\n"), res->err ? res->err : "");
        else if (res->out_truncated)
                snprintf(v->qm_error, sizeof v->qm_error, "qm config %s: output too long", v->cfg.vmid_text);
        else
                v->qm_config = strdup(res->out ? res->out : "");
        if (j->kind == JOB_ROLLBACK) {
                rollback_check_vm(j);
                vfio_store_open(v);
                run_next(j);
                return;
        }
        after_config(j);
}

static int start_config(vfio_job *j) {
        vfio *v = j->v;
        if (v->cfg.vmid <= 0) {
                after_config(j);
                return 0;
        }
        const char *argv[] = {"qm", "config", v->cfg.vmid_text, NULL};
        org_exec_spec spec = {.argv = argv, .timeout_ms = v->cfg.qm_timeout_ms, .capture_max = 65536};
        int r = v->host->exec(v->ctx, &spec, on_qm_config, j, NULL);
        if (r < 0) {
                free(v->qm_config);
                v->qm_config = NULL;
                snprintf(v->qm_error, sizeof v->qm_error, "cannot run qm: %s%s", strerror(-r),
                         r == -ENOENT ? " (not in agent.commands)" : "");
                if (j->kind == JOB_ROLLBACK)
                        run_next(j);
                else
                        after_config(j);
        }
        return 0;
}

/* A verb during the start refresh waits for it (one at most); otherwise busy. */
static int job_defer(vfio *v, int kind, const char *reply, bool replace) {
        if (!v->job || v->job->kind != JOB_REFRESH || v->pending_reply || !reply)
                return -EBUSY;
        v->pending_reply = strdup(reply);
        if (!v->pending_reply)
                return -ENOMEM;
        v->pending_kind = kind;
        v->pending_replace = replace;
        return 0;
}

static int job_start(vfio *v, job_kind kind, const char *reply, bool replace) {
        if (v->job)
                return kind == JOB_REFRESH ? -EBUSY : job_defer(v, kind == JOB_APPLY ? 2 : 1, reply, replace);
        vfio_job *j = job_new(v, kind, reply);
        if (!j)
                return -ENOMEM;
        j->replace = replace;
        v->job = j;
        /* the callbacks may run before exec returns (they do in the fake host) */
        return start_config(j);
}

int vfio_job_plan(vfio *v, const char *reply_subject, bool apply, bool replace) {
        return job_start(v, apply ? JOB_APPLY : JOB_PLAN, reply_subject, replace);
}

int vfio_job_refresh(vfio *v) {
        return job_start(v, JOB_REFRESH, NULL, false);
}

/* ---- rollback ---- */

static int row_collect(void *userdata, int n, const char *const *c, const char *const *names) {
        json_t *a = userdata;
        if (n < 7)
                return -EINVAL;
        json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o}", "id", c[0] ? c[0] : "", "kind", c[1] ? c[1] : "",
                              "target", c[2] ? c[2] : "", "vmid", c[3] ? json_string(c[3]) : json_null(), "before",
                              c[4] ? json_string(c[4]) : json_null(), "after", c[5] ? json_string(c[5]) : json_null(),
                              "backup", c[6] ? json_string(c[6]) : json_null());
        return o && json_array_append_new(a, o) == 0 ? 0 : -ENOMEM;
}

/* Per target: the newest row's after is what must be there now, the oldest row's before
 * is what goes back; "ids" lists every row merged. */
static json_t *merge_rows(json_t *rows) {
        json_t *by = json_object(), *order = json_array();
        for (size_t i = 0; i < json_array_size(rows); i++) { /* newest first */
                json_t *r = json_array_get(rows, i);
                char key[400];
                snprintf(key, sizeof key, "%s|%s|%s", json_string_value(json_object_get(r, "kind")),
                         json_string_value(json_object_get(r, "vmid")) ? json_string_value(json_object_get(r, "vmid"))
                                                                       : "",
                         json_string_value(json_object_get(r, "target")));
                json_t *m = json_object_get(by, key);
                if (!m) {
                        m = json_pack("{s:O, s:O, s:O, s:O, s:O, s:s}", "kind", json_object_get(r, "kind"), "target",
                                      json_object_get(r, "target"), "vmid", json_object_get(r, "vmid"), "now",
                                      json_object_get(r, "after"), "restore", json_object_get(r, "before"), "ids",
                                      json_string_value(json_object_get(r, "id")));
                        json_object_set_new(m, "backup", json_incref(json_object_get(r, "backup")));
                        json_object_set_new(by, key, m);
                        json_array_append(order, m);
                } else {
                        char ids[2048];
                        snprintf(ids, sizeof ids, "%s,%s", json_string_value(json_object_get(m, "ids")),
                                 json_string_value(json_object_get(r, "id")));
                        json_object_set_new(m, "ids", json_string(ids));
                        json_object_set(m, "restore", json_object_get(r, "before"));
                        json_object_set(m, "backup", json_object_get(r, "backup"));
                }
        }
        json_decref(by);
        return order;
}

int vfio_job_rollback(vfio *v, const char *reply_subject) {
        if (v->job)
                return job_defer(v, 3, reply_subject, false);
        if (!v->store_ok) {
                vfio_respond(v, reply_subject, error_reply("the store is unavailable: nothing known to roll back"));
                return 0;
        }
        vfio_job *j = job_new(v, JOB_ROLLBACK, reply_subject);
        if (!j)
                return -ENOMEM;
        j->rows = json_array();
        int r = v->host->store_query(v->ctx, VFIO_SQL_ACTIVE, NULL, 0, row_collect, j->rows);
        if (r < 0) {
                vfio_job_free(j);
                vfio_respond(v, reply_subject, error_reply("cannot read the store: %s", strerror(-r)));
                return 0;
        }
        json_t *targets = merge_rows(j->rows);
        bool dry = v->host->dry_run(v->ctx);
        /* files first, all checked before any is touched */
        json_t *refused = json_array();
        for (size_t i = 0; i < json_array_size(targets); i++) {
                json_t *t = json_array_get(targets, i);
                if (strcmp(json_string_value(json_object_get(t, "kind")), "file") != 0)
                        continue;
                const char *path = json_string_value(json_object_get(t, "target"));
                const char *now = json_string_value(json_object_get(t, "now"));
                char *have = NULL;
                int rr = vfio_read(v, path, &have);
                bool ok = now ? rr >= 0 && strcmp(have, now) == 0 : rr == -ENOENT;
                free(have);
                if (!ok) {
                        char line[400];
                        snprintf(line, sizeof line, "%s changed since apply wrote it", path);
                        json_array_append_new(refused, json_string(line));
                }
        }
        if (json_array_size(refused)) {
                json_t *o = error_reply("rollback refused, nothing changed: %s",
                                        json_string_value(json_array_get(refused, 0)));
                json_object_set_new(o, "refused", refused);
                json_decref(targets);
                vfio_job_free(j);
                vfio_respond(v, reply_subject, o);
                return 0;
        }
        json_decref(refused);
        bool files = false;
        for (size_t i = 0; i < json_array_size(targets); i++) {
                json_t *t = json_array_get(targets, i);
                const char *kind = json_string_value(json_object_get(t, "kind"));
                const char *target = json_string_value(json_object_get(t, "target"));
                const char *restore = json_string_value(json_object_get(t, "restore"));
                const char *ids = json_string_value(json_object_get(t, "ids"));
                if (strcmp(kind, "file") == 0) {
                        files = true;
                        if (dry) {
                                v->host->log(v->ctx, ORG_LOG_NOTICE, "dry_run, would %s %s",
                                             restore ? "restore" : "remove", target);
                                json_array_append_new(j->written,
                                                      json_pack("{s:s, s:s, s:b}", "path", target, "action",
                                                                restore ? "restore" : "remove", "dry_run", 1));
                                continue;
                        }
                        /* from the backup when it still holds what was there, else the store's copy */
                        const char *backup = json_string_value(json_object_get(t, "backup"));
                        char *bak = NULL;
                        bool from_backup =
                                backup && restore && vfio_read(v, backup, &bak) >= 0 && strcmp(bak, restore) == 0;
                        free(bak);
                        r = restore ? vfio_write_atomic(v, target, restore) : remove_file(v, target);
                        if (r < 0) {
                                json_t *o = error_reply("cannot %s %s: %s", restore ? "restore" : "remove", target,
                                                        strerror(-r));
                                json_object_set(o, "written", j->written);
                                json_decref(targets);
                                vfio_job_free(j);
                                vfio_respond(v, reply_subject, o);
                                vfio_store_open(v);
                                return 0;
                        }
                        const char *p[] = {ids};
                        v->host->store_exec(v->ctx, VFIO_SQL_UNDO_LIST, p, 1);
                        v->host->log(v->ctx, ORG_LOG_NOTICE, "%s %s%s", restore ? "restored" : "removed", target,
                                     restore ? (from_backup ? " from its backup" : " from the store's copy") : "");
                        json_array_append_new(j->written, json_pack("{s:s, s:s, s:o}", "path", target, "action",
                                                                    restore ? "restore" : "remove", "backup",
                                                                    from_backup ? json_string(backup) : json_null()));
                } else {
                        const char *vmid = json_string_value(json_object_get(t, "vmid"));
                        char opt[40];
                        snprintf(opt, sizeof opt, "--%s", target);
                        json_t *argv = restore ? json_pack("[s,s,s,s,s]", "qm", "set", vmid, opt, restore)
                                               : json_pack("[s,s,s,s,s]", "qm", "set", vmid, "--delete", target);
                        json_array_append_new(j->steps, json_pack("{s:o, s:{s:s, s:s, s:o}}", "argv", argv, "record",
                                                                  "ids", ids, "target", target, "now",
                                                                  json_incref(json_object_get(t, "now"))));
                }
        }
        if (files && v->cfg.initramfs)
                json_array_insert_new(j->steps, 0,
                                      json_pack("{s:[s,s,s,s]}", "argv", "update-initramfs", "-u", "-k", "all"));
        json_decref(targets);
        if (!dry)
                vfio_store_open(v);
        v->job = j;
        /* the VM's entries must still be what apply set: read qm config first */
        bool qm = false;
        for (size_t i = 0; i < json_array_size(j->steps); i++)
                qm = qm ||
                     strcmp(json_string_value(json_array_get(json_object_get(json_array_get(j->steps, i), "argv"), 0)),
                            "qm") == 0;
        if (!qm) {
                run_next(j);
                return 0;
        }
        const char *argv[] = {"qm", "config", v->cfg.vmid_text, NULL};
        org_exec_spec spec = {.argv = argv, .timeout_ms = v->cfg.qm_timeout_ms, .capture_max = 65536};
        if (v->host->exec(v->ctx, &spec, on_qm_config, j, NULL) < 0)
                run_next(j);
        return 0;
}
