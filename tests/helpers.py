"""Tiny models and files that tests build themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlx_slm.io import safetensors_np


def byte_level_fields(extra_merges=("Ġ t", "h e", "Ġt he", "i n")) -> dict:
    """GGUF tokenizer fields of a small byte-level BPE vocabulary (specials first)."""
    from tokenizers import pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = ["".join(m.split(" ")) for m in extra_merges]
    tokens = specials + alphabet + merged
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(specials) + [1] * (len(tokens) - len(specials)),
        "tokenizer.ggml.merges": list(extra_merges),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
    }


def tiny_tokenizer():
    from mlx_slm.io.gguf_tokenizer import tokenizer_from_gguf_fields

    return tokenizer_from_gguf_fields(byte_level_fields())


def tiny_config(model_type: str = "llama", vocab_size: int = 263, **overrides) -> dict:
    config = {
        "model_type": model_type, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 192,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 512, "vocab_size": vocab_size,
        "tie_word_embeddings": True, "torch_dtype": "float16",
    }
    if model_type == "qwen2":
        config["attention_bias"] = True
    config.update(overrides)
    return config


def tiny_weights(config: dict, seed: int = 0, dtype=np.float16) -> dict:
    """Random weights in mlx-lm names; q/k norms for qwen3, biases for qwen2."""
    rng = np.random.default_rng(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv, dh = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(dtype)

    def norm(size):
        return (1.0 + 0.1 * rng.standard_normal(size)).astype(dtype)

    weights = {"model.embed_tokens.weight": matrix(config["vocab_size"], hidden), "model.norm.weight": norm(hidden)}
    if not config.get("tie_word_embeddings", False):
        weights["lm_head.weight"] = matrix(config["vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes = {"self_attn.q_proj": (heads * dh, hidden), "self_attn.k_proj": (kv * dh, hidden),
                  "self_attn.v_proj": (kv * dh, hidden), "self_attn.o_proj": (hidden, heads * dh),
                  "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
        for name, shape in shapes.items():
            weights[f"{p}.{name}.weight"] = matrix(*shape)
        weights[f"{p}.input_layernorm.weight"] = norm(hidden)
        weights[f"{p}.post_attention_layernorm.weight"] = norm(hidden)
        if config.get("attention_bias"):
            for name, size in (("q_proj", heads * dh), ("k_proj", kv * dh), ("v_proj", kv * dh)):
                weights[f"{p}.self_attn.{name}.bias"] = (0.1 * rng.standard_normal(size)).astype(dtype)
        if config["model_type"] == "qwen3":
            weights[f"{p}.self_attn.q_norm.weight"] = norm(dh)
            weights[f"{p}.self_attn.k_norm.weight"] = norm(dh)
    return weights


def gemma3_weights(config: dict, seed: int = 0, prefix: str = "") -> dict:
    """Random gemma3_text weights (fp16 values stored as float32), mlx-lm names, tied head."""
    rng = np.random.default_rng(seed)
    hidden, inter, dh = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]

    def array(*shape, scale):
        return (scale * rng.standard_normal(shape)).astype(np.float16).astype(np.float32)

    weights = {"model.embed_tokens.weight": array(config["vocab_size"], hidden, scale=hidden**-0.5),
               "model.norm.weight": array(hidden, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes = {"self_attn.q_proj": (heads * dh, hidden), "self_attn.k_proj": (kv * dh, hidden),
                  "self_attn.v_proj": (kv * dh, hidden), "self_attn.o_proj": (hidden, heads * dh),
                  "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden), "mlp.down_proj": (hidden, inter)}
        for name, (rows, cols) in shapes.items():
            weights[f"{p}.{name}.weight"] = array(rows, cols, scale=cols**-0.5)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            weights[f"{p}.{name}.weight"] = array(hidden, scale=0.1)  # Gemma norms scale by 1 + weight
        for name in ("q_norm", "k_norm"):
            weights[f"{p}.self_attn.{name}.weight"] = array(dh, scale=0.1)
    return {prefix + name: value for name, value in weights.items()}


def write_model_folder(folder: Path, config: dict, weights: dict, tokenizer=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    safetensors_np.save(folder / "model.safetensors", weights, metadata={"format": "mlx"})
    (tokenizer or tiny_tokenizer()).save_pretrained(str(folder))
    return folder


def tiny_model_folder(root: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    config = tiny_config(model_type, **overrides)
    return write_model_folder(root / f"tiny-{model_type}-{seed}", config, tiny_weights(config, seed))


def sample_text(paragraphs: int = 60, seed: int = 0) -> str:
    """Deterministic English-like text with enough tokens for several windows."""
    rng = np.random.default_rng(seed)
    words = ("the quick brown fox jumps over lazy dog and then it runs into a field of green grass "
             "where many small birds sing in the morning light while the river flows").split()
    return "\n\n".join(" ".join(rng.choice(words, size=40)) + "." for _ in range(paragraphs))


def output_error(w, w_hat, hessian) -> float:
    """Mean squared output error E||(W - W_hat) x||^2 for inputs with second moments ``hessian``."""
    delta = np.asarray(w, np.float64) - w_hat
    return float(np.einsum("nk,kl,nl->", delta, hessian, delta))
