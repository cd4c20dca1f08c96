/* bridge.c — export/import between the internal bus and NATS through libnats, with
 * origin tagging (no echo), de-duplication of overlapping import patterns, buffering
 * while disconnected (libnats' reconnect buffer), counters for `agentctl status`, and
 * the thread hand-off: libnats threads queue, the loop publishes. */
#include <sys/eventfd.h>
#include <sys/random.h>

#include <nats/nats.h>

#include "bridge.h"
#include "bridge_internal.h"
#include "bridge_module.h"
#include "bus.h"
#include "log.h"
#include "org-build-config.h"
#include "subject.h"
#include "util.h"

const char *bridge_nats_error(natsStatus s) {
        const char *t = nats_GetLastError(NULL);
        return t && *t ? t : natsStatus_GetText(s);
}

#define nats_error_text bridge_nats_error

typedef struct import_msg {
        post_item base;
        char *subject, *reply, *origin;
        org_header *headers;   /* keys and values point into `strings` */
        size_t n_headers;
        char *strings;
        void *data;
        size_t len;
} import_msg;

bool bridge_addressed_to(const char *subject, const char *agent_name) {
        const char *rest;
        if (startswith(subject, "organism.ctl."))
                rest = subject + strlen("organism.ctl.");
        else if (startswith(subject, "_INBOX."))
                rest = subject + strlen("_INBOX.");
        else
                return false;
        size_t n = strlen(agent_name);
        return strncmp(rest, agent_name, n) == 0 && (rest[n] == '.' || rest[n] == '\0');
}

static bool is_routed(const char *subject) {
        return startswith(subject, "organism.ctl.") || startswith(subject, "_INBOX.");
}

/* An agent's announcement (peers.h): housekeeping, left out of the message counters. */
static bool is_announcement(const char *subject) {
        return startswith(subject, "organism.agent.");
}

/* libnats' constructor of a message from headers already encoded (the one it uses for
 * what it receives): exported by libnats 3.x, not declared in nats.h. Weak, and used
 * only with a libnats 3 (bridge_new checks; else the public calls below): one
 * allocation per export instead of natsMsg_Create's plus a header hash
 * (natsMsgHeader_Set). */
extern natsStatus natsMsg_create(natsMsg **newMsg, const char *subject, int subjLen, const char *reply, int replyLen,
                                 const char *buf, int bufLen, int hdrLen) __attribute__((weak));
/* And its destructor proper: natsMsg_Destroy hands each message to libnats' collector
 * thread and wakes it, per message a futex round that cost more than all the rest of
 * the export. A message we built and published is ours alone: freed here at once. */
extern void natsMsg_free(void *object) __attribute__((weak));

static bool header_text_ok(const char *s, bool key) {
        for (; *s; s++)
                if (*s == '\r' || *s == '\n' || (key && (*s == ':' || *s == ' ')))
                        return false;
        return true;
}

#define HDR_LINE "NATS/1.0\r\n"

/* "NATS/1.0\r\nKey: Value\r\n...Organism-Origin: self\r\n\r\n" then the payload, in
 * b->scratch; a header that would break the encoding (CR, LF; ':' or space in a key)
 * is refused, as libnats' hash would have sent it verbatim. */
static natsStatus export_encode(bridge *b, const bus_msg *m, natsMsg **ret) {
        size_t hl = strlen(HDR_LINE) + strlen(BRIDGE_ORIGIN_HEADER) + 2 + strlen(b->self) + 4;
        for (size_t i = 0; i < m->m.n_headers; i++) {
                const org_header *h = &m->m.headers[i];
                if (streq(h->key, BRIDGE_ORIGIN_HEADER))
                        continue;
                if (!*h->key || !header_text_ok(h->key, true) || !header_text_ok(h->value, false))
                        return NATS_INVALID_ARG;
                hl += strlen(h->key) + 2 + strlen(h->value) + 2;
        }
        size_t total = hl + m->m.len;
        if (total > INT32_MAX)
                return NATS_INVALID_ARG;
        if (total > b->scratch_size) {
                size_t size = MAX(total, MAX(b->scratch_size * 2, (size_t)4096));
                char *p = realloc(b->scratch, size);
                if (!p)
                        return NATS_NO_MEMORY;
                b->scratch = p;
                b->scratch_size = size;
        }
        char *p = b->scratch;
#define PUT(str, n) (memcpy(p, (str), (n)), p += (n))
        PUT(HDR_LINE, strlen(HDR_LINE));
        for (size_t i = 0; i < m->m.n_headers; i++) {
                const org_header *h = &m->m.headers[i];
                if (streq(h->key, BRIDGE_ORIGIN_HEADER))
                        continue;
                PUT(h->key, strlen(h->key));
                PUT(": ", 2);
                PUT(h->value, strlen(h->value));
                PUT("\r\n", 2);
        }
        PUT(BRIDGE_ORIGIN_HEADER ": ", strlen(BRIDGE_ORIGIN_HEADER) + 2);
        PUT(b->self, strlen(b->self));
        PUT("\r\n\r\n", 4);
#undef PUT
        if (m->m.len)
                memcpy(p, m->m.data, m->m.len);
        return natsMsg_create(ret, m->m.subject, (int)strlen(m->m.subject), m->m.reply,
                              m->m.reply ? (int)strlen(m->m.reply) : 0, b->scratch, (int)total, (int)hl);
}

#define REPLY_SLOTS   4096 /* a power of two */
#define REPLY_WINDOW  16
#define REPLY_KEEP_US (3600ull * 1000000) /* after that, a slot may be reused */

static uint64_t monotonic_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* FNV-1a from a random basis: an outsider cannot aim collisions at it. Never 0 (0 is
 * a free slot). */
static uint64_t reply_hash(const bridge *b, const char *subject) {
        uint64_t h = 14695981039346656037ull ^ b->replies_seed;
        for (const unsigned char *p = (const unsigned char *)subject; *p; p++)
                h = (h ^ *p) * 1099511628211ull;
        return h ? h : 1;
}

/* On the loop, before the request goes out. */
static void reply_expect(bridge *b, const char *reply) {
        if (!b->replies)
                return;
        uint64_t h = reply_hash(b, reply), now = monotonic_us();
        pthread_mutex_lock(&b->replies_lock);
        size_t i = (size_t)h & (REPLY_SLOTS - 1), k;
        for (k = 0; k < REPLY_WINDOW; k++) {
                reply_slot *sl = &b->replies[(i + k) & (REPLY_SLOTS - 1)];
                if (sl->hash == 0 || sl->expires_us < now) {
                        *sl = (reply_slot){h, now + REPLY_KEEP_US};
                        break;
                }
        }
        if (k == REPLY_WINDOW)
                b->replies_open_until_us = now + REPLY_KEEP_US; /* its reply must pass */
        pthread_mutex_unlock(&b->replies_lock);
}

/* libnats thread: is this a reply we wait for? The first one takes the slot. */
static bool reply_take(bridge *b, const char *subject) {
        if (!b->replies)
                return true;
        uint64_t h = reply_hash(b, subject);
        bool found = false;
        pthread_mutex_lock(&b->replies_lock);
        size_t i = (size_t)h & (REPLY_SLOTS - 1);
        for (size_t k = 0; k < REPLY_WINDOW && !found; k++) {
                reply_slot *sl = &b->replies[(i + k) & (REPLY_SLOTS - 1)];
                if (sl->hash == h) {
                        sl->hash = 0;
                        found = true;
                }
        }
        found = found || monotonic_us() < b->replies_open_until_us;
        pthread_mutex_unlock(&b->replies_lock);
        return found;
}

/* On the loop: a local message for NATS. */
static void export_deliver(bus_client *c, const bus_msg *m, void *userdata) {
        bridge *b = userdata;
        if (!streq_ptr(m->m.origin, b->self))
                return; /* imported: exporting it again would echo */
        if (is_routed(m->m.subject) && bridge_addressed_to(m->m.subject, b->self))
                return; /* a request or reply for this very agent */
        const char *prefix = bus_inbox_prefix(b->agent->bus);
        if (m->m.reply && startswith(m->m.reply, prefix))
                reply_expect(b, m->m.reply); /* a request of ours: its reply may come back */
        natsMsg *nm = NULL;
        natsStatus s;
        if (b->raw_msgs)
                s = export_encode(b, m, &nm);
        else {
                s = natsMsg_Create(&nm, m->m.subject, m->m.reply, m->m.data, (int)m->m.len);
                for (size_t i = 0; s == NATS_OK && i < m->m.n_headers; i++)
                        s = natsMsgHeader_Add(nm, m->m.headers[i].key, m->m.headers[i].value);
                if (s == NATS_OK)
                        s = natsMsgHeader_Set(nm, BRIDGE_ORIGIN_HEADER, b->self);
        }
        /* control requests and replies take the connection that writes at once
         * (libnats' flusher batches for about a millisecond: fine for a stream, not for a
         * hop); chosen by subject only, so one subject keeps its order */
        if (s == NATS_OK)
                s = natsConnection_PublishMsg(is_routed(m->m.subject) ? b->fast : b->nc, nm);
        if (b->raw_msgs)
                natsMsg_free(nm);
        else
                natsMsg_Destroy(nm);
        if (is_announcement(m->m.subject))
                return; /* the next one, 10 s later, says the same: no counter, no warning */
        if (s == NATS_OK) {
                b->exported++;
                return;
        }
        uint64_t n = ++b->export_dropped;
        if ((n & (n - 1)) == 0) /* 1, 2, 4, 8...: the first and then ever rarer */
                log_warning("NATS bridge: export of %s failed (%s); %llu dropped so far.", log_str(m->m.subject),
                            natsStatus_GetText(s), (unsigned long long)n);
}

static void import_free(import_msg *im) {
        if (!im)
                return;

        free(im->subject);
        free(im->reply);
        free(im->origin);
        free(im->headers);
        free(im->strings);
        free(im->data);
        free(im);
}

/* On the loop: one imported message onto the local bus. */
static void import_run(bridge *b, post_item *it) {
        import_msg *im = (import_msg *)it;
        if (bus_publish(b->agent->bus, im->subject, im->reply, im->headers, im->n_headers, im->data, im->len,
                        im->origin) >= 0) {
                if (!is_announcement(im->subject))
                        b->imported++;
        }
        else
                b->import_dropped++;
        import_free(im);
}

static void import_drop(post_item *it) { import_free((import_msg *)it); }

/* Copies what the loop needs out of a libnats message (on a libnats thread). */
static import_msg *import_copy(natsMsg *msg, const char *origin) {
        import_msg *im = new0(import_msg, 1);
        if (!im)
                return NULL;
        im->base.run = import_run;
        im->base.drop = import_drop;
        im->base.bytes = (size_t)natsMsg_GetDataLength(msg);
        const char *reply = natsMsg_GetReply(msg);
        im->subject = strdup(natsMsg_GetSubject(msg));
        im->reply = reply && *reply ? strdup(reply) : NULL;
        im->origin = strdup(origin);
        im->len = (size_t)natsMsg_GetDataLength(msg);
        im->data = malloc(im->len + 1);
        if (!im->subject || !im->origin || !im->data || (reply && *reply && !im->reply))
                goto fail;
        memcpy(im->data, natsMsg_GetData(msg), im->len);

        const char **keys = NULL;
        int nkeys = 0;
        if (natsMsgHeader_Keys(msg, &keys, &nkeys) == NATS_OK && nkeys > 0) {
                /* two passes: count and size, then copy into one block */
                size_t n = 0, bytes = 0;
                for (int i = 0; i < nkeys; i++) {
                        const char **vals = NULL;
                        int nv = 0;
                        if (streq(keys[i], BRIDGE_ORIGIN_HEADER) ||
                            natsMsgHeader_Values(msg, keys[i], &vals, &nv) != NATS_OK)
                                continue;
                        for (int k = 0; k < nv; k++) {
                                n++;
                                bytes += strlen(keys[i]) + strlen(vals[k]) + 2;
                        }
                        free((void *)vals);
                }
                im->headers = new0(org_header, n ? n : 1);
                im->strings = malloc(bytes ? bytes : 1);
                char *p = im->strings;
                for (int i = 0; im->headers && p && i < nkeys; i++) {
                        const char **vals = NULL;
                        int nv = 0;
                        if (streq(keys[i], BRIDGE_ORIGIN_HEADER) ||
                            natsMsgHeader_Values(msg, keys[i], &vals, &nv) != NATS_OK)
                                continue;
                        for (int k = 0; k < nv && im->n_headers < n; k++) {
                                size_t kl = strlen(keys[i]) + 1, vl = strlen(vals[k]) + 1;
                                memcpy(p, keys[i], kl);
                                memcpy(p + kl, vals[k], vl);
                                im->headers[im->n_headers++] = (org_header){p, p + kl};
                                p += kl + vl;
                        }
                        free((void *)vals);
                }
                free((void *)keys);
                if (!im->headers || !im->strings)
                        goto fail;
        }
        return im;
fail:
        import_free(im);
        return NULL;
}

/* libnats thread: a message from NATS. */
static void on_nats_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
        import_sub *is = closure;
        bridge *b = is->bridge;
        const char *subject = natsMsg_GetSubject(msg);
        /* Replies and control requests for this agent come through its own
         * subscriptions on the fast connection (the last ones): a configured pattern
         * that also matches them lets them go. */
        if (is->index < b->n_user_imports && is_routed(subject) && bridge_addressed_to(subject, b->self)) {
                b->duplicates++;
                natsMsg_Destroy(msg);
                return;
        }
        /* Our inbox: only replies to requests this agent sent get further. */
        if (is->index == b->n_user_imports && !reply_take(b, subject)) {
                b->replies_unknown++;
                natsMsg_Destroy(msg);
                return;
        }
        /* NATS delivers once per matching subscription: the first matching pattern
         * in order takes it, the others let it go (our own inbox and control
         * subscriptions always take theirs: the configured ones let them go above). */
        for (size_t i = 0; i < MIN(is->index, b->n_user_imports); i++)
                if (subject_matches(b->imports[i].pattern, subject)) {
                        b->duplicates++;
                        natsMsg_Destroy(msg);
                        return;
                }
        const char *origin = NULL;
        if (natsMsgHeader_Get(msg, BRIDGE_ORIGIN_HEADER, &origin) != NATS_OK || !origin || !*origin)
                origin = "nats"; /* a plain NATS client, not an agent */
        if (streq(origin, b->self)) {
                if (!is_announcement(subject))
                        b->echo_dropped++;
                natsMsg_Destroy(msg);
                return;
        }
        /* An answer to it would be published here as this agent's own message: a reply
         * subject must be an inbox, and not ours, or it could aim our answer at one of
         * our control subjects. */
        const char *reply = natsMsg_GetReply(msg);
        if (reply && *reply && (!startswith(reply, "_INBOX.") || bridge_addressed_to(reply, b->self))) {
                b->import_dropped++;
                natsMsg_Destroy(msg);
                return;
        }
        import_msg *im = import_copy(msg, origin);
        natsMsg_Destroy(msg);
        if (!im || !bridge_post(b, &im->base, true)) {
                b->import_dropped++;
                import_free(im);
        }
}

bool bridge_post(bridge *b, post_item *it, bool bounded) {
        pthread_mutex_lock(&b->lock);
        if (bounded && (b->queued >= POST_QUEUE_MAX || b->queued_bytes + it->bytes > POST_QUEUE_MAX_BYTES)) {
                pthread_mutex_unlock(&b->lock);
                return false;
        }
        bool wake = b->head == NULL;
        it->next = NULL;
        if (b->tail)
                b->tail->next = it;
        else
                b->head = it;
        b->tail = it;
        b->queued++;
        b->queued_bytes += it->bytes;
        pthread_mutex_unlock(&b->lock);
        if (wake) {
                uint64_t one = 1;
                ssize_t _unused_ n = write(b->efd, &one, sizeof one);
        }
        return true;
}

/* On the loop: run what the other threads posted, in order. */
static int on_post_ready(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        bridge *b = userdata;
        uint64_t v;
        ssize_t _unused_ n = read(fd, &v, sizeof v);
        /* a batch per wake-up, so timers and control requests are served between */
        for (unsigned k = 0; k < POST_BATCH; k++) {
                pthread_mutex_lock(&b->lock);
                post_item *it = b->head;
                if (it) {
                        b->head = it->next;
                        if (!b->head)
                                b->tail = NULL;
                        b->queued--;
                        b->queued_bytes -= it->bytes;
                }
                bool more = it && b->head;
                pthread_mutex_unlock(&b->lock);
                if (!it)
                        return 0;
                it->run(b, it);
                if (!more)
                        return 0;
        }
        uint64_t one = 1; /* more left: come back on the next iteration */
        n = write(b->efd, &one, sizeof one);
        return 0;
}

static uint64_t out_bytes(natsConnection *nc) {
        uint64_t c[5] = {0};
        natsStatistics *st = NULL;
        if (nc && natsStatistics_Create(&st) == NATS_OK && natsConnection_GetStats(nc, st) == NATS_OK)
                natsStatistics_GetCounts(st, &c[0], &c[1], &c[2], &c[3], &c[4]);
        natsStatistics_Destroy(st);
        return c[3];
}

static void on_disconnected(natsConnection *nc, void *closure) {
        bridge *b = closure;
        b->out_bytes_at_down[0] = out_bytes(nc);
        b->connected = false;
        b->disconnects++;
        log_warning("NATS bridge: disconnected; exports are buffered until the server is back.");
}

static void on_connected(natsConnection *nc, void *closure) {
        bridge *b = closure;
        char url[256] = "";
        natsConnection_GetConnectedUrl(nc, url, sizeof url);
        b->connected = true;
        log_info("NATS bridge: connected to %s.", url);
        js_on_connected(b);
}

static void on_closed(natsConnection *nc, void *closure) {
        bridge *b = closure;
        b->connected = false;
        if (b->stopping)
                return;
        const char *why = NULL;
        natsStatus s = natsConnection_GetLastError(nc, &why);
        log_error("NATS bridge: connection to %s closed for good: %s. The local bus goes on; the bridge stays "
                  "down until agentd restarts.",
                  b->url, s != NATS_OK && why && *why ? why : "reconnect attempts exhausted");
}

static void on_fast_up(natsConnection *nc, void *closure) {
        bridge *b = closure;
        b->fast_connected = true;
        js_on_connected(b);
}

static void on_fast_down(natsConnection *nc, void *closure) {
        bridge *b = closure;
        b->out_bytes_at_down[1] = out_bytes(nc);
        b->fast_connected = false;
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure) {
        bridge *b = closure;
        if (err == NATS_SLOW_CONSUMER) {
                uint64_t n = ++b->slow_consumers;
                if ((n & (n - 1)) == 0)
                        log_warning("NATS bridge: slow consumer, NATS dropped messages for us (%llu times so far).",
                                    (unsigned long long)n);
                return;
        }
        b->errors++;
        log_error("NATS bridge: %s", log_str(nats_error_text(err))); /* may quote the server */
}

static void *rtt_loop(void *userdata) {
        bridge *b = userdata;
        pthread_mutex_lock(&b->rtt_lock);
        while (!b->stopping) {
                pthread_mutex_unlock(&b->rtt_lock);
                int64_t rtt = 0;
                if (b->connected && natsConnection_GetRTT(b->nc, &rtt) == NATS_OK)
                        b->rtt_us = (uint64_t)(rtt / 1000);
                pthread_mutex_lock(&b->rtt_lock);
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += 5;
                if (!b->stopping)
                        pthread_cond_timedwait(&b->rtt_cond, &b->rtt_lock, &ts);
        }
        pthread_mutex_unlock(&b->rtt_lock);
        return NULL;
}

static natsStatus set_options(bridge *b, json_t *cfg) {
        natsStatus s = natsOptions_Create(&b->opts);
        json_t *servers = json_object_get(cfg, "servers");
        const char *url = json_string_value(json_object_get(cfg, "url"));
        if (s == NATS_OK && json_array_size(servers) > 0) {
                const char *list[64];
                size_t n = 0, i;
                json_t *v;
                json_array_foreach(servers, i, v) if (n < ELEMENTSOF(list)) list[n++] = json_string_value(v);
                s = natsOptions_SetServers(b->opts, list, (int)n);
        } else if (s == NATS_OK)
                s = natsOptions_SetURL(b->opts, url ? url : "nats://127.0.0.1:4222");
        b->url = strdup(json_array_size(servers) ? json_string_value(json_array_get(servers, 0))
                                                 : url ? url : "nats://127.0.0.1:4222");
        const char *name = json_string_value(json_object_get(cfg, "name"));
        if (s == NATS_OK)
                s = natsOptions_SetName(b->opts, name ? name : b->self);
        if (s == NATS_OK)
                s = natsOptions_SetNoEcho(b->opts, true); /* our own exports never come back */
        const char *token = json_string_value(json_object_get(cfg, "token"));
        const char *user = json_string_value(json_object_get(cfg, "user"));
        const char *creds = json_string_value(json_object_get(cfg, "creds"));
        if (s == NATS_OK && token)
                s = natsOptions_SetToken(b->opts, token);
        if (s == NATS_OK && user)
                s = natsOptions_SetUserInfo(b->opts, user, json_string_value(json_object_get(cfg, "password")));
        if (s == NATS_OK && creds)
                s = natsOptions_SetUserCredentialsFromFiles(b->opts, creds, NULL);
        json_t *tls = json_object_get(cfg, "tls");
        if (s == NATS_OK && tls) {
                const char *ca = json_string_value(json_object_get(tls, "ca"));
                const char *cert = json_string_value(json_object_get(tls, "cert"));
                const char *key = json_string_value(json_object_get(tls, "key"));
                s = natsOptions_SetSecure(b->opts, true);
                if (s == NATS_OK && ca)
                        s = natsOptions_LoadCATrustedCertificates(b->opts, ca);
                if (s == NATS_OK && cert)
                        s = natsOptions_LoadCertificatesChain(b->opts, cert, key);
        }
        if (s == NATS_OK)
                s = natsOptions_SetMaxReconnect(b->opts, (int)json_integer_value(json_object_get(cfg, "reconnect_attempts")));
        if (s == NATS_OK)
                s = natsOptions_SetReconnectWait(b->opts, json_integer_value(json_object_get(cfg, "reconnect_wait")));
        if (s == NATS_OK)
                s = natsOptions_SetReconnectBufSize(b->opts, (int)json_integer_value(json_object_get(cfg, "reconnect_buffer")));
        if (s == NATS_OK)
                s = natsOptions_SetTimeout(b->opts, json_integer_value(json_object_get(cfg, "connect_timeout")));
        if (s == NATS_OK)
                s = natsOptions_SetMaxPendingMsgs(b->opts, 262144);
        /* a stalled server must fail a write (counted as a drop), not freeze the loop */
        if (s == NATS_OK)
                s = natsOptions_SetWriteDeadline(b->opts, 2000);
        if (s == NATS_OK)
                s = natsOptions_SetRetryOnFailedConnect(b->opts, true, on_connected, b);
        if (s == NATS_OK)
                s = natsOptions_SetDisconnectedCB(b->opts, on_disconnected, b);
        if (s == NATS_OK)
                s = natsOptions_SetReconnectedCB(b->opts, on_connected, b);
        if (s == NATS_OK)
                s = natsOptions_SetClosedCB(b->opts, on_closed, b);
        if (s == NATS_OK)
                s = natsOptions_SetErrorHandler(b->opts, on_error, b);
        return s;
}

/* The import subscriptions, in order: configured patterns, then the reply inbox,
 * (unless remote control is off) the control subjects of this agent, and the other
 * agents' announcements (peers.h). */
static int add_import(bridge *b, const char *pattern) {
        import_sub *is = &b->imports[b->n_imports];
        is->bridge = b;
        is->index = b->n_imports;
        is->pattern = strdup(pattern);
        if (!is->pattern)
                return -ENOMEM;
        b->n_imports++;
        return 0;
}

int bridge_new(agent *a, json_t *cfg, bridge **ret) {
        _cleanup_free_ char *inbox = NULL, *ctl = NULL;
        bridge *b = new0(bridge, 1);
        if (!b)
                return -ENOMEM;
        b->agent = a;
        b->efd = -1;
        b->self = strdup(a->config->name);
        pthread_mutex_init(&b->lock, NULL);
        pthread_mutex_init(&b->rtt_lock, NULL);
        pthread_mutex_init(&b->replies_lock, NULL);
        b->replies = new0(reply_slot, REPLY_SLOTS);
        if (getrandom(&b->replies_seed, sizeof b->replies_seed, 0) != sizeof b->replies_seed) {
                free(b->replies); /* no filter: the bus still checks every token */
                b->replies = NULL;
        }
        pthread_cond_init(&b->rtt_cond, NULL);
        const char *rc = json_string_value(json_object_get(cfg, "remote_control"));
        b->remote_control = !rc || !streq(rc, "off");
        int r = -ENOMEM;
        if (!b->self)
                goto fail;

        json_t *imports = json_object_get(cfg, "import"), *v;
        size_t i;
        b->imports = new0(import_sub, json_array_size(imports) + 3);
        if (!b->imports)
                goto fail;
        json_array_foreach(imports, i, v) if ((r = add_import(b, json_string_value(v))) < 0) goto fail;
        b->n_user_imports = b->n_imports;
        /* replies only under this process's random inbox prefix (each one also
         * carries a token of its own request, checked by the bus): nothing else
         * under _INBOX.<agent> is even delivered to us */
        if (asprintf(&inbox, "%s>", bus_inbox_prefix(a->bus)) < 0 || asprintf(&ctl, "organism.ctl.%s.>", b->self) < 0) {
                r = -ENOMEM;
                goto fail;
        }
        if ((r = add_import(b, inbox)) < 0 || (b->remote_control && (r = add_import(b, ctl)) < 0) ||
            (r = add_import(b, "organism.agent.*")) < 0)
                goto fail;

        b->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (b->efd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(a->event, &b->efd_source, b->efd, EPOLLIN, on_post_ready, b);
        if (r < 0)
                goto fail;

        /* the internal constructor's signature is that of libnats 3 */
        b->raw_msgs = natsMsg_create && natsMsg_free && nats_GetVersionNumber() >= 0x030000 &&
                      nats_GetVersionNumber() < 0x040000;

        r = js_init(b, json_object_get(cfg, "jetstream"));
        if (r < 0)
                goto fail;
        natsStatus s = set_options(b, cfg);
        if (s != NATS_OK) {
                r = log_error_errno(EINVAL, "NATS bridge: bad options: %s", nats_error_text(s));
                goto fail;
        }
        s = natsConnection_Connect(&b->nc, b->opts);
        if (s == NATS_OK || s == NATS_NOT_YET_CONNECTED) {
                /* the second connection: same server and auth, unbatched writes, quiet
                 * callbacks (the bulk one speaks for both) */
                natsStatus f = natsOptions_SetSendAsap(b->opts, true);
                if (f == NATS_OK)
                        f = natsOptions_SetRetryOnFailedConnect(b->opts, true, on_fast_up, b);
                if (f == NATS_OK)
                        f = natsOptions_SetReconnectedCB(b->opts, on_fast_up, b);
                if (f == NATS_OK)
                        f = natsOptions_SetDisconnectedCB(b->opts, on_fast_down, b);
                if (f == NATS_OK)
                        f = natsOptions_SetClosedCB(b->opts, on_fast_down, b);
                if (f == NATS_OK)
                        f = natsConnection_Connect(&b->fast, b->opts);
                if (f == NATS_OK)
                        b->fast_connected = true;
                else if (f != NATS_NOT_YET_CONNECTED) {
                        r = log_error_errno(ECONNREFUSED, "NATS bridge: cannot connect: %s", nats_error_text(f));
                        goto fail;
                }
        }
        if (s == NATS_OK)
                on_connected(b->nc, b);
        else if (s == NATS_NOT_YET_CONNECTED)
                log_warning("NATS bridge: %s not reachable yet (%s); retrying in the background.", b->url,
                            nats_error_text(s));
        else {
                r = log_error_errno(ECONNREFUSED, "NATS bridge: cannot connect: %s", nats_error_text(s));
                goto fail;
        }
        for (i = 0; i < b->n_imports; i++) {
                /* our inbox and control subjects live on the fast connection: requests
                 * go out there, and NATS answers "no responders" on the requester's
                 * own connection */
                s = natsConnection_Subscribe(&b->imports[i].sub, i < b->n_user_imports ? b->nc : b->fast,
                                             b->imports[i].pattern, on_nats_msg,
                                             &b->imports[i]);
                if (s == NATS_OK)
                        s = natsSubscription_SetPendingLimits(b->imports[i].sub, 65536, 64 << 20);
                if (s != NATS_OK) {
                        r = log_error_errno(EIO, "NATS bridge: cannot subscribe to %s: %s", b->imports[i].pattern,
                                            nats_error_text(s));
                        goto fail;
                }
        }

        b->exporter = bus_client_new(a->bus, "nats-export", 65536, export_deliver, b);
        if (!b->exporter) {
                r = -ENOMEM;
                goto fail;
        }
        json_t *exports = json_object_get(cfg, "export");
        json_array_foreach(exports, i, v) if ((r = bus_subscribe(b->exporter, json_string_value(v), NULL)) < 0) goto fail;
        /* requests to other agents and replies to them always cross, and so does this
         * agent's announcement */
        if ((r = bus_subscribe(b->exporter, "_INBOX.>", NULL)) < 0 ||
            (r = bus_subscribe(b->exporter, "organism.ctl.>", NULL)) < 0 ||
            (r = bus_subscribe(b->exporter, "organism.agent.*", NULL)) < 0)
                goto fail;

        r = js_start(b);
        if (r < 0)
                goto fail;
        if (pthread_create(&b->rtt_thread, NULL, rtt_loop, b) == 0)
                b->rtt_started = true;
        *ret = b;
        return 0;
fail:
        bridge_free(b);
        return r;
}

void bridge_free(bridge *b) {
        if (!b)
                return;
        pthread_mutex_lock(&b->rtt_lock);
        b->stopping = true;
        pthread_cond_broadcast(&b->rtt_cond);
        pthread_mutex_unlock(&b->rtt_lock);
        if (b->rtt_started)
                pthread_join(b->rtt_thread, NULL);
        js_stop(b);
        bus_client_free(b->exporter);
        /* drain each subscription before destroying it (a nats.c 3.4 trap) */
        for (size_t i = 0; i < b->n_imports; i++) {
                if (b->imports[i].sub) {
                        natsSubscription_Unsubscribe(b->imports[i].sub);
                        natsSubscription_Destroy(b->imports[i].sub);
                }
        }
        natsConnection *conns[] = {b->nc, b->fast};
        for (size_t i = 0; i < ELEMENTSOF(conns); i++)
                if (conns[i]) {
                        natsConnection_FlushTimeout(conns[i], 1000); /* what was exported last goes out */
                        natsConnection_Close(conns[i]);
                        natsConnection_Destroy(conns[i]);
                }
        natsOptions_Destroy(b->opts);
        /* every libnats thread is gone after this: none can call back into b */
        nats_CloseAndWait(2000);
        for (size_t i = 0; i < b->n_imports; i++)
                free(b->imports[i].pattern);
        free(b->imports);
        sd_event_source_disable_unref(b->efd_source);
        if (b->efd >= 0)
                close(b->efd);
        while (b->head) {
                post_item *it = b->head;
                b->head = it->next;
                it->drop(it);
        }
        js_free(b);
        free(b->scratch);
        free(b->replies);
        pthread_mutex_destroy(&b->replies_lock);
        pthread_mutex_destroy(&b->lock);
        pthread_mutex_destroy(&b->rtt_lock);
        pthread_cond_destroy(&b->rtt_cond);
        free(b->self);
        free(b->url);
        free(b);
}

json_t *bridge_status(bridge *b) {
        if (!b)
                return json_pack("{s:b}", "enabled", 0);
        uint64_t in_msgs = 0, in_bytes = 0, out_msgs = 0, out_bytes = 0, reconnects = 0, buffered = 0;
        natsConnection *conns[] = {b->nc, b->fast};
        for (size_t i = 0; i < ELEMENTSOF(conns); i++) {
                uint64_t c[5] = {0};
                natsStatistics *st = NULL;
                if (conns[i] && natsStatistics_Create(&st) == NATS_OK && natsConnection_GetStats(conns[i], st) == NATS_OK)
                        natsStatistics_GetCounts(st, &c[0], &c[1], &c[2], &c[3], &c[4]);
                natsStatistics_Destroy(st);
                in_msgs += c[0], in_bytes += c[1], out_msgs += c[2], out_bytes += c[3];
                if (i == 0)
                        reconnects = c[4];
                /* written, not yet flushed; and while down, what libnats holds in its
                 * reconnect buffer (headers and payloads, not the protocol lines) */
                buffered += (uint64_t)MAX(conns[i] ? natsConnection_Buffered(conns[i]) : 0, 0);
                if (conns[i] && natsConnection_Status(conns[i]) == NATS_CONN_STATUS_RECONNECTING &&
                    c[3] > b->out_bytes_at_down[i])
                        buffered += c[3] - b->out_bytes_at_down[i];
        }
        char url[256] = "";
        natsConnection_GetConnectedUrl(b->nc, url, sizeof url);
        bool connected = natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED;
        json_t *o = json_pack("{s:b, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                              "enabled", 1, "connected", connected, "server", url, "rtt_us", (json_int_t)b->rtt_us,
                              "in_msgs", (json_int_t)in_msgs, "in_bytes", (json_int_t)in_bytes, "out_msgs",
                              (json_int_t)out_msgs, "out_bytes", (json_int_t)out_bytes, "reconnects",
                              (json_int_t)reconnects, "disconnects", (json_int_t)b->disconnects, "buffered",
                              (json_int_t)buffered, "exported", (json_int_t)b->exported,
                              "export_dropped", (json_int_t)b->export_dropped, "imported", (json_int_t)b->imported,
                              "import_dropped", (json_int_t)b->import_dropped, "echo_dropped",
                              (json_int_t)b->echo_dropped, "slow_consumers", (json_int_t)b->slow_consumers, "errors",
                              (json_int_t)b->errors, "duplicates_dropped", (json_int_t)b->duplicates);
        bus_client_stats es;
        bus_client_get_stats(b->exporter, &es);
        json_object_set_new(o, "export_queue_dropped", json_integer((json_int_t)es.dropped));
        json_object_set_new(o, "replies_unknown", json_integer((json_int_t)b->replies_unknown));
        json_object_set_new(o, "jetstream", js_status(b));
        return o;
}

/* The module's one export: agentd finds the bridge through it (bridge_module.h). */
__attribute__((visibility("default"))) const bridge_module organism_bridge_module = {
        .abi = BRIDGE_MODULE_ABI,
        .size = sizeof(bridge_module),
        .version = ORG_VERSION,
        .agent_size = sizeof(agent),
        .bridge_new = bridge_new,
        .bridge_free = bridge_free,
        .bridge_status = bridge_status,
        .bridge_publish_durable = bridge_publish_durable,
        .bridge_consume = bridge_consume,
        .bridge_consume_cancel = bridge_consume_cancel,
        .bridge_ack = bridge_ack,
};
