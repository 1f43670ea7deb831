"""Importance-weighted IQ4_NL blocks: a float matrix [N, K] (K a multiple of 32) -> GGUF IQ4_NL bytes.

IQ4_NL (ggml's ``block_iq4_nl``, little-endian), 18 bytes per 32 weights, 4.5 bits per weight as Q4_0:
``d`` fp16, then ``qs[16]`` with ``qs[j] = q[j] | q[j+16] << 4`` (weights 0-15 of the block in the low
nibbles, 16-31 in the high ones); ``w = d * KVALUES[q]`` with :data:`KVALUES` a fixed table of 16 integers,
denser near zero than Q4_0's even steps, so bell-shaped blocks lose less. llama.cpp writes it where an
IQ3/IQ2 recipe meets a row that is not a multiple of 256 weights.

The search per block minimizes ``sum_j d_j (w_j - w_hat_j)^2`` with ``d_j`` the importance of input
column j (mean squared input from calibration; None: uniform), as :mod:`.legacy_quants` does. It follows
the idea of llama.cpp's ``quantize_row_iq4_nl`` (several candidate scales, each refitted), measured on
the exact float16 scale:

1. continuous scales: the block's peak (its weight of largest |w|, with its sign) placed at either end
   of the table (-127 or 113) and at that end moved by :data:`SHIFTS` table units; for each, the nearest
   table entries and the weighted least-squares scale for them; the one with the least error is kept;
2. that scale's float16 value and its float16 neighbours, and plain absmax scaling (the peak at -127,
   the table's wider end), each with its nearest entries; the least exact weighted error is kept.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..formats.weighting import importance_weights
from ..quant.imatrix import in_row_chunks
from .kquants import Best, check_matrix
from .legacy_quants import half_bytes, half_candidates, nibbles

BLOCK = 32  # weights per block
BLOCK_BYTES = 18  # fp16 d + 16 bytes of 4-bit indices
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
ENDS = (KVALUES[0], KVALUES[-1])
SHIFTS = np.arange(-7, 8, dtype=np.float32)  # table units the peak's place moves from an end
# Every midpoint between neighbouring entries is a multiple of 1/2, so floor(2 * w / d) alone names the
# nearest entry (a tie takes the larger one): BUCKETS[floor(2 * w / d) - HALF_LOW], clipped to the table.
HALF_LOW = -256
BUCKETS = np.searchsorted((KVALUES[1:] + KVALUES[:-1]) / 2, np.arange(HALF_LOW, -HALF_LOW) / 2, side="right")


def nearest_entries(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices (intp) [..., 32] of the table entries nearest to x [..., 32] / d [...] (float32); a zero d
    gives the entry nearest 0."""
    twice_inverse = np.divide(np.float32(2), d, out=np.zeros(d.shape, np.float32), where=d != 0)
    t = x * twice_inverse[..., None]
    np.floor(t, out=t)
    np.clip(t, HALF_LOW, -HALF_LOW - 1, out=t)
    return np.take(BUCKETS, t.astype(np.intp) - HALF_LOW)


def restored(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """float32 values [..., 32] of indices q and scales d [...] (float32), as ggml computes them."""
    return d[..., None] * np.take(KVALUES, q)


def weighted_error(x, wt, q, d) -> np.ndarray:
    """sum over the last axis of wt * (x - restored)^2 -> [...]."""
    return (wt * np.square(x - restored(q, d))).sum(-1)


def refit(x, wt, q) -> tuple[np.ndarray, np.ndarray]:
    """The weighted least-squares scale [...] for indices q [..., 32] (0 where every entry weighs 0), and
    how much it lowers the weighted error from that of zeros (``sum(wqx)^2 / sum(wq^2)``)."""
    values = np.take(KVALUES, q)
    weighted = wt * values
    qq = np.einsum("...j,...j->...", weighted, values)
    qx = np.einsum("...j,...j->...", weighted, x)
    d = np.divide(qx, qq, out=np.zeros(qq.shape, np.float32), where=qq > 0)
    return d, d * qx


def peak_of(x: np.ndarray) -> np.ndarray:
    """The signed weight of largest |w| per block [...] of x [..., 32]."""
    return np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]


def continuous_scale(x, wt, peak) -> np.ndarray:
    """Step 1: float32 scale [...] per block of x [..., 32]."""
    best = Best()
    for end, shift in itertools.product(ENDS, SHIFTS):
        d, gain = refit(x, wt, nearest_entries(x, (peak / (end + shift)).astype(np.float32)))
        best.consider(-gain, d=d)
    return best.values["d"]


@in_row_chunks(cache_sized=True)
def choose_iq4_nl(w: np.ndarray, importance, name: str):
    """Rows w [n, K] -> ``(indices uint8 [n, K], d float16 [n, K/32])`` (see the module's steps)."""
    rows, width = w.shape
    x = np.asarray(w, np.float32).reshape(rows, width // BLOCK, BLOCK)
    wt = importance_weights(importance, width).reshape(1, width // BLOCK, BLOCK)
    peak = peak_of(x)
    absmax = half_candidates(peak / KVALUES[0], name)[0]
    best = Best()
    for d in [*half_candidates(continuous_scale(x, wt, peak), name), absmax]:
        q = nearest_entries(x, d)
        best.consider(weighted_error(x, wt, q, d), q=q, d=d)
    v = best.values
    return v["q"].astype(np.uint8).reshape(rows, width), v["d"].astype(np.float16)


def dequantize_iq4_nl(indices: np.ndarray, d: np.ndarray) -> np.ndarray:
    """indices uint8 [N, K] and d float16 [N, K/32] -> the float32 weights [N, K] ggml reads."""
    rows, width = indices.shape
    q = indices.reshape(rows, width // BLOCK, BLOCK)
    return restored(q, d.astype(np.float32)).reshape(rows, width)


def quantize_iq4_nl(w: np.ndarray, importance=None, name: str = "tensor") -> tuple[np.ndarray, np.ndarray]:
    """float matrix [N, K] and importance [K] (or None) -> ``(indices uint8 [N, K], d float16 [N, K/32])``."""
    check_matrix(w, importance, BLOCK, "IQ4_NL", name)
    return choose_iq4_nl(w, importance, name)


def pack_indices(indices: np.ndarray, d: np.ndarray) -> np.ndarray:
    """indices uint8 [N, K] and d float16 [N, K/32] -> IQ4_NL bytes uint8 [N, K/32 * 18]."""
    rows, width = indices.shape
    q = indices.reshape(rows, width // BLOCK, BLOCK)
    return np.concatenate([half_bytes(d), nibbles(q)], axis=-1).reshape(rows, -1)


def pack_iq4_nl(w: np.ndarray, importance=None, name: str = "tensor") -> np.ndarray:
    """float matrix [N, K] and importance [K] (or None) -> GGUF IQ4_NL bytes uint8 [N, K/32 * 18]."""
    return pack_indices(*quantize_iq4_nl(w, importance, name))
