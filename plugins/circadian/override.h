/* override.h — the manual override of circadian as plain data: which phase an operator
 * forced, since when and until when, its duration syntax, and its persisted form (one
 * JSON text in the instance's key/value store, so a restart keeps it until it
 * expires). Pure: no host, no clock; instants are arguments. */
#ifndef CIRCADIAN_OVERRIDE_H
#define CIRCADIAN_OVERRIDE_H

#include <stdbool.h>
#include <stdint.h>

#include "schedule.h"

#define CIRCADIAN_OVERRIDE_KEY "override" /* kv key */

typedef struct circadian_override {
        bool active;
        char phase[CIRCADIAN_NAME_MAX];
        uint64_t since_us; /* CLOCK_REALTIME µs when it was set */
        uint64_t until_us; /* expiry, 0 = until cleared */
} circadian_override;

/* "250ms", "90s", "45m", "2h", "7d" and sums of them ("1h30m") → milliseconds.
 * -EINVAL for anything else, zero, or more than 100 years. */
int circadian_parse_duration(const char *text, uint64_t *ret_ms);

/* The persisted form: {"phase": P, "since_us": N, "until_us": N} or "null" when
 * inactive. Returns a malloc'd string the caller frees, NULL on ENOMEM. */
char *circadian_override_to_json(const circadian_override *o);
/* Parses what circadian_override_to_json wrote. "null" (or an empty text) gives an
 * inactive override; -EINVAL for anything malformed. *ret is written only on success. */
int circadian_override_from_json(const char *text, circadian_override *ret);

/* True when active with an expiry at or before now_us. */
bool circadian_override_expired(const circadian_override *o, uint64_t now_us);

#endif
