"""Node services under failure: aborts at every stage free every block, a
killed decode or prefill node hurts only its own requests, hostile control
frames are refused without harm, and a drain under load loses nothing."""
import http.client
import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

msgpack = pytest.importorskip("msgpack")

from nodes_util import Serve, alive, free_port, mkmodel, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def small(duet_bin, smollm2, tmp_path_factory):
    return mkmodel(duet_bin, tmp_path_factory.mktemp("faults") / "small.gguf", smollm2)


@pytest.fixture(scope="module")
def medium(duet_bin, smollm2, tmp_path_factory):
    """Slow enough that a 400-token prompt spends a while in prefill."""
    return mkmodel(duet_bin, tmp_path_factory.mktemp("faults") / "medium.gguf", smollm2,
                   "--layers", "6", "--hidden", "256", "--heads", "4", "--kv-heads", "2",
                   "--ffn", "768")


def model_id(serve):
    return serve.get_json("/v1/models")["data"][0]["id"]


def stream_request(serve, body):
    """Start a streaming completion over a raw connection; returns it."""
    conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({**body, "stream": True,
                                  "stream_options": {"include_usage": True}}),
                 headers={"Content-Type": "application/json"})
    return conn


def read_events(resp, n):
    """Read up to n SSE data events; returns them (fewer at the end)."""
    out = []
    while len(out) < n:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if line.startswith(b"data: "):
            out.append(line[6:])
            if line == b"data: [DONE]":
                break
    return out


def finish_stream(resp):
    """(completion tokens from the usage chunk, error event or None)."""
    n, err = 0, None
    for ev in read_events(resp, 100000):
        if ev == b"[DONE]":
            break
        obj = json.loads(ev)
        if "error" in obj:
            err = obj["error"]
        elif obj.get("usage"):
            n = obj["usage"]["completion_tokens"]
    return n, err


def stream_all(serve, body):
    """(tokens, error) of one streamed request, read to the end."""
    conn = stream_request(serve, body)
    resp = conn.getresponse()
    if resp.status != 200:
        return 0, f"HTTP {resp.status}: {resp.read()[:300]!r}"
    res = finish_stream(resp)
    conn.close()
    return res


def test_abort_at_every_stage_frees_every_block(duet_bin, medium):
    serve = Serve(duet_bin, medium, "--prefill", "1", "--decode", "1", "--kv-mem", "64")
    try:
        mid = model_id(serve)
        rng = random.Random(3)
        conns = []
        # close after 0..120 ms: in the queue, in prefill, in the KV transfer,
        # and while decoding (long generations)
        for i in range(24):
            prompt = [rng.randrange(100, 49000) for _ in range(rng.choice([20, 200, 400]))]
            c = stream_request(serve, {"model": mid, "prompt": prompt, "max_tokens": 400,
                                       "temperature": 0, "ignore_eos": True})
            conns.append((c, rng.choice([0.0, 0.01, 0.03, 0.06, 0.12, -1, -3])))
        t0 = time.time()
        for c, when in conns:
            if when < 0:   # after |when| tokens
                resp = c.getresponse()
                read_events(resp, int(-when))
            else:
                time.sleep(max(0.0, t0 + when - time.time()))
            c.close()
        assert wait_for(serve.all_blocks_free, 20), serve.nodes()
        # and the cluster still serves
        n, err = stream_all(serve, {"model": mid, "prompt": [1, 2, 3], "max_tokens": 5,
                                    "temperature": 0, "ignore_eos": True})
        assert (n, err) == (5, None)
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


def test_kill_decode_mid_stream(duet_bin, small):
    serve = Serve(duet_bin, small, "--prefill", "1", "--decode", "2", "--kv-mem", "32")
    try:
        mid = model_id(serve)
        results = []
        started = threading.Barrier(7)

        def one(i):
            conn = stream_request(serve, {"model": mid, "prompt": [10 + i, 20, 30],
                                          "max_tokens": 600, "temperature": 0,
                                          "ignore_eos": True})
            resp = conn.getresponse()
            read_events(resp, 3)
            started.wait(30)
            results.append(finish_stream(resp))
            conn.close()

        ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        started.wait(30)
        pid = serve.node_pid("decode-0")
        os.kill(pid, signal.SIGKILL)
        for t in ts:
            t.join(60)
        ok = [r for r in results if r[1] is None]
        failed = [r for r in results if r[1] is not None]
        assert len(results) == 6
        assert ok and failed, results          # both decode nodes had streams
        assert all(n == 600 for n, _ in ok), results
        # the prefill side holds nothing; the surviving decode node is clean
        assert wait_for(lambda: "decode-0" not in serve.nodes(), 10)
        assert wait_for(lambda: serve.all_blocks_free(["prefill-0", "decode-1"]), 10), \
            serve.nodes()
        n, err = stream_all(serve, {"model": mid, "prompt": [1, 2], "max_tokens": 4,
                                    "temperature": 0, "ignore_eos": True})
        assert (n, err) == (4, None)
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]
    assert "decode-0 killed by signal 9" in err


def test_kill_prefill_in_flight(duet_bin, medium):
    serve = Serve(duet_bin, medium, "--prefill", "2", "--decode", "1", "--kv-mem", "64")
    try:
        mid = model_id(serve)
        rng = random.Random(5)
        results = [None] * 8

        def one(i):
            prompt = [rng.randrange(100, 49000) for _ in range(300)]
            results[i] = stream_all(serve, {"model": mid, "prompt": prompt, "max_tokens": 4,
                                            "temperature": 0, "ignore_eos": True})

        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        os.kill(serve.node_pid("prefill-0"), signal.SIGKILL)
        for t in ts:
            t.join(120)
        # Requests on the dead node fail or are retried before any token;
        # nothing hangs, and the others complete in full.
        assert all(r is not None for r in results), results
        assert any(r == (4, None) for r in results), results
        assert all(r == (4, None) or r[1] is not None for r in results), results
        assert wait_for(lambda: "prefill-0" not in serve.nodes(), 10)
        assert wait_for(lambda: serve.all_blocks_free(["prefill-1", "decode-0"]), 15), \
            serve.nodes()
        n, err = stream_all(serve, {"model": mid, "prompt": [7, 8, 9], "max_tokens": 4,
                                    "temperature": 0, "ignore_eos": True})
        assert (n, err) == (4, None)
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


def frame(t, v=1, **fields):
    payload = msgpack.packb({"t": t, "v": v, **fields}, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def closed_by_peer(s, timeout=5):
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return True
    except (ConnectionError, socket.timeout):
        return False


def test_hostile_control_frames_leave_nodes_serving(duet_bin, small):
    serve = Serve(duet_bin, small, "--prefill", "1", "--decode", "1", "--kv-mem", "32")
    try:
        mid = model_id(serve)
        hello = dict(role="decode", node="intruder", model=0, tp=1, block_size=16, blocks=64,
                     ucx=["127.0.0.1:1"])
        bad = [
            frame(1, token="wrong-token", **hello),
            frame(1, v=99, token="x", **hello),
            struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1",
            struct.pack(">I", 0x7FFFFFFF),
            frame(3, running=0, waiting=0, free_blocks=0, queued_tokens=0),
        ]
        for b in bad:
            s = socket.create_connection(("127.0.0.1", serve.ctl_port), timeout=5)
            s.sendall(b)
            assert closed_by_peer(s), b
            s.close()
        # a real node with the wrong cluster token is refused and exits 1
        r = subprocess.run([duet_bin, "decode", "--colocated", "--model", small, "--router",
                            f"127.0.0.1:{serve.ctl_port}", "--cluster-token", "wrong",
                            "--kv-mem", "16", "--threads", "1"],
                           capture_output=True, text=True, timeout=30,
                           env={**os.environ, "DUET_CLUSTER_TOKEN": ""})
        assert r.returncode == 1 and "refused" in r.stderr, r.stderr
        assert set(serve.nodes()) == {"prefill-0", "decode-0"}
        n, err = stream_all(serve, {"model": mid, "prompt": [3, 4], "max_tokens": 4,
                                    "temperature": 0, "ignore_eos": True})
        assert (n, err) == (4, None)
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


class FakeRouter:
    """A control-plane server played by the test, to send a node bad frames."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.srv.settimeout(30)
        self.port = self.srv.getsockname()[1]

    def accept_hello(self):
        s, _ = self.srv.accept()
        s.settimeout(30)
        hello = self.recv(s)
        s.sendall(frame(2, node=hello["node"], heartbeat_ms=1000, timeout_ms=5000,
                        max_frame=1 << 20))
        return s, hello

    @staticmethod
    def recv(s):
        def exact(n):
            b = b""
            while len(b) < n:
                c = s.recv(n - len(b))
                if not c:
                    raise ConnectionError("closed")
                b += c
            return b
        (n,) = struct.unpack(">I", exact(4))
        return msgpack.unpackb(exact(n), raw=False)


def test_node_refuses_malformed_router_frames(duet_bin, small):
    fr = FakeRouter()
    node = subprocess.Popen([duet_bin, "decode", "--colocated", "--model", small, "--router",
                             f"127.0.0.1:{fr.port}", "--node-id", "n0", "--kv-mem", "16",
                             "--threads", "1", "--log-level", "warn"],
                            stderr=subprocess.PIPE, text=True)
    try:
        s, hello = fr.accept_hello()
        assert hello["t"] == 1 and hello["role"] == "colocated" and hello["node"] == "n0"
        assert hello["blocks"] > 0 and hello["tp"] == 1 and hello["model"] != 0
        # a request with bad fields: ERROR for that rid, the connection stays
        s.sendall(frame(6, rid=5, tokens="nope", max_tokens=4))
        s.sendall(frame(6, rid=6, tokens=[1, 2], max_tokens=0))
        s.sendall(frame(6, rid=7, tokens=[1, 2, 3], max_tokens=3, temperature=0.0,
                        ignore_eos=True, eos=[]))
        got = {}
        while not ({5, 6} <= set(got.get(11, [])) and 7 in got.get(9, [])):
            f = fr.recv(s)
            got.setdefault(f["t"], []).append(f.get("rid"))
        # garbage: the node closes this connection and registers again
        s.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        assert closed_by_peer(s)
        s2, hello2 = fr.accept_hello()
        assert hello2["node"] == "n0"
        # a wrong protocol version is garbage too
        s2.sendall(frame(6, v=2, rid=8, tokens=[1], max_tokens=1))
        assert closed_by_peer(s2)
        s3, _ = fr.accept_hello()
        # DRAIN from the router: the node answers DRAIN, closes, exits 0
        s3.sendall(frame(12))
        kinds = []
        try:
            while True:
                kinds.append(fr.recv(s3)["t"])
        except (ConnectionError, OSError):
            pass
        assert 12 in kinds, kinds
        assert node.wait(20) == 0
        s3.close()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    err = node.stderr.read()
    assert "runtime error" not in err and "AddressSanitizer" not in err, err


def test_drain_under_load_loses_nothing(duet_bin, small):
    serve = Serve(duet_bin, small, "--prefill", "1", "--decode", "2", "--kv-mem", "32")
    try:
        mid = model_id(serve)
        results = []
        started = threading.Barrier(9)

        def one(i):
            conn = stream_request(serve, {"model": mid, "prompt": [40 + i, 41, 42],
                                          "max_tokens": 200, "temperature": 0,
                                          "ignore_eos": True})
            resp = conn.getresponse()
            read_events(resp, 1)
            started.wait(30)
            results.append(finish_stream(resp))
            conn.close()

        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        started.wait(30)
        pid = serve.node_pid("decode-0")
        os.kill(pid, signal.SIGTERM)
        # new work keeps flowing to the other decode node while it drains
        n, err = stream_all(serve, {"model": mid, "prompt": [1, 2], "max_tokens": 4,
                                    "temperature": 0, "ignore_eos": True})
        assert (n, err) == (4, None), err
        for t in ts:
            t.join(60)
        assert sorted(results) == [(200, None)] * 8, results
        assert wait_for(lambda: not alive(pid), 15)
        assert wait_for(lambda: "decode-0" not in serve.nodes(), 5)
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]
    assert "decode-0 exited with status" not in err and "decode-0 killed" not in err, err


def test_decode_reserve_nack_grant_timeout_and_abort(duet_bin, small):
    """A decode node against a fake router: RESERVE for a prefill node that
    never connects fails after --grant-wait-ms with ERROR and frees its
    blocks; a RESERVE with no room is NACKed; ABORT of a reserved request
    frees it at once; heartbeats show every block back."""
    fr = FakeRouter()
    node = subprocess.Popen([duet_bin, "decode", "--model", small, "--router",
                             f"127.0.0.1:{fr.port}", "--node-id", "d0", "--kv-blocks", "8",
                             "--kv-watermark", "0", "--grant-wait-ms", "800", "--threads", "1",
                             "--log-level", "error"],
                            stderr=subprocess.PIPE, text=True)
    try:
        s, hello = fr.accept_hello()
        assert hello["role"] == "decode" and hello["blocks"] == 8
        assert len(hello["ucx"]) == 1 and hello["ucx"][0].startswith("127.0.0.1:")
        sampling = dict(max_tokens=4, temperature=0.0, ignore_eos=True, eos=[])
        s.sendall(frame(4, rid=1, prefill="ghost", tokens=list(range(1, 70)), **sampling))
        s.sendall(frame(4, rid=2, prefill="ghost", tokens=list(range(1, 70)), **sampling))
        s.sendall(frame(4, rid=3, prefill="ghost", tokens=list(range(1, 10)), **sampling))
        s.sendall(frame(10, rid=3))
        s.sendall(frame(4, rid=4, prefill="ghost", tokens=[99999999], **sampling))
        got, free = {}, []
        deadline = time.time() + 20
        while time.time() < deadline:
            f = fr.recv(s)
            if f["t"] == 3:
                free.append(f["free_blocks"])
                if 1 in got.get(11, []) and free[-1] == 8:
                    break
            else:
                got.setdefault(f["t"], []).append(f.get("rid"))
        assert got.get(5) == [2], got            # no room for the second one
        assert sorted(got.get(11, [])) == [1, 4], got   # grant wait; bad token id
        assert free and free[-1] == 8, free
        node.send_signal(signal.SIGTERM)
        assert fr.recv(s)["t"] in (3, 12)        # DRAIN (maybe after a heartbeat)
        assert node.wait(20) == 0
        s.close()
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    err = node.stderr.read()
    assert "runtime error" not in err and "AddressSanitizer" not in err, err


def frames_for(fr, s, secs, until=lambda f: False):
    """The frames a node sends on s within secs, or up to the first one that
    until() accepts (heartbeats left out)."""
    out, end = [], time.time() + secs
    while not (out and until(out[-1])):
        left = end - time.time()
        if left <= 0:
            return out
        s.settimeout(left)
        try:
            f = fr.recv(s)
        except socket.timeout:
            return out
        finally:
            s.settimeout(30)
        if f["t"] != 3:
            out.append(f)
    return out


class FakePair:
    """A real decode node d0 and a real prefill node p0 against a FakeRouter:
    the test sends their RESERVE / PREFILL / ABORT frames itself, and so
    chooses when the decode node grants. Logs go to files under tmp (a
    debug log fills a pipe nobody reads until the end)."""

    def __init__(self, duet_bin, model, tmp, dec_args=(), pre_args=(), sampling=None):
        self.fr = FakeRouter()
        env = {**os.environ, "UCX_TLS": "tcp,self", "UCX_LOG_LEVEL": "fatal"}
        common = ["--model", model, "--router", f"127.0.0.1:{self.fr.port}", "--threads", "1"]
        self.logs = {r: open(tmp / f"{r}.log", "w+") for r in ("decode", "prefill")}
        self.procs = [
            subprocess.Popen([duet_bin, "decode", "--node-id", "d0", "--log-level", "error",
                              *common, *dec_args], stderr=self.logs["decode"], env=env),
            subprocess.Popen([duet_bin, "prefill", "--node-id", "p0", "--log-level", "error",
                              *common, *pre_args], stderr=self.logs["prefill"], env=env),
        ]
        self.sampling = sampling or dict(max_tokens=3, temperature=0.0, ignore_eos=True, eos=[])
        try:
            conns = dict(self.fr.accept_hello() for _ in range(2))
        except Exception:
            self.stop()
            raise
        by_role = {h["role"]: (sock, h) for sock, h in conns.items()}
        (self.sd, self.hd), (self.sp, _) = by_role["decode"], by_role["prefill"]

    def prefill(self, rid, tokens):
        self.sp.sendall(frame(6, rid=rid, tokens=tokens, decode="d0", decode_tp=1,
                              decode_ucx=self.hd["ucx"], **self.sampling))

    def reserve(self, rid, tokens):
        self.sd.sendall(frame(4, rid=rid, prefill="p0", tokens=tokens, **self.sampling))

    def stop(self):
        """SIGTERM both; {role: log}, checked for sanitizer reports."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        out = {}
        for role, f in self.logs.items():
            f.seek(0)
            out[role] = f.read()
            f.close()
            assert "runtime error" not in out[role] and "AddressSanitizer" not in out[role], \
                out[role][-3000:]
        return out


def test_first_token_waits_for_the_grant(duet_bin, small, tmp_path):
    """A prefill node sends FIRST_TOKEN only once the decode node granted:
    before that the decode node may still NACK (full, draining), and the
    router can retry elsewhere only while it has seen no token. A NACKed
    request gets no FIRST_TOKEN at all."""
    pair = FakePair(duet_bin, small, tmp_path, dec_args=["--kv-blocks", "8",
                                                         "--kv-watermark", "0"])
    fr, sd, sp = pair.fr, pair.sd, pair.sp
    try:
        # the prompt is done long before the RESERVE: no FIRST_TOKEN yet
        pair.prefill(1, [5, 6, 7])
        assert frames_for(fr, sp, 1.0) == []
        pair.reserve(1, [5, 6, 7])
        got = frames_for(fr, sp, 10.0, lambda f: True)
        assert [(f["t"], f.get("rid")) for f in got] == [(7, 1)], got
        got = frames_for(fr, sd, 10.0, lambda f: f["t"] == 9)
        assert [(f["t"], f.get("rid")) for f in got][-1] == (9, 1), got
        # a reservation holds 5 of the 8 blocks, so the next 5 get a NACK,
        # and the prefill node never sends its FIRST_TOKEN
        long = list(range(1, 70))
        pair.reserve(2, long)
        pair.prefill(3, long)
        pair.reserve(3, long)
        got = frames_for(fr, sd, 10.0, lambda f: True)
        assert [(f["t"], f.get("rid")) for f in got] == [(5, 3)], got
        sp.sendall(frame(10, rid=3))
        assert all(f["t"] != 7 for f in frames_for(fr, sp, 1.5))
        sd.sendall(frame(10, rid=2))
        # and both still serve
        pair.prefill(4, [8, 9])
        pair.reserve(4, [8, 9])
        got = frames_for(fr, sp, 10.0, lambda f: f["t"] == 7)
        assert [(f["t"], f.get("rid")) for f in got][-1] == (7, 4), got
    finally:
        pair.stop()


def test_prefill_preempted_with_layers_queued(duet_bin, small, tmp_path):
    """A prefill node short of blocks preempts a prompt whose first layers
    are already queued for a decode node that has not granted yet: those
    layers are dropped (their blocks go to another prompt) and sent again
    once recomputed, so the decode node gets the right KV. Reference: the
    same prompt again once the pool is free."""
    pair = FakePair(duet_bin, small, tmp_path, dec_args=["--kv-blocks", "64"],
                    pre_args=["--kv-blocks", "8", "--kv-watermark", "0",
                              "--max-step-tokens", "48", "--no-prefix-caching",
                              "--log-level", "debug"],
                    sampling=dict(max_tokens=6, temperature=0.0, ignore_eos=True, eos=[]))
    fr, sd, sp = pair.fr, pair.sd, pair.sp
    a = [100 + i for i in range(80)]
    b = [3000 + 7 * i for i in range(80)]

    def generated(rid):
        first = frames_for(fr, sp, 20.0, lambda f: f["t"] in (7, 11))
        assert [(f["t"], f.get("rid")) for f in first][-1] == (7, rid), first
        toks = [first[-1]["token"]]
        for f in frames_for(fr, sd, 20.0, lambda f: f["t"] in (9, 11)):
            toks += [t for r, t in f.get("items", []) if r == rid]
            assert f["t"] != 11, f
        return toks

    try:
        # a: 5 blocks, done after two steps and held (no grant yet); b: its
        # first 16 tokens' layers queued, then preempted for want of blocks
        pair.prefill(1, a)
        pair.prefill(2, b)
        time.sleep(1.0)
        pair.reserve(1, a)
        got_a = generated(1)
        pair.reserve(2, b)
        got_b = generated(2)
        # the references, one at a time with the pool free
        pair.prefill(3, b)
        pair.reserve(3, b)
        assert generated(3) == got_b
        pair.prefill(4, a)
        pair.reserve(4, a)
        assert generated(4) == got_a
    finally:
        logs = pair.stop()
    assert "preempted request 2" in logs["prefill"], logs["prefill"][-3000:]


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_decode_blocked_request_does_not_spin(duet_bin, small, tmp_path):
    """A decode node whose running request cannot grow (the free blocks are
    reserved for a request still waiting for its KV) preempts it, and cannot
    take it back until blocks come free: it must wait for that, not step
    again at once in a loop that keeps a core busy."""
    pair = FakePair(duet_bin, small, tmp_path,
                    dec_args=["--kv-blocks", "8", "--kv-watermark", "0", "--log-level", "debug"],
                    sampling=dict(max_tokens=400, temperature=0.0, ignore_eos=True, eos=[]))
    fr, sp = pair.fr, pair.sp
    a = [100 + i for i in range(80)]      # 5 blocks, grows to 6, then needs a 7th
    b = [3000 + i for i in range(32)]     # 2 blocks reserved; its KV never comes
    try:
        pair.reserve(2, b)
        pair.prefill(1, a)
        pair.reserve(1, a)
        first = frames_for(fr, sp, 20.0, lambda f: f["t"] in (7, 11))
        assert [(f["t"], f.get("rid")) for f in first][-1] == (7, 1), first
        time.sleep(1.5)                   # a has run into the wall by now
        pid = pair.procs[0].pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(2.0)
        busy = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    finally:
        logs = pair.stop()
    assert "preempted request" in logs["decode"], logs["decode"][-3000:]
    assert busy < 0.3, f"decode node used {busy:.0%} of a core while blocked"


def test_restart_and_stop_mid_stream(duet_bin, small):
    """--restart brings a killed node back; Ctrl-C with streams in flight
    stops everything with exit 0 and no orphans (checked by Serve.stop)."""
    serve = Serve(duet_bin, small, "--colocated", "--restart", "--kv-mem", "32")
    stopped = False
    try:
        mid = model_id(serve)
        old = serve.node_pid("colocated-0")
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: serve.node_pid("colocated-0") not in (None, old), 15)
        assert wait_for(lambda: "colocated-0" in serve.nodes(), 15)
        n, err = stream_all(serve, {"model": mid, "prompt": [5, 6], "max_tokens": 4,
                                    "temperature": 0, "ignore_eos": True})
        assert (n, err) == (4, None)
        conns = []
        for i in range(4):
            c = stream_request(serve, {"model": mid, "prompt": [60 + i, 7], "max_tokens": 900,
                                       "temperature": 0, "ignore_eos": True})
            read_events(c.getresponse(), 2)
            conns.append(c)
        code, err = serve.stop()
        stopped = True
        assert code == 0, err[-3000:]
        assert "colocated-0 killed by signal 9" in err
        for c in conns:
            c.close()
    finally:
        if not stopped:
            serve.stop()


def test_lease_expiry_frees_both_sides(duet_bin, medium):
    """Grants leased for 50 ms cannot be filled by a prefill of 300 tokens
    on the slow model: the decode node reclaims the blocks and aborts its
    engine request, the prefill node stops computing, the router fails the
    request (after its one retry), and every block is back."""
    from nodes_util import Cluster
    c = Cluster(duet_bin, medium)
    try:
        c.node("decode", "d0", "--lease-ms", "100", "--kv-mem", "32")
        c.node("prefill", "p0", "--kv-mem", "32")
        assert wait_for(lambda: set(c.nodes()) == {"d0", "p0"}, 30)
        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
        prompt = list(range(1000, 1800))
        conn.request("POST", "/v1/completions",
                     body=json.dumps({"model": c.get_json("/v1/models")["data"][0]["id"],
                                      "prompt": prompt, "max_tokens": 4, "temperature": 0}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status >= 500 and "error" in body, (resp.status, body)

        def clean():
            n = c.nodes()
            return all(x["free_blocks"] == x["total_blocks"] and not x["running"] and
                       not x["waiting"] and not x["queued_prompt_tokens"] for x in n.values())
        assert wait_for(clean, 15), c.nodes()
    finally:
        res = c.stop()
    assert all(code == 0 for code, _ in res.values()), res


def test_prefill_drain_under_load_loses_nothing(duet_bin, medium):
    """SIGTERM a prefill node with prompts in flight: it finishes them (compute
    and KV transfer), sends their first tokens, then leaves; nothing fails."""
    serve = Serve(duet_bin, medium, "--prefill", "2", "--decode", "1", "--kv-mem", "64")
    try:
        mid = model_id(serve)
        rng = random.Random(9)
        results = [None] * 8

        def one(i):
            prompt = [rng.randrange(100, 49000) for _ in range(300)]
            results[i] = stream_all(serve, {"model": mid, "prompt": prompt, "max_tokens": 6,
                                            "temperature": 0, "ignore_eos": True})

        ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        pid = serve.node_pid("prefill-0")
        os.kill(pid, signal.SIGTERM)
        for t in ts:
            t.join(120)
        assert results == [(6, None)] * 8, results
        assert wait_for(lambda: not alive(pid), 15)
        assert wait_for(lambda: "prefill-0" not in serve.nodes(), 5)
        assert wait_for(lambda: serve.all_blocks_free(), 10), serve.nodes()
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]
    assert "prefill-0 exited with status" not in err and "prefill-0 killed" not in err, err


def test_kill_tp_worker_rank_mid_stream(duet_bin, small):
    """kill -9 of a decode node's TP worker rank: the executor notices, the
    node fails its requests and leaves (exit 1, reported by duet serve);
    the prefill node holds nothing afterwards."""
    from nodes_util import children
    serve = Serve(duet_bin, small, "--prefill", "1", "--decode", "1", "--decode-tp", "2",
                  "--kv-mem", "32")
    try:
        mid = model_id(serve)
        conns = []
        for i in range(3):
            c = stream_request(serve, {"model": mid, "prompt": [70 + i, 8], "max_tokens": 900,
                                       "temperature": 0, "ignore_eos": True})
            resp = c.getresponse()
            read_events(resp, 2)
            conns.append((c, resp))
        workers = list(children(serve.node_pid("decode-0")))
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        results = [finish_stream(resp) for _, resp in conns]
        assert all(err is not None for _, err in results), results
        assert wait_for(lambda: "decode-0" not in serve.nodes(), 15)
        assert wait_for(lambda: serve.all_blocks_free(["prefill-0"]), 10), serve.nodes()
        assert wait_for(lambda: serve.node_pid("decode-0") is None, 20)   # exited, reaped
        for c, _ in conns:
            c.close()
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]
    assert "decode-0 exited with status 1" in err, err[-3000:]
