#!/usr/bin/env python3
"""bench_zfs.py — figures of the zfs plugin in a real agentd against the stateful fake
zfs/zpool (never pass/fail): one prune of 10 000 snapshots over 100 datasets (keep 10,
so 9 000 go), counted in zfs calls (the goal is one destroy call per dataset, where a
per-snapshot tool such as sanoid runs one `zfs destroy` per snapshot) and wall time;
and the cost of one health pass (zpool list + zpool status, both processes included).
The fake is a Python program that loads and rewrites its JSON state on every call, so
the wall times are the fake's more than the plugin's: the call counts are the figure."""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import Agent  # noqa: E402
import test_zfs  # noqa: E402

DATASETS, PER, KEEP = 100, 100, 10


def main():
    tmp = tempfile.mkdtemp(prefix="organism-bench-zfs-")
    st = test_zfs.base_state()
    now = int(time.time())
    names = ["nvme/organism"] + ["nvme/organism/d%02d" % i for i in range(DATASETS - 1)]
    for n in names:
        st["datasets"][n] = {"type": "filesystem", "props": {}, "creation": now - 400 * 86400}
    for n in names:
        for k in range(PER):
            t = now - (PER - k) * 3600
            st["snapshots"]["%s@organism-bench-%s" % (n, test_zfs.stamp(t))] = {"creation": t, "holds": []}
    fake = test_zfs.Fake(tmp, st)
    jobs = ("      snapshots:\n        - {tag: bench, every: 366d, keep: %d, datasets: [nvme/organism], "
            "recursive: true, exclude: [nvme/organism/bench]}\n" % KEEP)
    cfg = ("  zfs:\n    plugin: zfs\n    config:\n      pools: {fast: nvme, scratch: zr, archive: arch}\n%s"
           "      health_interval: 1h\n      properties_interval: 1h\n      autotrim: false\n"
           "      scrub: {enabled: false}\n      trim: {enabled: false}\n") % jobs
    a = Agent(tmp, cfg, agent_extra=test_zfs.commands(fake))
    try:
        a.start()
        before = len(fake.calls())
        t0 = time.monotonic()
        rep = a.ok("-t", "600", "zfs", "prune", "bench", timeout=620)
        dt = time.monotonic() - t0
        calls = fake.calls()[before:]
        destroys = [c for c in calls if c.startswith("zfs destroy")]
        left = len(fake.load()["snapshots"])
        print("prune: %d snapshots over %d datasets, keep %d: %d destroyed in %.2f s" %
              (DATASETS * PER, DATASETS, KEEP, rep["destroyed"], dt))
        print("prune: %d zfs calls (%d destroy, %d others: the snapshot list and health passes meanwhile); one destroy per snapshot would be %d calls (%.0fx fewer)" %
              (len(calls), len(destroys), len(calls) - len(destroys), rep["destroyed"],
               rep["destroyed"] / max(1, len(destroys))))
        print("prune: %d snapshots left (want %d)" % (left, DATASETS * KEEP))
        # health passes: the plugin's own measure of the last one
        samples = []
        for _ in range(5):
            n = a.ok("zfs", "status")["health_passes"]
            a.ok("zfs", "scrub", "nvme")  # queues a scrub and asks for a fresh pass
            deadline = time.monotonic() + 30
            while a.ok("zfs", "status")["health_passes"] <= n and time.monotonic() < deadline:
                time.sleep(0.02)
            for m in a.ok("metrics"):
                if m["instance"] == "zfs" and m["name"] == "zfs_health_pass_seconds":
                    samples.append(m["value"])
        samples.sort()
        print("health pass (zpool list + zpool status, fake in Python): median %.1f ms, max %.1f ms over %d" %
              (1000 * samples[len(samples) // 2], 1000 * samples[-1], len(samples)))
    finally:
        a.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
