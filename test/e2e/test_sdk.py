#!/usr/bin/env python3
"""End-to-end: a plugin built out of tree with nothing but the installed SDK (headers
and organism-plugin.pc) loads into a running agentd and works."""
import os
import shutil
import subprocess

from harness import BUILD, Agent, Skip, run_tests

PLUGIN_C = r"""
/* hello.c — an out-of-tree plugin: answers "greet" with its configured name. */
#include <stdio.h>
#include <string.h>
#include <organism/plugin.h>

static const org_host *H;
static org_ctx *C;

static const org_config_entry map[] = {
        {.key = "who", .type = ORG_CFG_STRING, .required = true, .help = "whom to greet"},
        ORG_CONFIG_END,
};
static const org_verb verbs[] = {{.name = "greet", .help = "says hello"}, ORG_VERBS_END};

static int init(const org_host *h, org_ctx *c, void **state) { H = h; C = c; *state = (void *)1; return 0; }
static int call(void *s, const char *verb, const org_msg *req) {
        const char *who = "?";
        (void)s;
        (void)verb;
        char buf[128];
        H->config_string(C, "who", &who);
        int n = snprintf(buf, sizeof buf, "{\"hello\":\"%s\"}", who);
        return H->respond(C, req->reply, buf, (size_t)n);
}
static void fini(void *s) { (void)s; }

ORG_PLUGIN_DEFINE(.name = "hello", .version = "0.0.1", .summary = "out-of-tree test",
                  .config_map = map, .verbs = verbs, .init = init, .call = call, .fini = fini);
"""


def test_out_of_tree_plugin(tmp, agents):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which("pkg-config") or not shutil.which("meson"):
        raise Skip("needs cc, pkg-config and meson")
    dest = os.path.join(tmp, "root")
    p = subprocess.run(["meson", "install", "-C", BUILD, "--destdir", dest, "--no-rebuild", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    pcs = [os.path.join(r, f) for r, _, fs in os.walk(dest) for f in fs if f == "organism-plugin.pc"]
    assert pcs, "organism-plugin.pc not installed"
    env = dict(os.environ, PKG_CONFIG_SYSROOT_DIR=dest, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
    cflags = subprocess.run(["pkg-config", "--cflags", "organism-plugin"], capture_output=True, text=True,
                            env=env, check=True).stdout.split()
    assert any(f.startswith("-I" + dest) for f in cflags), cflags
    src = os.path.join(tmp, "hello.c")
    with open(src, "w") as f:
        f.write(PLUGIN_C)
    pdir = os.path.join(tmp, "plugins")
    os.makedirs(pdir)
    so = os.path.join(pdir, "hello.so")
    # strict flags, no access to the source tree: only the installed headers
    p = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC"] + cflags +
                       ["-o", so, src], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    a = Agent(tmp, "  hi:\n    plugin: hello\n    config: {who: world}\n", plugin_dirs=[pdir])
    agents.append(a)
    a.start()
    assert a.ok("hi", "greet") == {"hello": "world"}
    info = a.ok("plugin", "info", "hi")
    assert info["config_map"][0]["key"] == "who" and info["config_map"][0]["required"] is True, info
    # a required key missing is an error at check time
    a.write_config("  hi: {plugin: hello}\n")
    rc, out, _ = a.ctl("config", "check")
    assert rc == 1 and "plugins.hi.config.who" in " ".join(out["errors"]), out


if __name__ == "__main__":
    run_tests(globals())
