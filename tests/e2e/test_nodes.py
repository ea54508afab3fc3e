"""The node services end to end: `duet serve` (router + prefill + decode, or a
colocated node) as real processes on loopback, driven with the official
openai client. Greedy output must be identical through every topology and
equal to `duet generate`."""
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import run_duet
from nodes_util import Serve, generate_text, mkmodel, wait_for

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def small(duet_bin, smollm2, tmp_path_factory):
    return mkmodel(duet_bin, tmp_path_factory.mktemp("nodes") / "small.gguf", smollm2)


def prompts16(seed=1):
    rng = random.Random(seed)
    return [[rng.randrange(100, 49000) for _ in range(rng.randrange(3, 60))]
            for _ in range(16)]


def complete_all(serve, model_id, prompts, max_tokens=MAX_TOKENS):
    """Completions for every prompt (token ids), sent concurrently."""
    out = [None] * len(prompts)
    errs = []
    c = serve.client()

    def one(i):
        try:
            r = c.completions.create(model=model_id, prompt=prompts[i], max_tokens=max_tokens,
                                     temperature=0, extra_body={"ignore_eos": True})
            out[i] = (r.choices[0].text, r.choices[0].finish_reason,
                      r.usage.completion_tokens)
        except Exception as e:   # noqa: BLE001 - reported below
            errs.append(repr(e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
    return out


@pytest.mark.parametrize("topology", [
    ["--colocated"],
    ["--prefill", "1", "--decode", "1"],
    ["--prefill", "2", "--decode", "2"],
    ["--prefill", "1", "--decode", "1", "--decode-tp", "2"],
    ["--colocated", "--decode-tp", "2"],
], ids=["colocated", "1P1D", "2P2D", "1P1D-TP2", "colocated-TP2"])
def test_greedy_equals_generate(duet_bin, small, topology, request):
    prompts = prompts16()
    serve = Serve(duet_bin, small, *topology, "--kv-mem", "32")
    try:
        model_id = serve.get_json("/v1/models")["data"][0]["id"]
        got = complete_all(serve, model_id, prompts)
        want = [generate_text(duet_bin, small, p, MAX_TOKENS) for p in prompts]
        for i, (g, w) in enumerate(zip(got, want)):
            assert g[0] == w, (i, prompts[i], g, w)
            assert g[1] == "length" and g[2] == MAX_TOKENS, g
        # every block back on every node once the heartbeats catch up
        assert wait_for(serve.all_blocks_free, 5), serve.nodes()
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


def test_chunked_and_cached_prompts_equal_generate(duet_bin, smollm2):
    """The prefill node sends each layer's KV as the forward pass computes
    it: whole blocks while a prompt is chunked over steps (a 40-token budget
    ends chunks inside blocks), the rest with its last chunk, and a prompt
    that hits the prefix cache sends its cached blocks too. Every output
    equals `duet generate`'s. SmolLM2 itself: the small mkmodel model's
    output hardly depends on the KV."""
    rng = random.Random(7)
    shared = [rng.randrange(100, 49000) for _ in range(48)]
    prompts = [[rng.randrange(100, 49000) for _ in range(n)] for n in (41, 80, 97, 130)]
    prompts += [shared + [rng.randrange(100, 49000) for _ in range(n)] for n in (5, 21, 40)]
    serve = Serve(duet_bin, smollm2, "--prefill", "1", "--decode", "1", "--kv-mem", "64",
                  "--max-step-tokens", "40")
    try:
        model_id = serve.get_json("/v1/models")["data"][0]["id"]
        got = complete_all(serve, model_id, prompts[:4])
        # one after another, so that the later ones find the shared prefix
        for p in prompts[4:]:
            got += complete_all(serve, model_id, [p])
        for i, g in enumerate(got):
            w = generate_text(duet_bin, smollm2, prompts[i], MAX_TOKENS)
            assert g[0] == w and g[2] == MAX_TOKENS, (i, len(prompts[i]), g, w)
        assert wait_for(serve.all_blocks_free, 5), serve.nodes()
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


def test_smollm2_chat_disaggregated_equals_colocated(duet_bin, smollm2):
    questions = ["What is the capital of France?", "Name three colors.",
                 "Write a haiku about the sea.", "What is 2 + 2?"]
    texts = {}
    for topo in (["--colocated"], ["--prefill", "1", "--decode", "1"]):
        serve = Serve(duet_bin, smollm2, *topo, "--kv-mem", "64")
        try:
            c = serve.client()
            model_id = serve.get_json("/v1/models")["data"][0]["id"]
            res = [None] * len(questions)

            def one(i):
                r = c.chat.completions.create(
                    model=model_id, messages=[{"role": "user", "content": questions[i]}],
                    max_tokens=12, temperature=0)
                res[i] = r.choices[0].message.content

            ts = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            texts[topo[0]] = res
        finally:
            code, err = serve.stop()
        assert code == 0, err[-3000:]
    assert texts["--colocated"] == texts["--prefill"], texts
    assert all(texts["--colocated"]), texts


def test_smollm2_tp3_decode_equals_generate(duet_bin, smollm2):
    """1P:1D with a TP3 decode node on SmolLM2 (9 heads, 3 KV heads: one per
    rank): every rank receives its own KV head from the prefill node."""
    prompts = [[1, 9690, 198, 2683, 314, 253, 5356, 11173, 30], [504, 3458, 282, 4649, 314]]
    serve = Serve(duet_bin, smollm2, "--prefill", "1", "--decode", "1", "--decode-tp", "3",
                  "--kv-mem", "64")
    try:
        ucx = serve.nodes()["decode-0"]["ucx"]
        assert len(ucx) == 3 and len(set(ucx)) == 3, ucx
        got = complete_all(serve, serve.get_json("/v1/models")["data"][0]["id"], prompts,
                           max_tokens=6)
        for p, g in zip(prompts, got):
            assert g[0] == generate_text(duet_bin, smollm2, p, 6), (p, g)
        assert wait_for(serve.all_blocks_free, 5), serve.nodes()
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


def test_streaming_and_usage(duet_bin, small):
    serve = Serve(duet_bin, small, "--prefill", "1", "--decode", "1", "--kv-mem", "32")
    try:
        c = serve.client()
        model_id = serve.get_json("/v1/models")["data"][0]["id"]
        chunks = list(c.completions.create(model=model_id, prompt=[5, 6, 7, 8], max_tokens=6,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True}))
        usage = [ch.usage for ch in chunks if ch.usage is not None]
        assert usage and usage[-1].completion_tokens == 6, chunks
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        whole = c.completions.create(model=model_id, prompt=[5, 6, 7, 8], max_tokens=6,
                                     temperature=0, extra_body={"ignore_eos": True})
        assert text == whole.choices[0].text
        # max_tokens 1: the decode node ends the request at its first token
        one = c.completions.create(model=model_id, prompt=[5, 6, 7, 8], max_tokens=1,
                                   temperature=0)
        assert one.usage.completion_tokens == 1 and one.choices[0].finish_reason == "length"
        assert wait_for(serve.all_blocks_free, 5), serve.nodes()
    finally:
        code, err = serve.stop()
    assert code == 0, err[-3000:]


def test_seeded_sampling_same_through_disaggregation(duet_bin, small):
    """The prefill node hands its sampler's PRNG state to the decode node:
    a seeded sampled request gives the same text colocated and split."""
    outs = {}
    for topo in (["--colocated"], ["--prefill", "1", "--decode", "1"]):
        serve = Serve(duet_bin, small, *topo, "--kv-mem", "32")
        try:
            c = serve.client()
            model_id = serve.get_json("/v1/models")["data"][0]["id"]
            outs[topo[0]] = [c.completions.create(
                model=model_id, prompt=[11, 12, 13, 14, 15], max_tokens=10, temperature=0.9,
                top_p=0.95, seed=s, extra_body={"ignore_eos": True}).choices[0].text
                for s in (1, 2)]
        finally:
            code, err = serve.stop()
        assert code == 0, err[-3000:]
    assert outs["--colocated"] == outs["--prefill"], outs


def test_serve_flags(duet_bin, small):
    r = run_duet(duet_bin, "serve", "--help")
    assert r.returncode == 0 and "--decode-tp" in r.stdout and "--colocated" in r.stdout
    r = run_duet(duet_bin, "serve", "--model", small, "--decode-tp", "100")
    assert r.returncode == 2 and "decode-tp" in r.stderr
    r = run_duet(duet_bin, "serve", "--model", "/nonexistent.gguf")
    assert r.returncode == 2 and "nonexistent" in r.stderr
    r = run_duet(duet_bin, "decode", "--model", small, "--tp", "3", "--router", "127.0.0.1:1")
    assert r.returncode == 2 and "split" in r.stderr, r.stderr   # 4 heads, 3 ranks
    r = run_duet(duet_bin, "prefill", "--model", small, "--router", "nocolon")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = run_duet(duet_bin, "prefill", "--model", small, "--node-id", "bad id")
    assert r.returncode == 2 and "node-id" in r.stderr
