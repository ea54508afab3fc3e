"""GGUF reader, writer and quantizers against the gguf Python package.

- Dequantization: every tensor of SmolLM2 and of `duet mkmodel` files of each
  weight type, dumped by `duet gguf-dump --all-tensors`, equals
  gguf.quants.dequantize bit for bit (all six types: duet's quant.c is built
  without FMA contraction and rounds each step to float like numpy).
- Quantization: duet's quantizers equal gguf.quants.quantize byte for byte,
  on mkmodel weights (an F32 file and a quantized file of the same seed hold
  the same floats) and on adversarial values (ties, zeros, constants,
  negative extremes, subnormals, huge values).
- Writer: a duet-written file with every metadata type reads back through
  gguf.GGUFReader with the same values and tensor bytes; a file written by
  gguf.GGUFWriter reads through duet.
"""
import pathlib
import subprocess

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from conftest import BUILD  # noqa: E402

TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16,
         "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1}


def helper_bin():
    path = BUILD / "tests" / "test_gguf_writer"
    if not path.exists():
        pytest.fail(f"{path} is not built")
    return str(path)


def run(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, r.stderr
    return r


def dequant_all(duet_bin, path, tmp_path):
    """duet's dequantization of every tensor, as one float32 array per tensor."""
    out = tmp_path / (pathlib.Path(path).name + ".f32")
    run(duet_bin, "gguf-dump", path, "--all-tensors", "--out", out)
    raw = np.fromfile(out, dtype=np.float32)
    out.unlink()
    return raw


def check_dequant(duet_bin, path, tmp_path):
    reader = gguf.GGUFReader(path)
    raw = dequant_all(duet_bin, path, tmp_path)
    off = 0
    types = {}
    for t in reader.tensors:
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float32)
        got = raw[off:off + ref.size]
        off += ref.size
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), \
            f"{path}: {t.name} ({t.tensor_type.name}) differs, max |d| {np.abs(ref - got).max()}"
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    assert off == raw.size
    return types


def test_smollm2_dequantize_bit_exact(duet_bin, smollm2, tmp_path):
    types = check_dequant(duet_bin, smollm2, tmp_path)
    assert types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


MK_SHAPE = ["--layers", "2", "--hidden", "96", "--heads", "3", "--kv-heads", "1",
            "--ffn", "160", "--vocab", "200", "--seed", "7"]


@pytest.fixture(scope="module")
def mkmodels(duet_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("mk")
    files = {}
    for name in TYPES:
        p = d / f"mk_{name}.gguf"
        run(duet_bin, "mkmodel", *MK_SHAPE, "--type", name, "--out", p)
        files[name] = p
    return files


@pytest.mark.parametrize("name", list(TYPES))
def test_mkmodel_dequantize_bit_exact(duet_bin, mkmodels, name, tmp_path):
    types = check_dequant(duet_bin, str(mkmodels[name]), tmp_path)
    # token_embd, output and 7 matrices per layer in the type; 5 F32 norms
    if name == "f32":
        assert types == {"F32": 21}
    else:
        assert types == {"F32": 5, TYPES[name].name: 16}


@pytest.mark.parametrize("name", [n for n in TYPES if n != "f32"])
def test_mkmodel_quantize_matches_gguf(mkmodels, name):
    """Same seed, other type: duet's bytes == gguf.quants.quantize(F32 weights)."""
    src = {t.name: t for t in gguf.GGUFReader(mkmodels["f32"]).tensors}
    dst = gguf.GGUFReader(mkmodels[name])
    n = 0
    for t in dst.tensors:
        s = src[t.name]
        assert list(s.shape) == list(t.shape)
        if t.tensor_type == QT.F32:   # norms stay F32
            assert np.array_equal(np.asarray(s.data), np.asarray(t.data))
            continue
        assert t.tensor_type == TYPES[name]
        ref = gguf.quants.quantize(np.asarray(s.data, dtype=np.float32), TYPES[name])
        got = np.asarray(t.data)
        assert np.array_equal(ref.view(np.uint8).reshape(-1), got.view(np.uint8).reshape(-1)), \
            f"{t.name}: quantized bytes differ"
        n += 1
    assert n == 2 + 7 * 2


def adversarial_values():
    rng = np.random.default_rng(3)
    blocks = [
        np.zeros(32), np.full(32, 2.5), np.full(32, -1e-3),
        np.linspace(-1, 1, 32), np.linspace(-8, 7, 32),            # exact steps, ties
        np.arange(32) - 16.0, (np.arange(32) - 16.0) / 127 * 3,
        np.r_[-3.0, np.ones(31)], np.r_[np.ones(31), -3.0],          # negative extreme
        np.r_[3.0, -np.full(31, 3.0)],                                # +/- tie in |max|
        np.full(32, 1e-40), np.r_[1e-40, -1e-41, np.zeros(30)],     # subnormals
        np.r_[6e4, np.zeros(31)], np.r_[1e30, -1e30, np.zeros(30)],  # f16 overflow of d
        (np.arange(32) % 16) * 0.1 + 0.05,
    ]
    normal = rng.standard_normal(32 * 4096) * 0.02
    heavy = rng.standard_cauchy(32 * 512)
    steps = np.round(rng.standard_normal(32 * 512) * 8) / 8          # many exact halves
    return np.concatenate(blocks + [normal, heavy, steps]).astype(np.float32)


@pytest.mark.parametrize("name", list(TYPES))
def test_quantize_adversarial_matches_gguf(name, tmp_path):
    x = adversarial_values()
    inp, out = tmp_path / "x.f32", tmp_path / "x.q"
    x.tofile(inp)
    run(helper_bin(), "--quantize", int(TYPES[name]), inp, out)
    got = np.fromfile(out, dtype=np.uint8)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = gguf.quants.quantize(x, TYPES[name])
    ref = ref.view(np.uint8).reshape(-1)
    assert got.size == ref.size
    if not np.array_equal(got, ref):
        bad = np.nonzero(got != ref)[0]
        pytest.fail(f"{name}: {bad.size} bytes differ, first at {bad[:8]}")


def test_writer_read_by_gguf_package(duet_bin, tmp_path):
    path = tmp_path / "sample.gguf"
    run(helper_bin(), "--write-sample", path)
    r = gguf.GGUFReader(path)
    f = {k: v for k, v in r.fields.items() if not k.startswith("GGUF.")}
    T = gguf.GGUFValueType

    def val(k):
        return f[k].contents()

    def typ(k):
        return f[k].types

    assert typ("v.u8") == [T.UINT8] and val("v.u8") == 200
    assert typ("v.i8") == [T.INT8] and val("v.i8") == -100
    assert typ("v.u16") == [T.UINT16] and val("v.u16") == 60000
    assert typ("v.i16") == [T.INT16] and val("v.i16") == -30000
    assert typ("v.u32") == [T.UINT32] and val("v.u32") == 4000000000
    assert typ("v.i32") == [T.INT32] and val("v.i32") == -2000000000
    assert typ("v.u64") == [T.UINT64] and val("v.u64") == 18000000000000000000
    assert typ("v.i64") == [T.INT64] and val("v.i64") == -9000000000000000000
    assert typ("v.f32") == [T.FLOAT32] and val("v.f32") == 0.15625
    assert typ("v.f64") == [T.FLOAT64] and val("v.f64") == 1.0 / 3.0
    assert typ("v.bool") == [T.BOOL] and bool(val("v.bool")) is True
    assert typ("v.str") == [T.STRING] and val("v.str") == 'h\u00e9llo "gguf"\n'
    assert val("general.alignment") == 64 and typ("general.alignment") == [T.UINT32]
    assert r.alignment == 64
    arrays = {
        "a.u8": (T.UINT8, [1, 2, 255]), "a.i8": (T.INT8, [-128, 0, 127]),
        "a.u16": (T.UINT16, [0, 65535]), "a.i16": (T.INT16, [-32768, 32767]),
        "a.u32": (T.UINT32, [7, 4000000000]), "a.i32": (T.INT32, [-1, 0, 2147483647]),
        "a.u64": (T.UINT64, [0, 2**64 - 1]), "a.i64": (T.INT64, [-2**63, 2**63 - 1]),
        "a.f32": (T.FLOAT32, [0.5, -1.25, float(np.float32(3.0e38))]),
        "a.f64": (T.FLOAT64, [1e-300, -2.5]), "a.bool": (T.BOOL, [True, False, True]),
        "a.empty": (T.UINT32, []), "a.str": (T.STRING, ["alpha", "", "\u4e2d\u6587 \U0001F600"]),
    }
    for k, (et, want) in arrays.items():
        assert typ(k)[0] == T.ARRAY, k
        if want:
            assert typ(k)[1] == et, k
        got = val(k)
        assert [type(w)(g) for g, w in zip(got, want)] == want and len(got) == len(want), k
    assert len(f) == 27
    # Tensors: the same source quantized six ways; the bytes equal the gguf
    # package's quantization of the F32 copy, and the offsets are 64-aligned.
    ts = {t.name: t for t in r.tensors}
    assert list(ts) == ["t.f32", "t.f16", "t.bf16", "t.q8_0", "t.q4_0", "t.q4_1"]
    src = np.asarray(ts["t.f32"].data, dtype=np.float32)
    for name, qt in TYPES.items():
        t = ts["t." + name]
        assert t.tensor_type == qt and list(t.shape) == [64, 2]
        assert (t.data_offset - r.data_offset) % 64 == 0 and t.data_offset % 64 == 0
        ref = gguf.quants.quantize(src, qt).view(np.uint8).reshape(-1)
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), ref), name


def test_gguf_package_file_read_by_duet(duet_bin, tmp_path):
    """A file from gguf.GGUFWriter (metadata of several types, every tensor
    type) reads through duet: gguf-dump shows the values, and the tensors
    dequantize bit-exactly."""
    path = tmp_path / "py.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("x.u32", 123456)
    w.add_int8("x.i8", -5)
    w.add_float64("x.f64", 0.25)
    w.add_bool("x.bool", False)
    w.add_string("x.str", "snow \u2603")
    w.add_array("x.arr_i32", [-1, 2, -3])
    w.add_array("x.arr_str", ["a", "bb", ""])
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 96)) * 0.5).astype(np.float32)
    for name, qt in TYPES.items():
        w.add_tensor("w." + name, gguf.quants.quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = run(duet_bin, "gguf-dump", path).stdout
    for line in ["x.u32: u32 = 123456", "x.i8: i8 = -5", "x.f64: f64 = 0.25",
                 "x.bool: bool = false", 'x.str: str = "snow \u2603"',
                 "x.arr_i32: arr[i32] (3) = [-1, 2, -3]",
                 'x.arr_str: arr[str] (3) = ["a", "bb", ""]',
                 "w.q4_1: Q4_1 [96, 3]"]:
        assert line in out, line
    check_dequant(duet_bin, str(path), tmp_path)
