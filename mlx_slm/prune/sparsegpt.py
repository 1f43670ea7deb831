"""SparseGPT (Frantar & Alistarh, 2023): mask selection and weight update from the inverse Hessian.

For inputs with second moments H = E[x x^T] [K, K], removing weight w_ij costs
about w_ij^2 / [H^-1]_jj (the OBS saliency), and the remaining weights of the
row can absorb its error. Columns are processed left to right in blocks of
``block_size``; within a block, the mask is chosen from the current (already
updated) weights with the saliency w^2 / U_jj^2, where U is the upper Cholesky
factor of the damped inverse Hessian (``U.T @ U = (H + damp*mean(diag H)*I)^-1``,
shared with GPTQ: :func:`mlx_slm.calib.hessian.inverse_hessian_factor`). Each column
is then zeroed where masked and its error spread over the columns to its right,
inside the block at once and lazily for the later blocks, as GPTQ does.

Unstructured: the block's zeros are chosen over all rows of the block, with the
layer total exactly ``round(s*N*K)`` (block b gets ``round(s*N*end_b) - round(s*N*start_b)``).
N:M: each group of M columns is chosen when the sweep reaches it.
"""

from __future__ import annotations

import numpy as np

from ..calib.hessian import inverse_hessian_factor
from .masks import keep_n_of_m, keep_overall, round_half_up


def sparsegpt_prune(w: np.ndarray, hessian: np.ndarray, sparsity: float = 0.0, pattern=None,
                    block_size: int = 128, damp: float = 0.01, factor: np.ndarray | None = None):
    """Prune ``w`` [N, K] for inputs with second moments ``hessian`` [K, K].

    sparsity: unstructured fraction of zeros in [0, 1) (ignored when ``pattern`` is given).
    pattern: (n, m) = n zeros in every m consecutive input weights (m divides K).
    factor: :func:`inverse_hessian_factor` of this Hessian and damp, if already known
    (layers sharing an input share it).
    Returns ``(weights float32 [N, K] with the zeros and the compensating updates, keep mask bool [N, K])``.
    """
    weights = np.array(w, dtype=np.float32)
    rows, cols = weights.shape
    dead = np.diag(np.asarray(hessian)) <= 0
    weights[:, dead] = 0.0  # inputs that are always zero: their weights do nothing
    if factor is None:
        factor = inverse_hessian_factor(hessian, damp)
    if pattern is not None:
        block_size = max(pattern[1], block_size // pattern[1] * pattern[1])
    columns = np.ascontiguousarray(weights.T)  # [K, N]: one input column per row, updated in place
    keep = np.ones((cols, rows), bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = columns[start:end]  # a view
        local = factor[start:end, start:end]
        diagonal = np.diag(local)[:, None]
        block_keep = keep[start:end]
        if pattern is None:
            count = int(round_half_up(sparsity * rows * end) - round_half_up(sparsity * rows * start))
            block_keep[:] = keep_overall(np.square(block) / np.square(diagonal), count)
        errors = np.empty_like(block)
        for i in range(end - start):
            if pattern is not None and i % pattern[1] == 0:
                group = slice(i, i + pattern[1])
                scores = np.square(block[group]) / np.square(diagonal[group])
                block_keep[group] = keep_n_of_m(np.ascontiguousarray(scores.T), *pattern).T
            column = block[i]
            pruned = np.where(block_keep[i], column, np.float32(0.0))
            errors[i] = (column - pruned) / diagonal[i]
            block[i + 1 :] -= local[i, i + 1 :, None] * errors[i]
            block[i] = pruned
        columns[end:] -= factor[start:end, end:].T @ errors
    return np.ascontiguousarray(columns.T), np.ascontiguousarray(keep.T)
