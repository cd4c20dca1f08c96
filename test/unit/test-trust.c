/* test-trust.c — trust.c's rules on real trees made here: a good file, a group- or
 * other-writable file, a writable or sticky directory holding it, a writable ancestor,
 * a sticky ancestor above our own folder, symlinks into and out of a writable
 * directory, a FIFO (refused at once, never opened for reading), a missing file in a
 * writable directory, loops, relative paths, and (as root) files and directories owned
 * by nobody. Then config_load: a group-writable config and a command owned by nobody
 * refused with the command key's FILE:LINE:COL. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "test.h"
#include "trust.h"
#include "util.h"

static char base[] = "/tmp/test-trust.XXXXXX";

static const char *at(const char *rel) {
        static char buf[4][600];
        static int k;
        k = (k + 1) % 4;
        snprintf(buf[k], sizeof buf[k], "%s/%s", base, rel);
        return buf[k];
}

static void mk_dir(const char *rel, mode_t mode) {
        CHECK_INT(mkdir(at(rel), 0700), 0);
        CHECK_INT(chmod(at(rel), mode), 0); /* chmod: the umask does not apply */
}

static void mk_file(const char *rel, mode_t mode) {
        int fd = open(at(rel), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        CHECK_INT(write(fd, "x\n", 2), 2);
        close(fd);
        CHECK_INT(chmod(at(rel), mode), 0);
}

/* Expects a refusal with errno r whose reason holds needle. */
static void refused(const char *rel, int r, const char *needle) {
        char *reason = NULL;
        int fd = -1;
        CHECK_INT(trust_open(at(rel), "plugin", &fd, &reason), r);
        CHECK(fd == -1);
        CHECK_CONTAINS(reason, needle);
        printf("#   %s: %s\n", rel, reason);
        free(reason);
}

static void accepted(const char *rel) {
        char *reason = NULL;
        int fd = -1;
        int r = trust_open(at(rel), "plugin", &fd, &reason);
        if (r < 0)
                fprintf(stderr, "%s refused: %s\n", rel, reason ? reason : "?");
        CHECK_INT(r, 0);
        CHECK(fd >= 0);
        char b[4] = "";
        CHECK_INT(read(fd, b, 2), 2); /* opened for reading, the very file */
        CHECK_STR(b, "x\n");
        CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        close(fd);
}

static void test_good(void) {
        mk_dir("good", 0755);
        mk_file("good/f.so", 0644);
        accepted("good/f.so");
        /* read-only for everyone is fine too */
        CHECK_INT(chmod(at("good/f.so"), 0444), 0);
        accepted("good/f.so");
        CHECK_INT(chmod(at("good/f.so"), 0644), 0);
        char *reason = NULL;
        CHECK_INT(trust_check_dir(at("good"), "plugin", &reason), 0);
        CHECK_INT(trust_check_file(at("good/f.so"), "plugin", &reason), 0);
        CHECK(reason == NULL); /* not written on success */
}

static void test_writable_file(void) {
        mk_dir("wf", 0755);
        mk_file("wf/group.so", 0664);
        refused("wf/group.so", -EPERM, "writable by its group (mode 0664)");
        mk_file("wf/other.so", 0646);
        refused("wf/other.so", -EPERM, "writable by everyone (mode 0646)");
        refused("wf/other.so", -EPERM, at("wf/other.so"));
}

static void test_writable_dirs(void) {
        /* the directory holding the file */
        mk_dir("wd", 0777);
        mk_file("wd/f.so", 0644);
        refused("wd/f.so", -EPERM, "plugin directory");
        refused("wd/f.so", -EPERM, "writable by everyone (mode 0777)");
        mk_dir("gd", 0775);
        mk_file("gd/f.so", 0644);
        refused("gd/f.so", -EPERM, "writable by its group");
        /* an ancestor higher up */
        mk_dir("wa", 0757);
        mk_dir("wa/sub", 0755);
        mk_dir("wa/sub/deep", 0755);
        mk_file("wa/sub/deep/f.so", 0644);
        refused("wa/sub/deep/f.so", -EPERM, "above");
        refused("wa/sub/deep/f.so", -EPERM, at("wa"));
        char *reason = NULL;
        CHECK_INT(trust_check_dir(at("wa/sub"), "plugin", &reason), -EPERM);
        free(reason);
        CHECK_INT(trust_check_dir(at("wd"), "plugin", &reason), -EPERM);
        CHECK_CONTAINS(reason, "plugin directory");
        free(reason);
}

static void test_sticky(void) {
        /* a sticky, world-writable folder like /tmp may not hold the file... */
        mk_dir("st", 01777);
        mk_file("st/f.so", 0644);
        refused("st/f.so", -EPERM, "sticky");
        /* ...nor a link to it */
        mk_dir("good2", 0755);
        mk_file("good2/f.so", 0644);
        CHECK_INT(symlink(at("good2/f.so"), at("st/link.so")), 0);
        refused("st/link.so", -EPERM, "plugin directory");
        /* but above a folder of ours it is harmless: nobody else may rename that folder
         * (this is /tmp above a root-owned checkout, or a 0700 mkdtemp folder) */
        mk_dir("st/ours", 0755);
        mk_file("st/ours/f.so", 0644);
        accepted("st/ours/f.so");
        /* and the base itself lives in /tmp */
        CHECK(strncmp(base, "/tmp/", 5) == 0);
        /* a missing file in a writable directory: anyone could create it */
        refused("st/missing.so", -EPERM, "does not exist");
        char *reason = NULL;
        CHECK_INT(trust_open(at("good2/missing.so"), "plugin", NULL, &reason), -ENOENT);
        free(reason);
}

static void test_symlinks(void) {
        /* a link from a safe folder into a writable one: the target's folder counts */
        mk_dir("ln", 0755);
        mk_dir("ln/open", 0777);
        mk_file("ln/open/f.so", 0644);
        CHECK_INT(symlink("open/f.so", at("ln/rel.so")), 0);
        refused("ln/rel.so", -EPERM, at("ln/open"));
        CHECK_INT(symlink(at("ln/open/f.so"), at("ln/abs.so")), 0);
        refused("ln/abs.so", -EPERM, at("ln/open"));
        /* a link in a writable folder to a safe file: the configured folder counts too */
        mk_dir("ln/safe", 0755);
        mk_file("ln/safe/f.so", 0644);
        CHECK_INT(symlink(at("ln/safe/f.so"), at("ln/open/good.so")), 0);
        refused("ln/open/good.so", -EPERM, at("ln/open"));
        /* links between safe folders, a linked folder, dot-dot */
        CHECK_INT(symlink("safe/f.so", at("ln/ok.so")), 0);
        accepted("ln/ok.so");
        CHECK_INT(symlink("safe", at("ln/safedir")), 0);
        accepted("ln/safedir/f.so");
        accepted("ln/safe/../safe/./f.so");
        /* a link to a folder through a writable one is refused though the file is fine */
        CHECK_INT(symlink(at("ln/open"), at("ln/opendir")), 0);
        mk_file("ln/open/g.so", 0644);
        refused("ln/opendir/g.so", -EPERM, at("ln/open"));
        /* loops and dangling links */
        CHECK_INT(symlink("loop2", at("ln/loop1")), 0);
        CHECK_INT(symlink("loop1", at("ln/loop2")), 0);
        refused("ln/loop1", -ELOOP, "symbolic links");
        CHECK_INT(symlink("nowhere.so", at("ln/dangling.so")), 0);
        refused("ln/dangling.so", -ENOENT, "nowhere.so");
}

static void test_types(void) {
        mk_dir("ty", 0755);
        CHECK_INT(mkfifo(at("ty/fifo"), 0644), 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        refused("ty/fifo", -EINVAL, "not a regular file");
        clock_gettime(CLOCK_MONOTONIC, &t1);
        CHECK(t1.tv_sec - t0.tv_sec < 2); /* answered, not blocked on the FIFO */
        mk_dir("ty/dir", 0755);
        refused("ty/dir", -EINVAL, "not a regular file");
        mk_file("ty/file", 0644);
        refused("ty/file/x", -ENOTDIR, "not a directory");
        char *reason = NULL;
        CHECK_INT(trust_check_dir(at("ty/file"), "plugin", &reason), -ENOTDIR);
        free(reason);
        CHECK_INT(trust_open("", "plugin", NULL, &reason), -EINVAL);
        free(reason);
}

static void test_relative(void) {
        mk_dir("rel", 0755);
        mk_file("rel/f.so", 0644);
        char cwd[600];
        CHECK(getcwd(cwd, sizeof cwd));
        CHECK_INT(chdir(at("rel")), 0);
        int fd = -1;
        CHECK_INT(trust_open("f.so", "plugin", &fd, NULL), 0);
        close(fd);
        CHECK_INT(trust_open("../rel/f.so", "plugin", &fd, NULL), 0);
        close(fd);
        CHECK_INT(chdir(cwd), 0);
}

static void test_owners(void) {
        if (geteuid() != 0) {
                printf("# owners: not root, files owned by nobody cannot be made here: skipped\n");
                return;
        }
        mk_dir("own", 0755);
        mk_file("own/f.so", 0644);
        CHECK_INT(chown(at("own/f.so"), 65534, 65534), 0);
        refused("own/f.so", -EPERM, "owned by uid 65534, not root");
        mk_dir("own/nobody", 0755);
        mk_file("own/nobody/f.so", 0644);
        CHECK_INT(chown(at("own/nobody"), 65534, 65534), 0);
        refused("own/nobody/f.so", -EPERM, "owned by uid 65534");
        char *reason = NULL;
        CHECK_INT(trust_check_dir(at("own/nobody"), "plugin", &reason), -EPERM);
        free(reason);
        /* in a sticky folder, another user's folder could be renamed by them */
        mk_dir("own/st", 01777);
        mk_dir("own/st/theirs", 0755);
        mk_file("own/st/theirs/f.so", 0644);
        CHECK_INT(chown(at("own/st/theirs"), 65534, 65534), 0);
        refused("own/st/theirs/f.so", -EPERM, "belongs to uid 65534");
}

static void write_text(const char *rel, const char *text, mode_t mode) {
        int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        CHECK_INT(write(fd, text, strlen(text)), (long long)strlen(text));
        close(fd);
        CHECK_INT(chmod(at(rel), mode), 0);
}

static void test_config(void) {
        mk_dir("cfg", 0755);
        mk_dir("cfg/bin", 0755);
        mk_file("cfg/bin/qm", 0755);
        char text[1024];
        snprintf(text, sizeof text, "agent:\n  name: t\n  commands:\n    qm: %s\n    zfs: /nonexistent/zfs\n",
                 at("cfg/bin/qm"));
        write_text("cfg/agentd.yaml", text, 0644);
        diag d;
        agent_config *c = NULL;
        diag_init(&d, NULL);
        CHECK_INT(config_load(at("cfg/agentd.yaml"), &c, &d), 0); /* a missing command is left to run time */
        CHECK_INT(d.n, 0);
        diag_done(&d);
        config_free(c);
        c = NULL;

        /* group-writable config */
        CHECK_INT(chmod(at("cfg/agentd.yaml"), 0664), 0);
        diag_init(&d, NULL);
        CHECK_INT(config_load(at("cfg/agentd.yaml"), &c, &d), -EPERM);
        CHECK(c == NULL);
        CHECK_INT(d.n, 1);
        CHECK_CONTAINS(d.lines[0], "config file");
        CHECK_CONTAINS(d.lines[0], "writable by its group");
        diag_done(&d);
        CHECK_INT(chmod(at("cfg/agentd.yaml"), 0644), 0);

        /* a FIFO as config: refused at once */
        CHECK_INT(mkfifo(at("cfg/fifo.yaml"), 0644), 0);
        diag_init(&d, NULL);
        CHECK_INT(config_load(at("cfg/fifo.yaml"), &c, &d), -EINVAL);
        CHECK_CONTAINS(d.lines[0], "not a regular file");
        diag_done(&d);

        /* a world-writable command: FILE:LINE:COL of its key */
        CHECK_INT(chmod(at("cfg/bin/qm"), 0777), 0);
        diag_init(&d, NULL);
        CHECK_INT(config_load(at("cfg/agentd.yaml"), &c, &d), -EINVAL);
        CHECK_INT(d.n, 1);
        char expect[700];
        snprintf(expect, sizeof expect, "%s:4:5: agent.commands.qm: refusing %s", at("cfg/agentd.yaml"),
                 at("cfg/bin/qm"));
        CHECK_CONTAINS(d.lines[0], expect);
        CHECK_CONTAINS(d.lines[0], "writable by everyone");
        diag_done(&d);
        CHECK_INT(chmod(at("cfg/bin/qm"), 0755), 0);
        /* config_load_string never looks at files */
        diag_init(&d, "mem");
        snprintf(text, sizeof text, "agent:\n  commands:\n    qm: %s/cfg\n", base);
        CHECK_INT(config_load_string(text, strlen(text), "mem", &c, &d), 0);
        config_free(c);
        c = NULL;
        diag_done(&d);

        if (geteuid() != 0) {
                printf("# config: not root, a command owned by nobody cannot be made here: skipped\n");
                return;
        }
        CHECK_INT(chown(at("cfg/bin/qm"), 65534, 65534), 0);
        diag_init(&d, NULL);
        CHECK_INT(config_load(at("cfg/agentd.yaml"), &c, &d), -EINVAL);
        CHECK_CONTAINS(d.lines[0], ":4:5: agent.commands.qm");
        CHECK_CONTAINS(d.lines[0], "owned by uid 65534");
        diag_done(&d);
}

int main(void) {
        CHECK(mkdtemp(base));
        RUN(test_good);
        RUN(test_writable_file);
        RUN(test_writable_dirs);
        RUN(test_sticky);
        RUN(test_symlinks);
        RUN(test_types);
        RUN(test_relative);
        RUN(test_owners);
        RUN(test_config);
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
        CHECK_INT(system(cmd), 0);
        return 0;
}
