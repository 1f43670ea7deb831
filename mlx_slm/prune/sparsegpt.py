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

The sweep is written once over an engine's array operations (numpy's, or MLX's on a GPU: the
calibration engine's ``arrays.for_methods()``, see :mod:`mlx_slm.quant.gptq`); the factor is
computed with numpy and the results come back as numpy arrays.
"""

from __future__ import annotations

import numpy as np

from ..calib.hessian import inverse_hessian_factor
from ..calib.statistics import NumpyArrays
from .masks import keep_n_of_m, keep_overall, round_half_up


def input_columns(w: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``w`` [N, K] as a new C-contiguous float32 [K, N], one input column per row, zero for inputs
    that are always zero (their weights do nothing)."""
    columns = np.array(np.asarray(w, np.float32).T, order="C")
    columns[np.diag(np.asarray(hessian)) <= 0] = 0.0
    return columns


def sparsegpt_prune(w: np.ndarray, hessian: np.ndarray, sparsity: float = 0.0, pattern=None,
                    block_size: int = 128, damp: float = 0.01, factor: np.ndarray | None = None,
                    arrays=NumpyArrays):
    """Prune ``w`` [N, K] for inputs with second moments ``hessian`` [K, K].

    sparsity: unstructured fraction of zeros in [0, 1) (ignored when ``pattern`` is given).
    pattern: (n, m) = n zeros in every m consecutive input weights (m divides K).
    factor: :func:`inverse_hessian_factor` of this Hessian and damp, if already known
    (layers sharing an input share it).
    arrays: the array operations the sweep runs on (the calibration engine's ``arrays.for_methods()``).
    Returns ``(weights float32 [N, K] with the zeros and the compensating updates, keep mask bool [N, K])``.
    """
    rows, cols = w.shape
    if factor is None:
        factor = inverse_hessian_factor(hessian, damp)
    if pattern is not None:
        block_size = max(pattern[1], block_size // pattern[1] * pattern[1])
    diagonal = np.diag(factor)
    rest, factor = arrays.array(input_columns(w, hessian)), arrays.array(factor)
    pruned, keep = [], []
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, rest = rest[: end - start], rest[end - start :]
        local = factor[start:end, start:end]
        squared_diagonal = arrays.square(arrays.array(diagonal[start:end, None]))  # [b, 1]: score = w^2 / U_jj^2
        if pattern is None:
            count = int(round_half_up(sparsity * rows * end) - round_half_up(sparsity * rows * start))
            block_keep = keep_overall(arrays.square(block) / squared_diagonal, count, arrays)
        errors = []
        for i in range(end - start):
            if pattern is not None and i % pattern[1] == 0:
                group = slice(i, i + pattern[1])
                group_keep = keep_n_of_m((arrays.square(block[group]) / squared_diagonal[group]).T, *pattern, arrays).T
            column_keep = block_keep[i] if pattern is None else group_keep[i % pattern[1]]
            column = block[i]
            kept = arrays.where(column_keep, column, 0.0)
            errors.append((column - kept) / diagonal[start + i].item())
            block[i + 1 :] -= local[i, i + 1 :, None] * errors[-1]
            pruned.append(kept)
            keep.append(column_keep)
        rest -= factor[start:end, end:].T @ arrays.stack(errors)
        arrays.evaluate(rest, pruned[-1], keep[-1])
    return arrays.numpy(arrays.stack(pruned, axis=1), np.float32), arrays.numpy(arrays.stack(keep, axis=1), bool)
