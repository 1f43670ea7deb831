"""One model tensor -> the bytes and GGUF type of one GGUF tensor, and how exactly it was kept.

Quantized layers keep their values where a GGUF block holds them exactly. MLX's affine layer is
``w = scale * q + bias`` per group of ``group_size`` input columns, with float16 scales and biases;
ggml's Q4_1 block is ``w = d * q + m`` over 32 columns with float16 ``d`` and ``m`` and 4-bit ``q``
(Q5_1: 5-bit). So an affine layer of 2, 3 or 4 bits is Q4_1 and one of 5 bits is Q5_1, bit for bit,
at any group size (a group of 64 or 128 is 2 or 4 blocks repeating its scale and bias) as long as its
scales and biases are float16 values. The blocks are packed here rather than by the ``gguf``
package's quantizer, which would choose its own ``d``, ``m`` and codes from the dequantized weight.

Block layouts (ggml's, little-endian; checked against ``gguf.quants`` dequantization by the tests):

- Q4_1, 20 bytes per 32 weights: ``d`` fp16, ``m`` fp16, ``qs[16]`` with ``qs[j] = q[j] | q[j+16] << 4``.
- Q5_1, 24 bytes: ``d``, ``m``, ``qh`` (uint32, bit j = bit 4 of ``q[j]``), ``qs[16]`` as Q4_1's low nibbles.

Every other quantized layout (6/8-bit affine, scales beyond float16) is requantized from its
dequantized float32 weight to Q8_0 (or a float type), and lut/ternary layers, which no GGUF type
holds yet, are dequantized; their largest absolute error is measured on the written bytes. With a
k-quant preset, float matrices are quantized (:func:`encode_quantized`): to k-quants packed by
:mod:`.kquants`, to the 32-weight blocks a preset falls back to by :mod:`.legacy_quants` (Q8_0 by the
``gguf`` package), and to IQ4_NL (which a per-tensor plan may name) by :mod:`.iq4_nl`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SLMError
from ..formats.dtypes import as_float32
from ..formats.views import AffineWeight, PalettizedWeight
from .iq4_nl import pack_iq4_nl
from .kquant_blocks import KINDS
from .kquants import pack_kquant
from .legacy_quants import LEGACY, half_bytes, high_bits, nibbles, pack_legacy

BLOCK = 32  # weights per Q4_1 / Q5_1 / Q8_0 block
EXACT_TYPES = {2: "Q4_1", 3: "Q4_1", 4: "Q4_1", 5: "Q5_1"}  # affine bits -> the GGUF block that holds them
TYPE_NAMES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}  # the types a user may choose


@dataclass
class Encoded:
    """One GGUF tensor: ``data`` (float32/float16 values, or uint8 block bytes [N, bytes per row]) of GGUF type
    ``kind`` (``"Q4_1"``); ``how``: "exact" (the model's own values), "float" (a float tensor in a float
    type), "quantized" (a float matrix, by a k-quant preset), "requantized" or "dequantized";
    ``error``: largest |written - model| weight."""

    data: np.ndarray
    kind: str
    how: str
    error: float = 0.0


def qk_permute(rows: int, heads: int) -> np.ndarray:
    """Row order llama.cpp stores a llama Q or K projection in (for its RoPE kernel): per head, the
    first half's rows and the second half's interleaved. The inverse of :func:`mlx_slm.io.gguf.unpermute_qk`."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)


def dense(value) -> np.ndarray:
    """The float32 weight [N, K] of a float array or a quantized layer's view (the formulas of
    :mod:`mlx_slm.formats.views`)."""
    if isinstance(value, AffineWeight):
        groups = value.codes.reshape(value.codes.shape[0], -1, value.group_size).astype(np.float32)
        return (value.scales[..., None] * groups + value.biases[..., None]).reshape(value.codes.shape)
    if isinstance(value, PalettizedWeight):
        rows, width = value.codes.shape
        tables = value.lut.astype(np.float32)
        row_group = np.arange(rows)[:, None] // (rows // tables.shape[0])
        column_group = np.arange(width)[None, :] // (width // tables.shape[1])
        weight = tables[row_group, column_group, value.codes]
        return weight if value.row_scales is None else weight * value.row_scales.astype(np.float32)
    return as_float32(value)


def is_half(values: np.ndarray) -> bool:
    """True if every value is a finite float16 number (so an fp16 ``d``/``m`` stores it exactly)."""
    half = values.astype(np.float16)
    return bool(np.all(np.isfinite(half)) and np.array_equal(half.astype(np.float32), values))


def halves(values: np.ndarray, group_size: int) -> np.ndarray:
    """Per-group values [N, K/g] -> per-block little-endian fp16 bytes [N, K/32, 2]."""
    return half_bytes(np.repeat(values, group_size // BLOCK, axis=1))


def pack_q4_1(weight: AffineWeight) -> np.ndarray:
    """An affine layer of at most 4 bits -> Q4_1 blocks, uint8 [N, K/32 * 20]."""
    rows, width = weight.codes.shape
    q = weight.codes.reshape(rows, width // BLOCK, BLOCK)
    blocks = np.concatenate([halves(weight.scales, weight.group_size), halves(weight.biases, weight.group_size),
                             nibbles(q)], axis=-1)
    return blocks.reshape(rows, -1)


def pack_q5_1(weight: AffineWeight) -> np.ndarray:
    """A 5-bit affine layer -> Q5_1 blocks, uint8 [N, K/32 * 24]."""
    rows, width = weight.codes.shape
    q = weight.codes.reshape(rows, width // BLOCK, BLOCK)
    blocks = np.concatenate([halves(weight.scales, weight.group_size), halves(weight.biases, weight.group_size),
                             high_bits(q), nibbles(q)], axis=-1)
    return blocks.reshape(rows, -1)


def exact_kind(weight: AffineWeight) -> str | None:
    """The GGUF type that holds this affine layer bit for bit, or None."""
    kind = EXACT_TYPES.get(weight.bits)
    if kind is None or weight.group_size % BLOCK or not (is_half(weight.scales) and is_half(weight.biases)):
        return None
    return kind


def block_type(kind: str, width: int) -> str:
    """``kind`` for a matrix of rows of ``width`` weights: Q8_0 needs whole 32-weight blocks, else F16 (as
    llama.cpp's converter falls back)."""
    return "F16" if kind == "Q8_0" and width % BLOCK else kind


def tensor_type(value, float_kind: str, requantize_kind: str) -> tuple[str, str]:
    """(GGUF type, how) of one tensor: 1-D tensors (norms, biases) F32, as llama.cpp keeps them; float
    matrices ``float_kind``; affine layers their exact block (:func:`exact_kind`) or ``requantize_kind``;
    palettized layers ``float_kind``, dequantized. Of a float array only the shape is read (the model's
    own array, unconverted, serves)."""
    if isinstance(value, AffineWeight):
        kind = exact_kind(value)
        return (kind, "exact") if kind else (block_type(requantize_kind, value.shape[1]), "requantized")
    if isinstance(value, PalettizedWeight):
        return block_type(float_kind, value.shape[1]), "dequantized"
    return ("F32", "float") if len(value.shape) != 2 else (block_type(float_kind, value.shape[1]), "float")


def encode_float(name: str, weight: np.ndarray, kind: str) -> np.ndarray:
    """float32 [N, K] -> its data in F32/F16/BF16/Q8_0 (Q8_0 needs K % 32 == 0: :func:`block_type`)."""
    import gguf

    if kind == "F32":
        return np.ascontiguousarray(weight, np.float32)
    if kind == "F16":
        data = weight.astype(np.float16)
        if not np.all(np.isfinite(data)) and np.all(np.isfinite(weight)):
            raise SLMError(f"tensor {name} has values beyond float16's range; export it as f32 or bf16")
        return data
    return gguf.quants.quantize(weight, gguf.GGMLQuantizationType[kind])


def decoded(data: np.ndarray, kind: str, shape: tuple) -> np.ndarray:
    """What a GGUF reader gets back from ``data`` of type ``kind``: float32 ``shape``."""
    import gguf

    if data.dtype != np.uint8:
        return as_float32(data).reshape(shape)
    return np.asarray(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind]), np.float32).reshape(shape)


def max_error(weight: np.ndarray, data: np.ndarray, kind: str) -> float:
    return float(np.max(np.abs(decoded(data, kind, weight.shape) - weight), initial=0.0))


def encode(name: str, value, kind: str, how: str) -> Encoded:
    """One tensor (a float array, an :class:`AffineWeight` or a :class:`PalettizedWeight`) -> :class:`Encoded`
    of GGUF type ``kind``, written as ``how`` says (:func:`tensor_type` chose both)."""
    if how == "exact":
        return Encoded(pack_q4_1(value) if kind == "Q4_1" else pack_q5_1(value), kind, how)
    weight = dense(value)
    if weight.ndim != 2:
        return Encoded(np.ascontiguousarray(weight), kind, how)
    data = encode_float(name, weight, kind)
    return Encoded(data, kind, how, max_error(weight, data, kind))


def encode_quantized(name: str, value, kind: str, importance=None) -> Encoded:
    """A float matrix [N, K] -> :class:`Encoded` of GGUF type ``kind``: a k-quant or a 32-weight block
    (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) chosen with ``importance`` [K] (None: uniform) by
    :func:`.kquants.pack_kquant`, :func:`.legacy_quants.pack_legacy` or :func:`.iq4_nl.pack_iq4_nl`, or
    Q8_0 / F16 / F32 (:func:`encode_float`; ``kind`` after :func:`block_type`)."""
    weight = as_float32(value)
    if kind in KINDS:
        data = pack_kquant(weight, importance, kind, name)
    elif kind in LEGACY:
        data = pack_legacy(weight, importance, kind, name)
    elif kind == "IQ4_NL":
        data = pack_iq4_nl(weight, importance, name)
    else:
        data = encode_float(name, weight, kind)
    return Encoded(data, kind, "quantized", max_error(weight, data, kind))
