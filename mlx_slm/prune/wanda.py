"""Wanda (Sun et al., 2023): prune by |W_ij| * ||x_j||_2, compared within each output row."""

from __future__ import annotations

import numpy as np

from .masks import keep_mask


def wanda_scores(w: np.ndarray, mean_square: np.ndarray) -> np.ndarray:
    """Scores [N, K]: |w| times the root mean square of each input column (``mean_square`` [K] = E[x_j^2]).

    The paper's ||x_j||_2 over all calibration tokens is sqrt(tokens) times this;
    the constant factor changes no comparison.
    """
    return np.abs(np.asarray(w, np.float32)) * np.sqrt(np.asarray(mean_square, np.float64)).astype(np.float32)


def wanda_mask(w: np.ndarray, mean_square: np.ndarray, sparsity: float = 0.0, pattern=None) -> np.ndarray:
    """Keep mask [N, K]: per output row (unstructured) or per group of M input weights (N:M)."""
    return keep_mask(wanda_scores(w, mean_square), sparsity, pattern, per_row=True)
