/* nats-tool.c — a plain libnats client for the bridge benchmark: `pub` publishes as
 * fast as nats.c can (the raw rate the bridge is compared with), `count` counts what
 * arrives on a subject and says when the first and the last came. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long long received, want;
static double first, last;

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
        double t = now_s();
        pthread_mutex_lock(&lock);
        if (received++ == 0)
                first = t;
        last = t;
        if (received >= want)
                pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
        natsMsg_Destroy(msg);
}

int main(int argc, char **argv) {
        if (argc < 5) {
                fprintf(stderr, "usage: nats-tool pub URL SUBJECT N [SIZE] | count URL SUBJECT N [TIMEOUT_S]\n");
                return 2;
        }
        const char *mode = argv[1], *url = argv[2], *subject = argv[3];
        long long n = strtoll(argv[4], NULL, 10);
        natsConnection *nc = NULL;
        natsOptions *o = NULL;
        if (natsOptions_Create(&o) != NATS_OK || natsOptions_SetURL(o, url) != NATS_OK ||
            natsOptions_SetMaxPendingMsgs(o, 10000000) != NATS_OK || natsConnection_Connect(&nc, o) != NATS_OK) {
                fprintf(stderr, "nats-tool: cannot connect to %s: %s\n", url, nats_GetLastError(NULL));
                return 1;
        }
        int rc = 0;
        if (strcmp(mode, "pub") == 0) {
                size_t size = argc > 5 ? (size_t)strtoull(argv[5], NULL, 10) : 64;
                char *payload = calloc(1, size + 1);
                memset(payload, 'x', size);
                double t0 = now_s();
                for (long long i = 0; i < n; i++)
                        if (natsConnection_Publish(nc, subject, payload, (int)size) != NATS_OK) {
                                rc = 1;
                                break;
                        }
                natsConnection_Flush(nc);
                double dt = now_s() - t0;
                printf("{\"n\": %lld, \"seconds\": %.6f}\n", n, dt);
                free(payload);
        } else {
                double timeout = argc > 5 ? strtod(argv[5], NULL) : 60;
                natsSubscription *sub = NULL;
                want = n;
                if (natsConnection_Subscribe(&sub, nc, subject, on_msg, NULL) != NATS_OK ||
                    natsSubscription_SetPendingLimits(sub, -1, -1) != NATS_OK || natsConnection_Flush(nc) != NATS_OK)
                        return 1;
                double ready = now_s();
                printf("ready\n");
                fflush(stdout);
                pthread_mutex_lock(&lock);
                while (received < want && now_s() - ready < timeout) {
                        struct timespec ts;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        ts.tv_sec += 1;
                        pthread_cond_timedwait(&cond, &lock, &ts);
                }
                printf("{\"received\": %lld, \"first_to_last_s\": %.6f}\n", received, received ? last - first : 0.0);
                pthread_mutex_unlock(&lock);
                natsSubscription_Destroy(sub);
        }
        natsConnection_Destroy(nc);
        natsOptions_Destroy(o);
        nats_Close();
        return rc;
}
