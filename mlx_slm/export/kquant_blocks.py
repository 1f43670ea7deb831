"""ggml's k-quant super-blocks: their grids (:data:`KINDS`), byte layouts (:func:`pack_blocks`) and
exact float32 values (:func:`dequantize`).

Every k-quant cuts a row into super-blocks of 256 weights, and a super-block into sub-blocks of 16
or 32 weights, each with an integer sub-scale ``sc`` (and for Q2_K/Q4_K/Q5_K an integer sub-min
``m``) that a float16 super-scale ``d`` (and ``dmin``) multiplies:

- with a min (Q2_K, Q4_K, Q5_K): ``w = (d*sc) * u - dmin*m``, codes ``u`` in 0..2^bits-1;
- symmetric (Q3_K, Q6_K): ``w = (d*sc) * (u - offset)``, codes ``u`` in 0..2^bits-1, signed ``sc``.

Byte layouts (little-endian, as ggml-common.h declares the blocks; checked against ``gguf.quants``
dequantization by the tests). "2-bit planes" means byte ``h*32 + l`` holds, at bits ``2j``, the code
of weight ``h*128 + j*32 + l`` (j = 0..3); "bit planes" means byte ``l`` holds, at bit ``j``, one bit
of the code of weight ``j*32 + l`` (j = 0..7):

- Q2_K, 84 bytes, 16 sub-blocks of 16: ``scales[16]`` (``sc | m << 4``, 4 bits each), ``qs[64]``
  (2-bit planes), ``d``, ``dmin``.
- Q3_K, 110 bytes, 16 sub-blocks of 16: ``hmask[32]`` (bit planes of bit 2 of ``u``), ``qs[64]``
  (2-bit planes of ``u & 3``), ``scales[12]`` (``sc + 32`` in 6 bits: low nibbles of sub-blocks i
  and i+8 in byte i, the high 2 bits of sub-block k + 4j at bits 2j of byte 8+k), ``d``; offset 4.
- Q4_K, 144 bytes, 8 sub-blocks of 32: ``d``, ``dmin``, ``scales[12]`` (6-bit ``sc`` and ``m``: bytes
  0-3 hold ``sc[j]`` and bytes 4-7 ``m[j]`` in their low 6 bits with the top 2 bits of ``sc[j+4]`` /
  ``m[j+4]`` above; bytes 8-11 hold the low nibbles of ``sc[j+4]`` | ``m[j+4] << 4``), ``qs[128]`` (byte
  ``c*32 + l``: weight ``c*64 + l`` in the low nibble, ``c*64 + 32 + l`` in the high one).
- Q5_K, 176 bytes: as Q4_K with ``qh[32]`` (bit planes of bit 4 of ``u``) before ``qs``.
- Q6_K, 210 bytes, 16 sub-blocks of 16: ``ql[128]`` (byte ``h*64 + l``: low nibbles of weights
  ``h*128 + l`` and ``h*128 + 64 + l``), ``qh[64]`` (2-bit planes of ``u >> 4``), ``scales[16]`` (int8),
  ``d``; offset 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPER = 256  # weights per super-block (ggml's QK_K)


@dataclass(frozen=True)
class KQuantKind:
    """One k-quant grid: ``sub`` weights per sub-block, codes 0..``code_max``, sub-scales in
    ``scale_range`` (inclusive), sub-mins in 0..``min_max`` (0: no min; then codes are centred on
    ``offset``), ``block_bytes`` per super-block."""

    name: str
    sub: int
    code_max: int
    scale_range: tuple
    min_max: int
    offset: int
    block_bytes: int

    @property
    def has_min(self) -> bool:
        return self.min_max > 0

    @property
    def subs(self) -> int:
        return SUPER // self.sub


KINDS = {k.name: k for k in (
    KQuantKind("Q2_K", 16, 3, (0, 15), 15, 0, 84),
    KQuantKind("Q3_K", 16, 7, (-32, 31), 0, 4, 110),
    KQuantKind("Q4_K", 32, 15, (0, 63), 63, 0, 144),
    KQuantKind("Q5_K", 32, 31, (0, 63), 63, 0, 176),
    KQuantKind("Q6_K", 16, 63, (-128, 127), 0, 32, 210),
)}


@dataclass
class KQuantBlocks:
    """The chosen values of a matrix [N, K] as B = N*K/256 super-blocks: ``codes`` uint8 [B, 256],
    ``scales`` int16 [B, subs], ``d`` float16 [B]; ``mins`` int16 [B, subs] and ``dmin`` float16 [B]
    for the types with a min (else None)."""

    kind: KQuantKind
    codes: np.ndarray
    scales: np.ndarray
    d: np.ndarray
    mins: np.ndarray | None = None
    dmin: np.ndarray | None = None


def sub_steps(d: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 ``d * sc`` per sub-block [B, subs], rounded as ggml's dequantizers round it."""
    return d.astype(np.float32)[:, None] * scales.astype(np.float32)


def dequantize(blocks: KQuantBlocks) -> np.ndarray:
    """float32 [B, 256]: the values ggml (and ``gguf.quants.dequantize``) read from these blocks, bit
    for bit (the same float32 products in the same order)."""
    kind = blocks.kind
    step = sub_steps(blocks.d, blocks.scales)[..., None]
    codes = blocks.codes.reshape(len(blocks.codes), kind.subs, kind.sub).astype(np.float32)
    if kind.has_min:
        values = step * codes - sub_steps(blocks.dmin, blocks.mins)[..., None]
    else:
        values = step * (codes - np.float32(kind.offset))
    return values.reshape(len(values), SUPER)


def crumb_planes(codes: np.ndarray) -> np.ndarray:
    """2-bit planes: codes [B, 256] (values 0..3) -> [B, 64]; byte h*32+l holds weight h*128+j*32+l at bits 2j."""
    q = codes.reshape(len(codes), 2, 4, 32)
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(len(codes), 64)


def bit_planes(bits: np.ndarray) -> np.ndarray:
    """Bit planes: bits [B, 256] (values 0/1) -> [B, 32]; byte l holds weight j*32+l at bit j."""
    return np.packbits(bits.reshape(len(bits), 8, 32).transpose(0, 2, 1), axis=-1, bitorder="little")[..., 0]


def nibble_pairs(codes: np.ndarray, span: int) -> np.ndarray:
    """Codes [B, 256] (low 4 bits used) -> [B, 128]: in each run of 2*span weights, byte l holds
    weight l in its low nibble and weight span+l in its high one."""
    q = codes.reshape(len(codes), -1, 2, span) & np.uint8(15)
    return (q[:, :, 0] | q[:, :, 1] << 4).reshape(len(codes), 128)


def six_bit_pairs(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 12 scale bytes from 8 six-bit sub-scales and 8 six-bit sub-mins per block."""
    sc, m = scales.astype(np.uint8), mins.astype(np.uint8)
    low = sc[:, :4] | (sc[:, 4:] >> 4) << 6
    mid = m[:, :4] | (m[:, 4:] >> 4) << 6
    high = (sc[:, 4:] & 15) | (m[:, 4:] & 15) << 4
    return np.concatenate([low, mid, high], axis=1)


def q3_scale_bytes(scales: np.ndarray) -> np.ndarray:
    """Q3_K's 12 scale bytes from 16 signed six-bit sub-scales (-32..31) per block."""
    s = (scales + 32).astype(np.uint8)
    low = (s[:, :8] & 15) | (s[:, 8:] & 15) << 4
    high = (s >> 4 & 3).reshape(len(s), 4, 4)  # [B, j, k]: sub-block k + 4j
    return np.concatenate([low, high[:, 0] | high[:, 1] << 2 | high[:, 2] << 4 | high[:, 3] << 6], axis=1)


def half_bytes(values: np.ndarray) -> np.ndarray:
    """float16 [B] -> little-endian bytes [B, 2]."""
    return values.astype("<f2").reshape(-1, 1).view(np.uint8)


def pack_blocks(blocks: KQuantBlocks) -> np.ndarray:
    """The super-blocks' bytes, uint8 [B, block_bytes], in the layout of ``blocks.kind``."""
    kind, u = blocks.kind, blocks.codes
    name = kind.name
    if name == "Q2_K":
        parts = [(blocks.scales | blocks.mins << 4).astype(np.uint8), crumb_planes(u), half_bytes(blocks.d),
                 half_bytes(blocks.dmin)]
    elif name == "Q3_K":
        parts = [bit_planes(u >> 2), crumb_planes(u & 3), q3_scale_bytes(blocks.scales), half_bytes(blocks.d)]
    elif name in ("Q4_K", "Q5_K"):
        high = [bit_planes(u >> 4)] if name == "Q5_K" else []
        parts = [half_bytes(blocks.d), half_bytes(blocks.dmin), six_bit_pairs(blocks.scales, blocks.mins), *high,
                 nibble_pairs(u, 32)]
    else:  # Q6_K
        parts = [nibble_pairs(u, 64), crumb_planes(u >> 4), blocks.scales.astype(np.int8).view(np.uint8),
                 half_bytes(blocks.d)]
    packed = np.concatenate(parts, axis=1)
    assert packed.shape[1] == kind.block_bytes, (name, packed.shape)
    return packed
