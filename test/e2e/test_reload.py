#!/usr/bin/env python3
"""End-to-end: plugin reload while a publisher runs at full speed (no message lost),
a failed reload keeps the running version, config reload restarts only what changed,
and running commands survive reloads: the new build adopts them and gets the
completion with all the output (the example plugin's sleep_echo verb), a build that
does not adopt gets them cancelled and logged, twenty reloads deliver once and leak
nothing, a failed reload leaves the command with the old build; the same for an
isolated instance, whose child is replaced while agentd keeps its commands (a child
that crashes has its commands killed)."""
import json
import os
import shutil
import signal
import threading
import time

from harness import PLUGINS, Agent, Control, install_plugin, plugin_file, run_tests, wait_for

N_MESSAGES = 20000


def publisher(sock, min_n, stop, result):
    """Pipelines bus.pub requests on one connection, reading replies as it goes, until it
    sent at least min_n and the test says stop. result gets "sent" or "error"."""
    try:
        c = Control(sock)
        window = 256
        sent = acked = 0
        while acked < sent or sent < min_n or not stop.is_set():
            while (sent < min_n or not stop.is_set()) and sent - acked < window:
                sent += 1
                c.send("bus.pub", {"subject": "example.load", "payload": {"i": sent}}, id=sent)
            if acked == sent:
                break
            r = c.read()
            if not r.get("ok"):
                result["error"] = r
                return
            acked += 1
        c.close()
        result["sent"] = sent
    except Exception as e:  # reported by the test thread
        result["error"] = repr(e)


COMMANDS = "  commands: {sh: /bin/sh}\n"


def sleep_echo(a, seconds, text):
    r = a.ok("call", "ex", "sleep_echo", json.dumps({"seconds": seconds, "text": text}))
    assert "id" in r, r
    return r["id"]


def host_execs(a):
    """The running commands as agentd sees them (plugin info), by id."""
    return {x["id"]: x for x in a.ok("plugin", "info", "ex")["execs"]}


def completions(a):
    return a.ok("call", "ex", "execs")["done"]


def fd_count(pid):
    """agentd's descriptors but sockets: a control connection closes when agentd reads
    the hang-up, a moment after agentctl exits, so counting sockets would race."""
    d = "/proc/%d/fd" % pid
    n = 0
    for f in os.listdir(d):
        try:
            n += not os.readlink(os.path.join(d, f)).startswith("socket:")
        except FileNotFoundError:
            pass
    return n


def children(pid):
    """(pid, state) of every process whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append((int(d), fields[0]))
    return out


def test_reload_under_load_loses_nothing(tmp, agents):
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file(), pdir)
    a = Agent(tmp, """\
  ex:
    plugin: example
    queue_max: 1000000
    config: {subscribe: "example.>"}
""", plugin_dirs=[pdir], agent_extra=COMMANDS)
    agents.append(a)
    a.start()
    # a command runs through the reloads (the first comes at once, well within 2 s)
    xid = sleep_echo(a, 2, "under load")
    stop, result = threading.Event(), {}
    t = threading.Thread(target=publisher, args=(a.sock, N_MESSAGES, stop, result))
    t.start()
    reloads = 0
    versions = [plugin_file("v2"), plugin_file()]
    # reload again and again while the publisher runs (at least 3 times)
    while t.is_alive():
        install_plugin(versions[reloads % 2], pdir)
        r = a.ok("plugin", "reload", "ex")
        assert r["state"] == "running", r
        reloads += 1
        if reloads >= 3:
            stop.set()
    t.join(timeout=60)
    assert "error" not in result, result
    sent = result["sent"]
    # The call is queued behind every message in the same inbox (FIFO), so its answer
    # comes after all of them were handled.
    res = a.ok("call", "ex", "count")
    info = a.instance("ex")
    assert info["dropped"] == 0, info
    assert res["count"] == sent, "lost %d of %d messages over %d reloads" % (sent - res["count"], sent, reloads)
    assert info["reloads"] == reloads, info
    done = wait_for(lambda: completions(a), timeout=30, what="the command's completion")
    assert len(done) == 1 and done[0]["id"] == xid, done
    assert done[0]["status"] == 0 and done[0]["out"] == "begin\nunder load\n", done
    assert done[0]["restores"] >= 1, done  # received by a later build than the one that started it
    assert "not adopted" not in a.logtext()
    print("# %d messages, %d reloads, none lost; the command completed once" % (sent, reloads))


def test_failed_reload_keeps_running_version(tmp, agents):
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file("v2"), pdir)
    a = Agent(tmp, "  ex: {plugin: example, interval: 1h}\n", plugin_dirs=[pdir])
    agents.append(a)
    a.start()
    a.ok("bus", "pub", "example.one", "{}")
    assert a.ok("call", "ex", "count")["count"] == 1

    for variant, words in (("broken", ["init", "failed"]), ("badabi", ["ABI version 99", "speaks version 1"]),
                           ("nodesc", ["organism_plugin"])):
        install_plugin(plugin_file(variant), pdir)
        rc, out, err = a.ctl("plugin", "reload", "ex")
        assert rc == 1, (variant, rc, out, err)
        for w in words:
            assert w in err, (variant, err)
        assert "running version stays" in err, err
        info = a.instance("ex")
        assert info["state"] == "running" and info["version"] == "2.0.0", (variant, info)
        # the old generation still works and kept its state
        assert a.ok("call", "ex", "count")["count"] == 1
    # and a good build goes through afterwards
    install_plugin(plugin_file(), pdir)
    r = a.ok("plugin", "reload", "ex")
    assert r["version"] == "1.0.0", r
    assert a.ok("call", "ex", "count")["count"] == 1


def exec_agent(tmp, agents, config="{}", version="example"):
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file(version), pdir)
    a = Agent(tmp, "  ex: {plugin: example, interval: 1h, config: %s}\n" % config, plugin_dirs=[pdir],
              agent_extra=COMMANDS)
    agents.append(a)
    a.start()
    return a, pdir


def test_reload_keeps_running_command(tmp, agents):
    a, pdir = exec_agent(tmp, agents)
    xid = sleep_echo(a, 3, "full output")
    x = host_execs(a)[xid]
    assert x["argv0"] == "sh" and x["generation"] == 1 and x["pid"] > 0, x
    # reload 1 s into the 3 s command (awaited through agentd's own view of its age)
    wait_for(lambda: host_execs(a)[xid]["age_ms"] >= 1000, what="the command to be 1 s old")
    install_plugin(plugin_file("v2"), pdir)
    r = a.ok("plugin", "reload", "ex")
    assert r["version"] == "2.0.0" and r["generation"] == 2, r
    # the same process goes on, now the new generation's, still started by generation 1
    y = host_execs(a)[xid]
    assert y["pid"] == x["pid"] and y["generation"] == 1, y
    assert a.ok("call", "ex", "execs")["running"] == [xid]
    # the human table of plugin info lists it too: id, argv[0], pid, age, time-out, generation
    code, out, err = a.ctl("plugin", "info", "ex", as_json=False)
    assert code == 0, err
    row = [ln.split() for ln in out.splitlines() if ln.split()[:1] == [str(xid)]]
    assert row and row[0][1:3] == ["sh", str(x["pid"])] and row[0][-1] == "1", out
    done = wait_for(lambda: completions(a), timeout=15, what="the completion")
    assert done == [{"id": xid, "status": 0, "timed_out": False, "out": "begin\nfull output\n",
                     "version": "2.0.0", "restores": 1}], done
    assert host_execs(a) == {}
    assert "killing" not in a.logtext()


def test_not_adopted_is_cancelled_and_logged(tmp, agents):
    a, pdir = exec_agent(tmp, agents, "{adopt_execs: false}")
    xid = sleep_echo(a, 60, "never")
    pid = host_execs(a)[xid]["pid"]
    install_plugin(plugin_file("v2"), pdir)
    a.ok("plugin", "reload", "ex")
    line = "killing exec %d sh (pid %d): not adopted by the new generation" % (xid, pid)
    assert line in a.logtext(), a.logtext()[-2000:]
    assert host_execs(a) == {}
    wait_for(lambda: not os.path.exists("/proc/%d" % pid), what="the killed command to be reaped")
    r = a.ok("call", "ex", "execs")
    assert r["running"] == [] and r["done"] == [], r


def test_twenty_reloads_one_completion(tmp, agents):
    a, pdir = exec_agent(tmp, agents)
    a.ok("call", "ex", "count")  # settled: every fd of a running agent is open by now
    pid = a.proc.pid
    fds_before = fd_count(pid)
    xid = sleep_echo(a, 8, "twenty")
    versions = [plugin_file("v2"), plugin_file()]
    for i in range(20):
        install_plugin(versions[i % 2], pdir)
        a.ok("plugin", "reload", "ex")
    # all twenty happened while it ran, or the test proves nothing
    assert xid in host_execs(a), "the command finished before the 20th reload"
    done = wait_for(lambda: completions(a), timeout=30, what="the completion")
    r = a.ok("call", "ex", "execs")
    assert r["running"] == [], r
    # once, to the last generation (build 1.0.0 after an even number of reloads)
    assert done == [{"id": xid, "status": 0, "timed_out": False, "out": "begin\ntwenty\n", "version": "1.0.0",
                     "restores": 20}], done
    assert a.instance("ex")["generation"] == 21
    wait_for(lambda: children(pid) == [], what="no child (nor zombie) of agentd left")
    # old generations' .so descriptors, pipes and pidfds all closed again
    assert fd_count(pid) == fds_before, (fd_count(pid), fds_before, os.listdir("/proc/%d/fd" % pid))


def test_failed_reload_old_generation_receives(tmp, agents):
    a, pdir = exec_agent(tmp, agents, version="v2")
    xid = sleep_echo(a, 2, "still mine")
    install_plugin(plugin_file("broken"), pdir)
    rc, _, err = a.ctl("plugin", "reload", "ex")
    assert rc == 1 and "running version stays" in err, (rc, err)
    assert xid in host_execs(a)
    done = wait_for(lambda: completions(a), timeout=15, what="the completion")
    assert done == [{"id": xid, "status": 0, "timed_out": False, "out": "begin\nstill mine\n",
                     "version": "2.0.0", "restores": 0}], done


def iso_exec_agent(tmp, agents, config="{}", version="example"):
    """The example instance isolated: its commands run in agentd, on behalf of the child."""
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file(version), pdir)
    a = Agent(tmp, "  ex: {plugin: example, interval: 1h, isolate: true, config: %s}\n" % config,
              plugin_dirs=[pdir], agent_extra=COMMANDS)
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("ex").get("child_state") == "ready", what="the isolated child")
    return a, pdir


def test_isolated_reload_keeps_running_command(tmp, agents):
    """The child is replaced; the parent keeps the command and the new child adopts it."""
    a, pdir = iso_exec_agent(tmp, agents)
    child = a.instance("ex")["pid"]
    xid = sleep_echo(a, 3, "full output")
    x = host_execs(a)[xid]
    assert x["argv0"] == "sh" and x["pid"] > 0 and x["pid"] != child, x
    wait_for(lambda: host_execs(a)[xid]["age_ms"] >= 1000, what="the command to be 1 s old")
    install_plugin(plugin_file("v2"), pdir)
    r = a.ok("plugin", "reload", "ex")
    assert r["version"] == "2.0.0", r
    new_child = a.instance("ex")["pid"]
    assert new_child != child, (new_child, child)
    y = host_execs(a)[xid]
    assert y["pid"] == x["pid"] and y["generation"] == x["generation"], (x, y)
    assert a.ok("call", "ex", "execs")["running"] == [xid]
    # the old child is gone while the command runs on
    wait_for(lambda: not os.path.exists("/proc/%d/stat" % child) or
             "Z" in open("/proc/%d/stat" % child).read().split()[2], what="the old child to go")
    assert os.path.exists("/proc/%d" % x["pid"])
    # ids are the parent's: the new child's own command cannot collide with the inherited one
    xid2 = sleep_echo(a, 0, "second")
    assert xid2 != xid, (xid2, xid)
    done = wait_for(lambda: len(completions(a)) == 2 and completions(a), timeout=15, what="both completions")
    assert sorted(done, key=lambda d: d["id"]) == sorted([
        {"id": xid, "status": 0, "timed_out": False, "out": "begin\nfull output\n", "version": "2.0.0",
         "restores": 1},
        {"id": xid2, "status": 0, "timed_out": False, "out": "begin\nsecond\n", "version": "2.0.0",
         "restores": 1}], key=lambda d: d["id"]), done
    assert host_execs(a) == {}
    assert "killing" not in a.logtext()
    assert a.instance("ex")["pid"] == new_child


def test_isolated_not_adopted_is_cancelled_and_logged(tmp, agents):
    a, pdir = iso_exec_agent(tmp, agents, "{adopt_execs: false}")
    xid = sleep_echo(a, 60, "never")
    pid = host_execs(a)[xid]["pid"]
    install_plugin(plugin_file("v2"), pdir)
    a.ok("plugin", "reload", "ex")
    line = "killing exec %d sh (pid %d): not adopted by the new generation" % (xid, pid)
    assert line in a.logtext(), a.logtext()[-2000:]
    assert host_execs(a) == {}
    wait_for(lambda: not os.path.exists("/proc/%d" % pid), what="the killed command to be reaped")
    r = a.ok("call", "ex", "execs")
    assert r["running"] == [] and r["done"] == [], r


def test_isolated_failed_reload_old_child_receives(tmp, agents):
    a, pdir = iso_exec_agent(tmp, agents, version="v2")
    child = a.instance("ex")["pid"]
    xid = sleep_echo(a, 2, "still mine")
    install_plugin(plugin_file("broken"), pdir)
    rc, _, err = a.ctl("plugin", "reload", "ex")
    assert rc == 1 and "running version stays" in err, (rc, err)
    assert a.instance("ex")["pid"] == child
    assert xid in host_execs(a)
    done = wait_for(lambda: completions(a), timeout=15, what="the completion")
    assert done == [{"id": xid, "status": 0, "timed_out": False, "out": "begin\nstill mine\n",
                     "version": "2.0.0", "restores": 0}], done
    assert "killing" not in a.logtext()


def test_isolated_crash_kills_its_commands(tmp, agents):
    """A child that dies (not a reload) has nobody to hand its commands to: they are killed."""
    a, pdir = iso_exec_agent(tmp, agents)
    child = a.instance("ex")["pid"]
    xid = sleep_echo(a, 60, "orphan")
    pid = host_execs(a)[xid]["pid"]
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: a.instance("ex").get("child_state") == "ready" and a.instance("ex")["pid"] != child,
             what="the restarted child")
    assert "killing sh (pid %d): its plugin generation is retired" % pid in a.logtext(), a.logtext()[-2000:]
    wait_for(lambda: not os.path.exists("/proc/%d" % pid), what="the killed command to be reaped")
    assert host_execs(a) == {}


def test_isolated_config_reload_keeps_running_command(tmp, agents):
    a, pdir = iso_exec_agent(tmp, agents, "{greeting: one}")
    child = a.instance("ex")["pid"]
    xid = sleep_echo(a, 2, "config")
    pid = host_execs(a)[xid]["pid"]
    a.write_config("  ex: {plugin: example, interval: 1h, isolate: true, config: {greeting: two}}\n", COMMANDS)
    r = a.ok("config", "reload")
    assert r["restarted"] == ["ex"], r
    assert a.instance("ex")["pid"] != child
    assert host_execs(a)[xid]["pid"] == pid
    done = wait_for(lambda: completions(a), timeout=15, what="the completion")
    assert done == [{"id": xid, "status": 0, "timed_out": False, "out": "begin\nconfig\n", "version": "1.0.0",
                     "restores": 1}], done
    assert "killing" not in a.logtext()


def test_isolated_ten_reloads_one_completion(tmp, agents):
    """Ten children in turn during one command: one completion, to the last child, and
    no descriptor of the old children or of the command left in agentd."""
    a, pdir = iso_exec_agent(tmp, agents)
    a.ok("call", "ex", "count")
    pid = a.proc.pid
    fds_before = fd_count(pid)
    xid = sleep_echo(a, 6, "ten")
    versions = [plugin_file("v2"), plugin_file()]
    for i in range(10):
        install_plugin(versions[i % 2], pdir)
        a.ok("plugin", "reload", "ex")
    assert xid in host_execs(a), "the command finished before the 10th reload"
    done = wait_for(lambda: completions(a), timeout=30, what="the completion")
    assert done == [{"id": xid, "status": 0, "timed_out": False, "out": "begin\nten\n", "version": "1.0.0",
                     "restores": 10}], done
    assert a.ok("call", "ex", "execs")["running"] == []
    child = a.instance("ex")["pid"]
    wait_for(lambda: [p for p, _ in children(pid)] == [child], what="only the last child left, no zombie")
    assert fd_count(pid) == fds_before, (fd_count(pid), fds_before, os.listdir("/proc/%d/fd" % pid))
    assert "killing" not in a.logtext()


def test_isolated_worker_job_is_not_adopted(tmp, agents):
    """Worker jobs run in the child's threads and die with it: work_adopt says -ENOENT."""
    a, pdir = iso_exec_agent(tmp, agents)
    a.ok("call", "ex", "sleep_work", json.dumps({"ms": 3000}))
    install_plugin(plugin_file("v2"), pdir)
    a.ok("plugin", "reload", "ex")
    wait_for(lambda: "cannot adopt work" in a.logtext(), what="the refused adoption in the log")
    assert "No such file or directory" in [ln for ln in a.logtext().splitlines() if "cannot adopt work" in ln][0]


def test_reload_adopts_worker_job(tmp, agents):
    """A job of the worker pool runs code of the old .so while the new one takes over:
    the old file stays mapped until the job returns (or agentd would crash), and the
    new build's done gets the result and the job's block."""
    a, pdir = exec_agent(tmp, agents)
    wid = a.ok("call", "ex", "sleep_work", json.dumps({"ms": 1500}))["id"]
    install_plugin(plugin_file("v2"), pdir)
    a.ok("plugin", "reload", "ex")
    assert a.ok("call", "ex", "execs")["works"] == [wid]
    done = wait_for(lambda: completions(a), timeout=15, what="the job's completion")
    assert done == [{"work_id": wid, "result": 0, "slept_ms": 1500, "version": "2.0.0", "restores": 1}], done
    assert a.ok("call", "ex", "execs")["works"] == []


def test_not_adopted_worker_job_finishes_unheard(tmp, agents):
    """Not adopted: the reload does not wait for the running job (the loop answers at
    once), the job finishes on its thread, its .so is closed only then (its descriptor
    is the one extra fd meanwhile), its block freed (ASan would tell), done never runs."""
    a, pdir = exec_agent(tmp, agents, "{adopt_execs: false}")
    pid = a.proc.pid
    a.ok("call", "ex", "sleep_work", json.dumps({"ms": 1500}))
    base = fd_count(pid)  # the pool and its eventfd exist from the first submit on
    install_plugin(plugin_file("v2"), pdir)
    t0 = time.monotonic()
    r = a.ok("plugin", "reload", "ex")
    assert r["reload_us"] < 1000000, r  # not blocked behind the 1.5 s job
    assert "1 worker job(s) not adopted by the new generation" in a.logtext()
    assert fd_count(pid) == base + 1  # the old .so, held by its running job
    wait_for(lambda: fd_count(pid) == base, timeout=10, what="the old .so closed once its job returned")
    assert time.monotonic() - t0 >= 1.0
    r = a.ok("call", "ex", "execs")
    assert r["done"] == [] and r["works"] == [], r
    assert a.instance("ex")["state"] == "running"


def test_config_reload_keeps_running_command(tmp, agents):
    a, pdir = exec_agent(tmp, agents, "{greeting: one}")
    xid = sleep_echo(a, 2, "config")
    a.write_config("  ex: {plugin: example, interval: 1h, config: {greeting: two}}\n", COMMANDS)
    r = a.ok("config", "reload")
    assert r["restarted"] == ["ex"], r
    assert a.ok("plugin", "info", "ex")["config"]["greeting"] == "two"
    done = wait_for(lambda: completions(a), timeout=15, what="the completion")
    assert len(done) == 1 and done[0]["out"] == "begin\nconfig\n" and done[0]["restores"] == 1, done


BASE = """\
  ex1:
    plugin: example
    config: {greeting: one}
  ex2:
    plugin: example
    config: {greeting: two}
"""


def test_config_reload_touches_only_changed(tmp, agents):
    a = Agent(tmp, BASE + "  ex3: {plugin: example}\n")
    agents.append(a)
    a.start()
    gen = {i["name"]: i["generation"] for i in a.ok("plugin", "list")}
    a.write_config(BASE.replace("greeting: two", "greeting: deux") + "  ex4: {plugin: example}\n")
    r = a.ok("config", "reload")
    assert r["restarted"] == ["ex2"], r
    assert r["unchanged"] == ["ex1"], r
    assert r["started"] == ["ex4"], r
    assert r["stopped"] == ["ex3"], r
    now = {i["name"]: i for i in a.ok("plugin", "list")}
    assert now["ex1"]["generation"] == gen["ex1"], now
    assert now["ex2"]["generation"] == gen["ex2"] + 1, now
    assert "ex3" not in now and now["ex4"]["state"] == "running", now
    info = a.ok("plugin", "info", "ex2")
    assert info["config"]["greeting"] == "deux", info

    # an invalid file changes nothing and says why
    with open(a.config, "a") as f:
        f.write("  ex5: {plugin: example, config: {nope: 1}}\n")
    rc, _, err = a.ctl("config", "reload")
    assert rc == 1 and "plugins.ex5.config.nope" in err and "nothing changed" in err, err
    assert sorted(i["name"] for i in a.ok("plugin", "list")) == ["ex1", "ex2", "ex4"]

    # SIGHUP does the same as config reload
    a.write_config(BASE)
    a.signal(signal.SIGHUP)
    wait_for(lambda: sorted(i["name"] for i in a.ok("plugin", "list")) == ["ex1", "ex2"], what="SIGHUP reload")
    now = {i["name"]: i for i in a.ok("plugin", "list")}
    assert now["ex1"]["generation"] == gen["ex1"], now


def test_runtime_load_enable_disable(tmp, agents):
    a = Agent(tmp, "  ex1: {plugin: example}\n")
    agents.append(a)
    a.start()
    r = a.ok("plugin", "load", "extra", "--plugin", "example", "--config", '{"subscribe": "extra.>"}')
    assert r["state"] == "running", r
    a.ok("bus", "pub", "extra.x", "{}")
    assert a.ok("call", "extra", "count")["count"] == 1
    rc, _, err = a.ctl("plugin", "load", "bad", "--plugin", "example", "--config", '{"subscribe": "a..b"}')
    assert rc == 1 and "subscribe" in err, err
    rc, _, err = a.ctl("plugin", "load", "ex1", "--plugin", "example")
    assert rc == 1 and "exists" in err, err
    assert a.ok("plugin", "disable", "extra")["state"] == "disabled"
    rc, _, err = a.ctl("call", "extra", "count")
    assert rc == 1 and "disabled" in err, err
    assert a.ok("plugin", "enable", "extra")["state"] == "running"
    rc, _, err = a.ctl("plugin", "unload", "extra")
    assert rc == 2 and "--confirm" in err, err
    a.ok("plugin", "unload", "extra", "--confirm")
    assert a.instance("extra") is None


def test_each_file_loads_its_own_descriptor(tmp, agents):
    """glibc keeps /proc/<pid>/fd/N as an alias of an object found by inode: once
    `plugin info example` (loaded already) used that name, a later file behind the same
    descriptor number must not get example's descriptor back."""
    a = Agent(tmp, "  ex: {plugin: example, interval: 1h}\n", plugin_dirs=[PLUGINS])
    agents.append(a)
    a.start()
    for name in ("example", "memory", "zfs", "example", "circadian", "memory"):
        info = a.ok("plugin", "info", name)
        assert info["plugin"] == name, (name, info["plugin"], info.get("file"))


if __name__ == "__main__":
    run_tests(globals())
