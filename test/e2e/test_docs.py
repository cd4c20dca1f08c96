#!/usr/bin/env python3
"""The documentation a user reads: the man pages of build/man render without a single
groff warning (`groff -ww`, and `man --warnings` where man-db is), agentd.yaml(5) names
every key of every built plugin's config map (as the running agent reports it with
`agentctl plugin info PLUGIN --json`) and every core key, and the bash completion of
completion/agentctl, sourced in bash and driven through COMP_WORDS, offers the commands,
the running agent's instances and an instance's verbs, and stays quiet without an agent."""
import glob
import json
import os
import re
import shutil
import subprocess

from harness import AGENTCTL, BUILD, PLUGINS, Agent, Skip, run_tests

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
MAN = os.path.join(BUILD, "man")
REFERENCE = os.path.join(BUILD, "core", "organism-config-reference")
COMPLETION = os.path.join(SRC, "completion", "agentctl")


def pages():
    found = sorted(glob.glob(os.path.join(MAN, "*.[1-8]")))
    if not found:
        raise Skip("no man pages in %s (-Dman=false?)" % MAN)
    return found


def test_man_pages_render_without_warnings(tmp, agents):
    if not shutil.which("groff"):
        raise Skip("groff not installed (groff-base)")
    names = [os.path.basename(p) for p in pages()]
    for want in ("agentd.8", "agentctl.1", "agentd.yaml.5", "organism-plugin.7"):
        assert want in names, "%s not built (have %s)" % (want, names)
    for page in pages():
        p = subprocess.run(["groff", "-ww", "-man", "-Tutf8", page], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stderr == "", "groff -ww %s:\n%s" % (page, p.stderr)
        assert len(p.stdout) > 500, page + " renders (almost) empty"
        if shutil.which("man"):
            p = subprocess.run(["man", "--warnings", "-l", page], capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80"))
            assert p.returncode == 0 and p.stderr == "", "man --warnings %s:\n%s" % (page, p.stderr)


def key_paths(entries, prefix=""):
    """Dotted paths as agentd.yaml(5) writes them: object a.b, dict a.NAME.b, list a[].b."""
    for e in entries or []:
        yield prefix + e["key"]
        if e.get("children"):
            mid = {"dict": ".NAME.", "object list": "[]."}.get(e["type"], ".")
            yield from key_paths(e["children"], prefix + e["key"] + mid)


def man_source_text():
    with open(os.path.join(MAN, "agentd.yaml.5")) as f:
        text = f.read()
    for esc, plain in (("\\-", "-"), ("\\fB", ""), ("\\fR", ""), ("\\fI", ""), ("\\e", "\\")):
        text = text.replace(esc, plain)
    return text


def test_agentd_yaml_5_has_every_key(tmp, agents):
    pages()
    text = man_source_text()
    sos = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PLUGINS, "*.so")))
    assert "memory" in sos and "zfs" in sos, sos
    maps = {}
    if os.geteuid() == 0:
        # the agent's own account of each plugin file (root may load one for `plugin info`);
        # no instance runs, so no file is loaded twice
        a = Agent(tmp, "  {}\n")
        agents.append(a)
        a.start()
        for name in sos:
            info = a.ok("plugin", "info", name)
            assert info["plugin"] == name, "plugin info %s answered with plugin %s" % (name, info["plugin"])
            maps[name] = info["config_map"]
    else:
        print("  not root: plugin info cannot load plugins that are not running; the maps come from "
              "organism-config-reference --json")
    ref = json.loads(subprocess.run([REFERENCE, "--json", PLUGINS], capture_output=True, text=True, timeout=60,
                                    check=True).stdout)
    for p in ref["plugins"]:
        if p["plugin"] in maps:  # the generator reads the same tables agentd does
            assert list(key_paths(maps[p["plugin"]])) == list(key_paths(p["config_map"])), p["plugin"]
        maps.setdefault(p["plugin"], p["config_map"])
    missing = []
    for name in sos:
        assert re.search(r"^\.SS %s$" % re.escape(name), text, re.M), "no section for plugin " + name
        section = text.split("\n.SS %s\n" % name, 1)[1].split("\n.SS ", 1)[0]
        n = 0
        for path in key_paths(maps[name]):
            n += 1
            if not re.search(r"^%s \(" % re.escape(path), section, re.M):
                missing.append("%s: %s" % (name, path))
        print("  %s: %d keys" % (name, n))
    core = list(key_paths(ref["core"]))
    for path in core:
        # the file's sections (agent, bus, plugins, control) are the headings
        pattern = r"^\.SS %s$" if "." not in path else r"^%s \("
        if not re.search(pattern % re.escape(path), text, re.M):
            missing.append("core: " + path)
    print("  core: %d keys" % len(core))
    assert not missing, "agentd.yaml(5) lacks: " + ", ".join(missing)
    # the packaged default plugin folder is the one agentd compiles in
    assert "agent.plugin_dirs (string list; default" in text


def complete(words, env=None):
    """The completions bash offers for words (the last one being completed)."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
              'COMPREPLY=(); _agentctl; printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", script, "bash", COMPLETION] + list(words), capture_output=True, text=True,
                       timeout=30, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", "completion wrote to stderr: " + p.stderr
    return [w for w in p.stdout.split("\n") if w]


def test_bash_completion(tmp, agents):
    if not shutil.which("bash"):
        raise Skip("no bash")
    a = Agent(tmp, "  heartbeat:\n    plugin: example\n    config: {}\n"
                   "  second:\n    plugin: example\n    config: {}\n")
    agents.append(a)
    a.start()
    base = [AGENTCTL, "-s", a.sock]
    top = complete(base + [""])
    for want in ("status", "metrics", "plugin", "call", "bus", "config", "audit", "heartbeat", "second"):
        assert want in top, (want, top)
    assert complete(base + ["st"]) == ["status"]
    assert complete(base + ["plugin", ""]) == ["list", "info", "load", "unload", "reload", "enable", "disable"]
    assert sorted(complete(base + ["plugin", "info", ""])) == ["heartbeat", "second"]
    verbs = complete(base + ["heartbeat", ""])
    assert {"count", "echo", "reset"} <= set(verbs), verbs
    assert complete(base + ["call", "second", "ec"]) == ["echo"]
    assert complete(base + ["--js"]) == ["--json"]
    assert "--confirm" in complete(base + ["plugin", "unload", "second", "--"])
    # no agent on that socket: the static words only, nothing on stderr, no hang
    none = complete([AGENTCTL, "-s", os.path.join(tmp, "nothing.sock"), ""])
    assert "status" in none and "heartbeat" not in none, none
    assert complete([AGENTCTL, "-s", os.path.join(tmp, "nothing.sock"), "heartbeat", ""]) == []


if __name__ == "__main__":
    run_tests(globals())
