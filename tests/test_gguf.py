"""GGUF import: tensors, llama.cpp's Q/K permutation, config, tokenizer, bad files."""

import numpy as np
import pytest
from helpers import byte_level_fields, tiny_config, tiny_weights

import mlx_slm
from mlx_slm.errors import SLMError
from mlx_slm.io.gguf import read_gguf, unpermute_qk

GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}


def llama_cpp_permute(w, n_heads):
    """What llama.cpp's converter does to llama Q/K rows (the operation to undo)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(name):
    if name.startswith("model.layers."):
        _, _, index, rest = name.split(".", 3)
        stem, suffix = rest.rsplit(".", 1)
        return f"blk.{index}.{GGUF_NAMES[stem]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[name]


def write_tiny_gguf(path, config, weights, arch="llama", quant="Q8_0"):
    """Write ``weights`` as llama.cpp would: permuted Q/K, 2D matrices quantized."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    fields = byte_level_fields()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(fields["tokenizer.ggml.tokens"])
    writer.add_token_types(fields["tokenizer.ggml.token_type"])
    writer.add_token_merges(fields["tokenizer.ggml.merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    stored = {}
    for name, value in weights.items():
        value = value.astype(np.float32)
        if arch == "llama" and name.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, config["num_attention_heads"])
        elif arch == "llama" and name.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, config["num_key_value_heads"])
        kind = getattr(gguf.GGMLQuantizationType, quant) if value.ndim == 2 else gguf.GGMLQuantizationType.F32
        data = gguf.quants.quantize(value, kind) if value.ndim == 2 and quant != "F32" else value
        writer.add_tensor(gguf_name(name), data, raw_dtype=kind)
        stored[name] = gguf.quants.dequantize(data, kind).reshape(value.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def unpermuted(stored, config, arch="llama"):
    out = dict(stored)
    if arch == "llama":
        for name in out:
            if name.endswith("q_proj.weight"):
                out[name] = unpermute_qk(stored[name], config["num_attention_heads"])
            elif name.endswith("k_proj.weight"):
                out[name] = unpermute_qk(stored[name], config["num_key_value_heads"])
    return out


def test_unpermute_inverts_llama_cpp():
    w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    for heads in (1, 2, 3):
        assert np.array_equal(unpermute_qk(llama_cpp_permute(w, heads), heads), w)
    assert not np.array_equal(llama_cpp_permute(w, 2), w)


@pytest.mark.parametrize("quant", ["F32", "F16", "BF16", "Q8_0", "Q5_0", "Q4_0", "Q4_1"])
def test_reads_tensors_and_config(tmp_path, quant):
    config = tiny_config(vocab_size=263)
    weights = tiny_weights(config, seed=3)
    path = tmp_path / "tiny.gguf"
    stored = write_tiny_gguf(path, config, weights, quant=quant)
    got_config, got, tokenizer = read_gguf(path, dtype="float32", progress=False)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert got_config[key] == config[key]
    assert got_config["tie_word_embeddings"] is True and got_config["model_type"] == "llama"
    for name, value in weights.items():
        # Q/K come back in Hugging Face row order; every tensor equals what the file holds.
        original = value.astype(np.float32)
        expected = stored[name] if not name.endswith(("q_proj.weight", "k_proj.weight")) else \
            unpermute_qk(stored[name], config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"])
        assert np.array_equal(got[name], expected.astype(np.float32)), name
        if quant in ("F32", "F16", "BF16"):
            np.testing.assert_allclose(got[name], original, atol=1e-3)
    ids = tokenizer.convert_tokens_to_ids
    assert tokenizer.encode("the the", add_special_tokens=False) == [ids("t"), ids("he"), ids("Ġthe")]


def test_qwen3_is_not_unpermuted(tmp_path):
    config = tiny_config("qwen3")
    weights = tiny_weights(config)
    stored = write_tiny_gguf(tmp_path / "q.gguf", config, weights, arch="qwen3", quant="F32")
    got_config, got, _ = read_gguf(tmp_path / "q.gguf", dtype="float32", progress=False)
    assert got_config["model_type"] == "qwen3"
    name = "model.layers.0.self_attn.q_proj.weight"
    assert np.array_equal(got[name], stored[name])
    assert "model.layers.1.self_attn.k_norm.weight" in got


def test_gguf_logits_match_the_source_weights(tmp_path):
    """A model loaded from GGUF computes what the same weights compute directly."""
    from mlx_slm.models.numpy_llama import NumpyLlama

    config = tiny_config()
    weights = tiny_weights(config, seed=5)
    stored = write_tiny_gguf(tmp_path / "t.gguf", config, weights, quant="F32")
    model, _ = mlx_slm.load(tmp_path / "t.gguf", backend="numpy", dtype="float32", progress=False)
    direct = NumpyLlama(config, {k: v.astype(np.float32) for k, v in unpermuted(stored, config).items()})
    tokens = np.array([[5, 17, 99, 3, 250, 42]])
    np.testing.assert_allclose(model(tokens), direct(tokens), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(tokens), NumpyLlama(config, weights)(tokens), atol=2e-2)


def test_smollm2_tokenizer_and_config(smollm2_path):
    config, weights, tokenizer = read_gguf(smollm2_path, progress=False)
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["num_key_value_heads"] == 3 and config["tie_word_embeddings"] is True
    assert sum(v.size for v in weights.values()) == 134_515_008
    assert tokenizer.encode("The capital of France is", add_special_tokens=False) == [504, 3575, 282, 4649, 314]
    assert tokenizer.encode("<|im_start|>user", add_special_tokens=False)[0] == 1
    text = "Héllo  wörld 日本 🙂\n\n\tcode(x=1)"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_gguf_is_a_clear_error(smollm2_path, tmp_path, damage):
    path = tmp_path / "bad.gguf"
    if damage == "truncate":
        path.write_bytes(smollm2_path.read_bytes()[: 5_000_000])
    elif damage == "garbage":
        path.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(SLMError, match="GGUF"):
        read_gguf(path, progress=False)


def test_unsupported_gguf_architecture(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SLMError, match="architecture 'gpt2' is not supported"):
        read_gguf(tmp_path / "g.gguf", progress=False)


@pytest.mark.parametrize("flags,bos", [({}, False), ({"tokenizer.ggml.add_bos_token": True}, True),
                                       ({"tokenizer.ggml.add_bos_token": False}, False)])
def test_byte_level_tokenizer_adds_bos_as_the_file_says(flags, bos):
    """llama.cpp adds BOS when tokenizer.ggml.add_bos_token is true (Llama 3 files) and not otherwise."""
    from mlx_slm.io.gguf_tokenizer import tokenizer_from_gguf_fields

    fields = {**byte_level_fields(), "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, **flags}
    tokenizer = tokenizer_from_gguf_fields(fields)
    plain = tokenizer_from_gguf_fields({k: v for k, v in fields.items() if "add_bos" not in k})
    ids = tokenizer.encode("the cat")
    assert ids == ([1] if bos else []) + plain.encode("the cat")
    with pytest.raises(SLMError, match="add_bos_token"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.add_bos_token": "yes"})
