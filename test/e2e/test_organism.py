#!/usr/bin/env python3
"""End-to-end: the whole organism on one machine (SPEC §5, §6; etc/examples/host.yaml,
cortex.yaml, gpu-pool.yaml). One real nats-server (JetStream, token auth) and three
agentd processes, each on its own fixture sysroot:
  host      memory, circadian, zfs (fake zfs/zpool), irq, vfio — plan only (dry_run) —
            on a copy of pve12 with host32g's /proc memory files;
  cortex    maestro (`task`), irq in guest mode on guest8; remote control admin, so the
            host submits with `agentctl --agent cortex task submit`;
  gpu-pool  gpuworker on the 12-GPU fixture (gpupool12), tasks run as nobody; gpucache,
            one layer per GPU, when this build has it (in a private mount namespace).
TASKS tasks (1 000; 200 under ASan, where each agentctl process is slow;
ORGANISM_E2E_TASKS overrides) are submitted from the host, most with agentctl processes
(eight at a time), the rest through the host's bus request to gpu.task.enqueue;
nats-server is restarted once and the Cortex agent killed -9 once (then restarted)
mid-run. Every task ends `done` exactly once (each writes one line to a file named after
it), spread over the 12 GPUs. Then circadian's night phase,
forced with `agentctl circadian set night`, syncs every gpucache layer of the GPU-Pool
agent (gpu.cache.sync.done for each GPU) — skipped, saying why, without gpucache.
Needs root (tasks switch to nobody; mounts) and nats-server; skipped otherwise."""
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import harness
from harness import AGENTCTL, PLUGINS, Agent, Control, NatsServer, Skip, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
TOKEN = "organism-e2e-token-7f3a9c"
GPUS = 12


def sanitized():
    p = subprocess.run(["ldd", harness.AGENTD], capture_output=True, text=True)
    return "libasan" in p.stdout


def task_count():
    if os.environ.get("ORGANISM_E2E_TASKS"):
        return int(os.environ["ORGANISM_E2E_TASKS"])
    return 200 if sanitized() else 1000


def nats_yaml(url, name, export, imports, remote="read-only"):
    return ("bus:\n  nats:\n    url: %s\n    name: organism-%s\n    token: %s\n"
            "    export: %s\n    import: %s\n    reconnect_wait: 100ms\n    reconnect_buffer: 8MiB\n"
            "    remote_control: %s\n") % (url, name, TOKEN, json.dumps(export), json.dumps(imports), remote)


def node(tmp, agents, name, plugins, url, export, imports, agent_extra="", remote="read-only"):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    os.chmod(d, 0o755)
    a = Agent(d, plugins, agent_extra=agent_extra, name=name)
    with open(a.config) as f:
        text = f.read().replace("  log_level: debug\n", "  log_level: info\n")
    with open(a.config, "w") as f:
        f.write(text + nats_yaml(url, name, export, imports, remote))
    agents.append(a)
    return a


def host_sysroot(tmp):
    root = os.path.join(tmp, "host-root")
    shutil.copytree(os.path.join(FIX, "sysroots", "pve12"), root, symlinks=True)
    shutil.copytree(os.path.join(FIX, "sysroots", "host32g", "proc"), os.path.join(root, "proc"),
                    symlinks=True, dirs_exist_ok=True)
    return root


def fake_bin(tmp):
    d = os.path.join(tmp, "host-bin")
    os.makedirs(d)
    for tool in ("zfs", "zpool", "qm"):
        shutil.copy(os.path.join(FIX, "bin", tool), os.path.join(d, tool))
        os.chmod(os.path.join(d, tool), 0o755)
    now = int(time.time())
    ds = {n: {"type": "filesystem", "props": {}, "creation": now - 86400}
          for n in ("nvme", "nvme/organism", "zr", "zr/organism", "arch")}
    for p in ("nvme", "zr", "arch"):
        ds[p]["props"]["mountpoint"] = "/" + p
    st = {"pools": {p: {"health": "ONLINE", "size": 1 << 40, "alloc": 1 << 38, "frag": 7} for p in ("nvme", "zr", "arch")},
          "datasets": ds, "snapshots": {}}
    with open(os.path.join(d, "zfs-state.json"), "w") as f:
        json.dump(st, f)
    return d


HOST_PLUGINS = """\
  circadian:
    config:
      phases: {day: "00:00", night: "23:59:59"}
      actions:
        night: {gpu_cache_sync: true}
  memory:
    interval: 1s
    dry_run: true
    config: {vmid: 100}
  zfs:
    dry_run: true
    config:
      pools: {fast: nvme, scratch: zr, archive: arch}
      scrub: {enabled: false}
      trim: {enabled: false}
  irq:
    dry_run: true
    interval: 1h
    config: {mode: host, pm_qos: false}
  vfio:
    dry_run: true
    config: {vmid: 200}
"""

CORTEX_PLUGINS = """\
  task:
    plugin: maestro
    config: {lease_grace: 1s, retry_backoff: 100ms, heartbeat_ttl: 5s, metrics_ttl: 5s, max_retries: 5}
  irq:
    dry_run: true
    interval: 1h
    config: {mode: guest, pm_qos: false}
"""

MARK = "#!/bin/sh\n# one line per run, in a file named after the task\necho \"$GPU_ID\" >> \"$1/$TASK_ID\"\n"


def gpucache_missing():
    """Why the night part cannot run here, or None."""
    if not os.path.exists(os.path.join(PLUGINS, "gpucache.so")):
        return "this build has no gpucache plugin (plugins/gpucache)"
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        return "unshare/nsenter (util-linux) not installed: no private mount namespace for gpucache"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            subprocess.run(["modprobe", "overlay"], capture_output=True)
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "overlayfs is not available in this kernel"
    return None


def disk_dir(tmp, name):
    """A directory on a disk filesystem: gpucache refuses to persist on a tmpfs."""
    p = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True).stdout.strip()
    base = tmp if p not in ("tmpfs", "ramfs") else harness.BUILD
    d = os.path.join(base, "organism-%s-%d-%s" % (name, os.getpid(), os.path.basename(tmp)))
    os.makedirs(d, exist_ok=True)
    return d


def gpucache_yaml(tmp, proot, persist):
    """One 4 MiB layer per GPU of the fixture. The plugin reads /proc/meminfo (admission)
    and /proc/self/mountinfo (what is mounted) through the sysroot: there they are the
    real ones, since its mounts are real (in agentd's own mount namespace)."""
    os.makedirs(os.path.join(proot, "proc", "self"), exist_ok=True)
    os.symlink("/proc/meminfo", os.path.join(proot, "proc", "meminfo"))
    os.symlink("/proc/self/mountinfo", os.path.join(proot, "proc", "self", "mountinfo"))
    base = os.path.join(tmp, "gpucache")
    # a layer for each AMD display function, the 13th (bound to vfio-pci) included: the
    # index rule of SPEC §6 is the same for gpuworker (which reports it passthrough)
    for g in range(GPUS + 1):
        os.makedirs(os.path.join(base, "base", "gpu%d" % g, "base"), exist_ok=True)
        with open(os.path.join(base, "base", "gpu%d" % g, "base", "model.bin"), "w") as f:
            f.write("weights of gpu%d\n" % g)
    return ("  cache:\n    plugin: gpucache\n    config:\n"
            "      gpus: auto\n      cache_mb: 4\n      base_root: %s/base\n      persist_root: %s\n"
            "      ram_root: %s/ram\n      merge_root: %s/merged\n      sync_interval: 1h\n"
            "      prewarm_on_start: false\n") % (base, persist, base, base)


class Cleanup:
    """A folder outside tmp removed when the test's agents are stopped."""

    def __init__(self, path):
        self.path = path
        self.name = "cleanup"

    def stop(self):
        shutil.rmtree(self.path, ignore_errors=True)

    def logtext(self):
        return ""


class Sub:
    """A bus.sub stream on an agent, collected by a thread."""

    def __init__(self, a, pattern, count, timeout_ms=60000):
        self.c = Control(a.sock)
        self.c.send("bus.sub", {"pattern": pattern, "count": count, "timeout_ms": timeout_ms})
        assert self.c.read()["event"]["subscribed"] is True
        self.msgs = []
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.c.s.settimeout(120)
        try:
            while True:
                r = self.c.read()
                if r.get("end"):
                    return
                self.msgs.append(r["event"])
        except (OSError, ValueError, ConnectionError):
            return

    def wait(self, timeout):
        self.t.join(timeout)
        self.c.close()
        return self.msgs


def start_unshared(a):
    """agentd in a private mount namespace (gpucache mounts tmpfs and overlays): unshare
    execs agentd in place, so the pid, signals and the notify socket are agentd's."""
    wrapper = os.path.join(a.tmp, "agentd-unshared")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec unshare -m --propagation private %s \"$@\"\n" % harness.AGENTD)
    os.chmod(wrapper, 0o755)
    saved = harness.AGENTD
    harness.AGENTD = wrapper
    try:
        a.start(timeout=30)
    finally:
        harness.AGENTD = saved


def test_three_agents_one_nats(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("tasks run as nobody and gpucache mounts: needs root")
    if not shutil.which("nats-server"):
        raise Skip("nats-server is not installed (apt-get install nats-server)")
    n_tasks = task_count()
    t_start = time.monotonic()
    srv = NatsServer(tmp, extra=["--auth", TOKEN]).start()
    url = srv.url

    # --- the three nodes, as in etc/examples (lists cut to what this run needs) ---
    bindir = fake_bin(tmp)
    hroot = host_sysroot(tmp)
    host = node(tmp, agents, "host", HOST_PLUGINS, url,
                export=["sys.>", "alert.>", "circadian.phase", "gpu.cache.sync", "gpu.task.enqueue"],
                imports=["gpu.worker.heartbeat", "gpu.cache.sync.done", "gpu.cache.sync.err", "gpu.task.result.>",
                         "maestro.heartbeat"],
                agent_extra="  sysroot: %s\n  commands: {qm: %s/qm, zfs: %s/zfs, zpool: %s/zpool}\n" % (
                    hroot, bindir, bindir, bindir))
    croot = os.path.join(tmp, "cortex-root")
    shutil.copytree(os.path.join(FIX, "sysroots", "guest8"), croot, symlinks=True)
    cortex = node(tmp, agents, "cortex", CORTEX_PLUGINS, url,
                  export=["gpu.task.run.>", "gpu.task.cancel.>", "gpu.task.state.>", "gpu.task.result.>", "maestro.>"],
                  imports=["gpu.task.enqueue", "gpu.worker.>", "gpu.task.running", "gpu.task.done", "gpu.task.err"],
                  agent_extra="  sysroot: %s\n" % croot, remote="admin")
    proot = os.path.join(tmp, "pool-root")
    shutil.copytree(os.path.join(FIX, "sysroots", "gpupool12"), proot, symlinks=True)
    work = os.path.join(tmp, "work")
    for d in ("tasks", "out", "bin"):
        os.makedirs(os.path.join(work, d))
    os.chmod(os.path.join(work, "out"), 0o777)
    mark = os.path.join(work, "bin", "mark.sh")
    with open(mark, "w") as f:
        f.write(MARK)
    os.chmod(mark, 0o755)
    no_cache = gpucache_missing()
    cache = no_cache is None
    pool_plugins = ("  gpuworker:\n    config:\n      task_root: %s\n      user: nobody\n"
                    "      heartbeat_interval: 1s\n      metrics_interval: 1s\n      running_interval: 2s\n") % (
                        os.path.join(work, "tasks"))
    persist = None
    if cache:
        persist = disk_dir(tmp, "gpucache-persist")
        pool_plugins += gpucache_yaml(tmp, proot, persist)
    pool = node(tmp, agents, "gpu-pool", pool_plugins, url,
                export=["gpu.worker.>", "gpu.task.running", "gpu.task.done", "gpu.task.err", "gpu.cache.sync.done",
                        "gpu.cache.sync.err", "gpu.cache.heartbeat"],
                imports=["gpu.task.run.>", "gpu.task.cancel.>", "gpu.cache.sync"],
                agent_extra="  sysroot: %s\n" % proot)
    # nats-server is stopped last (the agents flush to a live server when they stop)
    agents.append(srv)
    if persist and not persist.startswith(tmp):
        agents.append(Cleanup(persist))

    host.start()
    cortex.start()
    if cache:
        start_unshared(pool)
    else:
        pool.start()
    for a in (host, cortex, pool):
        bad = [i for i in a.ok("plugin", "list") if i["state"] != "running"]
        assert not bad, (a.name, bad)
    wait_for(lambda: sorted(x["agent"] for x in host.ok("agents")["agents"]) == ["cortex", "gpu-pool", "host"],
             timeout=15, what="the host to hear the two VMs' agents")
    wait_for(lambda: host.ok("--agent", "cortex", "task", "status")["gpus_alive"] == GPUS, timeout=20,
             what="maestro to see the 12 GPUs (through NATS)")
    st = host.ok("--agent", "gpu-pool", "gpuworker", "status")
    assert len([g for g in st["gpus"] if g["state"] == "idle"]) == GPUS, st
    print("# %d tasks; agents up in %.1fs; gpucache %s" % (
        n_tasks, time.monotonic() - t_start, "on" if cache else "off (%s)" % no_cache))

    # --- submissions, with one NATS restart and one kill -9 of Cortex mid-run ---
    # (a task's timeout of 5 s bounds its lease, 5 s + lease_grace: a dispatch or a
    # result lost while NATS or Cortex is down costs at most that)
    ids = ["t%04d" % i for i in range(n_tasks)]
    out = os.path.join(work, "out")
    lock = threading.Lock()
    accepted, retried = set(), [0]
    events = {"nats": int(n_tasks * 0.3), "cortex": int(n_tasks * 0.6)}
    fired = {}

    def submit_ctl(tid):
        """agentctl --agent cortex task submit; retried (same id: idempotent) while a
        restart makes it fail."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            p = subprocess.run([AGENTCTL, "-s", host.sock, "--json", "-t", "5", "--agent", "cortex", "task", "submit",
                                "--id", tid, "--timeout", "5", "--", mark, out], capture_output=True, text=True,
                               timeout=30)
            harness.check_sanitizers("agentctl task submit", p.stderr)
            if p.returncode == 0:
                r = json.loads(p.stdout)
                assert r.get("accepted") is True and r.get("task_id") == tid, r
                with lock:
                    accepted.add(tid)
                return
            with lock:
                retried[0] += 1
            time.sleep(0.2)
        raise AssertionError("%s never accepted: %s" % (tid, p.stderr))

    def submit_bus(tid):
        """the bus request API of the host agent (gpu.task.enqueue, answered by maestro
        once committed): what a program on the host would do."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rc, r, err = host.ctl("-t", "5", "bus", "request", "gpu.task.enqueue",
                                  json.dumps({"task_id": tid, "cmd": [mark, out], "timeout": 5}), timeout=30)
            payload = r.get("payload") if isinstance(r, dict) else None
            if rc == 0 and isinstance(payload, dict) and payload.get("accepted") is True:
                with lock:
                    accepted.add(tid)
                return
            with lock:
                retried[0] += 1
            time.sleep(0.2)
        raise AssertionError("%s never accepted over the bus" % tid)

    def disturb(done_count):
        if "nats" not in fired and done_count >= events["nats"]:
            fired["nats"] = time.monotonic()
            srv.stop()
            srv.start()
        if "cortex" not in fired and done_count >= events["cortex"]:
            fired["cortex"] = time.monotonic()
            cortex.proc.send_signal(signal.SIGKILL)
            cortex.proc.wait(timeout=10)
            cortex.logf.close()
            cortex.start(timeout=30)

    t_submit = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        futs = []
        for i, tid in enumerate(ids):
            # one in five through the bus request API, the rest with agentctl processes
            futs.append(ex.submit(submit_bus if i % 5 == 4 else submit_ctl, tid))
        n_done = 0
        for f in concurrent.futures.as_completed(futs):
            f.result()
            n_done += 1
            disturb(n_done)
    assert set(ids) == accepted
    print("# submitted in %.1fs (%d retries during the restarts)" % (time.monotonic() - t_submit, retried[0]))
    assert "nats" in fired and "cortex" in fired, fired

    def final():
        st = cortex.ok("task", "status")
        return st if st["queued"] == 0 and st["inflight"] == 0 else None

    try:
        st = wait_for(final, timeout=90, what="every task final")
    except AssertionError:
        st = cortex.ok("task", "status")
        print("# not final: %s" % json.dumps({k: v for k, v in st.items() if k != "gpus"}))
        for state in ("running", "scheduled", "retry", "queued", "enqueued", "waiting_gpu"):
            rc, lst, _ = cortex.ctl("task", "list", "--state", state, "--limit", "5")
            if rc == 0:
                print("# %s: %s" % (state, json.dumps(lst)[:1500]))
        raise
    print("# all final %.1fs after the last submission: done %d, failed %d, retries %d" % (
        time.monotonic() - t_submit, st["done_total"], st["failed_total"], st.get("retries_total", -1)))
    # every task done in maestro's store (its own view, across the restart)
    done = cortex.ok("task", "list", "--state", "done", "--limit", str(n_tasks + 10))["tasks"]
    assert sorted(t["task_id"] for t in done) == ids, (len(done), cortex.ok("task", "list", "--state", "failed"))
    # ... and exactly once: one file per task, one line in each
    files = sorted(os.listdir(out))
    assert files == ids, (len(files), sorted(set(ids) - set(files))[:10])
    per_gpu = {}
    for tid in ids:
        with open(os.path.join(out, tid)) as f:
            lines = f.read().splitlines()
        assert len(lines) == 1, (tid, "ran %d times" % len(lines), lines)
        per_gpu[lines[0]] = per_gpu.get(lines[0], 0) + 1
    print("# tasks per GPU: %s" % " ".join("gpu%s=%d" % (g, per_gpu[g]) for g in sorted(per_gpu, key=int)))
    assert sorted(per_gpu, key=int) == [str(g) for g in range(GPUS)], per_gpu
    assert min(per_gpu.values()) >= n_tasks // (2 * GPUS), ("not spread", per_gpu)  # each at least half its share

    # --- night: every gpucache layer of the GPU-Pool synced ---
    if not cache:
        print("# skipped the night sync: %s" % no_cache)
    else:
        wait_for(lambda: [l["state"] for l in pool.ok("cache", "status")["layers"]] == ["mounted"] * (GPUS + 1),
                 timeout=30, what="the 13 gpucache layers mounted")
        layers = ["gpu%d" % g for g in range(GPUS + 1)]
        assert [l["layer"] for l in pool.ok("cache", "status")["layers"]] == layers
        # something to sync in each layer, written through its merged view — inside
        # agentd's mount namespace, the only one where the overlays are mounted
        src = os.path.join(tmp, "result.txt")
        with open(src, "w") as f:
            f.write("a task's result\n")
        for g in range(GPUS + 1):
            p = subprocess.run(["nsenter", "-t", str(pool.proc.pid), "-m", "--", "cp", src,
                                os.path.join(tmp, "gpucache", "merged", "gpu%d" % g, "result.txt")],
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p
        s = Sub(pool, "gpu.cache.sync.>", len(layers), timeout_ms=60000)
        host.ok("circadian", "set", "night")
        msgs = s.wait(70)
        errs = [m["payload"] for m in msgs if m["subject"] == "gpu.cache.sync.err"]
        assert not errs, errs
        done = [m for m in msgs if m["subject"] == "gpu.cache.sync.done"]
        assert all(m["origin"] == "gpu-pool" for m in done), done
        assert sorted(m["payload"]["layer"] for m in done) == sorted(layers), done
        # ... and the file is in each persisted generation
        for g in range(GPUS + 1):
            found = [r for r, _, fs in os.walk(os.path.join(persist, "gpu%d" % g)) if "result.txt" in fs]
            assert found, ("gpu%d" % g, "result.txt not persisted")
        host.ok("circadian", "clear")
    print("# total %.1fs" % (time.monotonic() - t_start))


if __name__ == "__main__":
    run_tests(globals())
