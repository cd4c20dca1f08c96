#!/usr/bin/env python3
"""End-to-end: isolated instances (`isolate: true`). A plugin that segfaults, aborts,
exits or spins in a hook kills only its child process: the daemon and the other
instances go on (a heartbeat instance keeps ticking, control round trips stay fast),
the crash is logged with the signal and the hook and counted, messages published while
the child is down are delivered to the next child, a crash loop ends in `failed`, and
plugin reload, verbs, verify and the store work through the proxy."""
import json
import os
import re
import time

from harness import TEST_PLUGINS, Agent, Control, install_plugin, plugin_file, run_tests, wait_for

CRASHY = os.path.join(TEST_PLUGINS, "crashy", "crashy.so")

HEARTBEAT = """\
  hb:
    plugin: example
    interval: 100ms
    config: {heartbeat_subject: hb.beat, subscribe: "nothing.>"}
"""

# counts every echo of the crashy instance (in-process, so it is not what crashes)
COUNTER = """\
  counter:
    plugin: example
    queue_max: 100000
    config: {heartbeat_subject: counter.beat, subscribe: "crashy.out"}
"""


def crashy(name="cr", extra="", **config):
    cfg = ", ".join("%s: %s" % (k, json.dumps(v)) for k, v in config.items())
    return """\
  %s:
    path: %s
    isolate: true
%s    config: {%s}
""" % (name, CRASHY, extra, cfg)


def ticks(a, name):
    return a.instance(name)["ticks"]


def count(a, name="counter"):
    return a.ok("call", name, "count")["count"]


def publish(a, payloads, subject="crashy.in"):
    """Pipelines bus.pub requests on one connection and reads every answer."""
    c = Control(a.sock)
    for i, p in enumerate(payloads):
        c.send("bus.pub", {"subject": subject, "payload": p}, id=i + 1)
    for _ in payloads:
        r = c.read()
        assert r.get("ok"), r
    c.close()


def round_trip_ms(a):
    """One status request on a raw connection: the daemon's latency, not agentctl's start."""
    c = Control(a.sock)
    t0 = time.monotonic()
    c.send("status")
    r = c.read()
    dt = (time.monotonic() - t0) * 1000
    c.close()
    assert r.get("ok"), r
    return dt


def test_example_isolated_verbs_verify_store(tmp, agents):
    a = Agent(tmp, """\
  ex:
    plugin: example
    isolate: true
    interval: 100ms
    config: {subscribe: "example.>"}
""" + crashy(), agent_extra="  commands: {echo: /bin/echo}\n")
    agents.append(a)
    a.start()
    ex = wait_for(lambda: (lambda i: i if i.get("pid") and i.get("child_state") == "ready" else None)(a.instance("ex")),
                  what="the isolated child")
    assert ex["isolated"] is True and ex["pid"] != a.proc.pid, ex
    # the child is a process of its own, a child of agentd
    with open("/proc/%d/stat" % ex["pid"]) as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == a.proc.pid
    publish(a, [{"i": i} for i in range(10)], subject="example.x")
    wait_for(lambda: a.ok("call", "ex", "count")["count"] == 10, what="10 messages through the proxy")
    assert a.ok("call", "ex", "echo", '{"a": [1, 2]}') == {"echo": {"a": [1, 2]}}
    rc, out, err = a.ctl("call", "ex", "nosuchverb")
    assert rc != 0 and "unknown verb" in (json.dumps(out) + err), (rc, out, err)
    # the child reports its hook errors (the unknown verb) and tick durations
    wait_for(lambda: a.ok("plugin", "info", "ex")["hook_errors"] == 1, what="the hook error from the child")
    wait_for(lambda: ticks(a, "ex") >= 3, what="ticks of the isolated instance")
    wait_for(lambda: a.ok("plugin", "info", "ex")["tick_us_max"] > 0, what="tick durations from the child")
    audit = a.ok("audit")
    ex_audit = [i for i in audit["instances"] if i["instance"] == "ex"][0]
    assert ex_audit["verified"] and ex_audit["ok"], ex_audit
    # store and kv go through the parent: the file is the parent's state_dir
    assert a.ok("call", "cr", "store", '"abc"') == {"kv": {"args": ["abc"]}}
    assert os.path.exists(os.path.join(a.state, "cr.db"))
    # exec runs in agentd (the command table is agentd's), the completion goes back
    assert a.ok("call", "cr", "run") == {"status": 0, "out": "hello from cr"}
    # a request from the child, answered by another isolated instance
    assert a.ok("call", "cr", "ask", "organism.ctl.e2e.ex.count")["reply"]["count"] == 10
    publish(a, ["x"])
    wait_for(lambda: 'crashy_handled_total{instance="cr"} 1' in a.ok("metrics", "--text", as_json=False),
             what="the metric of the child")
    # the heartbeat of the isolated example reaches the bus
    r = a.ok("bus", "sub", "agent.heartbeat", "--count", "1", "--timeout", "5")
    assert r, r
    # agentd itself never mapped the isolated-only plugin: a child read its descriptor
    with open("/proc/%d/maps" % a.proc.pid) as f:
        assert "crashy.so" not in f.read()
    with open("/proc/%d/maps" % a.instance("cr")["pid"]) as f:
        assert "crashy.so" in f.read()
    # the human table shows it too
    rc, text, _ = a.ctl("plugin", "list", as_json=False)
    assert "isolated" in text and str(ex["pid"]) in text, text


def crash_in_handle(tmp, agents, how):
    a = Agent(tmp, HEARTBEAT + COUNTER + crashy(crash_in="handle", crash_how=how, trigger='"crash"'))
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("cr").get("child_state") == "ready", what="the isolated child")
    pid1 = a.instance("cr")["pid"]
    t0 = ticks(a, "hb")
    # 50 before the trigger, 250 after it: most of those reach a child that is dead or
    # not started yet, and must all be echoed by the next one
    payloads = ["m%d" % i for i in range(50)] + ["crash"] + ["m%d" % i for i in range(50, 300)]
    publish(a, payloads)
    wait_for(lambda: count(a) == 300, timeout=20, what="300 echoes across the crash")
    cr = a.instance("cr")
    assert cr["crashes"] == 1 and cr["pid"] != pid1 and cr["state"] == "running", cr
    assert cr["poisoned"] == 1, cr  # the message it died in is not handed to the next child
    assert ticks(a, "hb") > t0, "the heartbeat stopped"
    log = a.logtext()
    want = {"segv": "SIGSEGV", "abort": "SIGABRT", "exit": "exited with status 3"}[how]
    assert want in log and "in hook handle" in log, log[-3000:]
    metrics = a.ok("metrics", "--text", as_json=False)
    assert 'instance_crashes_total{instance="cr"} 1' in metrics, metrics
    return a


def test_segv_in_handle(tmp, agents):
    crash_in_handle(tmp, agents, "segv")


def test_abort_in_handle(tmp, agents):
    crash_in_handle(tmp, agents, "abort")


def test_exit_in_handle(tmp, agents):
    crash_in_handle(tmp, agents, "exit")


def test_crash_loop_in_tick_fails_after_max_restarts(tmp, agents):
    a = Agent(tmp, HEARTBEAT + crashy(extra="    interval: 50ms\n    max_restarts: 3\n", crash_in="tick",
                                      crash_how="segv", crash_tick=2))
    agents.append(a)
    a.start()
    t0, worst = ticks(a, "hb"), 0.0
    deadline = time.monotonic() + 20
    while a.instance("cr")["state"] != "failed":
        assert time.monotonic() < deadline, "never failed:\n" + a.logtext()[-3000:]
        worst = max(worst, round_trip_ms(a))
        time.sleep(0.05)
    cr = a.instance("cr")
    assert cr["crashes"] == 4, cr  # the fourth crash within the window is one too many
    assert "crashed 4 times" in cr["error"] and "SIGSEGV" in cr["error"], cr
    assert ticks(a, "hb") >= t0 + 5, "the heartbeat did not keep ticking"
    print("# control round trip during the crash loop: worst %.1f ms" % worst)
    assert worst < 250, worst  # a few ms when idle; room for a busy shared machine
    assert "in hook tick" in a.logtext()
    # a failed isolated instance starts again on reload
    install = a.ok("plugin", "reload", "cr")
    assert install["state"] == "running", install


def test_spin_in_handle_killed_after_hook_timeout(tmp, agents):
    a = Agent(tmp, HEARTBEAT + COUNTER + crashy(extra="    hook_timeout: 400ms\n", crash_in="handle",
                                                crash_how="spin", trigger='"crash"'))
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("cr").get("child_state") == "ready", what="the isolated child")
    t0 = ticks(a, "hb")
    publish(a, ["a", "crash", "b", "c"])
    rtt = [round_trip_ms(a) for _ in range(5)]  # the parent never waits for a spinning child
    wait_for(lambda: count(a) == 3, timeout=15, what="the echoes around the spinning message")
    log = a.logtext()
    assert "hook handle ran longer than hook_timeout (400 ms)" in log and "SIGKILL" in log, log[-3000:]
    assert ticks(a, "hb") > t0
    assert max(rtt) < 200, rtt


def test_queue_max_bounds_what_waits_for_a_stuck_child(tmp, agents):
    a = Agent(tmp, COUNTER + crashy(extra="    hook_timeout: 2s\n    queue_max: 20\n", crash_in="handle",
                                    crash_how="spin", trigger='"crash"'))
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("cr").get("child_state") == "ready", what="the isolated child")
    publish(a, ["crash"] + ["m%d" % i for i in range(100)])  # all while the child spins
    wait_for(lambda: a.instance("cr")["crashes"] == 1, timeout=10, what="the kill")
    wait_for(lambda: a.instance("cr").get("child_state") == "ready" and a.instance("cr")["isolate_queued"] == 0,
             timeout=10, what="the next child")
    cr = a.instance("cr")
    dropped = cr["dropped"] + cr["isolate_dropped"]
    assert dropped > 0, cr  # queue_max held (in the inbox or in the isolate queue): not everything was kept
    # every message is either delivered or counted as dropped
    wait_for(lambda: count(a) == 100 - dropped, what="%d echoes" % (100 - dropped))
    assert 100 - dropped <= 40, cr  # at most queue_max in flight plus queue_max waiting
    assert cr["poisoned"] == 1, cr


def test_spin_or_segv_in_tick_call_timer(tmp, agents):
    """Each hook that can run in the child, hanging or crashing: named in the log, killed
    after hook_timeout when it hangs, and the instance comes back."""
    cases = [("t_spin", "tick", "spin"), ("c_spin", "call", "spin"), ("tm_spin", "timer", "spin"),
             ("tm_segv", "timer", "segv")]
    yaml = HEARTBEAT + "".join(
        crashy(n, "    interval: 100ms\n    hook_timeout: 300ms\n", crash_in=hook, crash_how=how, crash_tick=3)
        for n, hook, how in cases)
    a = Agent(tmp, yaml)
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("c_spin").get("child_state") == "ready", what="the isolated child")
    t0 = time.monotonic()
    rc, out, err = a.ctl("call", "c_spin", "boom", timeout=30)
    assert rc != 0 and "SIGKILL" in json.dumps(out) + err, (rc, out, err)
    assert time.monotonic() - t0 < 3, "the call was not cut at hook_timeout"
    for n, hook, how in cases:
        wait_for(lambda: a.instance(n)["crashes"] >= 1, timeout=10, what="a crash of %s" % n)
    lines = a.logtext().splitlines()
    for n, hook, how in cases:
        mine = [line for line in lines if "[%s:%s]" % (n, n) in line]
        want = ("hook %s ran longer than hook_timeout (300 ms)" % hook) if how == "spin" else "SIGSEGV"
        assert any(want in line and "in hook %s" % hook in line for line in mine), (n, "\n".join(mine))
    assert a.instance("hb")["state"] == "running"
    assert round_trip_ms(a) < 250


def test_constructor_crash_never_reaches_agentd(tmp, agents):
    ctor = os.path.join(TEST_PLUGINS, "crashy", "ctor", "crashy.so")
    a = Agent(tmp, HEARTBEAT)
    agents.append(a)
    a.start()
    a.write_config(HEARTBEAT + "  bad:\n    path: %s\n    isolate: true\n" % ctor)
    rc, out, err = a.ctl("config", "reload")
    assert rc == 1 and "signal 11" in err and "constructor" in err, (rc, out, err)
    assert a.proc.poll() is None and a.instance("hb")["state"] == "running"
    assert round_trip_ms(a) < 250
    # agentd --check says the same, and survives it too
    import subprocess
    from harness import AGENTD
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "constructor" in p.stderr, p


def test_check_of_an_isolated_config_uses_its_ranges(tmp, agents):
    """The stand-in descriptor carries the plugin's choices and bounds: FILE:LINE:COL."""
    import subprocess
    from harness import AGENTD
    a = Agent(tmp, crashy(crash_in="bogus", crash_tick=0))
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert re.search(r"agentd.yaml:\d+:\d+: plugins.cr.config.crash_in: \"bogus\" is not one of", p.stderr), p.stderr
    assert "plugins.cr.config.crash_tick: 0 is below the minimum 1" in p.stderr, p.stderr


def test_spin_in_init_and_abort_in_init(tmp, agents):
    a = Agent(tmp, HEARTBEAT + crashy("spin", "    hook_timeout: 300ms\n    max_restarts: 1\n", crash_in="init",
                                      crash_how="spin") +
              crashy("ab", "    max_restarts: 2\n", crash_in="init", crash_how="abort"))
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("ab")["state"] == "failed" and a.instance("spin")["state"] == "failed", timeout=20,
             what="both failed")
    assert a.instance("ab")["crashes"] == 3
    assert a.instance("spin")["crashes"] == 2
    log = a.logtext()
    assert "SIGABRT" in log and "in hook init" in log
    assert "hook init ran longer than hook_timeout (300 ms)" in log
    assert a.instance("hb")["state"] == "running"


def test_segv_in_call_answers_and_restarts(tmp, agents):
    a = Agent(tmp, crashy(crash_in="call", crash_how="segv"))
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("cr").get("child_state") == "ready", what="the isolated child")
    t0 = time.monotonic()
    rc, out, err = a.ctl("call", "cr", "boom")
    assert rc != 0 and "SIGSEGV" in json.dumps(out) + err, (rc, out, err)
    assert time.monotonic() - t0 < 5, "the caller waited for a time-out instead of an answer"
    wait_for(lambda: a.instance("cr").get("child_state") == "ready", what="the restarted child")
    assert a.ok("call", "cr", "count")["handled"] == 0


def test_reload_isolated_keeps_state_and_swaps_child(tmp, agents):
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file(), pdir)
    a = Agent(tmp, """\
  ex:
    plugin: example
    isolate: true
    config: {subscribe: "example.>"}
""", plugin_dirs=[pdir])
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("ex").get("child_state") == "ready", what="the isolated child")
    old = a.instance("ex")["pid"]
    publish(a, [{"i": i} for i in range(25)], subject="example.y")
    wait_for(lambda: a.ok("call", "ex", "count")["count"] == 25, what="25 counted")
    install_plugin(plugin_file("v2"), pdir)
    r = a.ok("plugin", "reload", "ex")
    assert r["state"] == "running", r
    ex = a.instance("ex")
    assert ex["version"].startswith("2"), ex
    assert ex["pid"] != old, ex
    got = a.ok("call", "ex", "count")
    assert got["count"] == 25 and got["version"].startswith("2"), got  # save/restore across processes
    wait_for(lambda: not os.path.exists("/proc/%d/stat" % old) or "Z" in open("/proc/%d/stat" % old).read().split()[2],
             what="the old child to go")
    # a broken build is refused and the running child stays
    install_plugin(plugin_file("broken"), pdir)
    rc, out, err = a.ctl("plugin", "reload", "ex")
    assert rc != 0, (rc, out, err)
    assert a.instance("ex")["pid"] == ex["pid"]
    assert a.ok("call", "ex", "count")["count"] == 25


def test_reload_isolated_under_load_loses_nothing(tmp, agents):
    import threading
    from test_reload import publisher
    pdir = os.path.join(tmp, "plugins")
    install_plugin(plugin_file(), pdir)
    a = Agent(tmp, """\
  ex:
    plugin: example
    isolate: true
    queue_max: 1000000
    config: {subscribe: "example.>"}
""", plugin_dirs=[pdir])
    agents.append(a)
    a.start()
    wait_for(lambda: a.instance("ex").get("child_state") == "ready", what="the isolated child")
    stop, result = threading.Event(), {}
    t = threading.Thread(target=publisher, args=(a.sock, 20000, stop, result))
    t.start()
    reloads, pids = 0, set()
    versions = [plugin_file("v2"), plugin_file()]
    while t.is_alive():
        install_plugin(versions[reloads % 2], pdir)
        r = a.ok("plugin", "reload", "ex")
        assert r["state"] == "running", r
        pids.add(a.instance("ex")["pid"])
        reloads += 1
        if reloads >= 3:
            stop.set()
    t.join(timeout=60)
    assert "error" not in result, result
    sent = result["sent"]
    res = a.ok("call", "ex", "count")  # behind every message, in the same order
    info = a.instance("ex")
    assert info["dropped"] == 0 and info["isolate_dropped"] == 0, info
    assert res["count"] == sent, "lost %d of %d messages over %d reloads" % (sent - res["count"], sent, reloads)
    assert len(pids) == reloads, pids  # a new child each time
    print("# isolated: %d messages, %d reloads, none lost" % (sent, reloads))


def test_config_reload_into_and_out_of_isolation(tmp, agents):
    plain = """\
  ex:
    plugin: example
    config: {subscribe: "example.>", greeting: one}
"""
    a = Agent(tmp, plain + HEARTBEAT)
    agents.append(a)
    a.start()
    assert "isolated" not in a.instance("ex")
    hb_gen = a.instance("hb")["generation"]
    a.write_config(plain.replace("plugin: example", "plugin: example\n    isolate: true") + HEARTBEAT)
    r = a.ok("config", "reload")
    assert r["restarted"] == ["ex"], r
    ex = wait_for(lambda: (lambda i: i if i.get("child_state") == "ready" else None)(a.instance("ex")),
                  what="the isolated child")
    assert ex["isolated"] and ex["pid"], ex
    # a changed config block: a new child, the old one retired
    a.write_config(plain.replace("plugin: example", "plugin: example\n    isolate: true").replace("one", "two")
                   + HEARTBEAT)
    r = a.ok("config", "reload")
    assert r["restarted"] == ["ex"], r
    ex2 = a.instance("ex")
    assert ex2["pid"] != ex["pid"] and ex2["state"] == "running", ex2
    assert a.ok("plugin", "info", "ex")["config"]["greeting"] == "two"
    # and back in-process
    a.write_config(plain + HEARTBEAT)
    r = a.ok("config", "reload")
    assert r["restarted"] == ["ex"], r
    assert "isolated" not in a.instance("ex") and a.instance("ex")["state"] == "running"
    assert a.instance("hb")["generation"] == hb_gen  # untouched throughout
    a.ok("bus", "pub", "example.z", "{}")
    assert a.ok("call", "ex", "count")["count"] == 1


def test_durable_consumer_and_publish_through_the_child(tmp, agents):
    from test_nats import connected, durable_agent, enqueue
    from harness import NatsServer
    srv = NatsServer(tmp).start()  # Skip when there is no nats-server
    agents.append(srv)
    a = durable_agent(tmp, agents, srv)
    with open(a.config) as f:
        text = f.read()
    with open(a.config, "w") as f:
        f.write(text.replace("    plugin: example\n", "    plugin: example\n    isolate: true\n", 1))
    a.start()
    wait_for(lambda: connected(a), what="bridge connected")
    assert a.instance("ex")["isolated"]
    for i in range(20):  # publish_durable from the child, answered once stored
        assert enqueue(a, i)[1] == {"stored": True}
    wait_for(lambda: a.ok("ex", "durable")["unique"] == 20, timeout=30, what="every durable message in the child")
    wait_for(lambda: a.ok("status")["nats"]["jetstream"]["unacked"] == 0, timeout=30, what="the acks from the child")


def isolated_memory(name):
    """The memory plugin's own end-to-end test NAME, with its instance isolated: the same
    behaviour through the proxy (sysroot writes, exec of qm, timers, bus, verbs)."""
    def run(tmp, agents):
        import test_memory

        class IsolatedAgent(Agent):
            def write_config(self, plugins_yaml, agent_extra=""):
                plugins_yaml = plugins_yaml.replace("    plugin: memory\n", "    plugin: memory\n    isolate: true\n")
                super().write_config(plugins_yaml, agent_extra)

        saved, test_memory.Agent = test_memory.Agent, IsolatedAgent
        try:
            getattr(test_memory, name)(tmp, agents)
        finally:
            test_memory.Agent = saved
        info = agents[0].instance("memory")
        assert info["isolated"] and info["pid"] and info["crashes"] == 0, info
    return run


for _name in ("test_levers_follow_memory_with_hysteresis", "test_stopped_vm_gets_qm_set",
              "test_phase_from_bus_switches_profile", "test_phase_from_circadian_at_start",
              "test_missing_arc_file_disables_only_that_lever", "test_box_without_zfs_or_psi",
              "test_dry_run_writes_nothing"):
    globals()["test_memory_isolated_" + _name[len("test_"):]] = isolated_memory(_name)


if __name__ == "__main__":
    run_tests(globals())
