"""One model matrix -> one Core ML (iOS 18) weight op, keeping its bits.

=============  ====================================  =========================================
model layer    Core ML op                            stored
=============  ====================================  =========================================
affine 4, 8    ``constexpr_blockwise_shift_scale``   uint4 / uint8 codes (the model's own),
                                                     fp16 scale (the model's), fp16 offset =
                                                     -bias / scale, one per group along K
affine 5, 6    ``constexpr_blockwise_shift_scale``   the same codes widened to uint8
affine 2, 3    ``constexpr_lut_to_dense``            uint2 / uint3 codes (the model's own) and
                                                     one fp16 table per group: scale * i + bias,
                                                     i = 0 .. 2^bits - 1 (no shift-scale type
                                                     has 2 or 3 bits)
lut 2, 3, 4    ``constexpr_lut_to_dense``            uint2 / uint3 / uint4 codes and the model's
                                                     fp16 palettes [N/g, 1, 2^bits, 1]; with row
                                                     scales one palette per row instead: row scale
                                                     times its group's palette, rounded once to fp16
ternary        ``constexpr_lut_to_dense``            uint2 codes c = t + 1 and one table
                                                     [-s, 0, s, 0] per row and scale group
float          ``const``                             fp16
=============  ====================================  =========================================

Nothing is re-quantized. Lookup tables hold the model's weight values rounded to fp16
(fp16(scale * i + bias) for 2/3-bit affine groups), so those layers decode bit for bit to the
model's weights in fp16. Shift-scale computes scale * (q - offset)
with an fp16 offset, which rounds: see :func:`shift_scale_arrays` for the bound.

Row-scaled lut layers are folded into per-row palettes rather than emitted as
``constexpr_lut_to_dense`` followed by ``constexpr_blockwise_shift_scale``: coremltools rewrites
that order for every target before iOS 26 (its ``canonicalize_quantized_lut_pattern`` pass: a
runtime issue fixed in iOS 26), into a shift-scale of per-row palette copies followed by the lookup.
The folded tables are that rewrite's result computed at export: the same values and the same
per-row tables, without the scales. With one palette per row (group size 1) they cost 2 bytes per
row less than palettes plus scales; with g rows per palette they cost 2^bits * 2 * (1 - 1/g) - 2
bytes per row more.
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from ..formats.views import AffineWeight, PalettizedWeight

FP16_MAX = float(np.finfo(np.float16).max)


def storage_dtype_name(weight) -> str:
    """Element type Core ML stores for ``weight``: "uint4", "uint8", "uint3", "fp16", ..."""
    if isinstance(weight, PalettizedWeight):
        return f"uint{weight.bits}"
    if not isinstance(weight, AffineWeight):
        return "fp16"
    return f"uint{weight.bits}" if weight.bits in (2, 3, 4, 8) else "uint8"


def coreml_op_name(weight) -> str:
    if isinstance(weight, PalettizedWeight):
        return "constexpr_lut_to_dense"
    if not isinstance(weight, AffineWeight):
        return "const"
    return "constexpr_lut_to_dense" if weight.bits in (2, 3) else "constexpr_blockwise_shift_scale"


def coreml_bytes(weight) -> int:
    """Bytes the weight's arrays take in the package (before the blob's alignment)."""
    if isinstance(weight, PalettizedWeight):
        tables = weight.lut.size if weight.row_scales is None else weight.row_scales.size * weight.lut.shape[-1]
        return weight.codes.size * weight.bits // 8 + tables * 2
    if not isinstance(weight, AffineWeight):
        return weight.size * 2
    rows, columns = weight.shape
    groups = weight.scales.size
    if weight.bits in (2, 3):
        return rows * columns * weight.bits // 8 + groups * (1 << weight.bits) * 2
    bits = 8 if weight.bits in (5, 6) else weight.bits
    return rows * columns * bits // 8 + groups * 2 * 2


def shift_scale_arrays(weight: AffineWeight):
    """``(scale, offset)`` fp16 [N, K/g] with ``scale * (q - offset) == scale * q + bias`` up to the
    fp16 rounding of offset = -bias / scale.

    That rounding moves every weight of a group by scale * |offset error| <= scale * ulp(offset) / 2,
    i.e. 2^-8 of a quantization step while |offset| < 16 (4-bit groups spanning zero), before the
    result's own fp16 rounding. No fp16 offset is exact in general: -bias / scale needs more than
    fp16's 11 significant bits, and a per-group lookup table (exact: its entries are the fp16 weights)
    costs 2^bits fp16 entries per group instead of two numbers (8.0 bpw instead of 4.5 at 4-bit g64).

    A group whose offset does not fit fp16 (a tiny scale over constant weights)
    has one code throughout; it gets scale = its value and offset = code - 1.
    """
    scale = weight.scales.astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = -weight.biases / scale.astype(np.float32)
    degenerate = ~np.isfinite(offset) | (np.abs(offset) > FP16_MAX)
    if degenerate.any():
        groups = weight.codes.reshape(*scale.shape, weight.group_size)
        if np.any(groups[degenerate] != groups[degenerate][:, :1]):
            raise SLMError("a quantization group has a zero scale but different codes; it cannot be exported")
        code = groups[..., 0].astype(np.float32)
        value = weight.scales * code + weight.biases
        scale = np.where(degenerate, value, scale).astype(np.float16)
        offset = np.where(degenerate, code - 1, offset)
    return scale, offset.astype(np.float16)


def lookup_table(weight: AffineWeight) -> np.ndarray:
    """fp16 [N, K/g, 2^bits, 1]: entry i of a group is scale * i + bias."""
    levels = np.arange(1 << weight.bits, dtype=np.float32)
    table = weight.scales[..., None] * levels + weight.biases[..., None]
    return table.astype(np.float16)[..., None]


def weight_var(mb, weight, name: str):
    """A MIL var holding ``weight`` as fp16 [N, K] (compressed where the model is)."""
    from coremltools.converters.mil.mil import types

    if isinstance(weight, PalettizedWeight):
        return palettized_var(mb, weight, name)
    if not isinstance(weight, AffineWeight):
        return mb.const(val=np.asarray(weight).astype(np.float16), name=name)
    if weight.bits in (2, 3):
        dtype = {2: types.np_uint2_dtype, 3: types.np_uint3_dtype}[weight.bits]
        return mb.constexpr_lut_to_dense(indices=weight.codes.astype(dtype), lut=lookup_table(weight), name=name)
    dtype = types.np_uint4_dtype if weight.bits == 4 else np.uint8
    scale, offset = shift_scale_arrays(weight)
    return mb.constexpr_blockwise_shift_scale(data=weight.codes.astype(dtype), scale=scale, offset=offset,
                                              name=name)


UINT_TYPES = {2: "np_uint2_dtype", 3: "np_uint3_dtype", 4: "np_uint4_dtype"}


def palettes(weight: PalettizedWeight) -> np.ndarray:
    """fp16 [tables, 1, 2^bits, 1]: the model's palettes, or with row scales one per row, holding
    fp16(row scale * palette entry): each decoded weight is the model's, rounded once to fp16."""
    lut = weight.lut.astype(np.float32)
    if weight.row_scales is not None:
        rows = weight.row_scales.shape[0]
        lut = np.repeat(lut, rows // lut.shape[0], axis=0) * weight.row_scales.astype(np.float32)[:, :, None]
    return lut.astype(np.float16)[..., None]


def palettized_var(mb, weight: PalettizedWeight, name: str):
    """One constexpr_lut_to_dense over the model's own codes and :func:`palettes`."""
    from coremltools.converters.mil.mil import types

    indices = weight.codes.astype(getattr(types, UINT_TYPES[weight.bits]))
    return mb.constexpr_lut_to_dense(indices=indices, lut=palettes(weight), name=name)


def layer_record(path: str, weight) -> dict:
    """Per-layer compression info for the manifest."""
    record = {"name": path, "shape": list(weight.shape), "coreml_op": coreml_op_name(weight),
              "storage": storage_dtype_name(weight), "bytes": coreml_bytes(weight)}
    if isinstance(weight, (AffineWeight, PalettizedWeight)):
        mode = weight.mode if isinstance(weight, PalettizedWeight) else "affine"
        record.update(format=mode, bits=weight.bits, group_size=weight.group_size)
    else:
        record.update(format="float", bits=16)
    return record
