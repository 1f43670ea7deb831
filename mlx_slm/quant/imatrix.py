"""Importance-weighted round-to-nearest (llama.cpp's imatrix idea) on MLX's affine grid.

Per group of ``group_size`` weights it picks the scale ``s`` and bias ``b`` (stored
in the weight's dtype) and codes ``q`` in ``0..2^bits-1`` that minimize the
activation-weighted error ``sum_j d_j (w_j - s*q_j - b)^2``, where ``d_j`` is the
mean squared activation of input column j. Candidates: MLX's own choice (so the
result is never worse than RTN on that error), the plain min/max grid, and a
sweep of code spacings each refitted by weighted least squares.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..formats import affine
from ..formats.dtypes import as_float32, round_to
from ..formats.weighting import importance_weights

SPACING_STEPS = np.linspace(-1.0, 1.0, 11)  # added to 2^bits - 1 codes across the range
CHUNK_ELEMENTS = 1 << 22  # weights per slice of rows: bounds the float32 temporaries at ~16 MB each
CACHE_CHUNK_ELEMENTS = 1 << 18  # a slice whose float32 temporaries (1 MB each) stay in the CPU's cache


def worker_count() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def in_row_chunks(quantize_rows=None, *, cache_sized: bool = False):
    """Wrap ``quantize_rows(w [N, K], ...) -> (q, scales, biases)`` (rows independent) so it runs on
    slices of at most :data:`CHUNK_ELEMENTS` weights: a 150k-row embedding needs no 10-GB temporaries.
    ``cache_sized``: for element-wise work that makes many passes over each slice, equal slices of at
    most :data:`CACHE_CHUNK_ELEMENTS` (slices that stay in the cache), their count a multiple of the
    cores, run on one thread per core (numpy's loops release the GIL). The result is the same as in
    one piece."""
    if quantize_rows is None:
        return functools.partial(in_row_chunks, cache_sized=cache_sized)

    @functools.wraps(quantize_rows)
    def run(w, *args, **kwargs):
        def rows_of(start, stop):
            return quantize_rows(w[start:stop], *args, **kwargs)

        if cache_sized:
            slices = -(-w.size // CACHE_CHUNK_ELEMENTS)
            workers = min(worker_count(), slices)
            slices = -(-slices // workers) * workers
        else:
            slices, workers = -(-w.size // CHUNK_ELEMENTS), 1
        slices = min(slices, len(w))
        if slices <= 1:
            return quantize_rows(w, *args, **kwargs)
        bounds = np.linspace(0, len(w), slices + 1).round().astype(int)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(rows_of, bounds[:-1], bounds[1:]))
        else:
            parts = [rows_of(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
        return tuple(np.concatenate(arrays) for arrays in zip(*parts))

    return run


def group_view(w: np.ndarray, group_size: int) -> np.ndarray:
    """[N, K] -> float32 [N, K/g, g]."""
    return as_float32(w).reshape(w.shape[0], -1, group_size)


def weighted_group_error(w: np.ndarray, w_hat: np.ndarray, importance: np.ndarray, group_size: int) -> np.ndarray:
    """sum_j d_j (w_j - w_hat_j)^2 per group: w, w_hat [N, K], importance [K] -> [N, K/g]."""
    d = np.asarray(importance, np.float32).reshape(1, -1, group_size)
    return (d * np.square(group_view(w, group_size) - group_view(w_hat, group_size))).sum(-1)


def codes_for(groups: np.ndarray, scales: np.ndarray, biases: np.ndarray, n_max: int) -> np.ndarray:
    """Nearest codes on the grid ``s*q + b``: groups [N, G, g], scales/biases float32 [N, G]."""
    zero = scales == 0
    q = groups - biases[..., None]
    q /= np.where(zero, np.float32(1), scales)[..., None]
    if zero.any():
        q[zero] = 0
    return np.clip(np.rint(q, out=q), 0, n_max, out=q)


def weighted_refit(groups: np.ndarray, q: np.ndarray, d: np.ndarray, sw: np.ndarray, sx: np.ndarray):
    """Weighted least-squares ``(s, b, ok)`` [N, G] for fixed codes q [N, G, g] (ok False where all
    codes are equal); ``sw``, ``sx``: the sums of d and of d * groups over each group."""
    dq = d * q
    sq, sqq, sqx = dq.sum(-1), (dq * q).sum(-1), (dq * groups).sum(-1)
    det = sw * sqq - sq * sq
    ok = det > 1e-12 * np.maximum(sw * sqq, 1e-30)
    det = np.where(ok, det, 1)
    return np.where(ok, (sw * sqx - sq * sx) / det, 0), np.where(ok, (sqq * sx - sq * sqx) / det, 0), ok


@in_row_chunks(cache_sized=True)
def weighted_quantize(w: np.ndarray, importance, bits: int, group_size: int, dtype=None):
    """Importance-weighted affine quantization of ``w`` [N, K].

    importance: [K] mean squared activation per input column (None: uniform).
    dtype: scales/biases dtype (default: w's). Returns ``(q uint8 [N, K],
    scales [N, K/g], biases [N, K/g])`` that ``affine.pack_codes`` / ``affine.unpack`` take.
    """
    dtype = np.dtype(dtype or w.dtype)
    n_max = (1 << bits) - 1
    d = importance_weights(importance, w.shape[1]).reshape(1, -1, group_size)
    groups = group_view(w, group_size)
    sw, sx = np.broadcast_to(d.sum(-1), groups.shape[:-1]), (d * groups).sum(-1)

    q_best, s_best, b_best = affine.quantize_codes(w.astype(dtype, copy=False), bits, group_size)
    q_best = q_best.reshape(groups.shape).astype(np.float32)
    s_best, b_best = round_to(s_best, dtype), round_to(b_best, dtype)
    restored = as_float32(s_best)[..., None] * q_best + as_float32(b_best)[..., None]
    err_best = (d * np.square(groups - restored)).sum(-1)

    def consider(scales, biases):
        nonlocal q_best, s_best, b_best, err_best
        scales, biases = round_to(scales, dtype), round_to(biases, dtype)
        s32, b32 = as_float32(scales), as_float32(biases)
        q = codes_for(groups, s32, b32, n_max)
        residual = s32[..., None] * q
        residual += b32[..., None]
        np.subtract(groups, residual, out=residual)
        np.square(residual, out=residual)
        residual *= d
        err = residual.sum(-1)
        better = err < err_best
        np.copyto(q_best, q, where=better[..., None])
        s_best, b_best = np.where(better, scales, s_best), np.where(better, biases, b_best)
        err_best = np.where(better, err, err_best)

    w_min, w_max = groups.min(-1), groups.max(-1)
    span = np.maximum(w_max - w_min, np.float32(1e-7))
    consider(span / n_max, w_min)
    above_min = groups - w_min[..., None]
    for step in SPACING_STEPS:
        inverse_scale = (n_max + step) / span
        q = np.clip(np.rint(above_min * inverse_scale[..., None]), 0, n_max)
        s, b, ok = weighted_refit(groups, q, d, sw, sx)
        consider(np.where(ok, s, span / n_max), np.where(ok, b, w_min))
    return q_best.astype(np.uint8).reshape(w.shape), s_best.astype(dtype), b_best.astype(dtype)
