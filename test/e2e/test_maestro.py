#!/usr/bin/env python3
"""End-to-end tests of the maestro plugin in the real agentd, with simulated GPU
workers (test/plugins/simworker: 12 GPUs heartbeating, tasks answered at once, one
marker file per task_id created exclusively so a task's side effect is seen to happen
exactly once) and its load generator submitting through gpu.task.enqueue requests:
1000 tasks accepted → dispatched → done once each over 12 GPUs; agentd killed -9 at a
random instant mid-run and restarted: every accepted task ends done, exactly once;
`agentctl task submit --watch`, status, list, cancel (JSON and tables); refusals with
their reason (malformed, schema, oversized, bad id, queue full), duplicates; a
task submitted with no worker alive dispatched within a second of the first
heartbeat, and err twice then done in three attempts; JetStream intake from another
agent while maestro is down (real nats-server)."""
import json
import os
import random
import signal
import sqlite3
import time

from harness import PLUGINS, TEST_PLUGINS, Agent, Control, NatsServer, run_tests, wait_for

SIM_DIR = os.path.join(TEST_PLUGINS, "simworker")


def plugins_yaml(marker, load="", maestro_extra="", sim_extra=""):
    return (
        "  task:\n"
        "    plugin: maestro\n"
        "    config: {lease_grace: 1s, retry_backoff: 100ms%s}\n"
        "  sim:\n"
        "    plugin: simworker\n"
        "    config: {gpus: 12, heartbeat: 1s, marker_dir: \"%s\"%s%s}\n"
    ) % (maestro_extra, marker, (", load: {%s}" % load) if load else "", sim_extra)


def start(tmp, agents, load="", maestro_extra="", sim_extra=""):
    marker = os.path.join(tmp, "markers")
    os.makedirs(marker, exist_ok=True)
    a = Agent(tmp, plugins_yaml(marker, load, maestro_extra, sim_extra), plugin_dirs=[PLUGINS, SIM_DIR])
    agents.append(a)
    a.start()
    return a, marker


def store_rows(a):
    """(id, state, attempt) of every task in maestro's store (read-only, WAL)."""
    for root, _, files in os.walk(a.state):
        for f in files:
            if f.endswith(".db") or f.endswith(".sqlite"):
                db = sqlite3.connect("file:%s?mode=ro" % os.path.join(root, f), uri=True)
                try:
                    return db.execute("SELECT id, state, attempt FROM maestro_tasks").fetchall()
                except sqlite3.OperationalError:
                    continue
                finally:
                    db.close()
    return None


def test_thousand_tasks_spread_done_once(tmp, agents):
    a, marker = start(tmp, agents, load="count: 1000, window: 300, start: 200ms")
    wait_for(lambda: a.ok("sim", "bench")["results"] >= 1000, timeout=60, what="1000 results")
    b = a.ok("sim", "bench")
    assert b["accepted"] == 1000 and b["rejected"] == 0, b
    st = a.ok("task", "status")
    assert st["done_total"] == 1000 and st["queued"] == 0 and st["inflight"] == 0, st
    assert st["failed_total"] == 0 and st["stale_results_total"] == 0, st
    # every task ran once: 1000 marker files, none met twice
    assert len(os.listdir(marker)) == 1000 and b["reruns_prevented"] == 0, b
    # spread over the 12 GPUs (equal scores, one task each at a time)
    per = [g["dispatched"] for g in st["gpus"]]
    assert len(per) == 12 and min(per) > 0, per
    assert max(per) - min(per) <= 1000 // 12, per
    rows = store_rows(a)
    assert rows is not None and len(rows) == 1000 and all(r[1] == "done" for r in rows), rows[:5]


def test_kill9_mid_run_every_accepted_task_done_once(tmp, agents):
    # 12 GPUs of 20 ms tasks take ~600/s: at 1000/s a queue builds up, so each kill
    # finds tasks queued, leased and running. Tasks of 1 s timeout: a lease lost with
    # the worker ends after 1 s + 1 s grace. Each restart runs the same load again: the
    # ids accepted before are answered as existing, the others accepted now.
    load = "count: 1000, rate: 1000, start: 200ms, timeout: 1"
    a, marker = start(tmp, agents, load=load, sim_extra=", delay_ms: 20")
    accepted = set()
    for k in range(3):
        time.sleep(0.3 + random.uniform(0.1, 1.2))  # a random instant mid-run: the point of this test
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        a.logf.close()
        rows = store_rows(a) or []
        ids = {r[0] for r in rows}
        assert accepted <= ids, "accepted tasks vanished in kill %d" % k
        accepted = ids
        print("# kill %d: %d accepted, %d still open" % (k, len(ids), sum(1 for r in rows if r[1] != "done")))
        a.start()
    wait_for(lambda: a.ok("sim", "bench")["results"] + a.ok("sim", "bench")["rejected"] >= 0 and
             a.ok("task", "status")["queued"] == 0 and a.ok("sim", "bench")["submitted"] == 1000,
             timeout=90, what="the last run to submit everything and finish")
    rows = store_rows(a)
    assert len(rows) == 1000 and {r[0] for r in rows} >= accepted, len(rows)
    assert all(r[1] == "done" for r in rows), [r for r in rows if r[1] != "done"][:5]
    # the side effect of each task happened exactly once (O_EXCL marker per task)
    assert set(os.listdir(marker)) == {r[0] for r in rows}


def test_agentctl_task_verbs(tmp, agents):
    a, marker = start(tmp, agents)
    wait_for(lambda: a.ok("task", "status")["gpus_alive"] == 12, what="12 GPUs alive")
    r = a.ok("task", "submit", "--id", "hello", "--watch", "true", "--", "echo", "hi")
    assert r["task_id"] == "hello" and r["ok"] is True and r["returncode"] == 0, r
    assert r["stdout"] == "ok\n" and r["attempt"] == 1, r
    st = a.ok("task", "status", "hello")
    assert st["state"] == "done" and st["task_id"] == "hello", st
    assert st["spec"]["cmd"] == ["echo", "hi"] and st["spec"]["type"] == "cmd", st
    # the same id again: the existing task, not a second run
    r = a.ok("task", "submit", "--id", "hello", "--", "other")
    assert r["accepted"] is True and r["existing"] is True and r["state"] == "done", r
    assert os.listdir(marker) == ["hello"]
    # watch of a finished task answers from the store at once
    w = a.ok("task", "watch", "hello")
    assert w["task_id"] == "hello" and w["ok"] is True, w
    lst = a.ok("task", "list", "--state", "done")
    assert lst["count"] == 1 and lst["tasks"][0]["task_id"] == "hello", lst
    # the same as tables (agentctl's generic printer for plugin verbs)
    text = a.ok("task", "list", "--limit", "5", as_json=False)
    lines = text.splitlines()
    head = next(l for l in lines if l.startswith("task_id"))
    assert head.split()[:3] == ["task_id", "state", "pin"], text
    assert any(l.split()[:2] == ["hello", "done"] for l in lines), text
    assert "count: 1" in lines, text
    text = a.ok("task", "status", "hello", as_json=False)
    assert "state: done" in text.splitlines() and "result.returncode: 0" in text.splitlines(), text
    text = a.ok("task", "status", as_json=False)
    assert "gpus_alive: 12" in text.splitlines() and "gpus:" in text.splitlines(), text
    assert sum(1 for l in text.splitlines() if l.split()[:1] and l.split()[0].isdigit()) == 12, text
    text = a.ok("task", "submit", "--id", "hello2", "--watch", "--", "echo", as_json=False)
    assert "ok: yes" in text.splitlines() and "stdout:" in text.splitlines() and "returncode: 0" in text, text
    # refusals say why
    code, _, err = a.ctl("task", "submit", "--id", "bad/id", "--", "x")
    assert code != 0 and "task_id must match" in err, (code, err)
    code, _, err = a.ctl("task", "submit", "--shell", "ls")
    assert code != 0 and "not allowed" in err, (code, err)
    # a task pinned to a GPU nobody has: waits, cancel ends it at once
    r = a.ok("task", "submit", "--id", "pinned", "--gpu", "40", "--", "x")
    assert r["accepted"] is True, r
    assert a.ok("task", "status", "pinned")["state"] == "waiting_gpu"
    c = a.ok("task", "cancel", "pinned")
    assert c["state"] == "cancelled", c
    wait_for(lambda: a.ok("task", "status", "pinned")["state"] == "cancelled", what="cancelled in the store")


def test_refusals_queue_full_and_duplicates(tmp, agents):
    """Malformed submissions are refused with their reason (as the request's answer, and
    as `rejected` on gpu.task.state.<id> when the id is readable); max_queue refuses with
    "queue full"; an id submitted again is the existing task, unchanged."""
    a, marker = start(tmp, agents, maestro_extra=", max_queue: 2")
    wait_for(lambda: a.ok("task", "status")["gpus_alive"] == 12, what="12 GPUs alive")

    def enqueue(payload):
        r = a.ok("bus", "request", "gpu.task.enqueue", payload)
        return r.get("payload", r)

    for payload, why in (('[1, 2]', "not"), ('{"task_id": "m1", "cmd": "ls"}', "cmd must be"),
                         ('{"task_id": "a b", "cmd": ["x"]}', "task_id must match"),
                         ('{"task_id": "m2", "cmd": ["x"], "gpu": 99}', "gpu must be"),
                         ('{"task_id": "m3", "cmd": ["x"], "bogus": 1}', "unknown key"),
                         (json.dumps({"task_id": "m4", "cmd": ["x" * 70000]}), "too large")):
        r = enqueue(payload)
        assert r["accepted"] is False and why in r["error"], (payload[:60], r)
    # a plain publish (no reply subject): the refusal is the task's state
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": "gpu.task.state.pubbad"})
    assert c.read()["event"]["subscribed"] is True
    a.ok("bus", "pub", "gpu.task.enqueue", '{"task_id": "pubbad", "cmd": "x"}')
    ev = c.read()["event"]["payload"]
    assert ev["state"] == "rejected" and "cmd must be" in ev["error"], ev
    c.close()
    # two tasks pinned to a GPU nobody has fill the queue: the third is refused
    for i in range(2):
        assert enqueue(json.dumps({"task_id": "q%d" % i, "cmd": ["x"], "gpu": 40}))["accepted"] is True
    r = enqueue(json.dumps({"task_id": "q2", "cmd": ["x"]}))
    assert r["accepted"] is False and "queue full" in r["error"], r
    # the same id again: the existing task, its spec unchanged, not a second one
    r = enqueue(json.dumps({"task_id": "q0", "cmd": ["other"], "gpu": 41}))
    assert r["accepted"] is True and r["existing"] is True and r["state"] == "waiting_gpu", r
    st = a.ok("task", "status", "q0")
    assert st["pin"] == 40 and st["stored"]["spec"]["cmd"] == ["x"], st
    assert a.ok("task", "status")["queued"] == 2 and os.listdir(marker) == []
    for i in range(2):
        assert a.ok("task", "cancel", "q%d" % i)["state"] == "cancelled"
    # room again
    assert enqueue(json.dumps({"task_id": "q2", "cmd": ["x"]}))["accepted"] is True
    wait_for(lambda: os.listdir(marker) == ["q2"], what="q2 ran")


def test_enqueue_request_over_the_bus(tmp, agents):
    a, marker = start(tmp, agents)
    wait_for(lambda: a.ok("task", "status")["gpus_alive"] == 12, what="12 GPUs alive")
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": "gpu.task.>"})
    assert c.read()["event"]["subscribed"] is True
    r = a.ok("bus", "request", "gpu.task.enqueue", '{"task_id": "viabus", "cmd": ["true"], "priority": 3}')
    payload = r.get("payload", r) if isinstance(r, dict) else r
    assert payload["accepted"] is True and payload["task_id"] == "viabus", r
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(s == "gpu.task.result.viabus" for s, _ in seen):
        ev = c.read()["event"]
        seen.append((ev["subject"], ev["payload"]))
    states = [p["state"] for s, p in seen if s == "gpu.task.state.viabus"]
    assert states == ["enqueued", "scheduled", "done"], states
    runs = [s for s, p in seen if s.startswith("gpu.task.run.")]
    assert len(runs) == 1, runs
    res = [p for s, p in seen if s == "gpu.task.result.viabus"][0]
    assert res["ok"] is True and res["gpu"] == int(runs[0].split(".")[-1]), res
    c.close()


def test_no_worker_then_worker_appears(tmp, agents):
    marker = os.path.join(tmp, "markers")
    os.makedirs(marker)
    yaml = ("  task:\n    plugin: maestro\n    config: {retry_backoff: 100ms}\n"
            "  sim:\n    plugin: simworker\n    enabled: false\n"
            "    config: {gpus: 2, heartbeat: 1s, fail_first: 2, marker_dir: \"%s\"}\n") % marker
    a = Agent(tmp, yaml, plugin_dirs=[PLUGINS, SIM_DIR])
    agents.append(a)
    a.start()
    c = Control(a.sock)
    c.send("bus.sub", {"pattern": "gpu.task.state.w1"})
    assert c.read()["event"]["subscribed"] is True
    r = a.ok("task", "submit", "--id", "w1", "--", "true")
    assert r["accepted"] is True, r
    states = [c.read()["event"]["payload"]["state"] for _ in range(2)]
    assert states == ["enqueued", "waiting_gpu"], states
    t0 = time.monotonic()
    a.ok("plugin", "enable", "sim")
    # the worker's first heartbeat (at its start) dispatches it; it answers err twice
    # (max_retries 2), then done: three attempts, the states in order
    seen = []
    while "done" not in seen and "failed" not in seen:
        ev = c.read()["event"]["payload"]
        seen.append(ev["state"])
        if ev["state"] == "scheduled" and ev["attempt"] == 1:
            assert time.monotonic() - t0 < 1.0, "dispatched %.2f s after the worker appeared" % (time.monotonic() - t0)
    assert seen == ["scheduled", "retry", "scheduled", "retry", "scheduled", "done"], seen
    st = a.ok("task", "status", "w1")
    assert st["state"] == "done" and st["attempt"] == 3 and st["failures"] == 2, st
    c.close()


WQ = """bus:
  nats:
    url: %s
    token: wq-token
    export: %s
    reconnect_wait: 100ms
    jetstream:
      streams:
        - {name: ORG_WQ, subjects: ["gpu.task.enqueue"], retention: workqueue, duplicate_window: 1m}
"""


def nats_agent(tmp, agents, name, url, plugins, export=()):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    a = Agent(d, plugins, name=name, plugin_dirs=[PLUGINS, SIM_DIR])
    with open(a.config, "a") as f:
        f.write(WQ % (url, json.dumps(list(export))))
    agents.append(a)
    return a


def test_jetstream_intake_survives_maestro_down(tmp, agents):
    srv = NatsServer(tmp, extra=["--auth", "wq-token"]).start()  # a stream of commands needs auth
    agents.append(srv)
    marker = os.path.join(tmp, "markers")
    os.makedirs(marker)
    cortex_plugins = (
        "  task:\n    plugin: maestro\n    config: {intake: {stream: ORG_WQ}}\n"
        "  sim:\n    plugin: simworker\n    config: {gpus: 4, heartbeat: 1s, marker_dir: \"%s\"}\n") % marker
    cortex = nats_agent(tmp, agents, "cortex", srv.url, cortex_plugins)
    sub = nats_agent(tmp, agents, "submitter", srv.url, "  ex: {plugin: example, interval: 1h}\n",
                     export=["gpu.task.enqueue"])
    cortex.start()
    sub.start()
    wait_for(lambda: cortex.ok("status")["nats"]["connected"] and sub.ok("status")["nats"]["connected"],
             what="both bridges connected")

    def submit(i):
        sub.ok("bus", "pub", "gpu.task.enqueue", json.dumps({"task_id": "js%d" % i, "cmd": ["true"]}))

    for i in range(10):
        submit(i)
    wait_for(lambda: cortex.ok("task", "status")["done_total"] == 10, timeout=30, what="10 tasks done")
    cortex.stop()
    # maestro is down: the stream keeps what is submitted meanwhile
    for i in range(10, 20):
        submit(i)
    cortex.start()
    wait_for(lambda: cortex.ok("task", "status")["done_total"] == 10, timeout=30, what="the 10 submitted meanwhile")
    for i in range(20):
        assert cortex.ok("task", "status", "js%d" % i)["state"] == "done", i
    assert sorted(os.listdir(marker)) == sorted("js%d" % i for i in range(20))
    wait_for(lambda: srv.consumers().get(("ORG_WQ", "MAESTRO_ENQ"), {}).get("num_ack_pending", 1) == 0,
             timeout=30, what="every submission acked")


run_tests(globals())
