/* bench-bus.c — throughput of the internal bus with small (64-byte) messages: publish
 * plus dispatch through one subscriber, ten subscribers of one subject, a thousand
 * wildcard subscriptions, the same one-subscriber path driven by a real sd-event loop,
 * and the trie's match cost alone. Prints figures, asserts nothing about timing. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "sublist.h"
#include "util.h"

static uint64_t delivered;
static char payload[64];

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_msg(bus_client *c, const bus_msg *msg, void *userdata) {
        /* Touch the payload the way a consumer would. */
        delivered += ((const char *)msg->m.data)[0] != 0;
}

static void die(const char *what) {
        fprintf(stderr, "bench-bus: %s failed\n", what);
        exit(1);
}

/* Publishes n messages, dispatching every `batch`, over `subjects` round-robin. */
static double run(bus *b, const char *const *subjects, size_t n_subjects, size_t n, size_t batch) {
        double t0 = now_s();
        for (size_t i = 0; i < n; i++) {
                if (bus_publish(b, subjects[i % n_subjects], NULL, NULL, 0, payload, sizeof(payload), NULL) < 0)
                        die("bus_publish");
                if ((i + 1) % batch == 0)
                        bus_dispatch(b, 0);
        }
        bus_dispatch(b, 0);
        return now_s() - t0;
}

static void bench_one_subscriber(void) {
        bus *b = bus_new(NULL, "bench");
        bus_client *c = bus_client_new(b, "one", 0, on_msg, NULL);
        if (!b || !c || bus_subscribe(c, "bench.one", NULL) < 0)
                die("setup");
        const char *subj[] = {"bench.one"};
        size_t n = 4000000;
        run(b, subj, 1, 100000, 256); /* warm-up: rings and allocator at steady size */
        delivered = 0;
        double t = run(b, subj, 1, n, 256);
        if (delivered != n)
                die("delivery count");
        printf("bus 1 subscriber: %.2f M msg/s (%.0f ns/msg publish+dispatch)\n", n / t / 1e6, t * 1e9 / n);
        bus_free(b);
}

static void bench_ten_subscribers(void) {
        bus *b = bus_new(NULL, "bench");
        if (!b)
                die("bus_new");
        for (int i = 0; i < 10; i++) {
                bus_client *c = bus_client_new(b, "ten", 0, on_msg, NULL);
                if (!c || bus_subscribe(c, "bench.ten", NULL) < 0)
                        die("setup");
        }
        const char *subj[] = {"bench.ten"};
        size_t n = 1000000;
        run(b, subj, 1, 50000, 256);
        delivered = 0;
        double t = run(b, subj, 1, n, 256);
        if (delivered != n * 10)
                die("delivery count");
        printf("bus 10 subscribers, same subject: %.2f M msg/s published, %.2f M deliveries/s\n", n / t / 1e6,
               delivered / t / 1e6);
        bus_free(b);
}

static void bench_wildcards(void) {
        bus *b = bus_new(NULL, "bench");
        if (!b)
                die("bus_new");
        char buf[64];
        for (int i = 0; i < 1000; i++) {
                bus_client *c = bus_client_new(b, "wc", 0, on_msg, NULL);
                snprintf(buf, sizeof(buf), "bench.%d.*", i);
                if (!c || bus_subscribe(c, buf, NULL) < 0)
                        die("setup");
        }
        bus_client *all = bus_client_new(b, "all", 0, on_msg, NULL);
        if (!all || bus_subscribe(all, "bench.>", NULL) < 0)
                die("setup");

        /* Subjects spread over the thousand patterns, each matching two clients. */
        static char store[1024][32];
        const char *subj[1024];
        for (int i = 0; i < 1024; i++) {
                snprintf(store[i], sizeof(store[i]), "bench.%d.x", (i * 7) % 1000);
                subj[i] = store[i];
        }
        size_t n = 2000000;
        run(b, subj, 1024, 50000, 256);
        delivered = 0;
        double t = run(b, subj, 1024, n, 256);
        if (delivered != n * 2)
                die("delivery count");
        printf("bus 1000 wildcard subscriptions + bench.>: %.2f M msg/s published, %.2f M deliveries/s\n",
               n / t / 1e6, delivered / t / 1e6);
        bus_free(b);
}

static void bench_loop(void) {
        sd_event *e = NULL;
        if (sd_event_new(&e) < 0)
                die("sd_event_new");
        bus *b = bus_new(e, "bench");
        bus_client *c = bus_client_new(b, "one", 0, on_msg, NULL);
        if (!b || !c || bus_subscribe(c, "bench.loop", NULL) < 0)
                die("setup");
        size_t n = 2000000;
        delivered = 0;
        double t0 = now_s();
        for (size_t i = 0; i < n; i++) {
                if (bus_publish(b, "bench.loop", NULL, NULL, 0, payload, sizeof(payload), NULL) < 0)
                        die("bus_publish");
                /* One loop iteration per batch the deferred source delivers. */
                if ((i + 1) % 256 == 0 && sd_event_run(e, 0) < 0)
                        die("sd_event_run");
        }
        while (delivered < n)
                if (sd_event_run(e, 0) < 0)
                        die("sd_event_run");
        double t = now_s() - t0;
        printf("bus 1 subscriber via sd-event loop: %.2f M msg/s\n", n / t / 1e6);
        bus_free(b);
        sd_event_unref(e);
}

static void count_match(void *item, void *userdata) { (*(size_t *)userdata)++; }

static void bench_trie(void) {
        sublist *s = sublist_new();
        if (!s)
                die("sublist_new");
        char buf[64];
        for (int i = 0; i < 1000; i++) {
                snprintf(buf, sizeof(buf), "bench.%d.*", i);
                if (sublist_insert(s, buf, s) < 0)
                        die("sublist_insert");
        }
        if (sublist_insert(s, "bench.>", s) < 0 || sublist_insert(s, "metrics.cpu.load", s) < 0)
                die("sublist_insert");

        static char store[1024][32];
        for (int i = 0; i < 1024; i++)
                snprintf(store[i], sizeof(store[i]), "bench.%d.x", (i * 7) % 1000);
        size_t n = 10000000, hits = 0;
        double t0 = now_s();
        for (size_t i = 0; i < n; i++)
                sublist_match(s, store[i & 1023], count_match, &hits);
        double t = now_s() - t0;
        if (hits != n * 2)
                die("match count");
        printf("trie match (1002 patterns, 3-token subject, 2 hits): %.1f ns/match\n", t * 1e9 / n);

        t0 = now_s();
        hits = 0;
        for (size_t i = 0; i < n; i++)
                sublist_match(s, "metrics.cpu.load", count_match, &hits);
        t = now_s() - t0;
        printf("trie match (literal subject, 1 hit): %.1f ns/match\n", t * 1e9 / n);
        sublist_free(s);
}

int main(void) {
        memset(payload, 'p', sizeof(payload));
        bench_one_subscriber();
        bench_ten_subscribers();
        bench_wildcards();
        bench_loop();
        bench_trie();
        return 0;
}
