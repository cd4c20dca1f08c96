#!/usr/bin/env python3
"""End-to-end: start, list, init failure isolation, --check errors, refusal of unsafe
plugin files, and a clean stop on SIGTERM."""
import os
import re
import signal
import subprocess

from harness import AGENTD, PLUGINS, Agent, Skip, install_plugin, plugin_file, run_tests

TWO = """\
  ex1:
    plugin: example
    interval: 100ms
    config: {greeting: one}
  ex2:
    plugin: example
    interval: 1s
"""


def test_start_list_stop(tmp, agents):
    a = Agent(tmp, TWO)
    agents.append(a)
    a.start()
    lst = a.ok("plugin", "list")
    assert [i["name"] for i in lst] == ["ex1", "ex2"], lst
    assert all(i["state"] == "running" for i in lst), lst
    assert all(i["version"] == "1.0.0" for i in lst)
    st = a.ok("status")
    assert st["agent"] == "e2e" and st["instances"]["running"] == 2, st
    # human table
    rc, out, _ = a.ctl("plugin", "list", as_json=False, check=0)
    assert out.splitlines()[0].split()[:3] == ["INSTANCE", "PLUGIN", "STATE"], out
    assert os.path.exists(a.sock)
    assert a.stop() == 0
    assert not os.path.exists(a.sock), "control socket left behind"
    log = a.logtext()
    assert "Received Terminated, stopping." in log and "Stopped." in log, log


def test_init_failure_is_isolated(tmp, agents):
    a = Agent(tmp, """\
  good:
    plugin: example
  bad:
    plugin: example
    path: %s
""" % plugin_file("broken"))
    agents.append(a)
    a.start()
    good, bad = a.instance("good"), a.instance("bad")
    assert good["state"] == "running", good
    assert bad["state"] == "failed", bad
    assert "init" in bad["error"] and "failed" in bad["error"], bad
    # a call to the failed instance gets a clear error, not a hang
    rc, _, err = a.ctl("call", "bad", "count")
    assert rc == 1 and "failed" in err, (rc, err)
    assert a.ok("call", "good", "count")["count"] == 0


def test_check_reports_file_line_column(tmp, agents):
    a = Agent(tmp, """\
  ex1:
    plugin: example
    intervall: 5s
    config:
      greting: hi
      subscribe: "a..b"
  ex2:
    plugin: nosuchplugin
""", agent_extra="  colour: blue\n")
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    err = p.stderr
    # each fault on its own line, FILE:LINE:COL first
    assert "%s:7:3: agent.colour" % a.config in err, err
    assert "%s:11:5: plugins.ex1.intervall" % a.config in err, err
    assert "%s:13:7: plugins.ex1.config.greting" % a.config in err, err
    assert "%s:15:3: plugins.ex2.plugin: unknown plugin \"nosuchplugin\"" % a.config in err, err
    # a valid file says so and exits 0
    a.write_config(TWO)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "valid (2 plugin instances)" in p.stdout, p
    # agentd refuses to start on an invalid file: exit 1, nothing started
    a.write_config("  ex1: {plugin: example, interval: soon}\n")
    assert a.start(expect_ready=False) == 1
    assert "plugins.ex1.interval" in a.logtext()
    assert not os.path.exists(a.sock)


def test_plugin_config_errors(tmp, agents):
    a = Agent(tmp, """\
  ex1:
    plugin: example
    config:
      greting: hi
      subscribe: "a.>.b"
""")
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert "%s:11:7: plugins.ex1.config.greting" % a.config in p.stderr, p.stderr
    assert "%s:12:" % a.config in p.stderr and "plugins.ex1.config.subscribe" in p.stderr, p.stderr


def test_world_writable_plugin_refused(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("ownership checks apply only when agentd runs as root")
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file(), pdir)
    a = Agent(tmp, "  ex1: {plugin: example}\n", plugin_dirs=[pdir])
    os.chmod(os.path.join(pdir, "example.so"), 0o666)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "writable by everyone" in p.stderr, p
    os.chmod(os.path.join(pdir, "example.so"), 0o644)
    os.chmod(pdir, 0o777)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "plugin directory" in p.stderr, p
    os.chmod(pdir, 0o755)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p
    # a world-writable config file is refused too
    os.chmod(a.config, 0o666)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "writable by everyone" in p.stderr, p


def test_shipped_config_is_valid(tmp, agents):
    """etc/agentd.yaml, as installed, passes --check with the plugins of this build."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "etc", "agentd.yaml")
    with open(src) as f:
        text = f.read()
    text = text.replace("agent:\n", "agent:\n  plugin_dirs: [%s]\n" % PLUGINS, 1)
    path = os.path.join(tmp, "agentd.yaml")
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([AGENTD, "--check", "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    # one instance per two-space key under plugins: (the file documents the rest in comments)
    body = re.split(r"^[a-z]", text.split("\nplugins:\n", 1)[1], maxsplit=1, flags=re.M)[0]
    n = len(re.findall(r"^  [a-z_][a-z0-9_-]*:", body, re.M))
    assert "valid (%d plugin instances)" % n in p.stdout, p.stdout
    # and so are the examples of the README
    for name in ("single-host.yaml", "multi-host.yaml", "host.yaml", "gpu-pool.yaml", "cortex.yaml"):
        with open(os.path.join(os.path.dirname(src), "examples", name)) as f:
            text = f.read().replace("agent:\n", "agent:\n  plugin_dirs: [%s]\n" % PLUGINS, 1)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([AGENTD, "--check", "-c", path], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (name, p.stderr)


def test_reference_topology_fits_together(tmp, agents):
    """host.yaml, cortex.yaml and gpu-pool.yaml (SPEC §6) share one authenticated NATS:
    the token of the sample nats-server.conf, distinct agent names, and every subject
    one of them needs from another exported by that other (no silent gap in the lists)."""
    import shutil
    ex = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "etc", "examples")

    def flows(text, key):
        m = re.search(r"^    %s: \[([^\]]*)\]" % key, text, re.M)
        return re.findall(r'"([^"]+)"', m.group(1)) if m else []

    with open(os.path.join(ex, "nats-server.conf")) as f:
        conf = f.read()
    token = re.search(r'^\s*token: "([^"]+)"', conf, re.M).group(1)
    nodes = {}
    for name in ("host.yaml", "cortex.yaml", "gpu-pool.yaml"):
        with open(os.path.join(ex, name)) as f:
            text = f.read()
        agent = re.search(r"^  name: (\S+)", text, re.M).group(1)
        assert re.search(r"^    token: %s\b" % re.escape(token), text, re.M), (name, "token of nats-server.conf")
        nodes[agent] = (flows(text, "export"), flows(text, "import"))
    assert sorted(nodes) == ["cortex", "gpu-pool", "host"], nodes
    needs = {  # subject -> (who publishes it, who must hear it)
        "gpu.task.run.3": ("cortex", "gpu-pool"), "gpu.task.cancel.3": ("cortex", "gpu-pool"),
        "gpu.worker.heartbeat": ("gpu-pool", "cortex"), "gpu.worker.metrics": ("gpu-pool", "cortex"),
        "gpu.task.running": ("gpu-pool", "cortex"), "gpu.task.done": ("gpu-pool", "cortex"),
        "gpu.task.err": ("gpu-pool", "cortex"), "gpu.task.enqueue": ("host", "cortex"),
        "gpu.task.result.x": ("cortex", "host"), "gpu.cache.sync": ("host", "gpu-pool"),
        "gpu.cache.sync.done": ("gpu-pool", "host"),
    }

    def matches(pattern, subject):
        p, s = pattern.split("."), subject.split(".")
        for i, t in enumerate(p):
            if t == ">":
                return len(s) > i
            if i >= len(s) or (t != "*" and t != s[i]):
                return False
        return len(p) == len(s)

    for subject, (src, dst) in needs.items():
        assert any(matches(p, subject) for p in nodes[src][0]), (subject, src, "does not export it")
        assert any(matches(p, subject) for p in nodes[dst][1]), (subject, dst, "does not import it")
    # the sample server config is valid (when nats-server is installed)
    if shutil.which("nats-server"):
        path = os.path.join(tmp, "nats-server.conf")
        with open(path, "w") as f:
            f.write(conf.replace("/var/lib/nats/jetstream", os.path.join(tmp, "js")))
        p = subprocess.run(["nats-server", "-t", "-c", path], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p


def test_sigint_and_hup(tmp, agents):
    a = Agent(tmp, TWO)
    agents.append(a)
    a.start()
    a.signal(signal.SIGINT)
    assert a.proc.wait(timeout=15) == 0
    assert "Stopped." in a.logtext()


if __name__ == "__main__":
    run_tests(globals())
