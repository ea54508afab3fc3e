"""Helpers for the router's end-to-end tests.

`ProtocolTestPeer` is a hand-written control-plane client that speaks
docs/protocol.md from Python. It is a *protocol test peer*, not a node: it
registers as a prefill, decode or colocated node and answers the router's
RESERVE / PREFILL frames with a scripted reply (FIRST_TOKEN, TOKENS,
FINISH), so the real router can be exercised over real sockets before the
real node services (issue 8) exist. The reply is the UTF-8 bytes of
`script` (the router under test runs `--tokenizer byte`: token id = byte)
followed by EOS.
"""
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

try:
    import msgpack          # tests/requirements.txt; the peer needs it, Router does not
except ImportError:         # pragma: no cover - tests that need it importorskip it
    msgpack = None

HELLO, HELLO_OK, HEARTBEAT, RESERVE, NACK, PREFILL, FIRST_TOKEN, TOKENS, \
    FINISH, ABORT, ERROR, DRAIN = range(1, 13)
VERSION = 1
EOS_BYTE = 256          # <|endoftext|> of the byte tokenizer
TOKEN = "test-cluster-token"


def frame(t, v=VERSION, **fields):
    payload = msgpack.packb({"t": t, "v": v, **fields}, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def recv_frame(sock):
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    return msgpack.unpackb(recv_exact(sock, n), raw=False)


class Router:
    """A `duet router` process on free ports: `--tokenizer byte` (context
    512), or the GGUF tokenizer of `model`."""

    def __init__(self, duet_bin, *extra, env=None, model=None):
        src = ["--model", model] if model else ["--tokenizer", "byte", "--max-model-len", "512"]
        args = [duet_bin, "router", *src, "--port", "0", "--ctl-port", "0",
                "--cluster-token", TOKEN, "--heartbeat-timeout", "3", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"http [^ ]+:(\d+) control [^ ]+:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"router did not start: {line!r} {self.proc.stderr.read()}")
        self.http_port, self.ctl_port = int(m.group(1)), int(m.group(2))
        self.base = f"http://127.0.0.1:{self.http_port}"

    def stop(self):
        """SIGTERM; returns (exit code, stderr). Fails on any sanitizer
        report in the router's stderr."""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        for mark in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
            assert mark not in err, err
        return self.proc.returncode, err

    def request(self, method, path, body=None, headers=None, raw=None, timeout=10):
        """(status, headers, body bytes); never raises on HTTP errors."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get_json(self, path):
        status, _, body = self.request("GET", path)
        return status, json.loads(body) if body else None


class ProtocolTestPeer:
    """One registered node played by the test (see the module docstring).

    `script` is the reply text (as bytes = byte-tokenizer ids) or a list
    of token ids, or a function of the prompt's token ids returning either. Behaviours: nack=True answers RESERVE with NACK; fail_prefill=True
    answers PREFILL with ERROR; step_s is the delay between tokens."""

    def __init__(self, router, role, node_id, *, token=TOKEN, model=0, tp=1, blocks=4096,
                 block_size=16, script="Hello, world!", step_s=0.002, nack=False,
                 fail_prefill=False, heartbeat=True, cluster=None):
        self.router, self.role, self.node_id = router, role, node_id
        self.script = script
        self.step_s, self.nack, self.fail_prefill = step_s, nack, fail_prefill
        self.cluster = cluster if cluster is not None else {}
        self.sock = socket.create_connection(("127.0.0.1", router.ctl_port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        self.received = []          # every frame from the router
        self.aborted = set()
        self.closed = threading.Event()
        ucx = [f"127.0.0.1:{20000 + i}" for i in range(tp)] if role != "prefill" else []
        self.send(frame(HELLO, role=role, node=node_id, token=token, model=model, tp=tp,
                        block_size=block_size, blocks=blocks, ucx=ucx))
        self.hello_reply = recv_frame(self.sock)
        if self.hello_reply["t"] != HELLO_OK:
            raise RuntimeError(f"HELLO refused: {self.hello_reply}")
        self.sock.settimeout(None)
        self.cluster[node_id] = self
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        self.hb_stop = threading.Event()
        if heartbeat:
            threading.Thread(target=self._heartbeat_loop, daemon=True).start()

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def close(self):
        self.hb_stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _heartbeat_loop(self):
        while not self.hb_stop.wait(0.5):
            try:
                self.send(frame(HEARTBEAT, running=0, waiting=0, free_blocks=4000,
                                queued_tokens=0))
            except OSError:
                return

    def _read_loop(self):
        try:
            while True:
                f = recv_frame(self.sock)
                self.received.append(f)
                if f["t"] == ABORT:
                    self.aborted.add(f["rid"])
                elif f["t"] == RESERVE:
                    self._on_reserve(f)
                elif f["t"] == PREFILL:
                    threading.Thread(target=self._on_prefill, args=(f,), daemon=True).start()
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self.closed.set()

    def reply_tokens(self, max_tokens, eos, prompt=()):
        text = self.script(prompt) if callable(self.script) else self.script
        toks = list(text) if isinstance(text, list) else list(text.encode())
        if eos:
            toks.append(eos[0])
        return toks[:max_tokens], len(toks) > max_tokens or not eos

    def _on_reserve(self, f):
        if self.nack:
            self.send(frame(NACK, rid=f["rid"], reason="no free KV blocks"))

    def _on_prefill(self, f):
        try:
            self._prefill(f)
        except OSError:
            pass            # the router or the test closed the connection

    def _prefill(self, f):
        rid = f["rid"]
        if self.fail_prefill:
            self.send(frame(ERROR, rid=rid, msg="prefill failed (test peer)"))
            return
        toks, _ = self.reply_tokens(f["max_tokens"], f["eos"], f["tokens"])
        time.sleep(self.step_s)
        self.send(frame(FIRST_TOKEN, rid=rid, token=toks[0], kv_bytes=4096, kv_s=0.001))
        if "decode" in f:
            decode = self.cluster.get(f["decode"])
            if decode is not None:   # KV_END travels over UCX in the real system
                threading.Thread(target=decode.generate, args=(f, toks), daemon=True).start()
        else:
            self.generate(f, toks)

    def generate(self, f, toks):
        """Decode side: tokens after the first, then FINISH."""
        rid = f["rid"]
        for t in toks[1:]:
            time.sleep(self.step_s)
            if rid in self.aborted or self.closed.is_set():
                return
            try:
                self.send(frame(TOKENS, items=[[rid, t]]))
            except OSError:
                return
        reason = "stop" if (toks and toks[-1] in f["eos"]) else "length"
        try:
            self.send(frame(FINISH, rid=rid, reason=reason))
        except OSError:
            pass

    def frames_of(self, t):
        return [f for f in list(self.received) if f["t"] == t]


def wait_for(cond, timeout=5.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()
