/* test-bus.c — the internal bus: message layout, per-client FIFO order and round-robin
 * between clients, no delivery from inside publish or a callback, bounded queues with
 * drop counters, one copy for overlapping patterns, freeing clients during delivery,
 * and request/reply on a real sd-event loop (reply, nobody listening, time-out,
 * cancel). Loops run for a bounded number of iterations; nothing sleeps. */
#include <errno.h>
#include <stdbool.h>

#include "bus.h"
#include "test.h"
#include "util.h"

#define MAX_LOG 256

typedef struct rec {
        size_t n;
        char subjects[MAX_LOG][32];
        char who[MAX_LOG];
        uint64_t seq[MAX_LOG];
} rec;

static rec R;

static void rec_reset(void) { memset(&R, 0, sizeof(R)); }

/* userdata is a one-character client tag. */
static void on_record(bus_client *c, const bus_msg *msg, void *userdata) {
        CHECK(R.n < MAX_LOG);
        snprintf(R.subjects[R.n], sizeof(R.subjects[0]), "%s", msg->m.subject);
        R.who[R.n] = *(const char *)userdata;
        R.seq[R.n] = msg->seq;
        R.n++;
}

static int pub(bus *b, const char *subject) { return bus_publish(b, subject, NULL, NULL, 0, "x", 1, NULL); }

static const bus_msg *seen;
static bus_msg *kept;

/* Keeps a reference past the callback to show the message outlives delivery. */
static void keep(bus_client *cl, const bus_msg *msg, void *ud) {
        seen = msg;
        kept = bus_msg_ref((bus_msg *)msg);
}

static void test_message_round_trip(void) {
        bus *b = bus_new(NULL, "agent1");
        CHECK(b);
        CHECK_STR(bus_agent_name(b), "agent1");

        bus_client *c = bus_client_new(b, "c", 0, NULL, NULL);
        CHECK(c);
        CHECK_STR(bus_client_name(c), "c");
        CHECK_INT(bus_subscribe(c, "t.>", NULL), 0);

        bus_client_set_deliver(c, keep, NULL);

        org_header h[] = {{"content-type", "application/json"}, {"x-trace", "abc"}, {"x-trace", "def"}};
        const char payload[] = "{\"ts\":1}";
        CHECK_INT(bus_publish(b, "t.one", "reply.here", h, 3, payload, strlen(payload), NULL), 1);
        CHECK_INT(bus_dispatch(b, 0), 1);
        CHECK(seen && kept == seen);

        const org_msg *m = &kept->m;
        CHECK_STR(m->subject, "t.one");
        CHECK_STR(m->reply, "reply.here");
        CHECK_STR(m->origin, "agent1");
        CHECK_INT(m->len, strlen(payload));
        CHECK(memcmp(m->data, payload, m->len) == 0);
        CHECK_INT(((const char *)m->data)[m->len], 0);
        CHECK_INT(m->n_headers, 3);
        CHECK_STR(m->headers[0].key, "content-type");
        CHECK_STR(m->headers[0].value, "application/json");
        CHECK_STR(org_msg_header(m, "x-trace"), "abc");
        CHECK_STR(m->headers[2].value, "def");
        CHECK(org_msg_header(m, "nope") == NULL);
        CHECK_INT(kept->seq, 1);
        bus_msg_unref(kept);

        /* Binary payload with NULs, explicit origin, empty reply means none, no data. */
        const char bin[] = {0, 1, 0, 2};
        CHECK_INT(bus_publish(b, "t.two", "", NULL, 0, bin, sizeof(bin), "peer"), 1);
        CHECK_INT(bus_publish(b, "t.three", NULL, NULL, 0, NULL, 0, NULL), 1);
        CHECK_INT(bus_dispatch(b, 1), 1);
        CHECK(kept->m.reply == NULL);
        CHECK_STR(kept->m.origin, "peer");
        CHECK_INT(kept->m.len, 4);
        CHECK(memcmp(kept->m.data, bin, 4) == 0);
        CHECK_INT(kept->seq, 2);
        bus_msg_unref(kept);
        CHECK_INT(bus_dispatch(b, 0), 1);
        CHECK(kept->m.data != NULL);
        CHECK_INT(kept->m.len, 0);
        CHECK_STR(kept->m.data, "");
        CHECK_INT(kept->m.n_headers, 0);
        bus_msg_unref(kept);
        bus_msg_unref(NULL);

        /* Bad arguments. */
        CHECK_INT(bus_publish(b, "t.*", NULL, NULL, 0, NULL, 0, NULL), -EINVAL);
        CHECK_INT(bus_publish(b, "", NULL, NULL, 0, NULL, 0, NULL), -EINVAL);
        CHECK_INT(bus_publish(b, "t..x", NULL, NULL, 0, NULL, 0, NULL), -EINVAL);
        CHECK_INT(bus_publish(b, "t.x", "bad reply", NULL, 0, NULL, 0, NULL), -EINVAL);
        CHECK_INT(bus_publish(b, "t.x", NULL, NULL, 1, NULL, 0, NULL), -EINVAL);
        CHECK_INT(bus_publish(b, "t.x", NULL, NULL, 0, NULL, 3, NULL), -EINVAL);
        org_header nokey[] = {{NULL, "v"}};
        CHECK_INT(bus_publish(b, "t.x", NULL, nokey, 1, NULL, 0, NULL), -EINVAL);
        CHECK_INT(bus_subscribe(c, "a.>.b", NULL), -EINVAL);
        CHECK_INT(bus_publish(b, "nobody.listens", NULL, NULL, 0, NULL, 0, NULL), 0);

        bus_stats st;
        bus_get_stats(b, &st);
        CHECK_INT(st.published, 4);
        CHECK_INT(st.delivered, 3);
        CHECK_INT(st.n_clients, 1);
        CHECK_INT(st.n_subs, 1);

        bus_free(b);
        bus_free(NULL);
        CHECK(bus_new(NULL, "bad.name") == NULL);
}

static void test_order_and_round_robin(void) {
        bus *b = bus_new(NULL, "a");
        CHECK(b);
        bus_client *x = bus_client_new(b, "x", 0, on_record, "x");
        bus_client *y = bus_client_new(b, "y", 0, on_record, "y");
        CHECK(x && y);
        CHECK_INT(bus_subscribe(x, "o.*", NULL), 0);
        CHECK_INT(bus_subscribe(y, "o.>", NULL), 0);
        rec_reset();

        char s[32];
        for (int i = 0; i < 50; i++) {
                snprintf(s, sizeof(s), "o.%d", i);
                CHECK_INT(pub(b, s), 2);
        }
        CHECK_INT(pub(b, "o.deep.er"), 1); /* y only */
        CHECK_INT(bus_dispatch(b, 0), 101);
        CHECK_INT(R.n, 101);

        /* FIFO within a client; the two clients alternate while both have messages. */
        int nx = 0, ny = 0;
        for (size_t i = 0; i < 100; i++) {
                if (i > 0)
                        CHECK(R.who[i] != R.who[i - 1]);
                snprintf(s, sizeof(s), "o.%d", R.who[i] == 'x' ? nx++ : ny++);
                CHECK_STR(R.subjects[i], s);
                if (i >= 2)
                        CHECK(R.seq[i] > R.seq[i - 2]);
        }
        CHECK(R.who[100] == 'y');
        CHECK_STR(R.subjects[100], "o.deep.er");
        CHECK_INT(bus_dispatch(b, 0), 0);

        bus_client_stats cs;
        bus_client_get_stats(x, &cs);
        CHECK_INT(cs.delivered, 50);
        CHECK_INT(cs.queued, 0);
        CHECK_INT(cs.queue_max, 4096);
        CHECK_INT(cs.n_subs, 1);
        bus_free(b); /* frees x and y */
}

static bus *reentrant_bus;
static int depth, max_depth, n_inner;

static void on_reentrant(bus_client *c, const bus_msg *msg, void *userdata) {
        depth++;
        if (depth > max_depth)
                max_depth = depth;
        if (strcmp(msg->m.subject, "r.outer") == 0) {
                CHECK_INT(pub(reentrant_bus, "r.inner"), 1);
                /* Dispatching from a callback would nest: it must refuse. */
                CHECK_INT(bus_dispatch(reentrant_bus, 0), 0);
        } else
                n_inner++;
        depth--;
}

static void test_no_reentrant_delivery(void) {
        bus *b = reentrant_bus = bus_new(NULL, "a");
        CHECK(b);
        bus_client *c = bus_client_new(b, "c", 0, on_reentrant, NULL);
        CHECK_INT(bus_subscribe(c, "r.*", NULL), 0);

        CHECK_INT(pub(b, "r.outer"), 1);
        CHECK_INT(n_inner, 0); /* publish only queues */
        CHECK_INT(bus_dispatch(b, 0), 1);
        CHECK_INT(n_inner, 0); /* published during delivery: waits for the next dispatch */
        CHECK_INT(bus_dispatch(b, 0), 1);
        CHECK_INT(n_inner, 1);
        CHECK_INT(max_depth, 1);
        bus_free(b);
}

static void test_drops(void) {
        bus *b = bus_new(NULL, "a");
        CHECK(b);
        bus_client *small = bus_client_new(b, "small", 2, on_record, "s");
        bus_client *big = bus_client_new(b, "big", 0, on_record, "b");
        CHECK_INT(bus_subscribe(small, "d", NULL), 0);
        CHECK_INT(bus_subscribe(big, "d", NULL), 0);
        rec_reset();

        CHECK_INT(pub(b, "d"), 2);
        CHECK_INT(pub(b, "d"), 2);
        for (int i = 0; i < 5; i++)
                CHECK_INT(pub(b, "d"), 1); /* dropped for small only */

        bus_client_stats cs;
        bus_client_get_stats(small, &cs);
        CHECK_INT(cs.dropped, 5);
        CHECK_INT(cs.queued, 2);
        CHECK_INT(cs.queue_max, 2);
        bus_client_get_stats(big, &cs);
        CHECK_INT(cs.dropped, 0);
        CHECK_INT(cs.queued, 7);

        CHECK_INT(bus_dispatch(b, 0), 9);
        size_t ns = 0;
        for (size_t i = 0; i < R.n; i++)
                ns += R.who[i] == 's';
        CHECK_INT(ns, 2);
        /* The queue has room again. */
        CHECK_INT(pub(b, "d"), 2);
        CHECK_INT(bus_dispatch(b, 0), 2);

        bus_stats st;
        bus_get_stats(b, &st);
        CHECK_INT(st.dropped, 5);
        CHECK_INT(st.delivered, 11);
        CHECK_INT(st.published, 8);
        bus_free(b);
}

static void test_dedupe_and_subscriptions(void) {
        bus *b = bus_new(NULL, "a");
        CHECK(b);
        bus_client *c = bus_client_new(b, "c", 0, on_record, "c");
        bus_client *o = bus_client_new(b, "o", 0, on_record, "o");
        uint64_t s1, s2, s3, s4;
        CHECK_INT(bus_subscribe(c, "a.>", &s1), 0);
        CHECK_INT(bus_subscribe(c, "a.*", &s2), 0);
        CHECK_INT(bus_subscribe(c, "a.b", &s3), 0);
        CHECK_INT(bus_subscribe(o, "a.b", &s4), 0);
        CHECK(s1 != s2 && s2 != s3 && s3 != s4);
        rec_reset();

        CHECK_INT(pub(b, "a.b"), 2); /* c once, o once */
        CHECK_INT(pub(b, "a.b"), 2);
        CHECK_INT(pub(b, "a.c.d"), 1);
        CHECK_INT(bus_dispatch(b, 0), 5);

        char **p = bus_client_patterns(c);
        CHECK(p);
        CHECK_STR(p[0], "a.>");
        CHECK_STR(p[1], "a.*");
        CHECK_STR(p[2], "a.b");
        CHECK(p[3] == NULL);
        strv_free(p);

        CHECK_INT(bus_unsubscribe(c, s2), 0);
        CHECK_INT(bus_unsubscribe(c, s2), -ENOENT);
        CHECK_INT(bus_unsubscribe(c, s4), -ENOENT); /* o's, not c's */
        p = bus_client_patterns(c);
        CHECK_STR(p[0], "a.>");
        CHECK_STR(p[1], "a.b");
        CHECK(p[2] == NULL);
        strv_free(p);

        bus_stats st;
        bus_get_stats(b, &st);
        CHECK_INT(st.n_subs, 3);
        CHECK_INT(st.n_clients, 2);

        bus_client_unsubscribe_all(c);
        CHECK_INT(pub(b, "a.b"), 1);
        bus_client_stats cs;
        bus_client_get_stats(c, &cs);
        CHECK_INT(cs.n_subs, 0);
        p = bus_client_patterns(c);
        CHECK(p && p[0] == NULL);
        strv_free(p);

        /* Freeing drops the queue and the subscriptions. */
        CHECK_INT(bus_subscribe(c, "z", NULL), 0);
        CHECK_INT(pub(b, "z"), 1);
        bus_client_free(c);
        bus_client_free(NULL);
        CHECK_INT(pub(b, "z"), 0);
        bus_get_stats(b, &st);
        CHECK_INT(st.n_clients, 1);
        CHECK_INT(st.n_subs, 1);
        rec_reset();
        CHECK_INT(bus_dispatch(b, 0), 1); /* only o's a.b */
        CHECK(R.who[0] == 'o');
        bus_free(b);
}

static bus_client *victim;
static int self_calls, other_calls;

static void on_free_self(bus_client *c, const bus_msg *msg, void *userdata) {
        self_calls++;
        bus_client_free(victim); /* another client, queued messages included */
        victim = NULL;
        bus_client_free(c);      /* and itself, while its delivery is running */
        bus_client_free(c);      /* twice must be harmless */
}

static void on_other(bus_client *c, const bus_msg *msg, void *userdata) { other_calls++; }

static void test_free_during_delivery(void) {
        bus *b = bus_new(NULL, "a");
        CHECK(b);
        bus_client *c = bus_client_new(b, "self", 0, on_free_self, NULL);
        victim = bus_client_new(b, "victim", 0, on_other, NULL);
        bus_client *third = bus_client_new(b, "third", 0, on_other, NULL);
        CHECK_INT(bus_subscribe(c, "f", NULL), 0);
        CHECK_INT(bus_subscribe(victim, "f", NULL), 0);
        CHECK_INT(bus_subscribe(third, "f", NULL), 0);

        for (int i = 0; i < 3; i++)
                CHECK_INT(pub(b, "f"), 3);
        /* Clients are served in the order they first got a message: self first. */
        size_t n = bus_dispatch(b, 0);
        CHECK_INT(self_calls, 1);
        CHECK_INT(other_calls, 3); /* third's three; victim's were dropped with it */
        CHECK_INT(n, 4);
        CHECK_INT(pub(b, "f"), 1);
        bus_stats st;
        bus_get_stats(b, &st);
        CHECK_INT(st.n_clients, 1);
        bus_free(b); /* with one message still queued */
}

/* ---- with a real loop ---- */

typedef struct reqstate {
        int calls;
        int error;
        char payload[64];
        char origin[32];
} reqstate;

static void on_reply(int error, const bus_msg *reply, void *userdata) {
        reqstate *s = userdata;
        s->calls++;
        s->error = error;
        if (reply) {
                snprintf(s->payload, sizeof(s->payload), "%s", (const char *)reply->m.data);
                snprintf(s->origin, sizeof(s->origin), "%s", reply->m.origin);
        } else
                CHECK(error < 0);
}

static bus *loop_bus;

static void on_echo(bus_client *c, const bus_msg *msg, void *userdata) {
        char buf[64];
        int *count = userdata;
        (*count)++;
        CHECK(msg->m.reply != NULL);
        int n = snprintf(buf, sizeof(buf), "echo:%s", (const char *)msg->m.data);
        /* Answer twice: only the first reply reaches the requester. */
        CHECK_INT(bus_publish(loop_bus, msg->m.reply, NULL, NULL, 0, buf, (size_t)n, NULL), 1);
        CHECK_INT(bus_publish(loop_bus, msg->m.reply, NULL, NULL, 0, "late", 4, NULL), 1);
}

/* Runs the loop until *done or a bounded number of iterations; each iteration waits
 * at most one second for something to happen (timers wake it, nothing sleeps). */
#define USEC_PER_SEC_TEST 1000000ULL
static void run_until(sd_event *e, const int *done, int max_iter) {
        for (int i = 0; i < max_iter && !*done; i++)
                CHECK(sd_event_run(e, USEC_PER_SEC_TEST) >= 0);
}

static void on_count(bus_client *cl, const bus_msg *msg, void *ud) { (*(int *)ud)++; }

static void test_loop_dispatch(void) {
        sd_event *e = NULL;
        CHECK(sd_event_new(&e) >= 0);
        bus *b = bus_new(e, "looper");
        CHECK(b);
        int count = 0;
        bus_client *c = bus_client_new(b, "c", 0, NULL, NULL);
        bus_client_set_deliver(c, on_count, &count);
        CHECK_INT(bus_subscribe(c, "l.>", NULL), 0);

        /* More than one batch: the deferred source re-arms until the queue is empty. */
        for (int i = 0; i < 1000; i++)
                CHECK_INT(pub(b, "l.x"), 1);
        CHECK_INT(count, 0);
        CHECK(sd_event_run(e, 0) > 0);
        CHECK(count > 0 && count < 1000); /* one batch per iteration */
        for (int i = 0; i < 10 && count < 1000; i++)
                CHECK(sd_event_run(e, 0) >= 0);
        CHECK_INT(count, 1000);
        /* Nothing pending: the source is off, the loop has nothing to do. */
        CHECK_INT(sd_event_run(e, 0), 0);
        bus_free(b);
        sd_event_unref(e);
}

static void test_request_reply(void) {
        sd_event *e = NULL;
        CHECK(sd_event_new(&e) >= 0);
        bus *b = loop_bus = bus_new(e, "req");
        CHECK(b);

        int served = 0;
        bus_client *svc = bus_client_new(b, "svc", 0, on_echo, &served);
        CHECK_INT(bus_subscribe(svc, "svc.echo", NULL), 0);

        /* A reply arrives. */
        reqstate s = {0};
        uint64_t id = 0;
        CHECK_INT(bus_request(b, "svc.echo", NULL, 0, "hi", 2, 5000, on_reply, &s, &id), 0);
        CHECK(id > 0);
        CHECK_INT(s.calls, 0);
        run_until(e, &s.calls, 20);
        CHECK_INT(s.calls, 1);
        CHECK_INT(s.error, 0);
        CHECK_STR(s.payload, "echo:hi");
        CHECK_STR(s.origin, "req");
        CHECK_INT(served, 1);
        /* The late second reply is ignored, and the time-out never fires. */
        for (int i = 0; i < 3; i++)
                CHECK(sd_event_run(e, 0) >= 0);
        CHECK_INT(s.calls, 1);

        /* Nobody listens: -ENOENT, on the loop, never from inside bus_request. */
        reqstate n = {0};
        CHECK_INT(bus_request(b, "svc.nobody", NULL, 0, NULL, 0, 5000, on_reply, &n, NULL), 0);
        CHECK_INT(n.calls, 0);
        run_until(e, &n.calls, 5);
        CHECK_INT(n.calls, 1);
        CHECK_INT(n.error, -ENOENT);

        /* A subscriber that never answers: -ETIMEDOUT after the short time-out. */
        bus_client *mute = bus_client_new(b, "mute", 0, NULL, NULL);
        CHECK_INT(bus_subscribe(mute, "svc.mute", NULL), 0);
        reqstate t = {0};
        CHECK_INT(bus_request(b, "svc.mute", NULL, 0, "x", 1, 20, on_reply, &t, NULL), 0);
        run_until(e, &t.calls, 20);
        CHECK_INT(t.calls, 1);
        CHECK_INT(t.error, -ETIMEDOUT);

        /* Cancelled requests never call back, answered or not. */
        reqstate c1 = {0}, c2 = {0}, c3 = {0};
        uint64_t id1, id2, id3;
        CHECK_INT(bus_request(b, "svc.echo", NULL, 0, "a", 1, 5000, on_reply, &c1, &id1), 0);
        CHECK_INT(bus_request(b, "svc.nobody", NULL, 0, "b", 1, 5000, on_reply, &c2, &id2), 0);
        CHECK_INT(bus_request(b, "svc.mute", NULL, 0, "c", 1, 10, on_reply, &c3, &id3), 0);
        bus_request_cancel(b, id1);
        bus_request_cancel(b, id2);
        bus_request_cancel(b, id3);
        bus_request_cancel(b, 999999); /* unknown: harmless */
        int never = 0;
        uint64_t t0 = 0, t1 = 0;
        CHECK(sd_event_now(e, CLOCK_MONOTONIC, &t0) >= 0);
        /* Run past the cancelled 10 ms time-out: a short real timer bounds the wait. */
        reqstate w = {0};
        CHECK_INT(bus_request(b, "svc.mute", NULL, 0, "w", 1, 30, on_reply, &w, NULL), 0);
        run_until(e, &w.calls, 20);
        CHECK(sd_event_now(e, CLOCK_MONOTONIC, &t1) >= 0);
        CHECK(t1 - t0 >= 20000);
        run_until(e, &never, 3);
        CHECK_INT(w.error, -ETIMEDOUT);
        CHECK_INT(c1.calls + c2.calls + c3.calls, 0);
        CHECK_INT(served, 2); /* the cancelled echo request was still delivered */

        /* Many requests in flight, answered in one go (exercises the pending table). */
        static reqstate many[300];
        memset(many, 0, sizeof(many));
        for (int i = 0; i < 300; i++)
                CHECK_INT(bus_request(b, "svc.echo", NULL, 0, "m", 1, 5000, on_reply, &many[i], NULL), 0);
        int all = 0;
        for (int it = 0; it < 50 && !all; it++) {
                CHECK(sd_event_run(e, USEC_PER_SEC_TEST) >= 0);
                all = 1;
                for (int i = 0; i < 300; i++)
                        all &= many[i].calls == 1;
        }
        CHECK(all);
        for (int i = 0; i < 300; i++) {
                CHECK_INT(many[i].error, 0);
                CHECK_STR(many[i].payload, "echo:m");
        }

        /* Requests still pending when the bus goes away are forgotten quietly. */
        reqstate left = {0};
        CHECK_INT(bus_request(b, "svc.mute", NULL, 0, NULL, 0, 5000, on_reply, &left, NULL), 0);
        bus_stats st;
        bus_get_stats(b, &st);
        CHECK_INT(st.n_clients, 2); /* the internal inbox client is not counted */
        CHECK_INT(st.n_subs, 2);
        bus_free(b);
        CHECK_INT(left.calls, 0);

        /* Without a loop there is nothing to wait with. */
        bus *nl = bus_new(NULL, "noloop");
        CHECK_INT(bus_request(nl, "x", NULL, 0, NULL, 0, 10, on_reply, &left, NULL), -EOPNOTSUPP);
        bus_free(nl);
        sd_event_unref(e);
}

static char seen_reply[192];
static void on_capture(bus_client *c, const bus_msg *msg, void *userdata) {
        (*(int *)userdata)++;
        snprintf(seen_reply, sizeof(seen_reply), "%s", msg->m.reply);
}

/* A reply subject cannot be guessed: whoever did not see the request (sequential ids,
 * the prefix without the token, a wrong token) answers nothing, and is counted. */
static void test_forged_replies(void) {
        sd_event *e = NULL;
        CHECK(sd_event_new(&e) >= 0);
        bus *b = bus_new(e, "victim");
        CHECK(b);
        int served = 0;
        bus_client *svc = bus_client_new(b, "svc", 0, on_capture, &served);
        CHECK_INT(bus_subscribe(svc, "svc.slow", NULL), 0);
        reqstate s = {0};
        CHECK_INT(bus_request(b, "svc.slow", NULL, 0, "q", 1, 5000, on_reply, &s, NULL), 0);
        run_until(e, &served, 20);
        CHECK_INT(served, 1);
        const char *prefix = bus_inbox_prefix(b);
        CHECK(strncmp(seen_reply, prefix, strlen(prefix)) == 0);
        CHECK(strncmp(prefix, "_INBOX.victim.", 14) == 0 && strlen(prefix) == 14 + 12 + 1);
        /* a second bus has another prefix */
        bus *other = bus_new(NULL, "victim");
        CHECK(strcmp(bus_inbox_prefix(other), prefix) != 0);
        bus_free(other);

        char forged[256];
        const char *guesses[] = {"1", "0", "2", "1.AAAAAAAAAAAAAAAAAAAAAA", "x.y"};
        for (size_t i = 0; i < sizeof(guesses) / sizeof(*guesses); i++) {
                snprintf(forged, sizeof(forged), "%s%s", prefix, guesses[i]);
                CHECK_INT(bus_publish(b, forged, NULL, NULL, 0, "forged", 6, "evil"), 1);
        }
        /* the right id with the last token character changed */
        snprintf(forged, sizeof(forged), "%s", seen_reply);
        size_t n = strlen(forged);
        forged[n - 1] = forged[n - 1] == 'a' ? 'b' : 'a';
        CHECK_INT(bus_publish(b, forged, NULL, NULL, 0, "forged", 6, "evil"), 1);
        /* the old scheme, outside our prefix: nobody even listens */
        CHECK_INT(bus_publish(b, "_INBOX.victim.1", NULL, NULL, 0, "forged", 6, "evil"), 0);
        for (int i = 0; i < 5; i++)
                CHECK(sd_event_run(e, 0) >= 0);
        CHECK_INT(s.calls, 0);
        bus_stats st;
        bus_get_stats(b, &st);
        CHECK_INT(st.replies_unknown, 6);

        /* the real reply still gets through, then a replay of it is unknown */
        CHECK_INT(bus_publish(b, seen_reply, NULL, NULL, 0, "real", 4, NULL), 1);
        run_until(e, &s.calls, 20);
        CHECK_INT(s.calls, 1);
        CHECK_STR(s.payload, "real");
        CHECK_INT(bus_publish(b, seen_reply, NULL, NULL, 0, "again", 5, NULL), 1);
        for (int i = 0; i < 3; i++)
                CHECK(sd_event_run(e, 0) >= 0);
        CHECK_INT(s.calls, 1);
        bus_get_stats(b, &st);
        CHECK_INT(st.replies_unknown, 7);
        bus_free(b);
        sd_event_unref(e);
}

int main(void) {
        RUN(test_message_round_trip);
        RUN(test_order_and_round_robin);
        RUN(test_no_reentrant_delivery);
        RUN(test_drops);
        RUN(test_dedupe_and_subscriptions);
        RUN(test_free_during_delivery);
        RUN(test_loop_dispatch);
        RUN(test_request_reply);
        RUN(test_forged_replies);
        return 0;
}
