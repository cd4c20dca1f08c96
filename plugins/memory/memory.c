/* memory.c — stub, being written */
#include <organism/plugin.h>
ORG_PLUGIN_DEFINE(.name = "memory", .version = "0.0.0");
