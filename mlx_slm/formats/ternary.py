"""The ternary format (BitNet b1.58): weights in {-1, 0, +1} times a float16 scale.

Per group of ``group_size`` input columns (0: the whole row) the scale is the
group's mean |w| (BitNet's absmean) and ``t = clip(round(w / s), -1, 1)``; the
codes ``c = t + 1`` are stored

- ``ternary``: 2 bits each, one little-endian bit stream per row: ``weight``
  uint32 [N, K/16] (the layout the Metal kernels read);
- ``ternary_b3``: five per byte, ``byte = sum_i c_i * 3**i`` (padding trits are
  code 1 = zero): ``weight`` uint8 [N, ceil(K/5)], 1.6 bits per weight.

``scales`` float16 [N, K/group_size] (or [N, 1]): ``w[n, k] = scales[n, k // gs] * (c - 1)``.
K must be a multiple of 16, which also makes K recoverable from ceil(K/5).
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from .affine import pack_codes, unpack_codes
from .base import WeightFormat
from .dtypes import as_float32, round_to
from .views import PalettizedWeight, stored_bytes
from .weighting import importance_weights

K_MULTIPLE = 16
TRITS_PER_BYTE = 5
POWERS = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint16)


def check_settings(bits: int, group_size: int) -> None:
    """Raise SLMError unless the settings are valid: bits 2, group 0 (per row) or a multiple of 32."""
    if bits != 2:
        raise SLMError(f"the ternary formats store 2-bit codes: bits must be 2, not {bits}")
    if not isinstance(group_size, (int, np.integer)) or group_size < 0 or group_size % 32:
        raise SLMError(f"ternary group size must be 0 (one scale per row) or a multiple of 32, not {group_size!r}")


def misfit(shape: tuple, bits: int, group_size: int) -> str | None:
    """Why a weight of ``shape`` [N, K] cannot take these settings (None if it can)."""
    width = shape[-1]
    if group_size and width % group_size:
        return f"width {width} is not divisible by the group size {group_size}"
    if width % K_MULTIPLE:
        return f"input width {width} is not a multiple of {K_MULTIPLE}"
    return None


def check(shape: tuple, bits: int, group_size: int) -> None:
    check_settings(bits, group_size)
    reason = misfit(shape, bits, group_size)
    if reason:
        raise SLMError(f"ternary format: {reason}")


def quantize_values(w: np.ndarray, group_size: int = 0, importance=None):
    """Absmean ternarization of ``w`` [N, K].

    importance: [K] per input column; if given, each group's scale is refitted by
    weighted least squares for the chosen trits (never worse on that error).
    Returns ``(codes uint8 [N, K] in {0, 1, 2}, scales float16 [N, K/gs or 1])``.
    """
    check(w.shape, 2, group_size)
    rows, width = w.shape
    group = group_size or width
    groups = as_float32(w).reshape(rows, width // group, group)
    scales = round_to(np.abs(groups).mean(axis=-1), np.float16)
    s32 = as_float32(scales)
    trits = np.clip(np.rint(groups / np.where(s32 == 0, 1, s32)[..., None]), -1, 1)
    if importance is not None:
        d = importance_weights(importance, width).reshape(1, -1, group).astype(np.float64)
        norm = (d * np.square(trits)).sum(-1)
        fitted = (d * trits * groups).sum(-1) / np.where(norm > 0, norm, 1)
        scales = np.where(norm > 0, round_to(fitted, np.float16), scales)
    return (trits + 1).astype(np.uint8).reshape(rows, width), scales


def pack_base3(codes: np.ndarray) -> np.ndarray:
    """Codes uint8 [N, K] in {0, 1, 2} -> uint8 [N, ceil(K/5)], five trits per byte, little-endian."""
    rows, width = codes.shape
    pad = -width % TRITS_PER_BYTE
    padded = np.concatenate([codes, np.ones((rows, pad), np.uint8)], axis=1)
    trits = padded.reshape(rows, -1, TRITS_PER_BYTE).astype(np.uint16)
    return (trits * POWERS).sum(-1).astype(np.uint8)


def unpack_base3(packed: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`pack_base3`: uint8 [N, W] -> codes uint8 [N, width]."""
    digits = (packed.astype(np.uint16)[..., None] // POWERS) % 3
    return digits.reshape(packed.shape[0], -1)[:, :width].astype(np.uint8)


def base3_width(packed_width: int) -> int:
    """K from ceil(K/5) for K a multiple of 16 (the only one in [5W-4, 5W])."""
    width = TRITS_PER_BYTE * packed_width // K_MULTIPLE * K_MULTIPLE
    if width < TRITS_PER_BYTE * packed_width - 4:
        raise SLMError(f"{packed_width} base-3 bytes per row fit no input width that is a multiple of {K_MULTIPLE}")
    return width


def dequantize_codes(codes: np.ndarray, scales: np.ndarray, group_size: int, dtype=None) -> np.ndarray:
    """codes [N, K], scales [N, G] -> ``scale * (code - 1)`` [N, K] in dtype (default float16)."""
    rows, width = codes.shape
    group = group_size or width
    trits = codes.astype(np.float32).reshape(rows, width // group, group) - 1
    dense = (trits * as_float32(scales)[..., None]).reshape(rows, width)
    return dense.astype(np.float16 if dtype is None else dtype)


def sign_tables(scales: np.ndarray) -> np.ndarray:
    """float16 [N, G] scales -> float16 [N, G, 4] tables ``[-s, 0, s, 0]`` (code c = trit + 1)."""
    levels = np.array([-1, 0, 1, 0], np.float32)
    return (scales.astype(np.float32)[..., None] * levels).astype(np.float16)


def make_format(name: str, base3: bool) -> WeightFormat:
    """The registry entry of ``ternary`` (2-bit stream) or ``ternary_b3`` (base-3 bytes)."""

    def pack(w, bits=2, group_size=0, importance=None):
        """w [N, K] -> (weight, scales float16 [N, K/gs or 1])."""
        check_settings(bits, group_size)
        codes, scales = quantize_values(w, group_size, importance)
        return (pack_base3(codes) if base3 else pack_codes(codes, 2)), scales

    def layer_shape(stored, bits=2, group_size=0):
        rows, packed_width = stored["weight"].shape
        return rows, base3_width(packed_width) if base3 else packed_width * 16

    def unpack(weight, scales, bits=2, group_size=0, dtype=None):
        """Dense [N, K] in dtype (default float16); exact in float32."""
        codes = unpack_base3(weight, layer_shape({"weight": weight})[1]) if base3 else unpack_codes(weight, 2)
        return dequantize_codes(codes, scales, group_size, dtype)

    def matmul(x, weight, scales, bits=2, group_size=0):
        """``x @ W.T``: x [..., K] -> [..., N] float32."""
        return as_float32(x) @ unpack(weight, scales, bits, group_size, np.float32).T

    def bits_per_weight(bits, group_size, shape=None):
        """Stored bits per weight of an [N, K] layer: codes + float16 scales."""
        if shape is None:
            raise SLMError(f"{name} bits_per_weight needs the layer shape [N, K]")
        width = shape[-1]
        code_bits = 8 * -(-width // TRITS_PER_BYTE) if base3 else 2 * width
        return (code_bits + 16 * (width // group_size if group_size else 1)) / width

    def label(bits, group_size):
        return f"{name} (b1.58, {'base-3 bytes' if base3 else '2-bit codes'}), scale per " \
               f"{f'group {group_size}' if group_size else 'row'}"

    def view(stored, bits, group_size):
        """Trits + 1 as 2-bit codes uint8 [N, K]; per row and scale group a table ``[-s, 0, s, 0]``."""
        width = layer_shape(stored)[1]
        codes = unpack_base3(stored["weight"], width) if base3 else unpack_codes(stored["weight"], 2)
        return PalettizedWeight(codes=codes, lut=sign_tables(stored["scales"]), row_scales=None, bits=2, mode=name,
                                group_size=group_size, stored_bytes=stored_bytes(stored))

    def empty(shape, bits, group_size, **options):
        """Stored shapes of an [N, K] layer: codes (uint8 [N, ceil(K/5)] or uint32 [N, K/16]) and
        float16 scales [N, K / group_size] ([N, 1] for group size 0)."""
        rows, width = shape
        weight = ((rows, -(-width // TRITS_PER_BYTE)), np.uint8) if base3 else ((rows, width // 16), np.uint32)
        return {"weight": weight, "scales": ((rows, width // group_size if group_size else 1), np.float16)}

    def fake(weight, bits, group_size):
        """BitNet b1.58's absmean of the MLX array ``weight``: scale = mean |w| per group in float16,
        weights rounded to {-1, 0, +1} times it."""
        import mlx.core as mx  # formats/ imports without MLX; only training calls this

        rows, width = weight.shape
        group = group_size or width
        groups = weight.reshape(rows, width // group, group)
        scale = mx.abs(groups).mean(axis=-1, keepdims=True).astype(mx.float16).astype(weight.dtype)
        safe = mx.where(scale > 0, scale, 1)
        return (mx.clip(mx.round(groups / safe), -1, 1) * scale).reshape(rows, width)

    storage = "five trits per byte, 1.6 bits" if base3 else "2-bit codes"
    return WeightFormat(
        name=name, check=check_settings, misfit=misfit, pack=pack, unpack=unpack, matmul=matmul,
        bits_per_weight=bits_per_weight, layer_shape=layer_shape, label=label, view=view, empty=empty, fake=fake,
        stored=("weight", "scales"),
        default_bits=2, default_group_size=0,
        description=f"BitNet b1.58: weights in {{-1, 0, +1}} x a float16 absmean scale per group of "
                    f"group_size input columns (0: one per row), {storage}",
    )


FORMAT = make_format("ternary", base3=False)
FORMAT_B3 = make_format("ternary_b3", base3=True)
