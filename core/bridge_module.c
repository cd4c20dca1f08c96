/* bridge_module.c — agentd's side of the NATS bridge: the bridge itself lives in the
 * module organism-bridge.so (bridge_module.h), loaded here the first time bus.nats is
 * configured and kept for the life of the process (libnats keeps threads and global
 * state: it is never unloaded). Without bus.nats, none of libnats, libssl or libcrypto
 * is mapped. The module file is opened once and checked (a regular file; run as root:
 * owned by root, writable by nobody else, and so is every directory above the
 * installed one), then dlopened through its fd. */
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>

#include "bridge_module.h"
#include "log.h"
#include "org-build-config.h"
#include "util.h"

static const bridge_module *module;

/* The installed module; or, for an agentd run from its build tree (the tests), the
 * module next to it in that same tree. */
static const char *const build_module = ORG_BUILD_BRIDGE_MODULE;

static const char *module_path(void) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
                exe[n] = '\0';
                if (startswith(exe, ORG_BUILD_ROOT "/"))
                        return build_module;
        }
        return ORG_BRIDGE_MODULE;
}

/* Every directory above the installed module: owned by root, writable by nobody else
 * (a world-writable ancestor would let anyone swap the folder under it). The build
 * tree's module is what the tests run: its ancestors are the developer's business. */
static int check_ancestors(const char *path) {
        char dir[PATH_MAX];
        if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
                return -ENAMETOOLONG;
        for (char *slash = strrchr(dir, '/'); slash; slash = strrchr(dir, '/')) {
                if (slash == dir)
                        slash[1] = '\0'; /* "/" itself, last */
                else
                        *slash = '\0';
                struct stat st;
                if (lstat(dir, &st) < 0)
                        return log_error_errno(errno, "NATS bridge: cannot check %s: %m", dir);
                if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
                        return log_error_errno(EPERM,
                                               "NATS bridge: refusing its module: %s is not a directory owned "
                                               "by root and writable by root only",
                                               dir);
                if (slash == dir)
                        break;
        }
        return 0;
}

static int module_load(void) {
        if (module)
                return 0;
        const char *path = module_path();
        if (geteuid() == 0 && path != build_module) {
                int r = check_ancestors(path);
                if (r < 0)
                        return r;
        }
        _cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return log_error_errno(errno, "NATS bridge: cannot open its module %s: %m", path);
        struct stat st;
        if (fstat(fd, &st) < 0)
                return log_error_errno(errno, "NATS bridge: cannot stat %s: %m", path);
        if (!S_ISREG(st.st_mode) || (geteuid() == 0 && (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))))
                return log_error_errno(EPERM,
                                       "NATS bridge: refusing module %s: not a regular file owned by root and "
                                       "writable by root only",
                                       path);
        char fdpath[64];
        snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
        void *h = dlopen(fdpath, RTLD_NOW | RTLD_LOCAL);
        if (!h)
                return log_error_errno(ELIBACC, "NATS bridge: cannot load %s: %s", path, dlerror());
        const bridge_module *m = dlsym(h, BRIDGE_MODULE_SYMBOL);
        if (!m || m->abi != BRIDGE_MODULE_ABI || m->size != sizeof(bridge_module) || !m->version ||
            !streq(m->version, ORG_VERSION) || m->agent_size != sizeof(agent)) {
                dlclose(h);
                return log_error_errno(ELIBBAD, "NATS bridge: %s is not the module of this agentd %s (another build?)",
                                       path, ORG_VERSION);
        }
        module = m; /* the handle stays open for the life of the process */
        return 0;
}

int bridge_new(agent *a, json_t *nats_config, bridge **ret) {
        int r = module_load();
        if (r < 0)
                return r;
        return module->bridge_new(a, nats_config, ret);
}

/* A bridge exists only once the module is loaded: module is set whenever b is. */
void bridge_free(bridge *b) {
        if (b)
                module->bridge_free(b);
}

json_t *bridge_status(bridge *b) {
        if (!b)
                return json_pack("{s:b}", "enabled", 0);
        return module->bridge_status(b);
}

int bridge_publish_durable(bridge *b, const char *subject, const char *msg_id, const void *data, size_t len,
                           bridge_pub_done_fn cb, void *userdata) {
        if (!b)
                return -EOPNOTSUPP;
        return module->bridge_publish_durable(b, subject, msg_id, data, len, cb, userdata);
}

int bridge_consume(bridge *b, const org_consume_opts *opts, bridge_deliver_fn fn, void *userdata,
                   bridge_consumer **ret) {
        if (!b)
                return -EOPNOTSUPP;
        return module->bridge_consume(b, opts, fn, userdata, ret);
}

void bridge_consume_cancel(bridge_consumer *c) {
        if (c)
                module->bridge_consume_cancel(c);
}

int bridge_ack(bridge *b, uint64_t ack_token, org_ack_kind kind, uint64_t delay_ms) {
        if (!b)
                return -EOPNOTSUPP;
        return module->bridge_ack(b, ack_token, kind, delay_ms);
}
