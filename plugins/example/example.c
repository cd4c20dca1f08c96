/* example.c — the smallest complete organism plugin, and the one the README and the
 * tests use: publishes a heartbeat each interval, counts the messages of a configured
 * subscription, answers verbs, verifies itself and hands its count over on reload.
 *
 * It is built three times by the tests with other defines (EXAMPLE_VERSION,
 * EXAMPLE_FAIL_INIT) to act as "the new build" and "a broken build" in reload tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include <organism/plugin.h>

#ifndef EXAMPLE_VERSION
#define EXAMPLE_VERSION "1.0.0"
#endif

typedef struct example {
        const org_host *host;
        org_ctx *ctx;
        const char *heartbeat_subject;
        const char *pattern;
        uint64_t count;     /* messages seen on the subscription, across reloads */
        uint64_t beats;
        char *last_subject;
} example;

static const org_config_entry config_map[] = {
        {.key = "heartbeat_subject", .type = ORG_CFG_STRING, .default_value = "agent.heartbeat",
         .help = "subject of the heartbeat published each interval"},
        {.key = "subscribe", .type = ORG_CFG_PATTERN, .default_value = "example.>",
         .help = "messages matching this pattern are counted"},
        {.key = "greeting", .type = ORG_CFG_STRING, .default_value = "hello",
         .help = "text carried by each heartbeat"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "count", .mutating = false, .help = "messages counted so far and the last subject"},
        {.name = "echo", .mutating = false, .args = "any JSON", .help = "answers its arguments"},
        {.name = "reset", .mutating = true, .help = "sets the count back to 0"},
        ORG_VERBS_END,
};

/* Answers with a JSON object (stolen) on the request's reply subject. */
static int reply_json(example *ex, const org_msg *req, json_t *o) {
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = ex->host->respond(ex->ctx, req->reply, text, strlen(text));
        free(text);
        return r;
}

static int example_init(const org_host *host, org_ctx *ctx, void **ret_state) {
#ifdef EXAMPLE_FAIL_INIT
        host->log(ctx, ORG_LOG_ERR, "this build refuses to start (EXAMPLE_FAIL_INIT)");
        return -EIO;
#endif
        example *ex = calloc(1, sizeof *ex);
        if (!ex)
                return -ENOMEM;
        ex->host = host;
        ex->ctx = ctx;
        int r;
        if ((r = host->config_string(ctx, "heartbeat_subject", &ex->heartbeat_subject)) < 0 ||
            (r = host->config_string(ctx, "subscribe", &ex->pattern)) < 0 ||
            (r = host->subscribe(ctx, ex->pattern, NULL)) < 0) {
                free(ex);
                return r;
        }
        host->log(ctx, ORG_LOG_DEBUG, "counting %s, heartbeat on %s", ex->pattern, ex->heartbeat_subject);
        *ret_state = ex;
        return 0;
}

static int example_tick(void *state) {
        example *ex = state;
        const char *greeting = "hello";
        ex->host->config_string(ex->ctx, "greeting", &greeting);
        char ts[32];
        uint64_t now = ex->host->now_realtime_us(ex->ctx);
        time_t t = (time_t)(now / 1000000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:s}", "ts", ts, "agent",
                              ex->host->agent_name(ex->ctx), "instance", ex->host->instance_name(ex->ctx), "greeting",
                              greeting, "beat", (json_int_t)++ex->beats, "count", (json_int_t)ex->count, "version",
                              EXAMPLE_VERSION);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        int r = ex->host->publish(ex->ctx, ex->heartbeat_subject, NULL, 0, text, strlen(text));
        free(text);
        ex->host->metric_set(ex->ctx, "example_messages_counted", ORG_METRIC_COUNTER, (double)ex->count,
                             "messages seen on the example subscription");
        return r;
}

static int example_handle(void *state, const org_msg *msg) {
        example *ex = state;
        ex->count++;
        char *s = strdup(msg->subject);
        if (s) {
                free(ex->last_subject);
                ex->last_subject = s;
        }
        return 0;
}

static int example_call(void *state, const char *verb, const org_msg *req) {
        example *ex = state;
        if (strcmp(verb, "count") == 0)
                return reply_json(ex, req,
                                  json_pack("{s:I, s:s?, s:s}", "count", (json_int_t)ex->count, "last_subject",
                                            ex->last_subject, "version", EXAMPLE_VERSION));
        if (strcmp(verb, "reset") == 0) {
                ex->count = 0;
                return reply_json(ex, req, json_pack("{s:I}", "count", (json_int_t)0));
        }
        if (strcmp(verb, "echo") == 0) {
                json_error_t e;
                json_t *args = json_loadb(req->data, req->len, JSON_DECODE_ANY, &e);
                return reply_json(ex, req, json_pack("{s:o}", "echo", args ? args : json_null()));
        }
        return -EOPNOTSUPP;
}

static int example_verify(void *state, char **ret_json) {
        example *ex = state;
        json_t *o = json_pack("{s:b, s:[{s:s, s:s, s:s, s:b}]}", "ok", 1, "checks", "what", "subscription", "want",
                              ex->pattern, "have", ex->pattern, "ok", 1);
        *ret_json = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        return *ret_json ? 0 : -ENOMEM;
}

/* The count survives a reload: the new build starts where the old one stopped. */
static int example_save(void *state, void **ret_blob, size_t *ret_len) {
        example *ex = state;
        uint64_t *b = malloc(sizeof *b);
        if (!b)
                return -ENOMEM;
        *b = ex->count;
        *ret_blob = b;
        *ret_len = sizeof *b;
        return 0;
}

static int example_restore(void *state, const void *blob, size_t len) {
        example *ex = state;
        if (len != sizeof(uint64_t))
                return -EINVAL;
        memcpy(&ex->count, blob, sizeof ex->count);
        return 0;
}

static void example_fini(void *state) {
        example *ex = state;
        if (!ex)
                return;
        free(ex->last_subject);
        free(ex);
}

ORG_PLUGIN_DEFINE(.name = "example", .version = EXAMPLE_VERSION,
                  .summary = "heartbeat, message counter and verb demo: the template for new plugins",
                  .config_map = config_map, .verbs = verbs, .init = example_init, .tick = example_tick,
                  .handle = example_handle, .call = example_call, .fini = example_fini, .verify = example_verify,
                  .save_state = example_save, .restore_state = example_restore);
