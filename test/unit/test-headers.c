/* test-headers.c — the SDK in one translation unit compiled as strict ISO C11 (see
 * meson.build: each header is also compiled alone, like libgit2's headertest). */
#include <organism/organism.h>

#include "test.h"

int main(void) {
        CHECK_INT(ORG_PLUGIN_ABI_VERSION, 1);
        CHECK(offsetof(org_plugin, abi_version) == 0);
        CHECK(offsetof(org_plugin, struct_size) == 4);
        org_host h = {.struct_size = sizeof(org_host)};
        CHECK(ORG_HOST_HAS(&h, metric_add));
        h.struct_size = offsetof(org_host, metric_add);
        CHECK(!ORG_HOST_HAS(&h, metric_add));
        return 0;
}
