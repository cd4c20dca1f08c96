/* agentd.c — the daemon's entry point: options, `--check`, signals, the sd-event
 * loop, systemd notification. Everything else lives in agent.c. */
#include <getopt.h>
#include <signal.h>

#include <organism/plugin.h>

#include "agent.h"
#include "isolate.h"
#include "log.h"
#include "notify.h"
#include "org-build-config.h"
#include "util.h"

static void help(void) {
        printf("Usage: agentd [OPTIONS]\n"
               "\n"
               "The organism agent: loads the plugin instances declared in its YAML config, runs\n"
               "them on one event loop and connects them through its internal bus.\n"
               "\n"
               "Options:\n"
               "  -c, --config FILE     configuration file (default %s)\n"
               "      --check           check the configuration, every plugin's config block\n"
               "                        and the owners and modes of the files it names (config,\n"
               "                        plugins, commands) included, print each fault as\n"
               "                        FILE:LINE:COL and exit:\n"
               "                        0 when valid, 1 otherwise; nothing is started\n"
               "      --log-level LEVEL override agent.log_level (err|warning|notice|info|debug)\n"
               "      --version         print the version and exit\n"
               "  -h, --help            this text\n"
               "\n"
               "Signals: SIGTERM/SIGINT stop cleanly (fini in reverse order), SIGHUP reloads the\n"
               "configuration and restarts only the instances whose config changed.\n"
               "Control: agentctl(1) on the control socket (agent.control_socket).\n"
               "\n"
               "Exit status: 0 clean stop or valid config, 1 invalid config or start failure,\n"
               "2 usage error.\n",
               ORG_DEFAULT_CONFIG);
}

static int on_term(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        log_info("Received %s, stopping.", strsignal((int)si->ssi_signo));
        notify_stopping();
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

static int on_hup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        agent *a = userdata;
        json_t *summary = NULL;
        _cleanup_free_ char *errors = NULL;
        notify_reloading();
        if (agent_reload_config(a, &summary, &errors) < 0)
                log_error("Configuration reload refused, nothing changed:\n%s", errors ? errors : "?");
        json_decref(summary);
        notify_ready();
        return 0;
}

int main(int argc, char **argv) {
        enum { OPT_CHECK = 0x100, OPT_LOG_LEVEL, OPT_VERSION };
        static const struct option opts[] = {
                {"config", required_argument, NULL, 'c'},   {"check", no_argument, NULL, OPT_CHECK},
                {"log-level", required_argument, NULL, OPT_LOG_LEVEL}, {"version", no_argument, NULL, OPT_VERSION},
                {"help", no_argument, NULL, 'h'},           {0},
        };
        const char *config_path = ORG_DEFAULT_CONFIG, *level_override = NULL;
        bool check = false;
        int c;
        /* hidden helper mode: the child process of an isolated instance (isolate_child.c) */
        if (argc >= 2 && streq(argv[1], "--isolated-child"))
                return isolate_child_main(argc, argv);
        if (argc >= 2 && streq(argv[1], "--isolated-probe"))
                return isolate_probe_main(argc, argv);
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        config_path = optarg;
                        break;
                case OPT_CHECK:
                        check = true;
                        break;
                case OPT_LOG_LEVEL:
                        level_override = optarg;
                        break;
                case OPT_VERSION:
                        printf("agentd %s (plugin ABI %u, host ABI %u)\n", ORG_VERSION, ORG_PLUGIN_ABI_VERSION,
                               ORG_HOST_ABI_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'agentd --help'.\n");
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "agentd: unexpected argument '%s'. Try 'agentd --help'.\n", argv[optind]);
                return 2;
        }
        log_open();
        int level = -1;
        if (level_override && (level = log_level_from_string(level_override)) < 0) {
                fprintf(stderr, "agentd: unknown log level '%s'.\n", level_override);
                return 2;
        }

        /* config_load refuses a config file that others could have written (trust.h), the
         * loader such plugin files, at start as at every reload */
        diag d;
        diag_init(&d, config_path);
        agent_config *cfg = NULL;
        int r = config_load(config_path, &cfg, &d);
        if (r >= 0)
                r = agent_config_resolve(cfg, true, &d);
        else if (r == -EINVAL)
                agent_config_check_blocks(config_path, true, &d);
        if (r < 0 || d.n > 0) {
                if (d.n == 0)
                        diag_add(&d, 0, 0, "%s", strerror(-r));
                diag_print(&d, stderr);
                fprintf(stderr, "%s: %zu error%s.\n", config_path, d.n, d.n == 1 ? "" : "s");
                diag_done(&d);
                config_free(cfg);
                return 1;
        }
        diag_done(&d);
        if (check) {
                printf("%s: valid (%zu plugin instance%s).\n", config_path, cfg->n_instances,
                       cfg->n_instances == 1 ? "" : "s");
                config_free(cfg);
                return 0;
        }
        log_set_max_level(level >= 0 ? level : cfg->log_level);

        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);

        sd_event *event = NULL;
        r = sd_event_default(&event);
        if (r < 0) {
                config_free(cfg);
                return log_error_errno(r, "Failed to create the event loop: %m"), 1;
        }
        sd_event_set_watchdog(event, true); /* pings WATCHDOG=1 from the loop when WATCHDOG_USEC is set */

        agent *a = NULL;
        r = agent_new(event, cfg, config_path, &a);
        if (r < 0) {
                log_error_errno(r, "Failed to start: %m");
                sd_event_unref(event);
                return 1;
        }
        sd_event_add_signal(event, NULL, SIGTERM, on_term, a);
        sd_event_add_signal(event, NULL, SIGINT, on_term, a);
        sd_event_add_signal(event, NULL, SIGHUP, on_hup, a);

        log_info("agentd %s ready: agent %s, %zu instance%s, control socket %s.", ORG_VERSION, a->config->name,
                 a->n_instances, a->n_instances == 1 ? "" : "s", a->config->control_socket);
        notify_ready();
        notify_status("%zu plugin instances", a->n_instances);

        r = sd_event_loop(event);
        agent_free(a);
        sd_event_unref(event);
        log_info("Stopped.");
        return r < 0 ? 1 : 0;
}
