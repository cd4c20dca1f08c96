/* example.c — stub */
#include <organism/plugin.h>
ORG_PLUGIN_DEFINE(.name = "example");
