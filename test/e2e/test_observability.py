#!/usr/bin/env python3
"""End-to-end check of etc/prometheus/organism.rules.yml and etc/grafana/organism.json
against what agents really export: a host agent (memory and circadian on the host32g
fixture, zfs with the fake zfs/zpool of test/fixtures/bin, maestro) and a GPU-Pool agent
(gpuworker on the 12-GPU gpupool12 fixture) write their textfiles; every organism_*
metric named by a rule or a dashboard query must be a family in one of them, and
`promtool check metrics` must accept both files, `promtool check rules` the rules.
Names no fixture produces are allowed only where listed below, each checked against the
plugin that exports it: deploy's (they appear after a deploy run) and gpuworker's task
counters (after a task) must be strings in the built .so, gpucache's too once gpucache.so is built — and are printed as
"pending" while it is not, so the test holds before and after that plugin lands."""
import json
import os
import re
import shutil
import subprocess
import time

from harness import PLUGINS, Agent, Skip, run_tests, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
RULES = os.path.join(SRC, "etc", "prometheus", "organism.rules.yml")
DASHBOARD = os.path.join(SRC, "etc", "grafana", "organism.json")
SYSROOTS = os.path.join(SRC, "test", "fixtures", "sysroots")
BIN = os.path.join(SRC, "test", "fixtures", "bin")
# metric name prefix -> the plugin whose .so must contain it when no fixture run exports it
NOT_ON_FIXTURES = {"organism_deploy_": "deploy", "organism_gpucache_": "gpucache",
                   "organism_gpuworker_tasks_": "gpuworker"}  # counted from the first task on
NAME = re.compile(r"\borganism_[a-z0-9_]+\b")


def rule_exprs():
    """The expressions of the rules file (the YAML is ours: `expr:` lines, folded blocks)."""
    exprs, cur = [], None
    with open(RULES) as f:
        for line in f:
            m = re.match(r"^(\s*)expr:\s*(.*)$", line)
            if m:
                cur = [m.group(2)] if m.group(2) not in (">", "|") else []
                indent = len(m.group(1))
                exprs.append(cur)
                continue
            if cur is not None and line.strip() and len(line) - len(line.lstrip()) > indent:
                cur.append(line.strip())
                continue
            cur = None
    return [" ".join(e) for e in exprs]


def dashboard_exprs():
    with open(DASHBOARD) as f:
        d = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))
    walk(d["panels"])
    return out


def families(path):
    fam = set()
    with open(path) as f:
        for line in f:
            if line.startswith("# TYPE "):
                fam.add(line.split()[2])
            elif line.strip() and not line.startswith("#"):
                fam.add(re.split(r"[{ ]", line, 1)[0])
    return fam


def so_exports(plugin, name):
    path = os.path.join(PLUGINS, plugin + ".so")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return name[len("organism_"):].encode() in f.read()


def zfs_fake(tmp):
    d = os.path.join(tmp, "bin")
    os.makedirs(d)
    for tool in ("zfs", "zpool"):
        shutil.copy(os.path.join(BIN, tool), os.path.join(d, tool))
        os.chmod(os.path.join(d, tool), 0o755)
    now = int(time.time())
    ds = {n: {"type": "filesystem", "props": {}, "creation": now - 86400} for n in ("nvme", "nvme/organism", "zr", "arch")}
    with open(os.path.join(d, "zfs-state.json"), "w") as f:
        json.dump({"pools": {p: {"health": "ONLINE", "size": 1 << 40, "alloc": 1 << 38, "frag": 7}
                             for p in ("nvme", "zr", "arch")}, "datasets": ds, "snapshots": {}}, f)
    return d


def start_agents(tmp, agents):
    fake = zfs_fake(tmp)
    host_dir, gpu_dir = os.path.join(tmp, "host"), os.path.join(tmp, "gpu")
    for d in (host_dir, gpu_dir):
        os.makedirs(d, mode=0o755)
    host = Agent(host_dir, (
        "  memory:\n    dry_run: true\n    config: {}\n"
        "  circadian:\n    dry_run: true\n    config: {}\n"
        "  zfs:\n    dry_run: true\n    config:\n      pools: {fast: nvme, scratch: zr, archive: arch}\n"
        "      scrub: {enabled: false}\n      trim: {enabled: false}\n"
        "  task:\n    plugin: maestro\n    config: {}\n"),
        agent_extra=("  sysroot: %s\n  metrics_textfile: %s/metrics.prom\n  metrics_interval: 1s\n"
                     "  commands: {zfs: %s/zfs, zpool: %s/zpool}\n") % (
            os.path.join(SYSROOTS, "host32g"), host_dir, fake, fake), name="host")
    gpu = Agent(gpu_dir, "  gpuworker:\n    config: {task_root: %s/tasks, user: nobody, metrics_interval: 1s}\n" % gpu_dir,
                agent_extra="  sysroot: %s\n  metrics_textfile: %s/metrics.prom\n  metrics_interval: 1s\n" % (
                    os.path.join(SYSROOTS, "gpupool12"), gpu_dir), name="gpu-pool")
    for a in (host, gpu):
        agents.append(a)
        a.start()
    files = [os.path.join(host_dir, "metrics.prom"), os.path.join(gpu_dir, "metrics.prom")]
    # each organ's first metrics: the textfile is rewritten every second
    wait_for(lambda: os.path.exists(files[0]) and {"organism_zfs_pool_online", "organism_mem_available_bytes",
                                                   "organism_maestro_queued"} <= families(files[0]),
             timeout=30, what="the host agent's metrics")
    wait_for(lambda: os.path.exists(files[1]) and "organism_gpuworker_temp_celsius" in families(files[1]),
             timeout=30, what="the GPU-Pool agent's metrics")
    return files


def check_names(exprs, have, what):
    names = set()
    for e in exprs:
        names.update(NAME.findall(e))
    assert names, "no metric named in " + what
    missing, pending = [], []
    for n in sorted(names):
        if n in have:
            continue
        plugin = next((p for pre, p in NOT_ON_FIXTURES.items() if n.startswith(pre)), None)
        exported = so_exports(plugin, n) if plugin else False
        if exported:
            print("  %s: exported by %s.so, not produced on the fixtures" % (n, plugin))
        elif exported is None and plugin == "gpucache":
            pending.append(n)
        else:
            missing.append(n)
    if pending:
        print("  %s: pending, gpucache.so is not built yet: %s" % (what, ", ".join(pending)))
    assert not missing, "%s names metrics no agent exports: %s" % (what, ", ".join(missing))
    print("  %s: %d metric names, all exported" % (what, len(names)))


def test_rules_and_dashboard_name_exported_metrics(tmp, agents):
    files = start_agents(tmp, agents)
    have = families(files[0]) | families(files[1])
    check_names(rule_exprs(), have, "organism.rules.yml")
    check_names(dashboard_exprs(), have, "organism.json")
    # the gpucache name the rules use is the one the plugin is to export
    assert "organism_gpucache_used_ratio" in " ".join(rule_exprs())


def test_promtool(tmp, agents):
    promtool = shutil.which("promtool")
    if not promtool:
        raise Skip("promtool not installed (Debian package prometheus; scripts/deps.sh --test)")
    p = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    print("  " + p.stdout.strip().replace("\n", "; "))
    for path in start_agents(tmp, agents):
        with open(path) as f:
            p = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
            "promtool check metrics %s:\n%s%s" % (path, p.stdout, p.stderr)


def test_dashboard_shape(tmp, agents):
    with open(DASHBOARD) as f:
        d = json.load(f)
    titles = " ".join(p.get("title", "") for p in d["panels"]).lower()
    for want in ("memory", "arc", "phase", "pool", "gpu", "queue", "deploy"):
        assert want in titles, "no panel about " + want
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


if __name__ == "__main__":
    run_tests(globals())
