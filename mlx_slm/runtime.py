"""Run MLX models fast on a CPU: float32 weights, quantized layers dequantized.

On a CPU, MLX's float16 matmul and ``quantized_matmul`` are scalar code
(0.05-4 GFLOP/s) while a float32 GEMM on OpenBLAS reaches 50-180 GFLOP/s.
:func:`fast_cpu` swaps, for the duration of a ``with`` block, every quantized
layer (affine, lut, ternary) for a float32 dense twin holding exactly the
dequantized weight and casts the other float weights to float32; everything is restored afterwards. On a
GPU it does nothing.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import contextmanager

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten

from .errors import SLMError


def computes_on_cpu() -> bool:
    return mx.default_device() == mx.cpu or not mx.metal.is_available()


def dequantized_float32(layer) -> mx.array:
    """Exact float32 weight of a QuantizedLinear / QuantizedEmbedding."""
    return mx.dequantize(
        layer.weight, layer.scales.astype(mx.float32), layer.biases.astype(mx.float32),
        group_size=layer.group_size, bits=layer.bits, mode=layer.mode,
    )


def dense_twin(layer) -> nn.Module:
    from .layers import EmbeddingMixin, LowBitLinear

    weight = layer.dense_weight() if isinstance(layer, LowBitLinear) else dequantized_float32(layer)
    if isinstance(layer, (nn.QuantizedEmbedding, EmbeddingMixin)):
        twin = nn.Embedding(*weight.shape)
    else:
        twin = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in layer)
        if "bias" in layer:
            twin.bias = layer.bias.astype(mx.float32)
    twin.weight = weight
    return twin


def widened(value: mx.array) -> np.ndarray:
    """numpy copy of an MLX array, bfloat16 widened to float32 (exactly)."""
    return np.array(value.astype(mx.float32) if value.dtype == mx.bfloat16 else value)


class LazyNumpyWeights(MutableMapping):
    """Parameter name -> numpy array of an MLX model, converted when read and not kept
    (bfloat16 widened to float32), so a twin costs no memory until a layer is computed.
    Assigned values are kept and read back instead of the model's."""

    def __init__(self, arrays: dict):
        self.arrays, self.assigned = arrays, {}

    def __getitem__(self, name: str):
        if name in self.assigned:
            return self.assigned[name]
        return widened(self.arrays[name])

    def describe(self, name: str) -> tuple[tuple, str]:
        """(shape, numpy dtype kind) of ``name`` as read, without converting it."""
        if name in self.assigned:
            return tuple(self.assigned[name].shape), self.assigned[name].dtype.kind
        dtype = str(self.arrays[name].dtype).rsplit(".", 1)[-1]
        return tuple(self.arrays[name].shape), "f" if dtype == "bfloat16" else np.dtype(dtype.rstrip("_")).kind

    def take(self, name: str, rows) -> np.ndarray:
        """``self[name][rows]`` converting only those rows (``rows``: a slice, or an integer index array of
        any shape)."""
        if name in self.assigned:
            return self.assigned[name][rows]
        array = self.arrays[name]
        return widened(array[rows] if isinstance(rows, slice) else mx.take(array, mx.array(np.asarray(rows)), axis=0))

    def __setitem__(self, name: str, value) -> None:
        self.assigned[name] = value

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.assigned.pop(name, None)
        self.arrays.pop(name, None)

    def __contains__(self, name) -> bool:
        return name in self.assigned or name in self.arrays

    def __iter__(self):
        yield from self.arrays
        yield from (name for name in self.assigned if name not in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays) + sum(name not in self.arrays for name in self.assigned)


def numpy_twin(model):
    """A NumpyLlama computing with the MLX model's exact weights (bfloat16 widened to float32).
    Weights are converted layer by layer as the engine needs them (:class:`LazyNumpyWeights`)."""
    from .model_access import model_config
    from .models.numpy_llama import NumpyLlama

    return NumpyLlama(model_config(model), LazyNumpyWeights(dict(tree_flatten(model.parameters()))))


def quantized_modules(model) -> list[tuple[str, nn.Module]]:
    """(path, module) of every layer :func:`dense_twin` handles: affine QuantizedLinear /
    QuantizedEmbedding and mlx_slm's lut / ternary layers."""
    from .layers import LowBitLinear

    return [(path, module) for path, module in model.named_modules()
            if (isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
                and getattr(module, "mode", "affine") == "affine") or isinstance(module, LowBitLinear)]


def lowest_bits(model) -> int:
    """The fewest bits per weight any layer of :func:`quantized_modules` stores (a ternary layer counts
    its plan's bits, 2)."""
    layers = quantized_modules(model)
    if not layers:
        raise SLMError("the model has no quantized layers")
    return min(module.bits for _, module in layers)


def widen_floats(model: nn.Module) -> dict:
    """Cast the model's non-float32 floating parameters to float32; return name -> original dtype."""
    narrow = {k: v.dtype for k, v in tree_flatten(model.parameters())
              if mx.issubdtype(v.dtype, mx.floating) and v.dtype != mx.float32}
    model.update(tree_unflatten([(k, v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())
                                 if k in narrow]))
    return narrow


def restore_dtypes(model: nn.Module, dtypes: dict) -> None:
    """Undo :func:`widen_floats` (keeping the current values, cast back)."""
    model.update(tree_unflatten([(k, v.astype(dtypes[k])) for k, v in tree_flatten(model.parameters())
                                 if k in dtypes]))


@contextmanager
def fast_cpu(model: nn.Module, enabled: bool | None = None):
    """Within the block the model computes in float32 with dense weights (CPU only)."""
    if enabled is None:
        enabled = computes_on_cpu()
    if not enabled:
        yield model
        return
    saved = tree_flatten(model.parameters())
    quantized = quantized_modules(model)
    model.update_modules(tree_unflatten([(p, dense_twin(m)) for p, m in quantized]))
    widen_floats(model)
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(quantized))
        model.update(tree_unflatten(saved))
