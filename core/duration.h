/* duration.h — parsing of the config's durations ("250ms", "5s", "1h30m", "7d") and
 * sizes ("512", "64KiB", "3GiB", "2G": powers of 1024; "kB"/"MB"/"GB" powers of 1000).
 * A bare number is seconds for a duration and bytes for a size. */
#ifndef CORE_DURATION_H
#define CORE_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* 0 or -EINVAL (syntax) / -ERANGE (overflow). */
int parse_duration_ms(const char *s, uint64_t *ret_ms);
int parse_size(const char *s, uint64_t *ret_bytes);
/* "1h30m", "250ms", "0" into buf. */
void format_duration_ms(uint64_t ms, char *buf, size_t size);

#endif
