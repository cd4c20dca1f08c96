/* example.c — the smallest complete organism plugin, and the one the README and the
 * tests use: publishes a heartbeat each interval, counts the messages of a configured
 * subscription, answers verbs, verifies itself and hands its count over on reload.
 * Its `sleep_echo` verb runs a command that outlives a reload: save_state carries the
 * ids of the running ones, restore_state adopts them (host->exec_adopt), and the new
 * build receives the completion (config `adopt_execs: false` shows the old behaviour:
 * the host cancels what is not adopted). `sleep_work` does the same with a job of the
 * host's worker pool (host->work_adopt).
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

#define EXAMPLE_MAX_RUNS 64
#define EXAMPLE_MAX_DONE 64

#ifndef EXAMPLE_VERSION
#define EXAMPLE_VERSION "1.0.0"
#endif

struct example;

/* A running sleep_echo command; the userdata of its exec callback. */
typedef struct example_run {
        struct example *ex;
        uint64_t id;
} example_run;

/* A sleep_work job's block: work() reads ms and writes slept_ms; ex and id are the
 * loop's (a new build that adopts it ignores ex: it is the old state). */
typedef struct example_work {
        struct example *ex;
        uint64_t id;
        uint64_t ms;
        uint64_t slept_ms;
} example_work;

typedef struct example {
        const org_host *host;
        org_ctx *ctx;
        const char *heartbeat_subject;
        const char *pattern;
        uint64_t count;     /* messages seen on the subscription, across reloads */
        uint64_t beats;
        char *last_subject;
        /* durable demo: messages of the JetStream consumer, by payload "id" */
        bool durable_ack;
        uint64_t durable_handled;
        char **durable_ids;
        size_t n_durable_ids;
        /* sleep_echo: running commands and the completions received, across reloads */
        bool adopt_execs;
        uint64_t restores;  /* how many reloads handed state to this line of builds */
        example_run *runs[EXAMPLE_MAX_RUNS];
        size_t n_runs;
        uint64_t works[EXAMPLE_MAX_RUNS]; /* sleep_work jobs running */
        size_t n_works;
        json_t *done;       /* array of {id, status, out, version, restores} or {work_id, ...} */
} example;

static const org_config_entry config_map[] = {
        {.key = "heartbeat_subject", .type = ORG_CFG_STRING, .default_value = "agent.heartbeat",
         .help = "subject of the heartbeat published each interval"},
        {.key = "subscribe", .type = ORG_CFG_PATTERN, .default_value = "example.>",
         .help = "messages matching this pattern are counted"},
        {.key = "greeting", .type = ORG_CFG_STRING, .default_value = "hello",
         .help = "text carried by each heartbeat"},
        {.key = "durable_stream", .type = ORG_CFG_STRING,
         .help = "consume this JetStream stream (needs bus.nats); absent: no durable consumer"},
        {.key = "durable_consumer", .type = ORG_CFG_STRING, .default_value = "example",
         .help = "durable consumer name, shared by every instance that takes the same work"},
        {.key = "durable_filter", .type = ORG_CFG_PATTERN, .help = "subject filter within the stream"},
        {.key = "durable_ack", .type = ORG_CFG_BOOL, .default_value = "true",
         .help = "ack what was handled (false: never ack, to watch redelivery)"},
        {.key = "durable_max_deliver", .type = ORG_CFG_INT, .default_value = "5",
         .help = "deliveries of one message at most"},
        {.key = "durable_ack_wait", .type = ORG_CFG_DURATION, .default_value = "30s",
         .help = "redelivery when not acked within this"},
        {.key = "adopt_execs", .type = ORG_CFG_BOOL, .default_value = "true",
         .help = "a new build re-attaches the sleep_echo commands still running (false: they are cancelled)"},
        ORG_CONFIG_END,
};

static const org_verb verbs[] = {
        {.name = "count", .mutating = false, .help = "messages counted so far and the last subject"},
        {.name = "echo", .mutating = false, .args = "any JSON", .help = "answers its arguments"},
        {.name = "reset", .mutating = true, .help = "sets the count back to 0"},
        {.name = "enqueue", .mutating = true, .args = "{\"subject\": s, \"id\": s, \"data\": any}",
         .help = "publishes durably (JetStream) and answers once stored"},
        {.name = "durable", .mutating = false, .help = "durable messages handled, and how many distinct ids"},
        {.name = "sleep_echo", .mutating = true, .args = "{\"seconds\": n, \"text\": s}",
         .help = "runs `sh -c` (agent.commands.sh): prints begin, sleeps, prints text; answers its exec id"},
        {.name = "sleep_work", .mutating = true, .args = "{\"ms\": n}",
         .help = "a worker-pool job that sleeps ms; answers its job id"},
        {.name = "execs", .mutating = false, .help = "sleep_echo commands and sleep_work jobs running and completed"},
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
        ex->adopt_execs = true;
        host->config_bool(ctx, "adopt_execs", &ex->adopt_execs);
        ex->done = json_array();
        if (!ex->done) {
                free(ex);
                return -ENOMEM;
        }
        int r;
        if ((r = host->config_string(ctx, "heartbeat_subject", &ex->heartbeat_subject)) < 0 ||
            (r = host->config_string(ctx, "subscribe", &ex->pattern)) < 0 ||
            (r = host->subscribe(ctx, ex->pattern, NULL)) < 0) {
                json_decref(ex->done);
                free(ex);
                return r;
        }
        const char *stream = NULL;
        if (host->config_string(ctx, "durable_stream", &stream) >= 0) {
                org_consume_opts o = {.stream = stream};
                int64_t max_deliver = 5, ack_wait = 30000;
                host->config_string(ctx, "durable_consumer", &o.durable);
                host->config_string(ctx, "durable_filter", &o.filter);
                host->config_bool(ctx, "durable_ack", &ex->durable_ack);
                host->config_int(ctx, "durable_max_deliver", &max_deliver);
                host->config_int(ctx, "durable_ack_wait", &ack_wait);
                o.max_deliver = (unsigned)max_deliver;
                o.ack_wait_ms = (uint64_t)ack_wait;
                r = host->consume_durable(ctx, &o, NULL);
                if (r < 0) {
                        host->log(ctx, ORG_LOG_ERR, "cannot consume stream %s: %s", stream, strerror(-r));
                        json_decref(ex->done);
                        free(ex);
                        return r;
                }
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

/* A durable message: remember its id, then ack it (or, for the demo of redelivery, not). */
static int example_handle_durable(example *ex, const org_msg *msg) {
        ex->durable_handled++;
        json_error_t e;
        json_t *o = json_loadb(msg->data, msg->len, 0, &e);
        const char *id = json_string_value(json_object_get(o, "id"));
        bool seen = false;
        for (size_t i = 0; id && i < ex->n_durable_ids; i++)
                seen = seen || strcmp(ex->durable_ids[i], id) == 0;
        if (id && !seen) {
                char **n = realloc(ex->durable_ids, (ex->n_durable_ids + 1) * sizeof(char *));
                if (n) {
                        ex->durable_ids = n;
                        ex->durable_ids[ex->n_durable_ids] = strdup(id);
                        if (ex->durable_ids[ex->n_durable_ids])
                                ex->n_durable_ids++;
                }
        }
        json_decref(o);
        return ex->durable_ack ? ex->host->ack(ex->ctx, msg->ack_token, ORG_ACK, 0) : 0;
}

static int example_handle(void *state, const org_msg *msg) {
        example *ex = state;
        if (msg->ack_token)
                return example_handle_durable(ex, msg);
        ex->count++;
        char *s = strdup(msg->subject);
        if (s) {
                free(ex->last_subject);
                ex->last_subject = s;
        }
        return 0;
}

typedef struct enqueue_reply {
        example *ex;
        char *reply;
} enqueue_reply;

/* The server stored it (or refused): answer the caller who asked for it. */
static void enqueue_done(org_ctx *ctx, int error, const org_msg *m, void *userdata) {
        enqueue_reply *er = userdata;
        json_t *o = error < 0 ? json_pack("{s:s}", "error", strerror(-error)) : json_pack("{s:b}", "stored", 1);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text)
                er->ex->host->respond(ctx, er->reply, text, strlen(text));
        free(text);
        free(er->reply);
        free(er);
}

static int example_enqueue(example *ex, const org_msg *req) {
        json_error_t e;
        json_t *a = json_loadb(req->data, req->len, 0, &e);
        const char *subject = json_string_value(json_object_get(a, "subject"));
        const char *id = json_string_value(json_object_get(a, "id"));
        if (!subject) {
                json_decref(a);
                return reply_json(ex, req, json_pack("{s:s}", "error", "enqueue needs a \"subject\""));
        }
        json_t *payload = json_pack("{s:s?, s:O?}", "id", id, "data", json_object_get(a, "data"));
        char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
        json_decref(payload);
        enqueue_reply *er = calloc(1, sizeof *er);
        int r = -ENOMEM;
        if (text && er && (er->reply = strdup(req->reply ? req->reply : ""))) {
                er->ex = ex;
                r = ex->host->publish_durable(ex->ctx, subject, id, text, strlen(text), enqueue_done, er);
        }
        free(text);
        json_decref(a);
        if (r < 0) {
                if (er)
                        free(er->reply);
                free(er);
                return r;
        }
        return 0; /* answered by enqueue_done */
}

static void run_forget(example *ex, example_run *run) {
        for (size_t i = 0; i < ex->n_runs; i++)
                if (ex->runs[i] == run) {
                        ex->runs[i] = ex->runs[--ex->n_runs];
                        break;
                }
        free(run);
}

/* A sleep_echo command finished: whichever build runs now records it. */
static void on_sleep_echo_done(org_ctx *ctx, const org_exec_result *res, void *userdata) {
        example_run *run = userdata;
        example *ex = run->ex;
        if (json_array_size(ex->done) < EXAMPLE_MAX_DONE)
                json_array_append_new(ex->done,
                                      json_pack("{s:I, s:i, s:b, s:s%, s:s, s:I}", "id", (json_int_t)run->id, "status",
                                                res->status, "timed_out", res->timed_out, "out", res->out,
                                                res->out_len, "version", EXAMPLE_VERSION, "restores",
                                                (json_int_t)ex->restores));
        ex->host->log(ctx, ORG_LOG_INFO, "sleep_echo %llu finished with %d", (unsigned long long)run->id,
                      res->status);
        run_forget(ex, run);
}

static example_run *run_new(example *ex) {
        if (ex->n_runs == EXAMPLE_MAX_RUNS)
                return NULL;
        example_run *run = calloc(1, sizeof *run);
        if (!run)
                return NULL;
        run->ex = ex;
        ex->runs[ex->n_runs++] = run;
        return run;
}

static int example_sleep_echo(example *ex, const org_msg *req) {
        json_error_t e;
        json_t *a = json_loadb(req->data, req->len, 0, &e);
        json_int_t seconds = json_integer_value(json_object_get(a, "seconds"));
        const char *text = json_string_value(json_object_get(a, "text"));
        char secs[24];
        snprintf(secs, sizeof secs, "%lld", (long long)seconds);
        /* the text is an argument of the script, never part of it */
        const char *argv[] = {"sh", "-c", "echo begin; sleep \"$1\"; printf '%s\\n' \"$2\"", "sleep_echo", secs,
                              text ? text : "done", NULL};
        org_exec_spec spec = {.argv = argv, .timeout_ms = (uint64_t)(seconds + 30) * 1000};
        example_run *run = seconds >= 0 && seconds <= 3600 ? run_new(ex) : NULL;
        int r = run ? ex->host->exec(ex->ctx, &spec, on_sleep_echo_done, run, &run->id) : -EINVAL;
        json_decref(a);
        if (r < 0) {
                if (run)
                        run_forget(ex, run);
                return reply_json(ex, req, json_pack("{s:s}", "error", strerror(-r)));
        }
        return reply_json(ex, req, json_pack("{s:I}", "id", (json_int_t)run->id));
}

/* On a pool thread: only the block. */
static int sleep_work(void *userdata) {
        example_work *wk = userdata;
        struct timespec ts = {(time_t)(wk->ms / 1000), (long)(wk->ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0)
                ;
        wk->slept_ms = wk->ms;
        return 0;
}

static void work_record(example *ex, org_ctx *ctx, uint64_t id, int result, const example_work *wk) {
        for (size_t i = 0; i < ex->n_works; i++)
                if (ex->works[i] == id) {
                        ex->works[i] = ex->works[--ex->n_works];
                        break;
                }
        if (json_array_size(ex->done) < EXAMPLE_MAX_DONE)
                json_array_append_new(ex->done, json_pack("{s:I, s:i, s:I, s:s, s:I}", "work_id", (json_int_t)id,
                                                          "result", result, "slept_ms", (json_int_t)wk->slept_ms,
                                                          "version", EXAMPLE_VERSION, "restores",
                                                          (json_int_t)ex->restores));
        ex->host->log(ctx, ORG_LOG_INFO, "sleep_work %llu finished", (unsigned long long)id);
}

static void on_sleep_work_done(org_ctx *ctx, int result, void *userdata) {
        example_work *wk = userdata;
        work_record(wk->ex, ctx, wk->id, result, wk);
        free(wk);
}

/* Adopted from the previous build: the block is its (wk->ex is stale), the state ours. */
static void on_sleep_work_adopted(org_ctx *ctx, int result, void *work_data, void *userdata) {
        example_work *wk = work_data;
        work_record(userdata, ctx, wk->id, result, wk);
        free(wk);
}

static int example_sleep_work(example *ex, const org_msg *req) {
        json_error_t e;
        json_t *a = json_loadb(req->data, req->len, 0, &e);
        json_int_t ms = json_integer_value(json_object_get(a, "ms"));
        json_decref(a);
        if (ms < 0 || ms > 60000 || ex->n_works == EXAMPLE_MAX_RUNS || !ORG_HOST_HAS(ex->host, work_submit))
                return reply_json(ex, req, json_pack("{s:s}", "error", "ms: 0 to 60000"));
        example_work *wk = calloc(1, sizeof *wk);
        if (!wk)
                return -ENOMEM;
        wk->ex = ex;
        wk->ms = (uint64_t)ms;
        uint64_t id = 0;
        int r = ex->host->work_submit(ex->ctx, sleep_work, on_sleep_work_done, wk, &id);
        if (r < 0) {
                free(wk);
                return reply_json(ex, req, json_pack("{s:s}", "error", strerror(-r)));
        }
        wk->id = id; /* the thread reads only ms; done runs later, on the loop */
        ex->works[ex->n_works++] = id;
        return reply_json(ex, req, json_pack("{s:I}", "id", (json_int_t)id));
}

static int example_execs(example *ex, const org_msg *req) {
        json_t *running = json_array(), *works = json_array();
        for (size_t i = 0; i < ex->n_runs; i++)
                json_array_append_new(running, json_integer((json_int_t)ex->runs[i]->id));
        for (size_t i = 0; i < ex->n_works; i++)
                json_array_append_new(works, json_integer((json_int_t)ex->works[i]));
        return reply_json(ex, req,
                          json_pack("{s:o, s:o, s:O, s:s, s:I}", "running", running, "works", works, "done",
                                    ex->done, "version", EXAMPLE_VERSION, "restores", (json_int_t)ex->restores));
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
        if (strcmp(verb, "durable") == 0)
                return reply_json(ex, req,
                                  json_pack("{s:I, s:I}", "handled", (json_int_t)ex->durable_handled, "unique",
                                            (json_int_t)ex->n_durable_ids));
        if (strcmp(verb, "enqueue") == 0)
                return example_enqueue(ex, req);
        if (strcmp(verb, "sleep_echo") == 0)
                return example_sleep_echo(ex, req);
        if (strcmp(verb, "sleep_work") == 0)
                return example_sleep_work(ex, req);
        if (strcmp(verb, "execs") == 0)
                return example_execs(ex, req);
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

/* The count, the completions and the running commands survive a reload: the new build
 * starts where the old one stopped and adopts the commands (the blob carries their
 * ids). A blob of 8 bytes is the first format: the count alone. */
static int example_save(void *state, void **ret_blob, size_t *ret_len) {
        example *ex = state;
        json_t *running = json_array(), *works = json_array();
        for (size_t i = 0; running && i < ex->n_runs; i++)
                json_array_append_new(running, json_integer((json_int_t)ex->runs[i]->id));
        for (size_t i = 0; works && i < ex->n_works; i++)
                json_array_append_new(works, json_integer((json_int_t)ex->works[i]));
        if (!running || !works) {
                json_decref(running);
                json_decref(works);
                return -ENOMEM;
        }
        json_t *o = json_pack("{s:i, s:I, s:I, s:o, s:o, s:O}", "format", 2, "count", (json_int_t)ex->count,
                              "restores", (json_int_t)ex->restores, "running", running, "works", works, "done",
                              ex->done);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text)
                return -ENOMEM;
        *ret_blob = text;
        *ret_len = strlen(text);
        return 0;
}

static int example_restore(void *state, const void *blob, size_t len) {
        example *ex = state;
        if (len == sizeof(uint64_t)) {
                memcpy(&ex->count, blob, sizeof ex->count);
                return 0;
        }
        json_error_t e;
        json_t *o = json_loadb(blob, len, 0, &e);
        if (!o || json_integer_value(json_object_get(o, "format")) != 2) {
                json_decref(o);
                return -EINVAL;
        }
        ex->count = (uint64_t)json_integer_value(json_object_get(o, "count"));
        ex->restores = (uint64_t)json_integer_value(json_object_get(o, "restores")) + 1;
        json_t *done = json_object_get(o, "done");
        if (json_is_array(done)) {
                json_decref(ex->done);
                ex->done = json_incref(done);
        }
        size_t i;
        json_t *v;
        bool can_adopt = ORG_HOST_HAS(ex->host, exec_adopt);
        json_array_foreach(json_object_get(o, "running"), i, v) {
                uint64_t id = (uint64_t)json_integer_value(v);
                if (!ex->adopt_execs || !can_adopt)
                        continue; /* the host cancels it once restore returns, and logs it */
                example_run *run = run_new(ex);
                if (!run)
                        break;
                run->id = id;
                int r = ex->host->exec_adopt(ex->ctx, id, on_sleep_echo_done, run);
                if (r < 0) {
                        ex->host->log(ex->ctx, ORG_LOG_WARNING, "cannot adopt exec %llu: %s", (unsigned long long)id,
                                      strerror(-r));
                        run_forget(ex, run);
                }
        }
        /* the worker jobs: same rule, the block stays the job's */
        bool can_adopt_work = ORG_HOST_HAS(ex->host, work_adopt);
        json_array_foreach(json_object_get(o, "works"), i, v) {
                uint64_t id = (uint64_t)json_integer_value(v);
                if (!ex->adopt_execs || !can_adopt_work || ex->n_works == EXAMPLE_MAX_RUNS)
                        continue;
                int r = ex->host->work_adopt(ex->ctx, id, on_sleep_work_adopted, ex);
                if (r < 0)
                        ex->host->log(ex->ctx, ORG_LOG_WARNING, "cannot adopt work %llu: %s", (unsigned long long)id,
                                      strerror(-r));
                else
                        ex->works[ex->n_works++] = id;
        }
        json_decref(o);
        return 0;
}

static void example_fini(void *state) {
        example *ex = state;
        if (!ex)
                return;
        free(ex->last_subject);
        for (size_t i = 0; i < ex->n_durable_ids; i++)
                free(ex->durable_ids[i]);
        free(ex->durable_ids);
        /* the host cancels or hands over the commands themselves; these are ours */
        for (size_t i = 0; i < ex->n_runs; i++)
                free(ex->runs[i]);
        json_decref(ex->done);
        free(ex);
}

ORG_PLUGIN_DEFINE(.name = "example", .version = EXAMPLE_VERSION,
                  .summary = "heartbeat, message counter and verb demo: the template for new plugins",
                  .config_map = config_map, .verbs = verbs, .init = example_init, .tick = example_tick,
                  .handle = example_handle, .call = example_call, .fini = example_fini, .verify = example_verify,
                  .save_state = example_save, .restore_state = example_restore);
