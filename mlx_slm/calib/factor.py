"""In-place triangular factorizations of a Hessian, for GPTQ and SparseGPT.

Both need U, upper-triangular with ``U.T @ U = H^-1``, for a damped Hessian ``H``
[K, K] that can be as wide as a model's widest layer input (14336 for Llama-3-8B's
down_proj: 0.8 GB in float32). numpy's own routines return new arrays (Cholesky,
flipping, inverting: several K x K copies alive at once), so these work in the
caller's buffer, in blocks whose updates are matrix products, and keep its dtype:
the factor of a float32 Hessian is computed in float32, as GPTQ's reference code
does. Temporaries are at most a quarter of the matrix (and usually much less).
"""

from __future__ import annotations

import numpy as np

BLOCK = 512  # columns factorized per step: small enough for np.linalg on the diagonal block
BASE = 256  # below this, a triangular block is inverted by np.linalg.inv
ROWS = 1024  # rows of a trailing update per matrix product (bounds its temporary)


def upper_triangle(block: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle is ``block``'s (its lower part is not read)."""
    upper = np.triu(block)
    return upper + np.triu(upper, 1).T


def reverse_cholesky_(h: np.ndarray) -> np.ndarray:
    """Upper-triangular R with ``R @ R.T = h``, written over ``h`` (C-contiguous [K, K]); returns ``h``.

    Only the upper triangle of ``h`` is read; the lower one is zeroed. Blocks of :data:`BLOCK`
    columns are factorized from the last one back, each followed by a rank-BLOCK update of the
    rows above it. np.linalg.LinAlgError if ``h`` is not positive definite (``h`` is then spoilt).
    """
    k = len(h)
    for end in range(k, 0, -BLOCK):
        start = max(0, end - BLOCK)
        diagonal = upper_triangle(h[start:end, start:end])
        r22 = np.linalg.cholesky(diagonal[::-1, ::-1])[::-1, ::-1]
        h[start:end, start:end] = r22
        if start == 0:
            break
        r12 = h[:start, start:end]
        r12[...] = r12 @ np.linalg.inv(r22).T  # R12 R22^T = H12
        for row in range(0, start, ROWS):
            stop = min(row + ROWS, start)
            h[row:stop, row:start] -= r12[row:stop] @ r12[row:start].T
    for row in range(0, k, ROWS):
        stop = min(row + ROWS, k)
        h[row:stop, :row] = 0
        h[row:stop, row:stop] = np.triu(h[row:stop, row:stop])
    return h


def invert_upper_(r: np.ndarray) -> np.ndarray:
    """The inverse of upper-triangular ``r`` [K, K], written over it (by halves); returns ``r``."""
    k = len(r)
    if k <= BASE:
        r[...] = np.triu(np.linalg.inv(r))
        return r
    m = k // 2
    top, bottom = invert_upper_(r[:m, :m]), invert_upper_(r[m:, m:])
    r[:m, m:] = -(top @ r[:m, m:]) @ bottom
    return r


def upper_cholesky_of_inverse_(h: np.ndarray) -> np.ndarray:
    """Upper-triangular U with ``U.T @ U = h^-1``, written over the positive definite ``h``; returns it.

    With ``R @ R.T = h`` (:func:`reverse_cholesky_`), ``U = R^-1``: no inverse of ``h`` is ever
    formed, which is faster and more accurate than inverting ``h`` and then factorizing.
    """
    return invert_upper_(reverse_cholesky_(h))
