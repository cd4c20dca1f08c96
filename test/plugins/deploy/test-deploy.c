/* test-deploy.c — the deploy plugin's pieces on a real git repository made here (git
 * init and commits through the git command) and the whole plugin against the fake host:
 * remote ls and fetch into a bare mirror, a checkout that really writes files (the
 * libgit2 1.5.1 zero-strategy dry run would leave the folder empty) and never gives the
 * mirror an index, atomic link switches, result files, GitHub URL parsing; then polls
 * through the fake worker pool, a green run to candidate, a failed commit not rebuilt,
 * retry, accept/reject/rollback rules and --confirm. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "deploy.h"
#include "fakehost.h"
#include "test.h"

extern const org_plugin organism_plugin;

static char tmp[256], repo[300];

static int run(const char *const *argv) {
        pid_t pid = fork();
        if (pid == 0) {
                int fd = open("/dev/null", O_WRONLY);
                dup2(fd, 1);
                execvp(argv[0], (char *const *)argv);
                _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *dir, const char *name, const char *text, mode_t mode) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", dir, name);
        FILE *f = fopen(p, "w");
        CHECK(f);
        fputs(text, f);
        fclose(f);
        chmod(p, mode);
}

/* A commit whose test.sh exits with test_status; returns its sha in ret. */
static void commit(const char *msg, int test_status, char ret[DEPLOY_SHA_MAX]) {
        char sd[400], t[64];
        snprintf(sd, sizeof sd, "%s/scripts", repo);
        mkdir(sd, 0755);
        write_file(sd, "build.sh", "#!/bin/sh\nexit 0\n", 0755);
        snprintf(t, sizeof t, "#!/bin/sh\nexit %d\n", test_status);
        write_file(sd, "test.sh", t, 0755);
        write_file(repo, "VERSION", msg, 0644);
        CHECK_INT(run((const char *[]){"git", "-C", repo, "add", "-A", NULL}), 0);
        CHECK_INT(run((const char *[]){"git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q",
                                       "-m", msg, NULL}),
                  0);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "git -C %s rev-parse HEAD", repo);
        FILE *p = popen(cmd, "r");
        CHECK(p && fgets(ret, DEPLOY_SHA_MAX, p));
        pclose(p);
        ret[40] = '\0';
}

static void test_pieces(void) {
        char sha[DEPLOY_SHA_MAX], got[DEPLOY_SHA_MAX], url[400], mirror[400], dir[400], err[DEPLOY_ERR_MAX];
        commit("one", 0, sha);
        snprintf(url, sizeof url, "file://%s", repo);
        snprintf(mirror, sizeof mirror, "%s/mirror", tmp);
        deploy_creds creds = {{0}};
        CHECK_INT(deploy_git_ls(url, "main", &creds, got, err, sizeof err), 0);
        CHECK_STR(got, sha);
        CHECK_INT(deploy_git_ls(url, "nope", &creds, got, err, sizeof err), -ENOENT);
        CHECK_CONTAINS(err, "no branch nope");
        bool fetched = false;
        CHECK_INT(deploy_git_ensure(mirror, url, "main", &creds, sha, &fetched, err, sizeof err), 0);
        CHECK(fetched);
        CHECK_INT(deploy_git_ensure(mirror, url, "main", &creds, sha, &fetched, err, sizeof err), 0);
        CHECK(!fetched); /* already there: no network */
        snprintf(dir, sizeof dir, "%s/rel", tmp);
        size_t files = 0;
        CHECK_INT(deploy_git_checkout(mirror, sha, dir, &files, err, sizeof err), 0);
        CHECK_INT(files, 3);
        char p[500];
        snprintf(p, sizeof p, "%s/VERSION", dir);
        CHECK(access(p, F_OK) == 0); /* a real checkout, not 1.5.1's dry run */
        snprintf(p, sizeof p, "%s/scripts/test.sh", dir);
        CHECK(access(p, X_OK) == 0);
        snprintf(p, sizeof p, "%s/index", mirror);
        CHECK(access(p, F_OK) < 0); /* the mirror never got an index */
        snprintf(p, sizeof p, "%s.index", dir);
        CHECK(access(p, F_OK) < 0); /* the throwaway index is gone */
        CHECK_INT(deploy_git_checkout(mirror, "0123456789012345678901234567890123456789", dir, NULL, err, sizeof err) <
                          0,
                  1);

        /* links */
        CHECK_INT(deploy_link_switch(tmp, "current", "releases/a"), 0);
        CHECK_INT(deploy_link_switch(tmp, "current", "releases/b"), 0);
        char t[100];
        CHECK_INT(deploy_link_read(tmp, "current", t, sizeof t), 0);
        CHECK_STR(t, "releases/b");
        snprintf(p, sizeof p, "%s/.current.tmp", tmp);
        CHECK(access(p, F_OK) < 0);
        CHECK_INT(deploy_link_read(tmp, "candidate", t, sizeof t), -ENOENT);

        /* atomic file and tail */
        snprintf(p, sizeof p, "%s/f.txt", tmp);
        CHECK_INT(deploy_write_atomic(p, "a\nb\nc\nd\n", 8), 0);
        char *tail = NULL;
        CHECK_INT(deploy_tail(p, 2, 1000, &tail), 0);
        CHECK_STR(tail, "c\nd\n");
        free(tail);

        char name[DEPLOY_NAME_MAX];
        deploy_release_name(1796158783ULL * 1000000, sha, name, sizeof name);
        CHECK_INT(strlen(name), 16 + 1 + 8);
        CHECK(name[8] == 'T' && name[15] == 'Z' && strncmp(name + 17, sha, 8) == 0);

        char r[100];
        CHECK(deploy_github_repo_of("https://github.com/o/web.git", r, sizeof r));
        CHECK_STR(r, "o/web");
        CHECK(deploy_github_repo_of("git@github.com:o/web.git", r, sizeof r));
        CHECK_STR(r, "o/web");
        CHECK(!deploy_github_repo_of("https://gitlab.com/o/web.git", r, sizeof r));
        CHECK(!deploy_github_repo_of("https://github.com/o", r, sizeof r));

        CHECK_INT(deploy_rm_rf(dir), 0);
        CHECK(access(dir, F_OK) < 0);
}

static json_t *call(void *state, org_ctx *ctx, const char *verb, const char *args) {
        char *reply = NULL;
        CHECK_INT(fake_call(&organism_plugin, state, ctx, verb, args, &reply), 0);
        json_error_t e;
        json_t *o = json_loads(reply, 0, &e);
        free(reply);
        CHECK(o);
        return o;
}

static const char *jstr(json_t *o, const char *k) {
        return json_string_value(json_object_get(o, k));
}

static void poll(org_ctx *ctx) {
        fake_fire_timers(ctx);
        while (fake_work_run(ctx) > 0) {
        }
}

static void test_plugin(void) {
        char cfg[1200];
        snprintf(cfg, sizeof cfg,
                 "{\"url\": \"file://%s\", \"branch\": \"main\", \"root\": \"%s/root\", %s"
                 "\"poll_interval\": 60000, \"build_timeout\": 1000, \"test_timeout\": 1000, \"keep_releases\": 10, "
                 "\"keep_runs\": 50, \"log_max\": 65536, \"allow_missing\": [], \"path\": \"/usr/bin:/bin\"}",
                 repo, tmp, geteuid() == 0 ? "\"user\": \"nobody\"," : "");
        org_ctx ctx;
        fake_ctx_init(&ctx, "web", cfg);
        void *state = NULL;
        CHECK_INT(organism_plugin.init(&fake_host, &ctx, &state), 0);
        char sha[DEPLOY_SHA_MAX];
        commit("two", 0, sha);
        poll(&ctx);
        CHECK(fake_last_published(&ctx, "deploy.web.run"));
        const char *cand = fake_last_published(&ctx, "deploy.web.candidate");
        CHECK(cand);
        CHECK_CONTAINS(cand, sha);
        CHECK_INT(ctx.n_execs, 2); /* build, test */
        json_t *s = call(state, &ctx, "status", "");
        CHECK(jstr(s, "candidate"));
        char rel_a[DEPLOY_NAME_MAX];
        snprintf(rel_a, sizeof rel_a, "%s", jstr(s, "candidate"));
        json_decref(s);

        /* accept needs --confirm */
        s = call(state, &ctx, "accept", "{}");
        CHECK_CONTAINS(jstr(s, "error"), "--confirm");
        json_decref(s);
        s = call(state, &ctx, "accept", "{\"confirm\": true}");
        CHECK_STR(jstr(s, "current"), rel_a);
        json_decref(s);
        s = call(state, &ctx, "rollback", "{\"confirm\": true}");
        CHECK_CONTAINS(jstr(s, "error"), "no earlier accepted release");
        json_decref(s);

        /* a failing commit: failed once, not rebuilt by polls, rebuilt by retry */
        commit("three", 0, sha);
        ctx.exec_status = 1;
        poll(&ctx);
        CHECK(fake_last_published(&ctx, "deploy.web.failed"));
        size_t n = ctx.n_execs;
        CHECK_INT(n, 3); /* the build failed: no test */
        poll(&ctx);
        poll(&ctx);
        CHECK_INT(ctx.n_execs, n);
        s = call(state, &ctx, "retry", "{}");
        json_decref(s);
        while (fake_work_run(&ctx) > 0) {
        }
        CHECK_INT(ctx.n_execs, n + 1);
        s = call(state, &ctx, "status", "");
        CHECK(!json_object_get(s, "candidate") || json_is_null(json_object_get(s, "candidate")));
        json_decref(s);

        /* a green one rejected, then a green one accepted; rollback returns to A */
        ctx.exec_status = 0;
        commit("four", 0, sha);
        poll(&ctx);
        s = call(state, &ctx, "reject", "{\"confirm\": true}");
        CHECK(json_is_null(json_object_get(s, "candidate")));
        json_decref(s);
        commit("five", 0, sha);
        poll(&ctx);
        s = call(state, &ctx, "accept", "{\"confirm\": true}");
        CHECK(strcmp(jstr(s, "current"), rel_a) != 0);
        CHECK_STR(jstr(s, "last_accepted"), rel_a);
        json_decref(s);
        s = call(state, &ctx, "rollback", "{\"confirm\": true}");
        CHECK_STR(jstr(s, "current"), rel_a);
        json_decref(s);
        s = call(state, &ctx, "rollback", "{\"confirm\": true}");
        CHECK_CONTAINS(jstr(s, "error"), "no earlier accepted release");
        json_decref(s);
        s = call(state, &ctx, "runs", "{\"args\": [2]}");
        CHECK_INT(json_array_size(json_object_get(s, "runs")), 2);
        json_decref(s);
        s = call(state, &ctx, "last-result", "");
        CHECK_STR(jstr(s, "status"), "success");
        json_decref(s);

        organism_plugin.fini(state);
        fake_ctx_done(&ctx);
}

int main(void) {
        if (run((const char *[]){"git", "--version", NULL}) != 0)
                TEST_SKIP("git is not installed");
        snprintf(tmp, sizeof tmp, "/tmp/test-deploy-XXXXXX");
        CHECK(mkdtemp(tmp));
        chmod(tmp, 0755);
        snprintf(repo, sizeof repo, "%s/repo", tmp);
        mkdir(repo, 0755);
        CHECK_INT(run((const char *[]){"git", "init", "-q", "-b", "main", repo, NULL}), 0);
        deploy_git_init();
        deploy_http_init();
        test_pieces();
        test_plugin();
        deploy_rm_rf(tmp);
        deploy_http_shutdown();
        deploy_git_shutdown();
        printf("ok\n");
        return 0;
}
