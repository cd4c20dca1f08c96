/* tasks.c — the worker side of maestro's protocol: tasks from gpu.task.run.<gpu>,
 * cancels from gpu.task.cancel.<gpu>, results on gpu.task.{running,done,err}.
 *
 * Everything from the bus is bounded and checked before anything runs: the payload's
 * size, task_id's charset (it becomes a directory name), argv, env keys (no LD_*), the
 * cwd (under task_root after resolving, created without following symlinks), the
 * timeout (capped). A task runs as the configured unprivileged user, never root, with a
 * minimal environment, in its own cgroup where one can be had, output capped while it
 * streams (core's exec). One task at a time per GPU: a task for a busy GPU is refused
 * with "busy", never queued silently. Results are kept in the store by task_id, so a
 * re-delivered task that is done is answered from there and never runs twice. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpuworker.h"
#include "gpuworker_sql.h"

#define GPUW_TASK_PATH    "/usr/local/bin:/usr/bin:/bin"
#define GPUW_KEEP_RESULTS "1000"

struct gpuw_task {
        gpuw *w;
        gpuw_gpu *g;
        char id[GPUW_TASK_ID_MAX + 1];
        int64_t attempt;
        char type[8];
        char cwd[PATH_MAX];
        uint64_t exec_id;
        pid_t pid;
        bool cgroup;
        uint64_t started_us; /* realtime */
        uint64_t start_mono_us;
        uint64_t timeout_ms;
};

bool gpuw_task_id_valid(const char *id) {
        size_t n = 0;
        for (const char *p = id; *p; p++, n++) {
                char c = *p;
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-'))
                        return false;
        }
        /* "." and ".." are in the charset but would name a directory above the task's. */
        return n >= 1 && n <= GPUW_TASK_ID_MAX && strcmp(id, ".") != 0 && strcmp(id, "..") != 0;
}

const char *gpuw_task_id(const gpuw_task *t) {
        return t ? t->id : NULL;
}

gpuw_gpu *gpuw_gpu_by_token(gpuw *w, const char *token) {
        if (!token)
                return NULL;
        if (strncmp(token, "gpu", 3) == 0)
                token += 3;
        if (!*token || strlen(token) > 3)
                return NULL;
        unsigned v = 0;
        for (const char *p = token; *p; p++) {
                if (*p < '0' || *p > '9')
                        return NULL;
                v = v * 10 + (unsigned)(*p - '0');
        }
        if (token[0] == '0' && token[1])
                return NULL; /* "03" is not a name of gpu3 */
        for (size_t i = 0; i < w->n_gpus; i++)
                if (w->gpus[i].index == v)
                        return &w->gpus[i];
        return NULL;
}

static gpuw_task *task_find(gpuw *w, const char *id) {
        for (size_t i = 0; i < w->n_gpus; i++)
                if (w->gpus[i].task && strcmp(w->gpus[i].task->id, id) == 0)
                        return w->gpus[i].task;
        return NULL;
}

/* A JSON string of bytes that may not be UTF-8: invalid sequences become U+FFFD. */
static json_t *json_bytes(const char *s, size_t n) {
        json_t *j = json_stringn(s, n);
        if (j)
                return j;
        char *buf = malloc(n * 3 + 1);
        if (!buf)
                return json_string("");
        size_t o = 0;
        for (size_t i = 0; i < n;) {
                unsigned char c = (unsigned char)s[i];
                size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
                bool ok = len > 0 && i + len <= n;
                for (size_t k = 1; ok && k < len; k++)
                        ok = ((unsigned char)s[i + k] >> 6) == 2;
                if (ok && len > 1) {
                        /* overlong forms and surrogates are refused by jansson too */
                        json_t *t = json_stringn(s + i, len);
                        ok = t != NULL;
                        json_decref(t);
                }
                if (ok) {
                        memcpy(buf + o, s + i, len);
                        o += len;
                        i += len;
                } else {
                        memcpy(buf + o, "\xef\xbf\xbd", 3);
                        o += 3;
                        i++;
                }
        }
        j = json_stringn(buf, o);
        free(buf);
        return j ? j : json_string("");
}

/* The fields every task payload carries. */
static json_t *base_payload(gpuw *w, const char *task_id, int64_t attempt, const gpuw_gpu *g) {
        char ts[40];
        json_t *o = json_object();
        json_object_set_new(o, "task_id", task_id ? json_string(task_id) : json_null());
        json_object_set_new(o, "attempt", json_integer(attempt));
        json_object_set_new(o, "gpu", g ? json_integer(g->index) : json_null());
        json_object_set_new(o, "pci", g ? json_string(g->dev.pci) : json_null());
        json_object_set_new(o, "agent", json_string(w->host->agent_name(w->ctx)));
        json_object_set_new(o, "ts", json_string(gpuw_ts(w, ts, sizeof ts)));
        return o;
}

/* gpu.worker.log: the worker's own journal of task starts and ends (SPEC §4), with
 * what the results do not say (cwd, cgroup, pid) and without the output. */
static void worker_log(gpuw *w, const gpuw_task *t, const char *event, const char *detail) {
        json_t *o = base_payload(w, t->id, t->attempt, t->g);
        json_object_set_new(o, "event", json_string(event));
        json_object_set_new(o, "pid", json_integer(t->pid));
        json_object_set_new(o, "cgroup", json_boolean(t->cgroup));
        json_object_set_new(o, "cwd", json_string(t->cwd));
        if (detail)
                json_object_set_new(o, "detail", json_string(detail));
        gpuw_publish(w, "gpu.worker.log", o);
}

/* Refuses a task: gpu.task.err with the reason, a log line, a counter. */
static void refuse(gpuw *w, const char *task_id, int64_t attempt, const gpuw_gpu *g, const char *error) {
        w->tasks_refused++;
        w->host->metric_add(w->ctx, "gpuworker_tasks_refused_total", 1, "tasks refused before they ran");
        w->host->log(w->ctx, ORG_LOG_WARNING, "task %s: refused: %s", task_id ? task_id : "(no valid task_id)", error);
        json_t *o = base_payload(w, task_id, attempt, g);
        json_object_set_new(o, "error", json_string(error));
        gpuw_publish(w, "gpu.task.err", o);
}

/* ---- the store ---------------------------------------------------------------- */

typedef struct lookup {
        bool found;
        char state[16];
        char *result;
        int64_t attempt;
} lookup;

static int lookup_row(void *userdata, int n, const char *const *cols, const char *const *names) {
        lookup *l = userdata;
        l->found = true;
        gpuw_copy(l->state, sizeof l->state, cols[0] ? cols[0] : "");
        l->result = cols[1] ? strdup(cols[1]) : NULL;
        l->attempt = cols[2] ? strtoll(cols[2], NULL, 10) : 0;
        return 1;
}

int gpuw_tasks_init(gpuw *w) {
        int r = w->host->store_exec(w->ctx, GPUW_SQL_SCHEMA, NULL, 0);
        if (r < 0)
                return r;
        char now[24];
        snprintf(now, sizeof now, "%" PRIu64, w->host->now_realtime_us(w->ctx));
        const char *p[] = {now};
        (void)w->host->store_exec(w->ctx, GPUW_SQL_INTERRUPTED, p, 1);
        w->store_ok = true;
        return 0;
}

static void store_start(gpuw *w, const gpuw_task *t) {
        char attempt[24], gpu[16], started[24];
        snprintf(attempt, sizeof attempt, "%" PRId64, t->attempt);
        snprintf(gpu, sizeof gpu, "%u", t->g->index);
        snprintf(started, sizeof started, "%" PRIu64, t->started_us);
        const char *p[] = {t->id, attempt, gpu, t->g->dev.pci, started};
        if (w->store_ok)
                (void)w->host->store_exec(w->ctx, GPUW_SQL_START, p, 5);
}

static void store_finish(gpuw *w, const gpuw_task *t, bool done, const char *error, const json_t *rc,
                         uint64_t duration_ms, const json_t *result) {
        if (!w->store_ok)
                return;
        char rcs[24] = "", dur[24], fin[24];
        if (json_is_integer(rc))
                snprintf(rcs, sizeof rcs, "%" JSON_INTEGER_FORMAT, json_integer_value(rc));
        snprintf(dur, sizeof dur, "%" PRIu64, duration_ms);
        snprintf(fin, sizeof fin, "%" PRIu64, w->host->now_realtime_us(w->ctx));
        char *text = json_dumps(result, JSON_COMPACT);
        const char *p[] = {t->id, done ? "done" : "err", error, rcs[0] ? rcs : NULL, dur, text, fin};
        (void)w->host->store_exec(w->ctx, GPUW_SQL_FINISH, p, 7);
        free(text);
        const char *keep[] = {GPUW_KEEP_RESULTS};
        (void)w->host->store_exec(w->ctx, GPUW_SQL_PRUNE, keep, 1);
}

/* ---- results ------------------------------------------------------------------ */

static void task_free(gpuw_task *t) {
        free(t);
}

/* Publishes the result, stores it, frees the GPU. out/err may be NULL (cancelled: the
 * job and its buffers are gone). */
static void task_finish(gpuw_task *t, const org_exec_result *res, const char *forced_error) {
        gpuw *w = t->w;
        gpuw_gpu *g = t->g;
        uint64_t duration_ms =
                res ? res->duration_us / 1000 : (w->host->now_monotonic_us(w->ctx) - t->start_mono_us) / 1000;
        char error[96] = "";
        json_t *rc = json_null();
        bool done = false;
        if (forced_error)
                gpuw_copy(error, sizeof error, forced_error);
        else if (res->timed_out)
                snprintf(error, sizeof error, "timeout after %" PRIu64 " s", t->timeout_ms / 1000);
        else if (res->status < 0) {
                snprintf(error, sizeof error, "killed by signal %d", -res->status);
        } else {
                rc = json_integer(res->status);
                done = res->status == 0;
                if (!done)
                        snprintf(error, sizeof error, "exit status %d", res->status);
        }

        json_t *o = base_payload(w, t->id, t->attempt, g);
        json_object_set_new(o, "type", json_string(t->type));
        json_object_set_new(o, "cwd", json_string(t->cwd));
        json_object_set_new(o, "returncode", json_incref(rc));
        if (!done)
                json_object_set_new(o, "error", json_string(error));
        json_object_set_new(o, "stdout", res ? json_bytes(res->out, res->out_len) : json_string(""));
        json_object_set_new(o, "stderr", res ? json_bytes(res->err, res->err_len) : json_string(""));
        json_object_set_new(o, "stdout_truncated", json_boolean(res && res->out_truncated));
        json_object_set_new(o, "stderr_truncated", json_boolean(res && res->err_truncated));
        json_object_set_new(o, "duration_ms", json_integer((json_int_t)duration_ms));
        json_object_set_new(o, "cgroup", json_boolean(t->cgroup));

        store_finish(w, t, done, done ? NULL : error, rc, duration_ms, o);
        json_decref(rc);
        w->host->log(w->ctx, done ? ORG_LOG_INFO : ORG_LOG_NOTICE,
                     "task %s (attempt %" PRId64 ") on gpu%u: %s in %" PRIu64 " ms", t->id, t->attempt, g->index,
                     done ? "done" : error, duration_ms);
        if (done)
                g->tasks_done++;
        else
                g->tasks_err++;
        w->host->metric_add(w->ctx, done ? "gpuworker_tasks_done_total" : "gpuworker_tasks_err_total", 1,
                            done ? "tasks that exited 0" : "tasks that failed, timed out or were cancelled");
        worker_log(w, t, "end", done ? "done" : error);
        gpuw_copy(g->last_task, sizeof g->last_task, t->id);
        g->last_attempt = t->attempt;
        g->task = NULL;
        if (g->state == GPUW_BUSY)
                g->state = GPUW_IDLE;
        task_free(t);
        gpuw_publish(w, done ? "gpu.task.done" : "gpu.task.err", o);
}

static void on_task_exit(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        gpuw_task *t = userdata;
        task_finish(t, res, NULL);
}

static void publish_running(gpuw *w, const gpuw_task *t) {
        json_t *o = base_payload(w, t->id, t->attempt, t->g);
        json_object_set_new(o, "pid", json_integer(t->pid));
        json_object_set_new(o, "cgroup", json_boolean(t->cgroup));
        gpuw_publish(w, "gpu.task.running", o);
}

void gpuw_tasks_running_tick(gpuw *w) {
        for (size_t i = 0; i < w->n_gpus; i++)
                if (w->gpus[i].task)
                        publish_running(w, w->gpus[i].task);
}

int gpuw_task_cancel(gpuw *w, const char *task_id, const char *error) {
        gpuw_task *t = task_find(w, task_id);
        if (!t)
                return -ENOENT;
        (void)w->host->exec_cancel(w->ctx, t->exec_id);
        task_finish(t, NULL, error);
        return 0;
}

void gpuw_task_fail_gpu(gpuw *w, gpuw_gpu *g, const char *error) {
        if (g->task) {
                (void)w->host->exec_cancel(w->ctx, g->task->exec_id);
                task_finish(g->task, NULL, error);
        }
}

void gpuw_tasks_fini(gpuw *w) {
        for (size_t i = 0; i < w->n_gpus; i++) {
                gpuw_task *t = w->gpus[i].task;
                /* Handed over on a reload: the new build adopted the command, so it is not
                 * ours any more (-ENOENT) and the new build reports it, once. */
                if (t && ORG_HOST_HAS(w->host, exec_adopt) &&
                    w->host->exec_info(w->ctx, t->exec_id, NULL, NULL) == -ENOENT) {
                        w->gpus[i].task = NULL;
                        task_free(t);
                } else if (t)
                        gpuw_task_fail_gpu(w, &w->gpus[i], "cancelled: the worker stopped");
        }
}

/* ---- preparing a task --------------------------------------------------------- */

/* Creates (without following symlinks) every directory of rel below root; the last one
 * 0750 and owned by the task user. Fills why on failure. */
static int make_cwd(gpuw *w, const char *rel, char *why, size_t why_len) {
        int dfd = open(w->task_root, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
        if (dfd < 0) {
                snprintf(why, why_len, "task_root %.160s: %.60s", w->task_root, strerror(errno));
                return -errno;
        }
        char buf[PATH_MAX];
        gpuw_copy(buf, sizeof buf, rel);
        char *save = buf;
        int r = 0;
        while (save && *save) {
                char *comp = save, *slash = strchr(save, '/');
                if (slash) {
                        *slash = '\0';
                        save = slash + 1;
                } else
                        save = NULL;
                if (!*comp)
                        continue;
                bool last = !save || !*save, created = true;
                if (mkdirat(dfd, comp, last ? 0750 : 0755) < 0) {
                        if (errno != EEXIST) {
                                r = -errno;
                                snprintf(why, why_len, "cwd: cannot create %.120s: %.60s", comp, strerror(errno));
                                break;
                        }
                        created = false;
                }
                int nfd = openat(dfd, comp, O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                if (nfd < 0) {
                        r = -errno;
                        snprintf(why, why_len, "cwd: %.120s is not a directory inside task_root (%.60s)", comp,
                                 errno == ELOOP || errno == ENOTDIR ? "a symlink or a file" : strerror(errno));
                        break;
                }
                close(dfd);
                dfd = nfd;
                /* agentd's umask (0027 under systemd) must not lock the task user out of
                 * the directories on the way to its own */
                if (created && !last)
                        (void)fchmod(dfd, 0755);
                if (last && w->set_ids && (fchown(dfd, w->uid, w->gid) < 0 || fchmod(dfd, 0750) < 0)) {
                        r = -errno;
                        snprintf(why, why_len, "cwd: cannot give it to %.60s: %.60s", w->user, strerror(errno));
                        break;
                }
        }
        close(dfd);
        return r;
}

/* Resolves the task's cwd into t->cwd (created). 0, or -EINVAL with why. */
static int task_cwd(gpuw *w, gpuw_task *t, json_t *cwd, char *why, size_t why_len) {
        char rel[PATH_MAX];
        size_t rl = strlen(w->task_root);
        if (!cwd || json_is_null(cwd))
                snprintf(rel, sizeof rel, "gpu%u/%s", t->g->index, t->id);
        else {
                const char *c = json_string_value(cwd);
                if (!c || !*c || strlen(c) >= sizeof rel - 1) {
                        snprintf(why, why_len, "cwd must be a path under task_root %.200s", w->task_root);
                        return -EINVAL;
                }
                /* absolute under task_root, or relative to it; no ".." anywhere */
                const char *r = c;
                if (c[0] == '/') {
                        if (strncmp(c, w->task_root, rl) != 0 || (c[rl] != '/' && c[rl] != '\0')) {
                                snprintf(why, why_len, "cwd %.120s is outside task_root %.120s", c, w->task_root);
                                return -EINVAL;
                        }
                        r = c + rl;
                        while (*r == '/')
                                r++;
                }
                for (const char *p = r; *p;) {
                        size_t n = strcspn(p, "/");
                        if ((n == 2 && p[0] == '.' && p[1] == '.')) {
                                snprintf(why, why_len, "cwd %.200s: '..' is not allowed", c);
                                return -EINVAL;
                        }
                        p += n;
                        while (*p == '/')
                                p++;
                }
                gpuw_copy(rel, sizeof rel, r);
        }
        int ret = *rel ? make_cwd(w, rel, why, why_len) : 0;
        if (ret < 0)
                return -EINVAL;
        char joined[PATH_MAX * 2], real[PATH_MAX];
        snprintf(joined, sizeof joined, "%s/%s", w->task_root, rel);
        if (!realpath(joined, real) || strncmp(real, w->task_root, rl) != 0 || (real[rl] != '/' && real[rl] != '\0')) {
                snprintf(why, why_len, "cwd %.120s resolves outside task_root %.120s", joined, w->task_root);
                return -EINVAL;
        }
        gpuw_copy(t->cwd, sizeof t->cwd, real);
        return 0;
}

static bool env_key_ok(const char *k) {
        if (!((k[0] >= 'A' && k[0] <= 'Z') || (k[0] >= 'a' && k[0] <= 'z') || k[0] == '_'))
                return false;
        size_t n = 0;
        for (const char *p = k; *p; p++, n++)
                if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
                        return false;
        return n <= 128;
}

/* Keys a task may not set: the loader's (LD_PRELOAD runs code in every process it
 * starts) and the ones the worker sets to tell the task where it runs. */
static bool env_key_reserved(const char *k) {
        return strncmp(k, "LD_", 3) == 0 || strcmp(k, "TASK_ID") == 0 || strncmp(k, "GPU_", 4) == 0;
}

typedef struct strv {
        char *v[GPUW_ARGV_MAX + GPUW_ENV_MAX * 2 + 16];
        size_t n;
} strv;

static int strv_add(strv *s, const char *k, const char *v) {
        if (s->n + 1 >= sizeof s->v / sizeof s->v[0])
                return -E2BIG;
        char *e = NULL;
        if (v) {
                size_t l = strlen(k) + strlen(v) + 2;
                e = malloc(l);
                if (e)
                        snprintf(e, l, "%s=%s", k, v);
        } else
                e = strdup(k);
        if (!e)
                return -ENOMEM;
        /* env: a later value for the same key replaces the earlier one */
        if (v) {
                size_t kl = strlen(k);
                for (size_t i = 0; i < s->n; i++)
                        if (strncmp(s->v[i], k, kl) == 0 && s->v[i][kl] == '=') {
                                free(s->v[i]);
                                s->v[i] = e;
                                return 0;
                        }
        }
        s->v[s->n++] = e;
        s->v[s->n] = NULL;
        return 0;
}

static void strv_clear(strv *s) {
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i]);
        s->n = 0;
}

/* A program name without a slash is looked up in the task's PATH. */
static int resolve_program(const char *name, char *ret, size_t len) {
        if (name[0] == '/') {
                gpuw_copy(ret, len, name);
                return 0;
        }
        if (strchr(name, '/'))
                return -EINVAL;
        const char *dirs[] = {"/usr/local/bin", "/usr/bin", "/bin"};
        for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
                snprintf(ret, len, "%s/%s", dirs[i], name);
                if (access(ret, X_OK) == 0)
                        return 0;
        }
        return -ENOENT;
}

static int build_env(gpuw *w, gpuw_task *t, json_t *env, strv *e, char *why, size_t why_len) {
        char idx[16], render[64];
        snprintf(idx, sizeof idx, "%u", t->g->index);
        snprintf(render, sizeof render, "/dev/dri/%s", t->g->dev.render);
        if (strv_add(e, "PATH", GPUW_TASK_PATH) < 0 || strv_add(e, "HOME", t->cwd) < 0 ||
            strv_add(e, "USER", w->user) < 0 || strv_add(e, "LOGNAME", w->user) < 0 ||
            strv_add(e, "LANG", "C.UTF-8") < 0)
                return -ENOMEM;
        const char *key;
        json_t *v;
        json_object_foreach (w->env, key, v)
                if (json_is_string(v) && env_key_ok(key) && strv_add(e, key, json_string_value(v)) < 0)
                        return -ENOMEM;
        if (env && !json_is_null(env)) {
                if (!json_is_object(env) || json_object_size(env) > GPUW_ENV_MAX) {
                        snprintf(why, why_len, "env must be an object of at most %d strings", GPUW_ENV_MAX);
                        return -EINVAL;
                }
                json_object_foreach (env, key, v) {
                        if (!env_key_ok(key) || env_key_reserved(key)) {
                                snprintf(why, why_len, "env key %.64s is not allowed", key);
                                return -EINVAL;
                        }
                        if (!json_is_string(v) || strlen(json_string_value(v)) > GPUW_ARG_MAX) {
                                snprintf(why, why_len, "env %.64s must be a string of at most %d bytes", key,
                                         GPUW_ARG_MAX);
                                return -EINVAL;
                        }
                        if (strv_add(e, key, json_string_value(v)) < 0)
                                return -ENOMEM;
                }
        }
        if (strv_add(e, "TASK_ID", t->id) < 0 || strv_add(e, "GPU_ID", idx) < 0 ||
            strv_add(e, "GPU_PCI", t->g->dev.pci) < 0 ||
            (t->g->dev.render[0] && strv_add(e, "GPU_RENDER_NODE", render) < 0))
                return -ENOMEM;
        return 0;
}

static int build_argv(gpuw *w, json_t *task, gpuw_task *t, strv *a, char *why, size_t why_len) {
        if (strcmp(t->type, "shell") == 0) {
                json_t *sh = json_object_get(task, "shell");
                const char *text = json_string_value(sh);
                if (!text || !*text || strlen(text) > 65536) {
                        snprintf(why, why_len, "shell must be a non-empty string of at most 65536 bytes");
                        return -EINVAL;
                }
                return strv_add(a, "/bin/sh", NULL) < 0 || strv_add(a, "-c", NULL) < 0 || strv_add(a, text, NULL) < 0
                               ? -ENOMEM
                               : 0;
        }
        json_t *cmd = json_object_get(task, "cmd");
        if (!json_is_array(cmd) || json_array_size(cmd) == 0 || json_array_size(cmd) > GPUW_ARGV_MAX) {
                snprintf(why, why_len, "cmd must be an array of 1 to %d strings", GPUW_ARGV_MAX);
                return -EINVAL;
        }
        size_t i, total = 0;
        json_t *v;
        json_array_foreach (cmd, i, v) {
                const char *s = json_string_value(v);
                if (!s || strlen(s) > GPUW_ARG_MAX || (i == 0 && !*s)) {
                        snprintf(why, why_len, "cmd[%zu] must be a string of at most %d bytes", i, GPUW_ARG_MAX);
                        return -EINVAL;
                }
                total += strlen(s);
                if (i == 0) {
                        char prog[PATH_MAX];
                        int r = resolve_program(s, prog, sizeof prog);
                        if (r < 0) {
                                snprintf(why, why_len, "cmd[0] %.200s: %s", s,
                                         r == -EINVAL ? "a relative path is not allowed (absolute, or a name in "
                                                        "PATH)"
                                                      : "not found in " GPUW_TASK_PATH);
                                return -EINVAL;
                        }
                        if (strv_add(a, prog, NULL) < 0)
                                return -ENOMEM;
                } else if (strv_add(a, s, NULL) < 0)
                        return -ENOMEM;
        }
        if (total > 65536) {
                snprintf(why, why_len, "cmd is longer than 65536 bytes");
                return -EINVAL;
        }
        return 0;
}

/* The task's timeout: seconds (a number > 0), default_timeout when absent, capped by
 * max_timeout. */
static int task_timeout(gpuw *w, json_t *v, uint64_t *ret, char *why, size_t why_len) {
        if (!v || json_is_null(v)) {
                *ret = w->default_timeout_ms;
                return 0;
        }
        if (!json_is_number(v) || json_number_value(v) <= 0 || json_number_value(v) > 1e9) {
                snprintf(why, why_len, "timeout must be a number of seconds > 0");
                return -EINVAL;
        }
        uint64_t ms = (uint64_t)(json_number_value(v) * 1000.0);
        if (ms == 0)
                ms = 1;
        *ret = ms > w->max_timeout_ms ? w->max_timeout_ms : ms;
        return 0;
}

static void start_task(gpuw *w, gpuw_gpu *g, json_t *task, const char *task_id, int64_t attempt) {
        char why[320] = "";
        gpuw_task *t = calloc(1, sizeof *t);
        if (!t) {
                refuse(w, task_id, attempt, g, "out of memory");
                return;
        }
        t->w = w;
        t->g = g;
        t->attempt = attempt;
        gpuw_copy(t->id, sizeof t->id, task_id);

        json_t *type = json_object_get(task, "type");
        const char *ty = type ? json_string_value(type) : "cmd";
        if (!ty || (strcmp(ty, "cmd") != 0 && strcmp(ty, "shell") != 0)) {
                refuse(w, task_id, attempt, g, "type must be cmd or shell");
                goto out;
        }
        gpuw_copy(t->type, sizeof t->type, ty);
        if (strcmp(ty, "shell") == 0 && !w->allow_shell) {
                refuse(w, task_id, attempt, g, "shell tasks are not allowed here (allow_shell: false); use type cmd");
                goto out;
        }
        if (!w->user_ok) {
                refuse(w, task_id, attempt, g, w->user_why);
                goto out;
        }
        strv argv = {.n = 0}, env = {.n = 0};
        if (task_timeout(w, json_object_get(task, "timeout"), &t->timeout_ms, why, sizeof why) < 0 ||
            build_argv(w, task, t, &argv, why, sizeof why) < 0 ||
            task_cwd(w, t, json_object_get(task, "cwd"), why, sizeof why) < 0 ||
            build_env(w, t, json_object_get(task, "env"), &env, why, sizeof why) < 0) {
                refuse(w, task_id, attempt, g, why[0] ? why : "out of memory");
                strv_clear(&argv);
                strv_clear(&env);
                goto out;
        }

        org_exec_spec spec = {
                .argv = (const char *const *)argv.v,
                .allow_path = true,
                .env = (const char *const *)env.v,
                .cwd = t->cwd,
                .uid = w->uid,
                .gid = w->gid,
                .set_ids = w->set_ids,
                .timeout_ms = t->timeout_ms,
                .capture_max = GPUW_CAPTURE,
        };
        org_exec_opts opts = {
                .struct_size = sizeof(org_exec_opts),
                .flags = w->use_cgroup ? ORG_EXEC_CGROUP : 0,
                .groups = w->n_groups ? w->groups : NULL,
                .n_groups = w->set_ids ? w->n_groups : 0,
        };
        t->started_us = w->host->now_realtime_us(w->ctx);
        t->start_mono_us = w->host->now_monotonic_us(w->ctx);
        /* The GPU is taken before exec: a host that completed at once (the fake one
         * may) finds the task in place and frees it. */
        g->task = t;
        g->state = GPUW_BUSY;
        store_start(w, t);
        int r;
        if (ORG_HOST_HAS(w->host, exec_opts))
                r = w->host->exec_opts(w->ctx, &spec, &opts, on_task_exit, t, &t->exec_id);
        else
                r = w->host->exec(w->ctx, &spec, on_task_exit, t, &t->exec_id);
        strv_clear(&argv);
        strv_clear(&env);
        if (r < 0) {
                g->task = NULL;
                g->state = GPUW_IDLE;
                snprintf(why, sizeof why, "cannot start the command: %s", strerror(-r));
                refuse(w, task_id, attempt, g, why);
                /* the row must not stay "running" */
                json_t *o = base_payload(w, t->id, t->attempt, g);
                json_object_set_new(o, "error", json_string(why));
                store_finish(w, t, false, why, NULL, 0, o);
                json_decref(o);
                goto out;
        }
        if (g->task != t)
                return; /* already finished and freed */
        g->tasks_run++;
        if (ORG_HOST_HAS(w->host, exec_info))
                (void)w->host->exec_info(w->ctx, t->exec_id, &t->pid, &t->cgroup);
        w->host->log(w->ctx, ORG_LOG_INFO, "task %s (attempt %" PRId64 ") on gpu%u: started, pid %d%s, cwd %s", t->id,
                     attempt, g->index, (int)t->pid, t->cgroup ? " in its own cgroup" : "", t->cwd);
        worker_log(w, t, "start", NULL);
        publish_running(w, t);
        return;
out:
        task_free(t);
}

void gpuw_task_run_msg(gpuw *w, const char *gpu_token, const org_msg *msg) {
        gpuw_gpu *g = gpuw_gpu_by_token(w, gpu_token);
        char why[256];
        if (msg->len > GPUW_PAYLOAD_MAX) {
                snprintf(why, sizeof why, "payload of %zu bytes is larger than %d", msg->len, GPUW_PAYLOAD_MAX);
                refuse(w, NULL, 0, g, why);
                return;
        }
        json_error_t e;
        json_t *task = json_loadb(msg->data, msg->len, 0, &e);
        if (!json_is_object(task)) {
                snprintf(why, sizeof why, "malformed JSON: %s", task ? "not an object" : e.text);
                refuse(w, NULL, 0, g, why);
                json_decref(task);
                return;
        }
        const char *task_id = json_string_value(json_object_get(task, "task_id"));
        json_t *att = json_object_get(task, "attempt");
        int64_t attempt = json_is_integer(att) ? json_integer_value(att) : 1;
        if (!task_id || !gpuw_task_id_valid(task_id)) {
                refuse(w, NULL, attempt, g,
                       task_id ? "task_id must match [A-Za-z0-9._-]{1,128}" : "task_id is missing");
                goto out;
        }
        if (att && (!json_is_integer(att) || attempt < 1)) {
                refuse(w, task_id, 0, g, "attempt must be an integer >= 1");
                goto out;
        }
        if (!g) {
                snprintf(why, sizeof why, "unknown gpu %.32s (this worker has %zu)", gpu_token, w->n_gpus);
                refuse(w, task_id, attempt, NULL, why);
                goto out;
        }

        /* Idempotence: running now → say so; done before → the stored result. */
        gpuw_task *cur = task_find(w, task_id);
        if (cur) {
                /* maestro re-sent it (its lease ran out): this run now serves the newer
                 * attempt, or maestro would ignore its running/done as stale */
                if (attempt > cur->attempt)
                        cur->attempt = attempt;
                w->host->log(w->ctx, ORG_LOG_INFO,
                             "task %s delivered again while it runs: answered running (attempt %" PRId64 ")", task_id,
                             cur->attempt);
                publish_running(w, cur);
                goto out;
        }
        lookup l = {.found = false};
        const char *p[] = {task_id};
        if (w->store_ok)
                (void)w->host->store_query(w->ctx, GPUW_SQL_LOOKUP, p, 1, lookup_row, &l);
        if (l.found && strcmp(l.state, "done") == 0 && l.result) {
                json_t *res = json_loads(l.result, 0, &e);
                if (json_is_object(res)) {
                        w->host->log(w->ctx, ORG_LOG_INFO,
                                     "task %s delivered again (attempt %" PRId64 "): done before, answered from the "
                                     "store, not run",
                                     task_id, attempt);
                        json_object_set_new(res, "replayed", json_true());
                        /* answered for the attempt asked about (maestro drops results of
                         * older attempts); the one that ran stays visible */
                        json_object_set_new(res, "ran_attempt", json_incref(json_object_get(res, "attempt")));
                        json_object_set_new(res, "attempt", json_integer(attempt));
                        gpuw_publish(w, "gpu.task.done", res);
                        free(l.result);
                        goto out;
                }
                json_decref(res);
        }
        free(l.result);

        if (g->state == GPUW_GONE) {
                refuse(w, task_id, attempt, g, "gpu gone");
                goto out;
        }
        if (g->state == GPUW_PASSTHROUGH) {
                refuse(w, task_id, attempt, g, "gpu is passed through (vfio-pci), not driven here");
                goto out;
        }
        if (g->task) {
                w->host->log(w->ctx, ORG_LOG_NOTICE, "task %s: gpu%u is busy with %s", task_id, g->index, g->task->id);
                json_t *o = base_payload(w, task_id, attempt, g);
                json_object_set_new(o, "error", json_string("busy"));
                json_object_set_new(o, "running", json_string(g->task->id));
                w->tasks_refused++;
                gpuw_publish(w, "gpu.task.err", o);
                goto out;
        }
        start_task(w, g, task, task_id, attempt);
out:
        json_decref(task);
}

void gpuw_task_cancel_msg(gpuw *w, const char *gpu_token, const org_msg *msg) {
        gpuw_gpu *g = gpuw_gpu_by_token(w, gpu_token);
        json_error_t e;
        json_t *o = msg->len <= GPUW_PAYLOAD_MAX ? json_loadb(msg->data, msg->len, 0, &e) : NULL;
        const char *id = json_string_value(json_object_get(o, "task_id"));
        if (!id || !gpuw_task_id_valid(id))
                w->host->log(w->ctx, ORG_LOG_WARNING, "%s: no valid task_id; ignored", msg->subject);
        else if (!g || !g->task || strcmp(g->task->id, id) != 0)
                w->host->log(w->ctx, ORG_LOG_INFO, "%s: task %s is not running there; nothing to cancel", msg->subject,
                             id);
        else
                (void)gpuw_task_cancel(w, id, "cancelled");
        json_decref(o);
}

json_t *gpuw_task_json(const gpuw_task *t) {
        if (!t)
                return json_null();
        return json_pack("{s:s, s:I, s:s, s:i, s:b, s:s, s:I}", "task_id", t->id, "attempt", (json_int_t)t->attempt,
                         "type", t->type, "pid", (int)t->pid, "cgroup", t->cgroup, "cwd", t->cwd, "timeout_ms",
                         (json_int_t)t->timeout_ms);
}

static int recent_row(void *userdata, int n, const char *const *c, const char *const *names) {
        json_t *a = userdata;
        json_t *o = json_object();
        for (int i = 0; i < n; i++) {
                if (!c[i])
                        json_object_set_new(o, names[i], json_null());
                else if (i == 0 || i == 3 || i == 4 || i == 5)
                        json_object_set_new(o, names[i], json_string(c[i]));
                else
                        json_object_set_new(o, names[i], json_integer(strtoll(c[i], NULL, 10)));
        }
        json_array_append_new(a, o);
        return 0;
}

json_t *gpuw_tasks_recent(gpuw *w, int64_t n) {
        json_t *a = json_array();
        char lim[24];
        snprintf(lim, sizeof lim, "%" PRId64, n);
        const char *p[] = {lim};
        if (w->store_ok)
                (void)w->host->store_query(w->ctx, GPUW_SQL_RECENT, p, 1, recent_row, a);
        return a;
}

/* ---- reload: running tasks go on in the new build ------------------------------ */

/* What the new build needs to finish a running task: the exec id it adopts and what
 * the result payload says. Format 1. */
int gpuw_tasks_save(gpuw *w, json_t *tasks) {
        for (size_t i = 0; i < w->n_gpus; i++) {
                const gpuw_task *t = w->gpus[i].task;
                if (!t)
                        continue;
                json_t *o = json_pack("{s:i, s:s, s:s, s:I, s:s, s:s, s:I, s:i, s:b, s:I, s:I, s:I}", "gpu",
                                      (int)t->g->index, "pci", t->g->dev.pci, "id", t->id, "attempt",
                                      (json_int_t)t->attempt, "type", t->type, "cwd", t->cwd, "exec_id",
                                      (json_int_t)t->exec_id, "pid", (int)t->pid, "cgroup", t->cgroup, "started_us",
                                      (json_int_t)t->started_us, "start_mono_us", (json_int_t)t->start_mono_us,
                                      "timeout_ms", (json_int_t)t->timeout_ms);
                if (!o || json_array_append_new(tasks, o) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* Adopts each saved task whose GPU is here and idle. One that cannot be adopted stays
 * the old build's, whose fini reports it failed: each task is reported once. */
void gpuw_tasks_restore(gpuw *w, const json_t *tasks) {
        size_t i;
        json_t *o;
        json_array_foreach (tasks, i, o) {
                const char *id = json_string_value(json_object_get(o, "id"));
                const char *pci = json_string_value(json_object_get(o, "pci"));
                const char *type = json_string_value(json_object_get(o, "type"));
                const char *cwd = json_string_value(json_object_get(o, "cwd"));
                json_int_t index = json_integer_value(json_object_get(o, "gpu"));
                char token[16];
                snprintf(token, sizeof token, "%lld", (long long)index);
                gpuw_gpu *g = gpuw_gpu_by_token(w, token);
                gpuw_task *t = NULL;
                if (!id || !gpuw_task_id_valid(id) || !pci || !type || !cwd || !g || strcmp(g->dev.pci, pci) != 0 ||
                    g->state != GPUW_IDLE || g->task || !(t = calloc(1, sizeof *t))) {
                        w->host->log(w->ctx, ORG_LOG_WARNING, "task %s: not taken over from the previous build",
                                     id ? id : "?");
                        continue;
                }
                t->w = w;
                t->g = g;
                gpuw_copy(t->id, sizeof t->id, id);
                t->attempt = json_integer_value(json_object_get(o, "attempt"));
                gpuw_copy(t->type, sizeof t->type, type);
                gpuw_copy(t->cwd, sizeof t->cwd, cwd);
                t->exec_id = (uint64_t)json_integer_value(json_object_get(o, "exec_id"));
                t->pid = (pid_t)json_integer_value(json_object_get(o, "pid"));
                t->cgroup = json_is_true(json_object_get(o, "cgroup"));
                t->started_us = (uint64_t)json_integer_value(json_object_get(o, "started_us"));
                t->start_mono_us = (uint64_t)json_integer_value(json_object_get(o, "start_mono_us"));
                t->timeout_ms = (uint64_t)json_integer_value(json_object_get(o, "timeout_ms"));
                int r = w->host->exec_adopt(w->ctx, t->exec_id, on_task_exit, t);
                if (r < 0) {
                        w->host->log(w->ctx, ORG_LOG_WARNING, "task %s: cannot adopt exec %" PRIu64 ": %s", t->id,
                                     t->exec_id, strerror(-r));
                        task_free(t);
                        continue;
                }
                g->task = t;
                g->state = GPUW_BUSY;
                g->tasks_run++;
                store_start(w, t); /* init marked the row interrupted; it runs on */
                w->host->log(w->ctx, ORG_LOG_INFO, "task %s (attempt %" PRId64 ") on gpu%u: taken over, pid %d", t->id,
                             t->attempt, g->index, (int)t->pid);
        }
}
