"""Wanda (Sun et al., 2023): prune by |W_ij| * ||x_j||_2, compared within each output row.

Written over an engine's array operations (numpy's, or MLX's on a GPU: the calibration engine's
``arrays.for_methods()``); the mask comes back as a numpy array.
"""

from __future__ import annotations

import numpy as np

from ..calib.statistics import NumpyArrays
from .masks import keep_mask


def wanda_scores(w: np.ndarray, mean_square: np.ndarray, arrays=NumpyArrays):
    """Scores float32 [N, K] (an array of ``arrays``' library): |w| times the root mean square of each
    input column (``mean_square`` [K] = E[x_j^2], its root taken in float64).

    The paper's ||x_j||_2 over all calibration tokens is sqrt(tokens) times this;
    the constant factor changes no comparison.
    """
    rms = np.sqrt(np.asarray(mean_square, np.float64))
    return arrays.abs(arrays.array(w)) * arrays.array(rms)


def wanda_mask(w: np.ndarray, mean_square: np.ndarray, sparsity: float = 0.0, pattern=None,
               arrays=NumpyArrays) -> np.ndarray:
    """Keep mask bool [N, K]: per output row (unstructured) or per group of M input weights (N:M)."""
    return arrays.numpy(keep_mask(wanda_scores(w, mean_square, arrays), sparsity, pattern, per_row=True, arrays=arrays),
                        bool)
