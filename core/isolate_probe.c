/* isolate_probe.c — an isolated instance's .so is never dlopened by agentd itself: its
 * constructors (and anything its descriptor's pointers lead to) run in a short-lived
 * child (`agentd --isolated-probe FD PATH`), which sends the descriptor back as JSON.
 * agentd rebuilds from it a plugin_so whose descriptor has the same name, version,
 * config map and verbs, and stand-ins for the hooks it has (they are never called: the
 * hooks of an isolated instance run in its child), so the config check, `plugin info`,
 * the verbs' permissions and the hook list work as for a loaded plugin. */
#include <fcntl.h>
#include <stdarg.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "isolate.h"
#include "log.h"
#include "util.h"

#define PROBE_OUT_MAX    (4u << 20)
#define PROBE_TIMEOUT_MS 10000

typedef struct probe_so {
        plugin_so so; /* first: what callers hold */
        org_plugin desc;
        json_t *json;  /* every string of desc points into it */
        void **blocks; /* the entry and verb tables */
        size_t n_blocks;
} probe_so;

/* --- the child: descriptor to JSON ------------------------------------------------ */

static json_t *str_or_null(const char *s) {
        return s ? json_string(s) : json_null();
}

static json_t *entries_to_json(const org_config_entry *t, size_t stride, unsigned depth) {
        json_t *a = json_array();
        for (size_t i = 0; t && a && depth < 8; i++) {
                const org_config_entry *e = (const org_config_entry *)((const char *)t + i * stride);
                if (!e->key)
                        break;
                json_t *o =
                        json_pack("{s:s, s:i, s:o, s:b, s:o}", "key", e->key, "type", (int)e->type, "default",
                                  str_or_null(e->default_value), "required", e->required, "help", str_or_null(e->help));
                if (!o)
                        continue;
                if (e->children)
                        json_object_set_new(o, "children", entries_to_json(e->children, stride, depth + 1));
                if (stride >= sizeof(org_config_entry)) {
                        json_object_set_new(o, "min", str_or_null(e->min));
                        json_object_set_new(o, "max", str_or_null(e->max));
                        json_object_set_new(o, "format", str_or_null(e->format));
                        if (e->choices) {
                                json_t *c = json_array();
                                for (size_t k = 0; e->choices[k] && k < 1024; k++)
                                        json_array_append_new(c, json_string(e->choices[k]));
                                json_object_set_new(o, "choices", c);
                        }
                }
                json_array_append_new(a, o);
        }
        return a;
}

static json_t *desc_to_json(const plugin_so *so) {
        const org_plugin *d = so->desc;
        size_t stride = 0;
        if (d->struct_size >= offsetof(org_plugin, config_entry_size) + sizeof(uint32_t))
                stride = d->config_entry_size;
        if (stride < offsetof(org_config_entry, min))
                stride = offsetof(org_config_entry, min); /* the first release's entry */
        json_t *hooks = json_array();
#define HOOK(f)                                                                                                        \
        if (PLUGIN_HOOK(so, f))                                                                                        \
                json_array_append_new(hooks, json_string(#f));
        HOOK(tick)
        HOOK(handle)
        HOOK(call)
        HOOK(fini)
        HOOK(verify)
        HOOK(save_state)
        HOOK(restore_state)
#undef HOOK
        json_t *verbs = json_array();
        for (size_t i = 0; d->verbs && d->verbs[i].name && i < 1024; i++)
                json_array_append_new(verbs, json_pack("{s:s, s:b, s:o, s:o}", "name", d->verbs[i].name, "mutating",
                                                       d->verbs[i].mutating, "args", str_or_null(d->verbs[i].args),
                                                       "help", str_or_null(d->verbs[i].help)));
        return json_pack("{s:s, s:o, s:o, s:o, s:o, s:o}", "name", d->name, "version", str_or_null(d->version),
                         "summary", str_or_null(d->summary), "hooks", hooks, "verbs", verbs, "config_map",
                         d->config_map ? entries_to_json(d->config_map, stride, 0) : json_null());
}

static int probe_child_run(int argc, char **argv) {
        if (argc != 5)
                return 2;
        char *end = NULL;
        long fd = strtol(argv[2], &end, 10);
        if (!end || *end || fd < 0 || fd > INT32_MAX)
                return 2;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        log_open();
        plugin_so *so = NULL;
        char *err = NULL;
        int r = loader_open(argv[3], streq(argv[4], "1"), &so, &err);
        json_t *o = r < 0 ? json_pack("{s:s, s:i}", "error", err ? err : strerror(-r), "errno", -r) : desc_to_json(so);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (!text)
                return 1;
        size_t len = strlen(text), off = 0;
        while (off < len) {
                ssize_t n = write((int)fd, text + off, len - off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return 1;
                off += (size_t)n;
        }
        return 0;
}

int isolate_probe_main(int argc, char **argv) {
        int r = probe_child_run(argc, argv);
        /* the plugin is still mapped: its destructors and agentd's exit path stay out */
        _exit(r);
}

/* --- agentd: JSON to a stand-in descriptor ---------------------------------------- */

static int stub_init(const org_host *host, org_ctx *ctx, void **ret_state) {
        return -EOPNOTSUPP;
}
static int stub_tick(void *state) {
        return -EOPNOTSUPP;
}
static int stub_handle(void *state, const org_msg *msg) {
        return -EOPNOTSUPP;
}
static int stub_call(void *state, const char *verb, const org_msg *req) {
        return -EOPNOTSUPP;
}
static void stub_fini(void *state) {}
static int stub_verify(void *state, char **ret_json) {
        return -EOPNOTSUPP;
}
static int stub_save(void *state, void **ret_blob, size_t *ret_len) {
        return -EOPNOTSUPP;
}
static int stub_restore(void *state, const void *blob, size_t len) {
        return -EOPNOTSUPP;
}

static void *keep_block(probe_so *p, size_t size) {
        void *b = calloc(1, size);
        void **v = b ? realloc(p->blocks, (p->n_blocks + 1) * sizeof(void *)) : NULL;
        if (!v) {
                free(b);
                return NULL;
        }
        p->blocks = v;
        p->blocks[p->n_blocks++] = b;
        return b;
}

static const char *jstr(json_t *o, const char *key) {
        return json_string_value(json_object_get(o, key));
}

static const org_config_entry *entries_from_json(probe_so *p, json_t *a, unsigned depth) {
        if (!json_is_array(a) || depth > 8)
                return NULL;
        size_t n = json_array_size(a);
        org_config_entry *t = keep_block(p, (n + 1) * sizeof(org_config_entry));
        if (!t)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                json_t *o = json_array_get(a, i);
                org_config_entry *e = &t[i];
                e->key = jstr(o, "key");
                if (!e->key)
                        return NULL;
                e->type = (org_config_type)json_integer_value(json_object_get(o, "type"));
                e->default_value = jstr(o, "default");
                e->required = json_is_true(json_object_get(o, "required"));
                e->help = jstr(o, "help");
                e->min = jstr(o, "min");
                e->max = jstr(o, "max");
                e->format = jstr(o, "format");
                json_t *ch = json_object_get(o, "children");
                if (ch && !(e->children = entries_from_json(p, ch, depth + 1)))
                        return NULL;
                json_t *c = json_object_get(o, "choices");
                if (json_is_array(c)) {
                        const char **v = keep_block(p, (json_array_size(c) + 1) * sizeof(char *));
                        if (!v)
                                return NULL;
                        for (size_t k = 0; k < json_array_size(c); k++)
                                v[k] = json_string_value(json_array_get(c, k));
                        e->choices = v;
                }
        }
        return t;
}

static void probe_free(probe_so *p) {
        for (size_t i = 0; i < p->n_blocks; i++)
                free(p->blocks[i]);
        free(p->blocks);
        json_decref(p->json);
        free(p->so.path);
        free(p);
}

static int probe_build(const char *path, json_t *j, plugin_so **ret, char **ret_error) {
        probe_so *p = new0(probe_so, 1);
        if (!p) {
                json_decref(j);
                return -ENOMEM;
        }
        p->json = j;
        p->so.path = strdup(path);
        p->so.fd = -1;
        p->so.desc = &p->desc;
        org_plugin *d = &p->desc;
        d->abi_version = ORG_PLUGIN_ABI_VERSION;
        d->struct_size = sizeof(org_plugin);
        d->config_entry_size = sizeof(org_config_entry);
        d->name = jstr(j, "name");
        d->version = jstr(j, "version");
        d->summary = jstr(j, "summary");
        d->init = stub_init;
        json_t *hooks = json_object_get(j, "hooks"), *h;
        size_t i;
        json_array_foreach (hooks, i, h) {
                const char *s = json_string_value(h);
                if (!s)
                        continue;
                if (streq(s, "tick"))
                        d->tick = stub_tick;
                else if (streq(s, "handle"))
                        d->handle = stub_handle;
                else if (streq(s, "call"))
                        d->call = stub_call;
                else if (streq(s, "fini"))
                        d->fini = stub_fini;
                else if (streq(s, "verify"))
                        d->verify = stub_verify;
                else if (streq(s, "save_state"))
                        d->save_state = stub_save;
                else if (streq(s, "restore_state"))
                        d->restore_state = stub_restore;
        }
        json_t *cm = json_object_get(j, "config_map");
        bool bad = !p->so.path || !d->name;
        if (!bad && cm && !json_is_null(cm) && !(d->config_map = entries_from_json(p, cm, 0)))
                bad = true;
        json_t *verbs = json_object_get(j, "verbs");
        if (!bad && json_array_size(verbs) > 0) {
                org_verb *v = keep_block(p, (json_array_size(verbs) + 1) * sizeof(org_verb));
                json_t *o;
                if (!v)
                        bad = true;
                json_array_foreach (verbs, i, o) {
                        if (!v || !(v[i].name = jstr(o, "name"))) {
                                bad = true;
                                break;
                        }
                        v[i].mutating = json_is_true(json_object_get(o, "mutating"));
                        v[i].args = jstr(o, "args");
                        v[i].help = jstr(o, "help");
                }
                d->verbs = v;
        }
        if (bad) {
                probe_free(p);
                if (asprintf(ret_error, "%s: the probe sent an unusable descriptor", path) < 0)
                        *ret_error = NULL;
                return -EBADMSG;
        }
        *ret = &p->so;
        return 0;
}

static int probe_fail(char **ret_error, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int probe_fail(char **ret_error, int r, const char *fmt, ...) {
        if (ret_error) {
                va_list ap;
                va_start(ap, fmt);
                if (vasprintf(ret_error, fmt, ap) < 0)
                        *ret_error = NULL;
                va_end(ap);
        }
        return r;
}

static int isolate_probe(const char *path, bool check_perms, plugin_so **ret, char **ret_error) {
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) < 0)
                return probe_fail(ret_error, -errno, "%s: cannot probe: %s", path, strerror(errno));
        int wfd = fcntl(pfd[1], F_DUPFD_CLOEXEC, 10);
        close(pfd[1]);
        char fdtext[16];
        snprintf(fdtext, sizeof fdtext, "%d", 3);
        char *const argv[] = {(char *)"agentd[probe]",
                              (char *)"--isolated-probe",
                              fdtext,
                              (char *)path,
                              (char *)(check_perms ? "1" : "0"),
                              NULL};
        char **env = isolate_child_env();
        pid_t pid = wfd < 0 || !env ? -1 : fork();
        if (pid == 0) {
                dup2(wfd, 3);
                execve("/proc/self/exe", argv, env);
                _exit(127);
        }
        int e = env ? errno : ENOMEM;
        strv_free(env);
        if (wfd >= 0)
                close(wfd);
        if (pid < 0) {
                close(pfd[0]);
                return probe_fail(ret_error, -e, "%s: cannot probe: %s", path, strerror(e));
        }
        char *buf = NULL;
        size_t len = 0, cap = 0;
        uint64_t deadline = now_monotonic_us() + PROBE_TIMEOUT_MS * USEC_PER_MSEC;
        bool timed_out = false;
        for (;;) {
                uint64_t now = now_monotonic_us();
                if (now >= deadline) {
                        timed_out = true;
                        break;
                }
                struct pollfd p = {.fd = pfd[0], .events = POLLIN};
                if (poll(&p, 1, (int)((deadline - now) / USEC_PER_MSEC) + 1) <= 0)
                        continue;
                if (cap - len < 65536) {
                        char *nb = cap < PROBE_OUT_MAX ? realloc(buf, cap + 65536) : NULL;
                        if (!nb)
                                break;
                        buf = nb;
                        cap += 65536;
                }
                ssize_t n = read(pfd[0], buf + len, cap - len - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        close(pfd[0]);
        kill(pid, SIGKILL); /* done or stuck: it has nothing more to say */
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        if (buf)
                buf[len] = '\0';
        json_error_t je;
        json_t *j = buf && len ? json_loads(buf, 0, &je) : NULL;
        free(buf);
        if (!j) {
                if (timed_out)
                        return probe_fail(ret_error, -ETIMEDOUT, "%s: reading its descriptor took longer than %u s",
                                          path, PROBE_TIMEOUT_MS / 1000);
                if (WIFSIGNALED(status))
                        return probe_fail(ret_error, -ENOEXEC,
                                          "%s: reading its descriptor was killed by signal %d (%s): a constructor "
                                          "crashed?",
                                          path, WTERMSIG(status), strsignal(WTERMSIG(status)));
                return probe_fail(ret_error, -ENOEXEC, "%s: reading its descriptor failed (exit status %d)", path,
                                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        const char *err = jstr(j, "error");
        if (err) {
                int r = -(int)json_integer_value(json_object_get(j, "errno"));
                probe_fail(ret_error, r < 0 ? r : -EINVAL, "%s", err);
                json_decref(j);
                return r < 0 ? r : -EINVAL;
        }
        return probe_build(path, j, ret, ret_error);
}

int plugin_open(const char *path, bool check_perms, bool isolated, plugin_so **ret, char **ret_error) {
        return isolated ? isolate_probe(path, check_perms, ret, ret_error)
                        : loader_open(path, check_perms, ret, ret_error);
}

void plugin_close(plugin_so *so) {
        if (so && !so->dl) /* a stand-in from isolate_probe (loader_open always maps) */
                probe_free((probe_so *)so);
        else
                loader_close(so);
}
