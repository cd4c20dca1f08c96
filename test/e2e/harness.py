"""harness.py — runs the real agentd and agentctl for the end-to-end tests.

An Agent writes a config into a private temporary folder, starts agentd with
NOTIFY_SOCKET pointing at a datagram socket of ours and waits for READY=1 (an
event, not a sleep), drives it with agentctl, and stops it. Every wait is bounded.
`run_tests(globals())` runs each test_* function with a fresh folder and prints a
TAP-like line per test; the process exits 1 if any failed, 77 if all were skipped.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BUILD = os.environ.get("TEST_BUILD_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "build"))
AGENTD = os.path.join(BUILD, "core", "agentd")
AGENTCTL = os.path.join(BUILD, "core", "agentctl")
PLUGINS = os.path.join(BUILD, "plugins")
TEST_PLUGINS = os.path.join(BUILD, "test", "plugins")


class Skip(Exception):
    pass


def plugin_file(variant="example"):
    """The example plugin as built (variant: example, v2, broken, badabi, nodesc)."""
    if variant == "example":
        return os.path.join(PLUGINS, "example.so")
    return os.path.join(TEST_PLUGINS, variant, "example.so")


def install_plugin(src, dst_dir, name="example.so"):
    """Drops a plugin in place the way a package manager does: copy, then rename."""
    os.makedirs(dst_dir, exist_ok=True)
    tmp = os.path.join(dst_dir, "." + name + ".new")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(dst_dir, name))


def wait_for(pred, timeout=10.0, what="condition"):
    """Polls pred (a query to the daemon, not a sleep standing in for an event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def check_sanitizers(what, text):
    """Under the ASan+UBSan build any report fails the test, even if the program went on."""
    for m in SANITIZER_MARKS:
        if m in text:
            raise AssertionError("%s: sanitizer report:\n%s" % (what, text[-6000:]))


class Agent:
    def __init__(self, tmp, plugins_yaml, agent_extra="", name="e2e", plugin_dirs=None):
        self.tmp = tmp
        self.sock = os.path.join(tmp, "agentd.sock")
        self.config = os.path.join(tmp, "agentd.yaml")
        self.state = os.path.join(tmp, "state")
        self.log = os.path.join(tmp, "agentd.log")
        self.name = name
        self.plugin_dirs = plugin_dirs or [PLUGINS]
        self.proc = None
        self.write_config(plugins_yaml, agent_extra)

    def write_config(self, plugins_yaml, agent_extra=""):
        dirs = ", ".join('"%s"' % d for d in self.plugin_dirs)
        text = (
            "agent:\n"
            "  name: %s\n"
            "  plugin_dirs: [%s]\n"
            "  state_dir: %s\n"
            "  control_socket: %s\n"
            "  log_level: debug\n" % (self.name, dirs, self.state, self.sock)
        ) + agent_extra + "plugins:\n" + plugins_yaml
        with open(self.config, "w") as f:
            f.write(text)
        os.chmod(self.config, 0o644)

    def start(self, expect_ready=True, timeout=15.0, env=None):
        ns_path = os.path.join(self.tmp, "notify.sock")
        if os.path.exists(ns_path):
            os.unlink(ns_path)
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(ns_path)
        ns.settimeout(timeout)
        env = dict(os.environ, NOTIFY_SOCKET=ns_path, **(env or {}))
        env.pop("JOURNAL_STREAM", None)
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([AGENTD, "-c", self.config], stdout=self.logf, stderr=self.logf, env=env)
        if not expect_ready:
            ns.close()
            return self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        try:
            while True:
                ns.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    data = ns.recv(4096).decode()
                except socket.timeout:
                    data = ""
                if "READY=1" in data:
                    return 0
                if self.proc.poll() is not None:
                    raise AssertionError("agentd exited with %d before READY:\n%s" % (self.proc.returncode, self.logtext()))
                if time.monotonic() > deadline:
                    raise AssertionError("agentd not ready in time:\n" + self.logtext())
        finally:
            ns.close()

    def logtext(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def ctl(self, *args, timeout=30, user=None, check=None, as_json=True):
        """Runs agentctl; returns (exit code, parsed JSON or text, stderr)."""
        cmd = [AGENTCTL, "-s", self.sock] + (["--json"] if as_json else []) + list(args)
        if user is not None:
            cmd = ["setpriv"] + user + ["--"] + cmd
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        check_sanitizers("agentctl " + " ".join(args), p.stderr)
        out = p.stdout
        if as_json and out.strip():
            try:
                out = json.loads(out)
            except ValueError:
                pass
        if check is not None and p.returncode != check:
            raise AssertionError("agentctl %s: exit %d, expected %d\nstdout: %s\nstderr: %s\nlog:\n%s" % (
                " ".join(args), p.returncode, check, p.stdout, p.stderr, self.logtext()[-3000:]))
        return p.returncode, out, p.stderr

    def ok(self, *args, **kw):
        return self.ctl(*args, check=0, **kw)[1]

    def instance(self, name):
        for i in self.ok("plugin", "list"):
            if i["name"] == name:
                return i
        return None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("agentd did not stop on SIGTERM within %ds" % timeout)
        if getattr(self, "logf", None):
            self.logf.close()
        check_sanitizers("agentd", self.logtext())
        return self.proc.returncode if self.proc else None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NatsServer:
    """A real nats-server (with JetStream) on a free loopback port, for one test."""

    def __init__(self, tmp, port=None, extra=()):
        if not shutil.which("nats-server"):
            raise Skip("nats-server is not installed (apt-get install nats-server)")
        self.tmp = tmp
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc = None
        self.url = "nats://127.0.0.1:%d" % self.port
        self.name = "nats-server:%d" % self.port
        self.monitor = free_port()

    def logtext(self):
        try:
            with open(os.path.join(self.tmp, "nats-%d.log" % self.port), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, timeout=15):
        store = os.path.join(self.tmp, "js-%d" % self.port)
        self.log = open(os.path.join(self.tmp, "nats-%d.log" % self.port), "ab")
        self.proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", store,
                                      "-m", str(self.monitor)] + self.extra, stdout=self.log, stderr=self.log)
        # ready when it greets a client with INFO
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nats-server exited with %d" % self.proc.returncode)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.settimeout(2)
                    if c.recv(4096).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("nats-server not ready on port %d" % self.port)

    def consumers(self):
        """{(stream, consumer): info} from the monitoring endpoint (/jsz)."""
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/jsz?consumers=true" % self.monitor, timeout=5) as r:
            jsz = json.loads(r.read())
        out = {}
        for acct in jsz.get("account_details", []):
            for st in acct.get("stream_detail", []):
                for c in st.get("consumer_detail", []) or []:
                    out[(st["name"], c["name"])] = c
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if getattr(self, "log", None):
            self.log.close()


class Control:
    """A raw control connection, for what agentctl would never send."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""
        self.hello = self.read()

    def send_raw(self, data):
        self.s.sendall(data)

    def send(self, verb, args=None, id=1):
        self.send_raw((json.dumps({"id": id, "verb": verb, "args": args or {}, "protocol": 1}) + "\n").encode())

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.s.close()


def run_tests(namespace):
    tests = sorted((k, v) for k, v in namespace.items() if k.startswith("test_") and callable(v))
    only = sys.argv[1:]
    failed = passed = skipped = 0
    for name, fn in tests:
        if only and name not in only:
            continue
        tmp = tempfile.mkdtemp(prefix="organism-e2e-")
        os.chmod(tmp, 0o755)
        agents = []
        t0 = time.monotonic()
        try:
            fn(tmp, agents)
            for a in agents:
                a.stop()  # a sanitizer report in agentd's log fails the test here
            passed += 1
            print("ok %s (%.2fs)" % (name, time.monotonic() - t0))
        except Skip as e:
            skipped += 1
            print("skip %s: %s" % (name, e))
        except Exception:
            failed += 1
            print("not ok %s" % name)
            traceback.print_exc()
            for a in agents:
                print("--- agentd log of %s ---\n%s" % (a.name, a.logtext()[-4000:]))
        finally:
            for a in agents:
                try:
                    a.stop()
                except Exception:
                    pass
            shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    if failed:
        sys.exit(1)
    if passed == 0 and skipped:
        sys.exit(77)
    sys.exit(0)
