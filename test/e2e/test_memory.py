#!/usr/bin/env python3
"""End-to-end tests of the memory plugin ("membrain"): the real agentd and agentctl,
the real memory.so, a private copy of a fixture sysroot and the fake `qm` from
test/fixtures/bin. The tests change the fixture's /proc files and poll what the plugin
does (the ARC parameter file, qm.log, its status and journal), each wait bounded; the
PSI test runs on the real /proc under dry_run."""
import json
import os
import re
import shutil
import subprocess

from harness import AGENTD, Agent, Control, Skip, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
ARC_MAX = "/sys/module/zfs/parameters/zfs_arc_max"
SWAPPINESS = "/proc/sys/vm/swappiness"
GIB = 1024 ** 3


def setup(tmp, agents, fixture="host32g", config="{vmid: 100}", agent_extra="", interval="100ms", start=True):
    """Copies the fixture and the fake qm into tmp and starts agentd with one memory instance."""
    root = os.path.join(tmp, "root")
    shutil.copytree(os.path.join(FIXTURES, "sysroots", fixture), root)
    qm = os.path.join(tmp, "qm")
    shutil.copy(os.path.join(FIXTURES, "bin", "qm"), qm)
    os.chmod(qm, 0o755)
    extra = "  sysroot: %s\n  commands: {qm: %s}\n" % (root, qm) + agent_extra
    plugins = "  memory:\n    plugin: memory\n    interval: %s\n    config: %s\n" % (interval, config)
    a = Agent(tmp, plugins, agent_extra=extra)
    a.root = root
    agents.append(a)
    if start:
        a.start()
    return a


def read(a, path):
    try:
        with open(a.root + path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def set_mem_available(a, kib):
    p = a.root + "/proc/meminfo"
    with open(p) as f:
        text = f.read()
    text = re.sub(r"(?m)^MemAvailable:\s+\d+ kB$", "MemAvailable:   %d kB" % kib, text)
    with open(p + ".new", "w") as f:
        f.write(text)
    os.rename(p + ".new", p)  # the plugin never sees a half-written file


def qm_log(a):
    try:
        with open(os.path.join(a.tmp, "qm.log")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def status(a):
    return a.ok("memory", "status")


def evaluations_pass(a, n=3):
    """Waits until the plugin has evaluated n more times (observable, not a sleep)."""
    start = status(a)["evaluations"]
    wait_for(lambda: status(a)["evaluations"] >= start + n, timeout=10, what="%d more evaluations" % n)


def wait_day_profile(a, balloon=True):
    wait_for(lambda: read(a, ARC_MAX) == str(8 * GIB), timeout=10, what="the day ARC ceiling")
    wait_for(lambda: read(a, SWAPPINESS) == "10", timeout=10, what="swappiness 10")
    if balloon:
        wait_for(lambda: "balloon 100 24576" in qm_log(a), timeout=10, what="qm balloon 100 24576")
        wait_for(lambda: status(a)["levers"]["balloon"]["have"] == 24576, timeout=10, what="the balloon recorded")


def test_out_of_range_config_refused_by_check(tmp, agents):
    """swappiness: 300 is a FILE:LINE:COL fault of `agentd --check` (the plugin's map
    says 0 to 200), not an init failure at run time; agentd does not start on it."""
    config = "\n      vmid: 100\n      psi_window: 20s\n      profiles:\n        day: {swappiness: 300}\n"
    a = setup(tmp, agents, config=config, start=False)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    lines = [l for l in p.stderr.splitlines() if re.match(re.escape(a.config) + r":\d+:\d+: ", l)]
    assert "%s:15:19: plugins.memory.config.psi_window: 20s is above the maximum 10s" % a.config in lines, p.stderr
    assert "%s:17:27: plugins.memory.config.profiles.day.swappiness: 300 is above the maximum 200" % a.config \
        in lines, p.stderr
    assert len(lines) == 2, p.stderr
    assert a.start(expect_ready=False) == 1
    assert "swappiness: 300 is above the maximum 200" in a.logtext()
    assert qm_log(a) == [] and read(a, SWAPPINESS) != "300"
    # the limits are documented by plugin info, as the table and as JSON
    a.write_config("  memory:\n    plugin: memory\n    config: {vmid: 100}\n", "  sysroot: %s\n  commands: {qm: %s}\n"
                   % (a.root, os.path.join(tmp, "qm")))
    a.start()
    info = a.ok("plugin", "info", "memory")
    keys = {e["key"]: e for e in info["config_map"]}
    assert keys["psi_window"]["min"] == "500ms" and keys["psi_window"]["max"] == "10s", keys["psi_window"]
    sw = [c for c in keys["profiles"]["children"] if c["key"] == "swappiness"][0]
    assert (sw["min"], sw["max"]) == ("0", "200"), sw
    assert "min" not in keys["mem_low"], keys["mem_low"]
    rc, out, _ = a.ctl("plugin", "info", "memory", as_json=False)
    assert rc == 0 and "ALLOWED" in out, out
    row = [l for l in out.splitlines() if l.startswith("profiles.<name>.swappiness")]
    assert row and "0..200" in row[0], out
    row = [l for l in out.splitlines() if l.startswith("psi_window")]
    assert row and "500ms..10s" in row[0], out


def test_levers_follow_memory_with_hysteresis(tmp, agents):
    a = setup(tmp, agents)
    # at start, MemAvailable 12 GiB: the day profile
    wait_day_profile(a)
    assert qm_log(a)[:3] == ["config 100", "status 100 --verbose", "balloon 100 24576"], qm_log(a)

    # a subscriber for the alert, live before memory drops
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": "sys.mem.alert", "count": 1})
    assert c.read()["event"]["subscribed"] is True

    # low memory: the night profile within a tick
    n_qm = len(qm_log(a))
    set_mem_available(a, 2 * 1024 * 1024)
    wait_for(lambda: read(a, ARC_MAX) == str(4 * GIB), timeout=5, what="the ARC ceiling lowered")
    wait_for(lambda: "balloon 100 16384" in qm_log(a)[n_qm:], timeout=5, what="qm balloon 100 16384")
    assert qm_log(a)[n_qm:] == ["config 100", "status 100 --verbose", "balloon 100 16384"], qm_log(a)
    # qm has logged its call; wait for its answer to be taken in (journalled) too
    wait_for(lambda: status(a)["levers"]["balloon"]["have"] == 16384, timeout=5, what="the night balloon recorded")
    ev = c.read()["event"]
    assert ev["subject"] == "sys.mem.alert" and ev["payload"]["mem_available"] == 2 * GIB, ev
    assert ev["payload"]["ts"].endswith("Z"), ev
    c.close()
    st = status(a)
    assert st["alert"] is True and st["profile"] == "night", st

    # the hysteresis band (3..6 GiB): nothing moves
    set_mem_available(a, 4608 * 1024)
    n_qm = len(qm_log(a))
    actions = status(a)["actions"]
    evaluations_pass(a)
    assert read(a, ARC_MAX) == str(4 * GIB)
    assert len(qm_log(a)) == n_qm, qm_log(a)[n_qm - 3:]
    assert status(a)["actions"] == actions, (actions, a.ok("memory", "history"))

    # above mem_ok: back to the phase's profile (day)
    set_mem_available(a, 12 * 1024 * 1024)
    wait_for(lambda: read(a, ARC_MAX) == str(8 * GIB), timeout=5, what="the ARC ceiling raised")
    wait_for(lambda: qm_log(a)[n_qm:] == ["config 100", "status 100 --verbose", "balloon 100 24576"], timeout=5,
             what="qm balloon back")
    wait_for(lambda: status(a)["alert"] is False, timeout=5, what="the alert over")

    # the band from above: nothing moves either
    set_mem_available(a, 4608 * 1024)
    n_qm = len(qm_log(a))
    wait_for(lambda: not status(a)["event"], timeout=5, what="the levers settled")
    actions = status(a)["actions"]
    evaluations_pass(a)
    assert read(a, ARC_MAX) == str(8 * GIB) and len(qm_log(a)) == n_qm and status(a)["actions"] == actions

    # the journal holds every action, newest first, with its readings
    h = a.ok("memory", "history", "50")
    rows = h["actions"]
    assert h["count"] == len(rows) == status(a)["actions"] == 7, h
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    arc = [(r["before"], r["after"], r["reason"]) for r in reversed(rows) if r["lever"] == "arc_max"]
    assert arc == [(str(16 * GIB), str(8 * GIB), "start"), (str(8 * GIB), str(4 * GIB), "mem_low"),
                   (str(4 * GIB), str(8 * GIB), "mem_ok")], arc
    bal = [(r["before"], r["after"], r["reason"], r["detail"]) for r in reversed(rows) if r["lever"] == "balloon"]
    # before: what qm status --verbose read (the fake VM starts at its memory, 32 GiB)
    assert bal == [("32768", "24576", "start", "qm balloon 100 24576"),
                   ("24576", "16384", "mem_low", "qm balloon 100 16384"),
                   ("16384", "24576", "mem_ok", "qm balloon 100 24576")], bal
    sw = [(r["before"], r["after"]) for r in rows if r["lever"] == "swappiness"]
    assert sw == [("60", "10")], sw
    low = [r for r in rows if r["reason"] == "mem_low"]
    assert all(r["mem_available"] == 2 * GIB and r["alert"] is True and r["dry_run"] is False for r in low), low
    assert all(r["mem_available_after"] is not None for r in low), low  # filled at the next reading
    assert all(r["ts"].endswith("Z") and r["phase"] == "day" for r in rows)
    # history N and {"n": N}
    assert [r["id"] for r in a.ok("memory", "history", '{"n": 2}')["actions"]] == [r["id"] for r in rows[:2]]
    assert a.ok("memory", "history")["count"] == 7
    rc, _, err = a.ctl("memory", "history", '{"n": "x"}')
    assert rc != 0 and "positive integer" in err, (rc, err)

    # audit, status and metrics
    audit = a.ok("audit")
    inst = [i for i in audit["instances"] if i["instance"] == "memory"][0]
    assert inst["ok"] is True and {c["what"] for c in inst["checks"]} == {"arc_max", "swappiness", "balloon"}, inst
    st = status(a)
    assert st["phase"] == "day" and st["alert"] is False and st["readings"]["mem_available"] == 4608 * 1024 * 1024
    assert st["readings"]["arc_size"] == 7516192768 and st["readings"]["swap_free"] == 8123456 * 1024, st
    assert st["levers"]["arc_max"] == {"enabled": True, "have": 8 * GIB, "want": 8 * GIB, "would_set": None}, st
    assert st["psi_trigger"] is False and st["journal"] is True, st
    names = {m["name"] for m in a.ok("metrics") if m["instance"] == "memory"}
    for n in ("mem_available_bytes", "arc_size_bytes", "arc_target_bytes", "arc_hit_ratio", "mem_alert",
              "membrain_actions_total", "swap_in_per_second"):
        assert n in names, (n, names)
    # a lever moved behind the plugin's back: audit says so, the next tick puts it back
    with open(a.root + SWAPPINESS, "w") as f:
        f.write("60\n")
    rc, out, _ = a.ctl("audit")
    inst = [i for i in out["instances"] if i["instance"] == "memory"][0]
    if inst["ok"] is False:  # unless a tick came first
        assert [c for c in inst["checks"] if c["what"] == "swappiness"][0]["have"] == "60", inst
    wait_for(lambda: read(a, SWAPPINESS) == "10", timeout=5, what="swappiness reconciled")
    # a figure, not an assertion: the tick as agentd measures it
    inst = a.ok("plugin", "info", "memory")
    print("# memory tick inside agentd: last %s us, max %s us over %s ticks" % (
        inst.get("tick_us_last"), inst.get("tick_us_max"), inst.get("ticks")))


def test_restart_reads_balloon_before_writing(tmp, agents):
    """Read before write across restarts: the first start sets the balloon; the next two
    find it already at the target (qm status --verbose) and neither write nor journal."""
    a = setup(tmp, agents)
    wait_day_profile(a)
    actions = status(a)["actions"]
    assert qm_log(a) == ["config 100", "status 100 --verbose", "balloon 100 24576"], qm_log(a)
    for _ in range(2):
        a.stop()
        n_qm = len(qm_log(a))
        a.start()
        wait_for(lambda: status(a)["levers"]["balloon"]["have"] == 24576 and not status(a)["levers"]["balloon"]["busy"],
                 timeout=10, what="the balloon read after the restart")
        evaluations_pass(a)
        assert qm_log(a)[n_qm:] == ["config 100", "status 100 --verbose"], qm_log(a)
        h = a.ok("memory", "history", "50")
        assert h["count"] == actions, h
        assert [r["lever"] for r in h["actions"]].count("balloon") == 1, h
    assert a.ok("audit")["ok"] is True


def test_passthrough_vm_never_ballooned(tmp, agents):
    """SPEC §6: a VM with PCI passthrough has its RAM pinned: the balloon lever is refused
    once, saying why; the other levers go on."""
    a = setup(tmp, agents, start=False)
    with open(os.path.join(tmp, "qm.conf"), "w") as f:
        f.write("balloon: 8192\nhostpci0: 0000:03:00,pcie=1\nmemory: 16384\n")
    a.start()
    wait_for(lambda: status(a)["levers"]["balloon"].get("refused"), timeout=10, what="the balloon refused")
    wait_day_profile(a, balloon=False)
    set_mem_available(a, 1024 * 1024)
    wait_for(lambda: read(a, ARC_MAX) == str(4 * GIB), timeout=5, what="the ARC lowered")
    evaluations_pass(a)
    assert qm_log(a) == ["config 100"], qm_log(a)
    assert "PCI passthrough (hostpci0)" in status(a)["levers"]["balloon"]["refused"], status(a)
    assert a.logtext().count("the balloon lever is refused") == 1, a.logtext()[-3000:]
    assert "balloon" not in [r["lever"] for r in a.ok("memory", "history", "50")["actions"]]
    with open(os.path.join(tmp, "qm.conf")) as f:
        assert "balloon: 8192" in f.read()
    inst = [i for i in a.ok("audit")["instances"] if i["instance"] == "memory"][0]
    bal = [c for c in inst["checks"] if c["what"] == "balloon"][0]
    assert bal["ok"] is True and "RAM is pinned" in bal["have"], bal


def test_stopped_vm_gets_qm_set(tmp, agents):
    a = setup(tmp, agents, start=False)
    with open(os.path.join(tmp, "qm.status"), "w") as f:
        f.write("stopped\n")
    a.start()
    wait_for(lambda: "set 100 --balloon 24576" in qm_log(a), timeout=10, what="qm set 100 --balloon 24576")
    assert "balloon 100 24576" not in qm_log(a)
    wait_for(lambda: status(a)["levers"]["balloon"]["vm_status"] == "stopped", timeout=5, what="vm_status")
    # a failing qm: logged, backed off, not hammered; the file levers go on
    open(os.path.join(tmp, "qm.fail"), "w").close()
    set_mem_available(a, 1024 * 1024)
    wait_for(lambda: read(a, ARC_MAX) == str(4 * GIB), timeout=5, what="the ARC lowered")
    wait_for(lambda: status(a)["levers"]["balloon"]["failures"] >= 1, timeout=5, what="a qm failure")
    n = len(qm_log(a))
    evaluations_pass(a, 8)
    # without the back-off (1 s, then 2 s...) each of the 8 ticks would call qm
    assert len(qm_log(a)) - n <= 3, qm_log(a)
    assert "failed" in a.logtext() and "failing on purpose" in a.logtext()
    os.unlink(os.path.join(tmp, "qm.fail"))
    wait_for(lambda: status(a)["levers"]["balloon"]["have"] == 16384, timeout=10, what="qm recovered")


def test_phase_from_bus_switches_profile(tmp, agents):
    a = setup(tmp, agents)
    wait_day_profile(a)
    n_qm = len(qm_log(a))
    a.ok("bus", "pub", "circadian.phase", json.dumps({"phase": "night", "since": "2026-01-01T22:00:00Z",
                                                       "next": "day", "next_at": "2026-01-02T07:00:00Z",
                                                       "ts": "2026-01-01T22:00:00Z"}))
    wait_for(lambda: read(a, ARC_MAX) == str(4 * GIB), timeout=5, what="the night ARC ceiling")
    wait_for(lambda: "balloon 100 16384" in qm_log(a)[n_qm:], timeout=5, what="qm balloon 100 16384")
    st = status(a)
    assert st["phase"] == "night" and st["phase_source"] == "bus" and st["alert"] is False, st
    h = a.ok("memory", "history", "1")["actions"][0]
    assert h["reason"] == "phase night" and h["phase"] == "night", h

    # an unknown phase keeps the current one, logged once
    a.ok("bus", "pub", "circadian.phase", '{"phase": "dusk"}')
    a.ok("bus", "pub", "circadian.phase", '{"phase": "dusk"}')
    wait_for(lambda: 'phase "dusk" has no profile' in a.logtext(), timeout=5, what="the unknown phase logged")
    evaluations_pass(a)
    assert a.logtext().count('phase "dusk" has no profile') == 1
    assert status(a)["phase"] == "night" and read(a, ARC_MAX) == str(4 * GIB)

    # a reload keeps the phase and the balloon it set: no qm call, no change
    n_qm = len(qm_log(a))
    a.ok("plugin", "reload", "memory")
    st = status(a)
    assert st["phase"] == "night" and st["phase_source"] == "reload" and st["levers"]["balloon"]["have"] == 16384, st
    evaluations_pass(a)
    assert len(qm_log(a)) == n_qm and read(a, ARC_MAX) == str(4 * GIB)

    a.ok("bus", "pub", "circadian.phase", '{"phase": "day"}')
    wait_for(lambda: read(a, ARC_MAX) == str(8 * GIB), timeout=5, what="the day ARC ceiling again")


def test_phase_from_circadian_at_start(tmp, agents):
    """circadian publishes its phase while the instances start; memory, started after
    it, asks for the phase in force and starts in it: no action in the wrong profile."""
    import time as _t
    lt = _t.localtime()
    now_min = lt.tm_hour * 60 + lt.tm_min
    # a "night" that began two minutes ago and lasts an hour, whatever the hour now
    night = (now_min - 2) % 1440
    day = (now_min + 60) % 1440
    phases = '{day: "%02d:%02d", night: "%02d:%02d"}' % (day // 60, day % 60, night // 60, night % 60)
    a = setup(tmp, agents, start=False)
    with open(a.config) as f:
        text = f.read()
    text = text.replace("plugins:\n", "plugins:\n  circadian:\n    config: {phases: %s}\n" % phases, 1)
    with open(a.config, "w") as f:
        f.write(text)
    a.start()
    wait_for(lambda: read(a, ARC_MAX) == str(4 * GIB), timeout=5, what="the night ARC ceiling from the start")
    st = status(a)
    assert st["phase"] == "night" and st["phase_source"] == "bus", st
    assert all(h["phase"] == "night" for h in a.ok("memory", "history")["actions"]), a.ok("memory", "history")


def test_missing_arc_file_disables_only_that_lever(tmp, agents):
    a = setup(tmp, agents, start=False)
    os.unlink(a.root + ARC_MAX)
    a.start()
    wait_for(lambda: read(a, SWAPPINESS) == "10", timeout=10, what="swappiness 10")
    wait_for(lambda: "balloon 100 24576" in qm_log(a), timeout=10, what="the balloon")
    set_mem_available(a, 1024 * 1024)
    wait_for(lambda: "balloon 100 16384" in qm_log(a), timeout=5, what="the night balloon")
    evaluations_pass(a)
    assert read(a, ARC_MAX) is None
    log = a.logtext()
    assert log.count("the ARC lever is disabled") == 1, log[-3000:]
    st = status(a)
    assert st["levers"]["arc_max"]["enabled"] is False and st["sources"][ARC_MAX] is False, st
    assert st["readings"]["arc_size"] == 7516192768  # the ARC readings are still there
    inst = [i for i in a.ok("audit")["instances"] if i["instance"] == "memory"][0]
    assert inst["ok"] is True, inst


def test_box_without_zfs_or_psi(tmp, agents):
    a = setup(tmp, agents, fixture="nozfs", config="{}")
    wait_for(lambda: read(a, SWAPPINESS) == "10", timeout=10, what="swappiness 10")
    evaluations_pass(a)
    st = status(a)
    assert st["levers"]["arc_max"]["enabled"] is False and st["levers"]["balloon"]["configured"] is False, st
    assert st["readings"]["arc_size"] is None and st["readings"]["psi_some_avg10"] is None, st
    assert st["readings"]["mem_available"] == 9437184 * 1024 and st["readings"]["swap_in_per_second"] == 0, st
    assert qm_log(a) == []
    log = a.logtext()
    for what in ("no ARC readings", "no pressure readings", "the ARC lever is disabled"):
        assert log.count(what) == 1, (what, log[-3000:])
    assert a.ok("memory", "history")["count"] == 1


def test_dry_run_writes_nothing(tmp, agents):
    a = setup(tmp, agents, agent_extra="  dry_run: true\n")
    wait_for(lambda: status(a)["actions"] == 3, timeout=10, what="three actions that would be taken")
    evaluations_pass(a)
    assert read(a, ARC_MAX) == str(16 * GIB) and read(a, SWAPPINESS) == "60"
    # reads only: qm config and qm status, never a write
    assert qm_log(a) and all(l in ("config 100", "status 100 --verbose") for l in qm_log(a)), qm_log(a)
    log = a.logtext()
    assert "dry_run, would write %s" % ARC_MAX in log, log[-3000:]
    assert "dry_run, would run" in log and "balloon 100 24576" in log, log[-3000:]
    assert status(a)["actions"] == 3  # said once, not on every tick
    rows = a.ok("memory", "history")["actions"]
    assert len(rows) == 3 and all(r["dry_run"] is True for r in rows), rows
    st = status(a)
    assert st["dry_run"] is True and st["levers"]["arc_max"]["would_set"] == 8 * GIB, st
    assert st["levers"]["balloon"]["would_set"] == 24576 and st["levers"]["balloon"]["have"] is None, st
    set_mem_available(a, 1024 * 1024)
    wait_for(lambda: status(a)["actions"] == 5, timeout=5, what="the night profile announced")
    evaluations_pass(a)
    assert read(a, ARC_MAX) == str(16 * GIB)
    assert all(l in ("config 100", "status 100 --verbose") for l in qm_log(a)), qm_log(a)


def psi_fds(pid):
    """agentd's descriptors open on /proc/pressure/memory."""
    out = []
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, f)) == "/proc/pressure/memory":
                out.append(f)
        except OSError:
            pass  # closed meanwhile
    return out


def test_psi_trigger_on_real_proc(tmp, agents):
    if not os.path.exists("/proc/pressure/memory"):
        raise Skip("this kernel has no /proc/pressure/memory (CONFIG_PSI off or psi=0)")
    # the real system, read-only: dry_run, no vmid, thresholds that never alert
    plugins = ("  memory:\n    plugin: memory\n    interval: 1h\n"
               "    config: {mem_low: 1MiB, mem_ok: 2MiB, psi_trigger: true}\n")
    a = Agent(tmp, plugins, agent_extra="  dry_run: true\n")
    agents.append(a)
    a.start()
    wait_for(lambda: status(a)["evaluations"] >= 1, timeout=10, what="the first evaluation")
    st = status(a)
    if not st["psi_trigger"]:
        raise Skip("the kernel refused a PSI trigger: %s" % st["psi_trigger_error"])
    assert st["psi_trigger_error"] is None and st["readings"]["psi_some_avg10"] is not None, st
    assert "PSI trigger armed" in a.logtext()
    # the fd is really a PSI trigger watched by agentd: one of its descriptors is
    # /proc/pressure/memory, opened for writing
    psi = psi_fds(a.proc.pid)
    assert len(psi) == 1, psi
    with open("/proc/%d/fdinfo/%s" % (a.proc.pid, psi[0])) as f:
        flags = int(re.search(r"flags:\s+(\d+)", f.read()).group(1), 8)
    assert flags & os.O_RDWR and flags & os.O_NONBLOCK, oct(flags)
    # unloading the instance closes it
    a.ok("plugin", "unload", "memory", "--confirm")
    wait_for(lambda: not psi_fds(a.proc.pid), timeout=5, what="the trigger closed")

if __name__ == "__main__":
    run_tests(globals())
