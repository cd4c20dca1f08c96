#!/usr/bin/env python3
"""End-to-end: `agentctl agents` and `agentctl audit --all-agents` (and `--agent`
repeated) over a real nats-server with token auth and three agents: every agent learns
the others from their announcements (organism.agent.<name>) without waiting for the
periodic one; one table (or one JSON object per agent) over all of them; an agent killed
-9 is a row that says it did not answer, within a bounded time, and the exit status is 1;
an agent without NATS audits itself alone."""
import json
import os
import signal
import time

from harness import Agent, NatsServer, run_tests, wait_for

TOKEN = "audit-token-0123456789"


def nats_agent(tmp, agents, name, url):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    a = Agent(d, "  ex: {plugin: example, interval: 1h}\n", name=name)
    with open(a.config, "a") as f:
        f.write("bus:\n  nats:\n    url: %s\n    token: %s\n    reconnect_wait: 100ms\n" % (url, TOKEN))
    agents.append(a)
    return a


def known(a):
    return sorted(x["agent"] for x in a.ok("agents")["agents"])


def three(tmp, agents):
    srv = NatsServer(tmp, extra=["--auth", TOKEN]).start()
    agents.append(srv)
    ags = [nats_agent(tmp, agents, n, srv.url) for n in ("alpha", "beta", "gamma")]
    agents.remove(srv)
    agents.append(srv)  # stopped last: agents flush to a live server and stop at once
    for a in ags:
        a.start()
    # announcements are every 10 s; a hello is answered at once: well within that
    t0 = time.monotonic()
    for a in ags:
        wait_for(lambda: known(a) == ["alpha", "beta", "gamma"], timeout=8, what="%s to know the others" % a.name)
    assert time.monotonic() - t0 < 8
    return srv, ags


def test_agents_lists_peers(tmp, agents):
    srv, (a, b, c) = three(tmp, agents)
    r = a.ok("agents")
    assert r["self"] == "alpha" and r["nats"] is True, r
    me = [x for x in r["agents"] if x.get("self")]
    assert [x["agent"] for x in me] == ["alpha"], r
    for x in r["agents"]:
        if not x.get("self"):
            assert x["stale"] is False and x["age_ms"] < 15000 and x["version"], x
    rc, out, _ = a.ctl("agents", as_json=False)
    assert rc == 0 and "this agent" in out and "beta" in out and "gamma" in out, out


def test_audit_all_agents(tmp, agents):
    srv, (a, b, c) = three(tmp, agents)
    rc, out, err = a.ctl("audit", "--all-agents")
    assert rc == 0, (rc, out, err)
    assert isinstance(out, list) and [o["agent"] for o in out] == ["alpha", "beta", "gamma"], out
    for o in out:
        assert o["ok"] is True and [i["instance"] for i in o["instances"]] == ["ex"], o
        assert o["instances"][0]["verified"] is True, o
    # one table: an AGENT column and each agent's instance
    rc, text, _ = a.ctl("audit", "--all-agents", as_json=False)
    assert rc == 0, text
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["AGENT", "INSTANCE", "PLUGIN"], text
    rows = [l.split() for l in lines[1:] if l and not l.startswith(" ")]
    assert sorted(r[0] for r in rows) == ["alpha", "beta", "gamma"], text
    assert all(r[1] == "ex" and r[4] == "ok" for r in rows), text
    # --agent repeated: just those
    rc, out, _ = a.ctl("--agent", "gamma", "--agent", "beta", "audit")
    assert rc == 0 and [o["agent"] for o in out] == ["gamma", "beta"], out
    # an agent no one runs: a row saying so, exit 1
    rc, out, _ = a.ctl("-t", "3", "--agent", "beta", "--agent", "nobody", "audit")
    assert rc == 1 and out[0]["ok"] is True, out
    assert out[1]["agent"] == "nobody" and out[1]["ok"] is False and out[1]["error"], out
    # more agents than one batch of connections (8): all there, in order
    many = ["alpha", "beta", "gamma"] + ["ghost%d" % i for i in range(8)]
    args = []
    for n in many:
        args += ["--agent", n]
    rc, out, _ = a.ctl("-t", "3", *(args + ["audit"]))
    assert rc == 1 and [o["agent"] for o in out] == many, out
    assert [o["ok"] for o in out] == [True] * 3 + [False] * 8, out
    # repeated --agent is for audit only
    rc, _, err = a.ctl("--agent", "beta", "--agent", "gamma", "status")
    assert rc == 2 and "only audit" in err, err


def test_audit_agent_gone(tmp, agents):
    srv, (a, b, c) = three(tmp, agents)
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait(timeout=10)
    t0 = time.monotonic()
    rc, out, err = a.ctl("-t", "3", "audit", "--all-agents")
    took = time.monotonic() - t0
    assert rc == 1, (rc, out, err)
    # still listed (seen moments ago), and its row says it did not answer
    by = {o["agent"]: o for o in out}
    assert sorted(by) == ["alpha", "beta", "gamma"], out
    assert by["alpha"]["ok"] and by["beta"]["ok"], out
    assert by["gamma"]["ok"] is False and "instances" not in by["gamma"] and by["gamma"]["error"], out
    assert took < 3 + 4, took  # bounded by the time-out, not by the number of agents
    rc, text, _ = a.ctl("-t", "3", "audit", "--all-agents", as_json=False)
    assert rc == 1 and any(l.startswith("gamma") and "NO ANSWER" in l for l in text.splitlines()), text
    # back: it says hello, the others answer, and it is audited again
    c.start()
    wait_for(lambda: known(c) == ["alpha", "beta", "gamma"], timeout=8, what="gamma to know the others again")
    rc, out, _ = a.ctl("audit", "--all-agents")
    assert rc == 0 and all(o["ok"] for o in out), out


def test_audit_all_agents_without_nats(tmp, agents):
    a = Agent(tmp, "  ex: {plugin: example, interval: 1h}\n", name="solo")
    agents.append(a)
    a.start()
    r = a.ok("agents")
    assert r == {"self": "solo", "nats": False, "agents": [r["agents"][0]]} and r["agents"][0]["agent"] == "solo", r
    rc, out, _ = a.ctl("audit", "--all-agents")
    assert rc == 0 and [o["agent"] for o in out] == ["solo"] and out[0]["ok"], out
    rc, _, err = a.ctl("audit", "--bogus")
    assert rc == 2, err


if __name__ == "__main__":
    run_tests(globals())
