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
"""

from __future__ import annotations

import numpy as np

from ..calib.hessian import prepare_hessian
from ..errors import SLMError
from ..formats import affine
from ..formats.dtypes import as_float32, round_to
from .imatrix import in_row_chunks, weighted_quantize
from .refit import refit_grid

GRIDS = ("imatrix", "rtn")


def static_grid(w: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, dtype, grid: str):
    """Per-group (scales, biases) [N, K/g] in ``dtype`` from the original weights."""
    if grid == "imatrix":
        _, scales, biases = weighted_quantize(w, np.diag(hessian), bits, group_size, dtype)
    elif grid == "rtn":
        _, scales, biases = affine.quantize_codes(w.astype(dtype, copy=False), bits, group_size)
    else:
        raise SLMError(f"GPTQ grid must be one of {GRIDS}, not {grid!r}")
    return round_to(scales, dtype), round_to(biases, dtype)


@in_row_chunks
def gptq_quantize(w: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, dtype=None,
                  damp: float = 0.01, block_size: int = 32, act_order: bool = True, grid: str = "imatrix",
                  refit: bool = True, prepared=None):
    """Quantize ``w`` [N, K] for inputs with second moments ``hessian`` = E[x x^T] [K, K].

    refit: refit the scales and biases to the chosen codes (:func:`.refit.refit_grid`).
    prepared: :func:`prepare_hessian`'s result for this Hessian, damp and act_order, if already known.
    Returns ``(q uint8 [N, K], scales [N, K/g], biases [N, K/g])`` in ``dtype``
    (default: w's), so that ``scales * q + biases`` per contiguous group is the weight.
    """
    dtype = np.dtype(dtype or w.dtype)
    affine.check_params(w.shape, bits, group_size)
    n_max = (1 << bits) - 1
    scales, biases = static_grid(w, hessian, bits, group_size, dtype, grid)
    grid_scales = as_float32(scales).T.copy()  # [K/g, N]: one row per group, so a column's grid is contiguous
    inverse_steps = np.divide(1, grid_scales, out=np.zeros_like(grid_scales), where=grid_scales != 0)  # 0: code 0
    offsets = as_float32(biases).T.copy()
    order, factor = prepared if prepared is not None else prepare_hessian(hessian, damp, act_order)
    columns = np.ascontiguousarray(as_float32(w).T[order])  # [K, N] in quantization order, updated in place
    codes = np.empty(columns.shape, np.float32)
    groups = order // group_size
    inverse_diagonal = 1 / np.diag(factor)
    k = len(order)
    for start in range(0, k, block_size):
        end = min(start + block_size, k)
        block = columns[start:end]
        errors = np.empty_like(block)
        local = factor[start:end, start:end]
        for i in range(end - start):
            g, q, error = groups[start + i], codes[start + i], errors[i]
            np.subtract(block[i], offsets[g], out=q)
            q *= inverse_steps[g]
            np.clip(np.rint(q, out=q), 0, n_max, out=q)
            np.multiply(grid_scales[g], q, out=error)
            error += offsets[g]
            np.subtract(block[i], error, out=error)
            error *= inverse_diagonal[start + i]
            block[i + 1 :] -= local[i, i + 1 :, None] * error
        columns[end:] -= factor[start:end, end:].T @ errors
    q = np.empty_like(codes)
    q[order] = codes
    q = q.T.astype(np.uint8)
    if refit:
        scales, biases = refit_grid(w, q, scales, biases, hessian, group_size, damp)
    return q, scales, biases
