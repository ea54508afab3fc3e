"""duet generate --tp N and duet bench engine --tp N: worker processes give
the same greedy tokens as one rank, bad TP sizes are clear start-up errors."""
import json

import pytest

from conftest import run_duet


@pytest.fixture(scope="module")
def model8(duet_bin, tmp_path_factory):
    """8 heads, 4 KV heads, Q4_1, a vocabulary that leaves a padded last slice."""
    path = tmp_path_factory.mktemp("tp") / "m8.gguf"
    r = run_duet(duet_bin, "mkmodel", "--layers", "2", "--hidden", "256", "--heads", "8",
                 "--kv-heads", "4", "--ffn", "512", "--vocab", "509", "--ctx", "256",
                 "--type", "q4_1", "--seed", "5", "-o", str(path))
    assert r.returncode == 0, r.stderr
    return str(path)


def gen(duet_bin, model, *args):
    return run_duet(duet_bin, "generate", "--model", model, "--log-level", "warn", *args)


def test_generate_tp_equals_tp1(duet_bin, model8):
    outs = {}
    for tp in ("1", "2", "4"):
        r = gen(duet_bin, model8, "--tokens", "1,2,3,400,17", "-n", "10", "--ignore-eos",
                "--threads", "1", "--tp", tp)
        assert r.returncode == 0, r.stderr
        outs[tp] = r.stdout.split()
    assert len(outs["1"]) == 10
    assert outs["2"] == outs["1"] and outs["4"] == outs["1"], outs


def test_generate_tp_smollm2(duet_bin, smollm2):
    ids = "1,9690,2,198,28120,314,253,3632,282,4649,47"
    a = gen(duet_bin, smollm2, "--tokens", ids, "-n", "16", "--tp", "1")
    b = gen(duet_bin, smollm2, "--tokens", ids, "-n", "16", "--tp", "3")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout


@pytest.mark.parametrize("tp, msg", [
    ("2", "9 query heads cannot be split across 2 ranks"),
    ("4", "9 query heads cannot be split across 4 ranks"),
    ("0", "tp"),
])
def test_generate_bad_tp(duet_bin, smollm2, tp, msg):
    r = gen(duet_bin, smollm2, "--tokens", "1,2", "-n", "2", "--tp", tp)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr, r.stderr


def test_bench_engine_tp(duet_bin, model8):
    r = run_duet(duet_bin, "bench", "engine", "--model", model8, "--tp", "2", "--pp", "16",
                 "--tg", "8", "--reps", "1", "--membw-mib", "0", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["tp"] == 2 and j["tg_tps"] > 0 and j["pp_tps"] > 0


def test_bench_engine_bad_tp(duet_bin, model8):
    r = run_duet(duet_bin, "bench", "engine", "--model", model8, "--tp", "3", "--pp", "8",
                 "--tg", "4", "--membw-mib", "0")
    assert r.returncode == 2
    assert "8 query heads cannot be split across 3 ranks" in r.stderr
