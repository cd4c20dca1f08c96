#!/usr/bin/env python3
"""bench_control.py — figures of the control socket under a flooding peer (never
pass/fail): another client's round trip and the watchdog ping interval, idle and while
one peer pipelines requests as fast as it can, and how many answers the flooder gets."""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from harness import Agent, Control  # noqa: E402
from test_control import Pings  # noqa: E402

PEER = os.path.join(HERE, "..", "e2e", "ctl_peer.py")
WATCHDOG_S = 0.4


def round_trips(sock, seconds):
    c = Control(sock)
    rts = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        r0 = time.perf_counter()
        c.send("status", id=i)
        c.read()
        rts.append(time.perf_counter() - r0)
        i += 1
        time.sleep(0.005)
    c.close()
    rts.sort()
    return rts


def fmt(rts):
    return "p50 %.0f us, p99 %.0f us, max %.0f us (%d requests)" % (
        rts[len(rts) // 2] * 1e6, rts[int(len(rts) * 0.99)] * 1e6, rts[-1] * 1e6, len(rts))


def main():
    tmp = tempfile.mkdtemp(prefix="organism-bench-")
    try:
        a = Agent(tmp, "  ex:\n    plugin: example\n    interval: 1s\n")
        os.environ["WATCHDOG_USEC"] = str(int(WATCHDOG_S * 1e6))
        try:
            a.start()
        finally:
            os.environ.pop("WATCHDOG_USEC", None)
        pings = Pings(os.path.join(tmp, "notify.sock"))
        try:
            t0 = time.monotonic()
            idle = round_trips(a.sock, 3)
            t1 = time.monotonic()
            print("control round trip, idle: " + fmt(idle))
            print("watchdog ping (WatchdogSec %.1f s), idle: max gap %.0f ms" % (WATCHDOG_S, pings.max_gap(t0, t1) * 1e3))

            flood = subprocess.Popen([sys.executable, PEER, "flood", a.sock, "status"], stdout=subprocess.PIPE,
                                     text=True)
            answered = [(time.monotonic(), 0)]
            assert flood.stdout.readline().strip() == "ready"

            def count():
                for line in flood.stdout:
                    if line.startswith("answered"):
                        answered.append((time.monotonic(), int(line.split()[1])))
            threading.Thread(target=count, daemon=True).start()
            try:
                time.sleep(0.3)
                f0 = time.monotonic()
                n0 = answered[-1][1]
                try:
                    busy = fmt(round_trips(a.sock, 3))
                except OSError as e:
                    busy = "no answer within 10 s (%s)" % e
                f1 = time.monotonic()
                n1 = answered[-1][1]
            finally:
                flood.kill()
                flood.wait()
            print("control round trip, one peer flooding: " + busy)
            print("watchdog ping, one peer flooding: max gap %.0f ms" % (pings.max_gap(f0, f1) * 1e3))
            print("the flooding peer meanwhile: %.0f answers/s" % ((n1 - n0) / (f1 - f0)))
        finally:
            pings.close()
            a.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
