/* test-config.c — agentd's config file and the schema checker behind it: a full valid
 * file, the defaults, and each kind of fault reported with its exact FILE:LINE:COL and
 * dotted key path, several at once; then a plugin's own config map (DICT children,
 * defaults, sizes normalised, missing required keys). */
#include <errno.h>
#include <fcntl.h>
#include <syslog.h>

#include "config.h"
#include "config_schema.h"
#include "org-build-config.h"
#include "test.h"
#include "util.h"

static agent_config *load_ok(const char *text) {
        diag d;
        agent_config *c = NULL;
        diag_init(&d, "t.yaml");
        int r = config_load_string(text, strlen(text), "t.yaml", &c, &d);
        if (r < 0) {
                diag_print(&d, stderr);
                fprintf(stderr, "config_load_string failed: %d\n", r);
                exit(1);
        }
        CHECK_INT(d.n, 0);
        diag_done(&d);
        CHECK(c);
        return c;
}

/* Loads text that must be refused; returns the diagnostics joined by '\n' and their
 * count in *ret_n. */
static char *load_fail(const char *text, size_t *ret_n) {
        diag d;
        agent_config *c = (agent_config *)0x1; /* must stay untouched */
        diag_init(&d, "t.yaml");
        int r = config_load_string(text, strlen(text), "t.yaml", &c, &d);
        CHECK_INT(r, -EINVAL);
        CHECK(c == (agent_config *)0x1);
        CHECK(d.n > 0);
        if (ret_n)
                *ret_n = d.n;
        char *s = diag_join(&d);
        diag_done(&d);
        return s;
}

static void expect_one(const char *text, const char *message) {
        size_t n;
        char *s = load_fail(text, &n);
        CHECK_STR(s, message);
        CHECK_INT(n, 1);
        free(s);
}

static const char full_config[] =
        "# a complete agentd.yaml\n"                           /* 1 */
        "agent:\n"                                             /* 2 */
        "  name: host1\n"                                      /* 3 */
        "  plugin_dirs: [/usr/lib/organism/plugins, /opt/p]\n" /* 4 */
        "  state_dir: /tmp/state\n"                            /* 5 */
        "  control_socket: /tmp/agentd.sock\n"                 /* 6 */
        "  sysroot: /tmp/root\n"                               /* 7 */
        "  dry_run: true\n"                                    /* 8 */
        "  log_level: debug\n"                                 /* 9 */
        "  metrics_textfile: /tmp/metrics.prom\n"              /* 10 */
        "  metrics_interval: 30s\n"                            /* 11 */
        "  queue_max: 1000\n"                                  /* 12 */
        "  commands:\n"                                        /* 13 */
        "    zfs: /sbin/zfs\n"                                 /* 14 */
        "    qm: /usr/sbin/qm\n"                               /* 15 */
        "bus:\n"                                               /* 16 */
        "  nats:\n"                                            /* 17 */
        "    url: nats://127.0.0.1:4222\n"                     /* 18 */
        "    name: host1\n"                                    /* 19 */
        "    export: [sys.>, \"gpu.task.*\"]\n"                /* 20 */
        "    import: [gpu.>]\n"                                /* 21 */
        "    token: s3cret\n"                                  /* 22 */
        "    tls: {ca: /etc/ca.pem}\n"                         /* 23 */
        "    reconnect_wait: 500ms\n"                          /* 24 */
        "    reconnect_attempts: 10\n"                         /* 25 */
        "    reconnect_buffer: 16MiB\n"                        /* 26 */
        "    jetstream:\n"                                     /* 27 */
        "      streams:\n"                                     /* 28 */
        "        - {name: TASKS, subjects: [gpu.task.>]}\n"    /* 29 */
        "plugins:\n"                                           /* 30 */
        "  memory:\n"                                          /* 31 */
        "    interval: 10s\n"                                  /* 32 */
        "    config:\n"                                        /* 33 */
        "      mem_high: 6GiB\n"                               /* 34 */
        "      profiles:\n"                                    /* 35 */
        "        day: {arc_max: 8GiB}\n"                       /* 36 */
        "        night: {arc_max: 4GiB, balloon_mb: 1000}\n"   /* 37 */
        "  deploy-a:\n"                                        /* 38 */
        "    plugin: deploy\n"                                 /* 39 */
        "    path: /opt/deploy.so\n"                           /* 40 */
        "    enabled: false\n"                                 /* 41 */
        "    dry_run: false\n"                                 /* 42 */
        "    log_level: warning\n"                             /* 43 */
        "    queue_max: 64\n"                                  /* 44 */
        "  circadian:\n";                                      /* 45 */

static void test_full(void) {
        agent_config *c = load_ok(full_config);
        char *s;

        CHECK_STR(c->path, "t.yaml");
        CHECK_STR(c->name, "host1");
        CHECK_INT(strv_length(c->plugin_dirs), 2);
        CHECK_STR(c->plugin_dirs[0], "/usr/lib/organism/plugins");
        CHECK_STR(c->plugin_dirs[1], "/opt/p");
        CHECK_STR(c->state_dir, "/tmp/state");
        CHECK_STR(c->control_socket, "/tmp/agentd.sock");
        CHECK_STR(c->sysroot, "/tmp/root");
        CHECK(c->dry_run);
        CHECK_INT(c->log_level, LOG_DEBUG);
        CHECK_STR(c->metrics_textfile, "/tmp/metrics.prom");
        CHECK_INT(c->metrics_interval_ms, 30000);
        CHECK_INT(c->queue_max, 1000);
        CHECK_INT(c->n_commands, 2);
        CHECK_STR(c->commands[0].name, "zfs");
        CHECK_STR(config_command_path(c, "zfs"), "/sbin/zfs");
        CHECK_STR(config_command_path(c, "qm"), "/usr/sbin/qm");
        CHECK(config_command_path(c, "sh") == NULL);

        CHECK(c->nats);
        s = json_dumps(c->nats, JSON_COMPACT | JSON_SORT_KEYS);
        CHECK_STR(s, "{\"connect_timeout\":2000,\"export\":[\"sys.>\",\"gpu.task.*\"],\"import\":[\"gpu.>\"],"
                     "\"jetstream\":{\"streams\":[{\"duplicate_window\":120000,\"name\":\"TASKS\",\"replicas\":1,"
                     "\"retention\":\"limits\",\"storage\":\"file\",\"subjects\":[\"gpu.task.>\"]}]},"
                     "\"name\":\"host1\",\"reconnect_attempts\":10,\"reconnect_buffer\":16777216,"
                     "\"reconnect_wait\":500,\"remote_control\":\"read-only\",\"tls\":{\"ca\":\"/etc/ca.pem\"},"
                     "\"token\":\"s3cret\",\"url\":\"nats://127.0.0.1:4222\"}");
        free(s);

        CHECK_INT(c->n_instances, 3);
        const instance_config *m = config_find_instance(c, "memory");
        CHECK(m == &c->instances[0]); /* file order */
        CHECK_STR(m->plugin, "memory");
        CHECK(m->path == NULL);
        CHECK(m->enabled);
        CHECK_INT(m->interval_ms, 10000);
        CHECK_INT(m->dry_run, -1);
        CHECK_INT(m->log_level, -1);
        CHECK_INT(m->queue_max, 0);
        CHECK_INT(m->line, 31);
        CHECK_INT(m->col, 3);
        CHECK(m->config);
        CHECK_INT(m->config->kind, YNODE_MAP);
        CHECK_INT(m->config->line, 34);
        CHECK(m->config_json == NULL);

        const instance_config *dep = config_find_instance(c, "deploy-a");
        CHECK_STR(dep->plugin, "deploy");
        CHECK_STR(dep->path, "/opt/deploy.so");
        CHECK(!dep->enabled);
        CHECK_INT(dep->interval_ms, 5000);
        CHECK_INT(dep->dry_run, 0);
        CHECK_INT(dep->log_level, LOG_WARNING);
        CHECK_INT(dep->queue_max, 64);
        CHECK(dep->config == NULL);

        /* `circadian:` with nothing under it: an instance with every default. */
        const instance_config *circ = config_find_instance(c, "circadian");
        CHECK_STR(circ->plugin, "circadian");
        CHECK(circ->enabled);
        CHECK_INT(circ->interval_ms, 5000);
        CHECK(config_find_instance(c, "nope") == NULL);

        s = instance_config_fingerprint(dep);
        CHECK_STR(s, "{\"config\":null,\"dry_run\":0,\"enabled\":false,\"interval\":5000,\"log_level\":4,"
                     "\"path\":\"/opt/deploy.so\",\"plugin\":\"deploy\",\"queue_max\":64}");
        free(s);
        config_free(c);
}

static void test_defaults(void) {
        agent_config *c = load_ok("");
        char host[256] = "";

        CHECK(gethostname(host, sizeof host - 1) == 0);
        char *dot = strchr(host, '.');
        if (dot)
                *dot = '\0';
        CHECK_STR(c->name, host);
        CHECK_INT(strv_length(c->plugin_dirs), 1);
        CHECK_STR(c->plugin_dirs[0], ORG_PLUGINDIR);
        CHECK_STR(c->state_dir, "/var/lib/organism");
        CHECK_STR(c->control_socket, "/run/organism/agentd.sock");
        CHECK_STR(c->sysroot, "/");
        CHECK(!c->dry_run);
        CHECK_INT(c->log_level, LOG_INFO);
        CHECK(c->metrics_textfile == NULL);
        CHECK_INT(c->metrics_interval_ms, 15000);
        CHECK_INT(c->queue_max, 4096);
        CHECK_INT(c->n_commands, 0);
        CHECK(c->nats == NULL);
        CHECK_INT(c->n_instances, 0);
        config_free(c);

        /* An empty nats block is a bridge with every default. */
        c = load_ok("bus:\n  nats: {}\nagent: {name: a, metrics_textfile: ~}\n");
        char *s = json_dumps(c->nats, JSON_COMPACT | JSON_SORT_KEYS);
        CHECK_STR(s, "{\"connect_timeout\":2000,\"reconnect_attempts\":-1,\"reconnect_buffer\":8388608,\"reconnect_wait\":2000,\"remote_control\":\"read-only\"}");
        free(s);
        CHECK(c->metrics_textfile == NULL);
        config_free(c);

        config_free(NULL);
}

static void test_unknown_keys(void) {
        expect_one("agent:\n"
                   "  name: a\n"
                   "agnet:\n"
                   "  name: b\n",
                   "t.yaml:3:1: agnet: unknown key");
        expect_one("agent:\n"
                   "  name: a\n"
                   "  nmae: b\n",
                   "t.yaml:3:3: agent.nmae: unknown key");
        expect_one("plugins:\n"
                   "  memory:\n"
                   "    interval: 5s\n"
                   "    intreval: 5s\n",
                   "t.yaml:4:5: plugins.memory.intreval: unknown key");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    url: nats://x:4222\n"
                   "    exprot: [a.b]\n",
                   "t.yaml:4:5: bus.nats.exprot: unknown key");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    tls: {ca: /a, certificate: /b}\n",
                   "t.yaml:3:19: bus.nats.tls.certificate: unknown key");
        expect_one("bus:\n"
                   "  mqtt: {}\n",
                   "t.yaml:2:3: bus.mqtt: unknown key");
}

static void test_wrong_types(void) {
        expect_one("agent:\n"
                   "  dry_run: maybe\n",
                   "t.yaml:2:12: agent.dry_run: expected a boolean (true or false), got \"maybe\"");
        expect_one("agent:\n"
                   "  queue_max: [1]\n",
                   "t.yaml:2:14: agent.queue_max: expected an integer, got a list");
        expect_one("agent:\n"
                   "  name: {first: a}\n",
                   "t.yaml:2:9: agent.name: expected a string, got a mapping");
        expect_one("agent: [a]\n", "t.yaml:1:8: agent: expected a mapping, got a list");
        expect_one("- a\n- b\n", "t.yaml:1:1: document: expected a mapping, got a list");
        expect_one("agent:\n"
                   "  plugin_dirs: [/a, [/b]]\n",
                   "t.yaml:2:21: agent.plugin_dirs[1]: expected a string, got a list");
        expect_one("plugins:\n"
                   "  memory: yes\n",
                   "t.yaml:2:11: plugins.memory: expected a mapping, got \"yes\"");
        expect_one("agent:\n"
                   "  commands: [zfs]\n",
                   "t.yaml:2:13: agent.commands: expected a mapping of names to strings, got a list");
}

static void test_bad_values(void) {
        expect_one("plugins:\n"
                   "  memory:\n"
                   "    interval: 5 parsecs\n",
                   "t.yaml:3:15: plugins.memory.interval: expected a duration (e.g. 5s, 250ms, 1h30m), got "
                   "\"5 parsecs\"");
        expect_one("plugins:\n"
                   "  memory:\n"
                   "    interval: 0s\n",
                   "t.yaml:3:15: plugins.memory.interval: must be greater than 0");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    reconnect_buffer: lots\n",
                   "t.yaml:3:23: bus.nats.reconnect_buffer: expected a size (e.g. 3GiB), got \"lots\"");
        expect_one("agent:\n"
                   "  metrics_interval: 99999999999999999d\n",
                   "t.yaml:2:21: agent.metrics_interval: expected a duration (e.g. 5s, 250ms, 1h30m), got "
                   "\"99999999999999999d\" (too large)");
        expect_one("agent:\n"
                   "  log_level: loud\n",
                   "t.yaml:2:14: agent.log_level: expected one of err, warning, notice, info, debug, got \"loud\"");
        expect_one("plugins:\n"
                   "  m: {log_level: verbose}\n",
                   "t.yaml:2:18: plugins.m.log_level: expected one of err, warning, notice, info, debug, got "
                   "\"verbose\"");
        expect_one("agent:\n"
                   "  commands:\n"
                   "    zfs: zfs\n",
                   "t.yaml:3:10: agent.commands.zfs: expected an absolute path, got \"zfs\"");
        expect_one("agent:\n"
                   "  name: my.host\n",
                   "t.yaml:2:9: agent.name: expected a name of letters, digits, '_' and '-' (at most 64), got "
                   "\"my.host\"");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    url: nats://a\n"
                   "    servers: [nats://b]\n",
                   "t.yaml:4:5: bus.nats.servers: give url or servers, not both");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    reconnect_attempts: -2\n",
                   "t.yaml:3:25: bus.nats.reconnect_attempts: must be at least -1");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    jetstream: {streams: {a: 1}}\n",
                   "t.yaml:3:26: bus.nats.jetstream.streams: expected a list of mappings, got a mapping");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    jetstream: {streams: [{name: T, subjects: [a.b], retention: forever}]}\n",
                   "t.yaml:3:65: bus.nats.jetstream.streams[0].retention: expected limits, workqueue or interest");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    remote_control: everyone\n",
                   "t.yaml:3:21: bus.nats.remote_control: expected off, read-only or admin, got \"everyone\"");
        /* commands from NATS need an authenticated connection (SPEC §6) */
        expect_one("bus:\n"
                   "  nats:\n"
                   "    import: [gpu.worker.>, \"gpu.*.run.*\"]\n",
                   "t.yaml:3:28: bus.nats.import[1]: \"gpu.*.run.*\" takes commands (gpu.task.run.>) from NATS "
                   "without authentication: set bus.nats.token, user and password, creds or tls.cert, so that the server authenticates this agent");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    import: [gpu.task.enqueue]\n"
                   "    tls: {ca: /etc/ca.pem}\n",
                   "t.yaml:3:14: bus.nats.import[0]: \"gpu.task.enqueue\" takes commands (gpu.task.enqueue) from NATS "
                   "without authentication: set bus.nats.token, user and password, creds or tls.cert, so that the server authenticates this agent");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    jetstream: {streams: [{name: T, subjects: [a.b, gpu.task.>]}]}\n",
                   "t.yaml:3:53: bus.nats.jetstream.streams[0].subjects[1]: \"gpu.task.>\" keeps commands "
                   "(gpu.task.run.>) from NATS without authentication: set bus.nats.token, user and password, creds or tls.cert, so that the server authenticates this agent");
        expect_one("bus:\n"
                   "  nats:\n"
                   "    remote_control: admin\n",
                   "t.yaml:3:21: bus.nats.remote_control: admin lets NATS peers run admin verbs, but nothing "
                   "authenticates this agent: set bus.nats.token, user and password, creds or tls.cert, so that the server authenticates this agent");
        expect_one("agent:\n"
                   "  queue_max: 0\n",
                   "t.yaml:2:14: agent.queue_max: must be at least 1");
}

static void test_bad_patterns(void) {
        size_t n;
        char *s = load_fail("bus:\n"
                            "  nats:\n"
                            "    export: [a.>.b, \"a..b\", ok.*, \"\"]\n"
                            "    import:\n"
                            "      - ui.>\n"
                            "      - \"x y\"\n",
                            &n);
        CHECK_INT(n, 4);
        CHECK_CONTAINS(s, "t.yaml:3:14: bus.nats.export[0]: expected a subject pattern (e.g. gpu.task.*, alert.>), "
                          "got \"a.>.b\"");
        CHECK_CONTAINS(s, "t.yaml:3:21: bus.nats.export[1]: expected a subject pattern");
        CHECK_CONTAINS(s, "got \"a..b\"");
        CHECK_CONTAINS(s, "t.yaml:3:35: bus.nats.export[3]: expected a subject pattern");
        CHECK_CONTAINS(s, "t.yaml:6:9: bus.nats.import[1]: expected a subject pattern");
        free(s);
}

static void test_instances(void) {
        expect_one("plugins:\n"
                   "  memory: {}\n"
                   "  memory: {interval: 1s}\n",
                   "t.yaml:3:3: duplicate key \"memory\" (first at line 2)");
        expect_one("plugins:\n"
                   "  bad.name: {}\n",
                   "t.yaml:2:3: plugins.bad.name: invalid instance name (letters, digits, '_' and '-', at most 64, not starting with '_')");
        expect_one("plugins:\n"
                   "  \"with space\":\n",
                   "t.yaml:2:3: plugins.with space: invalid instance name (letters, digits, '_' and '-', at most "
                   "64, not starting with '_')");
        expect_one("plugins:\n"
                   "  _agent: {plugin: example}\n",
                   "t.yaml:2:3: plugins._agent: invalid instance name (letters, digits, '_' and '-', at most "
                   "64, not starting with '_')");
}

static void test_many_faults(void) {
        size_t n;
        char *s = load_fail("agent:\n"                    /* 1 */
                            "  name: a\n"                 /* 2 */
                            "  colour: blue\n"            /* 3 */
                            "  dry_run: 3\n"              /* 4 */
                            "bus:\n"                      /* 5 */
                            "  nats:\n"                   /* 6 */
                            "    export: [a.>.b]\n"       /* 7 */
                            "plugins:\n"                  /* 8 */
                            "  memory:\n"                 /* 9 */
                            "    interval: soon\n"        /* 10 */
                            "    config: {anything: 1}\n" /* 11 */
                            "  x/y: {}\n"                 /* 12 */
                            "extra: 1\n",                 /* 13 */
                            &n);
        CHECK_INT(n, 6);
        CHECK_CONTAINS(s, "t.yaml:3:3: agent.colour: unknown key");
        CHECK_CONTAINS(s, "t.yaml:4:12: agent.dry_run: expected a boolean (true or false), got \"3\"");
        CHECK_CONTAINS(s, "t.yaml:7:14: bus.nats.export[0]: expected a subject pattern");
        CHECK_CONTAINS(s, "t.yaml:10:15: plugins.memory.interval: expected a duration");
        CHECK_CONTAINS(s, "t.yaml:12:3: plugins.x/y: invalid instance name");
        CHECK_CONTAINS(s, "t.yaml:13:1: extra: unknown key");
        free(s);

        /* YAML faults are reported the same way (and stop there: no tree to check). */
        s = load_fail("agent:\n  name: [a\n", &n);
        CHECK_CONTAINS(s, "t.yaml:3:1: ");
        free(s);
        s = load_fail("agent: &x {name: a}\nplugins:\n  m: *x\n", &n);
        CHECK_INT(n, 2);
        CHECK_CONTAINS(s, "t.yaml:1:8: anchors (&x) are not supported");
        CHECK_CONTAINS(s, "t.yaml:3:6: aliases (*x) are not supported");
        free(s);
}

/* A plugin's config map, as the memory plugin might declare it. */
static const org_config_entry profile_entries[] = {
        {"arc_max", ORG_CFG_SIZE, NULL, true, "ARC ceiling", NULL},
        {"balloon_mb", ORG_CFG_INT, "16384", false, "balloon target", NULL},
        ORG_CONFIG_END,
};
static const org_config_entry limit_entries[] = {
        {"soft", ORG_CFG_SIZE, "1GiB", false, "", NULL},
        {"hard", ORG_CFG_SIZE, NULL, false, "", NULL},
        ORG_CONFIG_END,
};
static const org_config_entry mem_entries[] = {
        {"mem_low", ORG_CFG_SIZE, "3GiB", false, "low watermark", NULL},
        {"mem_high", ORG_CFG_SIZE, NULL, true, "high watermark", NULL},
        {"settle", ORG_CFG_DURATION, "1m", false, "", NULL},
        {"profiles", ORG_CFG_DICT, NULL, false, "per-phase targets", profile_entries},
        {"phase_subject", ORG_CFG_PATTERN, "circadian.phase", false, "", NULL},
        {"tags", ORG_CFG_STRING_LIST, "[a, b]", false, "", NULL},
        {"levels", ORG_CFG_INT_LIST, NULL, false, "", NULL},
        {"ratio", ORG_CFG_DOUBLE, "0.5", false, "", NULL},
        {"phases", ORG_CFG_STRING_DICT, NULL, false, "", NULL},
        {"limits", ORG_CFG_OBJECT, "{}", false, "", limit_entries},
        {"extra", ORG_CFG_ANY, NULL, false, "", NULL},
        {"watch", ORG_CFG_PATTERN_LIST, NULL, false, "", NULL},
        ORG_CONFIG_END,
};

static void test_plugin_map(void) {
        agent_config *c = load_ok(full_config);
        const instance_config *m = config_find_instance(c, "memory");
        json_t *j = NULL;
        diag d;

        diag_init(&d, "t.yaml");
        CHECK_INT(config_schema_check(mem_entries, m->config, "plugins.memory.config", m->line, m->col, &j, &d), 0);
        CHECK_INT(d.n, 0);
        CHECK_INT(json_integer_value(config_json_path(j, "mem_low")), 3LL << 30);
        CHECK_INT(json_integer_value(config_json_path(j, "mem_high")), 6LL << 30);
        CHECK_INT(json_integer_value(config_json_path(j, "settle")), 60000);
        CHECK_INT(json_integer_value(config_json_path(j, "profiles.day.arc_max")), 8LL << 30);
        CHECK_INT(json_integer_value(config_json_path(j, "profiles.day.balloon_mb")), 16384);
        CHECK_INT(json_integer_value(config_json_path(j, "profiles.night.arc_max")), 4LL << 30);
        CHECK_INT(json_integer_value(config_json_path(j, "profiles.night.balloon_mb")), 1000);
        CHECK_STR(json_string_value(config_json_path(j, "phase_subject")), "circadian.phase");
        CHECK_INT(json_array_size(config_json_path(j, "tags")), 2);
        CHECK(json_real_value(config_json_path(j, "ratio")) == 0.5);
        CHECK_INT(json_integer_value(config_json_path(j, "limits.soft")), 1LL << 30);
        CHECK(config_json_path(j, "limits.hard") == NULL);
        CHECK(config_json_path(j, "levels") == NULL);
        CHECK(config_json_path(j, "profiles.noon") == NULL);
        CHECK(config_json_path(j, "mem_low.x") == NULL);

        /* The fingerprint follows the checked block once it is set. */
        char *before = instance_config_fingerprint(m);
        c->instances[0].config_json = j;
        char *after = instance_config_fingerprint(m);
        CHECK(before && after);
        CHECK(!streq(before, after));
        CHECK_CONTAINS(after, "\"mem_low\":3221225472");
        free(before);
        free(after);
        config_free(c); /* drops config_json too */
        diag_done(&d);

        /* Every fault of the block at once, with full key paths. */
        c = load_ok("plugins:\n"                                          /* 1 */
                    "  memory:\n"                                         /* 2 */
                    "    config:\n"                                       /* 3 */
                    "      mem_low: lots\n"                               /* 4 */
                    "      profiles:\n"                                   /* 5 */
                    "        day: {arc_max: 8GiB}\n"                      /* 6 */
                    "        night: {balloon_mb: 1000}\n"                 /* 7 */
                    "        noon: {arc_max: 1GiB, arc_min: 1GiB}\n"      /* 8 */
                    "      levels: [1, two]\n"                            /* 9 */
                    "      ratio: half\n"                                 /* 10 */
                    "      phases: {day: \"07:00\", night: [1]}\n"        /* 11 */
                    "      limits: {hard: 2XB}\n"                         /* 12 */
                    "      watch: [a.*, \">.a\"]\n");                     /* 13 */
        m = config_find_instance(c, "memory");
        diag_init(&d, "t.yaml");
        j = (json_t *)0x1;
        CHECK_INT(config_schema_check(mem_entries, m->config, "plugins.memory.config", m->line, m->col, &j, &d),
                  -EINVAL);
        CHECK(j == (json_t *)0x1);
        char *s = diag_join(&d);
        CHECK_INT(d.n, 9);
        CHECK_CONTAINS(s, "t.yaml:4:16: plugins.memory.config.mem_low: expected a size (e.g. 3GiB), got \"lots\"");
        CHECK_CONTAINS(s, "t.yaml:2:3: plugins.memory.config.mem_high: missing required key");
        CHECK_CONTAINS(s, "t.yaml:7:9: plugins.memory.config.profiles.night.arc_max: missing required key");
        CHECK_CONTAINS(s, "t.yaml:8:31: plugins.memory.config.profiles.noon.arc_min: unknown key");
        CHECK_CONTAINS(s, "t.yaml:9:19: plugins.memory.config.levels[1]: expected an integer, got \"two\"");
        CHECK_CONTAINS(s, "t.yaml:10:14: plugins.memory.config.ratio: expected a number, got \"half\"");
        CHECK_CONTAINS(s, "t.yaml:11:37: plugins.memory.config.phases.night: expected a string, got a list");
        CHECK_CONTAINS(s, "t.yaml:12:22: plugins.memory.config.limits.hard: expected a size (e.g. 3GiB), got \"2XB\"");
        CHECK_CONTAINS(s, "t.yaml:13:20: plugins.memory.config.watch[1]: expected a subject pattern");
        free(s);
        diag_done(&d);

        /* An absent block: defaults only, and a missing required key is reported at the
         * instance's key. */
        diag_init(&d, "t.yaml");
        CHECK_INT(config_schema_check(mem_entries, NULL, "plugins.memory.config", 5, 3, &j, &d), -EINVAL);
        CHECK_INT(d.n, 1);
        CHECK_STR(d.lines[0], "t.yaml:5:3: plugins.memory.config.mem_high: missing required key");
        diag_done(&d);
        config_free(c);

        /* A programmer's bad default is reported, not silently used. */
        static const org_config_entry bad_default[] = {
                {"period", ORG_CFG_DURATION, "soon", false, "", NULL},
                ORG_CONFIG_END,
        };
        diag_init(&d, "t.yaml");
        CHECK_INT(config_schema_check(bad_default, NULL, "x", 1, 1, &j, &d), -EINVAL);
        CHECK_STR(d.lines[0], "t.yaml:1:1: x.period: invalid built-in default \"soon\"");
        diag_done(&d);

        /* An object defaulting to "{}" with a required child: missing at the parent. */
        static const org_config_entry need_entries[] = {
                {"must", ORG_CFG_STRING, NULL, true, "", NULL},
                ORG_CONFIG_END,
        };
        static const org_config_entry outer_entries[] = {
                {"inner", ORG_CFG_OBJECT, "{}", false, "", need_entries},
                ORG_CONFIG_END,
        };
        diag_init(&d, "t.yaml");
        CHECK_INT(config_schema_check(outer_entries, NULL, "y", 2, 5, &j, &d), -EINVAL);
        CHECK_INT(d.n, 1);
        CHECK_STR(d.lines[0], "t.yaml:2:5: y.inner.must: missing required key");
        diag_done(&d);

        CHECK_STR(config_type_name(ORG_CFG_SIZE), "size");
        CHECK_STR(config_type_name(ORG_CFG_PATTERN_LIST), "pattern list");
}

static void test_fingerprint(void) {
        agent_config *a = load_ok("plugins:\n"
                                  "  one: {plugin: p, config: {x: 1, y: [a]}}\n"
                                  "  two: {plugin: p, interval: 5000ms, config: {y: [a], x: 1}}\n"
                                  "  three: {plugin: p, config: {x: 2, y: [a]}}\n");
        char *f1 = instance_config_fingerprint(config_find_instance(a, "one"));
        char *f2 = instance_config_fingerprint(config_find_instance(a, "two"));
        char *f3 = instance_config_fingerprint(config_find_instance(a, "three"));
        CHECK_STR(f1, f2); /* key order and spelling of the interval do not matter */
        CHECK(!streq(f1, f3));
        CHECK_STR(f1, "{\"config\":{\"x\":1,\"y\":[\"a\"]},\"dry_run\":-1,\"enabled\":true,\"interval\":5000,"
                      "\"log_level\":-1,\"path\":null,\"plugin\":\"p\",\"queue_max\":0}");
        free(f1);
        free(f2);
        free(f3);
        config_free(a);
}

static void test_file(void) {
        /* in a folder of our own: a file right in the sticky /tmp is refused (trust.h) */
        char dir[] = "/tmp/test-config-XXXXXX", path[64];
        CHECK(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/agentd.yaml", dir);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        CHECK(fd >= 0);
        const char *text = "agent:\n  name: filehost\n  bogus: 1\n";
        CHECK_INT(write(fd, text, strlen(text)), (long long)strlen(text));
        close(fd);

        diag d;
        agent_config *c = NULL;
        diag_init(&d, NULL);
        CHECK_INT(config_load(path, &c, &d), -EINVAL);
        CHECK(c == NULL);
        CHECK_INT(d.n, 1);
        char expect[128];
        snprintf(expect, sizeof expect, "%s:3:3: agent.bogus: unknown key", path);
        CHECK_STR(d.lines[0], expect);
        diag_done(&d);

        unlink(path);
        diag_init(&d, NULL);
        CHECK_INT(config_load(path, &c, &d), -ENOENT);
        CHECK(c == NULL);
        diag_done(&d);
        rmdir(dir);
}

int main(void) {
        RUN(test_full);
        RUN(test_defaults);
        RUN(test_unknown_keys);
        RUN(test_wrong_types);
        RUN(test_bad_values);
        RUN(test_bad_patterns);
        RUN(test_instances);
        RUN(test_many_faults);
        RUN(test_plugin_map);
        RUN(test_fingerprint);
        RUN(test_file);
        return 0;
}
