/* bench-plugin.c — a plugin for benchmarks only (bench.so): publishes bursts from
 * inside the loop, so a measure of the bus or the bridge is not a measure of the
 * control socket, and counts what it receives, durable messages included. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <organism/plugin.h>

typedef struct bench {
        const org_host *host;
        org_ctx *ctx;
        uint64_t received, durable_received, durable_stored, durable_failed;
        uint64_t first_us, last_us;
} bench;

static const org_config_entry config_map[] = {
        {.key = "subscribe", .type = ORG_CFG_PATTERN, .help = "count messages matching this"},
        {.key = "durable_stream", .type = ORG_CFG_STRING, .help = "consume and ack this stream"},
        {.key = "durable_filter", .type = ORG_CFG_PATTERN, .help = "subject filter of the consumer"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "flood", .mutating = true, .args = "{\"subject\", \"n\", \"size\"}", .help = "publish n messages now"},
        {.name = "durable_flood", .mutating = true, .args = "{\"subject\", \"n\"}", .help = "publish n durably"},
        {.name = "count", .help = "what was received, and when the first and last came"},
        ORG_VERBS_END,
};

static int reply(bench *b, const org_msg *req, const char *text) {
        return b->host->respond(b->ctx, req->reply, text, strlen(text));
}

static long long arg_int(const org_msg *req, const char *key, long long def) {
        const char *p = strstr(req->data, key);
        if (!p)
                return def;
        p = strchr(p, ':');
        return p ? strtoll(p + 1, NULL, 10) : def;
}

/* {"subject":"x"...}: the value of "subject", copied into buf. */
static const char *arg_subject(const org_msg *req, char *buf, size_t size) {
        const char *p = strstr(req->data, "\"subject\"");
        if (!p || !(p = strchr(p + 9, '"')))
                return "bench.x";
        const char *e = strchr(p + 1, '"');
        if (!e || (size_t)(e - p - 1) >= size)
                return "bench.x";
        memcpy(buf, p + 1, (size_t)(e - p - 1));
        buf[e - p - 1] = '\0';
        return buf;
}

static void stored(org_ctx *ctx, int error, const org_msg *m, void *userdata) {
        bench *b = userdata;
        if (error < 0)
                b->durable_failed++;
        else
                b->durable_stored++;
}

static int bench_init(const org_host *host, org_ctx *ctx, void **ret) {
        bench *b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        b->host = host;
        b->ctx = ctx;
        const char *pattern = NULL, *stream = NULL;
        int r = 0;
        if (host->config_string(ctx, "subscribe", &pattern) >= 0)
                r = host->subscribe(ctx, pattern, NULL);
        if (r >= 0 && host->config_string(ctx, "durable_stream", &stream) >= 0) {
                org_consume_opts o = {.stream = stream, .durable = "bench", .max_pending = 1024};
                host->config_string(ctx, "durable_filter", &o.filter);
                r = host->consume_durable(ctx, &o, NULL);
        }
        if (r < 0) {
                free(b);
                return r;
        }
        *ret = b;
        return 0;
}

static int bench_handle(void *state, const org_msg *msg) {
        bench *b = state;
        uint64_t now = b->host->now_monotonic_us(b->ctx);
        if (!b->first_us)
                b->first_us = now;
        b->last_us = now;
        if (msg->ack_token) {
                b->durable_received++;
                return b->host->ack(b->ctx, msg->ack_token, ORG_ACK, 0);
        }
        b->received++;
        return 0;
}

static int bench_call(void *state, const char *verb, const org_msg *req) {
        bench *b = state;
        char subject[128], text[256];
        if (strcmp(verb, "flood") == 0 || strcmp(verb, "durable_flood") == 0) {
                long long n = arg_int(req, "\"n\"", 1000), size = arg_int(req, "\"size\"", 64);
                const char *s = arg_subject(req, subject, sizeof subject);
                char *payload = malloc((size_t)size + 1);
                if (!payload)
                        return -ENOMEM;
                memset(payload, 'x', (size_t)size);
                payload[size] = '\0';
                int r = 0;
                bool durable = strcmp(verb, "durable_flood") == 0;
                for (long long i = 0; i < n && r >= 0; i++) {
                        if (durable) {
                                char id[32];
                                snprintf(id, sizeof id, "b%lld", i);
                                r = b->host->publish_durable(b->ctx, s, id, payload, (size_t)size, stored, b);
                        } else
                                r = b->host->publish(b->ctx, s, NULL, 0, payload, (size_t)size);
                }
                free(payload);
                if (r < 0)
                        return r;
                snprintf(text, sizeof text, "{\"published\":%lld}", n);
                return reply(b, req, text);
        }
        if (strcmp(verb, "count") == 0) {
                snprintf(text, sizeof text,
                         "{\"received\":%llu,\"durable_received\":%llu,\"durable_stored\":%llu,"
                         "\"durable_failed\":%llu,\"span_us\":%llu,\"first_us\":%llu,\"last_us\":%llu}",
                         (unsigned long long)b->received, (unsigned long long)b->durable_received,
                         (unsigned long long)b->durable_stored, (unsigned long long)b->durable_failed,
                         (unsigned long long)(b->last_us - b->first_us), (unsigned long long)b->first_us,
                         (unsigned long long)b->last_us);
                return reply(b, req, text);
        }
        return -EOPNOTSUPP;
}

static void bench_fini(void *state) { free(state); }

ORG_PLUGIN_DEFINE(.name = "bench", .version = "1", .summary = "benchmark helper", .config_map = config_map,
                  .verbs = verbs, .init = bench_init, .handle = bench_handle, .call = bench_call,
                  .fini = bench_fini);
