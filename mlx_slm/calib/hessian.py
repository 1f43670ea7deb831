"""Hessians E[x x^T] of a layer's inputs made ready for GPTQ and SparseGPT: dampened, reordered
(act-order) and turned into the upper Cholesky factor of their inverse."""

from __future__ import annotations

import numpy as np

from ..errors import SLMError
from .factor import ROWS, upper_cholesky_of_inverse_


def reordered_copy(hessian: np.ndarray, order: np.ndarray, dtype) -> np.ndarray:
    """``hessian[order][:, order]`` as a new C-contiguous ``dtype`` array, copied in slices of rows
    (no second full-size temporary)."""
    k = len(order)
    out = np.empty((k, k), dtype)
    for row in range(0, k, ROWS):
        out[row : row + ROWS] = hessian[order[row : row + ROWS]][:, order]
    return out


def inverse_hessian_factor(hessian: np.ndarray, damp: float, order: np.ndarray | None = None) -> np.ndarray:
    """Upper Cholesky factor U of ``(H + damp*mean(diag H)*I)^-1`` (``U.T @ U``), float32 [K, K], for
    H = ``hessian`` with rows and columns taken in ``order`` (default: as they are).

    Computed in the Hessian's precision (float32 or float64) in one K x K buffer besides the
    Hessian (:mod:`.factor`). The dampening grows tenfold (up to 4 times) if H is not positive definite.
    """
    order = np.arange(len(hessian)) if order is None else order
    dtype = np.float64 if hessian.dtype == np.float64 else np.float32
    diagonal = np.diag(hessian)[order].astype(dtype)
    dead = diagonal <= 0
    diagonal[dead] = 1.0
    for attempt in range(5):
        h = reordered_copy(hessian, order, dtype)
        np.fill_diagonal(h, diagonal + damp * 10**attempt * np.mean(diagonal))
        try:
            return upper_cholesky_of_inverse_(h).astype(np.float32, copy=False)
        except np.linalg.LinAlgError:
            del h
    raise SLMError("GPTQ: the Hessian is not positive definite even with strong dampening")


def prepare_hessian(hessian: np.ndarray, damp: float = 0.01, act_order: bool = True):
    """``(order [K], factor [K, K])``: the column order (largest diagonal first with act-order) and
    :func:`inverse_hessian_factor` of the reordered Hessian. Layers sharing an input can share it."""
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(len(hessian))
    return order, inverse_hessian_factor(hessian, damp, order)
