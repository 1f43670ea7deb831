"""A model's matrices as plain numpy, per layer: float, or affine codes + scales + biases.

This is the one place the exporters read a model (MLX or numpy backend); they
never re-quantize. Names are mlx-lm's (``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SLMError
from ..formats import affine, get_format
from ..loading import model_config
from ..qconfig import saved_layer_params
from ..stats import named_arrays

AFFINE_SUFFIXES = get_format("affine").stored


@dataclass
class AffineWeight:
    """``w = scales * codes + biases`` per group of ``group_size`` along K.

    codes: uint8 [N, K]; scales, biases: float32 [N, K / group_size] (exact copies).
    """

    codes: np.ndarray
    scales: np.ndarray
    biases: np.ndarray
    bits: int
    group_size: int
    stored_bytes: int  # what the model itself stores: packed codes + scales + biases

    @property
    def shape(self) -> tuple:
        return self.codes.shape


def to_numpy(array) -> np.ndarray:
    """numpy copy of an MLX or numpy array; bfloat16 becomes float32 (exactly)."""
    if isinstance(array, np.ndarray):
        return array
    import mlx.core as mx

    if array.dtype == mx.bfloat16:
        array = array.astype(mx.float32)
    return np.array(array)


def model_weights(model) -> dict:
    """Layer path or tensor name -> :class:`AffineWeight` or numpy array.

    Quantized layers appear once under their path (``...q_proj``); every other
    tensor keeps its full name (``...q_proj.weight``, ``model.norm.weight``).
    """
    config = model_config(model)
    quantization = config.get("quantization") or {}
    arrays = named_arrays(model)
    weights = {}
    for name, array in arrays.items():
        path, _, suffix = name.rpartition(".")
        if f"{path}.scales" not in arrays or suffix not in AFFINE_SUFFIXES:
            weights[name] = to_numpy(array)  # float tensors, and a quantized layer's own bias
        elif suffix == "weight":
            bits, group_size, mode = saved_layer_params(quantization, path)
            if mode != "affine":
                raise SLMError(f"layer {path} uses the {mode!r} format, which has no Core ML mapping yet "
                               "(supported: affine)")
            packed = to_numpy(array)
            scales, biases = to_numpy(arrays[f"{path}.scales"]), to_numpy(arrays[f"{path}.biases"])
            weights[path] = AffineWeight(
                codes=affine.unpack_codes(packed, bits), scales=scales.astype(np.float32),
                biases=biases.astype(np.float32), bits=bits, group_size=group_size,
                stored_bytes=packed.nbytes + scales.nbytes + biases.nbytes)
    return weights


def matrix(weights: dict, path: str):
    """The layer ``path``'s matrix: an :class:`AffineWeight` or a float array [N, K]."""
    if path in weights:
        return weights[path]
    return weights[f"{path}.weight"]
