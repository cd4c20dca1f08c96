#!/usr/bin/env python3
"""bench_nats.py — figures of the NATS bridge (never pass/fail), against a nats-server
of its own on loopback (or $NATS_BENCH_URL): raw nats.c publish rate, agentd's export
rate and their ratio, import rate, agent → NATS → agent round trip p50/p99, durable
publish + consume rate. `--export-only`: the first two figures and the ratio."""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import BUILD, Agent, Control, NatsServer, Skip, wait_for  # noqa: E402

TOOL = os.path.join(BUILD, "test", "bench", "nats-tool")
BENCH_DIR = os.path.join(BUILD, "test", "bench")
N = 200000


def agent(tmp, name, url, plugins, export=(), imports=(), streams=""):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    a = Agent(d, plugins, name=name, plugin_dirs=[os.path.join(BUILD, "plugins"), BENCH_DIR])
    a.write_config(plugins, agent_extra="  queue_max: 1000000\n")
    with open(a.config, "a") as f:
        f.write("bus:\n  nats:\n    url: %s\n    export: %s\n    import: %s\n    reconnect_buffer: 64MiB\n%s" % (
            url, json.dumps(list(export)), json.dumps(list(imports)), streams))
    return a


def cpu_seconds(pid):
    """User + system CPU time of every thread of pid so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counter(url, subject, n):
    p = subprocess.Popen([TOOL, "count", url, subject, str(n), "120"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def main():
    tmp = tempfile.mkdtemp(prefix="organism-bench-nats-")
    srv = None
    agents = []
    try:
        url = os.environ.get("NATS_BENCH_URL")
        if not url:
            try:
                srv = NatsServer(tmp).start()
            except Skip as e:
                print("bench-nats skipped: %s" % e)
                return
            url = srv.url

        # raw nats.c publish rate to the local server, with a subscriber draining
        c = counter(url, "raw.x", N)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = json.loads(subprocess.run([TOOL, "pub", url, "raw.x", str(N), "64"], capture_output=True, text=True,
                                      check=True).stdout)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the publisher only: the counter still runs
        raw_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / N
        got = json.loads(c.communicate(timeout=120)[0])
        raw = N / max(r["seconds"], got["first_to_last_s"])
        print("nats.c raw publish, 64-byte messages: %.0f msg/s (%d received), %.2f us CPU/msg" % (
            raw, got["received"], raw_cpu * 1e6))

        a = agent(tmp, "alpha", url, "  b:\n    plugin: bench\n    interval: 1h\n", export=["bench.>"])
        b = agent(tmp, "beta", url, "  b:\n    plugin: bench\n    interval: 1h\n    config: {subscribe: \"imp.>\"}\n"
                  "  ex: {plugin: example, interval: 1h}\n", imports=["imp.>"])
        agents += [a, b]
        a.start()
        b.start()
        wait_for(lambda: a.ok("status")["nats"]["connected"] and b.ok("status")["nats"]["connected"])

        # export: a burst published inside agentd, counted by a plain subscriber
        # (bursts within the exporter's queue bound, one after the other down one control
        # connection, so agentctl's start-up does not sit between them; timed like the
        # raw rate, first to last message at the subscriber)
        c = counter(url, "bench.x", N)
        ctl = Control(a.sock)
        cpu0 = cpu_seconds(a.proc.pid)
        for i in range(N // 20000):
            ctl.send("call", {"instance": "b", "verb": "flood",
                              "args": {"subject": "bench.x", "n": 20000, "size": 64}}, id=i)
            assert ctl.read().get("ok")
        got = json.loads(c.communicate(timeout=120)[0])
        exp_cpu = (cpu_seconds(a.proc.pid) - cpu0) / N
        ctl.close()
        dt = max(got["first_to_last_s"], 1e-9)
        exp = got["received"] / dt
        st = a.ok("status")["nats"]
        print("agentd bridge export: %.0f msg/s (%d received, %d dropped) = %.2f of raw nats.c, "
              "%.2f us CPU/msg (plugin publish + bus + bridge + libnats)" % (
                  exp, got["received"], st["export_dropped"] + st["export_queue_dropped"], exp / raw, exp_cpu * 1e6))
        # the rate ratio swings with whatever else the box runs; the CPU ratio much less
        print("export ratio (agentd bridge / raw nats.c): %.2f by rate, %.2f by CPU per message" % (
            exp / raw, raw_cpu / exp_cpu if exp_cpu > 0 else 0.0))
        if "--export-only" in sys.argv:
            return

        # import: a plain publisher, counted by a plugin inside agentd
        # (in bursts within the import queue bound: beyond it, imports are dropped and counted)
        t0 = time.monotonic()
        for k in range(1, N // 40000 + 1):
            subprocess.run([TOOL, "pub", url, "imp.x", "40000", "64"], capture_output=True, check=True)
            wait_for(lambda: b.ok("b", "count")["received"] >= 40000 * k, timeout=120, what="imports")
        dt = time.monotonic() - t0
        st = b.ok("status")["nats"]
        print("agentd bridge import: %.0f msg/s (%d dropped, %d slow-consumer events)" % (
            N / dt, st["import_dropped"], st["slow_consumers"]))

        # round trip alpha → NATS → beta's instance → NATS → alpha, one at a time
        ctl = Control(a.sock)
        lat = []
        for i in range(2000):
            t0 = time.perf_counter()
            ctl.send("bus.request", {"subject": "organism.ctl.beta.ex.count", "timeout_ms": 5000}, id=i)
            r = ctl.read()
            lat.append(time.perf_counter() - t0)
            assert r.get("ok"), r
        ctl.close()
        base = Control(a.sock)
        loc = []
        for i in range(2000):
            t0 = time.perf_counter()
            base.send("bus.request", {"subject": "organism.ctl.alpha.b.count", "timeout_ms": 5000}, id=i)
            base.read()
            loc.append(time.perf_counter() - t0)
        base.close()
        lat.sort()
        loc.sort()
        print("request round trip agent → NATS → agent → NATS → agent: p50 %.0f us, p99 %.0f us "
              "(the same request to a local instance: p50 %.0f us; the difference is the NATS path)" % (
                  lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6, loc[len(loc) // 2] * 1e6))

        # durable publish + consume through JetStream
        for x in agents:
            x.stop()
        agents.clear()
        streams = "    jetstream:\n      streams:\n        - {name: BENCH, subjects: [\"dur.>\"], retention: workqueue}\n"
        d = agent(tmp, "durable", url, "  b:\n    plugin: bench\n    interval: 1h\n    config: {durable_stream: BENCH}\n",
                  streams=streams)
        agents.append(d)
        d.start()
        wait_for(lambda: d.ok("status")["nats"]["connected"])
        m = 20000
        t0 = time.monotonic()
        d.ok("b", "durable_flood", json.dumps({"subject": "dur.x", "n": m}), timeout=120)
        wait_for(lambda: d.ok("b", "count")["durable_received"] >= m, timeout=300, what="durable messages")
        dt = time.monotonic() - t0
        cnt = d.ok("b", "count")
        print("durable publish (acked by the server) + consume + ack: %.0f msg/s (%d stored, %d failed)" % (
            m / dt, cnt["durable_stored"], cnt["durable_failed"]))
    finally:
        for x in agents:
            try:
                x.stop()
            except Exception as e:
                print("stop:", e)
        if srv:
            srv.stop()


if __name__ == "__main__":
    main()
