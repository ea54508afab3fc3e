"""`duet bench serve` end to end: against the real router with a protocol
test peer (a colocated node that answers with tokens), and against a tiny
misbehaving HTTP server written here (connection drops, cut and malformed
streams, HTTP errors, a silent server). Failures must be counted, never
crash the benchmark; counts and throughput must add up."""
import json
import os
import random
import socket
import socketserver
import subprocess
import threading
import time

import pytest

from router_peer import Router, ProtocolTestPeer, wait_for

msgpack = pytest.importorskip("msgpack")


def bench(duet_bin, *args, timeout=60):
    p = subprocess.run([duet_bin, "bench", "serve", *args], capture_output=True, text=True,
                       timeout=timeout)
    for mark in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
        assert mark not in p.stderr, p.stderr
    return p


@pytest.fixture
def cluster(duet_bin):
    r = Router(duet_bin)
    peer = ProtocolTestPeer(r, "colocated", "c0", script="Hello there, world!", step_s=0.003)
    assert wait_for(lambda: r.request("GET", "/health")[0] == 200)
    yield r
    peer.close()
    code, _ = r.stop()
    assert code == 0


def check_consistent(res):
    assert res["completed"] + res["failed"] == res["sent"] == res["num_prompts"]
    assert sum(res["errors"].values()) == res["failed"]
    d = res["duration"]
    assert d > 0
    assert res["request_throughput"] == pytest.approx(res["completed"] / d, rel=1e-6)
    assert res["output_throughput"] == pytest.approx(res["total_output_tokens"] / d, rel=1e-6)
    assert res["input_throughput"] == pytest.approx(res["total_input_tokens"] / d, rel=1e-6)
    assert res["total_token_throughput"] == pytest.approx(
        (res["total_input_tokens"] + res["total_output_tokens"]) / d, rel=1e-6)


def test_against_router(duet_bin, cluster, tmp_path):
    out = tmp_path / "res.json"
    p = bench(duet_bin, "--base-url", cluster.base, "-n", "24", "--input-len", "8",
              "--output-len", "12", "--request-rate", "200", "--burstiness", "0.5", "-c", "6",
              "--num-warmups", "3", "--goodput", "ttft:5000", "tpot:5000", "--json",
              "--result-file", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert json.loads(out.read_text()) == res
    check_consistent(res)
    assert res["completed"] == 24 and res["failed"] == 0
    # the peer answers "Hello there, world!" + EOS (19 byte tokens), capped by max_tokens
    assert res["output_tokens_from"] == "usage"
    assert 24 * 6 <= res["total_output_tokens"] <= 24 * 18
    assert res["good_requests"] == 24
    assert res["request_goodput"] == pytest.approx(res["request_throughput"])
    for m in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < res[f"median_{m}_ms"] <= res[f"p99_{m}_ms"] + 1e-9
    assert res["mean_ttft_ms"] < res["mean_e2el_ms"]


def test_chat_and_jsonl(duet_bin, cluster, tmp_path):
    ds = tmp_path / "p.jsonl"
    ds.write_text('{"prompt": "Say hi", "output_len": 5}\n\n{"prompt": "Bonjour \\u00e9", '
                  '"max_tokens": 3}\n')
    p = bench(duet_bin, "--base-url", cluster.base, "--endpoint", "/v1/chat/completions",
              "--dataset", "jsonl", "--dataset-path", str(ds), "-n", "4", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    check_consistent(res)
    assert res["completed"] == 4 and res["backend"] == "openai-chat"
    assert res["total_output_tokens"] == 5 + 3 + 5 + 3


def test_human_output_and_fixed(duet_bin, cluster):
    p = bench(duet_bin, "--base-url", cluster.base, "--dataset", "fixed", "-n", "3",
              "--input-len", "4", "--output-len", "4", "--ignore-eos")
    assert p.returncode == 0, p.stderr
    assert "Successful requests:                     3" in p.stdout
    assert "P99 TTFT (ms):" in p.stdout and "Total generated tokens:                  12" \
        in p.stdout


# --- a misbehaving server ---------------------------------------------------

GOOD = [b'data: {"choices":[{"index":0,"text":"a"}]}\n\n',
        b'data: {"choices":[{"index":0,"text":"b"}]}\r\n\r\n',
        b': keep-alive comment\n\n',
        b'data: {"choices":[{"index":0,"text":"c","finish_reason":"length"}]}\n\n',
        # the server counts 4 tokens (one had no text, e.g. EOS): usage wins
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4}}\n\n',
        b'data: [DONE]\n\n']


class Handler(socketserver.BaseRequestHandler):
    def read_request(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.request.recv(65536)
            if not chunk:
                return False
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        while len(body) < n:
            body += self.request.recv(65536)
        json.loads(body)            # the benchmark sends valid JSON
        return True

    def send_split(self, data):
        """Write data in random small pieces, so the client sees arbitrary splits."""
        rng = random.Random(len(data))
        i = 0
        while i < len(data):
            k = rng.randint(1, 9)
            self.request.sendall(data[i:i + k])
            i += k
            time.sleep(0.0005)

    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        srv = self.server
        with srv.lock:
            mode = srv.modes[srv.count % len(srv.modes)]
            srv.count += 1
        if not self.read_request():
            return
        stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        if mode == "drop":
            return                              # close without a response
        if mode == "hang":
            time.sleep(3)
            return
        if mode == "http500":
            body = b'{"error": {"message": "boom", "code": 500}}'
            self.request.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(body), body))
            return
        if mode == "good_close":                # body delimited by the close
            self.request.sendall(stream + b"Connection: close\r\n\r\n")
            self.send_split(b"".join(GOOD))
            return
        if mode == "paced":                     # first text at 200 ms, then every 100 ms
            self.request.sendall(stream + b"Connection: close\r\n\r\n")
            time.sleep(0.2)
            for ev in GOOD[:2] + GOOD[3:4] + GOOD[:1]:
                self.request.sendall(ev)
                time.sleep(0.1)
            self.request.sendall(GOOD[4] + GOOD[5])
            return
        if mode == "good_nousage":              # no usage chunk: count text chunks
            self.request.sendall(stream + b"Connection: close\r\n\r\n")
            self.send_split(b"".join(GOOD[:4] + GOOD[5:]))
            return
        if mode == "good_chunked":
            self.request.sendall(stream + b"Transfer-Encoding: chunked\r\n"
                                 b"Connection: close\r\n\r\n")
            for ev in GOOD:
                self.send_split(b"%x\r\n%s\r\n" % (len(ev), ev))
            self.request.sendall(b"0\r\n\r\n")
            return
        if mode == "cut":                       # chunked, closed mid-stream
            self.request.sendall(stream + b"Transfer-Encoding: chunked\r\n\r\n")
            for ev in GOOD[:2]:
                self.send_split(b"%x\r\n%s\r\n" % (len(ev), ev))
            self.request.sendall(b"40\r\ndata: {\"choi")
            return
        if mode == "no_done":                   # close-delimited, no [DONE]
            self.request.sendall(stream + b"Connection: close\r\n\r\n")
            self.send_split(b"".join(GOOD[:2]))
            return
        if mode == "malformed":
            self.request.sendall(stream + b"Connection: close\r\n\r\n")
            self.send_split(GOOD[0] + b"data: {not json\n\n" + GOOD[-1])
            return
        if mode == "error_event":
            self.request.sendall(stream + b"Connection: close\r\n\r\n")
            self.send_split(GOOD[0] + b'data: {"error": {"message": "shutting down"}}\n\n'
                            + GOOD[-1])
            return
        raise AssertionError(mode)


class BadServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, modes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.modes, self.count, self.lock = modes, 0, threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


def test_misbehaving_server(duet_bin):
    modes = ["good_chunked", "drop", "cut", "malformed", "http500", "no_done", "error_event",
             "good_close", "good_nousage"]
    srv = BadServer(modes)
    try:
        p = bench(duet_bin, "--base-url", srv.url, "-n", "18", "-c", "1", "--input-len", "4",
                  "--output-len", "3", "--dataset", "fixed", "--json")
    finally:
        srv.close()
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    check_consistent(res)
    assert res["completed"] == 6, res
    assert res["failed"] == 12
    e = res["errors"]
    assert e["connect"] == 2 and e["http"] == 2 and e["malformed_sse"] == 2
    assert e["incomplete"] == 4 and e["server_error"] == 2
    # usage where sent (4 out, 7 in), else text chunks (3) and the local count (4)
    assert res["output_tokens_from"] == "mixed"
    assert res["total_output_tokens"] == 4 * 4 + 2 * 3
    assert res["total_input_tokens"] == 4 * 7 + 2 * 4
    assert any("HTTP 500" in s for s in res["error_samples"])


def test_timing(duet_bin):
    """TTFT, ITL, TPOT and E2EL measure what the server did: first text at
    200 ms, three more 100 ms apart, usage says 4 tokens."""
    srv = BadServer(["paced"])
    try:
        p = bench(duet_bin, "--base-url", srv.url, "-n", "3", "-c", "3", "--input-len", "4",
                  "--output-len", "4", "--json", "--goodput", "ttft:150")
    finally:
        srv.close()
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    check_consistent(res)
    assert res["completed"] == 3
    assert 199 <= res["median_ttft_ms"] < 1000
    assert 99 <= res["median_itl_ms"] < 600
    # TPOT = (E2EL - TTFT) / 3: three 100 ms gaps plus the final 100 ms sleep
    assert 130 <= res["median_tpot_ms"] < 800
    assert 599 <= res["median_e2el_ms"] < 3000
    assert res["good_requests"] == 0 and res["request_goodput"] == 0


def test_timeout_and_all_failed(duet_bin):
    srv = BadServer(["hang"])
    try:
        p = bench(duet_bin, "--base-url", srv.url, "-n", "2", "--timeout", "0.5", "--json",
                  "--tokenizer", "none")
    finally:
        srv.close()
    assert p.returncode == 3, p.stderr            # every request failed
    res = json.loads(p.stdout)
    assert res["errors"]["timeout"] == 2 and res["completed"] == 0
    # nothing listens: connection refused, counted
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = bench(duet_bin, "--base-url", f"http://127.0.0.1:{port}", "-n", "3", "--json",
              "--tokenizer", "none")
    assert p.returncode == 3
    assert json.loads(p.stdout)["errors"]["connect"] == 3


@pytest.mark.parametrize("args,msg", [
    (["--dataset", "sharegpt"], "expected random, fixed or jsonl"),
    (["--dataset", "jsonl"], "needs --dataset-path"),
    (["--goodput", "ttft"], "NAME:MS"),
    (["--goodput", "ttft:100", "foo:3"], "unknown metric 'foo'"),
    (["stray"], "unexpected argument"),
    (["--request-rate", "-1"], "positive number or inf"),
    (["--base-url", "https://x:1"], "only http://"),
    (["--endpoint", "v1/completions"], "must start with '/'"),
    (["--num-prompts", "0"], "--num-prompts"),
    (["--dataset", "fixed", "--range-ratio", "0.2"], "random only"),
    (["--tokenizer", "/nonexistent.gguf"], "/nonexistent.gguf"),
])
def test_bad_flags(duet_bin, args, msg):
    p = bench(duet_bin, *args)
    assert p.returncode in (1, 2), p
    assert msg in p.stderr, p.stderr


def test_bad_jsonl(duet_bin, tmp_path):
    ds = tmp_path / "bad.jsonl"
    ds.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    p = bench(duet_bin, "--dataset", "jsonl", "--dataset-path", str(ds))
    assert p.returncode == 1 and "bad.jsonl:2" in p.stderr, p.stderr
