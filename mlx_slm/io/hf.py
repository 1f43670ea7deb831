"""Hugging Face model folders: find them (locally or on the Hub) and read them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import SLMError
from . import safetensors_np

DOWNLOAD_PATTERNS = ["*.json", "model*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]
MAX_HEADER_BYTES = 100_000_000  # the safetensors package's limit on the JSON header


def resolve(source) -> Path:
    """A local model folder for ``source`` (a folder path or a Hub repo id)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SLMError(f"{path} is neither a model folder nor a .gguf file")
        return path
    text = str(source)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise SLMError(f"no model at {text}: no such folder or file")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as err:
        raise SLMError(
            f"no local folder {text!r}, and downloading it from the Hugging Face Hub failed: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def read_config(folder: Path) -> dict:
    """config.json of a model folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise SLMError(f"{folder} has no config.json: not a Hugging Face / MLX model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SLMError(f"{path} is not valid JSON: {err}") from None


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise SLMError(f"{folder} has no model*.safetensors weights")
    return files


def check_safetensors(path: Path) -> None:
    """SLMError unless ``path`` is a safetensors file as the format (and the `safetensors` package)
    defines it: a JSON object whose tensors each have a known dtype, a shape of non-negative
    integers and ``data_offsets`` [begin, end] spanning exactly that many bytes, the spans tiling
    the data section with no gap, overlap or trailing bytes; ``__metadata__`` maps to strings."""
    with open(path, "rb") as file:
        declared = int.from_bytes(file.read(8), "little")
    if declared > MAX_HEADER_BYTES:  # before reading it: a corrupt length must not allocate gigabytes
        raise SLMError(f"{path} is not a safetensors file: its header would be {declared} bytes long, "
                       f"the format allows {MAX_HEADER_BYTES}")
    header, start = safetensors_np.read_header(path)
    if not isinstance(header, dict):
        raise SLMError(f"{path} has a corrupt safetensors header: not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SLMError(f"{path} has a corrupt safetensors header: __metadata__ is not a map of strings")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if not isinstance(dtype, str) or dtype not in safetensors_np.DTYPES:
            raise SLMError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise SLMError(f"{path} has a corrupt safetensors header: tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise SLMError(f"{path} has a corrupt safetensors header: tensor {name!r} has data_offsets {offsets!r}")
        size = math.prod(shape) * safetensors_np.DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != size:
            raise SLMError(f"{path} has a corrupt safetensors header: tensor {name!r} of shape {shape} in {dtype} "
                           f"needs {size} bytes, its data_offsets {offsets} span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    end, data_size = 0, path.stat().st_size - start
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise SLMError(f"{path} has a corrupt safetensors header: tensor {name!r} starts at data byte {begin}, "
                           f"not at {end} where the tensor before it ends")
        end = stop
    if end > data_size:
        raise SLMError(f"{path} is truncated: its tensors need {end} bytes of data, the file holds {data_size}")
    if end < data_size:
        raise SLMError(f"{path} is corrupt: {data_size - end} bytes after its last tensor")


def read_weights(folder: Path) -> dict:
    """All tensors of the folder's safetensors files as numpy arrays."""
    weights = {}
    for file in weight_files(folder):
        check_safetensors(file)
        weights.update(safetensors_np.load(file))
    return weights


def check_weights(folder: Path) -> None:
    """Fail clearly on truncated or corrupt safetensors before MLX reads them."""
    for file in weight_files(folder):
        check_safetensors(file)


def llama_shapes(config: dict) -> tuple[dict, dict]:
    """(required, optional): name -> shape of the tensors of a llama-family model of ``config``
    (mlx-lm names). Optional: the untied head, q/k/v/o and MLP biases, q/k norms (Qwen3). Gemma 3
    (gemma3_text) has the same tensors plus two norms per block, and q/k norms always."""
    hidden, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    vocab = config["vocab_size"]
    required = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    optional = {"lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        outputs = {"self_attn.q_proj": heads * head_dim, "self_attn.k_proj": kv_heads * head_dim,
                   "self_attn.v_proj": kv_heads * head_dim, "self_attn.o_proj": hidden,
                   "mlp.gate_proj": inter, "mlp.up_proj": inter, "mlp.down_proj": hidden}
        inputs = {"self_attn.o_proj": heads * head_dim, "mlp.down_proj": inter}
        for name, rows in outputs.items():
            required[f"{p}{name}.weight"] = (rows, inputs.get(name, hidden))
            optional[f"{p}{name}.bias"] = (rows,)
        required[p + "input_layernorm.weight"] = required[p + "post_attention_layernorm.weight"] = (hidden,)
        optional[p + "self_attn.q_norm.weight"] = optional[p + "self_attn.k_norm.weight"] = (head_dim,)
        if config.get("model_type") == "gemma3_text":
            for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                required[f"{p}{name}.weight"] = (hidden,)
            for name in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                required[p + name] = optional.pop(p + name)
    return required, optional


def check_shapes(config: dict, shapes: dict, source) -> None:
    """SLMError unless ``shapes`` ({name: shape}) are the tensors of a llama-family model of
    ``config``: every required one, none unknown, each of the size the config gives it."""
    sizes = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
    bad = [key for key in sizes if type(config.get(key)) is not int or config[key] < 1]
    if bad:
        raise SLMError(f"{source}: the config's {bad[0]} is {config.get(bad[0])!r}, not a positive integer")
    if config["num_hidden_layers"] > len(shapes):
        raise SLMError(f"{source}: the config declares {config['num_hidden_layers']} layers, but there are only "
                       f"{len(shapes)} tensors")
    required, optional = llama_shapes(config)
    unknown = sorted(set(shapes) - set(required) - set(optional))
    missing = sorted(set(required) - set(shapes))
    if unknown or missing:
        raise SLMError(f"{source}: " + (f"tensor {unknown[0]!r} has no place in" if unknown else
                                         f"tensor {missing[0]!r} is missing from") +
                       f" a {config['num_hidden_layers']}-layer {config.get('model_type')} model")
    for name, shape in shapes.items():
        want = required.get(name) or optional[name]
        if tuple(shape) != want:
            raise SLMError(f"{source}: tensor {name!r} has shape {list(shape)}; the config makes it {list(want)}")


def check_float(config: dict, dtypes: dict, source) -> None:
    """SLMError if a model without quantization holds a tensor ({name: dtype name}) that is not
    float16, bfloat16 or float32."""
    if config.get("quantization"):
        return
    for name, dtype in dtypes.items():
        if dtype not in ("float16", "bfloat16", "float32"):
            raise SLMError(f"{source}: tensor {name!r} is {dtype}, but the config has no quantization: "
                           "weights must be float16, bfloat16 or float32")
