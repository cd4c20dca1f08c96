/* subject.h — NATS subject syntax: tokens of printable non-space characters separated
 * by single dots, no empty token. Patterns may use `*` as a whole token and `>` as the
 * last token. */
#ifndef CORE_SUBJECT_H
#define CORE_SUBJECT_H

#include <stdbool.h>

bool subject_is_valid(const char *s);   /* a literal subject: no wildcards */
bool pattern_is_valid(const char *s);   /* a subscription pattern */
/* Whether the literal SUBJECT matches PATTERN (both assumed valid). */
bool subject_matches(const char *pattern, const char *subject);

#endif
