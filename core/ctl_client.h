/* ctl_client.h — agentctl's side of the control protocol: connect, read the hello,
 * send a request, read its reply or its stream, each with a time-out. */
#ifndef CORE_CTL_CLIENT_H
#define CORE_CTL_CLIENT_H

#include <stdint.h>

#include <jansson.h>

typedef struct ctl_client ctl_client;

/* Connects and reads the hello. On refusal returns -EACCES and the server's message
 * in *ret_error (malloc'd). */
int ctl_client_connect(const char *path, uint64_t timeout_ms, ctl_client **ret, char **ret_error);
void ctl_client_free(ctl_client *c);
/* The hello object (borrowed). */
json_t *ctl_client_hello(ctl_client *c);

/* Sends {"id","verb","args","protocol"} (args stolen, may be NULL). */
int ctl_client_send(ctl_client *c, const char *verb, json_t *args);
/* Reads the next line for the current request; timeout 0 = wait forever. -ETIMEDOUT,
 * -ECONNRESET when the daemon closed. New reference. */
int ctl_client_read(ctl_client *c, uint64_t timeout_ms, json_t **ret);

#endif
