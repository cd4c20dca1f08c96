#!/usr/bin/env python3
"""End-to-end: which files agentd trusts (core/trust.c). A reload of a config that has
become group-writable or a link into a world-writable folder is refused and the
running config kept; a plugin in (or below) a world-writable folder is refused with
the folder named; agent.commands programs others may write are refused by --check and
reload; a FIFO given to `config check` is answered at once; no scratch folder is left
after kill -9; a read-only peer cannot get an unloaded plugin loaded through
`plugin info`; `config check FILE` is refused over NATS."""
import grp
import json
import os
import shutil
import signal
import subprocess
import time

from harness import AGENTD, PLUGINS, Agent, NatsServer, Skip, install_plugin, plugin_file, run_tests, wait_for

ONE = """\
  ex:
    plugin: example
    interval: 1h
"""


def check(a):
    return subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)


def names(a):
    return [i["name"] for i in a.ok("plugin", "list")]


def test_reload_refused_when_config_becomes_unsafe(tmp, agents):
    a = Agent(tmp, ONE)
    agents.append(a)
    a.start()
    # an injected instance in a file that its group may write
    a.write_config(ONE + "  injected: {plugin: example}\n")
    os.chmod(a.config, 0o664)
    rc, _, err = a.ctl("config", "reload")
    assert rc != 0 and "writable by its group" in err and a.config in err, (rc, err)
    assert names(a) == ["ex"]
    a.signal(signal.SIGHUP)
    wait_for(lambda: "Configuration reload refused" in a.logtext(), what="SIGHUP refused")
    assert names(a) == ["ex"] and a.ok("status")["config_reloads"] == 0
    # a symlink to a file in a world-writable folder: refused as well, the folder named
    open_dir = os.path.join(tmp, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    real = os.path.join(open_dir, "agentd.yaml")
    shutil.copyfile(a.config, real)
    os.chmod(real, 0o644)
    link = a.config + ".new"
    os.symlink(real, link)
    os.rename(link, a.config)
    rc, _, err = a.ctl("config", "reload")
    assert rc != 0 and "config directory %s is writable by everyone" % open_dir in err, (rc, err)
    assert names(a) == ["ex"]
    # the same text in a safe file is accepted: it was the permissions
    os.unlink(a.config)
    a.write_config(ONE + "  injected: {plugin: example}\n")
    a.ok("config", "reload")
    assert names(a) == ["ex", "injected"]


def test_plugin_in_world_writable_folder_refused(tmp, agents):
    # the configured folder is world-writable, its entry a link to a good file
    pdir = os.path.join(tmp, "plugins")
    os.mkdir(pdir)
    os.symlink(plugin_file(), os.path.join(pdir, "example.so"))
    os.chmod(pdir, 0o777)
    a = Agent(tmp, ONE, plugin_dirs=[pdir])
    p = check(a)
    assert p.returncode == 1 and "plugin directory %s is writable by everyone" % pdir in p.stderr, p
    # the folder itself at its line, and the plugin taken from it at the instance
    assert "%s:3:17: agent.plugin_dirs[0]: refusing %s" % (a.config, pdir) in p.stderr, p.stderr
    assert "plugins.ex: cannot load %s/example.so" % pdir in p.stderr, p.stderr
    os.chmod(pdir, 0o755)
    p = check(a)
    assert p.returncode == 0, p
    # a world-writable folder higher up
    above = os.path.join(tmp, "above")
    deep = os.path.join(above, "lib", "plugins")
    install_plugin(plugin_file(), deep)
    os.chmod(above, 0o757)
    a2 = Agent(tmp, ONE, plugin_dirs=[deep])
    p = check(a2)
    assert p.returncode == 1 and "directory %s, above %s/example.so" % (above, deep) in p.stderr, p
    assert "plugins.ex: cannot load %s/example.so" % deep in p.stderr, p.stderr
    # a running agent refuses it too, naming the folder
    a3 = Agent(tmp, ONE)
    agents.append(a3)
    a3.start()
    rc, _, err = a3.ctl("plugin", "load", "ex9", "--path", os.path.join(deep, "example.so"))
    assert rc != 0 and above in err and "writable by everyone" in err, (rc, err)
    assert names(a3) == ["ex"]


def test_command_others_may_write_refused(tmp, agents):
    bindir = os.path.join(tmp, "bin")
    os.mkdir(bindir)
    qm = os.path.join(bindir, "qm")
    with open(qm, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(qm, 0o755)
    a = Agent(tmp, ONE, agent_extra="  commands:\n    qm: %s\n" % qm)
    agents.append(a)
    p = check(a)
    assert p.returncode == 0, p
    a.start()
    os.chmod(qm, 0o777)
    p = check(a)
    assert p.returncode == 1, p
    assert "%s:8:5: agent.commands.qm: refusing %s" % (a.config, qm) in p.stderr, p.stderr
    assert "writable by everyone" in p.stderr, p.stderr
    # and at reload: the running config stays
    a.write_config(ONE + "  injected: {plugin: example}\n", "  commands:\n    qm: %s\n" % qm)
    rc, _, err = a.ctl("config", "reload")
    assert rc != 0 and "agent.commands.qm" in err, (rc, err)
    assert names(a) == ["ex"]
    os.chmod(qm, 0o755)
    if os.geteuid() != 0:
        raise Skip("not root: a command owned by nobody cannot be made (the world-writable case passed)")
    os.chown(qm, 65534, 65534)
    p = check(a)
    assert p.returncode == 1 and "%s:8:5: agent.commands.qm" % a.config in p.stderr, p.stderr
    assert "owned by uid 65534, not root" in p.stderr, p.stderr


def test_config_check_fifo_answered_at_once(tmp, agents):
    a = Agent(tmp, ONE)
    agents.append(a)
    a.start()
    fifo = os.path.join(tmp, "fifo.yaml")
    os.mkfifo(fifo, 0o644)
    t0 = time.monotonic()
    rc, out, err = a.ctl("config", "check", fifo, timeout=10)
    dt = time.monotonic() - t0
    assert rc != 0 and "not a regular file" in json.dumps(out) + err, (rc, out, err)
    assert dt < 5, dt
    assert a.ok("status")["instances"]["running"] == 1  # the loop was never stuck
    # a file of another kind and a missing one: errors too, at once
    for path in (tmp, os.path.join(tmp, "missing.yaml")):
        rc, out, err = a.ctl("config", "check", path, timeout=10)
        assert rc != 0, (path, rc, out, err)


def test_no_scratch_folder_left_after_kill(tmp, agents):
    scratch = os.path.join(tmp, "tmpdir")
    os.mkdir(scratch, 0o700)
    a = Agent(tmp, ONE + "  ex2: {plugin: example, interval: 1h}\n")
    agents.append(a)
    a.start(env={"TMPDIR": scratch})
    a.ok("plugin", "reload", "ex")
    # the very file checked is mapped, by its real name
    with open("/proc/%d/maps" % a.proc.pid) as f:
        assert plugin_file() in f.read()
    a.proc.kill()
    a.proc.wait(timeout=10)
    assert os.listdir(scratch) == [], os.listdir(scratch)
    a.start(env={"TMPDIR": scratch})
    assert names(a) == ["ex", "ex2"]
    assert os.listdir(scratch) == [], os.listdir(scratch)
    left = [n for n in os.listdir(tmp) if n.startswith("agentd-so")]
    assert left == [], left


def test_plugin_info_unloaded_needs_root(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("needs root to run agentctl as another uid")
    try:
        gid = grp.getgrnam("organism").gr_gid
    except KeyError:
        subprocess.run(["groupadd", "-r", "organism"], check=True)
        gid = grp.getgrnam("organism").gr_gid
    a = Agent(tmp, ONE + "  off: {plugin: circadian, enabled: false}\n")
    agents.append(a)
    a.start()
    os.chmod(a.sock, 0o666)
    member = ["--reuid=65534", "--regid=65534", "--groups=%d" % gid]
    # loaded: documented to everyone who may read
    info = a.ok("plugin", "info", "ex", user=member)
    assert info["plugin"] == "example" and info["verbs"], info
    # not loaded: loading it would run its constructors as root
    rc, _, err = a.ctl("plugin", "info", "memory", user=member)
    assert rc != 0 and "permission denied" in err and "only root" in err, (rc, err)
    info = a.ok("plugin", "info", "off", user=member)
    assert "config_map" not in info and "only root" in info["load_error"], info
    # root may
    assert a.ok("plugin", "info", "memory")["plugin"] == "memory"
    assert a.ok("plugin", "info", "off")["plugin"] == "circadian"


def test_config_check_file_refused_over_nats(tmp, agents):
    srv = NatsServer(tmp, extra=["--auth", "trust-token"]).start()  # admin over NATS needs auth
    agents.append(srv)
    ags = {}
    for name, rc_mode in (("alpha", "read-only"), ("beta", "admin")):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        a = Agent(d, ONE, name=name)
        with open(a.config, "a") as f:
            f.write("bus:\n  nats:\n    url: %s\n    token: trust-token\n    remote_control: %s\n" % (srv.url, rc_mode))
        agents.append(a)
        a.start()
        ags[name] = a
    alpha = ags["alpha"]
    wait_for(lambda: all(x.ok("status")["nats"]["connected"] for x in ags.values()), what="both connected")
    # beta's admin over NATS may check beta's running config...
    wait_for(lambda: alpha.ctl("--agent", "beta", "status")[0] == 0, what="beta reachable")
    r = alpha.ok("--agent", "beta", "config", "check")
    assert r["ok"] is True and r["path"] == ags["beta"].config, r
    # ...but not have beta read another file as root
    rc, out, err = alpha.ctl("--agent", "beta", "config", "check", "/etc/passwd")
    assert rc != 0 and "over NATS" in err, (rc, out, err)


if __name__ == "__main__":
    run_tests(globals())
