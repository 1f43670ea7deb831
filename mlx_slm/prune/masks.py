"""Pruning masks: which weights of a matrix ``w`` [N out, K in] to keep, from a score per weight.

A mask is a boolean array shaped like the weight, True = keep. Lower scores are
removed first; ties go to the lower index (stable sorts), so masks are
deterministic.

Patterns:

- unstructured at sparsity ``s`` in [0, 1): ``round(s * N * K)`` zeros in the layer.
  Per-row selection (Wanda) spreads them over the rows with cumulative rounding
  (row i gets ``round(s*K*(i+1)) - round(s*K*i)``), so every row holds
  ``floor(s*K)`` or ``ceil(s*K)`` zeros and the layer total is still exact.
- ``"N:M"``: exactly N zeros in every group of M consecutive input weights of a
  row (columns ``[g*M, (g+1)*M)``); M must divide K and 1 <= N < M. Sparsity N/M.
  (NVIDIA's "2:4" keeps 2 of 4, i.e. removes 2: the same thing for 2:4 and 4:8.)
"""

from __future__ import annotations

import re

import numpy as np

from ..calib.statistics import NumpyArrays
from ..errors import SLMError


def round_half_up(x) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def check_sparsity(sparsity) -> float:
    """``sparsity`` as a float in [0, 1), or one clear error."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise SLMError(f"sparsity must be a number in [0, 1), not {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise SLMError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), not {sparsity}")
    return value


def parse_pattern(pattern) -> tuple[int, int]:
    """``"2:4"`` or ``(2, 4)`` -> ``(n, m)``: n zeros in every m consecutive input weights."""
    if isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        n, m = pattern
    else:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
        if not match:
            raise SLMError(f"pattern must look like 'N:M' (N zeros in every M input weights), not {pattern!r}")
        n, m = match.groups()
    n, m = int(n), int(m)
    if not 1 <= n < m:
        raise SLMError(f"pattern {n}:{m}: need 1 <= N < M (N zeros in every M consecutive input weights)")
    return n, m


def check_pattern_fits(name: str, width: int, m: int) -> None:
    if width % m:
        raise SLMError(f"layer {name}: input width {width} is not divisible by M={m} of the N:M pattern")


def row_counts(sparsity: float, rows: int, cols: int) -> np.ndarray:
    """Zeros per row [rows] with cumulative rounding: each row floor/ceil of s*cols, total round(s*rows*cols)."""
    edges = round_half_up(sparsity * cols * np.arange(rows + 1))
    return np.diff(edges)


def keep_per_row(scores, counts, arrays=NumpyArrays):
    """Remove the ``counts[i]`` lowest scores of row i (``counts`` int or [N]; ``scores`` an array of
    ``arrays``' library, as for :func:`keep_overall`)."""
    counts = np.broadcast_to(np.asarray(counts), scores.shape[:1])
    return arrays.ranks(scores) >= arrays.array(counts[:, None])


def keep_overall(scores, count: int, arrays=NumpyArrays):
    """Remove the ``count`` lowest scores of the whole matrix (an array of ``arrays``' library:
    :class:`~mlx_slm.calib.statistics.NumpyArrays` or MLX's, as SparseGPT's sweep runs)."""
    return (arrays.ranks(scores.reshape(-1)) >= count).reshape(scores.shape)


def keep_n_of_m(scores, n: int, m: int, arrays=NumpyArrays):
    """Remove the n lowest scores in every group of m consecutive columns (m divides the width;
    ``arrays`` as for :func:`keep_overall`)."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows, cols // m, m)
    return (arrays.ranks(grouped) >= n).reshape(rows, cols)


def keep_mask(scores, sparsity: float = 0.0, pattern=None, per_row: bool = False, arrays=NumpyArrays):
    """Mask for ``scores`` [N, K]: ``pattern`` (n, m) if given, else unstructured ``sparsity``,
    compared within each row (``per_row``) or over the whole layer (``arrays`` as for :func:`keep_overall`)."""
    if pattern is not None:
        return keep_n_of_m(scores, *pattern, arrays)
    rows, cols = scores.shape
    if per_row:
        return keep_per_row(scores, row_counts(sparsity, rows, cols), arrays)
    return keep_overall(scores, int(round_half_up(sparsity * rows * cols)), arrays)


def magnitude_mask(w: np.ndarray, sparsity: float = 0.0, pattern=None) -> np.ndarray:
    """Keep the largest |w|: over the whole layer (unstructured) or per group of M (N:M)."""
    return keep_mask(np.abs(np.asarray(w, np.float32)), sparsity, pattern, per_row=False)
