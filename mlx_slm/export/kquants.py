"""Importance-weighted k-quants: a float matrix [N, K] -> Q2_K/Q3_K/Q4_K/Q5_K/Q6_K bytes chosen by
the project's imatrix search inside each type's exact grid (:mod:`.kquant_blocks`).

The error minimized is ``sum_j d_j (w_j - w_hat_j)^2`` with ``d_j`` the importance of input column j
(mean squared activation; None: uniform), as :mod:`mlx_slm.quant.imatrix` does for MLX's affine grid:

1. per sub-block, a continuous step ``a`` and bias ``b`` (``b = -offset*a`` for the symmetric types,
   ``a >= 0 >= b`` for those with a min, whose stored min is ``-b``): a sweep of code spacings, each
   refitted by weighted least squares (:func:`mlx_slm.quant.imatrix.weighted_refit`), the best kept;
2. per super-block, a float16 super-scale ``d`` (and ``dmin``) from the largest step (and min), tried
   at a few sizes (:data:`SUPER_FACTORS`: a smaller ``d`` clips the largest sub-scale but refines the
   others), the integer sub-scales rounded to its grid and moved by -1/0/+1 to whichever (with its
   nearest codes) has the least weighted error, the codes re-chosen for the quantized scales.

Every error is measured on the exact float32 values ggml will read (:func:`.kquant_blocks.dequantize`).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import SLMError
from ..formats.weighting import importance_weights
from ..quant.imatrix import in_row_chunks, weighted_refit
from .kquant_blocks import KINDS, SUPER, KQuantBlocks, KQuantKind, dequantize, pack_blocks

SPACING_STEPS = np.linspace(-1.0, 1.0, 11)  # added to the code range's width when sweeping spacings
SUPER_FACTORS = (1.0, 0.9, 0.8)  # super-scales tried, as fractions of the one that fits the largest sub-scale
NEIGHBOURS = (0, -1, 1)  # moves of a rounded integer sub-scale (or sub-min) tried


def nearest_codes(x, step, bias, kind: KQuantKind) -> np.ndarray:
    """Nearest stored codes (float32, 0..code_max) of x [..., g] on ``step * u - bias`` (with a min) or
    ``step * (u - offset)``; step and bias [...] float32; a zero step gives the code of value 0."""
    zero = step == 0
    safe = np.where(zero, np.float32(1), step)[..., None]
    if kind.has_min:
        u = (x + bias[..., None]) / safe
    else:
        u = x / safe + np.float32(kind.offset)
    u[zero] = 0 if kind.has_min else kind.offset
    return np.clip(np.rint(u, out=u), 0, kind.code_max, out=u)


def restored(u, step, bias, kind: KQuantKind) -> np.ndarray:
    """float32 values of codes u [..., g] in ggml's own order of operations."""
    if kind.has_min:
        return step[..., None] * u - bias[..., None]
    return step[..., None] * (u - np.float32(kind.offset))


def weighted_error(x, wt, u, step, bias, kind: KQuantKind) -> np.ndarray:
    """sum over the last axis of wt * (x - restored)^2 -> [...]."""
    return (wt * np.square(x - restored(u, step, bias, kind))).sum(-1)


class Best:
    """The least-error candidate per sub-block so far: arrays named in ``consider``'s keyword arguments."""

    def __init__(self):
        self.error, self.values = None, {}

    def consider(self, error: np.ndarray, **values) -> None:
        if self.error is None:
            self.error, self.values = error, {k: np.array(v) for k, v in values.items()}
            return
        better = error < self.error
        self.error = np.where(better, error, self.error)
        for key, value in values.items():
            np.copyto(self.values[key], value, where=better.reshape(better.shape + (1,) * (value.ndim - better.ndim)))


def fit_with_min(x, wt, kind: KQuantKind):
    """Continuous (step a >= 0, min -b >= 0) per sub-block of x [..., g] (step 1)."""
    lo, hi = np.minimum(x.min(-1), 0), x.max(-1)
    span = np.maximum(hi - lo, np.float32(1e-30))
    sw, sx = np.broadcast_to(wt.sum(-1), x.shape[:-1]), (wt * x).sum(-1)
    best = Best()

    def consider(a, b):
        a, bias = np.maximum(a, 0).astype(np.float32), np.maximum(-b, 0).astype(np.float32)
        u = nearest_codes(x, a, bias, kind)
        best.consider(weighted_error(x, wt, u, a, bias, kind), a=a, bias=bias)

    consider(span / kind.code_max, lo)
    for spacing in SPACING_STEPS:
        u = np.clip(np.rint((x - lo[..., None]) * ((kind.code_max + spacing) / span)[..., None]), 0, kind.code_max)
        a, b, ok = weighted_refit(x, u, wt, sw, sx)
        wu = wt * u
        uu = (wu * u).sum(-1)
        a_zero_min = np.divide((wu * x).sum(-1), uu, out=np.zeros_like(uu), where=uu > 0)  # the fit with b = 0
        positive = ~ok | (b > 0)
        consider(np.where(positive, a_zero_min, a), np.where(positive, 0, b))
    return best.values["a"], best.values["bias"]


def fit_symmetric(x, wt, kind: KQuantKind):
    """Continuous signed step a per sub-block of x [..., g] (step 1); the largest |x| is tried at either
    end of the codes' range."""
    peak = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]
    low, high = -kind.offset, kind.code_max - kind.offset
    zero_bias = np.zeros(x.shape[:-1], np.float32)
    best = Best()

    def consider(a):
        a = a.astype(np.float32)
        u = nearest_codes(x, a, zero_bias, kind)
        best.consider(weighted_error(x, wt, u, a, zero_bias, kind), a=a)

    consider(peak / low)
    for spacing, end in itertools.product(SPACING_STEPS, (low, high)):
        a = peak / (end - spacing if end < 0 else end + spacing)
        q = nearest_codes(x, a.astype(np.float32), zero_bias, kind) - kind.offset
        wq = wt * q
        qq = (wq * q).sum(-1)
        consider(np.divide((wq * x).sum(-1), qq, out=np.array(a, np.float32), where=qq > 0))
    return best.values["a"]


def super_scale(values: np.ndarray, extreme: int, factor: float, name: str) -> np.ndarray:
    """float16 super-scale per super-block [...] for continuous sub-values [..., subs]: the one that puts
    the largest |value| at integer ``extreme`` (its sign chosen to match), times ``factor``."""
    peak = np.take_along_axis(values, np.abs(values).argmax(-1)[..., None], -1)[..., 0]
    d = peak / np.float32(extreme * factor)
    if np.any(np.abs(d) > np.finfo(np.float16).max):
        raise SLMError(f"{name}: a super-scale is beyond float16's range")
    return d.astype(np.float16)


def integer_candidates(values, d, bounds):
    """Rounded integer sub-values of ``values`` [..., subs] on super-scale d [...], and its -1/+1 neighbours."""
    d32 = d.astype(np.float32)[..., None]
    base = np.rint(np.divide(values, d32, out=np.zeros_like(values), where=d32 != 0))
    return [np.clip(base + move, *bounds) for move in NEIGHBOURS]


def to_grid(x, wt, a, bias, kind: KQuantKind, factor: float, name: str):
    """Step 2 at one super-scale size: ``(error [...], codes, scales, d, mins, dmin)`` with x [..., subs, g]."""
    d = super_scale(a, kind.scale_range[0] if not kind.has_min else kind.scale_range[1], factor, name)
    scale_options = integer_candidates(a, d, kind.scale_range)
    if kind.has_min:
        dmin = super_scale(bias, kind.min_max, factor, name)
        min_options = integer_candidates(bias, dmin, (0, kind.min_max))
    else:
        dmin, min_options = None, [np.zeros_like(a)]
    best = Best()
    for sc, m in itertools.product(scale_options, min_options):
        step = d.astype(np.float32)[..., None] * sc
        sub_bias = dmin.astype(np.float32)[..., None] * m if kind.has_min else m
        u = nearest_codes(x, step, sub_bias, kind)
        best.consider(weighted_error(x, wt, u, step, sub_bias, kind), u=u, sc=sc, m=m)
    v = best.values
    return best.error.sum(-1), v["u"], v["sc"], d, v["m"], dmin


@in_row_chunks(cache_sized=True)
def choose_blocks(w: np.ndarray, importance, kind_name: str):
    """Rows w [n, K] -> ``(codes uint8 [B, 256], scales int16 [B, subs], d float16 [B][, mins, dmin])``
    with B = n*K/256 super-blocks in row order (see the module's steps)."""
    kind = KINDS[kind_name]
    rows, width = w.shape
    x = np.asarray(w, np.float32).reshape(rows, width // SUPER, kind.subs, kind.sub)
    wt = importance_weights(importance, width).reshape(1, width // SUPER, kind.subs, kind.sub)
    a, bias = fit_with_min(x, wt, kind) if kind.has_min else (fit_symmetric(x, wt, kind), None)
    best = Best()
    for factor in SUPER_FACTORS:
        error, u, sc, d, m, dmin = to_grid(x, wt, a, bias, kind, factor, kind_name)
        best.consider(error, u=u, sc=sc, d=d, m=m, **({"dmin": dmin} if kind.has_min else {}))
    v = best.values
    count = rows * (width // SUPER)
    out = (v["u"].astype(np.uint8).reshape(count, SUPER), v["sc"].astype(np.int16).reshape(count, kind.subs),
           v["d"].reshape(count))
    if kind.has_min:
        out += (v["m"].astype(np.int16).reshape(count, kind.subs), v["dmin"].reshape(count))
    return out


def check_matrix(w: np.ndarray, importance, multiple: int, kind_name: str, name: str) -> None:
    """SLMError unless ``w`` is a finite matrix [N, K] with K a multiple of ``multiple`` (the block of
    GGUF type ``kind_name``) and ``importance`` is None or [K]."""
    if w.ndim != 2 or w.shape[1] % multiple:
        raise SLMError(f"{name}: {kind_name} needs rows of a multiple of {multiple} weights, not shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise SLMError(f"{name}: the weight has non-finite values")
    if importance is not None and np.shape(importance) != (w.shape[1],):
        raise SLMError(f"{name}: importance must have shape ({w.shape[1]},), not {np.shape(importance)}")


def quantize_blocks(w: np.ndarray, importance=None, kind_name: str = "Q4_K", name: str = "tensor") -> KQuantBlocks:
    """float matrix w [N, K] (K a multiple of 256) and importance [K] (or None) -> :class:`KQuantBlocks`."""
    if kind_name not in KINDS:
        raise SLMError(f"k-quant type must be one of {', '.join(KINDS)}, not {kind_name!r}")
    check_matrix(w, importance, SUPER, kind_name, name)
    return KQuantBlocks(KINDS[kind_name], *choose_blocks(w, importance, kind_name))


def dequantized(blocks: KQuantBlocks, shape: tuple) -> np.ndarray:
    """The float32 matrix ``shape`` that ggml reads from ``blocks``."""
    return dequantize(blocks).reshape(shape)


def pack_kquant(w: np.ndarray, importance=None, kind_name: str = "Q4_K", name: str = "tensor") -> np.ndarray:
    """float matrix [N, K] -> GGUF tensor bytes, uint8 [N, K/256 * block bytes], of ``kind_name``."""
    blocks = quantize_blocks(w, importance, kind_name, name)
    return pack_blocks(blocks).reshape(w.shape[0], -1)


def pack_q2_k(w, importance=None):
    """float [N, K] -> Q2_K bytes uint8 [N, K/256*84] (2.625 bits per weight)."""
    return pack_kquant(w, importance, "Q2_K")


def pack_q3_k(w, importance=None):
    """float [N, K] -> Q3_K bytes uint8 [N, K/256*110] (3.4375 bits per weight)."""
    return pack_kquant(w, importance, "Q3_K")


def pack_q4_k(w, importance=None):
    """float [N, K] -> Q4_K bytes uint8 [N, K/256*144] (4.5 bits per weight)."""
    return pack_kquant(w, importance, "Q4_K")


def pack_q5_k(w, importance=None):
    """float [N, K] -> Q5_K bytes uint8 [N, K/256*176] (5.5 bits per weight)."""
    return pack_kquant(w, importance, "Q5_K")


def pack_q6_k(w, importance=None):
    """float [N, K] -> Q6_K bytes uint8 [N, K/256*210] (6.5625 bits per weight)."""
    return pack_kquant(w, importance, "Q6_K")
