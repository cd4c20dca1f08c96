/* test-text.c — organism/text.h: the RFC 3339 timestamp against the C library's own
 * gmtime_r + strftime over a million instants (leap days, centuries, the year 9999),
 * truncation to a short buffer, and the PCI address shape. */
#include <stdlib.h>
#include <time.h>

#include <organism/text.h>

#include "test.h"

static void reference(uint64_t us, char *buf, size_t size) {
        time_t t = (time_t)(us / 1000000);
        struct tm tm;
        char base[32];
        gmtime_r(&t, &tm);
        strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf, size, "%s.%03uZ", base, (unsigned)(us / 1000 % 1000));
}

static void test_rfc3339(void) {
        static const uint64_t fixed[] = {0, 951782400000000ull /* 2000-02-29 */, 4102444799999000ull,
                                         1709164800000000ull /* 2024-02-29 */, 253402300799999999ull};
        char a[ORG_RFC3339_MAX], b[64];
        for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
                reference(fixed[i], b, sizeof b);
                CHECK_STR(org_rfc3339_us(fixed[i], a, sizeof a), b);
        }
        unsigned seed = 1;
        for (int i = 0; i < 1000000; i++) {
                uint64_t us = (((uint64_t)rand_r(&seed) << 31) ^ (uint64_t)rand_r(&seed)) % 253402300800000000ull;
                reference(us, b, sizeof b);
                org_rfc3339_us(us, a, sizeof a);
                if (strcmp(a, b) != 0) {
                        CHECK_STR(a, b);
                        break;
                }
        }
        char s[5];
        CHECK_STR(org_rfc3339_us(1764642256123456ull, s, sizeof s), "2025");
}

static void test_pci(void) {
        CHECK(org_pci_address_valid("0000:03:00.0"));
        CHECK(org_pci_address_valid("abcd:ef:1f.7"));
        CHECK(!org_pci_address_valid("0000:03:00.0 "));
        CHECK(!org_pci_address_valid("0000:03:00"));
        CHECK(!org_pci_address_valid("0000:03:00.G"));
        CHECK(!org_pci_address_valid("0000:0A:00.0")); /* sysfs writes lower case */
        CHECK(!org_pci_address_valid("../../../etc"));
        CHECK(!org_pci_address_valid(NULL));
}

int main(void) {
        RUN(test_rfc3339);
        RUN(test_pci);
        return 0;
}
