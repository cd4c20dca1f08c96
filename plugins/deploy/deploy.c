/* deploy.c — the deploy plugin's hooks, state machine and verbs: per instance one
 * repository, polled every poll_interval (GitHub's conditional commits request for a
 * github.com repository, a libgit2 remote ls otherwise) and at once on
 * deploy.<instance>.trigger; a new commit is fetched into the plugin's own bare mirror
 * and checked out into releases/<YYYYmmddTHHMMSSZ>-<sha8>/ (on the host's worker pool),
 * then the repository's scripts/build.sh and scripts/test.sh run through host->exec as
 * the unprivileged build user with a minimal environment and time-outs; a green release
 * becomes `candidate`, and the verdict verbs move `current` with atomic link switches.
 *
 * One run at a time: a trigger during a run (or a poll) is remembered and coalesces into
 * one more poll afterwards, which picks the newest commit. The store holds the truth
 * (runs, releases, the order of accepts); links are brought back in line with it at
 * start, so a kill -9 between a store write and a link switch is finished at the next
 * start. A commit that failed is not rebuilt by polls (only `retry`, or once after a
 * time-out with retry_timeouts, or once after an interrupted run). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <organism/plugin.h>

#include "deploy.h"

#define US_PER_SEC        1000000ULL
#define DEFAULT_ROOT_BASE "/var/lib/organism/deploy"

typedef enum deploy_phase {
        PH_IDLE,
        PH_DETECT,
        PH_CHECKOUT,
        PH_STEP, /* build, test or healthcheck running through host->exec */
} deploy_phase;

typedef enum deploy_step { STEP_BUILD, STEP_TEST, STEP_HEALTH, STEP_N } deploy_step;
static const char *const step_names[STEP_N] = {"build", "test", "healthcheck"};

typedef struct deploy {
        const org_host *host;
        org_ctx *ctx;
        const char *inst;
        /* config */
        char url[DEPLOY_URL_MAX], branch[256], root[DEPLOY_PATH_MAX], api_url[DEPLOY_URL_MAX], gh_repo[256];
        char mirror[DEPLOY_PATH_MAX], releases[DEPLOY_PATH_MAX], runs[DEPLOY_PATH_MAX];
        bool use_github;
        deploy_creds creds;
        uint64_t poll_ms, timeouts_ms[STEP_N], http_timeout_ms;
        bool allow_missing[STEP_N];
        bool retry_timeouts, auto_promote, auto_rollback;
        int64_t keep_releases, keep_runs, log_max;
        bool set_ids;
        uid_t uid;
        gid_t gid;
        char path_env[1024];
        char **env; /* NULL-terminated "K=V" of the config's env: */
        /* state */
        deploy_phase ph;
        bool trigger_pending, retry_pending;
        char head[DEPLOY_SHA_MAX], etag[DEPLOY_ETAG_MAX];
        char last_poll[32], last_error[DEPLOY_ERR_MAX];
        long rate_remaining;
        uint64_t poll_timer;
        /* the run in flight */
        char run_id[DEPLOY_NAME_MAX], run_sha[DEPLOY_SHA_MAX], run_dir[DEPLOY_PATH_MAX], rel_dir[DEPLOY_PATH_MAX];
        const char *steps[STEP_N]; /* skipped|running|ok|fail|timeout */
        deploy_step step;
        bool health_of_current; /* the healthcheck runs against current after an accept */
        char health_release[DEPLOY_NAME_MAX];
        uint64_t run_started_us, step_started_us;
        int auto_retry;
        uint64_t step_exec; /* host exec id of the step running (PH_STEP) */
} deploy;

/* ---- config ---- */

static const org_config_entry deploy_config_map[] = {
        {.key = "url",
         .type = ORG_CFG_STRING,
         .required = true,
         .help = "the repository: https://github.com/O/R.git, git@host:O/R.git, file:///srv/git/r.git or a path"},
        {.key = "branch", .type = ORG_CFG_STRING, .default_value = "main", .help = "the branch deployed"},
        {.key = "root",
         .type = ORG_CFG_STRING,
         .help = "folder of mirror/, releases/, runs/ and the current and candidate links (default "
                 "/var/lib/organism/deploy/<instance>)"},
        {.key = "poll_interval",
         .type = ORG_CFG_DURATION,
         .default_value = "60s",
         .min = "1s",
         .max = "1d",
         .help = "how often the branch is polled (deploy.<instance>.trigger polls at once)"},
        {.key = "detect",
         .type = ORG_CFG_STRING,
         .default_value = "auto",
         .choices = ORG_CHOICES("auto", "github", "git"),
         .help = "auto: the GitHub API for github.com URLs, a libgit2 remote ls otherwise"},
        {.key = "api_url",
         .type = ORG_CFG_STRING,
         .default_value = "https://api.github.com",
         .help = "GitHub API base (GitHub Enterprise: https://HOST/api/v3)"},
        {.key = "github_repo", .type = ORG_CFG_STRING, .help = "OWNER/NAME for the API (default: from url)"},
        {.key = "token_file",
         .type = ORG_CFG_STRING,
         .help = "file holding a token for the API and HTTPS fetches (never the agent's environment)"},
        {.key = "ssh_key", .type = ORG_CFG_STRING, .help = "private key file for SSH fetches (a read-only deploy key)"},
        {.key = "user",
         .type = ORG_CFG_STRING,
         .help = "unprivileged user the scripts run as; required when agentd runs as root (never root)"},
        {.key = "path",
         .type = ORG_CFG_STRING,
         .default_value = "/usr/local/bin:/usr/bin:/bin",
         .help = "PATH of the scripts' minimal environment"},
        {.key = "env", .type = ORG_CFG_STRING_DICT, .help = "extra environment of the scripts (name -> value)"},
        {.key = "build_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "20m",
         .min = "1s",
         .max = "1d",
         .help = "scripts/build.sh is killed (with its process group) after this"},
        {.key = "test_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "30m",
         .min = "1s",
         .max = "1d",
         .help = "scripts/test.sh is killed after this"},
        {.key = "health_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "2m",
         .min = "1s",
         .max = "1h",
         .help = "scripts/healthcheck.sh is killed after this (a time-out is a failed check)"},
        {.key = "http_timeout",
         .type = ORG_CFG_DURATION,
         .default_value = "30s",
         .min = "1s",
         .max = "10m",
         .help = "the whole GitHub API request"},
        {.key = "allow_missing",
         .type = ORG_CFG_STRING_LIST,
         .default_value = "[]",
         .choices = ORG_CHOICES("build", "test"),
         .help = "steps whose missing script counts as skipped; otherwise a missing script fails the run"},
        {.key = "retry_timeouts",
         .type = ORG_CFG_BOOL,
         .default_value = "false",
         .help = "a run that failed only by a time-out is retried once by the next poll"},
        {.key = "keep_releases",
         .type = ORG_CFG_INT,
         .default_value = "10",
         .min = "1",
         .max = "1000",
         .help = "releases kept besides current, candidate and the previous accepted one (failed ones go first)"},
        {.key = "keep_runs",
         .type = ORG_CFG_INT,
         .default_value = "50",
         .min = "1",
         .max = "10000",
         .help = "runs/<run_id>/ folders (logs, result.json) kept"},
        {.key = "log_max",
         .type = ORG_CFG_SIZE,
         .default_value = "1MiB",
         .min = "4KiB",
         .max = "64MiB",
         .help = "per stream of a script: what is kept of its output in the log"},
        {.key = "auto_promote",
         .type = ORG_CFG_BOOL,
         .default_value = "false",
         .help = "a green candidate is accepted when scripts/healthcheck.sh passes against it"},
        {.key = "auto_rollback",
         .type = ORG_CFG_BOOL,
         .default_value = "false",
         .help = "after an accept, a failing scripts/healthcheck.sh rolls back at once"},
        ORG_CONFIG_END,
};

static const org_verb deploy_verbs[] = {
        {.name = "status", .help = "current, candidate, last accepted, the run in flight, last poll, the last 5 runs"},
        {.name = "runs", .args = "[N] (default 20)", .help = "the last N runs, newest first"},
        {.name = "last-result", .help = "result.json of the last finished run"},
        {.name = "logs",
         .args = "build|test|agent|healthcheck [RUN_ID] [--lines 120]",
         .help = "the end of a run's log (default: the last run, 120 lines)"},
        {.name = "trigger", .mutating = true, .help = "poll now (coalesces with a run in flight)"},
        {.name = "retry", .mutating = true, .help = "rebuild the branch head even if it failed before"},
        {.name = "accept",
         .mutating = true,
         .args = "--confirm true",
         .help = "current -> the candidate; the previous current stays the rollback target"},
        {.name = "reject",
         .mutating = true,
         .args = "--confirm true",
         .help = "drop the candidate; its commit is not built again (retry does)"},
        {.name = "rollback",
         .mutating = true,
         .args = "--confirm true",
         .help = "current -> the previously accepted release (never a failed, rejected or never-accepted one)"},
        ORG_VERBS_END,
};

/* ---- small helpers ---- */

/* snprintf that says whether it cut (paths longer than their buffers are refused by
 * their users); a function of ours, so truncation is a checked outcome, not a warning */
static int strfmt(char *buf, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static int strfmt(char *buf, size_t len, const char *f, ...) {
        va_list ap;
        va_start(ap, f);
        int n = vsnprintf(buf, len, f, ap);
        va_end(ap);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static void dlog(deploy *d, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void dlog(deploy *d, int level, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        d->host->logv(d->ctx, level, fmt, ap);
        va_end(ap);
}

static uint64_t now_us(deploy *d) {
        return d->host->now_realtime_us(d->ctx);
}

static void iso_time(uint64_t us, char *buf, size_t len) {
        time_t t = (time_t)(us / US_PER_SEC);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char *cfg_str(deploy *d, const char *key) {
        const char *v = NULL;
        return d->host->config_string(d->ctx, key, &v) == 0 ? v : NULL;
}

static int64_t cfg_int(deploy *d, const char *key, int64_t dflt) {
        int64_t v;
        return d->host->config_int(d->ctx, key, &v) == 0 ? v : dflt;
}

static bool cfg_bool(deploy *d, const char *key) {
        bool v = false;
        return d->host->config_bool(d->ctx, key, &v) == 0 && v;
}

static void subject(deploy *d, const char *event, char *buf, size_t len) {
        strfmt(buf, len, "deploy.%s.%s", d->inst, event);
}

/* Publishes o (stolen) on deploy.<instance>.<event>, with ts and instance. */
static void publish(deploy *d, const char *event, json_t *o) {
        char ts[32], subj[256];
        iso_time(now_us(d), ts, sizeof ts);
        json_object_set_new(o, "ts", json_string(ts));
        json_object_set_new(o, "instance", json_string(d->inst));
        subject(d, event, subj, sizeof subj);
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (text)
                d->host->publish(d->ctx, subj, NULL, 0, text, strlen(text));
        free(text);
}

/* Appends a line to runs/<run_id>/agent.log. */
static void agent_log(deploy *d, const char *run_id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void agent_log(deploy *d, const char *run_id, const char *fmt, ...) {
        char path[DEPLOY_PATH_MAX + 80], ts[32], line[2048];
        strfmt(path, sizeof path, "%s/%s/agent.log", d->runs, run_id);
        iso_time(now_us(d), ts, sizeof ts);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof line, fmt, ap);
        va_end(ap);
        FILE *f = fopen(path, "ae");
        if (!f)
                return;
        fprintf(f, "%s %s\n", ts, line);
        fclose(f);
}

/* ---- store ---- */

static const char *const schema[] = {
        "CREATE TABLE IF NOT EXISTS deploy_runs(run_id TEXT PRIMARY KEY, sha TEXT NOT NULL, status TEXT NOT NULL, "
        "build TEXT, test TEXT, reason TEXT, started_us INTEGER, finished_us INTEGER, "
        "auto_retry INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS deploy_releases(name TEXT PRIMARY KEY, sha TEXT NOT NULL, state TEXT NOT NULL, "
        "accepted_seq INTEGER, pruned INTEGER NOT NULL DEFAULT 0, created_us INTEGER)",
};

typedef struct cell {
        char v[DEPLOY_ERR_MAX];
        bool found;
} cell;

static int row_first(void *userdata, int n, const char *const *cols, const char *const *names) {
        cell *c = userdata;
        strfmt(c->v, sizeof c->v, "%s", n > 0 && cols[0] ? cols[0] : "");
        c->found = true;
        return 1;
}

/* The first column of the first row, "" with found=false when none. */
static cell query1(deploy *d, const char *sql, const char *const *p, size_t n) {
        cell c = {.found = false};
        (void)d->host->store_query(d->ctx, sql, p, n, row_first, &c);
        return c;
}

static int exec_sql(deploy *d, const char *sql, const char *const *p, size_t n) {
        return d->host->store_exec(d->ctx, sql, p, n);
}

static void kv_get(deploy *d, const char *key, char *buf, size_t len) {
        char *v = NULL;
        buf[0] = '\0';
        if (d->host->kv_get(d->ctx, key, &v) == 0 && v)
                strfmt(buf, len, "%s", v);
        free(v);
}

static int kv_set(deploy *d, const char *key, const char *v) {
        return d->host->kv_set(d->ctx, key, v);
}

static void release_set_state(deploy *d, const char *name, const char *state) {
        exec_sql(d, "UPDATE deploy_releases SET state = ?2 WHERE name = ?1", (const char *[]){name, state}, 2);
}

/* ---- links: the store says what they should be, the file system follows ---- */

static int link_to(deploy *d, const char *link, const char *release) {
        char target[DEPLOY_PATH_MAX];
        strfmt(target, sizeof target, "releases/%s", release);
        int r = deploy_link_switch(d->root, link, target);
        if (r < 0)
                dlog(d, ORG_LOG_ERR, "cannot point %s/%s at %s: %s", d->root, link, target, strerror(-r));
        return r;
}

static void link_drop(deploy *d, const char *link) {
        char path[DEPLOY_PATH_MAX + 16];
        strfmt(path, sizeof path, "%s/%s", d->root, link);
        if (unlink(path) == 0)
                (void)deploy_fsync_dir(d->root);
}

static void reconcile_link(deploy *d, const char *link) {
        char want[DEPLOY_NAME_MAX], have[DEPLOY_PATH_MAX], target[DEPLOY_PATH_MAX];
        kv_get(d, link, want, sizeof want);
        if (!want[0]) {
                if (deploy_link_read(d->root, link, have, sizeof have) == 0) {
                        dlog(d, ORG_LOG_NOTICE, "%s pointed at %s without a record: removed", link, have);
                        link_drop(d, link);
                }
                return;
        }
        strfmt(target, sizeof target, "releases/%s", want);
        if (deploy_link_read(d->root, link, have, sizeof have) == 0 && strcmp(have, target) == 0)
                return;
        dlog(d, ORG_LOG_NOTICE, "%s -> %s (finishing a switch interrupted before it reached the disk)", link, target);
        (void)link_to(d, link, want);
}

/* ---- worker pool jobs: one malloc'd block each, owning nothing else ---- */

typedef struct detect_job {
        struct deploy *d; /* not owned: done only runs while the instance lives */
        /* in */
        char url[DEPLOY_URL_MAX], branch[256], mirror[DEPLOY_PATH_MAX], api[DEPLOY_URL_MAX], repo[256];
        char etag[DEPLOY_ETAG_MAX], known[DEPLOY_SHA_MAX];
        deploy_creds creds;
        bool github;
        uint64_t timeout_ms;
        /* out */
        char sha[DEPLOY_SHA_MAX], new_etag[DEPLOY_ETAG_MAX], err[DEPLOY_ERR_MAX];
        long http_status, rate;
        bool unchanged, fetched;
        uint64_t loop_us;
} detect_job;

static int detect_work_locked(detect_job *j);

/* libgit2 is initialised by each job around its own work, under one lock for the
 * process, and nowhere else: no instance holds a reference a fini could drop while a
 * job still runs, and each job's shutdown is the last one, on the thread that used the
 * library — libgit2 1.5.1 frees only the calling thread's state on its last shutdown,
 * so any other order leaks the per-thread error state of the pool's threads. The
 * lock also serialises git work of several instances (the pool has two threads). */
static pthread_mutex_t git_lock = PTHREAD_MUTEX_INITIALIZER;

static void git_enter(void) {
        pthread_mutex_lock(&git_lock);
        deploy_git_init();
}

static void git_leave(void) {
        deploy_git_shutdown();
        pthread_mutex_unlock(&git_lock);
}

static int detect_work(void *userdata) {
        git_enter();
        deploy_http_init(); /* refcounted and thread-safe in libcurl 7.88 ("threadsafe") */
        int r = detect_work_locked(userdata);
        deploy_http_shutdown();
        git_leave();
        return r;
}

static int detect_work_locked(detect_job *j) {
        int r;
        j->rate = -1;
        if (j->github) {
                deploy_gh_result gh;
                r = deploy_github_head(j->api, j->repo, j->branch, j->known[0] ? j->etag : "", j->creds.token,
                                       j->timeout_ms, &gh, j->err, sizeof j->err);
                if (r < 0)
                        return r;
                j->http_status = gh.http_status;
                j->rate = gh.rate_remaining;
                if (gh.http_status == 304) {
                        j->unchanged = true;
                        strfmt(j->sha, sizeof j->sha, "%s", j->known);
                } else if (gh.http_status == 200) {
                        strfmt(j->sha, sizeof j->sha, "%s", gh.sha);
                        strfmt(j->new_etag, sizeof j->new_etag, "%s", gh.etag);
                } else
                        return gh.http_status == 401 || gh.http_status == 403 ? -EACCES
                               : gh.http_status == 404                        ? -ENOENT
                                                                              : -EIO;
        } else {
                r = deploy_git_ls(j->url, j->branch, &j->creds, j->sha, j->err, sizeof j->err);
                if (r < 0)
                        return r;
                j->unchanged = strcmp(j->sha, j->known) == 0;
        }
        return deploy_git_ensure(j->mirror, j->url, j->branch, &j->creds, j->sha, &j->fetched, j->err, sizeof j->err);
}

typedef struct checkout_job {
        struct deploy *d;
        char mirror[DEPLOY_PATH_MAX], sha[DEPLOY_SHA_MAX], tmp[DEPLOY_PATH_MAX + 8], final[DEPLOY_PATH_MAX];
        char home[DEPLOY_PATH_MAX + 8];
        bool set_ids;
        uid_t uid;
        gid_t gid;
        size_t files;
        uint64_t duration_us;
        char err[DEPLOY_ERR_MAX];
} checkout_job;

static uint64_t mono_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * US_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

static int checkout_work(void *userdata) {
        checkout_job *j = userdata;
        uint64_t t0 = mono_us();
        (void)deploy_rm_rf(j->tmp);
        git_enter();
        int r = deploy_git_checkout(j->mirror, j->sha, j->tmp, &j->files, j->err, sizeof j->err);
        git_leave();
        if (r < 0)
                goto out;
        if (j->set_ids && ((r = deploy_chown_tree(j->tmp, j->uid, j->gid)) < 0 ||
                           (mkdir(j->home, 0700) < 0 && errno != EEXIST) || lchown(j->home, j->uid, j->gid) < 0)) {
                r = r < 0 ? r : -errno;
                strfmt(j->err, sizeof j->err, "cannot hand the release to the build user: %s", strerror(-r));
                goto out;
        }
        /* one syncfs for the whole tree (cheaper than an fsync per file), then the rename */
        int fd = open(j->tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                (void)syncfs(fd);
                close(fd);
        }
        if (rename(j->tmp, j->final) < 0) {
                r = -errno;
                strfmt(j->err, sizeof j->err, "rename %s: %s", j->tmp, strerror(errno));
                goto out;
        }
        char parent[DEPLOY_PATH_MAX];
        strfmt(parent, sizeof parent, "%s", j->final);
        char *slash = strrchr(parent, '/');
        if (slash) {
                *slash = '\0';
                (void)deploy_fsync_dir(parent);
        }
out:
        if (r < 0)
                (void)deploy_rm_rf(j->tmp); /* a failed checkout leaves nothing half-made */
        j->duration_us = mono_us() - t0;
        return r;
}

typedef struct rm_job {
        char path[DEPLOY_PATH_MAX + 8];
} rm_job;

static int rm_work(void *userdata) {
        return deploy_rm_rf(((rm_job *)userdata)->path);
}

static void rm_done(org_ctx *ctx, int result, void *userdata) {
        free(userdata);
}

static void rm_later(deploy *d, const char *path) {
        rm_job *j = calloc(1, sizeof *j);
        if (!j)
                return;
        strfmt(j->path, sizeof j->path, "%s", path);
        if (d->host->work_submit(d->ctx, rm_work, rm_done, j, NULL) < 0)
                free(j);
}

/* ---- the run ---- */

static void poll_now(deploy *d);
static void run_step(deploy *d, deploy_step s);
static void accept_release(deploy *d, const char *name, const char *why);
static int rollback_release(deploy *d, const char *why, char *err, size_t err_len);

static void metrics_runs(deploy *d, const char *status) {
        char name[96];
        strfmt(name, sizeof name, "deploy_runs_total{status=\"%s\"}", status);
        d->host->metric_add(d->ctx, name, 1, "finished runs by status");
}

static void write_result(deploy *d, const char *status, const char *reason, uint64_t finished) {
        char started[32], fin[32], path[DEPLOY_PATH_MAX + 32];
        iso_time(d->run_started_us, started, sizeof started);
        iso_time(finished, fin, sizeof fin);
        json_t *paths = json_object();
        const char *logs[] = {"build", "test", "agent"};
        for (size_t i = 0; i < 3; i++) {
                strfmt(path, sizeof path, "%s/%s.log", d->run_dir, logs[i]);
                char key[32];
                strfmt(key, sizeof key, "%s_log", logs[i]);
                json_object_set_new(paths, key, json_string(path));
        }
        json_object_set_new(paths, "release", json_string(d->rel_dir));
        json_t *o =
                json_pack("{s:s, s:s, s:s, s:{s:s, s:s}, s:o, s:s, s:s, s:s?}", "run_id", d->run_id, "commit",
                          d->run_sha, "status", status, "steps", "build", d->steps[STEP_BUILD], "test",
                          d->steps[STEP_TEST], "paths", paths, "started", started, "finished", fin, "reason", reason);
        char *text = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
        json_decref(o);
        strfmt(path, sizeof path, "%s/result.json", d->run_dir);
        int r = text ? deploy_write_atomic(path, text, strlen(text)) : -ENOMEM;
        if (r < 0)
                dlog(d, ORG_LOG_ERR, "cannot write %s: %s", path, strerror(-r));
        free(text);
}

/* Runs dirs beyond keep_runs and releases beyond keep_releases go (on the pool). */
typedef struct name_list {
        char (*v)[DEPLOY_NAME_MAX];
        size_t n, cap;
} name_list;

static int row_collect(void *userdata, int n, const char *const *cols, const char *const *names) {
        name_list *l = userdata;
        if (l->n == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 16;
                void *v = realloc(l->v, cap * sizeof *l->v);
                if (!v)
                        return -ENOMEM;
                l->v = v;
                l->cap = cap;
        }
        strfmt(l->v[l->n++], DEPLOY_NAME_MAX, "%s", cols[0] ? cols[0] : "");
        return 0;
}

static void rollback_target(deploy *d, char *ret, size_t len);

static void prune(deploy *d) {
        char cur[DEPLOY_NAME_MAX], cand[DEPLOY_NAME_MAX], prev[DEPLOY_NAME_MAX], path[DEPLOY_PATH_MAX + 80];
        kv_get(d, "current", cur, sizeof cur);
        kv_get(d, "candidate", cand, sizeof cand);
        rollback_target(d, prev, sizeof prev);
        /* failed first, then the oldest; the protected three never */
        name_list l = {0};
        char keep[24];
        strfmt(keep, sizeof keep, "%lld", (long long)d->keep_releases);
        d->host->store_query(d->ctx,
                             "SELECT name FROM deploy_releases WHERE pruned = 0 AND name NOT IN (?1, ?2, ?3) "
                             "ORDER BY (state = 'failed') ASC, created_us DESC LIMIT -1 OFFSET ?4",
                             (const char *[]){cur, cand, prev, keep}, 4, row_collect, &l);
        for (size_t i = 0; i < l.n; i++) {
                strfmt(path, sizeof path, "%s/%s", d->releases, l.v[i]);
                rm_later(d, path);
                exec_sql(d, "UPDATE deploy_releases SET pruned = 1 WHERE name = ?1", (const char *[]){l.v[i]}, 1);
        }
        l.n = 0;
        strfmt(keep, sizeof keep, "%lld", (long long)d->keep_runs);
        d->host->store_query(d->ctx,
                             "SELECT run_id FROM deploy_runs ORDER BY started_us DESC, rowid DESC LIMIT -1 OFFSET ?1",
                             (const char *[]){keep}, 1, row_collect, &l);
        for (size_t i = 0; i < l.n; i++) {
                strfmt(path, sizeof path, "%s/%s", d->runs, l.v[i]);
                rm_later(d, path);
                exec_sql(d, "DELETE FROM deploy_runs WHERE run_id = ?1", (const char *[]){l.v[i]}, 1);
        }
        free(l.v);
}

static void finish_run(deploy *d, bool ok, const char *failed_step, const char *reason) {
        uint64_t fin = now_us(d);
        const char *status = ok ? "success" : "fail";
        char fin_s[24];
        strfmt(fin_s, sizeof fin_s, "%llu", (unsigned long long)fin);
        write_result(d, status, reason, fin);
        exec_sql(d,
                 "UPDATE deploy_runs SET status = ?2, build = ?3, test = ?4, reason = ?5, finished_us = ?6 "
                 "WHERE run_id = ?1",
                 (const char *[]){d->run_id, status, d->steps[STEP_BUILD], d->steps[STEP_TEST], reason, fin_s}, 6);
        agent_log(d, d->run_id, "run %s: %s%s%s", d->run_id, status, reason ? ": " : "", reason ? reason : "");
        metrics_runs(d, status);
        d->ph = PH_IDLE;
        if (ok) {
                release_set_state(d, d->run_id, "candidate");
                /* a candidate replaced before its verdict is simply not chosen: it stays "green" */
                char old[DEPLOY_NAME_MAX];
                kv_get(d, "candidate", old, sizeof old);
                if (old[0] && strcmp(old, d->run_id) != 0)
                        release_set_state(d, old, "superseded");
                kv_set(d, "candidate", d->run_id);
                (void)link_to(d, "candidate", d->run_id);
                dlog(d, ORG_LOG_NOTICE, "candidate %s (commit %.12s) is green", d->run_id, d->run_sha);
                publish(d, "candidate",
                        json_pack("{s:s, s:s, s:s}", "run_id", d->run_id, "commit", d->run_sha, "release", d->rel_dir));
        } else {
                if (d->rel_dir[0] && access(d->rel_dir, F_OK) == 0)
                        release_set_state(d, d->run_id, "failed");
                char log[DEPLOY_PATH_MAX + 80];
                char *tail = NULL;
                if (failed_step) {
                        strfmt(log, sizeof log, "%s/%s.log", d->run_dir, failed_step);
                        (void)deploy_tail(log, 20, 8192, &tail);
                }
                dlog(d, ORG_LOG_WARNING, "run %s (commit %.12s) failed at %s: %s", d->run_id, d->run_sha,
                     failed_step ? failed_step : "?", reason ? reason : "");
                publish(d, "failed",
                        json_pack("{s:s, s:s, s:s?, s:s?, s:s?}", "run_id", d->run_id, "commit", d->run_sha, "step",
                                  failed_step, "reason", reason, "log_tail", tail));
                free(tail);
        }
        bool promote = ok && d->auto_promote;
        char name[DEPLOY_NAME_MAX];
        strfmt(name, sizeof name, "%s", d->run_id);
        prune(d);
        if (promote) {
                /* the healthcheck against the candidate decides */
                d->ph = PH_STEP;
                d->health_of_current = false;
                strfmt(d->health_release, sizeof d->health_release, "%s", name);
                run_step(d, STEP_HEALTH);
                return;
        }
        if (d->trigger_pending) {
                d->trigger_pending = false;
                poll_now(d);
        }
}

static void write_log(deploy *d, const char *name, const org_exec_result *res) {
        char path[DEPLOY_PATH_MAX + 80];
        strfmt(path, sizeof path, "%s/%s.log", d->run_dir, name);
        FILE *f = fopen(path, "we");
        if (!f)
                return;
        if (res->out_len)
                fwrite(res->out, 1, res->out_len, f);
        if (res->out_truncated)
                fputs("\n[stdout cut at log_max]\n", f);
        if (res->err_len) {
                fputs("\n--- stderr ---\n", f);
                fwrite(res->err, 1, res->err_len, f);
        }
        if (res->err_truncated)
                fputs("\n[stderr cut at log_max]\n", f);
        fclose(f);
}

static void health_done(deploy *d, bool ok, const char *why) {
        char name[DEPLOY_NAME_MAX];
        strfmt(name, sizeof name, "%s", d->health_release);
        d->ph = PH_IDLE;
        if (!d->health_of_current) { /* auto_promote */
                if (ok)
                        accept_release(d, name, "auto_promote: healthcheck passed");
                else
                        dlog(d, ORG_LOG_WARNING, "candidate %s not promoted: healthcheck %s", name, why);
        } else if (!ok && d->auto_rollback) {
                char err[256], reason[300];
                strfmt(reason, sizeof reason, "auto_rollback: healthcheck of %s %s", name, why);
                if (rollback_release(d, reason, err, sizeof err) < 0)
                        dlog(d, ORG_LOG_ERR, "healthcheck of %s %s and no rollback possible: %s", name, why, err);
        }
        if (d->ph == PH_IDLE && d->trigger_pending) {
                d->trigger_pending = false;
                poll_now(d);
        }
}

static void on_step_done(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        deploy *d = userdata;
        deploy_step s = d->step;
        const char *name = step_names[s];
        uint64_t dur = res->duration_us;
        char mname[96];
        strfmt(mname, sizeof mname, "deploy_step_seconds{step=\"%s\"}", name);
        d->host->metric_set(d->ctx, mname, ORG_METRIC_GAUGE, (double)dur / 1e6, "duration of the last run of a step");
        write_log(d, name, res);
        const char *result = res->dry_run ? "skipped" : res->timed_out ? "timeout" : res->status == 0 ? "ok" : "fail";
        if (s != STEP_HEALTH)
                d->steps[s] = result;
        agent_log(d, d->run_id, "%s: %s (status %d, %.1f s)", name, result, res->status, (double)dur / 1e6);
        char reason[128];
        if (res->timed_out)
                strfmt(reason, sizeof reason, "%s timed out", name);
        else if (res->status < 0)
                strfmt(reason, sizeof reason, "%s killed by signal %d", name, -res->status);
        else
                strfmt(reason, sizeof reason, "%s exited with %d", name, res->status);
        if (s == STEP_HEALTH) {
                health_done(d, strcmp(result, "ok") == 0 || res->dry_run, reason);
                return;
        }
        if (strcmp(result, "ok") != 0 && strcmp(result, "skipped") != 0) {
                finish_run(d, false, name, reason);
                return;
        }
        if (s == STEP_BUILD)
                run_step(d, STEP_TEST);
        else
                finish_run(d, true, NULL, NULL);
}

/* Runs scripts/<step>.sh of the release in flight (or, for the healthcheck, of
 * health_release) as the build user. */
static void run_step(deploy *d, deploy_step s) {
        char script[DEPLOY_PATH_MAX + 64], rel[DEPLOY_PATH_MAX + 64], home[DEPLOY_PATH_MAX + 16];
        const char *name = step_names[s];
        if (s == STEP_HEALTH) {
                /* no run is in flight: the check logs into the run that made the release */
                strfmt(rel, sizeof rel, "%s/%s", d->releases, d->health_release);
                strfmt(d->run_id, sizeof d->run_id, "%s", d->health_release);
                strfmt(d->run_dir, sizeof d->run_dir, "%s/%s", d->runs, d->health_release);
                (void)deploy_mkdir_p(d->run_dir, 0755);
        } else
                strfmt(rel, sizeof rel, "%s", d->rel_dir);
        strfmt(script, sizeof script, "%s/scripts/%s.sh", rel, name);
        d->step = s;
        d->ph = PH_STEP;
        struct stat st;
        if (lstat(script, &st) < 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 0111)) {
                if (s == STEP_HEALTH) {
                        /* no healthcheck: nothing gates the promotion, nothing triggers a rollback */
                        if (!d->health_of_current)
                                dlog(d, ORG_LOG_WARNING, "auto_promote: %s has no executable scripts/healthcheck.sh",
                                     d->health_release);
                        health_done(d, d->health_of_current, "missing");
                        return;
                }
                if (d->allow_missing[s]) {
                        d->steps[s] = "skipped";
                        agent_log(d, d->run_id, "%s: skipped (scripts/%s.sh missing, allow_missing)", name, name);
                        if (s == STEP_BUILD)
                                run_step(d, STEP_TEST);
                        else
                                finish_run(d, true, NULL, NULL);
                        return;
                }
                char reason[128];
                strfmt(reason, sizeof reason, "scripts/%s.sh missing or not executable", name);
                d->steps[s] = "fail";
                agent_log(d, d->run_id, "%s: %s", name, reason);
                finish_run(d, false, name, reason);
                return;
        }
        strfmt(home, sizeof home, "%s/home", d->run_dir);
        char e_path[1100], e_home[DEPLOY_PATH_MAX + 32], e_rel[DEPLOY_PATH_MAX + 80], e_commit[64], e_run[96];
        strfmt(e_path, sizeof e_path, "PATH=%s", d->path_env);
        strfmt(e_home, sizeof e_home, "HOME=%s", home);
        strfmt(e_rel, sizeof e_rel, "DEPLOY_RELEASE=%s", rel);
        strfmt(e_commit, sizeof e_commit, "DEPLOY_COMMIT=%s", s == STEP_HEALTH ? "" : d->run_sha);
        strfmt(e_run, sizeof e_run, "DEPLOY_RUN_ID=%s", d->run_id);
        const char *env[64] = {e_path, e_home, "LANG=C.UTF-8", e_rel, e_commit, e_run};
        size_t ne = 6;
        for (size_t i = 0; d->env && d->env[i] && ne < 63; i++)
                env[ne++] = d->env[i];
        env[ne] = NULL;
        const char *argv[] = {script, NULL};
        org_exec_spec spec = {
                .argv = argv,
                .allow_path = true,
                .env = env,
                .cwd = rel,
                .set_ids = d->set_ids,
                .uid = d->uid,
                .gid = d->gid,
                .timeout_ms = d->timeouts_ms[s],
                .capture_max = (size_t)d->log_max,
                .mutating = true,
        };
        if (s != STEP_HEALTH)
                d->steps[s] = "running";
        d->step_started_us = now_us(d);
        agent_log(d, d->run_id, "%s: %s", name, script);
        int r = d->host->exec(d->ctx, &spec, on_step_done, d, &d->step_exec);
        if (r < 0) {
                char reason[160];
                strfmt(reason, sizeof reason, "cannot run scripts/%s.sh: %s", name, strerror(-r));
                if (s == STEP_HEALTH) {
                        health_done(d, false, reason);
                        return;
                }
                d->steps[s] = "fail";
                finish_run(d, false, name, reason);
        }
}

static void on_checkout_done(org_ctx *ctx, int result, void *userdata) {
        checkout_job *j = userdata;
        deploy *d = j->d;
        d->host->metric_set(d->ctx, "deploy_checkout_seconds", ORG_METRIC_GAUGE, (double)j->duration_us / 1e6,
                            "duration of the last checkout into a release");
        if (result < 0) {
                agent_log(d, d->run_id, "checkout: %s", j->err);
                finish_run(d, false, "checkout", j->err);
                free(j);
                return;
        }
        char created[24];
        strfmt(created, sizeof created, "%llu", (unsigned long long)d->run_started_us);
        exec_sql(d, "INSERT OR REPLACE INTO deploy_releases(name, sha, state, created_us) VALUES (?1, ?2, 'built', ?3)",
                 (const char *[]){d->run_id, d->run_sha, created}, 3);
        agent_log(d, d->run_id, "checkout: %zu files into %s in %.3f s", j->files, d->rel_dir,
                  (double)j->duration_us / 1e6);
        free(j);
        run_step(d, STEP_BUILD);
}

static void start_run(deploy *d, const char *sha, int auto_retry) {
        uint64_t now = now_us(d);
        d->run_started_us = now;
        strfmt(d->run_sha, sizeof d->run_sha, "%s", sha);
        deploy_release_name(now, sha, d->run_id, sizeof d->run_id);
        /* two runs of one commit in the same second (a retry): keep names unique */
        for (int i = 2; query1(d, "SELECT 1 FROM deploy_runs WHERE run_id = ?1", (const char *[]){d->run_id}, 1).found;
             i++) {
                char base[DEPLOY_NAME_MAX];
                deploy_release_name(now, sha, base, sizeof base);
                strfmt(d->run_id, sizeof d->run_id, "%s.%d", base, i);
        }
        strfmt(d->run_dir, sizeof d->run_dir, "%s/%s", d->runs, d->run_id);
        strfmt(d->rel_dir, sizeof d->rel_dir, "%s/%s", d->releases, d->run_id);
        for (int s = 0; s < STEP_N; s++)
                d->steps[s] = "skipped";
        d->auto_retry = auto_retry;
        char started[24], ar[8];
        strfmt(started, sizeof started, "%llu", (unsigned long long)now);
        strfmt(ar, sizeof ar, "%d", auto_retry);
        exec_sql(d,
                 "INSERT INTO deploy_runs(run_id, sha, status, build, test, started_us, auto_retry) "
                 "VALUES (?1, ?2, 'running', 'skipped', 'skipped', ?3, ?4)",
                 (const char *[]){d->run_id, sha, started, ar}, 4);
        d->ph = PH_CHECKOUT;
        int r = deploy_mkdir_p(d->run_dir, 0755);
        agent_log(d, d->run_id, "run %s of commit %s (branch %s)", d->run_id, sha, d->branch);
        dlog(d, ORG_LOG_NOTICE, "run %s: commit %.12s", d->run_id, sha);
        publish(d, "run", json_pack("{s:s, s:s, s:s}", "run_id", d->run_id, "commit", sha, "branch", d->branch));
        checkout_job *j = r < 0 ? NULL : calloc(1, sizeof *j);
        if (!j) {
                finish_run(d, false, "checkout", r < 0 ? "cannot create the run folder" : "out of memory");
                return;
        }
        j->d = d;
        strfmt(j->mirror, sizeof j->mirror, "%s", d->mirror);
        strfmt(j->sha, sizeof j->sha, "%s", sha);
        strfmt(j->tmp, sizeof j->tmp, "%s.tmp", d->rel_dir);
        strfmt(j->final, sizeof j->final, "%s", d->rel_dir);
        strfmt(j->home, sizeof j->home, "%s/home", d->run_dir);
        j->set_ids = d->set_ids;
        j->uid = d->uid;
        j->gid = d->gid;
        r = d->host->work_submit(d->ctx, checkout_work, on_checkout_done, j, NULL);
        if (r < 0) {
                free(j);
                finish_run(d, false, "checkout", strerror(-r));
        }
}

/* Whether a poll that sees SHA as head starts a run, and *ret_auto_retry (1 for the
 * one automatic retry after a time-out or an interruption). */
static bool want_run(deploy *d, const char *sha, int *ret_auto_retry) {
        *ret_auto_retry = 0;
        if (d->retry_pending) {
                d->retry_pending = false;
                return true;
        }
        char status[32] = "", reason[DEPLOY_ERR_MAX] = "", ar[8] = "";
        cell c = query1(d, "SELECT status FROM deploy_runs WHERE sha = ?1 ORDER BY started_us DESC, rowid DESC LIMIT 1",
                        (const char *[]){sha}, 1);
        if (!c.found) {
                /* a commit already released by an earlier run whose row was pruned is not rebuilt */
                return !query1(d, "SELECT 1 FROM deploy_releases WHERE sha = ?1 AND pruned = 0", (const char *[]){sha},
                               1)
                                .found;
        }
        strfmt(status, sizeof status, "%s", c.v);
        if (strcmp(status, "fail") != 0)
                return false;
        c = query1(d, "SELECT reason FROM deploy_runs WHERE sha = ?1 ORDER BY started_us DESC, rowid DESC LIMIT 1",
                   (const char *[]){sha}, 1);
        strfmt(reason, sizeof reason, "%s", c.v);
        c = query1(d, "SELECT auto_retry FROM deploy_runs WHERE sha = ?1 ORDER BY started_us DESC, rowid DESC LIMIT 1",
                   (const char *[]){sha}, 1);
        strfmt(ar, sizeof ar, "%s", c.v);
        bool timed_out = strstr(reason, "timed out") != NULL, interrupted = strstr(reason, "interrupted") != NULL;
        if (strcmp(ar, "0") == 0 && (interrupted || (timed_out && d->retry_timeouts))) {
                *ret_auto_retry = 1;
                return true;
        }
        return false;
}

static void on_detect_done(org_ctx *ctx, int result, void *userdata) {
        detect_job *j = userdata;
        deploy *d = j->d;
        d->ph = PH_IDLE;
        if (j->rate >= 0) {
                d->rate_remaining = j->rate;
                d->host->metric_set(d->ctx, "deploy_api_rate_remaining", ORG_METRIC_GAUGE, (double)j->rate,
                                    "GitHub API rate limit left (X-RateLimit-Remaining)");
        }
        if (result < 0) {
                if (strcmp(d->last_error, j->err) != 0)
                        dlog(d, ORG_LOG_ERR, "poll of %s (%s): %s", d->url, d->branch, j->err);
                strfmt(d->last_error, sizeof d->last_error, "%s", j->err);
                strfmt(d->last_poll, sizeof d->last_poll, "error");
                d->host->metric_set(d->ctx, "deploy_last_poll", ORG_METRIC_GAUGE, -1,
                                    "last poll: 1 new commit, 0 unchanged, -1 error");
        } else {
                if (d->last_error[0])
                        dlog(d, ORG_LOG_NOTICE, "poll of %s works again", d->url);
                d->last_error[0] = '\0';
                if (j->new_etag[0] && strcmp(j->new_etag, d->etag) != 0) {
                        strfmt(d->etag, sizeof d->etag, "%s", j->new_etag);
                        kv_set(d, "etag", d->etag);
                }
                bool changed = strcmp(d->head, j->sha) != 0;
                strfmt(d->last_poll, sizeof d->last_poll, "%s", j->unchanged && !changed ? "unchanged" : "changed");
                d->host->metric_set(d->ctx, "deploy_last_poll", ORG_METRIC_GAUGE, changed ? 1 : 0,
                                    "last poll: 1 new commit, 0 unchanged, -1 error");
                if (changed) {
                        strfmt(d->head, sizeof d->head, "%s", j->sha);
                        kv_set(d, "head", d->head);
                        dlog(d, ORG_LOG_INFO, "branch %s is at %.12s%s", d->branch, d->head,
                             j->fetched ? " (fetched)" : "");
                }
                int ar = 0;
                if (d->head[0] && want_run(d, d->head, &ar)) {
                        free(j);
                        start_run(d, d->head, ar);
                        return;
                }
        }
        free(j);
        if (d->trigger_pending) {
                d->trigger_pending = false;
                poll_now(d);
        }
}

static void poll_now(deploy *d) {
        if (d->ph != PH_IDLE) {
                d->trigger_pending = true; /* coalesces: one more poll after the run */
                return;
        }
        if (d->host->dry_run(d->ctx)) {
                dlog(d, ORG_LOG_INFO, "dry_run: not polling %s", d->url);
                return;
        }
        detect_job *j = calloc(1, sizeof *j);
        if (!j)
                return;
        j->d = d;
        strfmt(j->url, sizeof j->url, "%s", d->url);
        strfmt(j->branch, sizeof j->branch, "%s", d->branch);
        strfmt(j->mirror, sizeof j->mirror, "%s", d->mirror);
        strfmt(j->api, sizeof j->api, "%s", d->api_url);
        strfmt(j->repo, sizeof j->repo, "%s", d->gh_repo);
        strfmt(j->etag, sizeof j->etag, "%s", d->etag);
        strfmt(j->known, sizeof j->known, "%s", d->head);
        j->creds = d->creds;
        j->github = d->use_github;
        j->timeout_ms = d->http_timeout_ms;
        d->ph = PH_DETECT;
        int r = d->host->work_submit(d->ctx, detect_work, on_detect_done, j, NULL);
        if (r < 0) {
                d->ph = PH_IDLE;
                free(j);
                dlog(d, ORG_LOG_ERR, "cannot submit the poll: %s", strerror(-r));
        }
}

static void on_poll_timer(org_ctx *ctx, uint64_t id, void *userdata) {
        poll_now(userdata);
}

/* ---- verdicts ---- */

static void rollback_target(deploy *d, char *ret, size_t len) {
        char cur[DEPLOY_NAME_MAX];
        kv_get(d, "current", cur, sizeof cur);
        cell c = query1(d,
                        "SELECT name FROM deploy_releases WHERE state = 'accepted' AND pruned = 0 AND name != ?1 AND "
                        "accepted_seq < COALESCE((SELECT accepted_seq FROM deploy_releases WHERE name = ?1), 1e18) "
                        "ORDER BY accepted_seq DESC LIMIT 1",
                        (const char *[]){cur}, 1);
        strfmt(ret, len, "%s", c.found ? c.v : "");
}

static void accept_release(deploy *d, const char *name, const char *why) {
        char prev[DEPLOY_NAME_MAX], seq[24];
        kv_get(d, "current", prev, sizeof prev);
        cell c = query1(d, "SELECT COALESCE(MAX(accepted_seq), 0) + 1 FROM deploy_releases", NULL, 0);
        strfmt(seq, sizeof seq, "%s", c.found ? c.v : "1");
        /* the store first: a kill -9 before the link switch is finished at the next start */
        exec_sql(d, "UPDATE deploy_releases SET state = 'accepted', accepted_seq = ?2 WHERE name = ?1",
                 (const char *[]){name, seq}, 2);
        kv_set(d, "current", name);
        kv_set(d, "candidate", "");
        (void)link_to(d, "current", name);
        link_drop(d, "candidate");
        cell sha = query1(d, "SELECT sha FROM deploy_releases WHERE name = ?1", (const char *[]){name}, 1);
        dlog(d, ORG_LOG_NOTICE, "accepted %s (%s); previous current %s", name, why, prev[0] ? prev : "none");
        publish(d, "accepted",
                json_pack("{s:s, s:s, s:s?, s:s}", "release", name, "commit", sha.v, "previous", prev[0] ? prev : NULL,
                          "why", why));
        if (d->auto_rollback && d->ph != PH_IDLE)
                dlog(d, ORG_LOG_WARNING, "auto_rollback: no healthcheck of %s, a run is in flight", name);
        if (d->auto_rollback && d->ph == PH_IDLE) {
                d->health_of_current = true;
                strfmt(d->health_release, sizeof d->health_release, "%s", name);
                run_step(d, STEP_HEALTH);
        }
}

static int rollback_release(deploy *d, const char *why, char *err, size_t err_len) {
        char cur[DEPLOY_NAME_MAX], target[DEPLOY_NAME_MAX];
        kv_get(d, "current", cur, sizeof cur);
        rollback_target(d, target, sizeof target);
        if (!target[0]) {
                strfmt(err, err_len, "no earlier accepted release to roll back to (current: %s)",
                       cur[0] ? cur : "none");
                return -ENOENT;
        }
        /* the release left is marked: a second rollback goes further back, never forward */
        if (cur[0])
                release_set_state(d, cur, "rolledback");
        kv_set(d, "current", target);
        int r = link_to(d, "current", target);
        if (r < 0) {
                strfmt(err, err_len, "link switch failed: %s", strerror(-r));
                return r;
        }
        dlog(d, ORG_LOG_NOTICE, "rolled back %s -> %s (%s)", cur, target, why);
        publish(d, "rolledback", json_pack("{s:s, s:s, s:s}", "from", cur, "to", target, "why", why));
        return 0;
}

/* ---- verbs ---- */

static int reply(deploy *d, const org_msg *req, json_t *o) {
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = d->host->respond(d->ctx, req->reply, text, strlen(text));
        free(text);
        return r;
}

static int reply_error(deploy *d, const org_msg *req, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reply_error(deploy *d, const org_msg *req, const char *fmt, ...) {
        char buf[600];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        return reply(d, req, json_pack("{s:s}", "error", buf));
}

static json_t *req_args(const org_msg *req) {
        json_error_t e;
        return req->len ? json_loadb(req->data, req->len, JSON_DECODE_ANY, &e) : NULL;
}

static bool confirmed(json_t *a) {
        json_t *c = json_is_object(a) ? json_object_get(a, "confirm") : NULL;
        return json_is_true(c) || (json_is_string(c) && strcmp(json_string_value(c), "yes") == 0);
}

static int row_run_json(void *userdata, int n, const char *const *c, const char *const *names) {
        json_t *a = userdata;
        json_t *o = json_object();
        for (int i = 0; i < n; i++)
                json_object_set_new(o, names[i], c[i] ? json_string(c[i]) : json_null());
        json_array_append_new(a, o);
        return 0;
}

static json_t *runs_json(deploy *d, int n) {
        json_t *a = json_array();
        char lim[16];
        strfmt(lim, sizeof lim, "%d", n);
        d->host->store_query(d->ctx,
                             "SELECT run_id, sha AS 'commit', status, build, test, reason, started_us, finished_us "
                             "FROM deploy_runs ORDER BY started_us DESC, rowid DESC LIMIT ?1",
                             (const char *[]){lim}, 1, row_run_json, a);
        return a;
}

static json_t *status_json(deploy *d) {
        char cur[DEPLOY_NAME_MAX], cand[DEPLOY_NAME_MAX], prev[DEPLOY_NAME_MAX];
        kv_get(d, "current", cur, sizeof cur);
        kv_get(d, "candidate", cand, sizeof cand);
        rollback_target(d, prev, sizeof prev);
        static const char *const phases[] = {"idle", "detect", "checkout", "step"};
        json_t *running = d->ph == PH_CHECKOUT || (d->ph == PH_STEP && d->step != STEP_HEALTH)
                                  ? json_pack("{s:s, s:s, s:s}", "run_id", d->run_id, "commit", d->run_sha, "step",
                                              d->ph == PH_CHECKOUT ? "checkout" : step_names[d->step])
                                  : json_null();
        return json_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:o, s:s, s:s?, s:s, s:s?, s:I, s:o, s:b}", "url", d->url,
                         "branch", d->branch, "current", cur[0] ? cur : NULL, "candidate", cand[0] ? cand : NULL,
                         "last_accepted", prev[0] ? prev : NULL, "running", running, "phase", phases[d->ph], "head",
                         d->head[0] ? d->head : NULL, "last_poll", d->last_poll[0] ? d->last_poll : "never",
                         "last_error", d->last_error[0] ? d->last_error : NULL, "rate_remaining",
                         (json_int_t)d->rate_remaining, "runs", runs_json(d, 5), "trigger_pending", d->trigger_pending);
}

static int verb_logs(deploy *d, const org_msg *req, json_t *a) {
        json_t *words = json_object_get(a, "args");
        const char *kind = json_string_value(json_array_get(words, 0));
        const char *run = json_string_value(json_array_get(words, 1));
        if (!kind)
                kind = json_string_value(json_object_get(a, "kind"));
        if (!run)
                run = json_string_value(json_object_get(a, "run"));
        json_int_t lines = json_integer_value(json_object_get(a, "lines"));
        if (lines <= 0 || lines > 100000)
                lines = 120;
        if (!kind)
                kind = "test";
        if (strcmp(kind, "build") && strcmp(kind, "test") && strcmp(kind, "agent") && strcmp(kind, "healthcheck"))
                return reply_error(d, req, "logs: build, test, agent or healthcheck, not \"%s\"", kind);
        char last[DEPLOY_NAME_MAX];
        if (!run) {
                cell c = query1(d, "SELECT run_id FROM deploy_runs ORDER BY started_us DESC, rowid DESC LIMIT 1", NULL,
                                0);
                strfmt(last, sizeof last, "%s", c.v);
                run = last;
        }
        if (!run[0] || strchr(run, '/') || run[0] == '.')
                return reply_error(d, req, "logs: no such run \"%s\"", run);
        char path[DEPLOY_PATH_MAX + 160];
        strfmt(path, sizeof path, "%s/%s/%s.log", d->runs, run, kind);
        char *tail = NULL;
        int r = deploy_tail(path, (unsigned)lines, 1024 * 1024, &tail);
        if (r < 0)
                return reply_error(d, req, "logs: %s: %s", path, strerror(-r));
        int rr = reply(d, req,
                       json_pack("{s:s, s:s, s:s, s:s}", "run_id", run, "kind", kind, "path", path, "text", tail));
        free(tail);
        return rr;
}

static int verb_verdict(deploy *d, const org_msg *req, const char *verb, json_t *a) {
        if (!confirmed(a))
                return reply_error(d, req, "%s changes what is deployed: add --confirm true", verb);
        if (d->host->dry_run(d->ctx))
                return reply_error(d, req, "dry_run: %s refused (nothing is switched)", verb);
        if (d->ph == PH_STEP && d->step == STEP_HEALTH)
                return reply_error(d, req, "a healthcheck is running: try again when it is done");
        char cand[DEPLOY_NAME_MAX], err[300];
        kv_get(d, "candidate", cand, sizeof cand);
        if (strcmp(verb, "accept") == 0) {
                if (!cand[0])
                        return reply_error(d, req, "no candidate to accept");
                accept_release(d, cand, "accept");
        } else if (strcmp(verb, "reject") == 0) {
                if (!cand[0])
                        return reply_error(d, req, "no candidate to reject");
                release_set_state(d, cand, "rejected");
                kv_set(d, "candidate", "");
                link_drop(d, "candidate");
                cell sha = query1(d, "SELECT sha FROM deploy_releases WHERE name = ?1", (const char *[]){cand}, 1);
                dlog(d, ORG_LOG_NOTICE, "rejected %s", cand);
                publish(d, "rejected", json_pack("{s:s, s:s}", "release", cand, "commit", sha.v));
        } else if (rollback_release(d, "rollback", err, sizeof err) < 0)
                return reply_error(d, req, "rollback refused: %s", err);
        return reply(d, req, status_json(d));
}

static int deploy_call(void *state, const char *verb, const org_msg *req) {
        deploy *d = state;
        json_t *a = req_args(req);
        int r;
        if (strcmp(verb, "status") == 0)
                r = reply(d, req, status_json(d));
        else if (strcmp(verb, "runs") == 0) {
                json_int_t n = json_integer_value(json_array_get(json_object_get(a, "args"), 0));
                if (!n)
                        n = json_integer_value(json_object_get(a, "n"));
                if (!n && json_is_integer(a))
                        n = json_integer_value(a);
                r = reply(d, req, json_pack("{s:o}", "runs", runs_json(d, n > 0 && n <= 10000 ? (int)n : 20)));
        } else if (strcmp(verb, "last-result") == 0) {
                cell c = query1(d,
                                "SELECT run_id FROM deploy_runs WHERE status != 'running' "
                                "ORDER BY started_us DESC, rowid DESC LIMIT 1",
                                NULL, 0);
                char path[DEPLOY_PATH_MAX + 600];
                strfmt(path, sizeof path, "%s/%s/result.json", d->runs, c.v);
                json_error_t e;
                json_t *o = c.found ? json_load_file(path, 0, &e) : NULL;
                r = o ? reply(d, req, o) : reply_error(d, req, "no finished run yet");
        } else if (strcmp(verb, "logs") == 0)
                r = verb_logs(d, req, a);
        else if (strcmp(verb, "trigger") == 0 || strcmp(verb, "retry") == 0) {
                if (strcmp(verb, "retry") == 0)
                        d->retry_pending = true;
                bool busy = d->ph != PH_IDLE;
                poll_now(d);
                r = reply(d, req, json_pack("{s:b, s:b}", "polling", !busy, "coalesced", busy));
        } else if (strcmp(verb, "accept") == 0 || strcmp(verb, "reject") == 0 || strcmp(verb, "rollback") == 0)
                r = verb_verdict(d, req, verb, a);
        else
                r = -EOPNOTSUPP;
        json_decref(a);
        return r;
}

/* ---- lifecycle ---- */

static void deploy_free(deploy *d) {
        if (!d)
                return;
        for (size_t i = 0; d->env && d->env[i]; i++)
                free(d->env[i]);
        free(d->env);
        free(d);
}

static int load_config(deploy *d) {
        const org_host *h = d->host;
        const char *v;
        strfmt(d->url, sizeof d->url, "%s", (v = cfg_str(d, "url")) ? v : "");
        strfmt(d->branch, sizeof d->branch, "%s", (v = cfg_str(d, "branch")) ? v : "main");
        if (!d->url[0] || !d->branch[0] || strchr(d->branch, ' ') || strstr(d->branch, "..")) {
                dlog(d, ORG_LOG_ERR, "url and a valid branch are required");
                return -EINVAL;
        }
        if ((v = cfg_str(d, "root")))
                strfmt(d->root, sizeof d->root, "%s", v);
        else
                strfmt(d->root, sizeof d->root, "%s/%s", DEFAULT_ROOT_BASE, d->inst);
        if (d->root[0] != '/') {
                dlog(d, ORG_LOG_ERR, "root must be an absolute path, not %s", d->root);
                return -EINVAL;
        }
        strfmt(d->mirror, sizeof d->mirror, "%s/mirror", d->root);
        strfmt(d->releases, sizeof d->releases, "%s/releases", d->root);
        strfmt(d->runs, sizeof d->runs, "%s/runs", d->root);
        strfmt(d->api_url, sizeof d->api_url, "%s", (v = cfg_str(d, "api_url")) ? v : "https://api.github.com");
        const char *detect = cfg_str(d, "detect");
        bool gh_url = deploy_github_repo_of(d->url, d->gh_repo, sizeof d->gh_repo);
        if ((v = cfg_str(d, "github_repo")))
                strfmt(d->gh_repo, sizeof d->gh_repo, "%s", v);
        d->use_github = detect && strcmp(detect, "github") == 0 ? true
                        : detect && strcmp(detect, "git") == 0  ? false
                                                                : gh_url;
        if (d->use_github && !strchr(d->gh_repo, '/')) {
                dlog(d, ORG_LOG_ERR, "detect: github needs github_repo: OWNER/NAME (not derivable from %s)", d->url);
                return -EINVAL;
        }
        if ((v = cfg_str(d, "token_file"))) {
                FILE *f = fopen(v, "re");
                if (f) {
                        size_t n = fread(d->creds.token, 1, sizeof d->creds.token - 1, f);
                        d->creds.token[n] = '\0';
                        d->creds.token[strcspn(d->creds.token, "\r\n")] = '\0';
                        fclose(f);
                } else {
                        dlog(d, ORG_LOG_ERR, "token_file %s: %s", v, strerror(errno));
                        return -errno;
                }
        }
        if ((v = cfg_str(d, "ssh_key")))
                strfmt(d->creds.ssh_key, sizeof d->creds.ssh_key, "%s", v);
        d->poll_ms = (uint64_t)cfg_int(d, "poll_interval", 60000);
        d->timeouts_ms[STEP_BUILD] = (uint64_t)cfg_int(d, "build_timeout", 20 * 60000);
        d->timeouts_ms[STEP_TEST] = (uint64_t)cfg_int(d, "test_timeout", 30 * 60000);
        d->timeouts_ms[STEP_HEALTH] = (uint64_t)cfg_int(d, "health_timeout", 120000);
        d->http_timeout_ms = (uint64_t)cfg_int(d, "http_timeout", 30000);
        d->keep_releases = cfg_int(d, "keep_releases", 10);
        d->keep_runs = cfg_int(d, "keep_runs", 50);
        d->log_max = cfg_int(d, "log_max", 1024 * 1024);
        d->retry_timeouts = cfg_bool(d, "retry_timeouts");
        d->auto_promote = cfg_bool(d, "auto_promote");
        d->auto_rollback = cfg_bool(d, "auto_rollback");
        strfmt(d->path_env, sizeof d->path_env, "%s", (v = cfg_str(d, "path")) ? v : "/usr/local/bin:/usr/bin:/bin");

        json_error_t e;
        json_t *cfg = json_loads(h->config_json(d->ctx), 0, &e);
        json_t *am = json_object_get(cfg, "allow_missing");
        for (size_t i = 0; i < json_array_size(am); i++)
                for (int s = 0; s < STEP_HEALTH; s++)
                        if (json_string_value(json_array_get(am, i)) &&
                            strcmp(json_string_value(json_array_get(am, i)), step_names[s]) == 0)
                                d->allow_missing[s] = true;
        json_t *env = json_object_get(cfg, "env");
        if (json_is_object(env)) {
                d->env = calloc(json_object_size(env) + 1, sizeof *d->env);
                size_t n = 0;
                const char *k;
                json_t *val;
                json_object_foreach (env, k, val) {
                        if (!d->env || !json_is_string(val) || strchr(k, '='))
                                continue;
                        size_t len = strlen(k) + strlen(json_string_value(val)) + 2;
                        char *kv = malloc(len);
                        if (kv) {
                                strfmt(kv, len, "%s=%s", k, json_string_value(val));
                                d->env[n++] = kv;
                        }
                }
        }
        json_decref(cfg);

        /* who builds: never root. As root, `user` is required; otherwise the agent's own
         * user builds unless `user` names it (another user needs root to switch to). */
        const char *user = cfg_str(d, "user");
        if (user) {
                struct passwd pw, *res = NULL;
                char buf[4096];
                if (getpwnam_r(user, &pw, buf, sizeof buf, &res) != 0 || !res) {
                        dlog(d, ORG_LOG_ERR, "user %s: no such user", user);
                        return -ENOENT;
                }
                if (pw.pw_uid == 0) {
                        dlog(d, ORG_LOG_ERR, "user %s is root: builds run unprivileged", user);
                        return -EPERM;
                }
                if (geteuid() != 0 && pw.pw_uid != geteuid()) {
                        dlog(d, ORG_LOG_ERR, "user %s: agentd (uid %u) cannot switch to it", user, (unsigned)geteuid());
                        return -EPERM;
                }
                d->set_ids = geteuid() == 0;
                d->uid = pw.pw_uid;
                d->gid = pw.pw_gid;
        } else if (geteuid() == 0) {
                dlog(d, ORG_LOG_ERR, "user: required when agentd runs as root (repository scripts never run as root)");
                return -EPERM;
        }
        return 0;
}

/* Start-up: folders, half-made releases of a killed run (a .tmp, or a release the
 * store never recorded) removed, interrupted runs marked failed (retried once by the
 * next poll), links brought in line with the store. */
static int recover(deploy *d) {
        int r;
        if ((r = deploy_mkdir_p(d->releases, 0755)) < 0 || (r = deploy_mkdir_p(d->runs, 0755)) < 0) {
                dlog(d, ORG_LOG_ERR, "cannot create %s: %s", d->root, strerror(-r));
                return r;
        }
        for (size_t i = 0; i < sizeof schema / sizeof schema[0]; i++)
                if ((r = exec_sql(d, schema[i], NULL, 0)) < 0)
                        return r;
        /* a reload: the run whose step the previous build handed over is not interrupted
         * (restore_state adopts the step, or fails the run itself) */
        char handed[DEPLOY_NAME_MAX + 32];
        kv_get(d, "handover_run", handed, sizeof handed);
        if (handed[0]) {
                /* "RUN@MONO_US": a marker left by a reload that never reached here (its
                 * new build failed earlier) must not spare a run at the next start */
                kv_set(d, "handover_run", "");
                char *at = strrchr(handed, '@');
                unsigned long long then = at ? strtoull(at + 1, NULL, 10) : 0;
                if (at)
                        *at = '\0';
                if (!at || d->host->now_monotonic_us(d->ctx) - then > 60 * US_PER_SEC)
                        handed[0] = '\0';
        }
        name_list l = {0};
        d->host->store_query(d->ctx, "SELECT run_id FROM deploy_runs WHERE status = 'running'", NULL, 0, row_collect,
                             &l);
        for (size_t i = 0; i < l.n; i++) {
                char path[DEPLOY_PATH_MAX + 80];
                if (handed[0] && strcmp(l.v[i], handed) == 0)
                        continue;
                dlog(d, ORG_LOG_WARNING, "run %s was interrupted (agentd stopped during it): marked failed", l.v[i]);
                exec_sql(d, "UPDATE deploy_runs SET status = 'fail', reason = 'interrupted' WHERE run_id = ?1",
                         (const char *[]){l.v[i]}, 1);
                exec_sql(d, "UPDATE deploy_releases SET state = 'failed' WHERE name = ?1 AND state = 'built'",
                         (const char *[]){l.v[i]}, 1);
                strfmt(path, sizeof path, "%s/%s/agent.log", d->runs, l.v[i]);
                agent_log(d, l.v[i], "interrupted: agentd stopped during the run");
        }
        free(l.v);
        /* half-checked-out releases */
        DIR *dir = opendir(d->releases);
        if (dir) {
                struct dirent *de;
                while ((de = readdir(dir))) {
                        size_t n = strlen(de->d_name);
                        char path[DEPLOY_PATH_MAX + 300];
                        if (de->d_name[0] == '.')
                                continue;
                        strfmt(path, sizeof path, "%s/%s", d->releases, de->d_name);
                        if ((n > 4 && strcmp(de->d_name + n - 4, ".tmp") == 0) ||
                            (n > 10 && strcmp(de->d_name + n - 10, ".tmp.index") == 0)) {
                                dlog(d, ORG_LOG_NOTICE, "removing %s (a checkout cut short)", path);
                                rm_later(d, path);
                        } else if (!query1(d, "SELECT 1 FROM deploy_releases WHERE name = ?1",
                                           (const char *[]){de->d_name}, 1)
                                            .found) {
                                /* checked out and renamed, but killed before the store knew it:
                                 * no run will ever claim it (the retry gets a new name) */
                                dlog(d, ORG_LOG_NOTICE, "removing %s (a release the store never recorded)", path);
                                rm_later(d, path);
                        }
                }
                closedir(dir);
        }
        reconcile_link(d, "current");
        reconcile_link(d, "candidate");
        kv_get(d, "etag", d->etag, sizeof d->etag);
        kv_get(d, "head", d->head, sizeof d->head);
        return 0;
}

static int deploy_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        if (!ORG_HOST_HAS(host, work_submit)) {
                host->log(ctx, ORG_LOG_ERR, "this agentd has no worker pool: deploy needs a newer one");
                return -EOPNOTSUPP;
        }
        deploy *d = calloc(1, sizeof *d);
        if (!d)
                return -ENOMEM;
        d->host = host;
        d->ctx = ctx;
        d->inst = host->instance_name(ctx);
        d->rate_remaining = -1;
        int r;
        if ((r = load_config(d)) < 0 || (r = recover(d)) < 0)
                goto fail;
        char subj[256];
        subject(d, "trigger", subj, sizeof subj);
        if ((r = host->subscribe(ctx, subj, NULL)) < 0)
                goto fail;
        /* the first poll right after start, then every poll_interval */
        if ((r = host->timer_add(ctx, 10, d->poll_ms, on_poll_timer, d, &d->poll_timer)) < 0)
                goto fail;
        *ret_state = d;
        return 0;
fail:
        deploy_free(d);
        return r;
}

static int deploy_handle(void *state, const org_msg *msg) {
        deploy *d = state;
        char subj[256];
        subject(d, "trigger", subj, sizeof subj);
        if (strcmp(msg->subject, subj) == 0)
                poll_now(d);
        return 0;
}

/* A job still on the pool is not waited for here: the host drops or waits for it and
 * frees its block; its done never runs, and deploy_of_ctx no longer finds us. */
static void deploy_fini(void *state) {
        deploy_free(state);
}

/* ---- reload: a build, test or healthcheck that runs goes on in the new build ---- */

/* The step in flight and its exec id; the store learns (handover_run) that the run is
 * handed over, so the new build's recover does not mark it interrupted. Work on the
 * pool (detect, checkout) is not handed over: the host drops it, and the run is
 * marked interrupted as after a restart. */
static int deploy_save(void *state, void **ret_blob, size_t *ret_len) {
        deploy *d = state;
        json_t *o = json_pack("{s:i}", "format", 1);
        if (o && d->ph == PH_STEP && d->step_exec) {
                json_t *steps = json_array();
                for (int i = 0; i < STEP_N; i++)
                        json_array_append_new(steps, d->steps[i] ? json_string(d->steps[i]) : json_null());
                json_object_update_new(
                        o, json_pack("{s:I, s:i, s:s, s:s, s:s, s:s, s:o, s:b, s:s, s:I, s:I, s:i}", "exec_id",
                                     (json_int_t)d->step_exec, "step", (int)d->step, "run_id", d->run_id, "run_sha",
                                     d->run_sha, "run_dir", d->run_dir, "rel_dir", d->rel_dir, "steps", steps,
                                     "health_of_current", d->health_of_current, "health_release", d->health_release,
                                     "run_started_us", (json_int_t)d->run_started_us, "step_started_us",
                                     (json_int_t)d->step_started_us, "auto_retry", d->auto_retry));
                char marker[DEPLOY_NAME_MAX + 32];
                strfmt(marker, sizeof marker, "%s@%llu", d->run_id,
                       (unsigned long long)d->host->now_monotonic_us(d->ctx));
                kv_set(d, "handover_run", marker);
        }
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static const char *step_result_name(const char *v) {
        static const char *const names[] = {"skipped", "running", "ok", "fail", "timeout"};
        for (size_t i = 0; v && i < sizeof names / sizeof names[0]; i++)
                if (strcmp(v, names[i]) == 0)
                        return names[i];
        return NULL;
}

static void copy_str(char *dst, size_t len, const json_t *o, const char *key) {
        const char *v = json_string_value(json_object_get(o, key));
        strfmt(dst, len, "%s", v ? v : "");
}

static int deploy_restore(void *state, const void *blob, size_t len) {
        deploy *d = state;
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        json_int_t step = json_integer_value(json_object_get(o, "step"));
        uint64_t id = (uint64_t)json_integer_value(json_object_get(o, "exec_id"));
        if (json_integer_value(json_object_get(o, "format")) != 1 || !id || step < 0 || step >= STEP_N) {
                json_decref(o);
                return 0; /* nothing was running */
        }
        d->step = (deploy_step)step;
        copy_str(d->run_id, sizeof d->run_id, o, "run_id");
        copy_str(d->run_sha, sizeof d->run_sha, o, "run_sha");
        copy_str(d->run_dir, sizeof d->run_dir, o, "run_dir");
        copy_str(d->rel_dir, sizeof d->rel_dir, o, "rel_dir");
        copy_str(d->health_release, sizeof d->health_release, o, "health_release");
        for (int i = 0; i < STEP_N; i++)
                d->steps[i] = step_result_name(json_string_value(json_array_get(json_object_get(o, "steps"), (size_t)i)));
        d->health_of_current = json_is_true(json_object_get(o, "health_of_current"));
        d->run_started_us = (uint64_t)json_integer_value(json_object_get(o, "run_started_us"));
        d->step_started_us = (uint64_t)json_integer_value(json_object_get(o, "step_started_us"));
        d->auto_retry = (int)json_integer_value(json_object_get(o, "auto_retry"));
        json_decref(o);
        int r = ORG_HOST_HAS(d->host, exec_adopt) ? d->host->exec_adopt(d->ctx, id, on_step_done, d) : -EOPNOTSUPP;
        if (r >= 0) {
                d->ph = PH_STEP;
                d->step_exec = id;
                agent_log(d, d->run_id, "%s: taken over by the new build of the plugin", step_names[d->step]);
                return 0;
        }
        /* the host kills the step: the run ends here, in the store too */
        char reason[128];
        strfmt(reason, sizeof reason, "interrupted: the new build could not take %s over (%s)", step_names[d->step],
               strerror(-r));
        if (d->step == STEP_HEALTH) {
                /* not judged: an unfinished check must not promote nor roll back */
                d->ph = PH_IDLE;
                dlog(d, ORG_LOG_WARNING, "healthcheck of %s %s", d->health_release, reason);
        } else {
                d->steps[d->step] = "fail";
                finish_run(d, false, step_names[d->step], reason);
        }
        return 0;
}

ORG_PLUGIN_DEFINE(.name = "deploy", .version = "1.0.0",
                  .summary = "git branch -> timestamped release -> build and test as an unprivileged user -> "
                             "candidate; accept, reject and rollback by atomic link switches",
                  .config_map = deploy_config_map, .verbs = deploy_verbs, .init = deploy_init, .handle = deploy_handle,
                  .call = deploy_call, .fini = deploy_fini, .save_state = deploy_save,
                  .restore_state = deploy_restore);
