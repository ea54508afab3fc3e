"""End-to-end tests of `duet router`'s control plane and request lifecycle,
with ProtocolTestPeer (tests/e2e/router_peer.py) playing the nodes over real
sockets and the official openai client on the HTTP side."""
import json
import socket
import struct
import time

import pytest

msgpack = pytest.importorskip("msgpack")   # tests/requirements.txt: msgpack==1.2.4

import openai  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from router_peer import (ABORT, DRAIN, ERROR, HEARTBEAT, HELLO, PREFILL, RESERVE,  # noqa: E402
                         TOKEN, ProtocolTestPeer, Router, frame, recv_frame, wait_for)

SCRIPT = "Hi! caf\u00e9 \u20ac \U0001F600 STOP here."


@pytest.fixture
def router(duet_bin):
    r = Router(duet_bin)
    yield r
    code, err = r.stop()
    assert code == 0, err
    assert "runtime error" not in err and "AddressSanitizer" not in err, err


def client(router):
    return openai.OpenAI(base_url=router.base + "/v1", api_key="none", max_retries=0,
                         timeout=10)


def hello_raw(router, **over):
    """Open a connection, send one HELLO (fields overridable), return
    (socket, reply frame or None when the router closed at once)."""
    s = socket.create_connection(("127.0.0.1", router.ctl_port), timeout=5)
    fields = dict(role="decode", node="raw", token=TOKEN, model=0, tp=1, block_size=16,
                  blocks=100, ucx=["127.0.0.1:1"])
    fields.update(over)
    v = fields.pop("v", 1)
    s.sendall(frame(HELLO, v=v, **fields))
    try:
        return s, recv_frame(s)
    except ConnectionError:
        return s, None


def closed_by_peer(s, timeout=3):
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return True
    except (ConnectionError, socket.timeout):
        return False


def test_hello_rejections_leave_other_nodes_up(router):
    good = ProtocolTestPeer(router, "colocated", "good-0")
    cases = [
        dict(token="wrong"),
        dict(v=2),
        dict(role="janitor"),
        dict(node=""),
        dict(node="bad id with spaces"),
        dict(tp=0),
        dict(tp="one"),
        dict(blocks=0),
        dict(ucx=["a", "b"]),          # tp 1 but two addresses
        dict(node="good-0"),           # duplicate id
    ]
    for over in cases:
        s, reply = hello_raw(router, **over)
        assert reply is not None and reply["t"] == ERROR, (over, reply)
        assert reply["msg"] and reply["code"], reply
        assert closed_by_peer(s), over
        s.close()
    # raw garbage: bad msgpack, oversize length, missing fields, a first frame
    # that is not HELLO
    payloads = [
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",
        struct.pack(">I", 0x7fffffff),
        struct.pack(">I", 5) + msgpack.packb({"t": 1, "v": 1})[:5],
        frame(HELLO, role="decode"),
        frame(HEARTBEAT, running=0, waiting=0, free_blocks=1, queued_tokens=0),
        struct.pack(">I", 2) + msgpack.packb([1]),
    ]
    for p in payloads:
        s = socket.create_connection(("127.0.0.1", router.ctl_port), timeout=5)
        s.sendall(p)
        assert closed_by_peer(s), p
        s.close()
    # the good node is still registered and serving
    assert not good.closed.is_set()
    st, cluster = router.get_json("/v1/cluster")
    assert [n["id"] for n in cluster["nodes"]] == ["good-0"]
    good.script = "ok"
    out = client(router).completions.create(model="duet-byte", prompt="x", max_tokens=8)
    assert out.choices[0].text == "ok"
    good.close()


def test_health_flips_and_cluster_content(router):
    assert router.request("GET", "/health")[0] == 503
    p = ProtocolTestPeer(router, "prefill", "p0")
    assert router.request("GET", "/health")[0] == 503       # decode missing
    d = ProtocolTestPeer(router, "decode", "d0", tp=2, blocks=1000, cluster=p.cluster)
    assert router.request("GET", "/health")[0] == 200
    st, c = router.get_json("/v1/cluster")
    assert st == 200
    assert c["counts"] == {"prefill": 1, "decode": 1, "colocated": 0}
    assert c["prefill_decode_ratio"] == "1:1"
    nodes = {n["id"]: n for n in c["nodes"]}
    assert nodes["d0"]["role"] == "decode" and nodes["d0"]["tp"] == 2
    assert nodes["d0"]["total_blocks"] == 1000
    assert nodes["d0"]["ucx"] == ["127.0.0.1:20000", "127.0.0.1:20001"]
    assert wait_for(lambda: router.get_json("/v1/cluster")[1]["nodes"][1]["free_blocks"] == 4000)
    assert 0.0 <= nodes["d0"]["kv_usage"] <= 1.0
    # heartbeats stop -> the node is dropped; /health goes back to 503
    d.hb_stop.set()
    assert wait_for(lambda: router.request("GET", "/health")[0] == 503, timeout=8)
    assert wait_for(lambda: d.closed.is_set(), timeout=3)
    # a closed connection drops a node at once
    p.close()
    assert wait_for(lambda: router.get_json("/v1/cluster")[1]["counts"]["prefill"] == 0)


def disagg(router, **kw):
    cluster = {}
    p = ProtocolTestPeer(router, "prefill", "p0", cluster=cluster, **kw)
    d = ProtocolTestPeer(router, "decode", "d0", cluster=cluster, **kw)
    return p, d


def test_lifecycle_disaggregated_openai_client(router):
    p, d = disagg(router, script=SCRIPT)
    c = client(router)
    # non-streaming chat with a stop string spanning several tokens
    r = c.chat.completions.create(model="duet-byte", messages=[{"role": "user", "content": "hi"}],
                                  stop=["STOP"], max_tokens=100)
    assert r.choices[0].message.content == "Hi! caf\u00e9 \u20ac \U0001F600 "
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len("Hi! caf\u00e9 \u20ac \U0001F600 STOP".encode())
    assert r.usage.prompt_tokens > 0
    # RESERVE to the decode and PREFILL to the prefill, same rid
    res, pre = d.frames_of(RESERVE)[-1], p.frames_of(PREFILL)[-1]
    assert res["rid"] == pre["rid"] and res["prefill"] == "p0" and pre["decode"] == "d0"
    assert pre["decode_ucx"] == ["127.0.0.1:20000"] and pre["tokens"] == res["tokens"]
    # the stop string made the router ABORT the decode side
    assert wait_for(lambda: res["rid"] in d.aborted)
    # streaming completion: one token per chunk, whole UTF-8 characters,
    # usage chunk, [DONE]
    stream = c.completions.create(model="duet-byte", prompt="hello", max_tokens=100,
                                  stream=True, stream_options={"include_usage": True})
    texts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].text:
                texts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert "".join(texts) == SCRIPT
    assert "\u20ac" in texts and "\U0001F600" in texts     # never split
    assert finish == "stop"
    assert usage.completion_tokens == len(SCRIPT.encode()) + 1     # + EOS
    # max_tokens -> finish_reason length
    r = c.completions.create(model="duet-byte", prompt="x", max_tokens=3)
    assert r.choices[0].text == "Hi!" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    # streaming chat: role first, stop string held back and not emitted
    stream = c.chat.completions.create(model="duet-byte", stream=True, stop="\U0001F600",
                                       messages=[{"role": "user", "content": "x"}])
    deltas = [ch.choices[0].delta for ch in stream if ch.choices]
    assert deltas[0].role == "assistant"
    assert "".join(dl.content or "" for dl in deltas) == "Hi! caf\u00e9 \u20ac "
    p.close()
    d.close()


def test_n_and_batched_prompts(router):
    """n > 1 and a list of prompts fan out into one sequence per choice;
    choices come back indexed prompt-major (prompt i, sample j -> i*n + j)."""
    def reply(prompt):
        return "re:" + bytes(t for t in prompt if t < 256).decode()

    cluster = {}
    p = ProtocolTestPeer(router, "prefill", "p0", cluster=cluster, script=reply)
    d = ProtocolTestPeer(router, "decode", "d0", cluster=cluster, script=reply)
    c = client(router)
    r = c.completions.create(model="duet-byte", prompt=["ab", "cd", "ef"], n=2, max_tokens=20,
                             seed=7)
    assert [ch.index for ch in r.choices] == list(range(6))
    assert [ch.text for ch in r.choices] == ["re:ab", "re:ab", "re:cd", "re:cd", "re:ef", "re:ef"]
    assert r.usage.prompt_tokens == 6                      # each prompt counted once
    assert r.usage.completion_tokens == 6 * 6              # 5 characters + EOS each
    seeds = sorted(f["seed"] for f in p.frames_of(PREFILL)[-6:])
    assert seeds == [7, 7, 7, 8, 8, 8]                     # samples of a prompt differ
    # streaming chat with n = 3: every choice streamed and finished
    texts, finished = {}, set()
    for ch in c.chat.completions.create(model="duet-byte", n=3, stream=True, max_tokens=4,
                                        messages=[{"role": "user", "content": "q"}]):
        for choice in ch.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add((choice.index, choice.finish_reason))
    assert finished == {(0, "length"), (1, "length"), (2, "length")}
    assert all(len(t.encode()) == 4 for t in texts.values()) and len(texts) == 3
    # one failing sequence fails the whole request and aborts its siblings
    p.fail_prefill = True
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model="duet-byte", prompt=["ab", "cd"], max_tokens=5)
    assert e.value.status_code == 503
    assert wait_for(lambda: router.get_json("/v1/cluster")[1]["requests_running"] == 0)
    p.close()
    d.close()


def test_raw_sse_framing(router):
    import urllib.request
    ProtocolTestPeer(router, "colocated", "c0", script="ab")
    req = urllib.request.Request(router.base + "/v1/completions", method="POST",
                                 data=json.dumps({"prompt": "x", "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        body = resp.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    datas = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert [d["choices"][0]["text"] for d in datas] == ["a", "b", ""]
    assert datas[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(d["object"] == "text_completion" and d["id"] == datas[0]["id"] for d in datas)


def test_nack_retried_on_other_decode(router):
    cluster = {}
    p = ProtocolTestPeer(router, "prefill", "p0", cluster=cluster, script="fine")
    bad = ProtocolTestPeer(router, "decode", "d-full", cluster=cluster, nack=True)
    good = ProtocolTestPeer(router, "decode", "d-ok", cluster=cluster, script="fine")
    c = client(router)
    for _ in range(4):
        r = c.completions.create(model="duet-byte", prompt="q", max_tokens=10)
        assert r.choices[0].text == "fine"
    # only NACKing decodes left: a clean 503 before any token, no hang
    good.close()
    assert wait_for(lambda: router.get_json("/v1/cluster")[1]["counts"]["decode"] == 1)
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model="duet-byte", prompt="q", max_tokens=10)
    assert e.value.status_code == 503
    p.close()
    bad.close()


def test_prefill_error_retried_once(router):
    cluster = {}
    bad = ProtocolTestPeer(router, "prefill", "p-bad", cluster=cluster, fail_prefill=True)
    good = ProtocolTestPeer(router, "prefill", "p-ok", cluster=cluster, script="yes")
    d = ProtocolTestPeer(router, "decode", "d0", cluster=cluster, script="yes")
    c = client(router)
    for _ in range(4):
        assert c.completions.create(model="duet-byte", prompt="q", max_tokens=10) \
            .choices[0].text == "yes"
    for f in bad.frames_of(PREFILL):   # its decode reservation was released
        assert wait_for(lambda: f["rid"] in d.aborted)
    bad.close()
    good.close()
    d.close()


def test_node_death_fails_only_its_requests(router):
    import concurrent.futures as cf
    cluster = {}
    p = ProtocolTestPeer(router, "prefill", "p0", cluster=cluster, script="x" * 200, step_s=0.01)
    d1 = ProtocolTestPeer(router, "decode", "d1", cluster=cluster, script="x" * 200, step_s=0.01)
    d2 = ProtocolTestPeer(router, "decode", "d2", cluster=cluster, script="x" * 200, step_s=0.01)
    c = client(router)

    def run():
        toks = 0
        try:
            for ch in c.completions.create(model="duet-byte", prompt="q", max_tokens=150,
                                           stream=True):
                toks += 1
            return "ok", toks
        except Exception as e:      # noqa: BLE001 - any failure counts
            return type(e).__name__, toks

    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(run) for _ in range(8)]
        assert wait_for(lambda: len(d1.frames_of(RESERVE)) >= 1 and
                        len(d2.frames_of(RESERVE)) >= 1)
        time.sleep(0.3)
        d1.close()                  # dies mid-stream
        results = [f.result(timeout=30) for f in futs]
    on_d2 = len(d2.frames_of(RESERVE))
    oks = [r for r in results if r[0] == "ok"]
    assert len(oks) >= on_d2 and len(oks) < 8, results
    # the router is still healthy with the remaining pair
    assert router.request("GET", "/health")[0] == 200
    assert c.completions.create(model="duet-byte", prompt="q", max_tokens=5).choices[0].text \
        == "xxxxx"
    p.close()
    d2.close()


def test_client_disconnect_sends_abort(router):
    import http.client
    p, d = disagg(router, script="y" * 300, step_s=0.02)
    conn = http.client.HTTPConnection("127.0.0.1", router.http_port, timeout=10)
    conn.request("POST", "/v1/completions",
                  body=json.dumps({"prompt": "q", "stream": True, "max_tokens": 250}),
                  headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read1(100)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    rid = d.frames_of(RESERVE)[-1]["rid"]
    assert wait_for(lambda: rid in d.aborted, timeout=5)
    st, c = router.get_json("/v1/cluster")
    assert wait_for(lambda: router.get_json("/v1/cluster")[1]["requests_running"] == 0)
    p.close()
    d.close()


def test_client_disconnect_non_streaming_sends_abort(router):
    import http.client
    p, d = disagg(router, script="y" * 300, step_s=0.02)
    conn = http.client.HTTPConnection("127.0.0.1", router.http_port, timeout=10)
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "q", "max_tokens": 250}),
                 headers={"Content-Type": "application/json"})
    assert wait_for(lambda: d.frames_of(RESERVE))
    time.sleep(0.2)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    rid = d.frames_of(RESERVE)[-1]["rid"]
    assert wait_for(lambda: rid in d.aborted, timeout=3)
    assert wait_for(lambda: router.get_json("/v1/cluster")[1]["requests_running"] == 0)
    p.close()
    d.close()


def test_64_concurrent_streams(router):
    """Every stream gets its own reply, whole, in order (no cross-talk)."""
    import concurrent.futures as cf

    def reply(prompt):
        return "reply to " + bytes(t for t in prompt if t < 256).decode(errors="replace")[-12:]

    cluster = {}
    peers = [ProtocolTestPeer(router, "prefill", "p0", cluster=cluster, script=reply),
             ProtocolTestPeer(router, "prefill", "p1", cluster=cluster, script=reply),
             ProtocolTestPeer(router, "decode", "d0", cluster=cluster, script=reply),
             ProtocolTestPeer(router, "decode", "d1", cluster=cluster, script=reply)]
    c = client(router)

    def run(i):
        prompt = f"prompt {i:04d}"
        text, usage = "", None
        for ch in c.completions.create(model="duet-byte", prompt=prompt, stream=True,
                                       max_tokens=100, stream_options={"include_usage": True}):
            if ch.choices:
                text += ch.choices[0].text
            else:
                usage = ch.usage
        return prompt, text, usage

    with cf.ThreadPoolExecutor(64) as ex:
        results = list(ex.map(run, range(64)))
    for prompt, text, usage in results:
        assert text == "reply to " + prompt[-12:], (prompt, text)
        assert usage.completion_tokens == len(text) + 1
    # both pairs were used
    assert all(p.frames_of(PREFILL) or p.frames_of(RESERVE) for p in peers)
    for p in peers:
        p.close()


def test_drain_from_node_stops_routing(router):
    cluster = {}
    a = ProtocolTestPeer(router, "colocated", "a", cluster=cluster, script="A")
    b = ProtocolTestPeer(router, "colocated", "b", cluster=cluster, script="B")
    a.send(frame(DRAIN))
    assert wait_for(lambda: [n["draining"] for n in router.get_json("/v1/cluster")[1]["nodes"]]
                    == [True, False])
    c = client(router)
    for _ in range(4):
        assert c.completions.create(model="duet-byte", prompt="q", max_tokens=3) \
            .choices[0].text == "B"
    a.close()
    b.close()


def test_metrics_parse(router):
    ProtocolTestPeer(router, "colocated", "c0", script="metrics")
    c = client(router)
    c.completions.create(model="duet-byte", prompt="q", max_tokens=20)
    st, _, body = router.request("GET", "/metrics")
    assert st == 200
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in ["duet:time_to_first_token_seconds", "duet:inter_token_latency_seconds",
                 "duet:e2e_request_latency_seconds", "duet:request_queue_time_seconds",
                 "duet:kv_transfer_seconds", "duet:node_inter_token_latency_seconds",
                 "duet:router_token_delay_seconds"]:
        assert fams[name].type == "histogram", name
    for name in ["duet:num_requests_running", "duet:num_requests_waiting",
                 "duet:kv_cache_usage_perc", "duet:nodes"]:
        assert fams[name].type == "gauge", name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("duet:generation_tokens_total", (("model_name", "duet-byte"),))] == 8
    assert samples[("duet:request_success_total",
                    (("finished_reason", "stop"), ("model_name", "duet-byte")))] == 1
    assert samples[("duet:nodes", (("role", "colocated"),))] == 1
    assert samples[("duet:time_to_first_token_seconds_count", (("model_name", "duet-byte"),))] == 1
    assert ("duet:kv_cache_usage_perc", (("node", "c0"), ("role", "colocated"))) in samples
    # 7 text-producing tokens (the EOS has no text): 7 delays, 6 gaps between them
    mn = (("model_name", "duet-byte"),)
    assert samples[("duet:router_token_delay_seconds_count", mn)] == 7
    assert samples[("duet:node_inter_token_latency_seconds_count", mn)] == 6


def test_token_trace(duet_bin, tmp_path):
    trace = tmp_path / "tokens.trace"
    r = Router(duet_bin, "--token-trace", str(trace))
    try:
        ProtocolTestPeer(r, "colocated", "c0", script="trace")
        chunks = list(client(r).completions.create(model="duet-byte", prompt="q",
                                                   max_tokens=20, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "trace"
    finally:
        r.stop()
    rows = [list(map(int, line.split())) for line in trace.read_text().splitlines()]
    assert len(rows) == 5 and len({row[0] for row in rows}) == 1
    assert all(q >= t for _, t, q in rows)
    assert [t for _, t, _ in rows] == sorted(t for _, t, _ in rows)


def test_admission_queue_full_gives_429(duet_bin):
    r = Router(duet_bin, "--max-inflight", "1", "--max-queue", "1")
    try:
        ProtocolTestPeer(r, "colocated", "c0", script="z" * 100, step_s=0.01)
        import concurrent.futures as cf
        c = client(r)

        def run():
            try:
                c.completions.create(model="duet-byte", prompt="q", max_tokens=50)
                return 200
            except openai.APIStatusError as e:
                return e.status_code

        with cf.ThreadPoolExecutor(4) as ex:
            codes = sorted(ex.map(lambda _: run(), range(4)))
        assert codes.count(200) >= 2 and set(codes) <= {200, 429} and 429 in codes, codes
    finally:
        code, err = r.stop()
        assert code == 0, err


def test_sigterm_answers_in_flight_and_aborts(duet_bin):
    import threading
    r = Router(duet_bin)
    p = ProtocolTestPeer(r, "colocated", "c0", script="y" * 300, step_s=0.02)
    res = {}
    t = threading.Thread(target=lambda: res.setdefault(
        "a", r.request("POST", "/v1/completions", {"prompt": "q", "max_tokens": 250})))
    t.start()
    assert wait_for(lambda: p.frames_of(PREFILL))
    code, err = r.stop()
    t.join(10)
    assert code == 0, err
    assert res["a"][0] == 503 and json.loads(res["a"][2])["error"]["code"] == 503
    assert wait_for(lambda: p.frames_of(PREFILL)[-1]["rid"] in p.aborted, timeout=2)
    assert wait_for(p.closed.is_set, timeout=2)


@pytest.mark.parametrize("policy", ["round-robin", "prefix-aware"])
def test_prefill_policies(duet_bin, policy):
    r = Router(duet_bin, "--prefill-policy", policy, "--decode-policy", "round-robin")
    try:
        cluster = {}
        ps = [ProtocolTestPeer(r, "prefill", f"p{i}", cluster=cluster, script="ok")
              for i in range(2)]
        ds = [ProtocolTestPeer(r, "decode", f"d{i}", cluster=cluster, script="ok")
              for i in range(2)]
        c = client(r)
        prefixes = ["A" * 40, "B" * 40, "C" * 40]
        for k in range(4):
            for pre in prefixes:
                c.completions.create(model="duet-byte", prompt=pre + f" tail {k}", max_tokens=2)
        where = {}
        for p in ps:
            for f in p.frames_of(PREFILL):
                where.setdefault(bytes(t for t in f["tokens"] if t < 256)[:40], set()).add(p.node_id)
        counts = [len(p.frames_of(PREFILL)) for p in ps]
        dcounts = [len(d.frames_of(RESERVE)) for d in ds]
        assert dcounts == [6, 6], dcounts            # decode round-robin
        if policy == "round-robin":
            assert counts == [6, 6], counts
        else:
            # every prompt of one prefix went to one prefill node
            assert all(len(v) == 1 for v in where.values()), where
        for n in ps + ds:
            n.close()
    finally:
        code, err = r.stop()
        assert code == 0, err


def test_http10_clients(router):
    """HTTP/1.0 has no chunked encoding: the stream is written raw and the
    connection closed at the end."""
    ProtocolTestPeer(router, "colocated", "c0", script="abc")
    for stream in (True, False):
        s = socket.create_connection(("127.0.0.1", router.http_port), timeout=5)
        body = json.dumps({"prompt": "q", "max_tokens": 5, "stream": stream}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
        if stream:
            assert payload.endswith(b"data: [DONE]\n\n") and b'"text":"abc"' not in payload
        else:
            assert json.loads(payload)["choices"][0]["text"] == "abc"


def test_stream_to_a_slow_reader_keeps_every_byte_in_order(router):
    """The streaming fast path sends a chunk straight to the socket only when
    nothing is queued before it; a client that does not read fills the
    socket, the rest queues in the connection and leaves later, in order."""
    script = "".join(chr(ord("a") + i % 26) for i in range(400))
    ProtocolTestPeer(router, "colocated", "c0", script=script, step_s=0)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(20)
    s.connect(("127.0.0.1", router.http_port))
    body = json.dumps({"prompt": "q", "max_tokens": 400, "n": 8, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    time.sleep(1.5)             # ~500 KB of chunks meet a 4 KiB receive buffer
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = s.recv(65536)
        assert chunk, "connection closed before the last chunk"
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
    payload = b""
    while True:                 # de-chunk: HEX CRLF bytes CRLF ... 0 CRLF CRLF
        size_line, _, rest = rest.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            break
        payload += rest[:n]
        assert rest[n:n + 2] == b"\r\n"
        rest = rest[n + 2:]
    events = payload.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    texts, finish = [""] * 8, [None] * 8
    for e in events[:-2]:
        assert e.startswith("data: ")
        ch = json.loads(e[len("data: "):])["choices"][0]
        texts[ch["index"]] += ch["text"]
        if ch["finish_reason"] is not None:
            finish[ch["index"]] = ch["finish_reason"]
    assert texts == [script] * 8
    assert finish == ["length"] * 8


def test_frames_about_other_nodes_requests_are_ignored(router):
    """A node cannot touch requests routed elsewhere: TOKENS, FINISH, NACK
    and ERROR for another node's rid change nothing."""
    from router_peer import FINISH, NACK, TOKENS
    cluster = {}
    a = ProtocolTestPeer(router, "colocated", "a", cluster=cluster, script="z" * 40, step_s=0.02)
    c = client(router)
    import threading
    res = {}
    t = threading.Thread(target=lambda: res.setdefault(
        "r", c.completions.create(model="duet-byte", prompt="q", max_tokens=30)))
    t.start()
    assert wait_for(lambda: a.frames_of(PREFILL))
    rid = a.frames_of(PREFILL)[-1]["rid"]
    # b registers only now, so the request is certainly a's
    b = ProtocolTestPeer(router, "decode", "b", cluster={})
    b.send(frame(TOKENS, items=[[rid, ord("X")]] * 5))
    b.send(frame(NACK, rid=rid))
    b.send(frame(FINISH, rid=rid, reason="error"))
    b.send(frame(ERROR, rid=rid, msg="not mine"))
    t.join(15)
    assert res["r"].choices[0].text == "z" * 30
    assert not b.closed.is_set()          # harmless frames, b stays registered
    a.close()
    b.close()


def test_fresh_streams_go_first_in_a_tokens_frame(duet_bin, tmp_path):
    """In one TOKENS frame the router writes first the tokens of streams
    that have had only their first token (it came alone, so a late place in
    this frame would stretch their first gap by the whole fan-out), each
    stream's tokens still in order."""
    from router_peer import FINISH, TOKENS
    import threading
    trace = tmp_path / "tokens.trace"
    r = Router(duet_bin, "--token-trace", str(trace))
    try:
        cl = {}
        p = ProtocolTestPeer(r, "prefill", "p", cluster=cl, script="F")
        d = ProtocolTestPeer(r, "decode", "d", cluster={})   # the test plays its TOKENS
        texts, first = {}, {}

        def one(name):
            first[name] = threading.Event()
            out = []
            for c in client(r).completions.create(model="duet-byte", prompt=name,
                                                  max_tokens=10, stream=True):
                if c.choices and c.choices[0].text:
                    out.append(c.choices[0].text)
                    first[name].set()
            texts[name] = "".join(out)

        ta = threading.Thread(target=one, args=("a",))
        ta.start()
        assert wait_for(lambda: len(p.frames_of(PREFILL)) == 1)
        rid_a = p.frames_of(PREFILL)[0]["rid"]
        assert wait_for(lambda: "a" in first) and first["a"].wait(5)
        d.send(frame(TOKENS, items=[[rid_a, ord("x")]]))
        tb = threading.Thread(target=one, args=("b",))
        tb.start()
        assert wait_for(lambda: len(p.frames_of(PREFILL)) == 2)
        rid_b = p.frames_of(PREFILL)[1]["rid"]
        assert wait_for(lambda: "b" in first) and first["b"].wait(5)
        time.sleep(0.1)   # a's "x" is out too
        d.send(frame(TOKENS, items=[[rid_a, ord("y")], [rid_b, ord("1")], [rid_b, ord("2")],
                                    [rid_a, ord("z")]]))
        d.send(frame(FINISH, rid=rid_a, reason="length"))
        d.send(frame(FINISH, rid=rid_b, reason="length"))
        ta.join(10)
        tb.join(10)
        assert texts == {"a": "Fxyz", "b": "F12"}, texts
    finally:
        r.stop()
    rows = [list(map(int, line.split())) for line in trace.read_text().splitlines()]
    last = max(t for _, t, _ in rows)
    order = [rid for rid, t, _ in sorted((row for row in rows if row[1] == last),
                                         key=lambda row: row[2])]
    assert order == [rid_b, rid_b, rid_a, rid_a], (order, rid_a, rid_b)
