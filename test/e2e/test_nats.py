#!/usr/bin/env python3
"""End-to-end: the NATS bridge with a real nats-server — export/import between agents,
no echo with overlapping lists, headers and request/reply across agents, agentctl
--agent, buffering and drops across a server restart, auth failure, config checks."""
import json
import os
import subprocess
import threading

from harness import AGENTD, Agent, Control, NatsServer, Skip, run_tests, wait_for


def nats_yaml(url, export=(), imports=(), extra="", reconnect_wait="100ms"):
    return ("bus:\n  nats:\n    url: %s\n    export: %s\n    import: %s\n    reconnect_wait: %s\n" % (
        url, json.dumps(list(export)), json.dumps(list(imports)), reconnect_wait)) + extra


def agent(tmp, agents, name, url, export=(), imports=(), plugins="  ex: {plugin: example, interval: 1h}\n",
          extra="", reconnect_wait="100ms"):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    a = Agent(d, plugins, name=name)
    # the bus section goes after plugins: append it to the written file
    with open(a.config, "a") as f:
        f.write(nats_yaml(url, export, imports, extra, reconnect_wait))
    agents.append(a)
    return a


class Sub:
    """A bus.sub stream on an agent, collected by a thread."""

    def __init__(self, a, pattern, count, timeout_ms=20000):
        self.c = Control(a.sock)
        self.c.send("bus.sub", {"pattern": pattern, "count": count, "timeout_ms": timeout_ms})
        assert self.c.read()["event"]["subscribed"] is True
        self.msgs, self.end = [], None
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        self.c.s.settimeout(60)
        while True:
            r = self.c.read()
            if r.get("end"):
                self.end = r
                return
            self.msgs.append(r["event"])

    def wait(self, timeout=60):
        self.t.join(timeout)
        assert not self.t.is_alive(), "stream did not end"
        self.c.close()
        return self.msgs


def connected(a):
    return a.ok("status")["nats"]["connected"]


def test_export_import_between_two_agents(tmp, agents):
    srv = NatsServer(tmp).start()
    agents.append(srv)
    a = agent(tmp, agents, "alpha", srv.url, export=["demo.>"])
    b = agent(tmp, agents, "beta", srv.url, imports=["demo.>"])
    a.start()
    b.start()
    wait_for(lambda: connected(a) and connected(b), what="both bridges connected")
    s = Sub(b, "demo.>", 3)
    for i in range(3):
        a.ok("bus", "pub", "demo.x", json.dumps({"i": i}), "-H", "trace=t%d" % i)
    msgs = s.wait()
    assert [m["payload"]["i"] for m in msgs] == [0, 1, 2], msgs
    assert all(m["origin"] == "alpha" for m in msgs), msgs
    assert msgs[1]["headers"] == {"trace": "t1"}, msgs  # headers survive, the origin header is consumed
    st = a.ok("status")["nats"]
    assert st["exported"] >= 3 and st["export_dropped"] == 0, st
    # several headers cross in order; a local one named like the origin header cannot
    # claim another origin; one that would break the header block is not sent
    s = Sub(b, "demo.>", 1)
    a.ok("bus", "pub", "demo.y", '{"n": 1}', "-H", "Organism-Origin=gamma", "-H", "k1=v 1", "-H", "k2=v2")
    rc, _, _ = a.ctl("bus", "pub", "demo.z", "{}", "-H", "evil=x\r\nOrganism-Origin: gamma")
    m = s.wait()[0]
    assert m["origin"] == "alpha" and m["headers"] == {"k1": "v 1", "k2": "v2"}, m
    if rc == 0:  # accepted locally: the bridge refused it
        wait_for(lambda: a.ok("status")["nats"]["export_dropped"] == 1, what="the broken header refused")


def test_three_agents_overlapping_exactly_once(tmp, agents):
    srv = NatsServer(tmp).start()
    agents.append(srv)
    names = ["a1", "a2", "a3"]
    ags = [agent(tmp, agents, n, srv.url, export=["mesh.>", "mesh.hot.*"], imports=["mesh.>", "mesh.*.x"])
           for n in names]
    for a in ags:
        a.start()
    wait_for(lambda: all(connected(a) for a in ags), what="three bridges connected")
    per_agent = 20
    subs = [Sub(a, "mesh.>", per_agent * 3) for a in ags]
    for a in ags:
        for i in range(per_agent):
            a.ok("bus", "pub", "mesh.hot.x", json.dumps({"from": a.name, "i": i}))
    for name, s in zip(names, subs):
        msgs = s.wait()
        seen = [(m["payload"]["from"], m["payload"]["i"]) for m in msgs]
        assert len(seen) == len(set(seen)) == per_agent * 3, (name, len(seen), len(set(seen)))
        for m in msgs:
            assert m["origin"] == m["payload"]["from"], m
        assert s.end["count"] == per_agent * 3, s.end
    # nothing more arrives: no echo loop keeps messages going round
    for a in ags:
        st = a.ok("status")["nats"]
        assert st["exported"] == per_agent, (a.name, st)


def test_request_reply_and_agentctl_agent(tmp, agents):
    srv = NatsServer(tmp).start()
    agents.append(srv)
    a = agent(tmp, agents, "alpha", srv.url)
    b = agent(tmp, agents, "beta", srv.url)
    a.start()
    b.start()
    wait_for(lambda: connected(a) and connected(b), what="both bridges connected")
    # a plugin verb of beta, called through alpha
    assert a.ok("--agent", "beta", "call", "ex", "echo", '{"x": 1}') == {"echo": {"x": 1}}
    assert a.ok("--agent", "beta", "ex", "count")["count"] == 0
    # agent verbs of beta through alpha
    st = a.ok("--agent", "beta", "status")
    assert st["agent"] == "beta", st
    names = [i["name"] for i in a.ok("--agent", "beta", "plugin", "list")]
    assert names == ["ex"], names
    # remote control is read-only by default: mutating verbs are refused by beta
    rc, _, err = a.ctl("--agent", "beta", "plugin", "reload", "ex")
    assert rc == 4 and "read-only" in err, (rc, err)
    rc, _, err = a.ctl("--agent", "beta", "call", "ex", "reset")
    assert rc == 1 and "permission denied" in err, (rc, err)
    rc, _, err = a.ctl("--agent", "beta", "bus", "sub", "x.>", "--count", "1")
    assert rc == 1 and "streams do not cross" in err, (rc, err)
    rc, _, err = a.ctl("--agent", "nobody", "status", timeout=30)
    assert rc == 1 and "no responder" in err, (rc, err)
    # a raw request from alpha's bus to beta's instance subject
    r = a.ok("bus", "request", "organism.ctl.beta.ex.echo", '{"y": 2}')
    assert r["payload"] == {"echo": {"y": 2}} and r["origin"] == "beta", r


def raw_nats_hpub(url, subject, reply, headers, payload):
    """Publishes one message with headers through the NATS text protocol, as any
    client on the server could."""
    import socket as _s
    host, port = url.replace("nats://", "").split(":")
    c = _s.create_connection((host, int(port)), timeout=5)
    c.recv(4096)  # INFO
    hdr = "NATS/1.0\r\n" + "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    c.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')
    c.sendall(("HPUB %s %s %d %d\r\n%s%s\r\nPING\r\n" % (subject, reply, len(hdr), len(hdr) + len(payload), hdr,
                                                          payload)).encode())
    buf = b""
    while b"PONG" not in buf:
        buf += c.recv(4096)
    c.close()


def test_reply_subject_cannot_aim_at_our_verbs(tmp, agents):
    """A request whose reply subject is one of our control subjects would make us send
    our answer to ourselves as our own (trusted) message: it is dropped at the import."""
    srv = NatsServer(tmp).start()
    agents.append(srv)
    a = agent(tmp, agents, "alpha", srv.url)
    a.start()
    wait_for(lambda: connected(a), what="bridge connected")
    a.ok("bus", "pub", "example.x", "{}")
    assert a.ok("ex", "count")["count"] == 1
    raw_nats_hpub(srv.url, "organism.ctl.alpha.ex.echo", "organism.ctl.alpha.ex.reset", {"Organism-Origin": "beta"},
                  "{}")
    wait_for(lambda: a.ok("status")["nats"]["import_dropped"] >= 1, what="the hijacking request dropped")
    assert a.ok("ex", "count")["count"] == 1
    # a well-formed one from the same client is answered
    raw_nats_hpub(srv.url, "organism.ctl.alpha.ex.echo", "_INBOX.someone.1", {"Organism-Origin": "beta"}, "{}")
    # (calls so far: two counts, then this echo)
    wait_for(lambda: a.ok("plugin", "info", "ex")["calls"] >= 3, what="the inbox request handled")


class RawNats:
    """A bare NATS text-protocol client, as any client of the server could run."""

    def __init__(self, url):
        import socket as _s
        host, port = url.replace("nats://", "").split(":")
        self.c = _s.create_connection((host, int(port)), timeout=10)
        self.buf = b""
        self._line()  # INFO
        self.c.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')
        self.ping()

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.c.recv(65536)
            if not d:
                raise EOFError("NATS server closed the connection")
            self.buf += d
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def _take(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.c.recv(65536)
        d, self.buf = self.buf[:n], self.buf[n + 2:]
        return d

    def ping(self):
        self.c.sendall(b"PING\r\n")
        while True:
            line = self._line()
            if line == "PONG":
                return
            if line.startswith("PING"):
                self.c.sendall(b"PONG\r\n")

    def sub(self, subject, sid=1):
        self.c.sendall(("SUB %s %d\r\n" % (subject, sid)).encode())
        self.ping()

    def next_msg(self):
        """(subject, reply) of the next MSG/HMSG; answers server PINGs on the way."""
        while True:
            p = self._line().split()
            if p and p[0] == "PING":
                self.c.sendall(b"PONG\r\n")
            elif p and p[0] == "MSG":
                self._take(int(p[-1]))
                return p[1], (p[3] if len(p) == 5 else None)
            elif p and p[0] == "HMSG":
                self._take(int(p[-1]))
                return p[1], (p[3] if len(p) == 6 else None)

    def pub_many(self, subjects, payload, origin):
        hdr = "NATS/1.0\r\nOrganism-Origin: %s\r\n\r\n" % origin
        out = "".join("HPUB %s %d %d\r\n%s%s\r\n" % (s, len(hdr), len(hdr) + len(payload), hdr, payload)
                      for s in subjects)
        self.c.sendall(out.encode())

    def close(self):
        self.c.close()


FORGED = json.dumps({"id": 1, "ok": True, "result": {"agent": "FORGED"}})


def test_blind_flood_of_inboxes_answers_nothing(tmp, agents):
    """A client that floods guessable inboxes (_INBOX.<agent>.1..300, then the real
    prefix with guessed ids and tokens, once it saw a request go by) must not answer
    anyone's request; the replies that reach the bus are counted. The requests go to a
    "ghost" agent that receives them and never answers, so each stays open for a while:
    time enough for any forged reply to win."""
    srv = NatsServer(tmp).start()
    agents.append(srv)
    a = agent(tmp, agents, "alpha", srv.url, extra="    remote_control: \"off\"\n")
    b = agent(tmp, agents, "beta", srv.url)
    a.start()
    b.start()
    wait_for(lambda: connected(a) and connected(b), what="both bridges connected")
    ghost = RawNats(srv.url)
    ghost.sub("organism.ctl.ghost.>")
    rc, _, _ = a.ctl("--agent", "ghost", "-t", "1", "status")
    assert rc == 5, rc  # nobody answers
    subject, reply = ghost.next_msg()  # but the ghost saw the request and its inbox
    assert subject == "organism.ctl.ghost._agent.status" and reply.startswith("_INBOX.alpha."), (subject, reply)
    parts = reply.split(".")
    prefix = ".".join(parts[:3]) if len(parts) == 5 else "_INBOX.alpha.x"
    token = parts[-1]
    stop = threading.Event()
    sent = [0]

    def flood():
        f = RawNats(srv.url)
        guesses = ["_INBOX.alpha.%d" % i for i in range(1, 301)]
        # knowing the prefix: the next ids, without a token, with the one seen, with a made-up one
        guesses += ["%s.%d" % (prefix, i) for i in range(1, 101)]
        guesses += ["%s.%d.%s" % (prefix, i, token) for i in range(1, 101)]
        guesses += ["%s.%d.%s" % (prefix, i, "A" * 22) for i in range(1, 101)]
        while not stop.is_set():
            f.pub_many(guesses, FORGED, "ghost")
            sent[0] += len(guesses)
            f.ping()
            stop.wait(0.02)
        f.close()

    t = threading.Thread(target=flood)
    t.start()
    try:
        forged = [a.ctl("--agent", "ghost", "-t", "2", "status") for _ in range(4)]
        answers = [a.ok("--agent", "beta", "status")["agent"] for _ in range(10)]
    finally:
        stop.set()
        t.join(30)
        ghost.close()
    assert sent[0] > 3000, sent
    assert [r[0] for r in forged] == [5] * 4, forged  # time-outs: no forged answer accepted
    assert answers == ["beta"] * 10, answers
    # _INBOX.alpha.<prefix>.<n>.<token>: 130 random bits per request
    assert len(parts) == 5 and len(token) == 22, reply
    st = a.ok("status")
    # the guesses under the real prefix reached alpha's bridge, were counted and went
    # no further (not one queued for the loop); those outside it were never even
    # delivered to alpha
    assert st["nats"]["replies_unknown"] > 1000, st["nats"]
    assert st["nats"]["imported"] < 100, (st["nats"], sent)
    assert st["nats"]["import_dropped"] == 0, st["nats"]
    metrics = {m["name"]: m["value"] for m in a.ok("metrics") if m["instance"] == "agentd"}
    assert metrics["bus_replies_unknown_total"] >= st["nats"]["replies_unknown"], metrics


def test_server_restart_buffers_and_counts_drops(tmp, agents):
    srv = NatsServer(tmp).start()
    agents.append(srv)
    # alpha retries slower than beta, so beta has subscribed again when alpha flushes
    a = agent(tmp, agents, "alpha", srv.url, export=["buf.>"], extra="    reconnect_buffer: 64KiB\n",
              reconnect_wait="1500ms")
    b = agent(tmp, agents, "beta", srv.url, imports=["buf.>"])
    a.start()
    b.start()
    wait_for(lambda: connected(a) and connected(b), what="both bridges connected")
    srv.stop()
    wait_for(lambda: not connected(a) and not connected(b), what="both bridges see the server gone")
    # 200 messages of ~1 KiB while down: about 64 fit in the reconnect buffer
    payload = "x" * 1000
    for i in range(200):
        a.ok("bus", "pub", "buf.m", json.dumps({"i": i, "pad": payload}))
    st = a.ok("status")["nats"]
    dropped = st["export_dropped"]
    assert 0 < dropped < 200, st
    # what waits in libnats' reconnect buffer is reported (most of the 64 KiB)
    assert 32768 < st["buffered"] <= 65536 + 2048, st
    assert a.ok("status")["instances"]["running"] == 1  # the local bus went on working
    srv2 = NatsServer(tmp, port=srv.port).start()
    agents.append(srv2)
    s = None
    wait_for(lambda: connected(a) and connected(b), timeout=30, what="both bridges reconnected")
    # every message that fitted in the buffer reaches beta, none of the dropped ones
    wait_for(lambda: b.ok("status")["nats"]["imported"] >= 200 - dropped, timeout=20,
             what="the buffered messages delivered")
    assert b.ok("status")["nats"]["imported"] == 200 - dropped
    # and new messages flow again
    s = Sub(b, "buf.>", 1)
    a.ok("bus", "pub", "buf.after", '{"after": true}')
    assert s.wait()[0]["payload"] == {"after": True}


def test_server_down_at_start_and_wrong_token(tmp, agents):
    srv = NatsServer(tmp, extra=["--auth", "s3cret"])
    a = agent(tmp, agents, "alpha", srv.url, export=["x.>"], extra="    token: wrong\n")
    a.start()  # no server yet: agentd starts all the same
    assert a.ok("status")["nats"]["connected"] is False
    assert a.ok("ex", "count")["count"] == 0  # the local bus works
    srv.start()
    agents.append(srv)
    wait_for(lambda: "Authorization Violation" in a.logtext(), timeout=30,
             what="a clear log line about the refused token")
    assert a.ok("status")["nats"]["connected"] is False


def test_bad_nats_config_rejected(tmp, agents):
    a = agent(tmp, agents, "alpha", "nats://127.0.0.1:1", export=["a.>.b"], extra="    colour: blue\n")
    p = subprocess.run([AGENTD, "--check", "-c", a.config], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p
    assert "bus.nats.export[0]" in p.stderr and "bus.nats.colour: unknown key" in p.stderr, p.stderr


WORK_STREAM = """    jetstream:
      streams:
        - {name: WORK, subjects: ["work.>"], retention: workqueue, duplicate_window: 1m}
"""


def durable_agent(tmp, agents, srv, ack=True, max_deliver=5, ack_wait="1s"):
    plugins = ("  ex:\n    plugin: example\n    interval: 1h\n    config:\n"
               "      durable_stream: WORK\n      durable_filter: work.>\n"
               "      durable_ack: %s\n      durable_max_deliver: %d\n      durable_ack_wait: %s\n" % (
                   "true" if ack else "false", max_deliver, ack_wait))
    return agent(tmp, agents, "worker", srv.url, plugins=plugins, extra=WORK_STREAM)


def enqueue(a, i, check=True):
    return a.ctl("ex", "enqueue", json.dumps({"subject": "work.job", "id": "m%d" % i, "data": i}), timeout=60,
                 check=0 if check else None)


def test_durable_exactly_once_across_server_restart(tmp, agents):
    srv = NatsServer(tmp).start()
    agents.append(srv)
    a = durable_agent(tmp, agents, srv)
    a.start()
    wait_for(lambda: connected(a), what="bridge connected")
    for i in range(25):
        assert enqueue(a, i)[1] == {"stored": True}
    wait_for(lambda: a.ok("ex", "durable")["handled"] == 25, timeout=30, what="first half handled")
    # a re-send with a known id is de-duplicated by the stream (within this server's
    # lifetime: a restarted server only remembers the ids of messages it still stores)
    assert enqueue(a, 7)[1] == {"stored": True}
    # the acks are on their way: kill the server only once it has them all, since an
    # ack the server never saw means a redelivery (at-least-once), not a loss
    wait_for(lambda: srv.consumers().get(("WORK", "example"), {}).get("num_ack_pending", 1) == 0, timeout=30,
             what="the server has every ack")
    srv.stop()
    wait_for(lambda: not connected(a), what="bridge sees the server gone")
    # enqueue while the server is away: each call completes once the server is back
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(enqueue(a, i, check=False))) for i in range(25, 50)]
    for t in threads:
        t.start()
    srv2 = NatsServer(tmp, port=srv.port).start()  # same store: the stream survives
    agents.append(srv2)
    for t in threads:
        t.join(90)
    assert all(r[0] == 0 and r[1] == {"stored": True} for r in results), results
    wait_for(lambda: a.ok("ex", "durable")["unique"] == 50, timeout=60, what="every message handled")
    # acked: none comes back, even after the ack wait has passed twice
    deadline = __import__("time").monotonic() + 2.5
    while __import__("time").monotonic() < deadline:
        d = a.ok("ex", "durable")
        assert d["handled"] == 50 and d["unique"] == 50, d
    js = a.ok("status")["nats"]["jetstream"]
    assert js["published"] == 51 and js["unacked"] == 0, js


def test_durable_unacked_redelivered_up_to_limit(tmp, agents):
    srv = NatsServer(tmp).start()
    agents.append(srv)
    a = durable_agent(tmp, agents, srv, ack=False, max_deliver=3, ack_wait="300ms")
    a.start()
    wait_for(lambda: connected(a), what="bridge connected")
    enqueue(a, 1)
    enqueue(a, 2)
    # a subject no stream holds: refused with a clear error, not retried forever
    rc, _, err = a.ctl("ex", "enqueue", json.dumps({"subject": "nowhere.x", "id": "n1"}), timeout=60)
    assert rc == 1 and "No such file" in err, (rc, err)
    assert "is a stream declared for it?" in a.logtext()
    wait_for(lambda: a.ok("ex", "durable")["handled"] == 6, timeout=30, what="three deliveries of each")
    deadline = __import__("time").monotonic() + 1.5
    while __import__("time").monotonic() < deadline:
        d = a.ok("ex", "durable")
        assert d["handled"] == 6 and d["unique"] == 2, d


def mapped_libs(pid):
    with open("/proc/%d/maps" % pid) as f:
        return {os.path.basename(line.split()[-1]) for line in f if "/" in line}


def heavy(libs):
    return sorted(l for l in libs if l.startswith(("libnats", "libssl", "libcrypto", "organism-bridge")))


def test_embedded_without_nats_maps_no_libnats(tmp, agents):
    """Without bus.nats, none of the bridge module, libnats, libssl, libcrypto is
    mapped; with it, they are, and the bridge works."""
    d = os.path.join(tmp, "plain")
    os.makedirs(d)
    a = Agent(d, "  ex: {plugin: example, interval: 1h}\n")
    agents.append(a)
    a.start()
    assert a.ok("status")["nats"]["enabled"] is False
    libs = mapped_libs(a.proc.pid)
    assert any(l.startswith("libsystemd") for l in libs), libs  # the maps were read
    assert heavy(libs) == [], heavy(libs)
    srv = NatsServer(tmp).start()
    agents.append(srv)
    b = agent(tmp, agents, "beta", srv.url, export=["demo.>"])
    b.start()
    wait_for(lambda: connected(b), what="bridge connected")
    libs = heavy(mapped_libs(b.proc.pid))
    assert "organism-bridge.so" in libs and any(l.startswith("libnats") for l in libs), libs
    b.ok("bus", "pub", "demo.x", "{}")
    wait_for(lambda: b.ok("status")["nats"]["exported"] >= 1, what="an export through the module")


def test_bridge_module_others_can_write_is_refused(tmp, agents):
    """agentd as root loads its bridge module only if nobody but root can write it."""
    if os.geteuid() != 0:
        raise Skip("needs root: the module check applies to agentd running as root")
    from harness import BUILD
    mod = os.path.join(BUILD, "core", "organism-bridge.so")
    mode = os.stat(mod).st_mode
    a = agent(tmp, agents, "alpha", "nats://127.0.0.1:1")
    os.chmod(mod, mode | 0o020)
    try:
        rc = a.start(expect_ready=False)
    finally:
        os.chmod(mod, mode)
    assert rc != 0 and "refusing module" in a.logtext(), (rc, a.logtext())


def test_durable_without_bridge_is_refused(tmp, agents):
    a = Agent(tmp, "  ex:\n    plugin: example\n    config: {durable_stream: WORK}\n")
    agents.append(a)
    a.start()
    ex = a.instance("ex")
    assert ex["state"] == "failed" and "not supported" in ex["error"], ex
    assert "cannot consume stream WORK" in a.logtext()


if __name__ == "__main__":
    run_tests(globals())
