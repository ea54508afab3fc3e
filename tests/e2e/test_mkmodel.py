"""duet mkmodel and duet gguf-dump from the command line: shapes, types,
seeds, --tokenizer-from, and bad files or flags giving a clear error and a
non-zero exit."""
import subprocess

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_mkmodel_shape_and_metadata(duet_bin, tmp_path):
    out = tmp_path / "m.gguf"
    r = run(duet_bin, "mkmodel", "--layers", "3", "--hidden", "128", "--heads", "8",
            "--kv-heads", "2", "--ffn", "352", "--vocab", "1000", "--ctx", "4096",
            "--type", "q4_1", "--seed", "11", "--rope-base", "500000", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "3 layers, hidden 128, 8 heads (2 kv, head dim 16), ffn 352, vocab 1000" in r.stdout
    rd = gguf.GGUFReader(out)
    f = {k: v.contents() for k, v in rd.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama"
    assert f["llama.block_count"] == 3 and f["llama.context_length"] == 4096
    assert f["llama.attention.head_count_kv"] == 2 and f["llama.rope.freq_base"] == 500000.0
    ts = {t.name: t for t in rd.tensors}
    assert len(ts) == 3 + 9 * 3
    assert list(ts["blk.2.attn_k.weight"].shape) == [128, 32]
    assert list(ts["blk.0.ffn_down.weight"].shape) == [352, 128]
    assert ts["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert ts["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_1
    # Weights are small and centred, norms near 1: a forward pass stays sane.
    w = gguf.quants.dequantize(ts["blk.1.attn_q.weight"].data, ts["blk.1.attn_q.weight"].tensor_type)
    assert abs(float(w.mean())) < 2e-3 and 0.015 < float(w.std()) < 0.025
    n = np.asarray(ts["output_norm.weight"].data)
    assert abs(float(n.mean()) - 1.0) < 0.01 and float(n.std()) < 0.05


def test_mkmodel_seed_decides_weights(duet_bin, tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    for p, seed in ((a, 1), (b, 1), (c, 2)):
        assert run(duet_bin, "mkmodel", "--seed", seed, "--out", p).returncode == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    fp = [run(duet_bin, "gguf-dump", p).stdout.split("fingerprint: ")[1].strip() for p in (a, c)]
    assert fp[0] != fp[1], "another seed must change the fingerprint"


def test_mkmodel_tokenizer_from(duet_bin, smollm2, tmp_path):
    out = tmp_path / "tok.gguf"
    r = run(duet_bin, "mkmodel", "--layers", "1", "--hidden", "64", "--heads", "2",
            "--tied", "--tokenizer-from", smollm2, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "vocab 49152" in r.stdout
    src = gguf.GGUFReader(smollm2)
    dst = gguf.GGUFReader(out)
    keys = [k for k in src.fields if k.startswith("tokenizer.")]
    assert "tokenizer.chat_template" in keys and "tokenizer.ggml.merges" in keys
    for k in keys:   # byte for byte: key, type and value encodings
        a, b = src.fields[k], dst.fields[k]
        assert a.types == b.types, k
        assert [p.tobytes() for p in a.parts] == [p.tobytes() for p in b.parts], k
    assert dst.fields["tokenizer.chat_template"].contents() == \
        src.fields["tokenizer.chat_template"].contents()
    assert "output.weight" not in {t.name for t in dst.tensors}
    r = run(duet_bin, "mkmodel", "--vocab", "100", "--tokenizer-from", smollm2,
            "--out", tmp_path / "x.gguf")
    assert r.returncode != 0 and "differs from the 49152 tokens" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--type", "q5_k"], "--type q5_k"),
    (["--hidden", "80", "--heads", "4", "--type", "q8_0"], "not a multiple of 32"),
    (["--hidden", "96", "--heads", "5"], "not a multiple of --heads"),
    (["--heads", "4", "--kv-heads", "3"], "not a multiple of --kv-heads"),
    (["--layers", "0"], "layers"),
])
def test_mkmodel_bad_flags(duet_bin, tmp_path, args, needle):
    out = tmp_path / "bad.gguf"
    r = run(duet_bin, "mkmodel", *args, "--out", out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr
    assert not out.exists()


def test_mkmodel_needs_out(duet_bin):
    r = run(duet_bin, "mkmodel")
    assert r.returncode == 2 and "--out" in r.stderr


def test_mkmodel_tokenizer_from_without_tokenizer(duet_bin, tmp_path):
    plain = tmp_path / "plain.gguf"
    assert run(duet_bin, "mkmodel", "--out", plain).returncode == 0
    r = run(duet_bin, "mkmodel", "--tokenizer-from", plain, "--out", tmp_path / "x.gguf")
    assert r.returncode == 1 and "no tokenizer in this file" in r.stderr


def test_gguf_dump_smollm2(duet_bin, smollm2):
    r = run(duet_bin, "gguf-dump", smollm2)
    assert r.returncode == 0, r.stderr
    assert "GGUF v3, alignment 32" in r.stdout
    assert "token_embd.weight: Q8_0 [576, 49152]" in r.stdout
    assert ("config: llama, 30 layers, hidden 576, 9 heads, 3 kv heads, head dim 64, ffn 1536, "
            "vocab 49152") in r.stdout
    assert "tied output" in r.stdout


def test_bad_files_exit_nonzero(duet_bin, smollm2, tmp_path):
    data = open(smollm2, "rb").read(1 << 20)
    cases = {
        "truncated": (data[:5000], "truncated"),
        "magic": (b"GGUX" + data[4:4096], "not a GGUF file"),
        "empty": (b"", "empty file"),
    }
    for name, (content, needle) in cases.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(content)
        for cmd in (["gguf-dump", p], ["mkmodel", "--tokenizer-from", p, "--out", tmp_path / "o"]):
            r = run(duet_bin, *cmd)
            assert r.returncode == 1, (name, cmd)
            assert needle in r.stderr and str(p) in r.stderr, (name, r.stderr)
    r = run(duet_bin, "gguf-dump", tmp_path / "missing.gguf")
    assert r.returncode == 1 and "cannot open" in r.stderr


def test_gguf_dump_unknown_arch_and_tensor(duet_bin, tmp_path):
    p = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(p), "qwen2")
    w.add_tensor("x", np.zeros((2, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run(duet_bin, "gguf-dump", p)
    assert r.returncode == 0
    assert "architecture 'qwen2' is not supported" in r.stdout
    r = run(duet_bin, "gguf-dump", p, "--tensor", "nope", "--out", tmp_path / "o")
    assert r.returncode == 1 and "no tensor named nope" in r.stderr
    r = run(duet_bin, "gguf-dump", p, "--tensor", "x", "--out", tmp_path / "o")
    assert r.returncode == 0 and (tmp_path / "o").stat().st_size == 2 * 32 * 4
