"""A model's matrices as plain numpy, per layer: float, affine codes + scales + biases, or
palettized codes + tables (the ``lut`` and ``ternary`` formats).

This is the one place the exporters read a model (MLX or numpy backend); they
never re-quantize. Names are mlx-lm's (``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

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


def model_weights(model) -> dict:
    """Layer path or tensor name -> :class:`AffineWeight`, :class:`PalettizedWeight` or numpy array.

    Quantized layers appear once under their path (``...q_proj``); every other
    tensor keeps its full name (``...q_proj.weight``, ``model.norm.weight``).
    """
    config = model_config(model)
    quantization = config.get("quantization") or {}
    arrays = access(model).arrays()
    weights = {}
    for name, array in arrays.items():
        path, _, suffix = name.rpartition(".")
        packed = arrays.get(f"{path}.weight")
        if packed is None or not is_packed(packed):
            weights[name] = to_numpy(array)  # float tensors
            continue
        bits, group_size, mode = saved_layer_params(quantization, path)
        stored_names = get_format(mode).stored
        if suffix not in stored_names:
            weights[name] = to_numpy(array)  # a quantized layer's own bias
        elif suffix == "weight":
            stored = {s: to_numpy(arrays[f"{path}.{s}"]) if f"{path}.{s}" in arrays else None for s in stored_names}
            weights[path] = get_format(mode).view(stored, bits, group_size)
    return weights


def matrix(weights: dict, path: str):
    """The layer ``path``'s matrix: an :class:`AffineWeight`, a :class:`PalettizedWeight` or a float array [N, K]."""
    if path in weights:
        return weights[path]
    return weights[f"{path}.weight"]
