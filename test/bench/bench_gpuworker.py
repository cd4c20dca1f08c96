#!/usr/bin/env python3
"""bench_gpuworker.py — figures of the gpuworker plugin in a real agentd on the gpupool12
fixture (never pass/fail): task start latency (the run message published → the
`running` event seen by a bus subscriber, so it includes two bus hops and the fork/exec
as the user nobody in a fresh cgroup) and tasks per second through one GPU with
/bin/true, each task sent when the previous one's `done` arrived. Needs root (the tasks
switch to nobody); prints why and exits 77 otherwise."""
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Agent, Control  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "sysroots", "gpupool12")


def main():
    if os.geteuid() != 0:
        print("SKIP: tasks run as nobody: agentd must run as root")
        sys.exit(77)
    tmp = tempfile.mkdtemp(prefix="organism-bench-gpuworker-")
    os.chmod(tmp, 0o755)
    root = os.path.join(tmp, "root")
    shutil.copytree(FIXTURE, root, symlinks=True)
    a = Agent(tmp, "  gpuworker:\n    config:\n      task_root: %s\n      user: nobody\n      cgroup: %s\n" % (os.path.join(tmp, "t"), os.environ.get("BENCH_CGROUP", "true")),
              agent_extra="  sysroot: %s\n" % root)
    try:
        a.start()
        sub = Control(a.sock)
        sub.send("bus.sub", {"pattern": "gpu.task.>"})
        assert sub.read()["event"]["subscribed"] is True
        pub = Control(a.sock)
        lat, n = [], 300
        t_all = time.monotonic()
        for i in range(n):
            tid = "b%d" % i
            t0 = time.monotonic()
            pub.send("bus.pub", {"subject": "gpu.task.run.0",
                                 "data": json.dumps({"task_id": tid, "cmd": ["/bin/true"]})})
            pub.read()
            while True:
                ev = sub.read()["event"]
                if ev["payload"].get("task_id") != tid:
                    continue
                if ev["subject"] == "gpu.task.running":
                    lat.append(time.monotonic() - t0)
                elif ev["subject"] in ("gpu.task.done", "gpu.task.err"):
                    assert ev["subject"] == "gpu.task.done", ev
                    break
        took = time.monotonic() - t_all
        lat.sort()
        st = a.ok("gpuworker", "status")
        print("gpuworker task start latency (publish -> running seen): median %.2f ms, p99 %.2f ms over %d tasks"
              % (statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99) - 1] * 1e3, n))
        print("gpuworker tasks/s through one GPU (/bin/true, sequential): %.0f" % (n / took))
        print("gpuworker last metrics pass in agentd: %d us" % st["metrics_pass_us"])
        sub.close()
        pub.close()
    finally:
        a.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
