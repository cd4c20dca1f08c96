/* circadian.c — stub, being written */
#include <organism/plugin.h>
ORG_PLUGIN_DEFINE(.name = "circadian", .version = "0.0.0");
