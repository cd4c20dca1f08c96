#!/usr/bin/env python3
"""End-to-end tests of the deploy plugin in the real agentd, on real git repositories
made here (git init, commits whose scripts pass, fail, hang or are missing) fetched by
libgit2 over file:// URLs, and a small local HTTP server that mimics GitHub's commits
endpoint with ETag and 304 (counting requests) for the libcurl detection.

Covered: a new commit becomes a release and the candidate; accept moves current; a
failed commit is not rebuilt on later polls but is on retry; rollback only onto the
previously accepted release (never a failed, rejected or never-accepted one) and is
refused when there is none; scripts run as the configured user with a minimal
environment; time-outs kill; a missing test.sh fails the run; an unchanged GitHub poll
is one conditional request answered 304; kill -9 of agentd at many instants of runs
and accepts leaves `current` a valid link to a complete release, no `.tmp` release
and no run left "running"."""
import http.server
import json
import os
import pwd
import random
import signal
import subprocess
import threading
import time

from harness import Agent, Skip, run_tests, wait_for

GOOD = "#!/bin/sh\necho built $DEPLOY_COMMIT\nid -u > built.uid\nenv > built.env\nexit 0\n"
TEST_OK = "#!/bin/sh\necho tests pass\nexit 0\n"
TEST_FAIL = "#!/bin/sh\necho 'assertion failed: 1 == 2' >&2\nexit 3\n"
TEST_HANG = "#!/bin/sh\nsleep 60 &\nsleep 60\n"


def git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e")
    return subprocess.run(["git", "-C", repo] + list(args), check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def make_repo(tmp):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        raise Skip("git is not installed")
    repo = os.path.join(tmp, "repo")
    os.makedirs(repo)
    git(repo, "init", "-q", "-b", "main")
    return repo


def commit(repo, msg, build=GOOD, test=TEST_OK, files=None):
    sd = os.path.join(repo, "scripts")
    os.makedirs(sd, exist_ok=True)
    for name, text in (("build.sh", build), ("test.sh", test)):
        p = os.path.join(sd, name)
        if text is None:
            if os.path.exists(p):
                git(repo, "rm", "-q", "scripts/" + name)
            continue
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, 0o755)
    with open(os.path.join(repo, "VERSION"), "w") as f:
        f.write(msg + "\n")
    for name, text in (files or {}).items():
        with open(os.path.join(repo, name), "w") as f:
            f.write(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", msg)
    return git(repo, "rev-parse", "HEAD")


def config(tmp, repo, extra=""):
    return ("  web:\n    plugin: deploy\n    config:\n"
            "      url: file://%s\n      branch: main\n      root: %s\n      poll_interval: 1h\n"
            "      user: nobody\n      build_timeout: 20s\n      test_timeout: 4s\n%s") % (
                repo, os.path.join(tmp, "deploy"), extra)


def start(tmp, agents, repo, extra="", env=None):
    if os.geteuid() != 0:
        raise Skip("needs root: builds switch to the unprivileged user nobody")
    a = Agent(tmp, config(tmp, repo, extra))
    agents.append(a)
    a.start(env=env)
    idle(a)
    return a


def status(a):
    return a.ok("call", "web", "status")


def idle(a, timeout=30):
    return wait_for(lambda: (lambda s: s if s["phase"] == "idle" and not s["trigger_pending"] and s["last_poll"] != "never" else None)(status(a)),
                    timeout=timeout, what="deploy idle")


def trigger(a, verb="trigger"):
    a.ok("call", "web", verb)
    return idle(a)


def root(tmp):
    return os.path.join(tmp, "deploy")


def link(tmp, name):
    p = os.path.join(root(tmp), name)
    return os.readlink(p) if os.path.islink(p) else None


def verdict(a, verb, check=0):
    return a.ctl("call", "web", verb, "--confirm", "true", check=check)[1]


def test_candidate_accept_reject_rollback(tmp, agents):
    repo = make_repo(tmp)
    sha_a = commit(repo, "A")
    a = start(tmp, agents, repo)
    s = status(a)
    assert s["candidate"] and s["candidate"].endswith(sha_a[:8]), s
    assert s["runs"][0]["status"] == "success", s
    assert link(tmp, "candidate") == "releases/" + s["candidate"]
    rel = os.path.join(root(tmp), "releases", s["candidate"])
    assert open(os.path.join(rel, "VERSION")).read() == "A\n"
    assert not os.path.exists(os.path.join(root(tmp), "mirror", "index")), "the mirror got an index"
    res = a.ok("call", "web", "last-result")
    assert res["status"] == "success" and res["commit"] == sha_a and res["steps"] == {"build": "ok", "test": "ok"}, res
    # a verdict needs --confirm
    rc, out, _ = a.ctl("call", "web", "accept")
    assert rc == 1 and "confirm" in json.dumps(out), out
    rel_a = s["candidate"]
    s = verdict(a, "accept")
    assert s["current"] == rel_a and s["candidate"] is None, s
    assert link(tmp, "current") == "releases/" + rel_a and link(tmp, "candidate") is None
    # no earlier accepted release: rollback refused clearly
    out = verdict(a, "rollback", check=1)
    assert "no earlier accepted release" in json.dumps(out), out

    # B: tests fail -> failed, not rebuilt by later polls, rebuilt by retry
    sha_b = commit(repo, "B", test=TEST_FAIL)
    s = trigger(a)
    assert s["runs"][0]["commit"] == sha_b and s["runs"][0]["status"] == "fail", s
    assert s["runs"][0]["test"] == "fail" and s["candidate"] is None, s
    n_runs = len(a.ok("call", "web", "runs", "50")["runs"])
    for _ in range(3):
        trigger(a)
    assert len(a.ok("call", "web", "runs", "50")["runs"]) == n_runs, "a failed commit was rebuilt by a poll"
    logs = a.ok("call", "web", "logs", "test")
    assert "assertion failed" in logs["text"], logs
    trigger(a, "retry")
    assert len(a.ok("call", "web", "runs", "50")["runs"]) == n_runs + 1, "retry did not rebuild"

    # C: green, rejected
    sha_c = commit(repo, "C")
    s = trigger(a)
    rel_c = s["candidate"]
    assert rel_c.endswith(sha_c[:8]), s
    s = verdict(a, "reject")
    assert s["candidate"] is None and link(tmp, "candidate") is None, s
    trigger(a)
    assert status(a)["candidate"] is None, "a rejected commit was rebuilt"

    # D: green, accepted; rollback goes to A, never B or C; then nothing earlier
    sha_d = commit(repo, "D")
    s = trigger(a)
    rel_d = s["candidate"]
    assert rel_d.endswith(sha_d[:8]), s
    s = verdict(a, "accept")
    assert s["current"] == rel_d and s["last_accepted"] == rel_a, s
    s = verdict(a, "rollback")
    assert s["current"] == rel_a, s
    assert link(tmp, "current") == "releases/" + rel_a
    out = verdict(a, "rollback", check=1)
    assert "no earlier accepted release" in json.dumps(out), out
    assert link(tmp, "current") == "releases/" + rel_a


def test_user_env_timeout_missing(tmp, agents):
    repo = make_repo(tmp)
    commit(repo, "A")
    a = start(tmp, agents, repo, env={"SECRET_OF_THE_AGENT": "hunter2"})
    s = status(a)
    rel = os.path.join(root(tmp), "releases", s["candidate"])
    assert open(os.path.join(rel, "built.uid")).read().strip() == str(pwd.getpwnam("nobody").pw_uid)
    env = open(os.path.join(rel, "built.env")).read()
    assert "SECRET_OF_THE_AGENT" not in env, env
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in env and "DEPLOY_COMMIT=" in env, env

    commit(repo, "hang", test=TEST_HANG)
    t0 = time.monotonic()
    s = trigger(a)
    assert s["runs"][0]["test"] == "timeout", s
    assert time.monotonic() - t0 < 20
    out = subprocess.run(["pgrep", "-u", "nobody", "-f", "sleep 60"], capture_output=True, text=True).stdout
    assert not out.strip(), "processes of the timed-out test survived: " + out

    commit(repo, "no tests", test=None)
    s = trigger(a)
    assert s["runs"][0]["status"] == "fail" and "test.sh missing" in (s["runs"][0]["reason"] or ""), s


class GitHub(http.server.BaseHTTPRequestHandler):
    repo = None
    counts = {"200": 0, "304": 0, "conditional": 0, "plain": 0}

    def do_GET(self):
        sha = git(self.repo, "rev-parse", "HEAD")
        etag = '"%s"' % sha
        inm = self.headers.get("If-None-Match")
        self.counts["conditional" if inm else "plain"] += 1
        if not self.path.endswith("/repos/o/r/commits/main"):
            self.send_response(404)
            self.end_headers()
            return
        if inm == etag:
            self.counts["304"] += 1
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.counts["200"] += 1
        body = json.dumps({"sha": sha}).encode()
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("X-RateLimit-Remaining", "4999")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_github_unchanged_poll_is_one_304(tmp, agents):
    repo = make_repo(tmp)
    commit(repo, "A")
    GitHub.repo = repo
    srv = http.server.HTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        api = "http://127.0.0.1:%d" % srv.server_address[1]
        a = start(tmp, agents, repo, extra="      detect: github\n      api_url: %s\n      github_repo: o/r\n" % api)
        s = status(a)
        assert s["runs"][0]["status"] == "success" and GitHub.counts["200"] == 1, (s, GitHub.counts)
        before = dict(GitHub.counts)
        for _ in range(5):
            trigger(a)
        assert GitHub.counts["304"] - before["304"] == 5, GitHub.counts
        assert GitHub.counts["200"] == before["200"] and GitHub.counts["plain"] == before["plain"], GitHub.counts
        assert len(status(a)["runs"]) == 1 and status(a)["rate_remaining"] == 4999
        sha_b = commit(repo, "B")
        s = trigger(a)
        assert s["runs"][0]["commit"] == sha_b and GitHub.counts["200"] == 2, (s, GitHub.counts)
    finally:
        srv.shutdown()


def current_valid(tmp):
    p = os.path.join(root(tmp), "current")
    if not os.path.lexists(p):
        return True  # never accepted yet
    t = os.readlink(p)
    assert t.startswith("releases/") and not t.endswith(".tmp"), t
    assert os.path.isfile(os.path.join(p, "VERSION")), "current dangles or is incomplete: " + t
    return True


def test_kill9_current_always_valid(tmp, agents):
    repo = make_repo(tmp)
    commit(repo, "v0")
    a = start(tmp, agents, repo)
    verdict(a, "accept")
    a.proc.kill()
    a.proc.wait()
    rnd = random.Random(7)
    for i in range(20):
        commit(repo, "v%d" % (i + 1), files={"f%d" % k: "x" * 100 for k in range(50)})
        a.start()
        # a run starts at once (the first poll); an accept and a rollback race the kill
        delay = rnd.uniform(0, 0.4)
        cand = None
        try:
            cand = status(a)["candidate"]
        except AssertionError:
            pass
        if cand:
            subprocess.Popen(a_cmd(a, "accept"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 3 == 2:
            subprocess.Popen(a_cmd(a, "rollback"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)  # the kill lands at a random instant, which is the point
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        current_valid(tmp)
    a.start()
    s = idle(a)
    current_valid(tmp)
    assert all(r["status"] != "running" for r in a.ok("call", "web", "runs", "100")["runs"])
    wait_for(lambda: not [n for n in os.listdir(os.path.join(root(tmp), "releases")) if ".tmp" in n],
             what="the .tmp releases removed")
    # every release folder left is one the store knows (none orphaned by a kill)
    known = set()
    for r in a.ok("call", "web", "runs", "100")["runs"]:
        known.add(r["run_id"])
    wait_for(lambda: set(os.listdir(os.path.join(root(tmp), "releases"))) <= known, what="orphan releases removed")
    cur = link(tmp, "current")
    assert cur and s["current"] and cur == "releases/" + s["current"], (cur, s)


HEALTH = "#!/bin/sh\n[ ! -e \"$FLAG\" ] || { echo unhealthy; exit 1; }\necho healthy\n"


def files_health():
    return {"scripts/healthcheck.sh": HEALTH}


def commit_h(repo, msg, **kw):
    os.makedirs(os.path.join(repo, "scripts"), exist_ok=True)
    sha = commit(repo, msg, files=files_health(), **kw)
    os.chmod(os.path.join(repo, "scripts", "healthcheck.sh"), 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", msg + " (x)")
    return git(repo, "rev-parse", "HEAD")


def test_healthcheck_promote_and_rollback(tmp, agents):
    repo = make_repo(tmp)
    flag = os.path.join(tmp, "unhealthy")
    commit_h(repo, "A")
    a = start(tmp, agents, repo, extra="      auto_promote: true\n      auto_rollback: true\n"
              "      env: {FLAG: %s}\n" % flag)
    s = wait_for(lambda: (lambda s: s if s["current"] else None)(idle(a)), what="auto_promote of A")
    rel_a = s["current"]
    assert s["candidate"] is None and link(tmp, "current") == "releases/" + rel_a, s
    # B while unhealthy: its check as a candidate fails, it stays candidate; accepted by hand
    commit_h(repo, "B")
    open(flag, "w").close()
    s = trigger(a)
    # the flag makes B's candidate check fail: not promoted
    assert s["current"] == rel_a and s["candidate"] and s["candidate"] != rel_a, s
    rel_b = s["candidate"]
    os.unlink(flag)
    s = verdict(a, "accept")
    s = idle(a)
    assert s["current"] == rel_b, s
    # now unhealthy: a manual accept of C is followed by its failing check -> back to B
    commit_h(repo, "C")
    s = trigger(a)
    rel_c = s["current"]
    assert rel_c != rel_b, s  # auto-promoted while healthy
    open(flag, "w").close()
    commit_h(repo, "D")
    s = trigger(a)
    rel_d = s["candidate"]
    assert rel_d and s["current"] == rel_c, s
    verdict(a, "accept")
    s = wait_for(lambda: (lambda s: s if s["phase"] == "idle" and s["current"] == rel_c else None)(status(a)),
                 what="auto_rollback to C")
    assert link(tmp, "current") == "releases/" + rel_c
    text = a.ok("call", "web", "logs", "healthcheck", rel_d)["text"]
    assert "unhealthy" in text, text


def test_triggers_coalesce_two_instances(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("needs root")
    repo1, repo2 = make_repo(tmp), os.path.join(tmp, "repo2")
    os.makedirs(repo2)
    git(repo2, "init", "-q", "-b", "main")
    slow = "#!/bin/sh\nsleep 1\nexit 0\n"
    commit(repo1, "A", build=slow)
    commit(repo2, "X")
    text = config(tmp, repo1) + config(tmp, repo2).replace("  web:", "  api:").replace(
        os.path.join(tmp, "deploy"), os.path.join(tmp, "deploy2"))
    a = Agent(tmp, text)
    agents.append(a)
    a.start()
    wait_for(lambda: (status(a).get("running") or {}).get("step") == "build", what="A building")
    sha_b = commit(repo1, "B", build=slow)
    for _ in range(3):
        a.ok("call", "web", "trigger")
        a.ok("bus", "pub", "deploy.web.trigger", "{}")  # the bus subject does the same
    s = idle(a)
    runs = a.ok("call", "web", "runs", "50")["runs"]
    assert [r["commit"] for r in runs][:1] == [sha_b] and len(runs) == 2, runs
    s2 = wait_for(lambda: (lambda s: s if s["candidate"] else None)(a.ok("call", "api", "status")),
                  what="the second instance's candidate")
    assert os.path.islink(os.path.join(tmp, "deploy2", "candidate")), s2


def test_bad_inputs_are_clear_and_recoverable(tmp, agents):
    repo = make_repo(tmp)
    commit(repo, "A")
    a = start(tmp, agents, repo.replace("repo", "nothere"))
    s = status(a)
    assert s["last_poll"] == "error" and s["last_error"], s
    a.stop()
    agents.remove(a)
    # a branch that does not exist
    a = Agent(tmp, config(tmp, repo).replace("branch: main", "branch: nope"))
    agents.append(a)
    a.start()
    s = idle(a)
    assert "no branch nope" in s["last_error"], s
    a.stop()
    agents.remove(a)
    # a corrupt mirror is moved aside and fetched again; the run goes on
    a = start(tmp, agents, repo)
    assert status(a)["candidate"]
    mirror = os.path.join(root(tmp), "mirror")
    for name in ("HEAD", "config"):
        with open(os.path.join(mirror, name), "w") as f:
            f.write("garbage\n")
    sha = commit(repo, "B")
    s = trigger(a)
    assert s["runs"][0]["commit"] == sha and s["runs"][0]["status"] == "success", s
    assert [n for n in os.listdir(root(tmp)) if n.startswith("mirror.corrupt-")]


def test_github_wrong_token(tmp, agents):
    repo = make_repo(tmp)
    commit(repo, "A")

    class Denied(GitHub):
        def do_GET(self):
            if self.headers.get("Authorization") != "Bearer right":
                body = b'{"message": "Bad credentials"}'
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            GitHub.do_GET(self)

    Denied.repo = repo
    srv = http.server.HTTPServer(("127.0.0.1", 0), Denied)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tok = os.path.join(tmp, "token")
    with open(tok, "w") as f:
        f.write("wrong\n")
    try:
        api = "http://127.0.0.1:%d" % srv.server_address[1]
        a = start(tmp, agents, repo, extra="      detect: github\n      api_url: %s\n      github_repo: o/r\n"
                  "      token_file: %s\n" % (api, tok))
        s = status(a)
        assert "401" in s["last_error"] and "Bad credentials" in s["last_error"] and not s["runs"], s
        with open(tok, "w") as f:
            f.write("right\n")
        a.ok("plugin", "reload", "web")
        s = idle(a)
        assert s["last_error"] is None and s["runs"] and s["runs"][0]["status"] == "success", s
    finally:
        srv.shutdown()


def test_dry_run_builds_and_switches_nothing(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("needs root")
    repo = make_repo(tmp)
    commit(repo, "A")
    a = Agent(tmp, config(tmp, repo).replace("    config:\n", "    dry_run: true\n    config:\n", 1))
    agents.append(a)
    a.start()
    wait_for(lambda: "dry_run: not polling" in a.logtext(), what="the dry_run poll")
    s = status(a)
    assert s["runs"] == [] and s["head"] is None, s
    assert not os.path.exists(os.path.join(root(tmp), "mirror"))
    out = verdict(a, "rollback", check=1)
    assert "dry_run" in json.dumps(out), out


def test_retention_keeps_current_candidate_and_rollback_target(tmp, agents):
    repo = make_repo(tmp)
    commit(repo, "A")
    a = start(tmp, agents, repo, extra="      keep_releases: 1\n      keep_runs: 3\n")
    rel_a = verdict(a, "accept")["current"]
    commit(repo, "B")
    rel_b = trigger(a)["candidate"]
    rel_b = verdict(a, "accept")["current"]
    sha_c = commit(repo, "C", test=TEST_FAIL)
    trigger(a)
    for v in ("D", "E"):
        commit(repo, v)
        s = trigger(a)
    rel_e = s["candidate"]
    wait_for(lambda: len([n for n in os.listdir(os.path.join(root(tmp), "releases"))]) <= 4,
             what="pruning")  # removal runs on the worker pool
    left = sorted(os.listdir(os.path.join(root(tmp), "releases")))
    # current (B), candidate (E), the rollback target (A) and keep_releases=1 more (D)
    assert rel_a in left and rel_b in left and rel_e in left and len(left) == 4, left
    assert not [n for n in left if n.endswith(sha_c[:8])], left  # the failed one went first
    wait_for(lambda: len(os.listdir(os.path.join(root(tmp), "runs"))) == 3, what="runs pruned to keep_runs")
    assert len(a.ok("call", "web", "runs", "50")["runs"]) == 3
    s = verdict(a, "rollback")
    assert s["current"] == rel_a and os.path.isfile(os.path.join(root(tmp), "current", "VERSION")), s


def test_reload_during_a_run(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("needs root")
    repo = make_repo(tmp)
    sha = commit(repo, "A", build="#!/bin/sh\nsleep 2\nexit 0\n")
    a = Agent(tmp, config(tmp, repo))
    agents.append(a)
    a.start()
    wait_for(lambda: (status(a).get("running") or {}).get("step") == "build", what="the build running")
    execs = a.ok("plugin", "info", "web")["execs"]
    assert len(execs) == 1 and execs[0]["generation"] == 1, execs
    a.ok("plugin", "reload", "web")
    # the new generation adopted the build: the same process goes on, the run is not
    # interrupted, it ends once, green, without a retry
    after = a.ok("plugin", "info", "web")
    assert after["generation"] == 2 and [x["pid"] for x in after["execs"]] == [execs[0]["pid"]], after
    assert status(a)["running"]["step"] == "build"
    s = wait_for(lambda: (lambda s: s if s["candidate"] else None)(idle(a)), timeout=60, what="the run")
    runs = a.ok("call", "web", "runs", "10")["runs"]
    assert [r["status"] for r in runs] == ["success"], runs
    assert runs[0]["commit"] == sha and s["candidate"] == runs[0]["run_id"], (runs, s)
    with open(os.path.join(root(tmp), "runs", runs[0]["run_id"], "agent.log")) as f:
        log = f.read()
    assert "build: taken over by the new build" in log and "interrupted" not in log, log


def a_cmd(a, verb):
    from harness import AGENTCTL
    return [AGENTCTL, "-s", a.sock, "call", "web", verb, "--confirm", "true"]


if __name__ == "__main__":
    run_tests(globals())
