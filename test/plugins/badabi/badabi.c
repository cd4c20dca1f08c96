/* badabi.c — a descriptor from a future ABI: the loader must refuse it and name both
 * versions without reading past the first two fields. */
#include <stdint.h>

__attribute__((visibility("default"))) const struct {
        uint32_t abi_version;
        uint32_t struct_size;
} organism_plugin = {99, 8};
