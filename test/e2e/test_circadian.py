#!/usr/bin/env python3
"""End-to-end tests of the circadian plugin in the real agentd, on a copy of the
cpufreq4 fixture sysroot (4 CPUs, governor "schedutil"): the phase published at start
and at an exact boundary a few seconds ahead (a real wall-clock timer, no polling),
governors following the phase, the manual override (set with expiry, clear, kept
across a restart), dry_run, audit reporting drift, and a bad config refused by --check (or at init).

The real clock decides which phase holds when a test runs: tests read it from
`agentctl circadian status` and expect the governor of that phase."""
import calendar
import os
import shutil
import subprocess
import time

from harness import AGENTD, Agent, Control, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "sysroots", "cpufreq4")
CPUS = 4
GOVERNOR = {"day": "performance", "night": "powersave"}

DAY_NIGHT = """\
  circadian:
    config:
      phases: {day: "07:00", night: "22:00"}
      actions:
        day: {governor: performance}
        night: {governor: powersave, gpu_cache_sync: true}
"""


def sysroot(tmp):
    root = os.path.join(tmp, "root")
    shutil.copytree(FIXTURE, root)
    return root


def governors(root):
    out = []
    for c in range(CPUS):
        with open(os.path.join(root, "sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % c)) as f:
            out.append(f.read().strip())
    return out


def set_governor(root, cpu, value):
    with open(os.path.join(root, "sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % cpu), "w") as f:
        f.write(value + "\n")


def start(tmp, agents, plugins=DAY_NIGHT, extra=""):
    root = sysroot(tmp)
    a = Agent(tmp, plugins, agent_extra="  sysroot: %s\n%s" % (root, extra))
    agents.append(a)
    a.start()
    return a, root


def subscribe(a, pattern):
    """A bus subscription that is live when this returns."""
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": pattern})
    ev = c.read()["event"]
    assert ev["subscribed"] is True, ev
    return c


def next_event(c):
    return c.read()["event"]


def other(phase):
    return "night" if phase == "day" else "day"


def test_start_and_exact_boundary(tmp, agents):
    # phases far from now, then a config reload with a boundary a few seconds ahead
    a, root = start(tmp, agents)
    st = a.ok("circadian", "status")
    assert st["phase"] in ("day", "night") and st["next"] == other(st["phase"]), st
    assert st["override"] is None and [p["phase"] for p in st["schedule"]] == ["day", "night"], st
    wait_for(lambda: governors(root) == [GOVERNOR[st["phase"]]] * CPUS, what="the phase's governor at start")

    sub = subscribe(a, "circadian.phase")
    boundary = int(time.time()) + 5  # ample for a config reload, even under ASan
    soon = time.strftime("%H:%M:%S", time.localtime(boundary))
    later = time.strftime("%H:%M:%S", time.localtime(boundary + 12 * 3600))
    a.write_config(("  circadian:\n    config:\n      phases: {soon: \"%s\", later: \"%s\"}\n"
                    "      actions: {soon: {governor: ondemand}, later: {governor: conservative}}\n") % (soon, later),
                   "  sysroot: %s\n" % root)
    a.ok("config", "reload")
    ev = next_event(sub)  # the new instance publishes its phase at start
    assert ev["subject"] == "circadian.phase", ev
    assert ev["payload"]["phase"] == "later" and ev["payload"]["next"] == "soon", ev
    assert ev["payload"]["next_at"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary))), ev
    assert governors(root) == ["conservative"] * CPUS
    ev = next_event(sub)  # and at the boundary, by its timer
    p = ev["payload"]
    assert p["phase"] == "soon" and p["next"] == "later" and p["override"] is False, p
    assert p["since"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(boundary)), p
    # published at the boundary (the timer's instant), not at some later poll
    ts = calendar.timegm(time.strptime(p["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + int(p["ts"][20:23]) / 1000.0
    assert boundary <= ts < boundary + 2, (boundary, p["ts"])
    wait_for(lambda: governors(root) == ["ondemand"] * CPUS, what="the new phase's governor")
    sub.close()
    assert a.ok("audit")["ok"] is True


def test_set_for_expiry_clear_and_restart(tmp, agents):
    a, root = start(tmp, agents)
    now = a.ok("circadian", "status")["phase"]
    forced = other(now)
    sub = subscribe(a, "circadian.phase")

    # an override with a short expiry: the phase, the governors, then back by itself
    st = a.ok("circadian", "set", forced, "--for", "2s")  # agentctl words: {"args": [P], "for": "2s"}
    assert st["phase"] == forced and st["override"]["phase"] == forced and st["override"]["until"], st
    ev = next_event(sub)
    assert ev["payload"]["phase"] == forced and ev["payload"]["override"] is True, ev
    assert governors(root) == [GOVERNOR[forced]] * CPUS  # actions come before the event
    ev = next_event(sub)  # the expiry timer fires in about 2 s
    assert ev["payload"]["phase"] == now and ev["payload"]["override"] is False, ev
    wait_for(lambda: governors(root) == [GOVERNOR[now]] * CPUS, what="governors back after the expiry")
    assert a.ok("circadian", "status")["override"] is None

    # until cleared, kept across a restart of agentd
    a.ok("circadian", "set", '{"phase": "%s"}' % forced)
    assert next_event(sub)["payload"]["phase"] == forced
    sub.close()
    a.stop()
    set_governor(root, 0, "schedutil")  # the restart re-applies the phase's actions
    a.start()
    st = a.ok("circadian", "status")
    assert st["phase"] == forced and st["override"]["phase"] == forced and st["override"]["until"] is None, st
    assert st["next"] is None, st
    wait_for(lambda: governors(root) == [GOVERNOR[forced]] * CPUS, what="the override's governor after restart")

    sub = subscribe(a, "circadian.phase")
    st = a.ok("circadian", "clear")
    assert st["override"] is None and st["phase"] == now, st
    assert next_event(sub)["payload"]["phase"] == now
    assert governors(root) == [GOVERNOR[now]] * CPUS
    sub.close()

    # errors reach agentctl as errors and change nothing
    rc, _, err = a.ctl("circadian", "set", '{"phase": "dusk"}')
    assert rc == 1 and 'unknown phase "dusk"' in err, (rc, err)
    rc, _, err = a.ctl("circadian", "set", '{"phase": "night", "for": "soon"}')
    assert rc == 1 and "bad duration" in err, (rc, err)
    assert a.ok("circadian", "status")["override"] is None

    # entering night asks gpucache for a full sync
    sync = subscribe(a, "gpu.cache.sync")
    if now == "night":
        a.ok("circadian", "set", '"day"')
    a.ok("circadian", "set", '"night"')
    p = next_event(sync)["payload"]
    assert p["gpu"] == "all" and p["reason"] == "circadian" and p["ts"].endswith("Z"), p
    sync.close()
    a.ok("circadian", "clear")


def test_dry_run_writes_nothing(tmp, agents):
    a, root = start(tmp, agents, extra="  dry_run: true\n")
    now = a.ok("circadian", "status")["phase"]
    a.ok("circadian", "set", '{"phase": "%s", "for": "1h"}' % other(now))
    assert a.ok("circadian", "status")["phase"] == other(now)
    assert governors(root) == ["schedutil"] * CPUS
    wait_for(lambda: "dry_run, would write /sys/devices/system/cpu/cpu3/cpufreq/scaling_governor" in a.logtext(),
             what="the dry_run log line")
    assert governors(root) == ["schedutil"] * CPUS
    audit = a.ok("call", "circadian", "status")  # read-only verbs still answer
    assert audit["override"]["phase"] == other(now)


def test_audit_reports_drift(tmp, agents):
    a, root = start(tmp, agents)
    phase = a.ok("circadian", "status")["phase"]
    want = GOVERNOR[phase]
    wait_for(lambda: a.ok("audit")["ok"] is True, what="a clean audit")
    set_governor(root, 2, "userspace")  # behind its back
    rc, res, _ = a.ctl("audit")
    assert rc == 1 and res["ok"] is False, res
    inst = [i for i in res["instances"] if i["instance"] == "circadian"][0]
    bad = [c for c in inst["checks"] if not c["ok"]]
    assert bad == [{"what": "cpu2 scaling_governor", "want": want, "have": "userspace", "ok": False}], bad
    rc, out, _ = a.ctl("audit", as_json=False)
    assert rc == 1 and "DRIFT" in out and "userspace" in out, out
    # entering a phase re-applies it: a round trip through an override repairs it
    a.ok("circadian", "set", '"%s"' % other(phase))
    a.ok("circadian", "clear")
    assert a.ok("audit")["ok"] is True


def test_bad_config_refused(tmp, agents):
    # a start time of the wrong form is a FILE:LINE:COL error of --check (the map's
    # format "hh:mm"), and agentd does not start on it
    root = sysroot(tmp)
    a = Agent(tmp, "  circadian:\n    config:\n      phases: {day: \"7:00\", night: \"22:00\"}\n",
              agent_extra="  sysroot: %s\n" % root)
    agents.append(a)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert '%s:11:21: plugins.circadian.config.phases.day: "7:00" is not a time of day hh:mm' % a.config \
        in p.stderr, p.stderr
    assert a.start(expect_ready=False) == 1
    assert governors(root) == ["schedutil"] * CPUS
    # a governor outside the fixed choices, at its own line and column
    a.write_config("  circadian:\n    config:\n      actions:\n        day: {governor: turbo}\n",
                   "  sysroot: %s\n" % root)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert '%s:12:25: plugins.circadian.config.actions.day.governor: "turbo" is not one of: performance,' % a.config \
        in p.stderr, p.stderr
    # what only init can tell (two phases at the same time) still fails the instance
    a.write_config("  circadian:\n    config:\n      phases: {day: \"07:00\", morning: \"07:00\"}\n",
                   "  sysroot: %s\n" % root)
    a.start()
    inst = wait_for(lambda: a.instance("circadian"), what="the instance")
    assert inst["state"] == "failed", inst
    assert "two phases cannot start at the same time" in a.logtext(), a.logtext()
    rc, _, err = a.ctl("circadian", "status")
    assert rc == 1 and "failed" in err, err
    assert governors(root) == ["schedutil"] * CPUS


if __name__ == "__main__":
    run_tests(globals())
