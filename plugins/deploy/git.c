/* git.c — libgit2 for the deploy plugin: remote ls, fetch into a bare mirror that
 * belongs to the plugin (never the operator's working clone), and checkout of one
 * commit into a fresh directory.
 *
 * The libgit2 1.5.1 trap: a zero-filled git_checkout_options means GIT_CHECKOUT_NONE,
 * a dry run that writes nothing. Options are always initialised with
 * git_checkout_options_init and given GIT_CHECKOUT_FORCE explicitly. Checkout into
 * target_directory of a bare repository still opens the repository's index, so the
 * repository gets a throwaway index first and GIT_CHECKOUT_DONT_WRITE_INDEX: nothing of
 * the mirror is written. Every function here blocks: worker pool only. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <git2.h>
#include <git2/sys/repository.h>

#include "deploy.h"

/* No global, XDG or system git config: the mirror's behaviour (credential helpers,
 * proxies, URL rewrites) comes from the plugin's config, not from ~/.gitconfig of
 * whoever runs agentd. */
void deploy_git_init(void) {
        if (git_libgit2_init() == 1) {
                git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, GIT_CONFIG_LEVEL_GLOBAL, "");
                git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, GIT_CONFIG_LEVEL_XDG, "");
                git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, GIT_CONFIG_LEVEL_SYSTEM, "");
                git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, GIT_CONFIG_LEVEL_PROGRAMDATA, "");
        }
}
void deploy_git_shutdown(void) {
        git_libgit2_shutdown();
}

static int git_fail(int code, const char *what, char *err, size_t err_len) {
        const git_error *e = git_error_last();
        snprintf(err, err_len, "%s: %s", what, e && e->message ? e->message : "unknown libgit2 error");
        return code == GIT_ENOTFOUND ? -ENOENT : code == GIT_EAUTH ? -EACCES : -EIO;
}

static int creds_cb(git_credential **out, const char *url, const char *user_from_url, unsigned int allowed,
                    void *payload) {
        const deploy_creds *c = payload;
        if (c && c->ssh_key[0] && (allowed & GIT_CREDENTIAL_SSH_KEY)) {
                char pub[DEPLOY_PATH_MAX + 8];
                snprintf(pub, sizeof pub, "%s.pub", c->ssh_key);
                return git_credential_ssh_key_new(out, user_from_url ? user_from_url : "git",
                                                  access(pub, R_OK) == 0 ? pub : NULL, c->ssh_key, NULL);
        }
        if (c && c->token[0] && (allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT))
                return git_credential_userpass_plaintext_new(out, "x-access-token", c->token);
        /* no agent, no default keys of the process: only what the config names */
        return GIT_PASSTHROUGH;
}

static void callbacks(git_remote_callbacks *cb, const deploy_creds *creds) {
        git_remote_init_callbacks(cb, GIT_REMOTE_CALLBACKS_VERSION);
        cb->credentials = creds_cb;
        cb->payload = (void *)creds;
}

int deploy_git_ls(const char *url, const char *branch, const deploy_creds *creds, char ret_sha[DEPLOY_SHA_MAX],
                  char *err, size_t err_len) {
        git_remote *remote = NULL;
        git_remote_callbacks cb;
        callbacks(&cb, creds);
        int r = git_remote_create_detached(&remote, url);
        if (r < 0)
                return git_fail(r, "bad url", err, err_len);
        r = git_remote_connect(remote, GIT_DIRECTION_FETCH, &cb, NULL, NULL);
        if (r < 0) {
                r = git_fail(r, "cannot reach the remote", err, err_len);
                goto out;
        }
        const git_remote_head **heads;
        size_t n;
        r = git_remote_ls(&heads, &n, remote);
        if (r < 0) {
                r = git_fail(r, "remote ls", err, err_len);
                goto out;
        }
        char ref[512];
        snprintf(ref, sizeof ref, "refs/heads/%s", branch);
        r = -ENOENT;
        snprintf(err, err_len, "no branch %s on the remote", branch);
        for (size_t i = 0; i < n; i++)
                if (strcmp(heads[i]->name, ref) == 0) {
                        git_oid_tostr(ret_sha, DEPLOY_SHA_MAX, &heads[i]->oid);
                        r = 0;
                        err[0] = '\0';
                        break;
                }
out:
        git_remote_free(remote);
        return r;
}

static bool has_commit(git_repository *repo, const char *sha) {
        git_oid oid;
        git_commit *c = NULL;
        if (git_oid_fromstr(&oid, sha) < 0 || git_commit_lookup(&c, repo, &oid) < 0)
                return false;
        git_commit_free(c);
        return true;
}

/* A corrupt mirror is moved aside (never deleted: an operator may want to look) and
 * created anew; the next fetch fills it. */
static int move_aside_and_init(const char *mirror, git_repository **ret, char *err, size_t err_len) {
        char aside[DEPLOY_PATH_MAX + 32];
        int n = snprintf(aside, sizeof aside, "%s.corrupt-%lld", mirror, (long long)time(NULL));
        if (n < 0 || (size_t)n >= sizeof aside || rename(mirror, aside) < 0) {
                snprintf(err, err_len, "the mirror %s is unreadable and cannot be moved aside: %s", mirror,
                         strerror(errno));
                return -EIO;
        }
        int r = git_repository_init(ret, mirror, 1);
        return r < 0 ? git_fail(r, "cannot re-create the mirror", err, err_len) : 0;
}

static int open_or_init(const char *mirror, git_repository **ret, char *err, size_t err_len) {
        int r = git_repository_open_bare(ret, mirror);
        if (r == GIT_ENOTFOUND || (r < 0 && access(mirror, F_OK) < 0)) {
                r = git_repository_init(ret, mirror, 1);
                if (r < 0)
                        return git_fail(r, "cannot create the mirror", err, err_len);
                return 0;
        }
        return r < 0 ? move_aside_and_init(mirror, ret, err, err_len) : 0;
}

/* Whether the last libgit2 error is the network's (the mirror is fine) or the
 * repository's own (refs, objects, config: the mirror is damaged). */
static bool last_error_is_local(void) {
        const git_error *e = git_error_last();
        if (!e)
                return false;
        switch (e->klass) {
        case GIT_ERROR_REFERENCE:
        case GIT_ERROR_ODB:
        case GIT_ERROR_OBJECT:
        case GIT_ERROR_REPOSITORY:
        case GIT_ERROR_CONFIG:
        case GIT_ERROR_ZLIB:
        case GIT_ERROR_INDEXER:
                return true;
        default:
                return false;
        }
}

/* An in-memory remote on the mirror: no name, no default fetchspec, and no url.*.insteadOf
 * lookup (nothing in the mirror's config may redirect the URL; that lookup is also where
 * libgit2 1.5.1 leaks pcre2 match data on every call). */
static int remote_on(git_repository *repo, const char *url, git_remote **ret) {
        git_remote_create_options o;
        git_remote_create_options_init(&o, GIT_REMOTE_CREATE_OPTIONS_VERSION);
        o.repository = repo;
        o.flags = GIT_REMOTE_CREATE_SKIP_INSTEADOF | GIT_REMOTE_CREATE_SKIP_DEFAULT_FETCHSPEC;
        return git_remote_create_with_opts(ret, url, &o);
}

int deploy_git_ensure(const char *mirror, const char *url, const char *branch, const deploy_creds *creds,
                      const char *sha, bool *ret_fetched, char *err, size_t err_len) {
        git_repository *repo = NULL;
        git_remote *remote = NULL;
        int r = open_or_init(mirror, &repo, err, err_len);
        if (r < 0)
                return r;
        bool fetched = false;
        if (!sha[0] || !has_commit(repo, sha)) {
                r = remote_on(repo, url, &remote);
                if (r < 0) {
                        r = git_fail(r, "bad url", err, err_len);
                        goto out;
                }
                char spec[600];
                snprintf(spec, sizeof spec, "+refs/heads/%s:refs/heads/%s", branch, branch);
                char *specs[] = {spec};
                git_strarray refspecs = {specs, 1};
                git_fetch_options fo;
                git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
                callbacks(&fo.callbacks, creds);
                fo.prune = GIT_FETCH_PRUNE;
                fo.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
                r = git_remote_fetch(remote, &refspecs, &fo, "deploy: fetch");
                if (r < 0 && last_error_is_local()) {
                        /* once: a damaged mirror is set aside and fetched from scratch */
                        git_remote_free(remote);
                        remote = NULL;
                        git_repository_free(repo);
                        repo = NULL;
                        if ((r = move_aside_and_init(mirror, &repo, err, err_len)) < 0)
                                goto out;
                        if ((r = remote_on(repo, url, &remote)) < 0) {
                                r = git_fail(r, "bad url", err, err_len);
                                goto out;
                        }
                        r = git_remote_fetch(remote, &refspecs, &fo, "deploy: fetch");
                }
                if (r < 0) {
                        r = git_fail(r, "fetch", err, err_len);
                        goto out;
                }
                fetched = true;
                if (sha[0] && !has_commit(repo, sha)) {
                        snprintf(err, err_len, "commit %s is not on branch %s after a fetch", sha, branch);
                        r = -ENOENT;
                        goto out;
                }
        }
        *ret_fetched = fetched;
        r = 0;
out:
        git_remote_free(remote);
        git_repository_free(repo);
        return r;
}

static void on_progress(const char *path, size_t done, size_t total, void *payload) {
        size_t *n = payload;
        *n = total;
}

int deploy_git_checkout(const char *mirror, const char *sha, const char *dir, size_t *ret_files, char *err,
                        size_t err_len) {
        git_repository *repo = NULL;
        git_index *index = NULL;
        git_commit *commit = NULL;
        git_oid oid;
        int r = git_repository_open_bare(&repo, mirror);
        if (r < 0)
                return git_fail(r, "cannot open the mirror", err, err_len);
        if ((r = git_oid_fromstr(&oid, sha)) < 0 || (r = git_commit_lookup(&commit, repo, &oid)) < 0) {
                r = git_fail(r, "commit not in the mirror", err, err_len);
                goto out;
        }
        /* a throwaway index next to the target (an in-memory one cannot be "read" by
         * checkout): the mirror's own is never opened; removed afterwards */
        char index_path[DEPLOY_PATH_MAX + 16];
        snprintf(index_path, sizeof index_path, "%s.index", dir);
        (void)unlink(index_path);
        if ((r = git_index_open(&index, index_path)) < 0 || (r = git_repository_set_index(repo, index)) < 0) {
                r = git_fail(r, "index", err, err_len);
                goto out;
        }
        if (mkdir(dir, 0755) < 0) {
                r = -errno;
                snprintf(err, err_len, "mkdir %s: %s", dir, strerror(errno));
                goto out;
        }
        git_checkout_options co;
        git_checkout_options_init(&co, GIT_CHECKOUT_OPTIONS_VERSION);
        /* explicit: in 1.5.1 a strategy of 0 is a dry run */
        co.checkout_strategy = GIT_CHECKOUT_FORCE | GIT_CHECKOUT_DONT_WRITE_INDEX | GIT_CHECKOUT_DONT_UPDATE_INDEX;
        co.target_directory = dir;
        size_t files = 0;
        co.progress_cb = on_progress;
        co.progress_payload = &files;
        r = git_checkout_tree(repo, (const git_object *)commit, &co);
        if (r < 0) {
                r = git_fail(r, "checkout", err, err_len);
                goto out;
        }
        if (ret_files)
                *ret_files = files;
        r = 0;
out:
        if (index)
                (void)unlink(index_path);
        git_commit_free(commit);
        git_index_free(index);
        git_repository_free(repo);
        return r;
}
