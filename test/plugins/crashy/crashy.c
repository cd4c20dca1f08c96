/* crashy.c — a test plugin that misbehaves on demand, for isolated instances: it
 * segfaults, aborts, calls exit() or spins forever in the hook named by `crash_in`
 * (init, tick, handle, call). Otherwise it echoes each message of its subscription to
 * `echo_subject` (so a test sees every delivery, in order), counts its ticks, and
 * answers verbs, one of which goes through the store, so a test can tell the proxied
 * host services work. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <organism/plugin.h>

typedef struct crashy {
        const org_host *host;
        org_ctx *ctx;
        const char *crash_in, *crash_how, *trigger, *echo_subject;
        int64_t crash_tick;
        uint64_t ticks, handled, timer_fires;
} crashy;

static const org_config_entry config_map[] = {
        {.key = "crash_in",
         .type = ORG_CFG_STRING,
         .default_value = "none",
         .help = "hook that misbehaves: none, init, tick, handle (on the trigger payload), call (verb boom) or "
                 "timer (its 50 ms timer, the 5th time)",
         .choices = ORG_CHOICES("none", "init", "tick", "handle", "call", "timer")},
        {.key = "crash_how",
         .type = ORG_CFG_STRING,
         .default_value = "segv",
         .help = "segv, abort, exit or spin",
         .choices = ORG_CHOICES("segv", "abort", "exit", "spin")},
        {.key = "crash_tick",
         .type = ORG_CFG_INT,
         .default_value = "1",
         .help = "crash_in tick: misbehave at this tick of each child",
         .min = "1"},
        {.key = "trigger",
         .type = ORG_CFG_STRING,
         .default_value = "crash",
         .help = "crash_in handle: the payload that makes it misbehave"},
        {.key = "subscribe", .type = ORG_CFG_PATTERN, .default_value = "crashy.in", .help = "messages to echo"},
        {.key = "echo_subject",
         .type = ORG_CFG_STRING,
         .default_value = "crashy.out",
         .help = "where each message is echoed"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "count", .help = "ticks, messages handled and the pid of the process running it"},
        {.name = "boom", .help = "misbehaves when crash_in is call"},
        {.name = "store", .args = "{\"value\": s}", .help = "writes value to the store and reads it back"},
        {.name = "run", .help = "runs the command `echo` of agent.commands and answers its output"},
        {.name = "ask", .args = "subject", .help = "sends a request to subject and answers its reply"},
        ORG_VERBS_END,
};

/* Not instrumented: under UBSan the null store must be a plain SIGSEGV, not a report. */
__attribute__((no_sanitize("undefined"))) static void misbehave(crashy *c) {
        c->host->log(c->ctx, ORG_LOG_WARNING, "misbehaving now: %s", c->crash_how);
        if (strcmp(c->crash_how, "segv") == 0) {
                volatile int *p = NULL;
                *p = 1;
        } else if (strcmp(c->crash_how, "abort") == 0)
                abort();
        else if (strcmp(c->crash_how, "exit") == 0)
                exit(3);
        for (volatile unsigned long i = 0;; i++) /* spin */
                ;
}

static void on_timer(org_ctx *ctx, uint64_t id, void *userdata) {
        crashy *c = userdata;
        c->timer_fires++;
        if (strcmp(c->crash_in, "timer") == 0 && c->timer_fires == 5)
                misbehave(c);
}

static int crashy_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        crashy *c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->host = host;
        c->ctx = ctx;
        const char *pattern = NULL;
        int r;
        if ((r = host->config_string(ctx, "crash_in", &c->crash_in)) < 0 ||
            (r = host->config_string(ctx, "crash_how", &c->crash_how)) < 0 ||
            (r = host->config_string(ctx, "trigger", &c->trigger)) < 0 ||
            (r = host->config_string(ctx, "echo_subject", &c->echo_subject)) < 0 ||
            (r = host->config_int(ctx, "crash_tick", &c->crash_tick)) < 0 ||
            (r = host->config_string(ctx, "subscribe", &pattern)) < 0 ||
            (r = host->subscribe(ctx, pattern, NULL)) < 0 ||
            (r = host->timer_add(ctx, 50, 50, on_timer, c, NULL)) < 0) {
                free(c);
                return r;
        }
        if (strcmp(c->crash_in, "init") == 0)
                misbehave(c);
        *ret_state = c;
        return 0;
}

static int crashy_tick(void *state) {
        crashy *c = state;
        c->ticks++;
        if (strcmp(c->crash_in, "tick") == 0 && (int64_t)c->ticks >= c->crash_tick)
                misbehave(c);
        return 0;
}

static int crashy_handle(void *state, const org_msg *msg) {
        crashy *c = state;
        c->handled++;
        c->host->metric_add(c->ctx, "crashy_handled_total", 1, "messages handled");
        if (strcmp(c->crash_in, "handle") == 0 && msg->len == strlen(c->trigger) &&
            memcmp(msg->data, c->trigger, msg->len) == 0)
                misbehave(c);
        return c->host->publish(c->ctx, c->echo_subject, msg->headers, msg->n_headers, msg->data, msg->len);
}

static int crashy_later(crashy *c, const char *verb, const org_msg *req);

static int reply(crashy *c, const org_msg *req, const char *text) {
        return c->host->respond(c->ctx, req->reply, text, strlen(text));
}

static int crashy_call(void *state, const char *verb, const org_msg *req) {
        crashy *c = state;
        char text[512];
        if (strcmp(verb, "count") == 0) {
                snprintf(text, sizeof text, "{\"ticks\":%llu,\"handled\":%llu,\"timer_fires\":%llu,\"pid\":%d}",
                         (unsigned long long)c->ticks, (unsigned long long)c->handled,
                         (unsigned long long)c->timer_fires, (int)getpid());
                return reply(c, req, text);
        }
        if (strcmp(verb, "boom") == 0) {
                if (strcmp(c->crash_in, "call") == 0)
                        misbehave(c);
                return reply(c, req, "{\"boom\":false}");
        }
        if (strcmp(verb, "store") == 0) {
                int r = c->host->store_exec(c->ctx, "CREATE TABLE IF NOT EXISTS t (v TEXT)", NULL, 0);
                const char *params[] = {(const char *)req->data};
                if (r >= 0)
                        r = c->host->store_exec(c->ctx, "INSERT INTO t (v) VALUES (?1)", params, 1);
                if (r >= 0)
                        r = c->host->kv_set(c->ctx, "last", req->data);
                char *v = NULL;
                if (r >= 0)
                        r = c->host->kv_get(c->ctx, "last", &v);
                if (r < 0)
                        return r;
                snprintf(text, sizeof text, "{\"kv\":%s}", v);
                free(v);
                return reply(c, req, text);
        }
        if (strcmp(verb, "run") == 0 || strcmp(verb, "ask") == 0)
                return crashy_later(c, verb, req);
        return -EOPNOTSUPP;
}

/* The answer to a verb that completes later: the reply subject, copied. */
typedef struct later {
        crashy *c;
        char *reply;
} later;

static void later_answer(later *l, const char *text) {
        l->c->host->respond(l->c->ctx, l->reply, text, strlen(text));
        free(l->reply);
        free(l);
}

static later *later_new(crashy *c, const org_msg *req) {
        later *l = calloc(1, sizeof *l);
        if (!l || !(l->reply = strdup(req->reply))) {
                free(l);
                return NULL;
        }
        l->c = c;
        return l;
}

static void on_run_done(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        char text[512];
        size_t n = res->out_len;
        while (n > 0 && (res->out[n - 1] == '\n' || res->out[n - 1] == '"' || res->out[n - 1] == '\\'))
                n--;
        snprintf(text, sizeof text, "{\"status\":%d,\"out\":\"%.*s\"}", res->status, (int)n, res->out);
        later_answer(userdata, text);
}

static void on_ask_reply(org_ctx *ctx, int error, const org_msg *reply, void *userdata) {
        char text[1024];
        if (error < 0 || !reply)
                snprintf(text, sizeof text, "{\"error\":%d}", error);
        else
                snprintf(text, sizeof text, "{\"reply\":%.*s}", (int)reply->len, (const char *)reply->data);
        later_answer(userdata, text);
}

static int crashy_later(crashy *c, const char *verb, const org_msg *req) {
        later *l = later_new(c, req);
        if (!l)
                return -ENOMEM;
        int r;
        if (strcmp(verb, "run") == 0) {
                const char *argv[] = {"echo", "hello from", c->host->instance_name(c->ctx), NULL};
                org_exec_spec spec = {.argv = argv, .timeout_ms = 10000};
                r = c->host->exec(c->ctx, &spec, on_run_done, l, NULL);
        } else {
                /* {"args": ["subject"]} */
                char subject[256] = "";
                const char *p = strchr(req->data, '[');
                if (p && (p = strchr(p, '"')))
                        sscanf(p + 1, "%255[^\"]", subject);
                r = c->host->request(c->ctx, subject, "{}", 2, 3000, on_ask_reply, l);
        }
        if (r < 0) {
                free(l->reply);
                free(l);
        }
        return r;
}

static void crashy_fini(void *state) {
        free(state);
}

#ifdef CRASHY_CTOR_CRASH
/* The ctor/ build: dies as soon as it is mapped, before any descriptor is read. */
__attribute__((constructor)) static void crashy_ctor(void) {
        raise(SIGSEGV);
}
#endif

ORG_PLUGIN_DEFINE(.name = "crashy", .version = "1.0.0", .summary = "misbehaves on demand (tests of isolate: true)",
                  .config_map = config_map, .verbs = verbs, .init = crashy_init, .tick = crashy_tick,
                  .handle = crashy_handle, .call = crashy_call, .fini = crashy_fini);
