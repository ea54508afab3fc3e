"""Helpers for the node services' end-to-end tests: `duet serve` on free
ports, its child processes, the cluster view, and small models."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import openai

SANITIZER_MARKS = ("runtime error:", "AddressSanitizer", "LeakSanitizer", "UndefinedBehavior")

# For the sanitizer build (harmless otherwise), as kvconnector/meson.build sets
# for its tests: UCX installs its own SIGSEGV/SIGBUS handlers, and
# LeakSanitizer reports UCX's global caches at exit. Any UB still fails.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:detect_odr_violation=0:handle_segv=0:handle_sigbus=0:"
                    "protect_shadow_gap=0:use_sigaltstack=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
for _k, _v in SANITIZER_ENV.items():
    os.environ.setdefault(_k, _v)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=10.0, step=0.1):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            pass
        time.sleep(step)
    return False


def children(pid):
    """{pid: argv} of the direct children of pid."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                out[int(d)] = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Serve:
    """`duet serve` on free ports; stop() checks a clean exit, no orphans and
    no sanitizer report in anything the cluster printed."""

    def __init__(self, duet_bin, model, *args, ready_timeout=90):
        # free_port() releases the port before duet binds it, so another
        # process (an ephemeral UCX listener of a node, say) can take it in
        # between: start again on new ports when that is what failed
        for attempt in range(3):
            if self._start(duet_bin, model, args, ready_timeout):
                break
            err = self.stderr()
            if "cannot listen" not in err or attempt == 2:
                raise RuntimeError(f"duet serve not ready: {self.lines} {err[-3000:]}")
        self.kids = children(self.proc.pid)

    def _start(self, duet_bin, model, args, ready_timeout):
        self.port, self.ctl_port = free_port(), free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="duet-serve-", suffix=".log",
                                               delete=False)
        env = dict(os.environ)
        env.setdefault("UCX_LOG_LEVEL", "fatal")
        self.proc = subprocess.Popen(
            [duet_bin, "serve", "--model", model, "--port", str(self.port), "--ctl-port",
             str(self.ctl_port), "--log-level", "warn", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ready = threading.Event()
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + ready_timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                return False
        return True

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready on" in line:
                self.ready.set()

    def stderr(self):
        with open(self.log.name) as f:
            return f.read()

    def node_pid(self, name):
        for pid, argv in children(self.proc.pid).items():
            if b"--node-id" in argv and argv[argv.index(b"--node-id") + 1] == name.encode():
                return pid
        return None

    def client(self, timeout=60):
        return openai.OpenAI(base_url=self.base + "/v1", api_key="none", max_retries=0,
                             timeout=timeout)

    def get_json(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.loads(r.read())

    def post_json(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def nodes(self):
        return {n["id"]: n for n in self.get_json("/v1/cluster")["nodes"]}

    def all_blocks_free(self, ids=None):
        """Every node's last heartbeat says every block is free and nothing
        runs or waits."""
        nodes = self.nodes()
        for nid, n in nodes.items():
            if ids is not None and nid not in ids:
                continue
            if (n["free_blocks"] != n["total_blocks"] or n["running"] or n["waiting"] or
                    n["queued_prompt_tokens"]):
                return False
        return True

    def stop(self, sig=signal.SIGINT, timeout=30):
        kids = children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("duet serve did not stop: " + self.stderr()[-3000:])
        err = self.stderr()
        os.unlink(self.log.name)
        for mark in SANITIZER_MARKS:
            assert mark not in err, err[-5000:]
        assert wait_for(lambda: not any(alive(p) for p in kids), 5), "orphans left"
        return self.proc.returncode, err


def mkmodel(duet_bin, path, smollm2, *extra):
    """A small random llama GGUF with SmolLM2's tokenizer (tokenizable, fast).
    Its own output head: with the embedding tied as the head, a model this
    small repeats its input token whatever the context (KV errors would not
    show); untied, the output depends on the whole prompt."""
    r = subprocess.run([duet_bin, "mkmodel", "--layers", "2", "--hidden", "64", "--heads", "4",
                        "--kv-heads", "2", "--ffn", "128", "--ctx", "1024", "--type", "q8_0",
                        "--seed", "7", "--tokenizer-from", smollm2, "-o", str(path),
                        *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return str(path)


def generate_text(duet_bin, model, prompt_ids, n):
    """`duet generate`'s greedy continuation of prompt_ids, as the text it
    prints (it detokenizes; ids only for files without a tokenizer)."""
    r = subprocess.run([duet_bin, "generate", "--model", model, "--tokens",
                        ",".join(map(str, prompt_ids)), "-n", str(n), "--ignore-eos",
                        "--threads", "1", "--log-level", "warn"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\n") and f"generation: {n} tokens".encode() in r.stderr, r
    return r.stdout[:-1].decode("utf-8", errors="replace")


class Cluster:
    """A router and nodes started one by one (for flags `duet serve` does not
    pass through). Ports are chosen by the router (port 0)."""

    TOKEN = "nodes-test-token"

    def __init__(self, duet_bin, model):
        self.duet_bin, self.model = duet_bin, model
        self.env = {**os.environ, "DUET_CLUSTER_TOKEN": self.TOKEN, "UCX_TLS": "tcp,self",
                    "UCX_LOG_LEVEL": "fatal"}
        self.router = subprocess.Popen(
            [duet_bin, "router", "--model", model, "--port", "0", "--ctl-port", "0",
             "--log-level", "warn"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.env)
        line = self.router.stdout.readline()
        m = re.search(r"http [^ ]+:(\d+) control [^ ]+:(\d+)", line)
        if not m:
            self.router.kill()
            raise RuntimeError(f"router did not start: {line!r}")
        self.port, self.ctl_port = int(m.group(1)), int(m.group(2))
        self.base = f"http://127.0.0.1:{self.port}"
        self.nodes_p = {}

    def node(self, role, name, *args):
        cmd = [self.duet_bin, "decode" if role != "prefill" else "prefill", "--model",
               self.model, "--router", f"127.0.0.1:{self.ctl_port}", "--node-id", name,
               "--threads", "1", "--log-level", "warn", *args]
        if role == "colocated":
            cmd.append("--colocated")
        self.nodes_p[name] = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                              env=self.env)

    def get_json(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.loads(r.read())

    def nodes(self):
        return {n["id"]: n for n in self.get_json("/v1/cluster")["nodes"]}

    def stop(self):
        """SIGTERM everything; returns {name: (exit code, stderr)}."""
        out = {}
        procs = {**self.nodes_p, "router": self.router}
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for name, p in procs.items():
            try:
                _, err = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            for mark in SANITIZER_MARKS:
                assert mark not in err, (name, err[-5000:])
            out[name] = (p.returncode, err)
        return out
