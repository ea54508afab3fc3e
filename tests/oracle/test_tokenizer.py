"""duet's tokenizer against Hugging Face `tokenizers` built independently
from the same GGUF vocabulary and merges with the same pre-tokenizer.

SmolLM2 ('smollm': Digits(individual) + ByteLevel), the same vocabulary
relabelled 'gpt2' and 'llama-bpe' (llama3 regex Split + ByteLevel, whole
pre-tokens in the vocabulary kept), a small SentencePiece 'llama' vocabulary
with byte fallback, and the ChatML template of SmolLM2."""
import json
import subprocess

import gguf
import numpy as np
import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers

from conftest import run_duet

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# --- corpus ----------------------------------------------------------------

BASE = [
    "Hello world", "Hello, world!", "hello", " hello", "  hello", "   leading spaces",
    "trailing spaces   ", "The quick brown fox jumps over the lazy dog.",
    "It's a dog's life, isn't it? We'll see; they'd know. You're right, I'm sure we've met.",
    "IT'S LOUD, ISN'T IT? WE'LL SEE. I'M HERE, YOU'RE THERE, WE'VE GONE, THEY'D GO.",
    "don't", "Don'T", "'s'S't", "rock'n'roll", "''quoted''", "\"double quotes\"",
    "e-mail: someone@example.com", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    "C:\\Users\\name\\file.txt", "snake_case_identifier", "camelCaseIdentifier", "CONSTANT_VALUE",
    "", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t\tindented", "a\tb\tc",
    "line1\nline2\nline3", "para1\n\npara2", "trailing newline\n", "  \n  \n", " \t \n \t ",
    "word \n\n word", "x\r\ny\r\n\r\nz", "tabs\t \tand spaces", "end with tab\t",
    "0", "1", "42", "123", "1234", "12345", "1234567890", "3.14159", "-17", "+1 (555) 010-9999",
    "1,000,000", "2024-11-28", "12:30:45", "v1.2.3", "0x1F", "1e-5", "50%", "$100", "€20",
    "ⅫⅣ roman", "½ and ¾", "²³ superscripts", "٣٤٥ arabic digits", "१२३ devanagari digits",
    "你好，世界！", "我爱自然语言处理。", "中文 English 混合 mixed 123", "日本語のテキストです。",
    "한국어 텍스트", "Привет, мир!", "Ελληνικά γράμματα", "עברית", "العربية", "ไทย",
    "Ünïcödé àccénts", "naïve café résumé", "straße", "ﬁ ligature", "Ångström", "ǅ titlecase",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "emoji 🎉 in text 🚀!", "❤️", "✓ check",
    "a😀b", "😀 😀", " 😀", "\u00a0nbsp", "x\u2003em space", "ideographic\u3000space",
    "zero\u200bwidth", "\u2028line sep", "combining e\u0301", "\u0000nul", "bell\u0007",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); }",
    "if (a && b || !c) { x <<= 2; y >>= 3; }", "SELECT * FROM t WHERE id = 7;",
    "<div class=\"x\">text</div>", "{\"key\": [1, 2, 3], \"n\": null}", "x = y ** 2 // 3",
    "    deeply\n        nested\n            code", "// comment\n/* block */", "$ ls -la | grep .c",
    "!!!", "???", "...", "---", "***bold***", "__init__", "a.b.c", "(a)[b]{c}", "@#$%^&*",
    "a  b", "a   b", "a    b", "a \tb", "a\t b", "  a  ", "!  !", "1 2 3", "1  2", " 1", "a1b2c3",
    "abc123def", "x=1;y=2", "wow!!!111", "I have 3 apples and 12 oranges.",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>",
    "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "< |im_start| >",
    "<repo_name>duet<file_sep>main.c", "<jupyter_code>print(1)<jupyter_output>1",
    "<filename>a.py\n<gh_stars>10", "<|endoftext|><|endoftext|>", "<<|im_end|>>",
    "The year 1999 was followed by 2000.", "Call me at 555-1234 or 555 5678.",
    "Mixed: English, 中文, русский, 日本語, 😀, and 123.",
    "A sentence with\ttabs,\nnewlines and  double  spaces.",
    "Supercalifragilisticexpialidocious", "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "the the the the the", "ababababababababab", "       ", "\n\n\n\n", "\t\t\t\t",
    # bytes SmolLM2's vocabulary lacks (0x04 0x06 0x13 0x14 0x16 0x1d, lead F1/F2)
    "x\x16y", "\x04\x06\x13\x14\x1d", "a \x16 b", "\U00040000 plane 4", "\U000F0041 private",
]

PARAGRAPH = ("Tokenizers split text into pieces. A pre-tokenizer first cuts the text at "
             "spaces, punctuation and digits; byte-level BPE then merges bytes into the "
             "longest pieces its merge table allows. Numbers such as 3.14 or 2,718 are "
             "split digit by digit for SmolLM2, while Llama 3 keeps groups of up to three.")


def corpus():
    out = list(BASE)
    words = ["alpha", "Beta", "gamma42", "δέλτα", "函数", "🙂", "it's", "x_1", "  ", "\n", "\t",
             "(ok)", "3.5", "#tag", "end."]
    # Deterministic combinations of the pieces above.
    rng = np.random.default_rng(1234)
    for _ in range(80):
        k = int(rng.integers(2, 7))
        sep = [" ", "", "  ", "\n", "\t", ", "][int(rng.integers(0, 6))]
        out.append(sep.join(words[int(i)] for i in rng.integers(0, len(words), k)))
    out.append(PARAGRAPH)
    out.append(PARAGRAPH * 5)
    out.append(open(__file__, encoding="utf-8").read()[:4000])
    return out


CORPUS = corpus()


def test_corpus_size():
    assert len(CORPUS) >= 200


# --- GGUF helpers -------------------------------------------------------------

def read_vocab(path):
    r = gguf.GGUFReader(path)
    f = r.fields
    def strings(key):   # much faster than .contents() for 49k entries
        fl = f[key]
        return [bytes(fl.parts[i]).decode("utf-8") for i in fl.data]
    v = {
        "tokens": strings("tokenizer.ggml.tokens"),
        "types": [int(x) for x in f["tokenizer.ggml.token_type"].contents()],
        "merges": strings("tokenizer.ggml.merges"),
    }
    for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        if "tokenizer.ggml." + k in f:
            v[k] = f["tokenizer.ggml." + k].contents()
    v["chat_template"] = f["tokenizer.chat_template"].contents()
    return v


def write_bpe_gguf(path, v, pre):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    w.add_token_merges(v["merges"])
    w.add_bos_token_id(v["bos_token_id"])
    w.add_eos_token_id(v["eos_token_id"])
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


_HF_CACHE = {}


def hf_bpe(v, pre, special):
    key = (id(v), pre, special)
    if key not in _HF_CACHE:
        _HF_CACHE[key] = _hf_bpe(v, pre, special)
    return _HF_CACHE[key]


def _hf_bpe(v, pre, special):
    vocab = {}
    for i, t in enumerate(v["tokens"]):
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama3")))
    if pre == "smollm":
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre == "gpt2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "llama3":
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    if special:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, ty in zip(v["tokens"], v["types"]) if ty == 3])
    return tk


def duet_encode_many(duet_bin, model, texts, special=False):
    args = ["tokenize", "--model", model, "--lines"] + (["--special"] if special else [])
    inp = "".join(json.dumps(t) + "\n" for t in texts)
    p = subprocess.run([duet_bin, *args], input=inp, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == len(texts)
    return [json.loads(x)["ids"] for x in lines]


def duet_detok(duet_bin, model, ids, special=False):
    args = ["detokenize", "--model", model, "--json"] + (["--special"] if special else [])
    p = run_duet(duet_bin, *args, "--", *[str(i) for i in ids])
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def smol_vocab(smollm2):
    return read_vocab(smollm2)


# --- byte-level BPE -----------------------------------------------------------

@pytest.mark.parametrize("special", [False, True])
def test_smollm2_matches_hf(duet_bin, smollm2, smol_vocab, special):
    hf = hf_bpe(smol_vocab, "smollm", special)
    got = duet_encode_many(duet_bin, smollm2, CORPUS, special)
    bad = [(t, g, hf.encode(t).ids) for t, g in zip(CORPUS, got) if g != hf.encode(t).ids]
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


@pytest.mark.parametrize("pre", ["gpt2", "llama3"])
def test_pre_variants_match_hf(duet_bin, smol_vocab, tmp_path, pre):
    name = {"gpt2": "gpt2", "llama3": "llama-bpe"}[pre]
    model = write_bpe_gguf(tmp_path / f"{pre}.gguf", smol_vocab, name)
    hf = hf_bpe(smol_vocab, pre, False)
    got = duet_encode_many(duet_bin, model, CORPUS)
    bad = [(t, g, hf.encode(t).ids) for t, g in zip(CORPUS, got) if g != hf.encode(t).ids]
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


def test_smollm2_decode_round_trips(duet_bin, smollm2, smol_vocab):
    hf = hf_bpe(smol_vocab, "smollm", True)
    texts = [t for t in CORPUS if t][90:120] + [PARAGRAPH]
    ids_list = duet_encode_many(duet_bin, smollm2, texts, special=True)
    for text, ids in zip(texts, ids_list):
        d = duet_detok(duet_bin, smollm2, ids, special=True)
        assert d["text"] == text
        assert "".join(d["pieces"]) == text
        assert d["text"] == hf.decode(ids, skip_special_tokens=False)


def test_smollm2_decode_round_trips_all(duet_bin, smollm2, smol_vocab):
    """Every corpus string through one long detokenize call (the pieces of a
    stream concatenate to the text). Strings with bytes the vocabulary lacks
    (dropped by both implementations) decode as Hugging Face decodes them."""
    hf = hf_bpe(smol_vocab, "smollm", True)
    ids_list = duet_encode_many(duet_bin, smollm2, CORPUS, special=True)
    sep = duet_encode_many(duet_bin, smollm2, ["\u241e"])[0]
    flat, want, lossless = [], [], 0
    for text, ids in zip(CORPUS, ids_list):
        flat += ids + sep
        back = hf.decode(ids, skip_special_tokens=False)
        lossless += back == text
        want.append(back)
    assert lossless >= len(CORPUS) - 5
    d = duet_detok(duet_bin, smollm2, flat, special=True)
    assert d["text"] == "\u241e".join(want) + "\u241e"
    assert "".join(d["pieces"]) == d["text"]


def test_control_tokens_hidden_unless_special(duet_bin, smollm2):
    d = duet_detok(duet_bin, smollm2, [1, 19556, 2])
    assert d["text"] == "Hello"
    d = duet_detok(duet_bin, smollm2, [1, 19556, 2], special=True)
    assert d["text"] == "<|im_start|>Hello<|im_end|>"


def test_broken_utf8_is_replaced_like_python(duet_bin, smollm2, smol_vocab):
    """Single byte tokens that do not form UTF-8 decode to U+FFFD exactly as
    Python's errors='replace' (maximal subparts)."""
    byte_tok = {}
    for i, t in enumerate(smol_vocab["tokens"]):
        if len(t) == 1:
            byte_tok.setdefault(t, i)
    # byte -> token through the GPT-2 mapping (SmolLM2 has no token for the
    # bytes that never occur in UTF-8: C0, C1, F5..FF)
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tok_of = {b: byte_tok[chr(c)] for b, c in zip(bs, cs) if chr(c) in byte_tok}
    for raw in [b"\xe4\xbd", b"\xe4\xbd\xa0\xe5", b"\xbf", b"a\x80b", b"\xf0\x9f\x98",
                b"\xed\xa0\x80", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\xc3(",
                b"\xf0\x9f\x98\x80\xe4"]:
        d = duet_detok(duet_bin, smollm2, [tok_of[b] for b in raw])
        assert d["text"] == raw.decode("utf-8", "replace"), raw
        assert "".join(d["pieces"]) == d["text"]
        for p in d["pieces"]:
            p.encode("utf-8")     # each piece is valid on its own


# --- SentencePiece ('llama') vocabulary ----------------------------------------

SPM_WORDS = ["hello", "world", "the", "quick", "brown", "fox", "token", "izer", "tokenizer",
             "lower", "newest", "widest", "low", "new", "wide", "est", "er", "a", "b", "c"]


def spm_vocab():
    """<unk>, <s>, </s>, 256 byte tokens, then pieces with distinct scores:
    characters, '▁', every substring of the words and '▁'+word prefixes."""
    pieces = []
    seen = set()

    def add(p):
        if p and p not in seen:
            seen.add(p)
            pieces.append(p)
    for ch in "abcdefghijklmnopqrstuvwxyz▁éü中文":
        add(ch)
    for w in SPM_WORDS:
        for i in range(len(w)):
            for j in range(i + 2, len(w) + 1):
                add(w[i:j])
        for j in range(1, len(w) + 1):
            add("▁" + w[:j])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    for k, p in enumerate(pieces):
        tokens.append(p)
        types.append(1)
        # longer pieces first, then a fixed pseudo-random order; all distinct
        scores.append(-float(k % 7) * 0.01 - 10.0 / len(p) - k * 1e-4)
    return tokens, types, scores


def write_spm_gguf(path):
    tokens, types, scores = spm_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path), tokens, scores


def hf_spm(tokens, scores):
    """SentencePiece-BPE as HF builds it for Llama: merges of every vocab pair
    whose concatenation is in the vocab, ranked by that piece's score."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for m, i in vocab.items():
        if i < 3 + 256 or len(m) < 2:
            continue
        for k in range(1, len(m)):
            a, b = m[:k], m[k:]
            if a in vocab and b in vocab:
                merges.append((scores[i], vocab[a], vocab[b], a, b))
    merges.sort(key=lambda x: (-x[0], x[1], x[2]))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, _, a, b in merges],
                              unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                          normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return tk


SPM_CORPUS = [
    "hello world", "Hello World", "the quick brown fox", "tokenizer", "tokenizers", "lowest",
    "newer wider", "  two spaces", "trailing ", "a b c", "abc", "cab", "xyz", "中文", "中文字",
    "é ü", "naïve", "😀", "hello😀world", "tab\there", "new\nline", "1234", "", " ",
    "the newest widest lower token", "helloworld", "worldhello", "quickfox", "brownest",
    "izerizer", "a" * 20, "estest", "low low low",
]


def test_spm_matches_hf(duet_bin, tmp_path):
    model, tokens, scores = write_spm_gguf(tmp_path / "spm.gguf")
    hf = hf_spm(tokens, scores)
    texts = [t for t in SPM_CORPUS if t]
    got = duet_encode_many(duet_bin, model, texts)
    for t, g in zip(texts, got):
        assert g == hf.encode(t).ids, t
        d = duet_detok(duet_bin, model, g)
        assert d["text"] == t
        assert d["text"] == hf.decode(g)
        assert "".join(d["pieces"]) == t


def test_spm_hand_computed(duet_bin, tmp_path):
    model, tokens, _ = write_spm_gguf(tmp_path / "spm.gguf")
    ix = {t: i for i, t in enumerate(tokens)}
    # add_bos with --add-special; the space prefix; byte fallback for \n
    p = run_duet(duet_bin, "tokenize", "--model", model, "--add-special", "--json",
                 "hello\nworld")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ids"] == [1, ix["▁hello"], 3 + 0x0A, ix["world"]]
    # '<s>' is text unless --special; after it the space prefix comes again
    got = duet_encode_many(duet_bin, model, ["<s>hello"], special=True)[0]
    assert got == [1, ix["▁hello"]]


# --- chat template ------------------------------------------------------------

def chatml(messages, default_system, gen=True):
    """SmolLM2's template, written out by hand from its text."""
    out = ""
    for i, m in enumerate(messages):
        if i == 0 and messages[0]["role"] != "system":
            out += "<|im_start|>system\n" + default_system + "<|im_end|>\n"
        out += "<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>" + "\n"
    if gen:
        out += "<|im_start|>assistant\n"
    return out


def test_smollm2_template_text(smol_vocab):
    """The template the hand-written renderer copies is the model's."""
    t = smol_vocab["chat_template"]
    assert SMOLLM2_SYSTEM + "<|im_end|>" in t
    assert "{% if loop.first and messages[0]['role'] != 'system' %}" in t
    assert "'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'" in t
    assert "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}" in t


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about 3 cats 🐱.\n\nKeep it short."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  spaces  "}],
]


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_chatml(duet_bin, smollm2, smol_vocab, tmp_path, conv, gen):
    msgs = CONVERSATIONS[conv]
    f = tmp_path / "chat.json"
    f.write_text(json.dumps(msgs))
    args = ["tokenize", "--model", smollm2, "--chat", str(f), "--json"]
    if not gen:
        args.append("--no-generation-prompt")
    p = run_duet(duet_bin, *args)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    want_text = chatml(msgs, SMOLLM2_SYSTEM, gen)
    assert out["text"] == want_text
    hf = hf_bpe(smol_vocab, "smollm", True)
    assert out["ids"] == hf.encode(want_text).ids
    if msgs[0]["role"] != "system":
        assert out["ids"][0] == 1 and SMOLLM2_SYSTEM in out["text"]
    if gen:
        assert out["ids"][-4:] == hf.encode("<|im_start|>assistant\n").ids


def test_chat_unknown_template_needs_name(duet_bin, smol_vocab, tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(smol_vocab["tokens"])
    w.add_token_types(smol_vocab["types"])
    w.add_token_merges(smol_vocab["merges"])
    w.add_chat_template("{{ messages | tojson }}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = tmp_path / "chat.json"
    f.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    p = run_duet(duet_bin, "tokenize", "--model", str(tmp_path / "t.gguf"), "--chat", str(f))
    assert p.returncode != 0 and "unrecognised chat template" in p.stderr
    p = run_duet(duet_bin, "tokenize", "--model", str(tmp_path / "t.gguf"), "--chat", str(f),
                 "--chat-template", "chatml", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["text"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# --- CLI errors ----------------------------------------------------------------

def test_detokenize_out_of_range(duet_bin, smollm2):
    p = run_duet(duet_bin, "detokenize", "--model", smollm2, "5", "49152")
    assert p.returncode != 0 and "out of range" in p.stderr
    p = run_duet(duet_bin, "detokenize", "--model", smollm2, "--", "-1")
    assert p.returncode != 0 and "out of range" in p.stderr
    p = run_duet(duet_bin, "detokenize", "--model", smollm2, "12x")
    assert p.returncode == 2 and "not a list of token ids" in p.stderr


def test_missing_tokenizer(duet_bin, tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "n.gguf"), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = run_duet(duet_bin, "tokenize", "--model", str(tmp_path / "n.gguf"), "hi")
    assert p.returncode != 0 and "no tokenizer" in p.stderr


def test_unknown_pre_tokenizer(duet_bin, smol_vocab, tmp_path):
    model = write_bpe_gguf(tmp_path / "x.gguf", smol_vocab, "no-such-pre")
    p = run_duet(duet_bin, "tokenize", "--model", model, "hi")
    assert p.returncode != 0 and "unsupported pre-tokenizer 'no-such-pre'" in p.stderr


def test_bench_json(duet_bin, smollm2, tmp_path):
    f = tmp_path / "en.txt"
    f.write_text(PARAGRAPH * 20)
    p = run_duet(duet_bin, "tokenize", "--model", smollm2, "--bench", str(f), "--seconds",
                 "0.2", "--json")
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert j["bench"] == "tokenizer" and j["encode_mb_per_s"] > 0 and j["tokens"] > 0
