"""MLX modules for the lut and ternary formats (mlx_slm.kernels.ops computes with them).

Each module holds its format's stored arrays as frozen parameters named exactly as
saved (``weight``, ``lut``, ``scales``, and the float ``bias`` of a Linear that had
one), so ``save`` writes them and ``load`` fills them. The embedding variants
dequantize only the looked-up rows and serve as a tied output head (``as_linear``).
A ``ternary_b3`` layer keeps its base-3 bytes as ``weight`` and computes with a
2-bit repacking made on first use (the kernels read the 2-bit layout).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx import nn

from .formats import get_format
from .formats.affine import pack_codes
from .formats.dtypes import mlx_array
from .formats.ternary import unpack_base3


class LowBitLinear(nn.Module):
    """Base class: ``format_name``'s stored arrays, frozen; ``__call__(x [..., K]) -> [..., N]``."""

    format_name = ""

    def __init__(self, arrays: dict, bits: int, group_size: int, dtype=mx.float16):
        super().__init__()
        for name, array in arrays.items():
            setattr(self, name, array)
        self.bits, self.group_size, self.out_dtype = bits, group_size, dtype
        self.freeze()

    def matmul(self, x: mx.array) -> mx.array:
        raise NotImplementedError

    def __call__(self, x: mx.array) -> mx.array:
        out = self.matmul(x)
        return out + self["bias"] if "bias" in self else out

    def dense_weight(self) -> mx.array:
        """The exact float32 weight [N, K] (numpy twin of the format)."""
        weight_format = get_format(self.format_name)
        stored = [np.array(self[s]) if s in self else None for s in weight_format.stored]
        return mx.array(weight_format.unpack(*stored, self.bits, self.group_size, dtype=np.float32))


class LutLinear(LowBitLinear):
    """Palettized linear layer: weight uint32 [N, K*bits/32], lut float16 [N/g, 2**bits],
    optional scales float16 [N, 1]."""

    format_name = "lut"

    def matmul(self, x):
        from mlx_slm.kernels.ops import lut_matmul

        return lut_matmul(x, self["weight"], self["lut"], self.get("scales"), self.bits, self.group_size)

    def rows(self, ids: mx.array) -> mx.array:
        """Dense rows ``ids`` [T] -> [T, K] in ``out_dtype``."""
        from mlx_slm.kernels.ops import dequantize_lut

        scales = self["scales"][ids] if "scales" in self else None
        return dequantize_lut(self["weight"][ids], self["lut"][ids // self.group_size], scales, self.bits, 1,
                              self.out_dtype)


class TernaryLinear(LowBitLinear):
    """Ternary linear layer: weight uint32 [N, K/16] (``ternary``) or uint8 [N, ceil(K/5)]
    (``ternary_b3``), scales float16 [N, K/gs or 1]."""

    format_name = "ternary"

    def codes(self) -> mx.array:
        """The 2-bit layout the kernels read."""
        return self["weight"]

    def matmul(self, x):
        from mlx_slm.kernels.ops import ternary_matmul

        return ternary_matmul(x, self.codes(), self["scales"], self.group_size)

    def rows(self, ids: mx.array) -> mx.array:
        from mlx_slm.kernels.ops import dequantize_ternary

        return dequantize_ternary(self.codes()[ids], self["scales"][ids], self.group_size, self.out_dtype)


class TernaryB3Linear(TernaryLinear):
    """``ternary_b3``: base-3 bytes stored, repacked once to 2-bit codes in memory."""

    format_name = "ternary_b3"

    def codes(self) -> mx.array:
        weight = self["weight"]
        if getattr(self, "_repacked", (None,))[0] is not weight:
            width = get_format(self.format_name).layer_shape({"weight": weight})[1]
            self._repacked = (weight, mx.array(pack_codes(unpack_base3(np.array(weight), width), 2)))
        return self._repacked[1]


class EmbeddingMixin:
    """``__call__(ids [...]) -> [..., K]`` dequantizes the looked-up rows; ``as_linear`` is the head."""

    def __call__(self, ids: mx.array) -> mx.array:
        flat = ids.reshape(-1)
        return self.rows(flat).reshape(*ids.shape, -1)

    def as_linear(self, x: mx.array) -> mx.array:
        return self.matmul(x)


class LutEmbedding(EmbeddingMixin, LutLinear):
    pass


class TernaryEmbedding(EmbeddingMixin, TernaryLinear):
    pass


class TernaryB3Embedding(EmbeddingMixin, TernaryB3Linear):
    pass


CLASSES = {
    ("lut", False): LutLinear, ("lut", True): LutEmbedding,
    ("ternary", False): TernaryLinear, ("ternary", True): TernaryEmbedding,
    ("ternary_b3", False): TernaryB3Linear, ("ternary_b3", True): TernaryB3Embedding,
}
LOWBIT = tuple(set(CLASSES.values()))


def lowbit_module(format_name: str, settings: dict, arrays: dict, original: nn.Module) -> LowBitLinear:
    """The module replacing ``original`` (nn.Linear / nn.Embedding) with numpy ``arrays`` {suffix: array}."""
    embedding = isinstance(original, nn.Embedding)
    params = {name: mlx_array(array) for name, array in arrays.items()}
    if "bias" in original:
        params["bias"] = original["bias"]
    return CLASSES[format_name, embedding](params, settings["bits"], settings["group_size"], original.weight.dtype)


def empty_arrays(format_name: str, shape: tuple, bits: int, group_size: int, with_scales: bool) -> dict:
    """Zero placeholders of the stored arrays of an [N, K] layer (the format row's shapes), to be
    filled by ``load_weights``."""
    shapes = get_format(format_name).empty(shape, bits, group_size, per_row_scale=with_scales)
    return {suffix: mx.zeros(size, getattr(mx, np.dtype(dtype).name)) for suffix, (size, dtype) in shapes.items()}


def empty_module(format_name: str, bits: int, group_size: int, original: nn.Module, with_scales: bool,
                 dtype) -> LowBitLinear:
    """A module of the right shapes for ``original``, before its saved arrays are loaded."""
    embedding = isinstance(original, nn.Embedding)
    arrays = empty_arrays(format_name, original.weight.shape, bits, group_size, with_scales)
    if "bias" in original:
        arrays["bias"] = original["bias"]
    return CLASSES[format_name, embedding](arrays, bits, group_size, dtype)


def float_dtype(weights: dict):
    """The dtype of a saved model's float ``*.weight`` tensors (norms, float matrices); float16 if none."""
    dtypes = [a.dtype for name, a in weights.items()
              if name.endswith(".weight") and mx.issubdtype(a.dtype, mx.floating)]
    return max(set(dtypes), key=dtypes.count) if dtypes else mx.float16


def prepare_quantized(model: nn.Module, quantization: dict, weights: dict) -> None:
    """Before ``load_weights`` of saved ``weights``: nn.quantize the MLX-native (affine) layers and
    swap lut/ternary modules in, each as its config entry says."""
    from mlx.utils import tree_unflatten

    from .qconfig import saved_layer_params

    dtype = float_dtype(weights)
    native, swapped = {}, []
    for path, module in model.named_modules():
        weight = weights.get(f"{path}.weight")
        if not hasattr(module, "to_quantized") or weight is None or mx.issubdtype(weight.dtype, mx.floating):
            continue
        bits, group_size, mode = saved_layer_params(quantization, path)
        if (mode, False) in CLASSES:
            swapped.append((path, empty_module(mode, bits, group_size, module, f"{path}.scales" in weights, dtype)))
        else:
            native[path] = {"bits": bits, "group_size": group_size, "mode": mode}
    nn.quantize(model, class_predicate=lambda path, module: native.get(path, False))
    model.update_modules(tree_unflatten(swapped))
