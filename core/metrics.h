/* metrics.h — counters and gauges of every instance, rendered as Prometheus text
 * (written atomically as a node-exporter textfile) and as JSON for `agentctl metrics`.
 * Names are prefixed "organism_" and carry an instance label. */
#ifndef CORE_METRICS_H
#define CORE_METRICS_H

#include <stddef.h>

#include <jansson.h>

#include <organism/host.h>

typedef struct metrics metrics;

metrics *metrics_new(void);
void metrics_free(metrics *m); /* accepts NULL */

/* name may carry labels: "gpu_temp_c{gpu=\"3\"}". Returns -EINVAL for a bad name. */
int metrics_set(metrics *m, const char *instance, const char *name, org_metric_type type, double value,
                const char *help);
int metrics_add(metrics *m, const char *instance, const char *name, double delta, const char *help);
/* Forgets every series of an instance (on unload). */
void metrics_drop_instance(metrics *m, const char *instance);

/* Prometheus text exposition, malloc'd. */
char *metrics_render_text(const metrics *m);
/* [{"name","instance","labels","type","value","help"}...], new reference. */
json_t *metrics_to_json(const metrics *m);
/* Writes the text atomically (temporary file + rename). */
int metrics_write_textfile(const metrics *m, const char *path);

#endif
