/* isolate.h — isolated instances (`isolate: true`): the instance's .so runs in a child
 * agentd process (`agentd --isolated-child`), its hooks are frames over a socketpair
 * and its host calls come back as frames (isolate_proto.h). A crash or a hook past
 * hook_timeout kills only the child; the parent logs it with the signal and the hook,
 * counts it, keeps the instance's messages queued and starts a new child with
 * exponential backoff, until max_restarts crashes within a minute mark it failed. */
#ifndef CORE_ISOLATE_H
#define CORE_ISOLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "bus.h"
#include "instance.h"

typedef struct isolate isolate;

/* Starts a child running so_path with the instance's current config text. With sync
 * (reload) it waits for the child's init and, on success, retires the previous child
 * after the new one is up; on failure nothing changes and *ret_error says why. Without
 * sync (start, restart) init completes later on the loop. blob: state for
 * restore_state, or NULL. Creates in->iso on first use. */
int isolate_start(instance *in, const char *so_path, const void *blob, size_t blob_len, bool sync, char **ret_error);
/* Stops every child (fini, then SIGKILL after a grace period) and frees iso. NULL ok. */
void isolate_free(isolate *iso);

/* A message for handle (verb NULL) or a call (verb points into msg's subject). */
void isolate_deliver(isolate *iso, const bus_msg *msg, const char *verb);
/* A message of a durable consumer that ctx (a child's parent-side context) created;
 * an error means: NAK it (no child ready to take it now). */
int isolate_deliver_durable(isolate *iso, struct org_ctx *ctx, const org_msg *msg);
void isolate_tick(isolate *iso);
/* Synchronous save_state / verify in the running child (bounded by hook_timeout). */
int isolate_save(isolate *iso, void **ret_blob, size_t *ret_len);
int isolate_verify(isolate *iso, char **ret_json);
/* Adds "isolated", "pid", "crashes", ... to an instance's JSON view. */
void isolate_to_json(const isolate *iso, json_t *o);
/* The running commands of the current child (the parent runs them), for `plugin info`. */
json_t *isolate_execs_to_json(const isolate *iso);

/* main() of `agentd --isolated-child SOCKFD SHMFD`. */
int isolate_child_main(int argc, char **argv);
/* main() of `agentd --isolated-probe FD PATH CHECK_PERMS`: the descriptor as JSON. */
int isolate_probe_main(int argc, char **argv);
/* agentd's environment for a child (adjusted under ASan), malloc'd, NULL on ENOMEM. */
char **isolate_child_env(void);

/* Opens a plugin file: with isolate, without ever mapping it here — a child reads the
 * descriptor and a stand-in comes back (its hooks must not be called; they answer
 * -EOPNOTSUPP). Otherwise loader_open. Close with plugin_close. */
int plugin_open(const char *path, bool check_perms, bool isolated, plugin_so **ret, char **ret_error);
void plugin_close(plugin_so *so); /* accepts NULL */

#endif
