"""End-to-end tests of `duet router`'s HTTP API: a table of malformed and
hostile requests (each must get the right 4xx with the OpenAI error shape
while a concurrent good stream finishes unharmed), endpoints' shapes and the
API key."""
import concurrent.futures as cf
import json
import socket

import pytest

from router_peer import Router

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]


def j(obj):
    return json.dumps(obj).encode()


# (name, method, path, raw body, extra headers, expected status, expected param)
HOSTILE = [
    ("bad json", "POST", CHAT, b'{"messages": [', None, 400, None),
    ("not an object", "POST", CHAT, b'[1, 2, 3]', None, 400, None),
    ("empty body", "POST", CHAT, b'', None, 400, None),
    ("trailing garbage", "POST", COMP, b'{"prompt": "x"} xyz', None, 400, None),
    ("invalid utf-8", "POST", COMP, b'{"prompt": "\xff\xfe\xc3"}', None, 400, None),
    ("nul in string", "POST", COMP, b'{"prompt": "a\\u0000b"}', None, 400, None),
    ("deep nesting", "POST", CHAT, b'{"messages": ' + b'[' * 5000 + b']' * 5000 + b'}',
     None, 400, None),
    ("deep objects", "POST", COMP, b'{"a":' * 100 + b'1' + b'}' * 100, None, 400, None),
    ("messages missing", "POST", CHAT, j({"model": "duet-byte"}), None, 400, "messages"),
    ("messages empty", "POST", CHAT, j({"messages": []}), None, 400, "messages"),
    ("messages wrong type", "POST", CHAT, j({"messages": "hello"}), None, 400, "messages"),
    ("message not object", "POST", CHAT, j({"messages": [42]}), None, 400, "messages"),
    ("unknown role", "POST", CHAT, j({"messages": [{"role": "wizard", "content": "x"}]}),
     None, 400, "messages"),
    ("content wrong type", "POST", CHAT, j({"messages": [{"role": "user", "content": 7}]}),
     None, 400, "messages"),
    ("image part", "POST", CHAT, j({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}), None, 400, "messages"),
    ("unknown model", "POST", CHAT, j({"model": "gpt-9", "messages": MSG}), None, 404, "model"),
    ("model wrong type", "POST", CHAT, j({"model": ["x"], "messages": MSG}), None, 400, "model"),
    ("max_tokens negative", "POST", COMP, j({"prompt": "x", "max_tokens": -5}), None, 400,
     "max_tokens"),
    ("max_tokens zero", "POST", COMP, j({"prompt": "x", "max_tokens": 0}), None, 400,
     "max_tokens"),
    ("max_tokens huge", "POST", COMP, j({"prompt": "x", "max_tokens": 10**12}), None, 400,
     "max_tokens"),
    ("max_tokens beyond context", "POST", COMP, j({"prompt": "x", "max_tokens": 100000}),
     None, 400, "max_tokens"),
    ("max_tokens bigint", "POST", COMP, b'{"prompt":"x","max_tokens":1' + b'0' * 40 + b'}',
     None, 400, None),
    ("max_tokens string", "POST", COMP, j({"prompt": "x", "max_tokens": "10"}), None, 400,
     "max_tokens"),
    ("max_completion_tokens float", "POST", CHAT, j({"messages": MSG,
                                                     "max_completion_tokens": 2.5}),
     None, 400, "max_completion_tokens"),
    ("temperature negative", "POST", COMP, j({"prompt": "x", "temperature": -0.1}), None, 400,
     "temperature"),
    ("temperature huge", "POST", COMP, b'{"prompt":"x","temperature":1e308}', None, 400,
     "temperature"),
    ("temperature overflow", "POST", COMP, b'{"prompt":"x","temperature":1e999}', None, 400,
     None),
    ("top_p zero", "POST", COMP, j({"prompt": "x", "top_p": 0}), None, 400, "top_p"),
    ("top_k bad", "POST", COMP, j({"prompt": "x", "top_k": -7}), None, 400, "top_k"),
    ("min_p bad", "POST", COMP, j({"prompt": "x", "min_p": 1.5}), None, 400, "min_p"),
    ("penalty bad", "POST", COMP, j({"prompt": "x", "frequency_penalty": 9}), None, 400,
     "frequency_penalty"),
    ("seed string", "POST", COMP, j({"prompt": "x", "seed": "42"}), None, 400, "seed"),
    ("stream string", "POST", COMP, j({"prompt": "x", "stream": "true"}), None, 400, "stream"),
    ("stream_options without stream", "POST", CHAT,
     j({"messages": MSG, "stream_options": {"include_usage": True}}), None, 400,
     "stream_options"),
    ("stop wrong type", "POST", COMP, j({"prompt": "x", "stop": {"a": 1}}), None, 400, "stop"),
    ("too many stops", "POST", COMP, j({"prompt": "x", "stop": ["s"] * 100}), None, 400, "stop"),
    ("n too large", "POST", COMP, j({"prompt": "x", "n": 100}), None, 400, "n"),
    ("prompts x n too large", "POST", COMP, j({"prompt": ["x"] * 20, "n": 10}), None, 400, "n"),
    ("batch with a bad prompt", "POST", COMP, j({"prompt": ["x", 5]}), None, 400, "prompt"),
    ("n negative", "POST", COMP, j({"prompt": "x", "n": -1}), None, 400, "n"),
    ("logprobs", "POST", CHAT, j({"messages": MSG, "logprobs": True, "top_logprobs": 2}),
     None, 400, "logprobs"),
    ("prompt missing", "POST", COMP, j({"max_tokens": 3}), None, 400, "prompt"),
    ("prompt empty", "POST", COMP, j({"prompt": ""}), None, 400, "prompt"),
    ("prompt token out of vocab", "POST", COMP, j({"prompt": [1, 2, 99999]}), None, 400,
     "prompt"),
    ("prompt negative token", "POST", COMP, j({"prompt": [-1]}), None, 400, "prompt"),
    ("prompt wrong type", "POST", COMP, j({"prompt": 12}), None, 400, "prompt"),
    ("prompt longer than context", "POST", COMP, j({"prompt": "x" * 600}), None, 400, "prompt"),
    ("10 MB body", "POST", COMP, b'{"prompt": "' + b'a' * (10 << 20) + b'"}', None, 413, None),
    ("unknown path", "GET", "/v1/nothing", None, None, 404, None),
    ("wrong method on chat", "GET", CHAT, None, None, 405, None),
    ("wrong method on models", "POST", "/v1/models", b'{}', None, 405, None),
    ("tokenize without prompt", "POST", "/tokenize", j({}), None, 400, "prompt"),
    ("detokenize bad ids", "POST", "/detokenize", j({"tokens": ["a"]}), None, 400, "tokens"),
]


@pytest.fixture(scope="module")
def router(duet_bin):
    r = Router(duet_bin)   # default body limit 8 MiB: a 10 MB body gets the JSON 413
    yield r
    code, err = r.stop()
    assert code == 0, err
    assert "runtime error" not in err and "AddressSanitizer" not in err, err


def check_error(status, headers, body, want_status, want_param, name):
    assert status == want_status, (name, status, body[:300])
    if status == 413 and not body.startswith(b"{"):
        pytest.fail(f"{name}: 413 without the JSON error shape")
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, (name, err)
    assert isinstance(err["message"], str) and err["message"], (name, err)
    assert err["code"] == want_status, (name, err)
    if want_param is not None:
        assert err["param"] == want_param, (name, err)


def test_hostile_table_with_concurrent_stream(router):
    msgpack = pytest.importorskip("msgpack")  # noqa: F841 - the peer needs it
    from router_peer import ProtocolTestPeer
    import openai

    assert len(HOSTILE) >= 30
    peer = ProtocolTestPeer(router, "colocated", "c0", script="s" * 150, step_s=0.01)
    client = openai.OpenAI(base_url=router.base + "/v1", api_key="x", max_retries=0)

    def good_stream():
        text = ""
        for ch in client.chat.completions.create(model="duet-byte", messages=MSG, stream=True,
                                                 max_tokens=120):
            if ch.choices and ch.choices[0].delta.content:
                text += ch.choices[0].delta.content
        return text

    with cf.ThreadPoolExecutor(2) as ex:
        fut = ex.submit(good_stream)
        for name, method, path, raw, headers, want, param in HOSTILE:
            status, hdrs, body = router.request(method, path, raw=raw, headers=headers,
                                                timeout=30)
            check_error(status, hdrs, body, want, param, name)
        assert fut.result(timeout=60) == "s" * 120
    peer.close()


def test_table_without_nodes(router):
    """Validation comes before admission: the same answers with no nodes, and
    a valid request then gets 503 (a server state, not a client mistake)."""
    for name, method, path, raw, headers, want, param in HOSTILE[:20]:
        status, hdrs, body = router.request(method, path, raw=raw, headers=headers)
        check_error(status, hdrs, body, want, param, name)
    status, _, body = router.request("POST", COMP, {"prompt": "hi"})
    check_error(status, {}, body, 503, None, "no nodes")


def test_oversize_body_refused_before_reading(router):
    """Past twice the limit evhttp refuses by Content-Length without reading
    the body."""
    s = socket.create_connection(("127.0.0.1", router.http_port), timeout=5)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000000000\r\n\r\n{")
    reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    s.close()


def test_models_and_tokenize(router):
    st, m = router.get_json("/v1/models")
    assert st == 200 and m["object"] == "list"
    model = m["data"][0]
    for k in ["id", "object", "created", "owned_by", "root", "max_model_len"]:
        assert k in model
    assert model["id"] == "duet-byte" and model["max_model_len"] == 512
    st, _, body = router.request("POST", "/tokenize", {"prompt": "h\u00e9"})
    t = json.loads(body)
    assert st == 200 and t["count"] == 3 and t["tokens"] == [104, 0xc3, 0xa9]
    assert t["max_model_len"] == 512
    st, _, body = router.request("POST", "/tokenize", {"messages": MSG})
    t = json.loads(body)
    assert st == 200 and t["tokens"][0] == 257      # <|im_start|>
    st, _, body = router.request("POST", "/detokenize", {"tokens": [104, 0xc3, 0xa9]})
    assert st == 200 and json.loads(body) == {"prompt": "h\u00e9"}
    st, _, body = router.request("GET", "/health")
    assert st == 503


def test_api_key(duet_bin):
    import os
    env = dict(os.environ, DUET_API_KEY="sekret")
    r = Router(duet_bin, env=env)
    try:
        assert r.request("GET", "/v1/models")[0] == 401
        st, _, body = r.request("GET", "/v1/models", headers={"Authorization": "Bearer nope"})
        assert st == 401 and json.loads(body)["error"]["code"] == 401
        assert r.request("GET", "/v1/models", headers={"Authorization": "Bearer sekret"})[0] == 200
        assert r.request("POST", COMP, {"prompt": "x"})[0] == 401
        # /health and /metrics stay open
        assert r.request("GET", "/health")[0] == 503
        assert r.request("GET", "/metrics")[0] == 200
    finally:
        code, err = r.stop()
        assert code == 0, err
    r = Router(duet_bin, "--api-key", "k2")
    try:
        assert r.request("GET", "/v1/models", headers={"Authorization": "Bearer k2"})[0] == 200
        assert r.request("GET", "/v1/models", headers={"Authorization": "Bearer k"})[0] == 401
    finally:
        r.stop()
