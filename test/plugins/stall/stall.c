/* stall.c — a test plugin that misbehaves on request: its verb `stall {"ms": N}` blocks
 * the loop for N ms (what a plugin must never do), and it records when each tick ran,
 * so a test can see whether the ticks missed meanwhile come in a burst or are coalesced
 * into one. `ticks` answers {"n", "stall_start_us", "stall_end_us", "at_us": [the last
 * 64 ticks]}. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <organism/plugin.h>

#define RING 64

typedef struct stall {
        const org_host *host;
        org_ctx *ctx;
        uint64_t n;
        uint64_t at_us[RING];
        uint64_t stall_start_us, stall_end_us;
} stall;

static const org_verb verbs[] = {
        {.name = "stall", .mutating = true, .args = "{\"ms\": int}", .help = "block the loop for ms (tests only)"},
        {.name = "ticks", .help = "ticks so far, the end of the last stall and the last 64 tick times"},
        ORG_VERBS_END,
};

static int stall_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        stall *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->host = host;
        s->ctx = ctx;
        *ret_state = s;
        return 0;
}

static int stall_tick(void *state) {
        stall *s = state;
        s->at_us[s->n % RING] = s->host->now_monotonic_us(s->ctx);
        s->n++;
        return 0;
}

/* Sleeps ms, resumed after signals: the whole loop waits. */
static void block_for(long ms) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static int stall_call(void *state, const char *verb, const org_msg *req) {
        stall *s = state;
        char buf[4096];
        size_t o = 0;
        if (strcmp(verb, "stall") == 0) {
                const char *p = req->data ? strstr(req->data, "\"ms\"") : NULL;
                long ms = p && (p = strchr(p, ':')) ? strtol(p + 1, NULL, 10) : 0;
                if (ms < 0 || ms > 30000)
                        return s->host->respond(s->ctx, req->reply, "{\"error\":\"ms: 0 to 30000\"}", 26);
                s->stall_start_us = s->host->now_monotonic_us(s->ctx);
                block_for(ms);
                s->stall_end_us = s->host->now_monotonic_us(s->ctx);
                int n = snprintf(buf, sizeof buf, "{\"stalled_ms\":%ld}", ms);
                return s->host->respond(s->ctx, req->reply, buf, (size_t)n);
        }
        if (strcmp(verb, "ticks") != 0)
                return -EOPNOTSUPP;
        o += (size_t)snprintf(buf + o, sizeof buf - o,
                              "{\"n\":%llu,\"stall_start_us\":%llu,\"stall_end_us\":%llu,\"at_us\":[",
                              (unsigned long long)s->n, (unsigned long long)s->stall_start_us,
                              (unsigned long long)s->stall_end_us);
        uint64_t first = s->n > RING ? s->n - RING : 0;
        for (uint64_t i = first; i < s->n && o < sizeof buf; i++)
                o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%llu", i > first ? "," : "",
                                      (unsigned long long)s->at_us[i % RING]);
        if (o < sizeof buf)
                o += (size_t)snprintf(buf + o, sizeof buf - o, "]}");
        if (o >= sizeof buf)
                return -ENOBUFS;
        return s->host->respond(s->ctx, req->reply, buf, o);
}

static void stall_fini(void *state) { free(state); }

ORG_PLUGIN_DEFINE(.name = "stall", .version = "1", .summary = "blocks the loop on request (tests only)",
                  .verbs = verbs, .init = stall_init, .tick = stall_tick, .call = stall_call, .fini = stall_fini);
