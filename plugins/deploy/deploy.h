/* deploy.h — the deploy plugin's pieces: git.c (libgit2: remote ls, fetch into the bare
 * mirror, checkout of a commit into a directory), github.c (libcurl: the conditional
 * GitHub commits request), release.c (names, atomic link switches, atomic files, tree
 * removal and ownership). Everything in git.c and github.c blocks and runs on the host's
 * worker pool only; release.c's link switch is a few syscalls and runs on the loop. */
#ifndef DEPLOY_H
#define DEPLOY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DEPLOY_SHA_MAX  41
#define DEPLOY_ERR_MAX  512
#define DEPLOY_PATH_MAX 1024
#define DEPLOY_URL_MAX  1024
#define DEPLOY_ETAG_MAX 256
#define DEPLOY_NAME_MAX 64 /* YYYYmmddTHHMMSSZ-sha8 and a few more */

/* Credentials for the remote: both empty = none (public or local repository). */
typedef struct deploy_creds {
        char ssh_key[DEPLOY_PATH_MAX]; /* private key file; its ".pub" next to it is used when present */
        char token[DEPLOY_ETAG_MAX];   /* HTTPS token (read from token_file on the loop) */
} deploy_creds;

/* git.c */
void deploy_git_init(void);
void deploy_git_shutdown(void);
/* The commit BRANCH points at on URL (remote ls, no repository needed). */
int deploy_git_ls(const char *url, const char *branch, const deploy_creds *creds, char ret_sha[DEPLOY_SHA_MAX],
                  char *err, size_t err_len);
/* Makes sure the bare mirror at MIRROR holds commit SHA, fetching BRANCH from URL when
 * it does not (initialising the mirror when absent). *ret_fetched tells whether a fetch
 * ran. A corrupt mirror is moved aside and fetched again from scratch. */
int deploy_git_ensure(const char *mirror, const char *url, const char *branch, const deploy_creds *creds,
                      const char *sha, bool *ret_fetched, char *err, size_t err_len);
/* Checks out SHA of the bare MIRROR into DIR (created; must not exist) with an explicit
 * force strategy and a throwaway in-memory index: the mirror is never written. */
int deploy_git_checkout(const char *mirror, const char *sha, const char *dir, size_t *ret_files, char *err,
                        size_t err_len);

/* github.c */
void deploy_http_init(void);
void deploy_http_shutdown(void);
typedef struct deploy_gh_result {
        long http_status; /* 200, 304, 401, 404, ...; 0: no answer */
        char sha[DEPLOY_SHA_MAX];
        char etag[DEPLOY_ETAG_MAX];
        long rate_remaining; /* X-RateLimit-Remaining, -1 when absent */
} deploy_gh_result;
/* GET API/repos/REPO/commits/BRANCH with If-None-Match: ETAG (when not empty), the
 * token as a bearer when not empty, TLS verified, TIMEOUT_MS overall. 0 when an answer
 * came (any status, see ret->http_status), a negative errno with err filled otherwise. */
int deploy_github_head(const char *api, const char *repo, const char *branch, const char *etag, const char *token,
                       uint64_t timeout_ms, deploy_gh_result *ret, char *err, size_t err_len);
/* "owner/name" of a github.com URL (https://github.com/o/n(.git), git@github.com:o/n.git). */
bool deploy_github_repo_of(const char *url, char *ret, size_t len);

/* release.c */
/* releases/<YYYYmmddTHHMMSSZ>-<sha8> for the UTC instant now_us. */
void deploy_release_name(uint64_t now_us, const char *sha, char *ret, size_t len);
/* Points DIR/LINK at TARGET atomically: symlink at a temporary name, rename over LINK,
 * fsync of DIR. LINK is never missing or dangling in between. */
int deploy_link_switch(const char *dir, const char *link, const char *target);
/* The target of DIR/LINK as written (a relative path such as "releases/NAME"), or
 * -ENOENT. */
int deploy_link_read(const char *dir, const char *link, char *ret, size_t len);
/* Writes PATH atomically (tmp, fsync, rename, fsync of the directory). */
int deploy_write_atomic(const char *path, const char *data, size_t len);
int deploy_rm_rf(const char *path);
int deploy_chown_tree(const char *path, uid_t uid, gid_t gid);
int deploy_mkdir_p(const char *path, mode_t mode);
int deploy_fsync_dir(const char *path);
/* The last N lines of FILE (at most max bytes read from its end), malloc'd. */
int deploy_tail(const char *path, unsigned lines, size_t max, char **ret);

#endif
