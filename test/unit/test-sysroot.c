/* test-sysroot.c — sysroot I/O against a fixture tree the test builds: path joining and
 * refusals, reads, writes that change nothing when the value is there (content and
 * mtime untouched), real writes in place (same inode: no temporary file), dry_run, and
 * errors for missing files. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sysroot.h"
#include "test.h"
#include "util.h"

static char root[] = "/tmp/test-sysroot-XXXXXX";

static void put(const char *rel, const char *content) {
        char p[512];
        snprintf(p, sizeof(p), "%s%s", root, rel);
        FILE *f = fopen(p, "w");
        CHECK(f);
        fputs(content, f);
        CHECK(fclose(f) == 0);
}

static char *get(const char *rel) {
        char p[512];
        char *data = NULL;
        snprintf(p, sizeof(p), "%s%s", root, rel);
        CHECK_INT(read_full_file(p, &data, NULL), 0);
        return data;
}

static void stat_rel(const char *rel, struct stat *st) {
        char p[512];
        snprintf(p, sizeof(p), "%s%s", root, rel);
        CHECK(stat(p, st) == 0);
}

/* Sets an old mtime so "unchanged" cannot hide behind the clock's granularity. */
static void age(const char *rel) {
        char p[512];
        snprintf(p, sizeof(p), "%s%s", root, rel);
        struct timespec ts[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
        CHECK(utimensat(AT_FDCWD, p, ts, 0) == 0);
}

static void test_path(void) {
        char *p = NULL;
        CHECK_INT(sysroot_path(NULL, "/proc/meminfo", &p), 0);
        CHECK_STR(p, "/proc/meminfo");
        free(p);
        CHECK_INT(sysroot_path("/", "/proc/meminfo", &p), 0);
        CHECK_STR(p, "/proc/meminfo");
        free(p);
        CHECK_INT(sysroot_path("/srv/fixture/", "/sys/class/net", &p), 0);
        CHECK_STR(p, "/srv/fixture/sys/class/net");
        free(p);
        CHECK_INT(sysroot_path("/srv/fixture", "/sys/x..y/.../a..", &p), 0);
        CHECK_STR(p, "/srv/fixture/sys/x..y/.../a..");
        free(p);

        p = (char *)0x1;
        CHECK_INT(sysroot_path("/srv", "proc/meminfo", &p), -EINVAL);
        CHECK_INT(sysroot_path("/srv", "/proc/../etc/shadow", &p), -EINVAL);
        CHECK_INT(sysroot_path("/srv", "/..", &p), -EINVAL);
        CHECK_INT(sysroot_path("/srv", "/sys/..", &p), -EINVAL);
        CHECK_INT(sysroot_path(NULL, "/a/../../etc", &p), -EINVAL);
        CHECK_INT(sysroot_path("srv", "/proc/meminfo", &p), -EINVAL);
        CHECK_INT(sysroot_path("/srv/../etc", "/proc/meminfo", &p), -EINVAL);
        CHECK_INT(sysroot_path("/srv", "", &p), -EINVAL);
        CHECK_INT(sysroot_path("/srv", NULL, &p), -EINVAL);
        CHECK(p == (char *)0x1);
}

static void test_read(void) {
        char *data = NULL;
        size_t len = 0;
        CHECK_INT(sysroot_read(root, "/proc/meminfo", &data, &len), 0);
        CHECK_STR(data, "MemTotal:       16384 kB\nMemFree:         8192 kB\n");
        CHECK_INT(len, strlen(data));
        free(data);
        data = (char *)0x1;
        CHECK_INT(sysroot_read(root, "/proc/nonexistent", &data, &len), -ENOENT);
        CHECK_INT(sysroot_read(root, "/proc/../proc/meminfo", &data, &len), -EINVAL);
        CHECK(data == (char *)0x1);
        /* ret_len is optional. */
        CHECK_INT(sysroot_read(root, "/proc/meminfo", &data, NULL), 0);
        free(data);
}

static void test_write_unchanged(void) {
        const char *f = "/sys/module/zfs/parameters/zfs_arc_max";
        put(f, "4294967296\n");
        age(f);
        struct stat before, after;
        stat_rel(f, &before);

        bool changed = true;
        char *old = NULL;
        /* Same value, with or without the trailing newline or extra spaces. */
        CHECK_INT(sysroot_write(root, f, "4294967296", false, &changed, &old), 0);
        CHECK(!changed);
        CHECK_STR(old, "4294967296");
        free(old);
        CHECK_INT(sysroot_write(root, f, "4294967296 \n\n", false, &changed, NULL), 0);
        CHECK(!changed);

        stat_rel(f, &after);
        CHECK_INT(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
        CHECK_INT(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
        char *c = get(f);
        CHECK_STR(c, "4294967296\n");
        free(c);
}

static void test_write_changed(void) {
        const char *f = "/sys/module/zfs/parameters/zfs_arc_max";
        put(f, "4294967296\n");
        age(f);
        struct stat before, after;
        stat_rel(f, &before);

        bool changed = false;
        char *old = NULL;
        CHECK_INT(sysroot_write(root, f, "8589934592", false, &changed, &old), 0);
        CHECK(changed);
        CHECK_STR(old, "4294967296");
        free(old);
        char *c = get(f);
        CHECK_STR(c, "8589934592\n");
        free(c);
        stat_rel(f, &after);
        /* Written in place: the same inode, as a kernel attribute must be. */
        CHECK_INT(after.st_ino, before.st_ino);
        CHECK(after.st_mtim.tv_sec != before.st_mtim.tv_sec);

        /* A value that brings its newline gets no second one; a shorter value truncates. */
        CHECK_INT(sysroot_write(root, f, "1\n", false, &changed, NULL), 0);
        CHECK(changed);
        c = get(f);
        CHECK_STR(c, "1\n");
        free(c);

        /* Selection-style attributes compare whole: "[always] madvise never" != "madvise". */
        const char *thp = "/sys/kernel/mm/transparent_hugepage/enabled";
        put(thp, "[always] madvise never\n");
        CHECK_INT(sysroot_write(root, thp, "madvise", false, &changed, NULL), 0);
        CHECK(changed);
        c = get(thp);
        CHECK_STR(c, "madvise\n");
        free(c);
}

static void test_dry_run(void) {
        const char *f = "/proc/sys/vm/swappiness";
        put(f, "60\n");
        age(f);
        struct stat before, after;
        stat_rel(f, &before);
        bool changed = false;
        char *old = NULL;
        CHECK_INT(sysroot_write(root, f, "10", true, &changed, &old), 0);
        CHECK(changed); /* it would change */
        CHECK_STR(old, "60");
        free(old);
        char *c = get(f);
        CHECK_STR(c, "60\n");
        free(c);
        stat_rel(f, &after);
        CHECK_INT(after.st_mtim.tv_sec, before.st_mtim.tv_sec);

        CHECK_INT(sysroot_write(root, f, "60", true, &changed, NULL), 0);
        CHECK(!changed);
}

static void test_write_errors(void) {
        bool changed = true;
        char *old = (char *)0x1;
        /* Kernel files are never created. */
        CHECK_INT(sysroot_write(root, "/sys/nonexistent", "1", false, &changed, &old), -ENOENT);
        CHECK_INT(sysroot_write(root, "/sys/../../etc/passwd", "x", false, &changed, &old), -EINVAL);
        CHECK_INT(sysroot_write(root, "sys/relative", "x", false, &changed, &old), -EINVAL);
        CHECK_INT(sysroot_write(root, "/proc/sys/vm/swappiness", NULL, false, &changed, &old), -EINVAL);
        CHECK(changed);
        CHECK(old == (char *)0x1);
        char p[512];
        snprintf(p, sizeof(p), "%s/sys/nonexistent", root);
        CHECK(access(p, F_OK) < 0 && errno == ENOENT);

        /* Write-only attribute (no read permission): value unknown, so it is written.
         * Root reads anything, so this case only means something for other users. */
        if (geteuid() != 0) {
                const char *wo = "/sys/bus/pci/drivers_probe";
                put(wo, "");
                snprintf(p, sizeof(p), "%s%s", root, wo);
                CHECK(chmod(p, 0200) == 0);
                CHECK_INT(sysroot_write(root, wo, "0000:01:00.0", false, &changed, &old), 0);
                CHECK(changed);
                CHECK(old == NULL);
                CHECK(chmod(p, 0600) == 0);
                char *c = get(wo);
                CHECK_STR(c, "0000:01:00.0\n");
                free(c);
        }
}

/* The fixture's directories, parents first. */
static const char *const dirs[] = {
        "/proc", "/proc/sys", "/proc/sys/vm", "/sys", "/sys/module", "/sys/module/zfs",
        "/sys/module/zfs/parameters", "/sys/kernel", "/sys/kernel/mm", "/sys/kernel/mm/transparent_hugepage",
        "/sys/bus", "/sys/bus/pci",
};
static const char *const files[] = {
        "/proc/meminfo", "/proc/sys/vm/swappiness", "/sys/module/zfs/parameters/zfs_arc_max",
        "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/bus/pci/drivers_probe",
};

int main(void) {
        char p[512];
        CHECK(mkdtemp(root));
        for (size_t i = 0; i < ELEMENTSOF(dirs); i++) {
                snprintf(p, sizeof(p), "%s%s", root, dirs[i]);
                CHECK(mkdir(p, 0755) == 0);
        }
        put("/proc/meminfo", "MemTotal:       16384 kB\nMemFree:         8192 kB\n");

        RUN(test_path);
        RUN(test_read);
        RUN(test_write_unchanged);
        RUN(test_write_changed);
        RUN(test_dry_run);
        RUN(test_write_errors);

        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                snprintf(p, sizeof(p), "%s%s", root, files[i]);
                (void)unlink(p);
        }
        for (size_t i = ELEMENTSOF(dirs); i > 0; i--) {
                snprintf(p, sizeof(p), "%s%s", root, dirs[i - 1]);
                CHECK(rmdir(p) == 0);
        }
        CHECK(rmdir(root) == 0);
        printf("ok\n");
        return 0;
}
