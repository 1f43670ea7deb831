"""GPTQ (Frantar et al., 2022) on MLX's affine grid, with static groups.

Columns are quantized one at a time (in act-order: largest Hessian diagonal
first) and each column's rounding error is spread over the columns not yet
quantized through the inverse Hessian's Cholesky factor; updates are applied
lazily in blocks of ``block_size`` columns (32: on a CPU the in-block updates are
element-wise and the block updates matrix products, and 32 columns balance them). The group scales and biases are fixed
up front from the original weights ("static groups"), one per contiguous run of
``group_size`` input columns as MLX stores them, so act-order never changes the
layout. They come from MLX's own rule or from the importance-weighted choice of
:mod:`.imatrix`. Once the codes are chosen, each row's scales and biases are refitted
to them on the output error (:mod:`.refit`), which never makes a row worse.

The column sweep (:func:`quantize_columns`), the imatrix grid and the refit's products with H are
written once over an engine's array operations and run where ``arrays.for_methods()`` of the
calibration engine says: on MLX when the MLX engine runs on a GPU, else on numpy, which on a CPU
is faster than MLX's CPU backend for these many small per-column ops
(:meth:`mlx_slm.calib.mlx_engine.MLXArrays.for_methods`); on numpy a wide layer's output rows are
swept on all cores at once (:func:`sweep_columns`). The factor of the Hessian and the refit's
float64 solves are numpy code.
"""

from __future__ import annotations

import numpy as np

from ..calib.hessian import prepare_hessian
from ..calib.statistics import NumpyArrays
from ..errors import SLMError
from ..formats import affine
from ..formats.dtypes import as_float32, round_to
from .imatrix import in_row_chunks, on_cores, weighted_quantize, worker_count
from .refit import refit_grid

GRIDS = ("imatrix", "rtn")
SWEEP_ROWS = 256  # least output rows per core worth a thread of their own in the column sweep


def static_grid(w: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, dtype, grid: str,
                arrays=NumpyArrays):
    """Per-group (scales, biases) [N, K/g] in ``dtype`` from the original weights (the imatrix grid
    searched with ``arrays``)."""
    if grid == "imatrix":
        _, scales, biases = weighted_quantize(w, np.diag(hessian), bits, group_size, dtype, arrays)
    elif grid == "rtn":
        _, scales, biases = affine.quantize_codes(w.astype(dtype, copy=False), bits, group_size)
    else:
        raise SLMError(f"GPTQ grid must be one of {GRIDS}, not {grid!r}")
    return round_to(scales, dtype), round_to(biases, dtype)


def quantize_columns(arrays, columns: np.ndarray, steps: np.ndarray, offsets: np.ndarray, groups: np.ndarray,
                     factor: np.ndarray, n_max: int, block_size: int) -> np.ndarray:
    """GPTQ's column sweep: codes float32 [K, N] of ``columns`` [K, N] (the weights' input columns in
    quantization order; numpy's are updated in place), computed with ``arrays``
    (:class:`~mlx_slm.calib.statistics.NumpyArrays` or MLX's).

    Column i is rounded on its group's grid (``steps``, ``offsets`` [K/g, N]; group ``groups[i]``,
    step 0: code 0) and its error, divided by ``factor[i, i]``, is taken off the later columns of
    its block with row i of ``factor`` (U [K, K]), one outer product per column; the block's errors
    then update all later columns at once, one matrix product per block.
    """
    inverse_steps = np.divide(1, steps, out=np.zeros_like(steps), where=steps != 0)
    steps, offsets, inverse_steps = (arrays.array(grid) for grid in (steps, offsets, inverse_steps))
    inverse_diagonal = (1 / np.diag(factor)).tolist()
    rest, factor, groups = arrays.array(columns), arrays.array(factor), groups.tolist()
    codes = []
    for start in range(0, len(groups), block_size):
        end = min(start + block_size, len(groups))
        block, rest = rest[: end - start], rest[end - start :]
        local = factor[start:end, start:end]
        block_codes, errors = [], []
        for i in range(end - start):
            g = groups[start + i]
            q = arrays.round_clip((block[i] - offsets[g]) * inverse_steps[g], n_max)
            error = (block[i] - (steps[g] * q + offsets[g])) * inverse_diagonal[start + i]
            block[i + 1 :] -= local[i, i + 1 :, None] * error
            block_codes.append(q)
            errors.append(error)
        rest -= factor[start:end, end:].T @ arrays.stack(errors)
        codes.append(arrays.stack(block_codes))
        arrays.evaluate(rest, codes[-1])
    return arrays.numpy(arrays.concatenate(codes), np.float32)


def sweep_columns(arrays, columns: np.ndarray, *grid_and_factor) -> np.ndarray:
    """:func:`quantize_columns`; on numpy with the N output rows (``columns``' and the grid's second
    axis) split over the cores, one BLAS thread each: every row's sweep is independent of the
    others', and one thread spends most of a wide layer's sweep in small element-wise ops."""
    steps, offsets, *rest = grid_and_factor
    workers = min(worker_count(), columns.shape[1] // SWEEP_ROWS) if arrays is NumpyArrays else 1
    if workers <= 1:
        return quantize_columns(arrays, columns, *grid_and_factor)
    bounds = np.linspace(0, columns.shape[1], workers + 1).round().astype(int)

    def rows(first, stop):
        part = slice(first, stop)
        return quantize_columns(arrays, columns[:, part], steps[:, part], offsets[:, part], *rest)

    return np.concatenate(on_cores(rows, bounds[:-1], bounds[1:], workers=workers), axis=1)


@in_row_chunks
def gptq_quantize(w: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, dtype=None,
                  damp: float = 0.01, block_size: int = 32, act_order: bool = True, grid: str = "imatrix",
                  refit: bool = True, prepared=None, arrays=NumpyArrays):
    """Quantize ``w`` [N, K] for inputs with second moments ``hessian`` = E[x x^T] [K, K].

    refit: refit the scales and biases to the chosen codes (:func:`.refit.refit_grid`).
    prepared: :func:`prepare_hessian`'s result for this Hessian, damp and act_order, if already known.
    arrays: the array operations the grid, the column sweep and the refit's products run on (the
    calibration engine's ``arrays.for_methods()``); the factor and the solves are numpy.
    Returns ``(q uint8 [N, K], scales [N, K/g], biases [N, K/g])`` in ``dtype``
    (default: w's), so that ``scales * q + biases`` per contiguous group is the weight.
    """
    dtype = np.dtype(dtype or w.dtype)
    affine.check_params(w.shape, bits, group_size)
    scales, biases = static_grid(w, hessian, bits, group_size, dtype, grid, arrays)
    order, factor = prepared if prepared is not None else prepare_hessian(hessian, damp, act_order)
    codes = sweep_columns(arrays, as_float32(w).T[order], as_float32(scales).T, as_float32(biases).T,
                          order // group_size, factor, (1 << bits) - 1, block_size)
    q = np.empty_like(codes)
    q[order] = codes
    q = q.T.astype(np.uint8)
    if refit:
        scales, biases = refit_grid(w, q, scales, biases, hessian, group_size, damp, arrays)
    return q, scales, biases
