/* peers.c — announcements on organism.agent.<name> and the table of the agents heard
 * (peers.h). Everything runs on the loop: the bridge imports the announcements onto
 * the local bus like any other message, with their origin agent. */
#include "peers.h"

#include "bus.h"
#include "log.h"
#include "org-build-config.h"
#include "util.h"

#define SUBJECT_PREFIX "organism.agent."

typedef struct peer {
        char *name, *version;
        uint64_t seen_mono_us, seen_real_us;
} peer;

struct peers {
        agent *agent;
        bus_client *client;
        sd_event_source *timer;
        peer *list;
        size_t n;
        uint64_t ignored; /* malformed, or beyond PEERS_MAX */
};

static void announce(peers *p, bool hello) {
        char ts[64], *subject = NULL;
        format_rfc3339(now_realtime_us(), ts, sizeof ts);
        const char *self = p->agent->config->name;
        json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "agent", self, "version", ORG_VERSION, "ts", ts, "hello", hello);
        char *data = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (data && asprintf(&subject, SUBJECT_PREFIX "%s", self) >= 0)
                (void)bus_publish(p->agent->bus, subject, NULL, NULL, 0, data, strlen(data), NULL);
        free(subject);
        free(data);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        peers *p = userdata;
        uint64_t now = now_monotonic_us();
        /* forget the agents gone for long: the table stays bounded by the living */
        size_t k = 0;
        for (size_t i = 0; i < p->n; i++) {
                if (now - p->list[i].seen_mono_us > (uint64_t)PEERS_FORGET_S * 1000000) {
                        free(p->list[i].name);
                        free(p->list[i].version);
                } else
                        p->list[k++] = p->list[i];
        }
        p->n = k;
        announce(p, false);
        sd_event_source_set_time(s, usec + (uint64_t)PEERS_ANNOUNCE_S * 1000000);
        sd_event_source_set_enabled(s, SD_EVENT_ON);
        return 0;
}

static peer *find(peers *p, const char *name) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->list[i].name, name))
                        return &p->list[i];
        return NULL;
}

static void on_announcement(bus_client *c, const bus_msg *m, void *userdata) {
        peers *p = userdata;
        const char *origin = m->m.origin;
        const char *name = m->m.subject + strlen(SUBJECT_PREFIX);
        /* the subject names the agent, and only that agent's bridge may say so */
        if (!origin || streq(origin, p->agent->config->name) || !streq(origin, name))
                return;
        if (!name_is_valid(name)) {
                p->ignored++;
                return;
        }
        json_error_t e;
        json_t *o = json_loadb(m->m.data, m->m.len, 0, &e);
        const char *version = json_string_value(json_object_get(o, "version"));
        bool hello = json_is_true(json_object_get(o, "hello"));
        peer *q = find(p, name);
        bool known = q != NULL;
        if (!q && p->n < PEERS_MAX) {
                peer *list = realloc(p->list, (p->n + 1) * sizeof(peer));
                if (list) {
                        p->list = list;
                        q = &list[p->n];
                        *q = (peer){.name = strdup(name)};
                        if (q->name)
                                p->n++;
                        else
                                q = NULL;
                }
        }
        if (!q)
                p->ignored++;
        else {
                q->seen_mono_us = now_monotonic_us();
                q->seen_real_us = now_realtime_us();
                if (version && strlen(version) < 64 && !streq_ptr(q->version, version)) {
                        free(q->version);
                        q->version = strdup(version);
                }
                if (!known)
                        log_info("Agent %s seen on the NATS bus.", name);
        }
        json_decref(o);
        /* a newcomer learns of us now rather than at our next announcement (a hello
         * comes once per start of an agent, a new name once: no storm) */
        if (hello || !known)
                announce(p, false);
}

int peers_new(agent *a, peers **ret) {
        peers *p = new0(peers, 1);
        if (!p)
                return -ENOMEM;
        p->agent = a;
        int r = -ENOMEM;
        p->client = bus_client_new(a->bus, "peers", 1024, on_announcement, p);
        if (!p->client)
                goto fail;
        r = bus_subscribe(p->client, SUBJECT_PREFIX "*", NULL);
        if (r < 0)
                goto fail;
        r = sd_event_add_time_relative(a->event, &p->timer, CLOCK_MONOTONIC, (uint64_t)PEERS_ANNOUNCE_S * 1000000,
                                       1000000, on_timer, p);
        if (r < 0)
                goto fail;
        announce(p, true);
        *ret = p;
        return 0;
fail:
        peers_free(p);
        return r;
}

void peers_free(peers *p) {
        if (!p)
                return;
        sd_event_source_disable_unref(p->timer);
        bus_client_free(p->client);
        for (size_t i = 0; i < p->n; i++) {
                free(p->list[i].name);
                free(p->list[i].version);
        }
        free(p->list);
        free(p);
}

static int by_name(const void *x, const void *y) {
        return strcmp(((const peer *)x)->name, ((const peer *)y)->name);
}

json_t *peers_to_json(peers *p) {
        json_t *arr = json_array();
        if (!p || !arr)
                return arr;
        qsort(p->list, p->n, sizeof(peer), by_name);
        uint64_t now = now_monotonic_us();
        for (size_t i = 0; i < p->n; i++) {
                char ts[64];
                format_rfc3339(p->list[i].seen_real_us, ts, sizeof ts);
                uint64_t age = (now - p->list[i].seen_mono_us) / 1000;
                json_array_append_new(arr, json_pack("{s:s, s:s?, s:s, s:I, s:b}", "agent", p->list[i].name, "version",
                                                     p->list[i].version, "last_seen", ts, "age_ms", (json_int_t)age,
                                                     "stale", age > (uint64_t)PEERS_STALE_S * 1000));
        }
        return arr;
}
