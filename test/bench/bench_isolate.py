#!/usr/bin/env python3
"""bench_isolate.py — figures of isolated instances (never pass/fail): messages per
second from an in-process publisher (bench.so `flood`, bursts of 10 000) to a bench.so sink running
in-process and running isolated (`isolate: true`, its own child process), the ratio,
and the resident memory of agentd and of the child."""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import BUILD, Agent, Control, wait_for  # noqa: E402

BENCH_DIR = os.path.join(BUILD, "test", "bench")
N = int(os.environ.get("BENCH_ISOLATE_N", "1000000"))
CHUNK = 10000
SIZE = 64


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(tmp, isolate):
    d = os.path.join(tmp, "iso" if isolate else "inproc")
    os.makedirs(d)
    a = Agent(d, """\
  src:
    plugin: bench
  sink:
    plugin: bench
    queue_max: %d
    isolate: %s
    config: {subscribe: "bench.x"}
""" % (N * 2, "true" if isolate else "false"), plugin_dirs=[os.path.join(BUILD, "plugins"), BENCH_DIR])
    try:
        a.start()
        if isolate:
            wait_for(lambda: a.instance("sink").get("child_state") == "ready", what="the isolated child")
        t0 = time.monotonic()
        # bursts of CHUNK from inside the loop, pipelined on one control connection: a
        # steady stream rather than one hook holding the loop for a million publishes
        c = Control(a.sock)
        for i in range(N // CHUNK):
            c.send("call", {"instance": "src", "verb": "flood",
                            "args": {"subject": "bench.x", "n": CHUNK, "size": SIZE}}, id=i + 1)
        for i in range(N // CHUNK):
            r = c.read()
            assert r.get("ok"), r
        c.close()
        t_pub = time.monotonic() - t0
        wait_for(lambda: a.ok("call", "sink", "count")["received"] >= N, timeout=120, what="every message")
        wall = time.monotonic() - t0
        c = a.ok("call", "sink", "count")
        sink = a.instance("sink")
        fig = {
            "received": c["received"],
            "span_rate": c["received"] / max(c["span_us"], 1) * 1e6,
            # CLOCK_MONOTONIC on both sides: from the flood call to the sink's last message
            "e2e_rate": c["received"] / max(c["last_us"] / 1e6 - t0, 1e-9),
            "wall_rate": N / wall,
            "publish_s": t_pub,
            "agentd_rss_kb": rss_kb(a.proc.pid),
            "child_rss_kb": rss_kb(sink["pid"]) if isolate and sink.get("pid") else 0,
            "dropped": sink["dropped"] + sink.get("isolate_dropped", 0),
        }
        return fig
    finally:
        a.stop()


def main():
    tmp = tempfile.mkdtemp(prefix="organism-bench-isolate-")
    inproc = run(tmp, False)
    iso = run(tmp, True)
    for name, f in (("in-process", inproc), ("isolated", iso)):
        print("%-11s %d msgs of %d B: %.0f msg/s at the sink (first to last), %.0f msg/s from the flood call to "
              "the last message (publish %.2f s), dropped %d, agentd RSS %d KiB%s" % (
                  name, f["received"], SIZE, f["span_rate"], f["e2e_rate"], f["publish_s"], f["dropped"],
                  f["agentd_rss_kb"], ", child RSS %d KiB" % f["child_rss_kb"] if f["child_rss_kb"] else ""))
    print("isolated / in-process: %.2f (sink rate), %.2f (end to end)" % (
        iso["span_rate"] / inproc["span_rate"], iso["e2e_rate"] / inproc["e2e_rate"]))


if __name__ == "__main__":
    main()
