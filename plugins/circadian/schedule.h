/* schedule.h — the circadian day as pure computation: named phases with local start
 * times, and which phase holds at a given instant, since when, and what comes next.
 * Nothing here touches the host or reads the clock: the instant is always an argument,
 * so tests and the benchmark drive it directly. Local time is the process's time zone
 * (TZ, else /etc/localtime), read through localtime_r/mktime.
 *
 * The rule for days whose wall clock is not continuous (DST):
 *  - a start time the clock reads once starts the phase at that instant; on a 23 h or
 *    25 h day the phases simply last an hour less or more;
 *  - a start time the clock reads twice (fall-back, e.g. 02:30 on 2026-10-25 in
 *    Europe/Paris) starts the phase at its FIRST occurrence, and only then: the repeat
 *    an hour later is not a boundary, so nothing flaps;
 *  - a start time the clock never reads (spring-forward, e.g. 02:30 on 2026-03-29 in
 *    Europe/Paris) starts the phase at the instant the clock jumps over it (03:00
 *    CEST); the phase is not skipped. If two phases start inside the same skipped
 *    span, both map to that instant and the later one wins: the earlier lasts 0 s that
 *    day and is never entered. */
#ifndef CIRCADIAN_SCHEDULE_H
#define CIRCADIAN_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#define CIRCADIAN_NAME_MAX 64 /* phase names: 1..63 of [A-Za-z0-9_.-] */
#define CIRCADIAN_TIME_MAX 32 /* "2026-03-29T01:00:00.000Z" and "HH:MM:SS" fit */

typedef struct circadian_phase {
        char name[CIRCADIAN_NAME_MAX];
        int start; /* seconds after local midnight, 0..86399 */
} circadian_phase;

/* Phases sorted by start. Zero-initialised = empty. */
typedef struct circadian_schedule {
        circadian_phase *phases;
        size_t n;
} circadian_schedule;

/* The phase holding at an instant (unix seconds). */
typedef struct circadian_eval {
        size_t cur;      /* index in schedule.phases */
        int64_t since;   /* start of this occurrence of cur */
        size_t next;     /* the phase entered at next_at */
        int64_t next_at; /* > the instant evaluated */
} circadian_eval;

/* "HH:MM" or "HH:MM:SS" (two digits each, 00:00..23:59:59) → seconds after midnight.
 * -EINVAL for anything else. */
int circadian_parse_clock(const char *text, int *ret_seconds);
/* Writes "HH:MM", or "HH:MM:SS" when the seconds are not zero. */
void circadian_format_clock(int seconds, char *buf, size_t size);
/* RFC 3339 UTC with milliseconds, as the core's time stamps: "2026-03-29T01:00:00.000Z". */
void circadian_format_rfc3339(uint64_t realtime_us, char *buf, size_t size);
/* True for 1..63 characters of [A-Za-z0-9_.-]: names end up in JSON, metric labels and
 * log lines. */
int circadian_name_valid(const char *name);

/* Adds a phase, keeping the order. -EINVAL bad name or start, -EEXIST a phase of that
 * name or that start exists (ret_clash, may be NULL, then names it), -ENOMEM. */
int circadian_schedule_add(circadian_schedule *s, const char *name, int start, const char **ret_clash);
/* Index of the phase named name, or -1. */
long circadian_schedule_find(const circadian_schedule *s, const char *name);
/* Frees the phases; the schedule is empty afterwards. Accepts an empty schedule. */
void circadian_schedule_clear(circadian_schedule *s);

/* The instant local date y-mon-mday (mon 1..12; mday may overflow, it is normalised)
 * reads `seconds` after midnight, by the rule above. -EINVAL when the time zone gives
 * no answer at all (mktime failed). */
int circadian_local_instant(int y, int mon, int mday, int seconds, int64_t *ret);

/* The phase at instant `now` (unix seconds): a boundary at exactly `now` is already
 * in force ([start, next start)). -ENOENT for an empty schedule. */
int circadian_schedule_eval(const circadian_schedule *s, int64_t now, circadian_eval *ret);

#endif
