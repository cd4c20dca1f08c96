/* organism/text.h — the few text forms every organ writes or checks the same way,
 * header-only (static inline) so a plugin links against nothing of agentd: the RFC 3339
 * UTC timestamp of bus messages and stored records, and the PCI address by which SPEC §6
 * names a GPU in gpuworker, gpucache and maestro alike. */
#ifndef ORGANISM_TEXT_H
#define ORGANISM_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Space that always suffices for org_rfc3339_us ("2026-12-02T02:24:16.123Z" + NUL). */
#define ORG_RFC3339_MAX 25u

static inline void org_text_digits_(char *p, uint64_t v, int n) {
        for (int i = n - 1; i >= 0; i--, v /= 10)
                p[i] = (char)('0' + v % 10);
}

/* Writes realtime_us (microseconds since the epoch, as host->now_realtime_us gives) as
 * "YYYY-MM-DDTHH:MM:SS.mmmZ" into buf (size bytes, at least ORG_RFC3339_MAX for the
 * whole form; shorter is truncated, never overrun). Returns buf. Plain arithmetic (the
 * civil-from-days algorithm of H. Hinnant), no gmtime_r: strict ISO C, thread-safe, and
 * nothing for -O3's format-truncation check to doubt. */
static inline char *org_rfc3339_us(uint64_t realtime_us, char *buf, size_t size) {
        uint64_t secs = realtime_us / 1000000u, days = secs / 86400u, sod = secs % 86400u;
        uint64_t z = days + 719468u, era = z / 146097u, doe = z - era * 146097u;
        uint64_t yoe = (doe - doe / 1460u + doe / 36524u - doe / 146096u) / 365u;
        uint64_t doy = doe - (365u * yoe + yoe / 4u - yoe / 100u), mp = (5u * doy + 2u) / 153u;
        uint64_t d = doy - (153u * mp + 2u) / 5u + 1u, m = mp < 10u ? mp + 3u : mp - 9u;
        uint64_t y = yoe + era * 400u + (m <= 2u);
        char t[] = "YYYY-MM-DDTHH:MM:SS.mmmZ";
        org_text_digits_(t, y, 4);
        org_text_digits_(t + 5, m, 2);
        org_text_digits_(t + 8, d, 2);
        org_text_digits_(t + 11, sod / 3600u, 2);
        org_text_digits_(t + 14, sod / 60u % 60u, 2);
        org_text_digits_(t + 17, sod % 60u, 2);
        org_text_digits_(t + 20, realtime_us / 1000u % 1000u, 3);
        if (size) {
                size_t n = sizeof t - 1 < size - 1 ? sizeof t - 1 : size - 1;
                memcpy(buf, t, n);
                buf[n] = '\0';
        }
        return buf;
}

/* Whether s is a PCI address as sysfs names it: "dddd:bb:dd.f", lower-case hex. */
static inline bool org_pci_address_valid(const char *s) {
        static const char shape[] = "xxxx:xx:xx.x";
        if (!s || strlen(s) != sizeof shape - 1)
                return false;
        for (size_t i = 0; shape[i]; i++) {
                if (shape[i] == 'x') {
                        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                                return false;
                } else if (s[i] != shape[i])
                        return false;
        }
        return true;
}

#ifdef __cplusplus
}
#endif

#endif
