"""Importance-weighted round-to-nearest (llama.cpp's imatrix idea) on MLX's affine grid.

Per group of ``group_size`` weights it picks the scale ``s`` and bias ``b`` (stored
in the weight's dtype) and codes ``q`` in ``0..2^bits-1`` that minimize the
activation-weighted error ``sum_j d_j (w_j - s*q_j - b)^2``, where ``d_j`` is the
mean squared activation of input column j. Candidates: MLX's own choice (so the
result is never worse than RTN on that error), the plain min/max grid, and a
sweep of code spacings each refitted by weighted least squares. The search is written
once over an engine's array operations (numpy's, or MLX's on a GPU: the calibration
engine's ``arrays.for_methods()``, :mod:`mlx_slm.calib.statistics`).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from ..calib.statistics import NumpyArrays
from ..formats.dtypes import as_float32
from ..formats.weighting import importance_weights

SPACING_STEPS = np.linspace(-1.0, 1.0, 11)  # added to 2^bits - 1 codes across the range
CHUNK_ELEMENTS = 1 << 22  # weights per slice of rows: bounds the float32 temporaries at ~16 MB each
CACHE_CHUNK_ELEMENTS = 1 << 18  # a slice whose float32 temporaries (1 MB each) stay in the CPU's cache


def worker_count() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def on_cores(function, *arguments, workers: int) -> list:
    """``[function(*a) for a in zip(*arguments)]`` on ``workers`` threads, each with one BLAS thread
    (numpy releases the GIL in its loops; a multi-threaded BLAS would only wake and spin its own
    threads for the small products and solves each thread computes)."""
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, *arguments))


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
            parts = on_cores(rows_of, bounds[:-1], bounds[1:], workers=workers)
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


def codes_for(groups, scales, biases, n_max: int, arrays=NumpyArrays):
    """Nearest codes on the grid ``s*q + b``: groups [N, G, g], scales/biases float32 [N, G] (arrays of
    ``arrays``' library)."""
    zero = scales == 0
    q = groups - biases[..., None]
    q /= arrays.where(zero, 1.0, scales)[..., None]
    if arrays.any(zero):
        q = arrays.where(zero[..., None], 0.0, q)
    return arrays.round_clip(q, n_max)


def weighted_refit(groups, q, d, sw, sx, arrays=NumpyArrays):
    """Weighted least-squares ``(s, b, ok)`` [N, G] for fixed codes q [N, G, g] (ok False where all
    codes are equal); ``sw``, ``sx``: the sums of d and of d * groups over each group (arrays of
    ``arrays``' library)."""
    dq = d * q
    sq, sqq, sqx = dq.sum(-1), (dq * q).sum(-1), (dq * groups).sum(-1)
    det = sw * sqq - sq * sq
    ok = det > 1e-12 * arrays.maximum(sw * sqq, 1e-30)
    det = arrays.where(ok, det, 1.0)
    return arrays.where(ok, (sw * sqx - sq * sx) / det, 0.0), arrays.where(ok, (sqq * sx - sq * sqx) / det, 0.0), ok


def weighted_quantize(w: np.ndarray, importance, bits: int, group_size: int, dtype=None, arrays=NumpyArrays):
    """Importance-weighted affine quantization of ``w`` [N, K].

    importance: [K] mean squared activation per input column (None: uniform).
    dtype: scales/biases dtype (default: w's). arrays: the array operations the search runs on (the
    calibration engine's ``arrays.for_methods()``): numpy's on cache-sized row slices, one thread per
    core; others on slices of :data:`CHUNK_ELEMENTS`. Returns ``(q uint8 [N, K], scales [N, K/g],
    biases [N, K/g])`` (numpy) that ``affine.pack_codes`` / ``affine.unpack`` take.
    """
    search = in_row_chunks(grid_search, cache_sized=arrays.in_cache_slices)
    return search(w, importance_weights(importance, w.shape[1]), bits, group_size, np.dtype(dtype or w.dtype), arrays)


def grid_search(w: np.ndarray, importance: np.ndarray, bits: int, group_size: int, dtype, arrays):
    """:func:`weighted_quantize` of rows ``w`` [N, K] with column weights ``importance`` float32 [K]:
    MLX's own choice, then the min/max grid and each spacing's weighted refit where they lower a
    group's error. Values are held as float32 (scales and biases rounded to ``dtype``); the refits run
    in ``arrays.wide`` precision."""
    n_max = (1 << bits) - 1
    d = arrays.array(importance).reshape(1, -1, group_size)
    groups = arrays.array(w).reshape(len(w), -1, group_size)
    sw, sx = d.sum(-1), (d * groups).sum(-1)

    q_best, s_best, b_best = arrays.affine_codes(groups, bits, dtype)
    err_best = (d * arrays.square(groups - (s_best[..., None] * q_best + b_best[..., None]))).sum(-1)

    def consider(scales, biases):
        nonlocal q_best, s_best, b_best, err_best
        scales, biases = arrays.rounded(scales, dtype), arrays.rounded(biases, dtype)
        q = codes_for(groups, scales, biases, n_max, arrays)
        residual = scales[..., None] * q
        residual += biases[..., None]
        residual -= groups
        residual *= residual
        residual *= d
        err = residual.sum(-1)
        better = err < err_best
        q_best = arrays.put_where(q_best, better[..., None], q)
        s_best, b_best = arrays.put_where(s_best, better, scales), arrays.put_where(b_best, better, biases)
        err_best = arrays.put_where(err_best, better, err)

    w_min, w_max = groups.min(-1), groups.max(-1)
    span = arrays.maximum(w_max - w_min, 1e-7)
    consider(span / n_max, w_min)
    above_min = groups - w_min[..., None]
    for step in SPACING_STEPS:
        inverse_scale = (n_max + arrays.wide(step)) / span
        q = arrays.round_clip(above_min * inverse_scale[..., None], n_max)
        s, b, ok = weighted_refit(groups, q, d, sw, sx, arrays)
        consider(arrays.where(ok, s, span / n_max), arrays.where(ok, b, w_min))
    return (arrays.numpy(q_best, np.uint8).reshape(w.shape), arrays.numpy(s_best, dtype),
            arrays.numpy(b_best, dtype))
