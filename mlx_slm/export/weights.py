"""A model's matrices as plain numpy, per layer: float, affine codes + scales + biases, or
palettized codes + tables (the ``lut`` and ``ternary`` formats).

This is the one place the exporters read a model (MLX or numpy backend); they
never re-quantize; :class:`ModelWeights` converts one tensor at a time, when it is read.
Names are mlx-lm's (``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..formats import get_format
from ..model_access import access, model_config
from ..qconfig import saved_layer_params


def is_packed(array) -> bool:
    """True for the integer code arrays of quantized layers (MLX or numpy)."""
    return str(array.dtype).rsplit(".", 1)[-1].startswith(("uint", "int"))


def to_numpy(array) -> np.ndarray:
    """numpy copy of an MLX or numpy array; bfloat16 becomes float32 (exactly)."""
    if isinstance(array, np.ndarray):
        return array
    import mlx.core as mx

    if array.dtype == mx.bfloat16:
        array = array.astype(mx.float32)
    return np.array(array)


def take(array, index: np.ndarray):
    """Rows ``index`` of an MLX or numpy array (a copy of those rows only)."""
    if isinstance(array, np.ndarray):
        return array[index]
    import mlx.core as mx

    return array[mx.array(index)]


def model_weights(model) -> dict:
    """Layer path or tensor name -> :class:`AffineWeight`, :class:`PalettizedWeight` or numpy array,
    every one converted now (:class:`ModelWeights` converts each when read)."""
    return dict(ModelWeights(model))


class ModelWeights(Mapping):
    """Layer path or tensor name -> :class:`AffineWeight`, :class:`PalettizedWeight` or numpy array,
    converted when read and not kept, so an exporter holds one tensor's numpy copy at a time.

    Quantized layers appear once under their path (``...q_proj``); every other tensor keeps its full
    name (``...q_proj.weight``, ``model.norm.weight``). :meth:`shape` and :meth:`quantized` answer from
    the stored arrays without converting them.
    """

    def __init__(self, model):
        quantization = model_config(model).get("quantization") or {}
        self.arrays = access(model).arrays()
        self.layers = {}  # key -> (mode, bits, group_size) of a quantized layer, None for a float tensor
        for name in self.arrays:
            path, _, suffix = name.rpartition(".")
            packed = self.arrays.get(f"{path}.weight")
            if packed is None or not is_packed(packed):
                self.layers[name] = None  # float tensors
                continue
            bits, group_size, mode = saved_layer_params(quantization, path)
            if suffix not in get_format(mode).stored:
                self.layers[name] = None  # a quantized layer's own bias
            elif suffix == "weight":
                self.layers[path] = (mode, bits, group_size)

    def __getitem__(self, key: str):
        if self.layers[key] is None:
            return to_numpy(self.arrays[key])
        mode, bits, group_size = self.layers[key]
        stored = {s: to_numpy(a) if a is not None else None for s, a in self.stored(key).items()}
        return get_format(mode).view(stored, bits, group_size)

    def rows(self, key: str, index: np.ndarray):
        """``self[key]`` of the rows ``index`` only (in that order), converting only those: of a stored
        array of N rows its rows ``index``; of one of N / g rows (palettes shared by g rows) the rows
        ``index // g``, so the view gets one palette per row."""
        if self.layers[key] is None:
            return to_numpy(take(self.arrays[key], index))
        mode, bits, group_size = self.layers[key]
        count = self.shape(key)[0]
        stored = {s: None if a is None else to_numpy(take(a, index // (count // a.shape[0])))
                  for s, a in self.stored(key).items()}
        return get_format(mode).view(stored, bits, group_size)

    def __contains__(self, key) -> bool:
        return key in self.layers

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def stored(self, path: str) -> dict:
        """A quantized layer's stored arrays as the model holds them (suffix -> array or None)."""
        mode = self.layers[path][0]
        return {s: self.arrays.get(f"{path}.{s}") for s in get_format(mode).stored}

    def quantized(self, key: str) -> bool:
        return self.layers[key] is not None

    def shape(self, key: str) -> tuple:
        """The shape of ``self[key]`` (a quantized layer's [N, K]), read from the stored arrays."""
        if self.layers[key] is None:
            return tuple(self.arrays[key].shape)
        mode, bits, group_size = self.layers[key]
        return tuple(get_format(mode).layer_shape(self.stored(key), bits, group_size))


def matrix(weights: dict, path: str):
    """The layer ``path``'s matrix: an :class:`AffineWeight`, a :class:`PalettizedWeight` or a float array [N, K]."""
    if path in weights:
        return weights[path]
    return weights[f"{path}.weight"]
