/* agentctl.c — the command line of organism: turns words into control requests and
 * replies into tables (or JSON with --json). It holds no logic of the agent's own; the
 * daemon decides and checks everything. */
#include <getopt.h>
#include <stdarg.h>

#include "ctl_client.h"
#include "org-build-config.h"
#include "table.h"
#include "util.h"

#define DEFAULT_SOCKET "/run/organism/agentd.sock"

enum {
        EXIT_OK = 0,
        EXIT_FAILED = 1,   /* the daemon reported an error, a check failed, drift found */
        EXIT_USAGE = 2,
        EXIT_NOAGENT = 3,  /* cannot reach agentd */
        EXIT_DENIED = 4,
        EXIT_TIMEOUT = 5,
};

static const char *arg_socket;
static const char *arg_agent;
#define MAX_AGENTS 64
static const char *arg_agents[MAX_AGENTS]; /* --agent given several times (audit only) */
static size_t n_arg_agents;
static bool arg_json;
static uint64_t arg_timeout_ms = 10000;

static void help(void) {
        printf("Usage: agentctl [OPTIONS] COMMAND ...\n"
               "\n"
               "Drive a running agentd through its control socket.\n"
               "\n"
               "Agent:\n"
               "  status                          agent, instances, bus counters\n"
               "  metrics [--text]                every counter and gauge (--text: Prometheus format)\n"
               "  audit [--all-agents]            run every plugin's verify hook (desired vs actual);\n"
               "                                  --all-agents (or --agent repeated): one table over\n"
               "                                  this agent and every agent seen on the NATS bus\n"
               "  agents                          this agent and the others heard on the NATS bus\n"
               "  config check [FILE]             check the config file (default: the running one)\n"
               "  config reload                   re-read the config; restart only what changed\n"
               "\n"
               "Plugins:\n"
               "  plugin list                     instances with state, counters, drops\n"
               "  plugin info NAME                an instance (or a plugin file) with its config map and verbs\n"
               "                                  (a plugin not loaded: root only, loading it runs its code)\n"
               "  plugin load NAME [--plugin P] [--path FILE.so] [--config JSON]\n"
               "                                  start a new instance (not written to the config)\n"
               "  plugin unload NAME --confirm    stop and remove an instance\n"
               "  plugin reload NAME              replace an instance with the .so now on disk; if it\n"
               "                                  fails, the running version stays\n"
               "  plugin enable NAME | disable NAME\n"
               "  call INSTANCE VERB [JSON | WORD... --KEY VALUE...]\n"
               "                                  run a plugin verb (also: agentctl INSTANCE VERB ...);\n"
               "                                  words become {\"args\": [WORD...], \"KEY\": VALUE}\n"
               "\n"
               "Bus:\n"
               "  bus pub SUBJECT [JSON] [-H KEY=VALUE]...\n"
               "  bus sub PATTERN [--count N] [--timeout SEC]\n"
               "                                  one JSON line per message: subject, headers, payload\n"
               "  bus request SUBJECT [JSON]      publish with a reply subject, print the first reply\n"
               "\n"
               "Options:\n"
               "  -s, --socket PATH   control socket (default $AGENTCTL_SOCKET or %s)\n"
               "  -a, --agent NAME    act on another agent through the NATS bridge of this one\n"
               "                      (audit: may be repeated)\n"
               "                      (its bus.nats.remote_control decides what it allows)\n"
               "      --json          print the daemon's JSON instead of tables\n"
               "  -t, --timeout SEC   how long to wait for a reply (default 10; bus sub: none)\n"
               "      --version       print the version\n"
               "  -h, --help          this text\n"
               "\n"
               "Access: root may use every command; members of group organism the read-only ones\n"
               "(status, metrics, audit, config check, plugin list/info, bus sub, read-only verbs).\n"
               "\n"
               "Exit status: 0 success, 1 the agent reported an error (or a check or audit failed),\n"
               "2 usage error, 3 agentd not reachable, 4 permission denied, 5 time-out.\n",
               DEFAULT_SOCKET);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "agentctl: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\nTry 'agentctl --help'.\n");
        va_end(ap);
        return EXIT_USAGE;
}

static int connect_agent(ctl_client **ret) {
        const char *path = arg_socket ? arg_socket : getenv("AGENTCTL_SOCKET");
        if (isempty(path))
                path = DEFAULT_SOCKET;
        _cleanup_free_ char *err = NULL;
        int r = ctl_client_connect(path, arg_timeout_ms, ret, &err);
        if (r == -EACCES) {
                fprintf(stderr, "agentctl: %s\n", err ? err : "permission denied");
                return EXIT_DENIED;
        }
        if (r < 0) {
                fprintf(stderr, "agentctl: cannot reach agentd at %s: %s\n", path, strerror(-r));
                if (r == -ENOENT || r == -ECONNREFUSED)
                        fprintf(stderr, "Is agentd running? (systemctl status agentd)\n");
                return r == -ETIMEDOUT ? EXIT_TIMEOUT : (r == -EACCES || r == -EPERM ? EXIT_DENIED : EXIT_NOAGENT);
        }
        return EXIT_OK;
}

static int exit_for_error(json_t *reply) {
        const char *e = json_string_value(json_object_get(reply, "errno"));
        if (e && (streq(e, "EPERM") || streq(e, "EACCES")))
                return EXIT_DENIED;
        if (e && streq(e, "ETIMEDOUT"))
                return EXIT_TIMEOUT;
        return EXIT_FAILED;
}

/* One request, one reply. On success *ret_result is a new reference to "result". */
static int request(const char *verb, json_t *args, json_t **ret_result) {
        ctl_client *c = NULL;
        int ex = connect_agent(&c);
        if (ex != EXIT_OK) {
                json_decref(args);
                return ex;
        }
        if (arg_agent) {
                if (!args)
                        args = json_object();
                json_object_set_new(args, "agent", json_string(arg_agent));
        }
        int r = ctl_client_send(c, verb, args);
        json_t *reply = NULL;
        if (r >= 0)
                r = ctl_client_read(c, arg_timeout_ms, &reply);
        ctl_client_free(c);
        if (r < 0) {
                fprintf(stderr, "agentctl: %s: %s\n", verb, r == -ETIMEDOUT ? "no answer in time" : strerror(-r));
                return r == -ETIMEDOUT ? EXIT_TIMEOUT : EXIT_NOAGENT;
        }
        if (!json_is_true(json_object_get(reply, "ok"))) {
                const char *err = json_string_value(json_object_get(reply, "error"));
                if (arg_json) {
                        json_dumpf(reply, stdout, JSON_INDENT(2));
                        putchar('\n');
                }
                fprintf(stderr, "agentctl: %s\n", err ? err : "request failed");
                ex = exit_for_error(reply);
                json_decref(reply);
                return ex;
        }
        *ret_result = json_incref(json_object_get(reply, "result"));
        json_decref(reply);
        return EXIT_OK;
}

static void print_json(json_t *o) {
        json_dumpf(o, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY);
        putchar('\n');
}

/* Scalars as text for table cells; buf must hold 64 bytes. */
static const char *cell(json_t *v, char *buf) {
        if (!v || json_is_null(v))
                return NULL;
        if (json_is_string(v))
                return json_string_value(v);
        if (json_is_integer(v))
                snprintf(buf, 64, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else if (json_is_real(v))
                snprintf(buf, 64, "%g", json_real_value(v));
        else if (json_is_boolean(v))
                snprintf(buf, 64, "%s", json_is_true(v) ? "yes" : "no");
        else
                snprintf(buf, 64, "...");
        return buf;
}

static int run_simple(const char *verb, json_t *args, void (*human)(json_t *)) {
        json_t *res = NULL;
        int ex = request(verb, args, &res);
        if (ex != EXIT_OK)
                return ex;
        if (arg_json || !human)
                print_json(res);
        else
                human(res);
        json_decref(res);
        return EXIT_OK;
}

/* A plugin verb's answer, generically: an array of objects is a table (the columns are
 * the scalar members of its first object); an object prints its scalars as "key: value"
 * lines (one level of nested objects as "key.sub"), then each array of objects in it as
 * a table under its name. Anything else, or deeper, is JSON. */
static void human_rows(json_t *a) {
        json_t *first = json_array_get(a, 0);
        const char *hdr[32];
        size_t n = 0;
        const char *k;
        json_t *v;
        json_object_foreach (first, k, v)
                if (n < ELEMENTSOF(hdr) && !json_is_object(v) && !json_is_array(v))
                        hdr[n++] = k;
        if (!n) {
                print_json(a);
                return;
        }
        table *t = table_new(n, hdr);
        size_t i;
        json_t *row;
        json_array_foreach (a, i, row) {
                char bufs[ELEMENTSOF(hdr)][64];
                const char *cells[ELEMENTSOF(hdr)];
                for (size_t c = 0; c < n; c++)
                        cells[c] = cell(json_object_get(row, hdr[c]), bufs[c]);
                if (t)
                        table_add_row(t, cells);
        }
        table_print(t, stdout);
        table_free(t);
}

static bool rows_of_objects(json_t *v) {
        return json_is_array(v) && json_array_size(v) > 0 && json_is_object(json_array_get(v, 0));
}

static void human_scalar(const char *prefix, const char *k, json_t *v) {
        char b[64];
        if (json_is_string(v) && strchr(json_string_value(v), '\n'))
                printf("%s%s:\n%s%s", prefix, k, json_string_value(v),
                       *json_string_value(v) && json_string_value(v)[strlen(json_string_value(v)) - 1] == '\n' ? ""
                                                                                                             : "\n");
        else if (json_is_object(v) || json_is_array(v)) {
                char *s = json_dumps(v, JSON_COMPACT);
                printf("%s%s: %s\n", prefix, k, s ? s : "...");
                free(s);
        } else {
                const char *c = cell(v, b);
                printf("%s%s: %s\n", prefix, k, c ? c : "-");
        }
}

static void human_generic(json_t *r) {
        if (rows_of_objects(r)) {
                human_rows(r);
                return;
        }
        if (!json_is_object(r)) {
                print_json(r);
                return;
        }
        const char *k, *k2;
        json_t *v, *v2;
        json_object_foreach (r, k, v) {
                if (rows_of_objects(v))
                        continue;
                if (json_is_object(v)) {
                        json_object_foreach (v, k2, v2) {
                                char prefix[160];
                                snprintf(prefix, sizeof prefix, "%.120s.", k);
                                human_scalar(prefix, k2, v2);
                        }
                } else
                        human_scalar("", k, v);
        }
        json_object_foreach (r, k, v)
                if (rows_of_objects(v)) {
                        printf("\n%s:\n", k);
                        human_rows(v);
                }
}

static void human_status(json_t *r) {
        char b[64];
        json_t *inst = json_object_get(r, "instances"), *bus = json_object_get(r, "bus");
        printf("agent:      %s (agentd %s, pid %s)\n", json_string_value(json_object_get(r, "agent")),
               json_string_value(json_object_get(r, "version")), cell(json_object_get(r, "pid"), b));
        printf("config:     %s\n", json_string_value(json_object_get(r, "config")));
        printf("started:    %s (up %s s)\n", json_string_value(json_object_get(r, "started")),
               cell(json_object_get(r, "uptime_s"), b));
        printf("sysroot:    %s%s\n", json_string_value(json_object_get(r, "sysroot")),
               json_is_true(json_object_get(r, "dry_run")) ? "  (dry_run: changes are only logged)" : "");
        printf("instances:  %" JSON_INTEGER_FORMAT " total, %" JSON_INTEGER_FORMAT " running, %" JSON_INTEGER_FORMAT
               " failed, %" JSON_INTEGER_FORMAT " disabled\n",
               json_integer_value(json_object_get(inst, "total")), json_integer_value(json_object_get(inst, "running")),
               json_integer_value(json_object_get(inst, "failed")), json_integer_value(json_object_get(inst, "disabled")));
        printf("bus:        %" JSON_INTEGER_FORMAT " published, %" JSON_INTEGER_FORMAT " delivered, %" JSON_INTEGER_FORMAT
               " dropped, %" JSON_INTEGER_FORMAT " subscriptions\n",
               json_integer_value(json_object_get(bus, "published")), json_integer_value(json_object_get(bus, "delivered")),
               json_integer_value(json_object_get(bus, "dropped")), json_integer_value(json_object_get(bus, "subscriptions")));
        if (json_integer_value(json_object_get(bus, "replies_unknown")) > 0)
                printf("            %" JSON_INTEGER_FORMAT " replies matched no pending request (late, or forged)\n",
                       json_integer_value(json_object_get(bus, "replies_unknown")));
        printf("nats:       %s\n", json_is_true(json_object_get(json_object_get(r, "nats"), "enabled")) ? "on" : "off (embedded mode)");
}

static void human_plugin_list(json_t *r) {
        static const char *const h[] = {"INSTANCE", "PLUGIN", "STATE", "VERSION", "INTERVAL", "TICKS",
                                        "HANDLED",  "QUEUED", "DROPPED", "ERROR"};
        table *t = table_new(ELEMENTSOF(h), h);
        size_t i;
        json_t *o;
        json_array_foreach(r, i, o) {
                char b[6][64], iv[64], st[96];
                snprintf(iv, sizeof iv, "%" JSON_INTEGER_FORMAT "ms", json_integer_value(json_object_get(o, "interval_ms")));
                /* an isolated instance (its own child process) says so, with the child's pid */
                snprintf(st, sizeof st, "%s", json_string_value(json_object_get(o, "state")));
                if (json_is_true(json_object_get(o, "isolated")) && json_is_integer(json_object_get(o, "pid")))
                        snprintf(st, sizeof st, "%s (isolated, pid %" JSON_INTEGER_FORMAT ")",
                                 json_string_value(json_object_get(o, "state")),
                                 json_integer_value(json_object_get(o, "pid")));
                else if (json_is_true(json_object_get(o, "isolated")))
                        snprintf(st, sizeof st, "%s (isolated, no child)", json_string_value(json_object_get(o, "state")));
                const char *row[] = {json_string_value(json_object_get(o, "name")),
                                     json_string_value(json_object_get(o, "plugin")),
                                     st,
                                     cell(json_object_get(o, "version"), b[0]),
                                     iv,
                                     cell(json_object_get(o, "ticks"), b[1]),
                                     cell(json_object_get(o, "handled"), b[2]),
                                     cell(json_object_get(o, "queued"), b[3]),
                                     cell(json_object_get(o, "dropped"), b[4]),
                                     cell(json_object_get(o, "error"), b[5])};
                table_add_row(t, row);
        }
        table_print(t, stdout);
        table_free(t);
}

/* The ALLOWED cell of a config key: "0..200", ">= 1s", "<= 10s", "on|off", "hh:mm". */
static const char *limits_cell(json_t *e, char *buf, size_t size) {
        const char *min = json_string_value(json_object_get(e, "min"));
        const char *max = json_string_value(json_object_get(e, "max"));
        const char *format = json_string_value(json_object_get(e, "format"));
        json_t *choices = json_object_get(e, "choices");
        size_t o = 0;

        buf[0] = '\0';
        if (min && max)
                o += (size_t)snprintf(buf + o, size - o, "%s..%s", min, max);
        else if (min)
                o += (size_t)snprintf(buf + o, size - o, ">= %s", min);
        else if (max)
                o += (size_t)snprintf(buf + o, size - o, "<= %s", max);
        size_t i;
        json_t *c;
        json_array_foreach(choices, i, c) {
                if (o >= size)
                        break;
                o += (size_t)snprintf(buf + o, size - o, "%s%s", i ? "|" : (o ? " " : ""), json_string_value(c));
        }
        if (format && o < size)
                snprintf(buf + o, size - o, "%s%s", o ? " " : "", format);
        return buf;
}

static void print_config_map(json_t *map, const char *prefix, table *t) {
        size_t i;
        json_t *e;
        json_array_foreach(map, i, e) {
                char key[256], b[64], lim[256];
                snprintf(key, sizeof key, "%s%s", prefix, json_string_value(json_object_get(e, "key")));
                const char *row[] = {key, json_string_value(json_object_get(e, "type")),
                                     json_is_true(json_object_get(e, "required")) ? "yes" : "no",
                                     cell(json_object_get(e, "default"), b), limits_cell(e, lim, sizeof lim),
                                     json_string_value(json_object_get(e, "help"))};
                table_add_row(t, row);
                json_t *children = json_object_get(e, "children");
                if (children) {
                        char p[300];
                        bool dict = streq(json_string_value(json_object_get(e, "type")), "dict");
                        snprintf(p, sizeof p, "%s.%s", key, dict ? "<name>." : "");
                        print_config_map(children, p, t);
                }
        }
}

static void human_plugin_info(json_t *r) {
        const char *keys[] = {"name", "plugin", "version", "summary", "file", "path", "state", "error",
                              "load_error", "interval_ms", "generation", "reloads", "ticks", "handled",
                              "calls", "queued", "queue_max", "dropped", "hook_errors", "tick_us_max", "dry_run"};
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                char b[64];
                const char *v = cell(json_object_get(r, keys[i]), b);
                if (v)
                        printf("%-13s %s\n", keys[i], v);
        }
        json_t *subs = json_object_get(r, "subscriptions");
        if (json_array_size(subs)) {
                printf("%-13s", "subscriptions");
                size_t i;
                json_t *s;
                json_array_foreach(subs, i, s) printf(" %s", json_string_value(s));
                putchar('\n');
        }
        json_t *map = json_object_get(r, "config_map");
        if (json_array_size(map)) {
                static const char *const h[] = {"CONFIG KEY", "TYPE", "REQUIRED", "DEFAULT", "ALLOWED", "HELP"};
                table *t = table_new(ELEMENTSOF(h), h);
                print_config_map(map, "", t);
                putchar('\n');
                table_print(t, stdout);
                table_free(t);
        }
        json_t *execs = json_object_get(r, "execs");
        if (json_array_size(execs)) {
                /* running commands: they outlive a reload, so say which generation started each */
                static const char *const h[] = {"EXEC", "COMMAND", "PID", "AGE", "TIMEOUT", "GENERATION"};
                static const char *const k[] = {"id", "argv0", "pid", "age_ms", "timeout_ms", "generation"};
                table *t = table_new(ELEMENTSOF(h), h);
                size_t i;
                json_t *x;
                json_array_foreach(execs, i, x) {
                        char b[ELEMENTSOF(k)][64];
                        const char *row[ELEMENTSOF(k)];
                        for (size_t j = 0; j < ELEMENTSOF(k); j++)
                                row[j] = cell(json_object_get(x, k[j]), b[j]);
                        char age[32], to[32];
                        snprintf(age, sizeof age, "%.1fs", (double)json_integer_value(json_object_get(x, "age_ms")) / 1000);
                        snprintf(to, sizeof to, "%.1fs", (double)json_integer_value(json_object_get(x, "timeout_ms")) / 1000);
                        row[3] = age;
                        row[4] = to;
                        table_add_row(t, row);
                }
                putchar('\n');
                table_print(t, stdout);
                table_free(t);
        }
        json_t *verbs = json_object_get(r, "verbs");
        if (json_array_size(verbs)) {
                static const char *const h[] = {"VERB", "MUTATING", "ARGS", "HELP"};
                table *t = table_new(ELEMENTSOF(h), h);
                size_t i;
                json_t *v;
                json_array_foreach(verbs, i, v) {
                        const char *row[] = {json_string_value(json_object_get(v, "name")),
                                             json_is_true(json_object_get(v, "mutating")) ? "yes" : "no",
                                             json_string_value(json_object_get(v, "args")),
                                             json_string_value(json_object_get(v, "help"))};
                        table_add_row(t, row);
                }
                putchar('\n');
                table_print(t, stdout);
                table_free(t);
        }
}

/* {"gpu":"3","x":"y"} as gpu="3",x="y" */
static void format_labels(json_t *labels, char *buf, size_t size) {
        const char *k;
        json_t *v;
        size_t off = 0;
        buf[0] = '\0';
        json_object_foreach(labels, k, v) {
                if (off >= size)
                        break;
                off += (size_t)snprintf(buf + off, size - off, "%s%s=\"%s\"", off ? "," : "", k,
                                        json_string_value(v) ? json_string_value(v) : "");
        }
}

static void human_metrics(json_t *r) {
        static const char *const h[] = {"INSTANCE", "METRIC", "TYPE", "VALUE"};
        table *t = table_new(ELEMENTSOF(h), h);
        size_t i;
        json_t *m;
        json_array_foreach(r, i, m) {
                char b[64], labels[384], name[512];
                format_labels(json_object_get(m, "labels"), labels, sizeof labels);
                snprintf(name, sizeof name, "%s%s%s%s", json_string_value(json_object_get(m, "name")),
                         labels[0] ? "{" : "", labels, labels[0] ? "}" : "");
                const char *row[] = {json_string_value(json_object_get(m, "instance")), name,
                                     json_string_value(json_object_get(m, "type")), cell(json_object_get(m, "value"), b)};
                table_add_row(t, row);
        }
        table_print(t, stdout);
        table_free(t);
}

static void human_reload(json_t *r) {
        char g[64], us[64];
        printf("%s reloaded: generation %s, %s us\n", json_string_value(json_object_get(r, "name")),
               cell(json_object_get(r, "generation"), g), cell(json_object_get(r, "reload_us"), us));
}

static void human_instance(json_t *r) {
        printf("%s: %s\n", json_string_value(json_object_get(r, "name")), json_string_value(json_object_get(r, "state")));
}

static void human_config_reload(json_t *r) {
        const char *keys[] = {"restarted", "started", "stopped", "unchanged"};
        for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
                json_t *a = json_object_get(r, keys[k]);
                printf("%-10s", keys[k]);
                size_t i;
                json_t *s;
                json_array_foreach(a, i, s) printf(" %s", json_string_value(s));
                if (!json_array_size(a))
                        printf(" -");
                putchar('\n');
        }
        size_t i;
        json_t *f;
        json_array_foreach(json_object_get(r, "failed"), i, f)
                printf("failed     %s: %s\n", json_string_value(json_object_get(f, "instance")),
                       json_string_value(json_object_get(f, "error")));
}

/* A request whose result says "ok": false is a failure of the check it ran (exit 1),
 * though the request itself went well. */
static int run_checked(const char *verb, json_t *args, void (*human)(json_t *)) {
        json_t *res = NULL;
        int ex = request(verb, args, &res);
        if (ex != EXIT_OK)
                return ex;
        bool ok = json_is_true(json_object_get(res, "ok"));
        if (arg_json)
                print_json(res);
        else
                human(res);
        json_decref(res);
        return ok ? EXIT_OK : EXIT_FAILED;
}

static void human_config_check(json_t *res) {
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(res, "errors"), i, e) printf("%s\n", json_string_value(e));
        if (json_is_true(json_object_get(res, "ok")))
                printf("%s: valid (%" JSON_INTEGER_FORMAT " plugin instances).\n",
                       json_string_value(json_object_get(res, "path")), json_integer_value(json_object_get(res, "instances")));
}

static int cmd_config_check(int argc, char **argv) {
        json_t *args = json_object();
        if (argc > 0)
                json_object_set_new(args, "path", json_string(argv[0]));
        return run_checked("config.check", args, human_config_check);
}

/* The rows of one agent's audit; agent_name NULL: the single-agent table (no AGENT
 * column). */
static void audit_rows(table *t, const char *agent_name, json_t *res) {
        size_t i;
        json_t *o;
        int off = agent_name ? 1 : 0;
        json_array_foreach(json_object_get(res, "instances"), i, o) {
                const char *result = !json_is_true(json_object_get(o, "verified")) ? "no verify"
                                     : json_is_true(json_object_get(o, "ok"))      ? "ok"
                                                                                   : "DRIFT";
                const char *row[8] = {agent_name};
                row[off + 0] = json_string_value(json_object_get(o, "instance"));
                row[off + 1] = json_string_value(json_object_get(o, "plugin"));
                row[off + 2] = json_string_value(json_object_get(o, "state"));
                row[off + 3] = result;
                row[off + 4] = json_string_value(json_object_get(o, "error"));
                table_add_row(t, row);
                size_t k;
                json_t *c;
                json_array_foreach(json_object_get(o, "checks"), k, c) {
                        char b[3][64];
                        const char *crow[8] = {""};
                        for (int j = 0; j < off + 3; j++)
                                crow[j] = "";
                        crow[off + 3] = json_is_true(json_object_get(c, "ok")) ? "  ok" : "  DRIFT";
                        crow[off + 4] = cell(json_object_get(c, "what"), b[0]);
                        crow[off + 5] = cell(json_object_get(c, "want"), b[1]);
                        crow[off + 6] = cell(json_object_get(c, "have"), b[2]);
                        table_add_row(t, crow);
                }
        }
}

static void human_audit(json_t *res) {
        static const char *const h[] = {"INSTANCE", "PLUGIN", "STATE", "RESULT", "WHAT", "WANT", "HAVE"};
        table *t = table_new(ELEMENTSOF(h), h);
        audit_rows(t, NULL, res);
        table_print(t, stdout);
        table_free(t);
}

static void human_agents(json_t *res) {
        static const char *const h[] = {"AGENT", "VERSION", "LAST SEEN", "STATE"};
        table *t = table_new(ELEMENTSOF(h), h);
        size_t i;
        json_t *o;
        json_array_foreach(json_object_get(res, "agents"), i, o) {
                bool self = json_is_true(json_object_get(o, "self"));
                const char *row[] = {json_string_value(json_object_get(o, "agent")),
                                     json_string_value(json_object_get(o, "version")),
                                     self ? "-" : json_string_value(json_object_get(o, "last_seen")),
                                     self ? "this agent" : json_is_true(json_object_get(o, "stale")) ? "STALE" : "seen"};
                table_add_row(t, row);
        }
        table_print(t, stdout);
        table_free(t);
        if (!json_is_true(json_object_get(res, "nats")))
                printf("(no NATS bridge: this agent alone)\n");
}

#define AUDIT_BATCH 8

/* The audits of names[0..n), asked at once (one connection each, so the slowest bounds
 * the wait, not the sum), appended to out: {agent, ok, instances} or {agent, ok: false,
 * error}. An agent that does not answer within the time-out is an entry that says so.
 * Returns false if any is not ok; *ret_exit set when agentd itself is not reachable. */
static bool audit_batch(const char *const *names, size_t n, json_t *out, int *ret_exit) {
        ctl_client *conns[AUDIT_BATCH] = {0};
        bool all_ok = true;
        for (size_t i = 0; i < n; i++) {
                int ex = connect_agent(&conns[i]);
                if (ex != EXIT_OK) {
                        *ret_exit = ex;
                        for (size_t k = 0; k < i; k++)
                                ctl_client_free(conns[k]);
                        return false;
                }
                json_t *args = json_pack("{s:s, s:I}", "agent", names[i], "timeout_ms", (json_int_t)arg_timeout_ms);
                if (ctl_client_send(conns[i], "audit", args) < 0) {
                        ctl_client_free(conns[i]);
                        conns[i] = NULL;
                }
        }
        for (size_t i = 0; i < n; i++) {
                json_t *reply = NULL, *o;
                /* the local agentd answers a remote time-out itself: a little beyond it */
                int r = conns[i] ? ctl_client_read(conns[i], arg_timeout_ms + 2000, &reply) : -ECONNRESET;
                if (r < 0)
                        o = json_pack("{s:s, s:b, s:s}", "agent", names[i], "ok", 0, "error",
                                      r == -ETIMEDOUT ? "no answer in time" : strerror(-r));
                else if (!json_is_true(json_object_get(reply, "ok"))) {
                        const char *err = json_string_value(json_object_get(reply, "error"));
                        o = json_pack("{s:s, s:b, s:s, s:O?}", "agent", names[i], "ok", 0, "error",
                                      err ? err : "request failed", "errno", json_object_get(reply, "errno"));
                } else {
                        o = json_deep_copy(json_object_get(reply, "result"));
                        if (!json_is_object(o)) {
                                json_decref(o);
                                o = json_pack("{s:b, s:s}", "ok", 0, "error", "the audit answered no object");
                        }
                        json_object_set_new(o, "agent", json_string(names[i]));
                        if (!json_is_boolean(json_object_get(o, "ok")))
                                json_object_set_new(o, "ok", json_false());
                }
                json_decref(reply);
                ctl_client_free(conns[i]);
                all_ok = all_ok && json_is_true(json_object_get(o, "ok"));
                json_array_append_new(out, o);
        }
        return all_ok;
}

/* One table (or JSON array) over the audits of several agents; exit 1 if any failed or
 * did not answer. */
static int audit_agents(const char *const *names, size_t n) {
        json_t *out = json_array();
        bool all_ok = true;
        int ex = EXIT_OK;
        /* eight at a time: a member of group organism has 16 connections (control limits) */
        for (size_t lo = 0; lo < n && ex == EXIT_OK; lo += AUDIT_BATCH)
                all_ok = audit_batch(names + lo, MIN(n - lo, (size_t)AUDIT_BATCH), out, &ex) && all_ok;
        if (ex != EXIT_OK)
                goto out;
        if (arg_json)
                print_json(out);
        else {
                static const char *const h[] = {"AGENT", "INSTANCE", "PLUGIN", "STATE", "RESULT", "WHAT", "WANT", "HAVE"};
                table *t = table_new(ELEMENTSOF(h), h);
                size_t i;
                json_t *o;
                json_array_foreach(out, i, o) {
                        const char *name = json_string_value(json_object_get(o, "agent"));
                        if (json_object_get(o, "instances"))
                                audit_rows(t, name, o);
                        else {
                                const char *row[] = {name, "-", "-", "-", "NO ANSWER",
                                                     json_string_value(json_object_get(o, "error")), NULL, NULL};
                                table_add_row(t, row);
                        }
                }
                table_print(t, stdout);
                table_free(t);
        }
        ex = all_ok ? EXIT_OK : EXIT_FAILED;
out:
        json_decref(out);
        return ex;
}

/* audit [--all-agents]: this agent (or the one --agent names), or several: every
 * --agent given, and with --all-agents every agent the local agentd knows (this one
 * and those heard on the NATS bus: `agentctl agents`). */
static int cmd_audit(int argc, char **argv) {
        bool all = false;
        for (int i = 0; i < argc; i++) {
                if (streq(argv[i], "--all-agents") || streq(argv[i], "--all"))
                        all = true;
                else
                        return usage_error("audit takes no argument but --all-agents, got '%s'", argv[i]);
        }
        if (!all && n_arg_agents <= 1)
                return run_checked("audit", NULL, human_audit);
        const char *names[MAX_AGENTS];
        size_t n = 0;
        for (size_t i = 0; i < n_arg_agents; i++)
                names[n++] = arg_agents[i];
        json_t *res = NULL;
        if (all) {
                arg_agent = NULL; /* the list is the local agentd's */
                int ex = request("agents", NULL, &res);
                if (ex != EXIT_OK)
                        return ex;
                size_t i;
                json_t *o;
                json_array_foreach(json_object_get(res, "agents"), i, o) {
                        const char *name = json_string_value(json_object_get(o, "agent"));
                        bool dup = false;
                        for (size_t k = 0; k < n && !dup; k++)
                                dup = streq(names[k], name);
                        if (name && !dup && n < MAX_AGENTS)
                                names[n++] = name;
                }
        }
        int ex = audit_agents(names, n);
        json_decref(res);
        return ex;
}

static int parse_json_arg(const char *text, json_t **ret) {
        json_error_t e;
        json_t *o = json_loads(text, JSON_DECODE_ANY, &e);
        if (!o) {
                fprintf(stderr, "agentctl: invalid JSON '%s': %s (column %d)\n", text, e.text, e.column);
                return EXIT_USAGE;
        }
        *ret = o;
        return EXIT_OK;
}

/* A value from the command line: JSON when it parses as JSON, a string otherwise. */
static json_t *word_value(const char *w) {
        json_error_t e;
        json_t *v = json_loads(w, JSON_DECODE_ANY, &e);
        return v ? v : json_string(w);
}

/* The arguments of a verb: one JSON text as is, or words: `WORD... --key VALUE...`
 * become {"args": [WORD...], "key": VALUE, ...}. A `--flag` with no value (last, or
 * followed by another --option) is true, so `apply --confirm` reads as it should.
 * After a bare `--` (kept as a word, for verbs that take a command line) every word is
 * taken as it is, options included. */
static int call_args(int argc, char **argv, json_t **ret) {
        if (argc == 1 && (argv[0][0] == '{' || argv[0][0] == '['))
                return parse_json_arg(argv[0], ret);
        json_t *o = json_object(), *words = json_array();
        bool options = true;
        for (int i = 0; i < argc; i++) {
                if (options && streq(argv[i], "--")) {
                        options = false;
                        json_array_append_new(words, json_string(argv[i]));
                } else if (options && startswith(argv[i], "--") && argv[i][2]) {
                        if (i + 1 >= argc || startswith(argv[i + 1], "--"))
                                json_object_set_new(o, argv[i] + 2, json_true());
                        else {
                                json_object_set_new(o, argv[i] + 2, word_value(argv[i + 1]));
                                i++;
                        }
                } else
                        json_array_append_new(words, options ? word_value(argv[i]) : json_string(argv[i]));
        }
        if (json_array_size(words))
                json_object_set_new(o, "args", words);
        else
                json_decref(words);
        *ret = o;
        return EXIT_OK;
}

static int cmd_call(const char *inst, const char *verb, int argc, char **argv) {
        json_t *a = NULL;
        if (argc > 0 && call_args(argc, argv, &a) != EXIT_OK)
                return EXIT_USAGE;
        json_t *args = json_pack("{s:s, s:s}", "instance", inst, "verb", verb);
        if (a)
                json_object_set_new(args, "args", a);
        json_object_set_new(args, "timeout_ms", json_integer((json_int_t)arg_timeout_ms));
        return run_simple("call", args, human_generic);
}

static int parse_seconds(const char *s, uint64_t *ret_ms) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || v < 0)
                return -EINVAL;
        *ret_ms = (uint64_t)(v * 1000);
        return 0;
}

static int cmd_bus(int argc, char **argv) {
        if (argc < 2)
                return usage_error("bus needs pub|sub|request and a subject");
        const char *sub = argv[0], *subject = argv[1];
        json_t *headers = json_object();
        long long count = 0;
        uint64_t timeout_ms = 0;
        bool have_timeout = false;
        const char *payload = NULL;
        for (int i = 2; i < argc; i++) {
                if ((streq(argv[i], "-H") || streq(argv[i], "--header")) && i + 1 < argc) {
                        char *eq = strchr(argv[++i], '=');
                        if (!eq) {
                                json_decref(headers);
                                return usage_error("a header is KEY=VALUE");
                        }
                        *eq = '\0';
                        json_object_set_new(headers, argv[i], json_string(eq + 1));
                } else if (streq(argv[i], "--count") && i + 1 < argc) {
                        char *end;
                        count = strtoll(argv[++i], &end, 10);
                        if (*end || count < 0) {
                                json_decref(headers);
                                return usage_error("--count takes a number");
                        }
                } else if (streq(argv[i], "--timeout") && i + 1 < argc) {
                        if (parse_seconds(argv[++i], &timeout_ms) < 0) {
                                json_decref(headers);
                                return usage_error("--timeout takes seconds");
                        }
                        have_timeout = true;
                } else if (!payload)
                        payload = argv[i];
                else {
                        json_decref(headers);
                        return usage_error("unexpected argument '%s'", argv[i]);
                }
        }
        json_t *args = json_object();
        if (payload) {
                json_t *p = NULL;
                if (parse_json_arg(payload, &p) != EXIT_OK) {
                        json_decref(args);
                        json_decref(headers);
                        return EXIT_USAGE;
                }
                json_object_set_new(args, "payload", p);
        }
        if (json_object_size(headers))
                json_object_set(args, "headers", headers);
        json_decref(headers);

        if (streq(sub, "pub")) {
                json_object_set_new(args, "subject", json_string(subject));
                return run_simple("bus.pub", args, NULL);
        }
        if (streq(sub, "request")) {
                json_object_set_new(args, "subject", json_string(subject));
                if (have_timeout)
                        arg_timeout_ms = timeout_ms;
                json_object_set_new(args, "timeout_ms", json_integer((json_int_t)arg_timeout_ms));
                return run_simple("bus.request", args, NULL);
        }
        if (!streq(sub, "sub")) {
                json_decref(args);
                return usage_error("unknown bus command '%s'", sub);
        }
        json_object_set_new(args, "pattern", json_string(subject));
        if (count)
                json_object_set_new(args, "count", json_integer(count));
        if (have_timeout)
                json_object_set_new(args, "timeout_ms", json_integer((json_int_t)timeout_ms));
        ctl_client *c = NULL;
        int ex = connect_agent(&c);
        if (ex != EXIT_OK) {
                json_decref(args);
                return ex;
        }
        if (arg_agent)
                json_object_set_new(args, "agent", json_string(arg_agent)); /* agentd explains the refusal */
        int r = ctl_client_send(c, "bus.sub", args);
        /* the daemon ends the stream on count or time-out; the extra second covers transit */
        uint64_t wait = have_timeout ? timeout_ms + 5000 : 0;
        ex = EXIT_OK;
        while (r >= 0) {
                json_t *line = NULL;
                r = ctl_client_read(c, wait, &line);
                if (r < 0)
                        break;
                if (json_object_get(line, "ok") && !json_is_true(json_object_get(line, "ok"))) {
                        fprintf(stderr, "agentctl: %s\n", json_string_value(json_object_get(line, "error")));
                        ex = exit_for_error(line);
                        json_decref(line);
                        break;
                }
                if (json_is_true(json_object_get(line, "end"))) {
                        json_int_t dropped = json_integer_value(json_object_get(line, "dropped"));
                        if (dropped)
                                fprintf(stderr, "agentctl: %" JSON_INTEGER_FORMAT " messages dropped (too slow a reader)\n", dropped);
                        json_decref(line);
                        break;
                }
                json_t *ev = json_object_get(line, "event");
                if (ev && !json_object_get(ev, "subscribed")) {
                        json_dumpf(ev, stdout, JSON_COMPACT);
                        putchar('\n');
                        fflush(stdout);
                }
                json_decref(line);
        }
        ctl_client_free(c);
        if (r == -ETIMEDOUT)
                return EXIT_TIMEOUT;
        if (r < 0 && r != -ECONNRESET)
                return EXIT_NOAGENT;
        return ex;
}

static int cmd_plugin(int argc, char **argv) {
        if (argc < 1)
                return usage_error("plugin needs list|info|load|unload|reload|enable|disable");
        const char *sub = argv[0];
        if (streq(sub, "list"))
                return run_simple("plugin.list", NULL, human_plugin_list);
        if (argc < 2)
                return usage_error("plugin %s needs an instance name", sub);
        json_t *args = json_pack("{s:s}", "name", argv[1]);
        if (streq(sub, "info"))
                return run_simple("plugin.info", args, human_plugin_info);
        if (streq(sub, "reload"))
                return run_simple("plugin.reload", args, human_reload);
        if (streq(sub, "enable"))
                return run_simple("plugin.enable", args, human_instance);
        if (streq(sub, "disable"))
                return run_simple("plugin.disable", args, human_instance);
        if (streq(sub, "unload")) {
                if (argc < 3 || !streq(argv[2], "--confirm")) {
                        json_decref(args);
                        fprintf(stderr, "agentctl: plugin unload stops and removes %s: add --confirm.\n", argv[1]);
                        return EXIT_USAGE;
                }
                return run_simple("plugin.unload", args, NULL);
        }
        if (streq(sub, "load")) {
                for (int i = 2; i < argc; i++) {
                        if (i + 1 >= argc) {
                                json_decref(args);
                                return usage_error("%s needs a value", argv[i]);
                        }
                        if (streq(argv[i], "--plugin"))
                                json_object_set_new(args, "plugin", json_string(argv[++i]));
                        else if (streq(argv[i], "--path"))
                                json_object_set_new(args, "path", json_string(argv[++i]));
                        else if (streq(argv[i], "--config")) {
                                json_t *cfg = NULL;
                                if (parse_json_arg(argv[++i], &cfg) != EXIT_OK) {
                                        json_decref(args);
                                        return EXIT_USAGE;
                                }
                                json_object_set_new(args, "config", cfg);
                        } else {
                                json_decref(args);
                                return usage_error("unknown option '%s'", argv[i]);
                        }
                }
                return run_simple("plugin.load", args, human_instance);
        }
        json_decref(args);
        return usage_error("unknown plugin command '%s'", sub);
}

int main(int argc, char **argv) {
        enum { OPT_JSON = 0x100, OPT_VERSION };
        static const struct option opts[] = {
                {"socket", required_argument, NULL, 's'}, {"json", no_argument, NULL, OPT_JSON},
                {"agent", required_argument, NULL, 'a'},
                {"timeout", required_argument, NULL, 't'}, {"version", no_argument, NULL, OPT_VERSION},
                {"help", no_argument, NULL, 'h'},         {0},
        };
        int c;
        /* "+": options end at the first command word, so verbs may have their own */
        while ((c = getopt_long(argc, argv, "+s:a:t:h", opts, NULL)) >= 0) {
                switch (c) {
                case 's':
                        arg_socket = optarg;
                        break;
                case 'a':
                        arg_agent = optarg;
                        if (n_arg_agents >= MAX_AGENTS)
                                return usage_error("at most %d --agent", MAX_AGENTS);
                        arg_agents[n_arg_agents++] = optarg;
                        break;
                case OPT_JSON:
                        arg_json = true;
                        break;
                case 't':
                        if (parse_seconds(optarg, &arg_timeout_ms) < 0)
                                return usage_error("--timeout takes seconds, got '%s'", optarg);
                        break;
                case OPT_VERSION:
                        printf("agentctl %s\n", ORG_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'agentctl --help'.\n");
                        return EXIT_USAGE;
                }
        }
        argc -= optind;
        argv += optind;
        /* --json may also follow the command words */
        for (int i = 0; i < argc; i++)
                if (streq(argv[i], "--json")) {
                        arg_json = true;
                        memmove(argv + i, argv + i + 1, (size_t)(argc - i - 1) * sizeof(char *));
                        argc--;
                        i--;
                }
        if (argc < 1)
                return usage_error("no command given");
        const char *cmd = argv[0];
        if (n_arg_agents > 1 && !streq(cmd, "audit"))
                return usage_error("--agent given %zu times: only audit takes several agents", n_arg_agents);
        if (streq(cmd, "status"))
                return run_simple("status", NULL, human_status);
        if (streq(cmd, "metrics")) {
                if (argc > 1 && streq(argv[1], "--text")) {
                        json_t *res = NULL;
                        int ex = request("metrics", json_pack("{s:s}", "format", "text"), &res);
                        if (ex == EXIT_OK)
                                fputs(json_string_value(json_object_get(res, "text")), stdout);
                        json_decref(res);
                        return ex;
                }
                return run_simple("metrics", NULL, human_metrics);
        }
        if (streq(cmd, "audit"))
                return cmd_audit(argc - 1, argv + 1);
        if (streq(cmd, "agents"))
                return run_simple("agents", NULL, human_agents);
        if (streq(cmd, "plugin"))
                return cmd_plugin(argc - 1, argv + 1);
        if (streq(cmd, "bus"))
                return cmd_bus(argc - 1, argv + 1);
        if (streq(cmd, "config")) {
                if (argc >= 2 && streq(argv[1], "check"))
                        return cmd_config_check(argc - 2, argv + 2);
                if (argc >= 2 && streq(argv[1], "reload"))
                        return run_simple("config.reload", NULL, human_config_reload);
                return usage_error("config needs check|reload");
        }
        if (streq(cmd, "call")) {
                if (argc < 3)
                        return usage_error("call needs INSTANCE VERB [JSON]");
                return cmd_call(argv[1], argv[2], argc - 3, argv + 3);
        }
        if (streq(cmd, "help"))
                return help(), 0;
        /* agentctl INSTANCE VERB [JSON]: sugar for call */
        if (argc >= 2 && name_is_valid(cmd))
                return cmd_call(cmd, argv[1], argc - 2, argv + 2);
        return usage_error("unknown command '%s'", cmd);
}
