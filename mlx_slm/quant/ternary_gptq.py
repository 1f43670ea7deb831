"""GPTQ for the ternary formats: error-compensating rounding to {-s, 0, +s}.

A ternary layer is an affine grid with three codes whose offset is tied to its step: code
``c`` in {0, 1, 2} stands for ``s * (c - 1)``, i.e. step ``s`` and offset ``-s``. So GPTQ's
column sweep (:func:`mlx_slm.quant.gptq.sweep_columns`) runs unchanged on it: each column is
rounded to its group's three levels and its error spread over the columns not yet rounded
through the inverse Hessian's Cholesky factor. The scales are fixed up front from the original
weights (absmean, refitted by weighted least squares on the Hessian's diagonal: the imatrix
choice of :func:`mlx_slm.formats.ternary.quantize_values`). Once the trits are chosen, each
row's scales are refitted to them on the output error (:func:`refit_scales`), kept only where
that lowers the row's error.
"""

from __future__ import annotations

import numpy as np

from ..calib.hessian import prepare_hessian
from ..calib.statistics import NumpyArrays
from ..errors import SLMError
from ..formats import ternary
from ..formats.dtypes import as_float32, round_to
from .gptq import GRIDS, sweep_columns


def row_errors(w: np.ndarray, dense: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Output error per row, float64 [N]: ``(w - dense) H (w - dense)^T`` for w, dense [N, K]."""
    delta = np.asarray(w, np.float64) - dense
    return np.einsum("nk,nk->n", delta @ hessian, delta)


def refit_scales(w: np.ndarray, codes: np.ndarray, scales: np.ndarray, hessian: np.ndarray,
                 group_size: int) -> np.ndarray:
    """Each row's scales [G] that minimise its output error for the fixed ``codes`` [N, K] (trit + 1).

    With t the row's trits and w_hat_k = s_g t_k for column k of group g, the error is least in the
    H metric where ``A s = r``: A_gh = sum over k in g, k' in h of t_k H_kk' t_k', r_g = sum over k in g
    of t_k (w H)_k. A group of zero trits keeps its scale. The new scales, rounded to float16, replace a
    row's only if its error drops. Returns float16 [N, G].
    """
    rows, width = codes.shape
    group = group_size or width
    count = width // group
    h = np.asarray(hessian, np.float64)
    trits = codes.astype(np.float64) - 1
    w64 = np.asarray(w, np.float64)
    system = np.empty((rows, count, count))
    for g in range(count):  # (t masked to group g) H: one [N, g] x [g, K] product per group, N K^2 in all
        part = trits[:, g * group : (g + 1) * group] @ h[g * group : (g + 1) * group]
        system[:, g] = (part * trits).reshape(rows, count, group).sum(-1)
    rhs = ((w64 @ h) * trits).reshape(rows, count, group).sum(-1)
    empty = np.einsum("ngg->ng", system) <= 0
    old = as_float32(scales).astype(np.float64)
    system[empty] = 0
    system += np.eye(count) * empty[:, :, None]
    rhs = np.where(empty, old, rhs)
    fitted = round_to(np.linalg.solve(system, rhs[..., None])[..., 0], np.float16)
    before = row_errors(w64, ternary.dequantize_codes(codes, scales, group_size, np.float64), h)
    after = row_errors(w64, ternary.dequantize_codes(codes, fitted, group_size, np.float64), h)
    return np.where((after < before)[:, None], fitted, scales)


def gptq_ternary(w: np.ndarray, hessian: np.ndarray, group_size: int = 0, damp: float = 0.01,
                 block_size: int = 32, act_order: bool = True, grid: str = "imatrix", refit: bool = True,
                 prepared=None, arrays=NumpyArrays):
    """Ternary codes for ``w`` [N, K] with inputs of second moments ``hessian`` = E[x x^T] [K, K].

    group_size: 0 (a scale per row) or a multiple of 32. grid: the scales before the sweep, "imatrix"
    (absmean refitted on the Hessian's diagonal) or "rtn" (absmean). prepared: :func:`prepare_hessian`'s result
    for this Hessian, damp and act_order, if already known. arrays: where the column sweep runs
    (the calibration engine's ``arrays.for_methods()``).
    Returns ``(codes uint8 [N, K] in {0, 1, 2}, scales float16 [N, G])``: ``w ~ scales * (codes - 1)``.
    """
    ternary.check(w.shape, 2, group_size)
    width = w.shape[1]
    group = group_size or width
    if grid not in GRIDS:
        raise SLMError(f"GPTQ grid must be one of {GRIDS}, not {grid!r}")
    _, scales = ternary.quantize_values(w, group_size, importance=np.diag(hessian) if grid == "imatrix" else None)
    order, factor = prepared if prepared is not None else prepare_hessian(hessian, damp, act_order)
    steps = as_float32(scales).T
    codes = sweep_columns(arrays, as_float32(w).T[order], steps, -steps, order // group, factor, 2, block_size)
    q = np.empty_like(codes)
    q[order] = codes
    q = q.T.astype(np.uint8)
    if refit:
        scales = refit_scales(w, q, scales, hessian, group_size)
    return q, scales
