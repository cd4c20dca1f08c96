#!/usr/bin/env python3
"""End-to-end tests of the gpuworker plugin in the real agentd, on a private copy of the
gpupool12 fixture sysroot (12 RX 580 with card0..card11, gpu5 runtime-suspended, a 13th
card bound to vfio-pci): telemetry on the bus and in the metrics, and real tasks, run as
the unprivileged user `nobody` (so the tests need root; skipped otherwise) by argv from
scripts this test writes (never `sh -c`): done with stdout, err with the returncode, a
time-out and a cancel that kill a grandchild which called setsid (when cgroup v2 is
writable: otherwise the fallback is printed), output of 10 MB capped at 64 000 bytes
without the agent's RSS growing by it, a busy GPU refused, a re-delivered task answered
from the store (its side effect happens once), a task per GPU at once, bad input, and a
reload of a new gpuworker.so mid-task: the task runs on and is reported done once."""
import json
import os
import shutil
import subprocess
import time

from harness import PLUGINS, Agent, Control, Skip, install_plugin, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "sysroots", "gpupool12")
NOBODY = 65534

SCRIPTS = {
    # appends one line to a file in its cwd: the side effect counted by the idempotence test
    "mark.sh": "echo run >> \"$PWD/marks\"\nid -u\necho \"gpu=$GPU_ID task=$TASK_ID home=$HOME\"\n",
    "exit3.sh": "echo failing >&2\nexit 3\n",
    "sleep.sh": "sleep \"$1\"\necho slept\n",
    # a grandchild leaves the process group (setsid) and sleeps; its pid goes to a file
    "escape.sh": "setsid sleep 300 </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\nsleep 300\n",
    "flood.sh": "head -c 10000000 /dev/zero | tr '\\0' x\n",
}


def need_root():
    if os.geteuid() != 0:
        raise Skip("tasks run as the unprivileged user nobody: agentd must run as root to switch to it")


def start(tmp, agents, extra="", user="nobody", rescan="1s", plugin_dirs=None):
    need_root()
    root = os.path.join(tmp, "root")
    shutil.copytree(FIXTURE, root, symlinks=True)
    bindir = os.path.join(tmp, "bin")
    os.mkdir(bindir)
    for name, text in SCRIPTS.items():
        p = os.path.join(bindir, name)
        with open(p, "w") as f:
            f.write("#!/bin/sh\n" + text)
        os.chmod(p, 0o755)
    tasks = os.path.join(tmp, "tasks")
    plugins = ("  gpuworker:\n    config:\n      task_root: %s\n      user: %s\n"
               "      heartbeat_interval: 1s\n      metrics_interval: 1s\n      rescan_interval: %s\n"
               "      env: {HSA_OVERRIDE_GFX_VERSION: \"8.0.3\"}\n%s") % (tasks, user, rescan, extra)
    a = Agent(tmp, plugins, agent_extra="  sysroot: %s\n" % root, plugin_dirs=plugin_dirs)
    agents.append(a)
    a.start()
    return a, bindir, tasks


def subscribe(a, pattern):
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": pattern})
    ev = c.read()["event"]
    assert ev["subscribed"] is True, ev
    return c


_seen = {}  # (connection, task_id) -> [(subject, payload)] read while waiting for another task


def wait_result(c, task_id, subjects=("gpu.task.done", "gpu.task.err"), timeout=30):
    """The next message on one of subjects for task_id; messages of other tasks are kept
    for their own wait (tasks on several GPUs finish in any order)."""
    c.s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = _seen.setdefault((id(c), task_id), [])
        for i, (subj, p) in enumerate(q):
            if subj in subjects:
                del q[: i + 1]
                return subj, p
        ev = c.read()["event"]
        tid = ev.get("payload", {}).get("task_id") if isinstance(ev.get("payload"), dict) else None
        _seen.setdefault((id(c), tid), []).append((ev.get("subject"), ev.get("payload")))
    raise AssertionError("no %s for %s" % (subjects, task_id))


def run(a, gpu, task):
    a.ok("bus", "pub", "gpu.task.run.%s" % gpu, json.dumps(task))


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cgroup_writable():
    with open("/proc/self/mountinfo") as f:
        mnt = next((l.split()[4] for l in f if " - cgroup2 " in l), None)
    with open("/proc/self/cgroup") as f:
        path = next((l.strip()[3:] for l in f if l.startswith("0::")), None)
    if not mnt or path is None:
        return False
    return os.access(mnt + ("" if path == "/" else path), os.W_OK)


def test_telemetry(tmp, agents):
    a, _, _ = start(tmp, agents)
    st = a.ok("gpuworker", "status")
    assert len(st["gpus"]) == 13, st
    cards = [g["card"] for g in st["gpus"][:12]]
    assert "card10" in cards and "card11" in cards, cards
    assert st["gpus"][12]["state"] == "passthrough" and st["gpus"][12]["pci"] == "0000:0f:00.0", st["gpus"][12]
    assert st["gpus"][5]["metrics"]["suspended"] is True and st["gpus"][5]["metrics"]["temp_c"] is None
    c = subscribe(a, "gpu.worker.>")
    seen, hb = {}, None
    c.s.settimeout(10)
    while len(seen) < 12 or hb is None:
        ev = c.read()["event"]
        if ev["subject"] == "gpu.worker.metrics":
            seen[ev["payload"]["gpu"]] = ev["payload"]
        elif ev["subject"] == "gpu.worker.heartbeat":
            hb = ev["payload"]
    c.close()
    assert seen[2]["card"] == "card10" and seen[2]["temp_c"] == 42.5 and seen[2]["power_w"] == 52.25, seen[2]
    assert seen[0]["vram_total"] == 8589934592 and seen[0]["pci"] == "0000:03:00.0", seen[0]
    assert 12 not in seen  # the vfio card has no sensors to read here
    assert [g["state"] for g in hb["gpus"]].count("idle") == 12, hb
    text = a.ok("metrics", as_json=False)
    assert 'gpuworker_temp_celsius{gpu="2",pci="0000:05:00.0"' in text, text[:2000]


def test_tasks(tmp, agents):
    a, bindir, tasks = start(tmp, agents)
    c = subscribe(a, "gpu.task.>")
    # done: stdout captured, run as nobody, in <task_root>/gpu0/<id>, with the task env
    run(a, 0, {"task_id": "m1", "attempt": 1, "cmd": ["/bin/sh", bindir + "/mark.sh"]})
    subj, p = wait_result(c, "m1")
    assert subj == "gpu.task.done", p
    out = p["stdout"].splitlines()
    assert out[0] == str(NOBODY), p
    assert out[1] == "gpu=0 task=m1 home=%s/gpu0/m1" % tasks, p
    assert p["returncode"] == 0 and p["gpu"] == 0 and p["pci"] == "0000:03:00.0" and p["attempt"] == 1, p
    st = os.stat(os.path.join(tasks, "gpu0", "m1"))
    assert st.st_uid == NOBODY and (st.st_mode & 0o777) == 0o750, st
    # delivered again: answered from the store, the side effect happened once
    run(a, 0, {"task_id": "m1", "attempt": 2, "cmd": ["/bin/sh", bindir + "/mark.sh"]})
    subj, p = wait_result(c, "m1")
    assert subj == "gpu.task.done" and p.get("replayed") is True, p
    with open(os.path.join(tasks, "gpu0", "m1", "marks")) as f:
        assert f.read() == "run\n"
    # non-zero exit: err with the returncode and stderr, never done
    run(a, 1, {"task_id": "e1", "cmd": ["/bin/sh", bindir + "/exit3.sh"]})
    subj, p = wait_result(c, "e1")
    assert subj == "gpu.task.err" and p["returncode"] == 3 and p["error"] == "exit status 3", p
    assert p["stderr"] == "failing\n", p
    # shell refused (allow_shell is false)
    run(a, 1, {"task_id": "sh1", "type": "shell", "shell": "id"})
    subj, p = wait_result(c, "sh1")
    assert subj == "gpu.task.err" and "allow_shell" in p["error"], p
    # a busy GPU refuses a second task; a task per GPU runs at once
    run(a, 2, {"task_id": "long", "cmd": ["/bin/sh", bindir + "/sleep.sh", "3"]})
    subj, p = wait_result(c, "long", subjects=("gpu.task.running",))
    run(a, 2, {"task_id": "second", "cmd": ["/bin/sh", bindir + "/sleep.sh", "0"]})
    subj, p = wait_result(c, "second")
    assert subj == "gpu.task.err" and p["error"] == "busy" and p["running"] == "long", p
    t0 = time.monotonic()
    for g in (3, 4, 6, 7):
        run(a, g, {"task_id": "par%d" % g, "cmd": ["/bin/sh", bindir + "/sleep.sh", "2"]})
    for g in (3, 4, 6, 7):
        subj, p = wait_result(c, "par%d" % g)
        assert subj == "gpu.task.done" and p["stdout"] == "slept\n", p
    took = time.monotonic() - t0
    assert took < 7, "four 2 s tasks on four GPUs took %.1f s: not concurrent" % took
    subj, p = wait_result(c, "long")
    assert subj == "gpu.task.done", p
    recent = a.ok("gpuworker", "tasks", "20")["tasks"]
    assert {"m1", "e1", "long", "par3"} <= {t["task_id"] for t in recent}, recent
    c.close()


def test_reload_mid_task_reports_once(tmp, agents):
    """An operator drops in a new gpuworker.so (a new file, renamed over the old) and
    reloads while a task runs: the same process goes on, the new build adopts it and
    reports it done once, with its output; the old build reports nothing."""
    pdir = os.path.join(tmp, "plugins")
    so = os.path.join(PLUGINS, "gpuworker.so")
    install_plugin(so, pdir, "gpuworker.so")
    a, bindir, _ = start(tmp, agents, plugin_dirs=[pdir])
    c = subscribe(a, "gpu.task.>")
    run(a, 2, {"task_id": "rl", "cmd": ["/bin/sh", bindir + "/sleep.sh", "3"]})
    subj, p = wait_result(c, "rl", subjects=("gpu.task.running",))
    pid = p["pid"]
    install_plugin(so, pdir, "gpuworker.so")
    r = a.ok("plugin", "reload", "gpuworker")
    assert r["generation"] == 2, r
    execs = a.ok("plugin", "info", "gpuworker")["execs"]
    assert [(x["pid"], x["generation"]) for x in execs] == [(pid, 1)], execs
    g = a.ok("gpuworker", "status")["gpus"][2]
    assert g["state"] == "busy" and g["task"]["task_id"] == "rl", g
    subj, p = wait_result(c, "rl")
    assert subj == "gpu.task.done" and p["stdout"] == "slept\n" and p["returncode"] == 0, p
    # a later task's result is the fence: nothing more came for rl before it
    run(a, 3, {"task_id": "fence", "cmd": ["/bin/sh", bindir + "/sleep.sh", "0"]})
    subj, _ = wait_result(c, "fence")
    assert subj == "gpu.task.done"
    late = [s for s, _ in _seen.get((id(c), "rl"), []) if s in ("gpu.task.done", "gpu.task.err")]
    assert late == [], late
    row = [t for t in a.ok("gpuworker", "tasks", "5")["tasks"] if t["task_id"] == "rl"]
    assert len(row) == 1 and row[0]["state"] == "done", row
    assert a.ok("gpuworker", "status")["gpus"][2]["state"] == "idle"
    assert "not adopted" not in a.logtext() and "taken over" in a.logtext()
    c.close()


def escape_test(tmp, agents, how, extra=""):
    a, bindir, tasks = start(tmp, agents, extra)
    c = subscribe(a, "gpu.task.>")
    pidfile = os.path.join(tmp, "grandchild.pid")
    open(pidfile, "w").close()
    os.chmod(pidfile, 0o666)
    task = {"task_id": "esc", "cmd": ["/bin/sh", bindir + "/escape.sh", pidfile]}
    if how == "timeout":
        task["timeout"] = 2
    run(a, 1, task)
    subj, p = wait_result(c, "esc", subjects=("gpu.task.running",))
    assert p["pid"] > 0, p
    in_cgroup = p["cgroup"]
    wait_for(lambda: open(pidfile).read().strip() != "", what="the grandchild's pid")
    grandchild = int(open(pidfile).read())
    assert alive(grandchild)
    if how == "cancel":
        a.ok("bus", "pub", "gpu.task.cancel.1", json.dumps({"task_id": "esc"}))
    subj, p = wait_result(c, "esc")
    assert subj == "gpu.task.err", p
    assert ("timeout" in p["error"]) if how == "timeout" else (p["error"] == "cancelled"), p
    if in_cgroup:
        wait_for(lambda: not alive(grandchild), timeout=5, what="the setsid grandchild killed with the cgroup")
    else:
        print("# cgroup v2 not writable here (%s): process-group fallback; the setsid grandchild survives it"
              % ("no delegation" if not cgroup_writable() else "cgroup refused"))
        os.kill(grandchild, 9)
    assert a.ok("gpuworker", "status")["gpus"][1]["state"] == "idle"
    c.close()


def test_timeout_kills_everything(tmp, agents):
    escape_test(tmp, agents, "timeout")


def test_cancel_kills_everything(tmp, agents):
    escape_test(tmp, agents, "cancel")


def test_process_group_alone_misses_setsid(tmp, agents):
    """The control: with cgroup: false only the process group dies, and the grandchild
    that called setsid survives the time-out (what the cgroup is for)."""
    a, bindir, _ = start(tmp, agents, "      cgroup: false\n")
    c = subscribe(a, "gpu.task.>")
    pidfile = os.path.join(tmp, "grandchild.pid")
    open(pidfile, "w").close()
    os.chmod(pidfile, 0o666)
    run(a, 0, {"task_id": "pg", "timeout": 1, "cmd": ["/bin/sh", bindir + "/escape.sh", pidfile]})
    subj, p = wait_result(c, "pg", subjects=("gpu.task.running",))
    assert p["cgroup"] is False, p
    subj, p = wait_result(c, "pg")
    assert subj == "gpu.task.err" and "timeout" in p["error"], p
    grandchild = int(open(pidfile).read())
    try:
        assert alive(grandchild), "the setsid grandchild died without a cgroup: the control proves nothing"
    finally:
        os.kill(grandchild, 9)
    c.close()


def test_output_capped(tmp, agents):
    a, bindir, _ = start(tmp, agents)
    c = subscribe(a, "gpu.task.>")
    before = rss_kb(a.proc.pid)
    run(a, 0, {"task_id": "flood", "cmd": ["/bin/sh", bindir + "/flood.sh"]})
    subj, p = wait_result(c, "flood", timeout=60)
    assert subj == "gpu.task.done", {k: v for k, v in p.items() if k != "stdout"}
    assert len(p["stdout"]) == 64000 and p["stdout_truncated"] is True and set(p["stdout"]) == {"x"}
    grown = rss_kb(a.proc.pid) - before
    print("# agentd RSS grew by %d kB for 10 MB of output" % grown)
    assert grown < 5000, grown
    c.close()


def test_bad_input(tmp, agents):
    a, bindir, tasks = start(tmp, agents)
    c = subscribe(a, "gpu.task.err")
    c.s.settimeout(10)
    bad = [
        ("0", "{not json", "malformed JSON"),
        ("0", json.dumps({"cmd": ["/bin/true"]}), "task_id is missing"),
        ("0", json.dumps({"task_id": "../../etc/x", "cmd": ["/bin/true"]}), "task_id must match"),
        ("42", json.dumps({"task_id": "u1", "cmd": ["/bin/true"]}), "unknown gpu"),
        ("0", json.dumps({"task_id": "c1", "cmd": ["/bin/true"], "cwd": "/etc"}), "outside task_root"),
        ("0", json.dumps({"task_id": "c2", "cmd": ["/bin/true"], "cwd": tasks + "/../x"}), "'..'"),
        ("12", json.dumps({"task_id": "v1", "cmd": ["/bin/true"]}), "vfio-pci"),
        ("0", json.dumps({"task_id": "big", "cmd": ["/bin/true"], "pad": "x" * 300000}), "larger than"),
    ]
    pub = Control(a.sock)  # raw bytes: agentctl itself refuses malformed JSON
    for gpu, payload, why in bad:
        pub.send("bus.pub", {"subject": "gpu.task.run.%s" % gpu, "data": payload})
        assert pub.read().get("ok") is not False
        ev = c.read()["event"]
        assert why in ev["payload"]["error"], (payload[:80], ev)
    assert not os.path.exists("/etc/x")
    assert a.instance("gpuworker")["state"] == "running"
    assert "refused" in a.logtext()
    pub.close()
    c.close()


def test_user_groups_and_cancel_verb(tmp, agents):
    """A task user of its own, in the video group (as organism-task is in render and
    video for /dev/dri): the task runs with that uid, its primary gid and video; the
    cancel verb of agentctl kills a running task."""
    import grp
    import pwd
    need_root()
    user = "orgtest-gpuw"
    if subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0:
        r = subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "-G", "video",
                            user], capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip("cannot create the test user %s: %s" % (user, r.stderr.strip()))
    try:
        pw = pwd.getpwnam(user)
        video = grp.getgrnam("video").gr_gid
        a, bindir, tasks = start(tmp, agents, user=user)
        c = subscribe(a, "gpu.task.>")
        run(a, 0, {"task_id": "ids", "cmd": ["/usr/bin/id"]})
        subj, p = wait_result(c, "ids")
        assert subj == "gpu.task.done", p
        out = p["stdout"]
        assert "uid=%d(" % pw.pw_uid in out and "gid=%d(" % pw.pw_gid in out, out
        assert ("%d(video)" % video) in out.split("groups=", 1)[1], out
        assert "0(root)" not in out, out
        run(a, 1, {"task_id": "slow", "cmd": ["/bin/sh", bindir + "/sleep.sh", "300"]})
        wait_result(c, "slow", subjects=("gpu.task.running",))
        assert a.ok("gpuworker", "cancel", "slow") == {"task_id": "slow", "cancelled": True}
        subj, p = wait_result(c, "slow")
        assert subj == "gpu.task.err" and p["error"] == "cancelled", p
        rc, _, err = a.ctl("gpuworker", "cancel", "slow")
        assert rc != 0 and "not running" in err, err
        c.close()
        a.stop()
    finally:
        subprocess.run(["userdel", user], capture_output=True)


def test_uevent_gone(tmp, agents):
    """A card that leaves (its sysfs directory removed, then the kernel's uevent) is
    noticed through the uevent socket well before rescan_interval (1 h here): its GPU is
    gone and its running task fails with "gpu gone". The uevent is sent by this test
    (root may send to the kernel's multicast group), as the kernel would."""
    import socket
    a, bindir, _ = start(tmp, agents, rescan="1h")
    st = a.ok("gpuworker", "status")
    if st.get("uevents") is None:
        raise Skip("no uevent socket for agentd here (see its log)")
    c = subscribe(a, "gpu.task.>")
    run(a, 4, {"task_id": "doomed", "cmd": ["/bin/sh", bindir + "/sleep.sh", "300"]})
    wait_result(c, "doomed", subjects=("gpu.task.running",))
    shutil.rmtree(os.path.join(tmp, "root", "sys", "bus", "pci", "devices", "0000:07:00.0"))
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
    s.bind((0, 0))
    try:
        # an unrelated event first: no re-scan for it
        s.sendto(b"add@/devices/virtual/net/x\0ACTION=add\0SUBSYSTEM=net\0", (0, 1))
        wait_for(lambda: a.ok("gpuworker", "status")["uevents"] >= 1, timeout=5, what="the uevent received")
        assert a.ok("gpuworker", "status")["uevent_rescans"] == 0
        t0 = time.monotonic()
        s.sendto(b"remove@/devices/pci0000:00/0000:00:03.1/0000:07:00.0\0ACTION=remove\0"
                 b"DEVPATH=/devices/pci0000:00/0000:00:03.1/0000:07:00.0\0SUBSYSTEM=pci\0", (0, 1))
    except PermissionError as e:
        raise Skip("cannot send a uevent here: %s" % e)
    finally:
        s.close()
    subj, p = wait_result(c, "doomed", timeout=10)
    took = time.monotonic() - t0
    assert subj == "gpu.task.err" and p["error"] == "gpu gone", p
    assert took < 3, took
    st = a.ok("gpuworker", "status")
    assert st["gpus"][4]["state"] == "gone" and st["uevent_rescans"] == 1, st["gpus"][4]
    print("# gone noticed %.0f ms after the uevent" % (took * 1e3))
    c.close()


def test_libdrm(tmp, agents):
    if not os.path.isdir("/dev/dri"):
        raise Skip("no /dev/dri on this machine: the libdrm path (drmGetDevices2) needs a real GPU")
    need_root()
    a = Agent(tmp, "  gpuworker:\n    config:\n      task_root: %s\n      user: nobody\n" % os.path.join(tmp, "t"))
    agents.append(a)
    a.start()
    st = a.ok("gpuworker", "status")
    assert st["discovery"] == "sysfs + libdrm" or "libdrm" in st["discovery"], st


if __name__ == "__main__":
    run_tests(globals())
