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
/* Whether some literal subject matches both patterns A and B (both assumed valid):
 * what an import may bring in, asked of a subject family. */
bool patterns_overlap(const char *a, const char *b);

#endif
