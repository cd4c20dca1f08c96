#!/usr/bin/env python3
"""ctl_peer.py — a control-socket peer for the e2e tests, run as another uid (under
setpriv) when the test needs a read-only or foreign peer.

  ctl_peer.py flood SOCK VERB   pipelines VERB requests as fast as it can while a
                                second process reads and discards the answers; prints
                                "ready" once greeted, then "answered N" as answers come
                                (every 10 000), runs until killed
  ctl_peer.py hold SOCK N       opens N connections, prints one JSON line with the
                                first line each got ("hello", an errno, or "timeout"),
                                keeps them open until stdin closes
  ctl_peer.py queue SOCK N      connects N sockets and reads nothing (they wait in the
                                listen queue); prints "queued", waits for stdin to close
"""
import ctypes
import json
import os
import signal
import socket
import sys


def greet(path, timeout=2.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return s, "closed"
            buf += chunk
    except socket.timeout:
        return s, "timeout"
    first = json.loads(buf.split(b"\n", 1)[0])
    return s, "hello" if "hello" in first else first.get("errno", "?")


def flood(path, verb):
    s, what = greet(path)
    if what != "hello":
        print(what, flush=True)
        return 1
    s.settimeout(None)
    batch = b"".join(json.dumps({"id": i, "verb": verb, "protocol": 1}).encode() + b"\n" for i in range(2000))
    pid = os.fork()
    if pid == 0:
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: go with the sender
            n = mark = 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                n += chunk.count(b"\n")
                if n >= mark + 10000:
                    mark = n
                    print("answered %d" % n, flush=True)
        finally:
            os._exit(0)
    print("ready", flush=True)
    try:
        while True:
            s.sendall(batch)
    except OSError:
        return 0


def hold(path, n):
    socks, firsts = [], []
    for _ in range(n):
        try:
            s, what = greet(path)
            socks.append(s)
        except OSError as e:
            what = "connect: %s" % e
        firsts.append(what)
    print(json.dumps(firsts), flush=True)
    sys.stdin.read()
    return 0


def queue(path, n):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        socks.append(s)
    print("queued", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "flood":
        sys.exit(flood(sys.argv[2], sys.argv[3]))
    if sys.argv[1] == "queue":
        sys.exit(queue(sys.argv[2], int(sys.argv[3])))
    sys.exit(hold(sys.argv[2], int(sys.argv[3])))
