/* github.c — the conditional GitHub request of the deploy plugin (libcurl): GET
 * /repos/OWNER/NAME/commits/BRANCH with If-None-Match, so that an unchanged branch is
 * one request answered 304, which GitHub does not count against the rate limit. TLS is
 * verified (libcurl's default, never turned off), the whole transfer has a time-out,
 * the body is capped. Blocks: worker pool only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "deploy.h"

#define BODY_MAX (256 * 1024)

void deploy_http_init(void) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
}
void deploy_http_shutdown(void) {
        curl_global_cleanup();
}

typedef struct body {
        char *data;
        size_t len;
        bool overflow;
} body;

static size_t on_data(char *p, size_t size, size_t n, void *userdata) {
        body *b = userdata;
        size_t len = size * n;
        if (b->len + len > BODY_MAX) {
                b->overflow = true;
                return 0; /* aborts the transfer */
        }
        char *d = realloc(b->data, b->len + len + 1);
        if (!d)
                return 0;
        memcpy(d + b->len, p, len);
        b->len += len;
        d[b->len] = '\0';
        b->data = d;
        return len;
}

static void header_value(CURL *h, const char *name, char *ret, size_t len) {
        struct curl_header *hdr = NULL;
        if (curl_easy_header(h, name, 0, CURLH_HEADER, -1, &hdr) == CURLHE_OK && hdr && hdr->value)
                snprintf(ret, len, "%s", hdr->value);
        else if (len)
                ret[0] = '\0';
}

int deploy_github_head(const char *api, const char *repo, const char *branch, const char *etag, const char *token,
                       uint64_t timeout_ms, deploy_gh_result *ret, char *err, size_t err_len) {
        char url[DEPLOY_URL_MAX * 2], hetag[DEPLOY_ETAG_MAX + 32], hauth[DEPLOY_ETAG_MAX + 32];
        size_t alen = strlen(api);
        snprintf(url, sizeof url, "%.*s/repos/%s/commits/%s", (int)(alen && api[alen - 1] == '/' ? alen - 1 : alen),
                 api, repo, branch);
        CURL *h = curl_easy_init();
        if (!h) {
                snprintf(err, err_len, "curl_easy_init failed");
                return -ENOMEM;
        }
        struct curl_slist *hdrs = NULL;
        hdrs = curl_slist_append(hdrs, "Accept: application/vnd.github+json");
        hdrs = curl_slist_append(hdrs, "X-GitHub-Api-Version: 2022-11-28");
        if (etag && etag[0]) {
                snprintf(hetag, sizeof hetag, "If-None-Match: %s", etag);
                hdrs = curl_slist_append(hdrs, hetag);
        }
        if (token && token[0]) {
                snprintf(hauth, sizeof hauth, "Authorization: Bearer %s", token);
                hdrs = curl_slist_append(hdrs, hauth);
        }
        body b = {0};
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "organism-deploy/1");
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 10000 ? timeout_ms : 10000));
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* a pool thread: no SIGALRM for resolver time-outs */
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
        CURLcode c = curl_easy_perform(h);
        deploy_gh_result res = {.rate_remaining = -1};
        int r = 0;
        if (c != CURLE_OK) {
                snprintf(err, err_len, "%s: %s%s", url, curl_easy_strerror(c), b.overflow ? " (answer too large)" : "");
                r = -EIO;
                goto out;
        }
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &res.http_status);
        header_value(h, "ETag", res.etag, sizeof res.etag);
        char rl[32];
        header_value(h, "X-RateLimit-Remaining", rl, sizeof rl);
        if (rl[0])
                res.rate_remaining = strtol(rl, NULL, 10);
        if (res.http_status == 200) {
                json_error_t je;
                json_t *o = b.data ? json_loads(b.data, 0, &je) : NULL;
                const char *sha = json_string_value(json_object_get(o, "sha"));
                if (sha && strlen(sha) == 40)
                        snprintf(res.sha, sizeof res.sha, "%s", sha);
                else {
                        snprintf(err, err_len, "%s: answer without a commit sha", url);
                        r = -EBADMSG;
                }
                json_decref(o);
        } else if (res.http_status != 304) {
                json_error_t je;
                json_t *o = b.data ? json_loads(b.data, 0, &je) : NULL;
                const char *msg = json_string_value(json_object_get(o, "message"));
                snprintf(err, err_len, "%s: HTTP %ld%s%s", url, res.http_status, msg ? ": " : "", msg ? msg : "");
                json_decref(o);
        }
        if (r == 0)
                *ret = res;
out:
        free(b.data);
        curl_slist_free_all(hdrs);
        curl_easy_cleanup(h);
        return r;
}

bool deploy_github_repo_of(const char *url, char *ret, size_t len) {
        const char *p = NULL;
        static const char *const prefixes[] = {"https://github.com/", "http://github.com/", "ssh://git@github.com/",
                                               "git@github.com:"};
        for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0] && !p; i++)
                if (strncmp(url, prefixes[i], strlen(prefixes[i])) == 0)
                        p = url + strlen(prefixes[i]);
        if (!p || !*p)
                return false;
        size_t n = strlen(p);
        if (n > 4 && strcmp(p + n - 4, ".git") == 0)
                n -= 4;
        while (n > 0 && p[n - 1] == '/')
                n--;
        if (n == 0 || n >= len || !memchr(p, '/', n))
                return false;
        snprintf(ret, len, "%.*s", (int)n, p);
        return true;
}
