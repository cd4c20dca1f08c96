/* test-loader.c — the loader against real .so files built by the test suite: a good
 * plugin, one of another ABI, one without a descriptor, a rebuilt file dropped in by
 * rename (must load as new code while the old is still open), the /proc name it is
 * loaded under (never one an object still loaded carries), and the ownership and mode
 * checks. */
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>

#include "loader.h"
#include "test.h"
#include "util.h"

static char so_example[512], so_v2[512], so_badabi[512], so_nodesc[512], so_broken[512];
static char tmpdir[] = "/tmp/test-loader.XXXXXX";

static void copy_file(const char *from, const char *to, mode_t mode) {
        char *data = NULL;
        size_t len = 0;
        CHECK_INT(read_full_file(from, &data, &len), 0);
        CHECK_INT(write_file_atomic(to, data, len, mode, false), 0);
        free(data);
}

static void test_good(void) {
        plugin_so *so = NULL;
        char *err = NULL;
        CHECK_INT(loader_open(so_example, false, &so, &err), 0);
        CHECK_STR(so->desc->name, "example");
        CHECK_STR(so->desc->version, "1.0.0");
        CHECK(PLUGIN_HOOK(so, tick) != NULL);
        CHECK(PLUGIN_HOOK(so, verify) != NULL);
        loader_close(so);
}

static void test_bad_abi(void) {
        plugin_so *so = NULL;
        char *err = NULL;
        CHECK_INT(loader_open(so_badabi, false, &so, &err), -EPROTO);
        CHECK_CONTAINS(err, "ABI version 99");
        CHECK_CONTAINS(err, "speaks version 1");
        free(err);
}

static void test_no_descriptor(void) {
        plugin_so *so = NULL;
        char *err = NULL;
        CHECK_INT(loader_open(so_nodesc, false, &so, &err), -ENOEXEC);
        CHECK_CONTAINS(err, "organism_plugin");
        free(err);
        CHECK(loader_open("/nonexistent/x.so", false, &so, &err) < 0);
        CHECK_CONTAINS(err, "/nonexistent/x.so");
        free(err);
}

/* A new build renamed over the old file must load as new code even though the old
 * one is still loaded from the same path. */
static void test_reload_by_rename(void) {
        char path[600];
        snprintf(path, sizeof path, "%s/example.so", tmpdir);
        copy_file(so_example, path, 0644);
        plugin_so *a = NULL, *b = NULL, *c = NULL;
        char *err = NULL;
        CHECK_INT(loader_open(path, false, &a, &err), 0);
        CHECK_STR(a->desc->version, "1.0.0");
        copy_file(so_v2, path, 0644);
        CHECK_INT(loader_open(path, false, &b, &err), 0);
        CHECK_STR(b->desc->version, "2.0.0");
        CHECK_STR(a->desc->version, "1.0.0"); /* the old one is untouched */
        copy_file(so_broken, path, 0644);
        CHECK_INT(loader_open(path, false, &c, &err), 0);
        CHECK_STR(c->desc->version, "3.0.0-broken");
        loader_close(a);
        loader_close(b);
        loader_close(c);
        unlink(path);
}

/* The object is loaded under /proc/<pid>/fd/<its fd>; an object that dlclose could
 * not unload keeps its name, and a later file given the same descriptor number must
 * not come back as that old object. */
static void test_proc_name(void) {
        plugin_so *a = NULL, *b = NULL;
        char *err = NULL, want[64];
        CHECK_INT(loader_open(so_example, false, &a, &err), 0);
        struct link_map *lm = NULL;
        CHECK_INT(dlinfo(a->dl, RTLD_DI_LINKMAP, &lm), 0);
        snprintf(want, sizeof want, "/proc/%d/fd/%d", (int)getpid(), a->fd);
        CHECK_STR(lm->l_name, want);
        int n = a->fd;
        /* pin it as a plugin built with -z nodelete would be */
        void *pin = dlopen(want, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
        CHECK(pin != NULL);
        dlclose(pin);
        loader_close(a); /* stays mapped under its name; fd n is free again */
        CHECK_INT(loader_open(so_v2, false, &b, &err), 0);
        CHECK_STR(b->desc->version, "2.0.0"); /* the new file, not the pinned old one */
        CHECK(b->fd != n);
        loader_close(b);
}

static void test_perms(void) {
        if (geteuid() != 0) {
                printf("# perms: not root, ownership checks not exercised\n");
                return;
        }
        char dir[600], path[700];
        snprintf(dir, sizeof dir, "%s/plugins", tmpdir);
        CHECK_INT(mkdir(dir, 0755), 0);
        snprintf(path, sizeof path, "%s/example.so", dir);
        copy_file(so_example, path, 0644);
        plugin_so *so = NULL;
        char *err = NULL;
        CHECK_INT(loader_open(path, true, &so, &err), 0);
        loader_close(so);

        CHECK_INT(chmod(path, 0666), 0);
        CHECK_INT(loader_open(path, true, &so, &err), -EPERM);
        CHECK_CONTAINS(err, "writable by everyone");
        CHECK_CONTAINS(err, path);
        free(err);
        CHECK_INT(chmod(path, 0644), 0);

        CHECK_INT(chmod(dir, 0777), 0);
        CHECK_INT(loader_open(path, true, &so, &err), -EPERM);
        CHECK_CONTAINS(err, "plugin directory");
        free(err);
        CHECK_INT(chmod(dir, 0755), 0);

        CHECK_INT(chown(path, 65534, 0), 0);
        CHECK_INT(loader_open(path, true, &so, &err), -EPERM);
        CHECK_CONTAINS(err, "owned by uid 65534");
        free(err);
        unlink(path);
        rmdir(dir);
}

static void test_find(void) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/plugins", getenv("TEST_BUILD_ROOT"));
        char *dirs[] = {(char *)"/nonexistent", dir, NULL};
        char *path = NULL;
        CHECK_INT(loader_find(dirs, "example", &path), 0);
        CHECK_CONTAINS(path, "/plugins/example.so");
        free(path);
        CHECK_INT(loader_find(dirs, "nosuch", &path), -ENOENT);
}

int main(void) {
        const char *b = getenv("TEST_BUILD_ROOT");
        if (!b)
                TEST_SKIP("TEST_BUILD_ROOT is not set (run through meson test)");
        snprintf(so_example, sizeof so_example, "%s/plugins/example.so", b);
        snprintf(so_v2, sizeof so_v2, "%s/test/plugins/v2/example.so", b);
        snprintf(so_broken, sizeof so_broken, "%s/test/plugins/broken/example.so", b);
        snprintf(so_badabi, sizeof so_badabi, "%s/test/plugins/badabi/example.so", b);
        snprintf(so_nodesc, sizeof so_nodesc, "%s/test/plugins/nodesc/example.so", b);
        CHECK(mkdtemp(tmpdir));
        RUN(test_good);
        RUN(test_bad_abi);
        RUN(test_no_descriptor);
        RUN(test_reload_by_rename);
        RUN(test_proc_name);
        RUN(test_perms);
        RUN(test_find);
        rmdir(tmpdir);
        return 0;
}
