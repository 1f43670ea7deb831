"""A model's matrices as plain numpy, per layer: float, affine codes + scales + biases, or
palettized codes + tables (the ``lut`` and ``ternary`` formats).

This is the one place the exporters read a model (MLX or numpy backend); they
never re-quantize. Names are mlx-lm's (``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SLMError
from ..formats import affine, get_format, ternary
from ..loading import model_config
from ..qconfig import saved_layer_params
from ..stats import named_arrays


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


@dataclass
class PalettizedWeight:
    """``w[n, k] = row_scales[n] * lut[n // gN, k // gK, codes[n, k]]`` (row_scales optional).

    codes: uint8 [N, K]; lut: float16 [N / gN, K / gK, 2**bits]; row_scales: float16 [N, 1] or None.
    ``lut`` layers have one table per group of gN rows (gK = K); ``ternary`` layers one per row and
    scale group, holding ``[-s, 0, s, 0]`` (2-bit codes c = t + 1).
    """

    codes: np.ndarray
    lut: np.ndarray
    row_scales: np.ndarray | None
    bits: int
    mode: str
    group_size: int
    stored_bytes: int

    @property
    def shape(self) -> tuple:
        return self.codes.shape


def ternary_tables(scales: np.ndarray) -> np.ndarray:
    """float16 [N, G] scales -> float16 [N, G, 4] tables ``[-s, 0, s, 0]``."""
    levels = np.array([-1, 0, 1, 0], np.float32)
    return (scales.astype(np.float32)[..., None] * levels).astype(np.float16)


def compressed_weight(mode: str, stored: dict, bits: int, group_size: int):
    """The stored arrays of one quantized layer -> AffineWeight or PalettizedWeight."""
    nbytes = sum(a.nbytes for a in stored.values() if a is not None)
    if mode == "affine":
        return AffineWeight(codes=affine.unpack_codes(stored["weight"], bits),
                            scales=stored["scales"].astype(np.float32), biases=stored["biases"].astype(np.float32),
                            bits=bits, group_size=group_size, stored_bytes=nbytes)
    if mode == "lut":
        lut = stored["lut"]
        return PalettizedWeight(codes=affine.unpack_codes(stored["weight"], bits), lut=lut.reshape(lut.shape[0], 1, -1),
                                row_scales=stored.get("scales"), bits=bits, mode=mode, group_size=group_size,
                                stored_bytes=nbytes)
    if mode in ("ternary", "ternary_b3"):
        packed = stored["weight"]
        width = get_format(mode).layer_shape(stored, bits, group_size)[1]
        codes = ternary.unpack_base3(packed, width) if mode == "ternary_b3" else affine.unpack_codes(packed, 2)
        return PalettizedWeight(codes=codes, lut=ternary_tables(stored["scales"]), row_scales=None, bits=2,
                                mode=mode, group_size=group_size, stored_bytes=nbytes)
    raise SLMError(f"the {mode!r} format has no Core ML mapping (supported: affine, lut, ternary, ternary_b3)")


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
    arrays = named_arrays(model)
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
            weights[path] = compressed_weight(mode, stored, bits, group_size)
    return weights


def matrix(weights: dict, path: str):
    """The layer ``path``'s matrix: an :class:`AffineWeight`, a :class:`PalettizedWeight` or a float array [N, K]."""
    if path in weights:
        return weights[path]
    return weights[f"{path}.weight"]
