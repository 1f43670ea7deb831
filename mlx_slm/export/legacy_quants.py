"""Importance-weighted 32-weight GGUF blocks: a float matrix [N, K] (K a multiple of 32) -> Q4_0, Q4_1,
Q5_0 or Q5_1 bytes, for the k-quant presets' fallbacks (llama.cpp writes these blocks where a row is
not a multiple of 256 weights, e.g. every matrix that reads SmolLM2's 576-wide hidden state).

The search is the k-quants' one (:mod:`.kquants`) with a float16 step (and min) per block instead of
integer sub-scales: per block, the continuous step (and min) of :func:`.kquants.fit_symmetric` /
:func:`.kquants.fit_with_min` (for Q4_1/Q5_1 also the block's own range, as ggml rounds, since their min
may be positive), then its float16 value and the float16 neighbours below and above (for
the min too), each with its nearest codes; the least error ``sum_j d_j (w_j - w_hat_j)^2`` is kept,
``d_j`` the importance of input column j (None: uniform).

Layouts (ggml's, little-endian; checked against ``gguf.quants`` dequantization by the tests):

- Q4_0, 18 bytes: ``d`` fp16, ``qs[16]`` with ``qs[j] = q[j] | q[j+16] << 4``; ``w = d * (q - 8)``.
- Q4_1, 20 bytes: ``d``, ``m`` fp16, ``qs[16]``; ``w = d * q + m``.
- Q5_0, 22 bytes: ``d``, ``qh`` (uint32, bit j = bit 4 of ``q[j]``), ``qs[16]`` (low nibbles); ``w = d * (q - 16)``.
- Q5_1, 24 bytes: ``d``, ``m``, ``qh``, ``qs[16]``; ``w = d * q + m``.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import SLMError
from ..formats.weighting import importance_weights
from ..quant.imatrix import in_row_chunks
from .kquant_blocks import KQuantKind
from .kquants import Best, check_matrix, fit_symmetric, fit_with_min, nearest_codes, weighted_error

BLOCK = 32  # weights per block
# The k-quant grid description with one block as its only sub-block: scale_range is unused (the step
# is a float16), min_max only marks the types with a min.
LEGACY = {k.name: k for k in (
    KQuantKind("Q4_0", BLOCK, 15, (0, 0), 0, 8, 18),
    KQuantKind("Q4_1", BLOCK, 15, (0, 0), 1, 0, 20),
    KQuantKind("Q5_0", BLOCK, 31, (0, 0), 0, 16, 22),
    KQuantKind("Q5_1", BLOCK, 31, (0, 0), 1, 0, 24),
)}


def nibbles(q: np.ndarray) -> np.ndarray:
    """Codes [..., 32] -> ``qs`` [..., 16]: the low nibbles of ``q[j]`` and ``q[j+16]``."""
    return (q[..., :16] & np.uint8(15)) | ((q[..., 16:] & np.uint8(15)) << np.uint8(4))


def high_bits(q: np.ndarray) -> np.ndarray:
    """Codes [..., 32] -> ``qh`` [..., 4]: bit 4 of ``q[j]`` at bit j of a little-endian uint32."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=-1, bitorder="little")


def half_bytes(values: np.ndarray) -> np.ndarray:
    """float16 values [...] -> their little-endian bytes [..., 2]."""
    return values.astype("<f2")[..., None].view(np.uint8)


def half_candidates(values: np.ndarray, name: str) -> list[np.ndarray]:
    """The float16 value of each of ``values`` and its float16 neighbours below and above, as float32."""
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.all(np.isfinite(half)):
        raise SLMError(f"{name}: a block scale is beyond float16's range")
    return [h.astype(np.float32) for h in (half, np.nextafter(half, np.float16(-np.inf)),
                                           np.nextafter(half, np.float16(np.inf)))]


@in_row_chunks(cache_sized=True)
def choose_legacy(w: np.ndarray, importance, kind_name: str, name: str):
    """Rows w [n, K] -> ``(codes uint8 [n, K], d float16 [n, K/32], m float16 [n, K/32])`` (m zero for
    the symmetric types)."""
    kind = LEGACY[kind_name]
    rows, width = w.shape
    x = np.asarray(w, np.float32).reshape(rows, width // BLOCK, BLOCK)
    wt = importance_weights(importance, width).reshape(1, width // BLOCK, BLOCK)
    if kind.has_min:  # the search's fit (whose min is at most 0) and the block's own range (ggml's rounding)
        step, bias = fit_with_min(x, wt, kind)
        low, high = x.min(-1), x.max(-1)
        options = [option for fit in ((step, -bias), ((high - low) / np.float32(kind.code_max), low))
                   for option in itertools.product(half_candidates(fit[0], name), half_candidates(fit[1], name))]
    else:
        options = ((d, np.zeros_like(d)) for d in half_candidates(fit_symmetric(x, wt, kind), name))
    best = Best()
    for d, m in options:
        u = nearest_codes(x, d, -m, kind)
        best.consider(weighted_error(x, wt, u, d, -m, kind), u=u, d=d, m=m)
    v = best.values
    return v["u"].astype(np.uint8).reshape(rows, width), v["d"].astype(np.float16), v["m"].astype(np.float16)


def pack_legacy(w: np.ndarray, importance=None, kind_name: str = "Q4_0", name: str = "tensor") -> np.ndarray:
    """float matrix [N, K] and importance [K] (or None) -> GGUF tensor bytes uint8 [N, K/32 * block bytes]."""
    if kind_name not in LEGACY:
        raise SLMError(f"legacy block type must be one of {', '.join(LEGACY)}, not {kind_name!r}")
    check_matrix(w, importance, BLOCK, kind_name, name)
    kind = LEGACY[kind_name]
    codes, d, m = choose_legacy(w, importance, kind_name, name)
    q = codes.reshape(w.shape[0], -1, BLOCK)
    parts = [half_bytes(d)] + [half_bytes(m)] * kind.has_min + [high_bits(q)] * (kind.code_max > 15) + [nibbles(q)]
    return np.concatenate(parts, axis=-1).reshape(w.shape[0], -1)
