#!/usr/bin/env python3
"""Benchmark of the gpucache plugin in the real agentd, with real tmpfs and overlay
mounts in a private mount namespace (root; skipped otherwise). Prints figures, never
pass/fail:

- a 500 MB layer of 10 000 files: the first sync (a full copy into an empty persist
  directory), then a sync with 1 % of the files changed, and their ratio (goal >= 20x);
  `cp -a` of the same upper for reference;
- control round trip (`status` over the socket) idle, during a full sync and during a
  prewarm: median, p99, max;
- prewarm MB/s over a lower layer of files whose page cache was dropped
  (posix_fadvise DONTNEED per file, nothing system-wide).

GPUCACHE_BENCH_MB and GPUCACHE_BENCH_FILES shrink it (defaults 500 and 10000)."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

from harness import BUILD, Agent, Control, wait_for  # noqa: E402

MB = int(os.environ.get("GPUCACHE_BENCH_MB", "500"))
FILES = int(os.environ.get("GPUCACHE_BENCH_FILES", "10000"))


def reexec():
    if os.environ.get("GPUCACHE_BENCH_NS") == "1":
        return
    if os.geteuid() != 0:
        print("SKIP: gpucache mounts tmpfs and overlay: needs root")
        sys.exit(77)
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            print("SKIP: overlayfs is not available")
            sys.exit(77)
    os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", sys.executable] + sys.argv,
               dict(os.environ, GPUCACHE_BENCH_NS="1"))


def fstype(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


def rtts(sock, stop, out):
    c = Control(sock)
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        c.send("call", {"instance": "cache", "verb": "status"}, id=i)
        while True:
            m = c.read()
            if m.get("id") == i and ("result" in m or "error" in m or m.get("end")):
                break
        out.append((time.perf_counter() - t0) * 1000)
        i += 1
        time.sleep(0.005)
    c.close()


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] if v else 0.0


def show(what, v):
    print("%-34s n=%5d  median %6.2f ms  p99 %6.2f ms  max %6.2f ms" % (
        what, len(v), statistics.median(v) if v else 0, pct(v, 0.99), max(v) if v else 0))


def during(a, fn):
    """Round trips measured while fn() runs (fn waits for its own completion)."""
    stop = threading.Event()
    out = []
    t = threading.Thread(target=rtts, args=(a.sock, stop, out))
    t.start()
    try:
        r = fn()
    finally:
        stop.set()
        t.join()
    return r, out


def main():
    reexec()
    tmp = tempfile.mkdtemp(prefix="organism-bench-gpucache-")
    os.chmod(tmp, 0o755)
    disk = tmp if fstype(tmp) not in ("tmpfs", "ramfs") else tempfile.mkdtemp(dir=BUILD)
    lower, persist = os.path.join(disk, "lower"), os.path.join(disk, "persist")
    ram, merged = os.path.join(tmp, "ram"), os.path.join(tmp, "merged")
    os.makedirs(lower)
    per = MB * 1024 * 1024 // FILES
    # prewarm reads the lower layer through merged: a tenth of the data there
    for i in range(FILES // 10):
        with open(os.path.join(lower, "l%05d" % i), "wb") as f:
            f.write(os.urandom(per))
    plugins = ("  cache:\n    plugin: gpucache\n    config:\n      gpus: []\n      sync_interval: 1h\n"
               "      prewarm_on_start: false\n      prewarm_parallel: 4\n      layers:\n"
               "        bench: {size: %dMiB, lower: %s, persist: %s, ram: %s, merged: %s}\n") % (
        MB + MB // 2 + 64, lower, persist, ram, merged)
    a = Agent(tmp, plugins)
    try:
        a.start()
        wait_for(lambda: a.ok("cache", "status")["layers"][0]["state"] == "mounted", 30, "mounted")
        t0 = time.monotonic()
        for i in range(FILES):
            d = os.path.join(merged, "d%03d" % (i % 100))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "f%05d" % i), "wb") as f:
                f.write(os.urandom(per))
        print("layer: %d files, %d MB written into the merged view in %.1f s" % (FILES, MB, time.monotonic() - t0))

        def sync():
            r = a.ok("cache", "sync", "bench", timeout=600)
            return r["results"][0]

        idle = []
        stop = threading.Event()
        th = threading.Thread(target=rtts, args=(a.sock, stop, idle))
        th.start()
        time.sleep(1.0)
        stop.set()
        th.join()
        full, during_sync = during(a, sync)
        print("full sync (first generation): %d files, %.1f MB in %d ms (%.0f MB/s)" % (
            full["files"], full["bytes"] / 1e6, full["duration_ms"], full["bytes"] / 1e3 / max(1, full["duration_ms"])))
        changed = FILES // 100
        for k in range(3):
            for i in range(k, FILES, FILES // changed):
                with open(os.path.join(merged, "d%03d" % (i % 100), "f%05d" % i), "r+b") as f:
                    f.write(os.urandom(64))
            inc = sync()
            print("sync %d with 1 %% changed: %d files copied (%.1f MB), %d kept or linked, in %d ms" % (
                k + 2, inc["files"], inc["bytes"] / 1e6, inc["linked"], inc["duration_ms"]))
        print("ratio full / incremental: time %.1fx, bytes %.0fx (goal >= 20x)" % (
            full["duration_ms"] / max(1, inc["duration_ms"]), full["bytes"] / max(1, inc["bytes"])))
        t0 = time.monotonic()
        dst = os.path.join(disk, "cp-a")
        subprocess.run(["cp", "-a", os.path.join(ram, "upper"), dst], check=True)
        subprocess.run(["sync", "-f", dst], check=True)
        print("reference: cp -a of the upper + sync -f: %.0f ms" % ((time.monotonic() - t0) * 1000))
        shutil.rmtree(dst)

        for n in os.listdir(lower):
            fd = os.open(os.path.join(lower, n), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

        def prewarm():
            return a.ok("cache", "prewarm", "bench", timeout=600)["results"][0]

        pw, during_pw = during(a, prewarm)
        print("prewarm: %d files, %.1f MB in %d ms (%.0f MB/s, 4 readers, page cache of the lower dropped first)" % (
            pw["files"], pw["bytes"] / 1e6, pw["duration_ms"], pw["bytes"] / 1e3 / max(1, pw["duration_ms"])))
        show("control round trip, idle", idle)
        show("control round trip, full sync", during_sync)
        show("control round trip, prewarm", during_pw)
    finally:
        a.stop(timeout=120)
        for p in (merged, ram):
            subprocess.run(["umount", p], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)


if __name__ == "__main__":
    main()
