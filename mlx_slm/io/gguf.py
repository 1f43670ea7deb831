"""Import a GGUF file: metadata -> Hugging Face config, tensors -> numpy weights.

Tensors are dequantized with the `gguf` package (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, K-quants, ...) and renamed to mlx-lm / Hugging Face names. llama.cpp
stores the Q and K projections of llama-architecture models with their rows
permuted for its RoPE kernel; :func:`unpermute_qk` undoes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import SLMError
from ..formats.dtypes import FLOAT_DTYPES
from ..progress import hidden

ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
SKIPPED = {"rope_freqs"}


def read_reader(path: Path):
    """Open a GGUF file, turning any parse failure into one clear error."""
    import gguf

    if not path.is_file():
        raise SLMError(f"no such GGUF file: {path}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises many kinds on bad bytes
        raise SLMError(f"{path} is not a readable GGUF file (corrupt or truncated?): {err}") from None


def describe_file(path: Path) -> str:
    """One line on how a GGUF file stores its tensors: each tensor type with its count, and the
    bits per weight of its matrices as stored (a loaded model is dequantized, so its own
    figures say nothing about the file)."""
    kinds: dict[str, int] = {}
    matrix_bits = matrix_weights = 0
    for tensor in read_reader(Path(path)).tensors:
        kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + 1
        if len(tensor.shape) == 2:
            matrix_bits += 8 * int(tensor.n_bytes)
            matrix_weights += int(tensor.n_elements)
    types = ", ".join(f"{name} x {count}" for name, count in sorted(kinds.items(), key=lambda kv: -kv[1]))
    stored = f"; {matrix_bits / matrix_weights:.3f} bits per matrix weight as stored" if matrix_weights else ""
    return f"GGUF, tensors {types}{stored}"


def read_fields(reader) -> dict:
    """All metadata fields as plain Python values."""
    fields = {}
    for key, field in reader.fields.items():
        try:
            fields[key] = field.contents()
        except Exception as err:
            raise SLMError(f"GGUF metadata field {key!r} is unreadable: {err}") from None
    return fields


def config_from_fields(fields: dict, tensor_names: set) -> dict:
    """Hugging Face style config.json content for a llama-family GGUF."""
    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise SLMError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )

    def get(key, default=None, required=True):
        value = fields.get(f"{arch}.{key}", default)
        if value is None and required:
            raise SLMError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    tokens = fields.get("tokenizer.ggml.tokens") or []
    config = {
        "model_type": ARCHITECTURES[arch],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "vocab_size": int(get("vocab_size", len(tokens), required=False) or len(tokens)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
    }
    for key in ("bos", "eos", "padding"):
        value = fields.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[{"padding": "pad"}.get(key, key) + "_token_id"] = int(value)
    scaling = fields.get(f"{arch}.rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif scaling not in (None, "none"):
        raise SLMError(f"GGUF rope scaling {scaling!r} is not supported")
    if "rope_freqs.weight" in tensor_names:
        raise SLMError("GGUF files with llama-3 rope frequency factors are not supported yet")
    return config


def hf_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None to skip."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in SKIPPED:
        return None
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{LAYER_NAMES[match.group(2)]}.{suffix}"
    raise SLMError(f"GGUF tensor {gguf_name!r} has no known place in a llama-family model")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a Q or K projection ([rows, ...])."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def read_gguf(path, dtype: str = "float16", progress: bool = True):
    """Read a GGUF model.

    Returns ``(config dict, weights {hf name: np.ndarray in dtype}, tokenizer)``.
    """
    import gguf
    from tqdm import tqdm

    from .gguf_tokenizer import tokenizer_from_gguf_fields

    path = Path(path)
    reader = read_reader(path)
    fields = read_fields(reader)
    names = {t.name for t in reader.tensors}
    config = config_from_fields(fields, names)
    config["torch_dtype"] = dtype
    target = FLOAT_DTYPES[dtype]
    permute = config["model_type"] == "llama"
    weights = {}
    for tensor in tqdm(reader.tensors, desc=f"reading {path.name}", disable=hidden(progress)):
        name = hf_name(tensor.name)
        if name is None:
            continue
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as err:
            raise SLMError(f"cannot decode GGUF tensor {tensor.name} ({tensor.tensor_type.name}): {err}") from None
        expected = tuple(int(n) for n in reversed(tensor.shape))
        values = np.asarray(values).reshape(expected)
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            values = unpermute_qk(values, config["num_attention_heads"])
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            values = unpermute_qk(values, config["num_key_value_heads"])
        weights[name] = values.astype(target)
    tokenizer = tokenizer_from_gguf_fields(fields)
    return config, weights, tokenizer
