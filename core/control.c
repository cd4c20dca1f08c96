/* control.c — the control socket server: listening, peer credentials, line framing,
 * bounded input and output, the hello, and dispatch of requests to ctl_verbs.c.
 * Nothing a peer sends can crash the daemon: malformed, oversized or unauthorised
 * requests get an error line. */
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
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
        bool bound;             /* the socket file is ours to remove */
        sd_event_source *source;
        ctl_conn *conns;
        bus_client *remote;     /* organism.ctl.<agent>._agent.* from other agents */
        bool remote_admin;
        gid_t organism_gid;
        bool have_group;
        uint64_t accepted, refused;
};

struct ctl_conn {
        control *control;
        ctl_conn *next;
        int fd;
        sd_event_source *source;
        bool admin;
        uid_t uid;
        pid_t pid;
        char *in;
        size_t in_len, in_cap;
        size_t in_scanned;      /* bytes of `in` already searched for a newline */
        char *out;
        size_t out_len, out_cap, out_off;
        bool closing;           /* close once the output is flushed */
        ctl_request *requests;  /* pending (async or streaming) */
};

static void conn_free(ctl_conn *c);

/* A peer that sends requests without reading the answers is not read from until it
 * has: unsent output stays bounded. */
static bool conn_output_full(const ctl_conn *c) { return c->out_len - c->out_off >= CTL_MAX_OUTPUT; }

static int conn_update_events(ctl_conn *c) {
        uint32_t ev = conn_output_full(c) ? 0 : EPOLLIN;
        if (c->out_len > c->out_off)
                ev |= EPOLLOUT;
        return sd_event_source_set_io_events(c->source, ev);
}

static void conn_flush(ctl_conn *c) {
        while (c->out_off < c->out_len) {
                ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                c->closing = true, c->out_off = c->out_len; /* peer gone: discard */
                        break;
                }
                c->out_off += (size_t)n;
        }
        if (c->out_off == c->out_len)
                c->out_off = c->out_len = 0;
        conn_update_events(c);
}

/* Appends one JSON line (stolen). force: replies are never dropped, only stream
 * events are, so a request always gets its answer. */
static int conn_send(ctl_conn *c, json_t *o, bool force) {
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!text)
                return -ENOMEM;
        size_t len = strlen(text);
        if (!force && c->out_len - c->out_off + len > CTL_MAX_OUTPUT) {
                free(text);
                return -ENOBUFS;
        }
        if (c->out_len + len + 1 > c->out_cap) {
                size_t ncap = MAX(c->out_cap * 2, c->out_len + len + 1 + 4096);
                char *n = realloc(c->out, ncap);
                if (!n) {
                        free(text);
                        return -ENOMEM;
                }
                c->out = n;
                c->out_cap = ncap;
        }
        memcpy(c->out + c->out_len, text, len);
        c->out[c->out_len + len] = '\n';
        c->out_len += len + 1;
        free(text);
        conn_flush(c);
        return 0;
}

static void request_unlink(ctl_request *q) {
        if (!q->conn)
                return;
        LIST_UNLINK(q->conn->requests, q);
        q->conn = NULL;
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
        ctl_request *q = new0(ctl_request, 1);
        if (!q) {
                send_error(c, id, ENOMEM, "out of memory");
                goto out;
        }
        q->conn = c;
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

/* Handles the complete lines received so far, unless the peer stopped reading our
 * answers (they wait in the buffer until it does). */
static void conn_process(ctl_conn *c) {
        size_t start = 0, i = c->in_scanned;
        for (; i < c->in_len && !c->closing && !conn_output_full(c); i++) {
                if (c->in[i] != '\n')
                        continue;
                if (i > start)
                        handle_line(c, c->in + start, i - start);
                start = i + 1;
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
        c->in_scanned = i - start;
        if (c->in_len > CTL_MAX_LINE && !c->closing) {
                send_error(c, NULL, E2BIG, "request too large (the limit is 1048576 bytes a line)");
                c->closing = true;
                c->in_len = c->in_scanned = 0;
        }
}

static int on_conn_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        ctl_conn *c = userdata;
        if (revents & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
                conn_flush(c); /* a peer that hung up fails the send: closing, then freed below */
                if (!c->closing && !conn_output_full(c))
                        conn_process(c); /* lines that waited for the peer to read */
        }
        if (c->closing) {
                /* refused or oversized: nothing more it sends is handled */
                char drain[4096];
                while (recv(fd, drain, sizeof drain, MSG_DONTWAIT) > 0)
                        ;
        } else if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                while (!c->closing && !conn_output_full(c)) {
                        if (c->in_cap - c->in_len < 4096) {
                                size_t ncap = c->in_cap ? c->in_cap * 2 : 8192;
                                char *n = realloc(c->in, ncap);
                                if (!n) {
                                        conn_free(c);
                                        return 0;
                                }
                                c->in = n;
                                c->in_cap = ncap;
                        }
                        ssize_t n = recv(fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                if (errno == EAGAIN)
                                        break;
                                conn_free(c);
                                return 0;
                        }
                        if (n == 0) {
                                conn_free(c);
                                return 0;
                        }
                        c->in_len += (size_t)n;
                        conn_process(c);
                }
        }
        if (c->closing && c->out_len == c->out_off) {
                conn_free(c);
                return 0;
        }
        conn_update_events(c);
        return 0;
}

static void conn_free(ctl_conn *c) {
        control *ctl = c->control;
        LIST_UNLINK(ctl->conns, c);
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
        if (c->fd >= 0)
                close(c->fd);
        free(c->in);
        free(c->out);
        free(c);
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

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        control *ctl = userdata;
        int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd < 0)
                return 0;
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                close(cfd);
                return 0;
        }
        ctl_conn *c = new0(ctl_conn, 1);
        if (!c) {
                close(cfd);
                return 0;
        }
        c->control = ctl;
        c->fd = cfd;
        c->uid = cred.uid;
        c->pid = cred.pid;
        c->admin = cred.uid == 0 || cred.uid == geteuid();
        bool reader = c->admin || (ctl->have_group && peer_in_group(cfd, cred.gid, ctl->organism_gid));
        if (sd_event_add_io(ctl->agent->event, &c->source, cfd, EPOLLIN, on_conn_io, c) < 0) {
                close(cfd);
                free(c);
                return 0;
        }
        c->next = ctl->conns;
        ctl->conns = c;
        if (!reader) {
                ctl->refused++;
                log_notice("Control: refused uid %u (pid %d): neither root nor in group organism.", (unsigned)cred.uid,
                           (int)cred.pid);
                char msg[256];
                snprintf(msg, sizeof msg,
                         "permission denied: uid %u is neither root nor a member of group organism", (unsigned)cred.uid);
                send_error(c, NULL, EACCES, msg);
                c->closing = true;
                if (c->out_len == c->out_off)
                        conn_free(c);
                return 0;
        }
        ctl->accepted++;
        json_t *hello = json_pack("{s:s, s:i, s:s, s:s, s:s}", "hello", "agentd", "protocol", CTL_PROTOCOL, "version",
                                  ORG_VERSION, "agent", ctl->agent->config->name, "access",
                                  c->admin ? "admin" : "read-only");
        conn_send(c, hello, true);
        return 0;
}

int control_new(agent *a, const char *path, control **ret) {
        _cleanup_free_ char *dir = NULL;
        control *c = new0(control, 1);
        if (!c)
                return -ENOMEM;
        c->agent = a;
        c->fd = -1;
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
        log_info("Control: %s from %s over the bus.", verb, m->m.origin ? m->m.origin : "?");
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
        if (c->fd >= 0)
                close(c->fd);
        if (c->bound)
                unlink(c->path);
        free(c->path);
        free(c);
}
