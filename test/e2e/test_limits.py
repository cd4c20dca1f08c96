#!/usr/bin/env python3
"""End-to-end: a plugin built against the first SDK release (oldmap.so: a descriptor
without config_entry_size, config entries without min/max/choices/format) still loads,
is checked and documented by today's agentd, its table walked with its own entry size
and no limits read from the bytes after each entry."""
import os
import subprocess

from harness import AGENTD, BUILD, Agent, run_tests

OLDMAP_SO = os.path.join(BUILD, "test", "plugins", "oldmap", "oldmap.so")


def instance(config):
    return "  old:\n    path: %s\n    config: %s\n" % (OLDMAP_SO, config)


def test_old_plugin_table(tmp, agents):
    a = Agent(tmp, instance("{level: 1000000, mode: whatever, limits: {hard: 2GiB}, period: 1h}"))
    agents.append(a)
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "valid (1 plugin instance)" in p.stdout, p
    # every key of the short table is still seen (a wrong stride would skip or misread)
    a.write_config(instance("{levle: 1, limits: {hrad: 1}, period: soon}"))
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert "%s:10:14: plugins.old.config.levle: unknown key" % a.config in p.stderr, p.stderr
    assert "plugins.old.config.limits.hrad: unknown key" in p.stderr, p.stderr
    assert "plugins.old.config.period: expected a duration" in p.stderr, p.stderr
    a.write_config(instance("{level: 1000000, limits: {hard: 2GiB}}"))
    a.start()
    info = a.ok("plugin", "info", "old")
    assert info["state"] == "running", info
    keys = [e["key"] for e in info["config_map"]]
    assert keys == ["level", "mode", "limits", "period"], info["config_map"]
    children = [e["key"] for e in info["config_map"][2]["children"]]
    assert children == ["soft", "hard"], info["config_map"]
    for e in info["config_map"] + info["config_map"][2]["children"]:
        assert not {"min", "max", "choices", "format"} & set(e), e
    cfg = info["config"]
    assert cfg == {"level": 1000000, "mode": "fast", "limits": {"soft": 1 << 30, "hard": 2 << 30},
                   "period": 5000}, cfg
    rc, out, _ = a.ctl("plugin", "info", "old", as_json=False)
    assert rc == 0 and "ALLOWED" in out and "limits.soft" in out, out


if __name__ == "__main__":
    run_tests(globals())
