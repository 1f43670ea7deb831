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
                                                     fp16 palettes [N/g, 1, 2^bits, 1]; a per-row
               (+ ``constexpr_blockwise_shift_scale``) scale multiplies the decoded fp16 matrix
ternary        ``constexpr_lut_to_dense``            uint2 codes c = t + 1 and one table
                                                     [-s, 0, s, 0] per row and scale group
float          ``const``                             fp16
=============  ====================================  =========================================

Both constexpr ops decompress to exactly ``scale * q + bias`` per group (up to
the fp16 rounding of the offset or of the table entries); nothing is re-quantized.
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
        scales = 0 if weight.row_scales is None else weight.row_scales.size * 2
        return weight.codes.size * weight.bits // 8 + weight.lut.size * 2 + scales
    if not isinstance(weight, AffineWeight):
        return weight.size * 2
    rows, columns = weight.shape
    groups = weight.scales.size
    if weight.bits in (2, 3):
        return rows * columns * weight.bits // 8 + groups * (1 << weight.bits) * 2
    bits = 8 if weight.bits in (5, 6) else weight.bits
    return rows * columns * bits // 8 + groups * 2 * 2


def shift_scale_arrays(weight: AffineWeight):
    """``(scale, offset)`` fp16 [N, K/g] with ``scale * (q - offset) == scale * q + bias``.

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


def palettized_var(mb, weight: PalettizedWeight, name: str):
    """constexpr_lut_to_dense over the model's own codes and tables (then the row scales, if any)."""
    from coremltools.converters.mil.mil import types

    indices = weight.codes.astype(getattr(types, UINT_TYPES[weight.bits]))
    lut = weight.lut.astype(np.float16)[..., None]
    if weight.row_scales is None:
        return mb.constexpr_lut_to_dense(indices=indices, lut=lut, name=name)
    dense = mb.constexpr_lut_to_dense(indices=indices, lut=lut, name=f"{name}_palettized")
    return mb.constexpr_blockwise_shift_scale(data=dense, scale=weight.row_scales.astype(np.float16), name=name)


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
