/* organism/organism.h — the whole plugin SDK in one include. */
#ifndef ORGANISM_ORGANISM_H
#define ORGANISM_ORGANISM_H

#include <organism/config.h>
#include <organism/cpuset.h>
#include <organism/host.h>
#include <organism/msg.h>
#include <organism/plugin.h>

#endif
