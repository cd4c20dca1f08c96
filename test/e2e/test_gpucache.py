#!/usr/bin/env python3
"""End-to-end tests of the gpucache plugin with real tmpfs and overlay mounts.

The test re-executes itself inside a private mount namespace (`unshare -m
--propagation private`), so agentd's mounts and the test's view of them are the same
and vanish with the namespace. It needs root and overlayfs; otherwise it is skipped
(exit 77) with the reason. Persist directories must sit on a disk filesystem: when the
temporary folder is a tmpfs, they go under the build directory.

Covered: three syncs with creations, modifications and deletions (files, whole
directories, a directory deleted and recreated, hard links, a symlink, xattrs) each
compared with the upper (content, modes, owners, times, xattrs, whiteouts, link
groups); restore into a fresh tmpfs and remount gives the same merged view; kill -9 at
random instants during syncs of a large upper leaves exactly the old or the new
generation, and the next start restores it; requests during a sync coalesce into one
more; stop syncs; a `plugin reload` in the middle of a long sync (a second build, then
the same build) hands the running sync to the new build, which reports it once and
answers its request, without a final sync on the loop (a control round trip during
the reload stays fast); a stop in the middle of a sync still ends in a final sync; a
reload during a restore hands the restore over;
disable is refused while a process has its cwd inside; a full tmpfs
(ENOSPC, alert, a correct next sync); bad input (persist on tmpfs, a missing lower,
sizes above the admission limit, an unknown gpu); GPU layers by PCI address on the
gpupool12 fixture in dry_run."""
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import threading  # noqa: E402

from harness import BUILD, PLUGINS, Agent, Control, Skip, install_plugin, run_tests, wait_for  # noqa: E402

FIXTURE = os.path.join(HERE, "..", "fixtures", "sysroots", "gpupool12")


def reexec_in_namespace():
    if os.environ.get("GPUCACHE_E2E_NS") == "1":
        return
    if os.geteuid() != 0:
        print("SKIP: gpucache mounts tmpfs and overlay: needs root (CI runs as root)")
        sys.exit(77)
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            subprocess.run(["modprobe", "overlay"], capture_output=True)
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            print("SKIP: overlayfs is not available in this kernel")
            sys.exit(77)
    if not shutil.which("unshare"):
        print("SKIP: unshare (util-linux) is not installed")
        sys.exit(77)
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        print("SKIP: cannot make a private mount namespace here (unshare -m: %s)" % probe.stderr.strip())
        sys.exit(77)
    env = dict(os.environ, GPUCACHE_E2E_NS="1")
    os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", sys.executable] + sys.argv, env)


def fstype(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


def disk_dir(tmp, name):
    """A directory on a disk filesystem (persist must not be a tmpfs)."""
    base = tmp if fstype(tmp) not in ("tmpfs", "ramfs") else BUILD
    d = os.path.join(base, "gpucache-" + name + "-" + str(os.getpid()) + "-" + os.path.basename(tmp))
    os.makedirs(d, exist_ok=True)
    return d


class Layer:
    def __init__(self, tmp, name="ramlayer", size="64MiB"):
        self.name = name
        self.size = size
        self.lower = os.path.join(tmp, "lower")
        self.persist_base = disk_dir(tmp, "persist")
        self.persist = os.path.join(self.persist_base, name)
        self.ram = os.path.join(tmp, "ram")
        self.merged = os.path.join(tmp, "merged")
        self.upper = os.path.join(self.ram, "upper")
        os.makedirs(self.lower, exist_ok=True)

    def yaml(self):
        return "        %s: {size: %s, lower: %s, persist: %s, ram: %s, merged: %s}\n" % (
            self.name, self.size, self.lower, self.persist, self.ram, self.merged)

    def current(self):
        return os.path.join(self.persist, "current")

    def unmount(self):
        """What a reboot does to the RAM side."""
        for p in (self.merged, self.ram):
            subprocess.run(["umount", p], capture_output=True)

    def cleanup(self):
        self.unmount()
        shutil.rmtree(self.persist_base, ignore_errors=True)


def config(layers, extra=""):
    return ("  cache:\n    plugin: gpucache\n    config:\n      gpus: []\n      sync_interval: 1h\n"
            "      heartbeat_interval: 200ms\n      prewarm_on_start: false\n%s      layers:\n%s") % (
        extra, "".join(l.yaml() for l in layers))


def start(tmp, agents, layers, extra="", agent_extra=""):
    a = Agent(tmp, config(layers, extra), agent_extra=agent_extra)
    agents.append(a)
    a.start()
    return a


def status(a, name="ramlayer"):
    for l in a.ok("cache", "status")["layers"]:
        if l["layer"] == name:
            return l
    raise AssertionError("no layer " + name)


def wait_mounted(a, name="ramlayer", timeout=30):
    return wait_for(lambda: status(a, name)["state"] == "mounted" and status(a, name), timeout,
                    name + " mounted")


def sync(a, name="ramlayer"):
    r = a.ok("cache", "sync", name, timeout=120)
    assert r["ok"] is True, r
    return r["results"][0]


def snapshot(root, with_times=True):
    """Everything a restore must give back: per path the type, mode, owner, size,
    content hash, device number, symlink target, xattrs (and mtime); plus the groups of
    names sharing an inode."""
    out = {}
    inodes = {}
    root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [""] + dirnames + filenames if dirpath == root else dirnames + filenames:
            p = os.path.join(dirpath, n) if n else dirpath
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            e = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if with_times and not os.path.isdir(p):
                e["mtime"] = st.st_mtime_ns
            try:
                e["xattrs"] = sorted((k, os.getxattr(p, k, follow_symlinks=False)) for k in
                                     os.listxattr(p, follow_symlinks=False))
            except OSError:
                e["xattrs"] = None
            if os.path.islink(p):
                e["target"] = os.readlink(p)
            elif os.path.isfile(p):
                e["size"] = st.st_size
                with open(p, "rb") as f:
                    e["sha"] = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif not os.path.isdir(p):
                e["rdev"] = st.st_rdev
            out[rel] = e
    out["<links>"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


def digest(snap):
    return hashlib.sha256(json.dumps(snap, sort_keys=True, default=repr).encode()).hexdigest()


def diff(a, b):
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)][:8]


def assert_same(a, b, what):
    assert a == b, "%s differ: %s" % (what, diff(a, b))


def write(path, data, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    if mode is not None:
        os.chmod(path, mode)


def subscribe(a, pattern):
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": pattern})
    ev = c.read()["event"]
    assert ev["subscribed"] is True, ev
    return c


def next_event(c, subject_prefix, timeout=20):
    c.s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = c.read()["event"]
        if ev.get("subject", "").startswith(subject_prefix):
            return ev
    raise AssertionError("no " + subject_prefix)


# ---- tests ------------------------------------------------------------------------


def test_three_syncs_and_restore(tmp, agents):
    l = Layer(tmp)
    try:
        write(os.path.join(l.lower, "keep.txt"), "lower keep\n")
        write(os.path.join(l.lower, "gone.txt"), "lower, deleted in sync 1\n")
        write(os.path.join(l.lower, "olddir", "a"), "lower dir a\n")
        write(os.path.join(l.lower, "olddir", "b"), "lower dir b\n")
        write(os.path.join(l.lower, "redo", "lower-only"), "must not come back\n")
        write(os.path.join(l.lower, "models", "m1.bin"), os.urandom(4096))
        a = start(tmp, agents, [l])
        st = wait_mounted(a)
        assert st["adopted"] is False and st["generation"] == 0, st
        m = l.merged
        # sync 1: creations, a whiteout, a hard link, a symlink, an xattr, owners and modes
        write(os.path.join(m, "new", "deep", "f1"), "f1 v1\n", 0o640)
        write(os.path.join(m, "new", "x"), os.urandom(70000), 0o600)
        os.chown(os.path.join(m, "new", "x"), 1234, 5678)
        os.link(os.path.join(m, "new", "deep", "f1"), os.path.join(m, "new", "f1-link"))
        os.symlink("deep/f1", os.path.join(m, "new", "sym"))
        os.setxattr(os.path.join(m, "new", "x"), "user.tag", b"v1")
        os.remove(os.path.join(m, "gone.txt"))
        os.chmod(os.path.join(m, "new"), 0o751)
        r1 = sync(a)
        assert r1["generation"] == 1 and r1["files"] >= 2, r1
        assert_same(snapshot(l.current()), snapshot(l.upper), "sync 1: persisted vs upper")
        wh = os.lstat(os.path.join(l.current(), "gone.txt"))
        assert os.major(wh.st_rdev) == 0 and os.minor(wh.st_rdev) == 0 and (wh.st_mode & 0o170000) == 0o020000

        # sync 2: modifications, a whole lower directory deleted, mode/owner changes
        write(os.path.join(m, "new", "deep", "f1"), "f1 v2, longer\n")
        shutil.rmtree(os.path.join(m, "olddir"))
        os.chmod(os.path.join(m, "new", "x"), 0o644)
        os.setxattr(os.path.join(m, "new", "x"), "user.tag", b"v2")
        write(os.path.join(m, "keep.txt"), "copied up and changed\n")
        r2 = sync(a)
        assert r2["generation"] == 2, r2
        assert_same(snapshot(l.current()), snapshot(l.upper), "sync 2: persisted vs upper")
        # the current generation and the previous one, kept as the next sync's standby
        assert sorted(n for n in os.listdir(l.persist) if not n.startswith("stamp-")) == ["current", "gen-1", "gen-2"], \
            os.listdir(l.persist)

        # sync 3: a lower directory deleted and recreated (opaque), a hard link removed,
        # a file replaced by a directory; the unchanged files are linked, not copied
        shutil.rmtree(os.path.join(m, "redo"))
        write(os.path.join(m, "redo", "fresh"), "recreated\n")
        os.remove(os.path.join(m, "new", "f1-link"))
        os.setxattr(os.path.join(m, "new", "x"), "user.tag", b"v3")  # an xattr-only change
        os.remove(os.path.join(m, "new", "sym"))
        os.mkdir(os.path.join(m, "new", "sym"))
        r3 = sync(a)
        assert r3["generation"] == 3 and r3["linked"] >= 2, r3
        snap = snapshot(l.current())
        assert_same(snap, snapshot(l.upper), "sync 3: persisted vs upper")
        opaque = dict(snap["redo"]["xattrs"] or [])
        assert opaque.get("trusted.overlay.opaque") == b"y", snap["redo"]
        # an unchanged sync copies nothing
        r4 = sync(a)
        assert r4["files"] == 0 and r4["bytes"] == 0, r4

        merged_before = snapshot(m, with_times=False)
        assert "olddir" not in merged_before and "redo/lower-only" not in merged_before
        a.stop()
        # reboot: RAM gone; the next start restores generation 4 and remounts
        l.unmount()
        assert not os.path.exists(os.path.join(l.upper))
        a.start()
        st = wait_mounted(a)
        assert st["adopted"] is False and st["generation"] >= 4, st
        assert_same(snapshot(m, with_times=False), merged_before, "merged view after restore")
        assert "restored generation" in a.logtext()
        # a restart with everything mounted adopts, never restores over it
        write(os.path.join(m, "after-restore"), "newer than any generation\n")
        a.signal(signal.SIGKILL)
        a.proc.wait()
        a.start()
        st = wait_mounted(a)
        assert st["adopted"] is True, st
        with open(os.path.join(m, "after-restore")) as f:
            assert f.read() == "newer than any generation\n"
        # audit shows the mount and the last sync
        au = a.ok("audit")
        inst = [i for i in au["instances"] if i["instance"] == "cache"][0]
        whats = [c["what"] for c in inst["checks"]]
        assert any("overlay at " + m in w for w in whats) and inst["ok"] is True, inst
        sync(a)
        au = a.ok("audit")
        inst = [i for i in au["instances"] if i["instance"] == "cache"][0]
        assert any(c["what"] == "ramlayer last sync" and "generation" in c["have"] for c in inst["checks"]), inst
        # metrics with the documented names
        have = {(x["name"], x["labels"].get("layer")) for x in a.ok("metrics") if x["instance"] == "cache"}
        for name in ("gpucache_used_bytes", "gpucache_size_bytes", "gpucache_used_ratio", "gpucache_inodes_used",
                     "gpucache_last_sync_timestamp_seconds", "gpucache_syncs_total", "gpucache_sync_errors_total",
                     "gpucache_sync_bytes_total"):
            assert (name, "ramlayer") in have, (name, have)
    finally:
        for x in agents:
            x.stop()
        l.cleanup()


def make_large(root, n, seed):
    rnd = random.Random(seed)
    for i in range(n):
        write(os.path.join(root, "d%02d" % (i % 40), "f%05d" % i), rnd.randbytes(rnd.randint(512, 8192)))
    for i in range(4):
        write(os.path.join(root, "big", "b%d" % i), rnd.randbytes(2 << 20))


def test_crash_safety(tmp, agents):
    l = Layer(tmp, size="256MiB")
    try:
        a = start(tmp, agents, [l])
        wait_mounted(a)
        make_large(l.merged, 3000, 0)
        r = sync(a)
        full_ms = max(r["duration_ms"], 20)
        good = {digest(snapshot(l.current()))}
        rnd = random.Random(1)
        outcomes = {"old": 0, "new": 0}
        for round in range(8):
            # change a third of the files (so the sync copies a lot), delete some, add some
            for i in range(rnd.randint(0, 50), 3000, 3):
                write(os.path.join(l.merged, "d%02d" % (i % 40), "f%05d" % i), rnd.randbytes(rnd.randint(512, 8192)))
            for i in range(round, 3000, 97):
                p = os.path.join(l.merged, "d%02d" % (i % 40), "f%05d" % i)
                if os.path.exists(p):
                    os.remove(p)
            write(os.path.join(l.merged, "round", str(round)), os.urandom(100))
            old = digest(snapshot(l.current()))
            new = digest(snapshot(l.upper))
            a.ok("bus", "pub", "gpu.cache.sync", "{}")
            time.sleep(rnd.uniform(0, full_ms / 1000.0 * 1.3))
            a.signal(signal.SIGKILL)
            a.proc.wait()
            have = digest(snapshot(l.current())) if os.path.lexists(l.current()) else None
            assert have in (old, new), "round %d: persisted copy is neither the old nor the new generation" % round
            outcomes["old" if have == old else "new"] += 1
            a.start()  # mounts still there: adopted
            assert wait_mounted(a)["adopted"] is True
        print("crash rounds: %s (full sync %d ms)" % (outcomes, full_ms))
        # the next start after a "reboot" restores exactly the persisted generation
        a.signal(signal.SIGKILL)
        a.proc.wait()
        want = snapshot(l.current())
        l.unmount()
        a.start()
        wait_mounted(a)
        assert_same(snapshot(l.upper), want, "restored upper vs persisted generation")
        sync(a)
        gens = [n for n in os.listdir(l.persist) if n.startswith("gen-")]
        assert len(gens) == 2 and os.readlink(l.current()) in gens, os.listdir(l.persist)
        assert_same(snapshot(l.current()), snapshot(l.upper), "persisted vs upper after the crashes")
    finally:
        for x in agents:
            x.stop()
        l.cleanup()


def test_coalesce_and_final_sync(tmp, agents):
    l = Layer(tmp, size="256MiB")
    try:
        a = start(tmp, agents, [l])
        wait_mounted(a)
        make_large(l.merged, 3000, 2)
        before = status(a)["syncs"]
        # one sync starts, every request during it folds into exactly one more (the six
        # go in one write on one connection: microseconds, against a sync of ~1 s)
        c = Control(a.sock)
        c.send_raw(b"".join((json.dumps({"id": i, "verb": "bus.pub", "protocol": 1, "args": {
            "subject": "gpu.cache.sync", "payload": {"gpu": "ramlayer"}}}) + "\n").encode() for i in range(6)))
        for _ in range(6):
            assert "error" not in c.read()
        c.close()
        wait_for(lambda: (lambda s: not s["syncing"] and not s["sync_pending"] and s["syncs"] > before)(status(a)),
                 60, "syncs to settle")
        got = status(a)["syncs"] - before
        assert got == 2, "6 requests, the first starting a sync: expected 2 syncs, got %d" % got
        # request/reply over the bus
        rc, out, err = a.ctl("bus", "request", "gpu.cache.sync", '{"gpu": "ramlayer"}')
        assert rc == 0 and '"ok":true' in json.dumps(out).replace(" ", ""), (out, err)
        # stop syncs what was written since
        write(os.path.join(l.merged, "last-words"), "written just before stop\n")
        a.stop()
        with open(os.path.join(l.current(), "last-words")) as f:
            assert f.read() == "written just before stop\n"
        assert "final sync" in a.logtext()
    finally:
        for x in agents:
            x.stop()
        l.cleanup()


def rewrite_all(l, n, seed):
    """Changes every small file and the big ones: the next sync copies them all."""
    rnd = random.Random(seed)
    for i in range(n):
        write(os.path.join(l.merged, "d%02d" % (i % 40), "f%05d" % i), rnd.randbytes(rnd.randint(512, 8192)))
    for i in range(12):
        write(os.path.join(l.merged, "big", "b%d" % i), rnd.randbytes(4 << 20))


def request_in_thread(a, result):
    def run():
        result["reply"] = a.ctl("bus", "request", "gpu.cache.sync", '{"gpu": "ramlayer"}', "--timeout", "120",
                                timeout=150)
    t = threading.Thread(target=run)
    t.start()
    return t


def until_marker(c, marker):
    """The events before marker (this connection gets them in order)."""
    seen = []
    while True:
        ev = next_event(c, "gpu.cache.sync", timeout=120)
        if ev["subject"] == marker:
            return seen
        seen.append(ev)


def test_reload_mid_sync(tmp, agents):
    l = Layer(tmp, size="256MiB")
    pdir = os.path.join(tmp, "plugins")
    install_plugin(os.path.join(PLUGINS, "gpucache.so"), pdir, "gpucache.so")
    try:
        a = Agent(tmp, config([l]), plugin_dirs=[pdir])
        agents.append(a)
        a.start()
        wait_mounted(a)
        n = 8000
        make_large(l.merged, n, 5)
        sync(a)
        # first a second build (a new file in place, as a package upgrade), then the same build
        for round, new_build in enumerate((True, False)):
            rewrite_all(l, n, 10 + round)
            want = snapshot(l.upper)
            c = subscribe(a, "gpu.cache.sync.>")
            before = status(a)["syncs"]
            res = {}
            t = request_in_thread(a, res)
            wait_for(lambda: status(a)["syncing"], 20, "the sync to start")
            if new_build:
                install_plugin(os.path.join(PLUGINS, "gpucache.so"), pdir, "gpucache.so")
            t0 = time.monotonic()
            r = a.ok("plugin", "reload", "cache")
            reload_ms = (time.monotonic() - t0) * 1000
            t1 = time.monotonic()
            st = status(a)  # a control round trip right after: the loop is free
            status_ms = (time.monotonic() - t1) * 1000
            assert r["generation"] == 2 + round, r
            assert st["syncing"] is True, ("the sync should still run after the reload", st)
            t.join(150)
            rc, out, err = res["reply"]
            assert rc == 0, (rc, out, err)
            assert out["payload"]["ok"] is True, out
            done = out["payload"]["results"][0]
            a.ok("bus", "pub", "gpu.cache.sync.marker", "{}")
            seen = until_marker(c, "gpu.cache.sync.marker")
            c.close()
            assert [e["subject"] for e in seen] == ["gpu.cache.sync.done"], [e["subject"] for e in seen]
            assert seen[0]["payload"]["generation"] == done["generation"], (seen, done)
            sync_ms = done["duration_ms"]
            print("round %d (%s): sync %d ms, reload %.0f ms, status after it %.0f ms" % (
                round, "second build" if new_build else "same build", sync_ms, reload_ms, status_ms))
            assert sync_ms > 1000, "the sync must outlast the reload by far: %d ms" % sync_ms
            assert reload_ms < sync_ms / 2 and status_ms < 500, (reload_ms, status_ms, sync_ms)
            s2 = status(a)
            assert s2["syncs"] == before + 1 and not s2["syncing"] and not s2["sync_pending"], s2
            assert_same(snapshot(l.current()), want, "persisted vs upper after a reload mid-sync")
            log = a.logtext()
            assert log.count("of the previous build adopted") == round + 1, log[-3000:]
            assert "final sync:" not in log, log[-3000:]
        # a stop in the middle of a sync: cancelled, then the final sync on the loop
        rewrite_all(l, n, 20)
        want = snapshot(l.upper)
        a.ok("bus", "pub", "gpu.cache.sync", '{"gpu": "ramlayer"}')
        wait_for(lambda: status(a)["syncing"], 20, "the sync to start")
        a.stop(timeout=120)
        log = a.logtext()
        assert "final sync: generation" in log, log[-3000:]
        assert_same(snapshot(l.current()), want, "persisted vs upper after a stop mid-sync")
        # after a "reboot", a reload during the restore: the new build adopts the restore
        # (and neither unmounts the tmpfs under it nor restores a second time)
        l.unmount()
        a.start()
        st = status(a)
        assert st["state"] == "restoring", ("the restore (%d files) should still run" % n, st)
        t0 = time.monotonic()
        a.ok("plugin", "reload", "cache")
        reload_ms = (time.monotonic() - t0) * 1000
        wait_mounted(a, timeout=60)
        log = a.logtext()
        print("reload during the restore: %.0f ms" % reload_ms)
        assert "restore of the previous build adopted" in log, log[-3000:]
        assert "interrupted restore" not in log and log.count("restored generation") == 1, log[-3000:]
        assert_same(snapshot(l.upper), want, "restored upper vs the persisted generation")
        a.stop(timeout=120)  # its final sync walks the whole restored upper (slow under ASan)
    finally:
        for x in agents:
            x.stop()
        l.cleanup()


def test_disable_busy_enable(tmp, agents):
    l = Layer(tmp)
    try:
        a = start(tmp, agents, [l])
        wait_mounted(a)
        write(os.path.join(l.merged, "work", "data"), "kept across disable\n")
        p = subprocess.Popen(["sleep", "60"], cwd=os.path.join(l.merged, "work"))
        try:
            rc, out, err = a.ctl("cache", "disable", "ramlayer")
            text = json.dumps(out) + err
            assert rc != 0 and "refused" in text and ("pid %d" % p.pid) in text and "sleep" in text, (rc, out, err)
            assert status(a)["state"] == "mounted"
        finally:
            p.kill()
            p.wait()
        r = a.ok("cache", "disable", "ramlayer")
        assert r["state"] == "disabled", r
        assert not os.path.ismount(l.merged) and not os.path.ismount(l.ram)
        with open(os.path.join(l.current(), "work", "data")) as f:
            assert f.read() == "kept across disable\n"
        assert status(a)["state"] == "disabled"
        r = a.ok("cache", "enable", "ramlayer")
        wait_mounted(a)
        with open(os.path.join(l.merged, "work", "data")) as f:
            assert f.read() == "kept across disable\n"
    finally:
        for x in agents:
            x.stop()
        l.cleanup()


def test_tmpfs_full(tmp, agents):
    l = Layer(tmp, size="8MiB")
    try:
        a = start(tmp, agents, [l])
        wait_mounted(a)
        c = subscribe(a, "alert.gpucache.>")
        write(os.path.join(l.merged, "small"), "fits\n")
        failed = None
        try:
            for i in range(64):
                write(os.path.join(l.merged, "fill", "chunk%02d" % i), b"\0" * (512 << 10))
        except OSError as e:
            failed = e.errno
        assert failed == errno.ENOSPC, failed
        ev = next_event(c, "alert.gpucache.ramlayer.full")
        assert ev["subject"] == "alert.gpucache.ramlayer.full" and ev["payload"]["layer"] == "ramlayer", ev
        r = sync(a)
        assert "error" not in r, r
        assert_same(snapshot(l.current()), snapshot(l.upper), "persisted vs upper of a full tmpfs")
        shutil.rmtree(os.path.join(l.merged, "fill"))
        ev = next_event(c, "alert.gpucache.ramlayer.full.cleared")
        assert ev["subject"].endswith(".cleared"), ev
        c.close()
    finally:
        for x in agents:
            x.stop()
        l.cleanup()


def test_bad_input(tmp, agents):
    for sub in ("t2", "t3", "t4"):
        os.makedirs(os.path.join(tmp, sub))
    good = Layer(tmp)
    ram_persist = Layer(os.path.join(tmp, "t2"), "onram")
    missing = Layer(os.path.join(tmp, "t3"), "nolower")
    try:
        # persist on a tmpfs: refused
        os.makedirs(ram_persist.persist, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", ram_persist.persist], check=True)
        shutil.rmtree(missing.lower)
        a = start(tmp, agents, [good, ram_persist, missing])
        wait_mounted(a)
        s = status(a, "onram")
        assert s["state"] == "error" and "tmpfs" in s["why"] and "refused" in s["why"], s
        s = status(a, "nolower")
        assert s["state"] == "error" and "lower layer" in s["why"] and "missing" in s["why"], s
        # an unknown gpu in a request: an error on the bus and in the reply
        c = subscribe(a, "gpu.cache.sync.err")
        rc, out, err = a.ctl("cache", "sync", "gpu9")
        assert rc != 0 or "unknown gpu" in json.dumps(out), (rc, out, err)
        assert "unknown gpu" in json.dumps(out) + err, (out, err)
        ev = next_event(c, "gpu.cache.sync.err")
        assert "unknown gpu" in ev["payload"]["error"] and ev["payload"]["gpu"] == "gpu9", ev
        a.ok("bus", "pub", "gpu.cache.sync", '{"gpu": "gpu7"}')
        ev = next_event(c, "gpu.cache.sync.err")
        assert "unknown gpu" in ev["payload"]["error"] and ev["payload"]["gpu"] == "gpu7", ev
        a.ok("bus", "pub", "gpu.cache.sync", '{"gpu": {"x": 1}}')
        ev = next_event(c, "gpu.cache.sync.err")
        assert "unknown gpu" in ev["payload"]["error"], ev
        raw = Control(a.sock)
        raw.send("bus.pub", {"subject": "gpu.cache.sync", "data": "not json"})
        assert "error" not in raw.read()
        raw.close()
        ev = next_event(c, "gpu.cache.sync.err")
        assert "not JSON" in ev["payload"]["error"], ev
        # a sync of a layer in error says why
        rc, out, err = a.ctl("cache", "sync", "nolower")
        assert "not mounted" in json.dumps(out) + err, (out, err)
        c.close()
        a.stop()
        subprocess.run(["umount", ram_persist.persist])
        # sizes above the admission limit: the instance does not start, and says why
        huge = Layer(os.path.join(tmp, "t4"), "huge", size="100000GiB")
        b = Agent(os.path.join(tmp, "t4"), config([huge]))
        agents.append(b)
        b.start()
        inst = b.instance("cache")
        assert inst["state"] == "failed", inst
        assert "admission" in b.logtext() and "MemTotal" in b.logtext(), b.logtext()[-2000:]
        assert not os.path.ismount(huge.ram)
        huge.cleanup()
    finally:
        for x in agents:
            x.stop()
        for x in (good, ram_persist, missing):
            x.cleanup()


def test_gpu_layers_dry_run(tmp, agents):
    """gpu<i> by sorted PCI address from the fixture's sysfs; dry_run logs the mounts."""
    root = os.path.join(tmp, "root")
    shutil.copytree(FIXTURE, root, symlinks=True)
    os.makedirs(os.path.join(root, "proc", "self"), exist_ok=True)
    with open(os.path.join(root, "proc", "meminfo"), "w") as f:
        f.write("MemTotal:       16384000 kB\nMemFree:        8000000 kB\n")
    with open(os.path.join(root, "proc", "self", "mountinfo"), "w") as f:
        f.write("22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n")
    base = os.path.join(tmp, "data")
    persist = disk_dir(tmp, "gpus")
    devs = sorted(d for d in os.listdir(os.path.join(root, "sys", "bus", "pci", "devices"))
                  if open(os.path.join(root, "sys", "bus", "pci", "devices", d, "vendor")).read().strip() == "0x1002"
                  and open(os.path.join(root, "sys", "bus", "pci", "devices", d, "class")).read().startswith("0x03"))
    for i in range(len(devs)):
        os.makedirs(os.path.join(base, "gpu%d" % i, "base"))
    try:
        plugins = ("  cache:\n    plugin: gpucache\n    dry_run: true\n    config:\n      gpus: auto\n"
                   "      cache_mb: 256\n      base_root: %s\n      persist_root: %s\n      ram_root: %s/run\n"
                   "      merge_root: %s/srv\n      prewarm_on_start: false\n") % (base, persist, tmp, tmp)
        a = Agent(tmp, plugins, agent_extra="  sysroot: %s\n" % root)
        agents.append(a)
        a.start()
        st = a.ok("cache", "status")
        layers = st["layers"]
        assert [x["layer"] for x in layers] == ["gpu%d" % i for i in range(len(devs))], layers
        assert [x["pci"] for x in layers] == devs, (layers, devs)
        assert all(x["state"] == "dry_run" for x in layers), layers
        log = a.logtext()
        assert "dry_run: would mount -t tmpfs -o nosuid,nodev,size=268435456" in log, log[-2000:]
        assert "dry_run: would mount -t overlay -o lowerdir=%s/gpu3/base" % base in log, log[-2000:]
        assert not os.path.exists(os.path.join(tmp, "srv")) and not os.path.exists(os.path.join(tmp, "run")), \
            "dry_run made directories"
        r = a.ok("cache", "sync", "gpu3")
        assert r["results"][0]["dry_run"] is True and r["results"][0]["pci"] == devs[3], r
        # 12 × 256 MiB against 0.5 of 16 GB passes; 12 × 1 GiB would not
    finally:
        shutil.rmtree(persist, ignore_errors=True)


if __name__ == "__main__":
    reexec_in_namespace()
    run_tests(globals())
