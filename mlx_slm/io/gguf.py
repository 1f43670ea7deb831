"""Import a GGUF file: metadata -> Hugging Face config, tensors -> numpy weights.

Tensors are dequantized with the `gguf` package (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, K-quants, ...) and renamed to mlx-lm / Hugging Face names. llama.cpp
stores the Q and K projections of llama-architecture models with their rows
permuted for its RoPE kernel; :func:`unpermute_qk` undoes it. Gemma 3
(``gemma3``, mlx-lm's ``gemma3_text``; MLX only) is stored without that
permutation but with every norm weight shifted by +1, which the reader takes off.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import SLMError
from ..formats.dtypes import FLOAT_DTYPES
from ..progress import hidden
from .hf import check_shapes

ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # the llama family: GGUF name -> model_type
GEMMA3 = "gemma3"  # read into mlx-lm's gemma3_text model (the numpy engine runs the llama family only)
MODEL_TYPES = {**ARCHITECTURES, GEMMA3: "gemma3_text"}  # every architecture the reader knows

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
# Gemma 3 blocks have four norms: llama.cpp's ffn_norm is the one before the MLP there, and the
# outputs of attention and MLP have their own (post_attention_norm, post_ffw_norm).
GEMMA3_LAYER_NAMES = {**LAYER_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                      "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
SKIPPED = {"rope_freqs"}

VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar type -> bytes
STRING, ARRAY = 8, 9  # the other two GGUF value types
MAX_DIMS = 4  # llama.cpp's GGML_MAX_DIMS


def corrupt(path: Path, what: str) -> SLMError:
    what = " ".join(what.split())  # one line, whatever a reader's message holds
    return SLMError(f"{path} is not a readable GGUF file (corrupt or truncated?): {what}")


def check_header(path: Path) -> None:
    """Walk the header with every declared count and length checked against the bytes left.

    GGUFReader trusts them: an array declared longer than the file makes it loop over empty reads
    for as many items (2**63 is a hang). llama.cpp's limits hold too: no arrays of arrays, at most
    four dimensions per tensor.
    """
    size = path.stat().st_size
    if size < 24:
        raise corrupt(path, f"{size} bytes, too short for a GGUF header")
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
        if view[:4] != b"GGUF":
            raise SLMError(f"{path} is not a GGUF file: it does not start with the GGUF magic")
        order = "<" if struct.unpack_from("<I", view, 4)[0] & 0xFFFF else ">"  # GGUFReader's byte order rule
        offset = 8

        def skip(count: int, what: str) -> int:
            nonlocal offset
            if count > size - offset:
                raise corrupt(path, f"{what} at byte {offset} declares {count} bytes, past the end of the file")
            offset += count
            return offset - count

        def number(fmt: str, what: str) -> int:
            return struct.unpack_from(order + fmt, view, skip(struct.calcsize(fmt), what))[0]

        def value(kind: int, what: str) -> None:
            if kind == ARRAY:
                item, count = number("I", what), number("Q", what)
                if item in VALUE_SIZES:
                    skip(count * VALUE_SIZES[item], what)
                elif item != STRING:
                    raise corrupt(path, f"{what} is an array of value type {item}")
                elif count > (size - offset) // 8:
                    raise corrupt(path, f"{what} declares {count} strings, more than the file can hold")
                else:
                    for _ in range(count):
                        skip(number("Q", what), what)
            elif kind == STRING:
                skip(number("Q", what), what)
            elif kind in VALUE_SIZES:
                skip(VALUE_SIZES[kind], what)
            else:
                raise corrupt(path, f"{what} has the unknown value type {kind}")

        tensors, entries = number("Q", "the tensor count"), number("Q", "the metadata count")
        if 13 * entries + 24 * tensors > size:
            raise corrupt(path, f"{tensors} tensors and {entries} metadata entries cannot fit in {size} bytes")
        for index in range(entries):
            skip(number("Q", f"metadata key {index}"), f"metadata key {index}")
            value(number("I", f"metadata entry {index}"), f"metadata entry {index}")
        for index in range(tensors):
            skip(number("Q", f"tensor name {index}"), f"tensor name {index}")
            dims = number("I", f"tensor info {index}")
            if dims > MAX_DIMS:
                raise corrupt(path, f"tensor {index} declares {dims} dimensions (at most {MAX_DIMS})")
            skip(8 * dims + 12, f"tensor info {index}")


def check_layout(reader, path: Path) -> None:
    """llama.cpp's rules for tensor data, which GGUFReader does not check: each tensor starts where
    the one before it ends (padded to the alignment), and ends inside the file."""
    import gguf

    end = 0
    for tensor in reader.tensors:
        block, type_size = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
        offset = int(tensor.field.parts[-1][0])
        if offset != end:
            raise corrupt(path, f"tensor {tensor.name!r} starts at data offset {offset}, not at {end} where the "
                                "tensor before it ends")
        size = math.prod(int(d) for d in tensor.shape) // block * type_size
        if reader.data_offset + offset + size > reader.data.size:
            raise corrupt(path, f"tensor {tensor.name!r} runs past the end of the file")
        end += -(-size // reader.alignment) * reader.alignment


def read_reader(path: Path):
    """Open a GGUF file, turning any parse failure into one clear error."""
    import gguf

    if not path.is_file():
        raise SLMError(f"no such GGUF file: {path}")
    check_header(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises many kinds on bad bytes
        raise corrupt(path, str(err)) from None
    check_layout(reader, path)
    return reader


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


def typed(key: str, value, kind):
    """``value`` as ``kind``: int (a positive integer, as GGUF sizes and counts are) or float (any number)."""
    if (kind is int and type(value) is int and value > 0) or (kind is float and type(value) in (int, float)):
        return kind(value)
    shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
    raise SLMError(f"GGUF metadata {key} = {shown} is not {'a positive integer' if kind is int else 'a number'}")


def config_from_fields(fields: dict, tensor_names: set) -> dict:
    """Hugging Face style config.json content for a llama-family or Gemma 3 GGUF."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or arch not in MODEL_TYPES:
        raise SLMError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(MODEL_TYPES)}"
        )

    def get(key, kind=int, default=None, required=True):
        value = fields.get(f"{arch}.{key}", default)
        if value is None:
            if required:
                raise SLMError(f"GGUF metadata lacks {arch}.{key}")
            return None
        return typed(f"{arch}.{key}", value, kind)

    hidden = get("embedding_length")
    heads = get("attention.head_count")
    kv_heads = get("attention.head_count_kv", default=heads)
    if heads % kv_heads:
        raise SLMError(f"GGUF metadata {arch}.attention.head_count {heads} is not a multiple of "
                       f"{arch}.attention.head_count_kv {kv_heads}")
    tokens = fields.get("tokenizer.ggml.tokens")
    config = {
        "model_type": MODEL_TYPES[arch],
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": get("attention.key_length", required=False) or hidden // heads,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", float),
        "rope_theta": get("rope.freq_base", float, 10000.0),
        "max_position_embeddings": get("context_length", default=2048),
        "vocab_size": get("vocab_size", required=False) or (len(tokens) if isinstance(tokens, list) else 0),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
    }
    for key in ("bos", "eos", "padding"):
        value = fields.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            if type(value) is not int or value < 0:
                raise SLMError(f"GGUF metadata tokenizer.ggml.{key}_token_id = {value!r} is not a token id")
            config[{"padding": "pad"}.get(key, key) + "_token_id"] = value
    if config["head_dim"] % 2:
        raise SLMError(f"GGUF head dimension {config['head_dim']} is odd: rotary embeddings need an even one")
    scaling = fields.get(f"{arch}.rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": get("rope.scaling.factor", float)}
    elif scaling not in (None, "none"):
        raise SLMError(f"GGUF rope scaling {scaling!r} is not supported")
    if "rope_freqs.weight" in tensor_names:
        raise SLMError("GGUF files with llama-3 rope frequency factors are not supported yet")
    if arch == GEMMA3:
        config.update(gemma3_settings(get, fields, config))
    return config


def gemma3_settings(get, fields: dict, config: dict) -> dict:
    """What a ``gemma3`` GGUF means beyond the llama keys, as llama.cpp reads it, in gemma3_text terms.

    The file holds the sliding window, left out by llama.cpp's converter when every layer attends
    globally (a sliding_window_pattern of 1). llama.cpp fixes the rest for the architecture: every
    6th layer global, RoPE base 10000 in the sliding layers (rope.freq_base is the global layers'),
    queries scaled by 1/sqrt(head_dim), but by 1/sqrt(hidden / heads) in the 62-layer (27B) model.
    ``get``: :func:`config_from_fields`'s typed reader of ``gemma3.*`` keys.
    """
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if fields.get(f"{GEMMA3}.{key}") is not None:
            raise SLMError(f"GGUF metadata {GEMMA3}.{key} is set, but mlx-lm's gemma3_text model has no "
                           "logit soft-capping (Gemma 3 has none)")
    head_dim, layers = config["head_dim"], config["num_hidden_layers"]
    value_length = get("attention.value_length", required=False)
    if value_length not in (None, head_dim):
        raise SLMError(f"GGUF metadata {GEMMA3}.attention.value_length {value_length} differs from the key "
                       f"length {head_dim}: gemma3_text has one head dimension")
    window = get("attention.sliding_window", required=False)
    pattern = 6 if window else 1
    if layers < pattern:
        raise SLMError(f"GGUF {GEMMA3} model of {layers} layers: with sliding attention every 6th layer is global, "
                       "and mlx-lm's gemma3_text model needs one, so at least 6")
    return {
        "sliding_window": window or config["max_position_embeddings"],
        "sliding_window_pattern": pattern,
        "layer_types": ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)],
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": config["hidden_size"] // config["num_attention_heads"] if layers == 62 else head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
    }


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None to skip.
    ``arch``: the file's general.architecture (Gemma 3 names its norms differently)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in SKIPPED:
        return None
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    layer_names = GEMMA3_LAYER_NAMES if arch == GEMMA3 else LAYER_NAMES
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in layer_names:
        return f"model.layers.{match.group(1)}.{layer_names[match.group(2)]}.{suffix}"
    family = "Gemma 3" if arch == GEMMA3 else "llama-family"
    raise SLMError(f"GGUF tensor {gguf_name!r} has no known place in a {family} model")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a Q or K projection ([rows, ...])."""
    rows = w.shape[0]
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def shifted_norm(gguf_name: str, values: np.ndarray, arch: str) -> np.ndarray:
    """A norm weight as mlx-lm's model holds it. llama.cpp's converter stores each Gemma 3 norm
    weight w (tensor names ending in ``norm.weight``) as 1 + w, the factor Gemma3RMSNorm multiplies by;
    mlx-lm's gemma3_text RMSNorm adds the 1 itself, so it is taken off here (in float32)."""
    if arch == GEMMA3 and gguf_name.endswith("norm.weight"):
        return np.asarray(values, np.float32) - 1.0
    return values


def read_gguf(path, dtype: str = "float16", progress: bool = True, check=None):
    """Read a GGUF model.

    check: called with the config before the tokenizer is built and any tensor decoded (the numpy
    backend refuses a model it cannot run at once, not after decoding it).
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
    if check is not None:
        check(config)
    tokenizer = tokenizer_from_gguf_fields(fields)
    arch = fields["general.architecture"]
    shapes = {hf_name(t.name, arch): tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    shapes.pop(None, None)
    check_shapes(config, shapes, f"GGUF file {path}")
    target = FLOAT_DTYPES[dtype]
    permute = config["model_type"] == "llama"
    weights = {}
    for tensor in tqdm(reader.tensors, desc=f"reading {path.name}", disable=hidden(progress)):
        name = hf_name(tensor.name, arch)
        if name is None:
            continue
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as err:
            raise SLMError(f"cannot decode GGUF tensor {tensor.name} ({tensor.tensor_type.name}): {err}") from None
        values = shifted_norm(tensor.name, np.asarray(values).reshape(shapes[name]), arch)
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            values = unpermute_qk(values, config["num_attention_heads"])
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            values = unpermute_qk(values, config["num_key_value_heads"])
        weights[name] = values.astype(target)
    return config, weights, tokenizer
