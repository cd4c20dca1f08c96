/* bench-deploy.c — the deploy plugin's costs, printed (never asserted): an unchanged
 * GitHub poll (one conditional request answered 304 by a tiny local server, counted),
 * a libgit2 remote ls of a local repository, the checkout of a repository of N files
 * (argument 1, default 5000) into a release, and one atomic link switch (symlink,
 * rename, fsync of the folder). The poll and the checkout run on the worker pool in
 * agentd; the loop only submits and receives them. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "deploy.h"
#include "test.h"
#include "workpool.h"

static atomic_int answered_304, answered_other;
static int listen_fd;

static uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* A one-connection-at-a-time HTTP/1.1 server: 304 when If-None-Match is "x". */
static void *server(void *arg) {
        for (;;) {
                int c = accept(listen_fd, NULL, NULL);
                if (c < 0)
                        return NULL;
                char buf[4096];
                ssize_t n = read(c, buf, sizeof buf - 1);
                buf[n > 0 ? n : 0] = '\0';
                const char *reply;
                if (strstr(buf, "If-None-Match: \"x\"")) {
                        reply = "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nX-RateLimit-Remaining: 5000\r\n"
                                "Connection: close\r\n\r\n";
                        atomic_fetch_add(&answered_304, 1);
                } else {
                        reply = "HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Type: application/json\r\nContent-Length: "
                                "51\r\n"
                                "Connection: close\r\n\r\n{\"sha\": \"0123456789012345678901234567890123456789\"}";
                        atomic_fetch_add(&answered_other, 1);
                }
                ssize_t _w = write(c, reply, strlen(reply));
                (void)_w;
                close(c);
        }
}

static int run(const char *const *argv) {
        pid_t pid = fork();
        if (pid == 0) {
                int fd = open("/dev/null", O_WRONLY);
                dup2(fd, 1);
                dup2(fd, 2);
                execvp(argv[0], (char *const *)argv);
                _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char bench_api[64];
static int bench_done;
static uint64_t bench_done_us;

static int bench_poll_work(void *userdata) {
        deploy_gh_result r;
        char err[DEPLOY_ERR_MAX];
        int rc = deploy_github_head(bench_api, "o/r", "main", userdata, "", 5000, &r, err, sizeof err);
        return rc < 0 ? rc : (int)r.http_status;
}

static void bench_poll_done(org_ctx *ctx, int result, void *userdata) {
        uint64_t a = now_us();
        CHECK_INT(result, 304);
        bench_done++;
        bench_done_us += now_us() - a;
}

int main(int argc, char **argv) {
        int n_files = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 5000;
        if (run((const char *[]){"git", "--version", NULL}) != 0)
                TEST_SKIP("git is not installed");
        deploy_git_init();
        deploy_http_init();
        char err[DEPLOY_ERR_MAX], sha[DEPLOY_SHA_MAX];

        /* 1. unchanged poll */
        listen_fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof sa;
        CHECK(bind(listen_fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(listen_fd, 16) == 0);
        getsockname(listen_fd, (struct sockaddr *)&sa, &sl);
        pthread_t t;
        pthread_create(&t, NULL, server, NULL);
        char api[64];
        snprintf(api, sizeof api, "http://127.0.0.1:%d", ntohs(sa.sin_port));
        snprintf(bench_api, sizeof bench_api, "%s", api);
        deploy_gh_result gh;
        if (deploy_github_head(api, "o/r", "main", "", "", 5000, &gh, err, sizeof err) < 0)
                TEST_SKIP("no local HTTP: %s", err);
        CHECK_INT(gh.http_status, 200);
        const int polls = 200;
        uint64_t t0 = now_us();
        for (int i = 0; i < polls; i++) {
                CHECK_INT(deploy_github_head(api, "o/r", "main", gh.etag, "", 5000, &gh, err, sizeof err), 0);
                CHECK_INT(gh.http_status, 304);
        }
        uint64_t dt = now_us() - t0;
        printf("unchanged poll (GitHub API, 304): %d polls, %d answered 304, %d other requests; %.0f us per poll "
               "(the request itself, local server)\n",
               polls, atomic_load(&answered_304), atomic_load(&answered_other) - 1, (double)dt / polls);

        /* 1b. the same polls through the host's worker pool on an sd-event loop: what
         * the loop itself spends (submit, wake-up, done), the request on a pool thread */
        {
                sd_event *e = NULL;
                workpool *pool = NULL;
                CHECK(sd_event_new(&e) >= 0);
                CHECK_INT(workpool_new(e, 2, NULL, NULL, &pool), 0);
                static struct {
                        char etag[DEPLOY_ETAG_MAX];
                        uint64_t loop_us;
                } st;
                snprintf(st.etag, sizeof st.etag, "%s", gh.etag);
                st.loop_us = 0;
                int polls2 = 200;
                for (int i = 0; i < polls2; i++) {
                        uint64_t a = now_us();
                        CHECK_INT(workpool_submit(pool, NULL, bench_poll_work, bench_poll_done, st.etag, NULL, NULL), 0);
                        st.loop_us += now_us() - a;
                        while (bench_done < i + 1) {
                                CHECK(sd_event_run(e, 5000000) >= 0);
                        }
                }
                printf("unchanged poll through the worker pool: %.1f us on the loop per poll (submit + done), %d "
                       "polls\n",
                       (double)(st.loop_us + bench_done_us) / polls2, polls2);
                workpool_free(pool);
                sd_event_unref(e);
        }

        /* 2. a repository of n_files */
        char tmp[] = "/tmp/bench-deploy-XXXXXX";
        CHECK(mkdtemp(tmp));
        char repo[128], path[256], url[160], mirror[160];
        snprintf(repo, sizeof repo, "%s/repo", tmp);
        CHECK_INT(run((const char *[]){"git", "init", "-q", "-b", "main", repo, NULL}), 0);
        for (int i = 0; i < n_files; i++) {
                if (i % 100 == 0) {
                        snprintf(path, sizeof path, "%s/d%03d", repo, i / 100);
                        mkdir(path, 0755);
                }
                snprintf(path, sizeof path, "%s/d%03d/f%05d.txt", repo, i / 100, i);
                FILE *f = fopen(path, "w");
                CHECK(f);
                fprintf(f, "file %d\n%0512d\n", i, i);
                fclose(f);
        }
        CHECK_INT(run((const char *[]){"git", "-C", repo, "add", "-A", NULL}), 0);
        CHECK_INT(run((const char *[]){"git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@e", "commit", "-q",
                                       "-m", "many", NULL}),
                  0);
        snprintf(url, sizeof url, "file://%s", repo);
        snprintf(mirror, sizeof mirror, "%s/mirror", tmp);
        deploy_creds creds = {{0}};
        const int lss = 50;
        t0 = now_us();
        for (int i = 0; i < lss; i++)
                CHECK_INT(deploy_git_ls(url, "main", &creds, sha, err, sizeof err), 0);
        dt = now_us() - t0;
        printf("remote ls (libgit2, file://): %.0f us per poll\n", (double)dt / lss);
        bool fetched;
        t0 = now_us();
        CHECK_INT(deploy_git_ensure(mirror, url, "main", &creds, sha, &fetched, err, sizeof err), 0);
        printf("first fetch into the bare mirror: %d files, %.1f ms\n", n_files, (double)(now_us() - t0) / 1000);
        double best = 1e18, sum = 0;
        const int rounds = 3;
        for (int i = 0; i < rounds; i++) {
                char dir[200];
                snprintf(dir, sizeof dir, "%s/rel%d", tmp, i);
                size_t files = 0;
                t0 = now_us();
                CHECK_INT(deploy_git_checkout(mirror, sha, dir, &files, err, sizeof err), 0);
                double ms = (double)(now_us() - t0) / 1000;
                CHECK_INT(files, (size_t)n_files);
                sum += ms;
                best = ms < best ? ms : best;
        }
        printf("checkout into a release: %d files, best %.1f ms, mean %.1f ms over %d\n", n_files, best, sum / rounds,
               rounds);

        /* 3. link switches */
        const int switches = 500;
        t0 = now_us();
        for (int i = 0; i < switches; i++)
                CHECK_INT(deploy_link_switch(tmp, "current", i % 2 ? "rel1" : "rel0"), 0);
        dt = now_us() - t0;
        printf("atomic switch of current (symlink + rename + fsync of the folder): %.1f us each\n",
               (double)dt / switches);
        CHECK_INT(deploy_rm_rf(tmp), 0);
        close(listen_fd);
        deploy_http_shutdown();
        deploy_git_shutdown();
        return 0;
}
