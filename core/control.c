/* control.c — the control socket server: listening, peer credentials, line framing,
 * bounded input and output, the hello, and dispatch of requests to ctl_verbs.c.
 * Nothing a peer sends can crash the daemon: malformed, oversized or unauthorised
 * requests get an error line. Nor can a peer hold it: each wake-up serves a bounded
 * slice of one connection (the rest resumes from the loop, below other work), and
 * connections, streams, pending requests, buffered output and idle or stuck peers are
 * all bounded (CTL_* in control.h, the `control:` section of the config). */
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "control.h"
#include "org-build-config.h"
#include "log.h"
#include "util.h"

struct control {
        agent *agent;
        char *path;
        int fd;
        int spare_fd;           /* /dev/null, given up at EMFILE so that root still gets in */
        bool bound;             /* the socket file is ours to remove */
        sd_event_source *source;
        sd_event_source *listen_pause; /* re-enables the listener after EMFILE */
        sd_event_source *sweep; /* closes idle and stuck peers at their deadline */
        ctl_conn *conns;
        size_t n_conns;
        size_t out_bytes;       /* output buffer memory of all connections */
        bus_client *remote;     /* organism.ctl.<agent>._agent.* from other agents */
        bool remote_admin;
        gid_t organism_gid;
        bool have_group;
        uint64_t accepted, refused, timed_out;
        log_ratelimit refuse_log, exhausted_log;
};

struct ctl_conn {
        control *control;
        ctl_conn *next;
        int fd;
        sd_event_source *source;
        sd_event_source *resume; /* defer: the lines left when a wake-up's budget ran out */
        bool admin;
        uid_t uid;
        pid_t pid;
        char *in;
        size_t in_len, in_cap;
        size_t in_scanned;      /* bytes of `in` already searched for a newline */
        char *out;
        size_t out_len, out_cap, out_off;
        bool closing;           /* close once the output is flushed */
        bool eof;               /* the peer shut its writing side: answer, then close */
        bool gone;              /* hung up: what it sent is still handled, answers are discarded */
        bool batch;             /* inside conn_process: one flush at the end */
        bool paused;            /* CTL_MAX_PENDING reached: reading resumes when one ends */
        uint64_t active_us;     /* last input, or last time it had nothing pending */
        uint64_t out_since_us;  /* output waiting and no progress since (0: none waiting) */
        size_t n_pending, n_streams;
        ctl_request *requests;  /* pending (async or streaming) */
};

/* After EMFILE the listener rests this long instead of spinning. */
#define CTL_LISTEN_PAUSE_MS 100
/* Output buffers larger than this are given back once drained. */
#define CTL_OUT_KEEP (64u << 10)
#define CTL_IN_KEEP (64u << 10)

static void conn_free(ctl_conn *c);
static void conn_step(ctl_conn *c);
static int on_conn_resume(sd_event_source *s, void *userdata);
static void control_arm_sweep(control *ctl, uint64_t when_us);

/* The limits in force (the config's, or the built-in defaults when the config was
 * made without the schema, as unit tests do). */
static control_config limits(const control *ctl) {
        control_config l = ctl->agent->config->control;
        if (l.max_connections < 2 * CTL_ROOT_RESERVED)
                l.max_connections = 64;
        if (!l.max_connections_per_uid)
                l.max_connections_per_uid = 16;
        if (!l.idle_timeout_ms)
                l.idle_timeout_ms = 60000;
        if (!l.send_timeout_ms)
                l.send_timeout_ms = 30000;
        if (!l.max_output)
                l.max_output = 64u << 20;
        return l;
}

static size_t conn_unsent(const ctl_conn *c) { return c->out_len - c->out_off; }

/* A peer that sends requests without reading the answers is not read from until it
 * has: unsent output stays bounded, per connection and for all of them together (a
 * connection with nothing unsent is always served: its next answer is bounded). */
static bool conn_output_full(const ctl_conn *c) {
        size_t unsent = conn_unsent(c);
        return unsent >= CTL_MAX_OUTPUT || (unsent > 0 && c->control->out_bytes >= limits(c->control).max_output);
}

static bool conn_can_process(const ctl_conn *c) {
        return !c->closing && !conn_output_full(c) && c->n_pending < CTL_MAX_PENDING;
}

static void conn_set_out_cap(ctl_conn *c, char *buf, size_t cap) {
        c->control->out_bytes = c->control->out_bytes - c->out_cap + cap;
        c->out = buf;
        c->out_cap = cap;
}

static void conn_release_out(ctl_conn *c) {
        bool big = c->out_cap >= (1u << 20);
        free(c->out);
        conn_set_out_cap(c, NULL, 0);
#ifdef __GLIBC__
        /* megabytes a slow reader held would otherwise stay with the process */
        if (big)
                malloc_trim(0);
#else
        (void)big;
#endif
}

/* The rest of a connection's lines, in a later turn of the loop. Below the normal
 * priority: whatever else is ready (another peer, a tick, the bus) goes first, and a
 * peer that has used its budget waits for them. */
static void conn_schedule(ctl_conn *c) {
        if (!c->resume) {
                if (sd_event_add_defer(c->control->agent->event, &c->resume, on_conn_resume, c) < 0)
                        return;
                sd_event_source_set_priority(c->resume, SD_EVENT_PRIORITY_NORMAL + 10);
        }
        sd_event_source_set_enabled(c->resume, SD_EVENT_ONESHOT);
}

static void conn_update_events(ctl_conn *c) {
        uint32_t ev = 0;
        bool backlog = c->in_scanned < c->in_len;
        if (c->gone)
                ev = c->eof || backlog ? 0 : EPOLLIN; /* (EPOLLHUP comes anyway, at every turn) */
        else if (c->closing)
                ev = c->eof ? 0 : EPOLLIN; /* drained and discarded until the answer is out */
        else if (!c->eof && !backlog && conn_can_process(c))
                ev = EPOLLIN;
        if (conn_unsent(c) > 0)
                ev |= EPOLLOUT;
        sd_event_source_set_io_events(c->source, ev);
        if (backlog && conn_can_process(c))
                conn_schedule(c);
}

static void conn_flush(ctl_conn *c) {
        bool progress = false;
        if (c->gone)
                c->out_off = c->out_len; /* nobody reads them */
        while (c->out_off < c->out_len) {
                ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EPIPE || errno == ECONNRESET)
                                c->gone = true; /* hung up, maybe before its hello: its requests still count */
                        else if (errno != EAGAIN)
                                c->closing = true;
                        if (errno != EAGAIN)
                                c->out_off = c->out_len; /* discarded */
                        break;
                }
                c->out_off += (size_t)n;
                progress = true;
        }
        if (c->out_off == c->out_len) {
                c->out_off = c->out_len = 0;
                c->out_since_us = 0;
                if (c->out_cap > CTL_OUT_KEEP)
                        conn_release_out(c);
        } else if (progress || !c->out_since_us) {
                bool first = !c->out_since_us;
                c->out_since_us = now_monotonic_us();
                if (first)
                        control_arm_sweep(c->control, c->out_since_us + limits(c->control).send_timeout_ms * USEC_PER_MSEC);
        }
}

/* Appends one JSON line (stolen). force: replies are never dropped, only stream
 * events are, so a request always gets its answer. */
static int conn_send(ctl_conn *c, json_t *o, bool force) {
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!text)
                return -ENOMEM;
        size_t len = strlen(text);
        if (!force && (conn_unsent(c) + len > CTL_MAX_OUTPUT ||
                       c->control->out_bytes + len > limits(c->control).max_output)) {
                free(text);
                return -ENOBUFS;
        }
        if (c->out_len + len + 1 > c->out_cap && c->out_off > 0) {
                /* what was sent makes room before the buffer grows */
                memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
                c->out_len -= c->out_off;
                c->out_off = 0;
        }
        if (c->out_len + len + 1 > c->out_cap) {
                size_t ncap = MAX(c->out_cap * 2, c->out_len + len + 1 + 4096);
                char *n = realloc(c->out, ncap);
                if (!n) {
                        free(text);
                        return -ENOMEM;
                }
                conn_set_out_cap(c, n, ncap);
        }
        memcpy(c->out + c->out_len, text, len);
        c->out[c->out_len + len] = '\n';
        c->out_len += len + 1;
        free(text);
        if (!c->batch) {
                /* an answer that came later (a bus reply, a stream event) */
                conn_flush(c);
                conn_update_events(c);
        }
        return 0;
}

static void request_unlink(ctl_request *q) {
        ctl_conn *c = q->conn;
        if (!c)
                return;
        LIST_UNLINK(c->requests, q);
        q->conn = NULL;
        c->n_pending--;
        if (q->stream)
                c->n_streams--;
        if (c->n_pending == 0) {
                /* idle from now on: the idle time-out counts from here */
                c->active_us = now_monotonic_us();
                control_arm_sweep(c->control, c->active_us + limits(c->control).idle_timeout_ms * USEC_PER_MSEC);
        }
        /* a connection waiting for this one to end: resume it on the loop */
        if (!c->batch && (c->paused || c->eof))
                conn_schedule(c);
}

void ctl_request_free(ctl_request *q) {
        if (!q)
                return;
        request_unlink(q);
        free(q->reply_subject);
        json_decref(q->id);
        json_decref(q->args);
        free(q->verb);
        free(q);
}

static json_t *reply_base(ctl_request *q) {
        json_t *o = json_object();
        json_object_set(o, "id", q->id ? q->id : json_null());
        return o;
}

/* A remote request's answer: the same object a connection would get, on the bus. */
static void remote_send(ctl_request *q, json_t *o) {
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (text)
                bus_publish(q->agent->bus, q->reply_subject, NULL, NULL, 0, text, strlen(text), NULL);
        free(text);
}

void ctl_reply_ok(ctl_request *q, json_t *result) {
        if (q->conn || q->reply_subject) {
                json_t *o = reply_base(q);
                json_object_set_new(o, "ok", json_true());
                json_object_set_new(o, "result", result ? result : json_object());
                if (q->conn)
                        conn_send(q->conn, o, true);
                else
                        remote_send(q, o);
        } else
                json_decref(result);
        ctl_request_free(q);
}

static const char *errno_name(int e) {
        switch (e) {
        case EPERM:
                return "EPERM";
        case EACCES:
                return "EACCES";
        case ENOENT:
                return "ENOENT";
        case EINVAL:
                return "EINVAL";
        case EEXIST:
                return "EEXIST";
        case ETIMEDOUT:
                return "ETIMEDOUT";
        case EBUSY:
                return "EBUSY";
        case E2BIG:
                return "E2BIG";
        case EPROTO:
                return "EPROTO";
        case EOPNOTSUPP:
                return "EOPNOTSUPP";
        default:
                return "EIO";
        }
}

static void send_error(ctl_conn *c, json_t *id, int error, const char *msg) {
        json_t *o = json_pack("{s:O?, s:b, s:s, s:s}", "id", id, "ok", 0, "error", msg, "errno",
                              errno_name(error < 0 ? -error : error));
        if (o)
                conn_send(c, o, true);
}

void ctl_reply_error(ctl_request *q, int error, const char *fmt, ...) {
        if (q->conn || q->reply_subject) {
                char msg[2048];
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(msg, sizeof msg, fmt, ap);
                va_end(ap);
                if (q->conn)
                        send_error(q->conn, q->id, error, msg);
                else
                        remote_send(q, json_pack("{s:O?, s:b, s:s, s:s}", "id", q->id, "ok", 0, "error", msg, "errno",
                                                 errno_name(error < 0 ? -error : error)));
        }
        ctl_request_free(q);
}

int ctl_stream_send(ctl_request *q, json_t *event) {
        if (!q->conn) {
                json_decref(event);
                return -ENOTCONN;
        }
        if (!event) {
                /* never an empty event: it would count as one and say nothing */
                q->dropped++;
                return -ENOMEM;
        }
        json_t *o = reply_base(q);
        json_object_set_new(o, "event", event);
        int r = conn_send(q->conn, o, false);
        if (r == -ENOBUFS)
                q->dropped++;
        else if (r >= 0)
                q->sent++;
        return r;
}

void ctl_stream_end(ctl_request *q, json_t *extra) {
        if (q->conn) {
                json_t *o = reply_base(q);
                json_object_set_new(o, "end", json_true());
                json_object_set_new(o, "count", json_integer((json_int_t)q->sent));
                json_object_set_new(o, "dropped", json_integer((json_int_t)q->dropped));
                if (extra)
                        json_object_update(o, extra);
                conn_send(q->conn, o, true);
        }
        json_decref(extra);
        ctl_request_free(q);
}

static void handle_line(ctl_conn *c, const char *line, size_t len) {
        json_error_t jerr;
        json_t *req = json_loadb(line, len, 0, &jerr);
        if (!req || !json_is_object(req)) {
                send_error(c, NULL, EINVAL, req ? "a request is a JSON object" : jerr.text);
                json_decref(req);
                return;
        }
        json_t *id = json_object_get(req, "id");
        json_t *proto = json_object_get(req, "protocol");
        if (id && !json_is_null(id) && !json_is_integer(id) &&
            !(json_is_string(id) && json_string_length(id) <= CTL_MAX_ID)) {
                /* not echoed: it is copied into every answer and stream event */
                send_error(c, NULL, EINVAL, "\"id\" must be an integer or a string of at most 256 bytes");
                goto out;
        }
        const char *verb = json_string_value(json_object_get(req, "verb"));
        json_t *args = json_object_get(req, "args");
        if (proto && (!json_is_integer(proto) || json_integer_value(proto) != CTL_PROTOCOL)) {
                send_error(c, id, EPROTO, "unsupported protocol version (agentd speaks 1)");
                goto out;
        }
        if (!verb) {
                send_error(c, id, EINVAL, "missing \"verb\"");
                goto out;
        }
        if (args && !json_is_object(args)) {
                send_error(c, id, EINVAL, "\"args\" must be an object");
                goto out;
        }
        const ctl_verb *v = ctl_verb_find(verb);
        if (!v) {
                char msg[256];
                snprintf(msg, sizeof msg, "unknown verb \"%.100s\"", verb);
                send_error(c, id, EOPNOTSUPP, msg);
                goto out;
        }
        if (v->mutating && !c->admin) {
                char msg[256];
                snprintf(msg, sizeof msg, "permission denied: %s changes the agent and needs root (uid %u is read-only)",
                         verb, (unsigned)c->uid);
                send_error(c, id, EPERM, msg);
                goto out;
        }
        if (v->stream) {
                size_t uid_streams = 0;
                for (const ctl_conn *o = c->control->conns; o; o = o->next)
                        if (o->uid == c->uid)
                                uid_streams += o->n_streams;
                if (c->n_streams >= CTL_MAX_STREAMS_CONN || uid_streams >= CTL_MAX_STREAMS_UID) {
                        char msg[256];
                        snprintf(msg, sizeof msg,
                                 "too many streams: %zu on this connection (at most %u), %zu of uid %u (at most %u)",
                                 c->n_streams, CTL_MAX_STREAMS_CONN, uid_streams, (unsigned)c->uid, CTL_MAX_STREAMS_UID);
                        send_error(c, id, EBUSY, msg);
                        goto out;
                }
        }
        ctl_request *q = new0(ctl_request, 1);
        if (!q) {
                send_error(c, id, ENOMEM, "out of memory");
                goto out;
        }
        q->conn = c;
        q->stream = v->stream;
        c->n_pending++;
        c->n_streams += v->stream;
        q->agent = c->control->agent;
        q->id = json_incref(id);
        q->verb = strdup(verb);
        q->args = args ? json_incref(args) : json_object();
        q->admin = c->admin;
        q->next = c->requests;
        c->requests = q;
        const char *target = json_string_value(json_object_get(q->args, "agent"));
        if (target && !streq(target, c->control->agent->config->name))
                ctl_forward(q, target);
        else
                v->run(q);
out:
        json_decref(req);
}

/* Handles the complete lines received so far, within one wake-up's budget, unless the
 * peer stopped reading our answers (they wait in the buffer until it does) or has
 * too many requests pending. What is left is resumed from the loop (conn_schedule). */
static void conn_process(ctl_conn *c) {
        size_t start = 0, i = c->in_scanned;
        unsigned lines = 0;
        uint64_t t0 = now_monotonic_us();
        c->batch = true;
        c->paused = false;
        while (i < c->in_len) {
                if (!conn_can_process(c)) {
                        c->paused = c->n_pending >= CTL_MAX_PENDING;
                        break;
                }
                if (lines >= CTL_LINES_PER_WAKEUP || (lines > 0 && now_monotonic_us() - t0 >= CTL_USEC_PER_WAKEUP))
                        break; /* the rest in a later turn of the loop */
                char *nl = memchr(c->in + i, '\n', c->in_len - i);
                if (!nl) {
                        i = c->in_len;
                        break;
                }
                size_t end = (size_t)(nl - c->in);
                if (end - start > CTL_MAX_LINE) {
                        i = c->in_len;
                        break; /* refused below */
                }
                if (end > start) {
                        handle_line(c, c->in + start, end - start);
                        lines++;
                }
                start = i = end + 1;
        }
        c->batch = false;
        if (c->closing) {
                c->in_len = c->in_scanned = 0;
                return;
        }
        if (start > 0) {
                memmove(c->in, c->in + start, c->in_len - start);
                c->in_len -= start;
                i -= start;
        }
        c->in_scanned = i;
        if (c->in_scanned == c->in_len && c->in_len > CTL_MAX_LINE) {
                send_error(c, NULL, E2BIG, "request too large (the limit is 1048576 bytes a line)");
                c->closing = true;
                c->in_len = c->in_scanned = 0;
        }
        if (lines)
                c->active_us = now_monotonic_us();
        if (c->in_len == 0 && c->in_cap > CTL_IN_KEEP) {
                free(c->in);
                c->in = NULL;
                c->in_cap = 0;
        }
}

/* One read of at most CTL_READ_CHUNK bytes: more waits for the next wake-up, so one
 * peer cannot keep the loop here. 0, or -errno when the connection is broken. */
static int conn_read(ctl_conn *c) {
        if (c->eof)
                return 0;
        if (c->closing) {
                /* refused or oversized: nothing more it sends is handled */
                char drain[4096];
                for (int k = 0; k < (int)(CTL_READ_CHUNK / sizeof drain); k++) {
                        ssize_t n = recv(c->fd, drain, sizeof drain, MSG_DONTWAIT);
                        if (n == 0)
                                c->eof = true;
                        if (n <= 0)
                                break;
                }
                return 0;
        }
        if (c->in_cap - c->in_len < CTL_READ_CHUNK) {
                size_t ncap = MAX(c->in_cap * 2, c->in_len + CTL_READ_CHUNK);
                char *n = realloc(c->in, ncap);
                if (!n)
                        return -ENOMEM;
                c->in = n;
                c->in_cap = ncap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, CTL_READ_CHUNK, MSG_DONTWAIT);
        if (n < 0)
                return errno == EINTR || errno == EAGAIN ? 0 : -errno;
        if (n == 0) {
                c->eof = true;
                return 0;
        }
        c->in_len += (size_t)n;
        c->active_us = now_monotonic_us();
        return 0;
}

static bool conn_finished(const ctl_conn *c) {
        if (conn_unsent(c) > 0)
                return false;
        return c->closing || (c->eof && c->in_len == 0 && (c->n_pending == 0 || c->gone));
}

/* After any event of a connection: handle what can be, flush, re-arm, close when done. */
static void conn_step(ctl_conn *c) {
        if (!c->closing && c->in_scanned < c->in_len)
                conn_process(c);
        if (c->eof && !c->closing && c->in_len > 0 && c->in_scanned == c->in_len && conn_can_process(c)) {
                /* the last request of a peer that shut its side, without its newline */
                c->batch = true;
                handle_line(c, c->in, c->in_len);
                c->batch = false;
                c->in_len = c->in_scanned = 0;
        }
        conn_flush(c);
        if (conn_finished(c)) {
                conn_free(c);
                return;
        }
        conn_update_events(c);
}

static int on_conn_resume(sd_event_source *s, void *userdata) {
        conn_step(userdata);
        return 0;
}

static int on_conn_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ctl_conn *c = userdata;
        if (revents & (EPOLLHUP | EPOLLERR))
                /* both directions are shut: the requests it sent before are still
                 * handled, in budgeted turns, but nothing we answer can arrive (a peer
                 * that wants its answers shuts only its writing side) */
                c->gone = true;
        if (revents & EPOLLOUT)
                conn_flush(c);
        bool want_input = (revents & EPOLLIN) || (c->gone && c->in_scanned == c->in_len);
        if (want_input && conn_read(c) < 0) {
                conn_free(c);
                return 0;
        }
        conn_step(c);
        return 0;
}

static void spare_reopen(control *ctl) {
        if (ctl->spare_fd < 0)
                ctl->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void conn_free(ctl_conn *c) {
        control *ctl = c->control;
        LIST_UNLINK(ctl->conns, c);
        ctl->n_conns--;
        while (c->requests) {
                ctl_request *q = c->requests;
                c->requests = q->next;
                q->conn = NULL;
                if (q->on_close)
                        q->on_close(q); /* the verb cancels its work and frees q */
                else
                        ctl_request_free(q);
        }
        sd_event_source_disable_unref(c->source);
        sd_event_source_disable_unref(c->resume);
        if (c->fd >= 0)
                close(c->fd);
        free(c->in);
        conn_release_out(c);
        free(c);
        spare_reopen(ctl); /* a descriptor is free again */
}

static uint64_t conn_deadline(const ctl_conn *c, const control_config *l) {
        if (conn_unsent(c) > 0)
                return c->out_since_us + l->send_timeout_ms * USEC_PER_MSEC;
        if (c->n_pending == 0)
                return c->active_us + l->idle_timeout_ms * USEC_PER_MSEC;
        return UINT64_MAX; /* a stream or a call in progress, nothing to send */
}

static int on_sweep(sd_event_source *s, uint64_t usec, void *userdata) {
        control *ctl = userdata;
        control_config l = limits(ctl);
        uint64_t now = now_monotonic_us(), next = UINT64_MAX;
        for (ctl_conn *c = ctl->conns, *n; c; c = n) {
                n = c->next;
                uint64_t d = conn_deadline(c, &l);
                if (d <= now) {
                        bool stuck = conn_unsent(c) > 0;
                        log_debug("Control: closing the connection of uid %u (pid %d): %s.", (unsigned)c->uid, (int)c->pid,
                                  stuck ? "it read none of its output within control.send_timeout"
                                        : "idle for control.idle_timeout");
                        ctl->timed_out++;
                        conn_free(c);
                        continue;
                }
                next = MIN(next, d);
        }
        if (next != UINT64_MAX) {
                sd_event_source_set_time(s, next);
                sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        }
        return 0;
}

/* Makes sure the sweep runs no later than when_us. */
static void control_arm_sweep(control *ctl, uint64_t when_us) {
        if (!ctl->sweep) {
                if (sd_event_add_time(ctl->agent->event, &ctl->sweep, CLOCK_MONOTONIC, when_us, 10 * USEC_PER_MSEC,
                                      on_sweep, ctl) < 0)
                        ctl->sweep = NULL;
                return;
        }
        int enabled = SD_EVENT_OFF;
        uint64_t t = 0;
        sd_event_source_get_enabled(ctl->sweep, &enabled);
        sd_event_source_get_time(ctl->sweep, &t);
        if (enabled == SD_EVENT_OFF || t > when_us) {
                sd_event_source_set_time(ctl->sweep, when_us);
                sd_event_source_set_enabled(ctl->sweep, SD_EVENT_ONESHOT);
        }
}

static bool peer_in_group(int fd, gid_t primary, gid_t want) {
        if (primary == want)
                return true;
        gid_t groups[256];
        socklen_t len = sizeof groups;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
                return false;
        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                if (groups[i] == want)
                        return true;
        return false;
}

/* Tells a peer why it is not served, in one best-effort line instead of the hello,
 * and closes. One log line per refusal would let peers fill the log: rate-limited. */
static void refuse(control *ctl, int fd, const struct ucred *cred, int error, const char *msg) {
        unsigned long long suppressed = 0;
        ctl->refused++;
        if (log_ratelimit_test(&ctl->refuse_log, now_monotonic_us(), &suppressed)) {
                if (suppressed)
                        log_notice("Control: refused uid %u (pid %d): %s (and %llu more refused meanwhile).",
                                   (unsigned)cred->uid, (int)cred->pid, msg, suppressed);
                else
                        log_notice("Control: refused uid %u (pid %d): %s.", (unsigned)cred->uid, (int)cred->pid, msg);
        }
        json_t *o = json_pack("{s:n, s:b, s:s, s:s}", "id", "ok", 0, "error", msg, "errno", errno_name(error));
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (text) {
                size_t len = strlen(text);
                text[len] = '\n'; /* the NUL: a line on the wire */
                ssize_t _unused_ n = send(fd, text, len + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                free(text);
        }
        close(fd);
}

/* A new peer. last_resort: its descriptor is the spare one, kept only for root. */
static void conn_accept(control *ctl, int cfd, bool last_resort) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                close(cfd);
                return;
        }
        bool admin = cred.uid == 0 || cred.uid == geteuid();
        bool reader = admin || (ctl->have_group && peer_in_group(cfd, cred.gid, ctl->organism_gid));
        char msg[256];
        if (!reader) {
                snprintf(msg, sizeof msg, "permission denied: uid %u is neither root nor a member of group organism",
                         (unsigned)cred.uid);
                return refuse(ctl, cfd, &cred, EACCES, msg);
        }
        if (last_resort && !admin)
                return refuse(ctl, cfd, &cred, EBUSY, "agentd is out of file descriptors, try again later");
        control_config l = limits(ctl);
        size_t same_uid = 0;
        for (const ctl_conn *o = ctl->conns; o; o = o->next)
                same_uid += o->uid == cred.uid;
        if (!admin && same_uid >= l.max_connections_per_uid) {
                snprintf(msg, sizeof msg, "too many connections of uid %u (control.max_connections_per_uid is %zu)",
                         (unsigned)cred.uid, l.max_connections_per_uid);
                return refuse(ctl, cfd, &cred, EBUSY, msg);
        }
        if (ctl->n_conns >= l.max_connections - (admin ? 0 : CTL_ROOT_RESERVED)) {
                snprintf(msg, sizeof msg, "too many connections (control.max_connections is %zu)", l.max_connections);
                return refuse(ctl, cfd, &cred, EBUSY, msg);
        }
        ctl_conn *c = new0(ctl_conn, 1);
        if (!c) {
                close(cfd);
                return;
        }
        c->control = ctl;
        c->fd = cfd;
        c->uid = cred.uid;
        c->pid = cred.pid;
        c->admin = admin;
        c->active_us = now_monotonic_us();
        if (sd_event_add_io(ctl->agent->event, &c->source, cfd, EPOLLIN, on_conn_io, c) < 0) {
                close(cfd);
                free(c);
                return;
        }
        c->next = ctl->conns;
        ctl->conns = c;
        ctl->n_conns++;
        ctl->accepted++;
        control_arm_sweep(ctl, c->active_us + l.idle_timeout_ms * USEC_PER_MSEC);
        json_t *hello = json_pack("{s:s, s:i, s:s, s:s, s:s}", "hello", "agentd", "protocol", CTL_PROTOCOL, "version",
                                  ORG_VERSION, "agent", ctl->agent->config->name, "access",
                                  c->admin ? "admin" : "read-only");
        conn_send(c, hello, true);
}

static int on_listen_resume(sd_event_source *s, uint64_t usec, void *userdata) {
        control *ctl = userdata;
        spare_reopen(ctl);
        sd_event_source_set_enabled(ctl->source, SD_EVENT_ON);
        return 0;
}

/* Out of file descriptors (or memory): the listener stays readable and accept4 cannot
 * clear it, so polling on would spin. The spare descriptor lets the first waiting
 * peer in (served if it is root, told why otherwise), then the listener rests. */
static void accept_exhausted(control *ctl, int error) {
        unsigned long long suppressed = 0;
        if (ctl->spare_fd >= 0 && (error == EMFILE || error == ENFILE)) {
                close(ctl->spare_fd);
                ctl->spare_fd = -1;
                int cfd = accept4(ctl->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (cfd >= 0)
                        conn_accept(ctl, cfd, true);
                spare_reopen(ctl); /* fails while root's connection holds it: retried at each close */
        }
        if (log_ratelimit_test(&ctl->exhausted_log, now_monotonic_us(), &suppressed))
                log_warning_errno(error, "Control: cannot accept connections (%m); the listener pauses %llu ms.",
                                  (unsigned long long)CTL_LISTEN_PAUSE_MS);
        sd_event_source_set_enabled(ctl->source, SD_EVENT_OFF);
        uint64_t until = now_monotonic_us() + CTL_LISTEN_PAUSE_MS * USEC_PER_MSEC;
        if (!ctl->listen_pause) {
                if (sd_event_add_time(ctl->agent->event, &ctl->listen_pause, CLOCK_MONOTONIC, until, USEC_PER_MSEC,
                                      on_listen_resume, ctl) < 0)
                        sd_event_source_set_enabled(ctl->source, SD_EVENT_ON); /* better spin than go deaf */
                return;
        }
        sd_event_source_set_time(ctl->listen_pause, until);
        sd_event_source_set_enabled(ctl->listen_pause, SD_EVENT_ONESHOT);
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        control *ctl = userdata;
        int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd >= 0)
                conn_accept(ctl, cfd, false);
        else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                accept_exhausted(ctl, errno);
        return 0;
}

json_t *control_status(const control *c) {
        if (!c)
                return json_null();
        control_config l = limits(c);
        return json_pack("{s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I}}", "connections", (json_int_t)c->n_conns,
                         "output_bytes", (json_int_t)c->out_bytes, "accepted", (json_int_t)c->accepted, "refused",
                         (json_int_t)c->refused, "timed_out", (json_int_t)c->timed_out, "limits", "max_connections",
                         (json_int_t)l.max_connections, "max_connections_per_uid", (json_int_t)l.max_connections_per_uid,
                         "idle_timeout_ms", (json_int_t)l.idle_timeout_ms, "send_timeout_ms",
                         (json_int_t)l.send_timeout_ms, "max_output", (json_int_t)l.max_output);
}

int control_new(agent *a, const char *path, control **ret) {
        _cleanup_free_ char *dir = NULL;
        control *c = new0(control, 1);
        if (!c)
                return -ENOMEM;
        c->agent = a;
        c->fd = -1;
        c->refuse_log = LOG_RATELIMIT_INIT(10 * USEC_PER_SEC, 5);
        c->exhausted_log = LOG_RATELIMIT_INIT(10 * USEC_PER_SEC, 1);
        c->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        c->path = strdup(path);
        int r;
        if (!c->path) {
                r = -ENOMEM;
                goto fail;
        }
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof sa.sun_path) {
                r = log_error_errno(ENAMETOOLONG, "Control socket path %s is too long.", path);
                goto fail;
        }
        memcpy(sa.sun_path, path, strlen(path) + 1);

        dir = strdup(path);
        if (dir && mkdir(dirname(dir), 0755) < 0 && errno != EEXIST) {
                r = log_error_errno(errno, "Failed to create the directory of %s: %m", path);
                goto fail;
        }
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (c->fd < 0) {
                r = -errno;
                goto fail;
        }
        /* A stale socket of a dead agentd is replaced; a live one is not stolen. */
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
                r = log_error_errno(EADDRINUSE, "Another agentd listens on %s.", path);
                goto fail;
        }
        unlink(path);
        struct group *g = getgrnam("organism");
        if (g) {
                c->organism_gid = g->gr_gid;
                c->have_group = true;
        }
        mode_t old = umask(0117);
        r = bind(c->fd, (struct sockaddr *)&sa, sizeof sa);
        umask(old);
        if (r < 0) {
                r = log_error_errno(errno, "Failed to bind %s: %m", path);
                goto fail;
        }
        c->bound = true;
        if (c->have_group && geteuid() == 0 && chown(path, 0, c->organism_gid) < 0)
                log_warning_errno(errno, "Failed to give %s to group organism: %m", path);
        if (listen(c->fd, 64) < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(a->event, &c->source, c->fd, EPOLLIN, on_accept, c);
        if (r < 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        control_free(c);
        return r;
}

/* A control request from another agent, on the loop. */
static void remote_deliver(bus_client *bc, const bus_msg *m, void *userdata) {
        control *c = userdata;
        /* organism.ctl.<agent>._agent.<verb>, where the verb may hold dots (plugin.list) */
        const char *verb = strstr(m->m.subject, "._agent.") + strlen("._agent.");
        if (!m->m.reply)
                return; /* nobody to answer: not a request */
        ctl_request *q = new0(ctl_request, 1);
        if (!q)
                return;
        q->agent = c->agent;
        q->reply_subject = strdup(m->m.reply);
        q->verb = strdup(verb);
        json_error_t e;
        q->args = m->m.len ? json_loadb(m->m.data, m->m.len, 0, &e) : json_object();
        q->admin = c->remote_admin;
        if (!q->reply_subject || !q->verb) {
                ctl_request_free(q);
                return;
        }
        if (!json_is_object(q->args)) {
                json_decref(q->args);
                q->args = json_object();
                return ctl_reply_error(q, EINVAL, "the arguments of a remote request are a JSON object");
        }
        json_object_del(q->args, "agent");
        const ctl_verb *v = ctl_verb_find(verb);
        if (!v)
                return ctl_reply_error(q, EOPNOTSUPP, "unknown verb \"%.100s\"", verb);
        if (streq(verb, "bus.sub"))
                return ctl_reply_error(q, EOPNOTSUPP, "streams do not cross agents: run agentctl on %s itself",
                                       c->agent->config->name);
        if (v->mutating && !q->admin)
                return ctl_reply_error(q, EPERM,
                                       "permission denied: remote control of agent %s is read-only (bus.nats.remote_control)",
                                       c->agent->config->name);
        log_info("Control: %s from %s over the bus.", log_str(verb), log_str(m->m.origin ? m->m.origin : "?"));
        v->run(q);
}

int control_remote_start(control *c, bool admin) {
        _cleanup_free_ char *pattern = NULL;
        if (asprintf(&pattern, "organism.ctl.%s._agent.>", c->agent->config->name) < 0)
                return -ENOMEM;
        c->remote = bus_client_new(c->agent->bus, "control-remote", 0, remote_deliver, c);
        if (!c->remote)
                return -ENOMEM;
        c->remote_admin = admin;
        return bus_subscribe(c->remote, pattern, NULL);
}

void control_free(control *c) {
        if (!c)
                return;
        bus_client_free(c->remote);
        while (c->conns)
                conn_free(c->conns);
        sd_event_source_disable_unref(c->source);
        sd_event_source_disable_unref(c->listen_pause);
        sd_event_source_disable_unref(c->sweep);
        if (c->fd >= 0)
                close(c->fd);
        if (c->spare_fd >= 0)
                close(c->spare_fd);
        if (c->bound)
                unlink(c->path);
        free(c->path);
        free(c);
}
