"""One model matrix -> the Core AI constants and decompression ops that rebuild it, keeping its bits.

=============  ==========================================  ============================================
model layer    Core AI ops (summed, decoded to float32)    stored per group of g along K
=============  ==========================================  ============================================
affine 2/4/8   ``blockwise_shift_scale``                   uint2/4/8 codes (the model's own), scale, and
                                                           offset2 = bias (offset1 = 0: a splat constant)
affine 3, 5    shift-scale of the low 2 / 4 bits + a       low codes, scale, bias; the top bit as uint1
               ``lut_to_dense`` of the top bit             with a table [0, 4s] / [0, 16s] per group
affine 6       shift-scale of the low 4 bits + a           low codes, scale, bias; the top 2 bits with a
               shift-scale of the top 2 bits               scale 16s per group (zero offsets: splats)
lut 2, 3, 4    ``lut_to_dense``, times the row scales      the model's codes and palettes [N/gN, 1, 2^b]
ternary        ``lut_to_dense``                            uint2 codes t + 1, a table [-s, 0, s, 0] per
                                                           row and scale group
float          ``constant``                                the model's float16 (or bfloat16) values
=============  ==========================================  ============================================

Core AI's shift-scale computes ``scale * (q - offset1) + offset2``, so MLX's ``scale * q + bias`` maps
onto it with offset1 = 0 and offset2 = bias, exactly. Shift-scale codes exist in 2, 4 and 8 bits
only: 3, 5 and 6-bit codes are split into a low and a high part, the high part's scale a power of
two times the group's scale (exact in any float type). Scales, biases and tables are stored in the
narrowest float type that holds them exactly (float16, else bfloat16, else float32) and widened to
float32 in the program, so every matrix decodes to the model's float32 weights (the 3/5/6-bit sums
may add one float32 rounding). Sub-byte codes are packed little-endian, as the runtime reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..formats.views import AffineWeight, PalettizedWeight

# code bits -> the widths its parts are stored in, low part first
AFFINE_PARTS = {2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 8: (8,)}
FLOAT_TYPES = (np.float16, ml_dtypes.bfloat16, np.float32)


def narrowest_float(*arrays) -> type:
    """The first of float16, bfloat16, float32 that holds every value of ``arrays`` exactly."""
    for dtype in FLOAT_TYPES:
        with np.errstate(over="ignore", invalid="ignore"):
            if all(np.array_equal(np.asarray(a, np.float32), np.asarray(a).astype(dtype).astype(np.float32))
                   for a in arrays):
                return dtype
    return np.float32


PACK_CODES = 1 << 20  # codes bit-packed at once (a multiple of 8: each run fills whole bytes)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (each < 2**bits) -> bytes, little-endian bit stream (code i at bit i * bits); packed
    :data:`PACK_CODES` codes at a time, so the one-byte-per-bit temporaries stay that small."""
    flat = codes.reshape(-1)
    runs = []
    for start in range(0, flat.size, PACK_CODES):
        run = flat[start:start + PACK_CODES].astype(np.uint8)
        planes = np.unpackbits(run[:, None], axis=1, bitorder="little")[:, :bits]
        runs.append(np.packbits(planes.reshape(-1), bitorder="little"))
    return np.concatenate(runs) if runs else np.zeros(0, np.uint8)


@dataclass
class ShiftScale:
    """``scale * codes + offset`` per block; scale/offset [N / bN, K / bK], codes uint8 [N, K]."""

    codes: np.ndarray
    bits: int
    scale: np.ndarray
    offset: np.ndarray | None  # None: zeros

    def nbytes(self) -> int:
        """Codes, scales and offsets (the zero points are a splat constant: one value, no per-group bytes)."""
        offsets = 0 if self.offset is None else self.offset.nbytes
        return -(-self.codes.size * self.bits // 8) + self.scale.nbytes + offsets


@dataclass
class Lut:
    """``lut[n // bN, k // bK, codes[n, k]]``; lut [N / bN, K / bK, 2**bits]."""

    codes: np.ndarray
    bits: int
    lut: np.ndarray

    def nbytes(self) -> int:
        return -(-self.codes.size * self.bits // 8) + self.lut.nbytes


@dataclass
class Dense:
    values: np.ndarray

    def nbytes(self) -> int:
        return self.values.nbytes


@dataclass
class Encoding:
    """A matrix as stored: the sum of ``parts``, times ``row_scales`` [N, 1] if any."""

    parts: list
    row_scales: np.ndarray | None = None

    def nbytes(self) -> int:
        return sum(part.nbytes() for part in self.parts) + (0 if self.row_scales is None else self.row_scales.nbytes)


def encode(weight) -> Encoding:
    """The Core AI representation of one matrix (an AffineWeight, a PalettizedWeight or a float array)."""
    if isinstance(weight, AffineWeight):
        return affine_encoding(weight)
    if isinstance(weight, PalettizedWeight):
        lut = weight.lut.astype(narrowest_float(weight.lut))
        return Encoding([Lut(weight.codes, weight.bits, lut)], weight.row_scales)
    values = np.asarray(weight)
    return Encoding([Dense(values.astype(narrowest_float(values)))])


def affine_encoding(weight: AffineWeight) -> Encoding:
    """The low part carries the scale and bias; each higher part (shift ``low``) has scale 2**low * scale."""
    widths = AFFINE_PARTS[weight.bits]
    high_scales = [weight.scales * float(1 << sum(widths[:i])) for i in range(1, len(widths))]
    dtype = narrowest_float(weight.scales, weight.biases, *high_scales)
    parts, shift = [], 0
    for i, width in enumerate(widths):
        codes = (weight.codes >> shift) & ((1 << width) - 1)
        if i == 0:
            parts.append(ShiftScale(codes, width, weight.scales.astype(dtype), weight.biases.astype(dtype)))
        elif width == 1:
            table = np.stack([np.zeros_like(high_scales[i - 1]), high_scales[i - 1]], axis=-1)
            parts.append(Lut(codes, 1, table.astype(dtype)))
        else:
            parts.append(ShiftScale(codes, width, high_scales[i - 1].astype(dtype), None))
        shift += width
    return Encoding(parts)


def op_names(encoding: Encoding) -> list[str]:
    names = {ShiftScale: "blockwise_shift_scale", Lut: "lut_to_dense", Dense: "constant"}
    return [names[type(part)] for part in encoding.parts]


def storage_names(encoding: Encoding) -> list[str]:
    """Element type of each part's codes (uint4, ...) or values (float16, ...)."""
    return [str(part.values.dtype) if isinstance(part, Dense) else f"uint{part.bits}" for part in encoding.parts]


def layer_record(path: str, weight, encoding: Encoding) -> dict:
    """Per-layer compression info for the manifest."""
    record = {"name": path, "shape": list(weight.shape), "coreai_ops": op_names(encoding),
              "storage": storage_names(encoding), "bytes": encoding.nbytes()}
    if isinstance(weight, (AffineWeight, PalettizedWeight)):
        mode = weight.mode if isinstance(weight, PalettizedWeight) else "affine"
        record.update(format=mode, bits=weight.bits, group_size=weight.group_size)
    else:
        record.update(format="float", bits=8 * np.asarray(weight).itemsize)
    return record


def emit(encoding: Encoding, name: str):
    """The float32 [N, K] Value of ``encoding`` in the graph being built; ``name`` names its code resources."""
    import coreai.authoring as ca

    total = None
    for i, part in enumerate(encoding.parts):
        value = emit_part(part, f"{name}.{i}")
        total = value if total is None else ca.add(total, value)
    if encoding.row_scales is not None:
        total = ca.broadcasting_mul(total, float32_constant(encoding.row_scales))
    return total


def float32_constant(values: np.ndarray):
    """A constant stored in ``values``' own float type, widened to float32 in the program.

    Widened by a shift-scale of scale 1 (exact): a ``cast`` of a constant would be folded into a
    float32 copy of it when the program is built, doubling a float16 matrix in the package.
    """
    import coreai.authoring as ca
    from coreai.authoring.constant import constant

    stored = constant(values)
    if values.dtype == np.float32:
        return stored
    one = (1,) * values.ndim
    return ca.blockwise_shift_scale(stored, constant(np.ones(one, np.float32)), constant(np.zeros(one, values.dtype)),
                                    constant(np.zeros(one, np.float32)))


def emit_part(part, name: str):
    """One part as float32. Shift-scale gets float32 scales and offsets, so the runtime decodes in float32
    (with float16 ones it computes, and rounds, in float16)."""
    import coreai.authoring as ca
    from coreai._compiler.ir import IntegerType
    from coreai.authoring.constant import constant

    if isinstance(part, Dense):
        return float32_constant(part.values)
    if isinstance(part, Lut):
        dense = ca.lut_to_dense(packed_constant(part.codes, part.bits, name), constant_table(part.lut),
                                np.array(0, np.int16))
        return dense if part.lut.dtype == np.float32 else ca.cast(dense, np.float32)
    zero_points = splat_zeros(part.scale.shape, IntegerType.get_unsigned(part.bits))
    offset = constant(np.zeros(part.scale.shape, np.float32)) if part.offset is None else float32_constant(part.offset)
    return ca.blockwise_shift_scale(packed_constant(part.codes, part.bits, name), float32_constant(part.scale),
                                    zero_points, offset)


def splat_zeros(shape: tuple, element):
    """A constant of zeros of ``shape`` and MLIR element type ``element``, stored as one value."""
    from coreai._compiler.dialects.coreai.constant import constant
    from coreai.authoring import Value

    return Value._from_mlir(constant(np.zeros(shape, np.uint8), dtype=element))


def constant_table(lut: np.ndarray):
    """lut [A, B, 2**bits] as the op's [A, B, 2**bits, 1] (scalar palettes)."""
    from coreai.authoring.constant import constant

    return constant(lut[..., None])


def packed_constant(codes: np.ndarray, bits: int, name: str):
    """A uint``bits`` constant of ``codes``' shape, its bytes packed (the runtime reads sub-byte codes packed;
    ``constant(..., dtype=uint4)`` would store one byte per code)."""
    from coreai._compiler.dialects._coreai_ops_gen import ConstantOp
    from coreai._compiler.ir import DenseResourceElementsAttr, IntegerType, RankedTensorType
    from coreai.authoring import Value

    element = IntegerType.get_unsigned(bits)
    data = pack_bits(codes, bits) if bits < 8 else np.ascontiguousarray(codes, np.uint8)
    attr = DenseResourceElementsAttr.get_from_buffer(data, name, RankedTensorType.get(list(codes.shape), element))
    return Value._from_mlir(ConstantOp(value=attr).result)
