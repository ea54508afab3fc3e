"""`duet router --model` with SmolLM2's real GGUF tokenizer and ChatML
template: tokenization endpoints, the model fingerprint check in HELLO, and
a full request lifecycle through ProtocolTestPeer where the peer replies
with real token ids (so BPE pieces, UTF-8 and stop strings are exercised
with the real detokenizer)."""
import json

import pytest

msgpack = pytest.importorskip("msgpack")   # tests/requirements.txt: msgpack==1.2.4

import openai  # noqa: E402

from router_peer import ERROR, PREFILL, ProtocolTestPeer, Router, wait_for  # noqa: E402
from test_router_ctl import hello_raw  # noqa: E402

REPLY = "Bonjour, le caf\u00e9 co\u00fbte 3 \u20ac. FIN du texte \U0001F600."


@pytest.fixture(scope="module")
def router(duet_bin, smollm2):
    r = Router(duet_bin, model=smollm2)
    yield r
    code, err = r.stop()
    assert code == 0, err


def tokenize(router, **body):
    st, _, out = router.request("POST", "/tokenize", body)
    assert st == 200, out
    return json.loads(out)


def test_models_and_tokenize(router, smollm2):
    st, m = router.get_json("/v1/models")
    assert m["data"][0]["id"] == smollm2 and m["data"][0]["max_model_len"] == 8192
    t = tokenize(router, prompt=REPLY, add_special_tokens=False)
    assert 0 < t["count"] < len(REPLY.encode())          # real BPE merges
    st, _, out = router.request("POST", "/detokenize", {"tokens": t["tokens"]})
    assert json.loads(out)["prompt"] == REPLY
    chat = tokenize(router, messages=[{"role": "user", "content": "Hi"}])
    st, _, out = router.request("POST", "/detokenize", {"tokens": chat["tokens"]})
    text = json.loads(out)["prompt"]
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_fingerprint_checked(router):
    fp = int(router.get_json("/v1/cluster")[1]["model_fingerprint"], 16)
    assert fp != 0
    s, reply = hello_raw(router, model=fp ^ 1, node="wrong-model")
    assert reply["t"] == ERROR and reply["code"] == "model_mismatch"
    s.close()
    peer = ProtocolTestPeer(router, "colocated", "right-model", model=fp)
    assert router.request("GET", "/health")[0] == 200
    peer.close()
    assert wait_for(lambda: router.request("GET", "/health")[0] == 503)


def test_lifecycle_with_real_tokenizer(router):
    fp = int(router.get_json("/v1/cluster")[1]["model_fingerprint"], 16)
    ids = tokenize(router, prompt=REPLY, add_special_tokens=False)["tokens"]
    eos = tokenize(router, prompt="<|im_end|>", add_special_tokens=False)["tokens"]
    assert len(eos) == 1
    cluster = {}
    p = ProtocolTestPeer(router, "prefill", "p0", model=fp, cluster=cluster, script=ids)
    d = ProtocolTestPeer(router, "decode", "d0", model=fp, cluster=cluster, script=ids)
    c = openai.OpenAI(base_url=router.base + "/v1", api_key="x", max_retries=0, timeout=10)
    model = router.get_json("/v1/models")[1]["data"][0]["id"]
    msgs = [{"role": "user", "content": "Dis bonjour"}]
    r = c.chat.completions.create(model=model, messages=msgs)
    assert r.choices[0].message.content == REPLY and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(ids) + 1          # + <|im_end|>
    assert p.frames_of(PREFILL)[-1]["eos"] and eos[0] in p.frames_of(PREFILL)[-1]["eos"]
    # prompt tokens are the template's rendering
    chat_ids = tokenize(router, messages=msgs)["tokens"]
    assert p.frames_of(PREFILL)[-1]["tokens"] == chat_ids
    assert r.usage.prompt_tokens == len(chat_ids)
    # streaming with a stop string inside a BPE token run
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(model=model, messages=msgs, stream=True, stop=["FIN"])
             if ch.choices]
    assert "".join(parts) == REPLY[:REPLY.index("FIN")]
    # a conversation the template refuses is a 400, not a 5xx
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=model, messages=[{"role": "tool", "content": "x"}])
    # a prompt longer than the context
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=model, prompt="hello " * 9000, max_tokens=5)
    assert "maximum context length" in str(e.value)
    p.close()
    d.close()
