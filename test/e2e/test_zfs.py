#!/usr/bin/env python3
"""End-to-end tests of the zfs plugin: the real agentd and agentctl, the real zfs.so,
and the stateful fake zfs/zpool of test/fixtures/bin (state in a JSON file of the
test's folder, every call in calls.log). Three pools by role (nvme fast, zr scratch,
arch archive); the tests change the fake's state and observe what the plugin runs,
publishes and answers, each wait bounded:
retention on every dataset of a recursive set (children included, excluded subtree,
held and foreign snapshots untouched, one destroy call per dataset), one atomic
snapshot call per job (-r when nothing is excluded), catch-up once after downtime
from the persisted last run, DEGRADED alert once / repeated / cleared, capacity and
scrub-error alerts, scrub one pool at a time skipping a resilvering one, the property
policy (once, then nothing; unsafe removed puts sync back), dry_run writes nothing,
layout plans without confirm, creates with it, is idempotent and reports conflicts,
and a failing or garbling fake that loses nothing."""
import json
import os
import re
import shutil
import sqlite3
import time

from harness import Agent, Control, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "fixtures", "bin")
DAY = 86400
TIB = 1 << 40


def stamp(t):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def base_state():
    now = int(time.time())
    ds = {}
    for n in ["nvme", "nvme/organism", "nvme/organism/base", "nvme/organism/vmdata", "nvme/organism/ram-persist",
              "nvme/organism/bench", "nvme/organism/bench/run1", "zr", "zr/organism", "zr/organism/tmp", "arch"]:
        ds[n] = {"type": "filesystem", "props": {}, "creation": now - 30 * DAY}
    for p in ("nvme", "zr", "arch"):
        ds[p]["props"]["mountpoint"] = "/" + p
    return {"pools": {p: {"health": "ONLINE", "size": TIB, "alloc": TIB // 4, "frag": 7} for p in ("nvme", "zr", "arch")},
            "datasets": ds, "snapshots": {}}


class Fake:
    def __init__(self, tmp, state):
        self.dir = os.path.join(tmp, "bin")
        os.makedirs(self.dir)
        for tool in ("zfs", "zpool"):
            shutil.copy(os.path.join(BIN, tool), os.path.join(self.dir, tool))
            os.chmod(os.path.join(self.dir, tool), 0o755)
        self.path = os.path.join(self.dir, "zfs-state.json")
        self.save(state)

    def load(self):
        with open(self.path) as f:
            return json.load(f)

    def save(self, st):
        with open(self.path + ".new", "w") as f:
            json.dump(st, f)
        os.rename(self.path + ".new", self.path)

    def edit(self, fn):
        import fcntl
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = self.load()
            fn(st)
            self.save(st)

    def calls(self):
        try:
            with open(os.path.join(self.dir, "calls.log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def snaps(self, ds=None, tag=None):
        out = []
        for s in sorted(self.load()["snapshots"]):
            d, n = s.split("@", 1)
            if (ds is None or d == ds) and (tag is None or re.fullmatch(r"organism-%s-\d{8}T\d{6}Z" % tag, n)):
                out.append(s)
        return out


JOBS = """\
      snapshots:
        - {tag: 6h, every: 6h, keep: 2, datasets: [nvme/organism], recursive: true, exclude: [nvme/organism/bench]}
        - {tag: daily, at: "03:00", keep: 1, datasets: [zr/organism], recursive: true}
"""


NO_MAINT = "      scrub: {enabled: false}\n      trim: {enabled: false}\n"


def start(tmp, agents, state=None, extra_config="", jobs=JOBS, instance_extra="", start=True, maint=NO_MAINT):
    fake = Fake(tmp, state or base_state())
    cfg = ("  zfs:\n    plugin: zfs\n%s    config:\n      pools: {fast: nvme, scratch: zr, archive: arch}\n"
           "%s      health_interval: 1s\n      alert_repeat: 3s\n      properties_interval: 1s\n"
           "%s%s") % (instance_extra, jobs, maint, extra_config)
    a = Agent(tmp, cfg, agent_extra=commands(fake))
    agents.append(a)
    if start:
        a.start()
    return a, fake


def commands(fake):
    return "  commands: {zfs: %s/zfs, zpool: %s/zpool}\n" % (fake.dir, fake.dir)


def status(a):
    return a.ok("zfs", "status")


def passes(a, n=2):
    """Waits for n more health passes (observable, not a sleep)."""
    first = status(a)["health_passes"]
    wait_for(lambda: status(a)["health_passes"] >= first + n, timeout=15, what="%d more health passes" % n)


def metric(a, name, **labels):
    for m in a.ok("metrics"):
        if m["instance"] == "zfs" and m["name"] == name and m["labels"] == labels:
            return m["value"]
    return None


def subscribe(a, pattern):
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": pattern})
    assert c.read()["event"]["subscribed"] is True
    return c


def test_retention_children_exclude_held_foreign(tmp, agents):
    st = base_state()
    now = int(time.time())
    old = [now - 3 * DAY, now - 2 * DAY, now - DAY]
    sets = ["nvme/organism", "nvme/organism/base", "nvme/organism/vmdata", "nvme/organism/ram-persist"]
    for d in sets + ["nvme/organism/bench", "nvme/organism/bench/run1"]:
        for t in old:
            st["snapshots"]["%s@organism-6h-%s" % (d, stamp(t))] = {"creation": t, "holds": []}
    # the oldest on vmdata is held (a send in progress); foreign snapshots everywhere
    held = "nvme/organism/vmdata@organism-6h-%s" % stamp(old[0])
    st["snapshots"][held]["holds"] = ["zrepl_last_received"]
    foreign = ["nvme/organism/base@autosnap_2026-01-01_00:00:00_daily", "nvme/organism@vzdump",
               "nvme/organism/vmdata@organism-6h-notastamp", "nvme/organism@organism-6hx-%s" % stamp(old[0])]
    for f in foreign:
        st["snapshots"][f] = {"creation": now - 10 * DAY, "holds": []}
    a, fake = start(tmp, agents, st)
    sub = subscribe(a, "zfs.prune.blocked")

    rep = a.ok("zfs", "snapshot", "6h")
    assert rep["result"] == "partial", rep  # the held one stays
    name = rep["snapshot"]
    assert name.startswith("organism-6h-") and name.endswith("Z") and len(name) == len("organism-6h-") + 16, name
    # one atomic call naming every dataset of the set (bench excluded, so no -r)
    snap_calls = [c for c in fake.calls() if c.startswith("zfs snapshot")]
    assert snap_calls == ["zfs snapshot " + " ".join("%s@%s" % (d, name) for d in sorted(sets))], snap_calls
    # retention kept 2 per dataset, children included; the held one survives
    for d in sets:
        want = 3 if d == "nvme/organism/vmdata" else 2
        assert len(fake.snaps(d, "6h")) == want, (d, fake.snaps(d))
        assert "%s@%s" % (d, name) in fake.snaps(d)
    assert held in fake.snaps("nvme/organism/vmdata")
    # the excluded subtree and the foreign snapshots untouched
    for d in ("nvme/organism/bench", "nvme/organism/bench/run1"):
        assert len(fake.snaps(d, "6h")) == 3, fake.snaps(d)
    for f in foreign:
        assert f in fake.load()["snapshots"], f
    # one destroy call per dataset, batched
    destroys = [c for c in fake.calls() if c.startswith("zfs destroy")]
    assert len(destroys) == 4, destroys
    assert rep["prune"]["destroyed"] == 3 * 2 + 1 and rep["prune"]["blocked"][0]["snapshot"] == held, rep
    ev = sub.read()["event"]
    assert ev["payload"]["snapshot"] == held and ev["payload"]["tag"] == "6h", ev

    # a second prune: nothing left to destroy, the held one not reported again
    rep = a.ok("zfs", "prune", "6h")
    assert rep["destroyed"] == 0 and len(rep["blocked"]) == 1, rep
    assert len([c for c in fake.calls() if c.startswith("zfs destroy")]) == 4
    assert a.logtext().count("stays: held by zrepl_last_received") == 1, a.logtext()
    assert rep["blocked"][0]["reason"] == "held by zrepl_last_received", rep
    assert len([c for c in fake.calls() if c.startswith("zfs holds -H " + held)]) == 2

    # the recursive job without exclusion: zfs snapshot -r, once
    rep = a.ok("zfs", "snapshot", "daily")
    assert rep["result"] == "ok", rep
    assert [c for c in fake.calls() if c.startswith("zfs snapshot -r")] == \
        ["zfs snapshot -r zr/organism@" + rep["snapshot"]], fake.calls()
    assert fake.snaps("zr/organism/tmp", "daily") == ["zr/organism/tmp@" + rep["snapshot"]]

    # snapshots lists ours only, filtered by tag
    ls = a.ok("zfs", "snapshots", "nvme/organism/vmdata", "--tag", "6h")
    assert ls["count"] == 3 and all(s["tag"] == "6h" for s in ls["snapshots"]), ls
    assert [s["held"] for s in ls["snapshots"]] == [True, False, False], ls
    assert metric(a, "zfs_snapshots", tag="6h") == 9  # 2 on each of 4 datasets + the held one
    sub.close()


def test_busy_snapshot_reported_rest_destroyed(tmp, agents):
    st = base_state()
    now = int(time.time())
    for t in (now - 3 * DAY, now - 2 * DAY, now - DAY):
        st["snapshots"]["zr/organism@organism-daily-%s" % stamp(t)] = {"creation": t, "holds": []}
    busy = "zr/organism@organism-daily-%s" % stamp(now - 3 * DAY)
    st["snapshots"][busy]["busy"] = True
    a, fake = start(tmp, agents, st)
    rep = a.ok("zfs", "prune", "daily", "--dry-run", "true")
    assert rep["dry_run"] is True and len(rep["plan"]) == 2, rep
    assert not [c for c in fake.calls() if c.startswith("zfs destroy")]
    rep = a.ok("zfs", "prune", "daily")
    # the batch failed on the busy one, the rest went in one retry
    destroys = [c for c in fake.calls() if c.startswith("zfs destroy")]
    assert len(destroys) == 2 and "," in destroys[0] and "," not in destroys[1], destroys
    assert fake.snaps("zr/organism", "daily") == [busy, "zr/organism@organism-daily-%s" % stamp(now - DAY)]
    assert rep["destroyed"] == 1 and rep["blocked"][0]["reason"] == "dataset is busy", rep


def test_job_across_pools_one_call_per_pool(tmp, agents):
    st = base_state()
    st["datasets"]["arch/organism"] = {"type": "filesystem", "props": {}, "creation": 0}
    jobs = ("      snapshots:\n        - {tag: daily, at: \"03:00\", keep: 1, datasets: [nvme/organism, arch/organism],"
            " recursive: true, exclude: [nvme/organism/bench]}\n")
    a, fake = start(tmp, agents, st, jobs=jobs)
    rep = a.ok("zfs", "snapshot", "daily")
    assert rep["result"] == "ok", rep
    calls = [c for c in fake.calls() if c.startswith("zfs snapshot")]
    # a snapshot set is atomic within one pool: one call per pool, the same name in both
    assert len(calls) == 2 and {c.split()[2].split("/")[0] for c in calls} == {"nvme", "arch"}, calls
    assert all(c.split()[2].endswith("@" + rep["snapshot"]) for c in calls), calls
    assert fake.snaps("arch/organism", "daily") == ["arch/organism@" + rep["snapshot"]]
    assert "nvme/organism/bench@" + rep["snapshot"] not in fake.load()["snapshots"]
    # plugin info documents the config map, ranges included
    info = json.dumps(a.ok("plugin", "info", "zfs"))
    for key in ("health_interval", "cap_alert", "alert_repeat", "snapshots", "exclude", "unsafe"):
        assert key in info, key


def set_last_run(a, job, t):
    db = sqlite3.connect(os.path.join(a.state, "zfs.db"))
    db.execute("UPDATE kv SET value = ? WHERE key = ?", (str(t), "last_run." + job))
    assert db.total_changes == 1
    db.commit()
    db.close()


def test_catch_up_once_after_downtime(tmp, agents):
    a, fake = start(tmp, agents)
    passes(a, 1)
    # first start: the baseline is recorded, nothing is taken
    assert not [c for c in fake.calls() if c.startswith("zfs snapshot")]
    a.stop()
    # "down" across two 6h windows
    set_last_run(a, "snap.6h", int(time.time()) - 13 * 3600)
    a.start()
    wait_for(lambda: [c for c in fake.calls() if c.startswith("zfs snapshot")], timeout=15, what="the catch-up")
    wait_for(lambda: [j for j in status(a)["jobs"] if j["job"] == "snapshot:6h"][0]["runs"] == 1 and
             not [j for j in status(a)["jobs"] if j["job"] == "snapshot:6h"][0]["running"], what="the job done")
    assert len([c for c in fake.calls() if c.startswith("zfs snapshot")]) == 1
    assert len(fake.snaps("nvme/organism", "6h")) == 1
    job = [j for j in status(a)["jobs"] if j["job"] == "snapshot:6h"][0]
    assert job["last_result"] == "ok" and job["next_run"] > job["last_run"], job
    # daily was not missed (its baseline is the first start): nothing for it
    assert not fake.snaps("zr/organism", "daily")
    # a restart inside the window: none
    a.stop()
    a.start()
    passes(a, 2)
    assert len([c for c in fake.calls() if c.startswith("zfs snapshot")]) == 1
    assert [j for j in status(a)["jobs"] if j["job"] == "snapshot:6h"][0]["runs"] == 0


def test_degraded_alert_repeat_cleared_capacity(tmp, agents):
    a, fake = start(tmp, agents)
    passes(a, 1)
    sub = subscribe(a, "alert.zfs.>")
    hs = subscribe(a, "sys.health")
    ev = hs.read()["event"]["payload"]
    assert ev["source"] == "zfs" and sorted(p["name"] for p in ev["pools"]) == ["arch", "nvme", "zr"], ev
    p = [p for p in ev["pools"] if p["name"] == "nvme"][0]
    assert p["health"] == "ONLINE" and p["cap"] == 25 and p["frag"] == 7 and p["size"] == TIB, p
    hs.close()

    fake.edit(lambda st: st["pools"]["nvme"].update(health="DEGRADED"))
    ev = sub.read()["event"]
    t0 = time.monotonic()
    assert ev["subject"] == "alert.zfs.nvme", ev
    assert ev["payload"]["health"] == "DEGRADED" and ev["payload"]["repeat"] is False, ev
    assert ev["payload"]["conditions"] == ["state DEGRADED"], ev
    ev = sub.read()["event"]  # the repeat, not before alert_repeat (3 s)
    assert ev["subject"] == "alert.zfs.nvme" and ev["payload"]["repeat"] is True, ev
    assert time.monotonic() - t0 >= 2.5, time.monotonic() - t0
    assert status(a)["alerts"] == [{"pool": "nvme", "conditions": "state DEGRADED"}]
    fake.edit(lambda st: st["pools"]["nvme"].update(health="ONLINE"))
    ev = sub.read()["event"]
    assert ev["subject"] == "alert.zfs.nvme.cleared" and ev["payload"]["was"] == "state DEGRADED", ev

    # capacity above cap_alert (80 %) on the scratch pool
    fake.edit(lambda st: st["pools"]["zr"].update(alloc=TIB * 9 // 10))
    ev = sub.read()["event"]
    assert ev["subject"] == "alert.zfs.zr" and ev["payload"]["conditions"] == ["capacity above 80%"], ev
    assert ev["payload"]["cap"] == 89, ev  # 90 % of a TiB, rounded down as zpool does
    audit = a.ctl("audit", check=1)[1]
    assert audit["ok"] is False and any(c["what"] == "pool zr capacity" and not c["ok"]
                                         for i in audit["instances"] for c in i["checks"]), audit
    # an exported pool that was named: missing
    fake.edit(lambda st: st["pools"].pop("arch"))
    ev = sub.read()["event"]
    assert ev["subject"] == "alert.zfs.arch" and ev["payload"]["conditions"] == ["missing"], ev
    assert metric(a, "zfs_pool_alert", pool="zr") == 1
    sub.close()


def test_scrub_one_pool_at_a_time_errors_alerted(tmp, agents):
    st = base_state()
    st["pools"]["zr"]["scan"] = "resilver"
    st["pools"]["nvme"]["scrub_duration"] = 2
    st["pools"]["nvme"]["scrub_errors_next"] = 3
    st["pools"]["nvme"]["scrub_repair_next"] = 4096
    a, fake = start(tmp, agents, st)
    sub = subscribe(a, "alert.zfs.>")
    done = subscribe(a, "zfs.scrub.done")
    for p in ("nvme", "zr", "arch"):
        assert a.ok("zfs", "scrub", p)["queued"] == p
    rc, out, _ = a.ctl("zfs", "scrub", "nosuchpool")
    assert rc == 1 and "not a pool" in json.dumps(out), out
    ev = sub.read()["event"]
    assert ev["subject"] == "alert.zfs.nvme" and "scrub errors" in ev["payload"]["conditions"], ev
    assert ev["payload"]["scrub_errors"] == 3, ev
    wait_for(lambda: status(a)["maintenance"] == [], timeout=20, what="the scrubs done")
    scrubs = [c for c in fake.calls() if c.startswith("zpool scrub")]
    # zr was resilvering: skipped; nvme then arch, the second only after the first ended
    assert scrubs == ["zpool scrub nvme", "zpool scrub arch"], scrubs
    calls = fake.calls()
    i_nvme, i_arch = calls.index("zpool scrub nvme"), calls.index("zpool scrub arch")
    assert len([c for c in calls[i_nvme:i_arch] if c.startswith("zpool status")]) >= 2, calls
    assert "resilver in progress" in a.logtext()
    ev = done.read()["event"]["payload"]
    assert ev["pool"] == "nvme" and ev["errors"] == 3 and ev["repaired"] == 4096, ev
    assert done.read()["event"]["payload"]["pool"] == "arch"
    done.close()
    sub.close()


def test_scrub_and_trim_calendar_catch_up(tmp, agents):
    st = base_state()
    st["pools"]["zr"]["scan"] = "resilver"
    st["pools"]["nvme"]["trim_duration"] = 2
    a, fake = start(tmp, agents, st, maint="      scrub: {day_of_month: 1, at: \"02:00\"}\n"
                                           "      trim: {weekday: sun, at: \"04:00\"}\n")
    passes(a, 1)
    assert not [c for c in fake.calls() if c.startswith(("zpool scrub", "zpool trim"))]  # baseline only
    a.stop()
    old = int(time.time()) - 40 * DAY
    set_last_run(a, "scrub", old)
    set_last_run(a, "trim", old)
    a.start()
    wait_for(lambda: [c for c in fake.calls() if c.startswith("zpool trim")] and status(a)["maintenance"] == [],
             timeout=30, what="scrubs and trims done")
    maint = [c for c in fake.calls() if c.startswith(("zpool scrub", "zpool trim"))]
    # one pool at a time; zr (resilvering) skipped for both; arch is not trimmed (archive role)
    assert maint == ["zpool scrub nvme", "zpool scrub arch", "zpool trim nvme"], maint
    calls = fake.calls()
    i, k = calls.index("zpool scrub arch"), calls.index("zpool trim nvme")
    assert len([c for c in calls[i:k] if c.startswith("zpool status")]) >= 2, calls[i:k]
    jobs = {j["job"]: j for j in status(a)["jobs"]}
    assert jobs["scrub"]["runs"] == 1 and jobs["trim"]["runs"] == 1, jobs
    # a restart: nothing again
    a.stop()
    a.start()
    passes(a, 2)
    assert len([c for c in fake.calls() if c.startswith(("zpool scrub", "zpool trim"))]) == 3


PROPS = """\
      properties:
        nvme/organism/vmdata: {primarycache: metadata, secondarycache: metadata, compression: lz4, atime: "off"}
        zr/organism/tmp: {recordsize: 1M, logbias: throughput, sync: disabled, unsafe: true}
"""


def sets(fake):
    return [c for c in fake.calls() if c.startswith("zfs set") or c.startswith("zpool set")]


def test_properties_once_then_nothing_and_unsafe_removed(tmp, agents):
    st = base_state()
    st["datasets"]["nvme/organism/vmdata"]["props"]["atime"] = "off"  # already right: not written
    st["datasets"]["nvme"]["props"]["compression"] = "lz4"            # inherited, right: not written
    a, fake = start(tmp, agents, st, extra_config=PROPS)
    wait_for(lambda: len(sets(fake)) == 4, what="the policy applied")
    passes(a, 3)
    s = sorted(" ".join(sorted(c.split()[2:-1])) + " " + c.split()[-1] for c in sets(fake))
    assert s == sorted(["autotrim=on nvme", "autotrim=on zr",
                        "primarycache=metadata secondarycache=metadata nvme/organism/vmdata",
                        "logbias=throughput recordsize=1M sync=disabled zr/organism/tmp"]), sets(fake)
    d = fake.load()["datasets"]
    assert d["zr/organism/tmp"]["props"] == {"recordsize": "1048576", "logbias": "throughput", "sync": "disabled"}
    audit = a.ok("audit")
    checks = {c["what"]: c for i in audit["instances"] for c in i["checks"]}
    assert checks["nvme/organism/vmdata compression"]["have"] == "lz4 (inherited from nvme)", checks
    assert checks["nvme/organism/vmdata primarycache"]["have"] == "metadata (local)", checks
    assert audit["ok"] is True, audit
    # unsafe removed: sync=standard is put back
    a.write_config(a_config(fake, PROPS.replace(", sync: disabled, unsafe: true", "")), commands(fake))
    a.ok("config", "reload")
    wait_for(lambda: "zfs set sync=standard zr/organism/tmp" in sets(fake), what="sync put back")
    # calls.log is written before the state: wait for the fake to finish
    wait_for(lambda: fake.load()["datasets"]["zr/organism/tmp"]["props"]["sync"] == "standard", what="sync=standard")
    # sync: disabled without unsafe: the instance refuses to start, nothing is written
    n = len(sets(fake))
    a.write_config(a_config(fake, PROPS.replace(", unsafe: true", "")), commands(fake))
    a.ctl("config", "reload")
    wait_for(lambda: "sync: disabled needs unsafe: true" in a.logtext(), what="the refusal logged")
    assert len(sets(fake)) == n


def a_config(fake, props):
    return ("  zfs:\n    plugin: zfs\n    config:\n      pools: {fast: nvme, scratch: zr, archive: arch}\n"
            "%s      health_interval: 1s\n      alert_repeat: 3s\n      properties_interval: 1s\n"
            "      scrub: {enabled: false}\n      trim: {enabled: false}\n%s") % (JOBS, props)


def test_dry_run_writes_nothing(tmp, agents):
    st = base_state()
    now = int(time.time())
    for t in (now - 3 * DAY, now - 2 * DAY, now - DAY):
        st["snapshots"]["nvme/organism@organism-6h-%s" % stamp(t)] = {"creation": t, "holds": []}
    a, fake = start(tmp, agents, st, extra_config=PROPS, instance_extra="    dry_run: true\n")
    before = fake.load()
    rep = a.ok("zfs", "snapshot", "6h")
    assert rep["dry_run"] is True and rep["prune"]["plan"], rep
    rep = a.ok("zfs", "layout", "--confirm", "true")
    assert rep["dry_run"] is True and rep["created"] == 0 and rep["plan"], rep
    a.ok("zfs", "scrub", "nvme")
    wait_for(lambda: status(a)["maintenance"] == [], what="the scrub planned")
    passes(a, 2)
    after = fake.load()
    for k in ("datasets", "snapshots"):
        assert after[k] == before[k], k
    assert after["pools"]["nvme"].get("scan", "none") == "none"
    mutating = [c for c in fake.calls() if c.split()[1] in ("snapshot", "destroy", "set", "create", "scrub", "trim")]
    assert mutating == [], mutating
    assert "dry_run, would run: " in a.logtext() and "zfs destroy" in a.logtext()


def test_layout_plan_confirm_idempotent_conflict(tmp, agents):
    st = base_state()
    st["datasets"]["nvme/organism/vmdata"]["props"]["mountpoint"] = "/srv/vm"  # someone else's
    a, fake = start(tmp, agents, st)
    plan = a.ok("zfs", "layout")
    acts = {p["dataset"]: p["action"] for p in plan["plan"]}
    assert plan["confirm"] is False and "hint" in plan, plan
    assert acts["nvme/organism/vmdata"] == "conflict" and acts["arch/organism/backups"] == "create", acts
    assert acts["nvme/organism"] == "conflict"  # exists, but mounted at /nvme/organism, not /mnt/fast
    assert acts["zr/organism/tmp"] == "conflict" and acts["arch/organism"] == "create", acts
    assert not [c for c in fake.calls() if c.startswith("zfs create")]
    assert fake.load()["datasets"] == st["datasets"]
    # a clean layout on a fresh pool set: confirm creates, the rerun creates nothing
    st2 = base_state()
    for n in list(st2["datasets"]):
        if "/" in n:
            del st2["datasets"][n]
    fake.save(st2)
    plan = a.ok("zfs", "layout", "--confirm", "true")
    creates = [c for c in fake.calls() if c.startswith("zfs create")]
    assert plan["created"] == 10 and plan["failed"] == 0 and len(creates) == 10, plan
    assert "zfs create -p -o mountpoint=/mnt/scratch/tmp -o atime=off -o compression=zstd -o recordsize=1M " \
           "zr/organism/tmp" in creates, creates
    d = fake.load()["datasets"]
    assert d["nvme/organism/ram-persist"]["props"] == {"mountpoint": "/mnt/fast/ram-persist", "compression": "zstd",
                                                      "recordsize": "1048576"}, d
    plan = a.ok("zfs", "layout", "--confirm", "true")
    assert plan["created"] == 0 and {p["action"] for p in plan["plan"]} == {"ok"}, plan
    assert len([c for c in fake.calls() if c.startswith("zfs create")]) == 10


def test_fake_failures_lose_nothing(tmp, agents):
    a, fake = start(tmp, agents, extra_config="      command_timeout: 2s\n")
    passes(a, 1)
    # garbage from zpool list: logged, counted, the last view kept
    fake.edit(lambda st: st.setdefault("fail", {}).update({"zpool list": {"status": 0, "stdout": "what\n"}}))
    wait_for(lambda: (metric(a, "zfs_health_failures_total") or 0) >= 2, what="failed passes counted")
    assert "cannot read zpool list output" in a.logtext()
    assert len(status(a)["pools"]) == 3 and status(a)["alerts"] == []
    # a time-out of zfs list: the snapshot job fails clearly, the next one runs
    fake.edit(lambda st: st["fail"].update({"zpool list": None, "zfs list": {"sleep": 30}}))
    rc, out, _ = a.ctl("zfs", "snapshot", "6h", timeout=60)
    assert rc == 0 and out["result"] == "failed", out
    assert "timed out" in a.logtext()
    fake.edit(lambda st: st.pop("fail"))
    rep = a.ok("zfs", "snapshot", "6h")
    assert rep["result"] == "ok", rep
    assert metric(a, "zfs_command_failures_total") >= 2  # the two time-outs
    # a non-zero exit of zfs snapshot (the dataset vanished): reported, nothing lost
    fake.edit(lambda st: st["datasets"].pop("nvme/organism/base"))
    time.sleep(1.1)  # a new second, so a new snapshot name (not a synchronisation)
    rep = a.ok("zfs", "snapshot", "6h")
    assert rep["result"] == "ok", rep  # base is no longer part of the set
    assert len(fake.snaps("nvme/organism", "6h")) == 2


def check(tmp, plugins_yaml):
    from harness import AGENTD, PLUGINS
    import subprocess
    path = os.path.join(tmp, "check.yaml")
    with open(path, "w") as f:
        f.write("agent:\n  plugin_dirs: [%s]\n  state_dir: %s\nplugins:\n%s" % (PLUGINS, tmp, plugins_yaml))
    p = subprocess.run([AGENTD, "--check", "-c", path], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr


def test_example_config_and_check_errors(tmp, agents):
    with open(os.path.join(HERE, "..", "..", "plugins", "zfs", "config.example.yaml")) as f:
        example = f.read()
    rc, out = check(tmp, example)
    assert rc == 0 and "valid (1 plugin instance)" in out, out
    # the shipped etc/agentd.yaml carries the same block (there disabled)
    with open(os.path.join(HERE, "..", "..", "etc", "agentd.yaml")) as f:
        shipped = f.read()
    assert "\n".join(example.splitlines()[-10:]) in shipped
    for old, new, what in [("pools: {fast: nvme-store,", "pools: {speedy: x, fast: nvme-store,", "speedy"),
                           ("keep: 28", "keep: 0", "keep"), ("weekday: sun", "weekday: sunday", "weekday"),
                           ("day_of_month: 1", "day_of_month: 31", "day_of_month"),
                           ("cap_alert: 80", "cap_alert: 180", "cap_alert")]:
        assert old in example, old
        text = example.replace(old, new, 1)
        bad = old
        rc, out = check(tmp, text)
        if what == "speedy" or rc == 1:
            assert rc == 1 and what in out and "check.yaml:" in out, (bad, out)
            line = [l for l in out.splitlines() if what in l][0]
            assert line.split(":")[1].isdigit() and line.split(":")[2].isdigit(), line  # FILE:LINE:COL
            continue
        # an agentd whose --check does not enforce min/max/choices yet: init refuses it
        sub = os.path.join(tmp, what)
        os.makedirs(sub)
        a = Agent(sub, text.replace("    dry_run: true\n", "    dry_run: true\n    enabled: true\n"))
        agents.append(a)
        a.start()
        wait_for(lambda: a.instance("zfs")["state"] == "failed", what="init refusing " + what)
        assert what in a.logtext(), a.logtext()
        a.stop()


if __name__ == "__main__":
    run_tests(globals())
