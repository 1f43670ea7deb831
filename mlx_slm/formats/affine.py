"""The affine format, bit for bit the same as ``mx.quantize(mode="affine")``.

A weight ``w`` of shape ``[N, K]`` is cut into groups of ``group_size`` along K.
Each group keeps one scale and one bias (in the weight's dtype) and b-bit codes
``q`` so that ``w ≈ scale * q + bias``. Codes are packed as one little-endian bit
stream, read as uint32 words: ``packed`` has shape ``[N, K * bits // 32]``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SLMError
from .base import WeightFormat
from .dtypes import as_float32, round_to
from .views import AffineWeight, stored_bytes

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def check_params(shape: tuple, bits: int, group_size: int) -> None:
    """Raise SLMError unless ``bits``/``group_size`` fit a weight of ``shape``."""
    if bits not in BITS:
        raise SLMError(f"affine format supports bits {BITS}, not {bits}")
    if group_size not in GROUP_SIZES:
        raise SLMError(f"affine format supports group sizes {GROUP_SIZES}, not {group_size}")
    if shape[-1] % group_size:
        raise SLMError(
            f"the last dimension {shape[-1]} is not divisible by the group size {group_size}"
        )


def check_settings(bits: int, group_size: int) -> None:
    """Raise SLMError unless ``bits``/``group_size`` are valid affine settings."""
    check_params((group_size,), bits, group_size)


def misfit(shape: tuple, bits: int, group_size: int) -> str | None:
    """Why a weight of ``shape`` cannot be cut into groups of ``group_size`` (None if it can)."""
    if shape[-1] % group_size:
        return f"width {shape[-1]} is not divisible by the group size {group_size}"
    return None


def quantize_codes(w: np.ndarray, bits: int, group_size: int):
    """Choose codes, scales and biases exactly as MLX does.

    w: ``[..., K]`` float array (float16, bfloat16 or float32).
    Returns ``(q uint8 [..., K], scales [..., K/g], biases [..., K/g])``; scales and
    biases carry w's dtype.
    """
    check_params(w.shape, bits, group_size)
    n_bins = np.float32((1 << bits) - 1)
    groups = as_float32(w).reshape(*w.shape[:-1], -1, group_size)
    w_max = groups.max(axis=-1)
    w_min = groups.min(axis=-1)
    min_is_edge = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7))
    scale = np.where(min_is_edge, scale, -scale)
    edge = np.where(min_is_edge, w_min, w_max)
    q0 = np.rint(edge / scale)
    nonzero = q0 != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(nonzero, edge / np.where(nonzero, q0, 1), scale)
    bias = np.where(nonzero, edge, np.float32(0))
    q = np.rint((groups - bias[..., None]) / scale[..., None])
    q = np.clip(q, 0, n_bins).astype(np.uint8).reshape(w.shape)
    return q, round_to(scale, w.dtype), round_to(bias, w.dtype)


ROW_SLICE_CODES = 1 << 22  # codes (un)packed per slice of rows: bounds the temporaries (up to 24 bytes a code)


def by_row_slices(function, array: np.ndarray, codes_per_row: int, width: int, dtype) -> np.ndarray:
    """``function`` applied to slices of the rows of ``array`` [..., W_in] (rows independent) holding at
    most :data:`ROW_SLICE_CODES` codes, into one new ``dtype`` array [..., ``width``]: an embedding of
    262k rows is (un)packed with temporaries of a slice, not of the whole matrix."""
    rows = array.reshape(-1, array.shape[-1])
    out = np.empty((len(rows), width), dtype)
    step = max(1, ROW_SLICE_CODES // max(codes_per_row, 1))
    for start in range(0, len(rows), step):
        out[start : start + step] = function(rows[start : start + step])
    return out.reshape(*array.shape[:-1], width)


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes ``[..., K]`` into uint32 words ``[..., K*bits/32]`` (LSB first)."""
    k = q.shape[-1]
    if (k * bits) % 32:
        raise SLMError(f"{k} codes of {bits} bits do not fill whole 32-bit words")
    unit = 32 // math.gcd(bits, 32)  # codes that fill a whole number of words: the packing repeats

    def pack_rows(rows: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(rows.reshape(-1, unit).T).astype(np.uint32)  # [unit, M]: code j of every unit
        words = np.zeros((unit * bits // 32, codes.shape[1]), np.uint32)
        for j in range(unit):
            word, shift = divmod(j * bits, 32)
            words[word] |= codes[j] << np.uint32(shift)
            if shift + bits > 32:  # the code straddles two words
                words[word + 1] |= codes[j] >> np.uint32(32 - shift)
        return words.T.reshape(len(rows), -1)

    return by_row_slices(pack_rows, q, k, k * bits // 32, "<u4")


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint32 ``[..., W]`` -> uint8 codes ``[..., W*32/bits]``."""
    k = packed.shape[-1] * 32 // bits

    def unpack_rows(rows: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(rows).view(np.uint8)  # little-endian words: codes LSB first byte by byte
        if 8 % bits == 0:  # whole codes in every byte: shift and mask, no bit stream
            per_byte, mask = 8 // bits, np.uint8((1 << bits) - 1)
            codes = np.empty((*data.shape, per_byte), np.uint8)
            for j in range(per_byte):
                np.bitwise_and(data >> np.uint8(j * bits), mask, out=codes[..., j])
            return codes.reshape(len(rows), -1)
        stream = np.unpackbits(data, axis=-1, bitorder="little").reshape(len(rows), -1, bits)
        pad = np.zeros((*stream.shape[:-1], 8 - bits), np.uint8)
        return np.packbits(np.concatenate([stream, pad], axis=-1), axis=-1, bitorder="little")[..., 0]

    return by_row_slices(unpack_rows, packed, k, k, np.uint8)


def pack(w: np.ndarray, bits: int = 4, group_size: int = 64, importance=None, search: bool = False):
    """numpy twin of ``mx.quantize``: returns ``(packed uint32, scales, biases)``. With ``search``: the
    scales, biases and codes of :func:`mlx_slm.quant.imatrix.weighted_quantize` instead, weighted by
    ``importance`` [K] (None: every column alike)."""
    if search:
        from ..quant.imatrix import weighted_quantize  # quant/ builds on formats/: imported when used

        q, scales, biases = weighted_quantize(w, importance, bits, group_size)
    else:
        q, scales, biases = quantize_codes(w, bits, group_size)
    return pack_codes(q, bits), scales, biases


def pack_options(group_size: int, search: bool, per_row_scale) -> dict:
    return {"search": search}


def fake(weight, bits: int, group_size: int):
    """``mx.quantize`` (float16 scales and biases) then ``mx.dequantize`` of the MLX array ``weight``."""
    import mlx.core as mx  # formats/ imports without MLX; only training calls this

    packed, scales, biases = mx.quantize(weight.astype(mx.float16), group_size=group_size, bits=bits)
    return mx.dequantize(packed, scales, biases, group_size=group_size, bits=bits).astype(weight.dtype)


def unpack(packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int = 4,
           group_size: int = 64, dtype=None) -> np.ndarray:
    """numpy twin of ``mx.dequantize``: ``scale * q + bias`` per group, in ``dtype``.

    dtype defaults to the scales' dtype, as in MLX; pass ``np.float32`` for an
    exact float32 weight.
    """
    return dequantize_codes(unpack_codes(packed, bits), scales, biases, group_size, dtype)


def dequantize_codes(q: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int,
                     dtype=None) -> np.ndarray:
    """Unpacked codes ``[..., K]`` with scales/biases ``[..., K/g]`` -> ``scale * q + bias`` in
    ``dtype`` (default: the scales' dtype)."""
    dtype = scales.dtype if dtype is None else np.dtype(dtype)
    groups = q.reshape(*q.shape[:-1], -1, group_size).astype(dtype)
    w = scales.astype(dtype)[..., None] * groups + biases.astype(dtype)[..., None]
    return w.reshape(q.shape)


def matmul(x: np.ndarray, packed: np.ndarray, scales: np.ndarray, biases: np.ndarray,
           bits: int = 4, group_size: int = 64) -> np.ndarray:
    """``x @ W.T`` for an affine-packed ``W`` of shape [N, K]; x: [..., K] -> [..., N] float32."""
    w = unpack(packed, scales, biases, bits, group_size, dtype=np.float32)
    return as_float32(x) @ w.T


def bits_per_weight(bits: int, group_size: int, shape=None, scale_bits: int = 16) -> float:
    """Storage cost of one weight including its share of scale and bias."""
    return bits + 2 * scale_bits / group_size


def layer_shape(stored: dict, bits: int, group_size: int) -> tuple[int, int]:
    """(N, K) of the float weight behind packed ``stored["weight"]`` [N, K*bits/32]."""
    rows, words = stored["weight"].shape
    return rows, words * 32 // bits


def label(bits: int, group_size: int) -> str:
    return f"affine {bits}-bit, group {group_size}"


def view(stored: dict, bits: int, group_size: int) -> AffineWeight:
    """Codes unpacked to uint8 [N, K]; scales and biases as exact float32 copies."""
    return AffineWeight(codes=unpack_codes(stored["weight"], bits), scales=stored["scales"].astype(np.float32),
                        biases=stored["biases"].astype(np.float32), bits=bits, group_size=group_size,
                        stored_bytes=stored_bytes(stored))


FORMAT = WeightFormat(
    name="affine", check=check_settings, misfit=misfit, pack=pack, unpack=unpack, matmul=matmul,
    bits_per_weight=bits_per_weight, layer_shape=layer_shape, label=label, view=view,
    stored=("weight", "scales", "biases"),
    default_bits=4, default_group_size=64, pack_options=pack_options, fake=fake,
    description="MLX's own format: per group of group_size input columns a scale and a bias "
                "(bits 2-8 but 7; group 32/64/128); runs on stock mlx_lm",
)
