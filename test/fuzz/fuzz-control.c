/* fuzz-control.c — the control protocol under libFuzzer: a real agent (no plugins) on
 * a socket in a temporary folder; each input is written by a client connection as
 * one request stream, the loop runs until agentd has answered and closed, and the
 * agent must stay whole. Inputs that name the loading verbs are skipped: they would
 * let the fuzzer dlopen arbitrary files of the machine. */
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static sd_event *event;
static agent *the_agent;
static char sock_path[256];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        char dir[] = "/tmp/fuzz-control.XXXXXX";
        if (!mkdtemp(dir))
                abort();
        char cfg[4096];
        snprintf(sock_path, sizeof sock_path, "%s/agentd.sock", dir);
        int n = snprintf(cfg, sizeof cfg,
                         "agent:\n  name: fuzz\n  state_dir: %s/state\n  control_socket: %s\n  plugin_dirs: []\n"
                         "  log_level: crit\nplugins: {}\n",
                         dir, sock_path);
        diag d;
        diag_init(&d, "fuzz");
        agent_config *c = NULL;
        if (config_load_string(cfg, (size_t)n, "fuzz.yaml", &c, &d) < 0)
                abort();
        diag_done(&d);
        log_set_max_level(LOG_CRIT);
        signal(SIGPIPE, SIG_IGN);
        if (sd_event_new(&event) < 0 || agent_new(event, c, NULL, &the_agent) < 0)
                abort();
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (memmem(data, size, "load", 4))
                return 0;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
                abort();
        /* one write of the input and a final newline, then EOF: agentd answers and closes */
        size_t off = 0;
        char buf[65536];
        for (int i = 0; i < 2000; i++) {
                if (off < size) {
                        ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
                        if (w > 0)
                                off += (size_t)w;
                }
                if (off == size) {
                        send(fd, "\n", 1, MSG_NOSIGNAL);
                        shutdown(fd, SHUT_WR);
                        off++;
                }
                sd_event_run(event, 0);
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r == 0)
                        break;
        }
        close(fd);
        for (int i = 0; i < 10; i++)
                sd_event_run(event, 0);
        return 0;
}
