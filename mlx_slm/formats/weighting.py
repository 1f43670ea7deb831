"""Input-column weights for the formats that choose their own values (lut's k-means, ternary's
scales) and for the affine importance search: an importance per column, floored so that
columns the calibration text never lit still count."""

from __future__ import annotations

import numpy as np


def importance_weights(importance, k: int) -> np.ndarray:
    """Column weights [K] float32: the importance plus a small floor so unseen columns still count."""
    if importance is None:
        return np.ones(k, np.float32)
    d = np.asarray(importance, np.float64)
    return (d + 1e-6 * max(d.mean(), 1e-30)).astype(np.float32)
