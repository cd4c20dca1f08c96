#!/usr/bin/env python3
"""End-to-end: the control socket under bad input and foreign peers, and the bus,
call, metrics and audit verbs through agentctl."""
import grp
import json
import os
import subprocess
import threading

from harness import AGENTCTL, Agent, Control, Skip, run_tests, wait_for

ONE = """\
  ex:
    plugin: example
    interval: 200ms
    config: {greeting: hi}
"""


def test_malformed_and_oversized_requests(tmp, agents):
    a = Agent(tmp, ONE)
    agents.append(a)
    a.start()
    c = Control(a.sock)
    assert c.hello["hello"] == "agentd" and c.hello["protocol"] == 1 and c.hello["access"] == "admin", c.hello
    c.send_raw(b"this is not json\n")
    r = c.read()
    assert r["ok"] is False and r["errno"] == "EINVAL", r
    c.send_raw(b"[1,2,3]\n")
    assert c.read()["ok"] is False
    c.send_raw(b'{"id":7,"verb":"no.such.verb"}\n')
    r = c.read()
    assert r["id"] == 7 and r["errno"] == "EOPNOTSUPP" and "no.such.verb" in r["error"], r
    c.send_raw(b'{"id":8,"verb":"status","protocol":99}\n')
    r = c.read()
    assert r["errno"] == "EPROTO", r
    c.send_raw(b'{"id":9,"verb":"status","args":[1]}\n')
    assert c.read()["errno"] == "EINVAL"
    c.send("status", id=10)
    assert c.read()["ok"] is True  # the connection survived all of that
    # a line over the limit: an error, then the connection is closed
    try:
        c.send_raw(b'{"id":11,"verb":"status","args":{"x":"' + b"A" * (2 << 20))
    except BrokenPipeError:
        pass  # agentd closed as soon as the line passed the limit; its answer is buffered
    r = c.read()
    assert r["errno"] == "E2BIG", r
    try:
        c.read()
        raise AssertionError("connection still open after an oversized request")
    except (ConnectionError, OSError):
        pass
    c.close()
    # the daemon is unharmed
    assert a.ok("status")["instances"]["running"] == 1


def test_foreign_peer_refused_and_group_read_only(tmp, agents):
    if os.geteuid() != 0:
        raise Skip("needs root to run agentctl as another uid")
    a = Agent(tmp, ONE)
    agents.append(a)
    a.start()
    os.chmod(a.sock, 0o666)  # let the peer reach the socket so agentd's own check decides
    nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"]
    rc, _, err = a.ctl("status", user=nobody)
    assert rc == 4 and "permission denied" in err and "65534" in err, (rc, err)
    try:
        gid = grp.getgrnam("organism").gr_gid
    except KeyError:
        subprocess.run(["groupadd", "-r", "organism"], check=True)
        gid = grp.getgrnam("organism").gr_gid
    # agentd looks the group up at start: restart it now that the group exists
    a.stop()
    a.start()
    os.chmod(a.sock, 0o666)
    member = ["--reuid=65534", "--regid=65534", "--groups=%d" % gid]
    st = a.ok("status", user=member)
    assert st["agent"] == "e2e"
    a.ok("plugin", "list", user=member)
    assert a.ok("call", "ex", "count", user=member)["count"] == 0  # a read-only verb
    for args in (["plugin", "reload", "ex"], ["config", "reload"], ["bus", "pub", "x.y", "{}"],
                 ["call", "ex", "reset"]):
        rc, _, err = a.ctl(*args, user=member)
        assert rc == 4 and "permission denied" in err, (args, rc, err)
    # a group member's socket mode: 0660 root:organism when the group exists
    a.stop()
    a.start()
    stt = os.stat(a.sock)
    assert stt.st_gid == gid and (stt.st_mode & 0o777) == 0o660, oct(stt.st_mode)


def test_bus_pub_sub_request_call(tmp, agents):
    a = Agent(tmp, ONE)
    agents.append(a)
    a.start()
    # heartbeat of the example plugin, seen through bus sub
    p = subprocess.run([AGENTCTL, "-s", a.sock, "bus", "sub", "agent.>", "--count", "2", "--timeout", "20"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["subject"] == "agent.heartbeat", lines
    assert lines[0]["payload"]["greeting"] == "hi" and lines[0]["origin"] == "e2e", lines
    assert lines[1]["payload"]["beat"] == lines[0]["payload"]["beat"] + 1

    # pub with headers reaches a subscriber; the stream is live once "subscribed" came
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": "demo.*", "count": 1})
    assert c.read()["event"]["subscribed"] is True
    a.ok("bus", "pub", "demo.x", '{"n": 1}', "-H", "trace=abc")
    ev = c.read()["event"]
    assert ev["subject"] == "demo.x" and ev["payload"] == {"n": 1} and ev["headers"] == {"trace": "abc"}, ev
    end = c.read()
    assert end["end"] is True and end["count"] == 1, end
    c.close()

    # request/reply to the instance's control subject, and the call sugar
    r = a.ok("bus", "request", "organism.ctl.e2e.ex.echo", '{"a": [1, 2]}')
    assert r["payload"] == {"echo": {"a": [1, 2]}}, r
    assert a.ok("ex", "echo", '{"b": true}') == {"echo": {"b": True}}
    rc, _, err = a.ctl("bus", "request", "nobody.listens", "{}")
    assert rc == 1 and "no responder" in err, err
    rc, _, err = a.ctl("call", "ex", "nosuchverb")
    assert rc == 1 and "unknown verb" in err, err
    rc, _, err = a.ctl("call", "nosuchinstance", "count")
    assert rc == 1 and "no instance" in err, err
    rc, _, err = a.ctl("ex", "echo", "{not json")
    assert rc == 2 and "invalid JSON" in err, err
    # plugin names are names: never a path out of plugin_dirs (dlopen runs constructors)
    rc, _, err = a.ctl("plugin", "info", "../../../tmp/evil")
    assert rc == 1 and "name" in err, (rc, err)


def test_slow_subscriber_drops_not_stalls(tmp, agents):
    a = Agent(tmp, ONE)
    agents.append(a)
    a.start()
    # a stream reader that never reads: the daemon must count drops and stay responsive
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": "flood.>"})
    assert c.read()["event"]["subscribed"] is True
    payload = json.dumps({"x": "y" * 4000})
    w = Control(a.sock)
    for i in range(4000):
        w.send("bus.pub", {"subject": "flood.a", "data": payload}, id=i)
        w.read()
    w.close()
    assert a.ok("status")["instances"]["running"] == 1
    c.close()


def test_metrics_and_audit(tmp, agents):
    prom = os.path.join(tmp, "organism.prom")
    a = Agent(tmp, ONE, agent_extra="  metrics_textfile: %s\n  metrics_interval: 200ms\n" % prom)
    agents.append(a)
    a.start()
    a.ok("bus", "pub", "example.z", "{}")
    wait_for(lambda: os.path.exists(prom), what="the metrics textfile")
    m = a.ok("metrics")
    names = {(x["instance"], x["name"]) for x in m}
    assert ("ex", "ticks_total") in names and ("ex", "messages_dropped_total") in names, names
    text = a.ok("metrics", "--text", as_json=False)
    assert 'organism_ticks_total{instance="ex"}' in text, text
    wait_for(lambda: 'organism_example_messages_counted{instance="ex"} 1' in open(prom).read(),
             what="the plugin's own metric in the textfile")
    assert not [f for f in os.listdir(tmp) if ".tmp" in f], os.listdir(tmp)
    audit = a.ok("audit")
    assert audit["ok"] is True and audit["instances"][0]["checks"][0]["what"] == "subscription", audit
    rc, out, _ = a.ctl("audit", as_json=False, check=0)
    assert "ex" in out and "ok" in out, out


if __name__ == "__main__":
    run_tests(globals())
