#!/usr/bin/env python3
"""bench_agent.py — figures of a real agentd (never pass/fail):
control round trip, plugin reload time, idle resident memory, threads and wake-ups
per second with the example plugin, the cost of one example tick, and resident memory
(RSS and PSS) side by side with collectd (nine plugins at 5 s) in the same run."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Agent, Control, install_plugin, plugin_file, wait_for  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
COLLECTD = "/usr/sbin/collectd"
COLLECTD_PLUGINS = ["cpu", "memory", "load", "interface", "irq", "swap", "vmem", "unixsock", "csv"]


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def switches(pid):
    """Context switches of every thread of pid: each is a wake-up of the process."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        st = proc_status_task(pid, tid)
        total += int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
    return total


def proc_status_task(pid, tid):
    out = {}
    with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rollup(pid):
    """Rss and Pss in kB, from /proc/PID/smaps_rollup."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss", "Private_Dirty"):
                out[k] = int(v.split()[0])
    return out


def start_collectd(tmp):
    conf = os.path.join(tmp, "collectd.conf")
    sock = os.path.join(tmp, "collectd.sock")
    with open(conf, "w") as f:
        f.write('BaseDir "%s"\nPIDFile "%s/collectd.pid"\nPluginDir "/usr/lib/collectd"\n'
                'TypesDB "/usr/share/collectd/types.db"\nInterval 5\n' % (tmp, tmp))
        f.write("".join("LoadPlugin %s\n" % p for p in COLLECTD_PLUGINS))
        f.write('<Plugin unixsock>\n  SocketFile "%s"\n</Plugin>\n' % sock)
        f.write('<Plugin csv>\n  DataDir "%s/csv"\n</Plugin>\n' % tmp)
    p = subprocess.Popen([COLLECTD, "-f", "-C", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, timeout=15, what="collectd's socket")
    except AssertionError:
        p.kill()
        raise
    if p.poll() is not None:
        raise RuntimeError("collectd exited: %s" % p.stderr.read().decode(errors="replace")[-500:])
    return p


def embedded_agent(tmp):
    """Idle agentd with example + memory + circadian on fixture sysroots (host32g, with
    the CPUs of cpufreq4), no bus.nats: the embedded footprint."""
    root = os.path.join(tmp, "root")
    shutil.copytree(os.path.join(FIXTURES, "sysroots", "host32g"), root)
    shutil.copytree(os.path.join(FIXTURES, "sysroots", "cpufreq4", "sys"), os.path.join(root, "sys"),
                    dirs_exist_ok=True)
    qm = os.path.join(tmp, "qm")
    shutil.copy(os.path.join(FIXTURES, "bin", "qm"), qm)
    os.chmod(qm, 0o755)
    plugins = ("  ex: {plugin: example, interval: 5s}\n"
               "  memory: {plugin: memory, interval: 5s, config: {vmid: 100}}\n"
               "  circadian:\n    config:\n      phases: {day: \"07:00\", night: \"22:00\"}\n"
               "      actions: {day: {governor: performance}, night: {governor: powersave}}\n")
    d = os.path.join(tmp, "agent")
    os.makedirs(d)
    return Agent(d, plugins, agent_extra="  sysroot: %s\n  commands: {qm: %s}\n" % (root, qm))


def side_by_side_with_collectd():
    if not os.access(COLLECTD, os.X_OK):
        print("side by side with collectd: skipped (no %s; Debian package collectd-core)" % COLLECTD)
        return
    tmp = tempfile.mkdtemp(prefix="organism-bench-collectd-")
    c = a = None
    try:
        c = start_collectd(tmp)
        a = embedded_agent(tmp)
        a.start()
        states = {i["name"]: i["state"] for i in a.ok("plugin", "list")}
        time.sleep(11)  # idle: two intervals of both, so each has read everything at least twice
        figs = {"collectd": rollup(c.pid), "agentd": rollup(a.proc.pid)}
        for name, f in figs.items():
            print("idle %-8s %s: RSS %5d kB, PSS %5d kB, private dirty %5d kB" % (
                name, "(%s)" % (", ".join(COLLECTD_PLUGINS) if name == "collectd" else
                                "example + memory + circadian, no bus.nats: %s" % states),
                f["Rss"], f["Pss"], f["Private_Dirty"]))
        print("agentd / collectd: RSS %.2fx, PSS %.2fx" % (figs["agentd"]["Rss"] / figs["collectd"]["Rss"],
                                                        figs["agentd"]["Pss"] / figs["collectd"]["Pss"]))
    finally:
        if a:
            a.stop()
        if c:
            c.terminate()
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    side_by_side_with_collectd()
    tmp = tempfile.mkdtemp(prefix="organism-bench-")
    try:
        pdir = os.path.join(tmp, "plugins")
        install_plugin(plugin_file(), pdir)
        a = Agent(tmp, "  ex:\n    plugin: example\n    interval: 5s\n", plugin_dirs=[pdir],
                  agent_extra="  commands: {sh: /bin/sh}\n")
        a.start()
        try:
            c = Control(a.sock)
            n = 5000
            t0 = time.perf_counter()
            for i in range(n):
                c.send("verbs", id=i)
                c.read()
            dt = time.perf_counter() - t0
            print("control round trip (one connection, sequential): %.1f us/request, %.0f requests/s" % (
                dt / n * 1e6, n / dt))
            t0 = time.perf_counter()
            for i in range(n):
                c.send("call", {"instance": "ex", "verb": "count"}, id=i)
                c.read()
            dt = time.perf_counter() - t0
            print("plugin verb round trip (control -> bus request -> plugin -> reply): %.1f us/call" % (dt / n * 1e6))
            m = 200
            t0 = time.perf_counter()
            for i in range(m):
                Control(a.sock).close()
            dt = time.perf_counter() - t0
            print("control connect + hello: %.1f us" % (dt / m * 1e6))

            reload_us = []
            variants = [plugin_file("v2"), plugin_file()]
            for i in range(50):
                install_plugin(variants[i % 2], pdir)
                c.send("plugin.reload", {"name": "ex"}, id=i)
                r = c.read()
                reload_us.append(r["result"]["reload_us"])
            reload_us.sort()
            print("plugin reload (dlopen + init + state handover + fini): median %d us, p90 %d us, max %d us" % (
                reload_us[len(reload_us) // 2], reload_us[int(len(reload_us) * 0.9)], reload_us[-1]))
            # the same with a command running through every reload (adopted each time)
            c.send("call", {"instance": "ex", "verb": "sleep_echo", "args": {"seconds": 60, "text": "bench"}}, id=0)
            r = c.read()
            reload_us = []
            for i in range(50):
                install_plugin(variants[i % 2], pdir)
                c.send("plugin.reload", {"name": "ex"}, id=i)
                reload_us.append(c.read()["result"]["reload_us"])
            reload_us.sort()
            running = len(a.ok("plugin", "info", "ex")["execs"])
            print("plugin reload with %d running command(s) handed over: median %d us, p90 %d us, max %d us" % (
                running, reload_us[len(reload_us) // 2], reload_us[int(len(reload_us) * 0.9)], reload_us[-1]))
            c.close()

            # idle: let the start-up settle, then watch for 10 s
            pid = a.proc.pid
            time.sleep(1)
            s0 = switches(pid)
            time.sleep(10)
            s1 = switches(pid)
            st = proc_status(pid)
            print("idle agentd, 1 example instance (5 s interval): VmRSS %s, VmHWM %s, threads %s, %.2f wake-ups/s" % (
                st["VmRSS"], st["VmHWM"], st["Threads"], (s1 - s0) / 10.0))
            info = a.ok("plugin", "info", "ex")
            print("example tick: last %d us, max %d us" % (info["tick_us_last"], info["tick_us_max"]))
        finally:
            a.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
