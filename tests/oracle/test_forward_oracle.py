"""duet's forward pass against an independent numpy reference.

The reference reads and dequantizes the weights with the `gguf` Python
package (not duet's reader) and runs the llama forward pass in float64 with
float activations throughout. duet's logits come from
`duet generate --tokens ... --dump-logits FILE`, either one token per
forward call (--chunk 1: the decode path at every position) or in prompt
chunks (--chunk 5: the prefill path over a cached prefix).

Bounds, and why:
- duet rounds activations on purpose: for quantized weights every matmul
  input becomes 8-bit blocks of 32 (scale amax/127, so each element moves by
  up to amax/254), by default in two levels (the residual quantized again:
  up to amax/254^2), with --act-q8 in one; for F16/BF16 weights it is
  rounded to f16 / bf16; the KV cache is f16. The error metric is ||l - l_exact|| / ||l_exact - mean|| per
  position. Its bound is measured, not guessed: the same numpy pass run a
  second time with exactly that activation rounding simulated (Q8 blocks,
  f16/bf16, f16 K/V) shows how far the rounding alone moves the logits from
  exact; duet must stay within 2x that distance (the worst position of a
  prompt) plus a 1e-3 floor for float summation order. On SmolLM2, whose
  hidden states have large outliers that coarsen the Q8 blocks, the
  rounding alone moves logits by 2-16%; on the random models by far less.
- top-1: duet's argmax must be the exact reference's argmax at every
  position. Random models have near-flat logits, so there a disagreement is
  tolerated only where the reference's top-2 gap is within the measured
  error (a near-tie), and near-ties must stay rare; on SmolLM2 none is
  allowed.
"""
import pathlib
import struct
import subprocess

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

F32, F16, BF16 = 0, 1, 30   # ggml type ids (everything else here is quantized)


def round_q8(x):
    """duet's activation blocks: 32 elements, d = amax / 127, nearest even."""
    shape = x.shape
    x = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    return (np.rint(x * inv) * d).astype(np.float64).reshape(shape)


def round_q8x2(x):
    """duet's default: the 8-bit blocks plus the 8-bit blocks of the residual."""
    q = round_q8(x)
    return q + round_q8(x - q)


def round_bf16(x):
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def round_f16(x):
    return x.astype(np.float16).astype(np.float64)


def read_dump(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b"DLOG"
    vocab = struct.unpack_from("<i", data, 4)[0]
    rows, off = {}, 8
    while off < len(data):
        pos = struct.unpack_from("<i", data, off)[0]
        off += 4
        rows[pos] = np.frombuffer(data, dtype=np.float32, count=vocab, offset=off).astype(np.float64)
        off += 4 * vocab
    return vocab, rows


class Reference:
    """Llama forward pass in float64 over gguf-dequantized weights."""

    def __init__(self, path):
        r = GGUFReader(path)
        f = r.fields

        def scalar(key, default=None):
            if key not in f:
                return default
            return f[key].parts[-1][0].item()

        arch = bytes(f["general.architecture"].parts[-1]).decode()
        self.n_layers = int(scalar(f"{arch}.block_count"))
        self.n_heads = int(scalar(f"{arch}.attention.head_count"))
        self.n_kv = int(scalar(f"{arch}.attention.head_count_kv", self.n_heads))
        self.eps = float(scalar(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.base = float(scalar(f"{arch}.rope.freq_base", 10000.0))
        self.w, self.wtype = {}, {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = [int(x) for x in reversed(list(t.shape))]
            self.w[t.name] = a.reshape(shape)
            self.wtype[t.name] = int(t.tensor_type)
        hidden = self.w["token_embd.weight"].shape[1]
        self.head_dim = int(scalar(f"{arch}.attention.key_length", hidden // self.n_heads))
        self.rot = int(scalar(f"{arch}.rope.dimension_count", self.head_dim))
        self.out_name = "output.weight" if "output.weight" in self.w else "token_embd.weight"
        self.sim = False
        self.act_q8 = False

    def mm(self, h, name):
        """h . W^T, with duet's activation rounding when simulating."""
        if self.sim:
            t = self.wtype[name]
            h = (h if t == F32 else round_f16(h) if t == F16 else
                 round_bf16(h) if t == BF16 else round_q8(h) if self.act_q8 else round_q8x2(h))
        return h @ self.w[name].T

    def kv(self, x):
        return round_f16(x) if self.sim else x

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x (T, H, D): rotate adjacent pairs
        half = self.rot // 2
        freq = self.base ** (-2.0 * np.arange(half) / self.rot)
        th = pos[:, None] * freq[None, :]
        c, s = np.cos(th)[:, None, :], np.sin(th)[:, None, :]
        x = x.copy()
        x0, x1 = x[..., 0:self.rot:2].copy(), x[..., 1:self.rot:2].copy()
        x[..., 0:self.rot:2] = x0 * c - x1 * s
        x[..., 1:self.rot:2] = x0 * s + x1 * c
        return x

    def logits(self, tokens):
        T = len(tokens)
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        pos = np.arange(T, dtype=np.float64)
        x = self.w["token_embd.weight"][tokens]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self.rms(x, self.w[p + "attn_norm.weight"])
            q = self.rope(self.mm(h, p + "attn_q.weight").reshape(T, H, D), pos)
            k = self.kv(self.rope(self.mm(h, p + "attn_k.weight").reshape(T, KV, D), pos))
            v = self.kv(self.mm(h, p + "attn_v.weight").reshape(T, KV, D))
            k = np.repeat(k, H // KV, axis=1)
            v = np.repeat(v, H // KV, axis=1)
            s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(D) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            att = np.einsum("htu,uhd->thd", s, v).reshape(T, H * D)
            x = x + self.mm(att, p + "attn_output.weight")
            h = self.rms(x, self.w[p + "ffn_norm.weight"])
            g = self.mm(h, p + "ffn_gate.weight")
            u = self.mm(h, p + "ffn_up.weight")
            x = x + self.mm(g / (1.0 + np.exp(-g)) * u, p + "ffn_down.weight")
        return self.mm(self.rms(x, self.w["output_norm.weight"]), self.out_name)

    def exact_and_bound(self, tokens, act_q8=False):
        """Exact logits (T, vocab) and the error bound for duet (module doc)."""
        self.act_q8 = act_q8
        self.sim = False
        exact = self.logits(np.array(tokens))
        self.sim = True
        rounded = self.logits(np.array(tokens))
        self.sim = False
        rel = [np.linalg.norm(rounded[i] - exact[i]) / np.linalg.norm(exact[i] - exact[i].mean())
               for i in range(len(tokens))]
        return {i: exact[i] for i in range(len(tokens))}, 2.0 * max(rel) + 1e-3


def duet_logits(duet_bin, model, tokens, tmp_path, chunk, threads=2, extra=()):
    out = tmp_path / f"logits_{chunk}.bin"
    r = subprocess.run([duet_bin, "generate", "--model", model, "--tokens",
                        ",".join(map(str, tokens)), "-n", "0", "--chunk", str(chunk),
                        "--threads", str(threads), "--dump-logits", str(out), *extra],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return read_dump(out)[1]


def compare(ref, got, bound, allow_ties):
    """Relative error per position and top-1 agreement (see module doc)."""
    worst, ties = 0.0, 0
    for pos, lg in got.items():
        lr = ref[pos]
        rel = np.linalg.norm(lg - lr) / np.linalg.norm(lr - lr.mean())
        worst = max(worst, rel)
        if np.argmax(lg) != np.argmax(lr):
            top2 = np.sort(lr)[-2:]
            margin = top2[1] - top2[0]
            # a near-tie: the reference's own top-2 gap is within the error
            assert allow_ties and margin <= 4 * rel * np.std(lr), (
                f"position {pos}: duet picks {np.argmax(lg)}, reference {np.argmax(lr)} "
                f"(reference margin {margin:.4g}, relative error {rel:.3g})")
            ties += 1
    assert worst <= bound, f"relative logit error {worst:.4g} exceeds the bound {bound}"
    return worst, ties


PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
           [400, 17, 17, 17, 99, 3, 250, 12, 7, 300, 44, 45, 46]]


@pytest.mark.parametrize("act_q8", [False, True], ids=["q8x2", "act-q8"])
@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_mkmodel_every_type(duet_bin, tmp_path, wtype, act_q8):
    if act_q8 and wtype in ("f32", "f16", "bf16"):
        pytest.skip("--act-q8 changes only quantized matmuls")
    model = tmp_path / f"m_{wtype}.gguf"
    r = subprocess.run([duet_bin, "mkmodel", "--layers", "2", "--hidden", "128", "--heads", "4",
                        "--kv-heads", "2", "--ffn", "320", "--vocab", "512", "--ctx", "256",
                        "--type", wtype, "--seed", "7", "-o", str(model)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ref = Reference(str(model))
    ties_total, positions = 0, 0
    extra = ["--act-q8"] if act_q8 else []
    for toks in PROMPTS:
        lref, bound = ref.exact_and_bound(toks, act_q8)
        for chunk in (1, 5):
            got = duet_logits(duet_bin, str(model), toks, tmp_path, chunk, extra=extra)
            assert sorted(got) == ([*range(len(toks))] if chunk == 1 else
                                   sorted({min(i + chunk, len(toks)) - 1
                                           for i in range(0, len(toks), chunk)}))
            worst, ties = compare(lref, got, bound, allow_ties=True)
            print(f"{wtype} chunk {chunk}: worst relative error {worst:.3g} (bound {bound:.3g})")
            ties_total += ties
            positions += len(got)
    # random weights give near-flat logits; near-ties must still be rare
    assert ties_total <= positions // 10, f"{ties_total} near-ties in {positions} positions"


# SmolLM2 token ids: a ChatML fragment, a plain sentence, and the full chat
# prompt "What is the capital of France?" (whose first answer token is a
# near-tie in the exact model: "The" 25.33 vs "L" 25.24)
SMOLLM2_PROMPTS = [
    [1, 9690, 198, 2683, 314, 253, 5356, 11173, 30],
    [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 3259, 314],
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
     407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
     520, 9531, 198],
]


@pytest.fixture(scope="module")
def smollm2_ref(smollm2):
    return Reference(smollm2)


@pytest.mark.parametrize("act_q8", [False, True], ids=["q8x2", "act-q8"])
def test_smollm2(duet_bin, smollm2, smollm2_ref, tmp_path, act_q8):
    """Default activations: top-1 everywhere, no exception. --act-q8 (8-bit,
    llama.cpp's precision) is held to its own measured bound, and its top-1
    may differ only at near-ties (it does at the chat prompt's last token)."""
    ref = smollm2_ref
    extra = ["--act-q8"] if act_q8 else []
    for toks in SMOLLM2_PROMPTS[1:] if act_q8 else SMOLLM2_PROMPTS:
        lref, bound = ref.exact_and_bound(toks, act_q8)
        for chunk in (1, 4):
            got = duet_logits(duet_bin, smollm2, toks, tmp_path, chunk, extra=extra)
            worst, ties = compare(lref, got, bound, allow_ties=act_q8)
            print(f"SmolLM2 {'act-q8' if act_q8 else 'q8x2'} chunk {chunk}: worst relative "
                  f"error {worst:.3g} (bound {bound:.3g}), near-ties {ties}")
