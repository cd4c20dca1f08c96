/* test-metrics.c — the metrics registry: exact Prometheus text (HELP/TYPE once per
 * family, instance label first, canonical label order, escaping), counters and gauges,
 * name validation, dropping an instance, JSON, the atomic textfile, and a registry of
 * thousands of series. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metrics.h"
#include "test.h"
#include "util.h"

static void test_render_exact(void) {
        metrics *m = metrics_new();
        CHECK(m);
        CHECK_INT(metrics_add(m, "zfs0", "arc_resizes_total", 1, "ARC size changes."), 0);
        CHECK_INT(metrics_add(m, "zfs0", "arc_resizes_total", 2, NULL), 0);
        CHECK_INT(metrics_set(m, "gpu", "gpu_temp_c{gpu=\"3\"}", ORG_METRIC_GAUGE, 61.5, "GPU temperature."), 0);
        CHECK_INT(metrics_set(m, "gpu", "gpu_temp_c{gpu=\"1\"}", ORG_METRIC_GAUGE, 40, NULL), 0);
        CHECK_INT(metrics_set(m, "alpha", "gpu_temp_c{gpu=\"0\"}", ORG_METRIC_GAUGE, -2.25, NULL), 0);
        CHECK_INT(metrics_set(m, "mem", "mem_free_bytes", ORG_METRIC_GAUGE, 1073741824.0, NULL), 0);

        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK_STR(text, "# HELP organism_arc_resizes_total ARC size changes.\n"
                        "# TYPE organism_arc_resizes_total counter\n"
                        "organism_arc_resizes_total{instance=\"zfs0\"} 3\n"
                        "# HELP organism_gpu_temp_c GPU temperature.\n"
                        "# TYPE organism_gpu_temp_c gauge\n"
                        "organism_gpu_temp_c{instance=\"alpha\",gpu=\"0\"} -2.25\n"
                        "organism_gpu_temp_c{instance=\"gpu\",gpu=\"1\"} 40\n"
                        "organism_gpu_temp_c{instance=\"gpu\",gpu=\"3\"} 61.5\n"
                        "# TYPE organism_mem_free_bytes gauge\n"
                        "organism_mem_free_bytes{instance=\"mem\"} 1073741824\n");
        metrics_free(m);
        metrics_free(NULL);
}

static void test_help_on_first_add(void) {
        metrics *m = metrics_new();
        CHECK_INT(metrics_add(m, "a", "jobs_total", 1, "Jobs run.\nBy \\ anyone."), 0);
        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK_STR(text, "# HELP organism_jobs_total Jobs run.\\nBy \\\\ anyone.\n"
                        "# TYPE organism_jobs_total counter\n"
                        "organism_jobs_total{instance=\"a\"} 1\n");
        metrics_free(m);
}

static void test_labels(void) {
        metrics *m = metrics_new();
        /* Order does not make another series; a trailing comma and {} are accepted. */
        CHECK_INT(metrics_set(m, "i", "x{b=\"2\",a=\"1\"}", ORG_METRIC_GAUGE, 1, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "x{a=\"1\",b=\"2\",}", ORG_METRIC_GAUGE, 5, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "y{}", ORG_METRIC_GAUGE, 7, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "y", ORG_METRIC_GAUGE, 8, NULL), 0);
        /* Escapes in values pass through, still escaped. */
        CHECK_INT(metrics_set(m, "i", "z{path=\"a\\\\b\",q=\"say \\\"hi\\\"\",nl=\"1\\n2\"}", ORG_METRIC_GAUGE, 0,
                              NULL),
                  0);
        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK_STR(text, "# TYPE organism_x gauge\n"
                        "organism_x{instance=\"i\",a=\"1\",b=\"2\"} 5\n"
                        "# TYPE organism_y gauge\n"
                        "organism_y{instance=\"i\"} 8\n"
                        "# TYPE organism_z gauge\n"
                        "organism_z{instance=\"i\",nl=\"1\\n2\",path=\"a\\\\b\",q=\"say \\\"hi\\\"\"} 0\n");

        json_t *j = metrics_to_json(m);
        CHECK(j && json_is_array(j));
        CHECK_INT(json_array_size(j), 3);
        json_t *z = json_array_get(j, 2);
        CHECK_STR(json_string_value(json_object_get(z, "name")), "z");
        CHECK_STR(json_string_value(json_object_get(z, "instance")), "i");
        CHECK_STR(json_string_value(json_object_get(z, "type")), "gauge");
        json_t *labels = json_object_get(z, "labels");
        CHECK_STR(json_string_value(json_object_get(labels, "path")), "a\\b");
        CHECK_STR(json_string_value(json_object_get(labels, "q")), "say \"hi\"");
        CHECK_STR(json_string_value(json_object_get(labels, "nl")), "1\n2");
        json_t *x = json_array_get(j, 0);
        CHECK(json_real_value(json_object_get(x, "value")) == 5.0);
        CHECK(json_is_null(json_object_get(x, "help")));
        json_decref(j);
        metrics_free(m);
}

static void test_invalid(void) {
        metrics *m = metrics_new();
        const char *bad[] = {
                "",
                "9lives",
                "has-dash",
                "sp ace",
                "x{",
                "x}",
                "x{a}",
                "x{a=1}",
                "x{a=\"1\"",
                "x{a=\"1\"}trailing",
                "x{a=\"1\"b=\"2\"}",
                "x{1a=\"1\"}",
                "x{a=\"1\",a=\"2\"}",
                "x{instance=\"other\"}",
                "x{__name__=\"y\"}",
                "x{a=\"bad\\escape\"}",
                "x{a:b=\"1\"}",
                "x{,}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (metrics_set(m, "i", bad[i], ORG_METRIC_GAUGE, 1, NULL) != -EINVAL) {
                        fprintf(stderr, "accepted bad name: %s\n", bad[i]);
                        exit(1);
                }
        }
        CHECK_INT(metrics_set(m, "i", NULL, ORG_METRIC_GAUGE, 1, NULL), -EINVAL);
        CHECK_INT(metrics_set(m, "", "ok", ORG_METRIC_GAUGE, 1, NULL), -EINVAL);
        CHECK_INT(metrics_set(m, "i", "ok", (org_metric_type)7, 1, NULL), -EINVAL);
        /* Colons and underscores are fine in metric names. */
        CHECK_INT(metrics_set(m, "i", "_job:rate_5m", ORG_METRIC_GAUGE, 1, NULL), 0);
        /* One family, one type: across series and instances. */
        CHECK_INT(metrics_set(m, "i", "t{a=\"1\"}", ORG_METRIC_COUNTER, 1, NULL), 0);
        CHECK_INT(metrics_set(m, "j", "t{a=\"2\"}", ORG_METRIC_GAUGE, 1, NULL), -EINVAL);
        CHECK_INT(metrics_set(m, "i", "t{a=\"1\"}", ORG_METRIC_GAUGE, 1, NULL), -EINVAL);
        /* Counters only go up. */
        CHECK_INT(metrics_add(m, "i", "t{a=\"1\"}", -1, NULL), -EINVAL);
        CHECK_INT(metrics_add(m, "i", "t{a=\"1\"}", NAN, NULL), -EINVAL);
        /* Gauges may go down through add. */
        CHECK_INT(metrics_add(m, "i", "_job:rate_5m", -0.5, NULL), 0);
        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK_STR(text, "# TYPE organism__job:rate_5m gauge\n"
                        "organism__job:rate_5m{instance=\"i\"} 0.5\n"
                        "# TYPE organism_t counter\n"
                        "organism_t{instance=\"i\",a=\"1\"} 1\n");
        metrics_free(m);
}

static void test_values(void) {
        metrics *m = metrics_new();
        CHECK_INT(metrics_set(m, "i", "a", ORG_METRIC_GAUGE, 0.1, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "b", ORG_METRIC_GAUGE, NAN, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "c", ORG_METRIC_GAUGE, INFINITY, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "d", ORG_METRIC_GAUGE, -INFINITY, NULL), 0);
        CHECK_INT(metrics_set(m, "i", "e", ORG_METRIC_GAUGE, 1e300, NULL), 0);
        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK_CONTAINS(text, "organism_a{instance=\"i\"} 0.1\n");
        CHECK_CONTAINS(text, "organism_b{instance=\"i\"} NaN\n");
        CHECK_CONTAINS(text, "organism_c{instance=\"i\"} +Inf\n");
        CHECK_CONTAINS(text, "organism_d{instance=\"i\"} -Inf\n");
        CHECK_CONTAINS(text, "organism_e{instance=\"i\"} 1e+300\n");
        json_t *j = metrics_to_json(m);
        CHECK(j);
        CHECK(json_is_null(json_object_get(json_array_get(j, 1), "value")));
        json_decref(j);
        metrics_free(m);
}

static void test_drop_instance(void) {
        metrics *m = metrics_new();
        CHECK_INT(metrics_add(m, "a", "runs_total", 1, "Runs."), 0);
        CHECK_INT(metrics_add(m, "b", "runs_total", 2, NULL), 0);
        CHECK_INT(metrics_set(m, "a", "only_a", ORG_METRIC_GAUGE, 1, "Only a."), 0);
        metrics_drop_instance(m, "a");
        metrics_drop_instance(m, "never-there");
        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK_STR(text, "# HELP organism_runs_total Runs.\n"
                        "# TYPE organism_runs_total counter\n"
                        "organism_runs_total{instance=\"b\"} 2\n");
        /* The family of only_a is gone with it: a new type is fine now. */
        CHECK_INT(metrics_add(m, "c", "only_a", 1, NULL), 0);
        metrics_drop_instance(m, "b");
        metrics_drop_instance(m, "c");
        _cleanup_free_ char *empty = metrics_render_text(m);
        CHECK_STR(empty, "");
        json_t *j = metrics_to_json(m);
        CHECK(j && json_array_size(j) == 0);
        json_decref(j);
        metrics_free(m);
}

static void test_textfile(void) {
        char dir[] = "/tmp/test-metrics-XXXXXX";
        CHECK(mkdtemp(dir));
        char path[256];
        snprintf(path, sizeof(path), "%s/organism.prom", dir);

        metrics *m = metrics_new();
        CHECK_INT(metrics_set(m, "i", "up", ORG_METRIC_GAUGE, 1, "Alive."), 0);
        /* An old file is replaced, never appended to or left half-written. */
        FILE *f = fopen(path, "w");
        CHECK(f);
        fputs("stale content that is much longer than the new one\n", f);
        fclose(f);
        CHECK_INT(metrics_write_textfile(m, path), 0);

        _cleanup_free_ char *got = NULL;
        CHECK_INT(read_full_file(path, &got, NULL), 0);
        CHECK_STR(got, "# HELP organism_up Alive.\n# TYPE organism_up gauge\norganism_up{instance=\"i\"} 1\n");
        struct stat st;
        CHECK(stat(path, &st) == 0);
        CHECK_INT(st.st_mode & 0777, 0644);

        /* No temporary file is left next to it. */
        DIR *d = opendir(dir);
        CHECK(d);
        int entries = 0;
        for (struct dirent *de; (de = readdir(d));)
                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                        entries++;
        closedir(d);
        CHECK_INT(entries, 1);

        char bad[300];
        snprintf(bad, sizeof(bad), "%s/missing/organism.prom", dir);
        CHECK_INT(metrics_write_textfile(m, bad), -ENOENT);
        metrics_free(m);
        CHECK(unlink(path) == 0);
        CHECK(rmdir(dir) == 0);
}

static void test_many_series(void) {
        metrics *m = metrics_new();
        enum { INSTANCES = 20, SERIES = 500 };
        for (int round = 0; round < 3; round++)
                for (int i = 0; i < INSTANCES; i++) {
                        char inst[16];
                        snprintf(inst, sizeof(inst), "inst%02d", i);
                        for (int s = 0; s < SERIES; s++) {
                                char name[64];
                                snprintf(name, sizeof(name), "irq_count_total{cpu=\"%d\",irq=\"%d\"}", s % 4, s);
                                CHECK_INT(metrics_add(m, inst, name, 1, "Interrupts."), 0);
                        }
                }
        _cleanup_free_ char *text = metrics_render_text(m);
        CHECK(text);
        size_t lines = 0;
        for (const char *p = text; *p; p++)
                lines += *p == '\n';
        CHECK_INT(lines, INSTANCES * SERIES + 2);
        CHECK_CONTAINS(text, "organism_irq_count_total{instance=\"inst07\",cpu=\"1\",irq=\"421\"} 3\n");
        for (int i = 0; i < INSTANCES; i += 2) {
                char inst[16];
                snprintf(inst, sizeof(inst), "inst%02d", i);
                metrics_drop_instance(m, inst);
        }
        json_t *j = metrics_to_json(m);
        CHECK_INT(json_array_size(j), INSTANCES / 2 * SERIES);
        json_decref(j);
        metrics_free(m);
}

int main(void) {
        RUN(test_render_exact);
        RUN(test_help_on_first_add);
        RUN(test_labels);
        RUN(test_invalid);
        RUN(test_values);
        RUN(test_drop_instance);
        RUN(test_textfile);
        RUN(test_many_series);
        printf("ok\n");
        return 0;
}
