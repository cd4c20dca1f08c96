/* bridge_js.c — JetStream through the bridge: the streams of bus.nats.jetstream are
 * created (or updated) whenever the connection comes up; durable publishes go through
 * one worker thread that waits for the server's acknowledgement (and for the server
 * itself while it is away: nothing is lost across a NATS restart); each durable
 * consumer is a pull subscription fetched by its own thread, whose messages are handed
 * to the loop and acked (or nak'ed, kept in progress, terminated) from there.
 * Publishes are asynchronous (up to 1024 in flight), matched to their PubAck by the
 * message id each one carries.
 * The loop never waits on the server. */
#include <time.h>

#include "bridge_internal.h"
#include "log.h"
#include "util.h"

#define PUB_QUEUE_MAX 65536

typedef struct pub_job {
        post_item base;         /* reused to post the result back */
        struct pub_job *next_job;
        unsigned attempts;      /* refusals for a missing stream so far */
        char *subject, *msg_id;
        void *data;
        size_t len;
        int result;
        bridge_pub_done_fn cb;
        void *userdata;
} pub_job;

/* A delivered message waiting for its ack: only its reply subject is kept. Acks are
 * published there by us, so nothing depends on the pull subscription (or the natsMsg)
 * still existing when the plugin finally answers. */
typedef struct pending_ack {
        uint64_t token;
        char *reply;
        bridge_consumer *consumer;
} pending_ack;

struct bridge_consumer {
        bridge *bridge;
        _Atomic int refs;                /* the loop's and the fetch thread's */
        _Atomic bool cancelled;
        char *stream, *durable, *filter;
        unsigned max_deliver, max_pending;
        uint64_t ack_wait_ms;
        bridge_deliver_fn fn;
        void *userdata;
        _Atomic unsigned outstanding;    /* delivered, not yet acked */
        pthread_t thread;
        uint64_t delivered, acked;
};

typedef struct durable_item {
        post_item base;
        bridge_consumer *consumer;
        uint64_t token;
        uint64_t delivery_count;
        char *subject;
        void *data;
        size_t len;
} durable_item;

struct js_state {
        json_t *config;                  /* bus.nats.jetstream, or NULL */
        jsCtx *js;
        pthread_t worker;
        bool worker_started;
        pthread_mutex_t lock;            /* everything below */
        pthread_cond_t cond;
        pub_job *jobs_head, *jobs_tail;
        size_t n_jobs;
        pub_job *inflight;               /* published, waiting for the server's PubAck */
        size_t n_inflight;
        bool streams_wanted;             /* (re)create streams at the next chance */
        pending_ack *acks;               /* messages delivered and not acked */
        size_t n_acks, cap_acks;
        uint64_t next_token;
        _Atomic uint64_t next_auto_id;
        _Atomic uint64_t published, publish_errors, stream_errors, acks_sent, naks_sent;
        _Atomic int live_consumers;      /* fetch threads still running */
        pthread_t *threads;              /* every fetch thread, joined at stop */
        size_t n_threads;
};

static bool js_connected(bridge *b) { return b->fast_connected; }

/* Creates or updates one stream; blocking: the worker thread only. */
static int ensure_stream(bridge *b, json_t *s) {
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        cfg.Name = json_string_value(json_object_get(s, "name"));
        json_t *subjects = json_object_get(s, "subjects");
        const char *subj[64];
        size_t n = 0, i;
        json_t *v;
        json_array_foreach(subjects, i, v) if (n < ELEMENTSOF(subj)) subj[n++] = json_string_value(v);
        cfg.Subjects = subj;
        cfg.SubjectsLen = (int)n;
        const char *ret = json_string_value(json_object_get(s, "retention"));
        cfg.Retention = ret && streq(ret, "workqueue") ? js_WorkQueuePolicy
                        : ret && streq(ret, "interest") ? js_InterestPolicy
                                                        : js_LimitsPolicy;
        const char *st = json_string_value(json_object_get(s, "storage"));
        cfg.Storage = st && streq(st, "memory") ? js_MemoryStorage : js_FileStorage;
        if (json_object_get(s, "max_bytes"))
                cfg.MaxBytes = json_integer_value(json_object_get(s, "max_bytes"));
        if (json_object_get(s, "max_msgs"))
                cfg.MaxMsgs = json_integer_value(json_object_get(s, "max_msgs"));
        if (json_object_get(s, "max_age"))
                cfg.MaxAge = json_integer_value(json_object_get(s, "max_age")) * 1000000; /* ms → ns */
        cfg.Duplicates = json_integer_value(json_object_get(s, "duplicate_window")) * 1000000;
        cfg.Replicas = json_integer_value(json_object_get(s, "replicas"));

        jsErrCode jerr = 0;
        jsStreamInfo *si = NULL;
        natsStatus r = js_AddStream(&si, b->js->js, &cfg, NULL, &jerr);
        if (r != NATS_OK && jerr == JSStreamNameExistErr)
                r = js_UpdateStream(&si, b->js->js, &cfg, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        if (r != NATS_OK) {
                b->js->stream_errors++;
                log_error("NATS bridge: stream %s: %s (JetStream error %d).", cfg.Name, bridge_nats_error(r), (int)jerr);
                return -EIO;
        }
        log_info("NATS bridge: stream %s ready (%zu subjects).", cfg.Name, n);
        return 0;
}

static void pub_run(bridge *b, post_item *it) {
        pub_job *j = (pub_job *)it;
        if (j->cb)
                j->cb(j->result, j->userdata);
        free(j->subject);
        free(j->msg_id);
        free(j->data);
        free(j);
}

static void pub_drop(post_item *it) {
        pub_job *j = (pub_job *)it;
        free(j->subject);
        free(j->msg_id);
        free(j->data);
        free(j);
}

/* A job whose result never reached the loop (shutdown): its owner still hears of it,
 * with the result if there was one. */
static void pub_cancel(post_item *it) {
        pub_job *j = (pub_job *)it;
        if (j->cb)
                j->cb(j->result, j->userdata);
        pub_drop(it);
}

/* Puts a job back at the head of the queue (any thread). */
static void requeue_front(js_state *js, pub_job *j) {
        pthread_mutex_lock(&js->lock);
        j->next_job = js->jobs_head;
        js->jobs_head = j;
        if (!js->jobs_tail)
                js->jobs_tail = j;
        js->n_jobs++;
        pthread_cond_broadcast(&js->cond);
        pthread_mutex_unlock(&js->lock);
}

static void inflight_add(js_state *js, pub_job *j) {
        pthread_mutex_lock(&js->lock);
        j->next_job = js->inflight;
        js->inflight = j;
        js->n_inflight++;
        pthread_mutex_unlock(&js->lock);
}

static pub_job *inflight_take(js_state *js, const char *msg_id) {
        pub_job *found = NULL;
        pthread_mutex_lock(&js->lock);
        for (pub_job **p = &js->inflight; *p; p = &(*p)->next_job)
                if (streq((*p)->msg_id, msg_id)) {
                        found = *p;
                        *p = found->next_job;
                        js->n_inflight--;
                        break;
                }
        pthread_mutex_unlock(&js->lock);
        return found;
}

/* libnats thread: the server's answer to an asynchronous publish. A time-out (the
 * answer was lost, or the server is away) or a stream not there yet sends the job
 * round again: its message id lets the stream drop a copy it already has. */
static void on_pub_ack(jsCtx *jsc, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure) {
        bridge *b = closure;
        js_state *js = b->js;
        const char *id = NULL;
        pub_job *j = natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id ? inflight_take(js, id) : NULL;
        natsMsg_Destroy(msg);
        if (!j)
                return;
        if (pa) {
                j->result = 0;
                js->published++;
                bridge_post(b, &j->base, false);
                return;
        }
        natsStatus err = pae ? pae->Err : NATS_ERR;
        bool no_stream = err == NATS_NO_RESPONDERS || (pae && pae->ErrCode == JSStreamNotFoundErr);
        if (no_stream && ++j->attempts > 3) {
                j->result = -ENOENT;
                js->publish_errors++;
                log_error("NATS bridge: durable publish to %s failed: %s (is a stream declared for it?).", j->subject,
                          pae && pae->ErrText ? pae->ErrText : natsStatus_GetText(err));
                bridge_post(b, &j->base, false);
                return;
        }
        if (no_stream) {
                pthread_mutex_lock(&js->lock);
                js->streams_wanted = true;
                pthread_mutex_unlock(&js->lock);
        }
        requeue_front(js, j);
}

/* Worker: waits for the server (nothing is lost while it is away), makes sure the
 * streams exist, then publishes asynchronously: many publishes in flight, each
 * answered through on_pub_ack. Returns false when stopping. */
static bool publish_one(bridge *b, pub_job *j) {
        js_state *js = b->js;
        while (!b->stopping) {
                if (!js_connected(b)) {
                        pthread_mutex_lock(&js->lock);
                        struct timespec ts;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        ts.tv_sec += 1;
                        if (!b->stopping)
                                pthread_cond_timedwait(&js->cond, &js->lock, &ts);
                        pthread_mutex_unlock(&js->lock);
                        continue;
                }
                /* a server that came back (maybe without its memory streams) gets them
                 * again before the first publish */
                pthread_mutex_lock(&js->lock);
                bool streams = js->streams_wanted;
                js->streams_wanted = false;
                pthread_mutex_unlock(&js->lock);
                if (streams) {
                        size_t i;
                        json_t *st;
                        json_array_foreach(json_object_get(js->config, "streams"), i, st) ensure_stream(b, st);
                }
                natsMsg *m = NULL;
                natsStatus s = natsMsg_Create(&m, j->subject, NULL, j->data, (int)j->len);
                if (s == NATS_OK)
                        s = natsMsgHeader_Set(m, BRIDGE_ORIGIN_HEADER, b->self);
                jsPubOptions po;
                jsPubOptions_Init(&po);
                po.MsgId = j->msg_id;
                po.MaxWait = 5000; /* a lost answer comes back as a time-out: sent again */
                if (s == NATS_OK) {
                        inflight_add(js, j);
                        s = js_PublishMsgAsync(js->js, &m, &po); /* takes m on success */
                        if (s == NATS_OK)
                                return true;
                        if (inflight_take(js, j->msg_id) != j)
                                return true; /* already answered (and requeued or posted) */
                }
                natsMsg_Destroy(m);
                /* too many in flight, or the connection just went: a moment, then again */
                struct timespec delay = {0, 50 * 1000 * 1000};
                nanosleep(&delay, NULL);
        }
        return false;
}

static void *worker_loop(void *userdata) {
        bridge *b = userdata;
        js_state *js = b->js;
        for (;;) {
                pthread_mutex_lock(&js->lock);
                while (!b->stopping && !js->jobs_head && !(js->streams_wanted && js_connected(b)))
                        pthread_cond_wait(&js->cond, &js->lock);
                if (b->stopping) {
                        pthread_mutex_unlock(&js->lock);
                        return NULL;
                }
                bool streams = js->streams_wanted && js_connected(b);
                if (streams)
                        js->streams_wanted = false;
                pub_job *j = streams ? NULL : js->jobs_head;
                if (j) {
                        js->jobs_head = j->next_job;
                        if (!js->jobs_head)
                                js->jobs_tail = NULL;
                        js->n_jobs--;
                }
                pthread_mutex_unlock(&js->lock);
                if (streams) {
                        size_t i;
                        json_t *s;
                        json_array_foreach(json_object_get(js->config, "streams"), i, s) ensure_stream(b, s);
                        continue;
                }
                if (!publish_one(b, j)) {
                        bridge_post(b, &j->base, false); /* dropped at shutdown: pub_cancel */
                        return NULL;
                }
        }
}

int js_init(bridge *b, json_t *config) {
        js_state *js = new0(js_state, 1);
        if (!js)
                return -ENOMEM;
        js->config = json_incref(config);
        js->streams_wanted = json_array_size(json_object_get(config, "streams")) > 0;
        pthread_mutex_init(&js->lock, NULL);
        pthread_cond_init(&js->cond, NULL);
        b->js = js; /* before any connection exists: connect callbacks read it */
        return 0;
}

int js_start(bridge *b) {
        js_state *js = b->js;
        jsOptions o;
        jsOptions_Init(&o);
        o.Domain = json_string_value(json_object_get(js->config, "domain"));
        o.Wait = 5000;
        o.PublishAsync.AckHandler = on_pub_ack;
        o.PublishAsync.AckHandlerClosure = b;
        o.PublishAsync.MaxPending = 1024;
        natsStatus s = natsConnection_JetStream(&js->js, b->fast, &o);
        if (s != NATS_OK)
                return log_error_errno(EIO, "NATS bridge: no JetStream context: %s", bridge_nats_error(s));
        int e = pthread_create(&js->worker, NULL, worker_loop, b);
        if (e != 0)
                return -e;
        js->worker_started = true;
        return 0;
}

void js_on_connected(bridge *b) {
        js_state *js = b->js;
        if (!js)
                return;
        pthread_mutex_lock(&js->lock);
        js->streams_wanted = json_array_size(json_object_get(js->config, "streams")) > 0;
        pthread_cond_broadcast(&js->cond);
        pthread_mutex_unlock(&js->lock);
}

int bridge_publish_durable(bridge *b, const char *subject, const char *msg_id, const void *data, size_t len,
                           bridge_pub_done_fn cb, void *userdata) {
        js_state *js = b ? b->js : NULL;
        if (!js)
                return -EOPNOTSUPP;
        pub_job *j = new0(pub_job, 1);
        if (!j)
                return -ENOMEM;
        j->base.run = pub_run;
        j->base.drop = pub_cancel;
        j->result = -ECANCELED; /* until the worker says otherwise */
        j->subject = strdup(subject);
        /* without an id of the caller's, one of ours: a retry after a lost PubAck is then
         * recognised by the stream instead of stored twice */
        if (msg_id)
                j->msg_id = strdup(msg_id);
        else if (asprintf(&j->msg_id, "%s-%llu-%llu", b->self, (unsigned long long)now_realtime_us(),
                          (unsigned long long)++js->next_auto_id) < 0)
                j->msg_id = NULL;
        j->data = malloc(len + 1);
        j->len = len;
        j->cb = cb;
        j->userdata = userdata;
        if (!j->subject || !j->data || !j->msg_id) {
                pub_drop(&j->base);
                return -ENOMEM;
        }
        memcpy(j->data, data, len);
        pthread_mutex_lock(&js->lock);
        if (js->n_jobs >= PUB_QUEUE_MAX) {
                pthread_mutex_unlock(&js->lock);
                pub_drop(&j->base);
                return -ENOBUFS;
        }
        if (js->jobs_tail)
                js->jobs_tail->next_job = j;
        else
                js->jobs_head = j;
        js->jobs_tail = j;
        js->n_jobs++;
        pthread_cond_broadcast(&js->cond);
        pthread_mutex_unlock(&js->lock);
        return 0;
}

static void consumer_unref(bridge_consumer *c) {
        if (--c->refs > 0)
                return;
        free(c->stream);
        free(c->durable);
        free(c->filter);
        free(c);
}

/* Registers a delivered message by its reply subject (taken); returns its token, 0
 * when out of memory. */
static uint64_t acks_add(js_state *js, char *reply, bridge_consumer *c) {
        pthread_mutex_lock(&js->lock);
        uint64_t token = 0;
        if (js->n_acks == js->cap_acks) {
                size_t ncap = js->cap_acks ? js->cap_acks * 2 : 64;
                pending_ack *n = realloc(js->acks, ncap * sizeof *n);
                if (!n)
                        goto out;
                js->acks = n;
                js->cap_acks = ncap;
        }
        token = ++js->next_token;
        js->acks[js->n_acks++] = (pending_ack){token, reply, c};
out:
        pthread_mutex_unlock(&js->lock);
        return token;
}

/* Takes a registered message out (keep: leave it registered, as for in-progress);
 * returns a copy of its reply subject (malloc'd). */
static char *acks_take(js_state *js, uint64_t token, bool keep, bridge_consumer **ret_consumer) {
        char *reply = NULL;
        pthread_mutex_lock(&js->lock);
        for (size_t i = 0; i < js->n_acks; i++)
                if (js->acks[i].token == token) {
                        *ret_consumer = js->acks[i].consumer;
                        if (keep)
                                reply = strdup(js->acks[i].reply);
                        else {
                                reply = js->acks[i].reply;
                                js->acks[i] = js->acks[--js->n_acks];
                        }
                        break;
                }
        pthread_mutex_unlock(&js->lock);
        return reply;
}

int bridge_ack(bridge *b, uint64_t token, org_ack_kind kind, uint64_t delay_ms) {
        js_state *js = b ? b->js : NULL;
        if (!js)
                return -EOPNOTSUPP;
        if (kind < ORG_ACK || kind > ORG_TERM)
                return -EINVAL;
        bridge_consumer *c = NULL;
        _cleanup_free_ char *reply = acks_take(js, token, kind == ORG_IN_PROGRESS, &c);
        if (!reply)
                return -ENOENT;
        /* JetStream's ack protocol: the body published on the message's reply subject */
        char body[64];
        switch (kind) {
        case ORG_ACK:
                snprintf(body, sizeof body, "+ACK");
                js->acks_sent++;
                break;
        case ORG_NAK:
                if (delay_ms)
                        snprintf(body, sizeof body, "-NAK {\"delay\": %llu}", (unsigned long long)delay_ms * 1000000ULL);
                else
                        snprintf(body, sizeof body, "-NAK");
                js->naks_sent++;
                break;
        case ORG_IN_PROGRESS:
                snprintf(body, sizeof body, "+WPI");
                break;
        default:
                snprintf(body, sizeof body, "+TERM");
                break;
        }
        natsStatus s = natsConnection_PublishString(b->fast, reply, body);
        if (kind == ORG_IN_PROGRESS)
                return s == NATS_OK ? 0 : -EIO;
        c->acked++;
        c->outstanding--;
        pthread_mutex_lock(&js->lock);
        pthread_cond_broadcast(&js->cond); /* the fetch thread may take more */
        pthread_mutex_unlock(&js->lock);
        consumer_unref(c);
        return s == NATS_OK ? 0 : -EIO;
}

static void durable_free(durable_item *d) {
        free(d->subject);
        free(d->data);
        free(d);
}

static void durable_run(bridge *b, post_item *it) {
        durable_item *d = (durable_item *)it;
        bridge_consumer *c = d->consumer;
        if (c->cancelled || !c->fn)
                bridge_ack(b, d->token, ORG_NAK, 0); /* the instance went away: let someone else have it */
        else {
                org_msg m = {
                        .subject = d->subject,
                        .data = d->data,
                        .len = d->len,
                        .origin = b->self,
                        .ack_token = d->token,
                        .delivery_count = d->delivery_count,
                };
                c->delivered++;
                c->fn(&m, c->userdata);
        }
        consumer_unref(c);
        durable_free(d);
}

static void durable_drop(post_item *it) {
        durable_item *d = (durable_item *)it;
        consumer_unref(d->consumer);
        durable_free(d);
}

/* Fetch thread of one consumer: subscribes (again and again while the server is
 * away), then fetches as long as fewer than max_pending messages wait for an ack. */
static void *consumer_loop(void *userdata) {
        bridge_consumer *c = userdata;
        bridge *b = c->bridge;
        js_state *js = b->js;
        natsSubscription *sub = NULL;
        unsigned failures = 0, idle = 0;
        while (!c->cancelled && !b->stopping) {
                if (!sub) {
                        /* the consumer is created (or found, the same) explicitly, then bound:
                         * that also serves a consumer without a subject filter */
                        jsConsumerConfig cc;
                        jsConsumerConfig_Init(&cc);
                        cc.Durable = c->durable;
                        cc.AckPolicy = js_AckExplicit;
                        cc.AckWait = (int64_t)c->ack_wait_ms * 1000000;
                        cc.MaxDeliver = c->max_deliver;
                        cc.MaxAckPending = c->max_pending;
                        cc.FilterSubject = c->filter;
                        jsSubOptions so;
                        jsSubOptions_Init(&so);
                        so.Stream = c->stream;
                        so.Consumer = c->durable;
                        jsErrCode jerr = 0;
                        jsConsumerInfo *ci = NULL;
                        natsStatus s = js_connected(b) ? js_AddConsumer(&ci, js->js, c->stream, &cc, NULL, &jerr)
                                                       : NATS_NOT_YET_CONNECTED;
                        jsConsumerInfo_Destroy(ci);
                        if (s != NATS_OK && jerr == JSConsumerNameExistErr)
                                s = js_UpdateConsumer(&ci, js->js, c->stream, &cc, NULL, &jerr), jsConsumerInfo_Destroy(ci);
                        if (s == NATS_OK)
                                s = js_PullSubscribe(&sub, js->js, c->filter, c->durable, NULL, &so, &jerr);
                        if (s != NATS_OK) {
                                sub = NULL;
                                if (js_connected(b))
                                        log_warning("NATS bridge: consumer %s on %s: %s (JetStream error %d); retrying.",
                                                    c->durable, c->stream, bridge_nats_error(s), (int)jerr);
                                struct timespec delay = {1, 0};
                                nanosleep(&delay, NULL);
                                continue;
                        }
                }
                unsigned room = c->max_pending > c->outstanding ? c->max_pending - c->outstanding : 0;
                if (room == 0) {
                        pthread_mutex_lock(&js->lock);
                        struct timespec ts;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        ts.tv_sec += 1;
                        if (!c->cancelled && !b->stopping && c->outstanding >= c->max_pending)
                                pthread_cond_timedwait(&js->cond, &js->lock, &ts);
                        pthread_mutex_unlock(&js->lock);
                        continue;
                }
                natsMsgList list = {0};
                jsErrCode jerr = 0;
                natsStatus s = natsSubscription_Fetch(&list, sub, (int)MIN(room, 256u), 1000, &jerr);
                if (s == NATS_TIMEOUT) {
                        /* it can come early and only means "nothing yet" — but a server
                         * that lost our consumer answers the same: look now and then */
                        if (++idle % 30 == 0) {
                                jsConsumerInfo *ci = NULL;
                                if (js_GetConsumerInfo(&ci, js->js, c->stream, c->durable, NULL, &jerr) == NATS_NOT_FOUND) {
                                        log_warning("NATS bridge: consumer %s on %s is gone from the server; creating it again.",
                                                    c->durable, c->stream);
                                        natsSubscription_Destroy(sub);
                                        sub = NULL;
                                }
                                jsConsumerInfo_Destroy(ci);
                        }
                        continue;
                }
                idle = 0;
                if (s == NATS_OK)
                        failures = 0;
                if (s != NATS_OK) {
                        /* a server that came back without our consumer: subscribe again */
                        if (++failures >= 5 || s == NATS_CONNECTION_CLOSED || s == NATS_INVALID_SUBSCRIPTION) {
                                natsSubscription_Destroy(sub);
                                sub = NULL;
                                failures = 0;
                        }
                        struct timespec delay = {0, 200 * 1000 * 1000};
                        nanosleep(&delay, NULL);
                        continue;
                }
                for (int i = 0; i < list.Count; i++) {
                        natsMsg *m = list.Msgs[i];
                        list.Msgs[i] = NULL;
                        durable_item *d = new0(durable_item, 1);
                        jsMsgMetaData *meta = NULL;
                        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
                                if (d)
                                        d->delivery_count = meta->NumDelivered;
                                jsMsgMetaData_Destroy(meta);
                        }
                        size_t len = (size_t)natsMsg_GetDataLength(m);
                        if (d) {
                                d->subject = strdup(natsMsg_GetSubject(m));
                                d->data = malloc(len + 1);
                        }
                        char *reply = strdup(natsMsg_GetReply(m) ? natsMsg_GetReply(m) : "");
                        if (!d || !d->subject || !d->data || !reply) {
                                natsMsg_Nak(m, NULL);
                                natsMsg_Destroy(m);
                                if (d)
                                        durable_free(d);
                                free(reply);
                                continue;
                        }
                        memcpy(d->data, natsMsg_GetData(m), len);
                        ((char *)d->data)[len] = '\0';
                        d->len = len;
                        d->base.run = durable_run;
                        d->base.drop = durable_drop;
                        c->refs += 2; /* one for the pending ack, one for the item */
                        c->outstanding++;
                        d->consumer = c;
                        d->token = acks_add(js, reply, c);
                        if (!d->token) {
                                natsMsg_Nak(m, NULL);
                                free(reply);
                                c->refs -= 2;
                                c->outstanding--;
                                durable_free(d);
                        } else
                                bridge_post(b, &d->base, false);
                        natsMsg_Destroy(m); /* acks go to the reply subject we kept */
                }
                natsMsgList_Destroy(&list);
        }
        if (sub) {
                natsSubscription_Unsubscribe(sub);
                natsSubscription_Destroy(sub);
        }
        consumer_unref(c);
        pthread_mutex_lock(&js->lock);
        js->live_consumers--;
        pthread_cond_broadcast(&js->cond);
        pthread_mutex_unlock(&js->lock);
        return NULL;
}

int bridge_consume(bridge *b, const org_consume_opts *o, bridge_deliver_fn fn, void *userdata,
                   bridge_consumer **ret) {
        if (!b || !b->js)
                return -EOPNOTSUPP;
        if (!o || isempty(o->stream) || isempty(o->durable) || !name_is_valid(o->durable))
                return -EINVAL;
        bridge_consumer *c = new0(bridge_consumer, 1);
        if (!c)
                return -ENOMEM;
        c->bridge = b;
        c->refs = 2; /* the caller's and the thread's */
        c->stream = strdup(o->stream);
        c->durable = strdup(o->durable);
        c->filter = o->filter ? strdup(o->filter) : NULL;
        c->max_deliver = o->max_deliver ? o->max_deliver : 5;
        c->max_pending = o->max_pending ? o->max_pending : 64;
        c->ack_wait_ms = o->ack_wait_ms ? o->ack_wait_ms : 30000;
        c->fn = fn;
        c->userdata = userdata;
        if (!c->stream || !c->durable || (o->filter && !c->filter)) {
                c->refs = 1;
                consumer_unref(c);
                return -ENOMEM;
        }
        js_state *js = b->js;
        pthread_mutex_lock(&js->lock);
        pthread_t *t = realloc(js->threads, (js->n_threads + 1) * sizeof *t);
        int r = t ? 0 : ENOMEM;
        if (t) {
                js->threads = t;
                js->live_consumers++;
                r = pthread_create(&c->thread, NULL, consumer_loop, c);
                if (r == 0)
                        js->threads[js->n_threads++] = c->thread; /* joined at stop */
                else
                        js->live_consumers--;
        }
        pthread_mutex_unlock(&js->lock);
        if (r != 0) {
                c->refs = 1;
                consumer_unref(c);
                return -r;
        }
        *ret = c;
        return 0;
}

void bridge_consume_cancel(bridge_consumer *c) {
        if (!c)
                return;
        bridge *b = c->bridge;
        c->cancelled = true;
        c->fn = NULL;
        /* what it holds unacked goes back to the server now, not after ack_wait */
        for (;;) {
                uint64_t token = 0;
                pthread_mutex_lock(&b->js->lock);
                for (size_t i = 0; i < b->js->n_acks; i++)
                        if (b->js->acks[i].consumer == c) {
                                token = b->js->acks[i].token;
                                break;
                        }
                pthread_cond_broadcast(&b->js->cond);
                pthread_mutex_unlock(&b->js->lock);
                if (!token)
                        break;
                bridge_ack(b, token, ORG_NAK, 0);
        }
        consumer_unref(c);
}

void js_stop(bridge *b) {
        js_state *js = b->js;
        if (!js)
                return;
        pthread_mutex_lock(&js->lock);
        pthread_cond_broadcast(&js->cond);
        pthread_mutex_unlock(&js->lock);
        if (js->worker_started)
                pthread_join(js->worker, NULL);
        /* Fetch threads notice b->stopping within one fetch time-out (or one JetStream
         * API call); messages they hold unacked are redelivered by the server later.
         * They all end before anything they touch is freed, and the JetStream context,
         * which holds the connection, goes before the connection is closed. */
        for (size_t i = 0; i < js->n_threads; i++)
                pthread_join(js->threads[i], NULL);
        free(js->threads);
        js->threads = NULL;
        js->n_threads = 0;
        jsCtx_Destroy(js->js);
        js->js = NULL;
}

void js_free(bridge *b) {
        js_state *js = b->js;
        if (!js)
                return;
        while (js->jobs_head) {
                pub_job *j = js->jobs_head;
                js->jobs_head = j->next_job;
                pub_cancel(&j->base);
        }
        while (js->inflight) { /* the connection closed before the server answered */
                pub_job *j = js->inflight;
                js->inflight = j->next_job;
                pub_cancel(&j->base);
        }
        for (size_t i = 0; i < js->n_acks; i++) {
                free(js->acks[i].reply);
                consumer_unref(js->acks[i].consumer);
        }
        free(js->acks);
        jsCtx_Destroy(js->js);
        json_decref(js->config);
        pthread_mutex_destroy(&js->lock);
        pthread_cond_destroy(&js->cond);
        free(js);
        b->js = NULL;
}

json_t *js_status(bridge *b) {
        js_state *js = b->js;
        if (!js)
                return json_null();
        pthread_mutex_lock(&js->lock);
        size_t queued = js->n_jobs + js->n_inflight, unacked = js->n_acks;
        pthread_mutex_unlock(&js->lock);
        return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "published", (json_int_t)js->published,
                         "publish_queued", (json_int_t)queued, "publish_errors", (json_int_t)js->publish_errors,
                         "stream_errors", (json_int_t)js->stream_errors, "unacked", (json_int_t)unacked, "acks",
                         (json_int_t)js->acks_sent, "naks", (json_int_t)js->naks_sent);
}
