"""The lut (palettized) format: b-bit indices into a 2**b-entry float16 palette.

A weight ``w`` [N, K] keeps, per group of ``group_size`` consecutive OUTPUT rows,
one palette ``lut`` float16 [N/g, 2**bits], and per weight a code packed as in the
affine format (one little-endian bit stream per row): ``weight`` uint32
[N, K*bits/32]. With ``per_row_scale`` a float16 ``scales`` [N, 1] (the row's
max |w|) multiplies the palette value: ``w[n, k] = scales[n, 0] * lut[n // g, code]``.
Palettes come from k-means over each group's weights (divided by the row scale),
weighted per input column by an importance (mean squared activation) when given.
Core ML's ``constexpr_lut_to_dense`` (iOS 18) takes the codes [N, K] and the
palettes reshaped to [N/g, 1, 2**bits, 1]; the row scale becomes a multiply.
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from ..quant.kmeans import kmeans_1d, nearest_codes
from .affine import layer_shape, pack_codes, unpack_codes
from .base import WeightFormat
from .dtypes import as_float32, round_to
from .views import PalettizedWeight, stored_bytes
from .weighting import importance_weights

BITS = (2, 3, 4)
K_MULTIPLE = 32


def check_settings(bits: int, group_size: int) -> None:
    """Raise SLMError unless ``bits``/``group_size`` are valid lut settings."""
    if bits not in BITS:
        raise SLMError(f"lut format supports bits {BITS}, not {bits}")
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise SLMError(f"lut group size (output rows per palette) must be a positive integer, not {group_size!r}")


def misfit(shape: tuple, bits: int, group_size: int) -> str | None:
    """Why a weight of ``shape`` [N, K] cannot be palettized with these settings (None if it can)."""
    rows, width = shape
    if width % K_MULTIPLE:
        return f"input width {width} is not a multiple of {K_MULTIPLE}"
    if rows % group_size:
        return f"{rows} output rows are not divisible by the group size {group_size} (rows per palette)"
    return None


def check(shape: tuple, bits: int, group_size: int) -> None:
    check_settings(bits, group_size)
    reason = misfit(shape, bits, group_size)
    if reason:
        raise SLMError(f"lut format: {reason}")


def row_scales(w32: np.ndarray) -> np.ndarray:
    """float16 [N, 1]: each row's max |w|."""
    return round_to(np.abs(w32).max(axis=1, keepdims=True), np.float16)


def pack(w: np.ndarray, bits: int = 4, group_size: int = 8, importance=None, per_row_scale: bool = True):
    """Palettize ``w`` [N, K] (float16/bfloat16/float32).

    importance: [K] weight per input column (None: unweighted k-means).
    Returns ``(weight uint32 [N, K*bits/32], lut float16 [N/g, 2**bits], scales float16 [N, 1] or None)``.
    The k-means minimizes the (importance-weighted) squared error of ``w`` itself: with a
    row scale s, a row's values w/s count with weight s**2.
    """
    check(w.shape, bits, group_size)
    rows, width = w.shape
    w32 = as_float32(w)
    scales = row_scales(w32) if per_row_scale else None
    divisor = np.ones((rows, 1), np.float32) if scales is None else as_float32(scales)
    divisor = np.where(divisor == 0, np.float32(1), divisor)
    values = (w32 / divisor).reshape(rows // group_size, group_size * width)
    weights = None
    if scales is not None or importance is not None:
        column = importance_weights(importance, width).astype(np.float64)
        weights = (np.square(divisor.astype(np.float64)) * column[None, :]).reshape(values.shape)
    lut = round_to(kmeans_1d(values, 1 << bits, weights), np.float16)
    codes = nearest_codes(values, as_float32(lut)).reshape(rows, width)
    return pack_codes(codes, bits), lut, scales


def unpack(weight: np.ndarray, lut: np.ndarray, scales: np.ndarray | None, bits: int = 4, group_size: int = 8,
           dtype=None) -> np.ndarray:
    """Dense weight [N, K] in ``dtype`` (default float16); exact in float32."""
    codes = unpack_codes(weight, bits)
    palettes = as_float32(lut)[np.arange(codes.shape[0]) // group_size]
    dense = np.take_along_axis(palettes, codes.astype(np.intp), axis=1)
    if scales is not None:
        dense = dense * as_float32(scales)
    return dense.astype(np.float16 if dtype is None else dtype)


def matmul(x: np.ndarray, weight, lut, scales, bits: int = 4, group_size: int = 8) -> np.ndarray:
    """``x @ W.T``: x [..., K] -> [..., N] float32."""
    return as_float32(x) @ unpack(weight, lut, scales, bits, group_size, dtype=np.float32).T


def bits_per_weight(bits: int, group_size: int, shape=None, per_row_scale: bool = True) -> float:
    """Stored bits per weight of an [N, K] layer: codes + float16 palettes (+ float16 row scales)."""
    if shape is None:
        raise SLMError("lut bits_per_weight needs the layer shape [N, K]")
    rows, width = shape
    total = rows * width * bits + (rows // group_size) * (1 << bits) * 16 + (rows * 16 if per_row_scale else 0)
    return total / (rows * width)


def label(bits: int, group_size: int) -> str:
    return f"lut {bits}-bit palettes, one per {group_size} output row{'s' if group_size != 1 else ''}"


def view(stored: dict, bits: int, group_size: int) -> PalettizedWeight:
    """Codes uint8 [N, K]; one palette per group of rows as lut [N / gN, 1, 2**bits]; row scales if stored."""
    lut = stored["lut"]
    return PalettizedWeight(codes=unpack_codes(stored["weight"], bits), lut=lut.reshape(lut.shape[0], 1, -1),
                            row_scales=stored.get("scales"), bits=bits, mode="lut", group_size=group_size,
                            stored_bytes=stored_bytes(stored))


def empty(shape: tuple, bits: int, group_size: int, per_row_scale: bool = True) -> dict:
    """Stored shapes of an [N, K] layer: packed codes uint32 [N, K*bits/32], palettes float16
    [N / group_size, 2**bits], row scales float16 [N, 1] (with ``per_row_scale``)."""
    rows, width = shape
    arrays = {"weight": ((rows, width * bits // 32), np.uint32), "lut": ((rows // group_size, 1 << bits), np.float16)}
    if per_row_scale:
        arrays["scales"] = ((rows, 1), np.float16)
    return arrays


def pack_options(group_size: int, search: bool, per_row_scale) -> dict:
    """Row scales: the request's choice, else on for palettes shared by more than one row (a one-row
    palette absorbs the row's scale)."""
    return {"per_row_scale": group_size > 1 if per_row_scale is None else per_row_scale}


FORMAT = WeightFormat(
    name="lut", check=check_settings, misfit=misfit, pack=pack, unpack=unpack, matmul=matmul,
    bits_per_weight=bits_per_weight, layer_shape=layer_shape, label=label, view=view, empty=empty,
    stored=("weight", "lut", "scales"),
    optional=("scales",), default_bits=4, default_group_size=8, pack_options=pack_options,
    description="palettized: 2/3/4-bit indices into a float16 palette of 2**bits values (k-means) "
                "shared by group_size output rows, optionally times a per-row scale; input width "
                "a multiple of 32",
)
