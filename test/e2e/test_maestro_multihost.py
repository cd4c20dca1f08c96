#!/usr/bin/env python3
"""End-to-end: maestro and the real gpuworker in two agents over a real nats-server,
as the Cortex and GPU-Pool VMs run them: agent `cortex` runs maestro (instance task),
agent `gpupool` runs gpuworker on a private copy of the gpupool12 fixture sysroot
(12 GPUs plus a passed-through 13th), and tasks are submitted from a third agent,
`host`, with `agentctl --agent cortex task submit`. Each task is a real process (as
the user nobody, so the test needs root) that appends a line to a file named after its
task_id: 60 tasks end done, each file holds one line (run exactly once), although
nats-server is killed and restarted mid-run. The first tasks are instant, so a
worker's heartbeat saying "idle" races the done of the task it just ran (over NATS,
order across subjects is not kept): that must not fail a task the worker ran."""
import json
import os
import shutil
import time

from harness import PLUGINS, Agent, NatsServer, Skip, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "sysroots", "gpupool12")
N = 60

BUS = """bus:
  nats:
    url: %s
    export: %s
    import: %s
    reconnect_wait: 100ms
    remote_control: %s
"""


def nats_agent(tmp, agents, name, url, plugins, export=(), imports=(), remote="read-only", agent_extra=""):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    a = Agent(d, plugins, name=name, plugin_dirs=[PLUGINS], agent_extra=agent_extra)
    with open(a.config, "a") as f:
        f.write(BUS % (url, json.dumps(list(export)), json.dumps(list(imports)), remote))
    agents.append(a)
    return a


def connected(a):
    return a.ok("status")["nats"]["connected"]


def submit(host, tid, script, marks, sleep=None):
    """Submits through cortex until it is accepted (the bridge may be down: the same id
    again is the same task, so retrying is safe)."""
    argv = [script, marks] + ([sleep] if sleep else [])
    deadline = time.monotonic() + 30
    while True:
        code, out, err = host.ctl("--agent", "cortex", "-t", "3", "task", "submit", "--id", tid, "--", *argv)
        if code == 0:
            assert out["accepted"] is True and out["task_id"] == tid, out
            return out
        assert time.monotonic() < deadline, "submit %s: %s" % (tid, err)
        time.sleep(0.1)  # the server is restarting: try again (a retry loop, not a wait for an event)


def test_multihost_tasks_done_once_across_nats_restart(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("gpuworker runs tasks as the unprivileged user nobody: agentd must run as root")
    srv = NatsServer(tmp).start()
    agents.append(srv)
    root = os.path.join(tmp, "root")
    shutil.copytree(FIXTURE, root, symlinks=True)
    bindir = os.path.join(tmp, "bin")
    os.mkdir(bindir)
    marks = os.path.join(tmp, "marks")
    os.mkdir(marks)
    os.chmod(marks, 0o777)
    script = os.path.join(bindir, "mark.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\necho run >> "$1/$TASK_ID"\n[ -n "$2" ] && sleep "$2"\necho "done $TASK_ID"\n')
    os.chmod(script, 0o755)

    gpupool = nats_agent(
        tmp, agents, "gpupool", srv.url,
        "  gpuworker:\n    config:\n      task_root: %s\n      user: nobody\n"
        "      heartbeat_interval: 200ms\n      metrics_interval: 1s\n      rescan_interval: 1h\n"
        % os.path.join(tmp, "tasks"),
        export=["gpu.worker.>", "gpu.task.running", "gpu.task.done", "gpu.task.err"],
        imports=["gpu.task.run.>", "gpu.task.cancel.>"], agent_extra="  sysroot: %s\n" % root)
    cortex = nats_agent(
        tmp, agents, "cortex", srv.url,
        "  task:\n    plugin: maestro\n    config: {lease_grace: 3s, retry_backoff: 100ms, default_timeout: 5s, idle_grace: 1s}\n",
        export=["gpu.task.run.>", "gpu.task.cancel.>", "gpu.task.state.>", "gpu.task.result.>", "maestro.>"],
        imports=["gpu.task.enqueue", "gpu.worker.>", "gpu.task.running", "gpu.task.done", "gpu.task.err"],
        remote="admin")
    host = nats_agent(tmp, agents, "host", srv.url, "  ex: {plugin: example, interval: 1h}\n")
    for a in (gpupool, cortex, host):
        a.start()
    wait_for(lambda: all(connected(a) for a in (gpupool, cortex, host)), what="three bridges connected")
    wait_for(lambda: cortex.ok("task", "status")["gpus_alive"] >= 11, timeout=15, what="the worker's GPUs alive")

    ids = ["mh%02d" % i for i in range(N)]
    for i, tid in enumerate(ids):
        # instant tasks first (the heartbeat/done race), then some that run 0.3 s so
        # the restart finds tasks running on the worker
        submit(host, tid, script, marks, sleep="0.3" if 20 <= i < 40 else None)
        if i == 30:
            srv.stop()
            srv.start()
    try:
        wait_for(lambda: cortex.ok("task", "status")["queued"] == 0, timeout=40, what="every task final")
    except AssertionError:
        st = cortex.ok("task", "status")
        st.pop("gpus", None)
        open_ = [cortex.ok("task", "status", t) for t in ids]
        raise AssertionError("not all final: %s\n%s" % (st, [t for t in open_ if t["state"] != "done"][:6]))
    states = {tid: cortex.ok("task", "status", tid)["state"] for tid in ids}
    bad = {t: s for t, s in states.items() if s != "done"}
    assert not bad, ("tasks not done", bad, [cortex.ok("task", "status", t) for t in list(bad)[:3]])
    assert sorted(os.listdir(marks)) == ids
    for tid in ids:
        with open(os.path.join(marks, tid)) as f:
            assert f.read() == "run\n", "task %s ran more than once" % tid
    st = cortex.ok("task", "status")
    print("# %d done, %d retries, %d lost, %d replayed, %d stale, %d lease expiries" % (
        st["done_total"], st["retries_total"], st["lost_total"], st["replayed_total"], st["stale_results_total"],
        st["lease_expiries_total"]))
    assert st["done_total"] == N and st["failed_total"] == 0, st
    assert st["lost_total"] == 0, st  # the worker lost nothing: idle heartbeats must not say otherwise
    # (a done lost with the bridge: the lease of 8 s retries it, answered from the worker's store)
    # the remote read side: list and status through host
    lst = host.ok("--agent", "cortex", "task", "list", "--state", "done", "--limit", "5")
    assert lst["count"] == 5 and all(t["state"] == "done" for t in lst["tasks"]), lst
    one = host.ok("--agent", "cortex", "task", "status", "mh07")
    res = one.get("result") or one.get("stored", {}).get("result")
    assert one["state"] == "done" and res["ok"] is True and res["stdout"] == "done mh07\n", one

    # pinned to the 13th card, passed through to vfio-pci (the worker says so): it
    # waits, then its deadline fails it; it never ran
    r = host.ok("--agent", "cortex", "task", "submit", "--id", "pin12", "--gpu", "12", "--deadline", "2", "--",
                script, marks)
    assert r["accepted"] is True, r
    wait_for(lambda: cortex.ok("task", "status", "pin12")["state"] == "failed", timeout=10, what="pin12 failed")
    assert "deadline exceeded" in json.dumps(cortex.ok("task", "status", "pin12")), cortex.ok("task", "status", "pin12")
    assert not os.path.exists(os.path.join(marks, "pin12"))
    # cancel of a running task: the worker kills it and confirms, the task ends cancelled
    submit(host, "long", script, marks, sleep="60")
    wait_for(lambda: cortex.ok("task", "status", "long")["state"] == "running", timeout=10, what="long running")
    t0 = time.monotonic()
    c = host.ok("--agent", "cortex", "task", "cancel", "long")
    assert c["state"] == "cancelling", c
    wait_for(lambda: cortex.ok("task", "status", "long")["state"] == "cancelled", timeout=10, what="long cancelled")
    assert time.monotonic() - t0 < 5, "cancel took %.1f s" % (time.monotonic() - t0)
    gst = gpupool.ok("gpuworker", "status")
    assert all(g["state"] != "busy" for g in gst["gpus"]), gst


run_tests(globals())
