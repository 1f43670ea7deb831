"""GGUF export: files the `gguf` package reads back exactly, that mlx_slm.load runs alike, and the CLI."""

import numpy as np
import pytest
from helpers import sample_text, tiny_config, tiny_model_folder, tiny_weights, write_model_folder
from test_gguf import llama_cpp_permute

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.export.weights import ModelWeights
from mlx_slm.formats.views import AffineWeight

TOKENS = np.array([[5, 17, 99, 3, 250, 42, 7, 130]])
GGUF_LAYERS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
GGUF_GLOBALS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def tiny(tmp_path, model_type="llama", backend="numpy", tied=True, **quantize):
    """A tiny model (float16, or quantized with ``quantize``'s settings) and its tokenizer."""
    folder = tiny_model_folder(tmp_path, model_type, seed=3, tie_word_embeddings=tied, vocab_size=270)  # 7 unused
    model, tokenizer = mlx_slm.load(folder, backend=backend, progress=False)
    if quantize:
        mlx_slm.quantize(model, progress=False, **quantize)
    return model, tokenizer


def dense(value) -> np.ndarray:
    """The float32 weight of a tensor as ModelWeights gives it (the views' documented formulas)."""
    if isinstance(value, AffineWeight):
        repeat = [np.repeat(a, value.group_size, axis=1) for a in (value.scales, value.biases)]
        return value.codes.astype(np.float32) * repeat[0] + repeat[1]
    if hasattr(value, "lut"):
        rows, width = value.codes.shape
        tables = value.lut.astype(np.float32)
        n, k = np.meshgrid(np.arange(rows), np.arange(width), indexing="ij")
        weight = tables[n // (rows // tables.shape[0]), k // (width // tables.shape[1]), value.codes]
        return weight if value.row_scales is None else weight * value.row_scales.astype(np.float32)
    return value.astype(np.float32)


def gguf_key(name: str) -> str:
    stem, _, suffix = name.rpartition(".") if name.endswith((".weight", ".bias")) else (name, "", "weight")
    if stem.startswith("model.layers."):
        _, _, index, rest = stem.split(".", 3)
        return f"blk.{index}.{GGUF_LAYERS[rest]}.{suffix}"
    return f"{GGUF_GLOBALS[stem]}.{suffix}"


def expected(model) -> dict:
    """GGUF name -> (model value, its float32 weight in the file's row order)."""
    config = mlx_slm.model_config(model)
    out = {}
    for name, value in dict(ModelWeights(model)).items():
        weight = dense(value)
        if config["model_type"] == "llama" and (".q_proj" in name or ".k_proj" in name):
            heads = config["num_attention_heads" if ".q_proj" in name else "num_key_value_heads"]
            weight = llama_cpp_permute(weight, heads)
        out[gguf_key(name)] = (value, weight)
    return out


def read_back(path) -> tuple:
    """(GGUFReader, {name: tensor}, {name: float32 [N, K] dequantized by gguf.quants})."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    values = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
              .reshape(tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    return reader, tensors, values


def field(reader, key):
    return reader.fields[key].contents() if key in reader.fields else None


def logits(model, backend) -> np.ndarray:
    if backend == "numpy":
        return model(TOKENS)
    import mlx.core as mx

    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


CASES = {  # name: (quantize settings, export types, GGUF type of the matrices, exact?)
    "f16": ({}, None, "F16", True),
    "f32": ({}, "f32", "F32", True),
    "bf16": ({}, "bf16", "BF16", False),
    "q8_0": ({}, "q8_0", "Q8_0", False),
    "affine4g32": ({"bits": 4, "group_size": 32}, None, "Q4_1", True),
    "affine5g32": ({"bits": 5, "group_size": 32}, None, "Q5_1", True),
    "affine4g64": ({"bits": 4, "group_size": 64}, None, "Q4_1", True),
    "affine3g32": ({"bits": 3, "group_size": 32}, None, "Q4_1", True),
    "affine8g32": ({"bits": 8, "group_size": 32}, None, "Q8_0", False),
    "affine6g64-to-f32": ({"bits": 6, "group_size": 64}, {"requantize": "f32"}, "F32", True),
    "lut4": ({"format": "lut", "bits": 4, "group_size": 8}, None, "F16", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_file_reads_back_through_gguf(tmp_path, case):
    """Every tensor dequantizes (gguf.quants) to the model's own weight: bit for bit for exact mappings,
    within the reported largest error otherwise; metadata as llama.cpp's converter writes it."""
    settings, types, kind, exact = CASES[case]
    model, tokenizer = tiny(tmp_path, **settings)
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf", types=types)
    reader, tensors, values = read_back(tmp_path / "m.gguf")
    want = expected(model)
    assert set(tensors) == set(want) and "output.weight" not in tensors  # tied head: no output.weight
    records = {t.name: t for t in report.tensors}
    for name, (value, weight) in want.items():
        assert values[name].shape == weight.shape, name
        if weight.ndim == 1:
            assert tensors[name].tensor_type.name == "F32"
            np.testing.assert_array_equal(values[name], weight, err_msg=name)
            continue
        is_lut = hasattr(value, "lut")
        assert tensors[name].tensor_type.name == kind, name
        error = float(np.abs(values[name] - weight).max())
        if exact and not is_lut:
            np.testing.assert_array_equal(values[name], weight, err_msg=name)
            assert records[name].error == 0
        else:
            assert error == pytest.approx(records[name].error, abs=0), name  # the report is the measured error
            assert error <= 0.02 * np.abs(weight).max(), name
    if not exact:
        assert 0 < max(report.errors().values())
    config = mlx_slm.model_config(model)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert field(reader, "llama.context_length") == config["max_position_embeddings"]
    assert field(reader, "llama.embedding_length") == config["hidden_size"]
    assert field(reader, "llama.feed_forward_length") == config["intermediate_size"]
    assert field(reader, "llama.attention.head_count") == config["num_attention_heads"]
    assert field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert field(reader, "llama.rope.freq_base") == config["rope_theta"]
    assert field(reader, "llama.rope.dimension_count") == config["head_dim"]
    assert field(reader, "llama.attention.key_length") is None  # head_dim == hidden / heads
    assert field(reader, "llama.vocab_size") == config["vocab_size"]
    assert field(reader, "general.quantization_version") == 2
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "smollm"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"] and tokens[:2] == ["<|endoftext|>", "<|im_start|>"]
    assert tokens[-1] == f"[PAD{config['vocab_size'] - 1}]" and field(reader, "tokenizer.ggml.token_type")[-1] == 5
    assert field(reader, "tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]
    assert field(reader, "tokenizer.ggml.merges") == ["Ġ t", "h e", "Ġt he", "i n"]
    assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    # the report: per type the tensors and bytes the file holds
    by_type = {}
    for tensor in reader.tensors:
        row = by_type.setdefault(tensor.tensor_type.name, [0, 0])
        row[0] += 1
        row[1] += int(tensor.n_bytes)
    assert {k: [v["tensors"], v["bytes"]] for k, v in report.types().items()} == by_type
    assert report.file_bytes == (tmp_path / "m.gguf").stat().st_size
    assert kind in report.format()


def test_scales_beyond_float16_are_requantized(tmp_path):
    """A float32 model's affine scales and biases are float32: no Q4_1 block holds them, so its layers
    are requantized to Q8_0 (or --requantize-type) with the error measured, never silently rounded."""
    config = tiny_config(torch_dtype="float32")
    folder = write_model_folder(tmp_path / "f32", config, tiny_weights(config, seed=2, dtype=np.float32))
    model, tokenizer = mlx_slm.load(folder, backend="numpy", progress=False)
    mlx_slm.quantize(model, bits=4, group_size=32, progress=False)
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf")
    _, _, values = read_back(tmp_path / "m.gguf")
    matrices = [t for t in report.tensors if len(t.shape) == 2]
    assert {(t.kind, t.how) for t in matrices} == {("Q8_0", "requantized")}
    for name, (_, weight) in expected(model).items():
        if weight.ndim == 2:
            assert 0 < np.abs(values[name] - weight).max() == report.errors()[name]
    assert "requantized: 15 tensors to Q8_0" in report.format()


def test_q5_1_block_layout_matches_gguf_dequantization():
    """Every 5-bit code in every block position, with the high bit, decodes through gguf.quants."""
    import gguf

    from mlx_slm.export.gguf_tensors import pack_q4_1, pack_q5_1

    rng = np.random.default_rng(0)
    codes = np.concatenate([np.arange(32, dtype=np.uint8)[None].repeat(2, 0), rng.integers(0, 32, (2, 64))], axis=1)
    codes = codes.astype(np.uint8)  # [2, 96]
    scales = rng.uniform(0.01, 1, (2, 3)).astype(np.float16).astype(np.float32)
    biases = rng.uniform(-1, 1, (2, 3)).astype(np.float16).astype(np.float32)
    weight = AffineWeight(codes=codes, scales=scales, biases=biases, bits=5, group_size=32, stored_bytes=0)
    back = gguf.quants.dequantize(pack_q5_1(weight), gguf.GGMLQuantizationType.Q5_1).reshape(2, 96)
    np.testing.assert_array_equal(back, dense(weight))
    weight.codes = codes & np.uint8(15)
    back = gguf.quants.dequantize(pack_q4_1(weight), gguf.GGMLQuantizationType.Q4_1).reshape(2, 96)
    np.testing.assert_array_equal(back, dense(weight))


@pytest.mark.parametrize("model_type,tied", [("llama", True), ("llama", False), ("qwen3", True), ("qwen3", False),
                                             ("qwen2", True)])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("mlx", marks=pytest.mark.mlx)])
@pytest.mark.parametrize("bits", [None, 4])
def test_load_of_export_gives_the_same_model(tmp_path, model_type, tied, backend, bits):
    """mlx_slm.load(exported file) holds the source model's weights (Q/K back in their order) and
    computes the same logits: identical on numpy; on MLX identical for float16 and within fp16
    rounding of MLX's quantized matmul for Q4_1 (the reloaded model is float)."""
    quantize = {"bits": bits, "group_size": 32} if bits else {}
    model, tokenizer = tiny(tmp_path, model_type, backend, tied, **quantize)
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert ("output.weight" in {t.name for t in report.tensors}) is not tied
    dtype = "float32" if bits else "float16"
    back, back_tokenizer = mlx_slm.load(tmp_path / "m.gguf", backend=backend, dtype=dtype, progress=False)
    config, back_config = mlx_slm.model_config(model), mlx_slm.model_config(back)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rope_theta", "vocab_size", "tie_word_embeddings"):
        assert back_config[key] == config[key], key
    source, loaded = dict(ModelWeights(model)), dict(ModelWeights(back))
    assert {gguf_key(n) for n in source} == {gguf_key(n) for n in loaded}
    for name, value in source.items():
        again = loaded[name if name.endswith((".weight", ".bias")) else f"{name}.weight"]
        np.testing.assert_array_equal(dense(again), dense(value), err_msg=name)
    got, want = logits(back, backend), logits(model, backend)
    if backend == "numpy" or not bits:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=0.05)  # MLX: float16 activations in the source; 0.023 seen
    text = "the then in"
    assert back_tokenizer.encode(text) == tokenizer.encode(text)


def test_gptq_codes_scales_and_biases_are_kept_bit_for_bit(tmp_path):
    """A 4-bit g32 GPTQ model's calibrated codes, scales and biases are the Q4_1 blocks' own bytes
    (decoded here by hand), which the gguf package's own Q4_1 quantizer would not choose."""
    import gguf

    model, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, seed=3), backend="numpy", progress=False)
    mlx_slm.quantize(model, bits=4, group_size=32, method="gptq", calib=[sample_text(40)], tokenizer=tokenizer,
                     num_samples=4, seq_len=64, progress=False)
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "g.gguf")
    _, tensors, _ = read_back(tmp_path / "g.gguf")
    config = mlx_slm.model_config(model)
    own_choice = 0
    for path, value in dict(ModelWeights(model)).items():
        if not isinstance(value, AffineWeight):
            continue
        raw = np.asarray(tensors[gguf_key(path)].data).reshape(value.codes.shape[0], -1, 20)
        d, m = (raw[..., a:a + 2].copy().view("<f2")[..., 0] for a in (0, 2))
        codes = np.concatenate([raw[..., 4:] & 15, raw[..., 4:] >> 4], axis=-1).reshape(value.codes.shape)
        order = np.arange(value.codes.shape[0])
        if ".q_proj" in path or ".k_proj" in path:
            order = llama_cpp_permute(order, config["num_attention_heads" if ".q_proj" in path else
                                                     "num_key_value_heads"])
        np.testing.assert_array_equal(codes, value.codes[order], err_msg=path)
        np.testing.assert_array_equal(d.astype(np.float32), value.scales[order], err_msg=path)
        np.testing.assert_array_equal(m.astype(np.float32), value.biases[order], err_msg=path)
        requantized = gguf.quants.quantize(dense(value)[order], gguf.GGMLQuantizationType.Q4_1)
        own_choice += not np.array_equal(requantized.reshape(raw.shape), raw)
    assert own_choice > 0 and {t.kind for t in report.tensors} == {"Q4_1", "F32"}


def test_unsupported_inputs_are_one_clear_error(tmp_path):
    model, tokenizer = tiny(tmp_path)
    with pytest.raises(SLMError, match="must end in .gguf"):
        mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.bin")
    with pytest.raises(SLMError, match="float type must be one of"):
        mlx_slm.export_gguf(model, tokenizer, tmp_path / "m.gguf", types="q4_0")
    mistral, tokenizer = mlx_slm.load(tiny_model_folder(tmp_path, "mistral"), backend="numpy", progress=False)
    with pytest.raises(SLMError, match="GGUF export supports model types llama, qwen2, qwen3, not 'mistral'"):
        mlx_slm.export_gguf(mistral, tokenizer, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_cli_writes_and_refuses(tmp_path, capsys):
    from mlx_slm.cli import main

    folder = tiny_model_folder(tmp_path)
    out = tmp_path / "t.gguf"
    assert main(["export", "gguf", str(folder), "-o", str(out), "--backend", "numpy", "--type", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "Q8_0" in printed
    before = out.read_bytes()
    # refused before any model is read: the model argument does not even exist
    assert main(["export", "gguf", str(tmp_path / "nowhere"), "-o", str(out), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and out.read_bytes() == before
    assert main(["export", "gguf", str(out), "-o", str(out), "--backend", "numpy", "--overwrite"]) == 2
    assert "an input of this run" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", "gguf", str(folder), "-o", str(out), "--backend", "numpy", "--overwrite"]) == 0
    assert out.read_bytes() != before and "F16" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left
    mistral = tiny_model_folder(tmp_path, "mistral")
    assert main(["export", "gguf", str(mistral), "-o", str(tmp_path / "m.gguf"), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not 'mistral'" in err and not (tmp_path / "m.gguf").exists()


@pytest.mark.slow
def test_smollm2_rtn_q4_1_logits_match(smollm2_dir, smollm2_path, tmp_path):
    """SmolLM2-135M, RTN 4-bit g32 (embedding and every linear layer) -> Q4_1: our reader's model gives
    the source model's logits on a prompt within 1e-4 (both numpy, float32: the weights are equal), and
    the file's hyperparameters and vocabulary are those llama.cpp's converter wrote into the packaged
    SmolLM2 GGUF (every llama.* and tokenizer.* key but add_space_prefix, value for value)."""
    import gguf

    model, tokenizer = mlx_slm.load(smollm2_dir, backend="numpy", progress=False)
    mlx_slm.quantize(model, bits=4, group_size=32, progress=False)
    report = mlx_slm.export_gguf(model, tokenizer, tmp_path / "smol.gguf")
    assert set(report.types()) == {"Q4_1", "F32"} and report.bpw == 5.0
    ours, reference = gguf.GGUFReader(str(tmp_path / "smol.gguf")), gguf.GGUFReader(str(smollm2_path))
    keys = [k for k in reference.fields if k.startswith(("llama.", "tokenizer.")) and "add_space_prefix" not in k]
    assert len(keys) > 20 and all(field(ours, k) == field(reference, k) for k in keys)
    back, back_tokenizer = mlx_slm.load(tmp_path / "smol.gguf", backend="numpy", dtype="float32", progress=False)
    prompt = tokenizer.encode("The capital of France is", add_special_tokens=False)
    assert back_tokenizer.encode("The capital of France is", add_special_tokens=False) == prompt
    got, want = back(np.array([prompt])), model(np.array([prompt]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert back_tokenizer.decode([int(got[0, -1].argmax())]) == tokenizer.decode([int(want[0, -1].argmax())])
