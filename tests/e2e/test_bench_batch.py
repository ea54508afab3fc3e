"""duet bench engine --batch: the engine's batching sweep end to end on a
small mkmodel model (figures are not checked, only that they exist and the
ratios are computed against batch 1)."""
import json

from conftest import run_duet


def tiny_model(duet_bin, tmp_path):
    path = str(tmp_path / "tiny.gguf")
    r = run_duet(duet_bin, "mkmodel", "--layers", "2", "--hidden", "64", "--heads", "4",
                 "--kv-heads", "2", "--ffn", "128", "--vocab", "256", "--ctx", "512",
                 "--type", "q8_0", "-o", path)
    assert r.returncode == 0, r.stderr
    return path


def test_batch_sweep_json(duet_bin, tmp_path):
    model = tiny_model(duet_bin, tmp_path)
    r = run_duet(duet_bin, "bench", "engine", "--model", model, "--batch", "1,4,16",
                 "--batch-steps", "4", "--prefill-reqs", "2", "--prefill-len", "64",
                 "--chunk", "32", "--threads", "1", "--json", "--log-level", "warn",
                 timeout=300)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    rows = j["decode"]["rows"]
    assert [row["batch"] for row in rows] == [1, 4, 16]
    assert rows[0]["ratio_to_batch1"] == 1.0
    assert all(row["tok_s"] > 0 and row["step_ms"] > 0 for row in rows)
    assert abs(rows[2]["ratio_to_batch1"] - rows[2]["tok_s"] / rows[0]["tok_s"]) < 0.01
    p = j["prefill"]
    assert p["requests"] == 2 and p["prompt_len"] == 64 and p["chunk"] == 32
    assert p["chunked_tok_s"] > 0 and p["whole_tok_s"] > 0


def test_batch_sweep_text(duet_bin, tmp_path):
    model = tiny_model(duet_bin, tmp_path)
    r = run_duet(duet_bin, "bench", "engine", "--model", model, "--batch", "1,2",
                 "--batch-steps", "2", "--prefill-reqs", "1", "--prefill-len", "16",
                 "--threads", "1", "--log-level", "warn", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "x batch 1" in r.stdout and "prefill:" in r.stdout


def test_bad_batch_list(duet_bin, tmp_path):
    for bad in ("0", "1,,4", "abc", "5000", ""):
        r = run_duet(duet_bin, "bench", "engine", "--batch", bad)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "--batch" in r.stderr
