#!/usr/bin/env python3
"""bench_agent.py — figures of a real agentd (never pass/fail):
control round trip, plugin reload time, idle resident memory, threads and wake-ups
per second with the example plugin, and the cost of one example tick."""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Agent, Control, install_plugin, plugin_file  # noqa: E402


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


def main():
    tmp = tempfile.mkdtemp(prefix="organism-bench-")
    try:
        pdir = os.path.join(tmp, "plugins")
        install_plugin(plugin_file(), pdir)
        a = Agent(tmp, "  ex:\n    plugin: example\n    interval: 5s\n", plugin_dirs=[pdir])
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
