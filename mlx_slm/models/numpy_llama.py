"""A numpy forward pass of the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM).

It runs wherever numpy does, computes in float32 on numpy's BLAS, and is the
reference the MLX paths are held against. Weights use mlx-lm names; quantized
layers (an integer ``.weight`` plus the arrays of their format, e.g. ``.scales`` +
``.biases`` for affine, ``.lut`` for lut) are dequantized to float32 when used, and
cached while the cache stays within :data:`FLOAT32_CACHE_BYTES` (a 1.7B model's float32
copy is 6.8 GB). A layer the cache cannot hold is dequantized again at every use, in slices of
:data:`ROWS_PER_SLICE` output rows, so no float32 copy of a whole large layer (a 150k-token
embedding and tied head) ever exists.
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from ..formats import get_format
from ..formats.base import cut_rows, row_share
from ..formats.dtypes import as_float32
from ..qconfig import saved_layer_params

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "smollm")
FLOAT32_CACHE_BYTES = 1 << 28  # float32 weights kept between calls (256 MiB; about half of a 135M model's)
ROWS_PER_SLICE = 4096  # output rows dequantized at once for a layer beyond the cache


def stored_rows(weights, name: str, rows) -> np.ndarray:
    """``weights[name][rows]`` (``rows``: a slice or an integer index array), converting only those rows
    where ``weights`` convert what they return (an MLX model's twin,
    :class:`~mlx_slm.runtime.LazyNumpyWeights`)."""
    take = getattr(weights, "take", None)
    return weights[name][rows] if take is None else take(name, rows)


def check_model_type(config: dict) -> None:
    """SLMError unless the numpy engine can run a model of ``config`` (a Llama-family model_type):
    every other architecture needs MLX, whose mlx-lm classes run it."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise SLMError(f"the numpy engine runs Llama-family models ({', '.join(SUPPORTED)}), not {model_type!r}: "
                       "load it on the MLX backend, which runs it with mlx-lm's own model class (MLX is "
                       "`pip install mlx` on macOS, `pip install 'mlx[cpu]'` on Linux)")


def rope_inverse_frequencies(config: dict, head_dim: int) -> np.ndarray:
    """Angular speed per rotated pair, ``[head_dim // 2]``, with the model's scaling."""
    base = float(config.get("rope_theta", 10000.0))
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    periods = base**exponents
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("type") or scaling.get("rope_type") or "default"
    if kind == "default":
        return (1.0 / periods).astype(np.float32)
    if kind == "linear":
        return (1.0 / (periods * float(scaling["factor"]))).astype(np.float32)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old = float(scaling.get("original_max_position_embeddings", 8192))
        wavelengths = 2 * np.pi * periods
        periods = np.where(wavelengths > old / low, periods * factor, periods)
        medium = (wavelengths > old / high) & (wavelengths < old / low)
        smooth = (old / wavelengths - low) / (high - low)
        smoothed = periods / ((1 - smooth) / factor + smooth)
        return (1.0 / np.where(medium, smoothed, periods)).astype(np.float32)
    raise SLMError(f"rope scaling {kind!r} is not supported by the numpy backend")


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x: [..., D] float32; weight: [D]."""
    scale = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps))
    return (x * scale) * weight


def apply_rope(x: np.ndarray, inv_freq: np.ndarray, offset: int) -> np.ndarray:
    """Rotate halves (non-traditional RoPE). x: [B, H, T, Dh]."""
    positions = np.arange(offset, offset + x.shape[2], dtype=np.float32)
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    half = inv_freq.shape[0]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    if 2 * half < x.shape[-1]:
        rotated = np.concatenate([rotated, x[..., 2 * half :]], axis=-1)
    return rotated


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


class KVCache:
    """Per-layer keys and values, ``[B, H_kv, S, Dh]`` each, grown by concatenation."""

    def __init__(self, num_layers: int):
        self.keys = [None] * num_layers
        self.values = [None] * num_layers

    @property
    def offset(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, keys: np.ndarray, values: np.ndarray):
        if self.keys[layer] is not None:
            keys = np.concatenate([self.keys[layer], keys], axis=2)
            values = np.concatenate([self.values[layer], values], axis=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values


class NumpyLlama:
    """The model: ``model(tokens [B, T] int) -> logits [B, T, vocab] float32``.

    config: Hugging Face / mlx-lm config dict (``quantization`` included if any).
    weights: mlx-lm parameter name -> numpy array.
    """

    backend = "numpy"

    def __init__(self, config: dict, weights: dict):
        check_model_type(config)
        self.config = config
        self.weights = weights
        self._float32 = {}  # layer path -> float32 weight: cached dequantizations and set_dense overrides
        self.cache_bytes = FLOAT32_CACHE_BYTES
        self.num_layers = int(config["num_hidden_layers"])
        self.num_heads = int(config["num_attention_heads"])
        self.num_kv_heads = int(config.get("num_key_value_heads") or self.num_heads)
        self.head_dim = int(config.get("head_dim") or config["hidden_size"] // self.num_heads)
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        self.inv_freq = rope_inverse_frequencies(config, self.head_dim)
        self.tied = bool(config.get("tie_word_embeddings", False)) or "lm_head.weight" not in weights
        self.observer = None  # optional callable(name, x [..., K]) seeing every projection's input

    def make_cache(self) -> KVCache:
        return KVCache(self.num_layers)

    def describe(self, name: str) -> tuple[tuple, str]:
        """(shape, numpy dtype kind) of stored tensor ``name``, read without converting it: the weights
        of an MLX model's twin (:class:`~mlx_slm.runtime.LazyNumpyWeights`) convert a whole tensor when read."""
        describe = getattr(self.weights, "describe", None)
        if describe is not None:
            return describe(name)
        value = self.weights[name]
        return tuple(value.shape), value.dtype.kind

    def quantization(self, name: str):
        """(format, bits, group_size) of quantized layer ``name``; None if it is float."""
        if self.describe(f"{name}.weight")[1] not in "ui":
            return None
        bits, group_size, mode = saved_layer_params(self.config.get("quantization") or {}, name)
        return get_format(mode), bits, group_size

    def stored(self, name: str):
        """(format, stored arrays in its order, bits, group_size) of quantized layer ``name``; None if float."""
        quantized = self.quantization(name)
        if quantized is None:
            return None
        weight_format, bits, group_size = quantized
        return weight_format, [self.weights.get(f"{name}.{s}") for s in weight_format.stored], bits, group_size

    def shape(self, name: str) -> tuple[int, int]:
        """(N, K) of layer ``name``'s float weight, without dequantizing or converting it."""
        if name in self._float32:
            return self._float32[name].shape
        shape = self.describe(f"{name}.weight")[0]
        quantized = self.quantization(name)
        if quantized is None:
            return shape
        weight_format, bits, group_size = quantized  # layer_shape reads the codes' shape only
        return tuple(weight_format.layer_shape({"weight": np.broadcast_to(np.uint32(0), shape)}, bits, group_size))

    def cacheable(self, name: str) -> bool:
        """Whether layer ``name``'s float32 weight is cached or fits beside what is."""
        rows, width = self.shape(name)
        return name in self._float32 or rows * width * 4 + sum(w.nbytes for w in self._float32.values()) <= \
            self.cache_bytes

    def dense(self, name: str) -> np.ndarray:
        """Float32 weight ``name`` (a layer path), dequantized if it is quantized; kept for the next
        call while the float32 cache stays within ``cache_bytes``."""
        if name in self._float32:
            return self._float32[name]
        quantized = self.stored(name)
        if quantized is None:
            weight = as_float32(self.weights[f"{name}.weight"])
        else:
            weight_format, arrays, bits, group_size = quantized
            weight = as_float32(weight_format.unpack(*arrays, bits, group_size, dtype=np.float32))
        if self.cacheable(name):
            self._float32[name] = weight
        return weight

    def row_slices(self, name: str, wanted=None):
        """Yield (first row, float32 rows [n, K]) of layer ``name`` in slices of about
        :data:`ROWS_PER_SLICE` rows, whole palette groups each (:func:`~mlx_slm.formats.base.row_share`;
        only the slices holding a row of ``wanted``, if given)."""
        rows = self.shape(name)[0]
        quantized = self.stored(name)
        share = 1 if quantized is None else row_share(rows, quantized[1])
        step = max(1, ROWS_PER_SLICE // share) * share
        for first in range(0, rows, step):
            last = min(first + step, rows)
            if wanted is not None and not np.any((wanted >= first) & (wanted < last)):
                continue
            if quantized is None:
                yield first, as_float32(stored_rows(self.weights, f"{name}.weight", slice(first, last)))
            else:
                weight_format, arrays, bits, group_size = quantized
                cut = [None if a is None else cut_rows(a, rows, first, last) for a in arrays]
                yield first, as_float32(weight_format.unpack(*cut, bits, group_size, dtype=np.float32))

    def set_dense(self, name: str, weight: np.ndarray) -> None:
        """Compute layer ``name`` with float32 ``weight`` [N, K] from now on; stored weights are unchanged."""
        self._float32[name] = as_float32(weight)

    def dense_names(self) -> list[str]:
        """Layers whose float32 weights are currently cached."""
        return list(self._float32)

    def materialize(self) -> None:
        """Build the float32 matrices the cache holds now (dequantizing), so that later calls
        compute (and dequantize only the layers beyond ``cache_bytes``). A layer the cache has no
        room for is not dequantized here: the calls compute it a slice of rows at a time."""
        for name in self.weights:
            path = name.removesuffix(".weight")
            if path != name and len(self.describe(name)[0]) == 2 and self.cacheable(path):
                self.dense(path)

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        if self.observer is not None:
            self.observer(name, x)
        if self.cacheable(name):
            out = x @ self.dense(name).T
        else:
            out = np.concatenate([x @ rows.T for _, rows in self.row_slices(name)], axis=-1)
        bias = self.weights.get(f"{name}.bias")
        return out if bias is None else out + as_float32(bias)

    def norm(self, name: str, x: np.ndarray) -> np.ndarray:
        return rms_norm(x, as_float32(self.weights[f"{name}.weight"]), self.eps)

    def attention(self, layer: int, x: np.ndarray, cache: KVCache | None, offset: int) -> np.ndarray:
        prefix = f"model.layers.{layer}.self_attn"
        batch, length, _ = x.shape

        def heads(name, count):
            out = self.linear(f"{prefix}.{name}", x).reshape(batch, length, count, self.head_dim)
            return out.transpose(0, 2, 1, 3)

        queries = heads("q_proj", self.num_heads)
        keys, values = heads("k_proj", self.num_kv_heads), heads("v_proj", self.num_kv_heads)
        if f"{prefix}.q_norm.weight" in self.weights:
            queries = self.norm(f"{prefix}.q_norm", queries)
            keys = self.norm(f"{prefix}.k_norm", keys)
        queries = apply_rope(queries, self.inv_freq, offset)
        keys = apply_rope(keys, self.inv_freq, offset)
        if cache is not None:
            keys, values = cache.update(layer, keys, values)
        repeats = self.num_heads // self.num_kv_heads
        keys = np.repeat(keys, repeats, axis=1)
        values = np.repeat(values, repeats, axis=1)
        scores = (queries @ keys.transpose(0, 1, 3, 2)) * np.float32(self.head_dim**-0.5)
        total = keys.shape[2]
        future = np.arange(total)[None, :] > (np.arange(length)[:, None] + offset)
        scores = np.where(future, np.float32(-np.inf), scores)
        out = softmax(scores) @ values
        out = out.transpose(0, 2, 1, 3).reshape(batch, length, -1)
        return self.linear(f"{prefix}.o_proj", out)

    def mlp(self, layer: int, x: np.ndarray) -> np.ndarray:
        prefix = f"model.layers.{layer}.mlp"
        gate = self.linear(f"{prefix}.gate_proj", x)
        up = self.linear(f"{prefix}.up_proj", x)
        return self.linear(f"{prefix}.down_proj", gate / (1.0 + np.exp(-gate)) * up)

    def embed(self, tokens) -> np.ndarray:
        """tokens [B, T] int -> hidden states [B, T, D] float32. A table that is not cached is
        gathered row by row (float) or slice by slice (quantized, beyond the cache), without a
        float32 copy of the whole table."""
        name, tokens = "model.embed_tokens", np.asarray(tokens)
        if name in self._float32:
            return self._float32[name][tokens]
        if self.quantization(name) is None:
            return as_float32(stored_rows(self.weights, f"{name}.weight", tokens))
        if self.cacheable(name):
            return self.dense(name)[tokens]
        out = np.empty((*tokens.shape, self.shape(name)[1]), np.float32)
        for first, rows in self.row_slices(name, wanted=tokens):
            inside = (tokens >= first) & (tokens < first + len(rows))
            out[inside] = rows[tokens[inside] - first]
        return out

    def block(self, layer: int, h: np.ndarray, cache: KVCache | None = None, offset: int = 0) -> np.ndarray:
        """Decoder layer ``layer``: hidden states [B, T, D] -> [B, T, D]."""
        prefix = f"model.layers.{layer}"
        h = h + self.attention(layer, self.norm(f"{prefix}.input_layernorm", h), cache, offset)
        return h + self.mlp(layer, self.norm(f"{prefix}.post_attention_layernorm", h))

    @property
    def head_name(self) -> str:
        """The layer that maps hidden states to logits (the embedding when tied)."""
        return "model.embed_tokens" if self.tied else "lm_head"

    def head_input(self, h: np.ndarray) -> np.ndarray:
        """What the head reads, the final norm of the last block's output: [B, T, D] -> [B, T, D]."""
        return self.norm("model.norm", h)

    def head(self, h: np.ndarray) -> np.ndarray:
        """Final norm and output projection: [B, T, D] -> logits [B, T, vocab]."""
        return self.linear(self.head_name, self.head_input(h))

    def __call__(self, tokens, cache: KVCache | None = None) -> np.ndarray:
        h = self.embed(tokens)
        offset = cache.offset if cache is not None else 0
        for layer in range(self.num_layers):
            h = self.block(layer, h, cache, offset)
        return self.head(h)

    def parameters_numpy(self) -> dict:
        """Parameter name -> array, as saved."""
        return dict(self.weights)

    def drop_cache(self, names=None) -> None:
        """Forget dequantized float32 copies (all, or of the layers ``names``) after the weights change."""
        if names is None:
            self._float32.clear()
        for name in names or ():
            self._float32.pop(name, None)
