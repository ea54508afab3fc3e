"""duet generate end to end: the real model, determinism, bad input."""
import subprocess

import pytest

from conftest import run_duet

PROMPT_IDS = "1,9690,198,2683,314,253,5356,11173,30"


def gen(duet_bin, model, *args, timeout=120):
    return run_duet(duet_bin, "generate", "--model", model, *args, timeout=timeout)


def test_capital_of_france(duet_bin, smollm2):
    r = gen(duet_bin, smollm2, "--chat", "--prompt", "What is the capital of France?",
            "-n", "24", "--temp", "0", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "prompt: 37 tokens" in r.stderr


def test_seeded_sampling_repeats(duet_bin, smollm2):
    args = ["--chat", "--prompt", "Tell me a story.", "-n", "16", "--temp", "0.9",
            "--top-p", "0.95", "--top-k", "40", "--min-p", "0.02", "--seed", "11"]
    a = gen(duet_bin, smollm2, *args, "--threads", "1")
    b = gen(duet_bin, smollm2, *args, "--threads", "2")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_greedy_identical_across_runs_and_threads(duet_bin, smollm2):
    outs = []
    for threads in ("1", "2", "3", "2"):
        r = gen(duet_bin, smollm2, "--tokens", PROMPT_IDS, "-n", "24", "--threads", threads,
                "--ignore-eos")
        assert r.returncode == 0, r.stderr
        assert "tokens/s" in r.stderr
        outs.append(r.stdout)
    assert len(outs[0].strip()) > 0
    assert all(o == outs[0] for o in outs), outs


def test_chunked_prefill_same_tokens(duet_bin, smollm2):
    base = gen(duet_bin, smollm2, "--tokens", PROMPT_IDS, "-n", "12")
    chunked = gen(duet_bin, smollm2, "--tokens", PROMPT_IDS, "-n", "12", "--chunk", "2")
    f32 = gen(duet_bin, smollm2, "--tokens", PROMPT_IDS, "-n", "12", "--kv-f32")
    assert base.returncode == chunked.returncode == f32.returncode == 0
    assert base.stdout == chunked.stdout
    # an f32 cache may round differently, but not on the first tokens
    assert base.stdout.split()[:4] == f32.stdout.split()[:4]


@pytest.mark.parametrize("args, msg", [
    (["--prompt", ""], "empty"),
    (["--tokens", ""], "empty"),
    (["--tokens", "1,2,x"], "token ids"),
    (["--tokens", "1,99999999"], "outside the vocabulary"),
    (["--tokens", "1", "--threads", "0"], "threads"),
    (["--tokens", "1", "--temp", "-1"], "temp"),
    (["--tokens", "1", "--top-p", "1.5"], "top-p"),
    (["--tokens", "1", "--min-p", "2"], "min-p"),
    (["--tokens", "1", "-n", "-3"], "n"),
])
def test_bad_input(duet_bin, smollm2, args, msg):
    r = gen(duet_bin, smollm2, *args)
    assert r.returncode != 0
    assert msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Sanitizer" not in r.stderr


def test_prompt_longer_than_context(duet_bin, tmp_path):
    model = tmp_path / "tiny.gguf"
    r = run_duet(duet_bin, "mkmodel", "--layers", "1", "--hidden", "64", "--heads", "2",
                 "--ffn", "128", "--vocab", "64", "--ctx", "16", "--type", "q8_0", "-o", str(model))
    assert r.returncode == 0, r.stderr
    r = gen(duet_bin, str(model), "--tokens", ",".join(["3"] * 20))
    assert r.returncode == 2
    assert "context" in r.stderr
    r = gen(duet_bin, str(model), "--tokens", "1,2,3", "-n", "100", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 13   # the context of 16 caps generation


def test_missing_model(duet_bin, tmp_path):
    r = gen(duet_bin, str(tmp_path / "nope.gguf"), "--tokens", "1")
    assert r.returncode != 0
    assert "nope.gguf" in r.stderr


def test_bench_engine_json(duet_bin, smollm2):
    import json
    r = run_duet(duet_bin, "bench", "engine", "--model", smollm2, "-p", "16", "-n", "4",
                 "-r", "1", "--membw-mib", "64", "--threads", "1", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["pp_tps"] > 0 and j["tg_tps"] > 0 and j["membw_gbps"] > 0
    assert 90e6 < j["weight_bytes_per_token"] < 100e6
    assert 0 < j["efficiency"]
